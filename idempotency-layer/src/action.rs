//! Run-once async operations: the runtime behind [`#[idempotent]`](crate::idempotent), usable
//! on its own.
//!
//! An [`Action`] is a named operation; [`Action::run`] runs its body once per key. The first
//! call with a key runs the body: `Ok` is stored and returned to every later call with the same
//! key, which does not run the body again; `Err` releases the key, so a retry runs the body
//! again. A call while another runs the same key waits (bounded) for its result, or fails with
//! [`Error::InProgress`], as [`InProgress`] says. The same key with other arguments (the
//! [`Fingerprint`]) fails with [`Error::KeyReused`].
//!
//! A body that panics, or a call that is dropped (cancelled) before the body finished,
//! releases the key too: a retry runs the body again. A call cancelled after its body returned
//! `Ok` still stores the result. (Both happen in a task spawned on the current Tokio runtime;
//! outside one, the key frees itself when its lease expires.)
//!
//! A result larger than the store can hold is not kept: the key is kept completed without it,
//! and later calls fail with [`Error::ResultNotKept`] rather than run the body again.
//!
//! A result must survive a JSON round trip: one that does not serialize is not stored (the key
//! is released and the error logged), and one that serializes but does not read back (a NaN
//! float becomes `null`) makes later calls fail with a [`StoreError::Corrupt`].
//!
//! Results are stored as JSON (`T: Serialize + DeserializeOwned`), in the process-wide
//! [`default_store`] (a [`MemoryStore`] until [`set_default_store`] installs another, such as a
//! `RedisStore` at start-up) or in the store given to [`Action::store`].
//!
//! ```
//! use idempotency_layer::action::{Action, Fingerprint};
//! use idempotency_layer::Error;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let charge = Action::new("billing::charge");
//! let mut charged = 0;
//! for _ in 0..3 {
//!     let receipt: String = charge
//!         .run("order-42", Fingerprint::of(""), || async {
//!             charged += 1;
//!             Ok::<_, Error>(format!("receipt-{charged}"))
//!         })
//!         .await?;
//!     assert_eq!(receipt, "receipt-1");
//! }
//! assert_eq!(charged, 1);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use crate::error::Error;
pub use crate::key::Fingerprint;
use crate::key::{FingerprintBuilder, Scope, StoreKey};
use crate::lease::{self, Held, OnDrop, release};
use crate::store::{Begin, LeaseToken, MemoryStore, SharedStore, Store, StoreError};

/// What a call does while another call runs the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InProgress {
    /// Wait up to this long for the other call's result (the default, 10 s), then fail with
    /// [`Error::InProgress`]. If the other call fails and releases the key, this one runs.
    Wait(Duration),
    /// Fail at once with [`Error::InProgress`].
    Fail,
}

static DEFAULT_STORE: RwLock<Option<SharedStore>> = RwLock::new(None);

/// The process-wide store of actions that name none: a [`MemoryStore`] until
/// [`set_default_store`] installs another.
pub fn default_store() -> SharedStore {
    if let Some(store) = &*DEFAULT_STORE.read().unwrap_or_else(PoisonError::into_inner) {
        return store.clone();
    }
    DEFAULT_STORE
        .write()
        .unwrap_or_else(PoisonError::into_inner)
        .get_or_insert_with(|| SharedStore::new(MemoryStore::new()))
        .clone()
}

/// Installs the process-wide default store, typically once at start-up (a `RedisStore`, so
/// that every process shares one state). Calls that already started keep the store they had.
pub fn set_default_store(store: impl Store) {
    *DEFAULT_STORE
        .write()
        .unwrap_or_else(PoisonError::into_inner) = Some(SharedStore::new(store));
}

/// The fingerprint of an action's arguments: each serialized as JSON, length-prefixed, hashed.
///
/// ```
/// use idempotency_layer::action::fingerprint_params;
///
/// let a = fingerprint_params().param(&"a@example.com")?.param(&3)?.finish();
/// let b = fingerprint_params().param(&"a@example.com")?.param(&4)?.finish();
/// assert_ne!(a, b);
/// # Ok::<(), idempotency_layer::Error>(())
/// ```
pub fn fingerprint_params() -> ParamsFingerprint {
    ParamsFingerprint(Fingerprint::builder())
}

/// Builds a [`Fingerprint`] from serialized arguments; see [`fingerprint_params`].
#[derive(Debug, Clone)]
pub struct ParamsFingerprint(FingerprintBuilder);

impl ParamsFingerprint {
    /// Adds one argument.
    pub fn param<P: Serialize + ?Sized>(self, param: &P) -> Result<Self, Error> {
        let json = serde_json::to_vec(param).map_err(Error::Encode)?;
        Ok(Self(self.0.field(json)))
    }

    /// The fingerprint of the arguments added.
    pub fn finish(self) -> Fingerprint {
        self.0.finish()
    }
}

/// A named operation that runs once per key; see the [module docs](self).
#[derive(Clone)]
pub struct Action<S = SharedStore> {
    namespace: Cow<'static, str>,
    store: S,
    ttl: Duration,
    lease: Duration,
    in_progress: InProgress,
    prefix: Arc<str>,
}

impl<S> fmt::Debug for Action<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Action")
            .field("namespace", &self.namespace)
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("in_progress", &self.in_progress)
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl Action {
    /// An action named `namespace` on the [`default_store`]: records kept 24 h, a 10 s lease
    /// (extended while the body runs), concurrent calls wait up to 10 s. Two actions with
    /// different namespaces never share keys.
    pub fn new(namespace: impl Into<Cow<'static, str>>) -> Self {
        Self {
            namespace: namespace.into(),
            store: default_store(),
            ttl: Duration::from_secs(24 * 60 * 60),
            lease: Duration::from_secs(10),
            in_progress: InProgress::Wait(Duration::from_secs(10)),
            prefix: Arc::from("idempotency:"),
        }
    }
}

impl<S> Action<S> {
    /// Keeps the action's records in `store` instead of the default store.
    pub fn store<S2: Store + Clone>(self, store: S2) -> Action<S2> {
        Action {
            namespace: self.namespace,
            store,
            ttl: self.ttl,
            lease: self.lease,
            in_progress: self.in_progress,
            prefix: self.prefix,
        }
    }

    /// How long a result is kept and returned. Default 24 hours.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// How long a call holds its key without a heartbeat; extended every third of it while
    /// the body runs. Default 10 seconds; at least 30 ms.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.max(lease::SHORTEST_LEASE);
        self
    }

    /// What a call does while another runs the same key. Default: wait up to 10 s.
    pub fn in_progress(mut self, policy: InProgress) -> Self {
        self.in_progress = policy;
        self
    }

    /// The prefix of the storage keys. Default `idempotency:`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }
}

/// The version byte in front of every stored action result; the rest is JSON.
const RESULT_VERSION: u8 = 1;
/// The whole record of a result the store could not hold.
const RESULT_NOT_KEPT: u8 = 2;

impl<S: Store + Clone> Action<S> {
    /// Runs `body` once for `key` (any `Display`: a string, a number, an id) and `fingerprint`;
    /// see the [module docs](self).
    pub async fn run<T, E, F, Fut>(
        &self,
        key: impl fmt::Display,
        fingerprint: Fingerprint,
        body: F,
    ) -> Result<T, E>
    where
        T: Serialize + DeserializeOwned,
        E: From<Error>,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let key = StoreKey::derive(
            self.prefix.clone(),
            &self.namespace,
            &Scope::global(),
            key.to_string().as_bytes(),
        );
        let wait = match self.in_progress {
            InProgress::Wait(bound) => bound,
            InProgress::Fail => Duration::ZERO,
        };
        // The guard comes before the claim: a call cancelled while `begin` is on its way still
        // frees the key it may just have claimed (a release under a token that claimed nothing
        // changes nothing).
        let token = LeaseToken::random();
        let mut held = Held::new(self.store.clone(), key, token);
        let key = &held.key;
        let begun =
            lease::begin_or_wait(&self.store, key, &fingerprint, token, self.lease, wait).await;
        let begun = match begun {
            Ok(begun) => begun,
            Err(error) => {
                // A claim whose reply was lost frees itself when its lease expires; a release
                // now would only add load to a failing store.
                held.on_drop = OnDrop::Nothing;
                return Err(Error::Store(error).into());
            }
        };
        let refused = match begun {
            Begin::Acquired(_) => None,
            Begin::Completed(record) => {
                tracing::debug!(key = %key.short(), namespace = %self.namespace, "idempotent action: replayed");
                Some(decode(&record))
            }
            Begin::Mismatch => {
                tracing::info!(key = %key.short(), namespace = %self.namespace, "idempotent action: key reused with other arguments");
                Some(Err(Error::KeyReused))
            }
            Begin::InProgress { retry_after } => {
                tracing::debug!(key = %key.short(), namespace = %self.namespace, "idempotent action: in progress elsewhere");
                Some(Err(Error::InProgress { retry_after }))
            }
        };
        if let Some(answer) = refused {
            held.on_drop = OnDrop::Nothing;
            return answer.map_err(E::from);
        }
        let outcome = lease::heartbeat(&self.store, &held.key, token, self.lease, body()).await;
        match &outcome {
            Ok(value) => match encode(value) {
                Ok(record) => {
                    // The body ran: from here on, a cancelled call must still store its result.
                    held.on_drop = OnDrop::Complete(record.clone(), self.ttl);
                    self.keep(&held, record).await;
                }
                Err(error) => {
                    tracing::error!(key = %held.key.short(), namespace = %self.namespace, %error, "idempotent action: result not serializable; key released");
                    release(&self.store, &held.key, token).await;
                }
            },
            Err(_) => {
                tracing::debug!(key = %held.key.short(), namespace = %self.namespace, "idempotent action: failed; key released");
                release(&self.store, &held.key, token).await;
            }
        }
        held.on_drop = OnDrop::Nothing;
        outcome
    }

    async fn keep(&self, held: &Held<S>, record: Bytes) {
        let key = &held.key;
        let mut stored = lease::complete(&self.store, key, held.token, record, self.ttl).await;
        if matches!(stored, Err(StoreError::Full(_))) {
            // The store cannot hold this result: keep the key completed without it, so that
            // later calls are told so rather than run the body again.
            let marker = Bytes::from_static(&[RESULT_NOT_KEPT]);
            stored = lease::complete(&self.store, key, held.token, marker, self.ttl).await;
        }
        match stored {
            Ok(()) => {
                tracing::debug!(key = %key.short(), namespace = %self.namespace, "idempotent action: executed and stored");
            }
            Err(StoreError::LeaseLost) => tracing::warn!(
                key = %key.short(),
                namespace = %self.namespace,
                "idempotent action: lease lost before the result was stored"
            ),
            Err(error @ StoreError::NotReplicated { .. }) => tracing::warn!(
                key = %key.short(),
                namespace = %self.namespace,
                %error,
                "idempotent action: result stored on the primary, not yet on the replicas required"
            ),
            Err(error) => tracing::error!(
                key = %key.short(),
                namespace = %self.namespace,
                %error,
                "idempotent action: result not stored; the key stays in progress until its lease expires"
            ),
        }
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Bytes, serde_json::Error> {
    let mut out = BytesMut::with_capacity(64).writer();
    out.get_mut().put_u8(RESULT_VERSION);
    serde_json::to_writer(&mut out, value)?;
    Ok(out.into_inner().freeze())
}

fn decode<T: DeserializeOwned>(record: &[u8]) -> Result<T, Error> {
    match record.split_first() {
        Some((&RESULT_VERSION, json)) => serde_json::from_slice(json).map_err(|error| {
            Error::Store(StoreError::Corrupt(format!(
                "a stored action result does not decode: {error}"
            )))
        }),
        Some((&RESULT_NOT_KEPT, [])) => Err(Error::ResultNotKept),
        _ => Err(Error::Store(StoreError::Corrupt(
            "a stored action result has an unknown version".to_owned(),
        ))),
    }
}
