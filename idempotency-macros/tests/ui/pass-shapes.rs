// Every supported shape: a free function, `&self` methods, a generic function, reference and
// `impl Trait` parameters; docs, attributes and visibility are kept.
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use idempotency::{Error, MemoryStore, idempotent};

static RUNS: AtomicUsize = AtomicUsize::new(0);

/// Documented, public, with an attribute.
#[idempotent(key = format!("free-{id}"), ttl = "24h", lease = "30s")]
#[allow(clippy::needless_lifetimes)]
pub async fn free<'a>(id: u64, note: &'a str) -> Result<String, Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(format!("{id}:{note}"))
}

#[idempotent(key = key.as_ref(), namespace = "generic", in_progress = wait("2s"))]
async fn generic<T: serde::Serialize + serde::de::DeserializeOwned + Clone>(key: impl AsRef<str>, value: &T) -> Result<Vec<T>, Error> {
    RUNS.fetch_add(1, Ordering::SeqCst);
    Ok(vec![value.clone()])
}

struct Mailer {
    store: MemoryStore,
}

impl Mailer {
    #[idempotent(key = user, store = self.store.clone(), fingerprint = [email], in_progress = fail)]
    async fn send(&self, user: &str, email: &str) -> Result<u32, Error> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        if email.is_empty() {
            return Ok(0);
        }
        Ok(email.len() as u32)
    }

    #[idempotent(key = user, ttl = Duration::from_secs(60), lease = Duration::from_secs(5))]
    async fn with_duration_expressions(&self, user: &str) -> Result<(), Error> {
        RUNS.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

trait Notifier {
    async fn notify(&self, user: &str) -> Result<String, Error>;
}

struct Email;
struct Sms;

impl Notifier for Email {
    #[idempotent(key = user)]
    async fn notify(&self, user: &str) -> Result<String, Error> {
        Ok("email".to_owned())
    }
}

impl Notifier for Sms {
    #[idempotent(key = user)]
    async fn notify(&self, user: &str) -> Result<String, Error> {
        Ok("sms".to_owned())
    }
}

#[idempotent(key = "one key")]
async fn type_of<T>() -> Result<String, Error> {
    Ok(std::any::type_name::<T>().to_owned())
}

#[idempotent(key = "one key")]
async fn const_of<const N: usize>() -> Result<usize, Error> {
    Ok(N)
}

#[idempotent(key = "one key")]
async fn impl_of(value: impl std::fmt::Debug) -> Result<String, Error> {
    Ok(format!("{value:?}"))
}

#[tokio::main]
async fn main() {
    assert_eq!(const_of::<1>().await.unwrap(), 1);
    assert_eq!(const_of::<2>().await.unwrap(), 2);
    assert_eq!(impl_of(1u8).await.unwrap(), "1");
    assert_eq!(impl_of("two").await.unwrap(), "\"two\"");
    // Two impls of one trait method, and two instances of one generic function, never share.
    assert_eq!(Email.notify("u").await.unwrap(), "email");
    assert_eq!(Sms.notify("u").await.unwrap(), "sms");
    assert_eq!(type_of::<u8>().await.unwrap(), "u8");
    assert_eq!(type_of::<u16>().await.unwrap(), "u16");

    for _ in 0..2 {
        assert_eq!(free(7, "note").await.unwrap(), "7:note");
        assert_eq!(generic("k", &3u8).await.unwrap(), vec![3]);
        let mailer = Mailer { store: MemoryStore::new() };
        assert_eq!(mailer.send("u", "a@b.c").await.unwrap(), 5);
        mailer.with_duration_expressions("u").await.unwrap();
    }
    // The mailer's store is new each time round; the others share the default store.
    assert_eq!(RUNS.load(Ordering::SeqCst), 2 + 2 + 1);
}
