//! `tasd`: the TCP acceleration service.
//!
//! ```text
//! tasd --interface IF --ip ADDR/PREFIX [--gateway IP] [--fp-cores N] [--app-socket PATH]
//!      [--control-socket PATH] [--config FILE] [--xdp-mode auto|native|generic]
//!      [--metrics ADDR] [--control-tcp ADDR] ...
//! ```
//!
//! Logs go to stderr as structured `tracing` lines (key=value fields); without colours
//! when stderr is not a terminal, under systemd's journal (`JOURNAL_STREAM`, which also
//! drops the timestamp: the journal has its own) or with `NO_COLOR`.
#![deny(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use tas_slowpath::config::{BindModeSetting, FileConfig, XdpModeSetting};

/// TCP acceleration service: takes over TCP for one address on one interface with
/// AF_XDP fast-path cores; everything else stays with the kernel.
#[derive(Debug, Parser)]
#[command(name = "tasd", version, about)]
struct Cli {
    /// Network interface to serve (e.g. eth0).
    #[arg(long, short = 'i', value_name = "IF")]
    interface: Option<String>,
    /// The service's IPv4 address with prefix length (e.g. 10.0.0.1/24).
    #[arg(long, value_name = "ADDR/PREFIX")]
    ip: Option<String>,
    /// Default gateway for destinations outside the prefix.
    #[arg(long, value_name = "IP")]
    gateway: Option<std::net::Ipv4Addr>,
    /// Number of fast-path cores (one AF_XDP socket per rx queue 0..N).
    #[arg(long, value_name = "N")]
    fp_cores: Option<u8>,
    /// CPUs to pin the fast-path cores to, comma separated (default: the last CPUs).
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    fp_cpus: Option<Vec<usize>>,
    /// Active fast-path threads: 0 lets the scaling controller decide from the load, k fixes
    /// k (at most --fp-cores; can change live: tasctl config set fp_active K).
    #[arg(long, value_name = "N")]
    fp_active: Option<u8>,
    /// Unix socket applications attach to [default: /run/tas/tasd.sock].
    #[arg(long, value_name = "PATH")]
    app_socket: Option<PathBuf>,
    /// Unix socket of the gRPC control API [default: /run/tas/control.sock].
    #[arg(long, value_name = "PATH")]
    control_socket: Option<PathBuf>,
    /// TOML configuration file with the same keys (flags override it).
    #[arg(long, short = 'c', value_name = "FILE")]
    config: Option<PathBuf>,
    /// XDP attach mode.
    #[arg(long, value_enum)]
    xdp_mode: Option<XdpModeSetting>,
    /// AF_XDP bind mode.
    #[arg(long, value_enum)]
    bind_mode: Option<BindModeSetting>,
    /// Log filter, e.g. info, debug, tas_slowpath=trace (can change live: SIGHUP, tasctl config set).
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9464; off by default).
    #[arg(long, value_name = "ADDR")]
    metrics: Option<std::net::SocketAddr>,
    /// Also serve the control API on this TCP address (off by default; it has no
    /// authentication, so keep it on loopback).
    #[arg(long, value_name = "ADDR")]
    control_tcp: Option<std::net::SocketAddr>,
    /// Group allowed to use the control socket (mode 0660).
    #[arg(long, value_name = "GROUP")]
    control_group: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let Cli {
        interface,
        ip,
        gateway,
        fp_cores,
        fp_cpus,
        fp_active,
        app_socket,
        control_socket,
        config,
        xdp_mode,
        bind_mode,
        log_level,
        metrics,
        control_tcp,
        control_group,
    } = cli;
    let flags = FileConfig {
        interface,
        ip,
        gateway,
        fp_cores,
        fp_cpus,
        fp_active,
        app_socket,
        control_socket,
        xdp_mode,
        bind_mode,
        log_level,
        metrics,
        control_tcp,
        control_group,
        ..FileConfig::default()
    };
    let file = match config.as_deref().map(FileConfig::load).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("tasd: error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match file.merge(flags.clone()).validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tasd: error: {e}");
            return ExitCode::from(2);
        }
    };
    let log_reload = init_logging(&cfg.log_level);
    let hooks = tas_slowpath::service::Hooks { config_file: config, flags, log_reload: Some(log_reload) };
    match tas_slowpath::service::run_with(cfg, hooks) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasd: error: {e}");
            ExitCode::from(1)
        }
    }
}

/// Structured logs on stderr; returns the handle that swaps the filter while running.
fn init_logging(level: &str) -> tas_slowpath::live::LogReload {
    use std::io::IsTerminal;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::EnvFilter;

    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    let ansi = std::io::stderr().is_terminal() && !journald && std::env::var_os("NO_COLOR").is_none();
    let (filter, handle) = tracing_subscriber::reload::Layer::new(filter);
    let under_journal =
        journald.then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(false).without_time());
    let plain = (!journald).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_target(false).with_ansi(ansi));
    tracing_subscriber::registry().with(filter).with(under_journal).with(plain).init();
    Box::new(move |level: &str| {
        let f = EnvFilter::try_new(level).map_err(|e| format!("log_level {level:?}: {e}"))?;
        handle.reload(f).map_err(|e| format!("cannot change the log filter: {e}"))
    })
}
