//! The many-connection scale run (`tas-scale`): kernel-side clients hold up to hundreds of
//! thousands of established TCP connections to one echo server and measure echo RPC
//! throughput with few and with all of them open, in one run.
//!
//! A process may hold only as many sockets as its open-files limit allows (20,000 hard on
//! the CI machine, and raising the hard limit needs CAP_SYS_RESOURCE), so the connections
//! are spread over worker processes ([`Worker`], driven over stdin/stdout by [`run`]),
//! each with a contiguous share. Every phase runs in all workers at once, and the small
//! phases are spread the same way, so the small and large figures pay the same
//! process structure.
//!
//! Phases, in order:
//! 1. **small**: open `small` connections (100), then a closed loop over them with
//!    `window` requests in flight (each connection at most one), `duration` long,
//!    `rounds` times.
//! 2. **open**: open the rest up to `conns`, at most `connect_window` handshakes pending at
//!    once per worker; every connection must complete its handshake.
//! 3. **all**: one request on every connection, `connect_window` outstanding per worker;
//!    every echo checked. Its completion rate is reported too.
//! 4. **hold**: the caller is told (`established N` on stdout) and the run waits `hold`, so
//!    an observer can read the server's flow count and memory while every connection is up.
//! 5. **large**: the closed loop of phase 1 with the same `window`, but each new request
//!    goes to the next connection in turn over all `conns`: no two requests in a row share a
//!    connection, so every one finds its connection's state cold (the scale cost).
//! 6. **hot**: phase 1's loop over the first `small` connections again, with all `conns`
//!    still open. Phases 5 and 6 alternate `rounds` times.
//!
//! Request `s` of connection `c` is `size` bytes of a pattern of `(c, s)`, so an echo on
//! the wrong connection, a stale or a corrupt echo is an error, not a number.
//! Each worker is single-threaded (mio, edge-triggered epoll).

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::process::{Child, ChildStdin, ChildStdout};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use mio::net::TcpStream;
use mio::{Events, Interest, Poll, Token};
use serde_json::{json, Value};

/// Local ports used per source address: explicit binds from `PORT_LOW` up, so the kernel's
/// ephemeral range (about 28k ports) does not limit a source address.
pub const PORT_LOW: u16 = 1024;
/// Connections one source address can carry to one server address and port.
pub const PORTS_PER_SOURCE: usize = 65536 - PORT_LOW as usize;

/// Most measurement rounds per phase.
pub const MAX_ROUNDS: usize = 9;

/// What to run.
#[derive(Debug, Clone)]
pub struct ScaleConfig {
    /// The echo server.
    pub server: SocketAddrV4,
    /// Local addresses to connect from (explicit ports from [`PORT_LOW`] on each); empty:
    /// the kernel picks address and port (at most its ephemeral range).
    pub sources: Vec<Ipv4Addr>,
    /// Connections in all.
    pub conns: usize,
    /// Connections per worker process at most (below its open-files limit).
    pub per_proc: usize,
    /// Connections of the small phase (and the hot phase).
    pub small: usize,
    /// Requests in flight in the small, large and hot phases.
    pub window: usize,
    /// Bytes per request and per response.
    pub size: usize,
    /// Handshakes pending at once per worker while opening connections, and requests
    /// outstanding per worker in the every-connection round.
    pub connect_window: usize,
    /// Unmeasured time at the start of each measured phase.
    pub warmup: Duration,
    /// Measured time of each throughput phase.
    pub duration: Duration,
    /// Pause with every connection open, before the large phase.
    pub hold: Duration,
    /// Times each throughput phase is measured (the small one before the rest are opened;
    /// large and hot alternating after): the best of each is reported, since on a shared
    /// machine other work only ever slows a measurement down.
    pub rounds: usize,
    /// Longest time the opening and the all-connections phases may take.
    pub timeout: Duration,
}

impl ScaleConfig {
    /// Worker processes the run needs.
    pub fn procs(&self) -> usize {
        self.conns.div_ceil(self.per_proc.max(1))
    }

    /// Check the settings; the error names the flag.
    pub fn validate(&self) -> Result<()> {
        let cap = if self.sources.is_empty() {
            28_000
        } else {
            self.sources.len() * PORTS_PER_SOURCE
        };
        if self.conns == 0 || self.conns > cap {
            bail!(
                "--conns must be between 1 and {cap} with {} source address(es) (give more --source addresses)",
                self.sources.len()
            );
        }
        if self.per_proc == 0 {
            bail!("--per-proc must be at least 1");
        }
        let procs = self.procs();
        if self.small < procs || self.small > self.conns {
            bail!(
                "--small must be between the number of worker processes ({procs}) and --conns ({})",
                self.conns
            );
        }
        if self.window < procs || self.window > self.small {
            bail!("--window must be between the number of worker processes ({procs}) and --small ({})", self.small);
        }
        if self.size == 0 || self.size > 16 << 10 {
            bail!("--size must be between 1 and 16384 bytes");
        }
        if self.rounds == 0 || self.rounds > MAX_ROUNDS {
            bail!("--rounds must be between 1 and {MAX_ROUNDS}");
        }
        if self.connect_window == 0 {
            bail!("--connect-window must be at least 1");
        }
        if self.duration.is_zero() {
            bail!("--duration must be more than 0 seconds");
        }
        Ok(())
    }

    /// The share of worker `k`: its first global connection index and its count.
    pub fn share(&self, k: usize) -> (usize, usize) {
        let (first, count) = split(self.conns, self.procs(), k);
        (first, count)
    }

    /// What worker `k` is started with.
    pub fn worker_spec(&self, k: usize) -> WorkerSpec {
        let (first, count) = self.share(k);
        WorkerSpec {
            server: self.server,
            sources: self.sources.clone(),
            first,
            count,
            size: self.size,
            connect_window: self.connect_window,
            timeout: self.timeout,
        }
    }
}

/// `n` items over `parts` parts as evenly as possible: part `k`'s (start, count).
fn split(n: usize, parts: usize, k: usize) -> (usize, usize) {
    let base = n / parts;
    let extra = n % parts;
    let count = base + (k < extra) as usize;
    let start = k * base + k.min(extra);
    (start, count)
}

/// The throughput of one phase.
#[derive(Debug, Clone, Copy, Default)]
pub struct Phase {
    /// Connections the requests went over.
    pub conns: usize,
    /// Requests completed in the measured interval.
    pub requests: u64,
    /// The measured interval, seconds.
    pub seconds: f64,
    /// requests / seconds.
    pub rps: f64,
}

/// What a run measured.
#[derive(Debug, Clone, Copy, Default)]
pub struct ScaleResult {
    /// Worker processes.
    pub procs: usize,
    /// Phase 1: `small` connections open (the best round).
    pub small: Phase,
    /// Phase 2: connections opened after the small phase.
    pub opened: usize,
    /// Seconds phase 2 took.
    pub open_seconds: f64,
    /// Phase 3: one request on every connection: all completed, seconds taken.
    pub all: Phase,
    /// Phase 5: round robin over every connection (the best round).
    pub large: Phase,
    /// Phase 6: the small set again, everything still open (the best round).
    pub hot: Phase,
    /// Requests/s of every round of the small, large and hot phases, in order.
    pub rounds: [[f64; MAX_ROUNDS]; 3],
    /// Bytes checked in every echo of the run.
    pub bytes_checked: u64,
}

impl ScaleResult {
    /// Throughput over all connections relative to the throughput with `small` open.
    pub fn ratio(&self) -> f64 {
        self.large.rps / self.small.rps
    }
}

/// One worker's share of the connections.
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The echo server.
    pub server: SocketAddrV4,
    /// Source addresses (see [`ScaleConfig::sources`]).
    pub sources: Vec<Ipv4Addr>,
    /// Global index of the worker's first connection (it picks the source address and
    /// port, and the request pattern).
    pub first: usize,
    /// Connections of this worker.
    pub count: usize,
    /// Bytes per request.
    pub size: usize,
    /// Handshakes pending at once.
    pub connect_window: usize,
    /// Longest time opening, or one all-at-once round, may take.
    pub timeout: Duration,
}

struct Conn {
    stream: TcpStream,
    established: bool,
    /// A request is outstanding.
    busy: bool,
    /// Requests completed (the number of the next one).
    seq: u32,
    /// Bytes of the outstanding request written / of its response read.
    out_off: u16,
    in_off: u16,
}

/// Byte `j` of request `seq` of connection `conn` (global index).
#[inline]
fn pattern(conn: usize, seq: u32, j: usize) -> u8 {
    let x = (conn as u64).wrapping_mul(0x9E37_79B9)
        ^ (seq as u64).wrapping_mul(0x85EB_CA6B)
        ^ (j as u64);
    (x % 251) as u8
}

/// The source address and port of global connection `i`, if sources are given.
fn source_of(sources: &[Ipv4Addr], i: usize) -> Option<SocketAddrV4> {
    if sources.is_empty() {
        return None;
    }
    let src = sources[i / PORTS_PER_SOURCE];
    Some(SocketAddrV4::new(
        src,
        PORT_LOW + (i % PORTS_PER_SOURCE) as u16,
    ))
}

/// One client process: its connections, the poller and the counters of the phase running.
pub struct Worker {
    spec: WorkerSpec,
    poll: Poll,
    events: Events,
    conns: Vec<Conn>,
    buf: Vec<u8>,
    out: Vec<u8>,
    /// Requests outstanding.
    inflight: usize,
    /// Completions inside the measured interval.
    measured: u64,
    measure_from: Instant,
    measure_to: Instant,
    bytes_checked: u64,
}

impl Worker {
    /// A worker with no connection yet.
    pub fn new(spec: WorkerSpec) -> Result<Worker> {
        Ok(Worker {
            poll: Poll::new().context("epoll_create")?,
            events: Events::with_capacity(4096),
            conns: Vec::with_capacity(spec.count),
            buf: vec![0u8; 64 << 10],
            out: vec![0u8; spec.size],
            inflight: 0,
            measured: 0,
            measure_from: Instant::now(),
            measure_to: Instant::now(),
            bytes_checked: 0,
            spec,
        })
    }

    fn poll(&mut self, timeout: Duration) -> Result<Vec<usize>> {
        match self.poll.poll(&mut self.events, Some(timeout)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e).context("epoll_wait"),
        }
        Ok(self.events.iter().map(|e| e.token().0).collect())
    }

    fn open_one(&mut self, i: usize) -> Result<()> {
        let g = self.spec.first + i;
        let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)
            .context("socket (is the open-files limit high enough for --per-proc?)")?;
        sock.set_nonblocking(true)?;
        sock.set_tcp_nodelay(true)?;
        if let Some(src) = source_of(&self.spec.sources, g) {
            sock.bind(&SocketAddr::V4(src).into()).with_context(|| {
                format!("binding connection {g} to {src} (is the address configured?)")
            })?;
        }
        match sock.connect(&SocketAddr::V4(self.spec.server).into()) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("connecting connection {g} to {}", self.spec.server))
            }
        }
        let mut stream = TcpStream::from_std(std::net::TcpStream::from(sock));
        self.poll.registry().register(
            &mut stream,
            Token(i),
            Interest::READABLE | Interest::WRITABLE,
        )?;
        self.conns.push(Conn {
            stream,
            established: false,
            busy: false,
            seq: 0,
            out_off: 0,
            in_off: 0,
        });
        Ok(())
    }

    /// Open connections until `n` are established, at most `connect_window` pending at
    /// once; returns the seconds it took.
    pub fn open(&mut self, n: usize) -> Result<f64> {
        let n = n.min(self.spec.count);
        let t = Instant::now();
        let deadline = t + self.spec.timeout;
        let mut pending = self.conns.iter().filter(|c| !c.established).count();
        let mut up = self.conns.len() - pending;
        while up < n {
            while self.conns.len() < n && pending < self.spec.connect_window {
                self.open_one(self.conns.len())?;
                pending += 1;
            }
            let now = Instant::now();
            if now >= deadline {
                bail!(
                    "{} of {n} connections to {} not established within {:?} ({pending} handshakes pending)",
                    n - up,
                    self.spec.server,
                    self.spec.timeout,
                );
            }
            for i in self.poll((deadline - now).min(Duration::from_millis(100)))? {
                let c = &mut self.conns[i];
                if c.established {
                    continue;
                }
                let g = self.spec.first + i;
                if let Some(e) = c.stream.take_error()? {
                    bail!("connection {g} to {}: {e}", self.spec.server);
                }
                match c.stream.peer_addr() {
                    Ok(_) => {
                        c.established = true;
                        pending -= 1;
                        up += 1;
                    }
                    Err(e) if e.kind() == ErrorKind::NotConnected => {}
                    Err(e) => bail!("connection {g} to {}: {e}", self.spec.server),
                }
            }
        }
        Ok(t.elapsed().as_secs_f64())
    }

    /// Start the next request on connection `i` (idle), writing what fits.
    fn issue(&mut self, i: usize) -> Result<()> {
        let c = &mut self.conns[i];
        debug_assert!(!c.busy);
        c.busy = true;
        c.out_off = 0;
        c.in_off = 0;
        self.inflight += 1;
        self.write(i)
    }

    fn write(&mut self, i: usize) -> Result<()> {
        let size = self.spec.size;
        let g = self.spec.first + i;
        let c = &mut self.conns[i];
        while c.busy && (c.out_off as usize) < size {
            for (j, b) in self.out[..size].iter_mut().enumerate() {
                *b = pattern(g, c.seq, j);
            }
            match c.stream.write(&self.out[c.out_off as usize..size]) {
                Ok(n) => c.out_off += n as u16,
                Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("connection {g}: send")),
            }
        }
        Ok(())
    }

    /// Read what connection `i` has; true if its response completed.
    fn read(&mut self, i: usize) -> Result<bool> {
        let size = self.spec.size;
        let g = self.spec.first + i;
        let mut done = false;
        loop {
            let c = &mut self.conns[i];
            match c.stream.read(&mut self.buf) {
                Ok(0) => bail!("connection {g}: the server closed it"),
                Ok(n) => {
                    if !c.busy || c.in_off as usize + n > size {
                        bail!(
                            "connection {g}: {} bytes arrived that no request asked for",
                            (c.in_off as usize + n).saturating_sub(if c.busy { size } else { 0 })
                        );
                    }
                    for (k, &b) in self.buf[..n].iter().enumerate() {
                        let j = c.in_off as usize + k;
                        let want = pattern(g, c.seq, j);
                        if b != want {
                            bail!(
                                "connection {g}: response {} byte {j} is {b:#04x}, the request had {want:#04x}",
                                c.seq
                            );
                        }
                    }
                    c.in_off += n as u16;
                    self.bytes_checked += n as u64;
                    if c.in_off as usize == size {
                        c.busy = false;
                        c.seq += 1;
                        self.inflight -= 1;
                        let t = Instant::now();
                        if t >= self.measure_from && t < self.measure_to {
                            self.measured += 1;
                        }
                        done = true;
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(done),
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(e).with_context(|| format!("connection {g}: receive")),
            }
        }
    }

    /// A closed loop over connections `0..set`: `window` requests in flight, each new one
    /// on the next idle connection in turn. Returns after `warmup + duration` and once the
    /// requests still outstanding are answered (so every connection is idle again).
    pub fn closed_loop(
        &mut self,
        set: usize,
        window: usize,
        warmup: Duration,
        duration: Duration,
    ) -> Result<Phase> {
        let set = set.min(self.conns.len());
        let window = window.min(set);
        let start = Instant::now();
        self.measure_from = start + warmup;
        self.measure_to = self.measure_from + duration;
        self.measured = 0;
        let mut next = 0usize;
        let mut issue_next = |me: &mut Self| -> Result<()> {
            // window <= set, so an idle connection exists; skip the busy ones.
            loop {
                let i = next;
                next = if next + 1 == set { 0 } else { next + 1 };
                if !me.conns[i].busy {
                    return me.issue(i);
                }
            }
        };
        for _ in 0..window {
            issue_next(self)?;
        }
        let drain_deadline = self.measure_to + self.spec.timeout;
        loop {
            let now = Instant::now();
            if now >= self.measure_to && self.inflight == 0 {
                break;
            }
            if now >= drain_deadline {
                bail!(
                    "{} requests not answered within {:?} of the phase's end",
                    self.inflight,
                    self.spec.timeout
                );
            }
            for i in self.poll(Duration::from_millis(10))? {
                self.write(i)?;
                // Outside the set nothing is outstanding, so any byte there is an error.
                if self.read(i)? && i < set && Instant::now() < self.measure_to {
                    issue_next(self)?;
                }
            }
        }
        Ok(Phase {
            conns: set,
            requests: self.measured,
            seconds: duration.as_secs_f64(),
            rps: self.measured as f64 / duration.as_secs_f64(),
        })
    }

    /// One request on every connection, at most `window` outstanding at once; every echo
    /// checked.
    pub fn every_once(&mut self, window: usize) -> Result<Phase> {
        let n = self.conns.len();
        let window = window.clamp(1, n.max(1));
        let start = Instant::now();
        self.measure_from = start;
        self.measure_to = start + self.spec.timeout;
        self.measured = 0;
        let mut next = 0;
        while next < window.min(n) {
            self.issue(next)?;
            next += 1;
        }
        while self.inflight > 0 {
            if Instant::now() >= self.measure_to {
                bail!(
                    "{} of {n} connections did not echo within {:?} ({} not yet asked)",
                    self.inflight,
                    self.spec.timeout,
                    n - next
                );
            }
            for i in self.poll(Duration::from_millis(10))? {
                self.write(i)?;
                if self.read(i)? && next < n {
                    self.issue(next)?;
                    next += 1;
                }
            }
        }
        let seconds = start.elapsed().as_secs_f64();
        Ok(Phase {
            conns: n,
            requests: n as u64,
            seconds,
            rps: n as f64 / seconds,
        })
    }

    /// Every connection still established and idle: none was reset or closed.
    pub fn check(&mut self) -> Result<u64> {
        for (i, c) in self.conns.iter().enumerate() {
            let g = self.spec.first + i;
            if let Some(e) = c.stream.take_error()? {
                bail!("connection {g}: {e}");
            }
            c.stream
                .peer_addr()
                .with_context(|| format!("connection {g} is no longer connected"))?;
        }
        for i in 0..self.conns.len() {
            self.read(i)?;
        }
        Ok(self.bytes_checked)
    }

    /// Serve commands, one per line, each answered with one JSON line, until end of input:
    /// `open N`, `loop SET WINDOW WARMUP_S DURATION_S`, `once WINDOW`, `check`. A failed command
    /// is answered `{"ok":false,"error":..}` and ends the worker with the error.
    pub fn serve(mut self, input: impl BufRead, mut output: impl Write) -> Result<()> {
        let phase = |p: Phase| json!({"ok": true, "conns": p.conns, "requests": p.requests, "seconds": p.seconds});
        for line in input.lines() {
            let line = line.context("reading a command")?;
            let w: Vec<&str> = line.split_whitespace().collect();
            let num = |k: usize| -> Result<f64> {
                w.get(k).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| {
                    anyhow!("command {line:?}: argument {k} missing or not a number")
                })
            };
            let r: Result<Value> = (|| match w.first().copied() {
                Some("open") => Ok(json!({"ok": true, "seconds": self.open(num(1)? as usize)?})),
                Some("loop") => Ok(phase(self.closed_loop(
                    num(1)? as usize,
                    num(2)? as usize,
                    Duration::from_secs_f64(num(3)?),
                    Duration::from_secs_f64(num(4)?),
                )?)),
                Some("once") => Ok(phase(self.every_once(num(1)? as usize)?)),
                Some("check") => Ok(json!({"ok": true, "bytes_checked": self.check()?})),
                _ => bail!("unknown command {line:?}"),
            })();
            let (v, err) = match r {
                Ok(v) => (v, None),
                Err(e) => (json!({"ok": false, "error": format!("{e:#}")}), Some(e)),
            };
            writeln!(output, "{v}")?;
            output.flush()?;
            if let Some(e) = err {
                return Err(e);
            }
        }
        Ok(())
    }
}

/// A started worker process and its command pipe.
pub struct WorkerProc {
    child: Child,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl WorkerProc {
    /// Take a child started with piped stdin and stdout.
    pub fn new(mut child: Child) -> Result<Self> {
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| anyhow!("worker started without a stdin pipe"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or_else(|| anyhow!("worker started without a stdout pipe"))?;
        Ok(WorkerProc {
            child,
            stdin,
            stdout: BufReader::new(stdout),
        })
    }
}

impl Drop for WorkerProc {
    fn drop(&mut self) {
        // Closing stdin ends a worker that is between commands; one stuck in a command is
        // killed (it is our own child, by its handle).
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Send `cmds[k]` to worker `k`, all first, then read every answer (the workers run the
/// command at the same time).
fn broadcast(workers: &mut [WorkerProc], cmds: &[String]) -> Result<Vec<Value>> {
    for (k, (w, c)) in workers.iter_mut().zip(cmds).enumerate() {
        writeln!(w.stdin, "{c}")
            .and_then(|_| w.stdin.flush())
            .with_context(|| format!("worker {k} is gone (sending {c:?})"))?;
    }
    let mut out = Vec::with_capacity(workers.len());
    for (k, (w, c)) in workers.iter_mut().zip(cmds).enumerate() {
        let mut line = String::new();
        w.stdout
            .read_line(&mut line)
            .with_context(|| format!("worker {k}: reading its answer"))?;
        if line.is_empty() {
            bail!("worker {k} exited during {c:?} (its stderr tells why)");
        }
        let v: Value = serde_json::from_str(line.trim())
            .with_context(|| format!("worker {k}: not JSON: {line:?}"))?;
        if v["ok"] != true {
            bail!(
                "worker {k}, {c:?}: {}",
                v["error"].as_str().unwrap_or("failed")
            );
        }
        out.push(v);
    }
    Ok(out)
}

/// Sum the workers' answers to one phase: requests add up, the interval is the longest.
fn sum_phase(answers: &[Value], conns: usize) -> Phase {
    let requests: u64 = answers
        .iter()
        .map(|v| v["requests"].as_u64().unwrap_or(0))
        .sum();
    let seconds = answers
        .iter()
        .map(|v| v["seconds"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    Phase {
        conns,
        requests,
        seconds,
        rps: if seconds > 0.0 {
            requests as f64 / seconds
        } else {
            0.0
        },
    }
}

/// Run every phase with [`ScaleConfig::procs`] workers, started by `spawn` (worker `k` must
/// run [`Worker::serve`] on [`ScaleConfig::worker_spec`]`(k)`, with stdin and stdout piped).
/// `established` is called once all connections are up and have echoed (phase 4).
pub fn run(
    cfg: &ScaleConfig,
    spawn: impl Fn(usize, &WorkerSpec) -> Result<Child>,
    mut established: impl FnMut(usize),
) -> Result<ScaleResult> {
    cfg.validate()?;
    let procs = cfg.procs();
    let mut workers = Vec::with_capacity(procs);
    for k in 0..procs {
        let child =
            spawn(k, &cfg.worker_spec(k)).with_context(|| format!("starting worker {k}"))?;
        workers.push(WorkerProc::new(child)?);
    }
    let per = |n: usize| (0..procs).map(move |k| split(n, procs, k).1);
    let secs = |d: Duration| d.as_secs_f64();
    let loop_cmds = |set: usize| -> Vec<String> {
        per(set)
            .zip(per(cfg.window))
            .map(|(s, w)| format!("loop {s} {w} {} {}", secs(cfg.warmup), secs(cfg.duration)))
            .collect()
    };
    let mut r = ScaleResult {
        procs,
        ..ScaleResult::default()
    };
    let open: Vec<String> = per(cfg.small).map(|n| format!("open {n}")).collect();
    broadcast(&mut workers, &open)?;
    let best = |a: Phase, b: Phase| if b.rps > a.rps { b } else { a };
    for k in 0..cfg.rounds {
        let p = sum_phase(&broadcast(&mut workers, &loop_cmds(cfg.small))?, cfg.small);
        r.rounds[0][k] = p.rps;
        r.small = best(r.small, p);
    }
    let open: Vec<String> = per(cfg.conns).map(|n| format!("open {n}")).collect();
    let a = broadcast(&mut workers, &open)?;
    r.open_seconds = a
        .iter()
        .map(|v| v["seconds"].as_f64().unwrap_or(0.0))
        .fold(0.0, f64::max);
    r.opened = cfg.conns - cfg.small;
    let once: Vec<String> = per(cfg.connect_window * procs)
        .map(|w| format!("once {w}"))
        .collect();
    r.all = sum_phase(&broadcast(&mut workers, &once)?, cfg.conns);
    established(cfg.conns);
    std::thread::sleep(cfg.hold);
    for k in 0..cfg.rounds {
        let p = sum_phase(&broadcast(&mut workers, &loop_cmds(cfg.conns))?, cfg.conns);
        r.rounds[1][k] = p.rps;
        r.large = best(r.large, p);
        let p = sum_phase(&broadcast(&mut workers, &loop_cmds(cfg.small))?, cfg.small);
        r.rounds[2][k] = p.rps;
        r.hot = best(r.hot, p);
    }
    let a = broadcast(&mut workers, &vec!["check".to_string(); procs])?;
    r.bytes_checked = a
        .iter()
        .map(|v| v["bytes_checked"].as_u64().unwrap_or(0))
        .sum();
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A blocking server on the loopback, one thread per connection, that answers with
    /// `reply`.
    fn server(reply: fn(&[u8]) -> Vec<u8>) -> SocketAddrV4 {
        match crate::bench::test_support::loopback_server(reply) {
            SocketAddr::V4(a) => a,
            SocketAddr::V6(_) => unreachable!("bound to 127.0.0.1"),
        }
    }

    fn spec(server: SocketAddrV4, first: usize, count: usize) -> WorkerSpec {
        WorkerSpec {
            server,
            sources: vec![],
            first,
            count,
            size: 64,
            connect_window: 16,
            timeout: Duration::from_secs(10),
        }
    }

    /// A worker driven through its command protocol, in process.
    #[test]
    fn a_worker_runs_every_command_and_checks_every_echo() {
        let mut w = Worker::new(spec(server(|b| b.to_vec()), 1000, 40)).unwrap();
        assert!(w.open(10).unwrap() >= 0.0);
        let p = w
            .closed_loop(10, 5, Duration::from_millis(20), Duration::from_millis(200))
            .unwrap();
        assert!(p.requests > 10 && p.conns == 10, "{p:?}");
        w.open(40).unwrap();
        assert_eq!(w.conns.len(), 40);
        let a = w.every_once(7).unwrap();
        assert_eq!((a.requests, a.conns), (40, 40));
        let cmds = "loop 40 5 0.01 0.1\nloop 10 5 0 0.1\ncheck\n";
        let mut out = Vec::new();
        w.serve(cmds.as_bytes(), &mut out).unwrap();
        let answers: Vec<Value> = String::from_utf8(out)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(answers.len(), 3);
        assert!(answers.iter().all(|v| v["ok"] == true), "{answers:?}");
        assert_eq!(answers[0]["conns"], 40);
        // Every byte of every echo was compared: at least the requests counted.
        let checked = answers[2]["bytes_checked"].as_u64().unwrap();
        assert!(checked >= 64 * (p.requests + 40), "{checked}");
    }

    #[test]
    fn a_wrong_echo_is_an_error() {
        let mut w = Worker::new(spec(server(|b| b.iter().map(|x| x ^ 1).collect()), 0, 4)).unwrap();
        w.open(4).unwrap();
        let e = w.every_once(100).unwrap_err();
        assert!(e.to_string().contains("the request had"), "{e:#}");
        let mut w = Worker::new(spec(server(|b| b.to_vec()), 0, 4)).unwrap();
        let mut out = Vec::new();
        assert!(w.open(4).is_ok());
        assert!(w.serve("bogus 1\n".as_bytes(), &mut out).is_err());
        assert!(String::from_utf8(out).unwrap().contains("\"ok\":false"));
    }

    #[test]
    fn shares_and_source_ports_cover_every_connection_once() {
        let mut c = ScaleConfig {
            server: "127.0.0.1:7".parse().unwrap(),
            sources: vec![Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3)],
            conns: 100_000,
            per_proc: 19_000,
            small: 100,
            window: 100,
            size: 64,
            connect_window: 1000,
            warmup: Duration::ZERO,
            duration: Duration::from_secs(1),
            hold: Duration::ZERO,
            timeout: Duration::from_secs(1),
            rounds: 3,
        };
        c.validate().unwrap();
        assert_eq!(c.procs(), 6);
        let mut next = 0;
        for k in 0..6 {
            let (first, count) = c.share(k);
            assert_eq!(first, next);
            assert!(count <= c.per_proc);
            next += count;
        }
        assert_eq!(next, 100_000);
        assert_eq!((0..6).map(|k| split(100, 6, k).1).sum::<usize>(), 100);
        let mut seen = std::collections::HashSet::new();
        for i in 0..2 * PORTS_PER_SOURCE {
            let s = source_of(&c.sources, i).unwrap();
            assert!(s.port() >= PORT_LOW);
            assert!(seen.insert(s), "{s} twice");
        }
        c.conns = 2 * PORTS_PER_SOURCE + 1;
        assert!(c.validate().unwrap_err().to_string().contains("--source"));
        c.conns = 100_000;
        c.window = 5;
        assert!(c.validate().unwrap_err().to_string().contains("--window"));
        c.window = 100;
        c.small = 100_001;
        assert!(c.validate().unwrap_err().to_string().contains("--small"));
    }
}
