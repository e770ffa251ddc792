//! Plans, installs and removes the sidecar's iptables capture rules

#![forbid(unsafe_code)]
