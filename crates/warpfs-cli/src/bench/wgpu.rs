//! `warpfs bench --backend wgpu`: random page reads and a sequential scan from a WGSL compute
//! shader through the fault-and-replay loop (`warpfs::backend::wgpu::bench`), each verified
//! chunk by chunk against the CPU, beside CPU baselines of the same work timed in the same run
//! (bulk reads for the scan, pipelined host-agent reads for the random chunks).

use crate::cli::BenchArgs;
use crate::error::{Context, Result, EXIT_MISMATCH};
use crate::progress::Progress;
use crate::testfile::TestFile;
use crate::units::fmt_bytes;
use warpfs::backend::wgpu::{bench, ReplayConfig, WgpuBenchConfig, WgpuContext};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

/// Default size of the temporary file for this backend (a CPU adapter such as lavapipe is slow).
const DEFAULT_SIZE: u64 = 256 << 20;

/// Runs the wgpu bench; returns the exit code.
pub fn run(args: &BenchArgs) -> Result<i32> {
    let progress = Progress::new(!args.json);
    let file = match &args.file {
        Some(p) => TestFile::existing(p)?,
        None => {
            let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
            // `--size` keeps its default of 1G for the host backend; here a smaller file keeps
            // CPU adapters practical unless the user asked for a size.
            let size = if args.size == 1 << 30 {
                DEFAULT_SIZE
            } else {
                args.size
            };
            if !args.json {
                eprintln!(
                    "creating a {} test file in {}",
                    fmt_bytes(size),
                    dir.display()
                );
            }
            TestFile::create(&dir, size, &progress.bytes(size, "creating file"))?
        }
    };
    let ctx = WgpuContext::new().ctx(|| {
        "no wgpu adapter: install a Vulkan driver (e.g. `apt-get install mesa-vulkan-drivers \
         libvulkan1` for lavapipe), or use --backend host"
            .into()
    })?;
    let rt = Runtime::new(RuntimeConfig::default()).ctx(|| "starting the warpfs runtime".into())?;
    let fh = rt
        .open(file.open_path(), OpenOptions::read_only())
        .ctx(|| format!("opening {}", file.shown.display()))?;
    let mut cfg = WgpuBenchConfig::default();
    if let Some(c) = args.cache {
        cfg.replay = ReplayConfig {
            cache_bytes: c,
            ..cfg.replay
        };
    }
    if let Some(n) = args.ops {
        cfg.random_reads = u32::try_from(n).unwrap_or(u32::MAX);
    }
    let r = bench(&ctx, &rt, &fh, &cfg).ctx(|| "wgpu bench".into())?;
    let verified = r.sequential.verified && r.random.verified;
    if args.json {
        let fig = |f: &warpfs::backend::wgpu::BenchFigures| {
            serde_json::json!({
                "reads": f.reads, "bytes": f.bytes, "seconds": f.seconds, "gbps": f.gb_per_s,
                "reads_per_s": f.reads_per_s, "pages_per_s": f.pages_per_s, "verified": f.verified,
                "rounds": f.stats.rounds, "pages_served": f.stats.pages_served,
                "hit_rate": f.stats.hit_rate(), "bytes_uploaded": f.stats.bytes_uploaded,
            })
        };
        let cpu = |c: &warpfs::backend::wgpu::CpuFigures| serde_json::json!({ "bytes": c.bytes, "seconds": c.seconds, "gbps": c.gb_per_s, "reads_per_s": c.reads_per_s });
        let out = serde_json::json!({
            "backend": "wgpu",
            "adapter": r.adapter, "api": r.backend, "device_type": r.device_type,
            "mapped_uploads": r.mapped_uploads, "engine": rt.engine_name(),
            "file": { "path": file.shown.display().to_string(), "size": r.file_bytes },
            "page_size": r.page_size, "gpu_cache_bytes": r.cache_bytes, "chunk_bytes": r.chunk_bytes,
            "phases": [
                { "phase": "seq-scan", "warpfs": fig(&r.sequential), "baseline": cpu(&r.cpu_sequential) },
                { "phase": "rand-pages", "warpfs": fig(&r.random), "baseline": cpu(&r.cpu_random) },
            ],
            "verified": verified,
        });
        println!("{}", serde_json::to_string_pretty(&out).unwrap_or_default());
    } else {
        println!(
            "warpfs {} bench · backend wgpu · adapter {} ({}, {}) · {} uploads · engine {}",
            env!("CARGO_PKG_VERSION"),
            r.adapter,
            r.backend,
            r.device_type,
            if r.mapped_uploads { "mapped" } else { "staged" },
            rt.engine_name()
        );
        println!(
            "file {} ({}) · GPU cache {} in {} pages · {} per read\n",
            file.shown.display(),
            fmt_bytes(r.file_bytes),
            fmt_bytes(r.cache_bytes),
            fmt_bytes(u64::from(r.page_size)),
            fmt_bytes(u64::from(r.chunk_bytes))
        );
        println!(
            "{:<10} | {:>12} | {:>12} | {:>6} | {:>14} | {:>6} | {:>8} | verified",
            "phase", "warpfs GB/s", "CPU GB/s", "ratio", "warpfs reads/s", "rounds", "hit rate"
        );
        println!("{}", "-".repeat(96));
        for (name, f, c) in [
            ("seq-scan", &r.sequential, &r.cpu_sequential),
            ("rand-pages", &r.random, &r.cpu_random),
        ] {
            println!(
                "{:<10} | {:>12.3} | {:>12.3} | {:>5.2}× | {:>14.0} | {:>6} | {:>7.1}% | {}",
                name,
                f.gb_per_s,
                c.gb_per_s,
                f.gb_per_s / c.gb_per_s.max(1e-12),
                f.reads_per_s,
                f.stats.rounds,
                100.0 * f.stats.hit_rate(),
                if f.verified { "yes" } else { "NO" }
            );
        }
    }
    Ok(if verified { 0 } else { EXIT_MISMATCH })
}
