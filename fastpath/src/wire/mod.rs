//! Wire formats: zero-copy views over received bytes, small validated `Copy`
//! representations of what the TCP logic consumes, and emitters that write
//! straight into an output frame.
//!
//! Each protocol has two levels:
//!
//! - a **view** (`EthernetFrame`, `ArpPacket`, `Ipv4Packet`, `TcpSegment`)
//!   wrapping any `T: AsRef<[u8]>`. `new_checked` validates the lengths once;
//!   after that every getter is cheap and none of them can panic, whatever
//!   the bytes are;
//! - a **repr** (`EthernetRepr`, `ArpRepr`, `Ipv4Repr`, `TcpRepr`): a small
//!   `Copy` value produced by `parse` from a view (rejecting what we do not
//!   handle) and written back by `emit`. Whatever `emit` accepts, `parse`
//!   gives back unchanged.
//!
//! Nothing in this module allocates, logs or panics on any input.

pub mod arp;
pub mod checksum;
pub mod ethernet;
pub mod ipv4;
pub mod tcp;

pub use arp::{ArpOperation, ArpPacket, ArpRepr};
pub use ethernet::{EtherType, EthernetAddress, EthernetFrame, EthernetRepr};
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use tcp::{SackBlocks, TcpFlags, TcpOption, TcpOptions, TcpRepr, TcpSegment};

/// Why bytes were rejected, or why a repr could not be emitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum ParseError {
    /// The buffer is shorter than the header, or than a length the header
    /// declares. When emitting: the output buffer is too small.
    #[error("truncated: buffer shorter than the header or the length it declares")]
    Truncated,
    /// A field holds an impossible value (IHL below 5, a TCP option length
    /// below 2, port 0, ...). When emitting: the repr is inconsistent (for
    /// example its options do not fit in 40 bytes).
    #[error("malformed: a header field holds an impossible value")]
    Malformed,
    /// The checksum does not match the contents.
    #[error("checksum mismatch")]
    Checksum,
    /// Well-formed, but something this stack does not handle (IP fragments,
    /// ARP for other hardware or protocol types).
    #[error("unsupported: well-formed but not handled by this stack")]
    Unsupported,
}

/// Result of parsing or emitting wire formats.
pub type Result<T> = core::result::Result<T, ParseError>;

// Byte access helpers shared by the views. They go through `get`, so they
// cannot panic even if a view's invariant were broken; after a view's length
// check the optimiser removes the bounds test.

/// Big-endian `u16` at `at`, or 0 when out of range.
#[inline(always)]
fn read_u16(b: &[u8], at: usize) -> u16 {
    match b.get(at..at.wrapping_add(2)) {
        Some(&[x, y]) => u16::from_be_bytes([x, y]),
        _ => 0,
    }
}

/// Big-endian `u32` at `at`, or 0 when out of range.
#[inline(always)]
fn read_u32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at.wrapping_add(4)) {
        Some(&[w, x, y, z]) => u32::from_be_bytes([w, x, y, z]),
        _ => 0,
    }
}

/// Byte at `at`, or 0 when out of range.
#[inline(always)]
fn read_u8(b: &[u8], at: usize) -> u8 {
    b.get(at).copied().unwrap_or(0)
}

/// `N` bytes starting at `at`, or zeros when out of range.
#[inline(always)]
fn read_array<const N: usize>(b: &[u8], at: usize) -> [u8; N] {
    b.get(at..at.wrapping_add(N))
        .and_then(|s| <[u8; N]>::try_from(s).ok())
        .unwrap_or([0; N])
}

/// Writes `bytes` at `at`; does nothing when out of range.
#[inline(always)]
fn write_bytes(b: &mut [u8], at: usize, bytes: &[u8]) {
    if let Some(dst) = b.get_mut(at..at.wrapping_add(bytes.len())) {
        dst.copy_from_slice(bytes);
    }
}

/// Writes a big-endian `u16` at `at`; does nothing when out of range.
#[inline(always)]
fn write_u16(b: &mut [u8], at: usize, v: u16) {
    write_bytes(b, at, &v.to_be_bytes());
}

/// Writes a big-endian `u32` at `at`; does nothing when out of range.
#[inline(always)]
fn write_u32(b: &mut [u8], at: usize, v: u32) {
    write_bytes(b, at, &v.to_be_bytes());
}

/// Writes a byte at `at`; does nothing when out of range.
#[inline(always)]
fn write_u8(b: &mut [u8], at: usize, v: u8) {
    if let Some(d) = b.get_mut(at) {
        *d = v;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn helpers_out_of_range_are_harmless() {
        let mut b = [1u8, 2, 3];
        assert_eq!(read_u16(&b, 1), 0x0203);
        assert_eq!(read_u16(&b, 2), 0);
        assert_eq!(read_u32(&b, 0), 0);
        assert_eq!(read_u8(&b, 3), 0);
        assert_eq!(read_u16(&b, usize::MAX), 0);
        assert_eq!(read_array::<2>(&b, 2), [0, 0]);
        write_u32(&mut b, 0, 0xdead_beef);
        write_u16(&mut b, usize::MAX, 7);
        write_u8(&mut b, 3, 7);
        assert_eq!(b, [1, 2, 3]);
        write_u16(&mut b, 1, 0xabcd);
        assert_eq!(b, [1, 0xab, 0xcd]);
    }

    #[test]
    fn errors_display() {
        assert_eq!(ParseError::Checksum.to_string(), "checksum mismatch");
        assert!(ParseError::Truncated.to_string().starts_with("truncated"));
    }
}
