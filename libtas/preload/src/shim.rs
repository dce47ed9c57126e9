//! The sockets emulation over the native API, in safe code. Every function takes plain
//! values and slices (the interposer converts the C arguments) and returns the C result
//! or an errno.
//!
//! Model (docs/decisions.md, "The LD_PRELOAD shim"):
//! - every stack socket is backed by a real kernel **placeholder** descriptor (an eventfd
//!   from libc), so its number can never collide with a kernel descriptor, `dup`/`fork`/
//!   close-on-exec act on a real descriptor, and the fd table below only maps numbers to
//!   socket state;
//! - one libtas [`Context`] per thread that makes sockets, each behind its own mutex;
//!   sleeping happens outside it on the context's eventfd (announce, then sleep; the last
//!   sleeper out clears the flags); a connection moves to the context of a thread that
//!   keeps using it (`moves`, decisions §29);
//! - poll/select/epoll on sets that mix stack sockets and kernel descriptors compute the
//!   stack sockets' readiness in user space and sleep in the kernel on the kernel
//!   descriptors plus the context's eventfd.

use std::cell::RefCell;
use std::collections::HashMap;
use std::mem::ManuallyDrop;
use std::ffi::c_int;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use libtas::{Adoption, ConnId, ConnState, Context, Error, ListenOptions, ListenerId};

use crate::sys::{self, Errno, SysResult};

mod moves;
pub use moves::moves;
use moves::Moves;

// ---- errno helpers ------------------------------------------------------------------------

fn e(code: c_int) -> Errno {
    Errno(code)
}

/// The errno Linux reports for a native-API error.
pub fn errno_of(err: Error) -> Errno {
    e(match err {
        Error::WouldBlock => libc::EAGAIN,
        Error::Refused => libc::ECONNREFUSED,
        Error::Reset => libc::ECONNRESET,
        Error::TimedOut => libc::ETIMEDOUT,
        Error::Closed | Error::Shutdown => libc::EPIPE,
        Error::NotConnected => libc::ENOTCONN,
        Error::AddrInUse => libc::EADDRINUSE,
        Error::NoResources => libc::ENOBUFS,
        Error::Unreachable => libc::EHOSTUNREACH,
        Error::Aborted => libc::ECONNRESET,
        Error::PermissionDenied => libc::EACCES,
        Error::NotFound => libc::ENOENT,
        Error::Moved => libc::EBADF,
        Error::InvalidArgument => libc::EINVAL,
        Error::InvalidHandle => libc::EBADF,
        Error::ServiceUnavailable { kind: std::io::ErrorKind::PermissionDenied, .. } => libc::EACCES,
        Error::ServiceUnavailable { .. } => libc::ECONNREFUSED,
        _ => libc::ENETDOWN,
    })
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

// ---- the process context ------------------------------------------------------------------

/// Bumped in the child by the fork handler: state made before is the parent's.
static FORK_GEN: AtomicU64 = AtomicU64::new(1);

extern "C" fn after_fork_child() {
    FORK_GEN.fetch_add(1, Ordering::SeqCst);
}

/// Not decided yet / the service is used / kernel sockets (the service was not reachable).
const MODE_UNKNOWN: u8 = 0;
const MODE_STACK: u8 = 1;
const MODE_KERNEL: u8 = 2;
static MODE: AtomicU8 = AtomicU8::new(MODE_UNKNOWN);
/// Which fork generation MODE was decided in.
static MODE_GEN: AtomicU64 = AtomicU64::new(0);

/// A context and the number of threads sleeping on its eventfd.
pub struct Inner {
    /// Dropped by [`Proc`]'s `Drop` only in the process that attached it.
    pub ctx: ManuallyDrop<Context>,
    sleepers: u32,
}

/// One libtas context: one per thread that creates sockets (attached lazily, on the
/// thread's first `socket()`), shared through `Arc` by the sockets made on it, so it lives
/// as long as the thread or its last socket. Its mutex is taken by the owning thread for
/// its own sockets (uncontended) and by any other thread that uses one of them (the
/// forwarding path, decisions §20); there is no process-wide lock on the data path.
pub struct Proc {
    gen: u64,
    inner: Mutex<Inner>,
    efd: c_int,
    /// The thread that attached it (its `moves::thread_token`).
    thread: u64,
    /// Its lock was ever found taken (counted once in the statistics).
    contended: AtomicBool,
}

impl Proc {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        match self.inner.try_lock() {
            Ok(g) => g,
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                moves::LOCK_WAITS.fetch_add(1, Ordering::Relaxed);
                if !self.contended.swap(true, Ordering::Relaxed) {
                    moves::CONTENDED_CTXS.fetch_add(1, Ordering::Relaxed);
                }
                lock(&self.inner)
            }
        }
    }
}

impl Drop for Proc {
    #[allow(unsafe_code)]
    fn drop(&mut self) {
        // In a forked child a context of the parent is never dropped: dropping posts
        // nothing, but closes the parent's lifeline and unmaps its region under the
        // parent's other sockets in this process; the child leaks it instead.
        if self.gen != FORK_GEN.load(Ordering::SeqCst) {
            return;
        }
        let inner = self.inner.get_mut().unwrap_or_else(|p| p.into_inner());
        // SAFETY: `ctx` is dropped exactly once, here, and `self` is never used again.
        unsafe { ManuallyDrop::drop(&mut inner.ctx) };
    }
}

thread_local! {
    /// This thread's context (of the fork generation it was attached in).
    static MINE: RefCell<Option<Arc<Proc>>> = const { RefCell::new(None) };
}

/// Contexts attached by this process (for statistics and the tests): one per thread that
/// made sockets.
static ATTACHED: AtomicU64 = AtomicU64::new(0);

/// The calling thread's context, attaching on first use (and again in a forked child).
fn thread_ctx() -> SysResult<Arc<Proc>> {
    let gen = FORK_GEN.load(Ordering::SeqCst);
    let cur = MINE.try_with(|m| m.borrow().clone()).ok().flatten();
    if let Some(p) = cur.filter(|p| p.gen == gen) {
        return Ok(p);
    }
    // The service's path is read once: forked workers of some servers (nginx) get a
    // cleared environment, and must still find the service their parent used.
    static SERVICE: Mutex<Option<(std::path::PathBuf, String)>> = Mutex::new(None);
    let (path, name) = lock(&SERVICE)
        .get_or_insert_with(|| {
            let path = std::env::var_os(libtas::tas_proto::attach::SOCKET_ENV)
                .map(std::path::PathBuf::from)
                .unwrap_or_else(|| libtas::tas_proto::attach::DEFAULT_APP_SOCKET.into());
            let name = std::env::args_os()
                .next()
                .and_then(|a| std::path::Path::new(&a).file_name().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "app".to_owned());
            (path, name)
        })
        .clone();
    let ctx = Context::attach_to(&path, &name).map_err(errno_of)?;
    let Some(efd) = ctx.sleep_fd().map(|f| f.as_raw_fd()) else { return Err(e(libc::ENETDOWN)) };
    let p = Arc::new(Proc {
        gen,
        inner: Mutex::new(Inner { ctx: ManuallyDrop::new(ctx), sleepers: 0 }),
        efd,
        thread: moves::thread_token(),
        contended: AtomicBool::new(false),
    });
    ATTACHED.fetch_add(1, Ordering::Relaxed);
    moves::on_attach();
    // A parent's context replaced here in a forked child is leaked by its Drop.
    let _ = MINE.try_with(|m| m.replace(Some(p.clone())));
    Ok(p)
}

/// Number of libtas contexts this process attached (one per thread that made sockets).
pub fn contexts_attached() -> u64 {
    ATTACHED.load(Ordering::Relaxed)
}

/// Decide (once per process) whether AF_INET stream sockets go to the stack. Returns
/// Ok(true) for the stack, Ok(false) for the kernel, Err when the service is not
/// reachable and `TAS_PRELOAD_FALLBACK=fail`.
pub fn use_stack() -> SysResult<bool> {
    let gen = FORK_GEN.load(Ordering::SeqCst);
    if MODE_GEN.load(Ordering::Acquire) == gen {
        match MODE.load(Ordering::Acquire) {
            MODE_STACK => return Ok(true),
            MODE_KERNEL => return Ok(false),
            _ => {}
        }
    }
    static ATFORK: AtomicBool = AtomicBool::new(false);
    if !ATFORK.swap(true, Ordering::SeqCst) {
        sys::register_atfork(after_fork_child);
    }
    if std::env::var_os("TAS_PRELOAD_DISABLE").is_some() {
        MODE.store(MODE_KERNEL, Ordering::Release);
        MODE_GEN.store(gen, Ordering::Release);
        return Ok(false);
    }
    match thread_ctx() {
        Ok(_) => {
            MODE.store(MODE_STACK, Ordering::Release);
            MODE_GEN.store(gen, Ordering::Release);
            Ok(true)
        }
        Err(err) => {
            let fail = std::env::var("TAS_PRELOAD_FALLBACK").is_ok_and(|v| v == "fail");
            if fail {
                sys::warn("libtas_preload: tasd is not reachable (TAS_SOCKET); TAS_PRELOAD_FALLBACK=fail: socket() fails\n");
                return Err(err);
            }
            if MODE.swap(MODE_KERNEL, Ordering::AcqRel) != MODE_KERNEL {
                sys::warn("libtas_preload: tasd is not reachable (is it running? is TAS_SOCKET set?): using kernel sockets\n");
            }
            MODE_GEN.store(gen, Ordering::Release);
            Ok(false)
        }
    }
}

fn spin_time() -> Duration {
    static SPIN: AtomicU64 = AtomicU64::new(u64::MAX);
    let mut v = SPIN.load(Ordering::Relaxed);
    if v == u64::MAX {
        v = std::env::var(libtas::SPIN_ENV).ok().and_then(|s| s.parse().ok()).unwrap_or(50);
        SPIN.store(v, Ordering::Relaxed);
    }
    Duration::from_micros(v)
}

/// Longest single sleep: a safety net for wake-ups that depend on another thread's local
/// action (nothing in the protocol should need it).
const MAX_SLEEP_MS: c_int = 200;

/// Whether a blocking socket call of the application that a signal handler interrupted
/// fails with `EINTR` (signal(7)): always if the socket has a time limit (`deadline`),
/// else unless the handler has `SA_RESTART` (see [`sys::some_handler_without_restart`]).
fn signal_ends_call(deadline: Option<Instant>) -> bool {
    deadline.is_some() || sys::some_handler_without_restart()
}

/// Outcome of one sleep.
enum Slept {
    /// Woken (or timed out of the slice): look again.
    Again,
    /// A kernel descriptor in `extra` is ready (count).
    Kernel,
    /// A signal interrupted the sleep.
    Interrupted,
}

/// Announce sleep on every context of `procs` (each under its own lock, one at a time).
/// False if one of them has news (or broke): then nothing stays announced, look again.
/// `broken` is set if a context's service went away.
fn announce_all(procs: &[Arc<Proc>], broken: &mut bool) -> bool {
    for (i, p) in procs.iter().enumerate() {
        let mut g = p.lock();
        if !g.ctx.announce_sleep() {
            if !g.ctx.check_service() {
                *broken = true;
            }
            drop(g);
            end_all(&procs[..i]);
            return false;
        }
        g.sleepers += 1;
    }
    true
}

/// After a sleep announced with [`announce_all`]: the last sleeper of each context clears
/// its flags and drains its eventfd.
fn end_all(procs: &[Arc<Proc>]) {
    for p in procs {
        let mut g = p.lock();
        g.sleepers -= 1;
        if g.sleepers == 0 {
            g.ctx.end_sleep();
        }
        g.ctx.check_service();
    }
}

/// Sleep until the service posts to one of `procs`, a descriptor of `extra` is ready, or
/// `ms` passes. `extra` gets the contexts' eventfds appended and removed again. `moved`
/// is asked once the sleep is announced: true (a socket the caller looks at moved to
/// another context since it looked; the mover wakes the old context only after that)
/// returns at once, to look again.
fn sleep_on(procs: &[Arc<Proc>], extra: &mut Vec<libc::pollfd>, ms: c_int, moved: &dyn Fn() -> bool) -> Slept {
    let mut broken = false;
    if !announce_all(procs, &mut broken) {
        return if broken { Slept::Interrupted } else { Slept::Again };
    }
    if moved() {
        end_all(procs);
        return Slept::Again;
    }
    let base = extra.len();
    for p in procs {
        extra.push(libc::pollfd { fd: p.efd, events: libc::POLLIN, revents: 0 });
    }
    let cap = if CONTENDED.swap(false, Ordering::Relaxed) { 1 } else { MAX_SLEEP_MS };
    let ms = if ms < 0 { cap } else { ms.min(cap) };
    let r = sys::poll(extra, ms);
    extra.truncate(base);
    end_all(procs);
    match r {
        Err(Errno(libc::EINTR)) => Slept::Interrupted,
        Ok(_) => {
            let n = extra.iter().filter(|p| p.revents != 0).count() as c_int;
            if n > 0 {
                Slept::Kernel
            } else {
                Slept::Again
            }
        }
        Err(_) => Slept::Again,
    }
}

impl Proc {
    /// Sleep until the service posts to this context, or `ms` passes.
    fn sleep(self: &Arc<Self>, ms: c_int) -> Slept {
        sleep_on(std::slice::from_ref(self), &mut Vec::new(), ms, &|| false)
    }

    /// Run `f` under the context lock until it gives a result (blocking with the adaptive
    /// spin-then-sleep protocol), or return EAGAIN at once if `nonblock`.
    fn block<T>(self: &Arc<Self>, nonblock: bool, f: impl FnMut(&mut Context) -> Option<SysResult<T>>) -> SysResult<T> {
        self.block_inner(nonblock, None, false, f)
    }

    /// A blocking socket call of the application (`accept`, `connect`, `recv`, `send`):
    /// [`Proc::block`] with a time limit (SO_RCVTIMEO/SO_SNDTIMEO: EAGAIN when it passes),
    /// and signals handled as Linux does: `EINTR` if the socket has a time limit or a
    /// handler without `SA_RESTART` ran, else the call goes on.
    fn block_until<T>(
        self: &Arc<Self>,
        nonblock: bool,
        deadline: Option<Instant>,
        f: impl FnMut(&mut Context) -> Option<SysResult<T>>,
    ) -> SysResult<T> {
        self.block_inner(nonblock, deadline, true, f)
    }

    /// The blocking loop. `eintr`: a signal may end the wait with `EINTR` (application
    /// calls); internal waits for the service's answer (listen, adopt, info) restart.
    fn block_inner<T>(
        self: &Arc<Self>,
        nonblock: bool,
        deadline: Option<Instant>,
        eintr: bool,
        mut f: impl FnMut(&mut Context) -> Option<SysResult<T>>,
    ) -> SysResult<T> {
        let start = Instant::now();
        let spin = spin_time();
        loop {
            {
                let mut g = self.lock();
                if let Some(r) = f(&mut g.ctx) {
                    return r;
                }
                if g.ctx.health().is_err() {
                    return Err(e(libc::ENETDOWN));
                }
            }
            if nonblock {
                return Err(e(libc::EAGAIN));
            }
            if start.elapsed() < spin {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                self.lock().ctx.poll();
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(e(libc::EAGAIN));
            }
            if let Slept::Interrupted = self.sleep(ms_left(deadline)) {
                if self.lock().ctx.health().is_err() {
                    return Err(e(libc::ENETDOWN));
                }
                if eintr && signal_ends_call(deadline) {
                    return Err(e(libc::EINTR));
                }
            }
        }
    }
}

// ---- sockets and the fd table ---------------------------------------------------------------

/// What a stack socket is.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    /// Created (maybe bound), neither listening nor connected.
    Fresh,
    Listening(ListenerId),
    Connecting(ConnId),
    Conn(ConnId),
    /// Made in the parent before a fork: unusable here.
    Stale,
}

/// Socket options recorded for getsockopt (and replayed if the socket becomes a kernel one).
#[derive(Debug, Default, Clone)]
struct Opts(Vec<(c_int, c_int, Vec<u8>)>);

impl Opts {
    fn set(&mut self, level: c_int, name: c_int, v: &[u8]) {
        if let Some(o) = self.0.iter_mut().find(|o| o.0 == level && o.1 == name) {
            o.2 = v.to_vec();
        } else {
            self.0.push((level, name, v.to_vec()));
        }
    }
    fn get(&self, level: c_int, name: c_int) -> Option<&[u8]> {
        self.0.iter().find(|o| o.0 == level && o.1 == name).map(|o| o.2.as_slice())
    }
    fn int(&self, level: c_int, name: c_int) -> Option<i32> {
        self.get(level, name).and_then(|v| v.get(..4)).map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
    }
}

#[derive(Debug)]
struct SockState {
    gen: u64,
    kind: Kind,
    nonblock: bool,
    nfds: u32,
    /// Bound port (0: none).
    port: u16,
    /// The port was chosen by us (bind to port 0): another may be tried at listen.
    auto_port: bool,
    opts: Opts,
    rd_shut: bool,
    /// Pending error for SO_ERROR (a failed non-blocking connect).
    so_error: c_int,
    /// Peer address of a connection (kept after close for getpeername).
    peer: Option<SocketAddrV4>,
    local: Option<SocketAddrV4>,
    /// A non-blocking connect was started: the first connect() after it finished returns
    /// 0 (as Linux), later ones EISCONN.
    nb_connect: bool,
    /// ECONNRESET was reported once: later reads see EOF, sends EPIPE (as Linux).
    reset_reported: bool,
    /// SO_SNDBUF as set (Linux's halved value: the payload it stands for); 0: not set,
    /// the transmit ring's size. Sends keep at most this many bytes unacknowledged.
    sndbuf_cap: u32,
    /// A connection another process may hold too (this process forked while holding it,
    /// or adopted it from another process): its close is a release (decisions §26).
    shared: bool,
}

/// A stack socket, shared by every descriptor that refers to it (dup, fork).
#[derive(Debug)]
pub struct Sock {
    st: Mutex<SockState>,
    /// The context the socket lives on. A connection moves to the context of a thread
    /// that keeps using it ([`move_here`], decisions §29): `home` and `st.kind` change
    /// together, under `st`'s lock, so read them together under it.
    home: Mutex<Arc<Proc>>,
    /// The move state ([`Moves`]).
    mv: Moves,
    /// Listener: connections ever queued that an `EPOLLEXCLUSIVE` waiter was woken for.
    excl_claimed: AtomicU64,
}

impl Sock {
    /// The context the socket lives on now (for a connection, read it under `st`'s lock
    /// together with its `ConnId`).
    fn proc(&self) -> Arc<Proc> {
        lock(&self.home).clone()
    }

    /// An `EPOLLEXCLUSIVE` waiter woke and sees `arrivals` connections ever queued: true
    /// for exactly one waiter per new arrival count.
    fn claim_arrivals(&self, arrivals: u64) -> bool {
        let prev = self.excl_claimed.load(Ordering::Acquire);
        arrivals > prev && self.excl_claimed.compare_exchange(prev, arrivals, Ordering::AcqRel, Ordering::Acquire).is_ok()
    }
}

impl std::fmt::Debug for Proc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Proc").field("gen", &self.gen).finish_non_exhaustive()
    }
}

/// Descriptors below this are tracked; a placeholder above it is refused with EMFILE.
const MAX_FD: usize = 1 << 16;
static BITS: [AtomicU64; MAX_FD / 64] = [const { AtomicU64::new(0) }; MAX_FD / 64];
/// The socket of each tracked descriptor, each slot behind its own small lock (no
/// process-wide lock is taken to find a socket: two threads contend only on one descriptor).
static TABLE: [Mutex<Option<Arc<Sock>>>; MAX_FD] = [const { Mutex::new(None) }; MAX_FD];

/// True if `fd` is a stack socket (one atomic load for every other descriptor).
pub fn is_stack(fd: c_int) -> bool {
    if fd < 0 || fd as usize >= MAX_FD {
        return false;
    }
    BITS[fd as usize / 64].load(Ordering::Acquire) & (1 << (fd as usize % 64)) != 0
}

fn set_bit(fd: c_int, on: bool) {
    let (w, b) = (fd as usize / 64, 1u64 << (fd as usize % 64));
    if on {
        BITS[w].fetch_or(b, Ordering::AcqRel);
    } else {
        BITS[w].fetch_and(!b, Ordering::AcqRel);
    }
}

fn lookup(fd: c_int) -> Option<Arc<Sock>> {
    if !is_stack(fd) {
        return None;
    }
    lock(&TABLE[fd as usize]).clone()
}

fn insert(fd: c_int, s: Arc<Sock>) -> SysResult<()> {
    if fd < 0 || fd as usize >= MAX_FD {
        return Err(e(libc::EMFILE));
    }
    *lock(&TABLE[fd as usize]) = Some(s);
    ANY_STACK.store(true, Ordering::Relaxed);
    set_bit(fd, true);
    Ok(())
}

fn remove(fd: c_int) -> Option<Arc<Sock>> {
    if !is_stack(fd) {
        return None;
    }
    set_bit(fd, false);
    lock(&TABLE[fd as usize]).take()
}

fn sock(fd: c_int) -> SysResult<Arc<Sock>> {
    let s = lookup(fd).ok_or(e(libc::EBADF))?;
    adopt(fd, s)
}

/// In a forked child, a listening socket inherited from the parent becomes a listener of
/// the child's own context on the same port (joining the parent's reuse-port group in
/// tasd), on the same descriptor. Other inherited stack sockets stay stale (EBADF).
fn adopt(fd: c_int, s: Arc<Sock>) -> SysResult<Arc<Sock>> {
    let gen = FORK_GEN.load(Ordering::SeqCst);
    let (stale, conn) = {
        let st = lock(&s.st);
        match st.kind {
            Kind::Listening(_) if st.gen != gen && st.port != 0 => (Some((st.port, st.nonblock, st.opts.clone())), None),
            Kind::Conn(c) if st.gen != gen || st.shared => (None, Some((c, st.gen == gen, s.proc()))),
            _ => (None, None),
        }
    };
    if let Some((c, ours, home)) = conn {
        // An inherited connection, or one that moved to another process since: it moves
        // here on use (decisions §26).
        if ours {
            // Take the context's news first: the connection may have moved to another
            // process (which used it) since this process last looked.
            let moved = {
                let mut g = home.lock();
                g.ctx.poll();
                g.ctx.state(c) == ConnState::Failed(Error::Moved)
            };
            if !moved {
                return Ok(s);
            }
        }
        return adopt_conn(&s, c, ours);
    }
    let Some((port, nonblock, opts)) = stale else { return Ok(s) };
    let p = thread_ctx()?;
    let opts_l = ListenOptions::shared().with_rcvbuf(rcvbuf_of(&opts));
    let token = p.lock().ctx.listen_start_with(port, 511, opts_l).map_err(errno_of)?;
    let l = p.block(false, |ctx| ctx.listen_result(token).map_err(errno_of).transpose())?;
    let ns = Arc::new(Sock {
        st: Mutex::new(SockState {
            gen: p.gen,
            kind: Kind::Listening(l),
            nonblock,
            nfds: 1,
            port,
            auto_port: false,
            opts,
            rd_shut: false,
            so_error: 0,
            peer: None,
            local: Some(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, port)),
            nb_connect: false,
            reset_reported: false,
            sndbuf_cap: 0,
            shared: false,
        }),
        mv: Moves::new(p.thread),
        home: Mutex::new(p),
        excl_claimed: AtomicU64::new(0),
    });
    insert(fd, ns.clone())?;
    Ok(ns)
}

// ---- connections shared between processes (decisions §26) --------------------------------

/// How long an adopt or release from an inherited socket is retried while tasd does not
/// know yet that this process holds the connection (the parent's `Forked` report may
/// still be on its way when the child runs first).
const HOLDER_RETRY: Duration = Duration::from_millis(500);

/// An adopt (`adopt`) or release request on context `p`, waiting for the answer.
fn holder_request(p: &Arc<Proc>, adopt: bool, peer: SocketAddrV4, lport: u16, retry: bool) -> SysResult<Adoption> {
    let start = Instant::now();
    loop {
        let token = {
            let mut g = p.lock();
            if adopt {
                g.ctx.adopt_start(peer, lport)
            } else {
                g.ctx.release_start(peer, lport)
            }
        }
        .map_err(errno_of)?;
        let r = p.block(false, |ctx| match ctx.adopt_result(token) {
            Ok(None) => None,
            Ok(Some(a)) => Some(Ok(Ok(a))),
            Err(err) => Some(Ok(Err(err))),
        })?;
        match r {
            // NoResources: the connection is being moved (another holder adopts it right
            // now); NotFound: for an inherited socket, tasd may not know of the fork yet.
            Err(Error::NoResources) if start.elapsed() < HOLDER_RETRY => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(Error::NotFound) if retry && start.elapsed() < HOLDER_RETRY => {
                std::thread::sleep(Duration::from_millis(2));
            }
            r => return r.map_err(errno_of),
        }
    }
}

/// Point every descriptor of socket `old` at `new`.
fn replace_sock(old: &Arc<Sock>, new: &Arc<Sock>) {
    for (w, word) in BITS.iter().enumerate() {
        let mut bits = word.load(Ordering::Acquire);
        while bits != 0 {
            let fd = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let mut slot = lock(&TABLE[fd]);
            if slot.as_ref().is_some_and(|s| Arc::ptr_eq(s, old)) {
                *slot = Some(new.clone());
            }
        }
    }
}

/// Every stack socket of this process.
fn all_socks() -> Vec<Arc<Sock>> {
    let mut v: Vec<Arc<Sock>> = Vec::new();
    for (w, word) in BITS.iter().enumerate() {
        let mut bits = word.load(Ordering::Acquire);
        while bits != 0 {
            let fd = w * 64 + bits.trailing_zeros() as usize;
            bits &= bits - 1;
            if let Some(s) = lock(&TABLE[fd]).clone() {
                if !v.iter().any(|x| Arc::ptr_eq(x, &s)) {
                    v.push(s);
                }
            }
        }
    }
    v
}

/// Move connection `c` of socket `s` (inherited from the parent, or `ours` and moved to
/// another process since) into this thread's context; every descriptor of it follows.
fn adopt_conn(s: &Arc<Sock>, c: ConnId, ours: bool) -> SysResult<Arc<Sock>> {
    let (peer, local, nonblock, opts, rd_shut, nfds, sndbuf_cap, port) = {
        let st = lock(&s.st);
        (st.peer, st.local, st.nonblock, st.opts.clone(), st.rd_shut, st.nfds, st.sndbuf_cap, st.port)
    };
    let (Some(peer), Some(local)) = (peer, local) else { return Err(e(libc::EBADF)) };
    let p = thread_ctx()?;
    let conn = match holder_request(&p, true, peer, local.port(), !ours) {
        Ok(Adoption::Here { conn, .. }) => conn,
        _ => return Err(e(libc::EBADF)),
    };
    if ours {
        let _ = s.proc().lock().ctx.close(c); // frees the moved-away entry
    }
    let ns = Arc::new(Sock {
        st: Mutex::new(SockState {
            gen: p.gen,
            kind: Kind::Conn(conn),
            nonblock,
            nfds,
            port,
            auto_port: false,
            opts,
            rd_shut,
            so_error: 0,
            peer: Some(peer),
            local: Some(local),
            nb_connect: false,
            reset_reported: false,
            sndbuf_cap,
            shared: true,
        }),
        mv: Moves::new(p.thread),
        home: Mutex::new(p),
        excl_claimed: AtomicU64::new(0),
    });
    replace_sock(s, &ns);
    lock(&s.st).kind = Kind::Stale;
    Ok(ns)
}

/// The last descriptor of a shared connection closed: give up this process's hold; the
/// last holder gets the connection and closes it.
fn release_conn(s: &Arc<Sock>, c: ConnId, ours: bool, peer: SocketAddrV4, lport: u16) {
    let moved = ours && s.proc().lock().ctx.state(c) == ConnState::Failed(Error::Moved);
    if moved {
        let _ = s.proc().lock().ctx.close(c);
    }
    let p = if ours && !moved {
        s.proc()
    } else {
        match thread_ctx() {
            Ok(p) => p,
            Err(_) => return,
        }
    };
    let here = ours && !moved;
    match holder_request(&p, false, peer, lport, !ours) {
        Ok(Adoption::NotLast) => {
            if here {
                let _ = p.lock().ctx.forget(c);
            }
        }
        Ok(Adoption::Here { conn, .. }) => {
            let mut g = p.lock();
            let _ = g.ctx.close(conn);
            g.ctx.kick();
        }
        // tasd does not know the connection as shared (it ended meanwhile): close ours.
        Err(_) => {
            if here {
                let _ = p.lock().ctx.close(c);
            }
        }
    }
}

/// In the parent, after `fork` returned `child`: the child holds every connection this
/// process holds. Marks them shared and tells tasd, on every context that owns one (each
/// context's requests are in order, so the report precedes any later release).
pub fn after_fork_parent(child: u32) {
    if !ANY_STACK.load(Ordering::Relaxed) {
        return;
    }
    let gen = FORK_GEN.load(Ordering::SeqCst);
    let mut procs: Vec<Arc<Proc>> = Vec::new();
    let mut any = false;
    for s in all_socks() {
        let mut st = lock(&s.st);
        if let Kind::Conn(_) = st.kind {
            any = true;
            if st.gen == gen {
                st.shared = true;
                if !procs.iter().any(|p| Arc::ptr_eq(p, &s.proc())) {
                    procs.push(s.proc());
                }
            }
        }
    }
    if !any {
        return;
    }
    if let Ok(p) = thread_ctx() {
        if !procs.iter().any(|x| Arc::ptr_eq(x, &p)) {
            procs.push(p);
        }
    }
    for p in procs {
        let _ = p.lock().ctx.forked(child);
    }
}

/// Ports held by this process's stack sockets, with their SO_REUSEADDR: bound and
/// listening sockets, and connections accepted on a port (the service only learns of a
/// port at listen; Linux refuses a conflicting bind at once).
static BOUND: Mutex<Vec<(u16, bool)>> = Mutex::new(Vec::new());

fn new_sock(proc: Arc<Proc>, kind: Kind, nonblock: bool, cloexec: bool) -> SysResult<(c_int, Arc<Sock>)> {
    let fd = sys::eventfd(libc::EFD_NONBLOCK | if cloexec { libc::EFD_CLOEXEC } else { 0 })?;
    let s = Arc::new(Sock {
        st: Mutex::new(SockState {
            gen: proc.gen,
            kind,
            nonblock,
            nfds: 1,
            port: 0,
            auto_port: false,
            opts: Opts::default(),
            rd_shut: false,
            so_error: 0,
            peer: None,
            local: None,
            nb_connect: false,
            reset_reported: false,
            sndbuf_cap: 0,
            shared: false,
        }),
        mv: Moves::new(proc.thread),
        home: Mutex::new(proc),
        excl_claimed: AtomicU64::new(0),
    });
    if let Err(err) = insert(fd, s.clone()) {
        let _ = sys::close(fd);
        return Err(err);
    }
    Ok((fd, s))
}

/// socket(AF_INET, SOCK_STREAM[|flags], 0|IPPROTO_TCP) on the stack.
pub fn socket(ty: c_int) -> SysResult<c_int> {
    let p = thread_ctx()?;
    let (fd, _) = new_sock(p, Kind::Fresh, ty & libc::SOCK_NONBLOCK != 0, ty & libc::SOCK_CLOEXEC != 0)?;
    Ok(fd)
}

impl Sock {
    fn state(&self) -> SysResult<MutexGuard<'_, SockState>> {
        let st = lock(&self.st);
        if st.gen != FORK_GEN.load(Ordering::Relaxed) || st.kind == Kind::Stale {
            return Err(e(libc::EBADF));
        }
        Ok(st)
    }

    /// A connection's context and handle now, with the move version they belong to.
    fn binding(&self) -> SysResult<(Arc<Proc>, ConnId, u64)> {
        let st = self.state()?;
        match st.kind {
            Kind::Conn(c) => Ok((self.proc(), c, self.mv.ver())),
            _ => Err(e(libc::EBADF)),
        }
    }

    /// [`Proc::block_until`] for a data call on a connection, wherever it lives: `f` gets
    /// the context and the handle the connection has now. If the connection moves to
    /// another thread's context meanwhile (decisions §29), the call follows it: a sleeper
    /// on the old context is woken by the move and looks again.
    fn block_conn<T>(
        &self,
        nonblock: bool,
        deadline: Option<Instant>,
        mut f: impl FnMut(&mut Context, ConnId) -> Option<SysResult<T>>,
    ) -> SysResult<T> {
        let start = Instant::now();
        let spin = spin_time();
        loop {
            let (p, c, ver) = self.binding()?;
            {
                let mut g = p.lock();
                if self.mv.ver() != ver {
                    continue; // moving or moved: wait for the mover, then find it again
                }
                if let Some(r) = f(&mut g.ctx, c) {
                    return r;
                }
                if g.ctx.health().is_err() {
                    return Err(e(libc::ENETDOWN));
                }
            }
            if nonblock {
                return Err(e(libc::EAGAIN));
            }
            if start.elapsed() < spin {
                for _ in 0..64 {
                    std::hint::spin_loop();
                }
                p.lock().ctx.poll();
                continue;
            }
            if deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(e(libc::EAGAIN));
            }
            let moved = || self.mv.ver() != ver;
            if let Slept::Interrupted = sleep_on(std::slice::from_ref(&p), &mut Vec::new(), ms_left(deadline), &moved) {
                if p.lock().ctx.health().is_err() {
                    return Err(e(libc::ENETDOWN));
                }
                if signal_ends_call(deadline) {
                    return Err(e(libc::EINTR));
                }
            }
        }
    }
}

/// The deadline of a blocking call from SO_RCVTIMEO/SO_SNDTIMEO (a struct timeval; zero:
/// no limit).
fn timeo(st: &SockState, name: c_int) -> Option<Instant> {
    let v = st.opts.get(libc::SOL_SOCKET, name)?;
    let sec = i64::from_ne_bytes(v.get(..8)?.try_into().ok()?);
    let usec = i64::from_ne_bytes(v.get(8..16)?.try_into().ok()?);
    if sec <= 0 && usec <= 0 {
        return None;
    }
    let d = Duration::from_secs(sec.max(0) as u64) + Duration::from_micros(usec.clamp(0, 999_999) as u64);
    Some(Instant::now() + d)
}

/// Move a connecting socket on once its open finished (under both locks).
fn settle(st: &mut SockState, ctx: &mut Context) {
    if let Kind::Connecting(c) = st.kind {
        match ctx.state(c) {
            ConnState::Connecting => {}
            ConnState::Failed(err) => {
                let _ = ctx.close(c);
                st.so_error = errno_of(err).0;
                st.kind = Kind::Fresh;
            }
            ConnState::Invalid => st.kind = Kind::Fresh,
            _ => {
                st.local = ctx.local_addr(c);
                st.kind = Kind::Conn(c);
            }
        }
    }
}

fn is_loopback(ip: Ipv4Addr) -> bool {
    ip.is_loopback()
}

/// Turn a fresh stack socket into a kernel socket on the same descriptor (for loopback
/// addresses, which the service does not serve).
fn to_kernel(fd: c_int, st: &SockState) -> SysResult<()> {
    let k = sys::socket(libc::AF_INET, libc::SOCK_STREAM, 0)?;
    for (level, name, v) in &st.opts.0 {
        let _ = sys::setsockopt(k, *level, *name, v);
    }
    if st.nonblock {
        let _ = sys::fcntl(k, libc::F_SETFL, libc::O_NONBLOCK as usize);
    }
    let cloexec = sys::fcntl(fd, libc::F_GETFD, 0).map(|f| f & libc::FD_CLOEXEC != 0).unwrap_or(false);
    remove(fd);
    let r = sys::dup3(k, fd, if cloexec { libc::O_CLOEXEC } else { 0 });
    let _ = sys::close(k);
    r.map(|_| ())
}

/// What `bind` and `connect` got, decoded.
pub fn parse_v4(addr: &[u8]) -> SysResult<SocketAddrV4> {
    if addr.len() < size_of::<libc::sockaddr_in>() {
        return Err(e(libc::EINVAL));
    }
    let family = u16::from_ne_bytes([addr[0], addr[1]]);
    if family != libc::AF_INET as u16 {
        return Err(e(libc::EAFNOSUPPORT));
    }
    let port = u16::from_be_bytes([addr[2], addr[3]]);
    let ip = Ipv4Addr::new(addr[4], addr[5], addr[6], addr[7]);
    Ok(SocketAddrV4::new(ip, port))
}

/// Encode an address for getsockname/accept.
pub fn encode_v4(a: SocketAddrV4) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as u16,
        sin_port: a.port().to_be(),
        sin_addr: libc::in_addr { s_addr: u32::from(*a.ip()).to_be() },
        sin_zero: [0; 8],
    }
}

/// Result of bind/connect: done on the stack, or the descriptor became a kernel socket and
/// the call must be repeated on libc.
pub enum Routed {
    Done(c_int),
    Kernel,
}

pub fn bind(fd: c_int, addr: &[u8]) -> SysResult<Routed> {
    let s = sock(fd)?;
    let mut st = s.state()?;
    let a = parse_v4(addr)?;
    if is_loopback(*a.ip()) && st.kind == Kind::Fresh && st.port == 0 {
        to_kernel(fd, &st)?;
        return Ok(Routed::Kernel);
    }
    if st.kind != Kind::Fresh || st.port != 0 {
        return Err(e(libc::EINVAL));
    }
    let local = s.proc().lock().ctx.local_ip();
    if !a.ip().is_unspecified() && *a.ip() != local {
        return Err(e(libc::EADDRNOTAVAIL));
    }
    let reuse = reuse_addr(&st.opts);
    let mut bound = lock(&BOUND);
    let port = if a.port() == 0 {
        let seed = (std::process::id() as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ Instant::now().elapsed().as_nanos() as u64 ^ fd as u64;
        let mut port = 0;
        for i in 0..20_000u64 {
            let cand = 40_000 + ((seed.wrapping_add(i.wrapping_mul(7919))) % 21_000) as u16;
            if !bound.iter().any(|b| b.0 == cand) {
                port = cand;
                break;
            }
        }
        if port == 0 {
            return Err(e(libc::EADDRINUSE));
        }
        st.auto_port = true;
        port
    } else {
        if bound.iter().any(|b| b.0 == a.port() && !(b.1 && reuse)) {
            return Err(e(libc::EADDRINUSE));
        }
        a.port()
    };
    bound.push((port, reuse));
    st.port = port;
    st.local = Some(SocketAddrV4::new(*a.ip(), port));
    Ok(Routed::Done(0))
}

/// SO_REUSEADDR or SO_REUSEPORT set: the socket may bind a port others hold (with it).
fn reuse_addr(opts: &Opts) -> bool {
    opts.int(libc::SOL_SOCKET, libc::SO_REUSEADDR).unwrap_or(0) != 0 || opts.int(libc::SOL_SOCKET, libc::SO_REUSEPORT).unwrap_or(0) != 0
}

fn unbind(port: u16) {
    let mut b = lock(&BOUND);
    if let Some(i) = b.iter().position(|x| x.0 == port) {
        b.swap_remove(i);
    }
}

pub fn listen(fd: c_int, backlog: c_int) -> SysResult<c_int> {
    let s = sock(fd)?;
    let mut st = s.state()?;
    match st.kind {
        Kind::Listening(_) => return Ok(0),
        Kind::Fresh => {}
        _ => return Err(e(libc::EINVAL)),
    }
    if st.port == 0 {
        drop(st);
        bind(fd, &addr_bytes(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
        st = s.state()?;
    }
    let backlog = backlog.clamp(1, 4096) as u32;
    let mut tries = 0;
    loop {
        let port = st.port;
        // Shared, so that a forked child can listen on the inherited port too (decisions §17).
        let opts = ListenOptions::shared().with_rcvbuf(rcvbuf_of(&st.opts));
        let token = s.proc().lock().ctx.listen_start_with(port, backlog, opts).map_err(errno_of)?;
        let r = s.proc().block(false, |ctx| ctx.listen_result(token).map_err(errno_of).transpose());
        match r {
            Ok(l) => {
                st.kind = Kind::Listening(l);
                return Ok(0);
            }
            Err(Errno(libc::EADDRINUSE)) if st.auto_port && tries < 50 => {
                tries += 1;
                unbind(port);
                st.port = 0;
                st.auto_port = false;
                drop(st);
                bind(fd, &addr_bytes(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)))?;
                st = s.state()?;
            }
            Err(err) => return Err(err),
        }
    }
}

fn addr_bytes(a: SocketAddrV4) -> Vec<u8> {
    let sa = encode_v4(a);
    let mut v = Vec::with_capacity(16);
    v.extend_from_slice(&sa.sin_family.to_ne_bytes());
    v.extend_from_slice(&sa.sin_port.to_ne_bytes());
    v.extend_from_slice(&sa.sin_addr.s_addr.to_ne_bytes());
    v.extend_from_slice(&[0; 8]);
    v
}

/// accept4; returns the new descriptor and the peer.
pub fn accept(fd: c_int, flags: c_int) -> SysResult<(c_int, SocketAddrV4)> {
    let s = sock(fd)?;
    let (l, nonblock, deadline, port, reuse) = {
        let st = s.state()?;
        match st.kind {
            Kind::Listening(l) => (l, st.nonblock, timeo(&st, libc::SO_RCVTIMEO), st.port, reuse_addr(&st.opts)),
            _ => return Err(e(libc::EINVAL)),
        }
    };
    let c = s.proc().block_until(nonblock, deadline, |ctx| match ctx.accept(l) {
        Ok(Some(c)) => Some(Ok(c)),
        Ok(None) => None,
        Err(err) => Some(Err(if err == Error::InvalidHandle { e(libc::EINVAL) } else { errno_of(err) })),
    })?;
    let (peer, local) = {
        let home = s.proc();
        let g = home.lock();
        (g.ctx.peer_addr(c).unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0)), g.ctx.local_addr(c))
    };
    match new_sock(s.proc(), Kind::Conn(c), flags & libc::SOCK_NONBLOCK != 0, flags & libc::SOCK_CLOEXEC != 0) {
        Ok((nfd, ns)) => {
            let mut st = lock(&ns.st);
            st.peer = Some(peer);
            st.local = local;
            // The connection holds the listener's port until it closes, with the
            // listener's SO_REUSEADDR (Linux: an accepted socket shares its listener's
            // bind bucket and inherits its sk_reuse), so a bind of the port without
            // SO_REUSEADDR fails meanwhile.
            if port != 0 {
                lock(&BOUND).push((port, reuse));
                st.port = port;
            }
            Ok((nfd, peer))
        }
        Err(err) => {
            let _ = s.proc().lock().ctx.abort(c);
            Err(err)
        }
    }
}

pub fn connect(fd: c_int, addr: &[u8]) -> SysResult<Routed> {
    let s = sock(fd)?;
    let mut st = s.state()?;
    {
        let home = s.proc();
        let mut g = home.lock();
        settle(&mut st, &mut g.ctx);
    }
    let kind = st.kind;
    match kind {
        Kind::Connecting(_) => return Err(e(libc::EALREADY)),
        Kind::Conn(_) if std::mem::take(&mut st.nb_connect) => return Ok(Routed::Done(0)),
        Kind::Conn(_) => return Err(e(libc::EISCONN)),
        Kind::Listening(_) => return Err(e(libc::EISCONN)),
        _ => {}
    }
    if st.so_error != 0 {
        // A failed non-blocking connect reports its error once more on connect().
        let err = std::mem::take(&mut st.so_error);
        return Err(e(err));
    }
    let a = parse_v4(addr)?;
    if is_loopback(*a.ip()) && st.port == 0 {
        to_kernel(fd, &st)?;
        return Ok(Routed::Kernel);
    }
    if a.port() == 0 || a.ip().is_unspecified() {
        return Err(e(libc::ECONNREFUSED));
    }
    let c = s.proc().lock().ctx.connect_start_with(a, rcvbuf_of(&st.opts)).map_err(errno_of)?;
    st.kind = Kind::Connecting(c);
    st.peer = Some(a);
    if st.port != 0 {
        unbind(st.port);
        st.port = 0;
    }
    if st.nonblock {
        st.nb_connect = true;
        return Err(e(libc::EINPROGRESS));
    }
    let deadline = timeo(&st, libc::SO_SNDTIMEO);
    drop(st);
    let r = s.proc().block_until(false, deadline, |ctx| match ctx.state(c) {
        ConnState::Connecting => None,
        _ => Some(Ok(())),
    });
    if r == Err(e(libc::EAGAIN)) {
        // SO_SNDTIMEO passed: the open goes on, as Linux does.
        s.state()?.nb_connect = true;
        return Err(e(libc::EINPROGRESS));
    }
    if r == Err(e(libc::EINTR)) {
        // Interrupted: the open goes on too (a second connect gives EALREADY).
        s.state()?.nb_connect = true;
        return Err(e(libc::EINTR));
    }
    r?;
    let mut st = s.state()?;
    let home = s.proc();
    let mut g = home.lock();
    settle(&mut st, &mut g.ctx);
    match st.kind {
        Kind::Conn(_) => Ok(Routed::Done(0)),
        _ => {
            let err = std::mem::take(&mut st.so_error);
            Err(e(if err == 0 { libc::ECONNREFUSED } else { err }))
        }
    }
}

/// The connection of a socket for data calls, with its blocking mode.
fn conn_of(s: &Sock, data_err: c_int) -> SysResult<(ConnId, bool, bool)> {
    let mut st = s.state()?;
    let home = s.proc();
    let mut g = home.lock();
    settle(&mut st, &mut g.ctx);
    match st.kind {
        Kind::Conn(c) => Ok((c, st.nonblock, st.rd_shut)),
        Kind::Connecting(_) => Err(e(libc::EAGAIN)),
        _ => Err(e(data_err)),
    }
}

/// [`conn_of`] for a data call: a socket still connecting makes a blocking call
/// (neither O_NONBLOCK nor MSG_DONTWAIT) wait for the open to finish; a non-blocking one
/// gets EAGAIN.
fn open_conn(s: &Sock, flags: c_int, data_err: c_int) -> SysResult<(ConnId, bool, bool)> {
    match conn_of(s, data_err) {
        Err(Errno(libc::EAGAIN)) => {
            let st = s.state()?;
            if st.nonblock || flags & libc::MSG_DONTWAIT != 0 {
                return Err(e(libc::EAGAIN));
            }
            let pending = match st.kind {
                Kind::Connecting(c) => Some(c),
                _ => None,
            };
            drop(st);
            if let Some(c) = pending {
                s.proc().block(false, |ctx| (ctx.state(c) != ConnState::Connecting).then_some(Ok(())))?;
            }
            conn_of(s, data_err)
        }
        r => r,
    }
}

/// recv flags handled.
pub const MSG_PEEK: c_int = libc::MSG_PEEK;

/// recv/read on a stack socket into `buf`.
pub fn recv(fd: c_int, buf: &mut [u8], flags: c_int) -> SysResult<usize> {
    let s = sock(fd)?;
    moves::note_use(&s);
    let (_, nonblock, rd_shut) = open_conn(&s, flags, libc::ENOTCONN)?;
    if rd_shut || buf.is_empty() || lock(&s.st).reset_reported {
        return Ok(0);
    }
    let nonblock = nonblock || flags & libc::MSG_DONTWAIT != 0;
    let deadline = timeo(&*s.state()?, libc::SO_RCVTIMEO);
    let peek = flags & libc::MSG_PEEK != 0;
    let waitall = flags & libc::MSG_WAITALL != 0 && !peek;
    let mut got = 0usize;
    loop {
        let r = s.block_conn(nonblock, deadline, |ctx, c| {
            if peek {
                return match ctx.recv_view(c).map(|v| v.copy_to(buf)) {
                    Ok(n) => Some(Ok(n)),
                    Err(Error::WouldBlock) => None,
                    Err(err) if reset_after_fin(ctx, c, err) => Some(Ok(0)),
                    Err(err) => Some(Err(errno_of(err))),
                };
            }
            match ctx.recv(c, &mut buf[got..]) {
                Ok(n) => Some(Ok(n)),
                Err(Error::WouldBlock) => None,
                Err(err) if reset_after_fin(ctx, c, err) => Some(Ok(0)),
                Err(err) => Some(Err(errno_of(err))),
            }
        });
        match r {
            Ok(0) => return Ok(got),
            Ok(n) => {
                got += n;
                if !waitall || got == buf.len() || peek {
                    return Ok(got);
                }
            }
            Err(err) if got > 0 => {
                let _ = err;
                return Ok(got);
            }
            Err(err) => {
                if err == e(libc::ECONNRESET) {
                    lock(&s.st).reset_reported = true;
                }
                return Err(err);
            }
        }
    }
}

/// A reset that came after the peer's FIN: Linux's reads return EOF then (the FIN
/// marked the socket done) and its writes `EPIPE` (the reset of a half-closed connection
/// sets EPIPE, not ECONNRESET). A client that connects and closes at once, answered with a
/// write, resets this way.
fn reset_after_fin(ctx: &Context, c: ConnId, err: Error) -> bool {
    matches!(err, Error::Reset | Error::Aborted) && ctx.peer_fin(c)
}

/// The errno of a failed send on connection `c`.
fn send_errno(ctx: &Context, c: ConnId, err: Error) -> Errno {
    if reset_after_fin(ctx, c, err) {
        e(libc::EPIPE)
    } else {
        errno_of(err)
    }
}

/// send/write on a stack socket. `nosignal`: no SIGPIPE on EPIPE.
pub fn send(fd: c_int, data: &[u8], flags: c_int) -> SysResult<usize> {
    let s = sock(fd)?;
    moves::note_use(&s);
    let r = send_inner(&s, data, flags);
    if r == Err(e(libc::EPIPE)) && flags & libc::MSG_NOSIGNAL == 0 {
        sys::raise_sigpipe();
    }
    r
}

fn send_inner(s: &Sock, data: &[u8], flags: c_int) -> SysResult<usize> {
    // Linux: for a socket that never connected, send fails with EPIPE too.
    let (_, nonblock, _) = open_conn(s, flags, libc::EPIPE)?;
    if lock(&s.st).reset_reported {
        return Err(e(libc::EPIPE));
    }
    if data.is_empty() {
        return Ok(0);
    }
    let nonblock = nonblock || flags & libc::MSG_DONTWAIT != 0;
    let (deadline, cap) = {
        let st = s.state()?;
        (timeo(&st, libc::SO_SNDTIMEO), st.sndbuf_cap)
    };
    let mut sent = 0usize;
    loop {
        let r = s.block_conn(nonblock, deadline, |ctx, c| {
            let mut chunk = &data[sent..];
            if cap > 0 {
                // SO_SNDBUF: no more than `cap` bytes written and not yet acknowledged.
                let mut room = cap.saturating_sub(ctx.tx_outstanding(c)) as usize;
                if room == 0 {
                    ctx.poll(); // take the acknowledgements that arrived
                    room = cap.saturating_sub(ctx.tx_outstanding(c)) as usize;
                }
                if room == 0 {
                    // Full: wait, unless the connection can no longer send at all.
                    return ctx.send(c, &[]).err().filter(|e| *e != Error::WouldBlock).map(|err| Err(send_errno(ctx, c, err)));
                }
                chunk = &chunk[..chunk.len().min(room)];
            }
            match ctx.send(c, chunk) {
                Ok(n) => Some(Ok(n)),
                Err(Error::WouldBlock) => None,
                Err(err) => Some(Err(send_errno(ctx, c, err))),
            }
        });
        match r {
            Ok(n) => {
                sent += n;
                if nonblock || sent == data.len() {
                    return Ok(sent);
                }
            }
            Err(_) if sent > 0 => return Ok(sent),
            Err(err) => {
                if err == e(libc::ECONNRESET) {
                    lock(&s.st).reset_reported = true;
                }
                return Err(err);
            }
        }
    }
}

/// sendfile from a kernel file to a stack socket.
pub fn sendfile(out: c_int, inp: c_int, off: Option<&mut i64>, count: usize) -> SysResult<usize> {
    let mut buf = vec![0u8; count.min(256 * 1024)];
    let n = match &off {
        Some(o) => sys::pread(inp, &mut buf, **o)?,
        None => sys::read(inp, &mut buf)?,
    };
    if n == 0 {
        return Ok(0);
    }
    let sent = match send(out, &buf[..n], 0) {
        Ok(k) => k,
        Err(err) => {
            if off.is_none() {
                let _ = sys::lseek(inp, -(n as i64), libc::SEEK_CUR);
            }
            return Err(err);
        }
    };
    match off {
        Some(o) => *o += sent as i64,
        None if sent < n => {
            let _ = sys::lseek(inp, -((n - sent) as i64), libc::SEEK_CUR);
        }
        None => {}
    }
    Ok(sent)
}

pub fn shutdown(fd: c_int, how: c_int) -> SysResult<c_int> {
    let s = sock(fd)?;
    let mut st = s.state()?;
    if !(0..=2).contains(&how) {
        return Err(e(libc::EINVAL));
    }
    let home = s.proc();
    let mut g = home.lock();
    settle(&mut st, &mut g.ctx);
    match st.kind {
        Kind::Conn(c) => {
            if how == libc::SHUT_RD || how == libc::SHUT_RDWR {
                st.rd_shut = true;
            }
            if how == libc::SHUT_WR || how == libc::SHUT_RDWR {
                g.ctx.shutdown(c).map_err(errno_of)?;
            }
            g.ctx.kick();
            Ok(0)
        }
        Kind::Listening(_) => Ok(0),
        _ => Err(e(libc::ENOTCONN)),
    }
}

/// close() of a stack socket's descriptor. The connection is closed with the last one.
pub fn close(fd: c_int) -> SysResult<c_int> {
    let Some(s) = remove(fd) else { return sys::close(fd) };
    epoll_forget(fd);
    let r = sys::close(fd);
    let mut st = lock(&s.st);
    st.nfds = st.nfds.saturating_sub(1);
    if st.nfds > 0 {
        return r;
    }
    let ours = st.gen == FORK_GEN.load(Ordering::Relaxed);
    if let (Kind::Conn(c), Some(peer), Some(local)) = (st.kind, st.peer, st.local) {
        if !ours || st.shared {
            st.kind = Kind::Stale;
            if st.port != 0 {
                unbind(st.port);
            }
            drop(st);
            release_conn(&s, c, ours, peer, local.port());
            return r;
        }
    }
    if !ours {
        if st.port != 0 {
            unbind(st.port);
        }
        return r;
    }
    let linger0 = st
        .opts
        .get(libc::SOL_SOCKET, libc::SO_LINGER)
        .is_some_and(|v| v.len() >= 8 && v[..4] != [0; 4] && v[4..8] == [0; 4]);
    let home = s.proc();
    let mut g = home.lock();
    match st.kind {
        Kind::Listening(l) => {
            let _ = g.ctx.unlisten(l);
        }
        Kind::Conn(c) | Kind::Connecting(c) => {
            let _ = if linger0 { g.ctx.abort(c) } else { g.ctx.close(c) };
        }
        _ => {}
    }
    if st.port != 0 {
        unbind(st.port);
    }
    st.kind = Kind::Stale;
    g.ctx.kick();
    r
}

/// dup/dup2/dup3/F_DUPFD of a stack socket: `newfd` is the kernel's result.
pub fn dup_register(old: c_int, newfd: c_int) -> SysResult<c_int> {
    let s = sock(old)?;
    lock(&s.st).nfds += 1;
    if let Err(err) = insert(newfd, s.clone()) {
        lock(&s.st).nfds -= 1;
        let _ = sys::close(newfd);
        return Err(err);
    }
    Ok(newfd)
}

/// dup2/dup3 over a descriptor: if `new` is a stack socket, close it our way first.
pub fn dup_over(old: c_int, new: c_int, flags: c_int) -> SysResult<c_int> {
    if old == new {
        if flags != 0 {
            return Err(e(libc::EINVAL));
        }
        sys::fcntl(old, libc::F_GETFD, 0)?;
        return Ok(new);
    }
    if !is_stack(old) {
        sys::fcntl(old, libc::F_GETFD, 0)?;
    }
    if is_stack(new) {
        // Emulates the implicit close of dup2 (the close happens first here).
        let _ = close(new);
    }
    let r = sys::dup3(old, new, flags)?;
    if is_stack(old) {
        dup_register(old, r)
    } else {
        Ok(r)
    }
}

pub fn dup(old: c_int) -> SysResult<c_int> {
    let n = sys::dup(old)?;
    dup_register(old, n)
}

/// fcntl on a stack socket.
pub fn fcntl(fd: c_int, cmd: c_int, arg: usize) -> SysResult<c_int> {
    let s = sock(fd)?;
    match cmd {
        libc::F_GETFL => {
            let st = s.state()?;
            Ok(libc::O_RDWR | if st.nonblock { libc::O_NONBLOCK } else { 0 })
        }
        libc::F_SETFL => {
            let mut st = s.state()?;
            st.nonblock = arg as c_int & libc::O_NONBLOCK != 0;
            Ok(0)
        }
        libc::F_DUPFD | libc::F_DUPFD_CLOEXEC => {
            let n = sys::fcntl(fd, cmd, arg)?;
            dup_register(fd, n)
        }
        libc::F_GETFD | libc::F_SETFD => sys::fcntl(fd, cmd, arg),
        _ => Err(e(libc::EINVAL)),
    }
}

/// ioctl FIONREAD / FIONBIO on a stack socket (`val` is the int argument).
pub fn ioctl(fd: c_int, req: u64, val: &mut c_int) -> SysResult<c_int> {
    let s = sock(fd)?;
    match req {
        r if r == libc::FIONBIO => {
            s.state()?.nonblock = *val != 0;
            Ok(0)
        }
        r if r == libc::FIONREAD => {
            let mut st = s.state()?;
            let home = s.proc();
            let mut g = home.lock();
            settle(&mut st, &mut g.ctx);
            g.ctx.poll();
            match st.kind {
                Kind::Conn(c) => {
                    *val = g.ctx.readable(c).min(i32::MAX as usize) as c_int;
                    Ok(0)
                }
                Kind::Listening(_) => Err(e(libc::EINVAL)),
                _ => {
                    *val = 0;
                    Ok(0)
                }
            }
        }
        _ => Err(e(libc::ENOTTY)),
    }
}

pub fn sockname(fd: c_int, peer: bool) -> SysResult<SocketAddrV4> {
    let s = sock(fd)?;
    let mut st = s.state()?;
    let home = s.proc();
    let mut g = home.lock();
    settle(&mut st, &mut g.ctx);
    if peer {
        return match st.kind {
            Kind::Conn(_) => st.peer.ok_or(e(libc::ENOTCONN)),
            _ => Err(e(libc::ENOTCONN)),
        };
    }
    match st.kind {
        Kind::Conn(c) => Ok(g.ctx.local_addr(c).or(st.local).unwrap_or(SocketAddrV4::new(g.ctx.local_ip(), 0))),
        Kind::Connecting(_) => Ok(SocketAddrV4::new(g.ctx.local_ip(), 0)),
        _ => Ok(st.local.unwrap_or(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))),
    }
}

/// setsockopt on a stack socket: validated and recorded.
pub fn setsockopt(fd: c_int, level: c_int, name: c_int, v: &[u8]) -> SysResult<c_int> {
    let s = sock(fd)?;
    let mut st = s.state()?;
    let known = match level {
        libc::SOL_SOCKET => matches!(
            name,
            libc::SO_REUSEADDR
                | libc::SO_REUSEPORT
                | libc::SO_KEEPALIVE
                | libc::SO_LINGER
                | libc::SO_RCVBUF
                | libc::SO_SNDBUF
                | libc::SO_RCVLOWAT
                | libc::SO_SNDLOWAT
                | libc::SO_RCVTIMEO
                | libc::SO_SNDTIMEO
                | libc::SO_OOBINLINE
                | libc::SO_BROADCAST
                | libc::SO_PRIORITY
        ),
        libc::IPPROTO_TCP => matches!(
            name,
            libc::TCP_NODELAY
                | libc::TCP_KEEPIDLE
                | libc::TCP_KEEPINTVL
                | libc::TCP_KEEPCNT
                | libc::TCP_CORK
                | libc::TCP_QUICKACK
                | libc::TCP_DEFER_ACCEPT
                | libc::TCP_USER_TIMEOUT
                | libc::TCP_FASTOPEN
                | libc::TCP_NOTSENT_LOWAT
        ),
        libc::IPPROTO_IP => matches!(name, libc::IP_TOS | libc::IP_TTL),
        _ => false,
    };
    if !known {
        return Err(e(libc::ENOPROTOOPT));
    }
    let need = if name == libc::SO_LINGER && level == libc::SOL_SOCKET {
        8
    } else if level == libc::SOL_SOCKET && (name == libc::SO_RCVTIMEO || name == libc::SO_SNDTIMEO) {
        16
    } else {
        4
    };
    if v.len() < need {
        return Err(e(libc::EINVAL));
    }
    let mut val = v[..need].to_vec();
    if level == libc::SOL_SOCKET && (name == libc::SO_RCVBUF || name == libc::SO_SNDBUF) {
        // Linux bounds the value by net.core.rmem_max/wmem_max, doubles it (bookkeeping
        // overhead), applies a floor and reports the doubled one (net/core/sock.c).
        let rcv = name == libc::SO_RCVBUF;
        let max = net_core_max(rcv);
        // The value is taken as unsigned (min_t(u32, ...)): a negative one means the maximum.
        let x = u32::from_ne_bytes([v[0], v[1], v[2], v[3]]).min(max).saturating_mul(2).max(if rcv { 2304 } else { 4608 });
        let x = x.min(i32::MAX as u32) as i32;
        val = x.to_ne_bytes().to_vec();
        if !rcv {
            st.sndbuf_cap = (x as u32 / 2).max(1);
        }
    } else if is_bool_opt(level, name) {
        // Boolean options read back as 0/1.
        let x = i32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
        val = i32::from(x != 0).to_ne_bytes().to_vec();
    }
    if level == libc::IPPROTO_TCP && matches!(name, libc::TCP_KEEPIDLE | libc::TCP_KEEPINTVL | libc::TCP_KEEPCNT) {
        let x = i32::from_ne_bytes([v[0], v[1], v[2], v[3]]);
        if x < 1 {
            return Err(e(libc::EINVAL));
        }
    }
    st.opts.set(level, name, &val);
    Ok(0)
}

/// The receive buffer to ask tasd for: SO_RCVBUF as set (Linux's doubled value; the
/// window it offers is about half of it, the value the application asked for), or 0
/// (the receive ring) if it was not set.
fn rcvbuf_of(opts: &Opts) -> u32 {
    opts.int(libc::SOL_SOCKET, libc::SO_RCVBUF).map_or(0, |v| (v as u32) / 2)
}

/// net.core.rmem_max (`rcv`) or wmem_max of this network namespace, read once (212992,
/// Linux's default, if it cannot be read).
fn net_core_max(rcv: bool) -> u32 {
    static MAX: [AtomicU64; 2] = [AtomicU64::new(0), AtomicU64::new(0)];
    let slot = &MAX[usize::from(rcv)];
    let v = slot.load(Ordering::Relaxed);
    if v != 0 {
        return v as u32;
    }
    let path = if rcv { "/proc/sys/net/core/rmem_max" } else { "/proc/sys/net/core/wmem_max" };
    let v = std::fs::read_to_string(path).ok().and_then(|t| t.trim().parse::<u32>().ok()).filter(|&v| v > 0).unwrap_or(212_992);
    slot.store(v as u64, Ordering::Relaxed);
    v
}

fn is_bool_opt(level: c_int, name: c_int) -> bool {
    match level {
        libc::SOL_SOCKET => matches!(name, libc::SO_REUSEADDR | libc::SO_REUSEPORT | libc::SO_KEEPALIVE | libc::SO_OOBINLINE | libc::SO_BROADCAST),
        libc::IPPROTO_TCP => matches!(name, libc::TCP_NODELAY | libc::TCP_CORK | libc::TCP_QUICKACK),
        _ => false,
    }
}

fn tcp_state_number(st: &SockState, ctx: &Context) -> u8 {
    // Linux's TCP_* state numbers (include/net/tcp_states.h).
    match st.kind {
        Kind::Fresh | Kind::Stale => 7, // TCP_CLOSE
        Kind::Listening(_) => 10,
        Kind::Connecting(_) => 2,
        Kind::Conn(c) => match ctx.state(c) {
            ConnState::Established => 1,
            ConnState::PeerClosed => 8,  // CLOSE_WAIT
            ConnState::LocalClosed => 4, // FIN_WAIT1
            ConnState::Closing => 9,     // LAST_ACK
            _ => 7,
        },
    }
}

/// Size of this kernel's `struct tcp_info` (what its getsockopt returns at most): asked
/// once of a kernel TCP socket (280 bytes on Linux 6.18; 104 in glibc's header).
fn kernel_tcp_info_len() -> usize {
    static LEN: AtomicU64 = AtomicU64::new(0);
    let v = LEN.load(Ordering::Relaxed);
    if v != 0 {
        return v as usize;
    }
    let mut buf = [0u8; 512];
    let n = match sys::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) {
        Ok(k) => {
            let r = sys::getsockopt(k, libc::IPPROTO_TCP, libc::TCP_INFO, &mut buf);
            let _ = sys::close(k);
            r.unwrap_or(104)
        }
        Err(_) => 104,
    };
    LEN.store(n as u64, Ordering::Relaxed);
    n
}

/// How long getsockopt(TCP_INFO) waits for the service's answer before it reports what
/// the application side knows alone.
const INFO_WAIT: Duration = Duration::from_millis(500);

/// Linux's `struct tcp_info` (include/uapi/linux/tcp.h, 6.18 offsets) from what the
/// stack knows: the service's reply (the fast path's flow state read for the request,
/// congestion control, loss recovery, the SACK scoreboard; decisions §21) and the
/// application side's byte counts and arrival times. Fields the stack does not track stay
/// zero (docs/compatibility.md lists them and where each value comes from).
fn tcp_info(s: &Arc<Sock>, out: &mut [u8]) -> SysResult<usize> {
    let (state, conn, home, (rx_off, tx_off)) = {
        let mut st = s.state()?;
        let home = s.proc();
        let mut g = home.lock();
        settle(&mut st, &mut g.ctx);
        let c = match st.kind {
            Kind::Conn(c) => Some(c),
            _ => None,
        };
        let state = tcp_state_number(&st, &g.ctx);
        drop(g);
        (state, c, home, s.mv.offsets())
    };
    let mut ti = [0u8; 512];
    ti[0] = state;
    let put32 = |ti: &mut [u8; 512], off: usize, v: u32| ti[off..off + 4].copy_from_slice(&v.to_ne_bytes());
    let put64 = |ti: &mut [u8; 512], off: usize, v: u64| ti[off..off + 8].copy_from_slice(&v.to_ne_bytes());
    // Linux reports these for any socket.
    put32(&mut ti, 8, 1_000_000); // tcpi_rto: the initial RTO (RFC 6298)
    put32(&mut ti, 16, 536); // tcpi_snd_mss before a connection: TCP_MSS_DEFAULT
    put32(&mut ti, 76, 0x7fff_ffff); // tcpi_snd_ssthresh: TCP_INFINITE_SSTHRESH
    put32(&mut ti, 80, 10); // tcpi_snd_cwnd: the initial window
    put32(&mut ti, 88, 3); // tcpi_reordering
    put64(&mut ti, 112, u64::MAX); // tcpi_max_pacing_rate: unlimited
    put64(&mut ti, 104, u64::MAX); // tcpi_pacing_rate
    if let Some(c) = conn {
        let token = home.lock().ctx.info_start(c).ok();
        let info = match token {
            Some(t) => {
                let deadline = Instant::now() + INFO_WAIT;
                let r = home.block_inner(false, Some(deadline), false, |ctx| match ctx.info_result(t) {
                    Ok(Some(i)) => Some(Ok(i)),
                    Ok(None) => None,
                    Err(err) => Some(Err(errno_of(err))),
                });
                if r.is_err() {
                    home.lock().ctx.info_cancel(t);
                }
                r.ok()
            }
            None => None,
        };
        let g = home.lock();
        let layout = g.ctx.layout();
        let info = info.filter(|i| i.opts & libtas::tas_proto::shm::INFO_FOUND != 0).unwrap_or_default();
        let fresh = info.opts & libtas::tas_proto::shm::INFO_FRESH != 0;
        let mss = if info.mss > 0 { info.mss as u32 } else { 1460 };
        let mut opts = 0u8;
        if info.opts & libtas::tas_proto::shm::INFO_TIMESTAMPS != 0 {
            opts |= 1; // TCPI_OPT_TIMESTAMPS
        }
        if info.opts & libtas::tas_proto::shm::INFO_SACK != 0 {
            opts |= 2; // TCPI_OPT_SACK
        }
        if info.opts & libtas::tas_proto::shm::INFO_WSCALE != 0 {
            opts |= 4; // TCPI_OPT_WSCALE
            ti[6] = ((info.opts >> 8) & 15) as u8 | (((info.opts >> 12) & 15) as u8) << 4;
        }
        ti[1] = info.ca_state;
        ti[2] = info.rto_backoff; // retransmits: timeouts in a row
        ti[3] = info.probes;
        ti[4] = info.rto_backoff; // backoff
        ti[5] = opts;
        if info.rto_us > 0 {
            put32(&mut ti, 8, info.rto_us);
        }
        put32(&mut ti, 16, mss); // snd_mss
        put32(&mut ti, 20, mss); // rcv_mss
        // unacked: segments sent and not acknowledged (in MSS-sized segments; without
        // the fast path's state, everything written and not acknowledged).
        let unacked = if fresh { info.unacked_bytes } else { g.ctx.tx_outstanding(c) };
        put32(&mut ti, 24, unacked.div_ceil(mss));
        put32(&mut ti, 28, info.sacked);
        put32(&mut ti, 32, info.lost);
        put32(&mut ti, 36, info.retrans);
        if let Some(d) = g.ctx.since_rx(c) {
            put32(&mut ti, 52, d.as_millis().min(u32::MAX as u128) as u32); // last_data_recv
        }
        if fresh {
            put32(&mut ti, 56, info.last_ack_recv_ms);
        }
        put32(&mut ti, 60, mss + 40); // pmtu
        let rcv_space = if info.rcv_ssthresh > 0 { info.rcv_ssthresh } else { layout.rx_buf_size };
        put32(&mut ti, 64, rcv_space); // rcv_ssthresh
        put32(&mut ti, 68, info.srtt_us); // rtt
        put32(&mut ti, 72, info.rttvar_us); // rttvar
        if info.snd_ssthresh != u32::MAX && info.snd_ssthresh > 0 {
            put32(&mut ti, 76, (info.snd_ssthresh / mss).max(2)); // snd_ssthresh, segments
        }
        let cwnd = if info.cwnd == u32::MAX || info.cwnd == 0 { layout.tx_buf_size } else { info.cwnd };
        put32(&mut ti, 80, cwnd.div_ceil(mss).max(1)); // snd_cwnd, segments
        put32(&mut ti, 84, mss); // advmss
        put32(&mut ti, 96, rcv_space); // rcv_space
        put32(&mut ti, 100, info.retransmits); // total_retrans (retransmission events)
        if info.pacing_kbps > 0 {
            put64(&mut ti, 104, info.pacing_kbps as u64 * 125); // pacing_rate, bytes/s
        }
        let acked = g.ctx.tx_acked(c) + tx_off; // counted since the connection began, across moves
        put64(&mut ti, 120, acked + 1); // bytes_acked: Linux counts the SYN
        put64(&mut ti, 128, g.ctx.rx_total(c) + rx_off); // bytes_received
        if fresh {
            put32(&mut ti, 144, info.notsent_bytes);
        }
        put32(&mut ti, 148, info.min_rtt_us); // min_rtt
        put64(&mut ti, 160, info.delivery_kbps as u64 * 125); // delivery_rate, bytes/s
        if fresh {
            // Bytes sent at least once, modulo 2^32, made whole with the application's
            // own 64-bit count of acknowledged bytes (at most 4 GiB can be in flight).
            let first = acked + info.sent_bytes_lo.wrapping_sub(acked as u32) as u64;
            put64(&mut ti, 200, first + info.retrans_bytes_lo as u64); // bytes_sent, as Linux with retransmissions
            put64(&mut ti, 208, info.retrans_bytes_lo as u64); // bytes_retrans
            put32(&mut ti, 228, info.snd_wnd);
            put32(&mut ti, 232, info.rcv_wnd);
        } else {
            put32(&mut ti, 232, layout.rx_buf_size - g.ctx.readable(c).min(layout.rx_buf_size as usize) as u32); // rcv_wnd
        }
        ti[240..242].copy_from_slice(&info.total_rto.to_ne_bytes());
        ti[242..244].copy_from_slice(&info.total_rto_recoveries.to_ne_bytes());
        put32(&mut ti, 244, info.total_rto_time_ms);
    }
    let n = out.len().min(kernel_tcp_info_len()).min(ti.len());
    out[..n].copy_from_slice(&ti[..n]);
    Ok(n)
}

/// getsockopt on a stack socket: writes the value into `out`, returns its length.
pub fn getsockopt(fd: c_int, level: c_int, name: c_int, out: &mut [u8]) -> SysResult<usize> {
    let s = sock(fd)?;
    if (level, name) == (libc::IPPROTO_TCP, libc::TCP_INFO) {
        return tcp_info(&s, out);
    }
    let mut st = s.state()?;
    let home = s.proc();
    let mut g = home.lock();
    settle(&mut st, &mut g.ctx);
    let int = |v: i32, out: &mut [u8]| -> SysResult<usize> {
        let b = v.to_ne_bytes();
        let n = out.len().min(4);
        out[..n].copy_from_slice(&b[..n]);
        Ok(n)
    };
    match (level, name) {
        (libc::SOL_SOCKET, libc::SO_ERROR) => {
            let err = std::mem::take(&mut st.so_error);
            int(err, out)
        }
        (libc::SOL_SOCKET, libc::SO_TYPE) => int(libc::SOCK_STREAM, out),
        (libc::SOL_SOCKET, libc::SO_DOMAIN) => int(libc::AF_INET, out),
        (libc::SOL_SOCKET, libc::SO_PROTOCOL) => int(libc::IPPROTO_TCP, out),
        (libc::SOL_SOCKET, libc::SO_ACCEPTCONN) => int(i32::from(matches!(st.kind, Kind::Listening(_))), out),
        (libc::SOL_SOCKET, libc::SO_RCVBUF) => {
            let d = g.ctx.layout().rx_buf_size as i32;
            int(st.opts.int(level, name).unwrap_or(d), out)
        }
        (libc::SOL_SOCKET, libc::SO_SNDBUF) => {
            let d = g.ctx.layout().tx_buf_size as i32;
            int(st.opts.int(level, name).unwrap_or(d), out)
        }
        (libc::SOL_SOCKET, libc::SO_LINGER) | (libc::SOL_SOCKET, libc::SO_RCVTIMEO) | (libc::SOL_SOCKET, libc::SO_SNDTIMEO) => {
            let len = if name == libc::SO_LINGER { 8 } else { 16 };
            let v = st.opts.get(level, name).map(|v| v.to_vec()).unwrap_or(vec![0; len]);
            let n = out.len().min(v.len());
            out[..n].copy_from_slice(&v[..n]);
            Ok(n)
        }
        (libc::IPPROTO_TCP, libc::TCP_MAXSEG) => int(1460, out),
        (libc::IPPROTO_TCP, libc::TCP_KEEPIDLE) => int(st.opts.int(level, name).unwrap_or(7200), out),
        (libc::IPPROTO_TCP, libc::TCP_KEEPINTVL) => int(st.opts.int(level, name).unwrap_or(75), out),
        (libc::IPPROTO_TCP, libc::TCP_KEEPCNT) => int(st.opts.int(level, name).unwrap_or(9), out),
        (libc::SOL_SOCKET, libc::SO_RCVLOWAT) | (libc::SOL_SOCKET, libc::SO_SNDLOWAT) => int(st.opts.int(level, name).unwrap_or(1), out),
        (libc::SOL_SOCKET, _) | (libc::IPPROTO_TCP, _) | (libc::IPPROTO_IP, _) => match st.opts.int(level, name) {
            Some(v) => int(v, out),
            None => {
                if setsockopt_known(level, name) {
                    int(0, out)
                } else {
                    Err(e(libc::ENOPROTOOPT))
                }
            }
        },
        _ => Err(e(libc::ENOPROTOOPT)),
    }
}

fn setsockopt_known(level: c_int, name: c_int) -> bool {
    match level {
        libc::SOL_SOCKET => matches!(name, libc::SO_REUSEADDR | libc::SO_REUSEPORT | libc::SO_KEEPALIVE | libc::SO_OOBINLINE | libc::SO_BROADCAST | libc::SO_PRIORITY),
        libc::IPPROTO_TCP => matches!(name, libc::TCP_NODELAY | libc::TCP_CORK | libc::TCP_QUICKACK | libc::TCP_DEFER_ACCEPT | libc::TCP_USER_TIMEOUT | libc::TCP_FASTOPEN | libc::TCP_NOTSENT_LOWAT),
        libc::IPPROTO_IP => matches!(name, libc::IP_TOS | libc::IP_TTL),
        _ => false,
    }
}

// ---- readiness, poll, select --------------------------------------------------------------

/// POLL* bits of a stack socket now (the context is locked and polled by the caller).
fn readiness(s: &Sock, p: &Arc<Proc>, ctx: &mut Context) -> i16 {
    readiness_counts(s, p, ctx).map_or(0, |r| r.0)
}

/// Readiness, readable bytes and waiting connections. The caller holds the context lock,
/// and the lock order elsewhere is socket, then context: so the socket is only tried; if
/// another thread holds it, the socket counts as not ready this round (the caller looks
/// again within a millisecond). `ctx` is `p`'s; a connection that moved to another
/// context since the caller grouped its sockets is not ready here (the caller finds the
/// move epoch changed and groups them again).
fn readiness_counts(s: &Sock, p: &Arc<Proc>, ctx: &mut Context) -> Option<(i16, u64, u64)> {
    let mut st = match s.st.try_lock() {
        Ok(g) => g,
        Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
        Err(std::sync::TryLockError::WouldBlock) => {
            CONTENDED.store(true, Ordering::Relaxed);
            return None;
        }
    };
    if st.gen != FORK_GEN.load(Ordering::Relaxed) || st.kind == Kind::Stale {
        return Some((libc::POLLNVAL, 0, 0));
    }
    if !Arc::ptr_eq(&lock(&s.home), p) {
        CONTENDED.store(true, Ordering::Relaxed);
        return None;
    }
    settle(&mut st, ctx);
    // Monotonic counters: any arrival (bytes, acknowledged space, connections) changes
    // them; those of the contexts a connection lived on before count too (§29).
    let (rx_off, tx_off) = s.mv.offsets();
    let counts = match st.kind {
        Kind::Conn(c) => (ctx.rx_total(c) + rx_off, ctx.tx_total(c) + tx_off),
        Kind::Listening(l) => (ctx.arrivals(l), 0),
        _ => (0, 0),
    };
    let bits = readiness_state(&st, ctx);
    Some((bits, counts.0, counts.1))
}

/// A poll saw a socket locked by another thread: sleep briefly, not long.
static CONTENDED: AtomicBool = AtomicBool::new(false);

fn readiness_state(st: &SockState, ctx: &mut Context) -> i16 {
    match st.kind {
        Kind::Fresh => {
            if st.so_error != 0 {
                libc::POLLOUT | libc::POLLERR | libc::POLLHUP
            } else {
                libc::POLLOUT | libc::POLLHUP
            }
        }
        Kind::Listening(l) => {
            if ctx.pending_accepts(l) > 0 {
                libc::POLLIN | libc::POLLRDNORM
            } else {
                0
            }
        }
        Kind::Connecting(_) => 0,
        Kind::Conn(c) => {
            let mut r = 0;
            let rd = ctx.readable(c) > 0;
            let st_c = ctx.state(c);
            if rd || st.rd_shut {
                r |= libc::POLLIN | libc::POLLRDNORM;
            }
            match st_c {
                ConnState::Established => {}
                ConnState::PeerClosed | ConnState::Closing => r |= libc::POLLIN | libc::POLLRDNORM | libc::POLLRDHUP,
                ConnState::LocalClosed => {}
                ConnState::Closed => r |= libc::POLLIN | libc::POLLRDNORM | libc::POLLRDHUP | libc::POLLHUP,
                ConnState::Failed(_) => r |= libc::POLLIN | libc::POLLRDNORM | libc::POLLRDHUP | libc::POLLHUP | libc::POLLERR | libc::POLLOUT,
                _ => r |= libc::POLLHUP,
            }
            let room = if st.sndbuf_cap > 0 { st.sndbuf_cap.saturating_sub(ctx.tx_outstanding(c)) as usize } else { usize::MAX };
            if ctx.writable(c).min(room) > 0 || matches!(st_c, ConnState::LocalClosed | ConnState::Closing | ConnState::Closed) {
                r |= libc::POLLOUT | libc::POLLWRNORM;
            }
            if st.rd_shut && matches!(st_c, ConnState::LocalClosed | ConnState::Closing) {
                r |= libc::POLLHUP;
            }
            r
        }
        Kind::Stale => libc::POLLNVAL,
    }
}

type Socks = Vec<Option<Arc<Sock>>>;

/// The stack sockets of a descriptor set and the distinct contexts they live on (of this
/// fork generation; inherited stale sockets have none and read as POLLNVAL). None if no
/// descriptor is a stack socket.
struct Sets {
    socks: Socks,
    /// Per descriptor: the index of its socket's context in `procs`.
    which: Vec<Option<usize>>,
    procs: Vec<Arc<Proc>>,
    /// The move epoch the grouping belongs to (`moves::EPOCH`).
    epoch: u64,
}

impl Sets {
    /// Group the sockets by the context each lives on now.
    fn group(&mut self) {
        self.epoch = moves::EPOCH.load(Ordering::SeqCst);
        let gen = FORK_GEN.load(Ordering::SeqCst);
        self.procs.clear();
        let procs = &mut self.procs;
        self.which = self
            .socks
            .iter()
            .map(|s| {
                let home = s.as_ref().map(|s| s.proc()).filter(|p| p.gen == gen)?;
                Some(match procs.iter().position(|p| Arc::ptr_eq(p, &home)) {
                    Some(i) => i,
                    None => {
                        procs.push(home);
                        procs.len() - 1
                    }
                })
            })
            .collect();
    }

    /// A connection of the set moved to another context since it was grouped.
    fn moved(&self) -> bool {
        moves::EPOCH.load(Ordering::SeqCst) != self.epoch
    }
}

fn sets_of(fds: &[c_int]) -> Option<Sets> {
    let socks: Socks = fds.iter().map(|&fd| lookup(fd).map(|s| adopt(fd, s.clone()).unwrap_or(s))).collect();
    socks.iter().flatten().next()?;
    let mut sets = Sets { socks, which: Vec::new(), procs: Vec::new(), epoch: 0 };
    sets.group();
    Some(sets)
}

/// Stack sockets' revents of a poll set: each context is locked (and polled) once, in turn.
fn scan_poll(sets: &Sets, fds: &mut [libc::pollfd]) -> c_int {
    let mut n = 0;
    for (i, s) in sets.socks.iter().enumerate() {
        if s.is_some() && sets.which[i].is_none() {
            fds[i].revents = libc::POLLNVAL;
            n += 1;
        }
    }
    for (pi, p) in sets.procs.iter().enumerate() {
        let mut g = p.lock();
        g.ctx.poll();
        for (i, s) in sets.socks.iter().enumerate() {
            if sets.which[i] != Some(pi) {
                continue;
            }
            let Some(s) = s else { continue };
            let r = readiness(s, p, &mut g.ctx);
            let ev = r & (fds[i].events | libc::POLLERR | libc::POLLHUP | libc::POLLNVAL);
            fds[i].revents = ev;
            if ev != 0 {
                n += 1;
            }
        }
    }
    n
}

fn ms_left(deadline: Option<Instant>) -> c_int {
    match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            left.as_millis().min(i32::MAX as u128) as c_int + i32::from(left.as_micros() % 1000 != 0)
        }
    }
}

/// poll over a set with at least one stack socket. `timeout_ms` < 0: no limit.
/// Returns None if no descriptor is a stack socket (the caller uses libc).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: c_int) -> Option<SysResult<c_int>> {
    let nums: Vec<c_int> = fds.iter().map(|p| p.fd).collect();
    let mut sets = sets_of(&nums)?;
    let stack: Vec<bool> = sets.socks.iter().map(|s| s.is_some()).collect();
    let deadline = (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
    let start = Instant::now();
    let spin = spin_time();
    let mut kernel: Vec<libc::pollfd> =
        fds.iter().zip(&stack).map(|(p, &s)| if s { libc::pollfd { fd: -1, events: 0, revents: 0 } } else { *p }).collect();
    let has_kernel = stack.iter().any(|s| !s);
    loop {
        if sets.moved() {
            sets.group();
        }
        let mut n = scan_poll(&sets, fds);
        let waited_long = start.elapsed() >= spin;
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if n > 0 || expired || waited_long || !has_kernel {
            if has_kernel && (n > 0 || expired || !waited_long) {
                match sys::poll(&mut kernel, 0) {
                    Ok(_) => {}
                    Err(err) => return Some(Err(err)),
                }
                for (i, k) in kernel.iter().enumerate() {
                    if !stack[i] {
                        fds[i].revents = k.revents;
                        if k.revents != 0 {
                            n += 1;
                        }
                    }
                }
            }
            if n > 0 || expired {
                return Some(Ok(n));
            }
        }
        if !waited_long {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            continue;
        }
        match sleep_on(&sets.procs, &mut kernel, ms_left(deadline), &|| sets.moved()) {
            Slept::Interrupted => return Some(Err(e(libc::EINTR))),
            Slept::Kernel => {
                for (i, k) in kernel.iter().enumerate() {
                    if !stack[i] {
                        fds[i].revents = k.revents;
                    }
                }
                scan_poll(&sets, fds);
                let n = fds.iter().filter(|p| p.revents != 0).count() as c_int;
                return Some(Ok(n));
            }
            Slept::Again => {}
        }
    }
}

// ---- epoll ----------------------------------------------------------------------------------

/// The `data` the context's eventfd is registered with in an epoll set.
const EFD_COOKIE: u64 = 0x007a_5000_07a5_0000;

#[derive(Debug, Clone, Copy)]
struct EpItem {
    events: u32,
    data: u64,
    disabled: bool,
    /// Edge-triggered: what was last reported (readiness, bytes ever received or
    /// connections ever queued, transmit credit ever granted).
    last: (i16, u64, u64),
}

#[derive(Debug, Default)]
struct EpShadow {
    items: HashMap<c_int, EpItem>,
    /// Contexts whose eventfd is in the kernel's epoll set (weak: a context goes away
    /// with its thread and last socket; the kernel drops its eventfd from the set then).
    ctxs: Vec<std::sync::Weak<Proc>>,
    /// The move epoch at which every item's context was last made sure to be in `ctxs`.
    epoch: u64,
}

impl EpShadow {
    /// Put context `p`'s eventfd into the kernel's epoll set `epfd` (once; EEXIST: a live
    /// context's eventfd with this number is in already).
    fn join(&mut self, epfd: c_int, p: &Arc<Proc>) -> SysResult<()> {
        if self.ctxs.iter().any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(p))) {
            return Ok(());
        }
        let mut cev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: EFD_COOKIE };
        match sys::epoll_ctl(epfd, libc::EPOLL_CTL_ADD, p.efd, Some(&mut cev)) {
            Ok(_) | Err(Errno(libc::EEXIST)) => {}
            Err(err) => return Err(err),
        }
        self.ctxs.retain(|w| w.strong_count() > 0);
        self.ctxs.push(Arc::downgrade(p));
        Ok(())
    }

    /// After connections moved between contexts (decisions §29): the contexts the set's
    /// sockets live on now join the kernel set, so a sleeper is woken by their events.
    fn rehome(&mut self, epfd: c_int) {
        let epoch = moves::EPOCH.load(Ordering::SeqCst);
        if self.epoch == epoch {
            return;
        }
        self.epoch = epoch;
        let gen = FORK_GEN.load(Ordering::SeqCst);
        let homes: Vec<Arc<Proc>> = self.items.keys().filter_map(|&fd| lookup(fd)).map(|s| s.proc()).filter(|p| p.gen == gen).collect();
        for p in &homes {
            let _ = self.join(epfd, p);
        }
        // A context none of the set's sockets lives on any more leaves the set, so its
        // traffic (a listener thread's new connections) does not wake this set's waiters.
        self.ctxs.retain(|w| match w.upgrade() {
            None => false,
            Some(p) if p.gen != gen || homes.iter().any(|h| Arc::ptr_eq(h, &p)) => true,
            Some(p) => {
                let _ = sys::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, p.efd, None);
                false
            }
        });
    }

    /// The live contexts of this fork generation whose eventfds are in the set.
    fn live_ctxs(&self) -> Vec<Arc<Proc>> {
        let gen = FORK_GEN.load(Ordering::SeqCst);
        self.ctxs.iter().filter_map(|w| w.upgrade()).filter(|p| p.gen == gen).collect()
    }
}

type Shadow = Arc<Mutex<EpShadow>>;

/// The shadow interest lists, per epoll descriptor. The map's lock is taken briefly to
/// find a set (read) or to add/remove one; each set has its own lock.
static EPOLLS: RwLock<Option<HashMap<c_int, Shadow>>> = RwLock::new(None);

fn shadow(epfd: c_int) -> Option<Shadow> {
    EPOLLS.read().unwrap_or_else(|p| p.into_inner()).as_ref().and_then(|m| m.get(&epfd).cloned())
}

fn epoll_forget(fd: c_int) {
    let all: Vec<Shadow> = match EPOLLS.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        Some(m) => m.values().cloned().collect(),
        None => return,
    };
    for sh in all {
        lock(&sh).items.remove(&fd);
    }
}

/// close() of an epoll descriptor.
pub fn epoll_closed(epfd: c_int) {
    if let Some(m) = EPOLLS.write().unwrap_or_else(|p| p.into_inner()).as_mut() {
        m.remove(&epfd);
    }
}

/// True if `epfd` has stack sockets registered (then epoll_wait goes through us).
pub fn epoll_has_shadow(epfd: c_int) -> bool {
    shadow(epfd).is_some()
}

/// epoll_ctl for a stack socket `fd`.
pub fn epoll_ctl(epfd: c_int, op: c_int, fd: c_int, ev: Option<libc::epoll_event>) -> SysResult<c_int> {
    let s = sock(fd)?;
    drop(s.state()?);
    // epfd must be an epoll descriptor: checked by a harmless DEL of a descriptor that is
    // never registered (the placeholder), which fails with ENOENT on an epoll set.
    match sys::epoll_ctl(epfd, libc::EPOLL_CTL_DEL, fd, None) {
        Err(Errno(libc::ENOENT)) => {}
        Err(err) => return Err(err),
        Ok(_) => {}
    }
    EPOLL_ANY.store(true, Ordering::Relaxed);
    let sh = match shadow(epfd) {
        Some(sh) => sh,
        None => EPOLLS
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .get_or_insert_with(HashMap::new)
            .entry(epfd)
            .or_default()
            .clone(),
    };
    let mut sh = lock(&sh);
    match op {
        libc::EPOLL_CTL_ADD => {
            let ev = ev.ok_or(e(libc::EFAULT))?;
            if sh.items.contains_key(&fd) {
                return Err(e(libc::EEXIST));
            }
            if ev.events & libc::EPOLLEXCLUSIVE as u32 != 0 && ev.events & libc::EPOLLONESHOT as u32 != 0 {
                return Err(e(libc::EINVAL)); // as Linux
            }
            // The socket's context's eventfd joins the kernel set once (a move later is
            // caught up with by `rehome`: the move epoch changes first).
            sh.join(epfd, &s.proc())?;
            sh.items.insert(fd, EpItem { events: ev.events, data: ev.u64, disabled: false, last: (0, 0, 0) });
            Ok(0)
        }
        libc::EPOLL_CTL_MOD => {
            let ev = ev.ok_or(e(libc::EFAULT))?;
            let it = sh.items.get_mut(&fd).ok_or(e(libc::ENOENT))?;
            if it.events & libc::EPOLLEXCLUSIVE as u32 != 0 {
                return Err(e(libc::EINVAL)); // Linux: EPOLL_CTL_MOD of an exclusive item
            }
            *it = EpItem { events: ev.events, data: ev.u64, disabled: false, last: (0, 0, 0) };
            Ok(0)
        }
        libc::EPOLL_CTL_DEL => {
            sh.items.remove(&fd).ok_or(e(libc::ENOENT))?;
            Ok(0)
        }
        _ => Err(e(libc::EINVAL)),
    }
}

fn to_epoll(r: i16) -> u32 {
    let mut ev = 0u32;
    if r & libc::POLLIN != 0 {
        ev |= libc::EPOLLIN as u32 | libc::EPOLLRDNORM as u32;
    }
    if r & libc::POLLOUT != 0 {
        ev |= libc::EPOLLOUT as u32 | libc::EPOLLWRNORM as u32;
    }
    if r & libc::POLLERR != 0 {
        ev |= libc::EPOLLERR as u32;
    }
    if r & libc::POLLHUP != 0 {
        ev |= libc::EPOLLHUP as u32;
    }
    if r & libc::POLLRDHUP != 0 {
        ev |= libc::EPOLLRDHUP as u32;
    }
    ev
}

/// Collect ready stack sockets of the set into `out` (up to its length). `woken`: this
/// scan follows a spin or sleep of the caller (not its entry into epoll_wait); then an
/// `EPOLLEXCLUSIVE` listener is reported only to the one caller that claims its new
/// connections (Linux wakes one exclusive waiter per arrival; a caller that enters
/// epoll_wait sees the listener's level, as on Linux).
fn epoll_scan(epfd: c_int, sh: &Mutex<EpShadow>, out: &mut [libc::epoll_event], woken: bool) -> usize {
    let items: Vec<(c_int, EpItem)> = {
        let mut g = lock(sh);
        g.rehome(epfd);
        g.items.iter().filter(|(_, v)| !v.disabled).map(|(k, v)| (*k, *v)).collect()
    };
    let socks: Vec<(c_int, EpItem, Arc<Sock>, Arc<Proc>)> = items
        .into_iter()
        .filter_map(|(fd, it)| {
            let s = lookup(fd)?;
            let home = s.proc();
            Some((fd, it, s, home))
        })
        .collect();
    // The contexts the sockets live on (of this fork generation: a parent's sockets in a
    // forked child are not scanned).
    let gen = FORK_GEN.load(Ordering::SeqCst);
    let mut ctxs: Vec<Arc<Proc>> = Vec::new();
    for (.., home) in &socks {
        if home.gen == gen && !ctxs.iter().any(|p| Arc::ptr_eq(p, home)) {
            ctxs.push(home.clone());
        }
    }
    let mut n = 0;
    let mut updates = Vec::new();
    // Each context is locked once, in turn, for the sockets that live on it.
    for p in &ctxs {
        if n >= out.len() {
            break;
        }
        let mut g = p.lock();
        g.ctx.poll();
        for (fd, it, s, home) in &socks {
            if n >= out.len() {
                break;
            }
            if !Arc::ptr_eq(home, p) {
                continue;
            }
            // Not known this round (another thread holds the socket, or it moved): no
            // report and no change of what was last reported (no false edge).
            let Some((r, rd, acc)) = readiness_counts(s, p, &mut g.ctx) else { continue };
            let wanted = it.events | libc::EPOLLERR as u32 | libc::EPOLLHUP as u32;
            let ev = to_epoll(r) & wanted;
            let sig = (ev as i16, rd, acc);
            if ev == 0 {
                if it.last != (0, 0, 0) {
                    updates.push((*fd, (0, 0, 0), false));
                }
                continue;
            }
            if it.events & libc::EPOLLET as u32 != 0 {
                // Edge-triggered: report when something happened since the last report
                // (other readiness, new bytes, new connections, acknowledged space), as
                // Linux reports on every arrival.
                if sig == it.last {
                    continue;
                }
            }
            if woken && it.events & libc::EPOLLEXCLUSIVE as u32 != 0 && !s.claim_arrivals(rd) {
                continue;
            }
            out[n] = libc::epoll_event { events: ev, u64: it.data };
            n += 1;
            updates.push((*fd, sig, it.events & libc::EPOLLONESHOT as u32 != 0));
        }
    }
    if !updates.is_empty() {
        let mut g = lock(sh);
        for (fd, sig, oneshot) in updates {
            if let Some(it) = g.items.get_mut(&fd) {
                it.last = sig;
                if oneshot {
                    it.disabled = true;
                }
            }
        }
    }
    n
}

/// Remove the contexts' eventfds' events from a kernel result, compacting it.
fn strip_cookie(evs: &mut [libc::epoll_event], n: usize) -> usize {
    let mut k = 0;
    for i in 0..n {
        let ev = evs[i];
        if ev.u64 != EFD_COOKIE {
            evs[k] = ev;
            k += 1;
        }
    }
    k
}

/// epoll_wait on a set with stack sockets. None: no stack socket in it (use libc).
pub fn epoll_wait(epfd: c_int, out: &mut [libc::epoll_event], timeout_ms: c_int) -> Option<SysResult<c_int>> {
    let sh = shadow(epfd)?;
    let live = {
        let mut g = lock(&sh);
        g.rehome(epfd);
        g.live_ctxs()
    };
    if live.is_empty() {
        // Only a parent's sockets (in a forked child), or none left: the kernel's set.
        return None;
    }
    if out.is_empty() {
        return Some(Err(e(libc::EINVAL)));
    }
    let deadline = (timeout_ms >= 0).then(|| Instant::now() + Duration::from_millis(timeout_ms as u64));
    let start = Instant::now();
    let spin = spin_time();
    let mut first = true;
    loop {
        let epoch = moves::EPOCH.load(Ordering::SeqCst);
        let n = epoll_scan(epfd, &sh, out, !first);
        let expired = deadline.is_some_and(|d| Instant::now() >= d);
        if n > 0 || expired || first {
            first = false;
            let k = match sys::epoll_wait(epfd, &mut out[n..], 0) {
                Ok(k) => strip_cookie(&mut out[n..], k as usize),
                Err(err) => return Some(Err(err)),
            };
            if n + k > 0 || expired {
                return Some(Ok((n + k) as c_int));
            }
        }
        if start.elapsed() < spin {
            for _ in 0..64 {
                std::hint::spin_loop();
            }
            continue;
        }
        // Sleep in the kernel's epoll_wait: the set holds the contexts' eventfds.
        let ctxs = lock(&sh).live_ctxs();
        let mut broken = false;
        if !announce_all(&ctxs, &mut broken) {
            if broken {
                return Some(Err(e(libc::EINTR)));
            }
            continue;
        }
        if moves::EPOCH.load(Ordering::SeqCst) != epoch {
            // A connection moved since the scan: its new context may not be in the set yet.
            end_all(&ctxs);
            continue;
        }
        let left = ms_left(deadline);
        let cap = if CONTENDED.swap(false, Ordering::Relaxed) { 1 } else { MAX_SLEEP_MS };
        let ms = if left < 0 { cap } else { left.min(cap) };
        let r = sys::epoll_wait(epfd, out, ms);
        end_all(&ctxs);
        match r {
            Err(err) => return Some(Err(err)),
            Ok(k) => {
                let k = strip_cookie(out, k as usize);
                if k > 0 {
                    let m = epoll_scan(epfd, &sh, &mut out[k..], true);
                    return Some(Ok((k + m) as c_int));
                }
            }
        }
    }
}

/// True once any stack socket was ever registered with an epoll set.
static EPOLL_ANY: AtomicBool = AtomicBool::new(false);
/// True once any stack socket was created in this process.
static ANY_STACK: AtomicBool = AtomicBool::new(false);

/// Cheap test before looking at epoll shadows.
pub fn epoll_any() -> bool {
    EPOLL_ANY.load(Ordering::Relaxed)
}

/// Cheap test before scanning select's sets.
pub fn any_stack_fd() -> bool {
    ANY_STACK.load(Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sockaddr_round_trip_and_malformed_input() {
        let a = SocketAddrV4::new(Ipv4Addr::new(10, 77, 0, 2), 9000);
        assert_eq!(parse_v4(&addr_bytes(a)), Ok(a));
        assert_eq!(parse_v4(&addr_bytes(a)[..8]), Err(Errno(libc::EINVAL)));
        let mut v6 = addr_bytes(a);
        v6[..2].copy_from_slice(&(libc::AF_INET6 as u16).to_ne_bytes());
        assert_eq!(parse_v4(&v6), Err(Errno(libc::EAFNOSUPPORT)));
        let sa = encode_v4(a);
        assert_eq!(u16::from_be(sa.sin_port), 9000);
        assert_eq!(u32::from_be(sa.sin_addr.s_addr), u32::from(*a.ip()));
    }

    #[test]
    fn options_are_recorded_and_replaced() {
        let mut o = Opts::default();
        o.set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, &1i32.to_ne_bytes());
        o.set(libc::SOL_SOCKET, libc::SO_KEEPALIVE, &0i32.to_ne_bytes());
        assert_eq!(o.int(libc::SOL_SOCKET, libc::SO_KEEPALIVE), Some(0));
        assert_eq!(o.int(libc::IPPROTO_TCP, libc::TCP_NODELAY), None);
        assert!(is_bool_opt(libc::IPPROTO_TCP, libc::TCP_NODELAY));
        assert!(!is_bool_opt(libc::IPPROTO_TCP, libc::TCP_KEEPIDLE));
    }

    #[test]
    fn fd_bitmap_tracks_only_registered_descriptors() {
        assert!(!is_stack(-1));
        assert!(!is_stack(MAX_FD as c_int));
        set_bit(4000, true);
        assert!(is_stack(4000) && !is_stack(4001));
        set_bit(4000, false);
        assert!(!is_stack(4000));
    }

    #[test]
    fn errno_mapping_follows_linux() {
        assert_eq!(errno_of(Error::Refused), Errno(libc::ECONNREFUSED));
        assert_eq!(errno_of(Error::Reset), Errno(libc::ECONNRESET));
        assert_eq!(errno_of(Error::WouldBlock), Errno(libc::EAGAIN));
        assert_eq!(errno_of(Error::Shutdown), Errno(libc::EPIPE));
        assert_eq!(errno_of(Error::AddrInUse), Errno(libc::EADDRINUSE));
    }
}
