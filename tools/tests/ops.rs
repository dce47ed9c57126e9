//! Operating tasd, on the real network: `tasctl` against a running `tasd` in the sandbox,
//! the Prometheus endpoint, packet capture read back by tcpdump, configuration reload on
//! SIGHUP, clean shutdown, and the systemd unit's ExecStart run the way the unit runs it
//! (an unprivileged user with exactly the unit's capabilities, sd_notify readiness).
//!
//! Root tests, like `veth.rs` (same test bed, `common/mod.rs`):
//!
//! ```text
//! cargo build --release --workspace
//! sudo cargo test -p tas-tools --test ops -- --ignored --test-threads=1
//! ```
//!
//! Every command's answer is checked against traffic of known size: `hold_client.py` in
//! namespace B moves exactly N bytes per connection through `tas-echo server` and keeps the
//! connections open while the test looks at them.

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::*;
use serde_json::Value;
use tas_tools::table;

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// A finished tasctl run.
struct Ctl {
    code: i32,
    stdout: String,
    stderr: String,
    args: Vec<String>,
}

impl Ctl {
    fn ok(self) -> Ctl {
        assert_eq!(
            self.code, 0,
            "tasctl {:?} failed:\n{}{}",
            self.args, self.stdout, self.stderr
        );
        self
    }
    fn json(self) -> Value {
        let s = self.ok();
        serde_json::from_str(&s.stdout)
            .unwrap_or_else(|e| panic!("tasctl {:?} printed no JSON ({e}):\n{}", s.args, s.stdout))
    }
    fn fails_with(self, words: &str) -> Ctl {
        assert_eq!(
            self.code, 1,
            "tasctl {:?} should fail with exit 1:\n{}{}",
            self.args, self.stdout, self.stderr
        );
        assert!(
            self.stderr.contains(words),
            "tasctl {:?}: expected {words:?} in:\n{}",
            self.args,
            self.stderr
        );
        self
    }
}

trait BedOps {
    fn tasctl_bin(&self) -> PathBuf;
    fn tasctl(&self, args: &[&str]) -> Ctl;
    fn tasctl_in_a(&self, args: &[&str]) -> Ctl;
    fn hold(&self, name: &str, bytes: u64, conns: u32) -> Holder;
    fn hold_with(&self, name: &str, port: u16, args: &[&str]) -> Holder;
    fn log_of(&self, name: &str) -> String;
    fn wait_log(&self, name: &str, needle: &str, timeout: Duration) -> String;
    fn wait_flows(&self, n: usize, timeout: Duration) -> Vec<Value>;
}

/// A `hold_client.py` in B holding connections open.
struct Holder {
    pid: u32,
    until: PathBuf,
    out: PathBuf,
    ports: Vec<u64>,
}

impl BedOps for Bed {
    fn tasctl_bin(&self) -> PathBuf {
        let p = self.paths.tasctl.clone();
        assert!(
            p.is_file(),
            "{} not found: build it with `cargo build --release --workspace`",
            p.display()
        );
        p
    }

    /// Run tasctl (in the root namespace: the control socket is a path) on this bed's tasd.
    fn tasctl(&self, args: &[&str]) -> Ctl {
        let sock = self.control_socket();
        let mut full = vec!["--socket", sock.to_str().unwrap()];
        full.extend_from_slice(args);
        run_tasctl(&self.tasctl_bin(), &full, &[])
    }

    /// Run tasctl inside namespace A (for --tcp on A's loopback).
    fn tasctl_in_a(&self, args: &[&str]) -> Ctl {
        let bin = self.tasctl_bin();
        let mut full = vec!["netns", "exec", self.ns_a.as_str(), bin.to_str().unwrap()];
        full.extend_from_slice(args);
        let out = Command::new("ip")
            .args(&full)
            .stdin(Stdio::null())
            .output()
            .expect("run ip netns exec tasctl");
        Ctl {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn hold(&self, name: &str, bytes: u64, conns: u32) -> Holder {
        let (bytes, conns) = (bytes.to_string(), conns.to_string());
        self.hold_with(name, ECHO_PORT, &["--bytes", &bytes, "--conns", &conns])
    }

    fn hold_with(&self, name: &str, port: u16, args: &[&str]) -> Holder {
        let ready = self.run_dir.join(format!("{name}.ready"));
        let until = self.run_dir.join(format!("{name}.until"));
        let script = self.peer("hold_client");
        let connect = format!("{IP_A}:{port}");
        let mut cmd = vec![
            "python3",
            &script,
            "--connect",
            &connect,
            "--ready-file",
            ready.to_str().unwrap(),
            "--until-file",
            until.to_str().unwrap(),
        ];
        cmd.extend_from_slice(args);
        let pid = self.spawn(&self.ns_b.clone(), name, &cmd, &[]);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready.exists() {
            if let Some(st) = self.exited(pid) {
                panic!("{name} exited ({st}) before its connections were ready");
            }
            assert!(
                Instant::now() < deadline,
                "{name}: connections not ready within 30 s"
            );
            sleep(Duration::from_millis(20));
        }
        let out = self.run_dir.join(format!("{name}.out"));
        let first: Value =
            serde_json::from_str(fs::read_to_string(&out).unwrap().lines().next().unwrap())
                .unwrap();
        let ports = first["local_ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p.as_u64().unwrap())
            .collect();
        Holder {
            pid,
            until,
            out,
            ports,
        }
    }

    fn log_of(&self, name: &str) -> String {
        let read = |s: &str| {
            fs::read_to_string(self.run_dir.join(format!("{name}.{s}"))).unwrap_or_default()
        };
        read("out") + &read("err")
    }

    fn wait_log(&self, name: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let log = self.log_of(name);
            if log.contains(needle) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not log {needle:?} within {timeout:?}:\n{log}"
            );
            sleep(Duration::from_millis(50));
        }
    }

    /// Poll `tasctl flows --json` until it lists `n` flows.
    fn wait_flows(&self, n: usize, timeout: Duration) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let flows = self.tasctl(&["flows", "--json"]).json();
            let flows = flows.as_array().unwrap().clone();
            if flows.len() == n {
                return flows;
            }
            assert!(
                Instant::now() < deadline,
                "expected {n} flows within {timeout:?}, tasd lists: {flows:#?}"
            );
            sleep(Duration::from_millis(100));
        }
    }
}

impl Holder {
    /// Tell the client to close its connections (or see how the server ended them), wait
    /// for it, and return how each connection ended, by local port.
    fn finish(&self, bed: &Bed, close: bool) -> BTreeMap<u64, String> {
        if close {
            fs::write(&self.until, "close\n").unwrap();
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(st) = bed.exited(self.pid) {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "hold_client did not finish within 30 s"
            );
            sleep(Duration::from_millis(20));
        };
        let text = fs::read_to_string(&self.out).unwrap();
        assert!(status.success(), "hold_client failed ({status}):\n{text}");
        let last: Value = serde_json::from_str(text.lines().last().unwrap()).unwrap();
        assert_eq!(last["ok"], true, "{last}");
        last["ends"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().to_string()))
            .collect()
    }
}

fn run_tasctl(bin: &Path, args: &[&str], env: &[(&str, &str)]) -> Ctl {
    let mut c = Command::new(bin);
    c.args(args)
        .stdin(Stdio::null())
        .env("NO_COLOR", "1")
        .env_remove("TAS_CONTROL_SOCKET");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().expect("run tasctl");
    Ctl {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        args: args.iter().map(|s| s.to_string()).collect(),
    }
}

/// The flow of `flows` whose remote port is `port`.
fn flow_with_port(flows: &[Value], port: u64) -> &Value {
    flows
        .iter()
        .find(|f| f["remote"] == format!("{IP_B}:{port}"))
        .unwrap_or_else(|| panic!("no flow from {IP_B}:{port} in {flows:#?}"))
}

/// Counter `name` of core `core` (None: the slow path) from `tasctl stats --json`.
fn counter(stats: &Value, name: &str, core: Option<u64>) -> u64 {
    stats
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == name && c["core"].as_u64() == core)
        .unwrap_or_else(|| panic!("no counter {name} (core {core:?})"))["value"]
        .as_u64()
        .unwrap()
}

/// Scrape tasd's metrics endpoint at `addr` inside namespace A.
fn scrape(bed: &Bed, addr: &str) -> String {
    let code = format!("import urllib.request,sys; sys.stdout.write(urllib.request.urlopen('http://{addr}/metrics', timeout=5).read().decode())");
    bed.capture_ok(&["ip", "netns", "exec", &bed.ns_a, "python3", "-c", &code])
}

/// `name{labels} value` lines of a Prometheus page.
fn prom_values(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .filter_map(|l| {
            l.rsplit_once(' ')
                .map(|(k, v)| (k.to_string(), v.parse().unwrap()))
        })
        .collect()
}

/// Payload bytes per direction from `tcpdump -nn -S -r FILE` lines, counting each sequence
/// range once (retransmissions do not count twice), and the TCP flags seen per direction.
struct Dump {
    lines: Vec<String>,
}

impl Dump {
    fn read(bed: &Bed, file: &Path, filter: &[&str]) -> Dump {
        let mut cmd = vec!["tcpdump", "-nn", "-S", "-r", file.to_str().unwrap()];
        cmd.extend_from_slice(filter);
        let out = Command::new(cmd[0])
            .args(&cmd[1..])
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| {
                panic!("cannot run tcpdump ({e}): install it (deploy/install-deps.sh)")
            });
        let _ = bed;
        assert!(
            out.status.success(),
            "tcpdump -r {} failed: {}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Dump {
            lines: String::from_utf8_lossy(&out.stdout)
                .lines()
                .map(String::from)
                .collect(),
        }
    }

    fn between<'a>(&'a self, src: &'a str, dst: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        let pat = format!(" {src} > {dst}:");
        self.lines.iter().filter(move |l| l.contains(&pat))
    }

    fn count_flags(&self, src: &str, dst: &str, flags: &str) -> usize {
        self.between(src, dst)
            .filter(|l| l.contains(&format!("Flags [{flags}]")))
            .count()
    }

    /// Bytes of payload from `src` to `dst`, each sequence number counted once.
    fn payload(&self, src: &str, dst: &str) -> u64 {
        let mut ranges: Vec<(u64, u64)> = self
            .between(src, dst)
            .filter_map(|l| {
                let seq = l.split(", seq ").nth(1)?.split(',').next()?;
                let (a, b) = seq.split_once(':')?;
                Some((a.parse().ok()?, b.parse().ok()?))
            })
            .collect();
        ranges.sort();
        let (mut total, mut end) = (0u64, 0u64);
        for (a, b) in ranges {
            let a = a.max(end);
            if b > a {
                total += b - a;
                end = b;
            }
        }
        total
    }
}

// ---------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------

/// Every read-only tasctl command reports what known traffic did, its JSON matches its
/// table, filters select the right flows, and the Prometheus scrape equals GetCounters.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasctl_reports_known_traffic_and_metrics_match() {
    const BYTES: u64 = 123_457;
    let bed = Bed::up("ops-report");
    bed.start_tasd_with(&["--metrics", "127.0.0.1:9464"]);
    bed.start_tas_echo_server();
    let h = bed.hold("hold", BYTES, 2);
    assert_eq!(h.ports.len(), 2);

    // status
    let st = bed.tasctl(&["status", "--json"]).json();
    assert_eq!(st["interface"], IF_A, "{st}");
    assert_eq!(st["address"], format!("{IP_A}/24"));
    assert_eq!(
        (
            st["flows"].as_u64(),
            st["apps"].as_u64(),
            st["listeners"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{st}"
    );
    assert_eq!(st["fp_cores"], 1);
    assert_eq!(st["metrics_address"], "127.0.0.1:9464");
    let text = bed.tasctl(&["status"]).ok().stdout;
    assert!(
        text.contains(&format!("interface:        {IF_A} (XDP ")),
        "{text}"
    );
    assert!(
        text.contains("connections:      2 (2 with a fast-path flow)"),
        "{text}"
    );

    // flows: byte counters equal the known traffic, table equals JSON. The peer's last
    // ACK may be a delayed ACK (Linux waits up to 40 ms): wait until nothing is in flight.
    let deadline = Instant::now() + Duration::from_secs(3);
    let flows = loop {
        let flows = bed
            .tasctl(&["flows", "--json"])
            .json()
            .as_array()
            .unwrap()
            .clone();
        if flows.iter().all(|f| f["tx_in_flight"] == 0) || Instant::now() > deadline {
            break flows;
        }
        sleep(Duration::from_millis(50));
    };
    assert_eq!(flows.len(), 2, "{flows:#?}");
    for &p in &h.ports {
        let f = flow_with_port(&flows, p);
        assert_eq!(f["state"], "ESTABLISHED", "{f}");
        assert_eq!(f["local"], format!("{IP_A}:{ECHO_PORT}"));
        assert_eq!(f["rx_bytes"], BYTES, "bytes received from the peer: {f}");
        assert_eq!(f["tx_bytes"], BYTES, "bytes echoed and acknowledged: {f}");
        assert_eq!(
            (
                f["tx_in_flight"].as_u64(),
                f["tx_unsent"].as_u64(),
                f["rx_buffered"].as_u64()
            ),
            (Some(0), Some(0), Some(0)),
            "{f}"
        );
        assert_eq!(f["installed"], true);
        assert!(
            f["srtt_us"].as_u64().unwrap() > 0,
            "an RTT was measured: {f}"
        );
        assert!(f["mss"].as_u64().unwrap() >= 1400, "{f}");
    }
    let rows = table::parse(&bed.tasctl(&["flows"]).ok().stdout);
    let head = &rows[0];
    assert_eq!(
        head[..8],
        ["ID", "STATE", "LOCAL", "REMOTE", "APP", "CORE", "RX_BYTES", "TX_BYTES"]
    );
    assert_eq!(rows.len(), 3, "{rows:?}");
    for r in &rows[1..] {
        let f = flows
            .iter()
            .find(|f| f["id"].as_u64().map(|v| v.to_string()).as_deref() == Some(r[0].as_str()))
            .unwrap_or_else(|| panic!("row {r:?} not in the JSON"));
        let col = |name: &str| r[head.iter().position(|h| h == name).unwrap()].clone();
        assert_eq!(col("STATE"), f["state"].as_str().unwrap());
        assert_eq!(col("REMOTE"), f["remote"].as_str().unwrap());
        assert_eq!(col("RX_BYTES"), f["rx_bytes"].to_string());
        assert_eq!(col("TX_BYTES"), f["tx_bytes"].to_string());
        assert_eq!(col("SRTT_US"), f["srtt_us"].to_string());
        assert_eq!(col("APP"), f["app_id"].to_string());
    }

    // filters and sorting
    let count = |args: &[&str]| {
        let mut a = vec!["flows", "--json"];
        a.extend_from_slice(args);
        bed.tasctl(&a).json().as_array().unwrap().len()
    };
    let p0 = h.ports[0].to_string();
    let app = flows[0]["app_id"].to_string();
    assert_eq!(count(&["--port", "7"]), 2);
    assert_eq!(count(&["--port", &p0]), 1);
    assert_eq!(count(&["--port", "9"]), 0);
    assert_eq!(count(&["--local-port", "7"]), 2);
    assert_eq!(count(&["--remote", IP_B]), 2);
    assert_eq!(count(&["--remote", &format!("{IP_B}:{p0}")]), 1);
    assert_eq!(count(&["--remote", "10.77.0.3"]), 0);
    assert_eq!(count(&["--state", "established"]), 2);
    assert_eq!(count(&["--state", "TIME-WAIT"]), 0);
    assert_eq!(count(&["--app", &app]), 2);
    assert_eq!(count(&["--app", "999"]), 0);
    let sorted = bed
        .tasctl(&["flows", "--json", "--sort", "remote", "--reverse"])
        .json();
    let ports: Vec<String> = sorted
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["remote"].as_str().unwrap().to_string())
        .collect();
    let mut want = ports.clone();
    want.sort_by_key(|r| std::cmp::Reverse(r.rsplit(':').next().unwrap().parse::<u32>().unwrap()));
    assert_eq!(ports, want);

    // flow ID
    let f0 = flow_with_port(&flows, h.ports[0]).clone();
    let id = f0["id"].to_string();
    let one = bed.tasctl(&["flow", &id, "--json"]).json();
    assert_eq!(one["rx_bytes"], BYTES);
    assert_eq!(one["remote"], f0["remote"]);
    let detail = bed.tasctl(&["flow", &id]).ok().stdout;
    assert!(
        detail.contains(&format!("rx_bytes:     {BYTES}")),
        "{detail}"
    );
    assert!(detail.contains("state:        ESTABLISHED"), "{detail}");
    assert!(
        detail.contains("tx_buffer:    0 in flight + 0 unsent of "),
        "{detail}"
    );
    bed.tasctl(&["flow", "12345"])
        .fails_with("no flow with id 12345");

    // apps, listeners, cores
    let apps = bed.tasctl(&["apps", "--json"]).json();
    assert_eq!(apps.as_array().unwrap().len(), 1, "{apps}");
    let a = &apps[0];
    assert_eq!(
        (
            a["connections"].as_u64(),
            a["listeners"].as_u64(),
            a["contexts"].as_u64()
        ),
        (Some(2), Some(1), Some(1)),
        "{a}"
    );
    assert_eq!(a["listen_ports"], serde_json::json!([7]));
    assert!(a["event_queue_capacity"].as_u64().unwrap() > 0);
    let rows = table::parse(&bed.tasctl(&["apps"]).ok().stdout);
    assert_eq!(rows[0][..5], ["ID", "NAME", "PID", "UID", "CONNS"]);
    assert_eq!(
        (
            rows[1][0].as_str(),
            rows[1][2].as_str(),
            rows[1][4].as_str()
        ),
        (
            a["id"].to_string().as_str(),
            a["pid"].to_string().as_str(),
            "2"
        )
    );
    let ls = bed.tasctl(&["listeners", "--json"]).json();
    assert_eq!(ls.as_array().unwrap().len(), 1);
    assert_eq!(
        (ls[0]["port"].as_u64(), ls[0]["app_id"].as_u64()),
        (Some(7), a["id"].as_u64())
    );
    let cores = bed.tasctl(&["cores", "--json"]).json();
    assert_eq!(cores.as_array().unwrap().len(), 1, "{cores}");
    assert_eq!(cores[0]["flows"], 2);
    assert_eq!(cores[0]["bind_mode"], "copy", "veth binds in copy mode");
    assert_eq!(cores[0]["rx_payload_bytes"], 2 * BYTES, "{cores}");
    assert!(cores[0]["rx_frames"].as_u64().unwrap() >= 2 * BYTES / 1448);
    let rows = table::parse(&bed.tasctl(&["cores"]).ok().stdout);
    assert_eq!(rows[1][4], cores[0]["rx_frames"].to_string(), "{rows:?}");
    // Cycle accounting: the core did work, so it spent ticks busy, and knows their rate.
    assert!(cores[0]["busy_cycles"].as_u64().unwrap() > 0, "{cores}");
    assert!(cores[0]["idle_cycles"].as_u64().unwrap() > 0, "{cores}");
    assert!(cores[0]["ticks_per_us"].as_u64().unwrap() >= 100, "{cores}");
    let busy_pct = &rows[1][rows[0].iter().position(|h| h == "BUSY%").unwrap()];
    assert!(busy_pct.parse::<f64>().is_ok_and(|p| p > 0.0 && p <= 100.0), "{rows:?}");

    // stats: the known traffic in the counters
    sleep(Duration::from_millis(300));
    let stats = bed.tasctl(&["stats", "--json"]).json();
    // The readiness probe of start_tas_echo_server was the first connection.
    assert_eq!(counter(&stats, "passive_opens", None), 3);
    assert_eq!(counter(&stats, "rx_payload_bytes", Some(0)), 2 * BYTES);
    assert!(counter(&stats, "tx_payload_bytes", Some(0)) >= 2 * BYTES);
    assert_eq!(
        counter(&stats, "drop_checksum", Some(0)),
        0,
        "sandbox turned checksum offload off"
    );
    assert_eq!(counter(&stats, "flows", Some(0)), 2);
    let help = stats
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "drop_checksum")
        .unwrap()["help"]
        .clone();
    assert!(help.as_str().unwrap().contains("checksum"), "{help}");
    let nonzero = bed.tasctl(&["stats", "--json", "--nonzero"]).json();
    assert!(nonzero
        .as_array()
        .unwrap()
        .iter()
        .all(|c| c["value"].as_u64() != Some(0)));
    let watched = bed
        .tasctl(&["stats", "--json", "--watch", "0.3", "--count", "2"])
        .ok()
        .stdout;
    let samples: Vec<Value> = watched
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(samples.len(), 2, "{watched}");
    assert!(samples[0]["counters"][0].get("rate_per_s").is_none());
    assert!(
        samples[1]["counters"][0]["rate_per_s"].is_number(),
        "{}",
        samples[1]
    );
    let text = bed
        .tasctl(&["stats", "--watch", "0.2", "--count", "2"])
        .ok()
        .stdout;
    assert!(text.contains("RATE/S"), "{text}");

    // the Prometheus endpoint: the same values as GetCounters while the traffic is idle
    let before = bed.tasctl(&["stats", "--json"]).json();
    let page = scrape(&bed, "127.0.0.1:9464");
    let after = bed.tasctl(&["stats", "--json"]).json();
    let prom = prom_values(&page);
    let moving = ["busy_polls", "idle_polls", "sleeps", "doorbells", "busy_cycles", "idle_cycles", "kick_cycles"];
    let mut compared = 0;
    for c in before.as_array().unwrap() {
        let name = c["name"].as_str().unwrap();
        if moving.contains(&name) {
            continue;
        }
        let core = c["core"].as_u64();
        let (v0, v1) = (c["value"].as_u64().unwrap(), counter(&after, name, core));
        assert_eq!(v0, v1, "{name} changed while idle");
        let key = match (core, c["gauge"].as_bool().unwrap()) {
            (Some(k), true) => format!("tas_core_{name}{{core=\"{k}\"}}"),
            (Some(k), false) => format!("tas_core_{name}_total{{core=\"{k}\"}}"),
            (None, true) => format!("tas_{name}"),
            (None, false) => format!("tas_{name}_total"),
        };
        assert_eq!(
            prom.get(&key).copied(),
            Some(v0 as f64),
            "{key} in the scrape vs GetCounters\n{page}"
        );
        compared += 1;
    }
    assert!(compared >= 40, "compared {compared} counters");
    assert_eq!(prom.get("tas_connections"), Some(&2.0));
    assert_eq!(prom.get("tas_apps"), Some(&1.0));
    assert!(page.contains("# TYPE tas_core_rx_frames_total counter"));
    assert!(
        page.contains(&format!(
            "tas_info{{version=\"{}\",interface=\"{IF_A}\"",
            env!("CARGO_PKG_VERSION")
        )),
        "{page}"
    );
    // Nothing else listens: the control API is not on TCP unless asked.
    let tcp = bed.capture_ok(&["ip", "netns", "exec", &bed.ns_a, "ss", "-Htln"]);
    let listening: Vec<&str> = tcp.lines().collect();
    assert_eq!(
        listening.len(),
        1,
        "only the metrics endpoint listens on TCP in A:\n{tcp}"
    );
    assert!(listening[0].contains("127.0.0.1:9464"), "{tcp}");

    // congestion control: the default algorithm and its parameters, each flow's state,
    // a per-flow change to a fixed rate, and clear errors
    let cc = bed.tasctl(&["cc", "get", "--json"]).json();
    assert_eq!(cc["algorithm"], "dctcp-window", "{cc}");
    assert_eq!(cc["parameters"]["dctcp_g"], "0.0625", "{cc}");
    let f = bed.tasctl(&["cc", "get", "--flow", &id, "--json"]).json();
    assert_eq!(f["algorithm"], "dctcp-window", "{f}");
    assert!(f["cwnd_bytes"].as_u64().unwrap() > 0 && f["rtt_us"].as_u64().unwrap() > 0, "{f}");
    bed.tasctl(&["cc", "set", "fixed", "--param", &format!("flow={id}"), "--param", "rate_kbps=50000"]).ok();
    let f = bed.tasctl(&["cc", "get", "--flow", &id, "--json"]).json();
    assert_eq!((f["algorithm"].as_str(), f["rate_bps"].as_u64()), (Some("fixed"), Some(50_000_000)), "{f}");
    let cc = bed.tasctl(&["cc", "get", "--json"]).json();
    assert_eq!(cc["algorithm"], "dctcp-window", "a per-flow change leaves the default: {cc}");
    bed.tasctl(&["cc", "set", "dctcp", "--param", "g=0.0625"])
        .fails_with("unknown parameter");
    bed.tasctl(&["cc", "set", "reno"]).fails_with("unknown congestion control");
    bed.tasctl(&["cc", "get", "--flow", "12345"]).fails_with("no established flow");

    // the client closes: the flows go away (tasd closes passively: no TIME-WAIT)
    let ends = h.finish(&bed, true);
    assert!(ends.values().all(|e| e == "client_closed"), "{ends:?}");
    bed.wait_flows(0, Duration::from_secs(5));
    let st = bed.tasctl(&["status", "--json"]).json();
    assert_eq!(st["connections"], 0, "{st}");
    let stats = bed.tasctl(&["stats", "--json"]).json();
    assert_eq!(counter(&stats, "closes", None), 3);
}

/// `tasctl close` ends a flow with FIN, `--reset` with RST, `apps detach` disconnects an
/// application; `tasctl events` sees each of these as it happens.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasctl_closes_resets_detaches_and_watches() {
    let bed = Bed::up("ops-close");
    bed.start_tasd_with(&[]);
    bed.start_tas_echo_server();
    // The probe of start_tas_echo_server opened and closed one connection before this.
    let sock = bed.control_socket();
    let events_out = bed.run_dir.join("events.out");
    let mut watcher = Command::new(bed.tasctl_bin())
        .args(["--socket", sock.to_str().unwrap(), "events", "--json"])
        .stdin(Stdio::null())
        .stdout(fs::File::create(&events_out).unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(700)); // subscribed

    let h = bed.hold("hold", 10_000, 2);
    let flows = bed.wait_flows(2, Duration::from_secs(5));
    let (p_close, p_reset) = (h.ports[0], h.ports[1]);
    let id_close = flow_with_port(&flows, p_close)["id"].to_string();
    let id_reset = flow_with_port(&flows, p_reset)["id"].to_string();

    let out = bed.tasctl(&["close", &id_close]).ok().stdout;
    assert!(
        out.contains("closing: FIN sent") && out.contains("ESTABLISHED"),
        "{out}"
    );
    let out = bed
        .tasctl(&["close", &id_reset, "--reset", "--json"])
        .json();
    assert_eq!(out["state_before"], "ESTABLISHED");
    let ends = h.finish(&bed, false);
    assert_eq!(
        ends.get(&p_close).map(String::as_str),
        Some("eof"),
        "{ends:?}"
    );
    assert_eq!(
        ends.get(&p_reset).map(String::as_str),
        Some("reset"),
        "{ends:?}"
    );
    bed.tasctl(&["close", &id_reset])
        .fails_with("no flow with id");
    bed.tasctl(&["close", "1"]).fails_with("no flow with id 1");
    // tasd closed first, so it keeps the 4-tuple in TIME-WAIT (without a fast-path flow);
    // the reset connection is gone.
    let left = bed.wait_flows(1, Duration::from_secs(5));
    assert_eq!(left[0]["id"].to_string(), id_close);
    assert_eq!(
        (left[0]["state"].as_str(), left[0]["installed"].as_bool()),
        (Some("TIME-WAIT"), Some(false)),
        "{}",
        left[0]
    );
    assert_eq!(
        bed.tasctl(&["flows", "--json", "--state", "time-wait"])
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );
    bed.tasctl(&["close", &id_close])
        .fails_with("already closing (TIME-WAIT)");
    let table = bed.tasctl(&["flows"]).ok().stdout;
    let row = &table::parse(&table)[1];
    assert_eq!(
        (row[1].as_str(), row[6].as_str()),
        ("TIME-WAIT", "-"),
        "no fast-path counters without a flow: {table}"
    );
    let stats = bed.tasctl(&["stats", "--json"]).json();
    assert!(counter(&stats, "resets", None) >= 1);
    assert!(counter(&stats, "rsts_sent", None) >= 1);

    // Detach the application: its held connection is reset, its listener closed.
    let h2 = bed.hold("hold2", 1000, 1);
    let apps = bed.tasctl(&["apps", "--json"]).json();
    let app = apps[0]["id"].to_string();
    bed.tasctl(&["apps", "detach", "999"])
        .fails_with("no application with id 999");
    let out = bed.tasctl(&["apps", "detach", &app]).ok().stdout;
    assert!(out.contains("detached"), "{out}");
    let ends = h2.finish(&bed, false);
    assert_eq!(
        ends.values().next().map(String::as_str),
        Some("reset"),
        "{ends:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = bed.tasctl(&["status", "--json"]).json();
        if st["apps"] == 0 && st["listeners"] == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the application is still attached: {st}"
        );
        sleep(Duration::from_millis(100));
    }

    // The watcher saw each of these as it happened (it prints and flushes event by event).
    sleep(Duration::from_millis(300));
    assert!(
        watcher.try_wait().unwrap().is_none(),
        "tasctl events ended by itself"
    );
    let _ = watcher.kill();
    let _ = watcher.wait();
    let text = fs::read_to_string(&events_out).unwrap();
    let evs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let kinds: Vec<(String, String)> = evs
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap().into(),
                e["remote"].as_str().unwrap().into(),
            )
        })
        .collect();
    let remote = |p: u64| format!("{IP_B}:{p}");
    let pos = |kind: &str, port: u64| {
        kinds
            .iter()
            .position(|k| k.0 == kind && k.1 == remote(port))
    };
    assert!(
        pos("opened", p_close).is_some() && pos("opened", p_reset).is_some(),
        "{kinds:?}"
    );
    assert!(
        pos("closed", p_close).unwrap() > pos("opened", p_close).unwrap(),
        "{kinds:?}"
    );
    let reset = &evs[pos("reset", p_reset).unwrap_or_else(|| panic!("no reset event: {kinds:?}"))];
    assert_eq!(reset["detail"], "aborted");
    assert_eq!(reset["flow_id"].to_string(), id_reset);
    assert_eq!(evs[pos("opened", p_close).unwrap()]["detail"], "passive");
    let p3 = h2.ports[0];
    let detached = kinds
        .iter()
        .position(|k| k.0 == "app_detached")
        .unwrap_or_else(|| panic!("no app_detached: {kinds:?}"));
    assert_eq!(evs[detached]["app_id"].to_string(), app);
    assert!(
        pos("reset", p3)
            .unwrap_or_else(|| panic!("the detached app's connection was reset: {kinds:?}"))
            > pos("opened", p3).unwrap()
    );
    assert_eq!(
        kinds.len(),
        7,
        "opened x3, closed, reset x2, app_detached: {kinds:?}"
    );
}

/// `tasctl apps` shows the exact fill of every queue of an application. The application is
/// this test process (libtas, attached to the bed's tasd) and does not poll while a kernel
/// client in B opens 3 connections and sends 4 writes on each, 100 ms apart: exactly 3
/// connection events wait on its slow-path queue and 12 data events (one per flow per
/// fast-path batch, and each write is its own batch) on core 0's queue. After one poll
/// every queue is empty; after it reads, its doorbells are taken too. `--json` and the
/// table agree.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasctl_apps_shows_exact_queue_fill() {
    const PORT: u16 = 9009;
    const CONNS: u64 = 3;
    const WRITES: u64 = 4;
    const BYTES: u64 = 400;
    let bed = Bed::up("ops-queues");
    bed.start_tasd_with(&[]);
    let mut ctx = libtas::Context::attach_to(bed.app_socket(), "fill-probe")
        .expect("attach this test process to tasd");
    let l = ctx.listen(PORT, 16).expect("listen");
    let cap = u64::from(ctx.layout().queue_entries);

    // (events to the app, requests from it, [(doorbells to core c, events from core c)])
    let fill = |bed: &Bed| {
        let apps = bed.tasctl(&["apps", "--json"]).json();
        let apps = apps.as_array().unwrap();
        assert_eq!(apps.len(), 1, "{apps:?}");
        let a = &apps[0];
        assert_eq!((a["name"].as_str(), a["pid"].as_u64()), (Some("fill-probe"), Some(u64::from(std::process::id()))));
        assert_eq!(
            (a["event_queue_capacity"].as_u64(), a["request_queue_capacity"].as_u64()),
            (Some(cap), Some(cap))
        );
        assert_eq!(a["slow_queues_corrupt"], false, "{a}");
        let cores = a["core_queues"].as_array().unwrap();
        assert_eq!(cores.len(), 1, "one fast-path core: {a}");
        let per_core: Vec<(u64, u64)> = cores
            .iter()
            .enumerate()
            .map(|(i, q)| {
                assert_eq!(q["core"].as_u64(), Some(i as u64));
                assert_eq!((q["to_fp_capacity"].as_u64(), q["to_app_capacity"].as_u64()), (Some(cap), Some(cap)));
                assert_eq!(q["corrupt"], false, "{q}");
                (q["to_fp_used"].as_u64().unwrap(), q["to_app_used"].as_u64().unwrap())
            })
            .collect();
        (a["event_queue_used"].as_u64().unwrap(), a["request_queue_used"].as_u64().unwrap(), per_core, a.clone())
    };
    let (ev, req, cores, _) = fill(&bed);
    assert_eq!((ev, req, cores), (0, 0, vec![(0, 0)]), "nothing waits after listen");

    let (bytes, conns, writes) = (BYTES.to_string(), CONNS.to_string(), WRITES.to_string());
    let h = bed.hold_with(
        "writer",
        PORT,
        &["--no-echo", "--bytes", &bytes, "--conns", &conns, "--writes", &writes, "--gap", "0.1"],
    );
    assert_eq!(h.ports.len(), CONNS as usize);
    // Everything was sent (and acknowledged: the writer's last gap is 100 ms); it all waits.
    let deadline = Instant::now() + Duration::from_secs(5);
    let (a, table_text) = loop {
        let (ev, req, cores, a) = fill(&bed);
        let text = bed.tasctl(&["apps"]).ok().stdout;
        if (ev, req, &cores) == (CONNS, 0, &vec![(0, CONNS * WRITES)]) {
            break (a, text);
        }
        assert!(
            Instant::now() < deadline && ev <= CONNS && cores[0].1 <= CONNS * WRITES,
            "expected exactly {CONNS} events and {} data events waiting, tasctl shows \
             events {ev}, requests {req}, core queues {cores:?}",
            CONNS * WRITES
        );
        sleep(Duration::from_millis(50));
    };
    // Stable: nothing more arrives, nothing is taken.
    sleep(Duration::from_millis(300));
    let (ev, req, cores, _) = fill(&bed);
    assert_eq!((ev, req, cores), (CONNS, 0, vec![(0, CONNS * WRITES)]));
    // The table says the same.
    eprintln!("tasctl apps:\n{table_text}");
    let (main, queues) = table_text.split_once("\n\n").expect("two tables");
    let main = table::parse(main);
    assert_eq!(main[0][7..], ["EVENTQ", "REQQ"]);
    assert_eq!(main[1][0], a["id"].to_string());
    assert_eq!(main[1][7..], [format!("{CONNS}/{cap}"), format!("0/{cap}")]);
    let queues = table::parse(queues);
    assert_eq!(queues[0], ["APP", "CORE", "TO_FP", "TO_APP"]);
    assert_eq!(queues[1], [a["id"].to_string(), "0".into(), format!("0/{cap}"), format!("{}/{cap}", CONNS * WRITES)]);
    assert_eq!(queues.len(), 2, "{table_text}");
    // The flows hold the bytes the application has not read.
    let flows = bed.tasctl(&["flows", "--json", "--port", &PORT.to_string()]).json();
    let flows = flows.as_array().unwrap();
    assert_eq!(flows.len(), CONNS as usize);
    for f in flows {
        assert_eq!((f["rx_bytes"].as_u64(), f["rx_buffered"].as_u64()), (Some(BYTES), Some(BYTES)), "{f}");
    }

    // One poll takes every event and releases both queues.
    assert!(ctx.poll() > 0);
    let (ev, req, cores, _) = fill(&bed);
    assert_eq!((ev, req, cores), (0, 0, vec![(0, 0)]), "after the application polled");

    // Reading posts doorbells (rx consumed) and an accept credit; the service takes them.
    let mut got = 0;
    let mut buf = [0u8; 4096];
    for _ in 0..CONNS {
        let c = ctx.accept(l).expect("accept").expect("a connection waits");
        got += ctx.recv(c, &mut buf).expect("data waits");
    }
    assert_eq!(got as u64, CONNS * BYTES);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (ev, req, cores, _) = fill(&bed);
        if (ev, req, &cores) == (0, 0, &vec![(0, 0)]) {
            break;
        }
        assert!(Instant::now() < deadline, "the service did not take the doorbells: {ev} {req} {cores:?}");
        sleep(Duration::from_millis(50));
    }
    let flows = bed.tasctl(&["flows", "--json", "--port", &PORT.to_string()]).json();
    for f in flows.as_array().unwrap() {
        assert_eq!(f["rx_buffered"].as_u64(), Some(0), "{f}");
    }

    // Congestion control switched globally: the default and every open connection.
    let before = bed.tasctl(&["cc", "get", "--json"]).json();
    assert_eq!(before["algorithm"], "dctcp-window", "{before}");
    let out = bed.tasctl(&["cc", "set", "timely"]).ok().stdout;
    assert_eq!(out.trim(), "congestion control: timely");
    let now = bed.tasctl(&["cc", "get", "--json"]).json();
    assert_eq!(now["algorithm"], "timely");
    // --json on a change too: the new configuration, as `cc get --json` prints it.
    let set = bed.tasctl(&["cc", "set", "timely", "--json"]).json();
    assert_eq!(set, now);
    for f in flows.as_array().unwrap() {
        let id = f["id"].to_string();
        let cc = bed.tasctl(&["cc", "get", "--flow", &id, "--json"]).json();
        assert_eq!(cc["algorithm"], "timely", "{cc}");
    }
    drop(ctx);
    let ends = h.finish(&bed, false);
    assert_eq!(ends.len(), CONNS as usize);
    assert!(ends.values().all(|e| e == "reset"), "a detached application's connections are reset: {ends:?}");
}

/// `tasctl capture` writes a pcap that tcpdump reads, with the handshake, every payload
/// byte both ways and both FINs of a known transfer.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasctl_capture_is_readable_by_tcpdump() {
    const BYTES: u64 = 300_000;
    let bed = Bed::up("ops-capture");
    bed.start_tasd_with(&[]);
    bed.start_tas_echo_server();
    let pcap = bed.run_dir.join("echo.pcap");
    let sock = bed.control_socket();
    let cap = Command::new(bed.tasctl_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--json",
            "capture",
            "--port",
            "7",
            "--duration",
            "6",
            "-w",
        ])
        .arg(&pcap)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    bed.wait_log("tasd", "packet capture started", Duration::from_secs(10));
    // Meanwhile a second capture is refused.
    bed.tasctl(&["capture", "--duration", "1", "-w", "/dev/null"])
        .fails_with("a capture is already running");
    let out = bed.run_b_peer(
        "stream_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--bytes",
            &BYTES.to_string(),
            "--conns",
            "1",
            "--seed",
            "5",
        ],
        Duration::from_secs(60),
    );
    let s = out.json_success();
    assert_eq!(s["bytes_received"], BYTES);
    let done = cap.wait_with_output().unwrap();
    let summary = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "tasctl capture failed: {summary}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let summary: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["dropped"], 0, "{summary}");
    let frames = summary["frames"].as_u64().unwrap();
    assert!(frames >= 2 * BYTES / 1448, "{summary}");

    let dump = Dump::read(&bed, &pcap, &[]);
    assert_eq!(
        dump.lines.len() as u64,
        frames,
        "tcpdump reads every frame tasctl wrote"
    );
    // The client's port, from its SYN.
    let syn = dump
        .lines
        .iter()
        .find(|l| l.contains("Flags [S],"))
        .unwrap_or_else(|| panic!("no SYN:\n{}", dump.lines.join("\n")));
    let client = syn
        .split(" > ")
        .next()
        .unwrap()
        .rsplit(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(client.starts_with(&format!("{IP_B}.")), "{syn}");
    let server = format!("{IP_A}.{ECHO_PORT}");
    assert_eq!(dump.count_flags(&client, &server, "S"), 1, "one SYN");
    assert_eq!(dump.count_flags(&server, &client, "S."), 1, "one SYN-ACK");
    let fins = |src: &str, dst: &str| {
        dump.between(src, dst)
            .filter(|l| l.contains("Flags [F"))
            .count()
    };
    assert!(
        fins(&client, &server) >= 1 && fins(&server, &client) >= 1,
        "FIN both ways"
    );
    assert_eq!(
        dump.payload(&client, &server),
        BYTES,
        "every byte the client sent, as the fast path received it"
    );
    assert_eq!(
        dump.payload(&server, &client),
        BYTES,
        "every byte echoed, as the fast path sent it"
    );

    // A filter that matches nothing still gives a valid (empty) capture file.
    let empty = bed.run_dir.join("empty.pcap");
    let r = bed
        .tasctl(&[
            "--json",
            "capture",
            "--port",
            "9999",
            "--duration",
            "0.5",
            "-w",
            empty.to_str().unwrap(),
        ])
        .json();
    assert_eq!(r["frames"], 0);
    assert!(Dump::read(&bed, &empty, &[]).lines.is_empty());
    // By host, limited by count.
    let some = bed.run_dir.join("some.pcap");
    let cap = Command::new(bed.tasctl_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "--json",
            "capture",
            "--host",
            IP_B,
            "--count",
            "3",
            "--duration",
            "20",
            "-w",
        ])
        .arg(&some)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while bed.log_of("tasd").matches("packet capture started").count() < 3 {
        assert!(
            Instant::now() < deadline,
            "the third capture did not start:\n{}",
            bed.log_of("tasd")
        );
        sleep(Duration::from_millis(50));
    }
    bed.run_b_peer(
        "stream_client",
        &[
            "--connect",
            &format!("{IP_A}:{ECHO_PORT}"),
            "--bytes",
            "10000",
            "--conns",
            "1",
            "--seed",
            "6",
        ],
        Duration::from_secs(60),
    )
    .json_success();
    let t0 = Instant::now();
    let out = cap.wait_with_output().unwrap();
    assert!(
        t0.elapsed() < Duration::from_secs(15),
        "--count 3 ends the capture early"
    );
    let r: Value = serde_json::from_str(&String::from_utf8_lossy(&out.stdout)).unwrap();
    assert_eq!(r["frames"], 3, "{r}");
    assert_eq!(Dump::read(&bed, &some, &["host", IP_B]).lines.len(), 3);
}

/// tasctl's errors: tasd not running, permission denied, bad arguments (exit 2), the
/// control API on TCP only when asked for, config get/set.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasctl_errors_tcp_control_and_config() {
    let bed = Bed::up("ops-errors");
    bed.start_tasd_with(&["--control-tcp", "127.0.0.1:50051"]);

    // Not running.
    let nowhere = bed.run_dir.join("nowhere.sock");
    run_tasctl(
        &bed.tasctl_bin(),
        &["--socket", nowhere.to_str().unwrap(), "status"],
        &[],
    )
    .fails_with(&format!(
        "cannot reach tasd at {}: is it running? (systemctl status tasd)",
        nowhere.display()
    ));
    run_tasctl(
        &bed.tasctl_bin(),
        &["status"],
        &[("TAS_CONTROL_SOCKET", nowhere.to_str().unwrap())],
    )
    .fails_with("cannot reach tasd at");
    // Permission: the socket is 0660 root:root; nobody may not use it.
    let meta = fs::metadata(bed.control_socket()).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let sock = bed.control_socket();
    let dir = bed.run_dir.clone();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let bin = bed.tasctl_bin();
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&bin)
        .args(["--socket", sock.to_str().unwrap(), "status"])
        .output()
        .expect("setpriv (util-linux) runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("permission denied on {}", sock.display()))
            && err.contains("control_group"),
        "{err}"
    );

    // Bad arguments: exit 2 and a message saying what is expected.
    let bad = |args: &[&str], words: &str| {
        let c = bed.tasctl(args);
        assert_eq!(c.code, 2, "tasctl {args:?}: {}{}", c.stdout, c.stderr);
        assert!(
            c.stderr.contains(words),
            "tasctl {args:?}: expected {words:?} in {}",
            c.stderr
        );
    };
    bad(&["flow", "seven"], "use a number from the ID column");
    bad(&["flows", "--state", "open"], "ESTABLISHED");
    bad(&["flows", "--port", "0"], "1-65535");
    bad(&["flows", "--sort", "speed"], "srtt");
    bad(
        &["capture", "--duration", "700", "-w", "/dev/null"],
        "at most 600",
    );
    bad(&["capture"], "--write");
    bad(&["bogus"], "unrecognized subcommand");

    // The control API on TCP, because it was asked for, on loopback in A only.
    let st = bed
        .tasctl_in_a(&["--tcp", "127.0.0.1:50051", "status", "--json"])
        .json();
    assert_eq!(st["interface"], IF_A);
    bed.tasctl_in_a(&["--tcp", "127.0.0.1:50052", "status"])
        .fails_with("cannot reach tasd at 127.0.0.1:50052");
    let tcp = bed.capture_ok(&["ip", "netns", "exec", &bed.ns_a, "ss", "-Htln"]);
    assert_eq!(tcp.lines().count(), 1, "{tcp}");
    assert!(tcp.contains("127.0.0.1:50051"), "{tcp}");

    // Configuration: read, change a live key, refuse the others.
    let cfg = bed.tasctl(&["config", "get", "--json"]).json();
    let value = |cfg: &Value, k: &str| {
        cfg["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == k)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(value(&cfg, "interface"), format!("\"{IF_A}\""));
    assert_eq!(value(&cfg, "log_level"), "\"info\"");
    assert_eq!(value(&cfg, "control_tcp"), "\"127.0.0.1:50051\"");
    assert_eq!(value(&cfg, "metrics"), "");
    // Every key of the catalogue, no more (50 since the scaling keys and cc_rate_step_us).
    assert_eq!(
        cfg["entries"].as_array().unwrap().len(),
        tas_slowpath::config::KEYS.len(),
        "{cfg}"
    );
    assert!(tas_slowpath::config::KEYS.len() >= 50);
    let out = bed
        .tasctl(&["config", "set", "log_level", "debug"])
        .ok()
        .stdout;
    assert_eq!(out.trim(), "log_level = \"debug\"");
    let cfg = bed.tasctl(&["config", "get", "log_level", "--json"]).json();
    assert_eq!(cfg["entries"].as_array().unwrap().len(), 1);
    assert_eq!(cfg["entries"][0]["value"], "\"debug\"");
    bed.tasctl(&["config", "set", "time_wait_ms", "1000"]).ok();
    bed.tasctl(&["config", "set", "fp_cores", "2"])
        .fails_with("fp_cores cannot change while tasd runs");
    bed.tasctl(&["config", "set", "nope", "1"])
        .fails_with("unknown configuration key \"nope\"");
    bed.tasctl(&["config", "set", "log_level", "["])
        .fails_with("log_level");
    bed.tasctl(&["config", "get", "nope"])
        .fails_with("unknown configuration key");
    let table = bed.tasctl(&["config", "get"]).ok().stdout;
    let rows = table::parse(&table);
    assert_eq!(rows[0], ["KEY", "VALUE", "LIVE", "DESCRIPTION"]);
    let tw = rows.iter().find(|r| r[0] == "time_wait_ms").unwrap();
    assert_eq!((tw[1].as_str(), tw[2].as_str()), ("1000", "yes"));
    // Debug logging is on now: a new connection is logged at debug level.
    bed.wait_log(
        "tasd",
        "configuration changed by the control API",
        Duration::from_secs(5),
    );
}

/// SIGHUP re-reads the configuration file (live keys applied, the others reported, flags
/// still win); SIGTERM resets connections, removes both sockets, detaches XDP, exits 0.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn tasd_reloads_on_sighup_and_shuts_down_cleanly() {
    let bed = Bed::up("ops-lifecycle");
    let conf = bed.run_dir.join("tasd.toml");
    // The test bed also passes --log-level info and --fp-cores 1 as flags.
    fs::write(
        &conf,
        "log_level = \"info\"\ntime_wait_ms = 60000\nidle_spin_us = 50\n",
    )
    .unwrap();
    let pid = bed.start_tasd_with(&["--config", conf.to_str().unwrap()]);
    bed.start_tas_echo_server();
    // `tasctl events --count 1` ends after the first event.
    let sock = bed.control_socket();
    let one = Command::new(bed.tasctl_bin())
        .args(["--socket", sock.to_str().unwrap(), "events", "--count", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    sleep(Duration::from_millis(700));
    let h = bed.hold("hold", 5000, 1);
    let out = one.wait_with_output().unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    assert_eq!(line.lines().count(), 1, "{line}");
    assert!(
        line.contains(" opened flow=") && line.contains(&format!("remote={IP_B}:{}", h.ports[0])),
        "{line}"
    );

    fs::write(
        &conf,
        "log_level = \"debug\"\ntime_wait_ms = 1500\nidle_spin_us = 100\narp_reply = \"never\"\n",
    )
    .unwrap();
    kill(pid, libc::SIGHUP);
    let log = bed.wait_log(
        "tasd",
        "SIGHUP: configuration reloaded",
        Duration::from_secs(10),
    );
    let line = log
        .lines()
        .find(|l| l.contains("SIGHUP: configuration reloaded"))
        .unwrap();
    assert!(
        line.contains("applied=[\"time_wait_ms\", \"arp_reply\"]"),
        "{line}"
    );
    assert!(
        line.contains("need_restart=[\"idle_spin_us\"]")
            && line.contains("restart tasd to apply idle_spin_us"),
        "{line}"
    );
    assert!(
        line.contains("overridden_by_flags=[\"log_level\"]"),
        "--log-level on the command line wins: {line}"
    );
    let cfg = bed.tasctl(&["config", "get", "--json"]).json();
    let value = |k: &str| {
        cfg["entries"]
            .as_array()
            .unwrap()
            .iter()
            .find(|e| e["key"] == k)
            .unwrap()["value"]
            .clone()
    };
    assert_eq!(value("log_level"), "\"info\"");
    assert_eq!(value("time_wait_ms"), "1500");
    assert_eq!(value("arp_reply"), "\"never\"");
    assert_eq!(value("idle_spin_us"), "50", "not applied without a restart");
    assert_eq!(cfg["config_file"], conf.to_str().unwrap());
    // A broken file leaves the running configuration alone.
    fs::write(&conf, "time_wait_ms = \n").unwrap();
    kill(pid, libc::SIGHUP);
    bed.wait_log(
        "tasd",
        "SIGHUP: configuration not reloaded",
        Duration::from_secs(10),
    );
    assert_eq!(
        bed.tasctl(&["config", "get", "time_wait_ms", "--json"])
            .json()["entries"][0]["value"],
        "1500"
    );
    assert!(
        !log.contains('\u{1b}'),
        "no colour codes when stderr is not a terminal"
    );

    // SIGTERM with a connection, an event watcher and a long capture open: the connection
    // is reset, the streams end, everything is cleaned up, promptly.
    let watcher = Command::new(bed.tasctl_bin())
        .args(["--socket", sock.to_str().unwrap(), "events"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pcap = bed.run_dir.join("long.pcap");
    let capture = Command::new(bed.tasctl_bin())
        .args([
            "--socket",
            sock.to_str().unwrap(),
            "capture",
            "--duration",
            "300",
            "-w",
        ])
        .arg(&pcap)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    bed.wait_log("tasd", "packet capture started", Duration::from_secs(10));
    let t0 = Instant::now();
    let (status, log) = bed.stop_tasd(Duration::from_secs(10));
    let took = t0.elapsed();
    assert!(status.success(), "tasd exited {status}:\n{log}");
    assert!(
        took < Duration::from_secs(4),
        "tasd took {took:?} to stop with open streams:\n{log}"
    );
    let w = watcher.wait_with_output().unwrap();
    assert_eq!(w.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&w.stderr).contains("tasd ended the event stream"),
        "{}",
        String::from_utf8_lossy(&w.stderr)
    );
    let c = capture.wait_with_output().unwrap();
    assert!(c.status.success(), "{}", String::from_utf8_lossy(&c.stderr));
    assert!(
        Dump::read(&bed, &pcap, &[]).lines.len() < 1000,
        "a valid pcap file"
    );
    assert!(log.contains("shutdown: flows=1"), "{log}");
    assert!(!bed.control_socket().exists(), "control socket removed");
    assert!(!bed.app_socket().exists(), "app socket removed");
    let link = bed.capture_ok(&[
        "ip", "netns", "exec", &bed.ns_a, "ip", "-d", "link", "show", "dev", IF_A,
    ]);
    assert!(
        !link.contains("prog/xdp"),
        "the XDP program is detached:\n{link}"
    );
    let ends = h.finish(&bed, false);
    assert_eq!(
        ends.values().next().map(String::as_str),
        Some("reset"),
        "the peer was told: {ends:?}"
    );
}

/// The systemd unit's ExecStart, run as the unit runs it where systemd is not PID 1 (CI):
/// as an unprivileged user (nobody) holding exactly the unit's capabilities, with
/// `NOTIFY_SOCKET` and `JOURNAL_STREAM` set. tasd must announce READY=1, serve a real
/// transfer, give sockets and regions away with CAP_CHOWN, reload on the unit's
/// ExecReload signal, and stop cleanly on its KillSignal.
#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn systemd_unit_runs_tasd_unprivileged_with_only_its_capabilities() {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let unit = fs::read_to_string(repo.join("deploy/systemd/tasd.service")).unwrap();
    let directive = |k: &str| -> String {
        unit.lines()
            .find_map(|l| l.strip_prefix(&format!("{k}=")))
            .unwrap_or_else(|| panic!("the unit has no {k}="))
            .trim()
            .to_string()
    };
    let caps: Vec<String> = directive("AmbientCapabilities")
        .split_whitespace()
        .map(|c| c.to_lowercase())
        .collect();
    assert_eq!(
        caps,
        directive("CapabilityBoundingSet")
            .split_whitespace()
            .map(|c| c.to_lowercase())
            .collect::<Vec<_>>()
    );
    assert_eq!(directive("Type"), "notify");
    assert_ne!(directive("User"), "root");
    assert_eq!(directive("ExecReload"), "/bin/kill -HUP $MAINPID");
    let exec: Vec<String> = directive("ExecStart")
        .split_whitespace()
        .map(String::from)
        .collect();
    assert_eq!(
        exec[..3],
        ["/usr/local/bin/tasd", "--config", "/etc/tas/tasd.toml"]
    );

    let bed = Bed::up("ops-unit");
    // The unit's RuntimeDirectory: owned by the service user.
    let run = bed.run_dir.join("run");
    fs::create_dir(&run).unwrap();
    std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
    fs::set_permissions(&bed.run_dir, fs::Permissions::from_mode(0o755)).unwrap();
    // The shipped configuration with the required keys and this sandbox's paths.
    let shipped = fs::read_to_string(repo.join("deploy/tasd.toml")).unwrap();
    let conf_text = shipped
        .replace("#interface = \"eth1\"", &format!("interface = \"{IF_A}\""))
        .replace("#ip = \"192.0.2.10/24\"", &format!("ip = \"{IP_A}/24\""))
        .replace("/run/tas/", &format!("{}/", run.display()))
        .replace("socket_group = \"tas\"", "socket_group = \"nogroup\"")
        .replace(
            "control_group = \"tas-admin\"",
            "control_group = \"nogroup\"",
        )
        .replace(
            "#metrics = \"127.0.0.1:9464\"",
            "metrics = \"127.0.0.1:9464\"",
        );
    let conf = bed.run_dir.join("tasd.toml");
    fs::write(&conf, conf_text).unwrap();
    // systemd's notification socket.
    let notify_path = bed.run_dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    fs::set_permissions(&notify_path, fs::Permissions::from_mode(0o666)).unwrap();
    notify
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();

    let tasd = bed.paths.tasd.to_str().unwrap().to_string();
    let cap_list = caps
        .iter()
        .map(|c| format!("+{}", c.trim_start_matches("cap_")))
        .collect::<Vec<_>>()
        .join(",");
    let mut cmd: Vec<String> = vec![
        "env".into(),
        format!("NOTIFY_SOCKET={}", notify_path.display()),
        "JOURNAL_STREAM=8:12345".into(),
        "setpriv".into(),
        "--reuid=65534".into(),
        "--regid=65534".into(),
        "--clear-groups".into(),
        format!("--inh-caps=-all,{cap_list}"),
        format!("--ambient-caps=-all,{cap_list}"),
        format!("--bounding-set=-all,{cap_list}"),
        "--no-new-privs".into(),
        "--".into(),
    ];
    cmd.push(tasd);
    cmd.extend(exec[1..].iter().map(|a| {
        if a == "/etc/tas/tasd.toml" {
            conf.to_str().unwrap().to_string()
        } else {
            a.clone()
        }
    }));
    let cmd_ref: Vec<&str> = cmd.iter().map(String::as_str).collect();
    let pid = bed.spawn(&bed.ns_a.clone(), "tasd", &cmd_ref, &[]);

    let mut notes = String::new();
    let mut wait_note = |what: &str, timeout: Duration| {
        let deadline = Instant::now() + timeout;
        let mut buf = [0u8; 512];
        while !notes.contains(what) {
            if let Some(st) = bed.exited(pid) {
                panic!("tasd exited ({st}) before notifying {what:?} (notes so far: {notes:?})");
            }
            assert!(
                Instant::now() < deadline,
                "no {what:?} from tasd within {timeout:?} (notes: {notes:?})"
            );
            if let Ok(n) = notify.recv(&mut buf) {
                notes.push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        }
        notes.clone()
    };
    let first = wait_note("READY=1", Duration::from_secs(30));
    assert!(first.contains(&format!("MAINPID={pid}")), "{first}");
    // The process really is unprivileged, with exactly the unit's capabilities.
    let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |k: &str| {
        status
            .lines()
            .find(|l| l.starts_with(k))
            .unwrap()
            .split_whitespace()
            .nth(1)
            .unwrap()
            .to_string()
    };
    assert_eq!(field("Uid:"), "65534", "{status}");
    let eff = u64::from_str_radix(&field("CapEff:"), 16).unwrap();
    let want: u64 = caps.iter().map(|c| 1u64 << cap_number(c)).sum();
    assert_eq!(
        eff, want,
        "effective capabilities are the unit's: {eff:#x} vs {want:#x}"
    );
    // Sockets: 0660, handed to the configured group (CAP_CHOWN).
    for s in ["tasd.sock", "control.sock"] {
        let m = fs::metadata(run.join(s)).unwrap();
        assert_eq!(
            (m.permissions().mode() & 0o777, m.uid(), m.gid()),
            (0o660, 65534, 65534),
            "{s}"
        );
    }

    // It serves: an application (root) attaches and a kernel client streams through it.
    let sock = run.join("control.sock");
    let echo = bed.paths.tas_echo.to_str().unwrap().to_string();
    let app_socket = run.join("tasd.sock");
    bed.spawn(
        &bed.ns_a.clone(),
        "tas-echo-server",
        &[&echo, "server", "--port", "7"],
        &[("TAS_SOCKET", &app_socket)],
    );
    bed.run_b_peer(
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
    )
    .json_success();
    let s = bed
        .run_b_peer(
            "stream_client",
            &[
                "--connect",
                &format!("{IP_A}:{ECHO_PORT}"),
                "--bytes",
                "10000000",
                "--conns",
                "2",
                "--seed",
                "9",
            ],
            Duration::from_secs(120),
        )
        .json_success();
    assert_eq!(s["bytes_received"], 20_000_000u64, "{s}");
    let st = run_tasctl(
        &bed.tasctl_bin(),
        &["--socket", sock.to_str().unwrap(), "status", "--json"],
        &[],
    )
    .json();
    assert_eq!(
        (st["apps"].as_u64(), st["listeners"].as_u64()),
        (Some(1), Some(1)),
        "{st}"
    );
    // Under the journal, log lines carry no timestamp and no colour (the journal has both).
    let log = bed.log_of("tasd");
    let ready = log
        .lines()
        .find(|l| l.contains("tasd ready"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(
        ready.trim_start().starts_with("INFO"),
        "no timestamp under journald: {ready:?}"
    );
    assert!(!log.contains('\u{1b}'));
    let page = scrape(&bed, "127.0.0.1:9464");
    assert!(
        prom_values(&page)
            .get("tas_passive_opens_total")
            .copied()
            .unwrap_or(0.0)
            >= 3.0,
        "{page}"
    );

    // ExecReload.
    kill(pid, libc::SIGHUP);
    let after = wait_note("RELOADING=1", Duration::from_secs(10));
    assert!(after.matches("READY=1").count() >= 1);
    bed.wait_log(
        "tasd",
        "SIGHUP: configuration reloaded",
        Duration::from_secs(10),
    );

    // KillSignal: clean stop.
    let (status, log) = bed.stop_tasd(Duration::from_secs(15));
    assert!(status.success(), "tasd exited {status} on SIGTERM:\n{log}");
    let mut buf = [0u8; 512];
    while let Ok(n) = notify.recv(&mut buf) {
        notes.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(notes.contains("STOPPING=1"), "{notes:?}");
    assert!(
        !run.join("control.sock").exists() && !run.join("tasd.sock").exists(),
        "sockets removed"
    );
    let link = bed.capture_ok(&[
        "ip", "netns", "exec", &bed.ns_a, "ip", "-d", "link", "show", "dev", IF_A,
    ]);
    assert!(!link.contains("prog/xdp"), "{link}");
}

fn kill(pid: u32, sig: libc::c_int) {
    // SAFETY: kill(2) only sends a signal, to a child this test started and has not reaped.
    let rc = unsafe { libc::kill(pid as libc::pid_t, sig) };
    assert_eq!(rc, 0, "kill({pid}, {sig}) failed");
}

/// The number of a capability named as the unit names it (CAP_NET_ADMIN -> 12).
fn cap_number(name: &str) -> u32 {
    match name.to_ascii_uppercase().as_str() {
        "CAP_CHOWN" => 0,
        "CAP_NET_ADMIN" => 12,
        "CAP_NET_RAW" => 13,
        "CAP_IPC_LOCK" => 14,
        "CAP_SYS_NICE" => 23,
        "CAP_PERFMON" => 38,
        "CAP_BPF" => 39,
        other => panic!("the test does not know capability {other}: add its number"),
    }
}

#[test]
fn cap_numbers_match_linux() {
    // include/uapi/linux/capability.h
    assert_eq!(cap_number("cap_net_admin"), 12);
    assert_eq!(cap_number("CAP_BPF"), 39);
}
