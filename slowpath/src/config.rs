//! tasd configuration: a TOML file and command-line flags with the same keys (flags win).
//!
//! Every problem is reported as one line that names the key, what is wrong and how to
//! fix it.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// How to attach the XDP program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "lowercase")]
pub enum XdpModeSetting {
    /// Native (driver) mode, falling back to generic.
    #[default]
    Auto,
    /// Native (driver) mode only.
    Native,
    /// Generic (SKB) mode.
    Generic,
}

/// How to bind the AF_XDP sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum, Default)]
#[serde(rename_all = "kebab-case")]
pub enum BindModeSetting {
    /// Zero-copy, falling back to copy mode.
    #[default]
    Auto,
    /// Zero-copy only.
    ZeroCopy,
    /// Copy mode.
    Copy,
}

/// The whole configuration, as the file spells it.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Interface to serve.
    pub interface: Option<String>,
    /// Service address with prefix, e.g. "10.0.0.1/24".
    pub ip: Option<String>,
    /// Default gateway for destinations outside the prefix.
    pub gateway: Option<Ipv4Addr>,
    /// Fast-path cores.
    pub fp_cores: Option<u8>,
    /// CPUs to pin fast-path cores to, in order (default: the last CPUs).
    pub fp_cpus: Option<Vec<usize>>,
    /// Application socket path.
    pub app_socket: Option<PathBuf>,
    /// Control (gRPC) socket path.
    pub control_socket: Option<PathBuf>,
    /// XDP attach mode.
    pub xdp_mode: Option<XdpModeSetting>,
    /// AF_XDP bind mode.
    pub bind_mode: Option<BindModeSetting>,
    /// Receive ring per connection, bytes (power of two).
    pub rx_buffer: Option<u32>,
    /// Transmit ring per connection, bytes (power of two).
    pub tx_buffer: Option<u32>,
    /// Connection slots per application context.
    pub conns_per_app: Option<u32>,
    /// Flow slots per fast-path core.
    pub flows_per_core: Option<u32>,
    /// Entries per shared-memory queue.
    pub queue_entries: Option<u32>,
    /// First port of the ephemeral range.
    pub ephemeral_low: Option<u16>,
    /// Last port of the ephemeral range.
    pub ephemeral_high: Option<u16>,
    /// Microseconds a fast-path core spins without work before it sleeps.
    pub idle_spin_us: Option<u64>,
    /// Active fast-path threads: 0 lets the scaling controller decide (1..fp_cores), k fixes k.
    pub fp_active: Option<u8>,
    /// Add a fast-path thread when the busy share per active thread stays above this (percent).
    pub fp_scale_up_pct: Option<u32>,
    /// Remove one when one thread fewer would stay below this (percent, below fp_scale_up_pct).
    pub fp_scale_down_pct: Option<u32>,
    /// How long the load must stay high before a thread is added, ms.
    pub fp_scale_up_ms: Option<u64>,
    /// How long the load must stay low before a thread is removed, ms.
    pub fp_scale_down_ms: Option<u64>,
    /// TIME_WAIT duration in milliseconds.
    pub time_wait_ms: Option<u64>,
    /// Answer ARP requests for the service address ("auto": only if the kernel does not
    /// own the address).
    pub arp_reply: Option<String>,
    /// Log filter (tracing env-filter syntax).
    pub log_level: Option<String>,
    /// Group that may use the sockets (name).
    pub socket_group: Option<String>,
    /// Idle seconds before keepalive probes start (0 = keepalive off, the default).
    pub keepalive_idle_secs: Option<u64>,
    /// Seconds between unanswered keepalive probes.
    pub keepalive_interval_secs: Option<u64>,
    /// Unanswered keepalive probes before a connection is reset.
    pub keepalive_probes: Option<u8>,
    /// Group that may use the control socket (name or number; default: root's only).
    pub control_group: Option<String>,
    /// Also serve the control API on this TCP address (off unless given).
    pub control_tcp: Option<SocketAddr>,
    /// Serve Prometheus metrics over HTTP on this address (off unless given).
    pub metrics: Option<SocketAddr>,
    /// congestion control of new connections: dctcp-window, dctcp-rate, timely, cubic, fixed, unlimited (tasctl cc changes it at run time)
    pub cc_algorithm: Option<String>,
    /// negotiate ECN (RFC 3168) on new connections: ECT on data, CE echoed with ECE
    pub ecn: Option<bool>,
    /// congestion control runs once per this many smoothed RTTs of a flow (1-64)
    pub cc_interval_rtts: Option<u32>,
    /// But at most once per this many microseconds
    pub cc_interval_min_us: Option<u32>,
    /// initial congestion window in segments (RFC 6928: 10)
    pub cc_initial_window: Option<u32>,
    /// DCTCP EWMA gain g for alpha (RFC 8257: 1/16), 0 < g <= 1
    pub dctcp_g: Option<f64>,
    /// additive increase of dctcp-rate per cc_rate_step_us, kbit/s
    pub cc_rate_step_kbps: Option<u32>,
    /// the time base of dctcp-rate and of TIMELY's additive increase, µs (50-100000)
    pub cc_rate_step_us: Option<u32>,
    /// lowest pacing rate any algorithm sets, kbit/s
    pub cc_min_rate_kbps: Option<u32>,
    /// highest pacing rate any algorithm sets, kbit/s (the line rate is a good choice)
    pub cc_max_rate_kbps: Option<u32>,
    /// pacing rate of connections with the fixed algorithm, kbit/s
    pub cc_fixed_rate_kbps: Option<u32>,
    /// TIMELY T_low: below this RTT (us) the rate always grows
    pub timely_t_low_us: Option<u32>,
    /// TIMELY T_high: above this RTT (us) the rate always shrinks
    pub timely_t_high_us: Option<u32>,
    /// TIMELY EWMA weight of a new RTT difference, 0 < alpha <= 1
    pub timely_alpha: Option<f64>,
    /// TIMELY multiplicative decrease factor, 0 < beta <= 1
    pub timely_beta: Option<f64>,
    /// TIMELY additive increase step delta, kbit/s
    pub timely_delta_kbps: Option<u32>,
    /// CUBIC constant C (RFC 9438: 0.4), > 0
    pub cubic_c: Option<f64>,
    /// CUBIC multiplicative decrease factor (RFC 9438: 0.7), 0 < beta < 1
    pub cubic_beta: Option<f64>,
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Interface.
    pub interface: String,
    /// Service address.
    pub ip: Ipv4Addr,
    /// Prefix length.
    pub prefix: u8,
    /// Gateway.
    pub gateway: Option<Ipv4Addr>,
    /// Fast-path cores.
    pub fp_cores: u8,
    /// Pinning.
    pub fp_cpus: Option<Vec<usize>>,
    /// App socket.
    pub app_socket: PathBuf,
    /// Control socket.
    pub control_socket: PathBuf,
    /// XDP mode.
    pub xdp_mode: XdpModeSetting,
    /// Bind mode.
    pub bind_mode: BindModeSetting,
    /// Receive ring size.
    pub rx_buffer: u32,
    /// Transmit ring size.
    pub tx_buffer: u32,
    /// Connection slots per app.
    pub conns_per_app: u32,
    /// Flow slots per core.
    pub flows_per_core: u32,
    /// Queue entries.
    pub queue_entries: u32,
    /// Ephemeral port range.
    pub ephemeral: (u16, u16),
    /// Idle spin before sleeping, µs.
    pub idle_spin_us: u64,
    /// Active fast-path threads: 0 lets the scaling controller decide (1..fp_cores), k fixes k.
    pub fp_active: u8,
    /// Add a fast-path thread when the busy share per active thread stays above this (percent).
    pub fp_scale_up_pct: u32,
    /// Remove one when one thread fewer would stay below this (percent, below fp_scale_up_pct).
    pub fp_scale_down_pct: u32,
    /// How long the load must stay high before a thread is added, ms.
    pub fp_scale_up_ms: u64,
    /// How long the load must stay low before a thread is removed, ms.
    pub fp_scale_down_ms: u64,
    /// TIME_WAIT, ms.
    pub time_wait_ms: u64,
    /// ARP reply policy: Some(true) always, Some(false) never, None auto.
    pub arp_reply: Option<bool>,
    /// Log filter.
    pub log_level: String,
    /// Socket group.
    pub socket_group: Option<String>,
    /// Keepalive (None = off): idle, interval, probes.
    pub keepalive: Option<(u64, u64, u8)>,
    /// Control socket group.
    pub control_group: Option<String>,
    /// Control API on TCP.
    pub control_tcp: Option<SocketAddr>,
    /// Metrics endpoint.
    pub metrics: Option<SocketAddr>,
    /// Congestion control parameters.
    pub cc: crate::cc::CcParams,
    /// Control interval: (smoothed RTTs, floor in µs).
    pub cc_interval: (u32, u32),
}

/// A configuration problem, with its fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err<T>(s: impl Into<String>) -> Result<T, ConfigError> {
    Err(ConfigError(s.into()))
}

/// Parse "A.B.C.D/N".
pub fn parse_cidr(s: &str) -> Result<(Ipv4Addr, u8), ConfigError> {
    let (a, p) = s.split_once('/').ok_or_else(|| {
        ConfigError(format!("--ip {s:?} has no prefix length: write it as ADDRESS/PREFIX, e.g. 10.0.0.1/24"))
    })?;
    let ip: Ipv4Addr =
        a.parse().map_err(|_| ConfigError(format!("--ip {s:?}: {a:?} is not an IPv4 address (e.g. 10.0.0.1/24)")))?;
    let prefix: u8 = p
        .parse()
        .ok()
        .filter(|p| (1..=32).contains(p))
        .ok_or_else(|| ConfigError(format!("--ip {s:?}: prefix {p:?} must be a number from 1 to 32")))?;
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return err(format!("--ip {s:?}: {ip} cannot be a host address; use a unicast address"));
    }
    Ok((ip, prefix))
}

impl FileConfig {
    /// Read a TOML file.
    pub fn load(path: &Path) -> Result<FileConfig, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read config file {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| {
            ConfigError(format!("config file {}: {}", path.display(), e.to_string().replace('\n', " ").trim()))
        })
    }

    /// Overlay `o` (command line) on `self` (file).
    pub fn merge(self, o: FileConfig) -> FileConfig {
        macro_rules! pick {
            ($($f:ident),*) => { FileConfig { $($f: o.$f.or(self.$f)),* } };
        }
        pick!(
            interface, ip, gateway, fp_cores, fp_cpus, app_socket, control_socket, xdp_mode, bind_mode,
            rx_buffer, tx_buffer, conns_per_app, flows_per_core, queue_entries, ephemeral_low,
            ephemeral_high, idle_spin_us, fp_active, fp_scale_up_pct, fp_scale_down_pct, fp_scale_up_ms, fp_scale_down_ms, time_wait_ms, arp_reply, log_level, socket_group,
            keepalive_idle_secs, keepalive_interval_secs, keepalive_probes, control_group, control_tcp, metrics,
            cc_algorithm, ecn, cc_interval_rtts, cc_interval_min_us, cc_initial_window, dctcp_g, cc_rate_step_kbps, cc_rate_step_us, cc_min_rate_kbps, cc_max_rate_kbps, cc_fixed_rate_kbps, timely_t_low_us, timely_t_high_us, timely_alpha, timely_beta, timely_delta_kbps, cubic_c, cubic_beta
        )
    }

    /// The keys this file (or set of flags) gives a value.
    pub fn set_keys(&self) -> Vec<&'static str> {
        let FileConfig {
            interface,
            ip,
            gateway,
            fp_cores,
            fp_cpus,
            app_socket,
            control_socket,
            xdp_mode,
            bind_mode,
            rx_buffer,
            tx_buffer,
            conns_per_app,
            flows_per_core,
            queue_entries,
            ephemeral_low,
            ephemeral_high,
            idle_spin_us,
            fp_active,
            fp_scale_up_pct,
            fp_scale_down_pct,
            fp_scale_up_ms,
            fp_scale_down_ms,
            time_wait_ms,
            arp_reply,
            log_level,
            socket_group,
            keepalive_idle_secs,
            keepalive_interval_secs,
            keepalive_probes,
            control_group,
            control_tcp,
            metrics,
            cc_algorithm,
            ecn,
            cc_interval_rtts,
            cc_interval_min_us,
            cc_initial_window,
            dctcp_g,
            cc_rate_step_kbps,
            cc_rate_step_us,
            cc_min_rate_kbps,
            cc_max_rate_kbps,
            cc_fixed_rate_kbps,
            timely_t_low_us,
            timely_t_high_us,
            timely_alpha,
            timely_beta,
            timely_delta_kbps,
            cubic_c,
            cubic_beta,
        } = self;
        [
            ("interface", interface.is_some()),
            ("ip", ip.is_some()),
            ("gateway", gateway.is_some()),
            ("fp_cores", fp_cores.is_some()),
            ("fp_cpus", fp_cpus.is_some()),
            ("app_socket", app_socket.is_some()),
            ("control_socket", control_socket.is_some()),
            ("xdp_mode", xdp_mode.is_some()),
            ("bind_mode", bind_mode.is_some()),
            ("rx_buffer", rx_buffer.is_some()),
            ("tx_buffer", tx_buffer.is_some()),
            ("conns_per_app", conns_per_app.is_some()),
            ("flows_per_core", flows_per_core.is_some()),
            ("queue_entries", queue_entries.is_some()),
            ("ephemeral_low", ephemeral_low.is_some()),
            ("ephemeral_high", ephemeral_high.is_some()),
            ("idle_spin_us", idle_spin_us.is_some()),
            ("fp_active", fp_active.is_some()),
            ("fp_scale_up_pct", fp_scale_up_pct.is_some()),
            ("fp_scale_down_pct", fp_scale_down_pct.is_some()),
            ("fp_scale_up_ms", fp_scale_up_ms.is_some()),
            ("fp_scale_down_ms", fp_scale_down_ms.is_some()),
            ("time_wait_ms", time_wait_ms.is_some()),
            ("arp_reply", arp_reply.is_some()),
            ("log_level", log_level.is_some()),
            ("socket_group", socket_group.is_some()),
            ("keepalive_idle_secs", keepalive_idle_secs.is_some()),
            ("keepalive_interval_secs", keepalive_interval_secs.is_some()),
            ("keepalive_probes", keepalive_probes.is_some()),
            ("control_group", control_group.is_some()),
            ("control_tcp", control_tcp.is_some()),
            ("metrics", metrics.is_some()),
            ("cc_algorithm", cc_algorithm.is_some()),
            ("ecn", ecn.is_some()),
            ("cc_interval_rtts", cc_interval_rtts.is_some()),
            ("cc_interval_min_us", cc_interval_min_us.is_some()),
            ("cc_initial_window", cc_initial_window.is_some()),
            ("dctcp_g", dctcp_g.is_some()),
            ("cc_rate_step_kbps", cc_rate_step_kbps.is_some()),
            ("cc_rate_step_us", cc_rate_step_us.is_some()),
            ("cc_min_rate_kbps", cc_min_rate_kbps.is_some()),
            ("cc_max_rate_kbps", cc_max_rate_kbps.is_some()),
            ("cc_fixed_rate_kbps", cc_fixed_rate_kbps.is_some()),
            ("timely_t_low_us", timely_t_low_us.is_some()),
            ("timely_t_high_us", timely_t_high_us.is_some()),
            ("timely_alpha", timely_alpha.is_some()),
            ("timely_beta", timely_beta.is_some()),
            ("timely_delta_kbps", timely_delta_kbps.is_some()),
            ("cubic_c", cubic_c.is_some()),
            ("cubic_beta", cubic_beta.is_some()),
        ]
        .into_iter()
        .filter(|(_, set)| *set)
        .map(|(k, _)| k)
        .collect()
    }

    /// Check everything and fill defaults.
    pub fn validate(self) -> Result<Config, ConfigError> {
        let FileConfig {
            interface,
            ip,
            gateway,
            fp_cores,
            fp_cpus,
            app_socket,
            control_socket,
            xdp_mode,
            bind_mode,
            rx_buffer,
            tx_buffer,
            conns_per_app,
            flows_per_core,
            queue_entries,
            ephemeral_low,
            ephemeral_high,
            idle_spin_us,
            fp_active,
            fp_scale_up_pct,
            fp_scale_down_pct,
            fp_scale_up_ms,
            fp_scale_down_ms,
            time_wait_ms,
            arp_reply,
            log_level,
            socket_group,
            keepalive_idle_secs,
            keepalive_interval_secs,
            keepalive_probes,
            control_group,
            control_tcp,
            metrics,
            cc_algorithm,
            ecn,
            cc_interval_rtts,
            cc_interval_min_us,
            cc_initial_window,
            dctcp_g,
            cc_rate_step_kbps,
            cc_rate_step_us,
            cc_min_rate_kbps,
            cc_max_rate_kbps,
            cc_fixed_rate_kbps,
            timely_t_low_us,
            timely_t_high_us,
            timely_alpha,
            timely_beta,
            timely_delta_kbps,
            cubic_c,
            cubic_beta,
        } = self;
        let Some(interface) = interface else {
            return err("no interface given: pass --interface IF (or `interface = \"IF\"` in the config file)");
        };
        if interface.is_empty() || interface.len() > 15 || interface.contains('/') {
            return err(format!("--interface {interface:?} is not a valid interface name (1-15 characters, see `ip link`)"));
        }
        let Some(ip) = ip else {
            return err("no service address given: pass --ip ADDRESS/PREFIX, e.g. --ip 10.0.0.1/24");
        };
        let (ip, prefix) = parse_cidr(&ip)?;
        let fp_cores = fp_cores.unwrap_or(1);
        if fp_cores == 0 || fp_cores > 64 {
            return err(format!("--fp-cores {fp_cores}: must be 1 to 64"));
        }
        let fp_active = fp_active.unwrap_or(0);
        if fp_active > fp_cores {
            return err(format!("fp_active {fp_active}: at most fp_cores ({fp_cores}) threads can be active; 0 lets the controller decide"));
        }
        let defaults = tas_fastpath::shard::ScaleParams::default();
        let scale = tas_fastpath::shard::ScaleParams {
            up_pct: fp_scale_up_pct.unwrap_or(defaults.up_pct),
            down_pct: fp_scale_down_pct.unwrap_or(defaults.down_pct),
            up_ms: fp_scale_up_ms.unwrap_or(defaults.up_ms),
            down_ms: fp_scale_down_ms.unwrap_or(defaults.down_ms),
        };
        scale.check().map_err(ConfigError)?;
        if let Some(cpus) = &fp_cpus {
            if cpus.len() < fp_cores as usize {
                return err(format!("fp_cpus lists {} CPUs for {} fast-path cores: list one CPU per core", cpus.len(), fp_cores));
            }
        }
        let pow2 = |name: &str, v: u32, lo: u32, hi: u32| -> Result<u32, ConfigError> {
            if !v.is_power_of_two() || v < lo || v > hi {
                return err(format!("{name} = {v}: must be a power of two from {lo} to {hi}"));
            }
            Ok(v)
        };
        let rx_buffer = pow2("rx_buffer", rx_buffer.unwrap_or(256 * 1024), 4096, 1 << 30)?;
        let tx_buffer = pow2("tx_buffer", tx_buffer.unwrap_or(256 * 1024), 4096, 1 << 30)?;
        let queue_entries = pow2("queue_entries", queue_entries.unwrap_or(1024), 16, 65536)?;
        let conns_per_app = conns_per_app.unwrap_or(1024);
        if conns_per_app == 0 || conns_per_app > 1 << 20 {
            return err(format!("conns_per_app = {conns_per_app}: must be 1 to 1048576"));
        }
        let flows_per_core = flows_per_core.unwrap_or(65536);
        if flows_per_core == 0 || flows_per_core > 1 << 22 {
            return err(format!("flows_per_core = {flows_per_core}: must be 1 to 4194304"));
        }
        // Above Linux's default ip_local_port_range (32768-60999), so the kernel's own
        // connections on the same address never pick the same port.
        let ephemeral = (ephemeral_low.unwrap_or(61000), ephemeral_high.unwrap_or(65535));
        if ephemeral.0 < 1024 || ephemeral.0 > ephemeral.1 {
            return err(format!(
                "ephemeral port range {}-{} is invalid: need 1024 <= ephemeral_low <= ephemeral_high",
                ephemeral.0, ephemeral.1
            ));
        }
        if let Some(gw) = gateway {
            if !same_subnet(gw, ip, prefix) {
                return err(format!("--gateway {gw} is not inside {ip}/{prefix}: the gateway must be on the local subnet"));
            }
        }
        let arp_reply = match arp_reply.as_deref() {
            None | Some("auto") => None,
            Some("always") | Some("true") => Some(true),
            Some("never") | Some("false") => Some(false),
            Some(o) => return err(format!("arp_reply = {o:?}: use \"auto\", \"always\" or \"never\"")),
        };
        let keepalive = match keepalive_idle_secs.unwrap_or(0) {
            0 => None,
            idle => {
                let interval = keepalive_interval_secs.unwrap_or(75);
                let probes = keepalive_probes.unwrap_or(9);
                if interval == 0 || probes == 0 {
                    return err("keepalive_interval_secs and keepalive_probes must be at least 1 when keepalive_idle_secs is set");
                }
                Some((idle, interval, probes))
            }
        };
        let cc_alg: crate::cc::Algorithm = match cc_algorithm.as_deref() {
            None => crate::cc::Algorithm::DctcpWindow,
            Some(a) => a.parse().map_err(|e: crate::cc::UnknownAlgorithm| ConfigError(format!("cc_algorithm: {e}")))?,
        };
        let d = crate::cc::CcParams::default();
        let unit = |name: &str, v: Option<f64>, dflt: f64, closed_hi: bool| -> Result<f64, ConfigError> {
            let v = v.unwrap_or(dflt);
            if !(v > 0.0 && (v < 1.0 || closed_hi && v == 1.0)) {
                return err(format!("{name} = {v}: must be above 0 and below {}1", if closed_hi { "or equal to " } else { "" }));
            }
            Ok(v)
        };
        let positive = |name: &str, v: Option<u32>, dflt: u32| -> Result<u32, ConfigError> {
            let v = v.unwrap_or(dflt);
            if v == 0 {
                return err(format!("{name} = 0: must be at least 1"));
            }
            Ok(v)
        };
        let cc = crate::cc::CcParams {
            algorithm: cc_alg,
            ecn: ecn.unwrap_or(d.ecn),
            initial_window: positive("cc_initial_window", cc_initial_window, d.initial_window)?,
            dctcp_g: unit("dctcp_g", dctcp_g, d.dctcp_g, true)?,
            rate_step_kbps: positive("cc_rate_step_kbps", cc_rate_step_kbps, d.rate_step_kbps)?,
            rate_step_us: match cc_rate_step_us.unwrap_or(d.rate_step_us) {
                v @ 50..=100_000 => v,
                v => return err(format!("cc_rate_step_us = {v}: must be 50 to 100000 (microseconds; the default 400 suits a 1-10 Gbit/s path with tens of µs of RTT)")),
            },
            min_rate_kbps: positive("cc_min_rate_kbps", cc_min_rate_kbps, d.min_rate_kbps)?,
            max_rate_kbps: positive("cc_max_rate_kbps", cc_max_rate_kbps, d.max_rate_kbps)?,
            fixed_rate_kbps: positive("cc_fixed_rate_kbps", cc_fixed_rate_kbps, d.fixed_rate_kbps)?,
            timely_t_low_us: timely_t_low_us.unwrap_or(d.timely_t_low_us),
            timely_t_high_us: positive("timely_t_high_us", timely_t_high_us, d.timely_t_high_us)?,
            timely_alpha: unit("timely_alpha", timely_alpha, d.timely_alpha, true)?,
            timely_beta: unit("timely_beta", timely_beta, d.timely_beta, true)?,
            timely_delta_kbps: positive("timely_delta_kbps", timely_delta_kbps, d.timely_delta_kbps)?,
            cubic_c: {
                let c = cubic_c.unwrap_or(d.cubic_c);
                if !(c > 0.0 && c.is_finite()) {
                    return err(format!("cubic_c = {c}: must be above 0"));
                }
                c
            },
            cubic_beta: unit("cubic_beta", cubic_beta, d.cubic_beta, false)?,
        };
        if cc.min_rate_kbps > cc.max_rate_kbps {
            return err(format!("cc_min_rate_kbps = {} is above cc_max_rate_kbps = {}", cc.min_rate_kbps, cc.max_rate_kbps));
        }
        if cc.timely_t_low_us >= cc.timely_t_high_us {
            return err(format!("timely_t_low_us = {} must be below timely_t_high_us = {}", cc.timely_t_low_us, cc.timely_t_high_us));
        }
        let rtts = cc_interval_rtts.unwrap_or(2);
        if !(1..=64).contains(&rtts) {
            return err(format!("cc_interval_rtts = {rtts}: must be 1 to 64"));
        }
        let cc_interval = (rtts, cc_interval_min_us.unwrap_or(100));
        Ok(Config {
            interface,
            ip,
            prefix,
            gateway,
            fp_cores,
            fp_cpus,
            app_socket: app_socket.unwrap_or_else(|| tas_proto::attach::DEFAULT_APP_SOCKET.into()),
            control_socket: control_socket.unwrap_or_else(|| "/run/tas/control.sock".into()),
            xdp_mode: xdp_mode.unwrap_or_default(),
            bind_mode: bind_mode.unwrap_or_default(),
            rx_buffer,
            tx_buffer,
            conns_per_app,
            flows_per_core,
            queue_entries,
            ephemeral,
            idle_spin_us: idle_spin_us.unwrap_or(50),
            fp_active,
            fp_scale_up_pct: scale.up_pct,
            fp_scale_down_pct: scale.down_pct,
            fp_scale_up_ms: scale.up_ms,
            fp_scale_down_ms: scale.down_ms,
            time_wait_ms: time_wait_ms.unwrap_or(60_000),
            arp_reply,
            log_level: match log_level {
                Some(l) => {
                    tracing_subscriber::EnvFilter::try_new(&l).map_err(|e| {
                        ConfigError(format!("log_level = {l:?} is not a valid filter ({e}): use error, warn, info, debug or trace, or e.g. \"info,tas_slowpath=debug\""))
                    })?;
                    l
                }
                None => "info".into(),
            },
            socket_group,
            keepalive,
            control_group,
            control_tcp,
            metrics,
            cc,
            cc_interval,
        })
    }
}

/// One configuration key: its name, whether it can change while tasd runs (SIGHUP or the
/// control API's `SetConfig`), and what it means. The order is the file's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeyInfo {
    /// The key, as the TOML file and `tasctl config` spell it.
    pub key: &'static str,
    /// True if a change takes effect without a restart.
    pub live: bool,
    /// One line of documentation.
    pub description: &'static str,
}

/// Every configuration key. `deploy/tasd.toml` documents each of them (a test checks).
pub const KEYS: &[KeyInfo] = &[
    KeyInfo { key: "interface", live: false, description: "network interface whose TCP traffic for `ip` tasd serves (XDP attaches here)" },
    KeyInfo { key: "ip", live: false, description: "service address with prefix length, e.g. 10.0.0.1/24" },
    KeyInfo { key: "gateway", live: false, description: "next hop for destinations outside the prefix (unset: none)" },
    KeyInfo { key: "fp_cores", live: false, description: "fast-path cores, one AF_XDP socket on rx queue 0..N each (1-64)" },
    KeyInfo { key: "fp_cpus", live: false, description: "CPUs to pin the fast-path cores to, in order (unset: the last CPUs)" },
    KeyInfo { key: "app_socket", live: false, description: "Unix socket applications attach to" },
    KeyInfo { key: "control_socket", live: false, description: "Unix socket of the gRPC control API (tasctl)" },
    KeyInfo { key: "xdp_mode", live: false, description: "XDP attach mode: auto (native, else generic), native, generic" },
    KeyInfo { key: "bind_mode", live: false, description: "AF_XDP bind mode: auto (zero-copy, else copy), zero-copy, copy" },
    KeyInfo { key: "rx_buffer", live: false, description: "receive ring per connection, bytes (power of two, 4096 to 2^30)" },
    KeyInfo { key: "tx_buffer", live: false, description: "transmit ring per connection, bytes (power of two, 4096 to 2^30)" },
    KeyInfo { key: "conns_per_app", live: false, description: "connection slots per application context" },
    KeyInfo { key: "flows_per_core", live: false, description: "flow slots per fast-path core" },
    KeyInfo { key: "queue_entries", live: false, description: "descriptors per shared-memory queue (power of two, 16 to 65536)" },
    KeyInfo { key: "ephemeral_low", live: false, description: "first local port for outgoing connections" },
    KeyInfo { key: "ephemeral_high", live: false, description: "last local port for outgoing connections" },
    KeyInfo { key: "idle_spin_us", live: false, description: "microseconds a fast-path core busy-polls without work before it sleeps" },
    KeyInfo { key: "fp_active", live: true, description: "active fast-path threads: 0 (default) lets the scaling controller choose 1..fp_cores from the load; k fixes k" },
    KeyInfo { key: "fp_scale_up_pct", live: true, description: "add a fast-path thread when the busy share per active thread stays above this, percent (default 70)" },
    KeyInfo { key: "fp_scale_down_pct", live: true, description: "remove one when one thread fewer would stay below this, percent (default 30; below fp_scale_up_pct)" },
    KeyInfo { key: "fp_scale_up_ms", live: true, description: "milliseconds the load must stay high before a thread is added (default 50)" },
    KeyInfo { key: "fp_scale_down_ms", live: true, description: "milliseconds the load must stay low before a thread is removed (default 500)" },
    KeyInfo { key: "time_wait_ms", live: true, description: "TIME-WAIT duration in milliseconds (2 MSL); applies to connections entering TIME-WAIT afterwards" },
    KeyInfo { key: "arp_reply", live: true, description: "answer ARP for the service address: auto (only if the kernel does not own it), always, never" },
    KeyInfo { key: "log_level", live: true, description: "log filter: error, warn, info, debug, trace, or tracing directives such as info,tas_slowpath=debug" },
    KeyInfo { key: "socket_group", live: false, description: "group allowed to attach applications (app socket mode 0660)" },
    KeyInfo { key: "control_group", live: false, description: "group allowed to use the control socket, i.e. tasctl (mode 0660)" },
    KeyInfo { key: "control_tcp", live: false, description: "also serve the control API on this TCP address, e.g. 127.0.0.1:50051 (unset: Unix socket only; it has no authentication)" },
    KeyInfo { key: "metrics", live: false, description: "serve Prometheus metrics at http://ADDR/metrics, e.g. 127.0.0.1:9464 (unset: off)" },
    KeyInfo { key: "keepalive_idle_secs", live: false, description: "idle seconds before TCP keepalive probes start (0: keepalive off, the default)" },
    KeyInfo { key: "keepalive_interval_secs", live: false, description: "seconds between unanswered keepalive probes (default 75)" },
    KeyInfo { key: "keepalive_probes", live: false, description: "unanswered keepalive probes before the connection is reset (default 9)" },
    KeyInfo { key: "cc_algorithm", live: false, description: "congestion control of new connections: dctcp-window, dctcp-rate, timely, cubic, fixed, unlimited (tasctl cc changes it at run time)" },
    KeyInfo { key: "ecn", live: false, description: "negotiate ECN (RFC 3168) on new connections: ECT on data, CE echoed with ECE" },
    KeyInfo { key: "cc_interval_rtts", live: false, description: "congestion control runs once per this many smoothed RTTs of a flow (1-64)" },
    KeyInfo { key: "cc_interval_min_us", live: false, description: "...but at most once per this many microseconds" },
    KeyInfo { key: "cc_initial_window", live: false, description: "initial congestion window in segments (RFC 6928: 10)" },
    KeyInfo { key: "dctcp_g", live: false, description: "DCTCP EWMA gain g for alpha (RFC 8257: 1/16), 0 < g <= 1" },
    KeyInfo { key: "cc_rate_step_kbps", live: false, description: "additive increase of dctcp-rate per cc_rate_step_us, kbit/s" },
    KeyInfo { key: "cc_rate_step_us", live: false, description: "time base of dctcp-rate and of TIMELY's additive increase, us (50-100000)" },
    KeyInfo { key: "cc_min_rate_kbps", live: false, description: "lowest pacing rate any algorithm sets, kbit/s" },
    KeyInfo { key: "cc_max_rate_kbps", live: false, description: "highest pacing rate any algorithm sets, kbit/s (the line rate is a good choice)" },
    KeyInfo { key: "cc_fixed_rate_kbps", live: false, description: "pacing rate of connections with the fixed algorithm, kbit/s" },
    KeyInfo { key: "timely_t_low_us", live: false, description: "TIMELY T_low: below this RTT (us) the rate always grows" },
    KeyInfo { key: "timely_t_high_us", live: false, description: "TIMELY T_high: above this RTT (us) the rate always shrinks" },
    KeyInfo { key: "timely_alpha", live: false, description: "TIMELY EWMA weight of a new RTT difference, 0 < alpha <= 1" },
    KeyInfo { key: "timely_beta", live: false, description: "TIMELY multiplicative decrease factor, 0 < beta <= 1" },
    KeyInfo { key: "timely_delta_kbps", live: false, description: "TIMELY additive increase step delta, kbit/s" },
    KeyInfo { key: "cubic_c", live: false, description: "CUBIC constant C (RFC 9438: 0.4), > 0" },
    KeyInfo { key: "cubic_beta", live: false, description: "CUBIC multiplicative decrease factor (RFC 9438: 0.7), 0 < beta < 1" },
];

fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

impl Config {
    /// The configuration as a file would spell it (what `validate` turns into `self`).
    pub fn to_file(&self) -> FileConfig {
        let Config {
            interface,
            ip,
            prefix,
            gateway,
            fp_cores,
            fp_cpus,
            app_socket,
            control_socket,
            xdp_mode,
            bind_mode,
            rx_buffer,
            tx_buffer,
            conns_per_app,
            flows_per_core,
            queue_entries,
            ephemeral,
            idle_spin_us,
            fp_active,
            fp_scale_up_pct,
            fp_scale_down_pct,
            fp_scale_up_ms,
            fp_scale_down_ms,
            time_wait_ms,
            arp_reply,
            log_level,
            socket_group,
            control_group,
            control_tcp,
            metrics,
            keepalive,
            cc,
            cc_interval,
        } = self.clone();
        FileConfig {
            interface: Some(interface),
            ip: Some(format!("{ip}/{prefix}")),
            gateway,
            fp_cores: Some(fp_cores),
            fp_cpus,
            app_socket: Some(app_socket),
            control_socket: Some(control_socket),
            xdp_mode: Some(xdp_mode),
            bind_mode: Some(bind_mode),
            rx_buffer: Some(rx_buffer),
            tx_buffer: Some(tx_buffer),
            conns_per_app: Some(conns_per_app),
            flows_per_core: Some(flows_per_core),
            queue_entries: Some(queue_entries),
            ephemeral_low: Some(ephemeral.0),
            ephemeral_high: Some(ephemeral.1),
            idle_spin_us: Some(idle_spin_us),
            fp_active: Some(fp_active),
            fp_scale_up_pct: Some(fp_scale_up_pct),
            fp_scale_down_pct: Some(fp_scale_down_pct),
            fp_scale_up_ms: Some(fp_scale_up_ms),
            fp_scale_down_ms: Some(fp_scale_down_ms),
            time_wait_ms: Some(time_wait_ms),
            arp_reply: Some(match arp_reply {
                None => "auto".into(),
                Some(true) => "always".into(),
                Some(false) => "never".into(),
            }),
            log_level: Some(log_level),
            socket_group,
            control_group,
            control_tcp,
            metrics,
            keepalive_idle_secs: Some(keepalive.map_or(0, |k| k.0)),
            keepalive_interval_secs: keepalive.map(|k| k.1),
            keepalive_probes: keepalive.map(|k| k.2),
            cc_algorithm: Some(cc.algorithm.name().to_string()),
            ecn: Some(cc.ecn),
            cc_interval_rtts: Some(cc_interval.0),
            cc_interval_min_us: Some(cc_interval.1),
            cc_initial_window: Some(cc.initial_window),
            dctcp_g: Some(cc.dctcp_g),
            cc_rate_step_kbps: Some(cc.rate_step_kbps),
            cc_rate_step_us: Some(cc.rate_step_us),
            cc_min_rate_kbps: Some(cc.min_rate_kbps),
            cc_max_rate_kbps: Some(cc.max_rate_kbps),
            cc_fixed_rate_kbps: Some(cc.fixed_rate_kbps),
            timely_t_low_us: Some(cc.timely_t_low_us),
            timely_t_high_us: Some(cc.timely_t_high_us),
            timely_alpha: Some(cc.timely_alpha),
            timely_beta: Some(cc.timely_beta),
            timely_delta_kbps: Some(cc.timely_delta_kbps),
            cubic_c: Some(cc.cubic_c),
            cubic_beta: Some(cc.cubic_beta),
        }
    }

    /// Every key with its value in TOML spelling ("" if unset), in [`KEYS`] order.
    pub fn entries(&self) -> Vec<(KeyInfo, String)> {
        let f = self.to_file();
        let opt = |v: Option<String>| v.unwrap_or_default();
        let path = |p: &Option<PathBuf>| opt(p.as_ref().map(|p| toml_str(&p.to_string_lossy())));
        let mode_x = |m: XdpModeSetting| toml_str(&format!("{m:?}").to_lowercase());
        let mode_b = |m: BindModeSetting| {
            toml_str(match m {
                BindModeSetting::Auto => "auto",
                BindModeSetting::ZeroCopy => "zero-copy",
                BindModeSetting::Copy => "copy",
            })
        };
        KEYS.iter()
            .map(|k| {
                let v = match k.key {
                    "interface" => opt(f.interface.as_deref().map(toml_str)),
                    "ip" => opt(f.ip.as_deref().map(toml_str)),
                    "gateway" => opt(f.gateway.map(|g| toml_str(&g.to_string()))),
                    "fp_cores" => opt(f.fp_cores.map(|v| v.to_string())),
                    "fp_cpus" => opt(f.fp_cpus.as_ref().map(|v| format!("{v:?}"))),
                    "app_socket" => path(&f.app_socket),
                    "control_socket" => path(&f.control_socket),
                    "xdp_mode" => opt(f.xdp_mode.map(mode_x)),
                    "bind_mode" => opt(f.bind_mode.map(mode_b)),
                    "rx_buffer" => opt(f.rx_buffer.map(|v| v.to_string())),
                    "tx_buffer" => opt(f.tx_buffer.map(|v| v.to_string())),
                    "conns_per_app" => opt(f.conns_per_app.map(|v| v.to_string())),
                    "flows_per_core" => opt(f.flows_per_core.map(|v| v.to_string())),
                    "queue_entries" => opt(f.queue_entries.map(|v| v.to_string())),
                    "ephemeral_low" => opt(f.ephemeral_low.map(|v| v.to_string())),
                    "ephemeral_high" => opt(f.ephemeral_high.map(|v| v.to_string())),
                    "idle_spin_us" => opt(f.idle_spin_us.map(|v| v.to_string())),
                    "fp_active" => opt(f.fp_active.map(|v| v.to_string())),
                    "fp_scale_up_pct" => opt(f.fp_scale_up_pct.map(|v| v.to_string())),
                    "fp_scale_down_pct" => opt(f.fp_scale_down_pct.map(|v| v.to_string())),
                    "fp_scale_up_ms" => opt(f.fp_scale_up_ms.map(|v| v.to_string())),
                    "fp_scale_down_ms" => opt(f.fp_scale_down_ms.map(|v| v.to_string())),
                    "time_wait_ms" => opt(f.time_wait_ms.map(|v| v.to_string())),
                    "arp_reply" => opt(f.arp_reply.as_deref().map(toml_str)),
                    "log_level" => opt(f.log_level.as_deref().map(toml_str)),
                    "socket_group" => opt(f.socket_group.as_deref().map(toml_str)),
                    "control_group" => opt(f.control_group.as_deref().map(toml_str)),
                    "control_tcp" => opt(f.control_tcp.map(|a| toml_str(&a.to_string()))),
                    "metrics" => opt(f.metrics.map(|a| toml_str(&a.to_string()))),
                    "keepalive_idle_secs" => opt(f.keepalive_idle_secs.map(|v| v.to_string())),
                    "keepalive_interval_secs" => opt(f.keepalive_interval_secs.map(|v| v.to_string())),
                    "keepalive_probes" => opt(f.keepalive_probes.map(|v| v.to_string())),
                    "cc_algorithm" => opt(f.cc_algorithm.as_deref().map(toml_str)),
                    "ecn" => opt(f.ecn.map(|v| v.to_string())),
                    "cc_interval_rtts" => opt(f.cc_interval_rtts.map(|v| v.to_string())),
                    "cc_interval_min_us" => opt(f.cc_interval_min_us.map(|v| v.to_string())),
                    "cc_initial_window" => opt(f.cc_initial_window.map(|v| v.to_string())),
                    "dctcp_g" => opt(f.dctcp_g.map(|v| format!("{v:?}"))),
                    "cc_rate_step_kbps" => opt(f.cc_rate_step_kbps.map(|v| v.to_string())),
                    "cc_rate_step_us" => opt(f.cc_rate_step_us.map(|v| v.to_string())),
                    "cc_min_rate_kbps" => opt(f.cc_min_rate_kbps.map(|v| v.to_string())),
                    "cc_max_rate_kbps" => opt(f.cc_max_rate_kbps.map(|v| v.to_string())),
                    "cc_fixed_rate_kbps" => opt(f.cc_fixed_rate_kbps.map(|v| v.to_string())),
                    "timely_t_low_us" => opt(f.timely_t_low_us.map(|v| v.to_string())),
                    "timely_t_high_us" => opt(f.timely_t_high_us.map(|v| v.to_string())),
                    "timely_alpha" => opt(f.timely_alpha.map(|v| format!("{v:?}"))),
                    "timely_beta" => opt(f.timely_beta.map(|v| format!("{v:?}"))),
                    "timely_delta_kbps" => opt(f.timely_delta_kbps.map(|v| v.to_string())),
                    "cubic_c" => opt(f.cubic_c.map(|v| format!("{v:?}"))),
                    "cubic_beta" => opt(f.cubic_beta.map(|v| format!("{v:?}"))),
                    other => unreachable!("key {other} has no rendering"),
                };
                (*k, v)
            })
            .collect()
    }

    /// The scaling controller's marks.
    pub fn scale_params(&self) -> tas_fastpath::shard::ScaleParams {
        tas_fastpath::shard::ScaleParams {
            up_pct: self.fp_scale_up_pct,
            down_pct: self.fp_scale_down_pct,
            up_ms: self.fp_scale_up_ms,
            down_ms: self.fp_scale_down_ms,
        }
    }

    /// The keys whose values differ between `self` and `other`.
    pub fn changed_keys(&self, other: &Config) -> Vec<KeyInfo> {
        self.entries().into_iter().zip(other.entries()).filter(|(a, b)| a.1 != b.1).map(|(a, _)| a.0).collect()
    }

    /// `self` with `key` set to `value` (TOML spelling; a bare word is taken as a string,
    /// so `log_level debug` works). Does not check whether the key can change live.
    pub fn with_key(&self, key: &str, value: &str) -> Result<Config, ConfigError> {
        let Some(info) = KEYS.iter().find(|k| k.key == key) else {
            let known: Vec<&str> = KEYS.iter().map(|k| k.key).collect();
            return err(format!("unknown configuration key {key:?}; the keys are: {}", known.join(", ")));
        };
        let parse = |v: &str| toml::from_str::<FileConfig>(&format!("{} = {v}", info.key));
        let overlay = match parse(value) {
            Ok(o) => o,
            Err(first) => parse(&toml_str(value)).map_err(|_| {
                ConfigError(format!("{key} = {value}: {}", first.to_string().replace('\n', " ").trim()))
            })?,
        };
        self.to_file().merge(overlay).validate()
    }
}

/// True if `a` is inside `net/prefix`.
pub fn same_subnet(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - prefix as u32) };
    u32::from(a) & mask == u32::from(net) & mask
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> FileConfig {
        FileConfig { interface: Some("tas0".into()), ip: Some("10.0.0.1/24".into()), ..Default::default() }
    }

    #[test]
    fn defaults_and_merge() {
        let c = base().validate().unwrap();
        assert_eq!((c.ip, c.prefix, c.fp_cores), ("10.0.0.1".parse().unwrap(), 24, 1));
        assert_eq!(c.ephemeral, (61000, 65535));
        let file: FileConfig = toml::from_str("interface = \"eth9\"\nfp_cores = 2\nip = \"10.1.0.5/16\"").unwrap();
        let merged = file.merge(FileConfig { fp_cores: Some(1), ..Default::default() }).validate().unwrap();
        assert_eq!((merged.interface.as_str(), merged.fp_cores, merged.prefix), ("eth9", 1, 16));
    }

    #[test]
    fn errors_name_the_fix() {
        let e = |f: FileConfig| f.validate().unwrap_err().0;
        assert!(e(FileConfig::default()).contains("--interface"));
        assert!(e(FileConfig { ip: Some("10.0.0.1".into()), ..base() }).contains("ADDRESS/PREFIX"));
        assert!(e(FileConfig { ip: Some("10.0.0.300/24".into()), ..base() }).contains("not an IPv4 address"));
        assert!(e(FileConfig { ip: Some("10.0.0.1/40".into()), ..base() }).contains("1 to 32"));
        assert!(e(FileConfig { fp_cores: Some(0), ..base() }).contains("1 to 64"));
        assert!(e(FileConfig { rx_buffer: Some(5000), ..base() }).contains("power of two"));
        assert!(e(FileConfig { gateway: Some("192.168.1.1".parse().unwrap()), ..base() }).contains("local subnet"));
        assert!(toml::from_str::<FileConfig>("bogus = 1").is_err(), "unknown keys are rejected");
    }

    /// `deploy/tasd.toml`, the file install.sh puts in /etc/tas, parses with the real
    /// loader, documents every key, and (with the two required keys filled in) gives the
    /// defaults, apart from the groups install.sh creates.
    #[test]
    fn the_shipped_config_file_loads_and_documents_every_key() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/tasd.toml");
        let file = FileConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
        let text = std::fs::read_to_string(&path).unwrap();
        for k in KEYS {
            let set = text.contains(&format!("\n{} = ", k.key));
            let commented = text.contains(&format!("\n#{} = ", k.key));
            assert!(set || commented, "deploy/tasd.toml does not document `{}`", k.key);
            let line = text.lines().position(|l| l.starts_with(k.key) || l.starts_with(&format!("#{}", k.key))).unwrap();
            assert!(text.lines().nth(line - 1).unwrap().starts_with('#'), "`{}` has no comment above it", k.key);
        }
        assert!(file.interface.is_none() && file.ip.is_none(), "the operator must choose interface and ip");
        let required = FileConfig { interface: Some("eth1".into()), ip: Some("192.0.2.10/24".into()), ..FileConfig::default() };
        let shipped = file.merge(required.clone()).validate().unwrap();
        let defaults = FileConfig {
            socket_group: Some("tas".into()),
            control_group: Some("tas-admin".into()),
            ..required
        }
        .validate()
        .unwrap();
        assert_eq!(shipped.entries(), defaults.entries(), "the file's values are the defaults");
    }

    /// KEYS names every field of FileConfig (this destructuring stops compiling when a
    /// field is added: add it to KEYS, to `entries`, and to deploy/tasd.toml).
    #[test]
    fn keys_cover_every_field() {
        let FileConfig {
            interface: _,
            ip: _,
            gateway: _,
            fp_cores: _,
            fp_cpus: _,
            app_socket: _,
            control_socket: _,
            xdp_mode: _,
            bind_mode: _,
            rx_buffer: _,
            tx_buffer: _,
            conns_per_app: _,
            flows_per_core: _,
            queue_entries: _,
            ephemeral_low: _,
            ephemeral_high: _,
            idle_spin_us: _,
            fp_active: _,
            fp_scale_up_pct: _,
            fp_scale_down_pct: _,
            fp_scale_up_ms: _,
            fp_scale_down_ms: _,
            time_wait_ms: _,
            arp_reply: _,
            log_level: _,
            socket_group: _,
            control_group: _,
            control_tcp: _,
            metrics: _,
            keepalive_idle_secs: _,
            keepalive_interval_secs: _,
            keepalive_probes: _,
            cc_algorithm: _,
            ecn: _,
            cc_interval_rtts: _,
            cc_interval_min_us: _,
            cc_initial_window: _,
            dctcp_g: _,
            cc_rate_step_kbps: _,
            cc_rate_step_us: _,
            cc_min_rate_kbps: _,
            cc_max_rate_kbps: _,
            cc_fixed_rate_kbps: _,
            timely_t_low_us: _,
            timely_t_high_us: _,
            timely_alpha: _,
            timely_beta: _,
            timely_delta_kbps: _,
            cubic_c: _,
            cubic_beta: _,
        } = FileConfig::default();
        assert_eq!(KEYS.len(), 50);
        let c = base().validate().unwrap();
        assert_eq!(c.entries().len(), KEYS.len());
        // Every key's rendering parses back to the same configuration.
        for (k, v) in c.entries() {
            if v.is_empty() {
                continue;
            }
            let again = c.with_key(k.key, &v).unwrap_or_else(|e| panic!("{} = {v}: {e}", k.key));
            assert!(c.changed_keys(&again).is_empty(), "{} = {v} did not round-trip", k.key);
        }
    }

    #[test]
    fn congestion_control_keys() {
        let c = base().validate().unwrap();
        assert_eq!(c.cc, crate::cc::CcParams::default(), "defaults");
        assert_eq!(c.cc_interval, (2, 100));
        let t = c.with_key("cc_algorithm", "timely").unwrap();
        assert_eq!(t.cc.algorithm, crate::cc::Algorithm::Timely);
        assert!(c.with_key("cc_algorithm", "reno").unwrap_err().0.contains("dctcp-window"));
        assert!(c.with_key("dctcp_g", "0").unwrap_err().0.contains("above 0"));
        assert!(c.with_key("cubic_beta", "1.0").is_err());
        assert!(c.with_key("timely_t_low_us", "600").unwrap_err().0.contains("below timely_t_high_us"));
        assert!(c.with_key("cc_min_rate_kbps", "50000000").is_err());
        assert!(c.with_key("cc_interval_rtts", "0").is_err());
        assert!(!c.with_key("ecn", "false").unwrap().cc.ecn);
        assert_eq!(c.with_key("dctcp_g", "0.125").unwrap().cc.dctcp_g, 0.125);
        assert_eq!(c.with_key("cc_rate_step_us", "1000").unwrap().cc.rate_step_us, 1000);
        assert!(c.with_key("cc_rate_step_us", "10").unwrap_err().0.contains("50 to 100000"));
    }

    #[test]
    fn setting_keys() {
        let c = base().validate().unwrap();
        let d = c.with_key("log_level", "debug").unwrap();
        assert_eq!(d.log_level, "debug");
        assert_eq!(base().set_keys(), ["interface", "ip"]);
        assert_eq!(c.changed_keys(&d).iter().map(|k| (k.key, k.live)).collect::<Vec<_>>(), [("log_level", true)]);
        let d = c.with_key("arp_reply", "\"always\"").unwrap();
        assert_eq!(d.arp_reply, Some(true));
        let d = c.with_key("fp_cores", "2").unwrap();
        assert_eq!(c.changed_keys(&d).iter().map(|k| (k.key, k.live)).collect::<Vec<_>>(), [("fp_cores", false)]);
        assert!(c.with_key("fp_cores", "0").unwrap_err().0.contains("1 to 64"));
        assert!(c.with_key("nope", "1").unwrap_err().0.contains("time_wait_ms"));
        assert!(c.with_key("time_wait_ms", "soon").is_err());
        assert!(c.with_key("log_level", "[").is_err());
        assert!(c.with_key("metrics", "127.0.0.1:9464").unwrap().metrics.is_some());
    }
}
