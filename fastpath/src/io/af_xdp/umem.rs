//! The UMEM area and the ledger that says who owns each of its frames.
//!
//! The ledger is what keeps the safe API sound: the kernel writes into frames on the
//! fill ring and reads frames on the tx ring at any time, so a slice into a frame may only
//! exist while the frame is in the fast path's hands. Every transition is checked, which
//! also catches double releases and forged addresses, and the per-state counts prove that
//! no frame is ever lost ([`FrameCensus`]).

use std::io;

use super::sys::Mapping;

/// Huge page size tried first for the UMEM (x86_64 default huge pages).
const HUGE_PAGE: usize = 2 << 20;

/// Where a frame is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum FrameState {
    /// An rx frame the kernel owns: on the fill ring, being written, or on the rx ring.
    Kernel = 0,
    /// An rx frame handed out by `rx_burst`, not yet released.
    RxHeld = 1,
    /// A tx frame on the free list.
    TxFree = 2,
    /// A tx frame handed out by `tx_alloc`, not yet submitted or aborted.
    TxUser = 3,
    /// A tx frame submitted: on the tx ring, being sent, or on the completion ring.
    TxInFlight = 4,
}

/// How many frames are in each state; the fields always add up to `total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct FrameCensus {
    /// rx frames the kernel owns (fill ring, rx ring, or in between).
    pub rx_kernel: u32,
    /// rx frames the fast path holds.
    pub rx_held: u32,
    /// tx frames on the free list.
    pub tx_free: u32,
    /// tx frames the fast path holds (allocated, not submitted).
    pub tx_user: u32,
    /// tx frames submitted and not yet reclaimed from the completion ring.
    pub tx_in_flight: u32,
    /// Frames in the UMEM.
    pub total: u32,
}

impl FrameCensus {
    /// Whether every frame is accounted for.
    pub fn is_balanced(&self) -> bool {
        let sum = u64::from(self.rx_kernel)
            + u64::from(self.rx_held)
            + u64::from(self.tx_free)
            + u64::from(self.tx_user)
            + u64::from(self.tx_in_flight);
        sum == u64::from(self.total)
    }
}

/// Owner of every frame, by frame number (`addr >> frame_shift`).
pub(crate) struct FrameLedger {
    state: Vec<FrameState>,
    counts: [u32; 5],
}

impl FrameLedger {
    /// Frames `0..rx_frames` start with the kernel (the caller puts them on the fill
    /// ring), the rest on the tx free list.
    pub(crate) fn new(rx_frames: u32, tx_frames: u32) -> Self {
        let mut state = vec![FrameState::Kernel; rx_frames as usize];
        state.resize((rx_frames + tx_frames) as usize, FrameState::TxFree);
        let mut counts = [0; 5];
        counts[FrameState::Kernel as usize] = rx_frames;
        counts[FrameState::TxFree as usize] = tx_frames;
        Self { state, counts }
    }

    /// State of a frame, None if the number is out of range.
    #[inline]
    pub(crate) fn state(&self, frame: u64) -> Option<FrameState> {
        self.state.get(usize::try_from(frame).ok()?).copied()
    }

    /// Move a frame from `from` to `to`; false (and no change) if it was not in `from`.
    #[inline]
    pub(crate) fn advance(&mut self, frame: u64, from: FrameState, to: FrameState) -> bool {
        let Some(s) = usize::try_from(frame)
            .ok()
            .and_then(|i| self.state.get_mut(i))
        else {
            return false;
        };
        if *s != from {
            return false;
        }
        *s = to;
        self.counts[from as usize] -= 1;
        self.counts[to as usize] += 1;
        true
    }

    pub(crate) fn census(&self) -> FrameCensus {
        FrameCensus {
            rx_kernel: self.counts[FrameState::Kernel as usize],
            rx_held: self.counts[FrameState::RxHeld as usize],
            tx_free: self.counts[FrameState::TxFree as usize],
            tx_user: self.counts[FrameState::TxUser as usize],
            tx_in_flight: self.counts[FrameState::TxInFlight as usize],
            total: self.state.len() as u32,
        }
    }
}

/// The packet buffer area: `frames` frames of `frame_size` bytes, registered with the
/// socket as its UMEM, plus the ledger of who owns each frame.
pub(crate) struct Umem {
    map: Mapping,
    len: usize,
    frame_shift: u32,
    huge_pages: bool,
    pub(crate) ledger: FrameLedger,
}

impl Umem {
    /// Map the area (huge pages if the system has them reserved, else normal pages) and
    /// split it into `rx_frames` rx frames followed by `tx_frames` tx frames.
    pub(crate) fn new(rx_frames: u32, tx_frames: u32, frame_size: u32) -> io::Result<Self> {
        debug_assert!(frame_size.is_power_of_two());
        let frames = rx_frames as usize + tx_frames as usize;
        let len = frames
            .checked_mul(frame_size as usize)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))?;
        let (map, huge_pages) = match Mapping::anonymous_huge(len.next_multiple_of(HUGE_PAGE)) {
            Ok(map) => (map, true),
            Err(_) => (Mapping::anonymous(len)?, false),
        };
        Ok(Self {
            map,
            len,
            frame_shift: frame_size.trailing_zeros(),
            huge_pages,
            ledger: FrameLedger::new(rx_frames, tx_frames),
        })
    }

    /// Start address (for `XDP_UMEM_REG`).
    pub(crate) fn start(&self) -> u64 {
        self.map.as_ptr() as u64
    }

    /// Length registered with the kernel: frames * frame_size.
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn frame_size(&self) -> u32 {
        1 << self.frame_shift
    }

    pub(crate) fn huge_pages(&self) -> bool {
        self.huge_pages
    }

    /// Frame number of a UMEM address (any offset inside the frame).
    #[inline]
    pub(crate) fn frame_of(&self, addr: u64) -> u64 {
        addr >> self.frame_shift
    }

    /// UMEM address of a frame's first byte.
    #[inline]
    pub(crate) fn frame_addr(&self, frame: u64) -> u64 {
        frame << self.frame_shift
    }

    /// `len` bytes at UMEM address `addr`, if the frame holding them is `RxHeld` and the
    /// range stays inside that frame.
    #[inline]
    pub(crate) fn rx_bytes(&self, addr: u64, len: u32) -> Option<&[u8]> {
        let frame = self.frame_of(addr);
        let end = addr.checked_add(u64::from(len))?;
        if self.ledger.state(frame) != Some(FrameState::RxHeld) || end > self.frame_addr(frame + 1)
        {
            return None;
        }
        // SAFETY: the range lies inside one frame (checked above) and every frame the
        // ledger knows lies inside the mapping (len = frames * frame_size). The frame is
        // RxHeld: the kernel has handed it to us through the rx ring and gets it back only
        // through `rx_release`, which needs `&mut self` on the socket, so nothing writes it
        // while this shared borrow lives.
        Some(unsafe {
            std::slice::from_raw_parts(self.map.as_ptr().add(addr as usize), len as usize)
        })
    }

    /// The whole frame starting at `addr`, writable, if that frame is `TxUser` and `addr`
    /// is its start.
    #[inline]
    pub(crate) fn tx_bytes(&mut self, addr: u64) -> Option<&mut [u8]> {
        let frame = self.frame_of(addr);
        if self.ledger.state(frame) != Some(FrameState::TxUser) || addr != self.frame_addr(frame) {
            return None;
        }
        // SAFETY: the frame lies inside the mapping (as in `rx_bytes`). It is TxUser: off
        // every ring, so the kernel neither reads nor writes it, and `&mut self` makes this
        // the only reference into the UMEM that the socket hands out until it ends.
        Some(unsafe {
            std::slice::from_raw_parts_mut(
                self.map.as_ptr().add(addr as usize),
                self.frame_size() as usize,
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_counts_every_transition() {
        let mut l = FrameLedger::new(4, 2);
        assert_eq!(
            l.census(),
            FrameCensus {
                rx_kernel: 4,
                tx_free: 2,
                total: 6,
                ..Default::default()
            }
        );
        assert!(l.advance(1, FrameState::Kernel, FrameState::RxHeld));
        // A second release of the same frame, or a release of a frame never received, is
        // refused and changes nothing.
        assert!(l.advance(1, FrameState::RxHeld, FrameState::Kernel));
        assert!(!l.advance(1, FrameState::RxHeld, FrameState::Kernel));
        assert!(!l.advance(4, FrameState::RxHeld, FrameState::Kernel));
        assert!(!l.advance(99, FrameState::Kernel, FrameState::RxHeld));
        assert!(l.advance(5, FrameState::TxFree, FrameState::TxUser));
        assert!(l.advance(5, FrameState::TxUser, FrameState::TxInFlight));
        let c = l.census();
        assert_eq!((c.tx_free, c.tx_in_flight), (1, 1));
        assert!(c.is_balanced());
    }

    #[test]
    fn frame_access_follows_ownership() {
        let mut u = Umem::new(2, 2, 2048).unwrap();
        assert_eq!(u.len(), 4 * 2048);
        // Frame 0 is the kernel's: no access.
        assert!(u.rx_bytes(256, 60).is_none());
        assert!(u.ledger.advance(0, FrameState::Kernel, FrameState::RxHeld));
        assert_eq!(u.rx_bytes(256, 60).map(<[u8]>::len), Some(60));
        // Not past the end of the frame.
        assert!(u.rx_bytes(256, 2048 - 256 + 1).is_none());
        // tx frame 2 only once allocated, only at its start.
        assert!(u.tx_bytes(2 * 2048).is_none());
        assert!(u.ledger.advance(2, FrameState::TxFree, FrameState::TxUser));
        assert!(u.tx_bytes(2 * 2048 + 64).is_none());
        let buf = u.tx_bytes(2 * 2048).unwrap();
        assert_eq!(buf.len(), 2048);
        buf[..4].copy_from_slice(b"abcd");
        assert!(u.ledger.advance(2, FrameState::TxUser, FrameState::TxFree));
        // Out of the area entirely.
        assert!(u.tx_bytes(64 * 2048).is_none());
    }
}
