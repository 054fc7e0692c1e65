//! A benchmark target: the same tiny `POST /payments` handler served twice, once bare and once
//! behind `IdempotencyLayer` on a `MemoryStore`, so that one load generator run can compare the
//! two side by side.
//!
//! ```text
//! cargo build --release -p examples --example bench_server
//! BARE_PORT=3001 LAYER_PORT=3002 target/release/examples/bench_server
//! ```
//!
//! `scripts/bench/run.sh` builds it, starts it and drives it with `wrk`. The handler reads the
//! body and answers `201` with a fixed ~80-byte JSON body. The store is sized (2 000 000
//! records, 1 GiB) so that unique-key runs never evict. No logging subscriber is installed:
//! log formatting would dominate the cost being measured.

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::IntoResponse;
use axum::routing::post;
use idempotency_layer::{IdempotencyLayer, MemoryStore};
use tokio::net::TcpListener;

const PAYMENT: &str =
    r#"{"id":"pay_d8341c6835461922","amount":1000,"currency":"EUR","status":"succeeded"}"#;

async fn create(_body: Bytes) -> impl IntoResponse {
    (
        StatusCode::CREATED,
        [(CONTENT_TYPE, "application/json")],
        PAYMENT,
    )
}

fn port(name: &str, default: u16) -> Result<u16, String> {
    match std::env::var(name) {
        Ok(value) => value
            .parse()
            .map_err(|_| format!("{name}={value:?} is not a port")),
        Err(_) => Ok(default),
    }
}

async fn serve(port: u16, app: Router) -> std::io::Result<()> {
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let bare_port = port("BARE_PORT", 3001)?;
    let layer_port = port("LAYER_PORT", 3002)?;
    let store = MemoryStore::builder()
        .max_entries(2_000_000)
        .max_bytes(1 << 30)
        .build();

    let bare = Router::new().route("/payments", post(create));
    let layered = bare.clone().layer(IdempotencyLayer::new(store));

    tokio::try_join!(serve(bare_port, bare), serve(layer_port, layered))?;
    Ok(())
}
