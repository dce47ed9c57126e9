//! The parts of `tas-impair`, the in-path impairment forwarder (see `src/bin/tas-impair.rs`).
//!
//! - [`units`]: the command line's quantities (durations, rates, queue sizes, probabilities);
//! - [`sched`]: one direction's impairment pipeline, sans-I/O, on a clock passed in;
//! - [`ecn`]: CE marking of IPv4 frames with an incremental checksum update;
//! - [`forward`]: the single-threaded loop between two interfaces;
//! - [`sys`]: AF_PACKET sockets, ppoll, signals: the only module with `unsafe`.

pub mod ecn;
pub mod forward;
pub mod sched;
pub mod sys;
pub mod units;
