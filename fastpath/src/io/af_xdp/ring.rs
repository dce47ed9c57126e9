//! The single-producer/single-consumer rings shared with the kernel.
//!
//! Each of the four AF_XDP rings is an array of `size` entries (a power of two) plus a
//! producer index, a consumer index and a flags word, all in memory mapped from the
//! socket. Indices are free-running `u32` counters: the slot of index `i` is `i & mask`,
//! the number of filled entries is `producer - consumer` and the number of free entries is
//! `size - (producer - consumer)`, both in wrapping arithmetic ([`filled`], [`free`]).
//!
//! Protocol (the same as libbpf's `xsk.h`):
//! - a producer reads the consumer index with Acquire (the consumer is done reading those
//!   slots), writes entries, then publishes the producer index with Release (the entries
//!   are visible before the index that covers them);
//! - a consumer reads the producer index with Acquire (the entries are visible), reads
//!   entries, then publishes the consumer index with Release (the reads are done before the
//!   slots are handed back).
//!
//! Each end caches the other end's index and reloads it only when the cached value says
//! there is not enough, so a burst costs one shared-cache-line load at most.

use std::marker::PhantomData;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU32, Ordering};

use super::sys::Mapping;

/// Entries a consumer may read: `producer - consumer`, wrapping.
#[inline]
pub(crate) fn filled(producer: u32, consumer: u32) -> u32 {
    producer.wrapping_sub(consumer)
}

/// Entries a producer may write into a ring of `size` entries.
#[inline]
pub(crate) fn free(producer: u32, consumer: u32, size: u32) -> u32 {
    size.wrapping_sub(filled(producer, consumer))
}

/// Slot of a free-running index.
#[inline]
pub(crate) fn slot(index: u32, mask: u32) -> usize {
    (index & mask) as usize
}

/// Where one ring lives: the three shared words and the entry array.
pub(crate) struct RingMem<T> {
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    entries: NonNull<T>,
    size: u32,
    mask: u32,
    /// Keeps the memory mapped (or allocated) as long as the pointers above are used.
    _backing: Backing,
    _entries: PhantomData<T>,
}

// SAFETY: the pointers lead into memory owned by `_backing`, which moves with the value;
// no other Rust value points there, and the kernel's side is synchronized by the atomics.
unsafe impl<T: Send> Send for RingMem<T> {}

/// What keeps a ring's memory alive.
pub(crate) enum Backing {
    /// Mapped from an AF_XDP socket; unmapped on drop.
    Mapped(#[allow(dead_code)] Mapping),
    /// Heap memory, for tests that play the kernel's part.
    #[cfg(test)]
    Heap(#[allow(dead_code)] Box<[u64]>),
}

impl<T: Copy> RingMem<T> {
    /// A ring inside `mapping`, at the offsets the kernel reported (`XDP_MMAP_OFFSETS`).
    ///
    /// Fails (returns `None`) if the offsets or the entry array fall outside the mapping
    /// or are misaligned, so a bad offset cannot produce a wild pointer.
    pub(crate) fn from_mapping(
        mapping: Mapping,
        producer: u64,
        consumer: u64,
        flags: u64,
        desc: u64,
        size: u32,
    ) -> Option<Self> {
        let base = mapping.as_ptr();
        let len = mapping.len() as u64;
        let words_ok = [producer, consumer, flags]
            .iter()
            .all(|&off| off % 4 == 0 && off + 4 <= len);
        let entries_end = desc.checked_add(u64::from(size) * std::mem::size_of::<T>() as u64)?;
        if !words_ok
            || !size.is_power_of_two()
            || desc & (std::mem::align_of::<T>() as u64 - 1) != 0
            || entries_end > len
        {
            return None;
        }
        // SAFETY: every offset was checked above to lie inside the mapping with room for
        // its object and with its alignment (the mapping itself is page-aligned), so the
        // pointers are in bounds and non-null; `base` is non-null.
        unsafe {
            Some(Self {
                producer: NonNull::new_unchecked(base.add(producer as usize).cast()),
                consumer: NonNull::new_unchecked(base.add(consumer as usize).cast()),
                flags: NonNull::new_unchecked(base.add(flags as usize).cast()),
                entries: NonNull::new_unchecked(base.add(desc as usize).cast()),
                size,
                mask: size - 1,
                _backing: Backing::Mapped(mapping),
                _entries: PhantomData,
            })
        }
    }

    /// A ring on the heap (producer, consumer and flags words, then the entries), so
    /// tests can drive both ends.
    #[cfg(test)]
    pub(crate) fn on_heap(size: u32) -> Self {
        assert!(size.is_power_of_two());
        assert!(std::mem::align_of::<T>() <= 8);
        let header_words = 3; // producer, consumer, flags: one u64 each
        let entry_words = (size as usize * std::mem::size_of::<T>()).div_ceil(8);
        let mut heap = vec![0u64; header_words + entry_words].into_boxed_slice();
        let base = heap.as_mut_ptr().cast::<u8>();
        // SAFETY: the allocation holds 3 u64 header words and then `size` entries of T
        // (alignment <= 8, checked above); moving the Box into the struct does not move
        // the heap memory.
        unsafe {
            Self {
                producer: NonNull::new_unchecked(base.cast()),
                consumer: NonNull::new_unchecked(base.add(8).cast()),
                flags: NonNull::new_unchecked(base.add(16).cast()),
                entries: NonNull::new_unchecked(base.add(24).cast()),
                size,
                mask: size - 1,
                _backing: Backing::Heap(heap),
                _entries: PhantomData,
            }
        }
    }

    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into memory kept alive by `_backing`, 4-aligned (checked at
        // construction); the kernel accesses this word only atomically.
        unsafe { self.producer.as_ref() }
    }

    #[inline]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    #[inline]
    fn flags(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.flags.as_ref() }
    }

    /// Read the entry at free-running index `index`.
    #[inline]
    fn read(&self, index: u32) -> T {
        // SAFETY: `slot < size` and the entry array holds `size` entries (checked at
        // construction). The caller (a consumer) only reads indices below the producer
        // index it loaded with Acquire, so the other end has finished writing this slot
        // and will not touch it until the consumer index passes it.
        unsafe { self.entries.as_ptr().add(slot(index, self.mask)).read() }
    }

    /// Write the entry at free-running index `index`.
    #[inline]
    fn write(&mut self, index: u32, value: T) {
        // SAFETY: `slot < size` as in `read`. The caller (a producer) only writes indices
        // below consumer + size, which the other end has finished reading, and publishes
        // them later with a Release store.
        unsafe {
            self.entries
                .as_ptr()
                .add(slot(index, self.mask))
                .write(value)
        }
    }

    /// Number of entries.
    pub(crate) fn size(&self) -> u32 {
        self.size
    }
}

/// Our end of a ring we produce into: the fill ring and the tx ring.
pub(crate) struct ProdRing<T> {
    mem: RingMem<T>,
    /// Next index we will write; published to the shared producer word by `publish`.
    cached_prod: u32,
    /// Last consumer index we loaded.
    cached_cons: u32,
}

impl<T: Copy> ProdRing<T> {
    pub(crate) fn new(mem: RingMem<T>) -> Self {
        let cached_prod = mem.producer().load(Ordering::Relaxed);
        let cached_cons = mem.consumer().load(Ordering::Relaxed);
        Self {
            mem,
            cached_prod,
            cached_cons,
        }
    }

    /// Free slots, reloading the consumer index only if fewer than `want` are known free.
    #[inline]
    pub(crate) fn free(&mut self, want: u32) -> u32 {
        let known = free(self.cached_prod, self.cached_cons, self.mem.size);
        if known >= want {
            return known;
        }
        self.cached_cons = self.mem.consumer().load(Ordering::Acquire);
        free(self.cached_prod, self.cached_cons, self.mem.size)
    }

    /// Write one entry at the next index. The caller checked [`Self::free`].
    #[inline]
    pub(crate) fn push(&mut self, value: T) {
        debug_assert!(free(self.cached_prod, self.cached_cons, self.mem.size) > 0);
        self.mem.write(self.cached_prod, value);
        self.cached_prod = self.cached_prod.wrapping_add(1);
    }

    /// Make every pushed entry visible to the consumer.
    #[inline]
    pub(crate) fn publish(&mut self) {
        self.mem
            .producer()
            .store(self.cached_prod, Ordering::Release);
    }

    /// Entries published or pushed that the consumer has not taken yet.
    #[inline]
    pub(crate) fn outstanding(&mut self) -> u32 {
        self.cached_cons = self.mem.consumer().load(Ordering::Acquire);
        filled(self.cached_prod, self.cached_cons)
    }

    /// Whether the kernel asks to be woken (`XDP_RING_NEED_WAKEUP`) to take entries.
    #[inline]
    pub(crate) fn needs_wakeup(&self) -> bool {
        self.mem.flags().load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    /// The other end, for tests.
    #[cfg(test)]
    pub(crate) fn mem(&self) -> &RingMem<T> {
        &self.mem
    }
}

/// Our end of a ring we consume from: the rx ring and the completion ring.
pub(crate) struct ConsRing<T> {
    mem: RingMem<T>,
    /// Next index we will read; published to the shared consumer word by `release`.
    cached_cons: u32,
    /// Last producer index we loaded.
    cached_prod: u32,
}

impl<T: Copy> ConsRing<T> {
    pub(crate) fn new(mem: RingMem<T>) -> Self {
        let cached_prod = mem.producer().load(Ordering::Relaxed);
        let cached_cons = mem.consumer().load(Ordering::Relaxed);
        Self {
            mem,
            cached_cons,
            cached_prod,
        }
    }

    /// Entries ready to read, at most `max`; reloads the producer index only when the
    /// cached one shows fewer than `max`.
    #[inline]
    pub(crate) fn available(&mut self, max: u32) -> u32 {
        let mut n = filled(self.cached_prod, self.cached_cons);
        if n < max {
            self.cached_prod = self.mem.producer().load(Ordering::Acquire);
            n = filled(self.cached_prod, self.cached_cons);
        }
        n.min(max)
    }

    /// The `i`-th entry after the consumer index; `i` < what `available` returned.
    #[inline]
    pub(crate) fn peek(&self, i: u32) -> T {
        debug_assert!(i < filled(self.cached_prod, self.cached_cons));
        self.mem.read(self.cached_cons.wrapping_add(i))
    }

    /// Hand `n` read entries back to the producer.
    #[inline]
    pub(crate) fn release(&mut self, n: u32) {
        debug_assert!(n <= filled(self.cached_prod, self.cached_cons));
        self.cached_cons = self.cached_cons.wrapping_add(n);
        self.mem
            .consumer()
            .store(self.cached_cons, Ordering::Release);
    }

    pub(crate) fn size(&self) -> u32 {
        self.mem.size()
    }

    /// The other end, for tests.
    #[cfg(test)]
    pub(crate) fn mem(&self) -> &RingMem<T> {
        &self.mem
    }
}

/// The kernel's side of a ring, for unit tests: the same memory seen from the other end.
#[cfg(test)]
pub(crate) mod peer {
    use super::*;

    /// Consume like the kernel does from a ring we produce into.
    pub(crate) fn take<T: Copy>(mem: &RingMem<T>, max: u32) -> Vec<T> {
        let prod = mem.producer().load(Ordering::Acquire);
        let cons = mem.consumer().load(Ordering::Relaxed);
        let n = filled(prod, cons).min(max);
        let out = (0..n).map(|i| mem.read(cons.wrapping_add(i))).collect();
        mem.consumer()
            .store(cons.wrapping_add(n), Ordering::Release);
        out
    }

    /// Produce like the kernel does into a ring we consume from; returns how many fit.
    pub(crate) fn give<T: Copy>(mem: &RingMem<T>, values: &[T]) -> usize {
        let prod = mem.producer().load(Ordering::Relaxed);
        let cons = mem.consumer().load(Ordering::Acquire);
        let n = (free(prod, cons, mem.size) as usize).min(values.len());
        for (i, v) in values[..n].iter().enumerate() {
            let index = prod.wrapping_add(i as u32);
            // SAFETY: slot < size; the consumer does not read past the producer index,
            // which is published after this write.
            unsafe { mem.entries.as_ptr().add(slot(index, mem.mask)).write(*v) };
        }
        mem.producer()
            .store(prod.wrapping_add(n as u32), Ordering::Release);
        n
    }

    /// Start both indices at `start`, to test wrap-around.
    pub(crate) fn set_indices<T: Copy>(mem: &RingMem<T>, start: u32) {
        mem.producer().store(start, Ordering::Relaxed);
        mem.consumer().store(start, Ordering::Relaxed);
    }

    /// Set or clear `XDP_RING_NEED_WAKEUP`.
    pub(crate) fn set_need_wakeup<T: Copy>(mem: &RingMem<T>, on: bool) {
        let v = if on { libc::XDP_RING_NEED_WAKEUP } else { 0 };
        mem.flags().store(v, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_arithmetic_wraps() {
        assert_eq!(filled(5, 5), 0);
        assert_eq!(filled(7, 5), 2);
        assert_eq!(filled(2, u32::MAX - 1), 4); // producer wrapped past zero
        assert_eq!(free(2, u32::MAX - 1, 8), 4);
        assert_eq!(free(u32::MAX, u32::MAX - 8, 8), 0);
        assert_eq!(free(3, u32::MAX - 4, 8), 0); // full across the wrap
        assert_eq!(free(0, 0, 8), 8);
        assert_eq!(slot(u32::MAX, 7), 7);
        assert_eq!(slot(u32::MAX.wrapping_add(1), 7), 0);
    }

    #[test]
    fn producer_ring_fills_publishes_and_wraps() {
        for start in [0, u32::MAX - 2] {
            let ring = ProdRing::new(RingMem::<u64>::on_heap(4));
            peer::set_indices(ring.mem(), start);
            let mut ring = ProdRing::new(ring.mem);
            assert_eq!(ring.free(1), 4);
            for v in 10..14 {
                ring.push(v);
            }
            assert_eq!(ring.free(1), 0);
            // Not published yet: the kernel sees nothing.
            assert!(peer::take(ring.mem(), 8).is_empty());
            ring.publish();
            assert_eq!(ring.outstanding(), 4);
            assert_eq!(peer::take(ring.mem(), 3), vec![10, 11, 12]);
            // The cached consumer is stale until we need more than it shows.
            assert_eq!(ring.free(3), 3);
            ring.push(14);
            ring.publish();
            assert_eq!(peer::take(ring.mem(), 8), vec![13, 14]);
            assert_eq!(ring.outstanding(), 0);
            assert_eq!(ring.free(4), 4);
        }
    }

    #[test]
    fn consumer_ring_reads_in_order_and_wraps() {
        for start in [0, u32::MAX - 1] {
            let ring = ConsRing::new(RingMem::<libc::xdp_desc>::on_heap(4));
            peer::set_indices(ring.mem(), start);
            let mut ring = ConsRing::new(ring.mem);
            assert_eq!(ring.available(64), 0);
            let d = |a| libc::xdp_desc {
                addr: a,
                len: a as u32,
                options: 0,
            };
            assert_eq!(peer::give(ring.mem(), &[d(1), d(2), d(3), d(4), d(5)]), 4);
            assert_eq!(ring.available(2), 2);
            assert_eq!((ring.peek(0).addr, ring.peek(1).addr), (1, 2));
            ring.release(2);
            // Two slots free again for the kernel.
            assert_eq!(peer::give(ring.mem(), &[d(5), d(6), d(7)]), 2);
            let n = ring.available(64);
            assert_eq!(n, 4);
            let got: Vec<u64> = (0..n).map(|i| ring.peek(i).addr).collect();
            assert_eq!(got, vec![3, 4, 5, 6]);
            ring.release(n);
            assert_eq!(ring.available(64), 0);
        }
    }

    #[test]
    fn need_wakeup_flag_is_read_from_shared_flags() {
        let ring = ProdRing::new(RingMem::<u64>::on_heap(2));
        assert!(!ring.needs_wakeup());
        peer::set_need_wakeup(ring.mem(), true);
        assert!(ring.needs_wakeup());
    }

    #[test]
    fn mapping_offsets_are_bounds_checked() {
        let map = || Mapping::anonymous(4096).unwrap();
        // Entries past the end of the mapping.
        assert!(RingMem::<u64>::from_mapping(map(), 0, 64, 128, 192, 512).is_none());
        // Misaligned producer word.
        assert!(RingMem::<u64>::from_mapping(map(), 2, 64, 128, 192, 8).is_none());
        // Not a power of two.
        assert!(RingMem::<u64>::from_mapping(map(), 0, 64, 128, 192, 6).is_none());
        assert!(RingMem::<u64>::from_mapping(map(), 0, 64, 128, 192, 8).is_some());
    }
}
