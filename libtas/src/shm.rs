//! The application's view of its shared region: the mapping, the validated layout, the
//! queue endpoints and the payload rings.
//!
//! This is one of the two modules of libtas where `unsafe` is allowed (the other is
//! `sys`, for the socket calls): mapping the region, making queue endpoints over it,
//! and copying bytes in and out of the payload rings. Everything read from the region
//! is either read by value (the header, descriptors) and validated before use, or is
//! payload bytes that the service only writes while they are outside the application's
//! readable range.
#![allow(unsafe_code)]

use std::any::Any;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::{self, NonNull};
use std::sync::Arc;

use tas_proto::queue::ShmQueue;
use tas_proto::shm::{Layout, RegionHeader};

use crate::error::Error;

/// A mapped shared region, and what to do with the mapping when it is dropped.
///
/// Made by [`crate::Context::attach`] (an `mmap` of the fd the service passed, unmapped on
/// drop) or, for a service in the same process (the simulator), by
/// [`RegionMapping::borrowed`] over memory some other object keeps alive.
pub struct RegionMapping {
    base: NonNull<u8>,
    len: usize,
    owner: Owner,
}

enum Owner {
    /// Our own `mmap`: `munmap` on drop.
    Mmap,
    /// Someone else's memory, kept alive by this reference.
    Keep(#[allow(dead_code)] Arc<dyn Any + Send + Sync>),
}

impl std::fmt::Debug for RegionMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegionMapping").field("base", &self.base).field("len", &self.len).finish()
    }
}

// SAFETY: the mapping is plain shared memory, valid from any thread; RegionMapping only
// holds its address and the keep-alive `Arc`, which is `Send + Sync` itself.
unsafe impl Send for RegionMapping {}

impl RegionMapping {
    /// Wrap memory that is already mapped; `keep_alive` is held until the mapping (and
    /// the [`crate::Context`] built on it) is dropped.
    ///
    /// # Safety
    /// `base` must point to `len` bytes of readable and writable memory, aligned to 64
    /// bytes, that stay valid while `keep_alive` lives, and that no Rust reference
    /// (`&`/`&mut`) covers while the context uses them (they are shared with the
    /// service, which reads and writes them concurrently).
    pub unsafe fn borrowed(base: NonNull<u8>, len: usize, keep_alive: Arc<dyn Any + Send + Sync>) -> Self {
        RegionMapping { base, len, owner: Owner::Keep(keep_alive) }
    }

    /// Map `len` bytes of the shared-memory object `fd` read-write and shared.
    pub(crate) fn map_fd(fd: BorrowedFd<'_>, len: usize) -> Result<Self, Error> {
        if len == 0 {
            return Err(Error::Protocol("region size 0 in the attach reply"));
        }
        // SAFETY: an all-zero `stat` is a valid value of this plain C struct; fstat fills
        // it in for a valid fd (BorrowedFd guarantees the fd is open).
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open (BorrowedFd) and `st` is a valid out-pointer.
        if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        if (st.st_size as u64) < len as u64 {
            return Err(Error::Protocol("the region fd is smaller than the attach reply says"));
        }
        // SAFETY: a fresh shared mapping chosen by the kernel (addr NULL): it overlaps
        // nothing Rust owns. The result is checked for MAP_FAILED below.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error().into());
        }
        let base = NonNull::new(p.cast::<u8>()).ok_or(Error::Io(std::io::ErrorKind::Other))?;
        Ok(RegionMapping { base, len, owner: Owner::Mmap })
    }

    /// Start of the mapping.
    pub fn base(&self) -> NonNull<u8> {
        self.base
    }

    /// Length of the mapping in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if the mapping is empty (never for a usable region).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for RegionMapping {
    fn drop(&mut self) {
        if let Owner::Mmap = self.owner {
            // SAFETY: base/len are exactly what our mmap returned, and every user of the
            // mapping (queues, rings of the Context) is gone: the Context drops its
            // region last.
            unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
        }
    }
}

/// A mapping whose header was validated: every offset derived from `layout` lies
/// inside the mapping.
pub(crate) struct Region {
    map: RegionMapping,
    layout: Layout,
}

impl Region {
    /// Read and check the header.
    pub(crate) fn new(map: RegionMapping) -> Result<Self, Error> {
        if map.len < std::mem::size_of::<RegionHeader>() {
            return Err(Error::Protocol("region smaller than its header"));
        }
        if map.base.as_ptr() as usize & 63 != 0 {
            return Err(Error::InvalidArgument);
        }
        // SAFETY: the mapping holds at least a header's bytes (checked above) and is
        // 64-byte aligned (RegionHeader's alignment). Read by value, volatile, so no
        // reference into shared memory is created.
        let h = unsafe { ptr::read_volatile(map.base.as_ptr().cast::<RegionHeader>()) };
        let layout = Layout::validate(&h, map.len).map_err(|e| match e {
            tas_proto::shm::LayoutError::Version(_) => Error::Version { ours: tas_proto::shm::ABI_VERSION },
            tas_proto::shm::LayoutError::Magic => Error::Protocol("the region has no TAS header (bad magic)"),
            tas_proto::shm::LayoutError::Geometry => Error::Protocol("the region header's geometry is invalid"),
            tas_proto::shm::LayoutError::TooSmall => Error::Protocol("the region is smaller than its header says"),
        })?;
        Ok(Region { map, layout })
    }

    pub(crate) fn layout(&self) -> &Layout {
        &self.layout
    }

    /// The application's endpoint of the queue at `offset`.
    ///
    /// Only the context calls this, once per queue, so at most one application-side
    /// endpoint exists for each queue.
    fn queue(&self, offset: usize) -> ShmQueue {
        assert!(offset + tas_proto::shm::queue_bytes(self.layout.queue_entries) <= self.map.len);
        // SAFETY: offset+len lies inside the mapping (asserted; validate() guarantees it for
        // every offset the layout yields), offsets are multiples of 64 on a 64-aligned
        // base, queue_entries is a power of two (validated), and the mapping outlives the
        // queue (the Context drops its queues before its Region). One app endpoint per
        // queue: see the caller.
        unsafe { ShmQueue::from_raw(self.map.base.add(offset), self.layout.queue_entries) }
    }

    /// The app's producer endpoint of core `i`'s doorbell queue.
    pub(crate) fn to_fp(&self, i: u32) -> ShmQueue {
        let mut q = self.queue(self.layout.to_fp_offset(i));
        q.resume_as_producer();
        q
    }
    /// The app's consumer endpoint of core `i`'s event queue.
    pub(crate) fn to_app(&self, i: u32) -> ShmQueue {
        self.queue(self.layout.to_app_offset(i))
    }
    /// The app's consumer endpoint of the slow path's event queue.
    pub(crate) fn sp_events(&self) -> ShmQueue {
        self.queue(self.layout.sp_queue_offset())
    }
    /// The app's producer endpoint of the control-request queue.
    pub(crate) fn requests(&self) -> ShmQueue {
        let mut q = self.queue(self.layout.req_queue_offset());
        q.resume_as_producer();
        q
    }

    /// Connection slot `conn`'s receive ring. Panics if `conn` is out of range (callers
    /// validated it when the service named the slot).
    pub(crate) fn rx_ring(&self, conn: u32) -> Ring<'_> {
        assert!(conn < self.layout.conn_slots);
        // SAFETY: rx_offset(conn) + rx_buf_size <= region_size <= mapping length for an
        // in-range slot (validated layout).
        let p = unsafe { self.map.base.add(self.layout.rx_offset(conn)) };
        Ring { base: p, size: self.layout.rx_buf_size, _region: std::marker::PhantomData }
    }

    /// Connection slot `conn`'s transmit ring.
    pub(crate) fn tx_ring(&self, conn: u32) -> Ring<'_> {
        assert!(conn < self.layout.conn_slots);
        // SAFETY: as in rx_ring.
        let p = unsafe { self.map.base.add(self.layout.tx_offset(conn)) };
        Ring { base: p, size: self.layout.tx_buf_size, _region: std::marker::PhantomData }
    }
}

/// A payload byte ring of `size` (a power of two) bytes. Positions are free-running
/// `u64` byte counts; `pos % size` is the offset.
pub(crate) struct Ring<'a> {
    base: NonNull<u8>,
    size: u32,
    _region: std::marker::PhantomData<&'a Region>,
}

impl<'a> Ring<'a> {
    fn split(&self, pos: u64, len: usize) -> (usize, usize, usize) {
        assert!(len <= self.size as usize);
        let off = (pos & (self.size as u64 - 1)) as usize;
        let first = len.min(self.size as usize - off);
        (off, first, len - first)
    }

    /// Copy `dst.len()` bytes starting at `pos` out of the ring.
    pub(crate) fn read(&self, pos: u64, dst: &mut [u8]) {
        let (off, first, second) = self.split(pos, dst.len());
        // SAFETY: [off, off+first) and [0, second) lie inside the ring (split keeps
        // off+first <= size and second <= size); dst is a distinct local buffer. The
        // service does not write these bytes: they are in the readable range, which it
        // only reuses after our RxConsumed.
        unsafe {
            ptr::copy_nonoverlapping(self.base.as_ptr().add(off), dst.as_mut_ptr(), first);
            ptr::copy_nonoverlapping(self.base.as_ptr(), dst.as_mut_ptr().add(first), second);
        }
    }

    /// Copy `src` into the ring starting at `pos`.
    pub(crate) fn write(&self, pos: u64, src: &[u8]) {
        let (off, first, second) = self.split(pos, src.len());
        // SAFETY: ranges inside the ring as in `read`; the service reads only bytes we
        // announced with TxAdded, and these are in the free range it does not touch.
        unsafe {
            ptr::copy_nonoverlapping(src.as_ptr(), self.base.as_ptr().add(off), first);
            ptr::copy_nonoverlapping(src.as_ptr().add(first), self.base.as_ptr(), second);
        }
    }

    /// The `len` bytes at `pos` as up to two writable slices (the second is non-empty only
    /// when the range wraps), for writing payload in place.
    ///
    /// Callers pass only free transmit space: bytes the service does not read (it reads
    /// only what a `TxAdded` announced) and that no other slice handed out by this module
    /// covers (the context hands these out only under `&mut self`, one range at a time).
    pub(crate) fn slices_mut(self, pos: u64, len: usize) -> (&'a mut [u8], &'a mut [u8]) {
        let (off, first, second) = self.split(pos, len);
        // SAFETY: the two ranges lie inside the ring (see `read`) and do not overlap each
        // other (the first ends at the ring's end, the second starts at its start and
        // `first + second = len <= size`). Nobody else reads or writes them while the slices
        // live: the service touches only announced bytes, and the caller holds the
        // context's `&mut` borrow for the slices' whole lifetime (see the doc above).
        unsafe {
            (
                std::slice::from_raw_parts_mut(self.base.as_ptr().add(off), first),
                std::slice::from_raw_parts_mut(self.base.as_ptr(), second),
            )
        }
    }

    /// The `len` bytes at `pos` as up to two slices (the second is non-empty only when the
    /// range wraps).
    pub(crate) fn slices(self, pos: u64, len: usize) -> (&'a [u8], &'a [u8]) {
        let (off, first, second) = self.split(pos, len);
        // SAFETY: the ranges lie inside the ring (see `read`), and the service does not
        // write them while they are readable by us (it writes only free space, and these
        // bytes stop being readable only when the borrow of the context that handed out
        // the slices has ended and RxConsumed was posted). The lifetime is tied to the
        // Region through `Ring<'_>`.
        unsafe {
            (
                std::slice::from_raw_parts(self.base.as_ptr().add(off), first),
                std::slice::from_raw_parts(self.base.as_ptr(), second),
            )
        }
    }
}
