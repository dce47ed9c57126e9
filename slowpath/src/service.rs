//! The `tasd` runtime: loads the XDP program, opens one AF_XDP socket per fast-path
//! core, starts the pinned core threads, the slow-path thread, the application socket,
//! the ARP listener, the gRPC control API (Unix socket, optionally TCP) and the optional
//! Prometheus endpoint, tells systemd it is ready, reloads the live configuration keys
//! on SIGHUP, and on SIGTERM/SIGINT shuts all of it down in order: connections reset,
//! cores stopped, application and control sockets removed, XDP program detached.

use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{bounded, select, Receiver, Sender};
use tas_fastpath::appmem::AppMem;
use tas_fastpath::core::{run_pinned, CoreDoorbell, FastPath, FpConfig, Notify};
use tas_fastpath::shard::{run_controller, run_thread, thread_for, ScaleState, Shard};
use tas_fastpath::ctl::{command_queue, to_slow_queue};
use tas_fastpath::io::af_xdp::{BindMode, XdpConfig, XdpMode, XdpProgram, XskSocket};
use tas_fastpath::time::{Clock, SystemClock};
use tas_fastpath::wire::EthernetAddress;
use tas_proto::shm::Layout;

use crate::attach::{AttachConfig, AttachEvent, AttachServer};
#[allow(unused_imports)]
use crate::region::AppRegion;
use crate::config::{BindModeSetting, Config, FileConfig, XdpModeSetting};
use crate::grpc::{ControlService, Ops, Query, StatusSnap};
use crate::live::{LiveConfig, LogReload};
use crate::slow::{ConnEvent, EventKind};
use tas_fastpath::io::capture::Tap;
use crate::packet_socket::ArpSocket;
use crate::slow::{CoreLink, PortFilter, SlowConfig, SlowPath};

/// The XDP program's owned-ports map as the slow path's port filter.
struct XdpPorts(Arc<XdpProgram>);

impl PortFilter for XdpPorts {
    fn own(&self, port: u16) -> Result<(), String> {
        self.0.own_port(port).map_err(|e| e.to_string())
    }
    fn release(&self, port: u16) {
        if let Err(e) = self.0.release_port(port) {
            tracing::warn!(port, error = %e, "could not release port");
        }
    }
}

/// Wakes the slow-path thread.
struct ChannelNotify(Sender<()>);

impl Notify for ChannelNotify {
    fn notify(&self) {
        let _ = self.0.try_send(());
    }
}

fn read_mac(ifname: &str) -> Result<EthernetAddress, String> {
    let path = format!("/sys/class/net/{ifname}/address");
    let s = std::fs::read_to_string(&path)
        .map_err(|_| format!("interface {ifname} not found: check the name with `ip link` (and the network namespace)"))?;
    let bytes: Vec<u8> = s.trim().split(':').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    let arr: [u8; 6] = bytes.try_into().map_err(|_| format!("interface {ifname} has no Ethernet address ({})", s.trim()))?;
    Ok(EthernetAddress(arr))
}

/// True if the kernel has `ip` configured on some interface (then it answers ARP).
pub(crate) fn kernel_owns(ip: Ipv4Addr) -> bool {
    std::net::UdpSocket::bind((ip, 0)).is_ok()
}

fn default_cpus(n: u8) -> Vec<usize> {
    // Fast-path cores take the last CPUs; the slow path, applications and the kernel
    // keep CPU 0 and upwards.
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    (0..n as usize).map(|i| ncpu.saturating_sub(1 + i)).collect()
}

/// What the `tasd` binary hands the runtime besides the configuration, so that the
/// configuration can change while it runs.
#[derive(Default)]
pub struct Hooks {
    /// The configuration file (`--config`), re-read on SIGHUP.
    pub config_file: Option<std::path::PathBuf>,
    /// The command-line flags, laid over the file again on every reload.
    pub flags: FileConfig,
    /// Swaps the log filter.
    pub log_reload: Option<LogReload>,
}

impl std::fmt::Debug for Hooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hooks").field("config_file", &self.config_file).finish_non_exhaustive()
    }
}

/// Run the service until SIGTERM/SIGINT. Returns a one-line error on failure to start.
pub fn run(cfg: Config) -> Result<(), String> {
    run_with(cfg, Hooks::default())
}

/// How long control API calls may stay open after SIGTERM (they are told to end at once).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Events the slow path may have queued for watchers before it drops them (it never waits).
const EVENT_QUEUE: usize = 1024;

/// [`run`], with what is needed to reload the configuration.
pub fn run_with(cfg: Config, hooks: Hooks) -> Result<(), String> {
    let full_config = cfg.clone();
    let Config {
        interface,
        ip,
        prefix,
        gateway,
        fp_cores,
        fp_cpus,
        app_socket,
        control_socket,
        xdp_mode,
        bind_mode,
        rx_buffer,
        tx_buffer,
        conns_per_app,
        flows_per_core,
        queue_entries,
        ephemeral,
        idle_spin_us,
        fp_active,
        fp_scale_up_pct: _,
        fp_scale_down_pct: _,
        fp_scale_up_ms: _,
        fp_scale_down_ms: _,
        time_wait_ms,
        arp_reply,
        log_level: _,
        socket_group,
        keepalive,
        control_group,
        control_tcp,
        metrics,
        cc,
        cc_interval,
    } = cfg;
    let started = std::time::Instant::now();
    let missing = missing_capabilities();
    if !missing.is_empty() {
        tracing::warn!(
            missing = %missing.join(","),
            "tasd lacks capabilities it needs: CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN to load and attach XDP, CAP_NET_RAW for AF_XDP, CAP_IPC_LOCK for UMEM (run it from deploy/systemd/tasd.service or as root)"
        );
    }
    let mac = read_mac(&interface)?;
    let layout = Layout { num_fp_queues: fp_cores as u32, queue_entries, conn_slots: conns_per_app, rx_buf_size: rx_buffer, tx_buf_size: tx_buffer };
    layout.check().map_err(|e| format!("invalid buffer/queue geometry: {e:?}"))?;
    let arp_reply = arp_reply.unwrap_or_else(|| !kernel_owns(ip));

    let mode = match xdp_mode {
        XdpModeSetting::Auto => XdpMode::Auto,
        XdpModeSetting::Native => XdpMode::Native,
        XdpModeSetting::Generic => XdpMode::Generic,
    };
    let program = Arc::new(XdpProgram::load(&interface, mode, ip).map_err(|e| e.to_string())?);
    let xcfg = XdpConfig {
        ifname: interface.clone(),
        queues: (0..fp_cores as u32).collect(),
        mode,
        bind: match bind_mode {
            BindModeSetting::Auto => BindMode::Auto,
            BindModeSetting::ZeroCopy => BindMode::ZeroCopy,
            BindModeSetting::Copy => BindMode::Copy,
        },
        frame_size: 4096,
        frames: 4096,
        ring_size: 2048,
        busy_poll: false,
    };

    let stop = Arc::new(AtomicBool::new(false));
    let (notify_tx, notify_rx) = bounded::<()>(1);
    let slow_notify: Arc<dyn Notify> = Arc::new(ChannelNotify(notify_tx));
    let cpus = fp_cpus.unwrap_or_else(|| default_cpus(fp_cores));
    let mut links = Vec::new();
    let mut core_meta = Vec::new();
    let mut doorbells: Vec<Arc<CoreDoorbell>> = Vec::new();
    let mut core_threads: Vec<JoinHandle<()>> = Vec::new();
    let mut shards = Vec::new();
    let mut shard_counters = Vec::new();
    for c in 0..fp_cores {
        let sock = XskSocket::open(&xcfg, c as u32).map_err(|e| e.to_string())?;
        program.register(&sock).map_err(|e| e.to_string())?;
        tracing::info!(core = c, queue = c, mode = ?sock.bound_mode(), cpu = cpus[c as usize], "fast-path core ready");
        let bound = match sock.bound_mode() {
            BindMode::ZeroCopy => "zero-copy",
            BindMode::Copy => "copy",
            BindMode::Auto => "auto",
        };
        core_meta.push((cpus[c as usize] as u32, c as u32, bound.to_string()));
        let (cmd_tx, cmd_rx) = command_queue(8192);
        let (rep_tx, rep_rx) = to_slow_queue(8192);
        let mut fcfg = FpConfig::new(c, ip, mac);
        fcfg.flow_capacity = flows_per_core;
        (fcfg.cc_interval_rtts, fcfg.cc_interval_min_us) = cc_interval;
        if let Some((idle, interval, probes)) = keepalive {
            fcfg.keepalive = tas_fastpath::core::Keepalive {
                idle_us: idle * 1_000_000,
                interval_us: interval * 1_000_000,
                probes,
            };
        }
        let fp = FastPath::new(fcfg, Tap::new(sock, c), cmd_rx, rep_tx, Some(slow_notify.clone()));
        let door = Arc::new(CoreDoorbell::new().map_err(|e| format!("eventfd: {e}"))?);
        links.push(CoreLink::new(cmd_tx, rep_rx, Some(door.clone() as Arc<dyn Notify>), fp.counters(), flows_per_core));
        doorbells.push(door.clone());
        shard_counters.push(fp.counters());
        shards.push(Shard { id: c as usize, fp, doorbell: door });
    }
    // Threads: one shard and one thread, as always, for a single core; with more, a
    // thread per shard of which 1..N are active, and the controller that picks N
    // (tas_fastpath::shard, docs/decisions.md "Multi-core fast path").
    let n = fp_cores as usize;
    let initial = if fp_active > 0 { fp_active as usize } else { n };
    let scale = Arc::new(
        ScaleState::new(n, initial, fp_active as usize, full_config.scale_params()).map_err(|e| format!("eventfd: {e}"))?,
    );
    let spin = Duration::from_micros(idle_spin_us);
    if n == 1 {
        let sh = shards.pop().expect("one shard");
        let (stop2, cpu) = (stop.clone(), cpus[0]);
        core_threads.push(
            std::thread::Builder::new()
                .name("tas-fp0".into())
                .spawn(move || run_pinned(sh.fp, &SystemClock, Some(cpu), sh.doorbell, stop2, spin))
                .map_err(|e| format!("cannot start fast-path thread: {e}"))?,
        );
    } else {
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..n).map(|_| crossbeam_channel::unbounded()).unzip();
        let mut per_thread: Vec<Vec<_>> = (0..n).map(|_| Vec::new()).collect();
        for sh in shards.drain(..) {
            per_thread[thread_for(sh.id, initial)].push(sh);
        }
        for (t, (mine, inbox)) in per_thread.into_iter().zip(rxs).enumerate() {
            let (stop2, cpu, state, outboxes) = (stop.clone(), cpus[t], scale.clone(), txs.clone());
            core_threads.push(
                std::thread::Builder::new()
                    .name(format!("tas-fp{t}"))
                    .spawn(move || run_thread(t, mine, inbox, outboxes, state, &SystemClock, Some(cpu), stop2, spin))
                    .map_err(|e| format!("cannot start fast-path thread: {e}"))?,
            );
        }
        let (stop2, state) = (stop.clone(), scale.clone());
        core_threads.push(
            std::thread::Builder::new()
                .name("tas-scale".into())
                .spawn(move || run_controller(state, shard_counters, stop2))
                .map_err(|e| format!("cannot start the scaling thread: {e}"))?,
        );
    }

    // Calibrate the cycle counters' clock now (20 ms, once), not on the slow path's
    // thread at the first statistics request.
    tas_fastpath::cycles::ticks_per_us();
    let mut scfg = SlowConfig::new(ip, prefix, mac, layout);
    scfg.gateway = gateway;
    scfg.ephemeral = ephemeral;
    scfg.time_wait = Duration::from_millis(time_wait_ms);
    scfg.arp_reply = arp_reply;
    scfg.keepalive = keepalive.is_some();
    scfg.cc = cc;
    let mut slow = SlowPath::new(scfg, links, Box::new(XdpPorts(program.clone())));
    // Connection events: the slow path try_sends to a bounded queue; a thread fans them
    // out to the control API's watchers.
    let (event_tx, event_rx) = bounded::<ConnEvent>(EVENT_QUEUE);
    slow.set_event_sink(Some(event_tx));
    let (watch_tx, _) = tokio::sync::broadcast::channel::<ConnEvent>(EVENT_QUEUE);
    let watchers = watch_tx.clone();
    std::thread::Builder::new()
        .name("tas-events".into())
        .spawn(move || {
            for ev in event_rx {
                let _ = watchers.send(ev); // no watcher: nothing to do
            }
        })
        .map_err(|e| e.to_string())?;

    // ARP copies from the kernel's side of the interface.
    let (frame_tx, frame_rx) = bounded::<Vec<u8>>(1024);
    let arp_sock = ArpSocket::open(program.ifindex(), Duration::from_millis(200))
        .map_err(|e| format!("cannot open an ARP packet socket on {interface}: {e} (needs CAP_NET_RAW)"))?;
    let stop_arp = stop.clone();
    let arp_thread = std::thread::Builder::new()
        .name("tas-arp".into())
        .spawn(move || {
            let mut buf = vec![0u8; 2048];
            while !stop_arp.load(Ordering::Relaxed) {
                match arp_sock.recv(&mut buf) {
                    Ok(Some(n)) => {
                        let _ = frame_tx.try_send(buf[..n].to_vec());
                    }
                    Ok(None) => {}
                    Err(e) => {
                        tracing::error!(error = %e, "ARP socket failed");
                        break;
                    }
                }
            }
        })
        .map_err(|e| e.to_string())?;

    // Applications. The socket appears only now that everything can serve.
    let (attach_tx, attach_rx) = bounded::<AttachEvent>(256);
    let core_fds: Vec<Arc<OwnedFd>> = doorbells.iter().map(|d| d.fd.clone()).collect();
    let mut acfg = AttachConfig::new(&app_socket, layout, ip);
    acfg.socket_group = socket_group.as_deref().map(group_id).transpose()?;
    let attach = AttachServer::start(acfg, core_fds, attach_tx).map_err(|e| e.to_string())?;

    // The control API, the metrics endpoint and signals run on a small tokio runtime on
    // this thread. Everything binds before readiness is announced.
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    let control_gid = control_group.as_deref().map(group_id).transpose()?;
    let control_listener = {
        let _g = rt.enter();
        crate::grpc::bind_unix(&control_socket, control_gid)?
    };
    let bind_tcp = |addr: std::net::SocketAddr, what: &str| -> Result<tokio::net::TcpListener, String> {
        let l = std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen on {what} address {addr}: {e}"))?;
        l.set_nonblocking(true).map_err(|e| e.to_string())?;
        let _g = rt.enter();
        tokio::net::TcpListener::from_std(l).map_err(|e| e.to_string())
    };
    let control_tcp_listener = match control_tcp {
        Some(a) => {
            if !a.ip().is_loopback() {
                tracing::warn!(address = %a, "the control API on TCP has no authentication: anyone who can reach {a} can reset connections and detach applications; prefer a loopback address");
            }
            Some(bind_tcp(a, "control_tcp")?)
        }
        None => None,
    };
    let metrics_listener = metrics.map(|a| bind_tcp(a, "metrics")).transpose()?;
    let (query_tx, query_rx) = bounded::<Query>(64);
    let xdp_mode_name = format!("{:?}", program.attached_mode()).to_lowercase();
    let status_base = StatusSnap {
        interface: interface.clone(),
        address: format!("{ip}/{prefix}"),
        fp_cores: fp_cores as u32,
        xdp_mode: xdp_mode_name,
        started,
        flows: 0,
        apps: 0,
        listeners: 0,
        connections: 0,
    };
    let live = Arc::new(LiveConfig::new(full_config, hooks.config_file, hooks.flags, hooks.log_reload, query_tx.clone()));
    live.set_scale(scale.clone());
    // Stop signal for the servers and their open streams.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stop_tx = Arc::new(stop_tx);
    let ops = Ops {
        local_ip: Some(ip),
        cores: core_meta,
        cpus: cpus.iter().map(|&c| c as u32).collect(),
        scale: Some(scale.clone()),
        app_socket: app_socket.display().to_string(),
        control_socket: control_socket.display().to_string(),
        metrics_address: metrics.map(|a| a.to_string()).unwrap_or_default(),
        live: Some(live.clone()),
        events: Some(watch_tx),
        kicker: Some(attach.kicker()),
        stopping: Some(stop_rx.clone()),
        ..Ops::default()
    };
    let svc = ControlService::with_ops(query_tx, ops);
    // The slow path stops first and resets every connection while the cores still run
    // to send the RSTs; then the cores stop.
    let stop_slow = Arc::new(AtomicBool::new(false));
    let stop_slow_flag = stop_slow.clone();
    let slow_thread = std::thread::Builder::new()
        .name("tas-slow".into())
        .spawn(move || slow_loop(&mut slow, attach_rx, frame_rx, query_rx, notify_rx, stop_slow, status_base))
        .map_err(|e| e.to_string())?;

    let res = rt.block_on(async {
        use tokio::signal::unix::{signal, SignalKind};
        // Handlers first: from here on SIGHUP no longer kills the process.
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM handler: {e}"))?;
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT handler: {e}"))?;
        let mut hup = signal(SignalKind::hangup()).map_err(|e| format!("SIGHUP handler: {e}"))?;
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        tracing::info!(
            %interface, %ip, prefix, fp_cores,
            app_socket = %app_socket.display(),
            control_socket = %control_socket.display(),
            control_tcp = ?control_tcp,
            metrics = ?metrics,
            arp_reply,
            "tasd ready"
        );
        notify_systemd(&format!("READY=1\nSTATUS=serving {ip} on {interface} with {fp_cores} fast-path core(s)\nMAINPID={}\n", std::process::id()));
        let signals = {
            let (stop_tx, mut stop_rx) = (stop_tx.clone(), stop_rx.clone());
            let live = live.clone();
            async move {
                loop {
                    tokio::select! {
                        _ = term.recv() => { tracing::info!("SIGTERM: shutting down"); break; }
                        _ = int.recv() => { tracing::info!("SIGINT: shutting down"); break; }
                        _ = stop_rx.wait_for(|s| *s) => break,
                        _ = hup.recv() => {
                            notify_systemd("RELOADING=1\n");
                            reload(&live);
                            notify_systemd("READY=1\n");
                        }
                    }
                }
                notify_systemd("STOPPING=1\n");
                let _ = stop_tx.send(true);
            }
        };
        let failed = |what: &'static str, stop_tx: Arc<tokio::sync::watch::Sender<bool>>| {
            move |r: Result<(), String>| {
                if let Err(e) = &r {
                    tracing::error!(error = %e, "{what} failed; shutting down");
                    let _ = stop_tx.send(true);
                }
                r
            }
        };
        let unix = {
            let done = failed("control API", stop_tx.clone());
            let f = crate::grpc::serve_unix_listener(control_listener, &control_socket, svc.clone(), stopped(stop_rx.clone()));
            async move { done(f.await) }
        };
        let tcp = {
            let done = failed("control API on TCP", stop_tx.clone());
            let (svc, rx) = (svc.clone(), stop_rx.clone());
            async move {
                match control_tcp_listener {
                    Some(l) => done(crate::grpc::serve_tcp(l, svc, stopped(rx)).await),
                    None => Ok(()),
                }
            }
        };
        let prom = {
            let (svc, rx) = (svc.clone(), stop_rx.clone());
            async move {
                if let Some(l) = metrics_listener {
                    crate::metrics::serve(l, svc, stopped(rx)).await;
                }
            }
        };
        // Open streams end when the stop is signalled; a client that still holds a call
        // open after SHUTDOWN_GRACE is cut off.
        let servers = async {
            let (a, b, ()) = tokio::join!(unix, tcp, prom);
            a.and(b)
        };
        let bounded = async {
            tokio::select! {
                r = servers => r,
                _ = async { stopped(stop_rx.clone()).await; tokio::time::sleep(SHUTDOWN_GRACE).await } => {
                    tracing::warn!("control API calls still open {SHUTDOWN_GRACE:?} after the stop; closing them");
                    Ok(())
                }
            }
        };
        let ((), res) = tokio::join!(signals, bounded);
        res
    });
    drop(rt); // ends what the servers left behind (tasks of cut-off calls)
    let _ = std::fs::remove_file(&control_socket);
    // Orderly stop: slow path resets connections (the cores send the RSTs), then the
    // cores stop.
    stop_slow_flag.store(true, Ordering::SeqCst);
    let _ = slow_thread.join();
    stop.store(true, Ordering::SeqCst);
    for t in core_threads {
        let _ = t.join();
    }
    let _ = arp_thread.join();
    attach.shutdown();
    drop(program); // detaches the XDP program (bpf_link)
    tracing::info!("tasd stopped");
    res
}

/// Resolve a group name (or number) from /etc/group.
fn group_id(name: &str) -> Result<u32, String> {
    if let Ok(n) = name.parse() {
        return Ok(n);
    }
    let groups = std::fs::read_to_string("/etc/group").unwrap_or_default();
    groups
        .lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            Some((f.next()?, f.nth(1)?))
        })
        .find(|(n, _)| *n == name)
        .and_then(|(_, gid)| gid.parse().ok())
        .ok_or_else(|| format!("socket_group {name:?} does not exist: create it (groupadd {name}) or pick another"))
}

/// The capabilities tasd needs that its effective set lacks (from /proc/self/status:
/// no unsafe libc call for a warning).
fn missing_capabilities() -> Vec<&'static str> {
    const NEEDED: [(&str, u32); 5] =
        [("CAP_NET_ADMIN", 12), ("CAP_NET_RAW", 13), ("CAP_IPC_LOCK", 14), ("CAP_PERFMON", 38), ("CAP_BPF", 39)];
    let eff = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:").map(|v| v.trim().to_string())))
        .and_then(|v| u64::from_str_radix(&v, 16).ok());
    match eff {
        Some(eff) => NEEDED.iter().filter(|(_, bit)| eff & (1u64 << bit) == 0).map(|(n, _)| *n).collect(),
        None => Vec::new(),
    }
}

/// SIGHUP: re-read the configuration file and apply the keys that can change live.
fn reload(live: &LiveConfig) {
    match live.reload() {
        Ok(r) => tracing::info!(
            file = ?live.file(),
            applied = ?r.applied,
            need_restart = ?r.need_restart,
            overridden_by_flags = ?r.overridden,
            "SIGHUP: configuration reloaded (live keys: {}){}",
            crate::live::live_keys(),
            if r.need_restart.is_empty() { String::new() } else { format!("; restart tasd to apply {}", r.need_restart.join(", ")) }
        ),
        Err(e) => tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the running configuration stays"),
    }
}

/// sd_notify(3) without libsystemd: one datagram to `$NOTIFY_SOCKET` (a path, or an
/// abstract socket name starting with '@'). Does nothing when not run by systemd.
pub fn notify_systemd(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else { return };
    let Ok(sock) = std::os::unix::net::UnixDatagram::unbound() else { return };
    let path = path.to_string_lossy().into_owned();
    let res = match path.strip_prefix('@') {
        Some(name) => {
            use std::os::linux::net::SocketAddrExt;
            std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())
                .and_then(|a| sock.send_to_addr(state.as_bytes(), &a))
        }
        None => sock.send_to(state.as_bytes(), &path),
    };
    if let Err(e) = res {
        tracing::warn!(socket = %path, error = %e, "could not notify systemd");
    }
}

#[allow(clippy::too_many_arguments)]
fn slow_loop(
    slow: &mut SlowPath,
    attach_rx: Receiver<AttachEvent>,
    frame_rx: Receiver<Vec<u8>>,
    query_rx: Receiver<Query>,
    notify_rx: Receiver<()>,
    stop: Arc<AtomicBool>,
    status_base: StatusSnap,
) {
    let clock = SystemClock;
    let tick = Duration::from_millis(1);
    while !stop.load(Ordering::Relaxed) {
        select! {
            recv(attach_rx) -> m => if let Ok(m) = m { on_attach(slow, m) },
            recv(frame_rx) -> f => if let Ok(f) = f { slow.on_kernel_frame(&f) },
            recv(query_rx) -> q => if let Ok(q) = q { answer(slow, q, &status_base) },
            recv(notify_rx) -> _ => {},
            default(tick) => {},
        }
        while let Ok(m) = attach_rx.try_recv() {
            on_attach(slow, m);
        }
        while let Ok(f) = frame_rx.try_recv() {
            slow.on_kernel_frame(&f);
        }
        slow.poll(clock.now());
    }
    tracing::info!(
        flows = slow.flow_count(),
        listeners = slow.listener_count(),
        apps = slow.app_count(),
        "shutdown: flows={} listeners={} apps={}",
        slow.flow_count(),
        slow.listener_count(),
        slow.app_count()
    );
    eprintln!("shutdown: flows={} listeners={} apps={}", slow.flow_count(), slow.listener_count(), slow.app_count());
    // Reset every connection politely and give the cores time to send the RSTs.
    slow.reset_all();
    let until = std::time::Instant::now() + Duration::from_millis(200);
    while std::time::Instant::now() < until {
        slow.poll(clock.now());
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn on_attach(slow: &mut SlowPath, ev: AttachEvent) {
    match ev {
        AttachEvent::Attached(app) => {
            let region = app.region.clone();
            // SAFETY: the AppRegion maps `len` bytes at `base` (64-byte aligned, page
            // aligned in fact) for as long as the Arc handed over as keep-alive lives.
            #[allow(unsafe_code)]
            let mem = unsafe { AppMem::new(region.base(), region.len(), region.clone()) };
            let wake = Arc::new(app.app_eventfd);
            let res = slow
                .attach_app(app.app_id, app.name.clone(), app.pid as u32, app.uid, mem, Some(wake))
                .map_err(|e| (e, format!("service cannot take more applications: {e}")));
            if res.is_ok() {
                slow.emit_event(app_event(EventKind::AppAttached, app.app_id, format!("{} pid {}", app.name, app.pid)));
            }
            let _ = app.go_ahead.send(res);
        }
        AttachEvent::Detached { app_id } => {
            if slow.app_infos().iter().any(|a| a.id == app_id) {
                slow.emit_event(app_event(EventKind::AppDetached, app_id, String::new()));
            }
            slow.detach_app(app_id)
        }
    }
}

fn app_event(kind: EventKind, app: u32, detail: String) -> ConnEvent {
    ConnEvent { at: std::time::SystemTime::now(), kind, flow_id: 0, remote: None, local_port: 0, app, detail }
}

fn answer(slow: &mut SlowPath, q: Query, base: &StatusSnap) {
    match q {
        Query::Status(tx) => {
            let mut s = base.clone();
            s.flows = slow.flow_count() as u32;
            s.apps = slow.app_count() as u32;
            s.listeners = slow.listener_count() as u32;
            s.connections = slow.connection_count() as u32;
            let _ = tx.send(s);
        }
        Query::Flows(tx) => {
            let (snap_tx, snap_rx) = bounded(64);
            let n = slow.request_snapshots(snap_tx);
            let _ = tx.send((slow.conn_infos(), n, snap_rx));
        }
        Query::Apps(tx) => {
            let _ = tx.send(slow.app_infos());
        }
        Query::Counters(tx) => {
            let mut cs = slow.all_counters();
            cs.push(("events_dropped".to_string(), slow.events_dropped(), -1));
            let _ = tx.send(cs);
        }
        Query::AppDetails(tx) => {
            let _ = tx.send(slow.app_details());
        }
        Query::Listeners(tx) => {
            let _ = tx.send(slow.listener_infos());
        }
        Query::CloseFlow { id, reset, reply } => {
            let res = slow.close_flow(id, reset);
            if let Ok(state) = res {
                tracing::info!(flow = id, reset, state, "connection closed by the control API");
            }
            let _ = reply.send(res);
        }
        Query::Capture(spec) => slow.set_capture(spec),
        Query::CcGet(tx) => {
            let _ = tx.send(slow.config().cc);
        }
        Query::CcSet { alg, flow, rate_kbps, reply } => {
            let key = flow.map(tas_fastpath::flow::FlowKey);
            let n = slow.set_congestion_control(key, alg, rate_kbps);
            if let Some(n) = n {
                tracing::info!(algorithm = %alg, flow, connections = n, "congestion control changed by the control API");
            }
            let _ = reply.send(n);
        }
        Query::FlowCc { id, reply } => {
            let _ = reply.send(slow.cc_info(tas_fastpath::flow::FlowKey(id)));
        }
        Query::SetLive { time_wait, arp_reply } => {
            slow.set_time_wait(time_wait);
            slow.set_arp_reply(arp_reply);
        }
    }
}
