//! Wire decoding into the sidecar's domain types: a whole Snapshot, and each resource alone.
#![no_main]

use libfuzzer_sys::fuzz_target;
use prost::Message;
use serin_proto::v1;
use serin_proxy::snapshot::{Policy, Service, ServiceEndpoints, Snapshot};

fuzz_target!(|bytes: &[u8]| {
    if let Ok(snapshot) = v1::Snapshot::decode(bytes) {
        let _ = Snapshot::from_proto("fuzz".into(), snapshot);
    }
    if let Ok(policy) = v1::TrafficPolicy::decode(bytes) {
        let _ = Policy::try_from(policy);
    }
    if let Ok(service) = v1::Service::decode(bytes) {
        let _ = Service::try_from(service);
    }
    if let Ok(endpoints) = v1::ServiceEndpoints::decode(bytes) {
        let _ = ServiceEndpoints::try_from(endpoints);
    }
});
