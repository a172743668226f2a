//! Thundering herds: admission control and coalesced shape creation.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use volt_http::admission::{Limits, Queue};

use crate::support::{Server, TestVolt, Tweaks, eventually, snapshot_queries};

const ITEMS: &str = "CREATE TABLE items (id int PRIMARY KEY, title text);
     INSERT INTO items SELECT g, 'item ' || g FROM generate_series(1, 50) g;";

async fn herd_volt(name: &str, limits: Option<Limits>) -> anyhow::Result<TestVolt> {
    let volt = TestVolt::start_tweaked(
        name,
        Tweaks {
            max_concurrent: limits,
            ..Tweaks::default()
        },
    )
    .await?;
    volt.db.execute(ITEMS).await?;
    Ok(volt)
}

/// Holds every shape creation until the returned gate gets a permit.
fn hold_creations(shared: &volt_stack::Shared) -> Arc<Semaphore> {
    let gate = Arc::new(Semaphore::new(0));
    shared.failpoints.hold_create.store(Some(gate.clone()));
    gate
}

fn raised() -> Option<Limits> {
    Some(Limits {
        initial: 5_000,
        existing: 20_000,
    })
}

struct Answer {
    status: u16,
    handle: Option<String>,
    retry_after: bool,
    body: String,
}

/// `n` concurrent GETs of `path`, all in flight at once.
async fn herd(volt: &TestVolt, n: usize, path: &str) -> Vec<tokio::task::JoinHandle<Answer>> {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .expect("http client");
    (0..n)
        .map(|_| {
            let (http, url) = (http.clone(), format!("{}{path}", volt.base()));
            tokio::spawn(async move {
                match http.get(url).timeout(Duration::from_secs(60)).send().await {
                    Ok(res) => Answer {
                        status: res.status().as_u16(),
                        handle: res
                            .headers()
                            .get("electric-handle")
                            .and_then(|h| h.to_str().ok())
                            .map(str::to_string),
                        retry_after: res.headers().contains_key("retry-after"),
                        body: res.text().await.unwrap_or_default(),
                    },
                    Err(e) => Answer {
                        status: 0,
                        handle: None,
                        retry_after: false,
                        body: e.to_string(),
                    },
                }
            })
        })
        .collect()
}

async fn answers(tasks: Vec<tokio::task::JoinHandle<Answer>>) -> anyhow::Result<Vec<Answer>> {
    let mut out = Vec::with_capacity(tasks.len());
    for t in tasks {
        out.push(t.await?);
    }
    Ok(out)
}

fn messages_sent_to_shape_cache(volt: &TestVolt) -> u64 {
    volt.shared()
        .shape_cache
        .load_full()
        .map(|m| m.depth().total_sent())
        .unwrap_or(0)
}

#[tokio::test]
async fn a_thousand_concurrent_requests_for_one_new_shape_make_one_snapshot_and_one_handle()
-> anyhow::Result<()> {
    let volt = herd_volt("herd_one_shape", raised()).await?;
    let tasks = herd(
        &volt,
        1000,
        "/v1/shape?table=items&offset=-1&where=id%20%3E%2010",
    )
    .await;
    let all = answers(tasks).await?;
    for a in &all {
        assert_eq!(a.status, 200, "{}", a.body);
    }
    let handles: std::collections::HashSet<_> = all.iter().map(|a| a.handle.clone()).collect();
    assert_eq!(handles.len(), 1, "{handles:?}");
    assert_eq!(snapshot_queries(&volt, "items").await?, 1);
    let stats = volt.admission.stats();
    assert_eq!((stats.initial_in_use, stats.existing_in_use), (0, 0));
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn followers_of_a_held_creation_send_shape_cache_nothing_and_get_the_leaders_handle()
-> anyhow::Result<()> {
    let volt = herd_volt("herd_held_leader", raised()).await?;
    let gate = hold_creations(volt.shared());
    let path = "/v1/shape?table=items&offset=-1&where=id%20%3C%2020";
    let leader = herd(&volt, 1, path).await;
    eventually("the leader is inside the creation", || async {
        Ok(volt.shared().creating.len() == 1)
    })
    .await?;
    let sent = messages_sent_to_shape_cache(&volt);
    let followers = herd(&volt, 300, path).await;
    eventually("every follower is admitted and waiting", || async {
        Ok(volt.admission.stats().initial_in_use == 301)
    })
    .await?;
    // Followers poll the shared state: ShapeCache got nothing from them.
    assert_eq!(messages_sent_to_shape_cache(&volt), sent);
    let cache = volt.shared().shape_cache.load_full().expect("shape cache");
    assert_eq!(cache.depth().depth(), 0);

    gate.add_permits(1);
    let leader = answers(leader).await?.remove(0);
    assert_eq!(leader.status, 200, "{}", leader.body);
    for f in answers(followers).await? {
        assert_eq!(f.status, 200, "{}", f.body);
        assert_eq!(f.handle, leader.handle);
    }
    assert_eq!(snapshot_queries(&volt, "items").await?, 1);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_failed_creation_fails_every_waiter_fast_with_the_same_error_and_is_swept()
-> anyhow::Result<()> {
    let volt = herd_volt("herd_failed_create", raised()).await?;
    let shared = volt.shared().clone();
    let gate = hold_creations(&shared);
    shared
        .failpoints
        .fail_create
        .store(Some(Arc::new("injected creation failure".into())));
    let path = "/v1/shape?table=items&offset=-1&where=id%20%3C%2030";
    let tasks = herd(&volt, 100, path).await;
    eventually("every request is admitted", || async {
        Ok(volt.admission.stats().initial_in_use == 100)
    })
    .await?;
    gate.add_permits(1);
    let all = answers(tasks).await?;
    for a in &all {
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(a.retry_after);
        assert_eq!(a.body, all[0].body);
    }
    assert!(
        all[0].body.contains("injected creation failure"),
        "{}",
        all[0].body
    );
    // The published failure is swept after its grace, and the next request creates.
    eventually("the failed entry is swept", || async {
        Ok(shared.creating.is_empty())
    })
    .await?;
    shared.failpoints.hold_create.store(None);
    shared.failpoints.fail_create.store(None);
    let again = answers(herd(&volt, 1, path).await).await?;
    assert_eq!(again[0].status, 200, "{}", again[0].body);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn with_default_caps_the_overflow_waits_in_the_room_and_past_it_gets_only_503s()
-> anyhow::Result<()> {
    // Electric's default buckets; a room of 50 that outwaits the test.
    let volt = TestVolt::start_tweaked(
        "herd_default_caps",
        Tweaks {
            initial_queue: Some(Queue {
                size: 50,
                wait: Duration::from_secs(600),
            }),
            ..Tweaks::default()
        },
    )
    .await?;
    volt.db.execute(ITEMS).await?;
    let gate = hold_creations(volt.shared());
    let tasks = herd(
        &volt,
        400,
        "/v1/shape?table=items&offset=-1&where=id%20%3E%2040",
    )
    .await;
    // The room takes up to 50 until the herd's turnover is measured, and none once it is
    // (the held creation turns nothing over): how many of the 100 wait depends on how
    // fast they arrive.
    eventually(
        "the initial bucket is full and the overflow waits or is rejected",
        || async {
            let s = volt.admission.stats();
            Ok(s.initial_in_use == 300 && s.initial_waiting + s.initial_rejects as usize == 100)
        },
    )
    .await?;
    let waiting = volt.admission.stats().initial_waiting;
    assert!((1..=50).contains(&waiting), "{waiting} waiting");
    gate.add_permits(1);
    let all = answers(tasks).await?;
    let (ok, shed): (Vec<_>, Vec<_>) = all.iter().partition(|a| a.status == 200);
    assert_eq!(ok.len(), 300 + waiting, "the bucket's and the room's");
    for a in &shed {
        assert_eq!(a.status, 503, "{}", a.body);
        assert!(a.retry_after);
        assert!(
            a.body.contains("concurrent_request_limit_exceeded"),
            "{}",
            a.body
        );
    }
    let s = volt.admission.stats();
    assert_eq!((s.initial_in_use, s.existing_in_use), (0, 0));
    assert_eq!((s.initial_waiting, s.initial_waited), (0, waiting as u64));
    volt.stop().await;
    Ok(())
}

/// A volt with one `initial` permit and a room of 10 that wait up to `wait`, its one
/// permit taken by a request whose creation is held until the gate opens.
async fn one_permit_held(
    name: &str,
    wait: Duration,
) -> anyhow::Result<(
    TestVolt,
    Arc<Semaphore>,
    Vec<tokio::task::JoinHandle<Answer>>,
)> {
    let volt = TestVolt::start_tweaked(
        name,
        Tweaks {
            max_concurrent: Some(Limits {
                initial: 1,
                existing: 100,
            }),
            initial_queue: Some(Queue { size: 10, wait }),
            ..Tweaks::default()
        },
    )
    .await?;
    volt.db.execute(ITEMS).await?;
    let gate = hold_creations(volt.shared());
    let held = herd(
        &volt,
        1,
        "/v1/shape?table=items&offset=-1&where=id%20%3C%205",
    )
    .await;
    eventually("the one permit is taken", || async {
        Ok(volt.admission.stats().initial_in_use == 1)
    })
    .await?;
    Ok((volt, gate, held))
}

#[tokio::test]
async fn a_request_whose_wait_for_a_permit_runs_out_gets_a_503_with_retry_after()
-> anyhow::Result<()> {
    let (volt, gate, held) = one_permit_held("herd_room_wait", Duration::from_millis(200)).await?;
    // One: the room takes it before any turnover is measured.
    let waited = answers(herd(&volt, 1, "/v1/shape?table=items&offset=-1").await).await?;
    assert_eq!(waited[0].status, 503, "{}", waited[0].body);
    assert!(waited[0].retry_after);
    assert!(waited[0].body.contains("concurrent_request_limit_exceeded"));
    assert_eq!(volt.admission.stats().initial_wait_timeouts, 1);
    gate.add_permits(1);
    assert_eq!(answers(held).await?[0].status, 200);
    let s = volt.admission.stats();
    assert_eq!((s.initial_in_use, s.initial_waiting), (0, 0));
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_client_that_goes_away_while_waiting_for_a_permit_leaves_the_room() -> anyhow::Result<()>
{
    let (volt, gate, held) = one_permit_held("herd_room_leave", Duration::from_secs(600)).await?;
    let addr = volt.base().trim_start_matches("http://").to_string();
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    tokio::io::AsyncWriteExt::write_all(
        &mut stream,
        b"GET /v1/shape?table=items&offset=-1 HTTP/1.1\r\nHost: volt\r\n\r\n",
    )
    .await?;
    eventually("the request waits", || async {
        Ok(volt.admission.stats().initial_waiting == 1)
    })
    .await?;
    drop(stream);
    eventually("the room is empty again", || async {
        Ok(volt.admission.stats().initial_waiting == 0)
    })
    .await?;
    gate.add_permits(1);
    assert_eq!(answers(held).await?[0].status, 200);
    let s = volt.admission.stats();
    assert_eq!((s.initial_in_use, s.initial_waited), (0, 0));
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn permits_are_released_when_clients_go_away_mid_request() -> anyhow::Result<()> {
    // Long polls that would hold their permits for a minute: only the disconnects can
    // bring the counts back to zero within the test's deadline.
    let volt = TestVolt::start_tweaked(
        "herd_disconnects",
        Tweaks {
            long_poll: Some(Duration::from_secs(120)),
            ..Tweaks::default()
        },
    )
    .await?;
    volt.db.execute(ITEMS).await?;
    let mut f = crate::support::Follower::new("table=items");
    f.catch_up(&volt).await?;
    let handle = f.handle.clone().unwrap_or_default();
    let live = format!(
        "/v1/shape?table=items&live=true&handle={handle}&offset={}",
        f.offset
    );
    let sse = format!("{live}&live_sse=true");
    let mut tasks = herd(&volt, 40, &live).await;
    tasks.extend(herd(&volt, 10, &sse).await);
    eventually("every request holds an existing permit", || async {
        Ok(volt.admission.stats().existing_in_use == 50)
    })
    .await?;
    for t in &tasks {
        t.abort();
    }
    eventually("permits return to zero after the disconnects", || async {
        let s = volt.admission.stats();
        Ok(s.existing_in_use == 0 && s.initial_in_use == 0)
    })
    .await?;
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn a_restarted_shape_cache_starts_with_an_empty_lock_table_and_waiters_carry_on()
-> anyhow::Result<()> {
    let volt = herd_volt("herd_cache_restart", raised()).await?;
    let shared = volt.shared().clone();
    let gate = hold_creations(&shared);
    let path = "/v1/shape?table=items&offset=-1&where=id%20%3C%2015";
    let leader = herd(&volt, 1, path).await;
    eventually("the leader is inside the creation", || async {
        Ok(shared.creating.len() == 1)
    })
    .await?;
    let followers = herd(&volt, 50, path).await;
    eventually("the followers are waiting", || async {
        Ok(volt.admission.stats().initial_in_use == 51)
    })
    .await?;
    let old = shared.find_actor("ShapeCache").expect("shape cache");
    old.kill();
    // The new ShapeCache owns no creation: its table starts empty (the killed one's
    // creation was aborted with it), and a waiter's next request creates the shape.
    eventually("a new ShapeCache runs", || async {
        Ok(shared
            .find_actor("ShapeCache")
            .is_some_and(|c| c.get_id() != old.get_id()))
    })
    .await?;
    gate.add_permits(1000);
    let leader = answers(leader).await?.remove(0);
    assert!(
        leader.status == 200 || (leader.status == 503 && leader.retry_after),
        "{} {}",
        leader.status,
        leader.body
    );
    let followers = answers(followers).await?;
    let handles: std::collections::HashSet<_> = followers
        .iter()
        .filter(|f| f.status == 200)
        .map(|f| f.handle.clone())
        .collect();
    assert_eq!(handles.len(), 1, "{handles:?}");
    for f in &followers {
        assert!(
            f.status == 200 || (f.status == 503 && f.retry_after),
            "{}",
            f.body
        );
    }
    assert_eq!(snapshot_queries(&volt, "items").await?, 1);
    volt.stop().await;
    Ok(())
}

#[tokio::test]
async fn creation_requests_are_shed_with_503_while_shape_cache_has_a_backlog() -> anyhow::Result<()>
{
    // Without coalescing, creation runs inside ShapeCache's handler: holding one creation
    // there makes the next requests queue in its mailbox, up to the limit.
    let volt = TestVolt::start_tweaked(
        "herd_mailbox_shed",
        Tweaks {
            max_shape_cache_mailbox: Some(3),
            coalesce_creates: Some(false),
            ..Tweaks::default()
        },
    )
    .await?;
    volt.db.execute(ITEMS).await?;
    let shared = volt.shared().clone();
    let gate = hold_creations(&shared);
    let leader = herd(
        &volt,
        1,
        "/v1/shape?table=items&offset=-1&where=id%20%3D%201",
    )
    .await;
    eventually("the leader's creation holds the handler", || async {
        Ok(shared
            .shape_cache
            .load_full()
            .is_some_and(|c| c.depth().total_sent() == 1 && c.depth().depth() == 0))
    })
    .await?;
    let mut others = Vec::new();
    for id in 2..12 {
        others.extend(
            herd(
                &volt,
                1,
                &format!("/v1/shape?table=items&offset=-1&where=id%20%3D%20{id}"),
            )
            .await,
        );
    }
    eventually("the backlog is full and the rest were shed", || async {
        let queued = shared
            .shape_cache
            .load_full()
            .map_or(0, |c| c.depth().depth());
        Ok(queued == 3 && volt.admission.stats().initial_in_use == 4)
    })
    .await?;
    gate.add_permits(100);
    assert_eq!(answers(leader).await?[0].status, 200);
    let others = answers(others).await?;
    let shed: Vec<_> = others.iter().filter(|a| a.status == 503).collect();
    assert_eq!(shed.len(), 7, "10 requests, 3 queued");
    for a in &shed {
        assert!(a.retry_after);
        assert!(
            a.body.contains("Too many shapes are being created"),
            "{}",
            a.body
        );
    }
    assert_eq!(others.iter().filter(|a| a.status == 200).count(), 3);
    volt.stop().await;
    Ok(())
}

/// Backends of volt's snapshot sessions left idle (their last statement ends a snapshot:
/// a ROLLBACK alone, or at the end of a snapshot's one query).
async fn idle_snapshot_backends(volt: &TestVolt) -> anyhow::Result<i64> {
    let client = volt.db.client().await?;
    let row = client
        .query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND application_name = 'volt' AND state = 'idle' \
             AND (query = 'ROLLBACK' OR query LIKE '%; ROLLBACK')",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

#[tokio::test]
async fn snapshots_reuse_idle_sessions_and_never_open_more_than_the_limit() -> anyhow::Result<()> {
    let volt = TestVolt::start("snapshot_sessions").await?;
    volt.db.execute(ITEMS).await?;
    // One at a time: every snapshot runs on the session the one before it left.
    for i in 1..=5 {
        let r =
            crate::support::fetch(&volt, &format!("table=items&offset=-1&where=id%3D{i}")).await?;
        assert_eq!(r.status, 200);
    }
    assert_eq!(volt.shared().snapshot_sessions.idle_count(), 1);
    assert_eq!(idle_snapshot_backends(&volt).await?, 1);
    // Twenty at once against a limit of four.
    let creations = (6..=25).map(|i| {
        let volt = &volt;
        async move {
            crate::support::fetch(volt, &format!("table=items&offset=-1&where=id%3D{i}")).await
        }
    });
    for r in futures::future::join_all(creations).await {
        assert_eq!(r?.status, 200);
    }
    let idle = volt.shared().snapshot_sessions.idle_count();
    assert!((1..=4).contains(&idle), "{idle} idle sessions");
    assert_eq!(idle_snapshot_backends(&volt).await?, idle as i64);
    volt.stop().await;
    Ok(())
}

/// `SnapshotTx` on its own, either way it reads rows: the COPY prepared with the BEGIN
/// and the ROLLBACK sent behind the rows, or all of it as one query, still give every row
/// and a session that is free of its transaction.
#[tokio::test]
async fn a_pipelined_snapshot_reads_every_row_and_leaves_its_session_out_of_the_transaction()
-> anyhow::Result<()> {
    use volt_pg::PgConfig;
    use volt_pg::snapshot::{RowsBy, SnapshotTx};
    let db = volt_test_support::TestDb::new("pipelined_snapshot").await?;
    db.execute(
        "CREATE TABLE t (id int PRIMARY KEY, v text);
         INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 30000) g;",
    )
    .await?;
    let config = PgConfig::parse(&db.url())?;
    let read_all = |tx: SnapshotTx| async move {
        let mut ids = Vec::new();
        let conn = tx
            .rows_then_end(|row| {
                ids.push(row.value(0).unwrap().parse::<i32>().unwrap());
                assert_eq!(row.value(1), Some(format!("v{}", ids.len()).as_str()));
                Ok::<(), volt_pg::PgError>(())
            })
            .await?;
        anyhow::Ok((ids, conn.expect("the session is kept")))
    };
    let sql = Some("SELECT id, v FROM t ORDER BY id");
    // Several of the COPY's read-ahead blocks (64 KiB).
    let mut written = 30000;
    for by in [RowsBy::Copy, RowsBy::OneQuery] {
        let (ids, conn) = read_all(SnapshotTx::begin(&config, sql, by).await?).await?;
        assert_eq!(ids, (1..=written).collect::<Vec<_>>(), "{by:?}");
        // Out of the snapshot's transaction: a statement of its own starts a new one.
        let rows = conn
            .simple_query(
                "SELECT current_setting('transaction_isolation'), now() = statement_timestamp()",
            )
            .await?;
        let row = rows
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
                _ => None,
            })
            .unwrap();
        assert_eq!(
            (row.get(0), row.get(1)),
            (Some("read committed"), Some("t")),
            "{by:?}"
        );
        // The kept session takes a new snapshot: it sees what was written since.
        written += 1;
        db.execute(&format!("INSERT INTO t VALUES ({written}, 'v{written}')"))
            .await?;
        let (ids, _conn) = read_all(SnapshotTx::begin_on(conn, sql, by).await?).await?;
        assert_eq!(ids.len() as i32, written, "{by:?}");
        // A failing reader ends the read with its own error, and the session is not kept.
        let tx = SnapshotTx::begin(&config, sql, by).await?;
        let failed = tx
            .rows_then_end(|_| Err::<(), _>(volt_pg::PgError::Protocol("stop".into())))
            .await;
        assert!(
            matches!(failed, Err(volt_pg::PgError::Protocol(m)) if m == "stop"),
            "{by:?}"
        );
    }
    db.cleanup().await;
    Ok(())
}

/// A COPY that Postgres ends with an error, blocks into its rows: every row sent before
/// the error reaches the reader, then the error, and the session is not kept.
#[tokio::test]
async fn a_copy_that_fails_after_blocks_of_rows_gives_those_rows_then_its_error()
-> anyhow::Result<()> {
    use volt_pg::snapshot::{RowsBy, SnapshotTx};
    use volt_pg::{PgConfig, PgError};
    let db = volt_test_support::TestDb::new("failing_copy").await?;
    let config = PgConfig::parse(&db.url())?;
    // Division by zero at row 40,000, after about 2 MB of rows: a function scan makes
    // its rows in order, each computed as it is sent, whatever the planner chooses.
    let sql = Some("SELECT g, repeat('v', 40), 1 / (g - 40000) FROM generate_series(1, 50000) g");
    let tx = SnapshotTx::begin(&config, sql, RowsBy::Copy).await?;
    let mut last = 0;
    let read = tx
        .rows_then_end(|row| {
            let id: i32 = row.value(0).unwrap().parse().unwrap();
            assert_eq!(id, last + 1, "in order, none missing");
            last = id;
            Ok::<(), PgError>(())
        })
        .await;
    assert!(
        matches!(&read, Err(PgError::Query { .. })),
        "{:?}",
        read.map(|kept| kept.is_some())
    );
    assert_eq!(last, 39_999);
    db.cleanup().await;
    Ok(())
}

/// A database whose table `t (id)` holds one row, and its connection settings.
async fn one_row_db(name: &str) -> anyhow::Result<(volt_test_support::TestDb, volt_pg::PgConfig)> {
    let db = volt_test_support::TestDb::new(name).await?;
    db.execute("CREATE TABLE t (id int PRIMARY KEY); INSERT INTO t VALUES (1);")
        .await?;
    let config = volt_pg::PgConfig::parse(&db.url())?;
    Ok((db, config))
}

#[tokio::test]
async fn a_one_query_snapshot_whose_rollback_did_not_run_is_an_error_not_a_kept_session()
-> anyhow::Result<()> {
    use volt_pg::PgError;
    use volt_pg::snapshot::{RowsBy, SnapshotTx};
    let (db, config) = one_row_db("swallowed_rollback").await?;
    // A trailing comment hides the ROLLBACK sent behind the query.
    let tx = SnapshotTx::begin(&config, Some("SELECT id FROM t --"), RowsBy::OneQuery).await?;
    let mut rows = 0;
    let read = tx
        .rows_then_end(|_| {
            rows += 1;
            Ok::<(), PgError>(())
        })
        .await;
    assert_eq!(rows, 1);
    assert!(
        matches!(&read, Err(PgError::Protocol(m)) if m.contains("completed 1 statements")),
        "{:?}",
        read.map(|kept| kept.is_some())
    );
    db.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_snapshot_with_others_queued_behind_it_reads_its_rows_by_one_query() -> anyhow::Result<()>
{
    use volt_pg::snapshot::RowsBy;
    use volt_stack::snapshot_sessions::SnapshotSessions;
    let (db, config) = one_row_db("rows_by").await?;
    let sessions = SnapshotSessions::new(1);
    let sql = Some("SELECT id FROM t");
    let alone = sessions.begin(&config, sql).await?;
    assert_eq!(alone.rows_by(), Some(RowsBy::Copy), "nothing queued");
    let (second_by_tx, second_by) = tokio::sync::oneshot::channel();
    let (release_tx, release) = tokio::sync::oneshot::channel::<()>();
    let (sessions, config) = (&sessions, &config);
    let second = async move {
        let s = sessions.begin(config, sql).await?;
        let _ = second_by_tx.send(s.rows_by());
        let _ = release.await;
        s.rows_then_end(|_| Ok::<(), volt_pg::PgError>(())).await?;
        anyhow::Ok(())
    };
    let third = async move {
        eventually("the second is queued", || async {
            Ok(sessions.queued() >= 1)
        })
        .await?;
        // Queued behind the second, which is queued behind the first.
        let waits = sessions.begin(config, sql);
        let ended = async {
            eventually("the third is queued", || async {
                Ok(sessions.queued() >= 2)
            })
            .await?;
            alone
                .rows_then_end(|_| Ok::<(), volt_pg::PgError>(()))
                .await?;
            assert_eq!(
                second_by.await?,
                Some(RowsBy::OneQuery),
                "one queued behind"
            );
            let _ = release_tx.send(());
            anyhow::Ok(())
        };
        let (s, ended) = tokio::join!(waits, ended);
        ended?;
        let s = s?;
        assert_eq!(s.rows_by(), Some(RowsBy::Copy), "the last one again alone");
        s.rows_then_end(|_| Ok::<(), volt_pg::PgError>(())).await?;
        anyhow::Ok(())
    };
    let (a, b) = tokio::join!(second, third);
    a?;
    b?;
    db.cleanup().await;
    Ok(())
}

#[tokio::test]
async fn a_snapshot_postgres_refuses_costs_one_idle_session_not_all_of_them() -> anyhow::Result<()>
{
    use volt_pg::PgError;
    use volt_stack::snapshot_sessions::{SessionError, SnapshotSessions};
    let (db, config) = one_row_db("refused_snapshot").await?;
    let sessions = SnapshotSessions::new(4);
    let sql = Some("SELECT id FROM t");
    // Three sessions at once, each left idle by its snapshot's end.
    let (a, b, c) = futures::try_join!(
        sessions.begin(&config, sql),
        sessions.begin(&config, sql),
        sessions.begin(&config, sql)
    )?;
    for s in [a, b, c] {
        s.rows_then_end(|_| Ok::<(), PgError>(())).await?;
    }
    assert_eq!(sessions.idle_count(), 3);
    // Refused as it is prepared, with the BEGIN.
    let refused = sessions
        .begin(&config, Some("SELECT id FROM t WHERE"))
        .await;
    assert!(
        matches!(refused, Err(SessionError::Pg(PgError::Query { .. }))),
        "{:?}",
        refused.err()
    );
    assert_eq!(
        sessions.idle_count(),
        2,
        "only the session that ran it is gone"
    );
    // Refused as it runs (COPY's query is analysed only then): that session goes too.
    let missing = sessions
        .begin(&config, Some("SELECT id FROM no_such_table"))
        .await?;
    let failed = missing.rows_then_end(|_| Ok::<(), PgError>(())).await;
    assert!(matches!(failed, Err(PgError::Query { .. })), "{failed:?}");
    assert_eq!(sessions.idle_count(), 1);
    sessions.close_idle().await;
    db.cleanup().await;
    Ok(())
}
