//! Root end-to-end test of the dashboard in a real browser against a real local mesh: one test
//! shows that what the page shows is the traffic, and that a weight change made in the page
//! reaches the policy and the traffic.
//!
//! The mesh (`serin-local`'s `Cluster`: the control plane in its pod, injected pods with real
//! capture rules and real `serin-proxy` sidecars reporting telemetry) is in Bookinfo's shape,
//! every app a `serin-demo-app`: loadgen → productpage v1 → details v1 and reviews v1/v2;
//! reviews v2 → ratings v1. Reviews starts at 100/0, so v2 and ratings get nothing. A background
//! load (bounded: chunks of 2 s, 3 minutes at most) runs from loadgen through its sidecar while
//! Debian's Chromium, headless and driven over the DevTools protocol (`serin_tests::cdp`), has
//! the dashboard open:
//!
//! 1. the page draws every version node and labels the edges with numbers, at the generated rate,
//!    each edge with a green padlock (all of its traffic mTLS, every sidecar certified first);
//! 2. the load triples: the entry edge's label follows without a reload;
//! 3. reviews' panel in the page: 50/50, confirmed in the dialog; the policy (`/api/services`)
//!    has it as a new generation, productpage's sidecar routes by it, and the page draws the new
//!    edges (productpage → reviews v2, reviews v2 → ratings) live;
//! 4. the traffic: a measured load's answers, and the hits productpage's sidecar counted for the
//!    new generation, are split 50/50 within 3σ of the binomial (`serin_tests::shares`); no
//!    request of any load failed, the weight change included.
//!
//! Screenshots in `target/screenshots/mesh-*.png`. Skipped, with a printed reason, without root
//! or without Chromium (`scripts/test` installs it). Needs the binaries first: `cargo build
//! --bins -p serin-control -p serin-proxy -p serin-iptables -p serin-local`.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use serde_json::{Value, json};
use serin_local::cluster::Cluster;
use serin_local::testing::{eventually, init_tracing, skip_unless_root};
use serin_local::traffic::{TrafficOptions, TrafficReport};
use serin_tests::cdp::{self, Browser, Page};
use serin_tests::cluster::{APP_PORT, Dashboard, TestCluster, demo_app, demo_pod};
use serin_tests::shares::{assert_shares, share};

/// Host ports forwarded to the control plane (gRPC, then HTTP), apart from every other test's.
const GRPC_PORT: u16 = 25450;
const NAMESPACE: &str = "bookinfo";
/// The background load: first this many requests per second, then three times as many.
const RATE: u32 = 10;
/// The background load runs in chunks this long, at most this many.
const CHUNK: Duration = Duration::from_secs(2);
const MAX_CHUNKS: u32 = 90;
/// The measured load after the weight change.
const MEASURED_RATE: u32 = 40;
const MEASURED_FOR: Duration = Duration::from_secs(10);
/// How long the page may take to show a change of the 10 s window.
const WINDOW_WAIT: Duration = Duration::from_secs(40);

/// Load from loadgen to productpage in the background, at a rate that can change, until
/// [`Load::finish`] (or drop, or [`MAX_CHUNKS`]).
struct Load {
    rate: Arc<AtomicU32>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<Vec<TrafficReport>>>,
}

impl Load {
    fn start(state_dir: PathBuf, rate: u32) -> Load {
        let rate = Arc::new(AtomicU32::new(rate));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (rate, stop) = (rate.clone(), stop.clone());
            std::thread::spawn(move || {
                let cluster = Cluster::open(&state_dir).expect("open the mesh for the load");
                let mut reports = Vec::new();
                for _ in 0..MAX_CHUNKS {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    let mut options = traffic_options();
                    options.rate = rate.load(Ordering::Acquire);
                    options.duration = CHUNK;
                    let report = cluster
                        .traffic("loadgen", &demo_app(), &options)
                        .expect("background traffic from loadgen");
                    reports.push(report);
                }
                reports
            })
        };
        Load {
            rate,
            stop,
            thread: Some(thread),
        }
    }

    fn set_rate(&self, rate: u32) {
        self.rate.store(rate, Ordering::Release);
    }

    /// Stops the load; every chunk's report.
    fn finish(mut self) -> Vec<TrafficReport> {
        self.stop.store(true, Ordering::Release);
        let thread = self.thread.take().expect("the load's thread");
        thread
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn traffic_options() -> TrafficOptions {
    TrafficOptions::new(format!("http://productpage:{APP_PORT}/productpage"))
}

/// Writes a line straight to stderr, so that the measured numbers show even for passing tests.
fn note(line: &str) {
    let _ = std::io::stderr().write_all(format!("{line}\n").as_bytes());
}

/// A node id of the mesh's namespace.
fn node(service: &str, version: &str) -> String {
    format!("{NAMESPACE}/{service}/{version}")
}

/// JavaScript: the text of the label of the edge from `source` to `destination` ("" if none).
fn label(source: &str, destination: &str) -> String {
    format!(
        "((document.querySelector('[data-edge-label=\"{source}>{destination}\"] text') || {{}}).textContent || '')"
    )
}

/// JavaScript: the label's text once its rate (its first number) is within `low..=high`.
fn label_rate_within(source: &str, destination: &str, low: f64, high: f64) -> String {
    let text = label(source, destination);
    format!(
        "(() => {{ const t = {text}; const r = parseFloat(t); return r >= {low} && r <= {high} && t; }})()"
    )
}

/// Makes every request of the page carry [`Dashboard::write_headers`] (the write token).
async fn authorize(page: &mut Page, dashboard: &Dashboard) {
    let headers: serde_json::Map<String, Value> = dashboard
        .write_headers()
        .into_iter()
        .map(|(name, value)| (name, Value::String(value)))
        .collect();
    page.set_extra_headers(Value::Object(headers)).await;
}

/// The default route's hits per version that productpage's sidecar counted for the current
/// generation of reviews (over 10 minutes): (generation, v1, v2).
fn reviews_hits(dashboard: &Dashboard) -> (u64, u64, u64) {
    let s = dashboard.get(&format!(
        "/api/services/reviews?namespace={NAMESPACE}&window=10m"
    ));
    let versions = &s["policy"]["default_hits"]["versions"];
    let hits = |v: &str| {
        versions
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["version"] == v)
            .and_then(|x| x["hits"].as_u64())
            .unwrap_or(0)
    };
    let generation = s["rule_hits"]["generation"].as_u64().unwrap_or(0);
    (generation, hits("v1"), hits("v2"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_weight_change_made_in_the_dashboard_reaches_the_policy_and_the_traffic() {
    init_tracing();
    let test = "a_weight_change_made_in_the_dashboard_reaches_the_policy_and_the_traffic";
    if skip_unless_root(test) {
        return;
    }
    let Some(chromium) = cdp::chromium() else {
        note(&format!("skipping {test}: {}", cdp::NO_CHROMIUM));
        return;
    };
    let screenshots = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target/tmp is in target/")
        .join("screenshots");

    let mesh = TestCluster::up("browser", GRPC_PORT);
    let cluster = &mesh.cluster;
    let dashboard = mesh.dashboard();
    cluster
        .create_namespace(NAMESPACE, true)
        .expect("namespace");
    let mut loadgen = demo_pod(NAMESPACE, "loadgen", "v1", &[]);
    loadgen.name = "loadgen".into();
    cluster
        .deploy(&[
            demo_pod(NAMESPACE, "ratings", "v1", &[]),
            demo_pod(NAMESPACE, "details", "v1", &[]),
            demo_pod(NAMESPACE, "reviews", "v1", &[]),
            demo_pod(NAMESPACE, "reviews", "v2", &["ratings"]),
            demo_pod(NAMESPACE, "productpage", "v1", &["details", "reviews"]),
            loadgen,
        ])
        .expect("deploy");

    // Reviews v1 takes everything at first, in productpage's sidecar before any traffic.
    let first = dashboard.send(
        "POST",
        &format!("/api/services/reviews/weights?namespace={NAMESPACE}"),
        r#"{"weights":[{"version":"v1","weight":100},{"version":"v2","weight":0}]}"#,
    );
    let first = first["generation"].as_u64().expect("a generation");
    let routed_by = |generation: u64| {
        eventually(
            &format!("productpage's sidecar to route reviews by generation {generation}"),
            Duration::from_secs(20),
            || {
                let routes = mesh.sidecar_get("productpage-v1", "/routes");
                routes
                    .contains(&format!("\"generation\": {generation}"))
                    .then_some(())
            },
        )
    };
    routed_by(first);
    let load = Load::start(mesh.state_dir(), RATE);

    let browser = Browser::launch(&chromium);
    let mut page = browser.new_page().await;
    authorize(&mut page, &dashboard).await;
    page.navigate(&dashboard.url()).await;

    // 1. Every version a node; the edges labelled with rps, error % and p99 at the load's rate.
    let loadgen = node("loadgen", "v1");
    let productpage = node("productpage", "v1");
    let [details, reviews_v1, reviews_v2, ratings] = [
        node("details", "v1"),
        node("reviews", "v1"),
        node("reviews", "v2"),
        node("ratings", "v1"),
    ];
    let nodes = page
        .until(
            "the page to draw the six version nodes",
            &format!(
                "(() => {{ const n = [...document.querySelectorAll('[data-node^=\"{NAMESPACE}/\"]')].map(n => n.dataset.node).sort(); return n.length >= 6 && n; }})()"
            ),
        )
        .await;
    assert_eq!(
        nodes,
        json!([
            &details,
            &loadgen,
            &productpage,
            &ratings,
            &reviews_v1,
            &reviews_v2
        ])
    );
    // Gone if the page reloads: every later check also shows it did not.
    page.eval("window.serinTestMarker = 'not reloaded', true")
        .await;
    let not_reloaded = "window.serinTestMarker === 'not reloaded'";
    let rate = f64::from(RATE);
    let entry = page
        .until_within(
            "the entry edge labelled at the load's rate (±30 %)",
            WINDOW_WAIT,
            &label_rate_within(&loadgen, &productpage, 0.7 * rate, 1.3 * rate),
        )
        .await;
    let entry = entry.as_str().unwrap_or_default().to_owned();
    assert!(
        entry.contains("rps") && entry.contains('%') && entry.contains("p99"),
        "{entry}"
    );
    for (source, destination) in [(&productpage, &details), (&productpage, &reviews_v1)] {
        page.until_within(
            &format!("the edge {source} > {destination} at the load's rate (±30 %)"),
            WINDOW_WAIT,
            &label_rate_within(source, destination, 0.7 * rate, 1.3 * rate),
        )
        .await;
    }
    let absent = page
        .eval(&format!(
            "[...document.querySelectorAll('path.edge')].map(e => e.dataset.edge).filter(e => e.includes('{reviews_v2}'))"
        ))
        .await;
    assert_eq!(absent, json!([]), "reviews v2 is weighted 0");
    // Every pod is meshed and each sidecar held its certificate before its first request (the
    // local mesh starts sidecars on the control plane's mTLS port): the three edges carry a
    // green padlock (all of their traffic mTLS), none an amber one (partly plaintext).
    let locks = page
        .until_within(
            "padlocks on the three meshed edges",
            WINDOW_WAIT,
            &format!(
                "(() => {{ const l = [...document.querySelectorAll('[data-edge-lock^=\"{NAMESPACE}/\"]')].map(l => l.dataset.edgeLock.split('>').slice(0, 2).join('>') + ' ' + l.getAttribute('class')).sort(); return l.length >= 3 && l; }})()"
            ),
        )
        .await;
    assert_eq!(
        locks,
        json!([
            format!("{loadgen}>{productpage} lock mtls"),
            format!("{productpage}>{details} lock mtls"),
            format!("{productpage}>{reviews_v1} lock mtls"),
        ])
    );
    note(&format!("browser: entry edge at {RATE} rps: {entry}"));
    page.screenshot(&screenshots.join("mesh-1-traffic.png"))
        .await;

    // 2. Three times the load: the label follows, without a reload.
    load.set_rate(3 * RATE);
    let tripled = page
        .until_within(
            "the entry edge's label to follow the tripled load (±30 %)",
            WINDOW_WAIT,
            &format!(
                "{not_reloaded} && {}",
                label_rate_within(&loadgen, &productpage, 2.1 * rate, 3.9 * rate)
            ),
        )
        .await;
    note(&format!(
        "browser: entry edge at {} rps: {tripled}",
        3 * RATE
    ));

    // 3. Reviews' panel: 50/50, confirmed in the dialog.
    page.eval(&format!(
        "document.querySelector('[data-service=\"{NAMESPACE}/reviews\"] rect.box').dispatchEvent(new MouseEvent('click', {{bubbles: true}})), true"
    ))
    .await;
    page.until(
        "reviews' release panel with its weights",
        "document.getElementById('apply-weights') && document.querySelector('input[data-weight=\"v2\"]') && true",
    )
    .await;
    page.eval(
        "for (const [v, w] of [['v1', 50], ['v2', 50]]) { const el = document.querySelector(`input[data-weight=\"${v}\"]`); el.value = w; el.dispatchEvent(new Event('input', {bubbles: true})); } document.getElementById('apply-weights').click(); true",
    )
    .await;
    let dialog = page
        .until(
            "the confirmation dialog",
            "!document.getElementById('modal').hidden && document.getElementById('modal-text').textContent",
        )
        .await;
    let dialog = dialog.as_str().unwrap_or_default().to_owned();
    assert!(
        dialog.contains("v1: 50%") && dialog.contains("v2: 50%"),
        "{dialog}"
    );
    // Nothing is stored before the confirmation.
    assert_eq!(
        reviews_hits(&dashboard).0,
        first,
        "changed before confirming"
    );
    page.eval("document.getElementById('confirm-ok').click(), true")
        .await;
    let toast = page
        .until(
            "the page to say the new generation is stored",
            "(() => { const t = document.getElementById('toast'); return !t.hidden && t.textContent.includes('stored') && t.textContent; })()",
        )
        .await;
    note(&format!("browser: {toast}"));

    // The policy has it, as a new generation, and productpage's sidecar routes by it.
    let service = dashboard.get(&format!("/api/services/reviews?namespace={NAMESPACE}"));
    let second = service["policy"]["generation"]
        .as_u64()
        .expect("reviews' policy generation");
    assert!(second > first, "{service}");
    assert_eq!(
        service["policy"]["default"],
        json!([{"version": "v1", "weight": 50}, {"version": "v2", "weight": 50}]),
        "{service}"
    );
    routed_by(second);

    // The page draws the new edges live, the panel the new split.
    for (source, destination) in [(&productpage, &reviews_v2), (&reviews_v2, &ratings)] {
        page.until_within(
            &format!("the new edge {source} > {destination} to be drawn with a rate"),
            WINDOW_WAIT,
            &format!(
                "{not_reloaded} && {}",
                label_rate_within(source, destination, 0.1, 1000.0)
            ),
        )
        .await;
    }
    let panel = page
        .until(
            "the panel to show the new generation's split",
            &format!(
                "(() => {{ const t = document.getElementById('panel-body').textContent; return t.includes('generation {second}') && t.includes('configured 50%') && t; }})()"
            ),
        )
        .await;
    assert!(panel.is_string());
    // The panel's hits: the new generation's split as productpage's sidecar counts it.
    let hits = page
        .until_within(
            "the panel to show the new generation's hits on both versions",
            WINDOW_WAIT,
            "(() => { const h = document.querySelector('[data-hits=\"\"]'); return h && Number(h.dataset.total) >= 20 && h.parentElement.textContent; })()",
        )
        .await;
    note(&format!("browser: panel: {hits}"));
    page.screenshot(&screenshots.join("mesh-2-after-50-50.png"))
        .await;
    assert!(
        page.exceptions.is_empty(),
        "the page threw: {:?}",
        page.exceptions
    );

    // No request of the background load failed, the weight change included.
    let reports = load.finish();
    let (sent, ok) = reports
        .iter()
        .fold((0, 0), |(s, o), r| (s + r.sent, o + r.ok));
    note(&format!(
        "browser: background load: {ok} of {sent} ok in {} chunks",
        reports.len()
    ));
    assert_eq!(ok, sent, "{reports:?}");

    // 4. The traffic follows the new weights: what answered, and what productpage's sidecar
    // counted for the new generation, both within 3σ of 50/50.
    assert_shares(|| {
        // The background load's last reports settle first (two equal readings 2 s apart).
        let before = eventually(
            "the sidecar's hit counts to settle",
            Duration::from_secs(20),
            || {
                let a = reviews_hits(&dashboard);
                std::thread::sleep(Duration::from_secs(2));
                (reviews_hits(&dashboard) == a).then_some(a)
            },
        );
        assert_eq!(before.0, second, "hits of the new generation");
        let mut options = traffic_options();
        options.rate = MEASURED_RATE;
        options.duration = MEASURED_FOR;
        let report = cluster
            .traffic("loadgen", &demo_app(), &options)
            .expect("measured traffic");
        assert_eq!(report.ok, report.sent, "{report:?}");
        let (v1, v2) = (report.count("reviews", "v1"), report.count("reviews", "v2"));
        assert_eq!(v1 + v2, report.sent, "{report:?}");
        let counted = eventually(
            "productpage's sidecar to report the measured requests' hits",
            Duration::from_secs(20),
            || {
                let (_, h1, h2) = reviews_hits(&dashboard);
                let counted = (h1.saturating_sub(before.1), h2.saturating_sub(before.2));
                (counted.0 + counted.1 >= report.sent).then_some(counted)
            },
        );
        assert_eq!(
            counted,
            (v1, v2),
            "the sidecar's hits are the requests the versions answered"
        );
        vec![share(
            "50/50 set in the page: reviews v2 (answers = productpage's sidecar's hits)",
            v2,
            report.sent,
            0.5,
        )]
    });

    page.close_browser().await;
    drop(browser);
}
