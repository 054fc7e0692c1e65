//! Holding a key: claiming it (waiting for a holder to finish, where the caller is willing), and
//! keeping the lease alive while the work runs. Shared by the HTTP layer and the action runtime.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::key::{Fingerprint, StoreKey};
use crate::store::{Begin, LeaseToken, Store, StoreError};

/// The longest duration the library uses as given (a century); longer TTLs, leases and waits
/// are cut to it, so that no deadline overflows.
pub(crate) const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 60 * 60);

/// The shortest lease: shorter ones are raised to it, so that a heartbeat can keep it.
pub(crate) const SHORTEST_LEASE: Duration = Duration::from_millis(30);

/// The first and the longest wait between two looks at a key in flight; stores that notify end
/// a wait as soon as the key changes.
const FIRST_POLL: Duration = Duration::from_millis(10);
const LAST_POLL: Duration = Duration::from_millis(250);

/// [`Store::begin`]; while the key is in progress, waits (polling with a 10-250 ms backoff, or
/// woken by the store) and begins again, for at most `wait` in all. Returns
/// [`Begin::InProgress`] when the key is still held after `wait` (at once for a zero `wait`).
pub(crate) async fn begin_or_wait<St: Store>(
    store: &St,
    key: &StoreKey,
    fingerprint: &Fingerprint,
    lease: Duration,
    wait: Duration,
) -> Result<Begin, StoreError> {
    let mut deadline = None;
    let mut backoff = FIRST_POLL;
    loop {
        let begun = store.begin(key, fingerprint, lease).await?;
        if !matches!(begun, Begin::InProgress { .. }) || wait.is_zero() {
            return Ok(begun);
        }
        let left = deadline
            .get_or_insert_with(|| Instant::now() + wait.min(LONGEST))
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(begun);
        }
        store.wait(key, left.min(backoff)).await?;
        backoff = (backoff * 2).min(LAST_POLL);
    }
}

/// [`Store::complete`], tried once more after a short pause when the store was unavailable: a
/// completion that does not land leaves the key in progress until its lease expires, and then
/// the operation would run again. (Completion is fenced by the token, so a retry is safe.)
pub(crate) async fn complete<St: Store>(
    store: &St,
    key: &StoreKey,
    token: LeaseToken,
    record: bytes::Bytes,
    ttl: Duration,
) -> Result<(), StoreError> {
    match store.complete(key, token, record.clone(), ttl).await {
        Err(StoreError::Unavailable(_)) => {
            tokio::time::sleep(COMPLETE_RETRY).await;
            store.complete(key, token, record, ttl).await
        }
        done => done,
    }
}

/// The pause before the one retry of a completion.
const COMPLETE_RETRY: Duration = Duration::from_millis(50);

/// Drives `work` while extending the lease every third of its length.
pub(crate) async fn heartbeat<St: Store, F: Future>(
    store: &St,
    key: &StoreKey,
    token: LeaseToken,
    lease: Duration,
    work: F,
) -> F::Output {
    let mut work = pin!(work);
    let period = lease.max(SHORTEST_LEASE) / 3;
    let mut tick = pin!(tokio::time::sleep(period));
    loop {
        tokio::select! {
            biased;
            output = &mut work => return output,
            () = &mut tick => {}
        }
        let mut extend = pin!(store.extend(key, token, lease));
        let extended = tokio::select! {
            biased;
            output = &mut work => return output,
            extended = &mut extend => extended,
        };
        if let Err(error) = extended {
            tracing::warn!(key = %key.short(), %error, "idempotency: lease not extended");
        }
        tick.as_mut().reset(Instant::now() + period);
    }
}
