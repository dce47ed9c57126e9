//! Segment generation: Ethernet + IPv4 + TCP headers from per-flow fields, emitted
//! straight into a transmit frame, payload copied once from the application's transmit
//! ring, full IPv4 and TCP checksums (peers drop partial ones; see DESIGN section 7).

use std::net::Ipv4Addr;

use crate::appmem::AppMem;
use crate::flow::{FlowState, F_TS};
use crate::wire::{
    self, EtherType, EthernetAddress, EthernetRepr, Ipv4Repr, SackBlocks, TcpFlags, TcpRepr,
};

/// Ethernet + IPv4 header bytes in front of every TCP header we send.
pub const L2L3_LEN: usize = wire::ethernet::HEADER_LEN + wire::ipv4::HEADER_LEN;
/// IP ECN codepoint ECT(0) (RFC 3168 5): the sender is ECN-capable.
pub const ECT0: u8 = 0b10;
/// IP ECN codepoint CE: congestion experienced.
pub const CE: u8 = 0b11;
/// TCP header length with the timestamp option (NOP NOP TS): the common case.
pub const TCP_TS_HEADER_LEN: usize = 32;

/// Default IP TTL, as Linux uses (`net.ipv4.ip_default_ttl`).
pub const TTL: u8 = 64;

/// The window field to advertise for `f`: free receive space, scaled, clamped.
#[inline]
pub fn window_field(f: &FlowState) -> u16 {
    (f.rx_avail >> f.rcv_wscale).min(u16::MAX as u32) as u16
}

/// Build one segment of `f` into `buf`: flags `flags`, sequence `seq`, and `len` payload
/// bytes taken from the transmit ring at ring position `ring_pos`, and SACK blocks
/// `sack` if the flow holds out-of-order data, IP ECN codepoint `ecn` (ECT(0) on new
/// data of ECN flows, 0 otherwise). Returns the frame
/// length, or None if `buf` is too small or the ring read was refused.
#[allow(clippy::too_many_arguments)]
pub fn build_segment(
    f: &FlowState,
    local_mac: EthernetAddress,
    local_ip: Ipv4Addr,
    ident: u16,
    ts_now: u32,
    flags: TcpFlags,
    seq: u32,
    ring_pos: u32,
    len: usize,
    mem: Option<&AppMem>,
    sack: Option<&SackBlocks>,
    ecn: u8,
    buf: &mut [u8],
) -> Option<usize> {
    let remote_ip = Ipv4Addr::from(f.remote_ip);
    let tcp = TcpRepr {
        src_port: f.local_port,
        dst_port: f.remote_port,
        seq_number: seq,
        ack_number: Some(f.rcv_nxt),
        flags: flags | TcpFlags::ACK,
        window_len: window_field(f),
        max_seg_size: None,
        window_scale: None,
        sack_permitted: false,
        sack_ranges: sack.copied().unwrap_or_default(),
        timestamp: if f.has(F_TS) {
            Some((ts_now, f.ts_recent))
        } else {
            None
        },
        payload_len: len,
    };
    let tcp_hlen = tcp.header_len();
    let total = L2L3_LEN + tcp_hlen + len;
    if buf.len() < total {
        return None;
    }
    EthernetRepr {
        src_addr: local_mac,
        dst_addr: EthernetAddress(f.remote_mac),
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut buf[..wire::ethernet::HEADER_LEN])
    .ok()?;
    Ipv4Repr {
        src_addr: local_ip,
        dst_addr: remote_ip,
        protocol: wire::ipv4::PROTO_TCP,
        payload_len: tcp_hlen + len,
        ttl: TTL,
        ecn,
        ident,
        dont_frag: true,
    }
    .emit(&mut buf[wire::ethernet::HEADER_LEN..L2L3_LEN])
    .ok()?;
    let seg = &mut buf[L2L3_LEN..total];
    tcp.emit_header(seg).ok()?;
    if len > 0 {
        let mem = mem?;
        if !mem.read_ring(f.tx_base as u64, f.tx_size(), ring_pos, &mut seg[tcp_hlen..]) {
            return None;
        }
    }
    wire::tcp::fill_checksum(seg, local_ip, remote_ip);
    Some(total)
}
