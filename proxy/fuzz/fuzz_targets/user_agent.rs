//! The client OS classifier (User-Agent and Sec-CH-UA-Platform).
#![no_main]

use libfuzzer_sys::fuzz_target;
use serin_policy::os;

fuzz_target!(|bytes: &[u8]| {
    let _ = os::classify_user_agent(&String::from_utf8_lossy(bytes));
    let _ = os::classify_hint(bytes);
    let _ = os::classify(Some(bytes), Some(bytes));
});
