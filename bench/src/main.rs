//! `serin-bench`: side-by-side benchmarks.

#![forbid(unsafe_code)]

fn main() {
    eprintln!("serin-bench: no benchmarks are implemented yet");
    std::process::exit(2);
}
