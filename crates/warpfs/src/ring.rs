//! Bounded multi-producer, multi-consumer request ring (Vyukov's sequence-stamped queue).
//!
//! Producers (host agents, GPU threads) claim a position with one CAS on `tail`, write the
//! request and publish it by storing `pos + 1` into the slot's sequence word. No producer ever
//! waits on another: a failed CAS means another producer made progress, and a full ring is
//! reported at once ([`Full`]) so the caller backs off and retries. Consumers (daemon workers)
//! take positions with a CAS on `head` and hand the slot back by storing `pos + capacity`.
//!
//! The ring lives either in a [`SharedMemory`] region (the layout is [`abi::WfsRingHeader`]
//! followed by [`abi::WfsSlot`]s, so a GPU can produce into it) or in owned heap memory (tests,
//! and every build under `--cfg loom`, where the algorithm is model-checked).
//!
//! The consumer trusts nothing: a sequence word that no correct producer could have written
//! yields [`Popped::Corrupt`] (the slot is reclaimed, the daemon answers with an error) rather
//! than a livelock.

use crate::abi::{self, WfsRequest};
use crate::sync::{spin_hint, AtomicU64, Ordering, UnsafeCell};
use std::ptr::NonNull;
use std::sync::Arc;

#[cfg(not(loom))]
use crate::region::SharedMemory;

/// In-memory form of [`abi::WfsSlot`] with atomic access to the sequence word.
#[repr(C, align(64))]
struct Slot {
    seq: AtomicU64,
    req: UnsafeCell<WfsRequest>,
}

/// In-memory form of [`abi::WfsRingHeader`].
#[repr(C, align(64))]
struct Header {
    magic: u32,
    version: u32,
    capacity: u32,
    mask: u32,
    _pad0: [u64; 6],
    head: AtomicU64,
    _pad1: [u64; 7],
    tail: AtomicU64,
    _pad2: [u64; 7],
}

/// Most published slots [`Ring::len`] probes from the head when the tail says nothing.
pub const READY_PROBE: usize = 64;

/// What [`Ring::snapshot`] saw: a published position `p` has sequence word `p + 1`, a free
/// one `p`; a head slot stuck at `seq == head` while the tail is past it is a position a
/// producer claimed and never published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSnapshot {
    /// Next position a consumer takes.
    pub head: u64,
    /// Producers' tail (advisory for GPU producers).
    pub tail: u64,
    /// Sequence words of the slots at `head`, `head + 1`, `head + 2`, `head + 3`.
    pub seqs: [u64; 4],
}

/// The ring was full; back off and retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Full;

/// What a consumer took from the ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Popped {
    /// A published request.
    Request(WfsRequest),
    /// A slot whose sequence word was garbage; its contents (possibly garbage too) are given so
    /// the daemon can answer the named completion with an error if that index is valid.
    Corrupt(WfsRequest),
}

enum Backing {
    Owned {
        _header: Box<Header>,
        _slots: Box<[Slot]>,
    },
    #[cfg(not(loom))]
    Region(#[allow(dead_code)] Arc<dyn SharedMemory>),
}

/// A bounded MPMC ring of [`WfsRequest`]s. Cheap to share (`Arc`); every operation is lock-free.
pub struct Ring {
    header: NonNull<Header>,
    slots: NonNull<Slot>,
    mask: u64,
    _backing: Backing,
}

// SAFETY: all shared state is accessed through atomics; a slot's request cell is written only
// by the producer that claimed its position (before the Release publish) and read only by the
// consumer that claimed it (after the Acquire load), so there is never a concurrent access.
unsafe impl Send for Ring {}
// SAFETY: see `Send`.
unsafe impl Sync for Ring {}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("capacity", &self.capacity())
            .field("len", &self.len())
            .finish()
    }
}

impl Ring {
    /// Bytes a ring of `capacity` slots occupies in a region (header + slots).
    pub const fn bytes_for(capacity: usize) -> usize {
        core::mem::size_of::<abi::WfsRingHeader>() + capacity * core::mem::size_of::<abi::WfsSlot>()
    }

    /// A ring in owned heap memory. `capacity` is rounded up to a power of two (at least 2).
    pub fn with_capacity(capacity: usize) -> Self {
        let capacity = capacity.max(2).next_power_of_two();
        let header = Box::new(Header::new(capacity));
        let slots: Box<[Slot]> = (0..capacity)
            .map(|i| Slot {
                seq: AtomicU64::new(i as u64),
                req: UnsafeCell::new(WfsRequest::default()),
            })
            .collect();
        let header_ptr = NonNull::from(&*header);
        let slots_ptr = NonNull::new(slots.as_ptr() as *mut Slot).expect("non-null slots");
        Self {
            header: header_ptr,
            slots: slots_ptr,
            mask: capacity as u64 - 1,
            _backing: Backing::Owned {
                _header: header,
                _slots: slots,
            },
        }
    }

    /// Formats a ring of `capacity` slots (a power of two) at byte `offset` of `region`.
    ///
    /// Returns `None` if the ring would not fit, `offset` is not 64-byte aligned or `capacity`
    /// is not a power of two.
    #[cfg(not(loom))]
    pub fn in_region(
        region: Arc<dyn SharedMemory>,
        offset: usize,
        capacity: usize,
    ) -> Option<Self> {
        if !capacity.is_power_of_two() || !offset.is_multiple_of(64) || capacity > u32::MAX as usize
        {
            return None;
        }
        let end = offset.checked_add(Self::bytes_for(capacity))?;
        if end > region.len() {
            return None;
        }
        // SAFETY: [offset, end) lies inside the region, which is valid and 4096-aligned for
        // its lifetime (SharedMemory contract); offset is 64-aligned, so both pointers are
        // aligned for Header/Slot. We hold the region Arc, so it outlives the ring.
        unsafe {
            let base = region.as_ptr().add(offset);
            let header = base as *mut Header;
            header.write(Header::new(capacity));
            let slots = base.add(core::mem::size_of::<Header>()) as *mut Slot;
            for i in 0..capacity {
                slots.add(i).write(Slot {
                    seq: AtomicU64::new(i as u64),
                    req: UnsafeCell::new(WfsRequest::default()),
                });
            }
            Some(Self {
                header: NonNull::new_unchecked(header),
                slots: NonNull::new_unchecked(slots),
                mask: capacity as u64 - 1,
                _backing: Backing::Region(region),
            })
        }
    }

    fn header(&self) -> &Header {
        // SAFETY: the header lives as long as the backing, which `self` owns.
        unsafe { self.header.as_ref() }
    }

    fn slot(&self, pos: u64) -> &Slot {
        // SAFETY: `pos & mask` < capacity and the slot array lives as long as `self`.
        unsafe { &*self.slots.as_ptr().add((pos & self.mask) as usize) }
    }

    /// Number of slots.
    pub fn capacity(&self) -> usize {
        self.mask as usize + 1
    }

    /// Approximate number of requests waiting (racy; a hint for batching and idling): the
    /// positions between head and tail, or — where producers publish the tail lazily (GPU
    /// channels: the tail is advisory there) — the published slots from the head on, counted
    /// up to [`READY_PROBE`] slots. Costs two loads, plus one per published slot probed.
    pub fn len(&self) -> usize {
        let h = self.header();
        let tail = h.tail.load(Ordering::Relaxed);
        let head = h.head.load(Ordering::Relaxed);
        // A lazily published tail may even lag the head (stores arriving out of order).
        let ahead = tail.wrapping_sub(head) as i64;
        if ahead > 0 {
            return (ahead as u64).min(self.capacity() as u64) as usize;
        }
        let limit = READY_PROBE.min(self.capacity()) as u64;
        (0..limit)
            .take_while(|&k| {
                let pos = head.wrapping_add(k);
                self.slot(pos).seq.load(Ordering::Relaxed) == pos.wrapping_add(1)
            })
            .count()
    }

    /// Whether the ring looks empty (racy).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Under loom, rings cannot live in raw shared memory (loom's atomics track state of their
    /// own): the ring is heap-owned and the region is ignored, so the crate still builds and
    /// the algorithm is checked.
    #[cfg(loom)]
    pub fn in_region(
        region: Arc<dyn crate::region::SharedMemory>,
        offset: usize,
        capacity: usize,
    ) -> Option<Self> {
        let _ = (region, offset);
        capacity
            .is_power_of_two()
            .then(|| Self::with_capacity(capacity))
    }

    /// Device-side address of the ring header when it lives in a region (for kernels).
    pub fn header_ptr(&self) -> *const u8 {
        self.header.as_ptr() as *const u8
    }

    /// Publishes `req`, or reports [`Full`] at once. Never waits on another producer.
    pub fn try_push(&self, req: &WfsRequest) -> Result<(), Full> {
        let h = self.header();
        let mut pos = h.tail.load(Ordering::Relaxed);
        loop {
            let slot = self.slot(pos);
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos) as i64;
            if diff == 0 {
                match h.tail.compare_exchange_weak(
                    pos,
                    pos.wrapping_add(1),
                    Ordering::Relaxed,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => {
                        // SAFETY: we own position `pos` until we publish it below.
                        slot.req.with_mut(|p| unsafe { p.write(*req) });
                        slot.seq.store(pos.wrapping_add(1), Ordering::Release);
                        return Ok(());
                    }
                    Err(actual) => pos = actual,
                }
            } else if diff < 0 {
                return Err(Full);
            } else {
                let now = h.tail.load(Ordering::Relaxed);
                if now == pos {
                    // The tail did not move yet the slot is stamped ahead of it: garbage that
                    // only a consumer pass can clear. Report it as full instead of spinning.
                    return Err(Full);
                }
                pos = now;
                spin_hint();
            }
        }
    }

    /// Pushes `req`, spinning (then yielding) while the ring is full.
    pub fn push_blocking(&self, req: &WfsRequest) {
        let mut spins = 0u32;
        while self.try_push(req).is_err() {
            spins += 1;
            backoff(spins);
        }
    }

    /// Pushes `req`, backing off while the ring is full, for at most `timeout`.
    pub fn push_timeout(&self, req: &WfsRequest, timeout: std::time::Duration) -> Result<(), Full> {
        let start = std::time::Instant::now();
        let mut spins = 0u32;
        loop {
            match self.try_push(req) {
                Ok(()) => return Ok(()),
                Err(Full) if cfg!(loom) && spins > 8 => return Err(Full),
                Err(Full) if start.elapsed() >= timeout => return Err(Full),
                Err(Full) => {
                    spins += 1;
                    backoff(spins);
                }
            }
        }
    }

    /// Takes the oldest published request, if any. `None` means empty, or the oldest position
    /// was claimed by a producer that has not published yet.
    pub fn try_pop(&self) -> Option<Popped> {
        let h = self.header();
        let mut pos = h.head.load(Ordering::Relaxed);
        loop {
            let slot = self.slot(pos);
            let seq = slot.seq.load(Ordering::Acquire);
            let diff = seq.wrapping_sub(pos.wrapping_add(1)) as i64;
            let corrupt = if diff == 0 {
                false
            } else if pos.wrapping_sub(seq) <= self.mask {
                // `seq` in [pos - capacity + 1, pos]: free, or claimed by a producer that has
                // not published yet (seq == pos), or still held by the previous lap's consumer
                // between its head CAS and its hand-back (seq == pos - capacity + 1). Not yet.
                return None;
            } else {
                let now = h.head.load(Ordering::Relaxed);
                if now != pos {
                    // Another consumer took it; try the new head.
                    pos = now;
                    spin_hint();
                    continue;
                }
                // The head did not move and the stamp is impossible: garbage in the slot. Take it
                // only if a producer claimed this position; never run ahead of the tail.
                let tail = h.tail.load(Ordering::Acquire);
                if tail.wrapping_sub(pos) as i64 <= 0 {
                    return None;
                }
                true
            };
            match h.head.compare_exchange_weak(
                pos,
                pos.wrapping_add(1),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    // SAFETY: we own position `pos` until we hand the slot back below.
                    let req = slot.req.with(|p| unsafe { p.read() });
                    slot.seq
                        .store(pos.wrapping_add(self.mask + 1), Ordering::Release);
                    return Some(if corrupt {
                        Popped::Corrupt(req)
                    } else {
                        Popped::Request(req)
                    });
                }
                Err(actual) => pos = actual,
            }
        }
    }

    /// Takes up to `max` consecutive published requests from the head with one CAS of the
    /// head, handing each to `take` in ring order; returns how many (0: nothing published at
    /// the head). Many consumers of one busy ring contend on its head line; claiming a run of
    /// requests per CAS divides that traffic by the run's length. A head slot with a garbage
    /// stamp is taken alone, as [`Ring::try_pop`] takes it ([`Popped::Corrupt`]). Costs one
    /// load of each slot's sequence word in the run (one in all when nothing waits).
    pub fn try_pop_many(&self, max: usize, mut take: impl FnMut(Popped)) -> usize {
        let max = max.min(self.capacity()) as u64;
        if max == 0 {
            return 0;
        }
        let h = self.header();
        let mut pos = h.head.load(Ordering::Relaxed);
        loop {
            // The run of published slots from `pos` (each seen with its producer's release).
            let mut n = 0u64;
            let mut stop = 0;
            while n < max {
                let p = pos.wrapping_add(n);
                stop = self.slot(p).seq.load(Ordering::Acquire);
                if stop != p.wrapping_add(1) {
                    break;
                }
                n += 1;
            }
            if n == 0 {
                // Free or claimed but unpublished (the common empty case), or a garbage stamp,
                // which the single pop tells apart from a moved head and takes below the tail.
                if pos.wrapping_sub(stop) <= self.mask {
                    return 0;
                }
                return match self.try_pop() {
                    Some(popped) => {
                        take(popped);
                        1
                    }
                    None => 0,
                };
            }
            match h.head.compare_exchange_weak(
                pos,
                pos.wrapping_add(n),
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => {
                    // We own positions pos .. pos + n: each was published when we looked, and a
                    // published slot changes only when its consumer (now us) hands it back.
                    for k in 0..n {
                        let p = pos.wrapping_add(k);
                        let slot = self.slot(p);
                        // SAFETY: we own position `p` until we hand the slot back below.
                        let req = slot.req.with(|r| unsafe { r.read() });
                        slot.seq
                            .store(p.wrapping_add(self.mask + 1), Ordering::Release);
                        take(Popped::Request(req));
                    }
                    return n as usize;
                }
                Err(actual) => {
                    pos = actual;
                    spin_hint();
                }
            }
        }
    }

    /// Whether the slot at the head holds a published request (racy; a hint for a spinning
    /// consumer). Costs two loads.
    pub fn head_published(&self) -> bool {
        let head = self.header().head.load(Ordering::Relaxed);
        self.slot(head).seq.load(Ordering::Relaxed) == head.wrapping_add(1)
    }

    /// A racy picture of the ring for diagnostics (a stalled channel, a watchdog report):
    /// head, tail and the sequence words of the slots at the head and just after it. Costs a
    /// few loads.
    pub fn snapshot(&self) -> RingSnapshot {
        let h = self.header();
        let head = h.head.load(Ordering::Acquire);
        let tail = h.tail.load(Ordering::Acquire);
        let mut seqs = [0u64; 4];
        for (k, s) in seqs.iter_mut().enumerate() {
            *s = self
                .slot(head.wrapping_add(k as u64))
                .seq
                .load(Ordering::Acquire);
        }
        RingSnapshot { head, tail, seqs }
    }

    /// Overwrites the sequence word of the slot at `pos` (tests of garbage handling only).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn scribble_seq(&self, pos: u64, value: u64) {
        self.slot(pos).seq.store(value, Ordering::Release);
    }

    /// Overwrites the tail (tests only).
    #[cfg(all(test, not(loom)))]
    pub(crate) fn scribble_tail(&self, value: u64) {
        self.header().tail.store(value, Ordering::Release);
    }
}

/// Spin, then yield, then nap: a producer facing a full ring backs off without waiting on
/// any other producer.
fn backoff(spins: u32) {
    if spins < 64 {
        spin_hint();
    } else {
        #[cfg(loom)]
        loom::thread::yield_now();
        #[cfg(not(loom))]
        if spins < 1024 {
            std::thread::yield_now();
        } else {
            std::thread::sleep(std::time::Duration::from_micros(50));
        }
    }
}

impl Header {
    fn new(capacity: usize) -> Self {
        Self {
            magic: abi::WFS_RING_MAGIC,
            version: abi::WFS_ABI_VERSION,
            capacity: capacity as u32,
            mask: capacity as u32 - 1,
            _pad0: [0; 6],
            head: AtomicU64::new(0),
            _pad1: [0; 7],
            tail: AtomicU64::new(0),
            _pad2: [0; 7],
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::*;
    use crate::region::HostMemory;
    use core::mem::{offset_of, size_of};
    use std::collections::HashSet;

    fn req(n: u64) -> WfsRequest {
        WfsRequest {
            op: abi::WFS_OP_READ,
            offset: n,
            len: 4096,
            ..Default::default()
        }
    }

    #[test]
    fn in_memory_layout_matches_the_wire_format() {
        assert_eq!(size_of::<Slot>(), size_of::<abi::WfsSlot>());
        assert_eq!(offset_of!(Slot, req), offset_of!(abi::WfsSlot, req));
        assert_eq!(size_of::<Header>(), size_of::<abi::WfsRingHeader>());
        assert_eq!(
            offset_of!(Header, head),
            offset_of!(abi::WfsRingHeader, head)
        );
        assert_eq!(
            offset_of!(Header, tail),
            offset_of!(abi::WfsRingHeader, tail)
        );
    }

    #[test]
    fn snapshot_shows_published_free_and_handed_back_slots() {
        let r = Ring::with_capacity(4);
        r.try_push(&req(0)).unwrap();
        r.try_push(&req(1)).unwrap();
        assert!(matches!(r.try_pop(), Some(Popped::Request(q)) if q.offset == 0));
        // Head 1 (published: seq 2), position 2 free (seq 2), 3 free (seq 3), and position 4's
        // slot is position 0's, handed back for the next lap (seq 0 + 4).
        assert_eq!(
            r.snapshot(),
            RingSnapshot {
                head: 1,
                tail: 2,
                seqs: [2, 2, 3, 4]
            }
        );
    }

    #[test]
    fn fifo_and_full() {
        let r = Ring::with_capacity(4);
        for i in 0..4 {
            r.try_push(&req(i)).unwrap();
        }
        assert_eq!(r.try_push(&req(9)), Err(Full));
        for i in 0..4 {
            assert_eq!(r.try_pop(), Some(Popped::Request(req(i))));
        }
        assert_eq!(r.try_pop(), None);
        // Wraps around.
        for i in 10..14 {
            r.try_push(&req(i)).unwrap();
            assert_eq!(r.try_pop(), Some(Popped::Request(req(i))));
        }
    }

    #[test]
    fn region_ring_works_and_rejects_bad_geometry() {
        let mem: Arc<dyn SharedMemory> = Arc::new(HostMemory::new(Ring::bytes_for(8)));
        assert!(Ring::in_region(mem.clone(), 0, 6).is_none());
        assert!(Ring::in_region(mem.clone(), 32, 8).is_none());
        assert!(Ring::in_region(mem.clone(), 64, 64).is_none());
        let r = Ring::in_region(mem.clone(), 0, 8).unwrap();
        r.try_push(&req(7)).unwrap();
        // The wire header is readable through the region.
        // SAFETY: the header was formatted at offset 0 of the region.
        let h = unsafe { &*(mem.as_ptr() as *const abi::WfsRingHeader) };
        assert_eq!(h.magic, abi::WFS_RING_MAGIC);
        assert_eq!(h.capacity, 8);
        assert_eq!(r.try_pop(), Some(Popped::Request(req(7))));
    }

    #[test]
    fn a_slot_still_held_by_the_previous_lap_is_not_garbage() {
        let r = Ring::with_capacity(4);
        for i in 0..4 {
            r.try_push(&req(i)).unwrap();
        }
        for i in 0..4 {
            assert_eq!(r.try_pop(), Some(Popped::Request(req(i))));
        }
        // A previous-lap consumer that has taken position 4 - capacity = 0 but not yet handed
        // the slot back leaves seq = 1 there; the consumer at position 4 must wait, even when a
        // (GPU-style) producer has already advanced the tail past it.
        r.scribble_seq(4, 1);
        r.scribble_tail(5);
        assert_eq!(r.try_pop(), None);
    }

    #[test]
    fn garbage_sequence_words_are_reported_not_spun_on() {
        let r = Ring::with_capacity(4);
        r.try_push(&req(1)).unwrap();
        r.scribble_seq(0, 0xdead_beef_dead_beef);
        assert!(matches!(r.try_pop(), Some(Popped::Corrupt(_))));
        // The ring keeps working after the bad slot.
        r.try_push(&req(2)).unwrap();
        assert_eq!(r.try_pop(), Some(Popped::Request(req(2))));
        assert_eq!(r.try_pop(), None);
    }

    #[test]
    fn stress_many_producers_many_consumers_lose_and_duplicate_nothing() {
        let r = Arc::new(Ring::with_capacity(64));
        let producers = 8u64;
        let per = 20_000u64;
        let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Consumer 0 pops one at a time; the others take runs first (try_pop_many), as the
        // daemon does, and fall back to try_pop.
        let consumers: Vec<_> = (0..3)
            .map(|c| {
                let r = r.clone();
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut got = Vec::new();
                    let offset = |p: Popped| match p {
                        Popped::Request(q) => q.offset,
                        Popped::Corrupt(_) => panic!("corrupt slot under correct use"),
                    };
                    loop {
                        if c > 0 && r.try_pop_many(8, |p| got.push(offset(p))) > 0 {
                            continue;
                        }
                        match r.try_pop() {
                            Some(Popped::Request(q)) => got.push(q.offset),
                            Some(Popped::Corrupt(_)) => panic!("corrupt slot under correct use"),
                            None if done.load(std::sync::atomic::Ordering::Acquire) => {
                                // Drain what remains.
                                while let Some(Popped::Request(q)) = r.try_pop() {
                                    got.push(q.offset);
                                }
                                return got;
                            }
                            None => std::thread::yield_now(),
                        }
                    }
                })
            })
            .collect();
        let prods: Vec<_> = (0..producers)
            .map(|p| {
                let r = r.clone();
                std::thread::spawn(move || {
                    for i in 0..per {
                        r.push_blocking(&req(p * per + i));
                    }
                })
            })
            .collect();
        for p in prods {
            p.join().unwrap();
        }
        done.store(true, std::sync::atomic::Ordering::Release);
        let mut seen = HashSet::new();
        for c in consumers {
            for v in c.join().unwrap() {
                assert!(seen.insert(v), "duplicate {v}");
            }
        }
        assert_eq!(seen.len() as u64, producers * per);
    }
}

#[cfg(all(test, loom))]
mod loom_tests {
    use super::*;
    use loom::sync::Arc;
    use loom::thread;

    fn req(n: u64) -> WfsRequest {
        WfsRequest {
            offset: n,
            ..Default::default()
        }
    }

    /// Two producers and one consumer on a 2-slot ring: every published request is taken
    /// exactly once, and a full ring is reported rather than waited on.
    #[test]
    fn two_producers_one_consumer() {
        loom::model(|| {
            let r = Arc::new(Ring::with_capacity(2));
            let hs: Vec<_> = (0..2u64)
                .map(|p| {
                    let r = r.clone();
                    thread::spawn(move || r.try_push(&req(p)).is_ok())
                })
                .collect();
            let mut got = Vec::new();
            for _ in 0..2 {
                if let Some(Popped::Request(q)) = r.try_pop() {
                    got.push(q.offset);
                }
            }
            let pushed: usize = hs.into_iter().map(|h| h.join().unwrap() as usize).sum();
            while let Some(p) = r.try_pop() {
                match p {
                    Popped::Request(q) => got.push(q.offset),
                    Popped::Corrupt(_) => panic!("corrupt"),
                }
            }
            assert_eq!(pushed, 2, "a 2-slot ring has room for both");
            got.sort();
            assert_eq!(got, vec![0, 1]);
        });
    }

    /// Two consumers racing for one request: exactly one gets it.
    #[test]
    fn two_consumers_one_request() {
        loom::model(|| {
            let r = Arc::new(Ring::with_capacity(2));
            r.try_push(&req(5)).unwrap();
            let hs: Vec<_> = (0..2)
                .map(|_| {
                    let r = r.clone();
                    thread::spawn(move || r.try_pop())
                })
                .collect();
            let got: Vec<_> = hs.into_iter().filter_map(|h| h.join().unwrap()).collect();
            assert_eq!(got, vec![Popped::Request(req(5))]);
        });
    }

    fn request_offset(p: Popped) -> u64 {
        match p {
            Popped::Request(q) => q.offset,
            Popped::Corrupt(_) => panic!("corrupt slot under correct use"),
        }
    }

    /// Two consumers taking runs (`try_pop_many`) while a producer publishes: every request is
    /// taken exactly once, in ring order within a run.
    #[test]
    fn runs_taken_once() {
        loom::model(|| {
            let r = Arc::new(Ring::with_capacity(4));
            r.try_push(&req(0)).unwrap();
            let r2 = r.clone();
            let prod = thread::spawn(move || {
                r2.try_push(&req(1)).unwrap();
                r2.try_push(&req(2)).unwrap();
            });
            let r3 = r.clone();
            let cons = thread::spawn(move || {
                let mut got = Vec::new();
                r3.try_pop_many(4, |p| got.push(request_offset(p)));
                got
            });
            let mut got = Vec::new();
            r.try_pop_many(4, |p| got.push(request_offset(p)));
            prod.join().unwrap();
            let other = cons.join().unwrap();
            for run in [&got, &other] {
                assert!(
                    run.windows(2).all(|w| w[0] < w[1]),
                    "run out of order: {run:?}"
                );
            }
            r.try_pop_many(4, |p| got.push(request_offset(p)));
            got.extend(other);
            got.sort();
            assert_eq!(got, vec![0, 1, 2]);
        });
    }

    /// Producer wrap-around: with a full ring a producer gets `Full`, then succeeds after a pop.
    #[test]
    fn full_then_wrap() {
        loom::model(|| {
            let r = Arc::new(Ring::with_capacity(2));
            r.try_push(&req(0)).unwrap();
            r.try_push(&req(1)).unwrap();
            let r2 = r.clone();
            let prod = thread::spawn(move || {
                let mut n = 0;
                while r2.try_push(&req(2)).is_err() {
                    n += 1;
                    loom::thread::yield_now();
                    if n > 3 {
                        return false;
                    }
                }
                true
            });
            let first = r.try_pop();
            assert_eq!(first, Some(Popped::Request(req(0))));
            let pushed = prod.join().unwrap();
            let mut rest = Vec::new();
            while let Some(Popped::Request(q)) = r.try_pop() {
                rest.push(q.offset);
            }
            if pushed {
                assert_eq!(rest, vec![1, 2]);
            } else {
                assert_eq!(rest, vec![1]);
            }
        });
    }
}
