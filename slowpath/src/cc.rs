//! Congestion control: the slow path's per-flow control loop.
//!
//! The fast path counts, per flow, bytes acknowledged, bytes acknowledged with ECE,
//! duplicate ACKs and retransmissions, and keeps the smoothed RTT; once per control
//! interval (`cc_interval_rtts` RTTs, at least `cc_interval_min_us`) it reports them
//! ([`CcSample`]). [`CcState::on_sample`] turns the differences since the previous
//! report into a new congestion window and/or pacing rate, which the slow path sends
//! back with `Command::SetCc`. Nothing here runs per segment.
//!
//! Algorithms (see docs/congestion.md for the reasoning and the parameters):
//! - `dctcp-window`: RFC 8257 — alpha EWMA of the marked fraction, cwnd cut by alpha/2
//!   once per interval with marks, slow start and congestion avoidance otherwise.
//! - `dctcp-rate`: the same alpha, applied to a pacing rate (TAS's rate-based DCTCP):
//!   multiplicative decrease by alpha/2, additive increase, doubling in slow start.
//! - `timely`: Mittal et al., SIGCOMM 2015 — rate from the RTT gradient, with the
//!   T_low/T_high guards and hyper-active increase after five negative gradients.
//! - `cubic`: RFC 9438 — for paths without ECN (marks, when negotiated, count as loss:
//!   RFC 3168's response).
//! - `fixed`: a constant pacing rate; `unlimited`: no limit (peer window only).

use std::fmt;
use std::str::FromStr;

use tas_fastpath::ctl::CcSample;

/// The algorithm of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Algorithm {
    /// DCTCP on a congestion window (RFC 8257).
    #[default]
    DctcpWindow,
    /// DCTCP on a pacing rate.
    DctcpRate,
    /// TIMELY (RTT gradient, rate).
    Timely,
    /// CUBIC (RFC 9438, window).
    Cubic,
    /// A fixed pacing rate (`CcParams::fixed_rate_kbps`, or the per-flow rate given).
    Fixed,
    /// No congestion control.
    Unlimited,
}

impl Algorithm {
    /// Every algorithm, in the order the docs list them.
    pub const ALL: [Algorithm; 6] = [
        Algorithm::DctcpWindow,
        Algorithm::DctcpRate,
        Algorithm::Timely,
        Algorithm::Cubic,
        Algorithm::Fixed,
        Algorithm::Unlimited,
    ];
    /// The configuration / API name.
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::DctcpWindow => "dctcp-window",
            Algorithm::DctcpRate => "dctcp-rate",
            Algorithm::Timely => "timely",
            Algorithm::Cubic => "cubic",
            Algorithm::Fixed => "fixed",
            Algorithm::Unlimited => "unlimited",
        }
    }
    fn is_dctcp(self) -> bool {
        matches!(self, Algorithm::DctcpWindow | Algorithm::DctcpRate)
    }
    fn is_rate_based(self) -> bool {
        matches!(self, Algorithm::DctcpRate | Algorithm::Timely | Algorithm::Fixed)
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown algorithm name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown congestion control '{0}' (known: dctcp-window, dctcp-rate, timely, cubic, fixed, unlimited)")]
pub struct UnknownAlgorithm(pub String);

impl FromStr for Algorithm {
    type Err = UnknownAlgorithm;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Algorithm::ALL
            .into_iter()
            .find(|a| a.name() == s || (s == "dctcp" && *a == Algorithm::DctcpWindow))
            .ok_or_else(|| UnknownAlgorithm(s.to_string()))
    }
}

/// Parameters of every algorithm (the `[cc]` section of the configuration file).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CcParams {
    /// Algorithm of new connections.
    pub algorithm: Algorithm,
    /// Negotiate ECN (RFC 3168) on new connections.
    pub ecn: bool,
    /// Initial congestion window in segments (RFC 6928: 10).
    pub initial_window: u32,
    /// DCTCP's EWMA gain g (RFC 8257 recommends 1/16).
    pub dctcp_g: f64,
    /// Additive increase of rate-based DCTCP per `rate_step_us` of time, kbit/s.
    pub rate_step_kbps: u32,
    /// The time base of rate-based DCTCP and of TIMELY's δ: one step per this many µs
    /// (default [`RATE_STEP_INTERVAL_US`]).
    pub rate_step_us: u32,
    /// Lowest pacing rate, kbit/s.
    pub min_rate_kbps: u32,
    /// Highest pacing rate, kbit/s (the line rate is a good choice).
    pub max_rate_kbps: u32,
    /// Rate of `fixed` flows, kbit/s.
    pub fixed_rate_kbps: u32,
    /// TIMELY: below this RTT (µs) always increase.
    pub timely_t_low_us: u32,
    /// TIMELY: above this RTT (µs) always decrease.
    pub timely_t_high_us: u32,
    /// TIMELY: EWMA weight of a new RTT difference.
    pub timely_alpha: f64,
    /// TIMELY: multiplicative decrease factor.
    pub timely_beta: f64,
    /// TIMELY: additive increase step δ, kbit/s.
    pub timely_delta_kbps: u32,
    /// CUBIC's C (RFC 9438: 0.4).
    pub cubic_c: f64,
    /// CUBIC's multiplicative decrease β (RFC 9438: 0.7).
    pub cubic_beta: f64,
}

impl Default for CcParams {
    fn default() -> Self {
        CcParams {
            algorithm: Algorithm::DctcpWindow,
            ecn: true,
            initial_window: 10,
            dctcp_g: 1.0 / 16.0,
            rate_step_kbps: 10_000,
            rate_step_us: RATE_STEP_INTERVAL_US,
            min_rate_kbps: 1_000,
            max_rate_kbps: 40_000_000,
            fixed_rate_kbps: 100_000,
            timely_t_low_us: 50,
            timely_t_high_us: 500,
            timely_alpha: 0.875,
            timely_beta: 0.8,
            timely_delta_kbps: 10_000,
            cubic_c: 0.4,
            cubic_beta: 0.7,
        }
    }
}

/// Rate-based DCTCP changes its rate per this much time, not per report: the additive
/// step (`rate_step_kbps`) is added once per 400 µs, and a report with marks cuts by
/// alpha/2 once per 400 µs it covers (at most once per marked segment). A flow reports
/// on its first ACK after two smoothed RTTs, so a slow flow, whose ACKs are rare, or a
/// flow that joined behind a queue and measures a longer RTT, reports less often; per
/// report, such flows grew many times slower than the others and starved
/// (docs/congestion.md). A fixed time base, the same for every flow, makes the
/// increase and the decrease symmetric between flows, which AIMD needs to converge.
/// 400 µs: 10 Mbit/s per 400 µs (25 Gbit/s per second) kept the 1 Gbit/s simulated
/// bottleneck fair and its queue bounded with 2-8 flows; 100-200 µs overshot into drops
/// with 8 flows (docs/benchmarks.md).
pub const RATE_STEP_INTERVAL_US: u32 = 400;
/// A report counts for at most this many rate steps (a flow that reported after a long
/// pause does not jump).
const RATE_MAX_STEPS: f64 = 64.0;
/// TIMELY's δ counts for at most this many steps per report: more let its queue grow
/// with 8 flows in the simulator (p99 258 kB with 64 against 52 kB with 4).
const TIMELY_MAX_STEPS: f64 = 4.0;

/// What the fast path is told: window and rate (0 = no limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// Congestion window in bytes (0 = none).
    pub cwnd: u32,
    /// Pacing rate in kbit/s (0 = unpaced).
    pub rate_kbps: u32,
}

/// The congestion-control state of one connection.
#[derive(Debug, Clone, PartialEq)]
pub struct CcState {
    /// The algorithm.
    pub alg: Algorithm,
    mss: u32,
    /// Congestion window, bytes (window-based algorithms).
    pub cwnd: u32,
    /// Slow-start threshold, bytes.
    pub ssthresh: u32,
    /// Pacing rate, kbit/s (rate-based algorithms).
    pub rate_kbps: u32,
    /// In slow start (rate-based: doubling).
    pub slow_start: bool,
    /// DCTCP's alpha.
    pub alpha: f64,
    /// Marked fraction of the last interval.
    pub ecn_fraction: f64,
    /// Latest smoothed RTT, µs.
    pub rtt_us: u32,
    /// Smallest RTT seen, µs.
    pub min_rtt_us: u32,
    /// Retransmission events counted so far.
    pub retransmits: u64,
    /// Control intervals run.
    pub intervals: u64,
    /// Retransmission events the fast path counted up to the last report (its wrapping
    /// 16-bit counter, unwrapped; the counter starts at 0 when the flow is installed).
    retx_reported: u64,
    /// Bytes to be acknowledged before loss may cut again (DCTCP: once per window).
    loss_guard: u32,
    /// Bytes acknowledged in the last interval / its length: the measured rate, kbit/s.
    pub measured_kbps: u32,
    last: Option<CcSample>,
    // TIMELY
    prev_rtt_us: u32,
    rtt_diff_us: f64,
    neg_gradients: u32,
    // CUBIC (in segments and µs)
    w_max: f64,
    epoch_start_us: Option<u64>,
    w_est: f64,
    k_s: f64,
    elapsed_us: u64,
}

impl CcState {
    /// State for a new flow with payload size `mss` and handshake RTT `srtt_us`. A
    /// per-flow rate (for `fixed`) may be given.
    pub fn new(alg: Algorithm, p: &CcParams, mss: u16, srtt_us: u32, fixed_kbps: Option<u32>) -> Self {
        let mss = (mss as u32).max(1);
        let iw = p.initial_window.max(1) * mss;
        let rtt = srtt_us.max(1);
        let initial_rate = match alg {
            Algorithm::Fixed => fixed_kbps.unwrap_or(p.fixed_rate_kbps).max(1),
            // One initial window per RTT.
            _ => ((iw as u64 * 8_000 / rtt as u64) as u32).clamp(p.min_rate_kbps.max(1), p.max_rate_kbps.max(1)),
        };
        CcState {
            alg,
            mss,
            cwnd: iw,
            ssthresh: u32::MAX,
            rate_kbps: initial_rate,
            slow_start: true,
            // RFC 8257 3.3: alpha starts at 1 (a conservative first reaction).
            alpha: 1.0,
            ecn_fraction: 0.0,
            rtt_us: srtt_us,
            min_rtt_us: srtt_us.max(1),
            retransmits: 0,
            intervals: 0,
            retx_reported: 0,
            loss_guard: 0,
            measured_kbps: 0,
            last: None,
            prev_rtt_us: srtt_us,
            rtt_diff_us: 0.0,
            neg_gradients: 0,
            w_max: 0.0,
            epoch_start_us: None,
            w_est: 0.0,
            k_s: 0.0,
            elapsed_us: 0,
        }
    }

    /// Retransmission events of the flow (`TCP_INFO`'s `total_retrans`): those reported,
    /// plus those since the last report if the flow's current counter `cnt_retx` is known.
    pub fn retransmit_events(&self, cnt_retx: Option<u16>) -> u64 {
        let last = self.last.map_or(0, |l| l.retx);
        self.retx_reported + cnt_retx.map_or(0, |c| c.wrapping_sub(last) as u64)
    }

    /// RTT variation of the latest report, µs (0 before the first).
    pub fn rttvar_us(&self) -> u32 {
        self.last.map_or(0, |s| s.rttvar_us)
    }

    /// The limits the fast path enforces now.
    pub fn limits(&self) -> Limits {
        match self.alg {
            Algorithm::Unlimited => Limits::default(),
            Algorithm::Fixed => Limits { cwnd: 0, rate_kbps: self.rate_kbps.max(1) },
            // A rate alone does not bound what a flow puts in flight: between two reports
            // (two RTTs, longer as the queue it builds grows) a rate set too high fills the
            // bottleneck's buffer — a joining TIMELY flow starts at one initial window per
            // handshake RTT, 2.4 Gbit/s on the simulator's path, and its first report came
            // after 5.5 ms with a 2.8 ms queue, which cut every other flow to the floor.
            // So rate-based flows also get a window of twice their rate times the RTT
            // (BBR's cwnd_gain of 2): the pacer decides in the steady state, the window
            // only bounds a wrong rate's damage to about one of the flow's own RTTs.
            a if a.is_rate_based() => {
                let rate = self.rate_kbps.max(1);
                let bdp = rate as u64 * self.rtt_us.max(1) as u64 / 8_000;
                let cwnd = (2 * bdp).clamp(2 * self.mss as u64, 1 << 30) as u32;
                Limits { cwnd, rate_kbps: rate }
            }
            _ => Limits { cwnd: self.cwnd.max(self.mss), rate_kbps: 0 },
        }
    }

    fn min_cwnd(&self) -> u32 {
        2 * self.mss
    }

    /// A report from the fast path; returns the new limits if they changed.
    pub fn on_sample(&mut self, s: &CcSample, p: &CcParams) -> Option<Limits> {
        let before = self.limits();
        self.retx_reported += s.retx.wrapping_sub(self.last.map_or(0, |l| l.retx)) as u64;
        let Some(last) = self.last.replace(*s) else {
            // The first report only sets the baseline.
            self.rtt_us = s.srtt_us;
            return None;
        };
        let acked = s.acked.wrapping_sub(last.acked);
        let ecn = s.ecn.wrapping_sub(last.ecn).min(acked);
        let retx = s.retx.wrapping_sub(last.retx) as u32;
        let dt_us = s.now_us.wrapping_sub(last.now_us).max(1) as u64;
        self.intervals += 1;
        self.retransmits += retx as u64;
        self.rtt_us = s.srtt_us;
        if s.srtt_us > 0 {
            self.min_rtt_us = self.min_rtt_us.min(s.srtt_us).max(1);
        }
        self.measured_kbps = (acked as u64 * 8_000 / dt_us).min(u32::MAX as u64) as u32;
        self.elapsed_us += dt_us;
        let fraction = if acked > 0 { ecn as f64 / acked as f64 } else { 0.0 };
        self.ecn_fraction = fraction;
        // RFC 5681 / RFC 8257 3.5: loss halves the window once per window of data, not
        // once per lost segment or per report: retransmissions (SACK repairs spread over
        // several reports) within the window outstanding at the last reaction do not cut
        // again. `loss_guard` is the data still to be acknowledged before another cut.
        self.loss_guard = self.loss_guard.saturating_sub(acked);
        let loss = retx > 0 && (self.loss_guard == 0 || !self.alg.is_dctcp());
        if loss {
            self.loss_guard = s.in_flight.max(self.mss);
        }
        // The application may not have used what it was given: do not grow then.
        let mut backlogged = s.unsent > 0 || s.in_flight as u64 * 2 >= self.cwnd as u64;
        if retx > 0 && !loss && self.alg.is_dctcp() {
            // Repairing the losses already answered: no growth meanwhile (the window
            // was just cut for them).
            backlogged = false;
        }
        match self.alg {
            Algorithm::DctcpWindow | Algorithm::DctcpRate => {
                // RFC 8257 3.3: alpha = (1 - g) * alpha + g * F, once per observation
                // window (here: per control interval) with acknowledged data.
                if acked > 0 {
                    self.alpha = (1.0 - p.dctcp_g) * self.alpha + p.dctcp_g * fraction;
                }
                if self.alg == Algorithm::DctcpWindow {
                    self.dctcp_window(acked, ecn, loss, backlogged);
                } else {
                    self.dctcp_rate(ecn, loss, backlogged, dt_us, p);
                }
            }
            Algorithm::Timely => self.timely(s.srtt_us, loss, backlogged, dt_us, p),
            Algorithm::Cubic => self.cubic(acked, ecn > 0 || loss, backlogged, p),
            Algorithm::Fixed | Algorithm::Unlimited => {}
        }
        let after = self.limits();
        tracing::trace!(
            alg = %self.alg, dt_us, acked, ecn, retx, srtt_us = s.srtt_us, alpha = self.alpha,
            rate_kbps = self.rate_kbps, cwnd = self.cwnd, measured_kbps = self.measured_kbps,
            "congestion control interval"
        );
        (after != before).then_some(after)
    }

    /// A retransmission timeout (RFC 5681 3.1: the loss window is one segment).
    pub fn on_timeout(&mut self, p: &CcParams) -> Option<Limits> {
        let before = self.limits();
        self.retransmits += 1;
        // The retransmissions that follow the timeout repair the same window: they do
        // not halve again (DCTCP; see `on_sample`).
        self.loss_guard = match self.alg {
            Algorithm::DctcpWindow => self.cwnd,
            Algorithm::DctcpRate => (self.rate_kbps as u64 * self.rtt_us as u64 / 8_000).min(u32::MAX as u64) as u32,
            _ => 0,
        }
        .max(self.mss);
        match self.alg {
            Algorithm::DctcpWindow | Algorithm::Cubic => {
                self.ssthresh = (self.cwnd / 2).max(self.min_cwnd());
                self.cwnd = self.mss;
                self.slow_start = true;
                self.epoch_start_us = None;
                self.w_max = self.ssthresh as f64 / self.mss as f64;
            }
            Algorithm::DctcpRate | Algorithm::Timely => {
                self.rate_kbps = (self.rate_kbps / 2).max(p.min_rate_kbps.max(1));
                self.slow_start = false;
            }
            Algorithm::Fixed | Algorithm::Unlimited => {}
        }
        let after = self.limits();
        (after != before).then_some(after)
    }

    fn dctcp_window(&mut self, acked: u32, ecn: u32, loss: bool, backlogged: bool) {
        if loss {
            // RFC 8257 3.5: loss is answered as by standard TCP (halve).
            self.ssthresh = (self.cwnd / 2).max(self.min_cwnd());
            self.cwnd = self.ssthresh;
            self.slow_start = false;
        } else if ecn > 0 {
            // RFC 8257 3.3: cwnd = cwnd * (1 - alpha / 2).
            let c = (self.cwnd as f64 * (1.0 - self.alpha / 2.0)) as u32;
            self.cwnd = c.max(self.min_cwnd());
            self.ssthresh = self.cwnd;
            self.slow_start = false;
        } else if backlogged {
            if self.cwnd < self.ssthresh {
                // Slow start: one MSS per MSS acknowledged.
                self.cwnd = self.cwnd.saturating_add(acked);
            } else {
                // Congestion avoidance: one MSS per window acknowledged.
                let inc = (self.mss as u64 * acked as u64 / self.cwnd.max(1) as u64) as u32;
                self.cwnd = self.cwnd.saturating_add(inc.max(1));
            }
        }
        self.cwnd = self.cwnd.min(1 << 30);
    }

    /// How many steps of `rate_step_us` a report `dt_us` long covers (1 to
    /// [`RATE_MAX_STEPS`]).
    fn rate_steps(dt_us: u64, p: &CcParams) -> f64 {
        (dt_us as f64 / p.rate_step_us.max(1) as f64).clamp(1.0, RATE_MAX_STEPS)
    }

    fn dctcp_rate(&mut self, ecn: u32, loss: bool, backlogged: bool, dt_us: u64, p: &CcParams) {
        let (lo, hi) = (p.min_rate_kbps.max(1), p.max_rate_kbps.max(1));
        let mut r = self.rate_kbps as f64;
        let k = Self::rate_steps(dt_us, p);
        if loss {
            r /= 2.0;
            self.slow_start = false;
        } else if ecn > 0 {
            // RFC 8257 3.3's cut, once per step interval that saw marks: at most k of
            // them, and at most one per marked segment.
            let m = (ecn as f64 / self.mss as f64).clamp(1.0, k);
            r *= (1.0 - self.alpha / 2.0).powf(m);
            self.slow_start = false;
        }
        if !loss && backlogged {
            if self.slow_start {
                // Doubling, but never beyond twice what the network delivered.
                let cap = 2.0 * self.measured_kbps.max(lo) as f64;
                r = (r * 2.0).min(cap.max(r));
            } else {
                // Additive increase per step interval, marked or not (as the window
                // variant grows by one segment per window acknowledged and cuts once
                // per window with marks).
                r += p.rate_step_kbps as f64 * k;
            }
        }
        self.rate_kbps = (r as u64).clamp(lo as u64, hi as u64) as u32;
    }

    fn timely(&mut self, new_rtt: u32, loss: bool, backlogged: bool, dt_us: u64, p: &CcParams) {
        let (lo, hi) = (p.min_rate_kbps.max(1), p.max_rate_kbps.max(1));
        // TIMELY Algorithm 1: new_rtt_diff = new_rtt - prev_rtt;
        // rtt_diff = (1 - alpha) * rtt_diff + alpha * new_rtt_diff.
        let new_diff = new_rtt as f64 - self.prev_rtt_us as f64;
        self.prev_rtt_us = new_rtt;
        self.rtt_diff_us = (1.0 - p.timely_alpha) * self.rtt_diff_us + p.timely_alpha * new_diff;
        let gradient = self.rtt_diff_us / self.min_rtt_us.max(1) as f64;
        // δ per step interval of time, not per report (as for rate-based DCTCP): a flow
        // at a low rate reports rarely and would otherwise never catch up.
        let delta = p.timely_delta_kbps as f64 * Self::rate_steps(dt_us, p).min(TIMELY_MAX_STEPS);
        let mut r = self.rate_kbps as f64;
        if loss {
            r /= 2.0;
            self.neg_gradients = 0;
        } else if new_rtt < p.timely_t_low_us {
            if backlogged {
                r += delta;
            }
        } else if new_rtt > p.timely_t_high_us {
            r *= 1.0 - p.timely_beta * (1.0 - p.timely_t_high_us as f64 / new_rtt as f64);
            self.neg_gradients = 0;
        } else if gradient <= 0.0 {
            self.neg_gradients += 1;
            // Hyper-active increase: five increase steps after five negative gradients.
            let n = if self.neg_gradients >= 5 { 5.0 } else { 1.0 };
            if backlogged {
                r += n * delta;
            }
        } else {
            r *= 1.0 - p.timely_beta * gradient.min(1.0);
            self.neg_gradients = 0;
        }
        self.slow_start = false;
        self.rate_kbps = (r as u64).clamp(lo as u64, hi as u64) as u32;
    }

    fn cubic(&mut self, acked: u32, congestion: bool, backlogged: bool, p: &CcParams) {
        let mss = self.mss as f64;
        let cwnd = self.cwnd as f64 / mss;
        if congestion {
            // RFC 9438 4.6/4.7: fast convergence, then W_max and the multiplicative decrease.
            self.w_max = if cwnd < self.w_max { cwnd * (1.0 + p.cubic_beta) / 2.0 } else { cwnd };
            let next = (cwnd * p.cubic_beta).max(2.0);
            self.cwnd = (next * mss) as u32;
            self.ssthresh = self.cwnd;
            self.slow_start = false;
            self.epoch_start_us = None;
            return;
        }
        if !backlogged || acked == 0 {
            return;
        }
        if self.cwnd < self.ssthresh {
            self.cwnd = self.cwnd.saturating_add(acked).min(1 << 30);
            return;
        }
        let now = self.elapsed_us;
        if self.epoch_start_us.is_none() {
            // RFC 9438 4.2: K = cbrt(W_max (1 - beta) / C), from the start of the epoch.
            self.epoch_start_us = Some(now);
            if self.w_max < cwnd {
                self.w_max = cwnd;
            }
            self.k_s = (self.w_max * (1.0 - p.cubic_beta) / p.cubic_c).cbrt();
            self.w_est = cwnd;
        }
        let t = (now - self.epoch_start_us.unwrap_or(now)) as f64 / 1e6 + self.rtt_us as f64 / 1e6;
        let target = p.cubic_c * (t - self.k_s).powi(3) + self.w_max;
        // RFC 9438 4.3: the Reno-friendly estimate, alpha = 3 (1 - beta) / (1 + beta).
        let alpha = 3.0 * (1.0 - p.cubic_beta) / (1.0 + p.cubic_beta);
        self.w_est += alpha * (acked as f64 / mss) / cwnd.max(1.0);
        // At most 1.5x per interval (RFC 9438 4.4's cap on the target).
        let next = target.max(self.w_est).clamp(cwnd, cwnd * 1.5);
        self.cwnd = ((next * mss) as u32).min(1 << 30);
    }
}

/// The control API's view of a flow's congestion control.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct CcInfo {
    /// Algorithm.
    pub algorithm: Algorithm,
    /// Congestion window, bytes (0 if the algorithm does not use one).
    pub cwnd: u32,
    /// Pacing rate, kbit/s (0 if unpaced).
    pub rate_kbps: u32,
    /// DCTCP's alpha.
    pub alpha: f64,
    /// Marked fraction of the last interval.
    pub ecn_fraction: f64,
    /// Smoothed RTT, µs.
    pub rtt_us: u32,
    /// Retransmission events.
    pub retransmits: u64,
    /// Measured delivery rate of the last interval, kbit/s.
    pub measured_kbps: u32,
    /// In slow start.
    pub slow_start: bool,
}

impl CcState {
    /// The control API's view.
    pub fn info(&self) -> CcInfo {
        let l = self.limits();
        CcInfo {
            algorithm: self.alg,
            cwnd: l.cwnd,
            rate_kbps: l.rate_kbps,
            alpha: self.alpha,
            ecn_fraction: self.ecn_fraction,
            rtt_us: self.rtt_us,
            retransmits: self.retransmits,
            measured_kbps: self.measured_kbps,
            slow_start: self.slow_start,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(t_us: u32, acked: u32, ecn: u32, retx: u16, srtt: u32) -> CcSample {
        CcSample { now_us: t_us, acked, ecn, dupacks: 0, retx, srtt_us: srtt, rttvar_us: 0, in_flight: 100_000, unsent: 100_000, snd_una: 0 }
    }

    #[test]
    fn retransmit_events_unwrap_the_cores_16_bit_counter() {
        let p = CcParams::default();
        let mut s = CcState::new(Algorithm::DctcpWindow, &p, 1000, 100, None);
        assert_eq!(s.retransmit_events(Some(3)), 3, "before any report: the counter from 0");
        s.on_sample(&sample(0, 0, 0, 3, 100), &p);
        assert_eq!(s.retransmit_events(None), 3, "the baseline report counts too");
        s.on_sample(&sample(200, 0, 0, 65_535, 100), &p);
        s.on_sample(&sample(400, 0, 0, 2, 100), &p);
        assert_eq!(s.retransmit_events(None), 65_538, "across the wrap");
        assert_eq!(s.retransmit_events(Some(5)), 65_541, "plus those since the last report");
    }

    #[test]
    fn names_round_trip() {
        for a in Algorithm::ALL {
            assert_eq!(a.name().parse::<Algorithm>().unwrap(), a);
        }
        assert_eq!("dctcp".parse::<Algorithm>().unwrap(), Algorithm::DctcpWindow);
        assert!("reno".parse::<Algorithm>().is_err());
    }

    #[test]
    fn dctcp_alpha_follows_rfc8257() {
        let p = CcParams::default();
        let mut s = CcState::new(Algorithm::DctcpWindow, &p, 1000, 100, None);
        assert!(s.on_sample(&sample(0, 0, 0, 0, 100), &p).is_none(), "baseline");
        // Every interval: 100 kB acked, 50% marked.
        let (mut acked, mut ecn) = (0u32, 0u32);
        for i in 1..=200u32 {
            acked += 100_000;
            ecn += 50_000;
            s.on_sample(&sample(i * 200, acked, ecn, 0, 100), &p);
        }
        assert!((s.alpha - 0.5).abs() < 0.01, "alpha converges to the marked fraction: {}", s.alpha);
        assert!((s.ecn_fraction - 0.5).abs() < 1e-9);
        assert_eq!(s.cwnd, 2000, "200 marked intervals took cwnd down to its 2-MSS floor");
        // One more marked interval cuts cwnd by alpha/2 = 25%.
        s.cwnd = 100_000;
        let before = s.cwnd;
        acked += 100_000;
        ecn += 50_000;
        s.on_sample(&sample(201 * 200, acked, ecn, 0, 100), &p);
        let want = before as f64 * (1.0 - s.alpha / 2.0);
        assert!((s.cwnd as f64 - want).abs() <= want * 0.01 + 1.0, "{} vs {want}", s.cwnd);
        assert!(!s.slow_start);
    }

    #[test]
    fn dctcp_window_slow_start_then_halves_on_loss() {
        let p = CcParams::default();
        let mut s = CcState::new(Algorithm::DctcpWindow, &p, 1000, 100, None);
        assert_eq!(s.limits(), Limits { cwnd: 10_000, rate_kbps: 0 });
        s.on_sample(&sample(0, 0, 0, 0, 100), &p);
        s.on_sample(&sample(200, 10_000, 0, 0, 100), &p);
        assert_eq!(s.cwnd, 20_000, "slow start adds what was acked");
        let l = s.on_sample(&sample(400, 20_000, 0, 1, 100), &p).expect("changed");
        assert_eq!(l.cwnd, 10_000, "loss halves");
        s.on_sample(&sample(600, 30_000, 0, 1, 100), &p);
        assert_eq!(s.cwnd, 11_000, "congestion avoidance: one MSS per window");
        s.on_timeout(&p);
        assert_eq!(s.cwnd, 1000, "RTO: one segment");
    }

    #[test]
    fn dctcp_halves_once_per_window_of_loss() {
        let p = CcParams::default();
        for alg in [Algorithm::DctcpWindow, Algorithm::DctcpRate] {
            let mut s = CcState::new(alg, &p, 1000, 100, None);
            s.slow_start = false;
            s.ssthresh = 0;
            s.cwnd = 100_000;
            s.on_sample(&sample(0, 0, 0, 0, 100), &p);
            let (w0, r0) = (s.cwnd, s.rate_kbps);
            // A loss with 100 kB in flight: halve.
            s.on_sample(&sample(200, 10_000, 0, 1, 100), &p);
            assert_eq!((s.cwnd, s.rate_kbps), if alg == Algorithm::DctcpWindow { (w0 / 2, r0) } else { (w0, r0 / 2) }, "{alg}");
            let (w1, r1) = (s.cwnd, s.rate_kbps);
            // More retransmissions before that window is acknowledged: no second cut.
            s.on_sample(&sample(400, 60_000, 0, 2, 100), &p);
            assert!(s.cwnd >= w1 && s.rate_kbps >= r1, "{alg}: cut twice in one window");
            // Once 100 kB more are acknowledged, a new loss halves again.
            s.on_sample(&sample(600, 120_000, 0, 3, 100), &p);
            assert!(s.cwnd < w1 || s.rate_kbps < r1, "{alg}: a loss in the next window is answered");
            assert!(s.cwnd >= s.min_cwnd(), "never below 2 MSS without a timeout");
        }
    }

    #[test]
    fn rate_dctcp_and_fixed_and_unlimited() {
        let p = CcParams::default();
        let mut s = CcState::new(Algorithm::DctcpRate, &p, 1000, 100, None);
        let r0 = s.rate_kbps;
        assert_eq!(r0, 800_000, "10 segments per 100 µs = 800 Mbit/s");
        s.on_sample(&sample(0, 0, 0, 0, 100), &p);
        // 10 kB acknowledged in 200 µs: 400 Mbit/s delivered, so slow start may not
        // go beyond 800 Mbit/s.
        s.on_sample(&sample(200, 10_000, 0, 0, 100), &p);
        assert_eq!(s.rate_kbps, r0, "slow start: at most twice the delivered rate");
        s.on_sample(&sample(400, 50_000, 0, 0, 100), &p);
        assert_eq!(s.rate_kbps, 2 * r0, "slow start doubles");
        // Marks: one cut by alpha/2 (the 200 µs report is shorter than one 400 µs step),
        // plus one additive step.
        s.on_sample(&sample(600, 60_000, 5_000, 0, 100), &p);
        assert!(!s.slow_start);
        assert_eq!(s.rate_kbps, (2.0 * r0 as f64 * (1.0 - s.alpha / 2.0) + p.rate_step_kbps as f64) as u32);
        // A report covering 4 ms (ten steps) with 3 marked segments: three cuts, ten steps.
        let (r1, a) = (s.rate_kbps as f64, s.alpha);
        s.on_sample(&sample(4600, 70_000, 8_000, 0, 100), &p);
        let a2 = (1.0 - p.dctcp_g) * a + p.dctcp_g * 0.3;
        let want = r1 * (1.0 - a2 / 2.0).powi(3) + 10.0 * p.rate_step_kbps as f64;
        assert!((s.rate_kbps as f64 - want).abs() < 2.0, "{} vs {want}", s.rate_kbps);
        let f = CcState::new(Algorithm::Fixed, &p, 1000, 100, Some(5_000));
        assert_eq!(f.limits(), Limits { cwnd: 0, rate_kbps: 5_000 });
        let u = CcState::new(Algorithm::Unlimited, &p, 1000, 100, None);
        assert_eq!(u.limits(), Limits::default());
    }

    #[test]
    fn timely_reacts_to_rtt() {
        let p = CcParams::default();
        let mut s = CcState::new(Algorithm::Timely, &p, 1000, 40, None);
        s.on_sample(&sample(0, 0, 0, 0, 40), &p);
        let r = s.rate_kbps;
        s.on_sample(&sample(100, 10_000, 0, 0, 40), &p);
        assert_eq!(s.rate_kbps, r + p.timely_delta_kbps, "below T_low: additive increase");
        s.on_sample(&sample(200, 20_000, 0, 0, 1000), &p);
        let want = ((r + p.timely_delta_kbps) as f64 * (1.0 - 0.8 * 0.5)) as u32;
        assert_eq!(s.rate_kbps, want, "above T_high: decrease by beta (1 - T_high/rtt)");
        // A rising RTT between the thresholds decreases, a falling one increases.
        s.on_sample(&sample(300, 30_000, 0, 0, 200), &p);
        let r1 = s.rate_kbps;
        s.on_sample(&sample(400, 40_000, 0, 0, 300), &p);
        assert!(s.rate_kbps < r1, "positive gradient decreases");
    }

    #[test]
    fn rate_based_flows_are_also_bounded_by_twice_their_rate_times_the_rtt() {
        let p = CcParams::default();
        // mss 1000, handshake RTT 50 µs: one initial window (10 000 B) per RTT = 1.6 Gbit/s;
        // in flight at most twice that times the RTT, 20 000 B.
        let s = CcState::new(Algorithm::Timely, &p, 1000, 50, None);
        assert_eq!(s.limits(), Limits { cwnd: 20_000, rate_kbps: 1_600_000 });
        let d = CcState::new(Algorithm::DctcpRate, &p, 1000, 50, None);
        assert_eq!(d.limits().cwnd, 20_000);
        // Never below two segments; a fixed rate is the pacer's alone.
        let mut slow = CcState::new(Algorithm::Timely, &p, 1000, 50, None);
        slow.rate_kbps = 1_000;
        assert_eq!(slow.limits(), Limits { cwnd: 2_000, rate_kbps: 1_000 });
        let f = CcState::new(Algorithm::Fixed, &p, 1000, 50, Some(5_000));
        assert_eq!(f.limits(), Limits { cwnd: 0, rate_kbps: 5_000 });
    }

    #[test]
    fn cubic_backs_off_by_beta_and_regrows() {
        let p = CcParams::default();
        let mut s = CcState::new(Algorithm::Cubic, &p, 1000, 100, None);
        s.on_sample(&sample(0, 0, 0, 0, 100), &p);
        s.on_sample(&sample(200, 100_000, 0, 0, 100), &p);
        let w = s.cwnd;
        s.on_sample(&sample(400, 200_000, 1000, 0, 100), &p);
        assert_eq!(s.cwnd, (w as f64 / 1000.0 * 0.7 * 1000.0) as u32, "ECN counts as loss: x0.7");
        let low = s.cwnd;
        let mut acked = 200_000;
        for i in 3..200 {
            acked += s.cwnd;
            s.on_sample(&sample(i * 200, acked, 1000, 0, 100), &p);
        }
        assert!(s.cwnd > low, "grows again");
    }
}
