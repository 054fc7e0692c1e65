//! Holding a key: claiming it (waiting for a holder to finish, where the caller is willing), and
//! keeping the lease alive while the work runs. Shared by the HTTP layer and the action runtime.

use std::future::Future;
use std::pin::pin;
use std::time::Duration;

use tokio::time::Instant;

use crate::key::{Fingerprint, StoreKey};
use crate::store::{Begin, LeaseToken, Store, StoreError};

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
            .get_or_insert_with(|| Instant::now() + wait)
            .saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(begun);
        }
        store.wait(key, left.min(backoff)).await?;
        backoff = (backoff * 2).min(LAST_POLL);
    }
}

/// Drives `work` while extending the lease every third of its length.
pub(crate) async fn heartbeat<St: Store, F: Future>(
    store: &St,
    key: &StoreKey,
    token: LeaseToken,
    lease: Duration,
    work: F,
) -> F::Output {
    let mut work = pin!(work);
    let period = lease / 3;
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
