//! TCP options alone: the iterator never panics and always ends; every option it yields
//! emits to exactly `buffer_len` bytes that read back as the same option.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tas_fastpath::wire::{TcpOption, TcpOptions};

fuzz_target!(|data: &[u8]| {
    let mut seen = 0;
    for opt in TcpOptions::new(data) {
        seen += 1;
        assert!(seen <= data.len(), "the iterator must consume at least one byte per option");
        let Ok(opt) = opt else { continue };
        // An Unknown option carrying a known kind number is for tests of malformed input:
        // it emits what it holds, which need not parse back as itself.
        if let TcpOption::Unknown { kind, .. } = opt {
            if matches!(kind, 0..=5 | 8) {
                continue;
            }
        }
        let mut buf = [0u8; 64];
        let Ok(n) = opt.emit(&mut buf) else {
            assert!(opt.buffer_len() > buf.len(), "emit refused an option that fits: {opt:?}");
            continue;
        };
        assert_eq!(n, opt.buffer_len(), "{opt:?}");
        let back = TcpOptions::new(&buf[..n]).next().expect("one option").expect("it parses");
        assert_eq!(back, opt);
    }
});
