//! A payments API whose `POST /payments` is safe to retry.
//!
//! ```text
//! cargo run -p examples --example quickstart
//! ```
//!
//! - `POST /payments` with an `Idempotency-Key` and `{"amount": 1000, "currency": "EUR"}`
//!   creates a payment (201) with a fresh `id`; a retry with the same key replays it.
//! - `GET /payments` lists every payment actually executed.
//!
//! Environment: `PORT` (default 3000), `PAYMENTS_DELAY_MS` (default 0), the latency of the
//! simulated payment provider; `RUST_LOG` for the log filter. The idempotency store is in
//! memory unless `REDIS_URL` (`redis://127.0.0.1:6379`) or `REDIS_CLUSTER_NODES`
//! (comma-separated `redis://` URLs) is set: then several quickstart processes on one Redis
//! behave as one service.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use axum::{Json, Router};
use idempotency_layer::store::RedisStore;
use idempotency_layer::{DetachedWork, IdempotencyLayer, MemoryStore, Store};
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;

#[derive(Deserialize)]
struct NewPayment {
    amount: u64,
    currency: String,
}

#[derive(Clone, Serialize)]
struct Payment {
    id: String,
    amount: u64,
    currency: String,
    status: &'static str,
}

#[derive(Clone)]
struct Payments {
    executed: Arc<Mutex<Vec<Payment>>>,
    provider_delay: Duration,
}

async fn create(
    State(payments): State<Payments>,
    Json(new): Json<NewPayment>,
) -> (StatusCode, Json<Payment>) {
    // The side effect that must not happen twice: a charge at the payment provider.
    tokio::time::sleep(payments.provider_delay).await;
    let payment = Payment {
        id: format!("pay_{:016x}", rand::random::<u64>()),
        amount: new.amount,
        currency: new.currency,
        status: "succeeded",
    };
    payments.executed.lock().await.push(payment.clone());
    tracing::info!(id = %payment.id, amount = payment.amount, "payment executed");
    (StatusCode::CREATED, Json(payment))
}

async fn list(State(payments): State<Payments>) -> Json<Vec<Payment>> {
    Json(payments.executed.lock().await.clone())
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> Result<T, String> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a valid value")),
        Err(_) => Ok(default),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,idempotency_layer=debug".into()),
        )
        .init();
    let port: u16 = env_or("PORT", 3000)?;
    let payments = Payments {
        executed: Arc::default(),
        provider_delay: Duration::from_millis(env_or("PAYMENTS_DELAY_MS", 0)?),
    };

    let (app, detached) = if let Ok(nodes) = std::env::var("REDIS_CLUSTER_NODES") {
        let nodes: Vec<&str> = nodes.split(',').map(str::trim).collect();
        tracing::info!(?nodes, "idempotency store: Redis Cluster");
        app(RedisStore::open_cluster(nodes).await?, payments)
    } else if let Ok(url) = std::env::var("REDIS_URL") {
        tracing::info!(%url, "idempotency store: Redis");
        app(RedisStore::open(&url).await?, payments)
    } else {
        tracing::info!("idempotency store: in-memory (this process only)");
        app(MemoryStore::new(), payments)
    };

    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
    tracing::info!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown_signal())
        .await?;

    // Handlers whose clients went away are still running: let them finish and store their
    // responses, so that the clients' retries replay them.
    tracing::info!(detached = detached.len(), "draining detached work");
    detached.drain().await;
    tracing::info!("stopped");
    Ok(())
}

/// The API, its `POST /payments` protected by the layer on `store`.
fn app<St: Store>(store: St, payments: Payments) -> (Router, DetachedWork) {
    let idempotency = IdempotencyLayer::new(store).require_key(true);
    let detached = idempotency.detached();
    let router = Router::new()
        .route("/payments", post(create).get(list))
        .layer(idempotency)
        .with_state(payments);
    (router, detached)
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "no SIGTERM handler");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
    tracing::info!("shutting down");
}
