//! The response future of [`Idempotency`](crate::Idempotency).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http::Response;
use pin_project_lite::pin_project;
use tokio_util::task::TaskTracker;

use crate::body::ResponseBody;

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

type Output<B, E> = Result<Response<ResponseBody<B>>, E>;

pin_project! {
    /// Response future of [`Idempotency`](crate::Idempotency).
    pub struct ResponseFuture<F, B: 'static, E: 'static> {
        #[pin]
        kind: Kind<F, B, E>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, B: 'static, E: 'static> {
        Passthrough { #[pin] future: F },
        Ready { response: Option<Response<ResponseBody<B>>> },
        Protected { work: Detachable<Output<B, E>> },
    }
}

impl<F, B: 'static, E: 'static> ResponseFuture<F, B, E> {
    pub(crate) fn passthrough(future: F) -> Self {
        Self {
            kind: Kind::Passthrough { future },
        }
    }

    pub(crate) fn ready(response: Response<ResponseBody<B>>) -> Self {
        Self {
            kind: Kind::Ready {
                response: Some(response),
            },
        }
    }

    pub(crate) fn protected(work: BoxFuture<Output<B, E>>, tracker: &TaskTracker) -> Self {
        Self {
            kind: Kind::Protected {
                work: Detachable {
                    work: Some(work),
                    tracker: tracker.clone(),
                    polling: false,
                },
            },
        }
    }
}

impl<F, B: 'static, E: 'static> Future for ResponseFuture<F, B, E>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Output<B, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Passthrough { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(ResponseBody::stream)))
            }
            KindProj::Ready { response } => Poll::Ready(Ok(response
                .take()
                .expect("ResponseFuture polled after completion"))),
            KindProj::Protected { work } => work.poll(cx),
        }
    }
}

impl<F, B: 'static, E: 'static> fmt::Debug for ResponseFuture<F, B, E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

/// Protected work that outlives its caller: dropped before it finished (the client went away),
/// it goes on as a task of the layer's tracker, so the handler completes and its response is
/// stored for the retry.
struct Detachable<T: 'static> {
    work: Option<BoxFuture<T>>,
    tracker: TaskTracker,
    /// Set while `work` is polled: still set on drop, the poll panicked (and was caught).
    polling: bool,
}

impl<T: 'static> Detachable<T> {
    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<T> {
        let work = self
            .work
            .as_mut()
            .expect("ResponseFuture polled after completion");
        self.polling = true;
        let output = work.as_mut().poll(cx);
        self.polling = false;
        let output = ready!(output);
        self.work = None;
        Poll::Ready(output)
    }
}

impl<T: 'static> Drop for Detachable<T> {
    fn drop(&mut self) {
        let Some(work) = self.work.take() else {
            return;
        };
        if self.polling || std::thread::panicking() {
            // The handler itself panicked: polling it again would panic again.
            return;
        }
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                tracing::debug!("idempotency: client went away; its handler goes on detached");
                self.tracker.spawn_on(
                    async move {
                        work.await;
                    },
                    &runtime,
                );
            }
            Err(_) => tracing::warn!(
                "idempotency: a protected request was dropped outside a Tokio runtime; its \
                 handler stops and its key is freed when the lease expires"
            ),
        }
    }
}
