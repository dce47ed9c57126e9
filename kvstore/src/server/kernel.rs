//! The kernel backend: the same connection logic on the kernel's TCP sockets, for a fair
//! comparison. One epoll loop (mio) per thread, each with its own `SO_REUSEPORT` listener
//! so the kernel spreads connections over the threads. Requests are read into a
//! per-thread buffer and parsed in place there; replies leave with `writev` straight from
//! the reply queue (stored values by reference).

use std::io::{IoSlice, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

use super::conn::{Conn, Env};
use super::now_ms;
use super::shared::{Shared, ThreadStats};

const LISTENER: Token = Token(usize::MAX);
const READ_BUF: usize = 64 << 10;

struct KConn {
    stream: TcpStream,
    conn: Conn,
}

fn listener(port: u16) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.set_reuse_address(true)?;
    s.set_reuse_port(true)?;
    s.set_nonblocking(true)?;
    s.bind(&SocketAddr::V4(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)).into())?;
    s.listen(1024)?;
    Ok(TcpListener::from_std(s.into()))
}

/// Serve on `port` until `stop` is set.
pub fn serve(thread: usize, shared: Arc<Shared>, port: u16, stop: &AtomicBool, ready: &dyn Fn(Result<(), String>)) -> Result<(), String> {
    let setup = || -> std::io::Result<(Poll, TcpListener)> {
        let poll = Poll::new()?;
        let mut l = listener(port)?;
        poll.registry().register(&mut l, LISTENER, Interest::READABLE)?;
        Ok((poll, l))
    };
    let (mut poll, l) = match setup() {
        Ok(x) => x,
        Err(e) => {
            let msg = format!("thread {thread}: cannot listen on port {port}: {e}");
            ready(Err(msg.clone()));
            return Err(msg);
        }
    };
    ready(Ok(()));
    let stats = shared.threads[thread].clone();
    let mut conns: Vec<Option<KConn>> = Vec::new();
    let mut free: Vec<usize> = Vec::new();
    let mut events = Events::with_capacity(256);
    let mut buf = vec![0u8; READ_BUF];
    while !stop.load(Ordering::Relaxed) {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(100))) {
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(format!("thread {thread}: epoll failed: {e}"));
            }
        }
        let env = Env { shared: &shared, stats: &stats, now: now_ms() };
        for ev in events.iter() {
            if ev.token() == LISTENER {
                loop {
                    match l.accept() {
                        Ok((mut stream, addr)) => {
                            let _ = stream.set_nodelay(true);
                            let laddr = stream.local_addr().map_or_else(|_| String::new(), |a| a.to_string());
                            let Some(info) = shared.register(addr.to_string(), laddr, thread) else {
                                let _ = stream.write(b"-ERR max number of clients reached\r\n");
                                continue;
                            };
                            let idx = free.pop().unwrap_or_else(|| {
                                conns.push(None);
                                conns.len() - 1
                            });
                            if poll.registry().register(&mut stream, Token(idx), Interest::READABLE | Interest::WRITABLE).is_err() {
                                shared.unregister(&info);
                                free.push(idx);
                                continue;
                            }
                            conns[idx] = Some(KConn { stream, conn: Conn::new(info) });
                            step(&poll, &mut conns, &mut free, idx, &mut buf, &env);
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(_) => break, // EMFILE and friends: try again on the next event
                    }
                }
            } else {
                step(&poll, &mut conns, &mut free, ev.token().0, &mut buf, &env);
            }
        }
    }
    for k in conns.iter_mut().filter_map(Option::take) {
        shared.unregister(&k.conn.session.info);
    }
    Ok(())
}

fn step(poll: &Poll, conns: &mut [Option<KConn>], free: &mut Vec<usize>, idx: usize, buf: &mut [u8], env: &Env<'_>) {
    let Some(Some(k)) = conns.get_mut(idx) else { return };
    if !drive(k, buf, env) {
        let _ = poll.registry().deregister(&mut k.stream);
        env.shared.unregister(&k.conn.session.info);
        conns[idx] = None;
        free.push(idx);
    }
}

/// Write, read and execute until the socket would block. False: close it.
fn drive(k: &mut KConn, buf: &mut [u8], env: &Env<'_>) -> bool {
    let conn = &mut k.conn;
    loop {
        // Send what is queued (edge-triggered: until the socket is full).
        let mut full = false;
        while !conn.out.is_empty() {
            let mut iov = [IoSlice::new(&[]); 64];
            let n = conn.out.io_slices(&mut iov);
            match k.stream.write_vectored(&iov[..n]) {
                Ok(0) => return false,
                Ok(w) => {
                    conn.out.advance(w);
                    ThreadStats::add(&env.stats.net_out, w as u64);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    full = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        conn.resume(env);
        if !conn.out.is_empty() && !full {
            continue;
        }
        if conn.closing {
            return !conn.out.is_empty();
        }
        if conn.blocked() {
            return true; // the socket is full: a writable event resumes us
        }
        match k.stream.read(buf) {
            Ok(0) => conn.closing = true,
            Ok(n) => {
                ThreadStats::add(&env.stats.net_in, n as u64);
                let used = conn.feed(&buf[..n], &[], env);
                if used < n {
                    conn.stash(&buf[used..n]);
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if conn.out.is_empty() || full {
                    return true;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
}
