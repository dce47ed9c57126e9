//! Script replays in the packetdrill style (tier 4 of the test conventions).
//!
//! One whole stack (`SimHost`: fast-path core + slow path, 10.0.0.1) on a zero-delay
//! in-memory link; the test plays the peer (10.0.0.2), injecting exact segments built
//! with our emitters and asserting the exact segments the stack sends back, and when.
//! The application side runs the real libtas code over the host's local region.
//!
//! Notation (see `script/text.rs`): `<` lines are `s.send(ms, "...")`, `>` lines are
//! `s.expect(ms, "...")`; sequence numbers are relative to the sender's ISN, `ack` and
//! SACK blocks to the receiver's. Times are absolute milliseconds on the virtual clock;
//! expected segments must come at that time or up to 250 µs later (the fast path's
//! timer-scan granularity; see `script/peer.rs`).
//!
//! The stack's constants these scripts rely on: MSS 1460 (1448 with timestamps),
//! receive ring 256 KiB (window scale 3, so an unscaled 65535 in the SYN-ACK and 32768
//! after), ISN random (learned from the stack's SYN), TSval = µs / 16 (so 6250 at
//! 100 ms), RTO 200 ms minimum / 1 s initial, tail-loss probe after max(2 SRTT, 10 ms),
//! TIME_WAIT 1 s in the simulator. Tests marked `#[ignore = "BUG: ..."]` assert the
//! RFC behaviour the stack does not have yet.

mod script {
    pub mod peer;
    pub mod text;
}

use libtas::ConnState;
use script::peer::Script;

/// The peer's SYN with every option (Linux's set), at 100 ms.
const SYN_ALL: &str = "S 0:0(0) win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>";

/// Passive open with every option; the connection is accepted at 100 ms. The peer's
/// window is 512 << 7 = 64 KiB, its TS.Recent 101.
fn established() -> Script {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, SYN_ALL);
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val * ecr 100,nop,wscale 3>");
    s.send(100.0, ". 1:1(0) ack 1 win 512 <nop,nop,TS val 101 ecr *>");
    s.accept(100.0);
    s
}

/// Passive open with a peer that offers no option at all.
fn established_bare() -> Script {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, "S 0:0(0) win 65535");
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460>");
    s.send(100.0, ". 1:1(0) ack 1 win 65535");
    s.accept(100.0);
    s
}

// ---- handshakes: each option negotiated only if the peer offered it -----------------------

#[test]
fn handshake_with_every_option() {
    let mut s = established();
    assert_eq!(s.state(100.0), ConnState::Established);
    // Our segments carry timestamps (TS.Recent echoed) and a window scaled by 3; the
    // payload per segment is 1460 - 12.
    s.write(200.0, 2000);
    s.expect(200.0, ". 1:1449(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, "P. 1449:2001(552) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, ". 1:1(0) ack 2001 win 512 <nop,nop,TS val 102 ecr 12500>");
    s.done(1000.0);
}

#[test]
fn handshake_without_any_option() {
    let mut s = established_bare();
    // No options from the peer: MSS 536 (RFC 9293 3.7.1), no scaling, no timestamps,
    // no SACK, and never an option in our segments.
    s.write(200.0, 1000);
    s.expect(200.0, ". 1:537(536) ack 1 win 65535");
    s.expect(200.0, "P. 537:1001(464) ack 1 win 65535");
    s.send(201.0, "P. 1:101(100) ack 1001 win 65535");
    s.expect(201.0, ". 1001:1001(0) ack 101 win 65535");
    s.read(202.0, 100);
    // Out-of-order data: the duplicate ACK has no SACK blocks.
    s.send(300.0, "P. 201:301(100) ack 1001 win 65535");
    s.expect(300.0, ". 1001:1001(0) ack 101 win 65535");
    s.done(1000.0);
}

#[test]
fn handshake_mss_only() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, "S 0:0(0) win 65535 <mss 1000>");
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460>");
    s.send(100.0, ". 1:1(0) ack 1 win 65535");
    s.accept(100.0);
    s.write(200.0, 1500);
    s.expect(200.0, ". 1:1001(1000) ack 1 win 65535");
    s.expect(200.0, "P. 1001:1501(500) ack 1 win 65535");
    s.send(201.0, ". 1:1(0) ack 1501 win 65535");
    s.done(1000.0);
}

#[test]
fn handshake_window_scale_only() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, "S 0:0(0) win 65535 <nop,wscale 7>");
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,nop,wscale 3>");
    // The peer's window from now on is scaled: 2 << 7 = 256 bytes.
    s.send(100.0, ". 1:1(0) ack 1 win 2");
    s.accept(100.0);
    s.write(200.0, 600);
    s.expect(200.0, ". 1:257(256) ack 1 win 32768");
    s.send(201.0, ". 1:1(0) ack 257 win 2");
    s.expect(201.0, ". 257:513(256) ack 1 win 32768");
    s.send(202.0, ". 1:1(0) ack 513 win 1000");
    s.expect(202.0, "P. 513:601(88) ack 1 win 32768");
    // Our window is scaled by 3: (256 KiB - 100) >> 3.
    s.send(203.0, "P. 1:101(100) ack 601 win 1000");
    s.expect(203.0, ". 601:601(0) ack 101 win 32755");
    s.done(1000.0);
}

#[test]
fn handshake_sack_permitted_only() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, "S 0:0(0) win 65535 <nop,nop,sackOK>");
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK>");
    s.send(100.0, ". 1:1(0) ack 1 win 65535");
    s.accept(100.0);
    s.send(200.0, "P. 1001:2001(1000) ack 1 win 65535");
    s.expect(200.0, ". 1:1(0) ack 1 win 65535 <sack 1001:2001>");
    s.done(1000.0);
}

#[test]
fn handshake_timestamps_only() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, "S 0:0(0) win 65535 <nop,nop,TS val 100 ecr 0>");
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,TS val 6250 ecr 100>");
    s.send(100.0, ". 1:1(0) ack 1 win 65535 <nop,nop,TS val 101 ecr 6250>");
    s.accept(100.0);
    s.write(200.0, 1500);
    // No MSS option: 536 (RFC 9293 3.7.1), less the 12 bytes of timestamps.
    s.expect(200.0, ". 1:525(524) ack 1 win 65535 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, ". 525:1049(524) ack 1 win 65535 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, "P. 1049:1501(452) ack 1 win 65535 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, ". 1:1(0) ack 1501 win 65535 <nop,nop,TS val 102 ecr 12500>");
    s.done(1000.0);
}

#[test]
fn peer_without_timestamps_never_sees_one() {
    // Linux with net.ipv4.tcp_timestamps=0: MSS, SACK, window scale, no timestamps.
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, "S 0:0(0) win 65535 <mss 1460,nop,nop,sackOK,nop,wscale 7>");
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,nop,wscale 3>");
    s.send(100.0, ". 1:1(0) ack 1 win 512");
    s.accept(100.0);
    s.write(200.0, 3000);
    s.expect(200.0, ". 1:1461(1460) ack 1 win 32768");
    s.expect(200.0, ". 1461:2921(1460) ack 1 win 32768");
    s.expect(200.0, "P. 2921:3001(80) ack 1 win 32768");
    s.send(201.0, ". 1:1(0) ack 3001 win 512");
    s.send(300.0, "P. 1001:2001(1000) ack 3001 win 512");
    s.expect(300.0, ". 3001:3001(0) ack 1 win 32768 <sack 1001:2001>");
    s.send(301.0, "P. 1:1001(1000) ack 3001 win 512");
    s.expect(301.0, ". 3001:3001(0) ack 2001 win 32518");
    s.read(302.0, 2000);
    // The peer closes first; our ACK and FIN carry no option either.
    s.send(400.0, "F. 2001:2001(0) ack 3001 win 512");
    s.expect(400.0, ". 3001:3001(0) ack 2002 win 32768");
    s.read_eof(401.0);
    s.close(401.0);
    s.expect(401.0, "F. 3001:3001(0) ack 2002 win *");
    s.send(402.0, ". 2002:2002(0) ack 3002 win 512");
    s.done(1000.0);
    assert!(s.host_states().is_empty(), "the passive closer keeps no state");
}
