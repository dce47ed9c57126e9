//! AF_XDP against the real kernel: two network namespaces joined by a veth pair, the XDP
//! program and an AF_XDP socket on one end (A), the Linux kernel's own stack on the other
//! (B).
//!
//! Needs root (CAP_SYS_ADMIN for namespaces, CAP_BPF + CAP_NET_ADMIN for XDP), iproute2,
//! ethtool and python3: `sudo cargo test -p tas-fastpath --test af_xdp_veth -- --ignored`.
//! A setup that fails makes the test fail; it never skips. Namespaces are named
//! `tasx-*`, addresses are 10.99.x.0/24, and both are removed on drop (also on failure),
//! and removed first if a killed earlier run left them behind.
//!
//! Rates (not a test): `TAS_AFXDP_MEASURE=1 cargo test --release -p tas-fastpath --test
//! af_xdp_veth -- --ignored --nocapture measure_`.
#![cfg(feature = "af-xdp")]

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use tas_fastpath::io::af_xdp::{AfXdpError, BindMode, XdpConfig, XdpMode, XdpProgram, XskSocket};
use tas_fastpath::io::{PacketIo, RxFrame};

const PYTHON: &str = "/usr/bin/python3";
const OWNED_PORT: u16 = 7777;
const OTHER_PORT: u16 = 7778;

// ---------------------------------------------------------------------------------------
// The sandbox

/// Two namespaces `tasx-a<tag>` and `tasx-b<tag>` joined by veth `txa<tag>`/`txb<tag>`,
/// with 10.99.<tag>.1 on A and 10.99.<tag>.2 on B. Removed on drop.
struct Sandbox {
    ns_a: String,
    ns_b: String,
    if_a: String,
    if_b: String,
    ip_a: Ipv4Addr,
    ip_b: Ipv4Addr,
}

impl Sandbox {
    fn new(tag: u8) -> Sandbox {
        let sb = Sandbox {
            ns_a: format!("tasx-a{tag}"),
            ns_b: format!("tasx-b{tag}"),
            if_a: format!("txa{tag}"),
            if_b: format!("txb{tag}"),
            ip_a: Ipv4Addr::new(10, 99, tag, 1),
            ip_b: Ipv4Addr::new(10, 99, tag, 2),
        };
        sb.remove();
        let (a, b) = (sb.ns_a.as_str(), sb.ns_b.as_str());
        run(&["ip", "netns", "add", a]);
        run(&["ip", "netns", "add", b]);
        run(&[
            "ip", "-n", a, "link", "add", &sb.if_a, "type", "veth", "peer", "name", &sb.if_b,
            "netns", b,
        ]);
        for (ns, ifname, ip) in [(a, &sb.if_a, sb.ip_a), (b, &sb.if_b, sb.ip_b)] {
            run(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("{ip}/24"),
                "dev",
                ifname,
            ]);
            run(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            run(&["ip", "-n", ns, "link", "set", ifname, "up"]);
        }
        // B's kernel must put full checksums into the frames A's socket receives: with
        // transmit offload on, veth hands over partial ones.
        run(&[
            "ip", "netns", "exec", b, "ethtool", "-K", &sb.if_b, "tx", "off",
        ]);
        sb
    }

    fn remove(&self) {
        for ns in [&self.ns_a, &self.ns_b] {
            let _ = Command::new("ip")
                .args(["netns", "del", ns])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// A command run in namespace B.
    fn in_b(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns_b]).args(args);
        c
    }

    /// The MAC address of `ifname` in `ns`.
    fn mac(&self, ns: &str, ifname: &str) -> [u8; 6] {
        let out = run(&["ip", "-n", ns, "-o", "link", "show", "dev", ifname]);
        let text = String::from_utf8_lossy(&out.stdout);
        let word = text
            .split_whitespace()
            .skip_while(|w| *w != "link/ether")
            .nth(1)
            .unwrap_or_else(|| panic!("no link/ether in: {text}"));
        let mut mac = [0u8; 6];
        for (m, h) in mac.iter_mut().zip(word.split(':')) {
            *m = u8::from_str_radix(h, 16).unwrap();
        }
        mac
    }

    /// Whether an XDP program is attached to A's veth.
    fn xdp_attached(&self) -> bool {
        let out = run(&["ip", "-n", &self.ns_a, "link", "show", "dev", &self.if_a]);
        String::from_utf8_lossy(&out.stdout).contains("xdp")
    }

    fn config(&self) -> XdpConfig {
        XdpConfig {
            frames: 256,
            ring_size: 128,
            ..XdpConfig::new(self.if_a.clone())
        }
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.remove();
    }
}

/// Run a command to completion; panic with its output if it fails.
fn run(args: &[&str]) -> Output {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("cannot run {args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Run `f` on a thread that has entered network namespace `ns` (namespaces are per
/// thread); a panic in it is re-raised here.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let path = format!("/run/netns/{ns}");
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            let file = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: setns only changes this thread's network namespace; the fd is valid.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
            f()
        });
        h.join().unwrap_or_else(|p| std::panic::resume_unwind(p))
    })
}

/// A python3 TCP client in B: connect from `src:sport` to `dst:dport`, print
/// connected/timeout/refused.
fn tcp_connect(sb: &Sandbox, sport: u16, dport: u16, timeout: f32) -> Child {
    tcp_connect_with(sb, sport, dport, timeout, "")
}

/// [`tcp_connect`] with extra python statements run on the socket `s` before connecting.
fn tcp_connect_with(sb: &Sandbox, sport: u16, dport: u16, timeout: f32, setup: &str) -> Child {
    let script = format!(
        "import socket\n\
         s = socket.socket()\n\
         s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         {setup}\n\
         s.bind(('{}', {sport}))\n\
         s.settimeout({timeout})\n\
         try:\n    s.connect(('{}', {dport})); print('connected')\n\
         except socket.timeout: print('timeout')\n\
         except ConnectionRefusedError: print('refused')\n",
        sb.ip_b, sb.ip_a
    );
    sb.in_b(&[PYTHON, "-c", &script])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start python3 in B")
}

fn output_of(child: Child) -> String {
    let out = child.wait_with_output().expect("wait for child");
    assert!(out.status.success(), "child failed: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

// ---------------------------------------------------------------------------------------
// Frames

/// The fields of an Ethernet/IPv4/TCP frame the tests look at.
#[derive(Debug, Clone, PartialEq, Eq)]
struct TcpSeen {
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    flags: u8,
    /// IPv4 header length in bytes (20 without options).
    ip_header_len: usize,
    checksums_ok: bool,
}

fn parse_tcp(f: &[u8]) -> Option<TcpSeen> {
    if f.len() < 14 + 20 || f[12..14] != [0x08, 0x00] || f[14] >> 4 != 4 || f[23] != 6 {
        return None;
    }
    let ihl = usize::from(f[14] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let t = 14 + ihl;
    if f.len() < t + 20 || f.len() < 14 + total {
        return None;
    }
    let ip = &f[14..14 + ihl];
    let seg = &f[t..14 + total];
    let ip_ok = checksum(&[ip]) == 0;
    let pseudo = pseudo_header(&f[26..30], &f[30..34], 6, seg.len());
    let tcp_ok = checksum(&[&pseudo, seg]) == 0;
    Some(TcpSeen {
        eth_dst: f[0..6].try_into().unwrap(),
        eth_src: f[6..12].try_into().unwrap(),
        src: Ipv4Addr::new(f[26], f[27], f[28], f[29]),
        dst: Ipv4Addr::new(f[30], f[31], f[32], f[33]),
        sport: u16::from_be_bytes([f[t], f[t + 1]]),
        dport: u16::from_be_bytes([f[t + 2], f[t + 3]]),
        flags: f[t + 13],
        ip_header_len: ihl,
        checksums_ok: ip_ok && tcp_ok,
    })
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts` (each even-length
/// except possibly the last).
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum = 0u32;
    for part in parts {
        let mut chunks = part.chunks_exact(2);
        for c in &mut chunks {
            sum += u32::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            sum += u32::from(*last) << 8;
        }
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

fn pseudo_header(src: &[u8], dst: &[u8], proto: u8, len: usize) -> [u8; 12] {
    let mut p = [0u8; 12];
    p[0..4].copy_from_slice(src);
    p[4..8].copy_from_slice(dst);
    p[9] = proto;
    p[10..12].copy_from_slice(&(len as u16).to_be_bytes());
    p
}

/// Write an Ethernet + IPv4 + UDP frame with full checksums into `buf`; returns its length.
#[allow(clippy::too_many_arguments)]
fn emit_udp(
    buf: &mut [u8],
    eth_dst: [u8; 6],
    eth_src: [u8; 6],
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: u16,
    dport: u16,
    payload: &[u8],
) -> usize {
    let udp_len = 8 + payload.len();
    let ip_len = 20 + udp_len;
    let len = 14 + ip_len;
    let f = &mut buf[..len];
    f[0..6].copy_from_slice(&eth_dst);
    f[6..12].copy_from_slice(&eth_src);
    f[12..14].copy_from_slice(&[0x08, 0x00]);
    let ip = &mut f[14..34];
    ip.copy_from_slice(&[
        0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 17, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ]);
    ip[2..4].copy_from_slice(&(ip_len as u16).to_be_bytes());
    ip[12..16].copy_from_slice(&src.octets());
    ip[16..20].copy_from_slice(&dst.octets());
    let c = checksum(&[ip]);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    let udp = &mut f[34..];
    udp[0..2].copy_from_slice(&sport.to_be_bytes());
    udp[2..4].copy_from_slice(&dport.to_be_bytes());
    udp[4..6].copy_from_slice(&(udp_len as u16).to_be_bytes());
    udp[6..8].copy_from_slice(&[0, 0]);
    udp[8..].copy_from_slice(payload);
    let pseudo = pseudo_header(&src.octets(), &dst.octets(), 17, udp_len);
    let c = match checksum(&[&pseudo, udp]) {
        0 => 0xffff, // RFC 768: a computed zero is sent as all ones
        c => c,
    };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
    len
}

/// Receive for up to `limit`, or until `done` says enough; returns copies of the frames.
/// Every received frame is released again.
/// Whether any received frame is TCP from source port `sport`.
fn has_sport(frames: &[Vec<u8>], sport: u16) -> bool {
    frames
        .iter()
        .filter_map(|f| parse_tcp(f))
        .any(|t| t.sport == sport)
}

fn receive(
    sock: &mut XskSocket,
    limit: Duration,
    mut done: impl FnMut(&[Vec<u8>]) -> bool,
) -> Vec<Vec<u8>> {
    let deadline = Instant::now() + limit;
    let mut got = Vec::new();
    let mut burst = [RxFrame::default(); 32];
    while Instant::now() < deadline && !done(&got) {
        let n = sock.rx_burst(&mut burst);
        for f in &burst[..n] {
            let data = sock.rx_data(f);
            assert_eq!(
                data.len(),
                f.len as usize,
                "rx_data must return exactly the frame"
            );
            got.push(data.to_vec());
        }
        sock.rx_release(&burst[..n]);
        if n == 0 {
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    got
}

// ---------------------------------------------------------------------------------------
// Tests

/// The whole path on one veth pair: owned TCP to the socket, everything else to the
/// kernel, and a hand-built frame out through the socket into B's kernel.
#[test]
#[ignore = "needs root and veth: cargo test -- --ignored"]
fn veth_redirects_owned_tcp_passes_the_rest_and_transmits() {
    let sb = Sandbox::new(1);
    let mac_a = sb.mac(&sb.ns_a, &sb.if_a);
    let mac_b = sb.mac(&sb.ns_b, &sb.if_b);
    in_netns(&sb.ns_a, || {
        let prog =
            XdpProgram::load(&sb.if_a, XdpMode::Auto, sb.ip_a).expect("load the XDP program");
        assert_eq!(prog.attached_mode(), XdpMode::Native, "veth has native XDP");
        assert!(
            sb.xdp_attached(),
            "ip link shows no xdp program on {}",
            sb.if_a
        );
        prog.own_port(OWNED_PORT).unwrap();
        assert!(prog.owns_port(OWNED_PORT).unwrap());
        assert!(!prog.owns_port(OTHER_PORT).unwrap());
        let mut sock = XskSocket::open(&sb.config(), 0).expect("open the AF_XDP socket");
        assert_eq!(
            sock.bound_mode(),
            BindMode::Copy,
            "veth has no zero-copy: auto falls back to copy"
        );
        prog.register(&sock).unwrap();
        let census = sock.census();
        assert!(census.is_balanced());
        assert_eq!(
            (census.rx_kernel, census.tx_free, census.total),
            (128, 128, 256)
        );

        // (b) ICMP and ARP pass to A's kernel, which answers.
        let ping = sb
            .in_b(&[
                "ping",
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "2",
                &sb.ip_a.to_string(),
            ])
            .output()
            .unwrap();
        assert!(ping.status.success(), "ping from B to A failed: {ping:?}");
        let neigh = run(&["ip", "-n", &sb.ns_b, "neigh", "show", &sb.ip_a.to_string()]);
        let neigh = String::from_utf8_lossy(&neigh.stdout).to_lowercase();
        let mac_a_text = mac_a
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect::<Vec<_>>()
            .join(":");
        assert!(
            neigh.contains(&mac_a_text),
            "B did not learn A's MAC by ARP: {neigh}"
        );

        // (a) SYNs to the owned port reach the socket, and A's kernel never sees them, so
        // the client times out instead of being refused.
        let client = tcp_connect(&sb, 40001, OWNED_PORT, 1.5);
        let frames = receive(&mut sock, Duration::from_secs(5), |got| !got.is_empty());
        let syns: Vec<TcpSeen> = frames.iter().filter_map(|f| parse_tcp(f)).collect();
        assert!(
            !syns.is_empty(),
            "no SYN arrived on the socket; XDP stats {:?}, socket stats {:?}",
            prog.stats(),
            sock.stats()
        );
        for syn in &syns {
            assert_eq!(
                (syn.src, syn.sport, syn.dst, syn.dport),
                (sb.ip_b, 40001, sb.ip_a, OWNED_PORT),
                "wrong 4-tuple: {syn:?}"
            );
            assert_eq!(syn.flags & 0x02, 0x02, "not a SYN: {syn:?}");
            assert_eq!((syn.eth_dst, syn.eth_src), (mac_a, mac_b));
            assert!(
                syn.checksums_ok,
                "the SYN's checksums are not complete: {syn:?}"
            );
        }
        assert_eq!(
            output_of(client),
            "timeout",
            "A's kernel must not have seen the SYN"
        );
        // Retransmitted SYNs arrived while the client waited: drain them.
        let _ = receive(&mut sock, Duration::from_millis(200), |_| false);

        // IPv4 options move the TCP header: the program must follow IHL. Four option
        // bytes (NOP, NOP, NOP, EOL) make a 24-byte IP header.
        let options = "s.setsockopt(socket.IPPROTO_IP, socket.IP_OPTIONS, bytes([1, 1, 1, 0]))";
        let client = tcp_connect_with(&sb, 40004, OWNED_PORT, 1.0, options);
        let frames = receive(&mut sock, Duration::from_secs(5), |got| {
            has_sport(got, 40004)
        });
        let syn = frames
            .iter()
            .filter_map(|f| parse_tcp(f))
            .find(|t| t.sport == 40004)
            .expect("a SYN with IP options");
        assert_eq!(
            (syn.ip_header_len, syn.sport, syn.dport),
            (24, 40004, OWNED_PORT),
            "{syn:?}"
        );
        assert!(syn.checksums_ok, "{syn:?}");
        assert_eq!(output_of(client), "timeout");
        let _ = receive(&mut sock, Duration::from_millis(200), |_| false);
        let client = tcp_connect_with(&sb, 40005, OTHER_PORT, 3.0, options);
        assert_eq!(
            output_of(client),
            "refused",
            "IP options to a port not owned"
        );
        let stray: Vec<_> = receive(&mut sock, Duration::from_millis(100), |_| false)
            .iter()
            .filter_map(|f| parse_tcp(f))
            .filter(|t| t.dport == OTHER_PORT)
            .collect();
        assert!(stray.is_empty(), "{stray:?}");

        // (c) Another port is the kernel's: refused (RST), nothing on the socket.
        let client = tcp_connect(&sb, 40002, OTHER_PORT, 3.0);
        let frames = receive(&mut sock, Duration::from_millis(500), |_| false);
        assert_eq!(output_of(client), "refused");
        let frames_after = receive(&mut sock, Duration::from_millis(100), |_| false);
        let stray: Vec<_> = frames
            .iter()
            .chain(&frames_after)
            .filter_map(|f| parse_tcp(f))
            .filter(|t| t.dport == OTHER_PORT)
            .collect();
        assert!(
            stray.is_empty(),
            "segments to a port not owned reached the socket: {stray:?}"
        );

        // Releasing the port gives it back to the kernel.
        prog.release_port(OWNED_PORT).unwrap();
        let client = tcp_connect(&sb, 40003, OWNED_PORT, 3.0);
        assert_eq!(
            output_of(client),
            "refused",
            "a released port must go to the kernel"
        );
        prog.own_port(OWNED_PORT).unwrap();

        let xdp = prog.stats();
        assert!(xdp.redirected >= syns.len() as u64, "{xdp:?}");
        assert!(
            xdp.passed >= 4,
            "ARP, ICMP and the refused SYNs pass: {xdp:?}"
        );
        assert_eq!(xdp.no_socket, 0, "{xdp:?}");

        // (d) A frame built by hand leaves through the socket and reaches B's kernel.
        let mut receiver = sb
            .in_b(&[
                PYTHON,
                "-c",
                &format!(
                    "import socket\n\
                     s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n\
                     s.bind(('{}', 9999)); s.settimeout(5)\n\
                     print('ready', flush=True)\n\
                     d, a = s.recvfrom(4096)\n\
                     print(d.hex(), a[0], a[1], flush=True)\n",
                    sb.ip_b
                ),
            ])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(receiver.stdout.take().expect("receiver stdout")).lines();
        assert_eq!(lines.next().expect("receiver started").unwrap(), "ready");
        let payload: Vec<u8> = (0..200u32).map(|i| (i * 7 + 3) as u8).collect();
        let frame = sock.tx_alloc().expect("a tx frame");
        let buf = sock.tx_data(&frame);
        assert!(buf.len() >= tas_fastpath::io::MAX_FRAME);
        let len = emit_udp(buf, mac_b, mac_a, sb.ip_a, sb.ip_b, 5555, 9999, &payload);
        sock.tx_submit(frame, len);
        assert_eq!(sock.census().tx_in_flight, 1);
        sock.tx_flush().expect("tx_flush");
        let got = lines.next().expect("the datagram arrived in B").unwrap();
        let expected = format!(
            "{} {} 5555",
            payload
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect::<String>(),
            sb.ip_a
        );
        assert_eq!(got, expected);
        assert!(receiver.wait().unwrap().success());

        // The frame comes back through the completion ring.
        let deadline = Instant::now() + Duration::from_secs(2);
        while sock.census().tx_in_flight > 0 && Instant::now() < deadline {
            sock.tx_flush().unwrap();
            std::thread::sleep(Duration::from_millis(1));
        }
        let census = sock.census();
        assert!(census.is_balanced());
        assert_eq!(
            (
                census.rx_kernel,
                census.rx_held,
                census.tx_free,
                census.tx_in_flight
            ),
            (128, 0, 128, 0),
            "{census:?}"
        );

        // tx_alloc hands out every tx frame, and tx_abort takes them back.
        let all: Vec<_> = std::iter::from_fn(|| sock.tx_alloc()).collect();
        assert_eq!(all.len(), 128);
        assert_eq!(sock.census().tx_user, 128);
        for f in all {
            sock.tx_abort(f);
        }
        assert_eq!(sock.census().tx_free, 128);

        let stats = sock.stats();
        assert!(stats.rx_frames >= syns.len() as u64, "{stats:?}");
        assert_eq!(
            (stats.tx_frames, stats.tx_completed, stats.tx_rejected),
            (1, 1, 0),
            "{stats:?}"
        );
        assert!(stats.tx_kicks >= 1, "{stats:?}");
        assert_eq!(
            (stats.rx_invalid_descs, stats.tx_invalid_descs),
            (0, 0),
            "{stats:?}"
        );
        assert_eq!(sock.poll_fds(), vec![sock.fd()]);

        drop(sock);
        drop(prog);
        assert!(!sb.xdp_attached(), "dropping XdpProgram must detach it");
    });
}

/// Generic (SKB) mode on request, and the errors a real kernel gives for impossible
/// requests.
#[test]
#[ignore = "needs root and veth: cargo test -- --ignored"]
fn veth_generic_mode_and_setup_errors() {
    let sb = Sandbox::new(2);
    in_netns(&sb.ns_a, || {
        let prog =
            XdpProgram::load(&sb.if_a, XdpMode::Generic, sb.ip_a).expect("load in generic mode");
        assert_eq!(prog.attached_mode(), XdpMode::Generic);
        let out = run(&["ip", "-n", &sb.ns_a, "link", "show", "dev", &sb.if_a]);
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("xdpgeneric"),
            "{out:?}"
        );

        // A second program on the same interface is refused with advice.
        match XdpProgram::load(&sb.if_a, XdpMode::Generic, sb.ip_a) {
            Err(e @ AfXdpError::XdpBusy { .. }) => {
                assert!(e.to_string().contains("xdp off"), "{e}")
            }
            other => panic!("expected XdpBusy, got {other:?}"),
        }
        // veth has no zero-copy.
        let zc = XdpConfig {
            bind: BindMode::ZeroCopy,
            ..sb.config()
        };
        match XskSocket::open(&zc, 0) {
            Err(e @ AfXdpError::ZeroCopyUnsupported { .. }) => {
                assert!(e.to_string().contains("copy"), "{e}")
            }
            other => panic!("expected ZeroCopyUnsupported, got {other:?}"),
        }
        // veth has one queue.
        match XskSocket::open(&sb.config(), 1) {
            Err(AfXdpError::QueueNotFound { queue: 1, .. }) => {}
            other => panic!("expected QueueNotFound, got {other:?}"),
        }
        assert!(matches!(
            prog.register_socket(64, 0),
            Err(AfXdpError::QueueOutOfRange { .. })
        ));
        assert!(matches!(
            XdpProgram::load("tasx-none0", XdpMode::Auto, sb.ip_a),
            Err(AfXdpError::InterfaceNotFound { .. })
        ));

        // An owned port without a registered socket falls back to the kernel.
        prog.own_port(OWNED_PORT).unwrap();
        let client = tcp_connect(&sb, 40010, OWNED_PORT, 3.0);
        assert_eq!(output_of(client), "refused");
        assert!(prog.stats().no_socket >= 1, "{:?}", prog.stats());

        let mut sock = XskSocket::open(
            &XdpConfig {
                bind: BindMode::Copy,
                busy_poll: true,
                ..sb.config()
            },
            0,
        )
        .unwrap();
        prog.register_socket(0, sock.fd()).unwrap();
        // A second socket on the same queue is refused.
        match XskSocket::open(&sb.config(), 0) {
            Err(AfXdpError::QueueBusy { .. }) => {}
            other => panic!("expected QueueBusy, got {other:?}"),
        }
        let client = tcp_connect(&sb, 40011, OWNED_PORT, 1.0);
        let frames = receive(&mut sock, Duration::from_secs(5), |got| {
            has_sport(got, 40011)
        });
        let syn = frames
            .iter()
            .filter_map(|f| parse_tcp(f))
            .find(|t| t.sport == 40011)
            .expect("a SYN in generic mode");
        assert_eq!((syn.sport, syn.dport), (40011, OWNED_PORT));
        assert!(syn.checksums_ok);
        assert_eq!(output_of(client), "timeout");
        assert!(sock.census().is_balanced());
        assert!(
            sock.stats().rx_wakeups > 0,
            "busy polling drives the device from rx_burst"
        );

        // Unregistering sends the port's traffic back to the kernel.
        prog.unregister_socket(0).unwrap();
        let client = tcp_connect(&sb, 40012, OWNED_PORT, 3.0);
        assert_eq!(output_of(client), "refused");
        prog.register(&sock).unwrap();

        // So does another service address.
        prog.set_service_ip(Ipv4Addr::new(10, 99, 2, 77)).unwrap();
        let client = tcp_connect(&sb, 40013, OWNED_PORT, 3.0);
        assert_eq!(output_of(client), "refused");
        prog.set_service_ip(sb.ip_a).unwrap();
        let client = tcp_connect(&sb, 40014, OWNED_PORT, 1.0);
        // Wait for this client's SYN specifically: the kernel may still retransmit
        // 40011's SYN (its timer fires at 1 s, when that client gives up), and that
        // late frame can sit in the ring ahead of 40014's.
        let frames = receive(&mut sock, Duration::from_secs(5), |got| {
            has_sport(got, 40014)
        });
        assert!(
            has_sport(&frames, 40014),
            "no SYN from 40014 in {} frames",
            frames.len()
        );
        assert_eq!(output_of(client), "timeout");
    });
}

/// Without privileges the errors say what to do. Runs a copy of this test binary as
/// `nobody` (setpriv, from util-linux).
#[test]
#[ignore = "needs root and veth: cargo test -- --ignored"]
fn unprivileged_setup_errors_say_what_to_do() {
    let exe = std::env::current_exe().unwrap();
    // A copy in /tmp, so `nobody` can run it wherever the build tree lies.
    let copy = std::env::temp_dir().join(format!("tasx-unpriv-{}", std::process::id()));
    std::fs::copy(&exe, &copy).unwrap();
    // Another test thread that forks while the copy's write fd is open makes the exec
    // fail with ETXTBSY until that child has exec'd: retry.
    let mut attempts = 0;
    let out = loop {
        let out = Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "--inh-caps=-all",
            ])
            .arg(&copy)
            .args([
                "--exact",
                "helper_unprivileged_setup",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("TAS_AFXDP_HELPER_UNPRIV", "1")
            .output();
        attempts += 1;
        match out {
            Ok(o)
                if String::from_utf8_lossy(&o.stderr).contains("Text file busy")
                    && attempts < 50 =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other,
        }
    };
    let _ = std::fs::remove_file(&copy);
    let out = out.expect("run setpriv");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "helper failed: {out:?}");
    assert!(
        text.contains("LOAD: permission denied loading the XDP program: run tasd as root or with CAP_BPF+CAP_NET_ADMIN"),
        "{text}"
    );
    assert!(
        text.contains("SOCKET: permission denied creating an AF_XDP socket: run tasd as root"),
        "{text}"
    );
}

/// The helper of `unprivileged_setup_errors_say_what_to_do`; does nothing unless started
/// by it.
#[test]
#[ignore = "needs root and veth: cargo test -- --ignored"]
fn helper_unprivileged_setup() {
    if std::env::var_os("TAS_AFXDP_HELPER_UNPRIV").is_none() {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_ne!(euid, 0, "the helper must run unprivileged");
    let load = XdpProgram::load("lo", XdpMode::Generic, Ipv4Addr::LOCALHOST).unwrap_err();
    println!("\nLOAD: {load}");
    let socket = XskSocket::open(&XdpConfig::new("lo"), 0).unwrap_err();
    println!("SOCKET: {socket}");
}

/// The helper the SIGKILL test runs in a child process: attach, say so, wait to be killed.
/// Does nothing unless started by that test.
#[test]
#[ignore = "needs root and veth: cargo test -- --ignored"]
fn helper_attach_and_wait_for_sigkill() {
    let (Ok(ifname), Ok(ip)) = (
        std::env::var("TAS_AFXDP_HELPER_IF"),
        std::env::var("TAS_AFXDP_HELPER_IP"),
    ) else {
        return;
    };
    let prog = XdpProgram::load(&ifname, XdpMode::Auto, ip.parse().unwrap()).expect("helper: load");
    prog.own_port(OWNED_PORT).unwrap();
    println!("ATTACHED {:?}", prog.attached_mode());
    std::thread::sleep(Duration::from_secs(60));
    panic!("helper was not killed within 60 s");
}

/// A process that dies by SIGKILL leaves no XDP program behind (the attachment is a BPF
/// link owned by the process).
#[test]
#[ignore = "needs root and veth: cargo test -- --ignored"]
fn sigkill_of_the_attaching_process_detaches_the_program() {
    let sb = Sandbox::new(3);
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new("ip")
        .args(["netns", "exec", &sb.ns_a])
        .arg(&exe)
        .args([
            "--exact",
            "helper_attach_and_wait_for_sigkill",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("TAS_AFXDP_HELPER_IF", &sb.if_a)
        .env("TAS_AFXDP_HELPER_IP", sb.ip_a.to_string())
        .stdout(Stdio::piped())
        .spawn()
        .expect("start the helper");
    let stdout = child.stdout.take().unwrap();
    let attached = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .find(|l| l.contains("ATTACHED")); // libtest prints "test NAME ... " before it
    if attached.is_none() {
        let _ = child.kill();
        panic!("helper did not attach: {:?}", child.wait());
    }
    assert!(
        sb.xdp_attached(),
        "the helper's program is not on {}",
        sb.if_a
    );
    // `ip netns exec` execs the test binary in place, so this pid is the attaching
    // process; Child::kill sends SIGKILL.
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success());
    let deadline = Instant::now() + Duration::from_secs(5);
    while sb.xdp_attached() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!sb.xdp_attached(), "the XDP program outlived its process");
}

// ---------------------------------------------------------------------------------------
// Measurement (not a test: runs only with TAS_AFXDP_MEASURE=1)

/// Frames per second through the sockets: B's socket transmits SYN-shaped frames to A as
/// fast as it can, A's socket (behind the XDP program) receives them.
#[test]
#[ignore = "needs root and veth: cargo test -- --ignored"]
fn measure_rx_tx_rates() {
    if std::env::var_os("TAS_AFXDP_MEASURE").is_none() {
        return;
    }
    let secs: f64 = std::env::var("TAS_AFXDP_MEASURE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    for size in [60usize, 1514] {
        // None: transmit only, to a MAC address that is not A's, which A's kernel drops
        // as soon as it sees it, and no XDP program on A.
        for mode in [Some(XdpMode::Native), Some(XdpMode::Generic), None] {
            let sb = Sandbox::new(9);
            let mac_a = match mode {
                Some(_) => sb.mac(&sb.ns_a, &sb.if_a),
                None => [0x02, 0, 0, 0, 0, 0x01],
            };
            let mac_b = sb.mac(&sb.ns_b, &sb.if_b);
            let stop = AtomicBool::new(false);
            let ready = AtomicBool::new(false);
            let (tx_sent, rx_got, xdp, rx_stats, tx_stats, elapsed) = std::thread::scope(|s| {
                let rx = s.spawn(|| {
                    in_netns(&sb.ns_a, || {
                        let Some(mode) = mode else {
                            ready.store(true, Ordering::Release);
                            return (0, Default::default(), Default::default());
                        };
                        let prog = XdpProgram::load(&sb.if_a, mode, sb.ip_a).unwrap();
                        prog.own_port(OWNED_PORT).unwrap();
                        let cfg = XdpConfig {
                            frames: 8192,
                            ring_size: 2048,
                            ..XdpConfig::new(sb.if_a.clone())
                        };
                        let mut sock = XskSocket::open(&cfg, 0).unwrap();
                        prog.register(&sock).unwrap();
                        ready.store(true, Ordering::Release);
                        let mut burst = [RxFrame::default(); 64];
                        let mut n_total = 0u64;
                        while !stop.load(Ordering::Relaxed) {
                            let n = sock.rx_burst(&mut burst);
                            n_total += n as u64;
                            sock.rx_release(&burst[..n]);
                        }
                        (n_total, prog.stats(), sock.stats())
                    })
                });
                while !ready.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(5));
                }
                let tx = s.spawn(|| {
                    in_netns(&sb.ns_b, || {
                        let cfg = XdpConfig {
                            frames: 8192,
                            ring_size: 2048,
                            ..XdpConfig::new(sb.if_b.clone())
                        };
                        let mut sock = XskSocket::open(&cfg, 0).unwrap();
                        let mut template = vec![0u8; size];
                        let n = emit_udp(
                            &mut template,
                            mac_a,
                            mac_b,
                            sb.ip_b,
                            sb.ip_a,
                            40000,
                            OWNED_PORT,
                            &vec![0u8; size - 42],
                        );
                        // Make it TCP to the owned port (the checksum does not matter here).
                        template[23] = 6;
                        template[34..36].copy_from_slice(&40000u16.to_be_bytes());
                        template[36..38].copy_from_slice(&OWNED_PORT.to_be_bytes());
                        assert_eq!(n, size);
                        let start = Instant::now();
                        let mut sent = 0u64;
                        while start.elapsed().as_secs_f64() < secs {
                            for _ in 0..64 {
                                let Some(f) = sock.tx_alloc() else { break };
                                sock.tx_data(&f)[..size].copy_from_slice(&template);
                                sock.tx_submit(f, size);
                                sent += 1;
                            }
                            sock.tx_flush().unwrap();
                        }
                        let elapsed = start.elapsed();
                        println!("tx budget per kick: {:?}", sock.tx_budget());
                        (sent, sock.stats(), elapsed)
                    })
                });
                let (sent, tx_stats, elapsed) = tx.join().unwrap();
                std::thread::sleep(Duration::from_millis(100));
                stop.store(true, Ordering::Relaxed);
                let (got, xdp, rx_stats) = rx.join().unwrap();
                (sent, got, xdp, rx_stats, tx_stats, elapsed)
            });
            let s = elapsed.as_secs_f64();
            println!(
                "{size:>5} B, XDP {}: tx {:.3} Mframes/s ({} frames, {} kicks, {} deferred, completed {}), rx {:.3} Mframes/s ({} frames; XDP {:?}; rx_ring_full {}, fill_ring_empty {}, rx_dropped {})",
                mode.map_or("none (tx only)".to_owned(), |m| format!("{m:?}")),
                tx_sent as f64 / s / 1e6,
                tx_sent,
                tx_stats.tx_kicks,
                tx_stats.tx_kicks_deferred,
                tx_stats.tx_completed,
                rx_got as f64 / s / 1e6,
                rx_got,
                xdp,
                rx_stats.rx_ring_full,
                rx_stats.fill_ring_empty,
                rx_stats.rx_dropped,
            );
        }
    }
}
