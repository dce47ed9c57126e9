//! Ethernet II frames (IEEE 802.3 with an EtherType, no VLAN tags).
//!
//! ```text
//!  0                   6                  12      14
//! +-------------------+-------------------+-------+---------- - -
//! | destination (6)   | source (6)        | type  | payload
//! +-------------------+-------------------+-------+---------- - -
//! ```
//! The frame check sequence is not part of what AF_XDP hands us.

use core::fmt;

use super::{read_array, read_u16, write_bytes, write_u16, ParseError, Result};

/// Ethernet header length: two 6-byte addresses and the 2-byte EtherType.
pub const HEADER_LEN: usize = 14;

/// Byte offsets of the header fields.
mod field {
    pub const DST: usize = 0;
    pub const SRC: usize = 6;
    pub const ETHERTYPE: usize = 12;
}

/// A 48-bit Ethernet (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct EthernetAddress(pub [u8; 6]);

impl EthernetAddress {
    /// The broadcast address ff:ff:ff:ff:ff:ff.
    pub const BROADCAST: EthernetAddress = EthernetAddress([0xff; 6]);

    /// The all-zero address, used as "unknown" in ARP requests' target field.
    pub const UNSPECIFIED: EthernetAddress = EthernetAddress([0; 6]);

    /// The address from its first six bytes; `None` if `bytes` is shorter.
    pub fn from_bytes(bytes: &[u8]) -> Option<EthernetAddress> {
        bytes
            .get(..6)
            .and_then(|b| <[u8; 6]>::try_from(b).ok())
            .map(EthernetAddress)
    }

    /// The six address bytes.
    pub const fn as_bytes(&self) -> &[u8; 6] {
        &self.0
    }

    /// Whether this is ff:ff:ff:ff:ff:ff.
    pub fn is_broadcast(&self) -> bool {
        *self == Self::BROADCAST
    }

    /// Whether the individual/group bit (least significant bit of the first
    /// byte) is set: multicast, including broadcast.
    pub const fn is_multicast(&self) -> bool {
        self.0[0] & 0x01 != 0
    }

    /// Whether this is an individual (unicast) address: group bit clear.
    pub const fn is_unicast(&self) -> bool {
        !self.is_multicast()
    }

    /// Whether the locally-administered bit (second least significant bit
    /// of the first byte) is set.
    pub const fn is_local(&self) -> bool {
        self.0[0] & 0x02 != 0
    }
}

impl fmt::Display for EthernetAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl From<[u8; 6]> for EthernetAddress {
    fn from(bytes: [u8; 6]) -> Self {
        EthernetAddress(bytes)
    }
}

/// The EtherType field: which protocol the payload carries.
///
/// Build values with `EtherType::from(u16)`, which maps known numbers to
/// their named variant; `Unknown` holding a known number compares unequal to
/// the named variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EtherType {
    /// IPv4, 0x0800.
    Ipv4,
    /// ARP, 0x0806.
    Arp,
    /// Anything else (IPv6, VLAN tags, ...), with its number.
    Unknown(u16),
}

impl EtherType {
    /// Wire value of IPv4 (RFC 894).
    pub const IPV4: u16 = 0x0800;
    /// Wire value of ARP (RFC 826).
    pub const ARP: u16 = 0x0806;
}

impl From<u16> for EtherType {
    fn from(v: u16) -> Self {
        match v {
            Self::IPV4 => EtherType::Ipv4,
            Self::ARP => EtherType::Arp,
            other => EtherType::Unknown(other),
        }
    }
}

impl From<EtherType> for u16 {
    fn from(t: EtherType) -> u16 {
        match t {
            EtherType::Ipv4 => EtherType::IPV4,
            EtherType::Arp => EtherType::ARP,
            EtherType::Unknown(v) => v,
        }
    }
}

impl fmt::Display for EtherType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EtherType::Ipv4 => f.write_str("IPv4"),
            EtherType::Arp => f.write_str("ARP"),
            EtherType::Unknown(v) => write!(f, "0x{v:04x}"),
        }
    }
}

/// A zero-copy view of an Ethernet II frame, at least [`HEADER_LEN`] long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` after checking it holds a whole header.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] if it is shorter than [`HEADER_LEN`].
    pub fn new_checked(buffer: T) -> Result<Self> {
        if buffer.as_ref().len() < HEADER_LEN {
            return Err(ParseError::Truncated);
        }
        Ok(EthernetFrame { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The whole frame, header included.
    pub fn as_bytes(&self) -> &[u8] {
        self.buffer.as_ref()
    }

    /// Destination address.
    #[inline]
    pub fn dst_addr(&self) -> EthernetAddress {
        EthernetAddress(read_array(self.buffer.as_ref(), field::DST))
    }

    /// Source address.
    #[inline]
    pub fn src_addr(&self) -> EthernetAddress {
        EthernetAddress(read_array(self.buffer.as_ref(), field::SRC))
    }

    /// The EtherType.
    #[inline]
    pub fn ethertype(&self) -> EtherType {
        EtherType::from(read_u16(self.buffer.as_ref(), field::ETHERTYPE))
    }

    /// Everything after the header (may include Ethernet padding).
    #[inline]
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(HEADER_LEN..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, addr: EthernetAddress) {
        write_bytes(self.buffer.as_mut(), field::DST, &addr.0);
    }

    /// Sets the source address.
    pub fn set_src_addr(&mut self, addr: EthernetAddress) {
        write_bytes(self.buffer.as_mut(), field::SRC, &addr.0);
    }

    /// Sets the EtherType.
    pub fn set_ethertype(&mut self, ethertype: EtherType) {
        write_u16(self.buffer.as_mut(), field::ETHERTYPE, ethertype.into());
    }

    /// Everything after the header, writable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        self.buffer
            .as_mut()
            .get_mut(HEADER_LEN..)
            .unwrap_or(&mut [])
    }
}

/// The fields of an Ethernet header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EthernetRepr {
    /// Source address.
    pub src_addr: EthernetAddress,
    /// Destination address.
    pub dst_addr: EthernetAddress,
    /// Payload protocol.
    pub ethertype: EtherType,
}

impl EthernetRepr {
    /// Bytes [`emit`](Self::emit) writes; same as the module's [`HEADER_LEN`].
    pub const HEADER_LEN: usize = HEADER_LEN;

    /// Reads the header of a checked frame. Never fails today; returns a
    /// `Result` like the other reprs so callers can use `?` uniformly.
    ///
    /// # Errors
    /// None currently.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(frame: &EthernetFrame<&T>) -> Result<EthernetRepr> {
        Ok(EthernetRepr {
            src_addr: frame.src_addr(),
            dst_addr: frame.dst_addr(),
            ethertype: frame.ethertype(),
        })
    }

    /// Bytes needed by [`emit`](Self::emit).
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the 14-byte header at the start of `buf`.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] if `buf` is shorter than [`HEADER_LEN`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let Some(h) = buf.get_mut(..HEADER_LEN) else {
            return Err(ParseError::Truncated);
        };
        write_bytes(h, field::DST, &self.dst_addr.0);
        write_bytes(h, field::SRC, &self.src_addr.0);
        write_u16(h, field::ETHERTYPE, self.ethertype.into());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Header of an ARP request captured from Linux (broadcast from
    /// 02:00:00:00:00:0a), followed by the first payload bytes.
    const ARP_FRAME: [u8; 18] = [
        0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x06, 0x00,
        0x01, 0x08, 0x00,
    ];

    /// Header of a TCP SYN captured from Linux (02:..:0a to 02:..:0b).
    const IPV4_FRAME_HEADER: [u8; 14] = [
        0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x08, 0x00,
    ];

    #[test]
    fn parse_arp_frame() {
        let f = EthernetFrame::new_checked(&ARP_FRAME[..]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress::BROADCAST);
        assert_eq!(f.src_addr(), EthernetAddress([2, 0, 0, 0, 0, 0x0a]));
        assert_eq!(f.ethertype(), EtherType::Arp);
        assert_eq!(f.payload(), &[0x00, 0x01, 0x08, 0x00]);
        let r = EthernetRepr::parse(&f).unwrap();
        assert_eq!(
            r,
            EthernetRepr {
                src_addr: EthernetAddress([2, 0, 0, 0, 0, 0x0a]),
                dst_addr: EthernetAddress::BROADCAST,
                ethertype: EtherType::Arp,
            }
        );
    }

    #[test]
    fn parse_ipv4_frame_and_emit_exact() {
        let f = EthernetFrame::new_checked(&IPV4_FRAME_HEADER[..]).unwrap();
        assert_eq!(f.dst_addr(), EthernetAddress([2, 0, 0, 0, 0, 0x0b]));
        assert_eq!(f.src_addr(), EthernetAddress([2, 0, 0, 0, 0, 0x0a]));
        assert_eq!(f.ethertype(), EtherType::Ipv4);
        assert!(f.payload().is_empty());
        let r = EthernetRepr::parse(&f).unwrap();
        let mut out = [0u8; 14];
        r.emit(&mut out).unwrap();
        assert_eq!(out, IPV4_FRAME_HEADER);
        assert_eq!(r.buffer_len(), 14);
    }

    #[test]
    fn setters() {
        let mut buf = [0u8; 16];
        let mut f = EthernetFrame::new_checked(&mut buf[..]).unwrap();
        f.set_dst_addr(EthernetAddress([1, 2, 3, 4, 5, 6]));
        f.set_src_addr(EthernetAddress([7, 8, 9, 10, 11, 12]));
        f.set_ethertype(EtherType::Unknown(0x86dd));
        f.payload_mut().copy_from_slice(&[0xaa, 0xbb]);
        assert_eq!(f.ethertype(), EtherType::Unknown(0x86dd));
        assert_eq!(
            buf,
            [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 0x86, 0xdd, 0xaa, 0xbb]
        );
    }

    #[test]
    fn truncated_at_every_length() {
        for n in 0..HEADER_LEN {
            assert_eq!(
                EthernetFrame::new_checked(&ARP_FRAME[..n]).err(),
                Some(ParseError::Truncated)
            );
            let mut out = vec![0u8; n];
            assert_eq!(
                EthernetRepr::parse(&EthernetFrame::new_checked(&ARP_FRAME[..]).unwrap())
                    .unwrap()
                    .emit(&mut out),
                Err(ParseError::Truncated)
            );
        }
    }

    #[test]
    fn addresses() {
        let b = EthernetAddress::BROADCAST;
        assert!(b.is_broadcast() && b.is_multicast() && !b.is_unicast());
        let u = EthernetAddress([0x02, 0, 0, 0, 0, 0x0a]);
        assert!(u.is_unicast() && u.is_local() && !u.is_broadcast());
        let m = EthernetAddress([0x01, 0x00, 0x5e, 0, 0, 1]);
        assert!(m.is_multicast() && !m.is_broadcast());
        assert_eq!(u.to_string(), "02:00:00:00:00:0a");
        assert_eq!(b.to_string(), "ff:ff:ff:ff:ff:ff");
        assert_eq!(EthernetAddress::from_bytes(&[1, 2, 3, 4, 5]), None);
        assert_eq!(
            EthernetAddress::from_bytes(&[1, 2, 3, 4, 5, 6, 7]),
            Some(EthernetAddress([1, 2, 3, 4, 5, 6]))
        );
    }

    #[test]
    fn ethertype_numbers() {
        assert_eq!(EtherType::from(0x0800), EtherType::Ipv4);
        assert_eq!(EtherType::from(0x0806), EtherType::Arp);
        assert_eq!(EtherType::from(0x86dd), EtherType::Unknown(0x86dd));
        assert_eq!(u16::from(EtherType::Arp), 0x0806);
        assert_eq!(EtherType::Unknown(0x88cc).to_string(), "0x88cc");
    }

    fn arb_repr() -> impl Strategy<Value = EthernetRepr> {
        (any::<[u8; 6]>(), any::<[u8; 6]>(), any::<u16>()).prop_map(|(s, d, t)| EthernetRepr {
            src_addr: EthernetAddress(s),
            dst_addr: EthernetAddress(d),
            ethertype: EtherType::from(t),
        })
    }

    proptest! {
        #[test]
        fn round_trip(repr in arb_repr(), payload in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut buf = vec![0u8; HEADER_LEN + payload.len()];
            repr.emit(&mut buf).unwrap();
            buf[HEADER_LEN..].copy_from_slice(&payload);
            let f = EthernetFrame::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(EthernetRepr::parse(&f).unwrap(), repr);
            prop_assert_eq!(f.payload(), &payload[..]);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(f) = EthernetFrame::new_checked(&bytes[..]) {
                let _ = (f.dst_addr(), f.src_addr(), f.ethertype(), f.payload());
                let _ = EthernetRepr::parse(&f);
            }
        }
    }
}
