//! A store that fails on purpose, for the failure paths of the layer and the actions.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use idempotency_layer::key::{Fingerprint, StoreKey};
use idempotency_layer::store::{Begin, LeaseToken, Store, StoreError};

/// Wraps a store and injects faults: an outage (while switched down, every operation fails as
/// an unreachable backend would), corrupt results (every completed record holds garbage), and
/// slow replies to `begin` and `complete` (as a slow network would: the store has acted, the
/// caller has not heard yet, and can be cancelled in between).
#[derive(Debug, Clone)]
pub struct Faulty<St> {
    inner: St,
    down: Arc<AtomicBool>,
    garbage: Option<Bytes>,
    begin_delay: Duration,
    complete_delay: Duration,
}

impl<St> Faulty<St> {
    /// Wraps `inner`, up and without faults.
    pub fn new(inner: St) -> Self {
        Self {
            inner,
            down: Arc::default(),
            garbage: None,
            begin_delay: Duration::ZERO,
            complete_delay: Duration::ZERO,
        }
    }

    /// Stores `garbage` in place of every result, as a corrupted record would be.
    pub fn corrupting(mut self, garbage: &'static [u8]) -> Self {
        self.garbage = Some(Bytes::from_static(garbage));
        self
    }

    /// Makes the reply to `begin` take `delay` after the store acted.
    pub fn slow_begin(mut self, delay: Duration) -> Self {
        self.begin_delay = delay;
        self
    }

    /// Makes `complete` wait `delay` before it reaches the store.
    pub fn slow_complete(mut self, delay: Duration) -> Self {
        self.complete_delay = delay;
        self
    }

    /// The outage switch: true takes the store down.
    pub fn switch(&self) -> Arc<AtomicBool> {
        self.down.clone()
    }

    fn check(&self) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            Err(StoreError::unavailable("connection refused (test outage)"))
        } else {
            Ok(())
        }
    }
}

impl<St: Store> Store for Faulty<St> {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.check()?;
        let begun = self.inner.begin(key, fingerprint, token, lease).await;
        tokio::time::sleep(self.begin_delay).await;
        begun
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        tokio::time::sleep(self.complete_delay).await;
        self.check()?;
        let result = self.garbage.clone().unwrap_or(result);
        self.inner.complete(key, token, result, ttl).await
    }

    async fn release(&self, key: &StoreKey, token: LeaseToken) -> Result<(), StoreError> {
        self.check()?;
        self.inner.release(key, token).await
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.extend(key, token, lease).await
    }
}
