//! Per-segment cost of the fast path: an in-order 64-byte data segment including the
//! ACK it causes, and a pure ACK. The link is a replay device that hands out pre-built
//! frames without copying and discards transmitted ones, so what is measured is the
//! fast path itself: parse + checksum verification, flow lookup, receive processing,
//! the copy into the application's ring, the event to the application, and building and
//! checksumming the ACK.
//!
//! Run: `cargo bench -p tas-fastpath --bench segment`
#![allow(unsafe_code)]

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use tas_fastpath::appmem::AppMem;
use tas_fastpath::core::{FastPath, FpConfig};
use tas_fastpath::ctl::{command_queue, to_slow_queue, AppAttach, Command, CommandTx};
use tas_fastpath::flow::{FlowState, F_TS};
use tas_fastpath::io::{PacketIo, RxFrame, TxFrame};
use tas_fastpath::time::Instant;
use tas_fastpath::wire::{
    self, EtherType, EthernetAddress, EthernetRepr, Ipv4Repr, TcpFlags, TcpRepr,
};
use tas_proto::queue::ShmQueue;
use tas_proto::shm::{Doorbell, FpEvent, Layout};

/// Replays pre-built frames; transmitted frames are dropped (one reused buffer).
struct Replay {
    frames: Vec<Vec<u8>>,
    next: usize,
    limit: usize,
    /// Frames handed out per burst (1 = every segment gets its own ACK).
    per_burst: usize,
    tx_buf: Vec<u8>,
    tx_count: u64,
}

impl PacketIo for Replay {
    fn rx_burst(&mut self, out: &mut [RxFrame]) -> usize {
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

struct Region {
    ptr: NonNull<u8>,
    layout: std::alloc::Layout,
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

const LOCAL: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const PEER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
const MAC_L: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 1]);
const MAC_P: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 2]);
const BATCH: usize = 32;

fn frame(seq: u32, ack: u32, payload: &[u8], ts: u32) -> Vec<u8> {
    let tcp = TcpRepr {
        src_port: 40000,
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
        src_addr: PEER,
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
    tcp.emit(&mut b[34..], PEER, LOCAL, payload).unwrap();
    b
}

struct Bench {
    fp: FastPath<Replay>,
    _cmd: CommandTx,
    to_app: ShmQueue,
    to_fp: ShmQueue,
    _region: Arc<Region>,
    rcv_nxt: u32,
    now: u64,
}

fn setup() -> Bench {
    let layout = Layout {
        num_fp_queues: 1,
        queue_entries: 4096,
        conn_slots: 1,
        rx_buf_size: 1 << 20,
        tx_buf_size: 1 << 16,
    };
    let al = std::alloc::Layout::from_size_align(layout.region_size(), 4096).unwrap();
    // SAFETY: non-zero size, valid alignment.
    let ptr = NonNull::new(unsafe { std::alloc::alloc_zeroed(al) }).unwrap();
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

    let (mut cmd_tx, cmd_rx) = command_queue(16);
    let (rep_tx, _rep_rx) = to_slow_queue(16);
    let io = Replay {
        frames: Vec::new(),
        next: 0,
        limit: 0,
        per_burst: BATCH,
        tx_buf: vec![0; 2048],
        tx_count: 0,
    };
    let mut fp = FastPath::new(FpConfig::new(0, LOCAL, MAC_L), io, cmd_rx, rep_tx, None);
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
    let st = FlowState {
        remote_ip: u32::from(PEER),
        local_port: 7,
        remote_port: 40000,
        rcv_nxt: 1000,
        rx_avail: layout.rx_buf_size,
        rx_size_log2: FlowState::size_log2(layout.rx_buf_size),
        rx_base: layout.rx_offset(0) as u32,
        snd_una: 5000,
        snd_wnd: 65535,
        conn: 0,
        tx_base: layout.tx_offset(0) as u32,
        tx_size_log2: FlowState::size_log2(layout.tx_buf_size),
        remote_mac: MAC_P.0,
        mss: 1448,
        flags: F_TS,
        ..FlowState::default()
    };
    cmd_tx
        .try_push(Command::InstallFlow {
            flow: 0,
            state: Box::new(st),
        })
        .unwrap();
    fp.poll(Instant::from_nanos(1));
    Bench {
        fp,
        _cmd: cmd_tx,
        to_app,
        to_fp,
        _region: region,
        rcv_nxt: 1000,
        now: 1_000_000,
    }
}

impl Bench {
    /// Prepare `n` frames (outside the timed part).
    fn load(&mut self, n: usize, payload: usize) {
        let data = vec![0xabu8; payload];
        let io = self.fp.io_mut();
        io.frames.clear();
        for i in 0..n {
            let seq = self.rcv_nxt.wrapping_add((i * payload) as u32);
            io.frames.push(frame(seq, 5000, &data, i as u32));
        }
        io.next = 0;
        io.limit = n;
        self.rcv_nxt = self.rcv_nxt.wrapping_add((n * payload) as u32);
    }
    /// Play the application: take events, give the receive space back (untimed).
    fn drain_app(&mut self) {
        let mut consumed = 0u32;
        while let Ok(Some(d)) = self.to_app.pop() {
            if let Ok(FpEvent::RxData { bytes, .. }) = FpEvent::decode(&d) {
                consumed += bytes;
            }
        }
        self.to_app.release();
        if consumed > 0 {
            assert!(self.to_fp.push(
                Doorbell::RxConsumed {
                    flow: 0,
                    conn: 0,
                    bytes: consumed
                }
                .encode()
            ));
            self.to_fp.publish();
        }
    }
    fn run(&mut self, n: usize) -> Duration {
        let start = StdInstant::now();
        let mut done = 0;
        while done < n {
            self.now += 1_000;
            done += self.fp.poll(Instant::from_nanos(self.now)).rx;
        }
        start.elapsed()
    }
}

fn per_segment(c: &mut Criterion) {
    let mut g = c.benchmark_group("fastpath");
    g.throughput(Throughput::Elements(1));
    for (name, payload, per_burst) in [
        ("data_64B_batch32_one_ack", 64usize, BATCH),
        ("data_64B_ack_each", 64, 1),
        ("pure_ack", 0, BATCH),
    ] {
        let mut b = setup();
        b.fp.io_mut().per_burst = per_burst;
        g.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(BATCH * 64);
                    b.load(n, payload);
                    total += b.run(n);
                    b.drain_app();
                    left -= n;
                }
                total
            })
        });
        let acks = b.fp.io().tx_count;
        assert!(
            payload == 0 || acks > 0,
            "data segments must be acknowledged"
        );
        let _ = b.fp.counters();
        let _ = wire::ethernet::HEADER_LEN;
    }
    g.finish();
}

/// What the cycle accounting adds to a poll that did work (fastpath/src/cycles.rs): three
/// tick reads (start, before the kick, end) and two relaxed load/stores. Compare with the per-segment
/// cases: a batch of 32 pays it once, a segment alone pays it whole.
fn cycle_accounting(c: &mut Criterion) {
    let counters = tas_fastpath::cycles::CycleCounters::default();
    c.bench_function("cycle_accounting_per_poll", |b| {
        b.iter(|| {
            let start = tas_fastpath::cycles::now();
            let kick = tas_fastpath::cycles::kick_start(black_box(true));
            counters.record(black_box(start), black_box(kick), black_box(true));
        })
    });
    black_box(&counters);
}

criterion_group!(benches, per_segment, cycle_accounting);
criterion_main!(benches);
