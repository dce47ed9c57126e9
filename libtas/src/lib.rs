//! libtas: the application side of the TAS service.
//!
//! An application attaches to `tasd` ([`Context::attach`]), receives a shared-memory
//! region with one queue pair per fast-path core plus the slow path's event and request
//! queues, and per-connection receive/transmit byte rings. Data moves without system
//! calls: the application copies bytes into a transmit ring and posts a doorbell; the
//! fast path copies received payload straight into the receive ring and posts an event.
//!
//! ```no_run
//! use libtas::{Context, Error};
//! # fn main() -> Result<(), Error> {
//! let mut ctx = Context::attach()?;
//! let l = ctx.listen(7, 128)?;
//! let c = ctx.accept_blocking(l, None)?;
//! let mut buf = [0u8; 4096];
//! loop {
//!     let n = ctx.recv_blocking(c, &mut buf, None)?;
//!     if n == 0 { break; }
//!     ctx.send_all(c, &buf[..n], None)?;
//! }
//! ctx.close(c)?;
//! # Ok(()) }
//! ```
//!
//! Every operation has a non-blocking form (returning [`Error::WouldBlock`] when it
//! cannot make progress) and a blocking one built on [`Context::wait`]. Event-driven
//! programs use [`Context::next_event`] after [`Context::wait`].
//!
//! Everything read from the shared region is validated: a service that posts impossible
//! events makes the context fail with [`Error::Protocol`], never undefined behaviour.
//! `docs/abi.md` documents the region and protocols byte by byte.
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod attach;
mod context;
mod error;
mod shm;
mod sys;

pub use context::{Adoption, ConnId, ConnState, Context, Event, ListenOptions, ListenerId, RecvView, Token, DEFAULT_SPIN, SPIN_ENV};
pub use error::{Error, Result};
pub use tas_proto::shm::ConnInfo;
pub use shm::RegionMapping;
pub use tas_proto;
