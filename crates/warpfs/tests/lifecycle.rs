//! Lifecycle faults: the runtime dropped with requests in flight, a registered file deleted or
//! truncated underneath, io_uring unavailable. Each must end with every outcome delivered
//! (bytes or an error) and no hang: every wait is bounded (agents' `wait_timeout`, channel
//! timeouts), so a hang fails the test instead of stalling it.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use warpfs::cache::CacheConfig;
use warpfs::engine::{EngineChoice, EngineConfig};
use warpfs::{Error, OpenOptions, Runtime, RuntimeConfig};

const LEN: u64 = 1 << 20;
const CHILD_ENV: &str = "WARPFS_LIFECYCLE_CHILD";

fn pat(off: u64) -> u8 {
    (off.wrapping_mul(0x2545_F491) >> 9) as u8
}

fn pattern(off: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pat(off + i)).collect()
}

fn pattern_file(name: &str, len: u64) -> PathBuf {
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("lifecycle-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, pattern(0, len as usize)).unwrap();
    p
}

fn config(engine: EngineChoice) -> RuntimeConfig {
    RuntimeConfig {
        workers: 2,
        cache: CacheConfig {
            page_size: 4096,
            capacity: 64 * 4096,
        },
        engine: EngineConfig {
            choice: engine,
            ..EngineConfig::default()
        },
        max_agents: 16,
        agent_queue_depth: 8,
        request_buffer: 16384,
        wait_timeout: Duration::from_secs(30),
        ..RuntimeConfig::default()
    }
}

const ENGINES: [EngineChoice; 2] = [EngineChoice::Threads, EngineChoice::Uring];

/// Agents keep 8 reads each in flight while the runtime is dropped. Every request must end
/// with its exact bytes or `Shutdown`; requests posted afterwards fail at once with `Shutdown`.
/// Returns (requests served, requests failed with `Shutdown`, requests that ended after the
/// drop began — in flight at the drop).
fn drop_while_busy(rt: Runtime, path: &Path) -> (u64, u64, u64) {
    let f = rt.open(path, OpenOptions::read_only()).unwrap();
    let done = Arc::new(AtomicU64::new(0));
    let shut = Arc::new(AtomicU64::new(0));
    let late = Arc::new(AtomicU64::new(0));
    let dropping = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let threads: Vec<_> = (0..8u64)
        .map(|t| {
            let mut agent = rt.agent().unwrap();
            let (f, done, shut) = (f.clone(), done.clone(), shut.clone());
            let (late, dropping) = (late.clone(), dropping.clone());
            std::thread::spawn(move || {
                let mut q = std::collections::VecDeque::new();
                let mut k = t * 7919;
                loop {
                    while q.len() < agent.queue_depth() {
                        let off = k * 4099 % (LEN - 16384);
                        k += 1;
                        match agent.submit_read(&f, off, 16384) {
                            Ok(ticket) => q.push_back((ticket, off)),
                            Err(Error::Shutdown) => break,
                            Err(e) => panic!("submit: {e}"),
                        }
                    }
                    let Some((ticket, off)) = q.pop_front() else {
                        return; // shut down and nothing left in flight
                    };
                    let mut buf = vec![0xA5u8; 16384];
                    let outcome = agent.wait_read(ticket, &mut buf);
                    if dropping.load(Ordering::SeqCst) {
                        late.fetch_add(1, Ordering::Relaxed);
                    }
                    match outcome {
                        Ok(n) => {
                            assert_eq!(n, 16384);
                            assert!(buf == pattern(off, 16384), "wrong bytes at {off}");
                            done.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(Error::Shutdown) => {
                            shut.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            panic!("request at {off} ended with {e} (a hang shows as a timeout)")
                        }
                    }
                }
            })
        })
        .collect();
    // Drop once the agents are well under way (no timing: a count of served requests).
    while done.load(Ordering::Relaxed) < 200 {
        std::thread::yield_now();
    }
    dropping.store(true, Ordering::SeqCst);
    drop(rt);
    for t in threads {
        t.join().unwrap();
    }
    (
        done.load(Ordering::Relaxed),
        shut.load(Ordering::Relaxed),
        late.load(Ordering::Relaxed),
    )
}

#[test]
fn dropping_the_runtime_with_requests_in_flight_delivers_every_outcome() {
    let path = pattern_file("drop", LEN);
    let mut in_flight = 0;
    for engine in ENGINES {
        for _ in 0..3 {
            let (_, _, late) = drop_while_busy(Runtime::new(config(engine)).unwrap(), &path);
            in_flight += late;
        }
    }
    // Agents keep 64 requests outstanding: some must have been in flight at the drop.
    assert!(
        in_flight > 0,
        "no request was in flight at shutdown: the test proved nothing"
    );
}

/// With the fault engine, every op waits 20 ms: requests are certainly in flight at the drop
/// (their I/O is finished and delivered, or they fail with `Shutdown`).
#[cfg(feature = "fault-injection")]
#[test]
fn dropping_the_runtime_during_slow_io_delivers_every_outcome() {
    use warpfs::engine::fault::{Fault, FaultPlan, FaultRule};
    let path = pattern_file("drop-slow", LEN);
    for engine in ENGINES {
        let plan = FaultPlan::new(
            vec![FaultRule::new(Fault::Delay(Duration::from_millis(20)))],
            1,
        );
        let rt = Runtime::new(RuntimeConfig {
            engine_factory: Some(plan.factory()),
            ..config(engine)
        })
        .unwrap();
        let (done, shut, late) = drop_while_busy(rt, &path);
        assert!(
            done >= 200 && late > 0,
            "{engine:?}: done {done} shutdown {shut} late {late}"
        );
    }
}

#[test]
fn a_registered_file_deleted_underneath_is_still_served_exactly() {
    for engine in ENGINES {
        let path = pattern_file(&format!("deleted-{engine:?}"), LEN);
        let rt = Runtime::new(config(engine)).unwrap();
        let f = rt.open(&path, OpenOptions::read_write()).unwrap();
        let mut agent = rt.agent().unwrap();
        let mut buf = vec![0u8; 50_000];
        assert_eq!(agent.read(&f, 1000, &mut buf).unwrap(), 50_000);
        assert!(buf == pattern(1000, 50_000));
        std::fs::remove_file(&path).unwrap();
        // A new file at the same path must not be what the handle reaches.
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        for off in [0u64, 1000, 300_000, LEN - 50_000] {
            buf.fill(0xA5);
            assert_eq!(
                agent.read(&f, off, &mut buf).unwrap(),
                50_000,
                "{engine:?} at {off}"
            );
            assert!(
                buf == pattern(off, 50_000),
                "{engine:?}: wrong bytes at {off}"
            );
        }
        assert_eq!(agent.size(&f).unwrap(), LEN);
        agent.write(&f, 0, &[1u8; 10]).unwrap();
        agent.fsync(&f).unwrap();
        assert_eq!(
            std::fs::read(&path).unwrap(),
            vec![0u8; 4096],
            "{engine:?}: wrote to the new file"
        );
    }
}

/// A file truncated underneath: reads of what is left are exact; reads past the new end return
/// short counts (through the cache too, for pages never cached); nothing hangs.
#[test]
fn a_registered_file_truncated_underneath_gives_short_counts_never_wrong_bytes() {
    for engine in ENGINES {
        let path = pattern_file(&format!("truncated-{engine:?}"), LEN);
        let rt = Runtime::new(config(engine)).unwrap();
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let mut agent = rt.agent().unwrap();
        let cut = 300_001u64;
        std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(cut)
            .unwrap();
        assert_eq!(agent.size(&f).unwrap(), cut);
        let mut buf = vec![0u8; 40_000];
        for off in [
            0u64,
            cut - 20_000,
            cut - 1,
            cut,
            cut + 5,
            LEN - 40_000,
            LEN + 7,
        ] {
            buf.fill(0xA5);
            let n = agent.read(&f, off, &mut buf).unwrap();
            let expect = cut.saturating_sub(off).min(40_000) as usize;
            assert_eq!(n, expect, "{engine:?}: count at {off}");
            assert!(
                buf[..n] == pattern(off, n)[..],
                "{engine:?}: wrong bytes at {off}"
            );
            assert!(
                buf[n..].iter().all(|&b| b == 0xA5),
                "{engine:?}: bytes past the count at {off}"
            );
        }
        // Concurrent readers while the file shrinks further: counts never exceed what the file
        // held at some point, bytes are always the file's.
        let rt = Arc::new(rt);
        let readers: Vec<_> = (0..4u64)
            .map(|t| {
                let (rt, f) = (rt.clone(), f.clone());
                std::thread::spawn(move || {
                    let mut agent = rt.agent().unwrap();
                    let mut buf = vec![0u8; 20_000];
                    for i in 0..200u64 {
                        let off = (t * 104_729 + i * 7_919) % cut;
                        let n = agent.read(&f, off, &mut buf).unwrap();
                        assert!(n <= 20_000 && off + n as u64 <= cut, "{off}+{n}");
                        assert!(buf[..n] == pattern(off, n)[..], "wrong bytes at {off}");
                    }
                })
            })
            .collect();
        let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        for k in 1..=10u64 {
            file.set_len(cut - k * 25_000).unwrap();
        }
        for r in readers {
            r.join().unwrap();
        }
    }
}

/// Pages cached before an outside truncation are served from the cache after it: a read past
/// the new end returns the old bytes instead of a short count. warpfs does not watch for
/// changes made by others; this documents the gap (see ROBUSTNESS.md).
#[test]
#[ignore = "known gap: the host cache does not see truncations made outside warpfs"]
fn cached_pages_past_an_outside_truncation_are_not_served() {
    let path = pattern_file("truncated-cached", LEN);
    let rt = Runtime::new(config(EngineChoice::Threads)).unwrap();
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let mut agent = rt.agent().unwrap();
    let mut buf = vec![0u8; 16384];
    assert_eq!(agent.read(&f, 0, &mut buf).unwrap(), 16384);
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4096)
        .unwrap();
    assert_eq!(agent.read(&f, 0, &mut buf).unwrap(), 4096);
}

/// Child side of the engine-fallback tests: runs only when the parent set `CHILD_ENV`.
#[test]
fn engine_child() {
    let Ok(choice) = std::env::var(CHILD_ENV) else {
        return;
    };
    let choice = match choice.as_str() {
        "auto" => EngineChoice::Auto,
        "uring" => EngineChoice::Uring,
        _ => EngineChoice::Threads,
    };
    let path = pattern_file("child", 100_000);
    let rt = Runtime::new(config(choice)).unwrap();
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let mut agent = rt.agent().unwrap();
    let mut buf = vec![0u8; 100_000];
    assert_eq!(agent.read(&f, 0, &mut buf).unwrap(), 100_000);
    assert!(buf == pattern(0, 100_000));
    println!("\nENGINE={}", rt.engine_name());
}

/// Runs `engine_child` in a fresh process (the engine probe runs once per process) with `env`;
/// returns the engine it ran.
fn child_engine(choice: &str, env: &[(&str, &str)]) -> String {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "engine_child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, choice)
        .env_remove("WARPFS_IO_ENGINE");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "child ({choice}, {env:?}) failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .find_map(|l| l.strip_prefix("ENGINE="))
        .unwrap_or_else(|| panic!("child printed no engine: {stdout}"))
        .to_string()
}

#[test]
fn forcing_the_thread_engine_through_the_environment_is_honoured() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    assert_eq!(
        child_engine("auto", &[("WARPFS_IO_ENGINE", "threads")]),
        "threads"
    );
    assert_eq!(child_engine("threads", &[]), "threads");
}

/// io_uring setup failing (as with `kernel.io_uring_disabled` or seccomp): both an explicit
/// request for io_uring and the automatic choice fall back to the thread pool, and serve.
#[cfg(feature = "fault-injection")]
#[test]
fn io_uring_setup_failure_falls_back_to_threads() {
    if std::env::var(CHILD_ENV).is_ok() {
        return;
    }
    use warpfs::engine::fault::URING_SETUP_ENV;
    for errno in ["EPERM", "ENOSYS", "EINVAL"] {
        assert_eq!(
            child_engine("uring", &[(URING_SETUP_ENV, errno)]),
            "threads",
            "{errno}"
        );
        assert_eq!(
            child_engine("auto", &[(URING_SETUP_ENV, errno)]),
            "threads",
            "{errno}"
        );
        let forced = [(URING_SETUP_ENV, errno), ("WARPFS_IO_ENGINE", "uring")];
        assert_eq!(child_engine("auto", &forced), "threads", "{errno}");
    }
    // Without the injected failure this machine's io_uring is used when it works.
    let normal = child_engine("uring", &[]);
    assert!(normal == "uring" || normal == "threads", "{normal}");
}

/// A write needing more cache pages than the cache holds (write-through mode) goes straight to
/// the file. (It used to wait for pages until `defer_timeout` and fail with EBUSY; found by the
/// `requests` fuzz target, see ROBUSTNESS.md.)
#[test]
fn a_write_larger_than_the_cache_succeeds() {
    let path = pattern_file("big-write", LEN);
    let rt = Runtime::new(RuntimeConfig {
        cache: CacheConfig {
            page_size: 4096,
            capacity: 16 * 4096,
        },
        request_buffer: 128 * 1024,
        ..config(EngineChoice::Threads)
    })
    .unwrap();
    let f = rt.open(&path, OpenOptions::read_write()).unwrap();
    let mut agent = rt.agent().unwrap();
    let data = vec![7u8; 128 * 1024];
    assert_eq!(agent.write(&f, 4096, &data).unwrap(), data.len());
    let mut back = vec![0xA5u8; data.len()];
    assert_eq!(agent.read(&f, 4096, &mut back).unwrap(), data.len());
    assert!(back == data, "read-back after an uncached write differs");
}

/// Write-back cache full of dirty pages: a read of another page must get one (the daemon
/// writes dirty pages back to make room). The daemon wrote back only when a round planned
/// nothing, but a request waiting for pages is planned again every round: it starved until
/// `defer_timeout` (10 s) and failed with EBUSY. Found by the soak (see ROBUSTNESS.md).
#[test]
fn a_cache_full_of_dirty_pages_still_serves_new_pages() {
    let path = pattern_file("wb-full", LEN);
    let rt = Runtime::new(RuntimeConfig {
        write_back: true,
        readahead_pages: 0,
        // One worker: with two, the idle one wrote back for the busy one; the bug needs every
        // worker to have a request waiting for pages (as under load).
        workers: 1,
        cache: CacheConfig {
            page_size: 4096,
            capacity: 64 * 4096,
        },
        request_buffer: 64 * 1024,
        ..config(EngineChoice::Threads)
    })
    .unwrap();
    let f = rt.open(&path, OpenOptions::read_write()).unwrap();
    let mut agent = rt.agent().unwrap();
    // Make all 64 pages resident, then dirty every one of them.
    let mut buf = vec![0u8; 64 * 4096];
    assert_eq!(agent.read(&f, 0, &mut buf).unwrap(), buf.len());
    let data = vec![0x5Au8; 64 * 4096];
    assert_eq!(agent.write(&f, 0, &data).unwrap(), data.len());
    // Another page: it needs a victim, and every page is dirty.
    let mut one = vec![0u8; 4096];
    assert_eq!(agent.read(&f, 512 * 1024, &mut one).unwrap(), 4096);
    assert!(one == pattern(512 * 1024, 4096));
    rt.flush().unwrap();
    let bytes = std::fs::read(&path).unwrap();
    assert!(bytes[..64 * 4096].iter().all(|&b| b == 0x5A));
}
