//! Errors: of the stores, and of run-once actions.

use std::error::Error as StdError;
use std::time::Duration;

/// A boxed error from a store's backend (a connection, a timeout, a server reply).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// What can go wrong in a [`Store`](crate::store::Store) operation.
///
/// The layer never panics on any of them. When claiming a key fails, it answers
/// `503 Service Unavailable` with `Retry-After` (with `fail_open`, an unreachable or full store
/// runs the handler unprotected instead; a corrupt record never does). When storing a result
/// fails, the handler has already run: the failure is logged and its response is sent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The lease token no longer matches the record: the lease expired and the key was released
    /// or claimed by another holder. Nothing was written.
    #[error("the lease on this idempotency key is no longer held")]
    LeaseLost,
    /// The store is at its capacity and holds nothing it may evict (only records in progress).
    #[error("the idempotency store is full: {0}")]
    Full(&'static str),
    /// A stored record could not be decoded: corrupt bytes or an unknown encoding version.
    #[error("a stored idempotency record is corrupt: {0}")]
    Corrupt(String),
    /// The record was stored on the primary, but fewer replicas than required acknowledged it
    /// in time (see `RedisStoreBuilder::wait_for_replicas`).
    #[error("the record was acknowledged by {acknowledged} of {required} replicas in time")]
    NotReplicated {
        /// Replicas that acknowledged the record.
        acknowledged: u32,
        /// Replicas required.
        required: u32,
    },
    /// The backend could not be reached or did not answer in time.
    #[error("the idempotency store is unavailable")]
    Unavailable(#[source] BoxError),
}

impl StoreError {
    /// Wraps a backend error as [`StoreError::Unavailable`].
    pub fn unavailable(error: impl Into<BoxError>) -> Self {
        Self::Unavailable(error.into())
    }
}

/// Why a run-once [`Action`](crate::action::Action) (or an `#[idempotent]` function) did not
/// run its body. An `#[idempotent]` function's error type implements `From<Error>`.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Another call with this key is still running (and the policy is not to wait, or the wait
    /// ran out).
    #[error("another call with this idempotency key is still running; retry after {retry_after:?}")]
    InProgress {
        /// Time left on the running call's lease.
        retry_after: Duration,
    },
    /// The key was already used with other arguments (the ones named as `fingerprint`).
    #[error("this idempotency key was already used with different arguments")]
    KeyReused,
    /// The first call with this key ran, but its result was too large for the store to keep:
    /// it is not run again, and its result cannot be returned.
    #[error("the first call with this idempotency key ran, but its result was too large to keep")]
    ResultNotKept,
    /// An argument or result could not be serialized.
    #[error("could not serialize for the idempotency store: {0}")]
    Encode(#[source] serde_json::Error),
    /// The store failed, or holds a record that cannot be read.
    #[error(transparent)]
    Store(#[from] StoreError),
}
