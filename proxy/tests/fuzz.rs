//! Fuzz-style tests of the sidecar's input parsers, run as ordinary tests (coverage-guided
//! fuzzing with cargo-fuzz needs a nightly toolchain, which this project does not use; see the
//! README's "Hardening" section). Each target runs every file of its seed corpus in
//! `tests/corpus/<target>/`, then `PROPTEST_CASES` (default 256) inputs that are either random
//! bytes or a seed with a few random mutations (bytes replaced, inserted, removed, or the input
//! cut short). Each target checks that nothing panics and the properties its parser promises.
//! The HTTP/1-through-the-proxy target runs at most 32 generated cases unless
//! `SERIN_FUZZ_PROXY_CASES` is set. A longer run: `PROPTEST_CASES=1000000 cargo test -p
//! serin-proxy --release --test fuzz`.
//!
//! Targets: protocol detection, HTTP/1 request heads (framing check and path normalisation) and
//! whole HTTP/1 requests through an in-process proxy, cookie and query parsing, the User-Agent
//! classifier, TrafficPolicy YAML/JSON, and Snapshot / TrafficPolicy / Service /
//! ServiceEndpoints proto decoding into the sidecar's domain types.

#[path = "support/harness.rs"]
mod harness;

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Once};
use std::time::Duration;

use harness::*;
use hyper::body::Incoming;
use hyper::{Request, Response};
use proptest::prelude::*;
use proptest::sample::Index;
use prost::Message;
use serin_policy::{CompiledPolicy, RequestHead, TrafficPolicy};
use serin_proto::v1;
use serin_proxy::config::ProxySettings;
use serin_proxy::detect::{self, Detected};
use serin_proxy::http::{headers, path};
use serin_proxy::snapshot::{Policy, Service, ServiceEndpoints, Snapshot};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Every file of `tests/corpus/<target>`, in name order.
fn corpus(target: &str) -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(target);
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .collect();
    files.sort();
    assert!(!files.is_empty(), "corpus {} is empty", dir.display());
    files
        .into_iter()
        .map(|f| std::fs::read(f).unwrap())
        .collect()
}

/// One edit of a seed.
#[derive(Debug, Clone)]
enum Mutation {
    Replace(Index, u8),
    Insert(Index, u8),
    Remove(Index),
    Truncate(Index),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Replace(i, b)),
        (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::Insert(i, b)),
        any::<Index>().prop_map(Mutation::Remove),
        any::<Index>().prop_map(Mutation::Truncate),
    ]
}

fn mutate(mut input: Vec<u8>, mutations: &[Mutation]) -> Vec<u8> {
    for m in mutations {
        let len = input.len();
        match m {
            Mutation::Replace(i, b) if len > 0 => input[i.index(len)] = *b,
            Mutation::Insert(i, b) => input.insert(i.index(len + 1), *b),
            Mutation::Remove(i) if len > 0 => {
                input.remove(i.index(len));
            }
            Mutation::Truncate(i) => input.truncate(i.index(len + 1)),
            _ => {}
        }
    }
    input
}

/// Random bytes, or a seed with up to 8 mutations.
fn inputs(seeds: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        1 => proptest::collection::vec(any::<u8>(), 0..512),
        3 => (
            proptest::sample::select(seeds),
            proptest::collection::vec(mutation(), 0..8)
        )
            .prop_map(|(seed, mutations)| mutate(seed, &mutations)),
    ]
}

/// Proptest settings: `PROPTEST_CASES` (default 256) cases, no regression files written.
fn config() -> ProptestConfig {
    ProptestConfig {
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Runs `check` on every seed of `target`, then on generated inputs.
fn fuzz(target: &str, check: impl Fn(&[u8])) {
    let seeds = corpus(target);
    for seed in &seeds {
        check(seed);
    }
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&inputs(seeds), |input| {
            check(&input);
            Ok(())
        })
        .unwrap();
}

#[test]
fn fuzz_protocol_detection() {
    fuzz("detect", |buf| {
        // The decision never changes once made: more bytes cannot turn HTTP into TCP.
        for classify in [detect::classify, detect::classify_http] {
            let whole = classify(buf);
            if let Some(first) = (0..=buf.len()).find_map(|n| classify(&buf[..n])) {
                assert_eq!(Some(first), whole, "{:?}", String::from_utf8_lossy(buf));
            }
        }
        if buf.starts_with(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n") {
            assert_eq!(detect::classify(buf), Some(Detected::Http2));
        }
    });
}

/// The properties of a normalised path (see `http/path.rs`).
fn check_normal(input: &str, normal: &str) {
    let what = format!("{input:?} -> {normal:?}");
    assert!(normal.starts_with('/'), "{what}");
    assert!(!normal.contains("//"), "{what}");
    assert!(normal.split('/').all(|s| s != "." && s != ".."), "{what}");
    let upper = normal.to_ascii_uppercase();
    for refused in ["%2F", "%5C", "%00", "%2E", "\\"] {
        assert!(!upper.contains(refused), "{what}");
    }
    assert!(
        matches!(path::normalize(normal), Ok(Cow::Borrowed(_))),
        "not idempotent (or not borrowed when already normal): {what}"
    );
}

#[test]
fn fuzz_http1_request_head() {
    fuzz("http1_request", |bytes| {
        let _ = headers::check_head(bytes);
        if let Some(end) = headers::head_end(bytes) {
            assert!(bytes[..end].ends_with(b"\r\n\r\n"));
            assert_eq!(headers::head_end(&bytes[..end - 1]), None);
        }
        // The request target, as the path normaliser would get it.
        let target = bytes
            .split(|b| *b == b' ')
            .nth(1)
            .map(String::from_utf8_lossy)
            .unwrap_or_default();
        if let Ok(uri) = target.parse::<http::Uri>()
            && let Ok(Some(normal)) = path::normalize_uri(&uri)
        {
            check_normal(uri.path(), normal.path());
            assert_eq!(normal.query(), uri.query());
        }
    });
}

#[test]
fn fuzz_path_normalisation() {
    fuzz("path", |bytes| {
        let input = String::from_utf8_lossy(bytes);
        match path::normalize(&input) {
            Ok(normal) if input.starts_with('/') => check_normal(&input, &normal),
            Ok(other) => assert_eq!(other, input),
            Err(_) => {}
        }
    });
}

#[test]
fn fuzz_cookie_parsing() {
    fuzz("cookie", |header| {
        for (name, value) in serin_policy::cookie::pairs(header) {
            assert!(name.len() + value.len() <= header.len());
        }
        let _ = serin_policy::cookie::find([header, header], b"uid");
        let _ = serin_policy::cookie::is_valid_name(&String::from_utf8_lossy(header));
    });
}

#[test]
fn fuzz_query_parsing() {
    fuzz("query", |bytes| {
        let query = String::from_utf8_lossy(bytes);
        for (name, value) in serin_policy::query::raw_pairs(&query) {
            for raw in [name, value] {
                assert!(serin_policy::query::decode(raw).len() <= raw.len());
            }
        }
        let _ = serin_policy::query::find(&query, b"a");
    });
}

#[test]
fn fuzz_user_agent_classifier() {
    fuzz("user_agent", |bytes| {
        let _ = serin_policy::os::classify_user_agent(&String::from_utf8_lossy(bytes));
        let _ = serin_policy::os::classify_hint(bytes);
        let _ = serin_policy::os::classify(Some(bytes), Some(bytes));
        let _ = serin_policy::os::classify(None, Some(bytes));
    });
}

/// A request for deciding with a compiled policy, carrying every kind of fact.
fn sample_decisions(compiled: &CompiledPolicy) {
    let request = Request::get("/beta/x?beta=1&a=%41")
        .header("end-user", "jason")
        .header("cookie", "uid=42; group=a")
        .header(
            "user-agent",
            "Mozilla/5.0 (iPhone; CPU iPhone OS 17_0 like Mac OS X)",
        )
        .body(())
        .unwrap();
    let (parts, ()) = request.into_parts();
    let head = RequestHead {
        method: &parts.method,
        uri: &parts.uri,
        headers: &parts.headers,
    };
    for random in [0, u32::MAX / 2, u32::MAX] {
        let _ = compiled.decide(&head, random, |_| true);
        let _ = compiled.decide(&head, random, |_| false);
    }
}

/// Validates, compiles and exercises `policy`, and converts it to the wire type and back.
fn exercise(policy: &TrafficPolicy) {
    if let Ok(validated) = serin_policy::validate(policy, None) {
        sample_decisions(&validated.into_compiled());
    }
    let wire = v1::TrafficPolicy::from(policy);
    let _ = TrafficPolicy::try_from(wire.clone());
    let _ = Policy::try_from(wire);
}

#[test]
fn fuzz_traffic_policy_text() {
    fuzz("policy_yaml", |bytes| {
        if let Ok(policies) = serin_policy::parse_policies(&String::from_utf8_lossy(bytes)) {
            policies.iter().for_each(exercise);
        }
    });
}

#[test]
fn fuzz_proto_decoding() {
    // Seeds: the YAML corpus's valid policies on the wire, and a service and its endpoints.
    let mut seeds: Vec<Vec<u8>> = corpus("policy_yaml")
        .iter()
        .filter_map(|text| serin_policy::parse_policies(&String::from_utf8_lossy(text)).ok())
        .flatten()
        .map(|p| v1::TrafficPolicy::from(&p).encode_to_vec())
        .collect();
    let service = v1::Service {
        name: "reviews".into(),
        namespace: "default".into(),
        vips: vec!["10.96.0.10".into()],
        hostnames: vec!["reviews".into()],
        ports: vec![v1::ServicePort {
            port: 9080,
            name: "http".into(),
            protocol: v1::Protocol::Http1 as i32,
            target_port: 0,
        }],
        ..Default::default()
    };
    let endpoints = v1::ServiceEndpoints {
        service: "reviews".into(),
        namespace: "default".into(),
        endpoints: vec![v1::Endpoint {
            addresses: vec!["10.244.0.7".into()],
            ports: vec![v1::EndpointPort {
                name: "http".into(),
                port: 9080,
            }],
            pod_name: "reviews-v1-0".into(),
            version: "v1".into(),
            ready: true,
            ..Default::default()
        }],
    };
    let policies: Vec<v1::TrafficPolicy> = seeds
        .iter()
        .filter_map(|b| v1::TrafficPolicy::decode(b.as_slice()).ok())
        .collect();
    seeds.push(service.encode_to_vec());
    seeds.push(endpoints.encode_to_vec());
    seeds.push(
        v1::Snapshot {
            services: vec![service],
            endpoints: vec![endpoints],
            policies,
            ..Default::default()
        }
        .encode_to_vec(),
    );
    assert!(seeds.len() >= 3, "proto seeds");
    let check = |bytes: &[u8]| {
        if let Ok(policy) = v1::TrafficPolicy::decode(bytes) {
            if let Ok(model) = TrafficPolicy::try_from(policy.clone()) {
                exercise(&model);
            }
            let _ = Policy::try_from(policy);
        }
        if let Ok(service) = v1::Service::decode(bytes) {
            let _ = Service::try_from(service);
        }
        if let Ok(endpoints) = v1::ServiceEndpoints::decode(bytes) {
            let _ = ServiceEndpoints::try_from(endpoints);
        }
        if let Ok(snapshot) = v1::Snapshot::decode(bytes) {
            let _ = Snapshot::from_proto("fuzz".into(), snapshot);
        }
    };
    for seed in &seeds {
        check(seed);
    }
    let mut runner = proptest::test_runner::TestRunner::new(config());
    runner
        .run(&inputs(seeds), |input| {
            check(&input);
            Ok(())
        })
        .unwrap();
}

/// Panics anywhere in this test binary, proxy tasks included (tokio would swallow those).
static PANICS: AtomicUsize = AtomicUsize::new(0);

fn count_panics() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICS.fetch_add(1, Ordering::SeqCst);
            default(info);
        }));
    });
}

/// What the upstream of the HTTP/1 target saw: each request's path and its `x-serin-*` /
/// `x-forwarded-client-cert` header names.
type Seen = Arc<Mutex<Vec<(String, Vec<String>)>>>;

#[test]
fn fuzz_http1_requests_through_the_proxy() {
    count_panics();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seen: Seen = Arc::default();
    let (proxy, _server) = rt.block_on(async {
        let s = Arc::clone(&seen);
        let server = http_server(move |req: Request<Incoming>| {
            let s = Arc::clone(&s);
            async move {
                let internal = req
                    .headers()
                    .keys()
                    .map(|k| k.as_str().to_owned())
                    .filter(|k| k.starts_with("x-serin-") || k == "x-forwarded-client-cert")
                    .collect();
                s.lock()
                    .unwrap()
                    .push((req.uri().path().to_owned(), internal));
                Response::new(full("ok"))
            }
        })
        .await;
        // Short timeouts: a head that never completes is cut off quickly.
        let settings = ProxySettings {
            header_read_timeout: Duration::from_millis(300),
            ..ProxySettings::default()
        };
        let proxy = TestProxy::start_with(settings).await;
        proxy.apply(&service_config(
            9080,
            "PROTOCOL_HTTP1",
            &[(server.addr, "v1")],
        ));
        (proxy, server)
    });
    let exchange = |input: &[u8]| {
        rt.block_on(async {
            let mut stream = proxy.connect_outbound(vip(9080)).await;
            let _ = stream.write_all(input).await;
            // The answer: the first bytes within 2 s (a request whose promised body never
            // comes may wait that long; a head that never ends is cut off by the header
            // timeout), then whatever follows until 50 ms pass without a byte or the end.
            let mut answer = Vec::new();
            let mut chunk = [0u8; 4096];
            let mut wait = Duration::from_secs(2);
            while let Ok(Ok(n)) = tokio::time::timeout(wait, stream.read(&mut chunk)).await {
                if n == 0 {
                    break;
                }
                answer.extend_from_slice(&chunk[..n]);
                wait = Duration::from_millis(50);
            }
            assert!(
                answer.is_empty() || answer.starts_with(b"HTTP/1."),
                "{:?} answered {:?}",
                String::from_utf8_lossy(input),
                String::from_utf8_lossy(&answer)
            );
        });
    };
    let seeds = corpus("http1_request");
    for seed in &seeds {
        exchange(seed);
    }
    assert!(
        !seen.lock().unwrap().is_empty(),
        "no seed request reached the upstream"
    );
    // Each case costs a connection and up to the header timeout: fewer cases than the others
    // unless `SERIN_FUZZ_PROXY_CASES` says otherwise.
    let cases = std::env::var("SERIN_FUZZ_PROXY_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(config().cases.min(32));
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases, ..config() });
    runner
        .run(&inputs(seeds), |input| {
            exchange(&input);
            Ok(())
        })
        .unwrap();
    for (path, internal) in seen.lock().unwrap().iter() {
        check_normal(path, path);
        assert!(
            internal.is_empty(),
            "{path}: {internal:?} reached the upstream"
        );
    }
    // The proxy still serves a plain request.
    rt.block_on(async {
        let mut stream = proxy.connect_outbound(vip(9080)).await;
        stream
            .write_all(b"GET /still/here HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_end(&mut stream).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    });
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "something panicked");
}
