//! The contract every [`Store`] keeps; run it with [`store_contract_suite!`](crate::store_contract_suite).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use idempotency_layer::key::{Fingerprint, Scope, StoreKey};
use idempotency_layer::store::{Begin, LeaseToken, Store, StoreError};

const LONG: Duration = Duration::from_secs(30);

fn key(name: &str) -> StoreKey {
    keys(&[name]).remove(0)
}

/// Keys under one prefix; a fresh prefix per call keeps cases apart on a shared server.
fn keys(names: &[&str]) -> Vec<StoreKey> {
    let prefix: Arc<str> = Arc::from(format!("contract:{}:", rand_suffix()));
    names
        .iter()
        .map(|name| {
            StoreKey::derive(
                prefix.clone(),
                "contract",
                &Scope::global(),
                name.as_bytes(),
            )
        })
        .collect()
}

fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let pid = u64::from(std::process::id());
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64);
    pid ^ nanos ^ NEXT.fetch_add(1, Ordering::Relaxed).rotate_left(32)
}

fn fp(payload: &str) -> Fingerprint {
    Fingerprint::of(payload)
}

/// Claims `key` with the empty fingerprint, or fails the test.
pub async fn acquired<St: Store>(store: &St, key: &StoreKey, lease: Duration) -> LeaseToken {
    match store
        .begin(key, &Fingerprint::of(""), LeaseToken::random(), lease)
        .await
        .expect("begin")
    {
        Begin::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// Asserts that `token` can neither complete, release nor extend `key`: all three are refused
/// with `LeaseLost`.
async fn assert_fenced_out<St: Store>(store: &St, key: &StoreKey, token: LeaseToken) {
    assert!(matches!(
        store
            .complete(key, token, Bytes::from_static(b"refused"), LONG)
            .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.release(key, token).await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.extend(key, token, LONG).await,
        Err(StoreError::LeaseLost)
    ));
}

async fn acquire<St: Store>(store: &St, key: &StoreKey, lease: Duration) -> LeaseToken {
    match store
        .begin(key, &fp("a"), LeaseToken::random(), lease)
        .await
        .expect("begin")
    {
        Begin::Acquired(token) => token,
        other => panic!("expected Acquired, got {other:?}"),
    }
}

/// An absent key is claimed; while held, the same payload sees it in progress with at most the
/// lease left.
pub async fn claims_then_reports_in_progress<St: Store>(store: St) {
    let key = key("k");
    acquire(&store, &key, LONG).await;
    match store
        .begin(&key, &fp("a"), LeaseToken::random(), LONG)
        .await
        .unwrap()
    {
        Begin::InProgress { retry_after } => {
            assert!(
                retry_after > Duration::ZERO && retry_after <= LONG,
                "{retry_after:?}"
            );
        }
        other => panic!("expected InProgress, got {other:?}"),
    }
}

/// A completed key returns its result to the same payload, and never runs again.
pub async fn completed_key_returns_its_result<St: Store>(store: St) {
    let key = key("k");
    let token = acquire(&store, &key, LONG).await;
    store
        .complete(&key, token, Bytes::from_static(b"result"), LONG)
        .await
        .unwrap();
    for _ in 0..3 {
        assert_eq!(
            store
                .begin(&key, &fp("a"), LeaseToken::random(), LONG)
                .await
                .unwrap(),
            Begin::Completed(Bytes::from_static(b"result"))
        );
    }
}

/// Another payload under a key in progress or completed is a mismatch.
pub async fn another_payload_is_a_mismatch<St: Store>(store: St) {
    let key = key("k");
    let token = acquire(&store, &key, LONG).await;
    assert_eq!(
        store
            .begin(&key, &fp("b"), LeaseToken::random(), LONG)
            .await
            .unwrap(),
        Begin::Mismatch
    );
    store
        .complete(&key, token, Bytes::new(), LONG)
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(&key, &fp("b"), LeaseToken::random(), LONG)
            .await
            .unwrap(),
        Begin::Mismatch
    );
}

/// A released key is claimed again.
pub async fn release_frees_the_key<St: Store>(store: St) {
    let key = key("k");
    let token = acquire(&store, &key, LONG).await;
    store.release(&key, token).await.unwrap();
    let second = acquire(&store, &key, LONG).await;
    assert_ne!(token, second);
}

/// A token that never held the key is refused by complete, release and extend, and the
/// holder's record is untouched.
pub async fn a_wrong_token_is_refused<St: Store>(store: St) {
    let key = key("k");
    let token = acquire(&store, &key, LONG).await;
    let stranger = LeaseToken::random();
    assert_fenced_out(&store, &key, stranger).await;
    store
        .complete(&key, token, Bytes::from_static(b"mine"), LONG)
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(&key, &fp("a"), LeaseToken::random(), LONG)
            .await
            .unwrap(),
        Begin::Completed(Bytes::from_static(b"mine"))
    );
}

/// Operations on an absent key are refused.
pub async fn an_absent_key_has_no_lease<St: Store>(store: St) {
    let key = key("never");
    let token = LeaseToken::random();
    assert_fenced_out(&store, &key, token).await;
}

/// A completion retried by its own holder (its first reply was lost) is done, not refused,
/// and changes nothing; the completed record still refuses every other token, and cannot be
/// released.
pub async fn a_retried_completion_is_done<St: Store>(store: St) {
    let key = key("retried");
    let token = acquire(&store, &key, LONG).await;
    store
        .complete(&key, token, Bytes::from_static(b"first"), LONG)
        .await
        .unwrap();
    store
        .complete(&key, token, Bytes::from_static(b"again"), LONG)
        .await
        .unwrap();
    assert!(matches!(
        store
            .complete(&key, LeaseToken::random(), Bytes::new(), LONG)
            .await,
        Err(StoreError::LeaseLost)
    ));
    assert!(matches!(
        store.release(&key, token).await,
        Err(StoreError::LeaseLost)
    ));
    assert_eq!(
        store
            .begin(&key, &fp("a"), LeaseToken::random(), LONG)
            .await
            .unwrap(),
        Begin::Completed(Bytes::from_static(b"first"))
    );
}

/// A holder whose lease expired is fenced: the next holder claims the key, and the stale
/// holder's complete, release and extend are refused without touching the new record.
pub async fn a_stale_holder_is_fenced<St: Store>(store: St) {
    let key = key("k");
    let stale = acquire(&store, &key, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    let current = acquire(&store, &key, LONG).await;
    assert_fenced_out(&store, &key, stale).await;
    assert!(matches!(
        store
            .begin(&key, &fp("a"), LeaseToken::random(), LONG)
            .await
            .unwrap(),
        Begin::InProgress { .. }
    ));
    store
        .complete(&key, current, Bytes::from_static(b"current"), LONG)
        .await
        .unwrap();
    assert_eq!(
        store
            .begin(&key, &fp("a"), LeaseToken::random(), LONG)
            .await
            .unwrap(),
        Begin::Completed(Bytes::from_static(b"current"))
    );
}

/// An expired lease, even unclaimed by anyone else, can no longer complete.
pub async fn an_expired_lease_cannot_complete<St: Store>(store: St) {
    let key = key("k");
    let token = acquire(&store, &key, Duration::from_millis(100)).await;
    tokio::time::sleep(Duration::from_millis(250)).await;
    assert!(matches!(
        store.complete(&key, token, Bytes::new(), LONG).await,
        Err(StoreError::LeaseLost)
    ));
    acquire(&store, &key, LONG).await;
}

/// Extending a lease keeps the key held past its first expiry.
pub async fn extend_keeps_the_lease<St: Store>(store: St) {
    let key = key("k");
    let lease = Duration::from_secs(1);
    let token = acquire(&store, &key, lease).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        store.extend(&key, token, lease).await.unwrap();
    }
    assert!(matches!(
        store
            .begin(&key, &fp("a"), LeaseToken::random(), lease)
            .await
            .unwrap(),
        Begin::InProgress { .. }
    ));
    store
        .complete(&key, token, Bytes::new(), LONG)
        .await
        .unwrap();
}

/// A completed record expires after its TTL; then the key is claimed afresh.
pub async fn completed_records_expire<St: Store>(store: St) {
    let key = key("k");
    let token = acquire(&store, &key, LONG).await;
    store
        .complete(
            &key,
            token,
            Bytes::from_static(b"r"),
            Duration::from_secs(1),
        )
        .await
        .unwrap();
    assert!(matches!(
        store
            .begin(&key, &fp("a"), LeaseToken::random(), LONG)
            .await
            .unwrap(),
        Begin::Completed(_)
    ));
    tokio::time::sleep(Duration::from_millis(1500)).await;
    acquire(&store, &key, LONG).await;
}

/// Many tasks claiming one key at once: exactly one wins.
pub async fn concurrent_claims_have_one_winner<St: Store>(store: St) {
    let store = Arc::new(store);
    let key = key("contended");
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let (store, key) = (store.clone(), key.clone());
            tokio::spawn(async move {
                store
                    .begin(&key, &fp("a"), LeaseToken::random(), LONG)
                    .await
                    .unwrap()
            })
        })
        .collect();
    let mut acquired = 0;
    for task in tasks {
        match task.await.unwrap() {
            Begin::Acquired(_) => acquired += 1,
            Begin::InProgress { .. } => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(acquired, 1);
}

/// Different keys never see each other's records.
pub async fn keys_are_independent<St: Store>(store: St) {
    let [a, b] = <[StoreKey; 2]>::try_from(keys(&["a", "b"])).unwrap();
    let token = acquire(&store, &a, LONG).await;
    store
        .complete(&a, token, Bytes::from_static(b"a"), LONG)
        .await
        .unwrap();
    let in_b = acquire(&store, &b, LONG).await;
    store.release(&b, in_b).await.unwrap();
    assert_eq!(
        store
            .begin(&a, &fp("a"), LeaseToken::random(), LONG)
            .await
            .unwrap(),
        Begin::Completed(Bytes::from_static(b"a"))
    );
}

/// A waiter that waits in short steps, as the layer does, sees the completion and reads the
/// result.
pub async fn a_waiter_sees_the_completion<St: Store>(store: St) {
    let store = Arc::new(store);
    let key = key("k");
    let token = acquire(&*store, &key, LONG).await;
    let waiter = {
        let (store, key) = (store.clone(), key.clone());
        tokio::spawn(tokio::time::timeout(Duration::from_secs(10), async move {
            loop {
                match store
                    .begin(&key, &fp("a"), LeaseToken::random(), LONG)
                    .await
                    .unwrap()
                {
                    Begin::Completed(result) => return result,
                    Begin::InProgress { .. } => {
                        store.wait(&key, Duration::from_millis(100)).await.unwrap();
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
        }))
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    store
        .complete(&key, token, Bytes::from_static(b"done"), LONG)
        .await
        .unwrap();
    let result = waiter
        .await
        .unwrap()
        .expect("the waiter saw the completion within 10 s");
    assert_eq!(result, "done");
}

/// Generates one `#[tokio::test]` per store-contract case for the store made by `$make`, an
/// `async fn() -> (impl Store, Guard)`; the guard lives as long as the test.
#[macro_export]
macro_rules! store_contract_suite {
    ($make:path) => {
        $crate::store_contract_suite!(@cases $make;
            claims_then_reports_in_progress,
            completed_key_returns_its_result,
            another_payload_is_a_mismatch,
            release_frees_the_key,
            a_wrong_token_is_refused,
            a_retried_completion_is_done,
            an_absent_key_has_no_lease,
            a_stale_holder_is_fenced,
            an_expired_lease_cannot_complete,
            extend_keeps_the_lease,
            completed_records_expire,
            concurrent_claims_have_one_winner,
            keys_are_independent,
            a_waiter_sees_the_completion,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        mod store_contract {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    // The guard keeps what the store needs (a Redis server) alive for the test.
                    let (store, _guard) = $make().await;
                    $crate::store_contract::$case(store).await;
                }
            )*
        }
    };
}
