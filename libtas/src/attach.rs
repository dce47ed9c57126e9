//! The attach handshake on the service's Unix socket (see `tas_proto::attach` and
//! `docs/abi.md`): send `Hello`, receive `Response` and, with `HelloOk`, the region fd,
//! the app eventfd and one doorbell eventfd per fast-path core.

use std::os::fd::OwnedFd;
use std::path::Path;
use std::time::Duration;

use prost::Message;
use tas_proto::attach::{response, Hello, HelloOk, Response, MAX_MESSAGE};
use tas_proto::shm::{ErrorCode, ABI_VERSION};

use crate::error::{intern_path, Error, Result};
use crate::sys::SeqPacket;

/// What the service answered to a `Hello` (low level: [`crate::Context::attach_to`] is
/// the normal way in; this exists for tools and tests of the protocol itself).
#[derive(Debug)]
pub struct Exchange {
    /// The decoded reply.
    pub response: Response,
    /// The descriptors passed with it, in order.
    pub fds: Vec<OwnedFd>,
    /// The connected socket: the application's lifeline (the service detaches the
    /// application when it closes).
    pub socket: OwnedFd,
}

/// Connect to the service at `path`, send `hello` as is, and wait at most `timeout` for
/// the reply.
pub fn exchange(path: &Path, hello: &Hello, timeout: Duration) -> Result<Exchange> {
    let sock = SeqPacket::connect(path)
        .map_err(|e| Error::ServiceUnavailable { path: intern_path(path), kind: e.kind() })?;
    sock.send(&hello.encode_to_vec())?;
    let mut buf = vec![0u8; MAX_MESSAGE];
    let (n, fds) = sock.recv_with_fds(&mut buf, timeout).map_err(|e| match e.kind() {
        std::io::ErrorKind::TimedOut => Error::TimedOut,
        std::io::ErrorKind::InvalidData => Error::Protocol("malformed attach reply (too large or too many fds)"),
        k => Error::Io(k),
    })?;
    if n == 0 {
        return Err(Error::Protocol("tasd closed the socket without replying to Hello"));
    }
    let response = Response::decode(&buf[..n]).map_err(|_| Error::Protocol("undecodable attach reply"))?;
    Ok(Exchange { response, fds, socket: sock.into_fd() })
}

/// The normal handshake: our ABI version and `name`; errors mapped to [`Error`].
pub(crate) fn handshake(path: &Path, name: &str, timeout: Duration) -> Result<(HelloOk, Vec<OwnedFd>, SeqPacket)> {
    let hello = Hello { abi_version: ABI_VERSION, name: name.to_owned() };
    let ex = exchange(path, &hello, timeout)?;
    match ex.response.result {
        Some(response::Result::HelloOk(ok)) => Ok((ok, ex.fds, SeqPacket::from_fd(ex.socket))),
        Some(response::Result::Error(e)) => Err(match ErrorCode::from_u32(e.code) {
            Some(code) => Error::from_code(code),
            None => Error::Protocol("unknown error code in the attach reply"),
        }),
        None => Err(Error::Protocol("empty attach reply")),
    }
}
