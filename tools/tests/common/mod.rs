//! The real-network test bed shared by the root tests (`veth.rs`, `ops.rs`, `preload.rs`,
//! `impair.rs`, `kvstore.rs`): a sandbox of two network namespaces joined by a veth pair
//! (`deploy/sandbox.sh`), or by two veth pairs through a middle namespace for the impairment
//! forwarder, `tasd` and `tas-echo` started in namespace A from the workspace's
//! `target/release/`, the kernel-side peers of `tools/peers/` in namespace B. Everything started is ended by PID in a drop guard and the
//! sandbox is removed, also when a test fails; on failure the logs of every process are
//! printed and the run directory is kept. See `veth.rs` for what the binaries must do.
#![allow(dead_code)]

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Service-side and peer-side addresses; every sandbox has its own namespaces, so all use these.
pub const IP_A: &str = "10.77.0.1";
pub const IP_B: &str = "10.77.0.2";
pub const IF_A: &str = "tas0";
pub const ECHO_PORT: u16 = 7;
/// The middle namespace's veths (towards A, towards B) in a bed made with [`Bed::up_with_middle`].
pub const IF_MA: &str = "fwd-a";
pub const IF_MB: &str = "fwd-b";

/// How long `tasd` may take to create its app socket: generous, it loads an XDP program and
/// sets up UMEM, but a service that needs more than this is broken.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One test at a time: each runs a busy-polling `tasd` and a transfer, and the CI machine
/// has two cores. Namespace names are unique anyway, so separate processes do not clash.
pub static SERIAL: Mutex<()> = Mutex::new(());
pub static SANDBOX_SEQ: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// The test bed
// ---------------------------------------------------------------------------------------------

/// Where the programs under test and the helpers are.
pub struct Paths {
    pub tasd: PathBuf,
    pub tas_echo: PathBuf,
    /// Checked when used (`Bed::tasctl`): the data tests do not need it.
    pub tasctl: PathBuf,
    /// Checked when used (the impairment tests start it).
    pub tas_impair: PathBuf,
    pub sandbox: PathBuf,
    pub peers: PathBuf,
}

impl Paths {
    pub fn find() -> Paths {
        let tools = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
        let repo = tools.parent().expect("tools/ has a parent").to_path_buf();
        let bin_dir = match std::env::var_os("TAS_BIN_DIR") {
            Some(dir) => PathBuf::from(dir),
            // This test runs as <target>/<profile>/deps/veth-HASH; the binaries under test are
            // the release ones of the same target directory, whatever profile the test has.
            None => std::env::current_exe()
                .expect("current_exe")
                .ancestors()
                .nth(3)
                .expect("test binary lives in <target>/<profile>/deps")
                .join("release"),
        };
        let paths = Paths {
            tasd: bin_dir.join("tasd"),
            tas_echo: bin_dir.join("tas-echo"),
            tasctl: bin_dir.join("tasctl"),
            tas_impair: bin_dir.join("tas-impair"),
            sandbox: repo.join("deploy/sandbox.sh"),
            peers: tools.join("peers"),
        };
        for bin in [&paths.tasd, &paths.tas_echo] {
            assert!(
                bin.is_file(),
                "{} not found: build it first with `cargo build --release --workspace` \
                 (bash deploy/test.sh does), or point TAS_BIN_DIR at the binaries",
                bin.display()
            );
            eprintln!(
                "using {} (modified {:?})",
                bin.display(),
                fs::metadata(bin).and_then(|m| m.modified()).ok()
            );
        }
        paths
    }
}

/// One sandbox, its run directory, and every process started in it.
pub struct Bed {
    pub paths: Paths,
    pub ns_a: String,
    pub ns_b: String,
    /// The middle namespace, in a bed made with [`Bed::up_with_middle`].
    pub ns_m: Option<String>,
    /// rx/tx queues per veth end (`TAS_QUEUES`); `tasd` gets `--fp-cores` this many.
    pub queues: u32,
    pub run_dir: PathBuf,
    pub procs: Mutex<Vec<Proc>>,
    pub _serial: std::sync::MutexGuard<'static, ()>,
}

/// A started process, ended by PID when dropped.
pub struct Proc {
    pub name: String,
    pub child: Child,
    pub stdout: PathBuf,
    pub stderr: PathBuf,
}

/// A finished command.
pub struct Output {
    pub what: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Bed {
    /// A and B joined by one veth pair.
    pub fn up(test: &str) -> Bed {
        Self::make(test, false, 1)
    }

    /// A and B joined through a middle namespace M (`deploy/sandbox.sh` with `TAS_NS_M`):
    /// A's veth peer is [`IF_MA`] and B's is [`IF_MB`], both in M, where nothing joins them
    /// until a forwarder (`tas-impair`) bridges them.
    pub fn up_with_middle(test: &str) -> Bed {
        Self::make(test, true, 1)
    }

    /// A and B joined by one veth pair with `queues` rx/tx queues per end; `tasd` runs one
    /// fast-path shard per queue (`--fp-cores queues`).
    pub fn up_queues(test: &str, queues: u32) -> Bed {
        Self::make(test, false, queues)
    }

    fn make(test: &str, middle: bool, queues: u32) -> Bed {
        let serial = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        require_root();
        let paths = Paths::find();
        let id = format!(
            "{}-{}",
            std::process::id(),
            SANDBOX_SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let run_dir = std::env::temp_dir().join(format!("tas-veth-{test}-{id}"));
        let _ = fs::remove_dir_all(&run_dir);
        fs::create_dir_all(&run_dir).expect("create run dir");
        let bed = Bed {
            paths,
            // deploy/test.sh removes tasv-PID-* sandboxes whose PID is gone (a killed run).
            ns_a: format!("tasv-{id}-a"),
            ns_b: format!("tasv-{id}-b"),
            ns_m: middle.then(|| format!("tasv-{id}-m")),
            queues,
            run_dir,
            procs: Mutex::new(Vec::new()),
            _serial: serial,
        };
        let out = bed.sandbox("up");
        assert!(
            out.status.success(),
            "deploy/sandbox.sh up{} failed ({}); check that iproute2 and ethtool are installed \
             (deploy/install-deps.sh) and that veth works here:\n{}{}",
            if middle { " (with TAS_NS_M)" } else { "" },
            out.status,
            out.stdout,
            out.stderr
        );
        bed
    }

    pub fn sandbox(&self, verb: &str) -> Output {
        let mut cmd = Command::new("bash");
        cmd.arg(&self.paths.sandbox)
            .arg(verb)
            .env("TAS_NS_A", &self.ns_a)
            .env("TAS_NS_B", &self.ns_b)
            .env("TAS_IP_A", IP_A)
            .env("TAS_IP_B", IP_B)
            .env("TAS_IF_A", IF_A)
            .env("TAS_QUEUES", self.queues.to_string());
        if let Some(m) = &self.ns_m {
            cmd.env("TAS_NS_M", m)
                .env("TAS_IF_MA", IF_MA)
                .env("TAS_IF_MB", IF_MB);
        }
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .expect("run bash deploy/sandbox.sh");
        Output {
            what: format!("sandbox.sh {verb}"),
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    pub fn app_socket(&self) -> PathBuf {
        self.run_dir.join("tasd.sock")
    }

    /// Start `cmd` inside namespace `ns` (`ip netns exec` execs it, so the PID is its own).
    pub fn spawn(&self, ns: &str, name: &str, cmd: &[&str], env: &[(&str, &Path)]) -> u32 {
        let stdout = self.run_dir.join(format!("{name}.out"));
        let stderr = self.run_dir.join(format!("{name}.err"));
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(cmd).stdin(Stdio::null());
        c.env("NO_COLOR", "1").env("PYTHONUNBUFFERED", "1");
        for (k, v) in env {
            c.env(k, v);
        }
        c.stdout(fs::File::create(&stdout).expect("create log"));
        c.stderr(fs::File::create(&stderr).expect("create log"));
        let child = c
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?} in {ns}: {e}"));
        let pid = child.id();
        self.procs.lock().unwrap().push(Proc {
            name: name.to_string(),
            child,
            stdout,
            stderr,
        });
        pid
    }

    /// Exit status of a started process, if it has ended.
    pub fn exited(&self, pid: u32) -> Option<ExitStatus> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .expect("known pid");
        p.child.try_wait().expect("try_wait")
    }

    /// Run a command in a namespace to completion, killing it after `timeout`.
    pub fn run(&self, ns: &str, name: &str, cmd: &[&str], timeout: Duration) -> Output {
        self.run_env(ns, name, cmd, &[], timeout)
    }

    pub fn run_env(
        &self,
        ns: &str,
        name: &str,
        cmd: &[&str],
        env: &[(&str, &Path)],
        timeout: Duration,
    ) -> Output {
        let name = format!("{name}-{}", SANDBOX_SEQ.fetch_add(1, Ordering::Relaxed));
        let pid = self.spawn(ns, &name, cmd, env);
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.exited(pid) {
                break status;
            }
            if Instant::now() > deadline {
                // How far it got: the kernel's view of the TCP connections at B.
                let ss = Command::new("ip")
                    .args(["netns", "exec", &self.ns_b, "ss", "-tni"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                self.stop(pid, Duration::from_secs(2));
                panic!(
                    "{cmd:?} in {ns} did not finish within {timeout:?}; its output is printed below. \
                     TCP at B when it was stopped (ss -tni):\n{ss}"
                );
            }
            sleep(Duration::from_millis(20));
        };
        let read = |suffix: &str| {
            fs::read_to_string(self.run_dir.join(format!("{name}.{suffix}"))).unwrap_or_default()
        };
        Output {
            what: format!("{cmd:?} in {ns}"),
            status,
            stdout: read("out"),
            stderr: read("err"),
        }
    }

    /// Run one of tools/peers/NAME.py in namespace B.
    pub fn run_b_peer(&self, peer: &str, args: &[&str], timeout: Duration) -> Output {
        let script = self.peer(peer);
        let mut cmd = vec!["python3", script.as_str()];
        cmd.extend_from_slice(args);
        self.run(&self.ns_b, peer, &cmd, timeout)
    }

    /// `stream_client.py` in B: `conns` connections each stream `bytes` through the echo
    /// server on the stack (IP_A:ECHO_PORT) and back. Checks that every byte came back
    /// (count and sha256) and returns the client's report.
    pub fn stream_through_echo_a(&self, bytes: u64, conns: u32, seed: u32, timeout: Duration) -> Value {
        let (bytes_s, conns_s, seed_s) = (bytes.to_string(), conns.to_string(), seed.to_string());
        let target = format!("{IP_A}:{ECHO_PORT}");
        let args = ["--connect", &target, "--bytes", &bytes_s, "--conns", &conns_s, "--seed", &seed_s];
        let s = self.run_b_peer("stream_client", &args, timeout).json_success();
        assert_eq!(s["bytes_received"], u64::from(conns) * bytes, "{s}");
        assert_eq!(s["sha256_sent"], s["sha256_received"], "{s}");
        s
    }

    /// Run `tas-echo ARGS` in namespace A, attached to this bed's tasd.
    pub fn run_a_tas_app(&self, name: &str, args: &[&str], timeout: Duration) -> Output {
        let bin = self
            .paths
            .tas_echo
            .to_str()
            .expect("utf-8 path")
            .to_string();
        let mut cmd = vec![bin.as_str()];
        cmd.extend_from_slice(args);
        let socket = self.app_socket();
        self.run_env(&self.ns_a, name, &cmd, &[("TAS_SOCKET", &socket)], timeout)
    }

    pub fn peer(&self, name: &str) -> String {
        self.paths
            .peers
            .join(format!("{name}.py"))
            .to_str()
            .expect("utf-8 path")
            .to_string()
    }

    /// Start tasd on IF_A in namespace A and wait until its app socket exists.
    pub fn start_tasd(&self) -> u32 {
        self.spawn_tasd(&[])
    }

    /// `start_tasd` with more flags, waiting for the control socket too.
    pub fn start_tasd_with(&self, extra: &[&str]) -> u32 {
        let pid = self.spawn_tasd(extra);
        self.wait_for_socket(pid, &self.control_socket(), "control socket");
        pid
    }

    /// The control socket of this bed's tasd.
    pub fn control_socket(&self) -> PathBuf {
        self.run_dir.join("control.sock")
    }

    /// Wait until `path` exists, failing if process `pid` (tasd) exits first.
    pub fn wait_for_socket(&self, pid: u32, path: &Path, what: &str) {
        let deadline = Instant::now() + READY_TIMEOUT;
        while !path.exists() {
            if let Some(status) = self.exited(pid) {
                panic!("tasd exited ({status}) before it created its {what} {}; its log is printed below", path.display());
            }
            assert!(
                Instant::now() < deadline,
                "tasd did not create its {what} {} within {READY_TIMEOUT:?}; its log is printed below",
                path.display()
            );
            sleep(Duration::from_millis(20));
        }
    }

    fn spawn_tasd(&self, extra: &[&str]) -> u32 {
        let run = self.run_dir.to_str().expect("utf-8 path");
        let tasd = self.paths.tasd.to_str().expect("utf-8 path");
        let app_socket = format!("{run}/tasd.sock");
        let control_socket = format!("{run}/control.sock");
        let ip = format!("{IP_A}/24");
        // TAS_TEST_TASD_LOG=FILTER: tasd's log filter (e.g. info,tas_slowpath::cc=trace for
        // the congestion controller's per-interval trace).
        let log = std::env::var("TAS_TEST_TASD_LOG").unwrap_or_else(|_| "info".into());
        let cores = self.queues.to_string();
        let mut cmd = vec![
            tasd,
            "--interface",
            IF_A,
            "--ip",
            &ip,
            "--fp-cores",
            &cores,
            "--app-socket",
            &app_socket,
            "--control-socket",
            &control_socket,
            "--log-level",
            &log,
        ];
        cmd.extend_from_slice(extra);
        let pid = self.spawn(&self.ns_a, "tasd", &cmd, &[]);
        let deadline = Instant::now() + READY_TIMEOUT;
        while !self.app_socket().exists() {
            if let Some(status) = self.exited(pid) {
                panic!("tasd exited ({status}) before it was ready (no app socket at {app_socket}); its log is printed below");
            }
            assert!(
                Instant::now() < deadline,
                "tasd did not create its app socket {app_socket} within {READY_TIMEOUT:?}; its log is printed below"
            );
            sleep(Duration::from_millis(20));
        }
        pid
    }

    /// SIGTERM tasd, wait for it, return its exit status and everything it printed.
    pub fn stop_tasd(&self, timeout: Duration) -> (ExitStatus, String) {
        let pid = {
            let procs = self.procs.lock().unwrap();
            procs
                .iter()
                .find(|p| p.name == "tasd")
                .expect("tasd was started")
                .child
                .id()
        };
        let status = self
            .stop(pid, timeout)
            .unwrap_or_else(|| panic!("tasd did not exit within {timeout:?} of SIGTERM"));
        let read = |suffix: &str| {
            fs::read_to_string(self.run_dir.join(format!("tasd.{suffix}"))).unwrap_or_default()
        };
        (status, read("out") + &read("err"))
    }

    /// Start `tas-echo server` in namespace A and wait until B can connect to it.
    pub fn start_tas_echo_server(&self) -> u32 {
        let bin = self.paths.tas_echo.to_str().expect("utf-8 path");
        let socket = self.app_socket();
        let port = ECHO_PORT.to_string();
        let pid = self.spawn(
            &self.ns_a,
            "tas-echo-server",
            &[bin, "server", "--port", &port],
            &[("TAS_SOCKET", &socket)],
        );
        self.wait_open(ECHO_PORT, pid, "tas-echo server");
        self.assert_not_a_kernel_listener(ECHO_PORT);
        pid
    }

    /// Wait until B can connect to `port` of A (process `pid` serves it; it must not exit).
    pub fn wait_open(&self, port: u16, pid: u32, what: &str) {
        let probe = self.run_b_peer(
            "tcp_probe",
            &[
                "--connect",
                &format!("{IP_A}:{port}"),
                "--expect",
                "open",
                "--wait",
                "20",
            ],
            Duration::from_secs(40),
        );
        if let Some(status) = self.exited(pid) {
            panic!("{what} exited ({status}) right after starting; its log is printed below");
        }
        probe.json_success();
    }

    /// A kernel listener would answer too: make sure `port` in A is tasd's, not the kernel's.
    pub fn assert_not_a_kernel_listener(&self, port: u16) {
        let listeners = self.capture_ok(&[
            "ip",
            "netns",
            "exec",
            &self.ns_a,
            "ss",
            "-Htln",
            &format!("sport = :{port}"),
        ]);
        assert!(
            listeners.trim().is_empty(),
            "port {port} in A is a kernel socket, not tasd's:\n{listeners}"
        );
    }

    pub fn start_kernel_echo_server_b(&self, port: u16) -> PathBuf {
        let ns = self.ns_b.clone();
        self.start_kernel_echo_server(&ns, "kernel-echo-b", port)
    }

    /// Start tools/peers/echo_server.py in `ns`; returns the file its JSON lines go to.
    pub fn start_kernel_echo_server(&self, ns: &str, name: &str, port: u16) -> PathBuf {
        self.start_kernel_server(ns, name, port, &[])
    }

    /// The echo server peer with more flags (`--discard`: a sink).
    pub fn start_kernel_server(&self, ns: &str, name: &str, port: u16, extra: &[&str]) -> PathBuf {
        let ready = self.run_dir.join(format!("{name}.ready"));
        let script = self.peer("echo_server");
        let port = port.to_string();
        let mut args = vec![
            "python3",
            &script,
            "--port",
            &port,
            "--ready-file",
            ready.to_str().expect("utf-8 path"),
        ];
        args.extend_from_slice(extra);
        let pid = self.spawn(ns, name, &args, &[]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !ready.exists() {
            if let Some(status) = self.exited(pid) {
                panic!("{name} exited ({status}) before listening");
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not listen within 10 s"
            );
            sleep(Duration::from_millis(20));
        }
        self.run_dir.join(format!("{name}.out"))
    }

    /// Wait until the kernel echo server has reported `n` closed connections; returns them.
    pub fn wait_for_closed_connections(
        &self,
        log: &Path,
        n: usize,
        timeout: Duration,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let closed: Vec<Value> = fs::read_to_string(log)
                .unwrap_or_default()
                .lines()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter(|v| v["event"] == "closed")
                .collect();
            if closed.len() >= n || Instant::now() > deadline {
                assert_eq!(
                    closed.len(),
                    n,
                    "the kernel echo server should have seen {n} connection(s) end (a client \
                     that never closes leaves them open); it reported: {closed:?}"
                );
                return closed;
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM one started process, SIGKILL after `grace`; its exit status if it ended.
    pub fn stop(&self, pid: u32, grace: Duration) -> Option<ExitStatus> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .expect("known pid");
        stop_child(&mut p.child, grace)
    }

    /// Run a short command in the root namespace (it may enter others itself) and return stdout.
    pub fn capture_ok(&self, cmd: &[&str]) -> String {
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .output()
            .expect("run command");
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn mac(&self, ns: &str, ifname: &str) -> String {
        let addr = self.capture_ok(&[
            "ip",
            "netns",
            "exec",
            ns,
            "cat",
            &format!("/sys/class/net/{ifname}/address"),
        ]);
        addr.trim().to_string()
    }

    /// One counter of /proc/net/snmp as seen inside namespace A.
    pub fn snmp_a(&self, proto: &str, field: &str) -> u64 {
        let snmp = self.capture_ok(&["ip", "netns", "exec", &self.ns_a, "cat", "/proc/net/snmp"]);
        snmp_counter(&snmp, proto, field)
    }

    pub fn kernel_tcp_counters_a(&self) -> KernelTcp {
        KernelTcp {
            active_opens: self.snmp_a("Tcp", "ActiveOpens"),
            passive_opens: self.snmp_a("Tcp", "PassiveOpens"),
        }
    }

    /// The kernel of A opened no TCP connection since `before`: the data went through tasd.
    pub fn assert_kernel_a_did_no_tcp(&self, before: &KernelTcp) {
        let now = self.kernel_tcp_counters_a();
        assert_eq!(
            (now.active_opens - before.active_opens, now.passive_opens - before.passive_opens),
            (0, 0),
            "the kernel of A opened TCP connections (active, passive): the traffic did not go through tasd"
        );
    }
}

impl Drop for Bed {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        let mut procs = self
            .procs
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        // Clients first, tasd last, so that its shutdown log is complete.
        for p in procs.iter_mut().rev() {
            stop_child(&mut p.child, Duration::from_secs(3));
        }
        if failed {
            eprintln!(
                "\n==== test failed; logs from {} ====",
                self.run_dir.display()
            );
            for p in procs.iter() {
                for (stream, path) in [("stdout", &p.stdout), ("stderr", &p.stderr)] {
                    let text = fs::read_to_string(path).unwrap_or_default();
                    if text.is_empty() {
                        eprintln!("---- {} {stream}: empty ----", p.name);
                        continue;
                    }
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = &lines[lines.len().saturating_sub(150)..];
                    eprintln!(
                        "---- {} {stream} (last {} of {} lines) ----",
                        p.name,
                        tail.len(),
                        lines.len()
                    );
                    for l in tail {
                        eprintln!("{l}");
                    }
                }
            }
            eprintln!("==== end of logs; the run directory is kept ====");
        }
        drop(procs);
        let out = self.sandbox("down");
        if !out.status.success() {
            eprintln!(
                "warning: sandbox.sh down failed: {}{}",
                out.stdout, out.stderr
            );
        }
        if !failed {
            let _ = fs::remove_dir_all(&self.run_dir);
        }
    }
}

impl Output {
    pub fn assert_success(&self) {
        assert!(
            self.status.success(),
            "{} failed ({}):\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.what,
            self.status,
            self.stdout,
            self.stderr
        );
    }

    /// Exit status 0 and a JSON summary line with "ok": true; returns the summary.
    pub fn json_success(&self) -> Value {
        self.assert_success();
        let summary = self
            .stdout
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok())
            .unwrap_or_else(|| panic!("{} printed no JSON summary:\n{}", self.what, self.stdout));
        assert_eq!(summary["ok"], true, "{}: {summary}", self.what);
        summary
    }
}

pub struct KernelTcp {
    pub active_opens: u64,
    pub passive_opens: u64,
}

// ---------------------------------------------------------------------------------------------
// Helpers without state
// ---------------------------------------------------------------------------------------------

pub fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the real-network tests need root (network namespaces, veth, XDP): run `sudo bash deploy/test.sh`, \
         or `sudo cargo test -p tas-tools --test NAME -- --ignored` after `cargo build --release --workspace`"
    );
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status if the child ended.
pub fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: kill() only sends a signal. `pid` is our own child, not yet reaped (try_wait
    // above saw it running), so the PID cannot have been reused by another process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

/// `field` of `proto` ("Tcp", "IpExt") from /proc/net/snmp's or /proc/net/netstat's
/// header/value line pairs, if it is there.
pub fn net_counter(table: &str, proto: &str, field: &str) -> Option<u64> {
    let prefix = format!("{proto}:");
    let mut lines = table.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let i = names.split_whitespace().position(|n| n == field)?;
    values.split_whitespace().nth(i)?.parse().ok()
}

/// `field` of `proto` ("Tcp", "Icmp") from /proc/net/snmp's header/value line pairs.
pub fn snmp_counter(snmp: &str, proto: &str, field: &str) -> u64 {
    let prefix = format!("{proto}:");
    let mut lines = snmp.lines().filter(|l| l.starts_with(&prefix));
    let (names, values) = (lines.next(), lines.next());
    let (Some(names), Some(values)) = (names, values) else {
        panic!("no {proto} lines in /proc/net/snmp")
    };
    let i = names
        .split_whitespace()
        .position(|n| n == field)
        .unwrap_or_else(|| panic!("no {proto} {field} counter"));
    values
        .split_whitespace()
        .nth(i)
        .and_then(|v| v.parse().ok())
        .expect("numeric counter")
}

/// The N of the last line that mentions `shutdown` and has a `flows=N` token.
pub fn shutdown_flows(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .map(strip_ansi)
        .filter(|l| l.contains("shutdown"))
        .find_map(|l| {
            l.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
                .find_map(|tok| tok.strip_prefix("flows=").and_then(|n| n.parse().ok()))
        })
}

pub fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters final-byte
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Every 64-hex-digit word in `text` (how a sha256 is printed).
pub fn hex_digests(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 64)
        .map(|w| w.to_ascii_lowercase())
        .collect()
}
