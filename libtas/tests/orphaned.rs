//! A connection this process gave up while another process held it is closed when the
//! service says nobody holds it any more (`Orphaned`), also when that news arrives in the
//! same poll as the answer to the release, before `Context::forget` runs (the other
//! process exited just after this one closed: seen as a conformance run that waited
//! forever for the peer's EOF).

mod common;

use std::net::{Ipv4Addr, SocketAddrV4};

use common::{layout, FakeService};
use libtas::{Adoption, ConnId, Context};
use tas_proto::shm::{ConnHandle, ControlRequest, Doorbell, SpEvent};

const H: ConnHandle = ConnHandle { conn: 1, core: 0, flow: 5 };
const PEER: SocketAddrV4 = SocketAddrV4::new(Ipv4Addr::new(10, 0, 0, 2), 4000);

fn accepted() -> (FakeService, Context, ConnId) {
    let mut svc = FakeService::new(layout(1, 16, 4, 4096, 4096));
    let mut ctx = svc.context();
    let c = common::accept_one(&mut svc, &mut ctx, 7000, H);
    (svc, ctx, c)
}

/// Release, answered "another process holds it"; `orphan_first`: the `Orphaned` comes in
/// the same poll as that answer. Returns the doorbells posted after `forget`.
fn release_then_orphan(orphan_first: bool) -> Vec<Doorbell> {
    let (mut svc, mut ctx, c) = accepted();
    let tok = ctx.release_start(PEER, 7000).unwrap();
    let token = match svc.requests()[..] {
        [ControlRequest::Release { token, .. }] => token,
        ref r => panic!("unexpected requests {r:?}"),
    };
    svc.post_sp(SpEvent::AdoptFailed { token, error: None });
    if orphan_first {
        svc.post_sp(SpEvent::Orphaned { conn: H.conn });
    }
    assert_eq!(ctx.adopt_result(tok), Ok(Some(Adoption::NotLast)));
    ctx.forget(c).unwrap();
    if !orphan_first {
        assert!(svc.doorbells(0).is_empty(), "a connection another process holds was closed");
        svc.post_sp(SpEvent::Orphaned { conn: H.conn });
        ctx.poll();
    }
    svc.doorbells(0)
}

#[test]
fn orphaned_after_forget_closes_the_connection() {
    let d = release_then_orphan(false);
    assert!(d.contains(&Doorbell::ShutdownTx { flow: H.flow, conn: H.conn }), "no FIN: {d:?}");
}

#[test]
fn orphaned_in_the_same_poll_as_the_release_answer_closes_it_too() {
    let d = release_then_orphan(true);
    assert!(d.contains(&Doorbell::ShutdownTx { flow: H.flow, conn: H.conn }), "no FIN: {d:?}");
}
