//! The gRPC administration API (`proto/control.proto`), served by tasd on a Unix socket.
//!
//! Handlers never touch slow-path or fast-path state: they send a [`Query`] to the slow
//! path's thread and await its answer; flow details come from the owning cores' own
//! snapshots.

use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

use tas_proto::control::control_server::{Control, ControlServer};
use tas_proto::control::*;
use tokio::sync::oneshot;
use tonic::{Request, Response, Status as GrpcStatus};

use tas_fastpath::flow::FlowState;

use crate::slow::{AppInfo, ConnInfo};

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
}

/// A question for the slow-path thread.
#[derive(Debug)]
pub enum Query {
    /// Service status.
    Status(oneshot::Sender<StatusSnap>),
    /// Connections, plus a channel on which every core sends its flow snapshot.
    Flows(oneshot::Sender<(Vec<ConnInfo>, u32, crossbeam_channel::Receiver<(u8, Vec<(u32, FlowState)>)>)>),
    /// Applications.
    Apps(oneshot::Sender<Vec<AppInfo>>),
    /// All counters: (name, value, core or -1).
    Counters(oneshot::Sender<Vec<(String, u64, i32)>>),
}

/// The tonic service.
#[derive(Debug, Clone)]
pub struct ControlService {
    tx: crossbeam_channel::Sender<Query>,
}

impl ControlService {
    /// A service that asks the slow path on `tx`.
    pub fn new(tx: crossbeam_channel::Sender<Query>) -> Self {
        ControlService { tx }
    }

    async fn ask<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Query) -> Result<T, GrpcStatus> {
        let (tx, rx) = oneshot::channel();
        self.tx.send(make(tx)).map_err(|_| GrpcStatus::unavailable("tasd is shutting down"))?;
        tokio::time::timeout(Duration::from_secs(5), rx)
            .await
            .map_err(|_| GrpcStatus::deadline_exceeded("the slow path did not answer within 5 s"))?
            .map_err(|_| GrpcStatus::unavailable("tasd is shutting down"))
    }
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn get_status(&self, _r: Request<StatusRequest>) -> Result<Response<Status>, GrpcStatus> {
        let s = self.ask(Query::Status).await?;
        Ok(Response::new(Status {
            version: env!("CARGO_PKG_VERSION").to_string(),
            uptime_ms: s.started.elapsed().as_millis() as u64,
            interface: s.interface,
            address: s.address,
            fp_cores: s.fp_cores,
            xdp_mode: s.xdp_mode,
            flows: s.flows,
            apps: s.apps,
            listeners: s.listeners,
        }))
    }

    async fn list_flows(&self, r: Request<FlowFilter>) -> Result<Response<FlowList>, GrpcStatus> {
        let filter = r.into_inner();
        if !filter.remote_ip.is_empty() && filter.remote_ip.parse::<Ipv4Addr>().is_err() {
            return Err(GrpcStatus::invalid_argument(format!("remote_ip {:?} is not an IPv4 address", filter.remote_ip)));
        }
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
        let mut flows: Vec<Flow> = conns
            .into_iter()
            .filter(|c| filter.local_port == 0 || c.local_port as u32 == filter.local_port)
            .filter(|c| filter.remote_port == 0 || c.remote.port() as u32 == filter.remote_port)
            .filter(|c| filter.remote_ip.is_empty() || c.remote.ip().to_string() == filter.remote_ip)
            .filter(|c| filter.state.is_empty() || c.state.eq_ignore_ascii_case(&filter.state))
            .map(|c| {
                let id = ((c.core as u64) << 32) | c.flow.map_or(u32::MAX as u64, |f| f as u64);
                let mut out = Flow {
                    id,
                    local: String::new(),
                    remote: c.remote.to_string(),
                    state: c.state.to_string(),
                    app_id: c.app,
                    core: c.core as u32,
                    ..Default::default()
                };
                out.local = format!(":{}", c.local_port);
                if let Some(f) = c.flow.and_then(|i| find(c.core, i)) {
                    out.snd_una = f.snd_una;
                    out.snd_nxt = f.snd_nxt();
                    out.rcv_nxt = f.rcv_nxt;
                    out.snd_wnd = f.snd_wnd;
                    out.rcv_wnd = f.rx_avail;
                    out.mss = f.mss as u32;
                    out.rx_bytes = f.cnt_rx_bytes as u64;
                    out.tx_bytes = f.cnt_acked as u64;
                    out.retransmits = f.cnt_retx as u64;
                    out.srtt_us = f.srtt_us;
                }
                out
            })
            .collect();
        flows.sort_by_key(|f| f.id);
        Ok(Response::new(FlowList { flows }))
    }

    async fn list_apps(&self, _r: Request<AppsRequest>) -> Result<Response<AppList>, GrpcStatus> {
        let apps = self.ask(Query::Apps).await?;
        Ok(Response::new(AppList {
            apps: apps
                .into_iter()
                .map(|a| App { id: a.id, name: a.name, pid: a.pid, uid: a.uid, connections: a.conns, listeners: a.listeners })
                .collect(),
        }))
    }

    async fn get_counters(&self, _r: Request<CountersRequest>) -> Result<Response<Counters>, GrpcStatus> {
        let cs = self.ask(Query::Counters).await?;
        Ok(Response::new(Counters {
            counters: cs.into_iter().map(|(name, value, core)| Counter { name, value, core }).collect(),
        }))
    }
}

/// Serve the API on a Unix socket at `path` (mode 0660) until `shutdown` resolves.
pub async fn serve_unix(
    path: &Path,
    svc: ControlService,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), String> {
    let _ = std::fs::remove_file(path);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let listener = tokio::net::UnixListener::bind(path)
        .map_err(|e| format!("cannot listen on control socket {}: {e}", path.display()))?;
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660));
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(ControlServer::new(svc))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .map_err(|e| format!("control API server failed: {e}"))?;
    let _ = std::fs::remove_file(path);
    Ok(())
}
