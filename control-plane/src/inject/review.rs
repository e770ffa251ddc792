//! AdmissionReview v1 as the API server sends it to a mutating webhook, and the answer: the pod
//! allowed with a JSONPatch, allowed unchanged, or refused with a reason when its injection
//! settings are wrong. Only the fields the webhook reads are modelled; the rest is ignored.

use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::config::InjectConfig;
use super::pod::{NamespaceInjection, Outcome, decide};

/// `apiVersion` of the reviews this webhook takes and sends.
pub const API_VERSION: &str = "admission.k8s.io/v1";
/// `kind` of the reviews.
pub const KIND: &str = "AdmissionReview";

/// An AdmissionReview (request or response).
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionReview {
    /// `admission.k8s.io/v1`.
    #[serde(default)]
    pub api_version: String,
    /// `AdmissionReview`.
    #[serde(default)]
    pub kind: String,
    /// Set by the API server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<AdmissionRequest>,
    /// Set by the webhook.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response: Option<AdmissionResponse>,
}

/// The group, version and kind of the object under review.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct GroupVersionKind {
    /// API group (`""` for the core group).
    #[serde(default)]
    pub group: String,
    /// API version (`v1`).
    #[serde(default)]
    pub version: String,
    /// Kind (`Pod`).
    #[serde(default)]
    pub kind: String,
}

/// What the API server asks about.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionRequest {
    /// Copied into the response.
    pub uid: String,
    /// The object's kind.
    #[serde(default)]
    pub kind: GroupVersionKind,
    /// The object's namespace (may be empty).
    #[serde(default)]
    pub namespace: Option<String>,
    /// The object's name (empty for a pod created with `generateName` only).
    #[serde(default)]
    pub name: Option<String>,
    /// CREATE, UPDATE, DELETE or CONNECT.
    #[serde(default)]
    pub operation: String,
    /// The object as it will be stored.
    #[serde(default)]
    pub object: Option<Value>,
}

/// The webhook's answer.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AdmissionResponse {
    /// The request's uid.
    pub uid: String,
    /// Whether the object may be stored.
    pub allowed: bool,
    /// `JSONPatch` when `patch` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch_type: Option<String>,
    /// The base64 of the JSONPatch document.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patch: Option<String>,
    /// Why the object was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
}

/// A refusal's reason, shown to the user by the API server.
#[derive(Debug, Clone, Default, Deserialize, Serialize, PartialEq)]
pub struct Status {
    /// HTTP-like code.
    pub code: u16,
    /// The message.
    pub message: String,
}

/// A body that is not an AdmissionReview v1 request: answered with HTTP 400 and this reason.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    /// Empty body.
    #[error("empty body: expected an AdmissionReview ({API_VERSION}) as JSON")]
    Empty,
    /// Not JSON, or not an AdmissionReview's shape.
    #[error("the body is not an AdmissionReview: {0}")]
    Malformed(String),
    /// Another apiVersion or kind.
    #[error(
        "expected apiVersion {API_VERSION} kind {KIND}, got apiVersion {api_version:?} kind {kind:?}"
    )]
    WrongType {
        /// What was sent.
        api_version: String,
        /// What was sent.
        kind: String,
    },
    /// No `request`.
    #[error("the AdmissionReview has no request")]
    NoRequest,
}

/// Answers an AdmissionReview: the body as received, the injection settings and what to assume
/// about the namespace (the webhook configuration's selectors decide which pods are sent, so the
/// server passes [`NamespaceInjection::Enabled`]).
pub fn review(
    body: &[u8],
    config: &InjectConfig,
    namespace_injection: NamespaceInjection,
) -> Result<AdmissionReview, ReviewError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ReviewError::Empty);
    }
    let review: AdmissionReview =
        serde_json::from_slice(body).map_err(|e| ReviewError::Malformed(e.to_string()))?;
    if review.api_version != API_VERSION || review.kind != KIND {
        return Err(ReviewError::WrongType {
            api_version: review.api_version,
            kind: review.kind,
        });
    }
    let request = review.request.ok_or(ReviewError::NoRequest)?;
    let response = respond(&request, config, namespace_injection);
    Ok(AdmissionReview {
        api_version: API_VERSION.to_owned(),
        kind: KIND.to_owned(),
        request: None,
        response: Some(response),
    })
}

fn respond(
    request: &AdmissionRequest,
    config: &InjectConfig,
    namespace_injection: NamespaceInjection,
) -> AdmissionResponse {
    let allowed = AdmissionResponse {
        uid: request.uid.clone(),
        allowed: true,
        ..AdmissionResponse::default()
    };
    let is_pod = request.kind.group.is_empty() && request.kind.kind == "Pod";
    let Some(object) = request.object.as_ref().filter(|_| is_pod) else {
        tracing::debug!(uid = %request.uid, kind = %request.kind.kind, "not a pod: allowed unchanged");
        return allowed;
    };
    if request.operation != "CREATE" {
        return allowed;
    }
    let pod: Pod = match serde_json::from_value(object.clone()) {
        Ok(pod) => pod,
        Err(e) => return refuse(request, format!("not a valid pod: {e}")),
    };
    // The request names the namespace; a pod's own metadata may leave it empty on create.
    let namespace = request
        .namespace
        .clone()
        .filter(|ns| !ns.is_empty())
        .or_else(|| pod.metadata.namespace.clone())
        .unwrap_or_default();
    let name = pod_name(request, &pod);
    match decide(&pod, &namespace, namespace_injection, config) {
        Ok(Outcome::Skip(why)) => {
            tracing::info!(pod = %name, namespace = %namespace, reason = %why, "not injected");
            allowed
        }
        Ok(Outcome::Inject(ops)) => {
            let patch = match serde_json::to_vec(&ops) {
                Ok(patch) => patch,
                Err(e) => return refuse(request, format!("cannot encode the patch: {e}")),
            };
            tracing::info!(pod = %name, namespace = %namespace, "injected");
            AdmissionResponse {
                patch_type: Some("JSONPatch".to_owned()),
                patch: Some(BASE64.encode(patch)),
                ..allowed
            }
        }
        Err(e) => refuse(
            request,
            format!("serin sidecar injection: pod {namespace}/{name}: {e}"),
        ),
    }
}

/// The pod's name for messages: its name, or its `generateName` prefix followed by `*`.
fn pod_name(request: &AdmissionRequest, pod: &Pod) -> String {
    request
        .name
        .clone()
        .filter(|n| !n.is_empty())
        .or_else(|| pod.metadata.name.clone())
        .or_else(|| pod.metadata.generate_name.as_ref().map(|g| format!("{g}*")))
        .unwrap_or_else(|| "(unnamed)".to_owned())
}

fn refuse(request: &AdmissionRequest, message: String) -> AdmissionResponse {
    tracing::warn!(uid = %request.uid, %message, "pod refused");
    AdmissionResponse {
        uid: request.uid.clone(),
        allowed: false,
        status: Some(Status { code: 400, message }),
        ..AdmissionResponse::default()
    }
}

/// The JSONPatch of a response, decoded (for tests and tools).
pub fn decoded_patch(response: &AdmissionResponse) -> Result<json_patch::Patch, String> {
    let Some(encoded) = &response.patch else {
        return Ok(json_patch::Patch(Vec::new()));
    };
    let bytes = BASE64
        .decode(encoded)
        .map_err(|e| format!("patch is not base64: {e}"))?;
    serde_json::from_slice(&bytes).map_err(|e| format!("patch is not a JSONPatch: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn review_of(object: &Value, namespace: &str) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({
            "apiVersion": API_VERSION,
            "kind": KIND,
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "namespace": namespace,
                "operation": "CREATE",
                "userInfo": {"username": "system:serviceaccount:kube-system:replicaset-controller"},
                "object": object,
                "dryRun": false
            }
        }))
        .unwrap()
    }

    fn pod() -> Value {
        serde_json::json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"generateName": "reviews-v1-7d9f8-", "labels": {"app": "reviews"}},
            "spec": {"containers": [{"name": "app", "image": "reviews:1"}]}
        })
    }

    #[test]
    fn generate_name_only_pod_gets_a_patch_with_the_uid() {
        let out = review(
            &review_of(&pod(), "shop"),
            &InjectConfig::default(),
            NamespaceInjection::Enabled,
        )
        .unwrap();
        let response = out.response.unwrap();
        assert_eq!(response.uid, "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert!(response.allowed);
        assert_eq!(response.patch_type.as_deref(), Some("JSONPatch"));
        let mut object = pod();
        json_patch::patch(&mut object, &decoded_patch(&response).unwrap()).unwrap();
        assert_eq!(object["spec"]["initContainers"][1]["name"], "serin-proxy");
    }

    #[test]
    fn an_empty_namespace_everywhere_still_injects() {
        let mut object = pod();
        object["metadata"]["namespace"] = "".into();
        let out = review(
            &review_of(&object, ""),
            &InjectConfig::default(),
            NamespaceInjection::Enabled,
        )
        .unwrap()
        .response
        .unwrap();
        assert!(out.allowed && out.patch.is_some(), "{out:?}");
    }

    #[test]
    fn updates_are_allowed_unchanged() {
        let mut body: Value = serde_json::from_slice(&review_of(&pod(), "shop")).unwrap();
        body["request"]["operation"] = "UPDATE".into();
        let out = review(
            &serde_json::to_vec(&body).unwrap(),
            &InjectConfig::default(),
            NamespaceInjection::Enabled,
        )
        .unwrap()
        .response
        .unwrap();
        assert!(out.allowed && out.patch.is_none());
    }

    #[test]
    fn kube_system_and_other_kinds_are_allowed_unchanged() {
        let config = InjectConfig::default();
        let out = review(
            &review_of(&pod(), "kube-system"),
            &config,
            NamespaceInjection::Enabled,
        )
        .unwrap()
        .response
        .unwrap();
        assert!(out.allowed && out.patch.is_none());
        let mut body: Value = serde_json::from_slice(&review_of(&pod(), "shop")).unwrap();
        body["request"]["kind"]["kind"] = "Service".into();
        let out = review(
            &serde_json::to_vec(&body).unwrap(),
            &config,
            NamespaceInjection::Enabled,
        )
        .unwrap()
        .response
        .unwrap();
        assert!(out.allowed && out.patch.is_none());
    }

    #[test]
    fn bodies_that_are_not_reviews_are_named() {
        let config = InjectConfig::default();
        let err = |body: &[u8]| {
            review(body, &config, NamespaceInjection::Enabled)
                .unwrap_err()
                .to_string()
        };
        assert!(err(b"").contains("empty body"));
        assert!(err(b"{").contains("not an AdmissionReview"));
        assert!(
            err(br#"{"apiVersion":"admission.k8s.io/v1beta1","kind":"AdmissionReview"}"#)
                .contains("admission.k8s.io/v1beta1")
        );
        assert!(
            err(br#"{"apiVersion":"admission.k8s.io/v1","kind":"AdmissionReview"}"#)
                .contains("no request")
        );
    }

    #[test]
    fn a_bad_annotation_is_refused_with_the_reason() {
        let mut object = pod();
        object["metadata"]["annotations"] =
            serde_json::json!({"traffic.serin.io/exclude-outbound-cidrs": "10.0.0.0/99"});
        let out = review(
            &review_of(&object, "shop"),
            &InjectConfig::default(),
            NamespaceInjection::Enabled,
        )
        .unwrap()
        .response
        .unwrap();
        assert!(!out.allowed);
        let message = out.status.unwrap().message;
        assert!(message.contains("shop/reviews-v1-7d9f8-*"), "{message}");
        assert!(
            message.contains("traffic.serin.io/exclude-outbound-cidrs"),
            "{message}"
        );
    }
}
