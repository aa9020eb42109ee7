//! The wire format shared by every requester (host agents, CUDA kernels, WGSL shaders) and
//! the daemon. These `#[repr(C)]` records are the one source of truth; `include/warpfs_abi.h`
//! mirrors them and a test fails if a size or field offset drifts.
//!
//! Layout in a shared region (all little-endian, naturally aligned):
//! ring header (192 B) · `capacity` request slots (64 B each) · completion records (32 B each).

/// Version of this wire format; bumped on any layout change.
pub const WFS_ABI_VERSION: u32 = 4;
/// Magic number at the start of a ring header ("WFSR").
pub const WFS_RING_MAGIC: u32 = 0x5753_4652;

/// Read `len` bytes at `offset` of a file into the data region at `buf`.
pub const WFS_OP_READ: u32 = 1;
/// Write `len` bytes from the data region at `buf` to the file at `offset`.
pub const WFS_OP_WRITE: u32 = 2;
/// Make the file's acknowledged writes durable (write back dirty pages, then `fdatasync`).
pub const WFS_OP_FSYNC: u32 = 3;
/// Return the file's size in bytes.
pub const WFS_OP_SIZE: u32 = 4;
/// Hint: bring `[offset, offset+len)` into the cache; served after demand requests.
pub const WFS_OP_PREFETCH: u32 = 5;

/// Completion state: the record is not in use.
pub const WFS_COMP_FREE: u32 = 0;
/// Completion state: a request naming this record is in flight.
pub const WFS_COMP_PENDING: u32 = 1;
/// Completion state: the daemon wrote `result`; the requester may read it.
pub const WFS_COMP_DONE: u32 = 2;
/// Completion state: a completer has claimed the pending record (one CAS from PENDING) and is
/// writing `result` and `aux`; DONE follows (or PENDING again if the ticket did not match).
/// Transient: requesters wait for DONE and never store over it.
pub const WFS_COMP_CLAIMED: u32 = 3;
/// Bit or-ed into a PENDING or CLAIMED state by a host requester that sleeps on the word
/// (futex).
pub const WFS_COMP_SLEEPING: u32 = 0x8000_0000;
/// Largest `offset + len` a read or write may name (4 EiB); beyond it the daemon answers
/// `-EINVAL`. It keeps whole-page arithmetic clear of `off_t` overflow (a page ending at 2^63
/// is refused by the kernel) and is the bound the device API checks too.
pub const WFS_MAX_END: u64 = 1 << 62;

/// One request, as a requester writes it into a ring slot.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WfsRequest {
    /// One of the `WFS_OP_*` codes.
    pub op: u32,
    /// Reserved for per-request flags; must be 0.
    pub flags: u32,
    /// File handle granted by the host (a capability; paths never cross).
    pub handle: u32,
    /// Index of the completion record that receives the outcome.
    pub completion: u32,
    /// Requester's stamp, echoed in the completion so a stale record is never mistaken.
    pub ticket: u32,
    /// Reserved; must be 0.
    pub reserved: u32,
    /// Byte offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// Byte offset of the data buffer inside the channel's data region.
    pub buf: u64,
}

/// A ring slot: Vyukov sequence word followed by the request, one cache line.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct WfsSlot {
    /// Publication sequence: `pos` when free for the producer at `pos`, `pos + 1` once published.
    pub seq: u64,
    /// The request.
    pub req: WfsRequest,
}

/// Outcome of one request.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WfsCompletion {
    /// One of the `WFS_COMP_*` states (possibly with `WFS_COMP_SLEEPING`).
    pub state: u32,
    /// Copy of the request's `ticket`.
    pub ticket: u32,
    /// Bytes transferred (or file size for SIZE), or a negative errno.
    pub result: i64,
    /// Op-specific extra word (reserved, 0 today).
    pub aux: u64,
    /// Padding to 32 bytes.
    pub reserved: u64,
}

/// Ring header: geometry, then consumer and producer cursors on their own cache lines.
#[repr(C, align(64))]
#[derive(Debug, Default)]
pub struct WfsRingHeader {
    /// `WFS_RING_MAGIC`.
    pub magic: u32,
    /// `WFS_ABI_VERSION`.
    pub version: u32,
    /// Number of slots (a power of two).
    pub capacity: u32,
    /// `capacity - 1`.
    pub mask: u32,
    /// Padding to the end of the first cache line.
    pub pad0: [u64; 6],
    /// Next position a consumer takes.
    pub head: u64,
    /// Padding to the end of the second cache line.
    pub pad1: [u64; 7],
    /// Next position a producer claims.
    pub tail: u64,
    /// Padding to the end of the third cache line.
    pub pad2: [u64; 7],
}

/// Magic number at the start of a [`WfsGpuContext`] ("WFSG").
pub const WFS_GPU_CTX_MAGIC: u32 = 0x5753_4647;

/// What a CUDA kernel is handed (by device pointer) to reach one GPU channel: device addresses
/// of the channel's parts and their geometry. Written once by the runtime
/// (`backend::cuda::gpu_io`); kernels only read it. `include/warpfs.cuh` uses it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WfsGpuContext {
    /// `WFS_GPU_CTX_MAGIC`.
    pub magic: u32,
    /// `WFS_ABI_VERSION`.
    pub version: u32,
    /// Request groups: each owns 32 completion records and 32 lane buffers.
    pub warp_slots: u32,
    /// Bytes of data buffer per completion record (larger requests are split).
    pub lane_bytes: u32,
    /// Device address of the demand ring's [`WfsRingHeader`] (mapped host memory).
    pub ring: u64,
    /// Device address of the demand ring's first [`WfsSlot`].
    pub slots: u64,
    /// Slots in the demand ring minus one.
    pub ring_mask: u64,
    /// Device address of completion record 0 (mapped host memory).
    pub completions: u64,
    /// Device address of byte 0 of the data region (mapped host memory).
    pub data: u64,
    /// Device address of the [`WfsGpuControl`] block (mapped host memory).
    pub control: u64,
    /// Device address of the [`WfsGpuState`] block (device memory).
    pub state: u64,
    /// Longest wait of one call, in ns, before it returns `-ETIMEDOUT`.
    pub timeout_ns: u64,
    /// Device address of the [`WfsGpuCache`] descriptor (device memory); 0 = no GPU page cache.
    pub cache: u64,
    /// Device address of the prefetch ring's [`WfsRingHeader`] (mapped host memory).
    pub prefetch_ring: u64,
    /// Device address of the prefetch ring's first [`WfsSlot`] (same mask as the demand ring).
    pub prefetch_slots: u64,
    /// First completion record of the async pool (`wfs_read_async`).
    pub async_first: u32,
    /// Completion records in the async pool (each with its `lane_bytes` buffer).
    pub async_count: u32,
    /// A completion record never armed: prefetch hints name it, so nobody waits for them.
    pub sink: u32,
    /// log2 of the host cache tier's page size (0 when `tier` is 0).
    pub tier_page_shift: u32,
    /// Device address of the host cache tier's arena (mapped pinned host memory), 0 when the
    /// tier is not mapped: a read answered with `aux = page + 1` then copies from page `page`
    /// of it instead of the lane buffer.
    pub tier: u64,
    /// Bytes of the tier arena mapped at `tier`.
    pub tier_bytes: u64,
    /// Device address of the demand ring's hand-back mirror (device memory): one 64-bit word
    /// per slot, the position the slot may next be written for. A lane that sees its request
    /// DONE stores `position + slots` there (the daemon handed the slot back before it
    /// completed the request), so the next lap's requester finds its slot free without a
    /// PCIe read of the slot's sequence word; on a mismatch it reads that word as before.
    pub handed: u64,
    /// Device address of `view_slots` [`WfsFileView`] records (device memory): files the
    /// device may read in place (`GpuIo::map_file`); slot `handle % view_slots`.
    pub views: u64,
    /// Records at `views` (0: no file views).
    pub view_slots: u32,
    /// Reserved; 0.
    pub reserved: u32,
}

/// Slots of the file-view table of a GPU channel ([`WfsGpuContext::views`]).
pub const WFS_VIEW_SLOTS: u32 = 64;

/// A registered file the device can read in place (`GpuIo::map_file`): its page-cache pages,
/// mapped read-only and pinned, at a device address. Written by the runtime between kernels;
/// kernels only read it. `fh` 0 marks a free slot (no valid handle is 0).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WfsFileView {
    /// Device address of file byte 0.
    pub addr: u64,
    /// Bytes readable at `addr` (the file's size when it was mapped).
    pub len: u64,
    /// The file's handle; 0: slot free.
    pub fh: u32,
    /// Reserved; 0.
    pub reserved: u32,
    /// Reserved; 0.
    pub reserved2: u64,
}

/// Host-written words that GPU requesters read (mapped host memory, one cache line).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WfsGpuControl {
    /// Non-zero once the runtime shuts the channel down: waiting calls return `-ESHUTDOWN`.
    pub closing: u32,
    /// Reserved; 0.
    pub reserved: u32,
    /// Reserved; 0.
    pub pad: [u64; 7],
}

/// GPU-private bookkeeping in device memory (zeroed by the runtime), followed by
/// `warp_slots` 32-bit busy words (0 free, 1 held, 2 retired after a timed-out request) and
/// `async_count` more for the async pool. Hot words sit on their own 64-byte lines.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WfsGpuState {
    /// Demand-ring positions claimed so far (device-memory `atomicAdd`; see `gpu_io`).
    pub claim: u64,
    /// Highest claimed end published to the ring header's `tail` (device-memory `atomicMax`).
    pub tail_max: u64,
    /// GPU page-cache frames marked dirty by `wfs_array::set` and not yet taken for write-back
    /// (device atomics); `wfs_fsync` and `GpuIo::flush` skip their scan of the frames at 0.
    pub dirty: u32,
    /// Rotating start of the search for a free async record.
    pub async_hint: u32,
    /// Padding to 64 bytes.
    pub pad0: [u64; 5],
    /// Prefetch-ring positions claimed so far.
    pub pclaim: u64,
    /// Highest claimed end published to the prefetch ring header's `tail`.
    pub ptail_max: u64,
    /// Padding to 128 bytes.
    pub pad1: [u64; 6],
    /// CLOCK hand of the GPU page cache (frames scanned so far).
    pub clock: u64,
    /// Frames of the GPU page cache handed out fresh (never used before) so far; the CLOCK
    /// hand runs only once this reaches the frame count.
    pub fresh: u64,
    /// Padding to 192 bytes.
    pub pad2: [u64; 6],
    /// Errors counted by the device API (`wfs_errors`: failed array element reads).
    pub errors: u64,
    /// Padding to 256 bytes.
    pub pad3: [u64; 7],
}

/// Magic number at the start of a [`WfsGpuCache`] ("WFSC").
pub const WFS_GPU_CACHE_MAGIC: u32 = 0x5753_4643;
/// Statistics stripes of the GPU page cache (a warp adds to stripe `(smid × 8 + warp slot mod 8) % STRIPES`,
/// so few warps share one 64-byte line).
pub const WFS_GPU_CACHE_STRIPES: u32 = 1024;

/// Descriptor of a GPU page cache in device memory (written once by the runtime; kernels read
/// it). Every address is device memory.
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WfsGpuCache {
    /// `WFS_GPU_CACHE_MAGIC`.
    pub magic: u32,
    /// log2 of the page size.
    pub page_shift: u32,
    /// Page frames.
    pub frames: u32,
    /// Buckets per page-table group (a key lives in any bucket of the group its hash names);
    /// must be 16 (`WFS_TABLE_GROUP`), or kernels use no cache.
    pub probe: u32,
    /// Page-table buckets minus one (a power of two minus one).
    pub bucket_mask: u64,
    /// Insert locks minus one (a power of two minus one).
    pub lock_mask: u64,
    /// Page table: `bucket_mask + 1` 64-bit words (0 empty, all ones deleted, else
    /// `(frame + 1) << 32 | tag`).
    pub table: u64,
    /// One 32-bit state word per frame (pin count + flags).
    pub state: u64,
    /// One [`WfsGpuPageMeta`] per frame.
    pub meta: u64,
    /// Frame data: `frames << page_shift` bytes.
    pub data: u64,
    /// `lock_mask + 1` 32-bit insert locks.
    pub locks: u64,
    /// `WFS_GPU_CACHE_STRIPES` [`WfsGpuCacheStats`] records.
    pub stats: u64,
    /// Reserved; 0.
    pub reserved: [u64; 6],
}

/// What a page frame holds (device memory; changed only by the thread that owns the frame).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WfsGpuPageMeta {
    /// Page index in the file.
    pub page: u64,
    /// File handle.
    pub fh: u32,
    /// Valid bytes from the page start (short at end of file).
    pub len: u32,
    /// The page-table word that points at this frame.
    pub word: u64,
    /// The page-table bucket holding `word`.
    pub bucket: u32,
    /// Negative errno of a failed load (read by the load's waiters).
    pub err: i32,
}

/// One stripe of GPU page-cache statistics (device memory; the host sums the stripes).
#[repr(C, align(64))]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WfsGpuCacheStats {
    /// Lane accesses served by a page already in the cache.
    pub hits: u64,
    /// Pages loaded from the daemon (one request each).
    pub misses: u64,
    /// Lane accesses served by a load another lane or warp made (warp and cross-warp
    /// coalescing).
    pub coalesced: u64,
    /// Valid pages evicted by the CLOCK hand.
    pub evictions: u64,
    /// Bytes loaded into the cache.
    pub bytes_loaded: u64,
    /// Lane accesses read around the cache (no frame free within the bounded search).
    pub bypassed: u64,
    /// Cached pages updated by a write-through `wfs_write`.
    pub write_patches: u64,
    /// Page loads that failed (the error went to every waiter).
    pub load_errors: u64,
    /// Dirty pages (`wfs_array::set`) written back to their file: on eviction, `wfs_fsync`,
    /// `GpuIo::flush` and shutdown.
    pub writebacks: u64,
    /// Write-backs that failed (the page's changes are dropped; counted in `wfs_errors` too).
    pub writeback_errors: u64,
    /// Lane accesses read in place from a file view (`GpuIo::map_file`) instead of a frame:
    /// misses of a full cache, which a view-backed array does not evict for.
    pub in_place: u64,
    /// Bytes element reads (`wfs_array` `operator[]`) read in place.
    pub in_place_bytes: u64,
}

/// Sizes and field offsets of every wire record, in the order `include/warpfs_abi.h`'s
/// `WFS_LAYOUT` table lists them; the drift test compares the two.
pub fn layout_table() -> Vec<(&'static str, usize)> {
    use core::mem::{offset_of, size_of};
    vec![
        ("sizeof(WfsRequest)", size_of::<WfsRequest>()),
        ("WfsRequest.op", offset_of!(WfsRequest, op)),
        ("WfsRequest.flags", offset_of!(WfsRequest, flags)),
        ("WfsRequest.handle", offset_of!(WfsRequest, handle)),
        ("WfsRequest.completion", offset_of!(WfsRequest, completion)),
        ("WfsRequest.ticket", offset_of!(WfsRequest, ticket)),
        ("WfsRequest.reserved", offset_of!(WfsRequest, reserved)),
        ("WfsRequest.offset", offset_of!(WfsRequest, offset)),
        ("WfsRequest.len", offset_of!(WfsRequest, len)),
        ("WfsRequest.buf", offset_of!(WfsRequest, buf)),
        ("sizeof(WfsSlot)", size_of::<WfsSlot>()),
        ("WfsSlot.seq", offset_of!(WfsSlot, seq)),
        ("WfsSlot.req", offset_of!(WfsSlot, req)),
        ("sizeof(WfsCompletion)", size_of::<WfsCompletion>()),
        ("WfsCompletion.state", offset_of!(WfsCompletion, state)),
        ("WfsCompletion.ticket", offset_of!(WfsCompletion, ticket)),
        ("WfsCompletion.result", offset_of!(WfsCompletion, result)),
        ("WfsCompletion.aux", offset_of!(WfsCompletion, aux)),
        ("sizeof(WfsRingHeader)", size_of::<WfsRingHeader>()),
        ("WfsRingHeader.magic", offset_of!(WfsRingHeader, magic)),
        ("WfsRingHeader.version", offset_of!(WfsRingHeader, version)),
        (
            "WfsRingHeader.capacity",
            offset_of!(WfsRingHeader, capacity),
        ),
        ("WfsRingHeader.mask", offset_of!(WfsRingHeader, mask)),
        ("WfsRingHeader.head", offset_of!(WfsRingHeader, head)),
        ("WfsRingHeader.tail", offset_of!(WfsRingHeader, tail)),
        ("sizeof(WfsGpuContext)", size_of::<WfsGpuContext>()),
        ("WfsGpuContext.magic", offset_of!(WfsGpuContext, magic)),
        ("WfsGpuContext.version", offset_of!(WfsGpuContext, version)),
        (
            "WfsGpuContext.warp_slots",
            offset_of!(WfsGpuContext, warp_slots),
        ),
        (
            "WfsGpuContext.lane_bytes",
            offset_of!(WfsGpuContext, lane_bytes),
        ),
        ("WfsGpuContext.ring", offset_of!(WfsGpuContext, ring)),
        ("WfsGpuContext.slots", offset_of!(WfsGpuContext, slots)),
        (
            "WfsGpuContext.ring_mask",
            offset_of!(WfsGpuContext, ring_mask),
        ),
        (
            "WfsGpuContext.completions",
            offset_of!(WfsGpuContext, completions),
        ),
        ("WfsGpuContext.data", offset_of!(WfsGpuContext, data)),
        ("WfsGpuContext.control", offset_of!(WfsGpuContext, control)),
        ("WfsGpuContext.state", offset_of!(WfsGpuContext, state)),
        (
            "WfsGpuContext.timeout_ns",
            offset_of!(WfsGpuContext, timeout_ns),
        ),
        ("sizeof(WfsGpuControl)", size_of::<WfsGpuControl>()),
        ("WfsGpuControl.closing", offset_of!(WfsGpuControl, closing)),
        ("sizeof(WfsGpuState)", size_of::<WfsGpuState>()),
        ("WfsGpuState.claim", offset_of!(WfsGpuState, claim)),
        ("WfsGpuState.tail_max", offset_of!(WfsGpuState, tail_max)),
        ("WfsGpuState.dirty", offset_of!(WfsGpuState, dirty)),
        ("WfsGpuState.pclaim", offset_of!(WfsGpuState, pclaim)),
        ("WfsGpuState.clock", offset_of!(WfsGpuState, clock)),
        ("WfsGpuState.fresh", offset_of!(WfsGpuState, fresh)),
        ("WfsGpuState.errors", offset_of!(WfsGpuState, errors)),
        ("WfsGpuContext.cache", offset_of!(WfsGpuContext, cache)),
        (
            "WfsGpuContext.prefetch_ring",
            offset_of!(WfsGpuContext, prefetch_ring),
        ),
        (
            "WfsGpuContext.prefetch_slots",
            offset_of!(WfsGpuContext, prefetch_slots),
        ),
        (
            "WfsGpuContext.async_first",
            offset_of!(WfsGpuContext, async_first),
        ),
        (
            "WfsGpuContext.async_count",
            offset_of!(WfsGpuContext, async_count),
        ),
        ("WfsGpuContext.sink", offset_of!(WfsGpuContext, sink)),
        (
            "WfsGpuContext.tier_page_shift",
            offset_of!(WfsGpuContext, tier_page_shift),
        ),
        ("WfsGpuContext.tier", offset_of!(WfsGpuContext, tier)),
        (
            "WfsGpuContext.tier_bytes",
            offset_of!(WfsGpuContext, tier_bytes),
        ),
        ("WfsGpuContext.handed", offset_of!(WfsGpuContext, handed)),
        ("WfsGpuContext.views", offset_of!(WfsGpuContext, views)),
        (
            "WfsGpuContext.view_slots",
            offset_of!(WfsGpuContext, view_slots),
        ),
        ("sizeof(WfsFileView)", size_of::<WfsFileView>()),
        ("WfsFileView.addr", offset_of!(WfsFileView, addr)),
        ("WfsFileView.len", offset_of!(WfsFileView, len)),
        ("WfsFileView.fh", offset_of!(WfsFileView, fh)),
        ("sizeof(WfsGpuCache)", size_of::<WfsGpuCache>()),
        (
            "WfsGpuCache.page_shift",
            offset_of!(WfsGpuCache, page_shift),
        ),
        ("WfsGpuCache.frames", offset_of!(WfsGpuCache, frames)),
        ("WfsGpuCache.probe", offset_of!(WfsGpuCache, probe)),
        (
            "WfsGpuCache.bucket_mask",
            offset_of!(WfsGpuCache, bucket_mask),
        ),
        ("WfsGpuCache.lock_mask", offset_of!(WfsGpuCache, lock_mask)),
        ("WfsGpuCache.table", offset_of!(WfsGpuCache, table)),
        ("WfsGpuCache.state", offset_of!(WfsGpuCache, state)),
        ("WfsGpuCache.meta", offset_of!(WfsGpuCache, meta)),
        ("WfsGpuCache.data", offset_of!(WfsGpuCache, data)),
        ("WfsGpuCache.locks", offset_of!(WfsGpuCache, locks)),
        ("WfsGpuCache.stats", offset_of!(WfsGpuCache, stats)),
        ("sizeof(WfsGpuPageMeta)", size_of::<WfsGpuPageMeta>()),
        ("WfsGpuPageMeta.fh", offset_of!(WfsGpuPageMeta, fh)),
        ("WfsGpuPageMeta.len", offset_of!(WfsGpuPageMeta, len)),
        ("WfsGpuPageMeta.word", offset_of!(WfsGpuPageMeta, word)),
        ("WfsGpuPageMeta.bucket", offset_of!(WfsGpuPageMeta, bucket)),
        ("WfsGpuPageMeta.err", offset_of!(WfsGpuPageMeta, err)),
        ("sizeof(WfsGpuCacheStats)", size_of::<WfsGpuCacheStats>()),
        (
            "WfsGpuCacheStats.misses",
            offset_of!(WfsGpuCacheStats, misses),
        ),
        (
            "WfsGpuCacheStats.load_errors",
            offset_of!(WfsGpuCacheStats, load_errors),
        ),
        (
            "WfsGpuCacheStats.writeback_errors",
            offset_of!(WfsGpuCacheStats, writeback_errors),
        ),
        (
            "WfsGpuCacheStats.in_place",
            offset_of!(WfsGpuCacheStats, in_place),
        ),
        (
            "WfsGpuCacheStats.in_place_bytes",
            offset_of!(WfsGpuCacheStats, in_place_bytes),
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_have_the_documented_sizes() {
        assert_eq!(core::mem::size_of::<WfsRequest>(), 48);
        assert_eq!(core::mem::size_of::<WfsSlot>(), 64);
        assert_eq!(core::mem::size_of::<WfsCompletion>(), 32);
        assert_eq!(core::mem::size_of::<WfsRingHeader>(), 192);
        assert_eq!(core::mem::size_of::<WfsGpuContext>(), 160);
        assert_eq!(core::mem::size_of::<WfsFileView>(), 32);
        assert_eq!(core::mem::size_of::<WfsGpuControl>(), 64);
        assert_eq!(core::mem::size_of::<WfsGpuState>(), 256);
        assert_eq!(core::mem::size_of::<WfsGpuCache>(), 128);
        assert_eq!(core::mem::size_of::<WfsGpuPageMeta>(), 32);
        assert_eq!(core::mem::size_of::<WfsGpuCacheStats>(), 128);
    }
}
