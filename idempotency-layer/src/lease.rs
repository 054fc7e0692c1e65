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
    token: LeaseToken,
    lease: Duration,
    wait: Duration,
) -> Result<Begin, StoreError> {
    let mut deadline = None;
    let mut backoff = FIRST_POLL;
    loop {
        let begun = store.begin(key, fingerprint, token, lease).await?;
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

/// Releases the key, logging (not failing) when the store refuses: the caller has nothing
/// better to do.
pub(crate) async fn release<St: Store>(store: &St, key: &StoreKey, token: LeaseToken) {
    if let Err(error) = store.release(key, token).await {
        tracing::warn!(key = %key.short(), %error, "idempotency: key not released");
    }
}

/// What dropping a [`Held`] key does.
pub(crate) enum OnDrop {
    /// The work did not finish (it panicked, or its caller was cancelled): release the key so
    /// that a retry runs it, at once rather than after the lease.
    Release,
    /// The work finished but its caller was cancelled while storing the result: store it.
    Complete(bytes::Bytes, Duration),
    /// The caller saw the work through.
    Nothing,
}

/// A held key; dropped before its holder set [`OnDrop::Nothing`], it releases the key or
/// stores the result in a task of its own, as [`OnDrop`] says.
pub(crate) struct Held<S: Store + Clone> {
    pub(crate) store: S,
    pub(crate) key: StoreKey,
    pub(crate) token: LeaseToken,
    pub(crate) on_drop: OnDrop,
}

impl<S: Store + Clone> Held<S> {
    pub(crate) fn new(store: S, key: StoreKey, token: LeaseToken) -> Self {
        Self {
            store,
            key,
            token,
            on_drop: OnDrop::Release,
        }
    }
}

impl<S: Store + Clone> Drop for Held<S> {
    fn drop(&mut self) {
        let on_drop = std::mem::replace(&mut self.on_drop, OnDrop::Nothing);
        if matches!(on_drop, OnDrop::Nothing) {
            return;
        }
        let (store, key, token) = (self.store.clone(), self.key.clone(), self.token);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            tracing::warn!(
                key = %key.short(),
                "idempotency: work abandoned outside a Tokio runtime; the key frees itself when its lease expires"
            );
            return;
        };
        match on_drop {
            OnDrop::Complete(record, ttl) => {
                runtime.spawn(async move {
                    if let Err(error) = complete(&store, &key, token, record, ttl).await {
                        tracing::error!(key = %key.short(), %error, "idempotency: result of a cancelled call not stored");
                    }
                });
            }
            OnDrop::Release => {
                tracing::debug!(key = %key.short(), "idempotency: work panicked or was cancelled; key released");
                runtime.spawn(async move { release(&store, &key, token).await });
            }
            OnDrop::Nothing => {}
        }
    }
}
