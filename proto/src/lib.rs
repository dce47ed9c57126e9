//! Contracts between the processes of the TAS service: nothing but layouts, message
//! types and the one queue implementation both sides of shared memory must share.
//!
//! - [`shm`]: the application <-> fast-path shared-memory ABI.
//! - [`queue`]: the SPSC descriptor queue over that memory.
//! - [`attach`]: the registration/control protocol on the service's Unix socket.
//! - `control` (feature `grpc`): the gRPC administration API used by `tasd` and `tasctl`.
#![warn(missing_docs)]
#![deny(unsafe_code)]

pub mod attach;
pub mod queue;
pub mod shm;

/// The gRPC administration API, generated from `control.proto`.
#[cfg(feature = "grpc")]
#[allow(missing_docs, clippy::all)]
pub mod control {
    tonic::include_proto!("tas.control.v1");
}
