//! The fast path allocates nothing in the steady state: receiving in-order data, copying
//! it into the application's ring, posting the events, building and checksumming the
//! ACKs, and taking the application's doorbells back. A counting global allocator counts
//! every allocation this thread makes while the fast path polls (the frames are built and
//! the application is played outside the counted polls); warm-up rounds first let
//! whatever grows once (batch arrays, the transmit scratch) reach its size.
#![allow(unsafe_code)]

#[path = "../benches/support/replay.rs"]
mod replay;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use replay::{setup, BATCH};

/// Counts the allocations (and reallocations) of threads that set [`COUNTING`].
struct Counting;

thread_local! {
    /// Only this thread's allocations count, and only while the fast path polls: the
    /// test harness's other threads and the test's own set-up are not the fast path.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    /// This thread's counted allocations.
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    if COUNTING.try_with(Cell::get).unwrap_or(false) {
        let _ = ALLOCATIONS.try_with(|a| a.set(a.get() + 1));
    }
}

// SAFETY: every call is forwarded unchanged to the system allocator, which upholds
// GlobalAlloc's contract; the counting touches only const-initialised thread-local
// Cells (no allocation, no destructor), so it cannot recurse.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout (GlobalAlloc::alloc's contract).
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: as for alloc.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: `ptr` was allocated by System (through this allocator) with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` was allocated by System (through this allocator) with `layout`.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations made by the fast path over `rounds` rounds of `n` segments of `payload`
/// bytes to one flow, `per_burst` frames per receive burst, after `warm` rounds that are
/// not counted. Frames are built and the application played outside the counted polls.
fn allocations(payload: usize, per_burst: usize, warm: usize, rounds: usize) -> (u64, u64) {
    let mut b = setup(1);
    b.fp.io_mut().per_burst = per_burst;
    let n = BATCH * 16;
    let mut counted = 0;
    for round in 0..warm + rounds {
        b.load(n, payload, false);
        let on = round >= warm;
        COUNTING.with(|c| c.set(on));
        b.run(n);
        COUNTING.with(|c| c.set(false));
        // The application gives the receive space back (not counted: the test plays
        // it); the poll that takes those doorbells is the fast path's and counts.
        b.give_back();
        COUNTING.with(|c| c.set(on));
        b.poll_once();
        COUNTING.with(|c| c.set(false));
        if on {
            counted += n as u64;
        }
    }
    let acks = b.fp.io().tx_count;
    assert!(payload == 0 || acks > 0, "data segments must be acknowledged");
    (ALLOCATIONS.with(|a| a.replace(0)), counted)
}

#[test]
fn receive_and_ack_allocate_nothing_in_the_steady_state() {
    for (what, payload, per_burst) in [
        ("64-byte segments, bursts of 32, one ACK per burst", 64usize, BATCH),
        ("64-byte segments, one per poll, an ACK each", 64, 1),
        ("1448-byte segments, bursts of 32", 1448, BATCH),
        ("pure ACKs", 0, BATCH),
    ] {
        let (allocs, segments) = allocations(payload, per_burst, 4, 16);
        assert!(segments >= 8_000, "{what}: only {segments} segments counted");
        assert_eq!(allocs, 0, "{what}: the fast path allocated {allocs} times over {segments} segments");
    }
}

#[test]
fn the_counter_sees_an_allocation() {
    // The allocator really counts: an allocation while COUNTING is set is seen (the
    // counter is per thread, so this cannot disturb the test above).
    COUNTING.with(|c| c.set(true));
    let v: Vec<u8> = Vec::with_capacity(64);
    COUNTING.with(|c| c.set(false));
    std::hint::black_box(&v);
    assert!(ALLOCATIONS.with(Cell::get) >= 1);
}
