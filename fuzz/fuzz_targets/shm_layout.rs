//! `Layout::validate` on any region header and mapping length: never panics, and what it
//! accepts is consistent: the region fits the mapping, every offset lies inside it in order,
//! and the header it would write is the one it read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tas_proto::shm::{queue_bytes, Layout, RegionHeader};

fuzz_target!(|input: ([u8; 128], u64)| {
    let (bytes, mapped) = input;
    let header = RegionHeader::from_bytes(&bytes);
    let mapped_len = (mapped % (1 << 40)) as usize;
    let Ok(l) = Layout::validate(&header, mapped_len) else { return };
    assert!(l.check().is_ok());
    assert!(l.region_size() <= mapped_len, "{l:?} accepted for a {mapped_len}-byte mapping");
    let h = l.header();
    assert_eq!(h.to_bytes()[..64], bytes[..64], "the header it accepted is the one it would write");
    let q = queue_bytes(l.queue_entries);
    assert!(l.queues_offset() >= 128);
    assert!(l.to_app_offset(l.num_fp_queues - 1) + q <= l.sp_queue_offset());
    assert!(l.sp_queue_offset() + q <= l.req_queue_offset());
    assert!(l.req_queue_offset() + q <= l.payload_offset());
    assert_eq!(l.payload_offset() % 4096, 0);
    let last = l.conn_slots - 1;
    assert!(l.tx_offset(last) + l.tx_buf_size as usize == l.region_size());
});
