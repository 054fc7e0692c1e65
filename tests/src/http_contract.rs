//! The HTTP behaviour of the layer, one function per row of the behaviour table; run it on a
//! store with [`http_contract_suite!`](crate::http_contract_suite).

use std::time::Duration;

use axum::Router;
use axum::http::{Method, StatusCode, header};
use idempotency_layer::{IdempotencyLayer, InFlight, Store};

use crate::app::{Reply, post_with, request, routes, send};

/// Each case gets keys of its own, so cases can share a server.
fn unique(name: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(0);
    format!(
        "{name}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn app<St: Store>(layer: IdempotencyLayer<St>) -> (Router, std::sync::Arc<crate::app::Counters>) {
    let (router, counters) = routes();
    (router.layer(layer), counters)
}

/// A method the layer does not cover (GET) passes through, key or not.
pub async fn uncovered_methods_pass_through<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    let key = unique("get");
    for _ in 0..2 {
        let reply = send(&app, request(Method::GET, "/payments", Some(&key), "")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(!reply.replayed());
    }
    assert_eq!(counters.runs(), 2);
}

/// Without a key, an optional-key layer passes the request through.
pub async fn no_key_passes_through_when_optional<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    for _ in 0..2 {
        let reply = send(&app, request(Method::POST, "/payments", None, "{}")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(!reply.replayed());
    }
    assert_eq!(counters.runs(), 2);
}

/// Without a key, a `require_key` layer answers 400 problem+json and does not run the handler.
pub async fn no_key_is_refused_when_required<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store).require_key(true));
    let reply = send(&app, request(Method::POST, "/payments", None, "{}")).await;
    let problem = reply.assert_problem(400, "key-missing");
    assert_eq!(problem["title"], "Idempotency-Key is missing");
    assert_eq!(counters.runs(), 0);
}

/// Malformed keys are 400 problem+json: empty, too long, not visible ASCII, bad sf-string, and
/// two headers.
pub async fn malformed_keys_are_refused<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    let long = "k".repeat(256);
    for bad in [
        "",
        long.as_str(),
        "has space",
        "caf\u{e9}",
        "\"open",
        "\"bad\\n\"",
    ] {
        let mut req = request(Method::POST, "/payments", None, "{}");
        req.headers_mut().insert(
            "idempotency-key",
            header::HeaderValue::from_bytes(bad.as_bytes()).unwrap(),
        );
        send(&app, req).await.assert_problem(400, "key-malformed");
    }
    let mut twice = post_with("/payments", "a", "{}");
    twice
        .headers_mut()
        .append("idempotency-key", header::HeaderValue::from_static("a"));
    let problem = send(&app, twice).await.assert_problem(400, "key-malformed");
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("more than once")
    );
    let mut exact = unique("exact");
    exact.extend(std::iter::repeat_n('k', 255 - exact.len()));
    assert_eq!(exact.len(), 255);
    let reply = send(&app, post_with("/payments", &exact, "{}")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(counters.runs(), 1);
}

/// The sf-string form and the bare form of a key are the same key.
pub async fn sf_string_and_bare_keys_are_one_key<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    let key = unique("sf");
    let first = send(&app, post_with("/payments", &format!("\"{key}\""), "{}")).await;
    let second = send(&app, post_with("/payments", &key, "{}")).await;
    assert!(!first.replayed());
    assert!(second.replayed());
    assert_eq!(first.body, second.body);
    assert_eq!(counters.runs(), 1);
}

/// A body over `max_request_body` is 413 problem+json; the handler does not run.
pub async fn oversized_bodies_are_refused<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store).max_request_body(16));
    let reply = send(
        &app,
        post_with("/payments", &unique("big"), &"x".repeat(17)),
    )
    .await;
    reply.assert_problem(413, "body-too-large");
    let reply = send(
        &app,
        post_with("/payments", &unique("fits"), &"x".repeat(16)),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(counters.runs(), 1);
}

/// The first arrival runs the handler; every retry gets its status, headers (repeated ones in
/// order) and body, marked `Idempotent-Replayed: true`, without running it again.
pub async fn retries_replay_the_first_response<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    let key = unique("replay");
    let first = send(&app, post_with("/payments", &key, r#"{"amount":1}"#)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed());
    for _ in 0..3 {
        let again = send(&app, post_with("/payments", &key, r#"{"amount":1}"#)).await;
        assert!(again.replayed());
        assert_eq!(again.status, first.status);
        assert_eq!(again.body, first.body);
        assert_eq!(again.headers["x-run"], "1");
        assert_eq!(again.headers[header::CONTENT_TYPE], "application/json");
        let cookies: Vec<_> = again.headers.get_all(header::SET_COOKIE).iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(
            again.headers[header::CONTENT_LENGTH],
            first.body.len().to_string()
        );
    }
    assert_eq!(counters.runs(), 1);
}

/// The same key with another payload is 422 problem+json: another body, path, query, content
/// type or method.
pub async fn a_reused_key_with_another_payload_is_422<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    let key = unique("reuse");
    send(&app, post_with("/payments", &key, r#"{"amount":1}"#)).await;
    let mut other_type = post_with("/payments", &key, r#"{"amount":1}"#);
    other_type
        .headers_mut()
        .insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    let others = [
        post_with("/payments", &key, r#"{"amount":2}"#),
        post_with("/payments?x=1", &key, r#"{"amount":1}"#),
        post_with("/status/201", &key, r#"{"amount":1}"#),
        request(Method::PATCH, "/payments", Some(&key), r#"{"amount":1}"#),
        other_type,
    ];
    for other in others {
        let problem = send(&app, other).await.assert_problem(422, "key-reused");
        assert_eq!(problem["title"], "Idempotency-Key is already used");
    }
    assert_eq!(counters.runs(), 1);
}

/// A retry while the first request is in flight is 409 problem+json with `Retry-After`.
pub async fn a_request_in_flight_is_409<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    let key = unique("flight");
    let first = tokio::spawn(send_owned(app.clone(), key.clone()));
    counters.until_entered(1).await;
    let reply = send(&app, post_with("/gated", &key, "{}")).await;
    reply.assert_problem(409, "in-progress");
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    counters.open(1);
    let first = first.await.unwrap();
    assert_eq!(first.status, StatusCode::CREATED);
    let again = send(&app, post_with("/gated", &key, "{}")).await;
    assert!(again.replayed());
    assert_eq!(again.body, first.body);
    assert_eq!(counters.runs(), 1);
}

async fn send_owned(app: Router, key: String) -> Reply {
    send(&app, post_with("/gated", &key, "{}")).await
}

/// With the wait policy, a retry in flight waits for the first and replays its response.
pub async fn the_wait_policy_replays_after_the_first_finishes<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store).in_flight(InFlight::Wait(Duration::from_secs(10)));
    let (app, counters) = app(layer);
    let key = unique("wait");
    let first = tokio::spawn(send_owned(app.clone(), key.clone()));
    counters.until_entered(1).await;
    let second = tokio::spawn(send_owned(app.clone(), key.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!second.is_finished(), "the second request did not wait");
    counters.open(1);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert!(!first.replayed());
    assert!(second.replayed());
    assert_eq!(first.body, second.body);
    assert_eq!(counters.runs(), 1);
}

/// With the wait policy, a retry still in flight after the bound gets 409.
pub async fn the_wait_policy_gives_up_at_its_bound<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store).in_flight(InFlight::Wait(Duration::from_millis(150)));
    let (app, counters) = app(layer);
    let key = unique("bound");
    let first = tokio::spawn(send_owned(app.clone(), key.clone()));
    counters.until_entered(1).await;
    send(&app, post_with("/gated", &key, "{}"))
        .await
        .assert_problem(409, "in-progress");
    counters.open(1);
    first.await.unwrap();
}

/// 5xx, 408 and 429 are not stored: the key is released and a retry runs again. Other
/// statuses, 4xx included, are stored.
pub async fn retryable_statuses_are_not_stored<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    let mut runs = 0;
    for code in [500, 502, 503, 408, 429] {
        let key = unique("retryable");
        for _ in 0..2 {
            let reply = send(&app, post_with(&format!("/status/{code}"), &key, "")).await;
            runs += 1;
            assert_eq!(reply.status, code);
            assert!(!reply.replayed());
        }
    }
    for code in [200, 400, 404, 409] {
        let key = unique("stored");
        let first = send(&app, post_with(&format!("/status/{code}"), &key, "")).await;
        let again = send(&app, post_with(&format!("/status/{code}"), &key, "")).await;
        runs += 1;
        assert_eq!(again.status, code);
        assert!(again.replayed());
        assert_eq!(again.body, first.body);
    }
    assert_eq!(counters.runs(), runs);
}

/// `store_when` replaces the policy: here only 2xx responses are stored.
pub async fn the_storage_policy_is_configurable<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store).store_when(|head| head.status.is_success());
    let (app, counters) = app(layer);
    let key = unique("policy");
    send(&app, post_with("/status/404", &key, "")).await;
    let again = send(&app, post_with("/status/404", &key, "")).await;
    assert!(!again.replayed());
    assert_eq!(counters.runs(), 2);
}

/// Two principals (different `Authorization`) never share a key; one principal does.
pub async fn keys_are_scoped_by_authorization<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    let key = unique("scope");
    let as_user = |user: &str| {
        let mut req = post_with("/payments", &key, "{}");
        req.headers_mut().insert(
            header::AUTHORIZATION,
            format!("Bearer {user}").parse().unwrap(),
        );
        req
    };
    assert!(!send(&app, as_user("alice")).await.replayed());
    assert!(!send(&app, as_user("bob")).await.replayed());
    assert!(send(&app, as_user("alice")).await.replayed());
    assert_eq!(counters.runs(), 2);
}

/// A scope function replaces the default: here a tenant header.
pub async fn a_scope_function_replaces_the_default<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store).scope(|parts: &http::request::Parts| {
        parts
            .headers
            .get("x-tenant")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    });
    let (router, counters) = routes();
    let app = router.layer(layer);
    let key = unique("tenant");
    let as_tenant = |tenant: &'static str| {
        let mut req = post_with("/payments", &key, "{}");
        req.headers_mut()
            .insert("x-tenant", tenant.parse().unwrap());
        req.headers_mut()
            .insert(header::AUTHORIZATION, "Bearer shared".parse().unwrap());
        req
    };
    assert!(!send(&app, as_tenant("t1")).await.replayed());
    assert!(!send(&app, as_tenant("t2")).await.replayed());
    assert!(send(&app, as_tenant("t1")).await.replayed());
    assert_eq!(counters.runs(), 2);
}

/// A response larger than `max_response_body` reaches its client whole, once; retries get 410
/// problem+json `response-not-stored` with the original status, and the handler never runs
/// again.
pub async fn an_oversized_response_is_sent_once_and_never_rerun<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store).max_response_body(1000));
    let key = unique("large");
    let first = send(&app, post_with("/big/5000", &key, "")).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body.len(), 5000);
    assert!(first.body.iter().all(|b| *b == b'x'));
    for _ in 0..2 {
        let problem = send(&app, post_with("/big/5000", &key, ""))
            .await
            .assert_problem(410, "response-not-stored");
        assert_eq!(problem["original_status"], 200);
    }
    let small = send(&app, post_with("/big/1000", &unique("fits"), "")).await;
    assert_eq!(small.body.len(), 1000);
    assert_eq!(counters.runs(), 2);
}

/// A handler that outlives its lease keeps the key through the heartbeat: a retry meanwhile is
/// 409, not a second run.
pub async fn the_heartbeat_keeps_a_long_handler_exclusive<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store).lease(Duration::from_secs(1)));
    let key = unique("heartbeat");
    let first = tokio::spawn(send_owned(app.clone(), key.clone()));
    counters.until_entered(1).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    send(&app, post_with("/gated", &key, "{}"))
        .await
        .assert_problem(409, "in-progress");
    counters.open(1);
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    assert!(send(&app, post_with("/gated", &key, "{}")).await.replayed());
    assert_eq!(counters.runs(), 1);
}

/// Records expire after the TTL; then the key runs afresh.
pub async fn records_expire_after_the_ttl<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store).ttl(Duration::from_secs(1)));
    let key = unique("ttl");
    send(&app, post_with("/payments", &key, "{}")).await;
    assert!(
        send(&app, post_with("/payments", &key, "{}"))
            .await
            .replayed()
    );
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        !send(&app, post_with("/payments", &key, "{}"))
            .await
            .replayed()
    );
    assert_eq!(counters.runs(), 2);
}

/// A client that goes away mid-handler does not cancel it: the handler finishes, its response
/// is stored, and the retry replays it. The layer's detached-work handle sees it and drains it.
pub async fn a_dropped_request_still_completes<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store);
    let detached = layer.detached();
    let (app, counters) = app(layer);
    let key = unique("dropped");
    let dropped = tokio::time::timeout(
        Duration::from_millis(50),
        send(&app, post_with("/gated", &key, "{}")),
    )
    .await;
    assert!(dropped.is_err(), "the handler should still be at the gate");
    assert_eq!(detached.len(), 1);
    counters.open(1);
    tokio::time::timeout(Duration::from_secs(10), detached.drain())
        .await
        .expect("detached work drains");
    assert_eq!(detached.len(), 0);
    assert_eq!(counters.runs(), 1);
    let retry = send(&app, post_with("/gated", &key, "{}")).await;
    assert!(retry.replayed());
    assert_eq!(retry.json()["run"], 1);
}

/// Past `max_detached`, new protected requests get 503 problem+json with `Retry-After` until
/// the detached work drains.
pub async fn detached_work_is_bounded<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store).max_detached(1);
    let detached = layer.detached();
    let (app, counters) = app(layer);
    let key = unique("detached");
    let _ = tokio::time::timeout(
        Duration::from_millis(50),
        send(&app, post_with("/gated", &key, "{}")),
    )
    .await;
    assert_eq!(detached.len(), 1);
    let reply = send(&app, post_with("/payments", &unique("other"), "{}")).await;
    reply.assert_problem(503, "overloaded");
    assert!(reply.headers.contains_key(header::RETRY_AFTER));
    let unprotected = send(&app, request(Method::POST, "/payments", None, "{}")).await;
    assert_eq!(unprotected.status, StatusCode::CREATED);
    counters.open(1);
    detached.drain().await;
    let reply = send(&app, post_with("/payments", &unique("other"), "{}")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

/// The layer works as a `route_layer` and inside a `tower::ServiceBuilder` too.
pub async fn works_as_route_layer_and_in_service_builder<St: Store>(store: St) {
    let layer = IdempotencyLayer::new(store).require_key(true);
    let (router, counters) = routes();
    let app = router.route_layer(tower::ServiceBuilder::new().layer(layer));
    let key = unique("route-layer");
    send(&app, post_with("/payments", &key, "{}")).await;
    assert!(
        send(&app, post_with("/payments", &key, "{}"))
            .await
            .replayed()
    );
    send(&app, request(Method::POST, "/payments", None, "{}"))
        .await
        .assert_problem(400, "key-missing");
    assert_eq!(counters.runs(), 1);
}

/// Over real HTTP: a client that disconnects mid-handler does not cancel it. The server drops
/// the request, the layer detaches the handler, which finishes and stores its response; the
/// retry on a new connection replays it.
pub async fn a_disconnected_client_does_not_cancel_the_handler<St: Store>(store: St) {
    use tokio::io::AsyncWriteExt;

    let layer = IdempotencyLayer::new(store);
    let detached = layer.detached();
    let (app, counters) = app(layer);
    let server = crate::net::Server::start(app).await;
    let key = unique("disconnect");
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let head = format!(
        "POST /gated HTTP/1.1\r\nhost: test\r\nidempotency-key: {key}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\n\r\n{{}}"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    counters.until_entered(1).await;
    drop(stream);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while detached.is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the server never dropped the request"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(counters.runs(), 0);
    counters.open(1);
    tokio::time::timeout(Duration::from_secs(10), detached.drain())
        .await
        .expect("detached work drains");
    assert_eq!(counters.runs(), 1);
    let retry = crate::net::post(server.addr, "/gated", &key, "{}").await;
    assert!(retry.replayed());
    assert_eq!(retry.status, StatusCode::CREATED);
    assert_eq!(retry.json()["run"], 1);
    server.shutdown().await;
}

/// Over real HTTP: 50 simultaneous requests with one key against a slow handler. It runs
/// exactly once; every other answer is 409 or the replay of that one run.
pub async fn fifty_concurrent_requests_run_the_handler_once<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store));
    let server = crate::net::Server::start(app).await;
    let key = unique("fifty");
    let requests: Vec<_> = (0..50)
        .map(|_| {
            let key = key.clone();
            let addr = server.addr;
            tokio::spawn(async move { crate::net::post(addr, "/sleep/300", &key, "{}").await })
        })
        .collect();
    let mut replies = Vec::new();
    for request in requests {
        replies.push(request.await.unwrap());
    }
    assert_eq!(counters.runs(), 1);
    let executed: Vec<_> = replies
        .iter()
        .filter(|r| r.status == StatusCode::CREATED && !r.replayed())
        .collect();
    assert_eq!(executed.len(), 1, "exactly one request ran the handler");
    for reply in &replies {
        match reply.status {
            StatusCode::CONFLICT => {
                reply.assert_problem(409, "in-progress");
            }
            StatusCode::CREATED => assert_eq!(reply.body, executed[0].body),
            other => panic!("unexpected {other}: {:?}", reply.body),
        }
    }
    let retry = crate::net::post(server.addr, "/sleep/300", &key, "{}").await;
    assert!(retry.replayed());
    assert_eq!(retry.body, executed[0].body);
    server.shutdown().await;
}

/// A handler that panics releases its key: the retry runs at once, not after the lease.
pub async fn a_panicking_handler_releases_its_key<St: Store>(store: St) {
    let (app, counters) = app(IdempotencyLayer::new(store).lease(Duration::from_secs(60)));
    let key = unique("panic");
    let panicked = tokio::spawn({
        let (app, key) = (app.clone(), key.clone());
        async move { send(&app, post_with("/panic-once", &key, "{}")).await }
    })
    .await;
    assert!(panicked.unwrap_err().is_panic());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let reply = loop {
        let reply = send(&app, post_with("/panic-once", &key, "{}")).await;
        if reply.status != StatusCode::CONFLICT {
            break reply;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the key was not released"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(reply.status, StatusCode::CREATED);
    assert!(!reply.replayed());
    assert_eq!(counters.runs(), 1);
}

/// Generates one `#[tokio::test]` per HTTP-contract case for the store made by `$make`, an
/// `async fn() -> (impl Store, Guard)`; the guard lives as long as the test.
#[macro_export]
macro_rules! http_contract_suite {
    ($make:path) => {
        $crate::http_contract_suite!(@cases $make;
            uncovered_methods_pass_through,
            no_key_passes_through_when_optional,
            no_key_is_refused_when_required,
            malformed_keys_are_refused,
            sf_string_and_bare_keys_are_one_key,
            oversized_bodies_are_refused,
            retries_replay_the_first_response,
            a_reused_key_with_another_payload_is_422,
            a_request_in_flight_is_409,
            the_wait_policy_replays_after_the_first_finishes,
            the_wait_policy_gives_up_at_its_bound,
            retryable_statuses_are_not_stored,
            the_storage_policy_is_configurable,
            keys_are_scoped_by_authorization,
            a_scope_function_replaces_the_default,
            an_oversized_response_is_sent_once_and_never_rerun,
            the_heartbeat_keeps_a_long_handler_exclusive,
            records_expire_after_the_ttl,
            a_dropped_request_still_completes,
            detached_work_is_bounded,
            works_as_route_layer_and_in_service_builder,
            a_disconnected_client_does_not_cancel_the_handler,
            fifty_concurrent_requests_run_the_handler_once,
            a_panicking_handler_releases_its_key,
        );
    };
    (@cases $make:path; $($case:ident),* $(,)?) => {
        mod http_contract {
            #[allow(unused_imports)]
            use super::*;
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $case() {
                    // The guard keeps what the store needs (a Redis server) alive for the test.
                    let (store, _guard) = $make().await;
                    $crate::http_contract::$case(store).await;
                }
            )*
        }
    };
}
