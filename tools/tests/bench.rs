//! The benchmark harness end to end, in its short mode: `tas-bench compare --quick` makes
//! its own sandbox, runs every workload on the stack and on the kernel, and must produce a
//! complete table — every row with both results and a ratio (or, for an unmodified program
//! under the LD_PRELOAD shim, the kernel's result and why the stack side failed) — plus the
//! markdown section
//! and the chart. The numbers are not checked (benchmarks are not tests); that the harness
//! works is. A failing setup fails the test: it never skips.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

fn bin_dir() -> PathBuf {
    match std::env::var_os("TAS_BIN_DIR") {
        Some(d) => PathBuf::from(d),
        None => std::env::current_exe()
            .expect("current_exe")
            .ancestors()
            .nth(3)
            .expect("test binary lives in <target>/<profile>/deps")
            .join("release"),
    }
}

#[test]
#[ignore = "needs root and veth: run with cargo test -- --ignored"]
fn compare_quick_produces_a_complete_table() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "tas-bench compare needs root: run `sudo bash deploy/test.sh`");
    let bench = bin_dir().join("tas-bench");
    assert!(
        bench.is_file(),
        "{} not found: build it first with `cargo build --release --workspace`",
        bench.display()
    );
    let dir = std::env::temp_dir().join(format!("tas-bench-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let md = dir.join("results.md");
    // Text around the markers must survive the splice.
    std::fs::write(&md, "# Results\n\nkept before\n").unwrap();
    let png = dir.join("chart.png");
    let t = Instant::now();
    let child = Command::new(&bench)
        .args(["compare", "--quick", "--json", "--out"])
        .arg(&md)
        .arg("--chart")
        .arg(&png)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run tas-bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for tas-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "tas-bench compare --quick failed ({}) after {:?}:\n--- stdout ---\n{stdout}\n--- stderr ---\n{stderr}",
        out.status,
        t.elapsed()
    );
    let v: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"));
    assert_eq!(v["ok"], true, "{v}");
    let rows = v["rows"].as_array().expect("rows");
    // Every workload of the harness is there.
    for w in [
        "closed loop, depth 1",
        "closed loop, depth 16",
        "open loop",
        "bulk echo",
        "redis-benchmark SET",
        "redis-benchmark GET",
        "redis-server under the shim: redis-benchmark SET -c 50 -P 1",
        "redis-server under the shim: redis-benchmark GET -c 50 -P 16",
        "sockperf ping-pong 64 B (",
        "sockperf ping-pong 1 KB",
        "sockperf ping-pong 64 B at",
        "sockperf throughput",
        "iperf3 bulk",
    ] {
        assert!(
            rows.iter().any(|r| r["workload"].as_str().unwrap().contains(w)),
            "no row for {w:?}:\n{v:#}"
        );
    }
    // The metrics each new workload must report.
    for (w, m) in [
        ("sockperf ping-pong 64 B (", "p50 µs"),
        ("sockperf ping-pong 64 B (", "p99 µs"),
        ("sockperf ping-pong 64 B (", "p99.9 µs"),
        ("sockperf ping-pong 1 KB", "p99.9 µs"),
        ("sockperf throughput", "messages/s"),
        ("iperf3 bulk", "Gbit/s"),
        ("iperf3 bulk", "CPU s per GB"),
        ("redis-server under the shim", "requests/s"),
    ] {
        assert!(
            rows.iter().any(|r| r["workload"].as_str().unwrap().contains(w) && r["metric"].as_str().unwrap().contains(m)),
            "no {m:?} row for {w:?}:\n{v:#}"
        );
    }
    let mut failed = 0;
    for r in rows {
        let (s, k, ratio) = (r["stack"].as_f64(), r["kernel"].as_f64(), r["ratio"].as_f64());
        // A program under the LD_PRELOAD shim that fails on the stack is a finding the
        // table records ("failed: reason") next to the kernel's result; anything else
        // missing is a broken harness.
        if let (None, Some(k), Some(why)) = (s, k, r["failed"].as_str()) {
            let w = r["workload"].as_str().unwrap();
            assert!(w.contains("under the shim"), "only programs under the shim may fail on the stack: {r}");
            assert!(!why.trim().is_empty() && k > 0.0 && r["ratio"].is_null(), "{r}");
            eprintln!("recorded stack-side failure: {w}: {why}");
            failed += 1;
            continue;
        }
        let (Some(s), Some(k), Some(ratio)) = (s, k, ratio) else {
            panic!("incomplete row: {r}");
        };
        assert!(s > 0.0 && k > 0.0, "a zero result is a broken measurement: {r}");
        assert!((ratio - s / k).abs() <= 1e-9 * ratio.abs(), "ratio is not stack/kernel: {r}");
    }
    // Idle CPU of tasd (and the attached echo server) was measured with no traffic.
    let idle = v["idle_cpu_percent"].as_array().expect("idle_cpu_percent");
    assert!(idle.iter().any(|p| p["process"] == "tasd"), "{v}");
    for p in idle {
        let pct = p["percent"].as_f64().expect("percent");
        assert!((0.0..=200.0).contains(&pct), "{p}");
    }
    // The stack side's fast path did the stack-side work and the accounting saw it.
    let cycles = v["cycles"].as_array().expect("cycles");
    assert!(!cycles.is_empty());
    for c in cycles {
        let per_req = c["cycles_per_request"].as_f64().unwrap_or(0.0);
        let busy = c["busy_percent"].as_f64().unwrap_or(0.0);
        assert!(per_req > 0.0 && busy > 0.0 && busy <= 100.0, "cycle accounting: {c}");
    }
    // The docs section: between the markers, one table line per row, the rest kept.
    let doc = std::fs::read_to_string(&md).unwrap();
    assert!(doc.starts_with("# Results\n\nkept before\n"), "{doc}");
    let begin = doc.find("<!-- tas-bench compare: begin").expect("begin marker");
    let end = doc.find("<!-- tas-bench compare: end -->").expect("end marker");
    let section = &doc[begin..end];
    let table_rows = section
        .lines()
        .filter(|l| {
            l.starts_with("| ")
                && !l.starts_with("| ---")
                && !l.starts_with("| workload")
                && !l.starts_with("| stack-side")
        })
        .count();
    assert_eq!(table_rows, rows.len() + cycles.len(), "{section}");
    assert!(!section.contains("FAILED"), "{section}");
    assert_eq!(section.matches("| failed: ").count(), failed, "{section}");
    let chart = std::fs::read(&png).expect("chart written");
    assert_eq!(&chart[..8], b"\x89PNG\r\n\x1a\n");
    // No sandbox left behind.
    let ns = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let ours = format!("tasv-{pid}-0-");
    let left: Vec<String> = String::from_utf8_lossy(&ns.stdout)
        .lines()
        .filter(|l| l.starts_with(&ours))
        .map(str::to_string)
        .collect();
    assert!(left.is_empty(), "tas-bench left its namespaces behind: {left:?}");
    let _ = std::fs::remove_dir_all(&dir);
}
