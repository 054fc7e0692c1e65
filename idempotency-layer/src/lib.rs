//! placeholder docs
#![forbid(unsafe_code)]

pub mod body;
pub mod error;
mod future;
pub mod key;
mod layer;
pub mod problem;
mod record;
mod service;
pub mod store;

pub use body::{RequestBody, ResponseBody};
pub use error::StoreError;
pub use future::ResponseFuture;
pub use layer::{DetachedWork, IdempotencyLayer, InFlight};
pub use service::{IDEMPOTENT_REPLAYED, Idempotency};
pub use store::{MemoryStore, Store};
