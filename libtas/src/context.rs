//! [`Context`]: one application context (one per thread) and the native API on it.
//!
//! Every operation has a non-blocking core (it never sleeps, so a single-threaded
//! simulator can step the application and the service alternately) and a blocking
//! wrapper that loops over the core and [`Context::wait`].
//!
//! ## Bookkeeping
//! Connections and listeners live in local tables indexed by [`ConnId`] / [`ListenerId`]
//! (index + generation, so a stale handle never reaches a reused entry). The service's
//! connection slot of an established connection maps back to the local entry through
//! `slot_map`. Per connection the context keeps its own ring positions:
//!
//! - receive: `rx_read` (free-running read position), `rx_avail` (bytes readable),
//!   `rx_unacked` (read but not yet reported with `RxConsumed`). The fast path may write
//!   at most `rx_buf_size - rx_avail - rx_unacked` more bytes; an `RxData` beyond that
//!   is a protocol violation.
//! - transmit: `tx_write` (free-running write position), `tx_free`, `tx_unposted`
//!   (written but not yet announced with `TxAdded`). `TxFreed` may return at most the
//!   bytes in flight (`tx_buf_size - tx_free - tx_unposted`).
//!
//! Doorbells that do not fit in a full queue stay in these counters and go out at the
//! next [`Context::poll`], merged.

use std::collections::{HashMap, VecDeque};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tas_proto::queue::ShmQueue;
use tas_proto::shm::{ConnHandle, ConnInfo, ConnKey, ControlRequest, Doorbell, FpEvent, Layout, SpEvent};
use tas_proto::shm::{ADOPT_LAST, ADOPT_RX_FIN, ADOPT_TX_FIN};

use crate::error::{Error, Result};
use crate::shm::{Region, RegionMapping};
use crate::sys::{self, PollFd, SeqPacket};

/// Default time [`Context::wait`] busy-polls before it sleeps: waking a sleeping thread
/// costs about 20 µs on the machines this was measured on, so spinning for a few tens of
/// microseconds first keeps request/response latency low without burning a core when idle.
pub const DEFAULT_SPIN: Duration = Duration::from_micros(50);
/// Environment variable that overrides [`DEFAULT_SPIN`] (microseconds).
pub const SPIN_ENV: &str = "TAS_SPIN_US";
/// Longest sleep while doorbells or requests wait for queue space: the fast path does not
/// wake applications when it frees queue entries, so re-check at this interval.
const BACKLOG_RECHECK: Duration = Duration::from_millis(1);
/// How long [`Context::attach_to`] waits for the service's reply.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(10);
const NONE: u32 = u32::MAX;

/// A connection of this context. Cheap to copy; stale after the connection was closed
/// with [`Context::close`] / [`Context::abort`] (calls then fail with
/// [`Error::InvalidHandle`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    idx: u32,
    gen: u32,
}

impl ConnId {
    /// A number unique among this context's live connections (for maps and logs; the
    /// generation makes it unique over time too).
    pub fn as_u64(self) -> u64 {
        (self.gen as u64) << 32 | self.idx as u64
    }
}

/// Options of a listener ([`Context::listen_with`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ListenOptions {
    /// Share the port with other listeners that set this too (`SO_REUSEPORT`).
    pub reuse_port: bool,
    /// With `reuse_port`: take no connections until this context has accepted one, while
    /// other members can take them (for a listener that may only be held, like the one a
    /// pre-forking server's parent opens).
    pub accept_on_demand: bool,
    /// Receive buffer of the accepted connections, bytes (`SO_RCVBUF`; 0: the receive
    /// ring): the window they offer never exceeds it.
    pub rcvbuf: u32,
}

impl ListenOptions {
    /// Options with `reuse_port` set.
    pub fn reuse_port() -> Self {
        ListenOptions { reuse_port: true, ..ListenOptions::default() }
    }

    /// Options of [`Context::listen_start_shared`]: `reuse_port` and `accept_on_demand`.
    pub fn shared() -> Self {
        ListenOptions { reuse_port: true, accept_on_demand: true, rcvbuf: 0 }
    }

    /// These options with [`ListenOptions::rcvbuf`] set.
    pub fn with_rcvbuf(self, rcvbuf: u32) -> Self {
        ListenOptions { rcvbuf, ..self }
    }
}

/// A listener of this context.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ListenerId {
    idx: u32,
    gen: u32,
}

/// Tag of an asynchronous listen request ([`Context::listen_start`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Token(u64);

impl Token {
    /// The raw value (as sent to the service).
    pub fn get(self) -> u64 {
        self.0
    }
}

/// Where a connection is in its life, as this application sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Active open in progress.
    Connecting,
    /// Open in both directions.
    Established,
    /// The peer closed its direction (EOF after the buffered data); sending still works.
    PeerClosed,
    /// This side shut its direction down; receiving still works.
    LocalClosed,
    /// Both directions shut; waiting for the service to finish the close.
    Closing,
    /// Closed in an orderly way; buffered data can still be read.
    Closed,
    /// The open failed or the connection was reset/aborted.
    Failed(Error),
    /// Not a handle of this context (closed by the application, or never existed).
    Invalid,
}

/// Something happened that an event-driven application may act on. Events are coalesced
/// per connection: one `Readable` stands for any amount of new data (or EOF).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A listen request from [`Context::listen_start`] completed.
    Listening(Token, Result<ListenerId>),
    /// Connections wait on this listener: [`Context::accept`] them.
    Accept(ListenerId),
    /// An active open completed; the connection is established.
    Connected(ConnId),
    /// New data (or EOF) can be read.
    Readable(ConnId),
    /// Transmit space was freed (or first became available).
    Writable(ConnId),
    /// The connection is gone (`None`: orderly close) or its open failed; buffered data
    /// can still be read. Release the handle with [`Context::close`].
    Closed(ConnId, Option<Error>),
}

const EV_CONNECTED: u8 = 1;
const EV_READABLE: u8 = 2;
const EV_WRITABLE: u8 = 4;
const EV_CLOSED: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shutdown {
    No,
    Wanted,
    Posted,
}

struct Conn {
    gen: u32,
    live: bool,
    /// The application gave the handle up (close/abort, or an accept nobody wanted): we
    /// drain incoming data and free the entry when the service says Closed.
    released: bool,
    /// Waiting in a listener's accept queue (the application has no handle yet).
    hidden: bool,
    connecting: bool,
    handle: Option<ConnHandle>,
    peer: SocketAddrV4,
    local_port: u16,
    rx_read: u64,
    rx_avail: u32,
    rx_unacked: u32,
    rx_fin: bool,
    /// Unread data copied out of the ring when the service closed the slot.
    rescued: Option<(Box<[u8]>, usize)>,
    tx_write: u64,
    tx_free: u32,
    tx_unposted: u32,
    shutdown: Shutdown,
    abort_wanted: bool,
    /// The service said the connection is gone (or the open failed), with this error.
    closed: Option<Option<Error>>,
    /// Pending event bits (EV_*).
    ev: u8,
    /// This index is in `ready` (survives reuse of the entry, so `ready` stays bounded).
    queued: bool,
    /// This index is in `dirty_conns` (likewise).
    dirty: bool,
    /// Given up while another process still held the connection ([`Context::forget`]):
    /// the entry waits, posting nothing, until the connection moves away (`Closed` with
    /// `Moved`) or the service says nobody holds it any more (`Orphaned`: closed then).
    forgotten: bool,
    /// The service said nobody else holds the connection (`Orphaned`) before this context
    /// gave it up: the answer to its release ("another process holds it") and the exit of
    /// that other process can arrive in one poll, before [`Context::forget`] runs; the
    /// close then happens at once instead of waiting for an `Orphaned` already taken.
    orphaned: bool,
    /// When this context last took a data-arrival event for the connection
    /// (`TCP_INFO`'s `last_data_recv`).
    rx_last: Option<std::time::Instant>,
}

impl Conn {
    fn vacant() -> Conn {
        Conn {
            gen: 0,
            live: false,
            released: false,
            hidden: false,
            connecting: false,
            handle: None,
            peer: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
            local_port: 0,
            rx_read: 0,
            rx_avail: 0,
            rx_unacked: 0,
            rx_fin: false,
            rescued: None,
            tx_write: 0,
            tx_free: 0,
            tx_unposted: 0,
            shutdown: Shutdown::No,
            abort_wanted: false,
            closed: None,
            ev: 0,
            queued: false,
            dirty: false,
            forgotten: false,
            orphaned: false,
            rx_last: None,
        }
    }
}

/// The reply to an `Info` request as its parts come ([`ConnInfo::events`]).
#[derive(Debug, Clone, Copy, Default)]
struct InfoReply {
    words: [u32; tas_proto::shm::INFO_WORDS],
    /// Parts received (they come in order).
    parts: usize,
}

/// What became of an adopt or release request ([`Context::adopt_result`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Adoption {
    /// The connection is now in this context (moved here, or it already was, for the last
    /// holder's release); `last`: it was the reply to the last holder's release, so the
    /// application closes it now.
    Here {
        /// The connection's handle in this context.
        conn: ConnId,
        /// No other process holds it.
        last: bool,
    },
    /// A release, and another process still holds the connection.
    NotLast,
}

struct PendingAdopt {
    peer: SocketAddrV4,
    local_port: u16,
    result: Option<Result<Adoption>>,
}

struct Listener {
    gen: u32,
    live: bool,
    service_id: u32,
    port: u16,
    queue: VecDeque<u32>,
    /// Connections ever queued on this listener (for edge-triggered readiness).
    arrived: u64,
    ev: bool,
    queued: bool,
}

struct PendingListen {
    port: u16,
    result: Option<Result<ListenerId>>,
}

/// Receive-side data and the FIN the fast path reported for a slot the application
/// has not seen opened yet (its `Accepted`/`Connected` is still on the way).
#[derive(Default, Clone, Copy)]
struct Orphan {
    rx: u32,
    fin: bool,
}

enum Ready {
    Conn(u32),
    Listener(u32),
    Listen(u64),
}

struct CoreQueues {
    to_fp: ShmQueue,
    to_app: ShmQueue,
    /// Pushed since the last publish.
    dirty: bool,
}

/// One attached application context: its shared region, queues, connections and
/// listeners. Use one per thread (it is `Send`, not `Sync`).
pub struct Context {
    fp: Vec<CoreQueues>,
    sp_events: ShmQueue,
    requests: ShmQueue,
    requests_dirty: bool,
    pending_requests: VecDeque<ControlRequest>,
    // Declared after the queues, which point into it.
    region: Region,
    app_eventfd: Option<OwnedFd>,
    doorbells: Vec<Option<Arc<OwnedFd>>>,
    lifeline: Option<SeqPacket>,
    local_ip: Ipv4Addr,
    app_id: u32,
    conns: Vec<Conn>,
    free_conns: Vec<u32>,
    slot_map: Vec<u32>,
    orphans: HashMap<u32, Orphan>,
    listeners: Vec<Listener>,
    free_listeners: Vec<u32>,
    listener_map: HashMap<u32, u32>,
    pending_listens: HashMap<u64, PendingListen>,
    pending_connects: HashMap<u64, u32>,
    /// `Info` requests and the parts of their replies that came.
    pending_infos: HashMap<u64, InfoReply>,
    /// Adopt and release requests (decisions §26).
    pending_adopts: HashMap<u64, PendingAdopt>,
    dirty_conns: Vec<u32>,
    ready: VecDeque<Ready>,
    out: VecDeque<Event>,
    broken: Option<Error>,
    next_token: u64,
    spin: Duration,
    /// The application takes events ([`Context::next_event`]): then `wait` does not sleep
    /// while some are pending.
    events_used: bool,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("app_id", &self.app_id)
            .field("local_ip", &self.local_ip)
            .field("layout", self.region.layout())
            .field("broken", &self.broken)
            .finish_non_exhaustive()
    }
}

/// A zero-copy view of a connection's readable bytes (see [`Context::recv_view`]).
/// The bytes stay in the receive ring until [`RecvView::consume`] marks them read.
pub struct RecvView<'a> {
    ctx: &'a mut Context,
    idx: u32,
}

impl std::fmt::Debug for RecvView<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvView").field("len", &self.len()).field("eof", &self.is_eof()).finish()
    }
}

impl RecvView<'_> {
    /// The readable bytes: up to two slices, the second non-empty only when the data
    /// wraps around the end of the ring.
    pub fn slices(&self) -> (&[u8], &[u8]) {
        self.ctx.readable_slices(self.idx)
    }

    /// Number of readable bytes.
    pub fn len(&self) -> usize {
        self.ctx.conns[self.idx as usize].rx_avail as usize
    }

    /// True if nothing is readable (then [`RecvView::is_eof`] is true: a view is only
    /// handed out with data or at EOF).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if the peer closed its direction and every byte before that is in this view
    /// (or was consumed).
    pub fn is_eof(&self) -> bool {
        let c = &self.ctx.conns[self.idx as usize];
        c.rx_fin || c.closed.is_some()
    }

    /// Copy up to `dst.len()` of the readable bytes into `dst` (without consuming them);
    /// returns how many.
    pub fn copy_to(&self, dst: &mut [u8]) -> usize {
        let (a, b) = self.slices();
        let n = dst.len().min(a.len() + b.len());
        let k = n.min(a.len());
        dst[..k].copy_from_slice(&a[..k]);
        dst[k..n].copy_from_slice(&b[..n - k]);
        n
    }

    /// Mark the first `n` readable bytes as read (this reopens the receive window).
    /// `n` larger than [`RecvView::len`] is an [`Error::InvalidArgument`].
    pub fn consume(self, n: usize) -> Result<()> {
        if n > self.len() {
            return Err(Error::InvalidArgument);
        }
        if n > 0 {
            self.ctx.consume(self.idx, n as u32);
        }
        Ok(())
    }
}

impl Context {
    /// Attach to the service at `$TAS_SOCKET` (default `/run/tas/tasd.sock`), named after
    /// the program.
    pub fn attach() -> Result<Context> {
        let path = std::env::var_os(tas_proto::attach::SOCKET_ENV)
            .map(std::path::PathBuf::from)
            .unwrap_or_else(|| tas_proto::attach::DEFAULT_APP_SOCKET.into());
        let name = std::env::args_os()
            .next()
            .and_then(|a| Path::new(&a).file_name().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "app".to_owned());
        Context::attach_to(path, &name)
    }

    /// Attach to the service listening at `path`, giving `name` for its operators.
    pub fn attach_to(path: impl AsRef<Path>, name: &str) -> Result<Context> {
        let path = path.as_ref();
        let (ok, fds, sock) = crate::attach::handshake(path, name, ATTACH_TIMEOUT)?;
        if fds.len() != 2 + ok.fp_cores as usize {
            return Err(Error::Protocol("the attach reply passed the wrong number of descriptors"));
        }
        let mut fds = fds.into_iter();
        let (Some(region_fd), Some(app_eventfd)) = (fds.next(), fds.next()) else {
            return Err(Error::Protocol("the attach reply passed the wrong number of descriptors"));
        };
        let size = usize::try_from(ok.region_size).map_err(|_| Error::Protocol("region size overflows"))?;
        let mapping = RegionMapping::map_fd(region_fd.as_fd(), size)?;
        drop(region_fd); // the mapping stays valid without the descriptor
        let doorbells = fds.map(|fd| Some(Arc::new(fd))).collect();
        let mut ctx = Context::build(mapping, Some(app_eventfd), doorbells, Ipv4Addr::from(ok.local_ip))?;
        ctx.lifeline = Some(sock);
        ctx.app_id = ok.app_id;
        Ok(ctx)
    }

    /// Build a context over a region that is already mapped, for a service in the same
    /// process (the deterministic simulator). `app_eventfd` is what [`Context::wait`]
    /// sleeps on (without one it only spins and yields); `core_doorbells[i]` is written
    /// when fast-path core `i` sleeps and this context posted to it; there must be one
    /// entry per fast-path queue pair of the region.
    ///
    /// # Safety
    /// The region must have been initialised by a service (header written, every queue
    /// initialised) and no other application-side endpoint of its queues may exist: at
    /// most one `Context` per region, ever, and the service holds only the service-side
    /// endpoints.
    #[allow(unsafe_code)]
    pub unsafe fn from_parts(
        region: RegionMapping,
        app_eventfd: Option<OwnedFd>,
        core_doorbells: Vec<Option<Arc<OwnedFd>>>,
        local_ip: Ipv4Addr,
    ) -> Result<Context> {
        Context::build(region, app_eventfd, core_doorbells, local_ip)
    }

    fn build(
        mapping: RegionMapping,
        app_eventfd: Option<OwnedFd>,
        doorbells: Vec<Option<Arc<OwnedFd>>>,
        local_ip: Ipv4Addr,
    ) -> Result<Context> {
        let region = Region::new(mapping)?;
        let layout = *region.layout();
        if doorbells.len() != layout.num_fp_queues as usize {
            return Err(Error::Protocol("the number of doorbell eventfds differs from the region's queue pairs"));
        }
        // Each queue gets exactly one app-side endpoint, here.
        let fp = (0..layout.num_fp_queues)
            .map(|i| CoreQueues { to_fp: region.to_fp(i), to_app: region.to_app(i), dirty: false })
            .collect();
        let spin = std::env::var(SPIN_ENV)
            .ok()
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_micros)
            .unwrap_or(DEFAULT_SPIN);
        Ok(Context {
            fp,
            sp_events: region.sp_events(),
            requests: region.requests(),
            requests_dirty: false,
            pending_requests: VecDeque::new(),
            app_eventfd,
            doorbells,
            lifeline: None,
            local_ip,
            app_id: 0,
            conns: Vec::new(),
            free_conns: Vec::new(),
            slot_map: vec![NONE; layout.conn_slots as usize],
            orphans: HashMap::new(),
            listeners: Vec::new(),
            free_listeners: Vec::new(),
            listener_map: HashMap::new(),
            pending_listens: HashMap::new(),
            pending_connects: HashMap::new(),
            pending_infos: HashMap::new(),
            pending_adopts: HashMap::new(),
            dirty_conns: Vec::new(),
            ready: VecDeque::new(),
            out: VecDeque::new(),
            broken: None,
            next_token: 1,
            spin,
            events_used: false,
            region,
        })
    }

    // ---- small accessors ------------------------------------------------------------------

    /// The service's IPv4 address: the local address of every connection.
    pub fn local_ip(&self) -> Ipv4Addr {
        self.local_ip
    }

    /// The id the service gave this context (0 for a context built with `from_parts`).
    pub fn app_id(&self) -> u32 {
        self.app_id
    }

    /// The region's geometry, as read from its (validated) header.
    pub fn layout(&self) -> Layout {
        *self.region.layout()
    }

    /// How long [`Context::wait`] busy-polls before sleeping (default [`DEFAULT_SPIN`], or
    /// `$TAS_SPIN_US`). Zero sleeps at once.
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// `Err` with the reason if the context became unusable (the service broke the
    /// protocol or went away).
    pub fn health(&self) -> Result<()> {
        match self.broken {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn fail(&mut self, e: Error) {
        if self.broken.is_none() {
            self.broken = Some(e);
        }
    }

    fn next_token(&mut self) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        t
    }

    fn conn_idx(&self, c: ConnId) -> Result<usize> {
        match self.conns.get(c.idx as usize) {
            Some(x) if x.live && x.gen == c.gen && !x.released && !x.hidden => Ok(c.idx as usize),
            _ => Err(Error::InvalidHandle),
        }
    }

    fn listener_idx(&self, l: ListenerId) -> Result<usize> {
        match self.listeners.get(l.idx as usize) {
            Some(x) if x.live && x.gen == l.gen => Ok(l.idx as usize),
            _ => Err(Error::InvalidHandle),
        }
    }

    fn alloc_conn(&mut self) -> usize {
        let tx_free = self.region.layout().tx_buf_size;
        let idx = match self.free_conns.pop() {
            Some(i) => i as usize,
            None => {
                self.conns.push(Conn::vacant());
                self.conns.len() - 1
            }
        };
        let old = &self.conns[idx];
        let (gen, queued, dirty) = (old.gen, old.queued, old.dirty);
        self.conns[idx] = Conn { gen, live: true, tx_free, queued, dirty, ev: 0, ..Conn::vacant() };
        idx
    }

    fn free_conn(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        if let Some(h) = c.handle.take() {
            self.slot_map[h.conn as usize] = NONE;
        }
        c.live = false;
        c.gen = c.gen.wrapping_add(1);
        c.rescued = None;
        c.ev = 0;
        self.free_conns.push(idx as u32);
    }

    fn conn_id(&self, idx: usize) -> ConnId {
        ConnId { idx: idx as u32, gen: self.conns[idx].gen }
    }

    fn mark(&mut self, idx: usize, bit: u8) {
        let c = &mut self.conns[idx];
        c.ev |= bit;
        if !c.hidden && !c.released && !c.queued {
            c.queued = true;
            self.ready.push_back(Ready::Conn(idx as u32));
        }
    }

    fn mark_listener(&mut self, lidx: usize) {
        let l = &mut self.listeners[lidx];
        l.ev = true;
        if !l.queued {
            l.queued = true;
            self.ready.push_back(Ready::Listener(lidx as u32));
        }
    }

    // ---- posting to the service -----------------------------------------------------------

    /// Push the connection's accumulated doorbells; what does not fit waits in the
    /// counters and the connection goes on the dirty list.
    fn flush_conn(&mut self, idx: usize) {
        let c = &mut self.conns[idx];
        let Some(h) = c.handle else { return };
        if c.forgotten {
            return; // another process may still use the connection: post nothing
        }
        let q = &mut self.fp[h.core as usize];
        let mut ok = true;
        if c.tx_unposted > 0 {
            if q.to_fp.push(Doorbell::TxAdded { flow: h.flow, conn: h.conn, bytes: c.tx_unposted }.encode()) {
                c.tx_unposted = 0;
                q.dirty = true;
            } else {
                ok = false;
            }
        }
        if c.rx_unacked > 0 {
            if q.to_fp.push(Doorbell::RxConsumed { flow: h.flow, conn: h.conn, bytes: c.rx_unacked }.encode()) {
                c.rx_unacked = 0;
                q.dirty = true;
            } else {
                ok = false;
            }
        }
        // FIN only after every TxAdded (same queue, so FIFO keeps the order).
        if c.shutdown == Shutdown::Wanted && c.tx_unposted == 0 {
            if q.to_fp.push(Doorbell::ShutdownTx { flow: h.flow, conn: h.conn }.encode()) {
                c.shutdown = Shutdown::Posted;
                q.dirty = true;
            } else {
                ok = false;
            }
        }
        if !ok && !c.dirty {
            c.dirty = true;
            self.dirty_conns.push(idx as u32);
        }
    }

    fn request(&mut self, r: ControlRequest) {
        if self.pending_requests.is_empty() && self.requests.push(r.encode()) {
            self.requests_dirty = true;
        } else {
            self.pending_requests.push_back(r);
        }
    }

    fn flush_backlog(&mut self) {
        while let Some(r) = self.pending_requests.front() {
            if !self.requests.push(r.encode()) {
                break;
            }
            self.pending_requests.pop_front();
            self.requests_dirty = true;
        }
        if !self.dirty_conns.is_empty() {
            let dirty = std::mem::take(&mut self.dirty_conns);
            for idx in dirty {
                self.conns[idx as usize].dirty = false;
                if self.conns[idx as usize].live {
                    self.flush_conn(idx as usize);
                }
            }
        }
    }

    fn has_backlog(&self) -> bool {
        !self.pending_requests.is_empty() || !self.dirty_conns.is_empty()
    }

    /// Make pushed descriptors visible, and wake the consumers that sleep. The slow path
    /// has no eventfd of its own: a sleeping request-queue consumer is woken through fast-path
    /// core 0's doorbell, and the service forwards the wake-up to the slow path.
    fn publish(&mut self) {
        for (i, q) in self.fp.iter_mut().enumerate() {
            if q.dirty {
                q.dirty = false;
                if q.to_fp.publish() {
                    if let Some(Some(fd)) = self.doorbells.get(i) {
                        sys::eventfd_signal(fd.as_fd());
                    }
                }
            }
        }
        if self.requests_dirty {
            self.requests_dirty = false;
            if self.requests.publish() {
                if let Some(Some(fd)) = self.doorbells.first() {
                    sys::eventfd_signal(fd.as_fd());
                }
            }
        }
    }

    // ---- taking events from the service ---------------------------------------------------

    /// Drain every queue, apply the events, and post pending doorbells and requests.
    /// Never blocks. Returns the number of descriptors taken from the service.
    pub fn poll(&mut self) -> usize {
        if self.broken.is_some() {
            return 0;
        }
        self.flush_backlog();
        let mut n = 0;
        for core in 0..self.fp.len() {
            n += self.drain_fp(core);
        }
        n += self.drain_sp();
        self.flush_backlog();
        self.publish();
        n
    }

    fn drain_fp(&mut self, core: usize) -> usize {
        let mut n = 0;
        while self.broken.is_none() {
            let d = match self.fp[core].to_app.pop() {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(_) => {
                    self.fail(Error::Protocol("a fast-path event queue has a corrupt index"));
                    break;
                }
            };
            n += 1;
            match FpEvent::decode(&d) {
                Ok(ev) => self.on_fp_event(core, ev),
                Err(_) => self.fail(Error::Protocol("unknown descriptor on a fast-path event queue")),
            }
        }
        if n > 0 {
            self.fp[core].to_app.release();
        }
        n
    }

    fn mapped(&mut self, conn: u32) -> Option<Option<usize>> {
        if conn >= self.region.layout().conn_slots {
            self.fail(Error::Protocol("an event names a connection slot out of range"));
            return None;
        }
        let idx = self.slot_map[conn as usize];
        Some((idx != NONE).then_some(idx as usize))
    }

    fn on_fp_event(&mut self, core: usize, ev: FpEvent) {
        let conn = match ev {
            FpEvent::RxData { conn, .. } | FpEvent::TxFreed { conn, .. } => conn,
        };
        let Some(mapped) = self.mapped(conn) else { return };
        let Some(idx) = mapped else {
            // Not opened yet as far as we know: the Accepted/Connected is still on the slow
            // path's queue. Keep the receive accounting for when it arrives. (TxFreed cannot
            // concern a connection that has not sent anything: nothing to keep.)
            if let FpEvent::RxData { bytes, fin, .. } = ev {
                let rx_size = self.region.layout().rx_buf_size;
                let o = self.orphans.entry(conn).or_default();
                if (o.fin && bytes > 0) || o.rx as u64 + bytes as u64 > rx_size as u64 {
                    self.fail(Error::Protocol("receive data beyond the ring's free space"));
                    return;
                }
                o.rx += bytes;
                o.fin |= fin;
            }
            return;
        };
        if self.conns[idx].handle.map(|h| h.core as usize) != Some(core) {
            self.fail(Error::Protocol("an event arrived on another core's queue than its connection's"));
            return;
        }
        match ev {
            FpEvent::RxData { bytes, fin, .. } => self.apply_rx(idx, bytes, fin),
            FpEvent::TxFreed { bytes, .. } => {
                let tx_size = self.region.layout().tx_buf_size;
                let c = &mut self.conns[idx];
                let in_flight = tx_size - c.tx_free - c.tx_unposted;
                if bytes > in_flight {
                    self.fail(Error::Protocol("TxFreed returned more bytes than were in flight"));
                    return;
                }
                c.tx_free += bytes;
                if bytes > 0 && c.shutdown == Shutdown::No {
                    self.mark(idx, EV_WRITABLE);
                }
            }
        }
    }

    fn apply_rx(&mut self, idx: usize, bytes: u32, fin: bool) {
        let rx_size = self.region.layout().rx_buf_size as u64;
        let c = &mut self.conns[idx];
        if c.rx_fin && bytes > 0 {
            self.fail(Error::Protocol("receive data after the peer's FIN"));
            return;
        }
        if c.rx_avail as u64 + c.rx_unacked as u64 + bytes as u64 > rx_size {
            self.fail(Error::Protocol("receive data beyond the ring's free space"));
            return;
        }
        c.rx_avail += bytes;
        if bytes > 0 {
            c.rx_last = Some(std::time::Instant::now());
        }
        let new_fin = fin && !c.rx_fin;
        c.rx_fin |= fin;
        if c.released {
            // Closed by the application: read and drop, so the peer is never stalled.
            c.rx_read += c.rx_avail as u64;
            c.rx_unacked += c.rx_avail;
            c.rx_avail = 0;
            self.flush_conn(idx);
        } else if bytes > 0 || new_fin {
            self.mark(idx, EV_READABLE);
        }
    }

    fn drain_sp(&mut self) -> usize {
        let mut n = 0;
        while self.broken.is_none() {
            let d = match self.sp_events.pop() {
                Ok(Some(d)) => d,
                Ok(None) => break,
                Err(_) => {
                    self.fail(Error::Protocol("the slow-path event queue has a corrupt index"));
                    break;
                }
            };
            n += 1;
            match SpEvent::decode(&d) {
                Ok(ev) => self.on_sp_event(ev),
                Err(_) => self.fail(Error::Protocol("unknown descriptor on the slow-path event queue")),
            }
        }
        if n > 0 {
            self.sp_events.release();
        }
        n
    }

    fn check_handle(&mut self, h: &ConnHandle) -> bool {
        let l = self.region.layout();
        if h.conn >= l.conn_slots || h.core as u32 >= l.num_fp_queues {
            self.fail(Error::Protocol("a connection handle out of range"));
            return false;
        }
        if self.slot_map[h.conn as usize] != NONE {
            self.fail(Error::Protocol("a connection slot was reused before its Closed event"));
            return false;
        }
        true
    }

    /// Map a newly opened connection's slot and apply what the fast path reported early.
    fn adopt(&mut self, idx: usize, h: ConnHandle) {
        self.slot_map[h.conn as usize] = idx as u32;
        self.conns[idx].handle = Some(h);
        if let Some(o) = self.orphans.remove(&h.conn) {
            if o.rx > 0 || o.fin {
                self.apply_rx(idx, o.rx, o.fin);
            }
        }
    }

    fn on_sp_event(&mut self, ev: SpEvent) {
        match ev {
            SpEvent::Adopted { token, handle, rx_bytes, tx_bytes, flags } => {
                self.on_adopted(token, handle, rx_bytes, tx_bytes, flags);
            }
            SpEvent::AdoptFailed { token, error } => {
                if let Some(p) = self.pending_adopts.get_mut(&token) {
                    p.result = Some(error.map_or(Ok(Adoption::NotLast), |e| Err(Error::from_code(e))));
                }
            }
            SpEvent::Orphaned { conn } => {
                let Some(mapped) = self.mapped(conn) else { return };
                if let Some(idx) = mapped {
                    if self.conns[idx].forgotten {
                        // Nobody else holds it: the close this context deferred happens now.
                        self.conns[idx].forgotten = false;
                        self.flush_conn(idx);
                    } else {
                        // Not given up yet (the release's answer is in the same poll):
                        // `forget` closes it instead.
                        self.conns[idx].orphaned = true;
                    }
                }
            }
            SpEvent::Info { token, part, words } => match self.pending_infos.get_mut(&token) {
                Some(r) if r.parts == part as usize && r.parts < tas_proto::shm::INFO_PARTS => {
                    let n = tas_proto::shm::INFO_WORDS_PER_PART;
                    r.words[r.parts * n..(r.parts + 1) * n].copy_from_slice(&words);
                    r.parts += 1;
                }
                Some(_) => self.fail(Error::Protocol("an info reply part out of order or repeated")),
                // A request its caller gave up on (tokens are never reused).
                None => {}
            },
            SpEvent::ListenOk { token, listener } => {
                let Some(p) = self.pending_listens.get(&token) else {
                    return self.fail(Error::Protocol("a listen reply for a request never made"));
                };
                if p.result.is_some() || self.listener_map.contains_key(&listener) {
                    return self.fail(Error::Protocol("a duplicate listen reply or listener id"));
                }
                let port = p.port;
                let idx = match self.free_listeners.pop() {
                    Some(i) => i as usize,
                    None => {
                        self.listeners.push(Listener {
                            gen: 0,
                            live: false,
                            service_id: 0,
                            port: 0,
                            queue: VecDeque::new(),
                            arrived: 0,
                            ev: false,
                            queued: false,
                        });
                        self.listeners.len() - 1
                    }
                };
                let l = &mut self.listeners[idx];
                l.live = true;
                l.service_id = listener;
                l.port = port;
                l.ev = false;
                let id = ListenerId { idx: idx as u32, gen: l.gen };
                self.listener_map.insert(listener, idx as u32);
                if let Some(p) = self.pending_listens.get_mut(&token) {
                    p.result = Some(Ok(id));
                }
                self.ready.push_back(Ready::Listen(token));
            }
            SpEvent::ListenFailed { token, error } => {
                let Some(p) = self.pending_listens.get_mut(&token) else {
                    return self.fail(Error::Protocol("a listen reply for a request never made"));
                };
                if p.result.is_some() {
                    return self.fail(Error::Protocol("a duplicate listen reply"));
                }
                p.result = Some(Err(Error::from_code(error)));
                self.ready.push_back(Ready::Listen(token));
            }
            SpEvent::Connected { token, handle, local_port } => {
                if !self.check_handle(&handle) {
                    return;
                }
                let Some(idx) = self.pending_connects.remove(&token) else {
                    return self.fail(Error::Protocol("a connect reply for a request never made"));
                };
                let idx = idx as usize;
                self.conns[idx].connecting = false;
                self.conns[idx].local_port = local_port;
                self.adopt(idx, handle);
                if self.conns[idx].abort_wanted {
                    self.request(ControlRequest::Abort { conn: handle.conn });
                } else {
                    self.flush_conn(idx); // a shutdown asked for while connecting
                    self.mark(idx, EV_CONNECTED | EV_WRITABLE);
                }
            }
            SpEvent::ConnectFailed { token, error } => {
                let Some(idx) = self.pending_connects.remove(&token) else {
                    return self.fail(Error::Protocol("a connect reply for a request never made"));
                };
                let idx = idx as usize;
                let c = &mut self.conns[idx];
                c.connecting = false;
                c.closed = Some(Some(Error::from_code(error)));
                if c.released {
                    self.free_conn(idx);
                } else {
                    self.mark(idx, EV_CLOSED);
                }
            }
            SpEvent::Accepted { listener, handle, remote_ip, remote_port, local_port } => {
                if !self.check_handle(&handle) {
                    return;
                }
                let idx = self.alloc_conn();
                let c = &mut self.conns[idx];
                c.peer = SocketAddrV4::new(Ipv4Addr::from(remote_ip), remote_port);
                c.local_port = local_port;
                match self.listener_map.get(&listener) {
                    Some(&lidx) => {
                        c.hidden = true;
                        self.listeners[lidx as usize].queue.push_back(idx as u32);
                        self.listeners[lidx as usize].arrived += 1;
                        self.adopt(idx, handle);
                        self.mark_listener(lidx as usize);
                    }
                    None => {
                        // For a listener we closed meanwhile: nobody wants it.
                        c.released = true;
                        self.adopt(idx, handle);
                        self.request(ControlRequest::Abort { conn: handle.conn });
                    }
                }
            }
            SpEvent::Closed { conn, error } => {
                let Some(mapped) = self.mapped(conn) else { return };
                let Some(idx) = mapped else {
                    self.orphans.remove(&conn);
                    return;
                };
                // Every fast-path event for the old connection was posted before the slow
                // path posted Closed: take them now, before the slot can be reused.
                if let Some(h) = self.conns[idx].handle {
                    self.drain_fp(h.core as usize);
                }
                if self.broken.is_some() {
                    return;
                }
                self.orphans.remove(&conn);
                self.slot_map[conn as usize] = NONE;
                let c = &mut self.conns[idx];
                let h = c.handle.take();
                let moved = error == Some(tas_proto::shm::ErrorCode::Moved);
                if !c.released && !moved && c.rx_avail > 0 && c.rescued.is_none() {
                    if let Some(h) = h {
                        let mut buf = vec![0u8; c.rx_avail as usize].into_boxed_slice();
                        self.region.rx_ring(h.conn).read(c.rx_read, &mut buf);
                        c.rescued = Some((buf, 0));
                    }
                }
                c.closed = Some(error.map(Error::from_code));
                if moved {
                    // The unread bytes went with the connection: none are readable here
                    // (the ring is no longer ours; counting them made a read return 0).
                    c.rx_avail = 0;
                }
                c.tx_unposted = 0;
                c.rx_unacked = 0;
                c.forgotten = false;
                if c.released {
                    self.free_conn(idx);
                } else {
                    self.mark(idx, EV_CLOSED);
                }
            }
        }
    }

    /// A connection moved into this context, or the last holder's release came back.
    fn on_adopted(&mut self, token: u64, handle: ConnHandle, rx_bytes: u32, tx_bytes: u32, flags: u16) {
        let l = *self.region.layout();
        let last = flags & ADOPT_LAST != 0;
        let here = handle.conn < l.conn_slots && self.slot_map[handle.conn as usize] != NONE;
        if last && here {
            let idx = self.slot_map[handle.conn as usize] as usize;
            let id = self.conn_id(idx);
            if let Some(p) = self.pending_adopts.get_mut(&token) {
                p.result = Some(Ok(Adoption::Here { conn: id, last }));
            }
            return;
        }
        if !self.check_handle(&handle) {
            return;
        }
        if rx_bytes > l.rx_buf_size || tx_bytes > l.tx_buf_size {
            return self.fail(Error::Protocol("an adopted connection holds more than its rings"));
        }
        let idx = self.alloc_conn();
        let (peer, local_port) = match self.pending_adopts.get(&token) {
            Some(p) => (p.peer, p.local_port),
            None => (SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0), 0),
        };
        let c = &mut self.conns[idx];
        c.peer = peer;
        c.local_port = local_port;
        c.rx_read = 0;
        c.rx_avail = rx_bytes;
        c.rx_fin = flags & ADOPT_RX_FIN != 0;
        c.tx_write = tx_bytes as u64;
        c.tx_free = l.tx_buf_size - tx_bytes;
        c.shutdown = if flags & ADOPT_TX_FIN != 0 { Shutdown::Posted } else { Shutdown::No };
        self.adopt(idx, handle);
        let id = self.conn_id(idx);
        match self.pending_adopts.get_mut(&token) {
            Some(p) => {
                p.result = Some(Ok(Adoption::Here { conn: id, last }));
                let c = &self.conns[idx];
                let bits = if c.rx_avail > 0 || c.rx_fin { EV_READABLE } else { 0 } | if c.tx_free > 0 { EV_WRITABLE } else { 0 };
                if bits != 0 {
                    self.mark(idx, bits);
                }
            }
            // A request nobody waits for any more: close what arrived.
            None => self.release_conn(idx, false),
        }
    }

    // ---- connections shared between processes (decisions §26) -----------------------------

    /// This process forked: tell the service that process `child` holds every connection
    /// this process holds. Call it in the parent, before the parent can close any of them.
    pub fn forked(&mut self, child: u32) -> Result<()> {
        self.health()?;
        self.request(ControlRequest::Forked { child });
        self.publish();
        Ok(())
    }

    fn key_of(peer: SocketAddrV4, local_port: u16) -> ConnKey {
        ConnKey { remote_ip: u32::from(*peer.ip()), remote_port: peer.port(), local_port }
    }

    /// Ask the service to move the connection `local_port` <-> `peer`, which this process
    /// holds (it inherited it, or another process used it since), into this context.
    /// [`Context::adopt_result`] gives the answer.
    pub fn adopt_start(&mut self, peer: SocketAddrV4, local_port: u16) -> Result<Token> {
        self.health()?;
        let token = self.next_token();
        self.pending_adopts.insert(token, PendingAdopt { peer, local_port, result: None });
        self.request(ControlRequest::Adopt { token, key: Self::key_of(peer, local_port) });
        self.publish();
        Ok(Token(token))
    }

    /// This process gives up its hold on the connection `local_port` <-> `peer` (its last
    /// descriptor closed). The answer ([`Context::adopt_result`]) is
    /// [`Adoption::NotLast`] if another process still holds it (then [`Context::forget`]
    /// the handle if this context has one), or [`Adoption::Here`] with `last` for the last
    /// holder: the connection is in this context then, to be closed.
    pub fn release_start(&mut self, peer: SocketAddrV4, local_port: u16) -> Result<Token> {
        self.health()?;
        let token = self.next_token();
        self.pending_adopts.insert(token, PendingAdopt { peer, local_port, result: None });
        self.request(ControlRequest::Release { token, key: Self::key_of(peer, local_port) });
        self.publish();
        Ok(Token(token))
    }

    /// The answer to [`Context::adopt_start`] or [`Context::release_start`], once it came
    /// (`Ok(None)` before). The service always answers; a token is answered once.
    pub fn adopt_result(&mut self, token: Token) -> Result<Option<Adoption>> {
        self.health()?;
        self.poll();
        match self.pending_adopts.get(&token.0) {
            None => Err(Error::InvalidHandle),
            Some(PendingAdopt { result: None, .. }) => Ok(None),
            Some(_) => match self.pending_adopts.remove(&token.0).and_then(|p| p.result) {
                Some(r) => r.map(Some),
                None => Ok(None),
            },
        }
    }

    /// Give the handle up without closing the connection, because another process still
    /// holds it: queued data is posted first, then the entry posts nothing more until the
    /// connection moves away (freed then) or the service reports that nobody holds it any
    /// more (then it is closed as [`Context::close`] would).
    pub fn forget(&mut self, c: ConnId) -> Result<()> {
        self.health()?;
        let idx = self.conn_idx(c)?;
        self.flush_conn(idx);
        // Already orphaned: nobody else holds it any more, so this is a plain close.
        self.conns[idx].forgotten = !std::mem::take(&mut self.conns[idx].orphaned);
        self.release_conn(idx, false);
        self.publish();
        Ok(())
    }

    /// Before another context of this process adopts the connection (a move between
    /// threads, decisions §29): post every doorbell it still owes the fast path (bytes
    /// written, bytes read, a wanted FIN) and publish them. True if nothing is left
    /// unposted, so that the move (which takes the doorbells already posted) loses nothing;
    /// false if a queue was full (try later) or the connection has no slot or is closing.
    /// The caller must not use the connection in this context after a true answer, until
    /// the move failed.
    pub fn quiesce(&mut self, c: ConnId) -> bool {
        let Ok(idx) = self.conn_idx(c) else { return false };
        self.flush_conn(idx);
        self.publish();
        let x = &self.conns[idx];
        x.handle.is_some()
            && x.closed.is_none()
            && !x.connecting
            && !x.forgotten
            && !x.released
            && x.tx_unposted == 0
            && x.rx_unacked == 0
            && x.shutdown != Shutdown::Wanted
            && self.broken.is_none()
    }

    // ---- waiting --------------------------------------------------------------------------

    /// Wait until the service posts something or `timeout` passes (None: no limit).
    /// Returns at once if events are pending for an application that takes events
    /// ([`Context::next_event`]). Busy-polls for the spin time first (see [`Context::set_spin`]), then announces
    /// sleep on every queue this context consumes and sleeps on its eventfd: a producer
    /// that publishes after the announcement sees it and writes the eventfd, so no
    /// wake-up is lost. Returns early, without sleeping, if there is work already.
    /// Spurious returns are possible: callers re-check what they wait for.
    pub fn wait(&mut self, timeout: Option<Duration>) {
        let start = Instant::now();
        let events_pending = self.events_used && !(self.out.is_empty() && self.ready.is_empty());
        if self.poll() > 0 || self.broken.is_some() || events_pending {
            return;
        }
        let deadline = timeout.map(|t| start + t);
        let spin_end = start + timeout.map_or(self.spin, |t| t.min(self.spin));
        loop {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            if self.poll() > 0 || self.broken.is_some() {
                return;
            }
            if Instant::now() >= spin_end {
                break;
            }
        }
        let remaining = |now: Instant| deadline.map(|d| d.saturating_duration_since(now));
        let mut sleep = remaining(Instant::now());
        if sleep == Some(Duration::ZERO) {
            return;
        }
        if self.has_backlog() {
            sleep = Some(sleep.map_or(BACKLOG_RECHECK, |s| s.min(BACKLOG_RECHECK)));
        }
        if self.app_eventfd.is_none() {
            // No eventfd (an in-process service that steps us): yield until something
            // arrives or time is up.
            loop {
                std::thread::yield_now();
                if self.poll() > 0 || self.broken.is_some() {
                    return;
                }
                if deadline.is_some_and(|d| Instant::now() >= d) {
                    return;
                }
            }
        }
        // Announce sleep on every queue we consume, re-checking each.
        let mut announced = 0;
        let mut all_empty = true;
        for i in 0..self.fp.len() {
            announced += 1;
            if !self.fp[i].to_app.prepare_sleep() {
                all_empty = false;
                break;
            }
        }
        if all_empty && !self.sp_events.prepare_sleep() {
            all_empty = false;
        }
        if all_empty {
            let efd = self.app_eventfd.as_ref().map(|f| f.as_fd());
            let Some(efd) = efd else { unreachable!("checked above") };
            let mut set = vec![PollFd::new(efd, libc::POLLIN)];
            if let Some(s) = &self.lifeline {
                set.push(PollFd::new(s.as_fd(), libc::POLLIN));
            }
            let res = sys::poll(&mut set, sleep);
            let lifeline_signalled = set.get(1).is_some_and(|p| p.revents() != 0);
            drop(set);
            sys::eventfd_drain(efd);
            if let Err(e) = res {
                self.fail(Error::Io(e.kind()));
            }
            if lifeline_signalled && self.lifeline.as_ref().is_some_and(|s| s.peer_gone()) {
                self.fail(Error::ServiceGone);
            }
        }
        // Clear the flags we set (woke() on a queue whose prepare_sleep failed is harmless:
        // it already cleared its flag).
        for i in 0..announced {
            self.fp[i].to_app.woke();
        }
        self.sp_events.woke();
        self.poll();
    }

    /// The eventfd this context sleeps on (None for an in-process context built without
    /// one). For callers that sleep in their own `poll`/`epoll_wait` together with other
    /// descriptors (the sockets shim): bracket the sleep with [`Context::announce_sleep`]
    /// and [`Context::end_sleep`].
    pub fn sleep_fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.app_eventfd.as_ref().map(|f| f.as_fd())
    }

    /// The first half of [`Context::wait`]'s sleep protocol, for callers that sleep
    /// elsewhere: poll once, then announce sleep on every queue this context consumes.
    /// Returns false (announcing nothing) if descriptors arrived or the context broke:
    /// then do not sleep, look again. After true, the service writes [`Context::sleep_fd`]
    /// when it posts anything, so a sleep on it loses no wake-up. Several threads may
    /// announce (each under the caller's lock); the flags are cleared only by
    /// [`Context::end_sleep`], which the caller calls once the last sleeper woke.
    pub fn announce_sleep(&mut self) -> bool {
        if self.poll() > 0 || self.broken.is_some() || self.app_eventfd.is_none() {
            return false;
        }
        for i in 0..self.fp.len() {
            if !self.fp[i].to_app.prepare_sleep() {
                for j in 0..i {
                    self.fp[j].to_app.woke();
                }
                return false;
            }
        }
        if !self.sp_events.prepare_sleep() {
            for q in &mut self.fp {
                q.to_app.woke();
            }
            return false;
        }
        true
    }

    /// The second half of the protocol: clear the sleep flags, drain the eventfd and poll.
    /// Call it when no thread sleeps on [`Context::sleep_fd`] any more.
    pub fn end_sleep(&mut self) {
        for q in &mut self.fp {
            q.to_app.woke();
        }
        self.sp_events.woke();
        if let Some(fd) = &self.app_eventfd {
            sys::eventfd_drain(fd.as_fd());
        }
        self.poll();
    }

    /// Wake whoever sleeps on [`Context::sleep_fd`] (after a local change another thread
    /// may wait for, such as a close).
    pub fn kick(&self) {
        if let Some(fd) = &self.app_eventfd {
            sys::eventfd_signal(fd.as_fd());
        }
    }

    /// Connections ever queued on the listener: grows by one per arrival, so a caller that
    /// remembers it can tell "a new connection came" from "the same one is still waiting".
    pub fn arrivals(&self, l: ListenerId) -> u64 {
        self.listener_idx(l).map_or(0, |i| self.listeners[i].arrived)
    }

    /// Bytes that ever arrived on the connection (read or readable): grows with every
    /// arrival, for edge-triggered readiness.
    pub fn rx_total(&self, c: ConnId) -> u64 {
        self.conn_idx(c).map_or(0, |i| self.conns[i].rx_read + self.conns[i].rx_avail as u64)
    }

    /// Transmit credit ever granted (bytes written plus space free now): grows whenever
    /// the peer acknowledges data, for edge-triggered writability.
    pub fn tx_total(&self, c: ConnId) -> u64 {
        self.conn_idx(c).map_or(0, |i| self.conns[i].tx_write + self.conns[i].tx_free as u64)
    }

    /// Connections waiting on the listener to be accepted.
    pub fn pending_accepts(&self, l: ListenerId) -> usize {
        self.listener_idx(l).map_or(0, |i| self.listeners[i].queue.len())
    }

    /// True if the service went away (the lifeline hung up); marks the context broken.
    pub fn check_service(&mut self) -> bool {
        if self.lifeline.as_ref().is_some_and(|s| s.peer_gone()) {
            self.fail(Error::ServiceGone);
        }
        self.broken.is_none()
    }

    fn deadline_left(deadline: Option<Instant>) -> Result<Option<Duration>> {
        match deadline {
            None => Ok(None),
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    Err(Error::TimedOut)
                } else {
                    Ok(Some(d - now))
                }
            }
        }
    }

    // ---- listeners ------------------------------------------------------------------------

    /// Ask the service to listen on `port` (1..=65535) with room for `backlog`
    /// established, not yet accepted connections. The result comes as
    /// [`Event::Listening`] or from [`Context::listen_result`].
    pub fn listen_start(&mut self, port: u16, backlog: u32) -> Result<Token> {
        self.listen_start_with(port, backlog, ListenOptions::default())
    }

    /// [`Context::listen_start`] for a port that other applications of the same user may
    /// listen on too, each asking for sharing (a reuse-port group, e.g. the forked workers
    /// of one server): the service spreads new connections over the members that accept.
    /// A founder that may never accept itself is given connections only once it has.
    pub fn listen_start_shared(&mut self, port: u16, backlog: u32) -> Result<Token> {
        self.listen_start_with(port, backlog, ListenOptions::shared())
    }

    /// [`Context::listen_start`] with options: with [`ListenOptions::reuse_port`], other
    /// contexts (of this application or other applications of the same user) may listen on
    /// the port too, and the service spreads new connections over the group round-robin,
    /// as Linux does for `SO_REUSEPORT`. Every listener of the port must ask for it;
    /// otherwise the port is in use.
    pub fn listen_start_with(&mut self, port: u16, backlog: u32, opts: ListenOptions) -> Result<Token> {
        self.health()?;
        if port == 0 {
            return Err(Error::InvalidArgument);
        }
        let token = self.next_token();
        self.pending_listens.insert(token, PendingListen { port, result: None });
        let mut flags = 0;
        if opts.reuse_port {
            flags |= tas_proto::shm::LISTEN_REUSEPORT;
        }
        if opts.accept_on_demand {
            flags |= tas_proto::shm::LISTEN_ACCEPT_ON_DEMAND;
        }
        self.request(ControlRequest::Listen { token, port, backlog, flags, rcvbuf: opts.rcvbuf });
        self.publish();
        Ok(Token(token))
    }

    /// The outcome of a listen request: `Ok(None)` while it is pending. Each outcome is
    /// reported once (here or as an [`Event::Listening`]); later calls return
    /// [`Error::InvalidHandle`].
    pub fn listen_result(&mut self, token: Token) -> Result<Option<ListenerId>> {
        self.health()?;
        if self.pending_listens.get(&token.0).is_some_and(|p| p.result.is_none()) {
            self.poll();
            self.health()?;
        }
        match self.pending_listens.get(&token.0) {
            None => Err(Error::InvalidHandle),
            Some(PendingListen { result: None, .. }) => Ok(None),
            Some(PendingListen { result: Some(r), .. }) => {
                let r = *r;
                self.pending_listens.remove(&token.0);
                r.map(Some)
            }
        }
    }

    /// Listen on `port`, waiting for the service's reply.
    pub fn listen(&mut self, port: u16, backlog: u32) -> Result<ListenerId> {
        self.listen_with(port, backlog, ListenOptions::default())
    }

    /// [`Context::listen`] with options (see [`Context::listen_start_with`]).
    pub fn listen_with(&mut self, port: u16, backlog: u32, opts: ListenOptions) -> Result<ListenerId> {
        let token = self.listen_start_with(port, backlog, opts)?;
        loop {
            if let Some(l) = self.listen_result(token)? {
                return Ok(l);
            }
            self.wait(None);
        }
    }

    /// The local port of a listener.
    pub fn listener_port(&self, l: ListenerId) -> Option<u16> {
        self.listener_idx(l).ok().map(|i| self.listeners[i].port)
    }

    /// Take one established connection from the listener's queue, if one waits.
    pub fn accept(&mut self, l: ListenerId) -> Result<Option<ConnId>> {
        self.health()?;
        let lidx = self.listener_idx(l)?;
        if self.listeners[lidx].queue.is_empty() {
            self.poll();
            self.health()?;
        }
        let Some(idx) = self.listeners[lidx].queue.pop_front() else {
            return Ok(None);
        };
        let service_id = self.listeners[lidx].service_id;
        let idx = idx as usize;
        let c = &mut self.conns[idx];
        c.hidden = false;
        if c.ev != 0 && !c.queued {
            c.queued = true;
            self.ready.push_back(Ready::Conn(idx as u32));
        }
        self.request(ControlRequest::Accepted { listener: service_id, count: 1 });
        self.publish();
        Ok(Some(self.conn_id(idx)))
    }

    /// Wait for a connection on the listener, at most `timeout` (None: no limit).
    pub fn accept_blocking(&mut self, l: ListenerId, timeout: Option<Duration>) -> Result<ConnId> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(c) = self.accept(l)? {
                return Ok(c);
            }
            let left = Self::deadline_left(deadline)?;
            self.wait(left);
        }
    }

    /// Stop listening. Connections not yet accepted are reset.
    pub fn unlisten(&mut self, l: ListenerId) -> Result<()> {
        self.health()?;
        let lidx = self.listener_idx(l)?;
        let service_id = self.listeners[lidx].service_id;
        self.request(ControlRequest::Unlisten { listener: service_id });
        self.listener_map.remove(&service_id);
        let queue = std::mem::take(&mut self.listeners[lidx].queue);
        for idx in queue {
            let idx = idx as usize;
            self.conns[idx].hidden = false;
            self.release_conn(idx, true);
        }
        let l = &mut self.listeners[lidx];
        l.live = false;
        l.gen = l.gen.wrapping_add(1);
        l.ev = false;
        self.free_listeners.push(lidx as u32);
        self.publish();
        Ok(())
    }

    // ---- connections ----------------------------------------------------------------------

    /// Start an active open to `addr`. The handle is usable at once: the connection is
    /// [`ConnState::Connecting`] until [`Event::Connected`] (or [`Event::Closed`] with
    /// the reason it failed); sends and receives return [`Error::WouldBlock`] meanwhile.
    pub fn connect_start(&mut self, addr: SocketAddrV4) -> Result<ConnId> {
        self.connect_start_with(addr, 0)
    }

    /// [`Context::connect_start`] with a receive buffer of `rcvbuf` bytes (`SO_RCVBUF`;
    /// 0: the receive ring): the window the connection offers never exceeds it (the
    /// service bounds it by the ring and one segment).
    pub fn connect_start_with(&mut self, addr: SocketAddrV4, rcvbuf: u32) -> Result<ConnId> {
        self.health()?;
        if addr.port() == 0 || addr.ip().is_unspecified() {
            return Err(Error::InvalidArgument);
        }
        let token = self.next_token();
        let idx = self.alloc_conn();
        let c = &mut self.conns[idx];
        c.connecting = true;
        c.peer = addr;
        self.pending_connects.insert(token, idx as u32);
        self.request(ControlRequest::Connect { token, ip: u32::from(*addr.ip()), port: addr.port(), rcvbuf });
        self.publish();
        Ok(self.conn_id(idx))
    }

    /// Connect to `addr`, waiting at most `timeout` (None: the service's own retry
    /// budget). On failure the handle is released.
    pub fn connect(&mut self, addr: SocketAddrV4, timeout: Option<Duration>) -> Result<ConnId> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let c = self.connect_start(addr)?;
        loop {
            match self.state(c) {
                ConnState::Connecting => {}
                ConnState::Failed(e) => {
                    let _ = self.close(c);
                    return Err(e);
                }
                _ => return Ok(c),
            }
            self.health()?;
            match Self::deadline_left(deadline) {
                Ok(left) => self.wait(left),
                Err(e) => {
                    let _ = self.abort(c);
                    return Err(e);
                }
            }
            self.poll();
        }
    }

    /// The connection's state.
    pub fn state(&self, c: ConnId) -> ConnState {
        let Ok(idx) = self.conn_idx(c) else { return ConnState::Invalid };
        let c = &self.conns[idx];
        if c.connecting {
            return ConnState::Connecting;
        }
        match c.closed {
            Some(None) => return ConnState::Closed,
            Some(Some(e)) => return ConnState::Failed(e),
            None => {}
        }
        match (c.rx_fin, c.shutdown != Shutdown::No) {
            (false, false) => ConnState::Established,
            (true, false) => ConnState::PeerClosed,
            (false, true) => ConnState::LocalClosed,
            (true, true) => ConnState::Closing,
        }
    }

    /// True once the peer's FIN arrived (also after the connection failed or closed:
    /// a reset that follows the FIN does not undo it; the sockets layer reads EOF then,
    /// as Linux does).
    pub fn peer_fin(&self, c: ConnId) -> bool {
        self.conn_idx(c).is_ok_and(|i| self.conns[i].rx_fin)
    }

    /// The peer's address.
    pub fn peer_addr(&self, c: ConnId) -> Option<SocketAddrV4> {
        self.conn_idx(c).ok().map(|i| self.conns[i].peer)
    }

    /// The local port (None while connecting).
    pub fn local_port(&self, c: ConnId) -> Option<u16> {
        self.conn_idx(c).ok().and_then(|i| (!self.conns[i].connecting).then_some(self.conns[i].local_port))
    }

    /// The local address (the service's IP and the connection's port).
    pub fn local_addr(&self, c: ConnId) -> Option<SocketAddrV4> {
        self.local_port(c).map(|p| SocketAddrV4::new(self.local_ip, p))
    }

    /// Ask the service what it knows of the connection (round-trip time, congestion
    /// window, retransmissions: [`ConnInfo`]); the reply comes from
    /// [`Context::info_result`]. [`Error::NotConnected`] while the connection has no slot
    /// (an active open in progress).
    pub fn info_start(&mut self, c: ConnId) -> Result<Token> {
        self.health()?;
        let idx = self.conn_idx(c)?;
        let h = self.conns[idx].handle.ok_or(Error::NotConnected)?;
        let token = self.next_token();
        self.pending_infos.insert(token, InfoReply::default());
        self.request(ControlRequest::Info { token, conn: h.conn });
        self.publish();
        Ok(Token(token))
    }

    /// The reply to [`Context::info_start`], once it came (`Ok(None)` before). A token is
    /// answered once; [`Error::InvalidHandle`] for one that is not pending. A caller that
    /// stops waiting calls [`Context::info_cancel`].
    pub fn info_result(&mut self, token: Token) -> Result<Option<ConnInfo>> {
        self.health()?;
        let complete = |r: &InfoReply| r.parts == tas_proto::shm::INFO_PARTS;
        if self.pending_infos.get(&token.0).is_some_and(|r| !complete(r)) {
            self.poll();
            self.health()?;
        }
        match self.pending_infos.get(&token.0) {
            None => Err(Error::InvalidHandle),
            Some(r) if !complete(r) => Ok(None),
            Some(r) => {
                let i = ConnInfo::from_words(&r.words);
                self.pending_infos.remove(&token.0);
                Ok(Some(i))
            }
        }
    }

    /// Stop waiting for an [`Context::info_start`] reply (it is dropped when it comes).
    pub fn info_cancel(&mut self, token: Token) {
        self.pending_infos.remove(&token.0);
    }

    /// Bytes of the connection that the peer acknowledged so far (the application's view:
    /// transmit-ring space the fast path returned).
    pub fn tx_acked(&self, c: ConnId) -> u64 {
        let tx_size = self.region.layout().tx_buf_size as u64;
        self.conn_idx(c).map_or(0, |i| {
            let x = &self.conns[i];
            x.tx_write.saturating_sub(tx_size - x.tx_free as u64)
        })
    }

    /// Time since this context last took a data-arrival event for the connection (None:
    /// no data yet). The fast path posts the event in the batch the data arrived in; an
    /// application that was not calling into the library meanwhile takes it later.
    pub fn since_rx(&self, c: ConnId) -> Option<Duration> {
        self.conn_idx(c).ok().and_then(|i| self.conns[i].rx_last).map(|t| t.elapsed())
    }

    /// Bytes written and not yet acknowledged (in flight or not yet sent).
    pub fn tx_outstanding(&self, c: ConnId) -> u32 {
        let tx_size = self.region.layout().tx_buf_size;
        self.conn_idx(c).map_or(0, |i| tx_size - self.conns[i].tx_free)
    }

    /// Bytes that can be read now without blocking.
    pub fn readable(&self, c: ConnId) -> usize {
        self.conn_idx(c).map_or(0, |i| self.conns[i].rx_avail as usize)
    }

    /// Bytes that can be sent now without blocking.
    pub fn writable(&self, c: ConnId) -> usize {
        match self.conn_idx(c) {
            Ok(i) => {
                let c = &self.conns[i];
                if c.connecting || c.closed.is_some() || c.shutdown != Shutdown::No {
                    0
                } else {
                    c.tx_free as usize
                }
            }
            Err(_) => 0,
        }
    }

    /// Copy as much of `data` into the transmit ring as fits and tell the fast path.
    /// Returns the number of bytes taken; [`Error::WouldBlock`] if none fit (or the
    /// connection is still opening).
    pub fn send(&mut self, c: ConnId, data: &[u8]) -> Result<usize> {
        self.health()?;
        let idx = self.conn_idx(c)?;
        self.send_ready(idx)?;
        if data.is_empty() {
            return Ok(0);
        }
        if self.conns[idx].tx_free == 0 {
            self.poll();
            self.health()?;
            self.send_ready(idx)?;
            if self.conns[idx].tx_free == 0 {
                return Err(Error::WouldBlock);
            }
        }
        let conn = &mut self.conns[idx];
        let Some(h) = conn.handle else { return Err(Error::NotConnected) };
        let n = data.len().min(conn.tx_free as usize);
        self.region.tx_ring(h.conn).write(conn.tx_write, &data[..n]);
        conn.tx_write += n as u64;
        conn.tx_free -= n as u32;
        conn.tx_unposted += n as u32;
        self.flush_conn(idx);
        self.publish();
        Ok(n)
    }

    /// Zero-copy send: write payload straight into the transmit ring, without an
    /// intermediate buffer. `f` receives the free space — at most `max` bytes — as up to
    /// two slices (the second non-empty only where the space wraps around the end of the
    /// ring), fills it from the start of the first slice on into the second, and returns
    /// how many bytes it wrote; exactly those are sent (one `TxAdded`, like [`Context::send`]).
    ///
    /// Returns the number of bytes sent. [`Error::WouldBlock`] (without calling `f`) if no
    /// space is free or the connection is still opening; `max == 0` returns `Ok(0)` without
    /// calling `f`. If `f` claims more bytes than it was given, nothing is sent and the call
    /// returns [`Error::InvalidArgument`].
    pub fn send_with<F>(&mut self, c: ConnId, max: usize, f: F) -> Result<usize>
    where
        F: FnOnce(&mut [u8], &mut [u8]) -> usize,
    {
        self.health()?;
        let idx = self.conn_idx(c)?;
        self.send_ready(idx)?;
        if max == 0 {
            return Ok(0);
        }
        if self.conns[idx].tx_free == 0 {
            self.poll();
            self.health()?;
            self.send_ready(idx)?;
            if self.conns[idx].tx_free == 0 {
                return Err(Error::WouldBlock);
            }
        }
        let conn = &mut self.conns[idx];
        let Some(h) = conn.handle else { return Err(Error::NotConnected) };
        let len = max.min(conn.tx_free as usize);
        let (a, b) = self.region.tx_ring(h.conn).slices_mut(conn.tx_write, len);
        let n = f(a, b);
        if n > len {
            return Err(Error::InvalidArgument);
        }
        if n == 0 {
            return Ok(0);
        }
        conn.tx_write += n as u64;
        conn.tx_free -= n as u32;
        conn.tx_unposted += n as u32;
        self.flush_conn(idx);
        self.publish();
        Ok(n)
    }

    fn send_ready(&self, idx: usize) -> Result<()> {
        let c = &self.conns[idx];
        if c.connecting {
            return Err(Error::WouldBlock);
        }
        match c.closed {
            Some(Some(e)) => return Err(e),
            Some(None) => return Err(Error::Closed),
            None => {}
        }
        if c.shutdown != Shutdown::No {
            return Err(Error::Shutdown);
        }
        Ok(())
    }

    /// Send all of `data`, waiting for transmit space as needed, at most `timeout` in
    /// total (None: no limit).
    pub fn send_all(&mut self, c: ConnId, data: &[u8], timeout: Option<Duration>) -> Result<()> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut off = 0;
        while off < data.len() {
            match self.send(c, &data[off..]) {
                Ok(n) => off += n,
                Err(Error::WouldBlock) => {
                    let left = Self::deadline_left(deadline)?;
                    self.wait(left);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// What a receive returns when nothing is readable.
    fn rx_end(&self, idx: usize) -> Result<usize> {
        let c = &self.conns[idx];
        if c.connecting {
            return Err(Error::WouldBlock);
        }
        match c.closed {
            Some(Some(e)) => return Err(e),
            Some(None) => return Ok(0),
            None => {}
        }
        if c.rx_fin {
            Ok(0)
        } else {
            Err(Error::WouldBlock)
        }
    }

    fn readable_slices(&self, idx: u32) -> (&[u8], &[u8]) {
        let c = &self.conns[idx as usize];
        if let Some((buf, off)) = &c.rescued {
            return (&buf[*off..], &[]);
        }
        match c.handle {
            Some(h) if c.rx_avail > 0 => self.region.rx_ring(h.conn).slices(c.rx_read, c.rx_avail as usize),
            _ => (&[], &[]),
        }
    }

    fn consume(&mut self, idx: u32, n: u32) {
        let idx = idx as usize;
        let c = &mut self.conns[idx];
        debug_assert!(n <= c.rx_avail);
        c.rx_avail -= n;
        if let Some((buf, off)) = &mut c.rescued {
            *off += n as usize;
            if *off >= buf.len() {
                c.rescued = None;
            }
            return;
        }
        c.rx_read += n as u64;
        c.rx_unacked += n;
        self.flush_conn(idx);
        self.publish();
    }

    /// Make sure something is readable (polling once if not): Ok(true) if data is there,
    /// Ok(false) at EOF, Err(WouldBlock) if nothing yet.
    fn rx_ready(&mut self, c: ConnId) -> Result<(usize, bool)> {
        self.health()?;
        let mut idx = self.conn_idx(c)?;
        if self.conns[idx].rx_avail == 0 {
            self.poll();
            self.health()?;
            idx = self.conn_idx(c)?;
            if self.conns[idx].rx_avail == 0 {
                self.rx_end(idx)?;
                return Ok((idx, false));
            }
        }
        Ok((idx, true))
    }

    /// Copy readable bytes into `buf`. `Ok(0)` means EOF (the peer closed its direction
    /// and everything before was read) — or that `buf` is empty; [`Error::WouldBlock`]
    /// means nothing has arrived yet.
    pub fn recv(&mut self, c: ConnId, buf: &mut [u8]) -> Result<usize> {
        let (idx, data) = self.rx_ready(c)?;
        if !data || buf.is_empty() {
            return Ok(0);
        }
        let (a, b) = self.readable_slices(idx as u32);
        let n = buf.len().min(a.len() + b.len());
        let k = n.min(a.len());
        buf[..k].copy_from_slice(&a[..k]);
        buf[k..n].copy_from_slice(&b[..n - k]);
        self.consume(idx as u32, n as u32);
        Ok(n)
    }

    /// Zero-copy receive: a view of every readable byte, in place in the receive ring.
    /// An empty view means EOF; [`Error::WouldBlock`] means nothing has arrived yet.
    pub fn recv_view(&mut self, c: ConnId) -> Result<RecvView<'_>> {
        let (idx, _) = self.rx_ready(c)?;
        Ok(RecvView { ctx: self, idx: idx as u32 })
    }

    /// Receive into `buf`, waiting at most `timeout` for data (None: no limit). `Ok(0)`
    /// means EOF.
    pub fn recv_blocking(&mut self, c: ConnId, buf: &mut [u8], timeout: Option<Duration>) -> Result<usize> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            match self.recv(c, buf) {
                Err(Error::WouldBlock) => {
                    let left = Self::deadline_left(deadline)?;
                    self.wait(left);
                }
                r => return r,
            }
        }
    }

    /// Shut the sending direction: the fast path sends FIN after the queued data.
    /// Receiving goes on. Idempotent.
    pub fn shutdown(&mut self, c: ConnId) -> Result<()> {
        self.health()?;
        let idx = self.conn_idx(c)?;
        let conn = &mut self.conns[idx];
        if conn.closed.is_some() || conn.shutdown != Shutdown::No {
            return Ok(());
        }
        conn.shutdown = Shutdown::Wanted;
        self.flush_conn(idx);
        self.publish();
        Ok(())
    }

    /// Close: shut the sending direction (FIN after the queued data) and give the handle
    /// up at once. Unread and later-arriving data is dropped; the context keeps the slot
    /// until the service reports the connection closed.
    pub fn close(&mut self, c: ConnId) -> Result<()> {
        self.health()?;
        let idx = self.conn_idx(c)?;
        self.release_conn(idx, false);
        self.publish();
        Ok(())
    }

    /// Reset the connection (RST) and give the handle up.
    pub fn abort(&mut self, c: ConnId) -> Result<()> {
        self.health()?;
        let idx = self.conn_idx(c)?;
        self.release_conn(idx, true);
        self.publish();
        Ok(())
    }

    fn release_conn(&mut self, idx: usize, abort: bool) {
        let c = &mut self.conns[idx];
        c.released = true;
        c.ev = 0;
        c.rescued = None;
        if c.closed.is_some() {
            self.free_conn(idx);
            return;
        }
        if c.connecting {
            // Reset it once the open completes (closing a half-open connection drops it).
            c.abort_wanted = true;
            return;
        }
        // Drop what was not read, so the peer is not stalled.
        c.rx_read += c.rx_avail as u64;
        c.rx_unacked += c.rx_avail;
        c.rx_avail = 0;
        let slot = c.handle.map(|h| h.conn);
        if abort {
            if let Some(slot) = slot {
                self.request(ControlRequest::Abort { conn: slot });
            }
        } else if c.shutdown == Shutdown::No {
            c.shutdown = Shutdown::Wanted;
        }
        self.flush_conn(idx);
    }

    // ---- events ---------------------------------------------------------------------------

    /// The next event, if any (call [`Context::poll`] or [`Context::wait`] to take new ones
    /// from the service).
    pub fn next_event(&mut self) -> Option<Event> {
        self.events_used = true;
        loop {
            if let Some(e) = self.out.pop_front() {
                return Some(e);
            }
            match self.ready.pop_front()? {
                Ready::Conn(idx) => {
                    let idx = idx as usize;
                    let c = &mut self.conns[idx];
                    c.queued = false;
                    if c.hidden {
                        continue; // re-queued on accept
                    }
                    if !c.live || c.released {
                        c.ev = 0;
                        continue;
                    }
                    let ev = std::mem::take(&mut c.ev);
                    let closed = c.closed;
                    // Drop events the application has made stale meanwhile (it read
                    // everything, or filled the ring again).
                    let readable = c.rx_avail > 0 || c.rx_fin;
                    let writable = c.tx_free > 0 && c.shutdown == Shutdown::No && closed.is_none();
                    let id = self.conn_id(idx);
                    if ev & EV_CONNECTED != 0 {
                        self.out.push_back(Event::Connected(id));
                    }
                    if ev & EV_READABLE != 0 && readable {
                        self.out.push_back(Event::Readable(id));
                    }
                    if ev & EV_WRITABLE != 0 && writable {
                        self.out.push_back(Event::Writable(id));
                    }
                    if ev & EV_CLOSED != 0 {
                        self.out.push_back(Event::Closed(id, closed.flatten()));
                    }
                }
                Ready::Listener(lidx) => {
                    let l = &mut self.listeners[lidx as usize];
                    l.queued = false;
                    if l.live && std::mem::take(&mut l.ev) && !l.queue.is_empty() {
                        self.out.push_back(Event::Accept(ListenerId { idx: lidx, gen: l.gen }));
                    }
                }
                Ready::Listen(token) => {
                    if let Some(PendingListen { result: Some(r), .. }) = self.pending_listens.get(&token) {
                        let r = *r;
                        self.pending_listens.remove(&token);
                        self.out.push_back(Event::Listening(Token(token), r));
                    }
                }
            }
        }
    }

    /// Every pending event (see [`Context::next_event`]).
    pub fn take_events(&mut self) -> impl Iterator<Item = Event> + '_ {
        std::iter::from_fn(move || self.next_event())
    }
}
