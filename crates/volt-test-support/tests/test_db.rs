//! `TestDb` against the cluster started by `volt-test-cluster` (run through ./scripts/test).

use std::process::Stdio;
use std::time::Duration;

use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};
use volt_pg::cluster::PgBinaries;
use volt_test_support::{DATABASE_URL_ENV, TestDb};

const DEADLINE: Duration = Duration::from_secs(30);
const POLL_INTERVAL: Duration = Duration::from_millis(20);

async fn admin() -> Client {
    let url = std::env::var(DATABASE_URL_ENV)
        .expect("run the tests through ./scripts/test (it starts a throwaway Postgres cluster)");
    let (client, connection) = tokio_postgres::connect(&url, NoTls).await.unwrap();
    tokio::spawn(connection);
    client
}

async fn database_exists(admin: &Client, name: &str) -> bool {
    admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&name])
        .await
        .unwrap()
        .is_some()
}

/// The slot's active walsender pid, or None if inactive; Err if there is no such slot.
async fn slot_state(admin: &Client, slot: &str) -> Result<Option<i32>, ()> {
    admin
        .query_opt(
            "SELECT active_pid FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .unwrap()
        .map(|row| row.get(0))
        .ok_or(())
}

async fn create_slot_and_publication(db: &TestDb) {
    db.execute(&format!(
        "CREATE TABLE items (id int PRIMARY KEY, name text);
         CREATE PUBLICATION {} FOR TABLE items;",
        db.publication_name()
    ))
    .await
    .unwrap();
    let client = db.client().await.unwrap();
    client
        .execute(
            "SELECT pg_create_logical_replication_slot($1, 'pgoutput')",
            &[&db.slot_name()],
        )
        .await
        .unwrap();
}

#[tokio::test]
async fn dropping_a_test_db_drops_its_active_slot_and_its_database() {
    let admin = admin().await;
    let db = TestDb::new("dropping a TestDb drops everything")
        .await
        .unwrap();
    let name = db.database_name().to_owned();
    let slot = db.slot_name();
    assert!(
        name.starts_with("dropping_a_testdb_drops_everything_"),
        "{name}"
    );
    assert!(db.url().ends_with(&format!("/{name}")));
    assert!(slot.starts_with("electric_slot_"));
    assert!(db.publication_name().starts_with("electric_publication_"));
    assert!(database_exists(&admin, &name).await);
    create_slot_and_publication(&db).await;

    // Keep the slot busy with a walsender, as a running replication client would.
    let bindir = PgBinaries::find().unwrap().bindir;
    let mut receiver = tokio::process::Command::new(bindir.join("pg_recvlogical"))
        .arg("--dbname")
        .arg(db.url())
        .args([
            "--slot",
            &slot,
            "--start",
            "--no-loop",
            "--file",
            "/dev/null",
        ])
        .args(["-o", "proto_version=1", "-o"])
        .arg(format!("publication_names={}", db.publication_name()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + DEADLINE;
    while slot_state(&admin, &slot).await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "the slot never became active");
        tokio::time::sleep(POLL_INTERVAL).await;
    }
    // A connection of the test itself, left open.
    let _open = db.client().await.unwrap();

    drop(db);

    assert_eq!(slot_state(&admin, &slot).await, Err(()), "slot dropped");
    assert!(!database_exists(&admin, &name).await, "database dropped");
    let exited = tokio::time::timeout(DEADLINE, receiver.wait()).await;
    assert!(exited.is_ok(), "the walsender's client was disconnected");
}

#[tokio::test]
async fn cleanup_drops_the_slot_and_the_database() {
    let admin = admin().await;
    let db = TestDb::new("cleanup").await.unwrap();
    let name = db.database_name().to_owned();
    let slot = db.slot_name();
    create_slot_and_publication(&db).await;
    assert_eq!(slot_state(&admin, &slot).await, Ok(None));

    db.try_cleanup().await.unwrap();

    assert_eq!(slot_state(&admin, &slot).await, Err(()));
    assert!(!database_exists(&admin, &name).await);
}

#[tokio::test]
async fn a_panicking_test_still_drops_its_database() {
    let admin = admin().await;
    let (name_tx, name_rx) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let db = TestDb::new("panics").await.unwrap();
        create_slot_and_publication(&db).await;
        let _ = name_tx.send((db.database_name().to_owned(), db.slot_name()));
        panic!("the test failed");
    });
    assert!(test.await.unwrap_err().is_panic());
    let (name, slot) = name_rx.await.unwrap();
    assert_eq!(slot_state(&admin, &slot).await, Err(()));
    assert!(!database_exists(&admin, &name).await);
}

#[tokio::test]
async fn each_test_db_gets_its_own_database_and_stream() {
    let (a, b) = tokio::join!(TestDb::new("same name"), TestDb::new("same name"));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.database_name(), b.database_name());
    assert_ne!(a.stream_id(), b.stream_id());
    a.execute("CREATE TABLE only_in_a (id int)").await.unwrap();
    let in_b = b
        .client()
        .await
        .unwrap()
        .query_opt("SELECT to_regclass('only_in_a')::text", &[])
        .await
        .unwrap()
        .and_then(|row| row.get::<_, Option<String>>(0));
    assert_eq!(in_b, None);
    a.cleanup().await;
    b.cleanup().await;
}
