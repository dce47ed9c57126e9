//! A doorbell that overtakes its flow's installation is not lost. The slow path sends
//! `InstallFlow` to the core before it tells the application of a new connection, and the
//! core takes its commands before its doorbells in every poll; but the install can land in
//! the command queue while the core is receiving, after it took its commands, and the
//! application can be told, write and ring before the core takes its doorbells. That
//! doorbell named a flow the core did not hold yet: it was counted as bad and dropped, so
//! the connection's first bytes sat in its ring forever (seen under the LD_PRELOAD shim as
//! a connection whose peer never received a byte, about one in 60 connections while
//! another application streamed).

#[path = "../benches/support/replay.rs"]
mod replay;

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::atomic::Ordering::Relaxed;

use ringbuf::traits::Producer;
use tas_fastpath::ctl::Command;
use tas_fastpath::time::Instant;
use tas_proto::shm::Doorbell;

#[test]
fn a_doorbell_that_overtakes_its_flows_install_is_applied() {
    let replay::Bench { mut fp, _cmd, mut to_fp, states, _region, mut now, .. } = replay::setup(2);
    let counters = fp.counters();
    let cmd_tx = Rc::new(RefCell::new(_cmd));
    let mut poll = |fp: &mut tas_fastpath::core::FastPath<replay::Replay>| {
        now += 1_000;
        fp.poll(Instant::from_nanos(now));
    };
    // Flow 1 goes away, as a closed connection's does.
    assert!(cmd_tx.borrow_mut().try_push(Command::RemoveFlow { flow: 1 }).is_ok());
    poll(&mut fp);
    assert_eq!(counters.flows.load(Relaxed), 1);

    // While the core receives: the slow path installs flow 1 for a new connection, and the
    // application, told of it, writes 3,000 bytes and rings.
    let (cmds, state) = (cmd_tx.clone(), states[1]);
    fp.io_mut().on_rx = Some(Box::new(move || {
        let install = Command::InstallFlow { flow: 1, state: Box::new(state) };
        assert!(cmds.borrow_mut().try_push(install).is_ok());
        assert!(to_fp.push(Doorbell::TxAdded { flow: 1, conn: 1, bytes: 3_000 }.encode()));
        to_fp.publish();
    }));
    for _ in 0..4 {
        poll(&mut fp);
    }
    assert!(fp.io().on_rx.is_none(), "the race was not staged: no receive burst ran");
    assert_eq!(counters.flows.load(Relaxed), 2, "flow 1 installed");
    assert_eq!(counters.bad_doorbells.load(Relaxed), 0, "the doorbell was dropped as bad");
    assert_eq!(counters.tx_payload_bytes.load(Relaxed), 3_000, "the 3,000 bytes were not sent");
}

#[test]
fn a_doorbell_for_a_flow_that_never_comes_is_still_counted_bad() {
    let replay::Bench { mut fp, mut to_fp, _cmd, _region, mut now, .. } = replay::setup(1);
    let counters = fp.counters();
    assert!(to_fp.push(Doorbell::TxAdded { flow: 5, conn: 5, bytes: 100 }.encode()));
    assert!(to_fp.push(Doorbell::TxAdded { flow: 0, conn: 0, bytes: 1 << 20 }.encode()));
    to_fp.publish();
    for _ in 0..3 {
        now += 1_000;
        fp.poll(Instant::from_nanos(now));
    }
    // Unknown flow (after the retry) and more bytes than the ring holds: both bad.
    assert_eq!(counters.bad_doorbells.load(Relaxed), 2);
    assert_eq!(counters.tx_payload_bytes.load(Relaxed), 0);
    drop(_cmd);
}
