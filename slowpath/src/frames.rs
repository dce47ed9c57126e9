//! Frames the slow path builds: handshake segments, RSTs, ACKs, ARP.

use std::net::Ipv4Addr;

use tas_fastpath::wire::{
    self, ArpOperation, ArpRepr, EtherType, EthernetAddress, EthernetRepr, Ipv4Repr, TcpRepr,
};

/// An Ethernet + IPv4 + TCP frame with no payload.
pub fn tcp_frame(
    src_mac: EthernetAddress,
    dst_mac: EthernetAddress,
    src_ip: Ipv4Addr,
    dst_ip: Ipv4Addr,
    tcp: &TcpRepr,
) -> Box<[u8]> {
    let tcp_len = tcp.header_len();
    let total = wire::ethernet::HEADER_LEN + wire::ipv4::HEADER_LEN + tcp_len;
    let mut buf = vec![0u8; total];
    EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EtherType::Ipv4 }
        .emit(&mut buf[..14])
        .expect("fits");
    Ipv4Repr {
        src_addr: src_ip,
        dst_addr: dst_ip,
        protocol: wire::ipv4::PROTO_TCP,
        payload_len: tcp_len,
        ttl: tas_fastpath::tx::TTL,
        ecn: 0,
        ident: 0,
        dont_frag: true,
    }
    .emit(&mut buf[14..34])
    .expect("fits");
    tcp.emit(&mut buf[34..], src_ip, dst_ip, &[]).expect("fits");
    buf.into_boxed_slice()
}

/// An ARP frame.
pub fn arp_frame(src_mac: EthernetAddress, dst_mac: EthernetAddress, arp: &ArpRepr) -> Box<[u8]> {
    let mut buf = vec![0u8; wire::ethernet::HEADER_LEN + wire::arp::LEN];
    EthernetRepr { src_addr: src_mac, dst_addr: dst_mac, ethertype: EtherType::Arp }
        .emit(&mut buf[..14])
        .expect("fits");
    arp.emit(&mut buf[14..]).expect("fits");
    buf.into_boxed_slice()
}

/// An ARP request for `target` from `(mac, ip)`.
pub fn arp_request(mac: EthernetAddress, ip: Ipv4Addr, target: Ipv4Addr) -> Box<[u8]> {
    arp_frame(
        mac,
        EthernetAddress::BROADCAST,
        &ArpRepr {
            operation: ArpOperation::Request,
            source_hardware_addr: mac,
            source_protocol_addr: ip,
            target_hardware_addr: EthernetAddress([0; 6]),
            target_protocol_addr: target,
        },
    )
}
