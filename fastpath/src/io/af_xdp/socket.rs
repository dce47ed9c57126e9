//! One AF_XDP socket with its own UMEM, implementing [`PacketIo`].

use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::ring::{ConsRing, ProdRing, RingMem};
use super::sys::{self, getsockopt, setsockopt, Mapping};
use super::umem::{FrameCensus, FrameState, Umem};
use super::{ifindex, AfXdpError, BindMode, XdpConfig};
use crate::io::{PacketIo, RxFrame, TxFrame, MAX_FRAME};

/// `SO_BUSY_POLL`, `SO_PREFER_BUSY_POLL`, `SO_BUSY_POLL_BUDGET` from
/// `asm-generic/socket.h` (not in the libc crate for glibc targets).
const SO_BUSY_POLL: libc::c_int = 46;
const SO_PREFER_BUSY_POLL: libc::c_int = 69;
const SO_BUSY_POLL_BUDGET: libc::c_int = 70;
/// Microseconds the kernel busy-polls the device per syscall when `busy_poll` is set:
/// the value the kernel's AF_XDP documentation uses.
const BUSY_POLL_USECS: libc::c_int = 20;
/// Packets per busy-poll round: one fast-path batch.
const BUSY_POLL_BUDGET: libc::c_int = 64;

/// `XDP_MAX_TX_SKB_BUDGET` (Linux 6.17+, `linux/if_xdp.h`): how many tx descriptors one
/// copy-mode `sendto` may process. The default is 32, which is also the minimum.
const XDP_MAX_TX_SKB_BUDGET: libc::c_int = 9;

/// Smallest frame worth sending: an Ethernet header.
const MIN_TX_LEN: usize = 14;

/// Kernel counters (`XDP_STATISTICS`) and our own, for one socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct XskStats {
    /// Kernel: received frames dropped for other reasons than the two below.
    pub rx_dropped: u64,
    /// Kernel: invalid descriptors on the fill ring.
    pub rx_invalid_descs: u64,
    /// Kernel: invalid descriptors on the tx ring.
    pub tx_invalid_descs: u64,
    /// Kernel: frames dropped because the rx ring was full (the fast path fell behind).
    pub rx_ring_full: u64,
    /// Kernel: frames dropped because the fill ring was empty (frames not released).
    pub fill_ring_empty: u64,
    /// Kernel: times the tx ring was found empty.
    pub tx_ring_empty: u64,
    /// Frames received through `rx_burst`.
    pub rx_frames: u64,
    /// Frames queued for transmission (published to the tx ring).
    pub tx_frames: u64,
    /// `sendto` kicks made.
    pub tx_kicks: u64,
    /// Kicks that the kernel deferred (EAGAIN, EBUSY, ENOBUFS): retried next flush.
    pub tx_kicks_deferred: u64,
    /// Frames the kernel has finished sending (reclaimed from the completion ring).
    pub tx_completed: u64,
    /// `tx_submit` calls refused for a bad length or a frame not allocated.
    pub tx_rejected: u64,
    /// `recvfrom` wake-ups made because the fill ring asked for one (or busy polling).
    pub rx_wakeups: u64,
}

/// One AF_XDP socket bound to (interface, rx queue), with its own UMEM.
///
/// Half of the frames (rounded down) are rx frames, kept on the fill ring whenever the
/// fast path does not hold them; the rest are tx frames, on a free list whenever not
/// allocated or in flight.
pub struct XskSocket {
    // Field order is drop order: close the socket first, then unmap its rings, then the
    // UMEM the kernel was using.
    fd: OwnedFd,
    rx: ConsRing<libc::xdp_desc>,
    tx: ProdRing<libc::xdp_desc>,
    fill: ProdRing<u64>,
    comp: ConsRing<u64>,
    umem: Umem,
    /// tx frames ready for `tx_alloc` (UMEM addresses of frame starts).
    tx_free: Vec<u64>,
    /// Frames pushed on the tx ring since the last publish.
    tx_unpublished: u32,
    ifname: String,
    ifindex: u32,
    queue: u32,
    bound: BindMode,
    busy_poll: bool,
    /// Copy-mode tx budget per kick, if the kernel took `XDP_MAX_TX_SKB_BUDGET`.
    tx_budget: Option<u32>,
    counters: XskStats,
}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifname", &self.ifname)
            .field("queue", &self.queue)
            .field("bound", &self.bound)
            .field("census", &self.census())
            .finish()
    }
}

/// Ring sizes derived from the configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RingSizes {
    pub(crate) rx_frames: u32,
    pub(crate) tx_frames: u32,
    pub(crate) fill: u32,
    pub(crate) comp: u32,
    pub(crate) rx: u32,
    pub(crate) tx: u32,
}

impl RingSizes {
    /// The fill ring holds every rx frame, and the tx and completion rings every tx
    /// frame, so a release or a submit always finds room and no frame waits outside a
    /// ring. The rx ring has `ring_size` entries.
    pub(crate) fn new(frames: u32, ring_size: u32) -> Self {
        let rx_frames = frames / 2;
        let tx_frames = frames - rx_frames;
        let pow2 = |n: u32| n.max(ring_size).next_power_of_two();
        Self {
            rx_frames,
            tx_frames,
            fill: pow2(rx_frames),
            comp: pow2(tx_frames),
            rx: ring_size,
            tx: pow2(tx_frames),
        }
    }
}

impl XskSocket {
    /// Open a socket on `cfg.ifname`, rx queue `queue`, with a UMEM of `cfg.frames` frames,
    /// bound in `cfg.bind` mode (`Auto`: zero-copy, else copy). Raises RLIMIT_MEMLOCK to
    /// infinity first (best effort). Register it with [`super::XdpProgram::register`] to
    /// receive.
    pub fn open(cfg: &XdpConfig, queue: u32) -> Result<XskSocket, AfXdpError> {
        let XdpConfig {
            ifname,
            queues: _,
            mode: _,
            bind,
            frame_size,
            frames,
            ring_size,
            busy_poll,
        } = cfg;
        cfg.validate()?;
        let ifindex = ifindex(ifname)?;
        sys::raise_memlock_limit();
        let sizes = RingSizes::new(*frames, *ring_size);
        let open = |zero_copy| {
            Self::open_bound(
                ifname,
                ifindex,
                queue,
                *frame_size,
                sizes,
                zero_copy,
                *busy_poll,
            )
        };
        match bind {
            BindMode::ZeroCopy => open(true),
            BindMode::Copy => open(false),
            BindMode::Auto => match open(true) {
                Err(AfXdpError::ZeroCopyUnsupported { .. }) => open(false),
                other => other,
            },
        }
    }

    fn open_bound(
        ifname: &str,
        ifindex: u32,
        queue: u32,
        frame_size: u32,
        sizes: RingSizes,
        zero_copy: bool,
        busy_poll: bool,
    ) -> Result<XskSocket, AfXdpError> {
        let sys_err = |op: &'static str| {
            let ifname = ifname.to_owned();
            move |source: io::Error| AfXdpError::Sys { op, ifname, source }
        };

        // SAFETY: socket(2) with constant arguments; the result is checked.
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EAFNOSUPPORT) => AfXdpError::AfXdpUnsupported,
                Some(libc::EPERM | libc::EACCES) => AfXdpError::PermissionDenied {
                    op: "creating an AF_XDP socket",
                },
                _ => sys_err("creating an AF_XDP socket")(e),
            });
        }
        // SAFETY: `raw` is a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = fd.as_fd();

        let umem = Umem::new(sizes.rx_frames, sizes.tx_frames, frame_size)
            .map_err(sys_err("allocating the UMEM"))?;
        let reg = libc::xdp_umem_reg {
            addr: umem.start(),
            len: umem.len() as u64,
            chunk_size: frame_size,
            headroom: 0,
            flags: 0,
            tx_metadata_len: 0,
        };
        setsockopt(sock, libc::SOL_XDP, libc::XDP_UMEM_REG, &reg).map_err(|e| {
            match e.raw_os_error() {
                // Pinning the UMEM is charged to RLIMIT_MEMLOCK without CAP_IPC_LOCK.
                Some(libc::ENOBUFS | libc::ENOMEM) => AfXdpError::MemlockLimit {
                    ifname: ifname.to_owned(),
                    queue,
                    bytes: umem.len() as u64,
                },
                Some(libc::EPERM) => AfXdpError::PermissionDenied {
                    op: "registering the UMEM",
                },
                _ => sys_err("registering the UMEM")(e),
            }
        })?;

        for (name, size) in [
            (libc::XDP_UMEM_FILL_RING, sizes.fill),
            (libc::XDP_UMEM_COMPLETION_RING, sizes.comp),
            (libc::XDP_RX_RING, sizes.rx),
            (libc::XDP_TX_RING, sizes.tx),
        ] {
            setsockopt(sock, libc::SOL_XDP, name, &size)
                .map_err(sys_err("sizing the AF_XDP rings"))?;
        }
        // Best effort: older kernels lack it (ENOPROTOOPT) and copy mode then moves 32
        // frames per kick.
        let tx_budget = setsockopt(sock, libc::SOL_XDP, XDP_MAX_TX_SKB_BUDGET, &sizes.tx)
            .ok()
            .map(|()| sizes.tx);

        let (off, off_len) =
            getsockopt::<libc::xdp_mmap_offsets>(sock, libc::SOL_XDP, libc::XDP_MMAP_OFFSETS)
                .map_err(sys_err("reading the AF_XDP ring offsets"))?;
        if off_len != std::mem::size_of::<libc::xdp_mmap_offsets>() {
            // Pre-5.4 layout without the flags word: no need_wakeup.
            return Err(AfXdpError::KernelTooOld {
                what: "AF_XDP ring flags (need_wakeup)",
            });
        }
        let ring = |o: libc::xdp_ring_offset, pgoff: u64, entries: u32, entry_size: usize| {
            let len = o.desc as usize + entries as usize * entry_size;
            let map = Mapping::socket_ring(sock, len, pgoff)
                .map_err(sys_err("mapping an AF_XDP ring"))?;
            Ok::<_, AfXdpError>((map, o))
        };
        let desc = std::mem::size_of::<libc::xdp_desc>();
        let bad_layout = || AfXdpError::KernelTooOld {
            what: "a ring layout this code understands",
        };
        let (m, o) = ring(off.rx, libc::XDP_PGOFF_RX_RING as u64, sizes.rx, desc)?;
        let rx = RingMem::from_mapping(m, o.producer, o.consumer, o.flags, o.desc, sizes.rx)
            .ok_or_else(bad_layout)?;
        let (m, o) = ring(off.tx, libc::XDP_PGOFF_TX_RING as u64, sizes.tx, desc)?;
        let tx = RingMem::from_mapping(m, o.producer, o.consumer, o.flags, o.desc, sizes.tx)
            .ok_or_else(bad_layout)?;
        let (m, o) = ring(off.fr, libc::XDP_UMEM_PGOFF_FILL_RING, sizes.fill, 8)?;
        let fill = RingMem::from_mapping(m, o.producer, o.consumer, o.flags, o.desc, sizes.fill)
            .ok_or_else(bad_layout)?;
        let (m, o) = ring(off.cr, libc::XDP_UMEM_PGOFF_COMPLETION_RING, sizes.comp, 8)?;
        let comp = RingMem::from_mapping(m, o.producer, o.consumer, o.flags, o.desc, sizes.comp)
            .ok_or_else(bad_layout)?;
        let (rx, mut tx, mut fill, comp) = (
            ConsRing::new(rx),
            ProdRing::new(tx),
            ProdRing::new(fill),
            ConsRing::new(comp),
        );

        // Every rx frame goes on the fill ring before the socket can receive.
        debug_assert!(fill.free(sizes.rx_frames) >= sizes.rx_frames);
        for frame in 0..u64::from(sizes.rx_frames) {
            fill.push(umem.frame_addr(frame));
        }
        fill.publish();
        let tx_free: Vec<u64> = (sizes.rx_frames..sizes.rx_frames + sizes.tx_frames)
            .rev() // pop() hands out the lowest address first
            .map(|f| umem.frame_addr(u64::from(f)))
            .collect();
        debug_assert_eq!(tx.outstanding(), 0);

        let mut addr = sys::zeroed::<libc::sockaddr_xdp>();
        addr.sxdp_family = libc::AF_XDP as u16;
        addr.sxdp_flags = libc::XDP_USE_NEED_WAKEUP
            | if zero_copy {
                libc::XDP_ZEROCOPY
            } else {
                libc::XDP_COPY
            };
        addr.sxdp_ifindex = ifindex;
        addr.sxdp_queue_id = queue;
        // SAFETY: passes a valid sockaddr_xdp and its exact size; the kernel only reads it.
        let rc = unsafe {
            libc::bind(
                sock.as_raw_fd(),
                (&addr as *const libc::sockaddr_xdp).cast(),
                std::mem::size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            let e = io::Error::last_os_error();
            let ifname = ifname.to_owned();
            return Err(match e.raw_os_error() {
                Some(libc::EOPNOTSUPP | 524) if zero_copy => {
                    AfXdpError::ZeroCopyUnsupported { ifname, queue }
                }
                Some(libc::EINVAL) => AfXdpError::QueueNotFound { ifname, queue },
                Some(libc::EBUSY) => AfXdpError::QueueBusy { ifname, queue },
                Some(libc::ENODEV) => AfXdpError::InterfaceNotFound { ifname },
                Some(libc::EPERM | libc::EACCES) => AfXdpError::PermissionDenied {
                    op: "binding the AF_XDP socket",
                },
                _ => AfXdpError::Sys {
                    op: "binding the AF_XDP socket",
                    ifname,
                    source: e,
                },
            });
        }
        let (opts, _) = getsockopt::<libc::xdp_options>(sock, libc::SOL_XDP, libc::XDP_OPTIONS)
            .map_err(sys_err("reading the AF_XDP bind mode"))?;
        let bound = if opts.flags & libc::XDP_OPTIONS_ZEROCOPY != 0 {
            BindMode::ZeroCopy
        } else {
            BindMode::Copy
        };

        if busy_poll {
            for (name, value) in [
                (SO_PREFER_BUSY_POLL, 1),
                (SO_BUSY_POLL, BUSY_POLL_USECS),
                (SO_BUSY_POLL_BUDGET, BUSY_POLL_BUDGET),
            ] {
                setsockopt(sock, libc::SOL_SOCKET, name, &value).map_err(|e| {
                    match e.raw_os_error() {
                        Some(libc::EPERM) => AfXdpError::PermissionDenied {
                            op: "enabling busy polling",
                        },
                        _ => sys_err("enabling busy polling")(e),
                    }
                })?;
            }
        }

        Ok(XskSocket {
            fd,
            rx,
            tx,
            fill,
            comp,
            umem,
            tx_free,
            tx_unpublished: 0,
            ifname: ifname.to_owned(),
            ifindex,
            queue,
            bound,
            busy_poll,
            tx_budget,
            counters: XskStats::default(),
        })
        .inspect(|s| debug_assert!(s.census().is_balanced()))
    }

    /// The socket's fd (for the XSKMAP and for poll).
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The mode actually bound: `ZeroCopy` or `Copy`, never `Auto`.
    pub fn bound_mode(&self) -> BindMode {
        self.bound
    }

    /// The rx queue the socket is bound to.
    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// The interface the socket is bound to.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    /// Its index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    /// Whether the UMEM got huge pages.
    pub fn huge_pages(&self) -> bool {
        self.umem.huge_pages()
    }

    /// Copy-mode tx descriptors one kick may send, if the kernel accepted a budget
    /// (Linux 6.17+); None means the kernel default of 32.
    pub fn tx_budget(&self) -> Option<u32> {
        self.tx_budget
    }

    /// Where every frame is; [`FrameCensus::is_balanced`] always holds.
    pub fn census(&self) -> FrameCensus {
        self.umem.ledger.census()
    }

    /// Submitted frames the kernel has not taken from the tx ring yet: call
    /// [`PacketIo::tx_flush`] again before sleeping while this is non-zero.
    pub fn tx_pending(&mut self) -> u32 {
        self.tx.outstanding()
    }

    /// Kernel statistics (`XDP_STATISTICS`; zero if unavailable) and our counters.
    pub fn stats(&self) -> XskStats {
        let mut s = self.counters;
        if let Ok((k, _)) =
            getsockopt::<libc::xdp_statistics>(self.fd.as_fd(), libc::SOL_XDP, libc::XDP_STATISTICS)
        {
            s.rx_dropped = k.rx_dropped;
            s.rx_invalid_descs = k.rx_invalid_descs;
            s.tx_invalid_descs = k.tx_invalid_descs;
            s.rx_ring_full = k.rx_ring_full;
            s.fill_ring_empty = k.rx_fill_ring_empty_descs;
            s.tx_ring_empty = k.tx_ring_empty_descs;
        }
        s
    }

    /// Move completed tx frames back to the free list.
    fn reap_completions(&mut self) {
        let n = self.comp.available(self.comp.size());
        for i in 0..n {
            let addr = self.comp.peek(i);
            let frame = self.umem.frame_of(addr);
            let ok = self
                .umem
                .ledger
                .advance(frame, FrameState::TxInFlight, FrameState::TxFree);
            debug_assert!(ok, "completion of frame {frame} that was not in flight");
            if ok {
                self.tx_free.push(self.umem.frame_addr(frame));
            }
        }
        if n > 0 {
            self.comp.release(n);
            self.counters.tx_completed += u64::from(n);
        }
    }

    /// Ask the kernel to send what is on the tx ring. Deferrals are not errors.
    fn kick_tx(&mut self) -> io::Result<()> {
        self.counters.tx_kicks += 1;
        // SAFETY: a zero-length sendto with null buffer and address is AF_XDP's "process
        // the tx ring"; nothing is read from user memory.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                std::ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                std::ptr::null(),
                0,
            )
        };
        if rc >= 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            // EAGAIN: budget used up with more on the ring; ENOBUFS: no completion-ring
            // room or skb memory; EBUSY: another context is sending; EINTR: a signal.
            Some(libc::EAGAIN | libc::ENOBUFS | libc::EBUSY | libc::EINTR) => {
                self.counters.tx_kicks_deferred += 1;
                Ok(())
            }
            _ => Err(e),
        }
    }
}

impl PacketIo for XskSocket {
    fn rx_burst(&mut self, out: &mut [RxFrame]) -> usize {
        let want = u32::try_from(out.len()).unwrap_or(u32::MAX);
        let n = self.rx.available(want);
        let mut got = 0;
        for i in 0..n {
            let d = self.rx.peek(i);
            let frame = self.umem.frame_of(d.addr);
            // The kernel hands back only frames we gave it; anything else is skipped
            // rather than handed out twice.
            if self
                .umem
                .ledger
                .advance(frame, FrameState::Kernel, FrameState::RxHeld)
            {
                out[got] = RxFrame {
                    addr: d.addr,
                    len: d.len,
                    queue: self.queue as u16,
                };
                got += 1;
            } else {
                debug_assert!(
                    false,
                    "rx descriptor for frame {frame} the kernel did not own"
                );
            }
        }
        if n > 0 {
            self.rx.release(n);
            self.counters.rx_frames += got as u64;
        } else if self.busy_poll || self.fill.needs_wakeup() {
            self.counters.rx_wakeups += 1;
            // SAFETY: a zero-length, non-blocking recvfrom with null buffers only drives
            // the driver (need_wakeup / busy poll); nothing is written to user memory.
            unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    std::ptr::null_mut(),
                    std::ptr::null_mut(),
                );
            }
        }
        got
    }

    fn rx_data(&self, f: &RxFrame) -> &[u8] {
        match self.umem.rx_bytes(f.addr, f.len) {
            Some(bytes) => bytes,
            None => {
                debug_assert!(false, "rx_data of a frame not held: {f:?}");
                &[]
            }
        }
    }

    fn rx_release(&mut self, frames: &[RxFrame]) {
        // The fill ring has room for every rx frame, so this never waits.
        let room = self.fill.free(frames.len() as u32);
        debug_assert!(room as usize >= frames.len());
        let mut pushed = 0;
        for f in frames {
            let frame = self.umem.frame_of(f.addr);
            if pushed < room
                && self
                    .umem
                    .ledger
                    .advance(frame, FrameState::RxHeld, FrameState::Kernel)
            {
                self.fill.push(self.umem.frame_addr(frame));
                pushed += 1;
            } else {
                debug_assert!(false, "rx_release of a frame not held: {f:?}");
            }
        }
        if pushed > 0 {
            self.fill.publish();
        }
    }

    fn tx_alloc(&mut self) -> Option<TxFrame> {
        if self.tx_free.is_empty() {
            self.reap_completions();
        }
        let addr = self.tx_free.pop()?;
        let ok = self.umem.ledger.advance(
            self.umem.frame_of(addr),
            FrameState::TxFree,
            FrameState::TxUser,
        );
        debug_assert!(ok);
        Some(TxFrame { addr })
    }

    fn tx_data(&mut self, f: &TxFrame) -> &mut [u8] {
        match self.umem.tx_bytes(f.addr) {
            Some(bytes) => bytes,
            None => {
                debug_assert!(false, "tx_data of a frame not allocated: {f:?}");
                &mut []
            }
        }
    }

    fn tx_submit(&mut self, f: TxFrame, len: usize) {
        let frame = self.umem.frame_of(f.addr);
        let allocated = self.umem.ledger.state(frame) == Some(FrameState::TxUser)
            && f.addr == self.umem.frame_addr(frame);
        if !allocated {
            debug_assert!(false, "tx_submit of a frame not allocated: {f:?}");
            self.counters.tx_rejected += 1;
            return;
        }
        if !(MIN_TX_LEN..=self.umem.frame_size() as usize).contains(&len) {
            // The kernel would drop an invalid descriptor without completing it, losing
            // the frame: refuse it here and keep the frame.
            debug_assert!(
                false,
                "tx_submit length {len} outside {MIN_TX_LEN}..={}",
                self.umem.frame_size()
            );
            self.counters.tx_rejected += 1;
            self.tx_abort(f);
            return;
        }
        // The tx ring holds every tx frame, so there is always room.
        let room = self.tx.free(1);
        debug_assert!(room > 0);
        self.umem
            .ledger
            .advance(frame, FrameState::TxUser, FrameState::TxInFlight);
        self.tx.push(libc::xdp_desc {
            addr: f.addr,
            len: len as u32,
            options: 0,
        });
        self.tx_unpublished += 1;
    }

    fn tx_abort(&mut self, f: TxFrame) {
        let frame = self.umem.frame_of(f.addr);
        if self
            .umem
            .ledger
            .advance(frame, FrameState::TxUser, FrameState::TxFree)
        {
            self.tx_free.push(self.umem.frame_addr(frame));
        } else {
            debug_assert!(false, "tx_abort of a frame not allocated: {f:?}");
        }
    }

    fn tx_flush(&mut self) -> io::Result<()> {
        if self.tx_unpublished > 0 {
            self.tx.publish();
            self.counters.tx_frames += u64::from(self.tx_unpublished);
            self.tx_unpublished = 0;
        }
        // Copy mode sends only inside sendto, so it always needs the kick while frames
        // wait; zero-copy drivers say through the flag whether they need one.
        let result = if self.tx.outstanding() > 0
            && (self.bound == BindMode::Copy || self.tx.needs_wakeup())
        {
            self.kick_tx()
        } else {
            Ok(())
        };
        self.reap_completions();
        result
    }

    fn poll_fds(&self) -> Vec<RawFd> {
        vec![self.fd.as_raw_fd()]
    }
}

// MAX_FRAME must fit a frame of the smallest size even after the copy-mode rx headroom.
const _: () = assert!(MAX_FRAME + 256 <= super::MIN_FRAME_SIZE as usize);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes_hold_every_frame() {
        let s = RingSizes::new(4096, 2048);
        assert_eq!((s.rx_frames, s.tx_frames), (2048, 2048));
        assert_eq!((s.fill, s.comp, s.rx, s.tx), (2048, 2048, 2048, 2048));
        let s = RingSizes::new(5000, 1024);
        assert_eq!((s.rx_frames, s.tx_frames), (2500, 2500));
        assert_eq!((s.fill, s.comp, s.rx, s.tx), (4096, 4096, 1024, 4096));
        let s = RingSizes::new(64, 256);
        assert_eq!((s.fill, s.comp, s.rx, s.tx), (256, 256, 256, 256));
    }
}
