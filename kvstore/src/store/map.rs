//! The optimistic multi-version concurrent hash map under the store.
//!
//! ## Shape
//! The map is split into [`SEGMENTS`] segments by the top bits of a key's hash. Each segment
//! points (through a [`Cell`], an atomically swappable `Arc`) to its current table, an
//! array of bucket cells; each bucket cell points to an immutable bucket version: a chain of
//! [`Entry`]s linked by `next`, the cell pointing at the first (an empty bucket points at a
//! shared placeholder). Entries are immutable once published (only their access clock
//! changes), so versions share their tails. A lookup goes table -> entry -> value: two
//! dependent loads before the value's bytes.
//!
//! ## Readers
//! A reader snapshots the segment's table, then the bucket, and walks its chain. Nothing
//! blocks and nothing is written (arc-swap's snapshots do not touch reference counts): a
//! reader never waits for a writer, and a writer never waits for a reader. What a reader
//! found stays valid as long as it holds it, even if the key is overwritten or deleted
//! meanwhile: the old entries are freed when the last holder lets go.
//!
//! ## Writers
//! A writer snapshots the bucket, computes the new version and installs it with
//! compare-and-swap: a new key goes in front of the chain (nothing copied); replacing or
//! removing the k-th entry copies the k-1 entries before it (chains average under one entry
//! per bucket; key and value bytes are shared, never copied) and shares the rest. If another
//! writer got there first, it recomputes from the newer version and tries again (optimistic
//! concurrency). Single-key operations are therefore linearizable at their successful swap;
//! read-modify-write commands (INCR, APPEND, SET NX/XX/GET, ...) recompute from the version
//! they replace. Because moving or relinking copies entries, "the same version" of a key
//! is decided by [`Entry::same_version`] (same value buffer and expiry), not by address.

//! ## Growing and flushing
//! When a segment holds more entries than buckets, the writer that noticed doubles it: it
//! takes the segment's `resizing` flag, **freezes** every bucket (replacing it with a frozen
//! copy by compare-and-swap, so no later write can land in it), builds the new table from the
//! frozen contents, and publishes it. Writers that meet a frozen bucket wait (yielding)
//! until the new table is published and retry there. Readers never wait, and read a frozen
//! bucket like any other. That is linearizable: a reader took its table snapshot at some
//! time t0 when that table was current, and read the bucket at t1 >= t0. If the bucket was
//! frozen before t0, no write to its keys completed between the freeze and t0 (writers wait
//! for the publication, which comes after t0), so its contents are the state at t0; if it
//! was frozen at tf in (t0, t1], its contents are the state at tf. Either way the read takes
//! effect at a moment inside its own interval. (The shuttle tests check this, and a
//! mutation that lets writers write into frozen buckets fails all of them.) Flushing is the
//! same procedure with an empty new table.
//!
//! Bucket versions are compared by pointer. An ABA (the same pointer back in a cell) is
//! impossible for freshly allocated versions while a writer holds a snapshot of the old one
//! (the snapshot keeps it alive), and harmless for the shared empty placeholder (same
//! pointer, same contents).

use std::hash::BuildHasher;

use bytes::Bytes;

use crate::sync::{yield_now, Arc, AtomicBool, AtomicI64, AtomicU32, Cell};
use std::sync::atomic::Ordering;

/// log2 of the number of segments.
pub const SEGMENT_BITS: u32 = 6;
/// Segments: enough that two growing segments rarely block the same writers, few enough
/// that an empty map is small.
pub const SEGMENTS: usize = 1 << SEGMENT_BITS;
/// Buckets of a new segment table (a power of two).
pub const INITIAL_BUCKETS: usize = 16;

/// A key: up to [`Key::INLINE`] bytes inside the entry itself (no pointer to chase when a
/// lookup compares it), longer ones in a shared buffer.
#[derive(Debug, Clone)]
pub enum Key {
    /// A short key, stored inline.
    Inline {
        /// Its length.
        len: u8,
        /// Its bytes (the first `len`).
        buf: [u8; Key::INLINE],
    },
    /// A longer key.
    Heap(Bytes),
}

impl Key {
    /// Longest key kept inline.
    pub const INLINE: usize = 30;

    /// A key holding a copy of `k`.
    pub fn new(k: &[u8]) -> Key {
        if k.len() <= Key::INLINE {
            let mut buf = [0u8; Key::INLINE];
            buf[..k.len()].copy_from_slice(k);
            Key::Inline { len: k.len() as u8, buf }
        } else {
            Key::Heap(Bytes::copy_from_slice(k))
        }
    }

    /// The key's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Key::Inline { len, buf } => &buf[..*len as usize],
            Key::Heap(b) => b,
        }
    }

    /// The key as shared bytes (a copy for an inline key).
    pub fn to_bytes(&self) -> Bytes {
        match self {
            Key::Inline { .. } => Bytes::copy_from_slice(self.as_bytes()),
            Key::Heap(b) => b.clone(),
        }
    }
}

/// One key and its value, and the link to the next entry of its bucket: a bucket version is
/// a chain of entries, and the bucket cell points at its first one (so a lookup goes from
/// the table straight to an entry). Immutable once published, except the access clock.
#[derive(Debug)]
pub struct Entry {
    hash: u64,
    /// The key.
    pub key: Key,
    /// The value (shared: handing it out clones a reference, not the bytes).
    pub value: Bytes,
    /// Absolute expiry time in Unix milliseconds; 0: the key does not expire.
    pub expire_at: u64,
    /// Last access, in the store's coarse clock (seconds), for approximate LRU.
    lru: AtomicU32,
    /// The next entry of the bucket version (versions share their tails).
    next: Option<Arc<Entry>>,
    /// On a bucket's first entry: the bucket is being moved; no write may land in it.
    frozen: bool,
    /// The placeholder of an empty bucket (holds no key).
    vacant: bool,
}

impl Entry {
    /// A new entry (its hash computed by [`Map::hash`]).
    pub fn new(hash: u64, key: Key, value: Bytes, expire_at: u64, lru: u32) -> Entry {
        Entry { hash, key, value, expire_at, lru: AtomicU32::new(lru), next: None, frozen: false, vacant: false }
    }

    fn vacant(frozen: bool) -> Entry {
        Entry { frozen, vacant: true, ..Entry::new(0, Key::new(b""), Bytes::new(), 0, 0) }
    }

    /// A copy of this entry (same key, value, expiry and access time) in another chain.
    fn relink(&self, next: Option<Arc<Entry>>, frozen: bool) -> Entry {
        Entry {
            hash: self.hash,
            key: self.key.clone(),
            value: self.value.clone(),
            expire_at: self.expire_at,
            lru: AtomicU32::new(self.lru()),
            next,
            frozen,
            vacant: self.vacant,
        }
    }

    /// True if `other` is the same version of the same key: the same key, the same value
    /// buffer and the same expiry. (Moving a chain copies entries, so versions are not
    /// compared by the entry's address.)
    pub fn same_version(&self, other: &Entry) -> bool {
        self.hash == other.hash
            && self.expire_at == other.expire_at
            && self.value.as_ptr() == other.value.as_ptr()
            && self.value.len() == other.value.len()
            && self.key.as_bytes() == other.key.as_bytes()
    }

    /// The key's hash.
    pub fn hash(&self) -> u64 {
        self.hash
    }

    /// True if the entry has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expire_at != 0 && self.expire_at <= now_ms
    }

    /// Last access time (coarse clock).
    pub fn lru(&self) -> u32 {
        self.lru.load(Ordering::Relaxed)
    }

    /// Record an access. Writes only when the coarse clock moved, so a hot key read by many
    /// threads does not bounce its cache line on every read.
    pub fn touch(&self, clock: u32) {
        if self.lru.load(Ordering::Relaxed) != clock {
            self.lru.store(clock, Ordering::Relaxed);
        }
    }
}

/// The entries of the bucket version whose first entry is `head`.
fn chain(head: &Arc<Entry>) -> impl Iterator<Item = &Arc<Entry>> {
    let mut cur = if head.vacant { None } else { Some(head) };
    std::iter::from_fn(move || {
        let e = cur?;
        cur = e.next.as_ref();
        Some(e)
    })
}

/// A chain of copies of `prefix` (in order) followed by `tail`; `empty` if both are empty.
fn rebuild(prefix: &[&Arc<Entry>], tail: Option<Arc<Entry>>, empty: &Arc<Entry>) -> Arc<Entry> {
    let mut next = tail;
    for e in prefix.iter().rev() {
        next = Some(Arc::new(e.relink(next, false)));
    }
    next.unwrap_or_else(|| empty.clone())
}

/// One version of a segment's table.
struct Table {
    buckets: Box<[Cell<Entry>]>,
    mask: usize,
}

struct Segment {
    table: Cell<Table>,
    /// Entries in the segment (exact once every writer finished its bookkeeping).
    len: AtomicI64,
    /// Held by the one thread that grows or flushes this segment.
    resizing: AtomicBool,
}

/// What [`Map::update`]'s closure decides.
#[derive(Debug)]
pub enum Action {
    /// Change nothing.
    Keep,
    /// Insert this entry, or replace the key's current one with it.
    Put(Entry),
    /// Remove the key's entry.
    Remove,
}

/// What [`Map::update`] changed.
#[derive(Debug, Default)]
pub struct Change {
    /// The entry that was replaced or removed.
    pub old: Option<Arc<Entry>>,
    /// The entry that was put (as linked into the bucket).
    pub new: Option<Arc<Entry>>,
}

/// The concurrent map (see the module documentation).
pub struct Map {
    segments: Box<[crossbeam_pad::Padded<Segment>]>,
    segment_bits: u32,
    initial_buckets: usize,
    hasher: foldhash::fast::RandomState,
    empty: Arc<Entry>,
}

/// Cache-line padding for the per-segment headers, so writers of different segments do not
/// share a line.
mod crossbeam_pad {
    /// `T` alone on (at least) one 128-byte span: two cache lines, as adjacent-line
    /// prefetchers pair them.
    #[repr(align(128))]
    pub struct Padded<T>(pub T);
}

impl std::fmt::Debug for Map {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Map").field("len", &self.len()).finish_non_exhaustive()
    }
}

impl Default for Map {
    fn default() -> Self {
        Map::new()
    }
}

impl Map {
    /// An empty map.
    pub fn new() -> Map {
        Map::with_geometry(SEGMENT_BITS, INITIAL_BUCKETS)
    }

    /// An empty map of `2^segment_bits` segments (at most [`SEGMENTS`]) of
    /// `initial_buckets` buckets each (a power of two). Tests use a single one-bucket
    /// segment, so that a few keys make it grow.
    pub fn with_geometry(segment_bits: u32, initial_buckets: usize) -> Map {
        assert!(segment_bits <= SEGMENT_BITS && initial_buckets.is_power_of_two());
        let empty = Arc::new(Entry::vacant(false));
        let segments = (0..1usize << segment_bits)
            .map(|_| {
                crossbeam_pad::Padded(Segment {
                    table: Cell::new(Arc::new(Table::empty(initial_buckets, &empty))),
                    len: AtomicI64::new(0),
                    resizing: AtomicBool::new(false),
                })
            })
            .collect();
        Map { segments, segment_bits, initial_buckets, hasher: foldhash::fast::RandomState::default(), empty }
    }

    /// Number of segments.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    fn segment_index(&self, hash: u64) -> usize {
        if self.segment_bits == 0 {
            0
        } else {
            (hash >> (64 - self.segment_bits)) as usize
        }
    }

    /// The hash of `key` (seeded per map).
    pub fn hash(&self, key: &[u8]) -> u64 {
        self.hasher.hash_one(key)
    }

    fn segment(&self, hash: u64) -> &Segment {
        &self.segments[self.segment_index(hash)].0
    }

    /// Entries in the map (including expired ones not yet removed).
    pub fn len(&self) -> usize {
        self.segments.iter().map(|s| s.0.len.load(Ordering::Relaxed)).sum::<i64>().max(0) as usize
    }

    /// True if the map holds no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Call `f` on the key's current entry, if any, without blocking and without copying.
    pub fn with<R>(&self, hash: u64, key: &[u8], f: impl FnOnce(&Arc<Entry>) -> R) -> Option<R> {
        let seg = self.segment(hash);
        let table = seg.table.load();
        // A frozen bucket (being moved by a resize) is read like any other: see the module
        // documentation for why its contents are current at some moment of this read.
        let bucket = table.buckets[hash as usize & table.mask].load();
        find(&bucket, hash, key).map(f)
    }

    /// The key's current entry (a new reference to it).
    pub fn get(&self, hash: u64, key: &[u8]) -> Option<Arc<Entry>> {
        self.with(hash, key, Arc::clone)
    }

    /// Read-modify-write one key: `f` sees the current entry (or None) and decides. `f` may
    /// run several times (once per lost race), each time on a newer version; only the
    /// decision of the last run takes effect, and its result is returned.
    pub fn update<R>(&self, hash: u64, key: &[u8], mut f: impl FnMut(Option<&Arc<Entry>>) -> (Action, R)) -> (R, Change) {
        let seg = self.segment(hash);
        loop {
            let table = seg.table.load();
            let cell = &table.buckets[hash as usize & table.mask];
            let head = cell.load();
            if head.frozen {
                wait_for_new_table(seg, &table);
                continue;
            }
            let mut prefix: Vec<&Arc<Entry>> = Vec::new();
            let mut found = None;
            for e in chain(&head) {
                if e.hash == hash && e.key.as_bytes() == key {
                    found = Some(e);
                    break;
                }
                prefix.push(e);
            }
            let (action, r) = f(found);
            let (next, change, delta) = match action {
                Action::Keep => return (r, Change::default()),
                Action::Put(mut e) => match found {
                    // Replace: copies of the entries before it, the new one, the old tail.
                    Some(old) => {
                        e.next = old.next.clone();
                        let e = Arc::new(e);
                        let next = rebuild(&prefix, Some(e.clone()), &self.empty);
                        (next, Change { old: Some(old.clone()), new: Some(e) }, 0)
                    }
                    // Insert at the front: nothing is copied.
                    None => {
                        e.next = if head.vacant { None } else { Some((*head).clone()) };
                        let e = Arc::new(e);
                        (e.clone(), Change { old: None, new: Some(e) }, 1)
                    }
                },
                Action::Remove => {
                    let Some(old) = found else { return (r, Change::default()) };
                    let next = rebuild(&prefix, old.next.clone(), &self.empty);
                    (next, Change { old: Some(old.clone()), new: None }, -1)
                }
            };
            if cell.compare_and_swap(&head, next) {
                if delta != 0 {
                    let len = seg.len.fetch_add(delta, Ordering::Relaxed) + delta;
                    if delta > 0 && len as usize > table.buckets.len() {
                        drop(prefix);
                        drop(head);
                        drop(table);
                        self.grow(seg);
                    }
                }
                return (r, change);
            }
        }
    }

    /// Remove the key's entry if it is still the same version as `entry` (lazy expiry,
    /// eviction, undo).
    pub fn remove_if_same(&self, entry: &Entry) -> bool {
        let (removed, _) = self.update(entry.hash, entry.key.as_bytes(), |cur| match cur {
            Some(c) if c.same_version(entry) => (Action::Remove, true),
            _ => (Action::Keep, false),
        });
        removed
    }

    /// Double the segment's table if nobody else is doing it already.
    fn grow(&self, seg: &Segment) {
        if seg.resizing.swap(true, Ordering::Acquire) {
            return;
        }
        let old = seg.table.load_full();
        if seg.len.load(Ordering::Relaxed) as usize > old.buckets.len() {
            let entries = self.freeze(&old);
            let n = old.buckets.len() * 2;
            seg.table.store(Arc::new(Table::with_entries(n, entries, &self.empty)));
        }
        seg.resizing.store(false, Ordering::Release);
    }

    /// Freeze every bucket of `table` (no write lands in it afterwards); return the entries.
    fn freeze(&self, table: &Table) -> Vec<Arc<Entry>> {
        let mut all = Vec::new();
        for cell in table.buckets.iter() {
            loop {
                let head = cell.load();
                debug_assert!(!head.frozen, "only the holder of `resizing` freezes");
                let frozen = Arc::new(head.relink(head.next.clone(), true));
                if cell.compare_and_swap(&head, frozen) {
                    all.extend(chain(&head).cloned());
                    break;
                }
            }
        }
        all
    }

    /// Remove every entry; returns them (the caller accounts for and drops them). Each
    /// segment is emptied atomically; concurrent writes to a segment land either before its
    /// flush (and are removed) or after (and stay).
    pub fn clear(&self) -> Vec<Arc<Entry>> {
        let mut all = Vec::new();
        for s in self.segments.iter() {
            let seg = &s.0;
            while seg.resizing.swap(true, Ordering::Acquire) {
                yield_now();
            }
            let old = seg.table.load_full();
            let entries = self.freeze(&old);
            seg.len.fetch_sub(entries.len() as i64, Ordering::Relaxed);
            seg.table.store(Arc::new(Table::empty(self.initial_buckets, &self.empty)));
            seg.resizing.store(false, Ordering::Release);
            all.extend(entries);
        }
        all
    }

    /// Number of buckets of segment `seg`'s current table.
    pub fn buckets(&self, seg: usize) -> usize {
        self.segments[seg].0.table.load().buckets.len()
    }

    /// Append the entries of bucket `idx` of segment `seg` (in its current table) to `out`.
    /// Returns false if `idx` is past the table's end.
    pub fn bucket_entries(&self, seg: usize, idx: usize, out: &mut Vec<Arc<Entry>>) -> bool {
        let table = self.segments[seg].0.table.load();
        let Some(cell) = table.buckets.get(idx) else { return false };
        out.extend(chain(&cell.load()).cloned());
        true
    }

    /// Append the entries of some non-empty bucket near the position `r` picks (random
    /// sampling for eviction and active expiry); looks at most `tries` buckets.
    pub fn sample(&self, r: u64, tries: usize, out: &mut Vec<Arc<Entry>>) {
        let seg = &self.segments[self.segment_index(r)].0;
        let table = seg.table.load();
        let start = r as usize;
        for i in 0..tries.min(table.buckets.len()) {
            let b = table.buckets[(start + i) & table.mask].load();
            if !b.vacant {
                out.extend(chain(&b).cloned());
                return;
            }
        }
    }
}

fn find<'a>(head: &'a Arc<Entry>, hash: u64, key: &[u8]) -> Option<&'a Arc<Entry>> {
    chain(head).find(|e| e.hash == hash && e.key.as_bytes() == key)
}

/// A writer met a frozen bucket: wait until the segment's new table is published.
fn wait_for_new_table(seg: &Segment, old: &Arc<Table>) {
    let mut spins = 0u32;
    loop {
        let now = seg.table.load();
        if !Arc::ptr_eq(&now, old) {
            return;
        }
        drop(now);
        spins += 1;
        if spins < 64 {
            std::hint::spin_loop();
        } else {
            yield_now();
        }
    }
}

impl Table {
    fn empty(n: usize, empty: &Arc<Entry>) -> Table {
        Table { buckets: (0..n).map(|_| Cell::new(empty.clone())).collect(), mask: n - 1 }
    }

    fn with_entries(n: usize, entries: Vec<Arc<Entry>>, empty: &Arc<Entry>) -> Table {
        let mask = n - 1;
        let mut heads: Vec<Option<Arc<Entry>>> = (0..n).map(|_| None).collect();
        for e in entries {
            let slot = &mut heads[e.hash as usize & mask];
            *slot = Some(Arc::new(e.relink(slot.take(), false)));
        }
        let buckets = heads.into_iter().map(|h| Cell::new(h.unwrap_or_else(|| empty.clone()))).collect();
        Table { buckets, mask }
    }
}

#[cfg(all(test, not(feature = "shuttle")))]
mod tests {
    use super::*;

    fn put(m: &Map, k: &str, v: &str) -> Change {
        let h = m.hash(k.as_bytes());
        let v = Bytes::copy_from_slice(v.as_bytes());
        m.update(h, k.as_bytes(), |_| (Action::Put(Entry::new(h, Key::new(k.as_bytes()), v.clone(), 0, 0)), ())).1
    }

    fn get(m: &Map, k: &str) -> Option<String> {
        let h = m.hash(k.as_bytes());
        m.get(h, k.as_bytes()).map(|e| String::from_utf8(e.value.to_vec()).unwrap())
    }

    #[test]
    fn put_get_replace_remove() {
        let m = Map::new();
        assert!(put(&m, "a", "1").old.is_none());
        assert_eq!(get(&m, "a").as_deref(), Some("1"));
        let c = put(&m, "a", "2");
        assert_eq!(c.old.unwrap().value.as_ref(), b"1");
        assert_eq!(get(&m, "a").as_deref(), Some("2"));
        assert_eq!(m.len(), 1);
        let h = m.hash(b"a");
        let (r, c) = m.update(h, b"a", |e| (Action::Remove, e.is_some()));
        assert!(r && c.old.is_some());
        assert_eq!(get(&m, "a"), None);
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn grows_and_keeps_every_key() {
        let m = Map::new();
        for i in 0..20_000 {
            put(&m, &format!("k{i}"), &format!("v{i}"));
        }
        assert_eq!(m.len(), 20_000);
        let buckets: usize = (0..SEGMENTS).map(|s| m.buckets(s)).sum();
        assert!(buckets >= 20_000, "tables grew: {buckets} buckets");
        for i in 0..20_000 {
            assert_eq!(get(&m, &format!("k{i}")), Some(format!("v{i}")));
        }
        let all = m.clear();
        assert_eq!(all.len(), 20_000);
        assert_eq!(m.len(), 0);
        assert_eq!(get(&m, "k1"), None);
    }

    #[test]
    fn a_reader_keeps_a_removed_entry() {
        let m = Map::new();
        put(&m, "k", "old");
        let held = m.get(m.hash(b"k"), b"k").unwrap();
        put(&m, "k", "new");
        m.clear();
        assert_eq!(held.value.as_ref(), b"old", "still readable after replacement and flush");
        assert_eq!(Arc::strong_count(&held), 1, "the map let go of it");
    }

    #[test]
    fn remove_if_same_ignores_newer_versions() {
        let m = Map::new();
        put(&m, "k", "1");
        let e1 = m.get(m.hash(b"k"), b"k").unwrap();
        put(&m, "k", "2");
        assert!(!m.remove_if_same(&e1));
        assert_eq!(get(&m, "k").as_deref(), Some("2"));
        let e2 = m.get(m.hash(b"k"), b"k").unwrap();
        assert!(m.remove_if_same(&e2));
        assert_eq!(get(&m, "k"), None);
    }

    #[test]
    fn concurrent_inserts_during_growth_are_not_lost() {
        let m = std::sync::Arc::new(Map::new());
        let threads: Vec<_> = (0..4)
            .map(|t| {
                let m = m.clone();
                std::thread::spawn(move || {
                    for i in 0..20_000 {
                        put(&m, &format!("t{t}-{i}"), "x");
                        if i % 7 == 0 {
                            assert_eq!(get(&m, &format!("t{t}-{}", i / 2)).as_deref(), Some("x"));
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(m.len(), 80_000);
        for t in 0..4 {
            for i in 0..20_000 {
                assert!(get(&m, &format!("t{t}-{i}")).is_some(), "t{t}-{i} lost");
            }
        }
    }
}
