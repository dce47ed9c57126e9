//! The per-core engine and its poll loop.
//!
//! [`FastPath::poll`] runs one batch: slow-path commands, a burst of received frames,
//! application doorbells, the queue manager's transmissions, ACKs, events to the
//! applications, one transmit kick, and a slice of the retransmission-timer scan. It is
//! driven by a thread pinned to its core in the service ([`run_pinned`]) and directly
//! by the simulator and the benchmarks, with the time passed in.

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ringbuf::traits::{Consumer, Observer, Producer};
use tas_proto::queue::ShmQueue;
use tas_proto::shm::{Doorbell, FpEvent};

use crate::ctl::*;
use crate::flow::*;
use crate::io::{PacketIo, RxFrame, MAX_FRAME};
use crate::qman::{QueueManager, MAX_LAG_NS};
use crate::rx::{self, RxCounters, SegInfo};
use crate::time::{Clock, Instant};
use crate::tx;
use crate::wire::{
    self, EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, TcpFlags, TcpSegment,
};

mod ops;

/// Settings of one fast-path core.
#[derive(Debug, Clone)]
pub struct FpConfig {
    /// Core number (= queue pair index in every app region).
    pub core: u8,
    /// The service's address.
    pub local_ip: Ipv4Addr,
    /// The interface's Ethernet address.
    pub local_mac: EthernetAddress,
    /// Flow slots on this core.
    pub flow_capacity: u32,
    /// Frames per receive burst (32-64 is the sweet spot).
    pub rx_batch: usize,
    /// Segments one flow may send per scheduling turn.
    pub tx_burst: u32,
    /// Minimum RTO in µs (Linux uses 200 ms).
    pub min_rto_us: u32,
    /// Maximum RTO in µs (RFC 6298 allows a cap of at least 60 s).
    pub max_rto_us: u32,
    /// RTO before an RTT sample exists, µs (RFC 6298: 1 s).
    pub initial_rto_us: u32,
    /// Consecutive timeouts before the connection is given up.
    pub max_retries: u8,
    /// Verify IPv4/TCP checksums of received frames (off only for NICs that do it).
    pub verify_checksums: bool,
    /// Keepalive timing for flows with `F_KEEPALIVE`.
    pub keepalive: Keepalive,
    /// Congestion control reports a flow's counters every `cc_interval_rtts` smoothed
    /// RTTs ...
    pub cc_interval_rtts: u32,
    /// ... but not more often than every `cc_interval_min_us` µs.
    pub cc_interval_min_us: u32,
}

/// Keepalive timing (RFC 9293 3.8.4; Linux's defaults: 2 h idle, 75 s apart, 9 probes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Keepalive {
    /// Idle time before the first probe, µs.
    pub idle_us: u64,
    /// Time between unanswered probes, µs.
    pub interval_us: u64,
    /// Unanswered probes before the connection is given up.
    pub probes: u8,
}

impl Default for Keepalive {
    fn default() -> Self {
        Keepalive {
            idle_us: 7_200_000_000,
            interval_us: 75_000_000,
            probes: 9,
        }
    }
}

impl FpConfig {
    /// Defaults for `core`, address and MAC.
    pub fn new(core: u8, local_ip: Ipv4Addr, local_mac: EthernetAddress) -> Self {
        FpConfig {
            core,
            local_ip,
            local_mac,
            flow_capacity: 16_384,
            rx_batch: 32,
            tx_burst: 16,
            min_rto_us: 200_000,
            max_rto_us: 60_000_000,
            initial_rto_us: 1_000_000,
            max_retries: 12,
            verify_checksums: true,
            keepalive: Keepalive::default(),
            cc_interval_rtts: 2,
            cc_interval_min_us: 100,
        }
    }
}

/// Per-core counters, readable by other threads (single writer: the core).
#[derive(Debug, Default)]
pub struct CoreCounters {
    /// Frames received.
    pub rx_frames: AtomicU64,
    /// Frames transmitted (data, ACKs, slow-path frames).
    pub tx_frames: AtomicU64,
    /// Data segments sent (first transmissions and retransmissions).
    pub tx_segments: AtomicU64,
    /// Pure ACKs sent.
    pub tx_acks: AtomicU64,
    /// Payload bytes delivered in order to applications.
    pub rx_payload_bytes: AtomicU64,
    /// Payload bytes transmitted.
    pub tx_payload_bytes: AtomicU64,
    /// Frames handed to the slow path.
    pub exceptions: AtomicU64,
    /// Exceptions dropped because the slow-path queue was full.
    pub exceptions_dropped: AtomicU64,
    /// Frames dropped: not parseable (truncated, malformed).
    pub drop_malformed: AtomicU64,
    /// Frames dropped: bad IPv4 or TCP checksum.
    pub drop_checksum: AtomicU64,
    /// Frames dropped: not addressed to the service's IP.
    pub drop_not_ours: AtomicU64,
    /// Frames dropped: IPv4 but not TCP.
    pub drop_not_tcp: AtomicU64,
    /// Frames dropped: fragments or unsupported IPv4 features.
    pub drop_unsupported: AtomicU64,
    /// Segments received out of order and kept.
    pub ooo_kept: AtomicU64,
    /// Segments received out of order and dropped.
    pub ooo_dropped: AtomicU64,
    /// Payload bytes dropped for lack of receive window.
    pub window_dropped: AtomicU64,
    /// Duplicate segments.
    pub rx_duplicates: AtomicU64,
    /// Duplicate ACKs received.
    pub dupacks: AtomicU64,
    /// Retransmission timeouts.
    pub rto_fired: AtomicU64,
    /// Segments retransmitted selectively (fast retransmit, SACK holes, tail-loss probes).
    pub retransmitted_segments: AtomicU64,
    /// Tail-loss probes sent.
    pub tail_loss_probes: AtomicU64,
    /// Keepalive probes sent.
    pub keepalive_probes: AtomicU64,
    /// Challenge ACKs sent (RFC 5961).
    pub challenge_acks: AtomicU64,
    /// Segments dropped by PAWS.
    pub paws_dropped: AtomicU64,
    /// Fast retransmits.
    pub fast_retransmits: AtomicU64,
    /// Doorbells processed.
    pub doorbells: AtomicU64,
    /// Doorbells rejected (bad flow, slot or length).
    pub bad_doorbells: AtomicU64,
    /// Application queues found corrupt.
    pub corrupt_queues: AtomicU64,
    /// Events dropped because an application's event queue was full.
    pub app_queue_full: AtomicU64,
    /// Transmit frames unavailable when needed.
    pub tx_no_frame: AtomicU64,
    /// Transmit kick errors.
    pub tx_errors: AtomicU64,
    /// Polls that did work.
    pub busy_polls: AtomicU64,
    /// Polls that found nothing.
    pub idle_polls: AtomicU64,
    /// Times the core went to sleep.
    pub sleeps: AtomicU64,
    /// Live flows.
    pub flows: AtomicU64,
    /// Data segments received with CE (congestion experienced) on ECN flows.
    pub ecn_ce_received: AtomicU64,
    /// ACKs received with ECE (the peer saw CE) on ECN flows.
    pub ecn_echoes_received: AtomicU64,
    /// Congestion-control reports sent to the slow path.
    pub cc_reports: AtomicU64,
    /// Times a paced flow waited on the timer wheel for its next send time.
    pub pacing_waits: AtomicU64,
    /// Busy and idle cycles (crate::cycles).
    pub cycles: crate::cycles::CycleCounters,
}

/// SACK blocks an ACK of `f` carries (RFC 2018: at most three next to timestamps).
#[inline]
fn sack_block_count(f: &FlowState) -> usize {
    if !f.has(F_SACK) || f.ooo_count == 0 {
        return 0;
    }
    let max = if f.has(F_TS) { wire::SackBlocks::MAX_WITH_TIMESTAMPS } else { wire::SackBlocks::MAX };
    (f.ooo_count as usize).min(max)
}

/// Largest payload of a segment of `f` sent now. `f.mss` leaves room for the timestamp
/// option only; SACK blocks (4 + 8 per block) come out of the payload, as in Linux's
/// `tcp_current_mss`. Without this a full-sized segment carrying SACK blocks is larger
/// than the MTU, and a veth (or any NIC) drops it: a bidirectional transfer under loss
/// then loses nearly every data segment.
#[inline]
fn seg_max(f: &FlowState) -> u32 {
    let blocks = sack_block_count(f);
    let opt = if blocks == 0 { 0 } else { 4 + 8 * blocks as u32 };
    (f.mss as u32).saturating_sub(opt).max(1)
}

#[inline]
fn bump(c: &AtomicU64, n: u64) {
    // Single writer: a plain load+store is enough and avoids a locked instruction.
    c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
}

/// Wakes a thread that may be sleeping (the slow path, or this core).
pub trait Notify: Send + Sync {
    /// Wake it.
    fn notify(&self);
}

/// A sleeping core's doorbell: an eventfd plus the flag that says a write is needed.
#[derive(Debug)]
pub struct CoreDoorbell {
    /// The eventfd applications and the slow path write.
    pub fd: Arc<OwnedFd>,
    /// True while the core sleeps (or is about to).
    pub sleeping: AtomicBool,
}

impl CoreDoorbell {
    /// A new doorbell (non-blocking, close-on-exec eventfd).
    pub fn new() -> std::io::Result<Self> {
        Ok(CoreDoorbell {
            fd: Arc::new(eventfd()?),
            sleeping: AtomicBool::new(false),
        })
    }
    /// Ring it if the core sleeps.
    pub fn ring(&self) {
        if self.sleeping.load(Ordering::SeqCst) {
            eventfd_write(self.fd.as_raw_fd());
        }
    }
}

impl Notify for CoreDoorbell {
    fn notify(&self) {
        self.ring()
    }
}

/// Make an eventfd.
pub fn eventfd() -> std::io::Result<OwnedFd> {
    crate::sys::eventfd()
}

/// Add 1 to an eventfd (ignoring EAGAIN: the counter is already non-zero).
pub fn eventfd_write(fd: RawFd) {
    crate::sys::eventfd_write(fd)
}

struct AppSlot {
    attach: Box<AppAttach>,
    to_fp: ShmQueue,
    to_app: ShmQueue,
    /// Events pushed in this batch, not yet published.
    dirty: bool,
    /// The app corrupted a queue: ignore it until the slow path removes it.
    broken: bool,
}

/// What one poll did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PollResult {
    /// Frames received.
    pub rx: usize,
    /// Frames sent.
    pub tx: usize,
    /// Doorbells and commands handled.
    pub other: usize,
}

impl PollResult {
    /// True if anything happened.
    pub fn did_work(&self) -> bool {
        self.rx + self.tx + self.other > 0
    }
}

/// The engine of one fast-path core.
pub struct FastPath<IO: PacketIo> {
    cfg: FpConfig,
    io: IO,
    flows: FlowTable,
    /// Out-of-order intervals per flow slot (rare state, beside the hot FlowState).
    ooo: Vec<OooSet>,
    /// Data bytes retransmitted per flow slot (wrapping; for `TCP_INFO`'s
    /// `bytes_retrans`): written only when a flow retransmits, read on a `Peek`.
    retx_bytes: Vec<u32>,
    apps: Vec<Option<AppSlot>>,
    /// Slots of `apps` in use, so per-batch loops skip the empty ones.
    active_apps: Vec<u16>,
    cmds: CommandRx,
    to_slow: ToSlowTx,
    slow_notify: Option<Arc<dyn Notify>>,
    counters: Arc<CoreCounters>,
    rxc: RxCounters,
    qm: QueueManager,
    touched: Vec<u32>,
    /// Doorbells that named a flow this core does not hold (yet): retried once after the
    /// command queue is drained ([`FastPath::retry_doorbells`]).
    deferred: Vec<(u16, Doorbell)>,
    frames: Vec<RxFrame>,
    ident: u16,
    rto_cursor: u32,
    last_scan_us: u32,
    now: Instant,
    now_us: u32,
    /// Our TSval for this batch ([`rx::tsval`]).
    ts_now: u32,
    notified_slow: bool,
}

impl<IO: PacketIo> std::fmt::Debug for FastPath<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FastPath")
            .field("core", &self.cfg.core)
            .field("flows", &self.flows.len())
            .finish()
    }
}

/// Maximum application contexts per core.
pub const MAX_APPS: usize = 1024;
/// Doorbells taken from one application per poll (fairness between applications).
const DOORBELL_BUDGET: usize = 64;
/// Flow slots examined by one timer scan.
const RTO_SCAN_SLOTS: u32 = 256;
/// Minimum time between timer scans, µs: with 256 slots per 50 µs a core visits 5 M
/// slots per second, so even a full 64 k-slot table is swept every 13 ms, far inside
/// the 200 ms minimum RTO.
const RTO_SCAN_INTERVAL_US: u32 = 50;
/// Floor of the tail-loss probe timeout, µs (RFC 8985 suggests 10 ms for WLANs and
/// timers; we use it as the floor everywhere).
const TLP_MIN_US: u32 = 10_000;

impl<IO: PacketIo> FastPath<IO> {
    /// A core engine over `io`, receiving commands on `cmds` and reporting on `to_slow`.
    pub fn new(
        cfg: FpConfig,
        io: IO,
        cmds: CommandRx,
        to_slow: ToSlowTx,
        slow_notify: Option<Arc<dyn Notify>>,
    ) -> Self {
        let cap = cfg.flow_capacity;
        FastPath {
            flows: FlowTable::new(cap, rand::random()),
            ooo: vec![OooSet::default(); cap as usize],
            retx_bytes: vec![0; cap as usize],
            apps: (0..MAX_APPS).map(|_| None).collect(),
            active_apps: Vec::with_capacity(MAX_APPS),
            qm: QueueManager::new(cap),
            touched: Vec::with_capacity(cfg.rx_batch * 2 + DOORBELL_BUDGET * 4),
            deferred: Vec::with_capacity(DOORBELL_BUDGET),
            frames: vec![RxFrame::default(); cfg.rx_batch],
            cfg,
            io,
            cmds,
            to_slow,
            slow_notify,
            counters: Arc::new(CoreCounters::default()),
            rxc: RxCounters::default(),
            ident: 0,
            rto_cursor: 0,
            last_scan_us: 0,
            now: Instant::ZERO,
            now_us: 0,
            ts_now: 0,
            notified_slow: false,
        }
    }

    /// This core's counters (shared with readers).
    pub fn counters(&self) -> Arc<CoreCounters> {
        self.counters.clone()
    }
    /// The packet I/O (for tests and statistics).
    pub fn io(&self) -> &IO {
        &self.io
    }
    /// Mutable packet I/O (for scripted tests).
    pub fn io_mut(&mut self) -> &mut IO {
        &mut self.io
    }
    /// The flow table (read-only; for tests and the control API's snapshots).
    pub fn flows(&self) -> &FlowTable {
        &self.flows
    }
    /// File descriptors to poll while idle.
    pub fn poll_fds(&self) -> Vec<RawFd> {
        self.io.poll_fds()
    }

    /// Run one batch at time `now`.
    pub fn poll(&mut self, now: Instant) -> PollResult {
        let start = crate::cycles::now();
        self.now = now;
        self.now_us = (now.as_nanos() / 1_000) as u32;
        self.ts_now = rx::tsval(now);
        self.notified_slow = false;
        let mut res = PollResult {
            other: self.commands(),
            ..PollResult::default()
        };
        res.rx = self.receive();
        if res.rx > 0 {
            self.publish_rx_counters();
        }
        res.other += self.doorbells();
        if !self.deferred.is_empty() {
            res.other += self.commands();
            self.retry_doorbells();
        }
        res.tx = self.transmit();
        self.timers();
        self.finish_batch();
        let kick = crate::cycles::kick_start(res.did_work());
        if let Err(_e) = self.io.tx_flush() {
            bump(&self.counters.tx_errors, 1);
        }
        if self.notified_slow {
            if let Some(n) = &self.slow_notify {
                n.notify();
            }
        }
        if res.did_work() {
            bump(&self.counters.busy_polls, 1);
        } else {
            bump(&self.counters.idle_polls, 1);
        }
        self.counters.cycles.record(start, kick, res.did_work());
        res
    }

    fn publish_rx_counters(&self) {
        let (c, r) = (&self.counters, &self.rxc);
        for (a, v) in [
            (&c.ooo_kept, r.ooo_kept),
            (&c.ooo_dropped, r.ooo_dropped),
            (&c.window_dropped, r.window_dropped),
            (&c.rx_duplicates, r.duplicates),
            (&c.dupacks, r.dupacks),
            (&c.challenge_acks, r.challenge_acks),
            (&c.paws_dropped, r.paws_dropped),
        ] {
            a.store(v, Ordering::Relaxed);
        }
    }

    // ---- commands -------------------------------------------------------------------

    fn commands(&mut self) -> usize {
        let mut n = 0;
        while let Some(cmd) = self.cmds.try_pop() {
            n += 1;
            match cmd {
                Command::AddApp { slot, app } => self.add_app(slot, app),
                Command::RemoveApp { slot } => {
                    if let Some(s) = self.apps.get_mut(slot as usize) {
                        *s = None;
                    }
                    self.active_apps.retain(|&a| a != slot);
                }
                Command::InstallFlow { flow, state } => {
                    let state = *state;
                    if let Some(o) = self.ooo.get_mut(flow as usize) {
                        o.clear();
                    }
                    if let Some(r) = self.retx_bytes.get_mut(flow as usize) {
                        *r = 0;
                    }
                    if self.flows.insert(flow, state).is_ok() {
                        bump(&self.counters.flows, 1);
                        self.qm.reset(flow);
                        // Data the app queued before installation, or a FIN, goes out now.
                        self.schedule(flow);
                    } else {
                        tracing::error!(core = self.cfg.core, flow, "flow install refused");
                    }
                }
                Command::RemoveFlow { flow } => {
                    if let Ok(st) = self.flows.remove(flow) {
                        self.counters
                            .flows
                            .store(self.flows.len() as u64, Ordering::Relaxed);
                        self.report(ToSlow::FlowRemoved {
                            flow,
                            state: Box::new(st),
                        });
                    }
                }
                Command::SendFrame(frame) => {
                    self.send_raw(&frame);
                }
                Command::Reinject(frame) => {
                    self.process_frame(&frame);
                }
                Command::Retransmit { flow } => self.go_back(flow),
                Command::RetransmitRange { flow, seq, len } => {
                    self.retransmit_range(flow, seq, len);
                }
                Command::Peek { flow, tag } => {
                    let state = self.flows.get(flow).filter(|f| f.has(F_ACTIVE)).map(|f| Box::new(*f));
                    let retx_bytes = self.retx_bytes.get(flow as usize).copied().unwrap_or(0);
                    let now_us = self.now_us;
                    self.report(ToSlow::Peeked { flow, tag, now_us, retx_bytes, state });
                }
                Command::Snapshot(reply) => {
                    let flows = self.flows.iter().map(|(i, f)| (i, *f)).collect();
                    let _ = reply.try_send((self.cfg.core, flows));
                }
                Command::Capture(spec) => {
                    self.io.set_capture(spec.map(|s| *s));
                }
                Command::ShutdownTx { flow } => self.shutdown_tx(flow),
                Command::Orphan { flow } => {
                    self.doorbells();
                    if let Some(f) = self.flows.get(flow) {
                        let closing = f.has(F_ACTIVE) && f.has(F_TX_FIN_PENDING);
                        self.report(ToSlow::Orphaned { flow, closing });
                    }
                }
                Command::MoveFlow { flow, app, conn, rx_space } => {
                    // Doorbells the old owner posted before the move apply to the old
                    // slot; later ones fail the app/slot check (counted as bad).
                    self.doorbells();
                    let m = self.move_flow(flow, app, conn, rx_space);
                    let (moved, rx_bytes, tx_bytes, rx_fin, tx_fin) = m.unwrap_or_default();
                    self.report(ToSlow::FlowMoved { flow, moved, rx_bytes, tx_bytes, rx_fin, tx_fin });
                }
                Command::SetCc {
                    flow,
                    cwnd,
                    rate_kbps,
                } => self.set_cc(flow, cwnd, rate_kbps),
            }
        }
        n
    }

    /// [`Command::MoveFlow`]: copy the rings rotated to position 0 and re-point the flow.
    /// Allocates a scratch buffer (a rare control operation, not the steady state).
    fn move_flow(&mut self, flow: u32, app: u16, conn: u32, rx_space: u32) -> Option<(bool, u32, u32, bool, bool)> {
        let f = *self.flows.get(flow)?;
        if !f.has(F_ACTIVE) {
            return None;
        }
        let old = self.apps.get(f.app as usize)?.as_ref()?;
        let new = self.apps.get(app as usize)?.as_ref()?;
        let (ol, nl) = (old.attach.layout, new.attach.layout);
        if conn >= nl.conn_slots || ol.rx_buf_size != nl.rx_buf_size || ol.tx_buf_size != nl.tx_buf_size {
            return None;
        }
        let (rx_size, tx_size) = (f.rx_size(), f.tx_size());
        // Everything in the receive ring from the first unread byte to the end of the
        // free window (out-of-order data lives there): the whole ring, rotated.
        let rx_bytes = rx_space.min(rx_size).saturating_sub(f.rx_avail);
        let rx_start = f.rx_head.wrapping_sub(rx_bytes);
        let tx_bytes = f.tx_sent + f.tx_avail;
        // Only the bytes in use are copied (the untouched rest of a new ring stays sparse),
        // unless out-of-order data is kept: it lies anywhere in the window after them.
        let rx_len = if f.ooo_count > 0 { rx_size } else { rx_bytes } as usize;
        let tx_len = tx_bytes.min(tx_size) as usize;
        let mut buf = vec![0u8; rx_len.max(tx_len)];
        let ok = old.attach.mem.read_ring(f.rx_base as u64, rx_size, rx_start, &mut buf[..rx_len])
            && new.attach.mem.write_ring(nl.rx_offset(conn) as u64, rx_size, 0, &buf[..rx_len])
            && old.attach.mem.read_ring(f.tx_base as u64, tx_size, f.tx_head, &mut buf[..tx_len])
            && new.attach.mem.write_ring(nl.tx_offset(conn) as u64, tx_size, 0, &buf[..tx_len]);
        if !ok {
            return None;
        }
        let rx_fin = f.has(F_RX_FIN);
        let tx_fin = f.has(F_TX_FIN_PENDING);
        let fm = self.flows.get_mut(flow)?;
        fm.app = app;
        fm.conn = conn;
        fm.rx_base = nl.rx_offset(conn) as u32;
        fm.tx_base = nl.tx_offset(conn) as u32;
        fm.rx_head = rx_bytes & (rx_size - 1);
        fm.tx_head = 0;
        // What was not announced to the old owner is in the counts the new one gets.
        fm.rx_pending = 0;
        fm.tx_freed_pending = 0;
        if rx_fin {
            fm.flags |= F_FIN_REPORTED;
        }
        Some((true, rx_bytes, tx_bytes, rx_fin, tx_fin))
    }

    fn add_app(&mut self, slot: u16, app: Box<AppAttach>) {
        let l = app.layout;
        let c = self.cfg.core as u32;
        let (Some(to_fp), Some(mut to_app)) = (
            app.mem.queue(l.to_fp_offset(c), l.queue_entries),
            app.mem.queue(l.to_app_offset(c), l.queue_entries),
        ) else {
            tracing::error!(
                core = self.cfg.core,
                app = app.app_id,
                "app region too small for its queues"
            );
            return;
        };
        // The service initialised the queues; pick up where they are.
        to_app.resume_as_producer();
        if let Some(s) = self.apps.get_mut(slot as usize) {
            *s = Some(AppSlot {
                attach: app,
                to_fp,
                to_app,
                dirty: false,
                broken: false,
            });
            if !self.active_apps.contains(&slot) {
                self.active_apps.push(slot);
            }
        }
    }

    fn send_raw(&mut self, frame: &[u8]) -> bool {
        let Some(t) = self.io.tx_alloc() else {
            bump(&self.counters.tx_no_frame, 1);
            return false;
        };
        let buf = self.io.tx_data(&t);
        if frame.len() > buf.len() {
            self.io.tx_abort(t);
            return false;
        }
        buf[..frame.len()].copy_from_slice(frame);
        self.io.tx_submit(t, frame.len());
        bump(&self.counters.tx_frames, 1);
        true
    }

    fn report(&mut self, m: ToSlow) {
        if self.to_slow.try_push(m).is_err() {
            bump(&self.counters.exceptions_dropped, 1);
        }
        self.notified_slow = true;
    }

    // ---- receive --------------------------------------------------------------------

    fn receive(&mut self) -> usize {
        let mut frames = std::mem::take(&mut self.frames);
        let n = self.io.rx_burst(&mut frames);
        if n > 0 {
            bump(&self.counters.rx_frames, n as u64);
            // Prefetch the index buckets of the whole batch before touching any flow.
            for f in &frames[..n] {
                if let Some(key) = peek_key(self.io.rx_data(f)) {
                    self.flows.prefetch(key);
                }
            }
            for f in &frames[..n] {
                let (action, exc) = {
                    let FastPath {
                        io,
                        cfg,
                        flows,
                        ooo,
                        apps,
                        counters,
                        rxc,
                        qm,
                        touched,
                        now_us,
                        ts_now,
                        to_slow,
                        ..
                    } = self;
                    let mut parts = Parts {
                        cfg,
                        flows,
                        ooo,
                        apps,
                        counters,
                        rxc,
                        qm,
                        touched,
                        now_us: *now_us,
                        ts_now: *ts_now,
                    };
                    let data = io.rx_data(f);
                    let action = parts.on_frame(data);
                    let exc = match action {
                        FrameAction::Exception => exc_copy(counters, to_slow, data),
                        _ => None,
                    };
                    (action, exc)
                };
                self.act(action, exc);
            }
            self.io.rx_release(&frames[..n]);
        }
        self.frames = frames;
        n
    }

    fn parts(&mut self) -> Parts<'_> {
        Parts {
            cfg: &self.cfg,
            flows: &mut self.flows,
            ooo: &mut self.ooo,
            apps: &mut self.apps,
            counters: &self.counters,
            rxc: &mut self.rxc,
            qm: &mut self.qm,
            touched: &mut self.touched,
            now_us: self.now_us,
            ts_now: self.ts_now,
        }
    }

    fn act(&mut self, action: FrameAction, exc: Option<Box<ExcFrame>>) {
        match action {
            FrameAction::Done => {}
            FrameAction::Exception => {
                if let Some(f) = exc {
                    self.report(ToSlow::Frame(f));
                }
            }
            FrameAction::Flow { idx, v, sack } => {
                if v & V_CC != 0 {
                    let f = self.flows.get(idx).expect("live flow");
                    let sample = CcSample::of(f, self.now_us);
                    bump(&self.counters.cc_reports, 1);
                    self.report(ToSlow::Cc { flow: idx, sample });
                }
                if v & rx::V_FAST_RETX != 0 {
                    bump(&self.counters.fast_retransmits, 1);
                    let f = *self.flows.get(idx).expect("live flow");
                    self.retransmit_range(idx, f.snd_una, f.mss as u32);
                }
                if v & rx::V_SACK != 0 {
                    let blocks = sack.unwrap_or_default();
                    let f = self.flows.get(idx).expect("live flow");
                    let (snd_una, snd_nxt, srtt_us) = (f.snd_una, f.snd_nxt(), f.srtt_us);
                    self.report(ToSlow::Sack {
                        flow: idx,
                        snd_una,
                        snd_nxt,
                        srtt_us,
                        blocks,
                    });
                }
                // Our FIN's acknowledgment is processed before the segment's own FIN, and
                // reported in that order.
                if v & rx::V_FIN_ACKED != 0 {
                    self.report(ToSlow::Note {
                        flow: idx,
                        note: FlowNote::FinAcked,
                    });
                }
                if v & rx::V_PEER_FIN != 0 {
                    let after_ours = self.flows.get(idx).is_some_and(|f| f.has(F_TX_FIN_SENT));
                    self.report(ToSlow::Note {
                        flow: idx,
                        note: FlowNote::PeerFin { after_ours },
                    });
                }
            }
        }
    }

    /// Process a frame that is not in the I/O buffers (reinjected by the slow path).
    fn process_frame(&mut self, data: &[u8]) {
        let action = self.parts().on_frame(data);
        let exc = match action {
            FrameAction::Exception => exc_copy(&self.counters, &self.to_slow, data),
            _ => None,
        };
        self.act(action, exc);
    }

    // ---- doorbells ------------------------------------------------------------------

    fn doorbells(&mut self) -> usize {
        let mut n = 0;
        for i in 0..self.active_apps.len() {
            let slot = self.active_apps[i] as usize;
            let Some(app) = self.apps[slot].as_mut() else {
                continue;
            };
            if app.broken {
                continue;
            }
            let mut taken = 0;
            while taken < DOORBELL_BUDGET {
                let d = match app.to_fp.pop() {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    Err(_) => {
                        app.broken = true;
                        bump(&self.counters.corrupt_queues, 1);
                        tracing::warn!(
                            core = self.cfg.core,
                            app = app.attach.app_id,
                            "doorbell queue corrupt; ignoring app"
                        );
                        break;
                    }
                };
                taken += 1;
                match Doorbell::decode(&d) {
                    Ok(db) => match apply_doorbell(&mut self.flows, slot as u16, db, &mut self.qm, &mut self.touched) {
                        Applied::Yes => {}
                        Applied::NoFlow => self.deferred.push((slot as u16, db)),
                        Applied::Refused => bump(&self.counters.bad_doorbells, 1),
                    },
                    Err(_) => bump(&self.counters.bad_doorbells, 1),
                }
            }
            if taken > 0 {
                app.to_fp.release();
                n += taken;
            }
        }
        bump(&self.counters.doorbells, n as u64);
        n
    }

    /// Apply again the doorbells [`FastPath::doorbells`] deferred because their flow was
    /// not (or no longer) this application's here. The slow path sends `InstallFlow` before
    /// it tells the application of a new connection, so a doorbell can only name a flow
    /// the core lacks if the install was still in the command queue when the doorbells
    /// were taken (the core drains commands first, but the install may land between the
    /// two, while the core receives): the caller has drained the commands since, so a
    /// doorbell that fails now is bad (a stale flow after a move or close, or a lying
    /// application) and is counted.
    fn retry_doorbells(&mut self) {
        let mut deferred = std::mem::take(&mut self.deferred);
        for (slot, db) in deferred.drain(..) {
            if apply_doorbell(&mut self.flows, slot, db, &mut self.qm, &mut self.touched) != Applied::Yes {
                bump(&self.counters.bad_doorbells, 1);
            }
        }
        // Keep the allocation (and whatever a nested `doorbells` deferred meanwhile).
        deferred.append(&mut self.deferred);
        self.deferred = deferred;
    }

    // ---- transmit -------------------------------------------------------------------

    fn schedule(&mut self, flow: u32) {
        if let Some(f) = self.flows.get_mut(flow) {
            if !f.has(F_IN_TXQ) {
                f.flags |= F_IN_TXQ;
                self.qm.make_ready(flow);
            }
        }
    }

    /// Congestion control's new limits for `flow` (`Command::SetCc`).
    fn set_cc(&mut self, flow: u32, cwnd: u32, rate_kbps: u32) {
        let Some(f) = self.flows.get_mut(flow) else {
            return;
        };
        if !f.has(F_ACTIVE) {
            return;
        }
        f.cwnd = cwnd;
        f.flags2 |= F2_CC;
        self.qm.set_rate(flow, rate_kbps, self.now.as_nanos());
        // It may send more now (a scheduled flow with nothing to send costs one turn).
        self.schedule(flow);
    }

    fn go_back(&mut self, flow: u32) {
        let Some(f) = self.flows.get_mut(flow) else {
            return;
        };
        if !f.has(F_ACTIVE) {
            return;
        }
        // Go-back-N: everything unacknowledged is unsent again. `recover` keeps the highest
        // sequence sent so far: ACKs up to it stay acceptable (rx.rs) while the resend,
        // limited by the congestion window, has not got that far yet.
        let sent_max = f.snd_nxt();
        let recover = if rx::seq_lt(f.recover, sent_max) || !rx::seq_lt(f.snd_una, f.recover) {
            sent_max
        } else {
            f.recover
        };
        f.tx_avail += f.tx_sent;
        f.tx_sent = 0;
        if f.snd_wnd == 0 {
            // What timed out was a zero-window probe: the resend is the next probe.
            f.flags |= F_PROBE;
        }
        if f.has(F_TX_FIN_SENT) && !f.has(F_TX_FIN_ACKED) {
            f.flags &= !F_TX_FIN_SENT;
        }
        f.dupacks = 0;
        f.flags &= !(F_RECOVERY | F_TLP | F_SCOREBOARD);
        f.recover = recover;
        f.cnt_retx = f.cnt_retx.wrapping_add(1);
        self.schedule(flow);
    }

    /// Resend `[seq, seq+len)` of flow `idx` (clamped to what is unacknowledged) in
    /// MSS-sized segments; `tx_sent`/`tx_avail` do not change. Returns segments sent.
    fn retransmit_range(&mut self, idx: u32, seq: u32, len: u32) -> usize {
        let Some(f) = self.flows.get(idx) else {
            return 0;
        };
        if !f.has(F_ACTIVE) {
            return 0;
        }
        let f = *f;
        let start_off = seq.wrapping_sub(f.snd_una);
        if start_off >= f.tx_sent {
            // Nothing of it is outstanding data; resend a FIN still in flight.
            if f.has(F_TX_FIN_SENT) && !f.has(F_TX_FIN_ACKED) && start_off == f.tx_sent {
                let pos = f.tx_head.wrapping_add(f.tx_sent);
                return self.emit(
                    idx,
                    TcpFlags::ACK | TcpFlags::FIN,
                    f.snd_una.wrapping_add(f.tx_sent),
                    pos,
                    0,
                    false,
                ) as usize;
            }
            return 0;
        }
        let end_off = start_off.saturating_add(len).min(f.tx_sent);
        let first = start_off;
        let mut off = start_off;
        let mut n = 0;
        let seg = seg_max(&f);
        while off < end_off {
            let l = (end_off - off).min(seg);
            let pos = f.tx_head.wrapping_add(off);
            if !self.emit(
                idx,
                TcpFlags::ACK,
                f.snd_una.wrapping_add(off),
                pos,
                l as usize,
                false,
            ) {
                break;
            }
            off += l;
            n += 1;
        }
        if n > 0 {
            bump(&self.counters.retransmitted_segments, n as u64);
            let fm = self.flows.get_mut(idx).expect("live");
            fm.cnt_retx = fm.cnt_retx.wrapping_add(1);
            if let Some(r) = self.retx_bytes.get_mut(idx as usize) {
                *r = r.wrapping_add(off - first);
            }
        }
        n
    }

    fn transmit(&mut self) -> usize {
        let now_ns = self.now.as_nanos();
        self.qm.expire(now_ns);
        let mut sent = 0;
        let rounds = self.qm.ready.len();
        for _ in 0..rounds {
            let Some(idx) = self.qm.pop() else { break };
            let turn = self.send_flow(idx, now_ns);
            let n = match turn {
                Turn::Done(n) | Turn::More(n) | Turn::Paced(n, _) | Turn::NoFrames(n) => n,
            };
            sent += n;
            let Some(f) = self.flows.get_mut(idx) else {
                continue;
            };
            match turn {
                Turn::Done(_) => f.flags &= !F_IN_TXQ,
                Turn::More(_) => self.qm.requeue(idx),
                Turn::Paced(_, at) => {
                    bump(&self.counters.pacing_waits, 1);
                    self.qm.park(idx, at);
                }
                Turn::NoFrames(_) => {
                    self.qm.requeue(idx);
                    break;
                }
            }
        }
        sent
    }

    /// Send what flow `idx` may send now: up to `tx_burst` segments within the peer's
    /// window, the congestion window and the pacing rate.
    fn send_flow(&mut self, idx: u32, now_ns: u64) -> Turn {
        let mut n = 0;
        // Where this turn starts sending: bytes below `recover` sent again after a
        // go-back are retransmissions (counted once per turn, not per segment).
        let start = self.flows.get(idx).map(|f| (f.snd_una.wrapping_add(f.tx_sent), f.recover, f.snd_una));
        let mut pace = match self.qm.pace.get(idx as usize) {
            Some(p) => *p,
            None => return Turn::Done(0),
        };
        if pace.rate_kbps != 0 {
            // No credit saved up beyond MAX_LAG_NS while idle or window-blocked.
            pace.next_ns = pace.next_ns.max(now_ns.saturating_sub(MAX_LAG_NS));
        }
        let turn = loop {
            let Some(f) = self.flows.get(idx) else {
                break Turn::Done(n);
            };
            if !f.has(F_ACTIVE) {
                break Turn::Done(n);
            }
            let f = *f;
            let cwnd = if f.cwnd == 0 { u32::MAX } else { f.cwnd };
            let room = f.snd_wnd.min(cwnd).saturating_sub(f.tx_sent);
            let len = f.tx_avail.min(seg_max(&f)).min(room);
            if len == 0 && f.tx_avail > 0 && f.has(F_PROBE) {
                // Zero-window probe (persist timer), sent whatever the congestion window
                // says. Like Linux (`tcp_xmit_probe_skb`) it carries no new data and
                // SEG.SEQ = SND.UNA - 1: an unacceptable segment the peer must answer with
                // an ACK showing its window. A probe byte of new data (RFC 9293 3.8.6.1
                // allows one) would move SND.NXT beyond the closed window, and Linux 6.x
                // drops a segment ending beyond its window while it holds unread data,
                // ACK field and all (`tcp_sequence`): every later ACK of ours would then be
                // dropped too, so a peer waiting for our ACKs to free its own send buffer
                // (echo traffic) never reopens: a deadlock seen over veth.
                if !self.emit(idx, TcpFlags::ACK, f.snd_una.wrapping_sub(1), f.tx_head, 0, false) {
                    break Turn::NoFrames(n);
                }
                self.flows.get_mut(idx).expect("checked").flags &= !(F_ACK_PENDING | F_PROBE);
                break Turn::Done(n + 1);
            }
            let fin_now = f.has(F_TX_FIN_PENDING) && !f.has(F_TX_FIN_SENT) && len == f.tx_avail;
            if len == 0 && !fin_now {
                break Turn::Done(n);
            }
            if pace.rate_kbps != 0 && pace.next_ns > now_ns {
                break Turn::Paced(n, pace.next_ns);
            }
            if n as u32 >= self.cfg.tx_burst {
                break Turn::More(n);
            }
            let mut flags = TcpFlags::ACK;
            if len > 0 && len == f.tx_avail {
                flags |= TcpFlags::PSH;
            }
            if fin_now {
                flags |= TcpFlags::FIN;
            }
            // RFC 3168 6.1.2: CWR on the first new data segment after reacting to ECE.
            let cwr = len > 0 && f.has2(F2_CWR_PENDING);
            if cwr {
                flags |= TcpFlags::CWR;
            }
            let seq = f.snd_una.wrapping_add(f.tx_sent);
            let pos = f.tx_head.wrapping_add(f.tx_sent);
            let ect = len > 0 && f.has2(F2_ECN);
            if !self.emit(idx, flags, seq, pos, len as usize, ect) {
                break Turn::NoFrames(n);
            }
            let fm = self.flows.get_mut(idx).expect("checked");
            if fm.tx_sent == 0 && !fm.has(F_TX_FIN_SENT) {
                fm.progress_us = self.now_us; // start the retransmission timer
            }
            fm.tx_sent += len;
            fm.tx_avail -= len;
            fm.flags &= !(F_ACK_PENDING | F_PROBE);
            if cwr {
                fm.flags2 &= !F2_CWR_PENDING;
            }
            if fin_now {
                fm.flags |= F_TX_FIN_SENT;
            }
            pace.next_ns += pace.cost_ns(len);
            bump(&self.counters.tx_segments, 1);
            bump(&self.counters.tx_payload_bytes, len as u64);
            n += 1;
            if fin_now {
                break Turn::Done(n);
            }
        };
        if let Some(p) = self.qm.pace.get_mut(idx as usize) {
            p.next_ns = pace.next_ns;
        }
        if let Some((from, recover, una)) = start {
            if n > 0 && rx::seq_lt(from, recover) && rx::seq_lt(una, recover) {
                self.count_resent(idx, from, recover);
            }
        }
        turn
    }

    /// After a go-back, the part of this turn's segments below `recover` was sent
    /// before: count it as retransmitted (`TCP_INFO`'s `bytes_retrans`).
    #[cold]
    fn count_resent(&mut self, idx: u32, from: u32, recover: u32) {
        let Some(f) = self.flows.get(idx) else { return };
        let to = f.snd_una.wrapping_add(f.tx_sent);
        let end = if rx::seq_lt(to, recover) { to } else { recover };
        let n = end.wrapping_sub(from);
        if rx::seq_lt(from, end) {
            if let Some(r) = self.retx_bytes.get_mut(idx as usize) {
                *r = r.wrapping_add(n);
            }
        }
    }

    /// Build and queue one segment of flow `idx`.
    fn emit(
        &mut self,
        idx: u32,
        mut flags: TcpFlags,
        seq: u32,
        ring_pos: u32,
        len: usize,
        ect: bool,
    ) -> bool {
        let Some(t) = self.io.tx_alloc() else {
            bump(&self.counters.tx_no_frame, 1);
            return false;
        };
        let f = *self.flows.get(idx).expect("live flow");
        if f.has2(F2_ECE_PENDING) {
            flags |= TcpFlags::ECE;
        }
        let mem = self
            .apps
            .get(f.app as usize)
            .and_then(|a| a.as_ref())
            .map(|a| &a.attach.mem);
        self.ident = self.ident.wrapping_add(1);
        // As many SACK blocks as fit beside `len` payload bytes within the MSS (callers
        // size payloads with `seg_max`, so all fit unless the out-of-order set grew since).
        let room = (f.mss as usize).saturating_sub(len);
        let max = sack_block_count(&f).min(room.saturating_sub(4) / 8);
        let sack = if max > 0 { Some(self.ooo[idx as usize].sack_blocks(max)) } else { None };
        let buf = self.io.tx_data(&t);
        match tx::build_segment(
            &f,
            self.cfg.local_mac,
            self.cfg.local_ip,
            self.ident,
            self.ts_now,
            flags,
            seq,
            ring_pos,
            len,
            mem,
            sack.as_ref(),
            if ect { tx::ECT0 } else { 0 },
            buf,
        ) {
            Some(total) => {
                self.io.tx_submit(t, total);
                bump(&self.counters.tx_frames, 1);
                if f.has2(F2_ECE_PENDING) {
                    self.flows.get_mut(idx).expect("live flow").flags2 &= !F2_ECE_PENDING;
                }
                true
            }
            None => {
                self.io.tx_abort(t);
                false
            }
        }
    }

    // ---- timers ---------------------------------------------------------------------

    fn timers(&mut self) {
        let cap = self.flows.capacity();
        if cap == 0
            || self.flows.is_empty()
            || self.now_us.wrapping_sub(self.last_scan_us) < RTO_SCAN_INTERVAL_US
        {
            return;
        }
        self.last_scan_us = self.now_us;
        for _ in 0..RTO_SCAN_SLOTS.min(cap) {
            let idx = self.rto_cursor;
            self.rto_cursor = (self.rto_cursor + 1) % cap;
            let Some(f) = self.flows.get(idx) else {
                continue;
            };
            if !f.has(F_ACTIVE) {
                continue;
            }
            let outstanding = f.tx_sent > 0 || (f.has(F_TX_FIN_SENT) && !f.has(F_TX_FIN_ACKED));
            let zero_window = f.tx_sent == 0 && f.tx_avail > 0 && f.snd_wnd == 0;
            let idle_keepalive = f.has(F_KEEPALIVE) && !outstanding && f.tx_avail == 0;
            if !outstanding && !zero_window && !idle_keepalive {
                continue;
            }
            if idle_keepalive {
                // Probes are timed from the last segment heard (wrapping µs; idle times
                // beyond 71 minutes are measured modulo that, so long idle times need an
                // interval shorter than it, which Linux's 75 s is).
                let ka = self.cfg.keepalive;
                let idle = self.now_us.wrapping_sub(f.heard_us) as u64;
                let due =
                    ka.idle_us.min(u32::MAX as u64 / 2) + f.rto_backoff as u64 * ka.interval_us;
                if idle < due {
                    continue;
                }
                if f.rto_backoff >= ka.probes {
                    self.report(ToSlow::Note {
                        flow: idx,
                        note: FlowNote::GaveUp,
                    });
                    continue;
                }
                let (una, head) = (f.snd_una, f.tx_head);
                self.flows.get_mut(idx).expect("checked").rto_backoff += 1;
                bump(&self.counters.keepalive_probes, 1);
                // RFC 9293 3.8.4: a probe carries SEG.SEQ = SND.NXT-1 so the peer answers
                // with an ACK.
                self.emit(idx, TcpFlags::ACK, una.wrapping_sub(1), head, 0, false);
                continue;
            }
            let rto = rx::rto_us(
                f,
                self.cfg.min_rto_us,
                self.cfg.max_rto_us,
                self.cfg.initial_rto_us,
            );
            let rto = (rto as u64) << f.rto_backoff.min(16);
            let rto = rto.min(self.cfg.max_rto_us as u64) as u32;
            let elapsed = self.now_us.wrapping_sub(f.progress_us);
            if elapsed < rto {
                // RFC 8985 7 tail-loss probe: after PTO = 2 SRTT (at least 10 ms) without
                // progress, resend the last segment once so a lost tail causes SACKs or
                // duplicate ACKs instead of waiting for the RTO.
                let pto = (f.srtt_us.saturating_mul(2)).max(TLP_MIN_US);
                if outstanding
                    && !f.has(F_TLP)
                    && f.srtt_us > 0
                    && elapsed >= pto
                    && f.rto_backoff == 0
                {
                    let (una, sent, mss) = (f.snd_una, f.tx_sent, f.mss as u32);
                    self.flows.get_mut(idx).expect("checked").flags |= F_TLP;
                    bump(&self.counters.tail_loss_probes, 1);
                    let back = sent.min(mss);
                    self.retransmit_range(idx, una.wrapping_add(sent - back), back.max(1));
                }
                continue;
            }
            // A peer that answered the last zero-window probe is alive: probing goes on
            // (at the backed-off interval) for as long as its window stays closed.
            let answered = zero_window && f.heard_us.wrapping_sub(f.progress_us) as i32 >= 0;
            let gave_up = f.rto_backoff >= self.cfg.max_retries && !answered;
            let fm = self.flows.get_mut(idx).expect("checked");
            fm.rto_backoff = fm.rto_backoff.saturating_add(1);
            fm.progress_us = self.now_us;
            if gave_up {
                self.report(ToSlow::Note {
                    flow: idx,
                    note: FlowNote::GaveUp,
                });
                continue;
            }
            if zero_window {
                fm.flags |= F_PROBE;
                self.schedule(idx);
            } else {
                bump(&self.counters.rto_fired, 1);
                let snd_una = fm.snd_una;
                self.go_back(idx);
                let recover = self.flows.get(idx).map_or(snd_una, |f| f.recover);
                self.report(ToSlow::Note {
                    flow: idx,
                    note: FlowNote::Rto { snd_una, recover },
                });
            }
        }
    }

    // ---- end of batch: ACKs and application events ----------------------------------

    fn finish_batch(&mut self) {
        let touched = std::mem::take(&mut self.touched);
        for &idx in &touched {
            let Some(f) = self.flows.get_mut(idx) else {
                continue;
            };
            f.flags &= !F_TOUCHED;
            if !f.has(F_ACTIVE) {
                continue;
            }
            let f = *f;
            if f.has(F_ACK_PENDING) {
                let pos = f.tx_head;
                if self.emit(idx, TcpFlags::ACK, f.snd_nxt(), pos, 0, false) {
                    bump(&self.counters.tx_acks, 1);
                    self.flows.get_mut(idx).expect("live").flags &= !F_ACK_PENDING;
                }
            }
            if f.rx_pending > 0
                || f.tx_freed_pending > 0
                || (f.has(F_RX_FIN) && !f.has(F_FIN_REPORTED))
            {
                self.post_events(idx);
            }
        }
        // Flows whose events did not fit their app's queue were put back on the (fresh)
        // touched list by post_events: keep them for the next batch.
        let mut list = touched;
        list.clear();
        let retry = std::mem::replace(&mut self.touched, list);
        self.touched.extend_from_slice(&retry);
        // Publish each application's events once per batch, waking sleepers.
        for &slot in &self.active_apps {
            let Some(app) = self.apps[slot as usize].as_mut() else {
                continue;
            };
            if app.dirty {
                app.dirty = false;
                if app.to_app.publish() {
                    if let Some(w) = &app.attach.wake {
                        eventfd_write(w.as_raw_fd());
                    }
                }
            }
        }
    }

    fn post_events(&mut self, idx: u32) {
        let f = self.flows.get_mut(idx).expect("live");
        let Some(app) = self.apps.get_mut(f.app as usize).and_then(|a| a.as_mut()) else {
            return;
        };
        let fin_new = f.has(F_RX_FIN) && !f.has(F_FIN_REPORTED);
        if f.rx_pending > 0 || fin_new {
            let ev = FpEvent::RxData {
                conn: f.conn,
                bytes: f.rx_pending,
                fin: fin_new,
            };
            if app.to_app.push(ev.encode()) {
                bump(&self.counters.rx_payload_bytes, f.rx_pending as u64);
                f.rx_pending = 0;
                if fin_new {
                    f.flags |= F_FIN_REPORTED;
                }
                app.dirty = true;
            } else {
                bump(&self.counters.app_queue_full, 1);
                // Retry next batch: keep the flow on the touched list.
                touch(f, idx, &mut self.touched);
            }
        }
        if f.tx_freed_pending > 0 {
            let ev = FpEvent::TxFreed {
                conn: f.conn,
                bytes: f.tx_freed_pending,
            };
            if app.to_app.push(ev.encode()) {
                f.tx_freed_pending = 0;
                app.dirty = true;
            } else {
                bump(&self.counters.app_queue_full, 1);
                touch(f, idx, &mut self.touched);
            }
        }
    }

    /// Prepare to block: announce sleeping on every application doorbell queue and
    /// report whether it is safe to sleep (nothing pending anywhere).
    pub fn prepare_sleep(&mut self) -> bool {
        // Paced flows waiting on the wheel keep the core polling (their next send times
        // are microseconds away; poll(2) sleeps in milliseconds).
        if !self.qm.is_idle() || !self.cmds.is_empty() {
            return false;
        }
        let mut ok = true;
        for &slot in &self.active_apps {
            let Some(app) = self.apps[slot as usize].as_mut() else {
                continue;
            };
            if !app.broken && !app.to_fp.prepare_sleep() {
                ok = false;
            }
        }
        if !ok {
            self.woke();
        }
        ok
    }

    /// Clear the sleeping announcements after waking.
    pub fn woke(&mut self) {
        for &slot in &self.active_apps {
            let Some(app) = self.apps[slot as usize].as_mut() else {
                continue;
            };
            app.to_fp.woke();
        }
    }

    /// The earliest time a paced flow waiting on the timer wheel may send (simulators
    /// advance their clock to it).
    pub fn next_pacing_deadline(&self) -> Option<Instant> {
        if !self.qm.ready.is_empty() {
            return Some(self.now);
        }
        self.qm.wheel.next_expiry_ns().map(Instant::from_nanos)
    }

    /// True if commands are waiting.
    pub fn has_commands(&self) -> bool {
        !self.cmds.is_empty()
    }
}

/// Copy a frame for the slow path (None, counted, if its queue is full).
fn exc_copy(counters: &CoreCounters, to_slow: &ToSlowTx, data: &[u8]) -> Option<Box<ExcFrame>> {
    bump(&counters.exceptions, 1);
    if to_slow.is_full() || data.len() > MAX_FRAME {
        bump(&counters.exceptions_dropped, 1);
        return None;
    }
    let mut f = Box::new(ExcFrame {
        buf: [0; MAX_FRAME],
        len: data.len() as u16,
    });
    f.buf[..data.len()].copy_from_slice(data);
    Some(f)
}

/// Verdict bit local to the core: the flow's control interval ended; report its
/// counters to the slow path.
const V_CC: rx::RxVerdict = 1 << 31;

/// What one transmit turn of a flow ended with (the count is segments sent).
enum Turn {
    /// Nothing more to send now (no data, window or congestion window).
    Done(usize),
    /// More to send: the burst limit ended the turn.
    More(usize),
    /// More to send at the pacing time given (ns).
    Paced(usize, u64),
    /// Out of transmit frames.
    NoFrames(usize),
}

enum FrameAction {
    Done,
    Exception,
    Flow {
        idx: u32,
        v: rx::RxVerdict,
        sack: Option<wire::SackBlocks>,
    },
}

/// The fields a received frame may touch, borrowed apart from the I/O buffers.
struct Parts<'a> {
    cfg: &'a FpConfig,
    flows: &'a mut FlowTable,
    ooo: &'a mut Vec<OooSet>,
    apps: &'a mut Vec<Option<AppSlot>>,
    counters: &'a CoreCounters,
    rxc: &'a mut RxCounters,
    qm: &'a mut QueueManager,
    touched: &'a mut Vec<u32>,
    now_us: u32,
    ts_now: u32,
}

impl Parts<'_> {
    fn on_frame(&mut self, data: &[u8]) -> FrameAction {
        let Ok(eth) = EthernetFrame::new_checked(data) else {
            bump(&self.counters.drop_malformed, 1);
            return FrameAction::Done;
        };
        if eth.ethertype() != EtherType::Ipv4 {
            return FrameAction::Exception; // ARP and others: the slow path decides
        }
        let ip = match Ipv4Packet::new_checked(eth.payload()) {
            Ok(ip) => ip,
            Err(_) => {
                bump(&self.counters.drop_malformed, 1);
                return FrameAction::Done;
            }
        };
        if self.cfg.verify_checksums && !ip.verify_checksum() {
            bump(&self.counters.drop_checksum, 1);
            return FrameAction::Done;
        }
        if ip.dst_addr() != self.cfg.local_ip {
            bump(&self.counters.drop_not_ours, 1);
            return FrameAction::Done;
        }
        if ip.more_frags() || ip.frag_offset() != 0 {
            bump(&self.counters.drop_unsupported, 1);
            return FrameAction::Done;
        }
        if ip.protocol() != wire::ipv4::PROTO_TCP {
            bump(&self.counters.drop_not_tcp, 1);
            return FrameAction::Done;
        }
        let src = ip.src_addr();
        let Ok(tcp) = TcpSegment::new_checked(ip.payload()) else {
            bump(&self.counters.drop_malformed, 1);
            return FrameAction::Done;
        };
        if self.cfg.verify_checksums && !tcp.verify_checksum(src, self.cfg.local_ip) {
            bump(&self.counters.drop_checksum, 1);
            return FrameAction::Done;
        }
        let key = FlowKey::new(u32::from(src), tcp.src_port(), tcp.dst_port());
        let Some(idx) = self.flows.lookup(key) else {
            return FrameAction::Exception;
        };
        let flags = tcp.flags();
        let f = self.flows.get_mut(idx).expect("indexed flow exists");
        // SACK blocks are parsed only for flows that negotiated SACK and segments whose
        // options go beyond a lone timestamp option.
        let sack = if f.has(F_SACK) && tcp.header_len() > 20 + if f.has(F_TS) { 12 } else { 0 } {
            tcp.options_iter().find_map(|o| match o {
                Ok(wire::TcpOption::SackRange(b)) => Some(b),
                _ => None,
            })
        } else {
            None
        };
        let seg = SegInfo {
            seq: tcp.seq_number(),
            ack: tcp.ack_number(),
            flags,
            window: tcp.window_len(),
            ts: tcp.timestamps(),
            sack,
            ce: ip.ecn() == tx::CE,
        };
        let Some(app) = self.apps.get(f.app as usize).and_then(|a| a.as_ref()) else {
            return FrameAction::Exception;
        };
        let ooo = &mut self.ooo[idx as usize];
        let v = rx::on_segment(
            f,
            ooo,
            &seg,
            tcp.payload(),
            &app.attach.mem,
            self.now_us,
            self.ts_now,
            self.rxc,
        );
        if v & rx::V_EXCEPTION != 0 {
            return FrameAction::Exception;
        }
        if v & rx::V_ACK != 0 {
            f.flags |= F_ACK_PENDING;
        }
        if v & (rx::V_ACK | rx::V_DELIVERED | rx::V_TX) != 0 || f.tx_freed_pending > 0 {
            touch(f, idx, self.touched);
        }
        if v & rx::V_TX != 0
            && (f.tx_avail > 0 || (f.has(F_TX_FIN_PENDING) && !f.has(F_TX_FIN_SENT)))
            && !f.has(F_IN_TXQ)
        {
            f.flags |= F_IN_TXQ;
            self.qm.make_ready(idx);
        }
        let mut v = v;
        if f.flags2 & (F2_ECN | F2_CC) != 0 {
            if seg.ce && f.has2(F2_ECN) {
                bump(&self.counters.ecn_ce_received, 1);
            }
            if flags.contains(TcpFlags::ECE) && f.has2(F2_ECN) {
                bump(&self.counters.ecn_echoes_received, 1);
            }
            // Congestion control: report the counters once per control interval
            // (cc_interval_rtts smoothed RTTs, at least cc_interval_min_us), on an ACK.
            if f.has2(F2_CC) && v & rx::V_TX != 0 {
                let iv = f
                    .srtt_us
                    .saturating_mul(self.cfg.cc_interval_rtts)
                    .max(self.cfg.cc_interval_min_us);
                if self.now_us.wrapping_sub(f.cc_last_us) >= iv {
                    f.cc_last_us = self.now_us;
                    v |= V_CC;
                }
            }
        }
        if v & (rx::V_FAST_RETX | rx::V_SACK | rx::V_PEER_FIN | rx::V_FIN_ACKED | V_CC) != 0 {
            return FrameAction::Flow {
                idx,
                v,
                sack: seg.sack,
            };
        }
        FrameAction::Done
    }
}

/// Put flow `idx` on this batch's touched list (once: `F_TOUCHED` marks it), so its ACK
/// and application events are produced at the end of the batch.
#[inline]
fn touch(f: &mut FlowState, idx: u32, touched: &mut Vec<u32>) {
    if f.flags & F_TOUCHED == 0 {
        f.flags |= F_TOUCHED;
        touched.push(idx);
    }
}

/// The flow key of a frame, if it is IPv4/TCP (cheap peek for prefetching; no checks
/// beyond bounds).
#[inline]
fn peek_key(d: &[u8]) -> Option<FlowKey> {
    if d.len() < 34 + 4 || d[12] != 0x08 || d[13] != 0x00 {
        return None;
    }
    let ihl = ((d[14] & 0x0f) as usize) * 4;
    let t = 14 + ihl;
    let p = d.get(t..t + 4)?;
    let src = u32::from_be_bytes([d[26], d[27], d[28], d[29]]);
    Some(FlowKey::new(
        src,
        u16::from_be_bytes([p[0], p[1]]),
        u16::from_be_bytes([p[2], p[3]]),
    ))
}

/// Apply one doorbell after checking it against the core's own state. False if the
/// doorbell is invalid (wrong app, slot, flow, or a length beyond the ring).
/// What became of a doorbell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Applied {
    Yes,
    /// The flow it names is not this application's connection here (not installed yet,
    /// moved away or closed).
    NoFlow,
    /// Out of bounds (more bytes than the ring holds, data after the FIN).
    Refused,
}

fn apply_doorbell(
    flows: &mut FlowTable,
    app: u16,
    db: Doorbell,
    qm: &mut QueueManager,
    touched: &mut Vec<u32>,
) -> Applied {
    let (flow, conn) = match db {
        Doorbell::TxAdded { flow, conn, .. }
        | Doorbell::RxConsumed { flow, conn, .. }
        | Doorbell::ShutdownTx { flow, conn } => (flow, conn),
    };
    let Some(f) = flows.get_mut(flow) else {
        return Applied::NoFlow;
    };
    if !f.has(F_ACTIVE) || f.app != app || f.conn != conn {
        return Applied::NoFlow;
    }
    match db {
        Doorbell::TxAdded { bytes, .. } => {
            // Never more than the ring can hold beyond what is queued or unacknowledged.
            let used = f.tx_sent as u64 + f.tx_avail as u64;
            if bytes == 0 || used + bytes as u64 > f.tx_size() as u64 || f.has(F_TX_FIN_PENDING) {
                return Applied::Refused;
            }
            f.tx_avail += bytes;
        }
        Doorbell::RxConsumed { bytes, .. } => {
            let before = f.rx_avail;
            if bytes == 0 || before as u64 + bytes as u64 > f.rx_size() as u64 {
                return Applied::Refused;
            }
            f.rx_avail += bytes;
            // Window update when the window reopens meaningfully (RFC 9293 3.8.6.2.2,
            // receiver SWS avoidance: at least min(rcv buffer / 2, MSS) of new space).
            let threshold = (f.rx_size() / 2).min(f.mss as u32 * 2);
            let advertised = before;
            if f.rx_avail - advertised >= threshold || advertised < f.mss as u32 {
                f.flags |= F_ACK_PENDING;
                touch(f, flow, touched);
            }
            return Applied::Yes;
        }
        Doorbell::ShutdownTx { .. } => {
            if f.has(F_TX_FIN_PENDING) {
                return Applied::Yes;
            }
            f.flags |= F_TX_FIN_PENDING;
        }
    }
    if !f.has(F_IN_TXQ) {
        f.flags |= F_IN_TXQ;
        qm.make_ready(flow);
    }
    Applied::Yes
}

/// Drive a core forever on the calling thread: pin it to `cpu`, poll, and after
/// `spin` without work block in `poll(2)` on the I/O fds and the doorbell.
pub fn run_pinned<IO: PacketIo>(
    mut fp: FastPath<IO>,
    clock: &dyn Clock,
    cpu: Option<usize>,
    doorbell: Arc<CoreDoorbell>,
    stop: Arc<AtomicBool>,
    spin: Duration,
) {
    if let Some(cpu) = cpu {
        if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
            tracing::warn!(cpu, "could not pin fast-path core");
        }
    }
    let mut fds: Vec<RawFd> = fp.poll_fds();
    fds.push(doorbell.fd.as_raw_fd());
    let mut last_work = clock.now();
    while !stop.load(Ordering::Relaxed) {
        let now = clock.now();
        if fp.poll(now).did_work() {
            last_work = now;
            continue;
        }
        if now.saturating_since(last_work) < spin {
            std::hint::spin_loop();
            continue;
        }
        // Announce, re-check, sleep: no lost wake-ups (see tas_proto::queue).
        doorbell.sleeping.store(true, Ordering::SeqCst);
        if fp.prepare_sleep() {
            bump(&fp.counters.sleeps, 1);
            // Wake at least every 10 ms for the timers.
            crate::sys::poll_readable(&fds, 10);
            crate::sys::eventfd_drain(doorbell.fd.as_raw_fd());
            fp.woke();
        }
        doorbell.sleeping.store(false, Ordering::SeqCst);
        last_work = clock.now();
    }
}
