//! Consistent snapshots: a `REPEATABLE READ` transaction whose `pg_current_snapshot()`
//! tells which replicated transactions the snapshot already contains.

use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio_postgres::{SimpleQueryMessage, SimpleQueryRow, SimpleQueryStream, Statement};
use volt_shapes::RowValues;

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

/// How a snapshot reads its rows (see `SnapshotTx::begin_on`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RowsBy {
    /// `COPY (query) TO STDOUT`, prepared with the BEGIN: the least CPU per row for
    /// volt, so the way for a large snapshot.
    Copy,
    /// The BEGIN, the position, the query and the ROLLBACK as one simple query: the
    /// least CPU per snapshot for Postgres, so the way under a herd of small ones.
    OneQuery,
}

/// An open snapshot transaction on its own connection.
pub struct SnapshotTx {
    conn: PgConn,
    pub snapshot: PgSnapshot,
    rows: Option<Rows>,
}

/// The rows `begin_on` asked for.
enum Rows {
    /// The COPY, prepared.
    Copy(Statement),
    /// The rest of the one query's answer: its rows, then the ROLLBACK's completion.
    OneQuery(Pin<Box<SimpleQueryStream>>),
}

const BEGIN_SNAPSHOT: &str = "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; \
                              SELECT pg_current_snapshot()::text, pg_current_wal_lsn()::text";

impl SnapshotTx {
    pub async fn begin(
        config: &PgConfig,
        select_sql: Option<&str>,
        by: RowsBy,
    ) -> Result<SnapshotTx, PgError> {
        SnapshotTx::begin_on(config.connect().await?, select_sql, by).await
    }

    /// Begin on a session already open (one an earlier snapshot ended with `end`), and
    /// with `select_sql` set up the reading of its rows (`rows_then_end`) in the same
    /// round trip. Either way the values are the text output form, as pgoutput sends
    /// them on the replication stream.
    /// - `RowsBy::Copy`: `COPY (select_sql) TO STDOUT` is prepared with the BEGIN; the
    ///   two requests are sent together and Postgres answers them in order, so the COPY
    ///   is parsed inside the transaction. volt splits COPY's lines with less CPU per
    ///   row than tokio-postgres takes for a row (S1: about 1.1 against 1.25 us).
    /// - `RowsBy::OneQuery`: one simple query, whose answer is read up to the position
    ///   here and whose rows follow. One message and one answer cost Postgres 10-20%
    ///   less CPU per 500-row snapshot than the prepared COPY with its own statements
    ///   (BENCHMARKS.md, S2). A query Postgres cannot parse fails here.
    ///
    /// A query that fails as it runs fails `rows_then_end`.
    pub async fn begin_on(
        conn: PgConn,
        select_sql: Option<&str>,
        by: RowsBy,
    ) -> Result<SnapshotTx, PgError> {
        let (snapshot, rows) = match (select_sql, by) {
            (None, _) => (
                snapshot_of(&conn.simple_query(BEGIN_SNAPSHOT).await?)?,
                None,
            ),
            (Some(sql), RowsBy::Copy) => {
                let copy = format!("COPY ({sql}) TO STDOUT");
                // `join` polls the BEGIN first: it is sent first.
                let (messages, copy) =
                    futures::join!(conn.simple_query(BEGIN_SNAPSHOT), conn.prepare(&copy));
                (snapshot_of(&messages?)?, Some(Rows::Copy(copy?)))
            }
            (Some(sql), RowsBy::OneQuery) => {
                let mut rows = Box::pin(
                    conn.simple_query_raw(&format!("{BEGIN_SNAPSHOT}; {sql}; ROLLBACK"))
                        .await?,
                );
                // The BEGIN's completion, then the position's row and its completion.
                let mut row = Vec::new();
                loop {
                    match rows.next().await.transpose()? {
                        Some(m @ SimpleQueryMessage::Row(_)) => row.push(m),
                        Some(SimpleQueryMessage::CommandComplete(_)) if !row.is_empty() => break,
                        Some(_) => {}
                        None => {
                            return Err(PgError::Protocol(
                                "the snapshot query ended before its position".into(),
                            ));
                        }
                    }
                }
                (snapshot_of(&row)?, Some(Rows::OneQuery(rows)))
            }
        };
        Ok(SnapshotTx {
            conn,
            snapshot,
            rows,
        })
    }

    /// How `rows_then_end` reads the rows (None: `begin_on` was given no query).
    pub fn rows_by(&self) -> Option<RowsBy> {
        match self.rows.as_ref()? {
            Rows::Copy(_) => Some(RowsBy::Copy),
            Rows::OneQuery(_) => Some(RowsBy::OneQuery),
        }
    }

    /// Stream the rows of `sql`. The simple-query protocol returns every value in its
    /// text output form, exactly as pgoutput sends it on the replication stream.
    pub async fn rows(
        &self,
        sql: &str,
    ) -> Result<impl Stream<Item = Result<SnapshotRow, PgError>> + '_, PgError> {
        if matches!(self.rows, Some(Rows::OneQuery(_))) {
            // That query ends the transaction itself: `sql` would run outside it.
            return Err(PgError::Protocol(
                "a snapshot begun with its rows' query cannot run another".into(),
            ));
        }
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

/// The position in `BEGIN_SNAPSHOT`'s answer.
fn snapshot_of(messages: &[SimpleQueryMessage]) -> Result<PgSnapshot, PgError> {
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
    PgSnapshot::parse(text, parse_lsn(lsn).unwrap_or(0))
        .ok_or_else(|| PgError::Protocol(format!("unexpected pg_current_snapshot {text}")))
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
        let SnapshotTx { conn, rows, .. } = self;
        match rows {
            // A prepared statement is closed when dropped: before the session is reused.
            Some(Rows::Copy(copy)) => drop(copy),
            // Rows left unread: the query's own ROLLBACK is still behind them, and a
            // session is kept only once it is known to have run.
            Some(Rows::OneQuery(_)) => {
                conn.close(std::time::Duration::from_secs(5)).await;
                return None;
            }
            None => {}
        }
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

    /// Hand `row` each row `begin_on` asked for, then end the transaction as `end`
    /// does, without a round trip of its own: the COPY's ROLLBACK is sent as soon as the
    /// COPY has started and waits behind the rows, and the one query carries its own.
    /// On an error, Postgres's or `row`'s, the session is closed.
    pub async fn rows_then_end<E: From<PgError>>(
        self,
        mut row: impl FnMut(&dyn RowValues) -> Result<(), E>,
    ) -> Result<Option<PgConn>, E> {
        let SnapshotTx { conn, rows, .. } = self;
        let ended = match rows {
            None => {
                return Err(
                    PgError::Protocol("the snapshot began without a query to run".into()).into(),
                );
            }
            Some(Rows::OneQuery(mut rows)) => {
                let mut completed = 0;
                while let Some(message) = rows.next().await {
                    match message.map_err(PgError::from)? {
                        SimpleQueryMessage::Row(r) => row(&SnapshotRow(r))?,
                        SimpleQueryMessage::CommandComplete(_) => completed += 1,
                        _ => {}
                    }
                }
                // The SELECT's and the ROLLBACK's: a session is never kept inside the
                // snapshot's transaction, whatever the query held.
                if completed != 2 {
                    return Err(PgError::Protocol(format!(
                        "the snapshot query completed {completed} statements after its position, not 2"
                    ))
                    .into());
                }
                Ok(())
            }
            Some(Rows::Copy(copy)) => {
                let ended = {
                    let data = conn.copy_out(&copy).await.map_err(PgError::from)?;
                    let mut rollback = std::pin::pin!(conn.batch_execute("ROLLBACK"));
                    // Polled once, the ROLLBACK is on its way; its answer is read after
                    // the rows.
                    let early = match futures::poll!(rollback.as_mut()) {
                        std::task::Poll::Ready(ended) => Some(ended),
                        std::task::Poll::Pending => None,
                    };
                    // COPY's messages (one per row) are read, joined into blocks and
                    // checked as UTF-8 by a task of their own while this one decodes
                    // the rows and hands them on: for S1's million rows each of the
                    // two is a share of the work no longer waiting for the other.
                    let (blocks, mut received) = tokio::sync::mpsc::channel(READ_AHEAD_BLOCKS);
                    let reader = ReadAhead(tokio::spawn(read_ahead(data, blocks)));
                    let mut lines = CopyLines::default();
                    while let Some(block) = received.recv().await {
                        lines.feed(&block?, |r| row(r))?;
                    }
                    // The blocks stop when the reader ends, however it ends: only
                    // its own end means every row came.
                    reader.finished().await?;
                    if !lines.is_complete() {
                        return Err(
                            PgError::Protocol("the COPY's output ended mid-row".into()).into()
                        );
                    }
                    match early {
                        Some(ended) => ended,
                        None => rollback.await,
                    }
                };
                drop(copy);
                ended
            }
        };
        Ok(SnapshotTx::reusable(conn, ended).await)
    }
}

/// Bytes of COPY output per block handed from the read-ahead task to the rows' decoder.
const READ_AHEAD_BLOCK: usize = 64 * 1024;
/// Blocks read ahead of the decoder: what a snapshot holds beyond its rows' batch.
const READ_AHEAD_BLOCKS: usize = 4;

/// The task reading a snapshot's COPY ahead of its decoder; stopped when the snapshot
/// stops reading, on an error or when it is dropped.
struct ReadAhead(tokio::task::JoinHandle<()>);

impl ReadAhead {
    /// Wait for the reader's end. Its panic is the caller's, as it was when the caller
    /// read the rows itself: a Snapshotter that panics fails its Consumer
    /// (supervision.md), never completes a snapshot short of rows.
    async fn finished(mut self) -> Result<(), PgError> {
        match (&mut self.0).await {
            Ok(()) => Ok(()),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(PgError::Protocol(
                "the COPY's reader stopped before its end".into(),
            )),
        }
    }
}

impl Drop for ReadAhead {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Read `data` into blocks of text and send them on, then end; an error (Postgres's, or
/// output that is not UTF-8) is the last thing sent. Stops when the receiver is gone.
async fn read_ahead<B: AsRef<[u8]>, E>(
    data: impl Stream<Item = Result<B, E>>,
    blocks: tokio::sync::mpsc::Sender<Result<String, PgError>>,
) where
    PgError: From<E>,
{
    futures::pin_mut!(data);
    let mut text = Utf8Blocks::with_block(READ_AHEAD_BLOCK);
    loop {
        let ended = match data.next().await {
            Some(Ok(bytes)) => {
                text.push(bytes.as_ref());
                false
            }
            Some(Err(e)) => {
                // The rows Postgres sent before its error reach the decoder first;
                // its error is the one to tell (it says whether to retry), not that
                // of a character it cut off.
                if let Ok(rows) = text.take()
                    && !rows.is_empty()
                {
                    let _ = blocks.send(Ok(rows)).await;
                }
                let _ = blocks.send(Err(e.into())).await;
                return;
            }
            None => true,
        };
        if ended || text.len() >= READ_AHEAD_BLOCK {
            let block = text.take();
            let failed = block.is_err();
            if blocks.send(block).await.is_err() || failed {
                return;
            }
        }
        if ended {
            if !text.is_empty() {
                let _ = blocks
                    .send(Err(PgError::Protocol(
                        "the COPY's output ended mid-character".into(),
                    )))
                    .await;
            }
            return;
        }
    }
}

/// Bytes taken as text a block at a time: one UTF-8 check for many rows, not one per
/// row. A character cut off at a block's end waits for the rest of it.
#[derive(Default)]
struct Utf8Blocks {
    pending: Vec<u8>,
    /// The bytes a block is taken at, about: each new block has room for this and a
    /// row more, so it is not grown (copied) on the way.
    block: usize,
}

impl Utf8Blocks {
    fn with_block(block: usize) -> Utf8Blocks {
        Utf8Blocks {
            pending: Vec::with_capacity(block + block / 4),
            block,
        }
    }

    fn push(&mut self, data: &[u8]) {
        self.pending.extend_from_slice(data);
    }

    fn len(&self) -> usize {
        self.pending.len()
    }

    fn is_empty(&self) -> bool {
        self.pending.is_empty()
    }

    /// The bytes pushed so far as text, but for a character whose end has not come.
    fn take(&mut self) -> Result<String, PgError> {
        let next = Vec::with_capacity(self.block + self.block / 4);
        match String::from_utf8(std::mem::replace(&mut self.pending, next)) {
            Ok(text) => Ok(text),
            Err(e) if e.utf8_error().error_len().is_none() => {
                let valid = e.utf8_error().valid_up_to();
                let mut bytes = e.into_bytes();
                self.pending.extend_from_slice(&bytes[valid..]);
                bytes.truncate(valid);
                String::from_utf8(bytes).map_err(|e| not_utf8(e.utf8_error()))
            }
            Err(e) => Err(not_utf8(e.utf8_error())),
        }
    }
}

/// Splits the data of `COPY ... TO STDOUT` (text format) into rows, whatever the
/// boundaries of the blocks it comes in. Its buffers are reused from row to row: S1's
/// snapshot is a million rows.
#[derive(Default)]
pub struct CopyLines {
    /// The start of a row whose end is in a later block.
    partial: String,
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

impl RowValues for CopyRow<'_> {
    fn value(&self, i: usize) -> Option<&str> {
        self.get(i)
    }
}

impl CopyLines {
    /// Call `row` with each complete row of `data` (COPY's output as text: see
    /// `Utf8Blocks`).
    pub fn feed<E: From<PgError>>(
        &mut self,
        data: &str,
        mut row: impl FnMut(&CopyRow<'_>) -> Result<(), E>,
    ) -> Result<(), E> {
        let mut rest = data;
        if !self.partial.is_empty() {
            let Some(end) = memchr::memchr(b'\n', rest.as_bytes()) else {
                self.partial.push_str(rest);
                return Ok(());
            };
            let mut line = std::mem::take(&mut self.partial);
            line.push_str(&rest[..end]);
            rest = &rest[end + 1..];
            row(&decode_copy_line(
                &line,
                &mut self.fields,
                &mut self.unescaped,
            )?)?;
            line.clear();
            self.partial = line;
        }
        while let Some(end) = memchr::memchr(b'\n', rest.as_bytes()) {
            row(&decode_copy_line(
                &rest[..end],
                &mut self.fields,
                &mut self.unescaped,
            )?)?;
            rest = &rest[end + 1..];
        }
        self.partial.push_str(rest);
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

/// One COPY text-format line (without its newline) into its values. Its separators
/// and escapes are ASCII, so every value of the line is text as it is; only an escaped
/// value is checked again, once unescaped.
fn decode_copy_line<'a>(
    text: &'a str,
    fields: &'a mut Vec<Field>,
    unescaped: &'a mut Vec<u8>,
) -> Result<CopyRow<'a>, PgError> {
    let line = text.as_bytes();
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

impl RowValues for SnapshotRow {
    fn value(&self, i: usize) -> Option<&str> {
        self.get(i)
    }
}

impl SnapshotRow {
    /// Value `i`, NULL (or past the end) as None.
    pub fn get(&self, i: usize) -> Option<&str> {
        self.0.try_get(i).ok().flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Rows = Vec<Vec<Option<String>>>;

    /// The rows of COPY output that came in `parts`, read as `rows_then_end` reads
    /// them: checked as text block by block, then split into rows.
    fn rows_of(parts: &[&[u8]]) -> Result<Rows, PgError> {
        let (mut text, mut lines, mut rows) = (Utf8Blocks::default(), CopyLines::default(), vec![]);
        for part in parts {
            text.push(part);
            lines.feed(&text.take()?, |r| {
                rows.push((0..r.len()).map(|i| r.get(i).map(str::to_string)).collect());
                Ok::<(), PgError>(())
            })?;
        }
        if !text.is_empty() || !lines.is_complete() {
            return Err(PgError::Protocol("ended mid-row".into()));
        }
        Ok(rows)
    }

    #[test]
    fn copy_lines_unescape_to_the_values_and_nulls_postgres_sent() {
        let data =
            "1\t\\N\ta\\tb\\nc\\\\d\\x41\\101\\r\\b\\f\\v\n2\t\t\\\\x00ff caf\u{e9} \u{1f600}\n"
                .as_bytes();
        // Split anywhere, within a character too: rows and characters may span blocks.
        for cut in 0..data.len() {
            assert_eq!(
                rows_of(&[&data[..cut], &data[cut..]]).unwrap(),
                vec![
                    vec![
                        Some("1".to_string()),
                        None,
                        Some("a\tb\nc\\dAA\r\u{8}\u{c}\u{b}".to_string())
                    ],
                    vec![
                        Some("2".to_string()),
                        Some(String::new()),
                        Some("\\x00ff caf\u{e9} \u{1f600}".to_string())
                    ],
                ],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn copy_values_must_be_utf8_whether_sent_raw_or_escaped() {
        // An escaped multi-byte character, and the rows around it untouched.
        let ok = rows_of(&[b"a\t\\303\\251\tb\nc\t\\N\tca\xc3\xa9\n"]).unwrap();
        assert_eq!(
            ok,
            vec![
                vec![Some("a".into()), Some("\u{e9}".into()), Some("b".into())],
                vec![Some("c".into()), None, Some("ca\u{e9}".into())],
            ]
        );
        assert!(rows_of(&[b"a\t\xff\n"]).is_err(), "a raw invalid byte");
        assert!(
            rows_of(&[b"a\t\xc3", b"\n"]).is_err(),
            "a raw half character"
        );
        assert!(
            rows_of(&[b"a\t\\303\n"]).is_err(),
            "an escaped half character"
        );
        assert!(
            rows_of(&[b"\\303\t\\251\n"]).is_err(),
            "halves in two values"
        );
    }

    /// What `read_ahead` sends for `messages`, as the decoder receives it.
    async fn read_ahead_of(
        messages: Vec<Result<Vec<u8>, PgError>>,
    ) -> Vec<Result<String, PgError>> {
        let (blocks, mut received) = tokio::sync::mpsc::channel(READ_AHEAD_BLOCKS);
        let reader = ReadAhead(tokio::spawn(read_ahead(
            futures::stream::iter(messages),
            blocks,
        )));
        let mut out = Vec::new();
        while let Some(block) = received.recv().await {
            out.push(block);
        }
        reader.finished().await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_read_ahead_sends_every_row_in_order_in_blocks_of_about_64_kib() {
        let rows: Vec<String> = (0..20_000)
            .map(|i| format!("{i}\tcaf\u{e9} {i}\n"))
            .collect();
        let blocks = read_ahead_of(rows.iter().map(|r| Ok(r.clone().into_bytes())).collect()).await;
        let blocks: Vec<String> = blocks.into_iter().map(Result::unwrap).collect();
        assert!(
            blocks.len() > 4,
            "more blocks than the channel holds: {}",
            blocks.len()
        );
        let longest_row = rows.iter().map(String::len).max().unwrap();
        for block in &blocks[..blocks.len() - 1] {
            assert!((READ_AHEAD_BLOCK..READ_AHEAD_BLOCK + longest_row).contains(&block.len()));
        }
        assert_eq!(blocks.concat(), rows.concat());
    }

    #[tokio::test]
    async fn a_copy_that_ends_mid_character_or_with_bytes_that_are_not_utf8_ends_in_an_error() {
        let protocol_error = |sent: &[Result<String, PgError>], what: &str| matches!(sent.last(), Some(Err(PgError::Protocol(m))) if m.contains(what));
        let mid = read_ahead_of(vec![Ok(b"a\n".to_vec()), Ok(b"b\t\xc3".to_vec())]).await;
        assert!(protocol_error(&mid, "mid-character"), "{mid:?}");
        assert_eq!(mid[0].as_deref().ok(), Some("a\nb\t"));
        let invalid = read_ahead_of(vec![Ok(b"a\n\xff\n".to_vec()), Ok(b"b\n".to_vec())]).await;
        assert!(protocol_error(&invalid, "not UTF-8"), "{invalid:?}");
        assert_eq!(invalid.len(), 1, "nothing after the error: {invalid:?}");
    }

    #[tokio::test]
    async fn rows_postgres_sent_before_its_error_come_before_the_error_and_it_is_the_one_told() {
        let failed = || PgError::Query {
            message: "division by zero".into(),
            code: Some("22012".into()),
        };
        let sent = read_ahead_of(vec![
            Ok(b"1\n".to_vec()),
            Ok(b"2\n\xc3".to_vec()),
            Err(failed()),
        ])
        .await;
        assert_eq!(sent.len(), 2, "{sent:?}");
        assert_eq!(sent[0].as_deref().ok(), Some("1\n2\n"));
        assert!(matches!(&sent[1], Err(PgError::Query { code: Some(c), .. }) if c == "22012"));
    }

    #[tokio::test]
    async fn a_reader_that_panics_fails_its_snapshot_rather_than_ending_it_short() {
        let reader = ReadAhead(tokio::spawn(async { panic!("reader failed") }));
        let finished = tokio::spawn(reader.finished()).await;
        assert!(finished.is_err_and(|e| e.is_panic()));
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
