//! Shared-memory descriptors, as an application (hostile or not) may write them: every
//! decoder takes any 32 bytes without panicking, and whatever decodes encodes back to a
//! descriptor that decodes to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tas_proto::shm::{ControlRequest, Desc, Doorbell, FpEvent, SpEvent};

fn desc(b: &[u8; 32]) -> Desc {
    let u16_at = |o: usize| u16::from_le_bytes([b[o], b[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
    Desc {
        kind: b[0],
        core: b[1],
        flags: u16_at(2),
        flow: u32_at(4),
        conn: u32_at(8),
        len: u32_at(12),
        ip: u32_at(16),
        local_port: u16_at(20),
        remote_port: u16_at(22),
        aux: u64::from_le_bytes(b[24..32].try_into().unwrap()),
    }
}

fuzz_target!(|data: [u8; 32]| {
    let d = desc(&data);
    if let Ok(v) = Doorbell::decode(&d) {
        assert_eq!(Doorbell::decode(&v.encode()), Ok(v));
    }
    if let Ok(v) = FpEvent::decode(&d) {
        assert_eq!(FpEvent::decode(&v.encode()), Ok(v));
    }
    if let Ok(v) = SpEvent::decode(&d) {
        assert_eq!(SpEvent::decode(&v.encode()), Ok(v));
    }
    if let Ok(v) = ControlRequest::decode(&d) {
        assert_eq!(ControlRequest::decode(&v.encode()), Ok(v));
    }
});
