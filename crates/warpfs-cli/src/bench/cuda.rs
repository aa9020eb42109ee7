//! `warpfs bench --backend cuda`: the `seq` phase on the GPU — the whole (warm) file into GPU
//! memory through the CUDA bulk path (`CudaBulk`), against the honest in-process baseline of
//! the same run: one thread that `pread`s 64 MiB blocks into ordinary (pageable) memory and
//! copies each with a synchronous `cuMemcpyHtoD`. Passes alternate between the two sides until
//! each has run `--seconds` (or `--ops` passes). Before every pass the device buffer is
//! poisoned; after it, a checksum computed on the GPU must equal the CPU's checksum of the file.
//! KvikIO is compared in `bench/compare`, not here.

use crate::cli::{BenchArgs, Phase};
use crate::error::{bail, Context, Result, EXIT_MISMATCH};
use crate::progress::Progress;
use crate::system;
use crate::testfile::TestFile;
use crate::units::fmt_bytes;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};
use warpfs::backend::cuda::{
    self, checksum, BulkConfig, BulkFile, ChecksumKernel, CudaBulk, DeviceBuffer,
};

/// Block size of the baseline's `pread` + `cuMemcpyHtoD`.
const BASE_BLOCK: usize = 64 << 20;
/// Poison written over the device buffer before every pass.
const POISON: u8 = 0xA5;

/// Passes of one side.
#[derive(Debug, Default)]
struct Side {
    secs: Vec<f64>,
    bytes: u64,
    mismatches: u64,
    threads: usize,
}

impl Side {
    fn total(&self) -> Duration {
        Duration::from_secs_f64(self.secs.iter().sum())
    }
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.total().as_secs_f64().max(1e-9) / 1e9
    }
    fn rates(&self, size: u64) -> Vec<f64> {
        let mut v: Vec<f64> = self
            .secs
            .iter()
            .map(|s| size as f64 / s.max(1e-9) / 1e9)
            .collect();
        v.sort_by(f64::total_cmp);
        v
    }
    fn json(&self, name: &str, size: u64) -> serde_json::Value {
        let r = self.rates(size);
        serde_json::json!({
            "name": name,
            "threads": self.threads,
            "gbps": self.gbps(),
            "median_gbps": median(&r),
            "min_gbps": r.first().copied(),
            "max_gbps": r.last().copied(),
            "passes": self.secs.len(),
            "bytes": self.bytes,
            "seconds": self.total().as_secs_f64(),
            "checksum_mismatches": self.mismatches,
        })
    }
}

/// `warpfs bench --backend cuda`. Returns the exit code.
pub fn run(args: &BenchArgs) -> Result<i32> {
    let wall = Instant::now();
    let say = |m: String| {
        if !args.json {
            eprintln!("{m}");
        }
    };
    check_cuda_args(args)?;
    let gpu_phases = super::gpu_io::wanted(args);
    let mut skipped = Vec::new();
    for p in &args.phases {
        if *p != Phase::Seq && *p != Phase::RandRead && !p.gpu() {
            skipped.push(serde_json::json!({
                "phase": p.name(),
                "reason": "the cuda backend runs seq (file → GPU memory) and the GPU-initiated phases; use --backend host for it",
            }));
        }
    }
    if !args.phases.contains(&Phase::Seq) {
        if gpu_phases.is_empty() {
            bail!(
                "--backend cuda runs seq, gpu-rand-read, gpu-array and latency; add --phases seq"
            );
        }
        return super::gpu_io::run_standalone(args, &[0]);
    }
    let progress = Progress::new(!args.json);
    let file = match &args.file {
        Some(p) => TestFile::existing(p)?,
        None => {
            let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
            say(format!(
                "creating a {} test file in {}",
                fmt_bytes(args.size),
                dir.display()
            ));
            TestFile::create(&dir, args.size, &progress.bytes(args.size, "creating file"))?
        }
    };
    let size = file.size;
    let len = usize::try_from(size).ctx(|| "file size".into())?;
    if let Some(avail) = system::mem_available() {
        if size > avail {
            bail!(
                "the file ({}) does not fit in available memory ({}), so it cannot be warm in the page cache; use a smaller --size or --file",
                fmt_bytes(size),
                fmt_bytes(avail)
            );
        }
    }
    say(format!(
        "warming {} into the page cache",
        file.shown.display()
    ));
    file.warm(&progress.bytes(size, "warming"))?;
    say("checksumming the file on the CPU".into());
    let (want, n) = checksum::checksum_file(file.open_path(), None, system::cores())?;
    if n != size {
        bail!("{} changed size during the run", file.shown.display());
    }

    let mut cfg = BulkConfig::default();
    if let Some(t) = args.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        cfg.threads = t;
    }
    let eng = CudaBulk::new(0, cfg).ctx(|| "starting the CUDA bulk engine".into())?;
    let mut dst = eng.alloc(len).ctx(|| {
        format!(
            "allocating {} of GPU memory; the file must fit in free GPU memory (use a smaller --size or --file)",
            fmt_bytes(size)
        )
    })?;
    let mut kernel = ChecksumKernel::new(eng.context())?;
    let bf = BulkFile::open(file.open_path())?;
    let plain = std::fs::File::open(file.open_path())
        .ctx(|| format!("opening {}", file.shown.display()))?;
    let mut host = vec![0u8; BASE_BLOCK.min(len.max(1))];

    // One unmeasured pass of warpfs (first touches of its staging and the device buffer).
    let first = eng.read(&bf, 0, &mut dst, 0, size)?;
    let (path, path_reason) = (first.path, first.path_reason);

    let mut w = Side::default();
    let mut b = Side {
        threads: 1,
        ..Side::default()
    };
    let target = Duration::from_secs_f64(args.seconds);
    let done = |s: &Side| match args.ops {
        Some(n) => s.secs.len() as u64 >= n.max(1),
        None => s.total() >= target && !s.secs.is_empty(),
    };
    let bar = match args.ops {
        Some(n) => progress.ops(2 * n.max(1), "seq (cuda)"),
        None => progress.timed(2 * target.as_millis() as u64, "seq (cuda)"),
    };
    while !done(&w) || !done(&b) {
        if !done(&b) {
            cu(dst.fill(POISON))?;
            let t0 = Instant::now();
            let got = baseline_pass(&plain, &mut host, &mut dst, size)
                .ctx(|| "baseline pread + cuMemcpyHtoD".into())?;
            b.secs.push(t0.elapsed().as_secs_f64());
            b.bytes += got;
            b.mismatches += u64::from(got != size || kernel.checksum(&dst, size)? != want);
        }
        if !done(&w) {
            cu(dst.fill(POISON))?;
            let r = eng.read(&bf, 0, &mut dst, 0, size)?;
            w.secs.push(r.elapsed.as_secs_f64());
            w.bytes += r.bytes;
            w.threads = r.threads;
            w.mismatches += u64::from(r.bytes != size || kernel.checksum(&dst, size)? != want);
        }
        bar.set_position(match args.ops {
            Some(_) => (w.secs.len() + b.secs.len()) as u64,
            None => (w.total().min(target) + b.total().min(target)).as_millis() as u64,
        });
    }
    bar.finish_and_clear();
    drop(dst);
    let gpu = super::gpu_io::run_phases(args, &file, &[0], &gpu_phases, &progress)?;

    let c = eng.config();
    let wname = format!(
        "warpfs CudaBulk ({} × {} pinned/thread)",
        fmt_bytes(c.chunk_bytes as u64),
        c.buffers_per_thread
    );
    let bname = "pread + pageable cuMemcpyHtoD (64 MiB)";
    let ratio = w.gbps() / b.gbps().max(1e-9);
    let mismatches = w.mismatches + b.mismatches + gpu.bad;
    let device = eng.context().name().to_string();
    if args.json {
        let j = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "backend": "cuda",
            "device": device,
            "cores": system::cores(),
            "file": {
                "path": file.shown.display().to_string(),
                "size": size,
                "temporary": file.temporary,
                "pattern": file.pattern,
                "cache": "warm",
            },
            "path": path,
            "path_reason": path_reason,
            "threads": w.threads,
            "gbps": w.gbps(),
            "config": {
                "threads": c.threads,
                "chunk_bytes": c.chunk_bytes,
                "buffers_per_thread": c.buffers_per_thread,
                "streams": c.streams,
                "staging": format!("{:?}", c.staging),
                "cold_reads": format!("{:?}", c.cold_reads),
            },
            "phases": [{
                "phase": "seq",
                "warpfs": w.json(&wname, size),
                "baseline": b.json(bname, size),
                "ratio": ratio,
            }],
            "gpu_phases": gpu.json,
            "skipped": skipped,
            "mismatches": mismatches,
            "wall_seconds": wall.elapsed().as_secs_f64(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&j).expect("report serialises")
        );
    } else {
        println!(
            "warpfs bench --backend cuda · {device} · {} cores",
            system::cores()
        );
        println!(
            "file {} ({}, warm) · path {path} ({path_reason})",
            file.shown.display(),
            fmt_bytes(size)
        );
        println!();
        println!(
            "{:<5} {:<44} {:>7} {:>8} {:>15} {:>6}  checksum",
            "phase", "side", "threads", "GB/s", "pass min–max", "passes"
        );
        for (name, s) in [(wname.as_str(), &w), (bname, &b)] {
            let r = s.rates(size);
            println!(
                "{:<5} {:<44} {:>7} {:>8.2} {:>15} {:>6}  {}",
                "seq",
                name,
                s.threads,
                s.gbps(),
                format!(
                    "{:.2}–{:.2}",
                    r.first().copied().unwrap_or(0.0),
                    r.last().copied().unwrap_or(0.0)
                ),
                s.secs.len(),
                if s.mismatches == 0 {
                    "ok".to_string()
                } else {
                    format!("{} WRONG", s.mismatches)
                }
            );
        }
        println!("warpfs / baseline: {ratio:.2}×");
        print!("{}", gpu.text);
        for s in &skipped {
            println!("skipped {}: {}", s["phase"], s["reason"]);
        }
    }
    Ok(if mismatches > 0 { EXIT_MISMATCH } else { 0 })
}

/// One baseline pass: `pread` 64 MiB blocks into pageable memory, `cuMemcpyHtoD` each.
fn baseline_pass(
    f: &std::fs::File,
    host: &mut [u8],
    dst: &mut DeviceBuffer,
    size: u64,
) -> Result<u64> {
    let mut o = 0u64;
    while o < size {
        let k = (size - o).min(host.len() as u64) as usize;
        let n = f.read_at(&mut host[..k], o)?;
        if n == 0 {
            break;
        }
        cu(dst.copy_from_host(o as usize, &host[..n]))?;
        o += n as u64;
    }
    Ok(o)
}

/// The checks every `--backend cuda` bench starts with: a usable driver and a sane `--seconds`.
pub fn check_cuda_args(args: &BenchArgs) -> Result<()> {
    if let Err(e) = cuda::driver::init() {
        bail!("{e}");
    }
    if !(args.seconds > 0.0 && args.seconds.is_finite()) {
        bail!("--seconds must be a positive number, e.g. --seconds 3");
    }
    Ok(())
}

/// A driver error as the CLI's error.
pub fn cu<T>(r: Result<T, cuda::CudaError>) -> Result<T> {
    r.map_err(|e| warpfs::Error::from(e).into())
}

/// Median of sorted values (mean of the middle two for an even count).
fn median(v: &[f64]) -> Option<f64> {
    match v.len() {
        0 => None,
        n if n % 2 == 1 => Some(v[n / 2]),
        n => Some((v[n / 2 - 1] + v[n / 2]) / 2.0),
    }
}
