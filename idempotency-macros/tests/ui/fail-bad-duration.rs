use idempotency::{Error, idempotent};

#[idempotent(key = id, ttl = "24x")]
async fn bad_unit(id: u64) -> Result<u64, Error> {
    Ok(id)
}

#[idempotent(key = id, lease = "30")]
async fn no_unit(id: u64) -> Result<u64, Error> {
    Ok(id)
}

fn main() {}
