//! Kubernetes mode, first part: the registry from the API server ([`cluster`]: what the objects
//! mean, [`watch`]: kube-rs watchers that keep it current) and TrafficPolicies as custom resources
//! with their status ([`policies`]). Not wired into the discovery push yet (`--kubernetes` is
//! still refused): see the crate README.

pub mod cluster;
pub mod policies;
pub mod watch;
