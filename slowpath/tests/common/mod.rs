//! Shared pieces of the simulated-network tests.
#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use libtas::{ConnId, ConnState, Context, Error, ListenerId, RegionMapping};
use tas_fastpath::io::mem::{Impairments, MemLink};
use tas_fastpath::time::{Clock, SimClock};
use tas_fastpath::wire::EthernetAddress;
use tas_proto::shm::Layout;
use tas_slowpath::sim::{HeapRegion, SimHost};

pub const IP_A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const IP_B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

pub fn layout() -> Layout {
    Layout { num_fp_queues: 1, queue_entries: 1024, conn_slots: 64, rx_buf_size: 256 * 1024, tx_buf_size: 256 * 1024 }
}

pub fn context(host: &mut SimHost, ip: Ipv4Addr, name: &str) -> Context {
    context_as(host, ip, name, 0)
}

/// [`context`] for an application of user `uid`.
pub fn context_as(host: &mut SimHost, ip: Ipv4Addr, name: &str, uid: u32) -> Context {
    let region: Arc<HeapRegion> = host.attach_local_as(name, uid);
    // SAFETY: the region stays alive through the keep-alive Arc; one context per region.
    unsafe {
        let map = RegionMapping::borrowed(region.base(), region.len(), region.clone());
        Context::from_parts(map, None, vec![None], ip).expect("context")
    }
}

/// Deterministic test pattern: byte `i` of stream `seed`.
pub fn pattern(seed: u64, off: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let x = (off + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        *b = (x >> 29) as u8;
    }
}

pub struct World {
    pub clock: SimClock,
    pub a: SimHost,
    pub b: SimHost,
}

impl World {
    pub fn new(imp: Impairments, seed: u64) -> World {
        Self::with_layout(imp, seed, layout())
    }

    pub fn with_layout(imp: Impairments, seed: u64, l: Layout) -> World {
        let clock = SimClock::new();
        let (pa, pb) = MemLink::pair(&clock, imp, imp, seed);
        let a = SimHost::new(pa, &clock, IP_A, EthernetAddress([2, 0, 0, 0, 0, 1]), l);
        let b = SimHost::new(pb, &clock, IP_B, EthernetAddress([2, 0, 0, 0, 0, 2]), l);
        World { clock, a, b }
    }

    /// One round of every party; advances the clock when nothing happened.
    pub fn step(&mut self, apps: &mut [&mut Context]) -> bool {
        let mut work = self.a.poll();
        work |= self.b.poll();
        for c in apps.iter_mut() {
            work |= c.poll() > 0;
        }
        if !work {
            let next = [
                self.a.cores[0].io().next_arrival(),
                self.b.cores[0].io().next_arrival(),
                self.a.cores[0].next_pacing_deadline(),
                self.b.cores[0].next_pacing_deadline(),
            ]
            .into_iter()
            .flatten()
            .min();
            let now = self.clock.now();
            match next {
                Some(t) if t > now => self.clock.set(t.min(now + Duration::from_millis(1))),
                // Nothing in flight: only timers can move things; 1 ms steps are finer
                // than any timer (TLP floor 10 ms, RTO floor 200 ms).
                None => self.clock.advance(Duration::from_millis(1)),
                _ => self.clock.advance(Duration::from_micros(10)),
            }
        }
        work
    }
}

/// Echo server logic: everything read is written back; EOF -> close after draining.
#[derive(Default)]
pub struct Echo {
    pub conns: Vec<(ConnId, Vec<u8>, bool)>,
}

impl Echo {
    pub fn step(&mut self, ctx: &mut Context, l: libtas::ListenerId) {
        while let Ok(Some(c)) = ctx.accept(l) {
            self.conns.push((c, Vec::new(), false));
        }
        let mut buf = vec![0u8; 64 * 1024];
        for (c, pending, closed) in &mut self.conns {
            if *closed {
                continue;
            }
            if !pending.is_empty() {
                match ctx.send(*c, pending) {
                    Ok(n) => {
                        pending.drain(..n);
                    }
                    Err(Error::WouldBlock) => {}
                    Err(e) => panic!("echo send: {e}"),
                }
            }
            if pending.len() < 256 * 1024 {
                match ctx.recv(*c, &mut buf) {
                    Ok(0) if pending.is_empty() => {
                        ctx.close(*c).unwrap();
                        *closed = true;
                    }
                    Ok(0) => {}
                    Ok(n) => pending.extend_from_slice(&buf[..n]),
                    Err(Error::WouldBlock) => {}
                    Err(e) => panic!("echo recv: {e}"),
                }
            }
        }
    }
}


/// Listen on `port` of host A, stepping the world until the reply arrives.
pub fn listen(w: &mut World, server: &mut Context, client: &mut Context, port: u16) -> ListenerId {
    let tok = server.listen_start(port, 128).unwrap();
    loop {
        w.step(&mut [server, client]);
        if let Some(l) = server.listen_result(tok).unwrap() {
            return l;
        }
    }
}

/// What one bulk transfer measured.
#[derive(Debug, Clone, Copy)]
pub struct Transfer {
    /// Simulated seconds from connect to the last byte verified.
    pub secs: f64,
    /// Goodput in Mbit/s of simulated time.
    pub mbps: f64,
    /// Retransmission events at the sender (RTOs, fast retransmits, SACK ranges, probes).
    pub rtos: u64,
    /// Selectively retransmitted segments at the sender.
    pub retx_segments: u64,
    /// Ranges the sender's SACK scoreboard asked for.
    pub sack_ranges: u64,
}

/// Stream `total` bytes from B (client) to A (server) through `imp`, verifying every
/// byte at the receiver. `pause` makes the receiver stop reading for that long after
/// each `pause_every` bytes (zero-window phases).
///
/// Congestion control is off (`unlimited`): these transfers measure loss recovery alone,
/// as they did before congestion control existed (slowpath/tests/sim_cc.rs measures it).
pub fn bulk(imp: Impairments, seed: u64, total: u64, pause: Option<(u64, Duration)>) -> Transfer {
    bulk_from(imp, seed, total, pause, None)
}

/// [`bulk`] with the virtual clock first moved to `start`.
pub fn bulk_from(imp: Impairments, seed: u64, total: u64, pause: Option<(u64, Duration)>, start: Option<tas_fastpath::time::Instant>) -> Transfer {
    bulk_alg(imp, seed, total, pause, start, tas_slowpath::cc::Algorithm::Unlimited)
}

/// [`bulk_from`] under congestion control `alg` (both hosts).
pub fn bulk_alg(
    imp: Impairments,
    seed: u64,
    total: u64,
    pause: Option<(u64, Duration)>,
    start: Option<tas_fastpath::time::Instant>,
    alg: tas_slowpath::cc::Algorithm,
) -> Transfer {
    let mut w = World::new(imp, seed);
    if let Some(t) = start {
        w.clock.set(t);
    }
    w.a.slow.set_congestion_control(None, alg, None);
    w.b.slow.set_congestion_control(None, alg, None);
    let mut server = context(&mut w.a, IP_A, "sink");
    let mut client = context(&mut w.b, IP_B, "source");
    let l = listen(&mut w, &mut server, &mut client, 5001);
    let t0 = w.clock.now();
    let conn = client.connect_start(SocketAddrV4::new(IP_A, 5001)).unwrap();
    let mut sconn: Option<ConnId> = None;
    let (mut sent, mut recvd) = (0u64, 0u64);
    let mut chunk = vec![0u8; 64 * 1024];
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut expect = vec![0u8; 64 * 1024];
    let mut paused_until = None;
    let mut next_pause = pause.map(|(every, _)| every);
    let limit = Duration::from_secs(3600);
    while recvd < total {
        assert!(w.clock.now().as_nanos() - t0.as_nanos() < limit.as_nanos() as u64, "stalled at {recvd} of {total}");
        w.step(&mut [&mut server, &mut client]);
        if let ConnState::Failed(e) = client.state(conn) {
            panic!("client failed: {e} at {recvd} of {total}");
        }
        if sconn.is_none() {
            sconn = server.accept(l).unwrap();
        }
        if client.state(conn) != ConnState::Connecting && sent < total && client.writable(conn) > 0 {
            let n = (total - sent).min(chunk.len() as u64).min(client.writable(conn) as u64) as usize;
            pattern(seed, sent, &mut chunk[..n]);
            match client.send(conn, &chunk[..n]) {
                Ok(k) => sent += k as u64,
                Err(Error::WouldBlock) => {}
                Err(e) => panic!("send: {e}"),
            }
        }
        let Some(sc) = sconn else { continue };
        if let Some(until) = paused_until {
            if w.clock.now() < until {
                continue;
            }
            paused_until = None;
        }
        match server.recv(sc, &mut rbuf) {
            Ok(0) => panic!("early EOF at {recvd}"),
            Ok(n) => {
                pattern(seed, recvd, &mut expect[..n]);
                assert!(rbuf[..n] == expect[..n], "corrupt data at offset {recvd}");
                recvd += n as u64;
                if let (Some(p), Some((every, d))) = (next_pause, pause) {
                    if recvd >= p {
                        paused_until = Some(w.clock.now() + d);
                        next_pause = Some(p + every);
                    }
                }
            }
            Err(Error::WouldBlock) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    let secs = (w.clock.now().as_nanos() - t0.as_nanos()) as f64 / 1e9;
    let c = w.b.cores[0].counters();
    use std::sync::atomic::Ordering::Relaxed;
    Transfer {
        secs,
        mbps: total as f64 * 8.0 / secs / 1e6,
        rtos: c.rto_fired.load(Relaxed),
        retx_segments: c.retransmitted_segments.load(Relaxed),
        sack_ranges: w.b.slow.counters().sack_retransmits,
    }
}
