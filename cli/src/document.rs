//! Policy documents as users write them and as `get -o yaml|json` prints them: the YAML schema of
//! DESIGN.md, with `metadata.namespace` optional (it defaults to `--namespace`), `annotations`
//! allowed, and the fields the control plane sets (`generation`, `createTime`, `updateTime`)
//! printed on output and ignored on input, so that `get -o yaml` output can be applied again.
//!
//! serin-policy's `parse_policies` requires `metadata.namespace` and has no annotations, so the
//! document shell is read here and the spec by serin-policy's own types.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serin_control::model::PolicyDraft;
use serin_policy::model::{API_VERSION, KIND};
use serin_policy::{Metadata, PolicySpec, TrafficPolicy};

/// One document as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Document {
    /// `serin.io/v1`.
    pub api_version: String,
    /// `TrafficPolicy`.
    pub kind: String,
    /// Identity and bookkeeping.
    pub metadata: DocumentMetadata,
    /// The policy.
    pub spec: PolicySpec,
}

/// `metadata` as written or printed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DocumentMetadata {
    /// Policy name.
    pub name: String,
    /// Namespace; `--namespace` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Set by the control plane; ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<u64>,
    /// Labels.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Annotations.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Set by the control plane (RFC 3339); ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_time: Option<String>,
    /// Set by the control plane (RFC 3339); ignored on input.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub update_time: Option<String>,
}

impl Document {
    /// The policy to send, with `namespace` filled in when the document has none.
    pub fn into_draft(self, namespace: &str) -> PolicyDraft {
        let m = self.metadata;
        PolicyDraft {
            policy: TrafficPolicy {
                api_version: self.api_version,
                kind: self.kind,
                metadata: Metadata {
                    name: m.name,
                    namespace: m.namespace.unwrap_or_else(|| namespace.to_owned()),
                    generation: None,
                    labels: (!m.labels.is_empty()).then_some(m.labels),
                },
                spec: self.spec,
            },
            annotations: m.annotations,
        }
    }

    /// The document of a policy read from the control plane.
    pub fn from_draft(
        d: PolicyDraft,
        generation: u64,
        times: (Option<String>, Option<String>),
    ) -> Document {
        let p = d.policy;
        Document {
            api_version: API_VERSION.to_owned(),
            kind: KIND.to_owned(),
            metadata: DocumentMetadata {
                name: p.metadata.name,
                namespace: Some(p.metadata.namespace),
                generation: Some(generation),
                labels: p.metadata.labels.unwrap_or_default(),
                annotations: d.annotations,
                create_time: times.0,
                update_time: times.1,
            },
            spec: p.spec,
        }
    }
}

/// A document that cannot be read: which one, where, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {} ({}): {message}", .index + 1, .position)]
pub struct DocumentError {
    /// Index from 0 (shown from 1).
    pub index: usize,
    /// `line L, column C` of the whole input, or `position unknown`.
    pub position: String,
    /// What is wrong.
    pub message: String,
}

fn yaml_error(index: usize, e: &serde_yaml_ng::Error) -> DocumentError {
    let mut message = e.to_string();
    let position = match e.location() {
        Some(loc) => {
            let suffix = format!(" at line {} column {}", loc.line(), loc.column());
            if let Some(stripped) = message.strip_suffix(&suffix) {
                message = stripped.to_owned();
            }
            format!("line {}, column {}", loc.line(), loc.column())
        }
        None => "position unknown".to_owned(),
    };
    DocumentError {
        index,
        position,
        message,
    }
}

/// Every non-empty document of `text` (YAML, `---` separated; JSON is YAML too), with the index
/// of each in the input. Stops at the first document that cannot be read.
pub fn parse(text: &str) -> Result<Vec<(usize, Document)>, DocumentError> {
    let mut out = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        let value =
            serde_yaml_ng::Value::deserialize(document).map_err(|e| yaml_error(index, &e))?;
        if value.is_null() {
            continue;
        }
        // Read the same document again straight into the typed form, so errors carry positions.
        let again = serde_yaml_ng::Deserializer::from_str(text)
            .nth(index)
            .expect("the document index comes from iterating the same text");
        out.push((
            index,
            Document::deserialize(again).map_err(|e| yaml_error(index, &e))?,
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: reviews}
spec:
  service: reviews
  default:
    route: [{version: v1, weight: 100}]
";

    #[test]
    fn namespace_defaults_and_empty_documents_are_skipped() {
        crate::test_tracing();
        let text = format!(
            "---\n# nothing\n---\n{ONE}---\n{}",
            ONE.replace("{name: reviews}", "{name: ratings, namespace: shop}")
        );
        let docs = parse(&text).unwrap();
        assert_eq!(
            docs.iter().map(|(i, _)| *i).collect::<Vec<_>>(),
            [1, 2],
            "the comment-only document 0 is skipped"
        );
        let first = docs[0].1.clone().into_draft("team");
        assert_eq!(first.policy.metadata.namespace, "team");
        let second = docs[1].1.clone().into_draft("team");
        assert_eq!(second.policy.metadata.namespace, "shop");
        serin_policy::validate(&first.policy, None).unwrap();
    }

    #[test]
    fn errors_name_the_document_line_and_field() {
        crate::test_tracing();
        let bad = ONE.replace(
            "  service: reviews\n",
            "  service: reviews\n  stickyness: {cookie: uid}\n",
        );
        let err = parse(&format!("{ONE}---\n{bad}")).unwrap_err();
        assert_eq!(err.index, 1);
        assert!(
            err.to_string()
                .starts_with("document 2 (line 14, column 3): spec: unknown field `stickyness`"),
            "{err}"
        );
    }

    #[test]
    fn printed_documents_read_back() {
        crate::test_tracing();
        let draft = parse(ONE).unwrap().remove(0).1.into_draft("default");
        let doc = Document::from_draft(
            draft.clone(),
            3,
            (Some("2026-01-01T00:00:00Z".into()), None),
        );
        let text = serde_yaml_ng::to_string(&doc).unwrap();
        assert!(text.contains("generation: 3"), "{text}");
        let back = parse(&text).unwrap().remove(0).1.into_draft("elsewhere");
        assert_eq!(back, draft);
    }
}
