//! The `#[idempotent]` attribute of `idempotency-layer`, which re-exports it (feature `macros`,
//! on by default): use it as `idempotency_layer::idempotent`. It makes a plain async function
//! run once per key; later calls get the first result back.
//!
//! ```
//! # extern crate idempotency as idempotency_layer;
//! use std::sync::atomic::{AtomicUsize, Ordering};
//! use idempotency_layer::{Error, idempotent};
//!
//! static CHARGED: AtomicUsize = AtomicUsize::new(0);
//!
//! #[idempotent(key = format!("order-{order_id}"), ttl = "24h", fingerprint = [amount])]
//! async fn charge(order_id: u64, amount: u64) -> Result<u64, Error> {
//!     CHARGED.fetch_add(1, Ordering::SeqCst); // the side effect that must not repeat
//!     Ok(amount)
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Error> {
//! assert_eq!(charge(42, 1000).await?, 1000);
//! assert_eq!(charge(42, 1000).await?, 1000); // the stored result; nothing charged
//! assert!(matches!(charge(42, 2000).await, Err(Error::KeyReused)));
//! assert_eq!(CHARGED.load(Ordering::SeqCst), 1);
//! # Ok(()) }
//! ```
//!
//! See [`idempotent`] for the arguments and the rules.

mod args;
mod expand;

use proc_macro::TokenStream;
use quote::ToTokens;
use syn::{ItemFn, parse_macro_input};

/// Runs an async function once per key; later calls get the first result back.
///
/// ```ignore
/// use idempotency_layer::idempotent;
///
/// #[idempotent(key = format!("welcome-email-{user_id}"), ttl = "24h", fingerprint = [email])]
/// async fn send_welcome_email(user_id: &str, email: &str, name: &str) -> Result<Receipt, MailError> {
///     mailer.send(email, name).await
/// }
/// ```
///
/// The function must be `async` and return `Result<T, E>` with
/// `T: Serialize + DeserializeOwned` and `E: From<idempotency_layer::Error>`, written with both
/// parameters: an alias with one, such as `anyhow::Result<T>`, is refused at compile time. `Ok` is stored
/// and returned to every later call with the same key, without running the body; `Err`, a
/// panic or a cancelled call releases the key, so a retry runs the body again. Free functions,
/// `&self` methods and generic functions work; the signature, docs, attributes and visibility
/// are kept.
///
/// | argument | meaning | default |
/// | --- | --- | --- |
/// | `key = expr` | the key: any `Display` expression over the parameters (required) | |
/// | `store = expr` | the store, any `impl Store + Clone` | the process-wide default store |
/// | `ttl = "24h"` or a `Duration` | how long the result is kept | 24 h |
/// | `lease = "30s"` or a `Duration` | how long a call holds the key between heartbeats | 10 s |
/// | `namespace = "..."` | keeps functions apart | module path and function name, plus the type of `Self` for methods and of each type, const and `impl Trait` parameter for generic functions |
/// | `fingerprint = [a, b]` | parameters (`Serialize`) whose change under one key is refused with `Error::KeyReused` | none |
/// | `in_progress = wait`, `wait("5s")` or `fail` | a concurrent call waits for the first result, or fails with `Error::InProgress` | `wait("10s")` |
///
/// The default namespace keeps two impls of one trait method, and two instances of one generic
/// function, apart. It uses `std::any::type_name`, whose text a new compiler may change: give
/// `namespace` where results must survive a toolchain upgrade, and to functions without
/// `self` that two impl blocks of one module both define.
///
/// Durations are a number and a unit (`ms`, `s`, `m`, `h`, `d`) such as `"30s"`, `"24h"` or
/// `"1h30m"`, checked at compile time, or any expression of type `std::time::Duration`. A
/// misuse (not `async`, no `key`, an unknown or repeated argument, another return type, a bad
/// duration) is a compile error at the offending tokens.
#[proc_macro_attribute]
pub fn idempotent(args: TokenStream, item: TokenStream) -> TokenStream {
    let function = parse_macro_input!(item as ItemFn);
    let expanded =
        syn::parse::<args::Args>(args).and_then(|args| expand::expand(args, function.clone()));
    match expanded {
        Ok(expanded) => expanded.into(),
        // The function as written stays, so that the one error above is the only one.
        Err(error) => {
            let mut output = error.into_compile_error();
            output.extend(function.into_token_stream());
            output.into()
        }
    }
}
