//! ARP: the view never panics; a parsed packet emits and parses back unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tas_fastpath::wire::{ArpPacket, ArpRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(packet) = ArpPacket::new_checked(data) else { return };
    let _ = (
        packet.hardware_type(),
        packet.protocol_type(),
        packet.hardware_len(),
        packet.protocol_len(),
        packet.operation(),
        packet.source_hardware_addr(),
        packet.source_protocol_addr(),
        packet.target_hardware_addr(),
        packet.target_protocol_addr(),
    );
    let Ok(repr) = ArpRepr::parse(&packet) else { return };
    let mut out = [0u8; ArpRepr::LEN];
    repr.emit(&mut out).expect("a parsed packet emits");
    let again = ArpRepr::parse(&ArpPacket::new_checked(&out[..]).expect("an emitted packet is valid")).unwrap();
    assert_eq!(again, repr);
    // What new_checked accepted is Ethernet/IPv4 ARP, so the fixed fields match too.
    assert_eq!(&out[..8], &data[..8]);
});
