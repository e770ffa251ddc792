//! `serin-proxy`: the sidecar. See `serin_proxy::app`.

#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use serin_proxy::app::{self, Cli};

fn main() -> ExitCode {
    let cli = Cli::parse();
    app::init_logging(&cli.log_level);
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
    match runtime.block_on(app::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serin-proxy: {e:#}");
            ExitCode::FAILURE
        }
    }
}
