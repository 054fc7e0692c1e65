use idempotency::{Error, idempotent};

#[idempotent(key = id, ttl = 3600)]
async fn ttl_not_a_duration(id: u64) -> Result<u64, Error> {
    Ok(id)
}

fn main() {}
