//! `tas-scale`: hold many established connections to one echo server and measure echo
//! RPC throughput with few and with all of them open (issue 8's 100,000-connection
//! figure). The phases are described in `tools/src/bench/scale.rs`.
//!
//! ```text
//! tas-scale --server 10.77.0.1:7 --source 10.77.0.2 --source 10.77.0.3 --conns 100000 --json
//! ```
//!
//! Prints `established N` on stdout when every connection is up and has echoed once, then
//! (after `--hold`) the results: a table, or one JSON line with `--json`. The connections
//! are spread over worker processes (this program again, with `--worker-first`), each
//! below the open-files limit.

use std::io::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, ExitCode, Stdio};
use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::Parser;
use tas_tools::bench::scale::{self, ScaleConfig, Worker, WorkerSpec};

#[derive(Parser, Debug)]
#[command(
    about = "Many established connections to one echo server: throughput with few and with all open"
)]
struct Cli {
    /// The echo server, IPv4:PORT.
    #[arg(long)]
    server: SocketAddrV4,
    /// Local address to connect from (repeat; each carries up to 64,512 connections, from
    /// local port 1024 up). None: the kernel chooses (at most its ephemeral range).
    #[arg(long = "source")]
    sources: Vec<Ipv4Addr>,
    /// Connections in all.
    #[arg(long, default_value_t = 100_000)]
    conns: usize,
    /// Connections per worker process (default: the open-files hard limit less 256).
    #[arg(long)]
    per_proc: Option<usize>,
    /// Connections of the small phase.
    #[arg(long, default_value_t = 100)]
    small: usize,
    /// Requests in flight in the throughput phases.
    #[arg(long, default_value_t = 100)]
    window: usize,
    /// Bytes per request (and response).
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Handshakes pending at once per worker while opening connections (all workers
    /// together best stay below the server's backlog), and requests outstanding per worker
    /// in the every-connection round.
    #[arg(long, default_value_t = 64)]
    connect_window: usize,
    /// Unmeasured seconds at the start of each throughput phase.
    #[arg(long, default_value_t = 1.0)]
    warmup: f64,
    /// Measured seconds of each throughput phase.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Measurements of each throughput phase (the best is reported, every one listed).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Seconds to wait with every connection open, before the large phase.
    #[arg(long, default_value_t = 0.0)]
    hold: f64,
    /// Longest seconds opening the connections, or the all-at-once round, may take.
    #[arg(long, default_value_t = 120.0)]
    timeout: f64,
    /// One JSON line instead of a table.
    #[arg(long)]
    json: bool,
    /// Run as a worker (started by tas-scale itself): global index of the first connection.
    #[arg(long, hide = true, requires = "worker_count")]
    worker_first: Option<usize>,
    /// Run as a worker: its number of connections.
    #[arg(long, hide = true)]
    worker_count: Option<usize>,
}

/// Raise the soft open-files limit to the hard one; returns it. (Raising the hard limit
/// needs CAP_SYS_RESOURCE, which e.g. the CI machine does not give.)
fn raise_nofile() -> Result<u64> {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the valid, live `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrlimit(RLIMIT_NOFILE)");
    }
    if lim.rlim_cur < lim.rlim_max {
        let new = libc::rlimit {
            rlim_cur: lim.rlim_max,
            rlim_max: lim.rlim_max,
        };
        // SAFETY: setrlimit reads one valid rlimit.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &new) } != 0 {
            return Err(std::io::Error::last_os_error()).context("setrlimit(RLIMIT_NOFILE)");
        }
    }
    Ok(lim.rlim_max as u64)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let secs = |s: f64, flag: &str| {
        if s.is_finite() && s >= 0.0 {
            Ok(Duration::from_secs_f64(s))
        } else {
            Err(anyhow::anyhow!("--{flag} must be a number of seconds >= 0"))
        }
    };
    if let (Some(first), Some(count)) = (cli.worker_first, cli.worker_count) {
        let work = || -> Result<()> {
            let limit = raise_nofile()?;
            if count as u64 + 64 > limit {
                anyhow::bail!(
                    "{count} connections need more than the open-files limit {limit} allows"
                );
            }
            let w = Worker::new(WorkerSpec {
                server: cli.server,
                sources: cli.sources.clone(),
                first,
                count,
                size: cli.size,
                connect_window: cli.connect_window,
                timeout: secs(cli.timeout, "timeout")?,
            })?;
            w.serve(std::io::stdin().lock(), std::io::stdout().lock())
        };
        return match work() {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("tas-scale worker {first}..{}: {e:#}", first + count);
                ExitCode::FAILURE
            }
        };
    }
    let run = || -> Result<()> {
        let limit = raise_nofile()?;
        let cfg = ScaleConfig {
            per_proc: cli
                .per_proc
                .unwrap_or(limit.saturating_sub(256).max(1) as usize),
            server: cli.server,
            sources: cli.sources.clone(),
            conns: cli.conns,
            small: cli.small,
            window: cli.window,
            size: cli.size,
            connect_window: cli.connect_window,
            warmup: secs(cli.warmup, "warmup")?,
            duration: secs(cli.duration, "duration")?,
            hold: secs(cli.hold, "hold")?,
            rounds: cli.rounds,
            timeout: secs(cli.timeout, "timeout")?,
        };
        cfg.validate()?;
        let exe = std::env::current_exe().context("finding this program to start workers")?;
        let spawn = |_k: usize, w: &WorkerSpec| {
            let mut c = Command::new(&exe);
            c.arg("--server").arg(w.server.to_string());
            for s in &w.sources {
                c.arg("--source").arg(s.to_string());
            }
            c.args(["--size", &w.size.to_string()])
                .args(["--connect-window", &w.connect_window.to_string()])
                .args(["--timeout", &w.timeout.as_secs_f64().to_string()])
                .args(["--worker-first", &w.first.to_string()])
                .args(["--worker-count", &w.count.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped());
            Ok(c.spawn()?)
        };
        let r = scale::run(&cfg, spawn, |n| {
            println!("established {n}");
            let _ = std::io::stdout().flush();
        })?;
        if cli.json {
            let phase = |p: &scale::Phase| serde_json::json!({"conns": p.conns, "requests": p.requests, "seconds": p.seconds, "rps": p.rps});
            println!(
                "{}",
                serde_json::json!({
                    "ok": true,
                    "conns": cfg.conns,
                    "procs": r.procs,
                    "window": cfg.window,
                    "size": cfg.size,
                    "small": phase(&r.small),
                    "open_seconds": r.open_seconds,
                    "opened": r.opened,
                    "all": phase(&r.all),
                    "large": phase(&r.large),
                    "hot": phase(&r.hot),
                    "ratio": r.ratio(),
                    "rounds_rps": {
                        "small": &r.rounds[0][..cfg.rounds],
                        "large": &r.rounds[1][..cfg.rounds],
                        "hot": &r.rounds[2][..cfg.rounds],
                    },
                    "bytes_checked": r.bytes_checked,
                })
            );
        } else {
            println!("phase                          conns   requests/s");
            println!(
                "small (only these open)   {:>9} {:>12.0}",
                r.small.conns, r.small.rps
            );
            println!(
                "opened                    {:>9} in {:.1} s ({:.0}/s)",
                r.opened,
                r.open_seconds,
                r.opened as f64 / r.open_seconds
            );
            println!(
                "every conn once           {:>9} {:>12.0}",
                r.all.conns, r.all.rps
            );
            println!(
                "large (round robin, all)  {:>9} {:>12.0}",
                r.large.conns, r.large.rps
            );
            println!(
                "hot (small set, all open) {:>9} {:>12.0}",
                r.hot.conns, r.hot.rps
            );
            for (name, v) in ["small", "large", "hot"].iter().zip(&r.rounds) {
                let v: Vec<String> = v[..cfg.rounds].iter().map(|x| format!("{x:.0}")).collect();
                println!("rounds {name}: {}", v.join(" "));
            }
            println!(
                "large / small = {:.3} (window {} requests in flight, {} worker processes)",
                r.ratio(),
                cfg.window,
                r.procs
            );
        }
        Ok(())
    };
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({"ok": false, "error": format!("{e:#}")})
                );
            }
            eprintln!("tas-scale: {e:#}");
            ExitCode::FAILURE
        }
    }
}
