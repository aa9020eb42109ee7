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
    long long t = wfs_read_async(ctx, fh, 0, 64, buf);
    r += wfs_wait(ctx, t);
    r += wfs_prefetch(ctx, fh, 0, 1 << 20);
    wfs_array<unsigned long long> a = wfs_array_make<unsigned long long>(ctx, fh, 0, 1000);
    r += (long long)a[threadIdx.x * 37];
    r += a.copy(3, 10, (unsigned long long *)buf);
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
    gpu.synchronize().unwrap();
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
    let module = gpu.compile(KERNELS, &[]).unwrap();

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

    let d_offs = upload(&gpu, &u64s(&offs));
    let d_lens = upload(&gpu, &u64s(&lens));
    let mut out = gpu.alloc(n * stride as usize).unwrap();
    out.fill(POISON).unwrap();
    let res = results_buffer(&gpu, n);
    let k = module.kernel("read_many").unwrap();
    let t = Instant::now();
    // SAFETY: arguments match read_many's signature; buffers hold n entries / n × stride bytes.
    unsafe {
        k.launch(
            ((n as u32).div_ceil(128), 1, 1),
            (128, 1, 1),
            0,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(f.raw()),
                KernelArg::U64(d_offs.ptr()),
                KernelArg::U64(d_lens.ptr()),
                KernelArg::U64(out.ptr()),
                KernelArg::U64(stride),
                KernelArg::U64(res.ptr()),
                KernelArg::U32(n as u32),
            ],
        )
        .unwrap()
    };
    gpu.synchronize().unwrap();
    println!("read_many: {n} reads in {:?}", t.elapsed());

    let results = i64s_back(&res, n);
    let mut host = vec![0u8; out.len()];
    out.copy_to_host(0, &mut host).unwrap();
    let mut checked = 0u64;
    for i in 0..n {
        let want = lens[i].min(size.saturating_sub(offs[i]));
        assert_eq!(
            results[i], want as i64,
            "thread {i}: read of {} at {} returned {}, expected {want}",
            lens[i], offs[i], results[i]
        );
        let b = &host[i * stride as usize..(i + 1) * stride as usize];
        if let Some(at) = pattern::first_mismatch(&b[..want as usize], offs[i]) {
            panic!(
                "thread {i}: byte {at} of the read at {} differs from the file",
                offs[i]
            );
        }
        assert!(
            b[want as usize..].iter().all(|&x| x == POISON),
            "thread {i}: bytes beyond the {want} read were written"
        );
        checked += want;
    }
    println!("checked {checked} bytes; daemon {:?}", rt.stats().daemon);
}

#[test]
fn nvrtc_layout_of_the_records_matches_abi_rs() {
    if !gpu() {
        return;
    }
    let rt = runtime(1);
    let gpu = GpuIo::new(&rt, small_cfg()).unwrap();
    let module = gpu.compile(KERNELS, &[]).unwrap();
    let table = warpfs::abi::layout_table();
    let out = results_buffer(&gpu, table.len());
    // SAFETY: layout(unsigned long long*) writes table.len() values (one per WFS_LAYOUT row).
    unsafe {
        module
            .kernel("layout")
            .unwrap()
            .launch((1, 1, 1), (1, 1, 1), 0, &[KernelArg::U64(out.ptr())])
            .unwrap()
    };
    gpu.synchronize().unwrap();
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
    let module = gpu.compile(KERNELS, &[]).unwrap();
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
    assert!(rt.stats().daemon.errors >= 3 * n as u64);
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
    let module = gpu.compile(KERNELS, &[]).unwrap();
    let n: u32 = 2048;
    let len: u64 = 6000; // not a multiple of the lane buffer: two chunks, unaligned offsets
    let mut src = vec![0u8; (n as u64 * len) as usize];
    pattern::fill(&mut src, 1 << 40);
    let d_src = upload(&gpu, &src);
    let res = results_buffer(&gpu, n as usize);
    let k = module.kernel("write_many").unwrap();
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
    gpu.synchronize().unwrap();
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
    let module = gpu.compile(KERNELS, &[]).unwrap();
    gpu.set_serving(false);
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
    let module = gpu.compile(KERNELS, &[]).unwrap();
    gpu.set_serving(false);
    let res = results_buffer(&gpu, 64);
    let k = module.kernel("one_op").unwrap();
    let t = Instant::now();
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
    gpu.synchronize().unwrap();
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
        let module = gpu.compile(KERNELS, &[]).unwrap();
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
        let module = gpu.compile(KERNELS, &[]).unwrap();
        let word =
            warpfs::backend::cuda::mapped::MappedHostMemory::new(gpu.context(), 4096).unwrap();
        use warpfs::region::SharedMemory;
        // SAFETY: the mapping is 4096 bytes, page aligned, alive until the end of this block.
        let host = unsafe { std::sync::atomic::AtomicU64::from_ptr(word.as_ptr().cast()) };
        let k = module.kernel("atomic_probe").unwrap();
        let (blocks, per) = (132u32 * 4, 256u32);
        let iters = 16u32;
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
        gpu.synchronize().unwrap();
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
