/*
 * warpfs_abi.h — the warpfs wire format for C, C++ and CUDA.
 *
 * Hand-kept mirror of crates/warpfs/src/abi.rs, which is the one source of truth.
 * crates/warpfs/tests/abi_header.rs compiles this header and fails if any constant, size or
 * field offset differs from the Rust definitions. Change both together and bump
 * WFS_ABI_VERSION on any layout change.
 *
 * Layout in a shared region (little-endian, naturally aligned):
 *   ring header (192 B) · `capacity` request slots (64 B each) · completion records (32 B each).
 */
#ifndef WARPFS_ABI_H
#define WARPFS_ABI_H

#if defined(__CUDACC_RTC__)
/* NVRTC has no C library headers: spell out the fixed-width types it needs. */
typedef unsigned int uint32_t;
typedef unsigned long long uint64_t;
typedef long long int64_t;
typedef int int32_t;
#ifndef offsetof
/* NVRTC has no __builtin_offsetof: this form works at run time (WFS_LAYOUT, device-side drift
 * check in tests/cuda_gpu_io.rs) but is no constant expression, so the offset assertions
 * below are compiled by C/C++ compilers only; the size assertions hold under NVRTC too. */
#define offsetof(type, member) ((size_t) & (((type *)0)->member))
#endif
#define WFS_NO_CONSTANT_OFFSETOF 1
#else
#include <stddef.h>
#include <stdint.h>
#endif

/* ---- alignment and compile-time checks, portable across C11, C++11, CUDA ---- */

#if defined(__cplusplus) && __cplusplus >= 201103L
#define WFS_ALIGNAS(n) alignas(n)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define WFS_ALIGNAS(n) _Alignas(n)
#elif defined(__GNUC__) || defined(__clang__)
#define WFS_ALIGNAS(n) __attribute__((aligned(n)))
#elif defined(_MSC_VER)
#define WFS_ALIGNAS(n) __declspec(align(n))
#else
#error "warpfs_abi.h: no way to align a struct member with this compiler"
#endif

#if defined(__cplusplus) && __cplusplus >= 201103L
#define WFS_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#elif defined(__STDC_VERSION__) && __STDC_VERSION__ >= 201112L
#define WFS_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#else
#define WFS_STATIC_ASSERT(cond, msg) /* no static assertions before C11/C++11 */
#endif

/* Assertions on field offsets: skipped where offsetof is no constant expression (NVRTC). */
#if defined(WFS_NO_CONSTANT_OFFSETOF)
#define WFS_STATIC_ASSERT_OFFSET(cond, msg) /* checked by C/C++ compilers and at run time */
#else
#define WFS_STATIC_ASSERT_OFFSET(cond, msg) WFS_STATIC_ASSERT(cond, msg)
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* ---- constants ---- */

/** Version of this wire format; bumped on any layout change. */
#define WFS_ABI_VERSION 4u
/** Magic number at the start of a ring header ("WFSR"). */
#define WFS_RING_MAGIC 0x57534652u

/** Read `len` bytes at `offset` of a file into the data region at `buf`. */
#define WFS_OP_READ 1u
/** Write `len` bytes from the data region at `buf` to the file at `offset`. */
#define WFS_OP_WRITE 2u
/** Make the file's acknowledged writes durable (write back dirty pages, then fdatasync). */
#define WFS_OP_FSYNC 3u
/** Return the file's size in bytes. */
#define WFS_OP_SIZE 4u
/** Hint: bring [offset, offset+len) into the cache; served after demand requests. */
#define WFS_OP_PREFETCH 5u

/** Completion state: the record is not in use. */
#define WFS_COMP_FREE 0u
/** Completion state: a request naming this record is in flight. */
#define WFS_COMP_PENDING 1u
/** Completion state: the daemon wrote `result`; the requester may read it. */
#define WFS_COMP_DONE 2u
/** Completion state: a completer claimed the pending record and is writing `result` and `aux`;
 *  DONE follows (or PENDING again if the ticket did not match). Transient: requesters wait for
 *  DONE and never store over it. */
#define WFS_COMP_CLAIMED 3u
/** Bit or-ed into a PENDING or CLAIMED state by a host requester that sleeps on the word
 *  (futex). */
#define WFS_COMP_SLEEPING 0x80000000u
/** Largest offset + len a read or write may name (4 EiB); beyond it: -EINVAL. */
#define WFS_MAX_END 0x4000000000000000ull

/* ---- records ---- */

/** One request, as a requester writes it into a ring slot (48 bytes). */
typedef struct WfsRequest {
    uint32_t op;         /**< One of the WFS_OP_* codes. */
    uint32_t flags;      /**< Reserved for per-request flags; must be 0. */
    uint32_t handle;     /**< File handle granted by the host (a capability). */
    uint32_t completion; /**< Index of the completion record that receives the outcome. */
    uint32_t ticket;     /**< Requester's stamp, echoed in the completion. */
    uint32_t reserved;   /**< Reserved; must be 0. */
    uint64_t offset;     /**< Byte offset in the file. */
    uint64_t len;        /**< Length in bytes. */
    uint64_t buf;        /**< Byte offset of the data buffer inside the channel's data region. */
} WfsRequest;

/** A ring slot: Vyukov sequence word followed by the request; one 64-byte cache line. */
typedef struct WfsSlot {
    /** `pos` when free for the producer at `pos`, `pos + 1` once published. */
    WFS_ALIGNAS(64) uint64_t seq;
    /** The request. */
    WfsRequest req;
} WfsSlot;

/** Outcome of one request (32 bytes). */
typedef struct WfsCompletion {
    uint32_t state;    /**< One of the WFS_COMP_* states (possibly with WFS_COMP_SLEEPING). */
    uint32_t ticket;   /**< Copy of the request's `ticket`. */
    int64_t result;    /**< Bytes transferred (or file size for SIZE), or a negative errno. */
    uint64_t aux;      /**< Op-specific extra word (reserved, 0 today). */
    uint64_t reserved; /**< Padding to 32 bytes. */
} WfsCompletion;

/** Ring header: geometry, then consumer and producer cursors on their own cache lines. */
typedef struct WfsRingHeader {
    WFS_ALIGNAS(64) uint32_t magic; /**< WFS_RING_MAGIC. */
    uint32_t version;               /**< WFS_ABI_VERSION. */
    uint32_t capacity;              /**< Number of slots (a power of two). */
    uint32_t mask;                  /**< capacity - 1. */
    uint64_t pad0[6];               /**< Padding to the end of the first cache line. */
    uint64_t head;                  /**< Next position a consumer takes. */
    uint64_t pad1[7];               /**< Padding to the end of the second cache line. */
    uint64_t tail;                  /**< Next position a producer claims. */
    uint64_t pad2[7];               /**< Padding to the end of the third cache line. */
} WfsRingHeader;

/** Magic number at the start of a WfsGpuContext ("WFSG"). */
#define WFS_GPU_CTX_MAGIC 0x57534647u

/**
 * What a CUDA kernel is handed (by device pointer) to reach one GPU channel (160 bytes):
 * device addresses of the channel's parts and their geometry. Written once by the runtime;
 * kernels only read it (include/warpfs.cuh).
 */
typedef struct WfsGpuContext {
    uint32_t magic;       /**< WFS_GPU_CTX_MAGIC. */
    uint32_t version;     /**< WFS_ABI_VERSION. */
    uint32_t warp_slots;  /**< Request groups: 32 completion records + 32 lane buffers each. */
    uint32_t lane_bytes;  /**< Data buffer bytes per completion record. */
    uint64_t ring;        /**< Device address of the demand ring header (mapped host memory). */
    uint64_t slots;       /**< Device address of the demand ring's first slot. */
    uint64_t ring_mask;   /**< Slots in the demand ring minus one. */
    uint64_t completions; /**< Device address of completion record 0 (mapped host memory). */
    uint64_t data;        /**< Device address of data region byte 0 (mapped host memory). */
    uint64_t control;     /**< Device address of the WfsGpuControl block (mapped host memory). */
    uint64_t state;       /**< Device address of the WfsGpuState block (device memory). */
    uint64_t timeout_ns;  /**< Longest wait of one call before it returns -ETIMEDOUT. */
    uint64_t cache;          /**< Device address of the WfsGpuCache descriptor; 0 = no cache. */
    uint64_t prefetch_ring;  /**< Device address of the prefetch ring header (mapped host). */
    uint64_t prefetch_slots; /**< Device address of the prefetch ring's first slot. */
    uint32_t async_first;    /**< First completion record of the async pool. */
    uint32_t async_count;    /**< Completion records in the async pool. */
    uint32_t sink;           /**< A record never armed: prefetch hints name it. */
    uint32_t tier_page_shift; /**< log2 of the host cache tier's page size (0: no tier). */
    uint64_t tier;           /**< Device address of the host tier arena (mapped); 0: not mapped. */
    uint64_t tier_bytes;     /**< Bytes of the tier arena mapped at `tier`. */
    uint64_t handed;         /**< Device address of the demand ring's hand-back mirror (device
                                  memory): per slot, the position it may next be written for. */
    uint64_t views;          /**< Device address of view_slots WfsFileView records (device
                                  memory): files the device reads in place; slot fh % view_slots. */
    uint32_t view_slots;     /**< Records at views (0: no file views). */
    uint32_t reserved;       /**< Reserved; 0. */
} WfsGpuContext;

/** Slots of a GPU channel's file-view table. */
#define WFS_VIEW_SLOTS 64u

/**
 * A registered file the device can read in place (GpuIo::map_file): its page-cache pages,
 * mapped read-only and pinned, at a device address. fh 0 marks a free slot.
 */
typedef struct WfsFileView {
    uint64_t addr;      /**< Device address of file byte 0. */
    uint64_t len;       /**< Bytes readable at addr (the file's size when mapped). */
    uint32_t fh;        /**< The file's handle; 0: slot free. */
    uint32_t reserved;  /**< Reserved; 0. */
    uint64_t reserved2; /**< Reserved; 0. */
} WfsFileView;

/** Host-written words that GPU requesters read (mapped host memory, one cache line). */
typedef struct WfsGpuControl {
    WFS_ALIGNAS(64) uint32_t closing; /**< Non-zero once the channel shuts down. */
    uint32_t reserved;                /**< Reserved; 0. */
    uint64_t pad[7];                  /**< Padding to 64 bytes. */
} WfsGpuControl;

/**
 * GPU-private bookkeeping in device memory (zeroed by the runtime), followed by `warp_slots`
 * 32-bit busy words (0 free, 1 held, 2 retired after a timed-out request) and `async_count`
 * more for the async pool. Hot words sit on their own 64-byte lines.
 */
typedef struct WfsGpuState {
    WFS_ALIGNAS(64) uint64_t claim; /**< Demand-ring positions claimed so far. */
    uint64_t tail_max;              /**< Highest claimed end published to the ring's tail. */
    uint32_t dirty;                 /**< GPU cache frames dirty, not yet taken for write-back. */
    uint32_t async_hint;            /**< Rotating start of the search for a free async record. */
    uint64_t pad0[5];               /**< Padding to 64 bytes. */
    uint64_t pclaim;                /**< Prefetch-ring positions claimed so far. */
    uint64_t ptail_max;             /**< Highest claimed end published to the prefetch tail. */
    uint64_t pad1[6];               /**< Padding to 128 bytes. */
    uint64_t clock;                 /**< CLOCK hand of the GPU page cache. */
    uint64_t fresh;                 /**< Frames handed out fresh (never used) so far. */
    uint64_t pad2[6];               /**< Padding to 192 bytes. */
    uint64_t errors;                /**< Errors counted by the device API (wfs_errors). */
    uint64_t pad3[7];               /**< Padding to 256 bytes. */
} WfsGpuState;

/** Magic number at the start of a WfsGpuCache ("WFSC"). */
#define WFS_GPU_CACHE_MAGIC 0x57534643u
/** Statistics stripes of the GPU page cache (stripe (smid * 8 + warp slot % 8) % STRIPES). */
#define WFS_GPU_CACHE_STRIPES 1024u

/** Descriptor of a GPU page cache (device memory, written once by the runtime). */
typedef struct WfsGpuCache {
    WFS_ALIGNAS(64) uint32_t magic; /**< WFS_GPU_CACHE_MAGIC. */
    uint32_t page_shift;            /**< log2 of the page size. */
    uint32_t frames;                /**< Page frames. */
    uint32_t probe;                 /**< Buckets per page-table group: 16 (WFS_TABLE_GROUP). */
    uint64_t bucket_mask;           /**< Page-table buckets minus one. */
    uint64_t lock_mask;             /**< Insert locks minus one. */
    uint64_t table;                 /**< Page table: 64-bit words (0 empty, ~0 deleted). */
    uint64_t state;                 /**< One 32-bit state word per frame. */
    uint64_t meta;                  /**< One WfsGpuPageMeta per frame. */
    uint64_t data;                  /**< Frame data: frames << page_shift bytes. */
    uint64_t locks;                 /**< lock_mask + 1 32-bit insert locks. */
    uint64_t stats;                 /**< WFS_GPU_CACHE_STRIPES WfsGpuCacheStats records. */
    uint64_t reserved[6];           /**< Reserved; 0. */
} WfsGpuCache;

/** What a page frame holds (changed only by the thread that owns the frame). */
typedef struct WfsGpuPageMeta {
    uint64_t page;   /**< Page index in the file. */
    uint32_t fh;     /**< File handle. */
    uint32_t len;    /**< Valid bytes from the page start. */
    uint64_t word;   /**< The page-table word that points at this frame. */
    uint32_t bucket; /**< The page-table bucket holding `word`. */
    int32_t err;     /**< Negative errno of a failed load. */
} WfsGpuPageMeta;

/** One stripe of GPU page-cache statistics (the host sums the stripes). */
typedef struct WfsGpuCacheStats {
    WFS_ALIGNAS(64) uint64_t hits; /**< Lane accesses served by a cached page. */
    uint64_t misses;               /**< Pages loaded from the daemon. */
    uint64_t coalesced;            /**< Lane accesses served by another lane's or warp's load. */
    uint64_t evictions;            /**< Valid pages evicted by the CLOCK hand. */
    uint64_t bytes_loaded;         /**< Bytes loaded into the cache. */
    uint64_t bypassed;             /**< Lane accesses read around the cache. */
    uint64_t write_patches;        /**< Cached pages updated by a write-through wfs_write. */
    uint64_t load_errors;          /**< Page loads that failed. */
    uint64_t writebacks;           /**< Dirty pages written back to their file. */
    uint64_t writeback_errors;     /**< Write-backs that failed (changes dropped). */
    uint64_t in_place;             /**< Lane accesses read in place from a file view. */
    uint64_t in_place_bytes;       /**< Bytes element reads read in place. */
} WfsGpuCacheStats;

#ifdef __cplusplus
} /* extern "C" */
#endif

/*
 * WFS_LAYOUT(X): every size and field offset, in the order of warpfs::abi::layout_table().
 * X(name, value) is called once per entry; e.g. to print them:
 *   #define ROW(name, value) printf("%s %zu\n", name, (size_t)(value));
 *   WFS_LAYOUT(ROW)
 */
#define WFS_LAYOUT(X)                                                        \
    X("sizeof(WfsRequest)", sizeof(WfsRequest))                              \
    X("WfsRequest.op", offsetof(WfsRequest, op))                             \
    X("WfsRequest.flags", offsetof(WfsRequest, flags))                       \
    X("WfsRequest.handle", offsetof(WfsRequest, handle))                     \
    X("WfsRequest.completion", offsetof(WfsRequest, completion))             \
    X("WfsRequest.ticket", offsetof(WfsRequest, ticket))                     \
    X("WfsRequest.reserved", offsetof(WfsRequest, reserved))                 \
    X("WfsRequest.offset", offsetof(WfsRequest, offset))                     \
    X("WfsRequest.len", offsetof(WfsRequest, len))                           \
    X("WfsRequest.buf", offsetof(WfsRequest, buf))                           \
    X("sizeof(WfsSlot)", sizeof(WfsSlot))                                    \
    X("WfsSlot.seq", offsetof(WfsSlot, seq))                                 \
    X("WfsSlot.req", offsetof(WfsSlot, req))                                 \
    X("sizeof(WfsCompletion)", sizeof(WfsCompletion))                        \
    X("WfsCompletion.state", offsetof(WfsCompletion, state))                 \
    X("WfsCompletion.ticket", offsetof(WfsCompletion, ticket))               \
    X("WfsCompletion.result", offsetof(WfsCompletion, result))               \
    X("WfsCompletion.aux", offsetof(WfsCompletion, aux))                     \
    X("sizeof(WfsRingHeader)", sizeof(WfsRingHeader))                        \
    X("WfsRingHeader.magic", offsetof(WfsRingHeader, magic))                 \
    X("WfsRingHeader.version", offsetof(WfsRingHeader, version))             \
    X("WfsRingHeader.capacity", offsetof(WfsRingHeader, capacity))           \
    X("WfsRingHeader.mask", offsetof(WfsRingHeader, mask))                   \
    X("WfsRingHeader.head", offsetof(WfsRingHeader, head))                   \
    X("WfsRingHeader.tail", offsetof(WfsRingHeader, tail))                   \
    X("sizeof(WfsGpuContext)", sizeof(WfsGpuContext))                        \
    X("WfsGpuContext.magic", offsetof(WfsGpuContext, magic))                 \
    X("WfsGpuContext.version", offsetof(WfsGpuContext, version))             \
    X("WfsGpuContext.warp_slots", offsetof(WfsGpuContext, warp_slots))       \
    X("WfsGpuContext.lane_bytes", offsetof(WfsGpuContext, lane_bytes))       \
    X("WfsGpuContext.ring", offsetof(WfsGpuContext, ring))                   \
    X("WfsGpuContext.slots", offsetof(WfsGpuContext, slots))                 \
    X("WfsGpuContext.ring_mask", offsetof(WfsGpuContext, ring_mask))         \
    X("WfsGpuContext.completions", offsetof(WfsGpuContext, completions))     \
    X("WfsGpuContext.data", offsetof(WfsGpuContext, data))                   \
    X("WfsGpuContext.control", offsetof(WfsGpuContext, control))             \
    X("WfsGpuContext.state", offsetof(WfsGpuContext, state))                 \
    X("WfsGpuContext.timeout_ns", offsetof(WfsGpuContext, timeout_ns))       \
    X("sizeof(WfsGpuControl)", sizeof(WfsGpuControl))                        \
    X("WfsGpuControl.closing", offsetof(WfsGpuControl, closing))             \
    X("sizeof(WfsGpuState)", sizeof(WfsGpuState))                            \
    X("WfsGpuState.claim", offsetof(WfsGpuState, claim))                     \
    X("WfsGpuState.tail_max", offsetof(WfsGpuState, tail_max))               \
    X("WfsGpuState.dirty", offsetof(WfsGpuState, dirty))                        \
    X("WfsGpuState.pclaim", offsetof(WfsGpuState, pclaim))                      \
    X("WfsGpuState.clock", offsetof(WfsGpuState, clock))                        \
    X("WfsGpuState.fresh", offsetof(WfsGpuState, fresh))                        \
    X("WfsGpuState.errors", offsetof(WfsGpuState, errors))                      \
    X("WfsGpuContext.cache", offsetof(WfsGpuContext, cache))                    \
    X("WfsGpuContext.prefetch_ring", offsetof(WfsGpuContext, prefetch_ring))    \
    X("WfsGpuContext.prefetch_slots", offsetof(WfsGpuContext, prefetch_slots))  \
    X("WfsGpuContext.async_first", offsetof(WfsGpuContext, async_first))        \
    X("WfsGpuContext.async_count", offsetof(WfsGpuContext, async_count))        \
    X("WfsGpuContext.sink", offsetof(WfsGpuContext, sink))                      \
    X("WfsGpuContext.tier_page_shift", offsetof(WfsGpuContext, tier_page_shift)) \
    X("WfsGpuContext.tier", offsetof(WfsGpuContext, tier))                      \
    X("WfsGpuContext.tier_bytes", offsetof(WfsGpuContext, tier_bytes))          \
    X("WfsGpuContext.handed", offsetof(WfsGpuContext, handed))                  \
    X("WfsGpuContext.views", offsetof(WfsGpuContext, views))                    \
    X("WfsGpuContext.view_slots", offsetof(WfsGpuContext, view_slots))          \
    X("sizeof(WfsFileView)", sizeof(WfsFileView))                               \
    X("WfsFileView.addr", offsetof(WfsFileView, addr))                          \
    X("WfsFileView.len", offsetof(WfsFileView, len))                            \
    X("WfsFileView.fh", offsetof(WfsFileView, fh))                              \
    X("sizeof(WfsGpuCache)", sizeof(WfsGpuCache))                               \
    X("WfsGpuCache.page_shift", offsetof(WfsGpuCache, page_shift))              \
    X("WfsGpuCache.frames", offsetof(WfsGpuCache, frames))                      \
    X("WfsGpuCache.probe", offsetof(WfsGpuCache, probe))                        \
    X("WfsGpuCache.bucket_mask", offsetof(WfsGpuCache, bucket_mask))            \
    X("WfsGpuCache.lock_mask", offsetof(WfsGpuCache, lock_mask))                \
    X("WfsGpuCache.table", offsetof(WfsGpuCache, table))                        \
    X("WfsGpuCache.state", offsetof(WfsGpuCache, state))                        \
    X("WfsGpuCache.meta", offsetof(WfsGpuCache, meta))                          \
    X("WfsGpuCache.data", offsetof(WfsGpuCache, data))                          \
    X("WfsGpuCache.locks", offsetof(WfsGpuCache, locks))                        \
    X("WfsGpuCache.stats", offsetof(WfsGpuCache, stats))                        \
    X("sizeof(WfsGpuPageMeta)", sizeof(WfsGpuPageMeta))                         \
    X("WfsGpuPageMeta.fh", offsetof(WfsGpuPageMeta, fh))                        \
    X("WfsGpuPageMeta.len", offsetof(WfsGpuPageMeta, len))                      \
    X("WfsGpuPageMeta.word", offsetof(WfsGpuPageMeta, word))                    \
    X("WfsGpuPageMeta.bucket", offsetof(WfsGpuPageMeta, bucket))                \
    X("WfsGpuPageMeta.err", offsetof(WfsGpuPageMeta, err))                      \
    X("sizeof(WfsGpuCacheStats)", sizeof(WfsGpuCacheStats))                     \
    X("WfsGpuCacheStats.misses", offsetof(WfsGpuCacheStats, misses))            \
    X("WfsGpuCacheStats.load_errors", offsetof(WfsGpuCacheStats, load_errors))  \
    X("WfsGpuCacheStats.writeback_errors", offsetof(WfsGpuCacheStats, writeback_errors)) \
    X("WfsGpuCacheStats.in_place", offsetof(WfsGpuCacheStats, in_place))        \
    X("WfsGpuCacheStats.in_place_bytes", offsetof(WfsGpuCacheStats, in_place_bytes))

/* ---- the layout, checked at compile time where the language allows ---- */

WFS_STATIC_ASSERT(sizeof(WfsRequest) == 48, "WfsRequest must be 48 bytes");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsRequest, offset) == 24, "WfsRequest.offset must be at 24");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsRequest, buf) == 40, "WfsRequest.buf must be at 40");
WFS_STATIC_ASSERT(sizeof(WfsSlot) == 64, "WfsSlot must be one 64-byte cache line");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsSlot, req) == 8, "WfsSlot.req must be at 8");
WFS_STATIC_ASSERT(sizeof(WfsCompletion) == 32, "WfsCompletion must be 32 bytes");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsCompletion, result) == 8, "WfsCompletion.result must be at 8");
WFS_STATIC_ASSERT(sizeof(WfsRingHeader) == 192, "WfsRingHeader must be 192 bytes");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsRingHeader, head) == 64, "WfsRingHeader.head must be at 64");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsRingHeader, tail) == 128, "WfsRingHeader.tail must be at 128");
WFS_STATIC_ASSERT(sizeof(WfsGpuContext) == 160, "WfsGpuContext must be 160 bytes");
WFS_STATIC_ASSERT(sizeof(WfsFileView) == 32, "WfsFileView must be 32 bytes");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsGpuContext, ring) == 16, "WfsGpuContext.ring must be at 16");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsGpuContext, state) == 64, "WfsGpuContext.state must be at 64");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsGpuContext, timeout_ns) == 72, "WfsGpuContext.timeout_ns must be at 72");
WFS_STATIC_ASSERT(sizeof(WfsGpuControl) == 64, "WfsGpuControl must be 64 bytes");
WFS_STATIC_ASSERT(sizeof(WfsGpuState) == 256, "WfsGpuState must be 256 bytes");
WFS_STATIC_ASSERT(sizeof(WfsGpuCache) == 128, "WfsGpuCache must be 128 bytes");
WFS_STATIC_ASSERT(sizeof(WfsGpuPageMeta) == 32, "WfsGpuPageMeta must be 32 bytes");
WFS_STATIC_ASSERT(sizeof(WfsGpuCacheStats) == 128, "WfsGpuCacheStats must be 128 bytes");
WFS_STATIC_ASSERT_OFFSET(offsetof(WfsGpuState, dirty) == 16, "WfsGpuState.dirty must be at 16");

#endif /* WARPFS_ABI_H */
