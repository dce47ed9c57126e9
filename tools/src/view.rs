//! How tasctl shows the control API's answers: an aligned table (or `key: value` lines)
//! for people, and JSON with the protobuf field names for programs (`--json`). Both are
//! built from the same messages here, so they always agree.

use serde_json::{json, Value};
use tas_proto::control::*;

use crate::table::{Align, Table};

/// Field names `tasctl flows --sort` accepts.
pub const FLOW_SORT_KEYS: &[&str] = &[
    "id", "state", "local", "remote", "app", "core", "rx", "tx", "inflight", "unsent", "snd_wnd",
    "rcv_wnd", "srtt", "retx",
];

/// Sort `flows` by `key` (one of [`FLOW_SORT_KEYS`]); ties keep id order.
pub fn sort_flows(flows: &mut [Flow], key: &str) -> Result<(), String> {
    let num = |f: &Flow| -> u64 {
        match key {
            "id" => f.id,
            "app" => f.app_id as u64,
            "core" => f.core as u64,
            "rx" => f.rx_bytes,
            "tx" => f.tx_bytes,
            "inflight" => f.tx_in_flight as u64,
            "unsent" => f.tx_unsent as u64,
            "snd_wnd" => f.snd_wnd as u64,
            "rcv_wnd" => f.rcv_wnd as u64,
            "srtt" => f.srtt_us as u64,
            "retx" => f.retransmits,
            _ => 0,
        }
    };
    match key {
        "state" => flows.sort_by(|a, b| a.state.cmp(&b.state).then(a.id.cmp(&b.id))),
        "local" => flows.sort_by_key(|f| (addr_key(&f.local), f.id)),
        "remote" => flows.sort_by_key(|f| (addr_key(&f.remote), f.id)),
        k if FLOW_SORT_KEYS.contains(&k) => flows.sort_by_key(|f| (num(f), f.id)),
        other => {
            return Err(format!(
                "cannot sort by {other:?}: use one of {}",
                FLOW_SORT_KEYS.join(", ")
            ));
        }
    }
    Ok(())
}

/// "A.B.C.D:P" as a sortable number (address, then port).
fn addr_key(s: &str) -> u64 {
    match s.parse::<std::net::SocketAddrV4>() {
        Ok(a) => (u32::from(*a.ip()) as u64) << 16 | a.port() as u64,
        Err(_) => 0,
    }
}

/// The flows table (like `ss -tin`).
pub fn flows_table(flows: &[Flow]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("ID", Right),
        ("STATE", Left),
        ("LOCAL", Left),
        ("REMOTE", Left),
        ("APP", Right),
        ("CORE", Right),
        ("RX_BYTES", Right),
        ("TX_BYTES", Right),
        ("INFLIGHT", Right),
        ("UNSENT", Right),
        ("SND_WND", Right),
        ("RCV_WND", Right),
        ("SRTT_US", Right),
        ("RETX", Right),
    ]);
    for f in flows {
        let n = |v: u64| {
            if f.installed {
                v.to_string()
            } else {
                "-".to_string()
            }
        };
        t.row([
            f.id.to_string(),
            f.state.clone(),
            f.local.clone(),
            f.remote.clone(),
            f.app_id.to_string(),
            f.core.to_string(),
            n(f.rx_bytes),
            n(f.tx_bytes),
            n(f.tx_in_flight as u64),
            n(f.tx_unsent as u64),
            n(f.snd_wnd as u64),
            n(f.rcv_wnd as u64),
            n(f.srtt_us as u64),
            n(f.retransmits),
        ]);
    }
    t.render()
}

/// One flow as JSON, every field of `Flow`.
pub fn flow_json(f: &Flow) -> Value {
    json!({
        "id": f.id,
        "local": f.local,
        "remote": f.remote,
        "state": f.state,
        "app_id": f.app_id,
        "core": f.core,
        "installed": f.installed,
        "flow_slot": f.flow_slot,
        "app_conn": f.app_conn,
        "snd_una": f.snd_una,
        "snd_nxt": f.snd_nxt,
        "rcv_nxt": f.rcv_nxt,
        "snd_wnd": f.snd_wnd,
        "rcv_wnd": f.rcv_wnd,
        "snd_wscale": f.snd_wscale,
        "rcv_wscale": f.rcv_wscale,
        "mss": f.mss,
        "timestamps": f.timestamps,
        "rx_bytes": f.rx_bytes,
        "tx_bytes": f.tx_bytes,
        "retransmits": f.retransmits,
        "srtt_us": f.srtt_us,
        "rttvar_us": f.rttvar_us,
        "rto_us": f.rto_us,
        "rto_backoff": f.rto_backoff,
        "dupacks": f.dupacks,
        "tx_in_flight": f.tx_in_flight,
        "tx_unsent": f.tx_unsent,
        "tx_buffer": f.tx_buffer,
        "rx_buffered": f.rx_buffered,
        "rx_buffer": f.rx_buffer,
        "ooo_intervals": f.ooo_intervals,
        "flags": f.flags,
        "remote_mac": f.remote_mac,
        "ca_state": f.ca_state,
        "min_rtt_us": f.min_rtt_us,
        "total_rto": f.total_rto,
        "rto_recoveries": f.rto_recoveries,
        "sacked": f.sacked,
        "lost": f.lost,
    })
}

/// Linux's name of a `TCP_CA_*` state (as `ss -i` would not show, but `tcp_info` has).
fn ca_state_name(s: u32) -> &'static str {
    match s {
        0 => "open",
        1 => "disorder",
        2 => "cwr",
        3 => "recovery",
        4 => "loss",
        _ => "unknown",
    }
}

fn pct(part: u32, whole: u32) -> String {
    if whole == 0 {
        "-".into()
    } else {
        format!("{:.1}%", part as f64 * 100.0 / whole as f64)
    }
}

/// One flow in detail, `key: value` lines.
pub fn flow_detail(f: &Flow) -> String {
    let mut lines: Vec<(String, String)> = vec![
        ("id".into(), f.id.to_string()),
        ("state".into(), f.state.clone()),
        ("local".into(), f.local.clone()),
        ("remote".into(), f.remote.clone()),
        (
            "app".into(),
            format!("{} (connection slot {})", f.app_id, f.app_conn),
        ),
        (
            "core".into(),
            if f.installed {
                format!("{} (flow slot {})", f.core, f.flow_slot)
            } else {
                format!("{} (no fast-path flow)", f.core)
            },
        ),
    ];
    if f.installed {
        lines.extend([
            (
                "seq".into(),
                format!(
                    "snd_una {} snd_nxt {} rcv_nxt {}",
                    f.snd_una, f.snd_nxt, f.rcv_nxt
                ),
            ),
            (
                "windows".into(),
                format!(
                    "snd_wnd {} (wscale {}) rcv_wnd {} (wscale {})",
                    f.snd_wnd, f.snd_wscale, f.rcv_wnd, f.rcv_wscale
                ),
            ),
            ("mss".into(), f.mss.to_string()),
            ("timestamps".into(), f.timestamps.to_string()),
            (
                "rtt".into(),
                format!(
                    "srtt {} us rttvar {} us rto {} us (backoff {})",
                    f.srtt_us, f.rttvar_us, f.rto_us, f.rto_backoff
                ),
            ),
            ("retransmits".into(), f.retransmits.to_string()),
            (
                "loss".into(),
                format!(
                    "ca_state {} min_rtt {} us, {} timeouts ({} recoveries), sacked {} lost {} segments",
                    ca_state_name(f.ca_state),
                    f.min_rtt_us,
                    f.total_rto,
                    f.rto_recoveries,
                    f.sacked,
                    f.lost
                ),
            ),
            ("dupacks".into(), f.dupacks.to_string()),
            ("rx_bytes".into(), f.rx_bytes.to_string()),
            ("tx_bytes".into(), f.tx_bytes.to_string()),
            (
                "tx_buffer".into(),
                format!(
                    "{} in flight + {} unsent of {} ({})",
                    f.tx_in_flight,
                    f.tx_unsent,
                    f.tx_buffer,
                    pct(f.tx_in_flight + f.tx_unsent, f.tx_buffer)
                ),
            ),
            (
                "rx_buffer".into(),
                format!(
                    "{} unread of {} ({}), {} out-of-order intervals",
                    f.rx_buffered,
                    f.rx_buffer,
                    pct(f.rx_buffered, f.rx_buffer),
                    f.ooo_intervals
                ),
            ),
            (
                "flags".into(),
                if f.flags.is_empty() {
                    "-".into()
                } else {
                    f.flags.join(",")
                },
            ),
            ("remote_mac".into(), f.remote_mac.clone()),
        ]);
    }
    kv_lines(&lines)
}

fn kv_lines(lines: &[(String, String)]) -> String {
    let w = lines.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(k, v)| format!("{:<w$}  {v}\n", format!("{k}:"), w = w + 1))
        .collect()
}

/// The status, `key: value` lines.
pub fn status_text(s: &Status) -> String {
    let up = s.uptime_ms / 1000;
    kv_lines(&[
        ("tasd".into(), format!("{} (pid {})", s.version, s.pid)),
        (
            "uptime".into(),
            format!("{}h{:02}m{:02}s", up / 3600, up / 60 % 60, up % 60),
        ),
        (
            "interface".into(),
            format!("{} (XDP {})", s.interface, s.xdp_mode),
        ),
        ("address".into(), s.address.clone()),
        (
            "fast-path cores".into(),
            format!("{} ({})", s.fp_cores, s.bind_modes.join(", ")),
        ),
        (
            "connections".into(),
            format!("{} ({} with a fast-path flow)", s.connections, s.flows),
        ),
        ("listeners".into(), s.listeners.to_string()),
        ("applications".into(), s.apps.to_string()),
        ("app socket".into(), s.app_socket.clone()),
        ("control socket".into(), s.control_socket.clone()),
        (
            "metrics".into(),
            if s.metrics_address.is_empty() {
                "off".into()
            } else {
                format!("http://{}/metrics", s.metrics_address)
            },
        ),
    ])
}

/// The status as JSON.
pub fn status_json(s: &Status) -> Value {
    json!({
        "version": s.version,
        "pid": s.pid,
        "uptime_ms": s.uptime_ms,
        "interface": s.interface,
        "address": s.address,
        "xdp_mode": s.xdp_mode,
        "fp_cores": s.fp_cores,
        "bind_modes": s.bind_modes,
        "connections": s.connections,
        "flows": s.flows,
        "listeners": s.listeners,
        "apps": s.apps,
        "app_socket": s.app_socket,
        "control_socket": s.control_socket,
        "metrics_address": s.metrics_address,
    })
}

/// A queue's fill as `used/capacity`, with `!` after it if the queue holds impossible
/// indices (then `used` shows the capacity).
fn fill(used: u32, capacity: u32, corrupt: bool) -> String {
    format!("{used}/{capacity}{}", if corrupt { "!" } else { "" })
}

/// Applications: one table of the applications (with their slow-path queues), then, after
/// a blank line, one of their queue pairs with each fast-path core.
pub fn apps_table(apps: &[App]) -> String {
    let mut out = apps_main_table(apps);
    if apps.is_empty() {
        return out;
    }
    use Align::*;
    let mut t = Table::new(&[("APP", Right), ("CORE", Right), ("TO_FP", Right), ("TO_APP", Right)]);
    let mut corrupt = false;
    for a in apps {
        for q in &a.core_queues {
            corrupt |= q.corrupt;
            t.row([
                a.id.to_string(),
                q.core.to_string(),
                fill(q.to_fp_used, q.to_fp_capacity, q.corrupt),
                fill(q.to_app_used, q.to_app_capacity, q.corrupt),
            ]);
        }
    }
    out.push('\n');
    out.push_str(&t.render());
    if corrupt || apps.iter().any(|a| a.slow_queues_corrupt) {
        out.push_str("\n! the application wrote impossible queue indices (shown as full)\n");
    }
    out
}

fn apps_main_table(apps: &[App]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("ID", Right),
        ("NAME", Left),
        ("PID", Right),
        ("UID", Right),
        ("CONNS", Right),
        ("LISTEN", Left),
        ("CONTEXTS", Right),
        ("EVENTQ", Right),
        ("REQQ", Right),
    ]);
    for a in apps {
        let ports: Vec<String> = a.listen_ports.iter().map(|p| p.to_string()).collect();
        t.row([
            a.id.to_string(),
            if a.name.is_empty() {
                "-".into()
            } else {
                a.name.replace("  ", " ")
            },
            a.pid.to_string(),
            a.uid.to_string(),
            a.connections.to_string(),
            if ports.is_empty() {
                "-".into()
            } else {
                ports.join(",")
            },
            a.contexts.to_string(),
            fill(a.event_queue_used, a.event_queue_capacity, a.slow_queues_corrupt),
            fill(a.request_queue_used, a.request_queue_capacity, a.slow_queues_corrupt),
        ]);
    }
    t.render()
}

/// One application as JSON.
pub fn app_json(a: &App) -> Value {
    json!({
        "id": a.id,
        "name": a.name,
        "pid": a.pid,
        "uid": a.uid,
        "connections": a.connections,
        "listeners": a.listeners,
        "listen_ports": a.listen_ports,
        "contexts": a.contexts,
        "event_queue_used": a.event_queue_used,
        "event_queue_capacity": a.event_queue_capacity,
        "request_queue_used": a.request_queue_used,
        "request_queue_capacity": a.request_queue_capacity,
        "slow_queues_corrupt": a.slow_queues_corrupt,
        "core_queues": a.core_queues.iter().map(|q| json!({
            "core": q.core,
            "to_fp_used": q.to_fp_used,
            "to_fp_capacity": q.to_fp_capacity,
            "to_app_used": q.to_app_used,
            "to_app_capacity": q.to_app_capacity,
            "corrupt": q.corrupt,
        })).collect::<Vec<_>>(),
    })
}

/// Listeners.
pub fn listeners_table(ls: &[Listener]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("ID", Right),
        ("PORT", Right),
        ("APP", Right),
        ("BACKLOG", Right),
        ("SYN_RCVD", Right),
        ("UNACCEPTED", Right),
    ]);
    for l in ls {
        t.row(
            [
                l.id,
                l.port,
                l.app_id,
                l.backlog,
                l.syn_received,
                l.unaccepted,
            ]
            .map(|v| v.to_string()),
        );
    }
    t.render()
}

/// One listener as JSON.
pub fn listener_json(l: &Listener) -> Value {
    json!({
        "id": l.id,
        "port": l.port,
        "app_id": l.app_id,
        "backlog": l.backlog,
        "syn_received": l.syn_received,
        "unaccepted": l.unaccepted,
    })
}

/// Fast-path cores.
pub fn cores_table(cores: &[Core]) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("CORE", Right),
        ("CPU", Right),
        ("QUEUE", Right),
        ("MODE", Left),
        ("RX_FRAMES", Right),
        ("TX_FRAMES", Right),
        ("RX_BYTES", Right),
        ("TX_BYTES", Right),
        ("BUSY_POLLS", Right),
        ("IDLE_POLLS", Right),
        ("SLEEPS", Right),
        ("FLOWS", Right),
        ("DROPS", Right),
        ("EXCEPTIONS", Right),
        ("BUSY%", Right),
        ("CYC/BATCH", Right),
        ("CYC/PKT", Right),
        ("THREAD", Right),
    ]);
    for c in cores {
        let cyc = CoreCycles::of(c);
        t.row([
            c.id.to_string(),
            c.cpu.to_string(),
            c.queue.to_string(),
            if c.bind_mode.is_empty() {
                "-".into()
            } else {
                c.bind_mode.clone()
            },
            c.rx_frames.to_string(),
            c.tx_frames.to_string(),
            c.rx_payload_bytes.to_string(),
            c.tx_payload_bytes.to_string(),
            c.busy_polls.to_string(),
            c.idle_polls.to_string(),
            c.sleeps.to_string(),
            c.flows.to_string(),
            c.drops.to_string(),
            c.exceptions.to_string(),
            opt(cyc.busy_percent, 1),
            opt(cyc.per_batch, 0),
            opt(cyc.per_packet, 0),
            if c.thread < 0 { "moving".into() } else { c.thread.to_string() },
        ]);
    }
    t.render()
}

/// The fast path's threads: how many are active, why, and the last changes.
pub fn scaling_text(s: &Scaling) -> String {
    let mode = if s.forced == 0 { "adaptive".to_string() } else { format!("fixed (fp_active = {})", s.forced) };
    let mut out = format!(
        "fast-path threads: {} of {} active, {mode}; load {:.2} cores; up above {}% per thread for {} ms, down below {}% for {} ms; {} up, {} down, {} shard handoffs\n",
        s.active_threads,
        s.threads,
        s.load_pct as f64 / 100.0,
        s.up_pct,
        s.up_ms,
        s.down_pct,
        s.down_ms,
        s.scale_ups,
        s.scale_downs,
        s.handoffs
    );
    for e in &s.events {
        let ms = e.at_unix_us / 1000;
        out += &format!("  {}.{:03}  {} -> {}  load {:.2} cores{}\n", ms / 1000, ms % 1000, e.from, e.to, e.load_pct as f64 / 100.0, if e.forced { "  (fp_active)" } else { "" });
    }
    out
}

/// [`scaling_text`] as JSON.
pub fn scaling_json(s: &Scaling) -> Value {
    json!({
        "threads": s.threads,
        "active_threads": s.active_threads,
        "forced": s.forced,
        "up_pct": s.up_pct,
        "down_pct": s.down_pct,
        "up_ms": s.up_ms,
        "down_ms": s.down_ms,
        "scale_ups": s.scale_ups,
        "scale_downs": s.scale_downs,
        "handoffs": s.handoffs,
        "load_pct": s.load_pct,
        "events": s.events.iter().map(|e| json!({
            "at_unix_us": e.at_unix_us, "from": e.from, "to": e.to, "load_pct": e.load_pct, "forced": e.forced,
        })).collect::<Vec<_>>(),
    })
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |v| format!("{v:.decimals$}"))
}

/// What a core's cycle counters say (fastpath/src/cycles.rs); `None` where a ratio has
/// no denominator yet.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CoreCycles {
    /// Share of the core's polling time spent in polls that did work, in percent.
    pub busy_percent: Option<f64>,
    /// Busy ticks per poll that did work.
    pub per_batch: Option<f64>,
    /// Busy ticks per frame received or sent: the stack's cost of one packet.
    pub per_packet: Option<f64>,
}

impl CoreCycles {
    /// The ratios of one core's counters.
    pub fn of(c: &Core) -> CoreCycles {
        let ratio = |a: u64, b: u64| (b > 0).then(|| a as f64 / b as f64);
        CoreCycles {
            busy_percent: ratio(c.busy_cycles * 100, c.busy_cycles + c.idle_cycles),
            per_batch: ratio(c.busy_cycles, c.busy_polls),
            per_packet: ratio(c.busy_cycles, c.rx_frames + c.tx_frames),
        }
    }
}

/// One core as JSON.
pub fn core_json(c: &Core) -> Value {
    json!({
        "id": c.id,
        "cpu": c.cpu,
        "queue": c.queue,
        "bind_mode": c.bind_mode,
        "rx_frames": c.rx_frames,
        "tx_frames": c.tx_frames,
        "rx_payload_bytes": c.rx_payload_bytes,
        "tx_payload_bytes": c.tx_payload_bytes,
        "busy_polls": c.busy_polls,
        "idle_polls": c.idle_polls,
        "sleeps": c.sleeps,
        "flows": c.flows,
        "drops": c.drops,
        "exceptions": c.exceptions,
        "busy_cycles": c.busy_cycles,
        "idle_cycles": c.idle_cycles,
        "kick_cycles": c.kick_cycles,
        "ticks_per_us": c.ticks_per_us,
        "thread": c.thread,
    })
}

/// Counters; with `rates` (per second, same order) a RATE/S column.
pub fn counters_table(cs: &[Counter], rates: Option<&[f64]>) -> String {
    use Align::*;
    let mut cols = vec![("NAME", Left), ("CORE", Right), ("VALUE", Right)];
    if rates.is_some() {
        cols.push(("RATE/S", Right));
    }
    let mut t = Table::new(&cols);
    for (i, c) in cs.iter().enumerate() {
        let core = if c.core < 0 {
            "-".to_string()
        } else {
            c.core.to_string()
        };
        let mut row = vec![c.name.clone(), core, c.value.to_string()];
        if let Some(r) = rates {
            row.push(if c.gauge {
                "-".into()
            } else {
                format!("{:.1}", r.get(i).copied().unwrap_or(0.0))
            });
        }
        t.row(row);
    }
    t.render()
}

/// One counter as JSON (`core` is null for the slow path).
pub fn counter_json(c: &Counter, rate: Option<f64>) -> Value {
    let mut v = json!({
        "name": c.name,
        "core": if c.core < 0 { Value::Null } else { json!(c.core) },
        "value": c.value,
        "gauge": c.gauge,
        "help": c.help,
    });
    if let Some(r) = rate {
        v["rate_per_s"] = json!(r);
    }
    v
}

/// Per-second rates between two samples of the same counters `secs` apart (matched by
/// name and core; a counter that went backwards or is new counts from zero).
pub fn rates(before: &[Counter], after: &[Counter], secs: f64) -> Vec<f64> {
    after
        .iter()
        .map(|a| {
            let b = before
                .iter()
                .find(|b| b.name == a.name && b.core == a.core)
                .map_or(0, |b| b.value);
            if secs <= 0.0 {
                0.0
            } else {
                a.value.saturating_sub(b) as f64 / secs
            }
        })
        .collect()
}

/// The configuration.
pub fn config_table(v: &ConfigView) -> String {
    use Align::*;
    let mut t = Table::new(&[
        ("KEY", Left),
        ("VALUE", Left),
        ("LIVE", Left),
        ("DESCRIPTION", Left),
    ]);
    for e in &v.entries {
        t.row([
            e.key.clone(),
            if e.value.is_empty() {
                "-".into()
            } else {
                e.value.clone()
            },
            if e.live { "yes".into() } else { "no".into() },
            e.description.replace("  ", " "),
        ]);
    }
    let mut s = t.render();
    s.push_str(&format!(
        "\nfile: {}\n",
        if v.config_file.is_empty() {
            "(none: flags only)"
        } else {
            &v.config_file
        }
    ));
    s
}

/// The configuration as JSON: {"config_file": ..., "entries": [{key, value, live, description}]}.
pub fn config_json(v: &ConfigView) -> Value {
    json!({
        "config_file": v.config_file,
        "entries": v.entries.iter().map(|e| json!({
            "key": e.key, "value": e.value, "live": e.live, "description": e.description,
        })).collect::<Vec<_>>(),
    })
}

/// One event as a line.
pub fn event_line(e: &Event) -> String {
    let t = e.unix_ms;
    let mut s = format!("{}.{:03} {}", t / 1000, t % 1000, e.kind);
    if e.flow_id != 0 {
        s.push_str(&format!(" flow={}", e.flow_id));
    }
    if !e.remote.is_empty() {
        s.push_str(&format!(" remote={}", e.remote));
    }
    if e.local_port != 0 {
        s.push_str(&format!(" local_port={}", e.local_port));
    }
    if e.app_id != 0 {
        s.push_str(&format!(" app={}", e.app_id));
    }
    if !e.detail.is_empty() {
        s.push_str(&format!(" detail={:?}", e.detail));
    }
    s
}

/// One event as JSON.
pub fn event_json(e: &Event) -> Value {
    json!({
        "unix_ms": e.unix_ms,
        "kind": e.kind,
        "flow_id": e.flow_id,
        "remote": e.remote,
        "local_port": e.local_port,
        "app_id": e.app_id,
        "detail": e.detail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apps_table_lists_every_queue_and_matches_json() {
        let q = |core, fp, app, corrupt| CoreQueues {
            core,
            to_fp_used: fp,
            to_fp_capacity: 256,
            to_app_used: app,
            to_app_capacity: 256,
            corrupt,
        };
        let apps = [
            App {
                id: 3,
                name: "kv".into(),
                pid: 77,
                connections: 2,
                contexts: 2,
                event_queue_used: 1,
                event_queue_capacity: 256,
                request_queue_used: 0,
                request_queue_capacity: 256,
                core_queues: vec![q(0, 0, 5, false), q(1, 2, 0, false)],
                ..Default::default()
            },
            App {
                id: 4,
                pid: 78,
                contexts: 2,
                event_queue_capacity: 256,
                request_queue_capacity: 256,
                core_queues: vec![q(0, 256, 0, true), q(1, 0, 0, false)],
                ..Default::default()
            },
        ];
        let text = apps_table(&apps);
        let (main, queues) = text.split_once("\n\n").expect("two tables");
        let main = crate::table::parse(main);
        assert_eq!(main[0], ["ID", "NAME", "PID", "UID", "CONNS", "LISTEN", "CONTEXTS", "EVENTQ", "REQQ"]);
        assert_eq!(main[1], ["3", "kv", "77", "0", "2", "-", "2", "1/256", "0/256"]);
        assert_eq!(main[2], ["4", "-", "78", "0", "0", "-", "2", "0/256", "0/256"]);
        let queues = crate::table::parse(queues);
        assert_eq!(queues[0], ["APP", "CORE", "TO_FP", "TO_APP"]);
        assert_eq!(queues[1..5], [
            ["3", "0", "0/256", "5/256"],
            ["3", "1", "2/256", "0/256"],
            ["4", "0", "256/256!", "0/256!"],
            ["4", "1", "0/256", "0/256"],
        ]);
        assert!(text.ends_with("! the application wrote impossible queue indices (shown as full)\n"), "{text}");
        let j = app_json(&apps[0]);
        assert_eq!(j["core_queues"][0]["to_app_used"], 5);
        assert_eq!(j["core_queues"][1]["to_fp_used"], 2);
        assert_eq!(j["core_queues"][1]["core"], 1);
        assert_eq!(j["request_queue_capacity"], 256);
        assert_eq!(app_json(&apps[1])["core_queues"][0]["corrupt"], true);
        assert_eq!(apps_table(&[]).lines().count(), 1, "no apps: the header only");
    }

    fn flow(id: u64, state: &str, rx: u64) -> Flow {
        Flow {
            id,
            local: "10.77.0.1:7".into(),
            remote: format!("10.77.0.2:{}", 40000 + id),
            state: state.into(),
            app_id: 1,
            installed: state == "ESTABLISHED",
            rx_bytes: rx,
            tx_bytes: rx,
            snd_wnd: 65535,
            rcv_wnd: 262144,
            srtt_us: 42,
            ..Default::default()
        }
    }

    #[test]
    fn flow_detail_and_json_show_loss_recovery() {
        let f = Flow { ca_state: 4, min_rtt_us: 40, total_rto: 3, rto_recoveries: 2, sacked: 5, lost: 1, ..flow(1, "ESTABLISHED", 10) };
        let d = flow_detail(&f);
        assert!(d.contains("ca_state loss min_rtt 40 us, 3 timeouts (2 recoveries), sacked 5 lost 1 segments"), "{d}");
        let j = flow_json(&f);
        assert_eq!((j["ca_state"].as_u64(), j["min_rtt_us"].as_u64(), j["lost"].as_u64()), (Some(4), Some(40), Some(1)));
    }

    #[test]
    fn core_cycles_ratios_and_dashes_before_traffic() {
        let idle = Core::default();
        assert_eq!(
            CoreCycles::of(&idle),
            CoreCycles { busy_percent: None, per_batch: None, per_packet: None }
        );
        let c = Core {
            busy_cycles: 3_000,
            idle_cycles: 1_000,
            busy_polls: 10,
            rx_frames: 20,
            tx_frames: 10,
            ..Default::default()
        };
        let r = CoreCycles::of(&c);
        assert_eq!(r.busy_percent, Some(75.0));
        assert_eq!(r.per_batch, Some(300.0));
        assert_eq!(r.per_packet, Some(100.0));
        let moving = Core { thread: -1, ..Default::default() };
        let rows = crate::table::parse(&cores_table(&[idle, Core { thread: 1, ..c }, moving]));
        let n = rows[0].len();
        assert_eq!(rows[0][n - 4..], ["BUSY%", "CYC/BATCH", "CYC/PKT", "THREAD"]);
        assert_eq!(rows[1][n - 4..], ["-", "-", "-", "0"]);
        assert_eq!(rows[2][n - 4..], ["75.0", "300", "100", "1"]);
        assert_eq!(rows[3][n - 1], "moving");
    }

    #[test]
    fn scaling_shows_the_count_the_marks_and_the_events() {
        let s = Scaling {
            threads: 2,
            active_threads: 1,
            forced: 0,
            up_pct: 70,
            down_pct: 30,
            up_ms: 50,
            down_ms: 500,
            scale_ups: 1,
            scale_downs: 2,
            handoffs: 3,
            load_pct: 12,
            events: vec![ScaleEvent { at_unix_us: 1_500_000, from: 2, to: 1, load_pct: 4, forced: true }],
        };
        let t = scaling_text(&s);
        assert!(t.starts_with("fast-path threads: 1 of 2 active, adaptive; load 0.12 cores; up above 70% per thread for 50 ms, down below 30% for 500 ms; 1 up, 2 down, 3 shard handoffs\n"), "{t}");
        assert!(t.contains("  1.500  2 -> 1  load 0.04 cores  (fp_active)\n"), "{t}");
        let j = scaling_json(&s);
        assert_eq!((j["active_threads"].as_u64(), j["scale_downs"].as_u64()), (Some(1), Some(2)));
        assert_eq!(j["events"][0]["to"], 1);
        assert_eq!(j["events"][0]["forced"], true);
    }

    #[test]
    fn flows_table_shows_dashes_for_handshakes_and_aligns() {
        let text = flows_table(&[flow(1, "ESTABLISHED", 1000), flow(2, "SYN-RECEIVED", 0)]);
        let rows = crate::table::parse(&text);
        assert_eq!(rows[0][..4], ["ID", "STATE", "LOCAL", "REMOTE"]);
        assert_eq!(
            rows[1][..7],
            [
                "1",
                "ESTABLISHED",
                "10.77.0.1:7",
                "10.77.0.2:40001",
                "1",
                "0",
                "1000"
            ]
        );
        assert_eq!(rows[2][6], "-");
        let lens: Vec<usize> = text.lines().map(|l| l.len()).collect();
        assert!(
            lens.iter().all(|&l| l == lens[0]),
            "right-aligned last column: every line equally long\n{text}"
        );
    }

    #[test]
    fn json_has_every_field_under_its_proto_name() {
        let v = flow_json(&flow(7, "ESTABLISHED", 5));
        for k in [
            "id",
            "state",
            "local",
            "remote",
            "rx_bytes",
            "tx_bytes",
            "srtt_us",
            "snd_wnd",
            "rcv_wnd",
            "retransmits",
            "flags",
        ] {
            assert!(v.get(k).is_some(), "missing {k}: {v}");
        }
        assert_eq!(v["id"], 7);
        assert_eq!(v["rx_bytes"], 5);
        assert_eq!(v.as_object().unwrap().len(), 40);
        let c = Counter {
            name: "rx_frames".into(),
            value: 3,
            core: -1,
            help: "h".into(),
            gauge: false,
        };
        assert_eq!(
            counter_json(&c, None),
            json!({"name": "rx_frames", "core": null, "value": 3, "gauge": false, "help": "h"})
        );
    }

    #[test]
    fn sorting_and_rates() {
        let mut fs = vec![
            flow(1, "ESTABLISHED", 10),
            flow(2, "ESTABLISHED", 5),
            flow(3, "CLOSE-WAIT", 7),
        ];
        sort_flows(&mut fs, "rx").unwrap();
        assert_eq!(fs.iter().map(|f| f.id).collect::<Vec<_>>(), [2, 3, 1]);
        sort_flows(&mut fs, "state").unwrap();
        assert_eq!(fs[0].id, 3);
        sort_flows(&mut fs, "remote").unwrap();
        assert_eq!(fs[0].id, 1);
        assert!(sort_flows(&mut fs, "bogus").unwrap_err().contains("srtt"));
        let c = |v| Counter {
            name: "rx_frames".into(),
            value: v,
            core: 0,
            ..Default::default()
        };
        assert_eq!(rates(&[c(100)], &[c(300)], 2.0), vec![100.0]);
        assert_eq!(rates(&[], &[c(10)], 1.0), vec![10.0]);
    }

    #[test]
    fn status_and_events_read_well() {
        let s = Status {
            version: "0.1.0".into(),
            uptime_ms: 3_723_000,
            fp_cores: 1,
            bind_modes: vec!["copy".into()],
            ..Default::default()
        };
        let text = status_text(&s);
        assert!(text.contains("uptime:           1h02m03s"), "{text}");
        assert!(text.contains("metrics:          off"), "{text}");
        let e = Event {
            unix_ms: 1_500,
            kind: "opened".into(),
            flow_id: 9,
            remote: "10.0.0.2:5".into(),
            local_port: 7,
            app_id: 1,
            detail: "passive".into(),
        };
        assert_eq!(
            event_line(&e),
            "1.500 opened flow=9 remote=10.0.0.2:5 local_port=7 app=1 detail=\"passive\""
        );
    }
}
