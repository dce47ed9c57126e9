//! `tas-impair`: an in-path impairment forwarder. It runs in a middle network namespace,
//! bridges Ethernet frames between two interfaces in both directions, and on the way applies
//! seeded loss, duplication, a rate limit with a bounded tail-drop queue and ECN CE marking
//! above a threshold, delay with jitter, and reordering — per direction.
//!
//! ```text
//! ip netns exec tas-m tas-impair --a fwd-a --b fwd-b --seed 1 \
//!     --loss 0.01 --reorder 0.25 --reorder-delay 2ms --dup 0.05 --delay 5ms \
//!     --rate 100mbit --queue 256 --ecn-threshold 64 --b2a-loss 0 --stats-interval 1s
//! ```
//!
//! It exists because the kernels this project is tested on have no netem, RED or fq_codel,
//! and because AF_XDP copy-mode transmit bypasses the sending veth's qdisc anyway, so the
//! impairment must sit between the two ends. `deploy/sandbox.sh` builds the topology
//! (`TAS_NS_M`) and can start and stop it (`impair start|stop`).
//!
//! Every `--X` sets both directions; `--a2b-X` and `--b2a-X` override one ("a2b" = frames
//! that arrive on `--a` and leave on `--b`). On SIGINT or SIGTERM it prints one JSON line
//! with every counter of both directions on stdout and exits 0; `--stats-interval` prints
//! the same line (with `"event":"stats"`) periodically. See `tools/src/impair/sched.rs` for
//! the order of the stages and what each counter means.
#![deny(unsafe_code)]

#[path = "../impair/mod.rs"]
mod impair;

use std::process::ExitCode;
use std::str::FromStr;
use std::time::Duration;

use clap::Parser;

use impair::forward::Forwarder;
use impair::sched::{Impairer, Impairments, DEFAULT_QUEUE};
use impair::sys::{self, PacketSocket};
use impair::units::{Delay, Prob, QueueSize, Rate};

/// A rate, or `none` for no limit (to lift a limit in one direction).
#[derive(Debug, Clone, Copy, PartialEq)]
struct RateOrNone(Option<Rate>);

impl FromStr for RateOrNone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" | "off" => Ok(RateOrNone(None)),
            s => s.parse().map(|r| RateOrNone(Some(r))),
        }
    }
}

/// A queue threshold, or `none` (to turn marking off in one direction).
#[derive(Debug, Clone, Copy, PartialEq)]
struct ThresholdOrNone(Option<QueueSize>);

impl FromStr for ThresholdOrNone {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim() {
            "none" | "off" => Ok(ThresholdOrNone(None)),
            s => s.parse().map(|q| ThresholdOrNone(Some(q))),
        }
    }
}

#[derive(Parser, Debug)]
#[command(
    name = "tas-impair",
    about = "Forward Ethernet frames between two interfaces with seeded loss, reordering, duplication, delay, rate limit and ECN marking",
    after_help = "Units: probabilities 0.01 or 1%; times 5ms, 250us, 1s; rates 100mbit, 1gbit (bits, as tc); \
                  queues 256 or 256p (frames), 64kb, 100000b, 64kib (bytes). --X sets both directions, \
                  --a2b-X / --b2a-X override one. Counters go to stdout as JSON on SIGINT/SIGTERM."
)]
struct Cli {
    /// The A-side interface (towards namespace A).
    #[arg(long, value_name = "IF")]
    a: String,
    /// The B-side interface (towards namespace B).
    #[arg(long, value_name = "IF")]
    b: String,
    /// Seed of the random decisions (a2b uses 2*seed, b2a 2*seed+1).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Print the counters every so often (e.g. 1s), besides at exit.
    #[arg(long, value_name = "TIME")]
    stats_interval: Option<Delay>,

    /// Probability that a frame is dropped.
    #[arg(long, value_name = "P")]
    loss: Option<Prob>,
    /// Probability that a frame is held back by --reorder-delay (others overtake it).
    #[arg(long, value_name = "P")]
    reorder: Option<Prob>,
    /// How long a reordered frame is held back [default: 1ms].
    #[arg(long, value_name = "TIME")]
    reorder_delay: Option<Delay>,
    /// Probability that a frame is sent twice.
    #[arg(long, value_name = "P")]
    dup: Option<Prob>,
    /// Fixed one-way delay.
    #[arg(long, value_name = "TIME")]
    delay: Option<Delay>,
    /// Uniform jitter around --delay (+-); reorders frames closer together than it, as netem's.
    #[arg(long, value_name = "TIME")]
    jitter: Option<Delay>,
    /// Bottleneck rate (e.g. 100mbit); `none` for no limit.
    #[arg(long, value_name = "RATE")]
    rate: Option<RateOrNone>,
    /// Bottleneck queue limit, tail drop (frames, or bytes with a unit) [default: 1000].
    #[arg(long, value_name = "SIZE")]
    queue: Option<QueueSize>,
    /// CE-mark ECT IPv4 frames arriving at a backlog above this (needs --rate); `none` for off.
    #[arg(long, value_name = "SIZE")]
    ecn_threshold: Option<ThresholdOrNone>,

    #[arg(long, value_name = "P", hide_short_help = true)]
    a2b_loss: Option<Prob>,
    #[arg(long, value_name = "P", hide_short_help = true)]
    a2b_reorder: Option<Prob>,
    #[arg(long, value_name = "TIME", hide_short_help = true)]
    a2b_reorder_delay: Option<Delay>,
    #[arg(long, value_name = "P", hide_short_help = true)]
    a2b_dup: Option<Prob>,
    #[arg(long, value_name = "TIME", hide_short_help = true)]
    a2b_delay: Option<Delay>,
    #[arg(long, value_name = "TIME", hide_short_help = true)]
    a2b_jitter: Option<Delay>,
    #[arg(long, value_name = "RATE", hide_short_help = true)]
    a2b_rate: Option<RateOrNone>,
    #[arg(long, value_name = "SIZE", hide_short_help = true)]
    a2b_queue: Option<QueueSize>,
    #[arg(long, value_name = "SIZE", hide_short_help = true)]
    a2b_ecn_threshold: Option<ThresholdOrNone>,

    #[arg(long, value_name = "P", hide_short_help = true)]
    b2a_loss: Option<Prob>,
    #[arg(long, value_name = "P", hide_short_help = true)]
    b2a_reorder: Option<Prob>,
    #[arg(long, value_name = "TIME", hide_short_help = true)]
    b2a_reorder_delay: Option<Delay>,
    #[arg(long, value_name = "P", hide_short_help = true)]
    b2a_dup: Option<Prob>,
    #[arg(long, value_name = "TIME", hide_short_help = true)]
    b2a_delay: Option<Delay>,
    #[arg(long, value_name = "TIME", hide_short_help = true)]
    b2a_jitter: Option<Delay>,
    #[arg(long, value_name = "RATE", hide_short_help = true)]
    b2a_rate: Option<RateOrNone>,
    #[arg(long, value_name = "SIZE", hide_short_help = true)]
    b2a_queue: Option<QueueSize>,
    #[arg(long, value_name = "SIZE", hide_short_help = true)]
    b2a_ecn_threshold: Option<ThresholdOrNone>,
}

/// One direction's options as given (None = not given).
#[derive(Debug, Clone, Copy, Default)]
struct DirOpts {
    loss: Option<Prob>,
    reorder: Option<Prob>,
    reorder_delay: Option<Delay>,
    dup: Option<Prob>,
    delay: Option<Delay>,
    jitter: Option<Delay>,
    rate: Option<RateOrNone>,
    queue: Option<QueueSize>,
    ecn_threshold: Option<ThresholdOrNone>,
}

impl DirOpts {
    /// These options over `base` (the both-directions ones), over the defaults.
    fn resolve(self, base: DirOpts) -> Impairments {
        let d = Impairments::default();
        let DirOpts {
            loss,
            reorder,
            reorder_delay,
            dup,
            delay,
            jitter,
            rate,
            queue,
            ecn_threshold,
        } = self;
        Impairments {
            loss: loss.or(base.loss).map_or(d.loss, |p| p.0),
            reorder: reorder.or(base.reorder).map_or(d.reorder, |p| p.0),
            reorder_delay: reorder_delay
                .or(base.reorder_delay)
                .map_or(d.reorder_delay, |t| t.0),
            dup: dup.or(base.dup).map_or(d.dup, |p| p.0),
            delay: delay.or(base.delay).map_or(d.delay, |t| t.0),
            jitter: jitter.or(base.jitter).map_or(d.jitter, |t| t.0),
            rate: rate.or(base.rate).and_then(|r| r.0).map(|r| r.0),
            queue: queue.or(base.queue).unwrap_or(DEFAULT_QUEUE),
            ecn_threshold: ecn_threshold.or(base.ecn_threshold).and_then(|t| t.0),
        }
    }
}

impl Cli {
    fn directions(&self) -> (Impairments, Impairments) {
        let both = DirOpts {
            loss: self.loss,
            reorder: self.reorder,
            reorder_delay: self.reorder_delay,
            dup: self.dup,
            delay: self.delay,
            jitter: self.jitter,
            rate: self.rate,
            queue: self.queue,
            ecn_threshold: self.ecn_threshold,
        };
        let a2b = DirOpts {
            loss: self.a2b_loss,
            reorder: self.a2b_reorder,
            reorder_delay: self.a2b_reorder_delay,
            dup: self.a2b_dup,
            delay: self.a2b_delay,
            jitter: self.a2b_jitter,
            rate: self.a2b_rate,
            queue: self.a2b_queue,
            ecn_threshold: self.a2b_ecn_threshold,
        };
        let b2a = DirOpts {
            loss: self.b2a_loss,
            reorder: self.b2a_reorder,
            reorder_delay: self.b2a_reorder_delay,
            dup: self.b2a_dup,
            delay: self.b2a_delay,
            jitter: self.b2a_jitter,
            rate: self.b2a_rate,
            queue: self.b2a_queue,
            ecn_threshold: self.b2a_ecn_threshold,
        };
        (a2b.resolve(both), b2a.resolve(both))
    }
}

/// One line for the start-up message.
fn describe(i: &Impairments) -> String {
    if i.is_transparent() {
        return "transparent".into();
    }
    let Impairments {
        loss,
        reorder,
        reorder_delay,
        dup,
        delay,
        jitter,
        rate,
        queue,
        ecn_threshold,
    } = *i;
    let mut parts = Vec::new();
    if loss > 0.0 {
        parts.push(format!("loss {loss}"));
    }
    if reorder > 0.0 {
        parts.push(format!("reorder {reorder} by {}", Delay(reorder_delay)));
    }
    if dup > 0.0 {
        parts.push(format!("dup {dup}"));
    }
    if delay > 0 || jitter > 0 {
        parts.push(format!("delay {} +- {}", Delay(delay), Delay(jitter)));
    }
    if let Some(r) = rate {
        parts.push(format!("rate {} queue {queue}", Rate(r)));
        if let Some(t) = ecn_threshold {
            parts.push(format!("ecn-threshold {t}"));
        }
    }
    parts.join(", ")
}

fn stats_line(event: &str, fwd: &Forwarder) -> String {
    let (a2b, b2a) = fwd.counters();
    let (a, b) = fwd.ifnames();
    format!(
        "{{\"event\":\"{event}\",\"elapsed_s\":{:.3},\"a\":\"{a}\",\"b\":\"{b}\",\"a2b\":{},\"b2a\":{}}}",
        fwd.elapsed(),
        a2b.json(),
        b2a.json()
    )
}

fn run(cli: Cli) -> Result<(), String> {
    if cli.a == cli.b {
        return Err(format!(
            "--a and --b are both {:?}: give the two different interfaces to bridge",
            cli.a
        ));
    }
    let (a2b, b2a) = cli.directions();
    a2b.check("a2b")?;
    b2a.check("b2a")?;
    let stats_interval = match cli.stats_interval {
        Some(Delay(0)) => {
            return Err("--stats-interval 0: give a positive interval such as 1s".into())
        }
        Some(Delay(ns)) => Some(Duration::from_nanos(ns)),
        None => None,
    };
    sys::install_stop_handler()
        .map_err(|e| format!("cannot install the SIGINT/SIGTERM handler: {e}"))?;
    let a = PacketSocket::open(&cli.a)?;
    let b = PacketSocket::open(&cli.b)?;
    eprintln!(
        "tas-impair: forwarding {} <-> {} (seed {}); a2b: {}; b2a: {}",
        cli.a,
        cli.b,
        cli.seed,
        describe(&a2b),
        describe(&b2a)
    );
    let seed = cli.seed.wrapping_mul(2);
    let mut fwd = Forwarder::new(a, b, Impairer::new(a2b, seed), Impairer::new(b2a, seed + 1));
    fwd.run(stats_interval, |f| println!("{}", stats_line("stats", f)))?;
    println!("{}", stats_line("final", &fwd));
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tas-impair: error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tas-impair").chain(args.split_whitespace()))
    }

    #[test]
    fn both_directions_and_overrides() {
        let cli = parse(
            "--a x --b y --loss 0.01 --reorder 25% --reorder-delay 2ms --dup 0.05 --delay 5ms \
             --rate 100mbit --queue 256 --ecn-threshold 64 --b2a-loss 0 --a2b-rate none --b2a-queue 64kb \
             --b2a-ecn-threshold 32kb",
        )
        .unwrap();
        let (a2b, b2a) = cli.directions();
        assert_eq!(
            a2b,
            Impairments {
                loss: 0.01,
                reorder: 0.25,
                reorder_delay: 2_000_000,
                dup: 0.05,
                delay: 5_000_000,
                jitter: 0,
                rate: None,
                queue: QueueSize::Packets(256),
                ecn_threshold: Some(QueueSize::Packets(64)),
            }
        );
        // a2b has a threshold but no rate now: refused, with the fix.
        assert!(a2b.check("a2b").unwrap_err().contains("needs --rate"));
        assert_eq!(b2a.loss, 0.0);
        assert_eq!(b2a.rate, Some(100_000_000));
        assert_eq!(b2a.queue, QueueSize::Bytes(64_000));
        assert_eq!(b2a.ecn_threshold, Some(QueueSize::Bytes(32_000)));
        assert!(b2a.check("b2a").is_ok());
    }

    #[test]
    fn defaults_are_transparent() {
        let (a2b, b2a) = parse("--a x --b y").unwrap().directions();
        assert!(a2b.is_transparent() && b2a.is_transparent());
        assert_eq!(describe(&a2b), "transparent");
    }

    #[test]
    fn bad_values_name_the_fix() {
        let e = parse("--a x --b y --rate 100mbps").unwrap_err().to_string();
        assert!(e.contains("100mbit"), "{e}");
        let e = parse("--a x --b y --delay 5").unwrap_err().to_string();
        assert!(e.contains("5ms"), "{e}");
        let e = parse("--a x --b y --loss 2").unwrap_err().to_string();
        assert!(e.contains("0 to 1"), "{e}");
        assert!(run(parse("--a x --b x").unwrap())
            .unwrap_err()
            .contains("two different interfaces"));
    }

    #[test]
    fn describes_what_is_on() {
        let (a2b, _) = parse(
            "--a x --b y --loss 1% --rate 50mbit --ecn-threshold 20 --delay 5ms --jitter 1ms",
        )
        .unwrap()
        .directions();
        assert_eq!(
            describe(&a2b),
            "loss 0.01, delay 5ms +- 1ms, rate 50mbit queue 1000p, ecn-threshold 20p"
        );
    }
}
