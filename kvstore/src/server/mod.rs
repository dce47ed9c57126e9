//! The server: threads, backends and the connection logic they share.

pub mod conn;
pub mod kernel;
pub mod shared;
pub mod tas;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::config::{Backend, Config};
use crate::store::Store;
use shared::{ServerInfo, Shared};

/// The wall clock in Unix milliseconds (read once per batch of commands).
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// A running server: its shared state and a way to stop it.
#[derive(Debug)]
pub struct Running {
    /// The shared state (INFO's source).
    pub shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<Result<(), String>>>,
}

impl Running {
    /// Ask every thread to stop and wait for them; the first error any of them hit.
    pub fn stop(self) -> Result<(), String> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Wait for the threads (they run until stopped or failed).
    pub fn join(self) -> Result<(), String> {
        let mut first = Ok(());
        for t in self.threads {
            let r = t.join().unwrap_or_else(|_| Err("a server thread panicked".into()));
            if first.is_ok() {
                first = r;
            }
        }
        first
    }
}

/// Start the server threads and the housekeeping thread; returns once every server thread
/// is listening (or the first failed to).
pub fn start(cfg: &Config) -> Result<Running, String> {
    let store = Store::new(cfg.maxmemory, cfg.maxmemory_policy);
    store.set_samples(cfg.maxmemory_samples);
    let pinned: Vec<Option<usize>> = (0..cfg.threads).map(|i| cfg.pin.get(i).copied()).collect();
    let info = ServerInfo {
        backend: match cfg.backend {
            Backend::Tas => "tas",
            Backend::Kernel => "kernel",
        },
        port: cfg.port,
        threads: cfg.threads,
        config_file: cfg.config_file.clone(),
        pinned: pinned.clone(),
    };
    let shared = Arc::new(Shared::new(store, info, cfg.hz, cfg.maxclients));
    let stop = Arc::new(AtomicBool::new(false));
    let (ready_tx, ready_rx) = mpsc::channel::<(usize, Result<(), String>)>();
    let mut threads = Vec::new();
    for (i, &pin) in pinned.iter().enumerate() {
        let (shared, stop_t, ready_tx) = (shared.clone(), stop.clone(), ready_tx.clone());
        let (backend, port, socket): (Backend, u16, Option<PathBuf>) = (cfg.backend, cfg.port, cfg.socket.clone());
        let t = std::thread::Builder::new()
            .name(format!("kv-{i}"))
            .spawn(move || {
                if let Some(cpu) = pin {
                    if !core_affinity::set_for_current(core_affinity::CoreId { id: cpu }) {
                        eprintln!("tas-kv: thread {i}: could not pin to CPU {cpu}");
                    }
                }
                let ready = |r: Result<(), String>| {
                    let _ = ready_tx.send((i, r));
                };
                match backend {
                    Backend::Tas => tas::serve(i, shared, port, socket.as_deref(), &stop_t, &ready),
                    Backend::Kernel => kernel::serve(i, shared, port, &stop_t, &ready),
                }
            })
            .map_err(|e| format!("cannot start a server thread: {e}"))?;
        threads.push(t);
        // Threads attach and listen one after the other, so a failure names its thread.
        match ready_rx.recv_timeout(Duration::from_secs(30)) {
            Ok((_, Ok(()))) => {}
            Ok((_, Err(e))) => {
                stop.store(true, Ordering::Relaxed);
                return Err(e);
            }
            Err(_) => {
                stop.store(true, Ordering::Relaxed);
                return Err(format!("server thread {i} did not become ready within 30 s"));
            }
        }
    }
    {
        let (shared, stop) = (shared.clone(), stop.clone());
        std::thread::Builder::new()
            .name("kv-expire".into())
            .spawn(move || housekeeping(&shared, &stop))
            .map_err(|e| format!("cannot start the housekeeping thread: {e}"))?;
    }
    Ok(Running { shared, stop, threads })
}

/// Active expiry, `hz` times a second: sweep a slice of the buckets; go on sweeping (up to a
/// quarter of the period) while many of the keys looked at had expired.
fn housekeeping(shared: &Shared, stop: &AtomicBool) {
    while !stop.load(Ordering::Relaxed) {
        let hz = shared.runtime.hz.load(Ordering::Relaxed).clamp(1, 500);
        let period = Duration::from_millis(1000 / hz);
        std::thread::sleep(period);
        let start = Instant::now();
        loop {
            let removed = shared.store.active_expire(1024, now_ms());
            if removed < 64 || start.elapsed() > period / 4 {
                break;
            }
        }
    }
}
