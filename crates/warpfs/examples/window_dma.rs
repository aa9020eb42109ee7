//! Experiment: DMA straight from pinned page-cache windows (`backend::cuda::window`) against
//! the staging pipeline (`CudaBulk` / `MultiBulk`), warm, on one GPU and on every GPU at once,
//! in one process on one file. Every pass is checked with the GPU checksum.
//!
//! `cargo run --release --features cuda -p warpfs --example window_dma -- [SIZE_GIB] [DIR]`

use std::time::Instant;
use warpfs::backend::cuda::{
    self, checksum, multi, pattern, window, BulkConfig, BulkFile, ChecksumKernel, CudaBulk,
    FileRef, MultiBulk,
};

fn main() -> warpfs::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let gib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let dir = args.get(2).cloned().unwrap_or_else(|| "/tmp".into());
    if !cuda::available() {
        println!("skipping: no CUDA driver");
        return Ok(());
    }
    let size = gib << 30;
    let path = std::path::Path::new(&dir).join(format!("window-dma-{}.bin", std::process::id()));
    pattern::write_file(&path, size)?;
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    let (want, _) = checksum::checksum_file(&path, None, cores)?; // also warms the file
    let n = multi::device_count();
    println!("file {gib} GiB warm · {n} GPUs · {cores} cores");
    let one = CudaBulk::new(0, BulkConfig::default())?;
    let mut dst = one.alloc(size as usize)?;
    let mut k = ChecksumKernel::new(one.context())?;
    let bf = BulkFile::open(&path)?;
    for pass in 0..3 {
        dst.fill(0xA5)?;
        let r = one.read(FileRef::from(&bf), 0, &mut dst, 0, size)?;
        let ok = k.checksum(&dst, size)? == want;
        println!(
            "pass {pass} pipeline 1 GPU 12 thr: {:.2} GB/s ok={ok}",
            r.gb_per_s()
        );
    }
    for &win in &[4usize << 20, 16 << 20, 64 << 20] {
        for &t in &[4usize, 8, 16] {
            dst.fill(0xA5)?;
            let r = window::window_read(one.context(), &path, 0, &mut dst, win, t)?;
            let ok = k.checksum(&dst, size)? == want;
            println!(
                "window 1 GPU {} MiB × {t} thr: {:.2} GB/s (register+unregister {:.2} s of thread time) ok={ok}",
                win >> 20,
                r.bytes as f64 / r.elapsed.as_secs_f64() / 1e9,
                r.register.as_secs_f64()
            );
        }
    }
    if n > 1 {
        let devices: Vec<usize> = (0..n).collect();
        let mb = MultiBulk::new(&devices, MultiBulk::default_config(n))?;
        let ranges = mb.split(0, size);
        let mut parts = mb.alloc_spread(size)?;
        let wants: Vec<u64> = ranges
            .iter()
            .map(|&(o, l)| checksum::checksum_file_range(&path, o, l, cores).map(|c| c.0))
            .collect::<warpfs::Result<_>>()?;
        let mut ks: Vec<ChecksumKernel> = mb
            .engines()
            .iter()
            .map(|e| ChecksumKernel::new(e.context()))
            .collect::<warpfs::Result<_>>()?;
        for pass in 0..3 {
            let r = mb.read_spread(FileRef::from(&bf), 0, size, &mut parts)?;
            let ok = (0..n).all(|i| ks[i].checksum(&parts[i], ranges[i].1).ok() == Some(wants[i]));
            println!(
                "pass {pass} pipeline {n} GPUs spread: {:.2} GB/s ok={ok}",
                r.gb_per_s()
            );
        }
        for &win in &[16usize << 20, 64 << 20] {
            for &t in &[4usize, 8, 16] {
                for p in parts.iter_mut() {
                    p.fill(0xA5)?;
                }
                let t0 = Instant::now();
                let rs: Vec<warpfs::Result<window::WindowReport>> = std::thread::scope(|s| {
                    let hs: Vec<_> = mb
                        .engines()
                        .iter()
                        .zip(parts.iter_mut())
                        .zip(&ranges)
                        .map(|((e, d), &(o, _))| {
                            let path = &path;
                            s.spawn(move || window::window_read(e.context(), path, o, d, win, t))
                        })
                        .collect();
                    hs.into_iter().map(|h| h.join().expect("thread")).collect()
                });
                let dt = t0.elapsed().as_secs_f64();
                let bytes: u64 = rs
                    .into_iter()
                    .map(|r| r.map(|r| r.bytes))
                    .sum::<warpfs::Result<u64>>()?;
                let ok =
                    (0..n).all(|i| ks[i].checksum(&parts[i], ranges[i].1).ok() == Some(wants[i]));
                println!(
                    "window {n} GPUs spread {} MiB × {t} thr/GPU: {:.2} GB/s ok={ok}",
                    win >> 20,
                    bytes as f64 / dt / 1e9
                );
            }
        }
    }
    std::fs::remove_file(&path)?;
    Ok(())
}
