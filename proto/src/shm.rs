//! The shared-memory ABI between an application (libtas) and the service (tasd).
//!
//! One region per attached application context, created by the service and mapped by
//! both sides. Everything here is `#[repr(C)]` with explicit padding, so the layout is
//! the same for every compiler and documented byte by byte in `docs/abi.md`.
//!
//! ```text
//! offset 0                      RegionHeader            (128 B)
//! queues_offset                 QueuePair x num_fp_queues
//!                                 to_fp:  Queue (app -> fast-path core i: doorbells)
//!                                 to_app: Queue (fast-path core i -> app: data events)
//! sp_queue_offset               Queue (slow path -> app: control replies, connection events)
//!                               Queue (app -> slow path: control requests)
//! payload_offset                conn slot 0: rx ring (rx_buf_size) | tx ring (tx_buf_size)
//!                               conn slot 1: ...
//! ```
//!
//! A `Queue` is a single-producer single-consumer ring of [`Desc`] (32 bytes). Its head
//! (written by the producer) and tail (written by the consumer) are free-running `u32`
//! counters on separate cache lines; the producer publishes with Release and the consumer
//! reads with Acquire. A third line holds the consumer's "sleeping" flag for the
//! announce-recheck-sleep wake-up protocol: a consumer about to block sets it, re-checks
//! the queue, then blocks on its eventfd; a producer that pushed and sees the flag set
//! writes the eventfd.
//!
//! Payload rings: each connection slot owns one receive and one transmit byte ring. Their
//! positions are *not* shared: each side tracks its own position and the two sides agree
//! through descriptors (rx data arrived / rx bytes consumed, tx bytes added / tx bytes
//! freed). The service never trusts a number an application wrote: every index,
//! slot and length from the `to_fp` queue is checked against the service's own state.
//!
//! This module holds layout and encoding only; the logic that drives the queues lives in
//! `tas_proto::queue` (shared by both sides) so that both sides run the same code.

use core::mem::{align_of, size_of};
use core::sync::atomic::AtomicU32;

/// Version of this ABI; an application and a service must agree exactly. 2: the `Info`
/// request and reply (`TCP_INFO`), the receive buffer of `Listen` and `Connect`. 4: the
/// `Info` reply in [`INFO_PARTS`] descriptors (decisions §21).
pub const ABI_VERSION: u32 = 4;
/// `"TASREGN1"`: the first eight bytes of every region.
pub const REGION_MAGIC: u64 = u64::from_le_bytes(*b"TASREGN1");
/// Cache-line size assumed by the layout (x86-64 and most arm64 cores).
pub const CACHE_LINE: usize = 64;

/// The first 128 bytes of a region. Written once by the service before the region is
/// handed to the application; read-only afterwards.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
pub struct RegionHeader {
    /// [`REGION_MAGIC`].
    pub magic: u64,
    /// [`ABI_VERSION`].
    pub abi_version: u32,
    /// Number of fast-path queue pairs (one per fast-path core).
    pub num_fp_queues: u32,
    /// Entries per queue; a power of two.
    pub queue_entries: u32,
    /// Number of connection slots (each with one rx and one tx ring).
    pub conn_slots: u32,
    /// Total size of the region in bytes.
    pub region_size: u64,
    /// Offset of the first [`QueuePair`]-shaped block.
    pub queues_offset: u64,
    /// Offset of the slow-path event queue; the app's control-request queue follows it.
    pub sp_queue_offset: u64,
    /// Offset of connection slot 0.
    pub payload_offset: u64,
    /// Size of one connection's receive ring.
    pub rx_buf_size: u32,
    /// Size of one connection's transmit ring.
    pub tx_buf_size: u32,
    /// Reserved, zero.
    pub _reserved: [u64; 8],
}
const _: () = assert!(size_of::<RegionHeader>() == 128);

impl RegionHeader {
    /// The header's bytes as they lie in memory (native byte order, `#[repr(C)]` offsets),
    /// for writing it into a region without unsafe code.
    pub fn to_bytes(&self) -> [u8; 128] {
        let mut b = [0u8; 128];
        b[0..8].copy_from_slice(&self.magic.to_ne_bytes());
        b[8..12].copy_from_slice(&self.abi_version.to_ne_bytes());
        b[12..16].copy_from_slice(&self.num_fp_queues.to_ne_bytes());
        b[16..20].copy_from_slice(&self.queue_entries.to_ne_bytes());
        b[20..24].copy_from_slice(&self.conn_slots.to_ne_bytes());
        b[24..32].copy_from_slice(&self.region_size.to_ne_bytes());
        b[32..40].copy_from_slice(&self.queues_offset.to_ne_bytes());
        b[40..48].copy_from_slice(&self.sp_queue_offset.to_ne_bytes());
        b[48..56].copy_from_slice(&self.payload_offset.to_ne_bytes());
        b[56..60].copy_from_slice(&self.rx_buf_size.to_ne_bytes());
        b[60..64].copy_from_slice(&self.tx_buf_size.to_ne_bytes());
        b
    }

    /// Decode a header from its bytes (the inverse of [`RegionHeader::to_bytes`]).
    pub fn from_bytes(b: &[u8; 128]) -> Self {
        let u32_at = |o: usize| u32::from_ne_bytes(b[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_ne_bytes(b[o..o + 8].try_into().expect("8 bytes"));
        RegionHeader {
            magic: u64_at(0),
            abi_version: u32_at(8),
            num_fp_queues: u32_at(12),
            queue_entries: u32_at(16),
            conn_slots: u32_at(20),
            region_size: u64_at(24),
            queues_offset: u64_at(32),
            sp_queue_offset: u64_at(40),
            payload_offset: u64_at(48),
            rx_buf_size: u32_at(56),
            tx_buf_size: u32_at(60),
            _reserved: [0; 8],
        }
    }
}

/// An index word alone on its cache line.
#[repr(C, align(64))]
#[derive(Debug)]
pub struct PaddedIndex {
    /// The value.
    pub value: AtomicU32,
    _pad: [u8; CACHE_LINE - 4],
}

/// Queue control block, followed in memory by `queue_entries` descriptors.
#[repr(C)]
#[derive(Debug)]
pub struct QueueHeader {
    /// Free-running count of descriptors pushed (written by the producer only).
    pub head: PaddedIndex,
    /// Free-running count of descriptors popped (written by the consumer only).
    pub tail: PaddedIndex,
    /// Non-zero while the consumer sleeps (or is about to) on its eventfd.
    pub consumer_sleeping: PaddedIndex,
}
const _: () = assert!(size_of::<QueueHeader>() == 3 * CACHE_LINE);

/// Byte size of one queue with `entries` descriptors.
pub const fn queue_bytes(entries: u32) -> usize {
    size_of::<QueueHeader>() + entries as usize * size_of::<Desc>()
}

/// A fixed-size 32-byte descriptor; `kind` says which fields mean what (see the
/// typed views [`Doorbell`], [`FpEvent`], [`SpEvent`]).
#[repr(C, align(32))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Desc {
    /// One of the `KIND_*` constants.
    pub kind: u8,
    /// Fast-path core (queue pair) the connection belongs to.
    pub core: u8,
    /// Kind-specific flags.
    pub flags: u16,
    /// Fast-path flow index (valid for doorbells and connection events).
    pub flow: u32,
    /// Connection slot in this region.
    pub conn: u32,
    /// Byte count, listener id or error code, by kind.
    pub len: u32,
    /// IPv4 address (host byte order).
    pub ip: u32,
    /// Local port.
    pub local_port: u16,
    /// Remote port.
    pub remote_port: u16,
    /// Kind-specific 64-bit value (e.g. the peer's MSS).
    pub aux: u64,
}
const _: () = assert!(size_of::<Desc>() == 32 && align_of::<Desc>() == 32);

// ---- descriptor kinds -------------------------------------------------------------------
/// Doorbell: `len` bytes were appended to the connection's transmit ring.
pub const KIND_TX_ADDED: u8 = 1;
/// Doorbell: the application consumed `len` bytes from the receive ring.
pub const KIND_RX_CONSUMED: u8 = 2;
/// Doorbell: the application will send no more (FIN after queued data).
pub const KIND_SHUTDOWN_TX: u8 = 3;
/// Fast-path event: `len` bytes arrived in the receive ring; flag [`FLAG_FIN`] if the peer
/// closed its direction after them.
pub const KIND_RX_DATA: u8 = 16;
/// Fast-path event: `len` bytes of the transmit ring were acknowledged and are free.
pub const KIND_TX_FREED: u8 = 17;
/// Slow-path event: a connection was accepted on listener `len`.
pub const KIND_ACCEPTED: u8 = 32;
/// Slow-path event: an active open completed.
pub const KIND_CONNECTED: u8 = 33;
/// Slow-path event: an active open failed with error `len` ([`ErrorCode`]).
pub const KIND_CONNECT_FAILED: u8 = 34;
/// Slow-path event: the connection is gone (reason `len`, [`ErrorCode`] or 0); the slot
/// may be reused by the service after this.
pub const KIND_CLOSED: u8 = 35;

/// Control request: listen on `local_port` with backlog `len`; reply tagged with `aux`.
pub const KIND_REQ_LISTEN: u8 = 48;
/// Listen flag: share the port with other listeners that set it too and belong to the same
/// user (`SO_REUSEPORT`; also how forked workers of one server share a listener): the
/// service spreads new connections over the group's members.
pub const LISTEN_REUSEPORT: u16 = 1 << 0;
/// Listen flag, with [`LISTEN_REUSEPORT`]: while other members can take connections, give
/// this listener none until it has accepted one. The LD_PRELOAD shim sets it, because a
/// server that listens and then forks workers (nginx's master) may never accept itself.
pub const LISTEN_ACCEPT_ON_DEMAND: u16 = 1 << 1;
/// Every listen flag this ABI version knows; a request with any other bit is malformed.
pub const LISTEN_FLAGS_KNOWN: u16 = LISTEN_REUSEPORT | LISTEN_ACCEPT_ON_DEMAND;
/// Control request: connect to `ip:remote_port`; reply tagged with `aux`.
pub const KIND_REQ_CONNECT: u8 = 49;
/// Control request: `aux` connections were taken from listener `len`'s accept queue.
pub const KIND_REQ_ACCEPTED: u8 = 50;
/// Control request: reset connection slot `conn` (abortive close).
pub const KIND_REQ_ABORT: u8 = 51;
/// Control request: close listener `len`.
pub const KIND_REQ_UNLISTEN: u8 = 52;
/// Control request: report the state of connection slot `conn` (`TCP_INFO`); reply
/// [`KIND_INFO`] tagged with `aux`.
pub const KIND_REQ_INFO: u8 = 53;
/// Slow-path reply to [`KIND_REQ_INFO`] tagged `aux`: one of [`INFO_PARTS`] descriptors,
/// part number in `core`, five words of [`ConnInfo::to_words`] in `flow`, `conn`, `len`,
/// `ip` and `local_port | remote_port << 16`. The parts are posted in order, so the last
/// one completes the reply.
pub const KIND_INFO: u8 = 38;
/// Words of [`ConnInfo`] per [`KIND_INFO`] descriptor.
pub const INFO_WORDS_PER_PART: usize = 5;
/// [`KIND_INFO`] descriptors per reply.
pub const INFO_PARTS: usize = 5;
/// Words of an encoded [`ConnInfo`].
pub const INFO_WORDS: usize = INFO_WORDS_PER_PART * INFO_PARTS;
/// [`ConnInfo::opts`] bit: the service knows the connection (else every field is zero).
pub const INFO_FOUND: u16 = 1 << 0;
/// [`ConnInfo::opts`] bit: TCP timestamps are in use.
pub const INFO_TIMESTAMPS: u16 = 1 << 1;
/// [`ConnInfo::opts`] bit: SACK was negotiated.
pub const INFO_SACK: u16 = 1 << 2;
/// [`ConnInfo::opts`] bit: window scaling is in use (shifts in bits 8-11 and 12-15).
pub const INFO_WSCALE: u16 = 1 << 3;
/// [`ConnInfo::opts`] bit: the fast path's own state was read for this reply (the
/// window, bytes in flight, times and backoff are current); without it only the slow
/// path's view (one congestion-control interval old) is there.
pub const INFO_FRESH: u16 = 1 << 4;
/// [`ConnInfo::ca_state`]: no loss suspected (Linux `TCP_CA_Open`).
pub const CA_OPEN: u8 = 0;
/// [`ConnInfo::ca_state`]: duplicate ACKs or SACKed data seen, no recovery yet
/// (`TCP_CA_Disorder`).
pub const CA_DISORDER: u8 = 1;
/// [`ConnInfo::ca_state`]: fast recovery (`TCP_CA_Recovery`).
pub const CA_RECOVERY: u8 = 3;
/// [`ConnInfo::ca_state`]: recovering from a retransmission timeout (`TCP_CA_Loss`).
pub const CA_LOSS: u8 = 4;
/// Control request: this process forked; child pid `len` holds every connection this
/// process holds (cross-process reference counting, decisions §26).
pub const KIND_REQ_FORKED: u8 = 54;
/// Control request: move the connection `ip:remote_port` -> `local_port`, which this
/// process holds, into this context; reply [`KIND_ADOPTED`] or [`KIND_ADOPT_FAILED`]
/// tagged `aux`.
pub const KIND_REQ_ADOPT: u8 = 55;
/// Control request: this process gives up its hold on the connection `ip:remote_port` ->
/// `local_port` (its last descriptor closed); reply tagged `aux`: [`KIND_ADOPTED`] with
/// [`ADOPT_LAST`] if it was the last holder (the connection is now in this context, to be
/// closed), else [`KIND_ADOPT_FAILED`] with error 0.
pub const KIND_REQ_RELEASE: u8 = 56;
/// Slow-path reply: the connection is now in this context at `conn`/`core`/`flow`; its
/// receive ring holds `len` unread bytes from position 0, its transmit ring `ip` bytes
/// (unacknowledged, then unsent) from position 0; flags [`ADOPT_RX_FIN`],
/// [`ADOPT_TX_FIN`], [`ADOPT_LAST`].
pub const KIND_ADOPTED: u8 = 39;
/// Slow-path reply: adopt/release tagged `aux` failed with error `len` (0: a release that
/// was not the last).
pub const KIND_ADOPT_FAILED: u8 = 40;
/// Slow-path event: connection slot `conn`, which this context gave up while another
/// process held it, has no holder left: close it now.
pub const KIND_ORPHANED: u8 = 41;
/// [`KIND_ADOPTED`] flag: the peer's FIN was received after the unread bytes.
pub const ADOPT_RX_FIN: u16 = 1 << 0;
/// [`KIND_ADOPTED`] flag: our FIN is queued or sent (the sending side was shut down).
pub const ADOPT_TX_FIN: u16 = 1 << 1;
/// [`KIND_ADOPTED`] flag: the reply to a release by the last holder.
pub const ADOPT_LAST: u16 = 1 << 2;
/// Slow-path reply: the listen tagged `aux` succeeded as listener `conn`.
pub const KIND_LISTEN_OK: u8 = 36;
/// Slow-path reply: the listen tagged `aux` failed with error `len`.
pub const KIND_LISTEN_FAILED: u8 = 37;

/// Flag on [`KIND_RX_DATA`]: the peer's FIN follows the data.
pub const FLAG_FIN: u16 = 1;

/// Error codes carried in descriptors and attach responses. Mapped to errno only at the
/// sockets boundary.
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    /// Invalid argument.
    Invalid = 1,
    /// Address (port) in use.
    AddrInUse = 2,
    /// The peer refused the connection (RST in reply to SYN).
    Refused = 3,
    /// The peer reset the connection.
    Reset = 4,
    /// No reply within the retry budget.
    TimedOut = 5,
    /// Out of connection slots, ports or flow-table space.
    NoResources = 6,
    /// No route / neighbour could not be resolved.
    Unreachable = 7,
    /// The service aborted the connection (shutdown, app detach, admin close).
    Aborted = 8,
    /// Not permitted.
    Permission = 9,
    /// No such listener or connection.
    NotFound = 10,
    /// ABI version mismatch.
    Version = 11,
    /// The connection moved to another application context (another process that holds
    /// it used it: see [`ControlRequest::Adopt`]); a holder that uses it again adopts it back.
    Moved = 12,
}

impl ErrorCode {
    /// Decode a wire value.
    pub fn from_u32(v: u32) -> Option<Self> {
        use ErrorCode::*;
        Some(match v {
            1 => Invalid,
            2 => AddrInUse,
            3 => Refused,
            4 => Reset,
            5 => TimedOut,
            6 => NoResources,
            7 => Unreachable,
            8 => Aborted,
            9 => Permission,
            10 => NotFound,
            11 => Version,
            12 => Moved,
            _ => return None,
        })
    }
}

impl core::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let s = match self {
            ErrorCode::Invalid => "invalid argument",
            ErrorCode::AddrInUse => "address in use",
            ErrorCode::Refused => "connection refused",
            ErrorCode::Reset => "connection reset by peer",
            ErrorCode::TimedOut => "connection timed out",
            ErrorCode::NoResources => "out of resources",
            ErrorCode::Unreachable => "host unreachable",
            ErrorCode::Aborted => "connection aborted",
            ErrorCode::Permission => "permission denied",
            ErrorCode::NotFound => "not found",
            ErrorCode::Version => "ABI version mismatch",
            ErrorCode::Moved => "connection moved to another context",
        };
        f.write_str(s)
    }
}

/// Where a connection lives: its slot in the app region and its flow on a fast-path core.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnHandle {
    /// Connection slot (selects the payload rings).
    pub conn: u32,
    /// Fast-path core owning the flow (selects the queue pair).
    pub core: u8,
    /// Flow index on that core.
    pub flow: u32,
}

/// App -> fast path descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Doorbell {
    /// Bytes appended to the transmit ring.
    TxAdded {
        /// Flow index on the core.
        flow: u32,
        /// Connection slot (checked against the flow).
        conn: u32,
        /// How many bytes.
        bytes: u32,
    },
    /// Bytes consumed from the receive ring.
    RxConsumed {
        /// Flow index on the core.
        flow: u32,
        /// Connection slot (checked against the flow).
        conn: u32,
        /// How many bytes.
        bytes: u32,
    },
    /// No more data from the app: send FIN after what is queued.
    ShutdownTx {
        /// Flow index on the core.
        flow: u32,
        /// Connection slot (checked against the flow).
        conn: u32,
    },
}

/// Fast path -> app descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FpEvent {
    /// Bytes arrived in the receive ring (contiguous after earlier ones); `fin` if the
    /// peer closed its direction after them.
    RxData {
        /// Connection slot.
        conn: u32,
        /// How many bytes.
        bytes: u32,
        /// The peer's FIN follows.
        fin: bool,
    },
    /// Transmit-ring bytes acknowledged by the peer and free for reuse.
    TxFreed {
        /// Connection slot.
        conn: u32,
        /// How many bytes.
        bytes: u32,
    },
}

/// What the service knows of a connection ([`SpEvent::Info`]), in Linux `tcp_info`
/// terms where one exists: the slow path's view (congestion control, loss recovery, the
/// SACK scoreboard) and, with [`INFO_FRESH`], the fast path's flow state read for the
/// request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// [`INFO_FOUND`], [`INFO_TIMESTAMPS`], [`INFO_SACK`], [`INFO_WSCALE`],
    /// [`INFO_FRESH`]; bits 8-11: our send window scale (the peer's shift), bits 12-15:
    /// our receive window scale.
    pub opts: u16,
    /// Payload bytes per segment we send.
    pub mss: u16,
    /// Smoothed round-trip time, µs.
    pub srtt_us: u32,
    /// Round-trip time variation, µs.
    pub rttvar_us: u32,
    /// Congestion window, bytes (`u32::MAX`: no window limit).
    pub cwnd: u32,
    /// Retransmission events (timeouts, fast retransmits, SACK repairs, tail-loss probes)
    /// so far.
    pub retransmits: u32,
    /// Current retransmission timeout including the backoff, µs.
    pub rto_us: u32,
    /// `CA_*`: the loss-recovery state.
    pub ca_state: u8,
    /// Retransmission timeouts in a row without progress (Linux `icsk_retransmits`).
    pub rto_backoff: u8,
    /// Zero-window or keepalive probes sent without an answer (`icsk_probes_out`).
    pub probes: u8,
    /// SACKed segments above the cumulative ACK (the scoreboard's bytes over the MSS).
    pub sacked: u32,
    /// Segments the scoreboard deems lost.
    pub lost: u32,
    /// Of those, retransmitted and not yet acknowledged.
    pub retrans: u32,
    /// Milliseconds since the last segment from the peer (every one carries an ACK);
    /// `u32::MAX` unknown.
    pub last_ack_recv_ms: u32,
    /// Smallest RTT seen, µs (of the smoothed values congestion control saw and the
    /// handshake's sample).
    pub min_rtt_us: u32,
    /// Bytes the application wrote that were never sent.
    pub notsent_bytes: u32,
    /// Bytes sent and not yet acknowledged.
    pub unacked_bytes: u32,
    /// Data bytes sent at least once since the connection opened, modulo 2^32.
    pub sent_bytes_lo: u32,
    /// Data bytes sent again (retransmissions), modulo 2^32.
    pub retrans_bytes_lo: u32,
    /// Bytes acknowledged per time over the last control interval, kbit/s.
    pub delivery_kbps: u32,
    /// Pacing rate, kbit/s (0: not paced).
    pub pacing_kbps: u32,
    /// The peer's advertised window, bytes (scaled).
    pub snd_wnd: u32,
    /// The window we offer, bytes.
    pub rcv_wnd: u32,
    /// Slow-start threshold, bytes (`u32::MAX`: none yet).
    pub snd_ssthresh: u32,
    /// The most window we may offer (the receive buffer), bytes.
    pub rcv_ssthresh: u32,
    /// Retransmission timeouts so far (Linux `total_rto`).
    pub total_rto: u16,
    /// Recoveries from a timeout started so far (`total_rto_recoveries`).
    pub total_rto_recoveries: u16,
    /// Milliseconds spent recovering from timeouts, the current one included
    /// (`total_rto_time`).
    pub total_rto_time_ms: u32,
}

impl ConnInfo {
    /// The fields as [`INFO_WORDS`] words (the reply's wire form).
    pub fn to_words(&self) -> [u32; INFO_WORDS] {
        let mut w = [0u32; INFO_WORDS];
        w[0] = self.opts as u32 | (self.mss as u32) << 16;
        w[1] = self.srtt_us;
        w[2] = self.rttvar_us;
        w[3] = self.cwnd;
        w[4] = self.retransmits;
        w[5] = self.rto_us;
        w[6] = self.ca_state as u32 | (self.rto_backoff as u32) << 8 | (self.probes as u32) << 16;
        w[7] = self.sacked;
        w[8] = self.lost;
        w[9] = self.retrans;
        w[10] = self.last_ack_recv_ms;
        w[11] = self.min_rtt_us;
        w[12] = self.notsent_bytes;
        w[13] = self.unacked_bytes;
        w[14] = self.sent_bytes_lo;
        w[15] = self.retrans_bytes_lo;
        w[16] = self.delivery_kbps;
        w[17] = self.pacing_kbps;
        w[18] = self.snd_wnd;
        w[19] = self.rcv_wnd;
        w[20] = self.snd_ssthresh;
        w[21] = self.rcv_ssthresh;
        w[22] = self.total_rto as u32 | (self.total_rto_recoveries as u32) << 16;
        w[23] = self.total_rto_time_ms;
        w
    }
    /// The inverse of [`ConnInfo::to_words`].
    pub fn from_words(w: &[u32; INFO_WORDS]) -> Self {
        ConnInfo {
            opts: w[0] as u16,
            mss: (w[0] >> 16) as u16,
            srtt_us: w[1],
            rttvar_us: w[2],
            cwnd: w[3],
            retransmits: w[4],
            rto_us: w[5],
            ca_state: w[6] as u8,
            rto_backoff: (w[6] >> 8) as u8,
            probes: (w[6] >> 16) as u8,
            sacked: w[7],
            lost: w[8],
            retrans: w[9],
            last_ack_recv_ms: w[10],
            min_rtt_us: w[11],
            notsent_bytes: w[12],
            unacked_bytes: w[13],
            sent_bytes_lo: w[14],
            retrans_bytes_lo: w[15],
            delivery_kbps: w[16],
            pacing_kbps: w[17],
            snd_wnd: w[18],
            rcv_wnd: w[19],
            snd_ssthresh: w[20],
            rcv_ssthresh: w[21],
            total_rto: w[22] as u16,
            total_rto_recoveries: (w[22] >> 16) as u16,
            total_rto_time_ms: w[23],
        }
    }
    /// The reply's descriptors for request `token`, in the order they are posted.
    pub fn events(&self, token: u64) -> [SpEvent; INFO_PARTS] {
        let w = self.to_words();
        core::array::from_fn(|p| SpEvent::Info {
            token,
            part: p as u8,
            words: w[p * INFO_WORDS_PER_PART..(p + 1) * INFO_WORDS_PER_PART].try_into().expect("part length"),
        })
    }
}

/// Slow path -> app descriptors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SpEvent {
    /// A connection was established on `listener`.
    Accepted {
        /// Listener id from the listen reply.
        listener: u32,
        /// Where the connection lives.
        handle: ConnHandle,
        /// Peer address (host order) and port.
        remote_ip: u32,
        /// Peer port.
        remote_port: u16,
        /// Local port.
        local_port: u16,
    },
    /// An active open completed.
    Connected {
        /// The app's tag from the request.
        token: u64,
        /// Where the connection lives.
        handle: ConnHandle,
        /// Local (ephemeral) port.
        local_port: u16,
    },
    /// An active open failed.
    ConnectFailed {
        /// The app's tag from the request.
        token: u64,
        /// Why.
        error: ErrorCode,
    },
    /// A listen request succeeded.
    ListenOk {
        /// The app's tag from the request.
        token: u64,
        /// Listener id for `Accepted` events and later requests.
        listener: u32,
    },
    /// A listen request failed.
    ListenFailed {
        /// The app's tag from the request.
        token: u64,
        /// Why.
        error: ErrorCode,
    },
    /// The connection is gone; `error` is `None` for an orderly close.
    Closed {
        /// Connection slot (free for reuse by the service after this).
        conn: u32,
        /// Why, if not an orderly close.
        error: Option<ErrorCode>,
    },
    /// One part of the reply to [`ControlRequest::Info`] ([`ConnInfo::events`]).
    Info {
        /// The app's tag from the request.
        token: u64,
        /// Which part (`0..INFO_PARTS`, posted in order).
        part: u8,
        /// Its words of [`ConnInfo::to_words`].
        words: [u32; INFO_WORDS_PER_PART],
    },
    /// A connection moved into this context (reply to [`ControlRequest::Adopt`], or to
    /// the last holder's [`ControlRequest::Release`]).
    Adopted {
        /// The app's tag from the request.
        token: u64,
        /// Where the connection lives now.
        handle: ConnHandle,
        /// Unread bytes in the receive ring, from ring position 0.
        rx_bytes: u32,
        /// Bytes in the transmit ring (unacknowledged, then unsent), from position 0.
        tx_bytes: u32,
        /// `ADOPT_*` flags.
        flags: u16,
    },
    /// An adopt or release request failed (`error`), or a release was not the last
    /// (`error` None).
    AdoptFailed {
        /// The app's tag from the request.
        token: u64,
        /// Why.
        error: Option<ErrorCode>,
    },
    /// Connection slot `conn` (given up by this context while another process held it)
    /// has no holder left: the application closes it.
    Orphaned {
        /// Connection slot.
        conn: u32,
    },
}

/// App -> slow path control requests (on the request queue after the event queue).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlRequest {
    /// Open a listener.
    Listen {
        /// The app's tag, echoed in the reply.
        token: u64,
        /// Local port (1..=65535).
        port: u16,
        /// Maximum of established, not yet accepted connections.
        backlog: u32,
        /// `LISTEN_*` flags.
        flags: u16,
        /// Receive buffer of the connections it accepts, bytes (`SO_RCVBUF`; 0: the
        /// receive ring). The service bounds it by the ring and one segment.
        rcvbuf: u32,
    },
    /// Start an active open to `ip:port` (host order).
    Connect {
        /// The app's tag, echoed in the reply.
        token: u64,
        /// Remote IPv4 address, host order.
        ip: u32,
        /// Remote port.
        port: u16,
        /// Receive buffer, bytes (`SO_RCVBUF`; 0: the receive ring): the window offered
        /// never exceeds it.
        rcvbuf: u32,
    },
    /// `count` connections were taken from `listener`'s accept queue.
    Accepted {
        /// Listener id.
        listener: u32,
        /// How many.
        count: u32,
    },
    /// Reset a connection.
    Abort {
        /// Connection slot.
        conn: u32,
    },
    /// Close a listener.
    Unlisten {
        /// Listener id.
        listener: u32,
    },
    /// Report what the service knows of a connection (answered with [`SpEvent::Info`]).
    Info {
        /// The app's tag, echoed in the reply.
        token: u64,
        /// Connection slot.
        conn: u32,
    },
    /// This process forked: process `child` now holds every connection this one holds.
    Forked {
        /// The child's pid.
        child: u32,
    },
    /// Move a connection this process holds into this context ([`SpEvent::Adopted`]).
    Adopt {
        /// The app's tag, echoed in the reply.
        token: u64,
        /// The connection: remote address (host order), remote port, local port.
        key: ConnKey,
    },
    /// This process no longer holds the connection (its last descriptor closed).
    Release {
        /// The app's tag, echoed in the reply.
        token: u64,
        /// The connection.
        key: ConnKey,
    },
}

/// A connection named by its addresses (unique among the service's live connections):
/// how processes that share one name it ([`ControlRequest::Adopt`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// Remote IPv4 address, host order.
    pub remote_ip: u32,
    /// Remote port.
    pub remote_port: u16,
    /// Local port.
    pub local_port: u16,
}

impl ControlRequest {
    /// Encode.
    pub fn encode(&self) -> Desc {
        match *self {
            ControlRequest::Listen { token, port, backlog, flags, rcvbuf } => {
                Desc { kind: KIND_REQ_LISTEN, local_port: port, len: backlog, aux: token, flags, ip: rcvbuf, ..Desc::default() }
            }
            ControlRequest::Connect { token, ip, port, rcvbuf } => {
                Desc { kind: KIND_REQ_CONNECT, ip, remote_port: port, aux: token, len: rcvbuf, ..Desc::default() }
            }
            ControlRequest::Accepted { listener, count } => {
                Desc { kind: KIND_REQ_ACCEPTED, len: listener, aux: count as u64, ..Desc::default() }
            }
            ControlRequest::Abort { conn } => Desc { kind: KIND_REQ_ABORT, conn, ..Desc::default() },
            ControlRequest::Unlisten { listener } => {
                Desc { kind: KIND_REQ_UNLISTEN, len: listener, ..Desc::default() }
            }
            ControlRequest::Info { token, conn } => Desc { kind: KIND_REQ_INFO, conn, aux: token, ..Desc::default() },
            ControlRequest::Forked { child } => Desc { kind: KIND_REQ_FORKED, len: child, ..Desc::default() },
            ControlRequest::Adopt { token, key } => Desc {
                kind: KIND_REQ_ADOPT,
                ip: key.remote_ip,
                remote_port: key.remote_port,
                local_port: key.local_port,
                aux: token,
                ..Desc::default()
            },
            ControlRequest::Release { token, key } => Desc {
                kind: KIND_REQ_RELEASE,
                ip: key.remote_ip,
                remote_port: key.remote_port,
                local_port: key.local_port,
                aux: token,
                ..Desc::default()
            },
        }
    }
    /// Decode (the service calls this on untrusted input).
    pub fn decode(d: &Desc) -> Result<Self, BadDesc> {
        Ok(match d.kind {
            KIND_REQ_LISTEN => {
                if d.flags & !LISTEN_FLAGS_KNOWN != 0 {
                    return Err(BadDesc(d.kind));
                }
                ControlRequest::Listen { token: d.aux, port: d.local_port, backlog: d.len, flags: d.flags, rcvbuf: d.ip }
            }
            KIND_REQ_CONNECT => ControlRequest::Connect { token: d.aux, ip: d.ip, port: d.remote_port, rcvbuf: d.len },
            KIND_REQ_ACCEPTED => ControlRequest::Accepted {
                listener: d.len,
                count: u32::try_from(d.aux).map_err(|_| BadDesc(d.kind))?,
            },
            KIND_REQ_ABORT => ControlRequest::Abort { conn: d.conn },
            KIND_REQ_UNLISTEN => ControlRequest::Unlisten { listener: d.len },
            KIND_REQ_INFO => ControlRequest::Info { token: d.aux, conn: d.conn },
            KIND_REQ_FORKED => ControlRequest::Forked { child: d.len },
            KIND_REQ_ADOPT => ControlRequest::Adopt {
                token: d.aux,
                key: ConnKey { remote_ip: d.ip, remote_port: d.remote_port, local_port: d.local_port },
            },
            KIND_REQ_RELEASE => ControlRequest::Release {
                token: d.aux,
                key: ConnKey { remote_ip: d.ip, remote_port: d.remote_port, local_port: d.local_port },
            },
            k => return Err(BadDesc(k)),
        })
    }
}

/// A descriptor the decoder did not accept (unknown kind or bad field).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadDesc(pub u8);

impl Doorbell {
    /// Encode.
    pub fn encode(&self) -> Desc {
        let (kind, flow, conn, len) = match *self {
            Doorbell::TxAdded { flow, conn, bytes } => (KIND_TX_ADDED, flow, conn, bytes),
            Doorbell::RxConsumed { flow, conn, bytes } => (KIND_RX_CONSUMED, flow, conn, bytes),
            Doorbell::ShutdownTx { flow, conn } => (KIND_SHUTDOWN_TX, flow, conn, 0),
        };
        Desc { kind, flow, conn, len, ..Desc::default() }
    }
    /// Decode (the service calls this on untrusted input).
    pub fn decode(d: &Desc) -> Result<Self, BadDesc> {
        Ok(match d.kind {
            KIND_TX_ADDED => Doorbell::TxAdded { flow: d.flow, conn: d.conn, bytes: d.len },
            KIND_RX_CONSUMED => Doorbell::RxConsumed { flow: d.flow, conn: d.conn, bytes: d.len },
            KIND_SHUTDOWN_TX => Doorbell::ShutdownTx { flow: d.flow, conn: d.conn },
            k => return Err(BadDesc(k)),
        })
    }
}

impl FpEvent {
    /// Encode.
    pub fn encode(&self) -> Desc {
        match *self {
            FpEvent::RxData { conn, bytes, fin } => Desc {
                kind: KIND_RX_DATA,
                conn,
                len: bytes,
                flags: if fin { FLAG_FIN } else { 0 },
                ..Desc::default()
            },
            FpEvent::TxFreed { conn, bytes } => {
                Desc { kind: KIND_TX_FREED, conn, len: bytes, ..Desc::default() }
            }
        }
    }
    /// Decode.
    pub fn decode(d: &Desc) -> Result<Self, BadDesc> {
        Ok(match d.kind {
            KIND_RX_DATA => {
                FpEvent::RxData { conn: d.conn, bytes: d.len, fin: d.flags & FLAG_FIN != 0 }
            }
            KIND_TX_FREED => FpEvent::TxFreed { conn: d.conn, bytes: d.len },
            k => return Err(BadDesc(k)),
        })
    }
}

impl SpEvent {
    /// Encode.
    pub fn encode(&self) -> Desc {
        match *self {
            SpEvent::Accepted { listener, handle, remote_ip, remote_port, local_port } => Desc {
                kind: KIND_ACCEPTED,
                core: handle.core,
                flow: handle.flow,
                conn: handle.conn,
                len: listener,
                ip: remote_ip,
                local_port,
                remote_port,
                ..Desc::default()
            },
            SpEvent::Connected { token, handle, local_port } => Desc {
                kind: KIND_CONNECTED,
                core: handle.core,
                flow: handle.flow,
                conn: handle.conn,
                local_port,
                aux: token,
                ..Desc::default()
            },
            SpEvent::ConnectFailed { token, error } => {
                Desc { kind: KIND_CONNECT_FAILED, len: error as u32, aux: token, ..Desc::default() }
            }
            SpEvent::ListenOk { token, listener } => {
                Desc { kind: KIND_LISTEN_OK, conn: listener, aux: token, ..Desc::default() }
            }
            SpEvent::ListenFailed { token, error } => {
                Desc { kind: KIND_LISTEN_FAILED, len: error as u32, aux: token, ..Desc::default() }
            }
            SpEvent::Closed { conn, error } => Desc {
                kind: KIND_CLOSED,
                conn,
                len: error.map_or(0, |e| e as u32),
                ..Desc::default()
            },
            SpEvent::Adopted { token, handle, rx_bytes, tx_bytes, flags } => Desc {
                kind: KIND_ADOPTED,
                core: handle.core,
                flow: handle.flow,
                conn: handle.conn,
                len: rx_bytes,
                ip: tx_bytes,
                flags,
                aux: token,
                ..Desc::default()
            },
            SpEvent::AdoptFailed { token, error } => {
                Desc { kind: KIND_ADOPT_FAILED, len: error.map_or(0, |e| e as u32), aux: token, ..Desc::default() }
            }
            SpEvent::Orphaned { conn } => Desc { kind: KIND_ORPHANED, conn, ..Desc::default() },
            SpEvent::Info { token, part, words } => Desc {
                kind: KIND_INFO,
                core: part,
                flags: 0,
                flow: words[0],
                conn: words[1],
                len: words[2],
                ip: words[3],
                local_port: words[4] as u16,
                remote_port: (words[4] >> 16) as u16,
                aux: token,
            },
        }
    }
    /// Decode.
    pub fn decode(d: &Desc) -> Result<Self, BadDesc> {
        let handle = ConnHandle { conn: d.conn, core: d.core, flow: d.flow };
        Ok(match d.kind {
            KIND_ACCEPTED => SpEvent::Accepted {
                listener: d.len,
                handle,
                remote_ip: d.ip,
                remote_port: d.remote_port,
                local_port: d.local_port,
            },
            KIND_CONNECTED => SpEvent::Connected { token: d.aux, handle, local_port: d.local_port },
            KIND_CONNECT_FAILED => SpEvent::ConnectFailed {
                token: d.aux,
                error: ErrorCode::from_u32(d.len).ok_or(BadDesc(d.kind))?,
            },
            KIND_LISTEN_OK => SpEvent::ListenOk { token: d.aux, listener: d.conn },
            KIND_LISTEN_FAILED => SpEvent::ListenFailed {
                token: d.aux,
                error: ErrorCode::from_u32(d.len).ok_or(BadDesc(d.kind))?,
            },
            KIND_CLOSED => SpEvent::Closed {
                conn: d.conn,
                error: if d.len == 0 {
                    None
                } else {
                    Some(ErrorCode::from_u32(d.len).ok_or(BadDesc(d.kind))?)
                },
            },
            KIND_ADOPTED => SpEvent::Adopted {
                token: d.aux,
                handle,
                rx_bytes: d.len,
                tx_bytes: d.ip,
                flags: d.flags,
            },
            KIND_ADOPT_FAILED => SpEvent::AdoptFailed {
                token: d.aux,
                error: if d.len == 0 {
                    None
                } else {
                    Some(ErrorCode::from_u32(d.len).ok_or(BadDesc(d.kind))?)
                },
            },
            KIND_ORPHANED => SpEvent::Orphaned { conn: d.conn },
            KIND_INFO if (d.core as usize) < INFO_PARTS => SpEvent::Info {
                token: d.aux,
                part: d.core,
                words: [d.flow, d.conn, d.len, d.ip, d.local_port as u32 | (d.remote_port as u32) << 16],
            },
            k => return Err(BadDesc(k)),
        })
    }
}

/// Geometry of a region, from which every offset follows. The service picks it; the
/// application reads it back from the [`RegionHeader`] and checks it with [`Layout::validate`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    /// Fast-path queue pairs.
    pub num_fp_queues: u32,
    /// Entries per queue (power of two, 16..=65536).
    pub queue_entries: u32,
    /// Connection slots.
    pub conn_slots: u32,
    /// Receive ring size per connection (power of two, >= 4096).
    pub rx_buf_size: u32,
    /// Transmit ring size per connection (power of two, >= 4096).
    pub tx_buf_size: u32,
}

/// Why a layout or header was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LayoutError {
    /// Magic bytes wrong: not a TAS region.
    Magic,
    /// ABI version differs.
    Version(u32),
    /// A size or count is out of range.
    Geometry,
    /// The region is smaller than the geometry needs.
    TooSmall,
}

impl Layout {
    /// Offset of queue pair `i`'s `to_fp` queue; `to_app` follows it.
    pub fn to_fp_offset(&self, i: u32) -> usize {
        self.queues_offset() + 2 * i as usize * queue_bytes(self.queue_entries)
    }
    /// Offset of queue pair `i`'s `to_app` queue.
    pub fn to_app_offset(&self, i: u32) -> usize {
        self.to_fp_offset(i) + queue_bytes(self.queue_entries)
    }
    /// Offset of the first queue.
    pub const fn queues_offset(&self) -> usize {
        size_of::<RegionHeader>()
    }
    /// Offset of the slow-path event queue.
    pub fn sp_queue_offset(&self) -> usize {
        self.to_fp_offset(self.num_fp_queues)
    }
    /// Offset of the app's control-request queue (consumed by the slow path).
    pub fn req_queue_offset(&self) -> usize {
        self.sp_queue_offset() + queue_bytes(self.queue_entries)
    }
    /// Offset of slot 0 (page aligned).
    pub fn payload_offset(&self) -> usize {
        (self.req_queue_offset() + queue_bytes(self.queue_entries)).next_multiple_of(4096)
    }
    /// Bytes per connection slot.
    pub fn slot_bytes(&self) -> usize {
        self.rx_buf_size as usize + self.tx_buf_size as usize
    }
    /// Offset of slot `conn`'s receive ring.
    pub fn rx_offset(&self, conn: u32) -> usize {
        self.payload_offset() + conn as usize * self.slot_bytes()
    }
    /// Offset of slot `conn`'s transmit ring.
    pub fn tx_offset(&self, conn: u32) -> usize {
        self.rx_offset(conn) + self.rx_buf_size as usize
    }
    /// Total size of the region.
    pub fn region_size(&self) -> usize {
        self.payload_offset() + self.conn_slots as usize * self.slot_bytes()
    }
    /// Check the geometry's ranges (a region stays below 4 GiB: the fast path keeps ring
    /// offsets in 32 bits).
    pub fn check(&self) -> Result<(), LayoutError> {
        let pow2 = |v: u32, lo: u32, hi: u32| v.is_power_of_two() && v >= lo && v <= hi;
        if self.num_fp_queues == 0
            || self.num_fp_queues > 64
            || !pow2(self.queue_entries, 16, 1 << 16)
            || self.conn_slots == 0
            || self.conn_slots > 1 << 20
            || !pow2(self.rx_buf_size, 4096, 1 << 30)
            || !pow2(self.tx_buf_size, 4096, 1 << 30)
            || self.region_size() > u32::MAX as usize
        {
            return Err(LayoutError::Geometry);
        }
        Ok(())
    }
    /// The header the service writes at offset 0.
    pub fn header(&self) -> RegionHeader {
        RegionHeader {
            magic: REGION_MAGIC,
            abi_version: ABI_VERSION,
            num_fp_queues: self.num_fp_queues,
            queue_entries: self.queue_entries,
            conn_slots: self.conn_slots,
            region_size: self.region_size() as u64,
            queues_offset: self.queues_offset() as u64,
            sp_queue_offset: self.sp_queue_offset() as u64,
            payload_offset: self.payload_offset() as u64,
            rx_buf_size: self.rx_buf_size,
            tx_buf_size: self.tx_buf_size,
            _reserved: [0; 8],
        }
    }
    /// Read a layout back from a header found in a mapping of `mapped_len` bytes, checking
    /// magic, version, ranges and that every derived offset matches and fits.
    pub fn validate(h: &RegionHeader, mapped_len: usize) -> Result<Self, LayoutError> {
        if h.magic != REGION_MAGIC {
            return Err(LayoutError::Magic);
        }
        if h.abi_version != ABI_VERSION {
            return Err(LayoutError::Version(h.abi_version));
        }
        let l = Layout {
            num_fp_queues: h.num_fp_queues,
            queue_entries: h.queue_entries,
            conn_slots: h.conn_slots,
            rx_buf_size: h.rx_buf_size,
            tx_buf_size: h.tx_buf_size,
        };
        l.check()?;
        if l.header().region_size != h.region_size
            || l.queues_offset() as u64 != h.queues_offset
            || l.sp_queue_offset() as u64 != h.sp_queue_offset
            || l.payload_offset() as u64 != h.payload_offset
        {
            return Err(LayoutError::Geometry);
        }
        if l.region_size() > mapped_len {
            return Err(LayoutError::TooSmall);
        }
        Ok(l)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layout() -> Layout {
        Layout { num_fp_queues: 2, queue_entries: 256, conn_slots: 8, rx_buf_size: 8192, tx_buf_size: 4096 }
    }

    #[test]
    fn offsets_are_disjoint_and_aligned() {
        let l = layout();
        assert_eq!(l.queues_offset(), 128);
        assert_eq!(l.to_fp_offset(0), 128);
        assert_eq!(l.to_app_offset(0), 128 + 192 + 256 * 32);
        assert_eq!(l.to_fp_offset(1), 128 + 2 * (192 + 256 * 32));
        assert_eq!(l.sp_queue_offset(), 128 + 4 * (192 + 256 * 32));
        assert_eq!(l.payload_offset() % 4096, 0);
        assert_eq!(l.req_queue_offset(), l.sp_queue_offset() + queue_bytes(256));
        assert!(l.payload_offset() >= l.req_queue_offset() + queue_bytes(256));
        assert_eq!(l.tx_offset(0), l.payload_offset() + 8192);
        assert_eq!(l.rx_offset(1), l.payload_offset() + 12288);
        assert_eq!(l.region_size(), l.payload_offset() + 8 * 12288);
        for i in 0..2 {
            assert_eq!(l.to_fp_offset(i) % 64, 0);
            assert_eq!(l.to_app_offset(i) % 64, 0);
        }
    }

    #[test]
    fn header_round_trip_and_rejections() {
        let l = layout();
        let h = l.header();
        assert_eq!(Layout::validate(&h, l.region_size()), Ok(l));
        assert_eq!(RegionHeader::from_bytes(&h.to_bytes()).to_bytes(), h.to_bytes());
        assert_eq!(core::mem::offset_of!(RegionHeader, tx_buf_size), 60);
        assert_eq!(core::mem::offset_of!(RegionHeader, region_size), 24);
        assert_eq!(Layout::validate(&h, l.region_size() - 1), Err(LayoutError::TooSmall));
        let mut bad = h;
        bad.magic = 0;
        assert_eq!(Layout::validate(&bad, usize::MAX), Err(LayoutError::Magic));
        let mut bad = h;
        bad.abi_version = 99;
        assert_eq!(Layout::validate(&bad, usize::MAX), Err(LayoutError::Version(99)));
        let mut bad = h;
        bad.queue_entries = 100;
        assert_eq!(Layout::validate(&bad, usize::MAX), Err(LayoutError::Geometry));
        let mut bad = h;
        bad.queues_offset += 64;
        assert_eq!(Layout::validate(&bad, usize::MAX), Err(LayoutError::Geometry), "found by the shm_layout fuzzer");
        let mut bad = h;
        bad.payload_offset += 64;
        assert_eq!(Layout::validate(&bad, usize::MAX), Err(LayoutError::Geometry));
    }

    #[test]
    fn conn_info_round_trips_through_its_parts() {
        let i = ConnInfo {
            opts: INFO_FOUND | INFO_SACK | INFO_WSCALE | INFO_FRESH | 7 << 8 | 9 << 12,
            mss: 1460,
            srtt_us: 123,
            rttvar_us: 45,
            cwnd: 14600,
            retransmits: 3,
            rto_us: 200_000,
            ca_state: CA_LOSS,
            rto_backoff: 2,
            probes: 1,
            sacked: 4,
            lost: 5,
            retrans: 6,
            last_ack_recv_ms: 7,
            min_rtt_us: 8,
            notsent_bytes: 9,
            unacked_bytes: 10,
            sent_bytes_lo: u32::MAX,
            retrans_bytes_lo: 11,
            delivery_kbps: 12,
            pacing_kbps: 13,
            snd_wnd: 14,
            rcv_wnd: 15,
            snd_ssthresh: u32::MAX - 1,
            rcv_ssthresh: 16,
            total_rto: 17,
            total_rto_recoveries: 18,
            total_rto_time_ms: 19,
        };
        assert_eq!(ConnInfo::from_words(&i.to_words()), i);
        let mut w = [0u32; INFO_WORDS];
        for (p, e) in i.events(77).iter().enumerate() {
            let Ok(SpEvent::Info { token: 77, part, words }) = SpEvent::decode(&e.encode()) else { panic!("{e:?}") };
            assert_eq!(part as usize, p);
            w[p * INFO_WORDS_PER_PART..][..INFO_WORDS_PER_PART].copy_from_slice(&words);
        }
        assert_eq!(ConnInfo::from_words(&w), i);
    }

    #[test]
    fn descriptors_round_trip() {
        let h = ConnHandle { conn: 7, core: 1, flow: 99 };
        for e in [
            SpEvent::Accepted { listener: 3, handle: h, remote_ip: 0x0a000002, remote_port: 5555, local_port: 80 },
            SpEvent::Connected { token: 77, handle: h, local_port: 61000 },
            SpEvent::ConnectFailed { token: 5, error: ErrorCode::Refused },
            SpEvent::ListenOk { token: 1, listener: 2 },
            SpEvent::ListenFailed { token: 1, error: ErrorCode::AddrInUse },
            SpEvent::Closed { conn: 4, error: None },
            SpEvent::Closed { conn: 4, error: Some(ErrorCode::Moved) },
            SpEvent::Adopted { token: 9, handle: h, rx_bytes: 1000, tx_bytes: 77, flags: ADOPT_RX_FIN | ADOPT_LAST },
            SpEvent::AdoptFailed { token: 9, error: None },
            SpEvent::AdoptFailed { token: 9, error: Some(ErrorCode::NotFound) },
            SpEvent::Orphaned { conn: 3 },
            SpEvent::Closed { conn: 4, error: Some(ErrorCode::Reset) },
            SpEvent::Info { token: 12, part: 4, words: [1, u32::MAX, 3, 4, 0xfedc_ba98] },
        ] {
            assert_eq!(SpEvent::decode(&e.encode()), Ok(e));
        }
        for e in [FpEvent::RxData { conn: 1, bytes: 1460, fin: true }, FpEvent::TxFreed { conn: 2, bytes: 9 }] {
            assert_eq!(FpEvent::decode(&e.encode()), Ok(e));
        }
        for d in [
            Doorbell::TxAdded { flow: 1, conn: 2, bytes: 3 },
            Doorbell::RxConsumed { flow: 1, conn: 2, bytes: 3 },
            Doorbell::ShutdownTx { flow: 5, conn: 6 },
        ] {
            assert_eq!(Doorbell::decode(&d.encode()), Ok(d));
        }
        for r in [
            ControlRequest::Listen { token: 9, port: 80, backlog: 128, flags: 0, rcvbuf: 0 },
            ControlRequest::Listen { token: 10, port: 80, backlog: 128, flags: LISTEN_REUSEPORT, rcvbuf: 8192 },
            ControlRequest::Connect { token: 10, ip: 0x0a000001, port: 7, rcvbuf: 0 },
            ControlRequest::Connect { token: 11, ip: 0x0a000001, port: 7, rcvbuf: 65536 },
            ControlRequest::Accepted { listener: 1, count: 3 },
            ControlRequest::Abort { conn: 4 },
            ControlRequest::Unlisten { listener: 1 },
            ControlRequest::Info { token: 11, conn: 5 },
            ControlRequest::Forked { child: 4242 },
            ControlRequest::Adopt { token: 3, key: ConnKey { remote_ip: 0x0a000002, remote_port: 5555, local_port: 80 } },
            ControlRequest::Release { token: 4, key: ConnKey { remote_ip: 0x0a000002, remote_port: 5555, local_port: 80 } },
        ] {
            assert_eq!(ControlRequest::decode(&r.encode()), Ok(r));
        }
        assert_eq!(Doorbell::decode(&Desc { kind: 200, ..Desc::default() }), Err(BadDesc(200)));
        // An info part beyond the last is refused.
        assert!(SpEvent::decode(&Desc { kind: KIND_INFO, core: INFO_PARTS as u8, ..Desc::default() }).is_err());
        assert!(SpEvent::decode(&Desc { kind: KIND_CLOSED, len: 77, ..Desc::default() }).is_err());
        // Listen flags this version does not know are refused, not ignored.
        let unknown = Desc { kind: KIND_REQ_LISTEN, flags: 1 << 7, local_port: 80, ..Desc::default() };
        assert_eq!(ControlRequest::decode(&unknown), Err(BadDesc(KIND_REQ_LISTEN)));
    }
}
