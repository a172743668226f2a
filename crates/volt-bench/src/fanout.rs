//! S3: write fan-out. One shape, N live long-poll clients, a 50-row transaction every
//! 100 ms: write-to-last-client latency per transaction and volt's RSS over time; against
//! a minimal hold-and-release long-poll server (its own runtime and threads, like a
//! separate process) that releases the same payload to the same clients on the same beat.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use axum::body::Bytes;
use tokio::sync::watch;

use crate::harness::{BenchEnv, Volt, free_port};
use crate::load::{Position, ms, percentile, raise_nofile, rss_sampler, sync, wait_parked};

const BATCH_ROWS: usize = 50;
const BEAT: Duration = Duration::from_millis(100);
const SHAPE: &str = "table=items";

/// When each transaction was written and when its last client had it.
struct Tracker {
    epoch: Instant,
    /// `epoch` on the wall clock (ms since 1970), for clients in other processes.
    epoch_wall_ms: f64,
    sent: Vec<AtomicU64>,
    last: Vec<AtomicU64>,
    got: Vec<AtomicU32>,
}

impl Tracker {
    fn new(batches: usize) -> Tracker {
        let zeros = |n| (0..n).map(|_| AtomicU64::new(0)).collect();
        Tracker {
            epoch: Instant::now(),
            epoch_wall_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs_f64() * 1000.0)
                .unwrap_or(0.0),
            sent: zeros(batches),
            last: zeros(batches),
            got: (0..batches).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }
}

/// The batch number of the last row in a response body (rows carry `"batch":"<k>"`).
fn last_batch(body: &[u8]) -> Option<usize> {
    let marker = b"\"batch\":\"";
    let at = memchr::memmem::rfind(body, marker)? + marker.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits])
        .ok()?
        .parse()
        .ok()
}

struct ClientRun {
    /// Write-to-this-client latency of every transaction, in microseconds.
    delivered: Vec<u32>,
    errors: u32,
    /// The first body that held exactly one transaction (the floor serves the same bytes).
    sample: Option<Bytes>,
}

/// One live client: long-polls until it has every batch or `stop` is set.
async fn live_client(
    http: reqwest::Client,
    base: String,
    mut pos: Position,
    tracker: Arc<Tracker>,
    mut stop: watch::Receiver<bool>,
    keep_sample: bool,
    first_batch: usize,
) -> ClientRun {
    let batches = tracker.sent.len();
    let mut run = ClientRun {
        delivered: Vec::with_capacity(batches),
        errors: 0,
        sample: None,
    };
    let mut next = 0usize;
    while next < batches {
        let req = http.get(pos.url(&base, SHAPE, true)).send();
        let res = tokio::select! {
            r = req => r,
            _ = stop.wait_for(|s| *s) => return run,
        };
        let res = match res {
            Ok(r) if r.status() == 200 => r,
            _ => {
                run.errors += 1;
                tokio::time::sleep(BEAT).await;
                continue;
            }
        };
        pos.advance(&res);
        let Ok(body) = res.bytes().await else {
            run.errors += 1;
            continue;
        };
        let now = tracker.now();
        if let Some(last) = last_batch(&body)
            .and_then(|l| l.checked_sub(first_batch))
            .filter(|l| *l >= next && *l < batches)
        {
            if keep_sample && run.sample.is_none() && last == next {
                run.sample = Some(body.clone());
            }
            for b in next..=last {
                tracker.last[b].fetch_max(now, Ordering::AcqRel);
                tracker.got[b].fetch_add(1, Ordering::AcqRel);
                let sent = tracker.sent[b].load(Ordering::Acquire);
                run.delivered
                    .push((now.saturating_sub(sent) / 1000).min(u32::MAX as u64) as u32);
            }
            next = last + 1;
        }
    }
    run
}

struct Figures {
    clients: usize,
    batches: usize,
    /// Write-to-last-client per transaction that every client got.
    last_p50: Duration,
    last_p99: Duration,
    /// Over every (client, transaction).
    each_p50: Duration,
    complete: usize,
    errors: u32,
    sample: Option<Bytes>,
    /// When each transaction was written, ms since 1970.
    sent_wall_ms: Vec<f64>,
    /// Write-to-last-client of each transaction in order (None: not every client got it).
    per_tx: Vec<Option<Duration>>,
    /// When the clients were parked and writing began.
    writing_from: Instant,
}

/// Start `clients` live clients at `pos`, wait for them to park (`parked`), run `write`
/// once per beat for `batches` beats, and wait for the clients to have everything.
async fn drive<W, Fut, P, PFut>(
    base: &str,
    pos: &Position,
    first_batch: usize,
    clients: usize,
    batches: usize,
    parked: P,
    mut write: W,
) -> anyhow::Result<Figures>
where
    W: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
    P: FnOnce() -> PFut,
    PFut: std::future::Future<Output = anyhow::Result<()>>,
{
    let tracker = Arc::new(Tracker::new(batches));
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(usize::MAX)
        .build()?;
    let (stop_tx, stop) = watch::channel(false);
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            tokio::spawn(live_client(
                http.clone(),
                base.to_string(),
                pos.clone(),
                tracker.clone(),
                stop.clone(),
                i == 0,
                first_batch,
            ))
        })
        .collect();
    parked().await?;
    let writing_from = Instant::now();
    let mut beat = tokio::time::interval(BEAT);
    for k in 0..batches {
        beat.tick().await;
        tracker.sent[k].store(tracker.now(), Ordering::Release);
        write(k).await?;
    }
    // Everything written: the clients have a while to catch up, then stop.
    let deadline = Instant::now() + Duration::from_secs(30);
    while tracker.got[batches - 1].load(Ordering::Acquire) < clients as u32
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop_tx.send_replace(true);
    let mut each = Vec::new();
    let (mut errors, mut sample) = (0, None);
    for t in tasks {
        let run = t.await?;
        each.extend(run.delivered);
        errors += run.errors;
        sample = sample.or(run.sample);
    }
    each.sort_unstable();
    let per_tx: Vec<Option<Duration>> = (0..batches)
        .map(|b| {
            (tracker.got[b].load(Ordering::Acquire) == clients as u32).then(|| {
                Duration::from_nanos(
                    tracker.last[b]
                        .load(Ordering::Acquire)
                        .saturating_sub(tracker.sent[b].load(Ordering::Acquire)),
                )
            })
        })
        .collect();
    let mut last: Vec<Duration> = per_tx.iter().flatten().copied().collect();
    last.sort();
    let each_p50 = each
        .get(each.len() / 2)
        .map(|us| Duration::from_micros(*us as u64))
        .unwrap_or_default();
    Ok(Figures {
        clients,
        batches,
        last_p50: percentile(&last, 0.5),
        last_p99: percentile(&last, 0.99),
        each_p50,
        complete: last.len(),
        errors,
        sample,
        per_tx,
        writing_from,
        sent_wall_ms: tracker
            .sent
            .iter()
            .map(|s| tracker.epoch_wall_ms + s.load(Ordering::Acquire) as f64 / 1e6)
            .collect(),
    })
}

/// The floor: holds each long-poll until the next transaction is published, then
/// releases every transaction after the request's offset plus an up-to-date, as one body.
struct FloorServer {
    base: String,
    state: Arc<FloorState>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

struct FloorState {
    batches: RwLock<Vec<Bytes>>,
    published: watch::Sender<usize>,
}

impl FloorServer {
    fn start() -> anyhow::Result<FloorServer> {
        let state = Arc::new(FloorState {
            batches: RwLock::new(Vec::new()),
            published: watch::channel(0).0,
        });
        let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        listener.set_nonblocking(true)?;
        let base = format!("http://{}", listener.local_addr()?);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app_state = state.clone();
        let thread = std::thread::Builder::new()
            .name("floor-server".into())
            .spawn(move || {
                let Ok(rt) = tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .enable_all()
                    .build()
                else {
                    return;
                };
                rt.block_on(async move {
                    let Ok(listener) = tokio::net::TcpListener::from_std(listener) else {
                        return;
                    };
                    let app = axum::Router::new()
                        .fallback(move |uri: axum::http::Uri| floor_poll(app_state.clone(), uri));
                    let _ = axum::serve(listener, app)
                        .with_graceful_shutdown(async {
                            let _ = stopped.await;
                        })
                        .await;
                });
            })?;
        Ok(FloorServer {
            base,
            state,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn publish(&self, batch: Bytes) {
        let n = {
            let mut b = self
                .state
                .batches
                .write()
                .unwrap_or_else(|e| e.into_inner());
            b.push(batch);
            b.len()
        };
        self.state.published.send_replace(n);
    }
}

impl Drop for FloorServer {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

async fn floor_poll(state: Arc<FloorState>, uri: axum::http::Uri) -> axum::response::Response {
    use axum::response::IntoResponse;
    let at: usize = uri
        .query()
        .unwrap_or("")
        .split('&')
        .find_map(|kv| kv.strip_prefix("offset="))
        .and_then(|o| o.parse().ok())
        .unwrap_or(0);
    let mut rx = state.published.subscribe();
    let upto = tokio::time::timeout(Duration::from_secs(20), rx.wait_for(|p| *p > at))
        .await
        .ok()
        .and_then(|r| r.ok().map(|p| *p))
        .unwrap_or(at);
    let mut body = Vec::new();
    body.push(b'[');
    {
        let batches = state.batches.read().unwrap_or_else(|e| e.into_inner());
        for b in &batches[at.min(upto)..upto] {
            body.extend_from_slice(b);
            body.push(b',');
        }
    }
    body.extend_from_slice(br#"{"headers":{"control":"up-to-date"}}]"#);
    (
        [
            ("electric-offset", upto.to_string()),
            ("electric-handle", "floor".to_string()),
            ("electric-cursor", "1".to_string()),
            ("content-type", "application/json".to_string()),
        ],
        body,
    )
        .into_response()
}

/// The rows of a one-transaction volt body, without its brackets and up-to-date, so the
/// floor can release the same bytes (renumbered per batch).
fn rows_of(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let end = text.rfind(r#"{"headers":{"control":"up-to-date""#)?;
    Some(text.get(1..end)?.trim_end_matches(',').to_string())
}

fn renumber(rows: &str, batch: usize) -> Bytes {
    // The sample is batch `b`; every row carries `"batch":"<b>"`.
    let b = last_batch(rows.as_bytes()).unwrap_or(0);
    Bytes::from(rows.replace(
        &format!("\"batch\":\"{b}\""),
        &format!("\"batch\":\"{batch}\""),
    ))
}

/// A few real `@electric-sql/client` streams (tests/js/bench/fanout_clients.mjs) on the
/// same shape, reporting when each transaction reached them.
struct JsClients {
    child: tokio::process::Child,
    lines: tokio::task::JoinHandle<Vec<(usize, f64)>>,
}

impl JsClients {
    /// `None` (with the reason printed) when node or tests/js/node_modules is missing.
    async fn start(
        base: &str,
        pos: &Position,
        n: usize,
        first_batch: usize,
        batches: usize,
    ) -> anyhow::Result<Option<JsClients>> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/js");
        if !dir.join("node_modules/@electric-sql/client").is_dir() {
            println!(
                "(real clients skipped: {} has no node_modules; run npm ci there)",
                dir.display()
            );
            return Ok(None);
        }
        let spawned = tokio::process::Command::new("node")
            .current_dir(&dir)
            .arg("bench/fanout_clients.mjs")
            .args([base, &pos.handle, &pos.offset])
            .args([n.to_string(), first_batch.to_string(), batches.to_string()])
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn();
        let mut child = match spawned {
            Ok(c) => c,
            Err(e) => {
                println!("(real clients skipped: cannot run node: {e})");
                return Ok(None);
            }
        };
        let stdout = child.stdout.take().context("node stdout")?;
        let lines = tokio::spawn(async move {
            use tokio::io::AsyncBufReadExt;
            let mut got = Vec::new();
            let mut lines = tokio::io::BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let f: Vec<&str> = line.split_whitespace().collect();
                if let ["got", _, b, at] = f[..]
                    && let (Ok(b), Ok(at)) = (b.parse(), at.parse())
                {
                    got.push((b, at));
                }
            }
            got
        });
        Ok(Some(JsClients { child, lines }))
    }

    /// Delivery latencies (every delivery; the last client per transaction).
    async fn finish(mut self, sent_wall_ms: &[f64]) -> (Vec<Duration>, Vec<Duration>) {
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
        let _ = self.child.start_kill();
        let got = self.lines.await.unwrap_or_default();
        let lat = |b: usize, at: f64| {
            Duration::from_secs_f64(
                ((at - sent_wall_ms.get(b).copied().unwrap_or(at)) / 1000.0).max(0.0),
            )
        };
        let mut each: Vec<Duration> = got.iter().map(|&(b, at)| lat(b, at)).collect();
        each.sort();
        let mut last = vec![Duration::ZERO; sent_wall_ms.len()];
        for &(b, at) in &got {
            if let Some(l) = last.get_mut(b) {
                *l = (*l).max(lat(b, at));
            }
        }
        last.sort();
        (each, last)
    }
}

struct Row {
    /// Bytes volt's live-read cache held at the end of the run.
    cached: u64,
    /// When writing began, on the RSS samples' clock.
    writing_after: Duration,
    figures: Figures,
    floor: Figures,
    rss: Vec<(Duration, u64)>,
    cpu: f64,
    /// Real clients: every delivery, and the last of them per transaction.
    js: Option<(usize, Vec<Duration>, Vec<Duration>)>,
}

/// RSS grows while the clients connect and the first transactions go out (connection
/// buffers, caches filling); whether it then stays flat is read from this far into the
/// writes on.
const WARM_UP: Duration = Duration::from_secs(5);

/// RSS samples from `from` on: (min, max) in MiB and the least-squares slope in MiB per
/// minute. `None` with fewer than three samples.
fn steady_rss(rss: &[(Duration, u64)], from: Duration) -> Option<(f64, f64, f64)> {
    let points: Vec<(f64, f64)> = rss
        .iter()
        .filter(|s| s.0 >= from)
        .map(|s| (s.0.as_secs_f64() / 60.0, s.1 as f64 / 1024.0))
        .collect();
    if points.len() < 3 {
        return None;
    }
    let n = points.len() as f64;
    let (mx, my) = (
        points.iter().map(|p| p.0).sum::<f64>() / n,
        points.iter().map(|p| p.1).sum::<f64>() / n,
    );
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = if sxx > 0.0 { sxy / sxx } else { 0.0 };
    let min = points.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let max = points.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
    Some((min, max, slope))
}

/// `clients` and `secs` override the default client counts and seconds of writes (a
/// 60 s run at one count shows where RSS settles).
pub async fn run(env: &BenchEnv, clients: &[usize], secs: Option<u64>) -> anyhow::Result<()> {
    let (default_counts, default_secs): (Vec<usize>, u64) = if env.quick {
        (vec![20, 50], 2)
    } else {
        // 20 s rather than the issue's 60 s: two client counts, each against volt and
        // the floor, must fit in 5 minutes with their catch-up time.
        (vec![1_000, 5_000], 20)
    };
    let counts = if clients.is_empty() {
        default_counts
    } else {
        clients.to_vec()
    };
    let secs = secs.map_or(default_secs, |s| s.max(1));
    let batches = (secs * 1000 / BEAT.as_millis() as u64) as usize;
    let max = counts.iter().copied().max().unwrap_or(0) as u64;
    // A socket per client, and as many again for the floor server in this process.
    let nofile = raise_nofile(2 * max + 200)?;

    let db = "fanout";
    let db_url = env.database(db).await?;
    let writer = env.client(db).await?;
    writer
        .batch_execute(
            "CREATE TABLE items (id bigserial PRIMARY KEY, batch int NOT NULL, title text NOT NULL)",
        )
        .await?;
    let storage = env.storage()?;
    let (volt, _) = Volt::start(env, &db_url, &storage, free_port()?).await?;
    let http = reqwest::Client::new();
    let mut rows = Vec::new();
    for (round, &n) in counts.iter().enumerate() {
        let synced = sync(&http, &volt.base, SHAPE).await?;
        let sampling_from = Instant::now();
        let rss = rss_sampler(&volt, Duration::from_millis(500));
        let cpu0 = volt.cpu_secs();
        let base_batch = round * batches;
        let js_n = if env.quick { 2 } else { 5 };
        let js = JsClients::start(&volt.base, &synced.pos, js_n, base_batch, batches).await?;
        let js_n = if js.is_some() { js_n } else { 0 };
        let figures = drive(
            &volt.base,
            &synced.pos,
            base_batch,
            n,
            batches,
            || wait_parked(&volt, (n + js_n) as u64, Duration::from_secs(60)),
            |k| {
                let writer = &writer;
                async move {
                    let b = base_batch + k;
                    writer
                        .batch_execute(&format!(
                            "INSERT INTO items (batch, title)
                             SELECT {b}, 'a row of fifty in transaction ' || {b} || ', number ' || g
                               FROM generate_series(1, {BATCH_ROWS}) g"
                        ))
                        .await?;
                    Ok(())
                }
            },
        )
        .await?;
        let cpu = volt.cpu_secs() - cpu0;
        let rss: Vec<(Duration, u64)> = rss.stop().await;
        let cached = live_read_cache_bytes(&http, &volt.base).await.unwrap_or(0);
        let js = match js {
            Some(js) => {
                let (each, last) = js.finish(&figures.sent_wall_ms).await;
                Some((js_n, each, last))
            }
            None => None,
        };

        let sample = figures
            .sample
            .as_deref()
            .and_then(rows_of)
            .context("no volt body with exactly one transaction to copy for the floor")?;
        let server = FloorServer::start()?;
        let floor_pos = Position {
            handle: "floor".into(),
            offset: "0".into(),
            cursor: None,
        };
        let state = server.state.clone();
        let floor = drive(
            &server.base,
            &floor_pos,
            0,
            n,
            batches,
            || async {
                // The floor has no admission counter: wait for a watcher per client.
                let deadline = Instant::now() + Duration::from_secs(60);
                while state.published.receiver_count() < n {
                    if Instant::now() > deadline {
                        bail!("floor clients did not park");
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(())
            },
            |k| {
                server.publish(renumber(&sample, k));
                async { Ok(()) }
            },
        )
        .await?;
        drop(server);
        rows.push(Row {
            cached,
            writing_after: figures
                .writing_from
                .saturating_duration_since(sampling_from),
            figures,
            floor,
            rss,
            cpu,
            js,
        });
    }
    let peak = volt.peak_rss_kib();
    volt.kill_9().await?;

    println!(
        "\n## S3: write fan-out, 1 shape, a {BATCH_ROWS}-row transaction every {} ms for {secs} s{}\n",
        BEAT.as_millis(),
        if env.quick { " (quick)" } else { "" }
    );
    println!(
        "Open-file limit {nofile}. Write-to-last-client: from sending the INSERT to the last client holding the transaction; floor: from publishing to the last client.\n"
    );
    println!(
        "| clients | write-to-last-client p50 ms | p99 ms | floor p50 ms | floor p99 ms | p99 ratio (target <= 2x) | every delivery p50 ms (floor) | complete tx (floor) | errors | CPU us per delivery | RSS before clients -> at first write -> end (max) MiB | RSS from {}s into the writes: min-max MiB, slope MiB/min |",
        WARM_UP.as_secs()
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in &rows {
        let f = &r.figures;
        let rss_at = |i: usize| r.rss.get(i).map(|s| s.1).unwrap_or(0);
        let rss_writing = r
            .rss
            .iter()
            .find(|s| s.0 >= r.writing_after)
            .map_or(0, |s| s.1);
        let rss_max = r.rss.iter().map(|s| s.1).max().unwrap_or(0);
        let steady = match steady_rss(&r.rss, r.writing_after + WARM_UP) {
            Some((min, max, slope)) => format!("{min:.1}-{max:.1}, {slope:+.1}"),
            None => "- (run too short)".to_string(),
        };
        println!(
            "| {} | {} | {} | {} | {} | {:.2}x | {} ({}) | {}/{} ({}/{}) | {} ({}) | {:.1} | {:.1} -> {:.1} -> {:.1} ({:.1}) | {steady} |",
            f.clients,
            ms(f.last_p50),
            ms(f.last_p99),
            ms(r.floor.last_p50),
            ms(r.floor.last_p99),
            f.last_p99.as_secs_f64() / r.floor.last_p99.as_secs_f64().max(1e-6),
            ms(f.each_p50),
            ms(r.floor.each_p50),
            f.complete,
            f.batches,
            r.floor.complete,
            r.floor.batches,
            f.errors,
            r.floor.errors,
            r.cpu * 1e6 / (f.clients * f.batches) as f64,
            rss_at(0) as f64 / 1024.0,
            rss_writing as f64 / 1024.0,
            r.rss.last().map(|s| s.1).unwrap_or(0) as f64 / 1024.0,
            rss_max as f64 / 1024.0,
        );
    }
    println!("\nvolt peak RSS {:.1} MiB", peak as f64 / 1024.0);
    for r in &rows {
        println!(
            "live-read cache after the {} client run: {:.1} MiB (bounded at 64 MiB)",
            r.figures.clients,
            r.cached as f64 / (1024.0 * 1024.0)
        );
    }
    if !env.quick {
        plot(&rows);
    }
    if rows.iter().any(|r| r.js.is_some()) {
        println!(
            "\nReal clients (@electric-sql/client, node) in the same runs, against the Rust clients:\n"
        );
        println!(
            "| clients | real clients | real: every delivery p50 ms | Rust: every delivery p50 ms | real: last real client p99 ms | Rust: last client p99 ms | deliveries |"
        );
        println!("|---|---|---|---|---|---|---|");
        for r in &rows {
            if let Some((n, each, last)) = &r.js {
                println!(
                    "| {} | {n} | {} | {} | {} | {} | {}/{} |",
                    r.figures.clients,
                    ms(percentile(each, 0.5)),
                    ms(r.figures.each_p50),
                    ms(percentile(last, 0.99)),
                    ms(r.figures.last_p99),
                    each.len(),
                    n * r.figures.batches,
                );
            }
        }
    }
    Ok(())
}

/// Per client count: write-to-last-client of every transaction (volt and the floor), and
/// volt's RSS through the run.
fn plot(rows: &[Row]) {
    use crate::plot::{Series, line_chart};
    let secs = |i: usize| i as f64 * BEAT.as_secs_f64();
    let latency = |f: &Figures| -> Vec<(f64, f64)> {
        f.per_tx
            .iter()
            .enumerate()
            .filter_map(|(i, d)| d.map(|d| (secs(i), d.as_secs_f64() * 1e3)))
            .collect()
    };
    for r in rows {
        let n = r.figures.clients;
        let charts = [
            line_chart(
                &format!("s3-fanout-{n}-latency.png"),
                &format!("S3: write to last of {n} clients, per transaction"),
                "seconds into the run (a 50-row transaction every 100 ms)",
                "ms",
                &[
                    Series {
                        name: "volt".into(),
                        points: latency(&r.figures),
                    },
                    Series {
                        name: "floor (hold-and-release server)".into(),
                        points: latency(&r.floor),
                    },
                ],
            ),
            line_chart(
                &format!("s3-fanout-{n}-rss.png"),
                &format!(
                    "S3: volt RSS with {n} live clients (writing from {:.1} s)",
                    r.writing_after.as_secs_f64()
                ),
                "seconds since the clients started connecting",
                "MiB",
                &[Series {
                    name: "volt RSS".into(),
                    points: r
                        .rss
                        .iter()
                        .map(|(t, kib)| (t.as_secs_f64(), *kib as f64 / 1024.0))
                        .collect(),
                }],
            ),
        ];
        for chart in charts {
            match chart {
                Ok(path) => println!("plot: {}", path.display()),
                Err(e) => println!("plot skipped: {e}"),
            }
        }
    }
}

/// What volt's shared live-read cache holds (`/v1/admin/stats`).
async fn live_read_cache_bytes(http: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let stats: serde_json::Value = http
        .get(format!("{base}/v1/admin/stats"))
        .send()
        .await?
        .json()
        .await?;
    stats["cache_bytes"]["live_reads"]
        .as_u64()
        .context("no cache_bytes.live_reads in /v1/admin/stats")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(f: impl Fn(f64) -> f64) -> Vec<(Duration, u64)> {
        (0..=40)
            .map(|i| {
                let t = i as f64 * 0.5;
                (Duration::from_secs_f64(t), (f(t) * 1024.0) as u64)
            })
            .collect()
    }

    #[test]
    fn the_steady_rss_ignores_the_warm_up_and_fits_the_slope_after_it() {
        // A ramp to 80 MiB in the first 5 s, then flat.
        let flat = series(|t| if t < 5.0 { 16.0 * t } else { 80.0 });
        let (min, max, slope) = steady_rss(&flat, Duration::from_secs(5)).unwrap();
        assert_eq!((min, max), (80.0, 80.0));
        assert!(slope.abs() < 1e-9);
        // Growing by 1 MiB per second: 60 MiB per minute.
        let growing = series(|t| 50.0 + t);
        let (_, _, slope) = steady_rss(&growing, Duration::from_secs(5)).unwrap();
        assert!((slope - 60.0).abs() < 0.5, "{slope}");
        assert!(steady_rss(&flat, Duration::from_secs(60)).is_none());
    }
}
