//! Real-network tests: `tasd` on one end of a veth pair, the Linux kernel's own TCP on the other.
//!
//! Each test builds its own sandbox (`deploy/sandbox.sh` with namespace names unique to this
//! process and test), starts `tasd` and `tas-echo` from the workspace's `target/release/` in
//! namespace A, drives the kernel-side peers of `tools/peers/` in namespace B, and checks every
//! byte. Everything it starts is ended by PID in a drop guard, and the sandbox is removed, also
//! when the test fails; on failure the logs of every process are printed.
//!
//! They need root (namespaces, veth, XDP) and the release binaries, so they are `#[ignore]`d:
//!
//! ```text
//! cargo build --release --workspace
//! sudo cargo test -p tas-tools --test veth -- --ignored --test-threads=1
//! ```
//!
//! (`bash deploy/test.sh` does both.) A test that cannot set up — not root, sandbox failure,
//! binaries missing, `tasd` not ready in time — fails and says what to do; it never passes
//! without having run. `TAS_BIN_DIR` overrides where `tasd` and `tas-echo` are taken from.
//!
//! What the tests rely on from the binaries (see docs/testing.md):
//! - `tasd` creates its app socket only once it serves, and exits 0 on SIGTERM after printing
//!   a line with `shutdown` and `flows=N` (N = connections it still holds, TIME_WAIT excluded)
//!   on stdout or stderr.
//! - `tas-echo server` echoes every byte and closes a connection once the client has closed
//!   its side and everything is echoed; `tas-echo client` exits non-zero on any mismatch.

mod common;

use std::thread::sleep;
use std::time::Duration;

use common::*;

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// A kernel client in B sends 100 MB to `tas-echo server` on the stack and gets all of it back.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn kernel_client_streams_100mb_through_tas_echo_server() {
    let bed = Bed::up("stream");
    bed.start_tasd();
    bed.start_tas_echo_server();
    let before = bed.kernel_tcp_counters_a();

    let s = bed.stream_through_echo_a(100_000_000, 1, 1, Duration::from_secs(300));
    eprintln!("stream 100 MB: {s}");

    bed.assert_kernel_a_did_no_tcp(&before);
}

/// `tas-echo client` on the stack sends 100 MB to a kernel echo server in B.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tas_echo_client_streams_100mb_to_kernel_echo_server() {
    let bed = Bed::up("client");
    bed.start_tasd();
    let server = bed.start_kernel_echo_server_b(ECHO_PORT);
    let before = bed.kernel_tcp_counters_a();

    let out = bed.run_a_tas_app(
        "tas-echo-client",
        &[
            "client",
            "--connect",
            &format!("{IP_B}:{ECHO_PORT}"),
            "--bytes",
            "100000000",
            "--conns",
            "1",
        ],
        Duration::from_secs(300),
    );
    out.assert_success();
    eprintln!("tas-echo client: {}", out.stdout.trim());

    // The server's own account of the connection: exactly one, exactly 10^8 bytes, no error.
    let closed = bed.wait_for_closed_connections(&server, 1, Duration::from_secs(10));
    assert_eq!(
        closed[0]["bytes"], 100_000_000u64,
        "kernel echo server saw: {closed:?}"
    );
    assert!(
        closed[0]["error"].is_null(),
        "kernel echo server saw: {closed:?}"
    );
    // tas-echo checks the echo itself (non-zero exit on mismatch); if its summary names a
    // sha256, it must be the one the kernel computed over the bytes that crossed the wire.
    let server_sha = closed[0]["sha256"].as_str().unwrap_or_default();
    match hex_digests(&format!("{}\n{}", out.stdout, out.stderr)).as_slice() {
        [] => eprintln!("note: tas-echo's summary shows no sha256; relying on its exit status"),
        shas => assert!(
            shas.iter().any(|h| h == server_sha),
            "tas-echo reported sha256 {shas:?}, the kernel echo server computed {server_sha}"
        ),
    }

    bed.assert_kernel_a_did_no_tcp(&before);
}

/// 200 kernel connections at once, each doing 100 request/responses with `tas-echo server`.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn kernel_rpc_200_connections_through_tas_echo_server() {
    let bed = Bed::up("rpc");
    bed.start_tasd();
    bed.start_tas_echo_server();
    let before = bed.kernel_tcp_counters_a();

    let out = bed.run_b_peer(
        "rpc_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--conns",
            "200",
            "--rpcs",
            "100",
            "--size",
            "100",
        ],
        Duration::from_secs(300),
    );
    let s = out.json_success();
    assert_eq!(s["rpcs_done"], 200 * 100, "{s}");
    eprintln!("rpc 200x100: {s}");

    bed.assert_kernel_a_did_no_tcp(&before);
}

/// The kernel keeps the interface: ARP, ICMP and other ports still reach it while tasd runs;
/// and after the clients are done, tasd holds no flows when it shuts down.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn kernel_coexists_and_no_flows_are_left() {
    let bed = Bed::up("coexist");
    bed.start_tasd();
    bed.start_tas_echo_server();

    let link = bed.capture_ok(&[
        "ip", "netns", "exec", &bed.ns_a, "ip", "-d", "link", "show", "dev", IF_A,
    ]);
    assert!(
        link.contains("prog/xdp"),
        "no XDP program is attached to {IF_A} while tasd runs:\n{link}"
    );

    // ICMP: answered by the kernel of A.
    let icmp_before = bed.snmp_a("Icmp", "OutEchoReps");
    bed.run(
        &bed.ns_b,
        "ping",
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", IP_A],
        Duration::from_secs(15),
    )
    .assert_success();
    let replies = bed.snmp_a("Icmp", "OutEchoReps") - icmp_before;
    assert!(
        replies >= 3,
        "ping was answered, but not by the kernel of A ({replies} echo replies counted there)"
    );

    // ARP: B learned A's MAC from the kernel's ARP reply.
    let mac_a = bed.mac(&bed.ns_a, IF_A);
    let neigh = bed.capture_ok(&["ip", "-n", &bed.ns_b, "neigh", "show", IP_A]);
    assert!(
        neigh.contains(&mac_a),
        "B has no ARP entry for {IP_A} with A's MAC {mac_a}: {neigh:?}"
    );

    // A port nobody owns: the kernel refuses it (RST), tasd does not swallow it.
    bed.run_b_peer(
        "tcp_probe",
        &["--connect", &format!("{IP_A}:9"), "--expect", "refused"],
        Duration::from_secs(10),
    )
    .json_success();

    // A kernel service on another port keeps working beside tasd (think sshd).
    let before = bed.kernel_tcp_counters_a();
    bed.start_kernel_echo_server(&bed.ns_a.clone(), "kernel-echo-a", 8);
    bed.run_b_peer(
        "stream_client",
        &[
            "--connect",
            &format!("{IP_A}:8"),
            "--bytes",
            "1000000",
            "--conns",
            "2",
            "--seed",
            "3",
        ],
        Duration::from_secs(60),
    )
    .json_success();
    let after = bed.kernel_tcp_counters_a();
    assert_eq!(
        after.passive_opens - before.passive_opens,
        2,
        "the kernel of A should have accepted both connections to port 8"
    );

    // Traffic through tasd, closed by the kernel clients; then tasd must hold no flows.
    let before = bed.kernel_tcp_counters_a();
    bed.run_b_peer(
        "stream_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--bytes",
            "10000000",
            "--conns",
            "4",
            "--seed",
            "2",
        ],
        Duration::from_secs(120),
    )
    .json_success();
    bed.run_b_peer(
        "rpc_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--conns",
            "20",
            "--rpcs",
            "50",
            "--size",
            "1000",
        ],
        Duration::from_secs(120),
    )
    .json_success();
    bed.assert_kernel_a_did_no_tcp(&before);

    // Every client saw the server's FIN; the last ACK of each close reaches tasd within
    // microseconds on a veth. A second is plenty.
    sleep(Duration::from_secs(1));
    let (status, log) = bed.stop_tasd(Duration::from_secs(10));
    assert!(
        status.success(),
        "tasd did not exit cleanly on SIGTERM: {status}"
    );
    match shutdown_flows(&log) {
        Some(0) => {}
        Some(n) => panic!("tasd still held {n} flows at shutdown after every client had closed"),
        None => panic!(
            "tasd printed no shutdown line with flows=N on SIGTERM; this test needs one \
             (e.g. `shutdown: flows=0 listeners=1 apps=1`, see docs/testing.md)"
        ),
    }
}

// The parsers above run without privileges, so they are tested like any other code.
#[test]
fn parses_shutdown_flows() {
    assert_eq!(
        shutdown_flows("x\nINFO tasd: shutdown: flows=0 listeners=1 apps=1\n"),
        Some(0)
    );
    assert_eq!(
        shutdown_flows("\u{1b}[2mts\u{1b}[0m INFO shutdown \u{1b}[3mflows\u{1b}[0m=3"),
        Some(3)
    );
    assert_eq!(
        shutdown_flows("INFO shutdown flows=3, listeners=0"),
        Some(3)
    );
    assert_eq!(shutdown_flows("flows=2\nready"), None);
}

#[test]
fn reads_snmp_counters() {
    let snmp = "Icmp: InMsgs OutEchoReps\nIcmp: 5 3\nTcp: RtoAlgorithm ActiveOpens PassiveOpens\nTcp: 1 7 9\n";
    assert_eq!(snmp_counter(snmp, "Tcp", "PassiveOpens"), 9);
    assert_eq!(snmp_counter(snmp, "Icmp", "OutEchoReps"), 3);
}

#[test]
fn finds_hex_digests() {
    let sha = "b30638dc7198e17913f4bd738acd38c578c4e7d3bd384658ef994d2d6fcccd17";
    assert_eq!(
        hex_digests(&format!("ok bytes=10 sha256={sha} t=1")),
        vec![sha.to_string()]
    );
    assert!(hex_digests("no digest 1234").is_empty());
}
