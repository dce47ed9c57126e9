//! The application registration protocol on the service's Unix socket.
//!
//! Transport: a `SOCK_SEQPACKET` Unix socket (message boundaries kept), one protobuf
//! message per packet. The application sends [`Hello`]; the service answers with
//! [`Response`] holding [`HelloOk`] and, with `SCM_RIGHTS`, these file descriptors in
//! this order: the shared region (an fd of the POSIX shared-memory object the service
//! created), the app's wake-up eventfd, then one doorbell eventfd per fast-path core.
//! After that the socket carries nothing; it stays open as the application's lifeline:
//! when it closes, the service resets the app's connections and frees its region.
//! Control requests (listen, connect, ...) travel on the region's request queue
//! ([`crate::shm::ControlRequest`]), so that the data path never needs a syscall.
//!
//! Messages are declared with prost derives by hand (no `protoc` needed to build
//! libtas); `docs/abi.md` lists them as a `.proto` for other languages.

/// Largest message either side sends or accepts.
pub const MAX_MESSAGE: usize = 4096;
/// Default path of the service's application socket.
pub const DEFAULT_APP_SOCKET: &str = "/run/tas/tasd.sock";
/// Environment variable applications read to find the service.
pub const SOCKET_ENV: &str = "TAS_SOCKET";

/// Attach: who the application is and which ABI it speaks.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Hello {
    /// `crate::shm::ABI_VERSION` of the application's libtas.
    #[prost(uint32, tag = "1")]
    pub abi_version: u32,
    /// A name for operators (program name).
    #[prost(string, tag = "2")]
    pub name: String,
}

/// The service's reply to [`Hello`].
#[derive(Clone, PartialEq, prost::Message)]
pub struct Response {
    /// The result.
    #[prost(oneof = "response::Result", tags = "1, 2")]
    pub result: Option<response::Result>,
}

/// Response variants.
pub mod response {
    /// The results.
    #[derive(Clone, PartialEq, prost::Oneof)]
    pub enum Result {
        /// Attached; fds follow (see the module docs).
        #[prost(message, tag = "1")]
        HelloOk(super::HelloOk),
        /// Refused.
        #[prost(message, tag = "2")]
        Error(super::Error),
    }
}

/// Attach accepted.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloOk {
    /// Size of the shared region passed as the first fd.
    #[prost(uint64, tag = "1")]
    pub region_size: u64,
    /// Number of fast-path cores (= doorbell eventfds passed).
    #[prost(uint32, tag = "2")]
    pub fp_cores: u32,
    /// The service's IPv4 address (host order): the local address of every connection.
    #[prost(uint32, tag = "3")]
    pub local_ip: u32,
    /// Id the service gave this application context.
    #[prost(uint32, tag = "4")]
    pub app_id: u32,
}

/// A failure.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Error {
    /// `crate::shm::ErrorCode` value.
    #[prost(uint32, tag = "1")]
    pub code: u32,
    /// Human-readable detail.
    #[prost(string, tag = "2")]
    pub message: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use prost::Message;

    #[test]
    fn round_trip() {
        let h = Hello { abi_version: 1, name: "echo".into() };
        let bytes = h.encode_to_vec();
        assert_eq!(bytes, [0x08, 0x01, 0x12, 0x04, b'e', b'c', b'h', b'o']);
        assert_eq!(Hello::decode(&bytes[..]).unwrap(), h);
        let resp = Response {
            result: Some(response::Result::Error(Error { code: 11, message: "abi 2 != 1".into() })),
        };
        assert_eq!(Response::decode(&resp.encode_to_vec()[..]).unwrap(), resp);
        assert!(Hello::decode(&[0xff, 0xff][..]).is_err());
    }
}
