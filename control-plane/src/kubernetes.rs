//! Kubernetes mode (`serin-control --kubernetes`): the registry from the API server
//! ([`cluster`]: what the objects mean, [`watch`]: kube-rs watchers that keep it current),
//! TrafficPolicies as custom resources with their status ([`policies`]), both merged into the
//! same [`crate::model::MeshView`] the embedded mode publishes ([`view`]), the Admin API's
//! writes as object writes ([`objects`]), the mTLS modes and namespace visibility as Namespace
//! annotations and a ConfigMap ([`settings`]), workload identity from projected service-account tokens
//! ([`tokens`]), and the whole put together ([`mode`]).

pub mod cluster;
pub mod mode;
pub mod objects;
pub mod policies;
pub mod settings;
pub mod status;
pub mod tokens;
pub mod view;
pub mod watch;
