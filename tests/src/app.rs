//! An instrumented axum application: it counts how often each handler really ran, and can hold
//! a handler at a gate until the test lets it go.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, Request, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use http_body_util::BodyExt;
use tokio::sync::Semaphore;
use tower::ServiceExt;

/// What the handlers did, shared with the test.
#[derive(Debug)]
pub struct Counters {
    /// Handlers that started.
    pub entered: AtomicUsize,
    /// Handlers that finished their side effect.
    pub runs: AtomicUsize,
    /// Holds `/gated` handlers until the test adds permits.
    pub gate: Semaphore,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            entered: AtomicUsize::new(0),
            runs: AtomicUsize::new(0),
            gate: Semaphore::new(0),
        }
    }
}

impl Counters {
    /// How many handlers finished.
    pub fn runs(&self) -> usize {
        self.runs.load(Ordering::SeqCst)
    }

    /// Waits until `n` handlers have started (at most 10 s).
    pub async fn until_entered(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while self.entered.load(Ordering::SeqCst) < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "handlers never started"
            );
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }

    /// Lets `n` gated handlers go on.
    pub fn open(&self, n: usize) {
        self.gate.add_permits(n);
    }

    fn run(&self) -> usize {
        self.runs.fetch_add(1, Ordering::SeqCst) + 1
    }
}

/// The routes, without any layer:
///
/// - `POST|PATCH|GET /payments`: 201 echoing the body, with `x-run` and two `set-cookie`s;
/// - `POST /gated`: enters, waits at the gate, then 201;
/// - `POST /sleep/{ms}`: enters, sleeps, then 201;
/// - `POST /status/{code}`: answers `code`;
/// - `POST /big/{bytes}`: answers 200 with a body of that many bytes;
/// - `POST /panic-once`: panics the first time it is called, then answers 201.
pub fn routes() -> (Router, Arc<Counters>) {
    let counters = Arc::new(Counters::default());
    let router = Router::new()
        .route("/payments", post(echo).patch(echo).get(echo))
        .route("/gated", post(gated))
        .route("/sleep/{ms}", post(sleep))
        .route("/status/{code}", post(status))
        .route("/big/{bytes}", post(big))
        .route("/panic-once", post(panic_once))
        .with_state(counters.clone());
    (router, counters)
}

async fn echo(State(counters): State<Arc<Counters>>, body: Bytes) -> Response {
    let run = counters.run();
    let mut response = (
        StatusCode::CREATED,
        [(header::CONTENT_TYPE, "application/json")],
        serde_json::json!({ "run": run, "body": String::from_utf8_lossy(&body) }).to_string(),
    )
        .into_response();
    let headers = response.headers_mut();
    headers.insert("x-run", HeaderValue::from(run));
    headers.append(header::SET_COOKIE, HeaderValue::from_static("a=1"));
    headers.append(header::SET_COOKIE, HeaderValue::from_static("b=2"));
    response
}

async fn gated(State(counters): State<Arc<Counters>>) -> Response {
    counters.entered.fetch_add(1, Ordering::SeqCst);
    counters
        .gate
        .acquire()
        .await
        .expect("the gate is never closed")
        .forget();
    let run = counters.run();
    (StatusCode::CREATED, format!("{{\"run\":{run}}}")).into_response()
}

async fn sleep(State(counters): State<Arc<Counters>>, Path(ms): Path<u64>) -> Response {
    counters.entered.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let run = counters.run();
    (StatusCode::CREATED, format!("{{\"run\":{run}}}")).into_response()
}

async fn status(State(counters): State<Arc<Counters>>, Path(code): Path<u16>) -> Response {
    let run = counters.run();
    let code = StatusCode::from_u16(code).expect("a valid status code");
    (code, format!("status {code} run {run}")).into_response()
}

async fn panic_once(State(counters): State<Arc<Counters>>) -> Response {
    if counters.entered.fetch_add(1, Ordering::SeqCst) == 0 {
        panic!("the first call panics");
    }
    let run = counters.run();
    (StatusCode::CREATED, format!("{{\"run\":{run}}}")).into_response()
}

async fn big(State(counters): State<Arc<Counters>>, Path(bytes): Path<usize>) -> Response {
    counters.run();
    vec![b'x'; bytes].into_response()
}

/// A request with an optional key and a JSON body.
pub fn request(method: Method, uri: &str, key: Option<&str>, body: &str) -> Request<Body> {
    let mut builder = Request::builder()
        .method(method)
        .uri(uri)
        .header(header::CONTENT_TYPE, "application/json");
    if let Some(key) = key {
        builder = builder.header("idempotency-key", key);
    }
    builder
        .body(Body::from(body.to_owned()))
        .expect("a valid request")
}

/// `POST uri` with `key` and `body`.
pub fn post_with(uri: &str, key: &str, body: &str) -> Request<Body> {
    request(Method::POST, uri, Some(key), body)
}

/// A response read whole.
#[derive(Debug, Clone)]
pub struct Reply {
    /// Its status.
    pub status: StatusCode,
    /// Its headers.
    pub headers: HeaderMap,
    /// Its body.
    pub body: Bytes,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|error| {
            panic!(
                "body is not JSON ({error}): {:?}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// Whether the layer marked this response as a replay.
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v == "true")
    }

    /// Asserts an RFC 9457 problem with `status` and a `type` ending in `#anchor`.
    pub fn assert_problem(&self, status: u16, anchor: &str) -> serde_json::Value {
        assert_eq!(self.status, status, "body: {:?}", self.body);
        assert_eq!(
            self.headers[header::CONTENT_TYPE],
            "application/problem+json"
        );
        let json = self.json();
        assert_eq!(json["status"], status);
        let kind = json["type"].as_str().expect("a problem type");
        assert!(
            kind.ends_with(&format!("#{anchor}")),
            "type {kind} is not #{anchor}"
        );
        assert!(json["title"].is_string() && json["detail"].is_string());
        json
    }
}

/// Sends `request` through `router` and reads the whole response; fails the test after 20 s
/// rather than hang it.
pub async fn send(router: &Router, request: Request<Body>) -> Reply {
    let exchange = async {
        let response = router
            .clone()
            .oneshot(request)
            .await
            .expect("axum routers are infallible");
        read(response).await
    };
    tokio::time::timeout(Duration::from_secs(20), exchange)
        .await
        .expect("no response within 20 s")
}

/// Reads a response whole.
pub async fn read(response: Response) -> Reply {
    let (parts, body) = response.into_parts();
    let body = body.collect().await.expect("a readable body").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body,
    }
}
