//! Load-generator pieces shared by S2, S3 and S7: a Shape API client that backs off on
//! 503 as `@electric-sql/client` does, percentiles, and samplers that watch volt and
//! Postgres while a scenario runs.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use tokio::sync::watch;

use crate::harness::Volt;

pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

pub fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// What one GET came back with, after the 503s it was told to retry.
pub struct Answer {
    pub res: reqwest::Response,
    /// 503s with `Retry-After` that were retried.
    pub retried: u32,
}

/// A GET that retries 503 + `Retry-After` like `@electric-sql/client` 1.5: it waits
/// `max(retry-after, random(0, backoff))`, the backoff starting at 1 s and doubling to
/// 32 s. Any other status is returned; a 503 without `Retry-After` is an error.
pub async fn get_retrying(http: &reqwest::Client, url: &str) -> anyhow::Result<Answer> {
    let mut backoff = Duration::from_secs(1);
    let mut retried = 0;
    loop {
        let res = http.get(url).send().await?;
        if res.status() != 503 {
            return Ok(Answer { res, retried });
        }
        let server_min = res
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<f64>().ok())
            .map(Duration::from_secs_f64)
            .context("503 without Retry-After")?;
        let _ = res.bytes().await;
        let jitter = backoff.mul_f64(rand::random::<f64>());
        tokio::time::sleep(server_min.max(jitter)).await;
        backoff = (backoff * 2).min(Duration::from_secs(32));
        retried += 1;
    }
}

fn header(res: &reqwest::Response, name: &str) -> Option<String> {
    res.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
}

/// Where a client stands in a shape's log.
#[derive(Debug, Clone)]
pub struct Position {
    pub handle: String,
    pub offset: String,
    pub cursor: Option<String>,
}

impl Position {
    /// Move past a 200 response (headers only; the body is the caller's).
    pub fn advance(&mut self, res: &reqwest::Response) {
        if let Some(o) = header(res, "electric-offset") {
            self.offset = o;
        }
        if let Some(h) = header(res, "electric-handle") {
            self.handle = h;
        }
        if let Some(c) = header(res, "electric-cursor") {
            self.cursor = Some(c);
        }
    }

    /// The next request: `{base}/v1/shape?{shape}&handle=..&offset=..[&live=true&cursor=..]`.
    pub fn url(&self, base: &str, shape: &str, live: bool) -> String {
        let mut url = format!(
            "{base}/v1/shape?{shape}&handle={}&offset={}",
            self.handle, self.offset
        );
        if live {
            url.push_str("&live=true");
            if let Some(c) = &self.cursor {
                url.push_str("&cursor=");
                url.push_str(c);
            }
        }
        url
    }
}

pub struct Synced {
    pub pos: Position,
    pub retried: u32,
    pub rows: usize,
}

/// From `offset=-1` to the first up-to-date, as a new client does.
pub async fn sync(http: &reqwest::Client, base: &str, shape: &str) -> anyhow::Result<Synced> {
    let mut url = format!("{base}/v1/shape?{shape}&offset=-1");
    let mut pos = None::<Position>;
    let mut retried = 0;
    let mut rows = 0;
    loop {
        let answer = get_retrying(http, &url).await?;
        retried += answer.retried;
        let res = answer.res;
        if res.status() != 200 {
            bail!("{url}: {}", res.status());
        }
        let p = pos.get_or_insert_with(|| Position {
            handle: String::new(),
            offset: String::new(),
            cursor: None,
        });
        p.advance(&res);
        let body = res.bytes().await?;
        rows += count(&body, b"\"operation\":\"insert\"");
        if memchr::memmem::find(&body, b"\"control\":\"up-to-date\"").is_some() {
            let pos = pos.context("no position")?;
            return Ok(Synced { pos, retried, rows });
        }
        url = p.url(base, shape, false);
    }
}

pub fn count(hay: &[u8], needle: &[u8]) -> usize {
    memchr::memmem::find_iter(hay, needle).count()
}

/// Polls something every `period` until stopped; the samples come back from `stop`.
pub struct Sampler<T> {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Vec<(Duration, T)>>,
}

impl<T: Send + 'static> Sampler<T> {
    pub fn start<F, Fut>(period: Duration, mut probe: F) -> Sampler<T>
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: std::future::Future<Output = Option<T>> + Send,
    {
        let (stop, mut stopped) = watch::channel(false);
        let task = tokio::spawn(async move {
            let started = Instant::now();
            let mut samples = Vec::new();
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let stop = tokio::select! {
                    _ = tick.tick() => false,
                    r = stopped.wait_for(|s| *s) => r.is_ok(),
                };
                if stop {
                    return samples;
                }
                if let Some(v) = probe().await {
                    samples.push((started.elapsed(), v));
                }
            }
        });
        Sampler { stop, task }
    }

    pub async fn stop(self) -> Vec<(Duration, T)> {
        self.stop.send_replace(true);
        self.task.await.unwrap_or_default()
    }
}

/// Sample volt's RSS (KiB).
pub fn rss_sampler(volt: &Volt, period: Duration) -> Sampler<u64> {
    let pid = volt.pid();
    Sampler::start(period, move || async move {
        Some(crate::harness::proc_status(pid, "VmRSS:"))
    })
}

/// Postgres backends per `application_name` on one database, for as long as it runs.
pub fn connection_sampler(client: tokio_postgres::Client, period: Duration) -> Sampler<(i64, i64)> {
    let client = std::sync::Arc::new(client);
    Sampler::start(period, move || {
        let client = client.clone();
        async move {
            let row = client
                .query_one(
                    "SELECT count(*) FILTER (WHERE application_name = 'volt'),
                            count(*) FILTER (WHERE application_name = 'volt_replication')
                       FROM pg_stat_activity WHERE datname = current_database()",
                    &[],
                )
                .await
                .ok()?;
            Some((row.get(0), row.get(1)))
        }
    })
}

/// volt's actor tree (`/v1/admin/tree`).
pub async fn admin_tree(volt: &Volt) -> anyhow::Result<Value> {
    Ok(volt
        .http
        .get(format!("{}/v1/admin/tree", volt.base))
        .send()
        .await?
        .json()
        .await?)
}

/// Restarts summed over volt's actor tree.
pub async fn tree_restarts(volt: &Volt) -> anyhow::Result<u64> {
    let tree = admin_tree(volt).await?;
    fn sum(v: &Value) -> u64 {
        v["restarts"].as_u64().unwrap_or(0)
            + v["children"]
                .as_array()
                .map(|c| c.iter().map(sum).sum())
                .unwrap_or(0)
    }
    Ok(sum(&tree))
}

pub async fn admin_stats(volt: &Volt) -> anyhow::Result<Value> {
    Ok(volt
        .http
        .get(format!("{}/v1/admin/stats", volt.base))
        .send()
        .await?
        .json()
        .await?)
}

/// Wait until volt holds `n` requests for known shapes (parked live requests).
pub async fn wait_parked(volt: &Volt, n: u64, within: Duration) -> anyhow::Result<()> {
    wait_existing_in_use(volt, within, &format!("{n} live requests parked"), |held| {
        held >= n
    })
    .await
}

/// Poll `/v1/admin/stats` until the requests holding `existing` permits (live requests,
/// reads of existing shapes) satisfy `done`, for at most `within`.
pub async fn wait_existing_in_use(
    volt: &Volt,
    within: Duration,
    what: &str,
    done: impl Fn(u64) -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + within;
    loop {
        let stats = admin_stats(volt).await?;
        // The stats request itself is not a shape request: no permit of its own.
        if done(stats["admission"]["existing_in_use"].as_u64().unwrap_or(0)) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("not within {within:?}: {what} ({stats})");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Raise this process's open-file limit to its hard limit (as volt does): thousands of
/// clients (and a baseline server in the same process) need a socket each.
pub fn raise_nofile(needed: u64) -> anyhow::Result<u64> {
    let limit = volt_storage::open_files::raise_descriptor_limit()
        .context("cannot read or raise the open-file limit")?;
    anyhow::ensure!(
        limit >= needed,
        "the open-file limit is {limit} but this scenario needs about {needed}: raise the hard limit (ulimit -Hn)"
    );
    Ok(limit)
}
