//! `volt-bench`: scenarios that start their own throwaway Postgres and volt process,
//! drive load, and print one table each. Absolute figures on shared machines are noise;
//! each scenario also measures a baseline in the same run and prints the ratio.

mod big_transaction;
mod fanout;
mod harness;
mod herd;
mod idle_shapes;
mod initial_sync;
mod live;
mod load;
mod new_shapes;
mod overlapping;
mod plot;
mod replication_throughput;

use clap::{Parser, ValueEnum};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// Idle shapes: RAM and disk per shape, restart time to serving (S6).
    IdleShapes,
    /// Thundering herd: coalescing on/off, distinct new shapes, existing reads (issue 7).
    Herd,
    /// Initial sync of a large shape against COPY, warm re-reads against a static server (S1).
    InitialSync,
    /// Many distinct new shapes at once against a 20-connection pool (S2).
    NewShapes,
    /// Write fan-out to many live clients against a hold-and-release server (S3).
    Fanout,
    /// One huge transaction while some live clients stop reading (S7).
    BigTransaction,
    /// Replication throughput with many `field = const` shapes against pg_recvlogical (S4).
    ReplicationThroughput,
    /// Overlapping shapes hit by one transaction, plus ILIKE shapes: write-to-client p99 (S5).
    Overlapping,
    All,
}

#[derive(Debug, Parser)]
#[command(about = "volt benchmarks")]
struct Args {
    #[arg(value_enum, default_value = "all")]
    scenario: Scenario,
    /// Tiny sizes against the debug build: a smoke run that keeps the harness working.
    #[arg(long)]
    quick: bool,
    /// Shape counts for the idle-shapes scenario (comma separated).
    #[arg(long, value_delimiter = ',', default_values_t = [10_000usize])]
    shapes: Vec<usize>,
    /// Client counts for the fanout scenario (comma separated; default 1000,5000).
    #[arg(long, value_delimiter = ',')]
    fanout_clients: Vec<usize>,
    /// Seconds of writes per fanout client count (default 20; the issue asks 60).
    #[arg(long)]
    fanout_secs: Option<u64>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let env = harness::BenchEnv::start(args.quick)?;
        if matches!(args.scenario, Scenario::IdleShapes | Scenario::All) {
            let counts = if args.quick {
                vec![50]
            } else {
                args.shapes.clone()
            };
            for n in counts {
                idle_shapes::run(&env, n).await?;
            }
        }
        if matches!(args.scenario, Scenario::InitialSync | Scenario::All) {
            initial_sync::run(&env).await?;
        }
        if matches!(args.scenario, Scenario::Herd | Scenario::All) {
            herd::run(&env).await?;
        }
        if matches!(args.scenario, Scenario::NewShapes | Scenario::All) {
            new_shapes::run(&env).await?;
        }
        if matches!(args.scenario, Scenario::Fanout | Scenario::All) {
            fanout::run(&env, &args.fanout_clients, args.fanout_secs).await?;
        }
        if matches!(args.scenario, Scenario::BigTransaction | Scenario::All) {
            big_transaction::run(&env).await?;
        }
        if matches!(
            args.scenario,
            Scenario::ReplicationThroughput | Scenario::All
        ) {
            replication_throughput::run(&env).await?;
        }
        if matches!(args.scenario, Scenario::Overlapping | Scenario::All) {
            overlapping::run(&env).await?;
        }
        anyhow::Ok(())
    })
}
