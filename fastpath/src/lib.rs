//! The TAS fast path: everything that runs on a fast-path core.
//!
//! - [`wire`]: zero-copy views and emitters for Ethernet, ARP, IPv4 and TCP.
//! - [`flow`]: the 128-byte per-flow state and the flow table.
//! - [`rx`], [`tx`]: segment processing and segment generation.
//! - [`io`]: the `PacketIo` trait with AF_XDP and in-memory implementations.
//! - [`core`]: the per-core poll loop that drives them.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod io;
pub mod time;
pub mod wire;
