//! GPU tests of the CUDA bulk path. They skip (with a message) on machines without a CUDA
//! driver; on the H100 machine they check every byte that lands in device memory or the file.
#![cfg(feature = "cuda")]

use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use warpfs::backend::cuda::{
    available, checksum, pattern, BulkConfig, BulkFile, ChecksumKernel, ColdReads, CudaBulk,
    Extent, StagingAlloc, Writes,
};

use common::{check, host, poisoned, POISON};

fn gpu() -> bool {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { cudarc::driver::sys::is_culib_present() } || !available() {
        println!("skipping: no CUDA driver on this machine");
        return false;
    }
    true
}

/// Small chunks and few threads so that small files still cut into many chunks and every
/// worker, buffer recycle and edge path runs.
fn engine(cold: ColdReads, writes: Writes) -> Arc<CudaBulk> {
    let cfg = BulkConfig {
        threads: 4,
        chunk_bytes: 64 * 1024,
        buffers_per_thread: 2,
        cold_reads: cold,
        writes,
        durable: true,
        ..BulkConfig::default()
    };
    Arc::new(CudaBulk::new(0, cfg).expect("engine"))
}

/// Like [`engine`] with blocking `pread` for uncached reads instead of io_uring.
fn pread_engine(cold: ColdReads) -> Arc<CudaBulk> {
    let cfg = BulkConfig {
        threads: 4,
        chunk_bytes: 64 * 1024,
        cold_reads: cold,
        read_engine: warpfs::engine::EngineChoice::Threads,
        ..BulkConfig::default()
    };
    Arc::new(CudaBulk::new(0, cfg).expect("engine"))
}

fn default_engine() -> Arc<CudaBulk> {
    static E: OnceLock<Arc<CudaBulk>> = OnceLock::new();
    E.get_or_init(|| Arc::new(CudaBulk::new(0, BulkConfig::default()).expect("engine")))
        .clone()
}

mod common;
use common::drop_from_cache;

fn dir() -> PathBuf {
    common::test_dir("cuda-bulk")
}

fn pattern_file(name: &str, len: usize) -> PathBuf {
    common::pattern_file(&dir(), name, len)
}

#[test]
fn random_ranges_warm_and_cold() {
    if !gpu() {
        return;
    }
    let size = 3 * 1024 * 1024 + 12345;
    let p = pattern_file("random", size);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for (cold, eng) in [
        (false, engine(ColdReads::Direct, Writes::Direct)),
        (true, engine(ColdReads::Direct, Writes::Direct)),
        (true, engine(ColdReads::Buffered, Writes::Direct)),
        (true, engine(ColdReads::Readahead, Writes::Direct)),
        (false, default_engine()),
        (true, pread_engine(ColdReads::Direct)),
        (true, pread_engine(ColdReads::Readahead)),
        (false, pread_engine(ColdReads::Readahead)),
    ] {
        let f = BulkFile::open(&p).unwrap();
        assert!(
            f.has_direct(),
            "this filesystem refuses O_DIRECT; the direct path is untested"
        );
        for i in 0..40 {
            if cold {
                drop_from_cache(&p);
            }
            let (off, len, dst_off) = common::random_read(&mut rng, i, size as u64);
            let mut d = poisoned(&eng, dst_off + len as usize + 100);
            let r = eng.read(&f, off, &mut d, dst_off as u64, len).unwrap();
            let want = (size as u64).saturating_sub(off).min(len);
            assert_eq!(r.bytes, want, "short count at offset {off} len {len}");
            assert_eq!(r.path, "pipeline");
            check(
                &host(&d),
                dst_off,
                want as usize,
                off,
                &format!("read {off}+{len} cold={cold}"),
            );
        }
    }
}

#[test]
fn whole_file_cold_uses_direct_warm_uses_cache() {
    if !gpu() {
        return;
    }
    let size = 8 * 1024 * 1024 + 4096 * 3 + 17;
    let p = pattern_file("whole", size);
    let eng = engine(ColdReads::Direct, Writes::Direct);
    let f = BulkFile::open(&p).unwrap();
    drop_from_cache(&p);
    let mut d = poisoned(&eng, size);
    let cold = eng.read(&f, 0, &mut d, 0, size as u64).unwrap();
    check(&host(&d), 0, size, 0, "cold whole file");
    println!("cold: {cold:?}");
    assert!(
        cold.direct_bytes > 0,
        "a cold read should use O_DIRECT: {cold:?}"
    );
    // Read it buffered once so it is cached, then a warm read must come from the cache only.
    let _ = std::fs::read(&p).unwrap();
    d.fill(POISON).unwrap();
    let warm = eng.read(&f, 0, &mut d, 0, size as u64).unwrap();
    check(&host(&d), 0, size, 0, "warm whole file");
    println!("warm: {warm:?}");
    assert_eq!(
        warm.cached_bytes, size as u64,
        "a warm read must be served by the page cache: {warm:?}"
    );
    assert_eq!(warm.direct_bytes, 0);
}

#[test]
fn empty_file_and_past_eof() {
    if !gpu() {
        return;
    }
    let eng = default_engine();
    let p = pattern_file("empty", 0);
    let f = BulkFile::open(&p).unwrap();
    let mut d = poisoned(&eng, 8192);
    assert_eq!(eng.read(&f, 0, &mut d, 0, 8192).unwrap().bytes, 0);
    assert_eq!(eng.read(&f, 1 << 40, &mut d, 0, 8192).unwrap().bytes, 0);
    assert_eq!(eng.read(&f, 0, &mut d, 0, 0).unwrap().bytes, 0);
    check(&host(&d), 0, 0, 0, "empty file");
    let p = pattern_file("small", 1000);
    let f = BulkFile::open(&p).unwrap();
    assert_eq!(eng.read(&f, 999, &mut d, 5, 4000).unwrap().bytes, 1);
    assert_eq!(eng.read(&f, 1000, &mut d, 5, 4000).unwrap().bytes, 0);
    check(&host(&d), 5, 1, 999, "last byte");
    // A destination range that does not fit is a typed error, not a crash.
    assert!(matches!(
        eng.read(&f, 0, &mut d, 8000, 1000),
        Err(warpfs::Error::Range(_))
    ));
}

#[test]
fn vectored_reads() {
    if !gpu() {
        return;
    }
    let size = 2 * 1024 * 1024 + 333;
    let p = pattern_file("vec", size);
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    for eng in [
        engine(ColdReads::Direct, Writes::Direct),
        default_engine(),
        pread_engine(ColdReads::Direct),
    ] {
        let f = BulkFile::open(&p).unwrap();
        let mut ext = Vec::new();
        let mut dst = 0u64;
        for i in 0..200 {
            let len = if i % 10 == 0 {
                rng.random_range(0..300_000)
            } else {
                rng.random_range(0..5000)
            };
            let off = rng.random_range(0..size as u64 + 1000);
            ext.push(Extent {
                file_offset: off,
                len,
                dst_offset: dst,
            });
            dst += len + rng.random_range(0..64);
        }
        drop_from_cache(&p);
        let mut d = poisoned(&eng, dst as usize + 10);
        let (r, per) = eng.read_vectored(&f, &mut d, &ext).unwrap();
        let h = host(&d);
        let mut total = 0;
        for (e, &n) in ext.iter().zip(&per) {
            let want = (size as u64).saturating_sub(e.file_offset).min(e.len);
            assert_eq!(n, want);
            total += n;
            let s = e.dst_offset as usize;
            assert_eq!(
                pattern::first_mismatch(&h[s..s + n as usize], e.file_offset),
                None,
                "extent {e:?}"
            );
            assert!(
                h[s + n as usize..s + e.len as usize]
                    .iter()
                    .all(|&x| x == POISON),
                "bytes past EOF written"
            );
        }
        assert_eq!(r.bytes, total);
    }
}

#[test]
fn device_to_file_writes_read_back() {
    if !gpu() {
        return;
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    for w in [Writes::Direct, Writes::Buffered] {
        for eng in [engine(ColdReads::Direct, w), default_engine()] {
            let p = dir().join(format!("write-{w:?}"));
            let out = BulkFile::create(&p).unwrap();
            // A device buffer holding the pattern of file offsets [0, n).
            let n = 1024 * 1024 + 5555;
            let mut src = eng.alloc(n).unwrap();
            let mut v = vec![0u8; n];
            pattern::fill(&mut v, 0);
            src.copy_from_host(0, &v).unwrap();
            // Whole buffer, then random sub-ranges rewritten in place at unaligned offsets.
            let r = eng.write(&out, 0, &src, 0, n as u64).unwrap();
            assert_eq!(r.bytes, n as u64);
            for _ in 0..20 {
                let a = rng.random_range(0..n as u64);
                let len = rng.random_range(0..(n as u64 - a).min(300_000));
                eng.write(&out, a, &src, a, len).unwrap();
            }
            // Extend past the end at an unaligned offset.
            let tail_off = n as u64 + 77;
            let t_len = 10_000;
            let tsrc = common::pattern_on_device(&eng, tail_off, t_len);
            eng.write(&out, tail_off, &tsrc, 0, t_len as u64).unwrap();
            drop(out);
            let back = std::fs::read(&p).unwrap();
            assert_eq!(back.len(), tail_off as usize + t_len);
            assert_eq!(pattern::first_mismatch(&back[..n], 0), None, "{w:?}");
            assert!(
                back[n..tail_off as usize].iter().all(|&x| x == 0),
                "hole must read as zeros"
            );
            assert_eq!(
                pattern::first_mismatch(&back[tail_off as usize..], tail_off),
                None
            );
            // And the bulk read path sees the same bytes.
            let f = BulkFile::open(&p).unwrap();
            let mut d = poisoned(&eng, n);
            assert_eq!(
                eng.read(&f, 0, &mut d, 0, n as u64).unwrap().bytes,
                n as u64
            );
            check(&host(&d), 0, n, 0, "read back");
        }
    }
}

#[test]
fn file_entry_and_background_transfer() {
    if !gpu() {
        return;
    }
    let size = 5 * 1024 * 1024 + 1;
    let p = pattern_file("entry", size);
    let table = warpfs::files::FileTable::new();
    let entry = table
        .register(&p, warpfs::OpenOptions::read_only().direct(true))
        .unwrap();
    let eng = default_engine();
    let mut d = poisoned(&eng, size);
    assert_eq!(
        eng.read(&*entry, 0, &mut d, 0, size as u64).unwrap().bytes,
        size as u64
    );
    check(&host(&d), 0, size, 0, "file entry");
    d.fill(POISON).unwrap();
    let t = eng.submit_read(entry.clone(), 3, d, size as u64);
    let (d, r) = t.wait().unwrap();
    assert_eq!(r.bytes, size as u64 - 3);
    check(&host(&d), 0, size - 3, 3, "background");
}

#[test]
fn gpu_checksum_matches_cpu() {
    if !gpu() {
        return;
    }
    let eng = default_engine();
    let mut k = ChecksumKernel::new(eng.context()).expect("NVRTC compiles the checksum kernel");
    let n = 3 * 1024 * 1024 + 13;
    let mut v = vec![0u8; n];
    pattern::fill(&mut v, 0);
    let mut d = poisoned(&eng, n + 64);
    d.copy_from_host(0, &v).unwrap();
    // Lengths around word boundaries, odd tails, and the whole (n is not a multiple of 8).
    for len in [0, 1, 7, 8, 9, 15, 4096, 4099, 1_000_003, n - 1, n] {
        assert_eq!(
            k.checksum(&d, len as u64).unwrap(),
            checksum::checksum(&v[..len]),
            "GPU and CPU checksums of {len} bytes differ"
        );
    }
    // The poison past the data counts when asked for: n + 64 bytes is not the pattern's sum.
    assert_ne!(
        k.checksum(&d, n as u64 + 64).unwrap(),
        checksum::checksum(&v),
        "poison must change the sum"
    );
    // One flipped byte, and one swapped pair of 4 KiB blocks, change the GPU's sum.
    d.copy_from_host(12_345, &[v[12_345] ^ 1]).unwrap();
    assert_ne!(k.checksum(&d, n as u64).unwrap(), checksum::checksum(&v));
    d.copy_from_host(0, &v).unwrap();
    d.copy_from_host(0, &v[4096..8192]).unwrap();
    d.copy_from_host(4096, &v[..4096]).unwrap();
    assert_ne!(k.checksum(&d, n as u64).unwrap(), checksum::checksum(&v));
    assert!(matches!(
        k.checksum(&d, n as u64 + 65),
        Err(warpfs::Error::Range(_))
    ));
    // End to end: a file read by the bulk path sums on the GPU as the CPU sums the file.
    let p = pattern_file("cksum", n);
    let f = BulkFile::open(&p).unwrap();
    let mut d = poisoned(&eng, n);
    assert_eq!(
        eng.read(&f, 0, &mut d, 0, n as u64).unwrap().bytes,
        n as u64
    );
    let (cpu, got) = checksum::checksum_file(&p, None, 4).unwrap();
    assert_eq!(got, n as u64);
    assert_eq!(k.checksum(&d, n as u64).unwrap(), cpu);
}

#[test]
fn shared_streams_and_huge_page_staging() {
    if !gpu() {
        return;
    }
    let size = 4 * 1024 * 1024 + 4096 + 5;
    let p = pattern_file("variants", size);
    for (streams, staging) in [
        (1, StagingAlloc::CudaHost),
        (2, StagingAlloc::HugePages),
        (0, StagingAlloc::HugePages),
    ] {
        let cfg = BulkConfig {
            threads: 4,
            chunk_bytes: 64 * 1024,
            buffers_per_thread: 2,
            streams,
            staging,
            ..BulkConfig::default()
        };
        let eng = CudaBulk::new(0, cfg).expect("engine");
        let f = BulkFile::open(&p).unwrap();
        let mut d = poisoned(&eng, size + 100);
        let r = eng.read(&f, 0, &mut d, 7, size as u64).unwrap();
        assert_eq!(r.bytes, size as u64);
        check(
            &host(&d),
            7,
            size,
            0,
            &format!("streams {streams} {staging:?}"),
        );
        let out = dir().join(format!("variants-w-{streams}-{staging:?}"));
        let of = BulkFile::create(&out).unwrap();
        eng.write(&of, 0, &d, 7, size as u64).unwrap();
        drop(of);
        let back = std::fs::read(&out).unwrap();
        assert_eq!(back.len(), size);
        assert_eq!(
            pattern::first_mismatch(&back, 0),
            None,
            "{streams} {staging:?}"
        );
    }
}

#[test]
fn gds_env_is_validated() {
    // Runs everywhere: the mode parser needs no GPU.
    assert_eq!(
        warpfs::backend::cuda::GdsMode::from_env().is_ok(),
        std::env::var("WARPFS_GDS").map_or(true, |v| ["", "auto", "on", "off", "0", "1"]
            .contains(&v.trim()))
    );
}
