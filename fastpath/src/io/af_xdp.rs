//! AF_XDP packet I/O: the XDP program that steers the service's TCP segments to the fast
//! path, and the AF_XDP sockets (UMEM + four rings) the fast path reads and writes.
//!
//! # Pieces
//!
//! - [`XdpProgram`]: loads `fastpath/bpf/redirect.bpf.o` (checked in; rebuilt
//!   byte-for-byte by `fastpath/bpf/build.sh`) with libbpf-rs and attaches it to the
//!   interface through a BPF link, so the kernel detaches it when the process dies, even by
//!   SIGKILL. The program redirects a packet to the socket of its rx queue (`xsks` map,
//!   index = rx queue) only if it is IPv4/TCP to the service address (`config` map) and to
//!   a port marked in `owned_ports`; ARP, ICMP, IPv6, fragments and every other port pass
//!   to the kernel, which keeps the interface for everything else.
//! - [`XskSocket`]: one AF_XDP socket bound to (interface, rx queue), with its own UMEM.
//!   It implements [`PacketIo`](crate::io::PacketIo). Bind one per rx queue: packets of a
//!   queue without a socket go to the kernel ([`XdpStats::no_socket`]).
//!
//! # Frame lifecycle
//!
//! The UMEM is one mapping of `frames` frames of `frame_size` bytes (huge pages if
//! reserved, else normal pages, populated up front). Frame `i` is at UMEM address
//! `i * frame_size`. The first half are rx frames, the rest tx frames, and each frame has
//! exactly one owner at a time, recorded in a ledger ([`FrameCensus`]):
//!
//! ```text
//!  rx:  fill ring --kernel writes packet--> rx ring --rx_burst--> fast path (RxHeld)
//!         ^                                                          |
//!         +---------------------- rx_release ------------------------+
//!
//!  tx:  free list --tx_alloc--> fast path (TxUser) --tx_submit--> tx ring --kernel sends-->
//!         ^   ^                      |                                         |
//!         |   +------ tx_abort ------+                                         v
//!         +------------- reaped by tx_flush / tx_alloc ---------------- completion ring
//! ```
//!
//! A received frame's [`RxFrame::addr`](crate::io::RxFrame) points at the packet's first
//! byte (copy mode puts it 256 bytes, `XDP_PACKET_HEADROOM`, into the frame); a tx frame's
//! address is the frame start and [`PacketIo::tx_data`](crate::io::PacketIo::tx_data)
//! gives the whole frame. The fill ring is sized to hold every rx frame and the tx and
//! completion rings every tx frame, so releasing and submitting never wait and no frame
//! sits outside a ring or the free list. Every transition is checked against the ledger:
//! a slice into the UMEM exists only for frames the fast path owns (the kernel may write
//! any other rx frame at any time), and a double release or a forged address is refused
//! (and asserts in debug builds) instead of corrupting the rings.
//!
//! # Ring protocol
//!
//! Each ring is a power-of-two array with free-running `u32` producer and consumer
//! indices and a flags word, mapped from the socket (see `ring.rs`). We produce into the
//! fill and tx rings and consume from the rx and completion rings. Producer: load the
//! consumer index with Acquire, write entries, store the producer index with Release.
//! Consumer: load the producer index with Acquire, read entries, store the consumer index
//! with Release. Each side caches the other's index and reloads it only when short.
//!
//! Wake-ups (`XDP_USE_NEED_WAKEUP` is always set): receive makes no system call unless
//! the rx ring is empty and the kernel set `XDP_RING_NEED_WAKEUP` on the fill ring (or
//! busy polling is on), then one non-blocking `recvfrom`. Transmit publishes the tx
//! producer index once per [`tx_flush`](crate::io::PacketIo::tx_flush) and makes at most
//! one non-blocking `sendto` there, only while the kernel has not taken everything: copy
//! mode always needs it (it sends only inside the syscall), zero-copy only when the tx
//! ring's flag says so. `EAGAIN`, `EBUSY` and `ENOBUFS` from the kick are not errors: the
//! frames stay on the ring and the next flush kicks again ([`XskSocket::tx_pending`] tells
//! whether one is due). A copy-mode kick sends at most 32 frames unless the kernel (6.17+)
//! accepts `XDP_MAX_TX_SKB_BUDGET`, which is set to the tx ring size.
//!
//! # Modes
//!
//! - XDP attach ([`XdpMode`]): `Native` runs the program in the driver (veth has it),
//!   `Generic` (SKB mode) after the kernel built an skb, on any interface; `Auto` tries
//!   native and falls back to generic. On veth both are equally fast.
//! - Socket bind ([`BindMode`]): `ZeroCopy` lets the NIC DMA into the UMEM (needs driver
//!   support; veth has none and fails with EOPNOTSUPP), `Copy` has the kernel copy each
//!   packet between its buffers and the UMEM; `Auto` tries zero-copy, then copy.
//! - `busy_poll` sets `SO_PREFER_BUSY_POLL`/`SO_BUSY_POLL`/`SO_BUSY_POLL_BUDGET` and makes
//!   every empty `rx_burst` drive the driver's NAPI with a `recvfrom`.
//!
//! # Privileges
//!
//! Loading and attaching need CAP_BPF + CAP_NET_ADMIN (or root), sockets CAP_NET_RAW.
//! The UMEM is pinned and charged to RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK;
//! [`XskSocket::open`] raises the limit to infinity when it may.

#![allow(unsafe_code)]

mod program;
mod ring;
mod socket;
mod sys;
mod umem;

use std::ffi::CString;
use std::io;

pub use program::{XdpProgram, XdpStats, MAX_QUEUES};
pub use socket::{XskSocket, XskStats};
pub use umem::FrameCensus;

/// Smallest frame size: a full Ethernet frame plus the 256-byte copy-mode headroom fit.
pub const MIN_FRAME_SIZE: u32 = 2048;
/// Largest frame size: one page.
pub const MAX_FRAME_SIZE: u32 = 4096;
/// Most frames per socket (1 Mi frames = 2-4 GiB of UMEM), a guard against typos.
pub const MAX_FRAMES: u32 = 1 << 20;

/// How the XDP program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum XdpMode {
    /// Native if the driver supports it, else generic.
    #[default]
    Auto,
    /// In the driver, before any skb is built (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the core network stack on an skb, on any interface (`XDP_FLAGS_SKB_MODE`).
    Generic,
}

/// How the AF_XDP sockets are bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BindMode {
    /// Zero-copy if the driver supports it, else copy.
    #[default]
    Auto,
    /// The NIC reads and writes the UMEM directly (`XDP_ZEROCOPY`).
    ZeroCopy,
    /// The kernel copies packets to and from the UMEM (`XDP_COPY`); works everywhere.
    Copy,
}

/// What the fast path's packet I/O runs on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct XdpConfig {
    /// Interface name, e.g. `eth0`.
    pub ifname: String,
    /// Rx queues to serve, one socket each (veth has only queue 0 unless made with more).
    pub queues: Vec<u32>,
    /// XDP attach mode.
    pub mode: XdpMode,
    /// Socket bind mode.
    pub bind: BindMode,
    /// Bytes per UMEM frame: 2048 or 4096.
    pub frame_size: u32,
    /// UMEM frames per socket, rx and tx together (split in halves).
    pub frames: u32,
    /// Entries of the rx ring (a power of two); the other rings are at least this large.
    pub ring_size: u32,
    /// Busy-poll the device from the socket (`SO_PREFER_BUSY_POLL`).
    pub busy_poll: bool,
}

impl XdpConfig {
    /// Defaults for `ifname`: queue 0, automatic modes, 4096 frames of 2 KiB (8 MiB of
    /// UMEM), rings of 2048 entries, no busy polling.
    pub fn new(ifname: impl Into<String>) -> Self {
        Self {
            ifname: ifname.into(),
            queues: vec![0],
            mode: XdpMode::Auto,
            bind: BindMode::Auto,
            frame_size: 2048,
            frames: 4096,
            ring_size: 2048,
            busy_poll: false,
        }
    }

    /// Check the numbers; the error says which setting is wrong and what it must be.
    pub fn validate(&self) -> Result<(), AfXdpError> {
        let XdpConfig {
            ifname,
            queues,
            mode: _,
            bind: _,
            frame_size,
            frames,
            ring_size,
            busy_poll: _,
        } = self;
        let bad = |what: String| Err(AfXdpError::InvalidConfig { what });
        if ifname.is_empty() || ifname.len() >= libc::IFNAMSIZ || ifname.contains(['\0', '/']) {
            return bad(format!(
                "interface name {ifname:?}: must be 1-15 bytes, as `ip link` shows it"
            ));
        }
        if queues.is_empty() {
            return bad("queues: list at least one rx queue (e.g. [0])".into());
        }
        if let Some(q) = queues.iter().find(|&&q| q >= MAX_QUEUES) {
            return bad(format!(
                "queue {q}: the XDP program serves queues 0..{MAX_QUEUES}"
            ));
        }
        if *frame_size != MIN_FRAME_SIZE && *frame_size != MAX_FRAME_SIZE {
            return bad(format!(
                "frame_size {frame_size}: must be {MIN_FRAME_SIZE} or {MAX_FRAME_SIZE}"
            ));
        }
        if !(2..=MAX_FRAMES).contains(frames) {
            return bad(format!(
                "frames {frames}: must be 2..={MAX_FRAMES} per socket"
            ));
        }
        if !ring_size.is_power_of_two() || !(2..=(1 << 16)).contains(ring_size) {
            return bad(format!(
                "ring_size {ring_size}: must be a power of two from 2 to 65536"
            ));
        }
        Ok(())
    }
}

/// Why AF_XDP setup failed. Each message says what is wrong and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AfXdpError {
    /// No such interface in this network namespace.
    #[error("interface {ifname} not found: check `ip link` (in the network namespace tasd runs in) and the configured interface name")]
    InterfaceNotFound {
        /// The name asked for.
        ifname: String,
    },
    /// A configuration value is out of range.
    #[error("invalid AF_XDP setting: {what}")]
    InvalidConfig {
        /// Which setting and what it must be.
        what: String,
    },
    /// Missing privileges.
    #[error("permission denied {op}: run tasd as root or with CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON (and CAP_NET_RAW for AF_XDP sockets)")]
    PermissionDenied {
        /// What was being done.
        op: &'static str,
    },
    /// The UMEM could not be pinned.
    #[error("locked memory limit too low for the UMEM of {bytes} bytes ({ifname} queue {queue}): raise RLIMIT_MEMLOCK (`ulimit -l unlimited`, systemd `LimitMEMLOCK=infinity`) or grant CAP_IPC_LOCK, or configure fewer frames")]
    MemlockLimit {
        /// Interface.
        ifname: String,
        /// Rx queue.
        queue: u32,
        /// UMEM size.
        bytes: u64,
    },
    /// Zero-copy was required and the driver has none.
    #[error("zero-copy AF_XDP is not supported on {ifname} queue {queue} (the driver lacks it; veth never has it): set the bind mode to `copy` or `auto`")]
    ZeroCopyUnsupported {
        /// Interface.
        ifname: String,
        /// Rx queue.
        queue: u32,
    },
    /// Native XDP was required and the driver refused it.
    #[error("native XDP is not available on {ifname} ({source}): set the XDP mode to `generic` or `auto`")]
    NativeXdpUnsupported {
        /// Interface.
        ifname: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// Another XDP program holds the interface.
    #[error("another XDP program is already attached to {ifname}: remove it (`ip link set dev {ifname} xdp off`) or stop the other tasd")]
    XdpBusy {
        /// Interface.
        ifname: String,
    },
    /// The interface has no such rx queue.
    #[error("queue {queue} does not exist on {ifname}: check `ethtool -l {ifname}` and the configured queues")]
    QueueNotFound {
        /// Interface.
        ifname: String,
        /// Rx queue.
        queue: u32,
    },
    /// Another AF_XDP socket is bound to the queue.
    #[error(
        "queue {queue} of {ifname} already has an AF_XDP socket bound: is another tasd running?"
    )]
    QueueBusy {
        /// Interface.
        ifname: String,
        /// Rx queue.
        queue: u32,
    },
    /// The queue number is beyond the XSKMAP.
    #[error("queue {queue} is beyond the XDP program's socket map ({max} queues): configure queues below {max}")]
    QueueOutOfRange {
        /// Rx queue.
        queue: u32,
        /// XSKMAP entries.
        max: u32,
    },
    /// No AF_XDP in this kernel.
    #[error("this kernel has no AF_XDP sockets: use a kernel built with CONFIG_XDP_SOCKETS=y")]
    AfXdpUnsupported,
    /// The kernel lacks a feature this code relies on.
    #[error("this kernel lacks {what}: use Linux 5.11 or newer")]
    KernelTooOld {
        /// The missing feature.
        what: &'static str,
    },
    /// The embedded BPF object does not have what the loader expects.
    #[error("the XDP object has no {what} named {name}: rebuild fastpath/bpf/redirect.bpf.o with fastpath/bpf/build.sh")]
    ObjectMismatch {
        /// "map" or "program".
        what: &'static str,
        /// The name looked for.
        name: String,
    },
    /// A libbpf operation failed.
    #[error("{op} failed: {source} (libbpf's messages above say more; the kernel needs BTF and BPF support)")]
    Bpf {
        /// What was being done.
        op: &'static str,
        /// libbpf's error.
        source: libbpf_rs::Error,
    },
    /// A system call failed.
    #[error("{op} on {ifname} failed: {source}")]
    Sys {
        /// What was being done.
        op: &'static str,
        /// Interface.
        ifname: String,
        /// The OS error.
        source: io::Error,
    },
}

/// Index of the interface `ifname` in the calling thread's network namespace.
pub fn ifindex(ifname: &str) -> Result<u32, AfXdpError> {
    let not_found = || AfXdpError::InterfaceNotFound {
        ifname: ifname.to_owned(),
    };
    let c = CString::new(ifname).map_err(|_| not_found())?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if index == 0 {
        Err(not_found())
    } else {
        Ok(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_valid() {
        XdpConfig::new("eth0").validate().unwrap();
    }

    #[test]
    fn invalid_config_says_which_setting_and_what_it_must_be() {
        let with = |f: fn(&mut XdpConfig)| {
            let mut c = XdpConfig::new("eth0");
            f(&mut c);
            c.validate().unwrap_err().to_string()
        };
        assert_eq!(
            with(|c| c.frame_size = 1500),
            "invalid AF_XDP setting: frame_size 1500: must be 2048 or 4096"
        );
        assert!(with(|c| c.ring_size = 1000).contains("ring_size 1000: must be a power of two"));
        assert!(with(|c| c.frames = 1).contains("frames 1: must be 2..="));
        assert!(with(|c| c.queues = vec![]).contains("list at least one rx queue"));
        assert!(
            with(|c| c.queues = vec![64]).contains("queue 64: the XDP program serves queues 0..64")
        );
        assert!(
            with(|c| c.ifname = "a-name-that-is-too-long".into()).contains("must be 1-15 bytes")
        );
    }

    #[test]
    fn missing_interface_is_reported_with_a_hint() {
        let e = ifindex("tas-no-such0").unwrap_err();
        assert_eq!(
            e.to_string(),
            "interface tas-no-such0 not found: check `ip link` (in the network namespace tasd runs in) and the configured interface name"
        );
        assert!(matches!(
            ifindex("bad\0name"),
            Err(AfXdpError::InterfaceNotFound { .. })
        ));
        assert!(matches!(
            XskSocket::open(&XdpConfig::new("tas-no-such0"), 0),
            Err(AfXdpError::InterfaceNotFound { .. })
        ));
    }

    #[test]
    fn error_messages_say_what_to_do() {
        let memlock = AfXdpError::MemlockLimit {
            ifname: "tas0".into(),
            queue: 1,
            bytes: 8 << 20,
        };
        assert!(memlock.to_string().starts_with("locked memory limit too low for the UMEM of 8388608 bytes (tas0 queue 1): raise RLIMIT_MEMLOCK"));
        assert!(memlock.to_string().contains("CAP_IPC_LOCK"));
        let perm = AfXdpError::PermissionDenied {
            op: "loading the XDP program",
        };
        assert_eq!(
            perm.to_string(),
            "permission denied loading the XDP program: run tasd as root or with CAP_BPF+CAP_NET_ADMIN+CAP_PERFMON (and CAP_NET_RAW for AF_XDP sockets)"
        );
        let zc = AfXdpError::ZeroCopyUnsupported {
            ifname: "veth0".into(),
            queue: 0,
        };
        assert!(zc
            .to_string()
            .contains("set the bind mode to `copy` or `auto`"));
        let busy = AfXdpError::XdpBusy {
            ifname: "tas0".into(),
        };
        assert!(busy.to_string().contains("`ip link set dev tas0 xdp off`"));
        let q = AfXdpError::QueueNotFound {
            ifname: "tas0".into(),
            queue: 3,
        };
        assert!(q.to_string().contains("`ethtool -l tas0`"));
    }

    #[test]
    fn program_and_socket_handles_can_move_between_threads() {
        fn send_sync<T: Send + Sync>() {}
        fn send<T: Send>() {}
        send_sync::<XdpProgram>();
        send::<XskSocket>();
    }
}
