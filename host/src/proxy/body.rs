//! The body Mediary answers a client with: its own (an error) or the upstream's, streamed.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::time::{Instant, Sleep};

use super::conn::RequestGuard;
use super::upstream::Lease;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body. It holds the request's [`RequestGuard`], so the connection counts the request as
/// finished only once its last byte is written (or the body is dropped).
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    _guard: RequestGuard,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl ProxyBody {
    pub fn full(bytes: Bytes, guard: RequestGuard) -> Self {
        ProxyBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            _guard: guard,
        }
    }

    /// Streams an upstream body, failing it if the upstream goes quiet for `idle`. The connection's
    /// lease goes back to the pool when the body has been read to its end.
    pub fn upstream(body: Incoming, lease: Lease, idle: Duration, guard: RequestGuard) -> Self {
        let mut up = UpstreamBody {
            body,
            lease: Some(lease),
            idle,
            timer: None,
            armed: false,
        };
        up.release_if_done();
        ProxyBody {
            kind: Kind::Upstream(up),
            _guard: guard,
        }
    }
}

/// The upstream's body with a read-inactivity deadline; the timer is only allocated if the body ever
/// has to wait.
#[derive(Debug)]
struct UpstreamBody {
    body: Incoming,
    /// The connection the body comes on; returned to the pool at the end, closed if abandoned.
    lease: Option<Lease>,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
}

impl UpstreamBody {
    fn release_if_done(&mut self) {
        if self.body.is_end_stream()
            && let Some(lease) = self.lease.take()
        {
            lease.release();
        }
    }
}

/// The upstream stopped sending its body.
#[derive(Debug, thiserror::Error)]
#[error("the upstream sent no body data for {0:?}")]
pub struct UpstreamBodyTimeout(Duration);

impl Body for ProxyBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match &mut self.get_mut().kind {
            Kind::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Kind::Upstream(up) => match Pin::new(&mut up.body).poll_frame(cx) {
                Poll::Ready(frame) => {
                    up.armed = false;
                    if matches!(frame, None | Some(Ok(_))) {
                        up.release_if_done();
                    }
                    Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
                }
                Poll::Pending => {
                    let deadline = Instant::now() + up.idle;
                    let timer = up
                        .timer
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if !up.armed {
                        timer.as_mut().reset(deadline);
                        up.armed = true;
                    }
                    match timer.as_mut().poll(cx) {
                        Poll::Ready(()) => {
                            Poll::Ready(Some(Err(Box::new(UpstreamBodyTimeout(up.idle)))))
                        }
                        Poll::Pending => Poll::Pending,
                    }
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            Kind::Upstream(up) => up.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(up) => up.body.size_hint(),
        }
    }
}
