//! IPv4: the view never panics; the checksum check agrees with a reference computation;
//! a parsed header emits (without options) and parses back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tas_fastpath::wire::{Ipv4Packet, Ipv4Repr};

/// RFC 1071 over `data`, independent of the code under test.
fn reference_checksum_ok(header: &[u8]) -> bool {
    let mut sum: u32 = 0;
    for c in header.chunks(2) {
        sum += u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]));
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    sum == 0xffff
}

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = Ipv4Packet::new_checked(data) else { return };
    let _ = (
        packet.version(),
        packet.dscp(),
        packet.ecn(),
        packet.ident(),
        packet.dont_frag(),
        packet.more_frags(),
        packet.frag_offset(),
        packet.ttl(),
        packet.protocol(),
        packet.checksum(),
        packet.src_addr(),
        packet.dst_addr(),
        packet.options(),
    );
    let hl = packet.header_len();
    assert!(hl >= 20 && hl <= data.len());
    assert_eq!(packet.header().len(), hl);
    assert_eq!(packet.payload().len(), usize::from(packet.total_len()) - hl);
    assert_eq!(packet.verify_checksum(), reference_checksum_ok(&data[..hl]));
    let Ok(repr) = Ipv4Repr::parse(&packet, false) else { return };
    let mut out = vec![0u8; repr.total_len()];
    repr.emit(&mut out).expect("a parsed header emits");
    let emitted = Ipv4Packet::new_checked(&out[..]).expect("an emitted header is valid");
    assert!(emitted.verify_checksum());
    let again = Ipv4Repr::parse(&emitted, true).expect("an emitted header parses");
    assert_eq!(again, repr);
});
