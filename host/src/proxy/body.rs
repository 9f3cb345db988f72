//! The body Mediary answers a client with: its own (an error) or the upstream's, streamed.
//!
//! A streamed body that is being recorded copies what it passes (up to the record's body cap), and
//! before it hands over its last frame it writes the transaction's last stage to the spool and waits
//! for that write: a client that has the whole response has a recorded transaction.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::conn::RequestGuard;
use super::record::TxRecording;
use super::upstream;
use crate::recorder::spool::SpoolError;

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// A response body. It holds the request's [`RequestGuard`], so the connection counts the request as
/// finished only once its last byte is written (or the body is dropped).
#[derive(Debug)]
pub struct ProxyBody {
    kind: Kind,
    _guard: Option<RequestGuard>,
}

#[derive(Debug)]
enum Kind {
    Full(Option<Bytes>),
    Upstream(UpstreamBody),
}

impl ProxyBody {
    pub fn full(bytes: Bytes, guard: Option<RequestGuard>) -> Self {
        ProxyBody {
            kind: Kind::Full((!bytes.is_empty()).then_some(bytes)),
            _guard: guard,
        }
    }

    /// Streams an upstream body, failing it if the upstream goes quiet for `idle`. The body's
    /// connection goes back to the pool when it has been read to its end.
    pub fn upstream(
        body: upstream::Body,
        idle: Duration,
        guard: Option<RequestGuard>,
        recording: Option<Arc<TxRecording>>,
    ) -> Self {
        let up = UpstreamBody {
            body,
            idle,
            timer: None,
            armed: false,
            record: recording.map(|rec| {
                let limit = rec.response_capture_limit();
                Box::new(BodyRecord {
                    rec,
                    captured: Vec::new(),
                    limit,
                    cut: false,
                    waiting: None,
                    held: None,
                    done: false,
                })
            }),
        };
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
    /// Returns its connection to the pool at the end; closes it if abandoned.
    body: upstream::Body,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    armed: bool,
    /// Present while the transaction's record still waits for this body.
    record: Option<Box<BodyRecord>>,
}

type Flushing = Pin<Box<dyn Future<Output = Result<(), SpoolError>> + Send>>;
type Polled = Option<Result<Frame<Bytes>, BoxError>>;

/// The recording side of a streamed body.
struct BodyRecord {
    rec: Arc<TxRecording>,
    /// The body so far, up to `limit` bytes.
    captured: Vec<u8>,
    limit: usize,
    /// The body was longer than `limit`.
    cut: bool,
    /// The spool write of the last stage, awaited before `held` is handed over.
    waiting: Option<Flushing>,
    held: Option<Polled>,
    done: bool,
}

impl std::fmt::Debug for BodyRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyRecord")
            .field("captured", &self.captured.len())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl BodyRecord {
    fn capture(&mut self, data: &Bytes) {
        let room = self.limit.saturating_sub(self.captured.len());
        if data.len() > room {
            self.cut = true;
        }
        if room > 0 {
            if self.captured.capacity() == 0 {
                self.captured.reserve(data.len().min(room));
            }
            self.captured
                .extend_from_slice(&data[..data.len().min(room)]);
        }
    }

    /// Writes the last stage; returns the write to wait for, if any.
    fn finish(&mut self, error: Option<String>) -> Option<Flushing> {
        if self.done {
            return None;
        }
        self.done = true;
        let body = Bytes::from(std::mem::take(&mut self.captured));
        let seq = self.rec.primary_done(body, self.cut, error)?;
        let spool = Arc::clone(self.rec.spool());
        Some(Box::pin(async move { spool.written(seq).await }))
    }
}

impl Drop for BodyRecord {
    fn drop(&mut self) {
        // The client went away (or the connection failed) before the body was complete.
        let _ = self.finish(Some(
            "the client connection ended before the response was complete".into(),
        ));
    }
}

impl UpstreamBody {
    /// The next frame, recorded: the frame that ends the body is held back until the transaction's
    /// last stage is in the spool file.
    fn poll_recorded(&mut self, cx: &mut Context<'_>) -> Poll<Polled> {
        let Some(record) = &mut self.record else {
            return self.poll_upstream(cx);
        };
        if let Some(waiting) = &mut record.waiting {
            if waiting.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            record.waiting = None;
            let held = record.held.take().flatten();
            self.record = None;
            return Poll::Ready(held);
        }
        let polled = match self.poll_upstream(cx) {
            Poll::Ready(polled) => polled,
            Poll::Pending => return Poll::Pending,
        };
        let Some(record) = &mut self.record else {
            return Poll::Ready(polled);
        };
        let waiting = match &polled {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    record.capture(data);
                }
                if !self.body.is_end_stream() {
                    return Poll::Ready(polled);
                }
                record.finish(None)
            }
            None => record.finish(None),
            Some(Err(error)) => {
                let message = format!("the upstream's response body failed: {error}");
                // Nothing to wait for: the client's response is broken either way.
                drop(record.finish(Some(message)));
                self.record = None;
                return Poll::Ready(polled);
            }
        };
        match waiting {
            Some(waiting) => {
                record.waiting = Some(waiting);
                record.held = Some(polled);
                self.poll_recorded(cx)
            }
            None => {
                self.record = None;
                Poll::Ready(polled)
            }
        }
    }

    fn poll_upstream(&mut self, cx: &mut Context<'_>) -> Poll<Polled> {
        match Pin::new(&mut self.body).poll_frame(cx) {
            Poll::Ready(frame) => {
                self.armed = false;
                Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
            }
            Poll::Pending => {
                let deadline = Instant::now() + self.idle;
                let timer = self
                    .timer
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if !self.armed {
                    timer.as_mut().reset(deadline);
                    self.armed = true;
                }
                match timer.as_mut().poll(cx) {
                    Poll::Ready(()) => {
                        Poll::Ready(Some(Err(Box::new(UpstreamBodyTimeout(self.idle)))))
                    }
                    Poll::Pending => Poll::Pending,
                }
            }
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
            Kind::Upstream(up) => up.poll_recorded(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Full(bytes) => bytes.is_none(),
            // A recorded body is not over until its record is written.
            Kind::Upstream(up) => up.record.is_none() && up.body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Full(bytes) => SizeHint::with_exact(bytes.as_ref().map_or(0, |b| b.len() as u64)),
            Kind::Upstream(up) => up.body.size_hint(),
        }
    }
}
