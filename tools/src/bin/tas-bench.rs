//! `tas-bench`: this stack against the Linux kernel's TCP, side by side, in one run.
//!
//! ```text
//! tas-bench compare [--quick] [--out FILE.md] [--chart FILE.png] [--json] [pinning flags]
//!                   [--only echo,bulk,redis,sockperf,iperf3] [--idle-spin-us US] [--app-spin-us US]
//! tas-bench load --connect IP:PORT [--conns N] [--depth D] [--size S] [--rate R] [--duration SECS]
//! ```
//!
//! `compare` (root) makes its own sandbox (deploy/sandbox.sh; namespaces `tasv-PID-0-a/b`,
//! so deploy/test.sh's orphan cleanup knows them),
//! starts tasd in namespace A and, for every workload, runs the same load from the kernel
//! in namespace B against the server on this stack and then against the server on the
//! kernel, back to back. It prints one aligned table (both results and the ratio), the
//! fast path's cycle accounting per workload, and writes a markdown section (between
//! markers, into `--out`) and a PNG chart. The sandbox and every process are removed at
//! the end, after an error, and on Ctrl-C/SIGTERM.
//!
//! `load` is the RPC load generator it runs in namespace B (tools/src/bench/load.rs); it
//! prints one JSON line.
//!
//! **Adding a workload**: write a function like [`echo_rpc`], [`sockperf`] or [`redis`]
//! that, for [`Side::Stack`] and [`Side::Kernel`], starts the server in namespace A with
//! [`Bed::spawn_a`] (our programs) or [`Bed::spawn_a_program`] (an unmodified program: under
//! the LD_PRELOAD shim on the stack side, plain on the kernel side), runs the client in B
//! with [`Bed::run_b`], and returns [`Row`]s; give it a [`Group`] and call it from
//! [`compare`]. A stack-side failure of a program under the shim is recorded in its rows
//! (`failed`, see [`failure_reason`]), not fixed here. The test `tools/tests/bench.rs`
//! checks that every row is complete or says why it failed; add the new workload's name
//! to its list.
#![deny(unsafe_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::sleep;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Parser, Subcommand};
use serde_json::{json, Value};
use tas_tools::bench::load::{self, LoadConfig};
use tas_tools::bench::report::{self, Better, Row};

#[derive(Parser, Debug)]
#[command(
    name = "tas-bench",
    about = "Compare this TCP stack with the Linux kernel's, side by side, in one run"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand, Debug)]
enum Cmd {
    /// Run every workload on the stack and on the kernel (needs root: namespaces, XDP).
    Compare(CompareArgs),
    /// The RPC load generator (kernel sockets); prints one JSON line.
    Load(LoadArgs),
}

#[derive(Args, Debug)]
struct CompareArgs {
    /// Short runs (about a second per measurement; CI): checks that everything works, the
    /// numbers are rough.
    #[arg(long)]
    quick: bool,
    /// Markdown file to write the results section into, between the markers
    /// `<!-- tas-bench compare: begin ... -->` and `<!-- tas-bench compare: end -->`
    /// (appended with them if absent), e.g. docs/benchmarks.md.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
    /// PNG bar chart of the ratios [default: next to --out as tas-bench-compare.png, else
    /// none].
    #[arg(long, value_name = "FILE")]
    chart: Option<PathBuf>,
    /// Print the results as one JSON document instead of tables.
    #[arg(long)]
    json: bool,
    /// Directory of tasd, tas-echo, tas-kv, tasctl [default: the directory of this binary].
    #[arg(long, value_name = "DIR")]
    bin_dir: Option<PathBuf>,
    /// CPU of tasd's fast-path core.
    #[arg(long, default_value_t = 1)]
    fp_cpu: usize,
    /// CPU of the server application on the stack (it cannot share the busy-polling fast
    /// path's CPU without losing whole time slices).
    #[arg(long, default_value_t = 0)]
    stack_server_cpu: usize,
    /// CPU of the server application on the kernel.
    #[arg(long, default_value_t = 1)]
    kernel_server_cpu: usize,
    /// CPU of the clients (load generator, redis-benchmark) in namespace B.
    #[arg(long, default_value_t = 0)]
    client_cpu: usize,
    /// Skip the redis-benchmark rows (when redis-tools / redis-server are not installed).
    #[arg(long)]
    no_redis: bool,
    /// Keep the run directory (process logs) after the run.
    #[arg(long)]
    keep: bool,
    /// Run only these workload groups (comma separated): echo, bulk, redis, sockperf,
    /// iperf3 [default: all].
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    only: Vec<Group>,
    /// tasd's `idle_spin_us` (microseconds a fast-path core polls without work before it
    /// sleeps) [default: tasd's, 50].
    #[arg(long, value_name = "US")]
    idle_spin_us: Option<u64>,
    /// `TAS_SPIN_US` for the applications on the stack (libtas spins this long before it
    /// sleeps in a blocking call) [default: libtas's, 50].
    #[arg(long, value_name = "US")]
    app_spin_us: Option<u64>,
}

/// The workload groups `--only` selects from.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
enum Group {
    /// RPC echo with our load generator (closed and open loop).
    Echo,
    /// Bulk streams through the echo server.
    Bulk,
    /// redis-benchmark against tas-kv and redis-server (on the kernel and under the shim).
    Redis,
    /// sockperf ping-pong and throughput, server under the shim.
    Sockperf,
    /// iperf3 bulk, server under the shim.
    Iperf3,
}

#[derive(Args, Debug)]
struct LoadArgs {
    /// Echo server, IPv4:PORT.
    #[arg(long)]
    connect: std::net::SocketAddr,
    /// Connections.
    #[arg(long, default_value_t = 64)]
    conns: usize,
    /// Requests in flight per connection (closed loop), or at most (open loop).
    #[arg(long, default_value_t = 1)]
    depth: usize,
    /// Request and response size, bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Open loop at this many requests/s (all connections together); 0 = closed loop.
    #[arg(long, default_value_t = 0.0)]
    rate: f64,
    /// Seconds measured.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Seconds of load before measuring.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
}

// ---- signals ------------------------------------------------------------------------------

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// SIGINT/SIGTERM set a flag that every wait checks; the drop guards then tear down.
/// The children in the namespaces get the terminal's SIGINT themselves; `sandbox.sh down`
/// ends whatever is left by PID.
mod signals {
    #![allow(unsafe_code)]
    use super::INTERRUPTED;
    use std::sync::atomic::Ordering;

    extern "C" fn on_signal(_: libc::c_int) {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    pub fn install() {
        for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
            // SAFETY: on_signal is async-signal-safe (one atomic store) and has the
            // signature signal() expects; replacing the default disposition of these three
            // signals is all this does.
            unsafe { libc::signal(sig, on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t) };
        }
    }
}

fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted: tearing the sandbox down");
    }
    Ok(())
}

fn pause(d: Duration) -> Result<()> {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupted()?;
        sleep(Duration::from_millis(20).min(end.saturating_duration_since(Instant::now())));
    }
    Ok(())
}

// ---- the test bed -------------------------------------------------------------------------

const IP_A: &str = "10.77.0.1";
const IP_B: &str = "10.77.0.2";
const IF_A: &str = "tas0";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    /// The server on this stack (attached to tasd).
    Stack,
    /// The server on the kernel's sockets.
    Kernel,
}

struct Proc {
    child: Child,
}

/// The sandbox, tasd, and everything started in it; all removed on drop.
struct Bed {
    bins: PathBuf,
    sandbox: PathBuf,
    ns_a: String,
    ns_b: String,
    run: PathBuf,
    procs: Vec<Proc>,
    keep: bool,
    up: bool,
    tasd: u32,
    /// `TAS_SPIN_US` for applications on the stack, if set.
    app_spin_us: Option<u64>,
}

impl Bed {
    fn up(bins: PathBuf, repo: &Path, keep: bool) -> Result<Bed> {
        let id = std::process::id();
        let run = std::env::temp_dir().join(format!("tas-bench-{id}"));
        let _ = fs::remove_dir_all(&run);
        fs::create_dir_all(&run).with_context(|| format!("creating {}", run.display()))?;
        let mut bed = Bed {
            bins,
            sandbox: repo.join("deploy/sandbox.sh"),
            // deploy/test.sh removes tasv-PID-N-* sandboxes whose PID is gone.
            ns_a: format!("tasv-{id}-0-a"),
            ns_b: format!("tasv-{id}-0-b"),
            run,
            procs: Vec::new(),
            keep,
            up: false,
            tasd: 0,
            app_spin_us: None,
        };
        // Marked up before trying: a half-made sandbox is removed by drop too.
        bed.up = true;
        let out = bed.sandbox_cmd("up")?;
        if !out.status.success() {
            bail!(
                "deploy/sandbox.sh up failed ({}): {}\nCheck that this runs as root and that \
                 iproute2 and ethtool are installed (deploy/install-deps.sh)",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(bed)
    }

    fn sandbox_cmd(&self, verb: &str) -> Result<std::process::Output> {
        Command::new("bash")
            .arg(&self.sandbox)
            .arg(verb)
            .env("TAS_NS_A", &self.ns_a)
            .env("TAS_NS_B", &self.ns_b)
            .env("TAS_IP_A", IP_A)
            .env("TAS_IP_B", IP_B)
            .env("TAS_IF_A", IF_A)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running bash {}", self.sandbox.display()))
    }

    fn bin(&self, name: &str) -> String {
        self.bins.join(name).to_string_lossy().into_owned()
    }

    fn app_socket(&self) -> PathBuf {
        self.run.join("tasd.sock")
    }

    fn control_socket(&self) -> PathBuf {
        self.run.join("control.sock")
    }

    /// Start `cmd` in namespace `ns` pinned to `cpu` (taskset; `ip netns exec` and taskset
    /// both exec, so the PID is the program's own).
    fn spawn(&mut self, ns: &str, name: &str, cpu: Option<usize>, cmd: &[&str], env: &[(&str, &Path)]) -> Result<u32> {
        check_interrupted()?;
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]);
        if let Some(cpu) = cpu {
            c.args(["taskset", "-c", &cpu.to_string()]);
        }
        c.args(cmd).stdin(Stdio::null());
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(fs::File::create(self.run.join(format!("{name}.out")))?);
        c.stderr(fs::File::create(self.run.join(format!("{name}.err")))?);
        let child = c.spawn().with_context(|| format!("starting {cmd:?} in {ns}"))?;
        let pid = child.id();
        self.procs.push(Proc { child });
        Ok(pid)
    }

    fn spawn_a(&mut self, name: &str, cpu: Option<usize>, cmd: &[&str], on_stack: bool) -> Result<u32> {
        let sock = self.app_socket();
        let spin = self.app_spin_us.map(|us| PathBuf::from(us.to_string()));
        let mut env: Vec<(&str, &Path)> = if on_stack { vec![("TAS_SOCKET", &sock)] } else { vec![] };
        if let (true, Some(s)) = (on_stack, &spin) {
            env.push(("TAS_SPIN_US", s.as_path()));
        }
        let ns = self.ns_a.clone();
        self.spawn(&ns, name, cpu, cmd, &env)
    }

    /// Start an unmodified program in namespace A on the stack through the LD_PRELOAD shim
    /// (`libtas_preload.so` next to the other binaries, attached to this bed's tasd; no
    /// fallback to kernel sockets), or on the kernel without it.
    fn spawn_a_program(&mut self, name: &str, cpu: Option<usize>, cmd: &[&str], side: Side, app_spin_us: Option<u64>) -> Result<u32> {
        let lib = self.bins.join("libtas_preload.so");
        let sock = self.app_socket();
        let fail = PathBuf::from("fail");
        let spin = app_spin_us.map(|us| PathBuf::from(us.to_string()));
        let mut env: Vec<(&str, &Path)> = Vec::new();
        if side == Side::Stack {
            env.extend([("LD_PRELOAD", lib.as_path()), ("TAS_SOCKET", sock.as_path()), ("TAS_PRELOAD_FALLBACK", fail.as_path())]);
            if let Some(s) = &spin {
                env.push(("TAS_SPIN_US", s.as_path()));
            }
        }
        let ns = self.ns_a.clone();
        self.spawn(&ns, name, cpu, cmd, &env)
    }

    fn exited(&mut self, pid: u32) -> Option<std::process::ExitStatus> {
        let p = self.procs.iter_mut().find(|p| p.child.id() == pid)?;
        p.child.try_wait().ok().flatten()
    }

    fn log(&self, name: &str) -> String {
        let read = |s: &str| fs::read_to_string(self.run.join(format!("{name}.{s}"))).unwrap_or_default();
        let (o, e) = (read("out"), read("err"));
        let tail = |t: &str| t.lines().rev().take(20).collect::<Vec<_>>().into_iter().rev().collect::<Vec<_>>().join("\n");
        format!("{}\n{}", tail(&o), tail(&e)).trim().to_string()
    }

    /// Run a command in namespace B pinned to `cpu` to completion; its stdout.
    fn run_b(&mut self, name: &str, cpu: usize, cmd: &[&str], timeout: Duration) -> Result<String> {
        let ns = self.ns_b.clone();
        let pid = self.spawn(&ns, name, Some(cpu), cmd, &[])?;
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.exited(pid) {
                break s;
            }
            if INTERRUPTED.load(Ordering::SeqCst) || Instant::now() > deadline {
                self.stop(pid);
                check_interrupted()?;
                bail!("{cmd:?} did not finish within {timeout:?}:\n{}", self.log(name));
            }
            sleep(Duration::from_millis(10));
        };
        if !status.success() {
            bail!("{cmd:?} failed ({status}):\n{}", self.log(name));
        }
        Ok(fs::read_to_string(self.run.join(format!("{name}.out")))?)
    }

    /// SIGTERM, 3 s, SIGKILL; by PID, only our own children.
    fn stop(&mut self, pid: u32) {
        if let Some(p) = self.procs.iter_mut().find(|p| p.child.id() == pid) {
            stop_child(&mut p.child);
        }
    }

    /// tasd in A, its fast path on `fp_cpu`; `idle_spin_us` goes through a config file
    /// (it has no flag).
    fn start_tasd(&mut self, fp_cpu: usize, idle_spin_us: Option<u64>) -> Result<()> {
        let tasd = self.bin("tasd");
        let app = self.app_socket().to_string_lossy().into_owned();
        let ctl = self.control_socket().to_string_lossy().into_owned();
        let ip = format!("{IP_A}/24");
        let cpu = fp_cpu.to_string();
        let mut cmd: Vec<&str> = vec![&tasd, "--interface", IF_A, "--ip", &ip, "--fp-cores", "1", "--fp-cpus", &cpu,
              "--app-socket", &app, "--control-socket", &ctl, "--log-level", "warn"];
        let conf = self.run.join("tasd.toml").to_string_lossy().into_owned();
        if let Some(us) = idle_spin_us {
            fs::write(&conf, format!("idle_spin_us = {us}\n")).with_context(|| format!("writing {conf}"))?;
            cmd.extend(["--config", &conf]);
        }
        let pid = self.spawn_a("tasd", None, &cmd, false)?;
        self.tasd = pid;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !(self.app_socket().exists() && self.control_socket().exists()) {
            check_interrupted()?;
            if let Some(s) = self.exited(pid) {
                bail!("tasd exited ({s}) before it was ready:\n{}", self.log("tasd"));
            }
            if Instant::now() > deadline {
                bail!("tasd did not create its sockets within 30 s:\n{}", self.log("tasd"));
            }
            sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// Wait until a TCP server in A answers on `port` (a connect from B succeeds).
    fn wait_port(&mut self, port: u16, server_pid: u32, name: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            check_interrupted()?;
            if let Some(s) = self.exited(server_pid) {
                bail!("{name} exited ({s}) right after starting:\n{}", self.log(name));
            }
            let ok = Command::new("ip")
                .args(["netns", "exec", &self.ns_b, "bash", "-c", &format!("exec 3<>/dev/tcp/{IP_A}/{port}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("{name} does not accept connections on {IP_A}:{port} after 20 s:\n{}", self.log(name));
            }
            sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the program started as `name` prints `text` on its stdout or stderr.
    fn wait_output(&mut self, name: &str, pid: u32, text: &str) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            check_interrupted()?;
            let read = |s: &str| fs::read_to_string(self.run.join(format!("{name}.{s}"))).unwrap_or_default();
            if read("out").contains(text) || read("err").contains(text) {
                return Ok(());
            }
            if let Some(s) = self.exited(pid) {
                bail!("{name} exited ({s}) right after starting:\n{}", self.log(name));
            }
            if Instant::now() > deadline {
                bail!("{name} did not print {text:?} within 20 s:\n{}", self.log(name));
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// tasd's per-core counters (`tasctl cores --json`), summed over cores.
    fn core_counters(&self) -> Result<CoreSample> {
        let out = Command::new(self.bin("tasctl"))
            .arg("--socket")
            .arg(self.control_socket())
            .args(["--json", "cores"])
            .stdin(Stdio::null())
            .output()
            .context("running tasctl")?;
        if !out.status.success() {
            bail!("tasctl cores failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let v: Value = serde_json::from_slice(&out.stdout).context("tasctl --json cores")?;
        let cores = v.as_array().ok_or_else(|| anyhow!("tasctl cores: not a list"))?;
        let sum = |k: &str| cores.iter().map(|c| c[k].as_u64().unwrap_or(0)).sum::<u64>();
        Ok(CoreSample {
            busy: sum("busy_cycles"),
            kick: sum("kick_cycles"),
            idle: sum("idle_cycles"),
            batches: sum("busy_polls"),
            packets: sum("rx_frames") + sum("tx_frames"),
            ticks_per_us: cores.first().and_then(|c| c["ticks_per_us"].as_u64()).unwrap_or(0),
        })
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        // Clients and servers first, tasd last.
        for p in self.procs.iter_mut().rev() {
            stop_child(&mut p.child);
        }
        if self.up {
            match self.sandbox_cmd("down") {
                Ok(o) if o.status.success() => {}
                Ok(o) => eprintln!("tas-bench: warning: sandbox.sh down failed: {}", String::from_utf8_lossy(&o.stderr)),
                Err(e) => eprintln!("tas-bench: warning: sandbox.sh down: {e:#}"),
            }
        }
        if self.keep || std::thread::panicking() {
            eprintln!("tas-bench: process logs kept in {}", self.run.display());
        } else {
            let _ = fs::remove_dir_all(&self.run);
        }
    }
}

fn stop_child(child: &mut Child) {
    if let Ok(Some(_)) = child.try_wait() {
        return;
    }
    // Our own child, not yet reaped: its PID cannot have been reused.
    let _ = Command::new("kill").args(["-TERM", &child.id().to_string()]).status();
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// utime + stime of a process, seconds (/proc/PID/stat fields 14 and 15).
fn cpu_seconds(pid: u32) -> Result<f64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) may contain spaces: fields are counted after its ')'.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).ok_or_else(|| anyhow!("odd /proc/{pid}/stat"))?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): utime is field 14 -> index 11, stime 15 -> 12.
    let ticks: u64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0) + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0);
    // USER_HZ is 100 on every Linux architecture this runs on.
    Ok(ticks as f64 / 100.0)
}

/// CPU time of every thread of a process, nanoseconds (first field of each
/// /proc/PID/task/TID/schedstat: time on a CPU, exact, unlike stat's 10 ms ticks).
fn cpu_ns(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/task");
    let mut total = 0;
    for t in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        let path = t?.path().join("schedstat");
        // A thread that ended between the listing and the read is simply not counted.
        if let Ok(v) = fs::read_to_string(&path) {
            total += v.split_whitespace().next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    Ok(total)
}

/// CPU used by each process (percent of one CPU) over `secs` of no traffic: adaptive
/// polling must leave an idle machine idle.
fn idle_cpu(procs: &[(&str, u32)], secs: f64) -> Result<Vec<(String, f64)>> {
    let before: Vec<u64> = procs.iter().map(|(_, p)| cpu_ns(*p)).collect::<Result<_>>()?;
    let t = Instant::now();
    pause(Duration::from_secs_f64(secs))?;
    let wall = t.elapsed().as_nanos() as f64;
    let after: Vec<u64> = procs.iter().map(|(_, p)| cpu_ns(*p)).collect::<Result<_>>()?;
    Ok(procs.iter().zip(before.iter().zip(after)).map(|((n, _), (b, a))| (n.to_string(), 100.0 * a.saturating_sub(*b) as f64 / wall)).collect())
}

#[derive(Debug, Clone, Copy, Default)]
struct CoreSample {
    busy: u64,
    kick: u64,
    idle: u64,
    batches: u64,
    packets: u64,
    ticks_per_us: u64,
}

/// The fast path's share of one stack-side measurement.
#[derive(Debug, Clone)]
struct CycleRow {
    workload: String,
    busy_percent: f64,
    cycles_per_batch: f64,
    cycles_per_packet: f64,
    cycles_per_request: f64,
    ns_per_request: f64,
    /// Share of the busy ticks spent in the transmit kick (sendto), percent.
    kick_percent: f64,
    /// Busy ticks per request without the kick: the stack's own work.
    cycles_per_request_no_kick: f64,
    ticks_per_us: u64,
}

fn cycle_row(workload: &str, before: CoreSample, after: CoreSample, requests: f64) -> CycleRow {
    let busy = after.busy.saturating_sub(before.busy) as f64;
    let idle = after.idle.saturating_sub(before.idle) as f64;
    let kick = after.kick.saturating_sub(before.kick) as f64;
    let div = |a: f64, b: f64| if b > 0.0 { a / b } else { f64::NAN };
    let tpu = after.ticks_per_us;
    CycleRow {
        workload: workload.to_string(),
        busy_percent: div(100.0 * busy, busy + idle),
        cycles_per_batch: div(busy, after.batches.saturating_sub(before.batches) as f64),
        cycles_per_packet: div(busy, after.packets.saturating_sub(before.packets) as f64),
        cycles_per_request: div(busy, requests),
        ns_per_request: div(busy * 1000.0, requests * tpu as f64),
        kick_percent: div(100.0 * kick, busy),
        cycles_per_request_no_kick: div(busy - kick, requests),
        ticks_per_us: tpu,
    }
}

// ---- workloads ----------------------------------------------------------------------------

struct Plan {
    quick: bool,
    client_cpu: usize,
    stack_server_cpu: usize,
    kernel_server_cpu: usize,
    /// `TAS_SPIN_US` for the stack-side applications, if set.
    app_spin_us: Option<u64>,
}

impl Plan {
    fn secs(&self, full: f64) -> f64 {
        if self.quick { 1.0 } else { full }
    }
    fn server_cpu(&self, side: Side) -> usize {
        match side {
            Side::Stack => self.stack_server_cpu,
            Side::Kernel => self.kernel_server_cpu,
        }
    }
}

const STACK_ECHO_PORT: u16 = 7;
const KERNEL_ECHO_PORT: u16 = 8;

fn echo_port(side: Side) -> u16 {
    match side {
        Side::Stack => STACK_ECHO_PORT,
        Side::Kernel => KERNEL_ECHO_PORT,
    }
}

/// One tas-echo server per side, the same binary: `--backend tas` on the stack,
/// `--backend kernel` on the kernel.
fn start_echo_servers(bed: &mut Bed, plan: &Plan) -> Result<[u32; 2]> {
    let echo = bed.bin("tas-echo");
    let mut pids = [0; 2];
    for (i, side) in [Side::Stack, Side::Kernel].into_iter().enumerate() {
        let port = echo_port(side).to_string();
        let backend = if side == Side::Stack { "tas" } else { "kernel" };
        let name = format!("echo-server-{backend}");
        let pid = bed.spawn_a(&name, Some(plan.server_cpu(side)), &[&echo, "--backend", backend, "server", "--port", &port], side == Side::Stack)?;
        bed.wait_port(echo_port(side), pid, &name)?;
        pids[i] = pid;
    }
    Ok(pids)
}

struct LoadRun {
    rps: f64,
    /// Completed requests including the warm-up (what the cycle counters saw).
    total: f64,
    p50: f64,
    p99: f64,
    p999: f64,
}

fn run_load(bed: &mut Bed, plan: &Plan, name: &str, side: Side, args: &[String], secs: f64) -> Result<LoadRun> {
    let me = std::env::current_exe()?.to_string_lossy().into_owned();
    let addr = format!("{IP_A}:{}", echo_port(side));
    let warm = if plan.quick { "0.3" } else { "1" };
    let run = |bed: &mut Bed, name: &str, secs: f64| {
        let dur = secs.to_string();
        let mut cmd: Vec<&str> = vec![&me, "load", "--connect", &addr, "--duration", &dur, "--warmup", warm];
        cmd.extend(args.iter().map(String::as_str));
        bed.run_b(name, plan.client_cpu, &cmd, Duration::from_secs_f64(secs + 60.0))
    };
    let out = match run(bed, name, secs) {
        // --quick's one-second window can pass without a single completion when the
        // server's CPU is taken by other work for longer than that (seen at load 14 on
        // the 2-CPU VM, the kernel's server sharing CPU 1 with compilers): measure once
        // more, three times as long, and say so.
        Err(e) if plan.quick && format!("{e:#}").contains("no request completed") => {
            eprintln!("tas-bench: {name}: no request completed in {secs} s (a starved server?); measuring again for {} s", secs * 3.0);
            run(bed, &format!("{name}-again"), secs * 3.0)?
        }
        r => r?,
    };
    let v: Value = out
        .lines()
        .rev()
        .find_map(|l| serde_json::from_str(l).ok())
        .ok_or_else(|| anyhow!("{name}: the load generator printed no JSON:\n{out}"))?;
    let f = |k: &str| v[k].as_f64().ok_or_else(|| anyhow!("{name}: no {k} in {v}"));
    Ok(LoadRun { rps: f("rps")?, total: f("total_requests")?, p50: f("p50_us")?, p99: f("p99_us")?, p999: f("p999_us")? })
}

/// (a) RPC echo: closed loop without and with pipelining, then an open loop at half the
/// slower side's closed-loop rate.
fn echo_rpc(bed: &mut Bed, plan: &Plan, rows: &mut Vec<Row>, cycles: &mut Vec<CycleRow>) -> Result<()> {
    let conns = if plan.quick { 16 } else { 64 };
    let secs = plan.secs(5.0);
    let mut closed_rate = f64::INFINITY;
    for depth in [1usize, 16] {
        let workload = format!("echo 64 B, {conns} conns, closed loop, depth {depth}");
        let args = vec!["--conns".into(), conns.to_string(), "--depth".into(), depth.to_string(), "--size".into(), "64".into()];
        let mut res = [None, None];
        for (i, side) in [Side::Stack, Side::Kernel].into_iter().enumerate() {
            let before = if side == Side::Stack { Some(bed.core_counters()?) } else { None };
            let r = run_load(bed, plan, &format!("load-d{depth}-{i}"), side, &args, secs)?;
            if let Some(b) = before {
                let a = bed.core_counters()?;
                // The counters also cover warm-up and connection setup: divide by every
                // request completed, warm-up included.
                cycles.push(cycle_row(&workload, b, a, r.total));
            }
            if depth == 1 {
                closed_rate = closed_rate.min(r.rps);
            }
            res[i] = Some(r);
            pause(Duration::from_millis(300))?;
        }
        let [Some(s), Some(k)] = res else { unreachable!() };
        let mk = |metric: &str, better, a: f64, b: f64| Row {
            workload: workload.clone(), metric: metric.into(), stack: Some(a), kernel: Some(b), better, kernel_label: None, failed: None,
        };
        rows.push(mk("requests/s", Better::Higher, s.rps, k.rps));
        rows.push(mk("p50 µs", Better::Lower, s.p50, k.p50));
        rows.push(mk("p99 µs", Better::Lower, s.p99, k.p99));
        rows.push(mk("p99.9 µs", Better::Lower, s.p999, k.p999));
    }
    // Open loop at half the slower closed-loop rate: both stacks get the same offered load.
    let rate = (closed_rate * 0.5).round().max(100.0);
    let workload = format!("echo 64 B, {conns} conns, open loop {} req/s", report::fmt_value(rate));
    let args = vec!["--conns".into(), conns.to_string(), "--depth".into(), "64".into(), "--rate".into(), rate.to_string()];
    let s = run_load(bed, plan, "load-open-0", Side::Stack, &args, secs)?;
    pause(Duration::from_millis(300))?;
    let k = run_load(bed, plan, "load-open-1", Side::Kernel, &args, secs)?;
    for (metric, a, b) in [("p50 µs", s.p50, k.p50), ("p99 µs", s.p99, k.p99), ("p99.9 µs", s.p999, k.p999)] {
        rows.push(Row { workload: workload.clone(), metric: metric.into(), stack: Some(a), kernel: Some(b), better: Better::Lower, kernel_label: None, failed: None });
    }
    Ok(())
}

/// (c) Bulk: 4 kernel clients stream through the echo server and back; payload Gbit/s
/// each way, and CPU seconds per GB of the server-side processes.
fn bulk(bed: &mut Bed, plan: &Plan, servers: [u32; 2], rows: &mut Vec<Row>, cycles: &mut Vec<CycleRow>) -> Result<()> {
    let conns = 4u64;
    let per_conn: u64 = if plan.quick { 25_000_000 } else { 250_000_000 };
    let echo = bed.bin("tas-echo");
    let workload = format!("bulk echo, {conns} conns x {} MB each way", per_conn / 1_000_000);
    let mut gbps = [0.0; 2];
    let mut cpu_per_gb = [0.0; 2];
    for (i, side) in [Side::Stack, Side::Kernel].into_iter().enumerate() {
        let addr = format!("{IP_A}:{}", echo_port(side));
        // Server-side processes: the echo server, and on the stack tasd (it does the TCP work).
        let mut pids = vec![servers[i]];
        if side == Side::Stack {
            pids.push(bed.tasd);
        }
        let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<Result<f64>>()?;
        let before = if side == Side::Stack { Some(bed.core_counters()?) } else { None };
        let out = bed.run_b(
            &format!("bulk-{i}"),
            plan.client_cpu,
            &[&echo, "--backend", "kernel", "client", "--connect", &addr, "--bytes", &per_conn.to_string(), "--conns", &conns.to_string(), "--timeout", "300"],
            Duration::from_secs(330),
        )?;
        let cpu1: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<Result<f64>>()?;
        let secs: f64 = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("seconds=").and_then(|v| v.parse().ok()))
            .ok_or_else(|| anyhow!("bulk client printed no seconds=: {out}"))?;
        let total = (per_conn * conns) as f64;
        gbps[i] = total * 8.0 / secs / 1e9;
        // Bytes handled by the server side: received and sent again.
        cpu_per_gb[i] = (cpu1 - cpu0) / (2.0 * total / 1e9);
        if let Some(b) = before {
            let a = bed.core_counters()?;
            // "Requests" here are 1448-byte segments' worth of payload, both ways.
            cycles.push(cycle_row(&format!("{workload} (per 1448 B of payload)"), b, a, 2.0 * total / 1448.0));
        }
        pause(Duration::from_millis(300))?;
    }
    rows.push(Row { workload: workload.clone(), metric: "Gbit/s each way".into(), stack: Some(gbps[0]), kernel: Some(gbps[1]), better: Better::Higher, kernel_label: None, failed: None });
    rows.push(Row {
        workload,
        metric: "server CPU s per GB (stack: tasd + app)".into(),
        stack: Some(cpu_per_gb[0]),
        kernel: Some(cpu_per_gb[1]),
        better: Better::Lower,
        kernel_label: None,
        failed: None,
    });
    Ok(())
}

/// A stack-side failure of an unmodified program under the shim, as the table shows it:
/// the first line of the error, short. An interruption is not a finding: it stays an error.
fn failure_reason(e: &anyhow::Error) -> Result<String> {
    check_interrupted()?;
    let first = e.to_string();
    let first = first.lines().next().unwrap_or("error").trim();
    let mut why: String = first.chars().take(120).collect();
    if why.len() < first.len() {
        why.push_str("...");
    }
    Ok(why)
}

/// Rows for a stack-side measurement that failed: the kernel's results, the reason.
fn failed_rows(rows: &mut Vec<Row>, workload: &str, metrics: &[(&str, Better, f64)], why: &str, kernel_label: Option<&str>) {
    for (metric, better, k) in metrics {
        rows.push(Row {
            workload: workload.to_string(),
            metric: metric.to_string(),
            stack: None,
            kernel: Some(*k),
            better: *better,
            kernel_label: kernel_label.map(str::to_string),
            failed: Some(why.to_string()),
        });
    }
}

const SOCKPERF_PORT: [u16; 2] = [11111, 11112];

/// sockperf's result lines, ANSI colours removed.
fn sockperf_text(out: &str) -> String {
    let mut t = String::with_capacity(out.len());
    let mut esc = false;
    for ch in out.chars() {
        match (esc, ch) {
            (false, '\x1b') => esc = true,
            (true, c) if c.is_ascii_alphabetic() => esc = false,
            (true, _) => {}
            (false, c) => t.push(c),
        }
    }
    t
}

/// The value after `key` up to the next space or `;` in sockperf's output.
fn sockperf_field(text: &str, key: &str) -> Option<f64> {
    let at = text.find(key)? + key.len();
    text[at..].trim_start().split(|c: char| c.is_whitespace() || c == ';').next()?.parse().ok()
}

struct PingPong {
    p50: f64,
    p99: f64,
    p999: f64,
    /// Round trips sent including sockperf's warm-up (what the cycle counters saw).
    sent: f64,
}

/// Parse `sockperf ping-pong --full-rtt` output; an error if it saw a lost, duplicated or
/// reordered reply (it checks every reply's sequence number).
fn parse_ping_pong(out: &str) -> Result<PingPong> {
    let t = sockperf_text(out);
    if t.contains("No valid observations") {
        bail!("sockperf had no valid observation (every reply came during its warm-up):\n{t}");
    }
    if !t.contains("# dropped messages = 0; # duplicated messages = 0; # out-of-order messages = 0") {
        bail!("sockperf saw lost, duplicated or reordered replies:\n{t}");
    }
    let pct = |p: &str| sockperf_field(&t, &format!("percentile {p} =")).ok_or_else(|| anyhow!("sockperf printed no percentile {p}:\n{t}"));
    let sent = sockperf_field(&t, "SentMessages=").ok_or_else(|| anyhow!("sockperf printed no SentMessages:\n{t}"))?;
    Ok(PingPong { p50: pct("50.000")?, p99: pct("99.000")?, p999: pct("99.900")?, sent })
}

/// (d) sockperf, Debian's unmodified program: the server in A under the LD_PRELOAD shim on
/// the stack, plain on the kernel; the client in B on the kernel. Ping-pong with 64-byte
/// and 1 KB messages at full speed (round-trip p50/p99/p99.9, `--full-rtt`), ping-pong at
/// 1,000 messages/s (each request arrives after the fast path and the server have stopped
/// spinning and gone to sleep: the wake-up latency of adaptive polling), and throughput
/// (the client streams 64-byte messages; messages/s).
fn sockperf(bed: &mut Bed, plan: &Plan, rows: &mut Vec<Row>, cycles: &mut Vec<CycleRow>) -> Result<()> {
    let secs = if plan.quick { 1 } else { 5 };
    let mut server_ok: [Result<(), String>; 2] = [Ok(()), Ok(())];
    for (i, side) in [Side::Stack, Side::Kernel].into_iter().enumerate() {
        let port = SOCKPERF_PORT[i].to_string();
        let name = format!("sockperf-server-{i}");
        let pid = bed.spawn_a_program(&name, Some(plan.server_cpu(side)), &["sockperf", "server", "-i", IP_A, "-p", &port, "--tcp"], side, plan.app_spin_us)?;
        if let Err(e) = bed.wait_port(SOCKPERF_PORT[i], pid, &name) {
            if side == Side::Kernel {
                return Err(e);
            }
            server_ok[i] = Err(format!("server under the shim: {}", failure_reason(&e)?));
        }
    }
    let client = |bed: &mut Bed, name: &str, side: usize, args: &[&str]| -> Result<String> {
        let port = SOCKPERF_PORT[side].to_string();
        let run = |bed: &mut Bed, name: &str, secs: u64| {
            let mut cmd = vec!["sockperf"];
            cmd.extend_from_slice(args);
            cmd.extend(["-i", IP_A, "-p", &port, "--tcp", "-t"]);
            let t = secs.to_string();
            cmd.push(&t);
            let out = bed.run_b(name, plan.client_cpu, &cmd, Duration::from_secs(secs + 60));
            pause(Duration::from_millis(300))?;
            out
        };
        let name = format!("{name}-{side}");
        let out = run(bed, &name, secs)?;
        // --quick's one second (after sockperf's 400 ms warm-up) can pass without a valid
        // observation when the server's CPU is taken by other work for that long (seen
        // at load 14 with the kernel's server beside compilers on CPU 1): measure once
        // more, three times as long, and say so.
        if plan.quick && out.contains("No valid observations") {
            eprintln!("tas-bench: {name}: sockperf had no valid observation in {secs} s (a starved server?); measuring again for {} s", secs * 3);
            return run(bed, &format!("{name}-again"), secs * 3);
        }
        Ok(out)
    };
    // Ping-pong: (workload, message size, --mps).
    let rate_limited = 1000;
    let pp: [(String, &str, Option<u32>); 3] = [
        ("sockperf ping-pong 64 B (server under the shim)".into(), "64", None),
        ("sockperf ping-pong 1 KB (server under the shim)".into(), "1024", None),
        (format!("sockperf ping-pong 64 B at {} msg/s: wake-up (server under the shim)", report::fmt_value(rate_limited as f64)), "64", Some(rate_limited)),
    ];
    for (n, (workload, size, mps)) in pp.iter().enumerate() {
        let mps_s = mps.map(|m| m.to_string());
        let mut args = vec!["ping-pong", "--full-rtt", "-m", size];
        if let Some(m) = &mps_s {
            args.extend(["--mps", m]);
        }
        let mut res: [Result<PingPong, String>; 2] = [Err(String::new()), Err(String::new())];
        for i in 0..2 {
            if let Err(why) = &server_ok[i] {
                res[i] = Err(why.clone());
                continue;
            }
            let before = if i == 0 { Some(bed.core_counters()?) } else { None };
            let r = client(bed, &format!("sockperf-pp{n}"), i, &args).and_then(|o| parse_ping_pong(&o));
            res[i] = match r {
                Ok(r) => {
                    if let Some(b) = before {
                        cycles.push(cycle_row(&format!("{workload} (per round trip)"), b, bed.core_counters()?, r.sent));
                    }
                    Ok(r)
                }
                Err(e) if i == 0 => Err(failure_reason(&e)?),
                Err(e) => return Err(e),
            };
        }
        let [s, Ok(k)] = res else { unreachable!("kernel errors returned above") };
        let metrics = [("p50 µs (round trip)", Better::Lower, k.p50), ("p99 µs (round trip)", Better::Lower, k.p99), ("p99.9 µs (round trip)", Better::Lower, k.p999)];
        match s {
            Ok(s) => {
                for ((metric, better, kv), sv) in metrics.into_iter().zip([s.p50, s.p99, s.p999]) {
                    rows.push(Row { workload: workload.clone(), metric: metric.into(), stack: Some(sv), kernel: Some(kv), better, kernel_label: None, failed: None });
                }
            }
            Err(why) => failed_rows(rows, workload, &metrics, &why, None),
        }
    }
    // Throughput: the client streams 64-byte messages, the server reads them.
    let workload = "sockperf throughput 64 B messages (server under the shim)";
    let mut res: [Result<f64, String>; 2] = [Err(String::new()), Err(String::new())];
    for i in 0..2 {
        if let Err(why) = &server_ok[i] {
            res[i] = Err(why.clone());
            continue;
        }
        let before = if i == 0 { Some(bed.core_counters()?) } else { None };
        let r = client(bed, "sockperf-tp", i, &["throughput", "-m", "64"]).and_then(|o| {
            let t = sockperf_text(&o);
            let rate = sockperf_field(&t, "Message Rate is").ok_or_else(|| anyhow!("sockperf printed no message rate:\n{t}"))?;
            let sent = sockperf_field(&t, "Total of").ok_or_else(|| anyhow!("sockperf printed no message count:\n{t}"))?;
            Ok((rate, sent))
        });
        res[i] = match r {
            Ok((rate, sent)) => {
                if let Some(b) = before {
                    cycles.push(cycle_row(&format!("{workload} (per message)"), b, bed.core_counters()?, sent));
                }
                Ok(rate)
            }
            Err(e) if i == 0 => Err(failure_reason(&e)?),
            Err(e) => return Err(e),
        };
    }
    let [s, Ok(k)] = res else { unreachable!("kernel errors returned above") };
    match s {
        Ok(s) => rows.push(Row { workload: workload.into(), metric: "messages/s".into(), stack: Some(s), kernel: Some(k), better: Better::Higher, kernel_label: None, failed: None }),
        Err(why) => failed_rows(rows, workload, &[("messages/s", Better::Higher, k)], &why, None),
    }
    Ok(())
}

const IPERF3_PORT: [u16; 2] = [5201, 5202];

/// (e) iperf3, Debian's unmodified program: the server in A under the shim on the stack,
/// plain on the kernel; the client in B sends for the duration. Gbit/s as the server
/// received it, and CPU seconds per GB of the server-side processes (stack: iperf3 +
/// tasd; kernel: iperf3, softirq work charged elsewhere not included).
fn iperf3(bed: &mut Bed, plan: &Plan, rows: &mut Vec<Row>, cycles: &mut Vec<CycleRow>) -> Result<()> {
    let secs = if plan.quick { 1 } else { 5 };
    let workload = format!("iperf3 bulk, 1 stream, {secs} s (server under the shim)");
    let mut res: [Result<(f64, f64), String>; 2] = [Err(String::new()), Err(String::new())];
    for (i, side) in [Side::Stack, Side::Kernel].into_iter().enumerate() {
        let port = IPERF3_PORT[i].to_string();
        let name = format!("iperf3-server-{i}");
        let r = (|| -> Result<(f64, f64)> {
            let pid = bed.spawn_a_program(&name, Some(plan.server_cpu(side)), &["iperf3", "-s", "-4", "-B", IP_A, "-p", &port, "--forceflush"], side, plan.app_spin_us)?;
            // No probe connection: to iperf3 it is a test that fails, after which its
            // server closes the listening socket and opens a new one, and under the shim
            // that re-listen has failed with EADDRINUSE (the server exits). Wait for its
            // own "Server listening" line instead.
            bed.wait_output(&name, pid, "Server listening")?;
            let mut pids = vec![pid];
            if side == Side::Stack {
                pids.push(bed.tasd);
            }
            let cpu0: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<Result<f64>>()?;
            let before = if side == Side::Stack { Some(bed.core_counters()?) } else { None };
            let t = secs.to_string();
            let mut attempt = 0;
            let out = loop {
                attempt += 1;
                let r = bed.run_b(&format!("iperf3-client-{i}-{attempt}"), plan.client_cpu, &["iperf3", "-c", IP_A, "-p", &port, "-t", &t, "-J"], Duration::from_secs(secs + 60));
                match r {
                    Err(e) if attempt < 3 && format!("{e:#}").contains("unable to connect") => pause(Duration::from_millis(500))?,
                    Err(e) => {
                        // The server's own last error says more than the client's.
                        let server = bed.log(&name);
                        let why = server.lines().rev().find(|l| l.contains("iperf3: error")).map(|l| format!(" (server: {})", l.trim())).unwrap_or_default();
                        return Err(e.context(format!("iperf3 client failed{why}")));
                    }
                    Ok(o) => break o,
                }
            };
            let cpu1: f64 = pids.iter().map(|&p| cpu_seconds(p)).sum::<Result<f64>>()?;
            let v: Value = serde_json::from_str(&out).with_context(|| format!("iperf3 client JSON: {out}"))?;
            if let Some(e) = v["error"].as_str() {
                bail!("iperf3: {e}");
            }
            let recv = &v["end"]["sum_received"];
            let (bytes, bps) = (recv["bytes"].as_f64().unwrap_or(0.0), recv["bits_per_second"].as_f64().unwrap_or(0.0));
            let sent = v["end"]["sum_sent"]["bytes"].as_f64().unwrap_or(0.0);
            if bytes <= 0.0 || bps <= 0.0 {
                bail!("iperf3 moved no data: {}", v["end"]);
            }
            // The client counts what it wrote; the server stops counting when the test
            // ends, with up to a socket buffer still in flight (512 KB seen on the kernel).
            // More received than sent, or most of it missing, is a broken transfer.
            if bytes > sent || bytes < 0.95 * sent {
                bail!("iperf3: the client sent {sent} B, the server received {bytes} B");
            }
            if let Some(b) = before {
                cycles.push(cycle_row(&format!("{workload} (per 1448 B of payload)"), b, bed.core_counters()?, bytes / 1448.0));
            }
            bed.stop(pid);
            Ok((bps / 1e9, (cpu1 - cpu0).max(0.0) / (bytes / 1e9)))
        })();
        pause(Duration::from_millis(300))?;
        res[i] = match r {
            Ok(v) => Ok(v),
            Err(e) if side == Side::Stack => Err(failure_reason(&e)?),
            Err(e) => return Err(e),
        };
    }
    let [s, Ok(k)] = res else { unreachable!("kernel errors returned above") };
    let metrics = [("Gbit/s", Better::Higher, k.0), ("server CPU s per GB (stack: tasd + app)", Better::Lower, k.1)];
    match s {
        Ok(s) => {
            for ((metric, better, kv), sv) in metrics.into_iter().zip([s.0, s.1]) {
                rows.push(Row { workload: workload.clone(), metric: metric.into(), stack: Some(sv), kernel: Some(kv), better, kernel_label: None, failed: None });
            }
        }
        Err(why) => failed_rows(rows, &workload, &metrics, &why, None),
    }
    Ok(())
}

/// (b) redis-benchmark, 50 clients, GET and SET: tas-kv on the stack against tas-kv on
/// the kernel (same program) and against Debian's redis-server.
fn redis(bed: &mut Bed, plan: &Plan, rows: &mut Vec<Row>, cycles: &mut Vec<CycleRow>) -> Result<()> {
    let kv = bed.bin("tas-kv");
    let stack_cpu = plan.server_cpu(Side::Stack);
    let kernel_cpu = plan.server_cpu(Side::Kernel);
    let p = bed.spawn_a("kv-tas", Some(stack_cpu), &[&kv, "--backend", "tas", "--port", "6379", "--threads", "1"], true)?;
    bed.wait_port(6379, p, "kv-tas")?;
    let p = bed.spawn_a("kv-kernel", Some(kernel_cpu), &[&kv, "--backend", "kernel", "--port", "6380", "--threads", "1"], false)?;
    bed.wait_port(6380, p, "kv-kernel")?;
    let dir = bed.run.to_string_lossy().into_owned();
    let p = bed.spawn_a(
        "redis-server",
        Some(kernel_cpu),
        &["redis-server", "--port", "6381", "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", &dir, "--daemonize", "no"],
        false,
    )?;
    bed.wait_port(6381, p, "redis-server")?;
    // The same redis-server, unmodified, on the stack through the LD_PRELOAD shim.
    let p = bed.spawn_a_program(
        "redis-server-shim",
        Some(stack_cpu),
        &["redis-server", "--port", "6382", "--save", "", "--appendonly", "no", "--protected-mode", "no", "--dir", &dir, "--daemonize", "no"],
        Side::Stack,
        plan.app_spin_us,
    )?;
    let mut shim_down = match bed.wait_port(6382, p, "redis-server-shim") {
        Ok(()) => None,
        Err(e) => Some(format!("redis-server under the shim: {}", failure_reason(&e)?)),
    };
    let n = if plan.quick { 20_000 } else { 200_000 };
    let bench = |bed: &mut Bed, port: u16, test: &str, pipeline: u32| -> Result<(f64, f64)> {
        let name = format!("redis-benchmark-{port}-{test}-{pipeline}");
        let out = bed.run_b(
            &name,
            plan.client_cpu,
            &["redis-benchmark", "-h", IP_A, "-p", &port.to_string(), "-t", test, "-n", &n.to_string(), "-c", "50", "-P", &pipeline.to_string(), "--csv"],
            Duration::from_secs(180),
        )?;
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95...","p99...","max..."
        let line = out.lines().last().unwrap_or_default().replace('"', "");
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).ok_or_else(|| anyhow!("{name}: cannot read its CSV: {out}"));
        let r = (num(1)?, num(6)?);
        pause(Duration::from_millis(500))?;
        Ok(r)
    };
    for pipeline in [1u32, 16] {
        for test in ["set", "get"] {
            let before = bed.core_counters()?;
            let (s_rps, s_p99) = bench(bed, 6379, test, pipeline)?;
            let after = bed.core_counters()?;
            let (k_rps, k_p99) = bench(bed, 6380, test, pipeline)?;
            let (r_rps, r_p99) = bench(bed, 6381, test, pipeline)?;
            let workload = format!("redis-benchmark {} -c 50 -P {pipeline}", test.to_uppercase());
            cycles.push(cycle_row(&workload, before, after, n as f64));
            for (label, rps, p99) in [(None, k_rps, k_p99), (Some("redis-server".to_string()), r_rps, r_p99)] {
                rows.push(Row { workload: workload.clone(), metric: "requests/s".into(), stack: Some(s_rps), kernel: Some(rps), better: Better::Higher, kernel_label: label.clone(), failed: None });
                rows.push(Row { workload: workload.clone(), metric: "p99 ms".into(), stack: Some(s_p99), kernel: Some(p99), better: Better::Lower, kernel_label: label, failed: None });
            }
            // redis-server under the shim against the same redis-server on the kernel.
            let shim_workload = format!("redis-server under the shim: {workload}");
            let metrics = [("requests/s", Better::Higher, r_rps), ("p99 ms", Better::Lower, r_p99)];
            let shim = match &shim_down {
                Some(why) => Err(why.clone()),
                None => {
                    let before = bed.core_counters()?;
                    match bench(bed, 6382, test, pipeline) {
                        Ok(r) => {
                            cycles.push(cycle_row(&shim_workload, before, bed.core_counters()?, n as f64));
                            Ok(r)
                        }
                        Err(e) => {
                            let why = failure_reason(&e)?;
                            // A server that died or hangs fails the later tests too.
                            if bed.exited(p).is_some() {
                                shim_down = Some(format!("redis-server under the shim exited after: {why}"));
                            }
                            Err(why)
                        }
                    }
                }
            };
            match shim {
                Ok((rps, p99)) => {
                    for ((metric, better, kv), sv) in metrics.into_iter().zip([rps, p99]) {
                        rows.push(Row { workload: shim_workload.clone(), metric: metric.into(), stack: Some(sv), kernel: Some(kv), better, kernel_label: None, failed: None });
                    }
                }
                Err(why) => failed_rows(rows, &shim_workload, &metrics, &why, None),
            }
        }
    }
    Ok(())
}

// ---- compare ------------------------------------------------------------------------------

fn repo_root() -> Result<PathBuf> {
    // The binary is <repo>/target/<profile>/tas-bench; fall back to the working directory.
    let exe = std::env::current_exe()?;
    for dir in exe.ancestors().skip(1) {
        if dir.join("deploy/sandbox.sh").is_file() {
            return Ok(dir.to_path_buf());
        }
    }
    let cwd = std::env::current_dir()?;
    if cwd.join("deploy/sandbox.sh").is_file() {
        return Ok(cwd);
    }
    bail!("cannot find deploy/sandbox.sh above {} or in the working directory: run tas-bench from the repository", exe.display())
}

fn machine() -> String {
    let cpu = fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_else(|| "unknown CPU".into());
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let ncpu = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{ncpu} CPUs ({cpu}), Linux {}", kernel.trim())
}

fn loadavg() -> String {
    fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn utc_now() -> String {
    Command::new("date")
        .args(["-u", "+%Y-%m-%d %H:%M UTC"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn compare(a: CompareArgs) -> Result<()> {
    let ncpu = std::thread::available_parallelism().map_or(1, |n| n.get());
    for (flag, cpu) in [("--fp-cpu", a.fp_cpu), ("--stack-server-cpu", a.stack_server_cpu), ("--kernel-server-cpu", a.kernel_server_cpu), ("--client-cpu", a.client_cpu)] {
        if cpu >= ncpu {
            bail!("{flag} {cpu}: this machine has CPUs 0-{}; give one of those", ncpu - 1);
        }
    }
    if a.stack_server_cpu == a.fp_cpu {
        eprintln!("tas-bench: warning: the stack's server shares CPU {} with the busy-polling fast path; expect whole time slices of latency", a.fp_cpu);
    }
    // SAFETY-free root check: namespaces need CAP_NET_ADMIN; say so before doing anything.
    let uid = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:").and_then(|v| v.split_whitespace().nth(1).map(str::to_string)))
        .unwrap_or_default();
    if uid != "0" {
        bail!("compare needs root (network namespaces, veth, XDP): run it with sudo");
    }
    let repo = repo_root()?;
    let bins = match a.bin_dir.clone() {
        Some(d) => d,
        None => std::env::current_exe()?.parent().ok_or_else(|| anyhow!("binary has no directory"))?.to_path_buf(),
    };
    let run = |g: Group| (a.only.is_empty() || a.only.contains(&g)) && !(g == Group::Redis && a.no_redis);
    let mut needed = vec!["tasd", "tas-echo", "tasctl"];
    if run(Group::Redis) {
        needed.push("tas-kv");
    }
    if run(Group::Redis) || run(Group::Sockperf) || run(Group::Iperf3) {
        needed.push("libtas_preload.so");
    }
    for b in needed {
        if !bins.join(b).is_file() {
            bail!("{} not found: build with `cargo build -j2 --release --workspace`, or point --bin-dir at the binaries", bins.join(b).display());
        }
    }
    let mut tools = Vec::new();
    if run(Group::Redis) {
        tools.extend(["redis-benchmark", "redis-server"]);
    }
    if run(Group::Sockperf) {
        tools.push("sockperf");
    }
    if run(Group::Iperf3) {
        tools.push("iperf3");
    }
    {
        for tool in tools {
            let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status().map(|s| s.success()).unwrap_or(false);
            if !found {
                bail!("{tool} not found: install Debian's {} (deploy/install-deps.sh), or leave its workloads out with --only", if tool == "redis-benchmark" { "redis-tools" } else { tool });
            }
        }
    }
    signals::install();
    let started = utc_now();
    let load_before = loadavg();
    let plan = Plan {
        quick: a.quick,
        client_cpu: a.client_cpu,
        stack_server_cpu: a.stack_server_cpu,
        kernel_server_cpu: a.kernel_server_cpu,
        app_spin_us: a.app_spin_us,
    };
    let mut rows = Vec::new();
    let mut cycles = Vec::new();
    let idle: Vec<(String, f64)>;
    let idle_note: String;
    {
        let mut bed = Bed::up(bins, &repo, a.keep)?;
        bed.app_spin_us = a.app_spin_us;
        bed.start_tasd(a.fp_cpu, a.idle_spin_us)?;
        eprintln!("tas-bench: sandbox {} / {} up", bed.ns_a, bed.ns_b);
        // Idle: tasd, and an attached application that waits for work (tas-echo's
        // server on the stack), with no traffic at all.
        let echo_servers = if run(Group::Echo) || run(Group::Bulk) { Some(start_echo_servers(&mut bed, &plan)?) } else { None };
        pause(Duration::from_millis(500))?;
        let mut watched = vec![("tasd", bed.tasd)];
        if let Some(s) = &echo_servers {
            watched.push(("tas-echo server on the stack", s[0]));
        }
        let idle_secs = if plan.quick { 1.0 } else { 5.0 };
        idle = idle_cpu(&watched, idle_secs)?;
        idle_note = format!(
            "Idle, no traffic, over {idle_secs} s (CPU time from /proc/PID/task/*/schedstat): {}.",
            idle.iter().map(|(n, pct)| format!("{n} {pct:.2} % of a CPU")).collect::<Vec<_>>().join(", ")
        );
        eprintln!("tas-bench: {idle_note}");
        if let Some(servers) = echo_servers {
            if run(Group::Echo) {
                eprintln!("tas-bench: RPC echo ...");
                echo_rpc(&mut bed, &plan, &mut rows, &mut cycles)?;
            }
            if run(Group::Bulk) {
                eprintln!("tas-bench: bulk ...");
                bulk(&mut bed, &plan, servers, &mut rows, &mut cycles)?;
            }
        }
        if run(Group::Sockperf) {
            eprintln!("tas-bench: sockperf ...");
            sockperf(&mut bed, &plan, &mut rows, &mut cycles)?;
        }
        if run(Group::Iperf3) {
            eprintln!("tas-bench: iperf3 ...");
            iperf3(&mut bed, &plan, &mut rows, &mut cycles)?;
        }
        if run(Group::Redis) {
            eprintln!("tas-bench: redis-benchmark ...");
            redis(&mut bed, &plan, &mut rows, &mut cycles)?;
        }
    }
    let load_after = loadavg();
    let pinning = format!(
        "tasd fast path on CPU {} (its other threads unpinned); stack-side servers on CPU {}; kernel-side servers on CPU {}; clients (namespace B) on CPU {}",
        a.fp_cpu, a.stack_server_cpu, a.kernel_server_cpu, a.client_cpu
    );
    let mut command = String::from("tas-bench compare");
    if a.quick {
        command += " --quick";
    }
    if !a.only.is_empty() {
        let names: Vec<String> = a.only.iter().map(|g| format!("{g:?}").to_lowercase()).collect();
        command += &format!(" --only {}", names.join(","));
    }
    if a.no_redis {
        command += " --no-redis";
    }
    if let Some(us) = a.idle_spin_us {
        command += &format!(" --idle-spin-us {us}");
    }
    if let Some(us) = a.app_spin_us {
        command += &format!(" --app-spin-us {us}");
    }
    let header = format!(
        "{started}, {}; load average before {load_before}, after {load_after}\n{pinning}",
        machine()
    );
    let complete = rows.iter().all(Row::accounted);
    if a.json {
        let v = json!({
            "ok": complete,
            "command": command,
            "started": started,
            "machine": machine(),
            "load_before": load_before,
            "load_after": load_after,
            "pinning": pinning,
            "idle_cpu_percent": idle.iter().map(|(n, pct)| json!({"process": n, "percent": pct})).collect::<Vec<_>>(),
            "rows": report::json_rows(&rows),
            "cycles": cycles.iter().map(|c| json!({
                "workload": c.workload, "busy_percent": c.busy_percent, "cycles_per_batch": c.cycles_per_batch,
                "cycles_per_packet": c.cycles_per_packet, "cycles_per_request": c.cycles_per_request,
                "ns_per_request": c.ns_per_request, "ticks_per_us": c.ticks_per_us,
                "kick_percent": c.kick_percent, "cycles_per_request_no_kick": c.cycles_per_request_no_kick,
            })).collect::<Vec<_>>(),
        });
        println!("{v}");
    } else {
        println!("# {command}\n# {}", header.replace('\n', "\n# "));
        print!("{}", report::text_table(&rows));
        println!();
        print!("{}", cycles_table(&cycles));
        println!("{idle_note}");
    }
    let chart = a.chart.clone().or_else(|| a.out.as_ref().map(|o| o.with_file_name("tas-bench-compare.png")));
    if let Some(path) = &chart {
        match report::chart(&rows, path, &format!("this stack / Linux kernel ({started})")) {
            Ok(()) => eprintln!("tas-bench: chart written to {}", path.display()),
            Err(e) => eprintln!("tas-bench: warning: no chart: {e:#}"),
        }
    }
    if let Some(out) = &a.out {
        let mut section = format!(
            "Command: `{command}` (as root, after `cargo build -j2 --release --workspace`)  \n\
             Run: {}  \nPinning: {pinning}.\n\n",
            header.lines().next().unwrap_or_default()
        );
        section += &report::markdown_table(&rows);
        section += "\nFast-path cycle accounting on the stack side (tasd's busy/idle cycle counters, `tasctl cores`):\n\n";
        section += &cycles_markdown(&cycles);
        section += &format!("\n{idle_note}\n");
        if let Some(path) = &chart {
            if path.exists() {
                let rel = path.file_name().map(|f| f.to_string_lossy().into_owned()).unwrap_or_default();
                section += &format!("\n![stack / kernel ratios]({rel})\n");
            }
        }
        report::write_section(out, &section)?;
        eprintln!("tas-bench: results written to {}", out.display());
    }
    if !complete {
        bail!("some rows have no result on one side (marked FAILED)");
    }
    for r in rows.iter().filter(|r| r.failed.is_some()) {
        eprintln!("tas-bench: stack side failed: {}: {}: {}", r.workload, r.metric, r.failed.as_deref().unwrap_or_default());
    }
    Ok(())
}

fn cycles_table(cs: &[CycleRow]) -> String {
    use tas_tools::table::{Align::*, Table};
    let mut t = Table::new(&[("STACK-SIDE WORKLOAD", Left), ("FP BUSY%", Right), ("CYC/BATCH", Right), ("CYC/PKT", Right), ("CYC/REQ", Right), ("NS/REQ", Right), ("KICK%", Right), ("CYC/REQ NO KICK", Right)]);
    for c in cs {
        t.row([
            c.workload.clone(),
            format!("{:.1}", c.busy_percent),
            report::fmt_value(c.cycles_per_batch),
            report::fmt_value(c.cycles_per_packet),
            report::fmt_value(c.cycles_per_request),
            report::fmt_value(c.ns_per_request),
            format!("{:.1}", c.kick_percent),
            report::fmt_value(c.cycles_per_request_no_kick),
        ]);
    }
    let tpu = cs.first().map_or(0, |c| c.ticks_per_us);
    format!("{}(cycles are TSC ticks, {tpu} per µs; busy = polls that did work; kick = the transmit sendto)\n", t.render())
}

fn cycles_markdown(cs: &[CycleRow]) -> String {
    let mut s = String::from("| stack-side workload | fast path busy % | cycles per batch | cycles per packet | cycles per request | ns per request | of which transmit kick | cycles per request without the kick |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |\n");
    for c in cs {
        s += &format!(
            "| {} | {:.1} | {} | {} | {} | {} | {:.1} % | {} |\n",
            c.workload,
            c.busy_percent,
            report::fmt_value(c.cycles_per_batch),
            report::fmt_value(c.cycles_per_packet),
            report::fmt_value(c.cycles_per_request),
            report::fmt_value(c.ns_per_request),
            c.kick_percent,
            report::fmt_value(c.cycles_per_request_no_kick)
        );
    }
    s
}

fn load_cmd(a: LoadArgs) -> Result<()> {
    if !(a.duration > 0.0 && a.duration.is_finite()) {
        bail!("--duration must be a positive number of seconds (got {})", a.duration);
    }
    if !(a.warmup >= 0.0 && a.warmup.is_finite()) {
        bail!("--warmup must be 0 or more seconds (got {})", a.warmup);
    }
    let cfg = LoadConfig {
        addr: a.connect,
        conns: a.conns,
        depth: a.depth,
        size: a.size,
        rate: a.rate,
        warmup: Duration::from_secs_f64(a.warmup),
        duration: Duration::from_secs_f64(a.duration),
    };
    let r = load::run(&cfg)?;
    println!(
        "{}",
        json!({
            "ok": true,
            "requests": r.requests,
            "total_requests": r.total_requests,
            "seconds": r.seconds,
            "rps": r.rps,
            "mean_us": r.latency.mean_us,
            "p50_us": r.latency.p50_us,
            "p99_us": r.latency.p99_us,
            "p999_us": r.latency.p999_us,
            "max_us": r.latency.max_us,
            "backlog": r.backlog,
            "conns": cfg.conns,
            "depth": cfg.depth,
            "size": cfg.size,
            "rate": cfg.rate,
        })
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Compare(a) => compare(a),
        Cmd::Load(a) => load_cmd(a),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tas-bench: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
