//! Packet I/O: the narrow interface between the fast path and a link.
//!
//! Two implementations: [`af_xdp`] (UMEM + XSK rings on a real interface) and [`mem`]
//! (an in-memory link with seeded impairments on a virtual clock, for tests and
//! benchmarks). Frames are owned by exactly one party at a time: a received frame
//! belongs to the fast path from [`PacketIo::rx_burst`] until [`PacketIo::rx_release`];
//! a transmit frame from [`PacketIo::tx_alloc`] until [`PacketIo::tx_submit`].

#[cfg(feature = "af-xdp")]
pub mod af_xdp;
pub mod capture;
pub mod mem;

use std::io;
use std::os::fd::RawFd;

/// Largest frame the fast path builds or accepts (Ethernet header + 1500-byte MTU).
pub const MAX_FRAME: usize = 1514;

/// A received frame: an opaque buffer address and its length.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RxFrame {
    /// Buffer address (UMEM offset for AF_XDP; slot index for the memory link).
    pub addr: u64,
    /// Bytes of packet data.
    pub len: u32,
    /// Receive queue the frame arrived on.
    pub queue: u16,
}

/// A transmit buffer reserved by [`PacketIo::tx_alloc`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TxFrame {
    /// Buffer address.
    pub addr: u64,
}

/// The operations the fast path needs from a link. All calls are non-blocking.
pub trait PacketIo {
    /// Move up to `out.len()` received frames into `out`; returns how many.
    fn rx_burst(&mut self, out: &mut [RxFrame]) -> usize;
    /// The bytes of a frame returned by `rx_burst` and not yet released.
    fn rx_data(&self, f: &RxFrame) -> &[u8];
    /// Give received frames back to the link (refill).
    fn rx_release(&mut self, frames: &[RxFrame]);
    /// Reserve a transmit buffer of at least [`MAX_FRAME`] bytes; None if all are in flight.
    fn tx_alloc(&mut self) -> Option<TxFrame>;
    /// The writable bytes of a reserved transmit buffer.
    fn tx_data(&mut self, f: &TxFrame) -> &mut [u8];
    /// Queue a reserved buffer holding `len` bytes of frame for transmission.
    fn tx_submit(&mut self, f: TxFrame, len: usize);
    /// Return a reserved buffer unused.
    fn tx_abort(&mut self, f: TxFrame);
    /// Start transmission of everything submitted (at most one syscall) and reclaim
    /// completed buffers.
    fn tx_flush(&mut self) -> io::Result<()>;
    /// File descriptors to poll for readability while idle (empty for links that never
    /// block, such as the memory link).
    fn poll_fds(&self) -> Vec<RawFd>;
    /// Start (`Some`) or stop (`None`) copying frames for a capture. Only
    /// [`capture::Tap`] can; other links return false and capture nothing.
    fn set_capture(&mut self, _spec: Option<capture::CaptureSpec>) -> bool {
        false
    }
}
