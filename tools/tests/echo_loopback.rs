//! `tas-echo` end to end over the real attach path (AttachServer, AppRegion, libtas) with a
//! *loopback* service in place of tasd: connections are made between two attached
//! applications of this same fake service, and bytes move from one's transmit ring to
//! the other's receive ring under the same ring accounting and event rules the fast path
//! follows (small rings, so windows fill and wrap all the time).

use std::collections::{HashMap, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use tas_proto::shm::{ConnHandle, ControlRequest, Doorbell, ErrorCode, FpEvent, Layout, SpEvent};
use tas_slowpath::attach::{AttachConfig, AttachEvent, AttachServer};
use tas_slowpath::region::{AppRegion, RegionQueue};

const LAYOUT: Layout = Layout {
    num_fp_queues: 1,
    queue_entries: 256,
    conn_slots: 32,
    rx_buf_size: 8192,
    tx_buf_size: 16384,
};

struct Half {
    peer: (usize, u32),
    rx_write: u64,
    rx_used: u32,
    tx_read: u64,
    tx_pending: u32,
    fin_wanted: bool,
    fin_sent: bool,
}

struct App {
    region: Arc<AppRegion>,
    to_fp: RegionQueue,
    to_app: RegionQueue,
    sp: RegionQueue,
    req: RegionQueue,
    efd: OwnedFd,
    sp_backlog: VecDeque<SpEvent>,
    slots: Vec<Option<Half>>,
    alive: bool,
}

fn signal(fd: &OwnedFd) {
    let one = 1u64;
    // SAFETY: 8-byte write from a u64 to an eventfd.
    unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

struct Loopback {
    apps: Vec<App>,
    ids: HashMap<u32, usize>,
    listeners: HashMap<u16, (usize, u32)>,
    next_listener: u32,
}

impl Loopback {
    fn copy(&self, from: (usize, u32), to: (usize, u32), n: u32) {
        let (a, b) = (&self.apps[from.0], &self.apps[to.0]);
        let src = a.slots[from.1 as usize].as_ref().unwrap();
        let dst = b.slots[to.1 as usize].as_ref().unwrap();
        for i in 0..n as u64 {
            let s =
                LAYOUT.tx_offset(from.1) + ((src.tx_read + i) % LAYOUT.tx_buf_size as u64) as usize;
            let d =
                LAYOUT.rx_offset(to.1) + ((dst.rx_write + i) % LAYOUT.rx_buf_size as u64) as usize;
            // SAFETY: both offsets lie inside the two regions' rings; the app side only
            // touches these bytes outside the ranges the ring protocol gives us.
            unsafe {
                b.region
                    .base()
                    .as_ptr()
                    .add(d)
                    .write_volatile(a.region.base().as_ptr().add(s).read_volatile())
            };
        }
    }

    fn free_slot(&self, app: usize) -> Option<u32> {
        self.apps[app]
            .slots
            .iter()
            .position(|s| s.is_none())
            .map(|i| i as u32)
    }

    fn sp(&mut self, app: usize, ev: SpEvent) {
        self.apps[app].sp_backlog.push_back(ev);
    }

    fn close_pair(&mut self, a: (usize, u32), err: Option<ErrorCode>) {
        let Some(h) = self.apps[a.0].slots[a.1 as usize].take() else {
            return;
        };
        self.sp(
            a.0,
            SpEvent::Closed {
                conn: a.1,
                error: err,
            },
        );
        let b = h.peer;
        if self.apps[b.0].slots[b.1 as usize].take().is_some() {
            self.sp(
                b.0,
                SpEvent::Closed {
                    conn: b.1,
                    error: err,
                },
            );
        }
    }

    fn request(&mut self, app: usize, r: ControlRequest) {
        if std::env::var_os("LOOPBACK_DUMP").is_some() {
            eprintln!("loopback: app {app}: {r:?}");
        }
        match r {
            ControlRequest::Listen { token, port, .. } => {
                if self.listeners.contains_key(&port) {
                    self.sp(
                        app,
                        SpEvent::ListenFailed {
                            token,
                            error: ErrorCode::AddrInUse,
                        },
                    );
                } else {
                    self.next_listener += 1;
                    self.listeners.insert(port, (app, self.next_listener));
                    self.sp(
                        app,
                        SpEvent::ListenOk {
                            token,
                            listener: self.next_listener,
                        },
                    );
                }
            }
            ControlRequest::Connect { token, port, .. } => {
                let Some(&(lapp, lid)) = self.listeners.get(&port) else {
                    return self.sp(
                        app,
                        SpEvent::ConnectFailed {
                            token,
                            error: ErrorCode::Refused,
                        },
                    );
                };
                let a = self.free_slot(app);
                // Reserve a's slot before looking for b's (same app possible).
                let Some(sa) = a else {
                    return self.sp(
                        app,
                        SpEvent::ConnectFailed {
                            token,
                            error: ErrorCode::NoResources,
                        },
                    );
                };
                let half = |peer| Half {
                    peer,
                    rx_write: 0,
                    rx_used: 0,
                    tx_read: 0,
                    tx_pending: 0,
                    fin_wanted: false,
                    fin_sent: false,
                };
                self.apps[app].slots[sa as usize] = Some(half((0, 0)));
                let Some(sb) = self.free_slot(lapp) else {
                    self.apps[app].slots[sa as usize] = None;
                    return self.sp(
                        app,
                        SpEvent::ConnectFailed {
                            token,
                            error: ErrorCode::NoResources,
                        },
                    );
                };
                self.apps[app].slots[sa as usize] = Some(half((lapp, sb)));
                self.apps[lapp].slots[sb as usize] = Some(half((app, sa)));
                let lport = 40000 + sa as u16;
                self.sp(
                    app,
                    SpEvent::Connected {
                        token,
                        handle: ConnHandle {
                            conn: sa,
                            core: 0,
                            flow: sa,
                        },
                        local_port: lport,
                    },
                );
                self.sp(
                    lapp,
                    SpEvent::Accepted {
                        listener: lid,
                        handle: ConnHandle {
                            conn: sb,
                            core: 0,
                            flow: sb,
                        },
                        remote_ip: 0x0a000001,
                        remote_port: lport,
                        local_port: port,
                    },
                );
            }
            ControlRequest::Abort { conn } => self.close_pair((app, conn), Some(ErrorCode::Reset)),
            ControlRequest::Unlisten { listener } => {
                self.listeners.retain(|_, v| *v != (app, listener))
            }
            ControlRequest::Accepted { .. } => {}
            // No TCP here: nothing to report (the "found" bit stays clear).
            ControlRequest::Info { token, .. } => {
                for ev in tas_proto::shm::ConnInfo::default().events(token) {
                    self.sp(app, ev);
                }
            }
            // No processes share connections here.
            ControlRequest::Forked { .. } => {}
            ControlRequest::Adopt { token, .. } | ControlRequest::Release { token, .. } => self.sp(
                app,
                SpEvent::AdoptFailed {
                    token,
                    error: Some(ErrorCode::NotFound),
                },
            ),
        }
    }

    fn doorbell(&mut self, app: usize, d: Doorbell) {
        let conn = match d {
            Doorbell::TxAdded { conn, .. }
            | Doorbell::RxConsumed { conn, .. }
            | Doorbell::ShutdownTx { conn, .. } => conn,
        };
        let Some(Some(h)) = self.apps[app].slots.get_mut(conn as usize) else {
            return;
        };
        match d {
            Doorbell::TxAdded { bytes, .. } => h.tx_pending += bytes,
            Doorbell::RxConsumed { bytes, .. } => h.rx_used -= bytes,
            Doorbell::ShutdownTx { .. } => h.fin_wanted = true,
        }
    }

    /// Move data and FINs; close pairs whose both directions are done.
    fn pump(&mut self) -> bool {
        let mut progress = false;
        for a in 0..self.apps.len() {
            for s in 0..LAYOUT.conn_slots {
                let Some(h) = &self.apps[a].slots[s as usize] else {
                    continue;
                };
                let peer = h.peer;
                let (pending, fin_wanted, fin_sent) = (h.tx_pending, h.fin_wanted, h.fin_sent);
                let Some(ph) = &self.apps[peer.0].slots[peer.1 as usize] else {
                    continue;
                };
                let peer_used = ph.rx_used;
                if !self.apps[a].to_app.ensure_free(8).unwrap()
                    || !self.apps[peer.0].to_app.ensure_free(8).unwrap()
                {
                    continue;
                }
                let n = pending.min(LAYOUT.rx_buf_size - peer_used);
                let fin = fin_wanted && !fin_sent && n == pending;
                if n == 0 && !fin {
                    continue;
                }
                self.copy((a, s), peer, n);
                let ph = self.apps[peer.0].slots[peer.1 as usize].as_mut().unwrap();
                ph.rx_write += n as u64;
                ph.rx_used += n;
                let h = self.apps[a].slots[s as usize].as_mut().unwrap();
                h.tx_read += n as u64;
                h.tx_pending -= n;
                h.fin_sent |= fin;
                assert!(self.apps[peer.0].to_app.push(
                    FpEvent::RxData {
                        conn: peer.1,
                        bytes: n,
                        fin
                    }
                    .encode()
                ));
                if n > 0 {
                    assert!(self.apps[a]
                        .to_app
                        .push(FpEvent::TxFreed { conn: s, bytes: n }.encode()));
                }
                progress = true;
            }
        }
        for a in 0..self.apps.len() {
            for s in 0..LAYOUT.conn_slots {
                let Some(h) = &self.apps[a].slots[s as usize] else {
                    continue;
                };
                let done = h.fin_sent
                    && self.apps[h.peer.0].slots[h.peer.1 as usize]
                        .as_ref()
                        .is_some_and(|p| p.fin_sent);
                if done {
                    self.close_pair((a, s), None);
                    progress = true;
                }
            }
        }
        progress
    }

    fn step(&mut self, events: &Receiver<AttachEvent>) -> bool {
        let mut progress = false;
        while let Ok(ev) = events.try_recv() {
            progress = true;
            match ev {
                AttachEvent::Attached(app) => {
                    if std::env::var_os("LOOPBACK_DUMP").is_some() {
                        eprintln!("loopback: attached {} {}", app.app_id, app.name);
                    }
                    let r = app.region.clone();
                    self.ids.insert(app.app_id, self.apps.len());
                    self.apps.push(App {
                        to_fp: r.to_fp_consumer(0),
                        to_app: r.to_app_producer(0),
                        sp: r.sp_producer(),
                        req: r.req_consumer(),
                        region: r,
                        efd: app.app_eventfd,
                        sp_backlog: VecDeque::new(),
                        slots: (0..LAYOUT.conn_slots).map(|_| None).collect(),
                        alive: true,
                    });
                    app.go_ahead.send(Ok(())).unwrap();
                }
                AttachEvent::Detached { app_id } => {
                    if std::env::var_os("LOOPBACK_DUMP").is_some() {
                        eprintln!("loopback: detached {app_id}");
                    }
                    let a = self.ids[&app_id];
                    self.apps[a].alive = false;
                    for s in 0..LAYOUT.conn_slots {
                        self.close_pair((a, s), Some(ErrorCode::Aborted));
                    }
                    self.listeners.retain(|_, v| v.0 != a);
                }
            }
        }
        for a in 0..self.apps.len() {
            if !self.apps[a].alive {
                continue;
            }
            while let Some(d) = self.apps[a].req.pop().unwrap() {
                self.request(a, ControlRequest::decode(&d).unwrap());
                progress = true;
            }
            self.apps[a].req.release();
            while let Some(d) = self.apps[a].to_fp.pop().unwrap() {
                self.doorbell(a, Doorbell::decode(&d).unwrap());
                progress = true;
            }
            self.apps[a].to_fp.release();
        }
        progress |= self.pump();
        for app in self.apps.iter_mut().filter(|a| a.alive) {
            while let Some(ev) = app.sp_backlog.front() {
                if !app.sp.push(ev.encode()) {
                    break;
                }
                app.sp_backlog.pop_front();
            }
            let wake_sp = app.sp.publish();
            let wake_fp = app.to_app.publish();
            if wake_sp || wake_fp {
                signal(&app.efd);
            }
        }
        progress
    }
}

struct Service {
    path: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Service {
    fn start(name: &str) -> Service {
        let path = std::env::temp_dir()
            .join(format!("tas-echo-test-{}-{name}", std::process::id()))
            .join("tasd.sock");
        let (tx, rx) = crossbeam_channel::unbounded();
        // SAFETY: plain eventfd(2), checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: a fresh descriptor we own.
        let doorbell = Arc::new(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) });
        let cfg = AttachConfig::new(&path, LAYOUT, "10.0.0.1".parse().unwrap());
        let server = AttachServer::start(cfg, vec![doorbell], tx).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let stop2 = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut lb = Loopback {
                apps: Vec::new(),
                ids: HashMap::new(),
                listeners: HashMap::new(),
                next_listener: 0,
            };
            let mut idle = Instant::now();
            while !stop2.load(Ordering::Relaxed) {
                if lb.step(&rx) {
                    idle = Instant::now();
                } else if idle.elapsed() > Duration::from_secs(3)
                    && std::env::var_os("LOOPBACK_DUMP").is_some()
                {
                    for (i, a) in lb.apps.iter().enumerate() {
                        for (s, h) in a.slots.iter().enumerate() {
                            if let Some(h) = h {
                                eprintln!("app {i} slot {s}: peer {:?} rx_used {} tx_pending {} fin {} {}", h.peer, h.rx_used, h.tx_pending, h.fin_wanted, h.fin_sent);
                            }
                        }
                    }
                    idle = Instant::now();
                } else if idle.elapsed() > Duration::from_micros(200) {
                    std::thread::sleep(Duration::from_micros(100));
                }
            }
            server.shutdown();
        });
        Service {
            path,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        if let Some(dir) = self.path.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn echo(socket: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tas-echo"));
    c.args(args)
        .arg("--socket")
        .arg(socket)
        .env("TAS_SPIN_US", "20");
    c
}

/// Kills the server if the test fails before it exits.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(svc: &Service, port: &str, conns: &str) -> Server {
    use std::io::BufRead;
    let mut child = echo(&svc.path, &["server", "--port", port, "--max-conns", conns])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait until it listens, then pass its messages on.
    let mut lines = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = lines.next().expect("the server printed nothing").unwrap();
    assert!(first.contains("listening on port"), "{first}");
    std::thread::spawn(move || {
        lines
            .map_while(Result::ok)
            .for_each(|l| eprintln!("server: {l}"))
    });
    Server(child)
}

fn client(svc: &Service, args: &[&str]) -> (bool, String, String) {
    let out = echo(
        &svc.path,
        &[
            &["client", "--connect", "10.0.0.1:7", "--timeout", "60"],
            args,
        ]
        .concat(),
    )
    .output()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn stream_and_rpc_through_loopback() {
    let svc = Service::start("a");
    let mut srv = server(&svc, "7", "8");
    let (ok, out, err) = client(&svc, &["--bytes", "3000000", "--conns", "4", "--seed", "5"]);
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("conns=4 bytes=12000000 rpcs=0"), "{out}");
    let (ok, out2, err) = client(&svc, &["--bytes", "3000000", "--conns", "4", "--seed", "5"]);
    assert!(ok, "stdout: {out2}\nstderr: {err}");
    let digest = |s: &str| s.split("sha256=").nth(1).map(|x| x.trim().to_owned());
    assert_eq!(digest(&out), digest(&out2), "same seed, same digest");
    assert!(
        srv.0.wait().unwrap().success(),
        "the server exits 0 after --max-conns"
    );

    let mut srv = server(&svc, "7", "3");
    let (ok, out, err) = client(&svc, &["--rpcs", "300", "--size", "20000", "--conns", "3"]);
    assert!(ok, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("conns=3 bytes=18000000 rpcs=900"), "{out}");
    let status = srv.0.wait().unwrap();
    assert!(status.success(), "the server exits 0 after --max-conns");
}

#[test]
fn refused_connect_fails_the_client() {
    let svc = Service::start("b");
    let (ok, _out, err) = client(&svc, &["--bytes", "10"]);
    assert!(!ok);
    assert!(err.contains("refused"), "{err}");
}
