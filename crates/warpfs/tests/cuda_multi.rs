//! GPU tests of the multi-GPU bulk path (`MultiBulk`). They skip (with a message) without a
//! CUDA driver. With one GPU, several engines on the same device stand in for several GPUs
//! (separate contexts' worth of staging, streams and threads); with several GPUs every device
//! is used too. Every byte that lands in device memory is checked against the file's pattern.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use warpfs::backend::cuda::{
    available, multi, pattern, BulkConfig, BulkFile, DeviceBuffer, FileRef, MultiBulk,
};

const POISON: u8 = 0xC3;

fn gpu() -> bool {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { cudarc::driver::sys::is_culib_present() } || !available() {
        println!("skipping: no CUDA driver on this machine");
        return false;
    }
    true
}

fn pattern_file(name: &str, len: usize) -> PathBuf {
    let d = std::env::temp_dir().join(format!("warpfs-cuda-multi-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let mut v = vec![0u8; len];
    pattern::fill(&mut v, 0);
    std::fs::write(&p, v).unwrap();
    p
}

fn small_cfg() -> BulkConfig {
    BulkConfig {
        threads: 3,
        chunk_bytes: 64 * 1024,
        buffers_per_thread: 2,
        ..BulkConfig::default()
    }
}

/// Checks `b[..len]` holds the pattern of file offset `at..` and the rest is still poison.
fn check(b: &DeviceBuffer, at: u64, len: u64, what: &str) {
    let mut v = vec![0u8; b.len()];
    b.copy_to_host(0, &mut v).unwrap();
    let mut want = vec![0u8; len as usize];
    pattern::fill(&mut want, at);
    let got = &v[..len as usize];
    if let Some(i) = got.iter().zip(&want).position(|(a, b)| a != b) {
        panic!("{what}: byte {i} (file offset {}) wrong", at + i as u64);
    }
    assert!(
        v[len as usize..].iter().all(|&x| x == POISON),
        "{what}: bytes past the range were written"
    );
}

/// The device lists to test: two engines on GPU 0 (a simulated pair), and every GPU when
/// there are several.
fn device_sets() -> Vec<Vec<usize>> {
    let n = multi::device_count();
    let mut sets = vec![vec![0, 0], vec![0, 0, 0]];
    if n > 1 {
        sets.push((0..n).collect());
    }
    sets
}

#[test]
fn spread_reads_put_each_range_on_its_gpu() {
    if !gpu() {
        return;
    }
    let size = (3 << 20) + 4096 * 5 + 777; // not a multiple of the chunk or the page
    let p = pattern_file("spread", size);
    let f = BulkFile::open(&p).unwrap();
    for devices in device_sets() {
        let mb = MultiBulk::new(&devices, small_cfg()).unwrap();
        for &(off, len) in &[
            (0u64, size as u64),
            (4096 + 3, 1 << 20),
            (100, 0),
            (size as u64 - 10, 1000),
        ] {
            let ranges = mb.split(off, len);
            let mut dsts: Vec<DeviceBuffer> = mb
                .engines()
                .iter()
                .zip(&ranges)
                .map(|(e, &(_, l))| {
                    let mut b = e.alloc(l as usize + 4096).unwrap();
                    b.fill(POISON).unwrap();
                    b
                })
                .collect();
            let r = mb
                .read_spread(FileRef::from(&f), off, len, &mut dsts)
                .unwrap();
            let want_total = (size as u64).saturating_sub(off).min(len);
            assert_eq!(
                r.bytes, want_total,
                "{devices:?} ({off}, {len}): aggregate bytes"
            );
            assert_eq!(r.per_gpu.len(), devices.len());
            for (i, (&(o, l), b)) in ranges.iter().zip(&dsts).enumerate() {
                let got = (size as u64).saturating_sub(o).min(l);
                assert_eq!(
                    r.per_gpu[i].bytes, got,
                    "GPU slot {i}: bytes (short only at EOF)"
                );
                check(b, o, got, &format!("{devices:?} slot {i} ({off}, {len})"));
            }
            assert!(r.gb_per_s() >= 0.0);
        }
    }
}

#[test]
fn each_gpu_reads_its_own_file() {
    if !gpu() {
        return;
    }
    for devices in device_sets() {
        let mb = MultiBulk::new(&devices, small_cfg()).unwrap();
        let sizes: Vec<usize> = (0..devices.len())
            .map(|i| (1 << 20) + 12_345 * (i + 1))
            .collect();
        let paths: Vec<PathBuf> = sizes
            .iter()
            .enumerate()
            .map(|(i, &s)| pattern_file(&format!("each-{}-{i}", devices.len()), s))
            .collect();
        let files: Vec<BulkFile> = paths.iter().map(|p| BulkFile::open(p).unwrap()).collect();
        let refs: Vec<FileRef<'_>> = files.iter().map(FileRef::from).collect();
        let mut dsts: Vec<DeviceBuffer> = mb
            .engines()
            .iter()
            .zip(&sizes)
            .map(|(e, &s)| {
                let mut b = e.alloc(s).unwrap();
                b.fill(POISON).unwrap();
                b
            })
            .collect();
        let r = mb.read_each(&refs, &mut dsts).unwrap();
        assert_eq!(r.bytes, sizes.iter().map(|&s| s as u64).sum::<u64>());
        for (i, b) in dsts.iter().enumerate() {
            check(b, 0, sizes[i] as u64, &format!("{devices:?} file {i}"));
        }
        // Wrong counts are refused, not half-done.
        assert!(mb.read_each(&refs[..1], &mut dsts).is_err() || devices.len() == 1);
    }
}

#[test]
fn every_gpu_the_driver_lists_is_usable() {
    if !gpu() {
        return;
    }
    let n = multi::device_count();
    assert!(n >= 1);
    let all = multi::parse_gpus("all", n).unwrap();
    let mb = MultiBulk::new(&all, MultiBulk::default_config(n)).unwrap();
    assert_eq!(mb.devices(), all);
    // The PCIe-only pass moves every byte of every buffer and reads no file.
    let mut bufs: Vec<DeviceBuffer> = mb
        .engines()
        .iter()
        .map(|e| e.alloc(9 << 20).unwrap())
        .collect();
    let r = mb.copy_only(&mut bufs).unwrap();
    assert_eq!(r.bytes, (9 << 20) * n as u64);
    assert!(r
        .per_gpu
        .iter()
        .all(|g| g.path == "copy-only" && g.bytes == 9 << 20));
    for e in mb.engines() {
        println!(
            "device {} {}: PCI {} NUMA node {:?}",
            e.context().ordinal(),
            e.context().name(),
            e.placement().pci_bus_id,
            e.placement().node
        );
    }
}
