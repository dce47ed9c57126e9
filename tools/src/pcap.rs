//! A pcap file writer (the classic libpcap format that `tcpdump -r` and Wireshark read):
//! a 24-byte global header, then per frame a 16-byte record header and the frame.
//!
//! Microsecond timestamps, Ethernet link type, little-endian (the magic number tells
//! readers the byte order).

use std::io::{self, Write};

/// The classic pcap magic number with microsecond timestamps.
pub const MAGIC_USEC: u32 = 0xa1b2_c3d4;
/// LINKTYPE_ETHERNET.
pub const LINKTYPE_ETHERNET: u32 = 1;
/// Largest frame a record holds in full (the fast path's frames are at most 1514 bytes).
pub const SNAPLEN: u32 = 65_535;

/// Writes frames to `W` as a pcap file.
#[derive(Debug)]
pub struct PcapWriter<W: Write> {
    out: W,
    frames: u64,
}

impl<W: Write> PcapWriter<W> {
    /// Write the global header.
    pub fn new(mut out: W) -> io::Result<Self> {
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC_USEC.to_le_bytes());
        h.extend_from_slice(&2u16.to_le_bytes()); // version 2.4
        h.extend_from_slice(&4u16.to_le_bytes());
        h.extend_from_slice(&0i32.to_le_bytes()); // thiszone: UTC
        h.extend_from_slice(&0u32.to_le_bytes()); // sigfigs
        h.extend_from_slice(&SNAPLEN.to_le_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
        out.write_all(&h)?;
        Ok(PcapWriter { out, frames: 0 })
    }

    /// Append one frame seen at `unix_ns` nanoseconds since the epoch.
    pub fn write_frame(&mut self, unix_ns: u64, frame: &[u8]) -> io::Result<()> {
        let incl = frame.len().min(SNAPLEN as usize);
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&((unix_ns / 1_000_000_000) as u32).to_le_bytes());
        h[4..8].copy_from_slice(&(((unix_ns % 1_000_000_000) / 1_000) as u32).to_le_bytes());
        h[8..12].copy_from_slice(&(incl as u32).to_le_bytes());
        h[12..16].copy_from_slice(&(frame.len() as u32).to_le_bytes());
        self.out.write_all(&h)?;
        self.out.write_all(&frame[..incl])?;
        self.frames += 1;
        Ok(())
    }

    /// Frames written.
    pub fn frames(&self) -> u64 {
        self.frames
    }

    /// Flush and return the writer.
    pub fn finish(mut self) -> io::Result<W> {
        self.out.flush()?;
        Ok(self.out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn global_header_and_one_record_byte_for_byte() {
        let mut w = PcapWriter::new(Vec::new()).unwrap();
        // 2024-01-01T00:00:01.000002500Z: 1704067201 s, 2 µs (the 500 ns are cut).
        w.write_frame(1_704_067_201_000_002_500, &[0xde, 0xad, 0xbe, 0xef])
            .unwrap();
        assert_eq!(w.frames(), 1);
        let bytes = w.finish().unwrap();
        #[rustfmt::skip]
        let expected: &[u8] = &[
            // global header
            0xd4, 0xc3, 0xb2, 0xa1,   // magic, little-endian, microseconds
            0x02, 0x00, 0x04, 0x00,   // version 2.4
            0x00, 0x00, 0x00, 0x00,   // thiszone
            0x00, 0x00, 0x00, 0x00,   // sigfigs
            0xff, 0xff, 0x00, 0x00,   // snaplen 65535
            0x01, 0x00, 0x00, 0x00,   // LINKTYPE_ETHERNET
            // record header
            0x81, 0x00, 0x92, 0x65,   // ts_sec 1704067201 = 0x65920081
            0x02, 0x00, 0x00, 0x00,   // ts_usec 2
            0x04, 0x00, 0x00, 0x00,   // incl_len
            0x04, 0x00, 0x00, 0x00,   // orig_len
            0xde, 0xad, 0xbe, 0xef,
        ];
        assert_eq!(bytes, expected);
    }
}
