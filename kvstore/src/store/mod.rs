//! The store: string keys and values over the concurrent [`map::Map`], with expiry,
//! memory accounting and eviction. Sans I/O: the time (`now`, Unix milliseconds) is passed
//! in by the caller, which reads the clock once per batch of commands.
//!
//! Values are [`Bytes`]: a GET hands out a reference to the stored value (no copy, no
//! lock), and the value outlives its removal for as long as that reference lives.
//!
//! Single-key operations are linearizable (see [`map`]). Multi-key commands (MSET, DEL of
//! several keys, ...) are a sequence of single-key operations: not atomic as a group.

pub mod glob;
pub mod map;

use std::cell::Cell as StdCell;
use std::sync::atomic::Ordering;

use bytes::{Bytes, BytesMut};

use crate::sync::{Arc, AtomicI64, AtomicU64, AtomicUsize};
use map::{Action, Change, Map};
pub use map::{Entry, Key, SEGMENTS};

/// Bytes charged per entry beyond its key and value: the `Arc<Entry>` allocation (16 B of
/// counts + 88 B of entry), its slot in a bucket version (8 B) and the shared-buffer
/// header of the value (`Bytes`' 32 B), rounded to 128. What `used_memory` adds up.
pub const ENTRY_OVERHEAD: usize = 128;

/// The largest string value, as Redis's default `proto-max-bulk-len` (512 MB).
pub const MAX_VALUE: usize = 512 * 1024 * 1024;

/// What to do when `maxmemory` is reached (Redis's `maxmemory-policy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Refuse writes with an OOM error.
    NoEviction,
    /// Evict the least recently used key (approximately: the oldest of a sample).
    AllKeysLru,
    /// Like `AllKeysLru`, among keys with a TTL.
    VolatileLru,
    /// Evict a random key.
    AllKeysRandom,
    /// Evict a random key with a TTL.
    VolatileRandom,
    /// Evict the key with the nearest expiry (of a sample).
    VolatileTtl,
}

impl Policy {
    /// Every policy with its configuration name.
    pub const ALL: [(Policy, &'static str); 6] = [
        (Policy::NoEviction, "noeviction"),
        (Policy::AllKeysLru, "allkeys-lru"),
        (Policy::VolatileLru, "volatile-lru"),
        (Policy::AllKeysRandom, "allkeys-random"),
        (Policy::VolatileRandom, "volatile-random"),
        (Policy::VolatileTtl, "volatile-ttl"),
    ];

    /// The configuration name.
    pub fn name(self) -> &'static str {
        Policy::ALL.iter().find(|(p, _)| *p == self).map(|(_, n)| *n).unwrap_or("noeviction")
    }

    /// Parse a configuration name (case-insensitive).
    pub fn parse(s: &str) -> Option<Policy> {
        Policy::ALL.iter().find(|(_, n)| n.eq_ignore_ascii_case(s)).map(|(p, _)| *p)
    }

    fn volatile(self) -> bool {
        matches!(self, Policy::VolatileLru | Policy::VolatileRandom | Policy::VolatileTtl)
    }
}

/// Errors of store operations. The `Display` text is the RESP error line Redis sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum StoreError {
    /// The value is not a 64-bit integer.
    #[error("ERR value is not an integer or out of range")]
    NotInteger,
    /// The increment overflows 64 bits.
    #[error("ERR increment or decrement would overflow")]
    Overflow,
    /// The value is not a float.
    #[error("ERR value is not a valid float")]
    NotFloat,
    /// The float increment gives NaN or an infinity.
    #[error("ERR increment would produce NaN or Infinity")]
    NanOrInfinity,
    /// The result would exceed [`MAX_VALUE`].
    #[error("ERR string exceeds maximum allowed size (proto-max-bulk-len)")]
    TooBig,
    /// `maxmemory` is reached and nothing can (or may) be evicted.
    #[error("OOM command not allowed when used memory > 'maxmemory'.")]
    Oom,
}

/// When SET writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cond {
    /// Always.
    Always,
    /// Only if the key does not exist (NX).
    Nx,
    /// Only if the key exists (XX).
    Xx,
}

/// The expiry a write gives the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ttl {
    /// No expiry (a plain SET removes any TTL).
    Persist,
    /// Keep the key's current expiry (KEEPTTL).
    Keep,
    /// Expire at this Unix time in milliseconds.
    At(u64),
}

/// Conditions of EXPIRE and friends (Redis 7).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExpireCond {
    /// Always.
    Always,
    /// Only if the key has no expiry.
    Nx,
    /// Only if the key has an expiry.
    Xx,
    /// Only if the new expiry is later (a key without expiry counts as infinite).
    Gt,
    /// Only if the new expiry is earlier.
    Lt,
}

/// Counters of the store (INFO stats).
#[derive(Debug, Default)]
pub struct StoreStats {
    /// Keys removed because they expired (lazily or actively).
    pub expired_keys: AtomicU64,
    /// Keys evicted to stay under `maxmemory`.
    pub evicted_keys: AtomicU64,
}

/// Shards of a counter that every write updates (memory used, keys with a TTL): each thread
/// adds to its own cache line, so two threads writing do not bounce one line between their
/// cores; reading sums the shards.
struct Counter {
    shards: Box<[Padded<AtomicI64>]>,
}

#[repr(align(128))]
struct Padded<T>(T);

const COUNTER_SHARDS: usize = 16;

thread_local! {
    static SHARD: StdCell<usize> = const { StdCell::new(usize::MAX) };
}

fn shard() -> usize {
    static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    SHARD.with(|s| {
        if s.get() == usize::MAX {
            s.set(NEXT.fetch_add(1, Ordering::Relaxed) % COUNTER_SHARDS);
        }
        s.get()
    })
}

impl Counter {
    fn new() -> Counter {
        Counter { shards: (0..COUNTER_SHARDS).map(|_| Padded(AtomicI64::new(0))).collect() }
    }
    fn add(&self, d: i64) {
        self.shards[shard()].0.fetch_add(d, Ordering::Relaxed);
    }
    fn get(&self) -> i64 {
        self.shards.iter().map(|s| s.0.load(Ordering::Relaxed)).sum()
    }
}

/// The store.
pub struct Store {
    map: Map,
    used: Counter,
    expires: Counter,
    maxmemory: AtomicU64,
    policy: AtomicUsize,
    samples: AtomicUsize,
    /// Counters.
    pub stats: StoreStats,
    sweep: AtomicU64,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("keys", &self.len()).field("used", &self.used_memory()).finish_non_exhaustive()
    }
}

impl Default for Store {
    fn default() -> Self {
        Store::new(0, Policy::NoEviction)
    }
}

fn cost(e: &Entry) -> i64 {
    (e.key.as_bytes().len() + e.value.len() + ENTRY_OVERHEAD) as i64
}

/// The coarse LRU clock: seconds (Redis's LRU resolution is one second too).
fn lru_clock(now_ms: u64) -> u32 {
    (now_ms / 1000) as u32
}

thread_local! {
    static RNG: StdCell<u64> = const { StdCell::new(0) };
}

/// A per-thread xorshift64* generator: sampling needs speed, not quality.
fn random() -> u64 {
    RNG.with(|r| {
        let mut x = r.get();
        if x == 0 {
            let seed = &x as *const u64 as u64;
            x = seed ^ 0x9e37_79b9_7f4a_7c15 ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64);
            x |= 1;
        }
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        r.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    })
}

/// Parse a value as a 64-bit integer the way Redis does (`string2ll`): optional `-`,
/// digits, no spaces, no `+`, no leading zeros.
pub fn parse_i64(v: &[u8]) -> Option<i64> {
    if v.is_empty() || v.len() > 20 {
        return None;
    }
    let (neg, digits) = if v[0] == b'-' { (true, &v[1..]) } else { (false, v) };
    if digits.is_empty() || (digits[0] == b'0' && (digits.len() > 1 || neg)) {
        return None;
    }
    let mut n: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        let d = (d - b'0') as i64;
        n = if neg { n.checked_mul(10)?.checked_sub(d)? } else { n.checked_mul(10)?.checked_add(d)? };
    }
    Some(n)
}

/// Parse a float the way Redis accepts them for INCRBYFLOAT (no spaces, no NaN).
pub fn parse_f64(v: &[u8]) -> Option<f64> {
    let s = std::str::from_utf8(v).ok()?;
    if s.is_empty() || s.starts_with(|c: char| c.is_whitespace()) || s.ends_with(|c: char| c.is_whitespace()) {
        return None;
    }
    let f: f64 = match s.to_ascii_lowercase().as_str() {
        "inf" | "+inf" | "infinity" | "+infinity" => f64::INFINITY,
        "-inf" | "-infinity" => f64::NEG_INFINITY,
        _ => s.parse().ok()?,
    };
    (!f.is_nan()).then_some(f)
}

/// Format a float as Redis does for INCRBYFLOAT results: plain decimal, no exponent,
/// shortest round-trip digits.
pub fn format_f64(f: f64) -> String {
    let s = format!("{f}");
    if s.contains('e') || s.contains('E') {
        format!("{f:.17}").trim_end_matches('0').trim_end_matches('.').to_string()
    } else {
        s
    }
}

impl Store {
    /// An empty store. `maxmemory` 0: no limit.
    pub fn new(maxmemory: u64, policy: Policy) -> Store {
        let s = Store {
            map: Map::new(),
            used: Counter::new(),
            expires: Counter::new(),
            maxmemory: AtomicU64::new(maxmemory),
            policy: AtomicUsize::new(0),
            samples: AtomicUsize::new(5),
            stats: StoreStats::default(),
            sweep: AtomicU64::new(0),
        };
        s.set_policy(policy);
        s
    }

    // ---- configuration ---------------------------------------------------------------------

    /// The memory limit in bytes (0: none).
    pub fn maxmemory(&self) -> u64 {
        self.maxmemory.load(Ordering::Relaxed)
    }
    /// Set the memory limit (0: none).
    pub fn set_maxmemory(&self, v: u64) {
        self.maxmemory.store(v, Ordering::Relaxed)
    }
    /// The eviction policy.
    pub fn policy(&self) -> Policy {
        Policy::ALL[self.policy.load(Ordering::Relaxed) % Policy::ALL.len()].0
    }
    /// Set the eviction policy.
    pub fn set_policy(&self, p: Policy) {
        let i = Policy::ALL.iter().position(|(q, _)| *q == p).unwrap_or(0);
        self.policy.store(i, Ordering::Relaxed)
    }
    /// Keys sampled per eviction (`maxmemory-samples`).
    pub fn samples(&self) -> usize {
        self.samples.load(Ordering::Relaxed)
    }
    /// Set the keys sampled per eviction (at least 1, at most 64).
    pub fn set_samples(&self, n: usize) {
        self.samples.store(n.clamp(1, 64), Ordering::Relaxed)
    }

    // ---- accounting ------------------------------------------------------------------------

    /// Bytes used by keys, values and per-entry overhead.
    pub fn used_memory(&self) -> u64 {
        self.used.get().max(0) as u64
    }

    /// Keys, including expired ones not yet removed (as Redis's DBSIZE).
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// True if the store holds no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Keys with an expiry.
    pub fn expires(&self) -> usize {
        self.expires.get().max(0) as usize
    }

    fn account(&self, c: &Change, now: u64) {
        let (mut d, mut ex) = (0i64, 0i64);
        if let Some(o) = &c.old {
            d -= cost(o);
            if o.expire_at != 0 {
                ex -= 1;
            }
            if o.expired(now) {
                self.stats.expired_keys.fetch_add(1, Ordering::Relaxed);
            }
        }
        if let Some(n) = &c.new {
            d += cost(n);
            if n.expire_at != 0 {
                ex += 1;
            }
        }
        if d != 0 {
            self.used.add(d);
        }
        if ex != 0 {
            self.expires.add(ex);
        }
    }

    /// Before a command that may use more memory: evict under the policy until the store is
    /// within `maxmemory`, or fail with [`StoreError::Oom`].
    pub fn make_room(&self, now: u64) -> Result<(), StoreError> {
        let max = self.maxmemory();
        if max == 0 || self.used_memory() <= max {
            return Ok(());
        }
        let policy = self.policy();
        if policy == Policy::NoEviction {
            return Err(StoreError::Oom);
        }
        let mut sample = Vec::with_capacity(16);
        // Evict until under the limit. Bounded: a store that finds nothing to evict 64
        // rounds in a row, or that has spent 50 ms, refuses the command.
        let start = std::time::Instant::now();
        let mut misses = 0;
        while misses < 64 {
            if self.used_memory() <= max {
                return Ok(());
            }
            if start.elapsed() > std::time::Duration::from_millis(50) {
                break;
            }
            sample.clear();
            let want = self.samples();
            for _ in 0..want * 4 {
                if sample.len() >= want {
                    break;
                }
                self.map.sample(random(), 32, &mut sample);
                if policy.volatile() {
                    sample.retain(|e| e.expire_at != 0);
                }
            }
            let victim = match policy {
                Policy::AllKeysLru | Policy::VolatileLru => sample.iter().min_by_key(|e| e.lru()),
                Policy::VolatileTtl => sample.iter().min_by_key(|e| e.expire_at),
                Policy::AllKeysRandom | Policy::VolatileRandom => sample.first(),
                Policy::NoEviction => None,
            };
            let Some(victim) = victim.cloned() else {
                misses += 1;
                continue;
            };
            misses = 0;
            if self.map.remove_if_same(&victim) {
                self.account(&Change { old: Some(victim.clone()), new: None }, now);
                if !victim.expired(now) {
                    self.stats.evicted_keys.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if self.used_memory() <= max {
            Ok(())
        } else {
            Err(StoreError::Oom)
        }
    }

    // ---- reads -----------------------------------------------------------------------------

    /// Call `f` on the key's live entry, without copying anything (expired entries are
    /// removed on the way: lazy expiry).
    pub fn read<R>(&self, key: &[u8], now: u64, f: impl FnOnce(&Entry) -> R) -> Option<R> {
        let h = self.map.hash(key);
        let r = self.map.with(h, key, |e| {
            if e.expired(now) {
                Err(e.clone())
            } else {
                e.touch(lru_clock(now));
                Ok(f(e))
            }
        })?;
        match r {
            Ok(r) => Some(r),
            Err(e) => {
                self.expire_entry(&e, now);
                None
            }
        }
    }

    fn expire_entry(&self, e: &Arc<Entry>, now: u64) {
        if self.map.remove_if_same(e) {
            self.account(&Change { old: Some(e.clone()), new: None }, now);
        }
    }

    /// The value (a reference to the stored bytes).
    pub fn get(&self, key: &[u8], now: u64) -> Option<Bytes> {
        self.read(key, now, |e| e.value.clone())
    }

    /// True if the key exists.
    pub fn exists(&self, key: &[u8], now: u64) -> bool {
        self.read(key, now, |_| ()).is_some()
    }

    /// Milliseconds to live: -2 if the key does not exist, -1 if it has no expiry.
    pub fn pttl(&self, key: &[u8], now: u64) -> i64 {
        match self.read(key, now, |e| e.expire_at) {
            None => -2,
            Some(0) => -1,
            Some(t) => t.saturating_sub(now) as i64,
        }
    }

    /// The expiry time (Unix ms): -2 if the key does not exist, -1 if it has no expiry.
    pub fn expire_time(&self, key: &[u8], now: u64) -> i64 {
        match self.read(key, now, |e| e.expire_at) {
            None => -2,
            Some(0) => -1,
            Some(t) => t as i64,
        }
    }

    // ---- writes ----------------------------------------------------------------------------

    /// Read-modify-write one key; `f` sees the live entry (expired ones look absent).
    fn rmw<R>(&self, key: &[u8], now: u64, mut f: impl FnMut(Option<&Arc<Entry>>, u64) -> (Action, R)) -> R {
        let h = self.map.hash(key);
        let (r, change) = self.map.update(h, key, |cur| f(cur.filter(|e| !e.expired(now)), h));
        self.account(&change, now);
        r
    }

    fn entry(&self, h: u64, key: &[u8], cur: Option<&Arc<Entry>>, value: Bytes, expire_at: u64, now: u64) -> Entry {
        // Reuse the stored key's bytes when overwriting.
        let k = cur.map_or_else(|| Key::new(key), |e| e.key.clone());
        Entry::new(h, k, value, expire_at, lru_clock(now))
    }

    /// SET with its options. Returns whether it wrote, and the old value if `want_old`.
    pub fn set(&self, key: &[u8], value: Bytes, cond: Cond, ttl: Ttl, want_old: bool, now: u64) -> (bool, Option<Bytes>) {
        self.rmw(key, now, |cur, h| {
            let old = if want_old { cur.map(|e| e.value.clone()) } else { None };
            let ok = match cond {
                Cond::Always => true,
                Cond::Nx => cur.is_none(),
                Cond::Xx => cur.is_some(),
            };
            if !ok {
                return (Action::Keep, (false, old));
            }
            let expire_at = match ttl {
                Ttl::Persist => 0,
                Ttl::Keep => cur.map_or(0, |e| e.expire_at),
                Ttl::At(t) => t.max(1),
            };
            (Action::Put(self.entry(h, key, cur, value.clone(), expire_at, now)), (true, old))
        })
    }

    /// Remove the key; its value if it existed.
    pub fn remove(&self, key: &[u8], now: u64) -> Option<Bytes> {
        self.rmw(key, now, |cur, _| match cur {
            Some(e) => (Action::Remove, Some(e.value.clone())),
            None => (Action::Keep, None),
        })
    }

    /// Remove the key; true if it existed.
    pub fn del(&self, key: &[u8], now: u64) -> bool {
        self.remove(key, now).is_some()
    }

    /// INCRBY: add `delta` to the integer value (missing: 0); keeps the TTL.
    pub fn incr_by(&self, key: &[u8], delta: i64, now: u64) -> Result<i64, StoreError> {
        self.rmw(key, now, |cur, h| {
            let n = match cur {
                None => 0,
                Some(e) => match parse_i64(&e.value) {
                    Some(n) => n,
                    None => return (Action::Keep, Err(StoreError::NotInteger)),
                },
            };
            let Some(m) = n.checked_add(delta) else { return (Action::Keep, Err(StoreError::Overflow)) };
            let v = Bytes::from(m.to_string());
            let exp = cur.map_or(0, |e| e.expire_at);
            (Action::Put(self.entry(h, key, cur, v, exp, now)), Ok(m))
        })
    }

    /// INCRBYFLOAT: add `delta` to the float value (missing: 0); keeps the TTL. Returns the
    /// new value as stored.
    pub fn incr_by_float(&self, key: &[u8], delta: f64, now: u64) -> Result<Bytes, StoreError> {
        self.rmw(key, now, |cur, h| {
            let n = match cur {
                None => 0.0,
                Some(e) => match parse_f64(&e.value) {
                    Some(n) => n,
                    None => return (Action::Keep, Err(StoreError::NotFloat)),
                },
            };
            let m = n + delta;
            if !m.is_finite() {
                return (Action::Keep, Err(StoreError::NanOrInfinity));
            }
            let v = Bytes::from(format_f64(m));
            let exp = cur.map_or(0, |e| e.expire_at);
            (Action::Put(self.entry(h, key, cur, v.clone(), exp, now)), Ok(v))
        })
    }

    /// APPEND: returns the new length.
    pub fn append(&self, key: &[u8], data: &[u8], now: u64) -> Result<usize, StoreError> {
        self.rmw(key, now, |cur, h| {
            let old: &[u8] = cur.map_or(&[], |e| &e.value);
            if old.len() + data.len() > MAX_VALUE {
                return (Action::Keep, Err(StoreError::TooBig));
            }
            let mut v = BytesMut::with_capacity(old.len() + data.len());
            v.extend_from_slice(old);
            v.extend_from_slice(data);
            let len = v.len();
            let exp = cur.map_or(0, |e| e.expire_at);
            (Action::Put(self.entry(h, key, cur, v.freeze(), exp, now)), Ok(len))
        })
    }

    /// SETRANGE: overwrite from `offset` (zero-padding a shorter value); returns the new
    /// length. An empty `data` changes nothing (and does not create the key).
    pub fn setrange(&self, key: &[u8], offset: usize, data: &[u8], now: u64) -> Result<usize, StoreError> {
        if offset.checked_add(data.len()).is_none_or(|end| end > MAX_VALUE) {
            return Err(StoreError::TooBig);
        }
        self.rmw(key, now, |cur, h| {
            let old: &[u8] = cur.map_or(&[], |e| &e.value);
            if data.is_empty() {
                return (Action::Keep, Ok(old.len()));
            }
            let len = old.len().max(offset + data.len());
            let mut v = BytesMut::zeroed(len);
            v[..old.len()].copy_from_slice(old);
            v[offset..offset + data.len()].copy_from_slice(data);
            let exp = cur.map_or(0, |e| e.expire_at);
            (Action::Put(self.entry(h, key, cur, v.freeze(), exp, now)), Ok(len))
        })
    }

    /// EXPIRE and friends: set the expiry to `at` (Unix ms) under `cond`. An `at` in the
    /// past deletes the key. True if the key exists and the condition held.
    pub fn expire_at(&self, key: &[u8], at: u64, cond: ExpireCond, now: u64) -> bool {
        self.rmw(key, now, |cur, h| {
            let Some(e) = cur else { return (Action::Keep, false) };
            let ok = match cond {
                ExpireCond::Always => true,
                ExpireCond::Nx => e.expire_at == 0,
                ExpireCond::Xx => e.expire_at != 0,
                ExpireCond::Gt => e.expire_at != 0 && at > e.expire_at,
                ExpireCond::Lt => e.expire_at == 0 || at < e.expire_at,
            };
            if !ok {
                return (Action::Keep, false);
            }
            if at <= now {
                return (Action::Remove, true);
            }
            (Action::Put(self.entry(h, key, cur, e.value.clone(), at, now)), true)
        })
    }

    /// PERSIST: remove the expiry; true if there was one.
    pub fn persist(&self, key: &[u8], now: u64) -> bool {
        self.rmw(key, now, |cur, h| match cur {
            Some(e) if e.expire_at != 0 => (Action::Put(self.entry(h, key, cur, e.value.clone(), 0, now)), true),
            _ => (Action::Keep, false),
        })
    }

    /// MSETNX: set every pair only if none of the keys exists. Each key is set with NX in
    /// turn; if one exists, the keys set so far are removed again (if still unchanged), so
    /// the end state is all or nothing — though a concurrent reader may glimpse a partial
    /// state.
    pub fn msetnx(&self, pairs: &[(&[u8], Bytes)], now: u64) -> bool {
        if pairs.iter().any(|(k, _)| self.exists(k, now)) {
            return false;
        }
        let mut done: Vec<Arc<Entry>> = Vec::with_capacity(pairs.len());
        for (k, v) in pairs {
            let h = self.map.hash(k);
            let (_, change) = self.map.update(h, k, |cur| match cur.filter(|e| !e.expired(now)) {
                Some(_) => (Action::Keep, ()),
                None => (Action::Put(self.entry(h, k, None, v.clone(), 0, now)), ()),
            });
            self.account(&change, now);
            match change.new {
                Some(e) => done.push(e),
                None => {
                    for e in &done {
                        if self.map.remove_if_same(e) {
                            self.account(&Change { old: Some(e.clone()), new: None }, now);
                        }
                    }
                    return false;
                }
            }
        }
        true
    }

    /// FLUSHDB/FLUSHALL.
    pub fn flush(&self, now: u64) {
        let all = self.map.clear();
        for e in &all {
            self.account(&Change { old: Some(e.clone()), new: None }, now);
        }
    }

    // ---- iteration -------------------------------------------------------------------------

    /// Every live key matching `pattern` (None: all).
    pub fn keys(&self, pattern: Option<&[u8]>, now: u64) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut cursor = 0;
        loop {
            cursor = self.scan(cursor, pattern, usize::MAX, now, &mut out);
            if cursor == 0 {
                return out;
            }
        }
    }

    /// One SCAN step from `cursor` (0 to start): appends live keys matching `pattern` to
    /// `out`, visiting buckets until about `count` keys were looked at; returns the next
    /// cursor (0: done). Every key present for the whole scan is returned at least once
    /// (tables only grow by doubling, and a bucket's keys move only to higher buckets).
    pub fn scan(&self, cursor: u64, pattern: Option<&[u8]>, count: usize, now: u64, out: &mut Vec<Bytes>) -> u64 {
        let (mut seg, mut idx) = ((cursor >> 32) as usize, (cursor & 0xffff_ffff) as usize);
        let mut seen = 0usize;
        let mut bucket = Vec::new();
        let mut visits = 0usize;
        let segments = self.map.segments();
        while seg < segments {
            bucket.clear();
            if !self.map.bucket_entries(seg, idx, &mut bucket) {
                seg += 1;
                idx = 0;
                continue;
            }
            idx += 1;
            visits += 1;
            for e in &bucket {
                seen += 1;
                if e.expired(now) {
                    self.expire_entry(e, now);
                    continue;
                }
                if pattern.is_none_or(|p| glob::matches(p, e.key.as_bytes())) {
                    out.push(e.key.to_bytes());
                }
            }
            if seen >= count || visits >= count.saturating_mul(10) {
                break;
            }
        }
        if seg >= segments {
            0
        } else {
            (seg as u64) << 32 | idx as u64
        }
    }

    /// A random live key (RANDOMKEY), if any.
    pub fn random_key(&self, now: u64) -> Option<Bytes> {
        let mut s = Vec::new();
        for _ in 0..64 {
            s.clear();
            self.map.sample(random(), 64, &mut s);
            if let Some(e) = s.iter().find(|e| !e.expired(now)) {
                return Some(e.key.to_bytes());
            }
        }
        None
    }

    /// Active expiry: visit up to `budget` buckets from where the last call stopped and
    /// remove expired keys; returns how many were removed. Called about ten times a second
    /// (Redis's `hz`), more often while many keys expire.
    pub fn active_expire(&self, budget: usize, now: u64) -> usize {
        if self.expires() == 0 {
            return 0;
        }
        let mut cursor = self.sweep.load(Ordering::Relaxed);
        let mut removed = 0;
        let mut bucket = Vec::new();
        for _ in 0..budget {
            let segments = self.map.segments();
            let (mut seg, mut idx) = ((cursor >> 32) as usize % segments, (cursor & 0xffff_ffff) as usize);
            bucket.clear();
            if !self.map.bucket_entries(seg, idx, &mut bucket) {
                seg = (seg + 1) % segments;
                idx = 0;
            } else {
                idx += 1;
                for e in &bucket {
                    if e.expired(now) && self.map.remove_if_same(e) {
                        self.account(&Change { old: Some(e.clone()), new: None }, now);
                        removed += 1;
                    }
                }
            }
            cursor = (seg as u64) << 32 | idx as u64;
        }
        self.sweep.store(cursor, Ordering::Relaxed);
        removed
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn set_get_options() {
        let s = Store::default();
        let now = 1_000_000;
        assert_eq!(s.set(b"k", b("v1"), Cond::Nx, Ttl::Persist, true, now), (true, None));
        assert_eq!(s.set(b"k", b("v2"), Cond::Nx, Ttl::Persist, true, now), (false, Some(b("v1"))));
        assert_eq!(s.set(b"x", b("v"), Cond::Xx, Ttl::Persist, false, now), (false, None));
        assert_eq!(s.set(b"k", b("v3"), Cond::Xx, Ttl::At(now + 5000), true, now), (true, Some(b("v1"))));
        assert_eq!(s.pttl(b"k", now), 5000);
        s.set(b"k", b("v4"), Cond::Always, Ttl::Keep, false, now);
        assert_eq!(s.pttl(b"k", now + 1000), 4000);
        s.set(b"k", b("v5"), Cond::Always, Ttl::Persist, false, now);
        assert_eq!(s.pttl(b"k", now), -1);
        assert_eq!(s.pttl(b"nope", now), -2);
        assert_eq!(s.get(b"k", now), Some(b("v5")));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn lazy_expiry_and_accounting() {
        let s = Store::default();
        s.set(b"k", b("value"), Cond::Always, Ttl::At(2000), false, 1000);
        assert_eq!(s.expires(), 1);
        assert_eq!(s.used_memory(), (1 + 5 + ENTRY_OVERHEAD) as u64);
        assert!(s.exists(b"k", 1999));
        assert!(!s.exists(b"k", 2000));
        assert_eq!(s.len(), 0);
        assert_eq!(s.used_memory(), 0);
        assert_eq!(s.expires(), 0);
        assert_eq!(s.stats.expired_keys.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn active_expiry_removes_without_reads() {
        let s = Store::default();
        for i in 0..1000 {
            let ttl = if i % 2 == 0 { Ttl::At(1500) } else { Ttl::Persist };
            s.set(format!("k{i}").as_bytes(), b("v"), Cond::Always, ttl, false, 1000);
        }
        let mut removed = 0;
        for _ in 0..100 {
            removed += s.active_expire(1000, 2000);
        }
        assert_eq!(removed, 500);
        assert_eq!(s.len(), 500);
        assert_eq!(s.expires(), 0);
    }

    #[test]
    fn integers() {
        let s = Store::default();
        assert_eq!(s.incr_by(b"n", 5, 0), Ok(5));
        assert_eq!(s.incr_by(b"n", -7, 0), Ok(-2));
        assert_eq!(s.get(b"n", 0), Some(b("-2")));
        s.set(b"n", b(&i64::MAX.to_string()), Cond::Always, Ttl::Persist, false, 0);
        assert_eq!(s.incr_by(b"n", 1, 0), Err(StoreError::Overflow));
        s.set(b"s", b("01"), Cond::Always, Ttl::Persist, false, 0);
        assert_eq!(s.incr_by(b"s", 1, 0), Err(StoreError::NotInteger));
        assert_eq!(s.incr_by_float(b"f", 10.5, 0), Ok(b("10.5")));
        assert_eq!(s.incr_by_float(b"f", 0.1, 0), Ok(b("10.6")));
        assert_eq!(s.incr_by_float(b"f", 5.0e3, 0), Ok(b("5010.6")));
        assert_eq!(parse_i64(b"-0"), None);
        assert_eq!(parse_i64(b"-9223372036854775808"), Some(i64::MIN));
        assert_eq!(parse_i64(b"9223372036854775808"), None);
        assert_eq!(parse_i64(b" 1"), None);
        assert_eq!(format_f64(1e20), "100000000000000000000");
    }

    #[test]
    fn append_and_setrange() {
        let s = Store::default();
        assert_eq!(s.append(b"a", b"Hello", 0), Ok(5));
        assert_eq!(s.append(b"a", b" World", 0), Ok(11));
        assert_eq!(s.setrange(b"a", 6, b"Redis", 0), Ok(11));
        assert_eq!(s.get(b"a", 0), Some(b("Hello Redis")));
        assert_eq!(s.setrange(b"z", 3, b"x", 0), Ok(4));
        assert_eq!(s.get(b"z", 0).unwrap().as_ref(), b"\0\0\0x");
        assert_eq!(s.setrange(b"e", 3, b"", 0), Ok(0));
        assert!(!s.exists(b"e", 0));
        assert_eq!(s.setrange(b"big", MAX_VALUE, b"x", 0), Err(StoreError::TooBig));
    }

    #[test]
    fn expire_conditions() {
        let s = Store::default();
        s.set(b"k", b("v"), Cond::Always, Ttl::Persist, false, 0);
        assert!(!s.expire_at(b"k", 100, ExpireCond::Xx, 0));
        assert!(!s.expire_at(b"k", 100, ExpireCond::Gt, 0));
        assert!(s.expire_at(b"k", 100, ExpireCond::Nx, 0));
        assert!(!s.expire_at(b"k", 50, ExpireCond::Gt, 0));
        assert!(s.expire_at(b"k", 50, ExpireCond::Lt, 0));
        assert_eq!(s.pttl(b"k", 0), 50);
        assert!(s.persist(b"k", 0));
        assert!(!s.persist(b"k", 0));
        assert!(s.expire_at(b"k", 5, ExpireCond::Always, 10), "a past time deletes");
        assert!(!s.exists(b"k", 10));
    }

    #[test]
    fn msetnx_all_or_nothing() {
        let s = Store::default();
        assert!(s.msetnx(&[(b"a", b("1")), (b"b", b("2"))], 0));
        assert!(!s.msetnx(&[(b"c", b("3")), (b"a", b("x"))], 0));
        assert!(!s.exists(b"c", 0));
        assert_eq!(s.get(b"a", 0), Some(b("1")));
    }

    #[test]
    fn scan_sees_every_key_once_without_changes() {
        let s = Store::default();
        for i in 0..5000 {
            s.set(format!("key:{i}").as_bytes(), b("v"), Cond::Always, Ttl::Persist, false, 0);
        }
        s.set(b"other", b("v"), Cond::Always, Ttl::Persist, false, 0);
        let mut out = Vec::new();
        let mut cursor = 0;
        let mut steps = 0;
        loop {
            cursor = s.scan(cursor, Some(b"key:*"), 100, 0, &mut out);
            steps += 1;
            if cursor == 0 {
                break;
            }
        }
        assert!(steps > 10);
        out.sort();
        out.dedup();
        assert_eq!(out.len(), 5000);
        assert_eq!(s.keys(Some(b"oth*"), 0), vec![b("other")]);
    }

    #[test]
    fn eviction_lru_and_oom() {
        let s = Store::new(0, Policy::AllKeysLru);
        for i in 0..2000 {
            s.set(format!("k{i}").as_bytes(), Bytes::from(vec![b'x'; 100]), Cond::Always, Ttl::Persist, false, 1000 * i);
        }
        let used = s.used_memory();
        s.set_maxmemory(used / 2);
        // Touch the most recent keys, then write: eviction must bring memory under the limit.
        assert_eq!(s.make_room(3_000_000), Ok(()));
        assert!(s.used_memory() <= used / 2);
        assert!(s.stats.evicted_keys.load(Ordering::Relaxed) >= 900);
        // Approximate LRU: old keys go first far more often than new ones.
        let old_left = (0..500).filter(|i| s.exists(format!("k{i}").as_bytes(), 3_000_000)).count();
        let new_left = (1500..2000).filter(|i| s.exists(format!("k{i}").as_bytes(), 3_000_000)).count();
        assert!(new_left > old_left * 2, "old keys left {old_left}, new keys left {new_left}");
        let s2 = Store::new(1, Policy::NoEviction);
        s2.set(b"a", b("b"), Cond::Always, Ttl::Persist, false, 0);
        assert_eq!(s2.make_room(0), Err(StoreError::Oom));
        let s3 = Store::new(1, Policy::VolatileLru);
        s3.set(b"a", b("b"), Cond::Always, Ttl::Persist, false, 0);
        assert_eq!(s3.make_room(0), Err(StoreError::Oom), "nothing volatile to evict");
    }
}
