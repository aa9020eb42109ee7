//! Property test: arbitrary request records published into a channel's rings (random op,
//! flags, handle, completion index, ticket, offset, length, buffer) never crash or hang the
//! daemon. Every request whose completion record was armed gets an answer; valid reads return
//! the right bytes; invalid ones get a negative errno; the files and memory outside the data
//! region are never written.

use proptest::prelude::*;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;
use warpfs::abi::{self, WfsRequest};
use warpfs::cache::CacheConfig;
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

const FILE_LEN: u64 = 100_000;
static VALID_READS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

fn pat(off: u64) -> u8 {
    (off.wrapping_mul(2654435761) >> 13) as u8
}

struct Fixture {
    rt: Runtime,
    ro: u32,
    path: std::path::PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let dir =
            Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("garbage-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("ro");
        std::fs::write(&path, (0..FILE_LEN).map(pat).collect::<Vec<_>>()).unwrap();
        let rt = Runtime::new(RuntimeConfig {
            workers: 2,
            cache: CacheConfig {
                page_size: 4096,
                capacity: 64 * 4096,
            },
            max_agents: 2,
            agent_queue_depth: 64,
            request_buffer: 16384,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let ro = rt.open(&path, OpenOptions::read_only()).unwrap().raw();
        Fixture { rt, ro, path }
    })
}

fn arb_request(ro: u32, records: u32, data_len: u64) -> impl Strategy<Value = (WfsRequest, bool)> {
    (
        prop_oneof![4 => Just(abi::WFS_OP_READ), 1 => Just(abi::WFS_OP_WRITE), 1 => 0u32..8, 1 => any::<u32>()],
        prop_oneof![4 => Just(0u32), 1 => any::<u32>()],
        prop_oneof![4 => Just(ro), 1 => Just(ro ^ (1 << 20)), 1 => any::<u32>()],
        prop_oneof![records / 2..records, any::<u32>()],
        any::<u32>(),
        prop_oneof![4 => 0..FILE_LEN + 8192, 1 => any::<u64>()],
        prop_oneof![4 => 0u64..20_000, 1 => any::<u64>()],
        prop_oneof![4 => 0..data_len, 1 => any::<u64>()],
        any::<bool>(),
    )
        .prop_map(|(op, flags, handle, completion, ticket, offset, len, buf, prefetch_ring)| {
            (WfsRequest { op, flags, handle, completion, ticket, reserved: 0, offset, len, buf }, prefetch_ring)
        })
}

#[test]
fn arbitrary_requests_are_answered_and_never_hurt() {
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 96,
        ..ProptestConfig::default()
    });
    let strategy = prop::collection::vec(arb_request(0, 128, 2 * 64 * 16384), 1..48);
    runner.run(&strategy, check_batch).unwrap();
    let n = VALID_READS.load(std::sync::atomic::Ordering::Relaxed);
    assert!(
        n >= 100,
        "the generator produced only {n} valid reads: it must exercise the success path too"
    );
}

fn check_batch(reqs: Vec<(WfsRequest, bool)>) -> Result<(), TestCaseError> {
    {
        let fx = fixture();
        let ch = fx.rt.host_channel();
        let data_len = ch.data_len() as u64;
        let mut armed = Vec::new();
        let mut used = std::collections::HashSet::new();
        let mut batch = Vec::new();
        for (i, (mut req, prefetch_ring)) in reqs.into_iter().enumerate() {
            // The strategy's handle slot 0 stands for "the registered file".
            if req.handle == 0 || req.handle == 1 << 20 {
                req.handle ^= fx.ro;
            }
            // In-range buffers get disjoint (often unaligned) slices of the second agent lane's
            // half of the data region (the other test's agent uses the first lane), so results
            // stay checkable.
            if req.buf < data_len {
                req.buf = data_len / 2 + i as u64 * 20_096 + req.buf % 64;
            }
            // Arm only records of the second lane (64..128), once each; others must be ignored
            // safely.
            let mine = (64..128).contains(&req.completion) && used.insert(req.completion);
            if mine {
                req.ticket = i as u32 + 1;
                ch.completions.arm(req.completion, req.ticket);
                armed.push(req);
            }
            // Poison the buffer the request names (when it is inside the data region).
            if let Some(p) = ch.data_range(req.buf, req.len.min(20_000)) {
                // SAFETY: bounds-checked part of the data region; no request is in flight.
                unsafe { std::ptr::write_bytes(p, 0xA5, req.len.min(20_000) as usize) };
            }
            batch.push((req, prefetch_ring));
        }
        for (req, prefetch_ring) in batch {
            let ring = if prefetch_ring {
                &ch.prefetch
            } else {
                &ch.demand
            };
            ring.push_timeout(&req, Duration::from_secs(5))
                .expect("ring accepts requests");
        }
        fx.rt.ring_doorbell();
        let mut valid_reads = 0;
        for req in &armed {
            let r = ch
                .completions
                .wait(req.completion, Some(Duration::from_secs(20)));
            prop_assert!(r.is_some(), "request {req:?} was never answered");
            let r = r.unwrap();
            let valid_read = req.op == abi::WFS_OP_READ
                && req.handle == fx.ro
                && req.flags == 0
                && req
                    .offset
                    .checked_add(req.len)
                    .is_some_and(|e| e <= abi::WFS_MAX_END)
                && req.buf.checked_add(req.len).is_some_and(|e| e <= data_len);
            if valid_read {
                valid_reads += 1;
                let expect = FILE_LEN.saturating_sub(req.offset).min(req.len);
                prop_assert_eq!(r, expect as i64, "read {:?}", req);
                if expect > 0 {
                    let p = ch.data_range(req.buf, expect).unwrap();
                    // SAFETY: bounds-checked; the daemon finished with this request.
                    let got = unsafe { std::slice::from_raw_parts(p, expect as usize) };
                    for (k, &b) in got.iter().enumerate() {
                        prop_assert_eq!(b, pat(req.offset + k as u64), "byte {} of {:?}", k, req);
                    }
                }
            } else if req.op == abi::WFS_OP_WRITE && req.len > 0 {
                prop_assert!(
                    r < 0,
                    "write on a read-only or bogus handle succeeded: {req:?} -> {r}"
                );
            } else if req.op == abi::WFS_OP_READ && req.len > 0 {
                prop_assert!(r < 0, "invalid read succeeded: {req:?} -> {r}");
            }
        }
        VALID_READS.fetch_add(valid_reads, std::sync::atomic::Ordering::Relaxed);
        // The file was never modified.
        let bytes = std::fs::read(&fx.path).unwrap();
        prop_assert!(bytes.iter().enumerate().all(|(i, &b)| b == pat(i as u64)));
    }
    Ok(())
}

#[test]
fn daemon_still_serves_after_garbage() {
    let fx = fixture();
    let f = fx.rt.open(&fx.path, OpenOptions::read_only()).unwrap();
    let mut agent = fx.rt.agent().unwrap();
    let mut buf = vec![0xA5u8; 5000];
    assert_eq!(agent.read(&f, 777, &mut buf).unwrap(), 5000);
    assert!(buf
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pat(777 + i as u64)));
}
