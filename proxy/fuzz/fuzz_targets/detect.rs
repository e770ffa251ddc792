//! Protocol detection: no panic, and a decision never changes as more bytes arrive.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serin_proxy::detect;

fuzz_target!(|buf: &[u8]| {
    for classify in [detect::classify, detect::classify_http] {
        let whole = classify(buf);
        if let Some(first) = (0..=buf.len()).find_map(|n| classify(&buf[..n])) {
            assert_eq!(Some(first), whole);
        }
    }
});
