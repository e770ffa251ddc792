//! The Serin sidecar proxy

#![forbid(unsafe_code)]
