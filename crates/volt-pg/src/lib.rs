//! The Postgres side of volt: connection settings, the logical replication stream,
//! publication and slot management, consistent snapshots, table inspection, and
//! throwaway clusters for `volt dev` and tests.

pub mod admin;
pub mod cluster;
pub mod conn;
pub mod error;
pub mod replication;
pub mod snapshot;

pub use conn::{PgConfig, PgConn};
pub use error::PgError;
