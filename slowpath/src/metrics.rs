//! Counters for people and for Prometheus: one line of help per counter, and the
//! Prometheus text exposition format (version 0.0.4) that `tasd --metrics ADDR` serves.
//!
//! Names: a per-core counter `rx_frames` becomes `tas_core_rx_frames_total{core="0"}`, a
//! slow-path counter `passive_opens` becomes `tas_passive_opens_total`; levels (gauges)
//! lose the `_total`. The same values, under the plain names, come from the control API's
//! `GetCounters` (`tasctl stats`).

use std::fmt::Write as _;

/// The help text of a counter nobody described yet (a test keeps this from happening).
pub const UNDOCUMENTED: &str = "Counter (not described yet).";

/// Help text of a counter, and whether it is a gauge (a level) rather than a running total.
pub fn counter_help(name: &str, per_core: bool) -> (&'static str, bool) {
    let (help, gauge) = if per_core {
        match name {
            "rx_frames" => ("Frames received by the fast-path core.", false),
            "tx_frames" => ("Frames transmitted (data, ACKs, frames built by the slow path).", false),
            "tx_segments" => ("Data segments sent, first transmissions and retransmissions.", false),
            "tx_acks" => ("Pure ACKs sent.", false),
            "rx_payload_bytes" => ("Payload bytes delivered in order to applications.", false),
            "tx_payload_bytes" => ("Payload bytes transmitted, retransmissions included.", false),
            "exceptions" => ("Frames handed to the slow path (SYN, FIN, RST, unknown flow, ARP).", false),
            "exceptions_dropped" => ("Exceptions dropped: the slow-path queue was full.", false),
            "drop_malformed" => ("Frames dropped: truncated or malformed headers.", false),
            "drop_checksum" => ("Frames dropped: bad IPv4 or TCP checksum (on veth: peer checksum offload on).", false),
            "drop_not_ours" => ("Frames dropped: not addressed to the service address.", false),
            "drop_not_tcp" => ("Frames dropped: IPv4 but not TCP.", false),
            "drop_unsupported" => ("Frames dropped: IPv4 fragments or unsupported features.", false),
            "ooo_kept" => ("Segments received out of order and kept.", false),
            "ooo_dropped" => ("Segments received out of order and dropped.", false),
            "window_dropped" => ("Payload bytes dropped: beyond the receive window.", false),
            "rx_duplicates" => ("Duplicate segments received.", false),
            "dupacks" => ("Duplicate ACKs received.", false),
            "rto_fired" => ("Retransmission timeouts.", false),
            "fast_retransmits" => ("Fast retransmits (three duplicate ACKs).", false),
            "retransmitted_segments" => ("Data segments sent again (timeouts, fast and selective retransmits, probes).", false),
            "tail_loss_probes" => ("Tail-loss probes sent.", false),
            "challenge_acks" => ("Challenge ACKs sent for suspicious RSTs and SYNs (RFC 5961).", false),
            "paws_dropped" => ("Segments dropped by PAWS: an old timestamp (RFC 7323).", false),
            "keepalive_probes" => ("Keepalive probes sent.", false),
            "ecn_ce_received" => ("Data segments received marked CE (congestion experienced) on ECN connections.", false),
            "ecn_echoes_received" => ("ACKs received with ECE: the peer saw CE marks on our data.", false),
            "cc_reports" => ("Congestion-control reports (per-flow counters once per control interval) sent to the slow path.", false),
            "pacing_waits" => ("Times a rate-limited flow waited on the pacing timer wheel.", false),
            "doorbells" => ("Application doorbells processed.", false),
            "bad_doorbells" => ("Application doorbells rejected (bad flow, slot or length).", false),
            "corrupt_queues" => ("Application queues found corrupt (the application is ignored).", false),
            "app_queue_full" => ("Events delayed: an application's event queue was full.", false),
            "tx_no_frame" => ("Transmissions delayed: no free transmit frame.", false),
            "tx_errors" => ("Transmit kicks that failed.", false),
            "busy_polls" => ("Polls of the core that found work (batches).", false),
            "idle_polls" => ("Polls of the core that found nothing.", false),
            "sleeps" => ("Times the core went to sleep after spinning idle.", false),
            "flows" => ("Flows installed on the core.", true),
            "busy_cycles" => ("Time-stamp-counter ticks the core spent in polls that did work (divide by tsc_ticks_per_us for µs).", false),
            "kick_cycles" => ("Of busy_cycles, the ticks spent in end-of-batch system calls: the transmit kick (sendto on the AF_XDP socket) and slow-path wake-ups.", false),
            "idle_cycles" => ("Time-stamp-counter ticks the core spent in polls that found nothing (time asleep is in neither).", false),
            _ => (UNDOCUMENTED, false),
        }
    } else {
        match name {
            "passive_opens" => ("Connections accepted (passive opens completed).", false),
            "active_opens" => ("Outgoing connections established.", false),
            "connect_failures" => ("Outgoing connections that failed.", false),
            "syn_backlog_drops" => ("SYNs dropped: the listener's backlog was full.", false),
            "accept_queue_overflows" => ("Handshakes whose final ACK found the accept queue full: kept waiting for room, not reset.", false),
            "syn_resource_drops" => ("Handshakes refused: no connection or flow slot left.", false),
            "rsts_sent" => ("RSTs sent.", false),
            "rsts_received" => ("RSTs received.", false),
            "reinjected" => ("Segments handed back to a core after racing a flow installation.", false),
            "bad_frames" => ("Frames the slow path could not parse.", false),
            "bad_requests" => ("Application control requests rejected as malformed.", false),
            "conn_moves" => ("Connections moved to another application context (fork hand-over, or to the thread that uses them).", false),
            "orphan_closes" => ("Connections closed by an application that exited before the close finished (finished in order).", false),
            "kept_for_holders" => ("Connections whose application exited while another process (fork) still held them: kept open for it.", false),
            "closes" => ("Connections closed in order.", false),
            "resets" => ("Connections reset or aborted.", false),
            "arp_requests" => ("ARP requests sent.", false),
            "arp_replies" => ("ARP replies sent.", false),
            "timeouts" => ("Connections that timed out (handshake or retransmissions).", false),
            "syn_retransmits" => ("SYN and SYN-ACK retransmissions.", false),
            "cc_intervals" => ("Congestion-control intervals the slow path ran (one per report from a core).", false),
            "sack_retransmits" => ("Segments the slow path had retransmitted from the SACK scoreboard.", false),
            "challenge_acks" => ("Challenge ACKs the slow path sent for suspicious RSTs and SYNs (RFC 5961).", false),
            "time_wait_reused" => ("TIME-WAIT 4-tuples reused by a newer SYN (RFC 6191).", false),
            "syn_cookies_sent" => ("SYN-ACKs sent as SYN cookies (the handshake backlog was full).", false),
            "syn_cookies_accepted" => ("Connections established from a valid SYN cookie.", false),
            "events_dropped" => ("Control-API events dropped: no watcher kept up.", false),
            "connections" => ("Connections in any state, TIME-WAIT and handshakes included.", true),
            "flows" => ("Connections with a fast-path flow.", true),
            "tsc_ticks_per_us" => ("Ticks of the cycle counters (busy_cycles, idle_cycles) per microsecond.", true),
            "apps" => ("Attached applications.", true),
            "listeners" => ("Listening ports.", true),
            "uptime_seconds" => ("Seconds since tasd started.", true),
            "fp_threads_active" => ("Fast-path threads serving shards now (1..fp_cores; docs/decisions.md 27).", true),
            "fp_scale_ups" => ("Times a fast-path thread was added (by the controller or fp_active).", false),
            "fp_scale_downs" => ("Times a fast-path thread was removed (by the controller or fp_active).", false),
            "fp_shard_handoffs" => ("Shards handed from one fast-path thread to another.", false),
            _ => (UNDOCUMENTED, false),
        }
    };
    (help, gauge)
}

/// The Prometheus name of a counter.
pub fn prometheus_name(name: &str, per_core: bool) -> String {
    let (_, gauge) = counter_help(name, per_core);
    let scope = if per_core { "tas_core_" } else { "tas_" };
    let suffix = if gauge { "" } else { "_total" };
    format!("{scope}{name}{suffix}")
}

fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Render `counters` ((name, value, core or -1)) in the Prometheus text format, after a
/// `tas_info` line with `info` labels. Each metric family gets its HELP and TYPE once,
/// per-core values carry a `core` label.
pub fn render_prometheus(info: &[(&str, String)], counters: &[(String, u64, i32)]) -> String {
    let mut out = String::with_capacity(8192);
    out.push_str("# HELP tas_info The running tasd: version, interface, address.\n# TYPE tas_info gauge\ntas_info{");
    for (i, (k, v)) in info.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{k}=\"{}\"", escape_label(v));
    }
    out.push_str("} 1\n");
    // Families in first-seen order; values of a family together: (name, per core, values).
    type Family = (String, bool, Vec<(i32, u64)>);
    let mut families: Vec<Family> = Vec::new();
    for (name, value, core) in counters {
        let per_core = *core >= 0;
        let full = prometheus_name(name, per_core);
        match families.iter_mut().find(|f| f.0 == full) {
            Some(f) => f.2.push((*core, *value)),
            None => families.push((full, per_core, vec![(*core, *value)])),
        }
    }
    for (full, per_core, values) in families {
        let base = full.trim_start_matches(if per_core { "tas_core_" } else { "tas_" });
        let base = base.strip_suffix("_total").unwrap_or(base);
        let (help, gauge) = counter_help(base, per_core);
        let _ = writeln!(out, "# HELP {full} {help}");
        let _ = writeln!(out, "# TYPE {full} {}", if gauge { "gauge" } else { "counter" });
        for (core, v) in values {
            if per_core {
                let _ = writeln!(out, "{full}{{core=\"{core}\"}} {v}");
            } else {
                let _ = writeln!(out, "{full} {v}");
            }
        }
    }
    out
}

/// Parse the sample lines of a Prometheus text page into (name with labels, value);
/// for tests and tools that compare a scrape with `GetCounters`.
pub fn parse_prometheus(text: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| {
            let (k, v) = l.rsplit_once(' ')?;
            Some((k.to_string(), v.parse().ok()?))
        })
        .collect()
}

/// Longest request head the endpoint reads.
const MAX_REQUEST: usize = 8192;

/// Serve `GET /metrics` (HTTP/1.0, `Connection: close`) on `listener` until `shutdown`
/// resolves. Values come from the slow path through `svc`, like the control API's.
pub async fn serve(
    listener: tokio::net::TcpListener,
    svc: crate::grpc::ControlService,
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            a = listener.accept() => match a {
                Ok((stream, _)) => {
                    let svc = svc.clone();
                    tokio::spawn(async move {
                        let _ = tokio::time::timeout(std::time::Duration::from_secs(10), answer(stream, svc)).await;
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// The response to one request head: (status line, content type, body).
pub fn route(head: &str) -> (&'static str, &'static str, Option<()>) {
    let mut words = head.lines().next().unwrap_or("").split_whitespace();
    let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
    let path = path.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET" | "HEAD", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", Some(())),
        ("GET" | "HEAD", _) => ("404 Not Found", "text/plain; charset=utf-8", None),
        _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", None),
    }
}

async fn answer(mut stream: tokio::net::TcpStream, svc: crate::grpc::ControlService) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    while !buf.windows(4).any(|w| w == b"\r\n\r\n") && !buf.windows(2).any(|w| w == b"\n\n") {
        match stream.read(&mut chunk).await {
            Ok(0) | Err(_) => break,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
        }
        if buf.len() > MAX_REQUEST {
            break;
        }
    }
    let head = String::from_utf8_lossy(&buf);
    let head_only = head.starts_with("HEAD");
    let (status, ctype, ok) = route(&head);
    let (status, body) = match ok {
        Some(()) => match svc.metrics_text().await {
            Ok(text) => (status, text),
            Err(e) => ("503 Service Unavailable", format!("tasd could not collect its counters: {}\n", e.message())),
        },
        None if status.starts_with("404") => (status, "not found; the metrics are at /metrics\n".to_string()),
        None => (status, "only GET and HEAD\n".to_string()),
    };
    let resp = format!(
        "HTTP/1.0 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    if !head_only {
        let _ = stream.write_all(body.as_bytes()).await;
    }
    let _ = stream.shutdown().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_families_once_with_core_labels() {
        let counters = vec![
            ("passive_opens".to_string(), 3, -1),
            ("rx_frames".to_string(), 10, 0),
            ("flows".to_string(), 2, 0),
            ("rx_frames".to_string(), 20, 1),
            ("flows".to_string(), 1, 1),
            ("connections".to_string(), 4, -1),
        ];
        let text = render_prometheus(&[("version", "0.1.0".into()), ("interface", "tas\"0".into())], &counters);
        let expected = "\
# HELP tas_info The running tasd: version, interface, address.
# TYPE tas_info gauge
tas_info{version=\"0.1.0\",interface=\"tas\\\"0\"} 1
# HELP tas_passive_opens_total Connections accepted (passive opens completed).
# TYPE tas_passive_opens_total counter
tas_passive_opens_total 3
# HELP tas_core_rx_frames_total Frames received by the fast-path core.
# TYPE tas_core_rx_frames_total counter
tas_core_rx_frames_total{core=\"0\"} 10
tas_core_rx_frames_total{core=\"1\"} 20
# HELP tas_core_flows Flows installed on the core.
# TYPE tas_core_flows gauge
tas_core_flows{core=\"0\"} 2
tas_core_flows{core=\"1\"} 1
# HELP tas_connections Connections in any state, TIME-WAIT and handshakes included.
# TYPE tas_connections gauge
tas_connections 4
";
        assert_eq!(text, expected);
        let parsed = parse_prometheus(&text);
        assert!(parsed.contains(&("tas_core_rx_frames_total{core=\"1\"}".to_string(), 20.0)));
        assert!(parsed.contains(&("tas_passive_opens_total".to_string(), 3.0)));
        assert_eq!(parsed.len(), 7);
    }

    #[test]
    fn routes_only_metrics() {
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").0, "200 OK");
        assert_eq!(route("GET /metrics?x=1 HTTP/1.0\r\n\r\n").0, "200 OK");
        assert_eq!(route("GET / HTTP/1.0\r\n\r\n").0, "404 Not Found");
        assert_eq!(route("POST /metrics HTTP/1.0\r\n\r\n").0, "405 Method Not Allowed");
        assert_eq!(route("").0, "405 Method Not Allowed");
    }

    /// Every counter the slow path and the cores keep has its own help text.
    #[test]
    fn every_counter_is_described() {
        use tas_fastpath::io::mem::{Impairments, MemLink};
        use tas_fastpath::time::SimClock;
        let clock = SimClock::new();
        let (port, _peer) = MemLink::pair(&clock, Impairments::default(), Impairments::default(), 1);
        let layout = tas_proto::shm::Layout {
            num_fp_queues: 1,
            queue_entries: 64,
            conn_slots: 4,
            rx_buf_size: 4096,
            tx_buf_size: 4096,
        };
        let host = crate::sim::SimHost::new(port, &clock, "10.0.0.1".parse().unwrap(), Default::default(), layout);
        let all = host.slow.all_counters();
        assert!(all.len() > 40);
        for (name, _, core) in all.iter().chain([&("events_dropped".to_string(), 0, -1)]) {
            let (help, _) = counter_help(name, *core >= 0);
            assert_ne!(help, UNDOCUMENTED, "counter {name} (core {core}) has no help text in metrics.rs");
        }
        for n in ["connections", "flows", "apps", "listeners", "uptime_seconds"] {
            assert!(counter_help(n, false).1, "{n} is a gauge");
        }
        assert!(counter_help("fp_threads_active", false).1, "a gauge");
        for n in ["fp_scale_ups", "fp_scale_downs", "fp_shard_handoffs"] {
            let (help, gauge) = counter_help(n, false);
            assert!(help != UNDOCUMENTED && !gauge, "{n}");
        }
    }

    #[test]
    fn every_name_is_a_valid_metric_name() {
        for n in ["rx_frames", "drop_checksum", "flows"] {
            let p = prometheus_name(n, true);
            assert!(p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{p}");
        }
        assert_eq!(prometheus_name("flows", false), "tas_flows");
        assert_eq!(prometheus_name("resets", false), "tas_resets_total");
    }
}
