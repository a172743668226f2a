//! S4: replication throughput with many `field = const` shapes. The same WAL (inserts in
//! 100-row transactions, each row hitting one shape) is drained by volt and by
//! `pg_recvlogical` (pgoutput, volt's publication, a slot of its own, to /dev/null), once
//! before volt and once after it. Every slot is created before the WAL is written and
//! each reader drains it from a standing start, so the figure is the sustained rate: the
//! rate above which the slot's lag grows.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use futures::{StreamExt, stream};

use crate::harness::{BenchEnv, Volt, free_port};
use crate::live;

const TXN_ROWS: usize = 100;

fn lsn_u64(text: &str) -> anyhow::Result<u64> {
    let (hi, lo) = text.split_once('/').context("not an LSN")?;
    Ok((u64::from_str_radix(hi, 16)? << 32) | u64::from_str_radix(lo, 16)?)
}

/// An LSN from `/v1/admin/stats` (`processed_lsn`, `durable_lsn`).
pub(crate) async fn stats_lsn(volt: &Volt, field: &str) -> anyhow::Result<u64> {
    let stats: serde_json::Value = volt
        .http
        .get(format!("{}/v1/admin/stats", volt.base))
        .send()
        .await?
        .json()
        .await?;
    let lsn = &stats[field];
    lsn.as_str()
        .and_then(|s| s.parse().ok())
        .or_else(|| lsn.as_u64())
        .with_context(|| format!("no {field} in /v1/admin/stats"))
}

struct Drain {
    secs: f64,
    cpu_secs: f64,
}

/// `pg_recvlogical` from its slot to `end`, to /dev/null; CPU from `/usr/bin/time`.
async fn pg_recvlogical(
    env: &BenchEnv,
    db: &str,
    slot: &str,
    publication: &str,
    end: &str,
) -> anyhow::Result<Drain> {
    let bin: PathBuf = env.cluster.binaries().bindir.join("pg_recvlogical");
    let t = Instant::now();
    let out = tokio::process::Command::new("/usr/bin/time")
        .args(["-f", "%U %S"])
        .arg(&bin)
        .args([
            "-d",
            &env.cluster.url(db),
            "--slot",
            slot,
            "--start",
            "--no-loop",
        ])
        .args(["-f", "/dev/null", "-F", "0", "--endpos", end])
        .args(["-o", "proto_version=1"])
        .arg("-o")
        .arg(format!("publication_names={publication}"))
        .output()
        .await
        .context("running pg_recvlogical under /usr/bin/time")?;
    let secs = t.elapsed().as_secs_f64();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        bail!("pg_recvlogical failed: {stderr}");
    }
    let cpu_secs = stderr
        .lines()
        .last()
        .map(|l| {
            l.split_whitespace()
                .filter_map(|v| v.parse::<f64>().ok())
                .sum()
        })
        .unwrap_or(0.0);
    Ok(Drain { secs, cpu_secs })
}

pub async fn run(env: &BenchEnv) -> anyhow::Result<()> {
    let (shapes, changes) = if env.quick {
        (100usize, 2_000usize)
    } else {
        (10_000, 300_000)
    };
    let name = "s4_throughput";
    let db_url = env.database(name).await?;
    let client = env.client(name).await?;
    client
        .batch_execute(
            "CREATE TABLE items (id bigserial PRIMARY KEY, owner int8 NOT NULL, payload text NOT NULL)",
        )
        .await?;
    // VOLT_BENCH_STORAGE_PARENT=/dev/shm puts the shape logs on tmpfs: what fsync costs.
    let storage = match std::env::var_os("VOLT_BENCH_STORAGE_PARENT") {
        Some(parent) => tempfile::tempdir_in(parent)?,
        None => tempfile::tempdir()?,
    };
    let port = free_port()?;
    let (volt, _) = Volt::start(env, &db_url, storage.path(), port).await?;
    let t = Instant::now();
    let followed: Vec<live::Followed> = stream::iter(0..shapes)
        .map(|i| {
            let volt = &volt;
            async move { live::follow(volt, "items", &format!("owner = {i}")).await }
        })
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let create_secs = t.elapsed().as_secs_f64();
    volt.wait_registry_written().await?;
    // Stopped while the WAL is written, so that both readers start from a backlog.
    volt.kill_9().await?;

    let publication = format!("electric_publication_{name}");
    // The baseline drains the WAL twice, before volt and after it, each from a slot of
    // its own: its rate moves by a quarter from run to run on these machines, and the
    // ratio is taken against the mean of the two.
    let slots = ["bench_recvlogical_before", "bench_recvlogical_after"];
    for slot in slots {
        client
            .execute(
                "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
                &[&slot],
            )
            .await?;
    }
    let t = Instant::now();
    let txns = changes / TXN_ROWS;
    for _ in 0..txns {
        client
            .execute(
                &format!(
                    "INSERT INTO items (owner, payload)
                     SELECT (random() * {})::int8, 'payload ' || g || ' of a replicated row'
                     FROM generate_series(1, {TXN_ROWS}) g",
                    shapes - 1
                ),
                &[],
            )
            .await?;
    }
    // The last transaction's commit record comes after this LSN.
    client.batch_execute("BEGIN").await?;
    client
        .execute(
            "INSERT INTO items (owner, payload) VALUES (0, 'marker')",
            &[],
        )
        .await?;
    let before_commit: String = client
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await?
        .get(0);
    client.batch_execute("COMMIT").await?;
    let end: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);
    let write_secs = t.elapsed().as_secs_f64();
    let total = (txns * TXN_ROWS + 1) as f64;

    let before = pg_recvlogical(env, name, slots[0], &publication, &end).await?;
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slots[0]])
        .await?;

    let target = lsn_u64(&before_commit)?;
    let (volt, to_active) = Volt::start(env, &db_url, storage.path(), port).await?;
    let t = Instant::now();
    let cpu0 = volt.cpu_secs();
    let deadline = Instant::now() + Duration::from_secs(600);
    // Durable, not only processed: what Postgres may be told is stored.
    while stats_lsn(&volt, "durable_lsn").await? < target {
        anyhow::ensure!(
            Instant::now() < deadline,
            "volt did not drain the WAL in 600 s"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let ours = Drain {
        secs: t.elapsed().as_secs_f64(),
        cpu_secs: volt.cpu_secs() - cpu0,
    };
    let peak_rss = volt.peak_rss_kib();
    // Spot check: the shapes hold what was written (rows land in the shape of their owner).
    let sample = &followed[0];
    let page = live::get(
        &volt.http,
        &volt.base,
        "items",
        &sample.where_clause,
        &sample.offset,
        Some(&sample.handle),
        false,
    )
    .await?;
    anyhow::ensure!(
        page.status == 200,
        "shape read after the drain: {}",
        page.status
    );
    drop(volt);
    let after = pg_recvlogical(env, name, slots[1], &publication, &end).await?;
    client
        .execute("SELECT pg_drop_replication_slot($1)", &[&slots[1]])
        .await?;

    let rate = |d: &Drain| total / d.secs;
    let baseline_rate = (rate(&before) + rate(&after)) / 2.0;
    println!();
    println!(
        "S4 replication throughput: {shapes} shapes `owner = k`, {} changes in {TXN_ROWS}-row transactions (WAL written in {write_secs:.1} s; shapes created in {create_secs:.1} s; volt restart to active {:.2} s)",
        total as u64,
        to_active.as_secs_f64()
    );
    println!("| reader | drain time | changes/s | CPU-us per change | ratio |");
    println!("|---|---|---|---|---|");
    for (when, d) in [("before volt", &before), ("after volt", &after)] {
        println!(
            "| pg_recvlogical (baseline, {when}) | {:.2} s | {:.0} | {:.2} | {:.2}x |",
            d.secs,
            rate(d),
            d.cpu_secs * 1e6 / total,
            rate(d) / baseline_rate
        );
    }
    println!(
        "| volt | {:.2} s | {:.0} | {:.2} | {:.2}x of the baselines' mean (target >= 0.8x) |",
        ours.secs,
        rate(&ours),
        ours.cpu_secs * 1e6 / total,
        rate(&ours) / baseline_rate
    );
    println!(
        "volt peak RSS: {:.1} MiB; shape storage under {}",
        peak_rss as f64 / 1024.0,
        storage
            .path()
            .parent()
            .map_or("?".into(), |p| p.display().to_string())
    );
    Ok(())
}
