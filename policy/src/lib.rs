//! TrafficPolicy model, validation, compilation and request matching (pure, no I/O): shared by the
//! sidecar (routes with it), the control plane (validates with it) and serinctl (`explain`).
//!
//! The path of a policy: text → [`parse_policies`] → [`TrafficPolicy`] → [`validate()`] (errors
//! with field paths, warnings) → [`CompiledPolicy`] → per request [`CompiledPolicy::decide`]
//! (rule, sticky or random version, fallback) and [`CompiledPolicy::mirror`].

//!
//! ```
//! use serin_policy::{CompiledPolicy, Target, parse_policy};
//!
//! let policy = parse_policy(
//!     "apiVersion: serin.io/v1
//! kind: TrafficPolicy
//! metadata: {name: reviews, namespace: default}
//! spec:
//!   service: reviews
//!   rules:
//!   - name: testers
//!     match: [{headers: {end-user: {exact: jason}}}]
//!     route: [{version: v3, weight: 100}]
//!   default:
//!     route: [{version: v1, weight: 90}, {version: v2, weight: 10}]
//!   stickiness: {cookie: uid}
//! ",
//! )?;
//! let compiled = CompiledPolicy::new(&policy).expect("valid policy");
//! let request = http::Request::get("/").header("end-user", "jason").body(())?;
//! // `random` comes from the caller's RNG; `ready` says which versions have ready endpoints.
//! let decision = compiled.decide(&request, 12345, |version| version != "v3");
//! assert_eq!(decision.chosen, "v3");
//! assert_eq!(decision.target, Target::FellBack("v1"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![forbid(unsafe_code)]

pub mod compile;
pub mod cookie;
pub mod decision;
pub mod edit;
pub mod matching;
pub mod model;
pub mod os;
pub mod parse;
#[cfg(feature = "proto")]
pub mod proto;
pub mod query;
#[cfg(feature = "schema")]
pub mod schema;
pub mod split;
pub mod validate;

pub use compile::CompiledPolicy;
pub use decision::{Choice, Decision, MIRROR_BODY_LIMIT, Selection, Target};
pub use edit::{EditError, RouteMatch};
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
