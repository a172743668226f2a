//! kill -9 of a real volt process under write load with live clients: after a restart
//! every client converges to the table, saw every row version exactly once, kept its
//! handle, and no snapshot ran again.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::Value;
use volt_test_support::TestDb;

use crate::support::{DEADLINE, Follower, Server, VoltProcess, free_port, snapshot_queries_in};

/// Follow a shape until told to stop, surviving the server's absence.
async fn follow(
    mut f: Follower,
    server: Arc<tokio::sync::RwLock<Option<VoltProcess>>>,
    done: Arc<AtomicBool>,
) -> anyhow::Result<Follower> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while !done.load(Ordering::Acquire) {
        if tokio::time::Instant::now() > deadline {
            bail!("follower ran out of time");
        }
        let guard = server.read().await;
        let res = match guard.as_ref() {
            Some(volt) => f.poll(volt, true).await,
            None => Err(anyhow::anyhow!("volt is down")),
        };
        drop(guard);
        if res.is_err() {
            // The server is down or restarting: back off as the client does.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(f)
}

/// Each row's `v` went 1, 2, 3, ... in the changes a follower saw: nothing lost, nothing
/// twice.
fn check_versions(f: &Follower) -> anyhow::Result<()> {
    let mut last: BTreeMap<String, i64> = BTreeMap::new();
    for c in &f.changes {
        let key = c["key"].as_str().context("key")?.to_string();
        let Some(v) = c["value"]["v"].as_str() else {
            continue;
        };
        let v: i64 = v.parse()?;
        let prev = last.entry(key.clone()).or_insert(0);
        if v != *prev + 1 {
            bail!("{key}: version {v} after {prev} in shape {}", f.params);
        }
        *prev = v;
    }
    Ok(())
}

#[tokio::test]
async fn kill_9_under_write_load_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    restart_under_write_load("kill_9", false).await
}

#[tokio::test]
async fn sigterm_under_write_load_exits_zero_and_loses_and_duplicates_nothing() -> anyhow::Result<()>
{
    restart_under_write_load("sigterm_load", true).await
}

/// Stop volt (SIGTERM, which must exit 0, or kill -9) while clients follow shapes under
/// a write load, start it again on the same storage: every client converges on the
/// truth, with no lost or repeated version, no refetch, no new snapshot.
async fn restart_under_write_load(name: &str, graceful: bool) -> anyhow::Result<()> {
    let db = TestDb::new(name).await?;
    db.execute(
        "CREATE TABLE rows (id int PRIMARY KEY, grp int NOT NULL, v int NOT NULL);
         INSERT INTO rows SELECT g, g % 3, 0 FROM generate_series(1, 30) g;",
    )
    .await?;
    let storage = tempfile::tempdir()?;
    let port = free_port()?;
    let volt = VoltProcess::start(&db, storage.path(), port).await?;
    let shapes = [
        "table=rows",
        "table=rows&where=grp%20%3D%200",
        "table=rows&where=grp%20%3D%201",
        "table=rows&where=id%20%3C%2010",
    ];
    let mut followers = Vec::new();
    for params in shapes {
        let mut f = Follower::new(params);
        f.catch_up(&volt).await?;
        followers.push(f);
    }
    let handles: Vec<_> = followers.iter().map(|f| f.handle.clone()).collect();
    let snapshots = snapshot_queries_in(&db, "rows").await?;

    let server = Arc::new(tokio::sync::RwLock::new(Some(volt)));
    let done = Arc::new(AtomicBool::new(false));
    let tasks: Vec<_> = followers
        .into_iter()
        .map(|f| tokio::spawn(follow(f, server.clone(), done.clone())))
        .collect();

    // The write load: multi-row transactions bumping row versions.
    let committed = Arc::new(AtomicU64::new(0));
    let stop_writes = Arc::new(AtomicBool::new(false));
    let writer = db.client().await?;
    let (c, stop) = (committed.clone(), stop_writes.clone());
    let seed = rand::random::<u64>();
    eprintln!("{name} write load seed: {seed}");
    let load = tokio::spawn(async move {
        let mut x = seed | 1;
        while !stop.load(Ordering::Acquire) {
            let mut ids = Vec::new();
            for _ in 0..3 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                ids.push(x % 30 + 1);
            }
            ids.sort_unstable();
            ids.dedup();
            let list = ids.iter().map(u64::to_string).collect::<Vec<_>>().join(",");
            writer
                .batch_execute(&format!(
                    "BEGIN; UPDATE rows SET v = v + 1 WHERE id IN ({list}); COMMIT;"
                ))
                .await?;
            c.fetch_add(1, Ordering::AcqRel);
        }
        anyhow::Ok(())
    });
    let wait_writes = |n: u64| {
        let committed = committed.clone();
        async move {
            let deadline = tokio::time::Instant::now() + DEADLINE;
            while committed.load(Ordering::Acquire) < n {
                anyhow::ensure!(tokio::time::Instant::now() < deadline, "write load stalled");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        }
    };

    wait_writes(150).await?;
    let volt = server.write().await.take().context("volt running")?;
    if graceful {
        let status = volt.terminate().await?;
        anyhow::ensure!(
            status.success(),
            "volt exited with {status:?} after SIGTERM"
        );
    } else {
        volt.kill_9().await?;
    }
    let at_kill = committed.load(Ordering::Acquire);
    wait_writes(at_kill + 100).await?;
    let volt = VoltProcess::start(&db, storage.path(), port).await?;
    *server.write().await = Some(volt);
    let at_restart = committed.load(Ordering::Acquire);
    wait_writes(at_restart + 150).await?;
    stop_writes.store(true, Ordering::Release);
    load.await??;

    // The truth, then every follower converges to it.
    let client = db.client().await?;
    let truth: BTreeMap<i32, (i32, i32)> = client
        // ORDER BY: pg_stat_statements would count the same query as a snapshot.
        .query("SELECT id, grp, v FROM rows ORDER BY id", &[])
        .await?
        .iter()
        .map(|r| (r.get::<_, i32>(0), (r.get::<_, i32>(1), r.get::<_, i32>(2))))
        .collect();
    let expected = |params: &str| -> BTreeMap<String, String> {
        truth
            .iter()
            .filter(|(id, (grp, _))| match params {
                "table=rows&where=grp%20%3D%200" => *grp == 0,
                "table=rows&where=grp%20%3D%201" => *grp == 1,
                "table=rows&where=id%20%3C%2010" => **id < 10,
                _ => true,
            })
            .map(|(id, (_, v))| (id.to_string(), v.to_string()))
            .collect()
    };
    let rows_of = |f: &Follower| -> BTreeMap<String, String> {
        f.rows
            .values()
            .map(|r| {
                let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
                (s("id"), s("v"))
            })
            .collect()
    };
    let deadline = tokio::time::Instant::now() + DEADLINE;
    let mut followers = Vec::new();
    done.store(true, Ordering::Release);
    for t in tasks {
        followers.push(t.await??);
    }
    let guard = server.read().await;
    let volt = guard.as_ref().context("volt running")?;
    for f in &mut followers {
        let want = expected(&f.params);
        while rows_of(f) != want {
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{} did not converge: {:?} vs {:?}",
                f.params,
                rows_of(f),
                want
            );
            f.poll(volt, true).await?;
        }
        check_versions(f)?;
        assert_eq!(f.refetches, 0, "{} had to refetch", f.params);
    }
    let after: Vec<_> = followers.iter().map(|f| f.handle.clone()).collect();
    assert_eq!(after, handles, "every shape kept its handle");
    if let Ok(log) = std::fs::read_to_string(storage.path().join("volt.log")) {
        for line in log
            .lines()
            .filter(|l| !l.contains(" INFO ") || l.contains("shape"))
        {
            eprintln!("volt.log: {line}");
        }
    }
    assert_eq!(
        snapshot_queries_in(&db, "rows").await?,
        snapshots,
        "no snapshot ran again after the restart"
    );
    drop(guard);
    if let Some(volt) = server.write().await.take() {
        volt.kill_9().await?;
    }
    db.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn sigterm_answers_parked_requests_and_exits_zero() -> anyhow::Result<()> {
    let db = TestDb::new("sigterm").await?;
    db.execute("CREATE TABLE items (id int PRIMARY KEY); INSERT INTO items VALUES (1);")
        .await?;
    let storage = tempfile::tempdir()?;
    let mut volt = VoltProcess::start(&db, storage.path(), free_port()?).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    // A long-poll parked when the signal arrives is answered, not cut off.
    let url = format!(
        "{}/v1/shape?table=items&live=true&handle={}&offset={}",
        volt.base(),
        f.handle.as_deref().unwrap_or_default(),
        f.offset
    );
    let parked = tokio::spawn(async move { reqwest::get(url).await.map(|r| r.status()) });
    let admission = format!("{}/v1/admin/admission", volt.base());
    crate::support::eventually("the long-poll is parked", || async {
        let stats: Value = reqwest::get(&admission).await?.json().await?;
        Ok(stats["existing_in_use"] == 1)
    })
    .await?;
    let pid = volt.child.id().expect("volt is running").to_string();
    let sent = tokio::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .await?;
    assert!(sent.success());
    let status = tokio::time::timeout(Duration::from_secs(30), volt.child.wait())
        .await
        .map_err(|_| anyhow::anyhow!("volt did not exit after SIGTERM"))??;
    assert_eq!(status.code(), Some(0), "{status:?}");
    assert_eq!(parked.await??.as_u16(), 200);
    Ok(())
}
