//! serinctl end to end: the real `serinctl` binary against a real `serin-control` binary on
//! loopback ports, each with its own temporary store, or (`cluster`) in Kubernetes mode against
//! a fake API server; and (`local`, root) the local-mesh verbs
//! against a real local mesh; (`walkthrough`, root) a whole gray release through serinctl alone.

mod auth;
mod cluster;
mod durability;
mod kubernetes;
mod local;
mod support;
mod top;
mod verbs;
mod walkthrough;
