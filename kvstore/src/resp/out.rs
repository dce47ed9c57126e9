//! Replies: RESP2/RESP3 encoding into a connection's output queue.
//!
//! The queue holds small reply bytes (headers, integers, status lines) in one growing
//! buffer, and stored values as shared [`Bytes`] segments: a GET reply queues a reference
//! to the stored value, whose bytes are copied exactly once, straight into the
//! connection's transmit ring ([`Out::write_into`], for libtas's `send_with`) or handed to
//! the kernel with `writev` ([`Out::io_slices`]). Values shorter than [`INLINE_VALUE`] are
//! copied into the small buffer instead: for them, one short copy costs less than a
//! reference count round trip and a segment.

use std::collections::VecDeque;
use std::io::IoSlice;

use bytes::{Buf, Bytes, BytesMut};

/// Values shorter than this are copied into the reply buffer rather than queued by
/// reference.
pub const INLINE_VALUE: usize = 64;

/// A connection's queued reply bytes.
#[derive(Debug, Default)]
pub struct Out {
    segs: VecDeque<Bytes>,
    cur: BytesMut,
    len: usize,
    /// The client speaks RESP3 (after `HELLO 3`).
    pub resp3: bool,
}

fn itoa(n: i64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    let neg = n < 0;
    let mut u = n.unsigned_abs();
    loop {
        i -= 1;
        buf[i] = b'0' + (u % 10) as u8;
        u /= 10;
        if u == 0 {
            break;
        }
    }
    if neg {
        i -= 1;
        buf[i] = b'-';
    }
    &buf[i..]
}

impl Out {
    /// Bytes queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True if nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Queue raw bytes (copied into the small buffer).
    pub fn raw(&mut self, b: &[u8]) {
        self.cur.extend_from_slice(b);
        self.len += b.len();
    }

    /// Queue a shared segment by reference.
    fn shared(&mut self, b: Bytes) {
        if b.len() < INLINE_VALUE {
            self.raw(&b);
            return;
        }
        if !self.cur.is_empty() {
            let small = self.cur.split().freeze();
            self.segs.push_back(small);
        }
        self.len += b.len();
        self.segs.push_back(b);
    }

    fn header(&mut self, tag: u8, n: i64) {
        let mut buf = [0u8; 20];
        let digits = itoa(n, &mut buf);
        self.cur.reserve(digits.len() + 3);
        self.cur.extend_from_slice(&[tag]);
        self.cur.extend_from_slice(digits);
        self.cur.extend_from_slice(b"\r\n");
        self.len += digits.len() + 3;
    }

    /// `+OK`.
    pub fn ok(&mut self) {
        self.raw(b"+OK\r\n");
    }

    /// A status line `+s`.
    pub fn simple(&mut self, s: &str) {
        self.raw(b"+");
        self.raw(s.as_bytes());
        self.raw(b"\r\n");
    }

    /// An error line `-msg` (`msg` starts with its code, e.g. `ERR ...`). CR and LF in the
    /// message are replaced by spaces so the reply stays one line.
    pub fn error(&mut self, msg: &str) {
        self.raw(b"-");
        for &c in msg.as_bytes() {
            self.raw(&[if c == b'\r' || c == b'\n' { b' ' } else { c }]);
        }
        self.raw(b"\r\n");
    }

    /// An integer.
    pub fn int(&mut self, n: i64) {
        self.header(b':', n);
    }

    /// A bulk string, copied.
    pub fn bulk(&mut self, b: &[u8]) {
        self.header(b'$', b.len() as i64);
        self.raw(b);
        self.raw(b"\r\n");
    }

    /// A bulk string of a stored value, by reference (no copy of the value's bytes).
    pub fn bulk_shared(&mut self, b: Bytes) {
        self.header(b'$', b.len() as i64);
        self.shared(b);
        self.raw(b"\r\n");
    }

    /// A bulk string of a stored value seen through a reference: copied if short, else
    /// queued by reference (one reference count increment, no copy of the bytes).
    pub fn bulk_shared_ref(&mut self, b: &Bytes) {
        if b.len() < INLINE_VALUE {
            self.bulk(b);
        } else {
            self.bulk_shared(b.clone());
        }
    }

    /// The null reply (`$-1` in RESP2, `_` in RESP3).
    pub fn null(&mut self) {
        if self.resp3 {
            self.raw(b"_\r\n");
        } else {
            self.raw(b"$-1\r\n");
        }
    }

    /// An array header of `n` elements.
    pub fn array(&mut self, n: usize) {
        self.header(b'*', n as i64);
    }

    /// A map header of `n` pairs (RESP2: an array of 2n elements).
    pub fn map(&mut self, n: usize) {
        if self.resp3 {
            self.header(b'%', n as i64);
        } else {
            self.header(b'*', 2 * n as i64);
        }
    }

    /// A set header of `n` elements (RESP2: an array).
    pub fn set(&mut self, n: usize) {
        if self.resp3 {
            self.header(b'~', n as i64);
        } else {
            self.header(b'*', n as i64);
        }
    }

    /// A double (RESP3 `,`; RESP2: a bulk string).
    pub fn double(&mut self, text: &[u8]) {
        if self.resp3 {
            self.raw(b",");
            self.raw(text);
            self.raw(b"\r\n");
        } else {
            self.bulk(text);
        }
    }

    /// A text blob such as INFO's (RESP3 verbatim string `=N\r\ntxt:...`; RESP2 bulk).
    pub fn verbatim(&mut self, text: &str) {
        if self.resp3 {
            self.header(b'=', text.len() as i64 + 4);
            self.raw(b"txt:");
            self.raw(text.as_bytes());
            self.raw(b"\r\n");
        } else {
            self.bulk(text.as_bytes());
        }
    }

    fn front(&self) -> Option<&[u8]> {
        match self.segs.front() {
            Some(s) => Some(s),
            None if !self.cur.is_empty() => Some(&self.cur),
            None => None,
        }
    }

    /// Mark `n` queued bytes as sent.
    pub fn advance(&mut self, mut n: usize) {
        assert!(n <= self.len, "advance past the queued bytes");
        self.len -= n;
        while n > 0 {
            match self.segs.front_mut() {
                Some(s) => {
                    let k = n.min(s.len());
                    s.advance(k);
                    n -= k;
                    if s.is_empty() {
                        self.segs.pop_front();
                    }
                }
                None => {
                    self.cur.advance(n);
                    n = 0;
                }
            }
        }
        if self.len == 0 && self.cur.capacity() > 1 << 20 {
            // Do not keep a huge buffer around after a burst.
            self.cur = BytesMut::new();
        }
    }

    /// Copy as many queued bytes as fit into `a` then `b` (a transmit ring's free space)
    /// and mark them sent; returns how many.
    pub fn write_into(&mut self, a: &mut [u8], b: &mut [u8]) -> usize {
        let mut total = 0;
        for dst in [a, b] {
            let mut off = 0;
            while off < dst.len() {
                let Some(src) = self.front() else { break };
                let k = src.len().min(dst.len() - off);
                dst[off..off + k].copy_from_slice(&src[..k]);
                off += k;
                self.advance(k);
            }
            total += off;
        }
        total
    }

    /// Up to `out.len()` slices of the queued bytes, in order, for `writev`; returns how
    /// many were filled.
    pub fn io_slices<'a>(&'a self, out: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for s in self.segs.iter() {
            if n == out.len() {
                return n;
            }
            out[n] = IoSlice::new(s);
            n += 1;
        }
        if n < out.len() && !self.cur.is_empty() {
            out[n] = IoSlice::new(&self.cur);
            n += 1;
        }
        n
    }

    /// Everything queued, as one vector (tests).
    pub fn to_vec(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.len);
        for s in &self.segs {
            v.extend_from_slice(s);
        }
        v.extend_from_slice(&self.cur);
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_resp2_and_resp3() {
        let mut o = Out::default();
        o.ok();
        o.int(-42);
        o.bulk(b"hi");
        o.null();
        o.map(1);
        o.double(b"1.5");
        assert_eq!(o.to_vec(), b"+OK\r\n:-42\r\n$2\r\nhi\r\n$-1\r\n*2\r\n$3\r\n1.5\r\n");
        let mut o = Out { resp3: true, ..Out::default() };
        o.null();
        o.map(1);
        o.double(b"1.5");
        o.verbatim("a");
        assert_eq!(o.to_vec(), b"_\r\n%1\r\n,1.5\r\n=5\r\ntxt:a\r\n");
        assert_eq!(itoa(i64::MIN, &mut [0; 20]), b"-9223372036854775808");
    }

    #[test]
    fn shared_values_are_segments_and_drain_across_two_slices() {
        let mut o = Out::default();
        let big = Bytes::from(vec![7u8; 1000]);
        o.bulk_shared(big.clone());
        o.int(1);
        assert_eq!(o.segs.len(), 2, "header segment, then the value itself");
        assert_eq!(o.segs[1].as_ptr(), big.as_ptr(), "queued by reference");
        let want = o.to_vec();
        let mut a = vec![0u8; 300];
        let mut b = vec![0u8; 500];
        assert_eq!(o.write_into(&mut a, &mut b), 800);
        let mut rest = vec![0u8; 4096];
        let n = o.write_into(&mut rest, &mut []);
        assert_eq!([&a[..], &b[..], &rest[..n]].concat(), want);
        assert!(o.is_empty());
    }
}
