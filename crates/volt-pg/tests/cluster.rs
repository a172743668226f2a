//! The throwaway cluster: starts from the installed binaries, keeps its identity across
//! restarts, and recovers from runs that were killed.

use std::path::Path;
use std::time::{Duration, Instant};

use tokio_postgres::{Client, NoTls};
use volt_pg::cluster::{ClusterError, ClusterOptions, LocalCluster};

/// Options for tests that do not depend on durability: without fsync, initdb and crash
/// recovery are much faster on a busy disk.
fn options(data_dir: &Path) -> ClusterOptions {
    let mut options = ClusterOptions::new(data_dir);
    options.fsync = false;
    options
}

async fn connect(cluster: &LocalCluster) -> Client {
    let (client, connection) = tokio_postgres::connect(&cluster.url("postgres"), NoTls)
        .await
        .expect("connect to the cluster");
    tokio::spawn(connection);
    client
}

async fn show(client: &Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .expect("SHOW")
        .get(0)
}

async fn system_identifier(client: &Client) -> i64 {
    client
        .query_one("SELECT system_identifier FROM pg_control_system()", &[])
        .await
        .expect("read the system identifier")
        .get(0)
}

fn postmaster_pid(data_dir: &Path) -> u32 {
    let contents =
        std::fs::read_to_string(data_dir.join("postmaster.pid")).expect("postmaster.pid");
    contents.lines().next().unwrap().trim().parse().unwrap()
}

/// Gone, or a zombie nobody reaps (pg_ctl detaches the postmaster from us).
fn process_is_gone(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z')),
    }
}

const POLL_INTERVAL: Duration = Duration::from_millis(10);

fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        std::thread::sleep(POLL_INTERVAL); // poll interval, not a wait for the condition
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_runs_logical_wal_and_keeps_its_system_identifier_across_restarts() {
    let tmp = tempfile::tempdir().unwrap();
    // A subdirectory of a root-only tempdir: exercises making the parent traversable.
    let data_dir = tmp.path().join("pgdata");
    let opts = ClusterOptions::new(&data_dir).setting("max_connections", "42");

    let mut cluster = LocalCluster::start(opts.clone()).unwrap();
    assert!(
        cluster
            .url("app")
            .ends_with(&format!(":{}/app", cluster.port()))
    );
    assert_eq!(cluster.data_dir(), data_dir.canonicalize().unwrap());
    let client = connect(&cluster).await;
    assert_eq!(show(&client, "wal_level").await, "logical");
    assert_eq!(show(&client, "max_replication_slots").await, "100");
    assert_eq!(show(&client, "max_wal_senders").await, "100");
    assert_eq!(show(&client, "max_connections").await, "42");
    assert_eq!(show(&client, "listen_addresses").await, "127.0.0.1");
    assert_eq!(show(&client, "fsync").await, "on");
    let identifier = system_identifier(&client).await;
    client
        .batch_execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();
    drop(client);
    cluster.stop().unwrap();
    cluster.stop().unwrap(); // stopping twice is a no-op
    assert!(!data_dir.join("postmaster.pid").exists());

    let cluster = LocalCluster::start(opts).unwrap();
    let client = connect(&cluster).await;
    assert_eq!(system_identifier(&client).await, identifier);
    let kept: i32 = client
        .query_one("SELECT id FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(kept, 7);
    assert_eq!(show(&client, "wal_level").await, "logical");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cluster_without_fsync_turns_durability_settings_off() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(options(tmp.path())).unwrap();
    let client = connect(&cluster).await;
    assert_eq!(show(&client, "fsync").await, "off");
    assert_eq!(show(&client, "synchronous_commit").await, "off");
    assert_eq!(show(&client, "full_page_writes").await, "off");
    assert_eq!(show(&client, "wal_level").await, "logical");
}

#[tokio::test(flavor = "multi_thread")]
async fn dropping_the_cluster_stops_the_server() {
    let tmp = tempfile::tempdir().unwrap();
    let cluster = LocalCluster::start(options(tmp.path())).unwrap();
    let pid = postmaster_pid(cluster.data_dir());
    let url = cluster.url("postgres");
    drop(cluster);
    assert!(!tmp.path().join("postmaster.pid").exists());
    wait_until("the postmaster has exited", || process_is_gone(pid));
    assert!(tokio_postgres::connect(&url, NoTls).await.is_err());
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_stops_a_server_left_running_by_a_killed_owner() {
    let tmp = tempfile::tempdir().unwrap();
    let first = LocalCluster::start(options(tmp.path())).unwrap();
    let identifier = system_identifier(&connect(&first).await).await;
    let old_pid = postmaster_pid(first.data_dir());
    // Like a `volt dev` that was SIGKILLed: nothing stops the server it started.
    std::mem::forget(first);

    let second = LocalCluster::start(options(tmp.path())).unwrap();
    assert!(process_is_gone(old_pid), "the leftover server was stopped");
    assert_ne!(postmaster_pid(second.data_dir()), old_pid);
    assert_eq!(system_identifier(&connect(&second).await).await, identifier);
}

/// What the cluster records as its owner: `<pid> <start time>` (field 22 of /proc/<pid>/stat).
fn process_identity(pid: u32) -> String {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let (_, fields) = stat.rsplit_once(')').unwrap();
    format!("{pid} {}", fields.split_whitespace().nth(19).unwrap())
}

#[tokio::test(flavor = "multi_thread")]
async fn start_refuses_a_data_dir_whose_owner_is_still_running() {
    let tmp = tempfile::tempdir().unwrap();
    let first = LocalCluster::start(options(tmp.path())).unwrap();
    // Another live process (here: a `cat` waiting on its stdin) owns the running server.
    let mut owner = std::process::Command::new("cat")
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::fs::write(tmp.path().join("volt.owner"), process_identity(owner.id())).unwrap();

    match LocalCluster::start(options(tmp.path())) {
        Err(ClusterError::DataDirInUse { pid, .. }) => assert_eq!(pid, owner.id()),
        other => panic!("expected DataDirInUse, got {other:?}"),
    }
    assert_eq!(postmaster_pid(tmp.path()), postmaster_pid(first.data_dir()));
    connect(&first).await; // still serving

    // Once the owner is gone, the next start takes the data dir over.
    owner.kill().unwrap();
    owner.wait().unwrap();
    let old_pid = postmaster_pid(first.data_dir());
    std::mem::forget(first);
    let second = LocalCluster::start(options(tmp.path())).unwrap();
    assert!(process_is_gone(old_pid));
    connect(&second).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn restart_ignores_the_stale_pid_file_of_a_killed_server() {
    let tmp = tempfile::tempdir().unwrap();
    let first = LocalCluster::start(options(tmp.path())).unwrap();
    let identifier = system_identifier(&connect(&first).await).await;
    let pid = postmaster_pid(first.data_dir());
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    wait_until("the postmaster has died", || process_is_gone(pid));
    std::mem::forget(first); // its Drop would find nothing to stop anyway
    assert!(
        tmp.path().join("postmaster.pid").exists(),
        "the pid file is stale"
    );

    let second = LocalCluster::start(options(tmp.path())).unwrap();
    assert_eq!(system_identifier(&connect(&second).await).await, identifier);
}

#[test]
fn start_on_a_taken_port_fails_with_the_server_log() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let mut opts = options(tmp.path());
    opts.port = taken.local_addr().unwrap().port();
    match LocalCluster::start(opts) {
        Err(e @ ClusterError::StartFailed { .. }) => {
            let message = e.to_string();
            assert!(message.contains("Address already in use"), "{message}");
        }
        other => panic!("expected StartFailed, got {other:?}"),
    }
}
