//! `warpfs bench --backend cuda --gpus all|LIST`: warm bulk reads on several GPUs at once,
//! against the one-GPU figure of the same run.
//!
//! Sides, alternated pass by pass until each has run `--seconds` (or `--ops` passes):
//! - **1 GPU**: the whole file into the first listed GPU (the one-GPU default engine);
//! - **spread**: the same file cut into one contiguous range per GPU, all GPUs at once;
//! - **file each**: every GPU reads a whole file of its own (copies of the test file), at once;
//! - **host side alone**: the same CPU threads `pread` the warm file into reused host buffers
//!   and copy nothing to a GPU — what the page cache and host memory allow without DMA;
//! - **PCIe alone** (1 GPU and all): the pipeline's host→device copies from its pinned staging
//!   with no file reads — what the links allow without the page-cache copy.
//!
//! Every pass is checked: device buffers are poisoned first and a GPU-computed checksum of
//! each buffer must equal the CPU's checksum of its file range. Scaling is reported as
//! aggregate / (N × one-GPU); where it falls short, the two "alone" rows say which side
//! (host memory or the links) is the limit.

use super::cuda::cu;
use crate::cli::BenchArgs;
use crate::error::{bail, Context, Result, EXIT_MISMATCH};
use crate::progress::Progress;
use crate::system;
use crate::testfile::TestFile;
use crate::units::fmt_bytes;
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;
use warpfs::backend::cuda::{
    checksum, multi, BulkConfig, BulkFile, ChecksumKernel, CudaBulk, DeviceBuffer, FileRef,
    MultiBulk,
};

const POISON: u8 = 0x5A;

/// The passes of one side: seconds and bytes per pass, per-GPU GB/s of the last pass.
#[derive(Debug, Default)]
struct Side {
    secs: Vec<f64>,
    bytes: u64,
    mismatches: u64,
    threads: usize,
    per_gpu: Vec<Vec<f64>>,
}

impl Side {
    fn gbps(&self) -> f64 {
        self.bytes as f64 / self.secs.iter().sum::<f64>().max(1e-9) / 1e9
    }
    fn done(&self, args: &BenchArgs) -> bool {
        match args.ops {
            Some(n) => self.secs.len() as u64 >= n.max(1),
            None => self.secs.iter().sum::<f64>() >= args.seconds && !self.secs.is_empty(),
        }
    }
    fn per_gpu_gbps(&self) -> Vec<f64> {
        self.per_gpu
            .iter()
            .map(|v| v.iter().sum::<f64>() / v.len().max(1) as f64)
            .collect()
    }
    fn push_gpu(&mut self, i: usize, gbps: f64) {
        if self.per_gpu.len() <= i {
            self.per_gpu.resize(i + 1, Vec::new());
        }
        self.per_gpu[i].push(gbps);
    }
    fn json(&self, name: &str) -> serde_json::Value {
        serde_json::json!({
            "name": name,
            "threads": self.threads,
            "gbps": self.gbps(),
            "per_gpu_gbps": self.per_gpu_gbps(),
            "passes": self.secs.len(),
            "bytes": self.bytes,
            "checksum_mismatches": self.mismatches,
        })
    }
}

/// Runs the multi-GPU bench on the GPUs `spec` names. Returns the exit code.
pub fn run(args: &BenchArgs, spec: &str) -> Result<i32> {
    let wall = Instant::now();
    let say = |m: String| {
        if !args.json {
            eprintln!("{m}");
        }
    };
    super::cuda::check_cuda_args(args)?;
    let devices = multi::parse_gpus(spec, multi::device_count())?;
    let n = devices.len();
    let progress = Progress::new(!args.json);

    // The test file and a copy per further GPU (for the file-each side).
    let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let main = match &args.file {
        Some(p) => TestFile::existing(p)?,
        None => {
            say(format!(
                "creating a {} test file in {}",
                fmt_bytes(args.size),
                dir.display()
            ));
            TestFile::create(&dir, args.size, &progress.bytes(args.size, "creating file"))?
        }
    };
    let size = main.size;
    let mut files = vec![main];
    for i in 1..n {
        say(format!("creating test file {} of {n} (one per GPU)", i + 1));
        files.push(TestFile::create(
            &dir,
            size,
            &progress.bytes(size, "creating file"),
        )?);
    }
    if let Some(avail) = system::mem_available() {
        let need = size * n as u64;
        if need > avail {
            bail!(
                "{n} files of {} ({} together) do not fit in available memory ({}), so they cannot be warm; use a smaller --size",
                fmt_bytes(size),
                fmt_bytes(need),
                fmt_bytes(avail)
            );
        }
    }
    for f in &files {
        say(format!("warming {}", f.shown.display()));
        f.warm(&progress.bytes(size, "warming"))?;
    }
    say("checksumming on the CPU".into());
    let cores = system::cores();
    let (want_whole, got) = checksum::checksum_file(files[0].open_path(), None, cores)?;
    if got != size {
        bail!("{} changed size during the run", files[0].shown.display());
    }
    let mut multi_cfg = MultiBulk::default_config(n);
    let mut one_cfg = BulkConfig::default();
    if let Some(t) = args.threads {
        if t == 0 {
            bail!("--threads must be at least 1");
        }
        multi_cfg.threads = t;
        one_cfg.threads = t;
    }
    let mb = MultiBulk::new(&devices, multi_cfg.clone())
        .ctx(|| "starting the per-GPU bulk engines".into())?;
    let ranges = mb.split(0, size);
    let want_ranges: Vec<u64> =
        checksum::checksum_file_ranges(files[0].open_path(), &ranges, cores)?
            .into_iter()
            .map(|c| c.0)
            .collect();
    let one =
        CudaBulk::new(devices[0], one_cfg).ctx(|| "starting the one-GPU bulk engine".into())?;

    let len = usize::try_from(size).ctx(|| "file size".into())?;
    let gpu_mem = |e: String| format!("allocating GPU memory ({e}); use a smaller --size");
    let mut whole = one
        .alloc(len)
        .ctx(|| gpu_mem(format!("{} on GPU {}", fmt_bytes(size), devices[0])))?;
    let mut parts = mb
        .alloc_spread(size)
        .ctx(|| gpu_mem("one range per GPU".into()))?;
    let mut each: Vec<DeviceBuffer> = mb
        .engines()
        .iter()
        .map(|e| e.alloc(len))
        .collect::<warpfs::Result<_>>()
        .map_err(|e| {
            crate::error::CliError(gpu_mem(format!("{} per GPU: {e}", fmt_bytes(size))))
        })?;
    let mut kernels: Vec<ChecksumKernel> = mb
        .engines()
        .iter()
        .map(|e| ChecksumKernel::new(e.context()))
        .collect::<warpfs::Result<_>>()?;
    let mut k_one = ChecksumKernel::new(one.context())?;
    let bulk_files = files
        .iter()
        .map(|f| BulkFile::open(f.open_path()))
        .collect::<warpfs::Result<Vec<_>>>()?;
    let refs: Vec<FileRef<'_>> = bulk_files.iter().map(FileRef::from).collect();

    // Unmeasured first passes (first touch of staging and device memory).
    one.read(refs[0], 0, &mut whole, 0, size)?;
    mb.read_spread(refs[0], 0, size, &mut parts)?;
    mb.read_each(&refs, &mut each)?;

    let host_threads = multi_cfg.threads * n;
    let mut s_one = Side {
        threads: one.config().threads,
        ..Side::default()
    };
    let mut s_spread = Side::default();
    let mut s_each = Side::default();
    let mut s_host = Side {
        threads: host_threads,
        ..Side::default()
    };
    let mut s_pcie1 = Side {
        threads: one.config().threads,
        ..Side::default()
    };
    let mut s_pcie = Side::default();
    let bar = match args.ops {
        Some(k) => progress.ops(6 * k.max(1), "multi-GPU bulk"),
        None => progress.timed((6.0 * args.seconds * 1000.0) as u64, "multi-GPU bulk"),
    };
    let plain = std::fs::File::open(files[0].open_path())
        .ctx(|| format!("opening {}", files[0].shown.display()))?;
    let mut host_bufs: Vec<Vec<u8>> = (0..host_threads)
        .map(|_| vec![1u8; multi_cfg.chunk_bytes])
        .collect();
    let all_done = |v: [&Side; 6]| v.iter().all(|s| s.done(args));
    while !all_done([&s_one, &s_spread, &s_each, &s_host, &s_pcie1, &s_pcie]) {
        if !s_one.done(args) {
            cu(whole.fill(POISON))?;
            let r = one.read(refs[0], 0, &mut whole, 0, size)?;
            s_one.secs.push(r.elapsed.as_secs_f64());
            s_one.bytes += r.bytes;
            s_one.push_gpu(0, r.gb_per_s());
            s_one.mismatches +=
                u64::from(r.bytes != size || k_one.checksum(&whole, size)? != want_whole);
        }
        if !s_spread.done(args) {
            for p in parts.iter_mut() {
                cu(p.fill(POISON))?;
            }
            let r = mb.read_spread(refs[0], 0, size, &mut parts)?;
            s_spread.secs.push(r.elapsed.as_secs_f64());
            s_spread.bytes += r.bytes;
            s_spread.threads = r.threads();
            for (i, g) in r.per_gpu.iter().enumerate() {
                s_spread.push_gpu(i, g.gb_per_s());
                let ok = g.bytes == ranges[i].1
                    && kernels[i].checksum(&parts[i], ranges[i].1)? == want_ranges[i];
                s_spread.mismatches += u64::from(!ok);
            }
        }
        if !s_each.done(args) {
            for b in each.iter_mut() {
                cu(b.fill(POISON))?;
            }
            let r = mb.read_each(&refs, &mut each)?;
            s_each.secs.push(r.elapsed.as_secs_f64());
            s_each.bytes += r.bytes;
            s_each.threads = r.threads();
            for (i, g) in r.per_gpu.iter().enumerate() {
                s_each.push_gpu(i, g.gb_per_s());
                let ok = g.bytes == size && kernels[i].checksum(&each[i], size)? == want_whole;
                s_each.mismatches += u64::from(!ok);
            }
        }
        if !s_host.done(args) {
            let (secs, bytes) = host_pass(&plain, size, &mut host_bufs)?;
            s_host.secs.push(secs);
            s_host.bytes += bytes;
        }
        if !s_pcie1.done(args) {
            let r = one.copy_only(&mut whole, size)?;
            s_pcie1.secs.push(r.elapsed.as_secs_f64());
            s_pcie1.bytes += r.bytes;
            s_pcie1.push_gpu(0, r.gb_per_s());
        }
        if !s_pcie.done(args) {
            let r = mb.copy_only(&mut each)?;
            s_pcie.secs.push(r.elapsed.as_secs_f64());
            s_pcie.bytes += r.bytes;
            s_pcie.threads = r.threads();
            for (i, g) in r.per_gpu.iter().enumerate() {
                s_pcie.push_gpu(i, g.gb_per_s());
            }
        }
        let sides = [&s_one, &s_spread, &s_each, &s_host, &s_pcie1, &s_pcie];
        let passes: u64 = sides.iter().map(|s| s.secs.len() as u64).sum();
        match args.ops {
            Some(_) => bar.set_position(passes),
            None => bar.set_position(
                sides
                    .iter()
                    .map(|s| (s.secs.iter().sum::<f64>().min(args.seconds) * 1000.0) as u64)
                    .sum(),
            ),
        }
    }
    bar.finish_and_clear();
    drop((whole, parts, each));
    let gpu = super::gpu_io::run_phases(
        args,
        &files[0],
        &devices,
        &super::gpu_io::wanted(args),
        &progress,
    )?;

    let one_gbps = s_one.gbps();
    let scaling = |s: &Side| s.gbps() / (n as f64 * one_gbps).max(1e-9);
    let mismatches = s_one.mismatches + s_spread.mismatches + s_each.mismatches + gpu.bad;
    let names: Vec<String> = mb
        .engines()
        .iter()
        .map(|e| e.context().name().to_string())
        .collect();
    let placements: Vec<serde_json::Value> = mb
        .engines()
        .iter()
        .map(|e| {
            let p = e.placement();
            serde_json::json!({"device": e.context().ordinal(), "pci_bus_id": p.pci_bus_id, "numa_node": p.node})
        })
        .collect();
    let n_one = format!("1 GPU (device {})", devices[0]);
    let n_spread = format!("{n} GPUs, one file spread");
    let n_each = format!("{n} GPUs, a file each");
    let n_host = "host side alone: pread, no GPU".to_string();
    let n_pcie1 = "PCIe alone: 1 GPU, no file reads".to_string();
    let n_pcie = format!("PCIe alone: {n} GPUs, no file reads");
    if args.json {
        let j = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "backend": "cuda",
            "phase": "multi-gpu-seq",
            "devices": devices,
            "device_names": names,
            "placement": placements,
            "cores": cores,
            "file": {"size": size, "cache": "warm", "files": n},
            "per_gpu_threads": multi_cfg.threads,
            "sides": [s_one.json(&n_one), s_spread.json(&n_spread), s_each.json(&n_each), s_host.json(&n_host), s_pcie1.json(&n_pcie1), s_pcie.json(&n_pcie)],
            "scaling_spread": scaling(&s_spread),
            "scaling_each": scaling(&s_each),
            "host_pread_only_gbps": s_host.gbps(),
            "pcie_only_one_gbps": s_pcie1.gbps(),
            "pcie_only_all_gbps": s_pcie.gbps(),
            "gpu_phases": gpu.json,
            "mismatches": mismatches,
            "wall_seconds": wall.elapsed().as_secs_f64(),
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&j).expect("report serialises")
        );
    } else {
        println!(
            "warpfs bench --backend cuda --gpus {spec} · {n} × {} · {cores} cores · {} warm file{}",
            names.first().map_or("?", String::as_str),
            fmt_bytes(size),
            if n > 1 {
                " (one per GPU for `a file each`)"
            } else {
                ""
            }
        );
        println!();
        println!(
            "{:<34} {:>7} {:>9} {:>22} {:>8} {:>6}  checksum",
            "side", "threads", "GB/s", "per GPU GB/s", "scaling", "passes"
        );
        for (name, s, sc) in [
            (&n_one, &s_one, Some(1.0 / n as f64)),
            (&n_spread, &s_spread, Some(scaling(&s_spread))),
            (&n_each, &s_each, Some(scaling(&s_each))),
            (&n_host, &s_host, None),
            (&n_pcie1, &s_pcie1, None),
            (&n_pcie, &s_pcie, None),
        ] {
            let per = s
                .per_gpu_gbps()
                .iter()
                .map(|g| format!("{g:.1}"))
                .collect::<Vec<_>>()
                .join(" / ");
            println!(
                "{:<34} {:>7} {:>9.2} {:>22} {:>8} {:>6}  {}",
                name,
                s.threads,
                s.gbps(),
                per,
                sc.map_or("—".into(), |v| format!("{v:.2}")),
                s.secs.len(),
                if [&s_host, &s_pcie1, &s_pcie]
                    .iter()
                    .any(|x| std::ptr::eq(s, *x))
                {
                    "—".to_string()
                } else if s.mismatches == 0 {
                    "ok".into()
                } else {
                    format!("{} WRONG", s.mismatches)
                }
            );
        }
        println!(
            "scaling = aggregate / ({n} × one-GPU); goal ≥ 0.8 until host memory bandwidth is the limit"
        );
        println!(
            "a warm read moves each byte through host memory three times (page cache → staging: \
             read + write; staging → GPU: read); `pread` alone moves it twice, the PCIe rows once"
        );
        print!("{}", gpu.text);
    }
    Ok(if mismatches > 0 { EXIT_MISMATCH } else { 0 })
}

/// One host-ceiling pass: `bufs.len()` threads `pread` the file in buffer-sized blocks into
/// their own reused buffer. Returns (seconds, bytes).
fn host_pass(f: &std::fs::File, size: u64, bufs: &mut [Vec<u8>]) -> Result<(f64, u64)> {
    let block = bufs.first().map_or(4 << 20, Vec::len) as u64;
    let blocks = size.div_ceil(block);
    let next = AtomicU64::new(0);
    let t0 = Instant::now();
    let results: Vec<std::io::Result<u64>> = std::thread::scope(|s| {
        let hs: Vec<_> = bufs
            .iter_mut()
            .map(|buf| {
                let next = &next;
                s.spawn(move || {
                    let mut got = 0u64;
                    loop {
                        let b = next.fetch_add(1, Ordering::Relaxed);
                        if b >= blocks {
                            return Ok(got);
                        }
                        let o = b * block;
                        let k = (size - o).min(block) as usize;
                        f.read_exact_at(&mut buf[..k], o)?;
                        got += k as u64;
                    }
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("host reader"))
            .collect()
    });
    let secs = t0.elapsed().as_secs_f64();
    let mut bytes = 0;
    for r in results {
        bytes += r?;
    }
    Ok((secs, bytes))
}
