//! TrafficPolicy model, validation, compilation and request matching (pure, no I/O)

#![forbid(unsafe_code)]
