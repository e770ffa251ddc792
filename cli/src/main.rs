//! `serinctl`: the one command Serin users type. Parses the command line, runs one verb against
//! the control plane, and on failure prints one line saying what was wrong and where.

#![forbid(unsafe_code)]

mod cli;
mod connect;
mod document;
mod error;
mod render;
mod verbs;

use std::io::Write;
use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use crate::cli::{Cli, Command};
use crate::connect::ControlPlane;
use crate::error::CliError;

/// Starts tracing into the test's captured output (once per test binary).
#[cfg(test)]
pub(crate) fn test_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("debug")
        .try_init();
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e)
            if matches!(
                e.kind(),
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion
            ) =>
        {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // clap's message, on one line: its first line names the problem.
            let rendered = e.render().to_string();
            let first = rendered.lines().next().unwrap_or("invalid command line");
            eprintln!(
                "serinctl: {} (see serinctl --help)",
                first.trim_start_matches("error: ")
            );
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("serinctl: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match runtime.block_on(run(&cli, &mut stdout)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let _ = stdout.flush();
            eprintln!("serinctl: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: &Cli, out: &mut impl Write) -> Result<(), CliError> {
    if let Command::Completion(args) = &cli.command {
        clap_complete::generate(args.shell, &mut Cli::command(), "serinctl", out);
        return Ok(());
    }
    let mut cp = ControlPlane::connect(&cli.control_plane).await?;
    let ns = cli.namespace.as_str();
    match &cli.command {
        Command::Apply(args) => verbs::apply::apply(&mut cp, ns, args, out).await,
        Command::Get(args) => verbs::get::get(&mut cp, ns, args, out).await,
        Command::Delete(args) => verbs::edit::delete(&mut cp, ns, args, out).await,
        Command::Canary(args) => verbs::edit::canary(&mut cp, ns, args, out).await,
        Command::Route(args) => verbs::edit::route(&mut cp, ns, args, out).await,
        Command::Mirror(args) => verbs::edit::mirror(&mut cp, ns, args, out).await,
        Command::Promote(args) => verbs::edit::promote(&mut cp, ns, args, out).await,
        Command::Rollback(args) => verbs::edit::rollback(&mut cp, ns, args, out).await,
        Command::Status => verbs::inspect::status(&mut cp, out).await,
        Command::Explain(args) => verbs::inspect::explain(&mut cp, ns, args, out).await,
        Command::Top(args) => verbs::top::top(&mut cp, ns, args, out).await,
        Command::Completion(_) => unreachable!("handled before connecting"),
    }
}
