//! Running subset snapshot queries: a fresh REPEATABLE READ snapshot per request, bounded
//! by the same permits as shape snapshots so subsets cannot starve the database.

use futures::StreamExt;
use volt_pg::PgError;
use volt_pg::snapshot::PgSnapshot;
use volt_shapes::{Shape, Subset};

use crate::shared::Shared;
use crate::snapshot_sessions::SessionError;

/// The rows of one subset and the snapshot they were read in.
#[derive(Debug)]
pub struct SubsetRows {
    pub snapshot: PgSnapshot,
    /// Tags this subset's rows, so the client can match them to its request.
    pub mark: u32,
    /// One JSON insert message per row.
    pub items: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum SubsetQueryError {
    /// The database is unreachable or overloaded: retry later.
    #[error("{0}")]
    Unavailable(String),
    /// Postgres rejected the query (e.g. a value that does not parse as the column's type,
    /// division by zero): the request must change, retrying cannot help.
    #[error("{0}")]
    Rejected(String),
}

impl From<PgError> for SubsetQueryError {
    fn from(e: PgError) -> Self {
        if e.is_retryable() {
            SubsetQueryError::Unavailable(e.to_string())
        } else {
            match e {
                PgError::Query { message, .. } => SubsetQueryError::Rejected(message),
                other => SubsetQueryError::Unavailable(other.to_string()),
            }
        }
    }
}

pub async fn query_subset(
    shared: &Shared,
    shape: &Shape,
    subset: &Subset,
) -> Result<SubsetRows, SubsetQueryError> {
    let tx = shared
        .snapshot_sessions
        .begin(&shared.config.pg, None)
        .await
        .map_err(|e| match e {
            SessionError::Closed => SubsetQueryError::Unavailable(e.to_string()),
            SessionError::Pg(e) => e.into(),
        })?;
    // Electric draws marks from 0..2^31 so they stay positive in every client's integers.
    let mark = rand::random::<u32>() >> 1;
    let sql = subset.sql(shape);
    let mut items = Vec::new();
    {
        let rows = tx.rows(&sql).await?;
        futures::pin_mut!(rows);
        let encoder = shape.snapshot_encoder(Some(mark));
        while let Some(row) = rows.next().await {
            let mut item = Vec::new();
            encoder.encode(&mut item, &row?);
            // The encoder writes JSON, from the UTF-8 text Postgres sent.
            items.push(String::from_utf8_lossy(&item).into_owned());
        }
    }
    let snapshot = tx.snapshot.clone();
    tx.end().await;
    Ok(SubsetRows {
        snapshot,
        mark,
        items,
    })
}
