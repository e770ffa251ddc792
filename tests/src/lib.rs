//! End-to-end tests that cross crates, and the small tools they run inside pods.

#![forbid(unsafe_code)]

pub mod cdp;
pub mod cluster;
pub mod echo;
pub mod netprobe;
pub mod pods;
pub mod shares;
