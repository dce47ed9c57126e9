//! `Layout::validate` on any region header and mapping length: never panics, and what it
//! accepts is consistent: the region fits the mapping, every offset lies inside it in order,
//! and the header it would write is the one it read.
//!
//! Two kinds of input: raw header bytes, and a valid header (from a layout the fuzzer picks)
//! with one field overwritten, so that the consistency checks are reached every time rather
//! than only after the fuzzer guesses the magic, the version and four matching offsets.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tas_proto::shm::{queue_bytes, Layout, RegionHeader};

#[derive(Arbitrary, Debug)]
enum Input {
    Raw { header: [u8; 128], mapped: u64 },
    Derived { fp_queues: u8, entries_log2: u8, conn_slots: u16, rx_log2: u8, tx_log2: u8, field: u8, value: u64, mapped: Option<u64> },
}

/// Byte offset and width of each field of `RegionHeader::to_bytes`.
const FIELDS: [(usize, usize); 11] =
    [(0, 8), (8, 4), (12, 4), (16, 4), (20, 4), (24, 8), (32, 8), (40, 8), (48, 8), (56, 4), (60, 4)];

fuzz_target!(|input: Input| {
    let (bytes, mapped_len) = match input {
        Input::Raw { header, mapped } => (header, (mapped % (1 << 40)) as usize),
        Input::Derived { fp_queues, entries_log2, conn_slots, rx_log2, tx_log2, field, value, mapped } => {
            let l = Layout {
                num_fp_queues: u32::from(fp_queues % 64) + 1,
                queue_entries: 1 << (4 + entries_log2 % 13),
                conn_slots: u32::from(conn_slots) + 1,
                rx_buf_size: 1 << (12 + rx_log2 % 8),
                tx_buf_size: 1 << (12 + tx_log2 % 8),
            };
            let mut b = l.header().to_bytes();
            if let Some(&(at, width)) = FIELDS.get(usize::from(field)) {
                b[at..at + width].copy_from_slice(&value.to_ne_bytes()[..width]);
            }
            let mapped_len = match mapped {
                None => l.region_size(),
                Some(m) => (m % (1 << 40)) as usize,
            };
            (b, mapped_len)
        }
    };
    let header = RegionHeader::from_bytes(&bytes);
    let Ok(l) = Layout::validate(&header, mapped_len) else { return };
    assert!(l.check().is_ok());
    assert!(l.region_size() <= mapped_len, "{l:?} accepted for a {mapped_len}-byte mapping");
    let h = l.header();
    assert_eq!(
        h.to_bytes()[..64],
        bytes[..64],
        "validate accepted a header that differs from the one its layout gives: {header:?} vs {h:?}"
    );
    let q = queue_bytes(l.queue_entries);
    assert!(l.queues_offset() >= 128);
    assert!(l.to_app_offset(l.num_fp_queues - 1) + q <= l.sp_queue_offset());
    assert!(l.sp_queue_offset() + q <= l.req_queue_offset());
    assert!(l.req_queue_offset() + q <= l.payload_offset());
    assert_eq!(l.payload_offset() % 4096, 0);
    let last = l.conn_slots - 1;
    assert!(l.tx_offset(last) + l.tx_buf_size as usize == l.region_size());
});
