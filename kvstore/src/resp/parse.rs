//! The request parser: RESP multibulk (`*N\r\n$L\r\n...`) and inline commands
//! (`PING\r\n`), parsed in place. A parsed command is a list of byte ranges into the input,
//! so the input can be the receive ring itself; nothing is copied. Never panics, whatever
//! the bytes (a property test and a fuzz target hold it to that).

/// Longest inline command line, and longest multibulk/bulk header line (Redis: 64 KB).
pub const MAX_INLINE: usize = 64 * 1024;
/// Most arguments of one command (Redis: 1024*1024*1024; this server keeps the argument
/// list bounded so a hostile header cannot make it reserve much).
pub const MAX_ARGS: usize = 1024 * 1024;
/// Largest bulk argument (Redis's default `proto-max-bulk-len`, 512 MB).
pub const MAX_BULK: usize = 512 * 1024 * 1024;

/// A protocol error: the reply is `-ERR <Display>` and the client is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// The `*N` count is not a number or out of range.
    #[error("Protocol error: invalid multibulk length")]
    MultibulkLength,
    /// A `$L` length is not a number or out of range.
    #[error("Protocol error: invalid bulk length")]
    BulkLength,
    /// An argument does not start with `$`.
    #[error("Protocol error: expected '$', got '{0}'")]
    ExpectedDollar(char),
    /// A bulk argument is not followed by CRLF.
    #[error("Protocol error: bulk argument not terminated by CRLF")]
    MissingCrlf,
    /// A header line has no CRLF within [`MAX_INLINE`] bytes.
    #[error("Protocol error: too big mbulk count string")]
    HeaderTooBig,
    /// An inline command has no newline within [`MAX_INLINE`] bytes.
    #[error("Protocol error: too big inline request")]
    InlineTooBig,
    /// An inline command has an unterminated quote.
    #[error("Protocol error: unbalanced quotes in request")]
    UnbalancedQuotes,
}

/// The outcome of [`parse`] when it did not fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    /// A whole command: its arguments are in the `args` vector, and it took `consumed`
    /// bytes (an empty command — a blank inline line, `*0` — has no arguments).
    Complete {
        /// Bytes the command occupied.
        consumed: usize,
    },
    /// More bytes are needed: at least `need` in total (a lower bound; exact once the last
    /// bulk header was read), so a caller assembling a large argument can reserve once.
    Incomplete {
        /// Total bytes known to be needed from the start of the command.
        need: usize,
    },
}

/// Parse one command from the start of `buf`. On `Complete`, `args` holds the arguments as
/// `(start, end)` byte ranges into `buf`.
pub fn parse(buf: &[u8], args: &mut Vec<(usize, usize)>) -> Result<Parsed, ProtoError> {
    args.clear();
    match buf.first() {
        None => Ok(Parsed::Incomplete { need: 1 }),
        Some(b'*') => parse_multibulk(buf, args),
        Some(_) => parse_inline(buf, args),
    }
}

/// Find CRLF at or after `from`, within `MAX_INLINE` bytes of `from`.
/// Ok(Some(pos of \r)), Ok(None) if not yet there, Err if the line is too long.
fn line_end(buf: &[u8], from: usize, err: ProtoError) -> Result<Option<usize>, ProtoError> {
    let window = &buf[from.min(buf.len())..buf.len().min(from.saturating_add(MAX_INLINE))];
    match window.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(from + i)),
        None if buf.len() - from.min(buf.len()) >= MAX_INLINE => Err(err),
        None => Ok(None),
    }
}

/// A decimal number as Redis writes lengths (`-1` allowed), at most 20 bytes.
fn number(s: &[u8]) -> Option<i64> {
    if s.is_empty() || s.len() > 20 {
        return None;
    }
    let (neg, d) = match s[0] {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    if d.is_empty() {
        return None;
    }
    let mut n: i64 = 0;
    for &c in d {
        if !c.is_ascii_digit() {
            return None;
        }
        n = n.checked_mul(10)?.checked_add((c - b'0') as i64)?;
    }
    Some(if neg { -n } else { n })
}

fn parse_multibulk(buf: &[u8], args: &mut Vec<(usize, usize)>) -> Result<Parsed, ProtoError> {
    let Some(eol) = line_end(buf, 1, ProtoError::HeaderTooBig)? else {
        return Ok(Parsed::Incomplete { need: buf.len() + 1 });
    };
    let count = number(&buf[1..eol]).ok_or(ProtoError::MultibulkLength)?;
    if count > MAX_ARGS as i64 {
        return Err(ProtoError::MultibulkLength);
    }
    let mut pos = eol + 2;
    if count <= 0 {
        return Ok(Parsed::Complete { consumed: pos });
    }
    for _ in 0..count {
        match buf.get(pos) {
            None => return Ok(Parsed::Incomplete { need: pos + 1 }),
            Some(b'$') => {}
            Some(&c) => return Err(ProtoError::ExpectedDollar(c as char)),
        }
        let Some(eol) = line_end(buf, pos + 1, ProtoError::HeaderTooBig)? else {
            return Ok(Parsed::Incomplete { need: buf.len() + 1 });
        };
        let len = number(&buf[pos + 1..eol]).ok_or(ProtoError::BulkLength)?;
        if len < 0 || len as u64 > MAX_BULK as u64 {
            return Err(ProtoError::BulkLength);
        }
        let start = eol + 2;
        let end = start + len as usize;
        if buf.len() < end + 2 {
            return Ok(Parsed::Incomplete { need: end + 2 });
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(ProtoError::MissingCrlf);
        }
        args.push((start, end));
        pos = end + 2;
    }
    Ok(Parsed::Complete { consumed: pos })
}

fn parse_inline(buf: &[u8], args: &mut Vec<(usize, usize)>) -> Result<Parsed, ProtoError> {
    let window = &buf[..buf.len().min(MAX_INLINE)];
    let Some(nl) = window.iter().position(|&c| c == b'\n') else {
        if buf.len() >= MAX_INLINE {
            return Err(ProtoError::InlineTooBig);
        }
        return Ok(Parsed::Incomplete { need: buf.len() + 1 });
    };
    let line_end = if nl > 0 && buf[nl - 1] == b'\r' { nl - 1 } else { nl };
    let line = &buf[..line_end];
    // Split on blanks; '...' and "..." group (their content is taken as is: escapes inside
    // quotes are not interpreted, unlike redis-server's sdssplitargs).
    let mut i = 0;
    while i < line.len() {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            break;
        }
        let q = line[i];
        if q == b'"' || q == b'\'' {
            let start = i + 1;
            let Some(close) = line[start..].iter().position(|&c| c == q) else {
                return Err(ProtoError::UnbalancedQuotes);
            };
            let end = start + close;
            if end + 1 < line.len() && !line[end + 1].is_ascii_whitespace() {
                return Err(ProtoError::UnbalancedQuotes);
            }
            args.push((start, end));
            i = end + 1;
        } else {
            let start = i;
            while i < line.len() && !line[i].is_ascii_whitespace() {
                i += 1;
            }
            args.push((start, i));
        }
    }
    Ok(Parsed::Complete { consumed: nl + 1 })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn encode(args: &[Vec<u8>]) -> Vec<u8> {
        let mut v = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            v.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            v.extend_from_slice(a);
            v.extend_from_slice(b"\r\n");
        }
        v
    }

    fn parsed(buf: &[u8]) -> Result<(Vec<Vec<u8>>, usize), String> {
        let mut r = Vec::new();
        match parse(buf, &mut r) {
            Ok(Parsed::Complete { consumed }) => Ok((r.iter().map(|&(s, e)| buf[s..e].to_vec()).collect(), consumed)),
            Ok(p) => Err(format!("{p:?}")),
            Err(e) => Err(e.to_string()),
        }
    }

    #[test]
    fn multibulk_and_inline() {
        assert_eq!(parsed(b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n").unwrap(), (vec![b"GET".to_vec(), b"k".to_vec()], 20));
        assert_eq!(parsed(b"PING\r\n").unwrap(), (vec![b"PING".to_vec()], 6));
        assert_eq!(parsed(b"set a  'b c'\n").unwrap().0, vec![b"set".to_vec(), b"a".to_vec(), b"b c".to_vec()]);
        assert_eq!(parsed(b"\r\n").unwrap(), (vec![], 2));
        assert_eq!(parsed(b"*0\r\n").unwrap(), (vec![], 4));
        assert_eq!(parsed(b"*1\r\n$0\r\n\r\n").unwrap(), (vec![vec![]], 10));
    }

    #[test]
    fn incomplete_says_what_it_needs() {
        let mut a = Vec::new();
        assert_eq!(parse(b"*1\r\n$10\r\nabc", &mut a), Ok(Parsed::Incomplete { need: 4 + 5 + 12 }));
        assert_eq!(parse(b"*1\r", &mut a), Ok(Parsed::Incomplete { need: 4 }));
        assert_eq!(parse(b"PIN", &mut a), Ok(Parsed::Incomplete { need: 4 }));
    }

    #[test]
    fn errors() {
        let mut a = Vec::new();
        assert_eq!(parse(b"*x\r\n", &mut a), Err(ProtoError::MultibulkLength));
        assert_eq!(parse(b"*1\r\n+3\r\n", &mut a), Err(ProtoError::ExpectedDollar('+')));
        assert_eq!(parse(b"*1\r\n$-3\r\n", &mut a), Err(ProtoError::BulkLength));
        assert_eq!(parse(b"*1\r\n$1\r\nab\r\n", &mut a), Err(ProtoError::MissingCrlf));
        assert_eq!(parse(b"*1\r\n$999999999999\r\n", &mut a), Err(ProtoError::BulkLength));
        assert_eq!(parse(b"*99999999\r\n", &mut a), Err(ProtoError::MultibulkLength));
        assert_eq!(parse(b"get \"a\n", &mut a), Err(ProtoError::UnbalancedQuotes));
        assert_eq!(parse(&vec![b'a'; MAX_INLINE + 1], &mut a), Err(ProtoError::InlineTooBig));
        let mut long = b"*".to_vec();
        long.extend(vec![b'1'; MAX_INLINE + 1]);
        assert_eq!(parse(&long, &mut a), Err(ProtoError::HeaderTooBig));
    }

    proptest! {
        #[test]
        fn round_trip(args in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 1..8), extra in prop::collection::vec(any::<u8>(), 0..16)) {
            let enc = encode(&args);
            let mut buf = enc.clone();
            buf.extend_from_slice(&extra);
            let (got, consumed) = parsed(&buf).unwrap();
            prop_assert_eq!(got, args.clone());
            prop_assert_eq!(consumed, enc.len());
            // Every strict prefix is incomplete, never an error, and never claims to need
            // fewer bytes than it has or more than the whole command.
            for cut in 0..enc.len() {
                let mut a = Vec::new();
                match parse(&enc[..cut], &mut a) {
                    Ok(Parsed::Incomplete { need }) => prop_assert!(need > cut && need <= enc.len()),
                    r => prop_assert!(false, "prefix {} of {}: {:?}", cut, enc.len(), r),
                }
            }
        }

        #[test]
        fn never_panics(buf in prop::collection::vec(any::<u8>(), 0..256)) {
            let mut a = Vec::new();
            if let Ok(Parsed::Complete { consumed }) = parse(&buf, &mut a) {
                prop_assert!(consumed <= buf.len());
                for &(s, e) in &a {
                    prop_assert!(s <= e && e <= consumed);
                }
            }
        }

        #[test]
        fn never_panics_on_resp_like_bytes(parts in prop::collection::vec(prop_oneof![
            Just(b"*".to_vec()), Just(b"$".to_vec()), Just(b"\r\n".to_vec()), Just(b"-1".to_vec()),
            Just(b"3".to_vec()), Just(b"abc".to_vec()), Just(b"\n".to_vec()), Just(b"\"".to_vec()),
            Just(b"99999999999999999999999".to_vec()), Just(b"0".to_vec()),
        ], 0..24)) {
            let buf: Vec<u8> = parts.concat();
            let mut a = Vec::new();
            let _ = parse(&buf, &mut a);
        }
    }
}
