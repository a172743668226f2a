//! Connection settings parsed from `DATABASE_URL`, and ordinary (non-replication)
//! connections with Electric's display settings pinned.

use std::str::FromStr;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_postgres::config::Host;
use tokio_postgres::{Client, Config, NoTls};

use crate::error::PgError;

/// Session settings Electric pins so values print the same in snapshots and in the
/// replication stream.
pub const DISPLAY_SETTINGS: &[(&str, &str)] = &[
    ("bytea_output", "hex"),
    ("DateStyle", "ISO, DMY"),
    ("TimeZone", "UTC"),
    ("extra_float_digits", "1"),
    ("IntervalStyle", "iso_8601"),
];

#[derive(Clone)]
pub struct PgConfig {
    config: Config,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: String,
    pub dbname: String,
}

impl std::fmt::Debug for PgConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(
            f,
            "postgresql://{}@{}:{}/{}",
            self.user, self.host, self.port, self.dbname
        )
    }
}

impl PgConfig {
    pub fn parse(url: &str) -> Result<PgConfig, PgError> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(PgError::Config(
                "DATABASE_URL must start with postgresql:// or postgres://".into(),
            ));
        }
        let mut config = Config::from_str(url)
            .map_err(|e| PgError::Config(format!("DATABASE_URL is invalid: {e}")))?;
        let host = match config.get_hosts().first() {
            Some(Host::Tcp(h)) => h.clone(),
            #[cfg(unix)]
            Some(Host::Unix(p)) => p.display().to_string(),
            None => "localhost".to_string(),
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let user = config
            .get_user()
            .ok_or_else(|| PgError::Config("DATABASE_URL has no user name".into()))?
            .to_string();
        let password = config
            .get_password()
            .map(|p| String::from_utf8_lossy(p).into_owned())
            .unwrap_or_default();
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        config.dbname(&dbname);
        let options: String = DISPLAY_SETTINGS
            .iter()
            .map(|(k, v)| format!("-c {k}={} ", v.replace(' ', "\\ ")))
            .collect();
        config.options(options.trim_end());
        config.application_name("volt");
        Ok(PgConfig {
            config,
            host,
            port,
            user,
            password,
            dbname,
        })
    }

    /// The `options` startup parameter that pins the display settings.
    pub fn display_options(&self) -> String {
        self.config.get_options().unwrap_or_default().to_string()
    }

    /// Open an ordinary connection. The returned value owns the connection task.
    pub async fn connect(&self) -> Result<PgConn, PgError> {
        let (client, connection) = self.config.connect(NoTls).await?;
        let (closed_tx, closed) = watch::channel(false);
        let task = tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "Postgres connection ended");
            }
            closed_tx.send_replace(true);
        });
        Ok(PgConn {
            client: Some(client),
            task,
            closed,
        })
    }
}

/// A client plus the task driving its socket; dropping it closes both.
pub struct PgConn {
    /// Taken only by `close`, which consumes the connection.
    client: Option<Client>,
    task: JoinHandle<()>,
    closed: watch::Receiver<bool>,
}

impl PgConn {
    pub fn client(&self) -> &Client {
        self.client
            .as_ref()
            .expect("a PgConn has its client until close consumes it")
    }

    pub fn is_closed(&self) -> bool {
        self.client().is_closed() || *self.closed.borrow()
    }

    /// End the session the polite way (Postgres is told, the socket closes) and wait
    /// until it has, for at most `within`: a bounded set of sessions (the snapshot
    /// permits) then never has this one and its successor open at once.
    pub async fn close(mut self, within: std::time::Duration) {
        drop(self.client.take());
        let mut rx = self.closed.clone();
        let _ = tokio::time::timeout(within, rx.wait_for(|c| *c)).await;
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        let _ = rx.wait_for(|c| *c).await;
    }
}

impl std::ops::Deref for PgConn {
    type Target = Client;
    fn deref(&self) -> &Client {
        self.client()
    }
}

impl Drop for PgConn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Parse `X/Y` as Postgres prints an LSN.
pub fn parse_lsn(text: &str) -> Option<u64> {
    let (hi, lo) = text.split_once('/')?;
    Some((u64::from_str_radix(hi, 16).ok()? << 32) | u64::from_str_radix(lo, 16).ok()?)
}

pub fn format_lsn(lsn: u64) -> String {
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_parse_and_print_as_postgres_does() {
        assert_eq!(parse_lsn("0/1570080"), Some(0x1570080));
        assert_eq!(parse_lsn("16/B374D848"), Some((0x16 << 32) | 0xB374D848));
        assert_eq!(format_lsn(0x1570080), "0/1570080");
        assert_eq!(parse_lsn("nope"), None);
    }

    #[test]
    fn database_urls_parse_and_never_print_the_password() {
        let c = PgConfig::parse("postgresql://u:secret@db.example:6543/app").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.dbname.as_str()),
            ("db.example", 6543, "app")
        );
        assert!(!format!("{c:?}").contains("secret"));
        assert!(PgConfig::parse("mysql://x").is_err());
    }
}
