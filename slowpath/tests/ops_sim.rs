//! The operator's view of the slow path on the simulated network: the events watchers get,
//! listeners and applications in detail, and closing or resetting a connection from the
//! control API, with both ends running the real fast path, slow path and libtas.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::*;
use libtas::{ConnState, Error};
use tas_fastpath::flow::FlowKey;
use tas_fastpath::io::mem::Impairments;
use tas_proto::queue::Occupancy;
use tas_slowpath::slow::{CloseFlowError, ConnEvent, EventKind};

/// An echo server that, unlike `common::Echo`, takes an aborted connection in its stride
/// (the test aborts them on purpose).
#[derive(Default)]
struct Echo {
    conns: Vec<(libtas::ConnId, Vec<u8>, bool)>,
}

impl Echo {
    fn step(&mut self, ctx: &mut libtas::Context, l: libtas::ListenerId) {
        while let Ok(Some(c)) = ctx.accept(l) {
            self.conns.push((c, Vec::new(), false));
        }
        let mut buf = [0u8; 4096];
        for (c, pending, done) in &mut self.conns {
            if *done {
                continue;
            }
            if !pending.is_empty() {
                match ctx.send(*c, pending) {
                    Ok(n) => drop(pending.drain(..n)),
                    Err(Error::WouldBlock) => {}
                    Err(_) => *done = true,
                }
            }
            match ctx.recv(*c, &mut buf) {
                Ok(0) if pending.is_empty() => {
                    let _ = ctx.close(*c);
                    *done = true;
                }
                Ok(n) => pending.extend_from_slice(&buf[..n]),
                Err(Error::WouldBlock) => {}
                Err(_) => *done = true,
            }
        }
    }
}

fn drain(rx: &crossbeam_channel::Receiver<ConnEvent>) -> Vec<ConnEvent> {
    rx.try_iter().collect()
}

/// The fill the control API reports for each of an application's queues is exact, in
/// both directions: what one side published and the other has not taken yet, then 0.
#[test]
fn app_queue_fill_is_exact() {
    let mut w = World::new(Impairments::default(), 11);
    let mut server = context(&mut w.a, IP_A, "lazy");
    let mut client = context(&mut w.b, IP_B, "client");
    let app = |w: &World| {
        let mut apps = w.a.slow.app_details();
        assert_eq!(apps.len(), 1);
        let a = apps.remove(0);
        assert_eq!(a.core_queues.len(), 1);
        let q = a.core_queues[0];
        assert!(!a.event_queue.corrupt && !a.request_queue.corrupt && !q.to_fp.corrupt && !q.to_app.corrupt);
        let cap = layout().queue_entries;
        assert_eq!([a.event_queue.capacity, a.request_queue.capacity, q.to_fp.capacity, q.to_app.capacity], [cap; 4]);
        // (events to the app, requests from it, doorbells to core 0, events from core 0)
        (a.event_queue.used, a.request_queue.used, q.to_fp.used, q.to_app.used)
    };
    assert_eq!(app(&w), (0, 0, 0, 0));

    // A listen request the slow path has not taken yet.
    let tok = server.listen_start(9, 16).unwrap();
    assert_eq!(app(&w), (0, 1, 0, 0));
    let l = loop {
        w.step(&mut [&mut server, &mut client]);
        if let Some(l) = server.listen_result(tok).unwrap() {
            break l;
        }
    };
    assert_eq!(app(&w), (0, 0, 0, 0));

    // Three connections the server does not look at: three Accepted events wait.
    let conns: Vec<_> = (0..3).map(|_| client.connect_start(SocketAddrV4::new(IP_A, 9)).unwrap()).collect();
    let mut guard = 0;
    while conns.iter().any(|&c| client.state(c) == ConnState::Connecting) {
        w.step(&mut [&mut client]);
        guard += 1;
        assert!(guard < 100_000);
    }
    // (the client is established before the server has the last ACK of the handshake)
    for _ in 0..50 {
        w.step(&mut [&mut client]);
    }
    assert_eq!(app(&w), (3, 0, 0, 0));

    // Five segments on one of them, each in its own fast-path batch: five data events wait.
    for i in 0..5u8 {
        assert_eq!(client.send(conns[0], &[i; 100]), Ok(100));
        for _ in 0..50 {
            w.step(&mut [&mut client]);
        }
    }
    assert_eq!(app(&w), (3, 0, 0, 5));

    // The server takes its events (one poll releases both queues) ...
    server.poll();
    assert_eq!(app(&w), (0, 0, 0, 0));
    // ... accepts (one request: the backlog credit for the slow path), reads and answers
    // (two doorbells: rx consumed, tx added, for core 0) ...
    let c = server.accept(l).unwrap().expect("accepted");
    let mut buf = [0u8; 1000];
    assert_eq!(server.recv(c, &mut buf), Ok(500));
    assert_eq!(server.send(c, b"ok"), Ok(2));
    assert_eq!(app(&w), (0, 1, 2, 0));
    // ... and the service takes them.
    w.a.poll();
    assert_eq!(app(&w), (0, 0, 0, 0));
}

/// Queue indices an application scribbled are reported clamped to the capacity and flagged,
/// never trusted, and reading them disturbs nothing: the service goes on and counts the
/// corrupt doorbell queue when its core meets it.
#[test]
fn hostile_queue_indices_are_clamped_and_flagged() {
    let mut w = World::new(Impairments::default(), 12);
    let region = w.a.attach_local_as("hostile", 0);
    let (l, mem) = (layout(), region.mem());
    let cap = l.queue_entries;
    // QueueHeader: head on the first cache line, tail on the second.
    let (head, tail) = (0u64, 64u64);
    // As the consumer of its event queues: a tail ahead of the head.
    assert!(mem.write(l.to_app_offset(0) as u64 + tail, &5u32.to_ne_bytes()));
    // (u32::MAX would be honest: one behind a head of 0, free-running counters wrap)
    assert!(mem.write(l.sp_queue_offset() as u64 + tail, &(1u32 << 31).to_ne_bytes()));
    // As the producer of its doorbell queue: a head more than a capacity ahead.
    assert!(mem.write(l.to_fp_offset(0) as u64 + head, &(cap + 1).to_ne_bytes()));
    let a = w.a.slow.app_details().remove(0);
    let bad = Occupancy { used: cap, capacity: cap, corrupt: true };
    assert_eq!((a.event_queue, a.core_queues[0].to_app, a.core_queues[0].to_fp), (bad, bad, bad));
    assert_eq!(a.request_queue, Occupancy { used: 0, capacity: cap, corrupt: false });
    let corrupt = |w: &World| {
        w.a.slow.all_counters().into_iter().find(|(n, _, core)| n == "corrupt_queues" && *core == 0).map(|c| c.1)
    };
    assert_eq!(corrupt(&w), Some(0));
    for _ in 0..100 {
        w.step(&mut []);
    }
    assert_eq!(corrupt(&w), Some(1), "core 0 met the corrupt doorbell queue and counted it");
    // Still reported the same way (the service wrote nothing to fix it up).
    let a = w.a.slow.app_details().remove(0);
    assert_eq!((a.event_queue, a.core_queues[0].to_app, a.core_queues[0].to_fp), (bad, bad, bad));
}

#[test]
fn events_details_close_and_reset() {
    let mut w = World::new(Impairments::default(), 7);
    let (tx, events) = crossbeam_channel::bounded(64);
    w.a.slow.set_event_sink(Some(tx));
    let mut server = context(&mut w.a, IP_A, "echo");
    let mut client = context(&mut w.b, IP_B, "client");
    let l = listen(&mut w, &mut server, &mut client, 7);
    let ev = drain(&events);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].local_port), (EventKind::Listen, 7));

    // Two connections, 1000 bytes echoed on each.
    let mut echo = Echo::default();
    let mut conns = Vec::new();
    for _ in 0..2 {
        let c = client.connect_start(SocketAddrV4::new(IP_A, 7)).unwrap();
        let mut guard = 0;
        while client.state(c) == ConnState::Connecting {
            w.step(&mut [&mut server, &mut client]);
            echo.step(&mut server, l);
            guard += 1;
            assert!(guard < 100_000);
        }
        let data = vec![0x5a; 1000];
        client.send(c, &data).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 2048];
        while got.len() < 1000 {
            w.step(&mut [&mut server, &mut client]);
            echo.step(&mut server, l);
            if let Ok(n) = client.recv(c, &mut buf) {
                got.extend_from_slice(&buf[..n]);
            }
        }
        assert_eq!(got, data);
        conns.push(c);
    }
    let ids: Vec<u64> = conns
        .iter()
        .map(|&c| FlowKey::new(u32::from(IP_B), client.local_port(c).unwrap(), 7).0)
        .collect();
    let ev = drain(&events);
    assert_eq!(ev.len(), 2, "{ev:?}");
    for (e, id) in ev.iter().zip(&ids) {
        assert_eq!((e.kind, e.flow_id, e.local_port, e.detail.as_str()), (EventKind::Opened, *id, 7, "passive"));
        assert_eq!(e.remote.map(|r| *r.ip()), Some(IP_B));
        assert_eq!(e.app, w.a.slow.app_details()[0].id);
    }

    // Details.
    let ls = w.a.slow.listener_infos();
    assert_eq!(ls.len(), 1);
    let apps = w.a.slow.app_details();
    assert_eq!((ls[0].port, ls[0].app, ls[0].unaccepted, ls[0].syn_rcvd), (7, apps[0].id, 0, 0));
    assert_eq!(apps.len(), 1);
    assert_eq!((apps[0].conns, apps[0].listen_ports.clone(), apps[0].contexts), (2, vec![7], 1));
    assert_eq!((apps[0].event_queue.capacity, apps[0].event_queue.corrupt), (layout().queue_entries, false));
    assert_eq!(apps[0].core_queues.len(), 1);
    assert_eq!(w.a.slow.conn_state(ids[0]), Some("ESTABLISHED"));
    assert_eq!(w.a.slow.connection_count(), 2);

    // Close the first one from the service's side: FIN, the client reads EOF and closes,
    // the service (which closed first) keeps the 4-tuple in TIME-WAIT.
    assert_eq!(w.a.slow.close_flow(ids[0], false), Ok("ESTABLISHED"));
    let mut buf = [0u8; 64];
    let mut eof = false;
    for _ in 0..200_000 {
        w.step(&mut [&mut server, &mut client]);
        echo.step(&mut server, l);
        if !eof {
            match client.recv(conns[0], &mut buf) {
                Ok(0) => {
                    eof = true;
                    client.close(conns[0]).unwrap();
                }
                Ok(n) => panic!("{n} unexpected bytes"),
                Err(Error::WouldBlock) => {}
                Err(e) => panic!("client recv: {e}"),
            }
        }
        if w.a.slow.conn_state(ids[0]) == Some("TIME-WAIT") {
            break;
        }
    }
    assert!(eof, "the client saw the service's FIN");
    assert_eq!(w.a.slow.conn_state(ids[0]), Some("TIME-WAIT"));
    assert_eq!(w.a.slow.close_flow(ids[0], false), Err(CloseFlowError::AlreadyClosing("TIME-WAIT")));
    let ev = drain(&events);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].flow_id), (EventKind::Closed, ids[0]));

    // Reset the second one: RST to the client, the application told it was aborted.
    assert_eq!(w.a.slow.close_flow(ids[1], true), Ok("ESTABLISHED"));
    for _ in 0..10_000 {
        w.step(&mut [&mut server, &mut client]);
        echo.step(&mut server, l);
        if matches!(client.state(conns[1]), ConnState::Failed(_)) {
            break;
        }
    }
    assert!(matches!(client.state(conns[1]), ConnState::Failed(Error::Reset)), "{:?}", client.state(conns[1]));
    let ev = drain(&events);
    assert_eq!(ev.len(), 1, "{ev:?}");
    assert_eq!((ev[0].kind, ev[0].flow_id, ev[0].detail.as_str()), (EventKind::Reset, ids[1], "aborted"));
    assert_eq!(w.a.slow.close_flow(ids[1], true), Err(CloseFlowError::NotFound));
    assert_eq!(w.a.slow.close_flow(12345, true), Err(CloseFlowError::NotFound));

    // A full sink never blocks the slow path: events are dropped and counted.
    let (tx, small) = crossbeam_channel::bounded(1);
    w.a.slow.set_event_sink(Some(tx));
    let before = w.a.slow.events_dropped();
    for _ in 0..3 {
        let c = client.connect_start(SocketAddrV4::new(IP_A, 7)).unwrap();
        for _ in 0..10_000 {
            w.step(&mut [&mut server, &mut client]);
            echo.step(&mut server, l);
            if client.state(c) != ConnState::Connecting {
                break;
            }
        }
    }
    // The service establishes its side when the handshake's last ACK arrives.
    for _ in 0..1000 {
        w.step(&mut [&mut server, &mut client]);
        echo.step(&mut server, l);
    }
    assert_eq!(small.len(), 1);
    assert_eq!(w.a.slow.events_dropped() - before, 2);
    // Live settings.
    w.a.slow.set_time_wait(Duration::from_millis(1500));
    assert_eq!(w.a.slow.time_wait(), Duration::from_millis(1500));
    w.a.slow.set_arp_reply(false);
    assert!(!w.a.slow.arp_reply());
}
