//! Command-line quantities: durations (`5ms`), rates (`100mbit`), queue sizes (`256`,
//! `64kb`), probabilities (`0.01`, `1%`). Every error says what was wrong and what to write.
// `u64::is_multiple_of` needs Rust 1.87; the workspace supports 1.85.
#![allow(unknown_lints, clippy::manual_is_multiple_of)]

use std::fmt;
use std::str::FromStr;

/// Nanoseconds; the forwarder's one unit of time (its clock is `u64` ns since start).
pub type Nanos = u64;

/// A duration such as `5ms`, `250us`, `1.5s`, `100ns`, or `0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Delay(pub Nanos);

impl FromStr for Delay {
    type Err = String;
    fn from_str(s: &str) -> Result<Delay, String> {
        let s = s.trim();
        if s == "0" {
            return Ok(Delay(0));
        }
        let (num, unit) = split_unit(s);
        let scale = match unit.to_ascii_lowercase().as_str() {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "" => return Err(format!("{s:?} has no unit: write e.g. 5ms, 250us, 1s or 0")),
            u => {
                return Err(format!(
                    "unknown time unit {u:?} in {s:?}: use ns, us, ms or s (e.g. 5ms)"
                ))
            }
        };
        let v = parse_number(num, s)?;
        let ns = v * scale;
        if !(0.0..=3600e9).contains(&ns) {
            return Err(format!("{s:?} is out of range: give 0 to 1 hour"));
        }
        Ok(Delay(ns.round() as Nanos))
    }
}

impl fmt::Display for Delay {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ns = self.0;
        if ns == 0 {
            write!(f, "0")
        } else if ns % 1_000_000 == 0 {
            write!(f, "{}ms", ns / 1_000_000)
        } else if ns % 1_000 == 0 {
            write!(f, "{}us", ns / 1_000)
        } else {
            write!(f, "{ns}ns")
        }
    }
}

/// A link rate in bits per second, written as tc writes it: `100mbit`, `1gbit`, `500kbit`,
/// `64000bit`. Byte units (`mbps`, which tc reads as megabytes) are refused as ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate(pub u64);

impl FromStr for Rate {
    type Err = String;
    fn from_str(s: &str) -> Result<Rate, String> {
        let s = s.trim();
        let (num, unit) = split_unit(s);
        let scale = match unit.to_ascii_lowercase().as_str() {
            "bit" => 1.0,
            "kbit" => 1e3,
            "mbit" => 1e6,
            "gbit" => 1e9,
            "" => return Err(format!("{s:?} has no unit: write e.g. 100mbit, 1gbit or 500kbit")),
            "bps" | "kbps" | "mbps" | "gbps" => {
                return Err(format!(
                    "{s:?} is ambiguous (tc reads mbps as megabytes per second): write bits, e.g. 100mbit"
                ))
            }
            u => return Err(format!("unknown rate unit {u:?} in {s:?}: use bit, kbit, mbit or gbit")),
        };
        let bps = parse_number(num, s)? * scale;
        if !(1000.0..=1e12).contains(&bps) {
            return Err(format!("{s:?} is out of range: give 1kbit to 1000gbit"));
        }
        Ok(Rate(bps.round() as u64))
    }
}

impl fmt::Display for Rate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b % 1_000_000_000 == 0 {
            write!(f, "{}gbit", b / 1_000_000_000)
        } else if b % 1_000_000 == 0 {
            write!(f, "{}mbit", b / 1_000_000)
        } else if b % 1_000 == 0 {
            write!(f, "{}kbit", b / 1_000)
        } else {
            write!(f, "{b}bit")
        }
    }
}

/// A queue size or threshold: packets (`256`, `256p`) or bytes (`64kb`, `100000b`, `1mib`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QueueSize {
    /// A number of frames.
    Packets(u64),
    /// A number of bytes (Ethernet frames, header included).
    Bytes(u64),
}

impl QueueSize {
    /// Does a backlog of `pkts` frames / `bytes` bytes exceed this size?
    pub fn exceeded_by(self, pkts: u64, bytes: u64) -> bool {
        match self {
            QueueSize::Packets(n) => pkts > n,
            QueueSize::Bytes(n) => bytes > n,
        }
    }
}

impl FromStr for QueueSize {
    type Err = String;
    fn from_str(s: &str) -> Result<QueueSize, String> {
        let s = s.trim();
        let (num, unit) = split_unit(s);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a whole number with an optional unit: write e.g. 256 (packets), 256p or 64kb"))?;
        let q = match unit.to_ascii_lowercase().as_str() {
            "" | "p" | "pkt" | "pkts" | "packets" => QueueSize::Packets(n),
            "b" => QueueSize::Bytes(n),
            "kb" => QueueSize::Bytes(n * 1_000),
            "mb" => QueueSize::Bytes(n * 1_000_000),
            "kib" => QueueSize::Bytes(n << 10),
            "mib" => QueueSize::Bytes(n << 20),
            u => {
                return Err(format!(
                    "unknown queue unit {u:?} in {s:?}: use p (packets), b, kb, mb, kib or mib"
                ))
            }
        };
        Ok(q)
    }
}

impl fmt::Display for QueueSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueueSize::Packets(n) => write!(f, "{n}p"),
            QueueSize::Bytes(n) => write!(f, "{n}b"),
        }
    }
}

/// A probability: `0.01` or `1%`.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Prob(pub f64);

impl FromStr for Prob {
    type Err = String;
    fn from_str(s: &str) -> Result<Prob, String> {
        let s = s.trim();
        let (v, pct) = match s.strip_suffix('%') {
            Some(n) => (parse_number(n, s)? / 100.0, true),
            None => (parse_number(s, s)?, false),
        };
        if !(0.0..=1.0).contains(&v) {
            let hint = if pct {
                "0% to 100%"
            } else {
                "0 to 1 (or a percentage such as 5%)"
            };
            return Err(format!("probability {s:?} is out of range: give {hint}"));
        }
        Ok(Prob(v))
    }
}

impl fmt::Display for Prob {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// Splits `12.5mbit` into (`12.5`, `mbit`).
fn split_unit(s: &str) -> (&str, &str) {
    let at = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (s[..at].trim(), s[at..].trim())
}

fn parse_number(num: &str, whole: &str) -> Result<f64, String> {
    match num.parse::<f64>() {
        Ok(v) if v.is_finite() && v >= 0.0 => Ok(v),
        _ => Err(format!(
            "{whole:?} does not start with a non-negative number"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays() {
        assert_eq!("5ms".parse(), Ok(Delay(5_000_000)));
        assert_eq!("250us".parse(), Ok(Delay(250_000)));
        assert_eq!("1.5s".parse(), Ok(Delay(1_500_000_000)));
        assert_eq!("100ns".parse(), Ok(Delay(100)));
        assert_eq!("0".parse(), Ok(Delay(0)));
        assert!("5".parse::<Delay>().unwrap_err().contains("no unit"));
        assert!("5min"
            .parse::<Delay>()
            .unwrap_err()
            .contains("ns, us, ms or s"));
        assert!("-1ms".parse::<Delay>().is_err());
        assert_eq!(Delay(2_000_000).to_string(), "2ms");
        assert_eq!(Delay(1_500).to_string(), "1500ns");
    }

    #[test]
    fn rates() {
        assert_eq!("100mbit".parse(), Ok(Rate(100_000_000)));
        assert_eq!("1gbit".parse(), Ok(Rate(1_000_000_000)));
        assert_eq!("2.5Mbit".parse(), Ok(Rate(2_500_000)));
        assert_eq!("64000bit".parse(), Ok(Rate(64_000)));
        assert!("100mbps".parse::<Rate>().unwrap_err().contains("ambiguous"));
        assert!("100".parse::<Rate>().unwrap_err().contains("no unit"));
        assert!("10bit"
            .parse::<Rate>()
            .unwrap_err()
            .contains("out of range"));
        assert_eq!(Rate(50_000_000).to_string(), "50mbit");
    }

    #[test]
    fn queue_sizes() {
        assert_eq!("256".parse(), Ok(QueueSize::Packets(256)));
        assert_eq!("256p".parse(), Ok(QueueSize::Packets(256)));
        assert_eq!("64kb".parse(), Ok(QueueSize::Bytes(64_000)));
        assert_eq!("64KiB".parse(), Ok(QueueSize::Bytes(65_536)));
        assert_eq!("100000b".parse(), Ok(QueueSize::Bytes(100_000)));
        assert!("1.5p".parse::<QueueSize>().is_err());
        assert!("3x"
            .parse::<QueueSize>()
            .unwrap_err()
            .contains("unknown queue unit"));
        assert!(QueueSize::Packets(2).exceeded_by(3, 0));
        assert!(!QueueSize::Packets(2).exceeded_by(2, 1 << 30));
        assert!(QueueSize::Bytes(1000).exceeded_by(0, 1001));
    }

    #[test]
    fn probabilities() {
        assert_eq!("0.01".parse(), Ok(Prob(0.01)));
        assert_eq!("5%".parse(), Ok(Prob(0.05)));
        assert_eq!("0".parse(), Ok(Prob(0.0)));
        assert!("1.5".parse::<Prob>().unwrap_err().contains("out of range"));
        assert!("150%".parse::<Prob>().unwrap_err().contains("0% to 100%"));
        assert!("x".parse::<Prob>().is_err());
    }
}
