//! ARP (RFC 826) for IPv4 over Ethernet, the only combination we handle.
//!
//! ```text
//!  0       2       4   5   6       8             14      18            24      28
//! +-------+-------+---+---+-------+-------------+-------+-------------+-------+
//! | htype | ptype |hln|pln|  op   | sender MAC  |sndr IP| target MAC  |tgt IP |
//! +-------+-------+---+---+-------+-------------+-------+-------------+-------+
//! ```

use core::fmt;
use std::net::Ipv4Addr;

use super::{
    read_array, read_u16, read_u8, write_bytes, write_u16, write_u8, EthernetAddress, ParseError,
    Result,
};

/// Length of an Ethernet/IPv4 ARP packet: 8 fixed bytes plus two 6-byte
/// hardware and two 4-byte protocol addresses.
pub const LEN: usize = 28;

/// Hardware type of Ethernet (RFC 826, IANA "Hardware Types" registry).
pub const HTYPE_ETHERNET: u16 = 1;
/// Protocol type of IPv4: its EtherType.
pub const PTYPE_IPV4: u16 = 0x0800;

/// Length of the fixed part (types, lengths, operation) that tells whether
/// the rest is Ethernet/IPv4.
const FIXED_LEN: usize = 8;

/// Byte offsets of the fields (Ethernet/IPv4 layout).
mod field {
    pub const HTYPE: usize = 0;
    pub const PTYPE: usize = 2;
    pub const HLEN: usize = 4;
    pub const PLEN: usize = 5;
    pub const OPER: usize = 6;
    pub const SHA: usize = 8;
    pub const SPA: usize = 14;
    pub const THA: usize = 18;
    pub const TPA: usize = 24;
}

/// The ARP operation code.
///
/// Build values with `ArpOperation::from(u16)`, which maps 1 and 2 to their
/// named variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ArpOperation {
    /// "Who has target IP? Tell sender" (1).
    Request,
    /// "Sender IP is at sender MAC" (2).
    Reply,
    /// Any other code (RARP, InARP, ...).
    Unknown(u16),
}

impl From<u16> for ArpOperation {
    fn from(v: u16) -> Self {
        match v {
            1 => ArpOperation::Request,
            2 => ArpOperation::Reply,
            other => ArpOperation::Unknown(other),
        }
    }
}

impl From<ArpOperation> for u16 {
    fn from(op: ArpOperation) -> u16 {
        match op {
            ArpOperation::Request => 1,
            ArpOperation::Reply => 2,
            ArpOperation::Unknown(v) => v,
        }
    }
}

impl fmt::Display for ArpOperation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ArpOperation::Request => f.write_str("request"),
            ArpOperation::Reply => f.write_str("reply"),
            ArpOperation::Unknown(v) => write!(f, "op {v}"),
        }
    }
}

/// A zero-copy view of an Ethernet/IPv4 ARP packet: at least [`LEN`] bytes
/// with hardware type 1, protocol type 0x0800 and address lengths 6 and 4.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ArpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> ArpPacket<T> {
    /// Wraps `buffer` after checking it is a whole Ethernet/IPv4 ARP packet.
    /// Trailing bytes (Ethernet padding) are allowed.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] if too short; [`ParseError::Unsupported`] for
    /// other hardware/protocol types or address lengths.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let b = buffer.as_ref();
        if b.len() < FIXED_LEN {
            return Err(ParseError::Truncated);
        }
        if read_u16(b, field::HTYPE) != HTYPE_ETHERNET
            || read_u16(b, field::PTYPE) != PTYPE_IPV4
            || read_u8(b, field::HLEN) != 6
            || read_u8(b, field::PLEN) != 4
        {
            return Err(ParseError::Unsupported);
        }
        if b.len() < LEN {
            return Err(ParseError::Truncated);
        }
        Ok(ArpPacket { buffer })
    }

    /// Gives the buffer back.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// Hardware type (always 1 in a checked packet).
    pub fn hardware_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::HTYPE)
    }

    /// Protocol type (always 0x0800 in a checked packet).
    pub fn protocol_type(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::PTYPE)
    }

    /// Hardware address length (always 6 in a checked packet).
    pub fn hardware_len(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::HLEN)
    }

    /// Protocol address length (always 4 in a checked packet).
    pub fn protocol_len(&self) -> u8 {
        read_u8(self.buffer.as_ref(), field::PLEN)
    }

    /// Operation code.
    pub fn operation(&self) -> ArpOperation {
        ArpOperation::from(read_u16(self.buffer.as_ref(), field::OPER))
    }

    /// Sender hardware address.
    pub fn source_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress(read_array(self.buffer.as_ref(), field::SHA))
    }

    /// Sender protocol address.
    pub fn source_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::SPA))
    }

    /// Target hardware address (zero in requests).
    pub fn target_hardware_addr(&self) -> EthernetAddress {
        EthernetAddress(read_array(self.buffer.as_ref(), field::THA))
    }

    /// Target protocol address.
    pub fn target_protocol_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(read_array::<4>(self.buffer.as_ref(), field::TPA))
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> ArpPacket<T> {
    /// Sets the operation code.
    pub fn set_operation(&mut self, op: ArpOperation) {
        write_u16(self.buffer.as_mut(), field::OPER, op.into());
    }

    /// Sets the sender hardware address.
    pub fn set_source_hardware_addr(&mut self, addr: EthernetAddress) {
        write_bytes(self.buffer.as_mut(), field::SHA, &addr.0);
    }

    /// Sets the sender protocol address.
    pub fn set_source_protocol_addr(&mut self, addr: Ipv4Addr) {
        write_bytes(self.buffer.as_mut(), field::SPA, &addr.octets());
    }

    /// Sets the target hardware address.
    pub fn set_target_hardware_addr(&mut self, addr: EthernetAddress) {
        write_bytes(self.buffer.as_mut(), field::THA, &addr.0);
    }

    /// Sets the target protocol address.
    pub fn set_target_protocol_addr(&mut self, addr: Ipv4Addr) {
        write_bytes(self.buffer.as_mut(), field::TPA, &addr.octets());
    }
}

/// An Ethernet/IPv4 ARP packet's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ArpRepr {
    /// Request, reply or other.
    pub operation: ArpOperation,
    /// Sender MAC.
    pub source_hardware_addr: EthernetAddress,
    /// Sender IPv4 address.
    pub source_protocol_addr: Ipv4Addr,
    /// Target MAC (zero in a request).
    pub target_hardware_addr: EthernetAddress,
    /// Target IPv4 address.
    pub target_protocol_addr: Ipv4Addr,
}

impl ArpRepr {
    /// Bytes [`emit`](Self::emit) writes; same as the module's [`LEN`].
    pub const LEN: usize = LEN;

    /// Reads a checked packet. Unknown operation codes are kept (as
    /// [`ArpOperation::Unknown`]) for the caller to ignore.
    ///
    /// # Errors
    /// None beyond what [`ArpPacket::new_checked`] already rejected.
    pub fn parse<T: AsRef<[u8]> + ?Sized>(packet: &ArpPacket<&T>) -> Result<ArpRepr> {
        Ok(ArpRepr {
            operation: packet.operation(),
            source_hardware_addr: packet.source_hardware_addr(),
            source_protocol_addr: packet.source_protocol_addr(),
            target_hardware_addr: packet.target_hardware_addr(),
            target_protocol_addr: packet.target_protocol_addr(),
        })
    }

    /// Bytes needed by [`emit`](Self::emit).
    pub const fn buffer_len(&self) -> usize {
        LEN
    }

    /// Writes the 28-byte packet at the start of `buf`.
    ///
    /// # Errors
    /// [`ParseError::Truncated`] if `buf` is shorter than [`LEN`].
    pub fn emit(&self, buf: &mut [u8]) -> Result<()> {
        let Some(p) = buf.get_mut(..LEN) else {
            return Err(ParseError::Truncated);
        };
        write_u16(p, field::HTYPE, HTYPE_ETHERNET);
        write_u16(p, field::PTYPE, PTYPE_IPV4);
        write_u8(p, field::HLEN, 6);
        write_u8(p, field::PLEN, 4);
        write_u16(p, field::OPER, self.operation.into());
        write_bytes(p, field::SHA, &self.source_hardware_addr.0);
        write_bytes(p, field::SPA, &self.source_protocol_addr.octets());
        write_bytes(p, field::THA, &self.target_hardware_addr.0);
        write_bytes(p, field::TPA, &self.target_protocol_addr.octets());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// ARP payload of a request captured from Linux: who has 10.99.0.2?
    /// tell 10.99.0.1 (02:00:00:00:00:0a).
    const REQUEST: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x0a,
        0x63, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x63, 0x00, 0x02,
    ];

    /// The reply Linux sent: 10.99.0.2 is at 02:00:00:00:00:0b.
    const REPLY: [u8; 28] = [
        0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0b, 0x0a,
        0x63, 0x00, 0x02, 0x02, 0x00, 0x00, 0x00, 0x00, 0x0a, 0x0a, 0x63, 0x00, 0x01,
    ];

    const MAC_A: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x0a]);
    const MAC_B: EthernetAddress = EthernetAddress([2, 0, 0, 0, 0, 0x0b]);
    const IP_A: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 1);
    const IP_B: Ipv4Addr = Ipv4Addr::new(10, 99, 0, 2);

    #[test]
    fn parse_request() {
        let p = ArpPacket::new_checked(&REQUEST[..]).unwrap();
        assert_eq!(p.hardware_type(), 1);
        assert_eq!(p.protocol_type(), 0x0800);
        assert_eq!(p.hardware_len(), 6);
        assert_eq!(p.protocol_len(), 4);
        assert_eq!(p.operation(), ArpOperation::Request);
        assert_eq!(p.source_hardware_addr(), MAC_A);
        assert_eq!(p.source_protocol_addr(), IP_A);
        assert_eq!(p.target_hardware_addr(), EthernetAddress::UNSPECIFIED);
        assert_eq!(p.target_protocol_addr(), IP_B);
        let r = ArpRepr::parse(&p).unwrap();
        assert_eq!(
            r,
            ArpRepr {
                operation: ArpOperation::Request,
                source_hardware_addr: MAC_A,
                source_protocol_addr: IP_A,
                target_hardware_addr: EthernetAddress::UNSPECIFIED,
                target_protocol_addr: IP_B,
            }
        );
        let mut out = [0xeeu8; 28];
        r.emit(&mut out).unwrap();
        assert_eq!(out, REQUEST);
    }

    #[test]
    fn parse_reply_and_emit_exact() {
        let p = ArpPacket::new_checked(&REPLY[..]).unwrap();
        let r = ArpRepr::parse(&p).unwrap();
        assert_eq!(
            r,
            ArpRepr {
                operation: ArpOperation::Reply,
                source_hardware_addr: MAC_B,
                source_protocol_addr: IP_B,
                target_hardware_addr: MAC_A,
                target_protocol_addr: IP_A,
            }
        );
        let mut out = [0u8; 28];
        r.emit(&mut out).unwrap();
        assert_eq!(out, REPLY);
        assert_eq!(r.buffer_len(), ArpRepr::LEN);
    }

    #[test]
    fn padded_packet_is_accepted() {
        let mut padded = [0u8; 46];
        padded[..28].copy_from_slice(&REPLY);
        let p = ArpPacket::new_checked(&padded[..]).unwrap();
        assert_eq!(p.target_protocol_addr(), IP_A);
    }

    #[test]
    fn setters_turn_request_into_reply() {
        let mut buf = REQUEST;
        let mut p = ArpPacket::new_checked(&mut buf[..]).unwrap();
        p.set_operation(ArpOperation::Reply);
        p.set_target_hardware_addr(MAC_A);
        p.set_target_protocol_addr(IP_A);
        p.set_source_hardware_addr(MAC_B);
        p.set_source_protocol_addr(IP_B);
        assert_eq!(buf, REPLY);
    }

    #[test]
    fn truncated_at_every_length() {
        for n in 0..LEN {
            assert_eq!(
                ArpPacket::new_checked(&REQUEST[..n]).err(),
                Some(ParseError::Truncated),
                "length {n}"
            );
            let mut out = vec![0u8; n];
            let r = ArpRepr::parse(&ArpPacket::new_checked(&REQUEST[..]).unwrap()).unwrap();
            assert_eq!(r.emit(&mut out), Err(ParseError::Truncated));
        }
    }

    #[test]
    fn other_types_are_unsupported() {
        for (at, value) in [(1, 0x06u8), (2, 0x86), (4, 8), (5, 16)] {
            let mut p = REQUEST;
            p[at] = value;
            assert_eq!(
                ArpPacket::new_checked(&p[..]).err(),
                Some(ParseError::Unsupported),
                "byte {at} = {value}"
            );
        }
    }

    #[test]
    fn unknown_operation_is_kept() {
        let mut p = REQUEST;
        p[7] = 8; // InARP request
        let r = ArpRepr::parse(&ArpPacket::new_checked(&p[..]).unwrap()).unwrap();
        assert_eq!(r.operation, ArpOperation::Unknown(8));
        assert_eq!(u16::from(r.operation), 8);
        assert_eq!(r.operation.to_string(), "op 8");
    }

    fn arb_repr() -> impl Strategy<Value = ArpRepr> {
        (
            any::<u16>(),
            any::<[u8; 6]>(),
            any::<[u8; 4]>(),
            any::<[u8; 6]>(),
            any::<[u8; 4]>(),
        )
            .prop_map(|(op, sha, spa, tha, tpa)| ArpRepr {
                operation: ArpOperation::from(op),
                source_hardware_addr: EthernetAddress(sha),
                source_protocol_addr: Ipv4Addr::from(spa),
                target_hardware_addr: EthernetAddress(tha),
                target_protocol_addr: Ipv4Addr::from(tpa),
            })
    }

    proptest! {
        #[test]
        fn round_trip(repr in arb_repr()) {
            let mut buf = [0u8; LEN];
            repr.emit(&mut buf).unwrap();
            let p = ArpPacket::new_checked(&buf[..]).unwrap();
            prop_assert_eq!(ArpRepr::parse(&p).unwrap(), repr);
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..40)) {
            if let Ok(p) = ArpPacket::new_checked(&bytes[..]) {
                let _ = (p.hardware_type(), p.protocol_type(), p.hardware_len(), p.protocol_len());
                let _ = (p.source_hardware_addr(), p.source_protocol_addr());
                let _ = (p.target_hardware_addr(), p.target_protocol_addr());
                let _ = ArpRepr::parse(&p);
            }
        }

        #[test]
        fn ethernet_ipv4_prefix_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..30)) {
            // Arbitrary bytes rarely pass the type check; force it.
            let mut bytes = REQUEST[..6].to_vec();
            bytes.extend_from_slice(&tail);
            if let Ok(p) = ArpPacket::new_checked(&bytes[..]) {
                let _ = ArpRepr::parse(&p).unwrap();
            } else {
                prop_assert!(bytes.len() < LEN);
            }
        }
    }
}
