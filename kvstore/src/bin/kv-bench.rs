//! `kv-bench`: latency of the store's GET and SET, per operation, from N threads, with
//! uniform or Zipf-distributed keys. Prints percentiles per operation.
//!
//! ```text
//! kv-bench --threads 2 --keys 1000000 --value 64 --ops 2000000 --dist zipf --theta 0.99 --pin 0,1
//! ```
//!
//! Every operation is timed on its own with `Instant::now()` around it; the timer's own
//! cost (measured and printed as `timer_ns`) is included in every number.
#![deny(unsafe_code)]

use std::sync::{Arc, Barrier};
use std::time::Instant;

use bytes::Bytes;
use clap::Parser;
use rand::{Rng, SeedableRng};
use tas_kvstore::resp::out::INLINE_VALUE;
use tas_kvstore::store::{Cond, Store, Ttl};

#[derive(Parser, Debug)]
#[command(name = "kv-bench", about = "Per-operation latency of the tas-kv store (GET and SET)")]
struct Cli {
    /// Threads, each doing --ops operations.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Distinct keys (all loaded before timing).
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 64)]
    value: usize,
    /// Operations per thread.
    #[arg(long, default_value_t = 2_000_000)]
    ops: u64,
    /// Fraction of GETs (the rest are SETs).
    #[arg(long, default_value_t = 0.5)]
    get_ratio: f64,
    /// Key distribution: uniform or zipf.
    #[arg(long, default_value = "uniform")]
    dist: String,
    /// Zipf skew (YCSB's default 0.99).
    #[arg(long, default_value_t = 0.99)]
    theta: f64,
    /// Pin thread i to the i-th CPU of this list.
    #[arg(long, value_delimiter = ',')]
    pin: Vec<usize>,
    /// Also measure this machine's latency of one dependent memory access (a random
    /// pointer chase over a buffer of this many MiB), to put the numbers in context.
    #[arg(long, default_value_t = 256)]
    chase_mib: usize,
}

/// Median latency of one dependent load over a `mib` MiB buffer (a random cyclic
/// permutation, so every load misses the caches once the buffer exceeds them).
fn chase(mib: usize) -> f64 {
    let n = (mib << 20) / 8;
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut order: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        order.swap(i, rng.gen_range(0..=i));
    }
    let mut next = vec![0usize; n];
    for w in 0..n {
        next[order[w]] = order[(w + 1) % n];
    }
    let mut p = order[0];
    let steps = 2_000_000;
    let mut samples = Vec::with_capacity(20);
    for _ in 0..20 {
        let t = Instant::now();
        for _ in 0..steps / 20 {
            p = next[p];
        }
        samples.push(t.elapsed().as_nanos() as f64 / (steps / 20) as f64);
    }
    std::hint::black_box(p);
    samples.sort_by(|a, b| a.partial_cmp(b).unwrap());
    samples[samples.len() / 2]
}

/// YCSB's Zipfian generator (Gray et al.): item 0 is the most popular.
struct Zipf {
    n: f64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    fn new(n: u64, theta: f64) -> Zipf {
        let zeta = |k: u64| (1..=k).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2);
        let alpha = 1.0 / (1.0 - theta);
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Zipf { n: n as f64, theta, alpha, zetan, eta }
    }
    fn next(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1;
        }
        ((self.n * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64).min(self.n as u64 - 1)
    }
}

fn key(i: u64) -> [u8; 16] {
    let mut k = *b"key:000000000000";
    let mut x = i;
    for b in k[4..].iter_mut().rev() {
        *b = b'0' + (x % 10) as u8;
        x /= 10;
    }
    k
}

fn pct(v: &mut [u32], p: f64) -> u32 {
    if v.is_empty() {
        return 0;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    *v.select_nth_unstable(i).1
}

fn main() {
    let cli = Cli::parse();
    let store = Arc::new(Store::default());
    // Every key gets its own value buffer, as values arriving over the network do (one
    // shared buffer would put every GET and SET on one reference count's cache line).
    let value = vec![b'v'; cli.value];
    let t0 = Instant::now();
    for i in 0..cli.keys {
        store.set(&key(i), Bytes::copy_from_slice(&value), Cond::Always, Ttl::Persist, false, 1);
    }
    eprintln!("loaded {} keys in {:.2?}", cli.keys, t0.elapsed());
    let zipf = Arc::new((cli.dist == "zipf").then(|| Zipf::new(cli.keys, cli.theta)));
    // The timer's own cost.
    let mut tv: Vec<u32> = (0..100_000)
        .map(|_| {
            let a = Instant::now();
            Instant::now().duration_since(a).as_nanos() as u32
        })
        .collect();
    let timer = pct(&mut tv, 0.5);
    let barrier = Arc::new(Barrier::new(cli.threads));
    let start = Instant::now();
    let handles: Vec<_> = (0..cli.threads)
        .map(|t| {
            let (store, zipf, barrier, value) = (store.clone(), zipf.clone(), barrier.clone(), value.clone());
            let (ops, keys, ratio, pin) = (cli.ops, cli.keys, cli.get_ratio, cli.pin.get(t).copied());
            std::thread::spawn(move || {
                if let Some(cpu) = pin {
                    core_affinity::set_for_current(core_affinity::CoreId { id: cpu });
                }
                let mut rng = rand::rngs::StdRng::seed_from_u64(t as u64 + 1);
                let plan: Vec<(bool, u64)> = (0..ops)
                    .map(|_| {
                        let k = match zipf.as_ref() {
                            Some(z) => z.next(rng.gen::<f64>()),
                            None => rng.gen_range(0..keys),
                        };
                        (rng.gen::<f64>() < ratio, k)
                    })
                    .collect();
                let (mut gets, mut sets) = (Vec::with_capacity(ops as usize), Vec::with_capacity(ops as usize));
                let mut found = 0u64;
                let mut reply: Vec<u8> = Vec::with_capacity(256);
                barrier.wait();
                for (is_get, k) in plan {
                    let k = key(k);
                    let a = Instant::now();
                    if is_get {
                        // As the server's GET does: a short value is copied out under the
                        // snapshot, a long one is taken by reference.
                        let hit = store.read(&k, 1, |e| {
                            if e.value.len() < INLINE_VALUE {
                                reply.clear();
                                reply.extend_from_slice(&e.value);
                                None
                            } else {
                                Some(e.value.clone())
                            }
                        });
                        let d = a.elapsed().as_nanos() as u32;
                        found += hit.is_some() as u64;
                        gets.push(d);
                    } else {
                        // As the server does for a SET: the value copied into a new buffer.
                        store.set(&k, Bytes::copy_from_slice(&value), Cond::Always, Ttl::Persist, false, 1);
                        sets.push(a.elapsed().as_nanos() as u32);
                    }
                }
                (gets, sets, found)
            })
        })
        .collect();
    let (mut gets, mut sets, mut found) = (Vec::new(), Vec::new(), 0);
    for h in handles {
        let (g, s, f) = h.join().expect("bench thread");
        gets.extend(g);
        sets.extend(s);
        found += f;
    }
    let wall = start.elapsed();
    let miss = if cli.chase_mib > 0 { chase(cli.chase_mib) } else { 0.0 };
    assert_eq!(found, gets.len() as u64, "every GET found its key");
    let total = (gets.len() + sets.len()) as f64;
    println!(
        "dist={} theta={} threads={} keys={} value={}B ops={} wall={:.2?} throughput={:.2} Mops/s timer_ns={} dependent_load_ns={:.0}",
        cli.dist,
        if cli.dist == "zipf" { cli.theta } else { 0.0 },
        cli.threads,
        cli.keys,
        cli.value,
        total,
        wall,
        total / wall.as_secs_f64() / 1e6,
        timer,
        miss
    );
    for (name, v) in [("GET", &mut gets), ("SET", &mut sets)] {
        println!(
            "{name}: n={} p50={} ns p90={} ns p99={} ns p99.9={} ns max={} ns",
            v.len(),
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            pct(v, 0.999),
            v.iter().max().copied().unwrap_or(0)
        );
    }
}
