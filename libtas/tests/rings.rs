//! Ring accounting and event handling of `Context`, against a fake service that plays the
//! fast path and the slow path by hand.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::{layout, FakeService};
use libtas::{ConnId, ConnState, Context, Error, Event, ListenerId};
use tas_proto::shm::{ConnHandle, ControlRequest, Desc, Doorbell, ErrorCode, FpEvent, SpEvent};

/// Listen, have the service accept one connection on `handle`, accept it.
fn accepted(svc: &mut FakeService, ctx: &mut Context, handle: ConnHandle) -> (ListenerId, ConnId) {
    let tok = ctx.listen_start(7, 16).unwrap();
    let reqs = svc.requests();
    let token = match reqs[..] {
        [ControlRequest::Listen { token, port: 7, backlog: 16, flags: 0, rcvbuf: 0 }] => token,
        ref r => panic!("unexpected requests {r:?}"),
    };
    assert_eq!(token, tok.get());
    assert_eq!(ctx.listen_result(tok), Ok(None));
    svc.post_sp(SpEvent::ListenOk { token, listener: 42 });
    let l = ctx.listen_result(tok).unwrap().unwrap();
    assert_eq!(ctx.listen_result(tok), Err(Error::InvalidHandle), "reported once");
    assert_eq!(ctx.accept(l), Ok(None));
    svc.post_sp(SpEvent::Accepted { listener: 42, handle, remote_ip: 0x0a000002, remote_port: 5555, local_port: 7 });
    let c = ctx.accept(l).unwrap().expect("a connection");
    assert_eq!(svc.requests(), vec![ControlRequest::Accepted { listener: 42, count: 1 }]);
    assert_eq!(ctx.state(c), ConnState::Established);
    assert_eq!(ctx.peer_addr(c), Some("10.0.0.2:5555".parse().unwrap()));
    assert_eq!(ctx.local_port(c), Some(7));
    (l, c)
}

const H: ConnHandle = ConnHandle { conn: 3, core: 1, flow: 77 };

fn setup() -> (FakeService, Context, ConnId) {
    let (svc, ctx, _, c) = setup_listener();
    (svc, ctx, c)
}

fn setup_listener() -> (FakeService, Context, ListenerId, ConnId) {
    let mut svc = FakeService::new(layout(2, 16, 8, 4096, 4096));
    let mut ctx = svc.context();
    let (l, c) = accepted(&mut svc, &mut ctx, H);
    (svc, ctx, l, c)
}

fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn receive_wraps_around_and_reports_consumption() {
    let (mut svc, mut ctx, c) = setup();
    let mut buf = vec![0u8; 8192];
    assert_eq!(ctx.recv(c, &mut buf), Err(Error::WouldBlock));
    let a = pattern(3000, 1);
    svc.deliver(1, H.conn, &a, false);
    assert_eq!(ctx.readable(c), 0, "not seen before a poll");
    assert_eq!(ctx.recv(c, &mut buf[..1000]), Ok(1000), "recv polls when empty");
    assert_eq!(ctx.recv(c, &mut buf[1000..]), Ok(2000));
    assert_eq!(&buf[..3000], &a[..]);
    // One RxConsumed per call, on the connection's core.
    assert_eq!(
        svc.doorbells(1),
        vec![
            Doorbell::RxConsumed { flow: 77, conn: 3, bytes: 1000 },
            Doorbell::RxConsumed { flow: 77, conn: 3, bytes: 2000 }
        ]
    );
    assert!(svc.doorbells(0).is_empty());
    // 2000 more: positions 3000..5000 wrap at 4096.
    let b = pattern(2000, 9);
    svc.deliver(1, H.conn, &b, false);
    ctx.poll();
    assert_eq!(ctx.readable(c), 2000);
    let v = ctx.recv_view(c).unwrap();
    let (s1, s2) = v.slices();
    assert_eq!((s1.len(), s2.len()), (1096, 904));
    assert_eq!([s1, s2].concat(), b);
    assert!(!v.is_eof());
    v.consume(1500).unwrap();
    assert_eq!(svc.doorbells(1), vec![Doorbell::RxConsumed { flow: 77, conn: 3, bytes: 1500 }]);
    let v = ctx.recv_view(c).unwrap();
    assert_eq!(v.len(), 500);
    assert_eq!(v.slices().0, &b[1500..]);
    assert_eq!(v.consume(501), Err(Error::InvalidArgument));
    let v = ctx.recv_view(c).unwrap();
    v.consume(500).unwrap();
    assert_eq!(ctx.recv_view(c).err(), Some(Error::WouldBlock));
    // Fill the ring exactly: allowed.
    let full = pattern(4096, 3);
    svc.deliver(1, H.conn, &full, false);
    ctx.poll();
    assert_eq!(ctx.readable(c), 4096);
    assert_eq!(ctx.recv(c, &mut buf), Ok(4096));
    assert_eq!(&buf[..4096], &full[..]);
    ctx.health().unwrap();
}

#[test]
fn eof_after_fin() {
    let (mut svc, mut ctx, c) = setup();
    svc.deliver(1, H.conn, b"hello", true);
    let mut buf = [0u8; 16];
    assert_eq!(ctx.recv(c, &mut buf), Ok(5));
    assert_eq!(&buf[..5], b"hello");
    assert_eq!(ctx.recv(c, &mut buf), Ok(0));
    assert_eq!(ctx.recv(c, &mut buf), Ok(0));
    assert_eq!(ctx.state(c), ConnState::PeerClosed);
    assert!(ctx.recv_view(c).unwrap().is_eof());
    // Sending still works after the peer's FIN (half close).
    assert_eq!(ctx.send(c, b"bye"), Ok(3));
    ctx.shutdown(c).unwrap();
    assert_eq!(ctx.state(c), ConnState::Closing);
    assert_eq!(ctx.send(c, b"x"), Err(Error::Shutdown));
    assert_eq!(
        svc.doorbells(1),
        vec![
            Doorbell::RxConsumed { flow: 77, conn: 3, bytes: 5 },
            Doorbell::TxAdded { flow: 77, conn: 3, bytes: 3 },
            Doorbell::ShutdownTx { flow: 77, conn: 3 }
        ]
    );
    assert_eq!(svc.read_tx(3, 3), b"bye");
    // A FIN alone (no data) also ends the stream.
    let (mut svc, mut ctx, c) = setup();
    svc.post_fp(1, FpEvent::RxData { conn: 3, bytes: 0, fin: true });
    assert_eq!(ctx.recv(c, &mut buf), Ok(0));
}

#[test]
fn transmit_accounting_and_wrap() {
    let (mut svc, mut ctx, c) = setup();
    assert_eq!(ctx.writable(c), 4096);
    let data = pattern(10_000, 5);
    assert_eq!(ctx.send(c, &data), Ok(4096));
    assert_eq!(ctx.writable(c), 0);
    assert_eq!(ctx.send(c, &data[4096..]), Err(Error::WouldBlock));
    assert_eq!(svc.doorbells(1), vec![Doorbell::TxAdded { flow: 77, conn: 3, bytes: 4096 }]);
    assert_eq!(svc.read_tx(3, 4096), &data[..4096]);
    // Partial acknowledgements; the ring wraps.
    svc.post_fp(1, FpEvent::TxFreed { conn: 3, bytes: 1000 });
    assert_eq!(ctx.send(c, &data[4096..]), Ok(1000), "send polls when full");
    svc.post_fp(1, FpEvent::TxFreed { conn: 3, bytes: 3096 });
    assert_eq!(ctx.send(c, &data[5096..]), Ok(3096));
    svc.post_fp(1, FpEvent::TxFreed { conn: 3, bytes: 4096 });
    assert_eq!(ctx.send(c, &data[8192..]), Ok(1808));
    assert_eq!(
        svc.doorbells(1),
        vec![
            Doorbell::TxAdded { flow: 77, conn: 3, bytes: 1000 },
            Doorbell::TxAdded { flow: 77, conn: 3, bytes: 3096 },
            Doorbell::TxAdded { flow: 77, conn: 3, bytes: 1808 }
        ]
    );
    assert_eq!(svc.read_tx(3, 10_000 - 4096), &data[4096..]);
    assert_eq!(ctx.writable(c), 4096 - 1808);
    // Freed more than in flight: a protocol error, not a panic or a bigger window.
    svc.post_fp(1, FpEvent::TxFreed { conn: 3, bytes: 1809 });
    ctx.poll();
    assert!(matches!(ctx.health(), Err(Error::Protocol(_))));
    assert!(matches!(ctx.send(c, b"x"), Err(Error::Protocol(_))));
}

#[test]
fn doorbells_wait_for_queue_space_and_merge() {
    let (mut svc, mut ctx, c) = setup();
    // The to_fp queue has 16 entries: 40 one-byte sends overflow it.
    for i in 0..40u8 {
        assert_eq!(ctx.send(c, &[i]), Ok(1));
    }
    let first = svc.doorbells(1);
    assert_eq!(first.len(), 16);
    ctx.poll();
    let second = svc.doorbells(1);
    assert_eq!(second, vec![Doorbell::TxAdded { flow: 77, conn: 3, bytes: 24 }], "merged after the queue drained");
    assert_eq!(svc.read_tx(3, 40), (0..40).collect::<Vec<u8>>());
}

#[test]
fn events_are_coalesced() {
    let (mut svc, mut ctx, c) = setup();
    assert_eq!(ctx.next_event(), None);
    svc.deliver(1, 3, b"a", false);
    svc.deliver(1, 3, b"b", false);
    ctx.send(c, b"xy").unwrap();
    svc.post_fp(1, FpEvent::TxFreed { conn: 3, bytes: 2 });
    ctx.poll();
    let evs: Vec<Event> = ctx.take_events().collect();
    assert_eq!(evs, vec![Event::Readable(c), Event::Writable(c)]);
    assert_eq!(ctx.next_event(), None);
    svc.post_sp(SpEvent::Closed { conn: 3, error: Some(ErrorCode::Reset) });
    ctx.poll();
    assert_eq!(ctx.take_events().collect::<Vec<_>>(), vec![Event::Closed(c, Some(Error::Reset))]);
}

#[test]
fn closed_keeps_unread_data_then_reports() {
    // Orderly close with unread data: the data survives slot reuse, then EOF.
    let (mut svc, mut ctx, c) = setup();
    svc.deliver(1, 3, b"tail data", true);
    svc.post_sp(SpEvent::Closed { conn: 3, error: None });
    ctx.poll();
    assert_eq!(ctx.state(c), ConnState::Closed);
    // The service reuses the slot for a new connection and overwrites the ring.
    svc.deliver(1, 3, b"XXXXXXXXXXXXXXXX", false);
    let mut buf = [0u8; 4];
    assert_eq!(ctx.recv(c, &mut buf), Ok(4));
    assert_eq!(&buf, b"tail");
    let v = ctx.recv_view(c).unwrap();
    assert_eq!(v.slices().0, b" data");
    v.consume(5).unwrap();
    assert_eq!(ctx.recv(c, &mut buf), Ok(0));
    assert_eq!(ctx.send(c, b"x"), Err(Error::Closed));
    ctx.close(c).unwrap();
    assert_eq!(ctx.state(c), ConnState::Invalid);
    assert_eq!(ctx.recv(c, &mut buf), Err(Error::InvalidHandle));

    // Reset: data first, then the error.
    let (mut svc, mut ctx, c) = setup();
    svc.deliver(1, 3, b"ab", false);
    svc.post_sp(SpEvent::Closed { conn: 3, error: Some(ErrorCode::Reset) });
    assert_eq!(ctx.recv(c, &mut buf), Ok(2));
    assert_eq!(ctx.recv(c, &mut buf), Err(Error::Reset));
    assert_eq!(ctx.state(c), ConnState::Failed(Error::Reset));
}

#[test]
fn close_drains_until_closed_then_frees() {
    let (mut svc, mut ctx, l, c) = setup_listener();
    svc.deliver(1, 3, b"unread", false);
    ctx.poll();
    ctx.send(c, b"last").unwrap();
    ctx.close(c).unwrap();
    assert_eq!(ctx.state(c), ConnState::Invalid, "the handle is gone at once");
    assert_eq!(ctx.send(c, b"x"), Err(Error::InvalidHandle));
    assert_eq!(
        svc.doorbells(1),
        vec![
            Doorbell::TxAdded { flow: 77, conn: 3, bytes: 4 },
            Doorbell::RxConsumed { flow: 77, conn: 3, bytes: 6 },
            Doorbell::ShutdownTx { flow: 77, conn: 3 }
        ]
    );
    // Data still arriving is consumed automatically so the peer is not stalled.
    svc.deliver(1, 3, &[7u8; 4000], false);
    svc.deliver(1, 3, &[8u8; 4096], true);
    ctx.poll();
    assert_eq!(
        svc.doorbells(1),
        vec![
            Doorbell::RxConsumed { flow: 77, conn: 3, bytes: 4000 },
            Doorbell::RxConsumed { flow: 77, conn: 3, bytes: 4096 }
        ]
    );
    assert_eq!(ctx.next_event(), None, "no events for a closed handle");
    svc.post_sp(SpEvent::Closed { conn: 3, error: None });
    ctx.poll();
    // The slot is free again: the service may reuse it for a new connection.
    svc.reset_slot(3);
    let handle = ConnHandle { conn: 3, core: 0, flow: 5 };
    svc.post_sp(SpEvent::Accepted { listener: 42, handle, remote_ip: 1, remote_port: 2, local_port: 7 });
    let c2 = ctx.accept(l).unwrap().unwrap();
    assert_ne!(c2, c);
    svc.deliver(0, 3, b"new", false);
    let mut buf = [0u8; 8];
    assert_eq!(ctx.recv(c2, &mut buf), Ok(3));
    assert_eq!(&buf[..3], b"new");
}

#[test]
fn abort_sends_reset_request() {
    let (mut svc, mut ctx, c) = setup();
    ctx.abort(c).unwrap();
    assert_eq!(svc.requests(), vec![ControlRequest::Abort { conn: 3 }]);
    assert_eq!(ctx.state(c), ConnState::Invalid);
    svc.post_sp(SpEvent::Closed { conn: 3, error: Some(ErrorCode::Reset) });
    ctx.poll();
    assert_eq!(ctx.next_event(), None);
    ctx.health().unwrap();
}

#[test]
fn connect_success_and_failure() {
    let mut svc = FakeService::new(layout(1, 16, 4, 4096, 8192));
    let mut ctx = svc.context();
    let addr: SocketAddrV4 = "10.0.0.9:80".parse().unwrap();
    let c = ctx.connect_start(addr).unwrap();
    assert_eq!(ctx.state(c), ConnState::Connecting);
    assert_eq!(ctx.send(c, b"early"), Err(Error::WouldBlock));
    assert_eq!(ctx.recv(c, &mut [0u8; 4]), Err(Error::WouldBlock));
    assert_eq!(ctx.local_port(c), None);
    let token = match svc.requests()[..] {
        [ControlRequest::Connect { token, ip: 0x0a000009, port: 80, rcvbuf: 0 }] => token,
        ref r => panic!("{r:?}"),
    };
    // Data can arrive before the slow path's Connected is seen: it is kept.
    svc.deliver(0, 1, b"hi", false);
    ctx.poll();
    svc.post_sp(SpEvent::Connected { token, handle: ConnHandle { conn: 1, core: 0, flow: 9 }, local_port: 40000 });
    ctx.poll();
    assert_eq!(ctx.state(c), ConnState::Established);
    assert_eq!(ctx.local_addr(c), Some("10.0.0.1:40000".parse().unwrap()));
    assert_eq!(ctx.writable(c), 8192);
    assert_eq!(
        ctx.take_events().collect::<Vec<_>>(),
        vec![Event::Connected(c), Event::Readable(c), Event::Writable(c)]
    );
    let mut buf = [0u8; 4];
    assert_eq!(ctx.recv(c, &mut buf), Ok(2));

    let c2 = ctx.connect_start(addr).unwrap();
    let token = match svc.requests()[..] {
        [ControlRequest::Connect { token, .. }] => token,
        ref r => panic!("{r:?}"),
    };
    svc.post_sp(SpEvent::ConnectFailed { token, error: ErrorCode::Refused });
    ctx.poll();
    assert_eq!(ctx.state(c2), ConnState::Failed(Error::Refused));
    assert_eq!(ctx.take_events().collect::<Vec<_>>(), vec![Event::Closed(c2, Some(Error::Refused))]);
    assert_eq!(ctx.send(c2, b"x"), Err(Error::Refused));
    ctx.close(c2).unwrap();

    // Closed while connecting: reset as soon as it opens.
    let c3 = ctx.connect_start(addr).unwrap();
    ctx.close(c3).unwrap();
    let token = match svc.requests()[..] {
        [ControlRequest::Connect { token, .. }] => token,
        ref r => panic!("{r:?}"),
    };
    svc.post_sp(SpEvent::Connected { token, handle: ConnHandle { conn: 2, core: 0, flow: 10 }, local_port: 40001 });
    ctx.poll();
    assert_eq!(svc.requests(), vec![ControlRequest::Abort { conn: 2 }]);
    assert_eq!(ctx.connect_start("0.0.0.0:80".parse().unwrap()), Err(Error::InvalidArgument));
}

#[test]
fn listen_failure_and_events() {
    let mut svc = FakeService::new(layout(1, 16, 4, 4096, 4096));
    let mut ctx = svc.context();
    let t = ctx.listen_start(80, 8).unwrap();
    let token = match svc.requests()[..] {
        [ControlRequest::Listen { token, .. }] => token,
        ref r => panic!("{r:?}"),
    };
    svc.post_sp(SpEvent::ListenFailed { token, error: ErrorCode::AddrInUse });
    ctx.poll();
    assert_eq!(ctx.take_events().collect::<Vec<_>>(), vec![Event::Listening(t, Err(Error::AddrInUse))]);
    assert_eq!(ctx.listen_result(t), Err(Error::InvalidHandle));
    assert_eq!(ctx.listen_start(0, 8), Err(Error::InvalidArgument));

    let t = ctx.listen_start(81, 8).unwrap();
    let token = match svc.requests()[..] {
        [ControlRequest::Listen { token, .. }] => token,
        ref r => panic!("{r:?}"),
    };
    svc.post_sp(SpEvent::ListenOk { token, listener: 1 });
    ctx.poll();
    let l = match ctx.next_event() {
        Some(Event::Listening(tt, Ok(l))) if tt == t => l,
        e => panic!("{e:?}"),
    };
    assert_eq!(ctx.listener_port(l), Some(81));
    for i in 0..2 {
        svc.post_sp(SpEvent::Accepted {
            listener: 1,
            handle: ConnHandle { conn: i, core: 0, flow: i },
            remote_ip: 1,
            remote_port: 1000 + i as u16,
            local_port: 81,
        });
    }
    svc.deliver(0, 0, b"x", false);
    ctx.poll();
    assert_eq!(ctx.take_events().collect::<Vec<_>>(), vec![Event::Accept(l)], "no events for unaccepted conns");
    let a = ctx.accept(l).unwrap().unwrap();
    assert_eq!(ctx.take_events().collect::<Vec<_>>(), vec![Event::Readable(a)], "pending data shows on accept");
    // Unlisten resets the connection still queued.
    ctx.unlisten(l).unwrap();
    let reqs = svc.requests();
    assert!(reqs.contains(&ControlRequest::Unlisten { listener: 1 }));
    assert!(reqs.contains(&ControlRequest::Abort { conn: 1 }));
    assert_eq!(ctx.accept(l), Err(Error::InvalidHandle));
}

fn broken_by(desc_on_fp: Option<Desc>, desc_on_sp: Option<Desc>) -> Error {
    let (mut svc, mut ctx, _c) = setup();
    if let Some(d) = desc_on_fp {
        svc.post_fp_raw(1, d);
    }
    if let Some(d) = desc_on_sp {
        svc.post_sp_raw(d);
    }
    ctx.poll();
    ctx.health().unwrap_err()
}

#[test]
fn corrupt_events_are_rejected() {
    let over = FpEvent::RxData { conn: 3, bytes: 4097, fin: false }.encode();
    assert!(matches!(broken_by(Some(over), None), Error::Protocol(_)));
    let out_of_range = FpEvent::RxData { conn: 8, bytes: 1, fin: false }.encode();
    assert!(matches!(broken_by(Some(out_of_range), None), Error::Protocol(_)));
    let unknown = Desc { kind: 99, ..Desc::default() };
    assert!(matches!(broken_by(Some(unknown), None), Error::Protocol(_)));
    assert!(matches!(broken_by(None, Some(unknown)), Error::Protocol(_)));
    let bad_core = SpEvent::Accepted {
        listener: 42,
        handle: ConnHandle { conn: 1, core: 2, flow: 0 },
        remote_ip: 0,
        remote_port: 1,
        local_port: 7,
    }
    .encode();
    assert!(matches!(broken_by(None, Some(bad_core)), Error::Protocol(_)));
    let reused = SpEvent::Accepted { listener: 42, handle: H, remote_ip: 0, remote_port: 1, local_port: 7 }.encode();
    assert!(matches!(broken_by(None, Some(reused)), Error::Protocol(_)));
    let wrong_core = FpEvent::RxData { conn: 3, bytes: 1, fin: false }.encode();
    let (mut svc, mut ctx, c) = setup();
    svc.post_fp_raw(0, wrong_core);
    assert!(matches!(ctx.recv(c, &mut [0u8; 4]), Err(Error::Protocol(_))));
    let unknown_token = SpEvent::Connected { token: 999, handle: ConnHandle { conn: 0, core: 0, flow: 0 }, local_port: 1 };
    assert!(matches!(broken_by(None, Some(unknown_token.encode())), Error::Protocol(_)));

    // Data after FIN.
    let (mut svc, mut ctx, c) = setup();
    svc.deliver(1, 3, b"a", true);
    svc.deliver(1, 3, b"b", false);
    assert!(matches!(ctx.recv(c, &mut [0u8; 4]), Err(Error::Protocol(_))));

    // Cumulative overflow: the ring has 4096 bytes, unread plus unreported counts.
    let (mut svc, mut ctx, c) = setup();
    svc.deliver(1, 3, &[0u8; 4000], false);
    assert_eq!(ctx.recv(c, &mut [0u8; 100]), Ok(100));
    svc.post_fp(1, FpEvent::RxData { conn: 3, bytes: 97, fin: false });
    ctx.poll();
    assert!(ctx.health().is_ok(), "the RxConsumed for 100 bytes reopened 100: 196 free");
    svc.post_fp(1, FpEvent::RxData { conn: 3, bytes: 100, fin: false });
    ctx.poll();
    assert!(matches!(ctx.health(), Err(Error::Protocol(_))));

    // A corrupt queue index.
    let (svc, mut ctx, c) = setup();
    let head = svc.layout.to_app_offset(1);
    // SAFETY: the head index word is the first u32 of the queue, inside the region.
    unsafe { svc.base().as_ptr().add(head).cast::<u32>().write_volatile(1_000_000) };
    assert!(matches!(ctx.recv(c, &mut [0u8; 4]), Err(Error::Protocol(_))));
}

#[test]
fn bad_header_is_rejected() {
    let l = layout(1, 16, 4, 4096, 4096);
    let mut h = l.header();
    h.magic = 0;
    let svc = FakeService::with_header(l, h);
    // SAFETY: initialised region, only context.
    let r = unsafe { Context::from_parts(svc.mapping(), None, vec![None], "1.2.3.4".parse().unwrap()) };
    assert!(matches!(r, Err(Error::Protocol(_))));
    let mut h = l.header();
    h.abi_version = 77;
    let svc = FakeService::with_header(l, h);
    // SAFETY: as above.
    let r = unsafe { Context::from_parts(svc.mapping(), None, vec![None], "1.2.3.4".parse().unwrap()) };
    assert!(matches!(r, Err(Error::Version { .. })));
    let svc = FakeService::new(l);
    // SAFETY: as above.
    let r = unsafe { Context::from_parts(svc.mapping(), None, vec![None, None], "1.2.3.4".parse().unwrap()) };
    assert!(matches!(r, Err(Error::Protocol(_))), "doorbell count must match the cores");
}

#[test]
fn context_is_send() {
    fn send<T: Send>() {}
    send::<Context>();
    let _ = Duration::ZERO;
}

/// An `Info` reply comes in `INFO_PARTS` descriptors: the result is there once the last
/// one came, equal to what the service sent; a part out of order breaks the context.
#[test]
fn info_reply_is_assembled_from_its_parts() {
    use tas_proto::shm::{ConnInfo, CA_LOSS, INFO_FOUND, INFO_FRESH};
    let (mut svc, mut ctx, c) = setup();
    let t = ctx.info_start(c).unwrap();
    let token = match svc.requests()[..] {
        [ControlRequest::Info { token, conn }] if conn == H.conn => token,
        ref r => panic!("unexpected requests {r:?}"),
    };
    let info = ConnInfo {
        opts: INFO_FOUND | INFO_FRESH,
        mss: 1448,
        srtt_us: 350,
        ca_state: CA_LOSS,
        snd_wnd: 65_535,
        sent_bytes_lo: 123_456,
        retrans_bytes_lo: 2_896,
        total_rto: 1,
        total_rto_recoveries: 1,
        ..ConnInfo::default()
    };
    let parts = info.events(token);
    for p in &parts[..parts.len() - 1] {
        svc.post_sp(*p);
        assert_eq!(ctx.info_result(t), Ok(None), "not complete before the last part");
    }
    svc.post_sp(parts[parts.len() - 1]);
    assert_eq!(ctx.info_result(t), Ok(Some(info)));
    assert_eq!(ctx.info_result(t), Err(Error::InvalidHandle), "answered once");
    // Parts out of order are a protocol error.
    let t = ctx.info_start(c).unwrap();
    let token = match svc.requests()[..] {
        [ControlRequest::Info { token, .. }] => token,
        ref r => panic!("unexpected requests {r:?}"),
    };
    svc.post_sp(info.events(token)[1]);
    assert!(matches!(ctx.info_result(t), Err(Error::Protocol(_))));
}
