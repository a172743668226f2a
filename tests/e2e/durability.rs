//! Shapes survive restarts: recovered from ShapeDb and disk, never re-snapshotted, and
//! clients resume with their handle and offset.

use crate::support::{Follower, TestVolt, eventually, snapshot_queries};

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
