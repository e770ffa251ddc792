//! TrafficPolicy YAML/JSON: parse, validate, compile, decide, and convert to the wire and back.
#![no_main]

use libfuzzer_sys::fuzz_target;
use serin_policy::{RequestHead, TrafficPolicy};
use serin_proto::v1;

fuzz_target!(|bytes: &[u8]| {
    let Ok(policies) = serin_policy::parse_policies(&String::from_utf8_lossy(bytes)) else {
        return;
    };
    let request = http::Request::get("/beta/x?beta=1")
        .header("cookie", "uid=42")
        .header("user-agent", "Mozilla/5.0 (iPhone)")
        .body(())
        .unwrap();
    let (parts, ()) = request.into_parts();
    let head = RequestHead {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
    };
    for policy in &policies {
        if let Ok(validated) = serin_policy::validate(policy, None) {
            let compiled = validated.into_compiled();
            let _ = compiled.decide(&head, 12345, |_| true);
            let _ = compiled.decide(&head, 0, |_| false);
        }
        let _ = TrafficPolicy::try_from(v1::TrafficPolicy::from(policy));
    }
});
