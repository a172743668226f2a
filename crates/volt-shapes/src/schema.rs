//! Table metadata as volt needs it to validate and encode shapes.

use serde::{Deserialize, Serialize};

/// One column of the table as Postgres reports it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ColumnSchema {
    pub name: String,
    pub type_oid: u32,
    /// `pg_type.typname` of the column's type (`int4`, `text`, `_int4` for an array of int4).
    pub typname: String,
    pub not_null: bool,
    pub pk_index: Option<usize>,
    /// Array dimensions (`attndims`), 0 for scalars.
    pub dims: usize,
}

/// A table and its columns in attribute order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TableSchema {
    pub oid: u32,
    pub schema: String,
    pub name: String,
    pub columns: Vec<ColumnSchema>,
}

impl TableSchema {
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }

    /// Primary-key column indexes in key order; every column when the table has no primary key.
    pub fn key_columns(&self) -> Vec<usize> {
        let mut pk: Vec<(usize, usize)> = self
            .columns
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.pk_index.map(|p| (p, i)))
            .collect();
        if pk.is_empty() {
            return (0..self.columns.len()).collect();
        }
        pk.sort_unstable();
        pk.into_iter().map(|(_, i)| i).collect()
    }
}

/// The `electric-schema` description of one column.
#[derive(Debug, Clone, Serialize)]
pub struct ColumnDescription {
    #[serde(rename = "type")]
    pub type_name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dims: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pk_index: Option<usize>,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub not_null: bool,
}

impl ColumnSchema {
    pub fn describe(&self) -> ColumnDescription {
        // Electric reports arrays by element type plus `dims`; an array column whose
        // attndims is 0 keeps its array typname and no dims.
        let (type_name, dims) = if self.dims > 0 {
            (
                self.typname
                    .strip_prefix('_')
                    .unwrap_or(&self.typname)
                    .to_string(),
                Some(self.dims),
            )
        } else {
            (self.typname.clone(), None)
        };
        ColumnDescription {
            type_name,
            dims,
            pk_index: self.pk_index,
            not_null: self.not_null,
        }
    }
}
