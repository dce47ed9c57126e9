//! What an application's `TCP_INFO` reports of a connection (decisions §21): the reply
//! to its `Info` request, built from the slow path's own state (congestion control, the
//! SACK scoreboard, the timeout-recovery record kept here) and a copy of the fast path's
//! flow state taken for the request ([`Peek`]), in Linux's terms and units.
//!
//! Nothing here runs per segment: the record below is updated on timeouts (`FlowNote::Rto`)
//! and on the fast path's congestion-control reports, and read on `Info` requests.

use tas_fastpath::flow::{FlowState, F_RECOVERY, F_TX_FIN_ACKED, F_TX_FIN_SENT};
use tas_fastpath::rx::{rto_us, seq_lt};
use tas_fastpath::time::Instant;
use tas_proto::shm::{
    ConnInfo, CA_DISORDER, CA_LOSS, CA_OPEN, CA_RECOVERY, INFO_FOUND, INFO_FRESH,
};

use crate::cc::CcState;
use crate::sack::Scoreboard;

/// A connection's recoveries from retransmission timeouts (Linux's `TCP_CA_Loss` state
/// and its `total_rto*` counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RtoRecovery {
    /// Timeouts so far.
    pub total_rto: u32,
    /// Recoveries started so far (a timeout while one is under way does not start one).
    pub recoveries: u32,
    /// Time spent in finished recoveries, µs.
    done_us: u64,
    /// The recovery under way: it ends when this sequence number is acknowledged.
    high: Option<u32>,
    /// When the recovery under way started.
    since: Instant,
}

impl RtoRecovery {
    /// A timeout fired at `now` with `snd_una` unacknowledged; `recover` is the highest
    /// sequence sent before it (Linux's `high_seq`).
    pub fn on_rto(&mut self, now: Instant, snd_una: u32, recover: u32) {
        self.total_rto = self.total_rto.saturating_add(1);
        match self.high {
            Some(h) if seq_lt(snd_una, h) => {
                // Another timeout in the same recovery (Linux: still in Loss).
                if seq_lt(h, recover) {
                    self.high = Some(recover);
                }
            }
            _ => {
                // A finished recovery nobody saw end ends now at the latest.
                self.finish(now);
                self.recoveries = self.recoveries.saturating_add(1);
                self.high = Some(recover);
                self.since = now;
            }
        }
    }

    /// The cumulative ACK reached `snd_una` (a congestion-control report or a peek).
    pub fn on_progress(&mut self, now: Instant, snd_una: u32) {
        if self.high.is_some_and(|h| !seq_lt(snd_una, h)) {
            self.finish(now);
        }
    }

    fn finish(&mut self, now: Instant) {
        if self.high.take().is_some() {
            self.done_us += now.as_nanos().saturating_sub(self.since.as_nanos()) / 1_000;
        }
    }

    /// True while recovering from a timeout.
    pub fn in_loss(&self) -> bool {
        self.high.is_some()
    }

    /// Milliseconds spent recovering from timeouts, the recovery under way included.
    pub fn time_ms(&self, now: Instant) -> u32 {
        let open = if self.high.is_some() {
            now.as_nanos().saturating_sub(self.since.as_nanos()) / 1_000
        } else {
            0
        };
        ((self.done_us + open) / 1_000).min(u32::MAX as u64) as u32
    }
}

/// A copy of the fast path's flow state taken for an `Info` request.
#[derive(Debug, Clone, Copy)]
pub struct Peek<'a> {
    /// The flow.
    pub state: &'a FlowState,
    /// The core's clock when the copy was taken, µs (wrapping, as the flow's times).
    pub now_us: u32,
    /// Data bytes the core retransmitted for the flow (wrapping).
    pub retx_bytes: u32,
}

/// What the reply is built from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    /// `INFO_*` option bits and window shifts of the flow.
    pub opts: u16,
    /// Payload bytes per segment.
    pub mss: u16,
    /// Congestion control (None before the flow is installed).
    pub cc: Option<&'a CcState>,
    /// The SACK scoreboard.
    pub sb: &'a Scoreboard,
    /// The timeout-recovery record.
    pub rto: &'a RtoRecovery,
    /// `snd_una` when the flow was installed (the first data byte's sequence number).
    pub snd_start: u32,
    /// The connection's receive buffer: the most window it offers.
    pub rcv_space: u32,
    /// The fast path's flow, if it could be read.
    pub peek: Option<Peek<'a>>,
    /// The slow path's clock.
    pub now: Instant,
}

/// Initial RTO before any RTT sample (RFC 6298 2.1), and the fast path's bounds.
const RTO_INITIAL_US: u32 = 1_000_000;
const RTO_MIN_US: u32 = 200_000;
const RTO_MAX_US: u32 = 60_000_000;

/// The `Info` reply.
pub fn conn_info(i: &Inputs) -> ConnInfo {
    let mss = (i.mss as u32).max(1);
    let mut info = ConnInfo {
        opts: i.opts | INFO_FOUND,
        mss: i.mss,
        cwnd: u32::MAX,
        snd_ssthresh: u32::MAX,
        rcv_ssthresh: i.rcv_space,
        rcv_wnd: i.rcv_space,
        last_ack_recv_ms: u32::MAX,
        rto_us: RTO_INITIAL_US,
        total_rto: i.rto.total_rto.min(u16::MAX as u32) as u16,
        total_rto_recoveries: i.rto.recoveries.min(u16::MAX as u32) as u16,
        total_rto_time_ms: i.rto.time_ms(i.now),
        ..ConnInfo::default()
    };
    let (sacked, lost, retrans) = i.sb.segments(mss);
    (info.sacked, info.lost, info.retrans) = (sacked, lost, retrans);
    if let Some(cc) = i.cc {
        info.srtt_us = cc.rtt_us;
        info.rttvar_us = cc.rttvar_us();
        let l = cc.limits();
        if l.cwnd > 0 {
            info.cwnd = l.cwnd;
        }
        info.pacing_kbps = l.rate_kbps;
        info.delivery_kbps = cc.measured_kbps;
        info.snd_ssthresh = cc.ssthresh;
        info.min_rtt_us = cc.min_rtt_us;
        if cc.rtt_us > 0 {
            // RFC 6298 2.3 from the last report (the flow's own values replace it below).
            let rto = cc.rtt_us as u64 + (4 * info.rttvar_us as u64).max(1_000);
            info.rto_us = rto.clamp(RTO_MIN_US as u64, RTO_MAX_US as u64) as u32;
        }
        let cnt = i.peek.map(|p| p.state.cnt_retx);
        info.retransmits = cc.retransmit_events(cnt).min(u32::MAX as u64) as u32;
    }
    // Linux: Disorder once duplicate ACKs or SACKs arrive, Recovery once a loss is
    // detected and repaired (here: a hole retransmitted, or NewReno's fast recovery).
    let mut recovery = lost > 0;
    let mut disorder = !i.sb.sacked().is_empty();
    if let Some(p) = i.peek {
        let f = p.state;
        info.opts |= INFO_FRESH;
        info.srtt_us = f.srtt_us;
        info.rttvar_us = f.rttvar_us;
        if f.srtt_us > 0 {
            info.min_rtt_us = if info.min_rtt_us == 0 {
                f.srtt_us
            } else {
                info.min_rtt_us.min(f.srtt_us)
            };
        }
        // RFC 6298 with the fast path's bounds, doubled per timeout in a row (Linux's
        // icsk_rto includes the backoff too).
        let rto = rto_us(f, RTO_MIN_US, RTO_MAX_US, RTO_INITIAL_US) as u64;
        info.rto_us = (rto << f.rto_backoff.min(16)).min(RTO_MAX_US as u64) as u32;
        info.snd_wnd = f.snd_wnd;
        info.rcv_wnd = f.rx_avail;
        info.last_ack_recv_ms = p.now_us.wrapping_sub(f.heard_us) / 1_000;
        // What was sent at least once: after a go-back the data up to `recover` was sent
        // before and is outstanding again, as Linux keeps counting it in packets_out.
        let nxt = f.snd_una.wrapping_add(f.tx_sent);
        let end = nxt.wrapping_add(f.tx_avail);
        let mut high = nxt;
        if seq_lt(f.snd_una, f.recover) && seq_lt(high, f.recover) {
            high = if seq_lt(end, f.recover) {
                end
            } else {
                f.recover
            };
        }
        info.unacked_bytes = high.wrapping_sub(f.snd_una);
        info.notsent_bytes = end.wrapping_sub(high);
        info.sent_bytes_lo = high.wrapping_sub(i.snd_start);
        info.retrans_bytes_lo = p.retx_bytes;
        let fin_out = f.has(F_TX_FIN_SENT) && !f.has(F_TX_FIN_ACKED);
        let outstanding = info.unacked_bytes > 0 || fin_out;
        if outstanding {
            info.rto_backoff = f.rto_backoff;
        } else {
            // Nothing outstanding: the counter counts zero-window or keepalive probes.
            info.probes = f.rto_backoff;
        }
        recovery |= f.has(F_RECOVERY);
        disorder |= f.dupacks > 0;
    }
    info.ca_state = if i.rto.in_loss() {
        CA_LOSS
    } else if recovery {
        CA_RECOVERY
    } else if disorder {
        CA_DISORDER
    } else {
        CA_OPEN
    };
    info
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cc::{Algorithm, CcParams};
    use tas_fastpath::ctl::CcSample;

    fn at_ms(ms: u64) -> Instant {
        Instant::from_nanos(ms * 1_000_000)
    }

    #[test]
    fn timeouts_in_one_recovery_count_once_and_the_time_adds_up() {
        let mut r = RtoRecovery::default();
        assert!(!r.in_loss());
        r.on_rto(at_ms(1000), 5000, 9000);
        assert!(r.in_loss());
        // A second timeout before 9000 is acknowledged: the same recovery.
        r.on_rto(at_ms(1400), 5000, 9000);
        r.on_progress(at_ms(1500), 8999);
        assert!(r.in_loss(), "not yet: 9000 is not acknowledged");
        assert_eq!(r.time_ms(at_ms(1600)), 600, "the recovery under way counts");
        r.on_progress(at_ms(1700), 9000);
        assert!(!r.in_loss());
        assert_eq!(
            (r.total_rto, r.recoveries, r.time_ms(at_ms(5000))),
            (2, 1, 700)
        );
        // A later timeout starts a second recovery.
        r.on_rto(at_ms(6000), 20_000, 30_000);
        r.on_progress(at_ms(6250), 30_500);
        assert_eq!(
            (r.total_rto, r.recoveries, r.time_ms(at_ms(9000))),
            (3, 2, 950)
        );
        // Sequence numbers wrap.
        let mut r = RtoRecovery::default();
        r.on_rto(at_ms(0), u32::MAX - 10, 20);
        r.on_progress(at_ms(1), 5);
        assert!(r.in_loss());
        r.on_progress(at_ms(2), 20);
        assert!(!r.in_loss());
    }

    fn flow() -> FlowState {
        FlowState {
            snd_una: 1_000_001,
            tx_sent: 30_000,
            tx_avail: 5_000,
            snd_wnd: 64_000,
            rx_avail: 100_000,
            srtt_us: 300,
            rttvar_us: 50,
            heard_us: 9_000,
            mss: 1000,
            cnt_retx: 2,
            ..FlowState::default()
        }
    }

    fn inputs<'a>(
        cc: Option<&'a CcState>,
        sb: &'a Scoreboard,
        rto: &'a RtoRecovery,
        peek: Option<Peek<'a>>,
    ) -> Inputs<'a> {
        Inputs {
            opts: 0,
            mss: 1000,
            cc,
            sb,
            rto,
            snd_start: 1,
            rcv_space: 131_072,
            peek,
            now: at_ms(10),
        }
    }

    #[test]
    fn a_fresh_reply_reads_the_flow_and_congestion_control() {
        let p = CcParams::default();
        let mut cc = CcState::new(Algorithm::DctcpWindow, &p, 1000, 200, None);
        let s = |t, acked, retx| CcSample {
            now_us: t,
            acked,
            retx,
            srtt_us: 400,
            in_flight: 10_000,
            unsent: 1,
            ..CcSample::default()
        };
        cc.on_sample(&s(0, 0, 0), &p);
        cc.on_sample(&s(1000, 100_000, 1), &p);
        let (sb, rto) = (Scoreboard::default(), RtoRecovery::default());
        let f = flow();
        let i = conn_info(&inputs(
            Some(&cc),
            &sb,
            &rto,
            Some(Peek {
                state: &f,
                now_us: 12_500,
                retx_bytes: 1460,
            }),
        ));
        assert_eq!(i.opts, INFO_FOUND | INFO_FRESH);
        assert_eq!(
            (i.srtt_us, i.rttvar_us),
            (300, 50),
            "the flow's own, not the last report's"
        );
        assert_eq!(i.min_rtt_us, 200, "the handshake's sample is the smallest");
        assert_eq!(i.rto_us, 200_000, "300 + 4 * 50 µs, at least 200 ms");
        assert_eq!(
            (i.snd_wnd, i.rcv_wnd, i.rcv_ssthresh),
            (64_000, 100_000, 131_072)
        );
        assert_eq!(i.last_ack_recv_ms, 3, "3.5 ms since the last segment heard");
        assert_eq!((i.unacked_bytes, i.notsent_bytes), (30_000, 5_000));
        assert_eq!(
            i.sent_bytes_lo, 1_030_000,
            "from the first data byte to snd_nxt"
        );
        assert_eq!(i.retrans_bytes_lo, 1460);
        assert_eq!(i.retransmits, 2, "one reported, one more since");
        assert_eq!(i.delivery_kbps, 800_000, "100 kB in 1 ms");
        assert_eq!((i.pacing_kbps, i.cwnd), (0, cc.limits().cwnd));
        assert_eq!(i.snd_ssthresh, cc.ssthresh);
        assert_eq!((i.ca_state, i.rto_backoff, i.probes), (CA_OPEN, 0, 0));
    }

    #[test]
    fn loss_states_and_the_go_back() {
        let (mut sb, mut rto) = (Scoreboard::default(), RtoRecovery::default());
        let mut f = flow();
        fn peek(f: &FlowState) -> Option<Peek<'_>> {
            Some(Peek {
                state: f,
                now_us: 9_000,
                retx_bytes: 0,
            })
        }
        f.dupacks = 1;
        assert_eq!(
            conn_info(&inputs(None, &sb, &rto, peek(&f))).ca_state,
            CA_DISORDER
        );
        f.flags |= F_RECOVERY;
        assert_eq!(
            conn_info(&inputs(None, &sb, &rto, peek(&f))).ca_state,
            CA_RECOVERY
        );
        f.flags = 0;
        f.dupacks = 0;
        // SACKed data above a hole: disorder; once the hole is retransmitted, recovery.
        sb.on_ack(
            0,
            1000,
            1_000_001,
            1_030_001,
            1000,
            &[(1_001_001, 1_005_001)],
        );
        let i = conn_info(&inputs(None, &sb, &rto, peek(&f)));
        assert_eq!((i.ca_state, i.sacked, i.lost), (CA_DISORDER, 4, 0));
        sb.on_ack(
            10_000,
            1000,
            1_000_001,
            1_030_001,
            1000,
            &[(1_001_001, 1_005_001)],
        );
        let i = conn_info(&inputs(None, &sb, &rto, peek(&f)));
        assert_eq!(
            (i.ca_state, i.sacked, i.lost, i.retrans),
            (CA_RECOVERY, 4, 1, 1)
        );
        // A timeout: the core went back (everything outstanding is unsent again, recover
        // remembers how far it had sent).
        sb.reset();
        rto.on_rto(at_ms(5), f.snd_una, f.snd_una + 30_000);
        f.recover = f.snd_una + 30_000;
        f.tx_avail += f.tx_sent;
        f.tx_sent = 0;
        f.rto_backoff = 2;
        let i = conn_info(&inputs(None, &sb, &rto, peek(&f)));
        assert_eq!(i.ca_state, CA_LOSS);
        assert_eq!(
            (i.unacked_bytes, i.notsent_bytes),
            (30_000, 5_000),
            "sent once, so not 'not sent'"
        );
        assert_eq!(i.sent_bytes_lo, 1_030_000);
        assert_eq!((i.rto_backoff, i.probes, i.rto_us), (2, 0, 800_000));
        assert_eq!(
            (i.total_rto, i.total_rto_recoveries, i.total_rto_time_ms),
            (1, 1, 5)
        );
        rto.on_progress(at_ms(8), f.snd_una + 30_000);
        assert_eq!(
            conn_info(&inputs(None, &sb, &rto, peek(&f))).ca_state,
            CA_OPEN
        );
        // Nothing outstanding: the backoff counts probes.
        let mut idle = flow();
        (idle.tx_sent, idle.tx_avail, idle.rto_backoff, idle.snd_wnd) = (0, 10, 3, 0);
        let i = conn_info(&inputs(None, &sb, &rto, peek(&idle)));
        assert_eq!((i.rto_backoff, i.probes, i.notsent_bytes), (0, 3, 10));
    }

    #[test]
    fn without_the_flow_only_the_slow_paths_view() {
        let (sb, rto) = (Scoreboard::default(), RtoRecovery::default());
        let i = conn_info(&inputs(None, &sb, &rto, None));
        assert_eq!(i.opts & INFO_FRESH, 0);
        assert_eq!(
            (i.cwnd, i.snd_ssthresh, i.last_ack_recv_ms, i.rcv_wnd),
            (u32::MAX, u32::MAX, u32::MAX, 131_072)
        );
        assert_eq!((i.snd_wnd, i.sent_bytes_lo, i.ca_state), (0, 0, CA_OPEN));
    }
}
