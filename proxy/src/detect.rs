//! Protocol detection from the client's first bytes, and [`Prefixed`], the stream that hands the
//! bytes read for detection back to whoever parses the connection next.
//!
//! Undeclared ports: the HTTP/2 prior-knowledge preface means HTTP/2, a known method followed by
//! a space means HTTP/1, anything else is opaque TCP. A client that sends nothing within the
//! detection window is taken for a server-speaks-first protocol and goes opaque at once.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::time::Instant;

/// The HTTP/2 client connection preface.
pub const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Methods that start an HTTP/1 request line.
const METHODS: [&[u8]; 9] = [
    b"GET ",
    b"POST ",
    b"PUT ",
    b"DELETE ",
    b"HEAD ",
    b"OPTIONS ",
    b"PATCH ",
    b"CONNECT ",
    b"TRACE ",
];

/// What a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detected {
    /// HTTP/1.x.
    Http1,
    /// HTTP/2 with prior knowledge.
    Http2,
    /// Anything else.
    Tcp,
}

/// Classifies the first bytes of an undeclared port; `None` while more bytes could decide.
pub fn classify(buf: &[u8]) -> Option<Detected> {
    if buf.is_empty() {
        return None;
    }
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        return Some(Detected::Http2);
    }
    let mut undecided = H2_PREFACE.starts_with(buf);
    for method in METHODS {
        if buf.starts_with(method) {
            return Some(Detected::Http1);
        }
        undecided |= method.starts_with(buf);
    }
    if undecided { None } else { Some(Detected::Tcp) }
}

/// Classifies the first bytes of a port declared HTTP: the HTTP/2 preface, else HTTP/1 (whose
/// parser then answers garbage with 400).
pub fn classify_http(buf: &[u8]) -> Option<Detected> {
    if buf.len() >= H2_PREFACE.len() && buf.starts_with(H2_PREFACE) {
        Some(Detected::Http2)
    } else if H2_PREFACE.starts_with(buf) {
        None
    } else {
        Some(Detected::Http1)
    }
}

/// Reads from `io` into `buf` until `classify` decides, the peer stops sending (EOF) or
/// `window` passes; the undecided cases give `fallback`.
pub async fn detect<R: AsyncRead + Unpin>(
    io: &mut R,
    buf: &mut BytesMut,
    window: Duration,
    classify: fn(&[u8]) -> Option<Detected>,
    fallback: Detected,
) -> io::Result<Detected> {
    let deadline = Instant::now() + window;
    loop {
        if let Some(found) = classify(buf) {
            return Ok(found);
        }
        match tokio::time::timeout_at(deadline, io.read_buf(buf)).await {
            Ok(Ok(0)) | Err(_) => return Ok(fallback),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e),
        }
        if buf.len() > 64 * 1024 {
            return Ok(fallback);
        }
    }
}

/// A stream whose first reads return `prefix`.
#[derive(Debug)]
pub struct Prefixed<T> {
    prefix: BytesMut,
    inner: T,
}

impl<T> Prefixed<T> {
    /// `inner`, after `prefix`.
    pub fn new(prefix: BytesMut, inner: T) -> Self {
        Prefixed { prefix, inner }
    }

    /// The wrapped stream.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Prefixed<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(buf.remaining());
            buf.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            if self.prefix.is_empty() {
                // Give the detection buffer back for the rest of the connection's life.
                self.prefix = BytesMut::new();
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

crate::stream::write_through_to_inner!(Prefixed);

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[test]
    fn classifies_first_bytes() {
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Some(Detected::Http1));
        assert_eq!(classify(b"OPTIONS "), Some(Detected::Http1));
        assert_eq!(classify(H2_PREFACE), Some(Detected::Http2));
        assert_eq!(classify(b"PRI * HTTP/2"), None);
        assert_eq!(classify(b"PO"), None);
        assert_eq!(classify(b"P"), None);
        assert_eq!(classify(b"\x16\x03\x01\x02\x00"), Some(Detected::Tcp));
        assert_eq!(classify(b"GETX"), Some(Detected::Tcp));
        assert_eq!(
            classify(b"PRI * HTTP/1.1\r\n\r\nxx\r\n\r\n"),
            Some(Detected::Tcp)
        );
        assert_eq!(classify_http(b"GARBAGE"), Some(Detected::Http1));
        assert_eq!(classify_http(b"PRI"), None);
    }

    #[tokio::test]
    async fn silent_or_partial_clients_go_opaque_after_the_window() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let mut buf = BytesMut::new();
        let start = std::time::Instant::now();
        let found = detect(
            &mut server,
            &mut buf,
            Duration::from_millis(50),
            classify,
            Detected::Tcp,
        )
        .await
        .unwrap();
        assert_eq!(found, Detected::Tcp);
        assert!(start.elapsed() < Duration::from_secs(1));
        // A partial preface that stalls.
        client.write_all(b"PRI * HT").await.unwrap();
        let found = detect(
            &mut server,
            &mut buf,
            Duration::from_millis(50),
            classify,
            Detected::Tcp,
        )
        .await
        .unwrap();
        assert_eq!(found, Detected::Tcp);
        assert_eq!(&buf[..], b"PRI * HT");
        // And the bytes come back first.
        let mut replay = Prefixed::new(buf, server);
        client.write_all(b"TP").await.unwrap();
        let mut out = [0u8; 10];
        let mut got = 0;
        while got < 10 {
            got += replay.read(&mut out[got..]).await.unwrap();
        }
        assert_eq!(&out, b"PRI * HTTP");
    }

    #[tokio::test]
    async fn trickled_request_line_is_http1() {
        let (mut client, mut server) = tokio::io::duplex(1024);
        let writer = tokio::spawn(async move {
            for b in b"GET / HTTP/1.1\r\n" {
                client.write_all(&[*b]).await.unwrap();
                tokio::task::yield_now().await;
            }
            client
        });
        let mut buf = BytesMut::new();
        let found = detect(
            &mut server,
            &mut buf,
            Duration::from_secs(5),
            classify,
            Detected::Tcp,
        )
        .await
        .unwrap();
        assert_eq!(found, Detected::Http1);
        drop(writer.await.unwrap());
    }
}
