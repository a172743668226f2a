//! The tree survives the deaths of its parts as supervision.md says.

use serde_json::Value;
use volt_stack::{ServiceStatus, TreeNode};

use crate::support::{Follower, Server, TestVolt, eventually};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, title text);
     INSERT INTO items VALUES (1, 'one'), (2, 'two');";

fn find<'a>(node: &'a TreeNode, pred: &dyn Fn(&TreeNode) -> bool) -> Option<&'a TreeNode> {
    if pred(node) {
        return Some(node);
    }
    node.children.iter().find_map(|c| find(c, pred))
}

/// Kill an actor the way chaos tests do: through the admin API.
async fn kill_actor(volt: &TestVolt, query: &str) -> anyhow::Result<Value> {
    let res = volt.post(&format!("/v1/admin/kill?{query}")).await?;
    anyhow::ensure!(
        res.status() == 202,
        "kill {query}: {} {}",
        res.status(),
        res.text().await?
    );
    Ok(res.json().await?)
}

/// Kill the ShapeLogCollector, which restarts the whole shape subsystem, and wait until
/// the stack is active again.
async fn restart_shape_subsystem(volt: &TestVolt) -> anyhow::Result<()> {
    kill_actor(volt, "kind=ShapeLogCollector").await?;
    eventually("the shape subsystem restarted", || async {
        Ok(volt.shared().actors.restarts("ShapeSubsystemSupervisor") >= 1)
    })
    .await?;
    volt.wait_active().await
}

#[tokio::test]
async fn tree_dump_lists_every_actor_with_its_parent() -> anyhow::Result<()> {
    let volt = TestVolt::start("tree_dump").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let tree: Value = volt.get("/v1/admin/tree").await?.json().await?;
    let parsed: TreeNode = {
        // Walk the JSON rather than trusting the Rust type: this is what users see.
        fn kinds(v: &Value, out: &mut Vec<(String, Option<String>, String)>) {
            out.push((
                v["kind"].as_str().unwrap_or_default().to_string(),
                v["parent"].as_str().map(str::to_string),
                v["id"].as_str().unwrap_or_default().to_string(),
            ));
            for c in v["children"].as_array().into_iter().flatten() {
                assert_eq!(c["parent"], v["id"]);
                assert!(c["status"].is_string() && c["restarts"].is_number());
                assert!(c["uptime_ms"].is_number(), "{c}");
                // The actors on the hot paths count their mailbox; the others say null.
                if ["ShapeLogCollector", "ShapeCache"].contains(&c["kind"].as_str().unwrap_or("")) {
                    assert!(c["mailbox"].is_number(), "{c}");
                }
                kinds(c, out);
            }
        }
        let mut all = Vec::new();
        kinds(&tree, &mut all);
        for kind in [
            "StackSupervisor",
            "StatusMonitor",
            "ShapeLogCollector",
            "ShapeCache",
            "ConsumerSupervisor",
            "Consumer",
            "ConnectionManager",
            "ReplicationClient",
        ] {
            assert!(
                all.iter().any(|(k, _, _)| k == kind),
                "{kind} missing from {tree}"
            );
        }
        volt.shared().tree().expect("tree")
    };
    let consumer = find(&parsed, &|n| n.kind == "Consumer").expect("consumer");
    assert!(consumer.name.contains(f.handle.as_deref().unwrap_or("?")));
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn admin_kill_finds_actors_by_path_name_or_kind_and_rejects_bad_selectors()
-> anyhow::Result<()> {
    let volt = TestVolt::start("admin_kill_selectors").await?;
    let path = "StackSupervisor/MonitoredCoreSupervisor/CoreSupervisor/ShapeSubsystemSupervisor/PublicationManager";
    let killed = kill_actor(&volt, &format!("path={path}&mode=stop")).await?;
    assert_eq!(killed["name"], "PublicationManager");
    assert_eq!(killed["mode"], "stop");
    // Restarted by its one-for-one parent, and counted.
    eventually("PublicationManager restarted", || async {
        let tree = volt.shared().tree().expect("tree");
        Ok(find(&tree, &|n| {
            n.name == "PublicationManager" && n.restarts >= 1
        })
        .is_some_and(|n| n.status == "running"))
    })
    .await?;
    for (query, status) in [
        ("kind=Consumer&shape=nope", 404),
        ("name=NoSuchActor", 404),
        ("path=StackSupervisor/Nope", 404),
        ("kind=ShapeCache&mode=gently", 400),
        ("kind=ShapeCache&name=ShapeCache", 400),
        ("", 400),
    ] {
        let res = volt.post(&format!("/v1/admin/kill?{query}")).await?;
        assert_eq!(res.status().as_u16(), status, "{query}");
    }
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn losing_the_replication_connection_restarts_only_the_connection_subsystem()
-> anyhow::Result<()> {
    let volt = TestVolt::start("replication_loss").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let handle = f.handle.clone();

    let admin = volt.db.client().await?;
    let killed = admin
        .query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&volt.db.slot_name()],
        )
        .await?;
    assert_eq!(killed.len(), 1, "the walsender was running");
    eventually("the connection manager restarted", || async {
        Ok(volt.shared().actors.restarts("ConnectionManager") >= 1)
    })
    .await?;
    volt.wait_active().await?;
    assert_eq!(volt.shared().actors.restarts("ShapeLogCollector"), 0);
    assert_eq!(volt.shared().actors.restarts("ShapeSubsystemSupervisor"), 0);

    volt.db
        .execute("INSERT INTO items VALUES (3, 'after')")
        .await?;
    f.until(&volt, "the insert after reconnecting", |f| {
        f.rows.len() == 3
    })
    .await?;
    assert_eq!(f.handle, handle, "the shape survived");
    assert_eq!(f.refetches, 0);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_dead_consumer_invalidates_only_its_own_shape() -> anyhow::Result<()> {
    let volt = TestVolt::start("consumer_death").await?;
    volt.db.execute(ITEMS).await?;
    let mut a = Follower::new("table=items&where=id%20%3D%201");
    let mut b = Follower::new("table=items&where=id%20%3D%202");
    a.catch_up(&volt).await?;
    b.catch_up(&volt).await?;
    let a_handle = a.handle.clone().expect("handle");
    kill_actor(&volt, &format!("kind=Consumer&shape={a_handle}")).await?;
    eventually("the shape is removed", || async {
        Ok(volt.shared().shapes.get(&a_handle).is_none())
    })
    .await?;

    volt.db
        .execute("UPDATE items SET title = 'changed'")
        .await?;
    b.until(&volt, "b sees the update", |f| {
        f.column("title") == ["changed"]
    })
    .await?;
    assert_eq!(b.refetches, 0);
    a.until(&volt, "a refetches and sees the update", |f| {
        f.refetches == 1 && f.column("title") == ["changed"]
    })
    .await?;
    assert_ne!(a.handle.as_deref(), Some(a_handle.as_str()), "a new handle");
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_killed_snapshotter_removes_its_shape_and_clients_get_a_new_one() -> anyhow::Result<()> {
    let volt = TestVolt::start("snapshotter_death").await?;
    volt.db
        .execute(
            "CREATE TABLE big (id int PRIMARY KEY, pad text);
             INSERT INTO big SELECT i, repeat(md5(i::text), 3) FROM generate_series(1, 100000) i;",
        )
        .await?;
    // The first request waits for the snapshot; kill its Snapshotter while it runs.
    let first = {
        let (base, http) = (volt.base().to_string(), volt.http().clone());
        tokio::spawn(async move {
            http.get(format!("{base}/v1/shape?table=big&offset=-1"))
                .send()
                .await
                .map(|r| r.status().as_u16())
        })
    };
    // Polled as fast as the endpoint answers: the snapshot takes about a second.
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    let killed: Value = loop {
        let res = volt
            .post("/v1/admin/kill?kind=Snapshotter&mode=kill")
            .await?;
        if res.status() == 202 {
            break res.json().await?;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "no Snapshotter to kill within 30 s"
        );
    };
    let name = killed["name"].as_str().unwrap_or_default().to_string();
    let handle = name
        .strip_prefix("Snapshotter:")
        .expect("a shape's Snapshotter");
    // The shape goes, even though no change ever reaches its dead consumer (it used to
    // stay registered, answering 503 to every request, for good).
    eventually("the shape is removed", || async {
        Ok(volt.shared().shapes.get(handle).is_none())
    })
    .await?;
    // Answered, however far the snapshot got: no hang, no 500.
    assert!(matches!(first.await?, Ok(200 | 409 | 503)));
    let mut f = Follower::new("table=big");
    f.catch_up(&volt).await?;
    assert_ne!(f.handle.as_deref(), Some(handle), "a new shape");
    assert_eq!(f.rows.len(), 100_000);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_shape_cache_keeps_existing_shapes() -> anyhow::Result<()> {
    let volt = TestVolt::start("shape_cache_restart").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    kill_actor(&volt, "name=ShapeCache&mode=stop").await?;
    eventually("ShapeCache restart counted", || async {
        let tree = volt.shared().tree().expect("tree");
        Ok(find(&tree, &|n| n.name == "ShapeCache" && n.restarts >= 1).is_some())
    })
    .await?;
    eventually("the shape cache restarted", || async {
        Ok(volt.shared().actors.restarts("ShapeCache") >= 1
            && volt.shared().status.status() == ServiceStatus::Active)
    })
    .await?;
    volt.db
        .execute("INSERT INTO items VALUES (3, 'three')")
        .await?;
    f.until(&volt, "the insert", |f| f.rows.len() == 3).await?;
    assert_eq!(f.refetches, 0);
    // And it still creates shapes.
    let mut g = Follower::new("table=items&where=id%20%3E%201");
    g.catch_up(&volt).await?;
    assert_eq!(g.column("id"), ["2", "3"]);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_dead_shape_log_collector_restarts_the_shape_subsystem_which_restores_its_shapes()
-> anyhow::Result<()> {
    let volt = TestVolt::start("slc_death").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    volt.db
        .execute("INSERT INTO items VALUES (3, 'three')")
        .await?;
    f.until(&volt, "the first insert", |f| f.rows.len() == 3)
        .await?;
    // The registry write buffer flushes every 50 ms; a shape not yet written would be
    // lost with the subsystem, as in Electric.
    eventually("the shape is in ShapeDb", || async {
        Ok(volt.shared().shape_db.load_all().await?.len() == 1)
    })
    .await?;
    restart_shape_subsystem(&volt).await?;
    volt.db
        .execute("INSERT INTO items VALUES (4, 'four')")
        .await?;
    f.until(&volt, "the insert after the restart", |f| f.rows.len() == 4)
        .await?;
    assert_eq!(f.refetches, 0, "the shape was restored from storage");
    assert_eq!(f.column("id"), ["1", "2", "3", "4"]);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_shape_subsystem_syncs_every_restored_log_before_declaring_more_durable()
-> anyhow::Result<()> {
    let volt = TestVolt::start("restore_syncs").await?;
    volt.db.execute(ITEMS).await?;
    let mut all = Follower::new("table=items");
    let mut one = Follower::new("table=items&where=id%20%3D%201");
    all.catch_up(&volt).await?;
    one.catch_up(&volt).await?;
    eventually("both shapes are in ShapeDb", || async {
        Ok(volt.shared().shape_db.load_all().await?.len() == 2)
    })
    .await?;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    volt.shared()
        .failpoints
        .hold_flush
        .store(Some(gate.clone()));
    restart_shape_subsystem(&volt).await?;
    // What the killed incarnation wrote may be in the page cache only: the new flusher's
    // first round (held here) has both restored logs to sync.
    eventually("both restored logs are queued for a sync", || async {
        Ok(volt.shared().durability.queue().len() == 2)
    })
    .await?;
    let durable = volt.shared().durability.durable_lsn();
    volt.db
        .execute("UPDATE items SET title = 'uno' WHERE id = 1")
        .await?;
    all.until(&volt, "the update, served before any sync", |f| {
        f.changes.len() == 1
    })
    .await?;
    assert_eq!(volt.shared().durability.durable_lsn(), durable);
    let lsn = all.change_lsn(0)?;
    volt.shared().failpoints.hold_flush.store(None);
    gate.add_permits(1 << 20);
    eventually(
        "the update is durable once the restored logs are synced",
        || async { Ok(volt.shared().durability.durable_lsn() >= lsn) },
    )
    .await?;
    assert_eq!((all.refetches, one.refetches), (0, 0));
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn existing_shapes_keep_serving_while_the_database_is_unreachable() -> anyhow::Result<()> {
    let volt = TestVolt::start("db_unreachable").await?;
    volt.db.execute(ITEMS).await?;
    let writer = volt.db.client().await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let handle = f.handle.clone();

    // Keep volt out: no new connections to the database, and its current ones ended.
    let (admin, conn) = tokio_postgres::connect(volt.db.admin_url(), tokio_postgres::NoTls).await?;
    let conn_task = tokio::spawn(conn);
    let db = volt.db.database_name().to_string();
    admin
        .batch_execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS false"))
        .await?;
    admin
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = $1 AND application_name LIKE 'volt%'",
            &[&db],
        )
        .await?;
    eventually("volt notices the database is gone", || async {
        Ok(volt.shared().status.status() != ServiceStatus::Active)
    })
    .await?;

    // The shape is still served from storage.
    let res = crate::support::fetch(
        &volt,
        &format!(
            "table=items&offset={}&handle={}",
            f.offset,
            handle.as_deref().unwrap_or_default()
        ),
    )
    .await?;
    assert_eq!(res.status, 200, "{}", res.body);
    // A live request parked while the stream is down cannot honestly say "up to date"
    // when its wait ends: 503 with retry-after, and the client comes back.
    let res = volt
        .get(&format!(
            "/v1/shape?table=items&live=true&offset={}&handle={}",
            f.offset,
            handle.as_deref().unwrap_or_default()
        ))
        .await?;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));
    // A new shape cannot be validated without the database: 503 with retry-after.
    let res = volt
        .get("/v1/shape?table=items&offset=-1&where=id%20%3E%201")
        .await?;
    assert_eq!(res.status(), 503);
    assert!(res.headers().contains_key("retry-after"));

    admin
        .batch_execute(&format!("ALTER DATABASE \"{db}\" ALLOW_CONNECTIONS true"))
        .await?;
    writer
        .batch_execute("INSERT INTO items VALUES (3, 'back')")
        .await?;
    volt.wait_active().await?;
    f.until(&volt, "the insert made while volt was away", |f| {
        f.rows.len() == 3
    })
    .await?;
    assert_eq!(f.handle, handle);
    assert_eq!(f.refetches, 0);
    drop(admin);
    conn_task.abort();
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn volt_tree_prints_the_live_tree_of_a_running_volt() -> anyhow::Result<()> {
    let volt = TestVolt::start("volt_tree_cli").await?;
    let out = tokio::process::Command::new(crate::support::volt_bin())
        .args(["tree", "--url", volt.base()])
        .env_remove("ELECTRIC_SECRET")
        .output()
        .await?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("StackSupervisor  [running, up "), "{text}");
    for line in [
        "└── MonitoredCoreSupervisor  [running, up ",
        "    │   │       └── ReplicationClient  [running, up ",
        "    │       └── ShapeLogCollector  [running, up ",
        "    └── StatusMonitor  [running, up ",
    ] {
        assert!(text.contains(line), "{line:?} missing from\n{text}");
    }
    volt.stop().await;

    // Nobody listening: a one-line error and a failure code, not a panic.
    let out = tokio::process::Command::new(crate::support::volt_bin())
        .args([
            "tree",
            "--url",
            &format!("http://127.0.0.1:{}", crate::support::free_port()?),
        ])
        .output()
        .await?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach volt"));
    Ok(())
}

#[tokio::test]
async fn a_second_volt_on_the_same_slot_waits_for_the_lock_and_takes_over() -> anyhow::Result<()> {
    use crate::support::{VoltProcess, free_port};
    use volt_test_support::TestDb;
    let db = TestDb::new("slot_lock_handover").await?;
    db.execute(ITEMS).await?;
    let (dir_a, dir_b) = (tempfile::tempdir()?, tempfile::tempdir()?);
    let a = VoltProcess::start(&db, dir_a.path(), free_port()?).await?;
    let b = VoltProcess::spawn(&db, dir_b.path(), free_port()?)?;
    // The second instance waits on the slot's advisory lock, and says so.
    b.wait_health("waiting", dir_b.path()).await?;
    let mut fa = Follower::new("table=items");
    fa.catch_up(&a).await?;
    assert_eq!(fa.rows.len(), 2);

    // The first one goes away (a crash: no clean shutdown); the second takes over and
    // streams what is written afterwards.
    a.kill_9().await?;
    b.wait_health("active", dir_b.path()).await?;
    db.execute("INSERT INTO items VALUES (3, 'three')").await?;
    let mut fb = Follower::new("table=items");
    fb.until(&b, "the row written after the takeover", |f| {
        f.rows.len() == 3
    })
    .await?;
    b.kill_9().await?;
    Ok(())
}

/// A rolling deploy with the storage directory shared: the next instance serves the
/// stored shapes read-only while it waits for the slot's lock (following the first one's
/// writes), then takes them over without a new snapshot; its clients never refetch.
#[tokio::test]
async fn a_rolling_deploy_on_shared_storage_serves_read_only_then_takes_over_without_a_snapshot()
-> anyhow::Result<()> {
    use crate::support::{VoltProcess, fetch, free_port, snapshot_queries_in};
    use volt_test_support::TestDb;
    let db = TestDb::new("rolling_shared").await?;
    db.execute(ITEMS).await?;
    let storage = tempfile::tempdir()?;
    let a = VoltProcess::start(&db, storage.path(), free_port()?).await?;
    let mut on_a = Follower::new("table=items");
    on_a.catch_up(&a).await?;
    let handle = on_a.handle.clone();
    db.execute("INSERT INTO items VALUES (3, 'three')").await?;
    on_a.until(&a, "row 3 on the first instance", |f| f.rows.len() == 3)
        .await?;

    let b = VoltProcess::spawn(&db, storage.path(), free_port()?)?;
    b.wait_health("waiting", storage.path()).await?;
    // The waiting instance serves the stored shape, same handle, from offset -1...
    let mut on_b = Follower::new("table=items");
    on_b.catch_up(&b).await?;
    assert_eq!(on_b.handle, handle);
    assert_eq!(on_b.column("title"), on_a.column("title"));
    // ...and from where a client of the first one got to.
    let mut moved = Follower {
        rows: on_a.rows.clone(),
        ..Follower::new("table=items")
    };
    moved.handle = on_a.handle.clone();
    moved.offset = on_a.offset.clone();
    moved.poll(&b, false).await?;
    // It follows what the first instance writes, live.
    db.execute("INSERT INTO items VALUES (4, 'four')").await?;
    on_b.until(&b, "row 4 followed on the waiting instance", |f| {
        f.rows.len() == 4
    })
    .await?;
    // It creates nothing and removes nothing: those are the writer's.
    let res = fetch(&b, "table=items&where=id>1&offset=-1").await?;
    assert_eq!(res.status, 503, "{}", res.body);
    let snapshots = snapshot_queries_in(&db, "items").await?;

    // The first instance stops (SIGTERM, as a deploy does); the second takes over.
    assert!(a.terminate().await?.success());
    let stopped = std::time::Instant::now();
    b.wait_health("active", storage.path()).await?;
    // Recorded, not asserted (shared machines are noisy): the bound is 10 s.
    eprintln!(
        "takeover took {:?} after the first instance exited",
        stopped.elapsed()
    );
    db.execute("INSERT INTO items VALUES (5, 'five')").await?;
    on_b.until(&b, "row 5 after the takeover", |f| f.rows.len() == 5)
        .await?;
    moved
        .until(&b, "the moved client catches up", |f| f.rows.len() == 5)
        .await?;
    assert_eq!(on_b.handle, handle, "the shape kept its handle");
    assert_eq!((on_b.refetches, moved.refetches), (0, 0));
    assert_eq!(
        snapshot_queries_in(&db, "items").await?,
        snapshots,
        "no new snapshot"
    );
    // Row 3 from the first instance's log, 4 followed, 5 after the takeover: once each.
    let keys: Vec<&str> = on_b
        .changes
        .iter()
        .filter_map(|c| c["key"].as_str())
        .collect();
    assert_eq!(
        keys,
        [
            "\"public\".\"items\"/\"3\"",
            "\"public\".\"items\"/\"4\"",
            "\"public\".\"items\"/\"5\""
        ]
    );
    b.kill_9().await?;
    Ok(())
}

/// The writer loses the slot's lock (its session ends) to an instance sharing its storage,
/// which then writes there; when the lock comes back, the first instance reloads the
/// storage instead of writing on from its stale view, and its clients carry on.
#[tokio::test]
async fn an_instance_that_lost_the_lock_reloads_the_shared_storage_when_it_gets_it_back()
-> anyhow::Result<()> {
    use crate::support::{VoltProcess, free_port};
    use volt_test_support::TestDb;
    let db = TestDb::new("lock_lost_shared").await?;
    db.execute(ITEMS).await?;
    let storage = tempfile::tempdir()?;
    let a = VoltProcess::start(&db, storage.path(), free_port()?).await?;
    let mut on_a = Follower::new("table=items");
    on_a.catch_up(&a).await?;
    let b = VoltProcess::spawn(&db, storage.path(), free_port()?)?;
    b.wait_health("waiting", storage.path()).await?;

    // The first instance's lock-holding session ends; the second gets the lock.
    let admin = db.client().await?;
    admin
        .batch_execute(
            // This database's lock only: other tests run beside this one.
            "SELECT pg_terminate_backend(pid) FROM pg_locks \
             WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid() \
               AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
        )
        .await?;
    b.wait_health("active", storage.path()).await?;
    a.wait_health("waiting", storage.path()).await?;
    db.execute("INSERT INTO items VALUES (3, 'three')").await?;
    let mut on_b = Follower::new("table=items");
    on_b.until(&b, "row 3 on the second instance", |f| f.rows.len() == 3)
        .await?;

    // The second one crashes; the first gets the lock back and sees what it wrote.
    b.kill_9().await?;
    a.wait_health("active", storage.path()).await?;
    db.execute("INSERT INTO items VALUES (4, 'four')").await?;
    on_a.until(&a, "rows 3 and 4 on the first instance", |f| {
        f.rows.len() == 4
    })
    .await?;
    assert_eq!(on_a.refetches, 0);
    assert_eq!(on_a.handle, on_b.handle);
    // It got there by reloading: its shape subsystem restarted once.
    let tree: Value = reqwest::get(format!("{}/v1/admin/tree", a.base()))
        .await?
        .json()
        .await?;
    fn restarts_of(v: &Value, kind: &str) -> Option<u64> {
        if v["kind"] == kind {
            return v["restarts"].as_u64();
        }
        v["children"]
            .as_array()
            .into_iter()
            .flatten()
            .find_map(|c| restarts_of(c, kind))
    }
    assert_eq!(
        restarts_of(&tree, "ShapeSubsystemSupervisor"),
        Some(1),
        "{tree}"
    );
    a.kill_9().await?;
    Ok(())
}

#[tokio::test]
async fn a_snapshot_cut_off_by_the_database_is_a_503_to_retry_not_a_409() -> anyhow::Result<()> {
    let volt = TestVolt::start("snapshot_cut_off").await?;
    volt.db.execute(ITEMS).await?;
    // A first shape publishes the table, so the next one goes straight to its query.
    Follower::new("table=items").catch_up(&volt).await?;

    // Hold the table so the next snapshot query waits, then end that query's session.
    let locker = volt.db.client().await?;
    locker
        .batch_execute("BEGIN; LOCK TABLE items IN ACCESS EXCLUSIVE MODE")
        .await?;
    let base = {
        use crate::support::Server;
        volt.base().to_string()
    };
    let request = tokio::spawn(async move {
        reqwest::get(format!(
            "{base}/v1/shape?table=items&offset=-1&where=id%20%3E%201"
        ))
        .await
    });
    let admin = volt.db.client().await?;
    let db = volt.db.database_name().to_string();
    eventually("the snapshot query waits on the lock", || async {
        let n = admin
            .execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
                 WHERE datname = $1 AND application_name LIKE 'volt%' \
                   AND wait_event_type = 'Lock' \
                   AND (query LIKE 'SELECT%' OR query LIKE 'COPY%' OR query LIKE 'BEGIN%')",
                &[&db],
            )
            .await?;
        Ok(n > 0)
    })
    .await?;
    let res = request.await??;
    assert_eq!(res.status(), 503, "{}", res.text().await?);
    assert!(res.headers().contains_key("retry-after"));

    // Once the table is free, the client's retry (after the failed shape is gone) works.
    locker.batch_execute("ROLLBACK").await?;
    eventually("the retried request is served", || async {
        let res = crate::support::fetch(&volt, "table=items&offset=-1&where=id%20%3E%201").await?;
        anyhow::ensure!(
            res.status != 409,
            "a 409 for a failed snapshot: {}",
            res.body
        );
        Ok(res.status == 200)
    })
    .await?;
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_live_request_parked_across_a_replication_reconnect_gets_the_change() -> anyhow::Result<()>
{
    use crate::support::{Server, Tweaks};
    let volt = TestVolt::start_tweaked(
        "parked_across_reconnect",
        Tweaks {
            long_poll: Some(std::time::Duration::from_secs(60)),
            ..Tweaks::default()
        },
    )
    .await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let url = format!(
        "{}/v1/shape?table=items&live=true&handle={}&offset={}",
        volt.base(),
        f.handle.as_deref().unwrap_or_default(),
        f.offset
    );
    let parked = tokio::spawn(async move { reqwest::get(url).await?.text().await });
    eventually("the live request is parked", || async {
        Ok(volt.admission.stats().existing_in_use == 1)
    })
    .await?;

    // The stream goes away and comes back while the request waits.
    let admin = volt.db.client().await?;
    admin
        .execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
            &[&volt.db.slot_name()],
        )
        .await?;
    eventually("the connection manager restarted", || async {
        Ok(volt.shared().actors.restarts("ConnectionManager") >= 1)
    })
    .await?;
    volt.wait_active().await?;
    volt.db
        .execute("INSERT INTO items VALUES (3, 'after')")
        .await?;
    let body = parked.await??;
    assert!(body.contains("\"after\""), "{body}");
    volt.stop().await;
    Ok(())
}
