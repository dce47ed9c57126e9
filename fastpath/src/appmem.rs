//! The fast path's access to an application's shared region.
//!
//! The region is memory another process writes at any time. This module is the only
//! place the fast path touches it: every access is bounds-checked against the region's
//! length, copies go through raw pointers (no Rust reference into the region is ever
//! created), and descriptors are read by value through [`tas_proto::queue::ShmQueue`].
//! Offsets come from the service's own flow state, never from the application.
#![allow(unsafe_code)]

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

use tas_proto::queue::ShmQueue;
use tas_proto::shm::queue_bytes;

/// A mapped application region.
#[derive(Clone)]
pub struct AppMem {
    base: NonNull<u8>,
    len: usize,
    /// Keeps the mapping alive while the fast path uses it.
    _keep: Arc<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for AppMem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppMem")
            .field("base", &self.base)
            .field("len", &self.len)
            .finish()
    }
}

// SAFETY: AppMem is a handle to a shared mapping kept alive by `_keep`; all accesses are
// copies through raw pointers, valid from any thread.
unsafe impl Send for AppMem {}
// SAFETY: as above; no interior state is mutated through &self except the mapped bytes,
// which are shared with another process by design and accessed only by copies.
unsafe impl Sync for AppMem {}

impl AppMem {
    /// Wrap a mapping.
    ///
    /// # Safety
    /// `base..base+len` must be mapped readable and writable, 64-byte aligned, and stay
    /// mapped as long as `keep` (or a clone of the returned value) is alive.
    pub unsafe fn new(base: NonNull<u8>, len: usize, keep: Arc<dyn Any + Send + Sync>) -> Self {
        AppMem {
            base,
            len,
            _keep: keep,
        }
    }

    /// Region length.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True for an empty region.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn in_bounds(&self, off: u64, n: usize) -> bool {
        (off as usize)
            .checked_add(n)
            .is_some_and(|end| end <= self.len)
            && off <= usize::MAX as u64
    }

    /// Copy `data` to `off`. False (nothing written) if out of bounds.
    #[inline]
    pub fn write(&self, off: u64, data: &[u8]) -> bool {
        if !self.in_bounds(off, data.len()) {
            return false;
        }
        // SAFETY: [off, off+len) is inside the mapping (checked above); the source is a
        // Rust slice that cannot overlap the foreign mapping.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.base.as_ptr().add(off as usize),
                data.len(),
            )
        };
        true
    }

    /// Copy from `off` into `out`. False (nothing read) if out of bounds.
    #[inline]
    pub fn read(&self, off: u64, out: &mut [u8]) -> bool {
        if !self.in_bounds(off, out.len()) {
            return false;
        }
        // SAFETY: inside the mapping (checked); the destination is our own buffer. The
        // bytes may change concurrently: we copy whatever is there, never interpret it.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.base.as_ptr().add(off as usize),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        true
    }

    /// Write `data` into the ring at `ring_off` of `size` (power of two) starting at ring
    /// position `pos`, wrapping. False if the ring is out of bounds.
    #[inline]
    pub fn write_ring(&self, ring_off: u64, size: u32, pos: u32, data: &[u8]) -> bool {
        let pos = pos & (size - 1);
        let first = data.len().min((size - pos) as usize);
        self.write(ring_off + pos as u64, &data[..first]) && self.write(ring_off, &data[first..])
    }

    /// Read `out.len()` bytes from the ring at `ring_off` of `size` starting at `pos`.
    #[inline]
    pub fn read_ring(&self, ring_off: u64, size: u32, pos: u32, out: &mut [u8]) -> bool {
        let pos = pos & (size - 1);
        let first = out.len().min((size - pos) as usize);
        let (a, b) = out.split_at_mut(first);
        self.read(ring_off + pos as u64, a) && self.read(ring_off, b)
    }

    /// A queue endpoint over the queue at `off` with `entries` descriptors, if it fits.
    pub fn queue(&self, off: usize, entries: u32) -> Option<ShmQueue> {
        if !entries.is_power_of_two()
            || off % 64 != 0
            || !self.in_bounds(off as u64, queue_bytes(entries))
        {
            return None;
        }
        // SAFETY: the queue lies inside the mapping (checked), is 64-byte aligned
        // (base is, off is), and the mapping outlives the endpoint as long as the caller
        // keeps this AppMem (the fast path stores both in the same AppCtx).
        Some(unsafe {
            ShmQueue::from_raw(NonNull::new_unchecked(self.base.as_ptr().add(off)), entries)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(C, align(64))]
    struct Buf([u8; 8192]);

    fn mem(b: &mut Box<Buf>) -> AppMem {
        let p = NonNull::new(b.0.as_mut_ptr()).unwrap();
        // SAFETY: the box lives for the test and is not otherwise accessed meanwhile.
        unsafe { AppMem::new(p, 8192, Arc::new(())) }
    }

    #[test]
    fn bounds_and_ring_wrap() {
        let mut b = Box::new(Buf([0; 8192]));
        let m = mem(&mut b);
        assert!(!m.write(8190, &[1, 2, 3]));
        assert!(!m.write(u64::MAX, &[1]));
        assert!(m.write(8189, &[1, 2, 3]));
        assert!(m.write_ring(4096, 16, 14, &[1, 2, 3, 4]));
        let mut out = [0u8; 4];
        assert!(m.read_ring(4096, 16, 14, &mut out));
        assert_eq!(out, [1, 2, 3, 4]);
        let mut raw = [0u8; 2];
        assert!(m.read(4096, &mut raw));
        assert_eq!(raw, [3, 4], "wrapped part lands at the ring start");
        assert!(m.queue(8192 - 64, 16).is_none());
        assert!(m.queue(1, 16).is_none());
        assert!(m.queue(0, 16).is_some());
    }
}
