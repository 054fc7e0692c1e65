//! Shared test support: an instrumented application, and the contract suites that every store
//! must pass (`store_contract`) and that the layer must keep on every store (`http_contract`).
//!
//! A suite is a set of `pub async fn case(store)` functions plus a macro that turns each into a
//! `#[tokio::test]` for one store: `http_contract_suite!(make_store)` where `make_store` is an
//! `async fn() -> (impl Store, Guard)`, the guard keeping alive whatever the store needs (a
//! Redis server) until the test ends.

pub mod action_contract;
pub mod app;
pub mod faults;
pub mod http_contract;
pub mod net;
pub mod processes;
pub mod redis_server;
pub mod store_contract;
