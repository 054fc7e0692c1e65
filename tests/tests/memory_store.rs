//! The store contract and the HTTP contract on the in-memory store.

use idempotency_layer::MemoryStore;

async fn memory_store() -> MemoryStore {
    MemoryStore::new()
}

tests::store_contract_suite!(memory_store);
tests::http_contract_suite!(memory_store);
