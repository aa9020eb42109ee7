//! Per-request completion records: where the daemon reports each outcome.
//!
//! A requester owns a record, arms it (PENDING + its ticket), names its index in a request,
//! and waits for DONE. Host requesters that wait long sleep on the state word (a futex on
//! Linux) after marking it SLEEPING; GPU requesters poll. The layout is
//! [`abi::WfsCompletion`].
//!
//! Requests come from untrusted requesters, so one (index, ticket) may be completed twice, and
//! a record may be withdrawn or re-armed while a stale completer still runs. A completer
//! therefore *claims* the record before writing anything: one CAS PENDING → CLAIMED, then
//! the ticket check (the claim acquired the arming, so it sees that arming's ticket), then
//! `result` and `aux`, then DONE with Release. A completer that loses the claim, or finds
//! another ticket (it puts PENDING back), writes nothing. Only the claim's owner leaves
//! CLAIMED; requesters wait it out: `arm`, `poll` and `withdraw` never store over it.

use crate::abi::{
    self, WFS_COMP_CLAIMED, WFS_COMP_DONE, WFS_COMP_FREE, WFS_COMP_PENDING, WFS_COMP_SLEEPING,
};
use crate::sync::{spin_hint, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a waiter spins on its record before it starts yielding the CPU.
#[cfg(not(loom))]
const SPIN_FOR: Duration = Duration::from_micros(20);

#[cfg(not(loom))]
use crate::region::SharedMemory;

/// In-memory form of [`abi::WfsCompletion`].
#[repr(C)]
struct Cell {
    state: AtomicU32,
    ticket: AtomicU32,
    result: AtomicI64,
    aux: AtomicU64,
    _reserved: u64,
}

enum Backing {
    Owned(#[allow(dead_code)] Box<[Cell]>),
    #[cfg(not(loom))]
    Region(#[allow(dead_code)] Arc<dyn SharedMemory>),
}

/// A table of completion records.
pub struct Completions {
    cells: NonNull<Cell>,
    len: usize,
    _backing: Backing,
}

// SAFETY: every field of a cell is atomic (or never touched); the table is immutable otherwise.
unsafe impl Send for Completions {}
// SAFETY: see `Send`.
unsafe impl Sync for Completions {}

impl std::fmt::Debug for Completions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Completions")
            .field("len", &self.len)
            .finish()
    }
}

/// Why [`Completions::complete`] refused to write a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CompleteError {
    /// The index names no record.
    OutOfRange,
    /// The record is not pending for this ticket (stale, duplicate or garbage request).
    NotPending,
}

impl Completions {
    /// Bytes a table of `len` records occupies in a region.
    pub const fn bytes_for(len: usize) -> usize {
        len * core::mem::size_of::<abi::WfsCompletion>()
    }

    /// A table in owned heap memory.
    pub fn with_len(len: usize) -> Self {
        let cells: Box<[Cell]> = (0..len.max(1)).map(|_| Cell::new()).collect();
        let ptr = NonNull::new(cells.as_ptr() as *mut Cell).expect("non-null");
        Self {
            cells: ptr,
            len: len.max(1),
            _backing: Backing::Owned(cells),
        }
    }

    /// Formats `len` records at byte `offset` (8-aligned) of `region`; `None` if they don't fit.
    #[cfg(not(loom))]
    pub fn in_region(region: Arc<dyn SharedMemory>, offset: usize, len: usize) -> Option<Self> {
        if !offset.is_multiple_of(8) || len == 0 {
            return None;
        }
        let end = offset.checked_add(Self::bytes_for(len))?;
        if end > region.len() {
            return None;
        }
        // SAFETY: [offset, end) is inside the region (valid for its lifetime, which the Arc we
        // keep guarantees) and 8-aligned, as Cell requires.
        unsafe {
            let cells = region.as_ptr().add(offset) as *mut Cell;
            for i in 0..len {
                cells.add(i).write(Cell::new());
            }
            Some(Self {
                cells: NonNull::new_unchecked(cells),
                len,
                _backing: Backing::Region(region),
            })
        }
    }

    /// Under loom the table is heap-owned and the region ignored (see `Ring::in_region`).
    #[cfg(loom)]
    pub fn in_region(
        region: Arc<dyn crate::region::SharedMemory>,
        offset: usize,
        len: usize,
    ) -> Option<Self> {
        let _ = (region, offset);
        (len > 0).then(|| Self::with_len(len))
    }

    /// Number of records.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the table has no records (never true: tables hold at least one).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn cell(&self, idx: u32) -> Option<&Cell> {
        if (idx as usize) < self.len {
            // SAFETY: idx < len and the cells live as long as `self`.
            Some(unsafe { &*self.cells.as_ptr().add(idx as usize) })
        } else {
            None
        }
    }

    /// A racy look at record `idx` for diagnostics: `(state, ticket)` (the state may be the
    /// transient CLAIMED), `None` if out of range. One pair of loads.
    pub fn peek(&self, idx: u32) -> Option<(u32, u32)> {
        let c = self.cell(idx)?;
        Some((
            c.state.load(Ordering::Acquire),
            c.ticket.load(Ordering::Relaxed),
        ))
    }

    /// Whether record `idx` is FREE: its requester consumed the last answer (a device stores
    /// FREE with Release after it is done with the answer's bytes; this load acquires it).
    /// False if out of range.
    pub fn consumed(&self, idx: u32) -> bool {
        self.cell(idx)
            .is_some_and(|c| c.state.load(Ordering::Acquire) == WFS_COMP_FREE)
    }

    /// Requester: marks record `idx` pending for `ticket`. Call before publishing the request
    /// (the ring's Release publish orders this store before the daemon's read). A record
    /// still pending from an earlier arming (e.g. a request never published) is taken back
    /// first, and a completer's claim is waited out, so no earlier completion lands in this
    /// arming. One load (plus one CAS unless the record is free).
    ///
    /// # Panics
    /// If `idx` is out of range (requesters own their indices; this is a caller bug).
    pub fn arm(&self, idx: u32, ticket: u32) {
        let c = self.cell(idx).expect("completion index out of range");
        // Take the record back (a DONE result is dropped, a claim is waited out): once FREE,
        // which only this requester leaves, no completer can claim it.
        let _ = self.withdraw(idx);
        c.ticket.store(ticket, Ordering::Relaxed);
        c.result.store(0, Ordering::Relaxed);
        c.aux.store(0, Ordering::Relaxed);
        c.state.store(WFS_COMP_PENDING, Ordering::Release);
    }

    /// Daemon: delivers `result` to record `idx` if it is pending for `ticket`, waking a
    /// sleeping host requester. Validates everything; never panics.
    pub fn complete(&self, idx: u32, ticket: u32, result: i64) -> Result<(), CompleteError> {
        self.complete_aux(idx, ticket, result, 0)
    }

    /// Like [`Completions::complete`], and also delivers `aux` (published with `result`: a
    /// requester that saw DONE reads both). `aux` is op-specific; see `daemon` for the host
    /// agents' cache-page references. Claims the record first (see the module docs): of
    /// several completers of one record exactly one delivers, and on `Err` nothing was
    /// written. Two loads, one or two CASes and a swap; never waits.
    pub fn complete_aux(
        &self,
        idx: u32,
        ticket: u32,
        result: i64,
        aux: u64,
    ) -> Result<(), CompleteError> {
        let c = self.cell(idx).ok_or(CompleteError::OutOfRange)?;
        let mut state = c.state.load(Ordering::Relaxed);
        loop {
            // The ticket test here only spares the record garbage's claims: it may read an
            // older arming's ticket. The test that counts follows the claim.
            if state & !WFS_COMP_SLEEPING != WFS_COMP_PENDING
                || c.ticket.load(Ordering::Relaxed) != ticket
            {
                return Err(CompleteError::NotPending);
            }
            // Acquire: the claim reads the arming's Release store (or an RMW after it), so
            // the ticket load below sees that arming's ticket. A sleeper's bit is kept.
            match c.state.compare_exchange_weak(
                state,
                WFS_COMP_CLAIMED | (state & WFS_COMP_SLEEPING),
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(s) => state = s,
            }
        }
        // Claimed: until we leave CLAIMED nobody else writes the record (completers need
        // PENDING; requesters wait), so its ticket cannot change under us.
        if c.ticket.load(Ordering::Relaxed) != ticket {
            // Another arming: hand it back untouched (keeping a sleeper's bit). An RMW, so the
            // arming's release sequence goes on for the next claim.
            let _ = c
                .state
                .fetch_update(Ordering::Release, Ordering::Relaxed, |s| {
                    Some(WFS_COMP_PENDING | (s & WFS_COMP_SLEEPING))
                });
            return Err(CompleteError::NotPending);
        }
        c.result.store(result, Ordering::Relaxed);
        c.aux.store(aux, Ordering::Relaxed);
        // Release: a requester that reads DONE (Acquire) reads this result and aux.
        let claimed = c.state.swap(WFS_COMP_DONE, Ordering::Release);
        if claimed & WFS_COMP_SLEEPING != 0 {
            futex_wake(&c.state);
        }
        Ok(())
    }

    /// Requester: the result if record `idx` is done (the record is then free again).
    pub fn poll(&self, idx: u32) -> Option<i64> {
        self.poll_aux(idx).map(|(r, _)| r)
    }

    /// Requester: `(result, aux)` if record `idx` is done (the record is then free again).
    /// `None` while it is pending or claimed by a completer. One load (and a store if done).
    pub fn poll_aux(&self, idx: u32) -> Option<(i64, u64)> {
        let c = self.cell(idx)?;
        if c.state.load(Ordering::Acquire) == WFS_COMP_DONE {
            let r = c.result.load(Ordering::Relaxed);
            let aux = c.aux.load(Ordering::Relaxed);
            c.state.store(WFS_COMP_FREE, Ordering::Relaxed);
            Some((r, aux))
        } else {
            None
        }
    }

    /// Requester: waits for record `idx` (spin, then sleep on the state word). Returns `None`
    /// if `timeout` passes first; the record then stays pending.
    pub fn wait(&self, idx: u32, timeout: Option<Duration>) -> Option<i64> {
        self.wait_aux(idx, timeout).map(|(r, _)| r)
    }

    /// Like [`Completions::wait`], returning `(result, aux)`.
    pub fn wait_aux(&self, idx: u32, timeout: Option<Duration>) -> Option<(i64, u64)> {
        match self.wait_or_withdraw(idx, timeout, || false) {
            Waited::Done(r, aux) => Some((r, aux)),
            Waited::Withdrawn | Waited::TimedOut => None,
        }
    }

    /// Requester: like [`Completions::wait_aux`], but once `completer_gone()` says that no
    /// completer will ever write this record again (the daemon has stopped and made its final
    /// drain), the record is [withdrawn](Completions::withdraw) instead of waited on until
    /// `timeout`. `completer_gone` is called once per sleep slice (≤ 50 ms apart) after a
    /// short spin, so a wait ends at most one slice after the completer is gone.
    pub fn wait_or_withdraw(
        &self,
        idx: u32,
        timeout: Option<Duration>,
        completer_gone: impl Fn() -> bool,
    ) -> Waited {
        // Spin for up to SPIN_FOR (a daemon on another core answers within a few µs, and a
        // yield costs a system call each time), then yield (lets a daemon worker on this core
        // run), then sleep. (Under loom every spin is a scheduling point: one of each keeps the
        // models small.)
        #[cfg(not(loom))]
        {
            let start = Instant::now();
            loop {
                for _ in 0..64 {
                    if let Some((r, aux)) = self.poll_aux(idx) {
                        return Waited::Done(r, aux);
                    }
                    spin_hint();
                }
                if start.elapsed() >= SPIN_FOR {
                    break;
                }
            }
        }
        let (spins, yields) = if cfg!(loom) { (1, 1) } else { (0, 256) };
        let mut round = 0;
        for _ in 0..(spins + yields) {
            if let Some((r, aux)) = self.poll_aux(idx) {
                return Waited::Done(r, aux);
            }
            backoff(&mut round, spins);
        }
        let Some(c) = self.cell(idx) else {
            return Waited::TimedOut;
        };
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some((r, aux)) = self.poll_aux(idx) {
                return Waited::Done(r, aux);
            }
            if completer_gone() {
                return match self.withdraw(idx) {
                    Some((r, aux)) => Waited::Done(r, aux),
                    None => Waited::Withdrawn,
                };
            }
            let slice = match deadline {
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Waited::TimedOut;
                    }
                    (d - now).min(Duration::from_millis(50))
                }
                None => Duration::from_millis(50),
            };
            // Sleep while pending, or while a completer holds its claim (it may be preempted
            // between claim and DONE; its swap to DONE sees the bit and wakes us).
            let s = c.state.load(Ordering::Acquire);
            if matches!(s & !WFS_COMP_SLEEPING, WFS_COMP_PENDING | WFS_COMP_CLAIMED) {
                let sleeping = s | WFS_COMP_SLEEPING;
                if s == sleeping
                    || c.state
                        .compare_exchange(s, sleeping, Ordering::AcqRel, Ordering::Acquire)
                        .is_ok()
                {
                    futex_wait(&c.state, sleeping, slice);
                }
            }
        }
    }

    /// Requester, once it knows that no completer will write record `idx` again (e.g. the
    /// daemon stopped after its final drain, so a request still in a ring is never taken):
    /// takes the record back. Returns `(result, aux)` if it was completed after all (the
    /// record is then free, as after [`Completions::poll_aux`]); `None` if it was still
    /// pending, now free with nothing delivered. Against a concurrent
    /// [`Completions::complete_aux`] the claim decides: a completer that claimed the record
    /// first delivers (a claim in progress is waited out), else the withdrawal takes it and
    /// the completer writes nothing — the record may be re-armed at once. One load and one
    /// CAS (more only while a completer holds its claim).
    pub fn withdraw(&self, idx: u32) -> Option<(i64, u64)> {
        let c = self.cell(idx)?;
        let mut state = c.state.load(Ordering::Acquire);
        let mut round = 0;
        loop {
            if state == WFS_COMP_DONE {
                return self.poll_aux(idx);
            }
            if state & !WFS_COMP_SLEEPING == WFS_COMP_CLAIMED {
                backoff(&mut round, CLAIM_SPINS);
                state = c.state.load(Ordering::Acquire);
                continue;
            }
            if state & !WFS_COMP_SLEEPING != WFS_COMP_PENDING {
                return None;
            }
            match c.state.compare_exchange(
                state,
                WFS_COMP_FREE,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => return None,
                Err(s) => state = s,
            }
        }
    }
}

/// How [`Completions::wait_or_withdraw`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// The record was completed with `(result, aux)`; it is free again.
    Done(i64, u64),
    /// The completer was gone and had not completed the record: it was withdrawn (free again,
    /// nothing delivered).
    Withdrawn,
    /// The timeout passed first; the record stays pending.
    TimedOut,
}

impl Completions {
    /// Test-only: every word of record `idx` as `(state, ticket, result, aux)`.
    #[cfg(test)]
    fn words(&self, idx: u32) -> (u32, u32, i64, u64) {
        let c = self.cell(idx).expect("index in range");
        (
            c.state.load(Ordering::Acquire),
            c.ticket.load(Ordering::Relaxed),
            c.result.load(Ordering::Relaxed),
            c.aux.load(Ordering::Relaxed),
        )
    }
}

impl Cell {
    fn new() -> Self {
        Self {
            state: AtomicU32::new(WFS_COMP_FREE),
            ticket: AtomicU32::new(0),
            result: AtomicI64::new(0),
            aux: AtomicU64::new(0),
            _reserved: 0,
        }
    }
}

/// Spins before a wait for a claimed record yields the core.
const CLAIM_SPINS: u32 = 64;

/// One step of a short wait (for a completer to leave CLAIMED — a few stores away, unless it
/// was preempted — or for a record to be answered): the first `spins` calls spin, later ones
/// yield the core.
fn backoff(round: &mut u32, spins: u32) {
    *round = round.saturating_add(1);
    if *round <= spins {
        spin_hint();
    } else {
        #[cfg(not(loom))]
        std::thread::yield_now();
        #[cfg(loom)]
        loom::thread::yield_now();
    }
}

/// Sleeps on a completion word (futex on Linux); under loom, yields.
#[cfg(not(loom))]
fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    crate::futex::wait(word, expected, timeout);
}

/// Wakes sleepers on a completion word.
#[cfg(not(loom))]
fn futex_wake(word: &AtomicU32) {
    crate::futex::wake(word);
}

#[cfg(loom)]
fn futex_wait(_word: &AtomicU32, _expected: u32, _timeout: Duration) {
    loom::thread::yield_now();
}

#[cfg(loom)]
fn futex_wake(_word: &AtomicU32) {}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use core::mem::{offset_of, size_of};

    #[test]
    fn peek_follows_a_record_through_arm_and_complete() {
        let c = Completions::with_len(4);
        assert_eq!(c.peek(3), Some((WFS_COMP_FREE, 0)));
        c.arm(3, 77);
        assert_eq!(c.peek(3), Some((WFS_COMP_PENDING, 77)));
        c.complete(3, 77, 5).unwrap();
        assert_eq!(c.peek(3), Some((WFS_COMP_DONE, 77)));
        assert_eq!(c.peek(4), None);
    }

    #[test]
    fn layout_matches_the_wire_format() {
        assert_eq!(size_of::<Cell>(), size_of::<abi::WfsCompletion>());
        assert_eq!(
            offset_of!(Cell, result),
            offset_of!(abi::WfsCompletion, result)
        );
        assert_eq!(
            offset_of!(Cell, ticket),
            offset_of!(abi::WfsCompletion, ticket)
        );
    }

    #[test]
    fn only_the_pending_ticket_completes() {
        let t = Completions::with_len(4);
        assert_eq!(t.complete(9, 1, 5), Err(CompleteError::OutOfRange));
        assert_eq!(t.complete(0, 1, 5), Err(CompleteError::NotPending));
        t.arm(0, 7);
        assert_eq!(t.complete(0, 8, 5), Err(CompleteError::NotPending));
        assert_eq!(t.poll(0), None);
        t.complete(0, 7, 42).unwrap();
        assert_eq!(t.complete(0, 7, 43), Err(CompleteError::NotPending));
        assert_eq!(t.poll(0), Some(42));
        assert_eq!(t.poll(0), None);
    }

    #[test]
    fn a_stale_ticket_leaves_a_new_arming_untouched() {
        let t = Completions::with_len(1);
        t.arm(0, 1);
        t.arm(0, 2);
        assert_eq!(t.complete_aux(0, 1, 5, 6), Err(CompleteError::NotPending));
        assert_eq!(t.words(0), (WFS_COMP_PENDING, 2, 0, 0));
        t.complete_aux(0, 2, 7, 8).unwrap();
        assert_eq!(t.complete_aux(0, 2, 9, 9), Err(CompleteError::NotPending));
        t.arm(0, 3); // a done record not yet read is taken back: its result is dropped
        assert_eq!(t.words(0), (WFS_COMP_PENDING, 3, 0, 0));
        assert_eq!(t.withdraw(0), None);
        assert_eq!(t.complete(0, 3, 1), Err(CompleteError::NotPending));
        assert_eq!(t.words(0), (WFS_COMP_FREE, 3, 0, 0));
    }

    #[test]
    fn sleeping_waiter_is_woken() {
        let t = Arc::new(Completions::with_len(1));
        t.arm(0, 1);
        let t2 = t.clone();
        let h = std::thread::spawn(move || t2.wait(0, Some(Duration::from_secs(10))));
        std::thread::sleep(Duration::from_millis(20));
        t.complete(0, 1, -5).unwrap();
        assert_eq!(h.join().unwrap(), Some(-5));
    }

    #[test]
    fn wait_times_out_instead_of_hanging() {
        let t = Completions::with_len(1);
        t.arm(0, 1);
        assert_eq!(t.wait(0, Some(Duration::from_millis(5))), None);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    /// One record armed for ticket 1, and a daemon thread completing it with (7, 9); the thread
    /// returns whether its completion took.
    fn armed_with_a_completer() -> (Arc<Completions>, thread::JoinHandle<bool>) {
        let t = Arc::new(Completions::with_len(1));
        t.arm(0, 1);
        let t2 = t.clone();
        (
            t,
            thread::spawn(move || t2.complete_aux(0, 1, 7, 9).is_ok()),
        )
    }

    /// A completion's result and aux word are published together: a requester that sees the
    /// record done reads both as written, and re-arming clears aux for the next request.
    #[test]
    fn result_and_aux_arrive_together() {
        loom::model(|| {
            let (t, daemon) = armed_with_a_completer();
            let mut got = None;
            for _ in 0..3 {
                if let Some(r) = t.poll_aux(0) {
                    got = Some(r);
                    break;
                }
                thread::yield_now();
            }
            assert!(daemon.join().unwrap());
            let got = got.or_else(|| t.poll_aux(0));
            assert_eq!(got, Some((7, 9)));
            t.arm(0, 2);
            t.complete(0, 2, 1).unwrap();
            assert_eq!(t.poll_aux(0), Some((1, 0)));
        });
    }

    /// Post versus shutdown (ROBUSTNESS finding 5): an agent arms its record and pushes its
    /// request, perhaps only after the daemon's final drain; the daemon serves one round,
    /// makes its final drain (`fail_pending`) and then reports itself stopped. The agent's
    /// wait ends in every interleaving, with the daemon's answer if the daemon took the
    /// request, else withdrawn; never both, and the record ends free.
    #[test]
    fn a_request_pushed_after_the_final_drain_is_withdrawn() {
        use crate::abi::WfsRequest;
        use crate::ring::{Popped, Ring};
        use loom::sync::atomic::AtomicBool;
        const ESHUTDOWN: i64 = -(libc::ESHUTDOWN as i64);
        loom::model(|| {
            let ring = Arc::new(Ring::with_capacity(2));
            let table = Arc::new(Completions::with_len(1));
            let stopped = Arc::new(AtomicBool::new(false));
            let (r2, t2, s2) = (ring.clone(), table.clone(), stopped.clone());
            let daemon = thread::spawn(move || {
                let mut answered = None;
                // A worker's round, then the final drain (ESHUTDOWN), then `stopped`.
                for result in [7, ESHUTDOWN] {
                    while let Some(p) = r2.try_pop() {
                        let Popped::Request(q) = p else {
                            panic!("corrupt slot")
                        };
                        if t2.complete(q.completion, q.ticket, result).is_ok() {
                            assert!(answered.replace(result).is_none(), "answered twice");
                        }
                    }
                }
                s2.store(true, Ordering::Release);
                answered
            });
            table.arm(0, 1);
            let req = WfsRequest {
                completion: 0,
                ticket: 1,
                ..Default::default()
            };
            ring.try_push(&req).unwrap();
            let got = table.wait_or_withdraw(0, None, || stopped.load(Ordering::Acquire));
            match daemon.join().unwrap() {
                Some(r) => assert_eq!(got, Waited::Done(r, 0)),
                None => assert_eq!(got, Waited::Withdrawn),
            }
            assert_eq!(table.peek(0).map(|(s, _)| s), Some(WFS_COMP_FREE));
        });
    }

    /// Two completers race for one record (a duplicated request: same index and ticket): one
    /// wins, and the requester reads exactly the winner's `(result, aux)`, then re-arms the
    /// record for its next request. The loser writes nothing, not into this arming and not
    /// into the next: after both are done the new arming is untouched (pending, its ticket,
    /// result and aux as `arm` left them).
    #[test]
    fn of_two_completers_only_the_winner_writes() {
        loom::model(|| {
            let t = Arc::new(Completions::with_len(1));
            t.arm(0, 1);
            let completer = |result: i64, aux: u64| {
                let t = t.clone();
                thread::spawn(move || t.complete_aux(0, 1, result, aux).is_ok())
            };
            let a = completer(7, 70);
            let b = completer(8, 80);
            let got = loop {
                if let Some(r) = t.poll_aux(0) {
                    break r;
                }
                thread::yield_now();
            };
            t.arm(0, 2);
            let (a, b) = (a.join().unwrap(), b.join().unwrap());
            assert!(a != b, "exactly one completer wins (a {a}, b {b})");
            assert_eq!(
                got,
                if a { (7, 70) } else { (8, 80) },
                "the winner's result"
            );
            assert_eq!(
                t.words(0),
                (WFS_COMP_PENDING, 2, 0, 0),
                "the new arming is untouched"
            );
        });
    }

    /// A completion racing a withdrawal (as at shutdown), then a re-arming for a new request
    /// while the completer may still run: exactly one of them takes the record — the completer
    /// won before the withdrawal (and the withdrawal returns its result) or writes nothing at
    /// all — the record is free right after the withdrawal either way, and the new arming never
    /// receives the old request's result.
    #[test]
    fn a_withdrawn_and_rearmed_record_never_gets_the_old_result() {
        loom::model(|| {
            let (t, daemon) = armed_with_a_completer();
            let withdrawn = t.withdraw(0);
            assert_eq!(t.poll_aux(0), None, "the record is free either way");
            t.arm(0, 2);
            let completed = daemon.join().unwrap();
            match withdrawn {
                Some(r) => assert!(completed && r == (7, 9), "withdrawal returns the result"),
                None => assert!(!completed, "completed and withdrawn both"),
            }
            assert_eq!(
                t.words(0),
                (WFS_COMP_PENDING, 2, 0, 0),
                "the new arming is untouched"
            );
        });
    }
}
