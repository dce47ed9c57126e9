//! `Context::send_with`: writing payload straight into the transmit ring, against the fake
//! service of `common`.

mod common;

use common::{layout, FakeService};
use libtas::{ConnId, Context, Error};
use tas_proto::shm::{ConnHandle, ControlRequest, Doorbell, FpEvent, SpEvent};

const H: ConnHandle = ConnHandle { conn: 2, core: 0, flow: 9 };

fn setup() -> (FakeService, Context, ConnId) {
    let mut svc = FakeService::new(layout(1, 16, 4, 4096, 4096));
    let mut ctx = svc.context();
    let tok = ctx.listen_start(6379, 16).unwrap();
    let token = match svc.requests()[..] {
        [ControlRequest::Listen { token, .. }] => token,
        ref r => panic!("unexpected requests {r:?}"),
    };
    assert_eq!(token, tok.get());
    svc.post_sp(SpEvent::ListenOk { token, listener: 1 });
    let l = ctx.listen_result(tok).unwrap().unwrap();
    svc.post_sp(SpEvent::Accepted { listener: 1, handle: H, remote_ip: 0x0a000002, remote_port: 4000, local_port: 6379 });
    let c = ctx.accept(l).unwrap().expect("a connection");
    svc.requests();
    (svc, ctx, c)
}

/// Writes `data` across the two slices; returns how many bytes fit.
fn fill(data: &[u8], a: &mut [u8], b: &mut [u8]) -> usize {
    let k = data.len().min(a.len());
    a[..k].copy_from_slice(&data[..k]);
    let m = (data.len() - k).min(b.len());
    b[..m].copy_from_slice(&data[k..k + m]);
    k + m
}

#[test]
fn writes_in_place_and_posts_one_doorbell() {
    let (mut svc, mut ctx, c) = setup();
    let n = ctx
        .send_with(c, 100, |a, b| {
            assert_eq!((a.len(), b.len()), (100, 0), "capped at max, contiguous at the start");
            fill(b"+OK\r\n", a, b)
        })
        .unwrap();
    assert_eq!(n, 5);
    assert_eq!(svc.doorbells(0), vec![Doorbell::TxAdded { flow: 9, conn: 2, bytes: 5 }]);
    assert_eq!(svc.read_tx(2, 5), b"+OK\r\n");
    assert_eq!(ctx.writable(c), 4096 - 5);
    // Writing nothing sends nothing.
    assert_eq!(ctx.send_with(c, 10, |_, _| 0), Ok(0));
    assert_eq!(ctx.send_with(c, 0, |_, _| panic!("not called for max 0")), Ok(0));
    assert!(svc.doorbells(0).is_empty());
}

#[test]
fn free_space_wraps_into_two_slices() {
    let (mut svc, mut ctx, c) = setup();
    let first: Vec<u8> = (0..4000u32).map(|i| i as u8).collect();
    assert_eq!(ctx.send(c, &first), Ok(4000));
    assert_eq!(svc.read_tx(2, 4000), first);
    svc.post_fp(0, FpEvent::TxFreed { conn: 2, bytes: 4000 });
    ctx.poll();
    assert_eq!(ctx.writable(c), 4096);
    let data: Vec<u8> = (0..300u32).map(|i| (i * 7) as u8).collect();
    let n = ctx
        .send_with(c, usize::MAX, |a, b| {
            assert_eq!((a.len(), b.len()), (96, 4000), "the free space wraps at 4096");
            fill(&data, a, b)
        })
        .unwrap();
    assert_eq!(n, 300);
    assert_eq!(svc.doorbells(0).last(), Some(&Doorbell::TxAdded { flow: 9, conn: 2, bytes: 300 }));
    assert_eq!(svc.read_tx(2, 300), data);
}

#[test]
fn full_ring_would_block_and_overclaim_is_refused() {
    let (mut svc, mut ctx, c) = setup();
    assert_eq!(ctx.send_with(c, usize::MAX, |a, b| a.len() + b.len()), Ok(4096));
    assert_eq!(ctx.send_with(c, 1, |_, _| panic!("not called without space")), Err(Error::WouldBlock));
    svc.post_fp(0, FpEvent::TxFreed { conn: 2, bytes: 10 });
    // send_with polls when the ring looks full, like send.
    assert_eq!(ctx.send_with(c, usize::MAX, |a, b| a.len() + b.len() + 1), Err(Error::InvalidArgument));
    assert_eq!(ctx.writable(c), 10, "nothing was taken by the refused call");
    assert_eq!(ctx.send_with(c, usize::MAX, |a, _| a.len()), Ok(10));
    ctx.health().unwrap();
}

#[test]
fn closed_or_shut_connections_refuse() {
    let (mut svc, mut ctx, c) = setup();
    ctx.shutdown(c).unwrap();
    assert_eq!(ctx.send_with(c, 5, |_, _| panic!("not called")), Err(Error::Shutdown));
    svc.post_sp(SpEvent::Closed { conn: 2, error: None });
    ctx.poll();
    assert_eq!(ctx.send_with(c, 5, |_, _| panic!("not called")), Err(Error::Closed));
    ctx.close(c).unwrap();
    assert_eq!(ctx.send_with(c, 5, |_, _| panic!("not called")), Err(Error::InvalidHandle));
}
