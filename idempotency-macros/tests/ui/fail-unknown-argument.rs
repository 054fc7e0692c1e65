use idempotency::{Error, idempotent};

#[idempotent(key = id, retries = 3)]
async fn unknown(id: u64) -> Result<u64, Error> {
    Ok(id)
}

fn main() {}
