//! The dashboard in a real browser: Debian's Chromium, headless, driven over the DevTools
//! protocol (a WebSocket; no driver binary, no npm). Simulated sidecars report traffic while the
//! page is open; the page must draw the version nodes and labelled edges, mark the mTLS edges
//! with a padlock and show an edge's client principals in its panel, follow a traffic shift
//! live, and a weight change made in the page must reach the policy (Admin.GetPolicy). Saves
//! screenshots as `target/screenshots/dashboard.png`, `dashboard-edge.png` and
//! `dashboard-200-services.png`. The
//! same page against a real local mesh (real sidecars and traffic): serin-tests'
//! `tests/browser.rs`.
//!
//! Needs `chromium` (Debian: `apt-get install chromium`; `scripts/test` installs it when run as
//! root). Without it the test fails saying so: it never passes without a browser.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::json;
use serin_proto::v1;
use serin_tests::cdp::{self, Browser};
use tokio::sync::Mutex;

use crate::dashboard::{PRODUCTPAGE_ID, Sidecar, Traffic, harness_with_clock};
use crate::support::{eventually, workload};

/// A simulated sidecar's Discovery stream that acknowledges every snapshot, so the page shows
/// its proxy in sync.
async fn subscribe(
    h: &crate::support::Harness,
    pod: &str,
    service: &str,
    version: &str,
    ip: &str,
) -> tokio::task::JoinHandle<()> {
    let mut client = h.discovery().await;
    let (tx, requests) = tokio::sync::mpsc::channel(16);
    tx.send(v1::SubscribeRequest {
        kind: Some(v1::subscribe_request::Kind::Hello(v1::Hello {
            proxy: Some(v1::ProxyIdentity {
                pod_name: pod.into(),
                namespace: "default".into(),
                pod_ips: vec![ip.into()],
                service: service.into(),
                version: version.into(),
                proxy_version: "test".into(),
                ..Default::default()
            }),
            capabilities: vec!["snapshot.full".into()],
            applied_version: String::new(),
        })),
    })
    .await
    .unwrap();
    let mut rx = client
        .subscribe(tokio_stream::wrappers::ReceiverStream::new(requests))
        .await
        .unwrap()
        .into_inner();
    tokio::spawn(async move {
        while let Ok(Some(msg)) = rx.message().await {
            let ack = v1::SnapshotAck {
                version: msg.version.clone(),
                nonce: msg.nonce.clone(),
            };
            let ack = v1::SubscribeRequest {
                kind: Some(v1::subscribe_request::Kind::Ack(ack)),
            };
            if tx.send(ack).await.is_err() {
                return;
            }
        }
    })
}

/// The demo mesh the page shows: callers from outside reach the frontend, which calls
/// productpage, which calls details and the three versions of reviews; reviews calls ratings.
const PODS: [(&str, &str, &str); 8] = [
    ("frontend", "v1", "10.244.0.20"),
    ("productpage", "v1", "10.244.0.21"),
    ("details", "v1", "10.244.0.22"),
    ("reviews", "v1", "10.244.0.23"),
    ("reviews", "v2", "10.244.0.24"),
    ("reviews", "v3", "10.244.0.25"),
    ("ratings", "v1", "10.244.0.26"),
    ("ratings", "v2", "10.244.0.27"),
];

/// The client principal of frontend's mTLS traffic.
const FRONTEND_ID: &str = "spiffe://cluster.local/ns/default/sa/frontend";

/// The traffic each second, with reviews v2 taking `v2` requests per second. Over mTLS:
/// frontend → productpage and productpage → reviews v1 all of it, productpage → details half of
/// it; the rest is plaintext.
fn traffic(v2: u64) -> Vec<(usize, Traffic)> {
    let t = |src, dst, ok, failed, bucket| Traffic {
        failed,
        bucket,
        ..Traffic::inbound(src, dst, ok)
    };
    let secured = |principal, traffic| Traffic {
        principal: Some(principal),
        ..traffic
    };
    let out = vec![
        (0, t(("unknown", "unknown"), ("frontend", "v1"), 240, 0, 1)),
        (
            1,
            secured(
                FRONTEND_ID,
                t(("frontend", "v1"), ("productpage", "v1"), 238, 2, 2),
            ),
        ),
        (2, t(("productpage", "v1"), ("details", "v1"), 60, 0, 0)),
        (
            2,
            secured(
                PRODUCTPAGE_ID,
                t(("productpage", "v1"), ("details", "v1"), 60, 0, 0),
            ),
        ),
        (
            3,
            secured(
                PRODUCTPAGE_ID,
                t(("productpage", "v1"), ("reviews", "v1"), 200 - v2, 0, 2),
            ),
        ),
        (
            4,
            t(
                ("productpage", "v1"),
                ("reviews", "v2"),
                v2 - v2 / 20,
                v2 / 20,
                4,
            ),
        ),
        (
            5,
            Traffic {
                mirror: true,
                ..t(("productpage", "v1"), ("reviews", "v3"), 24, 0, 3)
            },
        ),
        (6, t(("reviews", "v2"), ("ratings", "v1"), v2, 0, 1)),
        (7, t(("reviews", "v2"), ("ratings", "v2"), 4, 0, 1)),
    ];
    out
}

#[tokio::test]
async fn the_dashboard_draws_the_traffic_and_changes_weights_in_a_browser() {
    let chromium = cdp::chromium().unwrap_or_else(|| {
        panic!(
            "the dashboard browser test needs Chromium: {}",
            cdp::NO_CHROMIUM
        )
    });
    tracing::info!(chromium = %chromium.display(), "browser test");
    let (h, clock) = harness_with_clock().await;
    let mut admin = h.admin().await;
    for (i, (service, version, ip)) in PODS.iter().enumerate() {
        admin
            .register_workload(v1::RegisterWorkloadRequest {
                workload: Some(workload(
                    &format!("{service}-{version}-{i}"),
                    service,
                    version,
                    ip,
                )),
                ttl: Some(prost_types::Duration {
                    seconds: 3600,
                    nanos: 0,
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    admin
        .set_weights(v1::SetWeightsRequest {
            service: "reviews".into(),
            weights: vec![
                v1::VersionWeight {
                    version: "v1".into(),
                    weight: 90,
                },
                v1::VersionWeight {
                    version: "v2".into(),
                    weight: 10,
                },
            ],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut cars = Vec::new();
    let mut subscribers = Vec::new();
    for (i, (service, version, ip)) in PODS.iter().enumerate() {
        let pod = format!("{service}-{version}-{i}");
        cars.push(Sidecar::connect(h.grpc, &pod, service, version).await);
        subscribers.push(subscribe(&h, &pod, service, version, ip).await);
    }
    // Each destination pod reports its inbound edges; the simulated clock moves a second per
    // round, and rounds run every 200 ms, so the page sees new windows often.
    let v2_rate = Arc::new(AtomicU64::new(20));
    let stop = Arc::new(AtomicBool::new(false));
    let cars = Arc::new(Mutex::new(cars));
    let round = {
        let (clock, cars, v2_rate) = (clock.clone(), cars.clone(), v2_rate.clone());
        move || {
            let (clock, cars, v2_rate) = (clock.clone(), cars.clone(), v2_rate.clone());
            async move {
                clock.fetch_add(1000, Ordering::AcqRel);
                let mut cars = cars.lock().await;
                let edges = traffic(v2_rate.load(Ordering::Acquire));
                for (pod_index, car) in cars.iter_mut().enumerate() {
                    // Every edge into this pod's service version.
                    let (service, version, _) = PODS[pod_index];
                    let mine: Vec<Traffic> = edges
                        .iter()
                        .filter(|(_, t)| t.destination == (service, version))
                        .map(|(_, t)| t.clone())
                        .collect();
                    if pod_index == 1 {
                        // productpage routes reviews: the default route's hits, under both
                        // generations the test goes through (the page shows the current one's).
                        let v2 = v2_rate.load(Ordering::Acquire);
                        let hits = [1, 2]
                            .into_iter()
                            .flat_map(|g| {
                                [
                                    crate::dashboard::reviews_hits(g, "", "v1", 200 - v2),
                                    crate::dashboard::reviews_hits(g, "", "v2", v2),
                                ]
                            })
                            .collect();
                        car.report_with_hits(&mine, hits).await;
                    } else if !mine.is_empty() {
                        car.report(&mine).await;
                    }
                }
            }
        }
    };
    for _ in 0..10 {
        round().await;
    }
    let driver = {
        let stop = stop.clone();
        let round = round.clone();
        tokio::spawn(async move {
            while !stop.load(Ordering::Acquire) {
                round().await;
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        })
    };

    tracing::info!("browser test: launching chromium");
    let browser = Browser::launch(&chromium);
    let mut page = browser.new_page().await;
    // The token the page would ask for once, kept in the tab's sessionStorage: put it there (on
    // a page of the same origin) before the dashboard opens, as a user who typed it would have.
    page.navigate(&format!("http://{}/ready", h.http)).await;
    let token = h.token(serin_proto::auth::Role::Write);
    page.eval(&format!(
        "sessionStorage.setItem('serin-token', '{token}'), true"
    ))
    .await;
    page.navigate(&format!("http://{}/", h.http)).await;

    tracing::info!("browser test: page open");
    // 1. Every version is a node; edges carry rps, error % and p99.
    let nodes = page
        .until(
            "the page to draw the nine nodes",
            "document.querySelectorAll('[data-node]').length >= 9 && [...document.querySelectorAll('[data-node]')].map(n => n.dataset.node).sort()",
        )
        .await;
    let nodes: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    assert_eq!(
        nodes,
        [
            "default/details/v1",
            "default/frontend/v1",
            "default/productpage/v1",
            "default/ratings/v1",
            "default/ratings/v2",
            "default/reviews/v1",
            "default/reviews/v2",
            "default/reviews/v3",
            "unknown/unknown/unknown",
        ]
    );
    let label_of = |pair: &str| {
        format!(
            "(document.querySelector('[data-edge-label=\"{pair}\"]') || {{}}).textContent || ''"
        )
    };
    let v2_label = label_of("default/productpage/v1>default/reviews/v2");
    let text = page
        .until("the edge to reviews v2 to be labelled", &v2_label)
        .await;
    let text = text.as_str().unwrap().to_owned();
    assert!(
        text.contains("rps") && text.contains('%') && text.contains("p99"),
        "{text}"
    );
    let rate: f64 = text.split(' ').next().unwrap().parse().unwrap();
    assert!((16.0..=24.0).contains(&rate), "{text}");
    let mirror = page
        .until(
            "a dashed mirror edge",
            "document.querySelectorAll('path.edge.mirror').length",
        )
        .await;
    assert_eq!(mirror, json!(1));
    // Nothing but the control plane was asked for (no CDN).
    let foreign = page
        .eval("performance.getEntriesByType('resource').map(e => e.name).filter(n => !n.startsWith(location.origin))")
        .await;
    assert_eq!(foreign, json!([]));

    // mTLS: a padlock on the edges whose callers all came over mTLS, an amber one on the partly
    // secured edge, none on the plaintext ones; the labels still start with the rate.
    let locks = page
        .until(
            "padlocks on the mTLS edges",
            "(() => { const l = [...document.querySelectorAll('[data-edge-lock]')].map(l => l.dataset.edgeLock + ' ' + l.getAttribute('class')).sort(); return l.length >= 3 && l; })()",
        )
        .await;
    assert_eq!(
        locks,
        json!([
            "default/frontend/v1>default/productpage/v1>http1 lock mtls",
            "default/productpage/v1>default/details/v1>http1 lock partial",
            "default/productpage/v1>default/reviews/v1>http1 lock mtls",
        ])
    );
    let secured_paths = page
        .eval("[...document.querySelectorAll('path.edge.mtls')].map(p => p.dataset.edge).sort()")
        .await;
    assert_eq!(
        secured_paths,
        json!([
            "default/frontend/v1>default/productpage/v1",
            "default/productpage/v1>default/reviews/v1"
        ])
    );
    let v1_label = page
        .eval(&label_of("default/productpage/v1>default/reviews/v1"))
        .await;
    let v1_label = v1_label.as_str().unwrap_or_default().to_owned();
    assert!(
        v1_label.split(' ').next().unwrap().parse::<f64>().is_ok() && v1_label.contains("mTLS"),
        "the rate first, the principal in the hover text: {v1_label}"
    );
    // Clicking the padlock opens the edge's panel: mTLS, and the caller's SPIFFE ID.
    page.eval("document.querySelector('[data-edge-lock=\"default/productpage/v1>default/reviews/v1>http1\"]').dispatchEvent(new MouseEvent('click', {bubbles: true})), true")
        .await;
    let detail = page
        .until(
            "the edge panel with its security",
            "(() => { const s = document.getElementById('edge-security'); const p = [...document.querySelectorAll('#edge-principals [data-principal]')].map(p => p.dataset.principal); return s && p.length && {security: s.dataset.security, principals: p, title: document.getElementById('panel-title').textContent}; })()",
        )
        .await;
    assert_eq!(
        detail,
        json!({"security": "mtls", "principals": [PRODUCTPAGE_ID], "title": "productpage v1 → reviews v1"})
    );
    // The plaintext edge's panel says so, and names nobody.
    page.eval("document.querySelector('path.edge[data-edge=\"default/productpage/v1>default/reviews/v2\"]').dispatchEvent(new MouseEvent('click', {bubbles: true})), true")
        .await;
    let plain = page
        .until(
            "the plaintext edge's panel",
            "(() => { const s = document.getElementById('edge-security'); return s && document.getElementById('panel-title').textContent.endsWith('reviews v2') && {security: s.dataset.security, principals: document.querySelectorAll('[data-principal]').length}; })()",
        )
        .await;
    assert_eq!(plain, json!({"security": "none", "principals": 0}));
    page.eval("document.querySelector('[data-edge-lock=\"default/productpage/v1>default/details/v1>http1\"]').dispatchEvent(new MouseEvent('click', {bubbles: true})), true")
        .await;
    let partial = page
        .until(
            "the partly secured edge's panel",
            "(() => { const s = document.getElementById('edge-security'); return s && document.getElementById('panel-title').textContent.endsWith('details v1') && s.textContent; })()",
        )
        .await;
    let partial = partial.as_str().unwrap_or_default().to_owned();
    assert!(
        partial.contains("partly mTLS") && partial.contains("50"),
        "{partial}"
    );
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp is in target/")
        .join("screenshots");
    page.screenshot(&screenshots.join("dashboard-edge.png"))
        .await;

    tracing::info!("browser test: drawn");
    // 2. Shift traffic: the label follows without a reload.
    v2_rate.store(100, Ordering::Release);
    page.until(
        "the edge label to show the new rate",
        &format!("(() => {{ const t = {v2_label}; const r = parseFloat(t); return r >= 80 && r <= 120 && t; }})()"),
    )
    .await;

    tracing::info!("browser test: live update seen");
    // 3. Open reviews, set 50/50 in the page, confirm; the policy follows.
    page.eval("document.querySelector('[data-service=\"default/reviews\"] rect.box').dispatchEvent(new MouseEvent('click', {bubbles: true})), true")
        .await;
    page.until("the release panel", "document.getElementById('apply-weights') && document.querySelector('tr[data-version=\"v2\"]') && true")
        .await;
    // The default route's hits next to its configured split (90/10; the traffic now sends half
    // of it to v2, so the observed share is above the configured one).
    let hits = page
        .until(
            "the default route's hits in the panel",
            "(() => { const h = document.querySelector('[data-hits=\"\"]'); return h && Number(h.dataset.total) > 0 && h.parentElement.textContent; })()",
        )
        .await;
    let hits = hits.as_str().unwrap_or_default().to_owned();
    assert!(
        hits.contains("configured 90%") && hits.contains("configured 10% · observed"),
        "{hits}"
    );
    page.eval(
        "for (const [v, w] of [['v1', 50], ['v2', 50], ['v3', 0]]) { const el = document.querySelector(`input[data-weight=\"${v}\"]`); el.value = w; el.dispatchEvent(new Event('input', {bubbles: true})); } document.getElementById('apply-weights').click(); true",
    )
    .await;
    page.until("the confirmation dialog", "!document.getElementById('modal').hidden && document.getElementById('modal-text').textContent").await;
    page.eval("document.getElementById('confirm-ok').click(), true")
        .await;
    let weights = eventually(
        "the weights to reach the policy",
        Duration::from_secs(20),
        || {
            let mut admin = admin.clone();
            async move {
                let p = admin
                    .get_policy(v1::GetPolicyRequest {
                        name: "reviews".into(),
                        ..Default::default()
                    })
                    .await
                    .ok()?
                    .into_inner()
                    .policy?;
                let route = p.spec?.default?.route;
                let w: Vec<(String, u32)> =
                    route.into_iter().map(|w| (w.version, w.weight)).collect();
                (w.iter().any(|(v, n)| v == "v2" && *n == 50)).then_some(w)
            }
        },
    )
    .await;
    assert_eq!(
        weights,
        [
            ("v1".to_owned(), 50),
            ("v2".to_owned(), 50),
            ("v3".to_owned(), 0)
        ]
    );
    // The new generation in the panel, once every proxy has acknowledged it.
    page.until(
        "the panel to show generation 2 with every proxy of reviews in sync",
        "(() => { const t = document.getElementById('panel-body').textContent; \
         return t.includes('generation 2') && t.includes('proxies in sync 3/3') \
         && document.getElementById('toast').textContent; })()",
    )
    .await;
    tracing::info!("browser test: weights reached the policy");
    // 4. A screenshot to look at.
    let path = screenshots.join("dashboard.png");
    page.screenshot(&path).await;
    tracing::info!(path = %path.display(), "screenshot saved");
    assert!(
        page.exceptions.is_empty(),
        "the page threw: {:?}",
        page.exceptions
    );

    // 5. Big meshes stay responsive: 200 services (400 versions) and 1000 edges in eight tiers,
    // drawn by the page's own code (the live stream is closed so it does not replace them).
    let timing = page
        .eval(
            r#"(() => {
  state.source.close();
  const nodes = [], edges = [];
  for (let s = 0; s < 200; s++) for (const v of ["v1", "v2"])
    nodes.push({id: `default/svc-${s}/${v}`, namespace: "default", service: `svc-${s}`, version: v, ready_endpoints: 1, proxies: 1, external: false});
  for (let i = 0; i < 1000; i++) {
    const a = i % 175, b = 25 * (Math.floor(a / 25) + 1) + (i * 7) % 25;
    edges.push({source: `default/svc-${a}/v1`, destination: `default/svc-${b}/v${1 + i % 2}`, protocol: "http1", mirror: i % 50 === 0,
      reported_by: "inbound", rps: 1 + i % 50, requests: 100, error_rate: (i % 10) / 100, p50_ms: 3, p95_ms: 9, p99_ms: 20,
      received_bytes_per_second: 1, sent_bytes_per_second: 1, response_codes: {"200": 100}, grpc_statuses: {},
      version_fallbacks: 0, active_connections: 0, mirror_outcomes: {},
      mtls: i % 3 === 0, mtls_fraction: i % 3 === 0 ? 1 : 0, source_principals: i % 3 === 0 ? [`spiffe://cluster.local/ns/default/sa/svc-${a}`] : []});
  }
  state.graph = {time_ms: Date.now(), window_seconds: 10, nodes, edges};
  let t = performance.now(); render(); const first = performance.now() - t;
  t = performance.now();
  for (let i = 0; i < 5; i++) { state.graph = {...state.graph, edges: edges.map((e) => ({...e, rps: e.rps * (1 + i / 10)}))}; render(); }
  const update = (performance.now() - t) / 5;
  return {first, update, nodes: document.querySelectorAll("[data-node]").length, edges: document.querySelectorAll("path.edge").length,
    locks: document.querySelectorAll("[data-edge-lock]").length};
})()"#,
        )
        .await;
    tracing::info!(%timing, "200 services, 1000 edges drawn");
    assert_eq!(
        (timing["nodes"].as_u64(), timing["edges"].as_u64()),
        (Some(400), Some(1000))
    );
    assert_eq!(
        timing["locks"].as_u64(),
        Some(334),
        "a padlock per mTLS edge, labelled or not"
    );
    // The draw times are logged above, not asserted: speed is for benchmarks, not tests (a
    // loaded CI machine would make any bound flaky). Here, typically tens of ms per update.
    page.screenshot(&screenshots.join("dashboard-200-services.png"))
        .await;
    assert!(
        page.exceptions.is_empty(),
        "the page threw: {:?}",
        page.exceptions
    );

    stop.store(true, Ordering::Release);
    driver.await.unwrap();
    for s in subscribers {
        s.abort();
    }
    // Chromium closes itself and its children; the drop only waits for it.
    page.close_browser().await;
    drop(browser);
}
