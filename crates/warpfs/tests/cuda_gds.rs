//! GPU tests of the cuFile (GPUDirect Storage) path of the CUDA bulk engine; every byte read or
//! written is checked. They skip (with a message) without a CUDA driver.
//!
//! - With cuFile's calls emulated (`GdsMode::Emulated`, feature `fault-injection`): warpfs's
//!   side of the path — aligned middles through the handle, unaligned edges through the
//!   pipeline, short counts at end of file — on any CUDA machine.
//! - With real cuFile (`WARPFS_GDS=on` semantics), where `libcufile` opens and registers files;
//!   compat mode is allowed for this process (a `cufile.json` named by `CUFILE_ENV_PATH_JSON`).
//!   Where it cannot (the H100 machine's container has no udev, so cuFile cannot read volume
//!   attributes and refuses every file), the test checks that `on` fails with a clear error.
#![cfg(feature = "cuda")]

use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::sync::OnceLock;
use warpfs::backend::cuda::gds;
use warpfs::backend::cuda::{available, pattern, BulkConfig, BulkFile, CudaBulk, GdsMode};

mod common;
use common::{check, drop_from_cache, poisoned, POISON};

fn dir() -> PathBuf {
    common::test_dir("cuda-gds")
}

/// Whether a CUDA driver is here. The first call points cuFile at a config that allows its
/// compat mode (before anything in the process opens the cuFile driver).
fn gpu() -> bool {
    static READY: OnceLock<bool> = OnceLock::new();
    *READY.get_or_init(|| {
        // SAFETY: only tries to dlopen libcuda.
        if !(unsafe { cudarc::driver::sys::is_culib_present() } && available()) {
            println!("skipping: no CUDA driver on this machine");
            return false;
        }
        if std::env::var_os("CUFILE_ENV_PATH_JSON").is_none() {
            let cfg = dir().join("cufile.json");
            std::fs::write(
                &cfg,
                r#"{ "logging": { "level": "ERROR" }, "properties": { "allow_compat_mode": true } }"#,
            )
            .unwrap();
            // Set once, before any thread of this process opens the cuFile driver.
            std::env::set_var("CUFILE_ENV_PATH_JSON", &cfg);
        }
        true
    })
}

/// Why real cuFile cannot take files here (`None`: it can). Probes by registering a file.
fn cufile_refusal() -> Option<String> {
    static WHY: OnceLock<Option<String>> = OnceLock::new();
    WHY.get_or_init(|| {
        let s = gds::support();
        println!("{}", s.summary);
        if !s.driver_open {
            return Some(s.summary.clone());
        }
        let p = pattern_file("probe", 8192);
        let f = std::fs::File::open(&p).unwrap();
        use std::os::fd::AsRawFd;
        gds::GdsHandle::register(f.as_raw_fd())
            .err()
            .map(|e| e.to_string())
    })
    .clone()
}

fn engine(mode: GdsMode) -> CudaBulk {
    let cfg = BulkConfig {
        threads: 4,
        chunk_bytes: 256 * 1024,
        gds: Some(mode),
        ..BulkConfig::default()
    };
    CudaBulk::new(0, cfg).expect("engine")
}

fn pattern_file(name: &str, len: usize) -> PathBuf {
    common::pattern_file(&dir(), name, len)
}

/// Whether `[off, off + len)` of a file of `size` bytes has a whole aligned page inside.
fn has_aligned_middle(off: u64, len: u64, size: u64) -> bool {
    let end = (off + len).min(size);
    off.div_ceil(4096) * 4096 + 4096 <= end
}

/// Random ranges (aligned, unaligned, across the end) into poisoned buffers, warm and cold,
/// every byte checked; ranges with a whole aligned page must move bytes through the handle.
fn reads_every_byte_checked(mode: GdsMode) {
    let size = 3 * 1024 * 1024 + 12345;
    let p = pattern_file(&format!("reads-{mode:?}"), size);
    let eng = engine(mode);
    let f = BulkFile::open(&p).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut through_cufile = 0u64;
    for i in 0..48 {
        if i % 2 == 1 {
            drop_from_cache(&p);
        }
        let (off, len, dst_off) = common::random_read(&mut rng, i, size as u64);
        let mut d = poisoned(&eng, dst_off + len as usize + 100);
        let r = eng.read(&f, off, &mut d, dst_off as u64, len).unwrap();
        let want = (size as u64).saturating_sub(off).min(len);
        assert_eq!(r.bytes, want, "count of read {off}+{len}");
        check(
            &common::host(&d),
            dst_off,
            want as usize,
            off,
            &format!("read {off}+{len}"),
        );
        if has_aligned_middle(off, len, size as u64) {
            assert!(
                r.gds_bytes > 0,
                "read {off}+{len} has an aligned page but cuFile moved none"
            );
            assert!(r.path.starts_with("cufile"), "path {}", r.path);
        } else {
            assert_eq!(r.gds_bytes, 0);
        }
        assert!(r.gds_bytes <= r.bytes);
        through_cufile += r.gds_bytes;
    }
    assert!(through_cufile > 0);
    // Past the end: nothing, and no error.
    let mut d = eng.alloc(4096).unwrap();
    let r = eng.read(&f, size as u64 + 4096, &mut d, 0, 4096).unwrap();
    assert_eq!(r.bytes, 0);
}

/// A whole buffer, random rewrites over other bytes, an extension past the end at an unaligned
/// offset: the file read back must hold exactly what was written.
fn writes_read_back(mode: GdsMode) {
    let eng = engine(mode);
    let p = dir().join(format!("writes-{mode:?}"));
    let out = BulkFile::create(&p).unwrap();
    let n = 2 * 1024 * 1024 + 777;
    let mut v = vec![0u8; n];
    pattern::fill(&mut v, 0);
    let mut src = eng.alloc(n).unwrap();
    src.copy_from_host(0, &v).unwrap();
    let r = eng.write(&out, 0, &src, 0, n as u64).unwrap();
    assert_eq!(r.bytes, n as u64);
    assert_eq!(
        r.gds_bytes,
        n as u64 & !4095,
        "every aligned byte goes through cuFile"
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(5);
    // Random sub-ranges rewritten over a file first filled with something else.
    let junk = vec![0xEEu8; n];
    std::fs::write(&p, &junk).unwrap();
    let mut want = junk.clone();
    for _ in 0..24 {
        let a = rng.random_range(0..n as u64);
        let len = rng.random_range(0..(n as u64 - a).min(400_000));
        eng.write(&out, a, &src, a, len).unwrap();
        want[a as usize..(a + len) as usize].copy_from_slice(&v[a as usize..(a + len) as usize]);
    }
    // Extend past the end at an unaligned offset.
    let tail_off = n as u64 + 4097;
    let t_len = 70_000;
    let tsrc = common::pattern_on_device(&eng, tail_off, t_len);
    eng.write(&out, tail_off, &tsrc, 0, t_len as u64).unwrap();
    drop(out);
    let back = std::fs::read(&p).unwrap();
    assert_eq!(back.len(), tail_off as usize + t_len);
    if let Some(i) = back[..n].iter().zip(&want).position(|(a, b)| a != b) {
        panic!("byte {i} after the rewrites is wrong");
    }
    assert!(
        back[n..tail_off as usize].iter().all(|&x| x == 0),
        "hole must read as zeros"
    );
    assert_eq!(
        pattern::first_mismatch(&back[tail_off as usize..], tail_off),
        None
    );
}

#[test]
fn gds_auto_uses_cufile_only_where_it_has_dma() {
    if !gpu() {
        return;
    }
    let size = 4 * 1024 * 1024;
    let p = pattern_file("auto", size);
    let eng = engine(GdsMode::Auto);
    let f = BulkFile::open(&p).unwrap();
    let s = gds::support();
    for cold in [false, true] {
        if cold {
            drop_from_cache(&p);
        }
        let mut d = eng.alloc(size).unwrap();
        d.fill(POISON).unwrap();
        let r = eng.read(&f, 0, &mut d, 0, size as u64).unwrap();
        assert_eq!(r.bytes, size as u64);
        let mut h = vec![0u8; size];
        d.copy_to_host(0, &mut h).unwrap();
        assert_eq!(pattern::first_mismatch(&h, 0), None, "cold={cold}");
        if !s.direct_dma() {
            // No nvidia-fs, no P2PDMA: auto never takes cuFile, and says why.
            assert_eq!(r.gds_bytes, 0);
            assert_eq!(r.path, "pipeline");
            assert_eq!(r.path_reason, s.summary);
        } else if !cold {
            assert_eq!(r.gds_bytes, 0, "warm data must come from the page cache");
        }
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn emulated_cufile_reads_every_byte_checked() {
    if gpu() {
        reads_every_byte_checked(GdsMode::Emulated);
    }
}

#[cfg(feature = "fault-injection")]
#[test]
fn emulated_cufile_writes_read_back() {
    if gpu() {
        writes_read_back(GdsMode::Emulated);
    }
}

#[test]
fn cufile_reads_every_byte_checked() {
    if !gpu() {
        return;
    }
    match cufile_refusal() {
        None => reads_every_byte_checked(GdsMode::On),
        Some(why) => println!("skipping real cuFile reads: {why}"),
    }
}

#[test]
fn cufile_writes_read_back() {
    if !gpu() {
        return;
    }
    match cufile_refusal() {
        None => writes_read_back(GdsMode::On),
        Some(why) => println!("skipping real cuFile writes: {why}"),
    }
}

#[test]
fn gds_on_fails_clearly_where_cufile_cannot_take_the_file() {
    if !gpu() || cufile_refusal().is_none() {
        return;
    }
    let p = pattern_file("refused", 10_000);
    let f = BulkFile::open(&p).unwrap();
    let msg = match CudaBulk::new(
        0,
        BulkConfig {
            gds: Some(GdsMode::On),
            ..BulkConfig::default()
        },
    ) {
        Err(e) => e.to_string(),
        Ok(eng) => {
            let mut d = eng.alloc(10_000).unwrap();
            eng.read(&f, 0, &mut d, 0, 10_000)
                .expect_err("WARPFS_GDS=on must not fall back")
                .to_string()
        }
    };
    assert!(msg.contains("WARPFS_GDS=on"), "unclear error: {msg}");
    println!("WARPFS_GDS=on here: {msg}");
}
