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
 * and per warp (every active lane with the same arguments, one request, lanes copy together):
 *   wfs_read_warp, wfs_read_direct_warp, wfs_write_warp
 * and per block (every thread of the block with the same arguments; a slice per warp):
 *   wfs_read_block, wfs_read_direct_block, wfs_write_block
 *
 * `dst` / `src` are device (or any GPU-addressable) memory. Errors are negative Linux errno
 * values: -EBADF (unknown handle, or mode not granted), -EINVAL, -EFAULT, -ETIMEDOUT (no answer
 * within the runtime's timeout), -ESHUTDOWN (the runtime shut the channel down), -EBUSY (no free
 * request group within the timeout).
 *
 * Protocol (see gpu_io.rs for the full argument). The threads of a warp that call together form
 * a group; the group's leader takes a free request group (32 completion records + 32 lane
 * buffers) with a device-memory acquire CAS, and each posting lane claims its demand-ring
 * position with a device-memory atomicAdd. No atomic ever touches host memory: each lane waits
 * until its slot's sequence word says the daemon freed it, arms its completion record (state and
 * ticket in one 64-bit store), writes the request, and publishes it with a system-scope release
 * store of `pos + 1` — the same Vyukov slot protocol the host ring uses, except that the claim
 * counter lives in device memory; one system-scope release per request. The leader then stores
 * the ring header's advisory `tail` (the largest device-memory maximum its lanes saw) so an idle
 * daemon sees work. Each lane then polls its completion record (one 16-byte acquire load of state
 * and result, __nanosleep backoff, bounded by the timeout), and the group copies the lanes' data
 * between the mapped data region and their buffers cooperatively (coalesced 16-byte accesses,
 * eight loads in flight per lane from host memory).
 *
 * Where a request's time goes: -DWFS_TRACE (e.g. WARPFS_NVRTC_OPTIONS) prints the steps of one
 * io() call and one page load in WFS_TRACE_EVERY + 1 (diagnostics only; printf is slow).
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
#define WFS_EAGAIN 11
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

/* The lanes that make this call together, taken where the user calls (the public wrappers are
 * inlined there) and passed down; io() and cached_read() never take it themselves.
 *
 * Only a whole warp cooperates; a partial warp calls lane by lane. __activemask() of lanes
 * that arrive at a call from divergent code is not trustworthy (ROBUSTNESS.md finding 11:
 * on the H100/H200 a per-thread call right after a per-lane loop read a garbage request-group
 * index from the leader's shuffle in about 2 of 26 launches; ptxas computes the mask into a
 * uniform register (VOTEU.ANY) and reads it after a BSYNC, where another subset of the warp
 * may have overwritten it). A subset of the warp can only ever read another subset's mask, so
 * a full mask is always genuine: all 32 lanes ran the vote converged at this call site. */
__device__ __forceinline__ u32 calling_lanes() {
    const u32 active = __activemask();
    return active == 0xffffffffu ? active : (1u << lane_id());
}

/* The lanes of `group` whose `pred` holds. __ballot_sync alone is not enough: its result has
 * the bit of every *active* lane whose predicate holds (CUDA Programming Guide), and a lane of
 * another group of the same warp that runs the same instruction converged with this one is
 * active too (seen on the H100: ring positions counted for lanes of another call, so never
 * published). Every vote in this file goes through here. */
__device__ __forceinline__ u32 vote(u32 group, bool pred) { return __ballot_sync(group, pred) & group; }
__device__ __forceinline__ bool vote_any(u32 group, bool pred) { return vote(group, pred) != 0; }
__device__ __forceinline__ bool vote_all(u32 group, bool pred) { return vote(group, pred) == group; }

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
/* A completion record's first 16 bytes (state | ticket << 32, result) in one PCIe read: the
 * daemon writes the result before its release store of DONE, and a 16-byte aligned read is
 * served from one snapshot of the host cache line, so a DONE seen here comes with its result
 * (one round trip per poll instead of two for the last one). */
__device__ __forceinline__ void ld_acquire_sys_comp(const void *p, u64 &head, u64 &result) {
    asm volatile("ld.acquire.sys.v2.u64 {%0, %1}, [%2];" : "=l"(head), "=l"(result) : "l"(p) : "memory");
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
__device__ __forceinline__ void st_release_sys_u32(void *p, u32 v) {
    asm volatile("st.release.sys.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
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
__device__ __forceinline__ u32 ld_relaxed_gpu_u32(const void *p) {
    u32 v;
    asm volatile("ld.relaxed.gpu.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}
__device__ __forceinline__ u32 atom_cas_acquire_gpu(u32 *p, u32 expect, u32 v) {
    u32 r;
    asm volatile("atom.acquire.gpu.cas.b32 %0, [%1], %2, %3;" : "=r"(r) : "l"(p), "r"(expect), "r"(v) : "memory");
    return r;
}
__device__ __forceinline__ void st_relaxed_gpu_u64(u64 *p, u64 v) {
    asm volatile("st.relaxed.gpu.u64 [%0], %1;" ::"l"(p), "l"(v) : "memory");
}
__device__ __forceinline__ void st_relaxed_gpu_u32(u32 *p, u32 v) {
    asm volatile("st.relaxed.gpu.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
/* With a relaxed store after it, a release at GPU scope (one fence for several stores). */
__device__ __forceinline__ void fence_acq_rel_gpu() { asm volatile("fence.acq_rel.gpu;" ::: "memory"); }
__device__ __forceinline__ u64 ld_acquire_gpu_u64(const void *p) {
    u64 v;
    asm volatile("ld.acquire.gpu.u64 %0, [%1];" : "=l"(v) : "l"(p) : "memory");
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

/* First pause between two polls of a request's completion record (a PCIe read each), in ns;
 * it doubles up to 8 µs. A diagnostic knob (-DWFS_DONE_POLL_NS=N via WARPFS_NVRTC_OPTIONS). */
#ifndef WFS_DONE_POLL_NS
#define WFS_DONE_POLL_NS 64u
#endif

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

/* Leader only: takes a free request group (one acquire CAS on a device-memory word; the
 * previous owner released it), bounded by `deadline`. The search starts at a group hashed from
 * the warp's place on the GPU (SM, warp slot; unique among resident warps), so warps mostly
 * find a free group at the first try, with no shared counter to contend on. */
__device__ __noinline__ u32 acquire_group(const wfs_ctx_t *ctx, u64 deadline) {
    const u32 n = ctx->warp_slots;
    u32 *busy = busy_words(ctx);
    u32 sm, warp;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    asm volatile("mov.u32 %0, %%warpid;" : "=r"(warp));
    u32 start = (u32)(((u64)((sm * 64u + warp) * 2654435761u) * n) >> 32);
    u32 ns = 64;
    for (;;) {
        for (u32 i = 0; i < n && i < 64; ++i) {
            u32 g = start + i;
            if (g >= n) g -= n;
            if (atom_cas_acquire_gpu(&busy[g], 0u, 1u) == 0u) return g;
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
        if (from_host) {
            /* Mapped host memory: every load is a PCIe round trip, so each lane issues eight
             * before it stores (a 4 KiB page by a full warp: one round trip, not two). */
            for (; i + 7 * cnt < words; i += 8 * cnt) {
                uint4 v[8];
#pragma unroll
                for (u32 k = 0; k < 8; ++k) v[k] = ld_cv_v4(s + i + k * cnt);
#pragma unroll
                for (u32 k = 0; k < 8; ++k) d[i + k * cnt] = v[k];
            }
        }
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

/* The largest `v` of the lanes of `group`. */
__device__ __forceinline__ u64 warp_max_u64(u32 group, u64 v) {
#if __CUDA_ARCH__ >= 800
    const u32 hi = __reduce_max_sync(group, (u32)(v >> 32));
    const u32 lo = __reduce_max_sync(group, (u32)(v >> 32) == hi ? (u32)v : 0u);
    return ((u64)hi << 32) | lo;
#else
    u64 best = v;
    for (u32 m = group; m; m &= m - 1) {
        const u64 o = __shfl_sync(group, v, __ffs(m) - 1);
        if (o > best) best = o;
    }
    return best;
#endif
}

/* Publishes the device's highest claimed end (raised to `end` here) as the ring's advisory
 * tail: one relaxed store of what the atomicMax saw, no fence, no retry. The daemon finds
 * requests by the slots' sequence words (Ring::try_pop, Ring::len probes the published slots
 * from the head); the tail only bounds how far it takes a slot with a garbage stamp, so a stale
 * or late store costs nothing but that. (A fenced store re-checked until the maximum held still
 * made every request of a busy GPU wait for PCIe round trips on one host cache line.) io()
 * publishes the same way for a warp: the largest maximum its lanes' atomicMax returned. */
__device__ __forceinline__ void publish_tail(unsigned long long *tail_max, WfsRingHeader *hdr, u64 end) {
    const u64 seen = atomicMax(tail_max, (unsigned long long)end);
    st_relaxed_sys_u64(&hdr->tail, seen > end ? seen : end);
}

/* Waits until the daemon handed ring slot `slot` back for position `pos` (its previous lap
 * was taken): 0, or -ESHUTDOWN / -ETIMEDOUT when the runtime closes or `deadline` passes. */
__device__ __forceinline__ long long wait_slot(const wfs_ctx_t *ctx, WfsSlot *slot, u64 pos, u64 deadline) {
    u32 ns = 32;
    u32 spins = 0;
    while (ld_acquire_sys_u64(&slot->seq) != pos) {
        if ((++spins & 7) == 0 && closing(ctx)) return -WFS_ESHUTDOWN;
        if (now_ns() > deadline) return -WFS_ETIMEDOUT;
        backoff(ns);
    }
    return 0;
}

/* The demand ring's hand-back mirror word of position `pos` (device memory; 0 if none). */
__device__ __forceinline__ u64 *handed_word(const wfs_ctx_t *ctx, u64 pos) {
    return ctx->handed == 0 ? 0 : reinterpret_cast<u64 *>(ctx->handed) + (pos & ctx->ring_mask);
}

/* wait_slot for the demand ring, asking the hand-back mirror first: the lane that saw the
 * previous lap's request DONE stored `pos` there (the daemon hands a slot back before it
 * completes the request it held), so the slot is free without a PCIe read of its sequence
 * word. Any other value (first use after a timeout, a shutdown, an async request) falls back to
 * that read. The acquire pairs with the release pattern (fence, then note_handed's store) that
 * follows that lane's acquire of DONE, which follows the daemon's hand-back: this lane's writes
 * to the slot come after the daemon's reads of the previous request. */
__device__ __forceinline__ long long claim_slot(const wfs_ctx_t *ctx, WfsSlot *slot, u64 pos, u64 deadline) {
#ifndef WFS_EXP_NO_HANDED
    const u64 *h = handed_word(ctx, pos);
    if (h != 0 && ld_acquire_gpu_u64(h) == pos) return 0;
#endif
    return wait_slot(ctx, slot, pos, deadline);
}

/* After this lane acquired DONE for its request at `pos`, and after a release fence: the
 * slot's next lap may be written (see claim_slot). One relaxed store to device memory (io()
 * shares one fence between it and the group's release). */
__device__ __forceinline__ void note_handed(const wfs_ctx_t *ctx, u64 pos) {
#ifndef WFS_EXP_NO_HANDED
    u64 *h = handed_word(ctx, pos);
    if (h != 0) st_relaxed_gpu_u64(h, pos + ctx->ring_mask + 1);
#endif
}

/* Posts a request at ring position `pos` of a slot handed back (wait_slot): arms completion
 * record `rec`, fills the request and publishes it. One system-scope release per request: the
 * arming (state and ticket in one 64-bit store, state in the low word, so a stale completer of
 * the record's previous request that claims the new PENDING sees the new ticket and hands the
 * record back) and the request's fields are ordered before the sequence word the daemon
 * acquires. */
__device__ __forceinline__ void post_request(WfsSlot *slot, WfsCompletion *comp, u64 pos, u32 op, u32 fh,
                                             u32 rec, u64 offset, u64 len, u64 buf) {
    st_relaxed_sys_u64(&comp->result, 0);
    st_relaxed_sys_u64(&comp->state, ((u64)(u32)pos << 32) | WFS_COMP_PENDING);
    WfsRequest *q = &slot->req;
    q->op = op;
    q->flags = 0;
    q->handle = fh;
    q->completion = rec;
    q->ticket = (u32)pos;
    q->reserved = 0;
    q->offset = offset;
    q->len = len;
    q->buf = buf;
    st_release_sys_u64(&slot->seq, pos + 1);
}

#ifdef WFS_TRACE
/* Diagnostics (-DWFS_TRACE): io() and the GPU cache's miss path stamp %globaltimer at their
 * steps and print the steps of one call in WFS_TRACE_EVERY + 1 (a power of two). Not for
 * production builds: printf is slow. */
#ifndef WFS_TRACE_EVERY
#define WFS_TRACE_EVERY 63u
#endif
__device__ unsigned int wfs_trace_calls;
__device__ unsigned int wfs_trace_misses;
__device__ unsigned int wfs_trace_claims;
#define WFS_TRACE_MARK(i) (tr[i] = now_ns())
#else
#define WFS_TRACE_MARK(i) ((void)0)
#endif

/* Where `n` bytes at file offset `off` lie in host tier page `aux - 1` (a read's answer by
 * reference), or 0 when the tier is not mapped or the page and range are not inside it. */
__device__ __forceinline__ const unsigned char *tier_page(const wfs_ctx_t *ctx, u64 aux, u64 off, u64 n) {
    const u32 shift = ctx->tier_page_shift;
    if (ctx->tier == 0 || shift < 9 || shift > 30 || aux == 0) return 0;
    const u64 ps = 1ull << shift;
    const u64 page = aux - 1;
    const u64 in_page = off & (ps - 1);
    if (page >= (ctx->tier_bytes >> shift) || in_page + n > ps) return 0;
    return reinterpret_cast<const unsigned char *>(ctx->tier + (page << shift) + in_page);
}

/*
 * One call of the device API by the lanes of `group` (the calling lane among them). All
 * group-wide decisions are taken from ballots or the leader's broadcast, so every lane runs the
 * same sequence of warp-synchronous operations.
 *
 * `group` always comes from the caller, never from __activemask() here: io() is one function
 * reached from many call sites, and lanes arriving from different call sites (a write and an
 * fsync, a page load and a bypass read) may run it converged; a mask taken here would then
 * name lanes that follow other paths, so their ballots, shuffles and ring positions would not
 * line up (seen on the H100: claimed ring positions never published, shuffled garbage
 * addresses). The public wrappers, inlined at the user's call site, take the mask there (calling_lanes).
 */
__device__ __noinline__ long long io(const wfs_ctx_t *ctx, u32 group, u32 op, u32 fh, u64 offset, u64 len,
                                     void *ptr) {
    const u32 lane = lane_id();
    const u32 leader = __ffs(group) - 1;
    const u32 rank = __popc(group & lanemask_lt());
    const u32 cnt = __popc(group);
    if (ctx == 0 || ctx->magic != WFS_GPU_CTX_MAGIC || ctx->version != WFS_ABI_VERSION ||
        ctx->warp_slots == 0 || ctx->lane_bytes == 0)
        return -WFS_EINVAL; /* same answer on every lane: ctx is one pointer per launch */
    const bool rw = op == WFS_OP_READ || op == WFS_OP_WRITE;
    const u64 deadline = now_ns() + ctx->timeout_ns;
#ifdef WFS_TRACE
    u64 tr[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    u32 polls = 0;
    tr[0] = deadline - ctx->timeout_ns;
#endif

    u32 g = 0;
    /* No look at the closing word first (a PCIe read on every call): acquire_group reads it
     * only when no group is free, and every wait below reads it while it waits. */
    if (lane == leader) g = acquire_group(ctx, deadline);
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
    const bool coop = vote_all(group, ptr == 0 || is_global(ptr));
    /* The ring position of this lane's last answered request (its slot handed back), noted in
     * the hand-back mirror when the call ends; ~0: none. */
    u64 handed_pos = ~0ull;

    for (;;) {
        const bool want = !done;
        const u32 post = vote(group, want);
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

        /* Each posting lane claims its own position (a device-memory atomic; the compiler may
         * combine a warp's into one): a position never depends on another lane's broadcast, so
         * the lane that claimed it always arms and publishes it — a position claimed for a lane
         * that is not there would stall the ring for good. */
        long long r = 0;
        bool posted = false;
        u64 pos = 0;
        u64 tail_seen = 0; /* this lane's view of the device maximum after its claim */
        if (want) {
            pos = atomicAdd(&state(ctx)->claim, 1ull);
            /* The maximum is needed only for the tail, after the post: its atomic overlaps the
             * slot check. */
            const u64 seen = atomicMax(&state(ctx)->tail_max, pos + 1);
            WfsSlot *slot = slots + (pos & ctx->ring_mask);
            WFS_TRACE_MARK(1);
            r = claim_slot(ctx, slot, pos, deadline);
            WFS_TRACE_MARK(2);
            if (r == 0) {
                post_request(slot, comp, pos, op, fh, rec, offset + (u64)total, chunk, buf);
                posted = true;
            }
            tail_seen = seen > pos + 1 ? seen : pos + 1;
            WFS_TRACE_MARK(3);
        }
        __syncwarp(group);

        /* Advisory tail (see publish_tail): the largest maximum the lanes' atomicMax returned,
         * so no load of the device word after the warp sync. */
        const u64 tail = warp_max_u64(group, tail_seen);
        if (lane == leader) st_relaxed_sys_u64(&reinterpret_cast<WfsRingHeader *>(ctx->ring)->tail, tail);
        WFS_TRACE_MARK(4);

        /* A read the daemon answered from the host tier by reference (aux = tier page + 1,
         * the tier mapped into this device): the lanes copy from that page, not the lane
         * buffer, and the record is marked FREE (with a release) only after the copy — the
         * daemon unpins the page once it sees FREE or a new request on the record. */
        u64 aux = 0;
        if (posted) {
            u32 ns = WFS_DONE_POLL_NS;
            u32 spins = 0;
            for (;;) {
#ifdef WFS_TRACE
                ++polls;
#endif
                u64 head, res;
                ld_acquire_sys_comp(comp, head, res);
                if ((u32)head == WFS_COMP_DONE) {
                    r = (long long)res;
                    handed_pos = pos; /* DONE acquired: the daemon handed the slot back */
                    /* aux only where the tier is mapped (another PCIe round trip). */
                    if (ctx->tier != 0) aux = ld_relaxed_sys_u64(&comp->aux);
                    if (aux == 0) st_relaxed_sys_u32(&comp->state, WFS_COMP_FREE);
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

        WFS_TRACE_MARK(5);
        /* A request left unanswered may still be written later: retire the group. */
        if (vote_any(group, r == -WFS_ETIMEDOUT || r == -WFS_ESHUTDOWN)) retired = true;

        if (op == WFS_OP_READ) {
            const unsigned char *src_lane = host_buf;
            if (aux != 0 && r > 0) {
                src_lane = tier_page(ctx, aux, offset + (u64)total, (u64)r);
                if (src_lane == 0) r = -WFS_EIO; /* a reference outside the mapped tier */
            }
            /* Each lane's acquire of DONE precedes every lane's loads of its buffer. */
            __syncwarp(group);
            if (coop) {
                const u32 got = vote(group, want && r > 0);
                for (u32 m = got; m; m &= m - 1) {
                    const u32 k = __ffs(m) - 1;
                    const u64 n = __shfl_sync(group, (u64)r, k);
                    const u64 dst = __shfl_sync(group, reinterpret_cast<u64>(user + total), k);
                    const u64 src = __shfl_sync(group, reinterpret_cast<u64>(src_lane), k);
                    coop_copy(reinterpret_cast<unsigned char *>(dst),
                              reinterpret_cast<const unsigned char *>(src), n, rank, cnt, true);
                }
            } else if (want && r > 0) {
                coop_copy(user + total, src_lane, (u64)r, 0, 1, true);
            }
        }
        if (ctx->tier != 0 && vote_any(group, aux != 0)) {
            /* Every lane's loads of the referenced pages precede the owners' FREE stores (the
             * warp sync orders them; a release is cumulative). */
            __syncwarp(group);
            if (aux != 0) st_release_sys_u32(&comp->state, WFS_COMP_FREE);
        }
        WFS_TRACE_MARK(6);
#ifdef WFS_TRACE
        if (posted && lane == leader && (atomicAdd(&wfs_trace_calls, 1u) & WFS_TRACE_EVERY) == 0)
            printf("wfs_trace op %u lanes %u: group %llu slot %llu post %llu tail %llu done %llu (%u polls) copy %llu total %llu ns\n",
                   op, cnt, tr[1] - tr[0], tr[2] - tr[1], tr[3] - tr[2], tr[4] - tr[3], tr[5] - tr[4], polls,
                   tr[6] - tr[5], tr[6] - tr[0]);
#endif

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
    /* One release fence for two stores: each lane's hand-back note (after its acquire of DONE)
     * and the leader's release of the group (after every lane's accesses of the group's records
     * and buffers, which the warp sync orders before the fence; a fence is cumulative). */
    fence_acq_rel_gpu();
    if (handed_pos != ~0ull) note_handed(ctx, handed_pos);
    if (lane == leader) st_relaxed_gpu_u32(&busy_words(ctx)[g], retired ? 2u : 0u);
    if (err < 0 && total == 0) return err;
    return total;
}

/* ======================================================================================
 * GPU page cache (device memory). See gpu_io.rs "GPU page cache" for the argument.
 *
 * Frame state word (32 bits, device memory): pin count in the low 20 bits, then flags.
 *   EMPTY (no flag) -> BUSY (claimed by one thread: CLOCK victim) -> LOADING (in the table,
 *   pinned by its loader, which waits only on the daemon) -> VALID (readers pin it) or ERROR
 *   (load failed; entry removed; the error goes to the waiters) -> BUSY (evicted by CLOCK
 *   once unpinned and its REF bit is clear) -> ...
 * Page table: groups of 16 buckets (a key in any bucket of its hash's group) of 64-bit words
 *   EMPTY 0 | TOMB ~0 | (frame + 1) << 32 | tag. Lookups are lock-free (pin, then check the
 *   frame's key); an insert takes the key's insert lock (held for a few device-memory
 *   operations, never across a wait) so one key is never inserted twice.
 * ====================================================================================== */

#define WFS_PIN_MASK 0x000FFFFFu
#define WFS_PG_REF 0x00100000u
#define WFS_PG_VALID 0x00200000u
#define WFS_PG_LOADING 0x00400000u
#define WFS_PG_BUSY 0x00800000u
#define WFS_PG_ERROR 0x01000000u
#define WFS_PG_DIRTY 0x02000000u /* changed by wfs_array::set, not yet written back */
#define WFS_PG_WB 0x04000000u    /* a write-back of the page is in flight (one at a time) */
#define WFS_PG_WRITING 0x08000000u /* a wfs_write of the page is in flight: no write-back starts */
#define WFS_PG_FLAGS 0xFFF00000u
#define WFS_NO_FRAME 0xFFFFFFFFu
#define WFS_TABLE_GROUP 16u /* buckets per page-table group (WfsGpuCache.probe) */
#define WFS_TABLE_EMPTY 0ull
#define WFS_TABLE_TOMB 0xFFFFFFFFFFFFFFFFull

/* acquire_page outcomes */
#define WFS_ACQ_HIT 0u     /* pinned, VALID */
#define WFS_ACQ_WAIT 1u    /* pinned, LOADING by another thread: wait_loaded */
#define WFS_ACQ_LOAD 2u    /* pinned, LOADING by this thread: load it, then finish_load */
#define WFS_ACQ_BYPASS 3u  /* no frame within the bounded search: read around the cache */
#define WFS_ACQ_ABSENT 4u  /* not cached (lookup without insert) */
#define WFS_ACQ_TIMEOUT 5u /* the deadline passed */
#define WFS_ACQ_RETRY 6u   /* transient (lock busy, frame being evicted): try again */
#define WFS_ACQ_SHUTDOWN 7u /* the runtime is closing the channel */

__device__ __forceinline__ u32 atom_add_acquire_gpu(u32 *p, u32 v) {
    u32 r;
    asm volatile("atom.acquire.gpu.add.u32 %0, [%1], %2;" : "=r"(r) : "l"(p), "r"(v) : "memory");
    return r;
}
__device__ __forceinline__ void red_add_release_gpu(u32 *p, u32 v) {
    asm volatile("red.release.gpu.add.u32 [%0], %1;" ::"l"(p), "r"(v) : "memory");
}
__device__ __forceinline__ u32 ld_acquire_gpu_u32(const void *p) {
    u32 v;
    asm volatile("ld.acquire.gpu.u32 %0, [%1];" : "=r"(v) : "l"(p) : "memory");
    return v;
}

__device__ __forceinline__ u64 mix64(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
__device__ __forceinline__ u64 key_hash(u32 fh, u64 page) {
    return mix64(page * 0x9E3779B97F4A7C15ull + (((u64)fh << 1) | 1ull) * 0xD6E8FEB86659FD93ull);
}

__device__ __forceinline__ const WfsGpuCache *cache_of(const wfs_ctx_t *ctx) {
    if (ctx == 0 || ctx->cache == 0) return 0;
    const WfsGpuCache *c = reinterpret_cast<const WfsGpuCache *>(ctx->cache);
    return (c->magic == WFS_GPU_CACHE_MAGIC && c->frames != 0 && c->probe == WFS_TABLE_GROUP) ? c : 0;
}
__device__ __forceinline__ u32 *frame_state(const WfsGpuCache *c, u32 f) {
    return reinterpret_cast<u32 *>(c->state) + f;
}
__device__ __forceinline__ volatile WfsGpuPageMeta *frame_meta(const WfsGpuCache *c, u32 f) {
    return reinterpret_cast<volatile WfsGpuPageMeta *>(c->meta) + f;
}
__device__ __forceinline__ unsigned char *frame_data(const WfsGpuCache *c, u32 f) {
    return reinterpret_cast<unsigned char *>(c->data) + ((u64)f << c->page_shift);
}
__device__ __forceinline__ u64 *table_of(const WfsGpuCache *c) {
    return reinterpret_cast<u64 *>(c->table);
}
/* The statistics stripe of the calling warp: one per (SM, warp slot mod 8), so that the warps
 * adding to one 64-byte line are few (the host sums the stripes). */
__device__ __forceinline__ WfsGpuCacheStats *stats_stripe(const WfsGpuCache *c) {
    u32 sm, warp;
    asm volatile("mov.u32 %0, %%smid;" : "=r"(sm));
    asm volatile("mov.u32 %0, %%warpid;" : "=r"(warp));
    return reinterpret_cast<WfsGpuCacheStats *>(c->stats) + (((sm << 3) | (warp & 7)) & (WFS_GPU_CACHE_STRIPES - 1));
}
/* Adds `v` without waiting for the add (a reduction; the stripes are global device memory). */
__device__ __forceinline__ void stat_add(unsigned long long *field, u64 v) {
    if (v) asm volatile("red.relaxed.gpu.global.add.u64 [%0], %1;" ::"l"(field), "l"(v) : "memory");
}
/* One reduction per warp: the lowest lane of `group` adds the group's sum of `v` (≤ 32 each);
 * nothing at all when every lane's `v` is 0. */
__device__ __forceinline__ void stat_add_warp(u32 group, unsigned long long *field, u32 v) {
    if (!vote_any(group, v != 0)) return;
#if __CUDA_ARCH__ >= 800
    const u32 sum = __reduce_add_sync(group, v);
#else
    u32 sum = 0;
    for (u32 m = group; m; m &= m - 1) sum += __shfl_sync(group, v, __ffs(m) - 1);
#endif
    if (lane_id() == (u32)(__ffs(group) - 1)) stat_add(field, sum);
}

/* Sets a frame's flags: new = ((old & ~clear) | set) + add (pin count), atomically; returns old. */
__device__ __forceinline__ u32 state_update(u32 *st, u32 clear, u32 set, u32 add) {
    u32 old = ld_relaxed_gpu_u32(st);
    for (;;) {
        const u32 nw = ((old & ~clear) | set) + add;
        const u32 prev = atomicCAS(st, old, nw);
        if (prev == old) return old;
        old = prev;
    }
}

__device__ __forceinline__ void unpin(const WfsGpuCache *c, u32 f) {
    red_add_release_gpu(frame_state(c, f), 0xFFFFFFFFu);
}

/* Gives a claimed (BUSY, unlisted) frame back as EMPTY. */
__device__ __noinline__ void free_frame(const WfsGpuCache *c, u32 f) {
    volatile WfsGpuPageMeta *m = frame_meta(c, f);
    m->fh = 0xFFFFFFFFu;
    m->page = ~0ull;
    m->word = 0;
    __threadfence();
    state_update(frame_state(c, f), WFS_PG_FLAGS, 0, 0);
}

/* Takes a dirty frame seen in state `st` for write-back: clears DIRTY, sets WB and pins it, in
 * one CAS; false if the state changed meanwhile or a write-back of it is in flight (two in
 * flight could reach the file in either order, the older last). The taker writes it back
 * (write_back_frames), which clears WB and unpins it. A set() after the CAS marks it dirty
 * again, so no change is lost. */
__device__ __forceinline__ bool take_dirty(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 f, u32 st) {
    if ((st & (WFS_PG_DIRTY | WFS_PG_VALID | WFS_PG_BUSY | WFS_PG_LOADING | WFS_PG_WB | WFS_PG_WRITING)) !=
        (WFS_PG_DIRTY | WFS_PG_VALID))
        return false;
    /* Acquire: the setters' stores (released by their DIRTY mark and unpin) are seen by the
     * loads that stage the page, not lines this SM's L1 kept from before. */
    if (atom_cas_acquire_gpu(frame_state(c, f), st, ((st & ~WFS_PG_DIRTY) | WFS_PG_WB) + 1u) != st) return false;
    atomicSub(&state(ctx)->dirty, 1u);
    return true;
}

/* Frames the CLOCK hand hands a claimer at once. */
#define WFS_CLOCK_BATCH 16u

/* Claims a frame for a new page: BUSY, out of the table. First the frames never used (one
 * counter, so a cache with room never evicts), then CLOCK: the claimer takes the next
 * WFS_CLOCK_BATCH frames from the hand (one atomic), clears the reference bit of each
 * referenced frame among them (second chance) and claims the first unpinned, unreferenced one;
 * the hand moves on only by frames examined. Bounded: at most two sweeps of the frames or the
 * deadline; WFS_NO_FRAME if every frame stayed pinned or loading. */
__device__ __noinline__ u32 claim_victim(const wfs_ctx_t *ctx, const WfsGpuCache *c, u64 deadline,
                                         bool evict, u32 &clean_out) {
    const u32 frames = c->frames;
    unsigned long long *fresh = reinterpret_cast<unsigned long long *>(&state(ctx)->fresh);
    if (ld_relaxed_gpu_u64(fresh) < frames) {
        const u64 k = atomicAdd(fresh, 1ull);
        /* No fence. The frame may have been used before (the CLOCK hand also takes state-0
         * frames, and free_frame leaves them so), so a stale reader may still reach it from an
         * old table word; it can then see this claimer's new metadata before the BUSY state,
         * but any state without VALID or LOADING sends it to retry. Readers that see LOADING
         * acquire the metadata through the insert's fence. */
        if (k < frames && atomicCAS(frame_state(c, (u32)k), 0u, WFS_PG_BUSY) == 0u) return (u32)k;
    }
    if (!evict) return WFS_NO_FRAME;
    unsigned long long *hand = reinterpret_cast<unsigned long long *>(&state(ctx)->clock);
    const u64 limit = 2ull * frames + 64;
#ifdef WFS_TRACE
    const u64 t0 = now_ns();
#endif
    for (u64 scanned = 0; scanned < limit; scanned += WFS_CLOCK_BATCH) {
#ifdef WFS_TRACE
        if (scanned != 0 && (atomicAdd(&wfs_trace_claims, 1u) & WFS_TRACE_EVERY) == 0)
            printf("wfs_trace_claim batch %llu at %llu ns\n", scanned / WFS_CLOCK_BATCH, now_ns() - t0);
#endif
        if (scanned != 0 && now_ns() > deadline) break;
        /* One atomic on the shared hand per batch; the batch's state words load together. */
        const u32 f0 = (u32)(atomicAdd(hand, (unsigned long long)WFS_CLOCK_BATCH) % frames);
        u32 seen[WFS_CLOCK_BATCH];
#pragma unroll
        for (u32 k = 0; k < WFS_CLOCK_BATCH; ++k) seen[k] = ld_relaxed_gpu_u32(frame_state(c, (f0 + k) % frames));
        u32 victim = WFS_NO_FRAME, was = 0;
#pragma unroll
        for (u32 k = 0; k < WFS_CLOCK_BATCH; ++k) {
            const u32 f = (f0 + k) % frames;
            const u32 st = seen[k];
            if (st & (WFS_PIN_MASK | WFS_PG_BUSY | WFS_PG_LOADING)) continue;
            if (st & WFS_PG_DIRTY) {
                /* Never a victim while dirty: the claimer takes one such frame to write back
                 * (after its insert lock is dropped), so the hand finds it clean next time. */
                if (clean_out == WFS_NO_FRAME && take_dirty(ctx, c, f, st)) clean_out = f;
                continue;
            }
            if (st & WFS_PG_REF) {
                atomicAnd(frame_state(c, f), ~WFS_PG_REF); /* second chance */
                continue;
            }
            if (victim == WFS_NO_FRAME &&
                atomicCAS(frame_state(c, f), st, (st & ~(WFS_PG_VALID | WFS_PG_ERROR)) | WFS_PG_BUSY) == st) {
                victim = f;
                was = st;
            }
        }
        if (victim == WFS_NO_FRAME) continue;
        __threadfence();
        if (was & WFS_PG_VALID) {
            volatile WfsGpuPageMeta *m = frame_meta(c, victim);
            const u64 w = m->word;
            const u32 b = m->bucket;
            atomicCAS(reinterpret_cast<unsigned long long *>(table_of(c) + b),
                      (unsigned long long)w, (unsigned long long)WFS_TABLE_TOMB);
            __threadfence();
            stat_add(&stats_stripe(c)->evictions, 1);
        }
        return victim;
    }
    return WFS_NO_FRAME;
}

/* The page table is split into groups of WFS_TABLE_GROUP buckets (128 bytes); a key lives in
 * the group its hash names, in any bucket of it. A lookup loads the whole group at once (one
 * round of loads, whatever tombstones evictions left), where a probe sequence would load one
 * bucket after another. */
__device__ __forceinline__ void load_group(const u64 *table, u64 h, u64 bmask, u64 (&w)[WFS_TABLE_GROUP],
                                           u64 &first) {
    first = (h & bmask) & ~(u64)(WFS_TABLE_GROUP - 1);
    const u64 *g = table + first;
#pragma unroll
    for (u32 k = 0; k < WFS_TABLE_GROUP; k += 2)
        asm volatile("ld.relaxed.gpu.v2.u64 {%0, %1}, [%2];" : "=l"(w[k]), "=l"(w[k + 1]) : "l"(g + k) : "memory");
}

/* w[i] without indexing the array by a run-time value (which would put it in local memory). */
__device__ __forceinline__ u64 group_word(const u64 (&w)[WFS_TABLE_GROUP], u32 i) {
    u64 v = 0;
#pragma unroll
    for (u32 k = 0; k < WFS_TABLE_GROUP; ++k)
        if (k == i) v = w[k];
    return v;
}

/* One attempt at a key's insert lock: never spins. A lane must never spin on a lock or a frame
 * state that a lane of its own warp is changing: on a convergence barrier the holder may not
 * be scheduled until the spinner gives up (SIMT deadlock, seen as a stall until the timeout).
 * So every cache step below is one bounded attempt, and the warp retries together
 * (acquire_round), after every lane finished its attempt and dropped what it held. */
__device__ __forceinline__ bool lock_try(u32 *l) {
    if (atomicCAS(l, 0u, 1u) != 0u) return false;
    __threadfence();
    return true;
}
__device__ __forceinline__ void lock_drop(u32 *l) {
    __threadfence();
    atomicExch(l, 0u);
}

/* Miss, one attempt: under the key's insert lock (taken with one CAS, held for a bounded
 * sequence of device-memory operations, never across a wait), re-checks the table, claims a
 * victim frame and lists it as LOADING, pinned by the caller. Returns WFS_ACQ_LOAD (frame in
 * `f_out`), WFS_ACQ_BYPASS (no frame or no bucket), or WFS_ACQ_RETRY (lock busy, or someone
 * listed the key meanwhile: look again). Never waits. */
__device__ __noinline__ u32 insert_page(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 fh, u64 page, u64 h,
                                        u64 deadline, bool evict, u32 &f_out, u32 &clean_out) {
    const u32 tag = (u32)(h >> 32);
    u64 *table = table_of(c);
    u32 *lk = reinterpret_cast<u32 *>(c->locks) + ((h ^ (h >> 32)) & c->lock_mask);
    if (!lock_try(lk)) return WFS_ACQ_RETRY;
    u64 w[WFS_TABLE_GROUP];
    u64 first;
    load_group(table, h, c->bucket_mask, w, first);
    bool present = false;
    u32 free_mask = 0;
#pragma unroll
    for (u32 i = 0; i < WFS_TABLE_GROUP; ++i) {
        if (w[i] == WFS_TABLE_EMPTY || w[i] == WFS_TABLE_TOMB) {
            free_mask |= 1u << i;
            continue;
        }
        if ((u32)w[i] != tag) continue;
        volatile WfsGpuPageMeta *m = frame_meta(c, (u32)(w[i] >> 32) - 1);
        if (m->fh == fh && m->page == page) present = true;
    }
    if (present) {
        lock_drop(lk);
        return WFS_ACQ_RETRY;
    }
    if (free_mask == 0) {
        lock_drop(lk);
        return WFS_ACQ_BYPASS;
    }
    const u32 f = claim_victim(ctx, c, deadline, evict, clean_out);
    if (f == WFS_NO_FRAME) {
        lock_drop(lk);
        return WFS_ACQ_BYPASS;
    }
    u32 result = WFS_ACQ_BYPASS;
    volatile WfsGpuPageMeta *m = frame_meta(c, f);
    m->fh = fh;
    m->page = page;
    m->len = 0;
    m->err = 0;
    const u64 word = ((u64)(f + 1) << 32) | tag;
    m->word = word;
    /* The first free bucket's index goes out with the rest of the metadata, under one fence
     * (a fence costs tens of µs when the GPU is busy with page loads); a later candidate
     * rewrites it and fences again before its CAS. A reader may then find the table word
     * before it sees LOADING: the state it sees (BUSY) sends it to retry. */
    const u32 first_free = __ffs(free_mask) - 1;
    m->bucket = (u32)(first + first_free);
    __threadfence();
    /* BUSY -> LOADING, pinned once by the loader (stale readers' transient pins kept). */
    state_update(frame_state(c, f), WFS_PG_FLAGS, WFS_PG_LOADING, 1u);
    /* A free bucket of the group (another key's insert may take one meanwhile: the CAS says). */
    for (u32 fm = free_mask; fm; fm &= fm - 1) {
        const u32 i = __ffs(fm) - 1;
        const u64 b = first + i;
        if (i != first_free) {
            m->bucket = (u32)b;
            __threadfence();
        }
        const u64 was = group_word(w, i);
        if (atomicCAS(reinterpret_cast<unsigned long long *>(table + b), (unsigned long long)was,
                      (unsigned long long)word) == was) {
            result = WFS_ACQ_LOAD;
            break;
        }
    }
    if (result != WFS_ACQ_LOAD) {
        /* Another key took every free bucket meanwhile: unpin, back to BUSY, then free. */
        state_update(frame_state(c, f), WFS_PG_FLAGS, WFS_PG_BUSY, 0xFFFFFFFFu);
    }
    lock_drop(lk);
    if (result == WFS_ACQ_LOAD) {
        f_out = f;
    } else {
        free_frame(c, f);
    }
    return result;
}

/* How a miss may place its page (acquire_page's `insert`): not at all (a lookup), in any frame
 * (evicting by CLOCK), or only in a frame never used (a view-backed read: a full cache reads
 * in place instead of evicting). */
#define WFS_INSERT_NONE 0u
#define WFS_INSERT_ANY 1u
#define WFS_INSERT_FRESH 2u

/* One attempt to find (fh, page) and pin its frame; never waits. With `insert` other than
 * WFS_INSERT_NONE, a miss lists a frame LOADING for the caller to load (WFS_ACQ_LOAD); with
 * WFS_INSERT_FRESH a miss that finds no never-used frame gets WFS_ACQ_BYPASS. WFS_ACQ_RETRY: a frame of this
 * key is being evicted or failed, or its insert lock is busy — the caller retries (with its
 * warp, after a backoff; see acquire_round), bounded by its deadline. A claim that met a dirty
 * frame may hand one back in `clean_out` (pinned) for the caller to write back. */
__device__ u32 acquire_page(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 fh, u64 page,
                            u32 insert, u64 deadline, u32 &f_out, u32 &clean_out) {
    const u64 h = key_hash(fh, page);
    const u32 tag = (u32)(h >> 32);
    u64 w[WFS_TABLE_GROUP];
    u64 first;
    load_group(table_of(c), h, c->bucket_mask, w, first);
    u32 match = 0;
#pragma unroll
    for (u32 i = 0; i < WFS_TABLE_GROUP; ++i)
        if (w[i] != WFS_TABLE_EMPTY && w[i] != WFS_TABLE_TOMB && (u32)w[i] == tag) match |= 1u << i;
    for (; match; match &= match - 1) {
        const u32 f = (u32)(group_word(w, __ffs(match) - 1) >> 32) - 1;
        u32 *st = frame_state(c, f);
        const u32 old = atom_add_acquire_gpu(st, 1u);
        volatile WfsGpuPageMeta *m = frame_meta(c, f);
        if (m->fh != fh || m->page != page) {
            red_add_release_gpu(st, 0xFFFFFFFFu); /* another key's tag, or reassigned */
            continue;
        }
        if (old & WFS_PG_VALID) {
            if (!(old & WFS_PG_REF)) atomicOr(st, WFS_PG_REF);
            f_out = f;
            return WFS_ACQ_HIT;
        }
        if (old & WFS_PG_LOADING) {
            f_out = f;
            return WFS_ACQ_WAIT;
        }
        red_add_release_gpu(st, 0xFFFFFFFFu); /* BUSY (evicting) or ERROR: look again */
        return WFS_ACQ_RETRY;
    }
    if (insert == WFS_INSERT_NONE) return WFS_ACQ_ABSENT;
    /* A full cache that may not evict: no insert lock, no fence (the in-place read's cost is
     * then one table-group load). */
    if (insert == WFS_INSERT_FRESH && ld_relaxed_gpu_u64(&state(ctx)->fresh) >= c->frames) return WFS_ACQ_BYPASS;
    return insert_page(ctx, c, fh, page, h, deadline, insert == WFS_INSERT_ANY, f_out, clean_out);
}

/* acquire_page for one thread on its own (no insert): retries with backoff, bounded by the
 * deadline and the closing word. WFS_ACQ_TIMEOUT when either ends it. */
__device__ __noinline__ u32 acquire_page_lookup(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 fh, u64 page,
                                                u64 deadline, u32 &f_out) {
    u32 ns = 32;
    for (;;) {
        u32 no_clean = WFS_NO_FRAME; /* no insert: no claim, nothing to write back */
        const u32 r = acquire_page(ctx, c, fh, page, WFS_INSERT_NONE, deadline, f_out, no_clean);
        if (r != WFS_ACQ_RETRY) return r;
        if (now_ns() > deadline || closing(ctx)) return WFS_ACQ_TIMEOUT;
        __nanosleep(ns);
        ns = ns < 2048 ? ns * 2 : 4096;
    }
}

/* The loader publishes its load's outcome: bytes (short at end of file; the rest of the frame
 * zeroed) -> VALID, or a negative errno -> ERROR and out of the table. Keeps its pin. */
__device__ __noinline__ void finish_load(const WfsGpuCache *c, u32 f, long long r) {
    volatile WfsGpuPageMeta *m = frame_meta(c, f);
    u32 *st = frame_state(c, f);
    const u64 ps = 1ull << c->page_shift;
    if (r >= 0) {
        u64 z = (u64)r < ps ? (u64)r : ps;
        unsigned char *d = frame_data(c, f);
        for (; z < ps && (z & 15); ++z) d[z] = 0;
        for (; z + 16 <= ps; z += 16) *reinterpret_cast<uint4 *>(d + z) = make_uint4(0, 0, 0, 0);
        for (; z < ps; ++z) d[z] = 0;
        m->len = (u32)((u64)r < ps ? (u64)r : ps);
        __threadfence();
        state_update(st, WFS_PG_LOADING, WFS_PG_VALID | WFS_PG_REF, 0);
        stat_add(&stats_stripe(c)->bytes_loaded, (u64)r);
    } else {
        m->err = (int)r;
        __threadfence();
        state_update(st, WFS_PG_LOADING, WFS_PG_ERROR, 0);
        atomicCAS(reinterpret_cast<unsigned long long *>(table_of(c) + m->bucket),
                  (unsigned long long)m->word, (unsigned long long)WFS_TABLE_TOMB);
        __threadfence();
        stat_add(&stats_stripe(c)->load_errors, 1);
    }
}

/* A pinned frame another thread is loading: waits on its state word (the loader waits only on
 * the daemon). 0 once VALID, else the load's negative errno, -ETIMEDOUT or -ESHUTDOWN. */
__device__ __noinline__ long long wait_loaded(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 f, u64 deadline) {
    u32 ns = 64;
    u32 spins = 0;
    for (;;) {
        const u32 s = ld_acquire_gpu_u32(frame_state(c, f));
        if (s & WFS_PG_VALID) return 0;
        if (!(s & WFS_PG_LOADING)) {
            const int e = frame_meta(c, f)->err;
            return e < 0 ? (long long)e : -WFS_EIO;
        }
        if ((++spins & 7) == 0 && closing(ctx)) return -WFS_ESHUTDOWN;
        if (now_ns() > deadline) return -WFS_ETIMEDOUT;
        __nanosleep(ns);
        ns = ns < 4096 ? ns * 2 : 8192;
    }
}

/* Writes back the frames the calling lanes took with take_dirty (WFS_NO_FRAME: none), in one
 * round of requests (io WRITE from the frame: the group stages the pages into host memory
 * together; the daemon acknowledges once the OS has the bytes), then unpins them. A failed
 * write-back drops that page's changes and counts them (writeback_errors, wfs_errors); the
 * page stays cached. The whole group calls; true on the lanes whose write-back failed. */
__device__ __noinline__ bool write_back_frames(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 group, u32 f) {
    /* The takers' acquires (take_dirty) before every lane's loads of the pages it stages: a
     * vote or a shuffle orders no memory, and without this a lane could stage bytes older than
     * the set that dirtied the page (seen on the H100: 1 run in 5 lost an element). */
    __syncwarp(group);
    const bool mine = f != WFS_NO_FRAME;
    u32 fh = 0;
    u64 off = 0, n = 0;
    if (mine) {
        volatile WfsGpuPageMeta *m = frame_meta(c, f);
        fh = m->fh;
        off = m->page << c->page_shift;
        n = m->len;
    }
    const long long r = io(ctx, group, WFS_OP_WRITE, fh, off, n, n != 0 ? frame_data(c, f) : 0);
    const bool failed = mine && r != (long long)n;
    if (mine) {
        if (r == (long long)n) {
            stat_add(&stats_stripe(c)->writebacks, 1);
        } else {
            stat_add(&stats_stripe(c)->writeback_errors, 1);
            atomicAdd(reinterpret_cast<unsigned long long *>(&state(ctx)->errors), 1ull);
        }
        __threadfence();
        state_update(frame_state(c, f), WFS_PG_WB, 0, 0xFFFFFFFFu); /* WB off, unpinned */
    }
    return failed;
}

/* Writes back every dirty frame of the cache (of every file): the calling lanes scan frames
 * first, first + stride, ... (lane `rank` of the group its share), take the dirty ones and
 * write them back a round at a time; a frame whose write-back another warp has in flight is
 * waited for (that warp waits only on the daemon), so every set made before the call is in
 * the file when it returns. Nothing to do (one load) when no frame is dirty. 0, or -EIO if a
 * write-back failed, or -ETIMEDOUT (the device calls' timeout) / -ESHUTDOWN. */
__device__ __noinline__ long long write_back_all(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 group,
                                                 u64 first, u64 stride) {
    if (c == 0 || !vote_any(group, ld_relaxed_gpu_u32(&state(ctx)->dirty) != 0)) return 0;
    const u32 rank = __popc(group & lanemask_lt());
    const u64 deadline = now_ns() + ctx->timeout_ns;
    long long err = 0;
    for (u64 base = first; vote_any(group, base + rank < c->frames); base += stride) {
        const u64 fr = base + rank;
        bool pending = fr < c->frames;
        u32 ns = 64;
        /* Passes over the group's frames: each lane makes one attempt at its frame, the taken
         * ones are written back (released) together, then the warp backs off if a frame has
         * another warp's write-back in flight. No lane waits while its warp holds a frame: a
         * lane spinning while a lane of its warp held one could wait on a warp doing the same
         * the other way round (seen on the H100 as fsyncs timing out). */
        for (u32 pass = 0; vote_any(group, pending); ++pass) {
            u32 take = WFS_NO_FRAME;
            if (pending) {
                const u32 st = ld_acquire_gpu_u32(frame_state(c, (u32)fr));
                if (!(st & (WFS_PG_DIRTY | WFS_PG_WB))) {
                    pending = false;
                } else if (!(st & WFS_PG_WB) && take_dirty(ctx, c, (u32)fr, st)) {
                    take = (u32)fr;
                    pending = false;
                }
            }
            if (vote_any(group, take != WFS_NO_FRAME) && write_back_frames(ctx, c, group, take) && err == 0)
                err = -WFS_EIO;
            if (!vote_any(group, pending)) break;
            const bool shut = (pass & 7) == 7 && closing(ctx);
            const bool late = now_ns() > deadline;
            if (vote_any(group, shut || late)) {
                const bool any_shut = vote_any(group, shut);
#ifdef WFS_TRACE
                if (pending) printf("wfs_trace_wb_timeout frame %u\n", (u32)fr);
#endif
                if (pending && err == 0) err = any_shut ? -WFS_ESHUTDOWN : -WFS_ETIMEDOUT;
                pending = false;
                break;
            }
            backoff(ns);
        }
    }
    /* One answer for the group: the first error any lane saw. */
    for (u32 m = group; m; m &= m - 1) {
        const long long e = __shfl_sync(group, err, __ffs(m) - 1);
        if (err == 0 && e != 0) err = e;
    }
    return err;
}

/*
 * One round of the cache protocol for the calling lanes (`want` marks lanes with a page to
 * get): lanes wanting one (fh, page) elect one leader (__match_any_sync), which acquires the
 * page; leaders that must load post their loads together (one request each); leaders of pages
 * being loaded elsewhere wait on the page state. Every wanting lane gets back its leader's
 * lane, the frame (pinned by the leader) and an outcome: 0, a negative errno, or
 * WFS_BYPASS_RESULT (read around the cache). Its statistics come back in `stats_out` (see
 * RoundStats).
 *
 * File views (GpuIo::map_file): a lane whose page lies whole in a view passes its bytes there
 * as `view_page`; a load of that page is then a copy from the view by the whole warp (no
 * request to the daemon). With `in_place`, a miss that finds no never-used frame evicts
 * nothing and comes back WFS_BYPASS_RESULT (the caller reads the view in place, counted as
 * in_place, not bypassed); with `stream` as well, every miss does (nothing is loaded).
 */
#define WFS_BYPASS_RESULT (-(1ll << 40))
/* What one acquire_round adds to the statistics, per lane (leaders only); the caller adds it
 * with add_round_stats once its pins are dropped, so no unpin waits for these adds. */
struct RoundStats {
    u32 hits, misses, coalesced, bypassed, in_place;
};
__device__ __forceinline__ void add_round_stats(const WfsGpuCache *c, u32 group, const RoundStats &r) {
    WfsGpuCacheStats *sst = stats_stripe(c);
    stat_add_warp(group, &sst->hits, r.hits);
    stat_add_warp(group, &sst->misses, r.misses);
    stat_add_warp(group, &sst->coalesced, r.coalesced);
    stat_add_warp(group, &sst->bypassed, r.bypassed);
    if (vote_any(group, r.in_place != 0)) stat_add_warp(group, &sst->in_place, r.in_place);
}
__device__ __forceinline__ void acquire_round(const wfs_ctx_t *ctx, const WfsGpuCache *c,
                                              u32 group, bool want, u32 fh, u64 page, u64 deadline,
                                              u32 &leader_out, u32 &frame_out, long long &res_out,
                                              RoundStats &stats_out, const unsigned char *view_page = 0,
                                              bool in_place = false, bool stream = false) {
    const u32 lane = lane_id();
    const u32 wmask = vote(group, want);
    u32 peers = 0;
    if (want) {
        peers = __match_any_sync(wmask, page) & wmask;
        const u32 first = __ffs(peers) - 1;
        const u32 fh0 = __shfl_sync(wmask, fh, first);
        if (vote_any(wmask, fh != fh0)) peers &= __match_any_sync(wmask, fh) & wmask;
    }
    const u32 leader = want ? (u32)(__ffs(peers) - 1) : lane;
    const bool is_leader = want && leader == lane;
    u32 f = WFS_NO_FRAME;
    u32 status = WFS_ACQ_RETRY;
    u32 clean = WFS_NO_FRAME; /* a dirty frame this leader's claim took to write back */
    long long res = 0;
    /* Every leader makes one non-waiting attempt; the warp then retries the leaders whose
     * attempt was transient, all together after a backoff. No lane ever spins while a lane of
     * its own warp holds an insert lock or a half-evicted frame (each attempt drops them). */
    u32 ns = 32;
#ifdef WFS_TRACE
    const u64 t_start = now_ns();
    u32 rounds = 0;
#endif
    for (u32 round = 0;; ++round) {
#ifdef WFS_TRACE
        rounds = round + 1;
#endif
        if (is_leader && status == WFS_ACQ_RETRY)
            status = acquire_page(ctx, c, fh, page,
                                  in_place ? (stream ? WFS_INSERT_NONE : WFS_INSERT_FRESH) : WFS_INSERT_ANY,
                                  deadline, f, clean);
        if (vote(group, is_leader && status == WFS_ACQ_RETRY) == 0) break;
        const bool shut = (round & 7) == 7 && closing(ctx);
        const bool late = now_ns() > deadline;
        if (vote_any(group, shut || late)) {
            const u32 why = vote_any(group, shut) ? WFS_ACQ_SHUTDOWN : WFS_ACQ_TIMEOUT;
#ifdef WFS_TRACE
            if (is_leader && status == WFS_ACQ_RETRY)
                printf("wfs_trace_acq_timeout fh %u page %llu clean %u\n", fh, page, clean);
#endif
            if (is_leader && status == WFS_ACQ_RETRY) status = why;
            break;
        }
        __nanosleep(ns);
        ns = ns < 2048 ? ns * 2 : 4096;
    }
    const bool loader = is_leader && status == WFS_ACQ_LOAD;
    /* The loaders of this warp post together (one request per page); only then do the lanes
     * that found a page being loaded by another warp wait for it. */
    const u32 loaders = vote(group, loader);
#ifdef WFS_TRACE
    const u64 t_acquired = now_ns();
#endif
    if (loaders != 0) {
        const u64 ps = 1ull << c->page_shift;
        /* Pages in a file view: the whole group copies each from the view, in turn. */
        const bool from_view = loader && view_page != 0;
        const u32 viewers = vote(group, from_view);
        if (viewers != 0) {
            const u32 rank = __popc(group & lanemask_lt());
            const u32 cnt = __popc(group);
            for (u32 m = viewers; m; m &= m - 1) {
                const u32 k = __ffs(m) - 1;
                const u64 kd = __shfl_sync(group, from_view ? reinterpret_cast<u64>(frame_data(c, f)) : 0ull, k);
                const u64 ks = __shfl_sync(group, reinterpret_cast<u64>(view_page), k);
                coop_copy(reinterpret_cast<unsigned char *>(kd), reinterpret_cast<const unsigned char *>(ks), ps,
                          rank, cnt, true);
            }
            /* Every lane's stores into the frames before the loaders' fences in finish_load. */
            __syncwarp(group);
        }
        /* The rest from the daemon. The whole group calls (lanes that load nothing ask for 0
         * bytes): every lane helps copy the loaded pages from the host buffers, so one
         * loader's 4 KiB crosses PCIe in one round of loads, not 32 one after another. */
        long long r = (long long)ps;
        if ((loaders & ~viewers) != 0) {
            const bool ask = loader && !from_view;
            const long long rd = io(ctx, group, WFS_OP_READ, fh, page << c->page_shift, ask ? ps : 0,
                                    ask ? frame_data(c, f) : 0);
            if (ask) r = rd;
        }
#ifdef WFS_TRACE
        const u64 t_io = now_ns();
#endif
        if (loader) finish_load(c, f, r);
        if (loader && r < 0) res = r;
#ifdef WFS_TRACE
        if (loader && (atomicAdd(&wfs_trace_misses, 1u) & WFS_TRACE_EVERY) == 0)
            printf("wfs_trace_miss loaders %u rounds %u: acquire %llu io %llu finish %llu ns\n", __popc(loaders),
                   rounds, t_acquired - t_start, t_io - t_acquired, now_ns() - t_io);
#endif
    }
    /* Dirty frames the claims met, written back now that no insert lock is held. */
    if (vote_any(group, clean != WFS_NO_FRAME)) write_back_frames(ctx, c, group, clean);
    __syncwarp(group);
    if (is_leader && status == WFS_ACQ_WAIT) {
        res = wait_loaded(ctx, c, f, deadline);
#ifdef WFS_TRACE
        if ((atomicAdd(&wfs_trace_misses, 1u) & WFS_TRACE_EVERY) == 0)
            printf("wfs_trace_wait rounds %u: acquire %llu wait %llu ns\n", rounds, t_acquired - t_start,
                   now_ns() - t_acquired);
#endif
    } else if (is_leader && status == WFS_ACQ_TIMEOUT) {
        res = -WFS_ETIMEDOUT;
    } else if (is_leader && status == WFS_ACQ_SHUTDOWN) {
        res = -WFS_ESHUTDOWN;
    } else if (is_leader && (status == WFS_ACQ_BYPASS || status == WFS_ACQ_ABSENT)) {
        res = WFS_BYPASS_RESULT;
    }
    if (is_leader && res < 0 && f != WFS_NO_FRAME) {
        unpin(c, f);
        f = WFS_NO_FRAME;
    }
    const u32 n_peers = __popc(peers);
    stats_out.misses = loader ? 1u : 0u;
    stats_out.hits = is_leader && status == WFS_ACQ_HIT ? n_peers : 0u;
    stats_out.coalesced = is_leader && res == 0 ? (status == WFS_ACQ_WAIT ? n_peers
                                                   : status == WFS_ACQ_LOAD ? n_peers - 1 : 0u)
                                                : 0u;
    stats_out.bypassed = is_leader && res == WFS_BYPASS_RESULT && !in_place ? n_peers : 0u;
    stats_out.in_place = is_leader && res == WFS_BYPASS_RESULT && in_place ? n_peers : 0u;
    leader_out = leader;
    frame_out = __shfl_sync(group, f, leader);
    res_out = __shfl_sync(group, res, leader);
    __syncwarp(group);
}

/* Reads through the GPU page cache: every calling lane its own range; bytes or -errno. */
__device__ __noinline__ long long cached_read(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 group, u32 fh,
                                              u64 offset, u64 len, void *dst) {
    const u32 lane = lane_id();
    const u32 rank = __popc(group & lanemask_lt());
    const u32 cnt = __popc(group);
    const u32 shift = c->page_shift;
    const u64 ps = 1ull << shift;
    const u64 deadline = now_ns() + ctx->timeout_ns;
    unsigned char *out = reinterpret_cast<unsigned char *>(dst);
    const bool coop = vote_all(group, dst == 0 || is_global(dst));
    long long total = 0;
    long long err = 0;
    bool done = len == 0;
    if (len != 0 && dst == 0) {
        err = -WFS_EFAULT;
        done = true;
    } else if (offset + len < offset || offset + len > WFS_MAX_END) {
        err = -WFS_EINVAL;
        done = true;
    }
    for (;;) {
        const bool want = !done;
        if (vote(group, want) == 0) break;
        const u64 pos = offset + (u64)total;
        const u64 page = pos >> shift;
        const u64 in_off = pos & (ps - 1);
        const u64 seg = want ? ((len - (u64)total) < (ps - in_off) ? (len - (u64)total) : (ps - in_off)) : 0;
        u32 leader, f;
        long long res;
        RoundStats rs;
        acquire_round(ctx, c, group, want, fh, page, deadline, leader, f, res, rs);
        /* Bytes this lane takes from its frame. */
        u64 n = 0;
        if (want && res == 0) {
            const u32 flen = frame_meta(c, f)->len;
            n = in_off < flen ? ((u64)flen - in_off < seg ? (u64)flen - in_off : seg) : 0;
        }
        if (coop) {
            const u32 copy_mask = vote(group, n > 0);
            for (u32 m = copy_mask; m; m &= m - 1) {
                const u32 k = __ffs(m) - 1;
                const u64 kn = __shfl_sync(group, n, k);
                const u64 kd = __shfl_sync(group, reinterpret_cast<u64>(out + total), k);
                const u64 ks = __shfl_sync(group, reinterpret_cast<u64>(frame_data(c, f) + in_off), k);
                coop_copy(reinterpret_cast<unsigned char *>(kd), reinterpret_cast<const unsigned char *>(ks), kn,
                          rank, cnt, false);
            }
        } else if (n > 0) {
            coop_copy(out + total, frame_data(c, f) + in_off, n, 0, 1, false);
        }
        __syncwarp(group);
        if (want && res == 0 && lane == leader) unpin(c, f);
        add_round_stats(c, group, rs);
        /* Lanes the cache could not place read around it (all together). */
        long long br = 0;
        const bool around = want && res == WFS_BYPASS_RESULT;
        /* The whole group calls (0 bytes for the others), so every lane helps copy. */
        if (vote_any(group, around))
            br = io(ctx, group, WFS_OP_READ, fh, pos, around ? seg : 0, around ? out + total : 0);
        if (want) {
            if (res == WFS_BYPASS_RESULT) {
                if (br < 0) {
                    err = br;
                    done = true;
                } else {
                    total += br;
                    if ((u64)br < seg || (u64)total >= len) done = true;
                }
            } else if (res < 0) {
                err = res;
                done = true;
            } else {
                total += (long long)n;
                if (n < seg || (u64)total >= len) done = true;
            }
        }
    }
    if (err < 0 && total == 0) return err;
    return total;
}

/* Write-through: after the daemon acknowledged `n` bytes at `offset`, copies them into every
 * cached page of the range (waiting for a page being loaded, so no load overwrites them) and
 * marks those pages dirty (see below: the cost is one more page write each, later). */
__device__ __noinline__ void patch_cache(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 fh, u64 offset, u64 n,
                            const unsigned char *src) {
    const u32 shift = c->page_shift;
    const u64 ps = 1ull << shift;
    const u64 deadline = now_ns() + ctx->timeout_ns;
    u64 done = 0;
    while (done < n) {
        const u64 pos = offset + done;
        const u64 in_off = pos & (ps - 1);
        const u64 seg = (n - done) < (ps - in_off) ? (n - done) : (ps - in_off);
        u32 f = WFS_NO_FRAME;
        const u32 st = acquire_page_lookup(ctx, c, fh, pos >> shift, deadline, f);
        bool ok = st == WFS_ACQ_HIT;
        if (st == WFS_ACQ_WAIT) {
            ok = wait_loaded(ctx, c, f, deadline) == 0;
            if (!ok) unpin(c, f);
        }
        if (ok) {
            coop_copy(frame_data(c, f) + in_off, src + done, seg, 0, 1, false);
            volatile WfsGpuPageMeta *m = frame_meta(c, f);
            atomicMax(const_cast<unsigned int *>(&m->len), (unsigned int)(in_off + seg));
            __threadfence();
            /* Dirty from now on: a write-back of this page (array sets) taken before the
             * patch may have put the old bytes back over the ones just written; the frame,
             * now right, is written again. */
            const u32 old = atomicOr(frame_state(c, f), WFS_PG_DIRTY);
            if (!(old & WFS_PG_DIRTY)) atomicAdd(&state(ctx)->dirty, 1u);
            unpin(c, f);
            stat_add(&stats_stripe(c)->write_patches, 1);
        }
        done += seg;
    }
}

/*
 * One page's worth of wfs_write with the GPU page cache on (cached_write cuts ranges at page
 * boundaries); the calling lanes, each its own piece. A write-through
 * must not race a write-back of the same page: a dirty frame written back after the write-through
 * but staged before the write's bytes were in it puts the old bytes of the write's range back in
 * the file (and if the frame is evicted before the patch, the write is lost). So a lane whose
 * range lies in one page first holds that page in the cache (acquire_round: coalesced per page,
 * loaded if absent — write-allocate), and the page's leader flags it WRITING once no write-back
 * of it is in flight and no other write holds it; take_dirty skips WRITING frames and
 * write_back_all waits for them. All or nothing per warp: if a leader cannot flag its page, the
 * warp lets go of everything and tries again after a backoff, so no lane ever waits on a flag
 * while a lane of its warp holds one. Then the group writes through as before, each lane copies
 * its acknowledged bytes into its frame, and the leaders drop the flags and pins: every later
 * write-back of the page carries the new bytes. Pages that fail to load, and warps still
 * without their flags or frames at the deadline, take the unguarded path: write-through, then
 * patch_cache. (A lane that found no frame free makes the warp try again, like a flag it could
 * not take.)
 */
__device__ __noinline__ long long cached_write_page(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 group, u32 fh,
                                                   u64 offset, u64 len, const void *src) {
    const u32 lane = lane_id();
    const u32 shift = c->page_shift;
    const u64 page = offset >> shift;
    const u64 deadline = now_ns() + ctx->timeout_ns;
    const unsigned char *bytes = reinterpret_cast<const unsigned char *>(src);
    bool want = len != 0 && src != 0 && ((offset + len - 1) >> shift) == page;
#ifdef WFS_EXP_UNGUARDED_WRITES
    want = false; /* diagnostics: no hold, to see the race the mixed write/set test catches */
#endif
    bool got = false;     /* this lane's bytes go into frame f once written */
    bool flagged = false; /* this lane is the leader that flagged frame f WRITING */
    u32 leader = lane;
    u32 f = WFS_NO_FRAME;
    u32 ns = 64;
    for (u32 round = 0; vote_any(group, want); ++round) {
        long long res = 0;
        RoundStats rs = {0, 0, 0, 0};
        acquire_round(ctx, c, group, want, fh, page, deadline, leader, f, res, rs);
        got = want && res == 0 && f != WFS_NO_FRAME;
        const bool is_leader = got && leader == lane;
        if (is_leader) {
            u32 *st = frame_state(c, f);
            u32 old = ld_relaxed_gpu_u32(st);
            while (!(old & (WFS_PG_WB | WFS_PG_WRITING))) {
                const u32 prev = atomicCAS(st, old, old | WFS_PG_WRITING);
                if (prev == old) {
                    flagged = true;
                    break;
                }
                old = prev;
            }
        }
        /* A page this lane could not get for a reason that will not pass (a load error, the
         * deadline): unguarded. No frame free (bypass): the warp tries again. */
        if (want && !got && res != WFS_BYPASS_RESULT) want = false;
        const bool all = !vote_any(group, (is_leader && !flagged) || (want && !got));
        if (all) {
            add_round_stats(c, group, rs);
            break;
        }
        /* Let go of everything, then try again (or give up at the deadline). */
        if (flagged) state_update(frame_state(c, f), WFS_PG_WRITING, 0, 0);
        if (is_leader) unpin(c, f);
        flagged = false;
        got = false;
        add_round_stats(c, group, rs);
        if (vote_any(group, now_ns() > deadline || ((round & 7) == 7 && closing(ctx)))) break;
        __nanosleep(ns);
        ns = ns < 2048 ? ns * 2 : 4096;
    }
    const long long r = io(ctx, group, WFS_OP_WRITE, fh, offset, len, const_cast<void *>(src));
    if (got && r > 0) {
        const u64 in_off = offset & ((1ull << shift) - 1);
        coop_copy(frame_data(c, f) + in_off, bytes, (u64)r, 0, 1, false);
        volatile WfsGpuPageMeta *m = frame_meta(c, f);
        atomicMax(const_cast<unsigned int *>(&m->len), (unsigned int)(in_off + (u64)r));
        stat_add(&stats_stripe(c)->write_patches, 1);
    }
    /* Every lane's copy into a frame before its leader drops the flag (the warp sync orders
     * them; the fence makes them visible before the flag goes). */
    __syncwarp(group);
    if (flagged) {
        __threadfence();
        state_update(frame_state(c, f), WFS_PG_WRITING, 0, 0xFFFFFFFFu); /* flag off, unpinned */
    }
    if (!got && r > 0) patch_cache(ctx, c, fh, offset, (u64)r, bytes);
    return r;
}

/* Largest wfs_write range written page by page under cached_write_page's guard; larger ones
 * (bulk writes, where allocating every page in the GPU cache first would read it from the file)
 * are written through unguarded. */
#define WFS_GUARDED_WRITE_MAX (64ull << 10)

/* wfs_write with the GPU page cache on: each lane's range is cut at page boundaries and the
 * pieces go through cached_write_page a round at a time (all lanes together); bytes written or
 * a negative errno, as io() reports them. */
__device__ __noinline__ long long cached_write(const wfs_ctx_t *ctx, const WfsGpuCache *c, u32 group, u32 fh,
                                              u64 offset, u64 len, const void *src) {
    if (!vote_all(group, len <= WFS_GUARDED_WRITE_MAX)) {
        const long long r = io(ctx, group, WFS_OP_WRITE, fh, offset, len, const_cast<void *>(src));
        if (r > 0) patch_cache(ctx, c, fh, offset, (u64)r, reinterpret_cast<const unsigned char *>(src));
        return r;
    }
    const u64 ps = 1ull << c->page_shift;
    const unsigned char *bytes = reinterpret_cast<const unsigned char *>(src);
    long long err = (len != 0 && src == 0) ? -WFS_EFAULT : 0;
    bool done = len == 0 || src == 0;
    u64 total = 0;
    while (vote_any(group, !done)) {
        const u64 pos = offset + total;
        const u64 room = ps - (pos & (ps - 1));
        const u64 n = done ? 0 : (len - total < room ? len - total : room);
        const long long r = cached_write_page(ctx, c, group, fh, pos, n, done ? 0 : bytes + total);
        if (!done) {
            if (r < 0) {
                err = r;
                done = true;
            } else {
                total += (u64)r;
                if ((u64)r < n || total >= len) done = true;
            }
        }
    }
    if (total == 0 && err < 0) return err;
    return (long long)total;
}

__device__ __forceinline__ void count_error(const wfs_ctx_t *ctx) {
    atomicAdd(reinterpret_cast<unsigned long long *>(&state(ctx)->errors), 1ull);
}

/* The file view of fh (GpuIo::map_file): the device address of file byte 0 and, in `len`, the
 * bytes readable there; 0 (and len 0) when fh has none. One device-memory load. */
__device__ __forceinline__ const unsigned char *file_view(const wfs_ctx_t *ctx, u32 fh, u64 &len) {
    len = 0;
    if (ctx == 0 || ctx->view_slots == 0 || ctx->views == 0) return 0;
    const WfsFileView *v = reinterpret_cast<const WfsFileView *>(ctx->views) + fh % ctx->view_slots;
    if (v->fh != fh || v->addr == 0) return 0;
    len = v->len;
    return reinterpret_cast<const unsigned char *>(v->addr);
}

/* Where page `pos >> shift` lies whole in a view of `view_len` bytes, its first byte there;
 * else 0 (no view, or the view's last, partial page: loaded by the daemon, which sees the
 * file's present size). */
__device__ __forceinline__ const unsigned char *view_page_of(const unsigned char *view, u64 view_len, u64 pos,
                                                             u32 shift) {
    const u64 first = (pos >> shift) << shift;
    return view != 0 && first + (1ull << shift) <= view_len ? view + first : 0;
}

/* An element of T at p (any alignment). */
template <typename T> __device__ __forceinline__ T load_elem(const unsigned char *p) {
    T v;
    if ((reinterpret_cast<u64>(p) & (alignof(T) - 1)) == 0) {
        v = *reinterpret_cast<const T *>(p);
    } else {
        memcpy(&v, p, sizeof(T));
    }
    return v;
}

/* Element read for wfs_array: one page lookup per distinct page of the warp, pin held only
 * while the lanes load their elements. With a file view (`view`, `view_len`), a miss loads the
 * page from the view, and a miss of a full cache reads the element in place (no eviction). */
template <typename T>
__device__ __forceinline__ T array_get(const wfs_ctx_t *ctx, u32 fh, u64 byte_offset, u64 len,
                                       u64 i, const unsigned char *view = 0, u64 view_len = 0) {
    const WfsGpuCache *c = cache_of(ctx);
    const u32 group = calling_lanes();
    const u64 pos = byte_offset + i * (u64)sizeof(T);
    bool ok = c != 0 && i < len;
    u32 shift = 12;
    if (c != 0) shift = c->page_shift;
    const u64 ps = 1ull << shift;
    const bool straddles = ok && ((pos & (ps - 1)) + sizeof(T) > ps);
    const bool fast = ok && !straddles;
    T v = T();
    const u64 deadline = now_ns() + (ctx != 0 ? ctx->timeout_ns : 0);
    if (vote_any(group, fast)) {
        u32 leader, f;
        long long res;
        RoundStats rs;
        /* In the view, whatever an overflowing index made of pos: never a read outside it. */
        const bool in_view = fast && view != 0 && pos < view_len && view_len - pos >= sizeof(T);
        acquire_round(ctx, c, group, fast, fh, pos >> shift, deadline, leader, f, res, rs,
                      in_view ? view_page_of(view, view_len, pos, shift) : 0, in_view);
        const u64 in_off = pos & (ps - 1);
        bool got = false;
        if (fast && res == 0 && in_off + sizeof(T) <= frame_meta(c, f)->len) {
            v = load_elem<T>(frame_data(c, f) + in_off);
            got = true;
        }
        __syncwarp(group);
        if (fast && res == 0 && lane_id() == leader) unpin(c, f);
        add_round_stats(c, group, rs);
        const bool here = fast && res == WFS_BYPASS_RESULT && in_view;
        const u32 bypass = vote(group, fast && res == WFS_BYPASS_RESULT && !in_view);
        if (here) {
            /* In place, as pin()'s spans of the view are read. */
            v = load_elem<T>(view + pos);
            got = true;
        }
        if (vote_any(group, here)) stat_add_warp(group, &stats_stripe(c)->in_place_bytes, here ? (u32)sizeof(T) : 0u);
        if (fast && res == WFS_BYPASS_RESULT && !in_view) {
            T tmp;
            got = io(ctx, bypass, WFS_OP_READ, fh, pos, sizeof(T), &tmp) == (long long)sizeof(T);
            if (got) v = tmp;
        }
        if (fast && !got) count_error(ctx);
    }
    const u32 straddlers = vote(group, straddles);
    if (straddles) {
        T tmp;
        if (cached_read(ctx, c, straddlers, fh, pos, sizeof(T), &tmp) == (long long)sizeof(T)) v = tmp;
        else count_error(ctx);
    }
    const bool uncached = c == 0 && i < len;
    const u32 direct = vote(group, uncached);
    if (uncached) {
        /* No GPU page cache configured: read the element straight from the daemon. */
        T tmp;
        if (io(ctx, direct, WFS_OP_READ, fh, pos, sizeof(T), &tmp) == (long long)sizeof(T)) v = tmp;
        else count_error(ctx);
    } else if (!ok) {
        count_error(ctx);
    }
    return v;
}


/* Element write for wfs_array::set: one page lookup per distinct page of the warp (a miss loads
 * the page first, so the rest of it stays right); the lanes store their elements into the
 * frame, and the page is marked DIRTY once their stores are done. Elements the cache cannot
 * place (across a page boundary, no cache, no frame free by the deadline) are written through
 * to the daemon instead. Errors are counted (wfs_errors). */
template <typename T>
__device__ __forceinline__ void array_set(const wfs_ctx_t *ctx, u32 fh, u64 byte_offset, u64 len, u64 i,
                                          const T &v) {
    const WfsGpuCache *c = cache_of(ctx);
    const u32 group = calling_lanes();
    const u64 pos = byte_offset + i * (u64)sizeof(T);
    const bool ok = i < len;
    bool through = ok && c == 0;
    if (vote_any(group, c != 0)) {
        const u64 ps = 1ull << c->page_shift;
        const u64 in_off = pos & (ps - 1);
        const bool fast = ok && in_off + sizeof(T) <= ps;
        through = ok && !fast;
        const u64 deadline = now_ns() + ctx->timeout_ns;
        /* A set that finds no frame free waits for one (the claims that failed took dirty
         * frames to write back, so frames come free) rather than writing through at once: a
         * write-through lands in the file ahead of an older copy of its page that another
         * warp loaded meanwhile and may write back later, and the patch of that copy can miss
         * it if the copy is evicted in between (seen on the H100 as lost sets). Only after
         * the deadline does a set fall back to writing through. */
        bool pending = fast;
        u32 ns = 64;
        while (vote_any(group, pending)) {
            u32 leader, f;
            long long res;
            RoundStats rs;
            acquire_round(ctx, c, group, pending, fh, pos >> c->page_shift, deadline, leader, f, res, rs);
            if (pending && res == 0) {
                unsigned char *p = frame_data(c, f) + in_off;
                if ((reinterpret_cast<u64>(p) & (alignof(T) - 1)) == 0) {
                    *reinterpret_cast<T *>(p) = v;
                } else {
                    memcpy(p, &v, sizeof(T));
                }
                /* An element past the loaded bytes (the file's end) makes the page longer. */
                volatile WfsGpuPageMeta *m = frame_meta(c, f);
                if (in_off + sizeof(T) > m->len)
                    atomicMax(const_cast<unsigned int *>(&m->len), (unsigned int)(in_off + sizeof(T)));
            }
            __syncwarp(group);
            if (pending && res == 0 && lane_id() == leader) {
                /* The lanes' stores (ordered by the warp sync) before DIRTY. */
                __threadfence();
                const u32 old = atomicOr(frame_state(c, f), WFS_PG_DIRTY);
                if (!(old & WFS_PG_DIRTY)) atomicAdd(&state(ctx)->dirty, 1u);
                unpin(c, f);
            }
            add_round_stats(c, group, rs);
            const bool again = pending && res == WFS_BYPASS_RESULT;
            if (pending && res != 0 && !again)
                atomicAdd(reinterpret_cast<unsigned long long *>(&state(ctx)->errors), 1ull);
            pending = again;
            if (!vote_any(group, pending)) break;
            if (vote_any(group, now_ns() > deadline || closing(ctx))) {
                through = through || pending;
                break;
            }
            backoff(ns);
        }
    }
    /* Written through (acknowledged by the daemon), the page held meanwhile (cached_write). */
    const u32 tw = vote(group, through);
    if (tw != 0) {
        T tmp = v;
        long long r = 0;
        if (through) r = c != 0 ? cached_write(ctx, c, tw, fh, pos, sizeof(T), &tmp)
                                : io(ctx, tw, WFS_OP_WRITE, fh, pos, sizeof(T), &tmp);
        if (through && r != (long long)sizeof(T))
            atomicAdd(reinterpret_cast<unsigned long long *>(&state(ctx)->errors), 1ull);
    }
    if (!ok) atomicAdd(reinterpret_cast<unsigned long long *>(&state(ctx)->errors), 1ull);
}

/* Pins the page holding element i for each calling lane (lanes on one page share one lookup and
 * one pin, held by their leader): `p` points at element i in the GPU page cache and `count` is
 * how many elements from i on lie in that page (and in the array). count 0, no pin: out of
 * range, an element straddling a page, an I/O error, or no frame to place the page in (the
 * caller reads those elements with array_get). */
template <typename T>
__device__ __forceinline__ void array_pin(const wfs_ctx_t *ctx, u32 fh, u64 byte_offset, u64 len, u64 i,
                                          const T *&p, u64 &count, u32 &frame, u32 &leader,
                                          const unsigned char *view = 0, u64 view_len = 0,
                                          bool stream = false) {
    const WfsGpuCache *c = cache_of(ctx);
    const u32 group = calling_lanes();
    p = 0;
    count = 0;
    frame = WFS_NO_FRAME;
    leader = lane_id();
    if (!vote_any(group, c != 0)) return;
    const u64 pos = byte_offset + i * (u64)sizeof(T);
    const u64 ps = 1ull << c->page_shift;
    const u64 in_off = pos & (ps - 1);
    const bool want = i < len && in_off + sizeof(T) <= ps && (pos & (alignof(T) - 1)) == 0;
    if (!vote_any(group, want)) return;
    const u64 deadline = now_ns() + ctx->timeout_ns;
    u32 f;
    long long res;
    RoundStats rs;
    const bool in_view = want && view != 0 && pos < view_len && view_len - pos >= sizeof(T);
    acquire_round(ctx, c, group, want, fh, pos >> c->page_shift, deadline, leader, f, res, rs,
                  in_view ? view_page_of(view, view_len, pos, c->page_shift) : 0, in_view, stream);
    add_round_stats(c, group, rs);
    if (want && in_view && res == WFS_BYPASS_RESULT) {
        /* A miss of a full cache: the elements in place in the view, to the end of the page
         * (so a later page that is cached is read from the cache), of the view and of the
         * array. Nothing pinned. */
        const u64 avail = ps - in_off < view_len - pos ? ps - in_off : view_len - pos;
        const u64 n = avail / sizeof(T);
        count = n < len - i ? n : len - i;
        p = reinterpret_cast<const T *>(view + pos);
        return;
    }
    if (!want || res != 0) return;
    frame = f;
    const u32 flen = frame_meta(c, f)->len;
    if (in_off + sizeof(T) > flen) return;
    const u64 in_page = ((u64)flen - in_off) / sizeof(T);
    count = in_page < len - i ? in_page : len - i;
    p = reinterpret_cast<const T *>(frame_data(c, f) + in_off);
}

/* Drops the pins array_pin took, by the same calling lanes. */
__device__ __forceinline__ void array_unpin(const wfs_ctx_t *ctx, u32 frame, u32 leader) {
    const u32 group = calling_lanes();
    __syncwarp(group);
    if (frame != WFS_NO_FRAME && lane_id() == leader) unpin(cache_of(ctx), frame);
}


/* Async pool: record `async_first + i` with its lane buffer; busy word warp_slots + i. */
struct AsyncMeta {
    u64 dst;
    u64 len;
};
__device__ __forceinline__ AsyncMeta *async_meta(const wfs_ctx_t *ctx) {
    const u64 off = (sizeof(WfsGpuState) + 4ull * (ctx->warp_slots + ctx->async_count) + 15) & ~15ull;
    return reinterpret_cast<AsyncMeta *>(ctx->state + off);
}

__device__ __noinline__ long long read_async(const wfs_ctx_t *ctx, u32 fh, u64 offset, u64 len, void *dst) {
    if (ctx == 0 || ctx->magic != WFS_GPU_CTX_MAGIC || ctx->async_count == 0) return -WFS_EINVAL;
    if (len > ctx->lane_bytes || offset + len < offset) return -WFS_EINVAL;
    if (len != 0 && dst == 0) return -WFS_EFAULT;
    if (closing(ctx)) return -WFS_ESHUTDOWN;
    const u64 deadline = now_ns() + ctx->timeout_ns;
    const u32 n = ctx->async_count;
    u32 *busy = busy_words(ctx) + ctx->warp_slots;
    u32 idx = atomicAdd(&state(ctx)->async_hint, 1u) % n;
    u32 ns = 64;
    for (u32 tries = 0;; ++tries) {
        if (atomicCAS(&busy[idx], 0u, 1u) == 0u) break;
        idx = idx + 1 == n ? 0 : idx + 1;
        if ((tries & 63) == 63) {
            if (closing(ctx)) return -WFS_ESHUTDOWN;
            if (now_ns() > deadline) return -WFS_EBUSY;
            backoff(ns);
        }
    }
    __threadfence();
    AsyncMeta *am = async_meta(ctx) + idx;
    am->dst = reinterpret_cast<u64>(dst);
    am->len = len;
    const u32 rec = ctx->async_first + idx;
    const u64 buf = (u64)rec * ctx->lane_bytes;
    WfsCompletion *comp = reinterpret_cast<WfsCompletion *>(ctx->completions) + rec;
    const u64 pos = atomicAdd(reinterpret_cast<unsigned long long *>(&state(ctx)->claim), 1ull);
    WfsSlot *slot = reinterpret_cast<WfsSlot *>(ctx->slots) + (pos & ctx->ring_mask);
    if (claim_slot(ctx, slot, pos, deadline) != 0) {
        atomicExch(&busy[idx], 2u); /* retired: the position may still be served */
        return -WFS_ETIMEDOUT;
    }
    post_request(slot, comp, pos, WFS_OP_READ, fh, rec, offset, len, buf);
    publish_tail(reinterpret_cast<unsigned long long *>(&state(ctx)->tail_max),
                 reinterpret_cast<WfsRingHeader *>(ctx->ring), pos + 1);
    return (long long)(((u64)idx << 32) | (u64)(u32)pos);
}

__device__ __noinline__ long long wait_async(const wfs_ctx_t *ctx, long long ticket) {
    if (ticket < 0) return ticket;
    if (ctx == 0 || ctx->magic != WFS_GPU_CTX_MAGIC) return -WFS_EINVAL;
    const u32 idx = (u32)((u64)ticket >> 32);
    if (idx >= ctx->async_count) return -WFS_EINVAL;
    u32 *busy = busy_words(ctx) + ctx->warp_slots + idx;
    if (ld_relaxed_gpu_u32(busy) != 1u) return -WFS_EINVAL;
    const u32 rec = ctx->async_first + idx;
    WfsCompletion *comp = reinterpret_cast<WfsCompletion *>(ctx->completions) + rec;
    if (ld_relaxed_sys_u32(&comp->ticket) != (u32)ticket) return -WFS_EINVAL;
    const AsyncMeta am = async_meta(ctx)[idx];
    const u64 deadline = now_ns() + ctx->timeout_ns;
    long long r;
    u32 ns = 64;
    u32 spins = 0;
    for (;;) {
        u64 head, res;
        ld_acquire_sys_comp(comp, head, res);
        if ((u32)head == WFS_COMP_DONE) {
            r = (long long)res;
            break;
        }
        const bool shut = (++spins & 7) == 0 && closing(ctx);
        if (shut || now_ns() > deadline) {
            atomicExch(busy, 2u); /* retired: the daemon may still write its buffer */
            return shut ? -WFS_ESHUTDOWN : -WFS_ETIMEDOUT;
        }
        backoff(ns);
    }
    if (r > 0) {
        const u64 n = (u64)r < am.len ? (u64)r : am.len;
        const unsigned char *src = reinterpret_cast<const unsigned char *>(ctx->data + (u64)rec * ctx->lane_bytes);
        coop_copy(reinterpret_cast<unsigned char *>(am.dst), src, n, 0, 1, true);
        r = (long long)n;
    }
    st_relaxed_sys_u32(&comp->state, WFS_COMP_FREE);
    __threadfence();
    atomicExch(busy, 0u);
    return r;
}

__device__ __noinline__ long long prefetch(const wfs_ctx_t *ctx, u32 fh, u64 offset, u64 len) {
    if (ctx == 0 || ctx->magic != WFS_GPU_CTX_MAGIC || ctx->prefetch_slots == 0) return -WFS_EINVAL;
    if (closing(ctx)) return -WFS_ESHUTDOWN;
    WfsRingHeader *hdr = reinterpret_cast<WfsRingHeader *>(ctx->prefetch_ring);
    const u64 capacity = ctx->ring_mask + 1;
    unsigned long long *pclaim = reinterpret_cast<unsigned long long *>(&state(ctx)->pclaim);
    /* A hint never waits for room: a (nearly) full prefetch ring drops it. */
    if (ld_relaxed_gpu_u64(pclaim) - ld_relaxed_sys_u64(&hdr->head) >= capacity / 2) return -WFS_EAGAIN;
    const u64 pos = atomicAdd(pclaim, 1ull);
    WfsSlot *slot = reinterpret_cast<WfsSlot *>(ctx->prefetch_slots) + (pos & ctx->ring_mask);
    const long long w = wait_slot(ctx, slot, pos, now_ns() + ctx->timeout_ns);
    if (w != 0) return w;
    WfsRequest *q = &slot->req;
    q->op = WFS_OP_PREFETCH;
    q->flags = 0;
    q->handle = fh;
    q->completion = ctx->sink;
    q->ticket = (u32)pos;
    q->reserved = 0;
    q->offset = offset;
    q->len = len;
    q->buf = 0;
    st_release_sys_u64(&slot->seq, pos + 1);
    publish_tail(reinterpret_cast<unsigned long long *>(&state(ctx)->ptail_max), hdr, pos + 1);
    return 0;
}

} /* namespace wfs_detail */

/** Reads up to `len` bytes at `offset` of file `fh` into `dst`; bytes read (short at end of
 *  file) or a negative errno. Callable by any thread; the calling lanes of a warp cooperate.
 *  Goes through the GPU page cache when the runtime made one (GpuIoConfig::gpu_cache_bytes):
 *  lanes wanting one page share one lookup, concurrent misses on a page make one request. */
__device__ __forceinline__ long long wfs_read(const wfs_ctx_t *ctx, unsigned fh,
                                              unsigned long long offset, unsigned long long len,
                                              void *dst) {
    const unsigned group = wfs_detail::calling_lanes();
    const WfsGpuCache *c = wfs_detail::cache_of(ctx);
    if (c != 0) return wfs_detail::cached_read(ctx, c, group, fh, offset, len, dst);
    return wfs_detail::io(ctx, group, WFS_OP_READ, fh, offset, len, dst);
}

/** wfs_read around the GPU page cache: every call is a request to the daemon. */
__device__ __forceinline__ long long wfs_read_direct(const wfs_ctx_t *ctx, unsigned fh,
                                                     unsigned long long offset,
                                                     unsigned long long len, void *dst) {
    return wfs_detail::io(ctx, wfs_detail::calling_lanes(), WFS_OP_READ, fh, offset, len, dst);
}

/** Writes `len` bytes from `src` at `offset` of file `fh`; bytes written or a negative errno.
 *  Acknowledged once the host OS has the bytes (durable after wfs_fsync). Write-through: the
 *  bytes go to the file first, then into any cached copy of their pages. */
__device__ __forceinline__ long long wfs_write(const wfs_ctx_t *ctx, unsigned fh,
                                               unsigned long long offset, unsigned long long len,
                                               const void *src) {
    const WfsGpuCache *c = wfs_detail::cache_of(ctx);
    if (c != 0) return wfs_detail::cached_write(ctx, c, wfs_detail::calling_lanes(), fh, offset, len, src);
    return wfs_detail::io(ctx, wfs_detail::calling_lanes(), WFS_OP_WRITE, fh, offset, len, const_cast<void *>(src));
}

/* Warp variants: every active lane of the warp calls with the same arguments; one request
 * is made (by the lowest active lane) and all the lanes copy its data together, so a single
 * 4 KiB read costs a few coalesced 16-byte loads per lane instead of 256 by one thread. Every
 * lane gets the same result. */

/** wfs_read for a whole warp: one request, copied by all active lanes; the same bytes or
 *  negative errno on every lane. */
__device__ __forceinline__ long long wfs_read_warp(const wfs_ctx_t *ctx, unsigned fh,
                                                   unsigned long long offset,
                                                   unsigned long long len, void *dst) {
    const unsigned group = wfs_detail::calling_lanes();
    const unsigned leader = __ffs(group) - 1;
    const bool me = wfs_detail::lane_id() == leader;
    const WfsGpuCache *c = wfs_detail::cache_of(ctx);
    const long long r = c != 0 ? wfs_detail::cached_read(ctx, c, group, fh, offset, me ? len : 0, me ? dst : 0)
                               : wfs_detail::io(ctx, group, WFS_OP_READ, fh, offset, me ? len : 0, me ? dst : 0);
    return __shfl_sync(group, r, leader);
}

/** wfs_read_direct for a whole warp (around the GPU page cache). */
__device__ __forceinline__ long long wfs_read_direct_warp(const wfs_ctx_t *ctx, unsigned fh,
                                                          unsigned long long offset,
                                                          unsigned long long len, void *dst) {
    const unsigned group = wfs_detail::calling_lanes();
    const unsigned leader = __ffs(group) - 1;
    const bool me = wfs_detail::lane_id() == leader;
    const long long r = wfs_detail::io(ctx, group, WFS_OP_READ, fh, offset, me ? len : 0, me ? dst : 0);
    return __shfl_sync(group, r, leader);
}

/** wfs_write for a whole warp: one request, staged by all active lanes. */
__device__ __forceinline__ long long wfs_write_warp(const wfs_ctx_t *ctx, unsigned fh,
                                                    unsigned long long offset,
                                                    unsigned long long len, const void *src) {
    const unsigned group = wfs_detail::calling_lanes();
    const unsigned leader = __ffs(group) - 1;
    const bool me = wfs_detail::lane_id() == leader;
    const WfsGpuCache *c = wfs_detail::cache_of(ctx);
    const long long r = c != 0 ? wfs_detail::cached_write(ctx, c, group, fh, offset, me ? len : 0, me ? src : 0)
                               : wfs_detail::io(ctx, group, WFS_OP_WRITE, fh, offset, me ? len : 0,
                                                me ? const_cast<void *>(src) : 0);
    return __shfl_sync(group, r, leader);
}

/* Block variants: every thread of the block calls with the same arguments (they synchronise
 * with __syncthreads, so no thread may skip the call or have returned). The range is cut into
 * one slice per warp, page-aligned (4 KiB), and each warp moves its slice with the warp variant,
 * so the block's warps have their requests in flight at once. */

namespace wfs_detail {
/* One call of a block variant: each warp's slice through `warp_op`, then the block's result —
 * the bytes moved from `offset` on without a gap (a short or failed slice ends the count), or
 * the first slice's negative errno if it moved nothing. The same on every thread. */
template <typename WarpOp>
__device__ __forceinline__ long long block_op(unsigned long long len, WarpOp warp_op) {
    __shared__ long long slice_result[32];
    const unsigned threads = blockDim.x * blockDim.y * blockDim.z;
    const unsigned tid = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned warps = (threads + 31) / 32;
    const unsigned w = tid / 32;
    /* Slice length: a whole number of 4 KiB pages, so slices start page-aligned when the range does. */
    unsigned long long slice = (len + warps - 1) / warps;
    slice = (slice + 4095) & ~4095ull;
    const unsigned long long start = (unsigned long long)w * slice;
    const unsigned long long n = start < len ? (len - start < slice ? len - start : slice) : 0;
    const long long r = n > 0 ? warp_op(start, n) : 0;
    if ((tid & 31) == 0) slice_result[w] = r;
    __syncthreads();
    long long total = 0;
    for (unsigned k = 0; k < warps; ++k) {
        const unsigned long long ks = (unsigned long long)k * slice;
        if (ks >= len) break;
        const unsigned long long kn = len - ks < slice ? len - ks : slice;
        const long long kr = slice_result[k];
        if (kr < 0) {
            if (total == 0) total = kr;
            break;
        }
        total += kr;
        if ((unsigned long long)kr < kn) break;
    }
    __syncthreads(); /* slice_result is free for the block's next call */
    return total;
}
} /* namespace wfs_detail */

/** wfs_read for a whole block (through the GPU page cache when there is one): the block's
 *  warps read one slice each, all in flight together. Bytes read from `offset` (short at end of
 *  file) or a negative errno, the same on every thread. */
__device__ __forceinline__ long long wfs_read_block(const wfs_ctx_t *ctx, unsigned fh,
                                                    unsigned long long offset,
                                                    unsigned long long len, void *dst) {
    unsigned char *d = reinterpret_cast<unsigned char *>(dst);
    return wfs_detail::block_op(len, [&](unsigned long long start, unsigned long long n) {
        return wfs_read_warp(ctx, fh, offset + start, n, d + start);
    });
}

/** wfs_read_direct for a whole block (around the GPU page cache). */
__device__ __forceinline__ long long wfs_read_direct_block(const wfs_ctx_t *ctx, unsigned fh,
                                                           unsigned long long offset,
                                                           unsigned long long len, void *dst) {
    unsigned char *d = reinterpret_cast<unsigned char *>(dst);
    return wfs_detail::block_op(len, [&](unsigned long long start, unsigned long long n) {
        return wfs_read_direct_warp(ctx, fh, offset + start, n, d + start);
    });
}

/** wfs_write for a whole block: the block's warps write one slice each. Bytes written from
 *  `offset` without a gap, or a negative errno, the same on every thread. */
__device__ __forceinline__ long long wfs_write_block(const wfs_ctx_t *ctx, unsigned fh,
                                                     unsigned long long offset,
                                                     unsigned long long len, const void *src) {
    const unsigned char *s = reinterpret_cast<const unsigned char *>(src);
    return wfs_detail::block_op(len, [&](unsigned long long start, unsigned long long n) {
        return wfs_write_warp(ctx, fh, offset + start, n, s + start);
    });
}

/** Makes the file's acknowledged writes durable (host fdatasync), after writing back the GPU
 *  page cache's dirty pages (wfs_array::set; of every file); 0 or a negative errno (-EIO: a
 *  dirty page could not be written back). */
__device__ __forceinline__ long long wfs_fsync(const wfs_ctx_t *ctx, unsigned fh) {
    const unsigned group = wfs_detail::calling_lanes();
    /* Dirty GPU cache pages (wfs_array::set) reach the file first: all of them, of every file
     * (one device load when there are none; else a scan of the frames by the calling lanes). */
    const long long wb = wfs_detail::write_back_all(ctx, wfs_detail::cache_of(ctx), group, 0, __popc(group));
    const long long r = wfs_detail::io(ctx, group, WFS_OP_FSYNC, fh, 0, 0, 0);
    return wb < 0 ? wb : r;
}

/** The file's size in bytes, or a negative errno. */
__device__ __forceinline__ long long wfs_size(const wfs_ctx_t *ctx, unsigned fh) {
    return wfs_detail::io(ctx, wfs_detail::calling_lanes(), WFS_OP_SIZE, fh, 0, 0, 0);
}

/** Starts reading up to `len` bytes (at most the runtime's lane_bytes, 4 KiB by default) at
 *  `offset` of `fh` into `dst`; returns a ticket (>= 0) for wfs_wait, or a negative errno.
 *  Per thread, no warp cooperation; the read goes around the GPU page cache. Every ticket must
 *  be waited for (it holds one of GpuIoConfig::async_slots records until then). */
__device__ __forceinline__ long long wfs_read_async(const wfs_ctx_t *ctx, unsigned fh,
                                                    unsigned long long offset,
                                                    unsigned long long len, void *dst) {
    return wfs_detail::read_async(ctx, fh, offset, len, dst);
}

/** Waits for a wfs_read_async ticket: bytes read into its `dst`, or a negative errno. */
__device__ __forceinline__ long long wfs_wait(const wfs_ctx_t *ctx, long long ticket) {
    return wfs_detail::wait_async(ctx, ticket);
}

/** Hint: bring [offset, offset+len) of `fh` into the host cache tier, served after demand
 *  requests. Never waits for an answer; 0 if posted, -EAGAIN if the prefetch ring was nearly
 *  full (hint dropped), another negative errno on bad input. */
__device__ __forceinline__ long long wfs_prefetch(const wfs_ctx_t *ctx, unsigned fh,
                                                  unsigned long long offset,
                                                  unsigned long long len) {
    return wfs_detail::prefetch(ctx, fh, offset, len);
}

/** Errors counted by the device API (failed wfs_array element reads), device-memory counter. */
__device__ __forceinline__ unsigned long long wfs_errors(const wfs_ctx_t *ctx) {
    return wfs_detail::ld_relaxed_gpu_u64(&wfs_detail::state(ctx)->errors);
}

/** Elements of a wfs_array read in place in a pinned GPU cache page (see wfs_array::pin). */
template <typename T> struct wfs_span {
    const T *p;                  /* element i; 0 when count is 0 */
    unsigned long long count;    /* elements readable at p */
    unsigned frame;              /* internal: the pinned frame */
    unsigned leader;             /* internal: the lane holding the pin */

    /** Whether p points into a file view (host memory read over PCIe, nothing pinned) rather
     *  than a GPU cache page: callers that count the bytes they move over PCIe use it. */
    __device__ __forceinline__ bool in_place() const { return count != 0 && frame == WFS_NO_FRAME; }
};

/**
 * A file-backed array of T (BaM-like): `len` elements starting at byte `byte_offset` of `fh`,
 * read through the GPU page cache. Element access from any lane pattern (lanes of a warp on one
 * page share one lookup; the page is pinned only while the lanes load). Out of range or an I/O
 * error: T() and the error is counted (wfs_errors).
 */
template <typename T> struct wfs_array {
    const wfs_ctx_t *ctx;
    unsigned fh;
    unsigned long long byte_offset;
    unsigned long long len; /* elements */
    const unsigned char *view;    /* the file's view (GpuIo::map_file), or 0 */
    unsigned long long view_len;  /* bytes readable at view */

    __device__ __forceinline__ T operator[](unsigned long long i) const {
        return wfs_detail::array_get<T>(ctx, fh, byte_offset, len, i, view, view_len);
    }

    /**
     * Pins the GPU cache page holding element `i` (each calling lane its own `i`; lanes on one
     * page share one lookup): the span's `p[0..count)` are elements `i..i + count` read in
     * place, for as long as the pin is held. One lookup for up to a page of elements, where
     * operator[] makes one per access. `count` 0 means nothing pinned (out of range, an
     * element across a page boundary, an I/O error, or a cache with every frame pinned): read
     * those elements with operator[]. Release with unpin(span) by the same lanes, before the
     * warp waits on anything else; a lane's pins count toward the launch's pages held per warp.
     * With a file view, a page the full cache does not hold comes back in place (span.in_place():
     * host memory, read over PCIe; nothing pinned), to the end of its page.
     */
    __device__ __forceinline__ wfs_span<T> pin(unsigned long long i) const {
        wfs_span<T> s;
        wfs_detail::array_pin<T>(ctx, fh, byte_offset, len, i, s.p, s.count, s.frame, s.leader, view, view_len);
        return s;
    }

    /**
     * pin() for elements read once (a scan): a page the GPU cache holds is pinned as pin()
     * does, but with a file view a page it does not hold is never loaded: its elements come
     * back in place (span.in_place(), host memory read over PCIe, nothing pinned), to the end
     * of the page. Loading 4 KiB to read 32 bytes of it costs a page of PCIe traffic and a
     * frame; reading in place moves the 32-byte sectors touched. Without a view: pin().
     */
    __device__ __forceinline__ wfs_span<T> pin_stream(unsigned long long i) const {
        wfs_span<T> s;
        wfs_detail::array_pin<T>(ctx, fh, byte_offset, len, i, s.p, s.count, s.frame, s.leader, view, view_len,
                                 true);
        return s;
    }

    /**
     * Writes element `i` (any lane pattern; lanes on one page share one lookup). The value
     * goes into the GPU page cache, which writes the page back to the file when it evicts it,
     * on wfs_fsync and on GpuIo::flush or shutdown: like a store to memory, it is not an
     * acknowledged write until then (wfs_write is). Needs `fh` registered writable. With
     * no frame free it waits for one (up to the device calls' timeout, then writes through);
     * an element across a page boundary is written through at once. Out of range or failed:
     * counted (wfs_errors).
     */
    __device__ __forceinline__ void set(unsigned long long i, const T &v) const {
        wfs_detail::array_set<T>(ctx, fh, byte_offset, len, i, v);
    }

    /** Elements in one whole GPU cache page (page bytes / sizeof(T)); 0 without a GPU cache.
     *  A span from pin() at the first element of a page holds this many (if the array's byte
     *  offset is a multiple of sizeof(T) and the array goes on). */
    __device__ __forceinline__ unsigned long long page_elems() const {
        const WfsGpuCache *c = wfs_detail::cache_of(ctx);
        return c != 0 ? (1ull << c->page_shift) / sizeof(T) : 0ull;
    }

    /** Drops the pin of a span from pin(), called by the same lanes. */
    __device__ __forceinline__ void unpin(const wfs_span<T> &s) const {
        wfs_detail::array_unpin(ctx, s.frame, s.leader);
    }

    /** Copies elements [first, first + n) (clamped to len) into dst: bytes copied or -errno. */
    __device__ __forceinline__ long long copy(unsigned long long first, unsigned long long n, T *dst) const {
        if (first > len) return -WFS_EINVAL;
        const unsigned long long m = n < len - first ? n : len - first;
        const unsigned long long off = byte_offset + first * (unsigned long long)sizeof(T);
        return wfs_read(ctx, fh, off, m * (unsigned long long)sizeof(T), dst);
    }
};

/** A wfs_array of `len` elements of T at byte `byte_offset` of file `fh`. Where the host
 *  mapped the file into the device (GpuIo::map_file), the array uses the view: misses load
 *  pages from it with no request to the daemon, and misses of a full cache read in place
 *  (evicting nothing). One device-memory load (the view table). */
template <typename T>
__device__ wfs_array<T> wfs_array_make(const wfs_ctx_t *ctx, unsigned fh,
                                       unsigned long long byte_offset, unsigned long long len) {
    wfs_array<T> a;
    a.ctx = ctx;
    a.fh = fh;
    a.byte_offset = byte_offset;
    a.len = len;
    a.view = wfs_detail::file_view(ctx, fh, a.view_len);
    return a;
}

#endif /* WARPFS_CUH */
