//! S2: 2,000 concurrent requests for 2,000 distinct 500-row shapes, each client following
//! its shape to up-to-date and retrying 503s as `@electric-sql/client` does; against the
//! same 2,000 SELECTs through a 20-connection pool. Postgres connections are sampled from
//! `pg_stat_activity` throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{BenchEnv, Volt, free_port};
use crate::load::{Sampler, connection_sampler, ms, percentile, sync};

const POOL: usize = 20;

struct Outcome {
    secs: f64,
    sorted: Vec<Duration>,
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.sorted.len() as f64 / self.secs
    }
}

/// The floor: the same SELECTs (simple protocol, text rows, as volt's snapshot reads
/// them) through `POOL` connections, all requested at once.
async fn pool_baseline(env: &BenchEnv, db: &str, shapes: usize) -> anyhow::Result<Outcome> {
    let mut conns = Vec::new();
    for _ in 0..POOL {
        conns.push(env.client(db).await?);
    }
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|c| {
            let next = next.clone();
            tokio::spawn(async move {
                let mut done = Vec::new();
                loop {
                    let g = next.fetch_add(1, Ordering::Relaxed);
                    if g >= shapes {
                        return anyhow::Ok(done);
                    }
                    c.simple_query(&format!(
                        "SELECT id, grp, title FROM items WHERE grp = {g}"
                    ))
                    .await?;
                    done.push(started.elapsed());
                }
            })
        })
        .collect();
    let mut sorted = Vec::new();
    for w in workers {
        sorted.extend(w.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    sorted.sort();
    Ok(Outcome { secs, sorted })
}

pub async fn run(env: &BenchEnv) -> anyhow::Result<()> {
    let (shapes, rows) = if env.quick { (60, 20) } else { (2_000, 500) };
    let db = "new_shapes";
    let db_url = env.database(db).await?;
    let client = env.client(db).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, title text NOT NULL);
             INSERT INTO items SELECT g, g % {shapes}, 'item number ' || g
               FROM generate_series(0, {} - 1) g;
             CREATE INDEX ON items (grp);",
            shapes * rows
        ))
        .await?;
    client.batch_execute("VACUUM ANALYZE items").await?;

    let floor = pool_baseline(env, db, shapes).await?;

    let storage = tempfile::tempdir()?;
    let pool = POOL.to_string();
    let (volt, _) = Volt::start_with(
        env,
        &db_url,
        storage.path(),
        free_port()?,
        &[("ELECTRIC_DB_POOL_SIZE", pool.as_str())],
    )
    .await?;
    let conns: Sampler<(i64, i64)> =
        connection_sampler(env.client(db).await?, Duration::from_millis(20));
    // Distinct users: one connection per client, none shared.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()?;
    let cpu0 = volt.cpu_secs();
    let started = Instant::now();
    let clients: Vec<_> = (0..shapes)
        .map(|g| {
            let (http, base) = (http.clone(), volt.base.clone());
            tokio::spawn(async move {
                let shape = format!("table=items&where=grp%20%3D%20{g}");
                let synced = sync(&http, &base, &shape).await?;
                anyhow::ensure!(synced.rows == rows, "shape {g}: {} rows", synced.rows);
                Ok((started.elapsed(), synced.retried))
            })
        })
        .collect();
    let mut sorted = Vec::new();
    let (mut retried, mut errors, mut first_error) = (0u32, 0usize, None);
    for c in clients {
        match c.await? {
            Ok((t, r)) => {
                sorted.push(t);
                retried += r;
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let cpu = volt.cpu_secs() - cpu0;
    let peak = volt.peak_rss_kib();
    let samples = conns.stop().await;
    sorted.sort();
    let ours = Outcome { secs, sorted };
    let max_volt = samples.iter().map(|(_, (v, _))| *v).max().unwrap_or(0);
    let max_repl = samples.iter().map(|(_, (_, r))| *r).max().unwrap_or(0);
    volt.kill_9().await?;

    let (p99, p99_floor) = (
        percentile(&ours.sorted, 0.99),
        percentile(&floor.sorted, 0.99),
    );
    println!(
        "\n## S2: {shapes} concurrent requests for {shapes} distinct {rows}-row shapes{}\n",
        if env.quick { " (quick)" } else { "" }
    );
    println!(
        "volt: ELECTRIC_DB_POOL_SIZE={POOL}, default admission (initial 300); clients retry 503 as @electric-sql/client does.\n"
    );
    println!(
        "| | shapes/s | p50 to up-to-date ms | p99 ms | 503s retried | errors | Postgres connections (max seen) | CPU ms per shape |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| volt | {:.0} | {} | {} | {retried} | {errors} | {max_volt} `volt` (pool {POOL} + 1 admin) + {max_repl} replication ({} samples) | {:.2} |",
        ours.rate(),
        ms(percentile(&ours.sorted, 0.5)),
        ms(p99),
        samples.len(),
        cpu * 1000.0 / shapes as f64
    );
    println!(
        "| {POOL}-connection pool | {:.0} | {} | {} | - | 0 | {POOL} | - |",
        floor.rate(),
        ms(percentile(&floor.sorted, 0.5)),
        ms(p99_floor),
    );
    println!(
        "\np99 ratio {:.2}x (target <= 2x); throughput ratio {:.2}x; connections within the pool: {}; volt peak RSS {:.1} MiB",
        p99.as_secs_f64() / p99_floor.as_secs_f64().max(1e-6),
        ours.rate() / floor.rate(),
        if max_volt <= POOL as i64 + 1 {
            "yes"
        } else {
            "NO"
        },
        peak as f64 / 1024.0,
    );
    if let Some(e) = first_error {
        println!("first error: {e:#}");
    }
    Ok(())
}
