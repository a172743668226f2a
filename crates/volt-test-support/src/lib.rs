//! Test support: a fresh database (and replication stream id) per test on the throwaway cluster
//! that `volt-test-cluster` (run by `./scripts/test`) starts once per test run.
//!
//! ```no_run
//! # async fn example() -> anyhow::Result<()> {
//! let db = volt_test_support::TestDb::new("snapshot_includes_committed_rows").await?;
//! db.execute("CREATE TABLE items (id int PRIMARY KEY)").await?;
//! let client = db.client().await?;
//! client.execute("INSERT INTO items VALUES (1)", &[]).await?;
//! // Dropping `db` (also when the test panics) drops its slot and database.
//! # Ok(())
//! # }
//! ```

use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context as _, bail};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_postgres::{Client, NoTls};

/// The environment variable holding the URL of the throwaway cluster's `postgres` database.
pub const DATABASE_URL_ENV: &str = "VOLT_TEST_DATABASE_URL";

/// Set by `volt-test-cluster` for tests that restart the cluster (chaos tests): its data dir.
pub const PG_DATA_DIR_ENV: &str = "VOLT_TEST_PG_DATA_DIR";
/// The `pg_ctl` binary of the cluster.
pub const PG_CTL_ENV: &str = "VOLT_TEST_PG_CTL";
/// The server log (`pg_ctl start -l` appends to it).
pub const PG_LOG_FILE_ENV: &str = "VOLT_TEST_PG_LOG_FILE";
/// The OS user `pg_ctl` must run as, when it is not the current user (`postgres` under root).
pub const PG_OS_USER_ENV: &str = "VOLT_TEST_PG_OS_USER";

/// Postgres identifiers are at most 63 bytes.
const MAX_IDENTIFIER: usize = 63;
const DB_SUFFIX_LEN: usize = 8;
const STREAM_ID_LEN: usize = 10;
/// How long clean-up keeps trying to drop a slot that a client keeps re-acquiring.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);
/// How long `pg_terminate_backend` waits for the backend to exit (milliseconds).
const TERMINATE_TIMEOUT_MS: i64 = 10_000;

/// A fresh database on the test cluster, with a unique replication stream id.
///
/// Dropping it (also while a test panics) drops the stream's replication slot (and any other
/// slot on the database), terminates the database's connections, and drops the database.
pub struct TestDb {
    admin_url: String,
    db_name: String,
    url: String,
    stream_id: String,
    /// Connection tasks of the clients handed out by [`TestDb::client`]; aborted on clean-up.
    connections: Mutex<Vec<JoinHandle<()>>>,
    /// The client behind [`TestDb::execute`], connected on first use.
    exec_client: tokio::sync::OnceCell<Client>,
    cleaned_up: bool,
}

impl std::fmt::Debug for TestDb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestDb")
            .field("url", &self.url)
            .field("stream_id", &self.stream_id)
            .finish_non_exhaustive()
    }
}

impl TestDb {
    /// Creates a database named after `test_name` (sanitised, plus a random suffix).
    pub async fn new(test_name: &str) -> anyhow::Result<TestDb> {
        let admin_url = admin_url_from(std::env::var(DATABASE_URL_ENV).ok())?;
        let db_name = database_name(test_name, &random_id(DB_SUFFIX_LEN));
        let url = url_with_dbname(&admin_url, &db_name)?;

        let (client, connection) = tokio_postgres::connect(&admin_url, NoTls)
            .await
            .with_context(|| format!("connecting to the test cluster at {admin_url}"))?;
        let connection = tokio::spawn(connection);
        let created = client
            .batch_execute(&format!("CREATE DATABASE {}", quote_ident(&db_name)))
            .await
            .with_context(|| format!("creating test database {db_name}"));
        drop(client);
        // The client is gone, so the connection task ends on its own; wait for it.
        let _ = connection.await;
        created?;

        Ok(TestDb {
            admin_url,
            db_name,
            url,
            stream_id: random_id(STREAM_ID_LEN),
            connections: Mutex::new(Vec::new()),
            exec_client: tokio::sync::OnceCell::new(),
            cleaned_up: false,
        })
    }

    /// The URL of this test's database.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The URL of the cluster's `postgres` database (for cluster-wide checks).
    pub fn admin_url(&self) -> &str {
        &self.admin_url
    }

    pub fn database_name(&self) -> &str {
        &self.db_name
    }

    /// A unique replication stream id (`[a-z0-9]`, short) for this test.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }

    /// `electric_slot_<stream_id>`, the slot Electric (and volt) uses for the stream.
    pub fn slot_name(&self) -> String {
        format!("electric_slot_{}", self.stream_id)
    }

    /// `electric_publication_<stream_id>`, the publication Electric (and volt) uses.
    pub fn publication_name(&self) -> String {
        format!("electric_publication_{}", self.stream_id)
    }

    /// A new connection to this test's database. Its connection task belongs to the
    /// `TestDb` and is aborted on clean-up.
    pub async fn client(&self) -> anyhow::Result<Client> {
        let (client, connection) = tokio_postgres::connect(&self.url, NoTls)
            .await
            .with_context(|| format!("connecting to test database {}", self.db_name))?;
        let db_name = self.db_name.clone();
        let handle = tokio::spawn(async move {
            if let Err(e) = connection.await {
                eprintln!("test database {db_name}: connection ended with an error: {e}");
            }
        });
        self.connections
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(handle);
        Ok(client)
    }

    /// Runs one or more SQL statements (simple query protocol) in this test's database.
    pub async fn execute(&self, sql: &str) -> anyhow::Result<()> {
        let client = self.exec_client.get_or_try_init(|| self.client()).await?;
        client
            .batch_execute(sql)
            .await
            .with_context(|| format!("executing in {}: {sql}", self.db_name))
    }

    /// Drops the slot and the database now, logging any failure to stderr.
    pub async fn cleanup(self) {
        if let Err(e) = self.try_cleanup().await {
            eprintln!("{e:#}");
        }
    }

    /// Drops the slot and the database now, returning any failure.
    pub async fn try_cleanup(mut self) -> anyhow::Result<()> {
        self.cleaned_up = true;
        self.abort_connections();
        drop_database(&self.admin_url, &self.db_name, &self.slot_name()).await
    }

    fn abort_connections(&self) {
        let handles = std::mem::take(
            &mut *self
                .connections
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for handle in handles {
            handle.abort();
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if self.cleaned_up {
            return;
        }
        self.cleaned_up = true;
        self.abort_connections();
        // Drop cannot await, and we are probably inside the test's runtime (where blocking on
        // another future would panic): clean up on a thread with its own runtime.
        let admin_url = self.admin_url.clone();
        let db_name = self.db_name.clone();
        let slot_name = self.slot_name();
        let cleanup = std::thread::Builder::new()
            .name(format!("drop-{db_name}"))
            .spawn(move || -> anyhow::Result<()> {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .context("building a runtime for test database clean-up")?;
                runtime.block_on(drop_database(&admin_url, &db_name, &slot_name))
            });
        match cleanup.map(|thread| thread.join()) {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => eprintln!("{e:#}"),
            Ok(Err(_panic)) => eprintln!("test database {}: clean-up panicked", self.db_name),
            Err(e) => eprintln!(
                "test database {}: could not start the clean-up thread: {e}",
                self.db_name
            ),
        }
    }
}

/// Drops the replication slots of the stream and of the database (terminating the walsender
/// holding one first), then the database (terminating its connections).
async fn drop_database(admin_url: &str, db_name: &str, slot_name: &str) -> anyhow::Result<()> {
    let context = || format!("cleaning up test database {db_name}");
    let (client, connection) = tokio_postgres::connect(admin_url, NoTls)
        .await
        .with_context(context)?;
    let connection = tokio::spawn(connection);
    let result = async {
        drop_slots(&client, db_name, slot_name).await?;
        client
            .batch_execute(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                quote_ident(db_name)
            ))
            .await?;
        anyhow::Ok(())
    }
    .await
    .with_context(context);
    drop(client);
    let _ = connection.await;
    result
}

async fn drop_slots(client: &Client, db_name: &str, slot_name: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + CLEANUP_DEADLINE;
    loop {
        let slots = client
            .query(
                "SELECT slot_name::text, active_pid FROM pg_replication_slots \
                 WHERE slot_name = $1 OR database = $2",
                &[&slot_name, &db_name],
            )
            .await?;
        if slots.is_empty() {
            return Ok(());
        }
        let mut last_error = None;
        for slot in &slots {
            let name: String = slot.get(0);
            let active_pid: Option<i32> = slot.get(1);
            if let Some(pid) = active_pid {
                // Waits (up to the timeout) until the walsender has exited and released the slot.
                client
                    .execute(
                        "SELECT pg_terminate_backend($1, $2)",
                        &[&pid, &TERMINATE_TIMEOUT_MS],
                    )
                    .await?;
            }
            if let Err(e) = client
                .execute("SELECT pg_drop_replication_slot($1)", &[&name])
                .await
            {
                // A client reconnected and re-acquired it, or it was dropped concurrently.
                last_error = Some(e);
            }
        }
        // Poll again: confirms that no slot is left, or retries one that a client re-acquired.
        if Instant::now() >= deadline {
            let last_error = last_error.map_or_else(String::new, |e| format!(": {e}"));
            bail!("replication slots still present after {CLEANUP_DEADLINE:?}{last_error}");
        }
    }
}

fn admin_url_from(value: Option<String>) -> anyhow::Result<String> {
    match value {
        Some(url) if !url.trim().is_empty() => Ok(url),
        _ => bail!(
            "{DATABASE_URL_ENV} is not set: run the tests through ./scripts/test \
             (it starts a throwaway Postgres cluster)"
        ),
    }
}

/// `<sanitised test name>_<suffix>`: lowercase `[a-z0-9_]`, at most 63 bytes.
fn database_name(test_name: &str, suffix: &str) -> String {
    let mut name = String::with_capacity(test_name.len());
    for c in test_name.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            name.push(c);
        } else if !name.is_empty() && !name.ends_with('_') {
            name.push('_');
        }
    }
    let mut name = name.trim_end_matches('_').to_owned();
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name.insert_str(0, "t_");
    }
    // All ASCII, so truncating at any byte is a char boundary.
    name.truncate(MAX_IDENTIFIER - suffix.len() - 1);
    let name = name.trim_end_matches('_');
    format!("{name}_{suffix}")
}

/// Random `[a-z0-9]` characters.
fn random_id(len: usize) -> String {
    const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    (0..len)
        .map(|_| char::from(ALPHABET[rand::random_range(0..ALPHABET.len())]))
        .collect()
}

/// `url` with its database (path) replaced by `db_name`, keeping user, host and parameters.
fn url_with_dbname(url: &str, db_name: &str) -> anyhow::Result<String> {
    let authority_start = url
        .find("://")
        .map(|i| i + 3)
        .with_context(|| format!("{DATABASE_URL_ENV} must be a postgresql:// URL, got {url}"))?;
    let (base, query) = url.split_at(url.find('?').unwrap_or(url.len()));
    let authority_end = base[authority_start..]
        .find('/')
        .map_or(base.len(), |i| authority_start + i);
    Ok(format!("{}/{db_name}{query}", &base[..authority_end]))
}

fn quote_ident(ident: &str) -> String {
    format!("\"{}\"", ident.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_names_are_sanitised_lowercase_and_fit_an_identifier() {
        assert_eq!(
            database_name("Shape::Handles Are-Stable", "abc12345"),
            "shape_handles_are_stable_abc12345"
        );
        assert_eq!(
            database_name("42 things", "abc12345"),
            "t_42_things_abc12345"
        );
        assert_eq!(database_name("", "abc12345"), "t_abc12345");
        assert_eq!(database_name("ünïcode", "abc12345"), "n_code_abc12345");
        let long = database_name(&"a_".repeat(100), "abc12345");
        assert!(long.len() <= MAX_IDENTIFIER, "{long}");
        assert!(long.ends_with("a_abc12345"), "{long}");
        assert!(!long.contains("__"), "{long}");
    }

    #[test]
    fn random_ids_use_lowercase_letters_and_digits() {
        let id = random_id(STREAM_ID_LEN);
        assert_eq!(id.len(), STREAM_ID_LEN);
        assert!(
            id.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        );
        assert_ne!(random_id(STREAM_ID_LEN), id);
    }

    #[test]
    fn url_with_dbname_replaces_only_the_database() {
        let url = |u| url_with_dbname(u, "t_x").unwrap();
        assert_eq!(
            url("postgresql://postgres@127.0.0.1:5432/postgres"),
            "postgresql://postgres@127.0.0.1:5432/t_x"
        );
        assert_eq!(
            url("postgres://u:p@h:1/postgres?sslmode=disable"),
            "postgres://u:p@h:1/t_x?sslmode=disable"
        );
        assert_eq!(url("postgresql://h:1"), "postgresql://h:1/t_x");
        assert!(url_with_dbname("host=localhost", "t_x").is_err());
    }

    #[test]
    fn missing_database_url_points_at_the_test_script() {
        let e = admin_url_from(None).unwrap_err().to_string();
        assert!(e.contains("./scripts/test"), "{e}");
        assert!(admin_url_from(Some("postgresql://h/db".into())).is_ok());
    }
}
