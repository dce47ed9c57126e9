//! The single-producer single-consumer descriptor queue that lives in shared memory.
//!
//! Both sides use this one implementation so they cannot disagree about index
//! arithmetic. Each endpoint keeps its *own* index privately and only reads the other
//! side's index from shared memory; an index read from memory the other process can
//! write is validated (`head - tail <= capacity`) before it is used, and every entry
//! index is masked, so a hostile peer can make a queue look empty or corrupt, never make
//! this side touch memory outside the queue.
#![allow(unsafe_code)]

use core::ptr::{self, NonNull};
use core::sync::atomic::{fence, AtomicU32, Ordering};

use crate::shm::{Desc, QueueHeader};

/// The other side published an impossible index; the queue is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Corrupt;

/// A queue's fill as both sides published it (see [`ShmQueue::occupancy`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Occupancy {
    /// Descriptors published by the producer and not yet released by the consumer,
    /// clamped to `capacity`.
    pub used: u32,
    /// Capacity in descriptors.
    pub capacity: u32,
    /// The published indices are impossible (`head - tail` beyond the capacity, e.g. a
    /// tail ahead of the head): `used` shows `capacity` and the queue is not to be trusted.
    pub corrupt: bool,
}

impl Occupancy {
    /// The fill of a queue of `capacity` entries whose producer published `head` and whose
    /// consumer published `tail` (free-running counters, so wrap-around is the normal case).
    /// Never panics, whatever the values: an impossible pair is clamped and flagged.
    pub fn from_indices(head: u32, tail: u32, capacity: u32) -> Occupancy {
        let used = head.wrapping_sub(tail);
        if used > capacity {
            Occupancy { used: capacity, capacity, corrupt: true }
        } else {
            Occupancy { used, capacity, corrupt: false }
        }
    }
}

/// One endpoint (producer or consumer, by use) of a queue in a shared region.
#[derive(Debug)]
pub struct ShmQueue {
    hdr: NonNull<QueueHeader>,
    entries: NonNull<Desc>,
    mask: u32,
    /// Producer: next index to write. Consumer: next index to read.
    local: u32,
    /// Producer: last seen consumer tail. Consumer: last seen producer head.
    seen: u32,
    /// Producer: entries written but not yet published.
    unpublished: u32,
}

// SAFETY: the queue is a handle to memory that outlives it (the creator of the handle
// guarantees it, see `from_raw`); it is used by one thread at a time.
unsafe impl Send for ShmQueue {}

impl ShmQueue {
    /// Make an endpoint over the queue at `base` with `entries` descriptors.
    ///
    /// # Safety
    /// `base` must point to `crate::shm::queue_bytes(entries)` bytes of readable and
    /// writable memory, 64-byte aligned, that stays mapped for the life of the returned
    /// value; `entries` must be a power of two. At most one producer and one consumer
    /// endpoint may exist for one queue; any number of further handles may exist if they
    /// call nothing but [`ShmQueue::occupancy`] and [`ShmQueue::capacity`] (onlookers, such
    /// as the slow path reporting the fast path's queues).
    pub unsafe fn from_raw(base: NonNull<u8>, entries: u32) -> Self {
        debug_assert!(entries.is_power_of_two());
        debug_assert_eq!(base.as_ptr() as usize % 64, 0);
        let hdr = base.cast::<QueueHeader>();
        // SAFETY: the entries follow the header inside the region the caller vouched for.
        let entries_ptr = unsafe { base.add(core::mem::size_of::<QueueHeader>()) }.cast::<Desc>();
        ShmQueue { hdr, entries: entries_ptr, mask: entries - 1, local: 0, seen: 0, unpublished: 0 }
    }

    /// Zero the queue's indices (only its creator, before handing it out).
    pub fn init(&mut self) {
        self.head().store(0, Ordering::Relaxed);
        self.tail().store(0, Ordering::Relaxed);
        self.sleeping().store(0, Ordering::Relaxed);
        self.local = 0;
        self.seen = 0;
        self.unpublished = 0;
    }

    /// Attach to a queue that is already in use (e.g. after a restart of one side):
    /// the producer resumes from the published head, the consumer from the tail.
    pub fn resume_as_producer(&mut self) {
        self.local = self.head().load(Ordering::Acquire);
        self.seen = self.tail().load(Ordering::Acquire);
    }

    fn head(&self) -> &AtomicU32 {
        // SAFETY: hdr is valid for the life of self (from_raw's contract); AtomicU32 has
        // the layout of u32 and shared memory is accessed only atomically here.
        unsafe { &(*self.hdr.as_ptr()).head.value }
    }
    fn tail(&self) -> &AtomicU32 {
        // SAFETY: as in `head`.
        unsafe { &(*self.hdr.as_ptr()).tail.value }
    }
    fn sleeping(&self) -> &AtomicU32 {
        // SAFETY: as in `head`.
        unsafe { &(*self.hdr.as_ptr()).consumer_sleeping.value }
    }

    /// Capacity in descriptors.
    pub fn capacity(&self) -> u32 {
        self.mask + 1
    }

    /// The exact fill, from either side or from an onlooker: published head minus published
    /// tail, both read from the shared header (Acquire loads, nothing written, so neither the
    /// producer nor the consumer is disturbed and neither endpoint's cached view changes).
    /// Entries pushed but not yet published are not counted; entries popped but not yet
    /// released are (the consumer still owns their slots).
    ///
    /// The two indices move independently, so one pair of loads may straddle a change. The
    /// tail is read before and after the head; when both reads agree, the pair was the
    /// queue's state at the moment the head was read. A queue so busy that the tail never
    /// holds still for five tries is reported from the last head and the *later* tail, which
    /// can undercount by what moved meanwhile but is never flagged corrupt for it.
    pub fn occupancy(&self) -> Occupancy {
        let cap = self.capacity();
        let mut tail = self.tail().load(Ordering::Acquire);
        for _ in 0..4 {
            let head = self.head().load(Ordering::Acquire);
            let again = self.tail().load(Ordering::Acquire);
            if again == tail {
                return Occupancy::from_indices(head, tail, cap);
            }
            tail = again;
        }
        let head = self.head().load(Ordering::Acquire);
        let later = self.tail().load(Ordering::Acquire);
        if later == tail {
            return Occupancy::from_indices(head, tail, cap);
        }
        // Moving: head(t1) - tail(t2) with t2 > t1 is at most the true fill at t1; if the
        // tail overtook that head the consumer has taken everything we saw.
        let used = head.wrapping_sub(later);
        Occupancy { used: if used > cap { 0 } else { used }, capacity: cap, corrupt: false }
    }

    // ---- producer side ------------------------------------------------------------------

    /// Free entries as far as the producer knows (refreshes the consumer's tail when it
    /// looks full). Err if the consumer published an impossible tail.
    pub fn free(&mut self) -> Result<u32, Corrupt> {
        let cap = self.capacity();
        if self.local.wrapping_sub(self.seen) >= cap {
            let t = self.tail().load(Ordering::Acquire);
            if self.local.wrapping_sub(t) > cap {
                return Err(Corrupt);
            }
            self.seen = t;
        }
        Ok(cap - self.local.wrapping_sub(self.seen))
    }

    /// True if at least `n` entries are free. Unlike [`ShmQueue::free`], which re-reads the
    /// consumer's tail only when the queue looks completely full (so its count is a lower
    /// bound that can stay stale), this re-reads the tail whenever the cached view shows
    /// fewer than `n` free entries: use it before pushing a batch of `n`.
    pub fn ensure_free(&mut self, n: u32) -> Result<bool, Corrupt> {
        let cap = self.capacity();
        if cap - self.local.wrapping_sub(self.seen).min(cap) < n {
            let t = self.tail().load(Ordering::Acquire);
            if self.local.wrapping_sub(t) > cap {
                return Err(Corrupt);
            }
            self.seen = t;
        }
        Ok(cap - self.local.wrapping_sub(self.seen) >= n)
    }

    /// Write one descriptor; it becomes visible at the next [`ShmQueue::publish`].
    /// Returns false if the queue is full (or corrupt).
    pub fn push(&mut self, d: Desc) -> bool {
        match self.free() {
            Ok(n) if n > 0 => {}
            _ => return false,
        }
        let idx = (self.local & self.mask) as usize;
        // SAFETY: idx <= mask < entries, inside the queue (from_raw's contract). A volatile
        // write because the other process reads this memory.
        unsafe { ptr::write_volatile(self.entries.as_ptr().add(idx), d) };
        self.local = self.local.wrapping_add(1);
        self.unpublished += 1;
        true
    }

    /// Publish every pushed descriptor (one Release store). Returns true if the consumer
    /// announced it is sleeping, in which case the caller must wake it.
    pub fn publish(&mut self) -> bool {
        if self.unpublished == 0 {
            return false;
        }
        self.unpublished = 0;
        self.head().store(self.local, Ordering::Release);
        // Pairs with the consumer's fence in `prepare_sleep`: either it sees our head in
        // its re-check, or we see its flag here.
        fence(Ordering::SeqCst);
        self.sleeping().load(Ordering::Relaxed) != 0
    }

    // ---- consumer side ------------------------------------------------------------------

    /// Take the next descriptor, if any. Err if the producer published an impossible head.
    pub fn pop(&mut self) -> Result<Option<Desc>, Corrupt> {
        if self.local == self.seen {
            let h = self.head().load(Ordering::Acquire);
            if h.wrapping_sub(self.local) > self.capacity() {
                return Err(Corrupt);
            }
            self.seen = h;
            if self.local == self.seen {
                return Ok(None);
            }
        }
        let idx = (self.local & self.mask) as usize;
        // SAFETY: idx <= mask, inside the queue; read by value with a volatile read so no
        // reference into memory the other side may change is ever held.
        let d = unsafe { ptr::read_volatile(self.entries.as_ptr().add(idx)) };
        self.local = self.local.wrapping_add(1);
        Ok(Some(d))
    }

    /// Hand consumed entries back to the producer (one Release store).
    pub fn release(&mut self) {
        self.tail().store(self.local, Ordering::Release);
    }

    /// True if the producer published entries this consumer has not taken.
    pub fn has_pending(&self) -> bool {
        self.head().load(Ordering::Acquire) != self.local
    }

    /// Consumer: announce sleeping, then re-check. Returns true if the queue is still
    /// empty and it is safe to block; false (flag cleared) if work arrived meanwhile.
    pub fn prepare_sleep(&mut self) -> bool {
        self.sleeping().store(1, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if self.has_pending() {
            self.sleeping().store(0, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Consumer: clear the sleeping flag after waking.
    pub fn woke(&mut self) {
        self.sleeping().store(0, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::queue_bytes;

    #[repr(C, align(64))]
    struct Mem([u8; 4096]);

    fn pair(mem: &mut Mem, n: u32) -> (ShmQueue, ShmQueue) {
        assert!(queue_bytes(n) <= 4096);
        let base = NonNull::new(mem.0.as_mut_ptr()).unwrap();
        // SAFETY: mem is 4096 aligned-64 bytes living for the test.
        let mut p = unsafe { ShmQueue::from_raw(base, n) };
        p.init();
        // SAFETY: as above.
        let c = unsafe { ShmQueue::from_raw(base, n) };
        (p, c)
    }

    #[test]
    fn fifo_wraparound_and_full() {
        let mut mem = Mem([0; 4096]);
        let (mut p, mut c) = pair(&mut mem, 16);
        for round in 0..10u32 {
            for i in 0..16 {
                assert!(p.push(Desc { conn: round * 100 + i, ..Desc::default() }));
            }
            assert!(!p.push(Desc::default()), "queue must report full");
            assert_eq!(c.pop(), Ok(None), "nothing visible before publish");
            assert!(!p.publish());
            for i in 0..16 {
                assert_eq!(c.pop().unwrap().unwrap().conn, round * 100 + i);
            }
            assert_eq!(c.pop(), Ok(None));
            c.release();
        }
    }

    #[test]
    fn ensure_free_refreshes_a_stale_tail() {
        let mut mem = Mem([0; 4096]);
        let (mut p, mut c) = pair(&mut mem, 16);
        for _ in 0..14 {
            assert!(p.push(Desc::default()));
        }
        p.publish();
        while c.pop().unwrap().is_some() {}
        c.release();
        // free() answers from its cached view (2 free) ...
        assert_eq!(p.free(), Ok(2));
        // ... ensure_free() re-reads the tail when that view is not enough.
        assert_eq!(p.ensure_free(8), Ok(true));
        assert_eq!(p.free(), Ok(16));
        for _ in 0..16 {
            assert!(p.push(Desc::default()));
        }
        assert_eq!(p.ensure_free(1), Ok(false));
    }

    #[test]
    fn occupancy_from_indices_wraps_and_clamps() {
        let o = |h, t| Occupancy::from_indices(h, t, 16);
        assert_eq!(o(0, 0), Occupancy { used: 0, capacity: 16, corrupt: false });
        assert_eq!(o(16, 0), Occupancy { used: 16, capacity: 16, corrupt: false });
        assert_eq!(o(5, 2), Occupancy { used: 3, capacity: 16, corrupt: false });
        // Free-running counters across 2^32: head wrapped, tail not yet.
        assert_eq!(o(3, u32::MAX - 4), Occupancy { used: 8, capacity: 16, corrupt: false });
        assert_eq!(o(u32::MAX, u32::MAX), Occupancy { used: 0, capacity: 16, corrupt: false });
        // Hostile: a tail beyond the head, a head far beyond the tail.
        assert_eq!(o(10, 11), Occupancy { used: 16, capacity: 16, corrupt: true });
        assert_eq!(o(0, u32::MAX / 2), Occupancy { used: 16, capacity: 16, corrupt: true });
        assert_eq!(o(17, 0), Occupancy { used: 16, capacity: 16, corrupt: true });
        assert_eq!(o(u32::MAX, 0), Occupancy { used: 16, capacity: 16, corrupt: true });
    }

    #[test]
    fn occupancy_is_exact_and_disturbs_nobody() {
        let mut mem = Mem([0; 4096]);
        let (mut p, mut c) = pair(&mut mem, 16);
        let base = NonNull::new(mem.0.as_mut_ptr()).unwrap();
        // SAFETY: the onlooker only calls occupancy() (from_raw's contract).
        let look = unsafe { ShmQueue::from_raw(base, 16) };
        let fill = |q: &ShmQueue| (q.occupancy().used, q.occupancy().corrupt);
        // Start the counters near 2^32 so the test crosses the wrap.
        p.head().store(u32::MAX - 6, Ordering::Relaxed);
        p.tail().store(u32::MAX - 6, Ordering::Relaxed);
        p.resume_as_producer();
        c.local = u32::MAX - 6;
        c.seen = u32::MAX - 6;
        for i in 0..5 {
            assert!(p.push(Desc { conn: i, ..Desc::default() }));
        }
        assert_eq!(fill(&look), (0, false), "unpublished entries are not counted");
        p.publish();
        assert_eq!(fill(&look), (5, false));
        assert_eq!(fill(&p), (5, false));
        assert_eq!(fill(&c), (5, false));
        // Popped but not released: still the consumer's, still counted.
        for _ in 0..3 {
            c.pop().unwrap().unwrap();
        }
        assert_eq!(fill(&look), (5, false));
        c.release();
        assert_eq!(fill(&look), (2, false));
        assert_eq!(fill(&p), (2, false));
        // free() answers from the producer's cached tail (refreshed only when the queue looks
        // full), which still counts the 3 released entries; occupancy() did not refresh it.
        assert_eq!(p.free(), Ok(11));
        for i in 0..12 {
            assert!(p.push(Desc { conn: 10 + i, ..Desc::default() }));
        }
        p.publish();
        assert_eq!(fill(&look), (14, false), "crossed 2^32 exactly");
        while c.pop().unwrap().is_some() {}
        c.release();
        assert_eq!(fill(&look), (0, false));
        assert_eq!(c.pop(), Ok(None));
        assert!(p.push(Desc::default()), "producer still works after being looked at");
        // A hostile consumer publishes a tail beyond the head: clamped and flagged.
        p.tail().store(p.head().load(Ordering::Relaxed).wrapping_add(3), Ordering::Release);
        assert_eq!(look.occupancy(), Occupancy { used: 16, capacity: 16, corrupt: true });
        p.tail().store(p.head().load(Ordering::Relaxed).wrapping_sub(1000), Ordering::Release);
        assert_eq!(look.occupancy(), Occupancy { used: 16, capacity: 16, corrupt: true });
    }

    #[test]
    fn corrupt_indices_detected() {
        let mut mem = Mem([0; 4096]);
        let (mut p, mut c) = pair(&mut mem, 16);
        p.head().store(1000, Ordering::Release);
        assert_eq!(c.pop(), Err(Corrupt));
        p.head().store(0, Ordering::Release);
        for _ in 0..16 {
            p.push(Desc::default());
        }
        p.tail().store(500, Ordering::Release);
        assert_eq!(p.free(), Err(Corrupt));
    }

    #[test]
    fn sleep_protocol() {
        let mut mem = Mem([0; 4096]);
        let (mut p, mut c) = pair(&mut mem, 16);
        assert!(c.prepare_sleep());
        p.push(Desc::default());
        assert!(p.publish(), "producer must see the sleeping consumer");
        c.woke();
        p.push(Desc::default());
        assert!(!p.publish());
        // A consumer that announces sleep with work pending must not sleep.
        assert!(!c.prepare_sleep());
    }

    #[test]
    fn threaded_transfer() {
        let mut mem = Box::new(Mem([0; 4096]));
        let (mut p, mut c) = pair(&mut mem, 64);
        let n = 200_000u32;
        std::thread::scope(|s| {
            s.spawn(move || {
                let mut i = 0;
                while i < n {
                    if p.push(Desc { conn: i, ..Desc::default() }) {
                        i += 1;
                    } else {
                        p.publish();
                        std::hint::spin_loop();
                    }
                }
                p.publish();
            });
            let mut want = 0;
            while want < n {
                match c.pop().unwrap() {
                    Some(d) => {
                        assert_eq!(d.conn, want);
                        want += 1;
                    }
                    None => {
                        c.release();
                        std::hint::spin_loop()
                    }
                }
            }
        });
    }
}
