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
