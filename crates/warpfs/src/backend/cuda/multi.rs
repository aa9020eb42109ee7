//! Several GPUs of one host behind one bulk engine: one file spread over the GPUs (GPU `i`
//! gets the `i`-th contiguous range) or a file per GPU, all devices moving at once.
//!
//! Each GPU has its own [`CudaBulk`] — its own pinned staging pool (allocated on the GPU's
//! NUMA node where the host has several, see [`super::numa`]), streams and worker threads — so
//! the devices never wait on each other; the calls of one [`MultiBulk`] run the per-GPU
//! engines concurrently from scoped threads and report per-GPU and aggregate throughput.
//! GPU-initiated I/O scales the same way: one [`super::gpu_io::GpuIo`] channel per device,
//! all attached to one [`crate::Runtime`], whose daemon workers and host cache tier they share.
//!
//! Where the aggregate stops growing is usually the host's memory bandwidth: every warm byte
//! is read from the page cache, written to staging and read again by the DMA engine. Staging
//! that stays in the last-level cache ([`staging_chunk`]) avoids the DRAM round trip. DMA
//! straight from pinned page-cache windows (`mmap` + `cuMemHostRegister(READ_ONLY)` per window)
//! was measured and rejected: pinning does not scale with threads or GPUs (at most 18.2 GB/s on
//! one GPU, 15.5 on two, against 47–53 for the staging pipeline; `bench/RESULTS.md`,
//! 2026-11-25, commit 3e2e02d).

use super::bulk::{BulkConfig, CudaBulk, FileRef, TransferReport, DIO_ALIGN};
use super::driver::{self, check, DeviceBuffer};
use crate::{Error, Result};
use cudarc::driver::sys;
use std::time::{Duration, Instant};

/// The number of CUDA devices the driver reports (0 without a usable driver).
pub fn device_count() -> usize {
    if driver::init().is_err() {
        return 0;
    }
    let mut n = 0;
    // SAFETY: the driver is initialised; n is a valid out pointer.
    match check(unsafe { sys::cuDeviceGetCount(&mut n) }, "cuDeviceGetCount") {
        Ok(()) => usize::try_from(n).unwrap_or(0),
        Err(_) => 0,
    }
}

/// Parses a GPU selection: `all`, or device ordinals separated by commas (`0`, `0,1`),
/// checked against `count` devices. Duplicates are refused.
pub fn parse_gpus(spec: &str, count: usize) -> Result<Vec<usize>> {
    let spec = spec.trim();
    if count == 0 {
        return Err(Error::Config(
            "no CUDA device found: --gpus needs a machine with an NVIDIA GPU and its driver".into(),
        ));
    }
    if spec.eq_ignore_ascii_case("all") {
        return Ok((0..count).collect());
    }
    let mut out = Vec::new();
    for part in spec.split(',') {
        let d: usize = part.trim().parse().map_err(|_| {
            Error::Config(format!(
                "--gpus {spec:?}: use `all` or device ordinals like `0,1` (this machine has {count})"
            ))
        })?;
        if d >= count {
            return Err(Error::Config(format!(
                "--gpus {spec:?}: device {d} does not exist; this machine has {count} (0..={})",
                count - 1
            )));
        }
        if out.contains(&d) {
            return Err(Error::Config(format!(
                "--gpus {spec:?}: device {d} is named twice"
            )));
        }
        out.push(d);
    }
    Ok(out)
}

/// Splits `[offset, offset + len)` into `n` contiguous ranges `(offset, len)` whose cuts fall
/// on multiples of `align` (so every range but the first starts `O_DIRECT`-aligned); trailing
/// ranges may be empty when `len` is small.
pub fn split_range(offset: u64, len: u64, n: usize, align: u64) -> Vec<(u64, u64)> {
    let n = n.max(1) as u64;
    let align = align.max(1);
    let per = len.div_ceil(n).div_ceil(align) * align;
    (0..n)
        .map(|i| {
            let a = (i * per).min(len);
            let b = ((i + 1) * per).min(len);
            (offset + a, b - a)
        })
        .collect()
}

/// The staging chunk for `gpus` GPUs × `threads` × `buffers` staging buffers: the largest power
/// of two from 1 MiB to 4 MiB with all staging within half of `llc` bytes of last-level cache
/// (4 MiB when the cache size is unknown and one GPU, else 2 MiB).
///
/// Why: with several GPUs the host's memory bandwidth is the limit, and staging that stays in
/// the cache is written by the page-cache copy and read by the DMA without a trip to DRAM.
/// Measured on the 2×H100 host (300 MiB L3, 12 threads × 2 buffers per GPU, 8 GiB warm file,
/// medians of 3, 2026-11-25, `examples/multi_sweep.rs`): two GPUs spread 50.3 GB/s with
/// 4 MiB chunks (192 MiB of staging), 80.1 with 2 MiB (96 MiB), 75.1 with 1 MiB, 50.8 with
/// 512 KiB (per-chunk costs take over); one GPU 4 MiB stays the one-GPU default.
pub fn staging_chunk(gpus: usize, threads: usize, buffers: usize, llc: Option<u64>) -> usize {
    const MIB: u64 = 1 << 20;
    let Some(llc) = llc else {
        return if gpus <= 1 { 4 << 20 } else { 2 << 20 };
    };
    let per = (llc / 2) / (gpus.max(1) * threads.max(1) * buffers.max(1)) as u64;
    let mut c = 4 * MIB;
    while c > MIB && c > per {
        c /= 2;
    }
    c as usize
}

/// The last-level cache of CPU 0 in bytes, from sysfs (`/sys/devices/system/cpu/cpu0/cache`).
pub fn llc_bytes() -> Option<u64> {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut best: Option<(u32, u64)> = None;
    for e in std::fs::read_dir(dir).ok()?.flatten() {
        let p = e.path();
        let level = std::fs::read_to_string(p.join("level"))
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let size = std::fs::read_to_string(p.join("size"))
            .ok()
            .and_then(|s| parse_cache_size(&s));
        if let (Some(l), Some(sz)) = (level, size) {
            if best.is_none_or(|(bl, _)| l > bl) {
                best = Some((l, sz));
            }
        }
    }
    best.map(|b| b.1)
}

/// Parses sysfs cache sizes such as `491520K`, `32M` or `1048576`.
fn parse_cache_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let (num, mul) = match s.chars().last()? {
        'K' | 'k' => (&s[..s.len() - 1], 1u64 << 10),
        'M' | 'm' => (&s[..s.len() - 1], 1 << 20),
        'G' | 'g' => (&s[..s.len() - 1], 1 << 30),
        _ => (s, 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mul)
}

/// What a multi-GPU call did: each GPU's report and the aggregate.
#[derive(Debug, Clone, Default)]
pub struct MultiReport {
    /// One report per GPU, in the order of [`MultiBulk::devices`].
    pub per_gpu: Vec<TransferReport>,
    /// Bytes moved by all GPUs together.
    pub bytes: u64,
    /// Wall time from the first GPU's start to the last one's end.
    pub elapsed: Duration,
}

impl MultiReport {
    /// Aggregate throughput in GB/s (10^9 bytes per second of wall time).
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
    /// CPU threads that moved data, all GPUs together.
    pub fn threads(&self) -> usize {
        self.per_gpu.iter().map(|r| r.threads).sum()
    }
}

/// Bulk engines for several GPUs, used together.
#[derive(Debug)]
pub struct MultiBulk {
    engines: Vec<CudaBulk>,
}

impl MultiBulk {
    /// The default per-GPU configuration for `gpus` devices sharing this host: the one-GPU
    /// default with the CPU threads shared out (1 ..= 12 per GPU) and the staging chunk sized
    /// so that all GPUs' staging together fits in half the CPU's last-level cache
    /// ([`staging_chunk`]).
    pub fn default_config(gpus: usize) -> BulkConfig {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        let base = BulkConfig::default();
        let threads = (cores / gpus.max(1)).clamp(1, 12);
        BulkConfig {
            threads,
            chunk_bytes: staging_chunk(gpus, threads, base.buffers_per_thread, llc_bytes()),
            ..base
        }
    }

    /// Builds one [`CudaBulk`] per device in `devices` with `cfg` each (pins
    /// `threads × buffers_per_thread × chunk_bytes` per GPU, on its NUMA node).
    pub fn new(devices: &[usize], cfg: BulkConfig) -> Result<Self> {
        if devices.is_empty() {
            return Err(Error::Config("MultiBulk needs at least one device".into()));
        }
        let engines = devices
            .iter()
            .map(|&d| CudaBulk::new(d, cfg.clone()))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self { engines })
    }

    /// The per-GPU engines, in the order the devices were given.
    pub fn engines(&self) -> &[CudaBulk] {
        &self.engines
    }

    /// The device ordinals, in order.
    pub fn devices(&self) -> Vec<usize> {
        self.engines.iter().map(|e| e.context().ordinal()).collect()
    }

    /// How [`read_spread`](Self::read_spread) cuts `[offset, offset + len)`: one range per GPU.
    pub fn split(&self, offset: u64, len: u64) -> Vec<(u64, u64)> {
        let align = self
            .engines
            .first()
            .map_or(DIO_ALIGN as u64, |e| e.config().chunk_bytes as u64);
        split_range(offset, len, self.engines.len(), align)
    }

    /// Allocates on each GPU a buffer for its range of a spread read of `len` bytes.
    pub fn alloc_spread(&self, len: u64) -> Result<Vec<DeviceBuffer>> {
        self.engines
            .iter()
            .zip(self.split(0, len))
            .map(|(e, (_, l))| e.alloc(usize::try_from(l.max(1)).unwrap_or(usize::MAX)))
            .collect()
    }

    /// Reads `[offset, offset + len)` of one file spread over the GPUs: GPU `i` gets range
    /// `split(offset, len)[i]` at offset 0 of `dsts[i]` (a buffer of its device). All GPUs
    /// run at once; short only at end of file.
    pub fn read_spread(
        &self,
        file: FileRef<'_>,
        offset: u64,
        len: u64,
        dsts: &mut [DeviceBuffer],
    ) -> Result<MultiReport> {
        let ranges = self.split(offset, len);
        self.check_dsts(dsts)?;
        self.run(dsts, |i, eng, dst| {
            let (o, l) = ranges[i];
            eng.read(file, o, dst, 0, l)
        })
    }

    /// Reads a file per GPU: the first `dsts[i].len()` bytes (at most) of `files[i]` into
    /// `dsts[i]`, all GPUs at once.
    pub fn read_each(
        &self,
        files: &[FileRef<'_>],
        dsts: &mut [DeviceBuffer],
    ) -> Result<MultiReport> {
        if files.len() != self.engines.len() {
            return Err(Error::Config(format!(
                "read_each needs one file per GPU: {} files for {} GPUs",
                files.len(),
                self.engines.len()
            )));
        }
        self.check_dsts(dsts)?;
        self.run(dsts, |i, eng, dst| {
            let l = dst.len() as u64;
            eng.read(files[i], 0, dst, 0, l)
        })
    }

    /// The PCIe side alone on every GPU at once: [`CudaBulk::copy_only`] of each buffer's
    /// whole length (no file reads). Beside [`read_spread`](Self::read_spread) it tells whether
    /// the links or the host side limit the aggregate.
    pub fn copy_only(&self, dsts: &mut [DeviceBuffer]) -> Result<MultiReport> {
        self.check_dsts(dsts)?;
        self.run(dsts, |_, eng, dst| {
            let l = dst.len() as u64;
            eng.copy_only(dst, l)
        })
    }

    fn check_dsts(&self, dsts: &[DeviceBuffer]) -> Result<()> {
        if dsts.len() != self.engines.len() {
            return Err(Error::Config(format!(
                "one device buffer per GPU is needed: {} buffers for {} GPUs",
                dsts.len(),
                self.engines.len()
            )));
        }
        Ok(())
    }

    /// Runs `work` for every GPU concurrently (GPU 0 on the calling thread).
    fn run<F>(&self, dsts: &mut [DeviceBuffer], work: F) -> Result<MultiReport>
    where
        F: Fn(usize, &CudaBulk, &mut DeviceBuffer) -> Result<TransferReport> + Sync,
    {
        let t0 = Instant::now();
        let results: Vec<Result<TransferReport>> = std::thread::scope(|s| {
            let mut it = self.engines.iter().zip(dsts.iter_mut()).enumerate();
            let (i0, (e0, d0)) = it.next().expect("at least one engine");
            let handles: Vec<_> = it
                .map(|(i, (e, d))| {
                    let work = &work;
                    s.spawn(move || work(i, e, d))
                })
                .collect();
            let mut out = vec![work(i0, e0, d0)];
            for h in handles {
                out.push(h.join().unwrap_or_else(|_| {
                    Err(Error::Config("a multi-GPU worker thread panicked".into()))
                }));
            }
            out
        });
        let elapsed = t0.elapsed();
        let per_gpu = results.into_iter().collect::<Result<Vec<_>>>()?;
        Ok(MultiReport {
            bytes: per_gpu.iter().map(|r| r.bytes).sum(),
            per_gpu,
            elapsed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_covers_the_range_in_aligned_pieces() {
        for &(off, len, n) in &[
            (0u64, 0u64, 2usize),
            (0, 1, 2),
            (0, 8 << 30, 2),
            (4096, (8 << 30) + 12345, 3),
            (0, 5 << 20, 4),
            (7, 100 << 20, 8),
        ] {
            let r = split_range(off, len, n, 4 << 20);
            assert_eq!(r.len(), n);
            let mut at = off;
            for (i, &(o, l)) in r.iter().enumerate() {
                assert_eq!(o, at, "pieces are contiguous ({off}, {len}, {n})");
                if i > 0 && l > 0 {
                    assert_eq!((o - off) % (4 << 20), 0, "cuts on chunk multiples");
                }
                at += l;
            }
            assert_eq!(at, off + len, "pieces cover the range");
        }
        // Even split of 8 GiB over 2.
        assert_eq!(
            split_range(0, 8 << 30, 2, 4 << 20),
            vec![(0, 4 << 30), (4 << 30, 4 << 30)]
        );
    }

    #[test]
    fn gpu_lists_parse_and_are_checked() {
        assert_eq!(parse_gpus("all", 2).unwrap(), vec![0, 1]);
        assert_eq!(parse_gpus(" ALL ", 1).unwrap(), vec![0]);
        assert_eq!(parse_gpus("1,0", 2).unwrap(), vec![1, 0]);
        assert_eq!(parse_gpus("0", 4).unwrap(), vec![0]);
        for bad in ["2", "0,0", "x", "", "0,,1", "-1"] {
            let e = parse_gpus(bad, 2).unwrap_err().to_string();
            assert!(e.contains("--gpus"), "{bad}: {e}");
        }
        assert!(parse_gpus("all", 0)
            .unwrap_err()
            .to_string()
            .contains("no CUDA device"));
    }

    #[test]
    fn staging_fits_half_the_last_level_cache() {
        const M: u64 = 1 << 20;
        // The 2×H100 host: 300 MiB L3, 12 threads × 2 buffers per GPU.
        assert_eq!(staging_chunk(2, 12, 2, Some(300 * M)), 2 << 20);
        assert_eq!(staging_chunk(1, 12, 2, Some(300 * M)), 4 << 20);
        assert_eq!(
            staging_chunk(8, 12, 2, Some(300 * M)),
            1 << 20,
            "never below 1 MiB"
        );
        assert_eq!(staging_chunk(1, 12, 2, None), 4 << 20);
        assert_eq!(staging_chunk(2, 12, 2, None), 2 << 20);
        assert_eq!(parse_cache_size("491520K"), Some(491520 << 10));
        assert_eq!(parse_cache_size("32M\n"), Some(32 << 20));
        assert_eq!(parse_cache_size("1024"), Some(1024));
        assert_eq!(parse_cache_size("x"), None);
        if let Some(l) = llc_bytes() {
            assert!(
                l >= 1 << 16,
                "a last-level cache of {l} bytes is implausible"
            );
        }
    }

    #[test]
    fn per_gpu_threads_share_the_cores() {
        let one = MultiBulk::default_config(1).threads;
        let many = MultiBulk::default_config(64).threads;
        assert!((1..=12).contains(&one));
        assert_eq!(
            many,
            1.max(std::thread::available_parallelism().map_or(4, |n| n.get()) / 64)
                .min(12)
        );
    }
}
