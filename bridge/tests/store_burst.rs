//! A burst of records through the real `Recorder` into the real stores (SQLite and
//! PostgreSQL): every record lands, exactly once, with what was recorded, and `record()` never
//! waits for the store (it returns while the store is still writing). How fast is measured by
//! the benchmark (`cargo bench -p bridge --bench store`), not here: a loaded machine must not
//! fail a correctness test.

mod store_support;

use std::collections::HashSet;
use std::time::Duration;

use bridge::pricing::PricingTable;
use bridge::record::Provider;
use bridge::recorder::Recorder;
use bridge::store::{InterceptionFilter, Store};
use bridge::telemetry::Telemetry;
use chrono::Utc;
use store_support::{record, wait_until, Postgres, TempDir};

const N: usize = 5_000;

async fn burst_lands_exactly_once(store: Store, dir: &TempDir) {
    let records: Vec<_> = (0..N)
        .map(|i| {
            record(
                &format!("user{}", i % 50),
                Provider::Anthropic,
                "claude-sonnet-4",
                Utc::now(),
                1000 + i as u64,
                200,
            )
        })
        .collect();
    let ids: HashSet<_> = records.iter().map(|r| r.id).collect();
    let telemetry = Telemetry::metrics_only("t");
    let rec = Recorder::start(
        store.clone(),
        PricingTable::default(),
        dir.path().join("spool"),
        telemetry.clone(),
    )
    .unwrap();
    for r in records {
        rec.record(r);
    }
    // record() only enqueues: the burst is handed over before the store has all of it.
    let at_handover = store.count_interceptions().await.unwrap();
    assert!(
        at_handover < N as u64,
        "record() waited for the store ({at_handover} of {N} already stored)"
    );
    let all = wait_until(Duration::from_secs(120), || async {
        store.count_interceptions().await.unwrap_or(0) >= N as u64
    })
    .await;
    rec.shutdown().await;
    assert!(
        all,
        "only {} of {N} stored",
        store.count_interceptions().await.unwrap()
    );
    let stored = store
        .list_interceptions(&InterceptionFilter::default())
        .await
        .unwrap();
    assert_eq!(stored.len(), N, "each record exactly once");
    let stored_ids: HashSet<_> = stored.iter().map(|r| r.id).collect();
    assert_eq!(stored_ids, ids);
    let input: u64 = stored.iter().map(|r| r.usage.input_tokens).sum();
    assert_eq!(input, (0..N as u64).map(|i| 1000 + i).sum::<u64>());
    assert!(stored.iter().all(|r| r.cost_usd.is_some_and(|c| c > 0.0)));
    assert_eq!(telemetry.spool_dropped_total(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_recorded_into_sqlite_lands_exactly_once_without_record_waiting_for_it() {
    let dir = TempDir::new("burst-sqlite");
    let store = Store::open(dir.path().join("bridge.db").to_str().unwrap())
        .await
        .unwrap();
    burst_lands_exactly_once(store, &dir).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_recorded_into_postgres_lands_exactly_once_without_record_waiting_for_it() {
    let pg = Postgres::start();
    let dir = TempDir::new("burst-pg");
    let store = Store::open(&pg.url()).await.unwrap();
    burst_lands_exactly_once(store, &dir).await;
}
