//! The gray-release walk-through of the README through `serinctl` alone (root): `up`, a
//! namespace with injection, Bookinfo's pods started with `serinctl run` (every service a
//! `serin-demo-app` with its sidecar), then each step of a gray release of `reviews`: 80/20, 20/80
//! under continuous traffic with no failed request, user-match to v3 by cookie, header, URL
//! prefix and client OS, a mirror, take-over, rollback; and `down`, after which nothing of the
//! mesh is left. Every step's effect is checked with real requests from a pod: `serinctl exec
//! client -- curl` through productpage (which passes the path, `end-user`, cookies and the
//! User-Agent on to reviews), and the demo app's traffic generator for the splits.
//!
//! Host ports 25410/25411 and its own state directory, so it runs beside the other tests.

use std::collections::BTreeMap;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::local::{TestMesh, demo_app, leftovers, skip_unless_root};

/// The control plane's host port for this test (the dashboard's is the next one).
const GRPC_PORT: u16 = 25410;
/// The namespace of the walk-through.
const NS: &str = "bookinfo";
/// Bound on anything that should happen promptly (the machine is small and shared).
const LONG: Duration = Duration::from_secs(30);
/// An iPhone, an Android phone and a Windows desktop, as `../shared/data/user-agents.tsv`
/// classifies them.
const IPHONE: &str = "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.1 Mobile/15E148 Safari/604.1";
const ANDROID: &str = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36";
const WINDOWS: &str = "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Safari/537.36";

/// The walk-through's mesh: [`TestMesh`] plus the policy verbs on its control plane.
struct Walk {
    mesh: TestMesh,
}

impl Walk {
    /// `serinctl --control-plane <this mesh's> -n bookinfo ARGS`, which must succeed; stdout.
    fn policy_verb(&self, args: &[&str]) -> String {
        let url = format!("http://127.0.0.1:{GRPC_PORT}");
        let mut all = vec!["--control-plane", &url, "-n", NS];
        all.extend_from_slice(args);
        self.mesh.ok(&all)
    }

    /// Every bookinfo proxy's acked snapshot version and whether it is in sync, by pod.
    fn proxies(&self) -> BTreeMap<String, (String, bool)> {
        let text = self.policy_verb(&["get", "proxies", "-o", "json"]);
        let json: serde_json::Value = serde_json::from_str(&text).expect("serinctl JSON");
        json.as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                (
                    p["pod"].as_str().unwrap_or_default().to_owned(),
                    (
                        p["ackedVersion"].as_str().unwrap_or_default().to_owned(),
                        p["inSync"].as_bool().unwrap_or_default(),
                    ),
                )
            })
            .collect()
    }

    /// Runs the policy verb `args` and waits until every proxy acked a new snapshot (the
    /// policy's), all in sync; the verb's stdout.
    fn change(&self, args: &[&str]) -> String {
        let before = self.proxies();
        let out = self.policy_verb(args);
        poll(
            &format!("every proxy acks the snapshot of {args:?}"),
            || {
                let now = self.proxies();
                let pushed = now.len() == before.len()
                    && now.iter().all(|(pod, (version, in_sync))| {
                        *in_sync && before.get(pod).is_some_and(|(old, _)| old != version)
                    });
                pushed.then_some(())
            },
        );
        out
    }

    /// `curl` in the client pod to productpage with `headers`: the version of reviews that
    /// answered productpage's call.
    fn reviews_version(&self, path: &str, headers: &[(&str, &str)]) -> String {
        let url = format!("http://productpage:9080{path}");
        let mut argv = vec![
            "exec".to_owned(),
            "client".to_owned(),
            "--".to_owned(),
            "curl".to_owned(),
            "-sS".to_owned(),
            "--fail".to_owned(),
            "--max-time".to_owned(),
            "20".to_owned(),
        ];
        for (name, value) in headers {
            argv.push("-H".to_owned());
            argv.push(format!("{name}: {value}"));
        }
        argv.push(url);
        let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
        let body = self.mesh.ok(&argv);
        let json: serde_json::Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("productpage's answer is not JSON ({e}): {body}"));
        let reviews = json["calls"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| {
                c["target"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("reviews"))
            })
            .unwrap_or_else(|| panic!("no call to reviews in {json}"));
        assert_eq!(
            reviews["status"], 200,
            "productpage's call to reviews: {json}"
        );
        assert_eq!(reviews["response"]["service"], "reviews", "{json}");
        reviews["response"]["version"]
            .as_str()
            .unwrap_or_else(|| panic!("no reviews version in {json}"))
            .to_owned()
    }

    /// Asserts that `n` requests with `headers` to `path` are all (or, `!to`, none) answered by
    /// `version` of reviews.
    fn expect(&self, what: &str, path: &str, headers: &[(&str, &str)], version: &str, to: bool) {
        for i in 0..5 {
            let answer = self.reviews_version(path, headers);
            assert_eq!(
                answer == version,
                to,
                "{what}: request {i} answered by reviews {answer} (expected {}{version})",
                if to { "" } else { "not " }
            );
        }
    }

    /// Starts the demo app's traffic generator in the client pod, to productpage, for
    /// `seconds` at 40 requests/s from anonymous users with desktop and mobile User-Agents.
    fn traffic(&self, seconds: u32) -> Traffic {
        let app = demo_app();
        let duration = format!("{seconds}s");
        let child = self
            .mesh
            .command(&[
                "exec",
                "client",
                "--",
                &app,
                "traffic",
                "--url",
                "http://productpage:9080/productpage",
                "--rate",
                "40",
                "--duration",
                &duration,
                "--concurrency",
                "4",
                "--user",
                "",
            ])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the traffic generator");
        Traffic {
            child: Some(child),
            deadline: Instant::now() + Duration::from_secs(u64::from(seconds)) + LONG,
        }
    }

    /// How many requests reviews-v1 has logged (the demo app logs one line per request).
    fn served_by(&self, pod: &str) -> usize {
        self.mesh
            .ok(&["logs", pod])
            .lines()
            .filter(|l| l.contains("request method="))
            .count()
    }
}

/// A traffic generator run; killed if still running when dropped.
struct Traffic {
    child: Option<Child>,
    deadline: Instant,
}

impl Traffic {
    /// Waits for the report (JSON): answers by "service version", failures.
    fn report(mut self) -> serde_json::Value {
        let mut child = self.child.take().expect("not reported yet");
        loop {
            if child
                .try_wait()
                .expect("wait for the traffic generator")
                .is_some()
            {
                break;
            }
            if Instant::now() > self.deadline {
                let _ = child.kill();
                panic!("the traffic generator did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let out = child.wait_with_output().expect("traffic generator output");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "traffic generator failed ({}): {}{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("traffic report is not JSON ({e}): {text}"))
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls `check` every 200 ms until it returns `Some`, for at most [`LONG`].
fn poll<T>(what: &str, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + LONG;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {LONG:?} waiting: {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Answers of `service version` in a traffic report.
fn answers(report: &serde_json::Value, service: &str, version: &str) -> u64 {
    report["versions"][format!("{service} {version}")]
        .as_u64()
        .unwrap_or_default()
}

/// Asserts that no request of a traffic report failed.
fn no_failures(what: &str, report: &serde_json::Value) {
    assert_eq!(
        report["failed"], 0,
        "{what}: requests failed: {}",
        report["failures"]
    );
    assert!(
        report["sent"].as_u64().unwrap_or_default() > 0,
        "{what}: nothing sent: {report}"
    );
}

/// Whether reviews' share of `version` in `report` is within 3σ of `p` (prints the numbers).
fn within_3_sigma(what: &str, report: &serde_json::Value, version: &str, p: f64) -> bool {
    let n: u64 = ["v1", "v2", "v3"]
        .iter()
        .map(|v| answers(report, "reviews", v))
        .sum();
    let hits = answers(report, "reviews", version);
    let (mean, three_sigma) = (n as f64 * p, 3.0 * (n as f64 * p * (1.0 - p)).sqrt());
    eprintln!(
        "walk-through: {what}: {version} {hits} of {n}, expected {mean:.0} ± {three_sigma:.0}"
    );
    assert!(n >= 50, "{what}: only {n} answers from reviews: {report}");
    (hits as f64 - mean).abs() <= three_sigma
}

/// Asserts that reviews' share of `version` in the traffic report `measure` returns is within
/// 3σ of `p`. A correct split lands outside 3σ 0.27 % of the time, so a share outside is
/// measured once more with fresh traffic and the second measurement decides (a wrong split
/// fails both).
fn share(what: &str, version: &str, p: f64, mut measure: impl FnMut() -> serde_json::Value) {
    if within_3_sigma(what, &measure(), version, p) {
        return;
    }
    eprintln!("walk-through: {what}: outside 3σ; measuring once more, the second one decides");
    let report = measure();
    assert!(
        within_3_sigma(what, &report, version, p),
        "{what}: reviews' share of {version} is outside 3σ of {p} twice in a row: {report}"
    );
}

#[test]
fn gray_release_walk_through_with_serinctl_only() {
    if skip_unless_root("gray_release_walk_through_with_serinctl_only") {
        return;
    }
    let mut walk = Walk {
        mesh: TestMesh::new(),
    };
    let app = demo_app();

    // up, a namespace with injection, Bookinfo's pods (callees first) and a client pod.
    walk.mesh.up(GRPC_PORT);
    assert_eq!(
        walk.mesh
            .ok(&["namespace", "create", NS, "--injection", "enabled"]),
        format!("namespace/{NS} created (injection enabled)\n")
    );
    for (name, service, version, calls) in [
        ("ratings-v1", "ratings", "v1", &[][..]),
        ("details-v1", "details", "v1", &[]),
        ("reviews-v1", "reviews", "v1", &[]),
        ("reviews-v2", "reviews", "v2", &["ratings:9080"]),
        ("reviews-v3", "reviews", "v3", &["ratings:9080"]),
        (
            "productpage-v1",
            "productpage",
            "v1",
            &["details:9080", "reviews:9080"],
        ),
        ("client", "client", "v1", &[]),
    ] {
        let mut argv = vec![
            "run",
            name,
            "-n",
            NS,
            "--service",
            service,
            "--version",
            version,
            "--port",
            "9080",
            "--",
            &app,
            "--port",
            "9080",
        ];
        for call in calls {
            argv.extend(["--call", call]);
        }
        let out = walk.mesh.ok(&argv);
        assert!(out.starts_with(&format!("pod/{name} running")), "{out}");
        assert!(!out.contains("no sidecar"), "{out}");
    }
    poll("all 7 proxies in sync", || {
        let proxies = walk.proxies();
        (proxies.len() == 7 && proxies.values().all(|(_, in_sync)| *in_sync)).then_some(())
    });

    // 1. v1 80% / v2 20%.
    let policy = walk.mesh.state_dir().with_file_name("reviews.yaml");
    std::fs::write(
        &policy,
        format!(
            "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {{name: reviews, namespace: {NS}}}
spec:
  service: reviews
  default:
    route: [{{version: v1, weight: 80}}, {{version: v2, weight: 20}}]
"
        ),
    )
    .unwrap();
    let out = walk.change(&["apply", "-f", &policy.display().to_string()]);
    assert_eq!(out, "policy/reviews created (generation 1)\n");
    share("80/20", "v2", 0.2, || {
        let report = walk.traffic(5).report();
        no_failures("80/20", &report);
        assert_eq!(answers(&report, "reviews", "v3"), 0, "{report}");
        report
    });

    // 2. 20/80 while traffic flows: not one request fails.
    let traffic = walk.traffic(10);
    let start = walk.served_by("productpage-v1");
    poll("traffic reaches productpage", || {
        (walk.served_by("productpage-v1") >= start + 40).then_some(())
    });
    let out = walk.change(&["canary", "reviews", "v2", "--weight", "80"]);
    assert!(out.contains("default v1 20%, v2 80%"), "{out}");
    let report = traffic.report();
    no_failures("the shift to 20/80 under traffic", &report);
    eprintln!("walk-through: 80/20 → 20/80 under traffic: {report}");
    share("20/80", "v2", 0.8, || {
        let report = walk.traffic(5).report();
        no_failures("20/80", &report);
        report
    });

    // 3. User-match to v3: by cookie, header, URL prefix and client OS.
    walk.change(&["route", "reviews", "v3", "--cookie", "canary=always"]);
    walk.expect(
        "cookie",
        "/productpage",
        &[("Cookie", "uid=7; canary=always")],
        "v3",
        true,
    );
    walk.expect(
        "other cookie",
        "/productpage",
        &[("Cookie", "canary=never")],
        "v3",
        false,
    );
    walk.change(&["route", "reviews", "v3", "--header", "end-user=jason"]);
    walk.expect(
        "header",
        "/productpage",
        &[("end-user", "jason")],
        "v3",
        true,
    );
    walk.expect(
        "other user",
        "/productpage",
        &[("end-user", "kim")],
        "v3",
        false,
    );
    walk.change(&["route", "reviews", "v3", "--uri-prefix", "/beta"]);
    walk.expect("URL prefix", "/beta/productpage", &[], "v3", true);
    walk.expect("other URL", "/productpage", &[], "v3", false);
    walk.change(&["route", "reviews", "v3", "--os", "ios,android"]);
    walk.expect("iOS", "/productpage", &[("User-Agent", IPHONE)], "v3", true);
    walk.expect(
        "Android",
        "/productpage",
        &[("User-Agent", ANDROID)],
        "v3",
        true,
    );
    walk.expect(
        "Windows",
        "/productpage",
        &[("User-Agent", WINDOWS)],
        "v3",
        false,
    );
    let rules = walk.policy_verb(&["get", "policies", "reviews", "-o", "json"]);
    let rules: serde_json::Value = serde_json::from_str(&rules).unwrap();
    assert_eq!(
        rules["spec"]["rules"].as_array().map(Vec::len),
        Some(4),
        "{rules}"
    );

    // 4. Mirror every request to v3: v3 gets copies with the -shadow host, clients see v1/v2.
    let out = walk.change(&["mirror", "reviews", "v3", "--percent", "100"]);
    assert!(out.contains("mirror v3 100%"), "{out}");
    walk.expect(
        "mirrored",
        "/productpage",
        &[("User-Agent", WINDOWS)],
        "v3",
        false,
    );
    let copies = poll("reviews-v3 logs mirror copies", || {
        let log = walk.mesh.ok(&["logs", "reviews-v3"]);
        let copies = log
            .lines()
            .filter(|l| l.contains("host=reviews-shadow") && l.contains("x-serin-mirror=\"1\""))
            .count();
        (copies >= 5).then_some(copies)
    });
    eprintln!("walk-through: mirror copies logged by reviews-v3: {copies}");
    walk.change(&["mirror", "reviews", "v3", "--percent", "0"]);

    // 5. v3 takes over, whatever the request.
    let out = walk.change(&["promote", "reviews", "v3"]);
    assert!(out.contains("default v3 100%; 0 rule(s)"), "{out}");
    walk.expect(
        "after take-over",
        "/productpage",
        &[("User-Agent", WINDOWS)],
        "v3",
        true,
    );
    walk.expect(
        "after take-over",
        "/productpage",
        &[("Cookie", "canary=never")],
        "v3",
        true,
    );
    let report = walk.traffic(3).report();
    no_failures("after take-over", &report);
    assert_eq!(
        answers(&report, "reviews", "v1") + answers(&report, "reviews", "v2"),
        0,
        "{report}"
    );

    // 6. Rollback: the rules and the 20/80 split are back.
    let out = walk.change(&["rollback", "reviews"]);
    assert!(out.contains("rolled back"), "{out}");
    walk.expect(
        "after rollback",
        "/productpage",
        &[("User-Agent", WINDOWS)],
        "v3",
        false,
    );
    walk.expect(
        "cookie after rollback",
        "/productpage",
        &[("Cookie", "canary=always")],
        "v3",
        true,
    );

    // down: nothing of the mesh is left.
    let run_id = walk.mesh.run_id().to_owned();
    let down = walk.mesh.ok(&["down"]);
    assert!(
        down.starts_with(&format!("removed local mesh {run_id}:")),
        "{down}"
    );
    assert_eq!(leftovers(&run_id), Vec::<String>::new());
    assert!(!walk.mesh.state_dir().exists());
}
