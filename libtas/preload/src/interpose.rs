//! The exported libc symbols. Each checks whether its descriptor is a stack socket (one
//! atomic load); if not — or if the call comes from inside the shim itself (libtas's own
//! system calls: attach, eventfds, polls) — it goes straight to libc's function. Stack
//! sockets go to `shim`. No call unwinds into C: each body runs under `catch_unwind`
//! (with the release profile's `panic = "abort"` a panic aborts instead, so the shim's
//! code avoids panicking paths: no unwrap on locks, no unchecked indexing of C data).
#![allow(unsafe_code)]
#![allow(clippy::missing_safety_doc)]

use std::cell::Cell;
use std::ffi::{c_int, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

use crate::shim;
use crate::sys::{errno, raw, set_errno, Errno, SysResult};

thread_local! {
    /// This thread is inside the shim: its libc calls are the shim's own.
    static BUSY: Cell<bool> = const { Cell::new(false) };
}

struct Enter;

impl Drop for Enter {
    fn drop(&mut self) {
        let _ = BUSY.try_with(|b| b.set(false));
    }
}

/// Enter the shim, or None if this thread already is inside it (or is exiting).
fn enter() -> Option<Enter> {
    match BUSY.try_with(|b| b.replace(true)) {
        Ok(false) => Some(Enter),
        _ => None,
    }
}

/// Run `f` inside the shim; a panic becomes EIO and `fail`.
///
/// errno is left as the caller had it unless the call fails (returns `fail`): the
/// kernel never changes errno on success, and the shim's own system calls on the way
/// (eventfd reads and polls that find nothing: EAGAIN) must not show through. iperf3
/// reports errno after a read that returned 0 (EOF), and printed "Resource temporarily
/// unavailable" under the shim for a client that closed at once.
fn run<T: Copy + PartialEq>(fail: T, f: impl FnOnce() -> T) -> T {
    let saved = errno();
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(v) => {
            if v != fail {
                set_errno(saved.0);
            }
            v
        }
        Err(_) => {
            set_errno(libc::EIO);
            fail
        }
    }
}

/// Run `f` (which has no result) inside the shim, errno untouched.
fn run_quiet(f: impl FnOnce()) {
    let saved = errno();
    let _ = catch_unwind(AssertUnwindSafe(f));
    set_errno(saved.0);
}

fn ret_int(r: SysResult<c_int>) -> c_int {
    match r {
        Ok(v) => v,
        Err(Errno(e)) => {
            set_errno(e);
            -1
        }
    }
}

fn ret_size(r: SysResult<usize>) -> isize {
    match r {
        Ok(v) => v as isize,
        Err(Errno(e)) => {
            set_errno(e);
            -1
        }
    }
}

/// A C buffer as a slice (empty for a null pointer with length 0).
///
/// # Safety
/// `p` must be valid for reads of `n` bytes (or null with n == 0).
unsafe fn bytes<'a>(p: *const c_void, n: usize) -> Option<&'a [u8]> {
    if n == 0 {
        return Some(&[]);
    }
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees p is valid for n bytes.
    Some(unsafe { std::slice::from_raw_parts(p.cast(), n) })
}

/// # Safety
/// `p` must be valid for writes of `n` bytes (or null with n == 0).
unsafe fn bytes_mut<'a>(p: *mut c_void, n: usize) -> Option<&'a mut [u8]> {
    if n == 0 {
        return Some(&mut []);
    }
    if p.is_null() {
        return None;
    }
    // SAFETY: the caller guarantees p is valid for n bytes.
    Some(unsafe { std::slice::from_raw_parts_mut(p.cast(), n) })
}

/// Write an IPv4 address to a C (addr, addrlen) pair, truncating as the kernel does.
///
/// # Safety
/// `addr` must be valid for `*len` bytes and `len` valid, or both null.
unsafe fn put_addr(a: std::net::SocketAddrV4, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) {
    if addr.is_null() || len.is_null() {
        return;
    }
    let sa = shim::encode_v4(a);
    // SAFETY: len is valid (checked non-null, caller contract).
    let cap = unsafe { *len } as usize;
    let n = cap.min(size_of::<libc::sockaddr_in>());
    // SAFETY: sa is a plain struct of 16 bytes; addr is valid for cap >= n bytes.
    unsafe {
        std::ptr::copy_nonoverlapping((&sa as *const libc::sockaddr_in).cast::<u8>(), addr.cast::<u8>(), n);
        *len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    }
}

// ---- sockets ----------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn socket(domain: c_int, ty: c_int, proto: c_int) -> c_int {
    let tcp = domain == libc::AF_INET && ty & 0xf == libc::SOCK_STREAM && (proto == 0 || proto == libc::IPPROTO_TCP);
    let Some(_g) = tcp.then(enter).flatten() else {
        // SAFETY: forwarding the caller's arguments unchanged.
        return unsafe { raw::socket(domain, ty, proto) };
    };
    run(-1, || match shim::use_stack() {
        Ok(true) => ret_int(shim::socket(ty)),
        // SAFETY: forwarding the caller's arguments unchanged.
        Ok(false) => unsafe { raw::socket(domain, ty, proto) },
        Err(Errno(e)) => {
            set_errno(e);
            -1
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn bind(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::bind(fd, addr, len) };
    };
    run(-1, || {
        // SAFETY: the caller passes an address of `len` bytes.
        let Some(a) = (unsafe { bytes(addr.cast(), len as usize) }) else { return ret_int(Err(Errno(libc::EFAULT))) };
        match shim::bind(fd, a) {
            Ok(shim::Routed::Done(v)) => v,
            // SAFETY: the descriptor is now a kernel socket; forwarding unchanged.
            Ok(shim::Routed::Kernel) => unsafe { raw::bind(fd, addr, len) },
            Err(e) => ret_int(Err(e)),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn listen(fd: c_int, backlog: c_int) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::listen(fd, backlog) };
    };
    run(-1, || ret_int(shim::listen(fd, backlog)))
}

#[no_mangle]
pub unsafe extern "C" fn accept(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int {
    // SAFETY: same contract as accept4 with no flags.
    unsafe { accept4(fd, addr, len, 0) }
}

#[no_mangle]
pub unsafe extern "C" fn accept4(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t, flags: c_int) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged (accept is accept4 with flags 0 in glibc too).
        return unsafe { raw::accept4(fd, addr, len, flags) };
    };
    run(-1, || {
        if flags & !(libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC) != 0 {
            return ret_int(Err(Errno(libc::EINVAL)));
        }
        match shim::accept(fd, flags) {
            Ok((nfd, peer)) => {
                // SAFETY: the caller's (addr, len) pair, valid or null.
                unsafe { put_addr(peer, addr, len) };
                nfd
            }
            Err(e) => ret_int(Err(e)),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn connect(fd: c_int, addr: *const libc::sockaddr, len: libc::socklen_t) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::connect(fd, addr, len) };
    };
    run(-1, || {
        // SAFETY: the caller passes an address of `len` bytes.
        let Some(a) = (unsafe { bytes(addr.cast(), len as usize) }) else { return ret_int(Err(Errno(libc::EFAULT))) };
        match shim::connect(fd, a) {
            Ok(shim::Routed::Done(v)) => v,
            // SAFETY: the descriptor is now a kernel socket; forwarding unchanged.
            Ok(shim::Routed::Kernel) => unsafe { raw::connect(fd, addr, len) },
            Err(e) => ret_int(Err(e)),
        }
    })
}

// ---- data -------------------------------------------------------------------------------------

fn do_recv(fd: c_int, buf: *mut c_void, n: usize, flags: c_int) -> isize {
    run(-1, || {
        // SAFETY: the caller's buffer of n bytes.
        let Some(b) = (unsafe { bytes_mut(buf, n) }) else { return ret_size(Err(Errno(libc::EFAULT))) };
        ret_size(shim::recv(fd, b, flags))
    })
}

fn do_send(fd: c_int, buf: *const c_void, n: usize, flags: c_int) -> isize {
    run(-1, || {
        // SAFETY: the caller's buffer of n bytes.
        let Some(b) = (unsafe { bytes(buf, n) }) else { return ret_size(Err(Errno(libc::EFAULT))) };
        ret_size(shim::send(fd, b, flags))
    })
}

#[no_mangle]
pub unsafe extern "C" fn read(fd: c_int, buf: *mut c_void, n: usize) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::read(fd, buf, n) };
    };
    do_recv(fd, buf, n, 0)
}

#[no_mangle]
pub unsafe extern "C" fn __read_chk(fd: c_int, buf: *mut c_void, n: usize, buflen: usize) -> isize {
    if n > buflen {
        // SAFETY: glibc's own overflow report, as the real __read_chk does.
        unsafe { libc::abort() };
    }
    // SAFETY: same contract as read.
    unsafe { read(fd, buf, n) }
}

#[no_mangle]
pub unsafe extern "C" fn write(fd: c_int, buf: *const c_void, n: usize) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::write(fd, buf, n) };
    };
    do_send(fd, buf, n, 0)
}

#[no_mangle]
pub unsafe extern "C" fn recv(fd: c_int, buf: *mut c_void, n: usize, flags: c_int) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::recv(fd, buf, n, flags) };
    };
    do_recv(fd, buf, n, flags)
}

#[no_mangle]
pub unsafe extern "C" fn __recv_chk(fd: c_int, buf: *mut c_void, n: usize, buflen: usize, flags: c_int) -> isize {
    if n > buflen {
        // SAFETY: as __read_chk.
        unsafe { libc::abort() };
    }
    // SAFETY: same contract as recv.
    unsafe { recv(fd, buf, n, flags) }
}

#[no_mangle]
pub unsafe extern "C" fn send(fd: c_int, buf: *const c_void, n: usize, flags: c_int) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::send(fd, buf, n, flags) };
    };
    do_send(fd, buf, n, flags)
}

#[no_mangle]
pub unsafe extern "C" fn recvfrom(
    fd: c_int,
    buf: *mut c_void,
    n: usize,
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::recvfrom(fd, buf, n, flags, addr, len) };
    };
    let r = do_recv(fd, buf, n, flags);
    if r >= 0 && !addr.is_null() && !len.is_null() {
        // TCP leaves the address out (Linux sets the length to 0).
        // SAFETY: len is valid (non-null, caller contract).
        unsafe { *len = 0 };
    }
    r
}

#[no_mangle]
pub unsafe extern "C" fn __recvfrom_chk(
    fd: c_int,
    buf: *mut c_void,
    n: usize,
    buflen: usize,
    flags: c_int,
    addr: *mut libc::sockaddr,
    len: *mut libc::socklen_t,
) -> isize {
    if n > buflen {
        // SAFETY: as __read_chk.
        unsafe { libc::abort() };
    }
    // SAFETY: same contract as recvfrom.
    unsafe { recvfrom(fd, buf, n, flags, addr, len) }
}

#[no_mangle]
pub unsafe extern "C" fn sendto(
    fd: c_int,
    buf: *const c_void,
    n: usize,
    flags: c_int,
    addr: *const libc::sockaddr,
    len: libc::socklen_t,
) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::sendto(fd, buf, n, flags, addr, len) };
    };
    // A connected stream socket ignores the address, as Linux's TCP does.
    do_send(fd, buf, n, flags)
}

/// Total length of an iovec array, or None if it is malformed.
///
/// # Safety
/// `iov` must point to `cnt` iovecs (or be null with cnt 0).
unsafe fn iov_slices<'a>(iov: *const libc::iovec, cnt: c_int) -> Option<&'a [libc::iovec]> {
    if !(0..=1024).contains(&cnt) {
        return None;
    }
    if cnt == 0 {
        return Some(&[]);
    }
    if iov.is_null() {
        return None;
    }
    // SAFETY: caller contract.
    Some(unsafe { std::slice::from_raw_parts(iov, cnt as usize) })
}

fn gather(iovs: &[libc::iovec]) -> Option<Vec<u8>> {
    let mut v = Vec::new();
    for io in iovs {
        // SAFETY: each iovec describes a readable buffer (the C contract of writev/sendmsg).
        v.extend_from_slice(unsafe { bytes(io.iov_base, io.iov_len) }?);
    }
    Some(v)
}

fn scatter(iovs: &[libc::iovec], data: &[u8]) {
    let mut off = 0;
    for io in iovs {
        if off >= data.len() {
            break;
        }
        let k = io.iov_len.min(data.len() - off);
        // SAFETY: each iovec describes a writable buffer of iov_len >= k bytes.
        if let Some(dst) = unsafe { bytes_mut(io.iov_base, k) } {
            dst.copy_from_slice(&data[off..off + k]);
        }
        off += k;
    }
}

fn vec_recv(fd: c_int, iovs: &[libc::iovec], flags: c_int) -> SysResult<usize> {
    let total: usize = iovs.iter().map(|i| i.iov_len).sum();
    let mut tmp = vec![0u8; total];
    let n = shim::recv(fd, &mut tmp, flags)?;
    scatter(iovs, &tmp[..n]);
    Ok(n)
}

#[no_mangle]
pub unsafe extern "C" fn readv(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::readv(fd, iov, cnt) };
    };
    run(-1, || {
        // SAFETY: the caller's iovec array.
        let Some(iovs) = (unsafe { iov_slices(iov, cnt) }) else { return ret_size(Err(Errno(libc::EINVAL))) };
        ret_size(vec_recv(fd, iovs, 0))
    })
}

#[no_mangle]
pub unsafe extern "C" fn writev(fd: c_int, iov: *const libc::iovec, cnt: c_int) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::writev(fd, iov, cnt) };
    };
    run(-1, || {
        // SAFETY: the caller's iovec array.
        let Some(iovs) = (unsafe { iov_slices(iov, cnt) }) else { return ret_size(Err(Errno(libc::EINVAL))) };
        let Some(data) = gather(iovs) else { return ret_size(Err(Errno(libc::EFAULT))) };
        ret_size(shim::send(fd, &data, 0))
    })
}

#[no_mangle]
pub unsafe extern "C" fn recvmsg(fd: c_int, msg: *mut libc::msghdr, flags: c_int) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::recvmsg(fd, msg, flags) };
    };
    run(-1, || {
        if msg.is_null() {
            return ret_size(Err(Errno(libc::EFAULT)));
        }
        // SAFETY: msg is a valid msghdr (caller contract, checked non-null).
        let m = unsafe { &mut *msg };
        // SAFETY: its iovec array.
        let Some(iovs) = (unsafe { iov_slices(m.msg_iov, m.msg_iovlen as c_int) }) else { return ret_size(Err(Errno(libc::EMSGSIZE))) };
        let r = vec_recv(fd, iovs, flags);
        if r.is_ok() {
            m.msg_namelen = 0;
            m.msg_controllen = 0;
            m.msg_flags = 0;
        }
        ret_size(r)
    })
}

#[no_mangle]
pub unsafe extern "C" fn sendmsg(fd: c_int, msg: *const libc::msghdr, flags: c_int) -> isize {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::sendmsg(fd, msg, flags) };
    };
    run(-1, || {
        if msg.is_null() {
            return ret_size(Err(Errno(libc::EFAULT)));
        }
        // SAFETY: msg is a valid msghdr (caller contract, checked non-null).
        let m = unsafe { &*msg };
        // SAFETY: its iovec array.
        let Some(iovs) = (unsafe { iov_slices(m.msg_iov, m.msg_iovlen as c_int) }) else { return ret_size(Err(Errno(libc::EMSGSIZE))) };
        let Some(data) = gather(iovs) else { return ret_size(Err(Errno(libc::EFAULT))) };
        ret_size(shim::send(fd, &data, flags))
    })
}

fn do_sendfile(out: c_int, inp: c_int, off: *mut i64, n: usize) -> isize {
    run(-1, || {
        // SAFETY: off is null or a valid off_t (caller contract).
        let o = if off.is_null() { None } else { Some(unsafe { &mut *off }) };
        ret_size(shim::sendfile(out, inp, o, n))
    })
}

#[no_mangle]
pub unsafe extern "C" fn sendfile(out: c_int, inp: c_int, off: *mut libc::off_t, n: usize) -> isize {
    let Some(_g) = shim::is_stack(out).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::sendfile(out, inp, off, n) };
    };
    do_sendfile(out, inp, off, n)
}

#[no_mangle]
pub unsafe extern "C" fn sendfile64(out: c_int, inp: c_int, off: *mut libc::off64_t, n: usize) -> isize {
    let Some(_g) = shim::is_stack(out).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::sendfile64(out, inp, off, n) };
    };
    do_sendfile(out, inp, off, n)
}

#[no_mangle]
pub unsafe extern "C" fn shutdown(fd: c_int, how: c_int) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::shutdown(fd, how) };
    };
    run(-1, || ret_int(shim::shutdown(fd, how)))
}

// ---- descriptors --------------------------------------------------------------------------------

#[no_mangle]
pub unsafe extern "C" fn close(fd: c_int) -> c_int {
    let stack = shim::is_stack(fd);
    if !stack && shim::epoll_any() {
        if let Some(_g) = enter() {
            run_quiet(|| shim::epoll_closed(fd));
        }
    }
    let Some(_g) = stack.then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::close(fd) };
    };
    run(-1, || ret_int(shim::close(fd)))
}

/// fork(): libc's, then, in the parent, the child is reported to tasd as a holder of this
/// process's connections (decisions §26). The child's side is the `pthread_atfork` handler.
#[no_mangle]
pub unsafe extern "C" fn fork() -> libc::pid_t {
    // SAFETY: forwarding unchanged.
    let pid = unsafe { raw::fork() };
    if pid > 0 && shim::any_stack_fd() {
        if let Some(_g) = enter() {
            run_quiet(|| shim::after_fork_parent(pid as u32));
        }
    }
    pid
}

#[no_mangle]
pub unsafe extern "C" fn dup(fd: c_int) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::dup(fd) };
    };
    run(-1, || ret_int(shim::dup(fd)))
}

#[no_mangle]
pub unsafe extern "C" fn dup2(fd: c_int, new: c_int) -> c_int {
    let Some(_g) = (shim::is_stack(fd) || shim::is_stack(new)).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::dup2(fd, new) };
    };
    run(-1, || ret_int(shim::dup_over(fd, new, 0)))
}

#[no_mangle]
pub unsafe extern "C" fn dup3(fd: c_int, new: c_int, flags: c_int) -> c_int {
    let Some(_g) = (shim::is_stack(fd) || shim::is_stack(new)).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::dup3(fd, new, flags) };
    };
    run(-1, || {
        if flags & !libc::O_CLOEXEC != 0 || fd == new {
            return ret_int(Err(Errno(libc::EINVAL)));
        }
        ret_int(shim::dup_over(fd, new, flags))
    })
}

// fcntl and ioctl are variadic in C. On x86-64 and AArch64 Linux a variadic argument is
// passed exactly like a fixed one (in the next integer register), so one machine-word
// third argument reads the int or pointer the caller passed.

#[no_mangle]
pub unsafe extern "C" fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::fcntl(fd, cmd, arg) };
    };
    run(-1, || ret_int(shim::fcntl(fd, cmd, arg)))
}

#[no_mangle]
pub unsafe extern "C" fn fcntl64(fd: c_int, cmd: c_int, arg: usize) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::fcntl64(fd, cmd, arg) };
    };
    run(-1, || ret_int(shim::fcntl(fd, cmd, arg)))
}

#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, req: libc::c_ulong, arg: usize) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::ioctl(fd, req, arg) };
    };
    run(-1, || {
        let p = arg as *mut c_int;
        if p.is_null() {
            return ret_int(Err(Errno(libc::EFAULT)));
        }
        // SAFETY: FIONREAD/FIONBIO take a pointer to int (caller contract, non-null).
        let v = unsafe { &mut *p };
        ret_int(shim::ioctl(fd, req, v))
    })
}

// ---- names and options ---------------------------------------------------------------------------

fn do_name(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t, peer: bool) -> c_int {
    run(-1, || {
        if addr.is_null() || len.is_null() {
            return ret_int(Err(Errno(libc::EFAULT)));
        }
        match shim::sockname(fd, peer) {
            Ok(a) => {
                // SAFETY: valid (addr, len) pair (caller contract, non-null).
                unsafe { put_addr(a, addr, len) };
                0
            }
            Err(e) => ret_int(Err(e)),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn getsockname(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::getsockname(fd, addr, len) };
    };
    do_name(fd, addr, len, false)
}

#[no_mangle]
pub unsafe extern "C" fn getpeername(fd: c_int, addr: *mut libc::sockaddr, len: *mut libc::socklen_t) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::getpeername(fd, addr, len) };
    };
    do_name(fd, addr, len, true)
}

#[no_mangle]
pub unsafe extern "C" fn getsockopt(fd: c_int, level: c_int, name: c_int, v: *mut c_void, len: *mut libc::socklen_t) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::getsockopt(fd, level, name, v, len) };
    };
    run(-1, || {
        if len.is_null() {
            return ret_int(Err(Errno(libc::EFAULT)));
        }
        // SAFETY: len valid (non-null, caller contract).
        let cap = unsafe { *len } as i32;
        if cap < 0 {
            return ret_int(Err(Errno(libc::EINVAL)));
        }
        // SAFETY: v is valid for cap bytes.
        let Some(out) = (unsafe { bytes_mut(v, cap as usize) }) else { return ret_int(Err(Errno(libc::EFAULT))) };
        match shim::getsockopt(fd, level, name, out) {
            Ok(n) => {
                // SAFETY: as above.
                unsafe { *len = n as libc::socklen_t };
                0
            }
            Err(e) => ret_int(Err(e)),
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn setsockopt(fd: c_int, level: c_int, name: c_int, v: *const c_void, len: libc::socklen_t) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::setsockopt(fd, level, name, v, len) };
    };
    run(-1, || {
        // SAFETY: v is valid for len bytes (caller contract).
        let Some(val) = (unsafe { bytes(v, len as usize) }) else { return ret_int(Err(Errno(libc::EFAULT))) };
        ret_int(shim::setsockopt(fd, level, name, val))
    })
}

// ---- readiness ----------------------------------------------------------------------------------

fn any_stack_poll(fds: *const libc::pollfd, n: libc::nfds_t) -> bool {
    if fds.is_null() || n == 0 || n > 1 << 20 {
        return false;
    }
    // SAFETY: the caller's pollfd array of n entries.
    let s = unsafe { std::slice::from_raw_parts(fds, n as usize) };
    s.iter().any(|p| shim::is_stack(p.fd))
}

fn timespec_ms(t: *const libc::timespec) -> c_int {
    if t.is_null() {
        return -1;
    }
    // SAFETY: caller's timespec (non-null).
    let t = unsafe { &*t };
    if t.tv_sec < 0 || t.tv_nsec < 0 {
        return 0;
    }
    let ms = t.tv_sec.saturating_mul(1000).saturating_add((t.tv_nsec + 999_999) / 1_000_000);
    ms.min(i32::MAX as i64) as c_int
}

fn do_poll(fds: *mut libc::pollfd, n: libc::nfds_t, ms: c_int) -> Option<c_int> {
    let r = run(Some(-1), || {
        // SAFETY: the caller's pollfd array of n entries (checked by any_stack_poll).
        let s = unsafe { std::slice::from_raw_parts_mut(fds, n as usize) };
        shim::poll(s, ms).map(ret_int)
    });
    r
}

#[no_mangle]
pub unsafe extern "C" fn poll(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int) -> c_int {
    let Some(_g) = any_stack_poll(fds, n).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::poll(fds, n, timeout) };
    };
    match do_poll(fds, n, timeout) {
        Some(r) => r,
        // SAFETY: forwarding unchanged.
        None => unsafe { raw::poll(fds, n, timeout) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn __poll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, timeout: c_int, fdslen: usize) -> c_int {
    if (fdslen / size_of::<libc::pollfd>()) < n as usize {
        // SAFETY: glibc's overflow report.
        unsafe { libc::abort() };
    }
    // SAFETY: same contract as poll.
    unsafe { poll(fds, n, timeout) }
}

#[no_mangle]
pub unsafe extern "C" fn ppoll(fds: *mut libc::pollfd, n: libc::nfds_t, t: *const libc::timespec, m: *const libc::sigset_t) -> c_int {
    let Some(_g) = any_stack_poll(fds, n).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::ppoll(fds, n, t, m) };
    };
    // The mask is applied for the duration of the call (not atomically with the sleep).
    // SAFETY: m is null or a valid sigset (caller contract).
    let old = (!m.is_null()).then(|| crate::sys::sigmask(unsafe { &*m }));
    let r = do_poll(fds, n, timespec_ms(t));
    if let Some(old) = old {
        crate::sys::sigmask(&old);
    }
    match r {
        Some(r) => r,
        // SAFETY: forwarding unchanged.
        None => unsafe { raw::ppoll(fds, n, t, m) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn __ppoll_chk(fds: *mut libc::pollfd, n: libc::nfds_t, t: *const libc::timespec, m: *const libc::sigset_t, fdslen: usize) -> c_int {
    if (fdslen / size_of::<libc::pollfd>()) < n as usize {
        // SAFETY: glibc's overflow report.
        unsafe { libc::abort() };
    }
    // SAFETY: same contract as ppoll.
    unsafe { ppoll(fds, n, t, m) }
}

/// select over sets with stack sockets, through `shim::poll`.
fn select_via_poll(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, x: *mut libc::fd_set, ms: c_int) -> Option<c_int> {
    let isset = |set: *mut libc::fd_set, fd: c_int| -> bool {
        // SAFETY: set is null or a valid fd_set; fd < n <= FD_SETSIZE.
        !set.is_null() && unsafe { libc::FD_ISSET(fd, set) }
    };
    let n = n.clamp(0, libc::FD_SETSIZE as c_int);
    let mut pfds = Vec::new();
    let mut any = false;
    for fd in 0..n {
        let mut ev = 0;
        if isset(r, fd) {
            ev |= libc::POLLIN;
        }
        if isset(w, fd) {
            ev |= libc::POLLOUT;
        }
        if isset(x, fd) {
            ev |= libc::POLLPRI;
        }
        if ev != 0 {
            any |= shim::is_stack(fd);
            pfds.push(libc::pollfd { fd, events: ev, revents: 0 });
        }
    }
    if !any {
        return None;
    }
    let res = shim::poll(&mut pfds, ms)?;
    let res = match res {
        Ok(_) => 0,
        Err(e) => return Some(ret_int(Err(e))),
    };
    let _ = res;
    for set in [r, w, x] {
        if !set.is_null() {
            // SAFETY: valid fd_set (caller contract).
            unsafe { libc::FD_ZERO(set) };
        }
    }
    let mut count = 0;
    for p in &pfds {
        if p.revents & libc::POLLNVAL != 0 {
            return Some(ret_int(Err(Errno(libc::EBADF))));
        }
        let mut put = |set: *mut libc::fd_set| {
            if !set.is_null() {
                // SAFETY: valid fd_set, fd < FD_SETSIZE.
                unsafe { libc::FD_SET(p.fd, set) };
                count += 1;
            }
        };
        if p.events & libc::POLLIN != 0 && p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            put(r);
        }
        if p.events & libc::POLLOUT != 0 && p.revents & (libc::POLLOUT | libc::POLLERR) != 0 {
            put(w);
        }
        if p.events & libc::POLLPRI != 0 && p.revents & libc::POLLPRI != 0 {
            put(x);
        }
    }
    Some(count)
}

#[no_mangle]
pub unsafe extern "C" fn select(n: c_int, r: *mut libc::fd_set, w: *mut libc::fd_set, x: *mut libc::fd_set, t: *mut libc::timeval) -> c_int {
    let Some(_g) = shim::any_stack_fd().then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::select(n, r, w, x, t) };
    };
    let ms = if t.is_null() {
        -1
    } else {
        // SAFETY: the caller's timeval (non-null).
        let tv = unsafe { &*t };
        (tv.tv_sec.max(0) * 1000 + (tv.tv_usec.max(0) + 999) / 1000).min(i32::MAX as i64) as c_int
    };
    match run(Some(-1), || select_via_poll(n, r, w, x, ms)) {
        Some(v) => v,
        // SAFETY: forwarding unchanged.
        None => unsafe { raw::select(n, r, w, x, t) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn pselect(
    n: c_int,
    r: *mut libc::fd_set,
    w: *mut libc::fd_set,
    x: *mut libc::fd_set,
    t: *const libc::timespec,
    m: *const libc::sigset_t,
) -> c_int {
    let Some(_g) = shim::any_stack_fd().then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::pselect(n, r, w, x, t, m) };
    };
    // SAFETY: m is null or a valid sigset.
    let old = (!m.is_null()).then(|| crate::sys::sigmask(unsafe { &*m }));
    let v = run(Some(-1), || select_via_poll(n, r, w, x, timespec_ms(t)));
    if let Some(old) = old {
        crate::sys::sigmask(&old);
    }
    match v {
        Some(v) => v,
        // SAFETY: forwarding unchanged.
        None => unsafe { raw::pselect(n, r, w, x, t, m) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_ctl(ep: c_int, op: c_int, fd: c_int, ev: *mut libc::epoll_event) -> c_int {
    let Some(_g) = shim::is_stack(fd).then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::epoll_ctl(ep, op, fd, ev) };
    };
    run(-1, || {
        // SAFETY: ev is null or a valid epoll_event (caller contract); copied out.
        let e = if ev.is_null() { None } else { Some(unsafe { std::ptr::read_unaligned(ev) }) };
        ret_int(shim::epoll_ctl(ep, op, fd, e))
    })
}

fn do_epoll_wait(ep: c_int, ev: *mut libc::epoll_event, n: c_int, ms: c_int) -> Option<c_int> {
    if ev.is_null() || n <= 0 || n > 1 << 20 {
        return None;
    }
    run(Some(-1), || {
        // SAFETY: the caller's array of n events.
        let out = unsafe { std::slice::from_raw_parts_mut(ev, n as usize) };
        shim::epoll_wait(ep, out, ms).map(ret_int)
    })
}

#[no_mangle]
pub unsafe extern "C" fn epoll_wait(ep: c_int, ev: *mut libc::epoll_event, n: c_int, t: c_int) -> c_int {
    let Some(_g) = shim::epoll_any().then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::epoll_wait(ep, ev, n, t) };
    };
    match do_epoll_wait(ep, ev, n, t) {
        Some(r) => r,
        // SAFETY: forwarding unchanged.
        None => unsafe { raw::epoll_wait(ep, ev, n, t) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait(ep: c_int, ev: *mut libc::epoll_event, n: c_int, t: c_int, m: *const libc::sigset_t) -> c_int {
    let Some(_g) = shim::epoll_any().then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::epoll_pwait(ep, ev, n, t, m) };
    };
    // SAFETY: m is null or a valid sigset.
    let old = (!m.is_null()).then(|| crate::sys::sigmask(unsafe { &*m }));
    let r = do_epoll_wait(ep, ev, n, t);
    if let Some(old) = old {
        crate::sys::sigmask(&old);
    }
    match r {
        Some(r) => r,
        // SAFETY: forwarding unchanged.
        None => unsafe { raw::epoll_pwait(ep, ev, n, t, m) },
    }
}

#[no_mangle]
pub unsafe extern "C" fn epoll_pwait2(ep: c_int, ev: *mut libc::epoll_event, n: c_int, t: *const libc::timespec, m: *const libc::sigset_t) -> c_int {
    let Some(_g) = shim::epoll_any().then(enter).flatten() else {
        // SAFETY: forwarding unchanged.
        return unsafe { raw::epoll_pwait2(ep, ev, n, t, m) };
    };
    // SAFETY: m is null or a valid sigset.
    let old = (!m.is_null()).then(|| crate::sys::sigmask(unsafe { &*m }));
    let r = do_epoll_wait(ep, ev, n, timespec_ms(t));
    if let Some(old) = old {
        crate::sys::sigmask(&old);
    }
    match r {
        Some(r) => r,
        // SAFETY: forwarding unchanged.
        None => unsafe { raw::epoll_pwait2(ep, ev, n, t, m) },
    }
}
