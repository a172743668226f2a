//! S1: initial sync of a large shape, offset=-1 to up-to-date, against `COPY ... TO
//! STDOUT` of the same rows (cold); then many clients re-reading the finished log against
//! a minimal static server handing out the same bytes (warm).

use std::sync::Arc;
use std::time::Instant;

use anyhow::Context;
use axum::body::Bytes;
use futures::StreamExt;

use crate::harness::{BenchEnv, Volt, free_port};

/// One response of the initial sync, as a client reads it.
struct Page {
    path: String,
    body: Bytes,
}

/// Follow the shape `shape` (its query parameters) from offset=-1 until up-to-date, as
/// the client does; every page.
async fn initial_sync(
    http: &reqwest::Client,
    base: &str,
    shape: &str,
) -> anyhow::Result<(Vec<Page>, usize)> {
    let mut path = format!("/v1/shape?{shape}&offset=-1");
    let mut pages = Vec::new();
    let mut rows = 0;
    loop {
        let res = http.get(format!("{base}{path}")).send().await?;
        anyhow::ensure!(res.status() == 200, "{path}: {}", res.status());
        let header = |k: &str| {
            res.headers()
                .get(k)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let (handle, offset) = (header("electric-handle"), header("electric-offset"));
        let body = res.bytes().await?;
        // Count inserts without parsing: one `"operation":"insert"` per row.
        rows += memchr_count(&body, b"\"operation\":\"insert\"");
        let done = memchr_count(&body, b"\"control\":\"up-to-date\"") > 0;
        pages.push(Page { path, body });
        if done {
            return Ok((pages, rows));
        }
        path = format!(
            "/v1/shape?{shape}&handle={}&offset={}",
            handle.context("handle")?,
            offset.context("offset")?
        );
    }
}

/// Occurrences of `needle` in `hay`. SIMD substring search: the client's counting must
/// not be what the run measures (a byte-by-byte window compare of volt's 200 MB took
/// seconds of the cores volt and Postgres share, against COPY's 45 MB).
fn memchr_count(hay: &[u8], needle: &[u8]) -> usize {
    memchr::memmem::find_iter(hay, needle).count()
}

/// Re-read every page with `clients` concurrent clients; bytes per second.
async fn reread(base: &str, pages: &[Page], clients: usize) -> anyhow::Result<f64> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(clients)
        .build()?;
    let paths: Arc<Vec<String>> = Arc::new(pages.iter().map(|p| p.path.clone()).collect());
    let started = Instant::now();
    let total: Vec<anyhow::Result<usize>> = futures::stream::iter(0..clients)
        .map(|_| {
            let (http, paths, base) = (http.clone(), paths.clone(), base.to_string());
            async move {
                let mut bytes = 0;
                for p in paths.iter() {
                    let res = http.get(format!("{base}{p}")).send().await?;
                    anyhow::ensure!(res.status() == 200, "{p}: {}", res.status());
                    bytes += res.bytes().await?.len();
                }
                Ok(bytes)
            }
        })
        .buffer_unordered(clients)
        .collect()
        .await;
    let mut sum = 0usize;
    for t in total {
        sum += t?;
    }
    Ok(sum as f64 / started.elapsed().as_secs_f64())
}

/// The baseline for the warm read: the same bytes at the same paths from a minimal
/// in-memory HTTP server (no storage, no protocol logic).
async fn static_server(pages: &[Page]) -> anyhow::Result<(String, tokio::task::JoinHandle<()>)> {
    let map: Arc<std::collections::HashMap<String, Bytes>> = Arc::new(
        pages
            .iter()
            .map(|p| (p.path.clone(), p.body.clone()))
            .collect(),
    );
    let app = axum::Router::new().fallback(move |uri: axum::http::Uri| {
        let map = map.clone();
        async move {
            let key = uri.path_and_query().map(|p| p.as_str()).unwrap_or("");
            match map.get(key) {
                Some(b) => (axum::http::StatusCode::OK, b.clone()),
                None => (axum::http::StatusCode::NOT_FOUND, Bytes::new()),
            }
        }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let base = format!("http://{}", listener.local_addr()?);
    let task = tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok((base, task))
}

pub async fn run(env: &BenchEnv) -> anyhow::Result<()> {
    let (rows, clients) = if env.quick {
        (10_000, 10)
    } else {
        (1_000_000, 200)
    };
    let db_url = env.database("initial_sync").await?;
    let client = env.client("initial_sync").await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, title text, at timestamptz);
             INSERT INTO items SELECT g, g % 100, 'item number ' || g, '2026-01-01'::timestamptz + g * interval '1 second'
               FROM generate_series(1, {rows}) g;"
        ))
        .await?;
    // Alone: VACUUM cannot run inside the implicit transaction of a multi-statement query.
    client.batch_execute("VACUUM ANALYZE items").await?;

    let storage = env.storage()?;
    let (volt, _) = Volt::start_with(env, &db_url, &storage, free_port()?, &[]).await?;
    let rss_before = volt.rss_kib();
    let http = reqwest::Client::new();
    // The cold figures alternate the baseline and volt over a few rounds, each on a
    // shape of its own (every row, by a different where clause): one COPY's rate moves
    // between 1.2M and 2.2M rows/s from run to run, and a ratio of medians moves less.
    let rounds = if env.quick { 1 } else { 3 };
    let (mut copy_rates, mut volt_rates, mut cpu_per_row) = (vec![], vec![], vec![]);
    let mut first_pages = None;
    for round in 0..rounds {
        let filter = format!("id > -{round}");
        // Baseline: Postgres streaming the same rows as text.
        let started = Instant::now();
        let copy = client
            .copy_out(&format!(
                "COPY (SELECT id, grp, title, at FROM items WHERE {filter}) TO STDOUT"
            ))
            .await?;
        futures::pin_mut!(copy);
        let mut copied = 0usize;
        while let Some(chunk) = copy.next().await {
            copied += memchr_count(&chunk?, b"\n");
        }
        copy_rates.push(rows as f64 / started.elapsed().as_secs_f64());
        anyhow::ensure!(copied == rows, "COPY gave {copied} rows");

        let shape = format!(
            "table=items&where={}",
            filter.replace(' ', "%20").replace('>', "%3E")
        );
        let cpu_before = volt.cpu_secs();
        let started = Instant::now();
        let (pages, synced) = initial_sync(&http, &volt.base, &shape).await?;
        volt_rates.push(rows as f64 / started.elapsed().as_secs_f64());
        // The figure that does not move with the machine's load: the ratio's baseline does.
        cpu_per_row.push((volt.cpu_secs() - cpu_before) * 1e6 / rows as f64);
        anyhow::ensure!(synced == rows, "volt gave {synced} rows");
        first_pages.get_or_insert(pages);
    }
    let pages = first_pages.context("no round ran")?;
    let bytes: usize = pages.iter().map(|p| p.body.len()).sum();
    let peak = volt.peak_rss_kib();

    let volt_warm = reread(&volt.base, &pages, clients).await?;
    let (static_base, server) = static_server(&pages).await?;
    let static_warm = reread(&static_base, &pages, clients).await?;
    server.abort();

    let median = |v: &[f64]| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let (copy_rate, volt_rate) = (median(&copy_rates), median(&volt_rates));
    let each = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.2}"))
            .collect::<Vec<_>>()
            .join(" / ")
    };
    let ratios: Vec<f64> = volt_rates
        .iter()
        .zip(&copy_rates)
        .map(|(v, c)| v / c)
        .collect();
    println!("\n## S1: initial sync of a {rows}-row shape\n");
    println!(
        "Body: {:.1} MB in {} responses; volt used {} CPU-us per row (each round); RSS {:.1} MiB before, peak {:.1} MiB. Cold rounds' ratios: {}.\n",
        bytes as f64 / 1e6,
        pages.len(),
        each(&cpu_per_row),
        rss_before as f64 / 1024.0,
        peak as f64 / 1024.0,
        each(&ratios),
    );
    println!("| measure | volt | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| cold: offset=-1 to up-to-date, median of {rounds} | {:.0} rows/s | COPY TO STDOUT {:.0} rows/s | {:.2}x | >= 0.6x |",
        volt_rate,
        copy_rate,
        volt_rate / copy_rate
    );
    println!(
        "| warm: {clients} clients re-read the log | {:.0} MB/s | static server {:.0} MB/s | {:.2}x | >= 0.5x |",
        volt_warm / 1e6,
        static_warm / 1e6,
        volt_warm / static_warm
    );
    println!(
        "| peak RSS | {:.1} MiB | - | - | < 150 MB |",
        peak as f64 / 1024.0
    );
    volt.kill_9().await?;
    Ok(())
}
