//! Real-network tests: `tasd` on one end of a veth pair, the Linux kernel's own TCP on the other.
//!
//! Each test builds its own sandbox (`deploy/sandbox.sh` with namespace names unique to this
//! process and test), starts `tasd` and `tas-echo` from the workspace's `target/release/` in
//! namespace A, drives the kernel-side peers of `tools/peers/` in namespace B, and checks every
//! byte. Everything it starts is ended by PID in a drop guard, and the sandbox is removed, also
//! when the test fails; on failure the logs of every process are printed.
//!
//! They need root (namespaces, veth, XDP) and the release binaries, so they are `#[ignore]`d:
//!
//! ```text
//! cargo build --release --workspace
//! sudo cargo test -p tas-tools --test veth -- --ignored --test-threads=1
//! ```
//!
//! (`bash deploy/test.sh` does both.) A test that cannot set up — not root, sandbox failure,
//! binaries missing, `tasd` not ready in time — fails and says what to do; it never passes
//! without having run. `TAS_BIN_DIR` overrides where `tasd` and `tas-echo` are taken from.
//!
//! What the tests rely on from the binaries (see docs/testing.md):
//! - `tasd` creates its app socket only once it serves, and exits 0 on SIGTERM after printing
//!   a line with `shutdown` and `flows=N` (N = connections it still holds, TIME_WAIT excluded)
//!   on stdout or stderr.
//! - `tas-echo server` echoes every byte and closes a connection once the client has closed
//!   its side and everything is echoed; `tas-echo client` exits non-zero on any mismatch.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::thread::sleep;
use std::time::{Duration, Instant};

use serde_json::Value;

/// Service-side and peer-side addresses; every sandbox has its own namespaces, so all use these.
const IP_A: &str = "10.77.0.1";
const IP_B: &str = "10.77.0.2";
const IF_A: &str = "tas0";
const ECHO_PORT: u16 = 7;

/// How long `tasd` may take to create its app socket: generous, it loads an XDP program and
/// sets up UMEM, but a service that needs more than this is broken.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// One test at a time: each runs a busy-polling `tasd` and a transfer, and the CI machine
/// has two cores. Namespace names are unique anyway, so separate processes do not clash.
static SERIAL: Mutex<()> = Mutex::new(());
static SANDBOX_SEQ: AtomicUsize = AtomicUsize::new(0);

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// A kernel client in B sends 100 MB to `tas-echo server` on the stack and gets all of it back.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn kernel_client_streams_100mb_through_tas_echo_server() {
    let bed = Bed::up("stream");
    bed.start_tasd();
    bed.start_tas_echo_server();
    let before = bed.kernel_tcp_counters_a();

    let out = bed.run_b_peer(
        "stream_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--bytes",
            "100000000",
            "--conns",
            "1",
            "--seed",
            "1",
        ],
        Duration::from_secs(300),
    );
    let s = out.json_success();
    assert_eq!(s["bytes_received"], 100_000_000u64, "{s}");
    assert_eq!(s["sha256_sent"], s["sha256_received"], "{s}");
    eprintln!("stream 100 MB: {s}");

    bed.assert_kernel_a_did_no_tcp(&before);
}

/// `tas-echo client` on the stack sends 100 MB to a kernel echo server in B.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tas_echo_client_streams_100mb_to_kernel_echo_server() {
    let bed = Bed::up("client");
    bed.start_tasd();
    let server = bed.start_kernel_echo_server_b(ECHO_PORT);
    let before = bed.kernel_tcp_counters_a();

    let out = bed.run_a_tas_app(
        "tas-echo-client",
        &[
            "client",
            "--connect",
            &format!("{IP_B}:{ECHO_PORT}"),
            "--bytes",
            "100000000",
            "--conns",
            "1",
        ],
        Duration::from_secs(300),
    );
    out.assert_success();
    eprintln!("tas-echo client: {}", out.stdout.trim());

    // The server's own account of the connection: exactly one, exactly 10^8 bytes, no error.
    let closed = bed.wait_for_closed_connections(&server, 1, Duration::from_secs(10));
    assert_eq!(
        closed[0]["bytes"], 100_000_000u64,
        "kernel echo server saw: {closed:?}"
    );
    assert!(
        closed[0]["error"].is_null(),
        "kernel echo server saw: {closed:?}"
    );
    // tas-echo checks the echo itself (non-zero exit on mismatch); if its summary names a
    // sha256, it must be the one the kernel computed over the bytes that crossed the wire.
    let server_sha = closed[0]["sha256"].as_str().unwrap_or_default();
    match hex_digests(&out.stdout).as_slice() {
        [] => eprintln!("note: tas-echo's summary shows no sha256; relying on its exit status"),
        shas => assert!(
            shas.iter().any(|h| h == server_sha),
            "tas-echo reported sha256 {shas:?}, the kernel echo server computed {server_sha}"
        ),
    }

    bed.assert_kernel_a_did_no_tcp(&before);
}

/// 200 kernel connections at once, each doing 100 request/responses with `tas-echo server`.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn kernel_rpc_200_connections_through_tas_echo_server() {
    let bed = Bed::up("rpc");
    bed.start_tasd();
    bed.start_tas_echo_server();
    let before = bed.kernel_tcp_counters_a();

    let out = bed.run_b_peer(
        "rpc_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--conns",
            "200",
            "--rpcs",
            "100",
            "--size",
            "100",
        ],
        Duration::from_secs(300),
    );
    let s = out.json_success();
    assert_eq!(s["rpcs_done"], 200 * 100, "{s}");
    eprintln!("rpc 200x100: {s}");

    bed.assert_kernel_a_did_no_tcp(&before);
}

/// The kernel keeps the interface: ARP, ICMP and other ports still reach it while tasd runs;
/// and after the clients are done, tasd holds no flows when it shuts down.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn kernel_coexists_and_no_flows_are_left() {
    let bed = Bed::up("coexist");
    bed.start_tasd();
    bed.start_tas_echo_server();

    let link = bed.capture_ok(&[
        "ip", "netns", "exec", &bed.ns_a, "ip", "-d", "link", "show", "dev", IF_A,
    ]);
    assert!(
        link.contains("prog/xdp"),
        "no XDP program is attached to {IF_A} while tasd runs:\n{link}"
    );

    // ICMP: answered by the kernel of A.
    let icmp_before = bed.snmp_a("Icmp", "OutEchoReps");
    bed.run(
        &bed.ns_b,
        "ping",
        &["ping", "-c", "3", "-i", "0.2", "-W", "2", IP_A],
        Duration::from_secs(15),
    )
    .assert_success();
    let replies = bed.snmp_a("Icmp", "OutEchoReps") - icmp_before;
    assert!(
        replies >= 3,
        "ping was answered, but not by the kernel of A ({replies} echo replies counted there)"
    );

    // ARP: B learned A's MAC from the kernel's ARP reply.
    let mac_a = bed.mac(&bed.ns_a, IF_A);
    let neigh = bed.capture_ok(&["ip", "-n", &bed.ns_b, "neigh", "show", IP_A]);
    assert!(
        neigh.contains(&mac_a),
        "B has no ARP entry for {IP_A} with A's MAC {mac_a}: {neigh:?}"
    );

    // A port nobody owns: the kernel refuses it (RST), tasd does not swallow it.
    bed.run_b_peer(
        "tcp_probe",
        &["--connect", &format!("{IP_A}:9"), "--expect", "refused"],
        Duration::from_secs(10),
    )
    .json_success();

    // A kernel service on another port keeps working beside tasd (think sshd).
    let before = bed.kernel_tcp_counters_a();
    bed.start_kernel_echo_server(&bed.ns_a.clone(), "kernel-echo-a", 8);
    bed.run_b_peer(
        "stream_client",
        &[
            "--connect",
            &format!("{IP_A}:8"),
            "--bytes",
            "1000000",
            "--conns",
            "2",
            "--seed",
            "3",
        ],
        Duration::from_secs(60),
    )
    .json_success();
    let after = bed.kernel_tcp_counters_a();
    assert_eq!(
        after.passive_opens - before.passive_opens,
        2,
        "the kernel of A should have accepted both connections to port 8"
    );

    // Traffic through tasd, closed by the kernel clients; then tasd must hold no flows.
    let before = bed.kernel_tcp_counters_a();
    bed.run_b_peer(
        "stream_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--bytes",
            "10000000",
            "--conns",
            "4",
            "--seed",
            "2",
        ],
        Duration::from_secs(120),
    )
    .json_success();
    bed.run_b_peer(
        "rpc_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--conns",
            "20",
            "--rpcs",
            "50",
            "--size",
            "1000",
        ],
        Duration::from_secs(120),
    )
    .json_success();
    bed.assert_kernel_a_did_no_tcp(&before);

    // Every client saw the server's FIN; the last ACK of each close reaches tasd within
    // microseconds on a veth. A second is plenty.
    sleep(Duration::from_secs(1));
    let (status, log) = bed.stop_tasd(Duration::from_secs(10));
    assert!(
        status.success(),
        "tasd did not exit cleanly on SIGTERM: {status}"
    );
    match shutdown_flows(&log) {
        Some(0) => {}
        Some(n) => panic!("tasd still held {n} flows at shutdown after every client had closed"),
        None => panic!(
            "tasd printed no shutdown line with flows=N on SIGTERM; this test needs one \
             (e.g. `shutdown: flows=0 listeners=1 apps=1`, see docs/testing.md)"
        ),
    }
}

// ---------------------------------------------------------------------------------------------
// The test bed
// ---------------------------------------------------------------------------------------------

/// Where the programs under test and the helpers are.
struct Paths {
    tasd: PathBuf,
    tas_echo: PathBuf,
    sandbox: PathBuf,
    peers: PathBuf,
}

impl Paths {
    fn find() -> Paths {
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
struct Bed {
    paths: Paths,
    ns_a: String,
    ns_b: String,
    run_dir: PathBuf,
    procs: Mutex<Vec<Proc>>,
    _serial: std::sync::MutexGuard<'static, ()>,
}

/// A started process, ended by PID when dropped.
struct Proc {
    name: String,
    child: Child,
    stdout: PathBuf,
    stderr: PathBuf,
}

/// A finished command.
struct Output {
    what: String,
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

impl Bed {
    fn up(test: &str) -> Bed {
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
            run_dir,
            procs: Mutex::new(Vec::new()),
            _serial: serial,
        };
        let out = bed.sandbox("up");
        assert!(
            out.status.success(),
            "deploy/sandbox.sh up failed ({}); check that iproute2 and ethtool are installed \
             (deploy/install-deps.sh) and that veth works here:\n{}{}",
            out.status,
            out.stdout,
            out.stderr
        );
        bed
    }

    fn sandbox(&self, verb: &str) -> Output {
        let out = Command::new("bash")
            .arg(&self.paths.sandbox)
            .arg(verb)
            .env("TAS_NS_A", &self.ns_a)
            .env("TAS_NS_B", &self.ns_b)
            .env("TAS_IP_A", IP_A)
            .env("TAS_IP_B", IP_B)
            .env("TAS_IF_A", IF_A)
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

    fn app_socket(&self) -> PathBuf {
        self.run_dir.join("tasd.sock")
    }

    /// Start `cmd` inside namespace `ns` (`ip netns exec` execs it, so the PID is its own).
    fn spawn(&self, ns: &str, name: &str, cmd: &[&str], env: &[(&str, &Path)]) -> u32 {
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
    fn exited(&self, pid: u32) -> Option<ExitStatus> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .expect("known pid");
        p.child.try_wait().expect("try_wait")
    }

    /// Run a command in a namespace to completion, killing it after `timeout`.
    fn run(&self, ns: &str, name: &str, cmd: &[&str], timeout: Duration) -> Output {
        self.run_env(ns, name, cmd, &[], timeout)
    }

    fn run_env(
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
                self.stop(pid, Duration::from_secs(2));
                panic!("{cmd:?} in {ns} did not finish within {timeout:?}; its output is printed below");
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
    fn run_b_peer(&self, peer: &str, args: &[&str], timeout: Duration) -> Output {
        let script = self.peer(peer);
        let mut cmd = vec!["python3", script.as_str()];
        cmd.extend_from_slice(args);
        self.run(&self.ns_b, peer, &cmd, timeout)
    }

    /// Run `tas-echo ARGS` in namespace A, attached to this bed's tasd.
    fn run_a_tas_app(&self, name: &str, args: &[&str], timeout: Duration) -> Output {
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

    fn peer(&self, name: &str) -> String {
        self.paths
            .peers
            .join(format!("{name}.py"))
            .to_str()
            .expect("utf-8 path")
            .to_string()
    }

    /// Start tasd on IF_A in namespace A and wait until its app socket exists.
    fn start_tasd(&self) -> u32 {
        let run = self.run_dir.to_str().expect("utf-8 path");
        let tasd = self.paths.tasd.to_str().expect("utf-8 path");
        let app_socket = format!("{run}/tasd.sock");
        let control_socket = format!("{run}/control.sock");
        let ip = format!("{IP_A}/24");
        let pid = self.spawn(
            &self.ns_a,
            "tasd",
            &[
                tasd,
                "--interface",
                IF_A,
                "--ip",
                &ip,
                "--fp-cores",
                "1",
                "--app-socket",
                &app_socket,
                "--control-socket",
                &control_socket,
                "--log-level",
                "info",
            ],
            &[],
        );
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
    fn stop_tasd(&self, timeout: Duration) -> (ExitStatus, String) {
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
    fn start_tas_echo_server(&self) -> u32 {
        let bin = self.paths.tas_echo.to_str().expect("utf-8 path");
        let socket = self.app_socket();
        let port = ECHO_PORT.to_string();
        let pid = self.spawn(
            &self.ns_a,
            "tas-echo-server",
            &[bin, "server", "--port", &port],
            &[("TAS_SOCKET", &socket)],
        );
        let probe = self.run_b_peer(
            "tcp_probe",
            &[
                "--connect",
                &format!("{IP_A}:{ECHO_PORT}"),
                "--expect",
                "open",
                "--wait",
                "20",
            ],
            Duration::from_secs(40),
        );
        if let Some(status) = self.exited(pid) {
            panic!(
                "tas-echo server exited ({status}) right after starting; its log is printed below"
            );
        }
        probe.json_success();
        // A kernel listener would answer too: make sure the port is tasd's, not the kernel's.
        let listeners = self.capture_ok(&[
            "ip",
            "netns",
            "exec",
            &self.ns_a,
            "ss",
            "-Htln",
            &format!("sport = :{ECHO_PORT}"),
        ]);
        assert!(
            listeners.trim().is_empty(),
            "port {ECHO_PORT} in A is a kernel socket, not tasd's:\n{listeners}"
        );
        pid
    }

    fn start_kernel_echo_server_b(&self, port: u16) -> PathBuf {
        let ns = self.ns_b.clone();
        self.start_kernel_echo_server(&ns, "kernel-echo-b", port)
    }

    /// Start tools/peers/echo_server.py in `ns`; returns the file its JSON lines go to.
    fn start_kernel_echo_server(&self, ns: &str, name: &str, port: u16) -> PathBuf {
        let ready = self.run_dir.join(format!("{name}.ready"));
        let script = self.peer("echo_server");
        let port = port.to_string();
        let pid = self.spawn(
            ns,
            name,
            &[
                "python3",
                &script,
                "--port",
                &port,
                "--ready-file",
                ready.to_str().expect("utf-8 path"),
            ],
            &[],
        );
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
    fn wait_for_closed_connections(&self, log: &Path, n: usize, timeout: Duration) -> Vec<Value> {
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
                    "the kernel echo server reported these closed connections: {closed:?}"
                );
                return closed;
            }
            sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM one started process, SIGKILL after `grace`; its exit status if it ended.
    fn stop(&self, pid: u32, grace: Duration) -> Option<ExitStatus> {
        let mut procs = self.procs.lock().unwrap();
        let p = procs
            .iter_mut()
            .find(|p| p.child.id() == pid)
            .expect("known pid");
        stop_child(&mut p.child, grace)
    }

    /// Run a short command in the root namespace (it may enter others itself) and return stdout.
    fn capture_ok(&self, cmd: &[&str]) -> String {
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

    fn mac(&self, ns: &str, ifname: &str) -> String {
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
    fn snmp_a(&self, proto: &str, field: &str) -> u64 {
        let snmp = self.capture_ok(&["ip", "netns", "exec", &self.ns_a, "cat", "/proc/net/snmp"]);
        snmp_counter(&snmp, proto, field)
    }

    fn kernel_tcp_counters_a(&self) -> KernelTcp {
        KernelTcp {
            active_opens: self.snmp_a("Tcp", "ActiveOpens"),
            passive_opens: self.snmp_a("Tcp", "PassiveOpens"),
        }
    }

    /// The kernel of A opened no TCP connection since `before`: the data went through tasd.
    fn assert_kernel_a_did_no_tcp(&self, before: &KernelTcp) {
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
    fn assert_success(&self) {
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
    fn json_success(&self) -> Value {
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

struct KernelTcp {
    active_opens: u64,
    passive_opens: u64,
}

// ---------------------------------------------------------------------------------------------
// Helpers without state
// ---------------------------------------------------------------------------------------------

fn require_root() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "the real-network tests need root (network namespaces, veth, XDP): run `sudo bash deploy/test.sh`, \
         or `sudo cargo test -p tas-tools --test veth -- --ignored` after `cargo build --release --workspace`"
    );
}

/// SIGTERM, wait up to `grace`, then SIGKILL. Returns the exit status if the child ended.
fn stop_child(child: &mut Child, grace: Duration) -> Option<ExitStatus> {
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

/// `field` of `proto` ("Tcp", "Icmp") from /proc/net/snmp's header/value line pairs.
fn snmp_counter(snmp: &str, proto: &str, field: &str) -> u64 {
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
fn shutdown_flows(log: &str) -> Option<u64> {
    log.lines()
        .rev()
        .map(strip_ansi)
        .filter(|l| l.contains("shutdown"))
        .find_map(|l| {
            l.split(|c: char| c.is_whitespace() || c == ',' || c == ';')
                .find_map(|tok| tok.strip_prefix("flows=").and_then(|n| n.parse().ok()))
        })
}

fn strip_ansi(line: &str) -> String {
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
fn hex_digests(text: &str) -> Vec<String> {
    text.split(|c: char| !c.is_ascii_hexdigit())
        .filter(|w| w.len() == 64)
        .map(|w| w.to_ascii_lowercase())
        .collect()
}

// The parsers above run without privileges, so they are tested like any other code.
#[test]
fn parses_shutdown_flows() {
    assert_eq!(
        shutdown_flows("x\nINFO tasd: shutdown: flows=0 listeners=1 apps=1\n"),
        Some(0)
    );
    assert_eq!(
        shutdown_flows("\u{1b}[2mts\u{1b}[0m INFO shutdown \u{1b}[3mflows\u{1b}[0m=3"),
        Some(3)
    );
    assert_eq!(
        shutdown_flows("INFO shutdown flows=3, listeners=0"),
        Some(3)
    );
    assert_eq!(shutdown_flows("flows=2\nready"), None);
}

#[test]
fn reads_snmp_counters() {
    let snmp = "Icmp: InMsgs OutEchoReps\nIcmp: 5 3\nTcp: RtoAlgorithm ActiveOpens PassiveOpens\nTcp: 1 7 9\n";
    assert_eq!(snmp_counter(snmp, "Tcp", "PassiveOpens"), 9);
    assert_eq!(snmp_counter(snmp, "Icmp", "OutEchoReps"), 3);
}

#[test]
fn finds_hex_digests() {
    let sha = "b30638dc7198e17913f4bd738acd38c578c4e7d3bd384658ef994d2d6fcccd17";
    assert_eq!(
        hex_digests(&format!("ok bytes=10 sha256={sha} t=1")),
        vec![sha.to_string()]
    );
    assert!(hex_digests("no digest 1234").is_empty());
}
