//! Shape storage: offsets, crash-safe per-shape logs that readers follow live, and
//! ShapeDb (the persistent handle <-> definition registry).

pub mod offset;
pub mod open_files;
pub mod recent_chunks;
pub mod shape_db;
pub mod shape_log;
pub mod sync_queue;

pub use offset::{InvalidOffset, LogOffset, RequestOffset};
pub use shape_db::{ShapeDb, ShapeDbError, ShapeDbOp};
pub use shape_log::{LogRead, ShapeLog, SnapshotProgress, SnapshotState, StorageError};
pub use sync_queue::{SyncQueue, sync_logs};
