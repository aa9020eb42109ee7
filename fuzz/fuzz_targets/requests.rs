//! Request records fed to the daemon through a runtime's host channel.
//!
//! Input: up to 32 records of 49 bytes: one steering byte, then a raw `WfsRequest` (48 bytes).
//! Steering bits: 0 prefetch ring; 1 replace the handle by a registered one (bit 2: the
//! read-write file instead of the read-only one); 3 give the request its own slice of the data
//! region (offset by the raw `buf` mod 64); 4 clamp `len` to 8 KiB; 5 clamp `offset` to the
//! file; 6 make `op` one of the five real ops. Every request whose completion record is armed
//! (valid, unique index) must be answered within 10 s (requests nobody waits for, e.g. a
//! duplicate index, get buffers in the upper half of the data region, as they may still run
//! during the next input); valid reads of the read-only file must
//! return its exact bytes; the read-only file never changes. A panic here is a finding.
#![no_main]

mod common;

use common::*;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use warpfs::abi;
use warpfs::cache::CacheConfig;
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

struct Fixture {
    rt: Runtime,
    ro: u32,
    rw: u32,
    ro_path: std::path::PathBuf,
    rw_path: std::path::PathBuf,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let d = dir("requests");
        let ro_path = ro_file(&d);
        let rw_path = d.join("rw");
        std::fs::write(&rw_path, vec![0u8; 20_000]).unwrap();
        let rt = Runtime::new(RuntimeConfig {
            workers: 2,
            cache: CacheConfig {
                page_size: 4096,
                // Larger than the data region: a write that needs more pages than the cache
                // holds waits out the defer timeout (10 s) and fails with EBUSY (see
                // ROBUSTNESS.md), which would slow fuzzing to a crawl.
                capacity: 256 * 4096,
            },
            max_agents: 1,
            agent_queue_depth: 64,
            request_buffer: 8192,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let ro = rt.open(&ro_path, OpenOptions::read_only()).unwrap().raw();
        let rw = rt.open(&rw_path, OpenOptions::read_write()).unwrap().raw();
        Fixture {
            rt,
            ro,
            rw,
            ro_path,
            rw_path,
        }
    })
}

static ITER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

fuzz_target!(|data: &[u8]| {
    let fx = fixture();
    let ch = fx.rt.host_channel();
    let data_len = ch.data_len() as u64;
    let junk = data_len / 2;
    let mut used = std::collections::HashSet::new();
    // Tickets of armed requests are unique for the whole run (bit 31 set); the others (bit 31
    // clear) can never complete an armed record, not even one of a later input while they
    // are still being served.
    let iter = ITER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut armed = Vec::new();
    let mut batch = Vec::new();
    for (i, rec) in data.chunks_exact(49).take(32).enumerate() {
        let steer = rec[0];
        let mut req = request(&rec[1..]);
        req.ticket &= 0x7fff_ffff;
        if steer & 2 != 0 {
            req.handle = if steer & 4 != 0 { fx.rw } else { fx.ro };
        }
        if steer & 8 != 0 {
            req.buf = i as u64 * 8192 + req.buf % 64;
        }
        if steer & 16 != 0 {
            req.len %= 8192 - 64;
        }
        if steer & 32 != 0 {
            req.offset %= common::RO_LEN + 8192;
        }
        if steer & 64 != 0 {
            req.op = req.op % 5 + 1;
        }
        let mine = (req.completion as usize) < ch.completions.len() && used.insert(req.completion);
        if !mine && req.buf < junk {
            // Nobody waits for this request: it may still be copying into its buffer when the
            // next input runs, so it gets one in the upper half of the data region, which no
            // checked buffer uses.
            req.buf = junk + req.buf % junk;
        }
        if mine {
            req.ticket = 0x8000_0000 | (iter as u32 & 0x3ff_ffff) << 5 | i as u32;
            ch.completions.arm(req.completion, req.ticket);
            armed.push(i);
        }
        batch.push((req, steer & 1 != 0));
    }
    for (req, prefetch) in &batch {
        let ring = if *prefetch { &ch.prefetch } else { &ch.demand };
        ring.push_timeout(req, Duration::from_secs(10))
            .expect("the ring accepts requests (the daemon drains it)");
    }
    fx.rt.ring_doorbell();
    // Buffers of armed requests that overlap another request's buffer cannot be checked.
    let overlaps = |i: usize, r: &abi::WfsRequest| {
        batch.iter().enumerate().any(|(k, (o, _))| {
            k != i
                && o.buf < r.buf.saturating_add(r.len)
                && r.buf < o.buf.saturating_add(o.len)
                && (o.op == abi::WFS_OP_READ || o.op == abi::WFS_OP_WRITE)
        })
    };
    for &i in &armed {
        let req = &batch[i].0;
        let r = ch
            .completions
            .wait(req.completion, Some(Duration::from_secs(10)))
            .unwrap_or_else(|| panic!("request never answered (hang): {req:?}"));
        if valid_ro_read(req, fx.ro, data_len) {
            let expect = RO_LEN.saturating_sub(req.offset).min(req.len);
            assert_eq!(r, expect as i64, "read {req:?}");
            if expect > 0 && !overlaps(i, req) && req.buf + expect <= junk {
                let p = ch.data_range(req.buf, expect).unwrap();
                // SAFETY: bounds-checked slice of the data region; the daemon is done with it.
                let got = unsafe { std::slice::from_raw_parts(p, expect as usize) };
                for (k, &b) in got.iter().enumerate() {
                    assert_eq!(b, pat(req.offset + k as u64), "byte {k} of {req:?}");
                }
            }
        } else if (req.op == abi::WFS_OP_READ || req.op == abi::WFS_OP_WRITE)
            && req.len > 0
            && req.handle != fx.rw
            && req.handle != fx.ro
        {
            assert!(
                r < 0,
                "request on an unregistered handle succeeded: {req:?} -> {r}"
            );
        }
    }
    if iter % 4096 == 0 {
        let bytes = std::fs::read(&fx.ro_path).unwrap();
        assert!(
            bytes.len() as u64 == RO_LEN
                && bytes.iter().enumerate().all(|(i, &b)| b == pat(i as u64)),
            "the read-only file changed"
        );
        // Keep the scratch file small (writes at random offsets grow it, sparsely).
        let _ = std::fs::OpenOptions::new()
            .write(true)
            .open(&fx.rw_path)
            .and_then(|f| f.set_len(20_000));
    }
});
