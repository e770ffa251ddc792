//! In-process tests of the control plane: a real server on 127.0.0.1:0 with a temporary store,
//! driven through the generated gRPC clients.

mod admin;
mod auth;
mod binary;
mod browser;
mod dashboard;
mod discovery;
mod mtls_port;
#[path = "../support/mtls.rs"]
mod mtls_support;
mod python;
mod registry;
mod service;
mod support;
