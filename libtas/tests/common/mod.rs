//! A fake service for libtas's tests: it owns a region in process memory, holds the
//! service-side endpoints of every queue, and plays the fast path and the slow path by
//! hand (writing receive-ring bytes, posting events, reading doorbells).
#![allow(dead_code)]

use std::alloc::{alloc_zeroed, dealloc, Layout as AllocLayout};
use std::collections::HashMap;
use std::os::fd::{FromRawFd, OwnedFd};
use std::ptr::NonNull;
use std::sync::Arc;

use libtas::{Context, RegionMapping};
use tas_proto::queue::ShmQueue;
use tas_proto::shm::{ControlRequest, Desc, Doorbell, FpEvent, Layout, RegionHeader, SpEvent};

pub struct AlignedBuf {
    ptr: NonNull<u8>,
    layout: AllocLayout,
}

// SAFETY: plain heap memory; every access goes through raw pointers with the queue or
// ring protocol deciding who writes what.
unsafe impl Send for AlignedBuf {}
// SAFETY: as above.
unsafe impl Sync for AlignedBuf {}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `FakeService::new` with this layout.
        unsafe { dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

pub struct FakeService {
    pub mem: Arc<AlignedBuf>,
    pub layout: Layout,
    pub to_fp: Vec<ShmQueue>,
    pub to_app: Vec<ShmQueue>,
    pub sp: ShmQueue,
    pub req: ShmQueue,
    rx_write: HashMap<u32, u64>,
    tx_read: HashMap<u32, u64>,
}

pub fn layout(cores: u32, entries: u32, slots: u32, rx: u32, tx: u32) -> Layout {
    Layout { num_fp_queues: cores, queue_entries: entries, conn_slots: slots, rx_buf_size: rx, tx_buf_size: tx }
}

pub fn eventfd() -> OwnedFd {
    // SAFETY: plain eventfd(2); the result is checked and then owned by us.
    unsafe {
        let fd = libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC);
        assert!(fd >= 0);
        OwnedFd::from_raw_fd(fd)
    }
}

impl FakeService {
    /// A region with `layout`, its header written and queues initialised.
    pub fn new(layout: Layout) -> FakeService {
        FakeService::with_header(layout, layout.header())
    }

    pub fn with_header(layout: Layout, header: RegionHeader) -> FakeService {
        let size = layout.region_size();
        let al = AllocLayout::from_size_align(size, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = NonNull::new(unsafe { alloc_zeroed(al) }).expect("alloc");
        let mem = Arc::new(AlignedBuf { ptr, layout: al });
        // SAFETY: the header fits at offset 0 of the page-aligned buffer.
        unsafe { std::ptr::write_volatile(ptr.as_ptr().cast::<RegionHeader>(), header) };
        let q = |off: usize| {
            // SAFETY: the offsets come from the layout and lie inside the buffer, which the
            // service keeps alive through `mem`; one service-side endpoint per queue.
            let mut q = unsafe { ShmQueue::from_raw(ptr.add(off), layout.queue_entries) };
            q.init();
            q
        };
        let to_fp = (0..layout.num_fp_queues).map(|i| q(layout.to_fp_offset(i))).collect();
        let to_app = (0..layout.num_fp_queues).map(|i| q(layout.to_app_offset(i))).collect();
        let sp = q(layout.sp_queue_offset());
        let req = q(layout.req_queue_offset());
        FakeService { mem, layout, to_fp, to_app, sp, req, rx_write: HashMap::new(), tx_read: HashMap::new() }
    }

    pub fn mapping(&self) -> RegionMapping {
        // SAFETY: the buffer is region_size bytes, 4096-aligned, kept alive by the Arc
        // handed over, and only accessed through raw pointers.
        unsafe { RegionMapping::borrowed(self.mem.ptr, self.layout.region_size(), self.mem.clone()) }
    }

    /// A context over this region without eventfds.
    pub fn context(&self) -> Context {
        let doorbells = vec![None; self.layout.num_fp_queues as usize];
        // SAFETY: the region was initialised by `new`, and this is the only context.
        unsafe { Context::from_parts(self.mapping(), None, doorbells, "10.0.0.1".parse().unwrap()) }.unwrap()
    }

    pub fn base(&self) -> NonNull<u8> {
        self.mem.ptr
    }

    /// Play the fast path: write `data` into slot `conn`'s receive ring (no event).
    pub fn write_rx(&mut self, conn: u32, data: &[u8]) {
        let pos = self.rx_write.entry(conn).or_insert(0);
        let size = self.layout.rx_buf_size as u64;
        let base = self.layout.rx_offset(conn);
        for (i, b) in data.iter().enumerate() {
            let off = base + ((*pos + i as u64) % size) as usize;
            // SAFETY: off lies inside slot conn's rx ring inside the buffer.
            unsafe { self.mem.ptr.as_ptr().add(off).write_volatile(*b) };
        }
        *pos += data.len() as u64;
    }

    /// A new connection in slot `conn`: both rings start over at position 0.
    pub fn reset_slot(&mut self, conn: u32) {
        self.rx_write.remove(&conn);
        self.tx_read.remove(&conn);
    }

    /// Read `n` bytes the application queued on slot `conn`'s transmit ring.
    pub fn read_tx(&mut self, conn: u32, n: usize) -> Vec<u8> {
        let pos = self.tx_read.entry(conn).or_insert(0);
        let size = self.layout.tx_buf_size as u64;
        let base = self.layout.tx_offset(conn);
        let out = (0..n)
            .map(|i| {
                let off = base + ((*pos + i as u64) % size) as usize;
                // SAFETY: off lies inside slot conn's tx ring inside the buffer.
                unsafe { self.mem.ptr.as_ptr().add(off).read_volatile() }
            })
            .collect();
        *pos += n as u64;
        out
    }

    pub fn post_fp(&mut self, core: usize, ev: FpEvent) -> bool {
        self.post_fp_raw(core, ev.encode())
    }

    pub fn post_fp_raw(&mut self, core: usize, d: Desc) -> bool {
        assert!(self.to_app[core].push(d), "to_app queue full");
        self.to_app[core].publish()
    }

    pub fn post_sp(&mut self, ev: SpEvent) -> bool {
        self.post_sp_raw(ev.encode())
    }

    pub fn post_sp_raw(&mut self, d: Desc) -> bool {
        assert!(self.sp.push(d), "sp queue full");
        self.sp.publish()
    }

    /// Receive data on slot `conn` of `core`: write the bytes and post RxData.
    pub fn deliver(&mut self, core: usize, conn: u32, data: &[u8], fin: bool) {
        self.write_rx(conn, data);
        self.post_fp(core, FpEvent::RxData { conn, bytes: data.len() as u32, fin });
    }

    pub fn doorbells(&mut self, core: usize) -> Vec<Doorbell> {
        let mut v = Vec::new();
        while let Some(d) = self.to_fp[core].pop().unwrap() {
            v.push(Doorbell::decode(&d).unwrap());
        }
        self.to_fp[core].release();
        v
    }

    pub fn requests(&mut self) -> Vec<ControlRequest> {
        let mut v = Vec::new();
        while let Some(d) = self.req.pop().unwrap() {
            v.push(ControlRequest::decode(&d).unwrap());
        }
        self.req.release();
        v
    }
}

/// Listen on `port` and accept one connection from 10.0.0.2:4000 with `handle`, the
/// service's side played by `svc`; the requests it made are taken.
#[allow(dead_code)]
pub fn accept_one(svc: &mut FakeService, ctx: &mut Context, port: u16, handle: tas_proto::shm::ConnHandle) -> libtas::ConnId {
    let tok = ctx.listen_start(port, 16).unwrap();
    let token = match svc.requests()[..] {
        [ControlRequest::Listen { token, .. }] => token,
        ref r => panic!("unexpected requests {r:?}"),
    };
    svc.post_sp(SpEvent::ListenOk { token, listener: 1 });
    let l = ctx.listen_result(tok).unwrap().unwrap();
    svc.post_sp(SpEvent::Accepted { listener: 1, handle, remote_ip: 0x0a00_0002, remote_port: 4000, local_port: port });
    let c = ctx.accept(l).unwrap().expect("a connection");
    svc.requests();
    c
}
