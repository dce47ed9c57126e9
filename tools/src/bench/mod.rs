//! The pieces of `tas-bench` worth testing on their own: the RPC load generator, latency
//! percentiles, the report (tables, the docs section, the chart), and `tas-scale`'s
//! many-connection client. The orchestration
//! (sandbox, processes, pinning) is in `src/bin/tas-bench.rs`.

pub mod latency;
pub mod load;
pub mod report;
pub mod scale;

/// Test helpers shared by the modules' unit tests.
#[cfg(test)]
pub(crate) mod test_support {
    use std::io::{Read, Write};
    use std::net::{SocketAddr, TcpListener};

    /// A blocking server on the loopback, one thread per connection, that answers what
    /// it reads with `reply(bytes)`.
    pub(crate) fn loopback_server(reply: fn(&[u8]) -> Vec<u8>) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for s in l.incoming() {
                let Ok(mut s) = s else { return };
                std::thread::spawn(move || {
                    let mut b = [0u8; 4096];
                    while let Ok(n) = s.read(&mut b) {
                        if n == 0 || s.write_all(&reply(&b[..n])).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }
}
