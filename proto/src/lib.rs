//! The serin.v1 wire contract: .proto files and the code generated from them

#![forbid(unsafe_code)]
