//! Whole request path on arbitrary bytes: a connection fed the input, cut in two at a
//! position the input chooses (as a ring's two slices), executing whatever commands it
//! finds against a real store. Never panics.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use tas_kvstore::server::conn::{Conn, Env};
use tas_kvstore::server::shared::{ServerInfo, Shared};
use tas_kvstore::store::{Policy, Store};

fn shared() -> &'static Shared {
    static S: OnceLock<Shared> = OnceLock::new();
    S.get_or_init(|| {
        let info = ServerInfo { backend: "kernel", port: 6379, threads: 1, config_file: None, pinned: vec![None] };
        Shared::new(Store::new(1 << 20, Policy::AllKeysLru), info, 10, 1 << 30)
    })
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, data)) = data.split_first() else { return };
    let sh = shared();
    let Some(info) = sh.register("fuzz".into(), "fuzz".into(), 0) else { return };
    let mut c = Conn::new(info.clone());
    let env = Env { shared: sh, stats: &sh.threads[0], now: 1_000_000 };
    let cut = (cut as usize).min(data.len());
    let used = c.feed(&data[..cut], &data[cut..], &env);
    assert!(used <= data.len());
    let n = c.out.len();
    c.out.advance(n);
    c.resume(&env);
    sh.unregister(&info);
});
