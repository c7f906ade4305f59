//! The same store code path against a real PostgreSQL (started on 127.0.0.1 by the test in a
//! temporary directory): migrations, keys and authentication, recording, usage, and an outage
//! where PostgreSQL is stopped mid-test and started again.

mod store_support;

use std::time::Duration;

use bridge::keys::{create_key, revoke_key, Authenticator};
use bridge::pricing::PricingTable;
use bridge::record::Provider;
use bridge::recorder::Recorder;
use bridge::store::Store;
use bridge::telemetry::Telemetry;
use bridge::usage::{self, GroupBy};
use chrono::Utc;
use store_support::{record, wait_until, Postgres, TempDir};

#[tokio::test]
async fn postgres_store_survives_a_database_restart_without_losing_or_duplicating_records() {
    let pg = Postgres::start();
    let dir = TempDir::new("pg");
    let store = Store::open(&pg.url()).await.unwrap();
    // Opening twice applies migrations once.
    let store2 = Store::open(&pg.url()).await.unwrap();
    drop(store2);

    // Keys: create, authenticate, revoke.
    let alice = create_key(&store, "alice").await.unwrap();
    let bob = create_key(&store, "bob").await.unwrap();
    let ttl = Duration::from_millis(200);
    let auth = Authenticator::with_ttl(store.clone(), ttl);
    let id = auth.authenticate(&alice.token).await.unwrap().unwrap();
    let alice_fetched = tokio::time::Instant::now();
    assert_eq!(
        (id.user.as_str(), id.key_id.as_str()),
        ("alice", alice.id.as_str())
    );
    assert_eq!(
        auth.authenticate("brg_not-a-real-token").await.unwrap(),
        None
    );
    revoke_key(&store, &bob.id).await.unwrap();
    assert_eq!(auth.authenticate(&bob.token).await.unwrap(), None);

    let telemetry = Telemetry::metrics_only("t");
    let rec = Recorder::start(
        store.clone(),
        PricingTable::default(),
        dir.path().join("spool"),
        telemetry.clone(),
    )
    .unwrap();
    for _ in 0..50 {
        rec.record(record(
            "alice",
            Provider::Anthropic,
            "claude-sonnet-4",
            Utc::now(),
            100,
            10,
        ));
    }
    assert!(
        wait_until(Duration::from_secs(20), || async {
            store.count_interceptions().await.unwrap_or(0) == 50
        })
        .await
    );

    // Outage: PostgreSQL goes away.
    pg.stop();
    for _ in 0..70 {
        rec.record(record(
            "bob",
            Provider::Openai,
            "gpt-4o",
            Utc::now(),
            100,
            10,
        ));
    }
    assert!(
        wait_until(Duration::from_secs(30), || async {
            rec.spool_depth().0 == 70
        })
        .await,
        "spool depth {:?}",
        rec.spool_depth()
    );
    assert!(telemetry.store_errors() >= 1);
    // A token seen before keeps working while the store is down, after its cache entry has
    // expired too (wait for exactly that).
    tokio::time::sleep_until(alice_fetched + ttl).await;
    assert_eq!(
        auth.authenticate(&alice.token).await.unwrap().unwrap().user,
        "alice"
    );
    // A never-seen token cannot be checked: that is an error, not a silent accept.
    assert!(auth.authenticate("brg_never-seen").await.is_err());

    // PostgreSQL comes back: the spool drains into it.
    pg.restart();
    assert!(
        wait_until(Duration::from_secs(30), || async {
            rec.spool_depth().0 == 0
        })
        .await,
        "spool should drain, depth {:?}",
        rec.spool_depth()
    );
    rec.shutdown().await;
    assert_eq!(store.count_interceptions().await.unwrap(), 120);

    let by_user = usage::report(&store, GroupBy::User, None).await.unwrap();
    let users: Vec<_> = by_user
        .iter()
        .map(|r| (r.key.as_str(), r.requests, r.input_tokens))
        .collect();
    assert_eq!(users, vec![("alice", 50, 5000), ("bob", 70, 7000)]);
    let by_day = usage::report(
        &store,
        GroupBy::Day,
        Some(Utc::now() - chrono::Duration::hours(1)),
    )
    .await
    .unwrap();
    assert_eq!(by_day.iter().map(|r| r.requests).sum::<u64>(), 120);
    assert!(by_user[0].cost_usd > 0.0);

    // Distinct ids: the replay did not duplicate.
    let all = store.list_interceptions(&Default::default()).await.unwrap();
    let distinct: std::collections::HashSet<_> = all.iter().map(|r| r.id).collect();
    assert_eq!(distinct.len(), 120);
}
