//! The layer's refusals, as RFC 9457 `application/problem+json` responses.
//!
//! Every refusal carries `type`, `title`, `status` and `detail`; the `type` of each is this page
//! with the anchor below. 409 and 503 also carry a `Retry-After` header.
//!
//! # key-missing
//! `400 Bad Request`: the route requires an `Idempotency-Key` and the request has none.
//!
//! # key-malformed
//! `400 Bad Request`: the key is empty, longer than 255 characters, not visible ASCII, a bad
//! Structured Field string, or the header is present twice.
//!
//! # body-unreadable
//! `400 Bad Request`: the request body failed while the layer read it (the client went away).
//!
//! # body-too-large
//! `413 Content Too Large`: the body is larger than `max_request_body`; the handler did not run.
//!
//! # key-reused
//! `422 Unprocessable Content`: the key was already used with another payload (method, path,
//! query, content type or body).
//!
//! # in-progress
//! `409 Conflict`: a request with this key is still being processed. Retry after `Retry-After`.
//!
//! # response-not-stored
//! `410 Gone`: the first request with this key ran, but its response was larger than
//! `max_response_body`, so it was sent once and cannot be replayed. The operation is not run
//! again; the member `original_status` holds the status it answered with.
//!
//! # response-failed
//! `500 Internal Server Error`: the handler's response body failed while the layer read it. The
//! key was released: a retry runs the handler again.
//!
//! # store-unavailable
//! `503 Service Unavailable`: the idempotency store did not answer, is full, or holds a corrupt
//! record for this key. Retry after `Retry-After`.
//!
//! # overloaded
//! `503 Service Unavailable`: the work left running by clients that disconnected is at its
//! bound. Retry after `Retry-After`.

use std::fmt::Write as _;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CONTENT_TYPE, HeaderValue, RETRY_AFTER};
use http::{Response, StatusCode};

use crate::body::ResponseBody;
use crate::key::KeyError;

const TYPE_BASE: &str = "https://docs.rs/idempotency-layer/latest/idempotency_layer/problem/#";

/// The media type of every refusal.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(Debug, Clone, Copy)]
pub(crate) enum Problem {
    KeyMissing,
    KeyMalformed(KeyError),
    BodyUnreadable,
    BodyTooLarge { limit: usize },
    KeyReused,
    InProgress { retry_after: Duration },
    ResponseNotStored { original_status: StatusCode },
    ResponseFailed,
    StoreUnavailable { retry_after: Duration },
    Overloaded { retry_after: Duration },
}

impl Problem {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::KeyMissing => (
                StatusCode::BAD_REQUEST,
                "key-missing",
                "Idempotency-Key is missing",
            ),
            Self::KeyMalformed(_) => (
                StatusCode::BAD_REQUEST,
                "key-malformed",
                "Idempotency-Key is malformed",
            ),
            Self::BodyUnreadable => (
                StatusCode::BAD_REQUEST,
                "body-unreadable",
                "Request body could not be read",
            ),
            Self::BodyTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "body-too-large",
                "Request body is too large",
            ),
            Self::KeyReused => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "key-reused",
                "Idempotency-Key is already used",
            ),
            Self::InProgress { .. } => (
                StatusCode::CONFLICT,
                "in-progress",
                "A request with this Idempotency-Key is being processed",
            ),
            Self::ResponseNotStored { .. } => (
                StatusCode::GONE,
                "response-not-stored",
                "The response to this Idempotency-Key was not stored",
            ),
            Self::ResponseFailed => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "response-failed",
                "The response body failed",
            ),
            Self::StoreUnavailable { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store-unavailable",
                "Idempotency store is unavailable",
            ),
            Self::Overloaded { .. } => (
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "Too many requests are being processed",
            ),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::KeyMissing => "This operation requires an Idempotency-Key header.".to_owned(),
            Self::KeyMalformed(error) => format!(
                "{error}. A key is 1 to 255 visible ASCII characters, sent once, bare or as a \
                 Structured Field string."
            ),
            Self::BodyUnreadable => "The request body ended with an error.".to_owned(),
            Self::BodyTooLarge { limit } => {
                format!("Requests with an Idempotency-Key are limited to {limit} bytes of body.")
            }
            Self::KeyReused => "This Idempotency-Key was used with a different request payload; \
                 use a new key for a new operation."
                .to_owned(),
            Self::InProgress { .. } => "The first request with this Idempotency-Key has not \
                 finished; retry after the time in Retry-After."
                .to_owned(),
            Self::ResponseNotStored { .. } => "The operation ran once, but its response was too \
                 large to be stored and replayed. It will not run again."
                .to_owned(),
            Self::ResponseFailed => "The response body failed before it was complete; the \
                 Idempotency-Key was released and a retry runs the operation again."
                .to_owned(),
            Self::StoreUnavailable { .. } => "The idempotency store could not be used, so the \
                 request was not processed. Retry after the time in Retry-After."
                .to_owned(),
            Self::Overloaded { .. } => "Too much work is in flight to accept this request \
                 safely. Retry after the time in Retry-After."
                .to_owned(),
        }
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::InProgress { retry_after }
            | Self::StoreUnavailable { retry_after }
            | Self::Overloaded { retry_after } => Some(*retry_after),
            _ => None,
        }
    }

    /// The problem as a response.
    pub(crate) fn into_response<B>(self) -> Response<ResponseBody<B>> {
        let (status, anchor, title) = self.parts();
        let mut json = String::with_capacity(256);
        let _ = write!(
            json,
            r#"{{"type":"{TYPE_BASE}{anchor}","title":"{}","status":{},"detail":"{}""#,
            escape(title),
            status.as_u16(),
            escape(&self.detail()),
        );
        if let Self::ResponseNotStored { original_status } = self {
            let _ = write!(json, r#","original_status":{}"#, original_status.as_u16());
        }
        json.push('}');
        let mut response = Response::new(ResponseBody::full(Bytes::from(json)));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
        if let Some(retry_after) = self.retry_after() {
            headers.insert(RETRY_AFTER, retry_after_seconds(retry_after));
        }
        response
    }
}

/// `Retry-After` in whole seconds, rounded up, at least 1.
fn retry_after_seconds(retry_after: Duration) -> HeaderValue {
    let seconds = retry_after
        .as_secs()
        .saturating_add(u64::from(retry_after.subsec_nanos() > 0))
        .max(1);
    HeaderValue::from(seconds)
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    async fn json_of(problem: Problem) -> (Response<()>, serde_json::Value) {
        let (parts, body) = problem
            .into_response::<http_body_util::Empty<Bytes>>()
            .into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        (
            Response::from_parts(parts, ()),
            serde_json::from_slice(&bytes).unwrap(),
        )
    }

    #[tokio::test]
    async fn every_problem_is_valid_problem_json() {
        let all = [
            Problem::KeyMissing,
            Problem::KeyMalformed(KeyError::Duplicate),
            Problem::BodyUnreadable,
            Problem::BodyTooLarge { limit: 10 },
            Problem::KeyReused,
            Problem::InProgress {
                retry_after: Duration::from_millis(1500),
            },
            Problem::ResponseNotStored {
                original_status: StatusCode::CREATED,
            },
            Problem::ResponseFailed,
            Problem::StoreUnavailable {
                retry_after: Duration::from_secs(1),
            },
            Problem::Overloaded {
                retry_after: Duration::ZERO,
            },
        ];
        for problem in all {
            let (response, json) = json_of(problem).await;
            assert_eq!(response.headers()[CONTENT_TYPE], PROBLEM_JSON);
            assert_eq!(json["status"], response.status().as_u16());
            assert!(json["type"].as_str().unwrap().starts_with(TYPE_BASE));
            assert!(!json["title"].as_str().unwrap().is_empty());
            assert!(!json["detail"].as_str().unwrap().is_empty());
        }
    }

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_seconds(Duration::from_millis(1500)), "2");
        assert_eq!(retry_after_seconds(Duration::ZERO), "1");
        assert_eq!(retry_after_seconds(Duration::from_secs(3)), "3");
    }
}
