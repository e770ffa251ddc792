//! Cookie header and query string parsing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serin_policy::{cookie, query};

fuzz_target!(|bytes: &[u8]| {
    for (name, value) in cookie::pairs(bytes) {
        assert!(name.len() + value.len() <= bytes.len());
    }
    let _ = cookie::find([bytes, bytes], b"uid");
    let text = String::from_utf8_lossy(bytes);
    for (name, value) in query::raw_pairs(&text) {
        for raw in [name, value] {
            assert!(query::decode(raw).len() <= raw.len());
        }
    }
    let _ = query::find(&text, b"a");
});
