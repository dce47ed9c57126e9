//! The packetdrill-style text of one TCP segment, parsed into a [`SegSpec`].
//!
//! ```text
//! S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val * ecr 100,nop,wscale 3>
//! P. 1:1001(1000) ack 1 win 32768 <nop,nop,TS val * ecr 7>
//! .  1:1(0) ack 1001 <nop,nop,TS val 9 ecr *,nop,nop,sack 2001:3001>
//! R  5000:5000(0)
//! ```
//!
//! - flags: `S` SYN, `.` ACK, `F` FIN, `R` RST, `P` PSH, `U` URG, `E` ECE, `W` CWR; the
//!   set is compared exactly. `ack N` must be there exactly when `.` is.
//! - `start:end(len)`: relative sequence numbers, as packetdrill prints them: relative
//!   to the sender's ISN (so the SYN is `0:0(0)` and the first data byte is 1). `ack`
//!   and SACK blocks are relative to the other side's ISN.
//! - `win N`: the raw 16-bit window field. Omitted in an expectation: not checked;
//!   omitted in a segment to send: 65535.
//! - `<...>`: options. Order and `nop`/`eol` padding do not matter (our emitter lays
//!   them out its own way); the set does. No `<>` in an expectation means *no options
//!   at all*; `<...>` means any options.
//! - `*` matches any value in an expectation. In a segment to send, `ecr *` echoes the
//!   last TSval the stack sent (what a real peer does); any other `*` is an error.

use tas_fastpath::wire::TcpFlags;

/// A number, or `*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Num {
    /// `*`
    Any,
    /// A value.
    Is(u32),
}

impl Num {
    /// True if `v` matches.
    pub fn matches(self, v: u32) -> bool {
        match self {
            Num::Any => true,
            Num::Is(x) => x == v,
        }
    }
    /// The value, for segments we send (`what` names the field in the error).
    pub fn value(self, what: &str) -> u32 {
        match self {
            Num::Is(v) => v,
            Num::Any => panic!("`*` is not allowed for {what} in a segment to send"),
        }
    }
}

/// One TCP option of the text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OptSpec {
    /// `mss N`
    Mss(Num),
    /// `sackOK`
    SackOk,
    /// `TS val N ecr N`
    Ts { val: Num, ecr: Num },
    /// `wscale N`
    WScale(Num),
    /// `sack a:b c:d ...` (relative to the receiver-of-data's ISN, i.e. the ack space).
    Sack(Vec<(Num, Num)>),
}

/// The options part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opts {
    /// No `<...>` at all: no options.
    None,
    /// `<...>`: anything.
    Any,
    /// These options (and no others).
    List(Vec<OptSpec>),
}

/// One segment as written in a script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegSpec {
    /// The exact flag set.
    pub flags: TcpFlags,
    /// Relative sequence number of the first byte (or of the SYN/FIN).
    pub seq: Num,
    /// `seq + len` (checked for consistency when both are numbers).
    pub end: Num,
    /// Payload length.
    pub len: Num,
    /// Relative acknowledgment number (present exactly when flags has ACK).
    pub ack: Option<Num>,
    /// Raw window field.
    pub win: Option<Num>,
    /// Options.
    pub opts: Opts,
}

fn num(s: &str, line: &str) -> Num {
    if s == "*" {
        return Num::Any;
    }
    match s.parse::<u32>() {
        Ok(v) => Num::Is(v),
        Err(_) => panic!("bad number `{s}` in `{line}`"),
    }
}

fn range(s: &str, line: &str) -> (Num, Num) {
    let (a, b) = s.split_once(':').unwrap_or_else(|| panic!("expected `a:b`, got `{s}` in `{line}`"));
    (num(a, line), num(b, line))
}

/// Parse the text of one segment. Panics with a message naming the problem.
pub fn parse(line: &str) -> SegSpec {
    let (head, opts) = match line.find('<') {
        Some(i) => {
            let rest = line[i + 1..].trim_end();
            let inner = rest.strip_suffix('>').unwrap_or_else(|| panic!("options must end with `>` in `{line}`"));
            (&line[..i], parse_opts(inner.trim(), line))
        }
        None => (line, Opts::None),
    };
    let mut toks = head.split_whitespace();
    let f = toks.next().unwrap_or_else(|| panic!("empty segment text"));
    let mut flags = TcpFlags::empty();
    for c in f.chars() {
        let bit = match c {
            'S' => TcpFlags::SYN,
            '.' => TcpFlags::ACK,
            'F' => TcpFlags::FIN,
            'R' => TcpFlags::RST,
            'P' => TcpFlags::PSH,
            'U' => TcpFlags::URG,
            'E' => TcpFlags::ECE,
            'W' => TcpFlags::CWR,
            _ => panic!("unknown flag `{c}` in `{line}`"),
        };
        assert!(!flags.contains(bit), "flag `{c}` twice in `{line}`");
        flags.insert(bit);
    }
    let sq = toks.next().unwrap_or_else(|| panic!("missing `start:end(len)` in `{line}`"));
    let (se, l) = sq.split_once('(').unwrap_or_else(|| panic!("expected `start:end(len)`, got `{sq}` in `{line}`"));
    let l = l.strip_suffix(')').unwrap_or_else(|| panic!("expected `(len)` in `{sq}` of `{line}`"));
    let (seq, end) = range(se, line);
    let len = num(l, line);
    if let (Num::Is(s), Num::Is(e), Num::Is(n)) = (seq, end, len) {
        assert_eq!(e, s.wrapping_add(n), "`{sq}`: end must be start + len in `{line}`");
    }
    let (mut ack, mut win) = (None, None);
    while let Some(k) = toks.next() {
        let v = toks.next().unwrap_or_else(|| panic!("`{k}` needs a value in `{line}`"));
        match k {
            "ack" => ack = Some(num(v, line)),
            "win" => win = Some(num(v, line)),
            _ => panic!("unknown field `{k}` in `{line}`"),
        }
    }
    assert_eq!(
        ack.is_some(),
        flags.contains(TcpFlags::ACK),
        "`ack N` must be given exactly when the flags have `.` in `{line}`"
    );
    SegSpec { flags, seq, end, len, ack, win, opts }
}

fn parse_opts(inner: &str, line: &str) -> Opts {
    if inner == "..." {
        return Opts::Any;
    }
    let mut v = Vec::new();
    for o in inner.split(',').map(str::trim).filter(|o| !o.is_empty()) {
        let w: Vec<&str> = o.split_whitespace().collect();
        match w.as_slice() {
            ["nop"] | ["eol"] => {}
            ["sackOK"] => v.push(OptSpec::SackOk),
            ["mss", n] => v.push(OptSpec::Mss(num(n, line))),
            ["wscale", n] => v.push(OptSpec::WScale(num(n, line))),
            ["TS", "val", a, "ecr", b] => v.push(OptSpec::Ts { val: num(a, line), ecr: num(b, line) }),
            ["sack", blocks @ ..] if !blocks.is_empty() => {
                v.push(OptSpec::Sack(blocks.iter().map(|b| range(b, line)).collect()))
            }
            _ => panic!("unknown option `{o}` in `{line}`"),
        }
    }
    Opts::List(v)
}

/// Flags as the text writes them (`S.`, `P.`, `F.`, `R`, ...).
pub fn flags_text(f: TcpFlags) -> String {
    let mut s = String::new();
    for (bit, c) in [
        (TcpFlags::SYN, 'S'),
        (TcpFlags::FIN, 'F'),
        (TcpFlags::RST, 'R'),
        (TcpFlags::PSH, 'P'),
        (TcpFlags::URG, 'U'),
        (TcpFlags::ECE, 'E'),
        (TcpFlags::CWR, 'W'),
        (TcpFlags::ACK, '.'),
    ] {
        if f.contains(bit) {
            s.push(c);
        }
    }
    if s.is_empty() {
        s.push('-');
    }
    s
}

#[test]
fn parses_the_examples() {
    let s = parse("S. 0:0(0) ack 1 win 65535 <mss 1460,sackOK,TS val * ecr 100,nop,wscale 3>");
    assert_eq!(s.flags, TcpFlags::SYN | TcpFlags::ACK);
    assert_eq!((s.seq, s.end, s.len, s.ack, s.win), (Num::Is(0), Num::Is(0), Num::Is(0), Some(Num::Is(1)), Some(Num::Is(65535))));
    assert_eq!(
        s.opts,
        Opts::List(vec![
            OptSpec::Mss(Num::Is(1460)),
            OptSpec::SackOk,
            OptSpec::Ts { val: Num::Any, ecr: Num::Is(100) },
            OptSpec::WScale(Num::Is(3)),
        ])
    );
    let s = parse(". 1:1(0) ack 1001 <nop,nop,TS val 9 ecr *,nop,nop,sack 2001:3001 4001:*>");
    assert_eq!(s.win, None);
    assert_eq!(
        s.opts,
        Opts::List(vec![
            OptSpec::Ts { val: Num::Is(9), ecr: Num::Any },
            OptSpec::Sack(vec![(Num::Is(2001), Num::Is(3001)), (Num::Is(4001), Num::Any)]),
        ])
    );
    let s = parse("R 5000:5000(0)");
    assert_eq!((s.flags, s.ack, s.opts), (TcpFlags::RST, None, Opts::None));
    assert_eq!(parse("P. 1:1001(1000) ack 1 <...>").opts, Opts::Any);
    assert_eq!(flags_text(TcpFlags::SYN | TcpFlags::ACK), "S.");
    assert_eq!(flags_text(TcpFlags::PSH | TcpFlags::ACK | TcpFlags::FIN), "FP.");
}

#[test]
#[should_panic(expected = "end must be start + len")]
fn rejects_inconsistent_lengths() {
    parse("P. 1:1000(1000) ack 1");
}

#[test]
#[should_panic(expected = "exactly when the flags have `.`")]
fn rejects_ack_without_ack_flag() {
    parse("S 0:0(0) ack 1");
}
