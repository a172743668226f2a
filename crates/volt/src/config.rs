//! Configuration from Electric's environment variables (and matching flags).

use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "volt",
    version,
    about = "A Postgres sync service, wire-compatible with ElectricSQL's",
    long_about = "A Postgres sync service, wire-compatible with ElectricSQL's.\n\n\
Point @electric-sql/client at http://<host>:<port>/v1/shape. Settings use Electric's \
environment variable names; each can also be given as a flag."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub settings: Settings,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the sync service against DATABASE_URL (the default).
    Serve,
    /// Run against an embedded throwaway Postgres with a demo table, in insecure mode.
    Dev,
    /// Print the live actor tree of a running volt (its /v1/admin/tree) as indented text.
    Tree {
        /// Base URL of the running volt (default: http://localhost:<ELECTRIC_PORT>).
        #[arg(long)]
        url: Option<String>,
    },
}

#[derive(Debug, Args, Clone)]
pub struct Settings {
    /// Postgres connection URL (needs the REPLICATION privilege and wal_level=logical).
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// HTTP port.
    #[arg(long, env = "ELECTRIC_PORT", default_value_t = 3000)]
    pub port: u16,

    /// Where shape logs are kept.
    #[arg(long, env = "ELECTRIC_STORAGE_DIR", default_value = "./persistent")]
    pub storage_dir: PathBuf,

    /// Secret every Shape API and admin request must carry (`secret=` parameter).
    #[arg(long, env = "ELECTRIC_SECRET", hide_env_values = true)]
    pub secret: Option<String>,

    /// Serve without a secret. Exactly one of ELECTRIC_SECRET and ELECTRIC_INSECURE=true is required.
    #[arg(long, env = "ELECTRIC_INSECURE", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub insecure: bool,

    /// Names the replication slot (electric_slot_<id>) and publication (electric_publication_<id>).
    #[arg(
        long,
        env = "ELECTRIC_REPLICATION_STREAM_ID",
        default_value = "default"
    )]
    pub replication_stream_id: String,

    /// How long a live request waits for changes: milliseconds, or with a ms/s/m suffix.
    #[arg(long, env = "ELECTRIC_LONG_POLL_TIMEOUT", default_value = "20000", value_parser = parse_duration)]
    pub long_poll_timeout: Duration,

    /// Size of shape log chunks, the largest response, in bytes (KB/KiB/MB/MiB suffixes allowed).
    #[arg(long, env = "ELECTRIC_SHAPE_CHUNK_BYTES_THRESHOLD", default_value = "10MiB", value_parser = parse_size)]
    pub chunk_bytes_threshold: usize,

    /// Most shape change logs kept open for appending (the least recently written are
    /// closed first). Default: half of the process's descriptor limit (leaving at least
    /// 1024), at most 16384.
    #[arg(long, env = "VOLT_OPEN_LOG_FILES")]
    pub open_log_files: Option<usize>,

    /// Enable test-only endpoints.
    #[arg(long, env = "ELECTRIC_ENABLE_INTEGRATION_TESTING", value_parser = BoolishValueParser::new(), default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub enable_integration_testing: bool,

    /// How many snapshot queries may run at once.
    #[arg(long, env = "ELECTRIC_DB_POOL_SIZE", default_value_t = 20)]
    pub db_pool_size: usize,

    /// Most shapes kept; past it the least recently read are removed (unlimited when unset).
    #[arg(long, env = "ELECTRIC_MAX_SHAPES")]
    pub max_shapes: Option<usize>,

    /// How often shapes are checked against the live schema (catches DDL with no later
    /// write, and DROP TABLE) and unneeded tables leave the publication.
    #[arg(long, env = "ELECTRIC_TWEAKS_SCHEMA_RECONCILER_PERIOD", default_value = "60s", value_parser = parse_duration)]
    pub schema_reconciler_period: Duration,

    /// A shape that cannot store a transaction for this long is removed, so it cannot
    /// hold the replication slot back.
    #[arg(long, env = "ELECTRIC_FLUSH_STALL_GRACE_PERIOD", default_value = "1m", value_parser = parse_duration)]
    pub flush_stall_grace_period: Duration,

    /// Flush rounds (which write out and sync what shapes committed, then acknowledge it
    /// to Postgres) start at most this often: a shape changed by many transactions
    /// between two rounds is written once. 0: back to back.
    #[arg(long, env = "VOLT_FLUSH_INTERVAL", default_value = "500ms", value_parser = parse_duration)]
    pub flush_interval: Duration,

    /// How long one SSE (`live_sse`) response stays open before the client reconnects.
    #[arg(long, env = "ELECTRIC_SSE_TIMEOUT", default_value = "60s", value_parser = parse_duration)]
    pub sse_timeout: Duration,

    /// Silence after which an SSE response sends a keep-alive comment.
    #[arg(long, env = "ELECTRIC_SSE_KEEPALIVE_INTERVAL", default_value = "21s", value_parser = parse_duration)]
    pub sse_keepalive_interval: Duration,

    /// How long a request for an offset past the end of a shape's log waits for the log to
    /// reach it before answering 400 "out of bounds".
    #[arg(long, env = "ELECTRIC_OUT_OF_BOUNDS_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub out_of_bounds_timeout: Duration,

    /// Admission buckets, Electric's JSON: requests creating or validating shapes
    /// (`initial`) and requests for known shapes (`existing`) held at once.
    #[arg(long, env = "ELECTRIC_MAX_CONCURRENT_REQUESTS", default_value = r#"{"initial":300,"existing":10000}"#, value_parser = parse_limits)]
    pub max_concurrent_requests: volt_http::admission::Limits,

    /// Requests for new shapes that wait, first come first served, for an `initial`
    /// permit when that bucket is full; beyond them, 503 at once (0: always at once, as
    /// Electric does).
    #[arg(long, env = "VOLT_INITIAL_QUEUE", default_value_t = 1000)]
    pub initial_queue: usize,

    /// How long a waiting request waits for its permit before a 503 + `Retry-After`.
    #[arg(long, env = "VOLT_INITIAL_QUEUE_WAIT", default_value = "3s", value_parser = parse_duration)]
    pub initial_queue_wait: Duration,

    /// Shape creation requests are refused (503) while this many wait for ShapeCache.
    #[arg(
        long,
        env = "ELECTRIC_TWEAKS_SHAPE_CACHE_MAX_MAILBOX",
        default_value_t = 1000
    )]
    pub shape_cache_max_mailbox: usize,

    /// Requests for a shape being created wait for that creation instead of queueing
    /// their own (turn off only to measure the difference).
    #[arg(long, env = "ELECTRIC_TWEAKS_COALESCE_SHAPE_CREATION", value_parser = BoolishValueParser::new(), default_value_t = true)]
    pub coalesce_shape_creation: bool,

    /// How long a graceful shutdown (SIGTERM/SIGINT) may take before volt exits anyway.
    #[arg(long, env = "ELECTRIC_SHUTDOWN_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,

    /// Port for Prometheus metrics at /metrics (off when unset).
    #[arg(long, env = "ELECTRIC_PROMETHEUS_PORT")]
    pub prometheus_port: Option<u16>,

    /// Log format: `human` (default) or `json` (one JSON object per line).
    #[arg(long, env = "ELECTRIC_LOG_FORMAT", default_value = "human")]
    pub log_format: String,

    /// Log level: error, warning, info or debug (RUST_LOG, if set, wins).
    #[arg(long, env = "ELECTRIC_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
}

/// A setting that can never work: reported in one line, exit code 2.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl Settings {
    pub fn validate(&self, dev: bool) -> Result<(), ConfigError> {
        if !dev {
            match (&self.secret, self.insecure) {
                (Some(_), true) => {
                    return Err(ConfigError(
                        "set either ELECTRIC_SECRET or ELECTRIC_INSECURE=true, not both".into(),
                    ));
                }
                (None, false) => {
                    return Err(ConfigError(
                        "ELECTRIC_SECRET is required (or set ELECTRIC_INSECURE=true to run without one)".into(),
                    ));
                }
                _ => {}
            }
            match self.database_url.as_deref() {
                None | Some("") => return Err(ConfigError("DATABASE_URL is required".into())),
                Some(url) => {
                    volt_pg::PgConfig::parse(url).map_err(|e| ConfigError(e.to_string()))?;
                }
            }
        }
        if matches!(&self.secret, Some(s) if s.is_empty()) {
            return Err(ConfigError("ELECTRIC_SECRET must not be empty".into()));
        }
        let id = &self.replication_stream_id;
        if id.is_empty()
            || id.len() > 40
            || !id
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        {
            return Err(ConfigError(format!(
                "ELECTRIC_REPLICATION_STREAM_ID must be 1-40 characters of a-z, 0-9 and _ (got {id:?})"
            )));
        }
        if !["error", "warn", "warning", "info", "debug", "trace"]
            .contains(&self.log_level.as_str())
        {
            return Err(ConfigError(format!(
                "ELECTRIC_LOG_LEVEL must be error, warning, info or debug (got {:?})",
                self.log_level
            )));
        }
        if !["human", "json"].contains(&self.log_format.as_str()) {
            return Err(ConfigError(format!(
                "ELECTRIC_LOG_FORMAT must be human or json (got {:?})",
                self.log_format
            )));
        }
        if self.schema_reconciler_period.is_zero() || self.flush_stall_grace_period.is_zero() {
            return Err(ConfigError(
                "ELECTRIC_TWEAKS_SCHEMA_RECONCILER_PERIOD and ELECTRIC_FLUSH_STALL_GRACE_PERIOD must be positive".into(),
            ));
        }
        if self.max_shapes == Some(0) {
            return Err(ConfigError("ELECTRIC_MAX_SHAPES must be at least 1".into()));
        }
        for (name, value) in [
            ("ELECTRIC_LONG_POLL_TIMEOUT", self.long_poll_timeout),
            ("ELECTRIC_SSE_TIMEOUT", self.sse_timeout),
            (
                "ELECTRIC_SSE_KEEPALIVE_INTERVAL",
                self.sse_keepalive_interval,
            ),
            ("VOLT_INITIAL_QUEUE_WAIT", self.initial_queue_wait),
        ] {
            if value.is_zero() {
                return Err(ConfigError(format!("{name} must be positive")));
            }
        }
        Ok(())
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000)
    } else {
        (s, 1)
    };
    let n: u64 = num
        .trim()
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (milliseconds, or with a ms/s/m suffix)"))?;
    Ok(Duration::from_millis(n.saturating_mul(mult)))
}

pub fn parse_size(s: &str) -> Result<usize, String> {
    let s = s.trim();
    let units: [(&str, usize); 6] = [
        ("KiB", 1024),
        ("MiB", 1024 * 1024),
        ("GiB", 1024 * 1024 * 1024),
        ("KB", 1000),
        ("MB", 1_000_000),
        ("GB", 1_000_000_000),
    ];
    let (num, mult) = units
        .iter()
        .find_map(|(u, m)| s.strip_suffix(u).map(|n| (n, *m)))
        .unwrap_or((s, 1));
    let n: usize = num.trim().parse().map_err(|_| {
        format!("{s:?} is not a size (bytes, or with a KB/KiB/MB/MiB/GB/GiB suffix)")
    })?;
    if n == 0 {
        return Err("size must be positive".into());
    }
    Ok(n.saturating_mul(mult))
}

fn parse_limits(text: &str) -> Result<volt_http::admission::Limits, String> {
    let limits: volt_http::admission::Limits = serde_json::from_str(text)
        .map_err(|e| format!("expected JSON like {{\"initial\":300,\"existing\":10000}} ({e})"))?;
    if limits.initial == 0 || limits.existing == 0 {
        return Err("both limits must be at least 1".into());
    }
    Ok(limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_electric_suffixes() {
        assert_eq!(parse_duration("20000"), Ok(Duration::from_secs(20)));
        assert_eq!(parse_duration("3s"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn sizes_accept_electric_suffixes() {
        assert_eq!(parse_size("10MiB"), Ok(10 * 1024 * 1024));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("2KB"), Ok(2000));
        assert!(parse_size("big").is_err());
    }
}
