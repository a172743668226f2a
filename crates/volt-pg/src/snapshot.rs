//! Consistent snapshots: a `REPEATABLE READ` transaction whose `pg_current_snapshot()`
//! tells which replicated transactions the snapshot already contains.

use futures::{Stream, StreamExt};
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow, Statement};

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
    /// The `COPY` of the rows, prepared with the transaction's start (`begin_on`).
    copy: Option<Statement>,
}

const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                              SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text";

impl SnapshotTx {
    pub async fn begin(config: &PgConfig, copy_sql: Option<&str>) -> Result<SnapshotTx, PgError> {
        SnapshotTx::begin_on(config.connect().await?, copy_sql).await
    }

    /// Begin on a session already open (one an earlier snapshot ended with `end`). With
    /// `copy_sql`, `COPY (copy_sql) TO STDOUT` is prepared in the same round trip: the
    /// two requests are sent together and Postgres answers them in order, so the COPY
    /// is parsed inside the transaction. Herds create thousands of snapshots on few
    /// sessions, and every round trip waits its turn on a busy machine.
    pub async fn begin_on(conn: PgConn, copy_sql: Option<&str>) -> Result<SnapshotTx, PgError> {
        let begin = conn.simple_query(BEGIN_SNAPSHOT);
        let (messages, copy) = match copy_sql {
            Some(sql) => {
                let copy = format!("COPY ({sql}) TO STDOUT");
                // `join` polls the BEGIN first: it is sent first.
                let (messages, copy) = futures::join!(begin, conn.prepare(&copy));
                (messages?, Some(copy?))
            }
            None => (begin.await?, None),
        };
        let row = messages
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(row) => Some(row),
                _ => None,
            })
            .ok_or_else(|| PgError::Protocol("pg_current_snapshot() returned no row".into()))?;
        let (Some(text), Some(lsn)) = (row.get(0), row.get(1)) else {
            return Err(PgError::Protocol(
                "pg_current_snapshot() returned NULL".into(),
            ));
        };
        let snapshot = PgSnapshot::parse(text, parse_lsn(lsn).unwrap_or(0))
            .ok_or_else(|| PgError::Protocol(format!("unexpected pg_current_snapshot {text}")))?;
        Ok(SnapshotTx {
            conn,
            snapshot,
            copy,
        })
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

impl SnapshotTx {
    /// End the transaction's session and wait until Postgres has it (see
    /// `PgConn::close`).
    pub async fn close(self) {
        self.conn.close(std::time::Duration::from_secs(5)).await;
    }

    /// End the transaction and keep the session for another snapshot; None (the session
    /// closed) when it cannot be reused.
    pub async fn end(self) -> Option<PgConn> {
        let SnapshotTx { conn, copy, .. } = self;
        // A prepared statement is closed when dropped: before the session is reused.
        drop(copy);
        let ended = conn.batch_execute("ROLLBACK").await;
        SnapshotTx::reusable(conn, ended).await
    }

    async fn reusable(conn: PgConn, ended: Result<(), tokio_postgres::Error>) -> Option<PgConn> {
        match ended {
            Ok(()) if !conn.is_closed() => Some(conn),
            _ => {
                conn.close(std::time::Duration::from_secs(5)).await;
                None
            }
        }
    }

    /// Run the COPY prepared by `begin_on` (text format: tab-separated,
    /// backslash-escaped, `\N` for NULL: each value the text the simple-query protocol
    /// returns, at the cost of Postgres's fastest way out), handing `part` each message
    /// of its data (decode them with `CopyLines`), then end the transaction as `end`
    /// does. The ROLLBACK is sent as soon as the COPY has started: it waits behind the
    /// rows in the session, so ending costs no round trip of its own. On an error the
    /// session is closed.
    pub async fn copy_rows_then_end<E: From<PgError>>(
        self,
        mut part: impl FnMut(&[u8]) -> Result<(), E>,
    ) -> Result<Option<PgConn>, E> {
        let SnapshotTx { conn, copy, .. } = self;
        let copy = copy
            .ok_or_else(|| PgError::Protocol("the snapshot began without a COPY to run".into()))?;
        let ended = {
            let data = conn.copy_out(&copy).await.map_err(PgError::from)?;
            futures::pin_mut!(data);
            let mut rollback = std::pin::pin!(conn.batch_execute("ROLLBACK"));
            // Polled once, the ROLLBACK is on its way; its answer is read after the rows.
            let early = match futures::poll!(rollback.as_mut()) {
                std::task::Poll::Ready(ended) => Some(ended),
                std::task::Poll::Pending => None,
            };
            while let Some(bytes) = data.next().await {
                part(&bytes.map_err(PgError::from)?)?;
            }
            match early {
                Some(ended) => ended,
                None => rollback.await,
            }
        };
        drop(copy);
        Ok(SnapshotTx::reusable(conn, ended).await)
    }
}

/// Splits the data of `COPY ... TO STDOUT` (text format) into rows, whatever the
/// boundaries of the messages it came in. Its buffers are reused from row to row:
/// Postgres sends a message per row, and S1's snapshot is a million of them.
#[derive(Default)]
pub struct CopyLines {
    /// The start of a row whose end is in a later message.
    partial: Vec<u8>,
    fields: Vec<Field>,
    /// The values that held escapes, unescaped.
    unescaped: Vec<u8>,
}

/// Where a value of the current row is.
#[derive(Clone, Copy)]
enum Field {
    Null,
    /// A range of the line: the value had no escapes.
    Line(usize, usize),
    /// A range of `CopyLines::unescaped`.
    Unescaped(usize, usize),
}

/// One COPY row, its values borrowed from the line they came in (or, for values that
/// held escapes, from their unescaped copies).
pub struct CopyRow<'a> {
    line: &'a str,
    unescaped: &'a str,
    fields: &'a [Field],
}

impl CopyRow<'_> {
    pub fn len(&self) -> usize {
        self.fields.len()
    }

    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Value `i`, NULL (or past the end) as None.
    pub fn get(&self, i: usize) -> Option<&str> {
        match self.fields.get(i)? {
            Field::Null => None,
            Field::Line(a, b) => Some(&self.line[*a..*b]),
            Field::Unescaped(a, b) => Some(&self.unescaped[*a..*b]),
        }
    }
}

impl volt_shapes::RowValues for CopyRow<'_> {
    fn value(&self, i: usize) -> Option<&str> {
        self.get(i)
    }
}

impl CopyLines {
    /// Call `row` with each complete row of `data`.
    pub fn feed<E: From<PgError>>(
        &mut self,
        data: &[u8],
        mut row: impl FnMut(&CopyRow<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = data;
        if !self.partial.is_empty() {
            let Some(end) = memchr::memchr(b'\n', rest) else {
                self.partial.extend_from_slice(rest);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.partial);
            line.extend_from_slice(&rest[..end]);
            rest = &rest[end + 1..];
            row(&decode_copy_line(
                &line,
                &mut self.fields,
                &mut self.unescaped,
            )?)?;
            line.clear();
            self.partial = line;
        }
        while let Some(end) = memchr::memchr(b'\n', rest) {
            row(&decode_copy_line(
                &rest[..end],
                &mut self.fields,
                &mut self.unescaped,
            )?)?;
            rest = &rest[end + 1..];
        }
        self.partial.extend_from_slice(rest);
        Ok(())
    }

    /// Whether the data ended at a row's end, as complete COPY output does.
    pub fn is_complete(&self) -> bool {
        self.partial.is_empty()
    }
}

fn not_utf8(e: std::str::Utf8Error) -> PgError {
    PgError::Protocol(format!("COPY value is not UTF-8: {e}"))
}

/// One COPY text-format line (without its newline) into its values. The line is
/// checked as UTF-8 once, not value by value: its separators and escapes are ASCII, so
/// every value of a valid line is valid.
fn decode_copy_line<'a>(
    line: &'a [u8],
    fields: &'a mut Vec<Field>,
    unescaped: &'a mut Vec<u8>,
) -> Result<CopyRow<'a>, PgError> {
    let text = std::str::from_utf8(line).map_err(not_utf8)?;
    fields.clear();
    unescaped.clear();
    let mut start = 0;
    let ends = memchr::memchr_iter(b'\t', line).chain(std::iter::once(line.len()));
    for end in ends {
        let field = &line[start..end];
        if field == b"\\N" {
            fields.push(Field::Null);
        } else if memchr::memchr(b'\\', field).is_some() {
            // Octal and hex escapes can spell any byte: the result is checked on its own.
            let from = unescaped.len();
            unescape_copy(field, unescaped);
            std::str::from_utf8(&unescaped[from..]).map_err(not_utf8)?;
            fields.push(Field::Unescaped(from, unescaped.len()));
        } else {
            fields.push(Field::Line(start, end));
        }
        start = end + 1;
    }
    // Each unescaped value is valid UTF-8, so their concatenation is.
    let unescaped = std::str::from_utf8(unescaped).map_err(not_utf8)?;
    Ok(CopyRow {
        line: text,
        unescaped,
        fields,
    })
}

/// Undo COPY's text-format escapes (Postgres `CopyAttributeOutText`, read back as
/// `CopyReadAttributesText` does).
fn unescape_copy(field: &[u8], out: &mut Vec<u8>) {
    out.reserve(field.len());
    let mut i = 0;
    while i < field.len() {
        let b = field[i];
        i += 1;
        if b != b'\\' || i >= field.len() {
            out.push(b);
            continue;
        }
        let c = field[i];
        i += 1;
        match c {
            b'b' => out.push(0x08),
            b'f' => out.push(0x0c),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(0x0b),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match field.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            b'x' if field.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match field.get(i) {
                        Some(d) if d.is_ascii_hexdigit() => {
                            v = v * 16 + (*d as char).to_digit(16).unwrap_or(0);
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
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
    fn copy_lines_unescape_to_the_values_and_nulls_postgres_sent() {
        let data = b"1\t\\N\ta\\tb\\nc\\\\d\\x41\\101\\r\\b\\f\\v\n2\t\t\\\\x00ff\n";
        // Split anywhere: rows may span messages.
        for cut in 0..data.len() {
            let mut lines = CopyLines::default();
            let mut rows: Vec<Vec<Option<String>>> = Vec::new();
            for part in [&data[..cut], &data[cut..]] {
                lines
                    .feed(part, |r| {
                        rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                        Ok::<(), PgError>(())
                    })
                    .unwrap();
            }
            assert!(lines.is_complete());
            assert_eq!(
                rows,
                vec![
                    vec![
                        Some("1".to_string()),
                        None,
                        Some("a\tb\nc\\dAA\r\u{8}\u{c}\u{b}".to_string())
                    ],
                    vec![
                        Some("2".to_string()),
                        Some(String::new()),
                        Some("\\x00ff".to_string())
                    ],
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn copy_values_must_be_utf8_whether_sent_raw_or_escaped() {
        let rows = |data: &[u8]| {
            let mut out = Vec::new();
            CopyLines::default()
                .feed(data, |r| {
                    out.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                    Ok::<(), PgError>(())
                })
                .map(|()| out)
        };
        // An escaped multi-byte character, and the rows around it untouched.
        let ok: Vec<Vec<Option<String>>> = rows(b"a\t\\303\\251\tb\nc\t\\N\tca\xc3\xa9\n").unwrap();
        assert_eq!(
            ok,
            vec![
                vec![Some("a".into()), Some("\u{e9}".into()), Some("b".into())],
                vec![Some("c".into()), None, Some("ca\u{e9}".into())],
            ]
        );
        assert!(rows(b"a\t\xff\n").is_err(), "a raw invalid byte");
        assert!(rows(b"a\t\\303\n").is_err(), "an escaped half character");
        assert!(rows(b"\\303\t\\251\n").is_err(), "halves in two values");
    }

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
