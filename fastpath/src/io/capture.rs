//! Packet capture for the control API: a [`Tap`] around any [`PacketIo`] that, while a
//! capture runs, copies the frames the core receives and sends that match a
//! [`CaptureFilter`] into a bounded channel (the capture ring).
//!
//! Cost when no capture runs: one predictable branch on an `Option` per received burst,
//! per transmitted frame and per flush; nothing else. While a capture runs, each matching
//! frame is copied into a fixed-size record and moved into a slot of the ring, which the
//! control API allocated up front (`crossbeam_channel::bounded` preallocates its slots),
//! so the core still does not allocate. A full ring drops the frame and counts it; the
//! capture ends by itself at its deadline, after `max_frames`, or when the reader goes
//! away (noticed at the next matching frame).

use std::io;
use std::os::fd::RawFd;

use crossbeam_channel::{Sender, TrySendError};

use super::{PacketIo, RxFrame, TxFrame, MAX_FRAME};

/// Which frames to copy. Empty fields match everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CaptureFilter {
    /// IPv4 address (host order) that must be the source or the destination.
    pub host: Option<u32>,
    /// TCP port that must be the source or the destination port.
    pub port: Option<u16>,
}

impl CaptureFilter {
    /// True if `frame` matches. Frames that are not IPv4 (ARP) match only an empty
    /// filter; with a port, only TCP/UDP frames with that port match.
    pub fn matches(&self, frame: &[u8]) -> bool {
        if self.host.is_none() && self.port.is_none() {
            return true;
        }
        if frame.len() < 34 || frame[12] != 0x08 || frame[13] != 0x00 {
            return false;
        }
        if let Some(h) = self.host {
            let src = u32::from_be_bytes([frame[26], frame[27], frame[28], frame[29]]);
            let dst = u32::from_be_bytes([frame[30], frame[31], frame[32], frame[33]]);
            if src != h && dst != h {
                return false;
            }
        }
        if let Some(p) = self.port {
            let proto = frame[23];
            let ihl = ((frame[14] & 0x0f) as usize) * 4;
            let t = 14 + ihl;
            if (proto != 6 && proto != 17) || frame.len() < t + 4 {
                return false;
            }
            let sp = u16::from_be_bytes([frame[t], frame[t + 1]]);
            let dp = u16::from_be_bytes([frame[t + 2], frame[t + 3]]);
            if sp != p && dp != p {
                return false;
            }
        }
        true
    }
}

/// One captured frame: a fixed-size record, so the ring's slots hold it without a heap
/// allocation per frame.
#[derive(Clone, Copy)]
pub struct CapturedFrame {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub unix_ns: u64,
    /// The core that saw it.
    pub core: u8,
    /// True if the core sent it, false if it received it.
    pub tx: bool,
    /// Frame length.
    pub len: u16,
    /// Frame bytes (the first `len` are valid).
    pub buf: [u8; MAX_FRAME],
}

impl CapturedFrame {
    /// The frame's bytes.
    pub fn data(&self) -> &[u8] {
        &self.buf[..self.len as usize]
    }
}

impl std::fmt::Debug for CapturedFrame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "CapturedFrame(core {}, {}, {} bytes)",
            self.core,
            if self.tx { "tx" } else { "rx" },
            self.len
        )
    }
}

/// What a core is told to capture (sent with `Command::Capture`).
#[derive(Debug, Clone)]
pub struct CaptureSpec {
    /// Which frames.
    pub filter: CaptureFilter,
    /// Stop at this wall-clock time.
    pub until: std::time::SystemTime,
    /// Stop after this many frames from this core (0 = no limit).
    pub max_frames: u64,
    /// The capture ring.
    pub sink: Sender<CapturedFrame>,
    /// Frames dropped because the ring was full (shared by every core of the capture).
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
}

struct Active {
    spec: CaptureSpec,
    core: u8,
    frames: u64,
}

/// A [`PacketIo`] that can copy the frames passing through it (see the module docs).
pub struct Tap<IO> {
    inner: IO,
    core: u8,
    active: Option<Active>,
}

impl<IO> std::fmt::Debug for Tap<IO> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tap")
            .field("core", &self.core)
            .field("capturing", &self.active.is_some())
            .finish()
    }
}

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

impl<IO> Tap<IO> {
    /// Wrap `inner`, the link of core `core`.
    pub fn new(inner: IO, core: u8) -> Self {
        Tap {
            inner,
            core,
            active: None,
        }
    }
    /// The wrapped link.
    pub fn inner(&self) -> &IO {
        &self.inner
    }
    /// True while a capture runs.
    pub fn capturing(&self) -> bool {
        self.active.is_some()
    }
}

impl Active {
    /// Copy `data` if it matches; false when the capture is over.
    #[cold]
    fn copy(&mut self, data: &[u8], tx: bool, ts: u64) -> bool {
        if !self.spec.filter.matches(data) {
            return true;
        }
        let mut rec = CapturedFrame {
            unix_ns: ts,
            core: self.core,
            tx,
            len: 0,
            buf: [0; MAX_FRAME],
        };
        let n = data.len().min(MAX_FRAME);
        rec.buf[..n].copy_from_slice(&data[..n]);
        rec.len = n as u16;
        match self.spec.sink.try_send(rec) {
            Ok(()) => {
                self.frames += 1;
                self.max_reached()
            }
            Err(TrySendError::Full(_)) => {
                self.spec
                    .dropped
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                true
            }
            Err(TrySendError::Disconnected(_)) => false,
        }
    }

    /// False once `max_frames` were captured.
    fn max_reached(&self) -> bool {
        self.spec.max_frames == 0 || self.frames < self.spec.max_frames
    }
}

impl<IO: PacketIo> PacketIo for Tap<IO> {
    #[inline]
    fn rx_burst(&mut self, out: &mut [RxFrame]) -> usize {
        let n = self.inner.rx_burst(out);
        if let Some(a) = &mut self.active {
            if n > 0 {
                let ts = unix_ns();
                let mut go = true;
                for f in &out[..n] {
                    go &= a.copy(self.inner.rx_data(f), false, ts);
                }
                if !go {
                    self.active = None;
                }
            }
        }
        n
    }
    #[inline]
    fn rx_data(&self, f: &RxFrame) -> &[u8] {
        self.inner.rx_data(f)
    }
    #[inline]
    fn rx_release(&mut self, frames: &[RxFrame]) {
        self.inner.rx_release(frames)
    }
    #[inline]
    fn tx_alloc(&mut self) -> Option<TxFrame> {
        self.inner.tx_alloc()
    }
    #[inline]
    fn tx_data(&mut self, f: &TxFrame) -> &mut [u8] {
        self.inner.tx_data(f)
    }
    #[inline]
    fn tx_submit(&mut self, f: TxFrame, len: usize) {
        if self.active.is_some() {
            self.capture_tx(&f, len);
        }
        self.inner.tx_submit(f, len)
    }
    #[inline]
    fn tx_abort(&mut self, f: TxFrame) {
        self.inner.tx_abort(f)
    }
    #[inline]
    fn tx_flush(&mut self) -> io::Result<()> {
        if self.active.is_some() {
            self.check_deadline();
        }
        self.inner.tx_flush()
    }
    fn poll_fds(&self) -> Vec<RawFd> {
        self.inner.poll_fds()
    }
    fn set_capture(&mut self, spec: Option<CaptureSpec>) -> bool {
        self.active = spec.map(|spec| Active {
            spec,
            core: self.core,
            frames: 0,
        });
        true
    }
}

impl<IO: PacketIo> Tap<IO> {
    #[cold]
    fn capture_tx(&mut self, f: &TxFrame, len: usize) {
        let ts = unix_ns();
        let Tap { inner, active, .. } = self;
        let Some(a) = active.as_mut() else { return };
        let data = &inner.tx_data(f)[..len];
        if !a.copy(data, true, ts) {
            self.active = None;
        }
    }

    #[cold]
    fn check_deadline(&mut self) {
        if let Some(a) = &self.active {
            if std::time::SystemTime::now() >= a.spec.until {
                self.active = None;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::mem::{Impairments, MemLink};
    use crate::time::SimClock;

    fn tcp_frame(src: [u8; 4], dst: [u8; 4], sp: u16, dp: u16) -> Vec<u8> {
        let mut f = vec![0u8; 54];
        f[12] = 0x08;
        f[14] = 0x45;
        f[23] = 6;
        f[26..30].copy_from_slice(&src);
        f[30..34].copy_from_slice(&dst);
        f[34..36].copy_from_slice(&sp.to_be_bytes());
        f[36..38].copy_from_slice(&dp.to_be_bytes());
        f
    }

    #[test]
    fn filter_matches_either_direction() {
        let f = tcp_frame([10, 0, 0, 2], [10, 0, 0, 1], 5000, 7);
        let any = CaptureFilter::default();
        assert!(any.matches(&f) && any.matches(&[0u8; 42]));
        let port7 = CaptureFilter {
            port: Some(7),
            host: None,
        };
        assert!(port7.matches(&f));
        assert!(port7.matches(&tcp_frame([10, 0, 0, 1], [10, 0, 0, 2], 7, 5000)));
        assert!(!port7.matches(&tcp_frame([10, 0, 0, 1], [10, 0, 0, 2], 8, 5000)));
        assert!(!port7.matches(&[0u8; 42]), "ARP has no port");
        let host = CaptureFilter {
            host: Some(0x0a000002),
            port: Some(5000),
        };
        assert!(host.matches(&f));
        assert!(!CaptureFilter {
            host: Some(0x0a000003),
            port: None
        }
        .matches(&f));
        assert!(!port7.matches(&f[..36]), "truncated");
    }

    #[test]
    fn tap_copies_rx_and_tx_until_the_reader_goes() {
        let clock = SimClock::new();
        let imp = Impairments {
            delay: std::time::Duration::ZERO,
            ..Impairments::default()
        };
        let (a, mut peer) = MemLink::pair(&clock, imp, imp, 1);
        let mut tap = Tap::new(a, 3);
        let (tx, rx) = crossbeam_channel::bounded(2);
        let dropped = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let spec = CaptureSpec {
            filter: CaptureFilter {
                host: None,
                port: Some(7),
            },
            until: std::time::SystemTime::now() + std::time::Duration::from_secs(60),
            max_frames: 0,
            sink: tx,
            dropped: dropped.clone(),
        };
        assert!(tap.set_capture(Some(spec)));
        // Send one matching and one other frame from the tap.
        for f in [
            tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 7, 9),
            tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 8, 9),
        ] {
            let t = tap.tx_alloc().unwrap();
            tap.tx_data(&t)[..f.len()].copy_from_slice(&f);
            tap.tx_submit(t, f.len());
        }
        tap.tx_flush().unwrap();
        // Receive one matching frame.
        let f = tcp_frame([2, 2, 2, 2], [1, 1, 1, 1], 9, 7);
        peer.inject(&f);
        let mut frames = [RxFrame::default(); 4];
        let n = tap.rx_burst(&mut frames);
        assert_eq!(n, 1);
        tap.rx_release(&frames[..n]);
        let got: Vec<_> = rx.try_iter().collect();
        assert_eq!(got.len(), 2);
        assert!(got[0].tx && got[0].core == 3 && got[0].data()[34..36] == 7u16.to_be_bytes());
        assert!(!got[1].tx && got[1].data() == &f[..]);
        assert_eq!(dropped.load(std::sync::atomic::Ordering::Relaxed), 0);
        // The reader goes away: the next matching frame ends the capture.
        drop(rx);
        assert!(tap.capturing());
        let f = tcp_frame([1, 1, 1, 1], [2, 2, 2, 2], 7, 9);
        let t = tap.tx_alloc().unwrap();
        tap.tx_data(&t)[..f.len()].copy_from_slice(&f);
        tap.tx_submit(t, f.len());
        assert!(!tap.capturing());
    }
}
