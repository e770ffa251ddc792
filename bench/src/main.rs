//! `serin-bench`: see `serin_bench::app`.

#![forbid(unsafe_code)]

use clap::Parser as _;

fn main() -> std::process::ExitCode {
    serin_bench::app::main(&serin_bench::app::Cli::parse())
}
