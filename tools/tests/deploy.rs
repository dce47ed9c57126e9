//! The deployment files, checked without privileges: the systemd unit passes
//! `systemd-analyze verify` and keeps its hardening, `install.sh` lays out a staged install,
//! the Kubernetes manifest grants what the unit grants and no more, and tasctl fails
//! helpfully when it is used wrongly or tasd is not there. (The unit's ExecStart is run as
//! the unit would run it in `ops.rs`, a root test.)

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tas-deploy-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

fn unit_text() -> String {
    fs::read_to_string(repo().join("deploy/systemd/tasd.service")).unwrap()
}

/// The unit with ExecStart pointing at an executable that exists here (verify checks that
/// the command exists; the real binary is exercised by the root tests).
fn unit_for_verify(dir: &Path) -> PathBuf {
    let p = dir.join("tasd.service");
    fs::write(&p, unit_text().replace("/usr/local/bin/tasd", "/bin/true")).unwrap();
    p
}

fn systemd_analyze() -> &'static str {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "systemd-analyze is not installed, so the unit cannot be verified: install the `systemd` package \
         (deploy/install-deps.sh does)"
    );
    "systemd-analyze"
}

#[test]
fn systemd_unit_passes_systemd_analyze_verify() {
    let dir = tmpdir("verify");
    let unit = unit_for_verify(&dir);
    let out = Command::new(systemd_analyze())
        .arg("verify")
        .arg(&unit)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{text}"
    );
    assert!(
        text.trim().is_empty(),
        "systemd-analyze verify has remarks:\n{text}"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn systemd_unit_stays_hardened() {
    let dir = tmpdir("security");
    let unit = unit_for_verify(&dir);
    let out = Command::new(systemd_analyze())
        .args(["security", "--offline=true", "--no-pager"])
        .arg(&unit)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let level: f64 = text
        .lines()
        .find_map(|l| l.split("Overall exposure level for tasd.service: ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{text}"));
    // 2.6 when written; systemd calls < 4.0 "OK", >= 9.0 "UNSAFE". Root would be ~9.6.
    assert!(
        level <= 3.0,
        "the unit's exposure level rose to {level}:\n{text}"
    );
    let t = unit_text();
    for d in [
        "User=tasd",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_IPC_LOCK CAP_SYS_NICE CAP_CHOWN",
        "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_BPF CAP_PERFMON CAP_IPC_LOCK CAP_SYS_NICE CAP_CHOWN",
        "Type=notify",
        "ExecReload=/bin/kill -HUP $MAINPID",
    ] {
        assert!(t.lines().any(|l| l == d), "the unit lost `{d}`");
    }
    assert!(
        t.lines()
            .filter(|l| !l.starts_with('#'))
            .all(|l| !l.contains("CAP_SYS_ADMIN")),
        "no CAP_SYS_ADMIN"
    );
    let _ = fs::remove_dir_all(dir);
}

fn fake_bins(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    fs::create_dir_all(&bin).unwrap();
    for b in ["tasd", "tasctl", "tas-echo"] {
        fs::write(bin.join(b), format!("#!/bin/sh\necho {b}\n")).unwrap();
        fs::set_permissions(bin.join(b), fs::Permissions::from_mode(0o755)).unwrap();
    }
    bin
}

fn install(stage: &Path, bins: &Path, extra: &[&str]) -> std::process::Output {
    Command::new("bash")
        .arg(repo().join("deploy/install.sh"))
        .arg("--bin-dir")
        .arg(bins)
        .args(extra)
        .env("DESTDIR", stage)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn install_sh_stages_binaries_config_unit_and_docs() {
    let dir = tmpdir("install");
    let bins = fake_bins(&dir);
    let stage = dir.join("stage");
    let out = install(&stage, &bins, &["--prefix", "/opt/tas"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for b in ["tasd", "tasctl", "tas-echo"] {
        let m = fs::metadata(stage.join("opt/tas/bin").join(b)).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o755, "{b}");
    }
    let conf = stage.join("etc/tas/tasd.toml");
    assert_eq!(
        fs::read(&conf).unwrap(),
        fs::read(repo().join("deploy/tasd.toml")).unwrap()
    );
    let unit = fs::read_to_string(stage.join("etc/systemd/system/tasd.service")).unwrap();
    assert!(
        unit.lines()
            .any(|l| l == "ExecStart=/opt/tas/bin/tasd --config /etc/tas/tasd.toml"),
        "{unit}"
    );
    assert!(stage.join("opt/tas/share/doc/tas/operating.md").is_file());
    // A changed configuration is kept; the new default goes beside it.
    fs::write(&conf, "interface = \"eth9\"\n").unwrap();
    let out = install(&stage, &bins, &["--prefix", "/opt/tas"]);
    assert!(out.status.success());
    assert_eq!(fs::read_to_string(&conf).unwrap(), "interface = \"eth9\"\n");
    assert!(stage.join("etc/tas/tasd.toml.new").is_file());
    assert!(String::from_utf8_lossy(&out.stdout).contains("kept your"));
    // Helpful failures.
    let out = install(&stage, &dir.join("nothing"), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("build it first"));
    let out = install(&stage, &bins, &["--prefix", "relative"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("absolute path"));
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn kubernetes_daemonset_grants_what_the_unit_grants() {
    let y = fs::read_to_string(repo().join("deploy/k8s/tasd-daemonset.yaml")).unwrap();
    assert!(y.contains("kind: DaemonSet") && y.contains("hostNetwork: true"));
    assert!(y.contains("privileged: false") && !y.contains("privileged: true"));
    assert!(y.contains("allowPrivilegeEscalation: false"));
    assert!(y.contains("drop: [\"ALL\"]"));
    let add = y
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: "))
        .expect("capabilities: add");
    let mut k8s: Vec<String> = add
        .trim_matches(|c| c == '[' || c == ']')
        .split(',')
        .map(|c| format!("CAP_{}", c.trim().trim_matches('"')))
        .collect();
    let unit = unit_text();
    let mut caps: Vec<String> = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    k8s.sort();
    caps.sort();
    assert_eq!(k8s, caps);
    // Every document is valid YAML, if python3 can tell (PyYAML is optional).
    let check = Command::new("python3")
        .args(["-c", "import sys, yaml; docs = list(yaml.safe_load_all(open(sys.argv[1]))); print(len(docs))"])
        .arg(repo().join("deploy/k8s/tasd-daemonset.yaml"))
        .output();
    if let Ok(out) = check {
        let err = String::from_utf8_lossy(&out.stderr);
        if !err.contains("No module named 'yaml'") {
            assert!(
                out.status.success(),
                "the manifest is not valid YAML: {err}"
            );
            assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
        }
    }
}

// ---- tasctl without a tasd ------------------------------------------------------------------

fn tasctl(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_tasctl"))
        .args(args)
        .env_remove("TAS_CONTROL_SOCKET")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tasctl_says_when_tasd_is_not_running() {
    let dir = tmpdir("ctl");
    let sock = dir.join("control.sock");
    let (code, _, err) = tasctl(&["--socket", sock.to_str().unwrap(), "status"]);
    assert_eq!(code, 1);
    assert_eq!(
        err.trim(),
        format!(
            "tasctl: error: cannot reach tasd at {}: is it running? (systemctl status tasd)",
            sock.display()
        )
    );
    // A socket file nobody listens on (a crashed tasd) reads the same.
    let l = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    drop(l);
    let (code, _, err) = tasctl(&["--socket", sock.to_str().unwrap(), "flows"]);
    assert_eq!(code, 1);
    assert!(err.contains("is it running?"), "{err}");
    let out = Command::new(env!("CARGO_BIN_EXE_tasctl"))
        .arg("status")
        .env("TAS_CONTROL_SOCKET", &sock)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains(&format!("cannot reach tasd at {}", sock.display())));
    let (code, _, err) = tasctl(&["--tcp", "127.0.0.1:1", "status"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot reach tasd at 127.0.0.1:1: is it running with --control-tcp"),
        "{err}"
    );
    let _ = fs::remove_dir_all(dir);
}

#[test]
fn tasctl_bad_arguments_exit_2_with_the_fix() {
    for (args, words) in [
        (
            &["flow", "x"][..],
            "use a number from the ID column of `tasctl flows`",
        ),
        (&["flow"][..], "<ID>"),
        (&["close", "-1"][..], "unexpected argument"),
        (
            &["flows", "--state", "opened"][..],
            "use one of ESTABLISHED",
        ),
        (&["flows", "--port", "65536"][..], "is not a port (1-65535)"),
        (
            &["flows", "--remote", "host.example"][..],
            "is not an IPv4 address or IP:PORT",
        ),
        (
            &["flows", "--sort", "bytes"][..],
            "cannot sort by \"bytes\"",
        ),
        (
            &["stats", "--watch", "0"][..],
            "not a positive number of seconds",
        ),
        (
            &["capture", "-w", "x.pcap", "--duration", "601"][..],
            "at most 600 s",
        ),
        (&["capture", "--port", "7"][..], "--write <FILE>"),
        (&["config", "set", "log_level"][..], "<VALUE>"),
        (&["cc"][..], "Usage: tasctl cc"),
        (
            &["--timeout", "abc", "status"][..],
            "not a positive number of seconds",
        ),
        (&[][..], "Usage: tasctl"),
    ] {
        let (code, _, err) = tasctl(args);
        assert_eq!(code, 2, "tasctl {args:?}: {err}");
        assert!(
            err.contains(words),
            "tasctl {args:?}: expected {words:?} in:\n{err}"
        );
    }
    let (code, out, _) = tasctl(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("capture") && out.contains("Exit status"),
        "{out}"
    );
}
