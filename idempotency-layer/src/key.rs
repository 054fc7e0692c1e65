//! Idempotency keys: header parsing, the scope that keeps principals apart, the storage key
//! derived from both, and the request fingerprint.
//!
//! # The header
//!
//! The IETF draft defines `Idempotency-Key` as a Structured Field string (`"8e03978e"`); most
//! clients in the wild send the bare token (`8e03978e`). Both forms name the same key. A key is
//! 1 to 255 characters of visible ASCII (`!` to `~`); anything else, an sf-string with a bad
//! escape or an unterminated quote, and a request carrying the header twice are refused with
//! `400 Bad Request`.
//!
//! ```
//! use idempotency_layer::key::{parse, KeyError};
//!
//! assert_eq!(parse(b"8e03978e").unwrap().as_ref(), b"8e03978e");
//! assert_eq!(parse(b"\"8e03978e\"").unwrap().as_ref(), b"8e03978e");
//! assert_eq!(parse(b"\"a\\\"b\"").unwrap().as_ref(), b"a\"b");
//! assert_eq!(parse(b""), Err(KeyError::Empty));
//! assert_eq!(parse(b"has space"), Err(KeyError::NotVisibleAscii));
//! assert_eq!(parse(b"\"open"), Err(KeyError::BadString));
//! ```
//!
//! # The storage key
//!
//! The client's key never reaches the store verbatim: [`StoreKey::derive`] hashes it with the
//! scope and a namespace, so a key cannot inject patterns into Redis, every storage key has the
//! same length, and two principals (or two functions) sending the same key never share a record.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{AUTHORIZATION, CONTENT_TYPE};
use http::request::Parts;
use http::{HeaderMap, HeaderName, HeaderValue};
use sha2::{Digest as _, Sha256};

/// The longest key accepted, in characters.
pub const MAX_KEY_LEN: usize = 255;

/// Why an `Idempotency-Key` header was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyError {
    /// The key is empty.
    #[error("the Idempotency-Key is empty")]
    Empty,
    /// The key is longer than [`MAX_KEY_LEN`] characters.
    #[error("the Idempotency-Key is longer than 255 characters")]
    TooLong,
    /// The key contains a character outside visible ASCII (`!` to `~`).
    #[error("the Idempotency-Key must be visible ASCII characters only")]
    NotVisibleAscii,
    /// The key starts with a quote but is not a valid Structured Field string.
    #[error("the Idempotency-Key is not a valid Structured Field string")]
    BadString,
    /// The request carries the header more than once.
    #[error("the Idempotency-Key header is present more than once")]
    Duplicate,
}

/// Parses one `Idempotency-Key` header value, in its sf-string (`"abc"`) or bare (`abc`) form.
///
/// Returns the key's characters, borrowed unless the sf-string held escapes. Never panics,
/// whatever the input.
pub fn parse(value: &[u8]) -> Result<Cow<'_, [u8]>, KeyError> {
    let key = match value.first() {
        Some(b'"') => parse_sf_string(value)?,
        _ => Cow::Borrowed(value),
    };
    validate(&key)?;
    Ok(key)
}

fn validate(key: &[u8]) -> Result<(), KeyError> {
    if key.is_empty() {
        return Err(KeyError::Empty);
    }
    if key.len() > MAX_KEY_LEN {
        return Err(KeyError::TooLong);
    }
    if !key.iter().all(|b| b.is_ascii_graphic()) {
        return Err(KeyError::NotVisibleAscii);
    }
    Ok(())
}

/// RFC 8941 §4.2.5: a quoted string with `\"` and `\\` as its only escapes, optionally followed
/// by parameters (which the draft gives no meaning, so they are checked for shape and ignored).
fn parse_sf_string(value: &[u8]) -> Result<Cow<'_, [u8]>, KeyError> {
    let body = &value[1..];
    let mut unescaped: Option<Vec<u8>> = None;
    let mut i = 0;
    while i < body.len() {
        match body[i] {
            b'\\' => {
                let escaped = *body.get(i + 1).ok_or(KeyError::BadString)?;
                if escaped != b'"' && escaped != b'\\' {
                    return Err(KeyError::BadString);
                }
                unescaped
                    .get_or_insert_with(|| body[..i].to_vec())
                    .push(escaped);
                i += 2;
            }
            b'"' => {
                check_parameters(&body[i + 1..])?;
                return Ok(match unescaped {
                    Some(owned) => Cow::Owned(owned),
                    None => Cow::Borrowed(&body[..i]),
                });
            }
            b' '..=b'~' => {
                if let Some(owned) = unescaped.as_mut() {
                    owned.push(body[i]);
                }
                i += 1;
            }
            _ => return Err(KeyError::NotVisibleAscii),
        }
    }
    Err(KeyError::BadString)
}

fn check_parameters(rest: &[u8]) -> Result<(), KeyError> {
    if rest.is_empty() || (rest[0] == b';' && rest.iter().all(|b| (b' '..=b'~').contains(b))) {
        Ok(())
    } else {
        Err(KeyError::BadString)
    }
}

/// Reads the key from `headers`: `Ok(None)` when absent, an error when present twice or
/// malformed.
pub(crate) fn from_headers<'h>(
    headers: &'h HeaderMap,
    name: &HeaderName,
) -> Result<Option<Cow<'h, [u8]>>, KeyError> {
    let mut values = headers.get_all(name).iter();
    let Some(first) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(KeyError::Duplicate);
    }
    parse(first.as_bytes()).map(Some)
}

/// Who a key belongs to: requests with different scopes never share a record.
///
/// Built from anything that names a principal: a `String` or `&'static str` tenant id, raw
/// bytes, a header value. `Scope::global()` (or `None` from a scope function) shares keys across
/// all requests.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope(Option<Bytes>);

impl Scope {
    /// The scope shared by every request.
    pub const fn global() -> Self {
        Self(None)
    }

    fn as_bytes(&self) -> Option<&[u8]> {
        self.0.as_deref()
    }
}

impl From<Bytes> for Scope {
    fn from(value: Bytes) -> Self {
        Self(Some(value))
    }
}

impl From<String> for Scope {
    fn from(value: String) -> Self {
        Self(Some(Bytes::from(value)))
    }
}

impl From<&'static str> for Scope {
    fn from(value: &'static str) -> Self {
        Self(Some(Bytes::from_static(value.as_bytes())))
    }
}

impl From<Vec<u8>> for Scope {
    fn from(value: Vec<u8>) -> Self {
        Self(Some(Bytes::from(value)))
    }
}

impl From<&HeaderValue> for Scope {
    fn from(value: &HeaderValue) -> Self {
        Self(Some(Bytes::copy_from_slice(value.as_bytes())))
    }
}

impl<T: Into<Scope>> From<Option<T>> for Scope {
    fn from(value: Option<T>) -> Self {
        value.map_or_else(Scope::global, Into::into)
    }
}

/// Computes the [`Scope`] of a request. Implemented for every
/// `Fn(&http::request::Parts) -> impl Into<Scope>`.
pub trait ScopeFn: Send + Sync + 'static {
    /// The scope of the request whose head is `parts`.
    fn scope(&self, parts: &Parts) -> Scope;
}

impl<F, R> ScopeFn for F
where
    F: Fn(&Parts) -> R + Send + Sync + 'static,
    R: Into<Scope>,
{
    fn scope(&self, parts: &Parts) -> Scope {
        self(parts).into()
    }
}

/// The default scope: the request's `Authorization` header, so two principals never share a
/// key. Requests without the header share one scope.
#[derive(Debug, Clone, Copy, Default)]
pub struct AuthorizationScope;

impl ScopeFn for AuthorizationScope {
    fn scope(&self, parts: &Parts) -> Scope {
        parts.headers.get(AUTHORIZATION).into()
    }
}

/// The name of one record in a store: a prefix, then a SHA-256 digest of the namespace, the
/// scope and the client's key.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct StoreKey {
    prefix: Arc<str>,
    digest: [u8; 32],
}

impl StoreKey {
    /// Derives the storage key of `client_key` under `prefix`, `namespace` and `scope`. Each
    /// part is length-prefixed, so no two different inputs are ever concatenated alike.
    pub fn derive(prefix: Arc<str>, namespace: &str, scope: &Scope, client_key: &[u8]) -> Self {
        let mut hasher = Sha256::new();
        hash_field(&mut hasher, prefix.as_bytes());
        hash_field(&mut hasher, namespace.as_bytes());
        match scope.as_bytes() {
            Some(scope) => {
                hasher.update([1]);
                hash_field(&mut hasher, scope);
            }
            None => hasher.update([0]),
        }
        hash_field(&mut hasher, client_key);
        Self {
            prefix,
            digest: hasher.finalize().into(),
        }
    }

    /// The prefix, as given to the layer or action.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The digest of namespace, scope and client key.
    pub fn digest(&self) -> &[u8; 32] {
        &self.digest
    }

    /// A short, stable name for logs: the first 8 bytes of the digest in hex. Never the raw key.
    pub fn short(&self) -> impl fmt::Display + '_ {
        Hex(&self.digest[..8])
    }
}

impl fmt::Display for StoreKey {
    /// `prefix` followed by the digest in lowercase hex: the Redis key of the record.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.prefix, Hex(&self.digest))
    }
}

impl fmt::Debug for StoreKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreKey({self})")
    }
}

struct Hex<'a>(&'a [u8]);

impl fmt::Display for Hex<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

fn hash_field(hasher: &mut Sha256, field: &[u8]) {
    hasher.update((field.len() as u64).to_be_bytes());
    hasher.update(field);
}

/// A digest of what makes two requests "the same payload". A key reused with another
/// fingerprint is refused with `422 Unprocessable Content`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint([u8; 32]);

impl Fingerprint {
    /// The fingerprint of one byte string (for example a canonical JSON rendering of the body).
    pub fn of(bytes: impl AsRef<[u8]>) -> Self {
        Self::builder().field(bytes).finish()
    }

    /// Starts a fingerprint over several length-prefixed fields.
    ///
    /// ```
    /// use idempotency_layer::key::Fingerprint;
    ///
    /// let a = Fingerprint::builder().field("ab").field("c").finish();
    /// let b = Fingerprint::builder().field("a").field("bc").finish();
    /// assert_ne!(a, b);
    /// ```
    pub fn builder() -> FingerprintBuilder {
        FingerprintBuilder(Sha256::new())
    }

    /// Rebuilds a fingerprint from its 32 bytes, as a store read them back.
    pub const fn from_bytes(bytes: [u8; 32]) -> Self {
        Self(bytes)
    }

    /// The fingerprint's 32 bytes.
    pub const fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({})", Hex(&self.0[..8]))
    }
}

/// Builds a [`Fingerprint`] from length-prefixed fields; see [`Fingerprint::builder`].
#[derive(Debug, Clone)]
pub struct FingerprintBuilder(Sha256);

impl FingerprintBuilder {
    /// Adds one field.
    pub fn field(mut self, bytes: impl AsRef<[u8]>) -> Self {
        hash_field(&mut self.0, bytes.as_ref());
        self
    }

    /// The fingerprint of the fields added so far.
    pub fn finish(self) -> Fingerprint {
        Fingerprint(self.0.finalize().into())
    }
}

/// Computes the [`Fingerprint`] of a request from its head and its whole body. Implemented for
/// every `Fn(&http::request::Parts, &bytes::Bytes) -> Fingerprint`.
pub trait FingerprintFn: Send + Sync + 'static {
    /// The fingerprint of the request whose head is `parts` and whose body is `body`.
    fn fingerprint(&self, parts: &Parts, body: &Bytes) -> Fingerprint;
}

impl<F> FingerprintFn for F
where
    F: Fn(&Parts, &Bytes) -> Fingerprint + Send + Sync + 'static,
{
    fn fingerprint(&self, parts: &Parts, body: &Bytes) -> Fingerprint {
        self(parts, body)
    }
}

/// The default fingerprint: method, path, query, `Content-Type` and body, each length-prefixed.
#[derive(Debug, Clone, Copy, Default)]
pub struct RequestFingerprint;

impl FingerprintFn for RequestFingerprint {
    fn fingerprint(&self, parts: &Parts, body: &Bytes) -> Fingerprint {
        let content_type = parts.headers.get(CONTENT_TYPE).map(HeaderValue::as_bytes);
        Fingerprint::builder()
            .field(parts.method.as_str())
            .field(parts.uri.path())
            .field(parts.uri.query().unwrap_or(""))
            .field(content_type.unwrap_or(b""))
            .field(body)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn bare_and_sf_string_forms_are_the_same_key() {
        assert_eq!(parse(b"abc-123").unwrap(), parse(b"\"abc-123\"").unwrap());
    }

    #[test]
    fn sf_string_parameters_are_ignored() {
        assert_eq!(parse(b"\"abc\";v=1").unwrap().as_ref(), b"abc");
        assert_eq!(parse(b"\"abc\"x"), Err(KeyError::BadString));
        assert_eq!(parse(b"\"abc\", \"def\""), Err(KeyError::BadString));
    }

    #[test]
    fn bounds_of_length() {
        assert_eq!(parse(&[b'a'; 255]).unwrap().len(), 255);
        assert_eq!(parse(&[b'a'; 256]), Err(KeyError::TooLong));
        assert_eq!(parse(b"\"\""), Err(KeyError::Empty));
    }

    #[test]
    fn bad_escapes_and_characters() {
        assert_eq!(parse(b"\"a\\nb\""), Err(KeyError::BadString));
        assert_eq!(parse(b"\"a\\"), Err(KeyError::BadString));
        assert_eq!(parse(b"\"a b\""), Err(KeyError::NotVisibleAscii));
        assert_eq!(parse(b"caf\xc3\xa9"), Err(KeyError::NotVisibleAscii));
        assert_eq!(parse(b"a\tb"), Err(KeyError::NotVisibleAscii));
    }

    #[test]
    fn two_headers_are_refused() {
        let name = HeaderName::from_static("idempotency-key");
        let mut headers = HeaderMap::new();
        headers.append(&name, HeaderValue::from_static("a"));
        assert_eq!(
            from_headers(&headers, &name).unwrap().as_deref(),
            Some(&b"a"[..])
        );
        headers.append(&name, HeaderValue::from_static("a"));
        assert_eq!(from_headers(&headers, &name), Err(KeyError::Duplicate));
    }

    #[test]
    fn scopes_keep_keys_apart() {
        let prefix: Arc<str> = Arc::from("p:");
        let alice = StoreKey::derive(prefix.clone(), "http", &"alice".into(), b"k");
        let bob = StoreKey::derive(prefix.clone(), "http", &"bob".into(), b"k");
        let global = StoreKey::derive(prefix.clone(), "http", &Scope::global(), b"k");
        let empty = StoreKey::derive(prefix, "http", &"".into(), b"k");
        assert_ne!(alice, bob);
        assert_ne!(global, empty);
        assert!(alice.to_string().starts_with("p:"));
        assert_eq!(alice.to_string().len(), 2 + 64);
    }

    proptest! {
        #[test]
        fn any_bytes_give_a_key_or_an_error(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            if let Ok(key) = parse(&bytes) {
                prop_assert!(!key.is_empty() && key.len() <= MAX_KEY_LEN);
                prop_assert!(key.iter().all(u8::is_ascii_graphic));
            }
        }

        #[test]
        fn every_valid_key_round_trips_through_both_forms(key in "[!-~]{1,255}") {
            let mut quoted = b"\"".to_vec();
            for b in key.bytes() {
                if b == b'"' || b == b'\\' {
                    quoted.push(b'\\');
                }
                quoted.push(b);
            }
            quoted.push(b'"');
            prop_assert_eq!(parse(&quoted).unwrap().into_owned(), key.as_bytes());
            if !key.starts_with('"') {
                prop_assert_eq!(parse(key.as_bytes()).unwrap().into_owned(), key.as_bytes());
            }
        }
    }
}
