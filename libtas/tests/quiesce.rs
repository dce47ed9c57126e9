//! `Context::quiesce`: before another context adopts a connection (a move between
//! threads, decisions §29), every doorbell it owes is posted, or the answer is "not yet".

mod common;

use common::{layout, FakeService};
use libtas::{ConnId, Context};
use tas_proto::shm::{ConnHandle, Doorbell, SpEvent};

const H: ConnHandle = ConnHandle {
    conn: 2,
    core: 0,
    flow: 9,
};

fn setup() -> (FakeService, Context, ConnId) {
    let mut svc = FakeService::new(layout(1, 16, 4, 4096, 4096));
    let mut ctx = svc.context();
    let c = common::accept_one(&mut svc, &mut ctx, 6379, H);
    (svc, ctx, c)
}

#[test]
fn a_full_doorbell_queue_is_not_quiet_until_it_drains() {
    let (mut svc, mut ctx, c) = setup();
    // 20 one-byte sends: the queue (16 entries) fills, the rest waits in the context.
    for _ in 0..20 {
        assert_eq!(ctx.send(c, b"x"), Ok(1));
    }
    assert!(
        !ctx.quiesce(c),
        "bytes written but not posted: a move would lose them"
    );
    let first = svc.doorbells(0);
    assert_eq!(first.len(), 16);
    assert!(ctx.quiesce(c));
    let rest = svc.doorbells(0);
    let posted: u32 = first
        .iter()
        .chain(rest.iter())
        .map(|d| match d {
            Doorbell::TxAdded { bytes, .. } => *bytes,
            other => panic!("unexpected doorbell {other:?}"),
        })
        .sum();
    assert_eq!(
        posted, 20,
        "every written byte was announced before the move"
    );
    // Nothing more to post: quiet, and nothing is posted again.
    assert!(ctx.quiesce(c));
    assert!(svc.doorbells(0).is_empty());
}

#[test]
fn read_bytes_are_acknowledged_and_a_closed_connection_does_not_move() {
    let (mut svc, mut ctx, c) = setup();
    svc.deliver(0, 2, b"hello", false);
    let mut buf = [0u8; 8];
    assert_eq!(ctx.recv(c, &mut buf), Ok(5));
    assert!(ctx.quiesce(c));
    assert!(svc.doorbells(0).contains(&Doorbell::RxConsumed {
        flow: 9,
        conn: 2,
        bytes: 5
    }));
    // The service closed it: nothing to move.
    svc.post_sp(SpEvent::Closed {
        conn: 2,
        error: None,
    });
    ctx.poll();
    assert!(!ctx.quiesce(c));
}
