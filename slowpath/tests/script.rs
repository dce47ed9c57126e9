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

use libtas::{ConnState, Error};
use script::peer::{Script, PEER_PORT};
use tas_proto::shm::Layout;

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

// ---- active open ----------------------------------------------------------------------------

/// The app connects at 100 ms; the stack resolves the peer by ARP, then sends its SYN.
fn syn_sent() -> Script {
    let mut s = Script::new();
    s.connect(100.0, 5000);
    s.expect_arp_request(100.0);
    s.send_arp_reply(100.0);
    // RFC 3168 6.1.1: an ECN-setup SYN (ECE and CWR: `EW`).
    s.expect(100.0, "SEW 0:0(0) win 65535 <mss 1460,sackOK,TS val 6250 ecr 0,nop,wscale 3>");
    s
}

#[test]
fn active_open_with_every_option() {
    let mut s = syn_sent();
    assert_eq!(s.state(101.0), ConnState::Connecting);
    s.send(102.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 500 ecr 6250,nop,wscale 7>");
    s.expect(102.0, ". 1:1(0) ack 1 win 32768 <nop,nop,TS val 6375 ecr 500>");
    assert_eq!(s.state(102.0), ConnState::Established);
    s.write(200.0, 100);
    s.expect(200.0, "P. 1:101(100) ack 1 win 32768 <nop,nop,TS val 12500 ecr 500>");
    s.send(201.0, "P. 1:51(50) ack 101 win 512 <nop,nop,TS val 501 ecr 12500>");
    s.expect(201.0, ". 101:101(0) ack 51 win 32761 <nop,nop,TS val 12562 ecr 501>");
    s.read(202.0, 50);
    s.done(1000.0);
}

#[test]
fn active_open_to_a_peer_without_options() {
    let mut s = syn_sent();
    // We offered everything; the peer takes nothing: no scaling, no timestamps, no SACK,
    // MSS 536, and our window field unscaled from now on.
    s.send(102.0, "S. 0:0(0) ack 1 win 8192");
    s.expect(102.0, ". 1:1(0) ack 1 win 65535");
    assert_eq!(s.state(102.0), ConnState::Established);
    s.write(200.0, 1000);
    s.expect(200.0, ". 1:537(536) ack 1 win 65535");
    s.expect(200.0, "P. 537:1001(464) ack 1 win 65535");
    s.send(201.0, ". 1:1(0) ack 1001 win 8192");
    s.done(1000.0);
}

#[test]
fn active_open_syn_retries_back_off_then_fail() {
    let mut s = syn_sent();
    // RFC 6298 5.5 / RFC 9293 3.8.1: 1 s, then doubling; Linux's 6 retries, 127 s in all.
    for t in [1100.0, 3100.0, 7100.0, 15100.0, 31100.0, 63100.0] {
        s.expect(t, "SEW 0:0(0) win 65535 <mss 1460,sackOK,TS val * ecr 0,nop,wscale 3>");
    }
    assert_eq!(s.state(127_099.0), ConnState::Connecting);
    assert_eq!(s.state(127_100.0), ConnState::Failed(Error::TimedOut));
    s.done(200_000.0);
    assert!(s.host_states().is_empty());
}

#[test]
fn active_open_refused_by_rst() {
    let mut s = syn_sent();
    s.send(101.0, "R. 0:0(0) ack 1 win 0");
    assert_eq!(s.state(101.0), ConnState::Failed(Error::Refused));
    s.done(5000.0);
    assert!(s.host_states().is_empty());
}

#[test]
fn active_open_rst_with_wrong_ack_is_ignored() {
    let mut s = syn_sent();
    // RFC 9293 3.10.7.3: in SYN-SENT an RST is acceptable only if it acknowledges the SYN.
    s.send(101.0, "R. 0:0(0) ack 7 win 0");
    assert_eq!(s.state(101.0), ConnState::Connecting);
    s.send(102.0, "S. 0:0(0) ack 1 win 65535 <mss 1460>");
    s.expect(102.0, ". 1:1(0) ack 1 win 65535");
    assert_eq!(s.state(102.0), ConnState::Established);
    s.done(1000.0);
}

#[test]
fn active_open_syn_ack_with_wrong_ack_gets_rst() {
    let mut s = syn_sent();
    s.send(101.0, "S. 0:0(0) ack 1000 win 65535 <mss 1460>");
    s.expect(101.0, "R 1000:1000(0) win *");
    assert_eq!(s.state(101.0), ConnState::Connecting);
    s.send(102.0, "S. 0:0(0) ack 1 win 65535 <mss 1460>");
    s.expect(102.0, ". 1:1(0) ack 1 win 65535");
    s.done(1000.0);
}

/// RFC 3168 6.1.1: a peer's ECN-setup SYN (ECE and CWR) is answered with an ECN-setup
/// SYN-ACK (ECE only); a plain SYN with a plain SYN-ACK, and so is a SYN with ECE alone.
#[test]
fn passive_open_negotiates_ecn() {
    for (syn, synack_flags) in [("SEW", "S.E"), ("S", "S."), ("SE", "S.")] {
        let mut s = Script::new();
        s.listen(0.0, 8080);
        s.send(100.0, &format!("{syn} 0:0(0) win 65535"));
        s.expect(100.0, &format!("{synack_flags} 0:0(0) ack 1 win 65535 <mss 1460>"));
        s.send(100.0, ". 1:1(0) ack 1 win 65535");
        s.accept(100.0);
        s.done(200.0);
    }
}

#[test]
fn simultaneous_open() {
    let mut s = syn_sent();
    // Both sides sent a SYN; the peer's arrives: SYN-RECEIVED, answer SYN-ACK with our
    // ISN again (RFC 9293 figure 8).
    s.send(101.0, "S 0:0(0) win 65535 <mss 1460,sackOK,TS val 500 ecr 0,nop,wscale 7>");
    s.expect(101.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val * ecr 500,nop,wscale 3>");
    // The peer's ACK of our SYN completes the open.
    s.send(102.0, ". 1:1(0) ack 1 win 512 <nop,nop,TS val 501 ecr *>");
    assert_eq!(s.state(102.0), ConnState::Established);
    s.write(200.0, 100);
    s.expect(200.0, "P. 1:101(100) ack 1 win 32768 <nop,nop,TS val * ecr 501>");
    s.send(201.0, ". 1:1(0) ack 101 win 512 <nop,nop,TS val 502 ecr *>");
    s.done(1000.0);
}

#[test]
fn arp_resolution_failure_fails_the_connect() {
    let mut s = Script::new();
    s.connect(100.0, 5000);
    // Three requests, 1 s and 2 s apart; nobody answers: unreachable after 7 s (Linux
    // reports EHOSTUNREACH after its three probes too).
    for t in [100.0, 1100.0, 3100.0] {
        s.expect_arp_request(t);
    }
    assert_eq!(s.state(7_099.0), ConnState::Connecting);
    assert_eq!(s.state(7_100.0), ConnState::Failed(Error::Unreachable));
    s.done(20_000.0);
}

#[test]
fn arp_requests_for_our_address_are_answered() {
    let mut s = Script::new();
    s.send_arp_request(100.0);
    s.expect_arp_reply(100.0);
    s.done(1000.0);
}

// ---- passive open: handshake retransmissions ---------------------------------------------

#[test]
fn syn_ack_is_retransmitted_with_backoff_then_forgotten() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, SYN_ALL);
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 6250 ecr 100,nop,wscale 3>");
    // A retransmitted SYN (our SYN-ACK was lost) is answered at once, same ISN.
    s.send(500.0, SYN_ALL);
    s.expect(500.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val * ecr 100,nop,wscale 3>");
    // Linux's 5 SYN-ACK retries: 1 s, then doubling.
    for t in [1100.0, 3100.0, 7100.0, 15100.0, 31100.0] {
        s.expect(t, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val * ecr 100,nop,wscale 3>");
    }
    s.quiet_until(63_099.0);
    assert_eq!(s.host_states(), vec!["SYN-RECEIVED"]);
    s.quiet_until(63_100.0);
    assert!(s.host_states().is_empty(), "the half-open connection is forgotten");
    // The final ACK comes too late: the 4-tuple is unknown, so RST (seq = SEG.ACK).
    s.send(64_000.0, ". 1:1(0) ack 1 win 512 <nop,nop,TS val 200 ecr 6250>");
    s.expect(64_000.0, "R 1:1(0) win 0");
    assert!(s.nothing_to_accept(64_000.0));
    s.done(70_000.0);
}

#[test]
fn syn_received_final_ack_with_a_wrong_ack_gets_rst() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, SYN_ALL);
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 6250 ecr 100,nop,wscale 3>");
    // RFC 9293 3.10.7.4 SYN-RECEIVED: an unacceptable ACK gets <SEQ=SEG.ACK><CTL=RST>
    // and the half-open connection stays.
    s.send(100.5, ". 1:1(0) ack 5 win 512 <nop,nop,TS val 101 ecr *>");
    s.expect(100.5, "R 5:5(0) win 0");
    assert!(s.nothing_to_accept(100.5));
    s.send(101.0, ". 1:1(0) ack 1 win 512 <nop,nop,TS val 101 ecr *>");
    s.accept(101.0);
    s.done(1000.0);
}

#[test]
fn syn_received_final_ack_with_data_is_delivered() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, SYN_ALL);
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 6250 ecr 100,nop,wscale 3>");
    // The handshake's ACK already carries the first request.
    s.send(100.5, "P. 1:101(100) ack 1 win 512 <nop,nop,TS val 101 ecr *>");
    s.expect(100.5, ". 1:1(0) ack 101 win 32755 <nop,nop,TS val 6281 ecr 101>");
    s.accept(101.0);
    s.read(101.0, 100);
    s.done(1000.0);
}

#[test]
fn syn_received_rst_not_exact_gets_a_challenge_ack() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, SYN_ALL);
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 6250 ecr 100,nop,wscale 3>");
    s.send(100.5, "R 1000:1000(0) win 0");
    s.expect(100.5, ". 1:1(0) ack 1 win * <...>");
    s.send(101.0, ". 1:1(0) ack 1 win 512 <nop,nop,TS val 101 ecr *>");
    s.accept(101.0);
    s.done(1000.0);
}

// ---- retransmission timeout -------------------------------------------------------------

#[test]
fn rto_backs_off_exponentially_on_data() {
    let mut s = established();
    s.write(200.0, 1000);
    s.expect(200.0, "P. 1:1001(1000) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    // Tail-loss probe after max(2 SRTT, 10 ms) (RFC 8985 7.2): the last segment again.
    s.expect(210.0, ". 1:1001(1000) ack 1 win 32768 <nop,nop,TS val * ecr 101>");
    // RTO 200 ms (the minimum; the handshake RTT was 0), doubled after each expiry
    // (RFC 6298 5.5), measured from the first transmission, then from each RTO.
    for t in [400.0, 800.0, 1600.0, 3200.0] {
        s.expect(t, "P. 1:1001(1000) ack 1 win 32768 <nop,nop,TS val * ecr 101>");
    }
    s.send(3201.0, ". 1:1(0) ack 1001 win 512 <nop,nop,TS val 102 ecr *>");
    s.done(10_000.0);
}

#[test]
fn fin_is_retransmitted_like_data() {
    let mut s = established();
    s.close(200.0);
    s.expect(200.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(210.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val * ecr 101>");
    s.expect(400.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val * ecr 101>");
    s.expect(800.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val * ecr 101>");
    s.send(801.0, "F. 1:1(0) ack 2 win 512 <nop,nop,TS val 102 ecr *>");
    // (Sequence number: see `acks_after_our_fin_was_acked_carry_snd_nxt`.)
    s.expect(801.0, ". *:*(0) ack 2 win * <nop,nop,TS val * ecr 102>");
    s.done(5000.0);
}

// ---- fast retransmit and SACK ------------------------------------------------------------

#[test]
fn fast_retransmit_on_three_dup_acks_without_sack() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.send(100.0, "S 0:0(0) win 65535 <mss 1460,TS val 100 ecr 0,nop,wscale 7>");
    s.expect(100.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,TS val 6250 ecr 100,nop,wscale 3>");
    s.send(100.0, ". 1:1(0) ack 1 win 512 <nop,nop,TS val 101 ecr 6250>");
    s.accept(100.0);
    s.write(200.0, 7240);
    s.expect(200.0, ". 1:1449(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, ". 1449:2897(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, ". 2897:4345(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, ". 4345:5793(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, "P. 5793:7241(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    // 1449:2897 was lost. (TS ecr: see `ts_recent_is_updated_by_pure_acks`.)
    s.send(201.0, ". 1:1(0) ack 1449 win 512 <nop,nop,TS val 102 ecr 12500>");
    s.send(201.1, ". 1:1(0) ack 1449 win 512 <nop,nop,TS val 102 ecr 12500>");
    s.send(201.2, ". 1:1(0) ack 1449 win 512 <nop,nop,TS val 102 ecr 12500>");
    s.send(201.3, ". 1:1(0) ack 1449 win 512 <nop,nop,TS val 102 ecr 12500>");
    s.expect(201.3, ". 1449:2897(1448) ack 1 win 32768 <nop,nop,TS val * ecr *>");
    // A partial ACK (4345:5793 was lost too): NewReno retransmits the next hole at once
    // (RFC 6582 3.2 step 3).
    s.send(202.0, ". 1:1(0) ack 4345 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(202.0, ". 4345:5793(1448) ack 1 win 32768 <nop,nop,TS val * ecr *>");
    s.send(203.0, ". 1:1(0) ack 7241 win 512 <nop,nop,TS val 104 ecr *>");
    s.done(2000.0);
    let c = s.host.cores[0].counters();
    assert_eq!(c.fast_retransmits.load(std::sync::atomic::Ordering::Relaxed), 2);
    assert_eq!(c.rto_fired.load(std::sync::atomic::Ordering::Relaxed), 0);
}

/// Five segments sent at 200 ms; 1449:2897 is lost; three SACKs at 201.0-201.2 ms make
/// it a loss candidate (RFC 6675 IsLost: 3 * SMSS SACKed above it).
fn sack_hole() -> Script {
    let mut s = established();
    s.write(200.0, 7240);
    s.expect(200.0, ". 1:1449(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, ". 1449:2897(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, ". 2897:4345(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, ". 4345:5793(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.expect(200.0, "P. 5793:7241(1448) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, ". 1:1(0) ack 1449 win 512 <nop,nop,TS val 102 ecr 12500,nop,nop,sack 2897:4345>");
    s.send(201.1, ". 1:1(0) ack 1449 win 512 <nop,nop,TS val 102 ecr 12500,nop,nop,sack 2897:5793>");
    s.send(201.2, ". 1:1(0) ack 1449 win 512 <nop,nop,TS val 102 ecr 12500,nop,nop,sack 2897:7241>");
    s
}

#[test]
fn sack_retransmits_only_the_missing_range() {
    let mut s = sack_hole();
    // The hole appeared with the first SACK (201.0 ms); it became a loss candidate at
    // 201.2 ms (3 * SMSS SACKed above it), when its reordering window (200 µs, counted
    // from when later data was first delivered, as RACK does) has also run out: exactly
    // the hole is retransmitted then, nothing else; more SACKs for it send nothing more.
    s.expect(201.2, ". 1449:2897(1448) ack 1 win 32768 <nop,nop,TS val * ecr *>");
    s.send(202.0, ". 1:1(0) ack 1449 win 512 <nop,nop,TS val 103 ecr 12500,nop,nop,sack 2897:7241>");
    s.send(203.0, ". 1:1(0) ack 7241 win 512 <nop,nop,TS val 104 ecr *>");
    s.done(2000.0);
    assert_eq!(s.host.slow.counters().sack_retransmits, 1);
    assert_eq!(s.host.cores[0].counters().rto_fired.load(std::sync::atomic::Ordering::Relaxed), 0);
}

#[test]
fn sack_hole_is_retransmitted_when_the_reordering_window_expires() {
    let mut s = sack_hole();
    // The third SACK (201.2 ms) makes the hole a loss candidate; its reordering window
    // (200 µs from 201.0 ms, when data sent after it was first SACKed) has expired.
    s.expect(201.2, ". 1449:2897(1448) ack 1 win 32768 <nop,nop,TS val * ecr *>");
    s.send(203.0, ". 1:1(0) ack 7241 win 512 <nop,nop,TS val 104 ecr *>");
    s.done(2000.0);
}

// ---- zero window ----------------------------------------------------------------------------

/// 1000 bytes sent and acknowledged at 201 ms with a zero window; 1000 more written at
/// 250 ms wait for it.
fn zero_window() -> Script {
    let mut s = established();
    s.write(200.0, 1000);
    s.expect(200.0, "P. 1:1001(1000) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, ". 1:1(0) ack 1001 win 0 <nop,nop,TS val 102 ecr *>");
    s.write(250.0, 1000);
    s
}

#[test]
fn zero_window_is_probed_and_sending_resumes_when_it_opens() {
    let mut s = zero_window();
    // The window opens before any probe: the queued data goes out at once.
    s.send(300.0, ". 1:1(0) ack 1001 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(300.0, "P. 1001:2001(1000) ack 1 win 32768 <nop,nop,TS val 18750 ecr *>");
    s.send(301.0, ". 1:1(0) ack 2001 win 0 <nop,nop,TS val 104 ecr *>");
    s.write(302.0, 500);
    // Closed again at 301 ms: the first probe when the zero window has lasted an RTO
    // (RFC 9293 3.8.6.1). Like Linux's, it carries no new data and SEG.SEQ = SND.UNA - 1,
    // so it never reaches beyond the closed window; the peer answers with an ACK.
    s.quiet_until(501.0);
    s.expect(501.0, ". 2000:2000(0) ack 1 win 32768 <nop,nop,TS val * ecr *>");
    s.send(501.5, ". 1:1(0) ack 2001 win 0 <nop,nop,TS val 105 ecr *>");
    s.done(700.0);
}

#[test]
fn zero_window_probe_interval_doubles() {
    let mut s = zero_window();
    // Each probe's timer starts when the previous probe left, which the core's timer
    // scan (a given flow every 200 µs here) delays by up to 200 µs: 401.15 + 400, then
    // + 800 (the exact phase varies by a scan step).
    for (probe, reply) in [(401.0, 401.5), (801.15, 801.5), (1601.15, 1601.8)] {
        s.expect(probe, ". 1000:1000(0) ack 1 win 32768 <nop,nop,TS val * ecr *>");
        s.send(reply, ". 1:1(0) ack 1001 win 0 <nop,nop,TS val 103 ecr *>");
    }
    s.quiet_until(3000.0);
}

/// A peer that answers every probe but keeps its window closed for longer than the
/// retransmission limit (15 timeouts: about 12 minutes with the 200 ms RTO doubling up
/// to 120 s) is alive: the connection keeps probing and resumes when the window opens.
/// Until 2026-11-22 the probe counted as an unacknowledged retransmission and the
/// connection gave up.
#[test]
fn zero_window_probing_never_gives_up_on_a_peer_that_answers() {
    let mut s = zero_window();
    let mut t = 401.0;
    let mut n = 0;
    while t < 1_000_000.0 {
        let probe = s.expect_at_least(t, ". 1000:1000(0) ack 1 win 32768 <nop,nop,TS val * ecr *>");
        s.send(probe + 0.5, ". 1:1(0) ack 1001 win 0 <nop,nop,TS val 103 ecr *>");
        t = probe + 1.0;
        n += 1;
    }
    assert!(n >= 16, "{n} probes in 1000 s");
    assert_eq!(s.state(t), ConnState::Established);
    s.send(t, ". 1:1(0) ack 1001 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(t, "P. 1001:2001(1000) ack 1 win 32768 <nop,nop,TS val * ecr *>");
}

#[test]
fn window_reopening_after_a_probe_sends_at_once() {
    let mut s = zero_window();
    s.expect(401.0, ". 1000:1000(0) ack 1 win 32768 <nop,nop,TS val * ecr *>");
    s.send(401.5, ". 1:1(0) ack 1001 win 0 <nop,nop,TS val 103 ecr *>");
    // The window opens, SND.UNA is still 1001: everything from there goes out now.
    s.send(500.0, ". 1:1(0) ack 1001 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(500.0, "P. 1001:2001(1000) ack 1 win 32768 <nop,nop,TS val * ecr *>");
    s.send(501.0, ". 1:1(0) ack 2001 win 512 <nop,nop,TS val 105 ecr *>");
    s.done(3000.0);
}

// ---- RST, SYN and PAWS on an established connection (RFC 5961, RFC 7323) -------------------

#[test]
fn rst_with_the_exact_sequence_number_resets() {
    let mut s = established();
    s.send(200.0, "R. 1:1(0) ack 1 win 0");
    assert_eq!(s.state(200.0), ConnState::Failed(Error::Reset));
    s.quiet_until(300.0);
    assert!(s.host_states().is_empty());
    // The 4-tuple is gone: a segment for it now gets an RST (seq = SEG.ACK).
    s.send(300.0, ". 1:1(0) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(300.0, "R 1:1(0) win 0");
    s.done(1000.0);
}

#[test]
fn rst_in_window_but_not_exact_gets_a_challenge_ack() {
    let mut s = established();
    s.send(200.0, "R. 1001:1001(0) ack 1 win 0");
    s.expect(200.0, ". 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    assert_eq!(s.state(200.0), ConnState::Established);
    // The connection goes on.
    s.send(201.0, "P. 1:101(100) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(201.0, ". 1:1(0) ack 101 win 32755 <nop,nop,TS val 12562 ecr 102>");
    s.read(202.0, 100);
    // The peer, having seen the challenge ACK, resets with the right number.
    s.send(203.0, "R. 101:101(0) ack 1 win 0");
    assert_eq!(s.state(203.0), ConnState::Failed(Error::Reset));
    s.done(1000.0);
}

#[test]
fn rst_outside_the_window_is_ignored() {
    let mut s = established();
    // Beyond RCV.NXT + RCV.WND (256 KiB), and just below RCV.NXT.
    s.send(200.0, "R. 300000:300000(0) ack 1 win 0");
    s.send(201.0, "R. 0:0(0) ack 1 win 0");
    s.quiet_until(300.0);
    assert_eq!(s.state(300.0), ConnState::Established);
    s.send(300.0, "P. 1:101(100) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(300.0, ". 1:1(0) ack 101 win 32755 <nop,nop,TS val * ecr 102>");
    s.done(1000.0);
}

#[test]
fn syn_on_an_established_connection_gets_a_challenge_ack() {
    let mut s = established();
    // RFC 5961 4.2: whatever its sequence number, a SYN gets a challenge ACK.
    s.send(200.0, SYN_ALL);
    s.expect(200.0, ". 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, "S 5000:5000(0) win 65535 <mss 1460,sackOK,TS val 150 ecr 0,nop,wscale 7>");
    s.expect(201.0, ". 1:1(0) ack 1 win 32768 <nop,nop,TS val 12562 ecr 101>");
    assert_eq!(s.state(202.0), ConnState::Established);
    s.send(202.0, "P. 1:101(100) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(202.0, ". 1:1(0) ack 101 win 32755 <nop,nop,TS val * ecr 102>");
    s.done(1000.0);
}

#[test]
fn paws_drops_an_old_timestamp_and_acks() {
    let mut s = established();
    s.send(200.0, "P. 1:101(100) ack 1 win 512 <nop,nop,TS val 200 ecr *>");
    s.expect(200.0, ". 1:1(0) ack 101 win 32755 <nop,nop,TS val 12500 ecr 200>");
    // TSval 150 < TS.Recent 200: a stale duplicate (RFC 7323 5.3): dropped, ACKed.
    s.send(201.0, "P. 101:201(100) ack 1 win 512 <nop,nop,TS val 150 ecr *>");
    s.expect(201.0, ". 1:1(0) ack 101 win 32755 <nop,nop,TS val 12562 ecr 200>");
    s.read(202.0, 100);
    // The same bytes with a current TSval are taken.
    s.send(203.0, "P. 101:201(100) ack 1 win 512 <nop,nop,TS val 210 ecr *>");
    s.expect(203.0, ". 1:1(0) ack 201 win 32755 <nop,nop,TS val * ecr 210>");
    s.read(204.0, 100);
    s.done(1000.0);
    assert_eq!(s.host.cores[0].counters().paws_dropped.load(std::sync::atomic::Ordering::Relaxed), 1);
}

#[test]
fn ts_recent_is_updated_by_pure_acks() {
    let mut s = established();
    s.write(200.0, 100);
    s.expect(200.0, "P. 1:101(100) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, ". 1:1(0) ack 101 win 512 <nop,nop,TS val 150 ecr 12500>");
    // SEG.TSval >= TS.Recent and SEG.SEQ <= Last.ACK.sent: TS.Recent = 150.
    s.write(300.0, 100);
    s.expect(300.0, "P. 101:201(100) ack 1 win 32768 <nop,nop,TS val 18750 ecr 150>");
    s.send(301.0, ". 1:1(0) ack 201 win 512 <nop,nop,TS val 160 ecr *>");
    s.done(1000.0);
}

#[test]
fn ack_of_unsent_data_is_answered_with_an_ack() {
    let mut s = established();
    // RFC 9293 3.10.7.4: SEG.ACK > SND.NXT: send an ACK, drop the segment.
    s.send(200.0, "P. 1:101(100) ack 5000 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(200.0, ". 1:1(0) ack 1 win 32768 <nop,nop,TS val * ecr *>");
    // A segment without ACK is dropped silently.
    s.send(201.0, "P 1:101(100) win 512 <nop,nop,TS val 103 ecr *>");
    s.quiet_until(300.0);
    assert_eq!(s.readable(300.0), 0);
    s.send(300.0, "P. 1:101(100) ack 1 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(300.0, ". 1:1(0) ack 101 win 32755 <nop,nop,TS val * ecr 104>");
    s.read(301.0, 100);
    s.done(1000.0);
}

#[test]
fn app_abort_sends_rst() {
    let mut s = established();
    s.send(150.0, "P. 1:101(100) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(150.0, ". 1:1(0) ack 101 win 32755 <nop,nop,TS val * ecr 102>");
    s.abort(200.0);
    // RFC 9293 3.10.5 ABORT: <SEQ=SND.NXT><CTL=RST> (ACK allowed).
    s.expect(200.0, "R. 1:1(0) ack 101 win *");
    s.quiet_until(300.0);
    assert!(s.host_states().is_empty());
    s.send(300.0, ". 101:101(0) ack 1 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(300.0, "R 1:1(0) win 0");
    s.done(1000.0);
}

// ---- closing ------------------------------------------------------------------------------

#[test]
fn time_wait_reacks_a_retransmitted_fin_then_forgets_the_tuple() {
    let mut s = established();
    s.close(200.0);
    s.expect(200.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, ". 1:1(0) ack 2 win 512 <nop,nop,TS val 102 ecr *>");
    assert_eq!(s.host_states(), vec!["FIN-WAIT-2"]);
    s.send(300.0, "F. 1:1(0) ack 2 win 512 <nop,nop,TS val 103 ecr *>");
    // (Sequence number: see `acks_after_our_fin_was_acked_carry_snd_nxt`; options:
    // `time_wait_acks_carry_timestamps`.)
    s.expect(300.0, ". *:*(0) ack 2 win * <nop,nop,TS val * ecr 103>");
    s.quiet_until(301.0);
    assert_eq!(s.host_states(), vec!["TIME-WAIT"]);
    // Our ACK was lost: the peer retransmits its FIN; ACK again, restart 2 MSL (1 s).
    s.send(800.0, "F. 1:1(0) ack 2 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(800.0, ". *:*(0) ack 2 win * <...>");
    // Anything else in TIME-WAIT is ignored.
    s.send(1700.0, ". 2:2(0) ack 2 win 512 <nop,nop,TS val 105 ecr *>");
    s.quiet_until(1799.0);
    assert_eq!(s.host_states(), vec!["TIME-WAIT"]);
    s.quiet_until(1800.0);
    assert!(s.host_states().is_empty(), "TIME-WAIT lasted 1 s after the last FIN");
    // The 4-tuple is forgotten: RST, seq = SEG.ACK.
    s.send(1900.0, ". 2:2(0) ack 2 win 512 <nop,nop,TS val 106 ecr *>");
    s.expect(1900.0, "R 2:2(0) win 0");
    s.done(3000.0);
}

#[test]
fn acks_after_our_fin_was_acked_carry_snd_nxt() {
    let mut s = established();
    s.shutdown(200.0);
    s.expect(200.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, ". 1:1(0) ack 2 win 512 <nop,nop,TS val 102 ecr *>");
    s.send(300.0, "P. 1:1001(1000) ack 2 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(300.0, ". 2:2(0) ack 1001 win 32643 <nop,nop,TS val 18750 ecr 103>");
    s.send(400.0, "F. 1001:1001(0) ack 2 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(400.0, ". 2:2(0) ack 1002 win 32643 <nop,nop,TS val 25000 ecr 104>");
    s.done(1000.0);
}

#[test]
fn time_wait_acks_carry_timestamps() {
    let mut s = established();
    s.close(200.0);
    s.expect(200.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, ". 1:1(0) ack 2 win 512 <nop,nop,TS val 102 ecr *>");
    s.send(300.0, "F. 1:1(0) ack 2 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(300.0, ". *:*(0) ack 2 win * <nop,nop,TS val 18750 ecr 103>");
    s.quiet_until(301.0);
    assert_eq!(s.host_states(), vec!["TIME-WAIT"]);
    // The retransmitted FIN is ACKed from TIME-WAIT: still with timestamps, echoing
    // the FIN's TSval (RFC 7323 3.2, 4.3).
    s.send(500.0, "F. 1:1(0) ack 2 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(500.0, ". *:*(0) ack 2 win * <nop,nop,TS val 31250 ecr 104>");
    s.done(3000.0);
}

#[test]
fn active_close_answered_by_fin_ack_enters_time_wait() {
    let mut s = established();
    s.close(200.0);
    s.expect(200.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, "F. 1:1(0) ack 2 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(201.0, ". *:*(0) ack 2 win * <...>");
    s.quiet_until(202.0);
    assert_eq!(s.host_states(), vec!["TIME-WAIT"]);
    s.send(500.0, "F. 1:1(0) ack 2 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(500.0, ". *:*(0) ack 2 win * <...>");
    s.done(3000.0);
}

#[test]
fn simultaneous_close_enters_time_wait() {
    let mut s = established();
    s.close(200.0);
    s.expect(200.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    // The peer's FIN crossed ours: it does not acknowledge our FIN.
    s.send(200.5, "F. 1:1(0) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(200.5, ". 2:2(0) ack 2 win * <nop,nop,TS val * ecr 102>");
    s.send(201.0, ". 2:2(0) ack 2 win 512 <nop,nop,TS val 103 ecr *>");
    s.quiet_until(202.0);
    assert_eq!(s.host_states(), vec!["TIME-WAIT"], "CLOSING -> TIME-WAIT");
    s.send(500.0, "F. 1:1(0) ack 2 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(500.0, ". *:*(0) ack 2 win * <...>");
    s.done(3000.0);
}

#[test]
fn half_close_by_the_peer_we_keep_sending() {
    let mut s = established();
    s.send(200.0, "P. 1:101(100) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(200.0, ". 1:1(0) ack 101 win 32755 <nop,nop,TS val 12500 ecr 102>");
    s.send(201.0, "F. 101:101(0) ack 1 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(201.0, ". 1:1(0) ack 102 win 32755 <nop,nop,TS val 12562 ecr 103>");
    s.read(202.0, 100);
    s.read_eof(202.0);
    assert_eq!(s.state(202.0), ConnState::PeerClosed);
    assert_eq!(s.host_states(), vec!["CLOSE-WAIT"]);
    s.write(300.0, 3000);
    s.expect(300.0, ". 1:1449(1448) ack 102 win 32768 <nop,nop,TS val 18750 ecr 103>");
    s.expect(300.0, ". 1449:2897(1448) ack 102 win 32768 <nop,nop,TS val 18750 ecr 103>");
    s.expect(300.0, "P. 2897:3001(104) ack 102 win 32768 <nop,nop,TS val 18750 ecr 103>");
    s.send(301.0, ". 102:102(0) ack 3001 win 512 <nop,nop,TS val 104 ecr *>");
    s.close(400.0);
    s.expect(400.0, "F. 3001:3001(0) ack 102 win 32768 <nop,nop,TS val * ecr *>");
    s.send(401.0, ". 102:102(0) ack 3002 win 512 <nop,nop,TS val 105 ecr *>");
    s.quiet_until(402.0);
    assert!(s.host_states().is_empty(), "LAST-ACK -> CLOSED, no TIME-WAIT for the passive closer");
    s.done(2000.0);
}

#[test]
fn data_and_fin_in_one_segment() {
    let mut s = established();
    s.send(200.0, "FP. 1:101(100) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(200.0, ". 1:1(0) ack 102 win 32755 <nop,nop,TS val 12500 ecr 102>");
    s.read(201.0, 100);
    s.read_eof(201.0);
    assert_eq!(s.host_states(), vec!["CLOSE-WAIT"]);
    s.close(300.0);
    s.expect(300.0, "F. 1:1(0) ack 102 win 32768 <nop,nop,TS val * ecr 102>");
    s.send(301.0, ". 102:102(0) ack 2 win 512 <nop,nop,TS val 103 ecr *>");
    s.quiet_until(302.0);
    assert!(s.host_states().is_empty());
    s.done(1000.0);
}

#[test]
fn half_close_by_the_app_the_peer_keeps_sending() {
    let mut s = established();
    s.shutdown(200.0);
    s.expect(200.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    assert_eq!(s.state(200.0), ConnState::LocalClosed);
    s.send(201.0, ". 1:1(0) ack 2 win 512 <nop,nop,TS val 102 ecr *>");
    assert_eq!(s.host_states(), vec!["FIN-WAIT-2"]);
    // (Sequence numbers: see `acks_after_our_fin_was_acked_carry_snd_nxt`.)
    s.send(300.0, "P. 1:1001(1000) ack 2 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(300.0, ". *:*(0) ack 1001 win 32643 <nop,nop,TS val 18750 ecr 103>");
    s.send(301.0, "P. 1001:2001(1000) ack 2 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(301.0, ". *:*(0) ack 2001 win 32518 <nop,nop,TS val 18812 ecr 104>");
    s.read(302.0, 2000);
    s.send(400.0, "F. 2001:2001(0) ack 2 win 512 <nop,nop,TS val 105 ecr *>");
    s.expect(400.0, ". *:*(0) ack 2002 win * <nop,nop,TS val 25000 ecr 105>");
    s.read_eof(401.0);
    s.quiet_until(402.0);
    assert_eq!(s.host_states(), vec!["TIME-WAIT"]);
    s.done(3000.0);
}

// ---- segments for no connection (RFC 9293 3.10.7.1, "Reset Generation") ----------------------

#[test]
fn syn_to_a_closed_port_gets_rst_ack() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    s.new_connection(40001, 9);
    s.send(100.0, "S 0:0(0) win 65535 <mss 1460,sackOK,TS val 100 ecr 0,nop,wscale 7>");
    // No ACK in the SYN: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    s.expect(100.0, "R. 0:0(0) ack 1 win 0");
    s.done(1000.0);
    assert_eq!(s.host.slow.counters().rsts_sent, 1);
}

#[test]
fn segments_for_unknown_flows_get_rst_by_the_rules() {
    let mut s = Script::new();
    s.listen(0.0, 8080);
    // To the listening port, but no connection: an ACK segment: <SEQ=SEG.ACK><CTL=RST>.
    s.new_connection(40002, 8080);
    s.send(100.0, ". 1:1(0) ack 5000 win 65535");
    s.expect(100.0, "R 5000:5000(0) win 0");
    s.send(101.0, "P. 1:11(10) ack 77 win 65535");
    s.expect(101.0, "R 77:77(0) win 0");
    // Without ACK: <SEQ=0><ACK=SEG.SEQ+SEG.LEN><CTL=RST,ACK>.
    s.send(102.0, "P 1:11(10) win 65535");
    s.expect(102.0, "R. 0:0(0) ack 11 win 0");
    s.send(103.0, "F 1:1(0) win 65535");
    s.expect(103.0, "R. 0:0(0) ack 2 win 0");
    // To a closed port, same rules.
    s.new_connection(40003, 9);
    s.send(104.0, ". 1:1(0) ack 5000 win 65535");
    s.expect(104.0, "R 5000:5000(0) win 0");
    // An RST is never answered.
    s.send(105.0, "R. 1:1(0) ack 5000 win 0");
    s.send(106.0, "R 1:1(0) win 0");
    s.done(1000.0);
    assert!(s.host_states().is_empty());
}

// ---- receiving: out of order, window, duplicates --------------------------------------------

#[test]
fn out_of_order_data_is_held_sacked_and_merged() {
    let mut s = established();
    // Each out-of-order segment gets an immediate duplicate ACK whose first SACK block is
    // the one just changed (RFC 2018 4); TS.Recent is not taken from them (RFC 7323 4.3).
    s.send(200.0, "P. 1001:2001(1000) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(200.0, ". 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101,nop,nop,sack 1001:2001>");
    s.send(200.1, "P. 3001:4001(1000) ack 1 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(200.1, ". 1:1(0) ack 1 win 32768 <nop,nop,TS val * ecr 101,nop,nop,sack 3001:4001 1001:2001>");
    s.send(200.2, "P. 5001:6001(1000) ack 1 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(200.2, ". 1:1(0) ack 1 win 32768 <nop,nop,TS val * ecr 101,nop,nop,sack 5001:6001 1001:2001 3001:4001>");
    // Filling the first hole merges 1:2001, the head moves to 2001.
    s.send(201.0, "P. 1:1001(1000) ack 1 win 512 <nop,nop,TS val 105 ecr *>");
    s.expect(201.0, ". 1:1(0) ack 2001 win 32518 <nop,nop,TS val 12562 ecr 105,nop,nop,sack 3001:4001 5001:6001>");
    s.read(201.5, 2000);
    s.send(202.0, "P. 2001:3001(1000) ack 1 win 512 <nop,nop,TS val 106 ecr *>");
    s.expect(202.0, ". 1:1(0) ack 4001 win * <nop,nop,TS val * ecr 106,nop,nop,sack 5001:6001>");
    s.send(203.0, "P. 4001:5001(1000) ack 1 win 512 <nop,nop,TS val 107 ecr *>");
    s.expect(203.0, ". 1:1(0) ack 6001 win * <nop,nop,TS val * ecr 107>");
    // Reading 4000 bytes reopens the window by more than 2 MSS: a window update.
    s.read(204.0, 4000);
    s.expect(204.0, ". 1:1(0) ack 6001 win 32768 <nop,nop,TS val 12750 ecr 107>");
    s.done(1000.0);
}

#[test]
fn data_beyond_the_window_is_dropped_or_trimmed_with_an_ack() {
    let layout = Layout { rx_buf_size: 16 * 1024, ..script::peer::default_layout() };
    let mut s = Script::with_layout(layout);
    s.listen(0.0, 8080);
    s.send(100.0, "S 0:0(0) win 65535 <mss 1460,sackOK,nop,wscale 7>");
    // A 16 KiB ring fits the 16-bit field: window scale 0.
    s.expect(100.0, "S. 0:0(0) ack 1 win 16384 <mss 1460,sackOK,nop,wscale 0>");
    s.send(100.0, ". 1:1(0) ack 1 win 512");
    s.accept(100.0);
    s.send(200.0, "P. 1:1001(1000) ack 1 win 512");
    s.expect(200.0, ". 1:1(0) ack 1001 win 15384");
    // Entirely beyond RCV.NXT + RCV.WND = 16385: dropped, ACKed.
    s.send(201.0, "P. 20001:21001(1000) ack 1 win 512");
    s.expect(201.0, ". 1:1(0) ack 1001 win 15384");
    // Straddling the right edge: the part inside (16001:16385) is kept.
    s.send(202.0, "P. 16001:17001(1000) ack 1 win 512");
    s.expect(202.0, ". 1:1(0) ack 1001 win 15384 <sack 16001:16385>");
    let mut t = 203.0;
    for k in 1..15u32 {
        let (a, b) = (k * 1000 + 1, k * 1000 + 1001);
        s.send(t, &format!("P. {a}:{b}(1000) ack 1 win 512"));
        s.expect(t, &format!(". 1:1(0) ack {b} win {} <sack 16001:16385>", 16384 - (b - 1)));
        t += 0.1;
    }
    // The last hole: the held bytes join, the window is full.
    s.send(210.0, "P. 15001:16001(1000) ack 1 win 512");
    s.expect(210.0, ". 1:1(0) ack 16385 win 0");
    s.send(211.0, "P. 16385:17001(616) ack 1 win 512");
    s.expect(211.0, ". 1:1(0) ack 16385 win 0");
    // Reading everything reopens the window with an update.
    s.read(300.0, 16384);
    s.expect(300.0, ". 1:1(0) ack 16385 win 16384");
    s.send(301.0, "P. 16385:17001(616) ack 1 win 512");
    s.expect(301.0, ". 1:1(0) ack 17001 win 15768");
    s.read(302.0, 616);
    s.done(1000.0);
}

#[test]
fn duplicate_and_overlapping_segments_are_trimmed() {
    let mut s = established();
    s.send(200.0, "P. 1:1001(1000) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(200.0, ". 1:1(0) ack 1001 win 32643 <nop,nop,TS val * ecr 102>");
    // Overlaps 501:1001: only 1001:1501 is new.
    s.send(201.0, "P. 501:1501(1000) ack 1 win 512 <nop,nop,TS val 103 ecr *>");
    s.expect(201.0, ". 1:1(0) ack 1501 win 32580 <nop,nop,TS val * ecr 103>");
    // An exact duplicate: an immediate ACK, nothing delivered twice.
    s.send(202.0, "P. 1:1001(1000) ack 1 win 512 <nop,nop,TS val 104 ecr *>");
    s.expect(202.0, ". 1:1(0) ack 1501 win 32580 <nop,nop,TS val * ecr *>");
    s.read(203.0, 1500);
    // Overlapping out-of-order segments merge into one SACK block.
    s.send(210.0, "P. 2001:3001(1000) ack 1 win 512 <nop,nop,TS val 105 ecr *>");
    s.expect(210.0, ". 1:1(0) ack 1501 win * <nop,nop,TS val * ecr *,nop,nop,sack 2001:3001>");
    s.send(211.0, "P. 2501:3501(1000) ack 1 win 512 <nop,nop,TS val 106 ecr *>");
    s.expect(211.0, ". 1:1(0) ack 1501 win * <nop,nop,TS val * ecr *,nop,nop,sack 2001:3501>");
    s.send(212.0, "P. 1501:2501(1000) ack 1 win 512 <nop,nop,TS val 107 ecr *>");
    s.expect(212.0, ". 1:1(0) ack 3501 win * <nop,nop,TS val * ecr 107>");
    s.read(213.0, 2000);
    s.done(1000.0);
}

#[test]
fn peer_port_other_than_default_is_a_different_flow() {
    // Two connections from the same peer on two ports are two flows.
    let mut s = established();
    s.new_connection(PEER_PORT + 1, 8080);
    s.send(200.0, SYN_ALL);
    s.expect(200.0, "S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val 12500 ecr 100,nop,wscale 3>");
    s.send(200.0, ". 1:1(0) ack 1 win 512 <nop,nop,TS val 101 ecr *>");
    s.accept(200.0);
    s.send(201.0, "P. 1:11(10) ack 1 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(201.0, ". 1:1(0) ack 11 win 32766 <nop,nop,TS val * ecr 102>");
    s.read(202.0, 10);
    s.done(1000.0);
    assert_eq!(s.host_states(), vec!["ESTABLISHED", "ESTABLISHED"]);
}


#[test]
fn time_wait_tuple_reused_by_a_newer_syn() {
    // The server closed first and holds TIME-WAIT; the client reconnects from the same
    // port with a newer timestamp: accepted at once (RFC 6191), not after 2 MSL.
    let mut s = established();
    s.close(200.0);
    s.expect(200.0, "F. 1:1(0) ack 1 win 32768 <nop,nop,TS val 12500 ecr 101>");
    s.send(201.0, "F. 1:1(0) ack 2 win 512 <nop,nop,TS val 102 ecr *>");
    s.expect(201.0, ". *:*(0) ack 2 win * <...>");
    s.quiet_until(300.0);
    assert_eq!(s.host_states(), vec!["TIME-WAIT"]);
    // An old duplicate SYN (older timestamp) is not taken for a new connection.
    s.send(300.0, "S 0:0(0) win 65535 <mss 1460,sackOK,TS val 50 ecr 0,nop,wscale 7>");
    s.quiet_until(400.0);
    assert_eq!(s.host_states(), vec!["TIME-WAIT"]);
    s.send(400.0, "S 0:0(0) win 65535 <mss 1460,sackOK,TS val 200 ecr 0,nop,wscale 7>");
    s.expect(400.0, "S. *:*(0) ack 1 win 65535 <mss 1460,sackOK,TS val * ecr 200,nop,wscale 3>");
    assert_eq!(s.host_states(), vec!["SYN-RECEIVED"]);
    assert_eq!(s.host.slow.counters().time_wait_reused, 1);
}

/// Data in flight when the peer's window closes, then an ACK with the same number and an
/// open window (here: a reordered older ACK, as a 25 %-reordering path delivers): the
/// data in flight stays in flight, nothing is resent, and the peer's ACK of all of it is
/// taken. Until 2026-11-22 the reopening rewound SND.NXT (to resend a one-byte probe that
/// no longer exists); the peer's ACK of the rewound data then counted as acknowledging
/// unsent data and was dropped, and over veth the connection deadlocked.
#[test]
fn window_closing_and_reopening_with_data_in_flight_resends_nothing() {
    let mut s = established();
    s.write(200.0, 3000);
    s.expect(200.0, ". 1:1449(1448) ack 1 win 32768 <nop,nop,TS val * ecr 101>");
    s.expect(200.0, ". 1449:2897(1448) ack 1 win 32768 <nop,nop,TS val * ecr 101>");
    s.expect(200.0, "P. 2897:3001(104) ack 1 win 32768 <nop,nop,TS val * ecr 101>");
    s.send(200.5, ". 1:1(0) ack 1449 win 0 <nop,nop,TS val 102 ecr *>");
    s.send(200.6, ". 1:1(0) ack 1449 win 512 <nop,nop,TS val 102 ecr *>");
    s.quiet_until(200.9);
    s.send(201.0, ". 1:1(0) ack 3001 win 512 <nop,nop,TS val 103 ecr *>");
    s.write(202.0, 100);
    s.expect(202.0, "P. 3001:3101(100) ack 1 win 32768 <nop,nop,TS val * ecr 103>");
    s.send(202.5, ". 1:1(0) ack 3101 win 512 <nop,nop,TS val 104 ecr *>");
    s.done(1000.0);
}
