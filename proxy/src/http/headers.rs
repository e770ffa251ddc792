//! Header hygiene: hop-by-hop headers (RFC 9110 §7.6.1) are removed before forwarding, except
//! `Connection: upgrade` + `Upgrade` on a real upgrade; `Upgrade: h2c` is never honoured; and HTTP/1
//! request heads are checked for framing conflicts (Content-Length together with
//! Transfer-Encoding, duplicate Content-Length) before the parser sees them (see `guard.rs`).
//! Internal headers a client could spoof are removed ([`strip_internal`], FAULTS 9).

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// Headers that only ever concern one connection.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
];

/// The upgrade protocol a request asks for (`Connection: upgrade` and an `Upgrade` that is not
/// `h2c`), if any.
pub fn upgrade_requested(headers: &HeaderMap) -> Option<&HeaderValue> {
    let upgrade = headers.get(header::UPGRADE)?;
    let asks = headers
        .get_all(header::CONNECTION)
        .iter()
        .any(|v| has_token(v, "upgrade"));
    let h2c = upgrade.as_bytes().eq_ignore_ascii_case(b"h2c");
    (asks && !h2c).then_some(upgrade)
}

fn has_token(value: &HeaderValue, token: &str) -> bool {
    value
        .as_bytes()
        .split(|b| *b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Removes hop-by-hop headers, and every header the `Connection` header names. With
/// `upgrade = true` the `Connection: upgrade` and `Upgrade` pair is kept (rewritten to exactly
/// that) so the next hop sees the upgrade.
pub fn strip_hop_by_hop(headers: &mut HeaderMap, upgrade: bool) {
    // Most messages carry none: one pass over the names (no hashing) settles it.
    if !headers.keys().any(is_hop_by_hop) {
        return;
    }
    if headers.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .flat_map(|v| v.as_bytes().split(|b| *b == b','))
            .filter_map(|t| HeaderName::from_bytes(t.trim_ascii()).ok())
            .collect();
        for name in named {
            if !(upgrade && name == header::UPGRADE) {
                headers.remove(name);
            }
        }
    }
    let upgrade_value = if upgrade {
        headers.remove(header::UPGRADE)
    } else {
        None
    };
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    headers.remove("http2-settings");
    // `te: trailers` is the one TE value that passes (gRPC needs it end to end).
    if let Some(te) = headers.get(header::TE)
        && !te.as_bytes().eq_ignore_ascii_case(b"trailers")
    {
        headers.remove(header::TE);
    }
    if let Some(value) = upgrade_value {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, value);
    }
}

/// Whether `name` is one that [`strip_hop_by_hop`] may remove (a header that the `Connection`
/// header names is only removed when a `Connection` header is present, which this includes).
fn is_hop_by_hop(name: &HeaderName) -> bool {
    // Standard names compare as enums; the others by their (lower-case) text.
    name == header::CONNECTION
        || name == header::TRANSFER_ENCODING
        || name == header::UPGRADE
        || name == header::TE
        || matches!(
            name.as_str(),
            "keep-alive" | "proxy-connection" | "http2-settings"
        )
}

/// Prefix of the headers only Serin sidecars set (`x-serin-mirror`, ...).
pub const INTERNAL_PREFIX: &str = "x-serin-";

/// Removes the headers a client must not be able to set itself: every `x-serin-*` header and
/// `x-forwarded-client-cert` (no Serin sidecar sets it yet; a request that carries it is lying).
/// Allocates nothing when there is nothing to remove.
pub fn strip_internal(headers: &mut HeaderMap) {
    let internal = |name: &HeaderName| {
        let name = name.as_str();
        name.starts_with(INTERNAL_PREFIX) || name == "x-forwarded-client-cert"
    };
    // One pass over the names (no hashing) for the usual request that has none.
    if headers.keys().any(internal) {
        let names: Vec<HeaderName> = headers.keys().filter(|n| internal(n)).cloned().collect();
        for name in names {
            headers.remove(name);
        }
    }
}

/// [`strip_internal`] for a request arriving inbound, which keeps the mark of a mirrored copy:
/// `x-serin-mirror: 1` on a request whose host is `<name>-shadow` (the pair a mirroring sidecar
/// sets together, see `mirror.rs`). Without mTLS the proxy cannot tell a peer's sidecar from any
/// other client, so this is all it can check.
pub fn strip_internal_inbound<B>(req: &mut http::Request<B>) {
    let mirror = HeaderName::from_static(crate::mirror::MIRROR_HEADER);
    let copy = req.headers().get(&mirror).is_some_and(|v| v == "1") && is_shadow_host(req);
    strip_internal(req.headers_mut());
    if copy {
        req.headers_mut()
            .insert(mirror, HeaderValue::from_static("1"));
    }
}

/// Whether `req` carries the mark of a mirrored copy (after [`strip_internal_inbound`], only a
/// copy to a `-shadow` host keeps it).
pub fn is_mirror_copy<B>(req: &http::Request<B>) -> bool {
    req.headers()
        .get(crate::mirror::MIRROR_HEADER)
        .is_some_and(|v| v == "1")
}

/// Whether the request's host (`Host`, else the URI's authority), less any port, ends in
/// `-shadow`.
fn is_shadow_host<B>(req: &http::Request<B>) -> bool {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri().authority().map(|a| a.as_str()))
        .unwrap_or_default();
    let name = host.rsplit_once(':').map_or(host, |(name, _)| name);
    name.ends_with("-shadow")
}

/// Why a request head is refused before parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Malformed {
    /// Content-Length together with Transfer-Encoding.
    LengthAndEncoding,
    /// More than one Content-Length.
    DuplicateLength,
    /// Transfer-Encoding whose last coding is not `chunked`.
    EncodingNotChunked,
}

impl Malformed {
    /// The reason given to the client.
    pub fn reason(self) -> &'static str {
        match self {
            Malformed::LengthAndEncoding => "content-length together with transfer-encoding",
            Malformed::DuplicateLength => "duplicate content-length",
            Malformed::EncodingNotChunked => "transfer-encoding does not end in chunked",
        }
    }
}

/// What the framing headers of a raw HTTP/1 request head say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Framing {
    /// The verdict: refused for conflicting or ambiguous framing.
    pub verdict: Result<(), Malformed>,
    /// The Content-Length, if one parses.
    pub length: Option<u64>,
    /// Whether a Transfer-Encoding is present.
    pub chunked: bool,
    /// Whether an `Upgrade` header is present or the method is CONNECT.
    pub upgrade: bool,
}

/// Reads the framing headers of a raw HTTP/1 request head (`head` up to and including the blank
/// line) in one pass: only lines that start like `Content-Length`, `Transfer-Encoding` or
/// `Upgrade` are looked at past their first byte. See [`check_head`] for the verdict.
pub fn framing(head: &[u8]) -> Framing {
    let mut lengths = 0;
    let mut length = None;
    let mut encoding: Option<&[u8]> = None;
    let mut upgrade = head.starts_with(b"CONNECT ");
    // Line starts come from a vectorised search for the line ends; a line is looked at past its
    // first byte only when that could begin one of the three names.
    let mut ends = memchr::memchr_iter(b'\n', head);
    let mut start = match ends.next() {
        Some(end) => end + 1,
        None => head.len(),
    };
    while start < head.len() {
        let end = ends.next().unwrap_or(head.len());
        let line = head[start..end].trim_ascii_start();
        start = end + 1;
        let Some(first) = line.first() else { continue };
        if !matches!(first | 0x20, b'c' | b't' | b'u') {
            continue;
        }
        let Some(colon) = memchr::memchr(b':', line) else {
            continue;
        };
        let name = line[..colon].trim_ascii_end();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
            length = std::str::from_utf8(value)
                .ok()
                .and_then(|v| v.parse::<u64>().ok());
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encoding = Some(value);
        } else if name.eq_ignore_ascii_case(b"upgrade") {
            upgrade = true;
        }
    }
    let verdict = match (lengths, encoding) {
        (n, _) if n > 1 => Err(Malformed::DuplicateLength),
        (1, Some(_)) => Err(Malformed::LengthAndEncoding),
        (_, Some(te)) => {
            let last = te
                .rsplit(|b| *b == b',')
                .next()
                .unwrap_or_default()
                .trim_ascii();
            if last.eq_ignore_ascii_case(b"chunked") {
                Ok(())
            } else {
                Err(Malformed::EncodingNotChunked)
            }
        }
        _ => Ok(()),
    };
    Framing {
        verdict,
        length,
        chunked: encoding.is_some(),
        upgrade,
    }
}

/// Checks the framing headers of a raw HTTP/1 request head (`head` up to and including the
/// blank line). hyper would accept a Content-Length beside a Transfer-Encoding by dropping the
/// length; a proxy must refuse such requests instead (request smuggling).
pub fn check_head(head: &[u8]) -> Result<(), Malformed> {
    framing(head).verdict
}

/// The end of the request head at the start of `buf` (index after the blank line), if complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    // `i` is where a `\r\n\r\n` could end. A byte that is neither `\r` nor `\n` cannot be in
    // one, so the next candidate is 4 further on: most of a head is skipped 4 bytes at a time
    // (cheaper here than a vectorised search, whose set-up the short heads do not repay).
    let mut i = 3;
    while i < buf.len() {
        match buf[i] {
            b'\n' if &buf[i - 3..i] == b"\r\n\r" => return Some(i + 1),
            b'\n' | b'\r' => i += 1,
            _ => i += 4,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn strips_hop_by_hop_and_connection_named_headers() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("proxy-connection", "keep-alive"),
            ("transfer-encoding", "chunked"),
            ("te", "gzip"),
            ("upgrade", "h2c"),
            ("http2-settings", "AAA"),
            ("x-keep", "yes"),
        ]);
        strip_hop_by_hop(&mut h, false);
        let names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-keep"]);
        let mut h = map(&[("te", "trailers")]);
        strip_hop_by_hop(&mut h, false);
        assert_eq!(h["te"], "trailers");
    }

    #[test]
    fn keeps_a_real_upgrade_and_ignores_h2c() {
        let mut h = map(&[
            ("connection", "Upgrade, keep-alive"),
            ("upgrade", "websocket"),
        ]);
        assert!(upgrade_requested(&h).is_some());
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["connection"], "upgrade");
        assert_eq!(h["upgrade"], "websocket");
        let h = map(&[
            ("connection", "upgrade, http2-settings"),
            ("upgrade", "h2c"),
        ]);
        assert!(upgrade_requested(&h).is_none());
        let h = map(&[("upgrade", "websocket")]);
        assert!(upgrade_requested(&h).is_none());
    }

    #[test]
    fn strips_internal_headers() {
        let mut h = map(&[
            ("x-serin-mirror", "1"),
            ("X-Serin-Anything", "x"),
            ("x-forwarded-client-cert", "By=spiffe://evil"),
            ("x-serinity", "kept: not the prefix"),
            ("x-request-id", "kept"),
        ]);
        strip_internal(&mut h);
        let mut names: Vec<_> = h.keys().map(|k| k.as_str()).collect();
        names.sort();
        assert_eq!(names, ["x-request-id", "x-serinity"]);
    }

    #[test]
    fn inbound_keeps_only_the_mark_of_a_real_mirror_copy() {
        let request = |host: &str, mark: &str| {
            http::Request::get("/")
                .header("host", host)
                .header("x-serin-mirror", mark)
                .header("x-serin-other", "1")
                .body(())
                .unwrap()
        };
        let mut copy = request("reviews-shadow:9080", "1");
        strip_internal_inbound(&mut copy);
        assert_eq!(copy.headers()["x-serin-mirror"], "1");
        assert!(!copy.headers().contains_key("x-serin-other"));
        for (host, mark) in [("reviews:9080", "1"), ("reviews-shadow", "yes")] {
            let mut spoofed = request(host, mark);
            strip_internal_inbound(&mut spoofed);
            assert!(
                !spoofed.headers().contains_key("x-serin-mirror"),
                "{host} {mark}"
            );
            assert!(!spoofed.headers().contains_key("x-serin-other"));
        }
        let mut h2 = http::Request::get("http://ratings-shadow/x")
            .header("x-serin-mirror", "1")
            .body(())
            .unwrap();
        strip_internal_inbound(&mut h2);
        assert_eq!(h2.headers()["x-serin-mirror"], "1");
    }

    #[test]
    fn checks_framing_of_request_heads() {
        let ok = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(check_head(ok), Ok(()));
        let both = b"POST / HTTP/1.1\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n";
        assert_eq!(check_head(both), Err(Malformed::LengthAndEncoding));
        let dup = b"POST / HTTP/1.1\r\ncontent-length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(check_head(dup), Err(Malformed::DuplicateLength));
        let te = b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked, gzip\r\n\r\n";
        assert_eq!(check_head(te), Err(Malformed::EncodingNotChunked));
        let te = b"POST / HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n";
        assert_eq!(check_head(te), Ok(()));
        assert_eq!(head_end(ok), Some(ok.len()));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
        // Obsolete line folding and leading whitespace do not hide a framing header.
        let folded = b"POST / HTTP/1.1\r\nX: a\r\n  content-length: 3\r\nContent-Length: 4\r\n\r\n";
        assert_eq!(check_head(folded), Err(Malformed::DuplicateLength));
    }

    #[test]
    fn framing_reads_length_encoding_and_upgrade() {
        let f = framing(b"POST / HTTP/1.1\r\nHost: a\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(
            (f.verdict, f.length, f.chunked, f.upgrade),
            (Ok(()), Some(12), false, false)
        );
        let f = framing(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n");
        assert_eq!(
            (f.verdict, f.length, f.chunked, f.upgrade),
            (Ok(()), None, true, false)
        );
        let f = framing(b"GET / HTTP/1.1\r\nConnection: upgrade\r\nUPGRADE: websocket\r\n\r\n");
        assert!(f.upgrade && f.verdict.is_ok());
        assert!(framing(b"CONNECT a:443 HTTP/1.1\r\n\r\n").upgrade);
        // Names that merely start like a framing header are not one.
        let f =
            framing(b"POST / HTTP/1.1\r\nContent-Type: a\r\nTE: trailers\r\nUser-Agent: x\r\n\r\n");
        assert_eq!(
            (f.verdict, f.length, f.chunked, f.upgrade),
            (Ok(()), None, false, false)
        );
    }

    #[test]
    fn head_end_finds_the_first_blank_line_wherever_it_falls() {
        // The same answer as the plain search, at every offset and alignment.
        let plain = |b: &[u8]| b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
        let heads: [&[u8]; 6] = [
            b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody\r\n\r\n",
            b"\r\n\r\n",
            b"\r\r\n\r\n",
            b"a\r\n\r\r\n\r\n",
            b"\n\n\r\n\r\n",
            b"GET / HTTP/1.1\r\nX: \r\r\n\n\r\n",
        ];
        for head in heads {
            for start in 0..head.len() {
                assert_eq!(
                    head_end(&head[start..]),
                    plain(&head[start..]),
                    "{head:?} from {start}"
                );
            }
        }
    }
}
