//! CUDA kernels of the `warpfs bench` GPU-initiated phases (`warpfs-cli` `bench::gpu_io`), kept
//! in the library so the NVRTC compile test checks them on every machine with libnvrtc.

/// Random 4 KiB reads (`direct` = around the GPU page cache), element reads through
/// `wfs_array`, per-request latency samples (`%globaltimer`).
pub const BENCH_KERNELS: &str = r#"
#include <warpfs.cuh>

__device__ __forceinline__ unsigned long long bench_word(unsigned long long seed, unsigned long long i) {
    unsigned long long w = (i ^ seed) * 0x9E3779B97F4A7C15ull;
    return w ^ (w >> 29);
}

/* Each thread `reads` random 4 KiB pages (destination poisoned before each); counts reads with
 * a bad length or (when `check`) any word differing from the pattern, and records the latency (ns) of its first `lat_per` reads into lat.
 * With `warp`, the lanes of a warp read one page together (the *_warp calls: one request, the
 * lanes copy it together; every lane records the same latency, lane 0 counts bad reads). */
extern "C" __global__ void bench_rand(const wfs_ctx_t *ctx, unsigned fh, unsigned long long pages,
                                      unsigned reads, int direct, int check, unsigned long long seed,
                                      unsigned char *out, unsigned long long *bad,
                                      unsigned long long *lat, unsigned lat_per, int warp) {
    unsigned long long tid = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    const unsigned lane = threadIdx.x & 31;
    unsigned long long x = (tid + 1) * 0x9E3779B97F4A7C15ull ^ 0xD1B54A32D192ED03ull;
    unsigned char *dst = out + (warp ? tid - lane : tid) * 4096;
    unsigned long long nbad = 0;
    for (unsigned r = 0; r < reads; ++r) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        unsigned long long page = x % pages;
        if (warp) page = __shfl_sync(0xffffffffu, page, 0);
        /* poison the destination so a read that writes nothing cannot pass */
        if (!warp || lane == 0)
            for (int q = 0; q < 512; ++q) ((unsigned long long *)dst)[q] = 0xA5A5A5A5A5A5A5A5ull;
        if (warp) __syncwarp();
        unsigned long long t0 = wfs_detail::now_ns();
        long long got;
        if (warp) got = direct ? wfs_read_direct_warp(ctx, fh, page * 4096, 4096, dst)
                               : wfs_read_warp(ctx, fh, page * 4096, 4096, dst);
        else got = direct ? wfs_read_direct(ctx, fh, page * 4096, 4096, dst)
                          : wfs_read(ctx, fh, page * 4096, 4096, dst);
        unsigned long long dt = wfs_detail::now_ns() - t0;
        if (warp) {
            dt = __shfl_sync(0xffffffffu, dt, 0);
            __syncwarp();
        }
        if (r < lat_per) lat[tid * lat_per + r] = dt;
        const unsigned long long *w = (const unsigned long long *)dst;
        bool wrong = got != 4096;
        /* check: every word of the page against the file's pattern */
        for (int q = 0; check && !wrong && q < 512; ++q)
            wrong = w[q] != bench_word(seed, page * 512 + q);
        if (wrong && (!warp || lane == 0)) nbad++;
        if (warp) __syncwarp();
    }
    if (nbad) atomicAdd(bad, nbad);
}

/* Element reads through wfs_array<unsigned long long>: thread t reads `per` elements of a
 * window of `span` elements (which fits the GPU cache), warp lanes on neighbouring elements. */
extern "C" __global__ void bench_array(const wfs_ctx_t *ctx, unsigned fh, unsigned long long len,
                                       unsigned long long span, unsigned per, int check,
                                       unsigned long long seed, unsigned long long *sum,
                                       unsigned long long *bad) {
    unsigned long long tid = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    wfs_array<unsigned long long> a = wfs_array_make<unsigned long long>(ctx, fh, 0, len);
    unsigned long long s = 0, nbad = 0;
    unsigned long long x = tid * 0x9E3779B97F4A7C15ull + 1;
    for (unsigned k = 0; k < per; ++k) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        /* a warp shares a random base, lanes read consecutive elements */
        unsigned long long base = __shfl_sync(0xffffffffu, x, 0) % span; /* full warps: no lane returned */
        unsigned long long i = (base + (threadIdx.x & 31)) % span;
        unsigned long long v = a[i];
        if (check && v != bench_word(seed, i)) nbad++;
        s += v;
    }
    atomicAdd(sum, s);
    if (nbad) atomicAdd(bad, nbad);
}

/* Warms wfs_array's pages: thread t reads the first element of page t of the window
 * [0, span) (elements of 8 bytes, `page_elems` per page); counts pattern mismatches. */
extern "C" __global__ void bench_array_warm(const wfs_ctx_t *ctx, unsigned fh, unsigned long long len,
                                            unsigned long long span, unsigned long long page_elems,
                                            unsigned long long seed, unsigned long long *bad) {
    unsigned long long t = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long i = t * page_elems;
    if (i >= span) return;
    wfs_array<unsigned long long> a = wfs_array_make<unsigned long long>(ctx, fh, 0, len);
    if (a[i] != bench_word(seed, i)) atomicAdd(bad, 1ull);
}
"#;

use super::driver::{check, Context, DeviceBuffer};
use super::gpu_io::{GpuIo, GpuModule, KernelArg};
use crate::error::{Error, Result};
use cudarc::driver::sys;
use std::sync::Arc;

/// [`BENCH_KERNELS`] compiled for one [`GpuIo`]'s device, with safe, bounds-checked launches
/// (the CLI holds no unsafe code). Launches are queued on the context's legacy default stream
/// and return at once; [`kernels_done`] polls, [`GpuIo::synchronize`] waits.
#[derive(Debug)]
pub struct BenchKernels {
    module: GpuModule,
    ctx: Arc<Context>,
}

/// One `bench_rand` launch: `grid × block` threads, each `reads` random 4 KiB pages of the
/// first `pages` pages of file `fh`.
#[derive(Debug, Clone, Copy)]
pub struct RandLaunch {
    /// Blocks.
    pub grid: u32,
    /// Threads per block.
    pub block: u32,
    /// Raw file handle ([`crate::FileHandle::raw`]).
    pub fh: u32,
    /// Pages (4 KiB) the reads choose from, from offset 0.
    pub pages: u64,
    /// Reads per thread.
    pub reads: u32,
    /// `wfs_read_direct` (around the GPU page cache) instead of `wfs_read`.
    pub direct: bool,
    /// Seed of the file's pattern (word `i` = mix of `i ^ seed`); every word is checked.
    pub seed: u64,
    /// Latency samples per thread (its first `lat_per` reads; ≤ `reads`).
    pub lat_per: u32,
    /// Lanes of a warp read one page together (`wfs_read_warp` / `wfs_read_direct_warp`);
    /// `block` must then be a multiple of 32.
    pub warp: bool,
}

/// Device memory of `bench_rand` launches of one size: a 4 KiB destination per thread, the
/// bad-read counter and the latency samples.
#[derive(Debug)]
pub struct RandBuffers {
    out: DeviceBuffer,
    bad: DeviceBuffer,
    lat: DeviceBuffer,
    threads: usize,
    lat_per: u32,
}

impl RandBuffers {
    /// Threads of the launches these buffers fit.
    pub fn threads(&self) -> usize {
        self.threads
    }
    /// Bad reads (wrong length or any word differing from the pattern) of the last launch.
    /// Waits for the context's kernels.
    pub fn bad(&self) -> Result<u64> {
        read_u64(&self.bad)
    }
    /// Latency samples (ns) of the last launch, `lat_per` per thread. Waits for kernels.
    pub fn latencies_ns(&self) -> Result<Vec<u64>> {
        let n = self.threads * self.lat_per as usize;
        let mut raw = vec![0u8; n * 8];
        self.lat.context().synchronize()?;
        self.lat.copy_to_host(0, &mut raw)?;
        Ok(raw
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().expect("8 bytes")))
            .collect())
    }
}

/// Device memory of `bench_array` / `bench_array_warm` launches: element sum and bad counter.
#[derive(Debug)]
pub struct ArrayBuffers {
    sum: DeviceBuffer,
    bad: DeviceBuffer,
}

impl ArrayBuffers {
    /// Elements that differed from the pattern in the launches since the last reset.
    pub fn bad(&self) -> Result<u64> {
        read_u64(&self.bad)
    }
}

fn read_u64(b: &DeviceBuffer) -> Result<u64> {
    b.context().synchronize()?;
    let mut raw = [0u8; 8];
    b.copy_to_host(0, &mut raw)?;
    Ok(u64::from_le_bytes(raw))
}

impl BenchKernels {
    /// Compiles [`BENCH_KERNELS`] with NVRTC for `gpu`'s device and loads them (~100s of ms).
    pub fn new(gpu: &GpuIo<'_>) -> Result<Self> {
        Ok(Self {
            module: gpu.compile(BENCH_KERNELS, &[])?,
            ctx: gpu.context().clone(),
        })
    }

    /// Allocates the buffers of `bench_rand` launches of `threads` threads with `lat_per`
    /// latency samples each: `threads × (4096 + 8 × lat_per)` bytes of device memory.
    pub fn rand_buffers(&self, threads: usize, lat_per: u32) -> Result<RandBuffers> {
        let lat_len = (threads * lat_per as usize * 8).max(8);
        Ok(RandBuffers {
            out: DeviceBuffer::new(&self.ctx, threads.max(1) * 4096)?,
            bad: DeviceBuffer::new(&self.ctx, 8)?,
            lat: DeviceBuffer::new(&self.ctx, lat_len)?,
            threads,
            lat_per,
        })
    }

    /// Allocates the counters of `bench_array` launches.
    pub fn array_buffers(&self) -> Result<ArrayBuffers> {
        Ok(ArrayBuffers {
            sum: DeviceBuffer::new(&self.ctx, 8)?,
            bad: DeviceBuffer::new(&self.ctx, 8)?,
        })
    }

    /// Queues `bench_rand` (resets the bad counter first). Refuses a launch whose size does
    /// not match `bufs`, or (through the GPU cache) one the cache cannot hold
    /// ([`GpuIo::check_kernel_launch`]). Returns at once.
    pub fn launch_rand(
        &self,
        gpu: &GpuIo<'_>,
        l: &RandLaunch,
        bufs: &mut RandBuffers,
    ) -> Result<()> {
        self.same(gpu)?;
        let threads = l.grid as usize * l.block as usize;
        if threads != bufs.threads
            || l.lat_per > bufs.lat_per
            || l.lat_per > l.reads
            || l.pages == 0
            || (l.warp && !l.block.is_multiple_of(32))
        {
            return Err(Error::Config(format!(
                "bench_rand launch of {threads} threads × {} samples does not match buffers of {} threads × {} samples (or no pages)",
                l.lat_per, bufs.threads, bufs.lat_per
            )));
        }
        let k = self.module.kernel("bench_rand")?;
        if !l.direct {
            gpu.check_kernel_launch(&k, (l.grid, 1, 1), (l.block, 1, 1), 0, 32)?;
        }
        bufs.bad.fill(0)?;
        // SAFETY: the arguments match bench_rand's parameters in number, order and type; out
        // holds 4096 bytes per thread, bad one u64, lat lat_per u64 per thread (checked above);
        // the buffers and the GpuIo synchronise the context before they are freed (GpuIo after
        // setting `closing`, so waiting device calls return).
        unsafe {
            k.launch(
                (l.grid, 1, 1),
                (l.block, 1, 1),
                0,
                &[
                    KernelArg::U64(gpu.context_ptr()),
                    KernelArg::U32(l.fh),
                    KernelArg::U64(l.pages),
                    KernelArg::U32(l.reads),
                    KernelArg::I32(i32::from(l.direct)),
                    KernelArg::I32(1),
                    KernelArg::U64(l.seed),
                    KernelArg::U64(bufs.out.ptr()),
                    KernelArg::U64(bufs.bad.ptr()),
                    KernelArg::U64(bufs.lat.ptr()),
                    KernelArg::U32(l.lat_per),
                    KernelArg::I32(i32::from(l.warp)),
                ],
            )
        }
    }

    /// Queues `bench_array_warm`: one element of each GPU-cache page of the first `span`
    /// elements (8 bytes) of a file of `len` elements, pattern-checked into `bufs` (not reset).
    #[allow(clippy::too_many_arguments)]
    pub fn launch_array_warm(
        &self,
        gpu: &GpuIo<'_>,
        fh: u32,
        len: u64,
        span: u64,
        seed: u64,
        bufs: &mut ArrayBuffers,
    ) -> Result<()> {
        self.same(gpu)?;
        let page_elems = (gpu.config().gpu_page_bytes / 8).max(1) as u64;
        let span = span.min(len);
        let blocks = u32::try_from(span.div_ceil(page_elems).div_ceil(256).max(1))
            .map_err(|_| Error::Config("array window too large".into()))?;
        let k = self.module.kernel("bench_array_warm")?;
        // SAFETY: arguments match bench_array_warm's parameters; bad is one u64; the buffers
        // and the GpuIo synchronise the context before they are freed.
        unsafe {
            k.launch(
                (blocks, 1, 1),
                (256, 1, 1),
                0,
                &[
                    KernelArg::U64(gpu.context_ptr()),
                    KernelArg::U32(fh),
                    KernelArg::U64(len),
                    KernelArg::U64(span),
                    KernelArg::U64(page_elems),
                    KernelArg::U64(seed),
                    KernelArg::U64(bufs.bad.ptr()),
                ],
            )
        }
    }

    /// Queues `bench_array`: `grid × block` threads each read `per` elements of the window
    /// `[0, span)` through `wfs_array<u64>`, every one checked against the pattern. Resets
    /// the counters first; refuses a launch the GPU cache cannot hold.
    #[allow(clippy::too_many_arguments)]
    pub fn launch_array(
        &self,
        gpu: &GpuIo<'_>,
        (grid, block): (u32, u32),
        fh: u32,
        len: u64,
        span: u64,
        per: u32,
        seed: u64,
        bufs: &mut ArrayBuffers,
    ) -> Result<()> {
        self.same(gpu)?;
        if span == 0 || span > len {
            return Err(Error::Config(format!(
                "bench_array window of {span} elements must be 1 ..= the file's {len}"
            )));
        }
        let k = self.module.kernel("bench_array")?;
        gpu.check_kernel_launch(&k, (grid, 1, 1), (block, 1, 1), 0, 32)?;
        bufs.sum.fill(0)?;
        bufs.bad.fill(0)?;
        // SAFETY: arguments match bench_array's parameters; sum and bad are one u64 each; the
        // buffers and the GpuIo synchronise the context before they are freed.
        unsafe {
            k.launch(
                (grid, 1, 1),
                (block, 1, 1),
                0,
                &[
                    KernelArg::U64(gpu.context_ptr()),
                    KernelArg::U32(fh),
                    KernelArg::U64(len),
                    KernelArg::U64(span),
                    KernelArg::U32(per),
                    KernelArg::I32(1),
                    KernelArg::U64(seed),
                    KernelArg::U64(bufs.sum.ptr()),
                    KernelArg::U64(bufs.bad.ptr()),
                ],
            )
        }
    }

    fn same(&self, gpu: &GpuIo<'_>) -> Result<()> {
        if Arc::ptr_eq(&self.ctx, gpu.context()) {
            Ok(())
        } else {
            Err(Error::Config(
                "bench kernels launched with another device's GpuIo".into(),
            ))
        }
    }
}

/// Whether every kernel queued on `ctx`'s legacy default stream has finished; never blocks
/// (`cuStreamQuery`), so a caller can wait with a deadline. Costs ~1 µs.
pub fn kernels_done(ctx: &Context) -> Result<bool> {
    ctx.bind()?;
    // SAFETY: the context is current; the null stream is its legacy default stream.
    match unsafe { sys::cuStreamQuery(std::ptr::null_mut()) } {
        sys::CUresult::CUDA_SUCCESS => Ok(true),
        sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
        code => {
            check(code, "cuStreamQuery")?;
            Ok(true)
        }
    }
}

/// Streaming multiprocessors of `gpu`'s device (to size launches that fill it).
pub fn sm_count(gpu: &GpuIo<'_>) -> Result<u32> {
    Ok(gpu
        .device_attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
        .max(1) as u32)
}
