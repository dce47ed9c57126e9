//! The shared-memory descriptor queue against a peer that writes anything into the shared
//! words: our endpoint never touches memory outside the queue (AddressSanitizer watches the
//! allocation), never panics, and never claims more free entries than the capacity, nor a
//! fill above it (`occupancy`). While
//! the peer behaves (pops in order and publishes its true tail; pushes and publishes its true
//! head), descriptors cross in FIFO order, none lost, none invented.
//!
//! Two queues in one 64-byte-aligned allocation: `to_app`, where we are the producer (the
//! fast path posting events) and the peer consumes; `to_fp`, where we consume (doorbells)
//! and the peer produces.
#![no_main]
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::ptr::NonNull;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tas_proto::queue::{Occupancy, ShmQueue};
use tas_proto::shm::{queue_bytes, Desc, QueueHeader};

const ENTRIES: u32 = 16;

#[derive(Arbitrary, Debug)]
enum Action {
    /// We push a descriptor on `to_app` (tagged with a sequence number).
    Push,
    /// We publish `to_app`.
    Publish,
    /// The peer consumes up to n entries of `to_app` honestly and publishes its tail.
    PeerConsume(u8),
    /// The peer produces n descriptors on `to_fp` honestly and publishes its head.
    PeerProduce(u8),
    /// We pop from `to_fp`.
    Pop,
    /// We release `to_fp`.
    Release,
    /// We prepare to sleep on `to_fp`, or wake.
    PrepareSleep,
    Woke,
    /// We re-attach as producer of `to_app` from the shared indices.
    ResumeAsProducer,
    /// The peer writes any value into a shared index word: queue (0 = to_app, 1 = to_fp),
    /// word (0 head, 1 tail, 2 sleeping).
    Scribble { queue: bool, word: u8, value: u32 },
    /// The peer writes bytes into any descriptor slot of either queue.
    ScribbleDesc { queue: bool, slot: u8, bytes: [u8; 8] },
}

struct Region {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
    qb: usize,
}

impl Region {
    fn new() -> Region {
        let qb = queue_bytes(ENTRIES);
        let layout = std::alloc::Layout::from_size_align(2 * qb, 64).unwrap();
        // SAFETY: non-zero size, valid alignment.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(layout) }).unwrap();
        Region { ptr, layout, qb }
    }
    fn base(&self, queue: bool) -> NonNull<u8> {
        // SAFETY: both queues lie inside the allocation of 2 * qb bytes.
        unsafe { self.ptr.add(if queue { self.qb } else { 0 }) }
    }
    /// The peer's plain writes to a shared index word (single-threaded here).
    fn write_word(&self, queue: bool, word: u8, value: u32) {
        let off = 64 * usize::from(word % 3);
        // SAFETY: the word lies inside the queue header, inside the allocation; aligned.
        unsafe { self.base(queue).add(off).cast::<u32>().write_volatile(value) }
    }
    fn read_word(&self, queue: bool, word: u8) -> u32 {
        let off = 64 * usize::from(word % 3);
        // SAFETY: as in `write_word`.
        unsafe { self.base(queue).add(off).cast::<u32>().read_volatile() }
    }
    fn desc_ptr(&self, queue: bool, slot: u32) -> *mut Desc {
        let off = std::mem::size_of::<QueueHeader>() + (slot % ENTRIES) as usize * std::mem::size_of::<Desc>();
        // SAFETY: slot < ENTRIES: inside the queue, inside the allocation.
        unsafe { self.base(queue).add(off).cast::<Desc>().as_ptr() }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

fn tagged(seq: u64) -> Desc {
    Desc { kind: 16, aux: seq, ..Desc::default() }
}

fuzz_target!(|actions: Vec<Action>| {
    let region = Region::new();
    // SAFETY: each base points at queue_bytes(ENTRIES) bytes of the 64-aligned allocation,
    // which outlives both endpoints (dropped after them, declared before them); one
    // endpoint of ours per queue, the peer is simulated by plain writes.
    let mut producer = unsafe { ShmQueue::from_raw(region.base(false), ENTRIES) };
    // SAFETY: as above.
    let mut consumer = unsafe { ShmQueue::from_raw(region.base(true), ENTRIES) };
    producer.init();
    consumer.init();

    let mut honest = true;
    // to_app: what we pushed and published, not yet consumed by the peer; the peer's tail.
    let (mut pushed, mut published): (VecDeque<u64>, usize) = (VecDeque::new(), 0);
    let (mut next_seq, mut peer_tail) = (0u64, 0u32);
    // to_fp: what the peer produced and we have not popped; the peer's head.
    let (mut incoming, mut peer_head, mut peer_seq) = (VecDeque::new(), 0u32, 1_000_000u64);

    for a in actions.iter().take(512) {
        match *a {
            Action::Push => {
                let free = producer.free();
                if let Ok(f) = free {
                    assert!(f <= ENTRIES, "free() = {f} > capacity");
                }
                let ok = producer.push(tagged(next_seq));
                if honest {
                    assert_eq!(ok, pushed.len() < ENTRIES as usize, "push vs. {} queued", pushed.len());
                }
                if ok {
                    pushed.push_back(next_seq);
                    next_seq += 1;
                }
            }
            Action::Publish => {
                let _ = producer.publish();
                published = pushed.len();
            }
            Action::PeerConsume(n) => {
                if !honest {
                    continue;
                }
                let head = region.read_word(false, 0);
                let available = head.wrapping_sub(peer_tail);
                assert_eq!(available as usize, published, "published head and what we published disagree");
                for _ in 0..u32::from(n).min(available) {
                    // SAFETY: desc_ptr is inside the queue; a plain read of what we wrote.
                    let d = unsafe { region.desc_ptr(false, peer_tail).read_volatile() };
                    let want = pushed.pop_front().expect("published entries exist");
                    assert_eq!(d, tagged(want), "descriptor crossed the queue changed or out of order");
                    published -= 1;
                    peer_tail = peer_tail.wrapping_add(1);
                }
                region.write_word(false, 1, peer_tail);
            }
            Action::PeerProduce(n) => {
                if !honest {
                    continue;
                }
                let tail = region.read_word(true, 1);
                let room = ENTRIES - peer_head.wrapping_sub(tail).min(ENTRIES);
                for _ in 0..u32::from(n).min(room) {
                    // SAFETY: as above; the slot is free (the consumer released it).
                    unsafe { region.desc_ptr(true, peer_head).write_volatile(tagged(peer_seq)) };
                    incoming.push_back(peer_seq);
                    peer_seq += 1;
                    peer_head = peer_head.wrapping_add(1);
                }
                region.write_word(true, 0, peer_head);
            }
            Action::Pop => match consumer.pop() {
                Ok(Some(d)) => {
                    if honest {
                        let want = incoming.pop_front().expect("popped a descriptor the peer never produced");
                        assert_eq!(d, tagged(want));
                    }
                }
                Ok(None) => {
                    if honest {
                        assert!(incoming.is_empty(), "{} produced descriptors not seen", incoming.len());
                    }
                }
                Err(_) => assert!(!honest, "an honest peer's queue reported corrupt"),
            },
            Action::Release => consumer.release(),
            Action::PrepareSleep => {
                let _ = consumer.prepare_sleep();
            }
            Action::Woke => consumer.woke(),
            Action::ResumeAsProducer => {
                producer.resume_as_producer();
                // Unpublished pushes are forgotten by a resuming producer.
                pushed.truncate(published);
            }
            Action::Scribble { queue, word, value } => {
                honest = false;
                region.write_word(queue, word, value);
            }
            Action::ScribbleDesc { queue, slot, bytes } => {
                honest = false;
                let p = region.desc_ptr(queue, u32::from(slot)).cast::<u8>();
                // SAFETY: the 8 bytes lie inside one 32-byte descriptor slot.
                unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), p, bytes.len()) };
            }
        }
        assert!(producer.capacity() == ENTRIES && consumer.capacity() == ENTRIES);
        // The exact fill, read from either endpoint: never above the capacity, whatever the
        // peer wrote (an impossible pair reads as full and flagged); with an honest peer,
        // `to_app` holds exactly what we published and the peer has not consumed.
        for q in [&producer, &consumer] {
            let o = q.occupancy();
            assert!(o.used <= ENTRIES && o.capacity == ENTRIES, "{o:?}");
            assert!(!o.corrupt || o.used == ENTRIES, "{o:?}");
        }
        if honest {
            assert_eq!(
                producer.occupancy(),
                Occupancy { used: published as u32, capacity: ENTRIES, corrupt: false },
                "to_app's fill vs. published and not consumed"
            );
            assert!(!consumer.occupancy().corrupt, "an honest peer's to_fp reads corrupt");
        }
    }
});
