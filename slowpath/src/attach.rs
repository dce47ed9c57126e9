//! The service's application socket: applications attach here (see
//! `tas_proto::attach` and `docs/abi.md`).
//!
//! [`AttachServer`] binds a `SOCK_SEQPACKET` Unix socket and runs an accept thread; each
//! application connection gets a small thread of its own that
//!
//! 1. reads `Hello` and the peer's credentials (`SO_PEERCRED`),
//! 2. checks the ABI version (a mismatch is answered with an `Error` naming both),
//! 3. creates the application's [`AppRegion`] and wake-up eventfd,
//! 4. hands an [`AttachEvent::Attached`] to the slow path and waits for its go-ahead,
//! 5. replies `HelloOk` with the fds `[region, app eventfd, doorbell of core 0, ...]`,
//! 6. then blocks on the socket, the application's lifeline: when it closes, the slow
//!    path gets [`AttachEvent::Detached`] and resets the application's connections.
//!
//! Nothing here is on the data path, so blocking threads are the simple, right tool.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};
use prost::Message;
use tas_proto::attach::{response, Hello, HelloOk, Response, MAX_MESSAGE};
use tas_proto::shm::{ErrorCode, Layout, ABI_VERSION};

use crate::region::AppRegion;

/// How the application socket is set up and what attached applications get.
#[derive(Debug, Clone)]
pub struct AttachConfig {
    /// Where to bind (e.g. `/run/tas/tasd.sock`); the parent directory is created.
    pub socket_path: PathBuf,
    /// Group allowed to attach (the socket is mode 0660); `None` keeps the service's.
    pub socket_group: Option<u32>,
    /// Geometry of every application region.
    pub layout: Layout,
    /// The service's IPv4 address, told to applications.
    pub local_ip: Ipv4Addr,
    /// How long an attaching application may take to send `Hello`.
    pub hello_timeout: Duration,
    /// How long the attach thread waits for the slow path's go-ahead.
    pub go_ahead_timeout: Duration,
}

impl AttachConfig {
    /// A configuration with the usual timeouts (5 s for `Hello`, 10 s for the go-ahead).
    pub fn new(socket_path: impl Into<PathBuf>, layout: Layout, local_ip: Ipv4Addr) -> Self {
        AttachConfig {
            socket_path: socket_path.into(),
            socket_group: None,
            layout,
            local_ip,
            hello_timeout: Duration::from_secs(5),
            go_ahead_timeout: Duration::from_secs(10),
        }
    }
}

/// The slow path's answer to an attach: `Ok` to let the application in, or the error
/// code and message to refuse it with.
pub type GoAhead = Result<(), (ErrorCode, String)>;

/// An application that wants in.
#[derive(Debug)]
pub struct AttachedApp {
    /// Id of this application context (unique for the life of the service).
    pub app_id: u32,
    /// The name it gave.
    pub name: String,
    /// Its pid, uid and gid, from `SO_PEERCRED`.
    pub pid: i32,
    /// See `pid`.
    pub uid: u32,
    /// See `pid`.
    pub gid: u32,
    /// Its shared region (the attach thread keeps a reference until the reply is sent).
    pub region: Arc<AppRegion>,
    /// The eventfd the application sleeps on: write 1 to it after a `publish` that
    /// returned true on one of its queues.
    pub app_eventfd: OwnedFd,
    /// Send exactly one answer here. Dropping it refuses the application.
    pub go_ahead: Sender<GoAhead>,
}

/// What the attach server tells the slow path.
#[derive(Debug)]
pub enum AttachEvent {
    /// An application asks to attach: answer on its `go_ahead`.
    Attached(AttachedApp),
    /// An application (that was let in) closed its socket or died: reset its
    /// connections and drop its region.
    Detached {
        /// The application's id.
        app_id: u32,
    },
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum AttachError {
    /// A live service already listens on the path.
    #[error("address in use: another tasd is already listening on {0}; stop it, or give this one another app socket path")]
    InUse(PathBuf),
    /// Something else exists at the path.
    #[error("{0} exists and is not a socket; remove it or choose another app socket path")]
    NotASocket(PathBuf),
    /// The configuration does not fit the doorbells given.
    #[error("the region layout has {layout} fast-path queue pairs but {doorbells} doorbell eventfds were given")]
    Doorbells {
        /// Queue pairs in the layout.
        layout: u32,
        /// Doorbells given.
        doorbells: usize,
    },
    /// The layout is invalid.
    #[error("invalid app region layout {0:?}")]
    Layout(tas_proto::shm::LayoutError),
    /// A system call failed.
    #[error("cannot set up the app socket {path}: {what}: {source}")]
    Io {
        /// The socket path.
        path: PathBuf,
        /// The step that failed.
        what: &'static str,
        /// The error.
        source: io::Error,
    },
}

/// The running application socket.
#[derive(Debug)]
pub struct AttachServer {
    path: PathBuf,
    stop: Arc<OwnedFd>,
    accept_thread: Option<JoinHandle<()>>,
    lifelines: Lifelines,
}

/// The sockets of the applications that are in, by application id (duplicates of the
/// descriptors their threads block on).
type Lifelines = Arc<std::sync::Mutex<std::collections::HashMap<u32, OwnedFd>>>;

/// Detaches applications on the operator's request (control API `DetachApp`).
#[derive(Debug, Clone)]
pub struct AppKicker(Lifelines);

impl AppKicker {
    /// Shut down application `app_id`'s socket, its lifeline: the application sees the
    /// service go away, and the slow path gets [`AttachEvent::Detached`] exactly as if the
    /// application had exited. False if no such application is attached.
    pub fn detach(&self, app_id: u32) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&app_id) {
            Some(fd) => sys::shutdown(fd.as_fd()).is_ok(),
            None => false,
        }
    }
}

struct Shared {
    config: AttachConfig,
    doorbells: Vec<Arc<OwnedFd>>,
    events: Sender<AttachEvent>,
    stop: Arc<OwnedFd>,
    lifelines: Lifelines,
}

/// Application ids are unique in the process (not only per server), so that the region
/// names `/tas-<pid>-<app id>` of two servers in one process (tests) never collide.
static NEXT_APP_ID: AtomicU32 = AtomicU32::new(1);

impl AttachServer {
    /// Bind the socket and start accepting. `doorbells[i]` is fast-path core `i`'s doorbell
    /// eventfd, passed to every application; `events` receives attach and detach events.
    pub fn start(
        config: AttachConfig,
        doorbells: Vec<Arc<OwnedFd>>,
        events: Sender<AttachEvent>,
    ) -> Result<AttachServer, AttachError> {
        config.layout.check().map_err(AttachError::Layout)?;
        if config.layout.num_fp_queues as usize != doorbells.len() {
            return Err(AttachError::Doorbells { layout: config.layout.num_fp_queues, doorbells: doorbells.len() });
        }
        let path = config.socket_path.clone();
        let io_err = |what: &'static str| {
            let path = path.clone();
            move |source| AttachError::Io { path, what, source }
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err("creating its directory"))?;
        }
        remove_stale(&path)?;
        let listener = sys::seqpacket_socket().map_err(io_err("socket"))?;
        sys::bind(listener.as_fd(), &path).map_err(io_err("bind"))?;
        sys::listen(listener.as_fd()).map_err(io_err("listen"))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o660)).map_err(io_err("chmod 0660"))?;
        if let Some(gid) = config.socket_group {
            std::os::unix::fs::chown(&path, None, Some(gid)).map_err(io_err("chown to the socket group"))?;
        }
        let stop = Arc::new(sys::eventfd().map_err(io_err("eventfd"))?);
        let lifelines = Lifelines::default();
        let shared = Arc::new(Shared {
            config,
            doorbells,
            events,
            stop: stop.clone(),
            lifelines: lifelines.clone(),
        });
        let accept_thread = std::thread::Builder::new()
            .name("tas-attach".into())
            .spawn(move || accept_loop(listener, shared))
            .map_err(io_err("spawning the accept thread"))?;
        Ok(AttachServer { path, stop, accept_thread: Some(accept_thread), lifelines })
    }

    /// A handle that can detach applications.
    pub fn kicker(&self) -> AppKicker {
        AppKicker(self.lifelines.clone())
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Stop accepting, close every application socket (they see the service go away),
    /// and remove the socket file.
    pub fn shutdown(mut self) {
        self.stop_now();
    }

    fn stop_now(&mut self) {
        if let Some(t) = self.accept_thread.take() {
            sys::eventfd_signal(self.stop.as_fd());
            let _ = t.join();
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Drop for AttachServer {
    fn drop(&mut self) {
        self.stop_now();
    }
}

/// Remove a socket file nobody listens on; refuse if a service answers there.
fn remove_stale(path: &Path) -> Result<(), AttachError> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => return Err(AttachError::Io { path: path.into(), what: "checking the old socket", source }),
    };
    if !meta.file_type().is_socket() {
        return Err(AttachError::NotASocket(path.into()));
    }
    match sys::seqpacket_connect(path) {
        Ok(_probe) => Err(AttachError::InUse(path.into())),
        Err(e) if e.raw_os_error() == Some(libc::ECONNREFUSED) => std::fs::remove_file(path)
            .map_err(|source| AttachError::Io { path: path.into(), what: "removing the stale socket", source }),
        Err(source) => Err(AttachError::Io { path: path.into(), what: "probing the old socket", source }),
    }
}

fn accept_loop(listener: OwnedFd, shared: Arc<Shared>) {
    let mut apps: Vec<JoinHandle<()>> = Vec::new();
    loop {
        match sys::wait_readable(listener.as_fd(), shared.stop.as_fd(), None) {
            Ok(Wake::Stop) => break,
            Ok(Wake::Ready) => {}
            Ok(Wake::Timeout) => continue,
            Err(e) => {
                tracing::error!("app socket poll failed: {e}; no more applications can attach");
                break;
            }
        }
        let conn = match sys::accept(listener.as_fd()) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!("accepting an application failed: {e}");
                // EMFILE and friends: back off instead of spinning.
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let shared = shared.clone();
        match std::thread::Builder::new().name("tas-app".into()).spawn(move || serve_app(conn, &shared)) {
            Ok(t) => apps.push(t),
            Err(e) => tracing::warn!("no thread for an attaching application: {e}"),
        }
        apps.retain(|t| !t.is_finished());
    }
    for t in apps {
        let _ = t.join();
    }
}

fn reply_error(conn: BorrowedFd<'_>, code: ErrorCode, message: String) {
    let r = Response { result: Some(response::Result::Error(tas_proto::attach::Error { code: code as u32, message })) };
    let _ = sys::send_with_fds(conn, &r.encode_to_vec(), &[]);
}

fn serve_app(conn: OwnedFd, shared: &Shared) {
    let cfg = &shared.config;
    let cred = match sys::peer_cred(conn.as_fd()) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!("SO_PEERCRED failed on an app socket: {e}");
            return;
        }
    };
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = match sys::wait_readable(conn.as_fd(), shared.stop.as_fd(), Some(cfg.hello_timeout)) {
        Ok(Wake::Ready) => match sys::recv(conn.as_fd(), &mut buf) {
            Ok(n) if n > 0 => n,
            _ => return,
        },
        Ok(Wake::Timeout) => {
            reply_error(conn.as_fd(), ErrorCode::Invalid, "no Hello within the timeout".into());
            return;
        }
        _ => return,
    };
    let hello = match Hello::decode(&buf[..n]) {
        Ok(h) => h,
        Err(e) => {
            reply_error(conn.as_fd(), ErrorCode::Invalid, format!("malformed Hello: {e}"));
            return;
        }
    };
    if hello.abi_version != ABI_VERSION {
        reply_error(
            conn.as_fd(),
            ErrorCode::Version,
            format!(
                "ABI version mismatch: the application's libtas speaks ABI {}, this tasd speaks ABI {}; \
                 use a libtas from the same release as tasd",
                hello.abi_version, ABI_VERSION
            ),
        );
        return;
    }
    let app_id = NEXT_APP_ID.fetch_add(1, Ordering::Relaxed);
    let name: String = hello.name.chars().filter(|c| !c.is_control()).take(64).collect();
    let region = match AppRegion::create(cfg.layout, app_id, cred.uid) {
        Ok(r) => Arc::new(r),
        Err(e) => {
            tracing::warn!(app_id, %name, pid = cred.pid, "cannot create an app region: {e}");
            reply_error(conn.as_fd(), ErrorCode::NoResources, format!("tasd could not create the shared region: {e}"));
            return;
        }
    };
    let (app_efd, app_efd_for_app) = match sys::eventfd().and_then(|e| Ok((e.try_clone()?, e))) {
        Ok(pair) => pair,
        Err(e) => {
            reply_error(conn.as_fd(), ErrorCode::NoResources, format!("tasd could not create an eventfd: {e}"));
            return;
        }
    };
    let (go_tx, go_rx): (Sender<GoAhead>, Receiver<GoAhead>) = crossbeam_channel::bounded(1);
    let app = AttachedApp {
        app_id,
        name: name.clone(),
        pid: cred.pid,
        uid: cred.uid,
        gid: cred.gid,
        region: region.clone(),
        app_eventfd: app_efd,
        go_ahead: go_tx,
    };
    if shared.events.send(AttachEvent::Attached(app)).is_err() {
        reply_error(conn.as_fd(), ErrorCode::Aborted, "tasd is shutting down".into());
        return;
    }
    match go_rx.recv_timeout(cfg.go_ahead_timeout) {
        Ok(Ok(())) => {}
        Ok(Err((code, message))) => {
            reply_error(conn.as_fd(), code, message);
            return;
        }
        Err(_) => {
            reply_error(conn.as_fd(), ErrorCode::Aborted, "tasd did not admit the application in time".into());
            // The slow path may still answer later: tell it the app is gone.
            let _ = shared.events.send(AttachEvent::Detached { app_id });
            return;
        }
    }
    let ok = Response {
        result: Some(response::Result::HelloOk(HelloOk {
            region_size: region.layout().region_size() as u64,
            fp_cores: shared.doorbells.len() as u32,
            local_ip: u32::from(cfg.local_ip),
            app_id,
        })),
    };
    let mut fds: Vec<RawFd> = vec![region.fd().as_raw_fd(), app_efd_for_app.as_raw_fd()];
    fds.extend(shared.doorbells.iter().map(|d| d.as_raw_fd()));
    let sent = sys::send_with_fds(conn.as_fd(), &ok.encode_to_vec(), &fds);
    drop(app_efd_for_app);
    drop(region);
    match sent {
        Ok(()) => {
            tracing::info!(app_id, %name, pid = cred.pid, uid = cred.uid, "application attached");
            if let Ok(dup) = conn.try_clone() {
                shared.lifelines.lock().unwrap_or_else(|p| p.into_inner()).insert(app_id, dup);
            }
            // The lifeline: nothing more is expected; EOF or an error means detach.
            loop {
                match sys::wait_readable(conn.as_fd(), shared.stop.as_fd(), None) {
                    Ok(Wake::Ready) => match sys::recv(conn.as_fd(), &mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(_) => tracing::debug!(app_id, "ignoring a message on an attached app's socket"),
                    },
                    Ok(Wake::Timeout) => {}
                    Ok(Wake::Stop) | Err(_) => break,
                }
            }
            shared.lifelines.lock().unwrap_or_else(|p| p.into_inner()).remove(&app_id);
            tracing::info!(app_id, %name, "application detached");
        }
        Err(e) => tracing::warn!(app_id, "sending HelloOk failed: {e}"),
    }
    let _ = shared.events.send(AttachEvent::Detached { app_id });
}

enum Wake {
    Ready,
    Stop,
    Timeout,
}

/// The raw socket calls (no crate offers SEQPACKET with SCM_RIGHTS and SO_PEERCRED in
/// the dependency set of the service). Each `unsafe` block says why it is sound.
#[allow(unsafe_code)]
mod sys {
    use super::*;

    pub(super) struct Cred {
        pub pid: i32,
        pub uid: u32,
        pub gid: u32,
    }

    fn check(rc: libc::c_int) -> io::Result<libc::c_int> {
        if rc < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(rc)
        }
    }

    fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
        let fd = check(fd)?;
        // SAFETY: a fresh descriptor returned by the kernel, owned by nobody else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    }

    pub(super) fn seqpacket_socket() -> io::Result<OwnedFd> {
        // SAFETY: plain socket(2).
        owned(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC, 0) })
    }

    fn sockaddr(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
        // SAFETY: all-zero is a valid sockaddr_un.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        let bytes = path.as_os_str().as_bytes();
        if bytes.is_empty() || bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "socket path empty or longer than 107 bytes"));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        Ok((addr, (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t))
    }

    pub(super) fn bind(fd: BorrowedFd<'_>, path: &Path) -> io::Result<()> {
        let (addr, len) = sockaddr(path)?;
        // SAFETY: addr is a valid sockaddr_un of at least len bytes.
        check(unsafe { libc::bind(fd.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
        Ok(())
    }

    pub(super) fn shutdown(fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: plain shutdown(2) on a socket we own; it only changes the socket's state.
        check(unsafe { libc::shutdown(fd.as_raw_fd(), libc::SHUT_RDWR) })?;
        Ok(())
    }

    pub(super) fn listen(fd: BorrowedFd<'_>) -> io::Result<()> {
        // SAFETY: plain listen(2) on a socket we own.
        check(unsafe { libc::listen(fd.as_raw_fd(), 128) })?;
        Ok(())
    }

    pub(super) fn seqpacket_connect(path: &Path) -> io::Result<OwnedFd> {
        let s = seqpacket_socket()?;
        let (addr, len) = sockaddr(path)?;
        // SAFETY: addr is a valid sockaddr_un of at least len bytes.
        check(unsafe { libc::connect(s.as_raw_fd(), (&addr as *const libc::sockaddr_un).cast(), len) })?;
        Ok(s)
    }

    pub(super) fn accept(fd: BorrowedFd<'_>) -> io::Result<OwnedFd> {
        // SAFETY: accept4 without an address buffer (NULL pointers are allowed).
        owned(unsafe { libc::accept4(fd.as_raw_fd(), std::ptr::null_mut(), std::ptr::null_mut(), libc::SOCK_CLOEXEC) })
    }

    pub(super) fn peer_cred(fd: BorrowedFd<'_>) -> io::Result<Cred> {
        let mut c = libc::ucred { pid: 0, uid: 0, gid: 0 };
        let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
        // SAFETY: c and len are valid out-pointers of the sizes given.
        check(unsafe {
            libc::getsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_PEERCRED,
                (&mut c as *mut libc::ucred).cast(),
                &mut len,
            )
        })?;
        Ok(Cred { pid: c.pid, uid: c.uid, gid: c.gid })
    }

    pub(super) fn recv(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
        // SAFETY: buf is valid for buf.len() bytes; MSG_DONTWAIT because callers poll first.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(n as usize)
    }

    pub(super) fn send_with_fds(fd: BorrowedFd<'_>, msg: &[u8], fds: &[RawFd]) -> io::Result<()> {
        let mut iov = libc::iovec { iov_base: msg.as_ptr() as *mut libc::c_void, iov_len: msg.len() };
        let payload = std::mem::size_of_val(fds);
        let mut cbuf = vec![0u64; 8 + payload.div_ceil(8)];
        // SAFETY: all-zero is a valid msghdr; pointers are set below.
        let mut m: libc::msghdr = unsafe { std::mem::zeroed() };
        m.msg_iov = &mut iov;
        m.msg_iovlen = 1;
        if !fds.is_empty() {
            m.msg_control = cbuf.as_mut_ptr().cast();
            // SAFETY: CMSG_SPACE is a pure size computation.
            m.msg_controllen = unsafe { libc::CMSG_SPACE(payload as u32) } as _;
            assert!(m.msg_controllen as usize <= cbuf.len() * 8);
            // SAFETY: the control buffer is large enough for one SCM_RIGHTS header and
            // `fds` (asserted); CMSG_FIRSTHDR/CMSG_DATA point inside it.
            unsafe {
                let c = libc::CMSG_FIRSTHDR(&m);
                (*c).cmsg_level = libc::SOL_SOCKET;
                (*c).cmsg_type = libc::SCM_RIGHTS;
                (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
                std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
            }
        }
        // SAFETY: m points at live buffers; MSG_NOSIGNAL turns a gone peer into EPIPE.
        let n = unsafe { libc::sendmsg(fd.as_raw_fd(), &m, libc::MSG_NOSIGNAL) };
        if n < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    pub(super) fn eventfd() -> io::Result<OwnedFd> {
        // SAFETY: plain eventfd(2).
        owned(unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) })
    }

    pub(super) fn eventfd_signal(fd: BorrowedFd<'_>) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a valid u64.
        unsafe { libc::write(fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    /// Wait until `fd` is readable (or hung up), or `stop` is signalled, or `timeout`.
    pub(super) fn wait_readable(fd: BorrowedFd<'_>, stop: BorrowedFd<'_>, timeout: Option<Duration>) -> io::Result<Wake> {
        let mut p = [
            libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        let ms = timeout.map_or(-1, |t| t.as_millis().min(i32::MAX as u128) as libc::c_int);
        loop {
            // SAFETY: two valid pollfds.
            let n = unsafe { libc::poll(p.as_mut_ptr(), 2, ms) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if p[1].revents != 0 {
                return Ok(Wake::Stop);
            }
            if p[0].revents != 0 {
                return Ok(Wake::Ready);
            }
            return Ok(Wake::Timeout);
        }
    }
}

#[cfg(test)]
#[allow(unsafe_code)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    fn layout() -> Layout {
        Layout { num_fp_queues: 2, queue_entries: 64, conn_slots: 4, rx_buf_size: 4096, tx_buf_size: 4096 }
    }

    fn sock_path() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        std::env::temp_dir()
            .join(format!("tas-attach-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)))
            .join("tasd.sock")
    }

    fn server(path: &Path) -> (AttachServer, Receiver<AttachEvent>, Vec<Arc<OwnedFd>>) {
        let (tx, rx) = crossbeam_channel::unbounded();
        let doorbells: Vec<Arc<OwnedFd>> = (0..2).map(|_| Arc::new(sys::eventfd().unwrap())).collect();
        let cfg = AttachConfig::new(path, layout(), "10.0.0.1".parse().unwrap());
        (AttachServer::start(cfg, doorbells.clone(), tx).unwrap(), rx, doorbells)
    }

    /// A fake slow path: admit (or refuse) every application, forward the events.
    fn slow_path(rx: Receiver<AttachEvent>, refuse: Option<(ErrorCode, String)>) -> Receiver<AttachEvent> {
        let (fwd, out) = crossbeam_channel::unbounded();
        std::thread::spawn(move || {
            for ev in rx {
                if let AttachEvent::Attached(app) = &ev {
                    let answer = match &refuse {
                        None => Ok(()),
                        Some(r) => Err(r.clone()),
                    };
                    app.go_ahead.send(answer).unwrap();
                }
                if fwd.send(ev).is_err() {
                    break;
                }
            }
        });
        out
    }

    #[test]
    fn attach_and_detach() {
        let path = sock_path();
        let (srv, rx, _doorbells) = server(&path);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o660);
        let events = slow_path(rx, None);
        let ctx = libtas::Context::attach_to(&path, "unit-test").unwrap();
        assert_eq!(ctx.layout(), layout());
        assert_eq!(ctx.local_ip(), "10.0.0.1".parse::<Ipv4Addr>().unwrap());
        let app = match events.recv_timeout(Duration::from_secs(5)).unwrap() {
            AttachEvent::Attached(app) => app,
            e => panic!("{e:?}"),
        };
        assert_eq!(app.app_id, ctx.app_id());
        assert_eq!(app.name, "unit-test");
        assert_eq!(app.pid as u32, std::process::id());
        // SAFETY: getuid never fails.
        assert_eq!(app.uid, unsafe { libc::getuid() });
        // The service's region and the app's mapping are the same memory.
        let mut req = app.region.req_consumer();
        drop(ctx);
        match events.recv_timeout(Duration::from_secs(5)).unwrap() {
            AttachEvent::Detached { app_id } => assert_eq!(app_id, app.app_id),
            e => panic!("{e:?}"),
        }
        assert_eq!(req.pop(), Ok(None));
        srv.shutdown();
        assert!(!path.exists(), "socket file removed at shutdown");
    }

    #[test]
    fn fds_and_header_seen_from_the_client() {
        let path = sock_path();
        let (srv, rx, doorbells) = server(&path);
        let events = slow_path(rx, None);
        let hello = Hello { abi_version: ABI_VERSION, name: "raw".into() };
        let ex = libtas::attach::exchange(&path, &hello, Duration::from_secs(5)).unwrap();
        let ok = match ex.response.result {
            Some(response::Result::HelloOk(ok)) => ok,
            r => panic!("{r:?}"),
        };
        assert_eq!(ok.fp_cores, 2);
        assert_eq!(ok.region_size as usize, layout().region_size());
        assert_eq!(ok.local_ip, 0x0a000001);
        assert_eq!(ex.fds.len(), 4);
        // The region fd maps the header the service wrote.
        let len = ok.region_size as usize;
        // SAFETY: a fresh read-only shared mapping of the region fd, unmapped below.
        let p = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, ex.fds[0].as_raw_fd(), 0)
        };
        assert_ne!(p, libc::MAP_FAILED);
        // SAFETY: the mapping is at least a header long and page aligned.
        let h = unsafe { std::ptr::read_volatile(p.cast::<tas_proto::shm::RegionHeader>()) };
        assert_eq!(Layout::validate(&h, len), Ok(layout()));
        // SAFETY: p/len from the mmap above.
        unsafe { libc::munmap(p, len) };
        // The third and fourth fds are the doorbells: a write by the app is seen by the
        // service's copy.
        sys::eventfd_signal(ex.fds[3].as_fd());
        let mut v = 0u64;
        // SAFETY: 8-byte read into a u64 from a non-blocking eventfd.
        let n = unsafe { libc::read(doorbells[1].as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!((n, v), (8, 1));
        // And the app eventfd is the one the slow path got.
        let app = match events.recv_timeout(Duration::from_secs(5)).unwrap() {
            AttachEvent::Attached(app) => app,
            e => panic!("{e:?}"),
        };
        sys::eventfd_signal(app.app_eventfd.as_fd());
        // SAFETY: as above.
        let n = unsafe { libc::read(ex.fds[1].as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
        assert_eq!((n, v), (8, 1));
        drop(ex.socket);
        assert!(matches!(events.recv_timeout(Duration::from_secs(5)).unwrap(), AttachEvent::Detached { .. }));
        drop(srv);
    }

    #[test]
    fn version_mismatch_is_refused_with_both_versions() {
        let path = sock_path();
        let (srv, rx, _d) = server(&path);
        let hello = Hello { abi_version: 99, name: "old".into() };
        let ex = libtas::attach::exchange(&path, &hello, Duration::from_secs(5)).unwrap();
        match ex.response.result {
            Some(response::Result::Error(e)) => {
                assert_eq!(e.code, ErrorCode::Version as u32);
                assert!(e.message.contains("99") && e.message.contains(&format!("ABI {ABI_VERSION}")), "{}", e.message);
            }
            r => panic!("{r:?}"),
        }
        assert!(ex.fds.is_empty());
        assert!(rx.try_recv().is_err(), "the slow path never hears of it");
        srv.shutdown();
    }

    #[test]
    fn refused_by_the_slow_path() {
        let path = sock_path();
        let (srv, rx, _d) = server(&path);
        let _events = slow_path(rx, Some((ErrorCode::NoResources, "too many apps".into())));
        let err = libtas::Context::attach_to(&path, "x").unwrap_err();
        assert_eq!(err, libtas::Error::NoResources);
        srv.shutdown();
    }

    #[test]
    fn address_in_use_and_stale_socket() {
        let path = sock_path();
        let (srv, _rx, _d) = server(&path);
        let (tx, _rx2) = crossbeam_channel::unbounded();
        let doorbells: Vec<Arc<OwnedFd>> = (0..2).map(|_| Arc::new(sys::eventfd().unwrap())).collect();
        let cfg = AttachConfig::new(&path, layout(), Ipv4Addr::LOCALHOST);
        let err = AttachServer::start(cfg.clone(), doorbells.clone(), tx.clone()).unwrap_err();
        assert!(matches!(err, AttachError::InUse(_)));
        assert!(err.to_string().contains("address in use"), "{err}");
        drop(srv);
        // A stale socket file (its listener is gone) is replaced.
        let stale = std::os::unix::net::UnixListener::bind(&path).unwrap();
        drop(stale);
        assert!(path.exists());
        let srv = AttachServer::start(cfg.clone(), doorbells.clone(), tx.clone()).unwrap();
        srv.shutdown();
        // Not a socket: refused, left alone.
        std::fs::write(&path, b"precious").unwrap();
        assert!(matches!(AttachServer::start(cfg, doorbells, tx), Err(AttachError::NotASocket(_))));
        assert_eq!(std::fs::read(&path).unwrap(), b"precious");
        let err = libtas::Context::attach_to(path.with_file_name("nothing.sock"), "x").unwrap_err();
        assert!(matches!(err, libtas::Error::ServiceUnavailable { .. }), "{err}");
    }
}
