//! State every server thread shares: the store, the clients (for CLIENT LIST and INFO),
//! per-thread counters, and the static facts INFO and CONFIG GET report.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use crate::store::Store;

/// Counters of one server thread. Only that thread writes them (plain load + store, no
/// contended read-modify-write); INFO sums them.
#[derive(Debug, Default)]
pub struct ThreadStats {
    /// Commands executed.
    pub commands: AtomicU64,
    /// Key lookups that found the key.
    pub hits: AtomicU64,
    /// Key lookups that did not.
    pub misses: AtomicU64,
    /// Bytes received.
    pub net_in: AtomicU64,
    /// Bytes sent.
    pub net_out: AtomicU64,
    /// Connections open on this thread.
    pub connections: AtomicU64,
}

impl ThreadStats {
    /// Add `n` to one of this thread's counters (single writer).
    pub fn add(c: &AtomicU64, n: u64) {
        c.store(c.load(Ordering::Relaxed).wrapping_add(n), Ordering::Relaxed);
    }
}

/// One client, as CLIENT LIST shows it. Written by its thread, read by anyone.
#[derive(Debug)]
pub struct ClientInfo {
    /// CLIENT ID.
    pub id: u64,
    /// The peer's address.
    pub addr: String,
    /// The local address.
    pub laddr: String,
    /// Server thread serving it.
    pub thread: usize,
    /// When it connected.
    pub created: Instant,
    /// CLIENT SETNAME.
    pub name: Mutex<String>,
    /// CLIENT SETINFO LIB-NAME / LIB-VER.
    pub lib: Mutex<(String, String)>,
    /// Milliseconds since `created` of its last command.
    pub last_active: AtomicU64,
    /// Index of its last command in the command table.
    pub last_cmd: AtomicUsize,
    /// Protocol version (2 or 3).
    pub resp: AtomicU8,
}

/// Static facts about the running server.
#[derive(Debug, Clone)]
pub struct ServerInfo {
    /// `tas` or `kernel`.
    pub backend: &'static str,
    /// Listening port.
    pub port: u16,
    /// Server threads.
    pub threads: usize,
    /// The TOML configuration file, if one was given.
    pub config_file: Option<String>,
    /// Where each thread is pinned (CPU ids), if pinned.
    pub pinned: Vec<Option<usize>>,
}

/// Runtime settings that are not the store's.
#[derive(Debug)]
pub struct Runtime {
    /// Active expiry cycles per second (`hz`).
    pub hz: AtomicU64,
    /// `save` (accepted and reported; nothing is persisted).
    pub save: Mutex<String>,
    /// Most clients at once (`maxclients`).
    pub maxclients: AtomicU64,
}

/// Everything the threads share.
#[derive(Debug)]
pub struct Shared {
    /// The store.
    pub store: Store,
    /// When the server started.
    pub started: Instant,
    /// Static facts.
    pub info: ServerInfo,
    /// Runtime settings.
    pub runtime: Runtime,
    /// Per-thread counters, by thread index.
    pub threads: Vec<Arc<ThreadStats>>,
    clients: Mutex<BTreeMap<u64, Arc<ClientInfo>>>,
    next_id: AtomicU64,
    /// Connections accepted since start.
    pub total_connections: AtomicU64,
    /// Connections refused (maxclients).
    pub rejected_connections: AtomicU64,
    /// Times a server thread attached to tasd again after its context failed.
    pub reattaches: AtomicU64,
}

impl Shared {
    /// Shared state for `info.threads` threads.
    pub fn new(store: Store, info: ServerInfo, hz: u64, maxclients: u64) -> Shared {
        let threads = (0..info.threads.max(1)).map(|_| Arc::new(ThreadStats::default())).collect();
        Shared {
            store,
            started: Instant::now(),
            info,
            runtime: Runtime { hz: AtomicU64::new(hz), save: Mutex::new(String::new()), maxclients: AtomicU64::new(maxclients) },
            threads,
            clients: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(1),
            total_connections: AtomicU64::new(0),
            rejected_connections: AtomicU64::new(0),
            reattaches: AtomicU64::new(0),
        }
    }

    /// Register a new client; None if `maxclients` is reached (the caller closes it).
    pub fn register(&self, addr: String, laddr: String, thread: usize) -> Option<Arc<ClientInfo>> {
        let mut clients = self.clients.lock().unwrap_or_else(|e| e.into_inner());
        if clients.len() as u64 >= self.runtime.maxclients.load(Ordering::Relaxed) {
            self.rejected_connections.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let c = Arc::new(ClientInfo {
            id,
            addr,
            laddr,
            thread,
            created: Instant::now(),
            name: Mutex::new(String::new()),
            lib: Mutex::new((String::new(), String::new())),
            last_active: AtomicU64::new(0),
            last_cmd: AtomicUsize::new(usize::MAX),
            resp: AtomicU8::new(2),
        });
        clients.insert(id, c.clone());
        self.total_connections.fetch_add(1, Ordering::Relaxed);
        if let Some(t) = self.threads.get(thread) {
            ThreadStats::add(&t.connections, 1);
        }
        Some(c)
    }

    /// Forget a client.
    pub fn unregister(&self, c: &ClientInfo) {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).remove(&c.id);
        if let Some(t) = self.threads.get(c.thread) {
            ThreadStats::add(&t.connections, u64::MAX); // -1
        }
    }

    /// Every client, by id.
    pub fn clients(&self) -> Vec<Arc<ClientInfo>> {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Connected clients.
    pub fn client_count(&self) -> usize {
        self.clients.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// A counter summed over the threads.
    pub fn sum(&self, f: impl Fn(&ThreadStats) -> &AtomicU64) -> u64 {
        self.threads.iter().map(|t| f(t).load(Ordering::Relaxed)).fold(0u64, |a, b| a.wrapping_add(b))
    }
}
