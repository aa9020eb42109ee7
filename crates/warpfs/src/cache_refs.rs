//! Cache-page references: completions that point at a host-cache page instead of carrying a
//! copy of its bytes, and who releases the page's pin afterwards.
//!
//! A one-page read that hits the host cache can be answered with `aux = page index + 1` and
//! the page left pinned; the requester then copies the bytes out of the cache page itself
//! (no copy by the daemon). Per completion record, [`RefMode`] says whether that is allowed
//! and who drops the pin:
//!
//! - [`RefMode::Requester`]: requesters in the daemon's address space (host agents) release
//!   it themselves (`HostCache::release`).
//! - [`RefMode::Daemon`]: a device (a GPU reading the host tier through a mapping) cannot
//!   reach the cache's bookkeeping, so the daemon keeps the reference in this table and
//!   releases it when the record is *reused* (a new request on the record means the requester
//!   is done with the last answer: it posts only after its copy, with a release) or when a
//!   *sweep* finds the record consumed (the device stores `FREE` with a release after its
//!   copy). Every held reference carries a generation, so a sweep that looked at a record
//!   just before it was reused and answered again never releases the new reference.
//!
//! Nothing here trusts the device: a record the device never consumes keeps its pin until
//! [`CacheRefs::close`] (channel detach), and the daemon stops handing out references once
//! [`CacheRefs::held`] reaches its cap, so a misbehaving kernel can pin at most that many
//! pages. Lock-free; model-checked under loom (`tests` below).

use crate::sync::{AtomicU32, AtomicU64, Ordering};
use std::ops::Range;

/// Who may receive cache-page references on a completion record, and who releases them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefMode {
    /// The record's answers carry the bytes in the data region (`aux = 0`).
    Copy,
    /// Host agent: takes references and releases them itself.
    Requester,
    /// Device: takes references; the daemon releases them ([`CacheRefs`]).
    Daemon,
}

impl RefMode {
    fn from_u32(v: u32) -> Self {
        match v {
            1 => Self::Requester,
            2 => Self::Daemon,
            _ => Self::Copy,
        }
    }
    fn as_u32(self) -> u32 {
        match self {
            Self::Copy => 0,
            Self::Requester => 1,
            Self::Daemon => 2,
        }
    }
}

/// What [`CacheRefs::hold`] did with the pin it was handed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hold {
    /// The table owns the pin now; complete the record with the reference.
    Held,
    /// The table is closed: the caller keeps its pin (copy the bytes, then release it).
    Refused,
    /// The table was closed while the reference went in, and `close` already released the
    /// pin: the page may be gone, so complete with an error (the channel is shutting down).
    Released,
}

/// Per-record reference modes and the references the daemon holds for device requesters.
pub struct CacheRefs {
    mode: Box<[AtomicU32]>,
    /// Per record: `generation << 32 | (page + 1)`, 0 for none.
    held: Box<[AtomicU64]>,
    count: AtomicU64,
    generation: AtomicU32,
    closed: AtomicU32,
    sweeping: AtomicU32,
}

impl std::fmt::Debug for CacheRefs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CacheRefs")
            .field("records", &self.mode.len())
            .field("held", &self.held())
            .finish()
    }
}

impl CacheRefs {
    /// A table for `records` completion records, every one in [`RefMode::Copy`].
    pub fn new(records: usize) -> Self {
        Self {
            mode: (0..records).map(|_| AtomicU32::new(0)).collect(),
            held: (0..records).map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            generation: AtomicU32::new(0),
            closed: AtomicU32::new(0),
            sweeping: AtomicU32::new(0),
        }
    }

    /// Sets the mode of `records` (indices out of range are ignored).
    pub fn set_mode(&self, records: Range<u32>, mode: RefMode) {
        for i in records {
            if let Some(m) = self.mode.get(i as usize) {
                m.store(mode.as_u32(), Ordering::Relaxed);
            }
        }
    }

    /// The mode of record `idx` ([`RefMode::Copy`] if out of range). One relaxed load.
    pub fn mode(&self, idx: u32) -> RefMode {
        self.mode.get(idx as usize).map_or(RefMode::Copy, |m| {
            RefMode::from_u32(m.load(Ordering::Relaxed))
        })
    }

    /// References the daemon holds now.
    pub fn held(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    /// Daemon, about to complete record `idx` with a reference to `page` (whose pin it
    /// hands over): records it. See [`Hold`]. The second value is a reference the record
    /// still held (an answer its requester never consumed before the record was answered
    /// again: only a misbehaving requester does that), whose pin the caller releases.
    pub fn hold(&self, idx: u32, page: u32) -> (Hold, Option<u32>) {
        let Some(slot) = self.held.get(idx as usize) else {
            return (Hold::Refused, None);
        };
        if self.closed.load(Ordering::SeqCst) != 0 {
            return (Hold::Refused, None);
        }
        let generation = self.generation.fetch_add(1, Ordering::Relaxed);
        let v = (u64::from(generation) << 32) | (u64::from(page) + 1);
        let prev = slot.swap(v, Ordering::SeqCst);
        if prev == 0 {
            self.count.fetch_add(1, Ordering::Relaxed);
        }
        // Either `close` (which raises `closed` before it scans) sees `v`, or this sees `closed`.
        if self.closed.load(Ordering::SeqCst) != 0 {
            let outcome = match slot.compare_exchange(v, 0, Ordering::SeqCst, Ordering::SeqCst) {
                Ok(_) => {
                    self.count.fetch_sub(1, Ordering::Relaxed);
                    Hold::Refused
                }
                Err(_) => Hold::Released,
            };
            return (outcome, page_of(prev));
        }
        (Hold::Held, page_of(prev))
    }

    /// Daemon, on a new request naming record `idx`: takes the reference the record held (its
    /// requester posted again, so it is done with the last answer). One relaxed load when
    /// there is none.
    pub fn take(&self, idx: u32) -> Option<u32> {
        let slot = self.held.get(idx as usize)?;
        if slot.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let prev = slot.swap(0, Ordering::AcqRel);
        let page = page_of(prev)?;
        self.count.fetch_sub(1, Ordering::Relaxed);
        Some(page)
    }

    /// Daemon: releases the references of records that `consumed` says their requester is
    /// done with (it reads the record's state with Acquire), calling `release` for each page.
    /// Scans every record; one sweep at a time (a second caller returns at once). Returns how
    /// many were released.
    pub fn sweep(&self, consumed: impl Fn(u32) -> bool, mut release: impl FnMut(u32)) -> usize {
        if self.held() == 0
            || self
                .sweeping
                .compare_exchange(0, 1, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return 0;
        }
        let mut n = 0;
        for (i, slot) in self.held.iter().enumerate() {
            let h = slot.load(Ordering::Acquire);
            if h == 0 || !consumed(i as u32) {
                continue;
            }
            // Unchanged since before the state was read: the consumption seen is of this
            // reference's answer (a reuse would have taken it, a new answer changed the
            // generation).
            if slot
                .compare_exchange(h, 0, Ordering::AcqRel, Ordering::Relaxed)
                .is_ok()
            {
                self.count.fetch_sub(1, Ordering::Relaxed);
                if let Some(p) = page_of(h) {
                    release(p);
                    n += 1;
                }
            }
        }
        self.sweeping.store(0, Ordering::Release);
        n
    }

    /// Channel detach (no request of the channel will be served again, its requesters are
    /// gone): refuses further references and releases every held one. Returns how many.
    pub fn close(&self, mut release: impl FnMut(u32)) -> usize {
        self.closed.store(1, Ordering::SeqCst);
        let mut n = 0;
        for slot in self.held.iter() {
            let prev = slot.swap(0, Ordering::SeqCst);
            if let Some(p) = page_of(prev) {
                self.count.fetch_sub(1, Ordering::Relaxed);
                release(p);
                n += 1;
            }
        }
        n
    }
}

fn page_of(v: u64) -> Option<u32> {
    ((v as u32) as u64).checked_sub(1).map(|p| p as u32)
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;

    #[test]
    fn a_reference_is_released_once_by_reuse_or_sweep() {
        let t = CacheRefs::new(4);
        t.set_mode(0..2, RefMode::Daemon);
        assert_eq!(t.mode(1), RefMode::Daemon);
        assert_eq!(t.mode(2), RefMode::Copy);
        assert_eq!(t.mode(99), RefMode::Copy);
        assert_eq!(t.hold(0, 7), (Hold::Held, None));
        assert_eq!(t.hold(1, 0), (Hold::Held, None));
        assert_eq!(t.held(), 2);
        // Reuse takes it; a second take finds nothing.
        assert_eq!(t.take(0), Some(7));
        assert_eq!(t.take(0), None);
        // A sweep releases only consumed records.
        let mut got = Vec::new();
        assert_eq!(t.sweep(|_| false, |p| got.push(p)), 0);
        assert_eq!(t.sweep(|i| i == 1, |p| got.push(p)), 1);
        assert_eq!(got, vec![0]);
        assert_eq!(t.held(), 0);
        // A record answered twice without a reuse hands the old pin back.
        assert_eq!(t.hold(2, 3), (Hold::Held, None));
        assert_eq!(t.hold(2, 5), (Hold::Held, Some(3)));
        assert_eq!(t.held(), 1);
        // Close releases the rest and refuses more.
        let mut closed = Vec::new();
        assert_eq!(t.close(|p| closed.push(p)), 1);
        assert_eq!(closed, vec![5]);
        assert_eq!(t.hold(0, 1), (Hold::Refused, None));
        assert_eq!(t.held(), 0);
        assert_eq!(t.hold(42, 1), (Hold::Refused, None));
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::atomic::AtomicU32 as LAtomicU32;
    use loom::sync::Arc;
    use loom::thread;

    /// A device consumes answer 1 (copies the page, then stores FREE with Release) and posts
    /// a request again; the daemon's reuse path and a concurrent sweep race to release. The
    /// page is released exactly once, and never before the copy (the "page" word is poisoned
    /// by the release and must not be seen poisoned by the copy).
    #[test]
    fn the_pin_is_released_once_and_only_after_the_copy() {
        loom::model(|| {
            let t = Arc::new(CacheRefs::new(1));
            t.set_mode(0..1, RefMode::Daemon);
            let page = Arc::new(LAtomicU32::new(7)); // the page's bytes
            let state = Arc::new(LAtomicU32::new(0)); // 0 DONE, 1 FREE (consumed)
            let posted = Arc::new(LAtomicU32::new(0));
            let releases = Arc::new(LAtomicU32::new(0));
            assert_eq!(t.hold(0, 3), (Hold::Held, None));

            let device = {
                let (page, state, posted) = (page.clone(), state.clone(), posted.clone());
                thread::spawn(move || {
                    let v = page.load(Ordering::Relaxed);
                    state.store(1, Ordering::Release);
                    posted.store(1, Ordering::Release);
                    v
                })
            };
            let sweeper = {
                let (t, page, state, releases) =
                    (t.clone(), page.clone(), state.clone(), releases.clone());
                thread::spawn(move || {
                    t.sweep(
                        |_| state.load(Ordering::Acquire) == 1,
                        |_| {
                            page.store(0, Ordering::Relaxed);
                            releases.fetch_add(1, Ordering::Relaxed);
                        },
                    );
                })
            };
            if posted.load(Ordering::Acquire) == 1 && t.take(0).is_some() {
                page.store(0, Ordering::Relaxed);
                releases.fetch_add(1, Ordering::Relaxed);
            }
            assert_eq!(device.join().unwrap(), 7, "released before the copy");
            sweeper.join().unwrap();
            let left = t.take(0).map_or(0, |_| 1);
            assert_eq!(releases.load(Ordering::Relaxed) + left, 1);
        });
    }
}
