//! serinctl end to end: the real `serinctl` binary against a real `serin-control` binary on
//! loopback ports, each with its own temporary store.

mod durability;
mod local;
mod support;
mod top;
mod verbs;
