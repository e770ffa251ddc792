//! `serin-local-agent`: the owner of a persistent local mesh, started (detached) by
//! `serinctl up`; see `serin_local::cluster`. Its last log line says why it stopped.

#![forbid(unsafe_code)]

use clap::Parser as _;
use serin_local::agent::{AgentArgs, run};

fn main() -> std::process::ExitCode {
    let args = AgentArgs::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,serin_local=debug".into()),
        )
        .with_ansi(false)
        .with_writer(std::io::stderr)
        .init();
    if let Err(e) = serin_local::require_root() {
        eprintln!("serin-local-agent: {e}");
        return std::process::ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serin-local-agent: cannot start the async runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("serin-local-agent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_command_line_is_well_formed() {
        use clap::CommandFactory as _;
        serin_local::agent::AgentArgs::command().debug_assert();
    }
}
