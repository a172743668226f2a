# volt tasks. `just` is optional: each recipe is the plain command it runs.

# Run volt against DATABASE_URL (Electric's env vars configure it).
run *args:
    cargo run --release -p volt -- {{args}}

# volt with an embedded throwaway Postgres and a demo table.
dev:
    cargo run --release -p volt -- dev

# Every test: starts a throwaway Postgres, runs the Rust and JS suites.
test:
    ./scripts/test

# Chaos tests (tests/js/chaos) on their own throwaway Postgres, which they restart: each
# fault once, then random faults for CHAOS_DURATION_MS (default 120000); the seed is
# printed, and `CHAOS_SEED=<seed> just chaos` replays the same faults.
chaos:
    cargo build -p volt -p volt-test-support --bins
    cd tests/js && npm ci
    t="${CARGO_TARGET_DIR:-target}"; case "$t" in /*) ;; *) t="$PWD/$t" ;; esac; \
    "$t/debug/volt-test-cluster" -- env VOLT_BIN="$t/debug/volt" bash -c 'cd tests/js && npm run chaos'

# Fuzz a target (where_clause, shape_query) for N seconds: `just fuzz where_clause 60`.
# libFuzzer needs nightly features; RUSTC_BOOTSTRAP lets the stable toolchain build it.
fuzz target="where_clause" seconds="60":
    RUSTC_BOOTSTRAP=1 cargo fuzz run {{target}} -- -max_total_time={{seconds}}

fmt:
    cargo fmt --all

lint:
    cargo fmt --all -- --check
    cargo clippy --workspace --all-targets -- -D warnings

# Benchmarks: each scenario starts its own Postgres and a release volt, prints tables
# with ratios against a baseline measured in the same run. `just bench idle-shapes`.
# Micro-benchmarks of pure code: `just micro`.
bench *args:
    cargo build --release -p volt -p volt-bench
    target/release/volt-bench {{args}}

# Micro-benchmarks of pure code (criterion): where-clause evaluation, filter-index
# routing, pgoutput decoding, log encoding. `just micro filter_route` runs one group.
micro *args:
    cargo bench -p volt-bench --bench micro -- {{args}}
