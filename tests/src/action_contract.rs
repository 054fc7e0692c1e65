//! The run-once contract of `#[idempotent]` functions (and so of `action::Action`), on any
//! store; run it with [`action_contract_suite!`](crate::action_contract_suite).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency_layer::{Error, Store, idempotent};
use serde::{Deserialize, Serialize};

fn unique(name: &str) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{name}-{}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    )
}

/// What a body returns: which run of the body produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt {
    /// The run of the body that made this receipt.
    pub run: usize,
    /// The address it was sent to.
    pub to: String,
}

/// A user error type, as an application has one.
#[derive(Debug, thiserror::Error)]
pub enum MailError {
    /// The provider refused.
    #[error("the mail provider refused")]
    Refused,
    /// Idempotency failed.
    #[error(transparent)]
    Idempotency(#[from] Error),
}

/// A generic function with reference and `impl Trait` parameters: counts its runs, sleeps,
/// then answers with a receipt. `fail` makes it fail; `panic` makes it panic.
#[idempotent(key = format!("mail-{user}"), store = store.clone(), fingerprint = [email])]
async fn send<St: Store + Clone>(
    store: &St,
    user: &str,
    email: impl AsRef<str> + serde::Serialize,
    runs: &AtomicUsize,
    delay: Duration,
    fail: bool,
) -> Result<Receipt, MailError> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    tokio::time::sleep(delay).await;
    if fail {
        return Err(MailError::Refused);
    }
    Ok(Receipt {
        run,
        to: email.as_ref().to_owned(),
    })
}

/// Panics on its first run. The long lease and the fail policy make sure a retry can only
/// run once the key was released, not because the lease ran out.
#[idempotent(key = user, store = store.clone(), lease = "60s", in_progress = fail)]
async fn panics_once<St: Store + Clone>(
    store: &St,
    user: &str,
    runs: &AtomicUsize,
) -> Result<usize, Error> {
    let run = runs.fetch_add(1, Ordering::SeqCst) + 1;
    if run == 1 {
        panic!("the first run panics");
    }
    Ok(run)
}

/// Sleeps `delay`, then counts its run; a long lease and the fail policy as above.
#[idempotent(key = user, store = store.clone(), lease = "60s", in_progress = fail)]
async fn slow<St: Store + Clone>(
    store: &St,
    user: &str,
    runs: &AtomicUsize,
    delay: Duration,
) -> Result<usize, Error> {
    tokio::time::sleep(delay).await;
    Ok(runs.fetch_add(1, Ordering::SeqCst) + 1)
}

/// Calls `call` until it stops failing with `InProgress`, for at most 2 s (a 30th of the
/// lease): the key must have been released, not expired.
async fn after_release<F, Fut>(mut call: F) -> usize
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<usize, Error>>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    loop {
        match call().await {
            Ok(run) => return run,
            Err(Error::InProgress { .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the key was not released"
                );
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(other) => panic!("{other}"),
        }
    }
}

/// A service with a method: `&self` and a store held in the struct.
pub struct Mailer<St> {
    store: St,
    entered: AtomicUsize,
    runs: AtomicUsize,
}

impl<St> Mailer<St> {
    fn new(store: St) -> Self {
        Self {
            store,
            entered: AtomicUsize::new(0),
            runs: AtomicUsize::new(0),
        }
    }
}

impl<St: Store + Clone> Mailer<St> {
    #[idempotent(key = user, store = self.store.clone(), in_progress = fail, lease = "5s")]
    async fn welcome(&self, user: &str, delay: Duration) -> Result<usize, Error> {
        self.entered.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(delay).await;
        Ok(self.runs.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[idempotent(key = user, store = self.store.clone())]
    async fn farewell(&self, user: &str) -> Result<usize, Error> {
        Ok(self.runs.fetch_add(1, Ordering::SeqCst) + 1)
    }

    #[idempotent(key = user, store = self.store.clone(), ttl = Duration::from_secs(1))]
    async fn short_lived(&self, user: &str) -> Result<usize, Error> {
        Ok(self.runs.fetch_add(1, Ordering::SeqCst) + 1)
    }
}

/// 100 concurrent calls with one key run the body once, and all return its value.
pub async fn concurrent_calls_run_the_body_once<St: Store + Clone>(store: St) {
    let runs = Arc::new(AtomicUsize::new(0));
    let user = unique("user");
    let calls: Vec<_> = (0..100)
        .map(|_| {
            let (store, runs, user) = (store.clone(), runs.clone(), user.clone());
            tokio::spawn(async move {
                send(
                    &store,
                    &user,
                    "a@example.com",
                    &runs,
                    Duration::from_millis(100),
                    false,
                )
                .await
                .expect("every call gets the receipt")
            })
        })
        .collect();
    for call in calls {
        assert_eq!(
            call.await.unwrap(),
            Receipt {
                run: 1,
                to: "a@example.com".to_owned()
            }
        );
    }
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// `Err` releases the key: the retry runs the body again, and its `Ok` is kept.
pub async fn an_error_releases_the_key<St: Store + Clone>(store: St) {
    let runs = AtomicUsize::new(0);
    let user = unique("user");
    let failed = send(&store, &user, "a@example.com", &runs, Duration::ZERO, true).await;
    assert!(matches!(failed, Err(MailError::Refused)));
    let receipt = send(&store, &user, "a@example.com", &runs, Duration::ZERO, false).await;
    assert_eq!(receipt.unwrap().run, 2);
    let again = send(&store, &user, "a@example.com", &runs, Duration::ZERO, false).await;
    assert_eq!(again.unwrap().run, 2);
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

/// A panicking body releases the key: the retry runs the body again.
pub async fn a_panic_releases_the_key<St: Store + Clone>(store: St) {
    let runs = Arc::new(AtomicUsize::new(0));
    let user = unique("user");
    let panicked = tokio::spawn({
        let (store, runs, user) = (store.clone(), runs.clone(), user.clone());
        async move { panics_once(&store, &user, &runs).await }
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    let run = after_release(|| panics_once(&store, &user, &runs)).await;
    assert_eq!(run, 2);
}

/// A call dropped mid-body (cancelled) releases the key: the retry runs the body again.
pub async fn a_cancelled_call_releases_the_key<St: Store + Clone>(store: St) {
    let runs = AtomicUsize::new(0);
    let user = unique("user");
    let cancelled = tokio::time::timeout(
        Duration::from_millis(50),
        slow(&store, &user, &runs, Duration::from_secs(30)),
    )
    .await;
    assert!(cancelled.is_err());
    let run = after_release(|| slow(&store, &user, &runs, Duration::ZERO)).await;
    assert_eq!(run, 1, "the cancelled body never counted its run");
}

/// The same key with another fingerprinted argument is `KeyReused`, and does not run.
pub async fn other_arguments_are_key_reused<St: Store + Clone>(store: St) {
    let runs = AtomicUsize::new(0);
    let user = unique("user");
    send(&store, &user, "a@example.com", &runs, Duration::ZERO, false)
        .await
        .unwrap();
    let reused = send(&store, &user, "b@example.com", &runs, Duration::ZERO, false).await;
    assert!(
        matches!(reused, Err(MailError::Idempotency(Error::KeyReused))),
        "{reused:?}"
    );
    // An argument outside `fingerprint` may change: the stored result comes back.
    let same = send(
        &store,
        &user,
        "a@example.com",
        &runs,
        Duration::from_millis(1),
        false,
    )
    .await;
    assert_eq!(same.unwrap().run, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// With `in_progress = fail`, a concurrent call fails with `InProgress` instead of waiting.
pub async fn the_fail_policy_gives_in_progress<St: Store + Clone>(store: St) {
    let mailer = Arc::new(Mailer::new(store));
    let user = unique("user");
    let first = tokio::spawn({
        let (mailer, user) = (mailer.clone(), user.clone());
        async move { mailer.welcome(&user, Duration::from_millis(500)).await }
    });
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while mailer.entered.load(Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first call never started"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let second = mailer.welcome(&user, Duration::ZERO).await;
    assert!(
        matches!(second, Err(Error::InProgress { .. })),
        "{second:?}"
    );
    assert_eq!(first.await.unwrap().unwrap(), 1);
    assert_eq!(mailer.welcome(&user, Duration::ZERO).await.unwrap(), 1);
}

/// Two functions (two namespaces) with the same key never share a result.
pub async fn namespaces_never_collide<St: Store + Clone>(store: St) {
    let mailer = Mailer::new(store);
    let user = unique("user");
    assert_eq!(mailer.welcome(&user, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(mailer.farewell(&user).await.unwrap(), 2);
    assert_eq!(mailer.welcome(&user, Duration::ZERO).await.unwrap(), 1);
    assert_eq!(mailer.farewell(&user).await.unwrap(), 2);
}

/// After the TTL the result is gone and the body runs again.
pub async fn the_ttl_expires_results<St: Store + Clone>(store: St) {
    let mailer = Mailer::new(store);
    let user = unique("user");
    assert_eq!(mailer.short_lived(&user).await.unwrap(), 1);
    assert_eq!(mailer.short_lived(&user).await.unwrap(), 1);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(mailer.short_lived(&user).await.unwrap(), 2);
}

/// Generates one `#[tokio::test]` per action-contract case for the store made by `$make`, an
/// `async fn() -> (impl Store + Clone, Guard)`.
#[macro_export]
macro_rules! action_contract_suite {
    ($make:path) => {
        $crate::action_contract_suite!(@cases $make;
            concurrent_calls_run_the_body_once,
            an_error_releases_the_key,
            a_panic_releases_the_key,
            a_cancelled_call_releases_the_key,
            other_arguments_are_key_reused,
            the_fail_policy_gives_in_progress,
            namespaces_never_collide,
            the_ttl_expires_results,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        mod action_contract {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    let (store, _guard) = $make().await;
                    $crate::action_contract::$case(store).await;
                }
            )*
        }
    };
}
