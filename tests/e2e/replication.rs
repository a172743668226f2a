//! Changes flow from Postgres through the tree to shape clients, in commit order.

use serde_json::Value;

use crate::support::{Follower, TestVolt};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, title text, qty int);
     INSERT INTO items VALUES (1, 'one', 5), (2, 'two', 20), (3, 'three', 30);";

fn ops(f: &Follower) -> Vec<(String, String)> {
    f.changes
        .iter()
        .map(|c| {
            (
                c["headers"]["operation"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                c["key"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[tokio::test]
async fn snapshot_then_live_changes_arrive_in_commit_order() -> anyhow::Result<()> {
    let volt = TestVolt::start("live_changes_in_order").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    assert_eq!(f.column("id"), ["1", "2", "3"]);

    volt.db
        .execute("INSERT INTO items VALUES (4, 'four', 40)")
        .await?;
    volt.db
        .execute("UPDATE items SET title = 'uno' WHERE id = 1")
        .await?;
    volt.db.execute("DELETE FROM items WHERE id = 2").await?;
    f.until(&volt, "three transactions", |f| f.changes.len() == 3)
        .await?;
    let key = |id: &str| format!("\"public\".\"items\"/\"{id}\"");
    assert_eq!(
        ops(&f),
        [
            ("insert".to_string(), key("4")),
            ("update".to_string(), key("1")),
            ("delete".to_string(), key("2"))
        ]
    );
    assert_eq!(f.column("title"), ["four", "three", "uno"]);
    // replica=default: an update carries the key and the changed columns only.
    let update = &f.changes[1]["value"];
    assert_eq!(update, &serde_json::json!({"id": "1", "title": "uno"}));
    let lsns: Vec<u64> = f
        .changes
        .iter()
        .map(|c| {
            c["headers"]["lsn"]
                .as_str()
                .unwrap_or("0")
                .parse()
                .unwrap_or(0)
        })
        .collect();
    assert!(
        lsns.windows(2).all(|w| w[0] < w[1]),
        "commit order: {lsns:?}"
    );
    assert!(f.changes.iter().all(|c| c["headers"]["last"] == true));
    assert!(
        f.changes
            .iter()
            .all(|c| c["headers"]["txids"][0].is_number())
    );
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn multi_row_transaction_arrives_whole_with_one_last_flag() -> anyhow::Result<()> {
    let volt = TestVolt::start("multi_row_tx").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    volt.db
        .execute(
            "BEGIN; INSERT INTO items VALUES (10, 'a', 1), (11, 'b', 2);
             UPDATE items SET qty = 99 WHERE id = 1; DELETE FROM items WHERE id = 3; COMMIT;",
        )
        .await?;
    f.until(&volt, "the transaction", |f| f.changes.len() == 4)
        .await?;
    let positions: Vec<u64> = f
        .changes
        .iter()
        .map(|c| c["headers"]["op_position"].as_u64().unwrap_or(u64::MAX))
        .collect();
    assert_eq!(positions, [0, 2, 4, 6]);
    let lasts: Vec<bool> = f
        .changes
        .iter()
        .map(|c| c["headers"]["last"] == true)
        .collect();
    assert_eq!(lasts, [false, false, false, true]);
    let lsn = &f.changes[0]["headers"]["lsn"];
    assert!(f.changes.iter().all(|c| &c["headers"]["lsn"] == lsn));
    assert_eq!(f.column("id"), ["1", "10", "11", "2"]);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn where_clause_moves_rows_in_and_out_of_the_shape() -> anyhow::Result<()> {
    let volt = TestVolt::start("where_moves").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items&where=qty%20%3E%2010");
    f.catch_up(&volt).await?;
    assert_eq!(f.column("id"), ["2", "3"]);
    volt.db
        .execute("UPDATE items SET qty = 50 WHERE id = 1")
        .await?;
    volt.db
        .execute("UPDATE items SET qty = 1 WHERE id = 2")
        .await?;
    volt.db
        .execute("INSERT INTO items VALUES (7, 'small', 3)")
        .await?;
    volt.db
        .execute("UPDATE items SET title = 'still in' WHERE id = 3")
        .await?;
    f.until(&volt, "moves", |f| f.changes.len() == 3).await?;
    assert_eq!(
        ops(&f).into_iter().map(|(op, _)| op).collect::<Vec<_>>(),
        ["insert", "delete", "update"]
    );
    assert_eq!(f.column("id"), ["1", "3"]);
    // A row moving in arrives whole.
    assert_eq!(f.changes[0]["value"]["title"], "one");
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn primary_key_change_is_a_delete_then_an_insert() -> anyhow::Result<()> {
    let volt = TestVolt::start("pk_change").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    volt.db
        .execute("UPDATE items SET id = 100 WHERE id = 1")
        .await?;
    f.until(&volt, "key change", |f| f.changes.len() == 2)
        .await?;
    let (del, ins) = (&f.changes[0], &f.changes[1]);
    assert_eq!(del["headers"]["operation"], "delete");
    assert_eq!(
        del["headers"]["key_change_to"],
        "\"public\".\"items\"/\"100\""
    );
    assert_eq!(ins["headers"]["operation"], "insert");
    assert_eq!(
        ins["headers"]["key_change_from"],
        "\"public\".\"items\"/\"1\""
    );
    assert_eq!(ins["headers"]["op_position"], 1);
    assert_eq!(f.column("id"), ["100", "2", "3"]);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn keys_escape_slashes_and_match_between_snapshot_and_changes() -> anyhow::Result<()> {
    let volt = TestVolt::start("key_escaping").await?;
    volt.db
        .execute(
            "CREATE TABLE paths (p text PRIMARY KEY, n int); INSERT INTO paths VALUES ('a/b', 1)",
        )
        .await?;
    let mut f = Follower::new("table=paths");
    f.catch_up(&volt).await?;
    assert_eq!(
        f.rows.keys().collect::<Vec<_>>(),
        ["\"public\".\"paths\"/\"a//b\""]
    );
    volt.db
        .execute("UPDATE paths SET n = 2 WHERE p = 'a/b'")
        .await?;
    f.until(&volt, "update", |f| f.changes.len() == 1).await?;
    assert_eq!(f.changes[0]["key"], "\"public\".\"paths\"/\"a//b\"");
    assert_eq!(f.rows.len(), 1);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn large_transaction_passes_through_in_order() -> anyhow::Result<()> {
    let volt = TestVolt::start("large_tx").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    volt.db
        .execute("INSERT INTO items SELECT g, 'bulk', g FROM generate_series(100, 2599) g")
        .await?;
    f.until(&volt, "2,500 inserts", |f| f.rows.len() == 2503)
        .await?;
    let positions: Vec<u64> = f
        .changes
        .iter()
        .map(|c| c["headers"]["op_position"].as_u64().unwrap_or(u64::MAX))
        .collect();
    assert!(positions.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(
        f.changes
            .iter()
            .filter(|c| c["headers"]["last"] == true)
            .count(),
        1
    );
    volt.stop().await;
    Ok(())
}

/// Writes the transactions `batches(i)` gives for i = 0, 1, ... (each batch of
/// statements its own transaction) one after another until stopped, so that snapshots
/// race with the stream.
struct WriteLoad {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    task: tokio::task::JoinHandle<anyhow::Result<i32>>,
}

impl WriteLoad {
    async fn start(
        volt: &TestVolt,
        batches: impl Fn(i32) -> Vec<String> + Send + 'static,
    ) -> anyhow::Result<WriteLoad> {
        let writer = volt.db.client().await?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopped = stop.clone();
        let task = tokio::spawn(async move {
            let mut i = 0i32;
            while !stopped.load(std::sync::atomic::Ordering::Relaxed) {
                for batch in batches(i) {
                    writer.batch_execute(&batch).await?;
                }
                i += 1;
            }
            anyhow::Ok(i)
        });
        Ok(WriteLoad { stop, task })
    }

    /// Stop, and how many rounds of batches were written.
    async fn stop(self) -> anyhow::Result<i32> {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await?
    }
}

/// `counters` rows (id, v) as text, sorted: what `sql` returns from the table.
async fn counters(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> anyhow::Result<Vec<(String, String)>> {
    let mut rows: Vec<(String, String)> = client
        .query(sql, params)
        .await?
        .iter()
        .map(|r| {
            (
                r.get::<_, i32>(0).to_string(),
                r.get::<_, i32>(1).to_string(),
            )
        })
        .collect();
    rows.sort();
    Ok(rows)
}

/// The same, from what a follower of a `counters` shape holds.
fn followed_counters(f: &Follower) -> Vec<(String, String)> {
    let mut rows: Vec<(String, String)> = f
        .rows
        .values()
        .map(|r| {
            let s = |k: &str| r.get(k).and_then(Value::as_str).unwrap_or("").to_string();
            (s("id"), s("v"))
        })
        .collect();
    rows.sort();
    rows
}

#[tokio::test]
async fn shape_created_under_write_load_converges_to_the_table() -> anyhow::Result<()> {
    let volt = TestVolt::start("converges_under_load").await?;
    volt.db
        .execute("CREATE TABLE counters (id int PRIMARY KEY, v int NOT NULL)")
        .await?;
    let load = WriteLoad::start(&volt, |i| {
        let mut batches = vec![format!(
            "INSERT INTO counters VALUES ({}, 1) ON CONFLICT (id) DO UPDATE SET v = counters.v + 1",
            i % 50
        )];
        if i % 7 == 0 {
            batches.push(format!("DELETE FROM counters WHERE id = {}", (i * 3) % 50));
        }
        batches
    })
    .await?;
    // Create shapes while the load runs, so snapshots race with the stream.
    let mut followers = Vec::new();
    for _ in 0..3 {
        let mut f = Follower::new("table=counters");
        f.catch_up(&volt).await?;
        followers.push(f);
        let mut g = Follower::new("table=counters&where=v%20%3E%203");
        g.catch_up(&volt).await?;
        followers.push(g);
    }
    assert!(load.stop().await? > 0);
    let client = volt.db.client().await?;
    let all = counters(&client, "SELECT id, v FROM counters", &[]).await?;
    let big = counters(&client, "SELECT id, v FROM counters WHERE v > 3", &[]).await?;
    for (i, f) in followers.iter_mut().enumerate() {
        let expected = if i % 2 == 0 { &all } else { &big };
        f.until(&volt, "convergence", |f| &followed_counters(f) == expected)
            .await?;
        assert_eq!(f.refetches, 0);
    }
    volt.stop().await;
    Ok(())
}

/// Twenty-four distinct shapes asked for at once, under writes, queue for the test
/// stack's four snapshot sessions: each converges to its rows in the table, without a
/// refetch.
#[tokio::test]
async fn shapes_created_at_once_under_write_load_each_converge_to_the_table() -> anyhow::Result<()>
{
    let volt = TestVolt::start("converge_at_once").await?;
    volt.db
        .execute(
            "CREATE TABLE counters (id int PRIMARY KEY, v int NOT NULL);
             INSERT INTO counters SELECT g, 0 FROM generate_series(0, 49) g;",
        )
        .await?;
    let load = WriteLoad::start(&volt, |i| {
        vec![format!(
            "UPDATE counters SET v = v + 1 WHERE id = {}; \
             INSERT INTO counters VALUES ({}, {i}) ON CONFLICT (id) DO NOTHING; \
             DELETE FROM counters WHERE id = {}",
            i % 50,
            50 + i,
            50 + i / 2,
        )]
    })
    .await?;
    let bounds: Vec<i32> = (0..24).map(|k| k * 4).collect();
    let mut followers: Vec<Follower> = bounds
        .iter()
        .map(|k| Follower::new(&format!("table=counters&where=id%20%3E%3D%20{k}")))
        .collect();
    futures::future::try_join_all(followers.iter_mut().map(|f| f.catch_up(&volt))).await?;
    assert!(load.stop().await? > 0);
    let client = volt.db.client().await?;
    for (k, f) in bounds.iter().zip(followers.iter_mut()) {
        let expected = counters(&client, "SELECT id, v FROM counters WHERE id >= $1", &[k]).await?;
        f.until(&volt, "convergence", |f| followed_counters(f) == expected)
            .await?;
        assert_eq!(f.refetches, 0);
    }
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn postgres_is_told_a_change_is_stored_only_once_it_is() -> anyhow::Result<()> {
    let volt = TestVolt::start("acknowledgement").await?;
    volt.db.execute(ITEMS).await?;
    let mut f = Follower::new("table=items");
    f.catch_up(&volt).await?;
    volt.db
        .execute("INSERT INTO items VALUES (9, 'nine', 9)")
        .await?;
    f.until(&volt, "the insert", |f| f.rows.len() == 4).await?;
    let stored_lsn = f.change_lsn(0)?;
    let client = volt.db.client().await?;
    let slot = volt.db.slot_name();
    crate::support::eventually("the slot's confirmed flush LSN passes the stored commit", || {
        let (client, slot) = (&client, &slot);
        async move {
            let row = client
                .query_one(
                    "SELECT (confirmed_flush_lsn - '0/0'::pg_lsn)::text FROM pg_replication_slots WHERE slot_name = $1",
                    &[slot],
                )
                .await?;
            let confirmed: u64 = row.get::<_, String>(0).parse()?;
            Ok(confirmed >= stored_lsn)
        }
    })
    .await?;
    volt.stop().await;
    Ok(())
}
