//! A throwaway (or embedded) Postgres cluster started from the installed server binaries.
//!
//! Used by `volt dev` (a persistent data dir that is reused across restarts, so the system
//! identifier stays the same) and by the test support crate (a fresh tempdir per test run).
//!
//! The cluster runs as the current user, or, when the current user is root (CI machines), as
//! the OS user `postgres` through `runuser`: `initdb` and `postgres` refuse to run as root.
//!
//! Settings are written on every start into `volt.conf` inside the data dir, which
//! `postgresql.conf` includes at its end; `ALTER SYSTEM` (`postgresql.auto.conf`) still wins.

use std::ffi::OsStr;
use std::fmt::Write as _;
use std::fs;
use std::io::{self, Read, Seek, SeekFrom, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The file (inside the data dir) holding the settings volt writes on every start.
const SETTINGS_FILE: &str = "volt.conf";
const INCLUDE_LINE: &str = "include 'volt.conf'";
/// Identifies the process that started the running server (inside the data dir).
const OWNER_FILE: &str = "volt.owner";
/// Server log (inside the data dir), appended to by every start.
const LOG_FILE: &str = "volt-postgres.log";
/// How many times a start on a randomly picked port is retried when the port was taken.
const PORT_ATTEMPTS: usize = 5;
/// Unix socket paths are limited to 107 bytes; the socket file name is `.s.PGSQL.<port>`.
const MAX_SOCKET_PATH: usize = 107;
const SOCKET_FILE_NAME_MAX: &str = "/.s.PGSQL.65535";
/// Lines of the server log quoted in a start error.
const LOG_TAIL_LINES: usize = 30;

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The data directory. Created if missing; reused (no `initdb`) if it holds a cluster.
    pub data_dir: PathBuf,
    /// TCP port on 127.0.0.1; 0 picks a free port (and retries with another if it is taken).
    pub port: u16,
    pub max_replication_slots: u32,
    pub max_wal_senders: u32,
    /// Durability (default on). Off (for throwaway test clusters only) means `initdb --no-sync`
    /// and `fsync`, `synchronous_commit` and `full_page_writes` off: much faster on busy disks,
    /// still safe across Postgres crashes and restarts, but not across an OS crash.
    pub fsync: bool,
    /// Further `postgresql.conf` settings, written after (so overriding) the ones above, e.g.
    /// `("shared_preload_libraries", "pg_stat_statements")`.
    pub extra_settings: Vec<(String, String)>,
}

impl ClusterOptions {
    /// Defaults: a free port, 100 replication slots, 100 WAL senders, fsync on, no extra
    /// settings.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            port: 0,
            max_replication_slots: 100,
            max_wal_senders: 100,
            fsync: true,
            extra_settings: Vec::new(),
        }
    }

    /// Adds one extra setting (builder style).
    pub fn setting(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.extra_settings.push((name.into(), value.into()));
        self
    }
}

/// What went wrong starting or stopping a [`LocalCluster`]. None of these is fixed by retrying
/// as is, except [`ClusterError::StartFailed`] when the cause was transient (see its log tail).
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error(
        "Postgres server binaries (initdb, pg_ctl, postgres) not found; searched {}; \
         install them with `apt-get install postgresql` (or put their directory on PATH)",
        display_paths(searched)
    )]
    BinariesNotFound { searched: Vec<PathBuf> },

    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "running as root, so Postgres runs as the OS user `postgres`, but that user cannot \
         use {}: {reason}; put the data dir somewhere postgres can reach (e.g. under /tmp or \
         /var/lib), or make the directory traversable (chmod o+x)",
        path.display()
    )]
    DataDirNotAccessible { path: PathBuf, reason: String },

    #[error(
        "the Postgres cluster in {} is in use by process {pid} (another `volt dev`?); \
         stop that process first",
        data_dir.display()
    )]
    DataDirInUse { data_dir: PathBuf, pid: u32 },

    #[error("running as root, but {0}")]
    PostgresUser(String),

    #[error("invalid setting {name:?}: {reason}")]
    InvalidSetting { name: String, reason: String },

    #[error("initdb failed for {} ({status}):\n{stderr}", data_dir.display())]
    InitdbFailed {
        data_dir: PathBuf,
        status: String,
        stderr: String,
    },

    #[error(
        "Postgres failed to start on port {port} (data dir {}); pg_ctl said:\n{pg_ctl_output}\n\
         last lines of the server log {}:\n{log_tail}",
        data_dir.display(),
        log_file.display()
    )]
    StartFailed {
        port: u16,
        data_dir: PathBuf,
        pg_ctl_output: String,
        log_file: PathBuf,
        log_tail: String,
    },

    #[error("pg_ctl stop ({mode}) failed for {}: {output}", data_dir.display())]
    StopFailed {
        mode: &'static str,
        data_dir: PathBuf,
        output: String,
    },
}

fn display_paths(paths: &[PathBuf]) -> String {
    if paths.is_empty() {
        return "nothing (no pg_config, no /usr/lib/postgresql/*/bin, empty PATH)".to_owned();
    }
    paths
        .iter()
        .map(|p| p.display().to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

fn io_err(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// The Postgres server binaries of one installation.
#[derive(Debug, Clone)]
pub struct PgBinaries {
    pub bindir: PathBuf,
    pub initdb: PathBuf,
    pub pg_ctl: PathBuf,
    pub postgres: PathBuf,
}

impl PgBinaries {
    /// Looks in `pg_config --bindir`, then the highest `/usr/lib/postgresql/<version>/bin`,
    /// then every directory on PATH, for a directory holding `initdb`, `pg_ctl` and `postgres`.
    pub fn find() -> Result<PgBinaries, ClusterError> {
        let mut searched = Vec::new();
        let mut candidates = Vec::new();
        if let Some(dir) = pg_config_bindir(Path::new("pg_config")) {
            candidates.push(dir);
        }
        candidates.extend(debian_bindirs());
        if let Some(path) = std::env::var_os("PATH") {
            candidates.extend(std::env::split_paths(&path));
        }
        for dir in candidates {
            if searched.contains(&dir) {
                continue;
            }
            if let Some(found) = Self::in_dir(&dir) {
                return Ok(found);
            }
            searched.push(dir);
        }
        Err(ClusterError::BinariesNotFound { searched })
    }

    /// The binaries in `dir`, if it holds all three.
    pub fn in_dir(dir: &Path) -> Option<PgBinaries> {
        let bin = |name: &str| {
            let path = dir.join(name);
            is_executable(&path).then_some(path)
        };
        Some(PgBinaries {
            bindir: dir.to_path_buf(),
            initdb: bin("initdb")?,
            pg_ctl: bin("pg_ctl")?,
            postgres: bin("postgres")?,
        })
    }

    /// Where this installation keeps extension libraries (`pg_stat_statements.so`, ...).
    pub fn pkglibdir(&self) -> Option<PathBuf> {
        let own_pg_config = self.bindir.join("pg_config");
        if is_executable(&own_pg_config)
            && let Some(dir) = pg_config_dir(&own_pg_config, "--pkglibdir")
        {
            return Some(dir);
        }
        let sibling = self.bindir.parent()?.join("lib");
        sibling.is_dir().then_some(sibling)
    }

    /// Whether the shared library of an extension (e.g. `pg_stat_statements`) is installed.
    pub fn has_library(&self, name: &str) -> bool {
        self.pkglibdir()
            .is_some_and(|dir| dir.join(format!("{name}.so")).is_file())
    }
}

fn is_executable(path: &Path) -> bool {
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn pg_config_bindir(pg_config: &Path) -> Option<PathBuf> {
    pg_config_dir(pg_config, "--bindir")
}

fn pg_config_dir(pg_config: &Path, flag: &str) -> Option<PathBuf> {
    let output = Command::new(pg_config).arg(flag).output().ok()?;
    if !output.status.success() {
        return None;
    }
    let dir = String::from_utf8(output.stdout).ok()?;
    let dir = dir.trim();
    (!dir.is_empty()).then(|| PathBuf::from(dir))
}

/// `/usr/lib/postgresql/<version>/bin`, highest version first.
fn debian_bindirs() -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir("/usr/lib/postgresql") else {
        return Vec::new();
    };
    let mut versions: Vec<(Vec<u32>, PathBuf)> = entries
        .filter_map(Result::ok)
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let version = name
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            Some((version, entry.path().join("bin")))
        })
        .collect();
    versions.sort_by(|a, b| b.0.cmp(&a.0));
    versions.into_iter().map(|(_, dir)| dir).collect()
}

/// Who runs the server processes.
#[derive(Debug, Clone)]
enum RunAs {
    CurrentUser,
    /// We are root: run as the OS user `postgres` via `runuser`.
    Postgres {
        runuser: PathBuf,
        uid: u32,
        gid: u32,
    },
}

impl RunAs {
    fn detect() -> Result<RunAs, ClusterError> {
        if effective_uid()? != 0 {
            return Ok(RunAs::CurrentUser);
        }
        let runuser = find_runuser().ok_or_else(|| {
            ClusterError::PostgresUser(
                "`runuser` (util-linux) was not found in PATH, /usr/sbin or /sbin".to_owned(),
            )
        })?;
        let id = |flag: &str| -> Result<u32, ClusterError> {
            let output = Command::new("id")
                .args([flag, "postgres"])
                .output()
                .map_err(io_err("running `id postgres`"))?;
            if !output.status.success() {
                return Err(ClusterError::PostgresUser(format!(
                    "there is no OS user `postgres` to run the server as (installing the \
                     postgresql package creates it): {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )));
            }
            String::from_utf8_lossy(&output.stdout)
                .trim()
                .parse()
                .map_err(|e| ClusterError::PostgresUser(format!("`id {flag} postgres`: {e}")))
        };
        Ok(RunAs::Postgres {
            runuser,
            uid: id("-u")?,
            gid: id("-g")?,
        })
    }

    /// A command running `program` as the server user, in `cwd` (which that user can enter).
    fn command(&self, program: &Path, cwd: &Path) -> Command {
        let mut cmd = match self {
            RunAs::CurrentUser => Command::new(program),
            RunAs::Postgres { runuser, .. } => {
                let mut cmd = Command::new(runuser);
                cmd.args(["-u", "postgres", "--"]).arg(program);
                cmd
            }
        };
        // English messages, so that log tails are readable and "Address already in use" matches.
        cmd.current_dir(cwd).env("LC_ALL", "C").env("LANG", "C");
        // A process group of its own: a Ctrl-C at the terminal goes to the program that
        // runs the cluster (`volt dev` stops it), not to an `initdb` or `pg_ctl` half way
        // (`pg_ctl` would pass it to a postmaster still starting, and `runuser` may leave
        // `pg_ctl` running on its own).
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        cmd
    }

    /// Makes `path` owned by the server user (no-op when running as the current user).
    fn chown(&self, path: &Path) -> Result<(), ClusterError> {
        if let RunAs::Postgres { uid, gid, .. } = self {
            let meta = fs::metadata(path).map_err(io_err(format!("stat {}", path.display())))?;
            if meta.uid() != *uid || meta.gid() != *gid {
                std::os::unix::fs::chown(path, Some(*uid), Some(*gid))
                    .map_err(io_err(format!("chown postgres {}", path.display())))?;
            }
        }
        Ok(())
    }

    /// When running as root, checks that the server user can traverse every ancestor of
    /// `dir`. Ancestors under the temp dir (e.g. a root-owned 0700 tempdir) are made
    /// traversable (`o+x`, not readable); any other blocking ancestor is an error.
    fn ensure_reachable(&self, dir: &Path) -> Result<(), ClusterError> {
        let RunAs::Postgres { uid, gid, .. } = self else {
            return Ok(());
        };
        let temp = std::env::temp_dir()
            .canonicalize()
            .unwrap_or_else(|_| std::env::temp_dir());
        for ancestor in dir.ancestors().skip(1) {
            let meta =
                fs::metadata(ancestor).map_err(io_err(format!("stat {}", ancestor.display())))?;
            let mode = meta.permissions().mode();
            let traversable = if meta.uid() == *uid {
                mode & 0o100 != 0
            } else if meta.gid() == *gid {
                mode & 0o010 != 0
            } else {
                mode & 0o001 != 0
            };
            if traversable {
                continue;
            }
            if ancestor.starts_with(&temp) && ancestor != temp {
                let mut perms = meta.permissions();
                perms.set_mode(mode | 0o001);
                fs::set_permissions(ancestor, perms)
                    .map_err(io_err(format!("chmod o+x {}", ancestor.display())))?;
                continue;
            }
            return Err(ClusterError::DataDirNotAccessible {
                path: dir.to_path_buf(),
                reason: format!(
                    "{} (mode {:o}, owner uid {}) is not traversable by it",
                    ancestor.display(),
                    mode & 0o7777,
                    meta.uid()
                ),
            });
        }
        Ok(())
    }
}

fn effective_uid() -> Result<u32, ClusterError> {
    // Linux: the second field of `Uid:` in /proc/self/status is the effective uid.
    if let Ok(status) = fs::read_to_string("/proc/self/status")
        && let Some(euid) = status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            .and_then(|euid| euid.parse().ok())
    {
        return Ok(euid);
    }
    let output = Command::new("id")
        .arg("-u")
        .output()
        .map_err(io_err("running `id -u`"))?;
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .map_err(|e| ClusterError::Io {
            context: "parsing the output of `id -u`".to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidData, e),
        })
}

fn find_runuser() -> Option<PathBuf> {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|dir| dir.join("runuser"))
        .find(|p| is_executable(p))
}

/// A Postgres cluster started by us with `pg_ctl`. Dropping it stops the server.
#[derive(Debug)]
pub struct LocalCluster {
    binaries: PgBinaries,
    run_as: RunAs,
    data_dir: PathBuf,
    log_file: PathBuf,
    port: u16,
    running: bool,
}

impl LocalCluster {
    /// Starts the cluster, running `initdb` first unless the data dir already holds one.
    /// Blocks until the server accepts connections (at most about a minute).
    pub fn start(opts: ClusterOptions) -> Result<LocalCluster, ClusterError> {
        for (name, _) in &opts.extra_settings {
            validate_setting_name(name)?;
        }
        let binaries = PgBinaries::find()?;
        let run_as = RunAs::detect()?;

        fs::create_dir_all(&opts.data_dir)
            .map_err(io_err(format!("creating {}", opts.data_dir.display())))?;
        let data_dir = opts
            .data_dir
            .canonicalize()
            .map_err(io_err(format!("resolving {}", opts.data_dir.display())))?;
        run_as.ensure_reachable(&data_dir)?;
        run_as.chown(&data_dir)?;

        let mut cluster = LocalCluster {
            log_file: data_dir.join(LOG_FILE),
            binaries,
            run_as,
            data_dir,
            port: opts.port,
            running: false,
        };
        if cluster.data_dir.join("PG_VERSION").is_file() {
            tracing::info!(data_dir = %cluster.data_dir.display(), "reusing existing Postgres cluster");
            cluster.stop_leftover_server()?;
        } else {
            cluster.initdb(opts.fsync)?;
        }
        cluster.ensure_settings_included()?;

        let mut attempt = 0;
        loop {
            attempt += 1;
            let port = if opts.port == 0 {
                free_port()?
            } else {
                opts.port
            };
            cluster.port = port;
            cluster.write_settings(&opts, port)?;
            match cluster.pg_ctl_start() {
                Ok(()) => {
                    cluster.running = true;
                    cluster.write_owner();
                    tracing::info!(
                        port,
                        data_dir = %cluster.data_dir.display(),
                        "Postgres cluster started"
                    );
                    return Ok(cluster);
                }
                Err(ClusterError::StartFailed { log_tail, .. })
                    if opts.port == 0
                        && attempt < PORT_ATTEMPTS
                        && log_tail.contains("Address already in use") =>
                {
                    tracing::warn!(
                        port,
                        "port was taken before Postgres bound it; retrying on another port"
                    );
                }
                Err(e) => return Err(e),
            }
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgresql://postgres@127.0.0.1:<port>/<dbname>` (trust auth, no password).
    pub fn url(&self, dbname: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{dbname}", self.port)
    }

    pub fn data_dir(&self) -> &Path {
        &self.data_dir
    }

    /// The server log, appended to by every start.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    pub fn binaries(&self) -> &PgBinaries {
        &self.binaries
    }

    /// The OS user the server runs as when it is not the current user (`postgres`, when we
    /// run as root); `pg_ctl` must be run as that user.
    pub fn server_os_user(&self) -> Option<&str> {
        match self.run_as {
            RunAs::CurrentUser => None,
            RunAs::Postgres { .. } => Some("postgres"),
        }
    }

    /// Stops the server (`pg_ctl -m fast stop`). Stopping a stopped cluster is a no-op.
    pub fn stop(&mut self) -> Result<(), ClusterError> {
        if !self.running {
            return Ok(());
        }
        self.pg_ctl_stop("fast")?;
        self.running = false;
        self.remove_owner();
        Ok(())
    }

    fn initdb(&self, fsync: bool) -> Result<(), ClusterError> {
        tracing::info!(data_dir = %self.data_dir.display(), "initialising a new Postgres cluster");
        let output = self
            .run_as
            .command(&self.binaries.initdb, &self.data_dir)
            .arg("-D")
            .arg(&self.data_dir)
            .args([
                "-U",
                "postgres",
                "--auth=trust",
                "--locale=C",
                "--encoding=UTF8",
            ])
            .args((!fsync).then_some("--no-sync"))
            .output()
            .map_err(io_err(format!(
                "running {}",
                self.binaries.initdb.display()
            )))?;
        if !output.status.success() {
            return Err(ClusterError::InitdbFailed {
                data_dir: self.data_dir.clone(),
                status: output.status.to_string(),
                stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
            });
        }
        Ok(())
    }

    /// A killed `volt dev` or test run leaves its server running (pg_ctl detaches it): stop it
    /// so that this start gets our settings. A `postmaster.pid` whose process is gone (or is
    /// not a postmaster of this data dir) is stale and removed.
    fn stop_leftover_server(&self) -> Result<(), ClusterError> {
        let pid_file = self.data_dir.join("postmaster.pid");
        // Missing, or malformed: postgres itself rejects or replaces a malformed lock file.
        let Some(pid) = postmaster_pid(&self.data_dir) else {
            return Ok(());
        };
        if is_postmaster_of(pid, &self.data_dir) {
            if let Some(owner) = self.live_owner() {
                return Err(ClusterError::DataDirInUse {
                    data_dir: self.data_dir.clone(),
                    pid: owner,
                });
            }
            tracing::warn!(
                pid,
                data_dir = %self.data_dir.display(),
                "a Postgres server from an earlier run is still running on this data dir; stopping it"
            );
            if let Err(e) = self.pg_ctl_stop("fast") {
                tracing::warn!(error = %e, "fast stop failed; trying immediate");
                self.pg_ctl_stop("immediate")?;
            }
        } else if Path::new(&format!("/proc/{pid}")).exists() {
            // The pid now belongs to an unrelated process; postgres would refuse to start if
            // that process is owned by the server user, so remove the stale lock file.
            tracing::warn!(pid, "removing stale postmaster.pid");
            fs::remove_file(&pid_file)
                .map_err(io_err(format!("removing stale {}", pid_file.display())))?;
        }
        Ok(())
    }

    /// The pid of the process that started the running server, if that process (not us) is
    /// still alive: the owner file holds its pid and start time, so a reused pid does not count.
    fn live_owner(&self) -> Option<u32> {
        let owner = fs::read_to_string(self.data_dir.join(OWNER_FILE)).ok()?;
        let owner = owner.trim();
        let pid: u32 = owner.split(' ').next()?.parse().ok()?;
        (pid != std::process::id() && process_identity(pid).as_deref() == Some(owner))
            .then_some(pid)
    }

    fn write_owner(&self) {
        let path = self.data_dir.join(OWNER_FILE);
        let Some(me) = process_identity(std::process::id()) else {
            return;
        };
        let written = fs::write(&path, me)
            .map_err(io_err(format!("writing {}", path.display())))
            .and_then(|()| self.run_as.chown(&path));
        if let Err(e) = written {
            tracing::warn!(error = %e, "could not record the cluster's owner");
        }
    }

    fn remove_owner(&self) {
        // Missing already, or unwritable: either way the next start checks the pid's identity.
        let _ = fs::remove_file(self.data_dir.join(OWNER_FILE));
    }

    /// Appends `include 'volt.conf'` to postgresql.conf once.
    fn ensure_settings_included(&self) -> Result<(), ClusterError> {
        let conf = self.data_dir.join("postgresql.conf");
        let contents =
            fs::read_to_string(&conf).map_err(io_err(format!("reading {}", conf.display())))?;
        if contents.lines().any(|line| line.trim() == INCLUDE_LINE) {
            return Ok(());
        }
        let mut file = fs::OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(io_err(format!("opening {}", conf.display())))?;
        let separator = if contents.ends_with('\n') { "" } else { "\n" };
        write!(
            file,
            "{separator}\n# Settings written by volt on every start.\n{INCLUDE_LINE}\n"
        )
        .map_err(io_err(format!("writing {}", conf.display())))
    }

    fn write_settings(&self, opts: &ClusterOptions, port: u16) -> Result<(), ClusterError> {
        let socket_dir = socket_dir(&self.data_dir);
        let mut settings: Vec<(&str, String)> = vec![
            ("wal_level", "logical".to_owned()),
            (
                "max_replication_slots",
                opts.max_replication_slots.to_string(),
            ),
            ("max_wal_senders", opts.max_wal_senders.to_string()),
            ("listen_addresses", "127.0.0.1".to_owned()),
            ("port", port.to_string()),
            ("unix_socket_directories", socket_dir.display().to_string()),
        ];
        if !opts.fsync {
            for name in ["fsync", "synchronous_commit", "full_page_writes"] {
                settings.push((name, "off".to_owned()));
            }
        }
        settings.extend(
            opts.extra_settings
                .iter()
                .map(|(name, value)| (name.as_str(), value.clone())),
        );
        let mut text = String::from("# Written by volt on every start; edits are overwritten.\n");
        for (name, value) in settings {
            // Writing to a String cannot fail.
            let _ = writeln!(text, "{name} = '{}'", value.replace('\'', "''"));
        }
        let path = self.data_dir.join(SETTINGS_FILE);
        fs::write(&path, text).map_err(io_err(format!("writing {}", path.display())))?;
        self.run_as.chown(&path)
    }

    fn pg_ctl_start(&self) -> Result<(), ClusterError> {
        let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
        let output = self
            .run_as
            .command(&self.binaries.pg_ctl, &self.data_dir)
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .arg("start")
            .output()
            .map_err(io_err(format!(
                "running {}",
                self.binaries.pg_ctl.display()
            )))?;
        if output.status.success() {
            return Ok(());
        }
        let log_tail = read_log_tail(&self.log_file, log_offset);
        // `-w` gave up waiting (or the server died): make sure nothing is left half-started.
        let _ = self.pg_ctl_stop("immediate");
        Err(ClusterError::StartFailed {
            port: self.port,
            data_dir: self.data_dir.clone(),
            pg_ctl_output: combined_output(&output),
            log_file: self.log_file.clone(),
            log_tail,
        })
    }

    fn pg_ctl_stop(&self, mode: &'static str) -> Result<(), ClusterError> {
        self.stopper().stop(mode)
    }

    /// What stops this server, apart from the cluster: a process that must exit at
    /// once (a second Ctrl-C on `volt dev`) stops its server on the way out with
    /// `stop_now`, which would otherwise keep running after it.
    pub fn stopper(&self) -> ClusterStopper {
        ClusterStopper {
            pg_ctl: self.binaries.pg_ctl.clone(),
            data_dir: self.data_dir.clone(),
            run_as: self.run_as.clone(),
        }
    }
}

/// Runs `pg_ctl stop` for a cluster (see `LocalCluster::stopper`).
#[derive(Debug, Clone)]
pub struct ClusterStopper {
    pg_ctl: PathBuf,
    data_dir: PathBuf,
    run_as: RunAs,
}

impl ClusterStopper {
    /// `pg_ctl -m immediate stop`: no checkpoint, the server recovers on its next start,
    /// as after a crash.
    pub fn stop_now(&self) -> Result<(), ClusterError> {
        self.stop("immediate")
    }

    fn stop(&self, mode: &'static str) -> Result<(), ClusterError> {
        let output = self
            .run_as
            .command(&self.pg_ctl, &self.data_dir)
            .args(["-w", "-t", "60", "-D"])
            .arg(&self.data_dir)
            .args(["-m", mode, "stop"])
            .output()
            .map_err(io_err(format!("running {}", self.pg_ctl.display())))?;
        if output.status.success() || !self.data_dir.join("postmaster.pid").exists() {
            // No pid file: the server is not running (any more), which is what we wanted.
            return Ok(());
        }
        Err(ClusterError::StopFailed {
            mode,
            data_dir: self.data_dir.clone(),
            output: combined_output(&output),
        })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.running {
            return;
        }
        if let Err(e) = self.pg_ctl_stop("fast") {
            tracing::warn!(error = %e, "stopping Postgres (fast) failed; trying immediate");
            if let Err(e) = self.pg_ctl_stop("immediate") {
                tracing::error!(error = %e, "could not stop Postgres; it may still be running");
                eprintln!("volt: could not stop the Postgres cluster: {e}");
                return;
            }
        }
        self.running = false;
        self.remove_owner();
    }
}

/// The pid in `data_dir`'s `postmaster.pid` (its first line), if the file is there and
/// holds one. The server may have exited since.
pub fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Whether `pid` is a running postmaster for `data_dir` (Linux: judged by /proc/<pid>/cmdline).
fn is_postmaster_of(pid: u32, data_dir: &Path) -> bool {
    let Ok(cmdline) = fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
    let dir = data_dir.as_os_str().as_encoded_bytes();
    let names_postgres = args.first().is_some_and(|arg0| {
        Path::new(OsStr::from_bytes(arg0))
            .file_name()
            .is_some_and(|n| n == "postgres" || n == "postmaster")
    });
    names_postgres && args.contains(&dir)
}

/// `<pid> <start time>` of a live process (Linux), which stays unique when pids are reused.
fn process_identity(pid: u32) -> Option<String> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name start at field 3 (state); field 22 is the
    // start time.
    let (_, fields) = stat.rsplit_once(')')?;
    let start_time = fields.split_whitespace().nth(19)?;
    Some(format!("{pid} {start_time}"))
}

/// A directory for the Unix socket: the data dir, unless that makes the socket path too long.
fn socket_dir(data_dir: &Path) -> PathBuf {
    let fits = |dir: &Path| dir.as_os_str().len() + SOCKET_FILE_NAME_MAX.len() <= MAX_SOCKET_PATH;
    if fits(data_dir) {
        return data_dir.to_path_buf();
    }
    // /tmp is writable by everyone; socket names are unique per port, and ports are unique.
    let temp = std::env::temp_dir();
    if fits(&temp) {
        temp
    } else {
        PathBuf::from("/tmp")
    }
}

fn validate_setting_name(name: &str) -> Result<(), ClusterError> {
    let valid = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.');
    if valid {
        Ok(())
    } else {
        Err(ClusterError::InvalidSetting {
            name: name.to_owned(),
            reason: "setting names consist of letters, digits, '_' and '.'".to_owned(),
        })
    }
}

/// A port that was free a moment ago (bind 127.0.0.1:0 and release it).
pub fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .map_err(io_err("binding 127.0.0.1:0 to find a free port"))?;
    let port = listener
        .local_addr()
        .map_err(io_err("reading the address of a bound socket"))?
        .port();
    Ok(port)
}

fn read_log_tail(path: &Path, from: u64) -> String {
    let read = || -> io::Result<String> {
        let mut file = fs::File::open(path)?;
        let len = file.metadata()?.len();
        // The log may have been truncated or replaced; then show what it holds now.
        file.seek(SeekFrom::Start(if from <= len { from } else { 0 }))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    };
    match read() {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().collect();
            let start = lines.len().saturating_sub(LOG_TAIL_LINES);
            let tail = lines[start..].join("\n");
            if tail.is_empty() {
                "(empty)".to_owned()
            } else {
                tail
            }
        }
        Err(e) => format!("(could not read the log: {e})"),
    }
}

/// The exit status, stdout and stderr of a finished command, for error messages.
fn combined_output(output: &Output) -> String {
    let mut text = output.status.to_string();
    for stream in [&output.stdout, &output.stderr] {
        let stream = String::from_utf8_lossy(stream);
        if !stream.trim().is_empty() {
            text.push('\n');
            text.push_str(stream.trim_end());
        }
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_dir_is_the_data_dir_when_the_path_is_short() {
        assert_eq!(socket_dir(Path::new("/tmp/abc")), PathBuf::from("/tmp/abc"));
    }

    #[test]
    fn socket_dir_falls_back_when_the_data_dir_path_is_too_long() {
        let long = PathBuf::from(format!("/tmp/{}", "x".repeat(100)));
        let dir = socket_dir(&long);
        assert_ne!(dir, long);
        assert!(dir.as_os_str().len() + SOCKET_FILE_NAME_MAX.len() <= MAX_SOCKET_PATH);
    }

    #[test]
    fn setting_names_with_quotes_or_spaces_are_rejected() {
        assert!(validate_setting_name("shared_preload_libraries").is_ok());
        assert!(validate_setting_name("auto_explain.log_min_duration").is_ok());
        assert!(validate_setting_name("a b").is_err());
        assert!(validate_setting_name("x'=1").is_err());
        assert!(validate_setting_name("").is_err());
    }

    #[test]
    fn binaries_not_found_names_the_searched_dirs_and_the_fix() {
        let e = ClusterError::BinariesNotFound {
            searched: vec![
                PathBuf::from("/usr/lib/postgresql/15/bin"),
                PathBuf::from("/usr/bin"),
            ],
        };
        let msg = e.to_string();
        assert!(
            msg.contains("/usr/lib/postgresql/15/bin, /usr/bin"),
            "{msg}"
        );
        assert!(msg.contains("apt-get install postgresql"), "{msg}");
    }
}
