use idempotency::{Error, idempotent};

#[idempotent(ttl = "1h")]
async fn missing_key(id: u64) -> Result<u64, Error> {
    Ok(id)
}

fn main() {}
