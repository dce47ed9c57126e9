//! An in-memory Ethernet link between two [`MemPort`]s, with seeded loss, duplication,
//! reordering and delay on a virtual clock.
//!
//! Used by the simulated-network tests (two whole stacks, or a stack and a scripted
//! peer) and by the micro-benchmarks. Deterministic: the same seed and the same sequence
//! of calls give the same deliveries. Frames are copied on transmit (the link plays the
//! wire); buffers are recycled, so a steady state allocates nothing.

use std::collections::VecDeque;
use std::io;
use std::os::fd::RawFd;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::{PacketIo, RxFrame, TxFrame, MAX_FRAME};
use crate::time::{Clock, Instant, SimClock};

/// Impairments applied to one direction of the link.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairments {
    /// Probability that a frame is dropped.
    pub loss: f64,
    /// Probability that a frame is delivered twice.
    pub duplicate: f64,
    /// Probability that a frame is held back by `reorder_delay` (so later frames overtake it).
    pub reorder: f64,
    /// Extra delay of a reordered frame.
    pub reorder_delay: Duration,
    /// One-way propagation delay.
    pub delay: Duration,
    /// Serialisation rate in bits per second (0 = infinite).
    pub rate_bps: u64,
    /// Frames that may wait in the link (beyond this, tail drop).
    pub queue_limit: usize,
    /// Bottleneck buffer in bytes: a frame that would find more than this waiting for
    /// the serialiser is dropped (0 = unbounded). Only with `rate_bps`.
    pub queue_bytes: u64,
    /// ECN marking threshold K in bytes: an ECN-capable frame that finds more than this
    /// waiting is marked CE, as a DCTCP switch does (0 = no marking). Only with `rate_bps`.
    pub ecn_threshold_bytes: u64,
}

impl Default for Impairments {
    fn default() -> Self {
        Impairments {
            loss: 0.0,
            duplicate: 0.0,
            reorder: 0.0,
            reorder_delay: Duration::from_micros(200),
            delay: Duration::from_micros(10),
            rate_bps: 0,
            queue_limit: 1 << 16,
            queue_bytes: 0,
            ecn_threshold_bytes: 0,
        }
    }
}

/// Counters of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DirStats {
    /// Frames handed to the link.
    pub sent: u64,
    /// Frames delivered to the receiver.
    pub delivered: u64,
    /// Frames dropped by the loss model.
    pub lost: u64,
    /// Frames dropped because the queue was full.
    pub overflow: u64,
    /// Extra copies made by the duplication model.
    pub duplicated: u64,
    /// Frames held back for reordering.
    pub reordered: u64,
    /// Frames marked CE by the bottleneck.
    pub ce_marked: u64,
    /// Frames dropped because the bottleneck buffer was full.
    pub queue_drops: u64,
    /// Frames dropped because they were longer than [`MAX_FRAME`] (a 1500-byte MTU), as a
    /// veth or NIC drops them.
    pub oversize: u64,
}

/// Bucket width of the bottleneck queue-length histogram, bytes.
pub const QUEUE_HIST_BUCKET: u64 = 1_000;
const QUEUE_HIST_BUCKETS: usize = 10_000;

#[derive(Debug)]
struct InFlight {
    at: Instant,
    buf: Vec<u8>,
}

#[derive(Debug)]
struct Direction {
    imp: Impairments,
    rng: StdRng,
    /// Ordered by delivery time, ties in sending order; frames are inserted in place.
    queue: VecDeque<InFlight>,
    /// When the serialiser is free again (rate model).
    busy_until: Instant,
    stats: DirStats,
    /// If set, a filter that may drop frames (scripted tests); returns true to keep.
    filter: Option<fn(&[u8]) -> bool>,
    /// Bottleneck queue length (bytes waiting) seen by each arriving frame, in
    /// `QUEUE_HIST_BUCKET` buckets (allocated on first use).
    qhist: Vec<u64>,
}

impl Direction {
    fn new(imp: Impairments, seed: u64) -> Self {
        Direction {
            imp,
            rng: StdRng::seed_from_u64(seed),
            queue: VecDeque::new(),
            busy_until: Instant::ZERO,
            stats: DirStats::default(),
            filter: None,
            qhist: Vec::new(),
        }
    }

    fn enqueue(&mut self, now: Instant, buf: Vec<u8>, pool: &mut Vec<Vec<u8>>) {
        self.stats.sent += 1;
        if let Some(f) = self.filter {
            if !f(&buf) {
                self.stats.lost += 1;
                pool.push(buf);
                return;
            }
        }
        if self.imp.loss > 0.0 && self.rng.gen_bool(self.imp.loss) {
            self.stats.lost += 1;
            pool.push(buf);
            return;
        }
        if self.queue.len() >= self.imp.queue_limit {
            self.stats.overflow += 1;
            pool.push(buf);
            return;
        }
        let mut at = now;
        let mut buf = buf;
        if self.imp.rate_bps > 0 {
            // Bytes waiting for the serialiser when this frame arrives.
            let backlog_ns = self.busy_until.as_nanos().saturating_sub(now.as_nanos());
            let backlog = (backlog_ns as u128 * self.imp.rate_bps as u128 / 8_000_000_000) as u64;
            if self.qhist.is_empty() {
                self.qhist = vec![0; QUEUE_HIST_BUCKETS];
            }
            let b = ((backlog / QUEUE_HIST_BUCKET) as usize).min(QUEUE_HIST_BUCKETS - 1);
            self.qhist[b] += 1;
            if self.imp.queue_bytes > 0 && backlog + buf.len() as u64 > self.imp.queue_bytes {
                self.stats.queue_drops += 1;
                pool.push(buf);
                return;
            }
            if self.imp.ecn_threshold_bytes > 0
                && backlog > self.imp.ecn_threshold_bytes
                && mark_ce(&mut buf)
            {
                self.stats.ce_marked += 1;
            }
        }
        if self.imp.rate_bps > 0 {
            let ser =
                Duration::from_nanos(buf.len() as u64 * 8 * 1_000_000_000 / self.imp.rate_bps);
            let start = self.busy_until.max(now);
            self.busy_until = start + ser;
            at = self.busy_until;
        }
        at = at + self.imp.delay;
        if self.imp.reorder > 0.0 && self.rng.gen_bool(self.imp.reorder) {
            self.stats.reordered += 1;
            at = at + self.imp.reorder_delay;
        }
        if self.imp.duplicate > 0.0 && self.rng.gen_bool(self.imp.duplicate) {
            self.stats.duplicated += 1;
            let mut copy = pool.pop().unwrap_or_default();
            copy.clear();
            copy.extend_from_slice(&buf);
            self.insert(at, copy);
        }
        self.insert(at, buf);
    }

    /// Percentiles `ps` (0..=100) of the bottleneck queue length seen by arriving
    /// frames, in bytes (bucket upper bounds; 0 if nothing was recorded).
    fn queue_percentiles(&self, ps: &[f64]) -> Vec<u64> {
        let total: u64 = self.qhist.iter().sum();
        ps.iter()
            .map(|p| {
                if total == 0 {
                    return 0;
                }
                let want = ((p / 100.0) * total as f64).ceil().max(1.0) as u64;
                let mut acc = 0;
                for (i, n) in self.qhist.iter().enumerate() {
                    acc += n;
                    if acc >= want {
                        return i as u64 * QUEUE_HIST_BUCKET;
                    }
                }
                (QUEUE_HIST_BUCKETS as u64 - 1) * QUEUE_HIST_BUCKET
            })
            .collect()
    }

    fn insert(&mut self, at: Instant, buf: Vec<u8>) {
        let item = InFlight { at, buf };
        // Most frames arrive in order: search from the back.
        let mut pos = self.queue.len();
        while pos > 0 && self.queue[pos - 1].at > at {
            pos -= 1;
        }
        self.queue.insert(pos, item);
    }
}

/// Mark an IPv4 frame CE if it is ECN-capable (ECT(0) or ECT(1)), fixing the header
/// checksum. False if the frame is not IPv4 or not ECN-capable.
fn mark_ce(frame: &mut [u8]) -> bool {
    if frame.len() < 34 || frame[12] != 0x08 || frame[13] != 0x00 {
        return false;
    }
    let ihl = (frame[14] & 0x0f) as usize * 4;
    if ihl < 20 || frame.len() < 14 + ihl || frame[15] & 0x03 == 0 {
        return false;
    }
    frame[15] |= 0x03;
    frame[24] = 0;
    frame[25] = 0;
    let mut sum = 0u32;
    for w in frame[14..14 + ihl].chunks(2) {
        sum += u16::from_be_bytes([w[0], *w.get(1).unwrap_or(&0)]) as u32;
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    let c = !(sum as u16);
    frame[24..26].copy_from_slice(&c.to_be_bytes());
    true
}

#[derive(Debug)]
struct Shared {
    dirs: [Direction; 2],
    pool: Vec<Vec<u8>>,
}

/// One end of an in-memory link. Implements [`PacketIo`].
#[derive(Debug)]
pub struct MemPort {
    shared: Arc<Mutex<Shared>>,
    /// Index of the direction this port receives from.
    rx_dir: usize,
    clock: SimClock,
    rx_slots: Vec<Vec<u8>>,
    rx_free: Vec<u32>,
    tx_slots: Vec<Vec<u8>>,
    tx_free: Vec<u32>,
}

/// Constructor for a connected pair of ports.
#[derive(Debug)]
pub struct MemLink;

/// Frames a port may hold at once, in each direction.
const PORT_FRAMES: usize = 512;

impl MemLink {
    /// Two ports joined by a link with impairments `a_to_b` and `b_to_a`, seeded by `seed`.
    pub fn pair(
        clock: &SimClock,
        a_to_b: Impairments,
        b_to_a: Impairments,
        seed: u64,
    ) -> (MemPort, MemPort) {
        let shared = Arc::new(Mutex::new(Shared {
            dirs: [
                Direction::new(a_to_b, seed),
                Direction::new(b_to_a, seed ^ 0x5eed_5eed),
            ],
            pool: Vec::new(),
        }));
        let port = |rx_dir| MemPort {
            shared: shared.clone(),
            rx_dir,
            clock: clock.clone(),
            rx_slots: (0..PORT_FRAMES)
                .map(|_| Vec::with_capacity(MAX_FRAME))
                .collect(),
            rx_free: (0..PORT_FRAMES as u32).rev().collect(),
            tx_slots: (0..PORT_FRAMES).map(|_| vec![0u8; 2048]).collect(),
            tx_free: (0..PORT_FRAMES as u32).rev().collect(),
        };
        // Port A receives what B sends (direction 1) and vice versa.
        (port(1), port(0))
    }
}

impl MemPort {
    fn tx_dir(&self) -> usize {
        1 - self.rx_dir
    }
    /// Counters of the direction this port sends into.
    pub fn tx_stats(&self) -> DirStats {
        self.shared.lock().expect("link lock").dirs[self.tx_dir()].stats
    }
    /// Percentiles `ps` (0..=100) of the bottleneck queue length, bytes, seen by frames
    /// this port sent (since the last [`MemPort::reset_queue_stats`]).
    pub fn tx_queue_percentiles(&self, ps: &[f64]) -> Vec<u64> {
        self.shared.lock().expect("link lock").dirs[self.tx_dir()].queue_percentiles(ps)
    }
    /// Forget the queue-length histogram of the direction this port sends into.
    pub fn reset_queue_stats(&self) {
        self.shared.lock().expect("link lock").dirs[self.tx_dir()]
            .qhist
            .iter_mut()
            .for_each(|n| *n = 0);
    }
    /// Change the impairments of the direction this port sends into.
    pub fn set_tx_impairments(&self, imp: Impairments) {
        self.shared.lock().expect("link lock").dirs[self.tx_dir()].imp = imp;
    }
    /// Install a filter on the direction this port sends into (false = drop).
    pub fn set_tx_filter(&self, f: Option<fn(&[u8]) -> bool>) {
        self.shared.lock().expect("link lock").dirs[self.tx_dir()].filter = f;
    }
    /// Earliest time a frame will become deliverable to this port, if any is in flight.
    pub fn next_arrival(&self) -> Option<Instant> {
        self.shared.lock().expect("link lock").dirs[self.rx_dir]
            .queue
            .front()
            .map(|f| f.at)
    }
    /// Frames in flight towards this port.
    pub fn in_flight(&self) -> usize {
        self.shared.lock().expect("link lock").dirs[self.rx_dir]
            .queue
            .len()
    }
    /// Inject a frame towards the *peer* as if this port had sent it (scripted tests).
    pub fn inject(&mut self, frame: &[u8]) {
        let now = self.clock.now();
        let mut sh = self.shared.lock().expect("link lock");
        let mut buf = sh.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);
        let Shared { dirs, pool } = &mut *sh;
        dirs[1 - self.rx_dir].enqueue(now, buf, pool);
    }
}

impl PacketIo for MemPort {
    fn rx_burst(&mut self, out: &mut [RxFrame]) -> usize {
        let now = self.clock.now();
        let mut sh = self.shared.lock().expect("link lock");
        let Shared { dirs, pool } = &mut *sh;
        let dir = &mut dirs[self.rx_dir];
        let mut n = 0;
        while n < out.len() {
            match dir.queue.front() {
                Some(f) if f.at <= now => {}
                _ => break,
            }
            let Some(slot) = self.rx_free.pop() else {
                break;
            };
            let f = dir.queue.pop_front().expect("front checked");
            dir.stats.delivered += 1;
            let dst = &mut self.rx_slots[slot as usize];
            dst.clear();
            dst.extend_from_slice(&f.buf);
            pool.push(f.buf);
            out[n] = RxFrame {
                addr: slot as u64,
                len: dst.len() as u32,
                queue: 0,
            };
            n += 1;
        }
        n
    }

    fn rx_data(&self, f: &RxFrame) -> &[u8] {
        self.rx_slots
            .get(f.addr as usize)
            .map_or(&[], |b| &b[..(f.len as usize).min(b.len())])
    }

    fn rx_release(&mut self, frames: &[RxFrame]) {
        for f in frames {
            debug_assert!(!self.rx_free.contains(&(f.addr as u32)), "double release");
            self.rx_free.push(f.addr as u32);
        }
    }

    fn tx_alloc(&mut self) -> Option<TxFrame> {
        self.tx_free.pop().map(|i| TxFrame { addr: i as u64 })
    }

    fn tx_data(&mut self, f: &TxFrame) -> &mut [u8] {
        &mut self.tx_slots[f.addr as usize]
    }

    fn tx_submit(&mut self, f: TxFrame, len: usize) {
        let now = self.clock.now();
        let mut sh = self.shared.lock().expect("link lock");
        let Shared { dirs, pool } = &mut *sh;
        self.tx_free.push(f.addr as u32);
        let dir = &mut dirs[1 - self.rx_dir];
        if len > MAX_FRAME {
            dir.stats.sent += 1;
            dir.stats.oversize += 1;
            return;
        }
        let mut buf = pool.pop().unwrap_or_else(|| Vec::with_capacity(MAX_FRAME));
        buf.clear();
        buf.extend_from_slice(&self.tx_slots[f.addr as usize][..len]);
        dir.enqueue(now, buf, pool);
    }

    fn tx_abort(&mut self, f: TxFrame) {
        self.tx_free.push(f.addr as u32);
    }

    fn tx_flush(&mut self) -> io::Result<()> {
        Ok(())
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn send(p: &mut MemPort, b: u8) {
        let f = p.tx_alloc().unwrap();
        p.tx_data(&f)[..3].copy_from_slice(&[b, b, b]);
        p.tx_submit(f, 3);
    }

    fn recv_all(p: &mut MemPort) -> Vec<u8> {
        let mut fr = [RxFrame::default(); 64];
        let n = p.rx_burst(&mut fr);
        let v = fr[..n].iter().map(|f| p.rx_data(f)[0]).collect();
        p.rx_release(&fr[..n]);
        v
    }

    #[test]
    fn delay_and_order() {
        let clock = SimClock::new();
        let imp = Impairments {
            delay: Duration::from_micros(100),
            ..Default::default()
        };
        let (mut a, mut b) = MemLink::pair(&clock, imp, imp, 1);
        for i in 0..10 {
            send(&mut a, i);
        }
        assert!(recv_all(&mut b).is_empty(), "nothing before the delay");
        clock.advance(Duration::from_micros(100));
        assert_eq!(recv_all(&mut b), (0..10).collect::<Vec<_>>());
        assert!(recv_all(&mut a).is_empty());
    }

    #[test]
    fn loss_is_seeded_and_counted() {
        let run = |seed| {
            let clock = SimClock::new();
            let imp = Impairments {
                loss: 0.3,
                ..Default::default()
            };
            let (mut a, mut b) = MemLink::pair(&clock, imp, imp, seed);
            for i in 0..200u32 {
                send(&mut a, i as u8);
            }
            clock.advance(Duration::from_millis(1));
            let mut got = Vec::new();
            loop {
                let v = recv_all(&mut b);
                if v.is_empty() {
                    break;
                }
                got.extend(v);
            }
            (got, a.tx_stats())
        };
        let (g1, s1) = run(9);
        let (g2, _) = run(9);
        assert_eq!(g1, g2, "same seed, same outcome");
        assert_eq!(s1.lost + s1.delivered, 200);
        assert!(
            s1.lost > 30 && s1.lost < 90,
            "about 30% lost, got {}",
            s1.lost
        );
    }

    #[test]
    fn reorder_and_duplicate() {
        let clock = SimClock::new();
        let imp = Impairments {
            reorder: 0.5,
            duplicate: 0.2,
            ..Default::default()
        };
        let (mut a, mut b) = MemLink::pair(&clock, imp, imp, 3);
        for i in 0..100 {
            send(&mut a, i);
        }
        clock.advance(Duration::from_millis(5));
        let mut got = Vec::new();
        loop {
            let v = recv_all(&mut b);
            if v.is_empty() {
                break;
            }
            got.extend(v);
        }
        let st = a.tx_stats();
        assert_eq!(got.len() as u64, 100 + st.duplicated);
        assert!(st.duplicated > 0 && st.reordered > 0);
        assert!(got.windows(2).any(|w| w[0] > w[1]), "some frames overtaken");
    }

    fn ip_frame(ecn: u8) -> Vec<u8> {
        let mut f = vec![0u8; 1000];
        f[12] = 0x08;
        f[14] = 0x45;
        f[15] = ecn;
        f[16..18].copy_from_slice(&986u16.to_be_bytes());
        f[22] = 64;
        f
    }

    #[test]
    fn bottleneck_marks_above_threshold_and_drops_when_full() {
        let clock = SimClock::new();
        // 1000-byte frames at 8 Mbit/s: 1 ms each. Mark above 2500 bytes waiting,
        // buffer 5000 bytes.
        let imp = Impairments {
            rate_bps: 8_000_000,
            delay: Duration::ZERO,
            ecn_threshold_bytes: 2_500,
            queue_bytes: 5_000,
            ..Default::default()
        };
        let (mut a, mut b) = MemLink::pair(&clock, imp, imp, 3);
        for i in 0..8 {
            // Alternate ECN-capable and not.
            let fr = ip_frame(if i % 2 == 0 { 0b10 } else { 0 });
            let t = a.tx_alloc().unwrap();
            a.tx_data(&t)[..1000].copy_from_slice(&fr);
            a.tx_submit(t, 1000);
        }
        let st = a.tx_stats();
        // Backlogs seen: 0, 1000, 2000, 3000, 4000 (frames 0-4 queued), then frames 5-7
        // would exceed 5000 bytes: dropped. Frames 3 and 4 see more than K; only frame 4
        // is ECN-capable.
        assert_eq!(st.queue_drops, 3);
        assert_eq!(st.ce_marked, 1);
        assert_eq!(a.tx_queue_percentiles(&[50.0, 100.0]), vec![3000, 5000]);
        clock.advance(Duration::from_millis(10));
        let mut fr = [RxFrame::default(); 16];
        let n = b.rx_burst(&mut fr);
        assert_eq!(n, 5);
        let ecn: Vec<u8> = fr[..n].iter().map(|f| b.rx_data(f)[15] & 3).collect();
        assert_eq!(ecn, vec![2, 0, 2, 0, 3]);
        let marked = b.rx_data(&fr[4]);
        let ip = crate::wire::Ipv4Packet::new_checked(&marked[14..]).unwrap();
        assert!(ip.verify_checksum(), "checksum fixed after marking");
        b.rx_release(&fr[..n]);
    }

    #[test]
    fn rate_limit_spaces_frames() {
        let clock = SimClock::new();
        // 3-byte frames at 24 kbit/s: one per millisecond.
        let imp = Impairments {
            rate_bps: 24_000,
            delay: Duration::ZERO,
            ..Default::default()
        };
        let (mut a, mut b) = MemLink::pair(&clock, imp, imp, 3);
        for i in 0..5 {
            send(&mut a, i);
        }
        let mut counts = Vec::new();
        for _ in 0..5 {
            clock.advance(Duration::from_millis(1));
            counts.push(recv_all(&mut b).len());
        }
        assert_eq!(counts, [1, 1, 1, 1, 1]);
    }
}
