//! The TAS fast path: everything that runs on a fast-path core.
//!
//! - [`wire`]: zero-copy views and emitters for Ethernet, ARP, IPv4 and TCP.
//! - [`flow`]: the 128-byte per-flow state and the flow table.
//! - [`rx`], [`tx`], [`qman`]: segment processing, segment generation, transmit scheduling.
//! - [`io`]: the `PacketIo` trait with AF_XDP and in-memory implementations.
//! - [`core`]: the per-core engine and its poll loop; [`ctl`]: its messages to and
//!   from the slow path; [`appmem`]: its (only) access to application memory;
//!   [`cycles`]: busy and idle cycles per core; [`shard`]: the multi-core fast path
//!   (shards, the threads that serve them, and scaling their number).
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod appmem;
pub mod core;
pub mod ctl;
pub mod cycles;
pub mod flow;
pub mod io;
pub mod qman;
pub mod rx;
pub mod shard;
pub mod sys;
pub mod time;
pub mod tx;
pub mod wire;
