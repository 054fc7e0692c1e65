//! The store contract and the HTTP contract on the in-memory store.

use idempotency_layer::MemoryStore;

async fn memory_store() -> (MemoryStore, ()) {
    (MemoryStore::new(), ())
}

tests::store_contract_suite!(memory_store);
tests::http_contract_suite!(memory_store);

mod bounds {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use idempotency_layer::MemoryStore;
    use idempotency_layer::key::{Fingerprint, Scope, StoreKey};
    use idempotency_layer::store::{Begin, LeaseToken, Store, StoreError};

    const HOUR: Duration = Duration::from_secs(3600);

    fn key(n: usize) -> StoreKey {
        StoreKey::derive(
            Arc::from("m:"),
            "bounds",
            &Scope::global(),
            n.to_string().as_bytes(),
        )
    }

    async fn complete(store: &MemoryStore, n: usize, result: &[u8], ttl: Duration) {
        let token = tests::store_contract::acquired(store, &key(n), HOUR).await;
        store
            .complete(&key(n), token, Bytes::copy_from_slice(result), ttl)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn completed_records_are_evicted_soonest_expiring_first() {
        let store = MemoryStore::builder().max_entries(4).shards(1).build();
        for n in 0..4 {
            complete(&store, n, b"r", HOUR + Duration::from_secs(n as u64)).await;
        }
        complete(&store, 4, b"r", HOUR * 2).await;
        assert_eq!(store.len(), 4);
        let fp = Fingerprint::of("");
        assert!(matches!(
            store
                .begin(&key(1), &fp, LeaseToken::random(), HOUR)
                .await
                .unwrap(),
            Begin::Completed(_)
        ));
        assert!(matches!(
            store
                .begin(&key(4), &fp, LeaseToken::random(), HOUR)
                .await
                .unwrap(),
            Begin::Completed(_)
        ));
        // Key 0 expired soonest, so it went: it is claimed afresh (and that evicts key 1).
        assert!(matches!(
            store
                .begin(&key(0), &fp, LeaseToken::random(), HOUR)
                .await
                .unwrap(),
            Begin::Acquired(_)
        ));
        assert_eq!(store.len(), 4);
    }

    #[tokio::test]
    async fn the_byte_bound_holds_across_shards() {
        let store = MemoryStore::builder()
            .max_bytes(64 * 1024)
            .shards(16)
            .build();
        for n in 0..200 {
            complete(&store, n, &[7; 4096], HOUR).await;
            assert!(store.bytes() <= 64 * 1024, "{} bytes", store.bytes());
        }
        assert!(store.len() >= 10, "only {} records kept", store.len());
    }

    #[tokio::test]
    async fn records_in_progress_are_never_evicted() {
        let store = MemoryStore::builder().max_entries(3).shards(4).build();
        let fp = Fingerprint::of("");
        for n in 0..3 {
            assert!(matches!(
                store
                    .begin(&key(n), &fp, LeaseToken::random(), HOUR)
                    .await
                    .unwrap(),
                Begin::Acquired(_)
            ));
        }
        assert!(matches!(
            store.begin(&key(3), &fp, LeaseToken::random(), HOUR).await,
            Err(StoreError::Full(_))
        ));
        for n in 0..3 {
            assert!(matches!(
                store
                    .begin(&key(n), &fp, LeaseToken::random(), HOUR)
                    .await
                    .unwrap(),
                Begin::InProgress { .. }
            ));
        }
    }

    /// A result that cannot fit beside the records in progress (which are never evicted) is
    /// refused at once, without evicting the completed records for nothing.
    #[tokio::test]
    async fn a_result_that_cannot_fit_evicts_nothing() {
        let overhead = {
            let probe = MemoryStore::builder().shards(1).build();
            complete(&probe, 0, b"", HOUR).await;
            probe.bytes()
        };
        let store = MemoryStore::builder()
            .max_bytes(40 * overhead)
            .shards(4)
            .build();
        for n in 0..10 {
            complete(&store, n, b"r", HOUR).await;
        }
        let held: Vec<_> = (100..120).map(|n| (n, key(n))).collect();
        let mut tokens = Vec::new();
        for (_, key) in &held {
            tokens.push(tests::store_contract::acquired(&store, key, HOUR).await);
        }
        // Fits in max_bytes alone, not beside the 20 records in progress.
        let result = Bytes::from(vec![0; 25 * overhead]);
        let refused = store.complete(&held[0].1, tokens[0], result, HOUR).await;
        assert!(matches!(refused, Err(StoreError::Full(_))), "{refused:?}");
        assert_eq!(store.len(), 30, "no completed record was evicted");
    }

    /// However long the backlog of expired records, an expired record is absent at once: a
    /// lapsed lease is claimed, a lapsed result is not replayed, another payload is no mismatch.
    #[tokio::test(start_paused = true)]
    async fn an_expired_record_is_absent_whatever_the_backlog() {
        let store = MemoryStore::builder().shards(1).build();
        let (a, b) = (Fingerprint::of("a"), Fingerprint::of("b"));
        for n in 0..100 {
            store
                .begin(&key(n), &a, LeaseToken::random(), Duration::from_secs(1))
                .await
                .unwrap();
            complete(&store, 1000 + n, b"r", Duration::from_secs(1)).await;
        }
        tokio::time::advance(Duration::from_secs(2)).await;
        for n in 0..100 {
            assert!(matches!(
                store
                    .begin(&key(n), &a, LeaseToken::random(), HOUR)
                    .await
                    .unwrap(),
                Begin::Acquired(_)
            ));
            assert!(matches!(
                store
                    .begin(&key(1000 + n), &b, LeaseToken::random(), HOUR)
                    .await
                    .unwrap(),
                Begin::Acquired(_)
            ));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn expired_records_are_dropped_without_a_thread_per_key() {
        let store = MemoryStore::builder().shards(1).build();
        for n in 0..1000 {
            complete(&store, n, b"result", Duration::from_secs(60)).await;
        }
        assert_eq!(store.len(), 1000);
        tokio::time::advance(Duration::from_secs(61)).await;
        // Each operation works off a bounded share of the backlog (no stall), so 100
        // operations drop all 1000 expired records.
        for n in 0..100 {
            complete(&store, 5000 + n, b"result", Duration::from_secs(60)).await;
        }
        assert_eq!(store.len(), 100);
    }
}

/// The memory store wakes a waiter the moment the record completes, long before its bound.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_by_the_completion() {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;
    use idempotency_layer::key::{Scope, StoreKey};
    use idempotency_layer::store::Store;

    let store = MemoryStore::new();
    let key = StoreKey::derive(Arc::from("w:"), "wait", &Scope::global(), b"k");
    let lease = Duration::from_secs(60);
    let token = tests::store_contract::acquired(&store, &key, lease).await;
    let waiter = tokio::spawn({
        let (store, key) = (store.clone(), key.clone());
        async move {
            let started = tokio::time::Instant::now();
            store.wait(&key, Duration::from_secs(30)).await.unwrap();
            started.elapsed()
        }
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
        .complete(&key, token, Bytes::from_static(b"done"), lease)
        .await
        .unwrap();
    let waited = waiter.await.unwrap();
    assert!(
        waited < Duration::from_secs(10),
        "waited {waited:?} of a 30 s bound"
    );
}

tests::action_contract_suite!(memory_store);
