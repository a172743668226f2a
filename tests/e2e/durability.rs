//! Shapes survive restarts: recovered from ShapeDb and disk, never re-snapshotted, and
//! clients resume with their handle and offset.

use std::time::Duration;

use anyhow::Context;
use volt_stack::shared::ConsumerHold;

use crate::support::{Follower, TestVolt, Tweaks, eventually, fetch, snapshot_queries};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, title text, v int NOT NULL DEFAULT 0);
     INSERT INTO items SELECT g, 'row ' || g, 0 FROM generate_series(1, 20) g;";

#[tokio::test]
async fn a_restarted_volt_resumes_shapes_without_a_new_snapshot() -> anyhow::Result<()> {
    let mut volt = TestVolt::start("restart_resumes").await?;
    volt.db.execute(ITEMS).await?;
    snapshot_queries(&volt, "items").await?;
    let mut all = Follower::new("table=items");
    let mut some = Follower::new("table=items&where=id%20%3C%3D%205");
    all.catch_up(&volt).await?;
    some.catch_up(&volt).await?;
    volt.db
        .execute("UPDATE items SET v = v + 1 WHERE id IN (1, 10)")
        .await?;
    all.until(&volt, "the first update", |f| f.changes.len() == 2)
        .await?;
    let snapshots = snapshot_queries(&volt, "items").await?;
    assert_eq!(snapshots, 2);
    eventually("both shapes are in ShapeDb", || async {
        Ok(volt.shared().shape_db.load_all().await?.len() == 2)
    })
    .await?;
    let stats: serde_json::Value = volt.get("/v1/admin/stats").await?.json().await?;
    assert_eq!(stats["registry_unwritten"], 0, "{stats}");
    assert!(stats["cache_bytes"]["live_reads"].is_u64(), "{stats}");
    assert!(stats["durable_lsn"].is_string(), "{stats}");

    volt.restart().await?;
    assert_eq!(volt.shared().shapes.len(), 2, "both shapes restored");
    // Changes made while volt was down and after it came back both arrive.
    volt.db
        .execute("UPDATE items SET v = v + 1 WHERE id IN (1, 10)")
        .await?;
    volt.db.execute("DELETE FROM items WHERE id = 2").await?;
    all.until(&volt, "the changes after the restart", |f| {
        f.rows.len() == 19 && f.changes.len() == 5
    })
    .await?;
    some.until(&volt, "the small shape too", |f| f.rows.len() == 4)
        .await?;
    assert_eq!((all.refetches, some.refetches), (0, 0));
    assert_eq!(
        snapshot_queries(&volt, "items").await?,
        snapshots,
        "no new snapshot"
    );
    // Each row's updates arrived once each: no duplicate from a replayed transaction.
    let v1: Vec<&str> = all
        .changes
        .iter()
        .filter(|c| c["key"] == "\"public\".\"items\"/\"1\"")
        .filter_map(|c| c["value"]["v"].as_str())
        .collect();
    assert_eq!(v1, ["1", "2"]);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_new_shape_after_a_restart_gets_a_handle_never_used_before() -> anyhow::Result<()> {
    let mut volt = TestVolt::start("restart_new_handles").await?;
    volt.db.execute(ITEMS).await?;
    let mut a = Follower::new("table=items&where=id%20%3D%201");
    a.catch_up(&volt).await?;
    eventually("the shape is in ShapeDb", || async {
        Ok(volt.shared().shape_db.load_all().await?.len() == 1)
    })
    .await?;
    volt.restart().await?;
    let mut b = Follower::new("table=items&where=id%20%3D%202");
    b.catch_up(&volt).await?;
    assert_ne!(a.handle, b.handle);
    let mut a2 = Follower::new("table=items&where=id%20%3D%201");
    a2.catch_up(&volt).await?;
    assert_eq!(
        a2.handle, a.handle,
        "the same definition finds the restored shape"
    );
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn truncate_invalidates_only_that_tables_shapes() -> anyhow::Result<()> {
    let volt = TestVolt::start("truncate_invalidates").await?;
    volt.db.execute(ITEMS).await?;
    volt.db
        .execute("CREATE TABLE other (id int PRIMARY KEY); INSERT INTO other VALUES (1)")
        .await?;
    let mut items = Follower::new("table=items");
    let mut other = Follower::new("table=other");
    items.catch_up(&volt).await?;
    other.catch_up(&volt).await?;
    let old = items.handle.clone();
    volt.db.execute("TRUNCATE items").await?;
    volt.db
        .execute("INSERT INTO items (id, title) VALUES (99, 'after')")
        .await?;
    volt.db.execute("INSERT INTO other VALUES (2)").await?;
    items
        .until(&volt, "a refetch after the truncate", |f| {
            f.refetches == 1 && f.column("id") == ["99"]
        })
        .await?;
    assert_ne!(items.handle, old);
    other
        .until(&volt, "the other table", |f| f.rows.len() == 2)
        .await?;
    assert_eq!(other.refetches, 0);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn schema_changes_invalidate_the_tables_shapes() -> anyhow::Result<()> {
    let volt = TestVolt::start("schema_change_invalidates").await?;
    volt.db.execute(ITEMS).await?;
    for (i, ddl) in [
        "ALTER TABLE items ADD COLUMN extra text",
        "ALTER TABLE items DROP COLUMN extra",
        "ALTER TABLE items RENAME COLUMN title TO name",
        "ALTER TABLE items ALTER COLUMN v TYPE bigint",
    ]
    .into_iter()
    .enumerate()
    {
        let mut f = Follower::new("table=items");
        f.catch_up(&volt).await?;
        let old = f.handle.clone();
        volt.db.execute(ddl).await?;
        // The Relation message that reveals the change comes with the next write.
        volt.db
            .execute(&format!("UPDATE items SET v = v + 1 WHERE id = {}", i + 1))
            .await?;
        f.until(&volt, ddl, |f| f.refetches == 1).await?;
        f.catch_up(&volt).await?;
        assert_ne!(f.handle, old, "{ddl}");
        assert_eq!(f.rows.len(), 20, "{ddl}");
    }
    volt.stop().await;
    Ok(())
}

async fn published(volt: &TestVolt, table: &str) -> anyhow::Result<bool> {
    let client = volt.db.client().await?;
    Ok(client
        .query_opt(
            "SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND tablename = $2",
            &[&volt.db.publication_name(), &table],
        )
        .await?
        .is_some())
}

#[tokio::test]
async fn a_shape_whose_log_is_unreadable_is_removed_and_its_clients_sync_again()
-> anyhow::Result<()> {
    let volt = TestVolt::start("unreadable_log").await?;
    volt.db.execute(ITEMS).await?;
    let mut first = Follower::new("table=items");
    first.catch_up(&volt).await?;
    let handle = first.handle.clone().context("no handle")?;
    volt.db
        .execute("INSERT INTO items VALUES (21, 'row 21', 0)")
        .await?;
    first
        .until(&volt, "the insert arrives", |f| f.rows.len() == 21)
        .await?;
    // The record's bytes change on disk (a media error, or a crash that lost a page the
    // index says was written): its checksum no longer matches.
    let log = volt
        .storage
        .path()
        .join("shapes")
        .join(&handle)
        .join("log.bin");
    let json_start = 21;
    // Commits are read from memory until a flush round writes them out.
    eventually("the insert is written out", || async {
        Ok(std::fs::metadata(&log).is_ok_and(|m| m.len() > json_start as u64))
    })
    .await?;
    let mut bytes = std::fs::read(&log)?;
    bytes[json_start] ^= 0x20;
    std::fs::write(&log, &bytes)?;
    // A later change, so that no read made before the damage answers for the log's
    // start (live responses are shared from memory).
    volt.db
        .execute("INSERT INTO items VALUES (22, 'row 22', 0)")
        .await?;
    first
        .until(&volt, "the second insert arrives", |f| f.rows.len() == 22)
        .await?;

    // Read from the start, the log is unreadable: the shape goes, and the client's
    // refetch builds it again from Postgres, with every row.
    let mut second = Follower::new("table=items");
    second.catch_up(&volt).await?;
    assert_eq!(second.refetches, 1, "one 409, then a new shape");
    assert_ne!(second.handle.as_deref(), Some(handle.as_str()));
    assert_eq!(second.column("title"), first.column("title"));
    assert!(!shape_dir_exists(&volt, &handle), "its files are gone");
    volt.stop().await;
    Ok(())
}

fn shape_dir_exists(volt: &TestVolt, handle: &str) -> bool {
    volt.storage.path().join("shapes").join(handle).exists()
}

#[tokio::test]
async fn ddl_without_a_later_write_and_drop_table_are_caught_by_the_reconciler()
-> anyhow::Result<()> {
    let volt = TestVolt::start("reconciler").await?;
    volt.db.execute(ITEMS).await?;
    volt.db
        .execute("CREATE TABLE doomed (id int PRIMARY KEY); INSERT INTO doomed VALUES (1)")
        .await?;
    let mut items = Follower::new("table=items");
    let mut doomed = Follower::new("table=doomed");
    items.catch_up(&volt).await?;
    doomed.catch_up(&volt).await?;
    volt.db
        .execute("ALTER TABLE items ADD COLUMN note text")
        .await?;
    volt.db.execute("DROP TABLE doomed").await?;
    items
        .until(&volt, "the altered table's shape is invalidated", |f| {
            f.refetches == 1
        })
        .await?;
    items.catch_up(&volt).await?;
    assert!(
        items.rows.values().all(|r| r.contains_key("note")),
        "the new shape has the new column"
    );
    // The dropped table's shape is gone; asking again is a 400 naming the table.
    let h = doomed.handle.clone().unwrap_or_default();
    eventually("the dropped table's shape is gone", || async {
        Ok(volt.shared().shapes.get(&h).is_none())
    })
    .await?;
    let res = volt.get("/v1/shape?table=doomed&offset=-1").await?;
    assert_eq!(res.status(), 400);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn delete_removes_the_shape_its_files_and_its_publication_membership() -> anyhow::Result<()> {
    let volt = TestVolt::start("delete_shape").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let handle = f.handle.clone().unwrap_or_default();
    assert!(shape_dir_exists(&volt, &handle));
    assert!(published(&volt, "items").await?);

    let del = |q: &'static str| {
        let v = &volt;
        async move {
            anyhow::Ok(
                v.http
                    .delete(format!("{}/v1/shape?{q}", v.base))
                    .send()
                    .await?
                    .status()
                    .as_u16(),
            )
        }
    };
    assert_eq!(del("offset=-1").await?, 400, "neither table nor handle");
    assert_eq!(del("table=items&where=id%20%3D%201").await?, 404);
    assert_eq!(
        volt.http
            .delete(format!("{}/v1/shape?table=items&handle=other", volt.base))
            .send()
            .await?
            .status(),
        400,
        "definition and handle disagree"
    );
    assert_eq!(del("table=items").await?, 202);
    assert!(
        !shape_dir_exists(&volt, &handle),
        "files leave the shape directory at once"
    );
    eventually("the table leaves the publication", || async {
        Ok(!published(&volt, "items").await?)
    })
    .await?;
    eventually("the trash is emptied", || async {
        let trash = volt.storage.path().join("trash");
        Ok(std::fs::read_dir(&trash)
            .map(|d| d.count() == 0)
            .unwrap_or(true))
    })
    .await?;
    let old = fetch(
        &volt,
        &format!("table=items&offset={}&handle={handle}", f.offset),
    )
    .await?;
    assert_eq!(old.status, 409);
    assert_ne!(old.handle.as_deref(), Some(handle.as_str()), "a new handle");
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn past_max_shapes_the_least_recently_read_shape_is_evicted() -> anyhow::Result<()> {
    let volt = TestVolt::start_tweaked(
        "max_shapes",
        Tweaks {
            max_shapes: Some(2),
            ..Tweaks::default()
        },
    )
    .await?;
    volt.db.execute(ITEMS).await?;
    let mut a = Follower::new("table=items&where=id%20%3D%201");
    let mut b = Follower::new("table=items&where=id%20%3D%202");
    a.catch_up(&volt).await?;
    b.catch_up(&volt).await?;
    // Read `a` again so `b` is the least recently read.
    a.poll(&volt, false).await?;
    let b_handle = b.handle.clone().unwrap_or_default();
    let mut c = Follower::new("table=items&where=id%20%3D%203");
    c.catch_up(&volt).await?;
    assert_eq!(volt.shared().shapes.len(), 2);
    assert!(
        volt.shared().shapes.get(&b_handle).is_none(),
        "b was evicted"
    );
    assert!(!shape_dir_exists(&volt, &b_handle));
    assert_eq!(b.poll(&volt, false).await.ok(), Some(false));
    assert_eq!(b.refetches, 1);
    volt.stop().await;
    Ok(())
}

/// A tmpfs of a few MiB, unmounted on drop; `None` where mounting is not allowed.
struct TinyDisk {
    dir: tempfile::TempDir,
}

impl TinyDisk {
    fn mount(size: &str) -> Option<TinyDisk> {
        let dir = tempfile::tempdir().ok()?;
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(TinyDisk { dir })
    }

    /// Fill it until writes fail; the returned file gives the space back when removed.
    fn fill(&self) -> anyhow::Result<std::path::PathBuf> {
        use std::io::Write;
        let path = self.dir.path().join("filler");
        let mut f = std::fs::File::create(&path)?;
        let block = vec![0u8; 4096];
        while f.write_all(&block).and_then(|_| f.sync_data()).is_ok() {}
        Ok(path)
    }
}

impl Drop for TinyDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[tokio::test]
async fn a_full_disk_holds_replication_and_reports_it_until_space_returns() -> anyhow::Result<()> {
    // Small enough to stay in memory at its commit: the flush round finds the disk full.
    full_disk_holds_replication("disk_full", 2_000).await
}

#[tokio::test]
async fn a_transaction_larger_than_the_write_buffer_is_held_on_a_full_disk_until_space_returns()
-> anyhow::Result<()> {
    // Larger than the write buffer: its appends keep what they cannot write out in
    // memory, and its commit, which must write it out, finds the disk full and hands
    // itself to the shape's Consumer to retry.
    full_disk_holds_replication("disk_full_commit", 8_000).await
}

/// Fill the disk, update 10 rows with `title_bytes` each, and check that the update is
/// held (health reporting the full disk) and delivered once space is back.
async fn full_disk_holds_replication(name: &str, title_bytes: usize) -> anyhow::Result<()> {
    let Some(disk) = TinyDisk::mount("4m") else {
        eprintln!("skipped: mounting a small tmpfs needs root (CI runs as root)");
        return Ok(());
    };
    let volt = TestVolt::start_tweaked(
        name,
        Tweaks {
            storage: Some(disk.dir.path().join("volt")),
            ..Tweaks::default()
        },
    )
    .await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let filler = disk.fill()?;
    volt.db
        .execute(&format!(
            "UPDATE items SET title = repeat('x', {title_bytes}) WHERE id <= 10"
        ))
        .await?;
    eventually("health reports the full disk", || async {
        Ok(volt.get("/v1/health").await?.status() == 503)
    })
    .await?;
    let res = volt
        .get("/v1/shape?table=items&offset=-1&where=id%20%3D%201")
        .await?;
    assert_eq!(res.status(), 503, "no new shape while the disk is full");
    assert!(res.headers().contains_key("retry-after"));

    std::fs::remove_file(&filler)?;
    f.until(&volt, "the held transaction once space is back", |f| {
        f.changes.len() == 10
    })
    .await?;
    assert_eq!(f.refetches, 0);
    eventually("health recovers", || async {
        Ok(volt.get("/v1/health").await?.status() == 200)
    })
    .await?;
    volt.stop().await;
    drop(disk);
    Ok(())
}

#[tokio::test]
async fn a_clean_shutdown_acknowledges_everything_stored_before_it_exits() -> anyhow::Result<()> {
    // Flush rounds spaced further apart than the test lasts: the shutdown's own rounds
    // do not wait for the interval.
    let mut volt = TestVolt::start_tweaked(
        "clean_shutdown_acks",
        Tweaks {
            flush_interval: Some(Duration::from_secs(3600)),
            ..Tweaks::default()
        },
    )
    .await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    volt.db
        .execute("UPDATE items SET v = 1 WHERE id = 1")
        .await?;
    f.until(&volt, "the update", |f| f.changes.len() == 1)
        .await?;
    let stored = f.change_lsn(0)?;
    volt.stack.take().context("running")?.stop().await;
    // No waiting: by the time stop returns, Postgres knows.
    let confirmed = confirmed_flush(&volt).await?;
    assert!(
        confirmed >= stored,
        "confirmed {confirmed} < stored {stored}"
    );
    volt.stop().await;
    Ok(())
}

/// The slot's confirmed position, as Postgres has it.
async fn confirmed_flush(volt: &TestVolt) -> anyhow::Result<u64> {
    let client = volt.db.client().await?;
    let row = client
        .query_one(
            "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::text FROM pg_replication_slots WHERE slot_name = $1",
            &[&volt.db.slot_name()],
        )
        .await?;
    Ok(row.get::<_, String>(0).parse()?)
}

#[tokio::test]
async fn a_transaction_is_recorded_as_written_only_once_every_earlier_one_is() -> anyhow::Result<()>
{
    let volt = TestVolt::start("written_in_order").await?;
    volt.db.execute(ITEMS).await?;
    let mut one = Follower::new("table=items&where=id%20%3D%201");
    let mut two = Follower::new("table=items&where=id%20%3D%202");
    one.catch_up(&volt).await?;
    two.catch_up(&volt).await?;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let held = one.handle.clone().context("no handle")?;
    volt.shared()
        .failpoints
        .hold_consumer
        .store(Some(std::sync::Arc::new(ConsumerHold::new(
            held,
            gate.clone(),
        ))));
    volt.db
        .execute("UPDATE items SET v = 1 WHERE id = 1")
        .await?;
    volt.db
        .execute("UPDATE items SET v = 2 WHERE id = 2")
        .await?;
    // The collector routes the second transaction while the first waits in shape one's
    // Consumer, and shape two stores it; but it is not written until the first is.
    two.until(&volt, "the second transaction", |f| f.changes.len() == 1)
        .await?;
    let second = two.change_lsn(0)?;
    // Shape two's Consumer told the collector before the change could be read: once the
    // collector's mailbox is empty, it has settled whatever it may.
    eventually("the collector has handled its mailbox", || async {
        Ok(volt
            .shared()
            .shape_log_collector
            .load_full()
            .is_some_and(|slc| slc.depth().depth() == 0))
    })
    .await?;
    let written = volt.shared().durability.written_lsn();
    assert!(written < second, "written {written} past {second}");

    volt.shared().failpoints.hold_consumer.store(None);
    gate.add_permits(1 << 20);
    one.until(&volt, "the first transaction", |f| f.changes.len() == 1)
        .await?;
    let first = one.change_lsn(0)?;
    assert!(written < first && first < second);
    eventually("both are written", || async {
        Ok(volt.shared().durability.written_lsn() > second)
    })
    .await?;
    assert_eq!((one.refetches, two.refetches), (0, 0));
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_part_behind_one_its_consumer_still_holds_is_stored_after_it_by_the_consumer()
-> anyhow::Result<()> {
    let volt = TestVolt::start("queued_behind").await?;
    volt.db.execute(ITEMS).await?;
    let mut one = Follower::new("table=items&where=id%20%3D%201");
    let mut two = Follower::new("table=items&where=id%20%3D%202");
    one.catch_up(&volt).await?;
    two.catch_up(&volt).await?;
    let handle = one.handle.clone().context("no handle")?;
    let log = volt
        .shared()
        .shapes
        .get(&handle)
        .context("shape one")?
        .log
        .clone();
    let before = log.latest_offset();
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    let hold = std::sync::Arc::new(ConsumerHold::new(handle.clone(), gate.clone()));
    volt.shared()
        .failpoints
        .hold_consumer
        .store(Some(hold.clone()));
    volt.db
        .execute("UPDATE items SET v = 1 WHERE id = 1")
        .await?;
    eventually("shape one's Consumer holds the first update", || async {
        Ok(hold.waiting.load(std::sync::atomic::Ordering::Acquire) == 1)
    })
    .await?;
    // From here the collector would store shape one's parts itself, but for the one its
    // Consumer still holds.
    volt.shared().failpoints.hold_consumer.store(None);
    volt.db
        .execute("UPDATE items SET v = 2 WHERE id = 1")
        .await?;
    volt.db
        .execute("UPDATE items SET v = 3 WHERE id = 2")
        .await?;
    // Routed after the second update: that one has been routed too.
    two.until(&volt, "the third update", |f| f.changes.len() == 1)
        .await?;
    assert_eq!(
        log.latest_offset(),
        before,
        "shape one stored a transaction past the one its Consumer holds"
    );

    gate.add_permits(1 << 20);
    one.until(&volt, "both updates", |f| f.changes.len() == 2)
        .await?;
    let values: Vec<&str> = one
        .changes
        .iter()
        .map(|c| c["value"]["v"].as_str().unwrap_or_default())
        .collect();
    assert_eq!(values, ["1", "2"]);
    assert!(one.change_lsn(0)? < one.change_lsn(1)?);
    assert_eq!((one.refetches, two.refetches), (0, 0));
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_transaction_buffered_for_a_snapshot_is_not_declared_durable_until_stored()
-> anyhow::Result<()> {
    use std::sync::Arc;
    use tokio::sync::Semaphore;
    let volt = TestVolt::start("buffered_hold").await?;
    volt.db.execute(ITEMS).await?;
    // A new shape whose snapshot waits: its Consumer is routed to meanwhile, and buffers.
    let snapshot_gate = Arc::new(Semaphore::new(0));
    volt.shared()
        .failpoints
        .hold_snapshot
        .store(Some(snapshot_gate.clone()));
    let url = format!(
        "{}/v1/shape?table=items&offset=-1&where=id%20%3D%2042",
        volt.base
    );
    let creating = tokio::spawn(async move { reqwest::get(url).await?.text().await });
    // Routed to once registered; its table published before the snapshot (held) starts.
    eventually(
        "the new shape is routed to and its table published",
        || async { Ok(volt.shared().shapes.len() == 1 && published(&volt, "items").await?) },
    )
    .await?;
    let flush_gate = Arc::new(Semaphore::new(0));
    volt.shared()
        .failpoints
        .hold_flush
        .store(Some(flush_gate.clone()));
    let before = volt.shared().durability.written_lsn();
    volt.db
        .execute("INSERT INTO items VALUES (42, 'buffered', 0)")
        .await?;
    eventually(
        "the insert is answered for and recorded written",
        || async { Ok(volt.shared().durability.written_lsn() > before) },
    )
    .await?;
    let written = volt.shared().durability.written_lsn();
    // Two rounds: the second starts only once the first has declared what it may (and
    // only if something is left to declare).
    flush_gate.add_permits(2);
    eventually(
        "two flush rounds, or the insert declared durable",
        || async {
            Ok(flush_gate.available_permits() == 0
                || volt.shared().durability.durable_lsn() >= written)
        },
    )
    .await?;
    let durable = volt.shared().durability.durable_lsn();
    assert!(
        durable < written,
        "durable {durable} with {written} only buffered"
    );

    volt.shared().failpoints.hold_flush.store(None);
    flush_gate.add_permits(1 << 20);
    volt.shared().failpoints.hold_snapshot.store(None);
    snapshot_gate.add_permits(1 << 20);
    let body = creating.await??;
    assert!(body.contains("buffered"), "{body}");
    eventually("durable once the Consumer has it", || async {
        Ok(volt.shared().durability.durable_lsn() >= written)
    })
    .await?;
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_change_is_served_before_it_is_synced_and_acknowledged_only_after() -> anyhow::Result<()>
{
    let volt = TestVolt::start("ack_after_sync").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
    volt.shared()
        .failpoints
        .hold_flush
        .store(Some(gate.clone()));
    volt.db
        .execute("UPDATE items SET v = 1 WHERE id = 1")
        .await?;
    f.until(&volt, "the update, while no flush round may sync", |f| {
        f.changes.len() == 1
    })
    .await?;
    let lsn = f.change_lsn(0)?;
    let durable = volt.shared().durability.durable_lsn();
    assert!(durable < lsn, "durable {durable} before any sync of {lsn}");
    let confirmed = confirmed_flush(&volt).await?;
    assert!(confirmed < lsn, "Postgres was told {confirmed} >= {lsn}");

    volt.shared().failpoints.hold_flush.store(None);
    gate.add_permits(1 << 20);
    eventually("Postgres is told once the change is synced", || async {
        Ok(confirmed_flush(&volt).await? >= lsn)
    })
    .await?;
    assert!(volt.shared().durability.durable_lsn() >= lsn);
    assert_eq!(f.refetches, 0);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_slot_created_anew_purges_the_shapes_and_their_clients_refetch() -> anyhow::Result<()> {
    let mut volt = TestVolt::start("slot_anew").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    let old = f.handle.clone();
    eventually("the shape is in ShapeDb", || async {
        Ok(volt.shared().shape_db.load_all().await?.len() == 1)
    })
    .await?;

    // While volt is down, its slot goes away: changes may have been missed, so the
    // stored shapes cannot be trusted and are purged (not on a first start, which has
    // nothing stored).
    volt.stop_stack().await;
    let admin = volt.db.client().await?;
    admin
        .execute(
            "SELECT pg_drop_replication_slot($1)",
            &[&volt.db.slot_name()],
        )
        .await?;
    volt.start_stack().await?;
    assert_eq!(volt.shared().shapes.len(), 0, "shapes purged");
    volt.db
        .execute("UPDATE items SET v = v + 1 WHERE id = 1")
        .await?;
    f.until(&volt, "a new handle after the refetch", |f| {
        f.refetches == 1 && f.handle != old && f.rows.len() == 20
    })
    .await?;
    volt.stop().await;
    Ok(())
}
