//! A welcome e-mail that is sent once, however often its trigger fires.
//!
//! ```text
//! cargo run -p examples --example welcome_email
//! ```
//!
//! `send_welcome_email` is an `#[idempotent]` function; the program calls it twice in a row for
//! the same user and prints `receipt <id>` for each call: the same receipt twice, and one e-mail
//! in the outbox. The "mail provider" appends one line per e-mail actually sent to the file
//! named by `OUTBOX` (default `outbox.log`), after `SEND_DELAY_MS` (default 200) of simulated
//! latency.
//!
//! With `REDIS_URL` set, the results live in Redis: several processes started at once on one
//! Redis send one e-mail in total, and every call in every process prints the same receipt.

use std::time::Duration;

use idempotency_layer::action::set_default_store;
use idempotency_layer::idempotent;
use idempotency_layer::store::RedisStore;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;

/// What the mail provider answers for a sent e-mail.
#[derive(Debug, Serialize, Deserialize)]
struct Receipt {
    id: String,
    to: String,
}

#[derive(Debug, thiserror::Error)]
enum MailError {
    #[error("the outbox could not be written: {0}")]
    Outbox(#[from] std::io::Error),
    #[error(transparent)]
    Idempotency(#[from] idempotency_layer::Error),
}

/// Sends the welcome e-mail of `user_id`, once: a later call with the same user gets the first
/// receipt back, and a call with another address for the same user is refused.
#[idempotent(key = format!("welcome-email-{user_id}"), ttl = "24h", fingerprint = [email])]
async fn send_welcome_email(user_id: &str, email: &str, name: &str) -> Result<Receipt, MailError> {
    let delay = std::env::var("SEND_DELAY_MS")
        .ok()
        .and_then(|ms| ms.parse().ok())
        .unwrap_or(200);
    tokio::time::sleep(Duration::from_millis(delay)).await;
    let receipt = Receipt {
        id: format!("rcpt_{:016x}", rand::random::<u64>()),
        to: email.to_owned(),
    };
    let outbox = std::env::var("OUTBOX").unwrap_or_else(|_| "outbox.log".to_owned());
    let mut file = tokio::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&outbox)
        .await?;
    let line = format!("to={email} name={name} receipt={}\n", receipt.id);
    file.write_all(line.as_bytes()).await?;
    Ok(receipt)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Ok(url) = std::env::var("REDIS_URL") {
        set_default_store(RedisStore::open(&url).await?);
        eprintln!("idempotency store: Redis at {url}");
    } else {
        eprintln!("idempotency store: in-memory (this process only)");
    }
    for _ in 0..2 {
        let receipt = send_welcome_email("user_123", "new.user@example.com", "Alex").await?;
        println!("receipt {}", receipt.id);
    }
    Ok(())
}
