//! The Serin control plane: discovery, admin API, store, telemetry, dashboard

#![forbid(unsafe_code)]
