//! TrafficPolicy model, validation, compilation and request matching (pure, no I/O): shared by the
//! sidecar (routes with it), the control plane (validates with it) and serinctl (`explain`).
//!
//! The path of a policy: text → [`parse_policies`] → [`TrafficPolicy`] → [`validate`] (errors
//! with field paths, warnings) → [`CompiledPolicy`] → per request [`CompiledPolicy::decide`]
//! (rule, sticky or random version, fallback) and [`CompiledPolicy::mirror`].

#![forbid(unsafe_code)]

pub mod compile;
pub mod cookie;
pub mod decision;
pub mod edit;
pub mod matching;
pub mod model;
pub mod os;
pub mod parse;
pub mod query;
pub mod split;
pub mod validate;

pub use compile::CompiledPolicy;
pub use decision::{Choice, Decision, MIRROR_BODY_LIMIT, Selection, Target};
pub use edit::EditError;
pub use matching::{RequestHead, RequestView, TakenBy};
pub use model::{
    MatchBlock, Metadata, MirrorPolicy, PolicySpec, Route, Rule, Stickiness, StringMatch,
    TrafficPolicy, UriMatch, VersionWeight, Weight,
};
pub use os::OsClass;
pub use parse::{ParseError, parse_policies, parse_policy};
pub use split::Split;
pub use validate::{
    ErrorKind, Validated, ValidationError, ValidationWarning, WarningKind, validate,
};
