//! `serin-demo-app`: the sample service of the local mesh demo (see `serin_local::demo_app`),
//! plus two hidden helpers for pods without curl: `traffic` (the load generator) and `get`.

#![forbid(unsafe_code)]

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serin_local::demo_app::{DemoApp, DemoConfig, Fault};
use serin_local::traffic::{TrafficOptions, run};

/// The sample app: answers with JSON naming its service, version and pod, calls its downstream
/// services by name and passes on end-user, cookies, traceparent and x-request-id.
#[derive(Debug, Parser)]
#[command(
    name = "serin-demo-app",
    disable_version_flag = true,
    args_conflicts_with_subcommands = true
)]
struct Args {
    /// Port to serve HTTP/1.1 and h2c on.
    #[arg(long, env = "PORT", default_value_t = 9080)]
    port: u16,
    /// Service name in answers.
    #[arg(long, env = "SERIN_SERVICE", default_value = "demo")]
    service: String,
    /// Version in answers.
    #[arg(long, env = "SERIN_VERSION", default_value = "v1")]
    version: String,
    /// Pod name in answers.
    #[arg(long, env = "SERIN_POD_NAME", default_value = "")]
    pod: String,
    /// Namespace in answers.
    #[arg(long, env = "SERIN_NAMESPACE", default_value = "default")]
    namespace: String,
    /// A downstream service to call on every request, HOST:PORT (repeatable).
    #[arg(long = "call")]
    calls: Vec<String>,
    /// Delay before every answer (ms); change it at run time with POST /admin/fault.
    #[arg(long, default_value_t = 0)]
    delay_ms: u64,
    /// Fraction 0..=1 of requests answered with 503.
    #[arg(long, default_value_t = 0.0)]
    error_rate: f64,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send traffic and print the per-version report as JSON.
    #[command(hide = true)]
    Traffic {
        /// Where to send it.
        #[arg(long)]
        url: String,
        /// Requests per second.
        #[arg(long, default_value_t = 20)]
        rate: u32,
        /// How long, e.g. 5s.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        duration: Duration,
        /// Requests in flight at most.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Send HTTP/2 with prior knowledge (h2c).
        #[arg(long)]
        http2: bool,
        /// Act as this user (repeatable; '' for anonymous); default: a built-in mix.
        #[arg(long = "user")]
        users: Vec<String>,
    },
    /// One GET; prints the status line and body.
    #[command(hide = true)]
    Get {
        /// The URL.
        url: String,
        /// Extra headers, NAME:VALUE.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
    },
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (number, unit) = s.trim().split_at(
        s.trim()
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(s.len()),
    );
    let n: u64 = number
        .parse()
        .map_err(|_| format!("bad duration {s:?}: expected e.g. 5s or 500ms"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("bad duration {s:?}: expected e.g. 5s or 500ms")),
    }
}

fn main() -> std::process::ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build();
    let result = runtime
        .context("cannot start the async runtime")
        .and_then(|rt| rt.block_on(run_args(args)));
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serin-demo-app: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run_args(args: Args) -> anyhow::Result<()> {
    match args.command {
        Some(Command::Traffic {
            url,
            rate,
            duration,
            concurrency,
            http2,
            users,
        }) => {
            let options = TrafficOptions {
                rate,
                duration,
                concurrency,
                http2,
                users,
                ..TrafficOptions::new(url)
            };
            let report = run(&options).await.map_err(anyhow::Error::msg)?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            Ok(())
        }
        Some(Command::Get { url, headers }) => get(&url, &headers).await,
        None => {
            let config = DemoConfig {
                service: args.service,
                version: args.version,
                pod: args.pod,
                namespace: args.namespace,
                calls: args.calls,
                fault: Fault {
                    delay_ms: args.delay_ms,
                    error_rate: args.error_rate,
                },
            };
            // Both families where the kernel has IPv6 (a dual-stack socket), else IPv4.
            let any6 = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), args.port);
            let app = match DemoApp::bind(any6, config.clone()).await {
                Ok(app) => app,
                Err(_) => DemoApp::bind(SocketAddr::from(([0, 0, 0, 0], args.port)), config)
                    .await
                    .with_context(|| format!("cannot listen on port {}", args.port))?,
            };
            eprintln!("serin-demo-app listening on {}", app.local_addr()?);
            app.serve().await;
            Ok(())
        }
    }
}

async fn get(url: &str, headers: &[String]) -> anyhow::Result<()> {
    use http_body_util::BodyExt as _;
    let client: hyper_util::client::legacy::Client<_, http_body_util::Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http();
    let mut request = http::Request::get(url);
    for h in headers {
        let (name, value) = h
            .split_once(':')
            .with_context(|| format!("header {h:?} is not NAME:VALUE"))?;
        request = request.header(name.trim(), value.trim());
    }
    let response = tokio::time::timeout(
        Duration::from_secs(10),
        client.request(request.body(http_body_util::Empty::new())?),
    )
    .await
    .context("timed out")??;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    println!("{}", status.as_u16());
    println!("{}", String::from_utf8_lossy(&body));
    anyhow::ensure!(status.is_success(), "status {status}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        Args::command().debug_assert();
        let args =
            Args::try_parse_from(["serin-demo-app", "--call", "a:1", "--call", "b:2"]).unwrap();
        assert_eq!(args.calls, ["a:1", "b:2"]);
        let args = Args::try_parse_from([
            "serin-demo-app",
            "traffic",
            "--url",
            "http://x/",
            "--duration",
            "500ms",
        ])
        .unwrap();
        assert!(
            matches!(args.command, Some(Command::Traffic { duration, .. }) if duration == Duration::from_millis(500))
        );
        let args = Args::try_parse_from([
            "serin-demo-app",
            "traffic",
            "--url",
            "http://x/",
            "--user",
            "jason",
            "--user",
            "",
            "--http2",
        ])
        .unwrap();
        assert!(
            matches!(args.command, Some(Command::Traffic { users, http2: true, .. }) if users == ["jason", ""])
        );
    }
}
