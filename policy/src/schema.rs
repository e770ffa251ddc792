//! The TrafficPolicy CustomResourceDefinition (`trafficpolicies.serin.io`, v1), its OpenAPI v3
//! schema generated from the policy types so that the CRD and the Rust model cannot drift apart
//! (feature `schema`).

use schemars::generate::SchemaSettings;
use serde_json::{Map, Value, json};

use crate::model::PolicySpec;

/// Formats Kubernetes knows; others are dropped from the generated schema.
const KUBERNETES_FORMATS: &[&str] = &[
    "int32",
    "int64",
    "float",
    "double",
    "byte",
    "date",
    "date-time",
];

/// The structural OpenAPI v3 schema of `spec`, as a CRD takes it: inlined, no `$schema`, no
/// `additionalProperties: false` (a CRD prunes unknown fields instead), no defaults.
pub fn spec_schema() -> Value {
    let generator = SchemaSettings::openapi3()
        .with(|s| {
            s.inline_subschemas = true;
            s.meta_schema = None;
        })
        .into_generator();
    let schema = generator.into_root_schema_for::<PolicySpec>();
    let mut value = schema.to_value();
    clean(&mut value);
    value
}

/// Removes what a CRD schema must not have, from a schema object and every schema inside it.
fn clean(value: &mut Value) {
    match value {
        Value::Object(map) => {
            // `properties` maps field names to schemas: the names are not keywords.
            if let Some(Value::Object(properties)) = map.get_mut("properties") {
                properties.values_mut().for_each(clean);
            }
            map.remove("$schema");
            map.remove("title");
            map.remove("default");
            map.remove("definitions");
            map.remove("$defs");
            if map.get("additionalProperties") == Some(&Value::Bool(false)) {
                map.remove("additionalProperties");
            }
            if let Some(Value::String(format)) = map.get("format")
                && !KUBERNETES_FORMATS.contains(&format.as_str())
            {
                map.remove("format");
            }
            for (k, v) in map.iter_mut() {
                if k != "properties" {
                    clean(v);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(clean),
        _ => {}
    }
}

/// The whole CustomResourceDefinition, with the status subresource and printer columns.
pub fn crd() -> Value {
    let status = json!({
        "type": "object",
        "description": "Written by the control plane.",
        "properties": {
            "observedGeneration": {"type": "integer", "format": "int64", "description": "The generation the control plane last pushed."},
            "proxiesInSync": {"type": "integer", "format": "int64", "description": "Proxies of the service that acknowledged it."},
            "proxiesTotal": {"type": "integer", "format": "int64", "description": "Proxies of the service."},
            "lastError": {"type": "string", "description": "The last rejection (validation or NACK), empty when none."},
            "replicas": {
                "type": "object",
                "description": "Each control-plane replica's own counts (its connected proxies); the totals above are their sums.",
                "additionalProperties": {
                    "type": "object",
                    "properties": {
                        "proxiesInSync": {"type": "integer", "format": "int64"},
                        "proxiesTotal": {"type": "integer", "format": "int64"},
                        "lastError": {"type": "string"},
                        "heartbeat": {"type": "integer", "format": "int64", "description": "Unix seconds of the replica's last write."}
                    }
                }
            }
        }
    });
    let mut properties = Map::new();
    properties.insert("apiVersion".into(), json!({"type": "string"}));
    properties.insert("kind".into(), json!({"type": "string"}));
    properties.insert("metadata".into(), json!({"type": "object"}));
    properties.insert("spec".into(), spec_schema());
    properties.insert("status".into(), status);
    json!({
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "trafficpolicies.serin.io",
            "labels": {"app.kubernetes.io/part-of": "serin"}
        },
        "spec": {
            "group": "serin.io",
            "names": {
                "kind": "TrafficPolicy",
                "listKind": "TrafficPolicyList",
                "plural": "trafficpolicies",
                "singular": "trafficpolicy",
                "shortNames": ["tp"]
            },
            "scope": "Namespaced",
            "versions": [{
                "name": "v1",
                "served": true,
                "storage": true,
                "subresources": {"status": {}},
                "additionalPrinterColumns": [
                    {"name": "Service", "type": "string", "jsonPath": ".spec.service"},
                    {"name": "In sync", "type": "integer", "jsonPath": ".status.proxiesInSync"},
                    {"name": "Proxies", "type": "integer", "jsonPath": ".status.proxiesTotal"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"}
                ],
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "description": "How requests to one service are spread over its versions.",
                        "required": ["spec"],
                        "properties": properties
                    }
                }
            }]
        }
    })
}
