//! Thundering herd (issue 7): (a) 2,000 concurrent requests for one new shape with
//! create coalescing on and off; (b) 2,000 concurrent requests for 2,000 distinct new
//! shapes under the default admission caps; (c) requests for existing shapes while (b)
//! runs, against the same requests alone.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::Value;

use crate::harness::{BenchEnv, Volt, free_port};

struct Hit {
    status: u16,
    retry_after: bool,
    ttfb: Duration,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// Fire every URL at once; time to the response headers.
async fn fire(urls: Vec<String>) -> Vec<Hit> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    let tasks: Vec<_> = urls
        .into_iter()
        .map(|url| {
            let http = http.clone();
            tokio::spawn(async move {
                let t = Instant::now();
                match http.get(url).timeout(Duration::from_secs(120)).send().await {
                    Ok(res) => {
                        let ttfb = t.elapsed();
                        let hit = Hit {
                            status: res.status().as_u16(),
                            retry_after: res.headers().contains_key("retry-after"),
                            ttfb,
                        };
                        let _ = res.bytes().await;
                        hit
                    }
                    Err(_) => Hit {
                        status: 0,
                        retry_after: false,
                        ttfb: t.elapsed(),
                    },
                }
            })
        })
        .collect();
    let mut hits = Vec::with_capacity(tasks.len());
    for t in tasks {
        if let Ok(h) = t.await {
            hits.push(h);
        }
    }
    hits
}

fn latencies(hits: &[Hit], status: u16) -> Vec<Duration> {
    let mut v: Vec<Duration> = hits
        .iter()
        .filter(|h| h.status == status)
        .map(|h| h.ttfb)
        .collect();
    v.sort();
    v
}

async fn snapshot_queries(client: &tokio_postgres::Client) -> Option<i64> {
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await
        .ok()?;
    let row = client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements \
             WHERE (query LIKE 'SELECT %FROM \"public\".\"items\"%' \
                    OR query LIKE 'COPY (SELECT %FROM \"public\".\"items\"%') \
               AND dbid = (SELECT oid FROM pg_database WHERE datname = current_database())",
            &[],
        )
        .await
        .ok()?;
    Some(row.get(0))
}

async fn shape_cache_messages(volt: &Volt) -> anyhow::Result<u64> {
    let tree = crate::load::admin_tree(volt).await?;
    fn find(v: &Value) -> Option<u64> {
        if v["kind"] == "ShapeCache" {
            return v["messages"].as_u64();
        }
        v["children"].as_array()?.iter().find_map(find)
    }
    find(&tree).context("no ShapeCache in the tree")
}

/// A fresh database with `items(id, grp, title)`: `rows` rows in `groups` groups.
async fn items_db(
    env: &BenchEnv,
    name: &str,
    groups: usize,
    rows: usize,
) -> anyhow::Result<(String, tokio_postgres::Client)> {
    let db_url = env.database(name).await?;
    let client = env.client(name).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, title text);
             INSERT INTO items SELECT g, g % {groups}, 'item ' || g FROM generate_series(1, {rows}) g;"
        ))
        .await?;
    Ok((db_url, client))
}

pub async fn run(env: &BenchEnv) -> anyhow::Result<()> {
    let n = if env.quick { 100 } else { 2_000 };
    let rows = if env.quick { 100 } else { 20_000 };

    println!("\n## herd: {n} concurrent requests (issue 7)\n");
    println!("(a) one new shape, caps raised so nothing is shed\n");
    println!("| coalescing | snapshot queries | ShapeCache messages | p50 ms | p99 ms | non-200 |");
    println!("|---|---|---|---|---|---|");
    for coalesce in ["true", "false"] {
        let (db_url, client) = items_db(env, &format!("herd_a_{coalesce}"), 1000, rows).await?;
        let storage = env.storage()?;
        let (volt, _) = Volt::start_with(
            env,
            &db_url,
            &storage,
            free_port()?,
            &[
                (
                    "ELECTRIC_MAX_CONCURRENT_REQUESTS",
                    r#"{"initial":100000,"existing":100000}"#,
                ),
                ("ELECTRIC_TWEAKS_SHAPE_CACHE_MAX_MAILBOX", "100000"),
                ("ELECTRIC_TWEAKS_COALESCE_SHAPE_CREATION", coalesce),
                ("ELECTRIC_ENABLE_INTEGRATION_TESTING", "true"),
            ],
        )
        .await?;
        let before = snapshot_queries(&client).await;
        let url = format!(
            "{}/v1/shape?table=items&offset=-1&where=grp%20%3C%20500",
            volt.base
        );
        let hits = fire(vec![url; n]).await;
        let ok = latencies(&hits, 200);
        let queries = match (before, snapshot_queries(&client).await) {
            (Some(b), Some(a)) => (a - b).to_string(),
            _ => "n/a".into(),
        };
        println!(
            "| {} | {queries} | {} | {} | {} | {} |",
            if coalesce == "true" { "on" } else { "off" },
            shape_cache_messages(&volt).await?,
            ms(percentile(&ok, 0.5)),
            ms(percentile(&ok, 0.99)),
            hits.len() - ok.len(),
        );
        volt.kill_9().await?;
    }

    // (b) and (c) on one volt with the default caps.
    let (db_url, _client) = items_db(env, "herd_b", n, rows).await?;
    let storage = env.storage()?;
    let (volt, _) = Volt::start_with(
        env,
        &db_url,
        &storage,
        free_port()?,
        &[("ELECTRIC_ENABLE_INTEGRATION_TESTING", "true")],
    )
    .await?;
    // Existing shapes for (c): made first, read back at their end.
    let mut existing = Vec::new();
    for g in 0..20 {
        let res = volt
            .http
            .get(format!(
                "{}/v1/shape?table=items&offset=-1&where=grp%20%3D%20{g}",
                volt.base
            ))
            .send()
            .await?;
        let h = |k: &str| {
            res.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string()
        };
        existing.push(format!(
            "{}/v1/shape?table=items&where=grp%20%3D%20{g}&handle={}&offset={}",
            volt.base,
            h("electric-handle"),
            h("electric-offset")
        ));
    }
    let reads = |rounds: usize| -> Vec<String> {
        existing
            .iter()
            .cycle()
            .take(existing.len() * rounds)
            .cloned()
            .collect()
    };
    let alone = fire(reads(10)).await;
    let alone_ok = latencies(&alone, 200);

    let distinct: Vec<String> = (0..n)
        .map(|g| {
            format!(
                "{}/v1/shape?table=items&offset=-1&where=grp%20%3D%20{g}%20AND%20id%20%3E%200",
                volt.base
            )
        })
        .collect();
    let started = Instant::now();
    let (herd, during) = tokio::join!(fire(distinct), fire(reads(10)));
    let elapsed = started.elapsed();
    let created = herd.iter().filter(|h| h.status == 200).count();
    let shed = herd.iter().filter(|h| h.status == 503).count();
    let shed_with_retry = herd
        .iter()
        .filter(|h| h.status == 503 && h.retry_after)
        .count();
    let other_5xx = herd
        .iter()
        .filter(|h| h.status >= 500 && h.status != 503)
        .count();
    let herd_ok = latencies(&herd, 200);
    println!(
        "\n(b) {n} distinct new shapes at once, default caps (initial 300, and a waiting room of up to 1,000 for 3 s)\n"
    );
    println!(
        "| created | creations/s | p50 ms | p99 ms | 503 (with Retry-After) | other 5xx / errors |"
    );
    println!("|---|---|---|---|---|---|");
    println!(
        "| {created} | {:.0} | {} | {} | {shed} ({shed_with_retry}) | {} |",
        created as f64 / elapsed.as_secs_f64(),
        ms(percentile(&herd_ok, 0.5)),
        ms(percentile(&herd_ok, 0.99)),
        other_5xx + herd.iter().filter(|h| h.status == 0).count(),
    );
    let during_ok = latencies(&during, 200);
    let (p99_alone, p99_during) = (percentile(&alone_ok, 0.99), percentile(&during_ok, 0.99));
    println!("\n(c) reads of existing shapes, alone and during (b)\n");
    println!("| reads | p99 alone ms | p99 during (b) ms | ratio | non-200 during |");
    println!("|---|---|---|---|---|");
    println!(
        "| {} | {} | {} | {:.2}x | {} |",
        during.len(),
        ms(p99_alone),
        ms(p99_during),
        p99_during.as_secs_f64() / p99_alone.as_secs_f64().max(1e-6),
        during.len() - during_ok.len(),
    );
    volt.kill_9().await?;
    Ok(())
}
