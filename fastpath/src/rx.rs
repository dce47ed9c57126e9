//! Receive processing for an established flow: the common case of TCP, sans-I/O.
//!
//! [`on_segment`] takes one validated segment of a known flow and updates the flow:
//! payload copied once from the frame into the application's receive ring (in order, or
//! kept as the one out-of-order interval), ACK field processed (frees transmit space,
//! counts duplicate ACKs, takes RTT samples from timestamps), the peer's window taken,
//! the peer's FIN consumed in order. It returns what the caller must do next as
//! [`RxVerdict`] bits; it does no I/O, reads no clock and never allocates.

use crate::appmem::AppMem;
use crate::flow::*;
use crate::time::Instant;
use crate::wire::{SackBlocks, TcpFlags};

/// The fields of a segment the fast path acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegInfo {
    /// Sequence number.
    pub seq: u32,
    /// Acknowledgment number (valid: the fast path only takes segments with ACK set).
    pub ack: u32,
    /// Flags.
    pub flags: TcpFlags,
    /// Raw window field (not yet scaled).
    pub window: u16,
    /// (TSval, TSecr) if the segment carries timestamps.
    pub ts: Option<(u32, u32)>,
    /// SACK blocks, if the segment carries any (parsed only for flows with SACK).
    pub sack: Option<SackBlocks>,
    /// The IP header's ECN field said CE (congestion experienced).
    pub ce: bool,
}

/// Send an ACK for this flow at the end of the batch.
pub const V_ACK: u32 = 1 << 0;
/// The flow may transmit now (space was acked or the window opened): schedule it.
pub const V_TX: u32 = 1 << 1;
/// The peer's FIN was consumed: report to the slow path.
pub const V_PEER_FIN: u32 = 1 << 2;
/// Our FIN was acknowledged: report to the slow path.
pub const V_FIN_ACKED: u32 = 1 << 3;
/// Retransmit one segment at `snd_una` (third duplicate ACK, or a partial ACK in
/// recovery: RFC 6582 NewReno). Only for flows without SACK; with SACK the slow path's
/// scoreboard decides every retransmission.
pub const V_FAST_RETX: u32 = 1 << 4;
/// Not for the fast path (an acceptable RST): hand the frame to the slow path untouched.
pub const V_EXCEPTION: u32 = 1 << 5;
/// New in-order payload was delivered (an event to the app is owed).
pub const V_DELIVERED: u32 = 1 << 6;
/// The segment carried SACK blocks: report them to the slow path's scoreboard.
pub const V_SACK: u32 = 1 << 7;

/// Bitset of `V_*` values.
pub type RxVerdict = u32;

/// Receive-side counters (per core, plain integers: one writer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxCounters {
    /// Payload bytes delivered in order.
    pub bytes_in_order: u64,
    /// Segments kept out of order.
    pub ooo_kept: u64,
    /// Segments dropped because they would need more out-of-order intervals than kept.
    pub ooo_dropped: u64,
    /// Bytes dropped because the receive window was full.
    pub window_dropped: u64,
    /// Entirely old (duplicate) segments.
    pub duplicates: u64,
    /// ACKs for data never sent.
    pub ack_unsent: u64,
    /// Duplicate ACKs.
    pub dupacks: u64,
    /// Ring writes refused by the bounds check (corrupt flow/app state).
    pub ring_errors: u64,
    /// Challenge ACKs sent for in-window RSTs and SYNs (RFC 5961).
    pub challenge_acks: u64,
    /// Segments dropped by PAWS (RFC 7323 5).
    pub paws_dropped: u64,
    /// RSTs dropped as out of window.
    pub rst_dropped: u64,
}

/// Duplicate ACKs that trigger a fast retransmit (RFC 5681).
pub const DUPACK_THRESHOLD: u8 = 3;

/// `a` comes before `b` in sequence space (RFC 9293 3.4: modulo 2^32, within half the
/// space), for sequence numbers, acknowledgments and timestamps alike.
#[inline]
pub fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Timestamp clock: TSval ticks are 16 µs (2^4), so 2^31 ticks last 9.5 hours (PAWS
/// stays sound for idle connections that long) while RTT samples keep a resolution
/// fine enough for data-centre round trips.
pub const TS_TICK_SHIFT: u32 = 4;

/// PAWS tolerance in ticks of the peer's timestamp clock (Linux's `TCP_PAWS_WINDOW`).
pub const PAWS_WINDOW: u32 = 1;

/// Our TSval at `now`: 16 µs ticks of the whole 64-bit clock, truncated to 32 bits, so it
/// wraps only every 2^32 ticks (19 hours), where serial-number comparison expects it to.
/// (Deriving it from the 32-bit microsecond clock, `now_us >> 4`, made it jump back by
/// 2^28 every 71.6 minutes of uptime, and the peer's PAWS then dropped every segment of
/// the connection.)
#[inline]
pub fn tsval(now: Instant) -> u32 {
    (now.as_nanos() / (1_000 << TS_TICK_SHIFT)) as u32
}

/// Process one segment of an established flow. `payload` is the TCP payload, `ooo` the
/// flow's out-of-order intervals.
pub fn on_segment(
    f: &mut FlowState,
    ooo: &mut OooSet,
    seg: &SegInfo,
    payload: &[u8],
    mem: &AppMem,
    now_us: u32,
    ts_now: u32,
    c: &mut RxCounters,
) -> RxVerdict {
    // RFC 5961 3.2: an RST is accepted only if its sequence number is exactly RCV.NXT;
    // one elsewhere in the window gets a challenge ACK, any other is dropped.
    if seg.flags.contains(TcpFlags::RST) {
        if seg.seq == f.rcv_nxt {
            return V_EXCEPTION;
        }
        if seg.seq.wrapping_sub(f.rcv_nxt) < f.rx_avail.max(1) {
            c.challenge_acks += 1;
            return V_ACK;
        }
        c.rst_dropped += 1;
        return 0;
    }
    // RFC 5961 4.2: a SYN on a synchronized connection is answered with a challenge ACK.
    if seg.flags.contains(TcpFlags::SYN) {
        c.challenge_acks += 1;
        return V_ACK;
    }
    // RFC 9293 3.10.7.4: "if the ACK bit is off, drop the segment and return".
    if !seg.flags.contains(TcpFlags::ACK) {
        return 0;
    }
    // RFC 7323 5.3 PAWS: a segment whose TSval is older than TS.Recent is a stale
    // duplicate; drop it and acknowledge. Like Linux (TCP_PAWS_WINDOW), one tick of the
    // peer's clock is tolerated: with millisecond clocks, segments reordered by a
    // millisecond would otherwise be thrown away as duplicates although they carry new data.
    if f.has(F_TS) {
        if let Some((val, _)) = seg.ts {
            if f.ts_recent != 0 && seq_lt(val.wrapping_add(PAWS_WINDOW), f.ts_recent) {
                c.paws_dropped += 1;
                return V_ACK;
            }
        }
    }
    let mut v = 0;
    f.heard_us = now_us;
    // RFC 7323 4.3: TS.Recent takes the TSval of a segment that covers Last.ACK.sent
    // (SEG.SEQ <= RCV.NXT here), pure ACKs included — but not of a data segment that lies
    // wholly below RCV.NXT (RFC 1323's SEG.SEQ + SEG.LEN > Last.ACK.sent): such a
    // duplicate is a spurious retransmission with a fresh TSval, and letting it advance
    // TS.Recent would make PAWS discard the originals of later data still in flight.
    if f.has(F_TS) {
        if let Some((val, _)) = seg.ts {
            let duplicate = !payload.is_empty()
                && !seq_lt(f.rcv_nxt, seg.seq.wrapping_add(payload.len() as u32));
            if !seq_lt(f.rcv_nxt, seg.seq) && !duplicate && !seq_lt(val, f.ts_recent) {
                f.ts_recent = val;
            }
        }
    }
    if f.tx_sent == 0 && !f.has(F_TX_FIN_SENT) && !(f.snd_wnd == 0 && f.tx_avail > 0) {
        // Nothing outstanding: the backoff counter counts keepalive probes, and the peer
        // just answered. (While the peer's window is closed it counts zero-window probes,
        // whose interval keeps doubling until the window opens, as in Linux.)
        f.rto_backoff = 0;
    }

    // ---- ACK field (RFC 9293 3.10.7.4, ESTABLISHED: "If SND.UNA < SEG.ACK =< SND.NXT ...")
    let in_flight = f.snd_nxt().wrapping_sub(f.snd_una);
    let acked = seg.ack.wrapping_sub(f.snd_una);
    // After a go-back (RTO) snd_nxt is rewound, but data up to `recover` (the highest
    // sequence sent before) did leave once: an ACK for it is valid, and frees the bytes
    // queued for resending (with a small congestion window they may not be resent yet).
    let rewound = acked > in_flight
        && seq_lt(f.snd_una, f.recover)
        && !seq_lt(f.recover, seg.ack)
        && acked <= f.tx_sent + f.tx_avail;
    if acked != 0 && (acked <= in_flight || rewound) {
        let data_acked = acked.min(f.tx_sent + f.tx_avail);
        f.tx_head = (f.tx_head.wrapping_add(data_acked)) & (f.tx_size() - 1);
        if data_acked > f.tx_sent {
            f.tx_avail -= data_acked - f.tx_sent;
            f.tx_sent = 0;
        } else {
            f.tx_sent -= data_acked;
        }
        f.snd_una = seg.ack;
        f.tx_freed_pending += data_acked;
        f.cnt_acked = f.cnt_acked.wrapping_add(data_acked);
        if f.flags2 & F2_ECN != 0 && seg.flags.contains(TcpFlags::ECE) {
            // RFC 8257 3.3: the bytes this ACK acknowledges count as marked.
            f.cnt_ecn = f.cnt_ecn.wrapping_add(data_acked);
            f.flags2 |= F2_CWR_PENDING;
        }
        f.dupacks = 0;
        f.rto_backoff = 0;
        f.progress_us = now_us;
        f.flags &= !F_TLP;
        if acked > data_acked && f.has(F_TX_FIN_SENT) && !f.has(F_TX_FIN_ACKED) {
            f.flags |= F_TX_FIN_ACKED;
            v |= V_FIN_ACKED;
        }
        if f.has(F_RECOVERY) {
            if seq_lt(seg.ack, f.recover) {
                // RFC 6582 3.2 step 3: a partial ACK retransmits the next hole at once
                // (with SACK, the slow path's scoreboard picks the holes instead).
                if !f.has(F_SACK) {
                    v |= V_FAST_RETX;
                }
            } else {
                f.flags &= !F_RECOVERY;
            }
        }
        if let (true, Some((_, ecr))) = (f.has(F_TS), seg.ts) {
            if ecr != 0 {
                let sample = (ts_now.wrapping_sub(ecr) << TS_TICK_SHIFT).max(1);
                if sample < 60_000_000 {
                    rtt_sample(f, sample);
                }
            }
        }
        v |= V_TX;
    } else if acked == 0 {
        // RFC 5681 duplicate ACK: no data, no window change, data outstanding.
        let wnd = (seg.window as u32) << f.snd_wscale;
        if payload.is_empty()
            && !seg.flags.contains(TcpFlags::FIN)
            && in_flight > 0
            && wnd == f.snd_wnd
        {
            c.dupacks += 1;
            f.dupacks = f.dupacks.saturating_add(1);
            f.cnt_dupacks = f.cnt_dupacks.wrapping_add(1);
            if f.dupacks == DUPACK_THRESHOLD && !f.has(F_RECOVERY) {
                // RFC 6582 3.2 steps 1-2: remember the highest sequence sent, retransmit.
                f.flags |= F_RECOVERY;
                // Never below a recover point left by a go-back (see the ACK check above).
                let nxt = f.snd_nxt();
                if seq_lt(f.recover, nxt) || !seq_lt(f.snd_una, f.recover) {
                    f.recover = nxt;
                }
                if !f.has(F_SACK) {
                    v |= V_FAST_RETX;
                }
            }
        }
    } else if !seq_lt(seg.ack, f.snd_una) {
        // "If the ACK acks something not yet sent (SEG.ACK > SND.NXT) then send an ACK,
        // drop the segment, and return."
        c.ack_unsent += 1;
        return V_ACK;
    }
    if f.has(F_SACK) {
        let blocks = seg.sack.is_some_and(|b| !b.is_empty());
        if blocks && f.tx_sent > 0 {
            v |= V_SACK;
            f.flags |= F_SCOREBOARD;
        } else if !blocks && acked != 0 && f.has(F_SCOREBOARD) {
            // The holes are filled: one last report lets the scoreboard empty itself
            // (and stop its reordering timer).
            v |= V_SACK;
            f.flags &= !F_SCOREBOARD;
        }
    }
    // Window update (an old ACK, SEG.ACK < SND.UNA, leaves the window alone).
    if !seq_lt(seg.ack, f.snd_una) {
        let wnd = (seg.window as u32) << f.snd_wscale;
        // (Until 2026-11-22 a window reopening without an acknowledgment rewound
        // SND.NXT to resend a discarded one-byte probe. Probes carry no data now, and the
        // rewind misfired on a reordered old ACK with the window of its time: hundreds of
        // KB the peer had already acknowledged counted as unsent, its ACKs for them as
        // "acknowledging unsent data", and our ACKs, sequenced from the rewound point,
        // as old duplicates to the peer: a deadlock over veth with 25 % reordering.
        // Data sent before a window closed and discarded is the RTO's to repair.)
        if wnd > f.snd_wnd && f.tx_avail > 0 {
            v |= V_TX;
        }
        if f.snd_wnd == 0 && wnd > 0 && f.tx_sent == 0 {
            // The window opened: zero-window probing is over.
            f.rto_backoff = 0;
        }
        f.snd_wnd = wnd;
    }

    // ---- payload and FIN
    let fin = seg.flags.contains(TcpFlags::FIN);
    if seg.ce && f.flags2 & F2_ECN != 0 && (!payload.is_empty() || fin) {
        // RFC 8257 3.2: echo CE with ECE (on the next segment we send: this batch's ACK).
        f.flags2 |= F2_ECE_PENDING;
    }
    if payload.is_empty() && !fin {
        // RFC 9293 3.10.7.4: an unacceptable segment (here: a zero-length one below
        // RCV.NXT, e.g. a keepalive probe) is answered with an ACK.
        if seq_lt(seg.seq, f.rcv_nxt) {
            return v | V_ACK;
        }
        return v;
    }
    if f.has(F_RX_FIN) {
        // Retransmission after the peer's FIN: re-ACK.
        c.duplicates += 1;
        return v | V_ACK;
    }
    let mut seq = seg.seq;
    let mut data = payload;
    // Trim what we already have (RFC 9293 3.10.7.4 "trim off any portions ... outside the window").
    if seq_lt(seq, f.rcv_nxt) {
        let skip = f.rcv_nxt.wrapping_sub(seq) as usize;
        if skip > data.len() || (skip == data.len() && !fin) {
            c.duplicates += 1;
            return v | V_ACK;
        }
        data = &data[skip..];
        seq = f.rcv_nxt;
    }
    if seq == f.rcv_nxt {
        let take = (data.len() as u32).min(f.rx_avail);
        if take > 0 {
            if !mem.write_ring(
                f.rx_base as u64,
                f.rx_size(),
                f.rx_head,
                &data[..take as usize],
            ) {
                c.ring_errors += 1;
                return v;
            }
            advance_rx(f, take);
            c.bytes_in_order += take as u64;
            v |= V_DELIVERED;
            // Held intervals the new data reaches are already in the ring at their final
            // positions: reaching them just moves rcv_nxt past them.
            if f.ooo_count > 0 {
                let to = ooo.advance(f.rcv_nxt);
                let extra = to.wrapping_sub(f.rcv_nxt);
                if extra > 0 {
                    advance_rx(f, extra);
                    c.bytes_in_order += extra as u64;
                }
                f.ooo_count = ooo.n;
                f.ooo_start = ooo.iv[0].0;
            }
        }
        if take < data.len() as u32 {
            c.window_dropped += (data.len() as u32 - take) as u64;
        } else if fin && f.ooo_count == 0 {
            f.rcv_nxt = f.rcv_nxt.wrapping_add(1);
            f.flags |= F_RX_FIN;
            v |= V_PEER_FIN | V_DELIVERED;
        }
        return v | V_ACK;
    }

    // Out of order (seq > rcv_nxt): keep what fits the window; always answer with an
    // immediate (duplicate) ACK, which carries SACK blocks when negotiated.
    let off = seq.wrapping_sub(f.rcv_nxt);
    let room = f.rx_avail.saturating_sub(off);
    let len = (data.len() as u32).min(room);
    if len < data.len() as u32 {
        c.window_dropped += (data.len() as u32 - len) as u64;
    }
    if len == 0 {
        return v | V_ACK;
    }
    if ooo.insert(seq, seq.wrapping_add(len)) {
        let pos = f.rx_head.wrapping_add(off);
        if !mem.write_ring(f.rx_base as u64, f.rx_size(), pos, &data[..len as usize]) {
            c.ring_errors += 1;
        }
        f.ooo_count = ooo.n;
        f.ooo_start = ooo.iv[0].0;
        c.ooo_kept += 1;
    } else {
        c.ooo_dropped += 1;
    }
    v | V_ACK
}

#[inline]
fn advance_rx(f: &mut FlowState, n: u32) {
    f.rx_head = f.rx_head.wrapping_add(n) & (f.rx_size() - 1);
    f.rx_avail -= n;
    f.rcv_nxt = f.rcv_nxt.wrapping_add(n);
    f.rx_pending += n;
}

/// RFC 6298 2.3: SRTT and RTTVAR from a new sample (microseconds).
pub fn rtt_sample(f: &mut FlowState, r: u32) {
    if f.srtt_us == 0 {
        f.srtt_us = r;
        f.rttvar_us = r / 2;
    } else {
        let err = f.srtt_us.abs_diff(r);
        f.rttvar_us = f.rttvar_us - f.rttvar_us / 4 + err / 4;
        f.srtt_us = f.srtt_us - f.srtt_us / 8 + r / 8;
    }
}

/// RFC 6298 2.4 retransmission timeout, clamped to `[min_us, max_us]`, before backoff.
pub fn rto_us(f: &FlowState, min_us: u32, max_us: u32, initial_us: u32) -> u32 {
    if f.srtt_us == 0 {
        return initial_us;
    }
    f.srtt_us
        .saturating_add(f.rttvar_us.saturating_mul(4).max(1_000))
        .clamp(min_us, max_us)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tsval_is_continuous_across_the_u32_microsecond_wrap() {
        let at_us = |us: u64| tsval(Instant::from_nanos(us * 1_000));
        let wrap = 1u64 << 32;
        assert_eq!(at_us(wrap - 16).wrapping_add(1), at_us(wrap));
        assert_eq!(at_us(wrap + 16 * 1000), at_us(wrap) + 1000);
        // TSval itself wraps only after 2^32 ticks of 16 µs (19 hours).
        assert_eq!(at_us(16 * (1u64 << 32)), 0);
        assert_eq!(at_us(16 * ((1u64 << 32) - 1)), u32::MAX);
    }
}
