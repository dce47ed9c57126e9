//! ECN Congestion Experienced marking of IPv4 frames, as a RED/DCTCP switch does it
//! (RFC 3168 section 5): an ECT(0) or ECT(1) packet gets CE (`11`) instead of being
//! dropped; a Not-ECT packet is left alone. The header checksum is updated incrementally
//! (RFC 1624, eqn. 3), so a frame with a valid checksum keeps a valid one.

/// Ethernet header length; the forwarder handles untagged Ethernet II frames.
const ETH_HEADER: usize = 14;
/// EtherType of IPv4.
const ETHERTYPE_IPV4: [u8; 2] = [0x08, 0x00];
/// The ECN field: the two low bits of the IPv4 TOS / traffic-class byte.
const ECN_MASK: u8 = 0b11;
/// Congestion Experienced.
const ECN_CE: u8 = 0b11;

/// What [`mark_ce`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marking {
    /// ECT(0) or ECT(1): now CE, checksum updated.
    Marked,
    /// Already CE (marked by an earlier hop).
    AlreadyCe,
    /// IPv4 but Not-ECT: a real AQM would drop it; this one lets it through unmarked.
    NotEct,
    /// Not an IPv4 frame (ARP, IPv6, ...) or too short to be one.
    NotIpv4,
}

/// The ECN codepoint of an IPv4 frame, if it is one.
pub fn ecn_of(frame: &[u8]) -> Option<u8> {
    if frame.len() < ETH_HEADER + 20
        || frame[12..14] != ETHERTYPE_IPV4
        || frame[ETH_HEADER] >> 4 != 4
    {
        return None;
    }
    Some(frame[ETH_HEADER + 1] & ECN_MASK)
}

/// Sets CE on an ECN-capable IPv4 frame and fixes its header checksum incrementally.
pub fn mark_ce(frame: &mut [u8]) -> Marking {
    let Some(ecn) = ecn_of(frame) else {
        return Marking::NotIpv4;
    };
    match ecn {
        0 => return Marking::NotEct,
        ECN_CE => return Marking::AlreadyCe,
        _ => {}
    }
    let ip = &mut frame[ETH_HEADER..];
    // The 16-bit word holding version/IHL and TOS, before and after.
    let old = u16::from_be_bytes([ip[0], ip[1]]);
    ip[1] |= ECN_CE;
    let new = u16::from_be_bytes([ip[0], ip[1]]);
    let hc = u16::from_be_bytes([ip[10], ip[11]]);
    // RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), in one's-complement arithmetic.
    let sum = u32::from(!hc) + u32::from(!old) + u32::from(new);
    let folded = (sum & 0xffff) + (sum >> 16);
    let folded = (folded & 0xffff) + (folded >> 16);
    let hc_new = !(folded as u16);
    ip[10..12].copy_from_slice(&hc_new.to_be_bytes());
    Marking::Marked
}

/// The Internet checksum of `data` (RFC 1071); 0 over a header whose checksum is right.
#[cfg(test)]
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = 0;
    for chunk in data.chunks(2) {
        let word = match *chunk {
            [a, b] => u16::from_be_bytes([a, b]),
            [a] => u16::from_be_bytes([a, 0]),
            _ => 0,
        };
        sum += u32::from(word);
    }
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ethernet + IPv4 (TOS 0x02 = ECT(0), DF, TTL 64, TCP, 10.77.0.1 -> 10.77.0.2,
    /// total length 40) as Linux sends it with ECN negotiated, then 20 bytes of TCP.
    const ECT0_FRAME: [u8; 54] = [
        0x02, 0, 0, 0, 0, 0x02, 0x02, 0, 0, 0, 0, 0x01, 0x08, 0x00, // Ethernet
        0x45, 0x02, 0x00, 0x28, 0x12, 0x34, 0x40, 0x00, 0x40, 0x06, 0x13, 0xfe, // IPv4 ...
        10, 77, 0, 1, 10, 77, 0, 2, // ... addresses
        0x9c, 0x40, 0x00, 0x07, 0, 0, 0, 1, 0, 0, 0, 0, 0x50, 0x10, 0xff, 0xff, 0, 0, 0,
        0, // TCP
    ];

    #[test]
    fn byte_literal_is_a_valid_header() {
        assert_eq!(internet_checksum(&ECT0_FRAME[14..34]), 0);
        assert_eq!(ecn_of(&ECT0_FRAME), Some(0b10));
    }

    #[test]
    fn marks_ect0_and_fixes_the_checksum() {
        let mut f = ECT0_FRAME;
        assert_eq!(mark_ce(&mut f), Marking::Marked);
        // TOS 0x02 -> 0x03; checksum 0x13fe -> 0x13fd (the word 0x4502 grew by one).
        let mut expect = ECT0_FRAME;
        expect[15] = 0x03;
        expect[24..26].copy_from_slice(&[0x13, 0xfd]);
        assert_eq!(f, expect);
        assert_eq!(internet_checksum(&f[14..34]), 0);
        // Marking again changes nothing.
        assert_eq!(mark_ce(&mut f), Marking::AlreadyCe);
        assert_eq!(f, expect);
    }

    #[test]
    fn marks_ect1_with_dscp_and_options() {
        // IHL 6 (one option word), DSCP AF11 (0x28 << 2 = 0x28|..) with ECT(1).
        let mut f = [0u8; 14 + 24];
        f[12..14].copy_from_slice(&ETHERTYPE_IPV4);
        let ip: [u8; 24] = [
            0x46, 0x29, 0x00, 0x18, 0xab, 0xcd, 0x00, 0x00, 0x01, 0x11, 0x00, 0x00, 192, 0, 2, 1,
            198, 51, 100, 2, 0x01, 0x01, 0x01, 0x00,
        ];
        f[14..].copy_from_slice(&ip);
        let c = internet_checksum(&f[14..38]);
        f[24..26].copy_from_slice(&c.to_be_bytes());
        assert_eq!(mark_ce(&mut f), Marking::Marked);
        assert_eq!(f[15], 0x2b, "DSCP kept, ECN = CE");
        assert_eq!(internet_checksum(&f[14..38]), 0);
    }

    #[test]
    fn checksum_wraps_correctly_at_ffff() {
        // Every IP ID gives another stored checksum, so the edge cases of one's-complement
        // arithmetic (RFC 1624's -0 problem of eqn. 2) are all met: the result stays valid.
        let mut f = ECT0_FRAME;
        for id in 0..=u16::MAX {
            f[18..20].copy_from_slice(&id.to_be_bytes());
            f[24..26].copy_from_slice(&[0, 0]);
            let c = internet_checksum(&f[14..34]);
            f[24..26].copy_from_slice(&c.to_be_bytes());
            let mut g = f;
            assert_eq!(mark_ce(&mut g), Marking::Marked);
            assert_eq!(
                internet_checksum(&g[14..34]),
                0,
                "id {id:#x}, checksum before {c:#x}"
            );
        }
    }

    #[test]
    fn leaves_not_ect_and_other_frames_alone() {
        let mut f = ECT0_FRAME;
        f[15] = 0x00;
        let before = f;
        assert_eq!(mark_ce(&mut f), Marking::NotEct);
        assert_eq!(f, before);
        let mut arp = [0u8; 42];
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(mark_ce(&mut arp), Marking::NotIpv4);
        let mut short = [0u8; 20];
        assert_eq!(mark_ce(&mut short), Marking::NotIpv4);
        let mut v6 = ECT0_FRAME;
        v6[14] = 0x60;
        assert_eq!(mark_ce(&mut v6), Marking::NotIpv4);
    }
}
