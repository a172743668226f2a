//! Consistent snapshots: a `REPEATABLE READ` transaction whose `pg_current_snapshot()`
//! tells which replicated transactions the snapshot already contains.

use futures::{Stream, StreamExt};
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow};

use crate::conn::{PgConfig, PgConn, parse_lsn};
use crate::error::PgError;

/// `pg_current_snapshot()`: transactions below `xmin` are visible, those at or above
/// `xmax` are not, and those in `xip` were in progress (not visible).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PgSnapshot {
    pub xmin: u64,
    pub xmax: u64,
    pub xip: Vec<u64>,
    pub wal_lsn: u64,
}

impl PgSnapshot {
    /// Parse `xmin:xmax:xip1,xip2`.
    pub fn parse(text: &str, wal_lsn: u64) -> Option<PgSnapshot> {
        let mut parts = text.split(':');
        let xmin = parts.next()?.parse().ok()?;
        let xmax = parts.next()?.parse().ok()?;
        let xip = match parts.next()? {
            "" => vec![],
            list => list
                .split(',')
                .map(|x| x.parse().ok())
                .collect::<Option<Vec<u64>>>()?,
        };
        Some(PgSnapshot {
            xmin,
            xmax,
            xip,
            wal_lsn,
        })
    }

    /// Whether a transaction's changes are already in the snapshot. Replication xids are
    /// 32-bit; snapshot xids are 64-bit (epoch-extended), so compare in the 32-bit space
    /// relative to xmin, wraparound-aware.
    pub fn contains_xid(&self, xid: u32) -> bool {
        let xmin32 = self.xmin as u32;
        let xmax32 = self.xmax as u32;
        let before = |a: u32, b: u32| (a.wrapping_sub(b) as i32) < 0;
        if before(xid, xmin32) {
            return true;
        }
        if !before(xid, xmax32) {
            return false;
        }
        !self.xip.iter().any(|&x| x as u32 == xid)
    }

    /// Whether a transaction started after the snapshot: from the first such
    /// transaction on, no filtering is needed any more.
    pub fn is_after(&self, xid: u32) -> bool {
        let xmax32 = self.xmax as u32;
        (xid.wrapping_sub(xmax32) as i32) >= 0
    }
}

/// An open snapshot transaction on its own connection.
pub struct SnapshotTx {
    conn: PgConn,
    pub snapshot: PgSnapshot,
}

impl SnapshotTx {
    pub async fn begin(config: &PgConfig) -> Result<SnapshotTx, PgError> {
        let conn = config.connect().await?;
        conn.batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await?;
        let row = conn
            .query_one(
                "SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text",
                &[],
            )
            .await?;
        let text: String = row.get(0);
        let lsn: String = row.get(1);
        let snapshot = PgSnapshot::parse(&text, parse_lsn(&lsn).unwrap_or(0))
            .ok_or_else(|| PgError::Protocol(format!("unexpected pg_current_snapshot {text}")))?;
        Ok(SnapshotTx { conn, snapshot })
    }

    /// Stream the rows of `sql`. The simple-query protocol returns every value in its
    /// text output form, exactly as pgoutput sends it on the replication stream.
    pub async fn rows(
        &self,
        sql: &str,
    ) -> Result<impl Stream<Item = Result<SnapshotRow, PgError>> + '_, PgError> {
        let stream = self.conn.simple_query_raw(sql).await?;
        Ok(stream.filter_map(|msg| async move {
            match msg {
                Ok(SimpleQueryMessage::Row(row)) => Some(Ok(SnapshotRow(row))),
                Ok(_) => None,
                Err(e) => Some(Err(PgError::from(e))),
            }
        }))
    }
}

/// One row of a snapshot query, its values still in the buffer they arrived in.
pub struct SnapshotRow(SimpleQueryRow);

impl SnapshotRow {
    /// The values in column order, borrowed (NULL as `None`).
    pub fn values(&self) -> Vec<Option<&str>> {
        (0..self.0.len())
            .map(|i| self.0.try_get(i).ok().flatten())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_text_parses() {
        let s = PgSnapshot::parse("10:20:12,15", 5).unwrap();
        assert_eq!((s.xmin, s.xmax, s.xip.clone()), (10, 20, vec![12, 15]));
        assert!(PgSnapshot::parse("10:10:", 0).unwrap().xip.is_empty());
        assert!(PgSnapshot::parse("garbage", 0).is_none());
    }

    #[test]
    fn visibility_follows_xmin_xmax_and_in_progress_list() {
        let s = PgSnapshot::parse("10:20:12,15", 0).unwrap();
        assert!(s.contains_xid(9));
        assert!(s.contains_xid(11));
        assert!(!s.contains_xid(12));
        assert!(!s.contains_xid(20));
        assert!(!s.contains_xid(25));
        assert!(s.is_after(20));
        assert!(!s.is_after(19));
    }

    #[test]
    fn visibility_uses_the_low_32_bits_of_epoch_extended_xids() {
        let epoch = 1u64 << 32;
        let s = PgSnapshot::parse(&format!("{}:{}:", epoch + 10, epoch + 20), 0).unwrap();
        assert!(s.contains_xid(5));
        assert!(!s.contains_xid(30));
    }
}
