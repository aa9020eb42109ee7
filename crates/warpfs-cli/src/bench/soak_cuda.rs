//! `warpfs bench --soak DURATION --backend cuda`: the soak with GPU threads as the agents.
//!
//! Many warps (2 blocks of 128 threads per SM, at most one thread per 4 KiB of the file) run
//! [`warpfs::backend::cuda::soak_kernels`]'s kernel in rounds of [`ROUND`]: each thread owns a
//! span of the file and keeps the version of each 512-byte granule of it in device memory; it
//! reads random ranges (through the GPU page cache and around it) and checks every byte on the
//! GPU, writes whole granules at their next version, and fsyncs. Between rounds the host
//! samples its resident memory (`VmRSS`) and the device's used memory (`cuMemGetInfo`); both
//! must stay flat by the host soak's criterion. At the end the runtime is flushed and the file
//! compared byte for byte with the versions. Each round has a host-side deadline
//! ([`ROUND_DEADLINE`]): past it the channel is closed and the CLI exits 2.
//!
//! Report: the host soak's ([`super::soak::SoakReport`], agents = GPU threads) plus the GPU
//! memory samples. Exit 1 on a mismatch, 2 on errors or growth.

use super::soak::{flatness, print_lines, rss_kib, RssSample, SoakReport, MAX_FILE};
use crate::cli::BenchArgs;
use crate::error::{CliError, Result, EXIT_ERROR, EXIT_MISMATCH};
use crate::units::fmt_bytes;
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use warpfs::backend::cuda::gpu_bench_kernels::{kernels_done, sm_count};
use warpfs::backend::cuda::gpu_io::{GpuIo, GpuIoConfig};
use warpfs::backend::cuda::soak_kernels::{soak_fill, SoakKernel, GRANULE, UNKNOWN};
use warpfs::{OpenOptions, Runtime};

/// GPU time of one round (the kernel stops starting operations after it).
pub const ROUND: Duration = Duration::from_secs(1);
/// Longest a round may take on the host's clock before the soak gives up on it.
pub const ROUND_DEADLINE: Duration = Duration::from_secs(90);
/// Largest single read or write of a GPU thread.
const MAX_IO: u64 = 16 * 1024;
/// Threads per block.
const BLOCK: u32 = 128;
const SEED: u64 = 0x50A4_C0DA;

/// One device-memory sample.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct GpuMemSample {
    /// Seconds since the first round started.
    pub seconds: f64,
    /// Used device memory (total − free, whole device) in KiB.
    pub used_kib: u64,
}

/// What a CUDA soak found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CudaSoakReport {
    /// The host soak's report shape (agents = GPU threads).
    #[serde(flatten)]
    pub soak: SoakReport,
    /// The GPU.
    pub device: String,
    /// Rounds run.
    pub rounds: u64,
    /// GPU page-cache bytes.
    pub gpu_cache_bytes: u64,
    /// Device memory over time.
    pub gpu_mem: Vec<GpuMemSample>,
    /// Used device memory once warmed up, KiB.
    pub gpu_warm_kib: u64,
    /// Last sample, KiB.
    pub gpu_end_kib: u64,
    /// Largest sample, KiB.
    pub gpu_max_kib: u64,
    /// Whether device memory stayed flat (same criterion as RSS).
    pub gpu_flat: bool,
}

impl CudaSoakReport {
    /// Whether the soak passed: no mismatch, no error, flat host and device memory.
    pub fn passed(&self) -> bool {
        self.soak.passed() && self.gpu_flat
    }
}

fn kib_used(gpu: &GpuIo<'_>) -> Result<u64> {
    let (free, total) = gpu
        .context()
        .mem_info()
        .map_err(|e| CliError(e.to_string()))?;
    Ok((total.saturating_sub(free) / 1024) as u64)
}

/// Runs a CUDA soak of `duration` with `args`' settings (`--size` ≤ 256 MiB, `--dir`,
/// `--engine`, `--cache`, `--workers`, `--write-back`); progress lines go to `log`.
pub fn run_soak(
    args: &BenchArgs,
    duration: Duration,
    log: &mut (dyn Write + Send),
) -> Result<CudaSoakReport> {
    if let Err(e) = warpfs::backend::cuda::driver::init() {
        return Err(CliError(e.to_string()));
    }
    let file_bytes = (args.size.min(MAX_FILE) / GRANULE) * GRANULE;
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let path = dir.join(format!("warpfs-soak-cuda-{}", std::process::id()));
    let file = {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                CliError(format!(
                    "creating {}: {e}; pick another --dir",
                    path.display()
                ))
            })?;
        let zero = vec![0u32; (file_bytes / GRANULE) as usize];
        let mut chunk = vec![0u8; 1 << 20];
        let mut off = 0u64;
        while off < file_bytes {
            let n = (file_bytes - off).min(chunk.len() as u64) as usize;
            soak_fill(SEED, off, &zero, &mut chunk[..n]);
            f.write_all(&chunk[..n])
                .map_err(|e| CliError(format!("writing {}: {e}", path.display())))?;
            off += n as u64;
        }
        f
    };
    let opened = Runtime::new(args.gpu_runtime_config()).and_then(|rt| {
        let h = rt.open(&path, OpenOptions::read_write())?;
        Ok((rt, h))
    });
    let _ = std::fs::remove_file(&path);
    let (rt, handle) = opened?;

    // Threads: 2 blocks of BLOCK per SM, at most one per 4 KiB of file (8 granules each).
    let probe = GpuIo::new(
        &rt,
        GpuIoConfig {
            warp_slots: 1,
            async_slots: 0,
            gpu_cache_bytes: 0,
            ..GpuIoConfig::default()
        },
    )?;
    let sms = sm_count(&probe)?;
    drop(probe);
    let threads = ((sms * 2 * BLOCK) as u64)
        .min(file_bytes / (8 * GRANULE))
        .max(1) as u32;
    let warps = threads.div_ceil(32) as usize;
    let gpu_cache_bytes = (file_bytes / 4).max(16 << 20) as usize;
    let mut gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            warp_slots: warps,
            async_slots: 0,
            gpu_cache_bytes,
            ..GpuIoConfig::default()
        },
    )?;
    let kernel = SoakKernel::new(&gpu)?;
    let mut bufs = kernel.buffers(threads, file_bytes, MAX_IO, SEED)?;
    let device = gpu.context().name().to_string();

    let start = Instant::now();
    let sample_every = (duration / 24).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut rss = vec![RssSample {
        seconds: 0.0,
        rss_kib: rss_kib(),
        ops: 0,
    }];
    let mut mem = vec![GpuMemSample {
        seconds: 0.0,
        used_kib: kib_used(&gpu)?,
    }];
    let mut rounds = 0u64;
    let mut last_sample = start;
    while start.elapsed() < duration {
        let left = duration.saturating_sub(start.elapsed());
        let round_ns = left.min(ROUND).as_nanos().max(1_000_000) as u64;
        let t0 = Instant::now();
        kernel.launch_round(&gpu, handle.raw(), SEED, BLOCK, round_ns, &mut bufs)?;
        loop {
            if kernels_done(gpu.context())? {
                break;
            }
            if t0.elapsed() > ROUND_DEADLINE {
                give_up(&mut gpu);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        gpu.synchronize()?;
        rounds += 1;
        let s = kernel.stats(&bufs)?;
        let now = Instant::now();
        if now.duration_since(last_sample) >= sample_every || start.elapsed() >= duration {
            last_sample = now;
            let seconds = start.elapsed().as_secs_f64();
            let sample = RssSample {
                seconds,
                rss_kib: rss_kib(),
                ops: s.reads + s.writes + s.fsyncs,
            };
            let g = GpuMemSample {
                seconds,
                used_kib: kib_used(&gpu)?,
            };
            if !args.json {
                let _ = writeln!(
                    log,
                    "soak {:>7.1}s  ops {:>10}  mismatches {}  errors {}  rss {}  gpu used {}",
                    seconds,
                    sample.ops,
                    s.mismatches,
                    s.errors,
                    fmt_bytes(sample.rss_kib * 1024),
                    fmt_bytes(g.used_kib * 1024)
                );
            }
            rss.push(sample);
            mem.push(g);
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    let stats = kernel.stats(&bufs)?;
    let mut problems: Vec<String> = kernel
        .problems(&bufs)?
        .into_iter()
        .map(|p| {
            let what = match p.kind {
                1 => "read error",
                2 => "read mismatch",
                3 => "fsync error",
                4 => "write error",
                _ => "problem",
            };
            format!("{what} at {}+{}: result {}", p.offset, p.len, p.result)
        })
        .collect();

    // Final check: everything acknowledged is in the file, byte for byte.
    let versions = kernel.versions(&bufs)?;
    gpu.flush()?;
    let mut final_bad = 0u64;
    let mut disk = vec![0u8; 1 << 20];
    let mut want = vec![0u8; 1 << 20];
    let mut off = 0u64;
    while off < file_bytes {
        use std::os::unix::fs::FileExt;
        let n = (file_bytes - off).min(disk.len() as u64) as usize;
        file.read_exact_at(&mut disk[..n], off)
            .map_err(|e| CliError(format!("re-reading the soak file: {e}")))?;
        want[..n].copy_from_slice(&disk[..n]); // unknown granules: whatever the file holds
        soak_fill(SEED, off, &versions, &mut want[..n]);
        let bad = disk[..n]
            .iter()
            .zip(&want[..n])
            .filter(|(a, b)| a != b)
            .count() as u64;
        if bad > 0 && problems.len() < 8 {
            problems.push(format!(
                "final check: {bad} bytes of {}+{n} differ from the versions",
                off
            ));
        }
        final_bad += bad;
        off += n as u64;
    }
    let unknown = versions.iter().filter(|&&v| v == UNKNOWN).count();
    if unknown > 0 && problems.len() < 8 {
        problems.push(format!(
            "{unknown} granules unchecked at the end (their write failed)"
        ));
    }
    let (rss_warm_kib, rss_end_kib, rss_max_kib, rss_flat) = flatness(
        seconds,
        &rss.iter()
            .map(|s| (s.seconds, s.rss_kib))
            .collect::<Vec<_>>(),
    );
    let (gpu_warm_kib, gpu_end_kib, gpu_max_kib, gpu_flat) = flatness(
        seconds,
        &mem.iter()
            .map(|s| (s.seconds, s.used_kib))
            .collect::<Vec<_>>(),
    );
    let soak = SoakReport {
        seconds,
        engine: rt.engine_name(),
        write_back: args.write_back,
        agents: threads as usize,
        file_bytes,
        reads: stats.reads,
        writes: stats.writes,
        fsyncs: stats.fsyncs,
        bytes_read: stats.bytes_read,
        bytes_written: stats.bytes_written,
        mismatches: stats.mismatches + final_bad,
        errors: stats.errors,
        first_problems: problems,
        rss,
        rss_warm_kib,
        rss_end_kib,
        rss_max_kib,
        rss_flat,
    };
    drop(bufs);
    drop(kernel);
    gpu.shutdown()?;
    Ok(CudaSoakReport {
        soak,
        device,
        rounds,
        gpu_cache_bytes: gpu_cache_bytes as u64,
        gpu_mem: mem,
        gpu_warm_kib,
        gpu_end_kib,
        gpu_max_kib,
        gpu_flat,
    })
}

/// Closes the channel (waiting device calls return `-ESHUTDOWN`), says the round hung, and
/// exits 2 — even if closing does not make the kernel return.
fn give_up(gpu: &mut GpuIo<'_>) -> ! {
    eprintln!(
        "GPU soak round did not finish within {} s; closing the GPU channel and exiting",
        ROUND_DEADLINE.as_secs()
    );
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let _ = gpu.shutdown();
            done.store(true, Ordering::Release);
        });
        let t = Instant::now();
        while !done.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !done.load(Ordering::Acquire) {
            eprintln!("the kernel did not return after the channel closed either");
        }
        std::process::exit(EXIT_ERROR);
    })
}

/// `warpfs bench --soak DURATION --backend cuda`: runs the CUDA soak and prints the report
/// (JSON with `--json`). Exit code: 0 pass, 1 mismatches, 2 errors or growing memory.
pub fn run_cli(args: &BenchArgs, duration: Duration) -> Result<i32> {
    let r = run_soak(args, duration, &mut std::io::stderr())?;
    if args.json {
        let text = serde_json::to_string_pretty(&r).map_err(|e| CliError(e.to_string()))?;
        println!("{text}");
    } else {
        print_report(&r, &mut std::io::stdout()).map_err(|e| CliError(e.to_string()))?;
    }
    Ok(if r.soak.mismatches > 0 {
        EXIT_MISMATCH
    } else if !r.passed() {
        EXIT_ERROR
    } else {
        0
    })
}

/// Prints a CUDA soak report for people.
pub fn print_report(r: &CudaSoakReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "cuda soak on {}: {} rounds, {} GPU threads, GPU page cache {}",
        r.device,
        r.rounds,
        r.soak.agents,
        fmt_bytes(r.gpu_cache_bytes)
    )?;
    print_lines(&r.soak, out)?;
    writeln!(
        out,
        "  gpu used warm {}  end {}  max {}  ({})",
        fmt_bytes(r.gpu_warm_kib * 1024),
        fmt_bytes(r.gpu_end_kib * 1024),
        fmt_bytes(r.gpu_max_kib * 1024),
        if r.gpu_flat { "flat" } else { "GROWING" }
    )?;
    writeln!(out, "  {}", if r.passed() { "PASS" } else { "FAIL" })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn a_short_cuda_soak_passes_where_there_is_a_gpu() {
        if !warpfs::backend::cuda::available() {
            println!("skipping: no CUDA driver on this machine");
            return;
        }
        let cli = crate::cli::Cli::try_parse_from([
            "warpfs",
            "bench",
            "--soak",
            "3s",
            "--backend",
            "cuda",
            "--size",
            "16M",
        ])
        .unwrap();
        let crate::cli::Command::Bench(args) = cli.command else {
            panic!("not a bench command")
        };
        let r = run_soak(&args, Duration::from_secs(3), &mut std::io::sink()).unwrap();
        assert!(r.soak.reads > 100 && r.soak.writes > 100, "{r:?}");
        assert_eq!(
            (r.soak.mismatches, r.soak.errors),
            (0, 0),
            "{:?}",
            r.soak.first_problems
        );
    }
}
