//! A whole service (fast-path cores + slow path) driven inline on one thread over the
//! in-memory link and a virtual clock: the unprivileged, deterministic test bed.
//!
//! Applications attach in-process ([`SimHost::attach_local`]) to a region in ordinary
//! heap memory laid out exactly like the shared one, so the application side runs the
//! real libtas code too.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::ptr::NonNull;
use std::sync::Arc;

use tas_fastpath::appmem::AppMem;
use tas_fastpath::core::{FastPath, FpConfig};
use tas_fastpath::ctl::{command_queue, to_slow_queue};
use tas_fastpath::io::mem::MemPort;
use tas_fastpath::time::{Clock, SimClock};
use tas_fastpath::wire::EthernetAddress;
use tas_proto::shm::Layout;

use crate::slow::{CoreLink, NoFilter, SlowConfig, SlowPath};

/// Heap memory laid out as an application region (page aligned, zeroed).
#[derive(Debug)]
pub struct HeapRegion {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}

// SAFETY: the allocation is owned by this value and only accessed by copies through
// AppMem / libtas, which are themselves the synchronisation points.
unsafe impl Send for HeapRegion {}
// SAFETY: as above; &HeapRegion exposes no references into the memory.
unsafe impl Sync for HeapRegion {}

impl HeapRegion {
    /// Allocate and initialise a region of geometry `l` (header + queues).
    pub fn new(l: Layout) -> Arc<HeapRegion> {
        let layout = std::alloc::Layout::from_size_align(l.region_size(), 4096).expect("valid size");
        // SAFETY: non-zero size (the header alone is 128 bytes), valid alignment.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).expect("out of memory");
        let r = Arc::new(HeapRegion { ptr, layout });
        let mem = r.mem();
        mem.write(0, &l.header().to_bytes());
        let mut offs = vec![l.sp_queue_offset(), l.req_queue_offset()];
        for c in 0..l.num_fp_queues {
            offs.push(l.to_fp_offset(c));
            offs.push(l.to_app_offset(c));
        }
        for o in offs {
            mem.queue(o, l.queue_entries).expect("queue fits").init();
        }
        r
    }
    /// Base address.
    pub fn base(&self) -> NonNull<u8> {
        self.ptr
    }
    /// Length.
    pub fn len(&self) -> usize {
        self.layout.size()
    }
    /// True if empty (never).
    pub fn is_empty(&self) -> bool {
        self.layout.size() == 0
    }
    /// The fast path's handle on it.
    pub fn mem(self: &Arc<Self>) -> AppMem {
        // SAFETY: the allocation is len bytes, 4096-aligned, and lives as long as the Arc
        // handed over as the keep-alive.
        unsafe { AppMem::new(self.ptr, self.len(), self.clone()) }
    }
}

impl Drop for HeapRegion {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) };
    }
}

/// One simulated host: cores and slow path on a [`MemPort`].
pub struct SimHost {
    /// The fast-path cores.
    pub cores: Vec<FastPath<MemPort>>,
    /// The slow path.
    pub slow: SlowPath,
    clock: SimClock,
    next_app: u32,
    /// Application regions attached (kept alive here too).
    pub regions: Vec<Arc<HeapRegion>>,
}

impl std::fmt::Debug for SimHost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimHost").finish_non_exhaustive()
    }
}

impl SimHost {
    /// A host with one fast-path core on `port`.
    pub fn new(port: MemPort, clock: &SimClock, ip: Ipv4Addr, mac: EthernetAddress, layout: Layout) -> SimHost {
        Self::with_keepalive(port, clock, ip, mac, layout, None)
    }

    /// A host whose connections send keepalive probes with `keepalive` timing.
    pub fn with_keepalive(
        port: MemPort,
        clock: &SimClock,
        ip: Ipv4Addr,
        mac: EthernetAddress,
        layout: Layout,
        keepalive: Option<tas_fastpath::core::Keepalive>,
    ) -> SimHost {
        let (cmd_tx, cmd_rx) = command_queue(4096);
        let (rep_tx, rep_rx) = to_slow_queue(4096);
        let mut fcfg = FpConfig::new(0, ip, mac);
        fcfg.flow_capacity = 1024;
        if let Some(k) = keepalive {
            fcfg.keepalive = k;
        }
        let fp = FastPath::new(fcfg.clone(), port, cmd_rx, rep_tx, None);
        let link = CoreLink::new(cmd_tx, rep_rx, None, fp.counters(), fcfg.flow_capacity);
        let mut scfg = SlowConfig::new(ip, 24, mac, layout);
        scfg.time_wait = std::time::Duration::from_secs(1);
        scfg.keepalive = keepalive.is_some();
        let slow = SlowPath::new(scfg, vec![link], Box::new(NoFilter));
        SimHost { cores: vec![fp], slow, clock: clock.clone(), next_app: 1, regions: Vec::new() }
    }

    /// Run every core and the slow path once; returns true if anything happened.
    pub fn poll(&mut self) -> bool {
        let now = self.clock.now();
        let mut work = false;
        for c in &mut self.cores {
            work |= c.poll(now).did_work();
        }
        work |= self.slow.poll(now) > 0;
        // Commands the slow path just queued (e.g. flow installs) take effect at once.
        for c in &mut self.cores {
            if c.has_commands() {
                work |= c.poll(now).did_work();
            }
        }
        work
    }

    /// Attach an in-process application; returns its region (the caller builds a libtas
    /// context over it).
    pub fn attach_local(&mut self, name: &str) -> Arc<HeapRegion> {
        self.attach_local_as(name, 0)
    }

    /// [`SimHost::attach_local`] for an application of user `uid`.
    pub fn attach_local_as(&mut self, name: &str, uid: u32) -> Arc<HeapRegion> {
        let layout = self.slow.config().layout;
        let region = HeapRegion::new(layout);
        let id = self.next_app;
        self.next_app += 1;
        self.slow
            .attach_app(id, name.to_string(), std::process::id(), uid, region.mem(), None)
            .expect("attach");
        self.regions.push(region.clone());
        region
    }
}
