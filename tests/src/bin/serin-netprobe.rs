//! `serin-netprobe connect ADDR [--timeout-ms N] [--bind IP]`: one TCP connect, and one line on
//! stdout saying what happened (`connected local=...`, `refused`, `timeout`, `unreachable`,
//! `error ...`). Tests run it inside pods as an app's uid, since iptables owner matches need a
//! process of that uid. Exit code 0 whatever the outcome; 2 for bad usage.

#![forbid(unsafe_code)]

use std::net::{IpAddr, SocketAddr};
use std::process::ExitCode;
use std::time::Duration;

use serin_tests::netprobe;

const USAGE: &str = "usage: serin-netprobe connect ADDR [--timeout-ms N] [--bind IP]";

fn main() -> ExitCode {
    match parse(std::env::args().skip(1).collect()) {
        Ok((addr, bind, timeout)) => {
            println!("{}", netprobe::connect(addr, bind, timeout));
            ExitCode::SUCCESS
        }
        Err(message) => {
            eprintln!("serin-netprobe: {message}; {USAGE}");
            ExitCode::from(2)
        }
    }
}

fn parse(args: Vec<String>) -> Result<(SocketAddr, Option<IpAddr>, Duration), String> {
    let mut args = args.into_iter();
    if args.next().as_deref() != Some("connect") {
        return Err("expected the `connect` command".to_owned());
    }
    let addr = args.next().ok_or("missing ADDR")?;
    let addr: SocketAddr = addr
        .parse()
        .map_err(|e| format!("bad ADDR `{addr}`: {e}"))?;
    let (mut bind, mut timeout) = (None, Duration::from_secs(2));
    while let Some(flag) = args.next() {
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--timeout-ms" => {
                let ms: u64 = value
                    .parse()
                    .map_err(|e| format!("bad --timeout-ms `{value}`: {e}"))?;
                timeout = Duration::from_millis(ms);
            }
            "--bind" => {
                bind = Some(
                    value
                        .parse()
                        .map_err(|e| format!("bad --bind `{value}`: {e}"))?,
                );
            }
            _ => return Err(format!("unknown flag `{flag}`")),
        }
    }
    Ok((addr, bind, timeout))
}
