//! Stores that fail on purpose, for the layer's failure paths.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use idempotency_layer::key::{Fingerprint, StoreKey};
use idempotency_layer::store::{Begin, LeaseToken, Store, StoreError};

/// Wraps a store; while `down`, every operation fails as an unreachable backend would.
#[derive(Debug, Clone)]
pub struct Switchable<St> {
    inner: St,
    down: Arc<AtomicBool>,
}

impl<St> Switchable<St> {
    /// Wraps `inner`, up.
    pub fn new(inner: St) -> Self {
        Self {
            inner,
            down: Arc::default(),
        }
    }

    /// The switch: true takes the store down.
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

impl<St: Store> Store for Switchable<St> {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.check()?;
        self.inner.begin(key, fingerprint, lease).await
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.check()?;
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

/// Wraps a store and stores `garbage` in place of every result, as a corrupted record would be.
#[derive(Debug, Clone)]
pub struct Corrupting<St> {
    inner: St,
    garbage: Bytes,
}

impl<St> Corrupting<St> {
    /// Wraps `inner`; every completed record holds `garbage`.
    pub fn new(inner: St, garbage: &'static [u8]) -> Self {
        Self {
            inner,
            garbage: Bytes::from_static(garbage),
        }
    }
}

impl<St: Store> Store for Corrupting<St> {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.inner.begin(key, fingerprint, lease).await
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        _result: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.inner
            .complete(key, token, self.garbage.clone(), ttl)
            .await
    }

    async fn release(&self, key: &StoreKey, token: LeaseToken) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.inner.extend(key, token, lease).await
    }
}

/// Wraps a store; `complete` waits `delay` before it reaches the store, as a slow network
/// would, so that a caller can be cancelled mid-completion.
#[derive(Debug, Clone)]
pub struct SlowComplete<St> {
    inner: St,
    delay: Duration,
}

impl<St> SlowComplete<St> {
    /// Wraps `inner`.
    pub fn new(inner: St, delay: Duration) -> Self {
        Self { inner, delay }
    }
}

impl<St: Store> Store for SlowComplete<St> {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.inner.begin(key, fingerprint, lease).await
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        tokio::time::sleep(self.delay).await;
        self.inner.complete(key, token, result, ttl).await
    }

    async fn release(&self, key: &StoreKey, token: LeaseToken) -> Result<(), StoreError> {
        self.inner.release(key, token).await
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.inner.extend(key, token, lease).await
    }
}
