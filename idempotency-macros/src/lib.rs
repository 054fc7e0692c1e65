//! `#[idempotent(key = ...)]`: run a plain async function once per key; later calls get the
//! first result back. Re-exported by `idempotency-layer` (feature `macros`, on by default), and
//! documented there with runnable examples: use it as `idempotency_layer::idempotent`.
//!
//! ```ignore
//! use idempotency_layer::idempotent;
//!
//! #[idempotent(key = format!("welcome-email-{user_id}"), ttl = "24h")]
//! async fn send_welcome_email(user_id: &str, email: &str, name: &str) -> Result<Receipt, MailError> {
//!     mailer.send(email, name).await
//! }
//! ```
//!
//! Arguments:
//!
//! | argument | meaning | default |
//! | --- | --- | --- |
//! | `key = expr` | the key, any `Display` expression over the parameters (required) | |
//! | `store = expr` | the store (`impl Store + Clone`) | the process-wide default store |
//! | `ttl = "24h"` or a `Duration` | how long the result is kept | 24 h |
//! | `lease = "30s"` or a `Duration` | how long a call holds the key between heartbeats | 10 s |
//! | `namespace = "..."` | keeps functions apart | module path and function name |
//! | `fingerprint = [a, b]` | parameters whose change under the same key is refused | none |
//! | `in_progress = wait`, `wait("5s")` or `fail` | a concurrent call waits for the result, or fails | `wait("10s")` |
//!
//! Durations are a number and a unit (`ms`, `s`, `m`, `h`, `d`), such as `"30s"`, `"24h"` or
//! `"1h30m"`, checked at compile time, or any expression of type `std::time::Duration`.

mod args;
mod expand;

use proc_macro::TokenStream;
use quote::ToTokens;
use syn::{ItemFn, parse_macro_input};

/// Runs the async function once per key; see the [crate docs](crate).
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
