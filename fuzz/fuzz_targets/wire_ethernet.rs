//! Ethernet: the view never panics on any bytes; parse -> emit -> parse is the identity.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tas_fastpath::wire::{EthernetFrame, EthernetRepr};

fuzz_target!(|data: &[u8]| {
    let Ok(frame) = EthernetFrame::new_checked(data) else {
        assert!(data.len() < EthernetRepr::HEADER_LEN);
        return;
    };
    let _ = (frame.dst_addr(), frame.src_addr(), frame.ethertype(), frame.dst_addr().is_broadcast());
    assert_eq!(frame.payload().len(), data.len() - EthernetRepr::HEADER_LEN);
    let Ok(repr) = EthernetRepr::parse(&frame) else { return };
    let mut out = [0u8; EthernetRepr::HEADER_LEN];
    repr.emit(&mut out).expect("a parsed header emits");
    assert_eq!(&out[..], &data[..EthernetRepr::HEADER_LEN], "emit writes back the same bytes");
    let again = EthernetRepr::parse(&EthernetFrame::new_checked(&out[..]).unwrap()).unwrap();
    assert_eq!(again, repr);
});
