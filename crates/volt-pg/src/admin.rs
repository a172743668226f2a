//! Publication and slot management, and table inspection, over an ordinary connection.

use volt_shapes::ident::quote_ident;
use volt_shapes::{ColumnSchema, TableSchema};

use crate::conn::parse_lsn;
use crate::error::PgError;
use tokio_postgres::Client;

/// Server facts checked before streaming.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub version_num: i32,
    pub system_identifier: String,
    pub timeline: i64,
}

/// Take Electric's session-level advisory lock on the slot (`hashtext(slot)`) without
/// waiting: true if this session now holds it.
pub async fn try_lock_slot(client: &Client, slot: &str) -> Result<bool, PgError> {
    let row = client
        .query_one("SELECT pg_try_advisory_lock(hashtext($1))", &[&slot])
        .await?;
    Ok(row.get(0))
}

/// Wait as long as it takes for the slot's advisory lock: another instance on the same
/// slot holds it until its session ends (a rolling deploy's previous instance).
pub async fn lock_slot(client: &Client, slot: &str) -> Result<(), PgError> {
    // lock_timeout would otherwise cut the wait short.
    client.batch_execute("SET lock_timeout = 0").await?;
    client
        .execute("SELECT pg_advisory_lock(hashtext($1))", &[&slot])
        .await?;
    Ok(())
}

pub async fn server_info(client: &Client) -> Result<ServerInfo, PgError> {
    let row = client
        .query_one(
            "SELECT current_setting('server_version_num')::int4, \
                    (SELECT system_identifier::text FROM pg_control_system()), \
                    (SELECT timeline_id::int8 FROM pg_control_checkpoint()), \
                    current_setting('wal_level')",
            &[],
        )
        .await?;
    let wal_level: String = row.get(3);
    if wal_level != "logical" {
        return Err(PgError::Config(format!(
            "Postgres has wal_level={wal_level}; volt needs wal_level=logical \
             (set it in postgresql.conf and restart Postgres)"
        )));
    }
    Ok(ServerInfo {
        version_num: row.get(0),
        system_identifier: row.get(1),
        timeline: row.get(2),
    })
}

/// Create the publication if it does not exist (empty: tables join as shapes need them).
pub async fn ensure_publication(client: &Client, publication: &str) -> Result<bool, PgError> {
    let exists = client
        .query_opt(
            "SELECT 1 FROM pg_publication WHERE pubname = $1",
            &[&publication],
        )
        .await?
        .is_some();
    if exists {
        return Ok(false);
    }
    match client
        .batch_execute(&format!("CREATE PUBLICATION {}", quote_ident(publication)))
        .await
    {
        Ok(()) => Ok(true),
        // Another instance created it between our check and our create.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

#[derive(Debug, Clone, Copy)]
pub struct SlotInfo {
    pub created: bool,
    /// Where streaming resumes: the slot's confirmed flush LSN.
    pub confirmed_flush_lsn: u64,
}

/// Create the logical slot (pgoutput) if it does not exist.
pub async fn ensure_slot(client: &Client, slot: &str) -> Result<SlotInfo, PgError> {
    let existing = client
        .query_opt(
            "SELECT confirmed_flush_lsn::text, plugin FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    if let Some(row) = existing {
        let plugin: Option<String> = row.get(1);
        if plugin.as_deref() != Some("pgoutput") {
            return Err(PgError::Config(format!(
                "replication slot {slot} exists but does not use pgoutput"
            )));
        }
        let lsn: Option<String> = row.get(0);
        return Ok(SlotInfo {
            created: false,
            confirmed_flush_lsn: lsn.as_deref().and_then(parse_lsn).unwrap_or(0),
        });
    }
    let row = client
        .query_one(
            "SELECT lsn::text FROM pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&slot],
        )
        .await?;
    let lsn: String = row.get(0);
    Ok(SlotInfo {
        created: true,
        confirmed_flush_lsn: parse_lsn(&lsn).unwrap_or(0),
    })
}

/// Add a table to the publication (if absent) and give it `REPLICA IDENTITY FULL`, so
/// updates and deletes carry whole old rows. Publication first, as Electric does, to
/// keep one lock order.
pub async fn publish_table(
    client: &Client,
    publication: &str,
    schema: &str,
    table: &str,
) -> Result<(), PgError> {
    let qualified = format!("{}.{}", quote_ident(schema), quote_ident(table));
    let published = client
        .query_opt(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3",
            &[&publication, &schema, &table],
        )
        .await?
        .is_some();
    if !published {
        let res = client
            .batch_execute(&format!(
                "ALTER PUBLICATION {} ADD TABLE {qualified}",
                quote_ident(publication)
            ))
            .await;
        match res {
            Ok(()) => {}
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DUPLICATE_OBJECT) => {}
            Err(e) => return Err(e.into()),
        }
    }
    let identity: Option<i8> = client
        .query_opt(
            "SELECT c.relreplident::\"char\"::text::\"char\" FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = $1 AND c.relname = $2",
            &[&schema, &table],
        )
        .await?
        .map(|r| r.get(0));
    if identity != Some(b'f' as i8) {
        client
            .batch_execute(&format!("ALTER TABLE {qualified} REPLICA IDENTITY FULL"))
            .await?;
    }
    Ok(())
}

pub async fn drop_slot(client: &Client, slot: &str) -> Result<(), PgError> {
    client
        .execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await?;
    Ok(())
}

/// Read a table's columns, types (with their modifiers and, for arrays, element types,
/// which the `electric-schema` header reports; for enums, their labels, which where clauses
/// check literals against) and primary key; `None` if there is no such table.
pub async fn load_table(
    client: &Client,
    schema: &str,
    table: &str,
) -> Result<Option<TableSchema>, PgError> {
    let rows = client
        .query(
            "SELECT c.oid::int8, a.attname::text, a.atttypid::int8, t.typname::text, a.attnotnull, \
                    a.attndims::int4, \
                    (SELECT array_position(i.indkey::int2[], a.attnum) - array_lower(i.indkey::int2[], 1) FROM pg_index i \
                      WHERE i.indrelid = c.oid AND i.indisprimary)::int4 AS pk_index, \
                    a.atttypmod::int4, e.typname::text AS elem_typname, \
                    CASE WHEN t.typtype = 'e' THEN ARRAY(SELECT l.enumlabel::text FROM pg_enum l \
                      WHERE l.enumtypid = t.oid ORDER BY l.enumsortorder) END AS enum_labels \
             FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace \
             JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
             JOIN pg_type t ON t.oid = a.atttypid \
             LEFT JOIN pg_type e ON e.oid = t.typelem \
             WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p') \
             ORDER BY a.attnum",
            &[&schema, &table],
        )
        .await?;
    let Some(first) = rows.first() else {
        return Ok(None);
    };
    let oid: i64 = first.get(0);
    let columns = rows
        .iter()
        .map(|r| {
            let type_oid: i64 = r.get(2);
            let dims: i32 = r.get(5);
            let pk: Option<i32> = r.get(6);
            ColumnSchema {
                name: r.get(1),
                type_oid: type_oid as u32,
                typname: r.get(3),
                not_null: r.get(4),
                pk_index: pk.and_then(|p| usize::try_from(p).ok()),
                dims: usize::try_from(dims).unwrap_or(0),
                type_mod: Some(r.get(7)),
                elem_typname: r.get(8),
                enum_labels: r.get(9),
            }
        })
        .collect();
    Ok(Some(TableSchema {
        oid: oid as u32,
        schema: schema.to_string(),
        name: table.to_string(),
        columns,
    }))
}

/// The tables in the publication, as (schema, table).
pub async fn published_tables(
    client: &Client,
    publication: &str,
) -> Result<Vec<(String, String)>, PgError> {
    let rows = client
        .query(
            "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
            &[&publication],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Take a table out of the publication: no shape needs its changes any more.
pub async fn unpublish_table(
    client: &Client,
    publication: &str,
    schema: &str,
    table: &str,
) -> Result<(), PgError> {
    let res = client
        .batch_execute(&format!(
            "ALTER PUBLICATION {} DROP TABLE {}.{}",
            quote_ident(publication),
            quote_ident(schema),
            quote_ident(table)
        ))
        .await;
    match res {
        Ok(()) => Ok(()),
        // Already gone (dropped table, or not a member).
        Err(e)
            if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_OBJECT)
                || e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) =>
        {
            Ok(())
        }
        Err(e) => Err(e.into()),
    }
}
