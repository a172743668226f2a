//! Shapes: definitions, validation, where clauses and the JSON log items clients read.

pub mod change;
pub mod filter;
pub mod ident;
pub mod routed;
pub mod schema;
pub mod shape;
pub mod subset;
pub mod where_clause;

pub use change::{Change, ChangeKind, Relation, RelationColumn, Row, TxFragment, Value};
pub use filter::Filter;
pub use routed::{RenderedItem, RoutedChange};
pub use schema::{ColumnSchema, TableSchema};
pub use shape::{LogItem, LogMode, ParamError, Replica, RowValues, Shape, ShapeDef};
pub use subset::{Subset, SubsetError, SubsetRequest};
