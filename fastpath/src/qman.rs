//! The queue manager: which flows may transmit next, and when.
//!
//! A flow that has data to send is *scheduled* once (the caller marks it with
//! `F_IN_TXQ`). Unpaced flows (no rate limit) wait on a round-robin [`ReadyQueue`];
//! paced flows (a rate set by congestion control) whose next virtual send time lies in
//! the future wait on a [`TimerWheel`] keyed by that time and move to the ready queue
//! when it comes. Every operation is O(1) (the wheel's expiry scans a bitmap of
//! non-empty slots, one word per 64 slots), nothing allocates after creation, and a
//! flow sends as many segments per turn as its rate credit and the burst limit allow.
//!
//! Pacing keeps the virtual send time `next_ns` exactly (ns), so the long-run rate is
//! the configured one regardless of the wheel's granularity or of how late the core
//! polls: a late turn sends the segments that became due meanwhile. Credit does not
//! accumulate while a flow is idle or blocked by its window: `next_ns` is never allowed
//! to fall more than [`MAX_LAG_NS`] behind the present.

/// A FIFO of flow indices with room for every flow of the core.
#[derive(Debug)]
pub struct ReadyQueue {
    ring: Vec<u32>,
    head: usize,
    len: usize,
}

impl ReadyQueue {
    /// Room for `capacity` flows.
    pub fn new(capacity: u32) -> Self {
        ReadyQueue {
            ring: vec![0; capacity.max(1) as usize],
            head: 0,
            len: 0,
        }
    }
    /// Queued flows.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True if empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Append a flow (callers keep each flow on the queue at most once, so it never
    /// overflows; an overflow would be a bug and is refused).
    pub fn push(&mut self, flow: u32) -> bool {
        if self.len == self.ring.len() {
            debug_assert!(false, "ready queue overflow");
            return false;
        }
        let i = (self.head + self.len) % self.ring.len();
        self.ring[i] = flow;
        self.len += 1;
        true
    }
    /// Take the next flow.
    pub fn pop(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let f = self.ring[self.head];
        self.head = (self.head + 1) % self.ring.len();
        self.len -= 1;
        Some(f)
    }
}

/// Slots of the timer wheel (a power of two).
pub const WHEEL_SLOTS: usize = 4096;
/// Slot width: 2^10 ns = 1.024 µs, finer than one full-size segment at 10 Gbit/s; the
/// wheel spans 4.2 ms. Flows due later wait in the last slot of the horizon and are
/// put back when it expires (once per 4 ms for a very slow flow).
pub const SLOT_SHIFT: u32 = 10;
/// How far a paced flow's virtual send time may lag behind the present (the largest
/// burst an idle or window-blocked flow may send at once when it resumes): 20 µs.
pub const MAX_LAG_NS: u64 = 20_000;

const NONE: u32 = u32::MAX;

/// A timer wheel of flow indices keyed by time in ns: intrusive singly-linked lists
/// per slot (the links live in a per-flow array) and a bitmap of non-empty slots.
#[derive(Debug)]
pub struct TimerWheel {
    heads: Vec<u32>,
    link: Vec<u32>,
    bits: Vec<u64>,
    /// First tick (ns >> SLOT_SHIFT) not yet expired.
    cursor: u64,
    len: usize,
}

impl TimerWheel {
    /// A wheel for flow indices `0..capacity`.
    pub fn new(capacity: u32) -> Self {
        TimerWheel {
            heads: vec![NONE; WHEEL_SLOTS],
            link: vec![NONE; capacity as usize],
            bits: vec![0; WHEEL_SLOTS / 64],
            cursor: 0,
            len: 0,
        }
    }
    /// Flows waiting.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True if no flow waits.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// Add `flow` (not already on the wheel: the caller keeps track) to expire at `at_ns`
    /// (or at the end of the horizon if that is later; or at once if in the past).
    pub fn insert(&mut self, flow: u32, at_ns: u64) {
        let Some(l) = self.link.get_mut(flow as usize) else {
            return;
        };
        let tick = (at_ns >> SLOT_SHIFT).clamp(self.cursor, self.cursor + WHEEL_SLOTS as u64 - 1);
        let slot = tick as usize & (WHEEL_SLOTS - 1);
        *l = self.heads[slot];
        self.heads[slot] = flow;
        self.bits[slot / 64] |= 1 << (slot % 64);
        self.len += 1;
    }
    /// The start (ns) of the earliest non-empty slot, if any flow waits.
    pub fn next_expiry_ns(&self) -> Option<u64> {
        if self.len == 0 {
            return None;
        }
        let start = self.cursor as usize & (WHEEL_SLOTS - 1);
        let mut d = 0;
        while d < WHEEL_SLOTS {
            let slot = (start + d) & (WHEEL_SLOTS - 1);
            let word = self.bits[slot / 64] >> (slot % 64);
            if word == 0 {
                d += 64 - slot % 64;
                continue;
            }
            d += word.trailing_zeros() as usize;
            break;
        }
        Some((self.cursor + d.min(WHEEL_SLOTS - 1) as u64) << SLOT_SHIFT)
    }
    /// Move every flow due at or before `now_ns` to `out` (calls `out` per flow).
    pub fn expire(&mut self, now_ns: u64, mut out: impl FnMut(u32)) {
        let now_tick = now_ns >> SLOT_SHIFT;
        if now_tick < self.cursor {
            return;
        }
        if self.len == 0 {
            self.cursor = now_tick + 1;
            return;
        }
        // Ticks to visit: cursor..=now_tick, at most one full turn.
        let span = (now_tick - self.cursor + 1).min(WHEEL_SLOTS as u64) as usize;
        let start = self.cursor as usize & (WHEEL_SLOTS - 1);
        let mut done = 0;
        while done < span && self.len > 0 {
            let slot = (start + done) & (WHEEL_SLOTS - 1);
            let word = self.bits[slot / 64] >> (slot % 64);
            if word == 0 {
                // Skip to the next word boundary (or the end of the span).
                done += 64 - slot % 64;
                continue;
            }
            let skip = word.trailing_zeros() as usize;
            if skip > 0 {
                done += skip;
                continue;
            }
            // Slot `slot` is non-empty and inside the span.
            let mut f = std::mem::replace(&mut self.heads[slot], NONE);
            self.bits[slot / 64] &= !(1 << (slot % 64));
            while f != NONE {
                let next = std::mem::replace(&mut self.link[f as usize], NONE);
                self.len -= 1;
                out(f);
                f = next;
            }
            done += 1;
        }
        self.cursor = now_tick + 1;
    }
}

/// Pacing state of one flow (a side table of the core, beside `FlowState`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Pace {
    /// Virtual time (ns) at which the next segment may leave.
    pub next_ns: u64,
    /// Rate limit in kbit/s of TCP payload; 0 = unpaced.
    pub rate_kbps: u32,
    /// Where the flow is queued: [`Q_NONE`], [`Q_READY`] or [`Q_WHEEL`].
    pub queued: u8,
}

/// Not queued.
pub const Q_NONE: u8 = 0;
/// On the ready queue.
pub const Q_READY: u8 = 1;
/// On the timer wheel.
pub const Q_WHEEL: u8 = 2;

impl Pace {
    /// Nanoseconds `bytes` of payload take at this flow's rate.
    #[inline]
    pub fn cost_ns(&self, bytes: u32) -> u64 {
        if self.rate_kbps == 0 {
            0
        } else {
            bytes as u64 * 8_000_000 / self.rate_kbps as u64
        }
    }
}

/// The per-core queue manager: ready queue, timer wheel and pacing table.
#[derive(Debug)]
pub struct QueueManager {
    /// Flows that may send now, served round-robin.
    pub ready: ReadyQueue,
    /// Paced flows waiting for their send time.
    pub wheel: TimerWheel,
    /// Pacing state per flow slot.
    pub pace: Vec<Pace>,
}

impl QueueManager {
    /// A queue manager for flow slots `0..capacity`.
    pub fn new(capacity: u32) -> Self {
        QueueManager {
            ready: ReadyQueue::new(capacity),
            wheel: TimerWheel::new(capacity),
            pace: vec![Pace::default(); capacity as usize],
        }
    }
    /// Put `flow` on the ready queue unless it is queued somewhere already (a stale
    /// entry of a removed flow in the same slot serves the new flow: the transmit loop
    /// checks the flow state of whatever it takes).
    pub fn make_ready(&mut self, flow: u32) {
        let Some(p) = self.pace.get_mut(flow as usize) else {
            return;
        };
        if p.queued == Q_NONE {
            p.queued = Q_READY;
            self.ready.push(flow);
        }
    }
    /// Park `flow` (just taken from the ready queue) on the wheel until `at_ns`.
    pub fn park(&mut self, flow: u32, at_ns: u64) {
        if let Some(p) = self.pace.get_mut(flow as usize) {
            p.queued = Q_WHEEL;
            self.wheel.insert(flow, at_ns);
        }
    }
    /// Put `flow` (just taken from the ready queue) back at its end.
    pub fn requeue(&mut self, flow: u32) {
        if let Some(p) = self.pace.get_mut(flow as usize) {
            p.queued = Q_READY;
            self.ready.push(flow);
        }
    }
    /// Take the next ready flow; it counts as not queued until put back.
    pub fn pop(&mut self) -> Option<u32> {
        let f = self.ready.pop()?;
        if let Some(p) = self.pace.get_mut(f as usize) {
            p.queued = Q_NONE;
        }
        Some(f)
    }
    /// Move paced flows whose time has come to the ready queue.
    pub fn expire(&mut self, now_ns: u64) {
        let QueueManager { ready, wheel, pace } = self;
        wheel.expire(now_ns, |f| {
            if let Some(p) = pace.get_mut(f as usize) {
                p.queued = Q_READY;
                ready.push(f);
            }
        });
    }
    /// True if nothing is queued anywhere.
    pub fn is_idle(&self) -> bool {
        self.ready.is_empty() && self.wheel.is_empty()
    }
    /// Set the rate of `flow` (kbit/s of payload, 0 = unpaced) from time `now_ns`.
    pub fn set_rate(&mut self, flow: u32, rate_kbps: u32, now_ns: u64) {
        if let Some(p) = self.pace.get_mut(flow as usize) {
            if p.rate_kbps == 0 && rate_kbps != 0 {
                p.next_ns = now_ns;
            }
            p.rate_kbps = rate_kbps;
        }
    }
    /// Forget the pacing state of a slot being (re)installed (its queue position stays:
    /// see [`QueueManager::make_ready`]).
    pub fn reset(&mut self, flow: u32) {
        if let Some(p) = self.pace.get_mut(flow as usize) {
            p.next_ns = 0;
            p.rate_kbps = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fifo() {
        let mut q = ReadyQueue::new(3);
        assert!(q.push(1) && q.push(2) && q.push(3));
        assert_eq!(q.pop(), Some(1));
        assert!(q.push(4));
        assert_eq!(
            (q.pop(), q.pop(), q.pop(), q.pop()),
            (Some(2), Some(3), Some(4), None)
        );
    }

    fn expired(w: &mut TimerWheel, now: u64) -> Vec<u32> {
        let mut v = Vec::new();
        w.expire(now, |f| v.push(f));
        v.sort();
        v
    }

    #[test]
    fn wheel_expires_in_time_order() {
        let mut w = TimerWheel::new(16);
        w.insert(1, 5_000);
        w.insert(2, 100_000);
        w.insert(3, 5_100);
        w.insert(4, 0);
        assert_eq!(w.next_expiry_ns(), Some(0));
        assert_eq!(expired(&mut w, 1_000), vec![4]);
        assert_eq!(w.next_expiry_ns(), Some(4 << SLOT_SHIFT), "5000 ns is in tick 4");
        assert_eq!(expired(&mut w, 4_000), Vec::<u32>::new());
        assert_eq!(expired(&mut w, 6_200), vec![1, 3]);
        assert_eq!(expired(&mut w, 99_000), Vec::<u32>::new());
        assert_eq!(expired(&mut w, 101_000), vec![2]);
        assert!(w.is_empty());
        // A past time expires at the next call; a time beyond the horizon expires at
        // the horizon's end (the caller re-parks it).
        w.insert(5, 0);
        assert_eq!(expired(&mut w, 102_500), vec![5]);
        let far = 102_500 + 1_000_000_000;
        w.insert(6, far);
        let horizon = (WHEEL_SLOTS as u64) << SLOT_SHIFT;
        assert_eq!(expired(&mut w, 102_500 + horizon - 3_000), Vec::<u32>::new());
        assert_eq!(expired(&mut w, 102_500 + horizon + 2_000), vec![6]);
    }

    #[test]
    fn wheel_survives_long_sleeps_and_many_flows() {
        let mut w = TimerWheel::new(1000);
        for f in 0..1000u32 {
            w.insert(f, f as u64 * 3_333);
        }
        // Jump far past everything: all expire once, none twice.
        let got = expired(&mut w, 50_000_000_000);
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert!(w.is_empty());
        assert_eq!(expired(&mut w, 60_000_000_000), Vec::<u32>::new());
    }

    #[test]
    fn queue_manager_never_queues_twice() {
        let mut q = QueueManager::new(4);
        q.make_ready(1);
        q.make_ready(1);
        assert_eq!(q.ready.len(), 1);
        assert_eq!(q.pop(), Some(1));
        q.park(1, 10_000);
        q.make_ready(1); // on the wheel: stays there
        assert_eq!(q.ready.len(), 0);
        q.expire(20_000);
        assert_eq!(q.pop(), Some(1));
        assert!(q.is_idle());
        q.make_ready(9); // out of range: ignored, no panic
    }

    #[test]
    fn pacing_cost() {
        let p = Pace {
            rate_kbps: 1_000_000,
            ..Pace::default()
        };
        assert_eq!(p.cost_ns(1250), 10_000, "1250 B at 1 Gbit/s take 10 µs");
        assert_eq!(Pace::default().cost_ns(1500), 0);
    }
}
