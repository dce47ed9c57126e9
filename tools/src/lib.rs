//! Pieces of the TAS tools that are worth testing on their own: the pcap writer behind
//! `tasctl capture`, the aligned tables and the JSON views of `tasctl`, and the benchmark
//! harness's load generator and report.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod bench;
pub mod pcap;
pub mod table;
pub mod view;
