//! What the slow path does for the operator (the control API in `grpc.rs`): connection
//! events for watchers, listeners and applications in detail, closing a flow, packet
//! capture on the cores, and the settings that may change while running.
//!
//! Kept in a module of its own so that `slow.rs` (the connection state machine) carries
//! only three hooks: the [`OpsState`] field, its initialiser, and [`SlowPath::ops_on_post`]
//! at the top of `post()`. Every connection milestone an application is told about goes
//! through `post()`, so that one hook sees them all.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::time::{Duration, SystemTime};

use crossbeam_channel::{Sender, TrySendError};
use tas_fastpath::ctl::Command;
use tas_fastpath::flow::FlowKey;
use tas_fastpath::io::capture::CaptureSpec;
use tas_proto::queue::Occupancy;
use tas_proto::shm::{ErrorCode, SpEvent};

use super::{Phase, SlowPath};

/// What happened to a connection, listener or application.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventKind {
    /// A connection was established (`detail`: "passive" or "active").
    Opened,
    /// A connection closed in order.
    Closed,
    /// A connection was reset or aborted (`detail`: why).
    Reset,
    /// An active open failed (`detail`: why).
    ConnectFailed,
    /// A listener was opened.
    Listen,
    /// A listen request failed (`detail`: why).
    ListenFailed,
    /// An application attached.
    AppAttached,
    /// An application detached (exited, died, or was detached by the operator).
    AppDetached,
}

impl EventKind {
    /// The name the control API uses.
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Opened => "opened",
            EventKind::Closed => "closed",
            EventKind::Reset => "reset",
            EventKind::ConnectFailed => "connect_failed",
            EventKind::Listen => "listen",
            EventKind::ListenFailed => "listen_failed",
            EventKind::AppAttached => "app_attached",
            EventKind::AppDetached => "app_detached",
        }
    }
}

/// One event for watchers of the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnEvent {
    /// Wall-clock time.
    pub at: SystemTime,
    /// What happened.
    pub kind: EventKind,
    /// The connection's flow id (`FlowKey`), 0 if none.
    pub flow_id: u64,
    /// The peer, if a connection.
    pub remote: Option<SocketAddrV4>,
    /// Local port (0 if unknown).
    pub local_port: u16,
    /// Application id.
    pub app: u32,
    /// More: "passive"/"active", an error name, an application name.
    pub detail: String,
}

/// The operator-facing state of the slow path.
#[derive(Debug, Default)]
pub struct OpsState {
    events: Option<Sender<ConnEvent>>,
    events_dropped: u64,
    capturing: bool,
}

/// A listener, for the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenerInfo {
    /// Listener id.
    pub id: u32,
    /// Port.
    pub port: u16,
    /// Owning application.
    pub app: u32,
    /// Backlog.
    pub backlog: u32,
    /// Handshakes in progress.
    pub syn_rcvd: u32,
    /// Established, not yet accepted.
    pub unaccepted: u32,
}

/// An application in detail, for the control API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppDetail {
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
    /// Listening ports.
    pub listen_ports: Vec<u16>,
    /// Queue pairs with the fast path (one per core).
    pub contexts: u32,
    /// Its slow-path event queue (slow path -> application): exact fill.
    pub event_queue: Occupancy,
    /// Its control-request queue (application -> slow path): exact fill.
    pub request_queue: Occupancy,
    /// Its queue pair with each fast-path core, in core order.
    pub core_queues: Vec<CoreQueues>,
}

/// One fast-path core's queue pair in an application's region, as published by both sides
/// at the moment of reading ([`tas_proto::queue::ShmQueue::occupancy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoreQueues {
    /// The fast-path core.
    pub core: u32,
    /// Application -> core (doorbells: tx bytes added, rx bytes consumed, close).
    pub to_fp: Occupancy,
    /// Core -> application (events: data arrived, tx space freed).
    pub to_app: Occupancy,
}

/// Why a flow cannot be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CloseFlowError {
    /// No connection has that id.
    #[error("no connection with that id")]
    NotFound,
    /// It is already closing or in TIME-WAIT.
    #[error("the connection is already closing ({0})")]
    AlreadyClosing(&'static str),
}

/// The error's name as the control API spells it.
pub fn error_name(e: ErrorCode) -> &'static str {
    match e {
        ErrorCode::Invalid => "invalid",
        ErrorCode::AddrInUse => "address_in_use",
        ErrorCode::Refused => "refused",
        ErrorCode::Reset => "reset_by_peer",
        ErrorCode::TimedOut => "timed_out",
        ErrorCode::NoResources => "no_resources",
        ErrorCode::Unreachable => "unreachable",
        ErrorCode::Aborted => "aborted",
        ErrorCode::Permission => "permission",
        ErrorCode::NotFound => "not_found",
        ErrorCode::Version => "version",
        ErrorCode::Moved => "moved",
    }
}

impl SlowPath {
    /// Publish connection events on `sink` (bounded; a full sink drops events and counts
    /// them, the slow path never waits), or stop publishing.
    pub fn set_event_sink(&mut self, sink: Option<Sender<ConnEvent>>) {
        self.ops.events = sink;
    }

    /// Events dropped because the sink was full.
    pub fn events_dropped(&self) -> u64 {
        self.ops.events_dropped
    }

    /// Publish one event (also used by the service for application attach/detach).
    pub fn emit_event(&mut self, ev: ConnEvent) {
        let Some(tx) = &self.ops.events else { return };
        match tx.try_send(ev) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => self.ops.events_dropped += 1,
            Err(TrySendError::Disconnected(_)) => self.ops.events = None,
        }
    }

    /// The hook in `post()`: every event an application gets about a connection or a
    /// listener becomes an event for the operator too.
    pub(super) fn ops_on_post(&mut self, app: u32, ev: &SpEvent) {
        if self.ops.events.is_none() {
            return;
        }
        let conn = |s: &SlowPath, slot: u32| {
            s.by_slot.get(&(app, slot)).and_then(|k| s.conns.get(k)).map(|c| (c.key.0, c.remote_ip, c.remote_port, c.local_port))
        };
        let (kind, flow_id, remote, local_port, detail) = match *ev {
            SpEvent::Accepted { remote_ip, remote_port, local_port, .. } => {
                let ip = Ipv4Addr::from(remote_ip);
                let key = FlowKey::new(remote_ip, remote_port, local_port);
                (EventKind::Opened, key.0, Some(SocketAddrV4::new(ip, remote_port)), local_port, "passive".to_string())
            }
            SpEvent::Connected { handle, .. } => match conn(self, handle.conn) {
                Some((k, ip, rp, lp)) => (EventKind::Opened, k, Some(SocketAddrV4::new(ip, rp)), lp, "active".into()),
                None => (EventKind::Opened, 0, None, 0, "active".into()),
            },
            SpEvent::ConnectFailed { error, .. } => (EventKind::ConnectFailed, 0, None, 0, error_name(error).into()),
            SpEvent::ListenOk { listener, .. } => {
                let port = self.listeners.get(&listener).map_or(0, |l| l.port);
                (EventKind::Listen, 0, None, port, String::new())
            }
            SpEvent::ListenFailed { error, .. } => (EventKind::ListenFailed, 0, None, 0, error_name(error).into()),
            SpEvent::Closed { conn: slot, error } if error != Some(ErrorCode::Moved) => {
                let (k, remote, lp) = match conn(self, slot) {
                    Some((k, ip, rp, lp)) => (k, Some(SocketAddrV4::new(ip, rp)), lp),
                    None => (0, None, 0),
                };
                match error {
                    None => (EventKind::Closed, k, remote, lp, String::new()),
                    Some(e) => (EventKind::Reset, k, remote, lp, error_name(e).into()),
                }
            }
            // A reply to a query, or a hand-over between contexts (decisions §26), not a
            // milestone.
            SpEvent::Closed { .. }
            | SpEvent::Info { .. } | SpEvent::Adopted { .. } | SpEvent::AdoptFailed { .. } | SpEvent::Orphaned { .. } => return,
        };
        self.emit_event(ConnEvent { at: SystemTime::now(), kind, flow_id, remote, local_port, app, detail });
    }

    /// Every listener.
    pub fn listener_infos(&self) -> Vec<ListenerInfo> {
        let mut v: Vec<ListenerInfo> = self
            .listeners
            .iter()
            .map(|(&id, l)| ListenerInfo {
                id,
                port: l.port,
                app: l.app,
                backlog: l.backlog,
                syn_rcvd: l.syn_rcvd,
                unaccepted: l.unaccepted,
            })
            .collect();
        v.sort_by_key(|l| l.id);
        v
    }

    /// Every application in detail, with the exact fill of each of its queues. Reading the
    /// fills writes nothing into the region (the application's and the cores' endpoints are
    /// undisturbed); indices an application corrupted are reported clamped and flagged.
    pub fn app_details(&self) -> Vec<AppDetail> {
        let contexts = self.cores.len() as u32;
        let l = self.cfg.layout;
        let mut ids: Vec<u32> = self.apps.keys().copied().collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let a = &self.apps[&id];
            let ports: Vec<u16> = a.listeners.iter().filter_map(|l| self.listeners.get(l)).map(|l| l.port).collect();
            // attach_app checked that the region holds every queue of the layout, so
            // `queue()` finds each one; a missing one would read as empty, not panic.
            let fill = |off: usize| {
                a.mem.queue(off, l.queue_entries).map_or(
                    Occupancy::from_indices(0, 0, l.queue_entries),
                    |q| q.occupancy(),
                )
            };
            let core_queues = (0..l.num_fp_queues)
                .map(|c| CoreQueues { core: c, to_fp: fill(l.to_fp_offset(c)), to_app: fill(l.to_app_offset(c)) })
                .collect();
            out.push(AppDetail {
                id,
                name: a.name.clone(),
                pid: a.pid,
                uid: a.uid,
                conns: a.conns,
                listen_ports: ports,
                contexts,
                event_queue: a.sp_q.occupancy(),
                request_queue: a.req_q.occupancy(),
                core_queues,
            });
        }
        out
    }

    /// The RFC 9293 state name of connection `id`, if it exists.
    pub fn conn_state(&self, id: u64) -> Option<&'static str> {
        self.conns.get(&FlowKey(id)).map(|c| c.state_name())
    }

    /// Close connection `id`: with `reset`, send RST now and tell the application the
    /// connection was aborted; otherwise send FIN after the data already queued, as if
    /// the application had shut down its direction (the peer's FIN then completes the
    /// close as usual; a handshake in progress is simply abandoned). Returns the state
    /// the connection was in.
    pub fn close_flow(&mut self, id: u64, reset: bool) -> Result<&'static str, CloseFlowError> {
        let key = FlowKey(id);
        let c = self.conns.get(&key).ok_or(CloseFlowError::NotFound)?;
        let state = c.state_name();
        match c.phase {
            Phase::Removing(_) | Phase::TimeWait { .. } => Err(CloseFlowError::AlreadyClosing(state)),
            Phase::Established if !reset => {
                if c.fin_acked {
                    return Err(CloseFlowError::AlreadyClosing(state));
                }
                let (core, flow) = (c.core as usize, c.flow);
                if let Some(flow) = flow {
                    self.cores[core].send(Command::ShutdownTx { flow });
                }
                Ok(state)
            }
            _ => {
                self.abort_conn(key, ErrorCode::Aborted, true);
                Ok(state)
            }
        }
    }

    /// Start a capture on every core (each gets its own copy of `spec`), or stop it.
    pub fn set_capture(&mut self, spec: Option<CaptureSpec>) {
        self.ops.capturing = spec.is_some();
        for c in &mut self.cores {
            c.send(Command::Capture(spec.clone().map(Box::new)));
        }
    }

    /// True while a capture the control API started runs (until it is stopped).
    pub fn capturing(&self) -> bool {
        self.ops.capturing
    }

    /// TIME-WAIT duration (live setting `time_wait_ms`).
    pub fn time_wait(&self) -> Duration {
        self.cfg.time_wait
    }

    /// Change the TIME-WAIT duration for connections entering TIME-WAIT from now on.
    pub fn set_time_wait(&mut self, d: Duration) {
        self.cfg.time_wait = d;
    }

    /// Whether the slow path answers ARP requests for the service address.
    pub fn arp_reply(&self) -> bool {
        self.cfg.arp_reply
    }

    /// Change whether the slow path answers ARP requests (live setting `arp_reply`).
    pub fn set_arp_reply(&mut self, on: bool) {
        self.cfg.arp_reply = on;
    }

    /// Connections in any state (TIME-WAIT and handshakes included).
    pub fn connection_count(&self) -> usize {
        self.conns.len()
    }
}
