/*
 * warpfs.cuh — GPU-initiated file I/O for CUDA C++ kernels (NVRTC or nvcc, sm_70 and newer).
 *
 * A kernel gets a `const wfs_ctx_t *ctx` from the host runtime
 * (`warpfs::backend::cuda::gpu_io::GpuIo::context_ptr`) and file handles (`FileHandle::raw`),
 * and calls, from any thread:
 *
 *   long long wfs_read (ctx, fh, offset, len, dst)   bytes read (short at end of file) or -errno
 *   long long wfs_write(ctx, fh, offset, len, src)   bytes written or -errno
 *   long long wfs_fsync(ctx, fh)                     0 or -errno (after fdatasync on the host)
 *   long long wfs_size (ctx, fh)                     file size in bytes or -errno
 *
 * `dst` / `src` are device (or any GPU-addressable) memory. Errors are negative Linux errno
 * values: -EBADF (unknown handle, or mode not granted), -EINVAL, -EFAULT, -ETIMEDOUT (no answer
 * within the runtime's timeout), -ESHUTDOWN (the runtime shut the channel down), -EBUSY (no free
 * request group within the timeout).
 *
 * Protocol (see gpu_io.rs for the full argument). The threads of a warp that call together form
 * a group; the group's leader takes a free request group (32 completion records + 32 lane
 * buffers) with a device-memory atomicCAS, and claims demand-ring positions for the lanes with
 * one device-memory atomicAdd. No atomic ever touches host memory: each lane waits until its
 * slot's sequence word says the daemon freed it, writes the request, and publishes it with a
 * system-scope release store of `pos + 1` — the same Vyukov slot protocol the host ring uses,
 * except that the claim counter lives in device memory. The leader then advances the ring
 * header's advisory `tail` (a plain store, re-checked against a device-memory maximum) so an
 * idle daemon sees work. Each lane then polls its completion record (acquire loads,
 * __nanosleep backoff, bounded by the timeout), and the group copies the lanes' data between
 * the mapped data region and their buffers cooperatively (coalesced 16-byte accesses).
 *
 * No thread waits on another GPU thread's progress except through the daemon: a request group
 * is held only while its own requests are in flight.
 *
 * The wire records come from warpfs_abi.h, the one C mirror of crates/warpfs/src/abi.rs (checked
 * by crates/warpfs/tests/abi_header.rs and by the static_asserts there, which NVRTC evaluates
 * each time it compiles a kernel that includes this file).
 */
#ifndef WARPFS_CUH
#define WARPFS_CUH

#include "warpfs_abi.h"

/** The context a kernel receives (device pointer, read only). */
typedef WfsGpuContext wfs_ctx_t;

#define WFS_EIO 5
#define WFS_EBADF 9
#define WFS_EFAULT 14
#define WFS_EBUSY 16
#define WFS_EINVAL 22
#define WFS_ESHUTDOWN 108
#define WFS_ETIMEDOUT 110

namespace wfs_detail {

typedef unsigned long long u64;
typedef unsigned int u32;

__device__ __forceinline__ u64 now_ns() {
    u64 t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ u32 lane_id() {
    u32 l;
    asm volatile("mov.u32 %0, %%laneid;" : "=r"(l));
    return l;
}

__device__ __forceinline__ u32 lanemask_lt() {
    u32 m;
    asm volatile("mov.u32 %0, %%lanemask_lt;" : "=r"(m));
    return m;
}

/* System-scope accesses to mapped host memory. */
__device__ __forceinline__ u32 ld_acquire_sys_u32(const void *p) {
    u32 v;
    asm volatile("ld.acquire.sys.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u64 ld_acquire_sys_u64(const void *p) {
    u64 v;
    asm volatile("ld.acquire.sys.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u32 ld_relaxed_sys_u32(const void *p) {
    u32 v;
    asm volatile("ld.relaxed.sys.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u64 ld_relaxed_sys_u64(const void *p) {
    u64 v;
    asm volatile("ld.relaxed.sys.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ void st_relaxed_sys_u32(void *p, u32 v) {
    asm volatile("st.relaxed.sys.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ void st_relaxed_sys_u64(void *p, u64 v) {
    asm volatile("st.relaxed.sys.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ void st_release_sys_u64(void *p, u64 v) {
    asm volatile("st.release.sys.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
/* Device-memory word written by other GPU threads (bypasses a stale L1). */
__device__ __forceinline__ u64 ld_relaxed_gpu_u64(const void *p) {
    u64 v;
    asm volatile("ld.relaxed.gpu.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
    return v;
}
/* Mapped host memory, fetched again (never from a stale cache line). */
__device__ __forceinline__ uint4 ld_cv_v4(const void *p) {
    uint4 v;
    asm volatile("ld.global.cv.v4.u32 {%0, %1, %2, %3}, [%4];"
                 : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
                 : "l"(p));
    return v;
}
__device__ __forceinline__ unsigned char ld_cv_u8(const void *p) {
    unsigned short v;
    asm volatile("ld.global.cv.u8 %0, [%1];" : "=h"(v) : "l"(p));
    return (unsigned char)v;
}

/* Whether a generic address lies in the global window (device or mapped host memory), so any
 * lane may access it; a stack (local) or shared address is copied by its own lane only. */
__device__ __forceinline__ bool is_global(const void *p) {
    u32 r;
    asm("{\n\t.reg .pred q;\n\tisspacep.global q, %1;\n\tselp.u32 %0, 1, 0, q;\n\t}"
        : "=r"(r)
        : "l"(p));
    return r != 0;
}

__device__ __forceinline__ void backoff(u32 &ns) {
    __nanosleep(ns);
    ns = ns < 4096 ? ns * 2 : 8192;
}

__device__ __forceinline__ WfsGpuState *state(const wfs_ctx_t *ctx) {
    return reinterpret_cast<WfsGpuState *>(ctx->state);
}
__device__ __forceinline__ u32 *busy_words(const wfs_ctx_t *ctx) {
    return reinterpret_cast<u32 *>(ctx->state + sizeof(WfsGpuState));
}
__device__ __forceinline__ bool closing(const wfs_ctx_t *ctx) {
    return ld_relaxed_sys_u32(&reinterpret_cast<const WfsGpuControl *>(ctx->control)->closing) != 0;
}

/* Results of acquire_group that are not a group index. */
#define WFS_GROUP_SHUTDOWN 0xFFFFFFFEu
#define WFS_GROUP_BUSY 0xFFFFFFFDu

/* Leader only: takes a free request group (device-memory CAS), bounded by `deadline`. */
__device__ u32 acquire_group(const wfs_ctx_t *ctx, u64 deadline) {
    const u32 n = ctx->warp_slots;
    u32 *busy = busy_words(ctx);
    u32 start = atomicAdd(&state(ctx)->hint, 1u) % n;
    u32 ns = 64;
    for (;;) {
        for (u32 i = 0; i < n && i < 64; ++i) {
            u32 g = start + i;
            if (g >= n) g -= n;
            if (atomicCAS(&busy[g], 0u, 1u) == 0u) {
                __threadfence();
                return g;
            }
        }
        if (closing(ctx)) return WFS_GROUP_SHUTDOWN;
        if (now_ns() > deadline) return WFS_GROUP_BUSY;
        start = (start + 64) % n;
        backoff(ns);
    }
}

/*
 * Copies `n` bytes between the lanes' buffers, all lanes of `group` cooperating:
 * lane `rank` of `cnt` takes every cnt-th 16-byte word. `from_host` selects cache-bypassing
 * loads (the source is mapped host memory the daemon wrote).
 */
__device__ __forceinline__ void coop_copy(unsigned char *dst, const unsigned char *src, u64 n,
                                          u32 rank, u32 cnt, bool from_host) {
    if (((reinterpret_cast<u64>(dst) | reinterpret_cast<u64>(src)) & 15) == 0) {
        const u64 words = n / 16;
        uint4 *d = reinterpret_cast<uint4 *>(dst);
        const uint4 *s = reinterpret_cast<const uint4 *>(src);
        u64 i = rank;
        /* Four loads in flight per lane before the stores. */
        for (; i + 3 * cnt < words; i += 4 * cnt) {
            uint4 a, b, c, e;
            if (from_host) {
                a = ld_cv_v4(s + i);
                b = ld_cv_v4(s + i + cnt);
                c = ld_cv_v4(s + i + 2 * cnt);
                e = ld_cv_v4(s + i + 3 * cnt);
            } else {
                a = s[i];
                b = s[i + cnt];
                c = s[i + 2 * cnt];
                e = s[i + 3 * cnt];
            }
            d[i] = a;
            d[i + cnt] = b;
            d[i + 2 * cnt] = c;
            d[i + 3 * cnt] = e;
        }
        for (; i < words; i += cnt) d[i] = from_host ? ld_cv_v4(s + i) : s[i];
        for (u64 j = words * 16 + rank; j < n; j += cnt) dst[j] = from_host ? ld_cv_u8(src + j) : src[j];
    } else {
        for (u64 j = rank; j < n; j += cnt) dst[j] = from_host ? ld_cv_u8(src + j) : src[j];
    }
}

/*
 * One call of the device API by every active lane of the calling warp. All group-wide
 * decisions are taken from ballots or the leader's broadcast, so every lane runs the same
 * sequence of warp-synchronous operations.
 */
__device__ long long io(const wfs_ctx_t *ctx, u32 op, u32 fh, u64 offset, u64 len, void *ptr) {
    const u32 group = __activemask();
    const u32 lane = lane_id();
    const u32 leader = __ffs(group) - 1;
    const u32 rank = __popc(group & lanemask_lt());
    const u32 cnt = __popc(group);
    if (ctx == 0 || ctx->magic != WFS_GPU_CTX_MAGIC || ctx->version != WFS_ABI_VERSION ||
        ctx->warp_slots == 0 || ctx->lane_bytes == 0)
        return -WFS_EINVAL; /* same answer on every lane: ctx is one pointer per launch */
    const bool rw = op == WFS_OP_READ || op == WFS_OP_WRITE;
    const u64 deadline = now_ns() + ctx->timeout_ns;

    u32 g = 0;
    if (lane == leader) g = closing(ctx) ? WFS_GROUP_SHUTDOWN : acquire_group(ctx, deadline);
    g = __shfl_sync(group, g, leader);
    if (g == WFS_GROUP_SHUTDOWN) return -WFS_ESHUTDOWN;
    if (g == WFS_GROUP_BUSY) return -WFS_EBUSY;

    const u32 rec = g * 32u + lane;
    const u64 lane_bytes = ctx->lane_bytes;
    const u64 buf = (u64)rec * lane_bytes;
    unsigned char *host_buf = reinterpret_cast<unsigned char *>(ctx->data + buf);
    WfsCompletion *comp = reinterpret_cast<WfsCompletion *>(ctx->completions) + rec;
    WfsSlot *slots = reinterpret_cast<WfsSlot *>(ctx->slots);
    unsigned char *user = reinterpret_cast<unsigned char *>(ptr);

    long long total = 0;
    long long err = 0;
    bool done = rw && (len == 0 || ptr == 0);
    if (rw && len != 0 && ptr == 0) err = -WFS_EFAULT;
    bool retired = false;
    /* Lanes copy each other's data only if every lane's buffer is reachable from every lane. */
    const bool coop = __all_sync(group, ptr == 0 || is_global(ptr));

    for (;;) {
        const bool want = !done;
        const u32 post = __ballot_sync(group, want);
        if (post == 0) break;
        const u64 remaining = rw ? len - (u64)total : 0;
        const u64 chunk = want && rw ? (remaining < lane_bytes ? remaining : lane_bytes) : 0;

        if (op == WFS_OP_WRITE) {
            /* Stage each posting lane's chunk in its lane buffer (device -> mapped host). */
            if (coop) {
                for (u32 m = post; m; m &= m - 1) {
                    const u32 k = __ffs(m) - 1;
                    const u64 n = __shfl_sync(group, chunk, k);
                    const u64 src = __shfl_sync(group, reinterpret_cast<u64>(user + total), k);
                    const u64 dst = __shfl_sync(group, reinterpret_cast<u64>(host_buf), k);
                    coop_copy(reinterpret_cast<unsigned char *>(dst),
                              reinterpret_cast<const unsigned char *>(src), n, rank, cnt, false);
                }
            } else if (want) {
                coop_copy(host_buf, user + total, chunk, 0, 1, false);
            }
            /* The staged bytes reach host memory before any lane publishes its request. */
            __threadfence_system();
            __syncwarp(group);
        }

        /* Claim positions for the posting lanes: one device-memory atomic per group. */
        u64 base = 0;
        if (lane == leader) base = atomicAdd(&state(ctx)->claim, (u64)__popc(post));
        base = __shfl_sync(group, base, leader);

        long long r = 0;
        bool posted = false;
        if (want) {
            const u64 pos = base + __popc(post & lanemask_lt());
            WfsSlot *slot = slots + (pos & ctx->ring_mask);
            /* Arm the record; the release store of the sequence word orders these stores. */
            st_relaxed_sys_u32(&comp->ticket, (u32)pos);
            st_relaxed_sys_u64(&comp->result, 0);
            st_relaxed_sys_u32(&comp->state, WFS_COMP_PENDING);
            /* Wait until the daemon handed the slot back from its previous lap. */
            u32 ns = 32;
            while (ld_acquire_sys_u64(&slot->seq) != pos) {
                if (now_ns() > deadline) {
                    r = -WFS_ETIMEDOUT;
                    break;
                }
                backoff(ns);
            }
            if (r == 0) {
                WfsRequest *q = &slot->req;
                q->op = op;
                q->flags = 0;
                q->handle = fh;
                q->completion = rec;
                q->ticket = (u32)pos;
                q->reserved = 0;
                q->offset = offset + (u64)total;
                q->len = chunk;
                q->buf = buf;
                st_release_sys_u64(&slot->seq, pos + 1);
                posted = true;
            }
        }
        __syncwarp(group);

        /* Advisory tail for the daemon's idle check: store, then re-check the device maximum. */
        if (lane == leader) {
            WfsGpuState *st = state(ctx);
            u64 cur = base + __popc(post);
            atomicMax(&st->tail_max, cur);
            __threadfence_system();
            cur = ld_relaxed_gpu_u64(&st->tail_max);
            WfsRingHeader *hdr = reinterpret_cast<WfsRingHeader *>(ctx->ring);
            for (int i = 0; i < 64; ++i) {
                st_relaxed_sys_u64(&hdr->tail, cur);
                __threadfence_system();
                const u64 now = ld_relaxed_gpu_u64(&st->tail_max);
                if (now == cur) break;
                cur = now;
            }
        }

        if (posted) {
            u32 ns = 64;
            u32 spins = 0;
            for (;;) {
                if (ld_acquire_sys_u32(&comp->state) == WFS_COMP_DONE) {
                    r = (long long)ld_relaxed_sys_u64(&comp->result);
                    st_relaxed_sys_u32(&comp->state, WFS_COMP_FREE);
                    break;
                }
                if ((++spins & 7) == 0 && closing(ctx)) {
                    r = -WFS_ESHUTDOWN;
                    break;
                }
                if (now_ns() > deadline) {
                    r = -WFS_ETIMEDOUT;
                    break;
                }
                backoff(ns);
            }
        }

        /* A request left unanswered may still be written later: retire the group. */
        if (__any_sync(group, r == -WFS_ETIMEDOUT || r == -WFS_ESHUTDOWN)) retired = true;

        if (op == WFS_OP_READ) {
            /* Each lane's acquire of DONE precedes every lane's loads of its buffer. */
            __syncwarp(group);
            if (coop) {
                const u32 got = __ballot_sync(group, want && r > 0);
                for (u32 m = got; m; m &= m - 1) {
                    const u32 k = __ffs(m) - 1;
                    const u64 n = __shfl_sync(group, (u64)r, k);
                    const u64 dst = __shfl_sync(group, reinterpret_cast<u64>(user + total), k);
                    const u64 src = __shfl_sync(group, reinterpret_cast<u64>(host_buf), k);
                    coop_copy(reinterpret_cast<unsigned char *>(dst),
                              reinterpret_cast<const unsigned char *>(src), n, rank, cnt, true);
                }
            } else if (want && r > 0) {
                coop_copy(user + total, host_buf, (u64)r, 0, 1, true);
            }
        }

        if (want) {
            if (r < 0) {
                err = r;
                done = true;
            } else if (rw) {
                total += r;
                if ((u64)r < chunk || (u64)total >= len || r == 0) done = true;
            } else {
                total = r;
                done = true;
            }
        }
        if (retired) done = true;
    }

    __syncwarp(group);
    if (lane == leader) {
        __threadfence();
        atomicExch(&busy_words(ctx)[g], retired ? 2u : 0u);
    }
    if (err < 0 && total == 0) return err;
    return total;
}

} /* namespace wfs_detail */

/** Reads up to `len` bytes at `offset` of file `fh` into `dst`; bytes read (short at end of
 *  file) or a negative errno. Callable by any thread; the calling lanes of a warp cooperate. */
__device__ __forceinline__ long long wfs_read(const wfs_ctx_t *ctx, unsigned fh,
                                              unsigned long long offset, unsigned long long len,
                                              void *dst) {
    return wfs_detail::io(ctx, WFS_OP_READ, fh, offset, len, dst);
}

/** Writes `len` bytes from `src` at `offset` of file `fh`; bytes written or a negative errno.
 *  Acknowledged once the host OS has the bytes (durable after wfs_fsync). */
__device__ __forceinline__ long long wfs_write(const wfs_ctx_t *ctx, unsigned fh,
                                               unsigned long long offset, unsigned long long len,
                                               const void *src) {
    return wfs_detail::io(ctx, WFS_OP_WRITE, fh, offset, len, const_cast<void *>(src));
}

/** Makes the file's acknowledged writes durable (host fdatasync); 0 or a negative errno. */
__device__ __forceinline__ long long wfs_fsync(const wfs_ctx_t *ctx, unsigned fh) {
    return wfs_detail::io(ctx, WFS_OP_FSYNC, fh, 0, 0, 0);
}

/** The file's size in bytes, or a negative errno. */
__device__ __forceinline__ long long wfs_size(const wfs_ctx_t *ctx, unsigned fh) {
    return wfs_detail::io(ctx, WFS_OP_SIZE, fh, 0, 0, 0);
}

#endif /* WARPFS_CUH */
