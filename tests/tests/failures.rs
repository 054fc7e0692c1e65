//! The layer when things go wrong: the store down or full, a corrupt record, a failing handler.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::http::{Request, Response, StatusCode, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use idempotency_layer::{IdempotencyLayer, MemoryStore, RequestBody};
use tests::app::{post_with, routes, send};
use tests::faults::Faulty;
use tower::{Layer, ServiceExt, service_fn};

#[tokio::test]
async fn a_store_outage_is_503_with_retry_after_and_the_handler_does_not_run() {
    let store = Faulty::new(MemoryStore::new());
    let switch = store.switch();
    let (router, counters) = routes();
    let app = router.layer(IdempotencyLayer::new(store));
    switch.store(true, Ordering::SeqCst);
    let reply = send(&app, post_with("/payments", "k1", "{}")).await;
    reply.assert_problem(503, "store-unavailable");
    assert_eq!(reply.headers[header::RETRY_AFTER], "1");
    assert_eq!(counters.runs(), 0);
    switch.store(false, Ordering::SeqCst);
    let reply = send(&app, post_with("/payments", "k1", "{}")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
    assert_eq!(counters.runs(), 1);
}

#[tokio::test]
async fn fail_open_runs_the_handler_unprotected_during_an_outage() {
    let store = Faulty::new(MemoryStore::new());
    store.switch().store(true, Ordering::SeqCst);
    let (router, counters) = routes();
    let app = router.layer(IdempotencyLayer::new(store).fail_open(true));
    for _ in 0..2 {
        let reply = send(&app, post_with("/payments", "k1", "{}")).await;
        assert_eq!(reply.status, StatusCode::CREATED);
        assert!(!reply.replayed());
    }
    assert_eq!(counters.runs(), 2);
}

#[tokio::test]
async fn a_corrupt_record_is_503_not_a_crash_and_never_a_rerun() {
    let store = Faulty::new(MemoryStore::new()).corrupting(b"\x07not a record");
    let (router, counters) = routes();
    let app = router.layer(IdempotencyLayer::new(store));
    let first = send(&app, post_with("/payments", "k1", "{}")).await;
    assert_eq!(first.status, StatusCode::CREATED);
    for _ in 0..2 {
        send(&app, post_with("/payments", "k1", "{}"))
            .await
            .assert_problem(503, "store-unavailable");
    }
    assert_eq!(counters.runs(), 1);
}

#[tokio::test]
async fn a_full_memory_store_of_requests_in_flight_is_503() {
    let store = MemoryStore::builder().max_entries(1).build();
    let (router, counters) = routes();
    let app = router.layer(IdempotencyLayer::new(store));
    let first = tokio::spawn({
        let app = app.clone();
        async move { send(&app, post_with("/gated", "held", "{}")).await }
    });
    counters.until_entered(1).await;
    send(&app, post_with("/payments", "another", "{}"))
        .await
        .assert_problem(503, "store-unavailable");
    counters.open(1);
    assert_eq!(first.await.unwrap().status, StatusCode::CREATED);
    // Completed records make room: the next key evicts the completed one.
    let reply = send(&app, post_with("/payments", "another", "{}")).await;
    assert_eq!(reply.status, StatusCode::CREATED);
}

#[tokio::test]
async fn a_service_error_releases_the_key_and_reaches_the_caller() {
    let calls = Arc::new(AtomicUsize::new(0));
    let service = service_fn({
        let calls = calls.clone();
        move |request: Request<RequestBody<Full<Bytes>>>| {
            let call = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                let body = request.into_body().collect().await?.to_bytes();
                if call == 0 {
                    return Err("the first call fails".into());
                }
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>(Response::new(Full::new(body)))
            }
        }
    });
    let service = IdempotencyLayer::new(MemoryStore::new()).layer(service);
    let request = || {
        Request::post("/")
            .header("idempotency-key", "k")
            .body(Full::new(Bytes::from_static(b"payload")))
            .unwrap()
    };
    let error = service.clone().oneshot(request()).await.unwrap_err();
    assert_eq!(error.to_string(), "the first call fails");
    let response = service.clone().oneshot(request()).await.unwrap();
    assert_eq!(
        response.into_body().collect().await.unwrap().to_bytes(),
        "payload"
    );
    let replay = service.oneshot(request()).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn fail_open_never_reruns_an_operation_whose_record_is_corrupt() {
    let store = Faulty::new(MemoryStore::new()).corrupting(b"\x07not a record");
    let (router, counters) = routes();
    let app = router.layer(IdempotencyLayer::new(store).fail_open(true));
    send(&app, post_with("/payments", "k1", "{}")).await;
    send(&app, post_with("/payments", "k1", "{}"))
        .await
        .assert_problem(503, "store-unavailable");
    assert_eq!(counters.runs(), 1);
}

/// A response the store can never hold is kept as "completed, not stored": retries get 410 and
/// never a second run, and no other record is evicted to try to make room.
#[tokio::test]
async fn a_response_too_large_for_the_store_is_kept_without_its_body() {
    let store = MemoryStore::builder().max_bytes(16 * 1024).build();
    let (router, counters) = routes();
    let app = router.layer(IdempotencyLayer::new(store));
    send(&app, post_with("/payments", "small", "{}")).await;
    let huge = send(&app, post_with("/big/50000", "huge", "")).await;
    assert_eq!(huge.body.len(), 50_000);
    send(&app, post_with("/big/50000", "huge", ""))
        .await
        .assert_problem(410, "response-not-stored");
    assert!(
        send(&app, post_with("/payments", "small", "{}"))
            .await
            .replayed()
    );
    assert_eq!(counters.runs(), 2);
}

/// A call cancelled after its body returned Ok, while the result is being stored, still stores
/// it: the next call gets the result, and the body ran once.
#[tokio::test]
async fn a_call_cancelled_while_storing_its_result_still_stores_it() {
    use idempotency_layer::action::{Action, Fingerprint};

    let store =
        Faulty::new(MemoryStore::new()).slow_complete(std::time::Duration::from_millis(300));
    let action = Action::new("cancelled-while-storing").store(store);
    let runs = AtomicUsize::new(0);
    let body =
        || async { Ok::<_, idempotency_layer::Error>(runs.fetch_add(1, Ordering::SeqCst) + 1) };
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(100),
        action.run("k", Fingerprint::of(""), body),
    )
    .await;
    assert!(cancelled.is_err(), "cancelled while storing");
    let run: usize = action.run("k", Fingerprint::of(""), body).await.unwrap();
    assert_eq!(run, 1);
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}

/// A call cancelled while the reply to its claim is on its way releases the key it claimed:
/// the next call runs at once, not after the lease.
#[tokio::test]
async fn a_call_cancelled_during_its_claim_releases_the_key() {
    use idempotency_layer::action::{Action, Fingerprint, InProgress};

    let store = Faulty::new(MemoryStore::new()).slow_begin(std::time::Duration::from_millis(300));
    let action = Action::new("cancelled-while-claiming")
        .store(store)
        .lease(std::time::Duration::from_secs(60))
        .in_progress(InProgress::Fail);
    let runs = AtomicUsize::new(0);
    let body =
        || async { Ok::<_, idempotency_layer::Error>(runs.fetch_add(1, Ordering::SeqCst) + 1) };
    let cancelled = tokio::time::timeout(
        std::time::Duration::from_millis(50),
        action.run("k", Fingerprint::of(""), body),
    )
    .await;
    assert!(cancelled.is_err(), "cancelled while claiming");
    assert_eq!(runs.load(Ordering::SeqCst), 0);
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
    let run: usize = loop {
        match action.run("k", Fingerprint::of(""), body).await {
            Ok(run) => break run,
            Err(idempotency_layer::Error::InProgress { .. }) => {
                assert!(
                    tokio::time::Instant::now() < deadline,
                    "the key was not released"
                );
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            Err(other) => panic!("{other}"),
        }
    };
    assert_eq!(run, 1);
}

/// A result the store can never hold is kept as "ran, result not kept": later calls get
/// `ResultNotKept` and never run the body again.
#[tokio::test]
async fn an_action_result_too_large_for_the_store_is_never_rerun() {
    use idempotency_layer::action::{Action, Fingerprint};

    let store = MemoryStore::builder().max_bytes(4 * 1024).build();
    let action = Action::new("too-large").store(store);
    let runs = AtomicUsize::new(0);
    let body = || async {
        runs.fetch_add(1, Ordering::SeqCst);
        Ok::<_, idempotency_layer::Error>("x".repeat(10_000))
    };
    let first: String = action.run("k", Fingerprint::of(""), body).await.unwrap();
    assert_eq!(first.len(), 10_000);
    let again: Result<String, _> = action.run("k", Fingerprint::of(""), body).await;
    assert!(
        matches!(again, Err(idempotency_layer::Error::ResultNotKept)),
        "{again:?}"
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
