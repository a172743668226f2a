//! `volt-test-cluster [--] <command> [args...]`
//!
//! Starts one throwaway Postgres cluster in a fresh tempdir, runs the command with
//! `VOLT_TEST_DATABASE_URL` pointing at the cluster's `postgres` database (and, for tests that
//! restart the server, `VOLT_TEST_PG_DATA_DIR`, `VOLT_TEST_PG_CTL`, `VOLT_TEST_PG_LOG_FILE` and,
//! when the server runs as another OS user, `VOLT_TEST_PG_OS_USER`), stops the cluster
//! (also when the command fails or we get SIGINT/SIGTERM/SIGHUP, which are forwarded to the
//! command first), removes the tempdir, and exits with the command's exit code.

use std::ffi::OsString;
use std::process::{ExitCode, ExitStatus};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};
use volt_pg::cluster::{ClusterOptions, LocalCluster, PgBinaries};
use volt_test_support::{
    DATABASE_URL_ENV, PG_CTL_ENV, PG_DATA_DIR_ENV, PG_LOG_FILE_ENV, PG_OS_USER_ENV,
};

const NAME: &str = "volt-test-cluster";
/// After this many forwarded signals the command is killed outright.
const SIGNALS_BEFORE_KILL: usize = 3;

fn main() -> ExitCode {
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    if args.is_empty() || args[0] == "-h" || args[0] == "--help" {
        eprintln!("usage: {NAME} [--] <command> [args...]");
        eprintln!(
            "Runs <command> with {DATABASE_URL_ENV} set to a throwaway Postgres cluster, \
             then stops the cluster and exits with the command's exit code."
        );
        return ExitCode::from(2);
    }
    match run(&args[0], &args[1..]) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("{NAME}: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(program: &OsString, args: &[OsString]) -> anyhow::Result<u8> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?;
    // Listen for signals before starting Postgres, so that a signal during start-up does not
    // kill us and leave the server running; it is forwarded once the command runs.
    let signals = {
        let _guard = runtime.enter();
        Signals::new()?
    };

    let tempdir = tempfile::Builder::new()
        .prefix("volt-test-")
        .tempdir_in("/tmp")
        .context("creating a tempdir under /tmp")?;
    let mut options = ClusterOptions::new(tempdir.path());
    options.max_replication_slots = 200;
    options.max_wal_senders = 200;
    // Thrown away after the run: durability across OS crashes buys nothing, and fsync makes
    // initdb and every CREATE DATABASE slow on a busy CI disk.
    options.fsync = false;
    options = options.setting("max_connections", "300");
    let binaries = PgBinaries::find()?;
    if binaries.has_library("pg_stat_statements") {
        options = options.setting("shared_preload_libraries", "pg_stat_statements");
    } else {
        eprintln!(
            "{NAME}: warning: pg_stat_statements is not installed in {}; starting without it",
            binaries
                .pkglibdir()
                .map_or_else(|| "(no pkglibdir)".to_owned(), |d| d.display().to_string())
        );
    }
    // Dropping the cluster stops the server, on every path out of this function.
    let mut cluster = LocalCluster::start(options)?;
    let url = cluster.url("postgres");
    eprintln!(
        "{NAME}: Postgres is running at {url} (data dir {})",
        cluster.data_dir().display()
    );

    let mut env = vec![
        (DATABASE_URL_ENV, OsString::from(&url)),
        (PG_DATA_DIR_ENV, cluster.data_dir().into()),
        (PG_CTL_ENV, cluster.binaries().pg_ctl.clone().into()),
        (PG_LOG_FILE_ENV, cluster.log_file().into()),
    ];
    if let Some(user) = cluster.server_os_user() {
        env.push((PG_OS_USER_ENV, user.into()));
    }
    let status = runtime.block_on(run_command(program, args, &env, signals));

    if let Err(e) = cluster.stop() {
        eprintln!("{NAME}: stopping Postgres: {e}");
    }
    drop(cluster);
    if let Err(e) = tempdir.close() {
        eprintln!("{NAME}: removing the tempdir: {e}");
    }
    Ok(exit_code(status?))
}

async fn run_command(
    program: &OsString,
    args: &[OsString],
    env: &[(&str, OsString)],
    mut signals: Signals,
) -> anyhow::Result<ExitStatus> {
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .spawn()
        .with_context(|| format!("starting {}", program.to_string_lossy()))?;
    let mut forwarded = 0;
    loop {
        tokio::select! {
            status = child.wait() => {
                return status.with_context(|| format!("waiting for {}", program.to_string_lossy()));
            }
            signal = signals.recv() => {
                forwarded += 1;
                if forwarded >= SIGNALS_BEFORE_KILL {
                    eprintln!("{NAME}: signalled {forwarded} times; killing the command");
                    // Fails only if it has already exited, which `wait` then reports.
                    let _ = child.start_kill();
                } else if let Some(pid) = child.id() {
                    eprintln!("{NAME}: forwarding signal {signal} to the command, then stopping Postgres");
                    forward_signal(pid, signal);
                }
            }
        }
    }
}

/// The signals we forward.
struct Signals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    hangup: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> anyhow::Result<Signals> {
        let listen = |kind: SignalKind| signal(kind).context("installing a signal handler");
        Ok(Signals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    /// The next signal received (its number).
    async fn recv(&mut self) -> i32 {
        tokio::select! {
            _ = self.interrupt.recv() => libc::SIGINT,
            _ = self.terminate.recv() => libc::SIGTERM,
            _ = self.hangup.recv() => libc::SIGHUP,
        }
    }
}

fn forward_signal(pid: u32, signal: i32) {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child, which
    // we have not reaped yet (`Child::id` returns None once it is reaped).
    let result = unsafe { libc::kill(pid, signal) };
    if result != 0 {
        eprintln!(
            "{NAME}: forwarding signal {signal}: {}",
            std::io::Error::last_os_error()
        );
    }
}

/// The command's exit code, or 128 + signal number if a signal ended it (as shells do).
fn exit_code(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => u8::try_from(code).unwrap_or(1),
        (None, Some(signal)) => u8::try_from(128 + signal).unwrap_or(1),
        (None, None) => 1,
    }
}
