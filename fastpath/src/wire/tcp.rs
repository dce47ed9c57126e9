//! TCP segments (RFC 9293) with the options this stack uses: MSS, window
//! scale and timestamps (RFC 7323), SACK (RFC 2018).
//!
//! ```text
//!  0               1               2               3
//! +-------------------------------+-------------------------------+
//! |          source port          |       destination port        |
//! +-------------------------------+-------------------------------+
//! |                        sequence number                        |
//! |                     acknowledgment number                     |
//! +-------+-------+---------------+-------------------------------+
//! |offset | rsvd  |C E U A P R S F|            window             |
//! +-------+-------+---------------+-------------------------------+
//! |           checksum            |        urgent pointer         |
//! +-------------------------------+-------------------------------+
//! |                  options (offset > 5) ...                     |
//! ```
//!
//! Emitted option layout, the one Linux uses, so every option lands on a
//! 4-byte boundary and a receiver's fast path can find timestamps at a
//! fixed place:
//!
//! ```text
//! MSS                         02 04 mm mm
//! SACK-permitted + timestamps 04 02 08 0a vv vv vv vv ee ee ee ee
//!   or timestamps alone       01 01 08 0a vv vv vv vv ee ee ee ee
//!   or SACK-permitted alone   01 01 04 02
//! window scale                01 03 03 ss
//! SACK blocks                 01 01 05 ll (left right)*
//! ```
//! On a SYN that is `MSS, SACK_PERM, TS, NOP, WS`; on an established
//! connection's segment `NOP NOP TS` then `NOP NOP SACK`.

use core::fmt;
use core::iter::FusedIterator;
use core::ops::{BitAnd, BitAndAssign, BitOr, BitOrAssign, Not};
use std::net::Ipv4Addr;

use super::ipv4::PROTO_TCP;
use super::{checksum, read_u16, read_u32, read_u8, write_bytes, write_u16, write_u32, write_u8};
use super::{ParseError, Result};

/// Length of a header without options (data offset 5).
pub const HEADER_LEN: usize = 20;

/// Largest header: the data offset is 4 bits counting 32-bit words, so
/// 15 * 4 = 60 bytes.
pub const MAX_HEADER_LEN: usize = 60;

/// Room for options: the largest header minus the fixed part.
pub const MAX_OPTIONS_LEN: usize = MAX_HEADER_LEN - HEADER_LEN;

/// Largest window scale shift (RFC 7323 section 2.3: larger values are
/// treated as 14).
pub const MAX_WINDOW_SCALE: u8 = 14;

/// Byte offsets of the header fields.
mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
    pub const OPTIONS: usize = 20;
}

/// Option kinds (IANA "TCP Option Kind Numbers").
mod option_kind {
    pub const EOL: u8 = 0;
    pub const NOP: u8 = 1;
    pub const MSS: u8 = 2;
    pub const WINDOW_SCALE: u8 = 3;
    pub const SACK_PERMITTED: u8 = 4;
    pub const SACK: u8 = 5;
    pub const TIMESTAMPS: u8 = 8;
}

// ---------------------------------------------------------------- flags

/// The eight TCP flag bits of byte 13 (the NS bit of byte 12 is ignored).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct TcpFlags(pub u8);

impl TcpFlags {
    /// No more data from sender.
    pub const FIN: TcpFlags = TcpFlags(0x01);
    /// Synchronise sequence numbers.
    pub const SYN: TcpFlags = TcpFlags(0x02);
    /// Reset the connection.
    pub const RST: TcpFlags = TcpFlags(0x04);
    /// Push function.
    pub const PSH: TcpFlags = TcpFlags(0x08);
    /// Acknowledgment field is significant.
    pub const ACK: TcpFlags = TcpFlags(0x10);
    /// Urgent pointer field is significant.
    pub const URG: TcpFlags = TcpFlags(0x20);
    /// ECN-Echo (RFC 3168).
    pub const ECE: TcpFlags = TcpFlags(0x40);
    /// Congestion Window Reduced (RFC 3168).
    pub const CWR: TcpFlags = TcpFlags(0x80);

    /// Names in bit order, for `Debug`.
    const NAMES: [(TcpFlags, &'static str); 8] = [
        (Self::FIN, "FIN"),
        (Self::SYN, "SYN"),
        (Self::RST, "RST"),
        (Self::PSH, "PSH"),
        (Self::ACK, "ACK"),
        (Self::URG, "URG"),
        (Self::ECE, "ECE"),
        (Self::CWR, "CWR"),
    ];

    /// No flag set.
    pub const fn empty() -> TcpFlags {
        TcpFlags(0)
    }

    /// The raw byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every flag of `other` is set in `self`.
    pub const fn contains(self, other: TcpFlags) -> bool {
        self.0 & other.0 == other.0
    }

    /// Whether any flag of `other` is set in `self`.
    pub const fn intersects(self, other: TcpFlags) -> bool {
        self.0 & other.0 != 0
    }

    /// Whether no flag is set.
    pub const fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Sets the flags of `other`.
    pub fn insert(&mut self, other: TcpFlags) {
        self.0 |= other.0;
    }

    /// Clears the flags of `other`.
    pub fn remove(&mut self, other: TcpFlags) {
        self.0 &= !other.0;
    }

    /// Sets or clears the flags of `other`.
    pub fn set(&mut self, other: TcpFlags, value: bool) {
        if value {
            self.insert(other);
        } else {
            self.remove(other);
        }
    }
}

impl BitOr for TcpFlags {
    type Output = TcpFlags;
    fn bitor(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 | rhs.0)
    }
}

impl BitOrAssign for TcpFlags {
    fn bitor_assign(&mut self, rhs: TcpFlags) {
        self.0 |= rhs.0;
    }
}

impl BitAnd for TcpFlags {
    type Output = TcpFlags;
    fn bitand(self, rhs: TcpFlags) -> TcpFlags {
        TcpFlags(self.0 & rhs.0)
    }
}

impl BitAndAssign for TcpFlags {
    fn bitand_assign(&mut self, rhs: TcpFlags) {
        self.0 &= rhs.0;
    }
}

impl Not for TcpFlags {
    type Output = TcpFlags;
    fn not(self) -> TcpFlags {
        TcpFlags(!self.0)
    }
}

impl fmt::Debug for TcpFlags {
    /// `SYN|ACK`; `(empty)` when no flag is set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("(empty)");
        }
        let mut first = true;
        for (flag, name) in Self::NAMES {
            if self.contains(flag) {
                if !first {
                    f.write_str("|")?;
                }
                f.write_str(name)?;
                first = false;
            }
        }
        Ok(())
    }
}

impl fmt::Display for TcpFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self, f)
    }
}

// ---------------------------------------------------------------- SACK blocks

/// Up to four SACK blocks `(left edge, right edge)` (RFC 2018), stored
/// inline so the value is `Copy`.
#[derive(Clone, Copy, Default)]
pub struct SackBlocks {
    blocks: [(u32, u32); SackBlocks::MAX],
    len: u8,
}

impl SackBlocks {
    /// Most blocks an option can hold: 40 option bytes fit 2 + 4 * 8.
    pub const MAX: usize = 4;

    /// Most blocks that fit next to the 12 bytes of aligned timestamps:
    /// 12 + 2 + 2 + 3 * 8 = 40.
    pub const MAX_WITH_TIMESTAMPS: usize = 3;

    /// No blocks.
    pub const fn new() -> SackBlocks {
        SackBlocks {
            blocks: [(0, 0); Self::MAX],
            len: 0,
        }
    }

    /// The blocks of `blocks`; `None` if there are more than [`MAX`](Self::MAX).
    pub fn from_slice(blocks: &[(u32, u32)]) -> Option<SackBlocks> {
        let mut s = SackBlocks::new();
        for &b in blocks {
            if !s.push(b) {
                return None;
            }
        }
        Some(s)
    }

    /// Appends a block; returns `false` (and changes nothing) when full.
    pub fn push(&mut self, block: (u32, u32)) -> bool {
        match self.blocks.get_mut(usize::from(self.len)) {
            Some(slot) => {
                *slot = block;
                self.len += 1;
                true
            }
            None => false,
        }
    }

    /// Number of blocks, 0 to 4.
    pub const fn len(&self) -> usize {
        self.len as usize
    }

    /// Whether there are no blocks.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Removes all blocks.
    pub fn clear(&mut self) {
        *self = SackBlocks::new();
    }

    /// The blocks as a slice.
    pub fn as_slice(&self) -> &[(u32, u32)] {
        self.blocks.get(..self.len()).unwrap_or(&[])
    }

    /// The block at `index`, if any.
    pub fn get(&self, index: usize) -> Option<(u32, u32)> {
        self.as_slice().get(index).copied()
    }

    /// The blocks, in order.
    pub fn iter(&self) -> core::iter::Copied<core::slice::Iter<'_, (u32, u32)>> {
        self.as_slice().iter().copied()
    }
}

impl<'a> IntoIterator for &'a SackBlocks {
    type Item = (u32, u32);
    type IntoIter = core::iter::Copied<core::slice::Iter<'a, (u32, u32)>>;
    fn into_iter(self) -> Self::IntoIter {
        self.iter()
    }
}

impl PartialEq for SackBlocks {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SackBlocks {}

impl core::hash::Hash for SackBlocks {
    fn hash<H: core::hash::Hasher>(&self, state: &mut H) {
        self.as_slice().hash(state);
    }
}

impl fmt::Debug for SackBlocks {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

// ---------------------------------------------------------------- options

/// One TCP option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TcpOption<'a> {
    /// End of option list (kind 0); the rest of the option space is padding.
    EndOfList,
    /// No-operation (kind 1), used for alignment.
    NoOperation,
    /// Maximum segment size (kind 2, length 4).
    MaxSegmentSize(u16),
    /// Window scale shift count as sent (kind 3, length 3); not clamped here.
    WindowScale(u8),
    /// SACK permitted (kind 4, length 2).
    SackPermitted,
    /// SACK blocks (kind 5, length 2 + 8n, n = 1..=4).
    SackRange(SackBlocks),
    /// Timestamps (kind 8, length 10).
    Timestamps {
        /// The sender's timestamp value.
        tsval: u32,
        /// The echoed timestamp.
        tsecr: u32,
    },
    /// Any other kind, with the bytes after its length byte. Emitting one
    /// with a known kind number writes what it holds, for tests of
    /// malformed input.
    Unknown {
        /// Option kind.
        kind: u8,
        /// Option data (without kind and length).
        data: &'a [u8],
    },
}

impl<'a> TcpOption<'a> {
    /// Decodes an option of `kind` whose data (after the length byte) is `data`.
    fn from_kind_data(kind: u8, data: &'a [u8]) -> Result<TcpOption<'a>> {
        let malformed = Err(ParseError::Malformed);
        match kind {
            option_kind::MSS => match *data {
                [a, b] => Ok(TcpOption::MaxSegmentSize(u16::from_be_bytes([a, b]))),
                _ => malformed,
            },
            option_kind::WINDOW_SCALE => match *data {
                [s] => Ok(TcpOption::WindowScale(s)),
                _ => malformed,
            },
            option_kind::SACK_PERMITTED => match data {
                [] => Ok(TcpOption::SackPermitted),
                _ => malformed,
            },
            option_kind::SACK => {
                // 1 to 4 blocks of 8 bytes.
                if !matches!(data.len(), 8 | 16 | 24 | 32) {
                    return malformed;
                }
                let mut blocks = SackBlocks::new();
                for b in data.chunks_exact(8) {
                    blocks.push((read_u32(b, 0), read_u32(b, 4)));
                }
                Ok(TcpOption::SackRange(blocks))
            }
            option_kind::TIMESTAMPS => match *data {
                [a, b, c, d, e, f, g, h] => Ok(TcpOption::Timestamps {
                    tsval: u32::from_be_bytes([a, b, c, d]),
                    tsecr: u32::from_be_bytes([e, f, g, h]),
                }),
                _ => malformed,
            },
            _ => Ok(TcpOption::Unknown { kind, data }),
        }
    }

    /// Bytes [`emit`](Self::emit) writes.
    pub fn buffer_len(&self) -> usize {
        match self {
            TcpOption::EndOfList | TcpOption::NoOperation => 1,
            TcpOption::MaxSegmentSize(_) => 4,
            TcpOption::WindowScale(_) => 3,
            TcpOption::SackPermitted => 2,
            TcpOption::SackRange(b) => 2 + 8 * b.len(),
            TcpOption::Timestamps { .. } => 10,
            TcpOption::Unknown { data, .. } => 2 + data.len(),
        }
    }

    /// Writes this option at the start of `buf`, returning its length.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] if `buf` is too short;
    /// [`ParseError::Malformed`] for an empty `SackRange` or an `Unknown`
    /// whose data exceeds 253 bytes.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize> {
        let len = self.buffer_len();
        let Some(out) = buf.get_mut(..len) else {
            return Err(ParseError::Truncated);
        };
        match *self {
            TcpOption::EndOfList => write_u8(out, 0, option_kind::EOL),
            TcpOption::NoOperation => write_u8(out, 0, option_kind::NOP),
            TcpOption::MaxSegmentSize(mss) => {
                write_bytes(out, 0, &[option_kind::MSS, 4]);
                write_u16(out, 2, mss);
            }
            TcpOption::WindowScale(s) => write_bytes(out, 0, &[option_kind::WINDOW_SCALE, 3, s]),
            TcpOption::SackPermitted => write_bytes(out, 0, &[option_kind::SACK_PERMITTED, 2]),
            TcpOption::SackRange(blocks) => {
                if blocks.is_empty() {
                    return Err(ParseError::Malformed);
                }
                write_sack(out, 0, &blocks);
            }
            TcpOption::Timestamps { tsval, tsecr } => write_timestamps(out, 0, tsval, tsecr),
            TcpOption::Unknown { kind, data } => {
                let Ok(l) = u8::try_from(len) else {
                    return Err(ParseError::Malformed);
                };
                write_bytes(out, 0, &[kind, l]);
                write_bytes(out, 2, data);
            }
        }
        Ok(len)
    }
}

/// Writes `08 0a tsval tsecr` at `at`.
#[inline(always)]
fn write_timestamps(b: &mut [u8], at: usize, tsval: u32, tsecr: u32) {
    write_bytes(b, at, &[option_kind::TIMESTAMPS, 10]);
    write_u32(b, at + 2, tsval);
    write_u32(b, at + 6, tsecr);
}

/// Writes `05 len (left right)*` at `at`.
#[inline]
fn write_sack(b: &mut [u8], at: usize, blocks: &SackBlocks) {
    // At most 2 + 4 * 8 = 34, fits a u8.
    write_bytes(b, at, &[option_kind::SACK, (2 + 8 * blocks.len()) as u8]);
    for (i, (left, right)) in blocks.iter().enumerate() {
        write_u32(b, at + 2 + 8 * i, left);
        write_u32(b, at + 6 + 8 * i, right);
    }
}

/// Iterator over the options of a header.
///
/// Yields every option including `NoOperation`; `EndOfList` is yielded once
/// and ends the iteration. A length byte that is missing, below 2 or runs
/// past the end yields `Err(Malformed)` and ends the iteration; a known kind
/// with the wrong length yields `Err(Malformed)` and iteration goes on
/// after it (its length byte still delimits it). Unknown kinds are yielded
/// as [`TcpOption::Unknown`] and skipped via their length.
#[derive(Debug, Clone)]
pub struct TcpOptions<'a> {
    rest: &'a [u8],
    done: bool,
}

impl<'a> TcpOptions<'a> {
    /// Iterates over raw option bytes (the header after its first 20 bytes).
    pub fn new(options: &'a [u8]) -> TcpOptions<'a> {
        TcpOptions {
            rest: options,
            done: false,
        }
    }

    fn fail(&mut self) -> Option<Result<TcpOption<'a>>> {
        self.done = true;
        self.rest = &[];
        Some(Err(ParseError::Malformed))
    }
}

impl<'a> Iterator for TcpOptions<'a> {
    type Item = Result<TcpOption<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let (&kind, after_kind) = self.rest.split_first()?;
        match kind {
            option_kind::EOL => {
                self.done = true;
                self.rest = &[];
                Some(Ok(TcpOption::EndOfList))
            }
            option_kind::NOP => {
                self.rest = after_kind;
                Some(Ok(TcpOption::NoOperation))
            }
            _ => {
                let Some(&len) = after_kind.first() else {
                    return self.fail();
                };
                let len = usize::from(len);
                if len < 2 {
                    return self.fail();
                }
                let Some((option, rest)) = self.rest.split_at_checked(len) else {
                    return self.fail();
                };
                self.rest = rest;
                let data = option.get(2..).unwrap_or(&[]);
                Some(TcpOption::from_kind_data(kind, data))
            }
        }
    }
}

impl FusedIterator for TcpOptions<'_> {}

// ---------------------------------------------------------------- view

/// A zero-copy view of a TCP segment: header, options and payload.
///
/// Checked invariants: at least 20 bytes, data offset at least 5, and the
/// header no longer than the buffer. The buffer must end where the segment
/// ends (pass [`Ipv4Packet::payload`](super::Ipv4Packet::payload), which
/// excludes Ethernet padding), since the payload runs to its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpSegment<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpSegment<T> {
    /// Wraps `buffer` after checking its lengths.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] if shorter than 20 bytes or than the header
    /// length; [`ParseError::Malformed`] if the data offset is below 5.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let header_len = usize::from(read_u8(b, field::DATA_OFF) >> 4) * 4;
        if header_len < HEADER_LEN {
            return Err(ParseError::Malformed);
        }
        if header_len > b.len() {
            return Err(ParseError::Truncated);
        }
        Ok(TcpSegment { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole segment.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Source port.
    #[inline]
    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    /// Destination port.
    #[inline]
    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// Sequence number.
    #[inline]
    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ)
    }

    /// Acknowledgment number (meaningful only with ACK set).
    #[inline]
    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK)
    }

    /// Header length in bytes (data offset * 4), 20 to 60.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(read_u8(self.buffer.as_ref(), field::DATA_OFF) >> 4) * 4
    }

    /// The flags.
    #[inline]
    pub fn flags(&self) -> TcpFlags {
        TcpFlags(read_u8(self.buffer.as_ref(), field::FLAGS))
    }

    /// Window field, unscaled.
    #[inline]
    pub fn window_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    /// Checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Urgent pointer field.
    #[inline]
    pub fn urgent_at(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    /// Option bytes, between the fixed header and the payload.
    #[inline]
    pub fn options(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(field::OPTIONS..self.header_len())
            .unwrap_or(&[])
    }

    /// Iterator over the options.
    #[inline]
    pub fn options_iter(&self) -> TcpOptions<'_> {
        TcpOptions::new(self.options())
    }

    /// The payload: everything after the header.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(self.header_len()..).unwrap_or(&[])
    }

    /// The timestamps option `(tsval, tsecr)`, if present.
    ///
    /// Hot path: checks the aligned `NOP NOP TS` layout at the start of the
    /// options (what Linux and this stack send on every non-SYN segment)
    /// with one comparison; otherwise walks the options and returns the
    /// first timestamps option before any malformed one.
    #[inline]
    pub fn timestamps(&self) -> Option<(u32, u32)> {
        let bytes = self.buffer.as_ref();
        if self.header_len() >= field::OPTIONS + 12 {
            if let Some(&[1, 1, 8, 10, a, b, c, d, e, f, g, h]) =
                bytes.get(field::OPTIONS..field::OPTIONS + 12)
            {
                return Some((
                    u32::from_be_bytes([a, b, c, d]),
                    u32::from_be_bytes([e, f, g, h]),
                ));
            }
        }
        self.timestamps_slow()
    }

    #[cold]
    fn timestamps_slow(&self) -> Option<(u32, u32)> {
        self.options_iter()
            .map_while(|o| o.ok())
            .find_map(|o| match o {
                TcpOption::Timestamps { tsval, tsecr } => Some((tsval, tsecr)),
                _ => None,
            })
    }

    /// Whether the checksum over the pseudo header (with `src` and `dst`)
    /// and the whole segment is correct. `false` for segments longer than
    /// 65535 bytes, which no IPv4 packet can carry.
    #[inline]
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        let b = self.buffer.as_ref();
        let Ok(len) = u16::try_from(b.len()) else {
            return false;
        };
        let pseudo = checksum::pseudo_header_sum(src, dst, PROTO_TCP, len);
        checksum::fold(checksum::sum(b, pseudo)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpSegment<T> {
    /// Sets the source port.
    pub fn set_src_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, port);
    }

    /// Sets the destination port.
    pub fn set_dst_port(&mut self, port: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, port);
    }

    /// Sets the sequence number.
    pub fn set_seq_number(&mut self, seq: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ, seq);
    }

    /// Sets the acknowledgment number.
    pub fn set_ack_number(&mut self, ack: u32) {
        write_u32(self.buffer.as_mut(), field::ACK, ack);
    }

    /// Sets the flags.
    pub fn set_flags(&mut self, flags: TcpFlags) {
        write_u8(self.buffer.as_mut(), field::FLAGS, flags.0);
    }

    /// Sets the window field.
    pub fn set_window_len(&mut self, window: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW, window);
    }

    /// Sets the checksum field to `value`.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Sets the urgent pointer.
    pub fn set_urgent_at(&mut self, at: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, at);
    }

    /// The payload, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let at = self.header_len();
        self.buffer.as_mut().get_mut(at..).unwrap_or(&mut [])
    }

    /// Computes and stores the checksum over the pseudo header and the
    /// whole buffer. See [`fill_checksum`].
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        fill_checksum(self.buffer.as_mut(), src, dst);
    }
}

/// Computes and stores the checksum of the TCP segment `segment` (header
/// and payload, nothing after) sent from `src` to `dst`. The previous
/// checksum field value is ignored.
///
/// Does nothing if `segment` is shorter than a TCP header or longer than
/// 65535 bytes: neither can come out of [`TcpRepr::emit_header`] plus a
/// payload that fits an IPv4 packet.
#[inline]
pub fn fill_checksum(segment: &mut [u8], src: Ipv4Addr, dst: Ipv4Addr) {
    if segment.len() < HEADER_LEN {
        return;
    }
    let Ok(len) = u16::try_from(segment.len()) else {
        return;
    };
    write_u16(segment, field::CHECKSUM, 0);
    let pseudo = checksum::pseudo_header_sum(src, dst, PROTO_TCP, len);
    let c = checksum::finish(checksum::sum(segment, pseudo));
    write_u16(segment, field::CHECKSUM, c);
}

// ---------------------------------------------------------------- repr

/// A TCP segment's header, validated, as the TCP logic consumes it.
///
/// `Default` gives ports 0, which are invalid: fill them in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct TcpRepr {
    /// Source port, non-zero.
    pub src_port: u16,
    /// Destination port, non-zero.
    pub dst_port: u16,
    /// Sequence number.
    pub seq_number: u32,
    /// Acknowledgment number: `Some` exactly when `flags` has ACK.
    pub ack_number: Option<u32>,
    /// All eight flags, ACK included.
    pub flags: TcpFlags,
    /// Window field, unscaled.
    pub window_len: u16,
    /// MSS option.
    pub max_seg_size: Option<u16>,
    /// Window scale option, 0 to 14.
    pub window_scale: Option<u8>,
    /// SACK-permitted option.
    pub sack_permitted: bool,
    /// SACK option blocks; empty for none. At most 3 fit with timestamps.
    pub sack_ranges: SackBlocks,
    /// Timestamps option `(tsval, tsecr)`.
    pub timestamp: Option<(u32, u32)>,
    /// Payload length in bytes.
    pub payload_len: usize,
}

impl TcpRepr {
    /// Length of the fixed header; same as the module's [`HEADER_LEN`].
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Reads a checked segment sent from `src` to `dst`.
    ///
    /// Unknown options are skipped. When an option appears more than once,
    /// the first occurrence counts. A window scale above 14 is taken as 14
    /// (RFC 7323 section 2.3).
    ///
    /// # Errors
    /// [`ParseError::Checksum`] if `verify_checksum` and the checksum is
    /// wrong; [`ParseError::Malformed`] if a port is 0 or the options are
    /// malformed (see [`TcpOptions`]).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        segment: &TcpSegment<&T>,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        verify_checksum: bool,
    ) -> Result<TcpRepr> {
        if verify_checksum && !segment.verify_checksum(src, dst) {
            return Err(ParseError::Checksum);
        }
        let src_port = segment.src_port();
        let dst_port = segment.dst_port();
        if src_port == 0 || dst_port == 0 {
            return Err(ParseError::Malformed);
        }
        let flags = segment.flags();
        let mut repr = TcpRepr {
            src_port,
            dst_port,
            seq_number: segment.seq_number(),
            ack_number: flags.contains(TcpFlags::ACK).then(|| segment.ack_number()),
            flags,
            window_len: segment.window_len(),
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_ranges: SackBlocks::new(),
            timestamp: None,
            payload_len: segment.payload().len(),
        };
        for option in segment.options_iter() {
            match option? {
                TcpOption::EndOfList | TcpOption::NoOperation | TcpOption::Unknown { .. } => {}
                TcpOption::MaxSegmentSize(mss) => {
                    repr.max_seg_size.get_or_insert(mss);
                }
                TcpOption::WindowScale(shift) => {
                    repr.window_scale.get_or_insert(shift.min(MAX_WINDOW_SCALE));
                }
                TcpOption::SackPermitted => repr.sack_permitted = true,
                TcpOption::SackRange(blocks) => {
                    if repr.sack_ranges.is_empty() {
                        repr.sack_ranges = blocks;
                    }
                }
                TcpOption::Timestamps { tsval, tsecr } => {
                    repr.timestamp.get_or_insert((tsval, tsecr));
                }
            }
        }
        Ok(repr)
    }

    /// Bytes of options [`emit_header`](Self::emit_header) writes, in the
    /// aligned layout described in the module docs. May exceed
    /// [`MAX_OPTIONS_LEN`], in which case emitting fails.
    pub const fn options_len(&self) -> usize {
        let mut len = 0;
        if self.max_seg_size.is_some() {
            len += 4;
        }
        if self.timestamp.is_some() {
            len += 12; // SACK_PERM or NOP NOP, then TS
        } else if self.sack_permitted {
            len += 4; // NOP NOP SACK_PERM
        }
        if self.window_scale.is_some() {
            len += 4; // NOP WS
        }
        if !self.sack_ranges.is_empty() {
            len += 4 + 8 * self.sack_ranges.len(); // NOP NOP SACK blocks
        }
        len
    }

    /// Header length with options (always a multiple of 4).
    pub const fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }

    /// Header plus payload length.
    pub const fn buffer_len(&self) -> usize {
        self.header_len() + self.payload_len
    }

    /// Sequence space the segment occupies (RFC 9293 SEG.LEN): payload
    /// length plus one for SYN and one for FIN.
    pub const fn segment_len(&self) -> usize {
        self.payload_len
            + self.flags.contains(TcpFlags::SYN) as usize
            + self.flags.contains(TcpFlags::FIN) as usize
    }

    /// Checks what emitting requires.
    fn check(&self) -> Result<()> {
        let consistent = self.src_port != 0
            && self.dst_port != 0
            && self.ack_number.is_some() == self.flags.contains(TcpFlags::ACK)
            && self.window_scale.is_none_or(|s| s <= MAX_WINDOW_SCALE)
            && self.options_len() <= MAX_OPTIONS_LEN
            && self.buffer_len() <= u16::MAX as usize;
        if consistent {
            Ok(())
        } else {
            Err(ParseError::Malformed)
        }
    }

    /// Writes the header and options at the start of `buf`, with a zero
    /// checksum and urgent pointer, and returns the header length. The
    /// caller writes `payload_len` bytes after it, then calls
    /// [`fill_checksum`] on the whole segment.
    ///
    /// # Errors
    /// [`ParseError::Malformed`] if the repr cannot be emitted: a port is 0,
    /// `ack_number` disagrees with the ACK flag, the window scale exceeds
    /// 14, the options exceed 40 bytes or the segment 65535 bytes;
    /// [`ParseError::Truncated`] if `buf` is shorter than the header.
    pub fn emit_header(&self, buf: &mut [u8]) -> Result<usize> {
        self.check()?;
        let header_len = self.header_len();
        let Some(h) = buf.get_mut(..header_len) else {
            return Err(ParseError::Truncated);
        };
        write_u16(h, field::SRC_PORT, self.src_port);
        write_u16(h, field::DST_PORT, self.dst_port);
        write_u32(h, field::SEQ, self.seq_number);
        write_u32(h, field::ACK, self.ack_number.unwrap_or(0));
        // header_len <= 60, so header_len / 4 fits the 4-bit field.
        write_u8(h, field::DATA_OFF, ((header_len / 4) as u8) << 4);
        write_u8(h, field::FLAGS, self.flags.0);
        write_u16(h, field::WINDOW, self.window_len);
        write_u16(h, field::CHECKSUM, 0);
        write_u16(h, field::URGENT, 0);

        let mut at = field::OPTIONS;
        if let Some(mss) = self.max_seg_size {
            write_bytes(h, at, &[option_kind::MSS, 4]);
            write_u16(h, at + 2, mss);
            at += 4;
        }
        match (self.sack_permitted, self.timestamp) {
            (true, Some((tsval, tsecr))) => {
                write_bytes(h, at, &[option_kind::SACK_PERMITTED, 2]);
                write_timestamps(h, at + 2, tsval, tsecr);
                at += 12;
            }
            (false, Some((tsval, tsecr))) => {
                write_bytes(h, at, &[option_kind::NOP, option_kind::NOP]);
                write_timestamps(h, at + 2, tsval, tsecr);
                at += 12;
            }
            (true, None) => {
                write_bytes(
                    h,
                    at,
                    &[
                        option_kind::NOP,
                        option_kind::NOP,
                        option_kind::SACK_PERMITTED,
                        2,
                    ],
                );
                at += 4;
            }
            (false, None) => {}
        }
        if let Some(shift) = self.window_scale {
            write_bytes(
                h,
                at,
                &[option_kind::NOP, option_kind::WINDOW_SCALE, 3, shift],
            );
            at += 4;
        }
        if !self.sack_ranges.is_empty() {
            write_bytes(h, at, &[option_kind::NOP, option_kind::NOP]);
            write_sack(h, at + 2, &self.sack_ranges);
        }
        Ok(header_len)
    }

    /// Writes the whole segment at the start of `buf`: header, options,
    /// `payload` right after, and the checksum over the pseudo header (for
    /// `src` to `dst`), header and payload. Returns the segment length.
    ///
    /// # Errors
    /// As [`emit_header`](Self::emit_header); also
    /// [`ParseError::Malformed`] if `payload.len() != self.payload_len`,
    /// and [`ParseError::Truncated`] if `buf` cannot hold the segment.
    pub fn emit(
        &self,
        buf: &mut [u8],
        src: Ipv4Addr,
        dst: Ipv4Addr,
        payload: &[u8],
    ) -> Result<usize> {
        if payload.len() != self.payload_len {
            return Err(ParseError::Malformed);
        }
        self.check()?;
        let total = self.buffer_len();
        let Some(segment) = buf.get_mut(..total) else {
            return Err(ParseError::Truncated);
        };
        let header_len = self.emit_header(segment)?;
        write_bytes(segment, header_len, payload);
        fill_checksum(segment, src, dst);
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{EthernetFrame, Ipv4Packet};
    use proptest::prelude::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    // All segments below were captured from Linux over a veth pair between
    // 10.99.0.1 (A) and 10.99.0.2 (B), with checksum offload off, so their
    // checksums are real.

    /// A's SYN: mss 1460, sackOK, TS val 0x5ed73fd6 ecr 0, nop, wscale 10.
    #[rustfmt::skip]
    const SYN: [u8; 40] = [
        0x98, 0x32, 0x1f, 0x90,             // ports 38962 -> 8080
        0xcc, 0xdb, 0x8e, 0x52,             // seq
        0x00, 0x00, 0x00, 0x00,             // ack
        0xa0, 0x02, 0xfa, 0xf0,             // offset 10, SYN, window 64240
        0x86, 0xa5, 0x00, 0x00,             // checksum, urgent
        0x02, 0x04, 0x05, 0xb4,             // MSS 1460
        0x04, 0x02, 0x08, 0x0a,             // SACK_PERM, TS...
        0x5e, 0xd7, 0x3f, 0xd6,
        0x00, 0x00, 0x00, 0x00,
        0x01, 0x03, 0x03, 0x0a,             // NOP, WS 10
    ];

    /// B's SYN-ACK, same options.
    #[rustfmt::skip]
    const SYN_ACK: [u8; 40] = [
        0x1f, 0x90, 0x98, 0x32,
        0x87, 0x72, 0x56, 0xb2,
        0xcc, 0xdb, 0x8e, 0x53,
        0xa0, 0x12, 0xfe, 0x88,             // SYN|ACK, window 65160
        0x91, 0x7a, 0x00, 0x00,
        0x02, 0x04, 0x05, 0xb4,
        0x04, 0x02, 0x08, 0x0a,
        0x91, 0x7a, 0x81, 0xe2,
        0x5e, 0xd7, 0x3f, 0xd6,
        0x01, 0x03, 0x03, 0x0a,
    ];

    /// A's first data segment: PSH|ACK, NOP NOP TS, "hello world\n".
    #[rustfmt::skip]
    const DATA: [u8; 44] = [
        0x98, 0x32, 0x1f, 0x90,
        0xcc, 0xdb, 0x8e, 0x53,
        0x87, 0x72, 0x56, 0xb3,
        0x80, 0x18, 0x00, 0x3f,             // offset 8, PSH|ACK, window 63
        0x2c, 0xa6, 0x00, 0x00,
        0x01, 0x01, 0x08, 0x0a,             // NOP NOP TS
        0x5e, 0xd7, 0x3f, 0xd7,
        0x91, 0x7a, 0x81, 0xe2,
        b'h', b'e', b'l', b'l', b'o', b' ', b'w', b'o', b'r', b'l', b'd', b'\n',
    ];

    /// A duplicate ACK from A with one SACK block (another connection,
    /// 48668 -> 8082).
    #[rustfmt::skip]
    const SACK_ONE: [u8; 44] = [
        0xbe, 0x1c, 0x1f, 0x92,
        0x83, 0xf7, 0xfc, 0x3f,
        0x2c, 0x44, 0x6c, 0x53,
        0xb0, 0x10, 0x00, 0x3f,             // offset 11, ACK
        0xa0, 0x9c, 0x00, 0x00,
        0x01, 0x01, 0x08, 0x0a,
        0x11, 0x05, 0x64, 0x78,
        0xf8, 0xe2, 0xf4, 0x22,
        0x01, 0x01, 0x05, 0x0a,             // NOP NOP SACK len 10
        0x2c, 0x44, 0x6c, 0xb7,
        0x2c, 0x44, 0x6c, 0xc1,
    ];

    /// The next duplicate ACK, two SACK blocks, newest first.
    #[rustfmt::skip]
    const SACK_TWO: [u8; 52] = [
        0xbe, 0x1c, 0x1f, 0x92,
        0x83, 0xf7, 0xfc, 0x3f,
        0x2c, 0x44, 0x6c, 0x53,
        0xd0, 0x10, 0x00, 0x3f,             // offset 13, ACK
        0x4d, 0x8e, 0x00, 0x00,
        0x01, 0x01, 0x08, 0x0a,
        0x11, 0x05, 0x64, 0xad,
        0xf8, 0xe2, 0xf4, 0x22,
        0x01, 0x01, 0x05, 0x12,             // NOP NOP SACK len 18
        0x2c, 0x44, 0x6d, 0x1b,
        0x2c, 0x44, 0x6d, 0x25,
        0x2c, 0x44, 0x6c, 0xb7,
        0x2c, 0x44, 0x6c, 0xc1,
    ];

    /// The DATA segment as the whole Ethernet frame it travelled in.
    #[rustfmt::skip]
    const DATA_FRAME: [u8; 78] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x00,
        0x45, 0x00, 0x00, 0x40, 0x6a, 0x5f, 0x40, 0x00, 0x40, 0x06, 0xbb, 0x90,
        0x0a, 0x63, 0x00, 0x01, 0x0a, 0x63, 0x00, 0x02,
        0x98, 0x32, 0x1f, 0x90, 0xcc, 0xdb, 0x8e, 0x53, 0x87, 0x72, 0x56, 0xb3,
        0x80, 0x18, 0x00, 0x3f, 0x2c, 0xa6, 0x00, 0x00,
        0x01, 0x01, 0x08, 0x0a, 0x5e, 0xd7, 0x3f, 0xd7, 0x91, 0x7a, 0x81, 0xe2,
        b'h', b'e', b'l', b'l', b'o', b' ', b'w', b'o', b'r', b'l', b'd', b'\n',
    ];

    fn syn_repr() -> TcpRepr {
        TcpRepr {
            src_port: 38962,
            dst_port: 8080,
            seq_number: 0xccdb_8e52,
            ack_number: None,
            flags: TcpFlags::SYN,
            window_len: 64240,
            max_seg_size: Some(1460),
            window_scale: Some(10),
            sack_permitted: true,
            sack_ranges: SackBlocks::new(),
            timestamp: Some((0x5ed7_3fd6, 0)),
            payload_len: 0,
        }
    }

    fn data_repr() -> TcpRepr {
        TcpRepr {
            src_port: 38962,
            dst_port: 8080,
            seq_number: 0xccdb_8e53,
            ack_number: Some(0x8772_56b3),
            flags: TcpFlags::PSH | TcpFlags::ACK,
            window_len: 63,
            max_seg_size: None,
            window_scale: None,
            sack_permitted: false,
            sack_ranges: SackBlocks::new(),
            timestamp: Some((0x5ed7_3fd7, 0x917a_81e2)),
            payload_len: 12,
        }
    }

    fn emit_to_vec(repr: &TcpRepr, src: Ipv4Addr, dst: Ipv4Addr, payload: &[u8]) -> Vec<u8> {
        let mut buf = vec![0u8; repr.buffer_len()];
        assert_eq!(repr.emit(&mut buf, src, dst, payload), Ok(buf.len()));
        buf
    }

    #[test]
    fn parse_linux_syn() {
        let s = TcpSegment::new_checked(&SYN[..]).unwrap();
        assert_eq!(s.src_port(), 38962);
        assert_eq!(s.dst_port(), 8080);
        assert_eq!(s.seq_number(), 0xccdb_8e52);
        assert_eq!(s.ack_number(), 0);
        assert_eq!(s.header_len(), 40);
        assert_eq!(s.flags(), TcpFlags::SYN);
        assert_eq!(s.window_len(), 64240);
        assert_eq!(s.checksum(), 0x86a5);
        assert_eq!(s.urgent_at(), 0);
        assert_eq!(s.options(), &SYN[20..]);
        assert!(s.payload().is_empty());
        assert!(s.verify_checksum(A, B));
        assert!(!s.verify_checksum(B, Ipv4Addr::new(10, 99, 0, 3)));
        assert_eq!(s.timestamps(), Some((0x5ed7_3fd6, 0)));
        let options: Vec<_> = s.options_iter().collect();
        assert_eq!(
            options,
            [
                Ok(TcpOption::MaxSegmentSize(1460)),
                Ok(TcpOption::SackPermitted),
                Ok(TcpOption::Timestamps {
                    tsval: 0x5ed7_3fd6,
                    tsecr: 0
                }),
                Ok(TcpOption::NoOperation),
                Ok(TcpOption::WindowScale(10)),
            ]
        );
        let r = TcpRepr::parse(&s, A, B, true).unwrap();
        assert_eq!(r, syn_repr());
        assert_eq!(r.header_len(), 40);
        assert_eq!(r.segment_len(), 1);
        assert_eq!(emit_to_vec(&r, A, B, &[]), SYN);
    }

    #[test]
    fn parse_linux_syn_ack() {
        let s = TcpSegment::new_checked(&SYN_ACK[..]).unwrap();
        assert!(s.verify_checksum(B, A));
        let r = TcpRepr::parse(&s, B, A, true).unwrap();
        assert_eq!(
            r,
            TcpRepr {
                src_port: 8080,
                dst_port: 38962,
                seq_number: 0x8772_56b2,
                ack_number: Some(0xccdb_8e53),
                flags: TcpFlags::SYN | TcpFlags::ACK,
                window_len: 65160,
                max_seg_size: Some(1460),
                window_scale: Some(10),
                sack_permitted: true,
                sack_ranges: SackBlocks::new(),
                timestamp: Some((0x917a_81e2, 0x5ed7_3fd6)),
                payload_len: 0,
            }
        );
        assert_eq!(emit_to_vec(&r, B, A, &[]), SYN_ACK);
        // Addresses the wrong way round: the checksum no longer matches.
        assert_eq!(
            TcpRepr::parse(&s, A, Ipv4Addr::new(10, 99, 0, 3), true),
            Err(ParseError::Checksum)
        );
    }

    #[test]
    fn parse_linux_data() {
        let s = TcpSegment::new_checked(&DATA[..]).unwrap();
        assert_eq!(s.header_len(), 32);
        assert_eq!(s.flags(), TcpFlags::PSH | TcpFlags::ACK);
        assert_eq!(s.ack_number(), 0x8772_56b3);
        assert_eq!(s.payload(), b"hello world\n");
        assert_eq!(s.timestamps(), Some((0x5ed7_3fd7, 0x917a_81e2)));
        let r = TcpRepr::parse(&s, A, B, true).unwrap();
        assert_eq!(r, data_repr());
        assert_eq!(r.segment_len(), 12);
        assert_eq!(emit_to_vec(&r, A, B, b"hello world\n"), DATA);
    }

    #[test]
    fn parse_linux_sack() {
        let s = TcpSegment::new_checked(&SACK_ONE[..]).unwrap();
        let r = TcpRepr::parse(&s, A, B, true).unwrap();
        assert_eq!(
            r,
            TcpRepr {
                src_port: 48668,
                dst_port: 8082,
                seq_number: 0x83f7_fc3f,
                ack_number: Some(0x2c44_6c53),
                flags: TcpFlags::ACK,
                window_len: 63,
                max_seg_size: None,
                window_scale: None,
                sack_permitted: false,
                sack_ranges: SackBlocks::from_slice(&[(0x2c44_6cb7, 0x2c44_6cc1)]).unwrap(),
                timestamp: Some((0x1105_6478, 0xf8e2_f422)),
                payload_len: 0,
            }
        );
        assert_eq!(s.timestamps(), r.timestamp);
        assert_eq!(emit_to_vec(&r, A, B, &[]), SACK_ONE);

        let s = TcpSegment::new_checked(&SACK_TWO[..]).unwrap();
        let r = TcpRepr::parse(&s, A, B, true).unwrap();
        assert_eq!(
            r.sack_ranges.as_slice(),
            &[(0x2c44_6d1b, 0x2c44_6d25), (0x2c44_6cb7, 0x2c44_6cc1)]
        );
        assert_eq!(r.timestamp, Some((0x1105_64ad, 0xf8e2_f422)));
        assert_eq!(emit_to_vec(&r, A, B, &[]), SACK_TWO);
    }

    #[test]
    fn whole_frame_and_its_truncations() {
        let parse = |bytes: &[u8]| -> Result<TcpRepr> {
            let eth = EthernetFrame::new_checked(bytes)?;
            let ip = Ipv4Packet::new_checked(eth.payload())?;
            let ip_repr = crate::wire::Ipv4Repr::parse(&ip, true)?;
            let tcp = TcpSegment::new_checked(ip.payload())?;
            TcpRepr::parse(&tcp, ip_repr.src_addr, ip_repr.dst_addr, true)
        };
        assert_eq!(parse(&DATA_FRAME), Ok(data_repr()));
        for n in 0..DATA_FRAME.len() {
            assert!(parse(&DATA_FRAME[..n]).is_err(), "length {n}");
        }
        // Ethernet padding after the IP packet is ignored.
        let mut padded = DATA_FRAME.to_vec();
        padded.extend_from_slice(&[0; 6]);
        assert_eq!(parse(&padded), Ok(data_repr()));
    }

    #[test]
    fn truncated_at_every_length() {
        for packet in [&SYN[..], &SYN_ACK, &DATA, &SACK_ONE, &SACK_TWO] {
            let header_len = TcpSegment::new_checked(packet).unwrap().header_len();
            for n in 0..packet.len() {
                let r = TcpSegment::new_checked(&packet[..n]);
                if n < header_len {
                    assert_eq!(r.err(), Some(ParseError::Truncated), "length {n}");
                } else {
                    // A shorter payload is still a segment, just not the one
                    // whose checksum we have.
                    let s = r.unwrap();
                    assert_eq!(TcpRepr::parse(&s, A, B, true), Err(ParseError::Checksum));
                }
            }
        }
        let repr = data_repr();
        for n in 0..repr.buffer_len() {
            let mut buf = vec![0; n];
            assert_eq!(
                repr.emit(&mut buf, A, B, b"hello world\n"),
                Err(ParseError::Truncated),
                "length {n}"
            );
            if n < repr.header_len() {
                assert_eq!(repr.emit_header(&mut buf), Err(ParseError::Truncated));
            }
        }
    }

    #[test]
    fn impossible_data_offsets() {
        for offset in 0..5u8 {
            let mut b = DATA;
            b[12] = offset << 4;
            assert_eq!(
                TcpSegment::new_checked(&b[..]).err(),
                Some(ParseError::Malformed),
                "offset {offset}"
            );
        }
        let mut b = SYN;
        b[12] = 0xb0; // 44 bytes of header in a 40-byte segment
        assert_eq!(
            TcpSegment::new_checked(&b[..]).err(),
            Some(ParseError::Truncated)
        );
        b[12] = 0xf0;
        assert_eq!(
            TcpSegment::new_checked(&b[..]).err(),
            Some(ParseError::Truncated)
        );
    }

    #[test]
    fn zero_ports_are_malformed() {
        for at in [0, 2] {
            let mut b = DATA;
            b[at] = 0;
            b[at + 1] = 0;
            let s = TcpSegment::new_checked(&b[..]).unwrap();
            assert_eq!(TcpRepr::parse(&s, A, B, false), Err(ParseError::Malformed));
        }
    }

    /// A header with `options` (padded with EOL to a multiple of 4).
    fn with_options(options: &[u8]) -> Vec<u8> {
        let padded = options.len().div_ceil(4) * 4;
        let mut b = vec![0u8; HEADER_LEN + padded];
        b[..HEADER_LEN].copy_from_slice(&DATA[..HEADER_LEN]);
        b[12] = ((b.len() / 4) as u8) << 4;
        b[HEADER_LEN..HEADER_LEN + options.len()].copy_from_slice(options);
        b
    }

    /// Parses a header carrying `options` and hands the option list and
    /// the repr to `check`.
    fn with_parsed(options: &[u8], check: impl FnOnce(&[Result<TcpOption<'_>>], Result<TcpRepr>)) {
        let b = with_options(options);
        let s = TcpSegment::new_checked(&b[..]).unwrap();
        let list: Vec<_> = s.options_iter().collect();
        check(&list, TcpRepr::parse(&s, A, B, false));
    }

    #[test]
    fn bad_option_lengths() {
        let malformed = Err(ParseError::Malformed);
        // Length 0 and 1 would loop forever or overlap the next kind.
        for len in [0u8, 1] {
            with_parsed(&[2, len, 5, 0xb4], |list, repr| {
                assert_eq!(list, [malformed]);
                assert_eq!(repr.err(), Some(ParseError::Malformed));
            });
        }
        // Overrunning the option space.
        with_parsed(&[1, 1, 8, 12, 0, 0, 0, 1, 0, 0, 0, 2], |list, repr| {
            let nop = Ok(TcpOption::NoOperation);
            assert_eq!(list, [nop, nop, malformed]);
            assert_eq!(repr.err(), Some(ParseError::Malformed));
        });
        // Kind without a length byte at the very end.
        with_parsed(&[1, 1, 1, 2], |list, _| {
            assert_eq!(list.last(), Some(&malformed))
        });
        // Known kinds with the wrong length; iteration resumes after them.
        for option in [
            &[2u8, 3, 5][..],
            &[2, 5, 5, 0xb4, 0],
            &[3, 2],
            &[3, 4, 7, 7],
            &[4, 3, 0],
            &[5, 2],
            &[5, 9, 0, 0, 0, 1, 0, 0, 0],
            &[8, 8, 0, 0, 0, 1, 0, 0],
        ] {
            let mut bytes = option.to_vec();
            bytes.extend_from_slice(&[1, 3, 3, 7]);
            with_parsed(&bytes, |list, repr| {
                assert_eq!(list[0], malformed, "{option:?}");
                assert_eq!(
                    list[1..3],
                    [Ok(TcpOption::NoOperation), Ok(TcpOption::WindowScale(7))]
                );
                assert_eq!(repr.err(), Some(ParseError::Malformed));
            });
        }
    }

    #[test]
    fn unknown_options_eol_and_duplicates() {
        // Unknown kind 30 (MPTCP) with 4 data bytes, then MSS, EOL, junk.
        with_parsed(
            &[30, 6, 1, 2, 3, 4, 2, 4, 0x05, 0xb4, 0, 0xff],
            |list, repr| {
                assert_eq!(
                    list,
                    [
                        Ok(TcpOption::Unknown {
                            kind: 30,
                            data: &[1, 2, 3, 4]
                        }),
                        Ok(TcpOption::MaxSegmentSize(1460)),
                        Ok(TcpOption::EndOfList),
                    ]
                );
                assert_eq!(repr.unwrap().max_seg_size, Some(1460));
            },
        );
        // Duplicates: the first counts; an oversized shift is clamped.
        with_parsed(&[3, 3, 15, 3, 3, 2, 2, 4, 1, 0, 2, 4, 2, 0], |_, repr| {
            let repr = repr.unwrap();
            assert_eq!(repr.window_scale, Some(14));
            assert_eq!(repr.max_seg_size, Some(256));
        });
    }

    #[test]
    fn timestamps_fallback_layouts() {
        // Unaligned: TS first without NOPs.
        let b = with_options(&[8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(
            TcpSegment::new_checked(&b[..]).unwrap().timestamps(),
            Some((1, 2))
        );
        // After a SACK option.
        let b = with_options(&[
            1, 1, 5, 10, 0, 0, 0, 5, 0, 0, 0, 6, 1, 1, 8, 10, 0, 0, 0, 3, 0, 0, 0, 4,
        ]);
        assert_eq!(
            TcpSegment::new_checked(&b[..]).unwrap().timestamps(),
            Some((3, 4))
        );
        // Behind a malformed option: not found.
        let b = with_options(&[2, 0, 1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(TcpSegment::new_checked(&b[..]).unwrap().timestamps(), None);
        // No options; a NOP NOP TS pattern lying in the payload is ignored.
        let mut b = DATA_FRAME[34..54].to_vec();
        b[12] = 0x50;
        b.extend_from_slice(&[1, 1, 8, 10, 0, 0, 0, 1, 0, 0, 0, 2]);
        assert_eq!(TcpSegment::new_checked(&b[..]).unwrap().timestamps(), None);
    }

    #[test]
    fn emit_header_then_fill_checksum() {
        // The fast path's way: header, payload copied in, checksum.
        let r = data_repr();
        let mut buf = [0u8; 44];
        let hl = r.emit_header(&mut buf).unwrap();
        assert_eq!(hl, 32);
        assert_eq!(buf[16..18], [0, 0], "checksum left zero");
        assert_eq!(buf[..16], DATA[..16]);
        assert_eq!(buf[18..32], DATA[18..32]);
        buf[hl..].copy_from_slice(b"hello world\n");
        fill_checksum(&mut buf, A, B);
        assert_eq!(buf, DATA);
        // The view's method agrees, and short buffers are left alone.
        let mut seg = TcpSegment::new_checked(&mut buf[..]).unwrap();
        seg.set_checksum(0x1234);
        seg.fill_checksum(A, B);
        assert_eq!(buf, DATA);
        let mut short = [0xaau8; 19];
        fill_checksum(&mut short, A, B);
        assert_eq!(short, [0xaa; 19]);
    }

    #[test]
    fn emit_rejects_inconsistent_reprs() {
        let malformed = Err(ParseError::Malformed);
        let mut buf = [0u8; 100];
        let mut r = data_repr();
        r.ack_number = None;
        assert_eq!(
            r.emit_header(&mut buf),
            malformed,
            "ACK flag without number"
        );
        let mut r = syn_repr();
        r.ack_number = Some(1);
        assert_eq!(
            r.emit_header(&mut buf),
            malformed,
            "number without ACK flag"
        );
        let mut r = data_repr();
        r.src_port = 0;
        assert_eq!(r.emit_header(&mut buf), malformed);
        let mut r = syn_repr();
        r.window_scale = Some(15);
        assert_eq!(r.emit_header(&mut buf), malformed);
        let mut r = data_repr();
        assert_eq!(
            r.emit(&mut buf, A, B, b"hello"),
            malformed,
            "payload length mismatch"
        );
        r.sack_ranges = SackBlocks::from_slice(&[(1, 2), (3, 4), (5, 6), (7, 8)]).unwrap();
        assert_eq!(r.options_len(), 48);
        assert_eq!(
            r.emit_header(&mut buf),
            malformed,
            "4 SACK blocks with timestamps"
        );
        r.timestamp = None;
        assert_eq!(r.emit_header(&mut buf), Ok(56));
        let mut r = data_repr();
        r.payload_len = 65535;
        assert_eq!(r.emit_header(&mut buf), malformed);
    }

    #[test]
    fn emit_layouts_match_linux() {
        // SYN without SACK: MSS, NOP NOP TS, NOP WS.
        let mut r = syn_repr();
        r.sack_permitted = false;
        let b = emit_to_vec(&r, A, B, &[]);
        assert_eq!(
            b[20..],
            [2, 4, 5, 0xb4, 1, 1, 8, 10, 0x5e, 0xd7, 0x3f, 0xd6, 0, 0, 0, 0, 1, 3, 3, 10]
        );
        // SYN without timestamps: MSS, NOP NOP SACK_PERM, NOP WS.
        let mut r = syn_repr();
        r.timestamp = None;
        let b = emit_to_vec(&r, A, B, &[]);
        assert_eq!(b[20..], [2, 4, 5, 0xb4, 1, 1, 4, 2, 1, 3, 3, 10]);
        // Bare ACK.
        let mut r = data_repr();
        r.timestamp = None;
        r.payload_len = 0;
        r.flags = TcpFlags::ACK;
        let b = emit_to_vec(&r, A, B, &[]);
        assert_eq!(b.len(), 20);
        assert_eq!(b[12], 0x50);
        assert!(TcpSegment::new_checked(&b[..])
            .unwrap()
            .verify_checksum(A, B));
    }

    #[test]
    fn segment_setters() {
        let mut b = DATA;
        let mut s = TcpSegment::new_checked(&mut b[..]).unwrap();
        s.set_src_port(1);
        s.set_dst_port(2);
        s.set_seq_number(3);
        s.set_ack_number(4);
        s.set_flags(TcpFlags::FIN | TcpFlags::ACK);
        s.set_window_len(5);
        s.set_urgent_at(6);
        s.payload_mut()[0] = b'j';
        s.fill_checksum(A, B);
        assert!(s.verify_checksum(A, B));
        assert_eq!(
            (s.src_port(), s.dst_port(), s.seq_number(), s.ack_number()),
            (1, 2, 3, 4)
        );
        assert_eq!(
            (s.flags(), s.window_len(), s.urgent_at()),
            (TcpFlags::FIN | TcpFlags::ACK, 5, 6)
        );
        assert_eq!(s.payload(), b"jello world\n");
    }

    #[test]
    fn flags_debug_and_ops() {
        assert_eq!(format!("{:?}", TcpFlags::SYN | TcpFlags::ACK), "SYN|ACK");
        assert_eq!(
            format!("{:?}", TcpFlags(0xff)),
            "FIN|SYN|RST|PSH|ACK|URG|ECE|CWR"
        );
        assert_eq!(format!("{}", TcpFlags::empty()), "(empty)");
        let mut f = TcpFlags::SYN;
        f |= TcpFlags::ACK;
        assert!(f.contains(TcpFlags::SYN | TcpFlags::ACK));
        assert!(!f.contains(TcpFlags::SYN | TcpFlags::FIN));
        assert!(f.intersects(TcpFlags::SYN | TcpFlags::FIN));
        assert_eq!(f & TcpFlags::ACK, TcpFlags::ACK);
        f.remove(TcpFlags::SYN);
        assert_eq!(f, TcpFlags::ACK);
        f.set(TcpFlags::FIN, true);
        f &= !TcpFlags::ACK;
        assert_eq!(f.bits(), 0x01);
        assert!(TcpFlags::default().is_empty());
    }

    #[test]
    fn sack_blocks() {
        let mut s = SackBlocks::new();
        assert!(s.is_empty());
        for i in 0..4 {
            assert!(s.push((i, i + 1)));
        }
        assert!(!s.push((9, 9)));
        assert_eq!(s.len(), 4);
        assert_eq!(s.get(3), Some((3, 4)));
        assert_eq!(s.get(4), None);
        assert_eq!((&s).into_iter().map(|(l, _)| l).sum::<u32>(), 6);
        assert_eq!(SackBlocks::from_slice(&[(0, 0); 5]), None);
        s.clear();
        assert_eq!(s, SackBlocks::new());
        assert_eq!(
            format!("{:?}", SackBlocks::from_slice(&[(1, 2)]).unwrap()),
            "[(1, 2)]"
        );
    }

    #[test]
    fn option_emit() {
        let mut buf = [0u8; 40];
        for (option, bytes) in [
            (TcpOption::EndOfList, &[0u8][..]),
            (TcpOption::NoOperation, &[1]),
            (TcpOption::MaxSegmentSize(1460), &[2, 4, 5, 0xb4]),
            (TcpOption::WindowScale(7), &[3, 3, 7]),
            (TcpOption::SackPermitted, &[4, 2]),
            (
                TcpOption::Timestamps { tsval: 1, tsecr: 2 },
                &[8, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            ),
            (
                TcpOption::SackRange(SackBlocks::from_slice(&[(1, 2)]).unwrap()),
                &[5, 10, 0, 0, 0, 1, 0, 0, 0, 2],
            ),
            (
                TcpOption::Unknown {
                    kind: 30,
                    data: &[9, 9],
                },
                &[30, 4, 9, 9],
            ),
        ] {
            assert_eq!(option.emit(&mut buf), Ok(bytes.len()));
            assert_eq!(&buf[..bytes.len()], bytes);
            assert_eq!(
                option.emit(&mut buf[..bytes.len() - 1]),
                Err(ParseError::Truncated)
            );
            let parsed = TcpOptions::new(&buf[..bytes.len()]).next();
            assert_eq!(parsed, Some(Ok(option)));
        }
        let empty = TcpOption::SackRange(SackBlocks::new());
        assert_eq!(empty.emit(&mut buf), Err(ParseError::Malformed));
        let data = [0u8; 254];
        let big = TcpOption::Unknown {
            kind: 30,
            data: &data,
        };
        assert_eq!(big.emit(&mut [0u8; 300]), Err(ParseError::Malformed));
    }

    // ------------------------------------------------------------ proptests

    fn arb_sack(max: usize) -> impl Strategy<Value = SackBlocks> {
        proptest::collection::vec(any::<(u32, u32)>(), 0..=max)
            .prop_map(|v| SackBlocks::from_slice(&v).unwrap_or_default())
    }

    prop_compose! {
        fn arb_repr()(
            src_port in 1u16..=u16::MAX,
            dst_port in 1u16..=u16::MAX,
            seq_number in any::<u32>(),
            ack in any::<Option<u32>>(),
            flags in any::<u8>(),
            window_len in any::<u16>(),
            max_seg_size in any::<Option<u16>>(),
            window_scale in proptest::option::of(0u8..=MAX_WINDOW_SCALE),
            sack_permitted in any::<bool>(),
            timestamp in any::<Option<(u32, u32)>>(),
            sack in arb_sack(SackBlocks::MAX),
            payload in proptest::collection::vec(any::<u8>(), 0..300),
        ) -> (TcpRepr, Vec<u8>) {
            let mut flags = TcpFlags(flags);
            flags.set(TcpFlags::ACK, ack.is_some());
            let mut repr = TcpRepr {
                src_port, dst_port, seq_number, ack_number: ack, flags, window_len,
                max_seg_size, window_scale, sack_permitted, sack_ranges: sack, timestamp,
                payload_len: payload.len(),
            };
            // Drop SACK blocks until the options fit.
            while repr.options_len() > MAX_OPTIONS_LEN {
                let kept = repr.sack_ranges.len() - 1;
                repr.sack_ranges = SackBlocks::from_slice(&repr.sack_ranges.as_slice()[..kept])
                    .unwrap_or_default();
            }
            (repr, payload)
        }
    }

    /// Options in a random order and alignment, as another stack might send.
    fn arb_option() -> impl Strategy<Value = (u8, Vec<u8>)> {
        prop_oneof![
            Just((option_kind::NOP, vec![])),
            any::<u16>().prop_map(|m| (option_kind::MSS, m.to_be_bytes().to_vec())),
            any::<u8>().prop_map(|s| (option_kind::WINDOW_SCALE, vec![s])),
            Just((option_kind::SACK_PERMITTED, vec![])),
            proptest::collection::vec(any::<u8>(), 8..=8)
                .prop_map(|d| (option_kind::TIMESTAMPS, d)),
            (1usize..=3)
                .prop_flat_map(|n| proptest::collection::vec(any::<u8>(), 8 * n))
                .prop_map(|d| (option_kind::SACK, d)),
            (9u8..=253, proptest::collection::vec(any::<u8>(), 0..6)),
        ]
    }

    proptest! {
        #[test]
        fn round_trip((repr, payload) in arb_repr()) {
            let mut buf = vec![0u8; repr.buffer_len() + 8];
            let n = repr.emit(&mut buf, A, B, &payload).unwrap();
            prop_assert_eq!(n, repr.buffer_len());
            prop_assert_eq!(repr.header_len() % 4, 0);
            let s = TcpSegment::new_checked(&buf[..n]).unwrap();
            prop_assert!(s.verify_checksum(A, B));
            prop_assert_eq!(TcpRepr::parse(&s, A, B, true).unwrap(), repr);
            prop_assert_eq!(s.payload(), &payload[..]);
            prop_assert_eq!(s.timestamps(), repr.timestamp);
            // The fast path's split emit gives the same bytes.
            let mut split = vec![0u8; n];
            let hl = repr.emit_header(&mut split).unwrap();
            split[hl..].copy_from_slice(&payload);
            fill_checksum(&mut split, A, B);
            prop_assert_eq!(&split[..], &buf[..n]);
        }

        #[test]
        fn foreign_option_layouts(options in proptest::collection::vec(arb_option(), 0..8)) {
            let mut bytes = Vec::new();
            for (k, data) in &options {
                bytes.push(*k);
                if *k != option_kind::NOP {
                    bytes.push(2 + data.len() as u8);
                    bytes.extend_from_slice(data);
                }
            }
            prop_assume!(bytes.len() <= MAX_OPTIONS_LEN);
            let b = with_options(&bytes);
            let s = TcpSegment::new_checked(&b[..]).unwrap();
            let parsed: Vec<_> = s.options_iter().collect();
            let mut expected = Vec::new();
            for (k, data) in &options {
                expected.push(if *k == option_kind::NOP {
                    Ok(TcpOption::NoOperation)
                } else {
                    TcpOption::from_kind_data(*k, data)
                });
            }
            if bytes.len() % 4 != 0 {
                expected.push(Ok(TcpOption::EndOfList));
            }
            prop_assert_eq!(&parsed, &expected);
            let first_ts = expected.iter().find_map(|o| match o {
                Ok(TcpOption::Timestamps { tsval, tsecr }) => Some((*tsval, *tsecr)),
                _ => None,
            });
            prop_assert_eq!(s.timestamps(), first_ts);
            let repr = TcpRepr::parse(&s, A, B, false).unwrap();
            prop_assert_eq!(repr.timestamp, first_ts);
            // Whatever parse accepts and fits the aligned layout, emit
            // reproduces.
            if repr.options_len() <= MAX_OPTIONS_LEN {
                let mut out = vec![0u8; repr.buffer_len()];
                repr.emit_header(&mut out).unwrap();
                let again = TcpSegment::new_checked(&out[..]).unwrap();
                prop_assert_eq!(TcpRepr::parse(&again, A, B, false).unwrap(), repr);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..100),
                                       offset in 5u8..=15) {
            for fix_offset in [false, true] {
                let mut bytes = bytes.clone();
                if fix_offset && bytes.len() > 12 {
                    // Arbitrary bytes rarely hold a plausible offset; help them.
                    bytes[12] = offset << 4;
                }
                if let Ok(s) = TcpSegment::new_checked(&bytes[..]) {
                    let _ = (s.src_port(), s.dst_port(), s.seq_number(), s.ack_number());
                    let _ = (s.flags(), s.window_len(), s.checksum(), s.urgent_at());
                    let _ = (s.options(), s.payload(), s.timestamps(), s.verify_checksum(A, B));
                    prop_assert!(s.options_iter().count() <= MAX_OPTIONS_LEN);
                    let _ = TcpRepr::parse(&s, A, B, true);
                    if let Ok(r) = TcpRepr::parse(&s, A, B, false) {
                        let mut out = vec![0u8; r.buffer_len()];
                        let _ = r.emit_header(&mut out);
                    }
                }
            }
        }

        #[test]
        fn arbitrary_option_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let n = TcpOptions::new(&bytes).count();
            prop_assert!(n <= bytes.len());
        }
    }
}
