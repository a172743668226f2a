//! Shape storage: offsets and per-shape logs on disk that readers follow live.

pub mod offset;
pub mod shape_log;

pub use offset::{InvalidOffset, LogOffset, RequestOffset};
pub use shape_log::{LogRead, ShapeLog, SnapshotState, StorageError};
