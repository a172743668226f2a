//! `volt dev`: an embedded throwaway Postgres with a demo table.

use std::path::Path;

use anyhow::Context;
use volt_pg::cluster::{ClusterOptions, LocalCluster};

pub fn start_cluster(storage_dir: &Path) -> anyhow::Result<LocalCluster> {
    std::fs::create_dir_all(storage_dir)
        .with_context(|| format!("cannot create {}", storage_dir.display()))?;
    let storage_dir = storage_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", storage_dir.display()))?;
    let data_dir = storage_dir.join("dev-postgres");
    let cluster = LocalCluster::start(ClusterOptions::new(&data_dir))
        .context("could not start the embedded Postgres")?;
    Ok(cluster)
}

pub async fn create_demo_table(url: &str) -> anyhow::Result<()> {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .context("cannot connect to the embedded Postgres")?;
    let task = tokio::spawn(conn);
    client
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS items (
                id serial PRIMARY KEY,
                title text NOT NULL,
                done boolean NOT NULL DEFAULT false
            )",
        )
        .await?;
    let count: i64 = client
        .query_one("SELECT count(*) FROM items", &[])
        .await?
        .get(0);
    if count == 0 {
        client
            .batch_execute(
                "INSERT INTO items (title, done) VALUES
                    ('Try volt', true), ('Subscribe to a shape', false), ('Insert a row and watch it arrive', false)",
            )
            .await?;
    }
    drop(client);
    let _ = task.await;
    Ok(())
}
