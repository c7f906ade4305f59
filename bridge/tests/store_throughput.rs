//! Throughput of the recording path, measured on the real stores: how long `record()` takes
//! on the request path, and how many records per second reach SQLite and PostgreSQL. The
//! figures are printed (`--nocapture`) for BENCHMARKS.md; the assertions are floors far below
//! what a laptop does, so they catch regressions of an order of magnitude, not noise.

mod store_support;

use std::time::{Duration, Instant};

use bridge::pricing::PricingTable;
use bridge::record::Provider;
use bridge::recorder::Recorder;
use bridge::store::Store;
use bridge::telemetry::Telemetry;
use chrono::Utc;
use store_support::{record, wait_until, Postgres, TempDir};

const N: u64 = 20_000;

async fn measure(store: Store, dir: &TempDir, label: &str) {
    let records: Vec<_> = (0..N)
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
    .unwrap();
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    for r in records {
        let t = Instant::now();
        rec.record(r);
        worst = worst.max(t.elapsed());
    }
    let enqueue = start.elapsed();
    let stored = wait_until(Duration::from_secs(120), || async {
        store.count_interceptions().await.unwrap_or(0) == N
    })
    .await;
    let total = start.elapsed();
    rec.shutdown().await;
    assert!(
        stored,
        "{label}: only {} of {N} stored",
        store.count_interceptions().await.unwrap()
    );
    let per_record_us = enqueue.as_secs_f64() * 1e6 / N as f64;
    let rate = N as f64 / total.as_secs_f64();
    eprintln!(
        "{label}: record() mean {per_record_us:.2} µs, worst {:.0} µs; {N} records stored in {:.2} s = {rate:.0} records/s",
        worst.as_secs_f64() * 1e6,
        total.as_secs_f64()
    );
    assert!(
        per_record_us < 200.0,
        "record() must not wait on the store: {per_record_us} µs"
    );
    assert!(rate > 1000.0, "{label}: {rate} records/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_recording_keeps_up_with_thousands_of_requests_per_second() {
    let dir = TempDir::new("bench-sqlite");
    let store = Store::open(dir.path().join("bridge.db").to_str().unwrap())
        .await
        .unwrap();
    measure(store, &dir, "sqlite").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_recording_keeps_up_with_thousands_of_requests_per_second() {
    let pg = Postgres::start();
    let dir = TempDir::new("bench-pg");
    let store = Store::open(&pg.url()).await.unwrap();
    measure(store, &dir, "postgres").await;
}
