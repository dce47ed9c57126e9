//! Cycle accounting: where a fast-path core's time goes.
//!
//! Every [`crate::core::FastPath::poll`] is timed with the CPU's time-stamp counter
//! (`rdtsc` on x86-64; the monotonic clock in nanoseconds elsewhere) and its duration is
//! added to one of two per-core counters: **busy** when the poll did work (received,
//! sent, or handled a doorbell or command), **idle** when it found nothing. From them:
//!
//! - utilisation = busy / (busy + idle): the share of the core's polling time spent on
//!   packets (time asleep in `poll(2)` is in neither counter);
//! - cycles per batch = busy / `busy_polls`;
//! - stack cycles per packet = busy / (`rx_frames` + `tx_frames`);
//! - of the busy ticks, those in the end-of-batch system calls (the transmit kick, a
//!   slow-path wake-up): `kick`;
//! - with a request count from the outside (the benchmark harness), stack cycles per
//!   request.
//!
//! The counters are plain single-writer atomics like the core's other counters: three
//! `rdtsc` reads per busy poll (start, before the kick, end), two per idle poll, and
//! relaxed load/store pairs, no locked instruction (its cost is
//! measured by the `segment` criterion bench, docs/benchmarks.md). To turn cycles into
//! time, readers use [`ticks_per_us`], calibrated once per process against the
//! monotonic clock (`tasd` exports it as the `tsc_ticks_per_us` gauge).
#![allow(unsafe_code)]

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Busy and idle time of one core, in ticks of [`now`].
#[derive(Debug, Default)]
pub struct CycleCounters {
    /// Ticks spent in polls that did work.
    pub busy: AtomicU64,
    /// Ticks spent in polls that found nothing.
    pub idle: AtomicU64,
    /// Of the busy ticks, those spent in the end-of-batch system calls: the transmit kick
    /// (`PacketIo::tx_flush`, the `sendto` that makes an AF_XDP socket in copy mode copy
    /// and send its frames) and, when it sleeps, the slow path's wake-up.
    pub kick: AtomicU64,
}

impl CycleCounters {
    /// Account the poll that started at `start` (a [`now`] reading) and ends now; `kick`
    /// is [`kick_start`]'s reading, taken before the end-of-batch system calls.
    #[inline]
    pub fn record(&self, start: u64, kick: u64, did_work: bool) {
        let end = now();
        let add = |c: &AtomicU64, ticks: u64| {
            // Single writer (the core's thread): load + store, no locked add.
            c.store(c.load(Ordering::Relaxed).wrapping_add(ticks), Ordering::Relaxed);
        };
        if did_work {
            add(&self.busy, end.wrapping_sub(start));
            add(&self.kick, end.wrapping_sub(kick));
        } else {
            add(&self.idle, end.wrapping_sub(start));
        }
    }
}

/// The tick count before the end-of-batch system calls of a poll that did work; an idle
/// poll (nothing to send) skips the read and passes 0, which [`CycleCounters::record`]
/// ignores.
#[inline]
pub fn kick_start(did_work: bool) -> u64 {
    if did_work {
        now()
    } else {
        0
    }
}

/// The current tick count: the time-stamp counter on x86-64 (constant-rate on every CPU
/// this runs on: `constant_tsc`), nanoseconds of the monotonic clock elsewhere.
#[inline]
pub fn now() -> u64 {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no memory effects and no preconditions; every x86-64 CPU has it
        // (CR4.TSD is never set for user space on Linux).
        unsafe { core::arch::x86_64::_rdtsc() }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        monotonic_ns()
    }
}

fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Ticks of [`now`] per microsecond (the TSC frequency in MHz on x86-64; 1000 elsewhere),
/// measured once per process over 20 ms against the monotonic clock. The first call
/// blocks for that long: call it from a reporting thread, never from a core.
pub fn ticks_per_us() -> u64 {
    static RATE: OnceLock<u64> = OnceLock::new();
    *RATE.get_or_init(|| {
        if cfg!(not(target_arch = "x86_64")) {
            return 1_000;
        }
        let (t0, n0) = (now(), monotonic_ns());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (t1, n1) = (now(), monotonic_ns());
        let ns = n1.saturating_sub(n0).max(1);
        // Round to whole MHz: the calibration's own error is larger than that.
        ((t1.wrapping_sub(t0) as u128 * 1_000 + ns as u128 / 2) / ns as u128).max(1) as u64
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn busy_and_idle_go_to_their_own_counter() {
        let c = CycleCounters::default();
        let start = now();
        // Some work that takes measurable time.
        let mut x = 0u64;
        for i in 0..10_000u64 {
            x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(i));
        }
        let kick = kick_start(true);
        c.record(start, kick, true);
        let busy = c.busy.load(Ordering::Relaxed);
        assert!(busy > 0, "a poll that took time recorded no busy ticks");
        assert!(c.kick.load(Ordering::Relaxed) < busy, "the kick is a part of the poll");
        assert_eq!(c.idle.load(Ordering::Relaxed), 0);
        let kick_before = c.kick.load(Ordering::Relaxed);
        c.record(now(), kick_start(false), false);
        assert_eq!(c.busy.load(Ordering::Relaxed), busy, "an idle poll changed the busy count");
        assert_eq!(c.kick.load(Ordering::Relaxed), kick_before, "an idle poll changed the kick count");
        assert!(c.idle.load(Ordering::Relaxed) > 0, "an idle poll recorded no ticks");
    }

    #[test]
    fn calibration_matches_the_clock() {
        let rate = ticks_per_us();
        // 100 MHz .. 10 GHz: anything else is a broken calibration, not a CPU.
        assert!((100..=10_000).contains(&rate), "ticks per µs = {rate}");
        let (t0, n0) = (now(), monotonic_ns());
        std::thread::sleep(std::time::Duration::from_millis(30));
        let (t1, n1) = (now(), monotonic_ns());
        let ns_by_ticks = (t1 - t0) * 1_000 / rate;
        let ns = n1 - n0;
        let err = ns_by_ticks.abs_diff(ns) as f64 / ns as f64;
        assert!(err < 0.05, "ticks say {ns_by_ticks} ns, the clock {ns} ns");
    }
}
