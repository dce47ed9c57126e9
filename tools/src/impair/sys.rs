//! Everything the forwarder needs from the kernel, and the only `unsafe` in it: AF_PACKET
//! raw sockets bound to one interface each, `ppoll` with a nanosecond timeout, the timer
//! slack, and a SIGINT/SIGTERM flag.
#![allow(unsafe_code)]

use std::ffi::CString;
use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// Every protocol: the forwarder is a bridge.
const ETH_P_ALL: u16 = 0x0003;
/// Socket buffer the forwarder asks for on each side (root may exceed rmem_max with the
/// FORCE options): a burst of a few thousand full frames waits here rather than drops.
const SOCKET_BUFFER: libc::c_int = 32 << 20;

/// A raw packet socket on one interface: receives every frame that arrives on it (the
/// interface in promiscuous mode, frames the host itself sends ignored) and sends frames
/// out of it unchanged.
#[derive(Debug)]
pub struct PacketSocket {
    fd: OwnedFd,
    ifname: String,
}

/// The frame's direction as AF_PACKET reports it in `sll_pkttype`.
const PACKET_OUTGOING: u8 = 4;

impl PacketSocket {
    /// Open, set up and bind a socket on `ifname` in this network namespace.
    pub fn open(ifname: &str) -> Result<PacketSocket, String> {
        let ifindex = ifindex(ifname)?;
        // SAFETY: plain socket(2) call with constant arguments; the result is checked.
        let raw = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::c_int::from(ETH_P_ALL.to_be()),
            )
        };
        if raw < 0 {
            let e = io::Error::last_os_error();
            return Err(match e.raw_os_error() {
                Some(libc::EPERM) | Some(libc::EACCES) => format!(
                    "cannot open a raw packet socket ({e}): tas-impair needs CAP_NET_RAW; run it as root, \
                     inside the middle namespace (ip netns exec NS tas-impair ...)"
                ),
                _ => format!("cannot open a raw packet socket: {e}"),
            });
        }
        // SAFETY: `raw` is a descriptor we just opened and own exclusively.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let sock = PacketSocket {
            fd,
            ifname: ifname.to_string(),
        };

        // Frames this host transmits on the interface (our own forwarded ones included)
        // would otherwise come back to us as PACKET_OUTGOING copies.
        sock.setsockopt(libc::SOL_PACKET, libc::PACKET_IGNORE_OUTGOING, 1)
            .map_err(|e| {
                format!(
                    "{ifname}: PACKET_IGNORE_OUTGOING failed ({e}): this needs Linux 4.20 or later"
                )
            })?;
        // The kernel's receive time of every frame: the bottleneck and the delay line
        // start from when a frame arrived, not from when this thread got to read it (a
        // forwarder descheduled for milliseconds would otherwise idle the emulated link
        // and then see the frames that waited as one burst).
        sock.setsockopt(libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1)
            .map_err(|e| format!("{ifname}: SO_TIMESTAMPNS failed: {e}"))?;
        for (opt, fallback) in [
            (libc::SO_RCVBUFFORCE, libc::SO_RCVBUF),
            (libc::SO_SNDBUFFORCE, libc::SO_SNDBUF),
        ] {
            if sock
                .setsockopt(libc::SOL_SOCKET, opt, SOCKET_BUFFER)
                .is_err()
            {
                let _ = sock.setsockopt(libc::SOL_SOCKET, fallback, SOCKET_BUFFER);
            }
        }

        // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = ETH_P_ALL.to_be();
        sll.sll_ifindex = ifindex;
        // SAFETY: `sll` is a valid sockaddr_ll and the length passed is its size.
        let r = unsafe {
            libc::bind(
                sock.fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast::<libc::sockaddr>(),
                size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(format!(
                "{ifname}: cannot bind a packet socket: {}",
                io::Error::last_os_error()
            ));
        }

        // Promiscuous membership: frames for the other side's MAC address are not ours,
        // and a bridge must see them. Dropped with the socket.
        // SAFETY: packet_mreq is plain old data; all zeroes is a valid value.
        let mut mreq: libc::packet_mreq = unsafe { zeroed() };
        mreq.mr_ifindex = ifindex;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        // SAFETY: `mreq` is a valid packet_mreq and the length passed is its size.
        let r = unsafe {
            libc::setsockopt(
                sock.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_ADD_MEMBERSHIP,
                (&mreq as *const libc::packet_mreq).cast::<libc::c_void>(),
                size_of::<libc::packet_mreq>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(format!(
                "{ifname}: cannot enter promiscuous mode: {}",
                io::Error::last_os_error()
            ));
        }
        Ok(sock)
    }

    /// The interface's name.
    pub fn ifname(&self) -> &str {
        &self.ifname
    }

    fn setsockopt(
        &self,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: `value` is a valid c_int for the duration of the call; its size is passed.
        let r = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&value as *const libc::c_int).cast::<libc::c_void>(),
                size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    /// Receive one frame without blocking. `Ok(Some((n, stamp)))`: a frame of `n` bytes
    /// (if `n` exceeds `buf.len()`, only the first bytes were stored: the frame was
    /// truncated) that the kernel received at `stamp` (CLOCK_REALTIME, ns since the epoch;
    /// None if the kernel gave no timestamp); `Ok(None)`: nothing waiting.
    pub fn recv(&self, buf: &mut [u8]) -> io::Result<Option<(usize, Option<i128>)>> {
        loop {
            // SAFETY: sockaddr_ll is plain old data; all zeroes is a valid value.
            let mut from: libc::sockaddr_ll = unsafe { zeroed() };
            // Room for one SCM_TIMESTAMPNS control message (a timespec), 8-byte aligned.
            let mut control = [0u64; 8];
            let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast::<libc::c_void>(), iov_len: buf.len() };
            // SAFETY: msghdr is plain old data; all zeroes is a valid value.
            let mut msg: libc::msghdr = unsafe { zeroed() };
            msg.msg_name = (&mut from as *mut libc::sockaddr_ll).cast::<libc::c_void>();
            msg.msg_namelen = size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast::<libc::c_void>();
            msg.msg_controllen = std::mem::size_of_val(&control) as _;
            // SAFETY: every pointer in `msg` (name, one iovec over `buf`, control) is valid
            // for writes of the length stored beside it for the duration of the call; the
            // kernel writes no more than that (MSG_TRUNC only changes the returned length).
            let n = unsafe { libc::recvmsg(self.fd.as_raw_fd(), &mut msg, libc::MSG_DONTWAIT | libc::MSG_TRUNC) };
            if n < 0 {
                let e = io::Error::last_os_error();
                return match e.kind() {
                    io::ErrorKind::WouldBlock => Ok(None),
                    io::ErrorKind::Interrupted => continue,
                    _ => Err(e),
                };
            }
            // Belt and braces for PACKET_IGNORE_OUTGOING.
            if from.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            let mut stamp = None;
            // SAFETY: `msg` was filled by recvmsg; the CMSG_* walk stays inside
            // `msg_control`/`msg_controllen`, and a SCM_TIMESTAMPNS message carries one
            // timespec (read unaligned, as CMSG_DATA gives no alignment promise).
            unsafe {
                let mut c = libc::CMSG_FIRSTHDR(&msg);
                while !c.is_null() {
                    if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                        let ts = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<libc::timespec>());
                        stamp = Some(i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec));
                    }
                    c = libc::CMSG_NXTHDR(&msg, c);
                }
            }
            return Ok(Some((n as usize, stamp)));
        }
    }

    /// Send one frame out of the interface, unchanged.
    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        loop {
            // SAFETY: `frame` is valid for reads of `frame.len()` bytes.
            let n = unsafe {
                libc::send(
                    self.fd.as_raw_fd(),
                    frame.as_ptr().cast::<libc::c_void>(),
                    frame.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(());
        }
    }

    /// Frames the kernel dropped for this socket since the last call (receive buffer full).
    pub fn take_drops(&self) -> u64 {
        // SAFETY: tpacket_stats is plain old data; all zeroes is a valid value.
        let mut st: libc::tpacket_stats = unsafe { zeroed() };
        let mut len = size_of::<libc::tpacket_stats>() as libc::socklen_t;
        // SAFETY: `st` is valid for writes of `len` bytes.
        let r = unsafe {
            libc::getsockopt(
                self.fd.as_raw_fd(),
                libc::SOL_PACKET,
                libc::PACKET_STATISTICS,
                (&mut st as *mut libc::tpacket_stats).cast::<libc::c_void>(),
                &mut len,
            )
        };
        if r < 0 {
            0
        } else {
            u64::from(st.tp_drops)
        }
    }
}

impl AsRawFd for PacketSocket {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

fn ifindex(ifname: &str) -> Result<libc::c_int, String> {
    let c = CString::new(ifname)
        .map_err(|_| format!("interface name {ifname:?} contains a NUL byte"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let i = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if i == 0 {
        return Err(format!(
            "no interface named {ifname:?} in this network namespace: check `ip link`, and run tas-impair \
             inside the middle namespace (ip netns exec NS tas-impair --a IF --b IF ...)"
        ));
    }
    libc::c_int::try_from(i).map_err(|_| format!("interface index of {ifname} out of range"))
}

/// Waits until one of `fds` is readable, `timeout` passes, or a signal arrives. Returns
/// which fds are readable.
pub fn wait_readable<const N: usize>(fds: [RawFd; N], timeout: Duration) -> io::Result<[bool; N]> {
    let mut pfds = fds.map(|fd| libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    });
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: `pfds` is an array of N valid pollfd; `ts` is a valid timespec; a null
    // sigmask leaves the signal mask as it is.
    let r = unsafe { libc::ppoll(pfds.as_mut_ptr(), N as libc::nfds_t, &ts, std::ptr::null()) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.kind() == io::ErrorKind::Interrupted {
            return Ok([false; N]);
        }
        return Err(e);
    }
    Ok(pfds.map(|p| p.revents & (libc::POLLIN | libc::POLLERR) != 0))
}

/// Asks the kernel to wake timed sleeps within `slack` of their deadline (the default
/// 50 us would blur a rate limiter's spacing).
pub fn set_timer_slack(slack: Duration) {
    // SAFETY: PR_SET_TIMERSLACK takes one unsigned long argument; the unused ones are 0.
    unsafe {
        libc::prctl(
            libc::PR_SET_TIMERSLACK,
            slack.as_nanos() as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
            0 as libc::c_ulong,
        );
    }
}

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_stop_signal(_sig: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    STOP.store(true, Ordering::Relaxed);
}

/// Installs SIGINT and SIGTERM handlers that set the flag [`stop_requested`] reads. No
/// SA_RESTART, so a sleeping `ppoll` returns at once.
pub fn install_stop_handler() -> io::Result<()> {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: sigaction is plain old data; all zeroes is a valid (empty) value.
        let mut sa: libc::sigaction = unsafe { zeroed() };
        sa.sa_sigaction = on_stop_signal as extern "C" fn(libc::c_int) as libc::sighandler_t;
        sa.sa_flags = 0;
        // SAFETY: `sa.sa_mask` is a valid sigset_t to initialise.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: `sa` is a fully initialised sigaction whose handler only stores to an
        // atomic; the old action is not needed (null).
        if unsafe { libc::sigaction(sig, &sa, std::ptr::null_mut()) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Has SIGINT or SIGTERM arrived?
pub fn stop_requested() -> bool {
    STOP.load(Ordering::Relaxed)
}
