//! End-to-end tests: a real Postgres (the cluster `./scripts/test` starts), volt's stack
//! and HTTP API in process on port 0, and a Rust client that follows shapes the way
//! `@electric-sql/client` does.

mod support;

mod big_transaction;
mod crash;
mod durability;
mod herd;
mod protocol;
mod replication;
mod supervision;
mod types;
