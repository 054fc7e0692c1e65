use idempotency::{Error, idempotent};

#[idempotent(key = id)]
fn not_async(id: u64) -> Result<u64, Error> {
    Ok(id)
}

fn main() {}
