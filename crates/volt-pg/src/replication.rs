//! The logical replication stream: pgoutput (proto_version 1) over the replication
//! protocol, decoded into bounded transaction fragments.
//!
//! `pgwire-replication` owns the socket in a worker task that answers keepalives and
//! sends standby status updates on its own; volt only reports (through `acknowledge`)
//! the LSN up to which changes are durably stored.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use pg_walstream::{LogicalReplicationMessage, LogicalReplicationParser, TupleData};
use pgwire_replication::{
    FeedbackObserver, Lsn, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};
use volt_shapes::{Change, ChangeKind, Relation, RelationColumn, Row, TxFragment, Value};

use crate::conn::PgConfig;
use crate::error::PgError;

/// Electric's default: at most 100 changes per fragment.
pub const MAX_FRAGMENT_CHANGES: usize = 100;

/// What the stream yields.
#[derive(Debug)]
pub enum StreamItem {
    Fragment(TxFragment),
    /// The server's WAL end, sent when it is idle.
    KeepAlive {
        wal_end: u64,
    },
}

pub struct ReplicationStream {
    client: ReplicationClient,
    parser: LogicalReplicationParser,
    builder: FragmentBuilder,
    /// The server's WAL end, as last reported: how far behind the stream is.
    wal_end: u64,
    /// Commit time of the transaction last begun, in microseconds since 2000-01-01.
    commit_time_micros: i64,
}

impl ReplicationStream {
    /// Connect and start streaming from the slot's confirmed position.
    pub async fn start(
        config: &PgConfig,
        slot: &str,
        publication: &str,
        start_lsn: u64,
    ) -> Result<ReplicationStream, PgError> {
        let cfg = ReplicationConfig::new(
            config.host.clone(),
            config.user.clone(),
            config.password.clone(),
            config.dbname.clone(),
            slot,
            publication,
        )
        .with_port(config.port)
        .with_tls(TlsConfig::disabled())
        .with_start_lsn(Lsn::from_u64(start_lsn))
        .with_status_interval(Duration::from_secs(1))
        .with_wakeup_interval(Duration::from_secs(5))
        // Bounded: the worker waits when volt is slow, it never drops.
        .with_buffer_size(1024)
        .with_application_name("volt_replication")
        .with_options(config.display_options())
        // With an observer the client tracks whether an acknowledgement is still
        // unreported, which a clean shutdown waits for.
        .with_feedback_observer(FeedbackObserver::new(|_| {}));
        let mut client = ReplicationClient::connect(cfg).await?;
        client.wait_started().await?;
        Ok(ReplicationStream {
            client,
            parser: LogicalReplicationParser::with_protocol_version(1),
            builder: FragmentBuilder::new(MAX_FRAGMENT_CHANGES),
            wal_end: 0,
            commit_time_micros: 0,
        })
    }

    /// The next fragment or keepalive; `None` when the server ended the stream.
    pub async fn next(&mut self) -> Result<Option<StreamItem>, PgError> {
        loop {
            let Some(event) = self.client.recv().await? else {
                return Ok(None);
            };
            match event {
                ReplicationEvent::KeepAlive { wal_end, .. } => {
                    self.wal_end = self.wal_end.max(wal_end.as_u64());
                    return Ok(Some(StreamItem::KeepAlive {
                        wal_end: wal_end.as_u64(),
                    }));
                }
                ReplicationEvent::Begin {
                    final_lsn,
                    xid,
                    commit_time_micros,
                } => {
                    self.wal_end = self.wal_end.max(final_lsn.as_u64());
                    self.commit_time_micros = commit_time_micros;
                    self.builder.begin(xid, final_lsn.as_u64());
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    if let Some(f) = self.builder.commit(end_lsn.as_u64()) {
                        return Ok(Some(StreamItem::Fragment(f)));
                    }
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let msg = self
                        .parser
                        .parse_wal_message_bytes(data)
                        .map_err(|e| PgError::Protocol(e.to_string()))?;
                    if let Some(f) = self.builder.message(msg.message)? {
                        return Ok(Some(StreamItem::Fragment(f)));
                    }
                }
                ReplicationEvent::Message { .. } | ReplicationEvent::StoppedAt { .. } => {}
            }
        }
    }

    /// How far behind the server the transaction last begun is: WAL bytes between its
    /// commit and the server's WAL end, and seconds since it committed.
    pub fn lag_behind(&self, processed_lsn: u64) -> (u64, f64) {
        let bytes = self.wal_end.saturating_sub(processed_lsn);
        // Postgres timestamps count from 2000-01-01 (946,684,800 s after the Unix epoch).
        let now_micros = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_micros() as i64 - 946_684_800_000_000)
            .unwrap_or(0);
        let secs = (now_micros - self.commit_time_micros).max(0) as f64 / 1e6;
        (bytes, secs)
    }

    /// Whether a transaction has begun and not yet committed on the stream.
    pub fn in_transaction(&self) -> bool {
        self.builder.current.is_some()
    }

    /// Tell Postgres everything up to `lsn` is durably stored.
    pub fn acknowledge(&self, lsn: u64) {
        self.client.update_applied_lsn(Lsn::from_u64(lsn));
    }

    /// Whether an acknowledgement has not reached Postgres yet.
    pub fn acks_pending(&self) -> bool {
        self.client.feedback_pending_since().is_some()
    }

    /// End the stream cleanly: wait (up to `within`) until Postgres has been told about
    /// every acknowledgement, so a restart resends as little as possible.
    pub async fn finish(mut self, within: Duration) {
        let deadline = tokio::time::Instant::now() + within;
        while self.acks_pending() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if let Err(e) = self.client.shutdown().await {
            tracing::debug!(error = %e, "replication stream shutdown");
        }
    }
}

/// Groups decoded pgoutput messages into fragments of at most `max` changes.
pub struct FragmentBuilder {
    max: usize,
    relations: HashMap<u32, Arc<Relation>>,
    current: Option<TxFragment>,
    next_op: u64,
}

impl FragmentBuilder {
    pub fn new(max: usize) -> Self {
        FragmentBuilder {
            max: max.max(1),
            relations: HashMap::new(),
            current: None,
            next_op: 0,
        }
    }

    pub fn begin(&mut self, xid: u32, commit_lsn: u64) {
        self.current = Some(TxFragment {
            xid,
            lsn: commit_lsn,
            changes: Vec::new(),
            truncated: Vec::new(),
            relations: Vec::new(),
            commit_end_lsn: None,
        });
        self.next_op = 0;
    }

    pub fn commit(&mut self, end_lsn: u64) -> Option<TxFragment> {
        let mut f = self.current.take()?;
        f.commit_end_lsn = Some(end_lsn);
        Some(f)
    }

    fn relation(&self, oid: u32) -> Result<Arc<Relation>, PgError> {
        self.relations
            .get(&oid)
            .cloned()
            .ok_or_else(|| PgError::Protocol(format!("change for unknown relation {oid}")))
    }

    /// Feed one decoded message; returns a fragment when one filled up.
    pub fn message(
        &mut self,
        msg: LogicalReplicationMessage,
    ) -> Result<Option<TxFragment>, PgError> {
        let kind = match msg {
            LogicalReplicationMessage::Relation {
                relation_id,
                namespace,
                relation_name,
                columns,
                ..
            } => {
                // Relation messages repeat (e.g. after TRUNCATE or DDL): always replace.
                let rel = Relation {
                    oid: relation_id,
                    schema: namespace.to_string(),
                    name: relation_name.to_string(),
                    columns: columns
                        .iter()
                        .map(|c| RelationColumn {
                            name: c.name.to_string(),
                            type_oid: c.type_id,
                            is_key: c.is_key(),
                        })
                        .collect(),
                };
                let rel = Arc::new(rel);
                self.relations.insert(relation_id, rel.clone());
                if let Some(f) = self.current.as_mut() {
                    f.relations.push(rel);
                }
                return Ok(None);
            }
            LogicalReplicationMessage::Insert { relation_id, tuple } => {
                (relation_id, ChangeKind::Insert { new: row(tuple) })
            }
            LogicalReplicationMessage::Update {
                relation_id,
                old_tuple,
                new_tuple,
                key_type,
            } => {
                let old = match old_tuple {
                    Some(t) => Some(self.old_row(relation_id, t, key_type)?),
                    None => None,
                };
                (
                    relation_id,
                    ChangeKind::Update {
                        old,
                        new: row(new_tuple),
                    },
                )
            }
            LogicalReplicationMessage::Delete {
                relation_id,
                old_tuple,
                key_type,
            } => (
                relation_id,
                ChangeKind::Delete {
                    old: self.old_row(relation_id, old_tuple, Some(key_type))?,
                },
            ),
            LogicalReplicationMessage::Truncate { relation_ids, .. } => {
                let rels = relation_ids
                    .iter()
                    .map(|oid| self.relation(*oid))
                    .collect::<Result<Vec<_>, _>>()?;
                let f = self.current_mut()?;
                f.truncated.extend(rels);
                return Ok(None);
            }
            _ => return Ok(None),
        };
        let (oid, kind) = kind;
        let relation = self.relation(oid)?;
        let op = self.next_op;
        self.next_op += 2;
        let max = self.max;
        let f = self.current_mut()?;
        // A full fragment goes out only when a change follows it: a transaction of
        // exactly `max` changes is then one fragment with its commit, not a second,
        // empty one that every shape it touched must be told about.
        let full = (f.changes.len() >= max).then(|| TxFragment {
            xid: f.xid,
            lsn: f.lsn,
            changes: std::mem::take(&mut f.changes),
            truncated: std::mem::take(&mut f.truncated),
            relations: std::mem::take(&mut f.relations),
            commit_end_lsn: None,
        });
        f.changes.push(Change { relation, op, kind });
        Ok(full)
    }

    /// An old row sent as the replica identity key ('K': no full replica identity) carries
    /// only the key columns; the others are marked unknown (not NULL), so that nothing
    /// mistakes them for the row's values.
    fn old_row(&self, oid: u32, tuple: TupleData, key_type: Option<char>) -> Result<Row, PgError> {
        let mut old = row(tuple);
        if key_type == Some('K') {
            let rel = self.relation(oid)?;
            for (v, c) in old.iter_mut().zip(&rel.columns) {
                if !c.is_key && *v == Value::Null {
                    *v = Value::Unchanged;
                }
            }
        }
        Ok(old)
    }

    fn current_mut(&mut self) -> Result<&mut TxFragment, PgError> {
        self.current
            .as_mut()
            .ok_or_else(|| PgError::Protocol("change outside a transaction".into()))
    }
}

fn row(tuple: TupleData) -> Row {
    tuple
        .columns
        .into_iter()
        .map(|c| {
            if c.is_null() {
                Value::Null
            } else if c.is_unchanged() {
                Value::Unchanged
            } else {
                Value::Text(String::from_utf8_lossy(c.as_bytes()).into())
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use pg_walstream::{ColumnData, ColumnInfo};

    fn relation_msg() -> LogicalReplicationMessage {
        LogicalReplicationMessage::Relation {
            relation_id: 42,
            namespace: "public".into(),
            relation_name: "items".into(),
            replica_identity: b'f',
            columns: vec![ColumnInfo::new(1, "id".into(), 23, -1)],
        }
    }

    fn insert(id: &str) -> LogicalReplicationMessage {
        LogicalReplicationMessage::Insert {
            relation_id: 42,
            tuple: TupleData::new(vec![ColumnData::text(id.as_bytes().to_vec())]),
        }
    }

    #[test]
    fn large_transactions_are_split_into_bounded_fragments() {
        let mut b = FragmentBuilder::new(2);
        b.message(relation_msg()).unwrap();
        b.begin(7, 1000);
        assert!(b.message(insert("1")).unwrap().is_none());
        assert!(b.message(insert("2")).unwrap().is_none());
        let f1 = b.message(insert("3")).unwrap().expect("full fragment");
        assert_eq!(f1.changes.len(), 2);
        assert!(!f1.is_commit());
        let last = b.commit(1100).expect("commit fragment");
        assert_eq!(last.changes.len(), 1);
        assert_eq!(last.commit_end_lsn, Some(1100));
        // Ops keep counting across fragments, leaving odd positions for key changes.
        assert_eq!(last.changes[0].op, 4);
        assert_eq!((f1.lsn, last.lsn), (1000, 1000));
    }

    #[test]
    fn a_transaction_of_exactly_the_fragment_size_is_one_fragment_with_its_commit() {
        let mut b = FragmentBuilder::new(2);
        b.message(relation_msg()).unwrap();
        b.begin(7, 1000);
        assert!(b.message(insert("1")).unwrap().is_none());
        assert!(b.message(insert("2")).unwrap().is_none());
        let f = b.commit(1100).expect("commit fragment");
        assert_eq!(f.changes.len(), 2);
        assert_eq!(f.commit_end_lsn, Some(1100));
    }

    #[test]
    fn a_repeated_relation_message_replaces_the_cached_one() {
        let mut b = FragmentBuilder::new(10);
        b.message(relation_msg()).unwrap();
        b.message(LogicalReplicationMessage::Relation {
            relation_id: 42,
            namespace: "public".into(),
            relation_name: "renamed".into(),
            replica_identity: b'f',
            columns: vec![],
        })
        .unwrap();
        b.begin(1, 1);
        b.message(insert("1")).unwrap();
        let f = b.commit(2).unwrap();
        assert_eq!(f.changes[0].relation.name, "renamed");
    }

    #[test]
    fn a_key_only_old_row_marks_the_columns_it_lacks_unknown() {
        let mut b = FragmentBuilder::new(10);
        b.message(LogicalReplicationMessage::Relation {
            relation_id: 42,
            namespace: "public".into(),
            relation_name: "items".into(),
            replica_identity: b'd',
            columns: vec![
                ColumnInfo::new(1, "id".into(), 23, -1),
                ColumnInfo::new(0, "name".into(), 25, -1),
            ],
        })
        .unwrap();
        b.begin(1, 1);
        b.message(LogicalReplicationMessage::Delete {
            relation_id: 42,
            old_tuple: TupleData::new(vec![ColumnData::text(b"1".to_vec()), ColumnData::null()]),
            key_type: 'K',
        })
        .unwrap();
        let f = b.commit(2).unwrap();
        let ChangeKind::Delete { old } = &f.changes[0].kind else {
            panic!("expected a delete");
        };
        assert_eq!(old, &vec![Value::Text("1".into()), Value::Unchanged]);
    }

    #[test]
    fn a_change_for_an_unknown_relation_is_a_protocol_error() {
        let mut b = FragmentBuilder::new(10);
        b.begin(1, 1);
        assert!(matches!(b.message(insert("1")), Err(PgError::Protocol(_))));
    }
}
