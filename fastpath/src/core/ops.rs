//! What a core does for the control API (kept apart from the data path in `core.rs`).

use super::*;

impl<IO: PacketIo> FastPath<IO> {
    /// `Command::ShutdownTx`: send FIN after the data already queued, exactly as an
    /// application's `ShutdownTx` doorbell would (later data doorbells are refused).
    pub(super) fn shutdown_tx(&mut self, flow: u32) {
        let Some(f) = self.flows.get_mut(flow) else {
            return;
        };
        if !f.has(F_ACTIVE) || f.has(F_TX_FIN_PENDING) {
            return;
        }
        f.flags |= F_TX_FIN_PENDING;
        self.schedule(flow);
    }
}
