//! ShapeDb: the persistent registry of shapes, handle <-> definition only (snapshot
//! state and offsets live with each shape's log). SQLite through sqlx; writes are
//! batched by the caller's write buffer and applied in one transaction.

use std::path::{Path, PathBuf};
use std::str::FromStr;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};

/// Changing the schema changes the file name: an old file is simply not read (its
/// shapes are gone and clients refetch), as Electric does.
const FILE_NAME: &str = "shape_db.v1.sqlite";

#[derive(Debug, thiserror::Error)]
#[error("shape database {path}: {source}")]
pub struct ShapeDbError {
    path: PathBuf,
    #[source]
    source: sqlx::Error,
}

/// One buffered change to the registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShapeDbOp {
    Add { handle: String, definition: String },
    Remove { handle: String },
}

#[derive(Clone)]
pub struct ShapeDb {
    pool: SqlitePool,
    path: PathBuf,
}

impl ShapeDb {
    /// Bytes of the database files on disk (with its write-ahead log).
    pub fn bytes_on_disk(&self) -> u64 {
        ["", "-wal", "-shm"]
            .iter()
            .filter_map(|suffix| {
                let mut p = self.path.clone().into_os_string();
                p.push(suffix);
                std::fs::metadata(p).ok()
            })
            .map(|m| m.len())
            .sum()
    }

    pub async fn open(dir: &Path) -> Result<ShapeDb, ShapeDbError> {
        let path = dir.join(FILE_NAME);
        let err = |source| ShapeDbError {
            path: path.clone(),
            source,
        };
        let options = SqliteConnectOptions::from_str(&format!("sqlite://{}", path.display()))
            .map_err(err)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal);
        // One connection: SQLite has a single writer, and reads happen only at start-up.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options)
            .await
            .map_err(err)?;
        sqlx::query(
            "CREATE TABLE IF NOT EXISTS shapes (handle TEXT PRIMARY KEY, definition TEXT NOT NULL)",
        )
        .execute(&pool)
        .await
        .map_err(err)?;
        sqlx::query("CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            .execute(&pool)
            .await
            .map_err(err)?;
        Ok(ShapeDb { pool, path })
    }

    fn err(&self, source: sqlx::Error) -> ShapeDbError {
        ShapeDbError {
            path: self.path.clone(),
            source,
        }
    }

    /// Every shape: (handle, definition).
    pub async fn load_all(&self) -> Result<Vec<(String, String)>, ShapeDbError> {
        sqlx::query_as::<_, (String, String)>("SELECT handle, definition FROM shapes")
            .fetch_all(&self.pool)
            .await
            .map_err(|e| self.err(e))
    }

    /// Apply a batch of buffered changes in one transaction.
    pub async fn apply(&self, ops: &[ShapeDbOp]) -> Result<(), ShapeDbError> {
        if ops.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await.map_err(|e| self.err(e))?;
        for op in ops {
            match op {
                ShapeDbOp::Add { handle, definition } => {
                    sqlx::query("INSERT OR REPLACE INTO shapes (handle, definition) VALUES (?, ?)")
                        .bind(handle)
                        .bind(definition)
                        .execute(&mut *tx)
                        .await
                }
                ShapeDbOp::Remove { handle } => {
                    sqlx::query("DELETE FROM shapes WHERE handle = ?")
                        .bind(handle)
                        .execute(&mut *tx)
                        .await
                }
            }
            .map_err(|e| self.err(e))?;
        }
        tx.commit().await.map_err(|e| self.err(e))
    }

    pub async fn remove_all(&self) -> Result<(), ShapeDbError> {
        sqlx::query("DELETE FROM shapes")
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub async fn get(&self, key: &str) -> Result<Option<String>, ShapeDbError> {
        sqlx::query_as::<_, (String,)>("SELECT value FROM kv WHERE key = ?")
            .bind(key)
            .fetch_optional(&self.pool)
            .await
            .map(|r| r.map(|(v,)| v))
            .map_err(|e| self.err(e))
    }

    pub async fn set(&self, key: &str, value: &str) -> Result<(), ShapeDbError> {
        sqlx::query("INSERT OR REPLACE INTO kv (key, value) VALUES (?, ?)")
            .bind(key)
            .bind(value)
            .execute(&self.pool)
            .await
            .map_err(|e| self.err(e))?;
        Ok(())
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn shapes_and_settings_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let db = ShapeDb::open(dir.path()).await.unwrap();
        db.apply(&[
            ShapeDbOp::Add {
                handle: "a".into(),
                definition: "{}".into(),
            },
            ShapeDbOp::Add {
                handle: "b".into(),
                definition: "{\"x\":1}".into(),
            },
            ShapeDbOp::Remove { handle: "a".into() },
        ])
        .await
        .unwrap();
        db.set("system_identifier", "42").await.unwrap();
        db.close().await;
        let db = ShapeDb::open(dir.path()).await.unwrap();
        assert_eq!(
            db.load_all().await.unwrap(),
            vec![("b".to_string(), "{\"x\":1}".to_string())]
        );
        assert_eq!(
            db.get("system_identifier").await.unwrap().as_deref(),
            Some("42")
        );
        assert_eq!(db.get("missing").await.unwrap(), None);
    }
}
