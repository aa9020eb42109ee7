//! `warpfs::backend::wgpu::bench` from the command line (what `warpfs bench --backend wgpu`
//! calls), for runs before the CLI has it.
//!
//! ```sh
//! cargo run --release --features wgpu --example wgpu_bench -- [FILE|-] [CACHE_MIB] [RANDOM_READS] [GEN_MIB]
//! ```
//! Without FILE (or with `-`), a GEN_MIB (default 256) MiB pattern file is made in the temp dir.

use std::process::ExitCode;
use warpfs::backend::wgpu::{bench, ReplayConfig, WgpuBenchConfig, WgpuContext};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let gen_mib: u64 = args.get(3).and_then(|v| v.parse().ok()).unwrap_or(256);
    let path = match args.first().filter(|p| p.as_str() != "-") {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let p = std::env::temp_dir().join("warpfs-wgpu-bench.bin");
            let words = (gen_mib << 20) / 4;
            let bytes: Vec<u8> = (0..words as u32)
                .flat_map(|i| warpfs::backend::wgpu::bench::bench_hash(i).to_le_bytes())
                .collect();
            if let Err(e) = std::fs::write(&p, bytes) {
                eprintln!("cannot write {}: {e}", p.display());
                return ExitCode::FAILURE;
            }
            p
        }
    };
    let cache_mib: u64 = args.get(1).and_then(|v| v.parse().ok()).unwrap_or(64);
    let random_reads: u32 = args.get(2).and_then(|v| v.parse().ok()).unwrap_or(65536);
    let run = || -> Result<bool, Box<dyn std::error::Error>> {
        let ctx = WgpuContext::new()?;
        let rt = Runtime::new(RuntimeConfig::default())?;
        let file = rt.open(&path, OpenOptions::read_only())?;
        let cfg = WgpuBenchConfig {
            replay: ReplayConfig {
                cache_bytes: cache_mib << 20,
                ..ReplayConfig::default()
            },
            random_reads,
            ..WgpuBenchConfig::default()
        };
        let r = bench(&ctx, &rt, &file, &cfg)?;
        println!(
            "adapter: {} ({}, {}), {} uploads, engine {}",
            r.adapter,
            r.backend,
            r.device_type,
            if r.mapped_uploads { "mapped" } else { "staged" },
            rt.engine_name()
        );
        println!(
            "file {} B, GPU cache {} B of {} B pages, chunk {} B",
            r.file_bytes, r.cache_bytes, r.page_size, r.chunk_bytes
        );
        println!(
            "{:<18} {:>9} {:>12} {:>7} {:>9} {:>12} {:>8}",
            "workload", "GB/s", "reads/s", "rounds", "hit rate", "pages/s", "verified"
        );
        for (name, f) in [
            ("wgpu sequential", &r.sequential),
            ("wgpu random", &r.random),
        ] {
            println!(
                "{:<18} {:>9.3} {:>12.0} {:>7} {:>9.4} {:>12.0} {:>8}",
                name,
                f.gb_per_s,
                f.reads_per_s,
                f.stats.rounds,
                f.stats.hit_rate(),
                f.pages_per_s,
                f.verified
            );
        }
        for (name, c) in [
            ("cpu sequential", &r.cpu_sequential),
            ("cpu random", &r.cpu_random),
        ] {
            println!(
                "{:<18} {:>9.3} {:>12.0} {:>7} {:>9} {:>12} {:>8}",
                name, c.gb_per_s, c.reads_per_s, "-", "-", "-", "-"
            );
        }
        Ok(r.sequential.verified && r.random.verified)
    };
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("verification FAILED");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
