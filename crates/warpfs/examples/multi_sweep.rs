//! Sweep of the staging geometry for warm bulk reads on one GPU and on every GPU at once
//! (spread), in one process on one file: is the multi-GPU aggregate limited by host memory
//! traffic, and do staging buffers small enough to stay in the CPU's last-level cache help?
//! Every pass is checked with the GPU checksum.
//!
//! `cargo run --release --features cuda -p warpfs --example multi_sweep -- [SIZE_GIB] [DIR]`

use warpfs::backend::cuda::{
    self, checksum, multi, pattern, BulkConfig, BulkFile, ChecksumKernel, FileRef, MultiBulk,
};

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() -> warpfs::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let gib: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(8);
    let dir = args.get(2).cloned().unwrap_or_else(|| "/tmp".into());
    if !cuda::available() {
        println!("skipping: no CUDA driver");
        return Ok(());
    }
    let size = gib << 30;
    let path = std::path::Path::new(&dir).join(format!("multi-sweep-{}.bin", std::process::id()));
    pattern::write_file(&path, size)?;
    let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
    let n = multi::device_count();
    let all: Vec<usize> = (0..n).collect();
    let bf = BulkFile::open(&path)?;
    let _ = checksum::checksum_file(&path, None, cores)?; // warm
    println!("file {gib} GiB warm · {n} GPUs · {cores} cores");
    println!(
        "chunk KiB × buffers × threads/GPU | 1 GPU GB/s (median of 3) | {n} GPUs spread GB/s | ok"
    );
    let configs: &[(usize, usize, usize)] = &[
        (4096, 2, 12),
        (2048, 2, 12),
        (1024, 2, 12),
        (512, 2, 12),
        (256, 4, 12),
        (1024, 2, 8),
        (1024, 2, 16),
        (512, 2, 16),
        (4096, 2, 8),
    ];
    for &(kib, bufs, threads) in configs {
        let cfg = BulkConfig {
            threads,
            chunk_bytes: kib << 10,
            buffers_per_thread: bufs,
            ..BulkConfig::default()
        };
        let mb = MultiBulk::new(&all, cfg)?;
        let ranges = mb.split(0, size);
        let wants: Vec<u64> = checksum::checksum_file_ranges(&path, &ranges, cores)?
            .into_iter()
            .map(|c| c.0)
            .collect();
        let mut ks: Vec<ChecksumKernel> = mb
            .engines()
            .iter()
            .map(|e| ChecksumKernel::new(e.context()))
            .collect::<warpfs::Result<_>>()?;
        let mut parts = mb.alloc_spread(size)?;
        let e0 = &mb.engines()[0];
        let mut whole = e0.alloc(size as usize)?;
        let (want_whole, _) = checksum::checksum_file(&path, None, cores)?;
        let mut ok = true;
        let mut one = Vec::new();
        let mut spread = Vec::new();
        for _ in 0..4 {
            whole.fill(0xA5)?;
            let r = e0.read(FileRef::from(&bf), 0, &mut whole, 0, size)?;
            one.push(r.gb_per_s());
            ok &= ks[0].checksum(&whole, size)? == want_whole;
            for p in parts.iter_mut() {
                p.fill(0xA5)?;
            }
            let r = mb.read_spread(FileRef::from(&bf), 0, size, &mut parts)?;
            spread.push(r.gb_per_s());
            for i in 0..n {
                ok &= ks[i].checksum(&parts[i], ranges[i].1)? == wants[i];
            }
        }
        one.remove(0);
        spread.remove(0);
        println!(
            "{kib:>5} × {bufs} × {threads:>2} | {:>6.2} | {:>6.2} | {ok}",
            median(one),
            median(spread)
        );
    }
    std::fs::remove_file(&path)?;
    Ok(())
}
