//! The few system calls libtas makes outside the data path: the attach socket
//! (`SOCK_SEQPACKET` with `SCM_RIGHTS`, which the standard library does not offer on
//! stable), eventfd reads and writes, and `poll`. `unsafe` is allowed here and in `shm`
//! only; every block says why it is sound.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;

/// Most file descriptors accepted in one attach reply: region, app eventfd, and one
/// doorbell per fast-path core (at most 64 cores, as `Layout::check` allows).
pub(crate) const MAX_FDS: usize = 2 + 64;

/// A connected `SOCK_SEQPACKET` Unix socket.
#[derive(Debug)]
pub(crate) struct SeqPacket(OwnedFd);

impl SeqPacket {
    /// Connect to the socket at `path`.
    pub(crate) fn connect(path: &Path) -> io::Result<Self> {
        // SAFETY: an all-zero sockaddr_un is valid (AF_UNSPEC, empty path); we fill it in.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path empty or too long"));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        // SAFETY: plain socket(2) call; the result is checked.
        let fd = unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor that nothing else owns.
        let sock = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
        // SAFETY: addr is a valid sockaddr_un and len does not exceed its size.
        let rc = unsafe {
            libc::connect(sock.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len as libc::socklen_t)
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(SeqPacket(sock))
    }

    /// Wrap a connected SEQPACKET socket.
    pub(crate) fn from_fd(fd: OwnedFd) -> Self {
        SeqPacket(fd)
    }

    /// The socket itself.
    pub(crate) fn into_fd(self) -> OwnedFd {
        self.0
    }

    /// Send one message.
    pub(crate) fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: msg is a valid buffer of msg.len() bytes; MSG_NOSIGNAL turns a closed
        // peer into EPIPE instead of SIGPIPE.
        let n = unsafe { libc::send(self.0.as_raw_fd(), msg.as_ptr().cast(), msg.len(), libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        if n as usize != msg.len() {
            return Err(io::Error::new(io::ErrorKind::WriteZero, "short send on a SEQPACKET socket"));
        }
        Ok(())
    }

    /// Receive one message and the descriptors passed with it, waiting at most `timeout`.
    /// Ok((0, [])) means the peer closed the socket.
    pub(crate) fn recv_with_fds(&self, buf: &mut [u8], timeout: Duration) -> io::Result<(usize, Vec<OwnedFd>)> {
        let ready = poll(&mut [PollFd::new(self.0.as_fd(), libc::POLLIN)], Some(timeout))?;
        if ready == 0 {
            return Err(io::ErrorKind::TimedOut.into());
        }
        // Room for MAX_FDS descriptors, u64-aligned as cmsghdr wants.
        let mut cbuf = [0u64; 64];
        debug_assert!(
            // SAFETY: CMSG_SPACE is a pure size computation.
            unsafe { libc::CMSG_SPACE((MAX_FDS * std::mem::size_of::<libc::c_int>()) as u32) } as usize
                <= std::mem::size_of_val(&cbuf)
        );
        let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
        // SAFETY: an all-zero msghdr is valid; the pointers are set below.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf) as _;
        // SAFETY: msg points at live buffers (buf via iov, cbuf) of the stated sizes.
        let n = unsafe { libc::recvmsg(self.0.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut fds = Vec::new();
        // SAFETY: the CMSG_* macros walk the control buffer the kernel just filled, within
        // msg_controllen; each SCM_RIGHTS payload is an array of ints, read unaligned.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<libc::c_int>();
                    let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / std::mem::size_of::<libc::c_int>();
                    for i in 0..count {
                        let fd = ptr_read_unaligned(data.add(i));
                        // The kernel installed each descriptor in our table for us: we own it.
                        fds.push(OwnedFd::from_raw_fd(fd));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        if msg.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "too many descriptors in the attach reply"));
        }
        if msg.msg_flags & libc::MSG_TRUNC != 0 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "attach reply larger than the maximum message"));
        }
        Ok((n as usize, fds))
    }

    /// True if the peer has closed the socket (checked without blocking). Any message
    /// that arrives (the service sends none after the reply) is read and dropped.
    pub(crate) fn peer_gone(&self) -> bool {
        let mut b = [0u8; 64];
        // SAFETY: b is a valid buffer; MSG_DONTWAIT never blocks.
        let n = unsafe { libc::recv(self.0.as_raw_fd(), b.as_mut_ptr().cast(), b.len(), libc::MSG_DONTWAIT) };
        if n == 0 {
            return true;
        }
        if n < 0 {
            let e = io::Error::last_os_error();
            return !matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted);
        }
        false
    }
}

impl AsFd for SeqPacket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.0.as_fd()
    }
}

/// # Safety
/// `p` must be valid for reading one `c_int`.
unsafe fn ptr_read_unaligned(p: *const libc::c_int) -> libc::c_int {
    // SAFETY: forwarded to the caller.
    unsafe { std::ptr::read_unaligned(p) }
}

/// Add 1 to an eventfd (wake whoever sleeps on it). EAGAIN (counter saturated) means a
/// wake-up is pending anyway.
pub(crate) fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a valid u64, as eventfd requires.
    let _ = unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
}

/// Reset a non-blocking eventfd's counter (read until it would block).
pub(crate) fn eventfd_drain(fd: BorrowedFd<'_>) {
    let mut v: u64 = 0;
    // SAFETY: reads 8 bytes into a valid u64; a non-blocking eventfd returns EAGAIN when
    // the counter is zero, so this loop ends.
    while unsafe { libc::read(fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) } == 8 {}
}

/// One entry of a [`poll`] set.
#[repr(transparent)]
pub(crate) struct PollFd<'a> {
    pfd: libc::pollfd,
    _fd: std::marker::PhantomData<BorrowedFd<'a>>,
}

impl<'a> PollFd<'a> {
    pub(crate) fn new(fd: BorrowedFd<'a>, events: libc::c_short) -> Self {
        PollFd { pfd: libc::pollfd { fd: fd.as_raw_fd(), events, revents: 0 }, _fd: std::marker::PhantomData }
    }
    pub(crate) fn revents(&self) -> libc::c_short {
        self.pfd.revents
    }
}

/// `poll(2)` on `fds` for at most `timeout` (None: forever). Returns the number of ready
/// descriptors (0 on timeout); EINTR counts as a timeout-free early return of 0.
pub(crate) fn poll(fds: &mut [PollFd<'_>], timeout: Option<Duration>) -> io::Result<usize> {
    let ms: libc::c_int = match timeout {
        None => -1,
        // Round up so a short non-zero timeout does not become a busy 0.
        Some(t) => t.as_micros().div_ceil(1000).min(libc::c_int::MAX as u128) as libc::c_int,
    };
    // PollFd is a pollfd plus a zero-sized marker, so an array of them is an array of
    // pollfds; we pass a pointer to the first pfd and the count.
    const _: () = assert!(std::mem::size_of::<PollFd<'static>>() == std::mem::size_of::<libc::pollfd>());
    // SAFETY: `fds` is a live slice of PollFd, each exactly one pollfd
    // (`repr(transparent)`);
    // the fds are open for the borrow's lifetime.
    let n = unsafe { libc::poll(fds.as_mut_ptr().cast::<libc::pollfd>(), fds.len() as libc::nfds_t, ms) };
    if n < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok(0);
        }
        return Err(e);
    }
    Ok(n as usize)
}
