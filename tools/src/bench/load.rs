//! The RPC load generator (`tas-bench load`): many kernel TCP connections to an echo
//! server, each request `size` bytes answered by its echo, pipelined, in a closed or an
//! open loop, with every request's latency kept.
//!
//! - **Closed loop** (`rate` = 0): every connection keeps `depth` requests outstanding and
//!   sends the next one the moment a response completes. Measures throughput; latency
//!   is then a consequence of the queueing the generator itself causes.
//! - **Open loop** (`rate` > 0): requests are due at fixed intervals of 1/rate, spread
//!   over the connections in turn, whether or not earlier ones were answered; a
//!   connection with `depth` requests in flight holds further due requests back, and their
//!   latency counts from the time they were due, not from when they went out (so a
//!   stalled server shows in the tail instead of slowing the generator down with it:
//!   no coordinated omission).
//!
//! Every response byte is checked: request `n` of a connection is `size` copies of the
//! byte `n mod 251`, and its echo must be the same.
//!
//! Runs on the kernel's sockets (mio, edge-triggered epoll), single-threaded; pin it
//! with taskset.

use std::collections::VecDeque;
use std::io::{ErrorKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};

use super::latency::{Latencies, Summary};

/// What to run.
#[derive(Debug, Clone)]
pub struct LoadConfig {
    /// The echo server.
    pub addr: SocketAddr,
    /// Connections.
    pub conns: usize,
    /// Requests in flight per connection (closed loop: always; open loop: at most).
    pub depth: usize,
    /// Bytes per request (and per response).
    pub size: usize,
    /// Open-loop rate, requests/s over all connections; 0 = closed loop.
    pub rate: f64,
    /// Time before measuring starts (connections warm, caches filled).
    pub warmup: Duration,
    /// Time measured.
    pub duration: Duration,
}

/// What a run measured.
#[derive(Debug, Clone, Copy)]
pub struct LoadResult {
    /// Requests completed in the measured interval.
    pub requests: u64,
    /// Requests completed in the whole run, warm-up included.
    pub total_requests: u64,
    /// The measured interval, seconds.
    pub seconds: f64,
    /// requests / seconds.
    pub rps: f64,
    /// Latency of the measured requests.
    pub latency: Summary,
    /// Open loop: requests that were due in the interval but had not gone out at its end
    /// (the server fell behind the rate).
    pub backlog: u64,
}

impl LoadConfig {
    /// Check the settings; the error says which one is wrong and what to give instead.
    pub fn validate(&self) -> Result<()> {
        if self.conns == 0 || self.conns > 60_000 {
            bail!("--conns must be between 1 and 60000 (got {})", self.conns);
        }
        if self.depth == 0 {
            bail!("--depth must be at least 1 (requests in flight per connection)");
        }
        if self.size == 0 || self.size > 1 << 20 {
            bail!("--size must be between 1 and 1048576 bytes (got {})", self.size);
        }
        if !(self.rate >= 0.0 && self.rate.is_finite()) {
            bail!("--rate must be a finite number of requests/s, or 0 for a closed loop");
        }
        if self.duration.is_zero() {
            bail!("--duration must be more than 0 seconds");
        }
        Ok(())
    }
}

struct Conn {
    stream: TcpStream,
    /// When each request in flight (written or due) was sent or due, in order.
    inflight: VecDeque<Instant>,
    /// Of `inflight`, how many are fully written (the rest wait for room or for depth).
    written: usize,
    /// Bytes of the request being written.
    out_off: usize,
    /// Bytes of the response being read.
    in_off: usize,
    /// Sequence number of the next request to write / response to complete.
    seq_out: u64,
    seq_in: u64,
    /// Open loop: requests due but held back because `depth` are in flight.
    held: VecDeque<Instant>,
}

/// Byte that fills request `seq`.
fn fill(seq: u64) -> u8 {
    (seq % 251) as u8
}

/// Run the load; Err on a connection failure, a wrong echo or a timeout while connecting.
pub fn run(cfg: &LoadConfig) -> Result<LoadResult> {
    cfg.validate()?;
    let mut poll = Poll::new().context("epoll_create")?;
    let mut events = Events::with_capacity(4096);
    let mut conns: Vec<Conn> = Vec::with_capacity(cfg.conns);
    for i in 0..cfg.conns {
        let mut stream = TcpStream::connect(cfg.addr)
            .with_context(|| format!("connecting to {}", cfg.addr))?;
        poll.registry()
            .register(&mut stream, Token(i), Interest::READABLE | Interest::WRITABLE)?;
        conns.push(Conn {
            stream,
            inflight: VecDeque::with_capacity(cfg.depth),
            written: 0,
            out_off: 0,
            in_off: 0,
            seq_out: 0,
            seq_in: 0,
            held: VecDeque::new(),
        });
    }
    // Wait until every connection is established.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut up = vec![false; cfg.conns];
    let mut n_up = 0;
    while n_up < cfg.conns {
        let now = Instant::now();
        if now >= deadline {
            bail!(
                "{} of {} connections to {} not established after 10 s",
                cfg.conns - n_up,
                cfg.conns,
                cfg.addr
            );
        }
        poll.poll(&mut events, Some(deadline - now))?;
        for ev in events.iter() {
            let i = ev.token().0;
            if up[i] {
                continue;
            }
            let c = &conns[i];
            if let Some(e) = c.stream.take_error()? {
                bail!("connecting to {}: {e}", cfg.addr);
            }
            match c.stream.peer_addr() {
                Ok(_) => {
                    let _ = c.stream.set_nodelay(true);
                    up[i] = true;
                    n_up += 1;
                }
                Err(e) if e.kind() == ErrorKind::NotConnected => {}
                Err(e) => bail!("connecting to {}: {e}", cfg.addr),
            }
        }
    }

    let open_loop = cfg.rate > 0.0;
    let interval = if open_loop {
        Duration::from_secs_f64(1.0 / cfg.rate)
    } else {
        Duration::ZERO
    };
    let start = Instant::now();
    let measure_from = start + cfg.warmup;
    let end = measure_from + cfg.duration;
    let expected = if open_loop {
        (cfg.rate * cfg.duration.as_secs_f64()) as usize
    } else {
        1 << 20
    };
    let mut lat = Latencies::with_capacity(expected.clamp(1 << 10, 1 << 26));
    let mut completed_measured = 0u64;
    let mut completed_all = 0u64;
    let mut next_due = start;
    let mut rr = 0usize;
    let out_buf = vec![0u8; cfg.size];
    let mut out_buf = out_buf;
    let mut in_buf = vec![0u8; 64 << 10];

    if !open_loop {
        for c in conns.iter_mut() {
            for _ in 0..cfg.depth {
                c.inflight.push_back(start);
            }
        }
    }
    // Connections to try to write / read: all at first, then those with events.
    let mut todo: Vec<usize> = (0..cfg.conns).collect();
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        if open_loop {
            // Release every request that is due by now, round-robin over connections.
            while next_due <= now {
                let c = &mut conns[rr];
                if c.inflight.len() < cfg.depth {
                    c.inflight.push_back(next_due);
                } else {
                    c.held.push_back(next_due);
                }
                todo.push(rr);
                rr = (rr + 1) % cfg.conns;
                next_due += interval;
            }
        }
        todo.sort_unstable();
        todo.dedup();
        for &i in &todo {
            let c = &mut conns[i];
            // Read responses until the socket is empty.
            loop {
                match c.stream.read(&mut in_buf) {
                    Ok(0) => bail!("connection {i}: the server closed it"),
                    Ok(n) => {
                        let mut data = &in_buf[..n];
                        while !data.is_empty() {
                            if c.written == 0 {
                                bail!("connection {i}: {} bytes arrived that no request asked for", data.len());
                            }
                            let want = fill(c.seq_in);
                            let k = data.len().min(cfg.size - c.in_off);
                            if let Some(p) = data[..k].iter().position(|&b| b != want) {
                                bail!(
                                    "connection {i}: response {} byte {} is {:#04x}, the request had {want:#04x}",
                                    c.seq_in,
                                    c.in_off + p,
                                    data[p]
                                );
                            }
                            c.in_off += k;
                            data = &data[k..];
                            if c.in_off == cfg.size {
                                c.in_off = 0;
                                c.seq_in += 1;
                                let sent = c.inflight.pop_front().expect("written request");
                                c.written -= 1;
                                let t = Instant::now();
                                completed_all += 1;
                                if sent >= measure_from && t < end {
                                    lat.record(t.duration_since(sent).as_nanos() as u64);
                                    completed_measured += 1;
                                }
                                if open_loop {
                                    if let Some(d) = c.held.pop_front() {
                                        c.inflight.push_back(d);
                                    }
                                } else {
                                    c.inflight.push_back(t);
                                }
                            }
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).with_context(|| format!("connection {i}: receive")),
                }
            }
            // Write what is due and fits.
            while c.written < c.inflight.len() {
                out_buf.fill(fill(c.seq_out));
                match c.stream.write(&out_buf[c.out_off..]) {
                    Ok(n) => {
                        c.out_off += n;
                        if c.out_off == cfg.size {
                            c.out_off = 0;
                            c.seq_out += 1;
                            // Closed loop: latency counts from the moment it was sent.
                            if !open_loop {
                                let idx = c.written;
                                c.inflight[idx] = Instant::now();
                            }
                            c.written += 1;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) => return Err(e).with_context(|| format!("connection {i}: send")),
                }
            }
        }
        todo.clear();
        let now = Instant::now();
        let timeout = if open_loop {
            next_due.saturating_duration_since(now).min(end.saturating_duration_since(now))
        } else {
            end.saturating_duration_since(now).min(Duration::from_millis(100))
        };
        match poll.poll(&mut events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("epoll_wait"),
        }
        todo.extend(events.iter().map(|e| e.token().0));
    }
    let backlog = conns
        .iter()
        .map(|c| (c.inflight.len() - c.written + c.held.len()) as u64)
        .sum();
    if completed_measured == 0 {
        return Err(anyhow!(
            "no request completed in the {:.1} s measured: is the echo server at {} answering?",
            cfg.duration.as_secs_f64(),
            cfg.addr
        ));
    }
    let seconds = cfg.duration.as_secs_f64();
    Ok(LoadResult {
        requests: completed_measured,
        total_requests: completed_all,
        seconds,
        rps: completed_measured as f64 / seconds,
        latency: lat.summary(),
        backlog,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocking server thread on the loopback that answers what it reads with
    /// `reply(bytes)`.
    fn server(reply: fn(&[u8]) -> Vec<u8>) -> SocketAddr {
        crate::bench::test_support::loopback_server(reply)
    }

    /// A blocking echo server thread on the loopback.
    fn echo_server() -> SocketAddr {
        server(|b| b.to_vec())
    }

    fn cfg(addr: SocketAddr) -> LoadConfig {
        LoadConfig {
            addr,
            conns: 4,
            depth: 4,
            size: 100,
            rate: 0.0,
            warmup: Duration::from_millis(50),
            duration: Duration::from_millis(300),
        }
    }

    #[test]
    fn closed_loop_completes_and_measures() {
        let r = run(&cfg(echo_server())).unwrap();
        assert!(r.requests > 100, "{r:?}");
        assert!(r.latency.p50_us > 0.0 && r.latency.p50_us <= r.latency.p99_us);
        assert!(r.latency.p99_us <= r.latency.p999_us && r.latency.p999_us <= r.latency.max_us);
        assert_eq!(r.backlog, 0);
    }

    #[test]
    fn open_loop_holds_the_rate() {
        let mut c = cfg(echo_server());
        c.rate = 2_000.0;
        let r = run(&c).unwrap();
        // 600 due in 0.3 s; a loaded CI machine may lose a few at the edges.
        assert!((500..=620).contains(&r.requests), "{r:?}");
    }

    #[test]
    fn a_wrong_echo_is_an_error() {
        // A server that answers every byte with 0xff.
        let addr = server(|b| vec![0xff; b.len()]);
        let e = run(&cfg(addr)).unwrap_err().to_string();
        assert!(e.contains("0xff"), "{e}");
    }

    #[test]
    fn bad_settings_name_the_flag() {
        let mut c = cfg("127.0.0.1:1".parse().unwrap());
        c.depth = 0;
        assert!(run(&c).unwrap_err().to_string().contains("--depth"));
        c.depth = 1;
        c.rate = f64::NAN;
        assert!(run(&c).unwrap_err().to_string().contains("--rate"));
    }
}
