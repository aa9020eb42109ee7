//! Measures the CUDA bulk path: a whole file into device memory (GB/s, threads, path), or a
//! device buffer to a file (fdatasync included), or makes a pattern file to measure on.
//!
//! ```text
//! cuda_load FILE [--threads N] [--chunk-mib M | --chunk-kib K] [--buffers B] [--cold-reads direct|buffered|readahead] [--readahead-mib R] [--read-engine uring|threads]
//!                [--streams S] [--staging cudahost|huge] [--repeat R] [--drop-caches] [--label L] [--verify] [--copy-only]
//! cuda_load --write FILE --size-gib G [--writes direct|buffered] [--no-prealloc] [--threads N] [--chunk-mib M]
//! cuda_load --make FILE --size-gib G        # pattern content, written by 16 threads, fsync'd
//! ```
//! `--copy-only` also times the pipeline's host→device copies alone after each read (the PCIe side).
//! `--drop-caches` runs `sync; echo 3 > /proc/sys/vm/drop_caches` (root) before each repeat.
//! Every measurement prints one `JSON {...}` line (for bench/compare) and a human line.

use std::time::Instant;
use warpfs::backend::cuda::{
    available, pattern, BulkConfig, BulkFile, ColdReads, CudaBulk, StagingAlloc, Writes,
};

struct Args {
    file: String,
    mode: String,
    size_gib: f64,
    cfg: BulkConfig,
    repeat: usize,
    drop_caches: bool,
    label: String,
    verify: bool,
    copy_only: bool,
}

fn parse() -> Args {
    let mut a = Args {
        file: String::new(),
        mode: "read".into(),
        size_gib: 8.0,
        cfg: BulkConfig::default(),
        repeat: 1,
        drop_caches: false,
        label: "warm".into(),
        verify: false,
        copy_only: false,
    };
    let mut it = std::env::args().skip(1);
    let usage = "usage: cuda_load [--make|--write] FILE [--size-gib G] [--threads N] [--chunk-mib M | --chunk-kib K] [--buffers B] [--cold-reads direct|buffered|readahead] [--readahead-mib R] [--read-engine uring|threads] [--writes direct|buffered] [--no-prealloc] [--streams S] [--staging cudahost|huge] [--repeat R] [--drop-caches] [--label L] [--verify] [--copy-only]";
    while let Some(x) = it.next() {
        let mut val = || {
            it.next()
                .unwrap_or_else(|| panic!("{x} needs a value\n{usage}"))
        };
        match x.as_str() {
            "--make" => {
                a.mode = "make".into();
                a.file = val();
            }
            "--write" => {
                a.mode = "write".into();
                a.file = val();
            }
            "--size-gib" => a.size_gib = val().parse().expect("--size-gib"),
            "--threads" => a.cfg.threads = val().parse().expect("--threads"),
            "--chunk-mib" => a.cfg.chunk_bytes = val().parse::<usize>().expect("--chunk-mib") << 20,
            "--chunk-kib" => a.cfg.chunk_bytes = val().parse::<usize>().expect("--chunk-kib") << 10,
            "--readahead-mib" => {
                a.cfg.readahead_bytes = val().parse::<u64>().expect("--readahead-mib") << 20
            }
            "--buffers" => a.cfg.buffers_per_thread = val().parse().expect("--buffers"),
            "--streams" => a.cfg.streams = val().parse().expect("--streams"),
            "--staging" => {
                a.cfg.staging = match val().as_str() {
                    "cudahost" => StagingAlloc::CudaHost,
                    "huge" => StagingAlloc::HugePages,
                    v => panic!("--staging {v}: cudahost or huge"),
                }
            }
            "--cold-reads" => {
                a.cfg.cold_reads = match val().as_str() {
                    "direct" => ColdReads::Direct,
                    "buffered" => ColdReads::Buffered,
                    "readahead" => ColdReads::Readahead,
                    v => panic!("--cold-reads {v}: direct, buffered or readahead"),
                }
            }
            "--writes" => {
                a.cfg.writes = match val().as_str() {
                    "direct" => Writes::Direct,
                    "buffered" => Writes::Buffered,
                    v => panic!("--writes {v}: direct or buffered"),
                }
            }
            "--no-prealloc" => a.cfg.preallocate = false,
            "--read-engine" => {
                a.cfg.read_engine = match val().as_str() {
                    "uring" => warpfs::engine::EngineChoice::Uring,
                    "threads" => warpfs::engine::EngineChoice::Threads,
                    v => panic!("--read-engine {v}: uring or threads"),
                }
            }
            "--repeat" => a.repeat = val().parse().expect("--repeat"),
            "--drop-caches" => a.drop_caches = true,
            "--label" => a.label = val(),
            "--verify" => a.verify = true,
            "--copy-only" => a.copy_only = true,
            "-h" | "--help" => {
                println!("{usage}");
                std::process::exit(0);
            }
            f if !f.starts_with("--") => a.file = f.into(),
            f => panic!("unknown flag {f}\n{usage}"),
        }
    }
    assert!(!a.file.is_empty(), "{usage}");
    a
}

fn drop_caches() {
    // SAFETY: sync() has no preconditions.
    unsafe { libc::sync() };
    if let Err(e) = std::fs::write("/proc/sys/vm/drop_caches", "3") {
        eprintln!("warning: cannot drop caches ({e}); this measurement is not cold");
    }
}

fn main() -> warpfs::Result<()> {
    let a = parse();
    if a.mode == "make" {
        return make(&a);
    }
    if !available() {
        eprintln!("no CUDA driver on this machine");
        std::process::exit(2);
    }
    let t = Instant::now();
    let eng = CudaBulk::new(0, a.cfg.clone())?;
    let setup = t.elapsed();
    let c = eng.config();
    let common = format!(
        "\"threads_cfg\":{},\"chunk_kib\":{},\"readahead_mib\":{},\"buffers\":{},\"streams\":{},\"staging\":\"{:?}\",\"cold_reads\":\"{:?}\",\"writes\":\"{:?}\",\"preallocate\":{},\"read_engine\":\"{:?}\",\"setup_ms\":{:.1},\"device\":\"{}\"",
        c.threads,
        c.chunk_bytes >> 10,
        c.readahead_bytes >> 20,
        c.buffers_per_thread,
        c.streams,
        c.staging,
        c.cold_reads,
        c.writes,
        c.preallocate,
        warpfs::engine::probe(c.read_engine),
        setup.as_secs_f64() * 1e3,
        eng.context().name()
    );
    if a.mode == "write" {
        let n = (a.size_gib * (1u64 << 30) as f64) as u64;
        let mut src = eng.alloc(n as usize)?;
        // Fill the device buffer with the pattern, 256 MiB at a time.
        let mut h = vec![0u8; 256 << 20];
        let mut o = 0u64;
        while o < n {
            let k = (n - o).min(h.len() as u64) as usize;
            pattern::fill(&mut h[..k], o);
            src.copy_from_host(o as usize, &h[..k])?;
            o += k as u64;
        }
        for rep in 0..a.repeat {
            let _ = std::fs::remove_file(&a.file);
            // SAFETY: sync() has no preconditions; flushes others' dirty data before timing.
            unsafe { libc::sync() };
            let out = BulkFile::create(&a.file)?;
            let r = eng.write(&out, 0, &src, 0, n)?;
            println!(
                "JSON {{\"op\":\"write\",\"label\":\"{}\",\"rep\":{rep},\"bytes\":{},\"secs\":{:.4},\"gbps\":{:.3},\"threads\":{},\"path\":\"{}\",\"gds_bytes\":{},\"direct_bytes\":{},\"buffered_bytes\":{},{common}}}",
                a.label, r.bytes, r.elapsed.as_secs_f64(), r.gb_per_s(), r.threads, r.path, r.gds_bytes, r.direct_bytes, r.buffered_bytes
            );
            println!("write {:.2} GiB in {:.3}s = {:.2} GB/s (fdatasync included), {} threads, path {} ({})", n as f64 / (1u64 << 30) as f64, r.elapsed.as_secs_f64(), r.gb_per_s(), r.threads, r.path, r.path_reason);
        }
        if a.verify {
            let back = std::fs::read(&a.file)?;
            assert_eq!(back.len() as u64, n);
            match pattern::first_mismatch(&back, 0) {
                None => println!("verify: OK ({} bytes written and read back)", n),
                Some(i) => {
                    println!("verify: FAILED at byte {i}");
                    std::process::exit(1);
                }
            }
        }
        return Ok(());
    }
    let f = BulkFile::open(&a.file)?;
    let size = f.size()?;
    let mut dst = eng.alloc(size as usize)?;
    for rep in 0..a.repeat {
        if a.drop_caches {
            drop_caches();
        }
        if a.verify {
            dst.fill(0xA5)?;
        }
        let r = eng.read(&f, 0, &mut dst, 0, size)?;
        println!(
            "JSON {{\"op\":\"read\",\"label\":\"{}\",\"rep\":{rep},\"bytes\":{},\"secs\":{:.4},\"gbps\":{:.3},\"threads\":{},\"path\":\"{}\",\"gds_bytes\":{},\"cached_bytes\":{},\"direct_bytes\":{},\"buffered_bytes\":{},{common}}}",
            a.label, r.bytes, r.elapsed.as_secs_f64(), r.gb_per_s(), r.threads, r.path, r.gds_bytes, r.cached_bytes, r.direct_bytes, r.buffered_bytes
        );
        println!(
            "read {:.2} GiB in {:.3}s = {:.2} GB/s, {} threads, path {} ({}); cached {} MiB, direct {} MiB, buffered {} MiB",
            r.bytes as f64 / (1u64 << 30) as f64,
            r.elapsed.as_secs_f64(),
            r.gb_per_s(),
            r.threads,
            r.path,
            r.path_reason,
            r.cached_bytes >> 20,
            r.direct_bytes >> 20,
            r.buffered_bytes >> 20
        );
        if a.verify {
            verify(&dst, size)?;
        }
        if a.copy_only {
            let r = eng.copy_only(&mut dst, size)?;
            println!(
                "JSON {{\"op\":\"copy\",\"label\":\"{}\",\"rep\":{rep},\"bytes\":{},\"secs\":{:.4},\"gbps\":{:.3},\"threads\":{},\"path\":\"{}\",{common}}}",
                a.label, r.bytes, r.elapsed.as_secs_f64(), r.gb_per_s(), r.threads, r.path
            );
            println!(
                "copy only (no file reads) {:.2} GB/s, {} threads",
                r.gb_per_s(),
                r.threads
            );
        }
    }
    Ok(())
}

/// Copies the device buffer back in slices on 16 threads and checks every byte.
fn verify(dst: &warpfs::backend::cuda::DeviceBuffer, size: u64) -> warpfs::Result<()> {
    let t = Instant::now();
    let parts = 16u64;
    let per = size.div_ceil(parts).div_ceil(4096) * 4096;
    let bad = std::sync::atomic::AtomicU64::new(u64::MAX);
    std::thread::scope(|s| {
        for i in 0..parts {
            let bad = &bad;
            s.spawn(move || {
                dst.context().bind().unwrap();
                let mut h = vec![0u8; 64 << 20];
                let mut o = i * per;
                let end = ((i + 1) * per).min(size);
                while o < end {
                    let k = (end - o).min(h.len() as u64) as usize;
                    dst.copy_to_host(o as usize, &mut h[..k]).unwrap();
                    if let Some(j) = pattern::first_mismatch(&h[..k], o) {
                        bad.fetch_min(o + j as u64, std::sync::atomic::Ordering::Relaxed);
                        return;
                    }
                    o += k as u64;
                }
            });
        }
    });
    match bad.into_inner() {
        u64::MAX => {
            println!(
                "verify: OK, every byte of {size} matches the pattern ({:.1}s)",
                t.elapsed().as_secs_f64()
            );
            Ok(())
        }
        b => {
            println!("verify: FAILED, first bad byte at offset {b}");
            std::process::exit(1);
        }
    }
}

/// Writes a pattern file of `size_gib` GiB with 16 threads, then fsyncs.
fn make(a: &Args) -> warpfs::Result<()> {
    let n = (a.size_gib * (1u64 << 30) as f64) as u64;
    let t = Instant::now();
    let f = std::fs::File::create(&a.file)?;
    f.set_len(n)?;
    let threads = 16u64;
    let block = 8u64 << 20;
    let blocks = n.div_ceil(block);
    let next = std::sync::atomic::AtomicU64::new(0);
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                use std::os::unix::fs::FileExt;
                let mut h = vec![0u8; block as usize];
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if b >= blocks {
                        break;
                    }
                    let o = b * block;
                    let k = (n - o).min(block) as usize;
                    pattern::fill(&mut h[..k], o);
                    f.write_all_at(&h[..k], o).unwrap();
                }
            });
        }
    });
    f.sync_all()?;
    println!(
        "made {} ({} bytes) in {:.1}s",
        a.file,
        n,
        t.elapsed().as_secs_f64()
    );
    Ok(())
}
