//! A mesh of pods as network namespaces on one Linux host

#![forbid(unsafe_code)]
