//! Header hygiene: hop-by-hop headers (RFC 9110 §7.6.1) are removed before forwarding, except
//! `Connection: upgrade` + `Upgrade` on a real upgrade; `Upgrade: h2c` is never honoured; and HTTP/1
//! request heads are checked for framing conflicts (Content-Length together with
//! Transfer-Encoding, duplicate Content-Length) before the parser sees them (see `guard.rs`).

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

/// Checks the framing headers of a raw HTTP/1 request head (`head` up to and including the
/// blank line). hyper would accept a Content-Length beside a Transfer-Encoding by dropping the
/// length; a proxy must refuse such requests instead (request smuggling).
pub fn check_head(head: &[u8]) -> Result<(), Malformed> {
    let mut lengths = 0;
    let mut encoding: Option<&[u8]> = None;
    for line in head.split(|b| *b == b'\n').skip(1) {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        let name = line[..colon].trim_ascii();
        let value = line[colon + 1..].trim_ascii();
        if name.eq_ignore_ascii_case(b"content-length") {
            lengths += 1;
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            encoding = Some(value);
        }
    }
    match (lengths, encoding) {
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
    }
}

/// The end of the request head at the start of `buf` (index after the blank line), if complete.
pub fn head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
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
    }
}
