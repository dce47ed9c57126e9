//! The gRPC administration API (`proto/control.proto`), served by tasd on a Unix socket
//! (and, only when configured, on TCP).
//!
//! Handlers never touch slow-path or fast-path state: they send a [`Query`] to the slow
//! path's thread and await its answer; flow details come from the owning cores' own
//! snapshots, packet captures from the cores' capture rings.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tas_fastpath::flow::{
    FlowKey, FlowState, F_FIN_REPORTED, F_RECOVERY, F_RX_FIN, F_SACK, F_TLP, F_TS, F_TX_FIN_ACKED, F_TX_FIN_PENDING,
    F_TX_FIN_SENT,
};
use tas_fastpath::io::capture::{CaptureFilter, CaptureSpec, CapturedFrame as CoreFrame};
use tas_proto::control::control_server::{Control, ControlServer};
use tas_proto::control::*;
use tokio::sync::oneshot;
use tokio_stream::Stream;
use tonic::{Request, Response, Status as GrpcStatus};

use crate::attach::AppKicker;
use crate::live::LiveConfig;
use crate::slow::{AppDetail, AppInfo, CloseFlowError, ConnEvent, ConnInfo, ListenerInfo};

/// What the service reports in `GetStatus`.
#[derive(Debug, Clone)]
pub struct StatusSnap {
    /// Interface.
    pub interface: String,
    /// Address with prefix.
    pub address: String,
    /// Fast-path cores.
    pub fp_cores: u32,
    /// XDP mode in use.
    pub xdp_mode: String,
    /// Start time.
    pub started: std::time::Instant,
    /// Flows installed.
    pub flows: u32,
    /// Applications attached.
    pub apps: u32,
    /// Listeners.
    pub listeners: u32,
    /// Connections in any state.
    pub connections: u32,
}

/// Every core's flows, as `(core, [(flow slot, state)])`, one message per core.
pub type FlowSnapshots = crossbeam_channel::Receiver<(u8, Vec<(u32, FlowState)>)>;

/// A question for the slow-path thread.
#[derive(Debug)]
pub enum Query {
    /// Service status.
    Status(oneshot::Sender<StatusSnap>),
    /// Connections, plus a channel on which every core sends its flow snapshot.
    Flows(oneshot::Sender<(Vec<ConnInfo>, u32, FlowSnapshots)>),
    /// Applications.
    Apps(oneshot::Sender<Vec<AppInfo>>),
    /// All counters: (name, value, core or -1).
    Counters(oneshot::Sender<Vec<(String, u64, i32)>>),
    /// Applications in detail.
    AppDetails(oneshot::Sender<Vec<AppDetail>>),
    /// Listeners.
    Listeners(oneshot::Sender<Vec<ListenerInfo>>),
    /// Close or reset a connection; answers the state it was in.
    CloseFlow {
        /// Flow id.
        id: u64,
        /// RST instead of FIN.
        reset: bool,
        /// The answer.
        reply: oneshot::Sender<Result<&'static str, CloseFlowError>>,
    },
    /// Start (`Some`) or stop (`None`) a capture on every core.
    Capture(Option<CaptureSpec>),
    /// The default algorithm of new connections and the parameters.
    CcGet(oneshot::Sender<crate::cc::CcParams>),
    /// Change the algorithm of every connection (and the default), or of one (`flow`).
    CcSet {
        /// Algorithm.
        alg: crate::cc::Algorithm,
        /// One connection's flow id.
        flow: Option<u64>,
        /// Rate for `fixed`, kbit/s.
        rate_kbps: Option<u32>,
        /// Connections changed, or None if `flow` names none.
        reply: oneshot::Sender<Option<usize>>,
    },
    /// One connection's congestion-control state (None: no such flow, or not installed).
    FlowCc {
        /// Flow id.
        id: u64,
        /// The answer.
        reply: oneshot::Sender<Option<crate::cc::CcInfo>>,
    },
    /// New values of the live slow-path settings.
    SetLive {
        /// TIME-WAIT duration.
        time_wait: Duration,
        /// Answer ARP for the service address.
        arp_reply: bool,
    },
}

/// What the control API knows beyond what it asks the slow path.
#[derive(Debug, Default)]
pub struct Ops {
    /// The service address (flows' local address).
    pub local_ip: Option<Ipv4Addr>,
    /// Per core: (CPU, rx queue, bind mode).
    pub cores: Vec<(u32, u32, String)>,
    /// CPU of each fast-path thread.
    pub cpus: Vec<u32>,
    /// The fast path's thread scaling.
    pub scale: Option<Arc<tas_fastpath::shard::ScaleState>>,
    /// Paths and addresses for `GetStatus`.
    pub app_socket: String,
    /// See `app_socket`.
    pub control_socket: String,
    /// See `app_socket`; "" if off.
    pub metrics_address: String,
    /// The running configuration.
    pub live: Option<Arc<LiveConfig>>,
    /// Connection events for `Watch`.
    pub events: Option<tokio::sync::broadcast::Sender<ConnEvent>>,
    /// Detaches applications.
    pub kicker: Option<AppKicker>,
    /// True while a capture runs (one at a time).
    pub capture_busy: AtomicBool,
    /// Becomes true when tasd stops: open streams (watch, capture) end, so that the
    /// server's graceful shutdown does not wait for them.
    pub stopping: Option<tokio::sync::watch::Receiver<bool>>,
}

/// Resolves when `stopping` turns true (never, without a receiver).
async fn stopped(stopping: Option<tokio::sync::watch::Receiver<bool>>) {
    match stopping {
        Some(mut rx) => {
            let _ = rx.wait_for(|s| *s).await;
        }
        None => std::future::pending().await,
    }
}

/// The tonic service.
#[derive(Debug, Clone)]
pub struct ControlService {
    tx: crossbeam_channel::Sender<Query>,
    ops: Arc<Ops>,
}

/// Frames a capture may buffer between the cores and the client (each slot holds one
/// frame of up to 1514 bytes: 6 MB, allocated when a capture starts).
pub const CAPTURE_RING: usize = 4096;
/// Longest capture.
pub const MAX_CAPTURE: Duration = Duration::from_secs(600);
/// The retransmission-timeout bounds the fast path uses (`FpConfig` defaults), for
/// reporting a flow's current RTO.
const RTO_BOUNDS_US: (u32, u32, u32) = (200_000, 60_000_000, 1_000_000);

type GrpcResult<T> = Result<Response<T>, GrpcStatus>;
type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, GrpcStatus>> + Send + 'static>>;

impl ControlService {
    /// A service that asks the slow path on `tx`.
    pub fn new(tx: crossbeam_channel::Sender<Query>) -> Self {
        ControlService { tx, ops: Arc::new(Ops::default()) }
    }

    /// A service with everything the operator's calls need.
    pub fn with_ops(tx: crossbeam_channel::Sender<Query>, ops: Ops) -> Self {
        ControlService { tx, ops: Arc::new(ops) }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, GrpcStatus> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| GrpcStatus::unavailable("tasd is shutting down"))?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| GrpcStatus::deadline_exceeded("the slow path did not answer within 5 s"))?
            .map_err(|_| GrpcStatus::unavailable("tasd is shutting down"))
    }

    async fn status(&self) -> Result<Status, GrpcStatus> {
        let s = self.ask(Query::Status).await?;
        Ok(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: s.started.elapsed().as_millis() as u64,
            interface: s.interface,
            address: s.address,
            fp_cores: s.fp_cores,
            xdp_mode: s.xdp_mode,
            flows: s.flows,
            apps: s.apps,
            listeners: s.listeners,
            connections: s.connections,
            pid: std::process::id(),
            bind_modes: self.ops.cores.iter().map(|c| c.2.clone()).collect(),
            app_socket: self.ops.app_socket.clone(),
            control_socket: self.ops.control_socket.clone(),
            metrics_address: self.ops.metrics_address.clone(),
        })
    }

    async fn counters(&self) -> Result<Vec<Counter>, GrpcStatus> {
        let cs = self.ask(Query::Counters).await?;
        Ok(cs
            .into_iter()
            .map(|(name, value, core)| {
                let (help, gauge) = crate::metrics::counter_help(&name, core >= 0);
                Counter { name, value, core, help: help.to_string(), gauge }
            })
            .collect())
    }

    /// Every flow with its fast-path state (if installed), sorted by id.
    async fn flows(&self) -> Result<Vec<Flow>, GrpcStatus> {
        let (conns, cores, rx) = self.ask(Query::Flows).await?;
        let snaps = tokio::task::spawn_blocking(move || {
            let mut all = Vec::new();
            for _ in 0..cores {
                match rx.recv_timeout(Duration::from_secs(2)) {
                    Ok(s) => all.push(s),
                    Err(_) => break,
                }
            }
            all
        })
        .await
        .map_err(|e| GrpcStatus::internal(e.to_string()))?;
        let find = |core: u8, flow: u32| {
            snaps.iter().find(|(c, _)| *c == core).and_then(|(_, v)| v.iter().find(|(i, _)| *i == flow)).map(|(_, f)| *f)
        };
        let local_ip = self.ops.local_ip.unwrap_or(Ipv4Addr::UNSPECIFIED);
        let mut flows: Vec<Flow> = conns
            .into_iter()
            .map(|c| {
                let st = c.flow.and_then(|i| find(c.core, i).map(|f| (i, f)));
                flow_message(local_ip, &c, st)
            })
            .collect();
        flows.sort_by_key(|f| f.id);
        Ok(flows)
    }

    /// The Prometheus page: the same counters as `GetCounters`, plus the status gauges.
    pub async fn metrics_text(&self) -> Result<String, GrpcStatus> {
        let s = self.status().await?;
        let mut cs: Vec<(String, u64, i32)> =
            self.ask(Query::Counters).await?.into_iter().collect();
        for (n, v) in [
            ("connections", s.connections as u64),
            ("flows", s.flows as u64),
            ("apps", s.apps as u64),
            ("listeners", s.listeners as u64),
            ("uptime_seconds", s.uptime_ms / 1000),
        ] {
            cs.push((n.to_string(), v, -1));
        }
        if let Some(sc) = &self.ops.scale {
            let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
            for (n, v) in [
                ("fp_threads_active", sc.active() as u64),
                ("fp_scale_ups", get(&sc.scale_ups)),
                ("fp_scale_downs", get(&sc.scale_downs)),
                ("fp_shard_handoffs", get(&sc.handoffs)),
            ] {
                cs.push((n.to_string(), v, -1));
            }
        }
        let info = [
            ("version", s.version.clone()),
            ("interface", s.interface.clone()),
            ("address", s.address.clone()),
            ("xdp_mode", s.xdp_mode.clone()),
        ];
        Ok(crate::metrics::render_prometheus(&info, &cs))
    }

    fn live(&self) -> Result<&Arc<LiveConfig>, GrpcStatus> {
        self.ops.live.as_ref().ok_or_else(|| GrpcStatus::unimplemented("this tasd has no configuration view"))
    }

    fn config_view(live: &LiveConfig) -> ConfigView {
        ConfigView {
            entries: live
                .current()
                .entries()
                .into_iter()
                .map(|(k, value)| ConfigEntry { key: k.key.into(), value, live: k.live, description: k.description.into() })
                .collect(),
            config_file: live.file().map(|p| p.display().to_string()).unwrap_or_default(),
        }
    }
}

/// The parameters of `CcConfig`, as the configuration file names them.
fn cc_parameters(p: &crate::cc::CcParams) -> std::collections::HashMap<String, String> {
    [
        ("ecn", p.ecn.to_string()),
        ("cc_initial_window", p.initial_window.to_string()),
        ("dctcp_g", p.dctcp_g.to_string()),
        ("cc_rate_step_kbps", p.rate_step_kbps.to_string()),
        ("cc_rate_step_us", p.rate_step_us.to_string()),
        ("cc_min_rate_kbps", p.min_rate_kbps.to_string()),
        ("cc_max_rate_kbps", p.max_rate_kbps.to_string()),
        ("cc_fixed_rate_kbps", p.fixed_rate_kbps.to_string()),
        ("timely_t_low_us", p.timely_t_low_us.to_string()),
        ("timely_t_high_us", p.timely_t_high_us.to_string()),
        ("timely_alpha", p.timely_alpha.to_string()),
        ("timely_beta", p.timely_beta.to_string()),
        ("timely_delta_kbps", p.timely_delta_kbps.to_string()),
        ("cubic_c", p.cubic_c.to_string()),
        ("cubic_beta", p.cubic_beta.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect()
}

/// A flow id as `tasctl flows` shows it: decimal or 0x-hex.
fn parse_flow_id(s: &str) -> Option<u64> {
    match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

/// The `FlowCc` message of flow `id`.
pub fn flow_cc_message(id: u64, i: &crate::cc::CcInfo) -> FlowCc {
    FlowCc {
        id,
        algorithm: i.algorithm.name().to_string(),
        rate_bps: i.rate_kbps as u64 * 1000,
        cwnd_bytes: i.cwnd as u64,
        alpha: i.alpha,
        ecn_fraction: i.ecn_fraction,
        rtt_us: i.rtt_us,
        retransmits: i.retransmits,
        delivery_bps: i.measured_kbps as u64 * 1000,
        slow_start: i.slow_start,
    }
}

fn flag_names(f: &FlowState) -> Vec<String> {
    [
        (F_TS, "timestamps"),
        (F_SACK, "sack"),
        (F_RECOVERY, "recovery"),
        (F_TLP, "tail_loss_probe"),
        (F_RX_FIN, "fin_received"),
        (F_FIN_REPORTED, "fin_reported"),
        (F_TX_FIN_PENDING, "fin_pending"),
        (F_TX_FIN_SENT, "fin_sent"),
        (F_TX_FIN_ACKED, "fin_acked"),
    ]
    .into_iter()
    .filter(|(bit, _)| f.flags & bit != 0)
    .map(|(_, n)| n.to_string())
    .collect()
}

/// The control API's view of one connection and, if installed, its flow.
pub fn flow_message(local_ip: Ipv4Addr, c: &ConnInfo, st: Option<(u32, FlowState)>) -> Flow {
    let id = FlowKey::new(u32::from(*c.remote.ip()), c.remote.port(), c.local_port).0;
    let mut out = Flow {
        id,
        local: SocketAddrV4::new(local_ip, c.local_port).to_string(),
        remote: c.remote.to_string(),
        state: c.state.to_string(),
        app_id: c.app,
        core: c.core as u32,
        ..Default::default()
    };
    if let Some((slot, f)) = st {
        let (min, max, initial) = RTO_BOUNDS_US;
        let rto = tas_fastpath::rx::rto_us(&f, min, max, initial) as u64;
        out.installed = true;
        out.flow_slot = slot;
        out.snd_una = f.snd_una;
        out.snd_nxt = f.snd_nxt();
        out.rcv_nxt = f.rcv_nxt;
        out.snd_wnd = f.snd_wnd;
        out.rcv_wnd = f.rx_avail;
        out.mss = f.mss as u32;
        // Bytes received in order: how far rcv_nxt moved since installation, less the
        // peer's FIN (the fast path keeps no separate counter: see docs/decisions.md).
        let fin = (f.flags & tas_fastpath::flow::F_RX_FIN != 0) as u32;
        out.rx_bytes = f.rcv_nxt.wrapping_sub(c.rcv_start).wrapping_sub(fin) as u64;
        out.tx_bytes = f.cnt_acked as u64;
        out.retransmits = f.cnt_retx as u64;
        out.srtt_us = f.srtt_us;
        out.rttvar_us = f.rttvar_us;
        out.rto_us = (rto << f.rto_backoff.min(16)).min(max as u64) as u32;
        out.rto_backoff = f.rto_backoff as u32;
        out.snd_wscale = f.snd_wscale as u32;
        out.rcv_wscale = f.rcv_wscale as u32;
        out.timestamps = f.flags & F_TS != 0;
        out.dupacks = f.dupacks as u32;
        out.tx_in_flight = f.tx_sent;
        out.tx_unsent = f.tx_avail;
        out.tx_buffer = f.tx_size();
        out.rx_buffered = f.rx_size().saturating_sub(f.rx_avail);
        out.rx_buffer = f.rx_size();
        out.ooo_intervals = f.ooo_count as u32;
        out.flags = flag_names(&f);
        out.remote_mac = f.remote_mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":");
        out.app_conn = f.conn;
        // The slow path's view (a timeout's recovery, the scoreboard) refined with the
        // flow's own fast recovery and duplicate ACKs, as TCP_INFO does.
        use tas_proto::shm::{CA_DISORDER, CA_OPEN, CA_RECOVERY};
        out.ca_state = match c.tcp.ca_state {
            CA_OPEN | CA_DISORDER if f.flags & F_RECOVERY != 0 => CA_RECOVERY,
            CA_OPEN if f.dupacks > 0 => CA_DISORDER,
            s => s,
        } as u32;
    }
    out.min_rtt_us = c.tcp.min_rtt_us;
    out.total_rto = c.tcp.total_rto as u32;
    out.rto_recoveries = c.tcp.total_rto_recoveries as u32;
    out.sacked = c.tcp.sacked;
    out.lost = c.tcp.lost;
    out
}

/// True if `f` passes `filter` (see `FlowFilter` in control.proto).
pub fn flow_matches(filter: &FlowFilter, f: &Flow) -> bool {
    let lport = f.local.rsplit_once(':').and_then(|(_, p)| p.parse::<u32>().ok()).unwrap_or(0);
    let (rip, rport) = match f.remote.parse::<SocketAddrV4>() {
        Ok(a) => (a.ip().to_string(), a.port() as u32),
        Err(_) => (String::new(), 0),
    };
    (filter.local_port == 0 || lport == filter.local_port)
        && (filter.remote_port == 0 || rport == filter.remote_port)
        && (filter.port == 0 || lport == filter.port || rport == filter.port)
        && (filter.remote_ip.is_empty() || rip == filter.remote_ip)
        && (filter.state.is_empty() || f.state.eq_ignore_ascii_case(&filter.state))
        && (filter.app_id == 0 || f.app_id == filter.app_id)
}

fn event_message(e: &ConnEvent) -> Event {
    Event {
        unix_ms: e.at.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
        kind: e.kind.name().to_string(),
        flow_id: e.flow_id,
        remote: e.remote.map(|r| r.to_string()).unwrap_or_default(),
        local_port: e.local_port as u32,
        app_id: e.app,
        detail: e.detail.clone(),
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn get_status(&self, _r: Request<StatusRequest>) -> GrpcResult<Status> {
        Ok(Response::new(self.status().await?))
    }

    async fn list_flows(&self, r: Request<FlowFilter>) -> GrpcResult<FlowList> {
        let filter = r.into_inner();
        if !filter.remote_ip.is_empty() && filter.remote_ip.parse::<Ipv4Addr>().is_err() {
            return Err(GrpcStatus::invalid_argument(format!("remote_ip {:?} is not an IPv4 address", filter.remote_ip)));
        }
        for (name, v) in [("local_port", filter.local_port), ("remote_port", filter.remote_port), ("port", filter.port)] {
            if v > 65535 {
                return Err(GrpcStatus::invalid_argument(format!("{name} {v} is not a port (0-65535)")));
            }
        }
        let flows = self.flows().await?.into_iter().filter(|f| flow_matches(&filter, f)).collect();
        Ok(Response::new(FlowList { flows }))
    }

    async fn list_apps(&self, _r: Request<AppsRequest>) -> GrpcResult<AppList> {
        let apps = self.ask(Query::AppDetails).await?;
        Ok(Response::new(AppList {
            apps: apps
                .into_iter()
                .map(|a| App {
                    id: a.id,
                    name: a.name,
                    pid: a.pid,
                    uid: a.uid,
                    connections: a.conns,
                    listeners: a.listen_ports.len() as u32,
                    contexts: a.contexts,
                    event_queue_used: a.event_queue.used,
                    event_queue_capacity: a.event_queue.capacity,
                    listen_ports: a.listen_ports.into_iter().map(u32::from).collect(),
                    request_queue_used: a.request_queue.used,
                    request_queue_capacity: a.request_queue.capacity,
                    core_queues: a
                        .core_queues
                        .iter()
                        .map(|q| CoreQueues {
                            core: q.core,
                            to_fp_used: q.to_fp.used,
                            to_fp_capacity: q.to_fp.capacity,
                            to_app_used: q.to_app.used,
                            to_app_capacity: q.to_app.capacity,
                            corrupt: q.to_fp.corrupt || q.to_app.corrupt,
                        })
                        .collect(),
                    slow_queues_corrupt: a.event_queue.corrupt || a.request_queue.corrupt,
                })
                .collect(),
        }))
    }

    async fn get_counters(&self, _r: Request<CountersRequest>) -> GrpcResult<Counters> {
        Ok(Response::new(Counters { counters: self.counters().await? }))
    }

    async fn get_flow(&self, r: Request<FlowRequest>) -> GrpcResult<Flow> {
        let id = r.into_inner().id;
        self.flows()
            .await?
            .into_iter()
            .find(|f| f.id == id)
            .map(Response::new)
            .ok_or_else(|| GrpcStatus::not_found(format!("no flow with id {id} (list them with `tasctl flows`)")))
    }

    async fn close_flow(&self, r: Request<CloseFlowRequest>) -> GrpcResult<CloseFlowReply> {
        let CloseFlowRequest { id, reset } = r.into_inner();
        match self.ask(|reply| Query::CloseFlow { id, reset, reply }).await? {
            Ok(state) => Ok(Response::new(CloseFlowReply { state: state.to_string() })),
            Err(CloseFlowError::NotFound) => {
                Err(GrpcStatus::not_found(format!("no flow with id {id} (list them with `tasctl flows`)")))
            }
            Err(e @ CloseFlowError::AlreadyClosing(_)) => Err(GrpcStatus::failed_precondition(e.to_string())),
        }
    }

    async fn list_listeners(&self, _r: Request<ListenersRequest>) -> GrpcResult<ListenerList> {
        let ls = self.ask(Query::Listeners).await?;
        Ok(Response::new(ListenerList {
            listeners: ls
                .into_iter()
                .map(|l| Listener {
                    id: l.id,
                    port: l.port as u32,
                    app_id: l.app,
                    backlog: l.backlog,
                    syn_received: l.syn_rcvd,
                    unaccepted: l.unaccepted,
                })
                .collect(),
        }))
    }

    async fn list_cores(&self, _r: Request<CoresRequest>) -> GrpcResult<CoreList> {
        let cs = self.ask(Query::Counters).await?;
        let ncores = cs.iter().map(|c| c.2 + 1).max().unwrap_or(0).max(self.ops.cores.len() as i32);
        let cores = (0..ncores)
            .map(|i| {
                let get = |n: &str| cs.iter().find(|c| c.2 == i && c.0 == n).map_or(0, |c| c.1);
                let drops: u64 = cs.iter().filter(|c| c.2 == i && (c.0.starts_with("drop_") || c.0 == "exceptions_dropped")).map(|c| c.1).sum();
                let (cpu, queue, mode) = self.ops.cores.get(i as usize).cloned().unwrap_or((0, i as u32, String::new()));
                let thread = match &self.ops.scale {
                    Some(s) => s.serving(i as usize).map_or(-1, |t| t as i32),
                    None => i,
                };
                let cpu = usize::try_from(thread).ok().and_then(|t| self.ops.cpus.get(t).copied()).unwrap_or(cpu);
                Core {
                    id: i as u32,
                    thread,
                    cpu,
                    queue,
                    bind_mode: mode,
                    rx_frames: get("rx_frames"),
                    tx_frames: get("tx_frames"),
                    busy_polls: get("busy_polls"),
                    idle_polls: get("idle_polls"),
                    sleeps: get("sleeps"),
                    flows: get("flows"),
                    drops,
                    exceptions: get("exceptions"),
                    rx_payload_bytes: get("rx_payload_bytes"),
                    tx_payload_bytes: get("tx_payload_bytes"),
                    busy_cycles: get("busy_cycles"),
                    idle_cycles: get("idle_cycles"),
                    kick_cycles: get("kick_cycles"),
                    ticks_per_us: cs.iter().find(|c| c.2 == -1 && c.0 == "tsc_ticks_per_us").map_or(0, |c| c.1),
                }
            })
            .collect();
        let scaling = self.ops.scale.as_ref().map(|s| {
            let p = s.params();
            tas_proto::control::Scaling {
                threads: s.shards() as u32,
                active_threads: s.active() as u32,
                forced: s.forced() as u32,
                up_pct: p.up_pct,
                down_pct: p.down_pct,
                up_ms: p.up_ms,
                down_ms: p.down_ms,
                scale_ups: s.scale_ups.load(std::sync::atomic::Ordering::Relaxed),
                scale_downs: s.scale_downs.load(std::sync::atomic::Ordering::Relaxed),
                handoffs: s.handoffs.load(std::sync::atomic::Ordering::Relaxed),
                load_pct: s.load_pct.load(std::sync::atomic::Ordering::Relaxed),
                events: s
                    .events()
                    .into_iter()
                    .map(|e| tas_proto::control::ScaleEvent { at_unix_us: e.at_unix_us, from: e.from, to: e.to, load_pct: e.load_pct, forced: e.forced })
                    .collect(),
            }
        });
        Ok(Response::new(CoreList { cores, scaling }))
    }

    async fn detach_app(&self, r: Request<DetachAppRequest>) -> GrpcResult<DetachAppReply> {
        let id = r.into_inner().id;
        let apps = self.ask(Query::AppDetails).await?;
        if !apps.iter().any(|a| a.id == id) {
            return Err(GrpcStatus::not_found(format!("no application with id {id} (list them with `tasctl apps`)")));
        }
        let kicker = self.ops.kicker.as_ref().ok_or_else(|| GrpcStatus::unimplemented("this tasd cannot detach applications"))?;
        if !kicker.detach(id) {
            return Err(GrpcStatus::not_found(format!("application {id} is not attached any more")));
        }
        Ok(Response::new(DetachAppReply {}))
    }

    async fn get_config(&self, _r: Request<ConfigRequest>) -> GrpcResult<ConfigView> {
        Ok(Response::new(Self::config_view(self.live()?)))
    }

    async fn set_config(&self, r: Request<SetConfigRequest>) -> GrpcResult<ConfigView> {
        let SetConfigRequest { key, value } = r.into_inner();
        let live = self.live()?;
        match live.set(&key, &value) {
            Ok(applied) => {
                tracing::info!(key = %key, value = %value, applied = ?applied.applied, "configuration changed by the control API");
                Ok(Response::new(Self::config_view(live)))
            }
            Err(e) if e.contains("cannot change while tasd runs") => Err(GrpcStatus::failed_precondition(e)),
            Err(e) => Err(GrpcStatus::invalid_argument(e)),
        }
    }

    async fn get_congestion_control(&self, _r: Request<CcRequest>) -> GrpcResult<CcConfig> {
        let p = self.ask(Query::CcGet).await?;
        Ok(Response::new(CcConfig { algorithm: p.algorithm.name().to_string(), parameters: cc_parameters(&p) }))
    }

    async fn set_congestion_control(&self, r: Request<CcConfig>) -> GrpcResult<CcConfig> {
        let CcConfig { algorithm, parameters } = r.into_inner();
        let alg: crate::cc::Algorithm = algorithm.parse().map_err(|e: crate::cc::UnknownAlgorithm| GrpcStatus::invalid_argument(e.to_string()))?;
        let mut flow = None;
        let mut rate_kbps = None;
        for (k, v) in &parameters {
            match k.as_str() {
                "flow" => {
                    flow = Some(parse_flow_id(v).ok_or_else(|| {
                        GrpcStatus::invalid_argument(format!("flow={v}: not a flow id (see `tasctl flows`)"))
                    })?)
                }
                "rate_kbps" => {
                    rate_kbps = Some(v.parse::<u32>().ok().filter(|r| *r > 0).ok_or_else(|| {
                        GrpcStatus::invalid_argument(format!("rate_kbps={v}: must be a whole number of kbit/s above 0"))
                    })?)
                }
                other => {
                    return Err(GrpcStatus::invalid_argument(format!(
                        "unknown parameter {other:?}: set takes flow=ID and rate_kbps=N; the algorithms' parameters are configuration keys (tasctl config)"
                    )))
                }
            }
        }
        if rate_kbps.is_some() && alg != crate::cc::Algorithm::Fixed {
            return Err(GrpcStatus::invalid_argument("rate_kbps applies to the fixed algorithm only"));
        }
        match self.ask(|reply| Query::CcSet { alg, flow, rate_kbps, reply }).await? {
            Some(_) => {}
            None => return Err(GrpcStatus::not_found(format!("no flow with id {} (list them with `tasctl flows`)", flow.unwrap_or(0)))),
        }
        let p = self.ask(Query::CcGet).await?;
        let shown = if flow.is_some() { alg } else { p.algorithm };
        Ok(Response::new(CcConfig { algorithm: shown.name().to_string(), parameters: cc_parameters(&p) }))
    }

    async fn get_flow_congestion(&self, r: Request<FlowRequest>) -> GrpcResult<FlowCc> {
        let id = r.into_inner().id;
        match self.ask(|reply| Query::FlowCc { id, reply }).await? {
            Some(i) => Ok(Response::new(flow_cc_message(id, &i))),
            None => Err(GrpcStatus::not_found(format!("no established flow with id {id} (list them with `tasctl flows`)"))),
        }
    }

    type WatchStream = BoxStream<Event>;

    async fn watch(&self, _r: Request<WatchRequest>) -> GrpcResult<Self::WatchStream> {
        let events = self.ops.events.as_ref().ok_or_else(|| GrpcStatus::unimplemented("this tasd publishes no events"))?;
        let mut sub = events.subscribe();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Event, GrpcStatus>>(256);
        let stop = stopped(self.ops.stopping.clone());
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            tokio::pin!(stop);
            loop {
                let next = tokio::select! {
                    n = sub.recv() => n,
                    _ = &mut stop => break, // tasd stops: end the stream
                };
                let msg = match next {
                    Ok(e) => event_message(&e),
                    Err(RecvError::Lagged(n)) => Event {
                        unix_ms: SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64),
                        kind: "lagged".into(),
                        detail: n.to_string(),
                        ..Default::default()
                    },
                    Err(RecvError::Closed) => break,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    break; // the watcher went away
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type CaptureStream = BoxStream<CapturedFrame>;

    async fn capture(&self, r: Request<CaptureRequest>) -> GrpcResult<Self::CaptureStream> {
        let CaptureRequest { host, port, duration_ms, max_frames } = r.into_inner();
        let host = match host.as_str() {
            "" => None,
            h => Some(u32::from(
                h.parse::<Ipv4Addr>().map_err(|_| GrpcStatus::invalid_argument(format!("host {h:?} is not an IPv4 address")))?,
            )),
        };
        if port > 65535 {
            return Err(GrpcStatus::invalid_argument(format!("port {port} is not a port (0-65535)")));
        }
        let duration = Duration::from_millis(duration_ms as u64);
        if duration.is_zero() || duration > MAX_CAPTURE {
            return Err(GrpcStatus::invalid_argument(format!(
                "duration {duration_ms} ms: a capture lasts 1 ms to {} s",
                MAX_CAPTURE.as_secs()
            )));
        }
        if self.ops.capture_busy.swap(true, Ordering::SeqCst) {
            return Err(GrpcStatus::failed_precondition("a capture is already running; wait for it to end"));
        }
        let (sink, ring) = crossbeam_channel::bounded::<CoreFrame>(CAPTURE_RING);
        let dropped = Arc::new(AtomicU64::new(0));
        let spec = CaptureSpec {
            filter: CaptureFilter { host, port: (port != 0).then_some(port as u16) },
            until: SystemTime::now() + duration,
            max_frames: max_frames as u64,
            sink,
            dropped: dropped.clone(),
        };
        if self.tx.send(Query::Capture(Some(spec))).is_err() {
            self.ops.capture_busy.store(false, Ordering::SeqCst);
            return Err(GrpcStatus::unavailable("tasd is shutting down"));
        }
        tracing::info!(?host, port, duration_ms, max_frames, "packet capture started");
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<CapturedFrame, GrpcStatus>>(1024);
        let (slow, ops) = (self.tx.clone(), self.ops.clone());
        let deadline = std::time::Instant::now() + duration;
        let stopping = self.ops.stopping.clone();
        let is_stopping = move || stopping.as_ref().is_some_and(|s| *s.borrow());
        tokio::task::spawn_blocking(move || {
            let msg = |f: &CoreFrame| CapturedFrame {
                unix_ns: f.unix_ns,
                core: f.core as u32,
                tx: f.tx,
                data: f.data().to_vec(),
                dropped: 0,
            };
            let mut sent = 0u64;
            let mut client_gone = false;
            while !client_gone && (max_frames == 0 || sent < max_frames as u64) {
                let left = deadline.saturating_duration_since(std::time::Instant::now());
                if left.is_zero() || is_stopping() {
                    break;
                }
                match ring.recv_timeout(left.min(Duration::from_millis(200))) {
                    Ok(f) => {
                        client_gone = tx.blocking_send(Ok(msg(&f))).is_err();
                        sent += 1;
                    }
                    Err(crossbeam_channel::RecvTimeoutError::Timeout) => client_gone = tx.is_closed(),
                    Err(crossbeam_channel::RecvTimeoutError::Disconnected) => break,
                }
            }
            let _ = slow.send(Query::Capture(None));
            // Frames the cores copied before they stopped.
            while !client_gone && (max_frames == 0 || sent < max_frames as u64) {
                match ring.recv_timeout(Duration::from_millis(50)) {
                    Ok(f) => {
                        client_gone = tx.blocking_send(Ok(msg(&f))).is_err();
                        sent += 1;
                    }
                    Err(_) => break,
                }
            }
            let lost = dropped.load(Ordering::Relaxed);
            let _ = tx.blocking_send(Ok(CapturedFrame { dropped: lost, ..Default::default() }));
            tracing::info!(frames = sent, dropped = lost, "packet capture ended");
            ops.capture_busy.store(false, Ordering::SeqCst);
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Create the Unix socket at `path` (mode 0660, group `group` if given), removing a stale
/// one, and return its listener.
pub fn bind_unix(path: &Path, group: Option<u32>) -> Result<tokio::net::UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    if std::os::unix::net::UnixStream::connect(path).is_ok() {
        return Err(format!(
            "another tasd already serves the control socket {}: stop it, or give this one another --control-socket",
            path.display()
        ));
    }
    let _ = std::fs::remove_file(path);
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on control socket {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| format!("cannot chmod 0660 the control socket {}: {e}", path.display()))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))
            .map_err(|e| format!("cannot give the control socket {} to group {gid}: {e} (needs CAP_CHOWN)", path.display()))?;
    }
    Ok(listener)
}

/// Serve the API on `listener` until `shutdown` resolves, then remove the socket file.
pub async fn serve_unix_listener(
    listener: tokio::net::UnixListener,
    path: &Path,
    svc: ControlService,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    let res = tonic::transport::Server::builder()
        .add_service(ControlServer::new(svc))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("control API server failed: {e}"));
    let _ = std::fs::remove_file(path);
    res
}

/// Serve the API on a Unix socket at `path` (mode 0660) until `shutdown` resolves.
pub async fn serve_unix(
    path: &Path,
    svc: ControlService,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let listener = bind_unix(path, None)?;
    serve_unix_listener(listener, path, svc, shutdown).await
}

/// Serve the API on a TCP listener until `shutdown` resolves.
pub async fn serve_tcp(
    listener: tokio::net::TcpListener,
    svc: ControlService,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(ControlServer::new(svc))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("control API server (TCP) failed: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn() -> ConnInfo {
        ConnInfo {
            remote: "10.77.0.2:40000".parse().unwrap(),
            local_port: 7,
            state: "ESTABLISHED",
            app: 1,
            core: 0,
            flow: Some(3),
            // 1234 bytes and a FIN received since installation (rcv_nxt is 7 below).
            rcv_start: 7u32.wrapping_sub(1235),
            cc: None,
            tcp: tas_proto::shm::ConnInfo {
                ca_state: tas_proto::shm::CA_LOSS,
                min_rtt_us: 40,
                total_rto: 3,
                total_rto_recoveries: 2,
                sacked: 5,
                lost: 1,
                ..Default::default()
            },
        }
    }

    #[test]
    fn flow_message_maps_every_field() {
        let f = FlowState {
            remote_ip: 0x0a4d0002,
            remote_port: 40000,
            local_port: 7,
            snd_una: 100,
            tx_sent: 10,
            tx_avail: 5,
            tx_size_log2: 12,
            rx_size_log2: 13,
            rx_avail: 8000,
            rcv_nxt: 7,
            snd_wnd: 65535,
            mss: 1448,
            cnt_acked: 4321,
            cnt_retx: 2,
            srtt_us: 50,
            rttvar_us: 25,
            flags: F_TS | F_RX_FIN,
            remote_mac: [2, 0, 0, 0, 0, 0xab],
            ..FlowState::default()
        };
        let m = flow_message("10.77.0.1".parse().unwrap(), &conn(), Some((3, f)));
        assert_eq!(m.id, FlowKey::new(0x0a4d0002, 40000, 7).0);
        assert_eq!((m.local.as_str(), m.remote.as_str()), ("10.77.0.1:7", "10.77.0.2:40000"));
        assert_eq!((m.snd_una, m.snd_nxt, m.rcv_nxt), (100, 110, 7));
        assert_eq!((m.rx_bytes, m.tx_bytes, m.retransmits), (1234, 4321, 2));
        assert_eq!((m.tx_in_flight, m.tx_unsent, m.rx_buffered, m.rcv_wnd), (10, 5, 192, 8000));
        assert_eq!(m.rto_us, 200_000, "srtt + 4 rttvar is below the 200 ms floor");
        assert_eq!(m.flags, vec!["timestamps", "fin_received"]);
        assert_eq!(m.remote_mac, "02:00:00:00:00:ab");
        assert!(m.installed && m.timestamps);
        assert_eq!((m.ca_state, m.min_rtt_us, m.total_rto, m.rto_recoveries, m.sacked, m.lost), (4, 40, 3, 2, 5, 1));
        let open = ConnInfo { tcp: Default::default(), ..conn() };
        let rec = FlowState { flags: F_RECOVERY, ..f };
        assert_eq!(flow_message("10.77.0.1".parse().unwrap(), &open, Some((3, rec))).ca_state, 3, "fast recovery");
        let dis = FlowState { dupacks: 2, ..f };
        assert_eq!(flow_message("10.77.0.1".parse().unwrap(), &open, Some((3, dis))).ca_state, 1, "duplicate ACKs");
        let bare = flow_message("10.77.0.1".parse().unwrap(), &ConnInfo { flow: None, ..conn() }, None);
        assert!(!bare.installed && bare.rx_bytes == 0 && bare.id == m.id);
    }

    #[test]
    fn filters() {
        let m = flow_message("10.77.0.1".parse().unwrap(), &conn(), None);
        let all = FlowFilter::default();
        assert!(flow_matches(&all, &m));
        assert!(flow_matches(&FlowFilter { port: 7, ..all.clone() }, &m));
        assert!(flow_matches(&FlowFilter { port: 40000, ..all.clone() }, &m));
        assert!(!flow_matches(&FlowFilter { port: 8, ..all.clone() }, &m));
        assert!(flow_matches(&FlowFilter { local_port: 7, remote_ip: "10.77.0.2".into(), ..all.clone() }, &m));
        assert!(!flow_matches(&FlowFilter { remote_ip: "10.77.0.3".into(), ..all.clone() }, &m));
        assert!(flow_matches(&FlowFilter { state: "established".into(), app_id: 1, ..all.clone() }, &m));
        assert!(!flow_matches(&FlowFilter { app_id: 2, ..all.clone() }, &m));
        assert!(!flow_matches(&FlowFilter { remote_port: 1, ..all }, &m));
    }
}
