//! Reading policies from text: one or several YAML documents (`---` separated) or JSON (one
//! object, an array of objects, or a stream of objects). Errors say which document and where.

use serde::Deserialize;

use crate::model::TrafficPolicy;

/// A policy document that could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("document {} ({}): {message}", .document + 1, self.position())]
pub struct ParseError {
    /// Index of the document in the input, from 0 (shown from 1).
    pub document: usize,
    /// Line of the error in the whole input, from 1, when known.
    pub line: Option<usize>,
    /// Column of the error, from 1, when known.
    pub column: Option<usize>,
    /// What is wrong, with the field path when the parser knows it (`spec.rules[0]: unknown field ...`).
    pub message: String,
}

impl ParseError {
    fn position(&self) -> String {
        match (self.line, self.column) {
            (Some(l), Some(c)) => format!("line {l}, column {c}"),
            (Some(l), None) => format!("line {l}"),
            _ => "position unknown".to_owned(),
        }
    }

    fn from_yaml(document: usize, err: &serde_yaml_ng::Error) -> Self {
        let mut message = err.to_string();
        let (line, column) = match err.location() {
            Some(loc) => {
                // The YAML error text ends with its own " at line L column C": keep it once, in our fields.
                let suffix = format!(" at line {} column {}", loc.line(), loc.column());
                if let Some(stripped) = message.strip_suffix(&suffix) {
                    message = stripped.to_owned();
                }
                (Some(loc.line()), Some(loc.column()))
            }
            None => (None, None),
        };
        Self {
            document,
            line,
            column,
            message,
        }
    }

    fn from_json(document: usize, err: &serde_json::Error) -> Self {
        let mut message = err.to_string();
        let suffix = format!(" at line {} column {}", err.line(), err.column());
        if let Some(stripped) = message.strip_suffix(&suffix) {
            message = stripped.to_owned();
        }
        let known = err.line() != 0;
        Self {
            document,
            line: known.then_some(err.line()),
            column: known.then_some(err.column()),
            message,
        }
    }
}

/// Reads every policy in `text`: YAML documents separated by `---` (empty documents are skipped),
/// or JSON when the text starts with `{` or `[`. Stops at the first document that fails.
pub fn parse_policies(text: &str) -> Result<Vec<TrafficPolicy>, ParseError> {
    let trimmed = text.trim_start();
    if trimmed.starts_with('{') || trimmed.starts_with('[') {
        parse_json(text)
    } else {
        parse_yaml(text)
    }
}

/// Reads exactly one policy from `text` (YAML or JSON).
pub fn parse_policy(text: &str) -> Result<TrafficPolicy, ParseError> {
    let mut all = parse_policies(text)?;
    match all.len() {
        1 => Ok(all.remove(0)),
        n => Err(ParseError {
            document: n.min(1),
            line: None,
            column: None,
            message: format!("expected exactly one policy document, found {n}"),
        }),
    }
}

fn parse_yaml(text: &str) -> Result<Vec<TrafficPolicy>, ParseError> {
    let mut policies = Vec::new();
    for (index, document) in serde_yaml_ng::Deserializer::from_str(text).enumerate() {
        // Read into a generic value first so that comment-only documents can be skipped; then
        // deserialize from the same document again for error positions in the original text.
        let value = serde_yaml_ng::Value::deserialize(document)
            .map_err(|e| ParseError::from_yaml(index, &e))?;
        if value.is_null() {
            continue;
        }
        policies.push(typed_yaml_document(text, index)?);
    }
    Ok(policies)
}

/// Deserializes document `index` of `text` straight into a policy, so that errors carry positions.
fn typed_yaml_document(text: &str, index: usize) -> Result<TrafficPolicy, ParseError> {
    let document = serde_yaml_ng::Deserializer::from_str(text)
        .nth(index)
        .expect("document index comes from iterating the same text");
    TrafficPolicy::deserialize(document).map_err(|e| ParseError::from_yaml(index, &e))
}

fn parse_json(text: &str) -> Result<Vec<TrafficPolicy>, ParseError> {
    if text.trim_start().starts_with('[') {
        return serde_json::from_str::<Vec<TrafficPolicy>>(text)
            .map_err(|e| ParseError::from_json(0, &e));
    }
    let mut policies = Vec::new();
    for (index, item) in serde_json::Deserializer::from_str(text)
        .into_iter()
        .enumerate()
    {
        policies.push(item.map_err(|e| ParseError::from_json(index, &e))?);
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: &str = "apiVersion: serin.io/v1
kind: TrafficPolicy
metadata: {name: reviews, namespace: default}
spec:
  service: reviews
  default:
    route: [{version: v1, weight: 100}]
";

    #[test]
    fn multi_document_yaml_skips_empty_documents() {
        let text = format!(
            "---\n# only a comment\n---\n{ONE}---\n{}",
            ONE.replace("reviews", "ratings")
        );
        let policies = parse_policies(&text).unwrap();
        let services: Vec<_> = policies.iter().map(|p| p.spec.service.as_str()).collect();
        assert_eq!(services, ["reviews", "ratings"]);
    }

    #[test]
    fn unknown_field_names_document_line_and_field() {
        let bad = ONE.replace(
            "  service: reviews\n",
            "  service: reviews\n  stickyness: {cookie: uid}\n",
        );
        let text = format!("{ONE}---\n{bad}");
        let err = parse_policies(&text).unwrap_err();
        assert_eq!(err.document, 1, "{err}");
        // Document 2 starts on line 9 (after 7 lines and `---`); `stickyness` is its 6th line.
        assert_eq!(err.line, Some(14), "{err}");
        assert_eq!(err.column, Some(3), "{err}");
        assert!(err.message.contains("unknown field `stickyness`"), "{err}");
        assert!(err.message.starts_with("spec: "), "{err}");
        assert!(
            err.to_string()
                .starts_with("document 2 (line 14, column 3): spec: "),
            "{err}"
        );
    }

    #[test]
    fn typo_in_string_match_is_rejected() {
        let text = ONE.replace(
            "  default:",
            "  rules:\n  - name: t\n    match: [{headers: {end-user: {exact: a, ignorecase: true}}}]\n    route: [{version: v1, weight: 1}]\n  default:",
        );
        let err = parse_policy(&text).unwrap_err();
        assert!(err.message.contains("unknown field `ignorecase`"), "{err}");
        assert!(err.message.contains("expected one of"), "{err}");
        assert_eq!((err.line, err.column), (Some(8), Some(45)), "{err}");
    }

    #[test]
    fn json_object_stream_and_array() {
        let policy = parse_policy(ONE).unwrap();
        let one = serde_json::to_string(&policy).unwrap();
        assert_eq!(parse_policies(&one).unwrap(), vec![policy]);
        let stream = format!("{one}\n{one}");
        assert_eq!(parse_policies(&stream).unwrap().len(), 2);
        let array = format!("[{one},{one}]");
        assert_eq!(parse_policies(&array).unwrap().len(), 2);
    }

    #[test]
    fn json_error_has_document_and_position() {
        let policy = parse_policy(ONE).unwrap();
        let one = serde_json::to_string(&policy).unwrap();
        let bad = one.replace("\"kind\"", "\"knd\"");
        let err = parse_policies(&format!("{one}\n{bad}")).unwrap_err();
        assert_eq!(err.document, 1);
        assert_eq!(err.line, Some(2));
        assert!(err.message.contains("unknown field `knd`"), "{err}");
    }

    #[test]
    fn yaml_round_trip_keeps_the_policy() {
        let policy = parse_policy(ONE).unwrap();
        let text = serde_yaml_ng::to_string(&policy).unwrap();
        assert_eq!(parse_policy(&text).unwrap(), policy);
        assert!(
            !text.contains("null"),
            "absent fields are not written: {text}"
        );
    }

    #[test]
    fn parse_policy_wants_exactly_one() {
        let err = parse_policy(&format!("{ONE}---\n{ONE}")).unwrap_err();
        assert!(err.message.contains("found 2"), "{err}");
        assert!(parse_policy("").unwrap_err().message.contains("found 0"));
    }

    #[test]
    fn syntax_error_in_a_later_document_names_that_document() {
        let text = format!("{ONE}---\nkind: [unclosed\n---\n{ONE}");
        let err = parse_policies(&text).unwrap_err();
        assert_eq!(err.document, 1, "{err}");
        assert!(err.line.is_some_and(|l| l >= 9), "{err}");
    }

    #[test]
    fn syntax_error_has_position() {
        let err = parse_policies("apiVersion: [\n").unwrap_err();
        assert_eq!(err.document, 0);
        assert!(err.line.is_some(), "{err}");
    }
}
