//! The Serin control plane: discovery push, admin API, embedded store, workload registry and
//! telemetry intake, behind one gRPC port and one HTTP port.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod auth;
pub mod ca;
pub mod config;
pub mod dashboard;
pub mod discovery;
pub mod http;
pub mod identity;
pub mod inject;
pub mod kubernetes;
pub mod mesh;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod snapshot;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod topology;

/// Starts tracing into the test's captured output (once per test binary).
#[cfg(test)]
pub(crate) fn test_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter("debug")
        .try_init();
}
