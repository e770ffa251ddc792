//! The request body the proxy sends upstream: the downstream's, streamed as it comes, optionally
//! teed for a mirror copy; or a buffered body (a mirror copy, a retried empty request).
//!
//! The tee never holds the primary back: each frame goes upstream as soon as it arrives, and
//! the tee only keeps another reference to its bytes (`Bytes` clones share the buffer). When the
//! body has ended within the limit the copy is handed over whole; past the limit the tee lets go
//! of what it kept and reports [`Teed::TooLarge`]; a body that fails or is dropped before its
//! end reports [`Teed::Aborted`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use tokio::sync::oneshot;

/// What became of a teed body.
#[derive(Debug)]
pub enum Teed {
    /// The whole body, and its trailers.
    Complete {
        /// The bytes.
        body: Bytes,
        /// Trailers, if the body had them (gRPC).
        trailers: Option<HeaderMap>,
    },
    /// The body exceeded the limit.
    TooLarge,
    /// The body failed or was dropped before its end.
    Aborted,
}

/// Keeps the frames of a body up to a limit, and hands them over when it ends.
#[derive(Debug)]
pub struct Tee {
    limit: usize,
    len: usize,
    chunks: Vec<Bytes>,
    trailers: Option<HeaderMap>,
    tx: Option<oneshot::Sender<Teed>>,
}

impl Tee {
    /// A tee keeping at most `limit` bytes; the receiver gets the outcome.
    pub fn new(limit: usize) -> (Tee, oneshot::Receiver<Teed>) {
        let (tx, rx) = oneshot::channel();
        let tee = Tee {
            limit,
            len: 0,
            chunks: Vec::new(),
            trailers: None,
            tx: Some(tx),
        };
        (tee, rx)
    }

    fn finish(&mut self, outcome: Teed) {
        if let Some(tx) = self.tx.take() {
            // The mirror task may be gone (shutdown): nothing to tell then.
            let _ = tx.send(outcome);
        }
        self.chunks = Vec::new();
    }

    /// Sees one frame of the body.
    fn frame(&mut self, frame: &Frame<Bytes>) {
        if self.tx.is_none() {
            return;
        }
        if let Some(data) = frame.data_ref() {
            self.len += data.len();
            if self.len > self.limit {
                self.finish(Teed::TooLarge);
                return;
            }
            if !data.is_empty() {
                self.chunks.push(data.clone());
            }
        } else if let Some(trailers) = frame.trailers_ref() {
            self.trailers = Some(trailers.clone());
        }
    }

    /// The body ended: hands the copy over.
    fn end(&mut self) {
        if self.tx.is_none() {
            return;
        }
        let body = match self.chunks.len() {
            0 => Bytes::new(),
            1 => self.chunks[0].clone(),
            _ => {
                let mut all = BytesMut::with_capacity(self.len);
                for c in &self.chunks {
                    all.extend_from_slice(c);
                }
                all.freeze()
            }
        };
        let trailers = self.trailers.take();
        self.finish(Teed::Complete { body, trailers });
    }
}

impl Drop for Tee {
    fn drop(&mut self) {
        self.finish(Teed::Aborted);
    }
}

/// A request body going upstream.
#[derive(Debug)]
pub struct RequestBody {
    kind: Kind,
}

#[derive(Debug)]
enum Kind {
    Stream(Incoming),
    Teed(Incoming, Tee),
    Buffered {
        data: Option<Bytes>,
        trailers: Option<HeaderMap>,
    },
}

impl RequestBody {
    /// The downstream's body, streamed.
    pub fn stream(body: Incoming) -> RequestBody {
        RequestBody {
            kind: Kind::Stream(body),
        }
    }

    /// The downstream's body, streamed and teed.
    pub fn teed(body: Incoming, tee: Tee) -> RequestBody {
        let mut tee = tee;
        if body.is_end_stream() {
            tee.end();
        }
        RequestBody {
            kind: Kind::Teed(body, tee),
        }
    }

    /// A body held in memory (with trailers, if any).
    pub fn buffered(data: Bytes, trailers: Option<HeaderMap>) -> RequestBody {
        RequestBody {
            kind: Kind::Buffered {
                data: (!data.is_empty()).then_some(data),
                trailers,
            },
        }
    }

    /// No body.
    pub fn empty() -> RequestBody {
        RequestBody::buffered(Bytes::new(), None)
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match &mut self.kind {
            Kind::Stream(body) => Pin::new(body).poll_frame(cx),
            Kind::Teed(body, tee) => {
                let polled = Pin::new(&mut *body).poll_frame(cx);
                match &polled {
                    Poll::Ready(Some(Ok(frame))) => {
                        tee.frame(frame);
                        // hyper may not poll again once the body says it has ended.
                        if body.is_end_stream() {
                            tee.end();
                        }
                    }
                    Poll::Ready(None) => tee.end(),
                    Poll::Ready(Some(Err(_))) => tee.finish(Teed::Aborted),
                    Poll::Pending => {}
                }
                polled
            }
            Kind::Buffered { data, trailers } => Poll::Ready(
                data.take()
                    .map(|d| Ok(Frame::data(d)))
                    .or_else(|| trailers.take().map(|t| Ok(Frame::trailers(t)))),
            ),
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.kind {
            Kind::Stream(body) | Kind::Teed(body, _) => body.is_end_stream(),
            Kind::Buffered { data, trailers } => data.is_none() && trailers.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.kind {
            Kind::Stream(body) | Kind::Teed(body, _) => body.size_hint(),
            Kind::Buffered { data, .. } => {
                SizeHint::with_exact(data.as_ref().map_or(0, |d| d.len() as u64))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(s: &'static str) -> Frame<Bytes> {
        Frame::data(Bytes::from_static(s.as_bytes()))
    }

    #[test]
    fn a_body_within_the_limit_is_handed_over_whole_with_its_trailers() {
        let (mut tee, mut rx) = Tee::new(10);
        tee.frame(&data("hello "));
        tee.frame(&data("you"));
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        tee.frame(&Frame::trailers(trailers));
        assert!(rx.try_recv().is_err(), "nothing before the end");
        tee.end();
        match rx.try_recv().unwrap() {
            Teed::Complete { body, trailers } => {
                assert_eq!(body, "hello you");
                assert_eq!(trailers.unwrap()["grpc-status"], "0");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_body_over_the_limit_is_too_large_and_let_go() {
        let (mut tee, mut rx) = Tee::new(8);
        tee.frame(&data("12345"));
        tee.frame(&data("6789"));
        assert!(tee.chunks.is_empty(), "kept bytes are released at once");
        tee.frame(&data("more"));
        tee.end();
        assert!(matches!(rx.try_recv().unwrap(), Teed::TooLarge));
        // Exactly at the limit is fine.
        let (mut tee, mut rx) = Tee::new(8);
        tee.frame(&data("12345678"));
        tee.end();
        assert!(matches!(rx.try_recv().unwrap(), Teed::Complete { .. }));
    }

    #[test]
    fn a_body_dropped_before_its_end_is_aborted() {
        let (mut tee, mut rx) = Tee::new(8);
        tee.frame(&data("123"));
        drop(tee);
        assert!(matches!(rx.try_recv().unwrap(), Teed::Aborted));
    }

    #[tokio::test]
    async fn a_buffered_body_yields_its_data_then_trailers() {
        use http_body_util::BodyExt;
        let mut trailers = HeaderMap::new();
        trailers.insert("x", "1".parse().unwrap());
        let body = RequestBody::buffered(Bytes::from_static(b"abc"), Some(trailers));
        assert_eq!(body.size_hint().exact(), Some(3));
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["x"], "1");
        assert_eq!(collected.to_bytes(), "abc");
        assert!(RequestBody::empty().is_end_stream());
    }
}
