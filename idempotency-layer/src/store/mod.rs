//! Where idempotency records live, and the contract every store keeps.
//!
//! A key moves through: absent → in progress (holds a lease) → completed (holds the result) →
//! expired. Every transition is one atomic store operation:
//!
//! | operation | effect |
//! | --- | --- |
//! | [`begin`](Store::begin) | claims an absent (or lease-expired) key, or reads what is there, in one step |
//! | [`complete`](Store::complete) | stores the result, only while the caller's lease token still matches |
//! | [`release`](Store::release) | deletes the record, only while the caller's lease token still matches |
//! | [`extend`](Store::extend) | pushes the lease expiry out, only while the token still matches |
//! | [`wait`](Store::wait) | returns when an in-progress record may have changed, or after a bound |
//!
//! The lease token fences a holder: once its lease has expired, its `complete`, `release` and
//! `extend` are refused with [`StoreError::LeaseLost`] and nothing is overwritten.
//!
//! [`MemoryStore`] is the embedded default; `RedisStore` (feature `redis`, on by default) shares
//! records between processes and machines, on Redis 6.2 or later, standalone or Redis Cluster
//! (feature `cluster`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

pub use crate::error::StoreError;
pub use crate::key::{Fingerprint, StoreKey};

mod memory;
#[cfg(feature = "redis")]
mod redis;

pub use memory::{MemoryStore, MemoryStoreBuilder};
#[cfg(feature = "redis")]
pub use redis::{RedisStore, RedisStoreBuilder};

/// The random token that proves a caller holds a key's lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LeaseToken(u128);

impl LeaseToken {
    /// A fresh token from the thread's cryptographically seeded generator.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// Rebuilds a token from its value, as a store read it back.
    pub const fn from_u128(value: u128) -> Self {
        Self(value)
    }

    /// The token's value.
    pub const fn as_u128(self) -> u128 {
        self.0
    }
}

/// What [`Store::begin`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Begin {
    /// The key was absent (or its lease had expired): the holder of this token (the one given
    /// to `begin`) now holds the lease and runs the operation.
    Acquired(LeaseToken),
    /// Another caller holds the lease; it expires in `retry_after` at the latest.
    InProgress {
        /// Time left on the holder's lease.
        retry_after: Duration,
    },
    /// The operation completed; this is its stored result.
    Completed(Bytes),
    /// The key is in progress or completed with another fingerprint.
    Mismatch,
}

/// A backend for idempotency records. See the [module docs](self) for the contract.
///
/// All methods take `&self`: a store is shared by every request of a process.
pub trait Store: Send + Sync + 'static {
    /// Claims `key` for the holder of `token` with a lease of `lease`, or reports what is
    /// there.
    ///
    /// The caller makes the token ([`LeaseToken::random`]) before the call, so that it can
    /// release the key even if it is cancelled while `begin` is on its way: a release with a
    /// token that never acquired the key is refused and changes nothing.
    fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send;

    /// Replaces the caller's in-progress record with `result`, kept for `ttl`. Repeated by the
    /// same holder after it succeeded (its reply was lost), it returns `Ok` and changes
    /// nothing.
    fn complete(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Deletes the caller's in-progress record, so that a retry runs the operation again.
    fn release(
        &self,
        key: &StoreKey,
        token: LeaseToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Extends the caller's lease to `lease` from now.
    fn extend(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Waits, at most `at_most`, for an in-progress `key` to change; the caller then calls
    /// [`begin`](Store::begin) again, and waits again with a longer `at_most` (a backoff) while
    /// the key is still in progress.
    ///
    /// The default sleeps `at_most`: the caller polls. Stores that can be told of changes
    /// return as soon as the record completes or is released.
    fn wait(
        &self,
        key: &StoreKey,
        at_most: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        let _ = key;
        async move {
            tokio::time::sleep(at_most).await;
            Ok(())
        }
    }
}

impl<S: Store> Store for Arc<S> {
    fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<Begin, StoreError>> + Send {
        S::begin(self, key, fingerprint, token, lease)
    }

    fn complete(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::complete(self, key, token, result, ttl)
    }

    fn release(
        &self,
        key: &StoreKey,
        token: LeaseToken,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::release(self, key, token)
    }

    fn extend(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::extend(self, key, token, lease)
    }

    fn wait(
        &self,
        key: &StoreKey,
        at_most: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send {
        S::wait(self, key, at_most)
    }
}

type BoxFuture<'a, T> = std::pin::Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// [`Store`] with its futures boxed, so that it can be a trait object.
trait ErasedStore: Send + Sync + 'static {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        token: LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>>;
    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        token: LeaseToken,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
    fn wait<'a>(
        &'a self,
        key: &'a StoreKey,
        at_most: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>>;
}

impl<S: Store> ErasedStore for S {
    fn begin<'a>(
        &'a self,
        key: &'a StoreKey,
        fingerprint: &'a Fingerprint,
        token: LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<Begin, StoreError>> {
        Box::pin(Store::begin(self, key, fingerprint, token, lease))
    }

    fn complete<'a>(
        &'a self,
        key: &'a StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::complete(self, key, token, result, ttl))
    }

    fn release<'a>(
        &'a self,
        key: &'a StoreKey,
        token: LeaseToken,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::release(self, key, token))
    }

    fn extend<'a>(
        &'a self,
        key: &'a StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::extend(self, key, token, lease))
    }

    fn wait<'a>(
        &'a self,
        key: &'a StoreKey,
        at_most: Duration,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(Store::wait(self, key, at_most))
    }
}

/// Any [`Store`], chosen at run time and shared: a cheap-to-clone handle on a boxed store.
///
/// The type of the process-wide default store of actions, and a way to pick a store from
/// configuration while keeping one layer type:
///
/// ```
/// use idempotency_layer::{IdempotencyLayer, MemoryStore, store::SharedStore};
///
/// let store = SharedStore::new(MemoryStore::new());
/// let layer: IdempotencyLayer<SharedStore> = IdempotencyLayer::new(store);
/// ```
#[derive(Clone)]
pub struct SharedStore(Arc<dyn ErasedStore>);

impl SharedStore {
    /// Wraps `store`.
    pub fn new(store: impl Store) -> Self {
        Self(Arc::new(store))
    }
}

impl std::fmt::Debug for SharedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SharedStore").finish_non_exhaustive()
    }
}

impl Store for SharedStore {
    async fn begin(
        &self,
        key: &StoreKey,
        fingerprint: &Fingerprint,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<Begin, StoreError> {
        self.0.begin(key, fingerprint, token, lease).await
    }

    async fn complete(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        result: Bytes,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        self.0.complete(key, token, result, ttl).await
    }

    async fn release(&self, key: &StoreKey, token: LeaseToken) -> Result<(), StoreError> {
        self.0.release(key, token).await
    }

    async fn extend(
        &self,
        key: &StoreKey,
        token: LeaseToken,
        lease: Duration,
    ) -> Result<(), StoreError> {
        self.0.extend(key, token, lease).await
    }

    async fn wait(&self, key: &StoreKey, at_most: Duration) -> Result<(), StoreError> {
        self.0.wait(key, at_most).await
    }
}
