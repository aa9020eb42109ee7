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

/* Each thread `reads` random 4 KiB pages; counts bad lengths / first and last words (when
 * `check`), and records the latency (ns) of its first `lat_per` reads into lat. */
extern "C" __global__ void bench_rand(const wfs_ctx_t *ctx, unsigned fh, unsigned long long pages,
                                      unsigned reads, int direct, int check, unsigned long long seed,
                                      unsigned char *out, unsigned long long *bad,
                                      unsigned long long *lat, unsigned lat_per) {
    unsigned long long tid = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    unsigned long long x = (tid + 1) * 0x9E3779B97F4A7C15ull ^ 0xD1B54A32D192ED03ull;
    unsigned char *dst = out + tid * 4096;
    unsigned long long nbad = 0;
    for (unsigned r = 0; r < reads; ++r) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        unsigned long long page = x % pages;
        unsigned long long t0 = wfs_detail::now_ns();
        long long got = direct ? wfs_read_direct(ctx, fh, page * 4096, 4096, dst)
                               : wfs_read(ctx, fh, page * 4096, 4096, dst);
        if (r < lat_per) lat[tid * lat_per + r] = wfs_detail::now_ns() - t0;
        const unsigned long long *w = (const unsigned long long *)dst;
        if (got != 4096 || (check && (w[0] != bench_word(seed, page * 512) ||
                                      w[511] != bench_word(seed, page * 512 + 511))))
            nbad++;
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
        unsigned long long base = __shfl_sync(__activemask(), x, 0) % span;
        unsigned long long i = (base + (threadIdx.x & 31)) % span;
        unsigned long long v = a[i];
        if (check && v != bench_word(seed, i)) nbad++;
        s += v;
    }
    atomicAdd(sum, s);
    if (nbad) atomicAdd(bad, nbad);
}
"#;
