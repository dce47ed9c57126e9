//! The TAS backend: one libtas context per thread, event-driven. Requests are parsed in
//! place from the receive ring ([`libtas::Context::recv_view`]); replies are copied from
//! the queue — stored values straight from the store's shared bytes — into the transmit
//! ring with [`libtas::Context::send_with`], without an intermediate buffer.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use libtas::{ConnId, Context, Error, Event, ListenOptions};

use super::conn::{Conn, Env};
use super::shared::{Shared, ThreadStats};
use super::now_ms;

/// How a context's life ended.
enum End {
    /// `stop` was set.
    Stopped,
    /// Attaching or listening failed.
    Setup(String),
    /// The context failed while serving (tasd went away or broke the protocol).
    Broken(String),
}

/// Serve on `port` until `stop` is set. Each thread attaches its own context and listens
/// with `reuse_port`, so the threads form one listener group and tasd spreads new
/// connections over them by a hash of the 4-tuple (as the kernel backend's `SO_REUSEPORT`
/// listeners do).
///
/// If the context fails while serving — tasd restarts, or breaks the protocol — the
/// thread drops it (tasd resets its connections) and attaches and listens again, so the
/// store's contents outlive a tasd restart; `reattaches` in INFO counts these.
pub fn serve(thread: usize, shared: Arc<Shared>, port: u16, socket: Option<&Path>, stop: &AtomicBool, ready: &dyn Fn(Result<(), String>)) -> Result<(), String> {
    let mut reported = false;
    let mut backoff = Duration::from_millis(50);
    loop {
        let report = |r: Result<(), String>| {
            if !reported {
                ready(r);
            }
        };
        match serve_once(thread, &shared, port, socket, stop, &report) {
            End::Stopped => return Ok(()),
            End::Setup(e) if !reported => return Err(e),
            End::Setup(e) => {
                eprintln!("tas-kv: {e}; retrying in {backoff:?}");
                std::thread::sleep(backoff);
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            End::Broken(e) => {
                eprintln!("tas-kv: {e}; attaching again");
                shared.reattaches.fetch_add(1, Ordering::Relaxed);
                backoff = Duration::from_millis(50);
            }
        }
        reported = true;
        if stop.load(Ordering::Relaxed) {
            return Ok(());
        }
    }
}

fn serve_once(thread: usize, shared: &Arc<Shared>, port: u16, socket: Option<&Path>, stop: &AtomicBool, ready: &dyn Fn(Result<(), String>)) -> End {
    let attach = match socket {
        Some(p) => Context::attach_to(p, "tas-kv"),
        None => Context::attach(),
    };
    let mut ctx = match attach {
        Ok(c) => c,
        Err(e) => {
            let msg = format!("thread {thread}: cannot attach to tasd: {e}");
            ready(Err(msg.clone()));
            return End::Setup(msg);
        }
    };
    let listener = match ctx.listen_with(port, 1024, ListenOptions::reuse_port()) {
        Ok(l) => l,
        Err(e) => {
            let msg = format!("thread {thread}: cannot listen on port {port} through tasd: {e}");
            ready(Err(msg.clone()));
            return End::Setup(msg);
        }
    };
    ready(Ok(()));
    let stats = shared.threads[thread].clone();
    let mut conns: HashMap<ConnId, Conn> = HashMap::new();
    let mut events: Vec<Event> = Vec::with_capacity(64);
    while !stop.load(Ordering::Relaxed) {
        ctx.poll();
        events.extend(ctx.take_events());
        if events.is_empty() {
            ctx.wait(Some(Duration::from_millis(100)));
            events.extend(ctx.take_events());
        }
        if let Err(e) = ctx.health() {
            for (_, conn) in conns.drain() {
                shared.unregister(&conn.session.info);
            }
            return End::Broken(format!("thread {thread}: the libtas context failed: {e}"));
        }
        let env = Env { shared, stats: &stats, now: now_ms() };
        for ev in events.drain(..) {
            match ev {
                Event::Accept(l) => {
                    while let Ok(Some(c)) = ctx.accept(l) {
                        let addr = ctx.peer_addr(c).map_or_else(String::new, |a| a.to_string());
                        let laddr = ctx.local_addr(c).map_or_else(String::new, |a| a.to_string());
                        match shared.register(addr, laddr, thread) {
                            Some(info) => {
                                conns.insert(c, Conn::new(info));
                                step(&mut ctx, c, &mut conns, &env);
                            }
                            None => {
                                let _ = ctx.send(c, b"-ERR max number of clients reached\r\n");
                                let _ = ctx.close(c);
                            }
                        }
                    }
                }
                Event::Readable(c) | Event::Writable(c) | Event::Connected(c) | Event::Closed(c, _) => {
                    step(&mut ctx, c, &mut conns, &env);
                }
                Event::Listening(..) => {}
            }
        }
    }
    let _ = ctx.unlisten(listener);
    for (c, conn) in conns.drain() {
        shared.unregister(&conn.session.info);
        let _ = ctx.close(c);
    }
    End::Stopped
}

/// Move a connection forward; closes and forgets it when it is done.
fn step(ctx: &mut Context, c: ConnId, conns: &mut HashMap<ConnId, Conn>, env: &Env<'_>) {
    let Some(conn) = conns.get_mut(&c) else { return };
    if !drive(ctx, c, conn, env) {
        env.shared.unregister(&conn.session.info);
        conns.remove(&c);
        let _ = ctx.close(c);
    }
}

/// Send, receive and execute until the connection would block. False: close it.
fn drive(ctx: &mut Context, c: ConnId, conn: &mut Conn, env: &Env<'_>) -> bool {
    loop {
        if !conn.out.is_empty() {
            match ctx.send_with(c, usize::MAX, |a, b| conn.out.write_into(a, b)) {
                Ok(n) => ThreadStats::add(&env.stats.net_out, n as u64),
                Err(Error::WouldBlock) => {}
                Err(_) => return false,
            }
        }
        conn.resume(env);
        if conn.closing {
            // Wait for the replies to leave, then close.
            if conn.out.is_empty() {
                return false;
            }
            if ctx.writable(c) == 0 {
                return true;
            }
            continue;
        }
        if conn.blocked() {
            if ctx.writable(c) == 0 {
                return true; // a Writable event resumes us
            }
            continue;
        }
        let view = match ctx.recv_view(c) {
            Ok(v) => v,
            Err(Error::WouldBlock) => {
                // Replies produced by `resume` may still be queued.
                if !conn.out.is_empty() && ctx.writable(c) > 0 {
                    continue;
                }
                return true;
            }
            Err(_) => return false,
        };
        if view.is_empty() {
            // The peer closed its side: answer what it sent, then close.
            conn.closing = true;
            continue;
        }
        let (a, b) = view.slices();
        let used = conn.feed(a, b, env);
        ThreadStats::add(&env.stats.net_in, used as u64);
        if view.consume(used).is_err() {
            return false;
        }
        // `feed` takes everything unless the connection blocked, which the next round
        // handles: no busy loop.
    }
}
