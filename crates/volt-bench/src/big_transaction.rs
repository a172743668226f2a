//! S7: one 2M-row UPDATE transaction while 500 clients hold live requests and 100 of
//! them stop reading (they keep the connection and never read the body). Peak RSS, the
//! time until every healthy client has the whole transaction, memory pinned per stalled
//! client, restarts and 409s; against `pg_recvlogical` (pgoutput, the same publication,
//! a slot of its own) draining the same transaction to /dev/null.
//!
//! The rows move into the shapes: every shape is `grp = k AND v > 0` and every row
//! starts with `v = 0`, so the snapshots are empty (cheap to set up) and the UPDATE
//! setting `v = 1` turns into one insert per row in one of the shapes.

use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::AsyncWriteExt;

use crate::harness::{BenchEnv, Volt, free_port};
use crate::load::{
    Position, count, ms, raise_nofile, rss_sampler, sync, tree_restarts, wait_existing_in_use,
    wait_parked,
};

fn shape(k: usize) -> String {
    format!("table=items&where=grp%20%3D%20{k}%20AND%20v%20%3E%200")
}

struct Healthy {
    /// From sending the UPDATE until this client had every row of its shape.
    done: Option<Duration>,
    conflicts: u32,
    errors: u32,
}

/// Long-polls until `rows` inserts have arrived.
async fn healthy_client(
    http: reqwest::Client,
    base: String,
    k: usize,
    mut pos: Position,
    rows: usize,
    started: std::sync::Arc<tokio::sync::OnceCell<Instant>>,
    deadline: Instant,
) -> Healthy {
    let shape = shape(k);
    let mut run = Healthy {
        done: None,
        conflicts: 0,
        errors: 0,
    };
    let mut seen = 0;
    while seen < rows && Instant::now() < deadline {
        let res = match http.get(pos.url(&base, &shape, true)).send().await {
            Ok(r) => r,
            Err(_) => {
                run.errors += 1;
                continue;
            }
        };
        match res.status().as_u16() {
            200 => {}
            409 => {
                run.conflicts += 1;
                return run;
            }
            _ => {
                run.errors += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        }
        pos.advance(&res);
        match res.bytes().await {
            Ok(body) => seen += count(&body, b"\"operation\":\"insert\""),
            Err(_) => run.errors += 1,
        }
    }
    if seen >= rows {
        run.done = started.get().map(|t| t.elapsed());
    }
    run
}

/// A client that sends one live request and then never reads: a tiny receive buffer so
/// the kernel cannot absorb the response for it.
async fn stalled_client(
    addr: std::net::SocketAddr,
    path: String,
) -> anyhow::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut stream = socket.connect(addr).await?;
    stream
        .write_all(format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    Ok(stream)
}

pub async fn run(env: &BenchEnv) -> anyhow::Result<()> {
    let (rows, shapes, clients, stalled) = if env.quick {
        (20_000usize, 5usize, 25usize, 5usize)
    } else {
        (2_000_000, 20, 500, 100)
    };
    raise_nofile(clients as u64 * 2 + 200)?;
    let db = "big_transaction";
    let db_url = env.database(db).await?;
    let client = env.client(db).await?;
    client
        .batch_execute(&format!(
            "CREATE TABLE items (id int PRIMARY KEY, grp int NOT NULL, v int NOT NULL);
             INSERT INTO items SELECT g, g % {shapes}, 0 FROM generate_series(0, {rows} - 1) g;
             CREATE INDEX ON items (grp);"
        ))
        .await?;
    client.batch_execute("VACUUM ANALYZE items").await?;

    let storage = env.storage()?;
    let port = free_port()?;
    // Parked requests must still be parked when the transaction lands, however long the
    // UPDATE takes: a timed-out stalled client would never ask again.
    let (volt, _) = Volt::start_with(
        env,
        &db_url,
        &storage,
        port,
        &[("ELECTRIC_LONG_POLL_TIMEOUT", "10m")],
    )
    .await?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()?;
    let mut positions = Vec::new();
    for k in 0..shapes {
        positions.push(sync(&http, &volt.base, &shape(k)).await?.pos);
    }
    // pg_recvlogical's slot must exist before the transaction, like volt's.
    client
        .batch_execute("SELECT pg_create_logical_replication_slot('s7_floor', 'pgoutput')")
        .await?;

    let started = std::sync::Arc::new(tokio::sync::OnceCell::new());
    let deadline = Instant::now() + Duration::from_secs(240);
    let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let mut healthy = Vec::new();
    let mut held = Vec::new();
    for i in 0..clients {
        let k = i % shapes;
        // Every fifth client of each shape stalls.
        if (i / shapes) % (clients / stalled) == clients / stalled - 1 {
            let path = positions[k].url("", &shape(k), true);
            held.push(stalled_client(addr, path).await?);
        } else {
            healthy.push(tokio::spawn(healthy_client(
                http.clone(),
                volt.base.clone(),
                k,
                positions[k].clone(),
                rows / shapes,
                started.clone(),
                deadline,
            )));
        }
    }
    anyhow::ensure!(held.len() == stalled, "{} stalled clients", held.len());
    wait_parked(&volt, clients as u64, Duration::from_secs(60)).await?;
    let restarts0 = tree_restarts(&volt).await?;
    let rss_before = volt.rss_kib();
    let rss = rss_sampler(&volt, Duration::from_millis(200));
    let cpu0 = volt.cpu_secs();

    let t0 = Instant::now();
    let _ = started.set(t0);
    client.batch_execute("UPDATE items SET v = 1").await?;
    let update_secs = t0.elapsed();
    let end_lsn: String = client
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await?
        .get(0);

    let (mut done, mut conflicts, mut errors) = (Vec::new(), 0, 0);
    for h in healthy {
        let h = h.await?;
        conflicts += h.conflicts;
        errors += h.errors;
        if let Some(d) = h.done {
            done.push(d);
        }
    }
    done.sort();
    let all_healthy = done.len() == clients - stalled;
    let cpu = volt.cpu_secs() - cpu0;
    let samples = rss.stop().await;
    let peak = volt.peak_rss_kib();
    let restarts = tree_restarts(&volt).await? - restarts0;

    // Memory the stalled clients pin: RSS while they hold their responses, then after
    // they hang up and volt has dropped their requests.
    let rss_held = volt.rss_kib();
    drop(held);
    wait_existing_in_use(
        &volt,
        Duration::from_secs(30),
        "stalled requests released after their clients left",
        |held| held == 0,
    )
    .await?;
    let rss_released = volt.rss_kib();
    volt.kill_9().await?;

    // The floor: Postgres decoding the same transaction for pg_recvlogical.
    let recvlogical = env.cluster.binaries().bindir.join("pg_recvlogical");
    let floor = if recvlogical.exists() {
        let t = Instant::now();
        let status = tokio::process::Command::new(&recvlogical)
            .args(["-d", &db_url, "--slot", "s7_floor", "--start", "--no-loop"])
            .args(["-o", "proto_version=1"])
            .args([
                "-o",
                &format!("publication_names=electric_publication_{db}"),
            ])
            .args(["-E", &end_lsn, "-f", "/dev/null"])
            .status()
            .await
            .context("running pg_recvlogical")?;
        anyhow::ensure!(status.success(), "pg_recvlogical: {status}");
        Some(t.elapsed())
    } else {
        None
    };
    client
        .batch_execute("SELECT pg_drop_replication_slot('s7_floor')")
        .await?;

    let last = done.last().copied().unwrap_or_default();
    println!(
        "\n## S7: one {rows}-row UPDATE, {clients} live clients on {shapes} shapes, {stalled} of them stalled{}\n",
        if env.quick { " (quick)" } else { "" }
    );
    println!(
        "The UPDATE took {} ms to commit. Times run from sending it. RSS sampled every 200 ms.\n",
        ms(update_secs)
    );
    println!("| measure | volt | baseline | ratio | target |");
    println!("|---|---|---|---|---|");
    match floor {
        Some(f) => println!(
            "| healthy clients have the whole transaction | all {}: p50 {} ms, last {} ms | UPDATE + pg_recvlogical drain {} ms | {:.2}x | <= 2x |",
            if all_healthy { "yes" } else { "NO" },
            ms(done.get(done.len() / 2).copied().unwrap_or_default()),
            ms(last),
            ms(update_secs + f),
            last.as_secs_f64() / (update_secs + f).as_secs_f64(),
        ),
        None => println!(
            "| healthy clients have the whole transaction | last {} ms | pg_recvlogical not found | - | <= 2x |",
            ms(last)
        ),
    }
    println!(
        "| peak RSS | {:.1} MiB (before {:.1} MiB, max sampled {:.1} MiB) | - | - | <= 1 GB |",
        peak as f64 / 1024.0,
        rss_before as f64 / 1024.0,
        samples.iter().map(|s| s.1).max().unwrap_or(0) as f64 / 1024.0
    );
    println!(
        "| memory pinned per stalled client | {:.1} MiB ({:.1} MiB held -> {:.1} MiB after they left) | - | - | - |",
        rss_held.saturating_sub(rss_released) as f64 / 1024.0 / stalled as f64,
        rss_held as f64 / 1024.0,
        rss_released as f64 / 1024.0,
    );
    println!("| actor restarts | {restarts} | - | - | 0 |");
    println!("| 409s (healthy clients) | {conflicts} | - | - | no storm |");
    println!("| other errors | {errors} | - | - | - |");
    println!(
        "| volt CPU | {:.1} s ({:.2} us per row) | - | - | - |",
        cpu,
        cpu * 1e6 / rows as f64
    );
    Ok(())
}
