//! GPU-initiated I/O from CUDA kernels (`include/warpfs.cuh` + `backend::cuda::gpu_io`).
//! Skips (with a message) on machines without a CUDA driver; on the H100 machine every byte a
//! kernel reads is checked against the file's pattern.
//!
//! `WARPFS_GPU_BENCH=1` also runs `gpu_random_read_iops`: GPU random 4 KiB reads of a page-cached
//! file beside host `pread` from threads, same file, same run.
#![cfg(feature = "cuda")]

use rand::{Rng, SeedableRng};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use warpfs::backend::cuda::gpu_io::{self, GpuIo, GpuIoConfig, KernelArg};
use warpfs::backend::cuda::{available, pattern, DeviceBuffer};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

const POISON: u8 = 0xA5;

const KERNELS: &str = r#"
#include <warpfs.cuh>

extern "C" __global__ void read_many(const wfs_ctx_t *ctx, unsigned fh,
                                     const unsigned long long *offs,
                                     const unsigned long long *lens, unsigned char *out,
                                     unsigned long long stride, long long *res, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    res[i] = wfs_read(ctx, fh, offs[i], lens[i], out + (unsigned long long)i * stride);
}

extern "C" __global__ void write_many(const wfs_ctx_t *ctx, unsigned fh, const unsigned char *src,
                                      unsigned long long len, long long *res, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    unsigned long long off = (unsigned long long)i * len;
    res[i] = wfs_write(ctx, fh, off, len, src + off);
}

extern "C" __global__ void one_op(const wfs_ctx_t *ctx, unsigned op, unsigned fh, long long *res,
                                  unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long r = -1;
    if (op == WFS_OP_FSYNC) r = wfs_fsync(ctx, fh);
    else if (op == WFS_OP_SIZE) r = wfs_size(ctx, fh);
    else if (op == WFS_OP_READ) {
        unsigned char tmp[64];
        r = wfs_read(ctx, fh, 0, 64, tmp);
    } else if (op == WFS_OP_WRITE) {
        unsigned char tmp[64];
        for (int k = 0; k < 64; ++k) tmp[k] = (unsigned char)k;
        r = wfs_write(ctx, fh, 0, 64, tmp);
    }
    res[i] = r;
}

/* Block b: every thread calls wfs_read_block (or wfs_read_direct_block) for (offs[b], lens[b])
 * into out + b * stride; each thread's result in res[b * blockDim.x + threadIdx.x]. */
extern "C" __global__ void read_block(const wfs_ctx_t *ctx, unsigned fh,
                                      const unsigned long long *offs,
                                      const unsigned long long *lens, unsigned char *out,
                                      unsigned long long stride, long long *res, int direct) {
    const unsigned b = blockIdx.x;
    unsigned char *dst = out + (unsigned long long)b * stride;
    const long long r = direct ? wfs_read_direct_block(ctx, fh, offs[b], lens[b], dst)
                               : wfs_read_block(ctx, fh, offs[b], lens[b], dst);
    res[(unsigned long long)b * blockDim.x + threadIdx.x] = r;
}

/* Block b: every thread calls wfs_write_block for src[offs[b] .. offs[b] + lens[b]) at file
 * offset offs[b]; each thread's result in res[b * blockDim.x + threadIdx.x]. */
extern "C" __global__ void write_block(const wfs_ctx_t *ctx, unsigned fh, const unsigned char *src,
                                       const unsigned long long *offs,
                                       const unsigned long long *lens, long long *res) {
    const unsigned b = blockIdx.x;
    const long long r = wfs_write_block(ctx, fh, offs[b], lens[b], src + offs[b]);
    res[(unsigned long long)b * blockDim.x + threadIdx.x] = r;
}

__device__ unsigned long long splitmix(unsigned long long w) {
    unsigned long long z = w + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* Each thread: `reads` random 4 KiB pages; counts wrong lengths and wrong first/last words. */
extern "C" __global__ void rand_read(const wfs_ctx_t *ctx, unsigned fh, unsigned long long pages,
                                     unsigned reads, unsigned char *out,
                                     unsigned long long *bad, unsigned long long seed) {
    unsigned long long tid = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long x = splitmix(seed ^ (tid * 0x9E3779B97F4A7C15ull)) | 1;
    unsigned char *dst = out + tid * 4096;
    unsigned long long nbad = 0;
    for (unsigned r = 0; r < reads; ++r) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        unsigned long long page = x % pages;
        long long got = wfs_read(ctx, fh, page * 4096, 4096, dst);
        const unsigned long long *w = (const unsigned long long *)dst;
        if (got != 4096 || w[0] != splitmix(page * 512) || w[511] != splitmix(page * 512 + 511))
            nbad++;
    }
    if (nbad) atomicAdd(bad, nbad);
}

/* Every thread reads the same `len` bytes at `off` into its own slot. */
extern "C" __global__ void same_range(const wfs_ctx_t *ctx, unsigned fh, unsigned long long off,
                                     unsigned long long len, unsigned char *out,
                                     unsigned long long stride, long long *res, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    res[i] = wfs_read(ctx, fh, off, len, out + (unsigned long long)i * stride);
}

/* wfs_read_async, some unrelated work, then wfs_wait. */
extern "C" __global__ void async_many(const wfs_ctx_t *ctx, unsigned fh,
                                      const unsigned long long *offs,
                                      const unsigned long long *lens, unsigned char *out,
                                      unsigned long long stride, long long *res, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    long long t = wfs_read_async(ctx, fh, offs[i], lens[i], out + (unsigned long long)i * stride);
    unsigned long long x = i;
    for (int k = 0; k < 64; ++k) x = x * 6364136223846793005ull + 1442695040888963407ull;
    if (x == 0) out[0] = 0; /* keeps the loop; never true for these seeds in practice */
    res[i] = wfs_wait(ctx, t);
}

/* Element reads: thread t reads `per` scattered elements of a wfs_array<unsigned long long>. */
extern "C" __global__ void array_u64(const wfs_ctx_t *ctx, unsigned fh,
                                     unsigned long long byte_offset, unsigned long long len,
                                     unsigned per, unsigned long long *out, unsigned n) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    wfs_array<unsigned long long> a = wfs_array_make<unsigned long long>(ctx, fh, byte_offset, len);
    for (unsigned k = 0; k < per; ++k) {
        unsigned long long i = ((unsigned long long)t * 7919ull + (unsigned long long)k * 104729ull) % len;
        out[(unsigned long long)t * per + k] = a[i];
    }
}

/* Unaligned 4-byte elements (byte_offset odd) and a range copy per thread. */
extern "C" __global__ void array_u32_copy(const wfs_ctx_t *ctx, unsigned fh,
                                          unsigned long long byte_offset, unsigned long long len,
                                          unsigned *elems, unsigned *copies, unsigned count,
                                          long long *res, unsigned n) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    wfs_array<unsigned> a = wfs_array_make<unsigned>(ctx, fh, byte_offset, len);
    unsigned long long i = ((unsigned long long)t * 2654435761ull) % len;
    elems[t] = a[i];
    unsigned long long first = ((unsigned long long)t * 40503ull) % len;
    res[t] = a.copy(first, count, copies + (unsigned long long)t * count);
}

/* Pinned spans: thread t pins element idx[t] of a wfs_array<u64>, reports the span's count and
 * copies up to `per` of its elements out, then unpins. */
extern "C" __global__ void array_pin_read(const wfs_ctx_t *ctx, unsigned fh,
                                          unsigned long long byte_offset, unsigned long long len,
                                          const unsigned long long *idx, unsigned per,
                                          unsigned long long *out, unsigned long long *counts,
                                          unsigned n) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    wfs_array<unsigned long long> a = wfs_array_make<unsigned long long>(ctx, fh, byte_offset, len);
    const wfs_span<unsigned long long> s = a.pin(idx[t]);
    counts[t] = s.count;
    for (unsigned k = 0; k < per && k < s.count; ++k) out[(unsigned long long)t * per + k] = s.p[k];
    a.unpin(s);
}


/* Element writes through the GPU page cache: thread t sets `per` elements, element
 * i = (t * per + k) * stride + shift, to ~word(i) ^ salt (the file's pattern is word(i)); then
 * reads each back through the cache (read-your-writes: bad counts mismatches); with `fsync`,
 * wfs_fsync at the end (result in fs[t]). */
extern "C" __global__ void array_set_u64(const wfs_ctx_t *ctx, unsigned fh, unsigned long long len,
                                         unsigned per, unsigned long long stride,
                                         unsigned long long shift, unsigned long long salt,
                                         int fsync, unsigned long long *bad, long long *fs,
                                         unsigned n) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    wfs_array<unsigned long long> a = wfs_array_make<unsigned long long>(ctx, fh, 0, len);
    for (unsigned k = 0; k < per; ++k) {
        const unsigned long long i = ((unsigned long long)t * per + k) * stride + shift;
        const unsigned long long w = i * 0x9E3779B97F4A7C15ull;
        a.set(i, ~(w ^ (w >> 29)) ^ salt);
    }
    for (unsigned k = 0; k < per; ++k) {
        const unsigned long long i = ((unsigned long long)t * per + k) * stride + shift;
        const unsigned long long w = i * 0x9E3779B97F4A7C15ull;
        const unsigned long long got = a[i];
        if (got != (~(w ^ (w >> 29)) ^ salt)) {
            /* bad[0]: mismatches; bad[1..]: (element, value read, read again) of the first few. */
            const unsigned long long k2 = atomicAdd(bad, 1ull);
            if (k2 < 8) {
                bad[1 + 3 * k2] = i;
                bad[2 + 3 * k2] = got;
                bad[3 + 3 * k2] = a[i];
            }
        }
    }
    if (fsync) fs[t] = wfs_fsync(ctx, fh);
}

/* Element i = t * per + k (k < per) to ~word(i) ^ salt: odd warps by wfs_write (8 bytes,
 * write-through), even warps by wfs_array::set (write-back): the warps of one page mix both. */
extern "C" __global__ void mixed_write_set_u64(const wfs_ctx_t *ctx, unsigned fh, unsigned long long len,
                                               unsigned per, unsigned long long salt, long long *res,
                                               unsigned n) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    wfs_array<unsigned long long> a = wfs_array_make<unsigned long long>(ctx, fh, 0, len);
    long long worst = 8;
    for (unsigned k = 0; k < per; ++k) {
        const unsigned long long i = (unsigned long long)t * per + k;
        const unsigned long long w = i * 0x9E3779B97F4A7C15ull;
        unsigned long long v = ~(w ^ (w >> 29)) ^ salt;
        if ((t >> 5) & 1) {
            const long long r = wfs_write(ctx, fh, i * 8, 8, &v);
            if (r != 8) worst = r;
        } else {
            a.set(i, v);
        }
    }
    res[t] = worst;
}

/* Out-of-range element reads: T() and counted; then the counter. */
extern "C" __global__ void array_out_of_range(const wfs_ctx_t *ctx, unsigned fh,
                                              unsigned long long len, unsigned long long *out,
                                              unsigned n) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    wfs_array<unsigned long long> a = wfs_array_make<unsigned long long>(ctx, fh, 0, len);
    out[t] = a[len + t];
}
extern "C" __global__ void errors_of(const wfs_ctx_t *ctx, unsigned long long *out) {
    out[0] = wfs_errors(ctx);
}

/* Prefetch hints, no waiting: 0 posted or -EAGAIN dropped. */
extern "C" __global__ void prefetch_many(const wfs_ctx_t *ctx, unsigned fh, unsigned long long span,
                                         long long *res, unsigned n) {
    unsigned t = blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    res[t] = wfs_prefetch(ctx, fh, (unsigned long long)t * span, span);
}

/* Every size and offset of WFS_LAYOUT as NVRTC lays the records out (drift check). */
extern "C" __global__ void layout(unsigned long long *out) {
    int i = 0;
#define WFS_ROW(name, value) out[i++] = (unsigned long long)(value);
    WFS_LAYOUT(WFS_ROW)
#undef WFS_ROW
}

/* PCIe atomics probe: system-scope adds on a mapped host word while the host adds too. */
extern "C" __global__ void atomic_probe(unsigned long long *host_word, unsigned iters) {
    for (unsigned k = 0; k < iters; ++k) atomicAdd_system(host_word, 1ull);
}
"#;

/// Every device-API entry point, instantiated once (templates are only checked when used).
const API_USE: &str = r#"
#include <warpfs.cuh>
extern "C" __global__ void api_use(const wfs_ctx_t *ctx, unsigned fh, unsigned char *buf,
                                   long long *out) {
    long long r = 0;
    r += wfs_read(ctx, fh, 0, 64, buf);
    r += wfs_write(ctx, fh, 0, 64, buf);
    r += wfs_fsync(ctx, fh);
    r += wfs_size(ctx, fh);
    r += wfs_read_direct(ctx, fh, 0, 64, buf);
    r += wfs_read_warp(ctx, fh, 0, 64, buf) + wfs_read_direct_warp(ctx, fh, 0, 64, buf);
    r += wfs_write_warp(ctx, fh, 0, 64, buf);
    r += wfs_read_block(ctx, fh, 0, 64, buf) + wfs_read_direct_block(ctx, fh, 0, 64, buf);
    r += wfs_write_block(ctx, fh, 0, 64, buf);
    long long t = wfs_read_async(ctx, fh, 0, 64, buf);
    r += wfs_wait(ctx, t);
    r += wfs_prefetch(ctx, fh, 0, 1 << 20);
    wfs_array<unsigned long long> a = wfs_array_make<unsigned long long>(ctx, fh, 0, 1000);
    r += (long long)a[threadIdx.x * 37];
    r += a.copy(3, 10, (unsigned long long *)buf);
    a.set(threadIdx.x, (unsigned long long)r);
    const wfs_span<unsigned long long> sp = a.pin(threadIdx.x);
    if (sp.count) r += (long long)sp.p[0] + (long long)a.page_elems();
    a.unpin(sp);
    wfs_array<unsigned char> b = wfs_array_make<unsigned char>(ctx, fh, 1, 1000);
    r += b[threadIdx.x];
    struct Odd { unsigned char x[7]; };
    wfs_array<Odd> o = wfs_array_make<Odd>(ctx, fh, 3, 1000);
    r += o[threadIdx.x].x[2];
    r += (long long)wfs_errors(ctx);
    out[threadIdx.x] = r;
}
"#;

/// The kernel sources of the tests and benches, by name, for the NVRTC compile check.
fn kernel_sources() -> Vec<(&'static str, &'static str)> {
    vec![
        ("api_use", API_USE),
        ("tests/cuda_gpu_io.rs KERNELS", KERNELS),
        ("gpu_io::WRITE_BACK_KERNEL", gpu_io::WRITE_BACK_KERNEL),
        (
            "gpu_bench_kernels::BENCH_KERNELS",
            warpfs::backend::cuda::gpu_bench_kernels::BENCH_KERNELS,
        ),
    ]
}

/// Compiles `warpfs.cuh` (every entry point) and every kernel source of the tests and benches
/// to PTX for compute_90 with NVRTC. Needs libnvrtc, not a GPU: runs wherever libnvrtc loads
/// (`LD_LIBRARY_PATH`); `WARPFS_REQUIRE_NVRTC=1` (CI) turns a missing libnvrtc into a failure.
#[test]
fn every_kernel_compiles_with_nvrtc() {
    if !gpu_io::nvrtc_available() {
        assert!(
            std::env::var("WARPFS_REQUIRE_NVRTC").ok().as_deref() != Some("1"),
            "WARPFS_REQUIRE_NVRTC=1 but libnvrtc.so.13 does not load: put its folder on \
             LD_LIBRARY_PATH (.ci/run installs it into target/nvrtc)"
        );
        println!(
            "skipping: libnvrtc not found; put libnvrtc.so.13 on LD_LIBRARY_PATH (e.g. \
             `python3 -m pip install --target DIR nvidia-cuda-nvrtc==13.0.88`, then \
             LD_LIBRARY_PATH=DIR/nvidia/cu13/lib)"
        );
        return;
    }
    for (name, src) in kernel_sources() {
        let ptx = gpu_io::compile_ptx(src, "compute_90", &[])
            .unwrap_or_else(|e| panic!("{name} does not compile for compute_90: {e}"));
        assert!(
            ptx.contains(".entry"),
            "{name}: NVRTC produced PTX without a kernel entry"
        );
        // A cubin for sm_90 runs ptxas inside NVRTC: inline PTX and every instruction checked.
        let cubin = gpu_io::compile_cubin(src, "sm_90", &[])
            .unwrap_or_else(|e| panic!("{name} does not assemble for sm_90: {e}"));
        println!(
            "{name}: {} bytes of PTX, {cubin} bytes of sm_90 cubin",
            ptx.len()
        );
    }
    // The headers are handed to NVRTC in memory: both include forms find them, and an error
    // in the kernel comes back with NVRTC's log.
    let angle = "#include <warpfs.cuh>\nextern \"C\" __global__ void k(unsigned *p) { *p = WFS_OP_READ; }\n";
    gpu_io::compile_ptx(angle, "compute_90", &[])
        .unwrap_or_else(|e| panic!("#include <warpfs.cuh> should compile: {e}"));
    let bad = "#include \"warpfs.cuh\"\nextern \"C\" __global__ void k() { no_such_function(); }\n";
    let e = gpu_io::compile_ptx(bad, "compute_90", &[])
        .expect_err("a call of an undefined function must not compile")
        .to_string();
    assert!(
        e.contains("no_such_function"),
        "the error should carry NVRTC's log: {e}"
    );
}

/// Longest a test kernel may run before the watchdog ends it: `WARPFS_GPU_WATCHDOG_SECS`
/// (default 120 s, far above any test kernel's run and the device calls' own timeouts).
fn watchdog_limit() -> Duration {
    let secs = std::env::var("WARPFS_GPU_WATCHDOG_SECS")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(120);
    Duration::from_secs(secs)
}

/// Waits for the kernels queued on `gpu` with a watchdog instead of a blocking synchronize:
/// past [`watchdog_limit`] it raises the channel's `closing` word (device waits return
/// -ESHUTDOWN), prints the GPU cache statistics and fails the test naming `what`. A kernel
/// that does not end even then cannot be recovered in this process: the watchdog prints that
/// and exits, so a hang is never silent.
fn finish(gpu: &GpuIo<'_>, what: &str) {
    let t = Instant::now();
    let limit = watchdog_limit();
    if gpu.wait_kernels(limit).unwrap() {
        println!("  {what}: finished in {:.3} s", t.elapsed().as_secs_f64());
        return;
    }
    eprintln!(
        "WATCHDOG: kernel {what} still running after {limit:?}; raising the channel's closing \
         word; demand ring {:?}, prefetch ring {:?}",
        gpu.channel().map(|c| c.demand.snapshot()),
        gpu.channel().map(|c| c.prefetch.snapshot())
    );
    gpu.abort_device_waits();
    if gpu.wait_kernels(Duration::from_secs(30)).unwrap() {
        eprintln!(
            "WATCHDOG: {what} ended {:.1} s after closing; GPU cache stats {:?}; demand ring {:?}",
            t.elapsed().as_secs_f64() - limit.as_secs_f64(),
            gpu.cache_stats(),
            gpu.channel().map(|c| c.demand.snapshot())
        );
        panic!("watchdog: kernel {what} ran past {limit:?} (hung; ended by the closing word)");
    }
    eprintln!(
        "WATCHDOG: kernel {what} did not end within 30 s of the closing word either (an \
         unbounded device wait); demand ring {:?}; exiting the test process",
        gpu.channel().map(|c| c.demand.snapshot())
    );
    std::process::exit(3);
}

/// Compiles the test kernels with NVRTC and loads them, saying so (with the time taken).
fn compile_kernels(gpu: &GpuIo<'_>) -> warpfs::backend::cuda::gpu_io::GpuModule {
    println!("  NVRTC compile + module load of the test kernels ...");
    let t = Instant::now();
    let m = gpu.compile(KERNELS, &[]).unwrap();
    println!("  compiled + loaded in {:.2} s", t.elapsed().as_secs_f64());
    m
}

fn gpu() -> bool {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { cudarc::driver::sys::is_culib_present() } || !available() {
        println!("skipping: no CUDA driver on this machine");
        return false;
    }
    true
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("warpfs-gpu-io-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn pattern_file(name: &str, len: usize) -> PathBuf {
    let p = dir().join(name);
    let mut v = vec![0u8; len];
    pattern::fill(&mut v, 0);
    std::fs::write(&p, v).unwrap();
    p
}

fn runtime(workers: usize) -> Runtime {
    Runtime::new(RuntimeConfig {
        workers,
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// A test knob from the environment (bytes or a count), if set and valid.
fn env_usize(name: &str) -> Option<usize> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn small_cfg() -> GpuIoConfig {
    GpuIoConfig {
        warp_slots: 256,
        lane_bytes: 4096,
        timeout: Duration::from_secs(20),
        ..GpuIoConfig::default()
    }
}

fn upload(gpu: &GpuIo<'_>, bytes: &[u8]) -> DeviceBuffer {
    let mut b = gpu.alloc(bytes.len()).unwrap();
    b.copy_from_host(0, bytes).unwrap();
    b
}

fn u64s(v: &[u64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

fn i64s_back(b: &DeviceBuffer, n: usize) -> Vec<i64> {
    let mut raw = vec![0u8; n * 8];
    b.copy_to_host(0, &mut raw).unwrap();
    raw.chunks_exact(8)
        .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn results_buffer(gpu: &GpuIo<'_>, n: usize) -> DeviceBuffer {
    let mut b = gpu.alloc(n * 8).unwrap();
    b.fill(0x7f).unwrap();
    b
}

/// Runs `one_op` with `op` on `fh` from `n` threads; returns each thread's result.
fn one_op(
    gpu: &GpuIo<'_>,
    module: &warpfs::backend::cuda::gpu_io::GpuModule,
    op: u32,
    fh: u32,
    n: u32,
) -> Vec<i64> {
    let res = results_buffer(gpu, n as usize);
    let k = module.kernel("one_op").unwrap();
    println!("  launch one_op");
    // SAFETY: arguments match one_op's signature; res holds n results; gpu outlives the launch
    // (synchronised below).
    unsafe {
        k.launch(
            (n.div_ceil(64), 1, 1),
            (64, 1, 1),
            0,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(op),
                KernelArg::U32(fh),
                KernelArg::U64(res.ptr()),
                KernelArg::U32(n),
            ],
        )
        .unwrap()
    };
    finish(gpu, "one_op");
    i64s_back(&res, n as usize)
}

#[test]
fn kernels_read_random_ranges_every_byte_checked() {
    if !gpu() {
        return;
    }
    let size: u64 = 48 << 20;
    let path = pattern_file("read.bin", size as usize);
    let rt = runtime(4);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = compile_kernels(&gpu);

    let n: usize = 8192;
    let stride: u64 = 16384;
    let mut rng = rand::rngs::StdRng::seed_from_u64(4);
    let mut offs = Vec::with_capacity(n);
    let mut lens = Vec::with_capacity(n);
    for i in 0..n {
        let (o, l) = match i % 8 {
            // Unaligned offset and length, up to 4 lane buffers.
            5 => (rng.random_range(0..size), rng.random_range(1..=stride)),
            6 => (rng.random_range(0..size / 4096) * 4096, stride),
            _ => (rng.random_range(0..size / 4096) * 4096, 4096),
        };
        offs.push(o);
        lens.push(l);
    }
    // End of file: short, empty, multi-chunk short, zero length.
    offs[0] = size - 100;
    lens[0] = 4096;
    offs[1] = size + 5;
    lens[1] = 4096;
    offs[2] = size - 5000;
    lens[2] = 12000;
    offs[3] = 12345;
    lens[3] = 0;

    let t = Instant::now();
    read_many_checked(
        &gpu,
        &module,
        "read_many",
        (f.raw(), size),
        (&offs, &lens),
        stride,
        "read_many",
    );
    let checked: u64 = offs
        .iter()
        .zip(&lens)
        .map(|(&o, &l)| l.min(size.saturating_sub(o)))
        .sum();
    println!(
        "read_many: {n} reads in {:?}; checked {checked} bytes; daemon {:?}",
        t.elapsed(),
        rt.stats().daemon
    );
}

#[test]
fn nvrtc_layout_of_the_records_matches_abi_rs() {
    if !gpu() {
        return;
    }
    let rt = runtime(1);
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = compile_kernels(&gpu);
    let table = warpfs::abi::layout_table();
    let out = results_buffer(&gpu, table.len());
    println!("  launch layout");
    // SAFETY: layout(unsigned long long*) writes table.len() values (one per WFS_LAYOUT row).
    unsafe {
        module
            .kernel("layout")
            .unwrap()
            .launch((1, 1, 1), (1, 1, 1), 0, &[KernelArg::U64(out.ptr())])
            .unwrap()
    };
    finish(&gpu, "layout");
    let got = i64s_back(&out, table.len());
    for ((name, want), got) in table.iter().zip(got) {
        assert_eq!(got as usize, *want, "{name}: NVRTC {got}, abi.rs {want}");
    }
}

#[test]
fn kernels_get_errors_for_bad_handles_and_modes() {
    if !gpu() {
        return;
    }
    let path = pattern_file("modes.bin", 1 << 20);
    let rt = runtime(2);
    let ro = rt.open(&path, OpenOptions::read_only()).unwrap();
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = compile_kernels(&gpu);
    let ebadf = -(libc::EBADF as i64);
    let n = 80; // blocks of 64: the second block's warp runs with 16 lanes
    assert!(one_op(&gpu, &module, 4, ro.raw(), n)
        .iter()
        .all(|&r| r == 1 << 20));
    assert!(one_op(&gpu, &module, 4, 0xdead, n)
        .iter()
        .all(|&r| r == ebadf));
    assert!(one_op(&gpu, &module, 1, 0xdead, n)
        .iter()
        .all(|&r| r == ebadf));
    assert!(
        one_op(&gpu, &module, 2, ro.raw(), n)
            .iter()
            .all(|&r| r == ebadf),
        "a write to a read-only file must fail with EBADF"
    );
    assert!(one_op(&gpu, &module, 1, ro.raw(), n)
        .iter()
        .all(|&r| r == 64));
    // SIZE and WRITE fail once per thread; the cached READ of a bad handle once per page load.
    assert!(rt.stats().daemon.errors > 2 * n as u64);
}

/// Launches `read_block` (one block per range, `block` threads) and checks every thread's
/// result and every byte against the file's pattern (destinations poisoned first).
#[allow(clippy::too_many_arguments)]
fn check_block_reads(
    gpu: &GpuIo<'_>,
    module: &warpfs::backend::cuda::gpu_io::GpuModule,
    fh: u32,
    size: u64,
    ranges: &[(u64, u64)],
    block: u32,
    direct: bool,
    what: &str,
) {
    let n = ranges.len();
    let stride = ranges.iter().map(|r| r.1).max().unwrap_or(0).max(1);
    let offs: Vec<u64> = ranges.iter().map(|r| r.0).collect();
    let lens: Vec<u64> = ranges.iter().map(|r| r.1).collect();
    let (d_offs, d_lens) = (upload(gpu, &u64s(&offs)), upload(gpu, &u64s(&lens)));
    let mut out = gpu.alloc(n * stride as usize).unwrap();
    out.fill(POISON).unwrap();
    let res = results_buffer(gpu, n * block as usize);
    let k = module.kernel("read_block").unwrap();
    println!("  launch read_block ({what})");
    // SAFETY: arguments match read_block's signature; out holds n × stride bytes, res n × block.
    unsafe {
        k.launch(
            (n as u32, 1, 1),
            (block, 1, 1),
            0,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(fh),
                KernelArg::U64(d_offs.ptr()),
                KernelArg::U64(d_lens.ptr()),
                KernelArg::U64(out.ptr()),
                KernelArg::U64(stride),
                KernelArg::U64(res.ptr()),
                KernelArg::U32(direct as u32),
            ],
        )
        .unwrap()
    };
    finish(gpu, "read_block");
    let results = i64s_back(&res, n * block as usize);
    let mut host = vec![0u8; out.len()];
    out.copy_to_host(0, &mut host).unwrap();
    for (b, &(off, len)) in ranges.iter().enumerate() {
        let want = len.min(size.saturating_sub(off));
        let rs = &results[b * block as usize..(b + 1) * block as usize];
        assert!(
            rs.iter().all(|&r| r == want as i64),
            "{what}: block {b}, read of {len} at {off}: threads returned {:?}, expected {want} on every thread",
            &rs[..rs.len().min(8)]
        );
        let d = &host[b * stride as usize..(b + 1) * stride as usize];
        if let Some(at) = pattern::first_mismatch(&d[..want as usize], off) {
            panic!("{what}: block {b}: byte {at} of the read at {off} differs from the file");
        }
        assert!(
            d[want as usize..].iter().all(|&x| x == POISON),
            "{what}: block {b}: bytes beyond the {want} read were written"
        );
    }
}

#[test]
fn block_variants_read_and_write_every_byte_checked() {
    if !gpu() {
        return;
    }
    let size: u64 = (3 << 20) + 777;
    let path = pattern_file("block.bin", size as usize);
    let rt = runtime(4);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    // Whole pages, unaligned, short at the end of the file, past it, empty, one page.
    let ranges = [
        (0, 1 << 20),
        (12345, 300_001),
        (size - 5000, 20_000),
        (size + 5, 4096),
        (777, 0),
        (3 * 4096, 4096),
        (4096 - 1, 2),
    ];
    for (cache, gpu_cache_bytes) in [("GPU cache", 8usize << 20), ("no GPU cache", 0)] {
        let gpu = GpuIo::new(
            &rt,
            GpuIoConfig {
                gpu_cache_bytes,
                ..small_cfg()
            },
        )
        .unwrap();
        let module = compile_kernels(&gpu);
        // 8 full warps; and 3 full warps plus a warp of 4 lanes.
        for block in [256u32, 100] {
            for direct in [false, true] {
                let what = format!("{cache}, {block} threads, direct {direct}");
                check_block_reads(&gpu, &module, f.raw(), size, &ranges, block, direct, &what);
            }
        }
    }

    // Writes: blocks of 256 and 100 threads write disjoint unaligned ranges that tile the
    // file; fsync; the file must then hold the source bytes.
    let wpath = dir().join("block-written.bin");
    std::fs::write(&wpath, b"").unwrap();
    let wf = rt
        .open(&wpath, OpenOptions::read_write().create(true))
        .unwrap();
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = compile_kernels(&gpu);
    let total: u64 = 400_000;
    let mut src = vec![0u8; total as usize];
    pattern::fill(&mut src, 7 << 30);
    let d_src = upload(&gpu, &src);
    for (block, cuts) in [
        (256u32, [0u64, 70_001, 200_000]),
        (100, [250_000, 250_001, 333_333]),
    ] {
        let ends = [cuts[1], cuts[2], if block == 256 { 250_000 } else { total }];
        let offs: Vec<u64> = cuts.to_vec();
        let lens: Vec<u64> = cuts.iter().zip(ends).map(|(a, b)| b - a).collect();
        let (d_offs, d_lens) = (upload(&gpu, &u64s(&offs)), upload(&gpu, &u64s(&lens)));
        let res = results_buffer(&gpu, 3 * block as usize);
        let k = module.kernel("write_block").unwrap();
        println!("  launch write_block ({block} threads)");
        // SAFETY: arguments match write_block's signature; src holds `total` bytes and every
        // range lies inside it; res holds 3 × block results.
        unsafe {
            k.launch(
                (3, 1, 1),
                (block, 1, 1),
                0,
                &[
                    KernelArg::U64(gpu.context_ptr()),
                    KernelArg::U32(wf.raw()),
                    KernelArg::U64(d_src.ptr()),
                    KernelArg::U64(d_offs.ptr()),
                    KernelArg::U64(d_lens.ptr()),
                    KernelArg::U64(res.ptr()),
                ],
            )
            .unwrap()
        };
        finish(&gpu, "write_block");
        let r = i64s_back(&res, 3 * block as usize);
        for b in 0..3 {
            let rs = &r[b * block as usize..(b + 1) * block as usize];
            assert!(
                rs.iter().all(|&x| x == lens[b] as i64),
                "write_block {block} threads, block {b}: {:?}, expected {}",
                &rs[..8],
                lens[b]
            );
        }
    }
    assert_eq!(one_op(&gpu, &module, 3, wf.raw(), 1), vec![0], "wfs_fsync");
    let on_disk = std::fs::read(&wpath).unwrap();
    assert_eq!(on_disk.len() as u64, total);
    if let Some(at) = pattern::first_mismatch(&on_disk, 7 << 30) {
        panic!("byte {at} written by wfs_write_block differs on disk");
    }
}

#[test]
fn kernel_writes_then_fsync_then_host_reads_match() {
    if !gpu() {
        return;
    }
    let path = dir().join("written.bin");
    std::fs::write(&path, b"").unwrap();
    let rt = runtime(4);
    let f = rt
        .open(&path, OpenOptions::read_write().create(true))
        .unwrap();
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = compile_kernels(&gpu);
    let n: u32 = 2048;
    let len: u64 = 6000; // not a multiple of the lane buffer: two chunks, unaligned offsets
    let mut src = vec![0u8; (n as u64 * len) as usize];
    pattern::fill(&mut src, 1 << 40);
    let d_src = upload(&gpu, &src);
    let res = results_buffer(&gpu, n as usize);
    let k = module.kernel("write_many").unwrap();
    println!("  launch write_many");
    // SAFETY: arguments match write_many's signature; src holds n × len bytes.
    unsafe {
        k.launch(
            (n.div_ceil(128), 1, 1),
            (128, 1, 1),
            0,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(f.raw()),
                KernelArg::U64(d_src.ptr()),
                KernelArg::U64(len),
                KernelArg::U64(res.ptr()),
                KernelArg::U32(n),
            ],
        )
        .unwrap()
    };
    finish(&gpu, "write_many");
    let r = i64s_back(&res, n as usize);
    assert!(
        r.iter().all(|&x| x == len as i64),
        "write results: {:?}",
        &r[..8]
    );
    assert_eq!(one_op(&gpu, &module, 3, f.raw(), 1), vec![0], "wfs_fsync");
    let on_disk = std::fs::read(&path).unwrap();
    assert_eq!(on_disk.len(), src.len());
    if let Some(at) = pattern::first_mismatch(&on_disk, 1 << 40) {
        panic!("byte {at} written from the GPU differs on disk");
    }
}

#[test]
fn waits_are_bounded_timeout_and_shutdown() {
    if !gpu() {
        return;
    }
    let path = pattern_file("bounded.bin", 1 << 20);
    let rt = runtime(2);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    // Nobody serves the channel: every call times out.
    let gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            timeout: Duration::from_millis(200),
            ..small_cfg()
        },
    )
    .unwrap();
    let module = compile_kernels(&gpu);
    gpu.set_serving(false).unwrap();
    let t = Instant::now();
    let r = one_op(&gpu, &module, 1, f.raw(), 64);
    assert!(r.iter().all(|&x| x == -(libc::ETIMEDOUT as i64)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(10),
        "timeout took {:?}",
        t.elapsed()
    );
    drop(module);
    drop(gpu);

    // Shutdown while a kernel waits: it returns -ESHUTDOWN, long before its 60 s timeout.
    let mut gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            timeout: Duration::from_secs(60),
            ..small_cfg()
        },
    )
    .unwrap();
    let module = compile_kernels(&gpu);
    gpu.set_serving(false).unwrap();
    let res = results_buffer(&gpu, 64);
    let k = module.kernel("one_op").unwrap();
    let t = Instant::now();
    println!("  launch one_op (server paused, then shutdown)");
    // SAFETY: arguments match one_op; res holds 64 results; shutdown() waits for the kernel.
    unsafe {
        k.launch(
            (1, 1, 1),
            (64, 1, 1),
            0,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(1),
                KernelArg::U32(f.raw()),
                KernelArg::U64(res.ptr()),
                KernelArg::U32(64),
            ],
        )
        .unwrap()
    };
    std::thread::sleep(Duration::from_millis(300));
    gpu.shutdown().unwrap();
    let r = i64s_back(&res, 64);
    assert!(r.iter().all(|&x| x == -(libc::ESHUTDOWN as i64)), "{r:?}");
    assert!(
        t.elapsed() < Duration::from_secs(20),
        "shutdown took {:?}",
        t.elapsed()
    );
}

fn launch(
    gpu: &GpuIo<'_>,
    module: &warpfs::backend::cuda::gpu_io::GpuModule,
    name: &str,
    grid: u32,
    block: u32,
    args: &[KernelArg],
) {
    let k = module.kernel(name).unwrap();
    // SAFETY: every caller passes the arguments of `name`'s signature, with buffers sized for
    // grid × block threads; synchronised before the buffers are read or dropped.
    println!("  launch {name}: {grid} blocks × {block} threads");
    unsafe { k.launch((grid, 1, 1), (block, 1, 1), 0, args).unwrap() };
    finish(gpu, name);
}

fn u64s_back(b: &DeviceBuffer, n: usize) -> Vec<u64> {
    i64s_back(b, n).into_iter().map(|x| x as u64).collect()
}

/// Runs the `array_u64` kernel: `threads` threads (blocks of 128) each read `per` elements of
/// a `wfs_array<u64>` of `len` elements at byte `base` of `fh`, into a buffer poisoned first.
/// Returns each read's (element index, value read), in thread order.
fn array_u64_reads(
    gpu: &GpuIo<'_>,
    module: &warpfs::backend::cuda::gpu_io::GpuModule,
    fh: u32,
    base: u64,
    len: u64,
    threads: usize,
    per: usize,
) -> Vec<(u64, u64)> {
    let mut out = gpu.alloc(threads * per * 8).unwrap();
    out.fill(POISON).unwrap();
    launch(
        gpu,
        module,
        "array_u64",
        threads.div_ceil(128) as u32,
        128,
        &[
            KernelArg::U64(gpu.context_ptr()),
            KernelArg::U32(fh),
            KernelArg::U64(base),
            KernelArg::U64(len),
            KernelArg::U32(per as u32),
            KernelArg::U64(out.ptr()),
            KernelArg::U32(threads as u32),
        ],
    );
    let got = u64s_back(&out, threads * per);
    (0..threads as u64)
        .flat_map(|t| (0..per as u64).map(move |k| (t * 7919 + k * 104_729) % len))
        .zip(got)
        .collect()
}

#[test]
fn many_threads_on_one_page_make_one_request() {
    if !gpu() {
        return;
    }
    let path = pattern_file("one_page.bin", 1 << 20);
    let rt = runtime(2);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = compile_kernels(&gpu);
    let n: u32 = 8192; // 64 warps of 128-thread blocks, all on page 5
    let (off, len, stride) = (5 * 4096 + 100u64, 3000u64, 4096u64);
    let mut out = gpu.alloc(n as usize * stride as usize).unwrap();
    out.fill(POISON).unwrap();
    let res = results_buffer(&gpu, n as usize);
    let before = (gpu.cache_stats().unwrap(), rt.stats().daemon.requests);
    launch(
        &gpu,
        &module,
        "same_range",
        n / 128,
        128,
        &[
            KernelArg::U64(gpu.context_ptr()),
            KernelArg::U32(f.raw()),
            KernelArg::U64(off),
            KernelArg::U64(len),
            KernelArg::U64(out.ptr()),
            KernelArg::U64(stride),
            KernelArg::U64(res.ptr()),
            KernelArg::U32(n),
        ],
    );
    let stats = gpu.cache_stats().unwrap() - before.0;
    let requests = rt.stats().daemon.requests - before.1;
    let r = i64s_back(&res, n as usize);
    assert!(r.iter().all(|&x| x == len as i64), "results {:?}", &r[..8]);
    let mut host = vec![0u8; out.len()];
    out.copy_to_host(0, &mut host).unwrap();
    for (i, b) in host.chunks_exact(stride as usize).enumerate() {
        assert_eq!(
            pattern::first_mismatch(&b[..len as usize], off),
            None,
            "thread {i}"
        );
        assert!(
            b[len as usize..].iter().all(|&x| x == POISON),
            "thread {i} wrote past"
        );
    }
    println!("{n} threads on one page: {stats:?}, daemon requests {requests}");
    assert_eq!(stats.misses, 1, "one page load for {n} threads: {stats:?}");
    assert_eq!(requests, 1, "one daemon request for {n} threads");
    assert_eq!(stats.hits + stats.coalesced, n as u64 - 1, "{stats:?}");
}

#[test]
fn eviction_under_pressure_far_more_requesters_than_pages() {
    if !gpu() {
        return;
    }
    let size: u64 = 16 << 20;
    let path = pattern_file("pressure.bin", size as usize);
    let rt = runtime(4);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            gpu_cache_bytes: 64 * 4096, // 64 frames for 4096 pages and 8192 threads
            ..small_cfg()
        },
    )
    .unwrap();
    assert_eq!(gpu.cache_frames(), 64);
    let err = gpu
        .check_launch((64, 1, 1), (128, 1, 1), 32)
        .unwrap_err()
        .to_string();
    println!("check_launch: {err}");
    assert!(err.contains("64 frames"), "{err}");
    gpu.check_launch((1, 1, 1), (64, 1, 1), 32).unwrap(); // 2 warps × 32 = 64 frames: fits
    let module = compile_kernels(&gpu);
    let before = gpu.cache_stats().unwrap();
    // Every read checked in the kernel (length and first/last word of the page).
    let (_, bad) = gpu_rand_read(&gpu, &module, f.raw(), size / 4096, (64, 128), 8, 7);
    let stats = gpu.cache_stats().unwrap() - before;
    println!("pressure: {stats:?}");
    assert_eq!(bad, 0, "reads under eviction pressure returned wrong bytes");
    assert!(stats.evictions > 0, "{stats:?}");
    assert!(stats.misses > 64, "{stats:?}");
    assert!(
        stats.hits + stats.coalesced + stats.misses + stats.bypassed >= 64 * 128 * 8,
        "every lane access is counted once: {stats:?}"
    );
}

#[test]
fn write_through_updates_cached_pages() {
    if !gpu() {
        return;
    }
    let path = pattern_file("wt.bin", 1 << 20);
    let rt = runtime(2);
    let f = rt.open(&path, OpenOptions::read_write()).unwrap();
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = compile_kernels(&gpu);
    let n: u32 = 64;
    let len: u64 = 6000;
    let stride = 8192u64;
    // 1. Cache the pages (read the first n × len bytes).
    let offs: Vec<u64> = (0..n as u64).map(|i| i * len).collect();
    let lens = vec![len; n as usize];
    let d_offs = upload(&gpu, &u64s(&offs));
    let d_lens = upload(&gpu, &u64s(&lens));
    let mut out = gpu.alloc(n as usize * stride as usize).unwrap();
    let res = results_buffer(&gpu, n as usize);
    let read = |out: &mut DeviceBuffer| {
        out.fill(POISON).unwrap();
        launch(
            &gpu,
            &module,
            "read_many",
            1,
            n,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(f.raw()),
                KernelArg::U64(d_offs.ptr()),
                KernelArg::U64(d_lens.ptr()),
                KernelArg::U64(out.ptr()),
                KernelArg::U64(stride),
                KernelArg::U64(res.ptr()),
                KernelArg::U32(n),
            ],
        );
        assert!(i64s_back(&res, n as usize).iter().all(|&r| r == len as i64));
        let mut host = vec![0u8; out.len()];
        out.copy_to_host(0, &mut host).unwrap();
        host
    };
    let first = read(&mut out);
    for i in 0..n as usize {
        let b = &first[i * stride as usize..][..len as usize];
        assert_eq!(
            pattern::first_mismatch(b, offs[i]),
            None,
            "before write, thread {i}"
        );
    }
    // 2. Overwrite the range from the GPU with another pattern, fsync.
    let mut src = vec![0u8; (n as u64 * len) as usize];
    pattern::fill(&mut src, 1 << 40);
    let d_src = upload(&gpu, &src);
    let wres = results_buffer(&gpu, n as usize);
    launch(
        &gpu,
        &module,
        "write_many",
        1,
        n,
        &[
            KernelArg::U64(gpu.context_ptr()),
            KernelArg::U32(f.raw()),
            KernelArg::U64(d_src.ptr()),
            KernelArg::U64(len),
            KernelArg::U64(wres.ptr()),
            KernelArg::U32(n),
        ],
    );
    assert!(i64s_back(&wres, n as usize)
        .iter()
        .all(|&r| r == len as i64));
    assert_eq!(one_op(&gpu, &module, 3, f.raw(), 1), vec![0], "wfs_fsync");
    gpu.flush().unwrap();
    // 3. The GPU sees its writes through the cache; the host sees them in the file.
    let second = read(&mut out);
    for i in 0..n as usize {
        let b = &second[i * stride as usize..][..len as usize];
        assert_eq!(
            pattern::first_mismatch(b, (1 << 40) + offs[i]),
            None,
            "after write, thread {i}"
        );
    }
    let disk = std::fs::read(&path).unwrap();
    assert_eq!(pattern::first_mismatch(&disk[..src.len()], 1 << 40), None);
    assert_eq!(
        pattern::first_mismatch(&disk[src.len()..], src.len() as u64),
        None
    );
    let stats = gpu.cache_stats().unwrap();
    println!("write-through: {stats:?}");
    assert!(stats.write_patches > 0, "{stats:?}");
}

#[test]
fn async_reads_every_byte_checked() {
    if !gpu() {
        return;
    }
    let size: u64 = 8 << 20;
    let path = pattern_file("async.bin", size as usize);
    let rt = runtime(4);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = compile_kernels(&gpu);
    let n: usize = 4096;
    let stride = 4096u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    let mut offs: Vec<u64> = (0..n).map(|_| rng.random_range(0..size - 4096)).collect();
    let mut lens: Vec<u64> = (0..n).map(|_| rng.random_range(1..=4096)).collect();
    offs[0] = size - 10; // short at end of file
    lens[0] = 4096;
    offs[1] = size + 1; // past the end
    lens[1] = 100;
    read_many_checked(
        &gpu,
        &module,
        "async_many",
        (f.raw(), size),
        (&offs, &lens),
        stride,
        "async",
    );
}

#[test]
fn array_elements_and_copies_checked() {
    if !gpu() {
        return;
    }
    let size: u64 = 4 << 20;
    let path = pattern_file("array.bin", size as usize);
    let rt = runtime(2);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            // A quarter of the file: evictions too. `WARPFS_TEST_ARRAY_CACHE` /
            // `WARPFS_TEST_ARRAY_PAGE` (bytes) vary the geometry when hunting a fault.
            gpu_cache_bytes: env_usize("WARPFS_TEST_ARRAY_CACHE").unwrap_or(1 << 20),
            gpu_page_bytes: env_usize("WARPFS_TEST_ARRAY_PAGE").unwrap_or(16384),
            ..small_cfg()
        },
    )
    .unwrap();
    let module = compile_kernels(&gpu);
    // u64 elements from byte 8 × 1000 on.
    let (base, len) = (8000u64, (size - 8000) / 8);
    for (n, (i, x)) in array_u64_reads(&gpu, &module, f.raw(), base, len, 8192, 16)
        .into_iter()
        .enumerate()
    {
        assert_eq!(x, pattern::word(base / 8 + i), "read {n}: element {i}");
    }
    // Unaligned u32 elements (byte 3 on) and range copies of 100 elements.
    let (base, len, count) = (3u64, (size - 3) / 4, 100usize);
    let threads = 2048usize;
    let elems = results_buffer(&gpu, threads); // 8 bytes each, 4 used
    let mut copies = gpu.alloc(threads * count * 4).unwrap();
    copies.fill(POISON).unwrap();
    let res = results_buffer(&gpu, threads);
    launch(
        &gpu,
        &module,
        "array_u32_copy",
        (threads / 128) as u32,
        128,
        &[
            KernelArg::U64(gpu.context_ptr()),
            KernelArg::U32(f.raw()),
            KernelArg::U64(base),
            KernelArg::U64(len),
            KernelArg::U64(elems.ptr()),
            KernelArg::U64(copies.ptr()),
            KernelArg::U32(count as u32),
            KernelArg::U64(res.ptr()),
            KernelArg::U32(threads as u32),
        ],
    );
    let mut e = vec![0u8; threads * 4];
    elems.copy_to_host(0, &mut e).unwrap();
    let mut c = vec![0u8; threads * count * 4];
    copies.copy_to_host(0, &mut c).unwrap();
    let r = i64s_back(&res, threads);
    for t in 0..threads as u64 {
        let i = (t * 2_654_435_761) % len;
        let mut want = [0u8; 4];
        pattern::fill(&mut want, base + 4 * i);
        assert_eq!(
            &e[t as usize * 4..][..4],
            &want,
            "u32 element {i} (thread {t})"
        );
        let first = (t * 40503) % len;
        let n = (count as u64).min(len - first);
        assert_eq!(r[t as usize], (n * 4) as i64, "copy of thread {t}");
        let b = &c[t as usize * count * 4..][..count * 4];
        assert_eq!(
            pattern::first_mismatch(&b[..n as usize * 4], base + 4 * first),
            None,
            "copy {t}"
        );
    }
    // Out of range: T() and counted.
    let before = gpu.cache_stats().unwrap().api_errors;
    let oor = results_buffer(&gpu, 64);
    launch(
        &gpu,
        &module,
        "array_out_of_range",
        1,
        64,
        &[
            KernelArg::U64(gpu.context_ptr()),
            KernelArg::U32(f.raw()),
            KernelArg::U64(1000),
            KernelArg::U64(oor.ptr()),
            KernelArg::U32(64),
        ],
    );
    assert!(u64s_back(&oor, 64).iter().all(|&x| x == 0));
    let cnt = results_buffer(&gpu, 1);
    launch(
        &gpu,
        &module,
        "errors_of",
        1,
        1,
        &[KernelArg::U64(gpu.context_ptr()), KernelArg::U64(cnt.ptr())],
    );
    let after = gpu.cache_stats().unwrap().api_errors;
    assert_eq!(after - before, 64);
    assert_eq!(
        u64s_back(&cnt, 1)[0],
        after,
        "wfs_errors on the device matches cache_stats"
    );
    println!("array: {:?}", gpu.cache_stats().unwrap());
}

/// `wfs_array::pin`: every span's count is the elements left in the page (and the array), every
/// element read in place matches the file; out of range and misaligned elements pin nothing.
#[test]
fn array_pins_read_in_place_every_element_checked() {
    if !gpu() {
        return;
    }
    let size: u64 = 4 << 20;
    let ps: u64 = 16384;
    let path = pattern_file("array-pin.bin", size as usize);
    let rt = runtime(2);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            gpu_cache_bytes: 1 << 20, // 64 frames: a quarter of the file, evictions between launches
            gpu_page_bytes: ps as usize,
            ..small_cfg()
        },
    )
    .unwrap();
    let module = compile_kernels(&gpu);
    let (threads, per) = (512usize, 40usize);
    let run = |base: u64, len: u64, idx: &[u64]| -> (Vec<u64>, Vec<u64>) {
        let ib = upload(&gpu, &u64s(idx));
        let mut out = gpu.alloc(threads * per * 8).unwrap();
        out.fill(POISON).unwrap();
        let counts = results_buffer(&gpu, threads);
        launch(
            &gpu,
            &module,
            "array_pin_read",
            (threads / 128) as u32,
            128,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(f.raw()),
                KernelArg::U64(base),
                KernelArg::U64(len),
                KernelArg::U64(ib.ptr()),
                KernelArg::U32(per as u32),
                KernelArg::U64(out.ptr()),
                KernelArg::U64(counts.ptr()),
                KernelArg::U32(threads as u32),
            ],
        );
        (u64s_back(&out, threads * per), u64s_back(&counts, threads))
    };
    // Each warp's lanes fall in at most two pages (16 warps × 2 pins ≤ 64 frames, so every
    // in-range element gets a frame); lane 31 of every fourth warp asks past the end.
    let (base, len) = (8000u64, (size - 8000) / 8);
    // Round 0 twice: the second finds its pages cached (hits).
    for round in [0u64, 0, 1, 2] {
        let idx: Vec<u64> = (0..threads as u64)
            .map(|t| {
                let (w, l) = (t / 32, t % 32);
                if l == 31 && w % 4 == 0 {
                    len + w
                } else {
                    ((w * 7919 + round * 104_729) * 61 + l * 67) % len
                }
            })
            .collect();
        let (out, counts) = run(base, len, &idx);
        for (t, &i) in idx.iter().enumerate() {
            if i >= len {
                assert_eq!(counts[t], 0, "thread {t}: index {i} is past the end");
                continue;
            }
            let in_off = (base + 8 * i) % ps;
            let want = ((ps - in_off) / 8).min(len - i);
            assert_eq!(counts[t], want, "thread {t} index {i} (round {round})");
            let b = &out[t * per..][..per];
            for (k, &x) in b.iter().enumerate() {
                if (k as u64) < want {
                    assert_eq!(
                        x,
                        pattern::word(base / 8 + i + k as u64),
                        "t {t} i {i} k {k}"
                    );
                } else {
                    assert_eq!(
                        x,
                        u64::from_le_bytes([POISON; 8]),
                        "t {t} k {k}: past the span"
                    );
                }
            }
        }
    }
    // Misaligned u64s (byte 4 on): nothing pinned, nothing read.
    let idx: Vec<u64> = (0..threads as u64).map(|t| t * 13).collect();
    let (out, counts) = run(4, (size - 4) / 8, &idx);
    assert!(
        counts.iter().all(|&c| c == 0),
        "misaligned elements pin nothing"
    );
    assert!(out.iter().all(|&x| x == u64::from_le_bytes([POISON; 8])));
    let st = gpu.cache_stats().unwrap();
    println!("array pins: {st:?}");
    assert!(st.hits > 0 && st.misses > 0, "{st:?}");
}

/// The value `array_set_u64` stores at element `i`.
fn set_value(i: u64, salt: u64) -> u64 {
    let w = i.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    !(w ^ (w >> 29)) ^ salt
}

/// `wfs_array::set`: dirty GPU cache pages reach the file on eviction (a cache of 16 pages
/// for 256 written), on `wfs_fsync`, on `GpuIo::flush` and at shutdown; every set is read back
/// through the cache in the kernel, and every byte of the file is checked after each step.
/// `WARPFS_TEST_WB_WORKERS` sets the daemon's workers (default 2; the lost updates this test found
/// needed two or more). A failure lists each wrong element with the file's bytes before and after.
#[test]
fn array_sets_are_written_back_on_eviction_fsync_flush_and_shutdown() {
    if !gpu() {
        return;
    }
    let size: u64 = 1 << 20;
    let path = pattern_file("array-set.bin", size as usize);
    let len = size / 8;
    let mut want = std::fs::read(&path).unwrap();
    let rt = Runtime::new(RuntimeConfig {
        workers: env_usize("WARPFS_TEST_WB_WORKERS").unwrap_or(2),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let f = rt.open(&path, OpenOptions::read_write()).unwrap();
    let check_file = |want: &[u8], what: &str| {
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), want.len(), "{what}: file size");
        if let Some(at) = got.iter().zip(want).position(|(a, b)| a != b) {
            panic!("{what}: byte {at} differs (element {})", at / 8);
        }
    };
    {
        let gpu = GpuIo::new(
            &rt,
            GpuIoConfig {
                gpu_cache_bytes: 16 * 4096,
                gpu_page_bytes: 4096,
                ..small_cfg()
            },
        )
        .unwrap();
        let module = compile_kernels(&gpu);
        // (file image to update, threads, per, stride, shift, salt, fsync)
        let run = |want: &mut Vec<u8>,
                   threads: usize,
                   per: u32,
                   stride: u64,
                   shift: u64,
                   salt: u64,
                   fsync: bool| {
            let mut bad = gpu.alloc(25 * 8).unwrap();
            bad.fill(0).unwrap();
            let fs = results_buffer(&gpu, threads);
            launch(
                &gpu,
                &module,
                "array_set_u64",
                threads.div_ceil(128) as u32,
                128,
                &[
                    KernelArg::U64(gpu.context_ptr()),
                    KernelArg::U32(f.raw()),
                    KernelArg::U64(len),
                    KernelArg::U32(per),
                    KernelArg::U64(stride),
                    KernelArg::U64(shift),
                    KernelArg::U64(salt),
                    KernelArg::I32(fsync as i32),
                    KernelArg::U64(bad.ptr()),
                    KernelArg::U64(fs.ptr()),
                    KernelArg::U32(threads as u32),
                ],
            );
            let b = u64s_back(&bad, 25);
            if b[0] != 0 {
                let now = std::fs::read(&path).unwrap();
                let what: Vec<String> = (0..(b[0] as usize).min(8))
                    .map(|k| {
                        let (i, got, again) = (b[1 + 3 * k], b[2 + 3 * k], b[3 + 3 * k]);
                        let before = u64::from_le_bytes(want[i as usize * 8..][..8].try_into().unwrap());
                        let after = u64::from_le_bytes(now[i as usize * 8..][..8].try_into().unwrap());
                        format!(
                            "element {i} (page {}): read {got:#x}, again {again:#x}, file before {before:#x}, file after {after:#x}, set {:#x}",
                            i / 512,
                            set_value(i, salt)
                        )
                    })
                    .collect();
                panic!(
                    "{} elements read back differ (salt {salt:#x}): {what:#?}; {:?}; dirty {:?}",
                    b[0],
                    gpu.cache_stats().unwrap(),
                    gpu.dirty_pages()
                );
            }
            if fsync {
                let r = i64s_back(&fs, threads);
                let mut odd: Vec<i64> = r.iter().copied().filter(|&x| x != 0).collect();
                odd.dedup();
                assert!(
                    odd.is_empty(),
                    "wfs_fsync failed: {} of {threads} threads, results {:?}; {:?}",
                    r.iter().filter(|&&x| x != 0).count(),
                    &odd[..odd.len().min(8)],
                    gpu.cache_stats().unwrap()
                );
            }
            for t in 0..threads as u64 {
                for k in 0..per as u64 {
                    let i = (t * per as u64 + k) * stride + shift;
                    want[i as usize * 8..][..8].copy_from_slice(&set_value(i, salt).to_le_bytes());
                }
            }
        };
        // 32 elements in each of the 256 pages, 16 frames: dirty pages evicted, then fsync.
        let t0 = Instant::now();
        run(&mut want, 2048, 4, 16, 3, 0x1111, true);
        println!("sets + fsync: {:?}", t0.elapsed());
        let st = gpu.cache_stats().unwrap();
        println!("after eviction + fsync: {st:?}");
        assert!(
            st.writebacks > 0 && st.evictions > 0,
            "dirty pages written back: {st:?}"
        );
        assert_eq!(st.writeback_errors, 0, "{st:?}");
        assert_eq!(st.api_errors, 0, "{st:?}");
        assert_eq!(gpu.dirty_pages().unwrap(), 0);
        println!(
            "after fsync: dirty {} states {:08x?}",
            gpu.dirty_pages().unwrap(),
            gpu.frame_states().unwrap()
        );
        check_file(&want, "after wfs_fsync");
        // One page's worth of sets, no fsync: dirty until flush.
        run(&mut want, 64, 1, 8, 5, 0x2222, false);
        println!(
            "after phase 2: dirty {} states {:08x?} {:?}",
            gpu.dirty_pages().unwrap(),
            gpu.frame_states().unwrap(),
            gpu.cache_stats().unwrap()
        );
        assert!(gpu.dirty_pages().unwrap() > 0, "sets left pages dirty");
        gpu.flush().unwrap();
        assert_eq!(
            gpu.dirty_pages().unwrap(),
            0,
            "flush wrote every dirty page back"
        );
        check_file(&want, "after GpuIo::flush");
        // Sets, then the channel shuts down (drop): written back on the way out.
        // (7 pages: they stay in the cache, dirty, until the drop.)
        run(&mut want, 64, 1, 50, 7, 0x3333, false);
        assert!(gpu.dirty_pages().unwrap() > 0);
    }
    rt.flush().unwrap();
    check_file(&want, "after shutdown");
}

#[test]
fn prefetch_hints_are_posted_without_waiting() {
    if !gpu() {
        return;
    }
    let path = pattern_file("prefetch.bin", 8 << 20);
    let rt = runtime(2);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = compile_kernels(&gpu);
    let n = 128u32;
    let res = results_buffer(&gpu, n as usize);
    let before = rt.stats().daemon.prefetches;
    launch(
        &gpu,
        &module,
        "prefetch_many",
        1,
        n,
        &[
            KernelArg::U64(gpu.context_ptr()),
            KernelArg::U32(f.raw()),
            KernelArg::U64(65536),
            KernelArg::U64(res.ptr()),
            KernelArg::U32(n),
        ],
    );
    let r = i64s_back(&res, n as usize);
    assert!(
        r.iter().all(|&x| x == 0 || x == -(libc::EAGAIN as i64)),
        "{r:?}"
    );
    let posted = r.iter().filter(|&&x| x == 0).count() as u64;
    assert!(posted > 0);
    let t = Instant::now();
    while rt.stats().daemon.prefetches - before < posted && t.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(
        rt.stats().daemon.prefetches - before,
        posted,
        "every posted hint served"
    );
}

/// `wfs_write` (write-through) and `wfs_array::set` (write-back) on the same pages from different
/// warps, through a GPU cache of 16 pages for the 64 pages written: a dirty frame written back
/// while a write-through of its page is in flight must not put the page's old bytes back over
/// the write (`cached_write` holds the page, flagged WRITING, across the write-through). Every
/// element of the file is checked after `GpuIo::flush`, three rounds. Without the hold
/// (`WARPFS_NVRTC_OPTIONS=-DWFS_EXP_UNGUARDED_WRITES`) it fails on the H100: 747–981 of the 32768
/// elements wrong in the first round, every run (2026-11-26).
#[test]
fn writes_and_sets_sharing_pages_all_reach_the_file() {
    if !gpu() {
        return;
    }
    let size: u64 = 1 << 20;
    let path = pattern_file("mixed.bin", size as usize);
    let len = size / 8;
    let rt = Runtime::new(RuntimeConfig {
        workers: env_usize("WARPFS_TEST_WB_WORKERS").unwrap_or(4),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let f = rt.open(&path, OpenOptions::read_write()).unwrap();
    let gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            gpu_cache_bytes: 16 * 4096,
            gpu_page_bytes: 4096,
            ..small_cfg()
        },
    )
    .unwrap();
    let module = compile_kernels(&gpu);
    let (threads, per) = (8192usize, 4u32);
    let written = threads as u64 * per as u64;
    let mut want = std::fs::read(&path).unwrap();
    for round in 0..3u64 {
        let salt = 0x5EED_0000 + round;
        let res = results_buffer(&gpu, threads);
        launch(
            &gpu,
            &module,
            "mixed_write_set_u64",
            (threads / 128) as u32,
            128,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(f.raw()),
                KernelArg::U64(len),
                KernelArg::U32(per),
                KernelArg::U64(salt),
                KernelArg::U64(res.ptr()),
                KernelArg::U32(threads as u32),
            ],
        );
        let r = i64s_back(&res, threads);
        assert!(
            r.iter().all(|&x| x == 8),
            "wfs_write results: {:?}",
            &r[..8]
        );
        gpu.flush().unwrap();
        for i in 0..written {
            want[i as usize * 8..][..8].copy_from_slice(&set_value(i, salt).to_le_bytes());
        }
        let got = std::fs::read(&path).unwrap();
        let wrong: Vec<u64> = (0..len)
            .filter(|&i| got[i as usize * 8..][..8] != want[i as usize * 8..][..8])
            .collect();
        assert!(
            wrong.is_empty(),
            "round {round}: {} elements wrong, first {:?} (odd warps wrote with wfs_write); {:?}",
            wrong.len(),
            &wrong[..wrong.len().min(8)],
            gpu.cache_stats()
        );
    }
    println!("mixed writes and sets: {:?}", gpu.cache_stats().unwrap());
}

/// Runs `kernel` (`read_many` or `async_many`: same arguments) for (`offs`, `lens`) into a
/// poisoned buffer (`stride` bytes a thread) and checks every result and byte against the
/// file's pattern (`size` bytes).
fn read_many_checked(
    gpu: &GpuIo<'_>,
    module: &warpfs::backend::cuda::gpu_io::GpuModule,
    kernel: &str,
    (fh, size): (u32, u64),
    (offs, lens): (&[u64], &[u64]),
    stride: u64,
    what: &str,
) {
    let n = offs.len();
    let d_offs = upload(gpu, &u64s(offs));
    let d_lens = upload(gpu, &u64s(lens));
    let mut out = gpu.alloc(n * stride as usize).unwrap();
    out.fill(POISON).unwrap();
    let res = results_buffer(gpu, n);
    launch(
        gpu,
        module,
        kernel,
        (n as u32).div_ceil(128),
        128,
        &[
            KernelArg::U64(gpu.context_ptr()),
            KernelArg::U32(fh),
            KernelArg::U64(d_offs.ptr()),
            KernelArg::U64(d_lens.ptr()),
            KernelArg::U64(out.ptr()),
            KernelArg::U64(stride),
            KernelArg::U64(res.ptr()),
            KernelArg::U32(n as u32),
        ],
    );
    let results = i64s_back(&res, n);
    let mut host = vec![0u8; out.len()];
    out.copy_to_host(0, &mut host).unwrap();
    for i in 0..n {
        let want = lens[i].min(size.saturating_sub(offs[i]));
        assert_eq!(
            results[i], want as i64,
            "{what}, thread {i}: read of {} at {}",
            lens[i], offs[i]
        );
        let b = &host[i * stride as usize..(i + 1) * stride as usize];
        if let Some(at) = pattern::first_mismatch(&b[..want as usize], offs[i]) {
            panic!(
                "{what}, thread {i}: byte {at} of the read at {} differs from the file",
                offs[i]
            );
        }
        assert!(
            b[want as usize..].iter().all(|&x| x == POISON),
            "{what}, thread {i}: bytes beyond the {want} read were written"
        );
    }
}

#[test]
fn tier_hits_are_copied_by_the_gpu_from_the_mapped_tier_and_released() {
    if !gpu() {
        return;
    }
    let size: u64 = 8 << 20;
    let path = pattern_file("tier.bin", size as usize);
    let rt = runtime(4);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    // No GPU cache: every wfs_read is a daemon request. The tier mapped into the device.
    let cfg = GpuIoConfig {
        gpu_cache_bytes: 0,
        map_host_tier: true,
        ..small_cfg()
    };
    let pages = size / 4096;
    // Every page whole, then a part of each page (unaligned), then reads across two pages
    // (answered by copy), in a shuffled order.
    let mut reqs: Vec<(u64, u64)> = (0..pages).map(|p| (p * 4096, 4096)).collect();
    reqs.extend((0..pages).map(|p| (p * 4096 + 100 + p % 7, 3000)));
    reqs.extend((1..pages).step_by(3).map(|p| (p * 4096 - 1000, 3000)));
    reqs.push((size - 100, 4096)); // short at end of file
    let mut rng = rand::rngs::StdRng::seed_from_u64(9);
    for i in (1..reqs.len()).rev() {
        reqs.swap(i, rng.random_range(0..=i));
    }
    let one_page = reqs
        .iter()
        .filter(|(o, l)| o / 4096 == (o + l - 1) / 4096)
        .count() as u64;
    let (offs, lens): (Vec<u64>, Vec<u64>) = reqs.into_iter().unzip();
    {
        let gpu = GpuIo::new(&rt, cfg.clone()).unwrap();
        let module = compile_kernels(&gpu);
        // First pass: loads the host tier (first reads of a page are copied).
        read_many_checked(
            &gpu,
            &module,
            "read_many",
            (f.raw(), size),
            (&offs, &lens),
            4096,
            "first pass",
        );
        // Second pass: every page is in the tier, so every one-page read is answered with a
        // reference and copied by the GPU straight from the mapped tier page.
        let before = rt.stats();
        read_many_checked(
            &gpu,
            &module,
            "read_many",
            (f.raw(), size),
            (&offs, &lens),
            4096,
            "tier pass",
        );
        let after = rt.stats();
        let refs = after.daemon.cache_refs - before.daemon.cache_refs;
        println!(
            "tier pass: {} reads, {one_page} of one page, {refs} answered by reference; tier hits {} misses {}",
            offs.len(),
            after.cache.hits - before.cache.hits,
            after.cache.misses - before.cache.misses
        );
        assert_eq!(
            after.cache.misses - before.cache.misses,
            0,
            "the file fits the tier"
        );
        assert!(
            refs >= one_page && refs <= offs.len() as u64,
            "every one-page tier hit answered by reference"
        );
        // The daemon releases what the GPU consumed once it idles (sweep), or at detach.
        let ch = gpu.channel().unwrap().clone();
        let t = Instant::now();
        while ch.refs.held() > 0 && t.elapsed() < Duration::from_secs(5) {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(
            ch.refs.held(),
            0,
            "references left held after the kernels ended"
        );
    }
    // The same reads with the tier not mapped: copied by the daemon, same bytes.
    let gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            map_host_tier: false,
            ..cfg
        },
    )
    .unwrap();
    let module = compile_kernels(&gpu);
    let before = rt.stats().daemon.cache_refs;
    read_many_checked(
        &gpu,
        &module,
        "read_many",
        (f.raw(), size),
        (&offs, &lens),
        4096,
        "tier not mapped",
    );
    assert_eq!(
        rt.stats().daemon.cache_refs,
        before,
        "no references without the mapping"
    );
}

/// Host baseline: `threads` threads, random 4 KiB `pread`s for about `secs` seconds.
fn host_pread_iops(path: &PathBuf, size: u64, threads: usize, secs: f64) -> f64 {
    use std::os::unix::fs::FileExt;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let t = Instant::now();
    let hs: Vec<_> = (0..threads)
        .map(|i| {
            let f = std::fs::File::open(path).unwrap();
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(i as u64);
                let mut buf = vec![0u8; 4096];
                let mut n = 0u64;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    for _ in 0..256 {
                        let p = rng.random_range(0..size / 4096);
                        f.read_exact_at(&mut buf, p * 4096).unwrap();
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    std::thread::sleep(Duration::from_secs_f64(secs));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let total: u64 = hs.into_iter().map(|h| h.join().unwrap()).sum();
    total as f64 / t.elapsed().as_secs_f64()
}

/// GPU random 4 KiB reads, `grid × block` threads × `reads` each; returns (IOPS, bad reads).
fn gpu_rand_read(
    gpu: &GpuIo<'_>,
    module: &warpfs::backend::cuda::gpu_io::GpuModule,
    fh: u32,
    pages: u64,
    (grid, block): (u32, u32),
    reads: u32,
    seed: u64,
) -> (f64, u64) {
    let threads = grid as usize * block as usize;
    let out = gpu.alloc(threads * 4096).unwrap();
    let mut bad = gpu.alloc(8).unwrap();
    bad.fill(0).unwrap();
    let k = module.kernel("rand_read").unwrap();
    let t = Instant::now();
    println!("  launch rand_read");
    // SAFETY: arguments match rand_read; out holds 4096 bytes per thread; bad one counter.
    unsafe {
        k.launch(
            (grid, 1, 1),
            (block, 1, 1),
            0,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(fh),
                KernelArg::U64(pages),
                KernelArg::U32(reads),
                KernelArg::U64(out.ptr()),
                KernelArg::U64(bad.ptr()),
                KernelArg::U64(seed),
            ],
        )
        .unwrap()
    };
    finish(gpu, "rand_read");
    let dt = t.elapsed().as_secs_f64();
    let mut b = [0u8; 8];
    bad.copy_to_host(0, &mut b).unwrap();
    (
        (threads as u64 * reads as u64) as f64 / dt,
        u64::from_le_bytes(b),
    )
}

#[test]
fn gpu_random_read_iops() {
    if !gpu() {
        return;
    }
    if std::env::var("WARPFS_GPU_BENCH").ok().as_deref() != Some("1") {
        println!("skipping: set WARPFS_GPU_BENCH=1 to run the GPU random-read figure");
        return;
    }
    let size: u64 = std::env::var("WARPFS_GPU_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(1024)
        << 20;
    let path = pattern_file("bench.bin", size as usize);
    let _ = std::fs::read(&path).unwrap(); // page cache warm
    let pages = size / 4096;
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    println!("file {} MiB, {cores} cores", size >> 20);
    let mut rows = Vec::new();
    for threads in [4usize, 8, 16] {
        let iops = host_pread_iops(&path, size, threads, 1.5);
        rows.push(format!(
            "| host pread, {threads} threads | {:.2} M |",
            iops / 1e6
        ));
    }
    for workers in [4usize, 8] {
        let rt = runtime(workers);
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let gpu = GpuIo::new(&rt, GpuIoConfig::default()).unwrap();
        let module = compile_kernels(&gpu);
        // Warm-up (daemon threads spinning, host cache tier touched), then the measured run.
        let _ = gpu_rand_read(&gpu, &module, f.raw(), pages, (264, 128), 4, 1);
        let (iops, bad) = gpu_rand_read(&gpu, &module, f.raw(), pages, (264, 128), 64, 2);
        rows.push(format!(
            "| GPU wfs_read, 33792 threads × 64, daemon {workers} workers | {:.2} M (bad {bad}) |",
            iops / 1e6
        ));
        println!("daemon {workers} workers: {:?}", rt.stats());
        assert_eq!(bad, 0, "GPU reads returned wrong bytes or lengths");
    }
    // PCIe atomics probe: GPU system-scope adds racing host adds on one mapped word.
    {
        let rt = runtime(1);
        let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
        let native = gpu
            .device_attribute(
                cudarc::driver::sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_HOST_NATIVE_ATOMIC_SUPPORTED,
            )
            .unwrap();
        let module = compile_kernels(&gpu);
        let word =
            warpfs::backend::cuda::mapped::MappedHostMemory::new(gpu.context(), 4096).unwrap();
        use warpfs::region::SharedMemory;
        // SAFETY: the mapping is 4096 bytes, page aligned, alive until the end of this block.
        let host = unsafe { std::sync::atomic::AtomicU64::from_ptr(word.as_ptr().cast()) };
        let k = module.kernel("atomic_probe").unwrap();
        let (blocks, per) = (132u32 * 4, 256u32);
        let iters = 16u32;
        println!("  launch atomic_probe");
        // SAFETY: atomic_probe(u64*, unsigned); the word outlives the launch (synchronised).
        unsafe {
            k.launch(
                (blocks, 1, 1),
                (per, 1, 1),
                0,
                &[KernelArg::U64(word.device_ptr()), KernelArg::U32(iters)],
            )
            .unwrap()
        };
        let host_adds = 1_000_000u64;
        for _ in 0..host_adds {
            host.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        finish(&gpu, "atomic_probe");
        let want = host_adds + blocks as u64 * per as u64 * iters as u64;
        let got = host.load(std::sync::atomic::Ordering::SeqCst);
        rows.push(format!(
            "| atomicAdd_system on mapped host memory vs host fetch_add: HOST_NATIVE_ATOMIC_SUPPORTED={native}, count {got} of {want} ({}) |  |",
            if got == want { "exact" } else { "LOST UPDATES" }
        ));
    }
    println!("\n| what | 4 KiB random reads/s |\n|---|---:|");
    for r in rows {
        println!("{r}");
    }
}

/// `GpuIo::map_file`: a read-only file mapped into the device is read through `wfs_array`
/// without the daemon: misses copy pages from the view while the cache has never-used frames,
/// then read in place (no eviction). Every element read, by `operator[]` and by `pin`, is
/// checked against the file's pattern, including the file's last, partial page (which the
/// daemon loads). A file registered writable is refused.
#[test]
fn a_mapped_file_is_read_through_its_view_every_element_checked() {
    if !gpu() {
        return;
    }
    let size: u64 = (1 << 20) + 1000; // 256 whole pages and a partial one
    let path = pattern_file("view.bin", size as usize);
    let rt = runtime(2);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let w = rt.open(&path, OpenOptions::read_write()).unwrap();
    let mut gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            gpu_cache_bytes: 16 * 4096, // 16 frames for 257 pages: full after the first loads
            ..small_cfg()
        },
    )
    .unwrap();
    let e = gpu.map_file(&w).unwrap_err().to_string();
    assert!(e.contains("read-only"), "{e}");
    gpu.map_file(&f).unwrap();
    let module = compile_kernels(&gpu);
    let len = size / 8;
    let requests_before = rt.stats().daemon.requests;

    // Pins (`kernel`: array_pin_read) of every page's first element and one in the middle, a
    // warp per 16 pages; every span's count and element checked.
    let pages = size.div_ceil(4096);
    let idx: Vec<u64> = (0..pages)
        .flat_map(|p| [p * 512, p * 512 + 301])
        .filter(|&i| i < len)
        .collect();
    let pins = |kernel: &str| {
        let n = idx.len();
        let per = 512usize;
        let ib = upload(&gpu, &u64s(&idx));
        let mut out = gpu.alloc(n * per * 8).unwrap();
        out.fill(POISON).unwrap();
        let counts = results_buffer(&gpu, n);
        launch(
            &gpu,
            &module,
            kernel,
            n.div_ceil(128) as u32,
            128,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(f.raw()),
                KernelArg::U64(0),
                KernelArg::U64(len),
                KernelArg::U64(ib.ptr()),
                KernelArg::U32(per as u32),
                KernelArg::U64(out.ptr()),
                KernelArg::U64(counts.ptr()),
                KernelArg::U32(n as u32),
            ],
        );
        let (got, counts) = (u64s_back(&out, n * per), u64s_back(&counts, n));
        for (t, &i) in idx.iter().enumerate() {
            let want = (512 - i % 512).min(len - i);
            assert_eq!(counts[t], want, "{kernel}: element {i}");
            for k in 0..per as u64 {
                let x = got[t * per + k as usize];
                if k < want {
                    assert_eq!(x, pattern::word(i + k), "{kernel}: element {}", i + k);
                } else {
                    assert_eq!(x, u64::from_le_bytes([POISON; 8]), "{kernel}: past {i}");
                }
            }
        }
    };

    // operator[]: 512 threads × 64 scattered elements (every page, the last one included).
    for (n, (i, x)) in array_u64_reads(&gpu, &module, f.raw(), 0, len, 512, 64)
        .into_iter()
        .enumerate()
    {
        assert_eq!(x, pattern::word(i), "read {n}: element {i}");
    }
    let st = gpu.cache_stats().unwrap();
    println!("view, element reads: {st:?}");
    assert!(
        st.misses > 0 && st.in_place > 0 && st.in_place_bytes > 0,
        "{st:?}"
    );
    assert_eq!(st.evictions, 0, "a view-backed miss never evicts: {st:?}");

    pins("array_pin_read");
    let st2 = gpu.cache_stats().unwrap();
    println!("view, pins: {st2:?}");
    assert!(st2.in_place > st.in_place, "{st2:?}");
    assert_eq!(st2.evictions, 0, "{st2:?}");
    // Only the last, partial page reaches the daemon (once per launch at most, plus
    // in-place reads around it when the cache was full).
    let served = rt.stats().daemon.requests - requests_before;
    assert!(
        served <= 64,
        "the daemon served {served} requests for a mapped file"
    );
    assert_eq!(gpu.cache_stats().unwrap().api_errors, 0);
}

/// A mapped file truncated behind the GPU's back: kernels go on reading without a fault or an
/// error and the channel keeps working. Every word read is the file's old bytes or zero, never
/// anything else (the driver follows the truncation: on the H100 the pages past the new end
/// read as zeros), and the page still in the file reads right.
#[test]
fn a_mapped_file_truncated_behind_the_gpu_is_read_without_faults() {
    if !gpu() {
        return;
    }
    let size: u64 = 1 << 20;
    let path = pattern_file("view-truncated.bin", size as usize);
    let rt = runtime(2);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let mut gpu = GpuIo::new(
        &rt,
        GpuIoConfig {
            gpu_cache_bytes: 16 * 4096,
            ..small_cfg()
        },
    )
    .unwrap();
    gpu.map_file(&f).unwrap();
    let module = compile_kernels(&gpu);
    let file = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    file.set_len(4096).unwrap();
    let (mut old, mut zero, mut other, mut first_page_wrong) = (0u64, 0u64, Vec::new(), 0u64);
    for (i, x) in array_u64_reads(&gpu, &module, f.raw(), 0, size / 8, 256, 32) {
        if i < 512 && x != pattern::word(i) {
            first_page_wrong += 1;
        }
        if x == pattern::word(i) {
            old += 1;
        } else if x == 0 {
            zero += 1;
        } else {
            other.push((i, x));
        }
    }
    println!(
        "after the truncation: {old} old words, {zero} zero words, {} others (first: {:x?})",
        other.len(),
        &other[..other.len().min(8)]
    );
    assert!(
        other.is_empty(),
        "words that are neither the file's old bytes nor 0"
    );
    assert!(old > 0, "no element of the first page was read");
    assert_eq!(
        first_page_wrong, 0,
        "the file's first page (still there) read wrong"
    );
    let st = gpu.cache_stats().unwrap();
    println!("truncated view: {st:?}");
    assert_eq!(st.api_errors, 0, "{st:?}");
    // The channel still serves the daemon's reads: the file's present 4096 bytes.
    assert_eq!(rt.size(&f).unwrap(), 4096);
}
