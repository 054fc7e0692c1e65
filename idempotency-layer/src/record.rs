//! What the layer stores for a completed request, and its versioned binary encoding.
//!
//! Encoding, version 1 (all integers big-endian):
//!
//! ```text
//! u8  version = 1
//! u8  flags: bit 0 = the body was too large to keep (only status and headers are stored)
//! u16 status
//! u16 header count, then for each header:
//!     u16 name length, name, u32 value length, value
//! ... the body: every remaining byte
//! ```
//!
//! Decoding checks every length and every header, so corrupt bytes or an unknown version are a
//! [`StoreError::Corrupt`], never a panic.

use bytes::{BufMut, Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{StatusCode, response};

use crate::error::StoreError;

const VERSION: u8 = 1;
const FLAG_BODY_OMITTED: u8 = 1;

/// A completed response as the layer stores it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StoredResponse {
    pub(crate) status: StatusCode,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
    /// The response was larger than `max_response_body`: it was sent once but cannot be
    /// replayed.
    pub(crate) body_omitted: bool,
}

/// Headers that describe one connection or one message's framing, never replayed (RFC 9110
/// §7.6.1, and the framing headers that the replayed body recomputes).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        *name,
        header::CONNECTION
            | header::TRANSFER_ENCODING
            | header::CONTENT_LENGTH
            | header::TE
            | header::TRAILER
            | header::UPGRADE
            | header::PROXY_AUTHENTICATE
            | header::PROXY_AUTHORIZATION
    ) || name == "keep-alive"
        || name == "proxy-connection"
}

/// Whether `name` is listed in the message's `Connection` header, and so hop-by-hop too.
fn named_by_connection(headers: &HeaderMap, name: &HeaderName) -> bool {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|token| token.trim().eq_ignore_ascii_case(name.as_str()))
}

/// Encodes a response head and body; hop-by-hop and framing headers are left out.
pub(crate) fn encode(head: &response::Parts, body: &[u8], body_omitted: bool) -> Bytes {
    let has_connection = head.headers.contains_key(header::CONNECTION);
    // One pass over the headers: the buffer is sized for all of them (the few left out cost
    // a few spare bytes), so it does not grow while they are written.
    let size: usize = head
        .headers
        .iter()
        .map(|(n, v)| 6 + n.as_str().len() + v.len())
        .sum();
    let mut out = BytesMut::with_capacity(6 + size + body.len());
    out.put_u8(VERSION);
    out.put_u8(if body_omitted { FLAG_BODY_OMITTED } else { 0 });
    out.put_u16(head.status.as_u16());
    let count_at = out.len();
    out.put_u16(0);
    let mut count: u16 = 0;
    for (name, value) in &head.headers {
        if is_hop_by_hop(name) || (has_connection && named_by_connection(&head.headers, name)) {
            continue;
        }
        // A response never has 65 536 headers; past that, the rest are not stored.
        let Some(next) = count.checked_add(1) else {
            break;
        };
        count = next;
        out.put_u16(name.as_str().len() as u16);
        out.put_slice(name.as_str().as_bytes());
        out.put_u32(value.len() as u32);
        out.put_slice(value.as_bytes());
    }
    out[count_at..count_at + 2].copy_from_slice(&count.to_be_bytes());
    out.put_slice(body);
    out.freeze()
}

/// Decodes what [`encode`] wrote. The body and header values share `bytes`' buffer.
pub(crate) fn decode(bytes: Bytes) -> Result<StoredResponse, StoreError> {
    let mut reader = Reader { bytes, at: 0 };
    let version = reader.u8()?;
    if version != VERSION {
        return Err(corrupt(format!("unknown record version {version}")));
    }
    let flags = reader.u8()?;
    let status = StatusCode::from_u16(reader.u16()?)
        .map_err(|_| corrupt("invalid status code".to_owned()))?;
    let count = reader.u16()?;
    // One slot more than stored: a replay adds its `idempotent-replayed` marker.
    let mut headers = HeaderMap::with_capacity(usize::from(count) + 1);
    for _ in 0..count {
        let len = usize::from(reader.u16()?);
        let name = HeaderName::from_bytes(reader.slice(len)?)
            .map_err(|_| corrupt("invalid header name".to_owned()))?;
        let len = reader.u32()? as usize;
        let value = HeaderValue::from_maybe_shared(reader.take(len)?)
            .map_err(|_| corrupt("invalid header value".to_owned()))?;
        headers.append(name, value);
    }
    Ok(StoredResponse {
        status,
        headers,
        body: reader.rest(),
        body_omitted: flags & FLAG_BODY_OMITTED != 0,
    })
}

fn corrupt(what: String) -> StoreError {
    StoreError::Corrupt(what)
}

struct Reader {
    bytes: Bytes,
    at: usize,
}

impl Reader {
    /// The next `len` bytes, borrowed: reading integers and names this way spares the shared
    /// buffer's reference count the increment and decrement of a [`Bytes`] handle.
    fn slice(&mut self, len: usize) -> Result<&[u8], StoreError> {
        let start = self.at;
        let end = start
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or_else(|| corrupt("record is truncated".to_owned()))?;
        self.at = end;
        Ok(&self.bytes[start..end])
    }

    /// The next `len` bytes, sharing the record's buffer.
    fn take(&mut self, len: usize) -> Result<Bytes, StoreError> {
        let start = self.at;
        self.slice(len)?;
        Ok(self.bytes.slice(start..self.at))
    }

    fn array<const N: usize>(&mut self) -> Result<[u8; N], StoreError> {
        let mut out = [0; N];
        out.copy_from_slice(self.slice(N)?);
        Ok(out)
    }

    fn u8(&mut self) -> Result<u8, StoreError> {
        self.array::<1>().map(|[b]| b)
    }

    fn u16(&mut self) -> Result<u16, StoreError> {
        self.array().map(u16::from_be_bytes)
    }

    fn u32(&mut self) -> Result<u32, StoreError> {
        self.array().map(u32::from_be_bytes)
    }

    fn rest(self) -> Bytes {
        self.bytes.slice(self.at..)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn head(status: u16, headers: &[(&'static str, &'static str)]) -> response::Parts {
        let mut builder = http::Response::builder().status(status);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    #[test]
    fn round_trips_status_headers_in_order_and_body() {
        let head = head(
            201,
            &[
                ("content-type", "application/json"),
                ("set-cookie", "a=1"),
                ("x-request-id", "r1"),
                ("set-cookie", "b=2"),
            ],
        );
        let decoded = decode(encode(&head, b"{\"id\":1}", false)).unwrap();
        assert_eq!(decoded.status, 201);
        assert_eq!(decoded.headers, head.headers);
        let cookies: Vec<_> = decoded.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(decoded.body, "{\"id\":1}");
        assert!(!decoded.body_omitted);
    }

    #[test]
    fn leaves_out_hop_by_hop_and_framing_headers() {
        let head = head(
            200,
            &[
                ("connection", "x-hop"),
                ("x-hop", "1"),
                ("keep-alive", "timeout=5"),
                ("transfer-encoding", "chunked"),
                ("content-length", "2"),
                ("x-kept", "yes"),
            ],
        );
        let decoded = decode(encode(&head, b"ok", true)).unwrap();
        assert_eq!(decoded.headers.len(), 1);
        assert_eq!(decoded.headers["x-kept"], "yes");
        assert!(decoded.body_omitted);
    }

    #[test]
    fn unknown_version_is_corrupt() {
        let mut bytes = encode(&head(200, &[]), b"", false).to_vec();
        bytes[0] = 9;
        assert!(matches!(decode(bytes.into()), Err(StoreError::Corrupt(_))));
    }

    proptest! {
        #[test]
        fn any_bytes_decode_or_fail_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = decode(Bytes::from(bytes));
        }

        #[test]
        fn every_truncation_of_a_record_is_corrupt(cut in 0usize..40) {
            let encoded = encode(&head(200, &[("x-a", "b"), ("x-c", "d")]), b"", false);
            prop_assume!(cut < encoded.len());
            prop_assert!(decode(encoded.slice(..cut)).is_err());
        }
    }
}
