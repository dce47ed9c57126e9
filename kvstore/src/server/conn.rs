//! One client connection, independent of the network backend: requests go in as byte
//! slices (the receive ring's, in place, or a read buffer's), replies come out of [`Out`].
//!
//! Commands that lie whole in a slice are parsed and executed in place. A command cut by
//! the end of the data (or by the ring's wrap-around) is assembled in `pending`, reserved
//! once to the size its headers announce, so a 512 MB value is copied once from the ring
//! into the buffer that then becomes the stored value (a slice of it, not a copy).

use std::sync::Arc;

use bytes::{Buf, BytesMut};

use crate::cmd::{self, After, Args, Session};
use crate::resp::out::Out;
use crate::resp::parse::{self, Parsed};
use crate::server::shared::{ClientInfo, Shared, ThreadStats};

/// Stop taking requests while this many reply bytes wait to be sent (the client pipelines
/// faster than it reads): the receive window then closes and the client waits.
pub const OUT_LIMIT: usize = 4 << 20;

/// Commands with an argument at least this long, assembled in `pending`, are split off
/// and frozen so the argument can be stored by reference.
const BIG_ARG: usize = 16 << 10;

/// What a command needs from its thread.
#[derive(Debug, Clone, Copy)]
pub struct Env<'a> {
    /// Shared state.
    pub shared: &'a Shared,
    /// This thread's counters.
    pub stats: &'a ThreadStats,
    /// The time, read once per batch (Unix milliseconds).
    pub now: u64,
}

/// A connection's protocol state.
#[derive(Debug)]
pub struct Conn {
    /// Command-visible state.
    pub session: Session,
    /// Queued replies.
    pub out: Out,
    pending: BytesMut,
    args: Vec<(usize, usize)>,
    /// Close once the queued replies are sent (QUIT, protocol error, peer EOF).
    pub closing: bool,
}

fn run(args: &Args<'_>, session: &mut Session, out: &mut Out, closing: &mut bool, env: &Env<'_>) {
    if cmd::execute(args, session, env.shared, env.stats, env.now, out) == After::Close {
        *closing = true;
    }
}

impl Conn {
    /// A connection for the registered client `info`.
    pub fn new(info: Arc<ClientInfo>) -> Conn {
        Conn { session: Session { info }, out: Out::default(), pending: BytesMut::new(), args: Vec::new(), closing: false }
    }

    /// True if no more requests should be taken now.
    pub fn blocked(&self) -> bool {
        self.closing || self.out.len() >= OUT_LIMIT
    }

    fn protocol_error(&mut self, e: parse::ProtoError) {
        self.out.error(&format!("ERR {e}"));
        self.closing = true;
        self.pending.clear();
    }

    /// Execute the complete commands at the start of `input` (in place); returns the bytes
    /// they took. Stops at an incomplete command, or when [`Conn::blocked`].
    fn process(&mut self, input: &[u8], env: &Env<'_>) -> usize {
        let mut off = 0;
        while off < input.len() && !self.blocked() {
            match parse::parse(&input[off..], &mut self.args) {
                Ok(Parsed::Complete { consumed }) => {
                    if !self.args.is_empty() {
                        for r in self.args.iter_mut() {
                            r.0 += off;
                            r.1 += off;
                        }
                        let a = Args::new(input, &self.args, None);
                        run(&a, &mut self.session, &mut self.out, &mut self.closing, env);
                    }
                    off += consumed;
                }
                Ok(Parsed::Incomplete { need }) => {
                    if need > input.len() - off {
                        self.pending.reserve(need.min(parse::MAX_BULK + 64 * 1024));
                    }
                    break;
                }
                Err(e) => {
                    self.protocol_error(e);
                    return input.len();
                }
            }
        }
        off
    }

    /// Execute the complete commands assembled in `pending`.
    fn process_pending(&mut self, env: &Env<'_>) {
        while !self.pending.is_empty() && !self.blocked() {
            match parse::parse(&self.pending, &mut self.args) {
                Ok(Parsed::Complete { consumed }) => {
                    if self.args.is_empty() {
                    } else if self.args.iter().any(|&(s, e)| e - s >= BIG_ARG) {
                        let chunk = self.pending.split_to(consumed).freeze();
                        let a = Args::new(&chunk, &self.args, Some(&chunk));
                        run(&a, &mut self.session, &mut self.out, &mut self.closing, env);
                        continue;
                    } else {
                        let a = Args::new(&self.pending[..consumed], &self.args, None);
                        run(&a, &mut self.session, &mut self.out, &mut self.closing, env);
                    }
                    self.pending.advance(consumed);
                }
                Ok(Parsed::Incomplete { need }) => {
                    let need = need.min(parse::MAX_BULK + 64 * 1024);
                    if need > self.pending.capacity() {
                        self.pending.reserve(need - self.pending.len());
                    }
                    return;
                }
                Err(e) => return self.protocol_error(e),
            }
        }
    }

    /// Take requests from the network: the readable bytes as up to two slices (a ring's
    /// two parts; `b` may be empty). Returns how many bytes were taken; the rest stay
    /// where they are until the connection is unblocked.
    pub fn feed(&mut self, a: &[u8], b: &[u8], env: &Env<'_>) -> usize {
        let mut used = 0;
        for part in [a, b] {
            if part.is_empty() {
                continue;
            }
            if self.blocked() {
                break;
            }
            if self.pending.is_empty() {
                let n = self.process(part, env);
                used += n;
                if n == part.len() || self.blocked() {
                    continue;
                }
                // An incomplete command at the end: assemble it.
                self.pending.extend_from_slice(&part[n..]);
                used += part.len() - n;
            } else {
                self.pending.extend_from_slice(part);
                used += part.len();
                self.process_pending(env);
            }
        }
        used
    }

    /// Keep bytes that were read but not taken (kernel backend: they cannot stay in the
    /// socket once read).
    pub fn stash(&mut self, rest: &[u8]) {
        self.pending.extend_from_slice(rest);
    }

    /// Go on with assembled commands after the connection was blocked.
    pub fn resume(&mut self, env: &Env<'_>) {
        if !self.pending.is_empty() {
            self.process_pending(env);
        }
    }

    /// Bytes buffered for a request not yet complete.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::shared::ServerInfo;
    use crate::store::Store;

    fn shared() -> Shared {
        let info = ServerInfo { backend: "kernel", port: 6379, threads: 1, config_file: None, pinned: vec![None] };
        Shared::new(Store::default(), info, 10, 10_000)
    }

    fn conn(sh: &Shared) -> Conn {
        Conn::new(sh.register("127.0.0.1:1".into(), "127.0.0.1:6379".into(), 0).unwrap())
    }

    fn drain(c: &mut Conn) -> Vec<u8> {
        let v = c.out.to_vec();
        let n = c.out.len();
        c.out.advance(n);
        v
    }

    #[test]
    fn pipelined_commands_split_anywhere() {
        let sh = shared();
        let env = Env { shared: &sh, stats: &sh.threads[0], now: 1000 };
        let req = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$5\r\nhello\r\n*2\r\n$3\r\nGET\r\n$1\r\nk\r\nPING\r\n*2\r\n$4\r\nINCR\r\n$1\r\nn\r\n";
        let want = b"+OK\r\n$5\r\nhello\r\n+PONG\r\n:1\r\n".to_vec();
        for cut1 in 0..req.len() {
            for cut2 in [cut1, (cut1 + 7).min(req.len()), req.len()] {
                sh.store.flush(0);
                let mut c = conn(&sh);
                let mut got = Vec::new();
                // Two reads, each offered as a ring's two slices.
                let used = c.feed(&req[..cut1], &req[cut1..cut2], &env);
                assert_eq!(used, cut2);
                got.extend(drain(&mut c));
                let used = c.feed(&req[cut2..], &[], &env);
                assert_eq!(used, req.len() - cut2);
                got.extend(drain(&mut c));
                assert_eq!(got, want, "cuts {cut1} {cut2}");
                assert_eq!(c.pending_len(), 0);
                sh.unregister(&c.session.info);
            }
        }
    }

    #[test]
    fn large_value_assembled_once_and_stored_by_reference() {
        let sh = shared();
        let env = Env { shared: &sh, stats: &sh.threads[0], now: 1000 };
        let value = vec![b'v'; 1 << 20];
        let mut req = format!("*3\r\n$3\r\nSET\r\n$3\r\nbig\r\n${}\r\n", value.len()).into_bytes();
        req.extend_from_slice(&value);
        req.extend_from_slice(b"\r\n");
        let mut c = conn(&sh);
        for chunk in req.chunks(60_000) {
            assert_eq!(c.feed(chunk, &[], &env), chunk.len());
        }
        assert_eq!(drain(&mut c), b"+OK\r\n");
        let stored = sh.store.get(b"big", 1000).unwrap();
        assert_eq!(stored.as_ref(), &value[..]);
    }

    #[test]
    fn protocol_error_closes_only_after_the_error_reply() {
        let sh = shared();
        let env = Env { shared: &sh, stats: &sh.threads[0], now: 1000 };
        let mut c = conn(&sh);
        c.feed(b"PING\r\n*1\r\n+x\r\nPING\r\n", &[], &env);
        assert_eq!(drain(&mut c), b"+PONG\r\n-ERR Protocol error: expected '$', got '+'\r\n");
        assert!(c.closing);
    }

    #[test]
    fn quit_stops_taking_requests() {
        let sh = shared();
        let env = Env { shared: &sh, stats: &sh.threads[0], now: 1000 };
        let mut c = conn(&sh);
        let used = c.feed(b"QUIT\r\nPING\r\n", &[], &env);
        assert_eq!(used, 6);
        assert_eq!(drain(&mut c), b"+OK\r\n");
        assert!(c.closing);
    }
}
