//! The sender's SACK scoreboard for one connection: RFC 6675 loss detection with a
//! RACK-style (RFC 8985) time check.
//!
//! The fast path reports every ACK that carries SACK blocks; the scoreboard keeps the
//! SACKed ranges above `snd_una` and answers which holes to retransmit:
//! - a hole with at least `DupThresh * SMSS` bytes SACKed above it (RFC 6675 IsLost) is
//!   retransmitted once it has been a hole for a reordering window (`srtt / 4`, RFC 8985
//!   6.2), so a reordered segment arriving late costs no retransmission;
//! - a hole with less above it (near the end of the data in flight, common when the
//!   window or the transmit ring is full) waits a reordering window plus one srtt, then
//!   goes too (RACK would call it lost by the later data that was delivered), instead of
//!   waiting for the RTO;
//! - a retransmission still not acknowledged after `srtt + reordering window` is deemed
//!   lost too and sent again (RFC 8985 detects lost retransmissions the same way), so a
//!   lost retransmission does not have to wait for the RTO.
//! Time is passed in (microseconds); the scoreboard does no I/O.

/// RFC 6675 DupThresh.
const DUP_THRESH: u32 = 3;
/// Lower bound of the reordering window, µs.
const MIN_REO_WND_US: u64 = 200;
/// Lower bound of the time after which a retransmission counts as lost, µs: a
/// retransmission needs a whole round trip, and the peer may delay its ACK; below a few
/// milliseconds, timing noise would resend the same hole over and over.
const MIN_REXMIT_US: u64 = 5_000;
/// Retransmissions of one hole before leaving it to the RTO.
const MAX_RETRIES: u8 = 4;
/// Ranges beyond this many are not tracked: a peer cannot report more than a window's
/// worth of disjoint blocks, and this bounds what a hostile one can make us keep.
const MAX_RANGES: usize = 64;

/// (reordering window, time after which a retransmission counts as lost), µs.
fn windows(srtt_us: u32) -> (u64, u64) {
    let reo_wnd = (srtt_us as u64 / 4).max(MIN_REO_WND_US);
    (reo_wnd, (2 * srtt_us as u64 + reo_wnd).max(MIN_REXMIT_US))
}

// Sequence-space "before": the fast path's comparison, so both sides agree.
use tas_fastpath::rx::seq_lt as lt;

/// A hole we know of: first seen as a loss candidate at `since`, last retransmitted at
/// `sent` (if ever), `tries` times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Hole {
    start: u32,
    /// Where it ends (the next SACKed byte).
    end: u32,
    since: u64,
    /// How long it must stay a hole before it counts as lost (see `on_ack`).
    wait: u64,
    sent: Option<u64>,
    tries: u8,
}

/// SACK state of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scoreboard {
    /// SACKed ranges `[start, end)`, sorted, disjoint, all above `snd_una`.
    sacked: Vec<(u32, u32)>,
    /// Loss candidates by start sequence number.
    holes: Vec<Hole>,
    /// The inputs of the last evaluation (snd_una, snd_nxt, mss, srtt), for timer runs.
    last: Option<(u32, u32, u32, u32)>,
}

impl Scoreboard {
    /// Forget everything (after a retransmission timeout, which resends it all anyway).
    pub fn reset(&mut self) {
        self.sacked.clear();
        self.holes.clear();
        self.last = None;
    }

    /// When a hole becomes due without any further ACK (its reordering window ends, or
    /// its retransmission counts as lost), in µs; None if nothing is waiting. The owner
    /// calls [`Scoreboard::on_timer`] then (RFC 8985 6.3's reordering timer).
    pub fn next_check(&self) -> Option<u64> {
        let (_, _, _, srtt) = self.last?;
        let (_, rexmit_after) = windows(srtt);
        self.holes
            .iter()
            .filter_map(|h| match h.sent {
                None => Some(h.since + h.wait),
                Some(t) if h.tries < MAX_RETRIES => Some(t + rexmit_after),
                Some(_) => None,
            })
            .min()
    }

    /// Re-evaluate at `now_us` with the last ACK's view; returns ranges to retransmit.
    pub fn on_timer(&mut self, now_us: u64) -> Vec<(u32, u32)> {
        match self.last {
            Some((una, nxt, mss, srtt)) => self.on_ack(now_us, srtt, una, nxt, mss, &[]),
            None => Vec::new(),
        }
    }

    /// True while holes are being repaired.
    pub fn in_recovery(&self) -> bool {
        !self.holes.is_empty()
    }

    /// The SACKed ranges.
    pub fn sacked(&self) -> &[(u32, u32)] {
        &self.sacked
    }

    /// `TCP_INFO`'s view in segments of `mss` bytes (each range rounded up): (SACKed,
    /// deemed lost, retransmitted and not yet acknowledged). A hole is deemed lost when
    /// it is retransmitted (both happen at once here), so the last two are equal.
    pub fn segments(&self, mss: u32) -> (u32, u32, u32) {
        let mss = mss.max(1);
        let sacked = self.sacked.iter().map(|&(a, b)| b.wrapping_sub(a).div_ceil(mss)).sum();
        let lost = self.holes.iter().filter(|h| h.sent.is_some()).map(|h| h.end.wrapping_sub(h.start).div_ceil(mss)).sum();
        (sacked, lost, lost)
    }

    fn insert(&mut self, s: u32, e: u32) {
        let (mut ns, mut ne) = (s, e);
        self.sacked.retain(|&(a, b)| {
            if lt(b, ns) || lt(ne, a) {
                true
            } else {
                if lt(a, ns) {
                    ns = a;
                }
                if lt(ne, b) {
                    ne = b;
                }
                false
            }
        });
        if self.sacked.len() >= MAX_RANGES {
            return;
        }
        let pos = self.sacked.iter().position(|&(a, _)| lt(ns, a)).unwrap_or(self.sacked.len());
        self.sacked.insert(pos, (ns, ne));
    }

    /// Take an ACK's blocks at time `now_us`; returns the ranges `(seq, len)` to
    /// retransmit now.
    pub fn on_ack(
        &mut self,
        now_us: u64,
        srtt_us: u32,
        snd_una: u32,
        snd_nxt: u32,
        mss: u32,
        blocks: &[(u32, u32)],
    ) -> Vec<(u32, u32)> {
        let mss = mss.max(1);
        // Forget what is cumulatively acknowledged.
        self.sacked.retain(|&(_, b)| lt(snd_una, b));
        if let Some(first) = self.sacked.first_mut() {
            if lt(first.0, snd_una) {
                first.0 = snd_una;
            }
        }
        // RFC 2018: only blocks inside (snd_una, snd_nxt] are meaningful; others are
        // D-SACKs or garbage.
        for &(s, e) in blocks {
            if lt(snd_una, s) && lt(s, e) && !lt(snd_nxt, e) {
                self.insert(s, e);
            }
        }
        self.last = Some((snd_una, snd_nxt, mss, srtt_us));
        let (reo_wnd, rexmit_after) = windows(srtt_us);
        // The holes below the highest SACKed byte, with the SACKed bytes above each.
        let mut current: Vec<(u32, u32, u32)> = Vec::new(); // (start, end, sacked above)
        let total: u32 = self.sacked.iter().map(|&(a, b)| b.wrapping_sub(a)).sum();
        let mut above = total;
        let mut cursor = snd_una;
        for &(a, b) in &self.sacked {
            if lt(cursor, a) {
                current.push((cursor, a, above));
            }
            above -= b.wrapping_sub(a);
            cursor = b;
        }
        // Keep the state of holes that still exist (matched by a start inside them).
        let old = std::mem::take(&mut self.holes);
        let mut out = Vec::new();
        for &(s, e, above) in &current {
            // RFC 6675 IsLost: DupThresh segments' worth SACKed above. A hole with less
            // above it (near the end of what was sent: a sender whose window or ring is
            // full sends nothing more that could be SACKed) is lost too once a round trip
            // has passed on top of the reordering window, as RACK (RFC 8985) would judge it
            // by the later-sent data that was delivered; otherwise it would wait for the
            // RTO.
            let wait = if above >= DUP_THRESH * mss { reo_wnd } else { reo_wnd + srtt_us as u64 };
            let mut h = old
                .iter()
                .find(|h| !lt(h.start, s) && lt(h.start, e))
                .copied()
                .map(|h| Hole { start: s, end: e, wait, ..h })
                .unwrap_or(Hole { start: s, end: e, since: now_us, wait, sent: None, tries: 0 });
            let due = match h.sent {
                None => now_us.saturating_sub(h.since) >= wait,
                Some(t) => h.tries < MAX_RETRIES && now_us.saturating_sub(t) >= rexmit_after,
            };
            if due {
                out.push((s, e.wrapping_sub(s)));
                h.sent = Some(now_us);
                h.tries += 1;
            }
            self.holes.push(h);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRTT: u32 = 1000; // reordering window 250 µs, re-send after 1250 µs

    #[test]
    fn holes_wait_for_the_reordering_window_then_go_once() {
        let mut sb = Scoreboard::default();
        // Segments of 100 bytes from 1000; 1000 and 1300 lost.
        assert!(sb.on_ack(0, SRTT, 1000, 2000, 100, &[(1100, 1300)]).is_empty(), "200 B above: not yet lost");
        assert!(sb.on_ack(10, SRTT, 1000, 2000, 100, &[(1400, 1800), (1100, 1300)]).is_empty(), "inside the reordering window");
        assert_eq!(sb.next_check(), Some(250), "the window ends 250 us after the first hole appeared (at 0)");
        assert_eq!(sb.segments(100), (6, 0, 0), "six segments SACKed, nothing deemed lost yet");
        let r = sb.on_ack(300, SRTT, 1000, 2000, 100, &[(1400, 1800)]);
        assert_eq!(r, vec![(1000, 100), (1300, 100)]);
        assert!(sb.in_recovery());
        assert_eq!(sb.segments(100), (6, 2, 2), "two holes of one segment each: lost and retransmitted");
        assert_eq!(sb.segments(60), (4 + 7, 2 + 2, 4), "ranges round up to whole segments");
        assert!(sb.on_ack(400, SRTT, 1000, 2000, 100, &[(1400, 1900)]).is_empty(), "already retransmitted");
        // A partial ACK: the first hole is repaired, the second still open.
        assert!(sb.on_ack(500, SRTT, 1300, 2000, 100, &[(1400, 1900)]).is_empty());
        assert_eq!(sb.sacked(), &[(1400, 1900)]);
        // The retransmission of 1300 was lost too: sent again after max(2 srtt + window, 5 ms).
        assert!(sb.on_ack(5000, SRTT, 1300, 2000, 100, &[(1400, 1900)]).is_empty());
        assert_eq!(sb.on_ack(5300, SRTT, 1300, 2000, 100, &[(1400, 1900)]), vec![(1300, 100)]);
        // Everything acknowledged.
        assert!(sb.on_ack(5400, SRTT, 2000, 2000, 100, &[]).is_empty());
        assert!(!sb.in_recovery());
        assert_eq!(sb.segments(100), (0, 0, 0));
        assert!(sb.sacked().is_empty());
    }

    #[test]
    fn a_hole_near_the_end_goes_after_a_round_trip() {
        let mut sb = Scoreboard::default();
        // 1000..1100 lost, only the last segment (1100..1200) SACKed: less than DupThresh
        // segments above, and nothing more was sent (a full window).
        assert!(sb.on_ack(0, SRTT, 1000, 1200, 100, &[(1100, 1200)]).is_empty());
        assert_eq!(sb.next_check(), Some(250 + 1000), "reordering window plus one srtt");
        assert!(sb.on_timer(1249).is_empty());
        assert_eq!(sb.on_timer(1250), vec![(1000, 100)]);
        // Without any SACK above it, no hole is known: that is the RTO's (or TLP's) case.
        let mut sb = Scoreboard::default();
        assert!(sb.on_ack(0, SRTT, 1000, 1200, 100, &[]).is_empty());
        assert_eq!(sb.next_check(), None);
    }

    #[test]
    fn timer_fires_without_further_acks() {
        let mut sb = Scoreboard::default();
        assert!(sb.on_ack(0, SRTT, 0, 10_000, 1000, &[(1000, 5000)]).is_empty());
        let due = sb.next_check().unwrap();
        assert!(sb.on_timer(due - 1).is_empty());
        assert_eq!(sb.on_timer(due), vec![(0, 1000)]);
        assert_eq!(sb.next_check(), Some(due + 5000), "next: the retransmission's loss check");
    }

    #[test]
    fn reordering_costs_nothing() {
        let mut sb = Scoreboard::default();
        assert!(sb.on_ack(0, SRTT, 0, 10_000, 1000, &[(1000, 5000)]).is_empty());
        // The "lost" segment arrives late, inside the window: cumulative ACK.
        assert!(sb.on_ack(100, SRTT, 5000, 10_000, 1000, &[]).is_empty());
        assert!(!sb.in_recovery());
    }

    #[test]
    fn retries_are_bounded_and_blocks_validated() {
        let mut sb = Scoreboard::default();
        let mut sent = 0;
        for t in 0..20u64 {
            sent += sb.on_ack(t * 10_000, SRTT, 0, 10_000, 1000, &[(5000, 9000)]).len();
        }
        assert_eq!(sent, MAX_RETRIES as usize);
        let mut sb = Scoreboard::default();
        assert!(sb.on_ack(0, SRTT, 1000, 2000, 100, &[(500, 900), (1900, 2500), (1500, 1400)]).is_empty());
        assert!(sb.sacked().is_empty());
        for i in 0..200u32 {
            sb.on_ack(0, SRTT, 0, 1_000_000, 10, &[(100 + i * 20, 110 + i * 20)]);
        }
        assert!(sb.sacked().len() <= MAX_RANGES);
    }
}
