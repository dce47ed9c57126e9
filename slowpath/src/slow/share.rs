//! Connections held by several processes (fork), and moving a connection between
//! application contexts (decisions §26).
//!
//! A connection's rings are a slot of one application's region (its *owner*). After a
//! fork, the child holds the parent's connections too: the shim reports the fork
//! ([`ControlRequest::Forked`]), and the slow path keeps, per connection, the set of
//! process ids that hold it (`Conn::holders`; `None` while only the owner's process
//! does). A holder that uses a connection it does not own asks to adopt it
//! ([`ControlRequest::Adopt`]): the owning core moves the flow to a slot of the
//! requester's region ([`Command::MoveFlow`]) and the old owner is told the slot is gone
//! (`Closed` with [`ErrorCode::Moved`]). A holder whose last descriptor closes releases
//! its hold ([`ControlRequest::Release`]); the last one gets the connection (moved to it
//! if needed) and closes it. Holders are watched with pidfds: a process that exits
//! without releasing stops holding; if that leaves none while the owner had released
//! it, the owner is told to close it ([`SpEvent::Orphaned`]).

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use tas_fastpath::ctl::Command;
use tas_fastpath::flow::FlowKey;
use tas_fastpath::time::Instant;
use tas_proto::shm::{
    ConnHandle, ConnKey, ErrorCode, SpEvent, ADOPT_LAST, ADOPT_RX_FIN, ADOPT_TX_FIN,
};

use super::{Phase, SlowPath};

/// How often holder processes are checked for exit (one `poll` over their pidfds).
pub(super) const HOLDER_CHECK: std::time::Duration = std::time::Duration::from_millis(20);

/// A move in progress on a core.
#[derive(Debug, Clone, Copy)]
pub(super) struct PendingMove {
    key: FlowKey,
    to_app: u32,
    to_slot: u32,
    token: u64,
    last: bool,
}

/// The slow path's sharing state.
#[derive(Debug, Default)]
pub(super) struct ShareState {
    /// Exit watch of every process that holds a shared connection.
    pidfds: std::collections::HashMap<u32, OwnedFd>,
    /// Moves waiting for their core's answer, by (core, flow).
    moves: std::collections::HashMap<(u8, u32), PendingMove>,
    /// When holder processes were last checked.
    last_check: Option<Instant>,
}

impl ShareState {
    /// When the slow path must look at holder processes again (None: no holders).
    pub(super) fn next_check(&self) -> Option<Instant> {
        if self.pidfds.is_empty() {
            return None;
        }
        Some(self.last_check.map_or(Instant::ZERO, |t| t + HOLDER_CHECK))
    }
}

/// `pidfd_open(pid)`: a descriptor that becomes readable when the process exits.
#[allow(unsafe_code)]
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    // SAFETY: a plain system call with integer arguments; on success it returns a new
    // descriptor that nothing else owns.
    let r = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    if r < 0 {
        return None;
    }
    // SAFETY: `r` is a fresh descriptor owned by no one else.
    Some(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// `poll` with a zero timeout (errors leave every `revents` zero: checked next time).
#[allow(unsafe_code)]
fn poll_now(fds: &mut [libc::pollfd]) {
    // SAFETY: `fds` is a valid, exclusively borrowed array of `fds.len()` pollfds.
    unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 0) };
}

fn key_of(k: ConnKey) -> FlowKey {
    FlowKey::new(k.remote_ip, k.remote_port, k.local_port)
}

impl SlowPath {
    /// The pid of application `app` (None if unknown).
    fn pid_of(&self, app: u32) -> Option<u32> {
        self.apps.get(&app).map(|a| a.pid)
    }

    /// Does process `pid` hold connection `key`?
    fn holds(&self, key: FlowKey, pid: u32) -> bool {
        let Some(c) = self.conns.get(&key) else {
            return false;
        };
        match &c.holders {
            None => self.pid_of(c.app) == Some(pid),
            Some(v) => v.contains(&pid),
        }
    }

    fn watch(&mut self, pid: u32) -> bool {
        if self.share.pidfds.contains_key(&pid) {
            return true;
        }
        match pidfd_open(pid) {
            Some(fd) => {
                self.share.pidfds.insert(pid, fd);
                true
            }
            None => false,
        }
    }

    /// `Forked { child }` from application `app`: the child holds what its parent holds.
    pub(super) fn on_forked(&mut self, app: u32, child: u32) {
        let Some(parent) = self.pid_of(app) else {
            return;
        };
        if child == 0 || child == parent {
            self.counters.bad_requests += 1;
            return;
        }
        let keys: Vec<FlowKey> = self
            .conns
            .values()
            .filter(|c| c.slot.is_some() && matches!(c.phase, Phase::Established))
            .map(|c| c.key)
            .filter(|&k| self.holds(k, parent))
            .collect();
        if keys.is_empty() {
            return;
        }
        // Both are watched: a holder that exits without closing stops holding.
        if !self.watch(child) {
            return; // already gone: it holds nothing
        }
        self.watch(parent);
        for k in keys {
            let owner_pid = self.conns.get(&k).and_then(|c| self.pid_of(c.app));
            let Some(c) = self.conns.get_mut(&k) else {
                continue;
            };
            let v = c
                .holders
                .get_or_insert_with(|| owner_pid.into_iter().collect());
            if !v.contains(&child) {
                v.push(child);
            }
        }
        tracing::debug!(app, parent, child, "fork: connections now shared");
    }

    /// Check that application `app` may take connection `key`: its process holds it, it
    /// has the owner's uid, the connection is established and not moving.
    fn check_holder(&self, app: u32, key: FlowKey) -> Result<(), ErrorCode> {
        let a = self.apps.get(&app).ok_or(ErrorCode::NotFound)?;
        let c = self.conns.get(&key).ok_or(ErrorCode::NotFound)?;
        if !self.holds(key, a.pid) {
            return Err(ErrorCode::NotFound);
        }
        if self.apps.get(&c.app).map(|o| o.uid) != Some(a.uid) {
            return Err(ErrorCode::Permission);
        }
        if !matches!(c.phase, Phase::Established) || c.flow.is_none() || c.slot.is_none() {
            return Err(ErrorCode::NotFound);
        }
        if self
            .share
            .moves
            .contains_key(&(c.core, c.flow.unwrap_or(u32::MAX)))
        {
            return Err(ErrorCode::NoResources);
        }
        Ok(())
    }

    /// Start moving `key` into application `app`'s region.
    fn start_move(
        &mut self,
        app: u32,
        key: FlowKey,
        token: u64,
        last: bool,
    ) -> Result<(), ErrorCode> {
        let rcvbuf = self.conns.get(&key).map_or(0, |c| c.rcvbuf);
        let rx_space = self.rcv_space(rcvbuf);
        let a = self.apps.get_mut(&app).ok_or(ErrorCode::NotFound)?;
        if a.detaching {
            return Err(ErrorCode::NotFound);
        }
        let slot = a.free_conns.pop_front().ok_or(ErrorCode::NoResources)?;
        a.conns += 1;
        let app_slot = a.slot;
        let c = self.conns.get(&key).ok_or(ErrorCode::NotFound)?;
        let (core, flow) = (c.core, c.flow.ok_or(ErrorCode::NotFound)?);
        self.share.moves.insert(
            (core, flow),
            PendingMove {
                key,
                to_app: app,
                to_slot: slot,
                token,
                last,
            },
        );
        self.cores[core as usize].send(Command::MoveFlow {
            flow,
            app: app_slot,
            conn: slot,
            rx_space,
        });
        self.counters.moves += 1;
        Ok(())
    }

    /// `Adopt { token, key }` from application `app`.
    pub(super) fn on_adopt(&mut self, app: u32, token: u64, key: ConnKey) {
        let key = key_of(key);
        let r = self.check_holder(app, key).and_then(|()| {
            if self.conns.get(&key).is_some_and(|c| c.app == app) {
                return Err(ErrorCode::Invalid); // already here
            }
            self.start_move(app, key, token, false)
        });
        if let Err(error) = r {
            self.post(
                app,
                SpEvent::AdoptFailed {
                    token,
                    error: Some(error),
                },
            );
        }
    }

    /// `Release { token, key }` from application `app`.
    pub(super) fn on_release(&mut self, app: u32, token: u64, key: ConnKey) {
        let key = key_of(key);
        if let Err(error) = self.check_holder(app, key) {
            // NotFound: not (yet) a holder, or gone; NoResources: a move in progress
            // (the shim retries both for a while: a parent's Forked may still be on
            // its way).
            self.post(
                app,
                SpEvent::AdoptFailed {
                    token,
                    error: Some(error),
                },
            );
            return;
        }
        let Some(pid) = self.pid_of(app) else { return };
        let owner_pid = self.conns.get(&key).and_then(|c| self.pid_of(c.app));
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let v = c
            .holders
            .get_or_insert_with(|| owner_pid.into_iter().collect());
        v.retain(|&p| p != pid);
        if !v.is_empty() {
            self.post(app, SpEvent::AdoptFailed { token, error: None });
            return;
        }
        // The last holder: it gets the connection, to close it.
        c.holders = None;
        if c.app == app {
            let (Some(slot), Some(flow)) = (c.slot, c.flow) else {
                return;
            };
            let handle = ConnHandle {
                conn: slot,
                core: c.core,
                flow,
            };
            self.post(
                app,
                SpEvent::Adopted {
                    token,
                    handle,
                    rx_bytes: 0,
                    tx_bytes: 0,
                    flags: ADOPT_LAST,
                },
            );
        } else if let Err(error) = self.start_move(app, key, token, true) {
            self.post(
                app,
                SpEvent::AdoptFailed {
                    token,
                    error: Some(error),
                },
            );
        }
    }

    /// Process `pid` no longer holds `key`; if nobody does and the owner released it,
    /// tell the owner to close it.
    fn drop_holder(&mut self, key: FlowKey, pid: u32) {
        let Some(c) = self.conns.get_mut(&key) else {
            return;
        };
        let Some(v) = c.holders.as_mut() else { return };
        v.retain(|&p| p != pid);
        if v.is_empty() {
            c.holders = None;
            let (app, slot, core, flow) = (c.app, c.slot, c.core, c.flow);
            if self.apps.get(&app).is_none_or(|a| a.detaching) {
                // The owner exited before (the connection was kept for the holders) and
                // the last holder is gone too: end it as the owner's exit would have
                // (the core says whether the owner had shut it down).
                match flow {
                    Some(flow)
                        if matches!(
                            self.conns.get(&key).map(|c| c.phase),
                            Some(Phase::Established)
                        ) =>
                    {
                        self.cores[core as usize].send(Command::Orphan { flow });
                    }
                    _ => self.abort_conn(key, ErrorCode::Aborted, true),
                }
            } else if let Some(slot) = slot {
                self.post(app, SpEvent::Orphaned { conn: slot });
            }
        }
    }

    /// The core's answer to a [`Command::MoveFlow`].
    #[allow(clippy::too_many_arguments)]
    pub(super) fn on_moved(
        &mut self,
        core: u8,
        flow: u32,
        moved: bool,
        rx_bytes: u32,
        tx_bytes: u32,
        rx_fin: bool,
        tx_fin: bool,
    ) {
        let Some(m) = self.share.moves.remove(&(core, flow)) else {
            return;
        };
        let still = self
            .conns
            .get(&m.key)
            .is_some_and(|c| c.flow == Some(flow) && c.core == core);
        if !moved || !still {
            if let Some(a) = self.apps.get_mut(&m.to_app) {
                a.free_conns.push_back(m.to_slot);
                a.conns -= 1;
            }
            self.post(
                m.to_app,
                SpEvent::AdoptFailed {
                    token: m.token,
                    error: Some(ErrorCode::NotFound),
                },
            );
            self.maybe_finish_detach(m.to_app);
            return;
        }
        let c = self.conns.get_mut(&m.key).expect("checked");
        let (old_app, old_slot) = (c.app, c.slot);
        c.app = m.to_app;
        c.slot = Some(m.to_slot);
        self.by_slot.insert((m.to_app, m.to_slot), m.key);
        if let Some(s) = old_slot {
            self.by_slot.remove(&(old_app, s));
            // The old owner frees its entry on this; the slot is reused only after it.
            self.post(
                old_app,
                SpEvent::Closed {
                    conn: s,
                    error: Some(ErrorCode::Moved),
                },
            );
            if let Some(a) = self.apps.get_mut(&old_app) {
                a.free_conns.push_back(s);
                a.conns -= 1;
            }
        }
        let mut flags = 0;
        if rx_fin {
            flags |= ADOPT_RX_FIN;
        }
        if tx_fin {
            flags |= ADOPT_TX_FIN;
        }
        if m.last {
            flags |= ADOPT_LAST;
        }
        let handle = ConnHandle {
            conn: m.to_slot,
            core,
            flow,
        };
        tracing::debug!(
            from = old_app,
            to = m.to_app,
            flow,
            rx_bytes,
            tx_bytes,
            "connection moved"
        );
        self.post(
            m.to_app,
            SpEvent::Adopted {
                token: m.token,
                handle,
                rx_bytes,
                tx_bytes,
                flags,
            },
        );
        self.maybe_finish_detach(old_app);
    }

    /// Holder processes that exited stop holding (called from the poll loop).
    pub(super) fn check_holders(&mut self) -> usize {
        if self.share.pidfds.is_empty() {
            return 0;
        }
        if self
            .share
            .last_check
            .is_some_and(|t| self.now < t + HOLDER_CHECK)
        {
            return 0;
        }
        self.share.last_check = Some(self.now);
        let mut fds: Vec<libc::pollfd> = self
            .share
            .pidfds
            .values()
            .map(|fd| libc::pollfd {
                fd: fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            })
            .collect();
        poll_now(&mut fds);
        let gone: Vec<u32> = self
            .share
            .pidfds
            .iter()
            .filter(|(_, fd)| fds.iter().any(|p| p.fd == fd.as_raw_fd() && p.revents != 0))
            .map(|(&pid, _)| pid)
            .collect();
        for &pid in &gone {
            self.share.pidfds.remove(&pid);
            let keys: Vec<FlowKey> = self
                .conns
                .values()
                .filter(|c| c.holders.as_ref().is_some_and(|v| v.contains(&pid)))
                .map(|c| c.key)
                .collect();
            tracing::debug!(pid, conns = keys.len(), "holder process exited");
            for k in keys {
                self.drop_holder(k, pid);
            }
        }
        // Stop watching processes that hold nothing any more.
        let held: std::collections::HashSet<u32> = self
            .conns
            .values()
            .filter_map(|c| c.holders.as_ref())
            .flatten()
            .copied()
            .collect();
        self.share.pidfds.retain(|pid, _| held.contains(pid));
        gone.len()
    }
}
