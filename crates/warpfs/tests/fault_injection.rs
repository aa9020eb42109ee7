//! Faults injected under the daemon (feature `fault-injection`): each hard fault (EIO, ENOSPC,
//! any errno) reaches exactly the request whose I/O it hit, as that request's error; no other
//! request is disturbed; nothing hangs (every wait is bounded by the agents' timeout); and
//! transient faults (EINTR, EAGAIN, short transfers) are retried below the daemon so requests
//! still get their full, exact bytes. Runs over both inner engines.
//!
//! Requests are laid out so that each touches its own cache pages (readahead off): a page load
//! then belongs to exactly one request, and the fault log maps every injection to it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use warpfs::cache::CacheConfig;
use warpfs::engine::fault::{Fault, FaultPlan, FaultRule};
use warpfs::engine::{EngineChoice, EngineConfig, IoKind};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

const UNIT: u64 = 4096;
const ENGINES: [EngineChoice; 2] = [EngineChoice::Threads, EngineChoice::Uring];
const EIO: i32 = libc::EIO;

fn pat(off: u64, generation: u8) -> u8 {
    ((off.wrapping_mul(0x9E37_79B9) >> 11) as u8) ^ generation.wrapping_mul(0x3B)
}

fn pattern(off: u64, len: usize, generation: u8) -> Vec<u8> {
    (0..len as u64).map(|i| pat(off + i, generation)).collect()
}

fn file(name: &str, units: u64) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("fault-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, pattern(0, (units * UNIT) as usize, 0)).unwrap();
    p
}

fn runtime(engine: EngineChoice, plan: &Arc<FaultPlan>) -> Runtime {
    runtime_with(engine, plan, false)
}

fn runtime_with(engine: EngineChoice, plan: &Arc<FaultPlan>, write_back: bool) -> Runtime {
    Runtime::new(RuntimeConfig {
        write_back,
        workers: 2,
        cache: CacheConfig {
            page_size: UNIT as usize,
            capacity: 512 * UNIT as usize,
        },
        engine: EngineConfig {
            choice: engine,
            ..EngineConfig::default()
        },
        readahead_pages: 0,
        max_agents: 40,
        agent_queue_depth: 8,
        request_buffer: 16384,
        // A hang shows up as a Timeout error (a test failure), never as a stuck test.
        wait_timeout: Duration::from_secs(60),
        engine_factory: Some(plan.factory()),
        ..RuntimeConfig::default()
    })
    .unwrap()
}

/// Reads unit `u` of every agent's list, one request each; returns `(unit, result)` per read
/// with the bytes checked against generation 0 on success.
fn read_units(
    rt: &Runtime,
    f: &warpfs::FileHandle,
    lists: &[Vec<u64>],
) -> Vec<(u64, Result<(), i32>)> {
    std::thread::scope(|s| {
        let hs: Vec<_> = lists
            .iter()
            .map(|units| {
                s.spawn(move || {
                    let mut agent = rt.agent().unwrap();
                    let mut out = Vec::new();
                    for &u in units {
                        let mut buf = vec![0xA5u8; UNIT as usize];
                        let r = match agent.read(f, u * UNIT, &mut buf) {
                            Ok(n) => {
                                assert_eq!(n, UNIT as usize, "unit {u}: short read");
                                assert!(
                                    buf == pattern(u * UNIT, UNIT as usize, 0),
                                    "unit {u}: wrong bytes"
                                );
                                Ok(())
                            }
                            Err(e) => Err(e.errno().unwrap_or_else(|| panic!("unit {u}: {e}"))),
                        };
                        out.push((u, r));
                    }
                    out
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// 16 agents × 4 units: agent `a` reads units `4a .. 4a+4`.
fn lists() -> Vec<Vec<u64>> {
    (0..16u64).map(|a| (4 * a..4 * a + 4).collect()).collect()
}

#[test]
fn eio_on_one_read_reaches_only_that_request() {
    for engine in ENGINES {
        let path = file(&format!("eio-read-{engine:?}"), 64);
        let plan = FaultPlan::new(
            vec![FaultRule::new(Fault::Eio)
                .kind(IoKind::Read)
                .path(&path)
                .offsets(37 * UNIT..38 * UNIT)
                .max_hits(1)],
            1,
        );
        let rt = runtime(engine, &plan);
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let results = read_units(&rt, &f, &lists());
        assert_eq!(results.len(), 64);
        for (u, r) in &results {
            let expect = if *u == 37 { Err(EIO) } else { Ok(()) };
            assert_eq!(*r, expect, "{engine:?}: unit {u}");
        }
        assert_eq!(plan.stats().failed, 1);
        // The failed load was not cached: the next read of the unit is served and exact.
        assert_eq!(read_units(&rt, &f, &[vec![37]]), vec![(37, Ok(()))]);
    }
}

/// 16 agents write units `4a .. 4a+4` (generation 1) and fsync; returns `(unit, result)` per
/// write and `(u64::MAX, result)` per fsync.
fn write_units(rt: &Runtime, f: &warpfs::FileHandle) -> Vec<(u64, Result<(), i32>)> {
    std::thread::scope(|s| {
        let hs: Vec<_> = lists()
            .into_iter()
            .map(|units| {
                s.spawn(move || {
                    let mut agent = rt.agent().unwrap();
                    let mut out = Vec::new();
                    for u in units {
                        let r = agent
                            .write(f, u * UNIT, &pattern(u * UNIT, UNIT as usize, 1))
                            .map(|n| assert_eq!(n, UNIT as usize))
                            .map_err(|e| e.errno().unwrap());
                        out.push((u, r));
                    }
                    out.push((u64::MAX, agent.fsync(f).map_err(|e| e.errno().unwrap())));
                    out
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    })
}

/// Checks the file holds generation 1 everywhere except `old` units (generation 0), on disk
/// and through the cache.
fn check_units(rt: &Runtime, f: &warpfs::FileHandle, path: &Path, old: &[u64], what: &str) {
    let bytes = std::fs::read(path).unwrap();
    let mut agent = rt.agent().unwrap();
    for u in 0..64u64 {
        let generation = if old.contains(&u) { 0 } else { 1 };
        let expect = pattern(u * UNIT, UNIT as usize, generation);
        let at = (u * UNIT) as usize..((u + 1) * UNIT) as usize;
        assert!(
            bytes[at] == expect[..],
            "{what}: unit {u} on disk holds the wrong bytes"
        );
        let mut buf = vec![0u8; UNIT as usize];
        assert_eq!(agent.read(f, u * UNIT, &mut buf).unwrap(), UNIT as usize);
        assert!(
            buf == expect,
            "{what}: unit {u} read through the cache is wrong"
        );
    }
}

fn enospc_rule(path: &Path) -> Arc<FaultPlan> {
    FaultPlan::new(
        vec![FaultRule::new(Fault::Enospc)
            .kind(IoKind::Write)
            .path(path)
            .offsets(21 * UNIT..22 * UNIT)
            .max_hits(1)],
        2,
    )
}

#[test]
fn enospc_on_one_write_reaches_only_that_write_and_moves_no_bytes() {
    for engine in ENGINES {
        for write_back in [false, true] {
            // Nothing is resident: in write-back mode too, writes go through to the file.
            let what = format!("{engine:?} write_back={write_back}");
            let path = file(&format!("enospc-{engine:?}-{write_back}"), 64);
            let plan = enospc_rule(&path);
            let rt = runtime_with(engine, &plan, write_back);
            let f = rt.open(&path, OpenOptions::read_write()).unwrap();
            let failed: Vec<_> = write_units(&rt, &f)
                .into_iter()
                .filter(|(_, r)| r.is_err())
                .collect();
            assert_eq!(failed, vec![(21, Err(libc::ENOSPC))], "{what}");
            rt.flush().unwrap();
            check_units(&rt, &f, &path, &[21], &what);
        }
    }
}

#[test]
fn enospc_on_a_dirty_page_write_back_is_reported_and_the_page_kept() {
    for engine in ENGINES {
        let what = format!("{engine:?}");
        let path = file(&format!("enospc-wb-{engine:?}"), 64);
        let plan = enospc_rule(&path);
        let rt = runtime_with(engine, &plan, true);
        let f = rt.open(&path, OpenOptions::read_write()).unwrap();
        // Make every page resident so that writes only dirty them.
        for (u, r) in read_units(&rt, &f, &lists()) {
            assert_eq!(r, Ok(()), "{what}: unit {u}");
        }
        let results = write_units(&rt, &f);
        let failed: Vec<_> = results.iter().filter(|(_, r)| r.is_err()).collect();
        // The write-back of unit 21 fails once: the fsync that carried it reports ENOSPC (if
        // the background write-back carried it, no request did, and it was retried).
        assert!(
            failed.len() <= 1
                && failed
                    .iter()
                    .all(|(u, r)| *u == u64::MAX && *r == Err(libc::ENOSPC)),
            "{what}: {failed:?}"
        );
        assert_eq!(plan.stats().failed, 1, "{what}: the fault must fire");
        // The page stayed dirty: the next flush writes it, and no acknowledged byte is lost.
        rt.flush().unwrap();
        check_units(&rt, &f, &path, &[], &what);
    }
}

#[test]
fn eio_on_fsync_reaches_that_fsync_only() {
    for engine in ENGINES {
        let a = file(&format!("fsync-a-{engine:?}"), 4);
        let b = file(&format!("fsync-b-{engine:?}"), 4);
        let plan = FaultPlan::new(
            vec![FaultRule::new(Fault::Eio)
                .kind(IoKind::Fsync)
                .path(&a)
                .max_hits(1)],
            3,
        );
        let rt = runtime(engine, &plan);
        let fa = rt.open(&a, OpenOptions::read_write()).unwrap();
        let fb = rt.open(&b, OpenOptions::read_write()).unwrap();
        let mut agent = rt.agent().unwrap();
        agent.write(&fa, 0, &[7u8; 100]).unwrap();
        agent.write(&fb, 0, &[7u8; 100]).unwrap();
        assert_eq!(agent.fsync(&fb).map_err(|e| e.errno()), Ok(()));
        assert_eq!(agent.fsync(&fa).map_err(|e| e.errno()), Err(Some(EIO)));
        // The fault fired once: the retry succeeds.
        assert_eq!(agent.fsync(&fa).map_err(|e| e.errno()), Ok(()));
        assert_eq!(plan.stats().failed, 1);
    }
}

#[test]
fn transient_faults_and_short_transfers_give_full_exact_results() {
    for engine in ENGINES {
        let path = file(&format!("transient-{engine:?}"), 16 * 16);
        let plan = FaultPlan::new(
            vec![
                FaultRule::new(Fault::Eintr { persistent: false }).probability(0.25),
                FaultRule::new(Fault::Eagain { persistent: false }).probability(0.25),
                FaultRule::new(Fault::Short(777)).probability(0.6),
            ],
            4,
        );
        let rt = runtime(engine, &plan);
        let f = rt.open(&path, OpenOptions::read_write()).unwrap();
        std::thread::scope(|s| {
            for a in 0..16u64 {
                let (rt, f) = (&rt, &f);
                s.spawn(move || {
                    use rand::{Rng, SeedableRng};
                    let mut rng = rand::rngs::StdRng::seed_from_u64(a);
                    let mut agent = rt.agent().unwrap();
                    // Each agent owns 16 units; a model of them tracks every write.
                    let base = a * 16 * UNIT;
                    let size = (16 * UNIT) as usize;
                    let mut model = pattern(base, size, 0);
                    for i in 0..40 {
                        let off = rng.random_range(0..size as u64 - 1);
                        let len = rng.random_range(1..=(size as u64 - off).min(20_000)) as usize;
                        if i % 2 == 0 {
                            let data = pattern(base + off, len, (i % 200 + 1) as u8);
                            let n = agent.write(f, base + off, &data).unwrap();
                            assert_eq!(n, len, "{engine:?}: short write");
                            model[off as usize..off as usize + len].copy_from_slice(&data);
                        } else {
                            let mut buf = vec![0xA5u8; len];
                            let n = agent.read(f, base + off, &mut buf).unwrap();
                            assert_eq!(n, len, "{engine:?}: short read");
                            assert!(
                                buf[..] == model[off as usize..off as usize + len],
                                "{engine:?}: wrong bytes at {}+{len}",
                                base + off
                            );
                        }
                    }
                    agent.fsync(f).unwrap();
                    let mut all = vec![0u8; size];
                    assert_eq!(agent.read(f, base, &mut all).unwrap(), size);
                    assert!(all == model, "{engine:?}: final contents of agent {a}");
                });
            }
        });
        let st = plan.stats();
        assert!(
            st.retries > 20 && st.short_attempts > 20,
            "{engine:?}: faults did not fire: {st:?}"
        );
        assert_eq!(st.failed, 0, "{engine:?}: {st:?}");
        assert_eq!(rt.stats().daemon.errors, 0);
    }
}

#[test]
fn persistent_eintr_fails_only_its_request_after_bounded_retries() {
    for engine in ENGINES {
        let path = file(&format!("persistent-{engine:?}"), 64);
        let plan = FaultPlan::new(
            vec![FaultRule::new(Fault::Eintr { persistent: true })
                .kind(IoKind::Read)
                .offsets(5 * UNIT..6 * UNIT)
                .max_hits(1)],
            5,
        );
        let rt = runtime(engine, &plan);
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        for (u, r) in read_units(&rt, &f, &lists()) {
            let expect = if u == 5 { Err(libc::EINTR) } else { Ok(()) };
            assert_eq!(r, expect, "{engine:?}: unit {u}");
        }
        assert!(plan.stats().retries >= 1000, "{:?}", plan.stats());
    }
}

#[test]
fn delayed_ops_do_not_disturb_others() {
    for engine in ENGINES {
        let path = file(&format!("delay-{engine:?}"), 64);
        let plan = FaultPlan::new(
            vec![FaultRule::new(Fault::Delay(Duration::from_millis(20))).probability(0.3)],
            6,
        );
        let rt = runtime(engine, &plan);
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        for (u, r) in read_units(&rt, &f, &lists()) {
            assert_eq!(r, Ok(()), "{engine:?}: unit {u}");
        }
        assert!(plan.stats().injected > 5, "{:?}", plan.stats());
    }
}

#[test]
fn random_hard_faults_map_one_to_one_to_failed_requests() {
    for engine in ENGINES {
        let path = file(&format!("random-{engine:?}"), 256);
        let plan = FaultPlan::new(
            vec![
                FaultRule::new(Fault::Eio)
                    .kind(IoKind::Read)
                    .probability(0.05),
                FaultRule::new(Fault::Delay(Duration::from_millis(2))).probability(0.05),
                FaultRule::new(Fault::Short(1000)).probability(0.2),
            ],
            7,
        );
        let rt = runtime(engine, &plan);
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let lists: Vec<Vec<u64>> = (0..16u64)
            .map(|a| (16 * a..16 * a + 16).collect())
            .collect();
        let results = read_units(&rt, &f, &lists);
        let injected: std::collections::BTreeSet<u64> = plan
            .injected()
            .iter()
            .filter(|i| i.fault == Fault::Eio)
            .map(|i| i.offset / UNIT)
            .collect();
        let failed: std::collections::BTreeSet<u64> = results
            .iter()
            .filter(|(_, r)| r.is_err())
            .map(|&(u, r)| {
                assert_eq!(r, Err(EIO), "{engine:?}: unit {u}");
                u
            })
            .collect();
        assert!(!injected.is_empty(), "{engine:?}: no fault fired");
        assert_eq!(
            failed, injected,
            "{engine:?}: failures must be exactly the injected loads"
        );
    }
}

/// A write-through of a cached page behind an earlier one that the engine holds back: the
/// second waits for the first (one file write per cached page in flight), so the cached page
/// and the file end alike, in the order the writes were made. (Without that, the cache took
/// the second's bytes last and the file the first's: the next read served bytes the file did
/// not have — on the H100 this lost the GPU page cache's writes.)
#[test]
fn a_write_behind_a_held_back_write_of_its_page_lands_after_it() {
    for engine in ENGINES {
        let path = file(&format!("overtake-{engine:?}"), 4);
        let plan = FaultPlan::new(
            vec![FaultRule::new(Fault::Delay(Duration::from_millis(500)))
                .kind(IoKind::Write)
                .nth(0)],
            1,
        );
        let rt = runtime(engine, &plan);
        let f = rt.open(&path, OpenOptions::read_write()).unwrap();
        let mut agent = rt.agent().unwrap();
        // Page 1 cached first, so both writes find it in the host tier.
        let mut buf = vec![0u8; UNIT as usize];
        assert_eq!(agent.read(&f, UNIT, &mut buf).unwrap(), UNIT as usize);
        assert_eq!(buf, pattern(UNIT, UNIT as usize, 0));
        let whole = vec![0xABu8; UNIT as usize];
        let word = [0xCDu8; 8];
        std::thread::scope(|s| {
            let first = s.spawn(|| {
                let mut a = rt.agent().unwrap();
                assert_eq!(a.write(&f, UNIT, &whole).unwrap(), UNIT as usize);
            });
            // This one comes while the whole-page write is held in the engine (500 ms).
            let t0 = std::time::Instant::now();
            while plan.stats().injected == 0 {
                assert!(
                    t0.elapsed() < Duration::from_secs(30),
                    "the first write never reached the engine"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
            let mut a = rt.agent().unwrap();
            assert_eq!(a.write(&f, UNIT + 80, &word).unwrap(), 8);
            first.join().unwrap();
        });
        assert_eq!(plan.stats().injected, 1, "{:?}", plan.stats());
        let mut want = whole.clone();
        want[80..88].copy_from_slice(&word);
        buf.fill(0x5A);
        assert_eq!(agent.read(&f, UNIT, &mut buf).unwrap(), UNIT as usize);
        assert!(
            buf == want,
            "{engine:?}: the cached page is not the writes in order"
        );
        let disk = std::fs::read(&path).unwrap();
        assert!(
            disk[UNIT as usize..2 * UNIT as usize] == want[..],
            "{engine:?}: the file is not the writes in order"
        );
    }
}
