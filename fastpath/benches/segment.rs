//! Per-segment cost of the fast path: an in-order 64-byte data segment including the
//! ACK it causes, and a pure ACK. The link is a replay device that hands out pre-built
//! frames without copying and discards transmitted ones, so what is measured is the
//! fast path itself: parse + checksum verification, flow lookup, receive processing,
//! the copy into the application's ring, the event to the application, and building and
//! checksumming the ACK.
//!
//! Two scales: one flow (everything stays in L1), and 100,000 installed flows with each
//! segment's flow drawn at random (flow state, index bucket and receive ring are cache
//! misses, as at a server holding 100k connections). The `flow_lookup` group measures
//! the flow table alone at 100k flows: random hits, misses, and a 32-key batch with the
//! bucket prefetch the receive loop does.
//!
//! Run: `cargo bench -p tas-fastpath --no-default-features --bench segment`
//! (one group: append its name, e.g. `-- flow_lookup`)
#![allow(unsafe_code)]

#[path = "support/replay.rs"]
mod replay;

use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant as StdInstant};

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use replay::*;
use tas_fastpath::flow::{FlowKey, FlowState, FlowTable};
use tas_fastpath::wire;

/// Segments per timed round: small enough that no 4 KiB ring of the 100k-flow case
/// fills between two drains (a flow would need 64 of the 2,048 segments).
const ROUND: usize = BATCH * 64;

fn per_segment(c: &mut Criterion) {
    let mut g = c.benchmark_group("fastpath");
    g.throughput(Throughput::Elements(1));
    for (name, flows, payload, per_burst) in [
        ("data_64B_batch32_one_ack", 1u32, 64usize, BATCH),
        ("data_64B_ack_each", 1, 64, 1),
        ("pure_ack", 1, 0, BATCH),
        ("100k_flows_random/data_64B_batch32", MANY, 64, BATCH),
        ("100k_flows_random/data_64B_ack_each", MANY, 64, 1),
    ] {
        let mut b = setup(flows);
        b.fp.io_mut().per_burst = per_burst;
        let random = flows > 1;
        let delivered0 = b.fp.counters().rx_payload_bytes.load(Relaxed);
        let mut sent = 0u64;
        g.bench_function(name, |bench| {
            bench.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                let mut left = iters as usize;
                while left > 0 {
                    let n = left.min(ROUND);
                    b.load(n, payload, random);
                    total += b.run(n);
                    b.drain_app();
                    sent += (n * payload) as u64;
                    left -= n;
                }
                total
            })
        });
        let acks = b.fp.io().tx_count;
        // (A filter that skips this case leaves nothing sent.)
        assert!(sent == 0 || acks > 0, "data segments must be acknowledged");
        // Every payload byte went in order into its ring: nothing was dropped or taken
        // for out-of-order by a mistake of the bench.
        assert_eq!(
            b.fp.counters().rx_payload_bytes.load(Relaxed) - delivered0,
            sent,
            "{name}: every byte delivered"
        );
        let _ = wire::ethernet::HEADER_LEN;
    }
    g.finish();
}

/// The flow table alone at 100k flows: lookups of established flows drawn at random (the
/// index is 2 x 2^17 buckets, far beyond L1/L2, so most lookups miss the cache), lookups
/// of absent keys, and batches of 32 where every bucket is prefetched first, as the
/// receive loop does (fastpath/src/core.rs `receive`).
fn flow_lookup(c: &mut Criterion) {
    let mut g = c.benchmark_group("flow_lookup");
    g.throughput(Throughput::Elements(1));
    for flows in [1u32, MANY] {
        let mut t = FlowTable::new(flows, 0x5eed);
        for i in 0..flows {
            let (ip, port) = peer_of(i);
            let st = FlowState {
                remote_ip: u32::from(ip),
                local_port: 7,
                remote_port: port,
                ..FlowState::default()
            };
            t.insert(i, st).unwrap();
        }
        let mut rng = Rng(42);
        // 1M random draws, precomputed: the timed loop only looks up.
        let hits: Vec<(FlowKey, u32)> = (0..1 << 20)
            .map(|_| {
                let i = rng.below(flows);
                let (ip, port) = peer_of(i);
                (FlowKey::new(u32::from(ip), port, 7), i)
            })
            .collect();
        let misses: Vec<FlowKey> = (0..1 << 20)
            .map(|_| {
                // Peers 10.0.2.x do not exist in the table.
                let ip = u32::from(Ipv4Addr::new(10, 0, 2, 0)) + rng.below(256);
                FlowKey::new(ip, 10_000 + rng.below(50_000) as u16, 7)
            })
            .collect();
        for k in &hits[..1000] {
            assert_eq!(t.lookup(k.0), Some(k.1), "every installed flow is found");
        }
        for k in &misses[..1000] {
            assert_eq!(t.lookup(*k), None);
        }
        let label = if flows == 1 { "1_flow" } else { "100k_flows" };
        let mut pos = 0usize;
        g.bench_function(format!("{label}/hit_random"), |bench| {
            bench.iter(|| {
                pos = (pos + 1) & ((1 << 20) - 1);
                let (k, want) = hits[pos];
                // The result feeds the next iteration's address, as a packet's flow
                // state is used right after its lookup: no overlap of independent
                // lookups flatters the number.
                let got = t.lookup(black_box(k));
                pos = (pos + (got != Some(want)) as usize) & ((1 << 20) - 1);
                got
            })
        });
        g.bench_function(format!("{label}/miss_random"), |bench| {
            bench.iter(|| {
                pos = (pos + 1) & ((1 << 20) - 1);
                t.lookup(black_box(misses[pos]))
            })
        });
        g.bench_function(format!("{label}/hit_batch32_prefetched"), |bench| {
            bench.iter_custom(|iters| {
                let batches = (iters as usize).div_ceil(BATCH);
                let mut found = 0u64;
                let start = StdInstant::now();
                for _ in 0..batches {
                    pos = (pos + BATCH) & ((1 << 20) - 1);
                    let batch = &hits[pos..(pos + BATCH).min(1 << 20)];
                    for (k, _) in batch {
                        t.prefetch(*k);
                    }
                    for (k, _) in batch {
                        found += t.lookup(black_box(*k)).is_some() as u64;
                    }
                }
                let el = start.elapsed();
                black_box(found);
                // Report per lookup, scaled to the iterations asked for.
                el * iters as u32 / (batches * BATCH).max(1) as u32
            })
        });
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

criterion_group!(benches, per_segment, flow_lookup, cycle_accounting);
criterion_main!(benches);
