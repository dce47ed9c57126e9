//! The one error type of the native API.

use std::io;
use std::path::Path;
use std::sync::Mutex;

use tas_proto::shm::ErrorCode;

/// Everything that can go wrong in a libtas call.
///
/// A small `Copy` enum (no allocation on the data path); the `Display` text says what
/// happened and, where there is something to do, what to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Nothing to read or no buffer space yet: call [`crate::Context::poll`] or
    /// [`crate::Context::wait`] and retry (or use the blocking form of the call).
    #[error("operation would block: no data or buffer space yet (poll() or wait() and retry)")]
    WouldBlock,
    /// The peer refused the connection (RST in reply to SYN).
    #[error("connection refused by the peer")]
    Refused,
    /// The peer reset the connection.
    #[error("connection reset by the peer")]
    Reset,
    /// No reply within the allowed time (the service's retry budget or the caller's
    /// timeout).
    #[error("operation timed out")]
    TimedOut,
    /// The connection was closed; nothing more can be sent (or read, after the buffered
    /// data).
    #[error("connection closed")]
    Closed,
    /// The sending side of this connection was shut down by this application.
    #[error("sending side of the connection already shut down")]
    Shutdown,
    /// The connection is not established (still connecting, or its open failed).
    #[error("not connected")]
    NotConnected,
    /// The local port is in use.
    #[error("address in use: another listener or connection has this port")]
    AddrInUse,
    /// The service is out of connection slots, ports or flow-table space.
    #[error("out of resources in tasd (connection slots, ports or flow table): close connections or raise tasd's limits")]
    NoResources,
    /// No route to the peer, or its neighbour entry could not be resolved.
    #[error("host unreachable: no route or neighbour entry for the address")]
    Unreachable,
    /// The service aborted the connection (shutdown, detach, administrative close).
    #[error("connection aborted by tasd")]
    Aborted,
    /// The service refused the operation for this application.
    #[error("permission denied by tasd")]
    PermissionDenied,
    /// The service found no such listener or connection.
    #[error("not found in tasd (no such listener or connection)")]
    NotFound,
    /// The connection moved to another context (another process holding it used it):
    /// adopt it back with [`crate::Context::adopt_start`] to use it here.
    #[error("the connection moved to another context")]
    Moved,
    /// An argument was out of range (port 0, empty buffer where data is needed, ...).
    #[error("invalid argument")]
    InvalidArgument,
    /// The handle was closed by this application, or never existed in this context.
    #[error("invalid handle: the connection or listener was closed or belongs to another context")]
    InvalidHandle,
    /// The service's socket could not be reached.
    #[error("cannot reach tasd at {path} ({kind}): is the service running? set TAS_SOCKET to its app socket")]
    ServiceUnavailable {
        /// The socket path tried.
        path: &'static str,
        /// What the connect failed with.
        kind: io::ErrorKind,
    },
    /// The service and this library speak different ABI versions.
    #[error("ABI version mismatch: this libtas speaks ABI {ours} and tasd does not; use a libtas and a tasd from the same release")]
    Version {
        /// [`tas_proto::shm::ABI_VERSION`] of this library.
        ours: u32,
    },
    /// The service broke the shared-memory or attach protocol (an impossible event, a
    /// corrupt queue index, a malformed reply). The context is unusable afterwards.
    #[error("tasd broke the protocol ({0}); this context is unusable: re-attach, and report a tasd bug")]
    Protocol(&'static str),
    /// The service went away (its socket closed): the context is unusable.
    #[error("tasd went away (its socket closed); re-attach once it runs again")]
    ServiceGone,
    /// A system call failed.
    #[error("I/O error: {0}")]
    Io(io::ErrorKind),
}

/// Result type of the native API.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The error a service [`ErrorCode`] stands for.
    pub fn from_code(code: ErrorCode) -> Error {
        match code {
            ErrorCode::Invalid => Error::InvalidArgument,
            ErrorCode::AddrInUse => Error::AddrInUse,
            ErrorCode::Refused => Error::Refused,
            ErrorCode::Reset => Error::Reset,
            ErrorCode::TimedOut => Error::TimedOut,
            ErrorCode::NoResources => Error::NoResources,
            ErrorCode::Unreachable => Error::Unreachable,
            ErrorCode::Aborted => Error::Aborted,
            ErrorCode::Permission => Error::PermissionDenied,
            ErrorCode::NotFound => Error::NotFound,
            ErrorCode::Version => Error::Version { ours: tas_proto::shm::ABI_VERSION },
            ErrorCode::Moved => Error::Moved,
        }
    }

    /// True if the context can no longer be used (not just this one call or connection).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Error::Protocol(_) | Error::ServiceGone)
    }
}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Self {
        Error::Io(e.kind())
    }
}

/// Keep socket paths as `&'static str` so that [`Error`] stays `Copy`: each distinct path
/// is stored once for the life of the process (an application names one or two paths,
/// so this is bounded in practice, even if it retries attaching in a loop).
pub(crate) fn intern_path(path: &Path) -> &'static str {
    static PATHS: Mutex<Vec<&'static str>> = Mutex::new(Vec::new());
    let s = path.to_string_lossy();
    let mut paths = PATHS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = paths.iter().find(|p| **p == s) {
        return p;
    }
    let leaked: &'static str = Box::leak(s.into_owned().into_boxed_str());
    paths.push(leaked);
    leaked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_and_copy() {
        assert!(std::mem::size_of::<Error>() <= 24);
        let e = Error::ServiceUnavailable { path: intern_path(Path::new("/x/y.sock")), kind: io::ErrorKind::NotFound };
        let e2 = e;
        assert_eq!(e, e2);
        let msg = e.to_string();
        assert!(msg.contains("/x/y.sock") && msg.contains("TAS_SOCKET"), "{msg}");
        assert!(std::ptr::eq(intern_path(Path::new("/x/y.sock")), intern_path(Path::new("/x/y.sock"))));
    }
}
