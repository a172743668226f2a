//! S6: many idle 10-row shapes. RAM and disk per shape against an empty volt, then
//! kill -9 and restart: time to the first 200 and until every shape is servable again.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};

use crate::harness::{BenchEnv, Volt, dir_bytes, free_port};

struct Shape {
    where_clause: String,
    handle: String,
    offset: String,
}

async fn create(volt: &Volt, grp: usize) -> anyhow::Result<Shape> {
    let where_clause = format!("grp = {grp}");
    for attempt in 0..50 {
        let res = volt
            .http
            .get(format!("{}/v1/shape", volt.base))
            .query(&[
                ("table", "items"),
                ("offset", "-1"),
                ("where", where_clause.as_str()),
            ])
            .send()
            .await?;
        if res.status() == 503 {
            tokio::time::sleep(Duration::from_millis(50 * (attempt + 1))).await;
            continue;
        }
        anyhow::ensure!(
            res.status() == 200,
            "creating shape {grp}: {}",
            res.status()
        );
        let header = |n: &str| {
            res.headers()
                .get(n)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string)
        };
        let handle = header("electric-handle").context("handle")?;
        let offset = header("electric-offset").context("offset")?;
        return Ok(Shape {
            where_clause,
            handle,
            offset,
        });
    }
    bail!("shape {grp} kept getting 503")
}

async fn servable(volt: &Volt, s: &Shape) -> anyhow::Result<bool> {
    let res = volt
        .http
        .get(format!("{}/v1/shape", volt.base))
        .query(&[
            ("table", "items"),
            ("where", s.where_clause.as_str()),
            ("offset", s.offset.as_str()),
            ("handle", s.handle.as_str()),
        ])
        .send()
        .await?;
    match res.status().as_u16() {
        200 => Ok(true),
        503 => Ok(false),
        409 => bail!("shape {} was lost in the restart (409)", s.handle),
        other => bail!("unexpected {other}"),
    }
}

pub async fn run(env: &BenchEnv, n: usize) -> anyhow::Result<()> {
    let db_url = env.database(&format!("idle_{n}")).await?;
    let client = env.client(&format!("idle_{n}")).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, title text NOT NULL);
             CREATE INDEX ON items (grp);
             INSERT INTO items SELECT g, g / 10, 'row ' || g FROM generate_series(0, {} - 1) g;",
            n * 10
        ))
        .await?;
    let storage = env.storage()?;
    let port = free_port()?;
    let (volt, _) = Volt::start(env, &db_url, &storage, port).await?;
    // Baseline: the empty service (after one request, so lazily built parts exist).
    let _ = volt
        .http
        .get(format!("{}/v1/health", volt.base))
        .send()
        .await?;
    let empty_rss = volt.rss_kib();

    let t = Instant::now();
    let cpu0 = volt.cpu_secs();
    let shapes: Vec<Shape> = stream::iter(0..n)
        .map(|g| create(&volt, g))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let create_secs = t.elapsed().as_secs_f64();
    let create_cpu = volt.cpu_secs() - cpu0;
    // The registry write buffer must be on disk before the kill: volt says when.
    volt.wait_registry_written().await?;
    let rss = volt.rss_kib();
    let disk = dir_bytes(&storage);
    volt.kill_9().await?;

    let (volt, to_active) = Volt::start(env, &db_url, &storage, port).await?;
    let t = Instant::now();
    while !servable(&volt, &shapes[0]).await? {}
    let first = to_active + t.elapsed();
    let results: Vec<bool> = stream::iter(shapes.iter())
        .map(|s| servable(&volt, s))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    anyhow::ensure!(
        results.iter().all(|ok| *ok),
        "some shapes were not servable"
    );
    let all = to_active + t.elapsed();
    let restart_rss = volt.rss_kib();
    volt.kill_9().await?;

    let per_shape_ram = (rss.saturating_sub(empty_rss) as f64 * 1024.0) / n as f64;
    let per_shape_disk = disk as f64 / n as f64;
    println!();
    println!(
        "### S6 idle shapes: {n} shapes of 10 rows{}",
        if env.quick {
            " (quick, debug build)"
        } else {
            ""
        }
    );
    println!();
    println!("| measure | volt | baseline | ratio |");
    println!("|---|---|---|---|");
    println!(
        "| RSS | {:.1} MiB | {:.1} MiB (empty volt) | {:.2}x |",
        rss as f64 / 1024.0,
        empty_rss as f64 / 1024.0,
        rss as f64 / empty_rss.max(1) as f64
    );
    println!(
        "| RAM per idle shape | {:.1} KB | target <= 20 KB | {:.2}x of target |",
        per_shape_ram / 1000.0,
        per_shape_ram / 20_000.0
    );
    println!(
        "| disk per idle shape | {:.1} KB | - | - |",
        per_shape_disk / 1000.0
    );
    println!(
        "| shape creation | {:.0} shapes/s | - | {:.2} ms CPU per shape |",
        n as f64 / create_secs,
        create_cpu * 1000.0 / n as f64
    );
    println!(
        "| kill -9, restart to first 200 | {:.2} s | target <= 10 s | {:.2}x of target |",
        first.as_secs_f64(),
        first.as_secs_f64() / 10.0
    );
    println!(
        "| restart to all shapes servable | {:.2} s | target <= 10 s | {:.2}x of target |",
        all.as_secs_f64(),
        all.as_secs_f64() / 10.0
    );
    println!(
        "| RSS after restart | {:.1} MiB | - | - |",
        restart_rss as f64 / 1024.0
    );
    Ok(())
}
