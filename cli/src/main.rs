//! `serinctl`: the one command Serin users type.

#![forbid(unsafe_code)]

fn main() {
    eprintln!("serinctl: no verbs are implemented yet");
    std::process::exit(2);
}
