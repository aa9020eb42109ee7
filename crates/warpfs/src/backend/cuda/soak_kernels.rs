//! The CUDA kernel of `warpfs bench --soak DURATION --backend cuda` (`warpfs-cli`
//! `bench::soak_cuda`), kept in the library so the NVRTC compile test checks it everywhere.
//!
//! The file is cut into [`GRANULE`]-byte granules; GPU thread `t` owns granules
//! `[t × per, (t + 1) × per)` and keeps each one's *version* in device memory. Byte `o` of a
//! granule at version `v` is [`soak_byte`]`(seed, o, v)` (version 0: the file's initial
//! content), so every byte is known without a copy of the file. In a round each thread, until
//! the round's time is up, picks at random: `wfs_fsync` (5%), a read of a random range of its
//! span through the GPU page cache (`wfs_read`, 45%) or around it (`wfs_read_direct`, 10%),
//! every byte checked against the versions, or a write of whole granules at their next version
//! (40%). A failed write marks its granules unknown (not checked until rewritten). Counters
//! and the first 8 problems accumulate in device memory across rounds.

use super::driver::{Context, DeviceBuffer};
use super::gpu_io::{GpuIo, GpuModule, KernelArg};
use crate::error::{Error, Result};
use std::sync::Arc;

/// Bytes per versioned granule.
pub const GRANULE: u64 = 512;
/// Version of a granule whose content is unknown (a write failed).
pub const UNKNOWN: u32 = u32::MAX;

/// The soak kernel's source (CUDA C++, includes `warpfs.cuh`).
pub const SOAK_KERNEL: &str = r#"
#include <warpfs.cuh>

#define SOAK_G 512ull
#define SOAK_UNKNOWN 0xFFFFFFFFu

__device__ __forceinline__ unsigned long long soak_now() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ unsigned long long soak_mix(unsigned long long z) {
    z += 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

__device__ __forceinline__ unsigned long long soak_word(unsigned long long seed,
                                                        unsigned long long o, unsigned v) {
    return soak_mix((o >> 3) ^ ((unsigned long long)v << 40) ^ seed);
}

__device__ __forceinline__ unsigned long long soak_next(unsigned long long x) {
    x ^= x << 13; x ^= x >> 7; x ^= x << 17;
    return x;
}

/* stats: reads, writes, fsyncs, bytes read, bytes written, mismatched bytes, errors, problems.
 * prob: 8 records of (kind, offset, length, result); kind 1 read error, 2 mismatch, 3 fsync
 * error, 4 write error. */
__device__ void soak_problem(unsigned long long *stats, unsigned long long *prob,
                             unsigned long long kind, unsigned long long off,
                             unsigned long long len, long long got) {
    unsigned long long i = atomicAdd(&stats[7], 1ull);
    if (i < 8) {
        prob[i * 4 + 0] = kind;
        prob[i * 4 + 1] = off;
        prob[i * 4 + 2] = len;
        prob[i * 4 + 3] = (unsigned long long)got;
    }
}

extern "C" __global__ void soak_round(const wfs_ctx_t *ctx, unsigned fh, unsigned long long seed,
                                      unsigned *ver, unsigned long long *rng,
                                      unsigned char *scratch, unsigned long long per,
                                      unsigned long long max_io, unsigned long long round_ns,
                                      unsigned long long *stats, unsigned long long *prob,
                                      unsigned threads) {
    unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (t >= threads) return;
    unsigned long long x = rng[t];
    const unsigned long long g_lo = t * per, g_hi = g_lo + per;
    const unsigned long long lo = g_lo * SOAK_G, hi = g_hi * SOAK_G;
    unsigned char *buf = scratch + t * max_io;
    unsigned long long reads = 0, writes = 0, fsyncs = 0, bread = 0, bwritten = 0, bad_total = 0,
                       errors = 0;
    const unsigned long long t0 = soak_now();
    while (soak_now() - t0 < round_ns) {
        x = soak_next(x);
        unsigned roll = (unsigned)((x >> 32) % 100);
        if (roll < 5) {
            long long r = wfs_fsync(ctx, fh);
            if (r != 0) { errors++; soak_problem(stats, prob, 3, 0, 0, r); }
            else fsyncs++;
            continue;
        }
        x = soak_next(x);
        if (roll < 60) {
            unsigned long long off = lo + x % (hi - lo);
            x = soak_next(x);
            unsigned long long room = hi - off < max_io ? hi - off : max_io;
            unsigned long long len = 1 + x % room;
            for (unsigned long long i = 0; i < len; ++i) buf[i] = 0xA5;
            long long got = roll < 50 ? wfs_read(ctx, fh, off, len, buf)
                                      : wfs_read_direct(ctx, fh, off, len, buf);
            if (got < 0) { errors++; soak_problem(stats, prob, 1, off, len, got); continue; }
            unsigned long long n = (unsigned long long)got < len ? (unsigned long long)got : len;
            unsigned long long bad = len - n;
            unsigned long long w = 0, wi = ~0ull, g = ~0ull;
            unsigned v = 0;
            for (unsigned long long i = 0; i < n; ++i) {
                unsigned long long o = off + i;
                if (o / SOAK_G != g) { g = o / SOAK_G; v = ver[g]; wi = ~0ull; }
                if (v == SOAK_UNKNOWN) continue;
                if ((o >> 3) != wi) { wi = o >> 3; w = soak_word(seed, o, v); }
                if (buf[i] != (unsigned char)(w >> ((o & 7) * 8))) bad++;
            }
            if (bad) { bad_total += bad; soak_problem(stats, prob, 2, off, len, got); }
            reads++;
            bread += n;
        } else {
            unsigned long long g0 = g_lo + x % per;
            x = soak_next(x);
            unsigned long long most = max_io / SOAK_G;
            if (g_hi - g0 < most) most = g_hi - g0;
            unsigned long long ng = 1 + x % most;
            unsigned long long off = g0 * SOAK_G, len = ng * SOAK_G;
            for (unsigned long long k = 0; k < ng; ++k) {
                unsigned cur = ver[g0 + k];
                unsigned nv = (cur == SOAK_UNKNOWN || cur + 1 == SOAK_UNKNOWN) ? 1 : cur + 1;
                unsigned long long *wd = (unsigned long long *)(buf + k * SOAK_G);
                unsigned long long base = off + k * SOAK_G;
                for (unsigned long long q = 0; q < SOAK_G / 8; ++q)
                    wd[q] = soak_word(seed, base + q * 8, nv);
            }
            long long r = wfs_write(ctx, fh, off, len, buf);
            if (r == (long long)len) {
                for (unsigned long long k = 0; k < ng; ++k) {
                    unsigned cur = ver[g0 + k];
                    ver[g0 + k] = (cur == SOAK_UNKNOWN || cur + 1 == SOAK_UNKNOWN) ? 1 : cur + 1;
                }
                writes++;
                bwritten += len;
            } else {
                errors++;
                soak_problem(stats, prob, 4, off, len, r);
                for (unsigned long long k = 0; k < ng; ++k) ver[g0 + k] = SOAK_UNKNOWN;
            }
        }
    }
    rng[t] = x;
    if (reads) atomicAdd(&stats[0], reads);
    if (writes) atomicAdd(&stats[1], writes);
    if (fsyncs) atomicAdd(&stats[2], fsyncs);
    if (bread) atomicAdd(&stats[3], bread);
    if (bwritten) atomicAdd(&stats[4], bwritten);
    if (bad_total) atomicAdd(&stats[5], bad_total);
    if (errors) atomicAdd(&stats[6], errors);
}
"#;

/// splitmix64, as the kernel's `soak_mix`.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Byte at file offset `o` of a granule at version `v` (as the kernel computes it).
pub fn soak_byte(seed: u64, o: u64, v: u32) -> u8 {
    (mix((o >> 3) ^ (u64::from(v) << 40) ^ seed) >> ((o & 7) * 8)) as u8
}

/// Fills `buf` with the content of file offsets `off..` at the granules' `versions`
/// (indexed by granule of the whole file). Granules at [`UNKNOWN`] are left as they are.
pub fn soak_fill(seed: u64, off: u64, versions: &[u32], buf: &mut [u8]) {
    for (i, b) in buf.iter_mut().enumerate() {
        let o = off + i as u64;
        let v = versions[(o / GRANULE) as usize];
        if v != UNKNOWN {
            *b = soak_byte(seed, o, v);
        }
    }
}

/// Totals of all rounds so far (device counters).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SoakStats {
    /// Reads done (each checked).
    pub reads: u64,
    /// Writes acknowledged in full.
    pub writes: u64,
    /// Fsyncs that returned 0.
    pub fsyncs: u64,
    /// Bytes read and checked.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes read that differed from the versions (or were missing from a short read).
    pub mismatches: u64,
    /// Calls that returned an error.
    pub errors: u64,
    /// Problems recorded (the first 8 are kept).
    pub problems: u64,
}

/// One recorded problem: kind 1 read error, 2 mismatch, 3 fsync error, 4 write error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SoakProblem {
    /// What went wrong (1–4, see the type's doc).
    pub kind: u64,
    /// File offset of the request.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// What the call returned.
    pub result: i64,
}

/// Device memory of a soak: versions, per-thread RNG state and scratch, counters, problems.
#[derive(Debug)]
pub struct SoakBuffers {
    ver: DeviceBuffer,
    rng: DeviceBuffer,
    scratch: DeviceBuffer,
    stats: DeviceBuffer,
    prob: DeviceBuffer,
    threads: u32,
    per: u64,
    max_io: u64,
    granules: u64,
}

impl SoakBuffers {
    /// Granules each thread owns.
    pub fn per_thread(&self) -> u64 {
        self.per
    }

    /// Device bytes these buffers take.
    pub fn device_bytes(&self) -> usize {
        self.ver.len() + self.rng.len() + self.scratch.len() + self.stats.len() + self.prob.len()
    }
}

/// The loaded soak kernel of one device.
#[derive(Debug)]
pub struct SoakKernel {
    module: GpuModule,
    ctx: Arc<Context>,
}

impl SoakKernel {
    /// Compiles [`SOAK_KERNEL`] with NVRTC for `gpu`'s device and loads it (~100s of ms).
    pub fn new(gpu: &GpuIo<'_>) -> Result<Self> {
        Ok(Self {
            module: gpu.compile(SOAK_KERNEL, &[])?,
            ctx: gpu.context().clone(),
        })
    }

    /// Allocates the buffers of a soak of `threads` threads over a file of `file_bytes` bytes
    /// (whole granules); each thread owns `file granules / threads` granules (at least 1) and
    /// reads or writes at most `max_io` bytes (a multiple of [`GRANULE`]) at once. All versions
    /// start at 0 (the file must hold [`soak_fill`] at version 0). Costs
    /// `threads × (max_io + 8) + file_bytes / 128` bytes of device memory.
    pub fn buffers(
        &self,
        threads: u32,
        file_bytes: u64,
        max_io: u64,
        seed: u64,
    ) -> Result<SoakBuffers> {
        let granules = file_bytes / GRANULE;
        let per = granules / u64::from(threads.max(1));
        if threads == 0 || per == 0 || max_io < GRANULE || !max_io.is_multiple_of(GRANULE) {
            return Err(Error::Config(format!(
                "a GPU soak of {threads} threads needs at least one {GRANULE}-byte granule per \
                 thread (the file has {granules}) and an I/O size that is a positive multiple \
                 of {GRANULE} (got {max_io}): use a larger --size"
            )));
        }
        let n = threads as usize;
        let mut ver = DeviceBuffer::new(&self.ctx, granules as usize * 4)?;
        ver.fill(0)?;
        let mut rng = DeviceBuffer::new(&self.ctx, n * 8)?;
        let states: Vec<u8> = (0..n as u64)
            .flat_map(|t| (mix(seed ^ mix(t + 1)) | 1).to_le_bytes())
            .collect();
        rng.copy_from_host(0, &states)?;
        let scratch = DeviceBuffer::new(&self.ctx, n * max_io as usize)?;
        let mut stats = DeviceBuffer::new(&self.ctx, 8 * 8)?;
        stats.fill(0)?;
        let mut prob = DeviceBuffer::new(&self.ctx, 8 * 4 * 8)?;
        prob.fill(0)?;
        Ok(SoakBuffers {
            ver,
            rng,
            scratch,
            stats,
            prob,
            threads,
            per,
            max_io,
            granules,
        })
    }

    /// Queues one round: `bufs.threads` threads (in blocks of `block`) soak file `fh` for
    /// `round_ns` ns of GPU time each. Returns at once; wait with
    /// [`super::gpu_bench_kernels::kernels_done`] and [`GpuIo::synchronize`].
    pub fn launch_round(
        &self,
        gpu: &GpuIo<'_>,
        fh: u32,
        seed: u64,
        block: u32,
        round_ns: u64,
        bufs: &mut SoakBuffers,
    ) -> Result<()> {
        if !Arc::ptr_eq(&self.ctx, gpu.context()) {
            return Err(Error::Config(
                "soak kernel launched with another device's GpuIo".into(),
            ));
        }
        let block = block.clamp(32, 1024);
        let grid = bufs.threads.div_ceil(block);
        let k = self.module.kernel("soak_round")?;
        // SAFETY: the arguments match soak_round's parameters in number, order and type; ver
        // holds one u32 per granule and threads × per ≤ granules (checked in buffers), rng one
        // u64 per thread, scratch max_io bytes per thread, stats 8 u64, prob 32 u64; threads
        // beyond bufs.threads return at once. The buffers and the GpuIo synchronise the context
        // before they are freed.
        unsafe {
            k.launch(
                (grid, 1, 1),
                (block, 1, 1),
                0,
                &[
                    KernelArg::U64(gpu.context_ptr()),
                    KernelArg::U32(fh),
                    KernelArg::U64(seed),
                    KernelArg::U64(bufs.ver.ptr()),
                    KernelArg::U64(bufs.rng.ptr()),
                    KernelArg::U64(bufs.scratch.ptr()),
                    KernelArg::U64(bufs.per),
                    KernelArg::U64(bufs.max_io),
                    KernelArg::U64(round_ns),
                    KernelArg::U64(bufs.stats.ptr()),
                    KernelArg::U64(bufs.prob.ptr()),
                    KernelArg::U32(bufs.threads),
                ],
            )
        }
    }

    /// Totals so far. Waits for the context's kernels.
    pub fn stats(&self, bufs: &SoakBuffers) -> Result<SoakStats> {
        let v = read_u64s(&bufs.stats, 8)?;
        Ok(SoakStats {
            reads: v[0],
            writes: v[1],
            fsyncs: v[2],
            bytes_read: v[3],
            bytes_written: v[4],
            mismatches: v[5],
            errors: v[6],
            problems: v[7],
        })
    }

    /// The first (up to 8) problems recorded. Waits for the context's kernels.
    pub fn problems(&self, bufs: &SoakBuffers) -> Result<Vec<SoakProblem>> {
        let n = read_u64s(&bufs.stats, 8)?[7].min(8) as usize;
        let v = read_u64s(&bufs.prob, 32)?;
        Ok(v.chunks_exact(4)
            .take(n)
            .map(|c| SoakProblem {
                kind: c[0],
                offset: c[1],
                len: c[2],
                result: c[3] as i64,
            })
            .collect())
    }

    /// Every granule's version (for the final check against the file). Waits for the kernels.
    pub fn versions(&self, bufs: &SoakBuffers) -> Result<Vec<u32>> {
        self.ctx.synchronize()?;
        let mut raw = vec![0u8; bufs.granules as usize * 4];
        bufs.ver.copy_to_host(0, &mut raw)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }
}

fn read_u64s(b: &DeviceBuffer, n: usize) -> Result<Vec<u64>> {
    b.context().synchronize()?;
    let mut raw = vec![0u8; n * 8];
    b.copy_to_host(0, &mut raw)?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_bytes_follow_versions_and_skip_unknown_granules() {
        let versions = [0u32, 3, UNKNOWN, 1];
        let mut buf = vec![0xEEu8; 4 * GRANULE as usize];
        soak_fill(9, 0, &versions, &mut buf);
        assert_eq!(buf[0], soak_byte(9, 0, 0));
        assert_eq!(buf[600], soak_byte(9, 600, 3));
        assert_eq!(buf[1100], 0xEE);
        assert_eq!(buf[1600], soak_byte(9, 1600, 1));
        // Versions change the content: a lost write is never mistaken for the old one.
        let same = (0..4096u64)
            .filter(|&o| soak_byte(9, o, 1) == soak_byte(9, o, 2))
            .count();
        assert!(same < 64, "{same}");
    }

    #[test]
    fn the_soak_kernel_compiles_with_nvrtc() {
        if !super::super::gpu_io::nvrtc_available() {
            println!("skipping: libnvrtc not found; put libnvrtc.so.13 on LD_LIBRARY_PATH");
            return;
        }
        let ptx = super::super::gpu_io::compile_ptx(SOAK_KERNEL, "compute_90", &[]).unwrap();
        assert!(ptx.contains("soak_round"));
        super::super::gpu_io::compile_cubin(SOAK_KERNEL, "sm_90", &[]).unwrap();
    }
}
