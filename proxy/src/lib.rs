//! The Serin sidecar proxy: captured connections in, forwarded to the right endpoint out, with
//! metrics on every edge. `app.rs` wires it together; the rest is one concern per module.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod config;
pub mod connection;
pub mod control_channel;
pub mod detect;
pub mod discovery;
pub mod drain;
pub mod http;
pub mod identity;
pub mod inbound;
pub mod lb;
pub mod metrics;
pub mod mirror;
pub mod orig_dst;
pub mod outbound;
pub mod overload;
pub mod pool;
pub mod proxy;
pub mod retry;
pub mod routing;
pub mod snapshot;
pub mod socket;
mod stream;
pub mod tables;
pub mod tcp;
pub mod telemetry;
pub mod tls;
