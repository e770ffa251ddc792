//! Root end-to-end test of the control plane driving real sidecars: `serin-control` in its own
//! pod of a local mesh, two `reviews` server pods (v1, v2) registered with RegisterWorkload under
//! leases, and a client pod; every app pod has real capture rules (`serin-iptables`) and a real
//! `serin-proxy` running as uid 1337 with `--control-plane`. Traffic goes from the client by the
//! service VIP; `serinctl` applies a policy and reports every proxy in sync; the control plane is
//! killed (traffic keeps flowing) and restarted on the same store (the sidecars resubscribe, in
//! sync with the same version). Skipped, with a printed reason, without root.
//!
//! The test checks that the proxies acknowledge the new snapshot and that traffic keeps flowing;
//! how the sidecar routes by the policy is tested in `proxy/tests/routing.rs` (in process) and in
//! `routing.rs` here (root, end to end).
//!
//! Needs the binaries first: `cargo build --bins -p serin-proxy -p serin-iptables -p serin-control
//! -p serinctl` into the same target directory.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream as StdTcpStream};
use std::time::Duration;

use serin_local::testing::{eventually, init_tracing, skip_unless_root};
use serin_local::{Mesh, Pod};
use serin_proto::v1;
use serin_tests::pods::{
    self, ADMIN_TOKEN, CONTROL_PLANE_PORT as GRPC_PORT, Files, admin_get, apply_capture,
    start_control_plane, start_sidecar, workload,
};

/// The port `reviews` serves on (VIP and pods).
const PORT: u16 = 9080;
/// Generous bound for what should happen promptly.
const LONG: Duration = Duration::from_secs(30);

/// A tiny HTTP/1.1 app in `pod` on `PORT` (bound inside the pod, served by a thread of this
/// process): every request gets `200` with the pod's name.
fn start_app(pod: &Pod) {
    let listener = pod
        .run_in(|| std::net::TcpListener::bind((Ipv4Addr::UNSPECIFIED, PORT)))
        .unwrap()
        .expect("bind the app");
    let name = pod.name().to_owned();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let name = name.clone();
            std::thread::spawn(move || {
                let _ = stream.set_read_timeout(Some(LONG));
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                // Requests without bodies, one per connection turn: answer each head.
                while stream.read(&mut byte).is_ok_and(|n| n == 1) {
                    head.push(byte[0]);
                    if head.ends_with(b"\r\n\r\n") {
                        head.clear();
                        let answer = format!(
                            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                            name.len()
                        );
                        if stream.write_all(answer.as_bytes()).is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
}

/// One `GET /` from inside `client` to `ip:PORT` (captured by its sidecar): the body.
fn call(client: &Pod, ip: Ipv4Addr) -> io::Result<String> {
    client
        .run_in(|| {
            let addr = SocketAddr::from((ip, PORT));
            let mut stream = StdTcpStream::connect_timeout(&addr, LONG)?;
            stream.set_read_timeout(Some(LONG))?;
            write!(
                stream,
                "GET / HTTP/1.1\r\nHost: reviews\r\nConnection: close\r\n\r\n"
            )?;
            let mut out = String::new();
            stream.read_to_string(&mut out)?;
            if !out.starts_with("HTTP/1.1 200") {
                return Err(io::Error::other(format!("answer: {out:?}")));
            }
            Ok(out
                .split_once("\r\n\r\n")
                .map(|(_, b)| b.to_owned())
                .unwrap_or_default())
        })
        .unwrap()
}

/// Calls `reviews` by its VIP (every call must be answered by one of its pods), then each pod by
/// its own address (the sidecar resolves it to that endpoint): both servers are reached.
fn traffic_flows(client: &Pod, vip: Ipv4Addr, servers: [&Pod; 2]) {
    let names: BTreeSet<String> = servers.iter().map(|p| p.name().to_owned()).collect();
    for _ in 0..20 {
        let body = call(client, vip).expect("a call by the VIP through the sidecars");
        assert!(names.contains(&body), "answered by {body:?}");
    }
    for server in servers {
        let body = call(client, server.ip()).expect("a call by pod IP through the sidecars");
        assert_eq!(body, server.name());
    }
}

/// `serinctl ARGS` inside the control plane's pod; its stdout (panics on failure).
fn serinctl(pod: &Pod, files: &Files, args: &[&str]) -> String {
    let url = format!("http://127.0.0.1:{GRPC_PORT}");
    let mut argv = vec![
        &files.bin("serinctl")[..],
        "--control-plane",
        &url[..],
        "--token",
        ADMIN_TOKEN,
    ]
    .into_iter()
    .map(str::to_owned)
    .collect::<Vec<_>>();
    argv.extend(args.iter().map(|a| (*a).to_owned()));
    pod.exec(&argv).run().expect("serinctl")
}

/// Every proxy's acked snapshot version, by pod, from `serinctl get proxies -o json`.
fn acked_versions(pod: &Pod, files: &Files) -> Vec<(String, String)> {
    let text = serinctl(pod, files, &["get", "proxies", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&text).expect("serinctl JSON");
    let list = json
        .as_array()
        .or_else(|| json["proxies"].as_array())
        .cloned()
        .unwrap_or_default();
    let mut out: Vec<(String, String)> = list
        .iter()
        .map(|p| {
            (
                p["pod"].as_str().unwrap_or_default().to_owned(),
                p["ackedVersion"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Waits until `serinctl status` reports `n` proxies connected, all in sync.
fn all_in_sync(pod: &Pod, files: &Files, n: usize) -> String {
    let want = format!("{n} proxies connected, {n} in sync");
    eventually(&format!("serinctl status: {want}"), LONG, || {
        let status = serinctl(pod, files, &["status"]);
        status.contains(&want).then_some(status)
    })
}

/// Registers `pod` as the `version` endpoint of `reviews` (`serinctl` has no verb for it: the
/// call goes through the Admin API in the control plane's pod).
fn register(cp_pod: &Pod, pod: &Pod, version: &str) {
    let port = v1::WorkloadPort {
        name: "http".into(),
        port: u32::from(PORT),
        protocol: v1::Protocol::Http1 as i32,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(pods::register(
        cp_pod,
        workload(pod, "reviews", version, port),
    ));
}

/// The VIP the control plane gave `reviews`, from `serinctl get services -o json`.
fn reviews_vip(cp_pod: &Pod, files: &Files) -> Ipv4Addr {
    let text = serinctl(cp_pod, files, &["get", "services", "reviews", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_str(&text).expect("serinctl JSON");
    let text = json.to_string();
    // The first 10.96.x.y literal in the answer: its shape is serinctl's business.
    text.split('"')
        .find_map(|s| {
            s.parse::<Ipv4Addr>()
                .ok()
                .filter(|ip| ip.octets()[..2] == [10, 96])
        })
        .unwrap_or_else(|| panic!("no VIP for reviews in {text}"))
}

const POLICY: &str = "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  service: reviews
  default:
    route: [{version: v1, weight: 90}, {version: v2, weight: 10}]
";

#[test]
fn sidecars_follow_the_control_plane_through_a_policy_a_kill_and_a_restart() {
    let test = "sidecars_follow_the_control_plane_through_a_policy_a_kill_and_a_restart";
    if skip_unless_root(test) {
        return;
    }
    init_tracing();
    let files = Files::new("control-plane");
    let mesh = Mesh::create().expect("create mesh");
    let cp_pod = mesh
        .add_pod("serin-control")
        .expect("add pod serin-control");
    let client = mesh.add_pod("client").expect("add pod client");
    let v1 = mesh.add_pod("reviews-v1").expect("add pod reviews-v1");
    let v2 = mesh.add_pod("reviews-v2").expect("add pod reviews-v2");

    // The control plane, and the two reviews pods registered with it.
    let mut control_plane = start_control_plane(&cp_pod, &files);
    register(&cp_pod, &v1, "v1");
    register(&cp_pod, &v2, "v2");
    let vip = reviews_vip(&cp_pod, &files);
    mesh.add_service(vip.into(), "reviews", "default").unwrap();

    // Apps, capture rules and sidecars (the app pods' sidecars come up ready from the snapshot).
    start_app(&v1);
    start_app(&v2);
    let mut sidecars = Vec::new();
    for (pod, service, version) in [
        (&v1, "reviews", "v1"),
        (&v2, "reviews", "v2"),
        (&client, "", ""),
    ] {
        apply_capture(pod);
        sidecars.push(start_sidecar(&files, pod, cp_pod.ip(), service, version));
    }
    for pod in [&v1, &v2, &client] {
        eventually(&format!("sidecar of {} ready", pod.name()), LONG, || {
            (admin_get(pod, 15000, "/ready", LONG).ok()?.0 == 200).then_some(())
        });
    }
    let status = all_in_sync(&cp_pod, &files, 3);
    tracing::info!("{status}");
    traffic_flows(&client, vip, [&v1, &v2]);

    // A policy: every proxy acks the new snapshot, and traffic keeps flowing.
    let before = acked_versions(&cp_pod, &files);
    let policy = files.dir.join("reviews.yaml");
    fs::write(&policy, POLICY).unwrap();
    serinctl(
        &cp_pod,
        &files,
        &["apply", "-f", &policy.display().to_string()],
    );
    let after = eventually("every proxy acked the policy's snapshot", LONG, || {
        let versions = acked_versions(&cp_pod, &files);
        let changed = versions.len() == 3
            && versions
                .iter()
                .zip(&before)
                .all(|((_, now), (_, then))| now != then)
            && versions.iter().all(|(_, v)| *v == versions[0].1);
        changed.then_some(versions)
    });
    all_in_sync(&cp_pod, &files, 3);
    let (_, dump) = admin_get(&client, 15000, "/config_dump", LONG).unwrap();
    let dump: serde_json::Value = serde_json::from_str(&dump).unwrap();
    assert_eq!(
        dump["snapshot"]["policies"].as_array().map(Vec::len),
        Some(1),
        "{dump}"
    );
    assert_eq!(dump["discovery"]["state"], "connected", "{dump}");
    assert_eq!(dump["discovery"]["appliedVersion"], after[0].1.as_str());
    traffic_flows(&client, vip, [&v1, &v2]);

    // Kill the control plane: the sidecars notice, stay ready and keep routing.
    control_plane.kill().unwrap();
    for pod in [&v1, &v2, &client] {
        eventually(
            &format!("{} sees the control plane gone", pod.name()),
            LONG,
            || {
                let (_, dump) = admin_get(pod, 15000, "/config_dump", LONG).ok()?;
                let dump: serde_json::Value = serde_json::from_str(&dump).ok()?;
                (dump["discovery"]["state"] != "connected").then_some(())
            },
        );
        assert_eq!(admin_get(pod, 15000, "/ready", LONG).unwrap().0, 200);
    }
    traffic_flows(&client, vip, [&v1, &v2]);

    // Restart it on the same store: the sidecars resubscribe, in sync with the same version.
    control_plane = start_control_plane(&cp_pod, &files);
    all_in_sync(&cp_pod, &files, 3);
    assert_eq!(acked_versions(&cp_pod, &files), after);
    traffic_flows(&client, vip, [&v1, &v2]);
    let metrics = admin_get(&client, 15000, "/metrics", LONG).unwrap().1;
    assert!(
        metrics.contains("serin_discovery_connection_state{state=\"connected\"} 1"),
        "{metrics}"
    );

    drop(sidecars);
    drop(control_plane);
    drop(mesh);
}
