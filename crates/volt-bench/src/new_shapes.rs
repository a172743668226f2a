//! S2: 2,000 concurrent requests for 2,000 distinct 500-row shapes, each client following
//! its shape to up-to-date and retrying 503s as `@electric-sql/client` does; against the
//! same 2,000 SELECTs through a 20-connection pool. Postgres connections are sampled from
//! `pg_stat_activity` throughout.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;

use crate::harness::{BenchEnv, MachineTicks, Volt, free_port};
use crate::load::{Sampler, connection_sampler, ms, percentile, sync};

const POOL: usize = 20;

struct Outcome {
    secs: f64,
    sorted: Vec<Duration>,
    /// CPU seconds of Postgres and of this process (the clients) over the run.
    cpu: Cpu,
}

/// CPU seconds used by Postgres and by this process (the load generator), from a
/// starting point: the cores are shared by volt, Postgres and the clients (all of them,
/// or one for Postgres and the clients when pinned), so what the others need bounds
/// what volt can reach.
#[derive(Clone, Copy, Default)]
struct Cpu {
    postgres: f64,
    clients: f64,
    /// Percent of the machine's time the hypervisor gave to other guests (at the
    /// start: the ticks to measure it from).
    steal: f64,
    machine: MachineTicks,
}

impl Cpu {
    fn now(env: &BenchEnv) -> Cpu {
        Cpu {
            postgres: env.postgres_cpu_secs(),
            clients: crate::harness::proc_cpu_secs(std::process::id()),
            steal: 0.0,
            machine: MachineTicks::now(),
        }
    }

    fn since(self, env: &BenchEnv) -> Cpu {
        let now = Cpu::now(env);
        Cpu {
            postgres: now.postgres - self.postgres,
            clients: now.clients - self.clients,
            steal: self.machine.steal_percent(now.machine),
            machine: now.machine,
        }
    }
}

impl Outcome {
    fn rate(&self) -> f64 {
        self.sorted.len() as f64 / self.secs
    }
}

/// Runs `job` for each of `shapes` groups on `conns`, one worker per connection, all
/// started at once: each job's completion time, and the CPU Postgres and this process
/// used meanwhile. A job hands its connection back for the next one.
async fn through_pool<C, F, Fut>(
    env: &BenchEnv,
    conns: Vec<C>,
    shapes: usize,
    job: F,
) -> anyhow::Result<Outcome>
where
    C: Send + 'static,
    F: Fn(C, usize) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<C>> + Send,
{
    let next = Arc::new(AtomicUsize::new(0));
    let cpu = Cpu::now(env);
    let started = Instant::now();
    let workers: Vec<_> = conns
        .into_iter()
        .map(|conn| {
            let (next, job) = (next.clone(), job.clone());
            tokio::spawn(async move {
                let mut done = Vec::new();
                let mut conn = conn;
                loop {
                    let g = next.fetch_add(1, Ordering::Relaxed);
                    if g >= shapes {
                        return anyhow::Ok(done);
                    }
                    conn = job(conn, g).await?;
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
    let cpu = cpu.since(env);
    sorted.sort();
    Ok(Outcome { secs, sorted, cpu })
}

/// The floor: the same SELECTs (simple protocol, text rows, as volt's snapshot reads
/// them) through `POOL` connections, all requested at once.
async fn pool_baseline(env: &BenchEnv, db: &str, shapes: usize) -> anyhow::Result<Outcome> {
    let mut conns = Vec::new();
    for _ in 0..POOL {
        conns.push(env.client(db).await?);
    }
    through_pool(env, conns, shapes, |c, g| async move {
        c.simple_query(&format!("SELECT id, grp, title FROM items WHERE grp = {g}"))
            .await?;
        Ok(c)
    })
    .await
}

/// Postgres's part of volt's snapshots: the same sessions (`POOL`), queries and protocol
/// as volt's snapshotter under a herd (`BEGIN REPEATABLE READ`, `pg_current_snapshot()`,
/// the rows' SELECT and `ROLLBACK` in one simple query: `RowsBy::OneQuery`), each row
/// counted and nothing else done with it. What is left of volt's time once this is
/// taken away is volt's own.
async fn snapshot_baseline(env: &BenchEnv, db_url: &str, shapes: usize) -> anyhow::Result<Outcome> {
    let config = volt_pg::PgConfig::parse(db_url)?;
    let mut sessions = Vec::new();
    for _ in 0..POOL {
        sessions.push(config.connect().await?);
    }
    through_pool(env, sessions, shapes, |session, g| async move {
        let sql = format!(
            r#"SELECT "id", "grp", "title" FROM "public"."items" WHERE ("grp" = '{g}'::int4)"#
        );
        let tx = volt_pg::snapshot::SnapshotTx::begin_on(
            session,
            Some(&sql),
            volt_pg::snapshot::RowsBy::OneQuery,
        )
        .await?;
        let mut rows = 0usize;
        let ended = tx
            .rows_then_end(|_| {
                rows += 1;
                Ok::<(), volt_pg::PgError>(())
            })
            .await?;
        anyhow::ensure!(rows > 0, "group {g}: no rows");
        ended.context("a snapshot session closed")
    })
    .await
}

struct VoltRun {
    out: Outcome,
    retried: u32,
    errors: usize,
    first_error: Option<anyhow::Error>,
    /// Requests that waited in admission's room for a permit, and those whose wait ran
    /// out (503).
    waited: u64,
    outwaited: u64,
    max_volt: i64,
    max_repl: i64,
    samples: usize,
    cpu: f64,
    peak_kib: u64,
}

async fn volt_run(
    env: &BenchEnv,
    db_url: &str,
    db: &str,
    shapes: usize,
    rows: usize,
    settings: &[(&str, &str)],
) -> anyhow::Result<VoltRun> {
    let storage = env.storage()?;
    let (volt, _) = Volt::start_with(env, db_url, &storage, free_port()?, settings).await?;
    let sampler = env.client(db).await?;
    // Its backend's CPU is the bench's, not volt's: taken out of Postgres's below.
    let sampler_pid: i32 = sampler
        .query_one("SELECT pg_backend_pid()", &[])
        .await?
        .get(0);
    let sampler_cpu = || crate::harness::proc_cpu_secs(sampler_pid as u32);
    let conns: Sampler<(i64, i64)> = connection_sampler(sampler, Duration::from_millis(20));
    // Distinct users: one connection per client, none shared.
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(120))
        .build()?;
    let cpu0 = volt.cpu_secs();
    let others = Cpu::now(env);
    let sampler_cpu0 = sampler_cpu();
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
    let mut others = others.since(env);
    others.postgres -= sampler_cpu() - sampler_cpu0;
    let peak = volt.peak_rss_kib();
    let samples = conns.stop().await;
    sorted.sort();
    let admission = crate::load::admin_stats(&volt).await?["admission"].clone();
    let counter = |name: &str| admission[name].as_u64().unwrap_or(0);
    volt.kill_9().await?;
    Ok(VoltRun {
        out: Outcome {
            secs,
            sorted,
            cpu: others,
        },
        retried,
        errors,
        first_error,
        waited: counter("initial_waited"),
        outwaited: counter("initial_wait_timeouts"),
        max_volt: samples.iter().map(|(_, (v, _))| *v).max().unwrap_or(0),
        max_repl: samples.iter().map(|(_, (_, r))| *r).max().unwrap_or(0),
        samples: samples.len(),
        cpu,
        peak_kib: peak,
    })
}

/// The volt runs with the CPUs as they are now (see `BenchEnv::pin`), each between two
/// runs of the pool and compared with their mean, and Postgres alone running volt's
/// snapshot queries; printed as rows of the scenario's table.
///
/// The pool runs before and after each volt run because this machine's speed drifts
/// within seconds (hypervisor steal, a busy sibling hyperthread): in one session the
/// same pool spent 0.69 ms of Postgres CPU per shape in one run and 1.28 ms in another.
/// A baseline measured only before volt made the ratio swing with that drift.
async fn placement_runs(
    env: &BenchEnv,
    db_url: &str,
    db: &str,
    shapes: usize,
    rows: usize,
    placement: &str,
    probes: &mut Vec<f64>,
) -> anyhow::Result<()> {
    let mut floors = vec![pool_baseline(env, db, shapes).await?];
    let snapshots = snapshot_baseline(env, db_url, shapes).await?;

    let pool = POOL.to_string();
    // A slot and publication of each run's own: a killed volt's slot may still be
    // held by its walsender when the next volt starts.
    let stream = |run: &str| format!("new_shapes_{placement}_{run}");
    let (shed_stream, unshed_stream) = (stream("shed"), stream("unshed"));
    let runs: [(&str, Vec<(&str, &str)>); 2] = [
        (
            "volt, default admission (initial 300; 1,000 more wait up to 3 s)",
            vec![
                ("ELECTRIC_DB_POOL_SIZE", &pool),
                ("ELECTRIC_REPLICATION_STREAM_ID", &shed_stream),
            ],
        ),
        // The same with admission raised so nothing is shed: volt's creation pipeline
        // alone, without the clients' 503 back-off.
        (
            "volt, admission raised (nothing shed)",
            vec![
                ("ELECTRIC_DB_POOL_SIZE", &pool),
                (
                    "ELECTRIC_MAX_CONCURRENT_REQUESTS",
                    r#"{"initial":100000,"existing":100000}"#,
                ),
                ("ELECTRIC_TWEAKS_SHAPE_CACHE_MAX_MAILBOX", "100000"),
                ("ELECTRIC_REPLICATION_STREAM_ID", &unshed_stream),
            ],
        ),
    ];
    let mut volts = Vec::new();
    for (name, settings) in &runs {
        probes.push(env.file_creation_micros()?);
        volts.push((
            *name,
            volt_run(env, db_url, db, shapes, rows, settings).await?,
        ));
        floors.push(pool_baseline(env, db, shapes).await?);
    }

    let per_shape = |secs: f64| secs * 1000.0 / shapes as f64;
    let p99 = |o: &Outcome| percentile(&o.sorted, 0.99).as_secs_f64();
    for (i, (name, r)) in volts.iter().enumerate() {
        let floor = (p99(&floors[i]) + p99(&floors[i + 1])) / 2.0;
        println!(
            "| {placement} | {name} | {:.0} | {} | {} | {:.2}x (pool runs {} and {}) | {} ({} waited for a permit, {} of them too long) | {} | {} `volt` (pool {POOL} + 1 admin{}) + {} replication, {} samples | {:.2} / {:.2} / {:.2} | {:.0} | {:.1} |",
            r.out.rate(),
            ms(percentile(&r.out.sorted, 0.5)),
            ms(percentile(&r.out.sorted, 0.99)),
            p99(&r.out) / floor.max(1e-6),
            i + 1,
            i + 2,
            r.retried,
            r.waited,
            r.outwaited,
            r.errors,
            r.max_volt,
            if r.max_volt <= POOL as i64 + 1 {
                ": within"
            } else {
                ": EXCEEDED"
            },
            r.max_repl,
            r.samples,
            per_shape(r.cpu),
            per_shape(r.out.cpu.postgres),
            per_shape(r.out.cpu.clients),
            r.out.cpu.steal,
            r.peak_kib as f64 / 1024.0,
        );
        if let Some(e) = &r.first_error {
            println!("first error: {e:#}");
        }
    }
    for (i, floor) in floors.iter().enumerate() {
        println!(
            "| {placement} | {POOL}-connection pool, run {} of {} | {:.0} | {} | {} | 1x | - | 0 | {POOL} | - / {:.2} / {:.2} | {:.0} | - |",
            i + 1,
            floors.len(),
            floor.rate(),
            ms(percentile(&floor.sorted, 0.5)),
            ms(percentile(&floor.sorted, 0.99)),
            per_shape(floor.cpu.postgres),
            per_shape(floor.cpu.clients),
            floor.cpu.steal,
        );
    }
    println!(
        "| {placement} | Postgres alone, volt's snapshot queries through {POOL} sessions (after pool run 1) | {:.0} | {} | {} | {:.2}x (pool run 1) | - | 0 | {POOL} | - / {:.2} / {:.2} | {:.0} | - |",
        snapshots.rate(),
        ms(percentile(&snapshots.sorted, 0.5)),
        ms(percentile(&snapshots.sorted, 0.99)),
        p99(&snapshots) / p99(&floors[0]).max(1e-6),
        per_shape(snapshots.cpu.postgres),
        per_shape(snapshots.cpu.clients),
        snapshots.cpu.steal,
    );
    Ok(())
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

    println!(
        "\n## S2: {shapes} concurrent requests for {shapes} distinct {rows}-row shapes{}\n",
        if env.quick { " (quick)" } else { "" }
    );
    println!(
        "volt: ELECTRIC_DB_POOL_SIZE={POOL}; clients retry 503 as @electric-sql/client does (max(Retry-After, random backoff from 1 s doubling)). Pinned: Postgres and the load generators on one CPU, volt on another, baselines included; shared: all on every CPU the bench may use.\n"
    );
    println!(
        "| placement | | shapes/s | p50 to up-to-date ms | p99 ms | p99 ratio against the mean of the pool runs before and after it (target <= 2x) | 503s retried | errors | Postgres connections (max seen) | CPU ms per shape: volt / Postgres / clients | machine time stolen by the hypervisor % | peak RSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut probes = Vec::new();
    // Pinned first: the issue's setting for the target. The quick run checks that it works.
    let placements: &[bool] = match (env.quick, env.can_pin()) {
        (_, false) => &[false],
        (true, true) => &[true],
        (false, true) => &[true, false],
    };
    for &pinned in placements {
        let pin = match pinned.then(|| env.pin()).transpose() {
            Ok(pin) => pin,
            // Setting another user's process's CPUs needs CAP_SYS_NICE, which
            // containers often drop: Postgres runs as `postgres` when the bench is root.
            Err(e) => {
                println!("| pinned | not run: {e:#} | | | | | | | | | | |");
                if placements.contains(&false) {
                    continue;
                }
                // No shared run follows (the smoke run): the scenario still runs.
                None
            }
        };
        let placement = if pin.is_some() { "pinned" } else { "shared" };
        placement_runs(env, &db_url, db, shapes, rows, placement, &mut probes).await?;
        drop(pin);
    }
    println!(
        "\nCreating an empty file where volt's storage goes took {} us before each volt run, in order (a shape makes four; ext4 without a journal skips every inode deleted in the last minutes, one lookup each).",
        probes
            .iter()
            .map(|us| format!("{us:.0}"))
            .collect::<Vec<_>>()
            .join(" / ")
    );
    Ok(())
}
