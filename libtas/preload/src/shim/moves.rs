//! Moving a connection to the context of the thread that uses it (decisions §29).
//!
//! A connection lives on one thread's context; another thread that uses it takes that
//! context's lock (the forwarding path, §20). When one foreign thread makes
//! [`move_after`] data calls (`recv`/`send` and their relatives) on a connection in a row,
//! with no call of the owning thread in between, the connection moves to the caller's
//! context: tasd moves the flow with its unread and unacknowledged bytes (`Adopt`, the
//! `MoveFlow` of §26), and the socket's descriptor, epoll registrations and options stay
//! as they are. Each move (or failed attempt) doubles the socket's threshold, so threads
//! that share a socket in bursts move it rarely; strictly alternating use never moves it.
//!
//! Races: the mover holds the socket's state lock for the whole move (other calls on the
//! socket wait for it) and bumps the socket's move version before it flushes the old
//! context's doorbells (under that context's lock): a call that found the connection
//! before checks the version under the context lock and looks again, so nothing reads or
//! writes the old slot after the flush. Threads asleep on the old context are woken
//! (`kick`) after the move; sleepers re-check the version (or the process-wide move
//! epoch, for poll/select/epoll) after announcing their sleep, so the wake-up is not lost.

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libtas::{Adoption, ConnId, ConnState};

use super::{lock, sys, thread_ctx, Kind, Proc, Sock, FORK_GEN};
use crate::sys::SysResult;

/// Default of `TAS_PRELOAD_MOVE_AFTER`: data calls in a row by one foreign thread before
/// the connection moves to it. Four lets a connection that serves one request on its
/// worker (read, write, read → EAGAIN, close) stay where it was accepted — a move costs a
/// round trip through tasd's slow path — and moves a connection that serves a second one.
const DEFAULT_MOVE_AFTER: u64 = 4;
/// The doubling threshold stops here (a socket threads keep sharing still moves, rarely).
const MOVE_AFTER_MAX: u64 = 1 << 20;

/// `TAS_PRELOAD_MOVE_AFTER` (0: connections never move between threads), read once.
pub(super) fn move_after() -> u64 {
    static V: AtomicU64 = AtomicU64::new(u64::MAX);
    let mut v = V.load(Ordering::Relaxed);
    if v == u64::MAX {
        v = std::env::var("TAS_PRELOAD_MOVE_AFTER")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(DEFAULT_MOVE_AFTER);
        V.store(v, Ordering::Relaxed);
    }
    v
}

/// `TAS_PRELOAD_DEBUG` is set: a line on stderr per move, statistics at exit.
fn debug() -> bool {
    static V: AtomicU64 = AtomicU64::new(u64::MAX);
    let mut v = V.load(Ordering::Relaxed);
    if v == u64::MAX {
        v = u64::from(std::env::var_os("TAS_PRELOAD_DEBUG").is_some());
        V.store(v, Ordering::Relaxed);
    }
    v == 1
}

static NEXT_THREAD: AtomicU64 = AtomicU64::new(1);
thread_local! {
    static TOKEN: Cell<u64> = const { Cell::new(0) };
}

/// This thread's number (never 0; 0 while the thread's locals are being destroyed).
pub(super) fn thread_token() -> u64 {
    TOKEN
        .try_with(|t| {
            if t.get() == 0 {
                t.set(NEXT_THREAD.fetch_add(1, Ordering::Relaxed));
            }
            t.get()
        })
        .unwrap_or(0)
}

/// Bumped by every completed move: poll/select/epoll calls that grouped their sockets by
/// context group them again (one atomic load per scan).
pub(super) static EPOCH: AtomicU64 = AtomicU64::new(0);
static MOVED: AtomicU64 = AtomicU64::new(0);
static MOVE_FAILED: AtomicU64 = AtomicU64::new(0);
/// Times a thread found a context's lock taken (and contexts whose lock ever was).
pub(super) static LOCK_WAITS: AtomicU64 = AtomicU64::new(0);
pub(super) static CONTENDED_CTXS: AtomicU64 = AtomicU64::new(0);

/// Connections this process moved between its threads' contexts, and attempts that did
/// not move (the connection was closing, a queue was full, tasd refused).
pub fn moves() -> (u64, u64) {
    (
        MOVED.load(Ordering::Relaxed),
        MOVE_FAILED.load(Ordering::Relaxed),
    )
}

extern "C" fn print_stats() {
    let (moved, failed) = moves();
    sys::warn(&format!(
        "libtas_preload: pid {}: {} contexts attached, {} connections moved between threads ({} attempts did not move), {} waits for a context lock held by another thread ({} contexts contended)\n",
        std::process::id(),
        super::contexts_attached(),
        moved,
        failed,
        LOCK_WAITS.load(Ordering::Relaxed),
        CONTENDED_CTXS.load(Ordering::Relaxed),
    ));
}

/// At the first context of a process: print the statistics at exit if asked to.
pub(super) fn on_attach() {
    static ONCE: AtomicU64 = AtomicU64::new(0);
    if debug() && ONCE.swap(1, Ordering::Relaxed) == 0 {
        sys::register_atexit(print_stats);
    }
}

/// A socket's move state.
#[derive(Debug)]
pub(super) struct Moves {
    /// Incremented when a move starts and when it ends: odd while moving.
    ver: AtomicU64,
    /// `thread << 24 | count`: the foreign thread that used the connection last and its
    /// data calls in a row.
    streak: AtomicU64,
    /// The token of the thread whose context the socket lives on.
    owner: AtomicU64,
    /// The current threshold (0: never move).
    after: AtomicU64,
    /// Bytes received and transmit credit granted on earlier contexts: added to the
    /// current context's counts, so edge-triggered epoll and TCP_INFO see one connection.
    rx_off: AtomicU64,
    tx_off: AtomicU64,
}

impl Moves {
    pub(super) fn new(owner: u64) -> Moves {
        Moves {
            ver: AtomicU64::new(0),
            streak: AtomicU64::new(0),
            owner: AtomicU64::new(owner),
            after: AtomicU64::new(move_after()),
            rx_off: AtomicU64::new(0),
            tx_off: AtomicU64::new(0),
        }
    }

    /// The move version (even when no move is in progress).
    pub(super) fn ver(&self) -> u64 {
        self.ver.load(Ordering::SeqCst)
    }

    /// (received, transmit) offsets of earlier contexts; read them under the socket's lock.
    pub(super) fn offsets(&self) -> (u64, u64) {
        (
            self.rx_off.load(Ordering::Relaxed),
            self.tx_off.load(Ordering::Relaxed),
        )
    }
}

/// A data call of this thread on `s`: count it, and move the connection here when one
/// foreign thread made the socket's threshold of calls in a row.
pub(super) fn note_use(s: &Sock) {
    let after = s.mv.after.load(Ordering::Relaxed);
    let cur = s.mv.streak.load(Ordering::Relaxed);
    let owner = s.mv.owner.load(Ordering::Relaxed);
    let (streak, next) = decide(cur, owner, thread_token(), after);
    if streak != cur {
        s.mv.streak.store(streak, Ordering::Relaxed);
    }
    if let Some(next) = next {
        s.mv.after.store(next, Ordering::Relaxed);
        move_here(s);
    }
}

/// The policy, on plain values: thread `me` makes a data call on a socket whose context
/// belongs to thread `owner`, with run state `streak` (`thread << 24 | count`) and
/// threshold `after` (0: never move). Returns the new run state and, if the connection
/// should move to `me` now, the socket's next threshold.
fn decide(streak: u64, owner: u64, me: u64, after: u64) -> (u64, Option<u64>) {
    if after == 0 || me == 0 {
        return (streak, None);
    }
    if me == owner {
        return (0, None); // the owner's call ends any foreign run
    }
    let n = if streak >> 24 == me {
        (streak & 0xff_ffff) + 1
    } else {
        1
    };
    if n < after {
        return (me << 24 | n, None);
    }
    (0, Some((after * 2).min(MOVE_AFTER_MAX)))
}

/// Move connection socket `s` into the calling thread's context (attached now if the
/// thread has none). Nothing changes if it cannot move.
fn move_here(s: &Sock) {
    let Ok(p) = thread_ctx() else { return };
    let mut st = lock(&s.st);
    if st.gen != FORK_GEN.load(Ordering::SeqCst) || st.shared {
        return; // another process may hold it: §26's adopt moves it between processes
    }
    let Kind::Conn(c) = st.kind else { return };
    let (Some(peer), Some(local)) = (st.peer, st.local) else {
        return;
    };
    let old = s.proc();
    if Arc::ptr_eq(&old, &p) || old.gen != p.gen {
        s.mv.owner.store(p.thread, Ordering::Relaxed);
        return;
    }
    s.mv.ver.fetch_add(1, Ordering::SeqCst); // odd: calls that found `c` before let it be
    let t0 = std::time::Instant::now();
    let r = transfer(&old, &p, c, peer, local.port());
    let took = t0.elapsed();
    if let Ok((conn, read, written)) = r {
        *lock(&s.home) = p.clone();
        st.kind = Kind::Conn(conn);
        s.mv.owner.store(p.thread, Ordering::Relaxed);
        s.mv.rx_off.fetch_add(read, Ordering::Relaxed);
        s.mv.tx_off.fetch_add(written, Ordering::Relaxed);
        EPOCH.fetch_add(1, Ordering::SeqCst);
        MOVED.fetch_add(1, Ordering::Relaxed);
    } else {
        MOVE_FAILED.fetch_add(1, Ordering::Relaxed);
    }
    s.mv.ver.fetch_add(1, Ordering::SeqCst);
    drop(st);
    // Threads asleep on the old context for this socket look again (and find it here).
    old.lock().ctx.kick();
    if debug() {
        let what = match r {
            Ok(_) => "moved to".to_owned(),
            Err(why) => format!("did not move ({why}) to"),
        };
        sys::warn(&format!(
            "libtas_preload: pid {}: connection {}:{} <-> {} {what} the context of thread {} in {} us (next move after {} calls)\n",
            std::process::id(),
            local.ip(),
            local.port(),
            peer,
            p.thread,
            took.as_micros(),
            s.mv.after.load(Ordering::Relaxed),
        ));
    }
}

/// Flush `c` on `old`, have tasd move it to `new`, and let the old entry go. Returns the
/// new handle, the bytes the application read on `old` (the new context counts from the
/// first unread byte) and the bytes written on `old` minus those the new context starts
/// with (the ones still unacknowledged).
fn transfer(
    old: &Arc<Proc>,
    new: &Arc<Proc>,
    c: ConnId,
    peer: std::net::SocketAddrV4,
    lport: u16,
) -> Result<(ConnId, u64, u64), &'static str> {
    let (read, written) = {
        let mut g = old.lock();
        g.ctx.poll();
        if g.ctx.state(c) != ConnState::Established {
            return Err("not established");
        }
        if !g.ctx.quiesce(c) {
            return Err("doorbells pending");
        }
        (
            g.ctx.rx_total(c) - g.ctx.readable(c) as u64,
            g.ctx.tx_acked(c) + u64::from(g.ctx.tx_outstanding(c)),
        )
    };
    let token = new
        .lock()
        .ctx
        .adopt_start(peer, lport)
        .map_err(|_| "no request")?;
    let r: SysResult<Result<Adoption, libtas::Error>> =
        new.block(false, |ctx| match ctx.adopt_result(token) {
            Ok(None) => None,
            Ok(Some(a)) => Some(Ok(Ok(a))),
            Err(err) => Some(Ok(Err(err))),
        });
    let conn = match r {
        Ok(Ok(Adoption::Here { conn, .. })) => conn,
        Ok(Ok(Adoption::NotLast)) => return Err("unexpected answer"),
        Ok(Err(_)) => return Err("refused by tasd"),
        Err(_) => return Err("service gone"),
    };
    let now = {
        let g = new.lock();
        g.ctx.tx_acked(conn) + u64::from(g.ctx.tx_outstanding(conn))
    };
    {
        // tasd posted `Closed` (Moved) to the old context before `Adopted` to the new one:
        // the entry is usually closed already; otherwise it is freed when that comes.
        let mut g = old.lock();
        g.ctx.poll();
        let _ = g.ctx.forget(c);
    }
    Ok((conn, read, written.saturating_sub(now)))
}

#[cfg(test)]
mod tests {
    use super::decide;

    /// Runs `calls` (thread tokens in order) through the policy, moving the socket to the
    /// caller whenever it says so; returns the moves (thread it moved to) in order.
    fn run(calls: &[u64], owner: u64, after: u64) -> Vec<u64> {
        let (mut streak, mut owner, mut after) = (0, owner, after);
        let mut moves = Vec::new();
        for &me in calls {
            let (s, next) = decide(streak, owner, me, after);
            streak = s;
            if let Some(next) = next {
                after = next;
                owner = me;
                moves.push(me);
            }
        }
        moves
    }

    #[test]
    fn a_worker_that_keeps_using_a_connection_gets_it_after_four_calls() {
        assert_eq!(run(&[2, 2, 2], 1, 4), Vec::<u64>::new());
        assert_eq!(run(&[2, 2, 2, 2], 1, 4), vec![2]);
        // Once it is the worker's, its calls never move it again.
        assert_eq!(run(&[2; 1000], 1, 4), vec![2]);
    }

    #[test]
    fn alternating_threads_never_move_it() {
        let calls: Vec<u64> = (0..10_000)
            .map(|i| if i % 2 == 0 { 1 } else { 2 })
            .collect();
        assert!(run(&calls, 1, 4).is_empty());
        // Three threads in turn, none of them the owner: no run reaches 4.
        let calls: Vec<u64> = (0..10_000).map(|i| 2 + i % 3).collect();
        assert!(run(&calls, 1, 4).is_empty());
    }

    #[test]
    fn bursts_move_it_a_logarithmic_number_of_times() {
        // Two threads take turns making bursts of six calls: the first burst of the
        // foreign thread moves it (threshold 4 -> 8), later bursts of six never do.
        let calls: Vec<u64> = (0..200)
            .flat_map(|r| std::iter::repeat_n(1 + r % 2, 6))
            .collect();
        assert_eq!(run(&calls, 1, 4), vec![2]);
        // Bursts that grow: each move doubles the run needed for the next.
        let mut calls = Vec::new();
        for r in 0..40u64 {
            calls.extend(std::iter::repeat_n(1 + r % 2, 10 * (r as usize + 1)));
        }
        let moves = run(&calls, 1, 4);
        assert!(moves.len() <= 9, "{} moves", moves.len());
        assert!(moves.len() >= 4);
    }

    #[test]
    fn zero_never_moves_and_the_threshold_is_capped() {
        assert!(run(&[2; 100], 1, 0).is_empty());
        assert_eq!(decide(0, 1, 2, 1 << 20), (2 << 24 | 1, None));
        assert_eq!(
            decide(2 << 24 | ((1 << 20) - 1), 1, 2, 1 << 20),
            (0, Some(1 << 20))
        );
        // An exiting thread (token 0) changes nothing.
        assert_eq!(decide(5, 1, 0, 4), (5, None));
    }
}
