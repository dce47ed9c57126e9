//! The Internet checksum (RFC 1071) and its incremental update (RFC 1624).
//!
//! A checksum is computed in three steps: [`sum`] the bytes (and, for TCP,
//! the [`pseudo_header_sum`]) into a 32-bit partial sum, [`fold`] the carries
//! into 16 bits, and complement ([`finish`] does both). A received header is
//! valid when `fold(sum(header_including_checksum, 0)) == 0xffff`.
//!
//! [`sum`] is on the hot path of every transmitted segment, so it reads four
//! bytes at a time into a 64-bit accumulator (a loop LLVM vectorises), in
//! native byte order, and swaps once at the end: the ones'-complement sum
//! commutes with byte swapping (RFC 1071 section 2(B)).

use std::net::Ipv4Addr;

/// Bytes summed into one 64-bit accumulator before folding it. Each 4-byte
/// word adds less than 2^32, so one block adds less than 2^14 * 2^32 = 2^46
/// and the accumulator (below 2^33 after each fold) never overflows, however
/// long the input. Large enough that the fold between blocks costs nothing.
const BLOCK: usize = 64 * 1024;

/// Ones'-complement sum of `data` read as big-endian 16-bit words, added to
/// `initial`. Neither folded nor complemented; pass the result to [`fold`]
/// or [`finish`], or as `initial` of another call.
///
/// An odd trailing byte is padded with a zero byte on the right, as RFC 1071
/// says. Hence chaining is only exact when every piece but the last has an
/// even length: `fold(sum(b, sum(a, i))) == fold(sum(&[a, b].concat(), i))`
/// holds whenever `a.len()` is even (the unfolded values may differ; they
/// are equal modulo 0xffff, which is all a checksum sees).
///
/// The result is never 0 unless `initial` is 0 and `data` is all zeros,
/// exactly like a 16-bit-at-a-time end-around-carry sum.
#[inline]
pub fn sum(data: &[u8], initial: u32) -> u32 {
    // Accumulated in native byte order; congruent modulo 0xffff to the sum
    // of native-endian 16-bit words because 2^16 == 1 (mod 0xffff).
    let mut acc: u64 = 0;
    for block in data.chunks(BLOCK) {
        let mut words = block.chunks_exact(4);
        let mut part: u64 = 0;
        for w in &mut words {
            let w = <[u8; 4]>::try_from(w).unwrap_or([0; 4]);
            part += u64::from(u32::from_ne_bytes(w));
        }
        // Only the last block can leave 1 to 3 bytes over.
        match *words.remainder() {
            [a] => part += u64::from(u16::from_ne_bytes([a, 0])),
            [a, b] => part += u64::from(u16::from_ne_bytes([a, b])),
            [a, b, c] => {
                part += u64::from(u16::from_ne_bytes([a, b]));
                part += u64::from(u16::from_ne_bytes([c, 0]));
            }
            _ => {}
        }
        acc = (acc & 0xffff_ffff) + (acc >> 32) + part;
    }
    // Fold to 16 bits; each step keeps a non-zero value non-zero.
    let mut s = (acc & 0xffff_ffff) + (acc >> 32);
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    let native = s as u16; // s <= 0xffff after the loop
    let big_endian = if cfg!(target_endian = "little") {
        native.swap_bytes()
    } else {
        native
    };
    let (r, carry) = initial.overflowing_add(u32::from(big_endian));
    // With a carry, r < 0xffff, so adding it back cannot overflow.
    r + u32::from(carry)
}

/// Folds the carries of a partial sum into 16 bits (not complemented).
#[inline]
pub fn fold(sum: u32) -> u16 {
    let s = (sum >> 16) + (sum & 0xffff); // <= 0x1_fffe
    let s = (s >> 16) + (s & 0xffff); // <= 0xffff
    s as u16
}

/// The checksum field value for a partial sum: `!fold(sum)`.
#[inline]
pub fn finish(sum: u32) -> u16 {
    !fold(sum)
}

/// Partial sum of the TCP/UDP pseudo header (RFC 793 section 3.1): source
/// and destination address, zero byte, protocol and the TCP/UDP length
/// (header plus payload).
#[inline]
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, protocol: u8, len: u16) -> u32 {
    let [a, b, c, d] = src.octets();
    let [e, f, g, h] = dst.octets();
    // Six 16-bit terms and a byte: at most 7 * 0xffff, no overflow.
    u32::from(u16::from_be_bytes([a, b]))
        + u32::from(u16::from_be_bytes([c, d]))
        + u32::from(u16::from_be_bytes([e, f]))
        + u32::from(u16::from_be_bytes([g, h]))
        + u32::from(protocol)
        + u32::from(len)
}

/// Updates a checksum field after a 16-bit word it covers changed from
/// `old` to `new` (RFC 1624 equation 3: `HC' = ~(~HC + ~m + m')`).
///
/// Gives exactly what a full recomputation gives whenever the covered data
/// is not all zeros before and after the change (always true for IPv4 and
/// TCP headers: the version field, the pseudo header's protocol); in the
/// degenerate all-zero case it may give 0x0000 where a recomputation gives
/// 0xffff, which is the same number in ones' complement.
#[inline]
pub fn update16(old_checksum: u16, old: u16, new: u16) -> u16 {
    let s = u32::from(!old_checksum) + u32::from(!old) + u32::from(new);
    !fold(s)
}

/// Like [`update16`] for a 32-bit field (an address, a sequence number),
/// treated as two 16-bit words.
#[inline]
pub fn update32(old_checksum: u16, old: u32, new: u32) -> u16 {
    let s = u32::from(!old_checksum)
        + u32::from(!((old >> 16) as u16))
        + u32::from(!(old as u16))
        + u32::from((new >> 16) as u16)
        + u32::from(new as u16);
    !fold(s)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Straightforward 16-bit-at-a-time reference, as in RFC 1071 section 4.1.
    fn reference(data: &[u8], initial: u32) -> u16 {
        let mut s = u64::from(initial);
        let mut chunks = data.chunks_exact(2);
        for c in &mut chunks {
            s += u64::from(u16::from_be_bytes([c[0], c[1]]));
        }
        if let [last] = chunks.remainder() {
            s += u64::from(*last) << 8;
        }
        while s > 0xffff {
            s = (s & 0xffff) + (s >> 16);
        }
        s as u16
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3: bytes 00 01 f2 03 f4 f5 f6 f7 sum to 0xddf2.
        let data = [0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7];
        assert_eq!(fold(sum(&data, 0)), 0xddf2);
        assert_eq!(finish(sum(&data, 0)), !0xddf2);
    }

    #[test]
    fn ipv4_header_vectors() {
        // A commonly quoted example header, checksum 0xb861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(finish(sum(&h, 0)), 0xb861);
        h[10..12].copy_from_slice(&[0xb8, 0x61]);
        assert_eq!(fold(sum(&h, 0)), 0xffff);

        // A header captured from Linux (10.99.0.1 -> 10.99.0.2, a SYN).
        let linux = [
            0x45, 0x00, 0x00, 0x3c, 0x6a, 0x5d, 0x40, 0x00, 0x40, 0x06, 0xbb, 0x96, 0x0a, 0x63,
            0x00, 0x01, 0x0a, 0x63, 0x00, 0x02,
        ];
        assert_eq!(fold(sum(&linux, 0)), 0xffff);
    }

    #[test]
    fn odd_lengths_pad_on_the_right() {
        assert_eq!(sum(&[0x01], 0), 0x0100);
        assert_eq!(fold(sum(&[0x01, 0x02, 0x03], 0)), 0x0402);
        assert_eq!(fold(sum(&[0x01, 0x02, 0x03, 0x04, 0x05], 0)), 0x0906);
        assert_eq!(sum(&[], 0), 0);
        assert_eq!(sum(&[], 0x1234), 0x1234);
        assert_eq!(sum(&[0, 0, 0, 0, 0], 0), 0);
    }

    #[test]
    fn extreme_initial_and_all_ones() {
        let ones = [0xffu8; 1500];
        assert_eq!(fold(sum(&ones, u32::MAX)), reference(&ones, u32::MAX));
        assert_eq!(fold(sum(&ones, 0)), 0xffff);
    }

    #[test]
    fn longer_than_one_block() {
        let data: Vec<u8> = (0..3 * BLOCK + 7).map(|i| (i * 7919 % 251) as u8).collect();
        assert_eq!(fold(sum(&data, 0)), reference(&data, 0));
        let ff = vec![0xffu8; 2 * BLOCK + 3];
        assert_eq!(fold(sum(&ff, 0)), reference(&ff, 0));
    }

    #[test]
    fn pseudo_header() {
        let s = pseudo_header_sum(
            Ipv4Addr::new(10, 99, 0, 1),
            Ipv4Addr::new(10, 99, 0, 2),
            6,
            40,
        );
        assert_eq!(s, 0x0a63 + 0x0001 + 0x0a63 + 0x0002 + 6 + 40);
        let max = pseudo_header_sum(Ipv4Addr::BROADCAST, Ipv4Addr::BROADCAST, 0xff, 0xffff);
        assert_eq!(max, 5 * 0xffff + 0xff);
    }

    #[test]
    fn incremental_ttl_decrement() {
        let mut h = [
            0x45, 0x00, 0x00, 0x3c, 0x6a, 0x5d, 0x40, 0x00, 0x40, 0x06, 0xbb, 0x96, 0x0a, 0x63,
            0x00, 0x01, 0x0a, 0x63, 0x00, 0x02,
        ];
        let old = u16::from_be_bytes([h[8], h[9]]);
        h[8] -= 1;
        let new = u16::from_be_bytes([h[8], h[9]]);
        let c = update16(0xbb96, old, new);
        h[10..12].copy_from_slice(&c.to_be_bytes());
        assert_eq!(fold(sum(&h, 0)), 0xffff);
        h[10..12].fill(0);
        assert_eq!(c, finish(sum(&h, 0)));
    }

    proptest! {
        #[test]
        fn matches_reference(data in proptest::collection::vec(any::<u8>(), 0..600),
                             initial in any::<u32>()) {
            prop_assert_eq!(fold(sum(&data, initial)), reference(&data, initial));
        }

        #[test]
        fn chaining_even_prefix(a in proptest::collection::vec(any::<u8>(), 0..100),
                                b in proptest::collection::vec(any::<u8>(), 0..100),
                                initial in any::<u32>()) {
            let mut a = a;
            if a.len() % 2 == 1 { a.pop(); }
            let whole = [a.as_slice(), b.as_slice()].concat();
            prop_assert_eq!(fold(sum(&b, sum(&a, initial))), fold(sum(&whole, initial)));
        }

        #[test]
        fn update16_equals_recompute(words in proptest::collection::vec(any::<u16>(), 1..64),
                                     at in any::<prop::sample::Index>(),
                                     new in any::<u16>()) {
            let mut data: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            let i = at.index(words.len());
            let old_ck = finish(sum(&data, 0));
            data[2 * i..2 * i + 2].copy_from_slice(&new.to_be_bytes());
            // See update16's doc: the all-zero data case is excluded.
            prop_assume!(words.iter().any(|&w| w != 0) && data.iter().any(|&b| b != 0));
            prop_assert_eq!(update16(old_ck, words[i], new), finish(sum(&data, 0)));
        }

        #[test]
        fn update32_equals_recompute(words in proptest::collection::vec(any::<u32>(), 1..32),
                                     at in any::<prop::sample::Index>(),
                                     new in any::<u32>()) {
            let mut data: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
            let i = at.index(words.len());
            let old_ck = finish(sum(&data, 0));
            data[4 * i..4 * i + 4].copy_from_slice(&new.to_be_bytes());
            prop_assume!(words.iter().any(|&w| w != 0) && data.iter().any(|&b| b != 0));
            prop_assert_eq!(update32(old_ck, words[i], new), finish(sum(&data, 0)));
        }
    }
}
