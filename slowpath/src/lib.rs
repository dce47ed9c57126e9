//! The TAS slow path and the pieces of the `tasd` service.
//!
//! - [`slow`]: the sans-I/O slow path (connection setup/teardown, listeners, timers,
//!   neighbour resolution, application control requests).
//! - [`config`]: configuration file and flags.
//! - [`frames`]: frames the slow path builds.
//! - [`attach`], [`region`]: the application socket and the shared regions.
//! - [`grpc`]: the administration API; [`metrics`]: counters' help and the Prometheus
//!   endpoint; [`live`]: configuration changes while running; [`service`]: the `tasd`
//!   runtime that wires it all.
//! - [`info`]: what an application's `TCP_INFO` reports.
//! - [`sim`]: a whole service on the in-memory link for deterministic tests.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod attach;
pub mod cc;
pub mod config;
pub mod frames;
pub mod grpc;
pub mod info;
pub mod live;
pub mod metrics;
pub mod packet_socket;
pub mod region;
pub mod sack;
pub mod service;
pub mod sim;
pub mod slow;
