//! The request and response bodies the layer hands on.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// The request body the inner service receives: the original stream when the layer let the
    /// request pass, or the bytes it already read to fingerprint the request.
    pub struct RequestBody<B> {
        #[pin]
        kind: RequestKind<B>,
    }
}

pin_project! {
    #[project = RequestKindProj]
    enum RequestKind<B> {
        Passthrough { #[pin] inner: B },
        Buffered { held: Held },
    }
}

impl<B> RequestBody<B> {
    pub(crate) fn passthrough(inner: B) -> Self {
        Self {
            kind: RequestKind::Passthrough { inner },
        }
    }

    pub(crate) fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: RequestKind::Buffered {
                held: Held::new(data, trailers),
            },
        }
    }
}

impl<B> fmt::Debug for RequestBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RequestBody").finish_non_exhaustive()
    }
}

impl<B> Body for RequestBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            RequestKindProj::Passthrough { inner } => inner.poll_frame(cx),
            RequestKindProj::Buffered { held } => Poll::Ready(held.next().map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            RequestKind::Passthrough { inner } => inner.is_end_stream(),
            RequestKind::Buffered { held } => held.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            RequestKind::Passthrough { inner } => inner.size_hint(),
            RequestKind::Buffered { held } => held.size_hint(),
        }
    }
}

pin_project! {
    /// The response body the layer answers with: the inner service's own stream, or bytes the
    /// layer holds (a collected, replayed or problem response).
    pub struct ResponseBody<B> {
        #[pin]
        kind: ResponseKind<B>,
    }
}

pin_project! {
    #[project = ResponseKindProj]
    enum ResponseKind<B> {
        Stream { #[pin] inner: B },
        // The rest of the inner body after `prefix`, the bytes the layer read before the body
        // outgrew `max_response_body`.
        Remainder { prefix: Option<Bytes>, inner: Pin<Box<B>> },
        Full { held: Held },
    }
}

impl<B> ResponseBody<B> {
    pub(crate) fn stream(inner: B) -> Self {
        Self {
            kind: ResponseKind::Stream { inner },
        }
    }

    pub(crate) fn remainder(prefix: Bytes, inner: Pin<Box<B>>) -> Self {
        Self {
            kind: ResponseKind::Remainder {
                prefix: Some(prefix).filter(|prefix| !prefix.is_empty()),
                inner,
            },
        }
    }

    pub(crate) fn full(data: Bytes) -> Self {
        Self::with_trailers(data, None)
    }

    pub(crate) fn with_trailers(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            kind: ResponseKind::Full {
                held: Held::new(data, trailers),
            },
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseBody").finish_non_exhaustive()
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        match self.project().kind.project() {
            ResponseKindProj::Stream { inner } => inner.poll_frame(cx),
            ResponseKindProj::Remainder { prefix, inner } => match prefix.take() {
                Some(prefix) => Poll::Ready(Some(Ok(Frame::data(prefix)))),
                None => inner.as_mut().poll_frame(cx),
            },
            ResponseKindProj::Full { held } => Poll::Ready(held.next().map(Ok)),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            ResponseKind::Stream { inner } => inner.is_end_stream(),
            ResponseKind::Remainder { prefix, inner } => prefix.is_none() && inner.is_end_stream(),
            ResponseKind::Full { held } => held.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            ResponseKind::Stream { inner } => inner.size_hint(),
            ResponseKind::Remainder { prefix, inner } => {
                let prefix = prefix.as_ref().map_or(0, |p| p.len() as u64);
                let inner = inner.size_hint();
                let mut hint = SizeHint::new();
                hint.set_lower(inner.lower() + prefix);
                if let Some(upper) = inner.upper() {
                    hint.set_upper(upper + prefix);
                }
                hint
            }
            ResponseKind::Full { held } => held.size_hint(),
        }
    }
}

/// A body held whole: its data, then its trailers.
struct Held {
    data: Option<Bytes>,
    trailers: Option<HeaderMap>,
}

impl Held {
    fn new(data: Bytes, trailers: Option<HeaderMap>) -> Self {
        Self {
            data: Some(data).filter(|data| !data.is_empty()),
            trailers,
        }
    }

    fn next(&mut self) -> Option<Frame<Bytes>> {
        self.data
            .take()
            .map(Frame::data)
            .or_else(|| self.trailers.take().map(Frame::trailers))
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |data| data.len() as u64))
    }
}
