//! Shape API clients for the replication scenarios (S4, S5): create a shape and follow it
//! to up-to-date, then long-poll it live.

use std::time::Duration;

use anyhow::{Context, bail};

use crate::harness::Volt;

/// A shape a client has read up to `offset`.
pub struct Followed {
    pub where_clause: String,
    pub handle: String,
    pub offset: String,
}

/// One response: its headers' handle and offset, whether it carried changes.
pub struct Page {
    pub status: u16,
    pub handle: Option<String>,
    pub offset: Option<String>,
    pub up_to_date: bool,
    pub has_changes: bool,
}

pub async fn get(
    http: &reqwest::Client,
    base: &str,
    table: &str,
    where_clause: &str,
    offset: &str,
    handle: Option<&str>,
    live: bool,
) -> anyhow::Result<Page> {
    let mut query = vec![
        ("table", table),
        ("where", where_clause),
        ("offset", offset),
    ];
    if let Some(h) = handle {
        query.push(("handle", h));
    }
    if live {
        query.push(("live", "true"));
    }
    let res = http
        .get(format!("{base}/v1/shape"))
        .query(&query)
        .send()
        .await?;
    let status = res.status().as_u16();
    let header = |n: &str| {
        res.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let handle = header("electric-handle");
    let offset = header("electric-offset");
    let up_to_date = header("electric-up-to-date").is_some();
    let body = res.bytes().await?;
    // Change messages carry an operation header; control messages do not.
    let has_changes = memchr_find(&body, b"\"operation\"");
    Ok(Page {
        status,
        handle,
        offset,
        up_to_date,
        has_changes,
    })
}

fn memchr_find(hay: &[u8], needle: &[u8]) -> bool {
    memchr::memmem::find(hay, needle).is_some()
}

/// Create (or join) the shape and read it to up-to-date, retrying 503s.
pub async fn follow(volt: &Volt, table: &str, where_clause: &str) -> anyhow::Result<Followed> {
    let mut handle: Option<String> = None;
    let mut offset = "-1".to_string();
    let mut attempt = 0u64;
    loop {
        let page = get(
            &volt.http,
            &volt.base,
            table,
            where_clause,
            &offset,
            handle.as_deref(),
            false,
        )
        .await?;
        match page.status {
            200 => {}
            503 => {
                attempt += 1;
                anyhow::ensure!(attempt < 100, "shape {where_clause} kept getting 503");
                tokio::time::sleep(Duration::from_millis(50 * attempt.min(20))).await;
                continue;
            }
            s => bail!("shape {where_clause}: status {s}"),
        }
        handle = page.handle.or(handle);
        offset = page.offset.context("no electric-offset")?;
        if page.up_to_date {
            return Ok(Followed {
                where_clause: where_clause.to_string(),
                handle: handle.context("no electric-handle")?,
                offset,
            });
        }
    }
}
