//! The configuration of every proxy under test, rendered as text: nginx and HAProxy as the
//! client-side (outbound, port 15001) or server-side (inbound, port 15006) proxy of one
//! workload, and Serin's static snapshot. Pure functions; golden files pin the output.
//!
//! Fairness: every proxy gets one worker (nginx `worker_processes 1`, HAProxy `nbthread 1`, and
//! Serin's multi-threaded tokio runtime sizes itself to the one CPU `taskset` gives it), keeps
//! connections to its upstream alive, never logs requests, and lifts per-connection request
//! limits that would close the load generator's long-lived connections (nginx's
//! `keepalive_requests` defaults to 1000).

use std::fmt::Write as _;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use crate::workload::Workload;

/// The outbound capture port (the client-side proxy listens here).
pub const OUTBOUND_PORT: u16 = 15001;
/// The inbound capture port (the server-side proxy listens here).
pub const INBOUND_PORT: u16 = 15006;
/// Serin's admin port.
pub const ADMIN_PORT: u16 = 15000;
/// The VIP of the benchmark service.
pub const VIP: &str = "10.96.0.100";
/// Requests per connection that no run reaches.
const UNLIMITED_REQUESTS: u64 = 1_000_000_000;

/// Which side of the call a proxy sits on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// In the client pod: the load generator's connections to the service are redirected to it.
    Client,
    /// In the server pod: connections to the upstream's port are redirected to it.
    Server,
}

impl Side {
    /// The port it listens on.
    pub fn port(self) -> u16 {
        match self {
            Side::Client => OUTBOUND_PORT,
            Side::Server => INBOUND_PORT,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Side::Client => "client",
            Side::Server => "server",
        }
    }
}

/// nginx's configuration for `workload` on `side`, forwarding to `upstream`. Runtime files go
/// under `dir`; `stream_module` is the path of the dynamic stream module (raw TCP only).
pub fn nginx(
    workload: Workload,
    side: Side,
    upstream: SocketAddr,
    dir: &Path,
    stream_module: &Path,
) -> String {
    let dir = dir.display();
    let port = side.port();
    let mut c = String::new();
    let _ = writeln!(
        c,
        "# serin-bench: nginx as the {}-side proxy, {workload}",
        side.name()
    );
    if workload == Workload::Tcp {
        let _ = writeln!(c, "load_module {};", stream_module.display());
    }
    let _ = write!(
        c,
        "worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{
    worker_connections 16384;
}}
"
    );
    if workload == Workload::Tcp {
        let _ = write!(
            c,
            "stream {{
    upstream backend {{
        server {upstream};
    }}
    server {{
        listen {port};
        proxy_pass backend;
    }}
}}
"
        );
        return c;
    }
    // h2c reaches the server side as HTTP/1.1: the client side's nginx forwards only that.
    let http2_in =
        workload == Workload::Grpc || (workload == Workload::H2c && side == Side::Client);
    let listen = if http2_in {
        format!("{port} http2")
    } else {
        port.to_string()
    };
    let location = if workload == Workload::Grpc {
        "grpc_pass grpc://backend;".to_owned()
    } else {
        // h2c arrives as HTTP/2; nginx forwards HTTP/1.1 only (its proxy module has no HTTP/2).
        "proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";"
            .to_owned()
    };
    let _ = write!(
        c,
        "http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout 75s;
    keepalive_requests {UNLIMITED_REQUESTS};
    upstream backend {{
        server {upstream};
        keepalive 128;
        keepalive_requests {UNLIMITED_REQUESTS};
    }}
    server {{
        listen {listen};
        location / {{
            {location}
        }}
    }}
}}
"
    );
    c
}

/// HAProxy's configuration for `workload` on `side`, forwarding to `upstream`.
pub fn haproxy(workload: Workload, side: Side, upstream: SocketAddr) -> String {
    let port = side.port();
    let (mode, bind_proto, server_proto) = match workload {
        Workload::Tcp => ("tcp", "", ""),
        Workload::H2c | Workload::Grpc => ("http", " proto h2", " proto h2"),
        Workload::Http1KeepAlive | Workload::Http1NewConnections => ("http", "", ""),
    };
    let reuse = if mode == "http" {
        "    http-reuse always\n"
    } else {
        ""
    };
    format!(
        "# serin-bench: HAProxy as the {side}-side proxy, {workload}
global
    nbthread 1
    maxconn 4096

defaults
    mode {mode}
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-keep-alive 60s
{reuse}
frontend bench
    bind :{port}{bind_proto}
    default_backend upstream

backend upstream
    server upstream {upstream}{server_proto}
",
        side = side.name()
    )
}

/// The service's protocol as Serin's snapshot declares it.
fn serin_protocol(workload: Workload) -> &'static str {
    match workload {
        Workload::Http1KeepAlive | Workload::Http1NewConnections => "PROTOCOL_HTTP1",
        Workload::H2c => "PROTOCOL_HTTP2",
        Workload::Grpc => "PROTOCOL_GRPC",
        Workload::Tcp => "PROTOCOL_TCP",
    }
}

/// Serin's static snapshot: service `bench` on [`VIP`] with one port per workload (declared
/// protocol), its endpoint the server pod, and the client as a service of its own (so its
/// inbound edge has a name).
pub fn serin_snapshot(client: IpAddr, server: IpAddr) -> String {
    let mut ports = String::new();
    let mut seen = Vec::new();
    for workload in Workload::ALL {
        if seen.contains(&workload.port()) {
            continue;
        }
        seen.push(workload.port());
        let _ = writeln!(
            ports,
            "      - {{port: {port}, name: p{port}, protocol: {proto}}}",
            port = workload.port(),
            proto = serin_protocol(workload)
        );
    }
    format!(
        "# serin-bench: the mesh as both sidecars see it
services:
  - name: bench
    namespace: default
    vips: [\"{VIP}\"]
    hostnames: [bench, bench.default]
    ports:
{ports}  - name: bench-client
    namespace: default
endpoints:
  - service: bench
    namespace: default
    endpoints: [{{addresses: [\"{server}\"], podName: server, version: v1, ready: true}}]
  - service: bench-client
    namespace: default
    endpoints: [{{addresses: [\"{client}\"], podName: client, version: v1, ready: true}}]
"
    )
}

#[cfg(test)]
pub(crate) mod golden {
    use std::path::PathBuf;

    /// Compares `text` with `golden/NAME`; `UPDATE_GOLDEN=1` rewrites the file instead.
    pub fn check(name: &str, text: &str) {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("golden")
            .join(name);
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, text).unwrap();
            return;
        }
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (run with UPDATE_GOLDEN=1 to create it)",
                path.display()
            )
        });
        assert!(
            want == text,
            "{} is stale (UPDATE_GOLDEN=1 rewrites it); got:\n{text}",
            path.display()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn upstream(side: Side, workload: Workload) -> SocketAddr {
        match side {
            Side::Client => SocketAddr::new("10.244.0.3".parse().unwrap(), workload.port()),
            Side::Server => SocketAddr::new("127.0.0.1".parse().unwrap(), workload.port()),
        }
    }

    fn slug(workload: Workload) -> &'static str {
        match workload {
            Workload::Http1KeepAlive => "http1",
            Workload::Http1NewConnections => "http1-new",
            Workload::H2c => "h2c",
            Workload::Grpc => "grpc",
            Workload::Tcp => "tcp",
        }
    }

    #[test]
    fn nginx_configs_match_their_golden_files() {
        for workload in Workload::ALL {
            for side in [Side::Client, Side::Server] {
                let text = nginx(
                    workload,
                    side,
                    upstream(side, workload),
                    Path::new("/run/serin-bench/nginx"),
                    Path::new("/usr/lib/nginx/modules/ngx_stream_module.so"),
                );
                golden::check(
                    &format!("nginx-{}-{}.conf", slug(workload), side.name()),
                    &text,
                );
            }
        }
    }

    #[test]
    fn haproxy_configs_match_their_golden_files() {
        for workload in Workload::ALL {
            for side in [Side::Client, Side::Server] {
                let text = haproxy(workload, side, upstream(side, workload));
                golden::check(
                    &format!("haproxy-{}-{}.cfg", slug(workload), side.name()),
                    &text,
                );
            }
        }
    }

    #[test]
    fn serin_snapshot_matches_its_golden_file() {
        let text = serin_snapshot("10.244.0.2".parse().unwrap(), "10.244.0.3".parse().unwrap());
        golden::check("serin-snapshot.yaml", &text);
    }

    #[test]
    fn fairness_settings_are_in_every_config() {
        for workload in Workload::ALL {
            let n = nginx(
                workload,
                Side::Client,
                upstream(Side::Client, workload),
                Path::new("/d"),
                Path::new("/m.so"),
            );
            assert!(n.contains("worker_processes 1;"));
            let h = haproxy(workload, Side::Client, upstream(Side::Client, workload));
            assert!(h.contains("nbthread 1"));
            if workload.is_requests() {
                assert!(n.contains("keepalive 128;"), "{n}");
                assert!(h.contains("http-reuse always"), "{h}");
            }
        }
    }
}
