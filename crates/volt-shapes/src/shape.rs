//! Shape definitions, their validation against a table, and the conversion of
//! snapshot rows and replicated changes into the JSON log items clients read.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::{Map, Value as Json, json};

use crate::change::{Change, ChangeKind, Relation, Row, Value};
use crate::ident::{parse_identifier, parse_table, quote_ident, split_unquoted};
use crate::schema::TableSchema;
use crate::where_clause::WhereClause;

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum Replica {
    #[default]
    Default,
    Full,
}

/// What a client asked for, normalised so equal definitions compare equal.
/// It is the identity of a shape: the same definition always maps to the same handle.
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct ShapeDef {
    pub schema: String,
    pub table: String,
    pub where_sql: Option<String>,
    pub params: Vec<String>,
    /// Selected columns in the order given; `None` selects every column.
    pub columns: Option<Vec<String>>,
    pub replica: Replica,
    /// `log=changes_only`: no snapshot rows, only changes from the shape's creation on.
    #[serde(default)]
    pub log: LogMode,
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum LogMode {
    #[default]
    Full,
    ChangesOnly,
}

/// A request error attached to the parameter that caused it, as Electric reports them.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{param}: {message}")]
pub struct ParamError {
    pub param: &'static str,
    pub message: String,
}

impl ParamError {
    pub fn new(param: &'static str, message: impl Into<String>) -> Self {
        ParamError {
            param,
            message: message.into(),
        }
    }
}

impl ShapeDef {
    /// Build a definition from raw request parameters (no database access).
    pub fn from_params(
        table: Option<&str>,
        where_sql: Option<&str>,
        params: Vec<String>,
        columns: Option<&str>,
        replica: Option<&str>,
        log: Option<&str>,
    ) -> Result<ShapeDef, ParamError> {
        let table = table
            .filter(|t| !t.trim().is_empty())
            .ok_or_else(|| ParamError::new("table", "can't be blank"))?;
        let (schema, table) = parse_table(table).map_err(|m| ParamError::new("table", m))?;
        let where_sql = where_sql
            .map(str::trim)
            .filter(|w| !w.is_empty())
            .map(str::to_string);
        let columns = match columns {
            None => None,
            Some(raw) => Some(
                split_unquoted(raw, ',')
                    .into_iter()
                    .map(parse_identifier)
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|m| ParamError::new("columns", m))?,
            ),
        };
        let replica = match replica {
            None | Some("default") => Replica::Default,
            Some("full") => Replica::Full,
            Some(_) => return Err(ParamError::new("replica", "is invalid")),
        };
        let log = match log {
            None | Some("full") => LogMode::Full,
            Some("changes_only") => LogMode::ChangesOnly,
            Some(_) => return Err(ParamError::new("log", "is invalid")),
        };
        Ok(ShapeDef {
            schema,
            table,
            where_sql,
            params,
            columns,
            replica,
            log,
        })
    }

    pub fn qualified_table(&self) -> String {
        format!("{}.{}", quote_ident(&self.schema), quote_ident(&self.table))
    }
}

/// Encodes snapshot rows as log items straight into a byte buffer. The bytes are those
/// serde_json prints for the item (its maps order keys by name), without building a
/// `Value` per row: the snapshot path's cost is mostly this encoding.
pub struct SnapshotEncoder {
    /// `{"headers":{...},"key":"` and the key's escaped table prefix.
    head: Vec<u8>,
    /// The value's fields by name: (position in the snapshot row, `"name":`).
    fields: Vec<(usize, Vec<u8>)>,
    /// Positions in the snapshot row of the key columns, in key order.
    key_slots: Vec<usize>,
}

/// A row's values by position (NULL as `None`), however they are held: the encoder
/// reads COPY rows in place, without collecting them into a vector per row.
pub trait RowValues {
    fn value(&self, i: usize) -> Option<&str>;
}

impl RowValues for [Option<&str>] {
    fn value(&self, i: usize) -> Option<&str> {
        self.get(i).copied().flatten()
    }
}

fn json_string(out: &mut Vec<u8>, s: &str) {
    out.reserve(s.len() + 2);
    out.push(b'"');
    json_escaped(out, s);
    out.push(b'"');
}

/// `s` as the inside of a JSON string (no quotes). Most values need no escape: copied as
/// they are, without serde_json's writer plumbing (3.7% of volt's CPU in S1's
/// snapshot). serde_json escapes exactly the control characters, the quote and the
/// backslash.
fn json_escaped(out: &mut Vec<u8>, s: &str) {
    if !needs_escape(s.as_bytes()) {
        out.extend_from_slice(s.as_bytes());
        return;
    }
    let start = out.len();
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
    // Without its quotes.
    out.pop();
    out.remove(start);
}

/// Whether `bytes` holds a byte JSON escapes: a control character, `"` or `\\`. Eight
/// bytes at a time (text values are mostly longer than that, and a byte-wise check
/// was a tenth of encoding a snapshot row).
fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // A byte of `x` is zero, or below `n` (n <= 128): its high bit is set in the result.
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGHS;
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGHS;
    let mut chunks = bytes.chunks_exact(8);
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().unwrap_or_default());
        if below(x, 0x20) | zero(x ^ (ONES * u64::from(b'"'))) | zero(x ^ (ONES * u64::from(b'\\')))
            != 0
        {
            return true;
        }
    }
    chunks
        .remainder()
        .iter()
        .any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}

/// One key column's part of a key, escaped for the inside of the key's JSON string:
/// `/"value"` (slashes doubled) or `/_` for NULL.
fn write_key_value(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => {
            out.extend_from_slice(br#"/\""#);
            if v.contains('/') {
                json_escaped(out, &v.replace('/', "//"));
            } else {
                json_escaped(out, v);
            }
            out.extend_from_slice(br#"\""#);
        }
        None => out.extend_from_slice(b"/_"),
    }
}

/// A column's value in an item's `value`: a JSON string, or `null`.
fn json_text_or_null(out: &mut Vec<u8>, v: Option<&str>) {
    match v {
        Some(v) => json_string(out, v),
        None => out.extend_from_slice(b"null"),
    }
}

/// An item's line after its head, up to the key: its headers (`lsn` to `txids`) and
/// `"key":`, as serde_json prints them.
fn write_item_headers(
    out: &mut Vec<u8>,
    (lsn, op, operation): (u64, u64, &str),
    relation: (&str, &str),
    xid: u32,
) {
    use std::io::Write;
    // Writing into a Vec cannot fail.
    let _ = write!(
        out,
        r#""lsn":"{lsn}","op_position":{op},"operation":"{operation}","relation":["#
    );
    json_string(out, relation.0);
    out.push(b',');
    json_string(out, relation.1);
    let _ = write!(out, r#"],"txids":[{xid}]}},"key":"#);
}

impl SnapshotEncoder {
    fn new(shape: &Shape, mark: Option<u32>) -> SnapshotEncoder {
        let cols = shape.snapshot_columns();
        let slot_of = |col: usize| cols.iter().position(|&c| c == col).unwrap_or(usize::MAX);
        let mut head = br#"{"headers":{"operation":"insert","relation":["#.to_vec();
        json_string(&mut head, &shape.table.schema);
        head.push(b',');
        json_string(&mut head, &shape.table.name);
        head.push(b']');
        if let Some(mark) = mark {
            head.extend_from_slice(format!(r#","snapshot_mark":{mark}"#).as_bytes());
        }
        head.extend_from_slice(br#"},"key":""#);
        json_escaped(&mut head, &shape.key_prefix);
        let mut fields: Vec<(&str, usize)> = shape
            .selected
            .iter()
            .map(|&c| (shape.table.columns[c].name.as_str(), slot_of(c)))
            .collect();
        fields.sort();
        fields.dedup_by(|a, b| a.0 == b.0);
        let fields = fields
            .into_iter()
            .map(|(name, slot)| {
                let mut f = Vec::new();
                json_string(&mut f, name);
                f.push(b':');
                (slot, f)
            })
            .collect();
        SnapshotEncoder {
            head,
            fields,
            key_slots: shape.key_columns.iter().map(|&c| slot_of(c)).collect(),
        }
    }

    /// Append one row's item (values in `snapshot_columns` order) to `out`.
    pub fn encode(&self, out: &mut Vec<u8>, values: &(impl RowValues + ?Sized)) {
        let value = |slot: usize| values.value(slot);
        // `head` ends with the key's opening quote and its escaped table prefix: the key
        // is written escaped as it is built (every key holds quotes, so escaping it
        // afterwards always took serde_json's slow path).
        out.extend_from_slice(&self.head);
        for &slot in &self.key_slots {
            write_key_value(out, value(slot));
        }
        out.push(b'"');
        out.extend_from_slice(br#","value":{"#);
        for (n, (slot, name)) in self.fields.iter().enumerate() {
            if n > 0 {
                out.push(b',');
            }
            out.extend_from_slice(name);
            json_text_or_null(out, value(*slot));
        }
        out.extend_from_slice(b"}}");
    }
}

/// A definition validated against its table: what the pipeline routes and encodes with.
#[derive(Debug, Clone)]
pub struct Shape {
    pub def: ShapeDef,
    pub table: Arc<TableSchema>,
    pub where_clause: Option<WhereClause>,
    /// Indexes into `table.columns` of the selected columns.
    pub selected: Vec<usize>,
    /// Indexes into `table.columns` of the key columns, in key order.
    pub key_columns: Vec<usize>,
    key_prefix: String,
    /// `selected` in the order of their names, each once: the order of a value's fields.
    selected_by_name: Vec<usize>,
}

impl Shape {
    pub fn new(def: ShapeDef, table: Arc<TableSchema>) -> Result<Shape, ParamError> {
        let selected = match &def.columns {
            None => (0..table.columns.len()).collect::<Vec<_>>(),
            Some(cols) => {
                let missing: Vec<&str> = cols
                    .iter()
                    .filter(|c| table.column_index(c).is_none())
                    .map(String::as_str)
                    .collect();
                if !missing.is_empty() {
                    return Err(ParamError::new(
                        "columns",
                        format!(
                            "The following columns are not found on the table: {}",
                            missing.join(", ")
                        ),
                    ));
                }
                let idx: Vec<usize> = cols.iter().filter_map(|c| table.column_index(c)).collect();
                let missing_pk: Vec<&str> = table
                    .columns
                    .iter()
                    .enumerate()
                    .filter(|(i, c)| c.pk_index.is_some() && !idx.contains(i))
                    .map(|(_, c)| c.name.as_str())
                    .collect();
                if !missing_pk.is_empty() {
                    return Err(ParamError::new(
                        "columns",
                        format!(
                            "The list of columns must include all primary key columns, missing: {}",
                            missing_pk.join(", ")
                        ),
                    ));
                }
                idx
            }
        };
        let where_clause = match &def.where_sql {
            None => None,
            Some(sql) => Some(
                WhereClause::parse(sql, &table.columns, &def.params)
                    .map_err(|e| ParamError::new("where", e.to_string()))?,
            ),
        };
        let key_columns = table.key_columns();
        let key_prefix = format!(
            "\"{}\".\"{}\"",
            escape_key_ident(&table.schema),
            escape_key_ident(&table.name)
        );
        let mut selected_by_name = selected.clone();
        selected_by_name.sort_by(|&a, &b| table.columns[a].name.cmp(&table.columns[b].name));
        selected_by_name.dedup();
        Ok(Shape {
            def,
            table,
            where_clause,
            selected,
            key_columns,
            key_prefix,
            selected_by_name,
        })
    }

    /// The persisted form of this shape: its definition and the table it was validated
    /// against (so a restart needs no database to rebuild it).
    pub fn to_definition_json(&self) -> String {
        json!({"def": self.def, "table": *self.table}).to_string()
    }

    /// The parts of a persisted shape, so a caller restoring many shapes can share one
    /// `TableSchema` between the shapes of a table.
    pub fn decode_definition(text: &str) -> Result<(ShapeDef, TableSchema), String> {
        #[derive(serde::Deserialize)]
        struct Stored {
            def: ShapeDef,
            table: TableSchema,
        }
        let stored: Stored = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Ok((stored.def, stored.table))
    }

    /// Whether a Relation message describes the table this shape was built on: same
    /// name, same columns with the same types. Anything else invalidates the shape.
    pub fn matches_relation(&self, rel: &Relation) -> bool {
        rel.schema == self.table.schema
            && rel.name == self.table.name
            && rel.columns.len() == self.table.columns.len()
            && rel
                .columns
                .iter()
                .zip(&self.table.columns)
                .all(|(r, c)| r.name == c.name && r.type_oid == c.type_oid)
    }

    /// The snapshot query: the selected columns (plus key columns) of matching rows.
    pub fn snapshot_sql(&self) -> String {
        let mut sql = self.select_from();
        if let Some(w) = &self.where_clause {
            sql.push_str(" WHERE ");
            sql.push_str(&w.to_sql());
        }
        sql
    }

    /// `snapshot_sql` with the rows further narrowed by `extra` (SQL of a boolean
    /// expression over the table), for subset snapshots.
    pub fn snapshot_sql_narrowed(&self, extra: Option<&str>) -> String {
        let Some(extra) = extra else {
            return self.snapshot_sql();
        };
        let mut sql = self.select_from();
        match &self.where_clause {
            Some(w) => sql.push_str(&format!(" WHERE ({}) AND ({extra})", w.to_sql())),
            None => sql.push_str(&format!(" WHERE ({extra})")),
        }
        sql
    }

    fn select_from(&self) -> String {
        let cols: Vec<String> = self
            .snapshot_columns()
            .into_iter()
            .map(|i| quote_ident(&self.table.columns[i].name))
            .collect();
        format!(
            "SELECT {} FROM {}",
            cols.join(", "),
            self.def.qualified_table()
        )
    }

    /// Columns returned per row by `snapshot_sql`, as table column indexes.
    pub fn snapshot_columns(&self) -> Vec<usize> {
        self.selected
            .iter()
            .chain(
                self.key_columns
                    .iter()
                    .filter(|k| !self.selected.contains(k)),
            )
            .copied()
            .collect()
    }

    /// An encoder of this shape's snapshot rows as log items (values in
    /// `snapshot_columns` order); `mark` is a subset snapshot's `snapshot_mark`, which
    /// the client uses to tell subsets apart.
    pub fn snapshot_encoder(&self, mark: Option<u32>) -> SnapshotEncoder {
        SnapshotEncoder::new(self, mark)
    }

    /// `"schema"."table"/"pk1"/"pk2"`, identical for snapshot rows and changes.
    pub fn key(&self, row: &[Option<&str>]) -> String {
        let mut key = self.key_prefix.clone();
        for &i in &self.key_columns {
            match row.get(i).copied().flatten() {
                Some(v) => {
                    key.push_str("/\"");
                    key.push_str(&v.replace('/', "//"));
                    key.push('"');
                }
                None => key.push_str("/_"),
            }
        }
        key
    }

    fn value_of(&self, row: &[Option<&str>], cols: impl Iterator<Item = usize>) -> Json {
        let mut map = Map::new();
        for i in cols {
            let v = row.get(i).copied().flatten();
            map.insert(
                self.table.columns[i].name.clone(),
                v.map_or(Json::Null, |s| Json::String(s.to_string())),
            );
        }
        Json::Object(map)
    }

    fn matches(&self, row: &[Option<&str>]) -> bool {
        self.where_clause.as_ref().is_none_or(|w| w.matches(row))
    }

    /// What one replicated change means for this shape, its rows borrowed from the
    /// change. Where-clause moves become inserts and deletes.
    pub(crate) fn plan<'c>(&self, change: &'c Change) -> Plan<'c> {
        self.plan_known(change, false)
    }

    /// `plan`; `matched`: the change's row (an insert's or a delete's) is known to match
    /// the clause, which is then not evaluated again.
    pub(crate) fn plan_known<'c>(&self, change: &'c Change, matched: bool) -> Plan<'c> {
        let rel = &change.relation;
        let map = |row: &'c Row, fallback: Option<&'c Row>| -> Vec<Option<&'c str>> {
            self.table
                .columns
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    // The relation's columns are the table's, in order, unless its
                    // schema changed (and the shape is about to be invalidated).
                    let idx = if rel.columns.get(i).is_some_and(|r| r.name == c.name) {
                        i
                    } else {
                        rel.column_index(&c.name)?
                    };
                    match row.get(idx)? {
                        Value::Text(t) => Some(&**t),
                        Value::Null => None,
                        // An unchanged TOAST value is the old row's value.
                        Value::Unchanged => fallback
                            .and_then(|old| old.get(idx))
                            .and_then(Value::as_text),
                    }
                })
                .collect()
        };
        match &change.kind {
            ChangeKind::Insert { new } => {
                let new = map(new, None);
                if matched || self.matches(&new) {
                    Plan::Insert(new)
                } else {
                    Plan::Skip
                }
            }
            ChangeKind::Delete { old } => {
                let old = map(old, None);
                if matched || self.matches(&old) {
                    Plan::Delete(old)
                } else {
                    Plan::Skip
                }
            }
            ChangeKind::Update { old, new } => {
                let new = map(new, old.as_ref());
                // Without an old row (no REPLICA IDENTITY FULL yet) treat it as unchanged
                // apart from the new values.
                let old = old
                    .as_ref()
                    .map(|o| map(o, None))
                    .unwrap_or_else(|| new.clone());
                match (self.matches(&old), self.matches(&new)) {
                    (false, false) => Plan::Skip,
                    (false, true) => Plan::Insert(new),
                    (true, false) => Plan::Delete(old),
                    // Keys are injective in the key columns' values.
                    (true, true) if self.key_columns.iter().any(|&k| old.get(k) != new.get(k)) => {
                        Plan::KeyChange { old, new }
                    }
                    (true, true) => Plan::Update { old, new },
                }
            }
        }
    }

    /// Turn one replicated change into this shape's log items (none, one, or two for a
    /// primary-key change).
    pub fn convert(&self, change: &Change) -> Vec<LogItem> {
        let op = change.op;
        match self.plan(change) {
            Plan::Skip => vec![],
            Plan::KeyChange { old, new } => self.key_change_items(op, &old, &new).into(),
            plan => self.single_item(op, &plan).into_iter().collect(),
        }
    }

    /// The one item of an insert, a delete or an update (none for an update of no
    /// selected column); `None` for the other plans too.
    pub(crate) fn single_item(&self, op: u64, plan: &Plan) -> Option<LogItem> {
        match plan {
            Plan::Insert(new) => Some(self.insert_item(op, new, None)),
            Plan::Delete(old) => Some(self.delete_item(op, old, None)),
            Plan::Update { old, new } => self.update_item(op, old, new),
            Plan::Skip | Plan::KeyChange { .. } => None,
        }
    }

    /// Append the tail (see `LogItem::write_tail`) of the one item of an insert, a
    /// delete or an update, written straight from the change's values: the bytes
    /// `single_item` and `write_tail` make, without building the item and its maps.
    /// False, with nothing written, where `single_item` makes no item.
    pub(crate) fn write_single_tail(
        &self,
        out: &mut Vec<u8>,
        op: u64,
        plan: &Plan,
        relation: (&str, &str),
        xid: u32,
        lsn: u64,
    ) -> bool {
        let (operation, row, old) = match plan {
            Plan::Insert(new) => ("insert", new, None),
            Plan::Delete(old) => ("delete", old, None),
            Plan::Update { old, new } => ("update", new, Some(old)),
            Plan::Skip | Plan::KeyChange { .. } => return false,
        };
        let changed = |i: usize| old.is_some_and(|old| old.get(i) != row.get(i));
        if old.is_some() && !self.selected.iter().any(|&i| changed(i)) {
            return false;
        }
        write_item_headers(out, (lsn, op, operation), relation, xid);
        out.push(b'"');
        json_escaped(out, &self.key_prefix);
        for &i in &self.key_columns {
            write_key_value(out, row.get(i).copied().flatten());
        }
        out.push(b'"');
        let full = self.def.replica == Replica::Full;
        if let (Some(old), true) = (old, full) {
            out.extend_from_slice(br#","old_value":"#);
            self.write_fields(out, &self.selected_by_name, old, changed);
        }
        out.extend_from_slice(br#","value":"#);
        match (operation, full) {
            ("delete", false) => {
                let mut keys = self.key_columns.clone();
                keys.sort_by(|&a, &b| self.table.columns[a].name.cmp(&self.table.columns[b].name));
                keys.dedup();
                self.write_fields(out, &keys, row, |_| true);
            }
            ("update", false) => self.write_fields(out, &self.selected_by_name, row, |i| {
                self.key_columns.contains(&i) || changed(i)
            }),
            _ => self.write_fields(out, &self.selected_by_name, row, |_| true),
        }
        out.push(b'}');
        true
    }

    /// A JSON object of the columns `by_name` (in that order) that `include` takes.
    fn write_fields(
        &self,
        out: &mut Vec<u8>,
        by_name: &[usize],
        row: &[Option<&str>],
        include: impl Fn(usize) -> bool,
    ) {
        out.push(b'{');
        let mut first = true;
        for &i in by_name.iter().filter(|&&i| include(i)) {
            if !first {
                out.push(b',');
            }
            first = false;
            json_string(out, &self.table.columns[i].name);
            out.push(b':');
            json_text_or_null(out, row.get(i).copied().flatten());
        }
        out.push(b'}');
    }

    /// A primary-key change: a delete of the old key and an insert of the new, each
    /// naming the other.
    pub(crate) fn key_change_items(
        &self,
        op: u64,
        old: &[Option<&str>],
        new: &[Option<&str>],
    ) -> [LogItem; 2] {
        let (old_key, new_key) = (self.key(old), self.key(new));
        [
            self.delete_item(op, old, Some(("key_change_to", &new_key))),
            self.insert_item(op + 1, new, Some(("key_change_from", &old_key))),
        ]
    }

    fn insert_item(&self, op: u64, row: &[Option<&str>], extra: Option<(&str, &str)>) -> LogItem {
        LogItem {
            op,
            operation: "insert",
            key: self.key(row),
            value: self.value_of(row, self.selected.iter().copied()),
            old_value: None,
            extra: extra.map(|(k, v)| (k.to_string(), v.to_string())),
        }
    }

    fn delete_item(&self, op: u64, row: &[Option<&str>], extra: Option<(&str, &str)>) -> LogItem {
        let value = match self.def.replica {
            Replica::Default => self.value_of(row, self.key_columns.iter().copied()),
            Replica::Full => self.value_of(row, self.selected.iter().copied()),
        };
        LogItem {
            op,
            operation: "delete",
            key: self.key(row),
            value,
            old_value: None,
            extra: extra.map(|(k, v)| (k.to_string(), v.to_string())),
        }
    }

    fn update_item(&self, op: u64, old: &[Option<&str>], new: &[Option<&str>]) -> Option<LogItem> {
        let changed: Vec<usize> = self
            .selected
            .iter()
            .copied()
            .filter(|&i| old.get(i) != new.get(i))
            .collect();
        if changed.is_empty() {
            return None;
        }
        let (value, old_value) = match self.def.replica {
            Replica::Default => {
                let cols: Vec<usize> = self
                    .key_columns
                    .iter()
                    .copied()
                    .filter(|k| self.selected.contains(k))
                    .chain(
                        changed
                            .iter()
                            .copied()
                            .filter(|c| !self.key_columns.contains(c)),
                    )
                    .collect();
                (self.value_of(new, cols.into_iter()), None)
            }
            Replica::Full => (
                self.value_of(new, self.selected.iter().copied()),
                Some(self.value_of(old, changed.iter().copied())),
            ),
        };
        Some(LogItem {
            op,
            operation: "update",
            key: self.key(new),
            value,
            old_value,
            extra: None,
        })
    }

    /// The `electric-schema` header value for this shape.
    pub fn schema_header(&self) -> String {
        let map: BTreeMap<&str, _> = self
            .selected
            .iter()
            .map(|&i| {
                let c = &self.table.columns[i];
                (c.name.as_str(), c.describe())
            })
            .collect();
        serde_json::to_string(&map).unwrap_or_else(|_| "{}".into())
    }
}

fn escape_key_ident(ident: &str) -> String {
    ident.replace('/', "//").replace('.', "..")
}

/// What a change means for one shape.
pub(crate) enum Plan<'c> {
    Skip,
    Insert(Vec<Option<&'c str>>),
    Delete(Vec<Option<&'c str>>),
    Update {
        old: Vec<Option<&'c str>>,
        new: Vec<Option<&'c str>>,
    },
    KeyChange {
        old: Vec<Option<&'c str>>,
        new: Vec<Option<&'c str>>,
    },
}

/// One change of a shape's log before its transaction headers are known.
#[derive(Debug, Clone, PartialEq)]
pub struct LogItem {
    pub op: u64,
    pub operation: &'static str,
    pub key: String,
    pub value: Json,
    pub old_value: Option<Json>,
    pub extra: Option<(String, String)>,
}

impl LogItem {
    /// The JSON line stored in the log and sent to clients.
    pub fn to_json(&self, relation: (&str, &str), xid: u32, lsn: u64, last: bool) -> String {
        let mut out = Vec::with_capacity(256);
        self.write_json(&mut out, relation, xid, lsn, last);
        // Built from `str`s and ASCII only.
        String::from_utf8(out).unwrap_or_default()
    }

    /// Append the item's JSON line to `out`: the bytes serde_json prints for it (its maps
    /// order keys by name), written straight out instead of through a map per item, as
    /// `SnapshotEncoder` does for snapshot rows.
    pub fn write_json(
        &self,
        out: &mut Vec<u8>,
        relation: (&str, &str),
        xid: u32,
        lsn: u64,
        last: bool,
    ) {
        write_head(out, self.extra.as_ref(), last);
        self.write_tail(out, relation, xid, lsn);
    }

    /// The line after its head (see `write_head`): the same for every shape that renders
    /// the change alike, whether or not it is the shape's last of the transaction.
    pub(crate) fn write_tail(&self, out: &mut Vec<u8>, relation: (&str, &str), xid: u32, lsn: u64) {
        write_item_headers(out, (lsn, self.op, self.operation), relation, xid);
        json_string(out, &self.key);
        if let Some(old) = &self.old_value {
            out.extend_from_slice(br#","old_value":"#);
            let _ = serde_json::to_writer(&mut *out, old);
        }
        out.extend_from_slice(br#","value":"#);
        let _ = serde_json::to_writer(&mut *out, &self.value);
        out.push(b'}');
    }
}

/// The start of an item's line, up to the headers that differ between shapes: a key
/// change's partner key and whether this is the shape's last change of the transaction.
pub(crate) fn write_head(out: &mut Vec<u8>, extra: Option<&(String, String)>, last: bool) {
    out.extend_from_slice(br#"{"headers":{"#);
    // `key_change_from`/`key_change_to` sort before `last`.
    if let Some((k, v)) = extra {
        json_string(out, k);
        out.push(b':');
        json_string(out, v);
        out.push(b',');
    }
    if last {
        out.extend_from_slice(br#""last":true,"#);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::test_column;

    #[test]
    fn the_word_at_a_time_escape_check_agrees_with_the_byte_by_byte_one() {
        let byte_by_byte = |v: &[u8]| v.iter().any(|&c| c < 0x20 || c == b'"' || c == b'\\');
        // Every byte value at every position, among ASCII and among non-ASCII bytes
        // (whose high bit the word check must not mistake for a borrow).
        for filler in [b'a', 0xc3, 0x7f, 0x20] {
            for len in 0..=17 {
                for pos in 0..len {
                    for b in 0..=255u8 {
                        let mut v = vec![filler; len];
                        v[pos] = b;
                        assert_eq!(needs_escape(&v), byte_by_byte(&v), "{v:?}");
                    }
                }
            }
        }
    }

    fn shape(columns: Option<&str>) -> Shape {
        let col = |name: &str, pk: Option<usize>| test_column(name, "text", 25, pk);
        let table = TableSchema {
            oid: 1,
            schema: "my \"schema\"".into(),
            name: "ité/ms".into(),
            columns: vec![
                col("zeta", None),
                col("id", Some(0)),
                col("Alpha", None),
                col("part", Some(1)),
                col("é", None),
            ],
        };
        let def = ShapeDef::from_params(
            Some("\"my \"\"schema\"\"\".\"ité/ms\""),
            None,
            vec![],
            columns,
            None,
            None,
        )
        .expect("valid definition");
        Shape::new(def, Arc::new(table)).expect("valid shape")
    }

    /// The item as serde_json renders it from a `Value`: what the encoder must print.
    fn via_value(shape: &Shape, values: &[Option<&str>], mark: Option<u32>) -> String {
        let cols = shape.snapshot_columns();
        let mut full: Vec<Option<&str>> = vec![None; shape.table.columns.len()];
        for (slot, &col) in cols.iter().enumerate() {
            full[col] = values.get(slot).copied().flatten();
        }
        let mut headers =
            json!({"operation": "insert", "relation": [shape.table.schema, shape.table.name]});
        if let Some(mark) = mark {
            headers["snapshot_mark"] = json!(mark);
        }
        json!({
            "key": shape.key(&full),
            "value": shape.value_of(&full, shape.selected.iter().copied()),
            "headers": headers,
        })
        .to_string()
    }

    #[test]
    fn a_json_string_is_what_serde_json_prints() {
        for v in [
            "",
            "plain",
            "caf\u{e9} \u{1d11e}",
            "quote \" and back\\slash",
            "tab\tnew\nline\u{1}\u{1f}",
            "del \u{7f} and slash /",
            "</script>",
        ] {
            let mut out = Vec::new();
            json_string(&mut out, v);
            assert_eq!(out, serde_json::to_vec(v).unwrap(), "{v:?}");
        }
    }

    #[test]
    fn encoded_snapshot_items_are_byte_identical_to_serde_json_rendering() {
        let awkward = [
            Some("plain"),
            None,
            Some("a/b//c"),
            Some("quote \" backslash \\ tab \t newline \n nul \u{0} bell \u{7} del \u{7f}"),
            Some("ünïcödé ✓ 𝄞"),
            Some(""),
        ];
        for columns in [None, Some("id,part,zeta"), Some("part,id,\"Alpha\",é")] {
            let s = shape(columns);
            let width = s.snapshot_columns().len();
            for mark in [None, Some(7)] {
                let enc = s.snapshot_encoder(mark);
                for start in 0..awkward.len() {
                    let row: Vec<Option<&str>> = (0..width)
                        .map(|i| awkward[(start + i) % awkward.len()])
                        .collect();
                    let mut out = Vec::new();
                    enc.encode(&mut out, &row[..]);
                    assert_eq!(
                        String::from_utf8(out).unwrap(),
                        via_value(&s, &row, mark),
                        "columns {columns:?}, row {row:?}"
                    );
                }
            }
        }
    }

    /// A change line as serde_json renders it from maps: what `write_json` must print.
    fn line_via_maps(
        item: &LogItem,
        relation: (&str, &str),
        xid: u32,
        lsn: u64,
        last: bool,
    ) -> String {
        let mut headers = Map::new();
        headers.insert("operation".into(), Json::from(item.operation));
        headers.insert("relation".into(), json!([relation.0, relation.1]));
        headers.insert("txids".into(), json!([xid]));
        headers.insert("lsn".into(), Json::String(lsn.to_string()));
        headers.insert("op_position".into(), Json::from(item.op));
        if last {
            headers.insert("last".into(), Json::Bool(true));
        }
        if let Some((k, v)) = &item.extra {
            headers.insert(k.clone(), Json::String(v.clone()));
        }
        let mut out = Map::new();
        out.insert("key".into(), Json::String(item.key.clone()));
        out.insert("value".into(), item.value.clone());
        if let Some(old) = &item.old_value {
            out.insert("old_value".into(), old.clone());
        }
        out.insert("headers".into(), Json::Object(headers));
        Json::Object(out).to_string()
    }

    #[test]
    fn change_lines_are_byte_identical_to_serde_json_rendering() {
        let awkward = "quote \" backslash \\ tab \t nul \u{0} ünï ✓ 𝄞 a/b";
        let value = json!({"zeta": awkward, "id": "1", "Alpha": null, "é": ""});
        let items = [
            ("insert", None, None),
            ("update", Some(json!({"zeta": "old"})), None),
            ("delete", None, Some(("key_change_to", "\"s\".\"t\"/\"2\""))),
            ("insert", None, Some(("key_change_from", awkward))),
        ];
        for (operation, old_value, extra) in items {
            let item = LogItem {
                op: 12,
                operation,
                key: format!("\"s\".\"t\"/\"{awkward}\""),
                value: value.clone(),
                old_value,
                extra: extra.map(|(k, v)| (k.to_string(), v.to_string())),
            };
            for last in [false, true] {
                let rel = ("my \"schema\"", "ité/ms");
                assert_eq!(
                    item.to_json(rel, 4_000_000_000, u64::MAX, last),
                    line_via_maps(&item, rel, 4_000_000_000, u64::MAX, last),
                    "{operation}, last {last}"
                );
            }
        }
    }
}
