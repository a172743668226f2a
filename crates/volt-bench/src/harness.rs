//! Shared pieces: a throwaway Postgres, volt processes, process measurements.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
pub use volt_pg::cluster::free_port;
use volt_pg::cluster::{ClusterOptions, LocalCluster};

pub struct BenchEnv {
    pub cluster: LocalCluster,
    pub volt_bin: PathBuf,
    pub quick: bool,
    /// The CPUs this process may run on, as it started (see `pin`).
    cpus: Vec<usize>,
    /// While a `Pinned` lives: volt processes start on the second of `cpus`.
    pinned: std::sync::atomic::AtomicBool,
    /// The cluster's files and every volt storage directory: removed when the bench
    /// ends, not as each run ends (see `storage`).
    _dir: tempfile::TempDir,
    storages: std::sync::atomic::AtomicUsize,
}

impl BenchEnv {
    pub fn start(quick: bool) -> anyhow::Result<BenchEnv> {
        let dir = tempfile::tempdir()?;
        let mut options = ClusterOptions::new(dir.path().join("pg"))
            .setting("max_connections", "300")
            .setting("shared_buffers", "256MB");
        // Counting the snapshot queries a scenario caused needs it; optional.
        if volt_pg::cluster::PgBinaries::find()?.has_library("pg_stat_statements") {
            options = options.setting("shared_preload_libraries", "pg_stat_statements");
        }
        let cluster = LocalCluster::start(options)?;
        let target = std::env::var("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|_| {
                PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/../../target"))
            });
        let volt_bin = target
            .join(if quick { "debug" } else { "release" })
            .join("volt");
        anyhow::ensure!(
            volt_bin.exists(),
            "{} not found: build it first (cargo build {}-p volt)",
            volt_bin.display(),
            if quick { "" } else { "--release " }
        );
        Ok(BenchEnv {
            cluster,
            volt_bin,
            quick,
            // None known: S2 runs only with the CPUs shared.
            cpus: allowed_cpus().unwrap_or_default(),
            pinned: std::sync::atomic::AtomicBool::new(false),
            _dir: dir,
            storages: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Microseconds to create an empty file where volt's storage goes, over 200 files
    /// (kept until the bench ends: removing them would slow the next creations). Scenarios
    /// that create thousands of shapes print it: on these machines it moved between ~40
    /// and ~700 us with the files removed in the minutes before, which moved S2 more than
    /// any change of volt's.
    pub fn file_creation_micros(&self) -> anyhow::Result<f64> {
        let dir = self.storage()?;
        let started = Instant::now();
        for i in 0..200 {
            std::fs::File::create(dir.join(format!("probe-{i}")))?;
        }
        Ok(started.elapsed().as_secs_f64() * 1e6 / 200.0)
    }

    /// CPU seconds used so far by this cluster's Postgres: the postmaster, its children
    /// alive now, and those that exited (the postmaster waits for each, which adds its
    /// time to the postmaster's own count of its children's).
    pub fn postgres_cpu_secs(&self) -> f64 {
        let Some(postmaster) = volt_pg::cluster::postmaster_pid(self.cluster.data_dir()) else {
            return 0.0;
        };
        children_of(postmaster)
            .into_iter()
            .map(proc_cpu_secs)
            .sum::<f64>()
            + proc_cpu_with_reaped_secs(postmaster)
    }

    /// A new, empty storage directory for a volt run, kept until the bench ends. On
    /// ext4 without a journal (these machines), a new file's inode skips every inode
    /// deleted in the last minutes, one lookup each: removing a run's ~10,000 shape
    /// files right before the next run made that run's file creations 44% of its CPU
    /// (S2), so a run's figures depended on the one before it.
    pub fn storage(&self) -> anyhow::Result<PathBuf> {
        let n = self
            .storages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = self._dir.path().join(format!("storage-{n}"));
        std::fs::create_dir(&dir)?;
        Ok(dir)
    }

    pub async fn client(&self, db: &str) -> anyhow::Result<tokio_postgres::Client> {
        let (client, conn) =
            tokio_postgres::connect(&self.cluster.url(db), tokio_postgres::NoTls).await?;
        tokio::spawn(conn);
        Ok(client)
    }

    /// A fresh database for one scenario.
    pub async fn database(&self, name: &str) -> anyhow::Result<String> {
        let admin = self.client("postgres").await?;
        admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await?;
        admin
            .batch_execute(&format!("CREATE DATABASE {name}"))
            .await?;
        Ok(self.cluster.url(name))
    }
}

pub struct Volt {
    child: tokio::process::Child,
    pub base: String,
    pub http: reqwest::Client,
}

impl Volt {
    pub async fn start(
        env: &BenchEnv,
        db_url: &str,
        storage: &Path,
        port: u16,
    ) -> anyhow::Result<(Volt, Duration)> {
        Self::start_with(env, db_url, storage, port, &[]).await
    }

    /// `start` with extra settings (environment variables).
    pub async fn start_with(
        env: &BenchEnv,
        db_url: &str,
        storage: &Path,
        port: u16,
        settings: &[(&str, &str)],
    ) -> anyhow::Result<(Volt, Duration)> {
        let started = Instant::now();
        // Slots are cluster-wide: one per scenario database.
        let stream_id = db_url
            .rsplit('/')
            .next()
            .and_then(|s| s.split('?').next())
            .unwrap_or("default")
            .to_ascii_lowercase();
        let mut command = tokio::process::Command::new(&env.volt_bin);
        if env.pinned.load(std::sync::atomic::Ordering::Relaxed) {
            let cpu = [env.cpus[1]];
            // SAFETY: between fork and exec this only fills a set on the stack (the CPU
            // is below CPU_SETSIZE, it came from one) and makes one system call: no
            // allocation, no lock.
            unsafe {
                command.pre_exec(move || set_affinity(0, &cpu));
            }
        }
        // `VOLT_BENCH_LOG_LEVEL=info` prints volt's log, each snapshot's read and
        // durable times among it.
        let log_level = std::env::var("VOLT_BENCH_LOG_LEVEL").ok();
        let child = command
            .env("ELECTRIC_REPLICATION_STREAM_ID", &stream_id)
            .env("DATABASE_URL", db_url)
            .env("ELECTRIC_PORT", port.to_string())
            .env("ELECTRIC_STORAGE_DIR", storage)
            .env("ELECTRIC_INSECURE", "true")
            .env(
                "ELECTRIC_LOG_LEVEL",
                log_level.as_deref().unwrap_or("warning"),
            )
            .env("ELECTRIC_DB_POOL_SIZE", "16")
            .envs(settings.iter().copied())
            // volt logs to stdout: to the bench's stderr, apart from its tables.
            .stdout(if log_level.is_some() {
                Stdio::from(std::io::stderr())
            } else {
                Stdio::null()
            })
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("starting volt")?;
        let volt = Volt {
            child,
            base: format!("http://127.0.0.1:{port}"),
            http: reqwest::Client::builder()
                .pool_max_idle_per_host(64)
                .build()?,
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            if let Ok(res) = volt
                .http
                .get(format!("{}/v1/health", volt.base))
                .send()
                .await
                && res.status() == 200
            {
                return Ok((volt, started.elapsed()));
            }
            if Instant::now() > deadline {
                bail!("volt did not become active");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Poll `/v1/admin/stats` until every registry change is in ShapeDb.
    pub async fn wait_registry_written(&self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let stats: serde_json::Value = self
                .http
                .get(format!("{}/v1/admin/stats", self.base))
                .send()
                .await?
                .json()
                .await?;
            if stats["registry_unwritten"] == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the shape registry was not written within 60 s: {stats}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Resident memory now, in KiB.
    pub fn rss_kib(&self) -> u64 {
        proc_status(self.pid(), "VmRSS:")
    }

    /// Peak resident memory so far, in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        proc_status(self.pid(), "VmHWM:")
    }

    /// CPU seconds (user + system) used so far.
    pub fn cpu_secs(&self) -> f64 {
        self.pid().map_or(0.0, proc_cpu_secs)
    }

    pub async fn kill_9(mut self) -> anyhow::Result<()> {
        self.child.start_kill()?;
        self.child.wait().await?;
        Ok(())
    }
}

/// While it lives, Postgres and this process's threads (the load generators) share
/// one CPU and volt processes started meanwhile run on another: the issue's "Postgres
/// and load on one core, volt on the other", for scenarios where sharing both cores
/// makes the figures move.
pub struct Pinned<'a> {
    env: &'a BenchEnv,
}

impl BenchEnv {
    /// Whether there are two CPUs to pin to.
    pub fn can_pin(&self) -> bool {
        self.cpus.len() >= 2
    }

    /// Pin Postgres (the postmaster, so its future backends too, and its processes
    /// alive now) and every thread of this process (threads they start inherit it) to
    /// the first CPU this process may use; volt goes to the second. A volt already
    /// running stays where it is.
    pub fn pin(&self) -> anyhow::Result<Pinned<'_>> {
        anyhow::ensure!(self.can_pin(), "pinning needs two CPUs");
        // Made first: whatever gets pinned is unpinned however this ends.
        let pinned = Pinned { env: self };
        self.place_load(&self.cpus[..1])
            .context("pinning Postgres and the load generators")?;
        self.pinned
            .store(true, std::sync::atomic::Ordering::Relaxed);
        Ok(pinned)
    }

    /// Postgres's processes and this process's threads onto `cpus`. The postmaster goes
    /// first, so the backends it forks from then on inherit `cpus`; processes and
    /// threads that appear while this runs are caught by listing again until no new
    /// ones show up.
    fn place_load(&self, cpus: &[usize]) -> std::io::Result<()> {
        let postmaster = volt_pg::cluster::postmaster_pid(self.cluster.data_dir());
        if let Some(pid) = postmaster {
            set_affinity(pid, cpus)?;
        }
        let mut placed = std::collections::HashSet::new();
        loop {
            let mut pids: Vec<u32> = postmaster.map(children_of).unwrap_or_default();
            pids.extend(threads_of("self"));
            pids.retain(|pid| !placed.contains(pid));
            if pids.is_empty() {
                return Ok(());
            }
            for pid in pids {
                set_affinity(pid, cpus)?;
                placed.insert(pid);
            }
        }
    }
}

impl Drop for Pinned<'_> {
    fn drop(&mut self) {
        self.env
            .pinned
            .store(false, std::sync::atomic::Ordering::Relaxed);
        // EPERM: pinning failed the same way at its first process, nothing was moved.
        if let Err(e) = self.env.place_load(&self.env.cpus)
            && e.raw_os_error() != Some(libc::EPERM)
        {
            eprintln!("could not unpin Postgres and the load: {e}");
        }
    }
}

/// The thread ids of process `pid` ("self" for this one).
fn threads_of(pid: &str) -> Vec<u32> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The processes whose parent is `parent`.
fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| proc_stat(pid).get(1).and_then(|p| p.parse::<u32>().ok()) == Some(parent))
        .collect()
}

/// The CPUs the calling thread may run on (a container may allow any few of the
/// machine's).
fn allowed_cpus() -> std::io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is the empty set; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
}

/// Keep thread `tid` (0: the calling one) on `cpus`. A thread it starts inherits that.
fn set_affinity(tid: u32, cpus: &[usize]) -> std::io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is the empty set; the calls only read and write it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &cpu in cpus {
            libc::CPU_SET(cpu, &mut set);
        }
        if libc::sched_setaffinity(
            tid as libc::pid_t,
            std::mem::size_of::<libc::cpu_set_t>(),
            &set,
        ) != 0
        {
            let e = std::io::Error::last_os_error();
            // A thread or process that ended since it was listed.
            if e.raw_os_error() != Some(libc::ESRCH) {
                return Err(e);
            }
        }
    }
    Ok(())
}

/// The fields of `/proc/<pid>/stat` after the command name (the state is field 0).
fn proc_stat(pid: u32) -> Vec<String> {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, r)| r.split_whitespace().map(str::to_string).collect())
        })
        .unwrap_or_default()
}

/// CPU seconds (user + system) a process has used so far; 0 once it is gone.
pub fn proc_cpu_secs(pid: u32) -> f64 {
    proc_ticks(pid, 11..=12)
}

/// `proc_cpu_secs`, plus what its children that exited and were waited for used.
fn proc_cpu_with_reaped_secs(pid: u32) -> f64 {
    proc_ticks(pid, 11..=14)
}

fn proc_ticks(pid: u32, fields: std::ops::RangeInclusive<usize>) -> f64 {
    let stat = proc_stat(pid);
    fields
        .filter_map(|i| stat.get(i).and_then(|v| v.parse::<f64>().ok()))
        .sum::<f64>()
        / 100.0
}

pub fn proc_status(pid: Option<u32>, key: &str) -> u64 {
    let Some(pid) = pid else { return 0 };
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(key))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            // Allocated blocks, not apparent size: what the shapes really cost on disk.
            Ok(m) => std::os::unix::fs::MetadataExt::blocks(&m) * 512,
            Err(_) => 0,
        })
        .sum()
}

/// The machine's CPU time so far, in ticks (`/proc/stat`): all of it, and the part the
/// hypervisor gave to other guests (steal). Their shares over a run say how much of the
/// machine a figure had.
#[derive(Clone, Copy, Default)]
pub struct MachineTicks {
    pub total: u64,
    pub steal: u64,
}

impl MachineTicks {
    pub fn now() -> MachineTicks {
        let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
        // `cpu  user nice system idle iowait irq softirq steal guest guest_nice`
        let ticks: Vec<u64> = stat
            .lines()
            .next()
            .unwrap_or_default()
            .split_whitespace()
            .skip(1)
            .take(8)
            .filter_map(|v| v.parse().ok())
            .collect();
        MachineTicks {
            total: ticks.iter().sum(),
            steal: ticks.get(7).copied().unwrap_or(0),
        }
    }

    /// Percent of the machine's time stolen from `self` to `later`.
    pub fn steal_percent(self, later: MachineTicks) -> f64 {
        let total = later.total.saturating_sub(self.total);
        100.0 * later.steal.saturating_sub(self.steal) as f64 / total.max(1) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::MachineTicks;

    #[test]
    fn the_stolen_share_of_the_machine_is_a_percentage() {
        let start = MachineTicks::now();
        assert!(start.total > 0, "/proc/stat has the machine's ticks");
        assert!(start.steal <= start.total);
        let stolen = start.steal_percent(MachineTicks::now());
        assert!((0.0..=100.0).contains(&stolen), "{stolen}");
    }
}
