//! Host model of the GPU producer protocol of `include/warpfs.cuh` (see
//! `backend::cuda::gpu_io`), stress-tested against the daemon's real consumer
//! ([`Ring::try_pop`]) on a ring laid out in a shared region.
//!
//! The GPU never uses atomics on host memory. Producers claim positions with a fetch-add on a
//! counter that stands for device memory, wait until the slot's sequence word equals their
//! position, write the request with plain stores and publish `pos + 1` with a release store;
//! then the group leader advances the header's advisory `tail`: `fetch_max` on a device-side
//! maximum, plain store, re-read, store again until the maximum held still. Checked: every
//! request is consumed exactly once, no slot is ever reported corrupt, and once all producers
//! are done the header's `tail` equals the number of claims (so an idle daemon sees an empty
//! ring and can sleep).

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warpfs::abi::{self, WfsRequest};
use warpfs::region::{HostMemory, SharedMemory};
use warpfs::ring::{Popped, Ring};

/// What the GPU side keeps in device memory.
#[derive(Default)]
struct DeviceState {
    claim: AtomicU64,
    tail_max: AtomicU64,
}

/// A producer's view of the ring's raw memory (what a kernel gets from its context).
struct RawRing {
    base: *mut u8,
    mask: u64,
}

// SAFETY: only raw addresses inside a region that outlives the test's threads; every access
// below is an atomic or is ordered by the slot's sequence word.
unsafe impl Send for RawRing {}
// SAFETY: see Send.
unsafe impl Sync for RawRing {}

impl RawRing {
    fn seq(&self, pos: u64) -> &AtomicU64 {
        let off = core::mem::size_of::<abi::WfsRingHeader>()
            + (pos & self.mask) as usize * core::mem::size_of::<abi::WfsSlot>();
        // SAFETY: the slot lies inside the ring laid out at `base`; the word is 64-aligned.
        unsafe { AtomicU64::from_ptr(self.base.add(off).cast()) }
    }
    fn req(&self, pos: u64) -> *mut WfsRequest {
        let off = core::mem::size_of::<abi::WfsRingHeader>()
            + (pos & self.mask) as usize * core::mem::size_of::<abi::WfsSlot>()
            + core::mem::offset_of!(abi::WfsSlot, req);
        // SAFETY: inside the slot at `pos`.
        unsafe { self.base.add(off).cast() }
    }
    fn tail(&self) -> &AtomicU64 {
        // SAFETY: the header's tail word, 8-aligned, inside the region.
        unsafe {
            AtomicU64::from_ptr(
                self.base
                    .add(core::mem::offset_of!(abi::WfsRingHeader, tail))
                    .cast(),
            )
        }
    }
}

/// One group of `lanes` requests, exactly as a warp issues them.
fn produce_group(ring: &RawRing, dev: &DeviceState, first_id: u64, lanes: u64) {
    let base = dev.claim.fetch_add(lanes, Ordering::Relaxed);
    for lane in 0..lanes {
        let pos = base + lane;
        let mut spins = 0u32;
        while ring.seq(pos).load(Ordering::Acquire) != pos {
            spins += 1;
            if spins > 64 {
                std::thread::yield_now();
            } else {
                std::hint::spin_loop();
            }
        }
        let req = WfsRequest {
            op: abi::WFS_OP_READ,
            completion: lane as u32,
            ticket: pos as u32,
            offset: first_id + lane,
            len: 4096,
            ..Default::default()
        };
        // SAFETY: the slot is ours from the moment its sequence word equals `pos` until the
        // release store below publishes it.
        unsafe { ring.req(pos).write_volatile(req) };
        ring.seq(pos).store(pos + 1, Ordering::Release);
    }
    // Leader: advisory tail.
    let mut cur = base + lanes;
    dev.tail_max.fetch_max(cur, Ordering::SeqCst);
    cur = dev.tail_max.load(Ordering::SeqCst);
    loop {
        ring.tail().store(cur, Ordering::SeqCst);
        let now = dev.tail_max.load(Ordering::SeqCst);
        if now == cur {
            break;
        }
        cur = now;
    }
}

fn run(capacity: usize, producers: u64, groups: u64, consumers: usize) {
    let mem: Arc<dyn SharedMemory> = Arc::new(HostMemory::new(Ring::bytes_for(capacity)));
    let ring = Arc::new(Ring::in_region(mem.clone(), 0, capacity).expect("ring"));
    let raw = Arc::new(RawRing {
        base: mem.as_ptr(),
        mask: capacity as u64 - 1,
    });
    let dev = Arc::new(DeviceState::default());
    let done = Arc::new(AtomicBool::new(false));
    let cons: Vec<_> = (0..consumers)
        .map(|_| {
            let ring = ring.clone();
            let done = done.clone();
            std::thread::spawn(move || {
                let mut got = Vec::new();
                loop {
                    match ring.try_pop() {
                        Some(Popped::Request(q)) => got.push(q.offset),
                        Some(Popped::Corrupt(q)) => panic!("corrupt slot under correct use: {q:?}"),
                        None if done.load(Ordering::Acquire) => {
                            while let Some(p) = ring.try_pop() {
                                match p {
                                    Popped::Request(q) => got.push(q.offset),
                                    Popped::Corrupt(q) => panic!("corrupt slot: {q:?}"),
                                }
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
            let raw = raw.clone();
            let dev = dev.clone();
            std::thread::spawn(move || {
                for g in 0..groups {
                    // Groups of 1..=32 lanes, as partial and full warps post.
                    let lanes = 1 + (p * 7 + g * 13) % 32;
                    produce_group(&raw, &dev, (p * groups + g) * 64, lanes);
                }
            })
        })
        .collect();
    for p in prods {
        p.join().unwrap();
    }
    done.store(true, Ordering::Release);
    let mut seen = HashSet::new();
    for c in cons {
        for id in c.join().unwrap() {
            assert!(seen.insert(id), "request {id} consumed twice");
        }
    }
    let expected: u64 = (0..producers)
        .flat_map(|p| (0..groups).map(move |g| 1 + (p * 7 + g * 13) % 32))
        .sum();
    assert_eq!(seen.len() as u64, expected, "requests lost");
    for p in 0..producers {
        for g in 0..groups {
            let lanes = 1 + (p * 7 + g * 13) % 32;
            for l in 0..lanes {
                assert!(seen.contains(&((p * groups + g) * 64 + l)));
            }
        }
    }
    assert_eq!(
        raw.tail().load(Ordering::SeqCst),
        expected,
        "the advisory tail must end at the number of claims"
    );
    assert!(ring.is_empty(), "an idle daemon must see the ring empty");
}

#[test]
fn device_claimed_positions_are_consumed_exactly_once() {
    run(1024, 6, 2_000, 2);
}

#[test]
fn small_ring_forces_producers_to_wait_for_hand_back() {
    // Far more requests in flight than slots: producers wait on the consumer only.
    run(64, 8, 1_000, 3);
}

/// Lanes with their own completion record, the whole GPU round trip: claim a position, find the
/// slot free through the hand-back mirror (`WfsGpuContext::handed`, device memory) or else its
/// sequence word, post, wait for DONE, then store `pos + capacity` in the mirror (release), as
/// `claim_slot` / `note_handed` in warpfs.cuh do. Consumers pop with the daemon's real
/// [`Ring::try_pop_many`] (it hands each slot back before the request is completed) and check
/// every request they read whole: a lane that wrote into a slot still being read would show as
/// a torn request, a lost one or a stalled ring (a bounded wait that panics). Returns how many
/// claims the mirror found free.
fn run_with_mirror(capacity: usize, lanes: u64, rounds: u64, consumers: usize) -> u64 {
    let mem: Arc<dyn SharedMemory> = Arc::new(HostMemory::new(Ring::bytes_for(capacity)));
    let ring = Arc::new(Ring::in_region(mem.clone(), 0, capacity).expect("ring"));
    let raw = Arc::new(RawRing {
        base: mem.as_ptr(),
        mask: capacity as u64 - 1,
    });
    let claim = Arc::new(AtomicU64::new(0));
    let mirror: Arc<Vec<AtomicU64>> = Arc::new((0..capacity as u64).map(AtomicU64::new).collect());
    // Per record: the ticket (position + 1) of its last completed request.
    let done_ticket: Arc<Vec<AtomicU64>> =
        Arc::new((0..lanes).map(|_| AtomicU64::new(0)).collect());
    let mirror_hits = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let id_of = |rec: u64, round: u64| rec * 1_000_000 + round;
    let cons: Vec<_> = (0..consumers)
        .map(|c| {
            let (ring, done_ticket, stop) = (ring.clone(), done_ticket.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut got = Vec::new();
                let mut batch = Vec::new();
                loop {
                    batch.clear();
                    let n = ring.try_pop_many(1 + c * 3, |p| match p {
                        Popped::Request(q) => batch.push(q),
                        Popped::Corrupt(q) => panic!("corrupt slot under correct use: {q:?}"),
                    });
                    if n == 0 {
                        if stop.load(Ordering::Acquire) {
                            return got;
                        }
                        std::thread::yield_now();
                        continue;
                    }
                    for q in &batch {
                        // A request is whole: its fields are functions of one (record, round).
                        let (rec, round) = (q.completion as u64, q.offset % 1_000_000);
                        assert_eq!(q.offset, id_of(rec, round), "torn request {q:?}");
                        assert_eq!(q.len, 4096 + round, "torn request {q:?}");
                        assert_eq!(q.buf, rec * 7 + round, "torn request {q:?}");
                        got.push(q.offset);
                        if c == 0 && round % 97 == 0 {
                            // A slow worker: others pop (and complete) past it meanwhile.
                            std::thread::sleep(std::time::Duration::from_micros(50));
                        }
                        done_ticket[rec as usize].store(q.ticket as u64 + 1, Ordering::Release);
                    }
                }
            })
        })
        .collect();
    let prods: Vec<_> = (0..lanes)
        .map(|rec| {
            let (raw, claim, mirror, done_ticket, hits) = (
                raw.clone(),
                claim.clone(),
                mirror.clone(),
                done_ticket.clone(),
                mirror_hits.clone(),
            );
            std::thread::spawn(move || {
                for round in 0..rounds {
                    let pos = claim.fetch_add(1, Ordering::Relaxed);
                    let m = &mirror[(pos & raw.mask) as usize];
                    if m.load(Ordering::Acquire) == pos {
                        hits.fetch_add(1, Ordering::Relaxed);
                    } else {
                        let t = Instant::now();
                        while raw.seq(pos).load(Ordering::Acquire) != pos {
                            assert!(
                                t.elapsed() < STALL,
                                "slot of position {pos} never handed back"
                            );
                            std::thread::yield_now();
                        }
                    }
                    let req = WfsRequest {
                        op: abi::WFS_OP_READ,
                        completion: rec as u32,
                        ticket: pos as u32,
                        offset: id_of(rec, round),
                        len: 4096 + round,
                        buf: rec * 7 + round,
                        ..Default::default()
                    };
                    // SAFETY: the slot is ours (mirror or sequence word) until the release
                    // store below publishes it.
                    unsafe { ring_write(&raw, pos, req) };
                    raw.seq(pos).store(pos + 1, Ordering::Release);
                    let t = Instant::now();
                    while done_ticket[rec as usize].load(Ordering::Acquire)
                        != (pos as u32) as u64 + 1
                    {
                        assert!(
                            t.elapsed() < STALL,
                            "request at position {pos} never completed"
                        );
                        std::thread::yield_now();
                    }
                    m.store(pos + raw.mask + 1, Ordering::Release);
                }
            })
        })
        .collect();
    for p in prods {
        p.join().unwrap();
    }
    stop.store(true, Ordering::Release);
    let mut seen = HashSet::new();
    for c in cons {
        for id in c.join().unwrap() {
            assert!(seen.insert(id), "request {id} consumed twice");
        }
    }
    assert_eq!(seen.len() as u64, lanes * rounds, "requests lost");
    mirror_hits.load(Ordering::Relaxed)
}

/// Longest a model lane waits for the ring before the test fails as stalled.
const STALL: Duration = Duration::from_secs(20);

/// Writes `req` into the slot of `pos`.
///
/// # Safety
/// The caller owns the slot (its sequence word or the mirror said so) and has not published it.
unsafe fn ring_write(raw: &RawRing, pos: u64, req: WfsRequest) {
    // SAFETY: per the caller's contract.
    unsafe { raw.req(pos).write_volatile(req) };
}

#[test]
fn hand_back_mirror_never_lets_a_lane_write_a_slot_still_being_read() {
    // Fewer lanes than slots, as on the GPU (records ≤ slots): the mirror answers most claims.
    let (claims, hits) = (48 * 2_000, run_with_mirror(64, 48, 2_000, 3));
    assert!(
        hits > claims / 2,
        "the mirror found {hits} of {claims} slots free"
    );
    // More lanes than slots: a lane often claims a slot whose previous request is still in the
    // ring, so a mirror word stored before DONE (a broken protocol) would let it overwrite one.
    run_with_mirror(32, 48, 2_000, 3);
    run_with_mirror(16, 100, 300, 2);
}
