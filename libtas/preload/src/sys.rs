//! The real libc functions, found with `dlsym(RTLD_NEXT, ..)` on first use, behind safe
//! wrappers over slices and plain values. This module and `interpose` are the only
//! places with `unsafe`.
#![allow(unsafe_code)]

use std::ffi::{c_int, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};

/// An errno value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub c_int);

/// The calling thread's errno.
pub fn errno() -> Errno {
    // SAFETY: __errno_location always returns a valid pointer to this thread's errno.
    Errno(unsafe { *libc::__errno_location() })
}

/// Set the calling thread's errno.
pub fn set_errno(e: c_int) {
    // SAFETY: as in `errno`.
    unsafe { *libc::__errno_location() = e };
}

/// Look a symbol up in the objects after this one (libc), caching the address.
fn resolve(cache: &AtomicUsize, name: &'static [u8]) -> usize {
    let p = cache.load(Ordering::Acquire);
    if p != 0 {
        return p;
    }
    // SAFETY: `name` is a NUL-terminated literal; RTLD_NEXT is a valid pseudo-handle. dlsym
    // does not call any function this library interposes (it may allocate, and the
    // allocator is not interposed), so this cannot recurse.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr().cast()) } as usize;
    cache.store(p, Ordering::Release);
    p
}

macro_rules! real {
    ($( $vis:vis fn $name:ident ( $($a:ident : $t:ty),* ) -> $r:ty ; )*) => {
        /// Raw pointers to libc's own implementations.
        pub mod raw {
            use super::*;
            $(
                /// libc's function of this name.
                ///
                /// # Safety
                /// The same contract as the C function.
                #[allow(clippy::missing_safety_doc, dead_code)]
                $vis unsafe fn $name($($a: $t),*) -> $r {
                    static CACHE: AtomicUsize = AtomicUsize::new(0);
                    let p = resolve(&CACHE, concat!(stringify!($name), "\0").as_bytes());
                    if p == 0 {
                        set_errno(libc::ENOSYS);
                        return -1 as $r;
                    }
                    // SAFETY: p is libc's symbol of this name, whose C prototype is the one
                    // declared here.
                    let f: unsafe extern "C" fn($($t),*) -> $r = unsafe { std::mem::transmute::<usize, unsafe extern "C" fn($($t),*) -> $r>(p) };
                    // SAFETY: the caller keeps the C contract.
                    unsafe { f($($a),*) }
                }
            )*
        }
    };
}

real! {
    pub fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int;
    pub fn bind(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int;
    pub fn listen(fd: c_int, backlog: c_int) -> c_int;
    pub fn accept(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int;
    pub fn accept4(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t, flags: c_int) -> c_int;
    pub fn connect(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int;
    pub fn read(fd: c_int, buf: *mut c_void, n: usize) -> isize;
    pub fn write(fd: c_int, buf: *const c_void, n: usize) -> isize;
    pub fn pread(fd: c_int, buf: *mut c_void, n: usize, off: libc::off_t) -> isize;
    pub fn lseek(fd: c_int, off: libc::off_t, whence: c_int) -> libc::off_t;
    pub fn readv(fd: c_int, iov: *const libc::iovec, n: c_int) -> isize;
    pub fn writev(fd: c_int, iov: *const libc::iovec, n: c_int) -> isize;
    pub fn recv(fd: c_int, buf: *mut c_void, n: usize, flags: c_int) -> isize;
    pub fn send(fd: c_int, buf: *const c_void, n: usize, flags: c_int) -> isize;
    pub fn recvfrom(fd: c_int, buf: *mut c_void, n: usize, flags: c_int, a: *mut libc::sockaddr, l: *mut libc::socklen_t) -> isize;
    pub fn sendto(fd: c_int, buf: *const c_void, n: usize, flags: c_int, a: *const libc::sockaddr, l: libc::socklen_t) -> isize;
    pub fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize;
    pub fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize;
    pub fn sendfile(out: c_int, inp: c_int, off: *mut libc::off_t, n: usize) -> isize;
    pub fn sendfile64(out: c_int, inp: c_int, off: *mut libc::off64_t, n: usize) -> isize;
    pub fn shutdown(fd: c_int, how: c_int) -> c_int;
    pub fn close(fd: c_int) -> c_int;
    pub fn fork() -> libc::pid_t;
    pub fn dup(fd: c_int) -> c_int;
    pub fn dup2(fd: c_int, new: c_int) -> c_int;
    pub fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int;
    pub fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int;
    pub fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int;
    pub fn ioctl(fd: c_int, req: libc::c_ulong, arg: usize) -> c_int;
    pub fn getsockname(fd: c_int, a: *mut libc::sockaddr, l: *mut libc::socklen_t) -> c_int;
    pub fn getpeername(fd: c_int, a: *mut libc::sockaddr, l: *mut libc::socklen_t) -> c_int;
    pub fn getsockopt(fd: c_int, level: c_int, name: c_int, v: *mut c_void, l: *mut libc::socklen_t) -> c_int;
    pub fn setsockopt(fd: c_int, level: c_int, name: c_int, v: *const c_void, l: libc::socklen_t) -> c_int;
    pub fn select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, t: *mut libc::timeval) -> c_int;
    pub fn pselect(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, e: *mut libc::fd_set, t: *const libc::timespec, m: *const libc::sigset_t) -> c_int;
    pub fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int;
    pub fn ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, t: *const libc::timespec, m: *const libc::sigset_t) -> c_int;
    pub fn epoll_create(size: c_int) -> c_int;
    pub fn epoll_create1(flags: c_int) -> c_int;
    pub fn epoll_ctl(ep: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int;
    pub fn epoll_wait(ep: c_int, ev: *mut libc::epoll_event, n: c_int, t: c_int) -> c_int;
    pub fn epoll_pwait(ep: c_int, ev: *mut libc::epoll_event, n: c_int, t: c_int, m: *const libc::sigset_t) -> c_int;
    pub fn epoll_pwait2(ep: c_int, ev: *mut libc::epoll_event, n: c_int, t: *const libc::timespec, m: *const libc::sigset_t) -> c_int;
    pub fn eventfd(init: libc::c_uint, flags: c_int) -> c_int;
}

/// Result of a system call: the value, or errno.
pub type SysResult<T> = Result<T, Errno>;

fn check(r: c_int) -> SysResult<c_int> {
    if r < 0 {
        Err(errno())
    } else {
        Ok(r)
    }
}

/// A new eventfd (the placeholder of a stack socket).
pub fn eventfd(flags: c_int) -> SysResult<c_int> {
    // SAFETY: no pointers.
    check(unsafe { raw::eventfd(0, flags) })
}

/// close(2).
pub fn close(fd: c_int) -> SysResult<c_int> {
    // SAFETY: no pointers; closing a descriptor the caller names.
    check(unsafe { raw::close(fd) })
}

/// dup(2).
pub fn dup(fd: c_int) -> SysResult<c_int> {
    // SAFETY: no pointers.
    check(unsafe { raw::dup(fd) })
}

/// dup3(2) (dup2 when flags is 0 and the descriptors differ).
pub fn dup3(fd: c_int, new: c_int, flags: c_int) -> SysResult<c_int> {
    // SAFETY: no pointers.
    check(unsafe { if flags == 0 { raw::dup2(fd, new) } else { raw::dup3(fd, new, flags) } })
}

/// fcntl(2) with an integer argument.
pub fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> SysResult<c_int> {
    // SAFETY: only integer-argument commands are passed through this wrapper.
    check(unsafe { raw::fcntl(fd, cmd, arg) })
}

/// socket(2).
pub fn socket(domain: c_int, ty: c_int, proto: c_int) -> SysResult<c_int> {
    // SAFETY: no pointers.
    check(unsafe { raw::socket(domain, ty, proto) })
}

/// bind(2) to an IPv4 address.
pub fn bind_v4(fd: c_int, sa: &libc::sockaddr_in) -> SysResult<c_int> {
    // SAFETY: sa is a valid sockaddr_in of the length passed.
    check(unsafe { raw::bind(fd, (sa as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as u32) })
}

/// connect(2) to an IPv4 address.
pub fn connect_v4(fd: c_int, sa: &libc::sockaddr_in) -> SysResult<c_int> {
    // SAFETY: as in bind_v4.
    check(unsafe { raw::connect(fd, (sa as *const libc::sockaddr_in).cast(), size_of::<libc::sockaddr_in>() as u32) })
}

/// setsockopt(2) with a byte value.
pub fn setsockopt(fd: c_int, level: c_int, name: c_int, v: &[u8]) -> SysResult<c_int> {
    // SAFETY: v is a valid buffer of the length passed.
    check(unsafe { raw::setsockopt(fd, level, name, v.as_ptr().cast(), v.len() as u32) })
}

/// getsockopt(2) into a byte buffer; returns the length the kernel wrote.
pub fn getsockopt(fd: c_int, level: c_int, name: c_int, out: &mut [u8]) -> SysResult<usize> {
    let mut len = out.len() as libc::socklen_t;
    // SAFETY: out is a valid, writable buffer of `len` bytes; len is a valid socklen_t.
    check(unsafe { raw::getsockopt(fd, level, name, out.as_mut_ptr().cast(), &mut len) })?;
    Ok(len as usize)
}

/// poll(2); timeout in milliseconds (-1: none).
pub fn poll(fds: &mut [libc::pollfd], timeout: c_int) -> SysResult<c_int> {
    // SAFETY: fds is a valid, writable array of fds.len() entries.
    check(unsafe { raw::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) })
}

/// epoll_ctl(2).
pub fn epoll_ctl(ep: c_int, op: c_int, fd: c_int, ev: Option<&mut libc::epoll_event>) -> SysResult<c_int> {
    let p = ev.map_or(std::ptr::null_mut(), |e| e as *mut libc::epoll_event);
    // SAFETY: p is null (allowed for DEL) or a valid event.
    check(unsafe { raw::epoll_ctl(ep, op, fd, p) })
}

/// epoll_wait(2) into `evs`.
pub fn epoll_wait(ep: c_int, evs: &mut [libc::epoll_event], timeout: c_int) -> SysResult<c_int> {
    if evs.is_empty() {
        return Ok(0);
    }
    // SAFETY: evs is a valid writable array of evs.len() entries.
    check(unsafe { raw::epoll_wait(ep, evs.as_mut_ptr(), evs.len() as c_int, timeout) })
}

/// read(2) from a kernel descriptor.
pub fn read(fd: c_int, buf: &mut [u8]) -> SysResult<usize> {
    // SAFETY: buf is valid and writable for its length.
    let n = unsafe { raw::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

/// pread(2) from a kernel descriptor.
pub fn pread(fd: c_int, buf: &mut [u8], off: i64) -> SysResult<usize> {
    // SAFETY: as in read.
    let n = unsafe { raw::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off) };
    if n < 0 { Err(errno()) } else { Ok(n as usize) }
}

/// lseek(2).
pub fn lseek(fd: c_int, off: i64, whence: c_int) -> SysResult<i64> {
    // SAFETY: no pointers.
    let n = unsafe { raw::lseek(fd, off, whence) };
    if n < 0 { Err(errno()) } else { Ok(n) }
}

/// Write `msg` to stderr (best effort, no allocation).
pub fn warn(msg: &str) {
    // SAFETY: msg is a valid buffer.
    let _ = unsafe { raw::write(2, msg.as_ptr().cast(), msg.len()) };
}

/// raise(SIGPIPE), as the kernel does on EPIPE without MSG_NOSIGNAL.
pub fn raise_sigpipe() {
    // SAFETY: raise has no memory preconditions.
    unsafe { libc::raise(libc::SIGPIPE) };
}

/// Apply a signal mask for the current thread; returns the old one.
pub fn sigmask(set: &libc::sigset_t) -> libc::sigset_t {
    // SAFETY: zeroed sigset_t is a valid (empty) set; both pointers are valid.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers to sigset_t values.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, set, &mut old) };
    old
}

/// Register the fork handler (the child must not use the parent's context).
pub fn register_atfork(child: extern "C" fn()) {
    // SAFETY: `child` is a plain function valid for the life of the process (this library
    // is never unloaded: it is preloaded).
    unsafe { libc::pthread_atfork(None, None, Some(child)) };
}

/// Whether some signal is caught by a handler installed without `SA_RESTART` (the signals
/// glibc reserves for itself, 32 and 33, are left out). Linux restarts a blocking socket
/// call interrupted by a handler with `SA_RESTART` and fails it with `EINTR` otherwise; the
/// shim's sleep cannot tell which signal interrupted it, so it asks this.
pub fn some_handler_without_restart() -> bool {
    for sig in 1..=libc::SIGRTMAX() {
        if matches!(sig, libc::SIGKILL | libc::SIGSTOP | 32 | 33) {
            continue;
        }
        // SAFETY: a zeroed sigaction is a valid out-parameter.
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only reads the current one into `old`, a valid pointer.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } != 0 {
            continue;
        }
        if old.sa_sigaction != libc::SIG_DFL && old.sa_sigaction != libc::SIG_IGN && old.sa_flags & libc::SA_RESTART == 0 {
            return true;
        }
    }
    false
}

/// Run `f` at process exit (`atexit`): the shim's statistics line.
pub fn register_atexit(f: extern "C" fn()) {
    // SAFETY: `f` is a plain function valid for the life of the process (this library is
    // never unloaded: it is preloaded).
    unsafe { libc::atexit(f) };
}
