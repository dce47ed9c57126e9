//! IPv4 headers (RFC 791), with the ECN field of RFC 3168.
//!
//! ```text
//!  0               1               2               3
//! +-------+-------+-----------+---+-------------------------------+
//! |version|  IHL  |   DSCP    |ECN|         total length          |
//! +-------+-------+-----------+---+-----+-------------------------+
//! |        identification         |flags|    fragment offset      |
//! +---------------+---------------+-----+-------------------------+
//! |      TTL      |   protocol    |        header checksum        |
//! +---------------+---------------+-------------------------------+
//! |                        source address                         |
//! |                      destination address                      |
//! |                     options (IHL > 5) ...                     |
//! ```

use std::net::Ipv4Addr;

use super::{
    checksum, read_array, read_u16, read_u8, write_bytes, write_u16, write_u8, ParseError, Result,
};

/// Length of a header without options (IHL 5), the only kind we emit.
pub const HEADER_LEN: usize = 20;

/// Largest header: IHL is 4 bits, counting 32-bit words, so 15 * 4 bytes.
pub const MAX_HEADER_LEN: usize = 60;

/// IP protocol number of TCP (IANA "Protocol Numbers").
pub const PROTO_TCP: u8 = 6;
/// IP protocol number of UDP, named so it can be recognised and dropped.
pub const PROTO_UDP: u8 = 17;
/// IP protocol number of ICMP, named so it can be recognised and dropped.
pub const PROTO_ICMP: u8 = 1;

/// ECN codepoint "Not ECN-Capable Transport" (RFC 3168 section 5).
pub const ECN_NOT_ECT: u8 = 0b00;
/// ECN codepoint ECT(1) (RFC 3168 section 5; L4S in RFC 9331).
pub const ECN_ECT1: u8 = 0b01;
/// ECN codepoint ECT(0), what ECN-capable TCP senders set (RFC 3168).
pub const ECN_ECT0: u8 = 0b10;
/// ECN codepoint "Congestion Experienced", set by routers (RFC 3168).
pub const ECN_CE: u8 = 0b11;

/// Time to live Linux uses by default (`net.ipv4.ip_default_ttl`).
pub const DEFAULT_TTL: u8 = 64;

/// Byte offsets of the header fields.
mod field {
    pub const VER_IHL: usize = 0;
    pub const DSCP_ECN: usize = 1;
    pub const TOTAL_LEN: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLAGS_FRAG: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

/// Don't-fragment bit in the flags/fragment-offset word.
const DF: u16 = 0x4000;
/// More-fragments bit in the flags/fragment-offset word.
const MF: u16 = 0x2000;
/// Fragment offset bits (in 8-byte units) of the flags/fragment-offset word.
const FRAG_MASK: u16 = 0x1fff;

/// A zero-copy view of an IPv4 packet.
///
/// Checked invariants: version 4, `20 <= header_len <= total_len <=
/// buffer length`. The buffer may be longer than `total_len` (Ethernet
/// pads short frames to 60 bytes); [`payload`](Self::payload) stops at
/// `total_len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` after checking the version and all lengths.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] if the buffer is shorter than 20 bytes, the
    /// header length or the total length; [`ParseError::Malformed`] if the
    /// version is not 4, IHL is below 5 or the total length is below the
    /// header length.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        let ver_ihl = read_u8(b, field::VER_IHL);
        if ver_ihl >> 4 != 4 {
            return Err(ParseError::Malformed);
        }
        let header_len = usize::from(ver_ihl & 0x0f) * 4;
        if header_len < HEADER_LEN {
            return Err(ParseError::Malformed);
        }
        if header_len > b.len() {
            return Err(ParseError::Truncated);
        }
        let total_len = usize::from(read_u16(b, field::TOTAL_LEN));
        if total_len < header_len {
            return Err(ParseError::Malformed);
        }
        if total_len > b.len() {
            return Err(ParseError::Truncated);
        }
        Ok(Ipv4Packet { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// IP version (4).
    #[inline]
    pub fn version(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::VER_IHL) >> 4
    }

    /// Header length in bytes (IHL * 4), 20 to 60.
    #[inline]
    pub fn header_len(&self) -> usize {
        usize::from(read_u8(self.buffer.as_ref(), field::VER_IHL) & 0x0f) * 4
    }

    /// Differentiated services code point (upper 6 bits of the old TOS).
    #[inline]
    pub fn dscp(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::DSCP_ECN) >> 2
    }

    /// ECN codepoint, 0 to 3 (see [`ECN_CE`] and friends).
    #[inline]
    pub fn ecn(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::DSCP_ECN) & 0x03
    }

    /// Total length: header plus payload, in bytes.
    #[inline]
    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::TOTAL_LEN)
    }

    /// Identification.
    #[inline]
    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    /// Don't-fragment flag.
    #[inline]
    pub fn dont_frag(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & DF != 0
    }

    /// More-fragments flag.
    #[inline]
    pub fn more_frags(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & MF != 0
    }

    /// Fragment offset **in bytes** (the wire field counts 8-byte units).
    #[inline]
    pub fn frag_offset(&self) -> u16 {
        (read_u16(self.buffer.as_ref(), field::FLAGS_FRAG) & FRAG_MASK) << 3
    }

    /// Time to live.
    #[inline]
    pub fn ttl(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::TTL)
    }

    /// Payload protocol number (see [`PROTO_TCP`]).
    #[inline]
    pub fn protocol(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::PROTOCOL)
    }

    /// Header checksum field.
    #[inline]
    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::SRC))
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::DST))
    }

    /// The header, options included.
    #[inline]
    pub fn header(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        b.get(..self.header_len()).unwrap_or(b)
    }

    /// Option bytes (empty when IHL is 5).
    #[inline]
    pub fn options(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(HEADER_LEN..self.header_len())
            .unwrap_or(&[])
    }

    /// The payload: from the end of the header to `total_len`, excluding
    /// any link-layer padding after it.
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.buffer
            .as_ref()
            .get(self.header_len()..usize::from(self.total_len()))
            .unwrap_or(&[])
    }

    /// Whether the header checksum is correct.
    #[inline]
    pub fn verify_checksum(&self) -> bool {
        checksum::fold(checksum::sum(self.header(), 0)) == 0xffff
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    /// Sets the DSCP (upper 6 bits of `dscp` are ignored). Does not update
    /// the checksum: call [`fill_checksum`](Self::fill_checksum) after.
    pub fn set_dscp(&mut self, dscp: u8) {
        let b = self.buffer.as_mut();
        let old = read_u8(b, field::DSCP_ECN);
        write_u8(b, field::DSCP_ECN, (dscp << 2) | (old & 0x03));
    }

    /// Sets the ECN codepoint (only the low 2 bits of `ecn` are used). Does
    /// not update the checksum.
    pub fn set_ecn(&mut self, ecn: u8) {
        let b = self.buffer.as_mut();
        let old = read_u8(b, field::DSCP_ECN);
        write_u8(b, field::DSCP_ECN, (old & !0x03) | (ecn & 0x03));
    }

    /// Sets the total length. Keeping it within the buffer is up to the
    /// caller; a larger value makes [`payload`](Ipv4Packet::payload) empty
    /// rather than panic.
    pub fn set_total_len(&mut self, len: u16) {
        write_u16(self.buffer.as_mut(), field::TOTAL_LEN, len);
    }

    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, ident);
    }

    /// Sets or clears the don't-fragment flag.
    pub fn set_dont_frag(&mut self, value: bool) {
        self.set_flag(DF, value);
    }

    /// Sets or clears the more-fragments flag.
    pub fn set_more_frags(&mut self, value: bool) {
        self.set_flag(MF, value);
    }

    /// Sets the fragment offset, in bytes (rounded down to a multiple of 8).
    pub fn set_frag_offset(&mut self, bytes: u16) {
        let b = self.buffer.as_mut();
        let old = read_u16(b, field::FLAGS_FRAG);
        write_u16(b, field::FLAGS_FRAG, (old & !FRAG_MASK) | (bytes >> 3));
    }

    fn set_flag(&mut self, bit: u16, value: bool) {
        let b = self.buffer.as_mut();
        let old = read_u16(b, field::FLAGS_FRAG);
        let new = if value { old | bit } else { old & !bit };
        write_u16(b, field::FLAGS_FRAG, new);
    }

    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        write_u8(self.buffer.as_mut(), field::TTL, ttl);
    }

    /// Sets the protocol number.
    pub fn set_protocol(&mut self, protocol: u8) {
        write_u8(self.buffer.as_mut(), field::PROTOCOL, protocol);
    }

    /// Sets the checksum field to `value`.
    pub fn set_checksum(&mut self, value: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, value);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: Ipv4Addr) {
        write_bytes(self.buffer.as_mut(), field::SRC, &addr.octets());
    }

    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: Ipv4Addr) {
        write_bytes(self.buffer.as_mut(), field::DST, &addr.octets());
    }

    /// Recomputes the header checksum over the current header.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::finish(checksum::sum(self.header(), 0));
        self.set_checksum(c);
    }

    /// The payload (up to `total_len`), writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        let range = self.header_len()..usize::from(self.total_len());
        self.buffer.as_mut().get_mut(range).unwrap_or(&mut [])
    }
}

/// The fields of an IPv4 header the stack uses. Emitted without options,
/// with DSCP 0 and no fragmentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ipv4Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Payload protocol ([`PROTO_TCP`]).
    pub protocol: u8,
    /// Payload length in bytes (total length minus header length).
    pub payload_len: usize,
    /// Time to live.
    pub ttl: u8,
    /// ECN codepoint, 0 to 3.
    pub ecn: u8,
    /// Identification.
    pub ident: u16,
    /// Don't-fragment flag.
    pub dont_frag: bool,
}

impl Ipv4Repr {
    /// Bytes [`emit`](Self::emit) writes; same as the module's [`HEADER_LEN`].
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Largest payload that fits the 16-bit total length with a 20-byte header.
    pub const MAX_PAYLOAD_LEN: usize = u16::MAX as usize - HEADER_LEN;

    /// Reads a checked packet. Options are skipped (not kept); DSCP is
    /// dropped.
    ///
    /// # Errors
    /// [`ParseError::Checksum`] if `verify_checksum` and the header checksum
    /// is wrong; [`ParseError::Unsupported`] for fragments (MF set or a
    /// non-zero offset).
    pub fn parse<T: AsRef<[u8]> + ?Sized>(
        packet: &Ipv4Packet<&T>,
        verify_checksum: bool,
    ) -> Result<Ipv4Repr> {
        if verify_checksum && !packet.verify_checksum() {
            return Err(ParseError::Checksum);
        }
        if packet.more_frags() || packet.frag_offset() != 0 {
            return Err(ParseError::Unsupported);
        }
        Ok(Ipv4Repr {
            src_addr: packet.src_addr(),
            dst_addr: packet.dst_addr(),
            protocol: packet.protocol(),
            payload_len: usize::from(packet.total_len()).saturating_sub(packet.header_len()),
            ttl: packet.ttl(),
            ecn: packet.ecn(),
            ident: packet.ident(),
            dont_frag: packet.dont_frag(),
        })
    }

    /// Bytes [`emit`](Self::emit) writes (the header only).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Header plus payload length: the value of the total-length field.
    pub const fn total_len(&self) -> usize {
        HEADER_LEN + self.payload_len
    }

    /// Writes a 20-byte header with a correct checksum at the start of
    /// `buf`. The payload is the caller's to write after it.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] if `buf` is shorter than 20 bytes;
    /// [`ParseError::Malformed`] if `ecn > 3` or the payload length exceeds
    /// [`MAX_PAYLOAD_LEN`](Self::MAX_PAYLOAD_LEN).
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        if self.ecn > 3 || self.payload_len > Self::MAX_PAYLOAD_LEN {
            return Err(ParseError::Malformed);
        }
        let Some(h) = buf.get_mut(..HEADER_LEN) else {
            return Err(ParseError::Truncated);
        };
        write_u8(h, field::VER_IHL, 0x45);
        write_u8(h, field::DSCP_ECN, self.ecn);
        // Fits: checked against MAX_PAYLOAD_LEN above.
        write_u16(h, field::TOTAL_LEN, self.total_len() as u16);
        write_u16(h, field::IDENT, self.ident);
        write_u16(h, field::FLAGS_FRAG, if self.dont_frag { DF } else { 0 });
        write_u8(h, field::TTL, self.ttl);
        write_u8(h, field::PROTOCOL, self.protocol);
        write_u16(h, field::CHECKSUM, 0);
        write_bytes(h, field::SRC, &self.src_addr.octets());
        write_bytes(h, field::DST, &self.dst_addr.octets());
        let c = checksum::finish(checksum::sum(h, 0));
        write_u16(h, field::CHECKSUM, c);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// IPv4 header of a TCP SYN captured from Linux, 10.99.0.1 -> 10.99.0.2,
    /// followed by its 40-byte TCP header.
    const SYN: [u8; 60] = [
        0x45, 0x00, 0x00, 0x3c, 0x6a, 0x5d, 0x40, 0x00, 0x40, 0x06, 0xbb, 0x96, 0x0a, 0x63, 0x00,
        0x01, 0x0a, 0x63, 0x00, 0x02, // TCP:
        0x98, 0x32, 0x1f, 0x90, 0xcc, 0xdb, 0x8e, 0x52, 0x00, 0x00, 0x00, 0x00, 0xa0, 0x02, 0xfa,
        0xf0, 0x86, 0xa5, 0x00, 0x00, 0x02, 0x04, 0x05, 0xb4, 0x04, 0x02, 0x08, 0x0a, 0x5e, 0xd7,
        0x3f, 0xd6, 0x00, 0x00, 0x00, 0x00, 0x01, 0x03, 0x03, 0x0a,
    ];

    /// IPv4 header of a data segment captured from Linux (64 bytes total,
    /// 12 bytes of data), without its TCP part.
    const DATA_HEADER: [u8; 20] = [
        0x45, 0x00, 0x00, 0x40, 0x6a, 0x5f, 0x40, 0x00, 0x40, 0x06, 0xbb, 0x90, 0x0a, 0x63, 0x00,
        0x01, 0x0a, 0x63, 0x00, 0x02,
    ];

    const A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    #[test]
    fn parse_linux_syn() {
        let p = Ipv4Packet::new_checked(&SYN[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.dscp(), 0);
        assert_eq!(p.ecn(), 0);
        assert_eq!(p.total_len(), 60);
        assert_eq!(p.ident(), 0x6a5d);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), PROTO_TCP);
        assert_eq!(p.checksum(), 0xbb96);
        assert_eq!(p.src_addr(), A);
        assert_eq!(p.dst_addr(), B);
        assert!(p.options().is_empty());
        assert_eq!(p.payload(), &SYN[20..]);
        assert!(p.verify_checksum());
        let r = Ipv4Repr::parse(&p, true).unwrap();
        assert_eq!(
            r,
            Ipv4Repr {
                src_addr: A,
                dst_addr: B,
                protocol: PROTO_TCP,
                payload_len: 40,
                ttl: 64,
                ecn: 0,
                ident: 0x6a5d,
                dont_frag: true,
            }
        );
        let mut out = [0u8; 20];
        r.emit(&mut out).unwrap();
        assert_eq!(out, SYN[..20]);
    }

    #[test]
    fn emit_exact_data_header() {
        let r = Ipv4Repr {
            src_addr: A,
            dst_addr: B,
            protocol: PROTO_TCP,
            payload_len: 44,
            ttl: DEFAULT_TTL,
            ecn: ECN_NOT_ECT,
            ident: 0x6a5f,
            dont_frag: true,
        };
        let mut out = [0xffu8; 24];
        r.emit(&mut out).unwrap();
        assert_eq!(out[..20], DATA_HEADER);
        assert_eq!(out[20..], [0xff; 4], "emit writes only the header");
        assert_eq!(r.total_len(), 64);
        assert_eq!(r.buffer_len(), 20);
    }

    #[test]
    fn payload_stops_at_total_len() {
        // A SYN padded by Ethernet to a longer buffer.
        let mut padded = [0u8; 80];
        padded[..60].copy_from_slice(&SYN);
        padded[60..].fill(0xaa);
        let p = Ipv4Packet::new_checked(&padded[..]).unwrap();
        assert_eq!(p.payload(), &SYN[20..]);
        let r = Ipv4Repr::parse(&p, true).unwrap();
        assert_eq!(r.payload_len, 40);
    }

    #[test]
    fn options_are_exposed_and_skipped() {
        // IHL 6 with one NOP NOP NOP EOL option word.
        let mut b = [0u8; 28];
        b[0] = 0x46;
        b[2..4].copy_from_slice(&28u16.to_be_bytes());
        b[8] = 64;
        b[9] = PROTO_TCP;
        b[12..16].copy_from_slice(&A.octets());
        b[16..20].copy_from_slice(&B.octets());
        b[20..24].copy_from_slice(&[1, 1, 1, 0]);
        b[24..28].copy_from_slice(&[9, 9, 9, 9]);
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.payload(), &[9, 9, 9, 9]);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p, true).unwrap().payload_len, 4);
    }

    #[test]
    fn bad_checksum() {
        let mut b = SYN;
        b[11] ^= 1;
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert!(!p.verify_checksum());
        assert_eq!(Ipv4Repr::parse(&p, true), Err(ParseError::Checksum));
        assert!(Ipv4Repr::parse(&p, false).is_ok());
    }

    #[test]
    fn fragments_are_unsupported() {
        let mut b = SYN;
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.set_more_frags(true);
        p.fill_checksum();
        assert!(p.more_frags());
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p, true), Err(ParseError::Unsupported));

        let mut b = SYN;
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.set_frag_offset(1480);
        p.fill_checksum();
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.dont_frag(), "offset setter keeps the flags");
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(Ipv4Repr::parse(&p, true), Err(ParseError::Unsupported));
    }

    #[test]
    fn setters() {
        let mut b = SYN;
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.set_ecn(ECN_CE);
        p.set_dscp(46);
        p.set_ident(7);
        p.set_dont_frag(false);
        p.set_ttl(3);
        p.set_protocol(PROTO_UDP);
        p.set_src_addr(B);
        p.set_dst_addr(A);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(
            (p.ecn(), p.dscp(), p.ident(), p.dont_frag()),
            (3, 46, 7, false)
        );
        assert_eq!(
            (p.ttl(), p.protocol(), p.src_addr(), p.dst_addr()),
            (3, 17, B, A)
        );
        p.set_ecn(ECN_ECT0);
        assert_eq!((p.ecn(), p.dscp()), (2, 46));
        p.payload_mut()[0] = 0xee;
        p.set_total_len(1000);
        assert!(
            p.payload().is_empty(),
            "inconsistent length: empty, no panic"
        );
        assert_eq!(b[20], 0xee);
    }

    #[test]
    fn truncated_at_every_length() {
        for n in 0..SYN.len() {
            assert_eq!(
                Ipv4Packet::new_checked(&SYN[..n]).err(),
                Some(ParseError::Truncated),
                "length {n}"
            );
        }
        let r = Ipv4Repr::parse(&Ipv4Packet::new_checked(&SYN[..]).unwrap(), true).unwrap();
        for n in 0..HEADER_LEN {
            assert_eq!(r.emit(&mut vec![0; n]), Err(ParseError::Truncated));
        }
    }

    #[test]
    fn impossible_lengths() {
        let with = |at: usize, v: u8| {
            let mut b = SYN;
            b[at] = v;
            Ipv4Packet::new_checked(&b[..]).err()
        };
        assert_eq!(with(0, 0x44), Some(ParseError::Malformed), "IHL 4");
        assert_eq!(with(0, 0x40), Some(ParseError::Malformed), "IHL 0");
        assert_eq!(with(0, 0x65), Some(ParseError::Malformed), "version 6");
        assert_eq!(with(3, 19), Some(ParseError::Malformed), "total_len < 20");
        assert_eq!(
            with(3, 61),
            Some(ParseError::Truncated),
            "total_len > buffer"
        );
        assert_eq!(
            with(2, 0xff),
            Some(ParseError::Truncated),
            "total_len > buffer"
        );
        // IHL 15: a 60-byte header equal to total_len is fine...
        let mut b = SYN;
        b[0] = 0x4f;
        assert!(Ipv4Packet::new_checked(&b[..]).is_ok());
        // ...but not one longer than total_len or than the buffer.
        b[3] = 56;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).err(),
            Some(ParseError::Malformed)
        );
        assert_eq!(
            Ipv4Packet::new_checked(&b[..40]).err(),
            Some(ParseError::Truncated)
        );
    }

    #[test]
    fn emit_rejects_inconsistent_reprs() {
        let mut r = Ipv4Repr::parse(&Ipv4Packet::new_checked(&SYN[..]).unwrap(), true).unwrap();
        let mut buf = [0u8; 20];
        r.ecn = 4;
        assert_eq!(r.emit(&mut buf), Err(ParseError::Malformed));
        r.ecn = 3;
        r.payload_len = Ipv4Repr::MAX_PAYLOAD_LEN + 1;
        assert_eq!(r.emit(&mut buf), Err(ParseError::Malformed));
        r.payload_len = Ipv4Repr::MAX_PAYLOAD_LEN;
        assert!(r.emit(&mut buf).is_ok());
        assert_eq!(u16::from_be_bytes([buf[2], buf[3]]), u16::MAX);
    }

    fn arb_repr() -> impl Strategy<Value = Ipv4Repr> {
        (
            any::<[u8; 4]>(),
            any::<[u8; 4]>(),
            any::<u8>(),
            0usize..=Ipv4Repr::MAX_PAYLOAD_LEN,
            any::<u8>(),
            0u8..=3,
            any::<u16>(),
            any::<bool>(),
        )
            .prop_map(
                |(s, d, protocol, payload_len, ttl, ecn, ident, dont_frag)| Ipv4Repr {
                    src_addr: Ipv4Addr::from(s),
                    dst_addr: Ipv4Addr::from(d),
                    protocol,
                    payload_len,
                    ttl,
                    ecn,
                    ident,
                    dont_frag,
                },
            )
    }

    proptest! {
        #[test]
        fn round_trip(repr in arb_repr()) {
            let mut buf = vec![0u8; repr.total_len()];
            repr.emit(&mut buf).unwrap();
            let p = Ipv4Packet::new_checked(&buf[..]).unwrap();
            prop_assert!(p.verify_checksum());
            prop_assert_eq!(Ipv4Repr::parse(&p, true).unwrap(), repr);
            prop_assert_eq!(p.payload().len(), repr.payload_len);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80),
                                       fix_version in any::<bool>()) {
            let mut bytes = bytes;
            if fix_version && !bytes.is_empty() {
                // Arbitrary bytes rarely start with version 4; help them.
                bytes[0] = 0x40 | (bytes[0] & 0x0f);
            }
            if let Ok(p) = Ipv4Packet::new_checked(&bytes[..]) {
                prop_assert!(p.header_len() >= 20 && usize::from(p.total_len()) <= bytes.len());
                let _ = (p.version(), p.dscp(), p.ecn(), p.ident(), p.dont_frag(), p.more_frags());
                let _ = (p.frag_offset(), p.ttl(), p.protocol(), p.checksum());
                let _ = (p.src_addr(), p.dst_addr(), p.options(), p.payload(), p.verify_checksum());
                let _ = Ipv4Repr::parse(&p, true);
                let _ = Ipv4Repr::parse(&p, false);
            }
        }
    }
}
