//! Two whole stacks (real fast path + slow path + libtas) joined by the in-memory link,
//! on a virtual clock, single-threaded and deterministic.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::*;
use libtas::{ConnState, Error};
use sha2::{Digest, Sha256};
use tas_fastpath::io::mem::Impairments;
use tas_fastpath::time::Clock;

#[test]
fn exchange_100mb_both_ways_and_close() {
    const TOTAL: u64 = 100_000_000;
    let mut w = World::new(Impairments::default(), 1);
    let mut server = context(&mut w.a, IP_A, "echo");
    let mut client = context(&mut w.b, IP_B, "client");

    let tok = server.listen_start(7000, 128).unwrap();
    let listener = loop {
        w.step(&mut [&mut server, &mut client]);
        if let Some(l) = server.listen_result(tok).unwrap() {
            break l;
        }
    };
    let conn = client.connect_start(SocketAddrV4::new(IP_A, 7000)).unwrap();
    let mut echo = Echo::default();
    let (mut sent, mut recvd) = (0u64, 0u64);
    let (mut h_sent, mut h_recv) = (Sha256::new(), Sha256::new());
    let mut chunk = vec![0u8; 64 * 1024];
    let mut expect = vec![0u8; 64 * 1024];
    let mut shut = false;
    let mut steps = 0u64;
    loop {
        steps += 1;
        assert!(steps < 50_000_000, "no progress: sent {sent} received {recvd}");
        w.step(&mut [&mut server, &mut client]);
        echo.step(&mut server, listener);
        match client.state(conn) {
            ConnState::Connecting => continue,
            ConnState::Failed(e) => panic!("connection failed: {e}"),
            _ => {}
        }
        if sent < TOTAL {
            let n = (TOTAL - sent).min(chunk.len() as u64) as usize;
            pattern(7, sent, &mut chunk[..n]);
            match client.send(conn, &chunk[..n]) {
                Ok(k) => {
                    h_sent.update(&chunk[..k]);
                    sent += k as u64;
                }
                Err(Error::WouldBlock) => {}
                Err(e) => panic!("send: {e}"),
            }
        } else if !shut {
            client.shutdown(conn).unwrap();
            shut = true;
        }
        match client.recv(conn, &mut chunk) {
            Ok(0) => break,
            Ok(n) => {
                pattern(7, recvd, &mut expect[..n]);
                assert!(chunk[..n] == expect[..n], "echoed bytes differ at offset {recvd}");
                h_recv.update(&chunk[..n]);
                recvd += n as u64;
            }
            Err(Error::WouldBlock) => {}
            Err(e) => panic!("recv: {e}"),
        }
    }
    assert_eq!(sent, TOTAL);
    assert_eq!(recvd, TOTAL);
    assert_eq!(h_sent.finalize(), h_recv.finalize());
    client.close(conn).unwrap();

    // Orderly close: both flows leave the fast path, the client (active closer) holds
    // TIME_WAIT, then nothing.
    for _ in 0..200_000 {
        w.step(&mut [&mut server, &mut client]);
        echo.step(&mut server, listener);
        if w.a.slow.flow_count() == 0 && w.b.slow.flow_count() == 0 {
            break;
        }
    }
    assert_eq!(w.a.slow.flow_count(), 0, "server still holds flows");
    assert_eq!(w.b.slow.flow_count(), 0, "client still holds flows");
    assert_eq!(w.a.slow.conn_count(), 0, "passive closer keeps no state");
    assert_eq!(w.b.slow.conn_infos().iter().map(|c| c.state).collect::<Vec<_>>(), vec!["TIME-WAIT"]);
    let until = w.clock.now() + Duration::from_secs(2);
    while w.clock.now() < until {
        w.step(&mut [&mut server, &mut client]);
    }
    assert_eq!(w.b.slow.conn_count(), 0, "TIME_WAIT expired");
    let ca = w.a.slow.counters();
    assert_eq!((ca.passive_opens, ca.closes, ca.resets), (1, 1, 0));
    let cb = w.b.slow.counters();
    assert_eq!((cb.active_opens, cb.closes, cb.resets), (1, 1, 0));
    let fa = w.a.cores[0].counters();
    assert_eq!(fa.drop_checksum.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn connect_to_closed_port_is_refused() {
    let mut w = World::new(Impairments::default(), 2);
    let mut server = context(&mut w.a, IP_A, "nobody");
    let mut client = context(&mut w.b, IP_B, "client");
    let conn = client.connect_start(SocketAddrV4::new(IP_A, 9)).unwrap();
    for _ in 0..100_000 {
        w.step(&mut [&mut server, &mut client]);
        if !matches!(client.state(conn), ConnState::Connecting) {
            break;
        }
    }
    assert_eq!(client.state(conn), ConnState::Failed(Error::Refused));
    assert_eq!(w.a.slow.counters().rsts_sent, 1);
}

#[test]
fn recovers_from_loss() {
    const TOTAL: u64 = 2_000_000;
    let imp = Impairments { loss: 0.01, ..Impairments::default() };
    let mut w = World::new(imp, 3);
    let mut server = context(&mut w.a, IP_A, "echo");
    let mut client = context(&mut w.b, IP_B, "client");
    let tok = server.listen_start(80, 16).unwrap();
    let listener = loop {
        w.step(&mut [&mut server, &mut client]);
        if let Some(l) = server.listen_result(tok).unwrap() {
            break l;
        }
    };
    let conn = client.connect_start(SocketAddrV4::new(IP_A, 80)).unwrap();
    let mut echo = Echo::default();
    let (mut sent, mut recvd) = (0u64, 0u64);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut expect = vec![0u8; 16 * 1024];
    let deadline = Duration::from_secs(600);
    while recvd < TOTAL {
        assert!(w.clock.now().as_nanos() < deadline.as_nanos() as u64, "stalled at {recvd}");
        w.step(&mut [&mut server, &mut client]);
        echo.step(&mut server, listener);
        if let ConnState::Failed(e) = client.state(conn) {
            panic!("failed: {e}");
        }
        if client.state(conn) == ConnState::Connecting {
            continue;
        }
        if sent < TOTAL {
            let n = (TOTAL - sent).min(chunk.len() as u64) as usize;
            pattern(9, sent, &mut chunk[..n]);
            if let Ok(k) = client.send(conn, &chunk[..n]) {
                sent += k as u64;
            }
        }
        if let Ok(n) = client.recv(conn, &mut chunk) {
            assert!(n > 0, "unexpected EOF");
            pattern(9, recvd, &mut expect[..n]);
            assert!(chunk[..n] == expect[..n], "mismatch at {recvd}");
            recvd += n as u64;
        }
    }
    let c = w.b.cores[0].counters();
    let retx = c.rto_fired.load(std::sync::atomic::Ordering::Relaxed)
        + c.retransmitted_segments.load(std::sync::atomic::Ordering::Relaxed);
    assert!(retx > 0, "1% loss must have caused retransmissions");
}

/// A SYN from a spoofed address (nobody will ever complete it).
fn spoofed_syn(port: u16, isn: u32) -> Vec<u8> {
    use tas_fastpath::wire::{EtherType, EthernetAddress, EthernetRepr, Ipv4Repr, TcpFlags, TcpRepr};
    let src = std::net::Ipv4Addr::new(10, 0, 0, 99);
    let tcp = TcpRepr {
        src_port: port,
        dst_port: 8000,
        seq_number: isn,
        flags: TcpFlags::SYN,
        window_len: 65535,
        max_seg_size: Some(1460),
        ..TcpRepr::default()
    };
    let tl = tcp.header_len();
    let mut b = vec![0u8; 34 + tl];
    EthernetRepr { src_addr: EthernetAddress([2, 0, 0, 0, 0, 99]), dst_addr: EthernetAddress([2, 0, 0, 0, 0, 1]), ethertype: EtherType::Ipv4 }
        .emit(&mut b[..14])
        .unwrap();
    Ipv4Repr { src_addr: src, dst_addr: IP_A, protocol: 6, payload_len: tl, ttl: 64, ecn: 0, ident: 0, dont_frag: true }
        .emit(&mut b[14..34])
        .unwrap();
    tcp.emit(&mut b[34..], src, IP_A, &[]).unwrap();
    b
}

#[test]
fn syn_flood_does_not_lock_out_clients() {
    syn_flood_case(Duration::ZERO);
}

/// The same after 40 minutes: the cookie's 5-bit time counter has wrapped (periods of
/// 64 s), which once made every cookie invalid (the hash took the unwrapped counter).
#[test]
fn syn_cookies_are_accepted_after_the_time_counter_wraps() {
    syn_flood_case(Duration::from_secs(40 * 60));
}

fn syn_flood_case(uptime: Duration) {
    let mut w = World::new(Impairments::default(), 4);
    w.clock.advance(uptime);
    let mut server = context(&mut w.a, IP_A, "echo");
    let mut client = context(&mut w.b, IP_B, "client");
    let tok = server.listen_start(8000, 8).unwrap();
    let listener = loop {
        w.step(&mut [&mut server, &mut client]);
        if let Some(l) = server.listen_result(tok).unwrap() {
            break l;
        }
    };
    // 200 handshakes that never complete: the backlog of 8 is full after 8.
    for i in 0..200u16 {
        w.b.cores[0].io_mut().inject(&spoofed_syn(20000 + i, 1000 * i as u32));
    }
    for _ in 0..50 {
        w.step(&mut [&mut server, &mut client]);
    }
    let c = w.a.slow.counters();
    assert!(c.syn_cookies_sent >= 190, "SYNs beyond the backlog get cookies ({})", c.syn_cookies_sent);
    assert_eq!(w.a.slow.conn_count(), 8, "only the backlog holds state");
    // A real client still gets in (through a cookie) and its data flows.
    let conn = client.connect_start(SocketAddrV4::new(IP_A, 8000)).unwrap();
    let mut echo = Echo::default();
    let msg = b"hello through a SYN flood";
    let mut got = Vec::new();
    let mut sent = false;
    for _ in 0..200_000 {
        w.step(&mut [&mut server, &mut client]);
        echo.step(&mut server, listener);
        if client.state(conn) == ConnState::Established && !sent {
            assert_eq!(client.send(conn, msg).unwrap(), msg.len());
            sent = true;
        }
        let mut buf = [0u8; 64];
        if let Ok(n) = client.recv(conn, &mut buf) {
            got.extend_from_slice(&buf[..n]);
            if got.len() == msg.len() {
                break;
            }
        }
    }
    assert_eq!(got, msg);
    assert_eq!(w.a.slow.counters().syn_cookies_accepted, 1);
}

#[test]
fn keepalive_probes_and_gives_up_on_a_dead_peer() {
    use tas_fastpath::core::Keepalive;
    use tas_fastpath::io::mem::MemLink;
    use tas_fastpath::time::SimClock;
    use tas_fastpath::wire::EthernetAddress;
    use tas_slowpath::sim::SimHost;
    let clock = SimClock::new();
    let (pa, pb) = MemLink::pair(&clock, Impairments::default(), Impairments::default(), 5);
    let ka = Keepalive { idle_us: 1_000_000, interval_us: 500_000, probes: 3 };
    let a = SimHost::with_keepalive(pa, &clock, IP_A, EthernetAddress([2, 0, 0, 0, 0, 1]), layout(), Some(ka));
    let b = SimHost::new(pb, &clock, IP_B, EthernetAddress([2, 0, 0, 0, 0, 2]), layout());
    let mut w = World { clock, a, b };
    let mut server = context(&mut w.a, IP_A, "ka-server");
    let mut client = context(&mut w.b, IP_B, "client");
    let l = listen(&mut w, &mut server, &mut client, 9100);
    let conn = client.connect_start(SocketAddrV4::new(IP_A, 9100)).unwrap();
    let mut sc = None;
    while sc.is_none() {
        w.step(&mut [&mut server, &mut client]);
        sc = server.accept(l).unwrap();
    }
    let sc = sc.unwrap();
    fn w_probes(w: &World) -> u64 {
        w.a.cores[0].counters().keepalive_probes.load(std::sync::atomic::Ordering::Relaxed)
    }
    // Idle for 5 s with a live peer: probes go out and are answered, nothing breaks.
    let until = w.clock.now() + Duration::from_secs(5);
    while w.clock.now() < until {
        w.step(&mut [&mut server, &mut client]);
    }
    assert!(w_probes(&w) >= 3, "a probe every idle period ({} sent)", w_probes(&w));
    assert_eq!(server.state(sc), ConnState::Established, "answered probes keep the connection");
    assert_eq!(client.state(conn), ConnState::Established);
    // The peer goes silent: after 3 unanswered probes the connection is given up.
    w.b.cores[0].io().set_tx_filter(Some(|_| false));
    let until = w.clock.now() + Duration::from_secs(5);
    while w.clock.now() < until && server.state(sc) == ConnState::Established {
        w.step(&mut [&mut server, &mut client]);
    }
    assert_eq!(server.state(sc), ConnState::Failed(Error::TimedOut));
}

#[test]
fn simultaneous_open() {
    // Both sides connect to each other at once with matching ports (each stack's first
    // ephemeral port is 61000): the SYNs cross (RFC 9293 3.5, figure 7).
    let mut w = World::new(Impairments::default(), 6);
    let mut a = context(&mut w.a, IP_A, "a");
    let mut b = context(&mut w.b, IP_B, "b");
    let ca = a.connect_start(SocketAddrV4::new(IP_B, 61000)).unwrap();
    let cb = b.connect_start(SocketAddrV4::new(IP_A, 61000)).unwrap();
    for _ in 0..100_000 {
        w.step(&mut [&mut a, &mut b]);
        if a.state(ca) == ConnState::Established && b.state(cb) == ConnState::Established {
            break;
        }
    }
    assert_eq!((a.state(ca), b.state(cb)), (ConnState::Established, ConnState::Established));
    assert_eq!(a.local_port(ca), Some(61000));
    for h in [&w.a, &w.b] {
        let c = h.slow.counters();
        assert_eq!((c.active_opens, c.passive_opens, c.rsts_sent), (1, 0, 0), "one crossed handshake, no resets");
    }
    a.send(ca, b"from a").unwrap();
    b.send(cb, b"from b").unwrap();
    let (mut ga, mut gb) = (Vec::new(), Vec::new());
    for _ in 0..100_000 {
        w.step(&mut [&mut a, &mut b]);
        let mut buf = [0u8; 16];
        if let Ok(n) = a.recv(ca, &mut buf) {
            ga.extend_from_slice(&buf[..n]);
        }
        if let Ok(n) = b.recv(cb, &mut buf) {
            gb.extend_from_slice(&buf[..n]);
        }
        if ga.len() == 6 && gb.len() == 6 {
            break;
        }
    }
    assert_eq!((ga.as_slice(), gb.as_slice()), (&b"from b"[..], &b"from a"[..]));
}

#[test]
fn events_wait_when_an_application_does_not_poll() {
    // Queues of 16 entries, 40 connections arriving and sending while the server
    // application is busy: neither the slow path's Accepted events nor the fast path's
    // RxData events may be lost; they wait until the application polls again.
    let small = tas_proto::shm::Layout { queue_entries: 16, ..layout() };
    let mut w = World::with_layout(Impairments::default(), 8, small);
    let mut server = context(&mut w.a, IP_A, "busy");
    let mut client = context(&mut w.b, IP_B, "client");
    let l = listen(&mut w, &mut server, &mut client, 7100);
    let conns: Vec<_> = (0..40).map(|_| client.connect_start(SocketAddrV4::new(IP_A, 7100)).unwrap()).collect();
    for _ in 0..200_000 {
        w.step(&mut [&mut client]);
        if conns.iter().all(|&c| client.state(c) == ConnState::Established) {
            break;
        }
    }
    assert!(conns.iter().all(|&c| client.state(c) == ConnState::Established), "all 40 handshakes complete without the server app");
    for (i, &c) in conns.iter().enumerate() {
        assert_eq!(client.send(c, &[i as u8; 100]).unwrap(), 100);
    }
    let until = w.clock.now() + Duration::from_millis(50);
    while w.clock.now() < until {
        w.step(&mut [&mut client]);
    }
    // The server application wakes up: every connection and every byte is there.
    let mut got = std::collections::HashMap::new();
    for _ in 0..200_000 {
        w.step(&mut [&mut server, &mut client]);
        while let Ok(Some(c)) = server.accept(l) {
            got.insert(c, Vec::new());
        }
        for (c, v) in got.iter_mut() {
            let mut buf = [0u8; 200];
            if let Ok(n) = server.recv(*c, &mut buf) {
                v.extend_from_slice(&buf[..n]);
            }
        }
        if got.len() == 40 && got.values().all(|v| v.len() == 100) {
            break;
        }
    }
    assert_eq!(got.len(), 40, "every connection was accepted");
    let mut firsts: Vec<u8> = got.values().map(|v| {
        assert_eq!(v.len(), 100);
        assert!(v.iter().all(|&b| b == v[0]), "bytes of one connection stay together");
        v[0]
    }).collect();
    firsts.sort();
    assert_eq!(firsts, (0..40).collect::<Vec<u8>>());
    assert!(w.a.cores[0].counters().app_queue_full.load(std::sync::atomic::Ordering::Relaxed) > 0, "the fast path's queue did fill");
}

/// `SO_REUSEPORT`-style listener groups: two applications of one user share a port and the
/// service spreads connections over both; a listener without the option, or of another
/// user, is refused the port; when one member leaves, the other takes every new
/// connection.
#[test]
fn reuseport_group_spreads_connections_and_refuses_strangers() {
    use libtas::{Context, ListenOptions};
    const PORT: u16 = 8000;
    const N: usize = 40;
    let mut w = World::new(Impairments::default(), 3);
    let mut s1 = context(&mut w.a, IP_A, "worker-1");
    let mut s2 = context(&mut w.a, IP_A, "worker-2");
    let mut other_user = context_as(&mut w.a, IP_A, "intruder", 1000);
    let mut client = context(&mut w.b, IP_B, "client");

    let listen = |w: &mut World, ctx: &mut Context, opts: ListenOptions| {
        let tok = ctx.listen_start_with(PORT, 128, opts).unwrap();
        loop {
            w.step(&mut [&mut *ctx]);
            match ctx.listen_result(tok) {
                Ok(None) => continue,
                other => return other,
            }
        }
    };
    let l1 = listen(&mut w, &mut s1, ListenOptions::reuse_port()).unwrap().unwrap();
    let l2 = listen(&mut w, &mut s2, ListenOptions::reuse_port()).unwrap().unwrap();
    assert_eq!(listen(&mut w, &mut s2, ListenOptions::default()), Err(Error::AddrInUse), "a member without reuse_port");
    assert_eq!(
        listen(&mut w, &mut other_user, ListenOptions::reuse_port()),
        Err(Error::AddrInUse),
        "another user must not join the group"
    );

    // `n` connections, each exchanging a distinct message through whichever member
    // accepted it; returns how many each member accepted.
    let round = |w: &mut World, s1: &mut Context, s2: &mut Context, client: &mut Context, n: usize| {
        let (mut e1, mut e2) = (Echo::default(), Echo::default());
        let conns: Vec<_> = (0..n).map(|_| client.connect_start(SocketAddrV4::new(IP_A, PORT)).unwrap()).collect();
        let mut got = vec![Vec::new(); n];
        let mut sent = vec![false; n];
        let mut steps = 0;
        while got.iter().enumerate().any(|(i, g)| g.len() < format!("hello {i}").len()) {
            steps += 1;
            assert!(steps < 1_000_000, "no progress");
            w.step(&mut [&mut *s1, &mut *s2, &mut *client]);
            e1.step(s1, l1);
            e2.step(s2, l2);
            for (i, &c) in conns.iter().enumerate() {
                let msg = format!("hello {i}");
                if !sent[i] && client.state(c) == ConnState::Established {
                    assert_eq!(client.send(c, msg.as_bytes()), Ok(msg.len()));
                    sent[i] = true;
                }
                let mut buf = [0u8; 64];
                if let Ok(k) = client.recv(c, &mut buf) {
                    got[i].extend_from_slice(&buf[..k]);
                }
            }
        }
        for (i, g) in got.iter().enumerate() {
            assert_eq!(g, format!("hello {i}").as_bytes(), "connection {i} got another's bytes");
        }
        for c in conns {
            client.close(c).unwrap();
        }
        (e1.conns.len(), e2.conns.len())
    };
    let (a, b) = round(&mut w, &mut s1, &mut s2, &mut client, N);
    assert_eq!(a + b, N);
    // A hash over 40 random ephemeral ports: fewer than 5 on one side has probability ~1e-7.
    assert!(a >= 5 && b >= 5, "connections not spread over the group: {a} and {b}");

    // Worker 1 leaves: worker 2 takes every new connection.
    s1.unlisten(l1).unwrap();
    let (a, b) = round(&mut w, &mut s1, &mut s2, &mut client, N / 2);
    assert_eq!((a, b), (0, N / 2));
}

/// A reuse-port group: the founder (like nginx's master) listens with sharing and never
/// accepts; two "forked workers" join the port. Every connection must reach a worker.
#[test]
fn shared_port_spreads_connections_over_accepting_workers() {
    let mut w = World::new(Impairments::default(), 11);
    let mut master = context(&mut w.a, IP_A, "master");
    let mut w1 = context(&mut w.a, IP_A, "worker1");
    let mut w2 = context(&mut w.a, IP_A, "worker2");
    let mut other = context(&mut w.a, IP_A, "other");
    let mut client = context(&mut w.b, IP_B, "client");
    let listen = |w: &mut World, ctx: &mut libtas::Context, shared: bool, cl: &mut libtas::Context| {
        let tok = if shared { ctx.listen_start_shared(8080, 16) } else { ctx.listen_start(8080, 16) }.unwrap();
        loop {
            w.step(&mut [&mut *ctx, &mut *cl]);
            if let Some(r) = ctx.listen_result(tok).transpose() {
                return r;
            }
        }
    };
    let lm = listen(&mut w, &mut master, true, &mut client).expect("founder listens");
    let l1 = listen(&mut w, &mut w1, true, &mut client).expect("worker 1 joins");
    let l2 = listen(&mut w, &mut w2, true, &mut client).expect("worker 2 joins");
    assert_eq!(listen(&mut w, &mut other, false, &mut client), Err(Error::AddrInUse), "a non-shared listen must not join");
    assert_eq!(listen(&mut w, &mut w1, true, &mut client), Err(Error::AddrInUse), "one application, one listener per port");
    let mut got = [0usize; 2];
    for _ in 0..8 {
        let c = client.connect_start(SocketAddrV4::new(IP_A, 8080)).unwrap();
        for _ in 0..100_000 {
            w.step(&mut [&mut master, &mut w1, &mut w2, &mut client]);
            if let Some(a) = w1.accept(l1).unwrap() {
                got[0] += 1;
                w1.close(a).unwrap();
                break;
            }
            if let Some(a) = w2.accept(l2).unwrap() {
                got[1] += 1;
                w2.close(a).unwrap();
                break;
            }
        }
        assert_eq!(client.state(c), ConnState::Established, "connection not established");
        client.close(c).unwrap();
    }
    assert_eq!(got[0] + got[1], 8, "every connection reached a worker: {got:?}");
    assert!(got[0] > 0 && got[1] > 0, "both workers get connections: {got:?}");
    assert_eq!(master.pending_accepts(lm), 0, "the founder never accepts, so it must get nothing");
    // A worker leaves: the port stays with the others.
    w1.unlisten(l1).unwrap();
    let c = client.connect_start(SocketAddrV4::new(IP_A, 8080)).unwrap();
    let mut accepted = false;
    for _ in 0..100_000 {
        w.step(&mut [&mut master, &mut w1, &mut w2, &mut client]);
        if w2.accept(l2).unwrap().is_some() {
            accepted = true;
            break;
        }
    }
    assert!(accepted && client.state(c) == ConnState::Established);
}

/// `Context::info_start` (the shim's TCP_INFO): after an echo over a lossy link the
/// service reports a real RTT, MSS, window and the retransmissions it made, and the
/// application side counts every byte acknowledged.
#[test]
fn connection_info_reports_rtt_window_and_retransmissions() {
    const TOTAL: u64 = 2_000_000;
    let imp = Impairments { loss: 0.01, delay: Duration::from_micros(200), ..Impairments::default() };
    let mut w = World::new(imp, 5);
    let mut server = context(&mut w.a, IP_A, "echo");
    let mut client = context(&mut w.b, IP_B, "client");
    let tok = server.listen_start(81, 16).unwrap();
    let listener = loop {
        w.step(&mut [&mut server, &mut client]);
        if let Some(l) = server.listen_result(tok).unwrap() {
            break l;
        }
    };
    let conn = client.connect_start(SocketAddrV4::new(IP_A, 81)).unwrap();
    let mut echo = Echo::default();
    let (mut sent, mut recvd) = (0u64, 0u64);
    let mut chunk = vec![0u8; 16 * 1024];
    while recvd < TOTAL {
        assert!(w.clock.now().as_nanos() < Duration::from_secs(600).as_nanos() as u64, "stalled at {recvd}");
        w.step(&mut [&mut server, &mut client]);
        echo.step(&mut server, listener);
        if client.state(conn) == ConnState::Connecting {
            continue;
        }
        if sent < TOTAL {
            let n = (TOTAL - sent).min(chunk.len() as u64) as usize;
            pattern(3, sent, &mut chunk[..n]);
            if let Ok(k) = client.send(conn, &chunk[..n]) {
                sent += k as u64;
            }
        }
        if let Ok(n) = client.recv(conn, &mut chunk) {
            assert!(n > 0, "unexpected EOF");
            recvd += n as u64;
        }
    }
    // Everything came back, so everything was acknowledged.
    for _ in 0..1000 {
        if client.tx_outstanding(conn) == 0 {
            break;
        }
        w.step(&mut [&mut server, &mut client]);
    }
    assert_eq!(client.tx_outstanding(conn), 0);
    assert_eq!(client.tx_acked(conn), TOTAL);
    assert_eq!(client.rx_total(conn), TOTAL);
    let t = client.info_start(conn).unwrap();
    let info = loop {
        w.step(&mut [&mut server, &mut client]);
        if let Some(i) = client.info_result(t).unwrap() {
            break i;
        }
    };
    assert!(info.opts & libtas::tas_proto::shm::INFO_FOUND != 0, "{info:?}");
    assert!(info.srtt_us >= 400 && info.srtt_us < 1_000_000, "RTT of a 2 x 200 µs path: {info:?}");
    assert!(info.mss >= 500 && info.mss <= 1460, "{info:?}");
    assert!(info.cwnd > 0, "{info:?}");
    assert!(info.retransmits > 0, "1 % loss over 2 MB must have caused retransmissions: {info:?}");
    assert!(info.rto_us >= 200_000, "{info:?}");
    // The fast path's state was read for the reply (decisions §21).
    use libtas::tas_proto::shm::{CA_OPEN, INFO_FRESH};
    assert!(info.opts & INFO_FRESH != 0, "{info:?}");
    assert_eq!(info.sent_bytes_lo as u64, TOTAL, "every byte sent at least once, none twice: {info:?}");
    assert!(info.retrans_bytes_lo > 0, "1 % loss: bytes were sent again: {info:?}");
    assert!((info.retrans_bytes_lo as u64) < TOTAL / 5, "{info:?}");
    assert_eq!((info.unacked_bytes, info.notsent_bytes), (0, 0), "all acknowledged: {info:?}");
    assert_eq!((info.ca_state, info.sacked, info.lost, info.retrans), (CA_OPEN, 0, 0, 0), "recovered: {info:?}");
    assert_eq!((info.rto_backoff, info.probes), (0, 0), "{info:?}");
    assert!(info.min_rtt_us >= 400 && info.min_rtt_us <= info.srtt_us, "{info:?}");
    assert!(info.snd_wnd > 0 && info.snd_wnd <= 1 << 30, "the echo server's window: {info:?}");
    assert!(info.rcv_wnd > 0 && info.rcv_wnd <= info.rcv_ssthresh, "{info:?}");
    assert!(info.total_rto_recoveries as u32 <= info.total_rto as u32, "{info:?}");
    assert!(info.delivery_kbps > 0, "{info:?}");
    assert!(info.last_ack_recv_ms < 1_000, "{info:?}");
    assert_eq!(client.info_result(t), Err(Error::InvalidHandle), "a token is answered once");
}

/// A receive buffer asked for at listen (`SO_RCVBUF` of the shim) or connect bounds the
/// window: a receiver that does not read holds at most that much, and the transfer still
/// completes byte for byte once it reads.
#[test]
fn receive_buffer_bounds_the_window() {
    const TOTAL: u64 = 300_000;
    const RCVBUF: u32 = 8192;
    let mut w = World::new(Impairments::default(), 7);
    let mut server = context(&mut w.a, IP_A, "sink");
    let mut client = context(&mut w.b, IP_B, "client");
    let tok = server.listen_start_with(82, 16, libtas::ListenOptions::default().with_rcvbuf(RCVBUF)).unwrap();
    let listener = loop {
        w.step(&mut [&mut server, &mut client]);
        if let Some(l) = server.listen_result(tok).unwrap() {
            break l;
        }
    };
    // The client's own receive buffer: 4 KiB, for the reply below.
    let conn = client.connect_start_with(SocketAddrV4::new(IP_A, 82), 4096).unwrap();
    let mut chunk = vec![0u8; 16 * 1024];
    let mut sent = 0u64;
    let mut accepted = None;
    // The server does not read for a while: what it holds stays within its buffer.
    for _ in 0..20_000 {
        w.step(&mut [&mut server, &mut client]);
        if accepted.is_none() {
            accepted = server.accept(listener).unwrap();
        }
        if client.state(conn) != ConnState::Connecting && sent < TOTAL {
            let n = (TOTAL - sent).min(chunk.len() as u64) as usize;
            pattern(5, sent, &mut chunk[..n]);
            if let Ok(k) = client.send(conn, &chunk[..n]) {
                sent += k as u64;
            }
        }
        if let Some(s) = accepted {
            assert!(server.readable(s) <= RCVBUF as usize, "holds {} > {RCVBUF}", server.readable(s));
        }
    }
    let s = accepted.expect("accepted");
    assert_eq!(server.readable(s), RCVBUF as usize, "the window filled up to the buffer");
    // Now it reads everything; the data is intact.
    let (mut got, mut expect) = (0u64, vec![0u8; 16 * 1024]);
    let mut buf = vec![0u8; 16 * 1024];
    let mut steps = 0u64;
    while got < TOTAL {
        steps += 1;
        assert!(steps < 5_000_000, "stalled at {got}");
        w.step(&mut [&mut server, &mut client]);
        if sent < TOTAL {
            let n = (TOTAL - sent).min(chunk.len() as u64) as usize;
            pattern(5, sent, &mut chunk[..n]);
            if let Ok(k) = client.send(conn, &chunk[..n]) {
                sent += k as u64;
            }
        }
        assert!(server.readable(s) <= RCVBUF as usize);
        if let Ok(n) = server.recv(s, &mut buf) {
            pattern(5, got, &mut expect[..n]);
            assert!(buf[..n] == expect[..n], "mismatch at {got}");
            got += n as u64;
        }
    }
    // The other way: the client asked for 4 KiB at connect and does not read.
    let reply = vec![7u8; 64 * 1024];
    let mut out = 0usize;
    for _ in 0..20_000 {
        w.step(&mut [&mut server, &mut client]);
        if out < reply.len() {
            if let Ok(k) = server.send(s, &reply[out..]) {
                out += k;
            }
        }
        assert!(client.readable(conn) <= 4096, "client holds {}", client.readable(conn));
    }
    assert_eq!(client.readable(conn), 4096);
}

/// A connection moves to another application context in the middle of a transfer both
/// ways, under loss (decisions §26): the unread bytes in the receive ring (read position
/// not 0) and the unacknowledged and unsent bytes in the transmit ring move with it, the
/// old context sees `Moved`, and every byte arrives in order on both sides.
#[test]
fn connection_moves_between_contexts_mid_transfer() {
    const UP: u64 = 1_500_000;
    const DOWN: u64 = 1_000_000;
    let imp = Impairments { loss: 0.01, delay: Duration::from_micros(200), ..Impairments::default() };
    let mut w = World::new(imp, 11);
    let mut s1 = context(&mut w.a, IP_A, "first");
    let mut s2 = context(&mut w.a, IP_A, "second");
    let mut client = context(&mut w.b, IP_B, "client");
    let tok = s1.listen_start(82, 16).unwrap();
    let listener = loop {
        w.step(&mut [&mut s1, &mut s2, &mut client]);
        if let Some(l) = s1.listen_result(tok).unwrap() {
            break l;
        }
    };
    let conn = client.connect_start(SocketAddrV4::new(IP_A, 82)).unwrap();
    let c1 = loop {
        w.step(&mut [&mut s1, &mut s2, &mut client]);
        if let Ok(Some(c)) = s1.accept(listener) {
            break c;
        }
    };
    let (mut up_sent, mut up_read, mut down_sent, mut down_read) = (0u64, 0u64, 0u64, 0u64);
    let mut chunk = vec![0u8; 16 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got = vec![0u8; 64 * 1024];
    let deadline = Duration::from_secs(600).as_nanos() as u64;
    // Client side of one step: send upstream, read and check downstream.
    let mut client_step = |client: &mut libtas::Context, up_sent: &mut u64, down_read: &mut u64| {
        if *up_sent < UP {
            let n = (UP - *up_sent).min(chunk.len() as u64) as usize;
            pattern(21, *up_sent, &mut chunk[..n]);
            if let Ok(k) = client.send(conn, &chunk[..n]) {
                *up_sent += k as u64;
            }
        }
        let mut buf = vec![0u8; 64 * 1024];
        if let Ok(n) = client.recv(conn, &mut buf) {
            let mut exp = vec![0u8; n];
            pattern(22, *down_read, &mut exp);
            assert!(buf[..n] == exp[..], "downstream corrupt at {}", *down_read);
            *down_read += n as u64;
        }
    };
    // The first context reads 100 kB (not a multiple of anything), writes what fits, then
    // stops reading while the client keeps sending: its receive ring fills.
    while up_read < 100_003 || down_sent < 300_000 {
        assert!(w.clock.now().as_nanos() < deadline, "stalled before the move");
        w.step(&mut [&mut s1, &mut s2, &mut client]);
        client_step(&mut client, &mut up_sent, &mut down_read);
        if up_read < 100_003 {
            let n = (100_003 - up_read).min(got.len() as u64) as usize;
            if let Ok(k) = s1.recv(c1, &mut got[..n]) {
                pattern(21, up_read, &mut want[..k]);
                assert!(got[..k] == want[..k], "upstream corrupt at {up_read}");
                up_read += k as u64;
            }
        }
        if down_sent < 300_000 {
            let n = (300_000 - down_sent).min(16 * 1024) as usize;
            let mut d = vec![0u8; n];
            pattern(22, down_sent, &mut d);
            if let Ok(k) = s1.send(c1, &d) {
                down_sent += k as u64;
            }
        }
    }
    for _ in 0..200 {
        w.step(&mut [&mut s1, &mut s2, &mut client]);
        client_step(&mut client, &mut up_sent, &mut down_read);
    }
    let unread = s1.readable(c1);
    assert!(unread > 0, "the first context holds unread bytes at the move");
    let peer = SocketAddrV4::new(IP_B, client.local_port(conn).unwrap());
    let t = s2.adopt_start(peer, 82).unwrap();
    let c2 = loop {
        w.step(&mut [&mut s1, &mut s2, &mut client]);
        client_step(&mut client, &mut up_sent, &mut down_read);
        if let Some(a) = s2.adopt_result(t).unwrap() {
            match a {
                libtas::Adoption::Here { conn, last: false } => break conn,
                other => panic!("adopt: {other:?}"),
            }
        }
    };
    assert_eq!(w.a.slow.counters().moves, 1);
    for _ in 0..10 {
        w.step(&mut [&mut s1, &mut s2, &mut client]);
    }
    assert_eq!(s1.state(c1), ConnState::Failed(Error::Moved));
    assert!(s2.readable(c2) >= unread, "unread bytes moved: {} < {unread}", s2.readable(c2));
    // The second context finishes both directions.
    let mut closed = false;
    while down_read < DOWN || up_read < UP {
        assert!(w.clock.now().as_nanos() < deadline, "stalled after the move: up {up_read}, down {down_read}");
        w.step(&mut [&mut s1, &mut s2, &mut client]);
        client_step(&mut client, &mut up_sent, &mut down_read);
        if let Ok(k) = s2.recv(c2, &mut got) {
            assert!(k > 0, "early EOF at {up_read}");
            pattern(21, up_read, &mut want[..k]);
            assert!(got[..k] == want[..k], "upstream corrupt at {up_read} after the move");
            up_read += k as u64;
        }
        if down_sent < DOWN {
            let n = (DOWN - down_sent).min(16 * 1024) as usize;
            let mut d = vec![0u8; n];
            pattern(22, down_sent, &mut d);
            if let Ok(k) = s2.send(c2, &d) {
                down_sent += k as u64;
            }
        } else if !closed {
            s2.shutdown(c2).unwrap();
            closed = true;
        }
    }
    assert_eq!((up_read, down_read), (UP, DOWN));
    // Orderly close both ways.
    client.close(conn).unwrap();
    for _ in 0..100_000 {
        w.step(&mut [&mut s1, &mut s2, &mut client]);
        if matches!(s2.state(c2), ConnState::Closed | ConnState::PeerClosed) {
            break;
        }
    }
    assert!(matches!(s2.state(c2), ConnState::Closed | ConnState::PeerClosed), "{:?}", s2.state(c2));
}

/// Sixteen clients connect at once to a listener with a backlog of 2 whose application
/// accepts only 30 ms later (Python's `socketserver` has a backlog of 5 and forks per
/// connection): every connection must be served, none reset. Linux keeps such
/// connections (handshakes beyond the queue complete later: the final ACK that found the
/// accept queue full is dropped and the SYN-ACK retransmitted). The server speaks first
/// (a greeting), so a client never sends anything that could complete a lost handshake
/// by itself.
#[test]
fn a_burst_beyond_the_backlog_is_served_without_resets() {
    const CLIENTS: usize = 16;
    let mut w = World::new(Impairments::default(), 11);
    let mut server = context(&mut w.a, IP_A, "server");
    let mut client = context(&mut w.b, IP_B, "clients");
    let tok = server.listen_start(8100, 2).unwrap();
    let listener = loop {
        w.step(&mut [&mut server, &mut client]);
        if let Some(l) = server.listen_result(tok).unwrap() {
            break l;
        }
    };
    let conns: Vec<_> = (0..CLIENTS).map(|_| client.connect_start(SocketAddrV4::new(IP_A, 8100)).unwrap()).collect();
    let accept_from = w.clock.now() + Duration::from_millis(30);
    // Server: greeting, then echo until EOF. Clients: read the greeting, send 1000 bytes,
    // read them back, close.
    let mut served: Vec<(libtas::ConnId, Vec<u8>, bool)> = Vec::new();
    let mut progress = vec![(false, false, Vec::new(), false); CLIENTS]; // greeted, sent, echoed, done
    let deadline = w.clock.now() + Duration::from_secs(60);
    let mut buf = vec![0u8; 4096];
    while progress.iter().any(|p| !p.3) {
        assert!(w.clock.now() < deadline, "not all served in 60 s: {:?}", progress.iter().map(|p| (p.0, p.1, p.2.len(), p.3)).collect::<Vec<_>>());
        w.step(&mut [&mut server, &mut client]);
        if w.clock.now() >= accept_from {
            while let Ok(Some(c)) = server.accept(listener) {
                served.push((c, b"hello\n".to_vec(), false));
            }
        }
        for (c, out, eof) in &mut served {
            if !out.is_empty() {
                match server.send(*c, out) {
                    Ok(n) => {
                        out.drain(..n);
                    }
                    Err(Error::WouldBlock) => {}
                    Err(e) => panic!("server send: {e}"),
                }
            }
            if !*eof {
                match server.recv(*c, &mut buf) {
                    Ok(0) => {
                        *eof = true;
                        server.close(*c).unwrap();
                    }
                    Ok(n) => out.extend_from_slice(&buf[..n]),
                    Err(Error::WouldBlock) => {}
                    Err(e) => panic!("server recv: {e}"),
                }
            }
        }
        for (i, &c) in conns.iter().enumerate() {
            let p = &mut progress[i];
            match client.state(c) {
                ConnState::Connecting => continue,
                ConnState::Failed(e) => panic!("client {i} failed: {e}"),
                _ => {}
            }
            if !p.0 {
                let mut g = [0u8; 6];
                match client.recv(c, &mut g) {
                    Ok(6) => {
                        assert_eq!(&g, b"hello\n");
                        p.0 = true;
                    }
                    Ok(n) => panic!("client {i}: short greeting ({n} bytes)"),
                    Err(Error::WouldBlock) => continue,
                    Err(e) => panic!("client {i} recv: {e}"),
                }
            }
            if !p.1 {
                let mut data = [0u8; 1000];
                pattern(i as u64, 0, &mut data);
                assert_eq!(client.send(c, &data).unwrap(), 1000);
                p.1 = true;
            }
            if p.2.len() < 1000 {
                match client.recv(c, &mut buf) {
                    Ok(0) => panic!("client {i}: EOF after {} echoed bytes", p.2.len()),
                    Ok(n) => p.2.extend_from_slice(&buf[..n]),
                    Err(Error::WouldBlock) => {}
                    Err(e) => panic!("client {i} recv: {e}"),
                }
            } else if !p.3 {
                let mut want = [0u8; 1000];
                pattern(i as u64, 0, &mut want);
                assert!(p.2 == want, "client {i}: echo differs");
                client.close(c).unwrap();
                p.3 = true;
            }
        }
    }
    assert_eq!(served.len(), CLIENTS, "each client accepted once");
    let (ca, cb) = (w.a.slow.counters(), w.b.slow.counters());
    assert_eq!((ca.rsts_sent, ca.resets, cb.rsts_received, cb.resets), (0, 0, 0, 0), "no connection reset");
    assert_eq!(ca.passive_opens, CLIENTS as u64);
    assert!(ca.accept_queue_overflows > 0, "the burst must have found the accept queue full");
    eprintln!(
        "burst of {CLIENTS} on a backlog of 2: all served in {:.3} s (virtual); SYN cookies sent {}, accepted {}, SYNs dropped {}, accept-queue overflows {}",
        (w.clock.now().as_nanos() - (accept_from.as_nanos() - 30_000_000)) as f64 / 1e9,
        ca.syn_cookies_sent,
        ca.syn_cookies_accepted,
        ca.syn_backlog_drops,
        ca.accept_queue_overflows
    );
}

/// Listen, accept, close the listener and listen again on the same port at once while the
/// accepted connection is still open (iperf3 does this after a client that sent nothing;
/// Linux allows it with SO_REUSEADDR): the new listener is granted and accepts the next
/// connection, the old connection still carries data. A port an outgoing connection uses
/// cannot be listened on.
#[test]
fn listening_again_while_accepted_connections_remain() {
    let mut w = World::new(Impairments::default(), 12);
    let mut server = context(&mut w.a, IP_A, "server");
    let mut client = context(&mut w.b, IP_B, "client");
    let listen = |w: &mut World, server: &mut libtas::Context, client: &mut libtas::Context, port: u16| {
        let tok = server.listen_start(port, 16).unwrap();
        loop {
            w.step(&mut [server, client]);
            if let Some(r) = server.listen_result(tok).transpose() {
                return r;
            }
        }
    };
    let accept = |w: &mut World, server: &mut libtas::Context, client: &mut libtas::Context, l: libtas::ListenerId| loop {
        w.step(&mut [server, client]);
        if let Some(c) = server.accept(l).unwrap() {
            return c;
        }
    };
    let l1 = listen(&mut w, &mut server, &mut client, 8300).expect("first listen");
    let c1 = client.connect_start(SocketAddrV4::new(IP_A, 8300)).unwrap();
    let s1 = accept(&mut w, &mut server, &mut client, l1);
    server.unlisten(l1).unwrap();
    let l2 = listen(&mut w, &mut server, &mut client, 8300).expect("listen again while the accepted connection is open");
    let c2 = client.connect_start(SocketAddrV4::new(IP_A, 8300)).unwrap();
    let s2 = accept(&mut w, &mut server, &mut client, l2);
    // Both connections carry data.
    for (c, s, msg) in [(c1, s1, b"old".as_slice()), (c2, s2, b"new".as_slice())] {
        while client.state(c) == ConnState::Connecting {
            w.step(&mut [&mut server, &mut client]);
        }
        assert_eq!(client.send(c, msg).unwrap(), 3);
        let mut buf = [0u8; 8];
        let n = loop {
            w.step(&mut [&mut server, &mut client]);
            match server.recv(s, &mut buf) {
                Ok(n) => break n,
                Err(Error::WouldBlock) => {}
                Err(e) => panic!("recv: {e}"),
            }
        };
        assert_eq!(&buf[..n], msg);
    }
    // The client's local port (an active open on host B) cannot be listened on there.
    let p = client.local_port(c1).expect("connected");
    assert_eq!(listen(&mut w, &mut client, &mut server, p), Err(Error::AddrInUse));
    let (ca, cb) = (w.a.slow.counters(), w.b.slow.counters());
    assert_eq!((ca.resets, cb.resets), (0, 0));
}
