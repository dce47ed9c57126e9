//! The RESP parser on arbitrary bytes: never panics, and a complete command's ranges lie
//! inside what it consumed.
#![no_main]
use libfuzzer_sys::fuzz_target;
use tas_kvstore::resp::parse::{parse, Parsed};

fuzz_target!(|data: &[u8]| {
    let mut args = Vec::new();
    let mut off = 0;
    while off < data.len() {
        match parse(&data[off..], &mut args) {
            Ok(Parsed::Complete { consumed }) => {
                assert!(consumed > 0 && consumed <= data.len() - off);
                for &(s, e) in &args {
                    assert!(s <= e && e <= consumed);
                }
                off += consumed;
            }
            Ok(Parsed::Incomplete { need }) => {
                assert!(need > data.len() - off);
                break;
            }
            Err(_) => break,
        }
    }
});
