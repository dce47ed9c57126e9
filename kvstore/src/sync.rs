//! The concurrency primitives the store is built on, in one place so that the
//! `shuttle` feature can swap them for shuttle's instrumented versions (the randomized
//! concurrency tests then explore the interleavings of the store's own algorithm; arc-swap
//! itself is treated as the atomic primitive it is).
//!
//! [`Cell`] is the atomically swappable pointer of the multi-version map: a reader takes a
//! snapshot of the current version without blocking and without touching a reference
//! count (arc-swap's debt list), a writer replaces the version with compare-and-swap.

#[cfg(not(feature = "shuttle"))]
mod imp {
    pub use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize};
    pub use std::sync::Arc;
    use std::ops::Deref;

    /// Give the CPU to another thread (a writer waiting for a resize to finish).
    pub fn yield_now() {
        std::thread::yield_now()
    }

    /// An atomically swappable `Arc<T>` (arc-swap).
    pub struct Cell<T>(arc_swap::ArcSwap<T>);

    /// A reader's snapshot of a [`Cell`]'s current version: derefs to the `Arc`.
    pub struct Snapshot<T>(arc_swap::Guard<Arc<T>>);

    impl<T> Deref for Snapshot<T> {
        type Target = Arc<T>;
        fn deref(&self) -> &Arc<T> {
            &self.0
        }
    }

    impl<T> Cell<T> {
        /// A cell holding `v`.
        pub fn new(v: Arc<T>) -> Self {
            Cell(arc_swap::ArcSwap::new(v))
        }
        /// The current version, without blocking.
        pub fn load(&self) -> Snapshot<T> {
            Snapshot(self.0.load())
        }
        /// The current version as an owned `Arc`.
        pub fn load_full(&self) -> Arc<T> {
            self.0.load_full()
        }
        /// Replace the version unconditionally.
        pub fn store(&self, v: Arc<T>) {
            self.0.store(v)
        }
        /// Replace the version if it still is `current`; true on success.
        pub fn compare_and_swap(&self, current: &Arc<T>, new: Arc<T>) -> bool {
            let prev = self.0.compare_and_swap(current, new);
            Arc::ptr_eq(&prev, current)
        }
    }
}

#[cfg(feature = "shuttle")]
mod imp {
    pub use shuttle::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, AtomicUsize};
    pub use shuttle::sync::Arc;
    use std::ops::Deref;

    /// Give the CPU to another (shuttle) thread.
    pub fn yield_now() {
        shuttle::thread::yield_now()
    }

    /// An atomically swappable `Arc<T>`, each operation one scheduling point.
    pub struct Cell<T>(shuttle::sync::Mutex<Arc<T>>);

    /// A reader's snapshot.
    pub struct Snapshot<T>(Arc<T>);

    impl<T> Deref for Snapshot<T> {
        type Target = Arc<T>;
        fn deref(&self) -> &Arc<T> {
            &self.0
        }
    }

    impl<T> Cell<T> {
        /// A cell holding `v`.
        pub fn new(v: Arc<T>) -> Self {
            Cell(shuttle::sync::Mutex::new(v))
        }
        /// The current version.
        pub fn load(&self) -> Snapshot<T> {
            Snapshot(self.load_full())
        }
        /// The current version as an owned `Arc`.
        pub fn load_full(&self) -> Arc<T> {
            self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
        }
        /// Replace the version unconditionally.
        pub fn store(&self, v: Arc<T>) {
            *self.0.lock().unwrap_or_else(|e| e.into_inner()) = v;
        }
        /// Replace the version if it still is `current`; true on success.
        pub fn compare_and_swap(&self, current: &Arc<T>, new: Arc<T>) -> bool {
            let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
            if Arc::ptr_eq(&g, current) {
                *g = new;
                true
            } else {
                false
            }
        }
    }
}

pub use imp::*;
