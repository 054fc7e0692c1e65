use idempotency::idempotent;

#[idempotent(key = id)]
async fn not_result(id: u64) -> u64 {
    id
}

#[idempotent(key = id)]
async fn no_return_type(id: u64) {
    let _ = id;
}

fn main() {}
