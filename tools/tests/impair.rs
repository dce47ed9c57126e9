//! Real-network tests through the impairment forwarder (`tas-impair`): namespaces A and B
//! joined through a middle namespace M (`deploy/sandbox.sh` with `TAS_NS_M`), the forwarder
//! bridging M's two veths with seeded loss, reordering, duplication, delay, rate limit or ECN
//! marking.
//!
//! Two groups:
//!
//! - `forwarder_*`: the forwarder alone, the Linux kernel's TCP at both ends (`tools/peers/`
//!   in A and B). They check the forwarder: transfers complete with matching hashes under
//!   loss and reordering, the loss counter is within statistical bounds of the setting, a
//!   rate limit gives the goodput it should, CE marks are made and the kernel receiver counts
//!   them (`IpExt InCEPkts`).
//! - `tasd_*`: `tasd` + `tas-echo` in A (started as `tools/tests/veth.rs` does), the kernel in
//!   B, 200 MB each way under one impairment: a kernel client through `tas-echo server`, and
//!   `tas-echo client` against a kernel echo server. Every byte is hash-checked. Each has
//!   [`TASD_TRANSFER_TIMEOUT`] (4 minutes; they take 2-30 s on the 2-core VM) and prints one
//!   `impair-result:` line with the time taken and the forwarder's counters.
//!
//! They need root, so they are `#[ignore]`d; `deploy/test.sh` runs them as root:
//!
//! ```text
//! cargo build --release --workspace
//! sudo cargo test -p tas-tools --test impair -- --ignored --test-threads=1 --nocapture
//! ```
//!
//! A test that cannot set up fails and says what to do. Binaries come from the release
//! directory of this test's target directory, or `TAS_BIN_DIR`.

mod common;

use std::fs;
use std::process::Command;
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{hex_digests, net_counter as counter, ECHO_PORT, IF_MA, IF_MB, IP_A, IP_B};
use serde_json::Value;

/// A kernel echo server in A, for the kernel-to-kernel tests.
const KERNEL_PORT: u16 = 8;

/// How long one tasd transfer under impairment may take: 200 MB each way took 2-30 s on
/// the loaded 2-core VM on 2026-11-22 (5 % loss and 25 % reordering the slowest), so a
/// transfer that needs longer than this is a failure to report, not to wait for.
const TASD_TRANSFER_TIMEOUT: Duration = Duration::from_secs(240);
/// Bytes each way in the tasd tests (the issue's 200 MB; `TAS_IMPAIR_MB` overrides it for
/// quicker local experiments).
fn tasd_bytes() -> u64 {
    std::env::var("TAS_IMPAIR_MB").ok().and_then(|v| v.parse::<u64>().ok()).map_or(200_000_000, |mb| mb * 1_000_000)
}

// ---------------------------------------------------------------------------------------------
// The forwarder alone: kernel TCP at both ends
// ---------------------------------------------------------------------------------------------

/// Without impairments the forwarder is a bridge: a 100 MB echo completes; its rate is printed.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn forwarder_transparent_kernel_echo_100mb() {
    let bed = Bed::up("fwd-clear");
    bed.start_forwarder(&["--seed", "1"]);
    bed.start_kernel_echo_server_a();
    let s = bed.kernel_stream(100_000_000, Duration::from_secs(120));
    let fwd = bed.stop_forwarder();
    for dir in ["a2b", "b2a"] {
        let c = &fwd[dir];
        assert_eq!(
            num(c, "rx_frames"),
            num(c, "tx_frames") + num(c, "discarded_at_exit"),
            "{dir}: a transparent forwarder sends what it receives: {c}"
        );
        assert_eq!(c["rx_socket_drops"], 0, "{dir}: {c}");
    }
    result("forwarder transparent 100MB echo", &s, &fwd);
}

/// 50 MB through 5% loss and 25% reordering (2 ms) each way: complete, hashes match, and the
/// measured loss is within statistical bounds of 5%.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn forwarder_kernel_50mb_under_5pct_loss_and_25pct_reorder() {
    let bed = Bed::up("fwd-loss");
    bed.start_forwarder(&[
        "--seed",
        "7",
        "--loss",
        "0.05",
        "--reorder",
        "0.25",
        "--reorder-delay",
        "2ms",
    ]);
    bed.start_kernel_echo_server_a();
    let s = bed.kernel_stream(50_000_000, Duration::from_secs(300));
    let fwd = bed.stop_forwarder();
    for dir in ["a2b", "b2a"] {
        let c = &fwd[dir];
        let n = num(c, "rx_frames");
        assert!(n > 30_000, "{dir}: only {n} frames crossed: {c}");
        assert_near(&format!("{dir} loss"), num(c, "lost"), n, 0.05);
        // Reordering is drawn for the frames that survived the loss stage.
        assert_near(
            &format!("{dir} reorder"),
            num(c, "reordered"),
            n - num(c, "lost"),
            0.25,
        );
        assert_eq!(
            num(c, "tx_frames") + num(c, "discarded_at_exit") + num(c, "tx_errors"),
            n - num(c, "lost"),
            "{dir}: every surviving frame was sent (or still held at the stop): {c}"
        );
    }
    result("forwarder 5% loss + 25% reorder, 50MB echo", &s, &fwd);
}

/// A 50 Mbit/s bottleneck each way: the goodput of a kernel echo is within 10% of 50 Mbit/s.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn forwarder_rate_limit_50mbit_goodput_within_10pct() {
    let bed = Bed::up("fwd-rate");
    bed.start_forwarder(&["--seed", "1", "--rate", "50mbit", "--queue", "256"]);
    bed.start_kernel_echo_server_a();
    // 40 MB at 50 Mbit/s: 7 s, long enough that connection setup and slow start hardly count.
    let bytes = 40_000_000u64;
    let s = bed.kernel_stream(bytes, Duration::from_secs(120));
    let fwd = bed.stop_forwarder();
    let secs = s["seconds"].as_f64().expect("seconds");
    let goodput = bytes as f64 * 8.0 / secs;
    // The goodput counts TCP payload: 1448 of every 1514 bytes on the wire (with timestamps),
    // so a perfect 50 Mbit/s link gives 47.8 Mbit/s, within the 10%.
    assert!(
        (45e6..=55e6).contains(&goodput),
        "goodput {:.1} Mbit/s through a 50 Mbit/s limit ({secs} s): not within 10%; forwarder: {fwd}",
        goodput / 1e6
    );
    result(
        &format!("forwarder 50mbit: goodput {:.1} Mbit/s", goodput / 1e6),
        &s,
        &fwd,
    );
}

/// ECN: with a 50 Mbit/s bottleneck and a marking threshold of 20 frames, the forwarder marks
/// CE on ECT frames, and the receiving kernels count exactly the marked frames that reached
/// them (IpExt InCEPkts), and their senders saw the echo (TcpExt TCPDeliveredCE).
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn forwarder_marks_ce_and_the_kernel_receiver_sees_it() {
    let bed = Bed::up("fwd-ecn");
    for ns in [&bed.ns_a, &bed.ns_b] {
        // 1: request ECN on outgoing connections and accept it on incoming ones.
        bed.capture_ok(&[
            "ip",
            "netns",
            "exec",
            ns,
            "sysctl",
            "-qw",
            "net.ipv4.tcp_ecn=1",
        ]);
    }
    bed.start_forwarder(&[
        "--seed",
        "1",
        "--rate",
        "50mbit",
        "--queue",
        "256",
        "--ecn-threshold",
        "20",
    ]);
    bed.start_kernel_echo_server_a();
    let ce_a0 = bed.netstat(&bed.ns_a, "IpExt", "InCEPkts");
    let ce_b0 = bed.netstat(&bed.ns_b, "IpExt", "InCEPkts");
    let s = bed.kernel_stream(10_000_000, Duration::from_secs(120));
    let fwd = bed.stop_forwarder();
    let ce_a = bed.netstat(&bed.ns_a, "IpExt", "InCEPkts") - ce_a0;
    let ce_b = bed.netstat(&bed.ns_b, "IpExt", "InCEPkts") - ce_b0;
    let (m_a2b, m_b2a) = (num(&fwd["a2b"], "ce_marked"), num(&fwd["b2a"], "ce_marked"));
    // B's client sends into the 50 Mbit/s limit, so the b2a queue must pass the threshold
    // and be marked. The echo (a2b) is paced by what arrives through b2a, so its queue
    // may stay below the threshold (CI saw a maximum of 16 frames) and go unmarked; the
    // receivers' counts below must match the marks either way.
    assert!(
        m_b2a > 0,
        "no CE marks in the bottleneck direction b2a: {fwd}"
    );
    // Every marked frame was sent (no loss configured): the receiver counted each one.
    for (who, seen, marked, dir) in [("B", ce_b, m_a2b, "a2b"), ("A", ce_a, m_b2a, "b2a")] {
        let errors = num(&fwd[dir], "tx_errors");
        assert!(
            seen <= marked && seen + errors >= marked,
            "kernel of {who} counted {seen} CE packets, the forwarder marked {marked} ({dir}, {errors} tx errors)"
        );
    }
    let delivered_ce = bed.netstat(&bed.ns_b, "TcpExt", "TCPDeliveredCE");
    assert!(
        delivered_ce > 0,
        "the kernel sender in B never saw its CE marks echoed (TCPDeliveredCE = 0)"
    );
    eprintln!("impair-result: ECN: marked a2b={m_a2b} b2a={m_b2a}; InCEPkts B={ce_b} A={ce_a}; TCPDeliveredCE B={delivered_ce}");
    result("forwarder ECN 50mbit threshold 20", &s, &fwd);
}

// ---------------------------------------------------------------------------------------------
// tasd through the forwarder
// ---------------------------------------------------------------------------------------------

const LOSS_1: &[&str] = &["--seed", "1", "--loss", "0.01"];
const LOSS_5: &[&str] = &["--seed", "1", "--loss", "0.05"];
const REORDER_25: &[&str] = &["--seed", "1", "--reorder", "0.25", "--reorder-delay", "2ms"];
const DUP_5: &[&str] = &["--seed", "1", "--dup", "0.05"];
const DELAY_5MS: &[&str] = &["--seed", "1", "--delay", "5ms"];

#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_kernel_client_200mb_transparent() {
    tasd_kernel_client("transparent", &["--seed", "1"]);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_tas_client_200mb_transparent() {
    tasd_tas_client("transparent", &["--seed", "1"]);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_kernel_client_200mb_loss_1pct() {
    tasd_kernel_client("loss 1%", LOSS_1);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_tas_client_200mb_loss_1pct() {
    tasd_tas_client("loss 1%", LOSS_1);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_kernel_client_200mb_loss_5pct() {
    tasd_kernel_client("loss 5%", LOSS_5);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_tas_client_200mb_loss_5pct() {
    tasd_tas_client("loss 5%", LOSS_5);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_kernel_client_200mb_reorder_25pct() {
    tasd_kernel_client("reorder 25% by 2ms", REORDER_25);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_tas_client_200mb_reorder_25pct() {
    tasd_tas_client("reorder 25% by 2ms", REORDER_25);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_kernel_client_200mb_dup_5pct() {
    tasd_kernel_client("duplicate 5%", DUP_5);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_tas_client_200mb_dup_5pct() {
    tasd_tas_client("duplicate 5%", DUP_5);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_kernel_client_200mb_delay_5ms() {
    tasd_kernel_client("delay 5ms", DELAY_5MS);
}
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_tas_client_200mb_delay_5ms() {
    tasd_tas_client("delay 5ms", DELAY_5MS);
}

/// A kernel client in B streams [`tasd_bytes`] through `tas-echo server` on tasd in A.
/// These tests measure loss recovery, so tasd runs without congestion control
/// (`unlimited`), as they did before it existed: with DCTCP, 1 % random loss drops a
/// transfer to about 0.1 MB/s (docs/congestion.md, "Known limitations").
fn tasd_kernel_client(what: &str, impair: &[&str]) {
    let bed = Bed::up("tasd-kc");
    bed.start_forwarder(impair);
    bed.start_tasd_cc("unlimited");
    bed.start_tas_echo_server();
    let before = bed.kernel_tcp_counters_a();
    let bytes = tasd_bytes().to_string();
    let started = Instant::now();
    let out = bed.run_b_peer(
        "stream_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--bytes",
            &bytes,
            "--conns",
            "1",
            "--seed",
            "1",
            // Seconds without progress: RTO backoff under loss may pause a while.
            "--timeout",
            "120",
        ],
        TASD_TRANSFER_TIMEOUT,
    );
    let elapsed = started.elapsed();
    let s = out.json_success();
    assert_eq!(s["bytes_received"], tasd_bytes(), "{s}");
    assert_eq!(s["sha256_sent"], s["sha256_received"], "{s}");
    bed.assert_kernel_a_did_no_tcp(&before);
    let fwd = bed.stop_forwarder();
    eprintln!(
        "impair-result: tasd kernel-client->tas-echo-server {} MB {what}: {:.1} s ({:.1} MB/s each way)",
        tasd_bytes() / 1_000_000,
        elapsed.as_secs_f64(),
        tasd_bytes() as f64 / elapsed.as_secs_f64() / 1e6
    );
    result(&format!("tasd kernel client, {what}"), &s, &fwd);
}

/// `tas-echo client` on tasd in A streams [`tasd_bytes`] to a kernel echo server in B.
fn tasd_tas_client(what: &str, impair: &[&str]) {
    let bed = Bed::up("tasd-tc");
    bed.start_forwarder(impair);
    bed.start_tasd_cc("unlimited");
    let server = bed.start_kernel_echo_server(&bed.ns_b.clone(), "kernel-echo-b", ECHO_PORT);
    let before = bed.kernel_tcp_counters_a();
    let bytes = tasd_bytes().to_string();
    let timeout = TASD_TRANSFER_TIMEOUT.as_secs().to_string();
    let started = Instant::now();
    let out = bed.run_a_tas_app(
        "tas-echo-client",
        &[
            "client",
            "--connect",
            &format!("{IP_B}:{ECHO_PORT}"),
            "--bytes",
            &bytes,
            "--conns",
            "1",
            "--timeout",
            &timeout,
        ],
        TASD_TRANSFER_TIMEOUT + Duration::from_secs(10),
    );
    let elapsed = started.elapsed();
    out.assert_success();
    let closed = bed.wait_for_closed_connections(&server, 1, Duration::from_secs(30));
    assert_eq!(
        closed[0]["bytes"], tasd_bytes(),
        "kernel echo server saw: {closed:?}"
    );
    assert!(
        closed[0]["error"].is_null(),
        "kernel echo server saw: {closed:?}"
    );
    let server_sha = closed[0]["sha256"].as_str().unwrap_or_default().to_string();
    let shas = hex_digests(&(out.stdout.clone() + &out.stderr));
    assert!(
        shas.is_empty() || shas.contains(&server_sha),
        "tas-echo reported sha256 {shas:?}, the kernel echo server computed {server_sha}"
    );
    bed.assert_kernel_a_did_no_tcp(&before);
    let fwd = bed.stop_forwarder();
    eprintln!(
        "impair-result: tasd tas-echo-client->kernel-echo-server {} MB {what}: {:.1} s ({:.1} MB/s each way); {}",
        tasd_bytes() / 1_000_000,
        elapsed.as_secs_f64(),
        tasd_bytes() as f64 / elapsed.as_secs_f64() / 1e6,
        out.stdout.trim()
    );
    result(&format!("tasd tas-echo client, {what}"), &Value::Null, &fwd);
}

// ---------------------------------------------------------------------------------------------
// Congestion control: tasd's DCTCP through a rate-limited, ECN-marking bottleneck
// ---------------------------------------------------------------------------------------------

/// Bottleneck rate of the congestion-control tests, Mbit/s.
const CC_RATE_MBIT: f64 = 200.0;
/// The marking threshold K of the congestion-control tests, frames: 40 frames (60 kB) is
/// 2.4 ms at 200 Mbit/s. The round trip through the user-space forwarder on the 2-core VM
/// jitters by milliseconds (`max_read_delay_us` 2-7 ms under load), and a window-based
/// sender leaves the link idle whenever the round trip grows by more than the queue covers;
/// K = 20 frames (1.2 ms) gave 85-90 % under load, K = 40 gave 80-95 % (docs/benchmarks.md).
const CC_K_FRAMES: u32 = 40;
/// Bytes each connection streams in the congestion-control tests (4 s at the full rate:
/// long enough that one scheduling stall of the VM is not a tenth of the run).
const CC_BYTES: u64 = 100_000_000;

/// tasd (DCTCP, its default) streams 100 MB to a kernel sink (`echo_server.py --discard`,
/// `tas-echo client --send-only`; sha256 compared) through a 200 Mbit/s bottleneck with a
/// 256-frame queue that marks CE above 40 frames: the goodput (TCP payload) reaches at
/// least 90 % of the bottleneck rate. The ceiling is 95.6 % (1448
/// payload bytes of every 1514 on the wire), so DCTCP may leave the link idle at most 5 %.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_dctcp_goodput_through_ecn_bottleneck() {
    tasd_cc_bottleneck(1, 0.9);
}

/// Two tasd DCTCP connections through the same bottleneck share it fairly: Jain's index
/// of their goodputs at least 0.95, and together at least half the rate (a floor against
/// collapse: 86-93 % at load 3-5 on 2026-11-22 with K = 40, but 62-79 % in runs where the
/// compiling machine held the forwarder off its CPU for 20-28 ms, `max_read_delay_us`).
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_dctcp_two_flows_share_ecn_bottleneck_fairly() {
    tasd_cc_bottleneck(2, 0.5);
}

/// `conns` DCTCP flows through the bottleneck; their total goodput must reach `share` of
/// the rate.
fn tasd_cc_bottleneck(conns: usize, share: f64) {
    let bed = Bed::up("tasd-cc");
    // The kernel in B answers ECN-setup SYNs (tcp_ecn=1 also asks for it on its own
    // connections; the default 2 would do for answering alone).
    bed.capture_ok(&["ip", "netns", "exec", &bed.ns_b, "sysctl", "-qw", "net.ipv4.tcp_ecn=1"]);
    let rate = format!("{}mbit", CC_RATE_MBIT as u64);
    let k = std::env::var("TAS_TEST_K").unwrap_or_else(|_| CC_K_FRAMES.to_string());
    bed.start_forwarder(&["--seed", "1", "--rate", &rate, "--queue", "256", "--ecn-threshold", &k]);
    // TAS_TEST_CC=ALGORITHM runs the same transfer under another algorithm (for
    // comparison by hand; the assertions are DCTCP's).
    match std::env::var("TAS_TEST_CC") {
        Ok(alg) => bed.start_tasd_cc(&alg),
        Err(_) => bed.start_tasd(),
    };
    // A sink, not an echo: only the measured direction loads the two CPUs (the echo's
    // return stream through the forwarder and tasd's receive path took as much again).
    let server = bed.start_kernel_server(&bed.ns_b.clone(), "kernel-sink-b", ECHO_PORT, &["--discard"]);
    let bytes = CC_BYTES.to_string();
    let n = conns.to_string();
    let started = Instant::now();
    let out = bed.run_a_tas_app(
        "tas-echo-client",
        &[
            "client",
            "--connect",
            &format!("{IP_B}:{ECHO_PORT}"),
            "--bytes",
            &bytes,
            "--send-only",
            "--conns",
            &n,
            "--timeout",
            "120",
        ],
        Duration::from_secs(180),
    );
    let elapsed = started.elapsed().as_secs_f64();
    out.assert_success();
    let closed = bed.wait_for_closed_connections(&server, conns, Duration::from_secs(30));
    let fwd = bed.stop_forwarder();
    // Every byte arrived intact: the client's sha256 of what it sent (one connection: its
    // digest; several: the digest of the per-connection digests in connection order).
    let sent_sha = hex_digests(&(out.stdout.clone() + &out.stderr));
    let got: Vec<String> = closed.iter().map(|c| c["sha256"].as_str().unwrap_or_default().to_string()).collect();
    let combined = |order: &[&String]| -> String {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for d in order {
            h.update((0..d.len() / 2).map(|i| u8::from_str_radix(&d[2 * i..2 * i + 2], 16).unwrap_or(0)).collect::<Vec<u8>>());
        }
        h.finalize().iter().map(|b| format!("{b:02x}")).collect()
    };
    let matches = match got.as_slice() {
        [one] => sent_sha.contains(one),
        [a, b] => sent_sha.contains(&combined(&[a, b])) || sent_sha.contains(&combined(&[b, a])),
        _ => false,
    };
    assert!(matches, "the sink's sha256 {got:?} do not match what tas-echo sent ({sent_sha:?})");
    let mut rates = Vec::new();
    for c in &closed {
        assert_eq!(c["bytes"], CC_BYTES, "kernel sink saw: {closed:?}");
        assert!(c["error"].is_null(), "kernel sink saw: {closed:?}");
        let secs = c["seconds"].as_f64().expect("seconds in the echo server's report");
        rates.push(CC_BYTES as f64 * 8.0 / secs / 1e6);
    }
    // Goodput of the tasd -> B direction as the receiver saw it: all bytes over the time
    // the last connection took (they start together).
    let longest = closed.iter().map(|c| c["seconds"].as_f64().unwrap_or(0.0)).fold(0.0, f64::max);
    let total = conns as f64 * CC_BYTES as f64 * 8.0 / longest / 1e6;
    let (s, q): (f64, f64) = (rates.iter().sum(), rates.iter().map(|r| r * r).sum());
    let jain = s * s / (rates.len() as f64 * q);
    let marked = num(&fwd["a2b"], "ce_marked");
    eprintln!(
        "impair-result: tasd DCTCP {conns} flow(s) through {rate} (queue 256, CE above {k}): {total:.1} Mbit/s \
         ({:.1} % of the rate), per flow {rates:.1?} Mbit/s, Jain {jain:.3}, CE marks a2b {marked}, {elapsed:.1} s in all",
        total / CC_RATE_MBIT * 100.0
    );
    assert!(marked > 0, "the bottleneck never marked: DCTCP was not tested: {fwd}");
    assert!(
        total >= share * CC_RATE_MBIT,
        "goodput {total:.1} Mbit/s is below {:.0} % of the {rate} bottleneck; forwarder: {fwd}",
        share * 100.0
    );
    if conns > 1 {
        assert!(jain >= 0.95, "Jain's index {jain:.3} < 0.95: rates {rates:.1?} Mbit/s");
    }
    result(&format!("tasd DCTCP {conns} flow(s) through {rate} + ECN"), &Value::Null, &fwd);
}

// ---------------------------------------------------------------------------------------------
// Checks and reporting
// ---------------------------------------------------------------------------------------------

fn num(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no counter {key:?} in {v}"))
}

/// `count` of `n` trials is within 5 standard deviations (plus 0.2 points) of `p`.
fn assert_near(what: &str, count: u64, n: u64, p: f64) {
    assert!(n > 0, "{what}: no trials");
    let measured = count as f64 / n as f64;
    let bound = 5.0 * (p * (1.0 - p) / n as f64).sqrt() + 0.002;
    assert!(
        (measured - p).abs() <= bound,
        "{what}: {count} of {n} = {:.4}, expected {p} +- {bound:.4}",
        measured
    );
}

/// One line per test for the report: what ran, the client's summary, the forwarder's counters.
fn result(what: &str, summary: &Value, fwd: &Value) {
    let brief = |d: &Value| {
        format!(
            "rx={} lost={} dup={} reord={} qdrop={} ce={} tx={} txerr={} sockdrop={}",
            d["rx_frames"],
            d["lost"],
            d["duplicated"],
            d["reordered"],
            d["queue_drops"],
            d["ce_marked"],
            d["tx_frames"],
            d["tx_errors"],
            d["rx_socket_drops"]
        )
    };
    let client = if summary.is_null() {
        String::new()
    } else {
        format!(
            " client: seconds={} gbit_per_s={};",
            summary["seconds"], summary["gbit_per_s"]
        )
    };
    eprintln!(
        "impair-result: {what};{client} forwarder {} s: a2b [{}] b2a [{}]",
        fwd["elapsed_s"],
        brief(&fwd["a2b"]),
        brief(&fwd["b2a"])
    );
}

// ---------------------------------------------------------------------------------------------
// TCP_INFO under loss: the shim's values against known quantities and the kernel's own
// ---------------------------------------------------------------------------------------------

/// Port of the conformance program's kernel peer in B (`conform peer`).
const INFO_PEER_PORT: u16 = 9400;
/// Bytes echoed in [`tcp_info_under_loss_is_real`].
const INFO_BYTES: u64 = 4_000_000;

/// `key=value` lines of `conform info` as numbers.
fn info_values(text: &str) -> std::collections::HashMap<String, u64> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .filter_map(|(k, v)| v.trim().parse::<u64>().ok().map(|v| (k.to_string(), v)))
        .collect()
}

/// `conform info` (tools/conformance/conform.c) echoes 4 MB through a kernel peer in B
/// across the forwarder with 2 % loss each way, once on the kernel's sockets and once under
/// the LD_PRELOAD shim on tasd, and prints TCP_INFO at the end and the peer's own (kernel)
/// TCP_INFO after the client's FIN. The shim's values must be real: retransmissions and
/// retransmitted bytes counted, the bytes sent once equal to what was written and to what
/// the kernel peer received, the recovery over (ca_state open, nothing unacknowledged, lost
/// or SACKed), min_rtt <= rtt, the last arrival recent, the peer's window positive and
/// within its largest receive buffer.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tcp_info_under_loss_is_real() {
    let bed = Bed::up("tcpinfo");
    let src = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("conformance/conform.c");
    let bin = bed.run_dir.join("conform");
    let out = Command::new("gcc").args(["-O2", "-Wall", "-o"]).arg(&bin).arg(&src).arg("-lpthread").output().expect("gcc");
    assert!(out.status.success(), "gcc failed:\n{}", String::from_utf8_lossy(&out.stderr));
    let bin = bin.to_str().expect("utf-8 path").to_string();
    bed.start_forwarder(&["--seed", "3", "--loss", "0.02"]);
    let port = INFO_PEER_PORT.to_string();
    let peer = bed.spawn(&bed.ns_b.clone(), "conform-peer", &[&bin, "peer", &port], &[]);
    sleep(Duration::from_millis(300));
    assert!(bed.exited(peer).is_none(), "the conformance peer exited");
    let bytes = INFO_BYTES.to_string();
    let cmd = [bin.as_str(), "info", IP_B, &port, &bytes];
    let kernel = bed.run(&bed.ns_a.clone(), "info-kernel", &cmd, Duration::from_secs(120));
    kernel.assert_success();
    let k = info_values(&kernel.stdout);
    bed.start_tasd();
    let lib = bed.paths.tasd.parent().expect("bin dir").join("libtas_preload.so");
    assert!(lib.is_file(), "{} not found: build it with `cargo build --release --workspace`", lib.display());
    let sock = bed.app_socket();
    let fail = std::path::PathBuf::from("fail");
    let env: [(&str, &std::path::Path); 3] = [("LD_PRELOAD", &lib), ("TAS_SOCKET", &sock), ("TAS_PRELOAD_FALLBACK", &fail)];
    let before = bed.kernel_tcp_counters_a();
    let shim = bed.run_env(&bed.ns_a.clone(), "info-shim", &cmd, &env, Duration::from_secs(120));
    shim.assert_success();
    bed.assert_kernel_a_did_no_tcp(&before);
    let s = info_values(&shim.stdout);
    let fwd = bed.stop_forwarder();
    let keys = [
        "ca_state", "total_retrans", "bytes_sent", "bytes_retrans", "total_rto", "total_rto_recoveries", "total_rto_time",
        "rtt", "min_rtt", "rto", "snd_cwnd", "snd_ssthresh", "snd_wnd", "rcv_wnd", "delivery_rate", "last_data_recv",
        "last_ack_recv", "max_ca_state", "max_lost", "max_sacked", "peer_bytes_received", "peer_rcv_wnd",
    ];
    for key in keys {
        eprintln!("tcp-info: {key:>22}  kernel {:>12}  shim {:>12}", k.get(key).copied().unwrap_or(0), s.get(key).copied().unwrap_or(0));
    }
    eprintln!("tcp-info: forwarder a2b lost {} b2a lost {}", fwd["a2b"]["lost"], fwd["b2a"]["lost"]);
    let v = |key: &str| *s.get(key).unwrap_or_else(|| panic!("no {key} in the shim's output:\n{}", shim.stdout));
    let written = v("written");
    // The transfer itself: every byte echoed, hash-checked.
    assert_eq!((v("echoed"), v("echo_hash_ok")), (INFO_BYTES, 1), "{}", shim.stdout);
    assert_eq!(v("len"), k["len"], "the kernel's struct length");
    assert_eq!(v("state"), 1, "ESTABLISHED");
    // Loss was seen and repaired.
    assert!(v("total_retrans") > 0 && v("bytes_retrans") > 0, "2 % loss: retransmissions counted\n{}", shim.stdout);
    assert_eq!(v("bytes_sent") - v("bytes_retrans"), written, "bytes sent once = bytes written (all acknowledged)");
    assert_eq!(v("bytes_acked"), written + 1, "bytes acknowledged (+ the SYN, as Linux)");
    assert_eq!(v("peer_bytes_received"), written + 1, "the kernel peer received every byte (+ our FIN)");
    assert!(v("bytes_retrans") < written / 4, "{}", shim.stdout);
    assert!(v("total_rto_recoveries") <= v("total_rto"), "{}", shim.stdout);
    assert_eq!(
        (v("ca_state"), v("unacked"), v("notsent_bytes"), v("lost"), v("sacked"), v("retrans"), v("backoff")),
        (0, 0, 0, 0, 0, 0, 0),
        "recovery over after the echo came back: {}",
        shim.stdout
    );
    // Times and windows.
    assert!(v("rtt") > 0 && v("rtt") < 1_000_000, "{}", shim.stdout);
    assert!(v("min_rtt") > 0 && v("min_rtt") <= v("rtt"), "{}", shim.stdout);
    assert!(v("rto") >= 200_000, "{}", shim.stdout);
    assert!(v("last_data_recv") < 1_000 && v("last_ack_recv") < 1_000, "just read: {}", shim.stdout);
    let rmem = bed.capture_ok(&["ip", "netns", "exec", &bed.ns_b, "cat", "/proc/sys/net/ipv4/tcp_rmem"]);
    let rmem_max: u64 = rmem.split_whitespace().nth(2).and_then(|x| x.parse().ok()).expect("tcp_rmem");
    assert!(v("snd_wnd") > 0 && v("snd_wnd") <= rmem_max, "the peer's window within its buffer {rmem_max}: {}", shim.stdout);
    assert!(v("rcv_wnd") > 0 && v("delivery_rate") > 0 && v("snd_cwnd") > 0, "{}", shim.stdout);
    // The kernel under the same loss counted retransmissions too (the comparison above).
    assert!(k["total_retrans"] > 0, "the kernel's run saw no loss?\n{}", kernel.stdout);
}

// ---------------------------------------------------------------------------------------------
// The test bed: three namespaces (common::Bed), the forwarder, tasd, peers
// ---------------------------------------------------------------------------------------------

/// The shared bed with a middle namespace, plus the forwarder running in it.
struct Bed {
    bed: common::Bed,
    forwarder: Mutex<Option<u32>>,
}

impl std::ops::Deref for Bed {
    type Target = common::Bed;
    fn deref(&self) -> &common::Bed {
        &self.bed
    }
}

impl Bed {
    fn up(test: &str) -> Bed {
        let bed = common::Bed::up_with_middle(&format!("impair-{test}"));
        assert!(
            bed.paths.tas_impair.is_file(),
            "{} not found: build it first with `cargo build --release --workspace` \
             (bash deploy/test.sh does), or point TAS_BIN_DIR at the binaries",
            bed.paths.tas_impair.display()
        );
        Bed { bed, forwarder: Mutex::new(None) }
    }

    fn ns_m(&self) -> &str {
        self.ns_m.as_deref().expect("a bed with a middle namespace")
    }

    /// Start tas-impair in M between fwd-a and fwd-b; returns once it forwards.
    fn start_forwarder(&self, args: &[&str]) {
        let bin = self.paths.tas_impair.to_str().expect("utf-8 path");
        // Periodic counters in its log: a failed test prints them, showing how traffic went.
        let mut cmd = vec![bin, "--a", IF_MA, "--b", IF_MB, "--stats-interval", "10s"];
        cmd.extend_from_slice(args);
        let pid = self.spawn(self.ns_m(), "tas-impair", &cmd, &[]);
        let err = self.run_dir.join("tas-impair.err");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if fs::read_to_string(&err)
                .unwrap_or_default()
                .contains("tas-impair: forwarding")
            {
                break;
            }
            if let Some(status) = self.exited(pid) {
                panic!(
                    "tas-impair exited ({status}) at start: {}",
                    fs::read_to_string(&err).unwrap_or_default()
                );
            }
            assert!(
                Instant::now() < deadline,
                "tas-impair did not start forwarding within 10 s"
            );
            sleep(Duration::from_millis(20));
        }
        *self.forwarder.lock().unwrap() = Some(pid);
    }

    /// SIGTERM the forwarder; returns its final counters.
    fn stop_forwarder(&self) -> Value {
        let pid = self
            .forwarder
            .lock()
            .unwrap()
            .take()
            .expect("the forwarder was started");
        let status = self
            .stop(pid, Duration::from_secs(5))
            .expect("tas-impair exits within 5 s of SIGTERM");
        assert!(
            status.success(),
            "tas-impair exited with {status} on SIGTERM"
        );
        let out = fs::read_to_string(self.run_dir.join("tas-impair.out")).unwrap_or_default();
        out.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find(|v| v["event"] == "final")
            .unwrap_or_else(|| panic!("tas-impair printed no final counters on SIGTERM:\n{out}"))
    }

    /// `start_tasd` with congestion control `alg` (a configuration file with
    /// `cc_algorithm`).
    fn start_tasd_cc(&self, alg: &str) -> u32 {
        let conf = self.run_dir.join("cc.toml");
        fs::write(&conf, format!("cc_algorithm = \"{alg}\"\n")).expect("write config");
        self.start_tasd_with(&["--config", conf.to_str().expect("utf-8 path")])
    }

    fn start_kernel_echo_server_a(&self) {
        let ns = self.ns_a.clone();
        self.start_kernel_echo_server(&ns, "kernel-echo-a", KERNEL_PORT);
    }

    /// stream_client in B against the kernel echo server in A; returns its summary.
    fn kernel_stream(&self, bytes: u64, timeout: Duration) -> Value {
        let bytes_s = bytes.to_string();
        let out = self.run_b_peer(
            "stream_client",
            &[
                "--connect",
                &format!("{IP_A}:{KERNEL_PORT}"),
                "--bytes",
                &bytes_s,
                "--conns",
                "1",
                "--seed",
                "5",
                "--timeout",
                "60",
            ],
            timeout,
        );
        let s = out.json_success();
        assert_eq!(s["bytes_received"], bytes, "{s}");
        assert_eq!(s["sha256_sent"], s["sha256_received"], "{s}");
        s
    }

    /// A counter of /proc/net/netstat (TcpExt, IpExt) or /proc/net/snmp inside `ns`.
    fn netstat(&self, ns: &str, proto: &str, field: &str) -> u64 {
        for file in ["/proc/net/netstat", "/proc/net/snmp"] {
            let table = self.capture_ok(&["ip", "netns", "exec", ns, "cat", file]);
            if let Some(v) = counter(&table, proto, field) {
                return v;
            }
        }
        panic!("no counter {proto} {field} in /proc/net/netstat or /proc/net/snmp of {ns}")
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // The stack's own view of the run (retransmissions, RTOs, SACK ranges, drops),
        // taken while tasd still runs (common::Bed ends the processes after this): the
        // forwarder's counters say what the network did, these say how the stack answered.
        let control = self.control_socket();
        if control.exists() && self.paths.tasctl.is_file() {
            match Command::new(&self.paths.tasctl)
                .arg("--socket")
                .arg(&control)
                .arg("stats")
                .output()
            {
                Ok(o) => eprintln!(
                    "---- tasctl stats at the end ----\n{}{}",
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                ),
                Err(e) => eprintln!("---- tasctl stats: cannot run: {e}"),
            }
        }
    }
}

// Unprivileged checks of the helpers.
#[test]
fn reads_netstat_counters() {
    let t = "TcpExt: SyncookiesSent TCPDeliveredCE\nTcpExt: 0 12\nIpExt: InNoECTPkts InCEPkts\nIpExt: 100 7\n";
    assert_eq!(counter(t, "IpExt", "InCEPkts"), Some(7));
    assert_eq!(counter(t, "TcpExt", "TCPDeliveredCE"), Some(12));
    assert_eq!(counter(t, "Tcp", "ActiveOpens"), None);
}

#[test]
fn binomial_bounds() {
    assert_near("exact", 500, 10_000, 0.05);
    let r = std::panic::catch_unwind(|| assert_near("far", 700, 10_000, 0.05));
    assert!(r.is_err());
}

