//! The volt binary: configuration, logging, the stack and the HTTP server.

mod config;
mod dev;
mod signals;
mod tree;

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;
use volt_http::HttpConfig;
use volt_pg::PgConfig;
use volt_stack::{Stack, StackConfig};

use crate::config::{Cli, Command, Settings};
use crate::signals::Signals;

/// jemalloc: freed memory goes back to the OS after a large transaction, where glibc's
/// per-thread arenas kept hundreds of MiB (S7 in BENCHMARKS.md).
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Tree { url }) = &cli.command {
        let url = url
            .clone()
            .unwrap_or_else(|| format!("http://localhost:{}", cli.settings.port));
        return match runtime() {
            Ok(rt) => rt.block_on(tree::print(&url, cli.settings.secret.as_deref())),
            Err(code) => code,
        };
    }
    let dev = matches!(cli.command, Some(Command::Dev));
    if let Err(e) = cli.settings.validate(dev) {
        eprintln!("volt: {}", e.0);
        return ExitCode::from(2);
    }
    init_tracing(&cli.settings.log_level, &cli.settings.log_format);
    let runtime = match runtime() {
        Ok(r) => r,
        Err(code) => return code,
    };
    let result = runtime.block_on(async move {
        let signals = Signals::install().context("cannot install the signal handlers")?;
        // A second signal ends the process at once, whatever it is doing (what was
        // acknowledged to Postgres is on disk either way), except while `volt dev`'s
        // Postgres starts: it could not be stopped yet, and would be left running.
        let (postgres_starting, starting) = tokio::sync::watch::channel(false);
        let second = signals.received(2);
        let _second = volt_stack::task::OwnedTask::spawn(async move {
            second.await;
            let mut starting = starting;
            if *starting.borrow() {
                eprintln!("volt: second signal: exiting once the embedded Postgres has started, to stop it");
            }
            let _ = starting.wait_for(|s| !*s).await;
            eprintln!("volt: second signal: exiting at once");
            exit_at_once(130);
        });
        if dev {
            run_dev(cli.settings, &signals, postgres_starting).await
        } else {
            serve(cli.settings, &signals).await
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e:#}");
            eprintln!("volt: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("volt: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn init_tracing(level: &str, format: &str) {
    let level = if level == "warning" { "warn" } else { level };
    let filter = EnvFilter::try_from_env("RUST_LOG")
        .unwrap_or_else(|_| EnvFilter::new(format!("{level},ractor=warn")));
    let fmt = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "json" {
        fmt.json().with_current_span(true).init();
    } else {
        fmt.init();
    }
}

async fn run_dev(
    mut settings: Settings,
    signals: &Signals,
    postgres_starting: tokio::sync::watch::Sender<bool>,
) -> anyhow::Result<()> {
    let dir = settings.storage_dir.clone();
    postgres_starting.send_replace(true);
    // Not cancellable: a signal meanwhile is counted, and the server is stopped below.
    let mut start = tokio::task::spawn_blocking(move || dev::start_cluster(&dir));
    let interrupted = signals.received(1);
    let started = tokio::select! {
        started = &mut start => started,
        () = interrupted => {
            eprintln!("volt: interrupted: stopping the embedded Postgres once it has started");
            start.await
        }
    };
    let cluster = match started.context("embedded Postgres start-up panicked")? {
        Ok(cluster) => cluster,
        Err(e) => {
            postgres_starting.send_replace(false);
            if signals.any() {
                tracing::info!(error = %e, "the embedded Postgres did not start: interrupted");
                return Ok(());
            }
            return Err(e);
        }
    };
    let url = cluster.url("postgres");
    let stopper = cluster.stopper();
    let _ = ON_EXIT_AT_ONCE.set(Box::new(move || {
        eprintln!("volt: stopping the embedded Postgres (immediate)");
        if let Err(e) = stopper.stop_now() {
            eprintln!("volt: could not stop the embedded Postgres: {e}");
        }
    }));
    postgres_starting.send_replace(false);
    let stop = |mut cluster: volt_pg::cluster::LocalCluster| async move {
        tokio::task::spawn_blocking(move || cluster.stop())
            .await
            .context("embedded Postgres shutdown panicked")?
            .context("could not stop the embedded Postgres")
    };
    let interrupted = signals.received(1);
    tokio::select! {
        created = dev::create_demo_table(&url) => created?,
        () = interrupted => {
            tracing::info!("interrupted during start-up: stopping the embedded Postgres");
            return stop(cluster).await;
        }
    }
    tracing::warn!(
        "volt dev runs in insecure mode: no secret is required. Never use it in production."
    );
    println!();
    println!("  volt dev is starting");
    println!("  Postgres:   {url}   (demo table: items)");
    println!("  Shape API:  http://localhost:{}/v1/shape", settings.port);
    println!(
        "  Try:        curl 'http://localhost:{}/v1/shape?table=items&offset=-1'",
        settings.port
    );
    println!("  Then:       psql '{url}' -c \"INSERT INTO items (title) VALUES ('hello')\"");
    println!();
    settings.database_url = Some(url);
    settings.secret = None;
    settings.insecure = true;
    let result = serve(settings, signals).await;
    stop(cluster).await?;
    result
}

async fn serve(settings: Settings, signals: &Signals) -> anyhow::Result<()> {
    let url = settings
        .database_url
        .as_deref()
        .context("DATABASE_URL is required")?;
    let pg = PgConfig::parse(url)?;
    if settings.insecure {
        tracing::warn!(
            "ELECTRIC_INSECURE=true: the Shape API and admin endpoints accept requests without a secret"
        );
    }
    if let Some(port) = settings.prometheus_port {
        metrics_exporter_prometheus::PrometheusBuilder::new()
            .with_http_listener(SocketAddr::from(([0, 0, 0, 0], port)))
            .install()
            .context("cannot start the Prometheus endpoint")?;
    }
    let limit = match volt_storage::open_files::raise_descriptor_limit() {
        Ok(limit) => limit,
        Err(e) => {
            tracing::warn!(error = %e, "could not raise the file descriptor limit");
            volt_storage::open_files::descriptor_limit()
        }
    };
    let open_logs = volt_storage::open_files::change_logs();
    open_logs.set_capacity(match settings.open_log_files {
        Some(n) => {
            if n as u64 >= limit {
                tracing::warn!(
                    VOLT_OPEN_LOG_FILES = n,
                    limit,
                    "VOLT_OPEN_LOG_FILES is not below the file descriptor limit: connections may be refused for want of descriptors"
                );
            }
            n
        }
        None => volt_storage::open_files::capacity_for(limit),
    });
    tracing::debug!(
        limit,
        capacity = open_logs.capacity(),
        "file descriptor limit; change logs kept open for appending"
    );
    let stack_config = StackConfig {
        pg,
        stream_id: settings.replication_stream_id.clone(),
        storage_dir: settings.storage_dir.clone(),
        max_concurrent_snapshots: settings.db_pool_size,
        chunk_bytes: settings.chunk_bytes_threshold as u64,
        reconcile_period: settings.schema_reconciler_period,
        flush_stall_grace: settings.flush_stall_grace_period,
        flush_interval: settings.flush_interval,
        max_shapes: settings.max_shapes,
        max_shape_cache_mailbox: settings.shape_cache_max_mailbox,
        coalesce_creates: settings.coalesce_shape_creation,
    };
    let slot = stack_config.slot_name();
    let publication = stack_config.publication_name();
    let mut stack = Stack::start(stack_config).await?;
    // Held until serve returns; dropping it stops the sampling.
    let _stats = settings.prometheus_port.map(|_| {
        volt_stack::stats::sampler(stack.shared.clone(), std::time::Duration::from_secs(1))
    });
    let (shutdown_tx, shutdown_rx) = tokio::sync::watch::channel(false);
    let app = volt_http::router(
        Arc::clone(&stack.shared),
        HttpConfig {
            secret: settings.secret.clone(),
            long_poll_timeout: settings.long_poll_timeout,
            shutdown: Some(shutdown_rx),
            allow_delete: settings.enable_integration_testing,
            out_of_bounds_wait: settings.out_of_bounds_timeout,
            sse_duration: settings.sse_timeout,
            sse_keepalive: settings.sse_keepalive_interval,
            max_concurrent: settings.max_concurrent_requests,
            initial_queue: volt_http::admission::Queue {
                size: settings.initial_queue,
                wait: settings.initial_queue_wait,
            },
            ..HttpConfig::default()
        },
    );
    let addr = SocketAddr::from(([0, 0, 0, 0], settings.port));
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on port {}", settings.port))?;
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        port = settings.port,
        storage_dir = %settings.storage_dir.display(),
        %slot,
        %publication,
        "volt listening on http://{}",
        listener.local_addr().unwrap_or(addr)
    );
    let mut signalled = shutdown_tx.subscribe();
    // A signal during the start-up (counted since the process began) shuts down as
    // soon as the server is up.
    let first = signals.received(1);
    let server = axum::serve(listener, app).with_graceful_shutdown(async move {
        first.await;
        tracing::info!("shutdown requested: answering parked requests, then stopping");
        // Parked long-polls answer now instead of holding the shutdown.
        shutdown_tx.send_replace(true);
    });
    // Once a shutdown starts, it is bounded: the timeout (or a second signal, see
    // `main`) ends the process at once.
    let timeout = settings.shutdown_timeout;
    let _guard = volt_stack::task::OwnedTask::spawn(async move {
        let _ = signalled.wait_for(|s| *s).await;
        tokio::time::sleep(timeout).await;
        eprintln!("volt: shutdown took longer than {timeout:?}: exiting");
        exit_at_once(1);
    });
    tokio::select! {
        res = server => res.context("HTTP server failed")?,
        () = stack.wait() => anyhow::bail!("the supervision tree gave up; see the errors above"),
    }
    tracing::info!("shutting down");
    stack.stop().await;
    tracing::info!("stopped");
    Ok(())
}

/// Run before an exit that skips the orderly shutdown: `volt dev` stops its embedded
/// Postgres, which `pg_ctl` detached and which would otherwise outlive it.
static ON_EXIT_AT_ONCE: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>> =
    std::sync::OnceLock::new();

fn exit_at_once(code: i32) -> ! {
    if let Some(hook) = ON_EXIT_AT_ONCE.get() {
        hook();
    }
    std::process::exit(code);
}
