use idempotency::idempotent;

#[derive(Debug)]
struct MyError;

#[idempotent(key = id)]
async fn charge(id: u64) -> Result<u64, MyError> {
    Ok(id)
}

fn main() {}
