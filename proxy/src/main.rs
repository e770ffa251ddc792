//! `serin-proxy`: the sidecar. See `serin_proxy::app`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use std::net::SocketAddr;

use serin_proxy::app::{self, Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::init_logging(&cli.log_level);
    let command = cli.command.clone();
    let config = cli.into_config();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("serin-proxy: failed to start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(Command::WaitReady { timeout }) = command {
        let admin = SocketAddr::from(([127, 0, 0, 1], config.admin_addr.port()));
        return match runtime.block_on(app::wait_ready(admin, timeout)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("serin-proxy: {e}");
                ExitCode::FAILURE
            }
        };
    }
    match runtime.block_on(app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serin-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
