//! `warpfs bench --backend cuda`: the GPU-initiated phases — GPU threads ask the daemon for file
//! data themselves (`include/warpfs.cuh`), against host baselines of the same run:
//!
//! - **gpu-rand-read**: random 4 KiB `wfs_read`s (through the GPU page cache) and
//!   `wfs_read_direct`s (around it: every read daemon-served) on a warm file vs multi-threaded
//!   `pread` (threads = cores); with several GPUs, per-GPU and aggregate IOPS and scaling =
//!   aggregate / (N × one GPU). Cold (root only: `drop_caches`): `wfs_read_direct` from 64 GPU
//!   threads vs 64 threads of O_DIRECT `pread` (queue depth 64 both).
//! - **gpu-array**: cache-hit element reads through `wfs_array<u64>` per second, after a warm-up
//!   kernel loads a window that fits the GPU cache.
//! - **latency**: p50/p99 of single 4 KiB requests (one GPU warp, `wfs_read_direct_warp`, `%globaltimer` around each
//!   `wfs_read_direct`) for a page-cache (engine) read and a host-tier hit; daemon CPU during
//!   them and idle.
//!
//! Every GPU read is checked in the kernel (length and every word against the file's pattern,
//! destination poisoned first); a bad read makes the run exit 1. Every kernel wait has a
//! host-side deadline: past it the channels are closed and the CLI exits 2.

use crate::cli::{BenchArgs, Phase};
use crate::error::{bail, Context, Result, EXIT_ERROR, EXIT_MISMATCH};
use crate::pattern::{count_wrong, FILE_SEED};
use crate::progress::Progress;
use crate::system;
use crate::testfile::TestFile;
use crate::units::fmt_bytes;
use indicatif::ProgressBar;
use serde_json::{json, Value};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};
use warpfs::backend::cuda::gpu_bench_kernels::{
    kernels_done, sm_count, ArrayBuffers, BenchKernels, RandBuffers, RandLaunch,
};
use warpfs::backend::cuda::gpu_cache::GpuCacheStats;
use warpfs::backend::cuda::gpu_io::{GpuIo, GpuIoConfig};
use warpfs::{FileHandle, OpenOptions, Runtime};

/// Longest a kernel may run before the bench gives up on it.
const KERNEL_DEADLINE: Duration = Duration::from_secs(60);
/// Blocks per SM and threads per block of the saturating launches.
const BLOCKS_PER_SM: u32 = 4;
const BLOCK: u32 = 128;
/// Requests of the latency rows.
const LAT_SAMPLES: u32 = 4000;
/// Pages of the host-tier-hit latency row (1 MiB: stays in the host tier).
const HOT_PAGES: u64 = 256;
/// Queue depth of the cold comparison (GPU threads and O_DIRECT threads).
const COLD_QD: u32 = 64;

/// The GPU phases to run for `args` on the cuda backend: those named, plus all of them where
/// the (default) list names `rand-read` — on the cuda backend random reads come from the GPU.
pub fn wanted(args: &BenchArgs) -> Vec<Phase> {
    let mut v: Vec<Phase> = args.phases.iter().copied().filter(|p| p.gpu()).collect();
    if args.phases.contains(&Phase::RandRead) {
        v.extend([Phase::GpuRandRead, Phase::GpuArray, Phase::Latency]);
    }
    v.sort();
    v.dedup();
    v
}

/// The GPU phases' figures: JSON, the table's text, bad reads.
#[derive(Debug, Default)]
pub struct GpuReport {
    /// Every figure.
    pub json: Vec<Value>,
    /// The tables.
    pub text: String,
    /// GPU reads (or elements) that returned wrong bytes or lengths, plus baseline mismatches.
    pub bad: u64,
}

/// `warpfs bench --backend cuda --phases <GPU phases only>`: makes and warms the file, runs
/// the phases on `devices`, prints. Returns the exit code.
pub fn run_standalone(args: &BenchArgs, devices: &[usize]) -> Result<i32> {
    let wall = Instant::now();
    if let Err(e) = warpfs::backend::cuda::driver::init() {
        bail!("{e}");
    }
    let progress = Progress::new(!args.json);
    let file = make_file(args, &progress)?;
    file.warm(&progress.bytes(file.size, "warming"))?;
    let r = run_phases(args, &file, devices, &wanted(args), &progress)?;
    if args.json {
        let j = json!({
            "version": env!("CARGO_PKG_VERSION"),
            "backend": "cuda",
            "devices": devices,
            "cores": system::cores(),
            "file": {"path": file.shown.display().to_string(), "size": file.size},
            "gpu_phases": r.json,
            "mismatches": r.bad,
            "wall_seconds": wall.elapsed().as_secs_f64(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&j).expect("report serialises")
        );
    } else {
        print!("{}", r.text);
    }
    Ok(if r.bad > 0 { EXIT_MISMATCH } else { 0 })
}

fn make_file(args: &BenchArgs, progress: &Progress) -> Result<TestFile> {
    Ok(match &args.file {
        Some(p) => TestFile::existing(p)?,
        None => {
            let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
            if !args.json {
                eprintln!(
                    "creating a {} test file in {}",
                    fmt_bytes(args.size),
                    dir.display()
                );
            }
            TestFile::create(&dir, args.size, &progress.bytes(args.size, "creating file"))?
        }
    })
}

/// Runs the GPU `phases` on `devices` on the (warm) `file`; cold runs last (it drops the
/// page cache).
pub fn run_phases(
    args: &BenchArgs,
    file: &TestFile,
    devices: &[usize],
    phases: &[Phase],
    progress: &Progress,
) -> Result<GpuReport> {
    if !file.pattern {
        bail!(
            "the GPU phases check every read against the warpfs test pattern: run without --file"
        );
    }
    if file.size < 1 << 20 {
        bail!("the GPU phases need a file of at least 1 MiB (--size)");
    }
    if devices.is_empty() {
        bail!("no GPU selected");
    }
    let mut rep = GpuReport::default();
    let say = |m: &str| {
        if !args.json {
            eprintln!("{m}");
        }
    };
    if phases.contains(&Phase::GpuRandRead) {
        say("phase gpu-rand-read (warm) ...");
        rand_warm(args, file, devices, progress, &mut rep)?;
    }
    if phases.contains(&Phase::GpuArray) {
        say("phase gpu-array ...");
        array(args, file, devices, progress, &mut rep)?;
    }
    if phases.contains(&Phase::Latency) {
        say("phase latency ...");
        latency(args, file, devices[0], progress, &mut rep)?;
    }
    if phases.contains(&Phase::GpuRandRead) {
        say("phase gpu-rand-read (cold) ...");
        rand_cold(args, file, devices[0], progress, &mut rep)?;
    }
    Ok(rep)
}

/// One GPU with its channel, kernels and buffers.
struct Dev<'rt> {
    gpu: GpuIo<'rt>,
    k: BenchKernels,
    rand: Option<RandBuffers>,
    arr: Option<ArrayBuffers>,
    sms: u32,
}

/// Opens a channel per device; `tier_refs`: map the host tier ([`GpuIoConfig::map_host_tier`]).
fn open_devs<'rt>(rt: &'rt Runtime, devices: &[usize], tier_refs: bool) -> Result<Vec<Dev<'rt>>> {
    devices
        .iter()
        .map(|&d| {
            let gpu = GpuIo::new(
                rt,
                GpuIoConfig {
                    device: d,
                    map_host_tier: tier_refs,
                    ..GpuIoConfig::default()
                },
            )
            .ctx(|| format!("opening a GPU channel on device {d}"))?;
            let k = BenchKernels::new(&gpu)
                .ctx(|| format!("compiling the bench kernels for device {d}"))?;
            let sms = sm_count(&gpu)?;
            Ok(Dev {
                gpu,
                k,
                rand: None,
                arr: None,
                sms,
            })
        })
        .collect()
}

fn runtime(args: &BenchArgs, file: &TestFile) -> Result<(Runtime, u32)> {
    let (rt, fh) = runtime_with(args.gpu_runtime_config(), file)?;
    // The handle stays registered until the runtime is dropped.
    Ok((rt, fh.raw()))
}

fn runtime_with(cfg: warpfs::RuntimeConfig, file: &TestFile) -> Result<(Runtime, FileHandle)> {
    let rt = Runtime::new(cfg).ctx(|| "starting the warpfs runtime".into())?;
    let fh = rt.open(file.open_path(), OpenOptions::read_only())?;
    Ok((rt, fh))
}

/// The warm random-read phase's runtime: unless `--cache` sets the host tier, a tier that
/// holds the whole file (its size plus 64 MiB) when that is at most a quarter of the available
/// memory, loaded with the file before the sides run — so a GPU miss is a host-tier hit, served
/// without file I/O (and, with the tier mapped, copied by the GPU straight from it). Returns the
/// runtime, the handle and the tier's size when it holds the file.
fn warm_runtime(
    args: &BenchArgs,
    file: &TestFile,
    progress: &Progress,
) -> Result<(Runtime, FileHandle, Option<u64>)> {
    let mut cfg = args.gpu_runtime_config();
    let want = file.size.div_ceil(64 << 20) * (64 << 20) + (64 << 20);
    let fits = system::mem_available().is_some_and(|m| want <= m / 4);
    let hold = args.cache.is_none() && fits && want > cfg.cache.capacity as u64;
    if hold {
        cfg.cache.capacity = want as usize;
    }
    let (rt, fh) = runtime_with(cfg, file)?;
    let holds = if hold || args.cache.is_some_and(|c| c >= want) {
        let bar = progress.bytes(file.size, "loading the host tier");
        let threads = system::cores().clamp(1, 16);
        rt.load_into_cache(&fh, 0, file.size, threads, &|n| bar.inc(n))
            .ctx(|| "loading the file into the host cache tier".into())?;
        bar.finish_and_clear();
        Some(rt.config().cache.capacity as u64)
    } else {
        None
    };
    Ok((rt, fh, holds))
}

/// Closes every channel (waiting device calls return `-ESHUTDOWN`), says which kernel hung,
/// and exits 2 — even if closing does not make the kernels return.
fn hang(devs: &mut [Dev<'_>], what: &str) -> ! {
    eprintln!(
        "GPU kernel did not finish: {what} ran past {} s; closing the GPU channels and exiting",
        KERNEL_DEADLINE.as_secs()
    );
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            for d in devs.iter_mut() {
                let _ = d.gpu.shutdown();
            }
            done.store(true, Ordering::Release);
        });
        let t = Instant::now();
        while !done.load(Ordering::Acquire) && t.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !done.load(Ordering::Acquire) {
            eprintln!("the kernels did not return after the channels closed either");
        }
        std::process::exit(EXIT_ERROR);
    })
}

/// Waits (with the deadline) for the kernels of `devs[i]`, `i` in `idx`, launched at `t0`;
/// returns each one's seconds. Moves `bar` (a timed bar in ms).
fn wait(
    devs: &mut [Dev<'_>],
    idx: &[usize],
    t0: Instant,
    bar: &ProgressBar,
    what: &str,
) -> Result<Vec<f64>> {
    let mut secs = vec![None; idx.len()];
    loop {
        for (j, &i) in idx.iter().enumerate() {
            if secs[j].is_none() && kernels_done(devs[i].gpu.context())? {
                secs[j] = Some(t0.elapsed().as_secs_f64());
            }
        }
        if secs.iter().all(Option::is_some) {
            break;
        }
        if t0.elapsed() > KERNEL_DEADLINE {
            hang(devs, what);
        }
        bar.set_position(t0.elapsed().as_millis() as u64);
        std::thread::sleep(Duration::from_micros(500));
    }
    for &i in idx {
        devs[i]
            .gpu
            .synchronize()
            .ctx(|| format!("{what} on device {}", devs[i].gpu.config().device))?;
    }
    Ok(secs.into_iter().map(|s| s.unwrap_or(0.0)).collect())
}

/// CPU time (ns) of the daemon's threads (`warpfs-daemon-*`, `warpfs-io-*`) of this process,
/// and how many there are: `/proc/self/task/*/schedstat` (ns), else `stat` ticks.
fn daemon_cpu_ns() -> (u64, usize) {
    let mut total = 0u64;
    let mut n = 0usize;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return (0, 0);
    };
    for e in dir.flatten() {
        let p = e.path();
        let comm = std::fs::read_to_string(p.join("comm")).unwrap_or_default();
        if !(comm.starts_with("warpfs-daemon") || comm.starts_with("warpfs-io")) {
            continue;
        }
        n += 1;
        if let Some(ns) = std::fs::read_to_string(p.join("schedstat"))
            .ok()
            .and_then(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        {
            total += ns;
        } else if let Ok(s) = std::fs::read_to_string(p.join("stat")) {
            // Fields after the parenthesised name: utime and stime are the 12th and 13th.
            let rest = s.rsplit_once(')').map_or("", |x| x.1);
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            // USER_HZ is 100 on Linux: 10 ms a tick.
            total +=
                (f.get(10).copied().unwrap_or(0) + f.get(11).copied().unwrap_or(0)) * 10_000_000;
        }
    }
    (total, n)
}

/// Daemon CPU over a measured interval, in % of one core.
struct CpuMeter {
    ns: u64,
    t: Instant,
}

impl CpuMeter {
    fn start() -> Self {
        Self {
            ns: daemon_cpu_ns().0,
            t: Instant::now(),
        }
    }
    fn percent(&self) -> f64 {
        let (ns, _) = daemon_cpu_ns();
        ns.saturating_sub(self.ns) as f64 / self.t.elapsed().as_nanos().max(1) as f64 * 100.0
    }
}

/// What one GPU random-read side did.
#[derive(Debug, Default)]
struct RandOut {
    per_gpu: Vec<f64>,
    iops: f64,
    reads: u64,
    bad: u64,
    cache: GpuCacheStats,
    cpu: f64,
    threads: u64,
    per_thread: u32,
}

fn add_stats(a: &mut GpuCacheStats, b: GpuCacheStats) {
    a.hits += b.hits;
    a.misses += b.misses;
    a.coalesced += b.coalesced;
    a.evictions += b.evictions;
    a.bytes_loaded += b.bytes_loaded;
    a.bypassed += b.bypassed;
    a.load_errors += b.load_errors;
    a.api_errors += b.api_errors;
}

/// Launches `bench_rand` on `devs[idx]`: an unmeasured calibration launch (4 reads a thread),
/// then one sized to run about `secs`. `shape`: (blocks, threads per block); None = saturating.
#[allow(clippy::too_many_arguments)]
fn rand_side(
    devs: &mut [Dev<'_>],
    idx: &[usize],
    fh: u32,
    pages: u64,
    direct: bool,
    shape: Option<(u32, u32)>,
    secs: f64,
    bar: &ProgressBar,
    what: &str,
) -> Result<RandOut> {
    let mut out = RandOut::default();
    let mut reads = 4u32;
    for measured in [false, true] {
        let mut before = Vec::new();
        let mut total_threads = 0u64;
        for &i in idx {
            before.push(devs[i].gpu.cache_stats()?);
        }
        let cpu = CpuMeter::start();
        let t0 = Instant::now();
        for &i in idx {
            let d = &mut devs[i];
            let (grid, block) = shape.unwrap_or((d.sms * BLOCKS_PER_SM, BLOCK));
            let threads = grid as usize * block as usize;
            if d.rand.as_ref().is_none_or(|b| b.threads() != threads) {
                d.rand = Some(d.k.rand_buffers(threads, 0)?);
            }
            total_threads += threads as u64;
            let l = RandLaunch {
                grid,
                block,
                fh,
                pages,
                reads,
                direct,
                seed: FILE_SEED,
                lat_per: 0,
                warp: false,
            };
            let bufs = d.rand.as_mut().expect("allocated above");
            d.k.launch_rand(&d.gpu, &l, bufs)?;
        }
        let s = wait(devs, idx, t0, bar, what)?;
        let elapsed = s.iter().copied().fold(0.0, f64::max).max(1e-9);
        if !measured {
            let rate = total_threads as f64 * reads as f64 / elapsed;
            reads = ((rate * secs / total_threads as f64) as u32).clamp(8, 1 << 16);
            continue;
        }
        out.cpu = cpu.percent();
        out.threads = total_threads;
        out.per_thread = reads;
        for (j, &i) in idx.iter().enumerate() {
            let d = &devs[i];
            let (grid, block) = shape.unwrap_or((d.sms * BLOCKS_PER_SM, BLOCK));
            let n = grid as u64 * block as u64 * reads as u64;
            out.per_gpu.push(n as f64 / s[j].max(1e-9));
            out.reads += n;
            out.bad += d.rand.as_ref().expect("launched").bad()?;
            add_stats(&mut out.cache, d.gpu.cache_stats()? - before[j]);
        }
        out.iops = out.reads as f64 / elapsed;
    }
    Ok(out)
}

/// Host baseline: `threads` threads `pread` random 4 KiB pages (O_DIRECT when `direct`) for
/// `secs`, each checked. Returns (IOPS, bad reads).
fn host_side(
    file: &TestFile,
    threads: usize,
    direct: bool,
    secs: f64,
    bar: &ProgressBar,
) -> Result<(f64, u64)> {
    let pages = file.size / 4096;
    let stop = AtomicBool::new(false);
    let count = AtomicU64::new(0);
    let t0 = Instant::now();
    let res: Vec<Result<(u64, u64)>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|i| {
                let (stop, count) = (&stop, &count);
                s.spawn(move || -> Result<(u64, u64)> {
                    let mut o = std::fs::OpenOptions::new();
                    o.read(true);
                    if direct {
                        o.custom_flags(libc::O_DIRECT);
                    }
                    let f = o.open(file.open_path()).ctx(|| {
                        format!(
                            "opening {}{}",
                            file.shown.display(),
                            if direct { " with O_DIRECT" } else { "" }
                        )
                    })?;
                    let mut raw = vec![0u8; 8192];
                    let a = raw.as_ptr().align_offset(4096);
                    let buf = &mut raw[a..a + 4096];
                    let mut x = (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
                    let (mut n, mut bad) = (0u64, 0u64);
                    while !stop.load(Ordering::Relaxed) {
                        for _ in 0..64 {
                            x ^= x << 13;
                            x ^= x >> 7;
                            x ^= x << 17;
                            let off = (x % pages) * 4096;
                            buf.fill(0xA5);
                            let got = f.read_at(buf, off).ctx(|| "baseline pread".into())?;
                            bad += u64::from(got != 4096 || count_wrong(FILE_SEED, off, buf) != 0);
                            n += 1;
                        }
                        count.fetch_add(64, Ordering::Relaxed);
                    }
                    Ok((n, bad))
                })
            })
            .collect();
        while t0.elapsed().as_secs_f64() < secs {
            bar.set_position(t0.elapsed().as_millis() as u64);
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        hs.into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(crate::error::CliError("baseline thread panicked".into()))
                })
            })
            .collect()
    });
    let el = t0.elapsed().as_secs_f64();
    let (mut n, mut bad) = (0, 0);
    for r in res {
        let (a, b) = r?;
        n += a;
        bad += b;
    }
    Ok((n as f64 / el, bad))
}

fn fmt_rate(v: f64) -> String {
    if v >= 1e9 {
        format!("{:.2} G", v / 1e9)
    } else if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else {
        format!("{:.1} K", v / 1e3)
    }
}

fn check_cell(bad: u64) -> String {
    if bad == 0 {
        "ok".into()
    } else {
        format!("{bad} WRONG")
    }
}

fn cache_json(c: &GpuCacheStats) -> Value {
    json!({"hits": c.hits, "misses": c.misses, "coalesced": c.coalesced, "bypassed": c.bypassed,
           "evictions": c.evictions, "load_errors": c.load_errors, "api_errors": c.api_errors})
}

fn side_json(name: &str, r: &RandOut, base: f64, one: Option<f64>, gpu_cache: &str) -> Value {
    json!({
        "name": name, "iops": r.iops, "per_gpu_iops": r.per_gpu, "gpus": r.per_gpu.len(),
        "ratio_vs_baseline": r.iops / base.max(1e-9),
        "scaling": one.map(|o| r.iops / (r.per_gpu.len() as f64 * o).max(1e-9)),
        "gpu_threads": r.threads, "reads_per_thread": r.per_thread, "reads": r.reads,
        "bad_reads": r.bad, "gpu_cache": gpu_cache, "gpu_cache_stats": cache_json(&r.cache),
        "daemon_cpu_percent_of_core": r.cpu,
    })
}

fn rand_warm(
    args: &BenchArgs,
    file: &TestFile,
    devices: &[usize],
    progress: &Progress,
    rep: &mut GpuReport,
) -> Result<()> {
    let secs = args.seconds;
    let threads = args.threads.unwrap_or_else(system::cores).max(1);
    let (rt, fh, tier_holds) = warm_runtime(args, file, progress)?;
    let fh = fh.raw();
    let stats0 = rt.stats();
    let tier0 = stats0.cache;
    let mut devs = open_devs(&rt, devices, args.tier_refs)?;
    let pages = file.size / 4096;
    let n = devs.len();
    let cache_bytes = devs[0].gpu.config().gpu_cache_bytes;
    let sides = 1 + 2 * (1 + usize::from(n > 1));
    let bar = progress.timed(
        (secs * 1000.0) as u64 * sides as u64,
        "gpu-rand-read (warm)",
    );
    let hbar = progress.timed((secs * 1000.0) as u64, "host pread");
    let (host, host_bad) = host_side(file, threads, false, secs, &hbar)?;
    hbar.finish_and_clear();
    let mut rows: Vec<(String, RandOut, Option<f64>, String)> = Vec::new();
    let all: Vec<usize> = (0..n).collect();
    for direct in [false, true] {
        let gc = if direct {
            "bypassed (wfs_read_direct: every read daemon-served)".to_string()
        } else {
            format!("on, {} (wfs_read)", fmt_bytes(cache_bytes as u64))
        };
        let api = if direct {
            "wfs_read_direct"
        } else {
            "wfs_read, GPU cache"
        };
        let one = rand_side(
            &mut devs,
            &[0],
            fh,
            pages,
            direct,
            None,
            secs,
            &bar,
            "gpu-rand-read",
        )?;
        let one_iops = one.iops;
        rows.push((
            format!("warpfs {api}, 1 GPU (device {})", devices[0]),
            one,
            None,
            gc.clone(),
        ));
        if n > 1 {
            let r = rand_side(
                &mut devs,
                &all,
                fh,
                pages,
                direct,
                None,
                secs,
                &bar,
                "gpu-rand-read",
            )?;
            rows.push((format!("warpfs {api}, {n} GPUs"), r, Some(one_iops), gc));
        }
    }
    bar.finish_and_clear();
    let stats1 = rt.stats();
    let tier1 = stats1.cache;
    let by_ref = stats1.daemon.cache_refs - stats0.daemon.cache_refs;
    let (tier_hits, tier_misses) = (tier1.hits - tier0.hits, tier1.misses - tier0.misses);
    let tier_bytes = rt.config().cache.capacity as u64;
    let tier_refs = args.tier_refs;
    let bad: u64 = host_bad + rows.iter().map(|r| r.1.bad).sum::<u64>();
    rep.bad += bad;
    let sms = devs[0].sms;
    let base_name = format!("host pread 4 KiB, {threads} threads");
    rep.json.push(json!({
        "phase": "gpu-rand-read", "cache": "warm", "block_bytes": 4096, "file_bytes": file.size,
        "launch": {"sms": sms, "blocks_per_sm": BLOCKS_PER_SM, "threads_per_block": BLOCK},
        "baseline": {"name": base_name, "iops": host, "threads": threads, "bad_reads": host_bad},
        "host_tier": {"bytes": tier_bytes, "holds_file": tier_holds.is_some(), "hits": tier_hits,
                      "misses": tier_misses, "tier_mapped": tier_refs, "answers_by_reference": by_ref},
        "sides": rows.iter().map(|(nm, r, one, gc)| side_json(nm, r, host, *one, gc)).collect::<Vec<_>>(),
    }));
    let t = &mut rep.text;
    t.push_str(&format!(
        "\ngpu-rand-read · random 4 KiB reads of a warm {} file · GPU launch {sms} SMs × {BLOCKS_PER_SM} blocks × {BLOCK} threads\n",
        fmt_bytes(file.size)
    ));
    t.push_str(&format!(
        "{:<42} {:>10} {:>7} {:>8} {:>9} {:>28}  check\n",
        "side", "IOPS", "× pread", "scaling", "daemon %", "GPU cache hit/miss/bypass"
    ));
    t.push_str(&format!(
        "{:<42} {:>10} {:>7} {:>8} {:>9} {:>28}  {}\n",
        base_name,
        fmt_rate(host),
        "1.00",
        "—",
        "—",
        "—",
        check_cell(host_bad)
    ));
    for (nm, r, one, _) in &rows {
        let c = &r.cache;
        t.push_str(&format!(
            "{:<42} {:>10} {:>7.2} {:>8} {:>9.0} {:>28}  {}\n",
            nm,
            fmt_rate(r.iops),
            r.iops / host.max(1e-9),
            one.map_or("—".into(), |o| format!(
                "{:.2}",
                r.iops / (r.per_gpu.len() as f64 * o).max(1e-9)
            )),
            r.cpu,
            format!("{}/{}/{}", c.hits, c.misses, c.bypassed),
            check_cell(r.bad)
        ));
        if r.per_gpu.len() > 1 {
            let per: Vec<String> = r.per_gpu.iter().map(|v| fmt_rate(*v)).collect();
            t.push_str(&format!("    per GPU: {}\n", per.join(" / ")));
        }
    }
    t.push_str("    daemon % = CPU of the daemon's threads in % of one core; scaling = aggregate / (N × one GPU)\n");
    t.push_str(&format!(
        "    host tier {}{}: {} hits / {} misses in the warpfs sides, {} answered by reference; tier hits {}\n",
        fmt_bytes(tier_bytes),
        if tier_holds.is_some() {
            " (holds the file; loaded before the sides)"
        } else {
            ""
        },
        tier_hits,
        tier_misses,
        by_ref,
        if tier_refs {
            "copied by the GPU straight from the mapped tier page (--tier-refs)"
        } else {
            "copied by the daemon into lane buffers"
        }
    ));
    drop(devs);
    Ok(())
}

fn rand_cold(
    args: &BenchArgs,
    file: &TestFile,
    device: usize,
    progress: &Progress,
    rep: &mut GpuReport,
) -> Result<()> {
    let secs = args.seconds;
    if let Err(why) = crate::system::drop_page_cache() {
        rep.json
            .push(json!({"phase": "gpu-rand-read", "cache": "cold", "skipped": why}));
        rep.text
            .push_str(&format!("\ngpu-rand-read cold: skipped: {why}\n"));
        return Ok(());
    }
    let (rt, fh) = runtime(args, file)?;
    let mut devs = open_devs(&rt, &[device], args.tier_refs)?;
    let bar = progress.timed((secs * 3000.0) as u64, "gpu-rand-read (cold)");
    let pages = file.size / 4096;
    // Two arrangements of the same 64 requesters, each on a freshly dropped page cache: whole
    // warps (a warp's lanes post together and wait for their slowest read before the next
    // round), and one thread per warp (every requester independent, like the baseline's
    // threads).
    let shapes = [
        (
            format!(
                "warpfs wfs_read_direct, {COLD_QD} GPU threads in {} warps",
                COLD_QD / 32
            ),
            (COLD_QD / 32, 32),
        ),
        (
            format!("warpfs wfs_read_direct, {COLD_QD} GPU warps × 1 thread"),
            (COLD_QD, 1),
        ),
    ];
    let mut sides = Vec::new();
    for (i, (name, shape)) in shapes.into_iter().enumerate() {
        if i > 0 {
            crate::system::drop_page_cache()
                .ctx(|| "dropping the page cache between cold sides".into())?;
        }
        let g = rand_side(
            &mut devs,
            &[0],
            fh,
            pages,
            true,
            Some(shape),
            secs,
            &bar,
            "gpu-rand-read cold",
        )?;
        sides.push((name, g));
    }
    let (od, od_bad) = host_side(file, COLD_QD as usize, true, secs, &bar)?;
    bar.finish_and_clear();
    drop(devs);
    drop(rt);
    rep.bad += od_bad + sides.iter().map(|s| s.1.bad).sum::<u64>();
    let base_name = format!("host O_DIRECT pread 4 KiB, QD {COLD_QD} ({COLD_QD} threads)");
    rep.json.push(json!({
        "phase": "gpu-rand-read", "cache": "cold (drop_caches before each warpfs side; O_DIRECT bypasses the page cache)",
        "baseline": {"name": base_name, "iops": od, "bad_reads": od_bad},
        "sides": sides.iter().map(|(name, g)| side_json(name, g, od, None, "bypassed")).collect::<Vec<_>>(),
    }));
    let t = &mut rep.text;
    t.push_str(&format!(
        "\ngpu-rand-read cold · page cache dropped before each warpfs side · QD {COLD_QD} everywhere\n{:<52} {:>10} {:>10} {:>9}  check\n{:<52} {:>10} {:>10} {:>9}  {}\n",
        "side", "IOPS", "× O_DIRECT", "daemon %",
        base_name, fmt_rate(od), "1.00", "—", check_cell(od_bad),
    ));
    for (name, g) in &sides {
        t.push_str(&format!(
            "{:<52} {:>10} {:>10.2} {:>9.0}  {}\n",
            name,
            fmt_rate(g.iops),
            g.iops / od.max(1e-9),
            g.cpu,
            check_cell(g.bad)
        ));
    }
    Ok(())
}

fn array(
    args: &BenchArgs,
    file: &TestFile,
    devices: &[usize],
    progress: &Progress,
    rep: &mut GpuReport,
) -> Result<()> {
    let secs = args.seconds;
    let (rt, fh) = runtime(args, file)?;
    let mut devs = open_devs(&rt, devices, args.tier_refs)?;
    let n = devs.len();
    let len = file.size / 8;
    let cache_bytes = devs[0].gpu.config().gpu_cache_bytes as u64;
    let span = (cache_bytes / 2).min(file.size) / 8;
    let bar = progress.timed((secs * 1000.0) as u64 * (1 + u64::from(n > 1)), "gpu-array");
    let all: Vec<usize> = (0..n).collect();
    // Warm the window into every GPU's cache.
    let t0 = Instant::now();
    for d in devs.iter_mut() {
        let mut b = d.k.array_buffers()?;
        d.k.launch_array_warm(&d.gpu, fh, len, span, FILE_SEED, &mut b)?;
        d.arr = Some(b);
    }
    wait(&mut devs, &all, t0, &bar, "gpu-array warm-up")?;
    let mut warm_bad = 0;
    for d in &devs {
        warm_bad += d.arr.as_ref().expect("set").bad()?;
    }
    let mut rows = Vec::new();
    let mut one_rate = None;
    for idx in [vec![0usize], all.clone()] {
        if idx.len() == 1 && one_rate.is_some() {
            break;
        }
        let mut per = 64u32;
        let mut row = (0.0, Vec::new(), 0u64, GpuCacheStats::default(), 0u64);
        for measured in [false, true] {
            let before: Vec<GpuCacheStats> = idx
                .iter()
                .map(|&i| devs[i].gpu.cache_stats())
                .collect::<warpfs::Result<_>>()?;
            let t0 = Instant::now();
            let mut threads = 0u64;
            for &i in &idx {
                let d = &mut devs[i];
                let shape = (d.sms * BLOCKS_PER_SM, BLOCK);
                threads += shape.0 as u64 * shape.1 as u64;
                let b = d.arr.as_mut().expect("set");
                d.k.launch_array(&d.gpu, shape, fh, len, span, per, FILE_SEED, b)?;
            }
            let s = wait(&mut devs, &idx, t0, &bar, "gpu-array")?;
            let el = s.iter().copied().fold(0.0, f64::max).max(1e-9);
            if !measured {
                let rate = threads as f64 * per as f64 / el;
                per = ((rate * secs / threads as f64) as u32).clamp(64, 1 << 24);
                continue;
            }
            let mut stats = GpuCacheStats::default();
            let mut bad = 0;
            let mut per_gpu = Vec::new();
            for (j, &i) in idx.iter().enumerate() {
                let d = &devs[i];
                per_gpu.push((d.sms * BLOCKS_PER_SM * BLOCK) as f64 * per as f64 / s[j].max(1e-9));
                bad += d.arr.as_ref().expect("set").bad()?;
                add_stats(&mut stats, d.gpu.cache_stats()? - before[j]);
            }
            row = (
                threads as f64 * per as f64 / el,
                per_gpu,
                bad,
                stats,
                threads * per as u64,
            );
        }
        if idx.len() == 1 {
            one_rate = Some(row.0);
        }
        rows.push((idx.len(), row));
        if n == 1 {
            break;
        }
    }
    bar.finish_and_clear();
    let bad = warm_bad + rows.iter().map(|r| r.1 .2).sum::<u64>();
    rep.bad += bad;
    let one = one_rate.unwrap_or(0.0);
    rep.json.push(json!({
        "phase": "gpu-array", "element_bytes": 8, "window_bytes": span * 8, "gpu_cache_bytes": cache_bytes,
        "warm_up_bad": warm_bad,
        "sides": rows.iter().map(|(g, (rate, per, bad, st, els))| json!({
            "gpus": g, "elements_per_s": rate, "per_gpu_elements_per_s": per, "elements": els,
            "scaling": rate / (*g as f64 * one).max(1e-9), "bad_elements": bad, "gpu_cache_stats": cache_json(st),
        })).collect::<Vec<_>>(),
    }));
    let t = &mut rep.text;
    t.push_str(&format!(
        "\ngpu-array · wfs_array<u64> element reads in a {} window (GPU cache {}), warmed first\n{:<30} {:>12} {:>8} {:>32}  check\n",
        fmt_bytes(span * 8), fmt_bytes(cache_bytes), "side", "elements/s", "scaling", "GPU cache hit/miss/bypass"
    ));
    for (g, (rate, _, bad, st, _)) in &rows {
        t.push_str(&format!(
            "{:<30} {:>12} {:>8.2} {:>32}  {}\n",
            format!("{g} GPU{}", if *g > 1 { "s" } else { "" }),
            fmt_rate(*rate),
            rate / (*g as f64 * one).max(1e-9),
            format!("{}/{}/{}", st.hits, st.misses, st.bypassed),
            check_cell(*bad + if *g == 1 { warm_bad } else { 0 })
        ));
    }
    Ok(())
}

fn pct(v: &mut [u64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_unstable();
    let k = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[k.clamp(1, v.len()) - 1] as f64 / 1000.0
}

fn latency(
    args: &BenchArgs,
    file: &TestFile,
    device: usize,
    progress: &Progress,
    rep: &mut GpuReport,
) -> Result<()> {
    let (rt, fh) = runtime(args, file)?;
    let mut devs = open_devs(&rt, &[device], args.tier_refs)?;
    let bar = progress.timed(3000, "latency");
    // Idle daemon: channel attached, no kernel running.
    std::thread::sleep(Duration::from_millis(300));
    let idle = CpuMeter::start();
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(2) {
        bar.set_position(t.elapsed().as_millis() as u64);
        std::thread::sleep(Duration::from_millis(50));
    }
    let idle_pct = idle.percent();
    let (_, daemon_threads) = daemon_cpu_ns();
    let mut rows = Vec::new();
    // Fresh runtime: a random page of the whole file misses the host tier (engine read of the
    // warm page cache). Then HOT_PAGES pages, read once unmeasured, hit the host tier.
    for (name, pages, warm) in [
        ("page-cache (engine) read", file.size / 4096, false),
        ("host-tier hit", HOT_PAGES, true),
    ] {
        let d = &mut devs[0];
        let mut bufs = d.k.rand_buffers(32, LAT_SAMPLES)?;
        let l = RandLaunch {
            grid: 1,
            block: 32,
            fh,
            pages,
            reads: LAT_SAMPLES,
            direct: true,
            seed: FILE_SEED,
            lat_per: LAT_SAMPLES,
            warp: true,
        };
        let mut bad = 0;
        if warm {
            let t0 = Instant::now();
            devs[0].k.launch_rand(&devs[0].gpu, &l, &mut bufs)?;
            wait(&mut devs, &[0], t0, &bar, "latency warm-up")?;
            bad += bufs.bad()?;
        }
        let host0 = rt.stats().cache;
        let cpu = CpuMeter::start();
        let t0 = Instant::now();
        devs[0].k.launch_rand(&devs[0].gpu, &l, &mut bufs)?;
        let s = wait(&mut devs, &[0], t0, &bar, "latency")?;
        let cpu_pct = cpu.percent();
        let host1 = rt.stats().cache;
        bad += bufs.bad()?;
        let mut lat = bufs.latencies_ns()?;
        let mean = lat.iter().sum::<u64>() as f64 / lat.len().max(1) as f64 / 1000.0;
        let (p50, p99) = (pct(&mut lat, 50.0), pct(&mut lat, 99.0));
        rows.push(json!({
            "name": name, "samples": lat.len(), "p50_us": p50, "p99_us": p99, "mean_us": mean,
            "max_us": lat.last().map_or(0.0, |v| *v as f64 / 1000.0),
            "seconds": s[0], "daemon_cpu_percent_of_core": cpu_pct,
            "host_tier_hits": host1.hits - host0.hits, "host_tier_misses": host1.misses - host0.misses,
            "bad_reads": bad,
        }));
        rep.bad += bad;
    }
    bar.finish_and_clear();
    rep.json.push(json!({
        "phase": "latency", "request_bytes": 4096, "gpu_threads": 32, "api": "wfs_read_direct_warp (one warp, one request at a time, lanes copy together)",
        "rows": rows, "idle_daemon_cpu_percent_of_core": idle_pct, "daemon_threads": daemon_threads,
    }));
    let t = &mut rep.text;
    t.push_str(&format!(
        "\nlatency · one GPU warp, single 4 KiB wfs_read_direct_warp requests ({LAT_SAMPLES} each; the warp's lanes copy the page together)\n{:<28} {:>9} {:>9} {:>9} {:>9} {:>16}  check\n",
        "request", "p50 µs", "p99 µs", "mean µs", "daemon %", "host hit/miss"
    ));
    for r in &rows {
        t.push_str(&format!(
            "{:<28} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>16}  {}\n",
            r["name"].as_str().unwrap_or(""),
            r["p50_us"].as_f64().unwrap_or(0.0),
            r["p99_us"].as_f64().unwrap_or(0.0),
            r["mean_us"].as_f64().unwrap_or(0.0),
            r["daemon_cpu_percent_of_core"].as_f64().unwrap_or(0.0),
            format!("{}/{}", r["host_tier_hits"], r["host_tier_misses"]),
            check_cell(r["bad_reads"].as_u64().unwrap_or(0))
        ));
    }
    t.push_str(&format!(
        "idle daemon ({daemon_threads} threads, GPU channel attached, 2 s): {idle_pct:.2}% of one core\n"
    ));
    Ok(())
}
