//! RedisStore on a real, throwaway redis-server: the store contract, the HTTP contract, and
//! what only a real server can show (round trips, restarts, outages, replication).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use idempotency_layer::IdempotencyLayer;
use idempotency_layer::key::{Fingerprint, Scope, StoreKey};
use idempotency_layer::store::{Begin, LeaseToken, RedisStore, Store, StoreError};
use tests::app::{post_with, routes, send};
use tests::redis_server::RedisServer;

async fn redis_store() -> (RedisStore, RedisServer) {
    let server = RedisServer::start();
    let store = RedisStore::open(&server.url())
        .await
        .expect("the server answers");
    (store, server)
}

tests::store_contract_suite!(redis_store);
tests::http_contract_suite!(redis_store);
tests::action_contract_suite!(redis_store);

const MINUTE: Duration = Duration::from_secs(60);

fn key(name: &str) -> StoreKey {
    StoreKey::derive(Arc::from("t:"), "redis", &Scope::global(), name.as_bytes())
}

/// A first execution is 2 commands, a replay 1, a conflict 1: counted by MONITOR, commands run
/// inside scripts excluded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_trips_are_two_one_one() {
    let (store, server) = redis_store().await;
    let (router, counters) = routes();
    let app = router.layer(IdempotencyLayer::new(store));
    // Load the scripts first: the very first call of a script costs a SCRIPT LOAD.
    send(&app, post_with("/payments", "warm-up", "{}")).await;
    let mut monitor = server.monitor();
    monitor.round_trips();

    send(&app, post_with("/payments", "k", "{}")).await;
    let first = monitor.round_trips();
    assert_eq!(first.len(), 2, "first execution: {first:#?}");
    assert!(
        first.iter().all(|c| c.contains("\"EVALSHA\"")),
        "{first:#?}"
    );

    let replay = send(&app, post_with("/payments", "k", "{}")).await;
    assert!(replay.replayed());
    let replayed = monitor.round_trips();
    assert_eq!(replayed.len(), 1, "replay: {replayed:#?}");

    let held = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with("/gated", "g", "{}")).await }
    });
    counters.until_entered(1).await;
    monitor.round_trips();
    send(&app, post_with("/gated", "g", "{}"))
        .await
        .assert_problem(409, "in-progress");
    let conflict = monitor.round_trips();
    assert_eq!(conflict.len(), 1, "conflict: {conflict:#?}");
    counters.open(1);
    held.await.unwrap();
}

/// A restart loses the scripts and the connection: the store reconnects and reloads them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_store_survives_a_restart_and_reloads_its_scripts() {
    let (store, mut server) = redis_store().await;
    assert!(matches!(
        store
            .begin(
                &key("a"),
                &Fingerprint::of(""),
                LeaseToken::random(),
                MINUTE
            )
            .await,
        Ok(Begin::Acquired(_))
    ));
    server.restart();
    let deadline = Instant::now() + Duration::from_secs(10);
    let token = loop {
        match store
            .begin(
                &key("a"),
                &Fingerprint::of(""),
                LeaseToken::random(),
                MINUTE,
            )
            .await
        {
            Ok(Begin::Acquired(token)) => break token,
            Ok(other) => panic!("the restarted server is empty, yet {other:?}"),
            Err(error) => {
                assert!(Instant::now() < deadline, "never reconnected: {error}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    store
        .complete(&key("a"), token, Bytes::from_static(b"r"), MINUTE)
        .await
        .unwrap();
}

/// `SCRIPT FLUSH` drops the scripts; the next call loads them again, with no error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_reload_after_script_flush() {
    let (store, server) = redis_store().await;
    let token = match store
        .begin(
            &key("a"),
            &Fingerprint::of(""),
            LeaseToken::random(),
            MINUTE,
        )
        .await
        .unwrap()
    {
        Begin::Acquired(token) => token,
        other => panic!("{other:?}"),
    };
    assert_eq!(server.cmd(&["SCRIPT", "FLUSH"]), "+OK");
    store
        .complete(&key("a"), token, Bytes::from_static(b"r"), MINUTE)
        .await
        .unwrap();
    assert_eq!(server.cmd(&["SCRIPT", "FLUSH"]), "+OK");
    assert_eq!(
        store
            .begin(
                &key("a"),
                &Fingerprint::of(""),
                LeaseToken::random(),
                MINUTE
            )
            .await
            .unwrap(),
        Begin::Completed(Bytes::from_static(b"r"))
    );
}

/// A server that stops answering is an error after the response timeout, not a hang; the
/// store works again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unresponsive_server_is_an_error_not_a_hang() {
    let (store, server) = redis_store().await;
    store
        .begin(
            &key("warm"),
            &Fingerprint::of(""),
            LeaseToken::random(),
            MINUTE,
        )
        .await
        .unwrap();
    server.freeze();
    let started = Instant::now();
    let result = store
        .begin(
            &key("a"),
            &Fingerprint::of(""),
            LeaseToken::random(),
            MINUTE,
        )
        .await;
    let took = started.elapsed();
    server.thaw();
    assert!(
        matches!(result, Err(StoreError::Unavailable(_))),
        "{result:?}"
    );
    assert!(
        took < Duration::from_secs(5),
        "took {took:?}; the default timeout is 500 ms"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while store
        .begin(
            &key("b"),
            &Fingerprint::of(""),
            LeaseToken::random(),
            MINUTE,
        )
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "never recovered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Through the layer, an outage is 503 problem+json with Retry-After.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_503_through_the_layer() {
    let (store, server) = redis_store().await;
    let (router, counters) = routes();
    let app = router.layer(IdempotencyLayer::new(store));
    server.freeze();
    let reply = send(&app, post_with("/payments", "k", "{}")).await;
    server.thaw();
    reply.assert_problem(503, "store-unavailable");
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(counters.runs(), 0);
}

/// Nothing listening: opening the store fails at once with a clear error.
#[tokio::test]
async fn an_unreachable_server_fails_to_open() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let started = Instant::now();
    let result = RedisStore::open(&format!("redis://127.0.0.1:{port}")).await;
    assert!(matches!(result, Err(StoreError::Unavailable(_))));
    assert!(started.elapsed() < Duration::from_secs(10));
}

/// A record that is not ours (another version, truncated, garbage) is a Corrupt error, and
/// the layer answers 503 without running the handler.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_errors() {
    let (store, server) = redis_store().await;
    for garbage in [
        "\u{2}Cxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        "short",
        "",
    ] {
        let redis_key = store.redis_key(&key(garbage));
        assert_eq!(server.cmd(&["SET", &redis_key, garbage]), "+OK");
        let result = store
            .begin(
                &key(garbage),
                &Fingerprint::of(""),
                LeaseToken::random(),
                MINUTE,
            )
            .await;
        assert!(
            matches!(result, Err(StoreError::Corrupt(_))),
            "{garbage:?}: {result:?}"
        );
    }

    let (router, counters) = routes();
    let app = router.layer(IdempotencyLayer::new(store));
    send(&app, post_with("/payments", "k", "{}")).await;
    let keys = server.cmd(&["KEYS", "idempotency:*"]);
    assert!(keys.starts_with("*1"), "one record: {keys}");
    let scan = std::process::Command::new("redis-cli")
        .args([
            "-p",
            &server.port.to_string(),
            "--raw",
            "KEYS",
            "idempotency:*",
        ])
        .output()
        .expect("redis-cli runs");
    let redis_key = String::from_utf8(scan.stdout).unwrap().trim().to_owned();
    assert_eq!(server.cmd(&["SET", &redis_key, "\u{1}Cgarbage"]), "+OK");
    send(&app, post_with("/payments", "k", "{}"))
        .await
        .assert_problem(503, "store-unavailable");
    assert_eq!(counters.runs(), 1);
}

/// With `wait_for_replicas(1, …)`, a completed record is on the replica when `complete`
/// returns; with the replica frozen, `complete` reports that it was not replicated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_replicas_puts_the_record_on_the_replica_first() {
    let primary = RedisServer::start();
    let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &primary.port.to_string()]);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !replica
        .cmd(&["INFO", "replication"])
        .contains("master_link_status:up")
    {
        assert!(Instant::now() < deadline, "the replica never synced");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let store = RedisStore::builder()
        .wait_for_replicas(1, Duration::from_millis(500))
        .open(&primary.url())
        .await
        .unwrap();
    for n in 0..20 {
        let key = key(&format!("replicated-{n}"));
        let token = tests::store_contract::acquired(&store, &key, MINUTE).await;
        store
            .complete(&key, token, Bytes::from_static(b"done"), MINUTE)
            .await
            .unwrap();
        let on_replica = replica.cmd(&["GET", &store.redis_key(&key)]);
        assert!(
            on_replica.starts_with("\u{1}C") && on_replica.ends_with("done"),
            "{on_replica:?}"
        );
    }

    // The pipelined WAIT loads the script again after a SCRIPT FLUSH, like every other call.
    assert_eq!(primary.cmd(&["SCRIPT", "FLUSH"]), "+OK");
    let flushed = key("after-flush");
    let token = tests::store_contract::acquired(&store, &flushed, MINUTE).await;
    assert_eq!(primary.cmd(&["SCRIPT", "FLUSH"]), "+OK");
    store
        .complete(&flushed, token, Bytes::from_static(b"done"), MINUTE)
        .await
        .unwrap();

    replica.freeze();
    let key = key("unreplicated");
    let token = tests::store_contract::acquired(&store, &key, MINUTE).await;
    let result = store
        .complete(&key, token, Bytes::from_static(b"done"), MINUTE)
        .await;
    replica.thaw();
    assert!(
        matches!(
            result,
            Err(StoreError::NotReplicated {
                acknowledged: 0,
                required: 1
            })
        ),
        "{result:?}"
    );
}

/// Two stores with different prefixes on one server never share records.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_prefixes_keep_stores_apart() {
    let server = RedisServer::start();
    let a = RedisStore::builder()
        .key_prefix("a:")
        .open(&server.url())
        .await
        .unwrap();
    let b = RedisStore::builder()
        .key_prefix("b:")
        .open(&server.url())
        .await
        .unwrap();
    assert!(matches!(
        a.begin(
            &key("k"),
            &Fingerprint::of(""),
            LeaseToken::random(),
            MINUTE
        )
        .await
        .unwrap(),
        Begin::Acquired(_)
    ));
    assert!(matches!(
        b.begin(
            &key("k"),
            &Fingerprint::of(""),
            LeaseToken::random(),
            MINUTE
        )
        .await
        .unwrap(),
        Begin::Acquired(_)
    ));
    assert!(a.redis_key(&key("k")).starts_with("a:t:"));
}
