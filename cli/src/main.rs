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
use crate::connect::{ControlPlane, TokenSource};
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
            // clap's message, on one line: its first line names the problem, and the indented
            // lines right under it (if any) name the missing arguments.
            let rendered = e.render().to_string();
            let mut lines = rendered.lines();
            let first = lines.next().unwrap_or("invalid command line");
            let missing: Vec<&str> = lines
                .take_while(|l| l.starts_with("  "))
                .map(str::trim)
                .collect();
            eprintln!(
                "serinctl: {}{} (see serinctl --help)",
                first.trim_start_matches("error: "),
                if missing.is_empty() {
                    String::new()
                } else {
                    format!(" {}", missing.join(", "))
                }
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
        // `exec`'s command said why it failed; its exit code is serinctl's.
        Err(CliError::Exit(code)) => {
            let _ = stdout.flush();
            ExitCode::from(code)
        }
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
    // The local-mesh verbs need no control plane (`up` starts it).
    let ns = cli.namespace.as_str();
    match &cli.command {
        Command::Up(args) => return verbs::local::up(args, out),
        Command::Down(args) => return verbs::local::down(args, out),
        Command::Namespace(args) => return verbs::local::namespace(args, out),
        Command::Run(args) => return verbs::local::run(ns, args, out),
        Command::Exec(args) => return verbs::local::exec(args, out),
        Command::Pods(args) => return verbs::local::pods(args, out),
        Command::Logs(args) => return verbs::local::logs(args, out),
        Command::Demo(args) => return verbs::demo::demo(ns, args, out).await,
        Command::Inject(args) => {
            return verbs::inject::inject(ns, args, cli.control_plane_ca.as_deref(), out);
        }
        Command::Convert(args) => return verbs::convert::convert(ns, args, out),
        _ => {}
    }
    let tokens = TokenSource {
        token: cli.token.clone(),
        file: cli.token_file.clone(),
        local_state_dir: Some(serin_local::cluster::default_state_dir()),
        client_cert: cli.client_cert.clone().zip(cli.client_key.clone()),
        control_plane_ca: cli.control_plane_ca.clone(),
    };
    let mut cp = ControlPlane::connect(&cli.control_plane, &tokens).await?;
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
        Command::Mtls(args) => verbs::mtls::mtls(&mut cp, ns, args, out).await,
        Command::Visibility(args) => verbs::visibility::visibility(&mut cp, ns, args, out).await,
        Command::Completion(_)
        | Command::Up(_)
        | Command::Down(_)
        | Command::Namespace(_)
        | Command::Run(_)
        | Command::Exec(_)
        | Command::Pods(_)
        | Command::Logs(_)
        | Command::Inject(_)
        | Command::Convert(_)
        | Command::Demo(_) => unreachable!("handled before connecting"),
    }
}
