//! Per-flow fast-path state ([`FlowState`], exactly two cache lines) and the per-core
//! [`FlowTable`] that finds it by 4-tuple.
//!
//! Only established connections live here; everything rare (handshake state, SACK
//! scoreboards, congestion-control history) lives in the slow path. `docs/flowstate.md`
//! documents every field.

use core::mem::{align_of, size_of};

/// Flow flag: the slot holds a live flow.
pub const F_ACTIVE: u16 = 1 << 0;
/// Flow flag: TCP timestamps (RFC 7323) were negotiated.
pub const F_TS: u16 = 1 << 1;
/// Flow flag: the peer's FIN was received in order (`rcv_nxt` counts it).
pub const F_RX_FIN: u16 = 1 << 2;
/// Flow flag: the application shut down its direction; send FIN after queued data.
pub const F_TX_FIN_PENDING: u16 = 1 << 3;
/// Flow flag: our FIN is in flight (`snd_nxt = snd_una + tx_sent + 1`).
pub const F_TX_FIN_SENT: u16 = 1 << 4;
/// Flow flag: our FIN was acknowledged.
pub const F_TX_FIN_ACKED: u16 = 1 << 5;
/// Flow flag: an ACK is owed at the end of this batch.
pub const F_ACK_PENDING: u16 = 1 << 6;
/// Flow flag: the flow is on the queue manager's ready list.
pub const F_IN_TXQ: u16 = 1 << 7;
/// Flow flag: the flow is on this batch's touched list.
pub const F_TOUCHED: u16 = 1 << 8;
/// Flow flag: send a one-byte window probe even though the peer's window is zero.
pub const F_PROBE: u16 = 1 << 9;
/// Flow flag: the peer's FIN was reported to the slow path.
pub const F_FIN_REPORTED: u16 = 1 << 10;
/// Flow flag: SACK (RFC 2018) was negotiated.
pub const F_SACK: u16 = 1 << 11;
/// Flow flag: in fast recovery (RFC 6582 NewReno) until `recover` is acknowledged.
pub const F_RECOVERY: u16 = 1 << 12;
/// Flow flag: a tail-loss probe was sent since the last forward progress.
pub const F_TLP: u16 = 1 << 13;
/// Flow flag: send keepalive probes when idle (RFC 9293 3.8.4; off unless configured).
pub const F_KEEPALIVE: u16 = 1 << 14;
/// Flow flag: the slow path's SACK scoreboard holds state for this flow, so cumulative
/// ACKs are reported to it until one arrives without SACK blocks.
pub const F_SCOREBOARD: u16 = 1 << 15;

/// The state of one established connection on its owning fast-path core.
///
/// Cache line 0 holds what every received segment touches; line 1 what transmission
/// touches. Sequence numbers are RFC 9293 names. Ring positions are offsets inside the
/// connection's ring (`0..size`), sizes are powers of two.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FlowState {
    // ---- line 0: identity and receive side -------------------------------------------
    /// Peer IPv4 address (host order).
    pub remote_ip: u32,
    /// Our port.
    pub local_port: u16,
    /// Peer port.
    pub remote_port: u16,
    /// Next sequence number expected from the peer.
    pub rcv_nxt: u32,
    /// Free bytes in the receive ring: the window we can offer.
    pub rx_avail: u32,
    /// Ring position where the byte with sequence `rcv_nxt` goes.
    pub rx_head: u32,
    /// ECN-echoed bytes: bytes acknowledged by ACKs carrying ECE (wrapping counter;
    /// with `cnt_acked` the slow path's DCTCP computes the marked fraction).
    pub cnt_ecn: u32,
    /// Byte offset of the receive ring inside the app region (regions are < 4 GiB).
    pub rx_base: u32,
    /// Start sequence of the lowest kept out-of-order interval (valid if `ooo_count > 0`).
    pub ooo_start: u32,
    /// Number of out-of-order intervals kept (their list lives in the core's
    /// [`OooSet`] side table: rare state stays out of the two hot lines).
    pub ooo_count: u8,
    /// `F2_*` flags (ECN state, congestion-control reports).
    pub flags2: u8,
    /// Duplicate ACKs received (wrapping counter for congestion control).
    pub cnt_dupacks: u16,
    /// Peer's most recent TSval, echoed in our TSecr.
    pub ts_recent: u32,
    /// Oldest unacknowledged sequence number.
    pub snd_una: u32,
    /// Peer's advertised window in bytes (already scaled).
    pub snd_wnd: u32,
    /// Fast recovery ends when this sequence number is acknowledged (RFC 6582 `recover`).
    pub recover: u32,
    /// Index of the owning application context on this core.
    pub app: u16,
    /// `F_*` flags.
    pub flags: u16,
    /// The application's connection slot.
    pub conn: u32,
    /// Consecutive duplicate ACKs.
    pub dupacks: u8,
    /// Shift applied to the peer's window field (its window scale).
    pub snd_wscale: u8,
    /// Shift applied to our window field (our window scale).
    pub rcv_wscale: u8,
    /// Retransmission timeouts in a row (exponential backoff exponent).
    pub rto_backoff: u8,
    // ---- line 1: transmit side -----------------------------------------------------
    /// Byte offset of the transmit ring inside the app region.
    pub tx_base: u32,
    /// Congestion window in bytes: at most this much may be unacknowledged
    /// (0 = no limit). Set by the slow path's congestion control.
    pub cwnd: u32,
    /// Ring position of the byte with sequence `snd_una`.
    pub tx_head: u32,
    /// Bytes sent and not yet acknowledged (excluding a FIN).
    pub tx_sent: u32,
    /// Bytes in the ring not yet sent.
    pub tx_avail: u32,
    /// Peer's (or the gateway's) Ethernet address.
    pub remote_mac: [u8; 6],
    /// Peer's maximum segment size (payload bytes per segment we send).
    pub mss: u16,
    /// Smoothed RTT in microseconds (0 = no sample yet).
    pub srtt_us: u32,
    /// RTT variation in microseconds.
    pub rttvar_us: u32,
    /// Time (µs, wrapping) of the last forward progress or of the first unacked send.
    pub progress_us: u32,
    /// Bytes acknowledged since the slow path last read the counters.
    pub cnt_acked: u32,
    /// Time (µs, wrapping) of the last congestion-control report to the slow path.
    pub cc_last_us: u32,
    /// Bytes delivered to the ring in this batch and not yet announced to the app.
    pub rx_pending: u32,
    /// Bytes freed in the transmit ring in this batch and not yet announced.
    pub tx_freed_pending: u32,
    /// Time (µs, wrapping) a segment was last received from the peer (keepalive).
    pub heard_us: u32,
    /// Retransmission events (timeouts and fast retransmits).
    pub cnt_retx: u16,
    /// log2 of the receive ring size (rings are powers of two, at most 2^31 bytes).
    pub rx_size_log2: u8,
    /// log2 of the transmit ring size.
    pub tx_size_log2: u8,
}

const _: () = assert!(
    size_of::<FlowState>() == 128,
    "FlowState must be exactly two cache lines"
);
const _: () = assert!(align_of::<FlowState>() == 64);

/// Flow flag 2: ECN (RFC 3168) was negotiated: data segments are sent ECT(0), ECE on
/// ACKs is counted, CE on received data is echoed.
pub const F2_ECN: u8 = 1 << 0;
/// Flow flag 2: CE-marked data arrived since our last segment: set ECE on the next
/// one (DCTCP receiver, RFC 8257 3.2, approximated per batch: see docs/congestion.md).
pub const F2_ECE_PENDING: u8 = 1 << 1;
/// Flow flag 2: an ACK with ECE arrived: set CWR on the next new data segment
/// (RFC 3168 6.1.2), so a classic ECN receiver stops repeating ECE.
pub const F2_CWR_PENDING: u8 = 1 << 2;
/// Flow flag 2: the slow path runs congestion control for this flow: report the
/// counters to it once per control interval.
pub const F2_CC: u8 = 1 << 3;

impl FlowState {
    /// Receive ring size in bytes.
    #[inline]
    pub fn rx_size(&self) -> u32 {
        1u32 << (self.rx_size_log2 & 31)
    }
    /// Transmit ring size in bytes.
    #[inline]
    pub fn tx_size(&self) -> u32 {
        1u32 << (self.tx_size_log2 & 31)
    }
    /// log2 of a ring size for the `*_size_log2` fields (sizes are powers of two;
    /// anything else is rounded down, so the ring used is never larger than the one
    /// allocated).
    pub fn size_log2(size: u32) -> u8 {
        (31 - size.max(1).leading_zeros()) as u8
    }
    /// True if flag(s) `f` of `flags2` are all set.
    #[inline]
    pub fn has2(&self, f: u8) -> bool {
        self.flags2 & f == f
    }
    /// `snd_nxt`: the next new sequence number we will send.
    #[inline]
    pub fn snd_nxt(&self) -> u32 {
        // A FIN counts while in flight; once acknowledged, snd_una has moved past it.
        let fin_in_flight = self.flags & (F_TX_FIN_SENT | F_TX_FIN_ACKED) == F_TX_FIN_SENT;
        self.snd_una
            .wrapping_add(self.tx_sent)
            .wrapping_add(fin_in_flight as u32)
    }
    /// The lookup key of this flow.
    #[inline]
    pub fn key(&self) -> FlowKey {
        FlowKey::new(self.remote_ip, self.remote_port, self.local_port)
    }
    /// True if flag(s) `f` are all set.
    #[inline]
    pub fn has(&self, f: u16) -> bool {
        self.flags & f == f
    }
}

/// Out-of-order intervals a flow may keep: Linux keeps an rbtree of any size; four
/// intervals cover the common loss patterns (one to three holes per window) while the
/// bookkeeping stays a fixed 36 bytes per flow. A segment that would need a fifth
/// interval is dropped (the peer retransmits it), never the data already held.
pub const MAX_OOO: usize = 16;

/// The out-of-order intervals of one flow, sorted, disjoint and not touching. Their
/// bytes are already in the receive ring at their final positions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OooSet {
    /// `(start, end)` sequence numbers, end exclusive; the first `n` are valid.
    pub iv: [(u32, u32); MAX_OOO],
    /// Number of intervals.
    pub n: u8,
    /// Index of the interval changed last (it goes first in SACK blocks, RFC 2018 4).
    pub last: u8,
}

#[inline]
fn lt(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) < 0
}

impl OooSet {
    /// Add `[s, e)`, merging with intervals it overlaps or touches. False if that would
    /// need more than [`MAX_OOO`] intervals (nothing changes then).
    pub fn insert(&mut self, s: u32, e: u32) -> bool {
        let (mut ns, mut ne) = (s, e);
        let mut out = [(0u32, 0u32); MAX_OOO];
        let mut k = 0;
        for &(a, b) in &self.iv[..self.n as usize] {
            if lt(b, ns) || lt(ne, a) {
                if k == MAX_OOO {
                    return false;
                }
                out[k] = (a, b);
                k += 1;
            } else {
                if lt(a, ns) {
                    ns = a;
                }
                if lt(ne, b) {
                    ne = b;
                }
            }
        }
        if k == MAX_OOO {
            return false;
        }
        // Insert the merged interval in order.
        let mut pos = k;
        while pos > 0 && lt(ns, out[pos - 1].0) {
            out[pos] = out[pos - 1];
            pos -= 1;
        }
        out[pos] = (ns, ne);
        self.iv = out;
        self.n = (k + 1) as u8;
        self.last = pos as u8;
        true
    }

    /// Remove the intervals that start at or before `rcv_nxt`; returns the new `rcv_nxt`
    /// (the end of the data now contiguous).
    pub fn advance(&mut self, mut rcv_nxt: u32) -> u32 {
        let mut drop = 0;
        for &(a, b) in &self.iv[..self.n as usize] {
            if lt(rcv_nxt, a) {
                break;
            }
            if lt(rcv_nxt, b) {
                rcv_nxt = b;
            }
            drop += 1;
        }
        if drop > 0 {
            self.iv.copy_within(drop..self.n as usize, 0);
            self.n -= drop as u8;
            self.last = 0;
        }
        rcv_nxt
    }

    /// SACK blocks to advertise, the most recently changed first (at most `max`).
    pub fn sack_blocks(&self, max: usize) -> crate::wire::SackBlocks {
        let mut b = crate::wire::SackBlocks::default();
        let n = self.n as usize;
        if n == 0 {
            return b;
        }
        let last = (self.last as usize).min(n - 1);
        b.push(self.iv[last]);
        for (i, &(s, e)) in self.iv[..n].iter().enumerate() {
            if i != last && b.len() < max {
                b.push((s, e));
            }
        }
        b
    }

    /// Forget everything.
    pub fn clear(&mut self) {
        self.n = 0;
        self.last = 0;
    }
}

/// A flow's identity as one 64-bit word: peer address, peer port, local port (the local
/// address is the service's single address). Never zero for a valid flow, since peer
/// address 0.0.0.0 is not a valid source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey(pub u64);

impl FlowKey {
    /// Pack a key.
    #[inline]
    pub fn new(remote_ip: u32, remote_port: u16, local_port: u16) -> Self {
        FlowKey((remote_ip as u64) << 32 | (remote_port as u64) << 16 | local_port as u64)
    }
}

const EMPTY: u64 = 0;

/// Errors from flow-table updates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FlowTableError {
    /// Index outside the table.
    #[error("flow index out of range")]
    BadIndex,
    /// The slot is already in use.
    #[error("flow slot in use")]
    SlotBusy,
    /// A flow with the same 4-tuple exists.
    #[error("duplicate 4-tuple")]
    Duplicate,
    /// Key 0 is reserved.
    #[error("invalid key")]
    InvalidKey,
}

/// One index bucket: a flow key and the slot of its [`FlowState`].
#[derive(Debug, Clone, Copy)]
#[repr(C, align(16))]
struct Bucket {
    key: u64,
    slot: u32,
}

/// The per-core flow table: a fixed array of [`FlowState`] slots plus an open-addressing
/// index (linear probing, backward-shift deletion, no tombstones) from [`FlowKey`] to
/// slot. Sized at creation; lookups and updates never allocate.
#[derive(Debug)]
pub struct FlowTable {
    flows: Vec<FlowState>,
    /// The index: key and slot side by side, so a probe touches one cache line
    /// (16-byte buckets, four per line).
    index: Vec<Bucket>,
    mask: usize,
    seed: u64,
    len: usize,
}

impl FlowTable {
    /// A table for up to `capacity` flows (the index gets twice that, rounded up to a
    /// power of two, so probes stay short at full load).
    pub fn new(capacity: u32, seed: u64) -> Self {
        let n = (capacity as usize * 2).next_power_of_two().max(16);
        FlowTable {
            flows: huge_page_vec(FlowState::default(), capacity as usize),
            index: huge_page_vec(
                Bucket {
                    key: EMPTY,
                    slot: 0,
                },
                n,
            ),
            mask: n - 1,
            seed: seed | 1,
            len: 0,
        }
    }

    /// Number of slots.
    pub fn capacity(&self) -> u32 {
        self.flows.len() as u32
    }
    /// Number of live flows.
    pub fn len(&self) -> usize {
        self.len
    }
    /// True if no flow is live.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    #[inline]
    fn bucket(&self, key: u64) -> usize {
        // Multiply-shift hashing with a per-table odd seed (not predictable by a peer).
        ((key ^ self.seed).wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) as usize & self.mask
    }

    /// Hint the CPU to fetch the index bucket of `key` (call for a whole batch first).
    #[inline]
    pub fn prefetch(&self, key: FlowKey) {
        let b = self.bucket(key.0);
        prefetch_read(&self.index[b]);
    }

    /// Find the slot of `key`.
    #[inline]
    pub fn lookup(&self, key: FlowKey) -> Option<u32> {
        let mut b = self.bucket(key.0);
        loop {
            let Bucket { key: k, slot } = self.index[b];
            if k == key.0 {
                return Some(slot);
            }
            if k == EMPTY {
                return None;
            }
            b = (b + 1) & self.mask;
        }
    }

    /// Install `state` at slot `idx` (chosen by the slow path) and index it.
    pub fn insert(&mut self, idx: u32, mut state: FlowState) -> Result<(), FlowTableError> {
        let slot = self
            .flows
            .get(idx as usize)
            .ok_or(FlowTableError::BadIndex)?;
        if slot.has(F_ACTIVE) {
            return Err(FlowTableError::SlotBusy);
        }
        let key = state.key();
        if key.0 == EMPTY {
            return Err(FlowTableError::InvalidKey);
        }
        if self.lookup(key).is_some() {
            return Err(FlowTableError::Duplicate);
        }
        let mut b = self.bucket(key.0);
        while self.index[b].key != EMPTY {
            b = (b + 1) & self.mask;
        }
        self.index[b] = Bucket {
            key: key.0,
            slot: idx,
        };
        state.flags |= F_ACTIVE;
        self.flows[idx as usize] = state;
        self.len += 1;
        Ok(())
    }

    /// Remove the flow at `idx`, returning its last state.
    pub fn remove(&mut self, idx: u32) -> Result<FlowState, FlowTableError> {
        let st = *self
            .flows
            .get(idx as usize)
            .ok_or(FlowTableError::BadIndex)?;
        if !st.has(F_ACTIVE) {
            return Err(FlowTableError::BadIndex);
        }
        let key = st.key().0;
        let mut b = self.bucket(key);
        while self.index[b].key != key {
            debug_assert_ne!(
                self.index[b].key, EMPTY,
                "indexed flow missing from the index"
            );
            b = (b + 1) & self.mask;
        }
        // Backward-shift deletion: pull later members of the probe run into the hole.
        let mut hole = b;
        let mut j = b;
        loop {
            j = (j + 1) & self.mask;
            let k = self.index[j].key;
            if k == EMPTY {
                break;
            }
            let home = self.bucket(k);
            // Move k into the hole if its home is not cyclically within (hole, j].
            let dist_j = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_j >= dist_hole {
                self.index[hole] = self.index[j];
                hole = j;
            }
        }
        self.index[hole].key = EMPTY;
        self.flows[idx as usize] = FlowState::default();
        self.len -= 1;
        Ok(st)
    }

    /// The flow at `idx` (live or not).
    #[inline]
    pub fn get(&self, idx: u32) -> Option<&FlowState> {
        self.flows.get(idx as usize)
    }
    /// Mutable access to the flow at `idx`.
    #[inline]
    pub fn get_mut(&mut self, idx: u32) -> Option<&mut FlowState> {
        self.flows.get_mut(idx as usize)
    }
    /// Hint the CPU to fetch both lines of the flow at `idx`.
    #[inline]
    pub fn prefetch_flow(&self, idx: u32) {
        if let Some(f) = self.flows.get(idx as usize) {
            prefetch_read(f);
            let second = &f.tx_base;
            prefetch_read(second);
        }
    }
    /// Iterate over live flows with their indices.
    pub fn iter(&self) -> impl Iterator<Item = (u32, &FlowState)> {
        self.flows
            .iter()
            .enumerate()
            .filter(|(_, f)| f.has(F_ACTIVE))
            .map(|(i, f)| (i as u32, f))
    }
}

use crate::sys::{huge_page_vec, prefetch_read};

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn flow(ip: u32, rport: u16, lport: u16) -> FlowState {
        FlowState {
            remote_ip: ip,
            remote_port: rport,
            local_port: lport,
            ..FlowState::default()
        }
    }

    #[test]
    fn layout() {
        assert_eq!(
            core::mem::offset_of!(FlowState, tx_base),
            64,
            "tx side starts line 1"
        );
        // The offsets docs/flowstate.md documents.
        assert_eq!(core::mem::offset_of!(FlowState, recover), 48);
        assert_eq!(core::mem::offset_of!(FlowState, conn), 56);
        assert_eq!(core::mem::offset_of!(FlowState, mss), 90);
        assert_eq!(core::mem::offset_of!(FlowState, heard_us), 120);
        assert_eq!(core::mem::offset_of!(FlowState, cnt_retx), 124);
        assert_eq!(core::mem::offset_of!(FlowState, cnt_ecn), 20);
        assert_eq!(core::mem::offset_of!(FlowState, ooo_count), 32);
        assert_eq!(core::mem::offset_of!(FlowState, flags2), 33);
        assert_eq!(core::mem::offset_of!(FlowState, cnt_dupacks), 34);
        assert_eq!(core::mem::offset_of!(FlowState, cwnd), 68);
        assert_eq!(core::mem::offset_of!(FlowState, cc_last_us), 108);
        assert_eq!(core::mem::offset_of!(FlowState, rx_size_log2), 126);
        assert_eq!(core::mem::offset_of!(FlowState, tx_size_log2), 127);
        let f = FlowState {
            rx_size_log2: FlowState::size_log2(256 * 1024),
            tx_size_log2: FlowState::size_log2(4096),
            ..FlowState::default()
        };
        assert_eq!((f.rx_size(), f.tx_size()), (256 * 1024, 4096));
        assert_eq!(FlowState::size_log2(6000), 12, "rounded down");
        assert_eq!(FlowState::size_log2(0), 0);
    }

    #[test]
    fn ooo_set_merges_orders_and_bounds() {
        let mut o = OooSet::default();
        assert!(o.insert(100, 200));
        assert!(o.insert(300, 400));
        assert!(o.insert(200, 250), "touching merges");
        assert_eq!(&o.iv[..o.n as usize], &[(100, 250), (300, 400)]);
        assert!(o.insert(500, 600) && o.insert(700, 800));
        // Fill the set: intervals at 2000, 2100, ... up to MAX_OOO in all.
        let extra: Vec<(u32, u32)> = (0..MAX_OOO as u32 - 4)
            .map(|i| (2000 + 100 * i, 2050 + 100 * i))
            .collect();
        for &(s, e) in &extra {
            assert!(o.insert(s, e));
        }
        assert!(
            !o.insert(9000, 9100),
            "an interval beyond MAX_OOO is refused"
        );
        assert!(o.insert(240, 320), "bridging two intervals frees a place");
        let mut want = vec![(100, 400), (500, 600), (700, 800)];
        want.extend_from_slice(&extra);
        assert_eq!(&o.iv[..o.n as usize], &want[..]);
        for _ in &extra {
            o.iv[o.n as usize - 1] = (0, 0);
            o.n -= 1;
        }
        assert_eq!(&o.iv[..o.n as usize], &[(100, 400), (500, 600), (700, 800)]);
        let sb = o.sack_blocks(3);
        assert_eq!(sb.as_slice()[0], (100, 400), "last changed first");
        assert_eq!(o.advance(50), 50, "gap before the first interval stays");
        assert_eq!(o.advance(100), 400);
        assert_eq!(&o.iv[..o.n as usize], &[(500, 600), (700, 800)]);
        assert_eq!(o.advance(650), 650);
        assert_eq!(&o.iv[..o.n as usize], &[(700, 800)]);
        // Sequence wrap-around.
        let mut w = OooSet::default();
        assert!(w.insert(u32::MAX - 10, 5));
        assert_eq!(w.advance(u32::MAX - 20), u32::MAX - 20);
        assert_eq!(w.advance(u32::MAX - 10), 5);
    }

    #[test]
    fn insert_lookup_remove() {
        let mut t = FlowTable::new(8, 42);
        t.insert(3, flow(0x0a000002, 5000, 80)).unwrap();
        assert_eq!(t.lookup(FlowKey::new(0x0a000002, 5000, 80)), Some(3));
        assert_eq!(t.lookup(FlowKey::new(0x0a000002, 5001, 80)), None);
        assert_eq!(t.insert(3, flow(1, 1, 1)), Err(FlowTableError::SlotBusy));
        assert_eq!(
            t.insert(4, flow(0x0a000002, 5000, 80)),
            Err(FlowTableError::Duplicate)
        );
        assert_eq!(t.insert(8, flow(1, 1, 1)), Err(FlowTableError::BadIndex));
        assert_eq!(t.insert(5, flow(0, 0, 0)), Err(FlowTableError::InvalidKey));
        assert_eq!(t.remove(3).unwrap().remote_port, 5000);
        assert_eq!(t.lookup(FlowKey::new(0x0a000002, 5000, 80)), None);
        assert!(t.remove(3).is_err());
        assert!(t.is_empty());
    }

    proptest! {
        /// The table agrees with a HashMap model under random inserts and removes,
        /// including long probe runs (a tiny table, many collisions).
        #[test]
        fn matches_model(ops in proptest::collection::vec((any::<bool>(), 0u32..32, 1u32..6, 0u16..4), 1..400)) {
            let mut t = FlowTable::new(32, 7);
            let mut model: HashMap<u64, u32> = HashMap::new();
            let mut by_slot: HashMap<u32, u64> = HashMap::new();
            for (ins, slot, ip, port) in ops {
                let f = flow(ip, port, 80);
                if ins {
                    let r = t.insert(slot, f);
                    if by_slot.contains_key(&slot) {
                        prop_assert_eq!(r, Err(FlowTableError::SlotBusy));
                    } else if model.contains_key(&f.key().0) {
                        prop_assert_eq!(r, Err(FlowTableError::Duplicate));
                    } else {
                        prop_assert!(r.is_ok());
                        model.insert(f.key().0, slot);
                        by_slot.insert(slot, f.key().0);
                    }
                } else if let Some(k) = by_slot.remove(&slot) {
                    prop_assert!(t.remove(slot).is_ok());
                    model.remove(&k);
                } else {
                    prop_assert!(t.remove(slot).is_err());
                }
                prop_assert_eq!(t.len(), model.len());
                for (k, s) in &model {
                    prop_assert_eq!(t.lookup(FlowKey(*k)), Some(*s));
                }
            }
        }
    }
}
