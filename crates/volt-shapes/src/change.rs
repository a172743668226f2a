//! Decoded replication data, independent of the wire decoder that produced it.

use std::sync::Arc;

/// One column value as pgoutput sends it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Null,
    /// The Postgres text output of the value.
    Text(Box<str>),
    /// An unchanged TOAST value: pgoutput omits it from an update's new tuple.
    Unchanged,
}

impl Value {
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Value::Text(t) => Some(t),
            _ => None,
        }
    }
}

/// A column of a relation as described by a pgoutput Relation message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelationColumn {
    pub name: String,
    pub type_oid: u32,
    pub is_key: bool,
}

/// A table as described by the latest Relation message for its oid.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<RelationColumn>,
}

impl Relation {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

pub type Row = Vec<Value>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChangeKind {
    Insert {
        new: Row,
    },
    /// `old` is present when the table has `REPLICA IDENTITY FULL` (or the key changed).
    Update {
        old: Option<Row>,
        new: Row,
    },
    Delete {
        old: Row,
    },
}

/// One row change of a transaction, with its position in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub relation: Arc<Relation>,
    /// Even position in the transaction (0, 2, 4, ...); `op + 1` is reserved for the
    /// insert half of a primary-key change, as Electric does.
    pub op: u64,
    pub kind: ChangeKind,
}

/// A bounded slice of one committed transaction. Transactions are passed on in
/// fragments so that no part of the pipeline ever holds a whole large transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxFragment {
    pub xid: u32,
    /// LSN of the transaction's commit record: the `tx` part of every offset in it.
    pub lsn: u64,
    pub changes: Vec<Change>,
    /// Tables truncated in this fragment.
    pub truncated: Vec<Arc<Relation>>,
    /// Relation messages seen in this fragment: a table's shape may have changed.
    pub relations: Vec<Arc<Relation>>,
    /// Present on the last fragment of the transaction: its commit `end_lsn`.
    pub commit_end_lsn: Option<u64>,
}

impl TxFragment {
    pub fn is_commit(&self) -> bool {
        self.commit_end_lsn.is_some()
    }
}
