//! HTTP/1 request heads: the framing check, the end of the head, and the request target's path
//! normalisation (normal output, idempotent, no refused encoding left).
#![no_main]

use std::borrow::Cow;

use libfuzzer_sys::fuzz_target;
use serin_proxy::http::{headers, path};

fuzz_target!(|bytes: &[u8]| {
    let _ = headers::check_head(bytes);
    if let Some(end) = headers::head_end(bytes) {
        assert!(bytes[..end].ends_with(b"\r\n\r\n"));
    }
    let target = bytes
        .split(|b| *b == b' ')
        .nth(1)
        .map(String::from_utf8_lossy)
        .unwrap_or_default();
    for candidate in [target.as_ref(), String::from_utf8_lossy(bytes).as_ref()] {
        if let Ok(normal) = path::normalize(candidate)
            && candidate.starts_with('/')
        {
            assert!(normal.starts_with('/'));
            assert!(!normal.contains("//"));
            assert!(normal.split('/').all(|s| s != "." && s != ".."));
            let upper = normal.to_ascii_uppercase();
            for refused in ["%2F", "%5C", "%00", "%2E", "\\"] {
                assert!(!upper.contains(refused), "{candidate:?} -> {normal:?}");
            }
            assert!(matches!(path::normalize(&normal), Ok(Cow::Borrowed(_))));
        }
    }
});
