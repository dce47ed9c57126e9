//! `tasctl`: administer a running `tasd` through its gRPC control API.
//!
//! ```text
//! tasctl [--socket PATH | --tcp ADDR] [--json] COMMAND
//!   status                      service, interface, cores, counts
//!   flows [filters] [--sort K]  connections, like `ss -tin`
//!   flow ID                     one connection in detail
//!   close ID [--reset]          FIN (or RST) a connection
//!   apps [detach ID]            applications; disconnect one
//!   listeners | cores           listening ports; fast-path cores (shards)
//!   scaling                     fast-path threads: active count, marks, last changes
//!   stats [--watch SECS]        every counter (with rates)
//!   cc get|set                  congestion control: algorithm, parameters, per-flow state
//!   config get|set              running configuration; live keys can change
//!   events                      connection events as they happen
//!   capture -w FILE             a pcap of the fast path's frames (tcpdump -r FILE)
//! ```
//!
//! The socket is `--socket`, else `$TAS_CONTROL_SOCKET`, else `/run/tas/control.sock`.
#![deny(unsafe_code)]

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use serde_json::{json, Value};
use tas_proto::control::control_client::ControlClient;
use tas_proto::control::*;
use tas_tools::pcap::PcapWriter;
use tas_tools::view;
use tonic::transport::{Channel, Endpoint};

/// The default control socket of tasd.
const DEFAULT_SOCKET: &str = "/run/tas/control.sock";

const AFTER_HELP: &str = "\
The control socket is --socket, else $TAS_CONTROL_SOCKET, else /run/tas/control.sock.
Exit status: 0 done; 1 tasd unreachable or it refused the request; 2 bad arguments.
Examples:
  tasctl flows --port 7 --sort rx
  tasctl flow 723401728437452807
  tasctl stats --watch 1
  tasctl capture --port 7 --duration 5 -w /tmp/tas.pcap && tcpdump -nr /tmp/tas.pcap";

/// Administer a running tasd through its control API.
#[derive(Debug, Parser)]
#[command(name = "tasctl", version, after_help = AFTER_HELP)]
struct Cli {
    /// tasd's control socket [default: $TAS_CONTROL_SOCKET, else /run/tas/control.sock].
    #[arg(long, global = true, env = "TAS_CONTROL_SOCKET", value_name = "PATH")]
    socket: Option<PathBuf>,
    /// Talk to the control API on TCP instead (tasd --control-tcp ADDR).
    #[arg(long, global = true, value_name = "ADDR")]
    tcp: Option<SocketAddr>,
    /// Print JSON instead of tables.
    #[arg(long, global = true)]
    json: bool,
    /// Seconds to wait for tasd's answer.
    #[arg(long, global = true, value_name = "SECS", default_value_t = 10.0, value_parser = positive_secs)]
    timeout: f64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Version, uptime, interface, address, cores, counts.
    Status,
    /// Connections, like `ss -tin`.
    Flows {
        /// Sort by: id, state, local, remote, app, core, rx, tx, inflight, unsent, snd_wnd, rcv_wnd, srtt, retx.
        #[arg(long, value_name = "KEY", value_parser = sort_key)]
        sort: Option<String>,
        /// Reverse the order.
        #[arg(long)]
        reverse: bool,
        /// Only flows with this local or remote port.
        #[arg(long, value_name = "PORT", value_parser = port)]
        port: Option<u16>,
        /// Only flows with this local port.
        #[arg(long, value_name = "PORT", value_parser = port)]
        local_port: Option<u16>,
        /// Only flows with this peer: IP or IP:PORT.
        #[arg(long, value_name = "IP[:PORT]", value_parser = remote)]
        remote: Option<(Ipv4Addr, u16)>,
        /// Only flows in this state (ESTABLISHED, SYN-SENT, SYN-RECEIVED, CLOSE-WAIT, FIN-WAIT-2, CLOSING, TIME-WAIT).
        #[arg(long, value_name = "STATE", value_parser = state)]
        state: Option<String>,
        /// Only flows of this application (see `tasctl apps`).
        #[arg(long, value_name = "ID")]
        app: Option<u32>,
    },
    /// One flow in full detail.
    Flow {
        /// The flow's ID (the ID column of `tasctl flows`).
        #[arg(value_parser = flow_id)]
        id: u64,
    },
    /// Close a flow: FIN after the data already queued (the application can send no more),
    /// or with --reset an RST now.
    Close {
        /// The flow's ID.
        #[arg(value_parser = flow_id)]
        id: u64,
        /// Reset instead of closing in order.
        #[arg(long)]
        reset: bool,
    },
    /// Attached applications.
    Apps {
        #[command(subcommand)]
        action: Option<AppsCmd>,
    },
    /// Listening ports.
    Listeners,
    /// Fast-path cores (shards) and their counters; the threads serving them.
    Cores,
    /// The fast path's threads: how many are active, the scaling marks, the last changes.
    Scaling,
    /// Every counter: drops and exceptions by reason, per core.
    Stats {
        /// Refresh every SECS seconds, with rates per second.
        #[arg(long, value_name = "SECS", value_parser = positive_secs)]
        watch: Option<f64>,
        /// With --watch: stop after this many refreshes.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
        /// Only counters that are not zero.
        #[arg(long)]
        nonzero: bool,
    },
    /// Congestion control: get the algorithm and parameters or one flow's state; set it.
    Cc {
        #[command(subcommand)]
        action: CcCmd,
    },
    /// The running configuration.
    Config {
        #[command(subcommand)]
        action: ConfigCmd,
    },
    /// Connection events as they happen (opened, closed, reset, ...), until interrupted.
    Events {
        /// Stop after this many events.
        #[arg(long, value_name = "N")]
        count: Option<u64>,
    },
    /// Write a pcap of the frames the fast path receives and sends (read it with tcpdump -r).
    Capture {
        /// The pcap file to write ("-": standard output).
        #[arg(short = 'w', long = "write", value_name = "FILE")]
        file: PathBuf,
        /// Only frames with this source or destination port.
        #[arg(long, value_parser = port)]
        port: Option<u16>,
        /// Only frames with this source or destination address.
        #[arg(long)]
        host: Option<Ipv4Addr>,
        /// Seconds to capture (at most 600).
        #[arg(long, value_name = "SECS", default_value_t = 10.0, value_parser = capture_secs)]
        duration: f64,
        /// Stop after this many frames.
        #[arg(long, value_name = "N")]
        count: Option<u32>,
    },
}

#[derive(Debug, Subcommand)]
enum AppsCmd {
    /// Disconnect an application as if it had exited (its connections are reset).
    Detach {
        /// The application's ID (see `tasctl apps`).
        id: u32,
    },
}

#[derive(Debug, Subcommand)]
enum CcCmd {
    /// The algorithm and its parameters, globally or for one flow.
    Get {
        /// One flow's congestion state.
        #[arg(long, value_parser = flow_id)]
        flow: Option<u64>,
    },
    /// Choose the algorithm (dctcp-window, dctcp-rate, timely, cubic, fixed, unlimited) for
    /// every connection and new ones, or with --param flow=ID for one; --param
    /// rate_kbps=N sets the fixed rate.
    Set {
        /// Algorithm.
        algorithm: String,
        /// Parameters as KEY=VALUE.
        #[arg(long = "param", value_name = "KEY=VALUE", value_parser = key_value)]
        params: Vec<(String, String)>,
    },
}

#[derive(Debug, Subcommand)]
enum ConfigCmd {
    /// Every key (or one) with its value and whether it can change while tasd runs.
    Get {
        /// Only this key.
        key: Option<String>,
    },
    /// Change a key that can change while tasd runs (log_level, time_wait_ms, arp_reply).
    Set {
        /// The key.
        key: String,
        /// The value, e.g. debug, 30000, always.
        value: String,
    },
}

// ---- argument parsers: each error says what is expected -------------------------------------

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number of seconds")),
    }
}

fn capture_secs(s: &str) -> Result<f64, String> {
    let v = positive_secs(s)?;
    if v > 600.0 {
        return Err(format!("{v} s is too long: a capture lasts at most 600 s"));
    }
    Ok(v)
}

fn port(s: &str) -> Result<u16, String> {
    match s.parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(format!("{s:?} is not a port (1-65535)")),
    }
}

fn flow_id(s: &str) -> Result<u64, String> {
    let parsed = match s.strip_prefix("0x") {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse::<u64>().ok(),
    };
    parsed.ok_or_else(|| {
        format!("{s:?} is not a flow ID: use a number from the ID column of `tasctl flows`")
    })
}

fn remote(s: &str) -> Result<(Ipv4Addr, u16), String> {
    if let Ok(a) = s.parse::<SocketAddrV4>() {
        return Ok((*a.ip(), a.port()));
    }
    s.parse::<Ipv4Addr>().map(|ip| (ip, 0)).map_err(|_| {
        format!("{s:?} is not an IPv4 address or IP:PORT (e.g. 10.0.0.2 or 10.0.0.2:40000)")
    })
}

/// The states `tasctl flows --state` accepts (RFC 9293 names, as tasd reports them).
const STATES: &[&str] = &[
    "ESTABLISHED",
    "SYN-SENT",
    "SYN-RECEIVED",
    "CLOSE-WAIT",
    "FIN-WAIT-2",
    "CLOSING",
    "TIME-WAIT",
];

fn state(s: &str) -> Result<String, String> {
    let up = s.to_ascii_uppercase().replace('_', "-");
    if STATES.contains(&up.as_str()) {
        Ok(up)
    } else {
        Err(format!(
            "{s:?} is not a connection state: use one of {}",
            STATES.join(", ")
        ))
    }
}

fn sort_key(s: &str) -> Result<String, String> {
    if view::FLOW_SORT_KEYS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "cannot sort by {s:?}: use one of {}",
            view::FLOW_SORT_KEYS.join(", ")
        ))
    }
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

// ---- talking to tasd -------------------------------------------------------------------------

/// Where tasd's control API is.
#[derive(Debug, Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(SocketAddr),
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Unix(p) => write!(f, "{}", p.display()),
            Target::Tcp(a) => write!(f, "{a}"),
        }
    }
}

/// An error for the user, already worded.
#[derive(Debug)]
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure(e.to_string())
    }
}

/// Say why `target` cannot be reached, and what to do.
fn unreachable(target: &Target, e: &std::io::Error) -> Failure {
    use std::io::ErrorKind::*;
    match (target, e.kind()) {
        (Target::Unix(_), NotFound | ConnectionRefused) => {
            Failure(format!("cannot reach tasd at {target}: is it running? (systemctl status tasd)"))
        }
        (Target::Unix(_), PermissionDenied) => Failure(format!(
            "permission denied on {target}: run tasctl as root, or as a member of the control socket's group \
             (control_group in /etc/tas/tasd.toml)"
        )),
        (Target::Tcp(_), ConnectionRefused | TimedOut) => Failure(format!(
            "cannot reach tasd at {target}: is it running with --control-tcp {target}? (systemctl status tasd)"
        )),
        _ => Failure(format!("cannot reach tasd at {target}: {e}")),
    }
}

async fn connect(target: &Target, timeout: Duration) -> Result<ControlClient<Channel>, Failure> {
    let channel = match target {
        Target::Unix(path) => {
            // Probe first: the transport's error would not say which of "not running" or
            // "not allowed" it is.
            if let Err(e) = std::os::unix::net::UnixStream::connect(path) {
                return Err(unreachable(target, &e));
            }
            let path = path.clone();
            Endpoint::try_from("http://tasd.invalid")?
                .connect_timeout(timeout)
                .connect_with_connector(tower::service_fn(move |_: tonic::transport::Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                }))
                .await
                .map_err(|e| Failure(format!("cannot reach tasd at {target}: {e}")))?
        }
        Target::Tcp(addr) => {
            if let Err(e) = tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr))
                .await
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))
                .and_then(|r| r)
            {
                return Err(unreachable(target, &e));
            }
            Endpoint::from_shared(format!("http://{addr}"))?
                .connect_timeout(timeout)
                .connect()
                .await
                .map_err(|e| Failure(format!("cannot reach tasd at {target}: {e}")))?
        }
    };
    Ok(ControlClient::new(channel))
}

/// tasd refused or failed a request: say so in its words.
fn refused(s: tonic::Status) -> Failure {
    use tonic::Code::*;
    let msg = s.message();
    Failure(match s.code() {
        Unimplemented => format!("tasd does not do this yet: {msg}"),
        NotFound | InvalidArgument | FailedPrecondition | AlreadyExists => msg.to_string(),
        Unavailable => format!("tasd is not available: {msg}"),
        DeadlineExceeded => format!("tasd did not answer in time: {msg}"),
        PermissionDenied => format!("permission denied: {msg}"),
        code => format!("tasd answered {code:?}: {msg}"),
    })
}

/// One request with the user's timeout.
async fn call<T>(
    timeout: Duration,
    f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
) -> Result<T, Failure> {
    match tokio::time::timeout(timeout, f).await {
        Ok(r) => r.map(|r| r.into_inner()).map_err(refused),
        Err(_) => Err(Failure(format!(
            "tasd did not answer within {} s (--timeout)",
            timeout.as_secs_f64()
        ))),
    }
}

fn print_json(v: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(v).expect("JSON values serialise")
    );
}

// ---- the commands ----------------------------------------------------------------------------

async fn run(cli: Cli) -> Result<(), Failure> {
    let target = match (cli.tcp, cli.socket) {
        (Some(a), _) => Target::Tcp(a),
        (None, Some(p)) => Target::Unix(p),
        (None, None) => Target::Unix(PathBuf::from(DEFAULT_SOCKET)),
    };
    let timeout = Duration::from_secs_f64(cli.timeout);
    let json = cli.json;
    let mut c = connect(&target, timeout).await?;
    match cli.cmd {
        Cmd::Status => {
            let s = call(timeout, c.get_status(StatusRequest {})).await?;
            if json {
                print_json(&view::status_json(&s));
            } else {
                print!("{}", view::status_text(&s));
            }
        }
        Cmd::Flows {
            sort,
            reverse,
            port,
            local_port,
            remote,
            state,
            app,
        } => {
            let filter = FlowFilter {
                local_port: local_port.unwrap_or(0) as u32,
                remote_port: remote.map_or(0, |r| r.1 as u32),
                remote_ip: remote.map(|r| r.0.to_string()).unwrap_or_default(),
                state: state.unwrap_or_default(),
                app_id: app.unwrap_or(0),
                port: port.unwrap_or(0) as u32,
            };
            let mut flows = call(timeout, c.list_flows(filter)).await?.flows;
            view::sort_flows(&mut flows, sort.as_deref().unwrap_or("id")).map_err(Failure)?;
            if reverse {
                flows.reverse();
            }
            if json {
                print_json(&Value::Array(flows.iter().map(view::flow_json).collect()));
            } else {
                print!("{}", view::flows_table(&flows));
            }
        }
        Cmd::Flow { id } => {
            let f = call(timeout, c.get_flow(FlowRequest { id })).await?;
            if json {
                print_json(&view::flow_json(&f));
            } else {
                print!("{}", view::flow_detail(&f));
            }
        }
        Cmd::Close { id, reset } => {
            let r = call(timeout, c.close_flow(CloseFlowRequest { id, reset })).await?;
            if json {
                print_json(&json!({"id": id, "reset": reset, "state_before": r.state}));
            } else if reset {
                println!("flow {id} reset (it was {})", r.state);
            } else {
                println!(
                    "flow {id} closing: FIN sent after the queued data (it was {})",
                    r.state
                );
            }
        }
        Cmd::Apps { action: None } => {
            let apps = call(timeout, c.list_apps(AppsRequest {})).await?.apps;
            if json {
                print_json(&Value::Array(apps.iter().map(view::app_json).collect()));
            } else {
                print!("{}", view::apps_table(&apps));
            }
        }
        Cmd::Apps {
            action: Some(AppsCmd::Detach { id }),
        } => {
            call(timeout, c.detach_app(DetachAppRequest { id })).await?;
            if json {
                print_json(&json!({"detached": id}));
            } else {
                println!(
                    "application {id} detached: its connections are reset and its socket closed"
                );
            }
        }
        Cmd::Listeners => {
            let ls = call(timeout, c.list_listeners(ListenersRequest {}))
                .await?
                .listeners;
            if json {
                print_json(&Value::Array(ls.iter().map(view::listener_json).collect()));
            } else {
                print!("{}", view::listeners_table(&ls));
            }
        }
        Cmd::Cores => {
            let cores = call(timeout, c.list_cores(CoresRequest {})).await?.cores;
            if json {
                print_json(&Value::Array(cores.iter().map(view::core_json).collect()));
            } else {
                print!("{}", view::cores_table(&cores));
            }
        }
        Cmd::Scaling => {
            let Some(sc) = call(timeout, c.list_cores(CoresRequest {})).await?.scaling else {
                return Err(Failure("this tasd reports no thread scaling (it predates it)".into()));
            };
            if json {
                print_json(&view::scaling_json(&sc));
            } else {
                print!("{}", view::scaling_text(&sc));
            }
        }
        Cmd::Stats {
            watch,
            count,
            nonzero,
        } => stats(&mut c, timeout, json, watch, count, nonzero).await?,
        Cmd::Cc {
            action: CcCmd::Get { flow: None },
        } => {
            let cc = call(timeout, c.get_congestion_control(CcRequest {})).await?;
            if json {
                print_json(&json!({"algorithm": cc.algorithm, "parameters": cc.parameters}));
            } else {
                println!("algorithm: {}", cc.algorithm);
                for (k, v) in &cc.parameters {
                    println!("{k}: {v}");
                }
            }
        }
        Cmd::Cc {
            action: CcCmd::Get { flow: Some(id) },
        } => {
            let f = call(timeout, c.get_flow_congestion(FlowRequest { id })).await?;
            if json {
                print_json(&json!({
                    "id": f.id, "algorithm": f.algorithm, "rate_bps": f.rate_bps, "cwnd_bytes": f.cwnd_bytes,
                    "alpha": f.alpha, "ecn_fraction": f.ecn_fraction, "rtt_us": f.rtt_us,
                    "retransmits": f.retransmits, "delivery_bps": f.delivery_bps, "slow_start": f.slow_start,
                }));
            } else {
                println!(
                    "flow {}: {} rate {} bit/s cwnd {} bytes alpha {:.3} ecn {:.3} rtt {} us retransmits {} delivered {} bit/s{}",
                    f.id,
                    f.algorithm,
                    f.rate_bps,
                    f.cwnd_bytes,
                    f.alpha,
                    f.ecn_fraction,
                    f.rtt_us,
                    f.retransmits,
                    f.delivery_bps,
                    if f.slow_start { " (slow start)" } else { "" }
                );
            }
        }
        Cmd::Cc {
            action: CcCmd::Set { algorithm, params },
        } => {
            let req = CcConfig {
                algorithm,
                parameters: params.into_iter().collect(),
            };
            let cc = call(timeout, c.set_congestion_control(req)).await?;
            if json {
                print_json(&json!({"algorithm": cc.algorithm, "parameters": cc.parameters}));
            } else {
                println!("congestion control: {}", cc.algorithm);
            }
        }
        Cmd::Config {
            action: ConfigCmd::Get { key },
        } => {
            let mut v = call(timeout, c.get_config(ConfigRequest {})).await?;
            if let Some(k) = key {
                v.entries.retain(|e| e.key == k);
                if v.entries.is_empty() {
                    let all = call(timeout, c.get_config(ConfigRequest {})).await?;
                    let keys: Vec<String> = all.entries.into_iter().map(|e| e.key).collect();
                    return Err(Failure(format!(
                        "unknown configuration key {k:?}; the keys are: {}",
                        keys.join(", ")
                    )));
                }
            }
            if json {
                print_json(&view::config_json(&v));
            } else {
                print!("{}", view::config_table(&v));
            }
        }
        Cmd::Config {
            action: ConfigCmd::Set { key, value },
        } => {
            let v = call(
                timeout,
                c.set_config(SetConfigRequest {
                    key: key.clone(),
                    value,
                }),
            )
            .await?;
            let now = v
                .entries
                .iter()
                .find(|e| e.key == key)
                .map(|e| e.value.clone())
                .unwrap_or_default();
            if json {
                print_json(&json!({"key": key, "value": now}));
            } else {
                println!("{key} = {now}");
            }
        }
        Cmd::Events { count } => {
            let mut stream = c
                .watch(WatchRequest {})
                .await
                .map_err(refused)?
                .into_inner();
            let mut n = 0;
            while count.is_none_or(|c| n < c) {
                let Some(e) = stream.message().await.map_err(refused)? else {
                    return Err(Failure(
                        "tasd ended the event stream: it is stopping".into(),
                    ));
                };
                if json {
                    println!("{}", view::event_json(&e));
                } else {
                    println!("{}", view::event_line(&e));
                }
                std::io::stdout().flush()?;
                n += 1;
            }
        }
        Cmd::Capture {
            file,
            port,
            host,
            duration,
            count,
        } => {
            capture(&mut c, json, file, port, host, duration, count).await?;
        }
    }
    Ok(())
}

async fn stats(
    c: &mut ControlClient<Channel>,
    timeout: Duration,
    json: bool,
    watch: Option<f64>,
    count: Option<u64>,
    nonzero: bool,
) -> Result<(), Failure> {
    let mut prev: Option<(Instant, Vec<Counter>)> = None;
    let mut shown = 0u64;
    loop {
        let mut cs = call(timeout, c.get_counters(CountersRequest {}))
            .await?
            .counters;
        let now = Instant::now();
        let rates = prev
            .as_ref()
            .map(|(t, before)| view::rates(before, &cs, now.duration_since(*t).as_secs_f64()));
        let keep: Vec<bool> = cs.iter().map(|k| !nonzero || k.value != 0).collect();
        let (mut shown_cs, mut shown_rates) = (Vec::new(), Vec::new());
        for (i, k) in cs.iter().enumerate() {
            if keep[i] {
                shown_cs.push(k.clone());
                shown_rates.push(rates.as_ref().map_or(0.0, |r| r[i]));
            }
        }
        if json {
            let items: Vec<Value> = shown_cs
                .iter()
                .zip(&shown_rates)
                .map(|(k, r)| view::counter_json(k, rates.as_ref().map(|_| *r)))
                .collect();
            if watch.is_some() {
                let unix_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis());
                println!("{}", json!({"unix_ms": unix_ms as u64, "counters": items}));
            } else {
                print_json(&Value::Array(items));
            }
        } else {
            if watch.is_some() {
                let unix = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_secs());
                println!("-- {unix} --");
            }
            print!(
                "{}",
                view::counters_table(&shown_cs, rates.as_ref().map(|_| shown_rates.as_slice()))
            );
        }
        std::io::stdout().flush()?;
        shown += 1;
        let Some(secs) = watch else { break };
        if count.is_some_and(|n| shown >= n) {
            break;
        }
        prev = Some((now, std::mem::take(&mut cs)));
        tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    }
    Ok(())
}

async fn capture(
    c: &mut ControlClient<Channel>,
    json: bool,
    file: PathBuf,
    port: Option<u16>,
    host: Option<Ipv4Addr>,
    duration: f64,
    count: Option<u32>,
) -> Result<(), Failure> {
    let to_stdout = file.as_os_str() == "-";
    let out: Box<dyn Write> = if to_stdout {
        Box::new(std::io::stdout().lock())
    } else {
        Box::new(std::fs::File::create(&file).map_err(|e| {
            Failure(format!(
                "cannot write the capture to {}: {e}",
                file.display()
            ))
        })?)
    };
    let mut pcap = PcapWriter::new(std::io::BufWriter::new(out))?;
    let req = CaptureRequest {
        host: host.map(|h| h.to_string()).unwrap_or_default(),
        port: port.unwrap_or(0) as u32,
        duration_ms: (duration * 1000.0).round().max(1.0) as u32,
        max_frames: count.unwrap_or(0),
    };
    if !to_stdout && !json {
        eprintln!("capturing for {duration} s into {} ...", file.display());
    }
    let mut stream = c.capture(req).await.map_err(refused)?.into_inner();
    let mut dropped = 0;
    while let Some(f) = stream.message().await.map_err(refused)? {
        if f.data.is_empty() {
            dropped = f.dropped;
            continue;
        }
        pcap.write_frame(f.unix_ns, &f.data)?;
    }
    let frames = pcap.frames();
    pcap.finish()?;
    if json && !to_stdout {
        print_json(
            &json!({"file": file.display().to_string(), "frames": frames, "dropped": dropped}),
        );
    } else {
        eprintln!(
            "{frames} frames written to {}{}",
            if to_stdout {
                "standard output".to_string()
            } else {
                file.display().to_string()
            },
            if dropped > 0 {
                format!(" ({dropped} dropped: the capture ring was full; capture less, e.g. with --port)")
            } else {
                String::new()
            }
        );
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tasctl: error: cannot start: {e}");
            return ExitCode::from(1);
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(msg)) => {
            eprintln!("tasctl: error: {msg}");
            ExitCode::from(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn argument_errors_say_what_is_expected() {
        assert!(flow_id("12x").unwrap_err().contains("ID column"));
        assert_eq!(flow_id("0x10"), Ok(16));
        assert!(port("0").unwrap_err().contains("1-65535"));
        assert!(port("70000").is_err());
        assert!(state("open").unwrap_err().contains("ESTABLISHED"));
        assert_eq!(state("time_wait").unwrap(), "TIME-WAIT");
        assert_eq!(remote("10.0.0.2:80"), Ok(("10.0.0.2".parse().unwrap(), 80)));
        assert_eq!(remote("10.0.0.2"), Ok(("10.0.0.2".parse().unwrap(), 0)));
        assert!(remote("example.com").unwrap_err().contains("IPv4"));
        assert!(capture_secs("601").unwrap_err().contains("600"));
        assert!(positive_secs("-1").is_err());
        assert!(sort_key("speed").unwrap_err().contains("rx"));
    }

    #[test]
    fn parses_commands() {
        let cli = Cli::try_parse_from([
            "tasctl",
            "--socket",
            "/tmp/x.sock",
            "flows",
            "--port",
            "7",
            "--sort",
            "rx",
            "--json",
        ])
        .unwrap();
        assert!(cli.json);
        assert!(matches!(cli.cmd, Cmd::Flows { port: Some(7), .. }));
        let cli = Cli::try_parse_from(["tasctl", "close", "42", "--reset"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Close {
                id: 42,
                reset: true
            }
        ));
        let cli = Cli::try_parse_from(["tasctl", "apps", "detach", "3"]).unwrap();
        assert!(matches!(
            cli.cmd,
            Cmd::Apps {
                action: Some(AppsCmd::Detach { id: 3 })
            }
        ));
        assert!(
            Cli::try_parse_from(["tasctl", "flow"]).is_err(),
            "flow needs an ID"
        );
        assert!(
            Cli::try_parse_from(["tasctl", "capture"]).is_err(),
            "capture needs -w"
        );
        assert!(Cli::try_parse_from(["tasctl", "frobnicate"]).is_err());
    }
}
