//! Sidecar injection: which pods get the capture init container and the `serin-proxy` sidecar,
//! and the JSONPatch that adds them. The same code serves the mutating admission webhook
//! ([`webhook`], [`review`]) and offline injection of manifests ([`manifest`], `serinctl inject`).

pub mod config;
pub mod manifest;
pub mod pod;
pub mod review;
pub mod webhook;
