//! Plans, installs and removes the sidecar's iptables capture rules

#![forbid(unsafe_code)]

pub mod app;
pub mod config;
pub mod executor;
pub mod install;
pub mod plan;
pub mod restore;
pub mod saved;
