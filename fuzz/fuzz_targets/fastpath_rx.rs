//! Structure-aware fuzzing of the fast path's receive processing (and what it drives: ACKs,
//! transmission from the app's ring, go-back-N, timers, app doorbells).
//!
//! One `FastPath` over a scripted `PacketIo`, with one established flow (peer 10.0.0.2:40000
//! -> us 10.0.0.1:7, our ISS 5000, the peer's 1000) and one app region, as in
//! `fastpath/benches/segment.rs`. The fuzzer picks a sequence of actions; segments are built
//! by our own emitters, so checksums are valid and the engine gets past parsing into deep
//! states. The peer's payload byte at sequence `s` is always `peer_byte(s)` and the app's
//! transmit byte at stream offset `o` is `app_byte(o)`, so retransmissions and overlaps are
//! consistent and every byte that comes out can be checked.
//!
//! Invariants checked after every step:
//! - no panic (overflow checks and debug assertions are on in the fuzz profile);
//! - `rx_avail <= rx_size`, `tx_sent + tx_avail <= tx_size`;
//! - every frame the fast path transmits is valid Ethernet/IPv4/TCP with correct checksums,
//!   from our address and port to the peer's, and its payload is the app's bytes for its
//!   sequence numbers;
//! - bytes announced to the app (RxData events) are the peer's bytes, in order;
//! while the app behaves (after a hostile doorbell only the first three are checked).
#![no_main]
#![allow(unsafe_code)]

use std::collections::VecDeque;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use ringbuf::traits::{Consumer, Producer};
use tas_fastpath::appmem::AppMem;
use tas_fastpath::core::{FastPath, FpConfig};
use tas_fastpath::ctl::{command_queue, to_slow_queue, AppAttach, Command, CommandTx, ToSlowRx};
use tas_fastpath::flow::{FlowState, F_TS};
use tas_fastpath::io::{PacketIo, RxFrame, TxFrame, MAX_FRAME};
use tas_fastpath::time::Instant;
use tas_fastpath::wire::{
    EtherType, EthernetAddress, EthernetFrame, EthernetRepr, Ipv4Packet, Ipv4Repr, SackBlocks, TcpFlags, TcpRepr,
    TcpSegment,
};
use tas_proto::queue::ShmQueue;
use tas_proto::shm::{Desc, Doorbell, FpEvent, Layout};

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const MAC_L: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const MAC_P: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
const LOCAL_PORT: u16 = 7;
const PEER_PORT: u16 = 40000;
/// The peer's first sequence number the flow expects (its ISN + 1).
const PEER_SEQ0: u32 = 1000;
/// Our first unacknowledged sequence number at installation.
const OUR_SEQ0: u32 = 5000;
const MSS: u16 = 1448;
/// Frames the scripted link lends for transmission at once.
const TX_FRAMES: usize = 256;

fn peer_byte(seq: u32) -> u8 {
    (seq.wrapping_mul(2_654_435_761) >> 24) as u8
}

fn app_byte(offset: u32) -> u8 {
    (offset.wrapping_mul(40_503) >> 8) as u8 ^ 0x5a
}

/// A scripted link: frames to receive are queued by the harness, transmitted ones kept.
struct Script {
    rx_queue: VecDeque<Vec<u8>>,
    rx_lent: Vec<Vec<u8>>,
    tx_bufs: Vec<Vec<u8>>,
    tx_free: Vec<u64>,
    sent: Vec<Vec<u8>>,
}

impl PacketIo for Script {
    fn rx_burst(&mut self, out: &mut [RxFrame]) -> usize {
        self.rx_lent.clear();
        let mut n = 0;
        while n < out.len() {
            let Some(f) = self.rx_queue.pop_front() else { break };
            out[n] = RxFrame { addr: n as u64, len: f.len() as u32, queue: 0 };
            self.rx_lent.push(f);
            n += 1;
        }
        n
    }
    fn rx_data(&self, f: &RxFrame) -> &[u8] {
        &self.rx_lent[f.addr as usize]
    }
    fn rx_release(&mut self, _frames: &[RxFrame]) {}
    fn tx_alloc(&mut self) -> Option<TxFrame> {
        self.tx_free.pop().map(|addr| TxFrame { addr })
    }
    fn tx_data(&mut self, f: &TxFrame) -> &mut [u8] {
        &mut self.tx_bufs[f.addr as usize]
    }
    fn tx_submit(&mut self, f: TxFrame, len: usize) {
        assert!(len <= MAX_FRAME, "transmitted frame of {len} bytes");
        self.sent.push(self.tx_bufs[f.addr as usize][..len].to_vec());
        self.tx_free.push(f.addr);
    }
    fn tx_abort(&mut self, f: TxFrame) {
        self.tx_free.push(f.addr);
    }
    fn tx_flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn poll_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

/// A heap allocation standing in for the shared region.
struct Region {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
}
// SAFETY: an owned allocation, accessed only through AppMem's copies.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}
impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `Harness::new`, freed once.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

/// Where a segment's sequence number lies.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum SeqAt {
    /// Exactly the next expected byte.
    Next,
    /// Near it (before or after, e.g. a retransmission or a hole).
    Near(i16),
    /// Anywhere in the window and beyond.
    Far(i32),
}

/// What a segment acknowledges.
#[derive(Arbitrary, Debug, Clone, Copy)]
enum AckAt {
    /// Our snd_una: a duplicate ACK when nothing else moved.
    Una,
    /// Everything we sent.
    Nxt,
    /// snd_una plus this much (may be beyond what we sent).
    Plus(u16),
    /// Any number.
    Any(u32),
}

#[derive(Arbitrary, Debug, Clone)]
struct Segment {
    seq: SeqAt,
    ack: Option<AckAt>,
    /// FIN SYN RST PSH URG ECE CWR as bits (ACK comes with `ack`).
    flags: u8,
    window: u16,
    payload_len: u16,
    timestamp: Option<(u32, u32)>,
    sack: Vec<(i16, u16)>,
    ecn: u8,
    /// Flip one byte after emitting (a bad checksum, or a mangled header).
    corrupt: Option<(u16, u8)>,
    /// Send it twice.
    duplicate: bool,
}

#[derive(Arbitrary, Debug, Clone)]
enum Action {
    Receive(Segment),
    /// Several in-order data segments in one burst (to reach full windows quickly).
    ReceiveRun { segments: u8, len: u16 },
    AdvanceTime { micros: u32 },
    AppConsumes { bytes: u32 },
    AppSends { bytes: u16 },
    AppDrainEvents,
    AppShutdown,
    /// The slow path's go-back-N order.
    SlowRetransmit,
    /// A doorbell with fields of the fuzzer's choosing (a buggy or hostile app).
    HostileDoorbell { kind: u8, flow: u32, conn: u32, bytes: u32 },
    /// Arbitrary bytes as a frame.
    RawFrame(Vec<u8>),
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Negotiated timestamps on the flow.
    timestamps: bool,
    /// log2 of the receive ring size, 12..=17.
    rx_ring_log2: u8,
    actions: Vec<Action>,
}

struct Harness {
    fp: FastPath<Script>,
    cmd: CommandTx,
    from_fp: ToSlowRx,
    mem: AppMem,
    layout: Layout,
    to_app: ShmQueue,
    to_fp: ShmQueue,
    _region: Arc<Region>,
    now_ns: u64,
    // The app's view.
    rx_announced: u64,
    rx_consumed: u64,
    rx_checked: u64,
    tx_written: u64,
    tx_freed: u64,
    shut: bool,
    hostile: bool,
    peer_fin_seen: bool,
}

impl Harness {
    fn new(timestamps: bool, rx_ring_log2: u8) -> Harness {
        let rx_buf_size = 1u32 << (12 + rx_ring_log2 % 6);
        let layout = Layout { num_fp_queues: 1, queue_entries: 64, conn_slots: 1, rx_buf_size, tx_buf_size: 1 << 14 };
        let al = std::alloc::Layout::from_size_align(layout.region_size(), 4096).unwrap();
        // SAFETY: non-zero size, valid power-of-two alignment.
        let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(al) }).unwrap();
        let region = Arc::new(Region { ptr, layout: al });
        // SAFETY: the allocation is region_size bytes, 4096-aligned, and lives as long as
        // `region`, which every AppMem clone keeps.
        let mem = unsafe { AppMem::new(ptr, layout.region_size(), region.clone()) };
        mem.write(0, &layout.header().to_bytes());
        for off in [layout.to_fp_offset(0), layout.to_app_offset(0)] {
            mem.queue(off, layout.queue_entries).unwrap().init();
        }
        let to_app = mem.queue(layout.to_app_offset(0), layout.queue_entries).unwrap();
        let to_fp = mem.queue(layout.to_fp_offset(0), layout.queue_entries).unwrap();

        let (mut cmd, cmd_rx) = command_queue(64);
        let (rep_tx, from_fp) = to_slow_queue(1024);
        let io = Script {
            rx_queue: VecDeque::new(),
            rx_lent: Vec::new(),
            tx_bufs: vec![vec![0; MAX_FRAME]; TX_FRAMES],
            tx_free: (0..TX_FRAMES as u64).collect(),
            sent: Vec::new(),
        };
        let mut cfg = FpConfig::new(0, LOCAL, MAC_L);
        cfg.flow_capacity = 16;
        let mut fp = FastPath::new(cfg, io, cmd_rx, rep_tx, None);
        cmd.try_push(Command::AddApp { slot: 0, app: Box::new(AppAttach { app_id: 1, mem: mem.clone(), layout, wake: None }) })
            .unwrap();
        let st = FlowState {
            remote_ip: u32::from(PEER),
            local_port: LOCAL_PORT,
            remote_port: PEER_PORT,
            rcv_nxt: PEER_SEQ0,
            rx_avail: layout.rx_buf_size,
            rx_size_log2: FlowState::size_log2(layout.rx_buf_size),
            rx_base: layout.rx_offset(0) as u32,
            snd_una: OUR_SEQ0,
            snd_wnd: 65535,
            conn: 0,
            tx_base: layout.tx_offset(0) as u32,
            tx_size_log2: FlowState::size_log2(layout.tx_buf_size),
            remote_mac: MAC_P.0,
            mss: MSS,
            flags: if timestamps { F_TS } else { 0 },
            ..FlowState::default()
        };
        cmd.try_push(Command::InstallFlow { flow: 0, state: Box::new(st) }).unwrap();
        let now_ns = 1_000_000_000;
        fp.poll(Instant::from_nanos(now_ns));
        Harness {
            fp,
            cmd,
            from_fp,
            mem,
            layout,
            to_app,
            to_fp,
            _region: region,
            now_ns,
            rx_announced: 0,
            rx_consumed: 0,
            rx_checked: 0,
            tx_written: 0,
            tx_freed: 0,
            shut: false,
            hostile: false,
            peer_fin_seen: false,
        }
    }

    fn flow(&self) -> Option<FlowState> {
        self.fp.flows().get(0).copied()
    }

    fn frame(&self, repr: &TcpRepr, ecn: u8) -> Vec<u8> {
        let payload: Vec<u8> = (0..repr.payload_len as u32).map(|i| peer_byte(repr.seq_number.wrapping_add(i))).collect();
        let tl = repr.header_len() + payload.len();
        let mut b = vec![0u8; 34 + tl];
        EthernetRepr { src_addr: MAC_P, dst_addr: MAC_L, ethertype: EtherType::Ipv4 }.emit(&mut b[..14]).unwrap();
        Ipv4Repr { src_addr: PEER, dst_addr: LOCAL, protocol: 6, payload_len: tl, ttl: 64, ecn: ecn & 3, ident: 1, dont_frag: true }
            .emit(&mut b[14..34])
            .unwrap();
        repr.emit(&mut b[34..], PEER, LOCAL, &payload).unwrap();
        b
    }

    fn segment(&mut self, s: &Segment) {
        let f = self.flow();
        let (rcv_nxt, snd_una, snd_nxt) = f.map_or((PEER_SEQ0, OUR_SEQ0, OUR_SEQ0), |f| (f.rcv_nxt, f.snd_una, f.snd_nxt()));
        let seq = match s.seq {
            SeqAt::Next => rcv_nxt,
            SeqAt::Near(d) => rcv_nxt.wrapping_add(d as i32 as u32),
            SeqAt::Far(d) => rcv_nxt.wrapping_add(d as u32),
        };
        let ack = s.ack.map(|a| match a {
            AckAt::Una => snd_una,
            AckAt::Nxt => snd_nxt,
            AckAt::Plus(d) => snd_una.wrapping_add(u32::from(d)),
            AckAt::Any(v) => v,
        });
        let bits = [
            (0x01, TcpFlags::FIN),
            (0x02, TcpFlags::SYN),
            (0x04, TcpFlags::RST),
            (0x08, TcpFlags::PSH),
            (0x20, TcpFlags::URG),
            (0x40, TcpFlags::ECE),
            (0x80, TcpFlags::CWR),
        ];
        let mut flags = TcpFlags::default();
        for (bit, flag) in bits {
            if s.flags & bit != 0 {
                flags |= flag;
            }
        }
        if ack.is_some() {
            flags |= TcpFlags::ACK;
        }
        let mut sack = SackBlocks::new();
        let room = if s.timestamp.is_some() { 3 } else { 4 };
        for &(start, len) in s.sack.iter().take(room) {
            let l = snd_una.wrapping_add(start as i32 as u32);
            sack.push((l, l.wrapping_add(u32::from(len))));
        }
        let repr = TcpRepr {
            src_port: PEER_PORT,
            dst_port: LOCAL_PORT,
            seq_number: seq,
            ack_number: ack,
            flags,
            window_len: s.window,
            timestamp: s.timestamp,
            sack_ranges: if ack.is_some() { sack } else { SackBlocks::new() },
            payload_len: usize::from(s.payload_len % (MSS + 1)),
            ..TcpRepr::default()
        };
        let mut frame = self.frame(&repr, s.ecn);
        if let Some((at, x)) = s.corrupt {
            let i = usize::from(at) % frame.len();
            frame[i] ^= x;
        }
        if s.duplicate {
            self.fp.io_mut().rx_queue.push_back(frame.clone());
        }
        self.fp.io_mut().rx_queue.push_back(frame);
    }

    fn receive_run(&mut self, segments: u8, len: u16) {
        let Some(f) = self.flow() else { return };
        let len = usize::from(len % MSS) + 1;
        let mut seq = f.rcv_nxt;
        for _ in 0..(segments % 48) + 1 {
            let repr = TcpRepr {
                src_port: PEER_PORT,
                dst_port: LOCAL_PORT,
                seq_number: seq,
                ack_number: Some(f.snd_una),
                flags: TcpFlags::ACK | TcpFlags::PSH,
                window_len: 65535,
                timestamp: if f.has(F_TS) { Some((1, 1)) } else { None },
                payload_len: len,
                ..TcpRepr::default()
            };
            let frame = self.frame(&repr, 0);
            self.fp.io_mut().rx_queue.push_back(frame);
            seq = seq.wrapping_add(len as u32);
        }
    }

    fn push_doorbell(&mut self, d: Desc) {
        if self.to_fp.push(d) {
            self.to_fp.publish();
        }
    }

    fn act(&mut self, a: &Action) {
        match a {
            Action::Receive(s) => self.segment(s),
            Action::ReceiveRun { segments, len } => self.receive_run(*segments, *len),
            Action::AdvanceTime { micros } => self.now_ns += u64::from(micros % 10_000_000) * 1_000,
            Action::AppConsumes { bytes } => {
                let unread = self.rx_announced - self.rx_consumed;
                let n = u64::from(*bytes).min(unread) as u32;
                if n > 0 {
                    self.rx_consumed += u64::from(n);
                    self.push_doorbell(Doorbell::RxConsumed { flow: 0, conn: 0, bytes: n }.encode());
                }
            }
            Action::AppSends { bytes } => {
                let free = u64::from(self.layout.tx_buf_size) - (self.tx_written - self.tx_freed);
                let n = u64::from(*bytes).min(free) as u32;
                if n == 0 || self.shut {
                    return;
                }
                let data: Vec<u8> = (0..n).map(|i| app_byte(self.tx_written as u32 + i)).collect();
                let ok = self.mem.write_ring(
                    self.layout.tx_offset(0) as u64,
                    self.layout.tx_buf_size,
                    self.tx_written as u32,
                    &data,
                );
                assert!(ok, "tx ring write in bounds");
                self.tx_written += u64::from(n);
                self.push_doorbell(Doorbell::TxAdded { flow: 0, conn: 0, bytes: n }.encode());
            }
            Action::AppDrainEvents => self.drain_events(),
            Action::AppShutdown => {
                if !self.shut {
                    self.shut = true;
                    self.push_doorbell(Doorbell::ShutdownTx { flow: 0, conn: 0 }.encode());
                }
            }
            Action::SlowRetransmit => {
                let _ = self.cmd.try_push(Command::Retransmit { flow: 0 });
            }
            Action::HostileDoorbell { kind, flow, conn, bytes } => {
                self.hostile = true;
                let d = Desc { kind: *kind % 4, flow: *flow % 4, conn: *conn % 2, len: *bytes, ..Desc::default() };
                self.push_doorbell(d);
            }
            Action::RawFrame(bytes) => {
                let mut f = bytes.clone();
                f.truncate(MAX_FRAME);
                self.fp.io_mut().rx_queue.push_back(f);
            }
        }
    }

    /// The app reads its event queue; checks the bytes it is told about.
    fn drain_events(&mut self) {
        while let Ok(Some(d)) = self.to_app.pop() {
            match FpEvent::decode(&d) {
                Ok(FpEvent::RxData { conn, bytes, fin }) => {
                    assert_eq!(conn, 0);
                    self.rx_announced += u64::from(bytes);
                    if fin {
                        self.peer_fin_seen = true;
                    }
                }
                Ok(FpEvent::TxFreed { conn, bytes }) => {
                    assert_eq!(conn, 0);
                    self.tx_freed += u64::from(bytes);
                    if !self.hostile {
                        assert!(self.tx_freed <= self.tx_written, "freed {} of {} written", self.tx_freed, self.tx_written);
                    }
                }
                Err(e) => panic!("the fast path posted an undecodable event: {e:?} {d:?}"),
            }
        }
        self.to_app.release();
        if self.hostile {
            return;
        }
        assert!(
            self.rx_announced - self.rx_consumed <= u64::from(self.layout.rx_buf_size),
            "announced {} consumed {}: more unread than the ring holds",
            self.rx_announced,
            self.rx_consumed
        );
        // Check the newly announced bytes: the peer's bytes at sequence PEER_SEQ0 + offset.
        let new = self.rx_announced - self.rx_checked;
        if new > 0 {
            let mut buf = vec![0u8; new as usize];
            let ok = self.mem.read_ring(
                self.layout.rx_offset(0) as u64,
                self.layout.rx_buf_size,
                self.rx_checked as u32,
                &mut buf,
            );
            assert!(ok);
            for (i, &b) in buf.iter().enumerate() {
                let off = self.rx_checked + i as u64;
                let want = peer_byte(PEER_SEQ0.wrapping_add(off as u32));
                assert_eq!(b, want, "received byte at stream offset {off} is wrong");
            }
            self.rx_checked = self.rx_announced;
        }
    }

    fn poll(&mut self) {
        for _ in 0..8 {
            let r = self.fp.poll(Instant::from_nanos(self.now_ns));
            self.now_ns += 1_000;
            while self.from_fp.try_pop().is_some() {}
            self.check_sent();
            if !r.did_work() && self.fp.io().rx_queue.is_empty() {
                break;
            }
        }
        self.check_flow();
    }

    fn check_flow(&self) {
        let Some(f) = self.flow() else { return };
        assert!(f.rx_avail <= f.rx_size(), "rx_avail {} > rx_size {}", f.rx_avail, f.rx_size());
        assert!(
            u64::from(f.tx_sent) + u64::from(f.tx_avail) <= u64::from(f.tx_size()),
            "tx_sent {} + tx_avail {} > tx_size {}",
            f.tx_sent,
            f.tx_avail,
            f.tx_size()
        );
        assert!(f.tx_head < f.tx_size() && f.rx_head < f.rx_size(), "ring positions out of range: {f:?}");
    }

    /// Everything the fast path transmitted is a valid segment of this flow, carrying the
    /// app's bytes.
    fn check_sent(&mut self) {
        let sent = std::mem::take(&mut self.fp.io_mut().sent);
        for frame in sent {
            let eth = EthernetFrame::new_checked(&frame[..]).expect("sent frame has an Ethernet header");
            let er = EthernetRepr::parse(&eth).unwrap();
            assert_eq!((er.src_addr, er.dst_addr, er.ethertype), (MAC_L, MAC_P, EtherType::Ipv4));
            let ip = Ipv4Packet::new_checked(eth.payload()).expect("sent frame has a valid IPv4 header");
            let ir = Ipv4Repr::parse(&ip, true).expect("sent IPv4 header checksum is valid");
            assert_eq!((ir.src_addr, ir.dst_addr, ir.protocol), (LOCAL, PEER, 6));
            let tcp = TcpSegment::new_checked(ip.payload()).expect("sent TCP header is valid");
            let tr = TcpRepr::parse(&tcp, LOCAL, PEER, true).expect("sent TCP checksum is valid");
            assert_eq!((tr.src_port, tr.dst_port), (LOCAL_PORT, PEER_PORT));
            assert!(tr.payload_len <= usize::from(MSS), "segment of {} bytes, MSS {MSS}", tr.payload_len);
            if self.hostile {
                continue;
            }
            let first = tr.seq_number.wrapping_sub(OUR_SEQ0);
            for (i, &b) in tcp.payload().iter().enumerate() {
                let off = first.wrapping_add(i as u32);
                assert!(
                    u64::from(off) < self.tx_written,
                    "sent stream offset {off}, but the app wrote only {} bytes",
                    self.tx_written
                );
                assert_eq!(b, app_byte(off), "sent byte at stream offset {off} is wrong");
            }
        }
    }
}

fuzz_target!(|input: Input| {
    let mut h = Harness::new(input.timestamps, input.rx_ring_log2);
    for a in input.actions.iter().take(256) {
        h.act(a);
        h.poll();
    }
    h.drain_events();
    h.check_flow();
});
