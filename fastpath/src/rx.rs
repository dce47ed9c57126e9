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
use crate::wire::TcpFlags;

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
}

/// Send an ACK for this flow at the end of the batch.
pub const V_ACK: u32 = 1 << 0;
/// The flow may transmit now (space was acked or the window opened): schedule it.
pub const V_TX: u32 = 1 << 1;
/// The peer's FIN was consumed: report to the slow path.
pub const V_PEER_FIN: u32 = 1 << 2;
/// Our FIN was acknowledged: report to the slow path.
pub const V_FIN_ACKED: u32 = 1 << 3;
/// Three duplicate ACKs: retransmit from `snd_una`.
pub const V_FAST_RETX: u32 = 1 << 4;
/// Not for the fast path (SYN/RST/no ACK): hand the frame to the slow path untouched.
pub const V_EXCEPTION: u32 = 1 << 5;
/// New in-order payload was delivered (an event to the app is owed).
pub const V_DELIVERED: u32 = 1 << 6;

/// Bitset of `V_*` values.
pub type RxVerdict = u32;

/// Receive-side counters (per core, plain integers: one writer).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RxCounters {
    /// Payload bytes delivered in order.
    pub bytes_in_order: u64,
    /// Segments kept out of order.
    pub ooo_kept: u64,
    /// Segments dropped because they fell outside the one kept interval.
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
}

/// Duplicate ACKs that trigger a fast retransmit (RFC 5681).
pub const DUPACK_THRESHOLD: u8 = 3;

#[inline]
fn seq_lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

/// Timestamp clock: TSval ticks are 16 µs (2^4), so 2^31 ticks last 9.5 hours (PAWS
/// stays sound for idle connections that long) while RTT samples keep a resolution
/// fine enough for data-centre round trips.
pub const TS_TICK_SHIFT: u32 = 4;

/// Our TSval at `now_us`.
#[inline]
pub fn tsval(now_us: u32) -> u32 {
    now_us >> TS_TICK_SHIFT
}

/// Process one segment of an established flow. `payload` is the TCP payload.
pub fn on_segment(
    f: &mut FlowState,
    seg: &SegInfo,
    payload: &[u8],
    mem: &AppMem,
    now_us: u32,
    c: &mut RxCounters,
) -> RxVerdict {
    if seg.flags.contains(TcpFlags::SYN) || seg.flags.contains(TcpFlags::RST) || !seg.flags.contains(TcpFlags::ACK) {
        return V_EXCEPTION;
    }
    let mut v = 0;

    // ---- ACK field (RFC 9293 3.10.7.4, ESTABLISHED: "If SND.UNA < SEG.ACK =< SND.NXT ...")
    let in_flight = f.snd_nxt().wrapping_sub(f.snd_una);
    let acked = seg.ack.wrapping_sub(f.snd_una);
    if acked != 0 && acked <= in_flight {
        let data_acked = acked.min(f.tx_sent);
        f.tx_head = (f.tx_head.wrapping_add(data_acked)) & (f.tx_size - 1);
        f.tx_sent -= data_acked;
        f.snd_una = seg.ack;
        f.tx_freed_pending += data_acked;
        f.cnt_acked = f.cnt_acked.wrapping_add(data_acked);
        f.dupacks = 0;
        f.rto_backoff = 0;
        f.progress_us = now_us;
        if acked > data_acked && f.has(F_TX_FIN_SENT) && !f.has(F_TX_FIN_ACKED) {
            f.flags |= F_TX_FIN_ACKED;
            v |= V_FIN_ACKED;
        }
        if let (true, Some((_, ecr))) = (f.has(F_TS), seg.ts) {
            if ecr != 0 {
                let sample = (tsval(now_us).wrapping_sub(ecr) << TS_TICK_SHIFT).max(1);
                if sample < 60_000_000 {
                    rtt_sample(f, sample);
                }
            }
        }
        v |= V_TX;
    } else if acked == 0 {
        // RFC 5681 duplicate ACK: no data, no window change, data outstanding.
        let wnd = (seg.window as u32) << f.snd_wscale;
        if payload.is_empty() && !seg.flags.contains(TcpFlags::FIN) && f.tx_sent > 0 && wnd == f.snd_wnd {
            c.dupacks += 1;
            f.dupacks = f.dupacks.saturating_add(1);
            if f.dupacks == DUPACK_THRESHOLD {
                v |= V_FAST_RETX;
            }
        }
    } else if !seq_lt(seg.ack, f.snd_una) {
        // "If the ACK acks something not yet sent (SEG.ACK > SND.NXT) then send an ACK,
        // drop the segment, and return."
        c.ack_unsent += 1;
        return V_ACK;
    }
    // Window update (an old ACK, SEG.ACK < SND.UNA, leaves the window alone).
    if !seq_lt(seg.ack, f.snd_una) {
        let wnd = (seg.window as u32) << f.snd_wscale;
        if wnd > f.snd_wnd && f.tx_avail > 0 {
            v |= V_TX;
        }
        f.snd_wnd = wnd;
    }

    // ---- payload and FIN
    let fin = seg.flags.contains(TcpFlags::FIN);
    if payload.is_empty() && !fin {
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
    if f.has(F_TS) {
        if let Some((val, _)) = seg.ts {
            // RFC 7323 4.3: update TS.Recent if the segment covers Last.ACK.sent.
            if seq == f.rcv_nxt {
                f.ts_recent = val;
            }
        }
    }

    if seq == f.rcv_nxt {
        let take = (data.len() as u32).min(f.rx_avail);
        if take > 0 {
            if !mem.write_ring(f.rx_base, f.rx_size, f.rx_head, &data[..take as usize]) {
                c.ring_errors += 1;
                return v;
            }
            advance_rx(f, take);
            c.bytes_in_order += take as u64;
            v |= V_DELIVERED;
            // The gap may now be filled: the kept interval is already in the ring at its
            // final position, so reaching it just moves rcv_nxt past it.
            if f.ooo_len > 0 {
                let ooo_end = f.ooo_start.wrapping_add(f.ooo_len);
                if !seq_lt(f.rcv_nxt, ooo_end) {
                    f.ooo_len = 0; // wholly covered by what just arrived
                } else if !seq_lt(f.rcv_nxt, f.ooo_start) {
                    let extra = ooo_end.wrapping_sub(f.rcv_nxt);
                    advance_rx(f, extra);
                    c.bytes_in_order += extra as u64;
                    f.ooo_len = 0;
                }
            }
        }
        if take < data.len() as u32 {
            c.window_dropped += (data.len() as u32 - take) as u64;
        } else if fin && f.ooo_len == 0 {
            f.rcv_nxt = f.rcv_nxt.wrapping_add(1);
            f.flags |= F_RX_FIN;
            v |= V_PEER_FIN | V_DELIVERED;
        }
        return v | V_ACK;
    }

    // Out of order (seq > rcv_nxt): keep it if it fits the window and extends or starts
    // the kept interval; always answer with an immediate (duplicate) ACK.
    let off = seq.wrapping_sub(f.rcv_nxt);
    let len = data.len() as u32;
    if len == 0 || off.saturating_add(len) > f.rx_avail {
        c.window_dropped += len as u64;
        return v | V_ACK;
    }
    let keep = if f.ooo_len == 0 {
        f.ooo_start = seq;
        f.ooo_len = len;
        true
    } else {
        let end = f.ooo_start.wrapping_add(f.ooo_len);
        let seg_end = seq.wrapping_add(len);
        if !seq_lt(seg_end, f.ooo_start) && !seq_lt(end, seq) {
            // Overlaps or touches the interval: merge.
            let start = if seq_lt(seq, f.ooo_start) { seq } else { f.ooo_start };
            let new_end = if seq_lt(end, seg_end) { seg_end } else { end };
            f.ooo_start = start;
            f.ooo_len = new_end.wrapping_sub(start);
            true
        } else {
            false
        }
    };
    if keep {
        let pos = f.rx_head.wrapping_add(off);
        if !mem.write_ring(f.rx_base, f.rx_size, pos, data) {
            c.ring_errors += 1;
        }
        c.ooo_kept += 1;
    } else {
        c.ooo_dropped += 1;
    }
    v | V_ACK
}

#[inline]
fn advance_rx(f: &mut FlowState, n: u32) {
    f.rx_head = f.rx_head.wrapping_add(n) & (f.rx_size - 1);
    f.rx_avail -= n;
    f.rcv_nxt = f.rcv_nxt.wrapping_add(n);
    f.rx_pending += n;
    f.cnt_rx_bytes = f.cnt_rx_bytes.wrapping_add(n);
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
    f.srtt_us.saturating_add(f.rttvar_us.saturating_mul(4).max(1_000)).clamp(min_us, max_us)
}
