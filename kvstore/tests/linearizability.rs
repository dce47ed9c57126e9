//! Single-key operations of the store are linearizable: threads run random operations on a
//! few keys at once, each operation's invocation and response are stamped on a shared
//! logical clock, and a Wing-Gong style search (per key: operations on different keys
//! commute) looks for an order, consistent with real time, in which a sequential model of
//! one key gives every observed result. Plus a counter test: concurrent INCRs return
//! distinct values and lose no update.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};

use bytes::Bytes;
use rand::{Rng, SeedableRng};
use tas_kvstore::store::{Cond, Store, StoreError, Ttl};

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Op {
    Get,
    Set(Bytes),
    SetNx(Bytes),
    SetXx(Bytes),
    SetGet(Bytes),
    Incr,
    Del,
    Append(Bytes),
    GetDel,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Ret {
    Value(Option<Bytes>),
    Wrote(bool),
    Int(Result<i64, StoreError>),
    Len(usize),
    Removed(bool),
}

#[derive(Debug, Clone)]
struct Call {
    op: Op,
    ret: Ret,
    start: u64,
    end: u64,
}

/// The sequential model of one key.
fn apply(state: &Option<Bytes>, op: &Op) -> (Option<Bytes>, Ret) {
    match op {
        Op::Get => (state.clone(), Ret::Value(state.clone())),
        Op::Set(v) => (Some(v.clone()), Ret::Wrote(true)),
        Op::SetNx(v) => match state {
            None => (Some(v.clone()), Ret::Wrote(true)),
            Some(_) => (state.clone(), Ret::Wrote(false)),
        },
        Op::SetXx(v) => match state {
            Some(_) => (Some(v.clone()), Ret::Wrote(true)),
            None => (None, Ret::Wrote(false)),
        },
        Op::SetGet(v) => (Some(v.clone()), Ret::Value(state.clone())),
        Op::Incr => {
            let n = match state {
                None => Some(0),
                Some(v) => tas_kvstore::store::parse_i64(v),
            };
            match n {
                None => (state.clone(), Ret::Int(Err(StoreError::NotInteger))),
                Some(n) => (Some(Bytes::from((n + 1).to_string())), Ret::Int(Ok(n + 1))),
            }
        }
        Op::Del => (None, Ret::Removed(state.is_some())),
        Op::Append(d) => {
            let mut v = state.as_ref().map_or_else(Vec::new, |s| s.to_vec());
            v.extend_from_slice(d);
            let len = v.len();
            (Some(Bytes::from(v)), Ret::Len(len))
        }
        Op::GetDel => (None, Ret::Value(state.clone())),
    }
}

fn run(store: &Store, key: &[u8], op: &Op) -> Ret {
    match op {
        Op::Get => Ret::Value(store.get(key, 0)),
        Op::Set(v) => Ret::Wrote(store.set(key, v.clone(), Cond::Always, Ttl::Persist, false, 0).0),
        Op::SetNx(v) => Ret::Wrote(store.set(key, v.clone(), Cond::Nx, Ttl::Persist, false, 0).0),
        Op::SetXx(v) => Ret::Wrote(store.set(key, v.clone(), Cond::Xx, Ttl::Persist, false, 0).0),
        Op::SetGet(v) => Ret::Value(store.set(key, v.clone(), Cond::Always, Ttl::Persist, true, 0).1),
        Op::Incr => Ret::Int(store.incr_by(key, 1, 0)),
        Op::Del => Ret::Removed(store.del(key, 0)),
        Op::Append(d) => Ret::Len(store.append(key, d, 0).expect("small appends fit")),
        Op::GetDel => Ret::Value(store.remove(key, 0)),
    }
}

/// Is there a linearization of `calls` (one key's history) starting from `state`?
fn linearizable(calls: &[Call]) -> bool {
    assert!(calls.len() <= 128, "the search keeps the done-set in a u128");
    let mut seen: HashSet<(u128, Option<Bytes>)> = HashSet::new();
    fn search(calls: &[Call], done: u128, state: Option<Bytes>, seen: &mut HashSet<(u128, Option<Bytes>)>) -> bool {
        if done.count_ones() as usize == calls.len() {
            return true;
        }
        if !seen.insert((done, state.clone())) {
            return false;
        }
        // Calls that may go next: not done, and invoked before every pending call returned.
        let min_end = calls.iter().enumerate().filter(|(i, _)| done & (1 << i) == 0).map(|(_, c)| c.end).min().unwrap_or(u64::MAX);
        for (i, c) in calls.iter().enumerate() {
            if done & (1 << i) != 0 || c.start > min_end {
                continue;
            }
            let (next, ret) = apply(&state, &c.op);
            if ret == c.ret && search(calls, done | (1 << i), next, seen) {
                return true;
            }
        }
        false
    }
    search(calls, 0, None, &mut seen)
}

fn random_op(rng: &mut impl Rng, thread: usize, i: usize) -> Op {
    // Unique values per write, some of them numbers so INCR has something to add to.
    let v = || -> Bytes {
        if i & 3 == 0 {
            Bytes::from((thread * 1000 + i).to_string())
        } else {
            Bytes::from(format!("t{thread}-{i}"))
        }
    };
    match rng.gen_range(0..9) {
        0 | 1 => Op::Get,
        2 => Op::Set(v()),
        3 => Op::SetNx(v()),
        4 => Op::SetXx(v()),
        5 => Op::SetGet(v()),
        6 => Op::Incr,
        7 => {
            if rng.gen_bool(0.5) {
                Op::Del
            } else {
                Op::GetDel
            }
        }
        _ => Op::Append(Bytes::from(format!("+{thread}"))),
    }
}

#[test]
fn single_key_operations_are_linearizable() {
    const THREADS: usize = 3;
    const KEYS: usize = 4;
    const OPS: usize = 100; // per thread: about 75 calls per key (at most 128: the done-set is a u128)
    for round in 0..200u64 {
        let store = Arc::new(Store::default());
        let clock = Arc::new(AtomicU64::new(0));
        let barrier = Arc::new(Barrier::new(THREADS));
        let handles: Vec<_> = (0..THREADS)
            .map(|t| {
                let (store, clock, barrier) = (store.clone(), clock.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(round * 100 + t as u64);
                    let plan: Vec<(usize, Op)> = (0..OPS).map(|i| (rng.gen_range(0..KEYS), random_op(&mut rng, t, i))).collect();
                    barrier.wait();
                    plan.into_iter()
                        .map(|(k, op)| {
                            let key = format!("key{k}");
                            let start = clock.fetch_add(1, Ordering::SeqCst);
                            let ret = run(&store, key.as_bytes(), &op);
                            let end = clock.fetch_add(1, Ordering::SeqCst);
                            (k, Call { op, ret, start, end })
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut per_key: Vec<Vec<Call>> = vec![Vec::new(); KEYS];
        for h in handles {
            for (k, c) in h.join().unwrap() {
                per_key[k].push(c);
            }
        }
        for (k, calls) in per_key.iter_mut().enumerate() {
            calls.sort_by_key(|c| c.start);
            assert!(linearizable(calls), "round {round}, key{k}: no linearization of {calls:#?}");
        }
    }
}

#[test]
fn the_checker_rejects_a_stale_read() {
    // SET a then (after it returned) GET sees nothing: not linearizable.
    let calls = vec![
        Call { op: Op::Set(Bytes::from("a")), ret: Ret::Wrote(true), start: 0, end: 1 },
        Call { op: Op::Get, ret: Ret::Value(None), start: 2, end: 3 },
    ];
    assert!(!linearizable(&calls));
    // Overlapping, it is fine.
    let calls = vec![
        Call { op: Op::Set(Bytes::from("a")), ret: Ret::Wrote(true), start: 0, end: 3 },
        Call { op: Op::Get, ret: Ret::Value(None), start: 1, end: 2 },
    ];
    assert!(linearizable(&calls));
}

#[test]
fn concurrent_increments_are_distinct_and_none_is_lost() {
    const THREADS: usize = 4;
    const N: usize = 20_000;
    let store = Arc::new(Store::default());
    let handles: Vec<_> = (0..THREADS)
        .map(|_| {
            let store = store.clone();
            std::thread::spawn(move || (0..N).map(|_| store.incr_by(b"counter", 1, 0).unwrap()).collect::<Vec<i64>>())
        })
        .collect();
    let mut all: Vec<i64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
    all.sort_unstable();
    assert_eq!(all, (1..=(THREADS * N) as i64).collect::<Vec<_>>());
    assert_eq!(store.get(b"counter", 0), Some(Bytes::from((THREADS * N).to_string())));
}

#[test]
fn a_reader_keeps_its_value_while_writers_replace_and_delete_it() {
    let store = Arc::new(Store::default());
    store.set(b"k", Bytes::from(vec![1u8; 1 << 20]), Cond::Always, Ttl::Persist, false, 0);
    let held = store.get(b"k", 0).unwrap();
    let writer = {
        let store = store.clone();
        std::thread::spawn(move || {
            for i in 0..1000u32 {
                store.set(b"k", Bytes::from(i.to_string()), Cond::Always, Ttl::Persist, false, 0);
                store.del(b"k", 0);
            }
            store.flush(0);
        })
    };
    writer.join().unwrap();
    assert!(held.iter().all(|&b| b == 1) && held.len() == 1 << 20, "the held value is intact");
    assert_eq!(store.used_memory(), 0, "the store no longer accounts for it");
}
