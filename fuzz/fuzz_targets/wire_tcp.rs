//! TCP: the view, its options iterator and its checksum never panic; a parsed segment emits
//! and parses back unchanged (when the emitter accepts it: e.g. 4 SACK blocks do not fit
//! beside timestamps). The first 8 input bytes are the pseudo-header's addresses.
#![no_main]

use std::net::Ipv4Addr;

use libfuzzer_sys::fuzz_target;
use tas_fastpath::wire::{TcpRepr, TcpSegment};

fuzz_target!(|data: &[u8]| {
    let Some((addrs, seg)) = data.split_at_checked(8) else { return };
    let src = Ipv4Addr::new(addrs[0], addrs[1], addrs[2], addrs[3]);
    let dst = Ipv4Addr::new(addrs[4], addrs[5], addrs[6], addrs[7]);
    let Ok(segment) = TcpSegment::new_checked(seg) else { return };
    let _ = (
        segment.src_port(),
        segment.dst_port(),
        segment.seq_number(),
        segment.ack_number(),
        segment.flags(),
        segment.window_len(),
        segment.checksum(),
        segment.urgent_at(),
        segment.timestamps(),
        segment.verify_checksum(src, dst),
    );
    let hl = segment.header_len();
    assert!(hl >= 20 && hl <= seg.len());
    assert_eq!(segment.options().len(), hl - 20);
    assert_eq!(segment.payload().len(), seg.len() - hl);
    // The iterator ends, whatever the bytes (it is fused after an error).
    let mut n = 0;
    for opt in segment.options_iter() {
        n += 1;
        assert!(n <= 40, "more options than option bytes");
        let _ = opt;
    }
    let Ok(repr) = TcpRepr::parse(&segment, src, dst, false) else { return };
    assert_eq!(repr.payload_len, segment.payload().len());
    let mut out = vec![0u8; 60 + repr.payload_len];
    let Ok(len) = repr.emit(&mut out, src, dst, segment.payload()) else { return };
    let emitted = TcpSegment::new_checked(&out[..len]).expect("an emitted segment is valid");
    assert!(emitted.verify_checksum(src, dst), "emit fills a correct checksum");
    let again = TcpRepr::parse(&emitted, src, dst, true).expect("an emitted segment parses");
    assert_eq!(again, repr, "parse(emit(parse(x))) == parse(x)");
    assert_eq!(emitted.payload(), segment.payload());
});
