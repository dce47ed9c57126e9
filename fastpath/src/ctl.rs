//! Messages between the slow path and a fast-path core.
//!
//! The slow path never writes a core's state: it sends [`Command`]s on an SPSC queue
//! (`ringbuf`), and the core reports exceptions and flow milestones with [`ToSlow`]
//! messages on another. Both queues are bounded; a full exception queue drops the
//! packet and counts it (TCP recovers), a full command queue makes the slow path retry.

use std::os::fd::OwnedFd;
use std::sync::Arc;

use ringbuf::traits::Split;
use ringbuf::HeapRb;

use crate::appmem::AppMem;
use crate::flow::FlowState;
use crate::io::MAX_FRAME;
use tas_proto::shm::Layout;

/// What a core needs to serve one application context.
#[derive(Debug, Clone)]
pub struct AppAttach {
    /// The service-wide application id (for statistics).
    pub app_id: u32,
    /// The mapped region.
    pub mem: AppMem,
    /// Its geometry.
    pub layout: Layout,
    /// The application's wake-up eventfd.
    pub wake: Option<Arc<OwnedFd>>,
}

/// Slow path -> core.
#[derive(Debug)]
pub enum Command {
    /// Serve an application context in local slot `slot`.
    AddApp {
        /// Local slot (the `app` field of its flows).
        slot: u16,
        /// The context.
        app: Box<AppAttach>,
    },
    /// Stop serving application slot `slot` (its flows were removed before).
    RemoveApp {
        /// Local slot.
        slot: u16,
    },
    /// Install an established flow at index `flow`.
    InstallFlow {
        /// Flow-table index chosen by the slow path.
        flow: u32,
        /// Initial state.
        state: Box<FlowState>,
    },
    /// Remove flow `flow`; the core answers [`ToSlow::FlowRemoved`].
    RemoveFlow {
        /// Flow-table index.
        flow: u32,
    },
    /// Transmit a frame built by the slow path (SYN, SYN-ACK, RST, ARP, ...).
    SendFrame(Box<[u8]>),
    /// Process a frame as if it had just been received (segments that raced a flow
    /// installation come back this way, in order).
    Reinject(Box<[u8]>),
    /// Go back to `snd_una` and resend (the slow path's loss recovery).
    Retransmit {
        /// Flow-table index.
        flow: u32,
    },
    /// Retransmit `[seq, seq + len)` of flow `flow` (the part still unacknowledged), in
    /// MSS-sized segments, without changing what counts as sent.
    RetransmitRange {
        /// Flow-table index.
        flow: u32,
        /// First sequence number.
        seq: u32,
        /// Length in bytes.
        len: u32,
    },
    /// Send a copy of flow `flow` ([`ToSlow::Peeked`]: an application's `TCP_INFO`; rare,
    /// allocates the copy's box).
    Peek {
        /// Flow-table index.
        flow: u32,
        /// The slow path's tag, echoed.
        tag: u64,
    },
    /// Send a copy of every live flow (for the control API; rare, allocates).
    Snapshot(crossbeam_channel::Sender<(u8, Vec<(u32, FlowState)>)>),
    /// Start (`Some`) or stop (`None`) a packet capture on this core (control API).
    Capture(Option<Box<crate::io::capture::CaptureSpec>>),
    /// Close flow `flow` from the service's side: FIN after the data already queued, as
    /// if the application had shut down its direction (control API `CloseFlow`).
    ShutdownTx {
        /// Flow-table index.
        flow: u32,
    },
    /// Move flow `flow` to connection slot `conn` of application slot `app` (a
    /// connection handed to another context or process, decisions §26): the core first
    /// takes every pending doorbell, then copies the unread receive bytes (and any kept
    /// out-of-order data after them) and the unacknowledged and unsent transmit bytes
    /// into the new slot's rings, rotated to start at ring position 0, and re-points the
    /// flow. Answers [`ToSlow::FlowMoved`]. Segments are processed before or after the
    /// command, never during it: nothing is lost.
    MoveFlow {
        /// Flow-table index.
        flow: u32,
        /// Target application slot on this core.
        app: u16,
        /// Target connection slot in that application's region.
        conn: u32,
        /// The flow's receive space (its `SO_RCVBUF` window cap, or the ring): unread
        /// bytes = this minus the free window.
        rx_space: u32,
    },
    /// The application owning flow `flow` went away (its region stays mapped until its
    /// flows are gone). The core takes the doorbells it posted before it went, and answers
    /// [`ToSlow::Orphaned`]: whether it had closed its sending side.
    Orphan {
        /// Flow-table index.
        flow: u32,
    },
    /// Congestion control's limits for flow `flow`; also turns on its periodic
    /// [`ToSlow::Cc`] reports.
    SetCc {
        /// Flow-table index.
        flow: u32,
        /// Congestion window in bytes (0: none).
        cwnd: u32,
        /// Pacing rate in kbit/s of payload (0: unpaced).
        rate_kbps: u32,
    },
}

/// A flow's congestion-control counters as the core saw them (wrapping totals: the
/// slow path takes differences between reports).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CcSample {
    /// Time of the report, µs (wrapping).
    pub now_us: u32,
    /// Bytes acknowledged.
    pub acked: u32,
    /// Bytes acknowledged by ACKs with ECE.
    pub ecn: u32,
    /// Duplicate ACKs.
    pub dupacks: u16,
    /// Retransmission events.
    pub retx: u16,
    /// Smoothed RTT, µs.
    pub srtt_us: u32,
    /// RTT variation, µs.
    pub rttvar_us: u32,
    /// Bytes in flight.
    pub in_flight: u32,
    /// Bytes queued by the application and not yet sent.
    pub unsent: u32,
    /// `snd_una` (for the slow path's loss-recovery state).
    pub snd_una: u32,
}

impl CcSample {
    /// The counters of `f` at `now_us`.
    pub fn of(f: &FlowState, now_us: u32) -> Self {
        CcSample {
            now_us,
            acked: f.cnt_acked,
            ecn: f.cnt_ecn,
            dupacks: f.cnt_dupacks,
            retx: f.cnt_retx,
            srtt_us: f.srtt_us,
            rttvar_us: f.rttvar_us,
            in_flight: f.tx_sent,
            unsent: f.tx_avail,
            snd_una: f.snd_una,
        }
    }
}

/// A frame copied out of the fast path for the slow path.
#[derive(Clone)]
pub struct ExcFrame {
    /// Frame bytes (the first `len` are valid).
    pub buf: [u8; MAX_FRAME],
    /// Length.
    pub len: u16,
}

impl std::fmt::Debug for ExcFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExcFrame({} bytes)", self.len)
    }
}

impl ExcFrame {
    /// The valid bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

/// Why a flow milestone is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlowNote {
    /// The peer's FIN arrived in order; `after_ours`: our FIN had been sent before it
    /// (an active or simultaneous close: TIME-WAIT follows).
    PeerFin {
        /// Our FIN was sent first.
        after_ours: bool,
    },
    /// Our FIN was acknowledged.
    FinAcked,
    /// The retransmission budget ran out (the slow path resets the connection).
    GaveUp,
    /// A retransmission timeout fired: the core went back to `snd_una` (go-back-N);
    /// loss-recovery state kept elsewhere is void.
    Rto {
        /// `snd_una` when it fired.
        snd_una: u32,
        /// The highest sequence sent before (the recovery ends when it is acknowledged).
        recover: u32,
    },
}

/// Core -> slow path.
#[derive(Debug)]
pub enum ToSlow {
    /// A frame the fast path does not handle (SYN, RST, unknown flow, ARP, ...).
    Frame(Box<ExcFrame>),
    /// A milestone of flow `flow`.
    Note {
        /// Flow-table index.
        flow: u32,
        /// What happened.
        note: FlowNote,
    },
    /// An ACK for flow `flow` carried SACK blocks (RFC 2018): input for the slow path's
    /// scoreboard, which answers with [`Command::RetransmitRange`]s for the holes.
    Sack {
        /// Flow-table index.
        flow: u32,
        /// `snd_una` after the ACK.
        snd_una: u32,
        /// `snd_nxt` at the time.
        snd_nxt: u32,
        /// The flow's smoothed RTT, µs (for the reordering window).
        srtt_us: u32,
        /// The peer's blocks.
        blocks: crate::wire::SackBlocks,
    },
    /// Flow `flow`'s control interval ended: its counters for congestion control.
    Cc {
        /// Flow-table index.
        flow: u32,
        /// The counters.
        sample: CcSample,
    },
    /// The answer to [`Command::MoveFlow`]: `moved` false if the flow or either
    /// application was gone (nothing changed).
    FlowMoved {
        /// Flow-table index.
        flow: u32,
        /// The flow moved.
        moved: bool,
        /// Unread receive bytes now at ring position 0 of the new slot.
        rx_bytes: u32,
        /// Transmit bytes (unacknowledged, then unsent) now at position 0.
        tx_bytes: u32,
        /// The peer's FIN had arrived (in order).
        rx_fin: bool,
        /// Our FIN was queued or sent.
        tx_fin: bool,
    },
    /// The answer to [`Command::Orphan`]: `closing` if the application had shut down its
    /// sending side (our FIN is queued or sent): the close can finish in order, as the
    /// kernel finishes the close of a socket whose process exited.
    Orphaned {
        /// Flow-table index.
        flow: u32,
        /// Our FIN is queued or sent.
        closing: bool,
    },
    /// The answer to [`Command::Peek`]: a copy of the flow at `now_us` (None: no live
    /// flow at that index), and the bytes it retransmitted (wrapping).
    Peeked {
        /// Flow-table index.
        flow: u32,
        /// The slow path's tag.
        tag: u64,
        /// The core's clock, µs (wrapping), when the copy was taken.
        now_us: u32,
        /// Data bytes retransmitted so far (wrapping; a side table of the core).
        retx_bytes: u32,
        /// The copy.
        state: Option<Box<FlowState>>,
    },
    /// Flow `flow` was removed; its final state.
    FlowRemoved {
        /// Flow-table index.
        flow: u32,
        /// Final state.
        state: Box<FlowState>,
    },
}

/// Producer half of the command queue.
pub type CommandTx = ringbuf::HeapProd<Command>;
/// Consumer half of the command queue.
pub type CommandRx = ringbuf::HeapCons<Command>;
/// Producer half of the core -> slow path queue.
pub type ToSlowTx = ringbuf::HeapProd<ToSlow>;
/// Consumer half of the core -> slow path queue.
pub type ToSlowRx = ringbuf::HeapCons<ToSlow>;

/// Make a command queue with room for `n` commands.
pub fn command_queue(n: usize) -> (CommandTx, CommandRx) {
    HeapRb::<Command>::new(n).split()
}

/// Make a core -> slow path queue with room for `n` messages.
pub fn to_slow_queue(n: usize) -> (ToSlowTx, ToSlowRx) {
    HeapRb::<ToSlow>::new(n).split()
}
