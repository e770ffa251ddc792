//! Evaluating a 100-rule policy (headers, cookies, uri, query, os mixed) for one request that no
//! rule takes: the worst case, every rule checked (20 of them run a regex that matches, then
//! need the client OS), then the default route's sticky split.
//! Run: `cargo bench -p serin-policy --bench evaluate`.

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, criterion_group, criterion_main};
use serin_policy::{Choice, CompiledPolicy, TakenBy, parse_policy};

/// A policy of 100 rules, five kinds in turn, none of which the benchmark request matches.
fn policy_text() -> String {
    let mut text = String::from(
        "apiVersion: serin.io/v1\nkind: TrafficPolicy\nmetadata: {name: reviews, namespace: default}\n\
         spec:\n  service: reviews\n  rules:\n",
    );
    for i in 0..100 {
        let block = match i % 5 {
            0 => format!(
                "{{headers: {{x-tenant: {{exact: tenant-{i}}}, x-env: {{prefix: stage}}}}}}"
            ),
            1 => format!("{{cookies: {{canary-{i}: {{exact: always}}}}}}"),
            2 => format!("{{uri: {{regex: '/api/v[0-9]+/feature-{i}/.*'}}, method: POST}}"),
            3 => format!("{{query: {{beta-{i}: {{exact: '1'}}}}}}"),
            // The header regex matches the request, so the OS is classified (once) and fails.
            _ => format!(
                "{{headers: {{x-tenant: {{regex: 'TENANT-[0-9]+-?{i}?', ignoreCase: true}}}}, os: [ios, android]}}"
            ),
        };
        writeln!(
            text,
            "  - name: rule-{i}\n    match: [{block}]\n    route: [{{version: v3, weight: 100}}]"
        )
        .unwrap();
    }
    text.push_str(
        "  default:\n    route: [{version: v1, weight: 90}, {version: v2, weight: 10}]\n  \
         stickiness: {cookie: uid}\n",
    );
    text
}

fn request() -> http::Request<()> {
    http::Request::builder()
        .method("GET")
        .uri("/api/v1/reviews/123?lang=en&page=2&sort=recent")
        .header("host", "reviews.default.svc.cluster.local")
        .header(
            "user-agent",
            "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36",
        )
        .header("accept", "application/json")
        .header("x-request-id", "5b8c1f0e-2a4d-4c1b-9e6f-1234567890ab")
        .header("x-tenant", "tenant-7")
        .header("cookie", "session=8f2d9c7a1b; theme=dark")
        .header("cookie", "uid=user-4242; lang=en")
        .body(())
        .unwrap()
}

fn evaluate(c: &mut Criterion) {
    let policy = CompiledPolicy::new(&parse_policy(&policy_text()).unwrap()).unwrap();
    let req = request();
    let decision = policy.decide(&req, 0, |_| true);
    assert_eq!(
        decision.taken_by,
        TakenBy::Default,
        "the benchmark is the no-match worst case"
    );
    assert!(matches!(decision.choice, Choice::Sticky { .. }));
    assert!(policy.needs_os() && policy.needs_cookies() && policy.needs_query());

    c.bench_function("decide_100_rules_no_match_sticky_default", |b| {
        let mut random = 0u32;
        b.iter(|| {
            random = random.wrapping_add(0x9E37_79B9);
            let d = policy.decide(black_box(&req), random, |_| true);
            black_box(d.version())
        })
    });
}

criterion_group! {
    name = benches;
    // Two shared cores: keep the run short.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = evaluate
}
criterion_main!(benches);
