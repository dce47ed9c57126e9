//! `tasd`: the TCP acceleration service.
//!
//! ```text
//! tasd --interface IF --ip ADDR/PREFIX [--gateway IP] [--fp-cores N] [--app-socket PATH]
//!      [--control-socket PATH] [--config FILE] [--xdp-mode auto|native|generic] ...
//! ```
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
    /// Log filter, e.g. info, debug, tas_slowpath=trace.
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { ExitCode::from(2) } else { ExitCode::SUCCESS };
        }
    };
    let Cli { interface, ip, gateway, fp_cores, fp_cpus, app_socket, control_socket, config, xdp_mode, bind_mode, log_level } = cli;
    let flags = FileConfig {
        interface,
        ip,
        gateway,
        fp_cores,
        fp_cpus,
        app_socket,
        control_socket,
        xdp_mode,
        bind_mode,
        log_level,
        ..FileConfig::default()
    };
    let file = match config.as_deref().map(FileConfig::load).transpose() {
        Ok(f) => f.unwrap_or_default(),
        Err(e) => {
            eprintln!("tasd: error: {e}");
            return ExitCode::from(2);
        }
    };
    let cfg = match file.merge(flags).validate() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tasd: error: {e}");
            return ExitCode::from(2);
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&cfg.log_level));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).with_target(false).init();
    match tas_slowpath::service::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tasd: error: {e}");
            ExitCode::from(1)
        }
    }
}
