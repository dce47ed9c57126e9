//! The slow path: connection setup and teardown, listeners, applications' control
//! requests, neighbour resolution, and timers. Sans-I/O like the fast path: it is
//! driven by [`SlowPath::poll`] with the time passed in, talks to fast-path cores only
//! through their command / report queues, and to applications only through their shared
//! regions. `tasd` runs it on its own thread; the simulator runs it inline.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::BuildHasher;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Duration;

use ringbuf::traits::{Consumer, Producer};
use tas_fastpath::appmem::AppMem;
use tas_fastpath::core::{eventfd_write, CoreCounters, Notify};
use tas_fastpath::ctl::*;
use tas_fastpath::flow::{FlowKey, FlowState, F2_ECN, F_KEEPALIVE, F_SACK, F_TS};
use tas_fastpath::rx::{tsval, TS_TICK_SHIFT};
use tas_fastpath::time::Instant;
use tas_fastpath::wire::{
    ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, Ipv4Packet, SackBlocks, TcpFlags,
    TcpRepr, TcpSegment,
};
use tas_proto::queue::ShmQueue;
use tas_proto::shm::{ConnHandle, ControlRequest, ErrorCode, Layout, SpEvent};

use crate::cc::{Algorithm, CcInfo, CcParams, CcState, Limits};
use crate::frames;

mod ops;
mod share;
pub use ops::{AppDetail, CloseFlowError, ConnEvent, CoreQueues, EventKind, ListenerInfo};

/// Settings of the slow path.
#[derive(Debug, Clone)]
pub struct SlowConfig {
    /// Service address.
    pub local_ip: Ipv4Addr,
    /// Prefix length of the local subnet.
    pub prefix: u8,
    /// Gateway for other destinations.
    pub gateway: Option<Ipv4Addr>,
    /// Interface MAC.
    pub local_mac: EthernetAddress,
    /// Geometry of every application region.
    pub layout: Layout,
    /// Ephemeral ports for active opens.
    pub ephemeral: (u16, u16),
    /// Our MSS (MTU 1500 - 40).
    pub mss: u16,
    /// TIME_WAIT duration (2 MSL).
    pub time_wait: Duration,
    /// FIN_WAIT_2 timeout after our FIN was acknowledged (Linux tcp_fin_timeout: 60 s).
    pub fin_wait2_timeout: Duration,
    /// SYN / SYN-ACK retransmissions before giving up (Linux: 6 and 5).
    pub syn_retries: u8,
    /// First SYN retransmission timeout (RFC 6298: 1 s).
    pub syn_rto: Duration,
    /// Answer ARP requests for our address.
    pub arp_reply: bool,
    /// Upper bound on any listener's backlog (Linux somaxconn default: 4096).
    pub max_backlog: u32,
    /// Send keepalive probes on idle connections (timing: the cores' `Keepalive`).
    pub keepalive: bool,
    /// Congestion control and ECN.
    pub cc: CcParams,
}

impl SlowConfig {
    /// Defaults for an address and MAC.
    pub fn new(local_ip: Ipv4Addr, prefix: u8, local_mac: EthernetAddress, layout: Layout) -> Self {
        SlowConfig {
            local_ip,
            prefix,
            gateway: None,
            local_mac,
            layout,
            ephemeral: (61000, 65535),
            mss: 1460,
            time_wait: Duration::from_secs(60),
            fin_wait2_timeout: Duration::from_secs(60),
            syn_retries: 6,
            syn_rto: Duration::from_secs(1),
            arp_reply: true,
            max_backlog: 4096,
            keepalive: false,
            cc: CcParams::default(),
        }
    }
}

/// Marks ports as owned by the service (the XDP program's map) or not.
pub trait PortFilter: Send {
    /// Redirect this port to the service.
    fn own(&self, port: u16) -> Result<(), String>;
    /// Stop redirecting it.
    fn release(&self, port: u16);
}

/// A filter that does nothing (the simulated link delivers everything).
#[derive(Debug, Default)]
pub struct NoFilter;
impl PortFilter for NoFilter {
    fn own(&self, _port: u16) -> Result<(), String> {
        Ok(())
    }
    fn release(&self, _port: u16) {}
}

/// The slow path's link to one fast-path core.
pub struct CoreLink {
    /// Commands to the core.
    pub cmds: CommandTx,
    /// Reports from the core.
    pub reports: ToSlowRx,
    /// Wakes the core if it sleeps.
    pub wake: Option<Arc<dyn Notify>>,
    /// The core's counters.
    pub counters: Arc<CoreCounters>,
    /// Flow slots of the core not in use.
    free_flows: Vec<u32>,
    /// Which connection each flow slot serves.
    owners: Vec<Option<FlowKey>>,
    /// Commands that did not fit the queue yet (kept in order).
    backlog: std::collections::VecDeque<Command>,
}

impl CoreLink {
    /// A link with `flow_capacity` flow slots.
    pub fn new(cmds: CommandTx, reports: ToSlowRx, wake: Option<Arc<dyn Notify>>, counters: Arc<CoreCounters>, flow_capacity: u32) -> Self {
        CoreLink {
            cmds,
            reports,
            wake,
            counters,
            free_flows: (0..flow_capacity).rev().collect(),
            owners: vec![None; flow_capacity as usize],
            backlog: Default::default(),
        }
    }

    fn send(&mut self, c: Command) {
        if self.backlog.is_empty() {
            if let Err(c) = self.cmds.try_push(c) {
                self.backlog.push_back(c);
            }
        } else {
            self.backlog.push_back(c);
        }
        if let Some(w) = &self.wake {
            w.notify();
        }
    }

    fn flush(&mut self) {
        while let Some(c) = self.backlog.pop_front() {
            if let Err(c) = self.cmds.try_push(c) {
                self.backlog.push_front(c);
                break;
            }
        }
    }
}

impl std::fmt::Debug for CoreLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoreLink").field("free_flows", &self.free_flows.len()).finish()
    }
}

/// An attached application, as the slow path sees it.
struct App {
    id: u32,
    name: String,
    pid: u32,
    uid: u32,
    slot: u16,
    /// Keeps the region mapped while the slow path holds queue endpoints into it; also read
    /// (never written) to report the fill of the fast path's queues in it.
    mem: AppMem,
    sp_q: ShmQueue,
    req_q: ShmQueue,
    wake: Option<Arc<OwnedFd>>,
    /// Free connection slots, reused oldest-freed first (FIFO): a slot freed by a
    /// `Closed` is not handed to a new connection while the application may still be
    /// reading the old one's last events (docs/abi.md).
    free_conns: std::collections::VecDeque<u32>,
    conns: u32,
    listeners: Vec<u32>,
    detaching: bool,
    broken: bool,
    dirty: bool,
    /// Events that did not fit the event queue, in order; sent before any newer one.
    backlog: std::collections::VecDeque<SpEvent>,
}

struct Listener {
    port: u16,
    app: u32,
    backlog: u32,
    /// Receive buffer of the connections it accepts (`SO_RCVBUF`; 0: the ring).
    rcvbuf: u32,
    /// Handshakes in progress.
    syn_rcvd: u32,
    /// Established, announced to the app, not yet accepted.
    unaccepted: u32,
    /// May share its port with other applications' shared listeners (same uid).
    shared: bool,
    /// It takes connections: it accepted at least once, or it did not ask to wait for
    /// that (`LISTEN_ACCEPT_ON_DEMAND`; a founder that may only hold the port).
    accepting: bool,
    /// It joined an existing port (a forked worker), rather than founding it.
    joined: bool,
    /// A connection was handed to it at least once.
    assigned: bool,
    /// Handshakes whose final ACK came while the accept queue was full (in arrival
    /// order): kept in SYN-RECEIVED, not reset; when the application accepts, each gets
    /// its SYN-ACK again at once, and the peer's answering ACK completes it.
    waiting: std::collections::VecDeque<FlowKey>,
}

impl Listener {
    /// Linux's `sk_acceptq_is_full`: more connections wait for `accept` than the
    /// backlog (so backlog + 1 fit).
    fn accept_queue_full(&self) -> bool {
        self.unaccepted > self.backlog
    }
}

/// Options a peer offered in its SYN (or SYN-ACK).
#[derive(Debug, Clone, Copy, Default)]
struct PeerOpts {
    mss: Option<u16>,
    wscale: Option<u8>,
    ts: Option<u32>,
    sack: bool,
    /// ECN requested (SYN: ECE and CWR) or agreed (SYN-ACK: ECE without CWR), RFC 3168 6.1.1.
    ecn: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Removal {
    /// Orderly close; go to TIME_WAIT afterwards if `time_wait`.
    Close { time_wait: bool },
    /// Reset: send RST (if `send_rst`) and report `error`.
    Reset { send_rst: bool, error: ErrorCode },
}

#[derive(Debug, Clone, Copy)]
enum Phase {
    /// `peer`: the peer's own SYN (its ISN and options) in a simultaneous open.
    SynSent { token: u64, iss: u32, retries: u8, sent_at: Instant, peer: Option<(u32, PeerOpts)> },
    SynRcvd { listener: u32, iss: u32, irs: u32, opts: PeerOpts, retries: u8, sent_at: Instant },
    Established,
    Removing(Removal),
    /// `ts`: TS.Recent if timestamps are in use (every segment must carry them, RFC 7323
    /// 3.2); `window`: the window field of our last segments.
    TimeWait { snd_nxt: u32, rcv_nxt: u32, ts: Option<u32>, window: u16 },
}

#[derive(Debug, Clone)]
struct Conn {
    key: FlowKey,
    remote_ip: Ipv4Addr,
    remote_port: u16,
    local_port: u16,
    remote_mac: Option<EthernetAddress>,
    app: u32,
    slot: Option<u32>,
    core: u8,
    flow: Option<u32>,
    phase: Phase,
    peer_fin: bool,
    fin_acked: bool,
    /// Our FIN was acknowledged before the peer's FIN arrived: active close.
    we_closed_first: bool,
    /// Holds a reference on its local port (active opens and accepted connections).
    port_ref: bool,
    /// An active open (its port reference is counted in `active_port_refs` too).
    active: bool,
    deadline: Option<Instant>,
    /// Payload bytes per segment of the installed flow.
    mss: u16,
    /// SACK scoreboard (used only when SACK was negotiated).
    sb: crate::sack::Scoreboard,
    /// When the scoreboard's reordering timer is armed for.
    sack_deadline: Option<Instant>,
    /// `rcv_nxt` when the flow was installed (bytes received = rcv_nxt - this).
    rcv_start: u32,
    /// Congestion control of the installed flow.
    cc: Option<Box<CcState>>,
    /// Algorithm chosen for this connection (None: the service default).
    cc_alg: Option<Algorithm>,
    /// Options of the installed flow for `Info` replies (`INFO_*` bits and shifts).
    info_opts: u16,
    /// Receive buffer the application asked for (`SO_RCVBUF`; 0: the ring).
    rcvbuf: u32,
    /// `snd_una` when the flow was installed (bytes sent = highest sent - this).
    snd_start: u32,
    /// Recoveries from retransmission timeouts (`TCP_INFO`).
    rto_rec: crate::info::RtoRecovery,
    /// Processes that hold the connection after a fork (None: only the owner's).
    holders: Option<Vec<u32>>,
}

/// The `INFO_*` option bits and window shifts of an installed flow.
fn info_opts(f: &FlowState) -> u16 {
    use tas_proto::shm::{INFO_SACK, INFO_TIMESTAMPS, INFO_WSCALE};
    let mut o = 0;
    if f.flags & tas_fastpath::flow::F_TS != 0 {
        o |= INFO_TIMESTAMPS;
    }
    if f.flags & tas_fastpath::flow::F_SACK != 0 {
        o |= INFO_SACK;
    }
    if f.snd_wscale != 0 || f.rcv_wscale != 0 {
        o |= INFO_WSCALE | (f.snd_wscale as u16 & 15) << 8 | (f.rcv_wscale as u16 & 15) << 12;
    }
    o
}

/// Counters of the slow path.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlowCounters {
    /// Passive opens completed.
    pub passive_opens: u64,
    /// Active opens completed.
    pub active_opens: u64,
    /// Active opens that failed.
    pub connect_failures: u64,
    /// SYNs dropped: listener backlog full.
    pub syn_backlog_drops: u64,
    /// Final ACKs of handshakes (or valid SYN cookies) that found the accept queue full:
    /// the handshake waits for room (Linux's ListenOverflows).
    pub accept_queue_overflows: u64,
    /// SYNs dropped: no connection slot or flow slot.
    pub syn_resource_drops: u64,
    /// RSTs sent.
    pub rsts_sent: u64,
    /// RSTs received.
    pub rsts_received: u64,
    /// Segments reinjected into a fast-path core after installation raced them.
    pub reinjected: u64,
    /// Frames the slow path could not parse.
    pub bad_frames: u64,
    /// Control requests rejected as malformed.
    pub bad_requests: u64,
    /// Connections moved between application contexts (fork hand-over, decisions §26).
    pub moves: u64,
    /// Connections whose application closed them and exited before the close finished:
    /// the close went on in order instead of a reset.
    pub orphan_closes: u64,
    /// Connections whose owning application went away while another process still held
    /// them (fork): kept open for that holder instead of reset (decisions §30).
    pub kept_for_holders: u64,
    /// Connections closed in order.
    pub closes: u64,
    /// Connections reset.
    pub resets: u64,
    /// ARP requests sent.
    pub arp_requests: u64,
    /// ARP replies sent.
    pub arp_replies: u64,
    /// Connections that timed out.
    pub timeouts: u64,
    /// Handshake retransmissions.
    pub syn_retransmits: u64,
    /// Congestion-control intervals run (reports from the cores).
    pub cc_intervals: u64,
    /// Ranges retransmitted from the SACK scoreboard.
    pub sack_retransmits: u64,
    /// Challenge ACKs the slow path sent (RFC 5961, half-open connections).
    pub challenge_acks: u64,
    /// TIME-WAIT 4-tuples reused by a new SYN (RFC 6191).
    pub time_wait_reused: u64,
    /// SYN-ACKs sent with a SYN cookie (backlog full of handshakes).
    pub syn_cookies_sent: u64,
    /// Connections established from a valid SYN cookie.
    pub syn_cookies_accepted: u64,
}

/// A snapshot of one connection for the control API.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    /// Peer address.
    pub remote: std::net::SocketAddrV4,
    /// Local port.
    pub local_port: u16,
    /// State name (RFC 9293 names).
    pub state: &'static str,
    /// Owning app id.
    pub app: u32,
    /// Fast-path core.
    pub core: u8,
    /// Flow slot on the core.
    pub flow: Option<u32>,
    /// `rcv_nxt` when the flow was installed.
    pub rcv_start: u32,
    /// Congestion control, if the flow is installed.
    pub cc: Option<CcInfo>,
    /// What `TCP_INFO` would report from the slow path's view alone (loss-recovery
    /// state, SACK scoreboard, timeouts; no fast-path copy).
    pub tcp: tas_proto::shm::ConnInfo,
}

/// A snapshot of one application for the control API.
#[derive(Debug, Clone)]
pub struct AppInfo {
    /// Service-wide id.
    pub id: u32,
    /// Name it gave.
    pub name: String,
    /// Process id.
    pub pid: u32,
    /// User id.
    pub uid: u32,
    /// Open connections.
    pub conns: u32,
    /// Listeners.
    pub listeners: u32,
}

struct Neighbour {
    mac: Option<EthernetAddress>,
    /// Connections waiting for the resolution.
    waiting: Vec<FlowKey>,
    asked_at: Instant,
    tries: u8,
}

/// The slow path.
pub struct SlowPath {
    cfg: SlowConfig,
    cores: Vec<CoreLink>,
    filter: Box<dyn PortFilter>,
    apps: HashMap<u32, App>,
    app_slots: Vec<bool>,
    listeners: HashMap<u32, Listener>,
    listener_by_port: HashMap<u16, u32>,
    /// Ports shared by several listeners (a reuse-port group, oldest first); the port's
    /// entry in `listener_by_port` is one of them.
    port_groups: HashMap<u16, Vec<u32>>,
    /// Round-robin position for port groups.
    group_rr: usize,
    /// Connections (active opens and accepted ones) per local port.
    port_refs: HashMap<u16, u32>,
    /// Active opens per local port (a subset of `port_refs`): a port that only accepted
    /// connections use can be listened on again, one an active open uses cannot.
    active_port_refs: HashMap<u16, u32>,
    conns: HashMap<FlowKey, Conn>,
    by_slot: HashMap<(u32, u32), FlowKey>,
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    /// SACK reordering timers (RFC 8985 6.3), separate from the connection timers.
    sack_timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_keys: HashMap<u64, FlowKey>,
    timer_seq: u64,
    neigh: HashMap<Ipv4Addr, Neighbour>,
    isn_key: std::collections::hash_map::RandomState,
    next_listener: u32,
    next_ephemeral: u16,
    now: Instant,
    counters: SlowCounters,
    rcv_wscale: u8,
    ops: ops::OpsState,
    share: share::ShareState,
    /// `Info` requests waiting for a fast-path core's copy of their flow, by tag.
    info_waits: HashMap<u64, InfoWait>,
    info_tag: u64,
}

/// An application's `Info` request waiting for [`ToSlow::Peeked`].
struct InfoWait {
    app: u32,
    token: u64,
    key: FlowKey,
    asked: Instant,
}

/// A `Peek` not answered in this long (the core's report queue was full) is answered
/// without the fast path's state; the application waits 500 ms at most.
const INFO_WAIT: Duration = Duration::from_millis(100);

/// ARP requests beyond the first before an active open to an unresolvable neighbour
/// fails with `Unreachable`.
const ARP_RETRIES: u8 = 2;

/// MSS values a SYN cookie can encode (3 bits; the common ones, as Linux's table).
const COOKIE_MSS: [u16; 4] = [536, 1300, 1440, 1460];

/// Applications' region slots per core (the `app` field of a flow is a u16).
const MAX_APPS: usize = tas_fastpath::core::MAX_APPS;
/// Control requests taken from one application per poll.
const REQUEST_BUDGET: usize = 64;

impl SlowPath {
    /// A slow path over `cores`.
    pub fn new(cfg: SlowConfig, cores: Vec<CoreLink>, filter: Box<dyn PortFilter>) -> Self {
        // Window scale: the smallest shift that lets the 16-bit window field cover the
        // whole receive ring (RFC 7323 2.3).
        let mut rcv_wscale = 0u8;
        while (cfg.layout.rx_buf_size >> rcv_wscale) > u16::MAX as u32 && rcv_wscale < 14 {
            rcv_wscale += 1;
        }
        SlowPath {
            next_ephemeral: cfg.ephemeral.0,
            cfg,
            cores,
            filter,
            apps: HashMap::new(),
            app_slots: vec![false; MAX_APPS],
            listeners: HashMap::new(),
            listener_by_port: HashMap::new(),
            port_groups: HashMap::new(),
            group_rr: 0,
            port_refs: HashMap::new(),
            active_port_refs: HashMap::new(),
            conns: HashMap::new(),
            by_slot: HashMap::new(),
            timers: BinaryHeap::new(),
            sack_timers: BinaryHeap::new(),
            timer_keys: HashMap::new(),
            timer_seq: 0,
            neigh: HashMap::new(),
            isn_key: std::collections::hash_map::RandomState::new(),
            next_listener: 1,
            now: Instant::ZERO,
            counters: SlowCounters::default(),
            rcv_wscale,
            ops: ops::OpsState::default(),
            share: share::ShareState::default(),
            info_waits: HashMap::new(),
            info_tag: 0,
        }
    }

    /// Counters.
    pub fn counters(&self) -> SlowCounters {
        self.counters
    }
    /// Number of connections in any state (TIME_WAIT included).
    pub fn conn_count(&self) -> usize {
        self.conns.len()
    }
    /// Number of flows installed on fast-path cores.
    pub fn flow_count(&self) -> usize {
        self.conns.values().filter(|c| c.flow.is_some()).count()
    }
    /// Number of listeners.
    pub fn listener_count(&self) -> usize {
        self.listeners.len()
    }
    /// Number of attached applications.
    pub fn app_count(&self) -> usize {
        self.apps.len()
    }
    /// The configuration.
    pub fn config(&self) -> &SlowConfig {
        &self.cfg
    }
    /// Counters of every core.
    pub fn core_counters(&self) -> Vec<Arc<CoreCounters>> {
        self.cores.iter().map(|c| c.counters.clone()).collect()
    }

    /// Start congestion control for the flow just installed for `key`.
    fn cc_start(&mut self, key: FlowKey, state: &FlowState) {
        let p = self.cfg.cc;
        let Some(c) = self.conns.get_mut(&key) else { return };
        c.rcv_start = state.rcv_nxt;
        c.snd_start = state.snd_una;
        c.info_opts = info_opts(state);
        let alg = c.cc_alg.unwrap_or(p.algorithm);
        let cc = CcState::new(alg, &p, state.mss, state.srtt_us, None);
        let l = cc.limits();
        c.cc = Some(Box::new(cc));
        if let (Some(flow), core) = (c.flow, c.core) {
            self.cores[core as usize].send(Command::SetCc { flow, cwnd: l.cwnd, rate_kbps: l.rate_kbps });
        }
    }

    /// Change congestion control at run time: for one connection (`Some(key)`), or
    /// for every connection and as the default of new ones (`None`). `fixed_kbps` sets
    /// the rate of the `fixed` algorithm (default: the configured one). The flows
    /// restart the algorithm from their current window or rate. Returns the number of
    /// installed flows changed; `None` if `key` names no connection.
    pub fn set_congestion_control(&mut self, key: Option<FlowKey>, alg: Algorithm, fixed_kbps: Option<u32>) -> Option<usize> {
        let keys: Vec<FlowKey> = match key {
            Some(k) => {
                if !self.conns.contains_key(&k) {
                    return None;
                }
                vec![k]
            }
            None => {
                self.cfg.cc.algorithm = alg;
                if let (Algorithm::Fixed, Some(r)) = (alg, fixed_kbps) {
                    self.cfg.cc.fixed_rate_kbps = r;
                }
                self.conns.keys().copied().collect()
            }
        };
        let p = self.cfg.cc;
        let mut n = 0;
        for k in keys {
            let Some(c) = self.conns.get_mut(&k) else { continue };
            c.cc_alg = Some(alg);
            let (Some(flow), Some(old)) = (c.flow, c.cc.as_ref()) else { continue };
            let mut cc = CcState::new(alg, &p, c.mss, old.rtt_us, fixed_kbps);
            // Carry the current operating point over instead of starting from scratch.
            let l = old.limits();
            if l.cwnd > 0 {
                cc.cwnd = l.cwnd;
            }
            if l.rate_kbps > 0 && alg != Algorithm::Fixed {
                cc.rate_kbps = l.rate_kbps;
            }
            let l: Limits = cc.limits();
            c.cc = Some(Box::new(cc));
            let core = c.core;
            self.cores[core as usize].send(Command::SetCc { flow, cwnd: l.cwnd, rate_kbps: l.rate_kbps });
            n += 1;
        }
        Some(n)
    }

    /// Congestion-control state of connection `key`, if its flow is installed.
    pub fn cc_info(&self, key: FlowKey) -> Option<CcInfo> {
        self.conns.get(&key)?.cc.as_ref().map(|c| c.info())
    }

    /// Snapshot of every connection.
    pub fn conn_infos(&self) -> Vec<ConnInfo> {
        self.conns
            .values()
            .map(|c| ConnInfo {
                remote: std::net::SocketAddrV4::new(c.remote_ip, c.remote_port),
                local_port: c.local_port,
                state: c.state_name(),
                app: c.app,
                core: c.core,
                flow: c.flow,
                rcv_start: c.rcv_start,
                cc: c.cc.as_ref().map(|s| s.info()),
                tcp: self.conn_info_reply(c.key, None),
            })
            .collect()
    }

    /// Snapshot of every application.
    pub fn app_infos(&self) -> Vec<AppInfo> {
        self.apps
            .values()
            .map(|a| AppInfo {
                id: a.id,
                name: a.name.clone(),
                pid: a.pid,
                uid: a.uid,
                conns: a.conns,
                listeners: a.listeners.len() as u32,
            })
            .collect()
    }

    /// Ask every core for a copy of its flows, answered on `tx`; returns the number of
    /// cores asked.
    pub fn request_snapshots(&mut self, tx: crossbeam_channel::Sender<(u8, Vec<(u32, FlowState)>)>) -> u32 {
        for c in &mut self.cores {
            c.send(Command::Snapshot(tx.clone()));
        }
        self.cores.len() as u32
    }

    /// Every counter: (name, value, core or -1 for the slow path).
    pub fn all_counters(&self) -> Vec<(String, u64, i32)> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = self.counters;
        let mut v: Vec<(String, u64, i32)> = [
            ("passive_opens", s.passive_opens),
            ("active_opens", s.active_opens),
            ("connect_failures", s.connect_failures),
            ("syn_backlog_drops", s.syn_backlog_drops),
            ("accept_queue_overflows", s.accept_queue_overflows),
            ("syn_resource_drops", s.syn_resource_drops),
            ("rsts_sent", s.rsts_sent),
            ("rsts_received", s.rsts_received),
            ("reinjected", s.reinjected),
            ("bad_frames", s.bad_frames),
            ("bad_requests", s.bad_requests),
            ("conn_moves", s.moves),
            ("orphan_closes", s.orphan_closes),
            ("kept_for_holders", s.kept_for_holders),
            ("closes", s.closes),
            ("resets", s.resets),
            ("arp_requests", s.arp_requests),
            ("arp_replies", s.arp_replies),
            ("timeouts", s.timeouts),
            ("syn_retransmits", s.syn_retransmits),
            ("cc_intervals", s.cc_intervals),
            ("sack_retransmits", s.sack_retransmits),
            ("challenge_acks", s.challenge_acks),
            ("time_wait_reused", s.time_wait_reused),
            ("syn_cookies_sent", s.syn_cookies_sent),
            ("syn_cookies_accepted", s.syn_cookies_accepted),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v, -1))
        .collect();
        for (i, c) in self.cores.iter().enumerate() {
            let k = &c.counters;
            for (n, a) in [
                ("rx_frames", &k.rx_frames),
                ("tx_frames", &k.tx_frames),
                ("tx_segments", &k.tx_segments),
                ("tx_acks", &k.tx_acks),
                ("rx_payload_bytes", &k.rx_payload_bytes),
                ("tx_payload_bytes", &k.tx_payload_bytes),
                ("exceptions", &k.exceptions),
                ("exceptions_dropped", &k.exceptions_dropped),
                ("drop_malformed", &k.drop_malformed),
                ("drop_checksum", &k.drop_checksum),
                ("drop_not_ours", &k.drop_not_ours),
                ("drop_not_tcp", &k.drop_not_tcp),
                ("drop_unsupported", &k.drop_unsupported),
                ("ooo_kept", &k.ooo_kept),
                ("ooo_dropped", &k.ooo_dropped),
                ("window_dropped", &k.window_dropped),
                ("rx_duplicates", &k.rx_duplicates),
                ("dupacks", &k.dupacks),
                ("rto_fired", &k.rto_fired),
                ("retransmitted_segments", &k.retransmitted_segments),
                ("tail_loss_probes", &k.tail_loss_probes),
                ("keepalive_probes", &k.keepalive_probes),
                ("ecn_ce_received", &k.ecn_ce_received),
                ("ecn_echoes_received", &k.ecn_echoes_received),
                ("cc_reports", &k.cc_reports),
                ("pacing_waits", &k.pacing_waits),
                ("challenge_acks", &k.challenge_acks),
                ("paws_dropped", &k.paws_dropped),
                ("fast_retransmits", &k.fast_retransmits),
                ("doorbells", &k.doorbells),
                ("bad_doorbells", &k.bad_doorbells),
                ("corrupt_queues", &k.corrupt_queues),
                ("app_queue_full", &k.app_queue_full),
                ("tx_no_frame", &k.tx_no_frame),
                ("tx_errors", &k.tx_errors),
                ("busy_polls", &k.busy_polls),
                ("idle_polls", &k.idle_polls),
                ("sleeps", &k.sleeps),
                ("flows", &k.flows),
                ("busy_cycles", &k.cycles.busy),
                ("idle_cycles", &k.cycles.idle),
                ("kick_cycles", &k.cycles.kick),
            ] {
                v.push((n.to_string(), a.load(Relaxed), i as i32));
            }
        }
        if !self.cores.is_empty() {
            // Calibrated once per process (20 ms, on this thread, the first time).
            v.push(("tsc_ticks_per_us".to_string(), tas_fastpath::cycles::ticks_per_us(), -1));
        }
        v
    }

    // ---- applications ---------------------------------------------------------------

    /// Register an application whose region the service created and initialised.
    #[allow(clippy::too_many_arguments)]
    pub fn attach_app(&mut self, id: u32, name: String, pid: u32, uid: u32, mem: AppMem, wake: Option<Arc<OwnedFd>>) -> Result<(), ErrorCode> {
        let l = self.cfg.layout;
        let slot = self.app_slots.iter().position(|u| !u).ok_or(ErrorCode::NoResources)?;
        let (Some(mut sp_q), Some(req_q)) = (mem.queue(l.sp_queue_offset(), l.queue_entries), mem.queue(l.req_queue_offset(), l.queue_entries)) else {
            return Err(ErrorCode::Invalid);
        };
        sp_q.resume_as_producer();
        self.app_slots[slot] = true;
        for core in &mut self.cores {
            core.send(Command::AddApp {
                slot: slot as u16,
                app: Box::new(AppAttach { app_id: id, mem: mem.clone(), layout: l, wake: wake.clone() }),
            });
        }
        tracing::info!(app = id, %name, pid, uid, "application attached");
        self.apps.insert(
            id,
            App {
                id,
                name,
                pid,
                uid,
                slot: slot as u16,
                mem,
                sp_q,
                req_q,
                wake,
                free_conns: (0..l.conn_slots).collect(),
                conns: 0,
                listeners: Vec::new(),
                detaching: false,
                broken: false,
                dirty: false,
                backlog: std::collections::VecDeque::new(),
            },
        );
        Ok(())
    }

    /// The application's socket closed: reset its connections, close its listeners, and
    /// free its region once the cores let go of it.
    pub fn detach_app(&mut self, id: u32) {
        let Some(app) = self.apps.get_mut(&id) else { return };
        app.detaching = true;
        let pid = app.pid;
        tracing::info!(app = id, conns = app.conns, "application detached");
        for l in std::mem::take(&mut app.listeners) {
            self.close_listener(l);
        }
        let keys: Vec<FlowKey> = self.conns.values().filter(|c| c.app == id).map(|c| c.key).collect();
        for k in keys {
            // An established connection the application closed before it went (FIN
            // queued) finishes its close in order, as the kernel's would after exit; the
            // core says which (Orphaned). Others are reset.
            match self.conns.get(&k) {
                Some(c)
                    if matches!(c.phase, Phase::Established)
                        && c.flow.is_some()
                        && c.holders.as_ref().is_some_and(|v| v.iter().any(|&p| p != pid)) =>
                {
                    // Another process still holds it (a forked parent whose child used
                    // the connection and exited without closing it): Linux keeps it open
                    // for that process. It stays here, ownerless, until a holder uses it
                    // (moved to it), releases it last (moved to it, to be closed), or
                    // every holder is gone (decisions §30).
                    self.counters.kept_for_holders += 1;
                    tracing::debug!(app = id, flow = c.flow, "owner gone; connection kept for its other holders");
                }
                Some(c) if matches!(c.phase, Phase::Established) && c.flow.is_some() => {
                    let (core, flow) = (c.core, c.flow.unwrap_or_default());
                    self.cores[core as usize].send(Command::Orphan { flow });
                }
                _ => self.abort_conn(k, ErrorCode::Aborted, true),
            }
        }
        self.maybe_finish_detach(id);
    }

    fn maybe_finish_detach(&mut self, id: u32) {
        let done = self.apps.get(&id).is_some_and(|a| a.detaching && a.conns == 0)
            && !self.conns.values().any(|c| c.app == id && c.slot.is_some());
        if !done {
            return;
        }
        let app = self.apps.remove(&id).expect("present");
        for core in &mut self.cores {
            core.send(Command::RemoveApp { slot: app.slot });
        }
        self.app_slots[app.slot as usize] = false;
        // `app.mem` drops here; the cores drop their clones when they handle RemoveApp.
    }

    fn post(&mut self, app: u32, ev: SpEvent) {
        self.ops_on_post(app, &ev);
        let Some(a) = self.apps.get_mut(&app) else { return };
        if a.detaching {
            return;
        }
        // Never lose or reorder an event: when the queue is full (the application is not
        // polling), keep it and everything after it until there is room.
        if !a.backlog.is_empty() || !a.sp_q.push(ev.encode()) {
            if a.backlog.is_empty() {
                tracing::debug!(app, "application event queue full; holding events");
            }
            a.backlog.push_back(ev);
        } else {
            a.dirty = true;
        }
    }

    fn publish_events(&mut self) {
        for a in self.apps.values_mut() {
            while let Some(ev) = a.backlog.front() {
                if !a.sp_q.push(ev.encode()) {
                    break;
                }
                a.backlog.pop_front();
                a.dirty = true;
            }
            if a.dirty {
                a.dirty = false;
                if a.sp_q.publish() {
                    if let Some(w) = &a.wake {
                        eventfd_write(w.as_raw_fd());
                    }
                }
            }
        }
    }

    // ---- the loop -------------------------------------------------------------------

    /// Do all pending work at time `now`; returns how many items were handled.
    pub fn poll(&mut self, now: Instant) -> usize {
        self.now = now;
        let mut n = 0;
        for c in 0..self.cores.len() {
            self.cores[c].flush();
            while let Some(m) = self.cores[c].reports.try_pop() {
                n += 1;
                self.on_report(c as u8, m);
            }
        }
        n += self.requests();
        n += self.run_timers();
        n += self.check_holders();
        self.publish_events();
        n
    }

    /// The earliest timer deadline, for sleeping.
    pub fn next_deadline(&self) -> Option<Instant> {
        let a = self.timers.peek().map(|Reverse((t, _))| *t);
        let b = self.sack_timers.peek().map(|Reverse((t, _))| *t);
        a.into_iter().chain(b).chain(self.share.next_check()).min()
    }

    fn requests(&mut self) -> usize {
        let ids: Vec<u32> = self.apps.keys().copied().collect();
        let mut n = 0;
        for id in ids {
            for _ in 0..REQUEST_BUDGET {
                let Some(app) = self.apps.get_mut(&id) else { break };
                if app.broken || app.detaching {
                    break;
                }
                let d = match app.req_q.pop() {
                    Ok(Some(d)) => d,
                    Ok(None) => break,
                    Err(_) => {
                        app.broken = true;
                        tracing::warn!(app = id, "control queue corrupt; ignoring the application's requests");
                        break;
                    }
                };
                app.req_q.release();
                n += 1;
                match ControlRequest::decode(&d) {
                    Ok(r) => self.on_request(id, r),
                    Err(_) => self.counters.bad_requests += 1,
                }
            }
        }
        n
    }

    fn on_request(&mut self, app: u32, r: ControlRequest) {
        match r {
            ControlRequest::Listen { token, port, backlog, flags, rcvbuf } => {
                let shared = flags & tas_proto::shm::LISTEN_REUSEPORT != 0;
                let on_demand = flags & tas_proto::shm::LISTEN_ACCEPT_ON_DEMAND != 0;
                let ev = match self.listen(app, port, backlog, shared, on_demand) {
                    Ok(listener) => {
                        if let Some(l) = self.listeners.get_mut(&listener) {
                            l.rcvbuf = rcvbuf;
                        }
                        SpEvent::ListenOk { token, listener }
                    }
                    Err(error) => SpEvent::ListenFailed { token, error },
                };
                self.post(app, ev);
            }
            ControlRequest::Connect { token, ip, port, rcvbuf } => {
                if let Err(error) = self.connect(app, token, Ipv4Addr::from(ip), port, rcvbuf) {
                    self.counters.connect_failures += 1;
                    self.post(app, SpEvent::ConnectFailed { token, error });
                }
            }
            ControlRequest::Accepted { listener, count } => {
                if let Some(l) = self.listeners.get_mut(&listener) {
                    if l.app == app {
                        l.unaccepted = l.unaccepted.saturating_sub(count);
                        l.accepting = true;
                    }
                }
                self.resume_waiting(listener);
            }
            ControlRequest::Abort { conn } => {
                if let Some(&k) = self.by_slot.get(&(app, conn)) {
                    self.abort_conn(k, ErrorCode::Aborted, true);
                } else {
                    self.counters.bad_requests += 1;
                }
            }
            ControlRequest::Unlisten { listener } => {
                if self.listeners.get(&listener).is_some_and(|l| l.app == app) {
                    if let Some(a) = self.apps.get_mut(&app) {
                        a.listeners.retain(|&l| l != listener);
                    }
                    self.close_listener(listener);
                }
            }
            ControlRequest::Info { token, conn } => self.on_info_request(app, token, conn),
            ControlRequest::Forked { child } => self.on_forked(app, child),
            ControlRequest::Adopt { token, key } => self.on_adopt(app, token, key),
            ControlRequest::Release { token, key } => self.on_release(app, token, key),
        }
    }

    /// `TCP_INFO` (decisions §21): ask the flow's core for a copy of its state and answer
    /// when it comes ([`SlowPath::on_peeked`]); answer at once from the slow path's own
    /// view if no flow is installed (a handshake, a closing connection).
    fn on_info_request(&mut self, app: u32, token: u64, slot: u32) {
        let now = self.now;
        // Waits whose answer was lost (a full report queue) are answered without it.
        let stale: Vec<u64> =
            self.info_waits.iter().filter(|(_, w)| now.as_nanos().saturating_sub(w.asked.as_nanos()) > INFO_WAIT.as_nanos() as u64).map(|(&t, _)| t).collect();
        for t in stale {
            let w = self.info_waits.remove(&t).expect("listed");
            let info = self.conn_info_reply(w.key, None);
            self.post_info(w.app, w.token, info);
        }
        let Some(&key) = self.by_slot.get(&(app, slot)) else {
            return self.post_info(app, token, tas_proto::shm::ConnInfo::default());
        };
        let c = &self.conns[&key];
        match (c.flow, &c.phase) {
            (Some(flow), Phase::Established) if c.cc.is_some() => {
                self.info_tag += 1;
                let tag = self.info_tag;
                self.info_waits.insert(tag, InfoWait { app, token, key, asked: now });
                let core = c.core;
                self.cores[core as usize].send(Command::Peek { flow, tag });
            }
            _ => {
                let info = self.conn_info_reply(key, None);
                self.post_info(app, token, info);
            }
        }
    }

    /// A core's copy of a flow for a waiting `Info` request.
    fn on_peeked(&mut self, tag: u64, now_us: u32, retx_bytes: u32, state: Option<&FlowState>) {
        let Some(w) = self.info_waits.remove(&tag) else { return };
        let peek = state.map(|state| crate::info::Peek { state, now_us, retx_bytes });
        if let (Some(p), Some(c)) = (peek, self.conns.get_mut(&w.key)) {
            c.rto_rec.on_progress(self.now, p.state.snd_una);
        }
        let info = self.conn_info_reply(w.key, peek);
        self.post_info(w.app, w.token, info);
    }

    fn post_info(&mut self, app: u32, token: u64, info: tas_proto::shm::ConnInfo) {
        for ev in info.events(token) {
            self.post(app, ev);
        }
    }

    /// What the slow path knows of connection `key` for `TCP_INFO`, with the fast path's
    /// copy of the flow if there is one (`info::conn_info`). All zero if it is gone.
    fn conn_info_reply(&self, key: FlowKey, peek: Option<crate::info::Peek>) -> tas_proto::shm::ConnInfo {
        let Some(c) = self.conns.get(&key) else {
            return tas_proto::shm::ConnInfo::default();
        };
        let inputs = crate::info::Inputs {
            opts: c.info_opts,
            mss: c.mss,
            cc: c.cc.as_deref(),
            sb: &c.sb,
            rto: &c.rto_rec,
            snd_start: c.snd_start,
            rcv_space: self.rcv_space(c.rcvbuf),
            peek,
            now: self.now,
        };
        crate::info::conn_info(&inputs)
    }

    fn listen(&mut self, app: u32, port: u16, backlog: u32, shared: bool, on_demand: bool) -> Result<u32, ErrorCode> {
        if port == 0 {
            return Err(ErrorCode::Invalid);
        }
        if let Some(&rep) = self.listener_by_port.get(&port) {
            // Join a reuse-port group: both sides asked for sharing, another application
            // (one application never needs two listeners on a port), the same user.
            let uid = |a: u32| self.apps.get(&a).map(|x| x.uid);
            let joinable = shared
                && self.port_groups.get(&port).map_or(vec![rep], |g| g.clone()).iter().all(|m| {
                    self.listeners.get(m).is_some_and(|l| l.shared && l.app != app && uid(l.app) == uid(app))
                });
            if !joinable {
                return Err(ErrorCode::AddrInUse);
            }
            let id = self.add_listener(app, port, backlog, shared, on_demand, true);
            self.port_groups.entry(port).or_insert_with(|| vec![rep]).push(id);
            tracing::debug!(app, port, backlog = self.listeners[&id].backlog, listener = id, "joined a shared port");
            return Ok(id);
        }
        // Connections accepted by an earlier listener on the port (open, closing or in
        // TIME-WAIT) do not stop a new listener: Linux lets a socket with SO_REUSEADDR
        // bind and listen then (servers that close their listener and listen again, like
        // iperf3, rely on it; the shim refuses the bind without SO_REUSEADDR while this
        // process holds such a connection). An active open's local port cannot be
        // listened on.
        if self.active_port_refs.contains_key(&port) {
            return Err(ErrorCode::AddrInUse);
        }
        self.filter.own(port).map_err(|e| {
            tracing::error!(port, error = %e, "cannot claim port in the XDP map");
            ErrorCode::NoResources
        })?;
        let id = self.add_listener(app, port, backlog, shared, on_demand, false);
        self.listener_by_port.insert(port, id);
        tracing::debug!(app, port, backlog = self.listeners[&id].backlog, shared, listener = id, "listening");
        Ok(id)
    }

    /// A new listener of `app` on `port` (a founder, or a member `joined` to a reuse-port
    /// group), with the backlog clamped to the configured maximum; recorded in the
    /// application's listeners. The caller records it under its port.
    fn add_listener(&mut self, app: u32, port: u16, backlog: u32, shared: bool, on_demand: bool, joined: bool) -> u32 {
        let id = self.next_listener;
        self.next_listener += 1;
        let backlog = backlog.clamp(1, self.cfg.max_backlog);
        self.listeners.insert(id, Listener {
            port,
            app,
            backlog,
            rcvbuf: 0,
            syn_rcvd: 0,
            unaccepted: 0,
            shared,
            accepting: !on_demand,
            joined,
            assigned: false,
            waiting: std::collections::VecDeque::new(),
        });
        if let Some(a) = self.apps.get_mut(&app) {
            a.listeners.push(id);
        }
        id
    }

    /// The listener a new connection to `port` goes to. In a reuse-port group: round
    /// robin over the members that take connections (`accepting`), and the joined members
    /// (forked workers) that were not given a connection yet. A member that listened with
    /// `LISTEN_ACCEPT_ON_DEMAND` (the shim's founder: a parent that listened before
    /// forking, like nginx's master) gets connections only once it has accepted one, or
    /// when no other member is eligible: each member's application
    /// has its own accept queue, so a connection given to a member that never accepts
    /// would wait forever.
    fn pick_listener(&mut self, port: u16) -> Option<u32> {
        let rep = *self.listener_by_port.get(&port)?;
        let Some(group) = self.port_groups.get(&port) else { return Some(rep) };
        let mut eligible: Vec<u32> = group
            .iter()
            .copied()
            .filter(|m| self.listeners.get(m).is_some_and(|l| l.accepting || (l.joined && !l.assigned)))
            .collect();
        if eligible.is_empty() {
            // Every worker got a connection and none has accepted yet (a burst at start):
            // keep to the workers.
            eligible = group.iter().copied().filter(|m| self.listeners.get(m).is_some_and(|l| l.joined)).collect();
        }
        let pick = if eligible.is_empty() {
            rep
        } else {
            self.group_rr = self.group_rr.wrapping_add(1);
            eligible[self.group_rr % eligible.len()]
        };
        if let Some(l) = self.listeners.get_mut(&pick) {
            l.assigned = true;
        }
        Some(pick)
    }

    fn close_listener(&mut self, id: u32) {
        let Some(l) = self.listeners.remove(&id) else { return };
        if let Some(group) = self.port_groups.get_mut(&l.port) {
            group.retain(|&m| m != id);
            let next = group.first().copied();
            if group.len() <= 1 {
                self.port_groups.remove(&l.port);
            }
            if let Some(next) = next {
                // Others still listen on the port: keep it, hand the port entry on.
                self.listener_by_port.insert(l.port, next);
                self.drop_handshakes_of(id);
                return;
            }
        }
        self.listener_by_port.remove(&l.port);
        self.drop_handshakes_of(id);
        if !self.port_refs.contains_key(&l.port) {
            self.filter.release(l.port);
        }
    }

    /// Handshakes in progress on a closed listener die with it.
    fn drop_handshakes_of(&mut self, id: u32) {
        let pending: Vec<FlowKey> = self
            .conns
            .values()
            .filter(|c| matches!(c.phase, Phase::SynRcvd { listener, .. } if listener == id))
            .map(|c| c.key)
            .collect();
        for k in pending {
            self.conns.remove(&k);
        }
    }

    fn port_ref(&mut self, port: u16) {
        *self.port_refs.entry(port).or_insert(0) += 1;
    }

    fn port_unref(&mut self, port: u16) {
        if let Some(n) = self.port_refs.get_mut(&port) {
            *n -= 1;
            if *n == 0 {
                self.port_refs.remove(&port);
                if !self.listener_by_port.contains_key(&port) {
                    self.filter.release(port);
                }
            }
        }
    }

    fn next_hop(&self, dst: Ipv4Addr) -> Option<Ipv4Addr> {
        if crate::config::same_subnet(dst, self.cfg.local_ip, self.cfg.prefix) {
            Some(dst)
        } else {
            self.cfg.gateway
        }
    }

    fn isn(&self, key: FlowKey) -> u32 {
        // RFC 6528: ISN = M + F(4-tuple, secret), M a 4 µs clock, F a keyed hash.
        let f = self.isn_key.hash_one((key.0, u32::from(self.cfg.local_ip))) as u32;
        f.wrapping_add((self.now.as_nanos() / 4_000) as u32)
    }

    fn core_for(&self, key: FlowKey) -> u8 {
        (key.0.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8 % self.cores.len() as u8
    }

    fn connect(&mut self, app: u32, token: u64, ip: Ipv4Addr, port: u16, rcvbuf: u32) -> Result<(), ErrorCode> {
        if port == 0 || ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
            return Err(ErrorCode::Invalid);
        }
        let hop = self.next_hop(ip).ok_or(ErrorCode::Unreachable)?;
        // Pick an ephemeral port whose 4-tuple is free.
        let (lo, hi) = self.cfg.ephemeral;
        let span = (hi - lo) as u32 + 1;
        let mut local_port = None;
        for _ in 0..span {
            let p = self.next_ephemeral;
            self.next_ephemeral = if p >= hi { lo } else { p + 1 };
            if self.listener_by_port.contains_key(&p) {
                continue;
            }
            if !self.conns.contains_key(&FlowKey::new(u32::from(ip), port, p)) {
                local_port = Some(p);
                break;
            }
        }
        let local_port = local_port.ok_or(ErrorCode::NoResources)?;
        let key = FlowKey::new(u32::from(ip), port, local_port);
        let a = self.apps.get_mut(&app).ok_or(ErrorCode::NotFound)?;
        let slot = a.free_conns.pop_front().ok_or(ErrorCode::NoResources)?;
        a.conns += 1;
        if !self.port_refs.contains_key(&local_port) {
            if let Err(e) = self.filter.own(local_port) {
                tracing::error!(port = local_port, error = %e, "cannot claim port");
                let a = self.apps.get_mut(&app).expect("present");
                a.free_conns.push_front(slot);
                a.conns -= 1;
                return Err(ErrorCode::NoResources);
            }
        }
        self.port_ref(local_port);
        *self.active_port_refs.entry(local_port).or_insert(0) += 1;
        let core = self.core_for(key);
        let iss = self.isn(key);
        let mac = self.neigh.get(&hop).and_then(|n| n.mac);
        self.conns.insert(
            key,
            Conn {
                slot: Some(slot),
                port_ref: true,
                active: true,
                rcvbuf,
                ..Conn::opening(key, mac, app, core, Phase::SynSent { token, iss, retries: 0, sent_at: self.now, peer: None })
            },
        );
        self.by_slot.insert((app, slot), key);
        if mac.is_some() {
            self.send_syn(key);
        } else {
            self.resolve(hop, key);
        }
        Ok(())
    }

    fn resolve(&mut self, hop: Ipv4Addr, key: FlowKey) {
        let now = self.now;
        let n = self.neigh.entry(hop).or_insert(Neighbour { mac: None, waiting: Vec::new(), asked_at: now, tries: 0 });
        n.waiting.push(key);
        let first = n.tries == 0;
        if first {
            n.tries = 1;
            n.asked_at = now;
        }
        if first {
            self.send_arp_request(hop);
        }
        // Retried from the connection's SYN timer until resolved.
        self.arm(key, now + self.cfg.syn_rto);
    }

    fn send_arp_request(&mut self, target: Ipv4Addr) {
        self.counters.arp_requests += 1;
        let f = frames::arp_request(self.cfg.local_mac, self.cfg.local_ip, target);
        self.cores[0].send(Command::SendFrame(f));
    }

    fn our_syn_opts(&self, peer: Option<PeerOpts>, tsval_now: u32) -> (Option<u8>, Option<(u32, u32)>) {
        match peer {
            // Active open: offer everything.
            None => (Some(self.rcv_wscale), Some((tsval_now, 0))),
            // Passive open: only what the peer offered (RFC 7323 1.3, 3.2).
            Some(p) => (p.wscale.map(|_| self.rcv_wscale), p.ts.map(|v| (tsval_now, v))),
        }
    }

    fn send_syn(&mut self, key: FlowKey) {
        let Some(c) = self.conns.get(&key) else { return };
        let Phase::SynSent { iss, .. } = c.phase else { return };
        let (ws, ts) = self.our_syn_opts(None, tsval(self.now));
        let tcp = TcpRepr {
            src_port: c.local_port,
            dst_port: c.remote_port,
            seq_number: iss,
            ack_number: None,
            // RFC 3168 6.1.1: an ECN-setup SYN carries ECE and CWR.
            flags: if self.cfg.cc.ecn { TcpFlags::SYN | TcpFlags::ECE | TcpFlags::CWR } else { TcpFlags::SYN },
            window_len: self.syn_window_for(c.rcvbuf),
            max_seg_size: Some(self.cfg.mss),
            window_scale: ws,
            sack_permitted: true,
            sack_ranges: SackBlocks::default(),
            timestamp: ts,
            payload_len: 0,
        };
        let mac = c.remote_mac.expect("resolved");
        let (core, ip) = (c.core, c.remote_ip);
        let f = frames::tcp_frame(self.cfg.local_mac, mac, self.cfg.local_ip, ip, &tcp);
        self.cores[core as usize].send(Command::SendFrame(f));
        let rto = self.cfg.syn_rto;
        self.arm(key, self.now + rto);
    }

    fn syn_window(&self) -> u16 {
        // The window in a SYN is never scaled (RFC 7323 2.2).
        self.cfg.layout.rx_buf_size.min(u16::MAX as u32) as u16
    }

    /// The receive window a connection may ever offer: its `SO_RCVBUF` if it set one,
    /// between one segment and the receive ring, else the ring. The flow starts with
    /// this much room and the ring never holds more (RxConsumed only returns what was
    /// taken), so the window never exceeds it.
    fn rcv_space(&self, rcvbuf: u32) -> u32 {
        let ring = self.cfg.layout.rx_buf_size;
        if rcvbuf == 0 {
            ring
        } else {
            rcvbuf.clamp((self.cfg.mss as u32).min(ring), ring)
        }
    }

    /// [`SlowPath::syn_window`] for a connection with receive buffer `rcvbuf`.
    fn syn_window_for(&self, rcvbuf: u32) -> u16 {
        self.rcv_space(rcvbuf).min(u16::MAX as u32) as u16
    }

    fn now_us(&self) -> u32 {
        (self.now.as_nanos() / 1_000) as u32
    }

    fn arm(&mut self, key: FlowKey, at: Instant) {
        if let Some(c) = self.conns.get_mut(&key) {
            c.deadline = Some(at);
            self.timer_seq += 1;
            self.timers.push(Reverse((at, self.timer_seq)));
            self.timer_keys.insert(self.timer_seq, key);
        }
    }

    /// Send the scoreboard's ranges and arm its reordering timer.
    fn sack_retransmit(&mut self, key: FlowKey, core: u8, flow: u32, ranges: Vec<(u32, u32)>) {
        for (seq, len) in ranges {
            self.counters.sack_retransmits += 1;
            self.cores[core as usize].send(Command::RetransmitRange { flow, seq, len });
        }
        let Some(c) = self.conns.get_mut(&key) else { return };
        let at = c.sb.next_check().map(|us| Instant::from_nanos(us * 1_000));
        if at != c.sack_deadline {
            c.sack_deadline = at;
            if let Some(at) = at {
                self.timer_seq += 1;
                self.sack_timers.push(Reverse((at, self.timer_seq)));
                self.timer_keys.insert(self.timer_seq, key);
            }
        }
    }

    fn run_sack_timers(&mut self) -> usize {
        let mut n = 0;
        while let Some(&Reverse((at, id))) = self.sack_timers.peek() {
            if at > self.now {
                break;
            }
            self.sack_timers.pop();
            let Some(key) = self.timer_keys.remove(&id) else { continue };
            let now_us = self.now.as_nanos() / 1_000;
            let Some(c) = self.conns.get_mut(&key) else { continue };
            if c.sack_deadline != Some(at) {
                continue;
            }
            c.sack_deadline = None;
            let (Some(flow), Phase::Established) = (c.flow, c.phase) else { continue };
            n += 1;
            let core = c.core;
            let ranges = c.sb.on_timer(now_us);
            self.sack_retransmit(key, core, flow, ranges);
        }
        n
    }

    fn run_timers(&mut self) -> usize {
        let mut n = self.run_sack_timers();
        while let Some(&Reverse((at, id))) = self.timers.peek() {
            if at > self.now {
                break;
            }
            self.timers.pop();
            let Some(key) = self.timer_keys.remove(&id) else { continue };
            let Some(c) = self.conns.get(&key) else { continue };
            if c.deadline != Some(at) {
                continue; // re-armed since
            }
            n += 1;
            self.on_timer(key);
        }
        n
    }

    fn on_timer(&mut self, key: FlowKey) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        c.deadline = None;
        match c.phase {
            Phase::SynSent { token, iss, retries, sent_at, peer } => {
                // An unresolvable neighbour fails after three ARP requests (0, 1, 3 s),
                // as Linux reports EHOSTUNREACH after its three probes; an unanswered SYN
                // gets the full retry schedule.
                let arp_exhausted = c.remote_mac.is_none() && retries >= ARP_RETRIES;
                if retries >= self.cfg.syn_retries || arp_exhausted {
                    let app = c.app;
                    self.counters.connect_failures += 1;
                    self.counters.timeouts += 1;
                    let unresolved = c.remote_mac.is_none();
                    self.drop_conn(key);
                    let error = if unresolved { ErrorCode::Unreachable } else { ErrorCode::TimedOut };
                    self.post(app, SpEvent::ConnectFailed { token, error });
                    return;
                }
                c.phase = Phase::SynSent { token, iss, retries: retries + 1, sent_at, peer };
                self.counters.syn_retransmits += 1;
                let backoff = self.cfg.syn_rto * (1 << (retries + 1).min(6));
                if c.remote_mac.is_none() {
                    let ip = c.remote_ip;
                    if let Some(hop) = self.next_hop(ip) {
                        self.send_arp_request(hop);
                    }
                    self.arm(key, self.now + backoff);
                } else {
                    self.send_syn(key);
                    self.arm(key, self.now + backoff);
                }
            }
            Phase::SynRcvd { listener, iss, irs, opts, retries, sent_at } => {
                if retries >= self.cfg.syn_retries.saturating_sub(1) {
                    if let Some(l) = self.listeners.get_mut(&listener) {
                        l.syn_rcvd = l.syn_rcvd.saturating_sub(1);
                    }
                    self.counters.timeouts += 1;
                    self.conns.remove(&key);
                    return;
                }
                c.phase = Phase::SynRcvd { listener, iss, irs, opts, retries: retries + 1, sent_at };
                self.counters.syn_retransmits += 1;
                self.send_synack(key);
                let backoff = self.cfg.syn_rto * (1 << (retries + 1).min(6));
                self.arm(key, self.now + backoff);
            }
            Phase::Established => {
                // FIN_WAIT_2 timeout: our FIN was acknowledged, the peer never closed.
                if c.fin_acked && !c.peer_fin {
                    self.abort_conn(key, ErrorCode::TimedOut, true);
                }
            }
            Phase::Removing(_) => {}
            Phase::TimeWait { .. } => {
                self.drop_conn(key);
            }
        }
    }

    /// Forget a connection that holds no flow.
    fn drop_conn(&mut self, key: FlowKey) {
        let Some(c) = self.conns.remove(&key) else { return };
        if let Some(slot) = c.slot {
            self.by_slot.remove(&(c.app, slot));
            if let Some(a) = self.apps.get_mut(&c.app) {
                a.free_conns.push_back(slot);
                a.conns -= 1;
            }
        }
        if c.port_ref {
            self.port_unref(c.local_port);
        }
        if c.active {
            if let Some(n) = self.active_port_refs.get_mut(&c.local_port) {
                *n -= 1;
                if *n == 0 {
                    self.active_port_refs.remove(&c.local_port);
                }
            }
        }
        self.maybe_finish_detach(c.app);
    }

    // ---- reports from the cores -----------------------------------------------------

    fn on_report(&mut self, core: u8, m: ToSlow) {
        match m {
            ToSlow::Frame(f) => self.on_frame(core, f.data()),
            ToSlow::Note { flow, note } => {
                let Some(key) = self.cores[core as usize].owners.get(flow as usize).copied().flatten() else { return };
                self.on_note(key, note);
            }
            ToSlow::Sack { flow, snd_una, snd_nxt, srtt_us, blocks } => {
                let Some(key) = self.cores[core as usize].owners.get(flow as usize).copied().flatten() else { return };
                let now_us = self.now.as_nanos() / 1_000;
                let Some(c) = self.conns.get_mut(&key) else { return };
                let ranges = c.sb.on_ack(now_us, srtt_us, snd_una, snd_nxt, c.mss as u32, blocks.as_slice());
                self.sack_retransmit(key, core, flow, ranges);
            }
            ToSlow::Cc { flow, sample } => {
                let Some(key) = self.cores[core as usize].owners.get(flow as usize).copied().flatten() else { return };
                let p = self.cfg.cc;
                let Some(c) = self.conns.get_mut(&key) else { return };
                c.rto_rec.on_progress(self.now, sample.snd_una);
                let Some(cc) = c.cc.as_mut() else { return };
                self.counters.cc_intervals += 1;
                if let Some(l) = cc.on_sample(&sample, &p) {
                    self.cores[core as usize].send(Command::SetCc { flow, cwnd: l.cwnd, rate_kbps: l.rate_kbps });
                }
            }
            ToSlow::Orphaned { flow, closing } => {
                let Some(key) = self.cores[core as usize].owners.get(flow as usize).copied().flatten() else { return };
                let detaching = self.conns.get(&key).and_then(|c| self.apps.get(&c.app)).is_none_or(|a| a.detaching);
                if !detaching {
                    return; // moved to a live application meanwhile
                }
                if closing {
                    self.counters.orphan_closes += 1;
                    tracing::debug!(flow, "application gone; its closed connection finishes in order");
                } else {
                    self.abort_conn(key, ErrorCode::Aborted, true);
                }
            }
            ToSlow::FlowMoved { flow, moved, rx_bytes, tx_bytes, rx_fin, tx_fin } => {
                self.on_moved(core, flow, moved, rx_bytes, tx_bytes, rx_fin, tx_fin);
            }
            ToSlow::Peeked { flow: _, tag, now_us, retx_bytes, state } => {
                self.on_peeked(tag, now_us, retx_bytes, state.as_deref());
            }
            ToSlow::FlowRemoved { flow, state } => {
                let c = &mut self.cores[core as usize];
                let Some(key) = c.owners.get_mut(flow as usize).and_then(|o| o.take()) else { return };
                c.free_flows.push(flow);
                self.on_removed(key, &state);
            }
        }
    }

    /// A frame from the kernel side (e.g. ARP from a packet socket) for the slow path.
    pub fn on_kernel_frame(&mut self, data: &[u8]) {
        self.on_frame(0, data);
        self.publish_events();
    }

    fn on_frame(&mut self, core: u8, data: &[u8]) {
        let Ok(eth) = EthernetFrame::new_checked(data) else {
            self.counters.bad_frames += 1;
            return;
        };
        match eth.ethertype() {
            EtherType::Arp => self.on_arp(eth.payload()),
            EtherType::Ipv4 => {
                let Ok(ip) = Ipv4Packet::new_checked(eth.payload()) else {
                    self.counters.bad_frames += 1;
                    return;
                };
                let Ok(tcp) = TcpSegment::new_checked(ip.payload()) else {
                    self.counters.bad_frames += 1;
                    return;
                };
                let src = ip.src_addr();
                let Ok(repr) = TcpRepr::parse(&tcp, src, ip.dst_addr(), true) else {
                    self.counters.bad_frames += 1;
                    return;
                };
                self.on_tcp(core, eth.src_addr(), src, &repr, data);
            }
            _ => {}
        }
    }

    fn on_arp(&mut self, payload: &[u8]) {
        let Ok(pkt) = ArpPacket::new_checked(payload) else { return };
        let Ok(arp) = ArpRepr::parse(&pkt) else { return };
        let sender = arp.source_protocol_addr;
        // Learn (RFC 826 merge): update an entry we have or are waiting for.
        if let Some(n) = self.neigh.get_mut(&sender) {
            n.mac = Some(arp.source_hardware_addr);
            let waiting = std::mem::take(&mut n.waiting);
            for key in waiting {
                if let Some(c) = self.conns.get_mut(&key) {
                    if c.remote_mac.is_none() {
                        c.remote_mac = Some(arp.source_hardware_addr);
                        self.send_syn(key);
                    }
                }
            }
        }
        if arp.operation == ArpOperation::Request && arp.target_protocol_addr == self.cfg.local_ip && self.cfg.arp_reply {
            self.counters.arp_replies += 1;
            let reply = ArpRepr {
                operation: ArpOperation::Reply,
                source_hardware_addr: self.cfg.local_mac,
                source_protocol_addr: self.cfg.local_ip,
                target_hardware_addr: arp.source_hardware_addr,
                target_protocol_addr: sender,
            };
            let f = frames::arp_frame(self.cfg.local_mac, arp.source_hardware_addr, &reply);
            self.cores[0].send(Command::SendFrame(f));
        }
    }

    fn send_tcp(&mut self, core: u8, mac: EthernetAddress, ip: Ipv4Addr, tcp: &TcpRepr) {
        let f = frames::tcp_frame(self.cfg.local_mac, mac, self.cfg.local_ip, ip, tcp);
        self.cores[core as usize].send(Command::SendFrame(f));
    }

    /// RFC 9293 3.10.7.1 / "Reset Generation": the reply to a segment for no connection.
    fn send_rst_for(&mut self, core: u8, mac: EthernetAddress, ip: Ipv4Addr, seg: &TcpRepr) {
        if seg.flags.contains(TcpFlags::RST) {
            return;
        }
        let seg_len = seg.payload_len as u32
            + seg.flags.contains(TcpFlags::SYN) as u32
            + seg.flags.contains(TcpFlags::FIN) as u32;
        let tcp = match seg.ack_number {
            // "If the incoming segment has an ACK field, the reset takes its sequence
            // number from the ACK field of the segment"
            Some(ack) => TcpRepr { seq_number: ack, ack_number: None, flags: TcpFlags::RST, ..self.bare(seg) },
            // "otherwise the reset has sequence number zero and the ACK field is set to
            // the sum of the sequence number and segment length of the incoming segment"
            None => TcpRepr {
                seq_number: 0,
                ack_number: Some(seg.seq_number.wrapping_add(seg_len)),
                flags: TcpFlags::RST | TcpFlags::ACK,
                ..self.bare(seg)
            },
        };
        self.counters.rsts_sent += 1;
        self.send_tcp(core, mac, ip, &tcp);
    }

    fn bare(&self, seg: &TcpRepr) -> TcpRepr {
        TcpRepr {
            src_port: seg.dst_port,
            dst_port: seg.src_port,
            seq_number: 0,
            ack_number: None,
            flags: TcpFlags::default(),
            window_len: 0,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_ranges: SackBlocks::default(),
            timestamp: None,
            payload_len: 0,
        }
    }

    fn on_tcp(&mut self, core: u8, mac: EthernetAddress, src: Ipv4Addr, seg: &TcpRepr, frame: &[u8]) {
        let key = FlowKey::new(u32::from(src), seg.src_port, seg.dst_port);
        let Some(c) = self.conns.get(&key) else {
            if seg.flags.contains(TcpFlags::SYN) && !seg.flags.contains(TcpFlags::ACK) {
                if let Some(lid) = self.pick_listener(seg.dst_port) {
                    self.passive_open(core, lid, key, mac, src, seg);
                    return;
                }
            }
            // The final ACK of a handshake answered with a SYN cookie.
            if seg.flags.contains(TcpFlags::ACK) && !seg.flags.contains(TcpFlags::SYN) && !seg.flags.contains(TcpFlags::RST) {
                if let Some(lid) = self.pick_listener(seg.dst_port) {
                    if self.cookie_ack(core, lid, key, mac, seg, frame) {
                        return;
                    }
                }
            }
            self.send_rst_for(core, mac, src, seg);
            return;
        };
        let phase = c.phase;
        match phase {
            Phase::SynSent { token, iss, sent_at, peer, .. } => self.on_synsent(core, key, token, iss, sent_at, peer, mac, seg),
            Phase::SynRcvd { listener, iss, irs, opts, sent_at, .. } => {
                if seg.flags.contains(TcpFlags::RST) {
                    // RFC 5961 3.2 (and RFC 9293 3.10.7.4): only an RST at exactly RCV.NXT
                    // resets; one elsewhere in the window gets a challenge ACK.
                    if seg.seq_number == irs.wrapping_add(1) {
                        self.counters.rsts_received += 1;
                        if let Some(l) = self.listeners.get_mut(&listener) {
                            l.syn_rcvd = l.syn_rcvd.saturating_sub(1);
                        }
                        self.conns.remove(&key);
                    } else if seq_in(seg.seq_number, irs.wrapping_add(1), self.cfg.layout.rx_buf_size) {
                        let tcp = TcpRepr {
                            seq_number: iss.wrapping_add(1),
                            ack_number: Some(irs.wrapping_add(1)),
                            flags: TcpFlags::ACK,
                            window_len: self.syn_window(),
                            timestamp: opts.ts.map(|v| (tsval(self.now), v)),
                            ..self.bare(seg)
                        };
                        self.counters.challenge_acks += 1;
                        self.send_tcp(core, mac, src, &tcp);
                    }
                    return;
                }
                if seg.flags.contains(TcpFlags::SYN) {
                    // Retransmitted SYN: our SYN-ACK was lost.
                    if seg.seq_number == irs {
                        self.send_synack(key);
                    }
                    return;
                }
                match seg.ack_number {
                    Some(ack) if ack == iss.wrapping_add(1) && seg.seq_number == irs.wrapping_add(1) => {
                        if let Some(l) = self.listeners.get_mut(&listener) {
                            if l.accept_queue_full() {
                                // Linux's listen overflow: the ACK is dropped, the
                                // handshake stays (its SYN-ACK is sent again, at once
                                // when the application accepts), no reset.
                                if !l.waiting.contains(&key) {
                                    l.waiting.push_back(key);
                                }
                                self.counters.accept_queue_overflows += 1;
                                return;
                            }
                        }
                        self.establish_passive(core, key, listener, iss, irs, opts, sent_at, seg, frame);
                    }
                    Some(_) => self.send_rst_for(core, mac, src, seg),
                    None => {}
                }
            }
            Phase::Established => {
                if seg.flags.contains(TcpFlags::RST) {
                    // The fast path already applied RFC 5961 3.2: it forwards only an RST
                    // whose sequence number is exactly RCV.NXT (an in-window one got a
                    // challenge ACK there). A race with installation lands here too and
                    // is handled the same way.
                    self.counters.rsts_received += 1;
                    self.abort_conn(key, ErrorCode::Reset, false);
                    return;
                }
                if seg.flags.contains(TcpFlags::SYN) {
                    return; // a duplicate SYN/SYN-ACK; the fast path ACKs data as usual
                }
                // Raced the installation (or arrived on another core): hand it to the owner.
                let (owner, has_flow) = (c.core, c.flow.is_some());
                if has_flow {
                    self.counters.reinjected += 1;
                    self.cores[owner as usize].send(Command::Reinject(frame.into()));
                }
            }
            Phase::Removing(_) => {}
            Phase::TimeWait { snd_nxt, rcv_nxt, ts, window } => {
                if seg.flags.contains(TcpFlags::RST) {
                    return;
                }
                // Safe reuse of a 4-tuple in TIME-WAIT (RFC 6191, as BSD and Linux do): a
                // new SYN is accepted if its sequence number is above the old
                // connection's, or its timestamp newer, so no old duplicate can be taken
                // for new data. Only for ports that listen.
                if seg.flags.contains(TcpFlags::SYN) && !seg.flags.contains(TcpFlags::ACK) {
                    let newer_ts = match (ts, seg.timestamp) {
                        (Some(old), Some((val, _))) => (val.wrapping_sub(old) as i32) > 0,
                        _ => false,
                    };
                    let newer_seq = (seg.seq_number.wrapping_sub(rcv_nxt) as i32) > 0;
                    if let Some(lid) = self.pick_listener(seg.dst_port) {
                        if newer_ts || (ts.is_none() && newer_seq) {
                            self.counters.time_wait_reused += 1;
                            self.drop_conn(key);
                            self.passive_open(core, lid, key, mac, src, seg);
                        }
                    }
                    return;
                }
                // RFC 9293 3.10.7.4 TIME-WAIT: acknowledge a retransmitted FIN and restart
                // the 2 MSL timeout.
                if seg.flags.contains(TcpFlags::FIN) {
                    let ecr = seg.timestamp.map(|(v, _)| v).or(ts);
                    let tcp = TcpRepr {
                        seq_number: snd_nxt,
                        ack_number: Some(rcv_nxt),
                        flags: TcpFlags::ACK,
                        window_len: window,
                        timestamp: ts.map(|_| (tsval(self.now), ecr.unwrap_or(0))),
                        ..self.bare(seg)
                    };
                    self.send_tcp(core, mac, src, &tcp);
                    let tw = self.cfg.time_wait;
                    self.arm(key, self.now + tw);
                }
            }
        }
    }

    fn peer_opts(seg: &TcpRepr) -> PeerOpts {
        PeerOpts {
            mss: seg.max_seg_size,
            wscale: seg.window_scale,
            ts: seg.timestamp.map(|(v, _)| v),
            sack: seg.sack_permitted,
            ecn: if seg.flags.contains(TcpFlags::ACK) {
                seg.flags.contains(TcpFlags::ECE) && !seg.flags.contains(TcpFlags::CWR)
            } else {
                seg.flags.contains(TcpFlags::ECE | TcpFlags::CWR)
            },
        }
    }

    fn passive_open(&mut self, core: u8, lid: u32, key: FlowKey, mac: EthernetAddress, src: Ipv4Addr, seg: &TcpRepr) {
        let l = self.listeners.get_mut(&lid).expect("indexed listener");
        if l.accept_queue_full() {
            // The accept queue itself is full: the application is not keeping up. Drop;
            // the peer retries (Linux does the same).
            self.counters.syn_backlog_drops += 1;
            return;
        }
        if l.syn_rcvd >= l.backlog {
            // Handshakes fill the SYN queue (as long as the backlog, as Linux's: a SYN
            // flood, or a burst): answer statelessly with a SYN cookie so legitimate
            // clients still get in.
            self.send_cookie_synack(core, key, mac, src, seg);
            return;
        }
        l.syn_rcvd += 1;
        let (app, rcvbuf) = (l.app, l.rcvbuf);
        let iss = self.isn(key);
        self.conns.insert(
            key,
            Conn {
                rcvbuf,
                ..Conn::opening(
                    key,
                    Some(mac),
                    app,
                    core,
                    Phase::SynRcvd {
                        listener: lid,
                        iss,
                        irs: seg.seq_number,
                        opts: Self::peer_opts(seg),
                        retries: 0,
                        sent_at: self.now,
                    },
                )
            },
        );
        self.send_synack(key);
        let rto = self.cfg.syn_rto;
        self.arm(key, self.now + rto);
    }

    /// The SYN-cookie ISN for a handshake (RFC 4987 3.6): a 5-bit time counter (64 s
    /// periods), a 3-bit MSS index and a 24-bit keyed hash of the 4-tuple, the counter
    /// and the peer's ISN. The hash takes the counter as the cookie carries it (5 bits):
    /// the validating side only has those, so hashing the whole period number made every
    /// cookie invalid once the clock passed 32 periods (34 minutes).
    fn cookie(&self, key: FlowKey, irs: u32, t: u32, mss_idx: u32) -> u32 {
        let t = t & 31;
        let h = self.isn_key.hash_one((key.0, irs, t, mss_idx, 0xc0_0c1e_u32)) as u32;
        ((t & 31) << 27) | ((mss_idx & 7) << 24) | (h & 0x00ff_ffff)
    }

    fn cookie_period(&self) -> u32 {
        (self.now.as_nanos() / 64_000_000_000) as u32
    }

    fn send_cookie_synack(&mut self, core: u8, key: FlowKey, mac: EthernetAddress, src: Ipv4Addr, seg: &TcpRepr) {
        let peer_mss = seg.max_seg_size.unwrap_or(536);
        let idx = COOKIE_MSS.iter().rposition(|&m| m <= peer_mss).unwrap_or(0) as u32;
        let iss = self.cookie(key, seg.seq_number, self.cookie_period(), idx);
        // Without state there is nowhere to keep window scale, timestamps or SACK: the
        // cookie handshake offers none of them (the connection works, with a 64 KiB window).
        let tcp = TcpRepr {
            seq_number: iss,
            ack_number: Some(seg.seq_number.wrapping_add(1)),
            flags: TcpFlags::SYN | TcpFlags::ACK,
            window_len: self.syn_window(),
            max_seg_size: Some(self.cfg.mss),
            ..self.bare(seg)
        };
        self.counters.syn_cookies_sent += 1;
        self.send_tcp(core, mac, src, &tcp);
    }

    /// Complete a handshake from a SYN cookie. False if the ACK carries no valid cookie.
    #[allow(clippy::too_many_arguments)]
    fn cookie_ack(&mut self, core: u8, lid: u32, key: FlowKey, mac: EthernetAddress, seg: &TcpRepr, frame: &[u8]) -> bool {
        let Some(ack) = seg.ack_number else { return false };
        let iss = ack.wrapping_sub(1);
        let irs = seg.seq_number.wrapping_sub(1);
        let t = iss >> 27;
        let idx = (iss >> 24) & 7;
        let now = self.cookie_period();
        // Valid for the current and the previous 64-second period.
        let fresh = [now & 31, now.wrapping_sub(1) & 31].contains(&t);
        if !fresh || idx as usize >= COOKIE_MSS.len() || self.cookie(key, irs, t, idx) != iss {
            return false;
        }
        let Some(l) = self.listeners.get_mut(&lid) else { return false };
        let full = l.accept_queue_full();
        l.syn_rcvd += 1; // establish_passive (or the handshake's end) takes it back
        let (app, rcvbuf) = (l.app, l.rcvbuf);
        self.counters.syn_cookies_accepted += 1;
        let opts = PeerOpts { mss: Some(COOKIE_MSS[idx as usize]), wscale: None, ts: None, sack: false, ecn: false };
        self.conns.insert(
            key,
            Conn {
                rcvbuf,
                ..Conn::opening(key, Some(mac), app, core, Phase::SynRcvd { listener: lid, iss, irs, opts, retries: 0, sent_at: self.now })
            },
        );
        if full {
            // Valid, but the accept queue is full: the cookie's handshake becomes a
            // stateful one waiting for room (the peer believes it is connected and may
            // send nothing until the server speaks: dropping its ACK would strand it).
            // Its SYN-ACK is sent again when the application accepts, or on the timer.
            if let Some(l) = self.listeners.get_mut(&lid) {
                l.waiting.push_back(key);
            }
            self.counters.accept_queue_overflows += 1;
            let rto = self.cfg.syn_rto;
            self.arm(key, self.now + rto);
            return true;
        }
        let sent_at = self.now;
        self.establish_passive(core, key, lid, iss, irs, opts, sent_at, seg, frame);
        true
    }

    /// The application accepted: handshakes that waited for room in the accept queue get
    /// their SYN-ACK again now (as many as fit), so the peer's answering ACK completes
    /// them within a round trip instead of at the next SYN-ACK retransmission.
    fn resume_waiting(&mut self, lid: u32) {
        let Some(l) = self.listeners.get_mut(&lid) else { return };
        // Room before the queue is full again (backlog + 1 fit, as Linux).
        let mut room = (l.backlog + 1).saturating_sub(l.unaccepted);
        while room > 0 {
            let Some(l) = self.listeners.get_mut(&lid) else { return };
            let Some(key) = l.waiting.pop_front() else { return };
            let pending = self.conns.get(&key).is_some_and(|c| matches!(c.phase, Phase::SynRcvd { listener, .. } if listener == lid));
            if pending {
                self.send_synack(key);
                room -= 1;
            }
        }
    }

    fn send_synack(&mut self, key: FlowKey) {
        let Some(c) = self.conns.get(&key) else { return };
        let Phase::SynRcvd { iss, irs, opts, .. } = c.phase else { return };
        let (ws, ts) = self.our_syn_opts(Some(opts), tsval(self.now));
        let tcp = TcpRepr {
            src_port: c.local_port,
            dst_port: c.remote_port,
            seq_number: iss,
            ack_number: Some(irs.wrapping_add(1)),
            // RFC 3168 6.1.1: an ECN-setup SYN-ACK carries ECE (not CWR).
            flags: if opts.ecn && self.cfg.cc.ecn {
                TcpFlags::SYN | TcpFlags::ACK | TcpFlags::ECE
            } else {
                TcpFlags::SYN | TcpFlags::ACK
            },
            window_len: self.syn_window_for(c.rcvbuf),
            max_seg_size: Some(self.cfg.mss),
            window_scale: ws,
            sack_permitted: opts.sack,
            sack_ranges: SackBlocks::default(),
            timestamp: ts,
            payload_len: 0,
        };
        let (core, mac, ip) = (c.core, c.remote_mac.expect("known from SYN"), c.remote_ip);
        self.send_tcp(core, mac, ip, &tcp);
    }

    #[allow(clippy::too_many_arguments)]
    fn establish_passive(
        &mut self,
        core: u8,
        key: FlowKey,
        lid: u32,
        iss: u32,
        irs: u32,
        opts: PeerOpts,
        sent_at: Instant,
        seg: &TcpRepr,
        frame: &[u8],
    ) {
        let Some(l) = self.listeners.get_mut(&lid) else { return };
        l.syn_rcvd = l.syn_rcvd.saturating_sub(1);
        let app = l.app;
        let slot = self.apps.get_mut(&app).and_then(|a| a.free_conns.pop_front());
        let flow = self.cores[core as usize].free_flows.pop();
        let (Some(slot), Some(flow)) = (slot, flow) else {
            // Out of resources: give back what we took, reset the peer.
            if let Some(s) = slot {
                self.apps.get_mut(&app).expect("present").free_conns.push_front(s);
            }
            if let Some(f) = flow {
                self.cores[core as usize].free_flows.push(f);
            }
            self.counters.syn_resource_drops += 1;
            let c = self.conns.remove(&key).expect("present");
            self.send_rst_for(core, c.remote_mac.expect("known"), c.remote_ip, seg);
            return;
        };
        self.listeners.get_mut(&lid).expect("present").unaccepted += 1;
        self.apps.get_mut(&app).expect("present").conns += 1;
        let rtt = self.now.saturating_since(sent_at);
        // The ACK completing the handshake carries a scaled window (RFC 7323 2.2).
        let snd_wscale = if opts.wscale.is_some() { opts.wscale.unwrap_or(0) } else { 0 };
        let snd_wnd = (seg.window_len as u32) << snd_wscale;
        let ts_recent = seg.timestamp.map(|(v, _)| v).or(opts.ts);
        let state = self.flow_state(key, app, slot, opts, iss.wrapping_add(1), irs.wrapping_add(1), snd_wnd, ts_recent, rtt);
        self.port_ref(key_local_port(key));
        let c = self.conns.get_mut(&key).expect("present");
        c.slot = Some(slot);
        c.flow = Some(flow);
        c.core = core;
        c.phase = Phase::Established;
        c.port_ref = true;
        c.deadline = None;
        c.mss = state.mss;
        let (remote_ip, remote_port, local_port) = (c.remote_ip, c.remote_port, c.local_port);
        self.by_slot.insert((app, slot), key);
        let link = &mut self.cores[core as usize];
        link.owners[flow as usize] = Some(key);
        link.send(Command::InstallFlow { flow, state: Box::new(state) });
        if seg.payload_len > 0 || seg.flags.contains(TcpFlags::FIN) {
            self.counters.reinjected += 1;
            link.send(Command::Reinject(frame.into()));
        }
        self.cc_start(key, &state);
        self.counters.passive_opens += 1;
        self.post(
            app,
            SpEvent::Accepted {
                listener: lid,
                handle: ConnHandle { conn: slot, core, flow },
                remote_ip: u32::from(remote_ip),
                remote_port,
                local_port,
            },
        );
    }

    #[allow(clippy::too_many_arguments)]
    fn on_synsent(
        &mut self,
        arrived_on: u8,
        key: FlowKey,
        token: u64,
        iss: u32,
        sent_at: Instant,
        peer: Option<(u32, PeerOpts)>,
        mac: EthernetAddress,
        seg: &TcpRepr,
    ) {
        let ack_ok = seg.ack_number == Some(iss.wrapping_add(1));
        if seg.flags.contains(TcpFlags::RST) {
            // RFC 9293 3.10.7.3: "If the ACK was acceptable, then signal to the user
            // 'error: connection reset', drop the segment, enter CLOSED state".
            if ack_ok {
                let app = self.conns[&key].app;
                self.counters.connect_failures += 1;
                self.drop_conn(key);
                self.post(app, SpEvent::ConnectFailed { token, error: ErrorCode::Refused });
            }
            return;
        }
        if !seg.flags.contains(TcpFlags::SYN) {
            match (ack_ok, peer) {
                // Simultaneous open, second half: the ACK of our SYN-ACK (its window is
                // scaled if both sides offered scaling).
                (true, Some((irs, opts))) if seg.seq_number == irs.wrapping_add(1) => {
                    let shift = if opts.wscale.is_some() { opts.wscale.unwrap_or(0).min(14) } else { 0 };
                    let wnd = (seg.window_len as u32) << shift;
                    self.establish_active(arrived_on, key, token, iss, sent_at, mac, irs, opts, wnd, seg, false);
                }
                (true, _) => {}
                (false, _) => {
                    if seg.ack_number.is_some() {
                        let ip = self.conns[&key].remote_ip;
                        let core = self.conns[&key].core;
                        self.send_rst_for(core, mac, ip, seg);
                    }
                }
            }
            return;
        }
        if seg.ack_number.is_none() {
            // RFC 9293 3.10.7.3, SYN-SENT with SYN and no ACK: simultaneous open. Answer
            // with SYN-ACK (our ISN again, with our options) and wait for the ACK.
            let opts = Self::peer_opts(seg);
            let (ws, ts) = self.our_syn_opts(Some(opts), tsval(self.now));
            let syn_window = self.syn_window_for(self.conns.get(&key).map_or(0, |c| c.rcvbuf));
            let bare = self.bare(seg);
            let c = self.conns.get_mut(&key).expect("present");
            if let Phase::SynSent { peer, .. } = &mut c.phase {
                *peer = Some((seg.seq_number, opts));
            }
            c.remote_mac = Some(mac);
            let tcp = TcpRepr {
                seq_number: iss,
                ack_number: Some(seg.seq_number.wrapping_add(1)),
                flags: TcpFlags::SYN | TcpFlags::ACK,
                window_len: syn_window,
                max_seg_size: Some(self.cfg.mss),
                window_scale: ws,
                sack_permitted: opts.sack,
                timestamp: ts,
                ..bare
            };
            let (core, ip) = (c.core, c.remote_ip);
            self.send_tcp(core, mac, ip, &tcp);
            return;
        }
        if !ack_ok {
            // RFC 9293 3.10.7.3: "If SEG.ACK =< ISS or SEG.ACK > SND.NXT, send a reset
            // (unless the RST bit is set ...) and discard the segment."
            let (core, ip) = (self.conns[&key].core, self.conns[&key].remote_ip);
            self.send_rst_for(core, mac, ip, seg);
            return;
        }
        // The window of a SYN-ACK is not scaled.
        let opts = Self::peer_opts(seg);
        self.establish_active(arrived_on, key, token, iss, sent_at, mac, seg.seq_number, opts, seg.window_len as u32, seg, true);
    }

    /// Install an actively opened connection (after a SYN-ACK, or the ACK completing a
    /// simultaneous open) and tell the application.
    ///
    /// The flow goes to the shard the handshake's last segment `arrived_on`, not the one
    /// [`Self::core_for`] guessed when the SYN left: the peer picks the queue its segments
    /// arrive on (on veth, from a random per-socket hash the 4-tuple does not predict), and
    /// the rest of the connection most likely follows the SYN-ACK (docs/decisions.md, 
    /// "Multi-core fast path").
    #[allow(clippy::too_many_arguments)]
    fn establish_active(
        &mut self,
        arrived_on: u8,
        key: FlowKey,
        token: u64,
        iss: u32,
        sent_at: Instant,
        mac: EthernetAddress,
        irs: u32,
        opts: PeerOpts,
        snd_wnd: u32,
        seg: &TcpRepr,
        send_ack: bool,
    ) {
        let core = if (arrived_on as usize) < self.cores.len() { arrived_on } else { self.conns[&key].core };
        let c = self.conns.get_mut(&key).expect("present");
        c.core = core;
        let (app, slot) = (c.app, c.slot.expect("active opens hold a slot"));
        let Some(flow) = self.cores[core as usize].free_flows.pop() else {
            let ip = c.remote_ip;
            self.counters.connect_failures += 1;
            self.send_rst_for(core, mac, ip, seg);
            self.drop_conn(key);
            self.post(app, SpEvent::ConnectFailed { token, error: ErrorCode::NoResources });
            return;
        };
        let rtt = self.now.saturating_since(sent_at);
        // TS.Recent: the segment completing the handshake (a SYN-ACK, or in a
        // simultaneous open the ACK of ours) carries the newest TSval.
        let ts_recent = seg.timestamp.map(|(v, _)| v).or(opts.ts);
        let state = self.flow_state(key, app, slot, opts, iss.wrapping_add(1), irs.wrapping_add(1), snd_wnd, ts_recent, rtt);
        // Complete the handshake: the ACK of the SYN-ACK.
        let ack = TcpRepr {
            seq_number: iss.wrapping_add(1),
            ack_number: Some(irs.wrapping_add(1)),
            flags: TcpFlags::ACK,
            window_len: tas_fastpath::tx::window_field(&state),
            timestamp: if state.flags & F_TS != 0 { Some((tsval(self.now), opts.ts.unwrap_or(0))) } else { None },
            ..self.bare(seg)
        };
        let c = self.conns.get_mut(&key).expect("present");
        c.flow = Some(flow);
        c.phase = Phase::Established;
        c.remote_mac = Some(mac);
        c.deadline = None;
        c.mss = state.mss;
        let (ip, local_port) = (c.remote_ip, c.local_port);
        if send_ack {
            self.send_tcp(core, mac, ip, &ack);
        }
        let link = &mut self.cores[core as usize];
        link.owners[flow as usize] = Some(key);
        link.send(Command::InstallFlow { flow, state: Box::new(state) });
        self.cc_start(key, &state);
        self.counters.active_opens += 1;
        self.post(app, SpEvent::Connected { token, handle: ConnHandle { conn: slot, core, flow }, local_port });
    }

    #[allow(clippy::too_many_arguments)]
    fn flow_state(
        &self,
        key: FlowKey,
        app: u32,
        slot: u32,
        opts: PeerOpts,
        snd_una: u32,
        rcv_nxt: u32,
        snd_wnd: u32,
        ts_recent: Option<u32>,
        rtt: Duration,
    ) -> FlowState {
        let l = self.cfg.layout;
        let c = &self.conns[&key];
        let ts = opts.ts.is_some();
        let (snd_wscale, rcv_wscale) = match opts.wscale {
            Some(w) => (w.min(14), self.rcv_wscale),
            None => (0, 0),
        };
        // Payload per segment: the smaller MSS, less the timestamp option when in use.
        let mss = opts.mss.unwrap_or(536).min(self.cfg.mss) - if ts { 12 } else { 0 };
        let app_slot = self.apps.get(&app).map_or(0, |a| a.slot);
        let rtt_us = (rtt.as_micros() as u32).max(1);
        let mut f = FlowState {
            remote_ip: u32::from(c.remote_ip),
            local_port: c.local_port,
            remote_port: c.remote_port,
            rcv_nxt,
            rx_avail: self.rcv_space(c.rcvbuf),
            rx_head: 0,
            rx_size_log2: FlowState::size_log2(l.rx_buf_size),
            rx_base: l.rx_offset(slot) as u32,
            ts_recent: ts_recent.unwrap_or(0),
            snd_una,
            snd_wnd,
            // Nothing sent yet: no ACK beyond snd_una is acceptable (see rx.rs).
            recover: snd_una,
            app: app_slot,
            conn: slot,
            snd_wscale,
            rcv_wscale,
            tx_base: l.tx_offset(slot) as u32,
            tx_size_log2: FlowState::size_log2(l.tx_buf_size),
            remote_mac: c.remote_mac.map_or([0; 6], |m| m.0),
            mss,
            progress_us: self.now_us(),
            ..FlowState::default()
        };
        if ts {
            f.flags |= F_TS;
        }
        if opts.sack {
            f.flags |= F_SACK;
        }
        if opts.ecn && self.cfg.cc.ecn {
            f.flags2 |= F2_ECN;
        }
        if self.cfg.keepalive {
            f.flags |= F_KEEPALIVE;
        }
        f.heard_us = self.now_us();
        tas_fastpath::rx::rtt_sample(&mut f, rtt_us);
        f
    }

    fn on_note(&mut self, key: FlowKey, note: FlowNote) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        match note {
            FlowNote::PeerFin { after_ours } => {
                c.peer_fin = true;
                // RFC 9293 3.6: whoever sent its FIN first (or both, when the FINs cross:
                // CLOSING) goes through TIME-WAIT.
                if after_ours {
                    c.we_closed_first = true;
                }
            }
            FlowNote::FinAcked => {
                c.fin_acked = true;
                if !c.peer_fin {
                    c.we_closed_first = true;
                    let t = self.cfg.fin_wait2_timeout;
                    self.arm(key, self.now + t);
                }
            }
            FlowNote::Rto { snd_una, recover } => {
                c.rto_rec.on_rto(self.now, snd_una, recover);
                c.sb.reset();
                c.sack_deadline = None;
                let p = self.cfg.cc;
                if let (Some(cc), Some(flow)) = (c.cc.as_mut(), c.flow) {
                    if let Some(l) = cc.on_timeout(&p) {
                        let core = c.core;
                        self.cores[core as usize].send(Command::SetCc { flow, cwnd: l.cwnd, rate_kbps: l.rate_kbps });
                    }
                }
                return;
            }
            FlowNote::GaveUp => {
                self.counters.timeouts += 1;
                self.abort_conn(key, ErrorCode::TimedOut, true);
                return;
            }
        }
        let c = &self.conns[&key];
        if c.peer_fin && c.fin_acked && matches!(c.phase, Phase::Established) {
            let time_wait = c.we_closed_first;
            self.remove_flow(key, Removal::Close { time_wait });
        }
    }

    fn remove_flow(&mut self, key: FlowKey, how: Removal) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        let Some(flow) = c.flow else { return };
        c.phase = Phase::Removing(how);
        c.deadline = None;
        let core = c.core;
        self.cores[core as usize].send(Command::RemoveFlow { flow });
    }

    /// Reset a connection in whatever state it is.
    fn abort_conn(&mut self, key: FlowKey, error: ErrorCode, send_rst: bool) {
        let Some(c) = self.conns.get(&key) else { return };
        match c.phase {
            Phase::Established => self.remove_flow(key, Removal::Reset { send_rst, error }),
            Phase::Removing(_) => {}
            Phase::SynSent { token, .. } => {
                let app = c.app;
                self.drop_conn(key);
                self.post(app, SpEvent::ConnectFailed { token, error });
            }
            Phase::SynRcvd { listener, .. } => {
                if let Some(l) = self.listeners.get_mut(&listener) {
                    l.syn_rcvd = l.syn_rcvd.saturating_sub(1);
                }
                self.conns.remove(&key);
            }
            Phase::TimeWait { .. } => self.drop_conn(key),
        }
    }

    fn on_removed(&mut self, key: FlowKey, st: &FlowState) {
        let Some(c) = self.conns.get_mut(&key) else { return };
        let how = match c.phase {
            Phase::Removing(h) => h,
            _ => Removal::Reset { send_rst: true, error: ErrorCode::Aborted },
        };
        c.flow = None;
        let (app, slot, core, mac, ip) = (c.app, c.slot, c.core, c.remote_mac, c.remote_ip);
        let (lport, rport) = (c.local_port, c.remote_port);
        match how {
            Removal::Close { time_wait } => {
                self.counters.closes += 1;
                if let Some(s) = slot {
                    self.post(app, SpEvent::Closed { conn: s, error: None });
                }
                if time_wait {
                    // Keep the 4-tuple (and its port) for 2 MSL, but free the app's slot.
                    let c = self.conns.get_mut(&key).expect("present");
                    c.phase = Phase::TimeWait {
                        snd_nxt: st.snd_nxt(),
                        rcv_nxt: st.rcv_nxt,
                        ts: (st.flags & F_TS != 0).then_some(st.ts_recent),
                        window: tas_fastpath::tx::window_field(st),
                    };
                    if let Some(s) = c.slot.take() {
                        self.by_slot.remove(&(app, s));
                        if let Some(a) = self.apps.get_mut(&app) {
                            a.free_conns.push_back(s);
                            a.conns -= 1;
                        }
                    }
                    let tw = self.cfg.time_wait;
                    self.arm(key, self.now + tw);
                    self.maybe_finish_detach(app);
                } else {
                    self.drop_conn(key);
                }
            }
            Removal::Reset { send_rst, error } => {
                self.counters.resets += 1;
                if send_rst {
                    if let Some(mac) = mac {
                        let tcp = TcpRepr {
                            src_port: lport,
                            dst_port: rport,
                            seq_number: st.snd_nxt(),
                            ack_number: Some(st.rcv_nxt),
                            flags: TcpFlags::RST | TcpFlags::ACK,
                            window_len: 0,
                            max_seg_size: None,
                            window_scale: None,
                            sack_permitted: false,
                            sack_ranges: SackBlocks::default(),
                            timestamp: None,
                            payload_len: 0,
                        };
                        self.counters.rsts_sent += 1;
                        self.send_tcp(core, mac, ip, &tcp);
                    }
                }
                if let Some(s) = slot {
                    self.post(app, SpEvent::Closed { conn: s, error: Some(error) });
                }
                self.drop_conn(key);
            }
        }
    }

    /// Reset every connection politely (RST to each peer), e.g. at shutdown.
    pub fn reset_all(&mut self) {
        let keys: Vec<FlowKey> = self.conns.keys().copied().collect();
        for k in keys {
            self.abort_conn(k, ErrorCode::Aborted, true);
        }
    }

    /// The TS clock shift, for tests that decode our timestamps.
    pub const TS_TICK_SHIFT: u32 = TS_TICK_SHIFT;
}

impl Conn {
    /// A connection being opened: no slot, flow or port reference yet; the addresses
    /// come from the 4-tuple.
    fn opening(key: FlowKey, remote_mac: Option<EthernetAddress>, app: u32, core: u8, phase: Phase) -> Conn {
        Conn {
            key,
            remote_ip: Ipv4Addr::from((key.0 >> 32) as u32),
            remote_port: (key.0 >> 16) as u16,
            local_port: key.0 as u16,
            remote_mac,
            app,
            slot: None,
            core,
            flow: None,
            phase,
            peer_fin: false,
            fin_acked: false,
            we_closed_first: false,
            port_ref: false,
            active: false,
            deadline: None,
            mss: 0,
            sb: Default::default(),
            sack_deadline: None,
            rcv_start: 0,
            cc: None,
            cc_alg: None,
            info_opts: 0,
            rcvbuf: 0,
            snd_start: 0,
            rto_rec: Default::default(),
            holders: None,
        }
    }

    fn state_name(&self) -> &'static str {
        match self.phase {
            Phase::SynSent { .. } => "SYN-SENT",
            Phase::SynRcvd { .. } => "SYN-RECEIVED",
            Phase::Established => match (self.peer_fin, self.fin_acked) {
                (false, false) => "ESTABLISHED",
                (true, false) => "CLOSE-WAIT",
                (false, true) => "FIN-WAIT-2",
                (true, true) => "CLOSING",
            },
            Phase::Removing(_) => "CLOSING",
            Phase::TimeWait { .. } => "TIME-WAIT",
        }
    }
}

fn key_local_port(k: FlowKey) -> u16 {
    k.0 as u16
}

/// True if `seq` is within `[start, start + wnd)`.
fn seq_in(seq: u32, start: u32, wnd: u32) -> bool {
    seq.wrapping_sub(start) < wnd.max(1)
}

#[allow(dead_code)]
fn _assert_send() {
    fn is_send<T: Send>() {}
    is_send::<CoreLink>();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seq_helpers() {
        assert!(seq_in(5, 4, 2) && !seq_in(6, 4, 2));
        assert_eq!(key_local_port(FlowKey::new(1, 2, 3)), 3);
    }
}
