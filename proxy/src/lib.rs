//! The Serin sidecar proxy

#![forbid(unsafe_code)]

pub mod socket;
