//! The forwarding loop: two packet sockets, one [`Impairer`] per direction, one thread.
//!
//! Each turn drains what both sockets hold (a bounded batch each, so one busy side cannot
//! starve the other), hands the frames to their direction's impairer, sends everything
//! whose release time has come, then waits: in `ppoll` until the next release or the next
//! arrival when the next release is more than [`SPIN_BELOW`] away (waking [`WAKE_EARLY`]
//! before it), spinning otherwise.

use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::sched::{Counters, Impairer};
use super::sys::{self, PacketSocket};
use super::units::Nanos;

/// Gaps shorter than this are busy-waited: a sleep and wake-up costs tens of microseconds
/// on a VM, more than the gap itself. Short, because a forwarder that spins takes a CPU
/// from the stacks it sits between (on the 2-core VM, 100 µs here kept it spinning through
/// the 60 µs gaps of a 200 Mbit/s stream, and the sender and receiver waited whole time
/// slices for a CPU: DCTCP at 56-78 % of the rate against 84-89 % with 0-20 µs, load 8-9).
/// Frames are stamped with the kernel's receive time, so a release that wakes late delays
/// the frame but costs the emulated link nothing.
pub const SPIN_BELOW: Nanos = 20_000;
/// Sleeps end this much before the release they wait for; the rest is spun.
pub const WAKE_EARLY: Nanos = 10_000;
/// Longest sleep with nothing scheduled: bounds how late a stop request missed by the
/// signal handler's race (flag checked, then ppoll entered) is seen.
const MAX_SLEEP: Nanos = 100_000_000;
/// Frames read from one socket per turn.
const RX_BATCH: usize = 64;
/// Receive buffer: a frame larger than this (64 KiB GSO frames from a peer whose offloads
/// are on) is counted as truncated and dropped.
const RX_BUF: usize = 65_536 + 4;

/// The two interfaces and what happens on the way between them.
#[derive(Debug)]
pub struct Forwarder {
    a: PacketSocket,
    b: PacketSocket,
    /// Frames from A to B.
    pub a2b: Impairer,
    /// Frames from B to A.
    pub b2a: Impairer,
    start: Instant,
    /// CLOCK_REALTIME at `start`, ns since the epoch: turns the kernel's receive
    /// timestamps into the impairers' time line.
    realtime_start: i128,
}

impl Forwarder {
    /// A forwarder between two opened sockets.
    pub fn new(a: PacketSocket, b: PacketSocket, a2b: Impairer, b2a: Impairer) -> Forwarder {
        Forwarder {
            a,
            b,
            a2b,
            b2a,
            start: Instant::now(),
            realtime_start: realtime_ns(),
        }
    }

    fn now(&self) -> Nanos {
        self.start.elapsed().as_nanos() as Nanos
    }

    /// Seconds since the forwarder started.
    pub fn elapsed(&self) -> f64 {
        self.start.elapsed().as_secs_f64()
    }

    /// Runs until SIGINT/SIGTERM; calls `report` every `stats_interval`. Frames still
    /// held at the stop are discarded (and not counted as sent).
    pub fn run(
        &mut self,
        stats_interval: Option<Duration>,
        mut report: impl FnMut(&Forwarder),
    ) -> Result<(), String> {
        sys::set_timer_slack(Duration::from_micros(1));
        let mut buf = vec![0u8; RX_BUF];
        let stats_every = stats_interval.map(|d| d.as_nanos() as Nanos);
        let mut next_stats = stats_every.map(|e| self.now() + e);
        while !sys::stop_requested() {
            let got_a = receive(&self.a, &mut self.a2b, &mut buf, self.start, self.realtime_start)?;
            let got_b = receive(&self.b, &mut self.b2a, &mut buf, self.start, self.realtime_start)?;
            let now = self.now();
            release(&mut self.a2b, &self.b, now);
            release(&mut self.b2a, &self.a, now);

            if let (Some(at), Some(every)) = (next_stats, stats_every) {
                if now >= at {
                    self.collect_socket_drops();
                    report(self);
                    next_stats = Some(now + every);
                }
            }
            if got_a == RX_BATCH || got_b == RX_BATCH {
                continue; // more is waiting: read again before deciding to sleep
            }
            let next = [self.a2b.next_release(), self.b2a.next_release(), next_stats]
                .into_iter()
                .flatten()
                .min();
            let now = self.now();
            let gap = next
                .map_or(MAX_SLEEP, |t| t.saturating_sub(now))
                .min(MAX_SLEEP);
            if gap < SPIN_BELOW {
                if got_a + got_b == 0 {
                    std::hint::spin_loop();
                }
                continue;
            }
            let timeout = Duration::from_nanos(gap - WAKE_EARLY);
            sys::wait_readable([self.a.as_raw_fd(), self.b.as_raw_fd()], timeout)
                .map_err(|e| format!("ppoll failed: {e}"))?;
        }
        self.collect_socket_drops();
        self.a2b.counters.discarded_at_exit = self.a2b.held() as u64;
        self.b2a.counters.discarded_at_exit = self.b2a.held() as u64;
        Ok(())
    }

    fn collect_socket_drops(&mut self) {
        self.a2b.counters.rx_socket_drops += self.a.take_drops();
        self.b2a.counters.rx_socket_drops += self.b.take_drops();
    }

    /// Both directions' counters.
    pub fn counters(&self) -> (Counters, Counters) {
        (self.a2b.counters, self.b2a.counters)
    }

    /// The interface names (A side, B side).
    pub fn ifnames(&self) -> (&str, &str) {
        (self.a.ifname(), self.b.ifname())
    }
}

/// CLOCK_REALTIME now, in ns since the epoch (the clock of SO_TIMESTAMPNS).
fn realtime_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

/// A frame's arrival on the impairers' time line: the kernel's receive timestamp, or the
/// time it was read if there is none. Clamped to `[0, read_at]` (a realtime clock step
/// cannot put a frame in the future or before the start).
fn arrival(stamp: Option<i128>, realtime_start: i128, read_at: Nanos) -> Nanos {
    match stamp {
        Some(t) => (t - realtime_start).clamp(0, i128::from(read_at)) as Nanos,
        None => read_at,
    }
}

/// Reads up to [`RX_BATCH`] frames from `sock` into `imp`; returns how many.
fn receive(
    sock: &PacketSocket,
    imp: &mut Impairer,
    buf: &mut [u8],
    start: Instant,
    realtime_start: i128,
) -> Result<usize, String> {
    let mut n = 0;
    while n < RX_BATCH {
        match sock.recv(buf) {
            Ok(None) => break,
            Ok(Some((len, _))) if len > buf.len() => {
                imp.counters.rx_truncated += 1;
                n += 1;
            }
            Ok(Some((len, stamp))) => {
                // The frame's own arrival time (the kernel's), not the batch's or the
                // read's: the rate limiter and the delay line start from it, so a
                // forwarder that was descheduled delays frames but the emulated link
                // keeps its capacity and its queue the length it really had.
                let read_at = start.elapsed().as_nanos() as Nanos;
                let at = arrival(stamp, realtime_start, read_at).max(imp.last_arrival());
                imp.counters.max_read_delay_us = imp.counters.max_read_delay_us.max((read_at - at.min(read_at)) / 1_000);
                imp.arrive(at, &buf[..len]);
                n += 1;
            }
            Err(e) => return Err(format!(
                "receiving on {} failed: {e} (was the interface deleted? the sandbox torn down?)",
                sock.ifname()
            )),
        }
    }
    Ok(n)
}

/// Sends every frame of `imp` that is due at `now` out of `sock`.
fn release(imp: &mut Impairer, sock: &PacketSocket, now: Nanos) {
    while let Some(frame) = imp.pop_due(now) {
        match sock.send(&frame) {
            Ok(()) => {
                imp.counters.tx_frames += 1;
                imp.counters.tx_bytes += frame.len() as u64;
            }
            Err(_) => imp.counters.tx_errors += 1,
        }
        imp.recycle(frame);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::impair::sched::Impairments;

    #[test]
    fn arrival_is_the_kernel_stamp_on_the_forwarders_time_line() {
        let start = 1_700_000_000_000_000_000i128;
        // Read 3 ms after it arrived: the arrival is the stamp, not the read.
        assert_eq!(arrival(Some(start + 5_000_000), start, 8_000_000), 5_000_000);
        // A stamp from before the start, or one ahead of the read (a clock step), is clamped.
        assert_eq!(arrival(Some(start - 10), start, 8_000_000), 0);
        assert_eq!(arrival(Some(start + 9_000_000), start, 8_000_000), 8_000_000);
        assert_eq!(arrival(None, start, 8_000_000), 8_000_000);
    }

    #[test]
    fn a_late_read_delays_frames_but_does_not_idle_the_link() {
        // 100 Mbit/s: a 1250-byte frame takes 100 µs. Ten frames arrive 100 µs apart but
        // are read together 2 ms later (the forwarder was descheduled): with their own
        // arrival times they leave back to back from the first arrival, as on a real link
        // that never stopped, and the queue never held more than one frame.
        let cfg = Impairments { rate: Some(100_000_000), ..Impairments::default() };
        cfg.check("a2b").unwrap();
        let mut imp = Impairer::new(cfg, 1);
        for i in 0..10u64 {
            imp.arrive(i * 100_000, &[0u8; 1250]);
        }
        assert_eq!(imp.counters.max_backlog_frames, 1);
        let mut due = Vec::new();
        while let Some(t) = imp.next_release() {
            let f = imp.pop_due(t).expect("due at its release time");
            assert_eq!(f.len(), 1250);
            due.push(t);
        }
        // The k-th frame leaves at (k + 1) x 100 µs: ten frames in 1 ms, the full rate
        // (stamped with the read time, they would have left from 2 ms to 3 ms).
        assert_eq!(due, (1..=10u64).map(|k| k * 100_000).collect::<Vec<_>>());
    }
}
