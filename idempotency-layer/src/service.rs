//! The service: what the layer does with each request.

use std::fmt;
use std::future::poll_fn;
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue, Request, Response, response};
use http_body::Body;
use tower_service::Service;

use crate::body::{RequestBody, ResponseBody};
use crate::error::{BoxError, StoreError};
use crate::future::ResponseFuture;
use crate::key::{self, Fingerprint, FingerprintFn, ScopeFn, StoreKey};
use crate::layer::{DetachedWork, IdempotencyLayer, InFlight, Settings};
use crate::lease::{self, Held, OnDrop, release};
use crate::problem::Problem;
use crate::record;
use crate::store::{Begin, LeaseToken, Store};

/// The namespace of keys that come from HTTP requests.
const HTTP_NAMESPACE: &str = "http";

/// `Retry-After` of a 503 for a failed store or too much detached work.
const RETRY_UNAVAILABLE: Duration = Duration::from_secs(1);

/// The longest `Retry-After` of a 409 for a key in flight.
const RETRY_IN_FLIGHT: Duration = Duration::from_secs(1);

/// The header that marks a replayed response.
pub const IDEMPOTENT_REPLAYED: &str = "idempotent-replayed";

/// [`IDEMPOTENT_REPLAYED`] as a header name made once, so that a replay does not parse it.
const REPLAYED: HeaderName = HeaderName::from_static(IDEMPOTENT_REPLAYED);

/// Middleware that adds `Idempotency-Key` handling to a service; made by
/// [`IdempotencyLayer`]. See the [crate docs](crate).
pub struct Idempotency<S, St, Sc, Fp> {
    inner: S,
    shared: Arc<Shared<St, Sc, Fp>>,
}

struct Shared<St, Sc, Fp> {
    store: Arc<St>,
    scope: Arc<Sc>,
    fingerprint: Arc<Fp>,
    settings: Settings,
    detached: DetachedWork,
}

impl<S, St, Sc, Fp> Idempotency<S, St, Sc, Fp> {
    pub(crate) fn new(inner: S, layer: &IdempotencyLayer<St, Sc, Fp>) -> Self {
        Self {
            inner,
            shared: Arc::new(Shared {
                store: layer.store.clone(),
                scope: layer.scope.clone(),
                fingerprint: layer.fingerprint.clone(),
                settings: layer.settings.clone(),
                detached: layer.detached.clone(),
            }),
        }
    }
}

impl<S: Clone, St, Sc, Fp> Clone for Idempotency<S, St, Sc, Fp> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
        }
    }
}

impl<S: fmt::Debug, St, Sc, Fp> fmt::Debug for Idempotency<S, St, Sc, Fp> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Idempotency")
            .field("inner", &self.inner)
            .field("settings", &self.shared.settings)
            .finish_non_exhaustive()
    }
}

impl<S, St, Sc, Fp, B, ResBody> Service<Request<B>> for Idempotency<S, St, Sc, Fp>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    St: Store,
    Sc: ScopeFn,
    Fp: FingerprintFn,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    type Response = Response<ResponseBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let settings = &self.shared.settings;
        if !settings.methods.contains(request.method()) {
            return self.pass(request);
        }
        let (parts, body) = request.into_parts();
        let key = match key::from_headers(&parts.headers, &settings.header) {
            Ok(Some(client_key)) => {
                let scope = self.shared.scope.scope(&parts);
                StoreKey::derive(settings.prefix.clone(), HTTP_NAMESPACE, &scope, &client_key)
            }
            Ok(None) if settings.require_key => {
                return ResponseFuture::ready(Problem::KeyMissing.into_response());
            }
            Ok(None) => return self.pass(Request::from_parts(parts, body)),
            Err(error) => {
                tracing::debug!(%error, "idempotency: malformed key refused");
                return ResponseFuture::ready(Problem::KeyMalformed(error).into_response());
            }
        };
        let tracker = &self.shared.detached.0;
        if settings
            .max_detached
            .is_some_and(|max| tracker.len() >= max)
        {
            tracing::warn!(
                detached = tracker.len(),
                "idempotency: detached work at its bound; request refused"
            );
            return ResponseFuture::ready(
                Problem::Overloaded {
                    retry_after: RETRY_UNAVAILABLE,
                }
                .into_response(),
            );
        }
        // The ready service goes into the future; a fresh clone waits for the next poll_ready.
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let work = protect(self.shared.clone(), inner, parts, body, key);
        ResponseFuture::protected(Box::pin(work), tracker)
    }
}

impl<S, St, Sc, Fp> Idempotency<S, St, Sc, Fp> {
    fn pass<B, ResBody>(
        &mut self,
        request: Request<B>,
    ) -> ResponseFuture<S::Future, ResBody, S::Error>
    where
        S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    {
        ResponseFuture::passthrough(self.inner.call(request.map(RequestBody::passthrough)))
    }
}

type Answer<B, E> = Result<Response<ResponseBody<B>>, E>;

/// The life of one protected request: read and fingerprint it, claim its key, run the handler
/// under a heartbeat, then store or release.
async fn protect<S, St, Sc, Fp, B, ResBody>(
    shared: Arc<Shared<St, Sc, Fp>>,
    mut inner: S,
    parts: Parts,
    body: B,
    key: StoreKey,
) -> Answer<ResBody, S::Error>
where
    S: Service<Request<RequestBody<B>>, Response = Response<ResBody>>,
    St: Store,
    Fp: FingerprintFn,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
    ResBody: Body<Data = Bytes>,
    ResBody::Error: Into<BoxError>,
{
    let settings = &shared.settings;
    let limit = settings.max_request_body;
    let (body, trailers) = match collect(pin!(body), limit).await {
        Collected::Complete(body, trailers) => (body, trailers),
        Collected::OverLimit(_) => {
            return Ok(Problem::BodyTooLarge { limit }.into_response());
        }
        Collected::Failed(error) => {
            let error = error.into();
            tracing::debug!(key = %key.short(), %error, "idempotency: request body failed");
            return Ok(Problem::BodyUnreadable.into_response());
        }
    };
    let fingerprint = shared.fingerprint.fingerprint(&parts, &body);
    let request = Request::from_parts(parts, RequestBody::buffered(body, trailers));
    // The guard comes before the claim, and until the handler has answered, dropping it
    // releases the key: a panic, the end of the runtime, or a cancellation while `begin` is on
    // its way. A retry then runs at once rather than after the lease. (A release under a token
    // that claimed nothing changes nothing.)
    let token = LeaseToken::random();
    let mut held = Held::new(shared.store.clone(), key.clone(), token);
    match claim(&shared, &key, &fingerprint, &mut held).await {
        Claim::Acquired => {}
        Claim::Answer(response) => return Ok(response),
        Claim::Unprotected => {
            let response = inner.call(request).await?;
            return Ok(response.map(ResponseBody::stream));
        }
    }
    let store = &*shared.store;
    let executed = lease::heartbeat(store, &key, token, settings.lease, async {
        let response = match inner.call(request).await {
            Ok(response) => response,
            Err(error) => return Executed::Failed(error),
        };
        let (head, body) = response.into_parts();
        if !(settings.store_when)(&head) {
            return Executed::NotStored(Response::from_parts(head, ResponseBody::stream(body)));
        }
        let mut body = Box::pin(body);
        match collect(body.as_mut(), settings.max_response_body).await {
            Collected::Complete(data, trailers) => Executed::Complete(head, data, trailers),
            Collected::OverLimit(prefix) => Executed::TooLarge(head, prefix, body),
            Collected::Failed(error) => Executed::BodyFailed(error.into()),
        }
    })
    .await;
    if matches!(executed, Executed::Complete(..) | Executed::TooLarge(..)) {
        // The operation ran: never release it, even if storing its result is cut short.
        held.on_drop = OnDrop::Nothing;
    }

    let answer = match executed {
        Executed::Complete(head, data, trailers) => {
            store_result(&shared, &key, token, &head, &data, false).await;
            Ok(Response::from_parts(
                head,
                ResponseBody::with_trailers(data, trailers),
            ))
        }
        Executed::TooLarge(head, prefix, rest) => {
            store_result(&shared, &key, token, &head, &[], true).await;
            Ok(Response::from_parts(
                head,
                ResponseBody::remainder(prefix, rest),
            ))
        }
        Executed::NotStored(response) => {
            tracing::debug!(key = %key.short(), status = %response.status(), "idempotency: executed; response not stored, key released");
            release(store, &key, token).await;
            Ok(response)
        }
        Executed::BodyFailed(error) => {
            tracing::warn!(key = %key.short(), %error, "idempotency: response body failed; key released");
            release(store, &key, token).await;
            Ok(Problem::ResponseFailed.into_response())
        }
        Executed::Failed(error) => {
            tracing::debug!(key = %key.short(), "idempotency: handler failed; key released");
            release(store, &key, token).await;
            Err(error)
        }
    };
    held.on_drop = OnDrop::Nothing;
    answer
}

#[expect(
    clippy::large_enum_variant,
    reason = "lives for one step on the stack; boxing would cost every replay an allocation"
)]
enum Claim<B> {
    Acquired,
    Answer(Response<ResponseBody<B>>),
    /// The store failed and the layer fails open: run the handler without protection.
    Unprotected,
}

/// Claims `key` for `held`'s token; unless it did, `held` is disarmed. (Should the store fail
/// after a claim landed, its reply lost, the key frees itself when the lease expires: a
/// release now would only add load to a failing store.)
async fn claim<St: Store, Sc, Fp, B>(
    shared: &Shared<St, Sc, Fp>,
    key: &StoreKey,
    fingerprint: &Fingerprint,
    held: &mut Held<Arc<St>>,
) -> Claim<B> {
    let settings = &shared.settings;
    let wait = match settings.in_flight {
        InFlight::Conflict => Duration::ZERO,
        InFlight::Wait(bound) => bound,
    };
    let begun = lease::begin_or_wait(
        &*shared.store,
        key,
        fingerprint,
        held.token,
        settings.lease,
        wait,
    )
    .await;
    if !matches!(begun, Ok(Begin::Acquired(_))) {
        held.on_drop = OnDrop::Nothing;
    }
    match begun {
        Ok(Begin::Acquired(_)) => Claim::Acquired,
        Ok(Begin::Completed(record)) => replay(record, key, settings.fail_open),
        Ok(Begin::Mismatch) => {
            tracing::info!(key = %key.short(), "idempotency: key reused with another payload");
            Claim::Answer(Problem::KeyReused.into_response())
        }
        Ok(Begin::InProgress { retry_after }) => {
            tracing::debug!(key = %key.short(), ?retry_after, "idempotency: conflict, key in flight");
            // The holder's lease bounds how long it may still run, but most handlers finish
            // far sooner: ask for a retry soon rather than after the whole lease.
            let retry_after = retry_after.min(RETRY_IN_FLIGHT);
            Claim::Answer(Problem::InProgress { retry_after }.into_response())
        }
        Err(error) => store_failed(&error, key, settings.fail_open),
    }
}

fn replay<B>(record: Bytes, key: &StoreKey, fail_open: bool) -> Claim<B> {
    let stored = match record::decode(record) {
        Ok(stored) => stored,
        Err(error) => return store_failed(&error, key, fail_open),
    };
    if stored.body_omitted {
        tracing::debug!(key = %key.short(), "idempotency: replay refused, response was not stored");
        return Claim::Answer(
            Problem::ResponseNotStored {
                original_status: stored.status,
            }
            .into_response(),
        );
    }
    tracing::debug!(key = %key.short(), "idempotency: replayed");
    let mut response = Response::new(ResponseBody::full(stored.body));
    *response.status_mut() = stored.status;
    *response.headers_mut() = stored.headers;
    response
        .headers_mut()
        .insert(REPLAYED, HeaderValue::from_static("true"));
    Claim::Answer(response)
}

fn store_failed<B>(error: &StoreError, key: &StoreKey, fail_open: bool) -> Claim<B> {
    // Only an unreachable or full store may be bypassed: a record that exists but cannot be
    // read (an unknown version during a rolling deploy, say) means the operation may have run.
    let bypassable = matches!(error, StoreError::Unavailable(_) | StoreError::Full(_));
    if fail_open && bypassable {
        tracing::warn!(key = %key.short(), %error, "idempotency: store failed; running unprotected (fail_open)");
        return Claim::Unprotected;
    }
    tracing::error!(key = %key.short(), %error, "idempotency: store failed; request refused");
    Claim::Answer(
        Problem::StoreUnavailable {
            retry_after: RETRY_UNAVAILABLE,
        }
        .into_response(),
    )
}

async fn store_result<St: Store, Sc, Fp>(
    shared: &Shared<St, Sc, Fp>,
    key: &StoreKey,
    token: LeaseToken,
    head: &response::Parts,
    body: &[u8],
    body_omitted: bool,
) {
    let store = &*shared.store;
    let ttl = shared.settings.ttl;
    let record = record::encode(head, body, body_omitted);
    let mut stored = lease::complete(store, key, token, record, ttl).await;
    let mut body_omitted = body_omitted;
    if matches!(stored, Err(StoreError::Full(_))) && !body_omitted {
        // The store cannot hold this response: keep the key completed without it, so that a
        // retry is told so (410) rather than run again.
        body_omitted = true;
        let record = record::encode(head, &[], true);
        stored = lease::complete(store, key, token, record, ttl).await;
    }
    match stored {
        Ok(()) => {
            tracing::debug!(key = %key.short(), status = %head.status, body_omitted, "idempotency: executed and stored");
        }
        Err(StoreError::LeaseLost) => tracing::warn!(
            key = %key.short(),
            "idempotency: lease lost before the response was stored; the handler ran longer \
             than its lease without a heartbeat reaching the store"
        ),
        Err(error @ StoreError::NotReplicated { .. }) => tracing::warn!(
            key = %key.short(),
            %error,
            "idempotency: response stored on the primary, not yet on the replicas required"
        ),
        Err(error) => tracing::error!(
            key = %key.short(),
            %error,
            "idempotency: response not stored; the key stays in progress until its lease expires"
        ),
    }
}

enum Executed<B, E> {
    Complete(response::Parts, Bytes, Option<HeaderMap>),
    TooLarge(response::Parts, Bytes, Pin<Box<B>>),
    NotStored(Response<ResponseBody<B>>),
    BodyFailed(BoxError),
    Failed(E),
}

enum Collected<E> {
    Complete(Bytes, Option<HeaderMap>),
    /// The body outgrew the limit; these are the bytes read so far.
    OverLimit(Bytes),
    Failed(E),
}

/// Reads `body` whole, up to `limit` bytes. A body of one frame is kept without a copy.
async fn collect<B: Body<Data = Bytes>>(
    mut body: Pin<&mut B>,
    limit: usize,
) -> Collected<B::Error> {
    if body.size_hint().lower() > limit as u64 {
        return Collected::OverLimit(Bytes::new());
    }
    let mut first = Bytes::new();
    let mut rest: Option<BytesMut> = None;
    let mut trailers = None;
    while let Some(frame) = poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
        let frame = match frame {
            Ok(frame) => frame,
            Err(error) => return Collected::Failed(error),
        };
        let data = match frame.into_data() {
            Ok(data) => data,
            Err(frame) => {
                if let Ok(frame_trailers) = frame.into_trailers() {
                    trailers = Some(frame_trailers);
                }
                continue;
            }
        };
        let read = rest.as_ref().map_or(first.len(), BytesMut::len);
        if read + data.len() > limit {
            let mut prefix = rest.unwrap_or_else(|| BytesMut::from(first));
            prefix.extend_from_slice(&data);
            return Collected::OverLimit(prefix.freeze());
        }
        match rest.as_mut() {
            Some(rest) => rest.extend_from_slice(&data),
            None if first.is_empty() => first = data,
            None => {
                let mut joined = BytesMut::with_capacity((first.len() + data.len()).max(4096));
                joined.extend_from_slice(&first);
                joined.extend_from_slice(&data);
                rest = Some(joined);
            }
        }
    }
    Collected::Complete(rest.map_or(first, BytesMut::freeze), trailers)
}
