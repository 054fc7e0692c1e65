//! The layer: configuration of the idempotency middleware.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, Method, StatusCode, response};
use tokio_util::task::TaskTracker;
use tower_layer::Layer;

use crate::key::{AuthorizationScope, FingerprintFn, RequestFingerprint, ScopeFn};
use crate::service::Idempotency;
use crate::store::Store;

/// What the layer does with a request whose key is still being processed by another request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InFlight {
    /// Answer at once with `409 Conflict` and `Retry-After` (the default, as Stripe does).
    Conflict,
    /// Wait up to the given time for the first request to finish, then replay its response;
    /// answer `409 Conflict` if it has not finished by then. If the first request fails and
    /// releases the key, the waiting request runs the handler itself.
    Wait(Duration),
}

type StorePolicy = Arc<dyn Fn(&response::Parts) -> bool + Send + Sync>;

/// The default storage policy: every response but 5xx, 408 and 429, which say "try again".
fn store_unless_retryable(head: &response::Parts) -> bool {
    let status = head.status;
    !(status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS)
}

#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) header: HeaderName,
    pub(crate) methods: Vec<Method>,
    pub(crate) require_key: bool,
    pub(crate) ttl: Duration,
    pub(crate) lease: Duration,
    pub(crate) max_request_body: usize,
    pub(crate) max_response_body: usize,
    pub(crate) store_when: StorePolicy,
    pub(crate) in_flight: InFlight,
    pub(crate) fail_open: bool,
    pub(crate) prefix: Arc<str>,
    pub(crate) max_detached: Option<usize>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("header", &self.header)
            .field("methods", &self.methods)
            .field("require_key", &self.require_key)
            .field("ttl", &self.ttl)
            .field("lease", &self.lease)
            .field("max_request_body", &self.max_request_body)
            .field("max_response_body", &self.max_response_body)
            .field("in_flight", &self.in_flight)
            .field("fail_open", &self.fail_open)
            .field("prefix", &self.prefix)
            .field("max_detached", &self.max_detached)
            .finish_non_exhaustive()
    }
}

/// Work that the layer keeps running after its client disconnected; see
/// [`IdempotencyLayer::detached`].
#[derive(Debug, Clone, Default)]
pub struct DetachedWork(pub(crate) TaskTracker);

impl DetachedWork {
    /// How many handlers are running for clients that went away.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no detached handler is running.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Waits until every detached handler has finished and stored its response. Call it at
    /// shutdown, after the server stopped accepting requests.
    pub async fn drain(&self) {
        self.0.close();
        self.0.wait().await;
        self.0.reopen();
    }
}

/// Adds `Idempotency-Key` handling to a service. See the [crate docs](crate) for the behaviour
/// and examples.
pub struct IdempotencyLayer<St, Sc = AuthorizationScope, Fp = RequestFingerprint> {
    pub(crate) store: Arc<St>,
    pub(crate) scope: Arc<Sc>,
    pub(crate) fingerprint: Arc<Fp>,
    pub(crate) settings: Settings,
    pub(crate) detached: DetachedWork,
}

impl<St, Sc, Fp> Clone for IdempotencyLayer<St, Sc, Fp> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            scope: self.scope.clone(),
            fingerprint: self.fingerprint.clone(),
            settings: self.settings.clone(),
            detached: self.detached.clone(),
        }
    }
}

impl<St, Sc, Fp> fmt::Debug for IdempotencyLayer<St, Sc, Fp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IdempotencyLayer")
            .field("settings", &self.settings)
            .field("detached", &self.detached.len())
            .finish_non_exhaustive()
    }
}

impl<St: Store> IdempotencyLayer<St> {
    /// A layer keeping its records in `store`, with the defaults: `Idempotency-Key` on POST and
    /// PATCH, optional, records kept 24 h, a 10 s lease, keys scoped by `Authorization`, 2 MiB
    /// request bodies, 1 MiB stored responses, 409 for requests in flight, fail closed.
    pub fn new(store: St) -> Self {
        Self {
            store: Arc::new(store),
            scope: Arc::new(AuthorizationScope),
            fingerprint: Arc::new(RequestFingerprint),
            settings: Settings {
                header: HeaderName::from_static("idempotency-key"),
                methods: vec![Method::POST, Method::PATCH],
                require_key: false,
                ttl: Duration::from_secs(24 * 60 * 60),
                lease: Duration::from_secs(10),
                max_request_body: 2 * 1024 * 1024,
                max_response_body: 1024 * 1024,
                store_when: Arc::new(store_unless_retryable),
                in_flight: InFlight::Conflict,
                fail_open: false,
                prefix: Arc::from("idempotency:"),
                max_detached: None,
            },
            detached: DetachedWork::default(),
        }
    }
}

impl<St, Sc, Fp> IdempotencyLayer<St, Sc, Fp> {
    /// The header that carries the key. Default `Idempotency-Key`.
    pub fn header_name(mut self, name: HeaderName) -> Self {
        self.settings.header = name;
        self
    }

    /// The methods the layer protects; others pass through untouched. Default POST and PATCH.
    pub fn methods(mut self, methods: impl IntoIterator<Item = Method>) -> Self {
        self.settings.methods = methods.into_iter().collect();
        self
    }

    /// Whether a protected method without a key is refused with `400` (true) or passed through
    /// (false, the default).
    pub fn require_key(mut self, require: bool) -> Self {
        self.settings.require_key = require;
        self
    }

    /// How long a completed response is kept and replayed. Default 24 hours.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.settings.ttl = ttl;
        self
    }

    /// How long a request holds its key without a heartbeat; the layer extends it every third
    /// of this while the handler runs. A process that dies loses its keys after this time.
    /// Default 10 seconds; at least 30 ms.
    pub fn lease(mut self, lease: Duration) -> Self {
        self.settings.lease = lease.max(crate::lease::SHORTEST_LEASE);
        self
    }

    /// The largest request body read for a protected request; larger ones get `413` and the
    /// handler does not run. Default 2 MiB.
    pub fn max_request_body(mut self, bytes: usize) -> Self {
        self.settings.max_request_body = bytes;
        self
    }

    /// The largest response body stored for replay. A larger response is streamed to its
    /// client once and its key is kept completed without a body: retries get `410 Gone`
    /// (problem type `response-not-stored`) and the handler never runs again. Default 1 MiB.
    pub fn max_response_body(mut self, bytes: usize) -> Self {
        self.settings.max_response_body = bytes;
        self
    }

    /// Which responses are stored and replayed; for the others the key is released, so a retry
    /// runs the handler again. Default: all but 5xx, 408 and 429.
    pub fn store_when(
        mut self,
        policy: impl Fn(&response::Parts) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.settings.store_when = Arc::new(policy);
        self
    }

    /// What to do with a request whose key is still in flight. Default [`InFlight::Conflict`].
    pub fn in_flight(mut self, policy: InFlight) -> Self {
        self.settings.in_flight = policy;
        self
    }

    /// When the store fails: false (the default) answers `503` with `Retry-After`; true runs
    /// the handler without protection and logs a warning.
    pub fn fail_open(mut self, fail_open: bool) -> Self {
        self.settings.fail_open = fail_open;
        self
    }

    /// The prefix of every storage key, to tell apart services that share one store. Default
    /// `idempotency:`.
    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.settings.prefix = Arc::from(prefix.into());
        self
    }

    /// A bound on handlers kept running for clients that disconnected: while that many run,
    /// new protected requests get `503` with `Retry-After`. Requests already admitted still
    /// detach when their clients go away, so the count can pass the bound by at most the
    /// protected requests in flight at that moment. Default: unbounded.
    pub fn max_detached(mut self, max: usize) -> Self {
        self.settings.max_detached = Some(max);
        self
    }

    /// The handle on work kept running for clients that disconnected; await
    /// [`DetachedWork::drain`] at shutdown so that every such response is stored. Shared by
    /// every clone of this layer and every service it makes.
    pub fn detached(&self) -> DetachedWork {
        self.detached.clone()
    }

    /// Replaces how the scope of a request is computed (default: its `Authorization` header).
    ///
    /// ```
    /// use http::request::Parts;
    /// use idempotency_layer::{IdempotencyLayer, MemoryStore};
    ///
    /// #[derive(Clone)]
    /// struct Tenant(String);
    ///
    /// let layer = IdempotencyLayer::new(MemoryStore::new())
    ///     .scope(|parts: &Parts| parts.extensions.get::<Tenant>().map(|t| t.0.clone()));
    /// ```
    pub fn scope<S2: ScopeFn>(self, scope: S2) -> IdempotencyLayer<St, S2, Fp> {
        IdempotencyLayer {
            store: self.store,
            scope: Arc::new(scope),
            fingerprint: self.fingerprint,
            settings: self.settings,
            detached: self.detached,
        }
    }

    /// Replaces how requests are compared (default: method, path, query, content type and
    /// body).
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http::request::Parts;
    /// use idempotency_layer::key::Fingerprint;
    /// use idempotency_layer::{IdempotencyLayer, MemoryStore};
    ///
    /// // Only the path and the body count; a changed query string is the same request.
    /// let layer = IdempotencyLayer::new(MemoryStore::new()).fingerprint(
    ///     |parts: &Parts, body: &Bytes| {
    ///         Fingerprint::builder().field(parts.uri.path()).field(body).finish()
    ///     },
    /// );
    /// ```
    pub fn fingerprint<F2: FingerprintFn>(self, fingerprint: F2) -> IdempotencyLayer<St, Sc, F2> {
        IdempotencyLayer {
            store: self.store,
            scope: self.scope,
            fingerprint: Arc::new(fingerprint),
            settings: self.settings,
            detached: self.detached,
        }
    }
}

impl<S, St, Sc, Fp> Layer<S> for IdempotencyLayer<St, Sc, Fp> {
    type Service = Idempotency<S, St, Sc, Fp>;

    fn layer(&self, inner: S) -> Self::Service {
        Idempotency::new(inner, self)
    }
}
