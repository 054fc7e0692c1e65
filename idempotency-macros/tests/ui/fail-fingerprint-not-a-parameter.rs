use idempotency::{Error, idempotent};

#[idempotent(key = id, fingerprint = [amount])]
async fn charge(id: u64, amout: u64) -> Result<u64, Error> {
    Ok(id + amout)
}

fn main() {}
