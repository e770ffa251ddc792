//! Request-smuggling guard for HTTP/1 downstream connections: a stream wrapper that follows the
//! message framing of the bytes hyper reads (heads, Content-Length bodies, chunked bodies) and
//! checks every request head's framing headers as it passes, leaving one verdict per head in
//! order. hyper would accept a Content-Length beside a Transfer-Encoding (dropping the length);
//! the service answers such a request 400 from its verdict instead, and forwards nothing.
//!
//! Bodies of known length are skipped without looking at them; chunked bodies cost a look at
//! each chunk-size line. The guard stops following (and leaves the rest to hyper's own checks)
//! after an upgrade or CONNECT head, an unparsable chunk size, or a head larger than the limit.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, ReadBuf};

use super::headers::{self, Malformed};

/// The verdicts on a connection's request heads, oldest first.
#[derive(Debug, Default)]
pub struct Verdicts(Mutex<VecDeque<Result<(), Malformed>>>);

impl Verdicts {
    /// The verdict on the next request's head (`None` once the guard stopped following).
    pub fn next(&self) -> Option<Result<(), Malformed>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).pop_front()
    }

    fn push(&self, verdict: Result<(), Malformed>) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(verdict);
    }
}

/// Where in the byte stream the guard is. The bytes of the current head or line are kept in
/// the guard's `pending` buffer, reused from one request to the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    /// Collecting a request head.
    Head,
    /// Skipping this many body bytes.
    Length(u64),
    /// Reading a chunk-size line.
    ChunkSize,
    /// Skipping chunk data, then its CRLF.
    ChunkData(u64),
    /// Reading trailer lines until the empty one.
    Trailers,
    /// Not following any more.
    Off,
}

/// Longest chunk-size or trailer line followed.
const MAX_LINE: usize = 4096;

/// A stream that checks the request heads read through it.
#[derive(Debug)]
pub struct HeadGuard<T> {
    inner: T,
    scan: Scan,
    pending: Vec<u8>,
    limit: usize,
    verdicts: Arc<Verdicts>,
}

impl<T> HeadGuard<T> {
    /// Guards `inner`; heads beyond `limit` bytes are left to the parser (which answers 431).
    pub fn new(inner: T, limit: usize, verdicts: Arc<Verdicts>) -> Self {
        HeadGuard {
            inner,
            scan: Scan::Head,
            pending: Vec::new(),
            limit,
            verdicts,
        }
    }

    /// Follows `bytes`, the next bytes of the stream.
    fn follow(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            self.scan = match self.scan {
                Scan::Off => return,
                Scan::Head => {
                    // Empty lines before a request line are allowed (RFC 9112 §2.2).
                    if self.pending.is_empty() {
                        let skip = bytes
                            .iter()
                            .take_while(|b| **b == b'\r' || **b == b'\n')
                            .count();
                        bytes = &bytes[skip..];
                        if bytes.is_empty() {
                            return;
                        }
                    }
                    match head_end(&self.pending, bytes) {
                        Some(n) => {
                            self.pending.extend_from_slice(&bytes[..n]);
                            bytes = &bytes[n..];
                            let next = self.after_head();
                            self.pending.clear();
                            next
                        }
                        None if self.pending.len() + bytes.len() > self.limit => Scan::Off,
                        None => {
                            self.pending.extend_from_slice(bytes);
                            return;
                        }
                    }
                }
                Scan::Length(left) => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    match left - n {
                        0 => Scan::Head,
                        left => Scan::Length(left),
                    }
                }
                Scan::ChunkData(left) => {
                    let n = left.min(bytes.len() as u64);
                    bytes = &bytes[n as usize..];
                    match left - n {
                        0 => Scan::ChunkSize,
                        left => Scan::ChunkData(left),
                    }
                }
                line @ (Scan::ChunkSize | Scan::Trailers) => {
                    if !take_line(&mut self.pending, &mut bytes) {
                        if self.pending.len() > MAX_LINE {
                            self.pending.clear();
                            Scan::Off
                        } else {
                            line
                        }
                    } else {
                        let next = match line {
                            Scan::ChunkSize => match chunk_size(&self.pending) {
                                Some(0) => Scan::Trailers,
                                // The data, then its CRLF.
                                Some(size) => Scan::ChunkData(size + 2),
                                None => Scan::Off,
                            },
                            _ if self.pending.trim_ascii().is_empty() => Scan::Head,
                            _ => Scan::Trailers,
                        };
                        self.pending.clear();
                        next
                    }
                }
            };
        }
    }

    /// Records the verdict on the complete head in `pending` and decides how its body is framed.
    fn after_head(&mut self) -> Scan {
        let framing = headers::framing(&self.pending);
        self.verdicts.push(framing.verdict);
        if framing.verdict.is_err() {
            return Scan::Off;
        }
        match framing {
            // What follows may be a tunnel: stop following.
            headers::Framing { upgrade: true, .. } => Scan::Off,
            headers::Framing { chunked: true, .. } => Scan::ChunkSize,
            headers::Framing {
                length: Some(n), ..
            } if n > 0 => Scan::Length(n),
            _ => Scan::Head,
        }
    }
}

/// Where the head that `pending` starts ends in `bytes` (the index after its blank line), if it
/// does: the blank line may straddle the two.
fn head_end(pending: &[u8], bytes: &[u8]) -> Option<usize> {
    const END: &[u8] = b"\r\n\r\n";
    for k in (1..=3).rev() {
        if pending.len() >= k
            && bytes.len() >= 4 - k
            && pending.ends_with(&END[..k])
            && bytes.starts_with(&END[k..])
        {
            return Some(4 - k);
        }
    }
    headers::head_end(bytes)
}

/// Moves bytes up to and including the next `\n` into `line`; whether the line is complete.
fn take_line(line: &mut Vec<u8>, bytes: &mut &[u8]) -> bool {
    match bytes.iter().position(|b| *b == b'\n') {
        Some(i) => {
            line.extend_from_slice(&bytes[..=i]);
            *bytes = &bytes[i + 1..];
            true
        }
        None => {
            line.extend_from_slice(bytes);
            *bytes = &[];
            false
        }
    }
}

/// The size in a chunk-size line (`1a;ext=1\r\n`).
fn chunk_size(line: &[u8]) -> Option<u64> {
    let digits = line.split(|b| *b == b';').next()?.trim_ascii();
    let digits = std::str::from_utf8(digits).ok()?;
    u64::from_str_radix(digits, 16)
        .ok()
        .filter(|_| !digits.is_empty() && digits.len() <= 16)
}

impl<T: AsyncRead + Unpin> AsyncRead for HeadGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = polled
            && !matches!(self.scan, Scan::Off)
        {
            let this = &mut *self;
            this.follow(&buf.filled()[before..]);
        }
        polled
    }
}

crate::stream::write_through_to_inner!(HeadGuard);

#[cfg(test)]
mod tests {
    use super::*;

    fn verdicts_of(pieces: &[&[u8]]) -> Vec<Result<(), Malformed>> {
        let verdicts = Arc::new(Verdicts::default());
        let mut guard = HeadGuard::new((), 8192, Arc::clone(&verdicts));
        for piece in pieces {
            guard.follow(piece);
        }
        std::iter::from_fn(|| verdicts.next()).collect()
    }

    #[test]
    fn follows_bodies_to_find_every_head() {
        let stream: &[u8] = b"POST /a HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello\
            \r\nPOST /b HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\n0\r\nX-T: 1\r\n\r\n\
            POST /c HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
        let expected = vec![Ok(()), Ok(()), Err(Malformed::LengthAndEncoding)];
        assert_eq!(verdicts_of(&[stream]), expected);
        // The same bytes one at a time: heads and chunk lines straddle reads.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(verdicts_of(&bytes), expected);
    }

    #[test]
    fn a_body_that_looks_like_a_head_is_not_one() {
        let smuggled: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 57\r\n\r\n\
            GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nGET / HTTP/1.1\r\n\r\n";
        assert_eq!(verdicts_of(&[smuggled]), vec![Ok(()), Ok(())]);
    }

    #[test]
    fn stops_after_an_upgrade() {
        let stream: &[u8] =
            b"GET /ws HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n\
            POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n";
        assert_eq!(verdicts_of(&[stream]), vec![Ok(())]);
    }
}
