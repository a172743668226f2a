//! `volt dev` stops its embedded Postgres however it exits.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn health_status(port: u16) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /v1/health HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.lines().next().map(str::to_string)
}

fn process_exists(pid: i32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

/// The pid of `volt dev`'s Postgres on `storage`, if its pid file holds one yet.
fn postmaster_pid(storage: &Path) -> Option<i32> {
    volt_pg::cluster::postmaster_pid(&storage.join("dev-postgres")).map(|pid| pid as i32)
}

/// `volt dev` on `storage` and `port`, stderr piped.
fn volt_dev(storage: &Path, port: u16) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_volt"));
    // Only what the test sets: an ELECTRIC_* of the caller's must not change the run.
    cmd.arg("dev")
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("ELECTRIC_STORAGE_DIR", storage)
        .env("ELECTRIC_PORT", port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    cmd
}

/// Waits (with a deadline) for the postmaster to be gone. pg_ctl waits for the server
/// to stop, but its postmaster may still be a zombie of the init process for a moment.
fn assert_postgres_stops(postgres: i32, stderr: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while process_exists(postgres) && !is_zombie(postgres) {
        assert!(
            Instant::now() < deadline,
            "the embedded Postgres (pid {postgres}) outlived volt dev: {stderr}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn volt_dev_stops_its_postgres_when_it_exits_without_an_orderly_shutdown() {
    let storage = tempfile::tempdir().unwrap();
    let port = volt_pg::cluster::free_port().expect("a free port");
    let mut volt = volt_dev(storage.path(), port)
        // Any shutdown overruns this: volt exits at once, as on a second Ctrl-C.
        .env("ELECTRIC_SHUTDOWN_TIMEOUT", "1ms")
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !health_status(port).is_some_and(|l| l.contains(" 200")) {
        assert!(
            volt.try_wait().unwrap().is_none(),
            "volt dev exited before serving"
        );
        assert!(Instant::now() < deadline, "volt dev never became healthy");
        std::thread::sleep(Duration::from_millis(100));
    }
    let postgres = postmaster_pid(storage.path()).expect("the embedded Postgres's pid");
    assert!(process_exists(postgres));
    // A failed assertion below must not leave the server running on the CI machine.
    let _reaper = Reaper(postgres);

    // SAFETY: sends SIGINT to the child we started.
    unsafe { libc::kill(volt.id() as i32, libc::SIGINT) };
    let out = volt.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("shutdown took longer than"),
        "volt did not exit at once: {stderr}"
    );
    assert_postgres_stops(postgres, &stderr);
}

#[test]
fn a_ctrl_c_during_volt_dev_start_up_stops_its_postgres() {
    use std::os::unix::process::CommandExt;
    let storage = tempfile::tempdir().unwrap();
    let port = volt_pg::cluster::free_port().expect("a free port");
    let mut volt = volt_dev(storage.path(), port)
        // Its own process group, as a terminal's foreground job: the Ctrl-C below goes
        // to the whole group.
        .process_group(0)
        .spawn()
        .unwrap();
    let _volt_reaper = GroupReaper(volt.id() as i32);
    // The moment the postmaster exists, long before volt serves: the start-up is
    // still running (the demo table, the stack).
    let deadline = Instant::now() + Duration::from_secs(120);
    let postgres = loop {
        if let Some(pid) = postmaster_pid(storage.path()) {
            break pid;
        }
        assert!(
            volt.try_wait().unwrap().is_none(),
            "volt dev exited before starting Postgres"
        );
        assert!(Instant::now() < deadline, "volt dev never started Postgres");
        std::thread::sleep(Duration::from_millis(20));
    };
    let _reaper = Reaper(postgres);

    // SAFETY: sends SIGINT to the process group of the child we started, as a
    // terminal's Ctrl-C does.
    unsafe { libc::kill(-(volt.id() as i32), libc::SIGINT) };
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = volt.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "volt dev did not exit after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    volt.stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        status.success(),
        "volt dev failed on Ctrl-C ({status}): {stderr}"
    );
    assert_postgres_stops(postgres, &stderr);
}

struct Reaper(i32);

/// Kills a process group left by a failed test.
struct GroupReaper(i32);

impl Drop for GroupReaper {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: SIGKILL to the test's own child process group.
            unsafe { libc::kill(-self.0, libc::SIGKILL) };
        }
    }
}

impl Drop for Reaper {
    fn drop(&mut self) {
        if std::thread::panicking() {
            // SAFETY: SIGQUIT asks the postmaster to stop at once; harmless if it is gone.
            unsafe { libc::kill(self.0, libc::SIGQUIT) };
        }
    }
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            s.rsplit(')')
                .next()
                .map(|r| r.trim_start().starts_with('Z'))
        })
        .unwrap_or(false)
}
