//! `tas-echo`: an echo server and a verifying client on the TAS native API.
//!
//! ```text
//! tas-echo [--backend tas|kernel] server --port 7 [--socket PATH] [--max-conns N]
//! tas-echo [--backend tas|kernel] client --connect 10.0.0.1:7 [--bytes N | --rpcs N --size S] [--send-only] [--conns C] [--seed X] [--timeout SECS]
//! ```
//!
//! `--send-only` streams `--bytes` to a server that discards them (e.g.
//! `tools/peers/echo_server.py --discard`) and expects nothing back but the FIN; the
//! summary's sha256 is then that of the bytes sent.
//!
//! `--backend kernel` runs the same server and client on the Linux kernel's sockets
//! (non-blocking, epoll through mio) instead of the service: the benchmark harness
//! (`tas-bench compare`) compares the two with one binary.
//!
//! The client streams a seeded pseudo-random pattern (a different stream per connection),
//! reads the echo back while it sends (sending everything before reading would deadlock
//! once both windows fill), compares every byte, and prints one summary line. Any
//! mismatch, error or timeout exits non-zero.
//!
//! Both sides are written against the small [`Net`] trait, event-driven over many
//! connections on one thread, so that both backends run exactly the same logic.
#![deny(unsafe_code)]

use std::collections::HashMap;
use std::hash::Hash;
use std::net::SocketAddrV4;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Parser, Subcommand};
use sha2::{Digest, Sha256};

#[derive(Parser, Debug)]
#[command(
    name = "tas-echo",
    about = "Echo server and verifying client over the TAS native API"
)]
struct Cli {
    /// The service's app socket (default: $TAS_SOCKET, else /run/tas/tasd.sock).
    #[arg(long, global = true, env = "TAS_SOCKET")]
    socket: Option<PathBuf>,
    /// Which TCP stack: `tas` (the service, through libtas) or `kernel` (Linux sockets).
    #[arg(long, global = true, value_enum, default_value_t = Backend::Tas)]
    backend: Backend,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// The TAS service, through libtas.
    Tas,
    /// The Linux kernel's TCP sockets.
    Kernel,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Echo every byte on every connection; close after echoing the peer's EOF.
    Server {
        /// Port to listen on.
        #[arg(long)]
        port: u16,
        /// Accept backlog.
        #[arg(long, default_value_t = 1024)]
        backlog: u32,
        /// Exit after this many connections have finished (default: run until killed).
        #[arg(long)]
        max_conns: Option<u64>,
    },
    /// Send a verifiable pattern, check the echo, print a summary.
    Client {
        /// Server address, IPv4:PORT.
        #[arg(long)]
        connect: SocketAddrV4,
        /// Bytes to stream per connection (stream mode; default 1 MiB).
        #[arg(long)]
        bytes: Option<u64>,
        /// Request/response mode: this many round trips per connection.
        #[arg(long)]
        rpcs: Option<u64>,
        /// Request (and response) size in bytes, for --rpcs.
        #[arg(long, default_value_t = 64)]
        size: u64,
        /// Stream mode without the echo: send, then wait for the server's FIN only
        /// (for a discarding server); sha256 is that of the bytes sent.
        #[arg(long)]
        send_only: bool,
        /// Connections in parallel.
        #[arg(long, default_value_t = 1)]
        conns: u32,
        /// Seed of the pattern.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Give up after this many seconds (whole run).
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
}

// ---- the backend interface ----------------------------------------------------------------

/// The outcome of a non-blocking send or receive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Io {
    /// This many bytes (0 from a receive: EOF).
    Done(usize),
    /// Try again after the next readiness report.
    WouldBlock,
}

/// Something to look at after a wait.
#[derive(Debug, Clone, Copy)]
enum Ready<C, L> {
    /// Connections wait on this listener.
    Accept(L),
    /// This connection may be able to make progress.
    Conn(C),
}

/// What the echo logic needs from a TCP stack: non-blocking operations and a readiness
/// wait. Implemented for libtas here; a kernel-socket backend can implement it with
/// non-blocking sockets and epoll.
trait Net {
    type Conn: Copy + Eq + Hash + std::fmt::Debug;
    type Listener: Copy + std::fmt::Debug;
    fn listen(&mut self, port: u16, backlog: u32) -> Result<Self::Listener>;
    fn accept(&mut self, l: Self::Listener) -> Result<Option<Self::Conn>>;
    fn connect_start(&mut self, addr: SocketAddrV4) -> Result<Self::Conn>;
    /// Ok(true) once established, Ok(false) while connecting, Err if the open failed.
    fn connected(&mut self, c: Self::Conn) -> Result<bool>;
    fn send(&mut self, c: Self::Conn, data: &[u8]) -> Result<Io>;
    fn recv(&mut self, c: Self::Conn, buf: &mut [u8]) -> Result<Io>;
    fn shutdown(&mut self, c: Self::Conn) -> Result<()>;
    /// True once the connection is fully closed (both FINs exchanged, or reset): only
    /// then has the peer surely received everything we sent.
    fn is_closed(&mut self, c: Self::Conn) -> bool;
    fn close(&mut self, c: Self::Conn);
    /// Wait at most `timeout` for something to happen; append what is ready to `out`.
    /// Err if the stack became unusable.
    fn wait(
        &mut self,
        timeout: Duration,
        out: &mut Vec<Ready<Self::Conn, Self::Listener>>,
    ) -> Result<()>;
}

struct Tas {
    ctx: libtas::Context,
}

impl Tas {
    fn attach(socket: Option<PathBuf>) -> Result<Self> {
        let ctx = match socket {
            Some(p) => libtas::Context::attach_to(&p, "tas-echo"),
            None => libtas::Context::attach(),
        }?;
        Ok(Tas { ctx })
    }

    fn collect(&mut self, out: &mut Vec<Ready<libtas::ConnId, libtas::ListenerId>>) {
        for ev in self.ctx.take_events() {
            match ev {
                libtas::Event::Accept(l) => out.push(Ready::Accept(l)),
                libtas::Event::Connected(c)
                | libtas::Event::Readable(c)
                | libtas::Event::Writable(c)
                | libtas::Event::Closed(c, _) => out.push(Ready::Conn(c)),
                libtas::Event::Listening(..) => {}
            }
        }
    }
}

fn io(r: libtas::Result<usize>) -> Result<Io> {
    match r {
        Ok(n) => Ok(Io::Done(n)),
        Err(libtas::Error::WouldBlock) => Ok(Io::WouldBlock),
        Err(e) => Err(e.into()),
    }
}

impl Net for Tas {
    type Conn = libtas::ConnId;
    type Listener = libtas::ListenerId;
    fn listen(&mut self, port: u16, backlog: u32) -> Result<Self::Listener> {
        Ok(self.ctx.listen(port, backlog)?)
    }
    fn accept(&mut self, l: Self::Listener) -> Result<Option<Self::Conn>> {
        Ok(self.ctx.accept(l)?)
    }
    fn connect_start(&mut self, addr: SocketAddrV4) -> Result<Self::Conn> {
        Ok(self.ctx.connect_start(addr)?)
    }
    fn connected(&mut self, c: Self::Conn) -> Result<bool> {
        match self.ctx.state(c) {
            libtas::ConnState::Connecting => Ok(false),
            libtas::ConnState::Failed(e) => Err(e.into()),
            libtas::ConnState::Invalid => bail!("connection handle invalid"),
            _ => Ok(true),
        }
    }
    fn send(&mut self, c: Self::Conn, data: &[u8]) -> Result<Io> {
        io(self.ctx.send(c, data))
    }
    fn recv(&mut self, c: Self::Conn, buf: &mut [u8]) -> Result<Io> {
        io(self.ctx.recv(c, buf))
    }
    fn shutdown(&mut self, c: Self::Conn) -> Result<()> {
        Ok(self.ctx.shutdown(c)?)
    }
    fn is_closed(&mut self, c: Self::Conn) -> bool {
        matches!(
            self.ctx.state(c),
            libtas::ConnState::Closed | libtas::ConnState::Failed(_) | libtas::ConnState::Invalid
        )
    }
    fn close(&mut self, c: Self::Conn) {
        let _ = self.ctx.close(c);
    }
    fn wait(
        &mut self,
        timeout: Duration,
        out: &mut Vec<Ready<Self::Conn, Self::Listener>>,
    ) -> Result<()> {
        self.ctx.poll();
        self.collect(out);
        if out.is_empty() {
            self.ctx.wait(Some(timeout));
            self.collect(out);
        }
        Ok(self.ctx.health()?)
    }
}

// ---- the kernel backend -------------------------------------------------------------------

/// The kernel's sockets: non-blocking, edge-triggered epoll through mio. The echo logic
/// always runs a direction until it would block, which is what edge triggering needs.
struct Kernel {
    poll: mio::Poll,
    events: mio::Events,
    listeners: HashMap<usize, mio::net::TcpListener>,
    conns: HashMap<usize, KConn>,
    next: usize,
}

struct KConn {
    stream: mio::net::TcpStream,
    connected: bool,
    shut: bool,
    eof: bool,
    failed: bool,
}

impl Kernel {
    fn new() -> Result<Self> {
        Ok(Kernel {
            poll: mio::Poll::new().context("epoll_create")?,
            events: mio::Events::with_capacity(1024),
            listeners: HashMap::new(),
            conns: HashMap::new(),
            next: 0,
        })
    }

    fn add(&mut self, mut stream: mio::net::TcpStream, connected: bool) -> Result<usize> {
        let token = self.next;
        self.next += 1;
        self.poll.registry().register(
            &mut stream,
            mio::Token(token),
            mio::Interest::READABLE | mio::Interest::WRITABLE,
        )?;
        // Requests are small and answered at once: Nagle would hold them back.
        let _ = stream.set_nodelay(true);
        self.conns.insert(
            token,
            KConn {
                stream,
                connected,
                shut: false,
                eof: false,
                failed: false,
            },
        );
        Ok(token)
    }

    fn conn(&mut self, c: usize) -> Result<&mut KConn> {
        self.conns
            .get_mut(&c)
            .ok_or_else(|| anyhow!("connection {c} is not open"))
    }
}

fn kio(r: std::io::Result<usize>) -> Result<Io> {
    match r {
        Ok(n) => Ok(Io::Done(n)),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(Io::WouldBlock),
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => Ok(Io::WouldBlock),
        Err(e) => Err(e.into()),
    }
}

impl Net for Kernel {
    type Conn = usize;
    type Listener = usize;
    fn listen(&mut self, port: u16, _backlog: u32) -> Result<usize> {
        // mio listens with a backlog of 1024 (capped by net.core.somaxconn).
        let addr = std::net::SocketAddr::from(([0, 0, 0, 0], port));
        let mut l = mio::net::TcpListener::bind(addr)?;
        let token = self.next;
        self.next += 1;
        self.poll
            .registry()
            .register(&mut l, mio::Token(token), mio::Interest::READABLE)?;
        self.listeners.insert(token, l);
        Ok(token)
    }
    fn accept(&mut self, l: usize) -> Result<Option<usize>> {
        let listener = self
            .listeners
            .get(&l)
            .ok_or_else(|| anyhow!("listener {l} is not open"))?;
        match listener.accept() {
            Ok((stream, _)) => Ok(Some(self.add(stream, true)?)),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
    fn connect_start(&mut self, addr: SocketAddrV4) -> Result<usize> {
        let stream = mio::net::TcpStream::connect(addr.into())?;
        self.add(stream, false)
    }
    fn connected(&mut self, c: usize) -> Result<bool> {
        let k = self.conn(c)?;
        if k.connected {
            return Ok(true);
        }
        if let Some(e) = k.stream.take_error()? {
            return Err(e.into());
        }
        match k.stream.peer_addr() {
            Ok(_) => {
                k.connected = true;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotConnected => Ok(false),
            Err(e) => Err(e.into()),
        }
    }
    fn send(&mut self, c: usize, data: &[u8]) -> Result<Io> {
        use std::io::Write;
        let k = self.conn(c)?;
        let r = kio(k.stream.write(data));
        k.failed |= r.is_err();
        r
    }
    fn recv(&mut self, c: usize, buf: &mut [u8]) -> Result<Io> {
        use std::io::Read;
        let k = self.conn(c)?;
        let r = kio(k.stream.read(buf));
        match r {
            Ok(Io::Done(0)) => k.eof = true,
            Err(_) => k.failed = true,
            _ => {}
        }
        r
    }
    fn shutdown(&mut self, c: usize) -> Result<()> {
        let k = self.conn(c)?;
        k.shut = true;
        Ok(k.stream.shutdown(std::net::Shutdown::Write)?)
    }
    fn is_closed(&mut self, c: usize) -> bool {
        // The kernel finishes the close handshake after the socket is dropped, and never
        // resets a socket with nothing unread: FIN sent and FIN received is enough.
        self.conns.get(&c).is_none_or(|k| k.failed || (k.shut && k.eof))
    }
    fn close(&mut self, c: usize) {
        if let Some(mut k) = self.conns.remove(&c) {
            let _ = self.poll.registry().deregister(&mut k.stream);
        }
    }
    fn wait(&mut self, timeout: Duration, out: &mut Vec<Ready<usize, usize>>) -> Result<()> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => return Ok(()),
            Err(e) => return Err(e).context("epoll_wait"),
        }
        for ev in self.events.iter() {
            let t = ev.token().0;
            if self.listeners.contains_key(&t) {
                out.push(Ready::Accept(t));
            } else {
                out.push(Ready::Conn(t));
            }
        }
        Ok(())
    }
}

// ---- the server ---------------------------------------------------------------------------

/// One echoed connection: bytes read and not yet sent back.
#[derive(Default)]
struct EchoConn {
    pending: Vec<u8>,
    sent: usize,
    eof: bool,
    echoed: u64,
    /// Everything echoed and our FIN queued: wait for the close to complete.
    closing: bool,
}

const CHUNK: usize = 64 << 10;

/// Move bytes until both directions would block. Ok(true) when the connection is done.
fn echo_step<N: Net>(net: &mut N, c: N::Conn, st: &mut EchoConn, buf: &mut [u8]) -> Result<bool> {
    loop {
        let mut progress = false;
        while st.sent < st.pending.len() {
            match net.send(c, &st.pending[st.sent..])? {
                Io::Done(n) => {
                    st.sent += n;
                    st.echoed += n as u64;
                    progress = true;
                }
                Io::WouldBlock => break,
            }
        }
        if st.sent == st.pending.len() {
            st.pending.clear();
            st.sent = 0;
        }
        if !st.eof && st.pending.len() < CHUNK {
            match net.recv(c, buf)? {
                Io::Done(0) => {
                    st.eof = true;
                    progress = true;
                }
                Io::Done(n) => {
                    st.pending.extend_from_slice(&buf[..n]);
                    progress = true;
                }
                Io::WouldBlock => {}
            }
        }
        if st.eof && st.pending.is_empty() {
            return Ok(true);
        }
        if !progress {
            return Ok(false);
        }
    }
}

fn serve<N: Net>(net: &mut N, port: u16, backlog: u32, max_conns: Option<u64>) -> Result<()> {
    let _listener = net
        .listen(port, backlog)
        .with_context(|| format!("listening on port {port}"))?;
    eprintln!("tas-echo: listening on port {port}");
    let mut srv = Server {
        conns: HashMap::new(),
        buf: vec![0u8; CHUNK],
        finished: 0,
        failed: 0,
        bytes: 0,
    };
    let mut ready = Vec::new();
    while max_conns.is_none_or(|m| srv.finished + srv.failed < m) {
        ready.clear();
        net.wait(Duration::from_millis(100), &mut ready)?;
        for r in ready.drain(..) {
            match r {
                Ready::Accept(l) => {
                    while let Some(c) = net.accept(l)? {
                        srv.conns.insert(c, EchoConn::default());
                        // Data may have arrived before the accept.
                        srv.service(net, c);
                    }
                }
                Ready::Conn(c) => srv.service(net, c),
            }
        }
    }
    eprintln!(
        "tas-echo: {} connections echoed ({} bytes), {} failed",
        srv.finished, srv.bytes, srv.failed
    );
    Ok(())
}

struct Server<C> {
    conns: HashMap<C, EchoConn>,
    buf: Vec<u8>,
    finished: u64,
    failed: u64,
    bytes: u64,
}

impl<C: Copy + Eq + Hash + std::fmt::Debug> Server<C> {
    fn service<N: Net<Conn = C>>(&mut self, net: &mut N, c: C) {
        let Some(st) = self.conns.get_mut(&c) else {
            return;
        };
        if st.closing {
            // Keep the connection until the service reports it closed: exiting (or
            // dropping the context) earlier would reset it with data still in flight.
            if net.is_closed(c) {
                self.bytes += st.echoed;
                self.finished += 1;
                net.close(c);
                self.conns.remove(&c);
            }
            return;
        }
        match echo_step(net, c, st, &mut self.buf) {
            Ok(false) => {}
            Ok(true) => match net.shutdown(c) {
                Ok(()) => {
                    st.closing = true;
                    self.service(net, c);
                }
                Err(e) => self.fail(net, c, e),
            },
            Err(e) => self.fail(net, c, e),
        }
    }

    fn fail<N: Net<Conn = C>>(&mut self, net: &mut N, c: C, e: anyhow::Error) {
        eprintln!("tas-echo: connection {c:?}: {e}");
        self.failed += 1;
        net.close(c);
        self.conns.remove(&c);
    }
}

// ---- the client ---------------------------------------------------------------------------

/// The pattern: byte `pos` of connection `conn`'s stream, from a counter-mode splitmix64.
struct Pattern {
    key: u64,
}

impl Pattern {
    fn new(seed: u64, conn: u32) -> Self {
        Pattern {
            key: splitmix(seed ^ (conn as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }
    }
    fn fill(&self, pos: u64, out: &mut [u8]) {
        for (i, b) in out.iter_mut().enumerate() {
            let p = pos + i as u64;
            *b = (splitmix(self.key ^ (p >> 3)) >> ((p & 7) * 8)) as u8;
        }
    }
}

fn splitmix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Stream { bytes: u64 },
    Rpc { rpcs: u64, size: u64 },
    /// Stream to a discarding server: nothing comes back.
    Send { bytes: u64 },
}

struct ClientConn<C> {
    id: C,
    pattern: Pattern,
    connected: bool,
    sent: u64,
    received: u64,
    /// Bytes this connection sends in total.
    total: u64,
    /// Bytes it expects back (`total`, or 0 in send-only mode).
    expect_back: u64,
    shut: bool,
    eof: bool,
    hash: Sha256,
}

impl<C: Copy> ClientConn<C> {
    /// How far sending may go now: everything in stream mode; up to the end of the
    /// current request in RPC mode (the next request goes after the response).
    fn send_limit(&self, mode: Mode) -> u64 {
        match mode {
            Mode::Stream { .. } | Mode::Send { .. } => self.total,
            Mode::Rpc { size, .. } => (self.received / size + 1)
                .saturating_mul(size)
                .min(self.total),
        }
    }
    fn done(&self) -> bool {
        self.received == self.expect_back && self.eof
    }
}

fn client_step<N: Net>(
    net: &mut N,
    cc: &mut ClientConn<N::Conn>,
    mode: Mode,
    out: &mut [u8],
    inb: &mut [u8],
    expect: &mut [u8],
) -> Result<()> {
    if !cc.connected {
        if !net.connected(cc.id)? {
            return Ok(());
        }
        cc.connected = true;
    }
    loop {
        let mut progress = false;
        let limit = cc.send_limit(mode);
        while cc.sent < limit {
            let n = ((limit - cc.sent) as usize).min(out.len());
            cc.pattern.fill(cc.sent, &mut out[..n]);
            match net.send(cc.id, &out[..n])? {
                Io::Done(k) => {
                    if let Mode::Send { .. } = mode {
                        cc.hash.update(&out[..k]);
                    }
                    cc.sent += k as u64;
                    progress = true;
                }
                Io::WouldBlock => break,
            }
        }
        if cc.sent == cc.total && !cc.shut {
            net.shutdown(cc.id)?;
            cc.shut = true;
        }
        if !cc.eof {
            match net.recv(cc.id, inb)? {
                Io::Done(0) => {
                    cc.eof = true;
                    if cc.received != cc.expect_back {
                        bail!(
                            "connection {:?}: EOF after {} of {} bytes",
                            cc.id,
                            cc.received,
                            cc.expect_back
                        );
                    }
                    progress = true;
                }
                Io::Done(n) => {
                    if cc.received + n as u64 > cc.sent.min(cc.expect_back) {
                        bail!("connection {:?}: received more bytes than were sent", cc.id);
                    }
                    let want = &mut expect[..n];
                    cc.pattern.fill(cc.received, want);
                    if inb[..n] != *want {
                        let at = inb[..n]
                            .iter()
                            .zip(want.iter())
                            .position(|(a, b)| a != b)
                            .unwrap_or(0);
                        bail!(
                            "connection {:?}: echo differs at byte {} (got {:#04x}, want {:#04x})",
                            cc.id,
                            cc.received + at as u64,
                            inb[at],
                            want[at]
                        );
                    }
                    cc.hash.update(&inb[..n]);
                    cc.received += n as u64;
                    progress = true;
                }
                Io::WouldBlock => {}
            }
        }
        if !progress {
            return Ok(());
        }
    }
}

struct Summary {
    conns: u32,
    bytes: u64,
    rpcs: u64,
    secs: f64,
    sha256: String,
}

fn run_client<N: Net>(
    net: &mut N,
    addr: SocketAddrV4,
    mode: Mode,
    conns: u32,
    seed: u64,
    timeout: Duration,
) -> Result<Summary> {
    let start = Instant::now();
    let deadline = start + timeout;
    let total = match mode {
        Mode::Stream { bytes } | Mode::Send { bytes } => bytes,
        Mode::Rpc { rpcs, size } => rpcs
            .checked_mul(size)
            .ok_or_else(|| anyhow!("--rpcs x --size overflows"))?,
    };
    let mut cs: Vec<ClientConn<N::Conn>> = Vec::with_capacity(conns as usize);
    let mut index = HashMap::new();
    for i in 0..conns {
        let id = net
            .connect_start(addr)
            .with_context(|| format!("connecting to {addr}"))?;
        index.insert(id, i as usize);
        cs.push(ClientConn {
            id,
            pattern: Pattern::new(seed, i),
            connected: false,
            sent: 0,
            received: 0,
            total,
            expect_back: if let Mode::Send { .. } = mode { 0 } else { total },
            shut: false,
            eof: false,
            hash: Sha256::new(),
        });
    }
    let (mut out, mut inb, mut expect) = (vec![0u8; CHUNK], vec![0u8; CHUNK], vec![0u8; CHUNK]);
    let mut ready = Vec::new();
    let mut remaining = cs.len();
    // Drive every connection once, then only the ones reported ready.
    let mut todo: Vec<usize> = (0..cs.len()).collect();
    while remaining > 0 {
        for &i in &todo {
            let cc = &mut cs[i];
            if cc.done() {
                continue;
            }
            client_step(net, cc, mode, &mut out, &mut inb, &mut expect)?;
            if cc.done() {
                remaining -= 1;
            }
        }
        if remaining == 0 {
            break;
        }
        let now = Instant::now();
        if now >= deadline {
            let (s, r): (u64, u64) = cs
                .iter()
                .fold((0, 0), |(s, r), c| (s + c.sent, r + c.received));
            bail!(
                "timed out after {:.1} s with {remaining} of {conns} connections unfinished ({s} bytes sent, {r} received of {})",
                timeout.as_secs_f64(),
                total * conns as u64
            );
        }
        ready.clear();
        net.wait((deadline - now).min(Duration::from_millis(100)), &mut ready)?;
        todo.clear();
        for r in &ready {
            if let Ready::Conn(c) = r {
                if let Some(&i) = index.get(c) {
                    todo.push(i);
                }
            }
        }
        todo.sort_unstable();
        todo.dedup();
    }
    let secs = start.elapsed().as_secs_f64();
    // Both directions saw EOF; give the closes a moment to complete so that exiting does
    // not reset connections whose last ACKs are still on the way.
    let linger = Instant::now() + Duration::from_secs(1);
    let mut open: Vec<N::Conn> = cs.iter().map(|c| c.id).collect();
    while !open.is_empty() && Instant::now() < linger {
        open.retain(|&c| !net.is_closed(c));
        if !open.is_empty() {
            ready.clear();
            net.wait(Duration::from_millis(10), &mut ready)?;
        }
    }
    for c in &cs {
        net.close(c.id);
    }
    let digests: Vec<[u8; 32]> = cs.into_iter().map(|c| c.hash.finalize().into()).collect();
    let sha256 = if digests.len() == 1 {
        hex(&digests[0])
    } else {
        let mut h = Sha256::new();
        for d in &digests {
            h.update(d);
        }
        hex(&h.finalize())
    };
    let rpcs = match mode {
        Mode::Rpc { rpcs, .. } => rpcs * conns as u64,
        Mode::Stream { .. } | Mode::Send { .. } => 0,
    };
    Ok(Summary {
        conns,
        bytes: total * conns as u64,
        rpcs,
        secs,
        sha256,
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tas-echo: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.backend {
        Backend::Tas => run_on(&mut Tas::attach(cli.socket)?, cli.cmd),
        Backend::Kernel => run_on(&mut Kernel::new()?, cli.cmd),
    }
}

fn run_on<N: Net>(net: &mut N, cmd: Cmd) -> Result<()> {
    match cmd {
        Cmd::Server {
            port,
            backlog,
            max_conns,
        } => serve(net, port, backlog, max_conns),
        Cmd::Client {
            connect,
            bytes,
            rpcs,
            size,
            send_only,
            conns,
            seed,
            timeout,
        } => {
            if conns == 0 {
                bail!("--conns must be at least 1");
            }
            let mode = match (rpcs, bytes) {
                (Some(_), Some(_)) => bail!("give either --bytes or --rpcs, not both"),
                (Some(_), None) if send_only => bail!("--send-only streams --bytes; it does not go with --rpcs"),
                (Some(_), None) if size == 0 => bail!("--size must be at least 1"),
                (Some(rpcs), None) => Mode::Rpc { rpcs, size },
                (None, b) if send_only => Mode::Send {
                    bytes: b.unwrap_or(1 << 20),
                },
                (None, b) => Mode::Stream {
                    bytes: b.unwrap_or(1 << 20),
                },
            };
            if !(timeout > 0.0 && timeout.is_finite()) {
                bail!("--timeout must be a positive number of seconds");
            }
            let s = run_client(
                net,
                connect,
                mode,
                conns,
                seed,
                Duration::from_secs_f64(timeout),
            )?;
            let mbps = s.bytes as f64 / s.secs / 1e6;
            let mut line = format!(
                "tas-echo: conns={} bytes={} rpcs={} seconds={:.3} throughput={:.1}MB/s ({:.3}Gbit/s)",
                s.conns,
                s.bytes,
                s.rpcs,
                s.secs,
                mbps,
                mbps * 8.0 / 1e3
            );
            if s.rpcs > 0 {
                line += &format!(" rpc_rate={:.0}/s", s.rpcs as f64 / s.secs);
            }
            line += &format!(" sha256={}", s.sha256);
            println!("{line}");
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_positional_and_seeded() {
        let p = Pattern::new(7, 0);
        let mut a = vec![0u8; 100];
        p.fill(0, &mut a);
        let mut b = vec![0u8; 37];
        p.fill(63, &mut b);
        assert_eq!(&a[63..100], &b[..]);
        let mut c = vec![0u8; 100];
        Pattern::new(7, 1).fill(0, &mut c);
        assert_ne!(a, c);
        Pattern::new(8, 0).fill(0, &mut c);
        assert_ne!(a, c);
    }

    #[test]
    fn rpc_send_limit() {
        let cc = ClientConn {
            id: 0u32,
            pattern: Pattern::new(1, 0),
            connected: true,
            sent: 0,
            received: 0,
            total: 300,
            expect_back: 300,
            shut: false,
            eof: false,
            hash: Sha256::new(),
        };
        let m = Mode::Rpc { rpcs: 3, size: 100 };
        assert_eq!(cc.send_limit(m), 100);
        let cc = ClientConn {
            received: 100,
            ..cc
        };
        assert_eq!(cc.send_limit(m), 200);
        let cc = ClientConn {
            received: 300,
            ..cc
        };
        assert_eq!(cc.send_limit(m), 300);
    }

    #[test]
    fn send_only_expects_nothing_back() {
        let cc = ClientConn {
            id: 0u32,
            pattern: Pattern::new(1, 0),
            connected: true,
            sent: 300,
            received: 0,
            total: 300,
            expect_back: 0,
            shut: true,
            eof: false,
            hash: Sha256::new(),
        };
        let m = Mode::Send { bytes: 300 };
        assert_eq!(cc.send_limit(m), 300, "everything may go at once");
        assert!(!cc.done(), "not before the server's FIN");
        let cc = ClientConn { eof: true, ..cc };
        assert!(cc.done(), "the FIN alone completes a send-only connection");
    }
}
