//! Test harness: an in-process volt on a fresh database, and a shape follower.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use std::path::PathBuf;
use std::process::Stdio;

use anyhow::{Context, bail};
use serde_json::{Map, Value};
use tokio::task::JoinHandle;
use volt_http::HttpConfig;
use volt_pg::PgConfig;
use volt_stack::{Stack, StackConfig};
use volt_test_support::TestDb;

/// The generous bound every wait in these tests gets: long enough for a loaded CI
/// machine, short enough that a hang fails the test.
pub const DEADLINE: Duration = Duration::from_secs(30);

pub struct TestVolt {
    pub db: TestDb,
    pub stack: Option<Stack>,
    pub base: String,
    pub http: reqwest::Client,
    server: JoinHandle<()>,
    tweaks: Tweaks,
    pub storage: tempfile::TempDir,
    /// The admission counters of the HTTP server.
    pub admission: Arc<volt_http::admission::Admission>,
}

/// Settings a test may change.
#[derive(Debug, Clone, Default)]
pub struct Tweaks {
    pub secret: Option<String>,
    pub max_shapes: Option<usize>,
    /// Storage somewhere else than a fresh temporary directory.
    pub storage: Option<std::path::PathBuf>,
    /// Admission buckets (default: Electric's 300 / 10,000).
    pub max_concurrent: Option<volt_http::admission::Limits>,
    /// The waiting room in front of `initial` (default volt's: 1,000 for 3 s).
    pub initial_queue: Option<volt_http::admission::Queue>,
    /// Long-poll timeout (default 1.5 s).
    pub long_poll: Option<Duration>,
    /// `ELECTRIC_TWEAKS_SHAPE_CACHE_MAX_MAILBOX` (default: high enough never to shed).
    pub max_shape_cache_mailbox: Option<usize>,
    /// `ELECTRIC_TWEAKS_COALESCE_SHAPE_CREATION` (default on).
    pub coalesce_creates: Option<bool>,
    /// `VOLT_FLUSH_INTERVAL` (default 500 ms, volt's).
    pub flush_interval: Option<Duration>,
}

impl TestVolt {
    pub async fn start(test_name: &str) -> anyhow::Result<TestVolt> {
        Self::start_with(test_name, None).await
    }

    pub async fn start_with(test_name: &str, secret: Option<&str>) -> anyhow::Result<TestVolt> {
        Self::start_tweaked(
            test_name,
            Tweaks {
                secret: secret.map(str::to_string),
                ..Tweaks::default()
            },
        )
        .await
    }

    pub async fn start_tweaked(test_name: &str, tweaks: Tweaks) -> anyhow::Result<TestVolt> {
        let db = TestDb::new(test_name).await?;
        let storage = tempfile::tempdir()?;
        let dir = tweaks
            .storage
            .clone()
            .unwrap_or_else(|| storage.path().to_path_buf());
        let (stack, base, server, admission) = Self::launch(&db, &dir, tweaks.clone()).await?;
        let volt = TestVolt {
            db,
            admission,
            stack: Some(stack),
            base,
            http: reqwest::Client::new(),
            server,
            tweaks,
            storage,
        };
        volt.wait_active().await?;
        Ok(volt)
    }

    async fn launch(
        db: &TestDb,
        storage: &std::path::Path,
        tweaks: Tweaks,
    ) -> anyhow::Result<(
        Stack,
        String,
        JoinHandle<()>,
        Arc<volt_http::admission::Admission>,
    )> {
        let stack = Stack::start(StackConfig {
            pg: PgConfig::parse(&db.url())?,
            stream_id: db.stream_id().to_string(),
            storage_dir: storage.to_path_buf(),
            max_concurrent_snapshots: 4,
            chunk_bytes: 10 * 1024 * 1024,
            reconcile_period: Duration::from_millis(500),
            flush_stall_grace: Duration::from_secs(60),
            flush_interval: tweaks.flush_interval.unwrap_or(Duration::from_millis(500)),
            max_shapes: tweaks.max_shapes,
            max_shape_cache_mailbox: tweaks.max_shape_cache_mailbox.unwrap_or(100_000),
            coalesce_creates: tweaks.coalesce_creates.unwrap_or(true),
        })
        .await?;
        let admission = Arc::new(volt_http::admission::Admission::new(
            tweaks.max_concurrent.unwrap_or_default(),
            tweaks.initial_queue.unwrap_or_default(),
        ));
        let app = volt_http::router_with_admission(
            Arc::clone(&stack.shared),
            HttpConfig {
                secret: tweaks.secret,
                long_poll_timeout: tweaks.long_poll.unwrap_or(Duration::from_millis(1500)),
                stack_ready_timeout: Duration::from_secs(1),
                allow_delete: true,
                out_of_bounds_wait: Duration::from_millis(300),
                sse_duration: Duration::from_secs(3),
                sse_keepalive: Duration::from_millis(300),
                ..HttpConfig::default()
            },
            admission.clone(),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok((stack, base, server, admission))
    }

    /// Stop the stack cleanly and start a new one on the same storage and database, as
    /// a restarted process would.
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.stop_stack().await;
        self.start_stack().await
    }

    /// Stop the stack and the HTTP server, keeping the database and storage.
    pub async fn stop_stack(&mut self) {
        self.server.abort();
        if let Some(stack) = self.stack.take() {
            stack.stop().await;
        }
    }

    /// Start a stack again on the same database and storage, and wait until active.
    pub async fn start_stack(&mut self) -> anyhow::Result<()> {
        let (stack, base, server, admission) = Self::launch(
            &self.db,
            &self
                .tweaks
                .storage
                .clone()
                .unwrap_or_else(|| self.storage.path().to_path_buf()),
            self.tweaks.clone(),
        )
        .await?;
        self.stack = Some(stack);
        self.base = base;
        self.server = server;
        self.admission = admission;
        self.wait_active().await
    }

    pub fn shared(&self) -> &Arc<volt_stack::Shared> {
        &self.stack.as_ref().expect("stack running").shared
    }

    pub async fn wait_active(&self) -> anyhow::Result<()> {
        if !self.shared().status.wait_active(DEADLINE).await {
            bail!("volt did not become active within {DEADLINE:?}");
        }
        Ok(())
    }

    pub async fn get(&self, path_and_query: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .get(format!("{}{}", self.base, path_and_query))
            .timeout(DEADLINE)
            .send()
            .await?)
    }

    pub async fn post(&self, path_and_query: &str) -> anyhow::Result<reqwest::Response> {
        Ok(self
            .http
            .post(format!("{}{}", self.base, path_and_query))
            .timeout(DEADLINE)
            .send()
            .await?)
    }

    /// Stop the stack and drop the database.
    pub async fn stop(mut self) {
        self.server.abort();
        if let Some(stack) = self.stack.take() {
            stack.stop().await;
        }
        self.db.cleanup().await;
    }
}

/// One shape response.
pub struct ShapeResponse {
    pub status: u16,
    pub handle: Option<String>,
    pub offset: Option<String>,
    pub up_to_date: bool,
    /// The `electric-schema` header, parsed.
    pub schema: Option<Value>,
    pub body: Value,
}

/// Something serving the Shape API: an in-process stack or a volt process.
pub trait Server {
    fn base(&self) -> &str;
    fn http(&self) -> &reqwest::Client;
}

impl Server for TestVolt {
    fn base(&self) -> &str {
        &self.base
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

pub async fn fetch(server: &impl Server, query: &str) -> anyhow::Result<ShapeResponse> {
    let res = server
        .http()
        .get(format!("{}/v1/shape?{query}", server.base()))
        .timeout(DEADLINE)
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
    let up_to_date = res.headers().contains_key("electric-up-to-date");
    let schema = header("electric-schema")
        .map(|s| serde_json::from_str(&s))
        .transpose()
        .context("electric-schema is not JSON")?;
    let text = res.text().await?;
    let body = serde_json::from_str(&text).with_context(|| format!("body is not JSON: {text}"))?;
    Ok(ShapeResponse {
        status,
        handle,
        offset,
        up_to_date,
        schema,
        body,
    })
}

/// Follows one shape like the official client: snapshot, catch-up, then long-polls;
/// keeps the materialised rows and every change message in arrival order.
pub struct Follower {
    pub params: String,
    pub handle: Option<String>,
    pub offset: String,
    pub rows: BTreeMap<String, Map<String, Value>>,
    pub changes: Vec<Value>,
    pub refetches: usize,
}

impl Follower {
    /// The LSN in the headers of the `i`th change received (0 if it has none).
    pub fn change_lsn(&self, i: usize) -> anyhow::Result<u64> {
        let lsn = self.changes[i]["headers"]["lsn"].as_str().unwrap_or("0");
        Ok(lsn.parse()?)
    }

    pub fn new(params: &str) -> Follower {
        Follower {
            params: params.to_string(),
            handle: None,
            offset: "-1".into(),
            rows: BTreeMap::new(),
            changes: Vec::new(),
            refetches: 0,
        }
    }

    /// One request; returns whether the response ended up to date.
    pub async fn poll(&mut self, volt: &impl Server, live: bool) -> anyhow::Result<bool> {
        let mut q = format!("{}&offset={}", self.params, self.offset);
        if let Some(h) = &self.handle {
            q.push_str(&format!("&handle={h}"));
        }
        if live && self.offset != "-1" {
            q.push_str("&live=true");
        }
        let res = fetch(volt, &q).await?;
        match res.status {
            200 => {}
            409 => {
                self.refetches += 1;
                self.handle = res.handle;
                self.offset = "-1".into();
                self.rows.clear();
                return Ok(false);
            }
            s => bail!("unexpected status {s}: {}", res.body),
        }
        self.handle = res.handle;
        self.offset = res.offset.context("200 without electric-offset")?;
        let items = res.body.as_array().context("body is not an array")?;
        for item in items {
            let headers = &item["headers"];
            if headers.get("control").is_some() {
                continue;
            }
            let key = item["key"]
                .as_str()
                .context("message without key")?
                .to_string();
            let value = item["value"].as_object().cloned().unwrap_or_default();
            match headers["operation"].as_str() {
                Some("insert") => {
                    self.rows.insert(key, value);
                }
                Some("update") => {
                    let row = self.rows.entry(key).or_default();
                    row.extend(value);
                }
                Some("delete") => {
                    self.rows.remove(&key);
                }
                other => bail!("unknown operation {other:?}"),
            }
            if headers.get("lsn").is_some() {
                self.changes.push(item.clone());
            }
        }
        Ok(res.up_to_date)
    }

    /// Requests until up to date.
    pub async fn catch_up(&mut self, volt: &impl Server) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !self.poll(volt, false).await? {
            if tokio::time::Instant::now() > deadline {
                bail!("shape did not catch up within {DEADLINE:?}");
            }
        }
        Ok(())
    }

    /// Long-polls until `done` holds for the materialised rows.
    pub async fn until(
        &mut self,
        volt: &impl Server,
        what: &str,
        done: impl Fn(&Follower) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        while !done(self) {
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{what}: not reached within {DEADLINE:?}; rows: {:?}",
                    self.rows
                );
            }
            self.poll(volt, true).await?;
        }
        Ok(())
    }

    /// A column of every row, sorted, for comparisons.
    pub fn column(&self, name: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .rows
            .values()
            .map(|r| {
                r.get(name)
                    .and_then(Value::as_str)
                    .unwrap_or("NULL")
                    .to_string()
            })
            .collect();
        v.sort();
        v
    }
}

/// Poll a condition with a deadline (never a fixed sleep).
pub async fn eventually<F, Fut>(what: &str, mut check: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<bool>>,
{
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut delay = Duration::from_millis(10);
    loop {
        if check().await? {
            return Ok(());
        }
        if tokio::time::Instant::now() > deadline {
            bail!("{what}: not true within {DEADLINE:?}");
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(200));
    }
}

/// How many times Postgres ran a snapshot query on `table` (pg_stat_statements survives
/// volt's restarts, unlike any counter inside volt).
pub async fn snapshot_queries(volt: &TestVolt, table: &str) -> anyhow::Result<i64> {
    snapshot_queries_in(&volt.db, table).await
}

pub async fn snapshot_queries_in(db: &TestDb, table: &str) -> anyhow::Result<i64> {
    let client = db.client().await?;
    client
        .batch_execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")
        .await?;
    // Initial snapshots run as COPY (SELECT ...) or, under a herd, as a SELECT inside one
    // query; subset snapshots as SELECT.
    let pattern = format!("SELECT %FROM \"public\".\"{table}\"%");
    let copy = format!("COPY (SELECT %FROM \"public\".\"{table}\"%");
    let row = client
        .query_one(
            "SELECT coalesce(sum(calls), 0)::int8 FROM pg_stat_statements s \
             JOIN pg_database d ON d.oid = s.dbid \
             WHERE d.datname = current_database() AND (s.query LIKE $1 OR s.query LIKE $2)",
            &[&pattern, &copy],
        )
        .await?;
    Ok(row.get(0))
}

pub fn volt_bin() -> PathBuf {
    if let Ok(bin) = std::env::var("VOLT_BIN") {
        return bin.into();
    }
    let target = std::env::var("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../target")));
    target.join("debug").join("volt")
}

/// A volt process, as users run it.
pub struct VoltProcess {
    pub child: tokio::process::Child,
    base: String,
    http: reqwest::Client,
}

impl Server for VoltProcess {
    fn base(&self) -> &str {
        &self.base
    }
    fn http(&self) -> &reqwest::Client {
        &self.http
    }
}

impl VoltProcess {
    /// Start volt and wait until it is active.
    pub async fn start(db: &TestDb, storage: &std::path::Path, port: u16) -> anyhow::Result<Self> {
        let volt = Self::spawn(db, storage, port)?;
        volt.wait_health("active", storage).await?;
        Ok(volt)
    }

    /// Start volt without waiting for it.
    pub fn spawn(db: &TestDb, storage: &std::path::Path, port: u16) -> anyhow::Result<Self> {
        let bin = volt_bin();
        anyhow::ensure!(
            bin.exists(),
            "volt binary not found at {} (cargo build first)",
            bin.display()
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(storage.join("volt.log"))?;
        let child = tokio::process::Command::new(bin)
            .env("DATABASE_URL", db.url())
            .env("ELECTRIC_PORT", port.to_string())
            .env("ELECTRIC_STORAGE_DIR", storage)
            .env("ELECTRIC_REPLICATION_STREAM_ID", db.stream_id())
            .env("ELECTRIC_INSECURE", "true")
            .env("ELECTRIC_LONG_POLL_TIMEOUT", "1000")
            .env("NO_COLOR", "1")
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()?;
        Ok(VoltProcess {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::new(),
        })
    }

    /// Poll `/v1/health` until it reports `status` (`active`, `waiting`, `starting`).
    pub async fn wait_health(&self, status: &str, storage: &std::path::Path) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + DEADLINE;
        loop {
            let health = self
                .http
                .get(format!("{}/v1/health", self.base))
                .timeout(Duration::from_secs(2))
                .send()
                .await;
            if let Ok(res) = health
                && let Ok(body) = res.json::<serde_json::Value>().await
                && body["status"] == status
            {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                anyhow::bail!(
                    "volt did not report {status}; see {}",
                    storage.join("volt.log").display()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// SIGTERM, then wait (bounded) for the process to exit.
    pub async fn terminate(mut self) -> anyhow::Result<std::process::ExitStatus> {
        let pid = self.child.id().context("volt is not running")?.to_string();
        let sent = tokio::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .await?;
        anyhow::ensure!(sent.success(), "kill -TERM {pid} failed");
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("volt did not exit within 30 s of SIGTERM"))?
            .map_err(Into::into)
    }

    pub async fn kill_9(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

pub use volt_pg::cluster::free_port;

impl VoltProcess {
    /// Peak resident memory of the process so far, in KiB (`VmHWM`).
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let pid = self.child.id()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }
}
