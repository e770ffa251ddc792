//! End-to-end tests that cross crates

#![forbid(unsafe_code)]
