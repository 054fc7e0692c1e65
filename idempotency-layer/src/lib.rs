//! Make every operation safely retryable: a client retry, a network hiccup or a queue
//! redelivery must not charge a customer twice.
//!
//! [`IdempotencyLayer`] adds `Idempotency-Key` handling to any [tower] or [axum] service, as
//! the IETF draft `draft-ietf-httpapi-idempotency-key-header` and Stripe's API behave: the first
//! request with a key runs the handler and its response is stored; every retry with the same
//! key gets that response back (marked `Idempotent-Replayed: true`) without running anything;
//! a retry while the first is still running gets `409 Conflict`; the key reused with another
//! payload gets `422 Unprocessable Content`. Refusals are RFC 9457 `application/problem+json`
//! (see [`problem`]).
//!
//! [axum]: https://docs.rs/axum
//! [tower]: https://docs.rs/tower
//!
//! # Example
//!
//! ```
//! use axum::{Router, routing::post, http::{Request, StatusCode}, body::Body};
//! use idempotency_layer::{IdempotencyLayer, MemoryStore};
//! use tower::ServiceExt;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! let app = Router::new()
//!     .route("/payments", post(|| async { (StatusCode::CREATED, "pay_1") }))
//!     .layer(IdempotencyLayer::new(MemoryStore::new()).require_key(true));
//!
//! let charge = || {
//!     Request::post("/payments")
//!         .header("Idempotency-Key", "8e03978e-40d5-43e8-bc93-6894a57f9324")
//!         .body(Body::from(r#"{"amount":1000}"#))
//!         .unwrap()
//! };
//! let first = app.clone().oneshot(charge()).await.unwrap();
//! assert_eq!(first.status(), StatusCode::CREATED);
//!
//! let retry = app.clone().oneshot(charge()).await.unwrap();
//! assert_eq!(retry.status(), StatusCode::CREATED);
//! assert_eq!(retry.headers()["idempotent-replayed"], "true");
//! # }
//! ```
//!
//! # Behaviour
//!
//! | situation | response |
//! | --- | --- |
//! | method not covered (default covers POST and PATCH) | passed through untouched |
//! | no key, key optional (default) | passed through untouched |
//! | no key, [`require_key`](IdempotencyLayer::require_key) | `400` problem "Idempotency-Key is missing" |
//! | key malformed: empty, > 255 chars, not visible ASCII, two headers, bad sf-string | `400` problem |
//! | key sent as sf-string (`"abc"`) or bare (`abc`) | the same key |
//! | request body over [`max_request_body`](IdempotencyLayer::max_request_body) | `413` problem; handler not run |
//! | first arrival | handler runs once; response stored and sent |
//! | same key, same payload, completed | stored status, headers and body, plus `Idempotent-Replayed: true` |
//! | same key, another payload (method, path, query, content type, body) | `422` problem "Idempotency-Key is already used" |
//! | same key while the first is in flight | `409` problem + `Retry-After`; or, with [`InFlight::Wait`], wait (bounded) then replay |
//! | handler answered 5xx, 408 or 429 (default [`store_when`](IdempotencyLayer::store_when)) | not stored: the key is released, a retry runs again |
//! | response body over [`max_response_body`](IdempotencyLayer::max_response_body) | sent once; retries get `410` problem, the handler never runs again |
//! | store unreachable, full, or its record corrupt | `503` problem + `Retry-After`; with [`fail_open`](IdempotencyLayer::fail_open), run unprotected |
//! | client disconnects while its handler runs | the handler runs to completion and its response is stored; the retry replays it |
//! | detached work over [`max_detached`](IdempotencyLayer::max_detached) | `503` problem + `Retry-After` |
//!
//! Keys are scoped: by default by the `Authorization` header, so two principals never share a
//! key ([`scope`](IdempotencyLayer::scope) replaces it). The payload comparison hashes method,
//! path, query, content type and body ([`fingerprint`](IdempotencyLayer::fingerprint) replaces
//! it). Replays carry every header of the original except hop-by-hop and framing headers.
//!
//! # Requests, leases and shutdown
//!
//! The first request holds its key with a lease ([`lease`](IdempotencyLayer::lease), 10 s by
//! default) that the layer extends every third of a lease while the handler runs, so a process
//! that dies frees its keys after one lease, and a live one keeps them however long it runs.
//!
//! A handler that fails (a service error) or panics releases its key at once, so a retry runs
//! it again. A client that disconnects does not cancel its handler: the layer keeps it running
//! detached and stores its response. At shutdown, after the server stopped, await
//! [`DetachedWork::drain`] (from [`IdempotencyLayer::detached`]) so that work finishes:
//!
//! ```no_run
//! # use axum::Router;
//! # use idempotency_layer::{IdempotencyLayer, MemoryStore};
//! # async fn run(listener: tokio::net::TcpListener, signal: std::future::Pending<()>) {
//! let idempotency = IdempotencyLayer::new(MemoryStore::new());
//! let detached = idempotency.detached();
//! let app: Router = Router::new().layer(idempotency);
//! axum::serve(listener, app).with_graceful_shutdown(signal).await.unwrap();
//! detached.drain().await;
//! # }
//! ```
//!
//! # Run-once functions
//!
//! [`#[idempotent(key = ...)]`](idempotent) (feature `macros`, on by default) makes a plain async
//! function run once per key; later calls get the first result back without running it. `Ok`
//! is stored (as JSON) and returned to every later call; `Err`, a panic or a cancelled call
//! releases the key, so a retry runs again. The runtime behind it is [`action`], usable on its
//! own.
//!
//! ```
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use idempotency_layer::{Error, idempotent};
//!
//! static SENT: AtomicUsize = AtomicUsize::new(0);
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Receipt { id: usize }
//!
//! #[idempotent(key = format!("welcome-email-{user_id}"), ttl = "24h", fingerprint = [email])]
//! async fn send_welcome_email(user_id: &str, email: &str) -> Result<Receipt, Error> {
//!     let id = SENT.fetch_add(1, Ordering::SeqCst) + 1; // the e-mail goes out here
//!     Ok(Receipt { id })
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! let first = send_welcome_email("user_123", "new.user@example.com").await?;
//! let again = send_welcome_email("user_123", "new.user@example.com").await?;
//! assert_eq!((first.id, again.id), (1, 1));
//! assert_eq!(SENT.load(Ordering::SeqCst), 1);
//!
//! // The same key with another fingerprinted argument is refused.
//! let reused = send_welcome_email("user_123", "other@example.com").await;
//! assert!(matches!(reused, Err(Error::KeyReused)));
//! # Ok(()) }
//! ```
//!
//! Results go to the process-wide default store, a [`MemoryStore`] until
//! [`action::set_default_store`] installs another (a Redis store at start-up, so that every
//! process shares them), or to the store named by `store = expr`.
//!
//! # Stores
//!
//! [`MemoryStore`] keeps records in process memory: the embedded default, bounded by entries and
//! bytes. Any [`Store`] can back the layer; see [`store`] for the contract.
//!
//! # Body types
//!
//! The inner service receives [`RequestBody<B>`] (the original body, or the bytes the layer read
//! to fingerprint the request) and the layer answers with [`ResponseBody<B>`]; both have
//! `Data = Bytes`, as axum's and hyper's bodies do. The runtime is Tokio, with its timer enabled.

#![forbid(unsafe_code)]

pub mod action;
pub mod body;
pub mod error;
mod future;
pub mod key;
mod layer;
mod lease;
pub mod problem;
mod record;
mod service;
pub mod store;

pub use body::{RequestBody, ResponseBody};
pub use error::{Error, StoreError};
pub use future::ResponseFuture;
#[cfg(feature = "macros")]
pub use idempotency_macros::idempotent;
pub use layer::{DetachedWork, IdempotencyLayer, InFlight};
pub use service::{IDEMPOTENT_REPLAYED, Idempotency};
pub use store::{MemoryStore, Store};

/// The README's examples, compiled and run as doctests.
#[cfg(all(doctest, feature = "redis"))]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;
