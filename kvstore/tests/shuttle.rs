//! Randomized exploration of the map's concurrency (bucket swaps, lost races, growth under
//! concurrent writers and readers, flush) with shuttle's scheduler:
//!
//! ```text
//! cargo test -p tas-kvstore --features shuttle --test shuttle
//! ```
//!
//! With the `shuttle` feature the map's swappable cells and atomics are shuttle's, so every
//! load, compare-and-swap and counter update is a point where shuttle may switch threads.
//! The map is built with one segment of one bucket, so two keys already make it grow.
#![cfg(feature = "shuttle")]

use bytes::Bytes;
use shuttle::sync::Arc;
use shuttle::thread;
use tas_kvstore::store::map::{Action, Entry, Key, Map};

const ITERATIONS: usize = 2000;

fn put(m: &Map, k: &str, v: u64) {
    let h = m.hash(k.as_bytes());
    let v = Bytes::from(v.to_string());
    m.update(h, k.as_bytes(), |_| (Action::Put(Entry::new(h, Key::new(k.as_bytes()), v.clone(), 0, 0)), ()));
}

fn get(m: &Map, k: &str) -> Option<u64> {
    let h = m.hash(k.as_bytes());
    m.get(h, k.as_bytes()).map(|e| std::str::from_utf8(&e.value).unwrap().parse().unwrap())
}

/// Read-modify-write: add one to the key's number (0 if missing).
fn incr(m: &Map, k: &str) -> u64 {
    let h = m.hash(k.as_bytes());
    let (n, _) = m.update(h, k.as_bytes(), |cur| {
        let n = cur.map_or(0, |e| std::str::from_utf8(&e.value).unwrap().parse::<u64>().unwrap()) + 1;
        (Action::Put(Entry::new(h, Key::new(k.as_bytes()), Bytes::from(n.to_string()), 0, 0)), n)
    });
    n
}

#[test]
fn inserts_during_growth_are_never_lost() {
    shuttle::check_random(
        || {
            let m = Arc::new(Map::with_geometry(0, 1));
            let threads: Vec<_> = (0..3)
                .map(|t| {
                    let m = m.clone();
                    thread::spawn(move || {
                        for i in 0..4 {
                            put(&m, &format!("t{t}k{i}"), i);
                            // What this thread wrote is visible to it at once (and stays).
                            for j in 0..=i {
                                assert_eq!(get(&m, &format!("t{t}k{j}")), Some(j));
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            assert_eq!(m.len(), 12);
            for t in 0..3 {
                for i in 0..4 {
                    assert_eq!(get(&m, &format!("t{t}k{i}")), Some(i));
                }
            }
        },
        ITERATIONS,
    );
}

#[test]
fn read_modify_writes_are_atomic_across_growth() {
    shuttle::check_random(
        || {
            let m = Arc::new(Map::with_geometry(0, 1));
            let counters: Vec<_> = (0..2)
                .map(|_| {
                    let m = m.clone();
                    thread::spawn(move || (0..3).map(|_| incr(&m, "counter")).collect::<Vec<u64>>())
                })
                .collect();
            let grower = {
                let m = m.clone();
                thread::spawn(move || {
                    for i in 0..5 {
                        put(&m, &format!("other{i}"), i);
                    }
                })
            };
            let mut seen: Vec<u64> = counters.into_iter().flat_map(|t| t.join().unwrap()).collect();
            grower.join().unwrap();
            seen.sort();
            assert_eq!(seen, vec![1, 2, 3, 4, 5, 6], "every increment returned a distinct value");
            assert_eq!(get(&m, "counter"), Some(6));
            assert_eq!(m.len(), 6);
        },
        ITERATIONS,
    );
}

#[test]
fn readers_never_go_back_in_time() {
    shuttle::check_random(
        || {
            let m = Arc::new(Map::with_geometry(0, 1));
            put(&m, "k", 0);
            let writer = {
                let m = m.clone();
                thread::spawn(move || {
                    for v in 1..=4 {
                        put(&m, "k", v);
                    }
                })
            };
            let grower = {
                let m = m.clone();
                thread::spawn(move || {
                    for i in 0..4 {
                        put(&m, &format!("g{i}"), i);
                    }
                })
            };
            let reader = {
                let m = m.clone();
                thread::spawn(move || {
                    let mut last = 0;
                    for _ in 0..6 {
                        let v = get(&m, "k").expect("k is never absent");
                        assert!(v >= last, "read {v} after {last}");
                        last = v;
                    }
                })
            };
            writer.join().unwrap();
            grower.join().unwrap();
            reader.join().unwrap();
            assert_eq!(get(&m, "k"), Some(4));
        },
        ITERATIONS,
    );
}

#[test]
fn flush_is_atomic_per_segment_and_keeps_the_count() {
    shuttle::check_random(
        || {
            let m = Arc::new(Map::with_geometry(0, 1));
            let writer = {
                let m = m.clone();
                thread::spawn(move || {
                    for i in 0..4 {
                        put(&m, &format!("k{i}"), i);
                    }
                })
            };
            let flusher = {
                let m = m.clone();
                thread::spawn(move || m.clear().len())
            };
            writer.join().unwrap();
            let removed = flusher.join().unwrap();
            let left = (0..4).filter(|i| get(&m, &format!("k{i}")).is_some()).count();
            assert_eq!(left + removed, 4, "each key was either flushed or is still there");
            assert_eq!(m.len(), left, "the count matches the contents");
            // A flush removes a prefix of the writer's sequence: it cannot drop k2 and keep k1.
            for i in 1..4 {
                if get(&m, &format!("k{}", i - 1)).is_some() {
                    assert!(get(&m, &format!("k{i}")).is_some(), "k{} survived the flush but the later k{i} did not", i - 1);
                }
            }
        },
        ITERATIONS,
    );
}
