//! The sender's SACK scoreboard (RFC 6675, simplified) for one connection.
//!
//! The fast path reports every ACK that carries SACK blocks; the scoreboard keeps the
//! SACKed ranges above `snd_una` and answers which holes to retransmit. A hole is
//! deemed lost once at least `DupThresh * SMSS` bytes above it were SACKed (RFC 6675
//! IsLost). Each byte is retransmitted at most once per recovery episode (`high_rxt`);
//! the first segment at `snd_una` is left to the fast path, which retransmits it itself
//! on the third duplicate ACK and on every partial ACK (RFC 6582).

/// RFC 6675 DupThresh.
const DUP_THRESH: u32 = 3;

#[inline]
fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// SACK state of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scoreboard {
    /// SACKed ranges `[start, end)`, sorted, disjoint, all above `snd_una`.
    sacked: Vec<(u32, u32)>,
    /// Highest sequence number retransmitted in this episode.
    high_rxt: u32,
    /// The episode ends when `snd_una` reaches this (RFC 6675 RecoveryPoint).
    recovery_point: Option<u32>,
}

/// Ranges larger than this many blocks are not tracked (a peer cannot report more than
/// a window's worth of disjoint blocks; this bounds the memory a hostile one can make us use).
const MAX_RANGES: usize = 64;

impl Scoreboard {
    /// Forget everything (after a retransmission timeout).
    pub fn reset(&mut self) {
        self.sacked.clear();
        self.recovery_point = None;
    }

    /// True while a recovery episode is in progress.
    pub fn in_recovery(&self) -> bool {
        self.recovery_point.is_some()
    }

    /// The SACKed ranges.
    pub fn sacked(&self) -> &[(u32, u32)] {
        &self.sacked
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

    /// Take an ACK's blocks; returns the ranges to retransmit now.
    pub fn on_ack(&mut self, snd_una: u32, snd_nxt: u32, mss: u32, blocks: &[(u32, u32)]) -> Vec<(u32, u32)> {
        let mss = mss.max(1);
        // Forget what is cumulatively acknowledged.
        self.sacked.retain(|&(_, b)| lt(snd_una, b));
        if let Some(first) = self.sacked.first_mut() {
            if lt(first.0, snd_una) {
                first.0 = snd_una;
            }
        }
        if let Some(rp) = self.recovery_point {
            if !lt(snd_una, rp) {
                self.recovery_point = None;
            }
        }
        // RFC 2018: only blocks inside (snd_una, snd_nxt] are meaningful; others are
        // D-SACKs or garbage.
        for &(s, e) in blocks {
            if lt(snd_una, s) && lt(s, e) && !lt(snd_nxt, e) {
                self.insert(s, e);
            }
        }
        if self.sacked.is_empty() {
            return Vec::new();
        }
        if self.recovery_point.is_none() || lt(self.high_rxt, snd_una) {
            self.high_rxt = snd_una;
        }
        // The fast path covers the first segment of the hole at snd_una.
        let floor = snd_una.wrapping_add(mss);
        if lt(self.high_rxt, floor) {
            self.high_rxt = floor;
        }
        let mut out = Vec::new();
        let mut cursor = snd_una;
        let total: u32 = self.sacked.iter().map(|&(a, b)| b.wrapping_sub(a)).sum();
        let mut above = total;
        for &(a, b) in &self.sacked {
            // Hole [cursor, a) has `above` SACKed bytes above it.
            if lt(cursor, a) && above >= DUP_THRESH * mss {
                let start = if lt(cursor, self.high_rxt) { self.high_rxt } else { cursor };
                if lt(start, a) {
                    out.push((start, a.wrapping_sub(start)));
                    self.high_rxt = a;
                }
            }
            above -= b.wrapping_sub(a);
            cursor = b;
        }
        if !out.is_empty() && self.recovery_point.is_none() {
            self.recovery_point = Some(snd_nxt);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holes_are_retransmitted_once() {
        let mut sb = Scoreboard::default();
        // Segments of 100 bytes from 1000; 1000 and 1300 lost, 1100.. and 1400..1800 arrived.
        assert!(sb.on_ack(1000, 2000, 100, &[(1100, 1300)]).is_empty(), "200 B above: not yet lost");
        let r = sb.on_ack(1000, 2000, 100, &[(1400, 1800), (1100, 1300)]);
        // [1000,1100) is the fast path's; [1300,1400) has 400 B above it.
        assert_eq!(r, vec![(1300, 100)]);
        assert!(sb.in_recovery());
        assert!(sb.on_ack(1000, 2000, 100, &[(1400, 1900), (1100, 1300)]).is_empty(), "already retransmitted");
        // Cumulative ACK past the first hole (partial): nothing new.
        assert!(sb.on_ack(1300, 2000, 100, &[(1400, 1900)]).is_empty());
        assert_eq!(sb.sacked(), &[(1400, 1900)]);
        // Recovery ends at the recovery point.
        assert!(sb.on_ack(2000, 2000, 100, &[]).is_empty());
        assert!(!sb.in_recovery());
        assert!(sb.sacked().is_empty());
    }

    #[test]
    fn big_hole_beyond_first_segment() {
        let mut sb = Scoreboard::default();
        let r = sb.on_ack(0, 10_000, 1000, &[(5000, 9000)]);
        assert_eq!(r, vec![(1000, 4000)], "everything but the fast path's first segment");
    }

    #[test]
    fn invalid_blocks_ignored() {
        let mut sb = Scoreboard::default();
        assert!(sb.on_ack(1000, 2000, 100, &[(500, 900), (1900, 2500), (1500, 1400)]).is_empty());
        assert!(sb.sacked().is_empty());
        for i in 0..200u32 {
            sb.on_ack(0, 1_000_000, 10, &[(100 + i * 20, 110 + i * 20)]);
        }
        assert!(sb.sacked().len() <= MAX_RANGES);
    }
}
