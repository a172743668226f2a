//! S5: one transaction that every one of many overlapping shapes must see, while many more
//! `ILIKE` shapes on the same table (which the change does not match) are evaluated for
//! each row. Write-to-client latency: from sending the 50-row INSERT to each live
//! long-poll client (in-process, one per overlapping shape) receiving its changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures::{StreamExt, stream};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;

use crate::harness::{BenchEnv, Volt, free_port};
use crate::live;
use crate::load::wait_parked;

const TXN_ROWS: i64 = 50;

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub async fn run(env: &BenchEnv) -> anyhow::Result<()> {
    let (overlapping, ilike, rounds) = if env.quick {
        (20usize, 50usize, 3usize)
    } else {
        (750, 2_000, 20)
    };
    let name = "s5_overlapping";
    let db_url = env.database(name).await?;
    let client = env.client(name).await?;
    client
        .batch_execute(
            "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, title text NOT NULL);
             INSERT INTO items SELECT g, g % 10, 'seed row ' || g FROM generate_series(1, 100) g;",
        )
        .await?;
    let storage = env.storage()?;
    let port = free_port()?;
    let (volt, _) = Volt::start(env, &db_url, &storage, port).await?;
    let volt = Arc::new(volt);

    let t = Instant::now();
    let wheres: Vec<String> = (1..=overlapping)
        .map(|i| format!("grp = 1000 AND id > -{i}"))
        .chain((0..ilike).map(|i| format!("title ILIKE '%needle {i}%'")))
        .collect();
    let followed: Vec<live::Followed> = stream::iter(wheres.iter())
        .map(|w| {
            let volt = volt.clone();
            async move { live::follow(&volt, "items", w).await }
        })
        // In order: the first `overlapping` are the ones clients follow.
        .buffered(32)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .collect::<anyhow::Result<_>>()?;
    let create_secs = t.elapsed().as_secs_f64();

    // One live long-poll client per overlapping shape. A client that receives changes
    // records the time since the latest write started.
    let base = Instant::now();
    let write_started = Arc::new(AtomicU64::new(0));
    // Rounds start at 1; a client counts each round once, however many responses bring it.
    let round_now = Arc::new(AtomicUsize::new(0));
    let arrived = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::<f64>::new()));
    let errors = Arc::new(AtomicUsize::new(0));
    let stop = CancellationToken::new();
    let http = reqwest::Client::new();
    let mut clients = Vec::new();
    for f in followed.into_iter().take(overlapping) {
        let (http, volt_base) = (http.clone(), volt.base.clone());
        let round_now = round_now.clone();
        let (write_started, arrived, latencies, errors, stop) = (
            write_started.clone(),
            arrived.clone(),
            latencies.clone(),
            errors.clone(),
            stop.clone(),
        );
        clients.push(tokio::spawn(async move {
            let (mut handle, mut offset) = (f.handle, f.offset);
            let mut seen = 0usize;
            loop {
                let page = tokio::select! {
                    _ = stop.cancelled() => return,
                    p = live::get(&http, &volt_base, "items", &f.where_clause, &offset, Some(&handle), true) => p,
                };
                let Ok(page) = page else {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                if page.status != 200 {
                    errors.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
                let round = round_now.load(Ordering::Acquire);
                if page.has_changes && round > seen {
                    seen = round;
                    let started = write_started.load(Ordering::Acquire);
                    let now = base.elapsed().as_nanos() as u64;
                    latencies
                        .lock()
                        .await
                        .push(now.saturating_sub(started) as f64 / 1e6);
                    arrived.fetch_add(1, Ordering::AcqRel);
                }
                if let Some(h) = page.handle {
                    handle = h;
                }
                if let Some(o) = page.offset {
                    offset = o;
                }
            }
        }));
    }
    // Every client parks its live request before the first write.
    wait_parked(&volt, overlapping as u64, Duration::from_secs(60)).await?;

    let cpu0 = volt.cpu_secs();
    let mut missing = 0usize;
    // The last client's latency per round: a slow round shows as one outlier here.
    let (mut round_last, mut delivered) = (Vec::new(), 0usize);
    for round in 0..rounds {
        arrived.store(0, Ordering::Release);
        let first = 1_000 + round as i64 * TXN_ROWS;
        write_started.store(base.elapsed().as_nanos() as u64, Ordering::Release);
        round_now.store(round + 1, Ordering::Release);
        client
            .execute(
                &format!(
                    "INSERT INTO items SELECT g, 1000, 'round {round} row ' || g
                     FROM generate_series({first}, {}) g",
                    first + TXN_ROWS - 1
                ),
                &[],
            )
            .await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while arrived.load(Ordering::Acquire) < overlapping && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let got = arrived.load(Ordering::Acquire).min(overlapping);
        if got < overlapping {
            eprintln!(
                "S5 round {round}: {got} of {overlapping} clients saw the transaction within 30 s"
            );
        }
        missing += overlapping - got;
        {
            let all = latencies.lock().await;
            round_last.push(all[delivered..].iter().copied().fold(0.0, f64::max));
            delivered = all.len();
        }
        // Clients re-park their live requests before the next write.
        wait_parked(&volt, overlapping as u64, Duration::from_secs(60)).await?;
    }
    let cpu = volt.cpu_secs() - cpu0;
    stop.cancel();
    for c in clients {
        let _ = c.await;
    }
    let peak_rss = volt.peak_rss_kib();
    println!(
        "S5 last client per round (ms): {}",
        round_last
            .iter()
            .map(|ms| format!("{ms:.0}"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let mut lat = latencies.lock().await.clone();
    lat.sort_by(f64::total_cmp);
    let p99 = percentile(&lat, 0.99);
    println!();
    println!(
        "S5 overlapping shapes: {overlapping} shapes hit by every {TXN_ROWS}-row transaction, {ilike} ILIKE shapes it does not match; {rounds} transactions, {overlapping} live long-poll clients (shapes created in {create_secs:.1} s)"
    );
    println!(
        "| deliveries | p50 | p99 (target <= 250 ms) | max | missing | client errors | volt CPU per transaction | peak RSS |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    println!(
        "| {} | {:.1} ms | {:.1} ms ({:.2}x of target) | {:.1} ms | {missing} | {} | {:.1} ms | {:.1} MiB |",
        lat.len(),
        percentile(&lat, 0.5),
        p99,
        p99 / 250.0,
        lat.last().copied().unwrap_or(f64::NAN),
        errors.load(Ordering::Relaxed),
        cpu * 1e3 / rounds as f64,
        peak_rss as f64 / 1024.0
    );
    Ok(())
}
