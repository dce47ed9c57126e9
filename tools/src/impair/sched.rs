//! The impairment pipeline of one direction, without I/O: frames arrive at a time the
//! caller passes in, and leave at release times the caller asks for. The forwarder drives
//! it with each frame's kernel receive timestamp (so its own scheduling delays do not
//! idle the emulated link); the tests drive it with a fake clock.
//!
//! Stages, in the order a frame meets them (as netem and tbf order theirs):
//!
//! 1. **loss**: dropped with probability `loss`;
//! 2. **duplication**: with probability `dup` a second copy follows the first through
//!    the remaining stages (each copy has its own jitter and reordering draw);
//! 3. **rate limit** (if `rate` is set): a bottleneck link of `rate` bits/s with a FIFO of
//!    at most `queue` frames or bytes; a frame that does not fit is tail-dropped. The
//!    backlog is everything not yet fully transmitted, including the frame on the wire.
//!    The Ethernet frame's bytes count (no preamble, FCS or gap);
//! 4. **ECN** (if `ecn_threshold` is set): a frame that arrives at a backlog above the
//!    threshold is marked CE if it is ECT(0)/ECT(1) IPv4 (DCTCP's instantaneous-queue
//!    rule, "mark if the queue is longer than K on arrival"); Not-ECT frames pass unmarked;
//! 5. **delay** `delay`, plus **jitter** drawn uniformly from `[-jitter, +jitter]` (clamped
//!    at zero). As in netem, jitter larger than the gap between frames reorders them;
//! 6. **reordering**: with probability `reorder` a frame is held back `reorder_delay`
//!    longer, so frames arriving in that window overtake it.
//!
//! Randomness comes from one seeded generator per direction, drawn only for the stages
//! that are on, so a seed gives the same decisions every run.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, VecDeque};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::ecn::{mark_ce, Marking};
use super::units::{Nanos, QueueSize};

/// Frames held per direction at most (delay line plus queue), whatever the settings:
/// 64 Ki frames of up to 1514 bytes is about 100 MB, and 10 Gbit/s for 50 ms.
pub const MAX_HELD: usize = 1 << 16;

/// The default bottleneck queue, as tc's default `txqueuelen` of 1000 packets.
pub const DEFAULT_QUEUE: QueueSize = QueueSize::Packets(1000);

/// The impairments of one direction.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Impairments {
    /// Probability that a frame is dropped.
    pub loss: f64,
    /// Probability that a frame is held back by `reorder_delay`.
    pub reorder: f64,
    /// How long a reordered frame is held back, on top of its other delays.
    pub reorder_delay: Nanos,
    /// Probability that a frame is sent twice.
    pub dup: f64,
    /// Fixed one-way delay.
    pub delay: Nanos,
    /// Uniform jitter around `delay`.
    pub jitter: Nanos,
    /// Bottleneck rate in bits per second; None = no limit (and no queue).
    pub rate: Option<u64>,
    /// Bottleneck queue limit (tail drop).
    pub queue: QueueSize,
    /// CE-mark ECT frames that arrive at a backlog above this.
    pub ecn_threshold: Option<QueueSize>,
}

impl Default for Impairments {
    fn default() -> Self {
        Impairments {
            loss: 0.0,
            reorder: 0.0,
            reorder_delay: 1_000_000,
            dup: 0.0,
            delay: 0,
            jitter: 0,
            rate: None,
            queue: DEFAULT_QUEUE,
            ecn_threshold: None,
        }
    }
}

impl Impairments {
    /// Settings that make no sense together; the message says how to fix them.
    pub fn check(&self, dir: &str) -> Result<(), String> {
        let Impairments {
            loss,
            reorder,
            reorder_delay,
            dup,
            delay: _,
            jitter: _,
            rate,
            queue,
            ecn_threshold,
        } = *self;
        for (name, p) in [("loss", loss), ("reorder", reorder), ("dup", dup)] {
            if !(0.0..=1.0).contains(&p) {
                return Err(format!(
                    "{dir}: --{name} {p} is not a probability: give 0 to 1"
                ));
            }
        }
        if reorder > 0.0 && reorder_delay == 0 {
            return Err(format!(
                "{dir}: --reorder needs a --reorder-delay above 0 (e.g. 2ms), or nothing overtakes"
            ));
        }
        if rate.is_none() && ecn_threshold.is_some() {
            return Err(format!(
                "{dir}: --ecn-threshold needs --rate: a queue only builds behind a rate limit (e.g. --rate 50mbit)"
            ));
        }
        if let Some(t) = ecn_threshold {
            let fits = match (t, queue) {
                (QueueSize::Packets(t), QueueSize::Packets(q))
                | (QueueSize::Bytes(t), QueueSize::Bytes(q)) => t < q,
                _ => true,
            };
            if !fits {
                return Err(format!(
                    "{dir}: --ecn-threshold {t} is not below --queue {queue}: nothing would be marked before the tail drop"
                ));
            }
        }
        Ok(())
    }

    /// Is anything on? (A direction with nothing on still goes through the release heap.)
    pub fn is_transparent(&self) -> bool {
        self.loss == 0.0
            && self.reorder == 0.0
            && self.dup == 0.0
            && self.delay == 0
            && self.jitter == 0
            && self.rate.is_none()
    }
}

/// What happened to the frames of one direction.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Frames received from the ingress interface.
    pub rx_frames: u64,
    /// Their bytes (Ethernet frames).
    pub rx_bytes: u64,
    /// Dropped by the loss stage.
    pub lost: u64,
    /// Extra copies made by the duplication stage.
    pub duplicated: u64,
    /// Held back by the reordering stage.
    pub reordered: u64,
    /// Tail-dropped at the bottleneck queue.
    pub queue_drops: u64,
    /// Dropped because [`MAX_HELD`] frames were already held.
    pub held_drops: u64,
    /// ECT frames marked CE.
    pub ce_marked: u64,
    /// Frames that arrived with CE already set (marked upstream).
    pub ce_seen: u64,
    /// Frames above the ECN threshold that were not ECT (passed unmarked).
    pub not_ect_over_threshold: u64,
    /// Largest backlog seen at the bottleneck, in frames.
    pub max_backlog_frames: u64,
    /// Largest backlog seen at the bottleneck, in bytes.
    pub max_backlog_bytes: u64,
    /// Frames sent on the egress interface.
    pub tx_frames: u64,
    /// Their bytes.
    pub tx_bytes: u64,
    /// Frames the egress interface refused (counted and dropped).
    pub tx_errors: u64,
    /// Frames the kernel dropped before the forwarder read them (socket buffer full).
    pub rx_socket_drops: u64,
    /// Frames larger than the receive buffer (dropped).
    pub rx_truncated: u64,
    /// Longest a frame waited in the receive socket before the forwarder read it, in µs
    /// (its arrival time is the kernel's receive timestamp, so a wait delays the frame but
    /// does not idle the emulated link).
    pub max_read_delay_us: u64,
    /// Frames still held when the forwarder stopped (discarded, not sent).
    pub discarded_at_exit: u64,
}

impl Counters {
    /// One JSON object with every counter.
    pub fn json(&self) -> String {
        let Counters {
            rx_frames,
            rx_bytes,
            lost,
            duplicated,
            reordered,
            queue_drops,
            held_drops,
            ce_marked,
            ce_seen,
            not_ect_over_threshold,
            max_backlog_frames,
            max_backlog_bytes,
            tx_frames,
            tx_bytes,
            tx_errors,
            rx_socket_drops,
            rx_truncated,
            max_read_delay_us,
            discarded_at_exit,
        } = *self;
        format!(
            "{{\"rx_frames\":{rx_frames},\"rx_bytes\":{rx_bytes},\"lost\":{lost},\"duplicated\":{duplicated},\
             \"reordered\":{reordered},\"queue_drops\":{queue_drops},\"held_drops\":{held_drops},\
             \"ce_marked\":{ce_marked},\"ce_seen\":{ce_seen},\"not_ect_over_threshold\":{not_ect_over_threshold},\
             \"max_backlog_frames\":{max_backlog_frames},\"max_backlog_bytes\":{max_backlog_bytes},\
             \"tx_frames\":{tx_frames},\"tx_bytes\":{tx_bytes},\"tx_errors\":{tx_errors},\
             \"rx_socket_drops\":{rx_socket_drops},\"rx_truncated\":{rx_truncated},\
             \"max_read_delay_us\":{max_read_delay_us},\"discarded_at_exit\":{discarded_at_exit}}}"
        )
    }
}

/// A frame waiting for its release time.
#[derive(Debug)]
struct Held {
    release: Nanos,
    /// Arrival order, so frames with equal release times leave first-in first-out.
    seq: u64,
    frame: Vec<u8>,
}

impl PartialEq for Held {
    fn eq(&self, other: &Self) -> bool {
        (self.release, self.seq) == (other.release, other.seq)
    }
}
impl Eq for Held {}
impl PartialOrd for Held {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Held {
    /// Reversed, so that `BinaryHeap` (a max-heap) pops the earliest release first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.release, other.seq).cmp(&(self.release, self.seq))
    }
}

/// One direction's impairments and the frames it holds.
#[derive(Debug)]
pub struct Impairer {
    cfg: Impairments,
    rng: StdRng,
    held: BinaryHeap<Held>,
    seq: u64,
    /// When the bottleneck finishes transmitting everything accepted so far.
    link_free_at: Nanos,
    /// (departure time, bytes) of each frame in the bottleneck, oldest first.
    in_queue: VecDeque<(Nanos, u32)>,
    backlog_bytes: u64,
    /// The latest arrival time given to [`Impairer::arrive`].
    last_arrival: Nanos,
    /// Spare frame buffers, so the steady state does not allocate.
    pool: Vec<Vec<u8>>,
    /// What happened so far.
    pub counters: Counters,
}

impl Impairer {
    /// A direction with settings `cfg` (already [`Impairments::check`]ed) and its own seed.
    pub fn new(cfg: Impairments, seed: u64) -> Impairer {
        Impairer {
            cfg,
            rng: StdRng::seed_from_u64(seed),
            held: BinaryHeap::new(),
            seq: 0,
            link_free_at: 0,
            in_queue: VecDeque::new(),
            backlog_bytes: 0,
            last_arrival: 0,
            pool: Vec::new(),
            counters: Counters::default(),
        }
    }

    /// A frame arrived at `now`: run it through the stages and hold what survives.
    pub fn arrive(&mut self, now: Nanos, frame: &[u8]) {
        self.last_arrival = self.last_arrival.max(now);
        self.counters.rx_frames += 1;
        self.counters.rx_bytes += frame.len() as u64;
        if self.cfg.loss > 0.0 && self.rng.gen_bool(self.cfg.loss) {
            self.counters.lost += 1;
            return;
        }
        let copies = if self.cfg.dup > 0.0 && self.rng.gen_bool(self.cfg.dup) {
            self.counters.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            self.enqueue(now, frame);
        }
    }

    fn enqueue(&mut self, now: Nanos, frame: &[u8]) {
        if self.held.len() >= MAX_HELD {
            self.counters.held_drops += 1;
            return;
        }
        let mut buf = self.pool.pop().unwrap_or_default();
        buf.clear();
        buf.extend_from_slice(frame);

        let mut release = now;
        if let Some(rate) = self.cfg.rate {
            while let Some(&(depart, len)) = self.in_queue.front() {
                if depart > now {
                    break;
                }
                self.in_queue.pop_front();
                self.backlog_bytes -= u64::from(len);
            }
            let (frames, bytes) = (self.in_queue.len() as u64, self.backlog_bytes);
            let len = buf.len() as u64;
            if self.cfg.queue.exceeded_by(frames + 1, bytes + len) {
                self.counters.queue_drops += 1;
                self.pool.push(buf);
                return;
            }
            if let Some(threshold) = self.cfg.ecn_threshold {
                if threshold.exceeded_by(frames, bytes) {
                    match mark_ce(&mut buf) {
                        Marking::Marked => self.counters.ce_marked += 1,
                        Marking::AlreadyCe => self.counters.ce_seen += 1,
                        Marking::NotEct | Marking::NotIpv4 => {
                            self.counters.not_ect_over_threshold += 1
                        }
                    }
                }
            }
            let start = self.link_free_at.max(now);
            let depart = start + transmission_time(len, rate);
            self.link_free_at = depart;
            self.in_queue.push_back((depart, len as u32));
            self.backlog_bytes += len;
            let c = &mut self.counters;
            c.max_backlog_frames = c.max_backlog_frames.max(frames + 1);
            c.max_backlog_bytes = c.max_backlog_bytes.max(bytes + len);
            release = depart;
        }
        if self.cfg.ecn_threshold.is_none() || self.cfg.rate.is_none() {
            // Without a marking queue, still count CE set upstream (useful to see it pass).
            if super::ecn::ecn_of(&buf) == Some(0b11) {
                self.counters.ce_seen += 1;
            }
        }
        release += self.cfg.delay;
        if self.cfg.jitter > 0 {
            let j = self.cfg.jitter as i64;
            let offset = self.rng.gen_range(-j..=j);
            release = release.saturating_add_signed(offset).max(now);
        }
        if self.cfg.reorder > 0.0 && self.rng.gen_bool(self.cfg.reorder) {
            self.counters.reordered += 1;
            release += self.cfg.reorder_delay;
        }
        self.seq += 1;
        self.held.push(Held {
            release,
            seq: self.seq,
            frame: buf,
        });
    }

    /// The latest arrival time seen so far (arrival times given to [`Impairer::arrive`]
    /// must not go back: the bottleneck's queue is computed from them in order).
    pub fn last_arrival(&self) -> Nanos {
        self.last_arrival
    }

    /// When the next frame is due, if any is held.
    pub fn next_release(&self) -> Option<Nanos> {
        self.held.peek().map(|h| h.release)
    }

    /// Frames currently held.
    pub fn held(&self) -> usize {
        self.held.len()
    }

    /// The next frame due at `now`, if any. Give the buffer back with [`Impairer::recycle`].
    pub fn pop_due(&mut self, now: Nanos) -> Option<Vec<u8>> {
        if self.held.peek()?.release > now {
            return None;
        }
        self.held.pop().map(|h| h.frame)
    }

    /// Returns a buffer from [`Impairer::pop_due`] to the pool.
    pub fn recycle(&mut self, buf: Vec<u8>) {
        if self.pool.len() < 4096 {
            self.pool.push(buf);
        }
    }
}

/// Nanoseconds to put `bytes` on a link of `rate` bits/s (rounded to the nearest ns).
pub fn transmission_time(bytes: u64, rate: u64) -> Nanos {
    let bits = u128::from(bytes) * 8 * 1_000_000_000;
    ((bits + u128::from(rate) / 2) / u128::from(rate)) as Nanos
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impair::ecn::internet_checksum;

    const MS: Nanos = 1_000_000;
    const US: Nanos = 1_000;

    /// A 1514-byte frame carrying `id` in its last 8 bytes; IPv4 with ECN codepoint `ecn`.
    fn frame(id: u64, len: usize, ecn: u8) -> Vec<u8> {
        let mut f = vec![0u8; len];
        f[12..14].copy_from_slice(&[0x08, 0x00]);
        let ip = [
            0x45, ecn, 0x05, 0xdc, 0, 0, 0x40, 0, 64, 6, 0, 0, 10, 77, 0, 1, 10, 77, 0, 2,
        ];
        f[14..34].copy_from_slice(&ip);
        let c = internet_checksum(&f[14..34]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        f[len - 8..].copy_from_slice(&id.to_be_bytes());
        f
    }

    fn id_of(f: &[u8]) -> u64 {
        u64::from_be_bytes(f[f.len() - 8..].try_into().unwrap())
    }

    /// Feeds `n` frames, one every `gap` ns, releasing everything due as time passes;
    /// returns (release time, id) of every frame that came out, in order.
    fn run(imp: &mut Impairer, n: u64, gap: Nanos, len: usize) -> Vec<(Nanos, u64)> {
        let mut out = Vec::new();
        let mut now = 0;
        let drain = |imp: &mut Impairer, until: Nanos, out: &mut Vec<(Nanos, u64)>| {
            while let Some(t) = imp.next_release() {
                if t > until {
                    break;
                }
                let f = imp.pop_due(t).unwrap();
                out.push((t, id_of(&f)));
                imp.recycle(f);
            }
        };
        for id in 0..n {
            drain(imp, now, &mut out);
            imp.arrive(now, &frame(id, len, 0));
            now += gap;
        }
        drain(imp, Nanos::MAX, &mut out);
        out
    }

    #[test]
    fn transparent_direction_passes_everything_in_order_at_once() {
        let mut imp = Impairer::new(Impairments::default(), 1);
        let out = run(&mut imp, 1000, 10 * US, 100);
        assert_eq!(out.len(), 1000);
        for (i, (t, id)) in out.iter().enumerate() {
            assert_eq!((*t, *id), (i as u64 * 10 * US, i as u64));
        }
    }

    #[test]
    fn loss_rate_is_within_bounds_and_repeatable_for_a_seed() {
        let cfg = Impairments {
            loss: 0.05,
            ..Impairments::default()
        };
        let n = 100_000;
        let lost = |seed| {
            let mut imp = Impairer::new(cfg, seed);
            let out = run(&mut imp, n, US, 64);
            assert_eq!(out.len() as u64 + imp.counters.lost, n);
            imp.counters.lost
        };
        let a = lost(1);
        // Binomial(100000, 0.05): sd = 69; +-500 is more than 7 sd.
        assert!((4_500..=5_500).contains(&a), "lost {a} of {n} at 5%");
        assert_eq!(lost(1), a, "same seed, same losses");
        assert_ne!(lost(2), a, "another seed, other losses");
    }

    #[test]
    fn reorder_actually_reorders_and_delivers_everything_once() {
        let cfg = Impairments {
            reorder: 0.25,
            reorder_delay: 2 * MS,
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 7);
        let out = run(&mut imp, 10_000, 10 * US, 100);
        assert_eq!(out.len(), 10_000);
        let mut ids: Vec<u64> = out.iter().map(|&(_, id)| id).collect();
        let inversions = ids.windows(2).filter(|w| w[0] > w[1]).count();
        let held = imp.counters.reordered;
        assert!(
            (2_200..=2_800).contains(&held),
            "held back {held} of 10000 at 25%"
        );
        // Each held-back frame is overtaken by the ~200 frames of its 2 ms window.
        assert!(inversions > 1_000, "only {inversions} inversions");
        // A held-back frame leaves 2 ms after it arrived; others at once.
        for &(t, id) in &out {
            let arrival = id * 10 * US;
            assert!(
                t == arrival || t == arrival + 2 * MS,
                "frame {id} left at {t}"
            );
        }
        ids.sort_unstable();
        assert!(
            ids.iter().enumerate().all(|(i, &id)| id == i as u64),
            "every frame exactly once"
        );
    }

    #[test]
    fn duplication_sends_copies() {
        let cfg = Impairments {
            dup: 0.05,
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 3);
        let out = run(&mut imp, 20_000, US, 64);
        let d = imp.counters.duplicated;
        assert!((800..=1_200).contains(&d), "duplicated {d} of 20000 at 5%");
        assert_eq!(out.len() as u64, 20_000 + d);
        let dups = out.windows(2).filter(|w| w[0].1 == w[1].1).count() as u64;
        assert_eq!(dups, d, "each copy right behind its original");
    }

    #[test]
    fn delay_and_jitter_stay_in_their_window() {
        let cfg = Impairments {
            delay: 5 * MS,
            jitter: MS,
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 11);
        let out = run(&mut imp, 5_000, 100 * US, 64);
        assert_eq!(out.len(), 5_000);
        let (mut lo, mut hi) = (Nanos::MAX, 0);
        for &(t, id) in &out {
            let d = t - id * 100 * US;
            lo = lo.min(d);
            hi = hi.max(d);
        }
        assert!(lo >= 4 * MS && hi <= 6 * MS, "delays {lo}..{hi}");
        assert!(
            lo < 4 * MS + 100 * US && hi > 6 * MS - 100 * US,
            "jitter spans its range: {lo}..{hi}"
        );
        // Jitter of 1 ms with frames 100 us apart reorders, as netem's does.
        assert!(out.windows(2).any(|w| w[0].1 > w[1].1));
    }

    #[test]
    fn rate_limiter_spaces_frames_by_their_transmission_time() {
        let cfg = Impairments {
            rate: Some(100_000_000),
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 1);
        // A burst of 100 full frames at t=0: 1514 B at 100 Mbit/s = 121.12 us each.
        for id in 0..100 {
            imp.arrive(0, &frame(id, 1514, 0));
        }
        let mut last = 0;
        for k in 1..=100u64 {
            let t = imp.next_release().unwrap();
            let f = imp.pop_due(t).unwrap();
            assert_eq!(id_of(&f), k - 1, "FIFO");
            assert_eq!(
                t,
                k * 121_120,
                "frame {k} leaves when it is fully on the wire"
            );
            assert!(t - last == 121_120);
            last = t;
        }
        assert_eq!(imp.counters.max_backlog_frames, 100);
        // After the link idles, a new frame goes out after its own transmission time only.
        imp.arrive(20 * MS, &frame(100, 1514, 0));
        assert_eq!(imp.next_release(), Some(20 * MS + 121_120));
    }

    #[test]
    fn rate_limited_throughput_matches_the_rate() {
        // Offered 2x the rate for 1 s: the output carries exactly the rate, the rest drops.
        let cfg = Impairments {
            rate: Some(50_000_000),
            queue: QueueSize::Packets(64),
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 1);
        let out = run(&mut imp, 8_256, 121_120, 1514);
        let span = out.last().unwrap().0 - out.first().unwrap().0;
        let bits = (out.len() as u64 - 1) * 1514 * 8;
        let rate = bits as f64 / (span as f64 / 1e9);
        assert!((rate - 50e6).abs() < 50e6 * 0.001, "rate {rate}");
        assert!(imp.counters.queue_drops > 4_000, "{:?}", imp.counters);
    }

    #[test]
    fn queue_limit_tail_drops_in_packets_and_bytes() {
        let cfg = Impairments {
            rate: Some(10_000_000),
            queue: QueueSize::Packets(256),
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 1);
        for id in 0..300 {
            imp.arrive(0, &frame(id, 1000, 0));
        }
        assert_eq!(imp.counters.queue_drops, 44);
        assert_eq!(imp.held(), 256);
        // The first 256 are kept: tail drop.
        let mut ids = Vec::new();
        while let Some(t) = imp.next_release() {
            ids.push(id_of(&imp.pop_due(t).unwrap()));
        }
        assert_eq!(ids, (0..256).collect::<Vec<_>>());

        let cfg = Impairments {
            rate: Some(10_000_000),
            queue: QueueSize::Bytes(10_000),
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 1);
        for id in 0..15 {
            imp.arrive(0, &frame(id, 1000, 0));
        }
        assert_eq!((imp.held(), imp.counters.queue_drops), (10, 5));
        // Once one frame has left (800 us at 10 Mbit/s), one more fits.
        imp.arrive(800 * US, &frame(15, 1000, 0));
        assert_eq!(imp.counters.queue_drops, 5);
        imp.arrive(800 * US, &frame(16, 1000, 0));
        assert_eq!(imp.counters.queue_drops, 6);
    }

    #[test]
    fn ecn_marks_ect_above_the_threshold_and_keeps_checksums_valid() {
        let cfg = Impairments {
            rate: Some(100_000_000),
            queue: QueueSize::Packets(256),
            ecn_threshold: Some(QueueSize::Packets(64)),
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 1);
        // 100 ECT(0) frames, then 10 Not-ECT, in one burst.
        for id in 0..100 {
            imp.arrive(0, &frame(id, 1514, 0b10));
        }
        for id in 100..110 {
            imp.arrive(0, &frame(id, 1514, 0b00));
        }
        // Frames 65.. found more than 64 ahead of them.
        assert_eq!(imp.counters.ce_marked, 35);
        assert_eq!(imp.counters.not_ect_over_threshold, 10);
        while let Some(t) = imp.next_release() {
            let f = imp.pop_due(t).unwrap();
            let id = id_of(&f);
            let ecn = f[15] & 3;
            let want = match id {
                0..=64 => 0b10,
                65..=99 => 0b11,
                _ => 0b00,
            };
            assert_eq!(ecn, want, "frame {id}");
            assert_eq!(
                internet_checksum(&f[14..34]),
                0,
                "frame {id}: IPv4 checksum"
            );
        }
    }

    #[test]
    fn held_frames_are_bounded() {
        let cfg = Impairments {
            delay: 1_000 * MS,
            ..Impairments::default()
        };
        let mut imp = Impairer::new(cfg, 1);
        for id in 0..(MAX_HELD as u64 + 10) {
            imp.arrive(id, &frame(id, 64, 0));
        }
        assert_eq!(imp.held(), MAX_HELD);
        assert_eq!(imp.counters.held_drops, 10);
    }

    #[test]
    fn settings_that_do_not_fit_are_refused_with_a_fix() {
        let ok = Impairments::default();
        assert!(ok.check("a2b").is_ok());
        let e = Impairments {
            ecn_threshold: Some(QueueSize::Packets(10)),
            ..ok
        }
        .check("a2b")
        .unwrap_err();
        assert!(e.contains("needs --rate"), "{e}");
        let e = Impairments {
            reorder: 0.1,
            reorder_delay: 0,
            ..ok
        }
        .check("b2a")
        .unwrap_err();
        assert!(e.starts_with("b2a") && e.contains("--reorder-delay"), "{e}");
        let e = Impairments {
            rate: Some(1_000_000),
            queue: QueueSize::Packets(10),
            ecn_threshold: Some(QueueSize::Packets(10)),
            ..ok
        }
        .check("a2b")
        .unwrap_err();
        assert!(e.contains("not below --queue"), "{e}");
    }

    #[test]
    fn counters_print_as_json() {
        let c = Counters {
            rx_frames: 3,
            ce_marked: 1,
            ..Counters::default()
        };
        let j = c.json();
        assert!(
            j.starts_with("{\"rx_frames\":3,")
                && j.contains("\"ce_marked\":1,")
                && j.ends_with('}')
        );
    }
}
