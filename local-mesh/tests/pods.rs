//! Root tests: pods reach each other, resolve names from their hosts file, run processes as
//! another uid, and have a route for service VIPs.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use serin_local::testing::{init_tracing, skip_unless_root};
use serin_local::{Ipv6, Mesh, MeshOptions, Redirect};

#[test]
fn two_pods_reach_each_other_by_address() {
    init_tracing();
    if skip_unless_root("two_pods_reach_each_other_by_address") {
        return;
    }
    let mesh = Mesh::create().unwrap();
    let a = mesh.add_pod("a").unwrap();
    let b = mesh.add_pod("b").unwrap();
    assert_ne!(a.ip(), b.ip());

    // The listener is bound inside b and keeps b's namespace when accepted on from this thread.
    let listener = b
        .run_in(|| TcpListener::bind((b.ip(), 8080)))
        .unwrap()
        .unwrap();
    let echo = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut buf = [0; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(&buf).unwrap();
        peer
    });

    let b_ip = b.ip();
    let reply = a
        .run_in(move || {
            let mut conn =
                TcpStream::connect_timeout(&(b_ip, 8080).into(), Duration::from_secs(5))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            conn.write_all(b"hello")?;
            let mut buf = [0; 5];
            conn.read_exact(&mut buf)?;
            std::io::Result::Ok(buf)
        })
        .unwrap()
        .unwrap();
    assert_eq!(&reply, b"hello");
    let peer = echo.join().unwrap();
    assert_eq!(peer.ip(), a.ip(), "b sees a's pod address as the source");
}

#[test]
fn pods_resolve_names_from_their_hosts_file() {
    init_tracing();
    if skip_unless_root("pods_resolve_names_from_their_hosts_file") {
        return;
    }
    let mesh = Mesh::create().unwrap();
    let a = mesh.add_pod("a").unwrap();
    mesh.add_service("10.96.0.10".parse().unwrap(), "reviews", "default")
        .unwrap();
    let late = mesh.add_pod("late").unwrap();
    a.add_host("10.96.0.99".parse().unwrap(), &["only-in-a"])
        .unwrap();

    for pod in [&a, &late] {
        for name in [
            "reviews",
            "reviews.default",
            "reviews.default.svc.cluster.local",
        ] {
            let out = pod.exec(["getent", "hosts", name]).run().unwrap();
            assert!(
                out.starts_with("10.96.0.10 "),
                "{name} in {}: {out:?}",
                pod.name()
            );
        }
        let own = pod.exec(["getent", "ahostsv4", pod.name()]).run().unwrap();
        assert!(own.starts_with(&format!("{} ", pod.ip())), "{own:?}");
    }
    assert!(a.exec(["getent", "hosts", "only-in-a"]).run().is_ok());
    let err = late
        .exec(["getent", "hosts", "only-in-a"])
        .run()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("getent hosts only-in-a"),
        "the error quotes the command line: {err}"
    );
}

#[test]
fn spawns_a_process_as_another_uid() {
    init_tracing();
    if skip_unless_root("spawns_a_process_as_another_uid") {
        return;
    }
    let mesh = Mesh::create().unwrap();
    let pod = mesh.add_pod("app").unwrap();
    let ids = pod
        .exec(["sh", "-c", "id -u; id -g; id -G"])
        .user(1337, 1337)
        .run()
        .unwrap();
    assert_eq!(ids.lines().collect::<Vec<_>>(), ["1337", "1337", "1337"]);

    let dir = std::env::temp_dir().join(format!("serin-local-{}", mesh.run_id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("out.log");
    let proc = pod
        .exec(["id", "-u"])
        .user(1337, 1337)
        .stdout(Redirect::File(log.clone()))
        .spawn()
        .unwrap();
    assert!(proc.wait().unwrap().success());
    assert_eq!(std::fs::read_to_string(&log).unwrap(), "1337\n");
    std::fs::remove_dir_all(&dir).unwrap();

    let root = pod.command("id").arg("-u").output().unwrap();
    assert_eq!(String::from_utf8_lossy(&root.stdout), "0\n");
}

#[test]
fn service_vips_route_via_the_gateway() {
    init_tracing();
    if skip_unless_root("service_vips_route_via_the_gateway") {
        return;
    }
    let mesh = Mesh::create().unwrap();
    let pod = mesh.add_pod("a").unwrap();
    let route = pod
        .exec(["ip", "route", "get", "10.96.0.10"])
        .run()
        .unwrap();
    assert!(
        route.contains("via 10.244.0.1 dev eth0"),
        "route to a VIP: {route}"
    );
    let lo = pod.exec(["ip", "-o", "link", "show", "lo"]).run().unwrap();
    assert!(lo.contains("UP"), "loopback is up: {lo}");
    // The gateway answers from the node namespace.
    let node = mesh.node().clone();
    let listener = node
        .run_in(|| TcpListener::bind((serin_local::GATEWAY, 15010)))
        .unwrap()
        .unwrap();
    let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    pod.run_in(|| TcpStream::connect((serin_local::GATEWAY, 15010)))
        .unwrap()
        .unwrap();
    assert_eq!(accept.join().unwrap().unwrap().ip(), pod.ip());
    if let Some(v6) = pod.ipv6() {
        let addrs = pod
            .exec(["ip", "-6", "addr", "show", "eth0"])
            .run()
            .unwrap();
        assert!(addrs.contains(&v6.to_string()), "{addrs}");
    }
}

#[test]
fn errors_name_the_pod_and_quote_the_failing_ip_command() {
    init_tracing();
    if skip_unless_root("errors_name_the_pod_and_quote_the_failing_ip_command") {
        return;
    }
    let mesh = Mesh::create().unwrap();
    mesh.add_pod("a").unwrap();
    let dup = mesh.add_pod("a").unwrap_err().to_string();
    assert_eq!(
        dup,
        format!("pod \"a\" already exists in mesh {}", mesh.run_id())
    );
    let bad = mesh.add_pod("Bad_Name").unwrap_err().to_string();
    assert!(bad.starts_with("invalid pod name \"Bad_Name\": "), "{bad}");

    // A namespace of that name exists already (made behind the mesh's back): the error quotes the
    // `ip` command and its stderr, and the mesh neither deletes it nor breaks.
    let squatter = format!("srn-{}-x", mesh.run_id());
    let status = std::process::Command::new("ip")
        .args(["netns", "add", &squatter])
        .status()
        .unwrap();
    assert!(status.success());
    let err = mesh.add_pod("x").unwrap_err().to_string();
    let deleted_squatter = !std::path::Path::new("/run/netns").join(&squatter).exists();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", &squatter])
        .status();
    assert!(
        err.starts_with(&format!(
            "`ip netns add {squatter}` failed (exit status: 1): "
        )),
        "{err}"
    );
    assert!(err.contains("File exists"), "{err}");
    assert!(
        !deleted_squatter,
        "the mesh deleted a namespace it did not make"
    );
    assert!(mesh.pod("x").is_none());
    let y = mesh.add_pod("y").unwrap();
    assert!(y.exec(["true"]).run().is_ok());
}

#[test]
fn wait_for_tcp_polls_until_a_listener_answers() {
    init_tracing();
    if skip_unless_root("wait_for_tcp_polls_until_a_listener_answers") {
        return;
    }
    let mesh = Mesh::create().unwrap();
    let a = mesh.add_pod("a").unwrap();
    let b = mesh.add_pod("b").unwrap();
    let closed = (b.ip(), 9).into();
    let err = a
        .wait_for_tcp(closed, Duration::from_millis(300))
        .unwrap_err()
        .to_string();
    assert!(
        err.starts_with("timed out after 300ms waiting for a TCP listener on 10.244.0.3:9"),
        "{err}"
    );
    let _listener = b
        .run_in(|| TcpListener::bind((b.ip(), 8080)))
        .unwrap()
        .unwrap();
    a.wait_for_tcp((b.ip(), 8080).into(), Duration::from_secs(5))
        .unwrap();
}

#[test]
fn ipv6_pods_reach_each_other_and_ipv6_can_be_off() {
    init_tracing();
    if skip_unless_root("ipv6_pods_reach_each_other_and_ipv6_can_be_off") {
        return;
    }
    let v4_only = Mesh::create_with(MeshOptions { ipv6: Ipv6::Off }).unwrap();
    let pod = v4_only.add_pod("a").unwrap();
    assert!(!v4_only.has_ipv6());
    assert_eq!(pod.ipv6(), None);
    let addrs = pod
        .exec(["ip", "-6", "addr", "show", "scope", "global"])
        .run()
        .unwrap();
    assert!(addrs.is_empty(), "{addrs}");

    let mesh = Mesh::create().unwrap();
    if !mesh.has_ipv6() {
        eprintln!("kernel without IPv6: checked the IPv4-only mesh only");
        return;
    }
    let a = mesh.add_pod("a").unwrap();
    let b = mesh.add_pod("b").unwrap();
    let b_ip = b.ipv6().unwrap();
    let listener = b
        .run_in(|| TcpListener::bind((b_ip, 8080)))
        .unwrap()
        .unwrap();
    let accept = std::thread::spawn(move || listener.accept().map(|(_, peer)| peer));
    a.wait_for_tcp((b_ip, 8080).into(), Duration::from_secs(5))
        .unwrap();
    assert_eq!(accept.join().unwrap().unwrap().ip(), a.ipv6().unwrap());
    let route = a
        .exec(["ip", "-6", "route", "get", "fd00:10:96::a"])
        .run()
        .unwrap();
    assert!(route.contains("via fd00:10:244::1"), "{route}");
}
