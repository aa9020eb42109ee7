//! End-to-end tests of the request path through the host backend: agents → rings → daemon →
//! cache → engine → files, with both engines forced in turn. Every byte read is checked
//! against the file's pattern (a function of the offset); buffers are poisoned before reads.

use rand::{Rng, SeedableRng};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use warpfs::cache::CacheConfig;
use warpfs::engine::{EngineChoice, EngineConfig};
use warpfs::{Error, OpenOptions, Runtime, RuntimeConfig};

const POISON: u8 = 0xA5;

/// Byte at file offset `off` of a pattern file.
fn pat(off: u64) -> u8 {
    (off ^ (off >> 8) ^ (off >> 16) ^ (off >> 24)).wrapping_mul(31) as u8
}

fn pattern(off: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| pat(off + i)).collect()
}

fn dir() -> PathBuf {
    // Under the target dir (a real disk filesystem: O_DIRECT works there, unlike tmpfs).
    let d =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("host-backend-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pattern_file(name: &str, len: u64) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, pattern(0, len as usize)).unwrap();
    p
}

fn runtime(
    engine: EngineChoice,
    page_size: usize,
    cache_pages: usize,
    write_back: bool,
) -> Runtime {
    Runtime::new(RuntimeConfig {
        workers: 2,
        cache: CacheConfig {
            page_size,
            capacity: page_size * cache_pages,
        },
        engine: EngineConfig {
            choice: engine,
            ..EngineConfig::default()
        },
        write_back,
        max_agents: 72,
        agent_queue_depth: 8,
        request_buffer: 64 * 1024,
        ..RuntimeConfig::default()
    })
    .unwrap()
}

const ENGINES: [EngineChoice; 2] = [EngineChoice::Threads, EngineChoice::Uring];

#[test]
fn sixty_four_agents_random_reads_match_the_pattern() {
    for engine in ENGINES {
        // File size not a multiple of the page size; cache much smaller than the file.
        let len = 3 * 1024 * 1024 + 1234;
        let path = pattern_file(&format!("rand-{engine:?}"), len);
        let rt = Arc::new(runtime(engine, 4096, 256, false));
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let threads: Vec<_> = (0..64u64)
            .map(|t| {
                let rt = rt.clone();
                let f = f.clone();
                std::thread::spawn(move || {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                    let mut agent = rt.agent().unwrap();
                    let mut buf = vec![0u8; 20000];
                    for _ in 0..60 {
                        let off = rng.random_range(0..len + 100);
                        let n = rng.random_range(0..buf.len());
                        buf.fill(POISON);
                        let got = agent.read(&f, off, &mut buf[..n]).unwrap();
                        let expect = (len.saturating_sub(off) as usize).min(n);
                        assert_eq!(got, expect, "short count at {off}+{n}");
                        assert!(
                            buf[..got] == pattern(off, got)[..],
                            "wrong bytes at {off}+{n}"
                        );
                        assert!(
                            buf[got..n].iter().all(|&b| b == POISON),
                            "bytes past the count were written"
                        );
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let st = rt.stats();
        assert!(st.cache.misses > 0 && st.cache.hits > 0, "{st:?}");
        assert!(
            st.cache.evictions > 0,
            "cache smaller than the file must evict: {st:?}"
        );
        assert_eq!(st.daemon.errors, 0, "{st:?}");
    }
}

#[test]
fn async_tickets_many_in_flight() {
    for engine in ENGINES {
        let len = 1 << 20;
        let path = pattern_file(&format!("async-{engine:?}"), len);
        let rt = runtime(engine, 4096, 64, false);
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let mut agent = rt.agent().unwrap();
        let offs: Vec<u64> = (0..agent.queue_depth() as u64)
            .map(|i| i * 12345 % (len - 4096))
            .collect();
        let tickets: Vec<_> = offs
            .iter()
            .map(|&o| agent.submit_read(&f, o, 4096).unwrap())
            .collect();
        // The queue is full now: one more is refused, not blocked on.
        assert!(agent.submit_read(&f, 0, 4096).is_err());
        for (t, &o) in tickets.into_iter().zip(&offs) {
            let mut buf = vec![POISON; 4096];
            assert_eq!(agent.wait_read(t, &mut buf).unwrap(), 4096);
            assert_eq!(buf, pattern(o, 4096));
        }
    }
}

#[test]
fn writes_then_reads_back_fsync_and_size() {
    for engine in ENGINES {
        for write_back in [false, true] {
            let len = 200_000u64;
            let path = pattern_file(&format!("rw-{engine:?}-{write_back}"), len);
            let rt = runtime(engine, 4096, 32, write_back);
            let f = rt.open(&path, OpenOptions::read_write()).unwrap();
            let mut agent = rt.agent().unwrap();
            let mut model = pattern(0, len as usize);
            let mut rng = rand::rngs::StdRng::seed_from_u64(7);
            for i in 0..200 {
                let off = rng.random_range(0..len - 70_000);
                let n = rng.random_range(1..70_000usize);
                // Warm some pages first so writes hit resident pages too.
                if i % 3 == 0 {
                    let mut tmp = vec![POISON; n];
                    agent.read(&f, off, &mut tmp).unwrap();
                    assert_eq!(tmp, model[off as usize..off as usize + n]);
                }
                let data: Vec<u8> = (0..n)
                    .map(|k| (k as u8).wrapping_mul(7).wrapping_add(i as u8))
                    .collect();
                assert_eq!(agent.write(&f, off, &data).unwrap(), n);
                model[off as usize..off as usize + n].copy_from_slice(&data);
                let mut back = vec![POISON; n];
                assert_eq!(agent.read(&f, off, &mut back).unwrap(), n);
                assert!(back == data, "read-back mismatch at {off}+{n}");
            }
            agent.fsync(&f).unwrap();
            assert_eq!(agent.size(&f).unwrap(), len);
            // After fsync, the file itself holds every acknowledged byte.
            assert!(
                std::fs::read(&path).unwrap() == model,
                "file differs after fsync"
            );
            // Extending write, then read across the old end of file.
            let tail = vec![9u8; 5000];
            agent.write(&f, len + 3000, &tail).unwrap();
            let mut back = vec![POISON; 9000];
            assert_eq!(agent.read(&f, len - 1000, &mut back).unwrap(), 9000);
            assert_eq!(&back[..1000], &model[len as usize - 1000..]);
            assert!(
                back[1000..4000].iter().all(|&b| b == 0),
                "hole must read as zeros"
            );
            assert!(back[4000..].iter().all(|&b| b == 9));
            rt.close(&f).unwrap();
        }
    }
}

#[test]
fn zero_byte_files_eof_and_zero_length() {
    for engine in ENGINES {
        let empty = pattern_file(&format!("empty-{engine:?}"), 0);
        let odd = pattern_file(&format!("odd-{engine:?}"), 4097);
        let rt = runtime(engine, 4096, 16, false);
        let e = rt.open(&empty, OpenOptions::read_only()).unwrap();
        let o = rt.open(&odd, OpenOptions::read_only()).unwrap();
        let mut agent = rt.agent().unwrap();
        let mut buf = vec![POISON; 10000];
        assert_eq!(agent.read(&e, 0, &mut buf).unwrap(), 0);
        assert_eq!(agent.size(&e).unwrap(), 0);
        assert_eq!(agent.read(&o, 4000, &mut buf).unwrap(), 97);
        assert_eq!(&buf[..97], &pattern(4000, 97)[..]);
        assert!(buf[97..].iter().all(|&b| b == POISON));
        assert_eq!(agent.read(&o, 1 << 40, &mut buf).unwrap(), 0);
        assert_eq!(agent.read(&o, 10, &mut buf[..0]).unwrap(), 0);
        let mut all = vec![POISON; 5000];
        assert_eq!(rt.read_bulk(&o, 0, &mut all).unwrap(), 4097);
        assert_eq!(&all[..4097], &pattern(0, 4097)[..]);
    }
}

#[test]
fn direct_io_files_serve_unaligned_ranges() {
    for engine in ENGINES {
        let len = 1_000_000u64;
        let path = pattern_file(&format!("direct-{engine:?}"), len);
        let rt = runtime(engine, 4096, 64, false);
        let f = rt
            .open(&path, OpenOptions::read_only().direct(true))
            .unwrap();
        let mut agent = rt.agent().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        for _ in 0..100 {
            let off = rng.random_range(0..len);
            let n = rng.random_range(1..300_000usize);
            let mut buf = vec![POISON; n];
            let got = agent.read(&f, off, &mut buf).unwrap();
            assert_eq!(got, ((len - off) as usize).min(n));
            assert!(
                buf[..got] == pattern(off, got)[..],
                "direct read wrong at {off}+{n}"
            );
        }
        let mut all = vec![POISON; len as usize + 17];
        assert_eq!(rt.read_bulk(&f, 13, &mut all).unwrap(), len as usize - 13);
        assert!(all[..len as usize - 13] == pattern(13, len as usize - 13)[..]);
    }
}

#[test]
fn bad_input_gets_clear_errors() {
    let rt = runtime(EngineChoice::Auto, 4096, 16, false);
    // Nonexistent file.
    let e = rt
        .open("/nonexistent/warpfs/file", OpenOptions::read_only())
        .unwrap_err();
    assert!(matches!(e, Error::Open { .. }), "{e}");
    // Permission denied: a file with no permissions, opened with an unprivileged filesystem
    // uid (so the check bites even when the tests run as root).
    let locked = pattern_file("locked", 10);
    std::fs::set_permissions(&locked, std::os::unix::fs::PermissionsExt::from_mode(0o000)).unwrap();
    let e = std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: setfsuid only changes this thread's filesystem uid.
            let old = unsafe { libc::setfsuid(65534) };
            let r = rt.open(&locked, OpenOptions::read_only());
            // SAFETY: as above, restoring the previous value.
            unsafe { libc::setfsuid(old as libc::uid_t) };
            r
        })
        .join()
        .unwrap()
    })
    .unwrap_err();
    assert!(
        matches!(&e, Error::Open { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied),
        "{e}"
    );
    assert!(e.to_string().contains("locked"), "{e}");
    let path = pattern_file("bad-input", 10_000);
    let ro = rt.open(&path, OpenOptions::read_only()).unwrap();
    let mut agent = rt.agent().unwrap();
    // Write on a read-only handle.
    let e = agent.write(&ro, 0, b"nope").unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBADF), "{e}");
    assert!(
        std::fs::read(&path).unwrap() == pattern(0, 10_000),
        "file changed"
    );
    // Invalid (closed) handle.
    let stale = ro.clone();
    rt.close(&ro).unwrap();
    let mut buf = vec![POISON; 100];
    let e = agent.read(&stale, 0, &mut buf).unwrap_err();
    assert_eq!(e.errno(), Some(libc::EBADF), "{e}");
    assert!(buf.iter().all(|&b| b == POISON));
    // Write-only handle cannot read.
    let wo = rt.open(&path, OpenOptions::write_only()).unwrap();
    assert_eq!(
        agent.read(&wo, 0, &mut buf).unwrap_err().errno(),
        Some(libc::EBADF)
    );
    // The runtime still works afterwards.
    let ok = rt.open(&path, OpenOptions::read_only()).unwrap();
    assert_eq!(agent.read(&ok, 100, &mut buf).unwrap(), 100);
    assert_eq!(buf, pattern(100, 100));
}

#[test]
fn unregister_while_requests_are_in_flight_is_safe() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let len = 4 << 20;
    let path = pattern_file("unregister", len);
    let rt = Arc::new(runtime(EngineChoice::Auto, 4096, 64, false));
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let served = Arc::new(AtomicUsize::new(0));
    let readers: Vec<_> = (0..4u64)
        .map(|t| {
            let (rt, f, served) = (rt.clone(), f.clone(), served.clone());
            std::thread::spawn(move || {
                let mut agent = rt.agent().unwrap();
                let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                for _ in 0..10_000_000 {
                    let off = rng.random_range(0..len - 4096);
                    let mut buf = vec![POISON; 4096];
                    match agent.read(&f, off, &mut buf) {
                        Ok(n) => {
                            assert_eq!(n, 4096);
                            assert!(buf == pattern(off, 4096));
                            served.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            assert_eq!(e.errno(), Some(libc::EBADF), "{e}");
                            return true;
                        }
                    }
                }
                false
            })
        })
        .collect();
    while served.load(Ordering::Relaxed) < 400 {
        std::thread::yield_now();
    }
    rt.close(&f).unwrap();
    for r in readers {
        assert!(r.join().unwrap(), "reads after close must fail with EBADF");
    }
}

#[test]
fn concurrent_misses_on_one_page_make_one_load() {
    for engine in ENGINES {
        let path = pattern_file(&format!("coalesce-{engine:?}"), 1 << 20);
        let rt = Arc::new(runtime(engine, 65536, 64, false));
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let hs: Vec<_> = (0..16u64)
            .map(|t| {
                let (rt, f, barrier) = (rt.clone(), f.clone(), barrier.clone());
                std::thread::spawn(move || {
                    let mut agent = rt.agent().unwrap();
                    // All 16 agents post 4 reads each inside page 3 (bytes 196608..262144).
                    let offs: Vec<u64> = (0..4).map(|k| 196_608 + t * 3000 + k * 700).collect();
                    barrier.wait();
                    let ts: Vec<_> = offs
                        .iter()
                        .map(|&o| agent.submit_read(&f, o, 1000).unwrap())
                        .collect();
                    for (t, o) in ts.into_iter().zip(offs) {
                        let mut buf = vec![POISON; 1000];
                        assert_eq!(agent.wait_read(t, &mut buf).unwrap(), 1000);
                        assert_eq!(buf, pattern(o, 1000));
                    }
                })
            })
            .collect();
        for h in hs {
            h.join().unwrap();
        }
        let st = rt.stats().cache;
        assert_eq!(
            st.loads, 1,
            "64 reads of one page must make exactly one file read: {st:?}"
        );
        assert_eq!(st.misses, 1, "{st:?}");
    }
}

#[test]
fn sequential_reads_trigger_readahead_that_gets_used() {
    let len = 8 << 20;
    let path = pattern_file("readahead", len);
    let rt = runtime(EngineChoice::Auto, 16384, 1024, false);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let mut agent = rt.agent().unwrap();
    let mut buf = vec![POISON; 16384];
    let mut off = 0;
    while off < len {
        buf.fill(POISON);
        assert_eq!(agent.read(&f, off, &mut buf).unwrap(), 16384);
        assert!(buf == pattern(off, 16384), "wrong bytes at {off}");
        off += 16384;
    }
    let st = rt.stats().cache;
    assert!(st.readahead_loaded > 0 && st.readahead_used > 0, "{st:?}");
    assert!(
        st.misses < (len / 16384) / 2,
        "readahead must turn most misses into hits: {st:?}"
    );
}

#[test]
fn a_sequential_reader_of_a_full_cache_gets_readahead() {
    // Small reads that miss a full cache skip it (most are not admitted); their misses must
    // still reach the readahead detector, or a stream that starts on a full cache never does.
    let ps = 4096u64;
    let path = pattern_file("readahead-full", 4096 * ps);
    let rt = runtime(EngineChoice::Auto, ps as usize, 256, false);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let mut agent = rt.agent().unwrap();
    let mut buf = vec![POISON; ps as usize];
    let mut read_page = |p: u64| {
        buf.fill(POISON);
        assert_eq!(agent.read(&f, p * ps, &mut buf).unwrap(), ps as usize);
        assert!(
            buf == pattern(p * ps, ps as usize),
            "wrong bytes in page {p}"
        );
    };
    // Fill the 256-page cache with random pages of the first 2000.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for _ in 0..1500 {
        read_page(rng.random_range(0..2000));
    }
    let before = rt.stats().cache;
    assert!(before.evictions > 0, "the cache should be full: {before:?}");
    for p in 3000..3400 {
        read_page(p);
    }
    let st = rt.stats().cache;
    let (used, misses) = (
        st.readahead_used - before.readahead_used,
        st.misses - before.misses,
    );
    assert!(
        used > 300 && misses < 50,
        "400 sequential pages: {used} read ahead and used, {misses} misses ({st:?})"
    );
}

#[test]
fn a_file_truncated_while_registered_reads_short_and_nothing_crashes() {
    // Small reads that miss a full cache are copied from a mapping of the file; a page of it
    // past a new, shorter end raises SIGBUS, which the daemon must absorb (reading the usual
    // way: end of file) instead of dying.
    let ps = 4096u64;
    let pages = 256u64;
    let path = pattern_file("truncated", pages * ps);
    let rt = runtime(EngineChoice::Auto, ps as usize, 16, false);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let mut agent = rt.agent().unwrap();
    let mut buf = vec![POISON; ps as usize];
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for _ in 0..400 {
        let p = rng.random_range(0..pages);
        buf.fill(POISON);
        assert_eq!(agent.read(&f, p * ps, &mut buf).unwrap(), ps as usize);
        assert!(
            buf == pattern(p * ps, ps as usize),
            "wrong bytes in page {p}"
        );
    }
    let half = pages / 2 * ps;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(half)
        .unwrap();
    for _ in 0..400 {
        let p = rng.random_range(0..pages);
        buf.fill(POISON);
        let n = agent.read(&f, p * ps, &mut buf).unwrap();
        if p * ps >= half {
            // Past the new end: nothing, unless the page is still in the host tier (a hit
            // keeps what was read before the truncation).
            assert!(n == 0 || n == ps as usize, "page {p}: {n} bytes");
        } else {
            assert_eq!(n, ps as usize, "page {p}");
        }
        if n > 0 {
            assert!(
                buf == pattern(p * ps, ps as usize),
                "wrong bytes in page {p}"
            );
        }
    }
}

#[test]
fn write_back_pages_survive_eviction_and_flush() {
    for engine in ENGINES {
        let len = 2 << 20;
        let path = pattern_file(&format!("writeback-{engine:?}"), len);
        // 16 pages of cache for a 2 MiB file: dirty pages must be written back to make room.
        let rt = runtime(engine, 4096, 16, true);
        let f = rt.open(&path, OpenOptions::read_write()).unwrap();
        let mut agent = rt.agent().unwrap();
        let mut model = pattern(0, len as usize);
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for i in 0..3000u32 {
            let page = rng.random_range(0..len / 4096);
            let at = page * 4096 + rng.random_range(0..4000);
            // Read first so the page is resident: the write then only dirties it.
            let mut tmp = vec![POISON; 64];
            agent.read(&f, at, &mut tmp).unwrap();
            assert_eq!(tmp, model[at as usize..at as usize + 64]);
            let data = [(i % 251) as u8; 64];
            agent.write(&f, at, &data).unwrap();
            model[at as usize..at as usize + 64].copy_from_slice(&data);
        }
        let st = rt.stats().cache;
        assert!(st.writebacks > 0 && st.evictions > 0, "{st:?}");
        rt.flush().unwrap();
        assert_eq!(rt.stats().cache.dirty_pages, 0);
        assert!(
            std::fs::read(&path).unwrap() == model,
            "file differs after flush"
        );
    }
}

/// Read-your-writes under pressure: writers on interleaved 8-byte slots of shared pages read
/// each write back at once, while readers keep loading and evicting pages of the same file
/// through an 8-page host tier (so loads on one worker race writes on the other). After
/// fsync, the file holds every slot's last value.
#[test]
fn writers_read_their_own_writes_while_readers_churn_the_cache() {
    for engine in ENGINES {
        for write_back in [false, true] {
            let len = 256 * 1024u64;
            let path = pattern_file(&format!("ryw-{engine:?}-{write_back}"), len);
            let rt = runtime(engine, 4096, 8, write_back);
            let f = rt.open(&path, OpenOptions::read_write()).unwrap();
            let (writers, slots_each, rounds) = (6u64, 512u64, 2000u64);
            let stop = std::sync::atomic::AtomicBool::new(false);
            let last: Vec<Vec<u64>> = std::thread::scope(|s| {
                for r in 0..3u64 {
                    let (rt, f, stop) = (&rt, &f, &stop);
                    s.spawn(move || {
                        let mut agent = rt.agent().unwrap();
                        let mut rng = rand::rngs::StdRng::seed_from_u64(100 + r);
                        let mut buf = vec![POISON; 4096];
                        while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                            // Half the reads on the writers' pages (the first 6), half anywhere.
                            let page = if rng.random_bool(0.5) {
                                rng.random_range(0..6)
                            } else {
                                rng.random_range(0..len / 4096)
                            };
                            buf.fill(POISON);
                            assert_eq!(agent.read(f, page * 4096, &mut buf).unwrap(), 4096);
                            // Every word: the pattern, or a value its own writer put there.
                            for (w, b) in buf.chunks_exact(8).enumerate() {
                                let off = page * 4096 + 8 * w as u64;
                                let (slot, v) =
                                    (off / 8, u64::from_le_bytes(b.try_into().unwrap()));
                                let (t, k) = (slot % writers, slot / writers);
                                let written = k < slots_each && v >> 48 == t && v & 0xFFFF == k;
                                assert!(
                                    written || b == &pattern(off, 8)[..],
                                    "reader: word at {off}"
                                );
                            }
                        }
                    });
                }
                let hs: Vec<_> = (0..writers)
                    .map(|t| {
                        let (rt, f) = (&rt, &f);
                        s.spawn(move || {
                            let mut agent = rt.agent().unwrap();
                            let mut rng = rand::rngs::StdRng::seed_from_u64(t);
                            let mut mine = vec![u64::MAX; slots_each as usize];
                            for i in 0..rounds {
                                let k = rng.random_range(0..slots_each);
                                // Slot k of writer t: 8 bytes at 8 × (k × writers + t).
                                let off = 8 * (k * writers + t);
                                let v = (t << 48) | (i << 16) | k;
                                assert_eq!(agent.write(f, off, &v.to_le_bytes()).unwrap(), 8);
                                let mut back = [0u8; 8];
                                assert_eq!(agent.read(f, off, &mut back).unwrap(), 8);
                                assert_eq!(
                                    u64::from_le_bytes(back),
                                    v,
                                    "writer {t} round {i}: slot {k} read back stale"
                                );
                                mine[k as usize] = v;
                            }
                            mine
                        })
                    })
                    .collect();
                let last = hs.into_iter().map(|h| h.join().unwrap()).collect();
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                last
            });
            let mut agent = rt.agent().unwrap();
            agent.fsync(&f).unwrap();
            let file = std::fs::read(&path).unwrap();
            for (t, mine) in last.iter().enumerate() {
                for (k, &v) in mine.iter().enumerate() {
                    let off = 8 * (k * writers as usize + t);
                    let want = if v == u64::MAX {
                        pattern(off as u64, 8)
                    } else {
                        v.to_le_bytes().to_vec()
                    };
                    assert_eq!(
                        &file[off..off + 8],
                        &want[..],
                        "slot {k} of writer {t} on disk"
                    );
                }
            }
            rt.close(&f).unwrap();
        }
    }
}

/// Read-modify-write of whole pages, the GPU page cache's write-back pattern: each agent owns
/// pages; it reads one whole (4 KiB), changes words in its copy, writes the whole page back,
/// sometimes writes or reads 8 bytes of it alone, and checks every read against its model.
/// Two daemon workers and a tier that holds the whole file: reads and writes of one page go
/// to either worker in turn.
#[test]
fn whole_page_read_modify_write_cycles_keep_every_change() {
    for engine in ENGINES {
        for cache_pages in [4096usize, 16] {
            let agents: u64 = std::env::var("WARPFS_TEST_RMW_AGENTS")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(16);
            let (pages_each, rounds) = (8u64, 400u64);
            let len = agents * pages_each * 4096;
            let path = pattern_file(&format!("rmw-{engine:?}-{cache_pages}"), len);
            let rt = runtime(engine, 4096, cache_pages, false);
            let f = rt.open(&path, OpenOptions::read_write()).unwrap();
            let models: Vec<(u64, Vec<u8>)> = std::thread::scope(|s| {
                let hs: Vec<_> = (0..agents)
                    .map(|a| {
                        let (rt, f) = (&rt, &f);
                        s.spawn(move || {
                            let mut agent = rt.agent().unwrap();
                            let mut rng = rand::rngs::StdRng::seed_from_u64(1000 + a);
                            let base = a * pages_each * 4096;
                            let mut model = pattern(base, (pages_each * 4096) as usize);
                            let mut buf = vec![POISON; 4096];
                            for i in 0..rounds {
                                let p = rng.random_range(0..pages_each);
                                let off = base + p * 4096;
                                let m = &mut model[(p * 4096) as usize..][..4096];
                                buf.fill(POISON);
                                assert_eq!(agent.read(f, off, &mut buf).unwrap(), 4096);
                                if let Some(at) = buf.iter().zip(m.iter()).position(|(x, y)| x != y)
                                {
                                    panic!("agent {a} round {i}: page {p} byte {at} stale");
                                }
                                for _ in 0..4 {
                                    let w = rng.random_range(0..512usize);
                                    let v = (a << 48) | (i << 16) | w as u64;
                                    buf[w * 8..][..8].copy_from_slice(&v.to_le_bytes());
                                }
                                assert_eq!(agent.write(f, off, &buf).unwrap(), 4096);
                                m.copy_from_slice(&buf);
                                if rng.random_bool(0.3) {
                                    let w = rng.random_range(0..512usize);
                                    let v = (a << 48) | (i << 16) | 0x8000 | w as u64;
                                    assert_eq!(
                                        agent
                                            .write(f, off + w as u64 * 8, &v.to_le_bytes())
                                            .unwrap(),
                                        8
                                    );
                                    m[w * 8..][..8].copy_from_slice(&v.to_le_bytes());
                                }
                                if rng.random_bool(0.3) {
                                    let w = rng.random_range(0..512usize);
                                    let mut b8 = [0u8; 8];
                                    assert_eq!(
                                        agent.read(f, off + w as u64 * 8, &mut b8).unwrap(),
                                        8
                                    );
                                    assert_eq!(
                                        &b8[..],
                                        &m[w * 8..][..8],
                                        "agent {a} round {i}: 8-byte read"
                                    );
                                }
                            }
                            agent.fsync(f).unwrap();
                            (base, model)
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            let file = std::fs::read(&path).unwrap();
            for (base, model) in models {
                let got = &file[base as usize..][..model.len()];
                if let Some(at) = got.iter().zip(&model).position(|(x, y)| x != y) {
                    panic!("file byte {} differs after fsync", base as usize + at);
                }
            }
            rt.close(&f).unwrap();
        }
    }
}

#[test]
fn load_into_cache_puts_a_file_in_the_tier_and_later_reads_hit_it() {
    for engine in ENGINES {
        // 3 MiB + 123 bytes: a short last page; a tier of 64 pages of 64 KiB holds it all.
        let len = (3 << 20) + 123;
        let path = pattern_file(&format!("load-{engine:?}"), len);
        let rt = runtime(engine, 65536, 64, false);
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let seen = std::sync::atomic::AtomicU64::new(0);
        let got = rt
            .load_into_cache(&f, 0, u64::MAX, 3, &|n| {
                seen.fetch_add(n, std::sync::atomic::Ordering::Relaxed);
            })
            .unwrap();
        assert_eq!(got, len, "bytes loaded");
        assert_eq!(seen.into_inner(), len, "progress told every byte");
        let before = rt.stats().cache;
        assert!(before.loads >= len.div_ceil(65536), "{before:?}");
        // Random reads now hit the tier only, and return the file's bytes.
        let mut agent = rt.agent().unwrap();
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..500 {
            let off = rng.random_range(0..len);
            let n = rng.random_range(1..=20_000usize);
            let mut buf = vec![POISON; n];
            let want = (len - off).min(n as u64) as usize;
            assert_eq!(agent.read(&f, off, &mut buf).unwrap(), want);
            assert_eq!(buf[..want], pattern(off, want)[..], "read at {off}");
            assert!(buf[want..].iter().all(|&b| b == POISON));
        }
        let after = rt.stats().cache;
        assert_eq!(after.misses, before.misses, "a loaded file misses nothing");
        assert_eq!(after.loads, before.loads, "no file reads after loading");
        // A range past the end loads nothing.
        assert_eq!(
            rt.load_into_cache(&f, len + 10, 100, 2, &|_| {}).unwrap(),
            0
        );
    }
}
