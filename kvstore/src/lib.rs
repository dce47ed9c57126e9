//! `tas-kv`: a Redis-protocol key-value server built on the TAS native API (libtas), with
//! a lock-free multi-version store.
//!
//! - [`store`]: the concurrent store — an optimistic multi-version hash map whose bucket
//!   versions are swapped atomically (arc-swap), values shared by reference count, lazy and
//!   active expiry, `maxmemory` with sampled-LRU eviction.
//! - [`resp`]: the RESP request parser (in place, never panicking) and reply encoder
//!   (RESP2 and RESP3), with a reply queue that holds stored values by reference.
//! - [`cmd`]: the commands.
//! - [`server`]: per-thread event loops on libtas (`--backend tas`) or on the kernel's
//!   sockets through epoll (`--backend kernel`), sharing one connection state machine.
//! - [`config`]: the command line and the TOML configuration file.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod cmd;
pub mod config;
pub mod resp;
pub mod server;
pub mod store;
pub mod sync;
