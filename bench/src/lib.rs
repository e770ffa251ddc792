//! `serin-bench`: Serin side by side with nginx, HAProxy and no proxy at all, in network
//! namespaces on one machine; see BENCHMARKS.md for the method and `app` for the run.

#![forbid(unsafe_code)]

pub mod app;
pub mod control;
pub mod drive;
pub mod features;
pub mod flips;
pub mod histogram;
pub mod load;
pub mod machine;
pub mod mtls;
pub mod peers;
pub mod pinning;
pub mod report;
pub mod resources;
pub mod run;
pub mod shape;
pub mod upstream;
pub mod workload;
