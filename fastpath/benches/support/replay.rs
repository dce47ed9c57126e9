//! The replay device and the one-app fast path shared by the per-segment benchmark
//! (`benches/segment.rs`) and the steady-state allocation test
//! (`tests/steady_state_alloc.rs`): pre-built frames are handed to the fast path without
//! copying, transmitted frames are counted and dropped, and the "application" is played
//! by taking events and giving receive space back.
#![allow(dead_code, unsafe_code)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use tas_fastpath::appmem::AppMem;
use tas_fastpath::core::{FastPath, FpConfig};
use tas_fastpath::ctl::{command_queue, to_slow_queue, AppAttach, Command, CommandTx};
use tas_fastpath::flow::{FlowState, F_TS};
use tas_fastpath::io::{PacketIo, RxFrame, TxFrame};
use tas_fastpath::time::Instant;
use tas_fastpath::wire::{
    EtherType, EthernetAddress, EthernetRepr, Ipv4Repr, TcpFlags, TcpRepr,
};
use tas_proto::queue::ShmQueue;
use tas_proto::shm::{Doorbell, FpEvent, Layout};

/// Replays pre-built frames; transmitted frames are dropped (one reused buffer).
pub struct Replay {
    pub frames: Vec<Vec<u8>>,
    pub next: usize,
    pub limit: usize,
    /// Frames handed out per burst (1 = every segment gets its own ACK).
    pub per_burst: usize,
    pub tx_buf: Vec<u8>,
    pub tx_count: u64,
    /// Run once at the next receive burst: lets a test act while the core is between
    /// taking its commands and taking the doorbells.
    pub on_rx: Option<Box<dyn FnMut()>>,
}

impl PacketIo for Replay {
    fn rx_burst(&mut self, out: &mut [RxFrame]) -> usize {
        if let Some(mut hook) = self.on_rx.take() {
            hook();
        }
        let n = out.len().min(self.limit - self.next).min(self.per_burst);
        for (i, o) in out[..n].iter_mut().enumerate() {
            let idx = self.next + i;
            *o = RxFrame {
                addr: idx as u64,
                len: self.frames[idx].len() as u32,
                queue: 0,
            };
        }
        self.next += n;
        n
    }
    fn rx_data(&self, f: &RxFrame) -> &[u8] {
        &self.frames[f.addr as usize]
    }
    fn rx_release(&mut self, _frames: &[RxFrame]) {}
    fn tx_alloc(&mut self) -> Option<TxFrame> {
        Some(TxFrame { addr: 0 })
    }
    fn tx_data(&mut self, _f: &TxFrame) -> &mut [u8] {
        &mut self.tx_buf
    }
    fn tx_submit(&mut self, _f: TxFrame, len: usize) {
        self.tx_count += 1;
        black_box(&self.tx_buf[..len]);
    }
    fn tx_abort(&mut self, _f: TxFrame) {}
    fn tx_flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
    fn poll_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }
}

pub struct Region {
    pub ptr: NonNull<u8>,
    pub layout: std::alloc::Layout,
}
// SAFETY: owned allocation, accessed only through AppMem copies.
unsafe impl Send for Region {}
// SAFETY: as above.
unsafe impl Sync for Region {}
impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout in `setup`.
        unsafe { std::alloc::dealloc(self.ptr.as_ptr(), self.layout) }
    }
}

pub const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
pub const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
pub const MAC_L: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
pub const MAC_P: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
pub const BATCH: usize = 32;

/// Flows in the large-scale cases (issue 8: "flow lookup under 30 ns at 100k flows").
pub const MANY: u32 = 100_000;

/// The peer address and port of flow `i`: 100,000 flows need more than one peer
/// address (ports are 16 bits), so flows spread over peers 10.0.1.0 + i / 50,000.
pub fn peer_of(i: u32) -> (Ipv4Addr, u16) {
    if i == 0 {
        return (PEER, 40000);
    }
    let ip = u32::from(Ipv4Addr::new(10, 0, 1, 0)) + i / 50_000;
    (Ipv4Addr::from(ip), 10_000 + (i % 50_000) as u16)
}

pub fn frame(peer: (Ipv4Addr, u16), seq: u32, ack: u32, payload: &[u8], ts: u32) -> Vec<u8> {
    let (peer_ip, peer_port) = peer;
    let tcp = TcpRepr {
        src_port: peer_port,
        dst_port: 7,
        seq_number: seq,
        ack_number: Some(ack),
        flags: TcpFlags::ACK
            | if payload.is_empty() {
                TcpFlags::default()
            } else {
                TcpFlags::PSH
            },
        window_len: 65535,
        timestamp: Some((ts, 1)),
        payload_len: payload.len(),
        ..TcpRepr::default()
    };
    let tl = tcp.header_len() + payload.len();
    let mut b = vec![0u8; 34 + tl];
    EthernetRepr {
        src_addr: MAC_P,
        dst_addr: MAC_L,
        ethertype: EtherType::Ipv4,
    }
    .emit(&mut b[..14])
    .unwrap();
    Ipv4Repr {
        src_addr: peer_ip,
        dst_addr: LOCAL,
        protocol: 6,
        payload_len: tl,
        ttl: 64,
        ecn: 0,
        ident: 1,
        dont_frag: true,
    }
    .emit(&mut b[14..34])
    .unwrap();
    tcp.emit(&mut b[34..], peer_ip, LOCAL, payload).unwrap();
    b
}

/// xorshift64*: a fixed-seed generator, so every run draws the same flows.
pub struct Rng(pub u64);
impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u32) -> u32 {
        ((self.next() >> 32) * n as u64 >> 32) as u32
    }
}

pub struct Bench {
    pub fp: FastPath<Replay>,
    pub _cmd: CommandTx,
    pub to_app: ShmQueue,
    pub to_fp: ShmQueue,
    pub _region: Arc<Region>,
    /// Next expected sequence number per flow (flow index = connection slot).
    pub rcv_nxt: Vec<u32>,
    /// Bytes delivered and not yet given back, per connection (scratch for drain_app).
    pub consumed: Vec<u32>,
    /// The state each flow was installed with.
    pub states: Vec<FlowState>,
    pub rng: Rng,
    pub ts: u32,
    pub now: u64,
}

/// A fast path with one app and `flows` established flows, flow `i` in connection slot
/// `i` (receive rings of 1 MiB for one flow; 4 KiB, the smallest allowed, for many).
pub fn setup(flows: u32) -> Bench {
    let layout = Layout {
        num_fp_queues: 1,
        queue_entries: 4096,
        conn_slots: flows,
        rx_buf_size: if flows == 1 { 1 << 20 } else { 4096 },
        tx_buf_size: if flows == 1 { 1 << 16 } else { 4096 },
    };
    layout
        .check()
        .expect("bench layout within the ABI's limits");
    let al = std::alloc::Layout::from_size_align(layout.region_size(), 4096).unwrap();
    // SAFETY: non-zero size, valid alignment.
    let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(al) }).unwrap();
    // Fault every page in now (untimed): a service's rings are touched once and stay
    // mapped, so the first touch of 100k rings must not land in the measured segments.
    for off in (0..layout.region_size()).step_by(4096) {
        // SAFETY: `off` is inside the allocation of region_size bytes just made, which
        // nothing else references yet.
        unsafe { std::ptr::write_volatile(ptr.as_ptr().add(off), 0) };
    }
    let region = Arc::new(Region { ptr, layout: al });
    // SAFETY: the allocation is region_size bytes and lives as long as `region`.
    let mem = unsafe { AppMem::new(ptr, layout.region_size(), region.clone()) };
    mem.write(0, &layout.header().to_bytes());
    for off in [layout.to_fp_offset(0), layout.to_app_offset(0)] {
        mem.queue(off, layout.queue_entries).unwrap().init();
    }
    let to_app = mem
        .queue(layout.to_app_offset(0), layout.queue_entries)
        .unwrap();
    let to_fp = mem
        .queue(layout.to_fp_offset(0), layout.queue_entries)
        .unwrap();

    let (mut cmd_tx, cmd_rx) = command_queue(1024);
    let (rep_tx, _rep_rx) = to_slow_queue(16);
    let io = Replay {
        frames: Vec::new(),
        next: 0,
        limit: 0,
        per_burst: BATCH,
        tx_buf: vec![0; 2048],
        tx_count: 0,
        on_rx: None,
    };
    let mut cfg = FpConfig::new(0, LOCAL, MAC_L);
    cfg.flow_capacity = flows.max(cfg.flow_capacity);
    let mut fp = FastPath::new(cfg, io, cmd_rx, rep_tx, None);
    use ringbuf::traits::Producer;
    cmd_tx
        .try_push(Command::AddApp {
            slot: 0,
            app: Box::new(AppAttach {
                app_id: 1,
                mem,
                layout,
                wake: None,
            }),
        })
        .unwrap();
    let mut now = 1u64;
    let mut states = Vec::new();
    for i in 0..flows {
        let (ip, port) = peer_of(i);
        let st = FlowState {
            remote_ip: u32::from(ip),
            local_port: 7,
            remote_port: port,
            rcv_nxt: 1000,
            rx_avail: layout.rx_buf_size,
            rx_size_log2: FlowState::size_log2(layout.rx_buf_size),
            rx_base: layout.rx_offset(i) as u32,
            snd_una: 5000,
            snd_wnd: 65535,
            conn: i,
            tx_base: layout.tx_offset(i) as u32,
            tx_size_log2: FlowState::size_log2(layout.tx_buf_size),
            remote_mac: MAC_P.0,
            mss: 1448,
            flags: F_TS,
            ..FlowState::default()
        };
        states.push(st);
        let mut cmd = Command::InstallFlow {
            flow: i,
            state: Box::new(st),
        };
        // The command queue is bounded: let the core drain it when full.
        while let Err(c) = cmd_tx.try_push(cmd) {
            cmd = c;
            fp.poll(Instant::from_nanos(now));
            now += 1;
        }
    }
    fp.poll(Instant::from_nanos(now));
    assert_eq!(
        fp.counters().flows.load(Relaxed),
        flows as u64,
        "every flow installed"
    );
    Bench {
        fp,
        _cmd: cmd_tx,
        to_app,
        to_fp,
        _region: region,
        rcv_nxt: vec![1000; flows as usize],
        consumed: vec![0; flows as usize],
        states,
        rng: Rng(0x9E37_79B9_7F4A_7C15),
        ts: 1,
        now: 1_000_000,
    }
}

impl Bench {
    /// Prepare `n` frames (outside the timed part), each for flow 0 or, with `random`,
    /// for a flow drawn uniformly from all installed flows.
    pub fn load(&mut self, n: usize, payload: usize, random: bool) {
        let data = vec![0xabu8; payload];
        let flows = self.rcv_nxt.len() as u32;
        let mut frames = std::mem::take(&mut self.fp.io_mut().frames);
        frames.clear();
        for _ in 0..n {
            let f = if random { self.rng.below(flows) } else { 0 };
            let seq = self.rcv_nxt[f as usize];
            self.rcv_nxt[f as usize] = seq.wrapping_add(payload as u32);
            self.ts = self.ts.wrapping_add(1);
            frames.push(frame(peer_of(f), seq, 5000, &data, self.ts));
        }
        let io = self.fp.io_mut();
        io.frames = frames;
        io.next = 0;
        io.limit = n;
    }
    /// Play the application: take events, give the receive space back (untimed).
    pub fn drain_app(&mut self) {
        self.give_back();
        // Let the core take the doorbells back (untimed), so the timed polls only
        // receive.
        self.poll_once();
    }
    /// The application's side of [`Bench::drain_app`]: take the events and post the
    /// doorbells that give the receive space back.
    pub fn give_back(&mut self) {
        let mut touched = Vec::new();
        while let Ok(Some(d)) = self.to_app.pop() {
            if let Ok(FpEvent::RxData { conn, bytes, .. }) = FpEvent::decode(&d) {
                if self.consumed[conn as usize] == 0 {
                    touched.push(conn);
                }
                self.consumed[conn as usize] += bytes;
            }
        }
        self.to_app.release();
        for conn in touched {
            let bytes = std::mem::take(&mut self.consumed[conn as usize]);
            assert!(self.to_fp.push(
                Doorbell::RxConsumed {
                    flow: conn,
                    conn,
                    bytes,
                }
                .encode()
            ));
        }
        self.to_fp.publish();
    }
    /// One poll of the fast path, 1 µs after the last.
    pub fn poll_once(&mut self) {
        self.now += 1_000;
        self.fp.poll(Instant::from_nanos(self.now));
    }
    pub fn run(&mut self, n: usize) -> Duration {
        let start = StdInstant::now();
        let mut done = 0;
        while done < n {
            self.now += 1_000;
            done += self.fp.poll(Instant::from_nanos(self.now)).rx;
        }
        start.elapsed()
    }
}

