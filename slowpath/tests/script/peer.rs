//! The scripted peer: one [`SimHost`] (the stack under test) on one end of a zero-delay
//! [`MemLink`], the script on the other end, and a libtas [`Context`] over the host's
//! local region as the application. Everything runs on one thread on a virtual clock.
//!
//! Time: every call takes an absolute time in milliseconds since the start of the
//! script. Inbound segments and application calls happen exactly at that time. An
//! outbound segment must come at the time written or up to `late` after it (default
//! 250 µs), never before. Why 250 µs: the fast path finds expired retransmission timers
//! by sweeping its flow table, 256 slots per scan, one scan per 50 µs of virtual time;
//! the simulator's core has 1024 flow slots, so each flow is visited every 200 µs, and
//! the world is stepped on a 50 µs grid while a flow has a timer running (plus exactly
//! at every slow-path deadline and every scripted time). Slow-path timers (handshake
//! retransmissions, TIME_WAIT, FIN_WAIT_2) and replies to inbound segments come at the
//! exact time.
//!
//! Checks made on every frame the host sends, whether a script expects it or not:
//! valid IPv4 and TCP checksums, our addresses, and (when present) a TSval equal to the
//! stack's timestamp clock at the time it was sent (µs / 16).
#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::sync::Arc;
use std::time::Duration;

use libtas::{ConnId, ConnState, Context, Error, ListenerId, RegionMapping};
use tas_fastpath::flow::{F_ACTIVE, F_TX_FIN_ACKED, F_TX_FIN_SENT};
use tas_fastpath::io::mem::{Impairments, MemLink, MemPort};
use tas_fastpath::io::{PacketIo, RxFrame};
use tas_fastpath::time::{Clock, Instant, SimClock};
use tas_fastpath::wire::{
    self, ArpOperation, ArpPacket, ArpRepr, EtherType, EthernetAddress, EthernetFrame, EthernetRepr, Ipv4Packet,
    Ipv4Repr, SackBlocks, TcpFlags, TcpRepr, TcpSegment,
};
use tas_proto::shm::Layout;
use tas_slowpath::sim::{HeapRegion, SimHost};

use super::text::{self, Num, OptSpec, Opts, SegSpec};

/// The stack under test.
pub const HOST_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
/// Its MAC.
pub const HOST_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
/// The scripted peer.
pub const PEER_IP: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
/// Its MAC.
pub const PEER_MAC: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
/// The peer's port unless a script says otherwise.
pub const PEER_PORT: u16 = 40000;
/// The peer's ISN: relative sequence number 0 of everything the peer sends. Close to
/// the wrap so every script also crosses 2^32 in the peer's sequence space.
pub const PEER_ISN: u32 = 0xffff_ff00;
/// Stepping grid while a fast-path timer may be running (the core's scan interval).
pub const STEP: Duration = Duration::from_micros(50);
/// Default lateness allowed for an expected segment: one sweep of the fast path's timer
/// scan over the simulator's 1024 flow slots (4 scans of 256 slots, 50 µs apart) plus
/// one 50 µs step.
pub const LATE: Duration = Duration::from_micros(250);
/// The stack's timestamp clock: TSval = µs >> 4.
pub const TS_SHIFT: u32 = 4;

const PEER_SEED: u64 = 0x9e37;
const APP_SEED: u64 = 0x7f4a;

/// Byte `off` onwards of the deterministic stream `seed`.
pub fn pattern(seed: u64, off: u64, out: &mut [u8]) {
    for (i, b) in out.iter_mut().enumerate() {
        let x = (off + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ seed;
        *b = (x >> 29) as u8;
    }
}

/// The application-region geometry of the scripts: 256 KiB rings (so the stack's
/// window scale is 3 and its unscaled window 65535).
pub fn default_layout() -> Layout {
    Layout { num_fp_queues: 1, queue_entries: 1024, conn_slots: 16, rx_buf_size: 256 * 1024, tx_buf_size: 256 * 1024 }
}

fn ms(t: f64) -> Instant {
    Instant::from_nanos((t * 1_000_000.0).round() as u64)
}

fn fmt_ms(t: Instant) -> String {
    format!("{:.3}", t.as_nanos() as f64 / 1e6)
}

/// A frame the host sent, decoded.
#[derive(Debug, Clone)]
enum Out {
    Tcp { repr: TcpRepr, payload: Vec<u8>, src: Ipv4Addr, dst: Ipv4Addr },
    Arp(ArpRepr, EthernetAddress),
}

#[derive(Debug)]
struct Captured {
    at: Instant,
    out: Out,
}

/// The scripted world.
pub struct Script {
    clock: SimClock,
    /// The stack under test (public for counters and connection states).
    pub host: SimHost,
    link: MemPort,
    app: Context,
    rx: VecDeque<Captured>,
    /// The peer's port of the current connection.
    pub peer_port: u16,
    /// The stack's port of the current connection.
    pub local_port: u16,
    peer_isn: u32,
    /// Learned from the stack's first SYN or SYN-ACK of the connection; until then
    /// relative numbers of the stack's segments are absolute.
    our_isn: Option<u32>,
    last_tsval: Option<u32>,
    listener: Option<ListenerId>,
    conn: Option<ConnId>,
    app_written: u64,
    app_read: u64,
    ident: u16,
    late: Duration,
    log: Vec<String>,
}

impl Default for Script {
    fn default() -> Self {
        Self::new()
    }
}

impl Script {
    /// A fresh host with the default layout.
    pub fn new() -> Script {
        Self::with_layout(default_layout())
    }

    /// A fresh host whose application regions have `layout`.
    pub fn with_layout(layout: Layout) -> Script {
        let clock = SimClock::new();
        let imp = Impairments { delay: Duration::ZERO, ..Impairments::default() };
        let (host_port, link) = MemLink::pair(&clock, imp, imp, 1);
        let mut host = SimHost::new(host_port, &clock, HOST_IP, HOST_MAC, layout);
        let region: Arc<HeapRegion> = host.attach_local("script");
        // SAFETY: the region stays alive through the keep-alive Arc; one context per region.
        let app = unsafe {
            let map = RegionMapping::borrowed(region.base(), region.len(), region.clone());
            Context::from_parts(map, None, vec![None], HOST_IP).expect("context")
        };
        let mut s = Script {
            clock,
            host,
            link,
            app,
            rx: VecDeque::new(),
            peer_port: PEER_PORT,
            local_port: 0,
            peer_isn: PEER_ISN,
            our_isn: None,
            last_tsval: None,
            listener: None,
            conn: None,
            app_written: 0,
            app_read: 0,
            ident: 0,
            late: LATE,
            log: Vec::new(),
        };
        s.pump();
        s
    }

    /// Change the lateness allowed for expected segments.
    pub fn late(&mut self, t: Duration) {
        self.late = t;
    }

    /// Start a new connection in the script's numbering: the peer uses `peer_port`,
    /// both ISNs are forgotten (ours is learned again from our next SYN; relative
    /// numbers of segments to unknown flows are then absolute), the streams restart.
    pub fn new_connection(&mut self, peer_port: u16, local_port: u16) {
        self.peer_port = peer_port;
        self.local_port = local_port;
        self.our_isn = None;
        self.last_tsval = None;
        self.conn = None;
        self.app_written = 0;
        self.app_read = 0;
    }

    fn isn(&self) -> u32 {
        self.our_isn.unwrap_or(0)
    }

    /// Current virtual time, ms.
    pub fn now_ms(&self) -> f64 {
        self.clock.now().as_nanos() as f64 / 1e6
    }

    // ---- the world -------------------------------------------------------------------

    fn note(&mut self, s: String) {
        if std::env::var_os("SCRIPT_TRACE").is_some() {
            eprintln!("{s}");
        }
        self.log.push(s);
    }

    fn transcript(&self) -> String {
        let from = self.log.len().saturating_sub(40);
        let mut s = String::from("transcript (last 40 events; `<` to the stack, `>` from it):\n");
        for l in &self.log[from..] {
            s += "  ";
            s += l;
            s += "\n";
        }
        s
    }

    /// Run the host and the application until neither has anything to do, collecting
    /// the frames the host sends.
    fn pump(&mut self) {
        for _ in 0..10_000 {
            let mut work = self.host.poll();
            work |= self.app.poll() > 0;
            work |= self.collect();
            if !work {
                return;
            }
        }
        panic!("the host never went idle at {} ms", fmt_ms(self.clock.now()));
    }

    fn collect(&mut self) -> bool {
        let mut frames = [RxFrame::default(); 32];
        let mut any = false;
        loop {
            let n = self.link.rx_burst(&mut frames);
            if n == 0 {
                return any;
            }
            any = true;
            for f in &frames[..n] {
                let data = self.link.rx_data(f).to_vec();
                let at = self.clock.now();
                let out = self.decode(&data, at);
                if let Out::Tcp { repr, .. } = &out {
                    if let Some((v, _)) = repr.timestamp {
                        self.last_tsval = Some(v);
                    }
                    // Our ISN is learned from our first SYN, as packetdrill does; a
                    // retransmitted SYN must then show relative sequence number 0 again.
                    if repr.flags.contains(TcpFlags::SYN) && self.our_isn.is_none() {
                        self.our_isn = Some(repr.seq_number);
                        if !repr.flags.contains(TcpFlags::ACK) {
                            self.local_port = repr.src_port;
                        }
                    }
                }
                let line = format!("{:>10} > {}", fmt_ms(at), self.describe(&out));
                self.note(line);
                self.rx.push_back(Captured { at, out });
            }
            self.link.rx_release(&frames[..n]);
        }
    }

    /// Checks every frame must pass, expected or not.
    fn decode(&self, data: &[u8], at: Instant) -> Out {
        let eth = EthernetFrame::new_checked(data).expect("host sent a runt frame");
        assert_eq!(eth.src_addr(), HOST_MAC, "frame from the host with a foreign source MAC");
        match eth.ethertype() {
            EtherType::Arp => {
                let p = ArpPacket::new_checked(eth.payload()).expect("host sent a malformed ARP packet");
                Out::Arp(ArpRepr::parse(&p).expect("host sent an unsupported ARP packet"), eth.dst_addr())
            }
            EtherType::Ipv4 => {
                assert_eq!(eth.dst_addr(), PEER_MAC, "IPv4 frame not addressed to the peer's MAC");
                let ip = Ipv4Packet::new_checked(eth.payload()).expect("host sent a malformed IPv4 packet");
                assert!(ip.verify_checksum(), "host sent an IPv4 header with a bad checksum");
                assert_eq!(ip.protocol(), wire::ipv4::PROTO_TCP, "host sent a non-TCP packet");
                let (src, dst) = (ip.src_addr(), ip.dst_addr());
                assert_eq!((src, dst), (HOST_IP, PEER_IP), "host sent a packet with wrong addresses");
                let seg = TcpSegment::new_checked(ip.payload()).expect("host sent a malformed TCP segment");
                let repr = TcpRepr::parse(&seg, src, dst, true).expect("host sent a TCP segment with a bad checksum");
                if let Some((val, _)) = repr.timestamp {
                    let want = ((at.as_nanos() / 1_000) as u32) >> TS_SHIFT;
                    assert_eq!(val, want, "TSval {val} at {} ms is not the stack's clock (µs/16 = {want})", fmt_ms(at));
                }
                Out::Tcp { repr, payload: seg.payload().to_vec(), src, dst }
            }
            t => panic!("host sent an unexpected ethertype {t}"),
        }
    }

    /// Are fast-path timers possibly running (data or FIN outstanding, or a zero
    /// window with data waiting)? Then time advances on the 50 µs grid.
    fn fast_timers_armed(&self) -> bool {
        self.host.cores.iter().any(|c| {
            c.flows().iter().any(|(_, f)| {
                f.has(F_ACTIVE)
                    && (f.tx_sent > 0
                        || (f.has(F_TX_FIN_SENT) && !f.has(F_TX_FIN_ACKED))
                        || (f.tx_avail > 0 && f.snd_wnd == 0))
            })
        })
    }

    fn next_stop(&self, target: Instant) -> Instant {
        let now = self.clock.now();
        let mut next = target;
        if let Some(d) = self.host.slow.next_deadline() {
            if d > now {
                next = next.min(d);
            }
        }
        if self.fast_timers_armed() {
            let step = STEP.as_nanos() as u64;
            next = next.min(Instant::from_nanos((now.as_nanos() / step + 1) * step));
        }
        next
    }

    fn step_once(&mut self, target: Instant) {
        let next = self.next_stop(target);
        self.clock.set(next);
        self.pump();
    }

    fn run_until(&mut self, t: Instant) {
        assert!(
            self.clock.now() <= t,
            "script goes back in time: {} ms requested at {} ms",
            fmt_ms(t),
            fmt_ms(self.clock.now())
        );
        self.pump();
        while self.clock.now() < t {
            self.step_once(t);
        }
    }

    #[track_caller]
    fn no_unexpected(&self, what: &str) {
        if let Some(c) = self.rx.front() {
            panic!(
                "unexpected frame from the stack at {} ms (before {what}): {}\n{}",
                fmt_ms(c.at),
                self.describe(&c.out),
                self.transcript()
            );
        }
    }

    /// Advance to `at_ms`; no frame may have been sent meanwhile.
    #[track_caller]
    pub fn quiet_until(&mut self, at_ms: f64) {
        self.run_until(ms(at_ms));
        self.no_unexpected(&format!("the end of the quiet period at {at_ms} ms"));
    }

    /// The end of a script: advance to `at_ms`, nothing may be left unexpected.
    #[track_caller]
    pub fn done(&mut self, at_ms: f64) {
        self.quiet_until(at_ms);
    }

    // ---- segments ----------------------------------------------------------------------

    fn describe(&self, out: &Out) -> String {
        match out {
            Out::Arp(a, dst) => format!(
                "ARP {} {} (from {} {} to {} {}, frame to {})",
                a.operation,
                a.target_protocol_addr,
                a.source_protocol_addr,
                a.source_hardware_addr,
                a.target_protocol_addr,
                a.target_hardware_addr,
                dst
            ),
            Out::Tcp { repr, .. } => self.fmt_out(repr),
        }
    }

    /// A segment from the stack in the script's notation.
    fn fmt_out(&self, r: &TcpRepr) -> String {
        let seq = r.seq_number.wrapping_sub(self.isn());
        let mut s = format!("{} {}:{}({})", text::flags_text(r.flags), seq, seq.wrapping_add(r.payload_len as u32), r.payload_len);
        if let Some(a) = r.ack_number {
            s += &format!(" ack {}", a.wrapping_sub(self.peer_isn));
        }
        s += &format!(" win {}", r.window_len);
        s += &self.fmt_opts(r, self.peer_isn);
        if (r.src_port, r.dst_port) != (self.local_port, self.peer_port) {
            s += &format!(" [ports {} > {}]", r.src_port, r.dst_port);
        }
        s
    }

    fn fmt_opts(&self, r: &TcpRepr, sack_base: u32) -> String {
        let mut o = Vec::new();
        if let Some(m) = r.max_seg_size {
            o.push(format!("mss {m}"));
        }
        if r.sack_permitted {
            o.push("sackOK".into());
        }
        if let Some((v, e)) = r.timestamp {
            o.push(format!("TS val {v} ecr {e}"));
        }
        if let Some(w) = r.window_scale {
            o.push(format!("wscale {w}"));
        }
        if !r.sack_ranges.is_empty() {
            let b: Vec<String> = r
                .sack_ranges
                .iter()
                .map(|(a, b)| format!("{}:{}", a.wrapping_sub(sack_base), b.wrapping_sub(sack_base)))
                .collect();
            o.push(format!("sack {}", b.join(" ")));
        }
        if o.is_empty() {
            String::new()
        } else {
            format!(" <{}>", o.join(","))
        }
    }

    /// Inject a segment from the peer at `at_ms`.
    #[track_caller]
    pub fn send(&mut self, at_ms: f64, seg: &str) {
        self.run_until(ms(at_ms));
        self.no_unexpected(&format!("`< {seg}` at {at_ms} ms"));
        let spec = text::parse(seg);
        let repr = self.build(&spec);
        let rel = spec.seq.value("the sequence number");
        let off = rel.wrapping_add(spec.flags.contains(TcpFlags::SYN) as u32).wrapping_sub(1) as u64;
        let mut payload = vec![0u8; repr.payload_len];
        pattern(PEER_SEED, off, &mut payload);
        let frame = self.tcp_frame(&repr, &payload);
        let line = format!("{:>10} < {}", fmt_ms(self.clock.now()), seg);
        self.note(line);
        self.link.inject(&frame);
        self.pump();
    }

    fn build(&self, spec: &SegSpec) -> TcpRepr {
        let mut r = TcpRepr {
            src_port: self.peer_port,
            dst_port: self.local_port,
            seq_number: self.peer_isn.wrapping_add(spec.seq.value("the sequence number")),
            ack_number: spec.ack.map(|a| self.isn().wrapping_add(a.value("ack"))),
            flags: spec.flags,
            window_len: spec.win.map_or(65535, |w| w.value("win") as u16),
            payload_len: spec.len.value("the length") as usize,
            ..TcpRepr::default()
        };
        if let Opts::List(opts) = &spec.opts {
            for o in opts {
                match o {
                    OptSpec::Mss(n) => r.max_seg_size = Some(n.value("mss") as u16),
                    OptSpec::SackOk => r.sack_permitted = true,
                    OptSpec::WScale(n) => r.window_scale = Some(n.value("wscale") as u8),
                    OptSpec::Ts { val, ecr } => {
                        let ecr = match ecr {
                            Num::Is(v) => *v,
                            Num::Any => self.last_tsval.expect("`ecr *` but the stack has sent no TSval yet"),
                        };
                        r.timestamp = Some((val.value("TS val"), ecr));
                    }
                    OptSpec::Sack(blocks) => {
                        let b: Vec<(u32, u32)> = blocks
                            .iter()
                            .map(|(a, b)| {
                                (self.isn().wrapping_add(a.value("sack")), self.isn().wrapping_add(b.value("sack")))
                            })
                            .collect();
                        r.sack_ranges = SackBlocks::from_slice(&b).expect("at most 4 SACK blocks");
                    }
                }
            }
        } else {
            assert!(spec.opts == Opts::None, "`<...>` is only for expectations");
        }
        r
    }

    fn tcp_frame(&mut self, tcp: &TcpRepr, payload: &[u8]) -> Vec<u8> {
        self.ident = self.ident.wrapping_add(1);
        let tl = tcp.buffer_len();
        let mut buf = vec![0u8; 14 + 20 + tl];
        EthernetRepr { src_addr: PEER_MAC, dst_addr: HOST_MAC, ethertype: EtherType::Ipv4 }.emit(&mut buf[..14]).unwrap();
        Ipv4Repr {
            src_addr: PEER_IP,
            dst_addr: HOST_IP,
            protocol: wire::ipv4::PROTO_TCP,
            payload_len: tl,
            ttl: 64,
            ecn: 0,
            ident: self.ident,
            dont_frag: true,
        }
        .emit(&mut buf[14..34])
        .unwrap();
        tcp.emit(&mut buf[34..], PEER_IP, HOST_IP, payload).expect("segment does not fit");
        buf
    }

    /// Wait for the next frame from the stack, at most until `deadline`.
    fn next_frame(&mut self, deadline: Instant) -> Option<Captured> {
        self.pump();
        while self.rx.is_empty() && self.clock.now() < deadline {
            self.step_once(deadline);
        }
        self.rx.pop_front()
    }

    #[track_caller]
    fn timed(&mut self, at_ms: f64, what: &str) -> Captured {
        let at = ms(at_ms);
        let late = self.late;
        let c = self.next_frame(at + late).unwrap_or_else(|| {
            panic!(
                "expected at {at_ms} ms (+{} µs): {what}\nobserved: nothing by {} ms\n{}",
                late.as_micros(),
                fmt_ms(self.clock.now()),
                self.transcript()
            )
        });
        if c.at < at {
            panic!(
                "expected at {at_ms} ms (+{} µs): {what}\nobserved earlier, at {} ms: {}\n{}",
                late.as_micros(),
                fmt_ms(c.at),
                self.describe(&c.out),
                self.transcript()
            );
        }
        c
    }

    /// Expect the next segment from the stack at `at_ms` (up to `late` after it).
    #[track_caller]
    pub fn expect(&mut self, at_ms: f64, seg: &str) {
        let spec = text::parse(seg);
        let c = self.timed(at_ms, seg);
        let Out::Tcp { repr, payload, .. } = &c.out else {
            panic!(
                "expected at {at_ms} ms: {seg}\nobserved at {} ms: {}\n{}",
                fmt_ms(c.at),
                self.describe(&c.out),
                self.transcript()
            );
        };
        if let Err(why) = self.check(&spec, repr, payload) {
            panic!(
                "expected at {at_ms} ms: {seg}\nobserved at {} ms: {}\nmismatch: {why}\n{}",
                fmt_ms(c.at),
                self.fmt_out(repr),
                self.transcript()
            );
        }
    }

    /// Expect the next segment from the stack no earlier than `at_ms` and within the
    /// longest retransmission interval (120 s) after it; returns when it came, in ms.
    /// For timer sequences whose exact times are another test's business.
    #[track_caller]
    pub fn expect_at_least(&mut self, at_ms: f64, seg: &str) -> f64 {
        let spec = text::parse(seg);
        let deadline = ms(at_ms) + Duration::from_secs(121);
        let c = self.next_frame(deadline).unwrap_or_else(|| {
            panic!("expected after {at_ms} ms: {seg}\nobserved: nothing within 121 s\n{}", self.transcript())
        });
        let Out::Tcp { repr, payload, .. } = &c.out else {
            panic!("expected after {at_ms} ms: {seg}\nobserved at {} ms: {}\n{}", fmt_ms(c.at), self.describe(&c.out), self.transcript());
        };
        assert!(c.at >= ms(at_ms), "expected after {at_ms} ms: {seg}\nobserved earlier, at {} ms", fmt_ms(c.at));
        if let Err(why) = self.check(&spec, repr, payload) {
            panic!("expected after {at_ms} ms: {seg}\nobserved at {} ms: {}\nmismatch: {why}\n{}", fmt_ms(c.at), self.fmt_out(repr), self.transcript());
        }
        c.at.as_nanos() as f64 / 1e6
    }

    fn check(&self, spec: &SegSpec, r: &TcpRepr, payload: &[u8]) -> Result<(), String> {
        if (r.src_port, r.dst_port) != (self.local_port, self.peer_port) {
            return Err(format!("ports {} > {}, expected {} > {}", r.src_port, r.dst_port, self.local_port, self.peer_port));
        }
        if r.flags != spec.flags {
            return Err(format!("flags `{}`", text::flags_text(r.flags)));
        }
        let seq = r.seq_number.wrapping_sub(self.isn());
        if !spec.seq.matches(seq) {
            return Err(format!("sequence number {seq}"));
        }
        if !spec.len.matches(r.payload_len as u32) {
            return Err(format!("payload length {}", r.payload_len));
        }
        if let (Some(want), Some(a)) = (spec.ack, r.ack_number) {
            let a = a.wrapping_sub(self.peer_isn);
            if !want.matches(a) {
                return Err(format!("ack {a}"));
            }
        }
        if let Some(w) = spec.win {
            if !w.matches(r.window_len as u32) {
                return Err(format!("window {}", r.window_len));
            }
        }
        self.check_opts(&spec.opts, r)?;
        if !payload.is_empty() && !r.flags.contains(TcpFlags::SYN) {
            let mut want = vec![0u8; payload.len()];
            pattern(APP_SEED, seq.wrapping_sub(1) as u64, &mut want);
            if let Some(i) = (0..payload.len()).find(|&i| payload[i] != want[i]) {
                return Err(format!("payload byte {} (relative sequence number {}) is not what the app wrote there", i, seq as u64 + i as u64));
            }
        }
        Ok(())
    }

    fn check_opts(&self, opts: &Opts, r: &TcpRepr) -> Result<(), String> {
        let list = match opts {
            Opts::Any => return Ok(()),
            Opts::None => &Vec::new(),
            Opts::List(l) => l,
        };
        let (mut mss, mut sok, mut ts, mut ws, mut sack) = (None, false, None, None, None);
        for o in list {
            match o {
                OptSpec::Mss(n) => mss = Some(*n),
                OptSpec::SackOk => sok = true,
                OptSpec::Ts { val, ecr } => ts = Some((*val, *ecr)),
                OptSpec::WScale(n) => ws = Some(*n),
                OptSpec::Sack(b) => sack = Some(b.clone()),
            }
        }
        match (mss, r.max_seg_size) {
            (None, None) => {}
            (Some(w), Some(v)) if w.matches(v as u32) => {}
            (_, v) => return Err(format!("MSS option {v:?}")),
        }
        if sok != r.sack_permitted {
            return Err(format!("sackOK {}", if r.sack_permitted { "present" } else { "absent" }));
        }
        match (ts, r.timestamp) {
            (None, None) => {}
            (Some((wv, we)), Some((v, e))) if wv.matches(v) && we.matches(e) => {}
            (_, v) => return Err(format!("timestamps {v:?}")),
        }
        match (ws, r.window_scale) {
            (None, None) => {}
            (Some(w), Some(v)) if w.matches(v as u32) => {}
            (_, v) => return Err(format!("window scale {v:?}")),
        }
        let got: Vec<(u32, u32)> =
            r.sack_ranges.iter().map(|(a, b)| (a.wrapping_sub(self.peer_isn), b.wrapping_sub(self.peer_isn))).collect();
        match sack {
            None if got.is_empty() => {}
            Some(w) if w.len() == got.len() && w.iter().zip(&got).all(|((a, b), (x, y))| a.matches(*x) && b.matches(*y)) => {}
            _ => return Err(format!("SACK blocks {got:?}")),
        }
        Ok(())
    }

    // ---- ARP -----------------------------------------------------------------------------

    /// Expect the stack's ARP request for the peer's address.
    #[track_caller]
    pub fn expect_arp_request(&mut self, at_ms: f64) {
        let what = format!("ARP request who-has {PEER_IP} tell {HOST_IP}");
        let c = self.timed(at_ms, &what);
        match &c.out {
            Out::Arp(a, dst)
                if a.operation == ArpOperation::Request
                    && a.target_protocol_addr == PEER_IP
                    && a.source_protocol_addr == HOST_IP
                    && a.source_hardware_addr == HOST_MAC
                    && *dst == EthernetAddress::BROADCAST => {}
            o => panic!("expected at {at_ms} ms: {what}\nobserved: {}\n{}", self.describe(o), self.transcript()),
        }
    }

    /// Expect the stack's ARP reply to the peer.
    #[track_caller]
    pub fn expect_arp_reply(&mut self, at_ms: f64) {
        let what = format!("ARP reply {HOST_IP} is-at {HOST_MAC}");
        let c = self.timed(at_ms, &what);
        match &c.out {
            Out::Arp(a, dst)
                if a.operation == ArpOperation::Reply
                    && a.source_protocol_addr == HOST_IP
                    && a.source_hardware_addr == HOST_MAC
                    && a.target_protocol_addr == PEER_IP
                    && a.target_hardware_addr == PEER_MAC
                    && *dst == PEER_MAC => {}
            o => panic!("expected at {at_ms} ms: {what}\nobserved: {}\n{}", self.describe(o), self.transcript()),
        }
    }

    fn arp(&mut self, at_ms: f64, op: ArpOperation, dst: EthernetAddress, tha: EthernetAddress) {
        self.run_until(ms(at_ms));
        self.no_unexpected(&format!("the ARP {op} at {at_ms} ms"));
        let a = ArpRepr {
            operation: op,
            source_hardware_addr: PEER_MAC,
            source_protocol_addr: PEER_IP,
            target_hardware_addr: tha,
            target_protocol_addr: HOST_IP,
        };
        let mut buf = vec![0u8; 14 + ArpRepr::LEN];
        EthernetRepr { src_addr: PEER_MAC, dst_addr: dst, ethertype: EtherType::Arp }.emit(&mut buf[..14]).unwrap();
        a.emit(&mut buf[14..]).unwrap();
        let line = format!("{:>10} < ARP {op} {HOST_IP} from {PEER_IP} {PEER_MAC}", fmt_ms(self.clock.now()));
        self.note(line);
        self.link.inject(&buf);
        self.pump();
    }

    /// The peer answers the stack's ARP request.
    #[track_caller]
    pub fn send_arp_reply(&mut self, at_ms: f64) {
        self.arp(at_ms, ArpOperation::Reply, HOST_MAC, HOST_MAC);
    }

    /// The peer asks for the stack's MAC (broadcast).
    #[track_caller]
    pub fn send_arp_request(&mut self, at_ms: f64) {
        self.arp(at_ms, ArpOperation::Request, EthernetAddress::BROADCAST, EthernetAddress([0; 6]));
    }

    // ---- the application -------------------------------------------------------------------

    fn at(&mut self, at_ms: f64, what: &str) {
        self.run_until(ms(at_ms));
        self.no_unexpected(what);
        let line = format!("{:>10}   app: {what}", fmt_ms(self.clock.now()));
        self.note(line);
    }

    fn conn(&self) -> ConnId {
        self.conn.expect("no connection: accept() or connect() first")
    }

    /// The application listens on `port` (the stack's port of the next connections).
    #[track_caller]
    pub fn listen(&mut self, at_ms: f64, port: u16) {
        self.at(at_ms, &format!("listen({port})"));
        let tok = self.app.listen_start(port, 16).expect("listen_start");
        self.pump();
        self.listener = Some(self.app.listen_result(tok).expect("listen").expect("listen result after one pump"));
        self.local_port = port;
    }

    /// The application accepts a connection that must be waiting.
    #[track_caller]
    pub fn accept(&mut self, at_ms: f64) {
        self.at(at_ms, "accept()");
        let l = self.listener.expect("listen first");
        let c = self.app.accept(l).expect("accept").unwrap_or_else(|| panic!("accept(): no connection waiting\n{}", self.transcript()));
        self.conn = Some(c);
        self.pump();
    }

    /// True if no connection waits on the listener.
    pub fn nothing_to_accept(&mut self, at_ms: f64) -> bool {
        self.at(at_ms, "accept() expecting nothing");
        let l = self.listener.expect("listen first");
        self.app.accept(l).expect("accept").is_none()
    }

    /// The application connects to the peer's `port`.
    #[track_caller]
    pub fn connect(&mut self, at_ms: f64, port: u16) {
        self.at(at_ms, &format!("connect({PEER_IP}:{port})"));
        self.peer_port = port;
        self.our_isn = None;
        self.conn = Some(self.app.connect_start(SocketAddrV4::new(PEER_IP, port)).expect("connect_start"));
        self.pump();
    }

    /// The application's view of its connection.
    pub fn state(&mut self, at_ms: f64) -> ConnState {
        self.at(at_ms, "state()");
        self.app.state(self.conn())
    }

    /// The application writes `n` bytes (all must fit).
    #[track_caller]
    pub fn write(&mut self, at_ms: f64, n: usize) {
        self.at(at_ms, &format!("write({n})"));
        let mut buf = vec![0u8; n];
        pattern(APP_SEED, self.app_written, &mut buf);
        let c = self.conn();
        let k = self.app.send(c, &buf).unwrap_or_else(|e| panic!("write({n}): {e}\n{}", self.transcript()));
        assert_eq!(k, n, "write({n}) took only {k} bytes");
        self.app_written += n as u64;
        self.pump();
    }

    /// The application reads exactly `n` bytes, which must be readable, and checks them.
    #[track_caller]
    pub fn read(&mut self, at_ms: f64, n: usize) {
        self.at(at_ms, &format!("read({n})"));
        let c = self.conn();
        let mut buf = vec![0u8; n];
        let mut got = 0;
        while got < n {
            match self.app.recv(c, &mut buf[got..]) {
                Ok(0) => panic!("read({n}): EOF after {got} bytes\n{}", self.transcript()),
                Ok(k) => got += k,
                Err(e) => panic!("read({n}): {e} after {got} bytes\n{}", self.transcript()),
            }
        }
        let mut want = vec![0u8; n];
        pattern(PEER_SEED, self.app_read, &mut want);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            panic!("read({n}): byte {} of the stream differs from what the peer sent", self.app_read + i as u64);
        }
        self.app_read += n as u64;
        assert!(
            matches!(self.app.recv(c, &mut [0u8; 1]), Err(Error::WouldBlock) | Ok(0)),
            "read({n}): more than {n} bytes were readable"
        );
        self.pump();
    }

    /// Bytes the application could read now.
    pub fn readable(&mut self, at_ms: f64) -> usize {
        self.at(at_ms, "readable()");
        self.app.poll();
        self.app.readable(self.conn())
    }

    /// The application reads and must get end-of-stream.
    #[track_caller]
    pub fn read_eof(&mut self, at_ms: f64) {
        self.at(at_ms, "read() expecting EOF");
        let c = self.conn();
        match self.app.recv(c, &mut [0u8; 16]) {
            Ok(0) => {}
            r => panic!("read(): expected EOF, got {r:?}\n{}", self.transcript()),
        }
        self.pump();
    }

    /// The application's read would block (nothing there, no EOF).
    #[track_caller]
    pub fn read_would_block(&mut self, at_ms: f64) {
        self.at(at_ms, "read() expecting nothing");
        let c = self.conn();
        match self.app.recv(c, &mut [0u8; 16]) {
            Err(Error::WouldBlock) => {}
            r => panic!("read(): expected WouldBlock, got {r:?}\n{}", self.transcript()),
        }
    }

    /// The application shuts its sending direction down.
    pub fn shutdown(&mut self, at_ms: f64) {
        self.at(at_ms, "shutdown()");
        let c = self.conn();
        self.app.shutdown(c).expect("shutdown");
        self.pump();
    }

    /// The application closes the connection.
    pub fn close(&mut self, at_ms: f64) {
        self.at(at_ms, "close()");
        let c = self.conn();
        self.app.close(c).expect("close");
        self.pump();
    }

    /// The application aborts the connection (RST).
    pub fn abort(&mut self, at_ms: f64) {
        self.at(at_ms, "abort()");
        let c = self.conn();
        self.app.abort(c).expect("abort");
        self.pump();
    }

    /// The states of the stack's connections (RFC 9293 names), sorted.
    pub fn host_states(&self) -> Vec<&'static str> {
        let mut v: Vec<&'static str> = self.host.slow.conn_infos().iter().map(|c| c.state).collect();
        v.sort();
        v
    }
}
