//! Offline injection (`serinctl inject`): multi-document YAML in, the same documents out with
//! every pod (template) injected by the same decision and patch as the webhook. Documents that
//! are not workloads, or whose pods are left alone, are written back byte for byte.

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

use super::config::InjectConfig;
use super::pod::{NamespaceInjection, Outcome, decide};

/// How `serinctl inject` decides without an API server.
#[derive(Debug, Clone)]
pub struct ManifestOptions {
    /// Namespace of documents that name none.
    pub default_namespace: String,
    /// What to assume about the namespaces' `serin-injection` label (there is no API server to
    /// ask): [`NamespaceInjection::Enabled`] injects every pod that does not opt out.
    pub namespace_injection: NamespaceInjection,
    /// Images, resources, control plane and Kubernetes version.
    pub config: InjectConfig,
}

/// A document that cannot be read or injected.
#[derive(Debug, thiserror::Error)]
#[error("document {index}{what}: {reason}")]
pub struct ManifestError {
    /// 1-based position of the document in the input.
    pub index: usize,
    /// ` (Kind name)` when known.
    pub what: String,
    /// What is wrong.
    pub reason: String,
}

/// Where a workload kind keeps its pod template (a JSON pointer), or `""` for a bare Pod.
pub fn pod_template_pointer(api_version: &str, kind: &str) -> Option<&'static str> {
    let group = api_version.rsplit_once('/').map_or("", |(g, _)| g);
    match (group, kind) {
        ("", "Pod") => Some(""),
        ("apps", "Deployment" | "StatefulSet" | "DaemonSet" | "ReplicaSet")
        | ("", "ReplicationController")
        | ("batch", "Job") => Some("/spec/template"),
        ("batch", "CronJob") => Some("/spec/jobTemplate/spec/template"),
        _ => None,
    }
}

/// Injects every pod and pod template in `text` (documents separated by `---` lines).
pub fn inject_manifests(text: &str, options: &ManifestOptions) -> Result<String, ManifestError> {
    let mut out = String::with_capacity(text.len() * 2);
    for (i, doc) in split_documents(text).into_iter().enumerate() {
        out.push_str(doc.separator);
        match inject_document(doc.body, options).map_err(|(what, reason)| ManifestError {
            index: i + 1,
            what,
            reason,
        })? {
            Some(injected) => out.push_str(&injected),
            None => out.push_str(doc.body),
        }
    }
    Ok(out)
}

/// One document: the `---` line before it (empty for the first) and its text.
struct Document<'a> {
    separator: &'a str,
    body: &'a str,
}

/// Splits at lines that start with `---` followed by nothing or whitespace (YAML's document
/// marker), keeping every byte.
fn split_documents(text: &str) -> Vec<Document<'_>> {
    let mut docs = Vec::new();
    let mut separator = "";
    let mut start = 0;
    let mut pos = 0;
    for line in text.split_inclusive('\n') {
        let is_marker = line
            .strip_prefix("---")
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(char::is_whitespace));
        if is_marker {
            docs.push(Document {
                separator,
                body: &text[start..pos],
            });
            separator = &text[pos..pos + line.len()];
            start = pos + line.len();
        }
        pos += line.len();
    }
    docs.push(Document {
        separator,
        body: &text[start..],
    });
    // A leading `---` leaves an empty first document: keep the text as is, but do not count it.
    if docs
        .first()
        .is_some_and(|d| d.separator.is_empty() && d.body.is_empty())
        && docs.len() > 1
    {
        docs.remove(0);
    }
    docs
}

/// `Some(yaml)` when the document changed, `None` to keep its text; errors are `(what, reason)`.
/// A list (`kind: List`, as `kubectl get -o yaml` prints, or a typed `...List`) has each of its
/// items injected.
fn inject_document(
    body: &str,
    options: &ManifestOptions,
) -> Result<Option<String>, (String, String)> {
    let mut value: Value = match serde_yaml_ng::from_str(body) {
        Ok(v) => v,
        // Only comments or nothing: not a document to inject.
        Err(_) if is_blank(body) => return Ok(None),
        Err(e) => return Err((String::new(), format!("not valid YAML: {e}"))),
    };
    let is_list = value
        .get("kind")
        .and_then(Value::as_str)
        .is_some_and(|k| k.ends_with("List"));
    let changed = match value.get_mut("items").and_then(Value::as_array_mut) {
        Some(items) if is_list => {
            let mut changed = false;
            for item in items {
                changed |= inject_object(item, options)?;
            }
            changed
        }
        _ => inject_object(&mut value, options)?,
    };
    if !changed {
        return Ok(None);
    }
    serde_yaml_ng::to_string(&value)
        .map(Some)
        .map_err(|e| (String::new(), format!("cannot write YAML: {e}")))
}

/// Injects the pod (template) of one object; `true` when it changed.
fn inject_object(value: &mut Value, options: &ManifestOptions) -> Result<bool, (String, String)> {
    let str_at = |p: &str| {
        value
            .pointer(p)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let (api_version, kind, name) = (
        str_at("/apiVersion"),
        str_at("/kind"),
        str_at("/metadata/name"),
    );
    let Some(pointer) = pod_template_pointer(&api_version, &kind) else {
        return Ok(false);
    };
    let what = format!(" ({kind} {name})");
    let namespace = Some(str_at("/metadata/namespace"))
        .filter(|ns| !ns.is_empty())
        .unwrap_or_else(|| options.default_namespace.clone());
    let Some(template) = value.pointer_mut(pointer) else {
        return Err((what, format!("has no pod template at {pointer}")));
    };
    let Some(object) = template.as_object_mut() else {
        return Err((what, format!("{pointer} is not a mapping")));
    };
    let pod_value = serde_json::json!({
        "metadata": object.get("metadata").cloned().unwrap_or_else(|| serde_json::json!({})),
        "spec": object.get("spec"),
    });
    let pod: Pod = serde_json::from_value(pod_value)
        .map_err(|e| (what.clone(), format!("not a valid pod template: {e}")))?;
    match decide(
        &pod,
        &namespace,
        options.namespace_injection,
        &options.config,
    ) {
        Ok(Outcome::Skip(_)) => Ok(false),
        Ok(Outcome::Inject(ops)) => {
            // The patch adds under /metadata: a template without metadata gets an empty one.
            object
                .entry("metadata")
                .or_insert_with(|| Value::Object(Default::default()));
            json_patch::patch(template, &ops)
                .map_err(|e| (what, format!("cannot apply the injection: {e}")))?;
            Ok(true)
        }
        Err(e) => Err((what, e.to_string())),
    }
}

fn is_blank(body: &str) -> bool {
    body.lines()
        .map(str::trim)
        .all(|l| l.is_empty() || l.starts_with('#'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options() -> ManifestOptions {
        ManifestOptions {
            default_namespace: "default".to_owned(),
            namespace_injection: NamespaceInjection::Enabled,
            config: InjectConfig::default(),
        }
    }

    #[test]
    fn other_documents_and_separators_pass_through_byte_for_byte() {
        let text = "# a service\napiVersion: v1\nkind: Service\nmetadata: {name: a}\n--- # next\nkind: ConfigMap\napiVersion: v1\n---\n\n";
        assert_eq!(inject_manifests(text, &options()).unwrap(), text);
    }

    #[test]
    fn a_deployment_template_is_injected_and_the_next_document_kept() {
        let text = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\nspec:\n  template:\n    spec:\n      containers: [{name: web, image: nginx}]\n---\nkind: Service\napiVersion: v1\n";
        let out = inject_manifests(text, &options()).unwrap();
        assert!(out.contains("serin-proxy"), "{out}");
        assert!(
            out.ends_with("---\nkind: Service\napiVersion: v1\n"),
            "{out}"
        );
        // Injecting the output again changes nothing.
        assert_eq!(inject_manifests(&out, &options()).unwrap(), out);
    }

    #[test]
    fn errors_name_the_document() {
        let text = "kind: Service\napiVersion: v1\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: p\n  labels: {sidecar.serin.io/inject: maybe}\nspec:\n  containers: [{name: a}]\n";
        let err = inject_manifests(text, &options()).unwrap_err().to_string();
        assert!(err.starts_with("document 2 (Pod p): label"), "{err}");
        let err = inject_manifests("a: [\n", &options())
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("document 1: not valid YAML"), "{err}");
    }
}
