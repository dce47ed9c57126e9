//! Congestion control on the simulated network: 2 to 8 bulk flows from host B to host A
//! through a bottleneck (the in-memory link's rate-limited queue with a bounded buffer
//! and CE marking above K), under each algorithm. Every scenario asserts fairness
//! (Jain's index over the flows' goodputs in a stated measurement phase), utilisation,
//! and for DCTCP a short queue; the whole table is a snapshot
//! (`tests/snapshots/cc-fairness.txt`) so any change of behaviour shows as a diff.
//! A fixed-rate flow is checked for pacing accuracy from the receiver's side.
//!
//! Regenerate the snapshot after an intended change with `UPDATE_SNAPSHOTS=1`.

mod common;

use std::net::SocketAddrV4;
use std::time::Duration;

use common::*;
use libtas::{ConnId, ConnState, Error};
use tas_fastpath::io::mem::Impairments;
use tas_fastpath::time::{Clock, Instant};
use tas_slowpath::cc::Algorithm;

/// The bottleneck: 1 Gbit/s, 20 µs one-way delay, a 400 kB buffer, ECN marking above
/// K = 30 kB (about 20 full frames: the DCTCP paper's K for 1 Gbit/s).
fn bottleneck() -> Impairments {
    Impairments {
        rate_bps: 1_000_000_000,
        delay: Duration::from_micros(20),
        queue_bytes: 400_000,
        ecn_threshold_bytes: 30_000,
        ..Impairments::default()
    }
}

/// One flow of a scenario: when it starts and (optionally) stops, in ms.
#[derive(Clone, Copy)]
struct FlowSpec {
    start_ms: u64,
    stop_ms: Option<u64>,
}

/// A phase over which fairness is measured: `[from_ms, to_ms)`, the flows active then.
#[derive(Clone, Copy)]
struct Phase {
    from_ms: u64,
    to_ms: u64,
}

struct Outcome {
    /// Bytes received per flow per `WINDOW_MS` window.
    windows: Vec<Vec<u64>>,
    /// Bottleneck queue percentiles (p50, p90, p99, max) over the last phase, bytes.
    queue: Vec<u64>,
    ce_marked: u64,
    drops: u64,
}

const WINDOW_MS: u64 = 5;

fn ms(t: Instant, t0: Instant) -> u64 {
    (t.as_nanos() - t0.as_nanos()) / 1_000_000
}

/// Run `flows` from B to A under `alg` for `end_ms`; the queue statistics cover
/// `[queue_from_ms, end_ms)`.
fn run(alg: Algorithm, imp: Impairments, flows: &[FlowSpec], end_ms: u64, queue_from_ms: u64) -> Outcome {
    let mut w = World::new(imp, 11);
    w.a.slow.set_congestion_control(None, alg, None);
    w.b.slow.set_congestion_control(None, alg, None);
    let mut server = context(&mut w.a, IP_A, "sink");
    let mut client = context(&mut w.b, IP_B, "source");
    let l = listen(&mut w, &mut server, &mut client, 5001);
    let t0 = w.clock.now();
    let n = flows.len();
    let mut conns: Vec<Option<ConnId>> = vec![None; n];
    let mut closed = vec![false; n];
    let mut ports: Vec<u16> = vec![0; n];
    let mut accepted: Vec<(ConnId, usize)> = Vec::new();
    let nwin = (end_ms / WINDOW_MS) as usize;
    let mut windows = vec![vec![0u64; n]; nwin];
    let chunk = vec![0x5au8; 64 * 1024];
    let mut rbuf = vec![0u8; 64 * 1024];
    let mut queue_reset = false;
    let (mut ce_before, mut drops_before) = (0, 0);
    loop {
        let now_ms = ms(w.clock.now(), t0);
        if now_ms >= end_ms {
            break;
        }
        if !queue_reset && now_ms >= queue_from_ms {
            w.b.cores[0].io().reset_queue_stats();
            let st = w.b.cores[0].io().tx_stats();
            (ce_before, drops_before) = (st.ce_marked, st.queue_drops);
            queue_reset = true;
        }
        w.step(&mut [&mut server, &mut client]);
        for (i, f) in flows.iter().enumerate() {
            match conns[i] {
                None if now_ms >= f.start_ms => {
                    conns[i] = Some(client.connect_start(SocketAddrV4::new(IP_A, 5001)).unwrap());
                }
                Some(c) if !closed[i] => {
                    if let ConnState::Failed(e) = client.state(c) {
                        panic!("flow {i} failed: {e}");
                    }
                    if client.state(c) == ConnState::Connecting {
                        continue;
                    }
                    if ports[i] == 0 {
                        ports[i] = client.local_port(c).unwrap_or(0);
                    }
                    if f.stop_ms.is_some_and(|s| now_ms >= s) {
                        client.abort(c).unwrap();
                        closed[i] = true;
                        continue;
                    }
                    let room = client.writable(c).min(chunk.len());
                    if room > 0 {
                        match client.send(c, &chunk[..room]) {
                            Ok(_) | Err(Error::WouldBlock) => {}
                            Err(e) => panic!("send: {e}"),
                        }
                    }
                }
                _ => {}
            }
        }
        while let Ok(Some(sc)) = server.accept(l) {
            let port = server.peer_addr(sc).map_or(0, |a| a.port());
            let i = ports.iter().position(|&p| p == port).or_else(|| {
                // The client may not have seen its connection established yet.
                conns.iter().enumerate().find_map(|(i, c)| c.and_then(|c| (client.local_port(c) == Some(port)).then_some(i)))
            });
            accepted.push((sc, i.expect("accepted connection belongs to a flow")));
        }
        let win = ((now_ms / WINDOW_MS) as usize).min(nwin - 1);
        for &(sc, i) in &accepted {
            loop {
                match server.recv(sc, &mut rbuf) {
                    Ok(0) => break,
                    Ok(k) => windows[win][i] += k as u64,
                    Err(Error::WouldBlock) => break,
                    Err(_) => break, // reset by an aborting client
                }
            }
        }
    }
    if std::env::var_os("TAS_CC_DEBUG").is_some() {
        for ci in w.b.slow.conn_infos() {
            eprintln!("{alg} {} flows: {:?} {:?}", n, ci.local_port, ci.cc);
        }
    }
    let port = w.b.cores[0].io();
    let st = port.tx_stats();
    Outcome {
        windows,
        queue: port.tx_queue_percentiles(&[50.0, 90.0, 99.0, 100.0]),
        ce_marked: st.ce_marked - ce_before,
        drops: st.queue_drops - drops_before,
    }
}

/// Jain's fairness index of `x`.
fn jain(x: &[f64]) -> f64 {
    let s: f64 = x.iter().sum();
    let q: f64 = x.iter().map(|v| v * v).sum();
    if q == 0.0 {
        return 0.0;
    }
    s * s / (x.len() as f64 * q)
}

fn active(f: &FlowSpec, p: &Phase) -> bool {
    f.start_ms <= p.from_ms && f.stop_ms.is_none_or(|s| s >= p.to_ms)
}

/// Goodput (Mbit/s) per flow active during `p`.
fn phase_rates(o: &Outcome, flows: &[FlowSpec], p: &Phase) -> Vec<f64> {
    let (a, b) = ((p.from_ms / WINDOW_MS) as usize, (p.to_ms / WINDOW_MS) as usize);
    let secs = (p.to_ms - p.from_ms) as f64 / 1000.0;
    flows
        .iter()
        .enumerate()
        .filter(|(_, f)| active(f, p))
        .map(|(i, _)| o.windows[a..b].iter().map(|w| w[i]).sum::<u64>() as f64 * 8.0 / secs / 1e6)
        .collect()
}

/// Time (ms after `change_ms`) from which every 10 ms window up to `to_ms` has a Jain
/// index of at least 0.95 among the flows active in `p`; None if never.
fn convergence_ms(o: &Outcome, flows: &[FlowSpec], change_ms: u64, p: &Phase) -> Option<u64> {
    let idx: Vec<usize> = (0..flows.len()).filter(|&i| active(&flows[i], p)).collect();
    let step = 10 / WINDOW_MS as usize;
    let first = (change_ms / WINDOW_MS) as usize;
    let last = (p.to_ms / WINDOW_MS) as usize;
    let mut from = None;
    let mut w = first;
    while w + step <= last {
        let x: Vec<f64> = idx.iter().map(|&i| o.windows[w..w + step].iter().map(|v| v[i]).sum::<u64>() as f64).collect();
        if jain(&x) >= 0.95 {
            from.get_or_insert(w);
        } else {
            from = None;
        }
        w += step;
    }
    from.map(|w| (w as u64 * WINDOW_MS).saturating_sub(change_ms))
}

struct Scenario {
    name: &'static str,
    alg: Algorithm,
    flows: Vec<FlowSpec>,
    /// (time of the last change before the phase, phase)
    phases: Vec<(u64, Phase)>,
    end_ms: u64,
}

fn together(n: usize, end_ms: u64, settle_ms: u64) -> (Vec<FlowSpec>, Vec<(u64, Phase)>) {
    let flows = (0..n).map(|i| FlowSpec { start_ms: i as u64, stop_ms: None }).collect();
    (flows, vec![(n as u64, Phase { from_ms: settle_ms, to_ms: end_ms })])
}

/// Two flows; a third joins at 100 ms; the first leaves at 200 ms.
fn join_leave() -> (Vec<FlowSpec>, Vec<(u64, Phase)>) {
    let flows = vec![
        FlowSpec { start_ms: 0, stop_ms: Some(200) },
        FlowSpec { start_ms: 1, stop_ms: None },
        FlowSpec { start_ms: 100, stop_ms: None },
    ];
    let phases = vec![
        (1, Phase { from_ms: 50, to_ms: 100 }),
        (100, Phase { from_ms: 150, to_ms: 200 }),
        (200, Phase { from_ms: 250, to_ms: 300 }),
    ];
    (flows, phases)
}

#[test]
fn fairness_and_queue_snapshot() {
    let mut scenarios = Vec::new();
    let only = std::env::var("TAS_CC_ONLY").ok();
    for alg in [Algorithm::DctcpWindow, Algorithm::DctcpRate, Algorithm::Timely, Algorithm::Cubic] {
        if only.as_deref().is_some_and(|o| o != alg.name()) {
            continue;
        }
        for n in [2usize, 4, 8] {
            let (flows, phases) = together(n, 200, 100);
            scenarios.push(Scenario { name: "together", alg, flows, phases, end_ms: 200 });
        }
        let (flows, phases) = join_leave();
        scenarios.push(Scenario { name: "join+leave", alg, flows, phases, end_ms: 300 });
    }
    let mut table = format!(
        "{:<13} {:<10} {:>5} {:>9} {:>6} {:>8} {:>7} {:>8} {:>24} {:>8} {:>6}\n",
        "algorithm", "scenario", "flows", "phase ms", "jain", "Mb/s", "conv ms", "min/max", "queue p50/p90/p99/max kB", "CE", "drops"
    );
    let mut failures = Vec::new();
    for s in &scenarios {
        let last_from = s.phases.last().unwrap().1.from_ms;
        let o = run(s.alg, bottleneck(), &s.flows, s.end_ms, last_from);
        for (change, p) in &s.phases {
            let r = phase_rates(&o, &s.flows, p);
            let j = jain(&r);
            let total: f64 = r.iter().sum();
            let (mn, mx) = r.iter().fold((f64::MAX, 0f64), |(a, b), &v| (a.min(v), b.max(v)));
            let conv = convergence_ms(&o, &s.flows, *change, p).map_or("-".to_string(), |c| c.to_string());
            let q = if p.to_ms == s.end_ms {
                format!("{}/{}/{}/{}", o.queue[0] / 1000, o.queue[1] / 1000, o.queue[2] / 1000, o.queue[3] / 1000)
            } else {
                String::from("")
            };
            let (ce, drops) = if p.to_ms == s.end_ms { (o.ce_marked.to_string(), o.drops.to_string()) } else { (String::new(), String::new()) };
            table += &format!(
                "{:<13} {:<10} {:>5} {:>9} {:>6.3} {:>8.1} {:>7} {:>8} {:>24} {:>8} {:>6}\n",
                s.alg.name(),
                s.name,
                r.len(),
                format!("{}-{}", p.from_ms, p.to_ms),
                j,
                total,
                conv,
                format!("{:.0}/{:.0}", mn, mx),
                q,
                ce,
                drops
            );
            let what = format!("{} {} {} flows, {}-{} ms", s.alg.name(), s.name, r.len(), p.from_ms, p.to_ms);
            // What each algorithm is held to (docs/congestion.md, "Results"): all four
            // converge everywhere (TIMELY too since rate-based flows are also bounded by
            // a window of twice their rate times the RTT: before, a joining flow's
            // initial rate filled the buffer and the others, cut to the floor rate, kept a
            // stale smoothed RTT above T_high for 80 ms: Jain 0.70). DCTCP and CUBIC fill
            // the link; TIMELY leaves capacity unused with many flows.
            let (fair, min_total) = match s.alg {
                Algorithm::DctcpWindow | Algorithm::Cubic => (true, 850.0),
                // Rate-based DCTCP keeps a longer queue and idles the link a little more
                // after its cuts: 857-905 Mbit/s measured (2026-11-22).
                Algorithm::DctcpRate => (true, 800.0),
                // With 8 flows TIMELY moves 598-627 Mbit/s depending on loss-recovery
                // and window details (measured 2026-11-22): 550 keeps the check
                // meaningful without failing on a small change.
                Algorithm::Timely => (true, 550.0),
                _ => (false, 800.0),
            };
            if fair && j < 0.95 {
                failures.push(format!("{what}: Jain's index {j:.3} < 0.95 (rates {r:.1?})"));
            }
            // The bottleneck carries 1 Gbit/s of frames: 94% of it is TCP payload.
            if total < min_total {
                failures.push(format!("{what}: total goodput {total:.1} Mbit/s < {min_total}"));
            }
        }
        // DCTCP keeps the queue short: near K (30 kB) with the window, p99 at most 100 kB;
        // the rate variant has no window to stop it between reports and holds a longer
        // queue (p99 79-133 kB measured), held to 150 kB, under 40 % of the buffer.
        // Neither drops in the last phase (the rate variant's slow start may overshoot
        // into drops in the first milliseconds).
        let max_p99 = match s.alg {
            Algorithm::DctcpWindow => Some(100_000),
            Algorithm::DctcpRate => Some(150_000),
            _ => None,
        };
        if let Some(max_p99) = max_p99 {
            if o.queue[2] > max_p99 || o.drops > 0 {
                failures.push(format!(
                    "{} {}: queue p99 {} B (at most {max_p99}), {} drops: DCTCP must keep the queue short",
                    s.alg.name(),
                    s.name,
                    o.queue[2],
                    o.drops
                ));
            }
        }
    }
    let header = "# CC fairness through a 1 Gbit/s bottleneck (20 us one-way, 400 kB buffer, CE above 30 kB), seed 11\n\
                  # (slowpath/tests/sim_cc.rs); Mb/s = goodput of the flows active in the phase; conv ms = time after\n\
                  # the last join/leave from which every 10 ms window has Jain >= 0.95; queue = bottleneck backlog\n\
                  # seen by arriving frames in the last phase; CE and drops = frames marked and dropped there in the last phase.\n";
    let got = format!("{header}{table}");
    println!("{got}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/snapshots/cc-fairness.txt");
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() || !path.exists() && std::env::var_os("CI").is_none() {
        std::fs::write(&path, &got).unwrap();
    } else {
        let want = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("snapshot {} missing ({e}); run with UPDATE_SNAPSHOTS=1", path.display()));
        assert_eq!(got, want, "CC table changed; if intended, rerun with UPDATE_SNAPSHOTS=1 and commit the file");
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// A flow with a fixed rate R sends R (within 2 %) as measured by the receiver over one
/// second, on a link ten times faster (so only the pacer limits it).
#[test]
fn fixed_rate_pacing_accuracy() {
    for rate_mbps in [50u32, 200, 800] {
        let imp = Impairments { rate_bps: 10_000_000_000, delay: Duration::from_micros(20), ..Impairments::default() };
        let mut w = World::new(imp, 5);
        w.b.slow.set_congestion_control(None, Algorithm::Fixed, Some(rate_mbps * 1000));
        let mut server = context(&mut w.a, IP_A, "sink");
        let mut client = context(&mut w.b, IP_B, "source");
        let l = listen(&mut w, &mut server, &mut client, 5001);
        let c = client.connect_start(SocketAddrV4::new(IP_A, 5001)).unwrap();
        let chunk = vec![1u8; 64 * 1024];
        let mut rbuf = vec![0u8; 64 * 1024];
        let mut sc = None;
        let t0 = w.clock.now();
        let (from, to) = (Duration::from_millis(200), Duration::from_millis(1200));
        let mut counted = 0u64;
        let mut first: Option<Instant> = None;
        let mut last = t0;
        loop {
            w.step(&mut [&mut server, &mut client]);
            let now = w.clock.now();
            let el = now.saturating_since(t0);
            if el >= to {
                break;
            }
            if client.state(c) == ConnState::Established {
                let room = client.writable(c).min(chunk.len());
                if room > 0 {
                    let _ = client.send(c, &chunk[..room]);
                }
            }
            if sc.is_none() {
                sc = server.accept(l).unwrap();
            }
            let Some(s) = sc else { continue };
            while let Ok(k) = server.recv(s, &mut rbuf) {
                if k == 0 {
                    break;
                }
                if el >= from {
                    first.get_or_insert(now);
                    counted += k as u64;
                    last = now;
                }
            }
        }
        let secs = (to - from).as_secs_f64();
        let got = counted as f64 * 8.0 / secs / 1e6;
        let err = (got - rate_mbps as f64).abs() / rate_mbps as f64;
        println!("fixed {rate_mbps} Mbit/s: received {got:.2} Mbit/s over {secs} s ({:.2}% off; last byte {:?} after start)", err * 100.0, last.saturating_since(t0));
        assert!(err < 0.02, "fixed rate {rate_mbps} Mbit/s: receiver measured {got:.2} Mbit/s ({:.2}% off)", err * 100.0);
        let info = w.b.slow.conn_infos().into_iter().find_map(|ci| ci.cc).expect("cc state visible");
        assert_eq!((info.algorithm, info.rate_kbps), (Algorithm::Fixed, rate_mbps * 1000));
    }
}

/// Random loss without ECN marking: DCTCP answers loss as standard TCP does (RFC 8257
/// 3.5: halve once per window of data, not per lost segment; one segment only after a
/// timeout), so a lossy path costs it no more than it costs CUBIC. One verified bulk
/// transfer of 20 MB per algorithm over a 1 Gbit/s, 100 µs one-way path with 1 % random
/// loss each way (the loss-recovery tests' path, `sim_loss.rs`).
#[test]
fn dctcp_under_random_loss() {
    let link = Impairments { rate_bps: 1_000_000_000, delay: Duration::from_micros(100), loss: 0.01, ..Impairments::default() };
    let size = 20_000_000;
    let mut got = Vec::new();
    for alg in [Algorithm::DctcpWindow, Algorithm::DctcpRate, Algorithm::Cubic, Algorithm::Unlimited] {
        let t = bulk_alg(link, 42, size, None, None, alg);
        println!("{:<13} 1% loss: {:>7.1} Mbit/s ({:.3} s, {} RTOs, {} segments resent)", alg.name(), t.mbps, t.secs, t.rtos, t.retx_segments);
        got.push((alg, t));
    }
    let mbps = |a: Algorithm| got.iter().find(|(g, _)| *g == a).map(|(_, t)| t.mbps).unwrap();
    // Measured 2026-11-22: dctcp-window 460, dctcp-rate 227, cubic 398, unlimited 880
    // Mbit/s. The window variant must do at least as well as CUBIC less 20 %; the rate
    // variant grows by a fixed 10 Mbit/s per 400 µs (`cc.rs`), slower than one segment
    // per RTT on this 200 µs path, so it is held to half of CUBIC.
    let cubic = mbps(Algorithm::Cubic);
    assert!(cubic > 200.0, "CUBIC under 1% loss: {cubic:.1} Mbit/s");
    for (a, share) in [(Algorithm::DctcpWindow, 0.8), (Algorithm::DctcpRate, 0.5)] {
        assert!(mbps(a) >= share * cubic, "{a} under 1% loss: {:.1} Mbit/s, below {:.0} % of CUBIC's {cubic:.1}", mbps(a), share * 100.0);
    }
}
