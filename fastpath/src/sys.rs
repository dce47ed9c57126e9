//! The few system calls the fast path's idle loop needs (eventfd, poll), wrapped.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

/// A non-blocking, close-on-exec eventfd.
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: plain syscall with constant flags; the result is checked before use.
    let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Add 1 to an eventfd; EAGAIN (counter saturated) means it is already signalled.
pub fn eventfd_write(fd: RawFd) {
    let one: u64 = 1;
    // SAFETY: writes 8 bytes from a live u64 to an fd; errors are harmless here.
    unsafe { libc::write(fd, &one as *const u64 as *const libc::c_void, 8) };
}

/// Reset an eventfd's counter.
pub fn eventfd_drain(fd: RawFd) {
    let mut v: u64 = 0;
    // SAFETY: reads at most 8 bytes into a live u64; non-blocking fd.
    unsafe { libc::read(fd, &mut v as *mut u64 as *mut libc::c_void, 8) };
}

/// Wait until one of `fds` is readable or `timeout_ms` passes.
pub fn poll_readable(fds: &[RawFd], timeout_ms: i32) {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    // SAFETY: pfds is a valid array of pollfd of the given length.
    unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, timeout_ms) };
}

/// Hint the CPU to bring the cache line holding `p` into L1.
#[inline(always)]
pub fn prefetch_read<T>(p: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is a hint; it never faults, even for invalid addresses, and SSE is
    // part of the x86-64 baseline.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(
            p as *const T as *const i8,
        )
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A vector of `n` copies of `v` whose memory the kernel is asked to back with
/// transparent huge pages (2 MiB) before it is first touched: a table of 100k flows
/// (12.8 MB of flow state, 4 MB of index) spans thousands of 4 KiB pages, and a random
/// access then pays a TLB miss on top of the cache miss. Best effort: where THP is off
/// (`/sys/kernel/mm/transparent_hugepage/enabled` = never) or the range holds no whole
/// 2 MiB page, the kernel ignores the advice and this is a plain `vec![v; n]`.
pub fn huge_page_vec<T: Clone>(v: T, n: usize) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(n);
    let bytes = n * core::mem::size_of::<T>();
    if bytes >= 2 << 20 {
        let start = out.as_mut_ptr() as usize;
        let page = 4096;
        let lo = start.next_multiple_of(page);
        let hi = (start + bytes) & !(page - 1);
        if hi > lo {
            // SAFETY: [lo, hi) lies inside the vector's own untouched allocation
            // (page-aligned as madvise requires); MADV_HUGEPAGE changes only how the
            // kernel backs those pages, never their contents or validity.
            unsafe { libc::madvise(lo as *mut libc::c_void, hi - lo, libc::MADV_HUGEPAGE) };
        }
    }
    out.resize(n, v);
    out
}
