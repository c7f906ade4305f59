//! Recording throughput on the real stores: `cargo bench -p bridge --bench store`.
//!
//! Sends a burst of records through the real `Recorder` into SQLite (a temp file) and
//! PostgreSQL (a throwaway server on loopback, found as the tests find it), and prints how long
//! `record()` takes on the request path and how many records per second reach the store. The
//! floors (record() under 200 µs on average, over 1,000 records/s stored) are an order of
//! magnitude below what a laptop does: a run below them exits non-zero. They live here, not in
//! the test suite, because a loaded CI machine must not fail a correctness run on speed.
//! Tunable: BENCH_RECORDS (default 20,000).

#[path = "../tests/store_support/mod.rs"]
mod store_support;

use std::time::{Duration, Instant};

use bridge::pricing::PricingTable;
use bridge::record::Provider;
use bridge::recorder::Recorder;
use bridge::store::Store;
use bridge::telemetry::Telemetry;
use chrono::Utc;
use store_support::{record, wait_until, Postgres, TempDir};

/// Mean `record()` time above which the request path would be waiting on the store.
const MAX_RECORD_US: f64 = 200.0;
/// Records per second stored below which a busy gateway would fill its spool.
const MIN_RATE: f64 = 1000.0;

struct Measured {
    label: &'static str,
    mean_us: f64,
    worst_us: f64,
    rate: f64,
}

async fn measure(store: Store, dir: &TempDir, label: &'static str, n: u64) -> Measured {
    let records: Vec<_> = (0..n)
        .map(|i| {
            record(
                &format!("user{}", i % 50),
                Provider::Anthropic,
                "claude-sonnet-4",
                Utc::now(),
                1000,
                200,
            )
        })
        .collect();
    let rec = Recorder::start(
        store.clone(),
        PricingTable::default(),
        dir.path().join("spool"),
        Telemetry::metrics_only("bench"),
    )
    .expect("recorder starts");
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    for r in records {
        let t = Instant::now();
        rec.record(r);
        worst = worst.max(t.elapsed());
    }
    let enqueue = start.elapsed();
    let stored = wait_until(Duration::from_secs(300), || async {
        store.count_interceptions().await.unwrap_or(0) == n
    })
    .await;
    let total = start.elapsed();
    rec.shutdown().await;
    assert!(stored, "{label}: not all {n} records were stored");
    Measured {
        label,
        mean_us: enqueue.as_secs_f64() * 1e6 / n as f64,
        worst_us: worst.as_secs_f64() * 1e6,
        rate: n as f64 / total.as_secs_f64(),
    }
}

fn main() {
    let n = std::env::var("BENCH_RECORDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000u64);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a Tokio runtime");
    let results = rt.block_on(async {
        let dir = TempDir::new("bench-sqlite");
        let sqlite = Store::open(dir.path().join("bridge.db").to_str().unwrap())
            .await
            .expect("SQLite store opens");
        let s = measure(sqlite, &dir, "SQLite", n).await;
        let pg = Postgres::start();
        let dir = TempDir::new("bench-pg");
        let postgres = Store::open(&pg.url())
            .await
            .expect("PostgreSQL store opens");
        let p = measure(postgres, &dir, "PostgreSQL", n).await;
        [s, p]
    });
    println!("\n### Recording throughput ({n} records, one burst)\n");
    println!("| store | record() mean | record() worst | stored | floors |");
    println!("|---|---|---|---|---|");
    let mut missed = false;
    for m in &results {
        let ok = m.mean_us < MAX_RECORD_US && m.rate > MIN_RATE;
        missed |= !ok;
        println!(
            "| {} | {:.2} µs | {:.0} µs | {:.0} records/s | {} |",
            m.label,
            m.mean_us,
            m.worst_us,
            m.rate,
            if ok { "met" } else { "**missed**" }
        );
    }
    println!("\nFloors: record() mean < {MAX_RECORD_US} µs, > {MIN_RATE} records/s stored.");
    if missed {
        eprintln!("a recording floor was missed");
        std::process::exit(1);
    }
}
