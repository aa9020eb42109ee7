//! GPU-initiated I/O: CUDA kernels call `wfs_read` / `wfs_write` / `wfs_fsync` / `wfs_size`
//! (`include/warpfs.cuh`) and the runtime's daemon serves them.
//!
//! # Memory placement
//!
//! | what | where | written by |
//! |---|---|---|
//! | demand ring (header + 64 B slots), completion records, data region (`lane_bytes` per record) | one [`MappedHostMemory`] region, laid out as a [`Channel`] | GPU: requests, record arming, write data · daemon: completions, read data |
//! | [`WfsGpuControl`] (`closing`) | same region, after the channel | host |
//! | [`WfsGpuState`] (claim counter, tail maximum, group busy words) | device memory | GPU only |
//! | [`WfsGpuContext`] (addresses + geometry) | device memory | host, once |
//!
//! # Protocol (no atomics on host memory)
//!
//! Atomics from the GPU on mapped host memory need PCIe AtomicOps end to end, which a VM or a
//! root port may lack (`CU_DEVICE_ATTRIBUTE_HOST_NATIVE_ATOMIC_SUPPORTED` is 0 over PCIe). So
//! every GPU atomic here is on device memory, and host memory sees only loads and stores:
//!
//! 1. The lanes of a warp that call together form a group (its mask is taken where the user
//!    calls, and passed in; votes are masked to it — see `vote` in warpfs.cuh for why); its
//!    leader takes a free *request group* (32 completion records + 32 lane buffers) with an
//!    acquire CAS on a device-memory busy word, starting at a group hashed from the warp's
//!    (SM, warp slot) place, and releases it with a release store when the call ends. The
//!    closing word (a PCIe read) is read only while something waits, not on every call.
//! 2. Each posting lane claims its own ring position with a device-memory `atomicAdd` on
//!    [`WfsGpuState::claim`] (this replaces the host ring's CAS on `tail`), so a claimed position
//!    is always armed and published by the lane that holds it.
//! 3. Each lane waits until its slot's sequence word equals its position (the daemon handed it
//!    back — the Vyukov protocol of [`crate::ring`]) — unless the ring's hand-back mirror in
//!    device memory ([`WfsGpuContext::handed`]) already says so: the lane that saw the previous
//!    lap's request DONE stored `position + slots` there with a release (the daemon hands a slot
//!    back before it completes the request it held), so the usual claim costs a device-memory
//!    load instead of a PCIe round trip, and any other value falls back to the sequence word
//!    (`tests/gpu_ring_protocol.rs` models it). It then arms its record (state PENDING and ticket =
//!    low 32 bits of its position in one 64-bit store, so a stale completer that claims the
//!    new PENDING sees the new ticket), writes the request and publishes `pos + 1` with a
//!    system-scope release store: one system-scope release per request. The daemon pops with
//!    [`crate::ring::Ring::try_pop_many`] / [`crate::ring::Ring::try_pop`], as for host rings.
//! 4. The leader stores an advisory `tail` into the ring header (only the daemon's idle check
//!    and its garbage guard read it): the largest device-memory maximum its lanes' `atomicMax`
//!    returned, one relaxed store (`ROBUSTNESS.md` finding 16).
//! 5. Each lane polls its record's first 16 bytes (state and result) with one system-scope
//!    acquire load (`__nanosleep` backoff doubling to 8 µs), bounded by the timeout
//!    (`-ETIMEDOUT`) and the `closing` word (`-ESHUTDOWN`; finding 17 says why one load is
//!    enough).
//! 6. The group copies data between lane buffers and user memory cooperatively (16-byte
//!    coalesced accesses, cache-bypassing loads of host memory, eight in flight per lane);
//!    requests larger than `lane_bytes` loop.
//!
//! # Three tiers
//!
//! A GPU miss (of the GPU page cache, or any `wfs_read_direct`) goes to the daemon, which
//! serves it from the runtime's pinned host cache tier when the page is there (no file I/O)
//! and from the I/O engine otherwise. A tier hit is copied by the daemon into the lane buffer,
//! where the GPU reads it. With [`GpuIoConfig::map_host_tier`] the tier is mapped into the
//! device instead and a one-page hit is answered by reference (`aux` = tier page + 1; the
//! daemon holds the page's pin in the channel's [`crate::cache_refs::CacheRefs`] until the
//! record is reused or the GPU marks it FREE after its copy): no daemon copy, but on the H100
//! machine random 4 KiB reads ran at about half the rate (the GPU's reads of tier pages in
//! host DRAM take longer than of lane buffers the daemon just wrote, which sit in the CPU's
//! cache), so it is off by default. `warpfs bench --backend cuda` sizes the tier to hold the
//! file when memory allows and loads it first ([`Runtime::load_into_cache`]); `--tier-refs`
//! turns the mapping on.
//!
//! # File views: misses without the daemon
//!
//! [`GpuIo::map_file`] maps a read-only registered file into the device (its page-cache pages,
//! pinned: [`FileView`]) and lists it in the context's view table. `wfs_array`s of that file
//! then serve their own misses: a page load is a copy from the view by the whole warp, and a
//! miss that finds every frame used reads the element (or, for `pin`, the rest of the page) in
//! place over PCIe instead of evicting, since for data read about once an eviction and a 4 KiB
//! load cost more than the bytes wanted. No request, no daemon round trip, no fence of the
//! insert path for those reads. On the H100 machine the k26 BFS with a 25% GPU cache went from
//! about 5.2 s (every miss through the daemon) to 0.35–0.44 s (bench/RESULTS.md, session 13).
//! The cost is pinning the file (0.4–0.7 s for 8.3 GiB in the page cache there; a cold file is
//! read from the disk first). `wfs_read` and `wfs_read_direct` still go to the daemon.
//!
//! The ring has at least as many slots as there are records, so a lane waits in step 3 only
//! for the instant between the daemon's head CAS and its hand-back store. A request group whose
//! request timed out is retired (busy word 2), never reused: the daemon may still write its
//! buffer. The daemon validates every field exactly as for host requesters ([`crate::daemon`]).
//! `tests/gpu_ring_protocol.rs` stress-tests steps 2–4 against the real consumer on the host.
//!
//! # GPU page cache (`gpu_cache`, `include/warpfs.cuh`)
//!
//! Device memory: a page table of 16-bucket groups (a key in any bucket of its hash's group,
//! loaded whole by a lookup; 2+ buckets per frame; words EMPTY / TOMB / `(frame+1) << 32 | tag`), one 32-bit state word
//! per frame (pin count + REF/VALID/LOADING/BUSY/ERROR), per-frame metadata (fh, page, valid
//! length, table word, error), a CLOCK hand, insert locks, statistics stripes.
//! - Lookups are lock-free: pin (`atom.acquire.gpu` add), then check the frame's key; a stale
//!   or colliding entry is unpinned and skipped.
//! - A miss claims a victim with CLOCK (unpinned, REF clear; at most two sweeps — then the
//!   access reads around the cache, counted `bypassed`, never waits for a frame), then under
//!   the key's insert lock (held for a few device-memory operations, never across a wait)
//!   re-checks and lists the frame LOADING, pinned by the loader.
//! - Warp coalescing: `__match_any_sync` on (fh, page) elects one leader per page; the loaders
//!   of a warp post their loads together (one request per page). Cross-warp: a thread finding
//!   a page LOADING pins it and polls its state word; only the loader waits on the daemon.
//! - `wfs_write` is write-through and write-allocate (`cached_write` in warpfs.cuh): a range of
//!   up to 64 KiB is written a page at a time; for each page the warp's writers first hold it
//!   in the cache (coalesced per page, loaded if absent) and its leader flags it WRITING once
//!   no write-back of it is in flight — all or nothing per warp, else everything is let go and
//!   tried again — so no write-back of the page can start while the write-through is in flight;
//!   then the bytes go to the daemon, are copied into the held frame, and the flag and pins go.
//!   A dirty frame's later write-back carries the written bytes, so a write-through never
//!   races a write-back of stale bytes (`writes_and_sets_sharing_pages_all_reach_the_file`).
//!   Larger ranges, and pages that cannot be held by the deadline, are written through and
//!   then patched into any cached copy (marked dirty), which leaves that race open for them.
//! - `wfs_array::set` is write-back: lanes store into the frame (a miss loads the page first;
//!   with no frame free the set waits for one, writing through only after the deadline) and
//!   the page is marked DIRTY. CLOCK never evicts a dirty frame: the claimer takes one (clears
//!   DIRTY, sets WB, pins it, in one acquire CAS; one write-back in flight per frame) and writes
//!   it back after dropping its insert lock. `wfs_fsync` writes back every dirty frame (of every
//!   file) before its FSYNC; [`GpuIo::flush`], `invalidate_cache` and shutdown launch
//!   [`WRITE_BACK_KERNEL`] when the device's dirty count is non-zero.
//! - Async: `wfs_read_async` takes a record of the async pool (device-memory busy word),
//!   posts one request, returns `(index << 32) | position`; `wfs_wait` polls it and copies.
//! - Prefetch: `wfs_prefetch` posts into the prefetch ring (own claim counter), naming the
//!   never-armed sink record, and drops the hint when the ring is half full.
//!
//! # Not done yet (issue 4)
//!
//! - `wfs_write` ranges over 64 KiB (and pages that cannot be held by the deadline) are
//!   written through unguarded: a dirty frame of their pages written back while the
//!   write-through is in flight can still put old bytes over it (see `wfs_write` above).
//! - A lane that times out waiting for its ring slot leaves its claimed position unpublished,
//!   and the daemon's `Ring::try_pop` stops there: every claimed position must be published
//!   (e.g. as a no-op record) or skipped by the daemon after a deadline.
//! - Kernel traps: on driver 580 a kernel fault leaves every context of the process unusable,
//!   even after a reset (ROBUSTNESS.md finding 12), so `super::recover` cannot bring the same
//!   process back. [`GpuIo::connect`] runs the GPU side in a process of its own, served by a
//!   daemon in another ([`crate::serve`]): a fault ends that client only, and the next
//!   process connects to a fresh channel (`tests/cuda_faults.rs`).

use super::driver::{check, Context, CudaError, DeviceBuffer};
use super::gpu_cache::{self, GpuCacheMemory, GpuCacheStats};
use super::mapped::{FileView, MappedHostMemory, RegisteredHostMemory, SharedHostMapping};
use crate::abi::{self, WfsGpuContext, WfsGpuControl, WfsGpuState};
use crate::cache_refs::RefMode;
use crate::channel::{Channel, ChannelConfig};
use crate::error::{Error, Result};
use crate::region::SharedMemory;
use crate::runtime::Runtime;
use crate::serve::{ChannelLease, Command};
use cudarc::driver::sys;
use std::ffi::{c_void, CString};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// The device API header, embedded so kernels compile wherever the binary runs.
pub const WARPFS_CUH: &str = include_str!("../../../../../include/warpfs.cuh");
/// The wire-format header `warpfs.cuh` includes.
pub const WARPFS_ABI_H: &str = include_str!("../../../../../include/warpfs_abi.h");

/// Geometry and limits of a GPU channel.
#[derive(Debug, Clone)]
pub struct GpuIoConfig {
    /// Device ordinal.
    pub device: usize,
    /// Request groups (each: 32 completion records and 32 lane buffers). Warps beyond this
    /// many calling at once wait for a free group (bounded by `timeout`).
    pub warp_slots: usize,
    /// Data buffer bytes per completion record (a multiple of 16); larger requests are split.
    pub lane_bytes: usize,
    /// Longest a device call may wait before it returns `-ETIMEDOUT`.
    pub timeout: Duration,
    /// Bytes of GPU page cache in device memory (`wfs_read`, `wfs_array`); 0 turns it off
    /// (every `wfs_read` is then a daemon request).
    pub gpu_cache_bytes: usize,
    /// Page size of the GPU page cache: a power of two from 4 KiB to 64 KiB.
    pub gpu_page_bytes: usize,
    /// Completion records (each with a `lane_bytes` buffer) for `wfs_read_async`: tickets
    /// outstanding at once.
    pub async_slots: usize,
    /// Map the runtime's host cache tier into the device ([`GpuIo::new`] only), so a read
    /// that hits the tier is answered with the page's place and the GPU copies it straight
    /// from pinned host memory over PCIe, instead of the daemon copying it into the lane
    /// buffer first. Costs registering the tier arena with the device once per process
    /// (about 1 ms per 100 MiB); kernels of this channel can then read every tier page of the
    /// runtime (all files it registered). Off by default: on the H100 machine random 4 KiB
    /// reads were about half as fast this way (the GPU's reads of tier pages in DRAM take
    /// longer than of lane buffers the daemon just wrote, which the CPU's cache still holds;
    /// bench/RESULTS.md, 2026-11-26).
    pub map_host_tier: bool,
}

impl Default for GpuIoConfig {
    fn default() -> Self {
        Self {
            device: 0,
            warp_slots: 1024,
            lane_bytes: 4096,
            timeout: Duration::from_secs(10),
            gpu_cache_bytes: 1 << 30,
            gpu_page_bytes: 4096,
            async_slots: 4096,
            map_host_tier: false,
        }
    }
}

/// A GPU channel served by a [`Runtime`]'s daemon: kernels compiled by
/// [`GpuIo::compile`] and handed [`GpuIo::context_ptr`] do file I/O through it.
///
/// Dropping it (or [`GpuIo::shutdown`]) stops service: waiting device calls return
/// `-ESHUTDOWN`, requests left in the ring are completed with `-ESHUTDOWN`, and running
/// kernels are waited for.
pub struct GpuIo<'rt> {
    service: Service<'rt>,
    ctx: Arc<Context>,
    cfg: GpuIoConfig,
    region: Arc<dyn SharedMemory>,
    control_off: usize,
    state: DeviceBuffer,
    /// The demand ring's hand-back mirror ([`WfsGpuContext::handed`]); held only to stay
    /// allocated while kernels reach it through the context.
    _handed: DeviceBuffer,
    cache: Option<GpuCacheMemory>,
    dev_ctx: DeviceBuffer,
    serving: AtomicBool,
    closed: bool,
    /// The write-back kernel ([`WRITE_BACK_KERNEL`]), compiled the first time a flush finds
    /// dirty pages.
    write_back: std::sync::Mutex<Option<GpuModule>>,
    /// The host cache tier mapped into the device ([`GpuIoConfig::map_host_tier`]); dropped
    /// after the channel is detached (its held tier references released).
    tier: Option<SharedHostMapping>,
    /// The file-view table kernels read ([`WfsGpuContext::views`], `WFS_VIEW_SLOTS` records).
    views: DeviceBuffer,
    /// Files mapped into the device ([`GpuIo::map_file`]), by slot; dropped after shutdown
    /// (no kernel reads them any more).
    file_views: Vec<Option<(u32, FileView)>>,
}

/// Writes back every dirty page of the GPU page cache through the daemon (one launch of
/// `WRITE_BACK_THREADS` threads; each warp scans its share of the frames). Public for the
/// NVRTC compile test.
pub const WRITE_BACK_KERNEL: &str = r#"
#include <warpfs.cuh>
extern "C" __global__ void wfs_write_back_all(const wfs_ctx_t *ctx) {
    const unsigned long long warp = (blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x) / 32;
    wfs_detail::write_back_all(ctx, wfs_detail::cache_of(ctx), 0xFFFFFFFFu, warp * 32,
                               (unsigned long long)gridDim.x * blockDim.x);
}
"#;
/// Threads of the write-back launch (whole warps).
const WRITE_BACK_THREADS: u32 = 1024;

/// Who serves a [`GpuIo`]'s channel.
enum Service<'rt> {
    /// The daemon of a runtime in this process.
    Local {
        rt: &'rt Runtime,
        channel: Arc<Channel>,
    },
    /// The daemon of another process ([`crate::serve`]), through a leased channel.
    Remote(ChannelLease),
}

/// The channel geometry a [`GpuIoConfig`] asks for.
struct Geometry {
    channel: ChannelConfig,
    group_records: usize,
    records: usize,
}

impl Geometry {
    fn of(cfg: &GpuIoConfig) -> Result<Self> {
        if cfg.warp_slots == 0 || cfg.warp_slots > (u32::MAX as usize) / 32 {
            return Err(Error::Config(format!(
                "GpuIoConfig::warp_slots must be 1 ..= {}, got {}",
                u32::MAX / 32,
                cfg.warp_slots
            )));
        }
        if cfg.lane_bytes < 16
            || !cfg.lane_bytes.is_multiple_of(16)
            || cfg.lane_bytes > u32::MAX as usize
        {
            return Err(Error::Config(format!(
                "GpuIoConfig::lane_bytes must be a positive multiple of 16 below 4 GiB, got {}",
                cfg.lane_bytes
            )));
        }
        if cfg.async_slots > (1 << 30) {
            return Err(Error::Config(format!(
                "GpuIoConfig::async_slots must be at most 2^30, got {}",
                cfg.async_slots
            )));
        }
        let group_records = cfg.warp_slots * 32;
        // Request groups, then the async pool, then one never-armed record for prefetch hints.
        let records = group_records + cfg.async_slots + 1;
        let data_bytes = records
            .checked_mul(cfg.lane_bytes)
            .ok_or_else(|| Error::Config("warp_slots × 32 × lane_bytes overflows".into()))?;
        let channel = ChannelConfig {
            ring_capacity: (group_records + cfg.async_slots).max(2).next_power_of_two(),
            completions: records,
            data_bytes,
        };
        channel.layout()?;
        Ok(Self {
            channel,
            group_records,
            records,
        })
    }
}

impl std::fmt::Debug for GpuIo<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuIo")
            .field("cfg", &self.cfg)
            .field("device", &self.ctx.name())
            .finish_non_exhaustive()
    }
}

impl<'rt> GpuIo<'rt> {
    /// Creates the channel in pinned, device-mapped memory, the device-side state and context,
    /// and attaches the channel to `rt`'s daemon. Costs the pinning of
    /// `warp_slots × 32 × lane_bytes` bytes plus rings (128 MiB + 4 MiB by default).
    pub fn new(rt: &'rt Runtime, cfg: GpuIoConfig) -> Result<Self> {
        let geo = Geometry::of(&cfg)?;
        let ctx = Context::new(cfg.device)?;
        let control_off = geo.channel.layout()?.end_page()?;
        let total = control_off + core::mem::size_of::<WfsGpuControl>();
        let region = Arc::new(MappedHostMemory::new(&ctx, total)?);
        let channel = Arc::new(Channel::in_region(
            geo.channel,
            region.clone() as Arc<dyn SharedMemory>,
        )?);
        let tier = if cfg.map_host_tier {
            let cache = rt.host_cache();
            let (ptr, len) = cache.arena();
            let len = len & !4095; // whole pages (the arena starts page aligned)
                                   // SAFETY: the arena lives as long as the runtime's cache, which outlives this
                                   // GpuIo (it borrows `rt` for 'rt) and so the mapping it holds.
            match unsafe { SharedHostMapping::new(&ctx, ptr, len) } {
                Ok(m) => Some((m, cache.page_size())),
                Err(e) => {
                    tracing::warn!(error = %e, "host cache tier not mapped into the device: tier hits are copied by the daemon");
                    None
                }
            }
        } else {
            None
        };
        let service = Service::Local {
            rt,
            channel: channel.clone(),
        };
        let mut io = Self::assemble(service, ctx, cfg, &geo, region, control_off, tier.as_ref())?;
        if let Some((m, _)) = tier {
            // The request groups' records take tier references (the async pool copies from
            // its lane buffers in wfs_wait).
            channel
                .refs
                .set_mode(0..geo.group_records as u32, RefMode::Daemon);
            io.tier = Some(m);
        }
        // Only a complete GpuIo is served (its drop detaches the channel again).
        rt.attach_channel(channel);
        Ok(io)
    }

    /// Like [`GpuIo::new`], but served by the daemon of another process: connects to the
    /// [`crate::serve::ChannelServer`] at `socket`, maps the channel it leases, registers it
    /// with the device (`cuMemHostRegister`) and builds the device-side state here. A kernel
    /// fault in this process then leaves that daemon, its files and its other clients
    /// untouched; a new process connects for the next kernel (driver 580 refuses any further
    /// CUDA work in a process whose kernel faulted — ROBUSTNESS.md finding 12). File handles
    /// are the server's (its `Runtime::open` results). Costs what `new` costs plus a socket
    /// round trip.
    pub fn connect(
        socket: impl AsRef<std::path::Path>,
        cfg: GpuIoConfig,
    ) -> Result<GpuIo<'static>> {
        let geo = Geometry::of(&cfg)?;
        let ctx = Context::new(cfg.device)?;
        let lease =
            ChannelLease::connect(socket, geo.channel, core::mem::size_of::<WfsGpuControl>())?;
        let control_off = lease.placement().control;
        let region = Arc::new(RegisteredHostMemory::new(
            &ctx,
            lease.region().clone() as Arc<dyn SharedMemory>,
        )?);
        GpuIo::assemble(
            Service::Remote(lease),
            ctx,
            cfg,
            &geo,
            region,
            control_off,
            None,
        )
    }

    /// Device-side state, GPU page cache and context record for a channel laid out per `geo`
    /// in `region` (already served), with the host tier mapped at `tier` (mapping, page size).
    fn assemble(
        service: Service<'rt>,
        ctx: Arc<Context>,
        cfg: GpuIoConfig,
        geo: &Geometry,
        region: Arc<dyn SharedMemory>,
        control_off: usize,
        tier: Option<&(SharedHostMapping, usize)>,
    ) -> Result<Self> {
        let layout = geo.channel.layout()?;
        let (ch_cfg, group_records, records) = (geo.channel, geo.group_records, geo.records);
        // State · busy words (groups, async pool) · async pool's (dst, len) pairs (16-aligned).
        let busy_end = core::mem::size_of::<WfsGpuState>() + 4 * (cfg.warp_slots + cfg.async_slots);
        let state_len = busy_end.div_ceil(16) * 16 + 16 * cfg.async_slots;
        let mut state = DeviceBuffer::new(&ctx, state_len)?;
        state.fill(0)?;
        // The demand ring's hand-back mirror: slot i may first be written for position i (the
        // ring's initial sequence words), as the bytes of the words 0, 1, 2, ...
        let slots = ch_cfg.ring_capacity;
        let mut handed = DeviceBuffer::new(&ctx, 8 * slots)?;
        let first_lap: Vec<u8> = (0..slots as u64).flat_map(u64::to_ne_bytes).collect();
        handed.copy_from_host(0, &first_lap)?;
        let cache = if cfg.gpu_cache_bytes == 0 {
            None
        } else {
            Some(GpuCacheMemory::new(
                &ctx,
                cfg.gpu_cache_bytes,
                cfg.gpu_page_bytes,
            )?)
        };

        // The file-view table ([`GpuIo::map_file`]): every slot free.
        let mut views = DeviceBuffer::new(
            &ctx,
            abi::WFS_VIEW_SLOTS as usize * core::mem::size_of::<abi::WfsFileView>(),
        )?;
        views.fill(0)?;
        let base = region.device_addr();
        let wire = WfsGpuContext {
            magic: abi::WFS_GPU_CTX_MAGIC,
            version: abi::WFS_ABI_VERSION,
            warp_slots: cfg.warp_slots as u32,
            lane_bytes: cfg.lane_bytes as u32,
            ring: base + layout.demand as u64,
            slots: base + (layout.demand + core::mem::size_of::<abi::WfsRingHeader>()) as u64,
            ring_mask: ch_cfg.ring_capacity as u64 - 1,
            completions: base + layout.completions as u64,
            data: base + layout.data as u64,
            control: base + control_off as u64,
            state: state.ptr(),
            timeout_ns: u64::try_from(cfg.timeout.as_nanos()).unwrap_or(u64::MAX),
            cache: cache.as_ref().map_or(0, |c| c.descriptor_ptr()),
            prefetch_ring: base + layout.prefetch as u64,
            prefetch_slots: base
                + (layout.prefetch + core::mem::size_of::<abi::WfsRingHeader>()) as u64,
            async_first: group_records as u32,
            async_count: cfg.async_slots as u32,
            sink: (records - 1) as u32,
            tier_page_shift: tier.map_or(0, |t| t.1.trailing_zeros()),
            tier: tier.map_or(0, |t| t.0.device_ptr()),
            tier_bytes: tier.map_or(0, |t| t.0.len() as u64),
            handed: handed.ptr(),
            views: views.ptr(),
            view_slots: abi::WFS_VIEW_SLOTS,
            reserved: 0,
        };
        let mut dev_ctx = DeviceBuffer::new(&ctx, core::mem::size_of::<WfsGpuContext>())?;
        // SAFETY: WfsGpuContext is a #[repr(C)] record of integers without padding.
        unsafe { dev_ctx.copy_record_from_host(0, &wire)? };

        Ok(Self {
            service,
            ctx,
            cfg,
            region,
            control_off,
            state,
            _handed: handed,
            cache,
            dev_ctx,
            serving: AtomicBool::new(true),
            closed: false,
            write_back: std::sync::Mutex::new(None),
            tier: None,
            views,
            file_views: (0..abi::WFS_VIEW_SLOTS).map(|_| None).collect(),
        })
    }

    /// Lets this channel's kernels read `file` in place: maps it read-only and registers its
    /// page-cache pages with the device ([`FileView`]). `wfs_array`s of the file made after
    /// this (`wfs_array_make`) then load GPU cache pages from the view by themselves (a copy
    /// over PCIe, no request to the daemon), and a miss that finds the cache full reads the
    /// element in place instead of evicting. Costs pinning the whole file (about 0.44 s per
    /// 8 GiB in the page cache on the H100 machine; a cold file is read from the disk first)
    /// and returns how long that took. Only for files registered read-only (so nothing
    /// written through warpfs can be missed by a view) and served by this process's runtime
    /// ([`GpuIo::new`]). The view holds the file's size now: map it again after it grows.
    /// Waits for the context's kernels when it replaces a view.
    pub fn map_file(&mut self, file: &crate::runtime::FileHandle) -> Result<std::time::Duration> {
        let started = std::time::Instant::now();
        let handle = file.raw();
        let entry = match &self.service {
            Service::Local { rt, .. } => rt
                .file_entry(handle)
                .ok_or(Error::BadHandle(handle))?,
            Service::Remote(_) => {
                return Err(Error::Config(
                    "GpuIo::map_file needs the files' runtime in this process (GpuIo::new, not connect)"
                        .into(),
                ))
            }
        };
        if entry.writable() || !entry.readable() {
            return Err(Error::Config(format!(
                "GpuIo::map_file maps files registered read-only (OpenOptions::read_only()); handle {handle} is not"
            )));
        }
        let slot = (handle % abi::WFS_VIEW_SLOTS) as usize;
        if let Some((other, _)) = &self.file_views[slot] {
            if *other != handle {
                return Err(Error::Config(format!(
                    "GpuIo::map_file: handle {handle} shares view slot {slot} with mapped handle {other}; \
                     at most {} files with distinct slots (handle % {}) can be mapped",
                    abi::WFS_VIEW_SLOTS,
                    abi::WFS_VIEW_SLOTS
                )));
            }
        }
        let size = entry.size()?;
        let view = FileView::new(&self.ctx, entry.fd(), size)?;
        if self.file_views[slot].is_some() {
            // Kernels may still read the old view: it goes only after they end.
            self.ctx.synchronize()?;
        }
        let record = abi::WfsFileView {
            addr: view.device_ptr(),
            len: view.len(),
            fh: handle,
            ..Default::default()
        };
        // SAFETY: WfsFileView is a #[repr(C)] record of integers without padding.
        unsafe {
            self.views
                .copy_record_from_host(slot * core::mem::size_of::<abi::WfsFileView>(), &record)?
        };
        self.file_views[slot] = Some((handle, view));
        let took = started.elapsed();
        tracing::info!(
            handle,
            bytes = size,
            ms = took.as_secs_f64() * 1e3,
            "file mapped into the device"
        );
        Ok(took)
    }

    /// The device pointer kernels take as `const wfs_ctx_t *ctx`.
    pub fn context_ptr(&self) -> u64 {
        self.dev_ctx.ptr()
    }

    /// The CUDA context (the device's primary context).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// The configuration in force.
    pub fn config(&self) -> &GpuIoConfig {
        &self.cfg
    }

    /// The channel (for statistics and tests); `None` when another process serves it
    /// ([`GpuIo::connect`]: the server holds it).
    pub fn channel(&self) -> Option<&Arc<Channel>> {
        match &self.service {
            Service::Local { channel, .. } => Some(channel),
            Service::Remote(_) => None,
        }
    }

    /// Allocates `len` bytes of device memory in this context.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuffer> {
        Ok(DeviceBuffer::new(&self.ctx, len)?)
    }

    /// Waits for every kernel of the context to finish.
    pub fn synchronize(&self) -> Result<()> {
        Ok(self.ctx.synchronize()?)
    }

    /// Waits up to `limit` for the kernels queued on the context's legacy default stream (where
    /// [`Kernel::launch`] queues them) to finish, polling `cuStreamQuery` (10 µs apart at first,
    /// then an eighth of the time waited, at most 1 ms)
    /// instead of blocking in `cuCtxSynchronize`. `Ok(true)` once they finished, `Ok(false)` if
    /// `limit` passed first (a watchdog then calls [`GpuIo::abort_device_waits`]).
    pub fn wait_kernels(&self, limit: Duration) -> Result<bool> {
        self.ctx.bind()?;
        let start = std::time::Instant::now();
        loop {
            // SAFETY: the context is current on this thread; the null stream is the legacy
            // default stream of that context.
            let code = unsafe { sys::cuStreamQuery(std::ptr::null_mut()) };
            match code {
                sys::CUresult::CUDA_SUCCESS => return Ok(true),
                sys::CUresult::CUDA_ERROR_NOT_READY => {}
                other => check(other, "cuStreamQuery")?,
            }
            let waited = start.elapsed();
            if waited >= limit {
                return Ok(false);
            }
            // Polls 10 µs apart at first, then an eighth of the time waited so far (at most
            // 1 ms): a kernel is seen ending within 12.5% of its run, where a fixed 1 ms sleep
            // added up to a millisecond to every short kernel (a BFS level: ~1 ms each).
            std::thread::sleep(
                (waited / 8).clamp(Duration::from_micros(10), Duration::from_millis(1)),
            );
        }
    }

    /// [`GpuIo::synchronize`] with a watchdog: waits up to `limit` for the queued kernels; past
    /// it, raises the `closing` word (device waits return `-ESHUTDOWN`), waits up to 30 s more
    /// and returns an error naming `what` with the GPU cache statistics, instead of hanging.
    /// The channel is unusable for device calls after such an error.
    pub fn synchronize_within(&self, limit: Duration, what: &str) -> Result<()> {
        if self.wait_kernels(limit)? {
            return Ok(self.ctx.synchronize()?);
        }
        self.abort_device_waits();
        let ended = self.wait_kernels(Duration::from_secs(30))?;
        let stats = if ended {
            format!("{:?}", self.cache_stats()?)
        } else {
            "unavailable (the kernel is still running)".into()
        };
        Err(Error::Config(format!(
            "kernel {what} ran past {limit:?} (hung?); the watchdog raised the closing word and \
             it {}; GPU cache statistics: {stats}. Report this with the statistics; a longer \
             legitimate run needs a larger limit",
            if ended {
                "ended"
            } else {
                "did not end within 30 s"
            }
        )))
    }

    /// Raises the channel's `closing` word without detaching it: every waiting device call
    /// returns `-ESHUTDOWN` within one backoff step (a few µs), so a stuck kernel ends. For
    /// watchdogs; the channel is unusable for device calls afterwards (drop the `GpuIo`).
    pub fn abort_device_waits(&self) {
        self.closing_word().store(1, Ordering::SeqCst);
    }

    /// Stops (`false`) or resumes (`true`) the daemon's service of this channel; stopping
    /// completes requests waiting in the ring with `-ESHUTDOWN`, later ones wait (and time
    /// out). For tests of the bounded waits. Fails only when a remote server cannot be
    /// reached.
    pub fn set_serving(&self, on: bool) -> Result<()> {
        if self.serving.swap(on, Ordering::AcqRel) == on {
            return Ok(());
        }
        match &self.service {
            Service::Local { rt, channel } if on => rt.attach_channel(channel.clone()),
            Service::Local { rt, channel } => rt.detach_channel(channel),
            Service::Remote(lease) => {
                lease.command(if on { Command::Resume } else { Command::Pause })?
            }
        }
        Ok(())
    }

    fn closing_word(&self) -> &AtomicU32 {
        // SAFETY: control_off + 64 ≤ region.len() (sized in new); the offset is 4096-aligned,
        // so the word is aligned; the region lives as long as self; the GPU only reads it.
        unsafe { AtomicU32::from_ptr(self.region.as_ptr().add(self.control_off).cast()) }
    }

    /// Stops service: waiting device calls return `-ESHUTDOWN`, requests left in the ring are
    /// completed with `-ESHUTDOWN`, and running kernels of the context are waited for (they
    /// return within one backoff step). Idempotent; also run on drop.
    pub fn shutdown(&mut self) -> Result<()> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        // Dirty GPU cache pages reach the file while the daemon still serves the channel,
        // once the kernels have ended (not waiting longer than the device calls' timeout).
        if self.cache.is_some() && self.serving.load(Ordering::Acquire) {
            match self.wait_kernels(self.cfg.timeout) {
                Ok(true) => {
                    if let Err(e) = self.write_back_dirty() {
                        tracing::error!(error = %e, "GPU page cache write-back at shutdown failed");
                    }
                }
                Ok(false) => tracing::error!(
                    timeout = ?self.cfg.timeout,
                    "kernels still running at shutdown: dirty GPU cache pages not written back"
                ),
                Err(e) => {
                    tracing::error!(error = %e, "GPU page cache write-back at shutdown skipped")
                }
            }
        }
        self.closing_word().store(1, Ordering::SeqCst);
        self.serving.store(false, Ordering::Release);
        // Waiting device calls see `closing` and return; once the kernels have ended, detaching
        // answers what is left in the ring and releases the host tier pages the channel's
        // answers still referenced (no kernel copies from them any more).
        let ended = self.ctx.synchronize();
        match &self.service {
            Service::Local { rt, channel } => rt.detach_channel(channel),
            // The server detaches once the connection closes.
            Service::Remote(lease) => lease.close(),
        }
        Ok(ended?)
    }

    /// Compiles CUDA C++ `src` with NVRTC for this device, with `warpfs.cuh` on the include
    /// path (`#include <warpfs.cuh>` works), and loads it. `options` are extra NVRTC flags.
    /// Costs tens to hundreds of ms.
    pub fn compile(&self, src: &str, options: &[&str]) -> Result<GpuModule> {
        compile(&self.ctx, src, options)
    }

    /// A device attribute of this context's device (e.g.
    /// `CU_DEVICE_ATTRIBUTE_HOST_NATIVE_ATOMIC_SUPPORTED`).
    pub fn device_attribute(&self, attr: sys::CUdevice_attribute) -> Result<i32> {
        Ok(device_attribute(self.ctx.ordinal(), attr)?)
    }

    /// GPU page-cache statistics (summed stripes) plus the device API's error counter
    /// (`wfs_errors`). All zero without a cache. Waits for running kernels of the context.
    pub fn cache_stats(&self) -> Result<GpuCacheStats> {
        let mut s = match &self.cache {
            Some(c) => c.stats()?,
            None => GpuCacheStats::default(),
        };
        let mut raw = [0u8; 8];
        self.state
            .copy_to_host(core::mem::offset_of!(WfsGpuState, errors), &mut raw)?;
        s.api_errors = u64::from_le_bytes(raw);
        Ok(s)
    }

    /// Frames of the GPU page cache (0 without one).
    pub fn cache_frames(&self) -> u32 {
        self.cache.as_ref().map_or(0, |c| c.frames())
    }

    /// Forgets every page of the GPU page cache (after the files changed behind the GPU's
    /// back, or for a cold measurement). Waits for the context's kernels first and writes back
    /// dirty pages (`wfs_array::set`) before forgetting them. Costs four memsets.
    pub fn invalidate_cache(&mut self) -> Result<()> {
        self.ctx.synchronize()?;
        self.write_back_dirty()?;
        match &mut self.cache {
            Some(c) => c.reset(),
            None => Ok(()),
        }
    }

    /// Makes every write the GPU made durable on the host side: waits for the context's
    /// kernels, writes back the GPU page cache's dirty pages (`wfs_array::set`; one kernel
    /// launch through the daemon, compiled the first time there are any), then flushes the
    /// runtime (its host tier, `fdatasync`). `wfs_write`s are write-through: acknowledged
    /// once the daemon has the bytes. Also run at shutdown.
    pub fn flush(&self) -> Result<()> {
        self.ctx.synchronize()?;
        self.write_back_dirty()?;
        match &self.service {
            Service::Local { rt, .. } => rt.flush(),
            Service::Remote(lease) => lease.command(Command::Flush),
        }
    }

    /// The GPU page cache's frame state words (pins in the low 20 bits, then flags), for
    /// diagnostics; empty without a cache. Waits for running kernels.
    pub fn frame_states(&self) -> Result<Vec<u32>> {
        self.cache
            .as_ref()
            .map_or(Ok(Vec::new()), |c| c.frame_states())
    }

    /// Frames of the GPU page cache marked dirty and not yet taken for write-back (the
    /// device's count; read while no kernel runs, it is exact).
    pub fn dirty_pages(&self) -> Result<u32> {
        if self.cache.is_none() {
            return Ok(0);
        }
        let mut raw = [0u8; 4];
        self.state
            .copy_to_host(core::mem::offset_of!(WfsGpuState, dirty), &mut raw)?;
        Ok(u32::from_le_bytes(raw))
    }

    /// Writes back the dirty pages of the GPU page cache (the context's kernels have ended:
    /// callers synchronise first). Nothing to do, and no compile, when there are none.
    fn write_back_dirty(&self) -> Result<()> {
        if self.dirty_pages()? == 0 {
            return Ok(());
        }
        let failed_before = self.cache_stats()?.writeback_errors;
        let mut m = self.write_back.lock().unwrap_or_else(|e| e.into_inner());
        if m.is_none() {
            *m = Some(self.compile(WRITE_BACK_KERNEL, &[])?);
        }
        let module = m.as_ref().expect("compiled above");
        let k = module.kernel("wfs_write_back_all")?;
        // SAFETY: wfs_write_back_all(const wfs_ctx_t*) takes this channel's live context
        // pointer; it touches only the cache and the channel through the device API.
        unsafe {
            k.launch(
                (WRITE_BACK_THREADS / 256, 1, 1),
                (256, 1, 1),
                0,
                &[KernelArg::U64(self.context_ptr())],
            )?
        };
        self.ctx.synchronize()?;
        let left = self.dirty_pages()?;
        if left != 0 {
            tracing::warn!(
                left,
                "GPU page cache: dirty pages left after the write-back"
            );
        }
        let failed = self.cache_stats()?.writeback_errors - failed_before;
        if failed != 0 {
            return Err(Error::Io(std::io::Error::other(format!(
                "{failed} dirty GPU cache pages could not be written back (their changes are \
                 dropped): register the files that wfs_array::set writes to as writable"
            ))));
        }
        Ok(())
    }

    /// Refuses (with an error saying what to change) a launch of `grid` blocks of `block`
    /// threads whose resident warps × `pages_held_per_warp` exceed the GPU page cache's
    /// frames. Resident warps are bounded by the device's limits (threads and blocks per SM ×
    /// SMs) or the grid, whichever is smaller; [`GpuIo::check_kernel_launch`] uses the
    /// kernel's real occupancy instead. `wfs_read`/`wfs_array` hold at most 32 pages per warp
    /// (one per lane) and only while the lanes copy; with no frame free they read around the
    /// cache rather than wait, so a refused launch would still complete, slower.
    pub fn check_launch(
        &self,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        pages_held_per_warp: u32,
    ) -> Result<()> {
        let threads = block.0 * block.1 * block.2;
        let per_sm_threads = self.device_attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_MULTIPROCESSOR,
        )? as u64;
        let per_sm_blocks = self.device_attribute(
            sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MAX_BLOCKS_PER_MULTIPROCESSOR,
        )? as u64;
        let blocks_per_sm = (per_sm_threads / u64::from(threads.max(1))).min(per_sm_blocks);
        self.check_resident(grid, threads, blocks_per_sm, pages_held_per_warp)
    }

    /// [`GpuIo::check_launch`] with the kernel's real occupancy
    /// (`cuOccupancyMaxActiveBlocksPerMultiprocessor`: registers and shared memory counted).
    pub fn check_kernel_launch(
        &self,
        kernel: &Kernel<'_>,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        pages_held_per_warp: u32,
    ) -> Result<()> {
        let threads = block.0 * block.1 * block.2;
        let mut n = 0i32;
        self.ctx.bind()?;
        // SAFETY: kernel.raw is a live function of a loaded module in this context; n is a
        // valid out pointer.
        check(
            unsafe {
                sys::cuOccupancyMaxActiveBlocksPerMultiprocessor(
                    &mut n,
                    kernel.raw,
                    threads as i32,
                    shared_bytes as usize,
                )
            },
            "cuOccupancyMaxActiveBlocksPerMultiprocessor",
        )?;
        self.check_resident(grid, threads, n.max(0) as u64, pages_held_per_warp)
    }

    fn check_resident(
        &self,
        grid: (u32, u32, u32),
        threads: u32,
        blocks_per_sm: u64,
        pages_held_per_warp: u32,
    ) -> Result<()> {
        let Some(cache) = &self.cache else {
            return Ok(()); // no GPU page cache: nothing held
        };
        let sms = self
            .device_attribute(sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT)?
            as u64;
        let blocks = u64::from(grid.0) * u64::from(grid.1) * u64::from(grid.2);
        let warps = gpu_cache::resident_warps(blocks, threads, blocks_per_sm, sms);
        gpu_cache::check_holds(
            warps,
            u64::from(pages_held_per_warp),
            u64::from(cache.frames()),
        )
    }

    /// Size of the device state block (bytes) — for tests.
    pub fn state_bytes(&self) -> usize {
        self.state.len()
    }
}

impl Drop for GpuIo<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.shutdown() {
            tracing::error!(error = %e, "GPU channel shutdown failed");
        }
    }
}

fn device_attribute(
    ordinal: usize,
    attr: sys::CUdevice_attribute,
) -> std::result::Result<i32, CudaError> {
    let mut dev = 0;
    // SAFETY: the driver is initialised (a Context exists); dev is a valid out pointer.
    check(
        unsafe { sys::cuDeviceGet(&mut dev, ordinal as i32) },
        "cuDeviceGet",
    )?;
    let mut v = 0;
    // SAFETY: v is a valid out pointer; dev a valid device.
    check(
        unsafe { sys::cuDeviceGetAttribute(&mut v, attr, dev) },
        "cuDeviceGetAttribute",
    )?;
    Ok(v)
}

/// An NVRTC program of a kernel source, with `warpfs.cuh` and `warpfs_abi.h` handed to NVRTC
/// in memory (so a compile writes no files). Destroyed on drop.
struct Program {
    prog: cudarc::nvrtc::sys::nvrtcProgram,
    /// The strings NVRTC may keep pointers to until the program is destroyed.
    _strings: [CString; 5],
}

impl Program {
    fn new(src: &str) -> Result<Self> {
        use cudarc::nvrtc::sys as nsys;
        let c = |s: &str, what: &str| {
            CString::new(s).map_err(|_| Error::Config(format!("{what} contains a NUL byte")))
        };
        let strings = [
            c(src, "the kernel source")?,
            c(WARPFS_CUH, "warpfs.cuh")?,
            c(WARPFS_ABI_H, "warpfs_abi.h")?,
            c("warpfs.cuh", "a header name")?,
            c("warpfs_abi.h", "a header name")?,
        ];
        let headers = [strings[1].as_ptr(), strings[2].as_ptr()];
        let names = [strings[3].as_ptr(), strings[4].as_ptr()];
        let mut prog = std::mem::MaybeUninit::uninit();
        // SAFETY: every pointer is a NUL-terminated string that `strings` keeps alive (moved
        // into the returned value, heap buffers unmoved) until `drop` destroys the program;
        // the two arrays hold 2 entries each, as `numHeaders` says.
        let r = unsafe {
            nsys::nvrtcCreateProgram(
                prog.as_mut_ptr(),
                strings[0].as_ptr(),
                std::ptr::null(),
                2,
                headers.as_ptr(),
                names.as_ptr(),
            )
        };
        if r != nsys::nvrtcResult::NVRTC_SUCCESS {
            return Err(Error::Config(format!("nvrtcCreateProgram: {r:?}")));
        }
        Ok(Self {
            // SAFETY: nvrtcCreateProgram succeeded, so it wrote the program handle.
            prog: unsafe { prog.assume_init() },
            _strings: strings,
        })
    }

    /// Compiles for `arch` (`--gpu-architecture`) with `--std=c++17`, `options` and those of
    /// `WARPFS_NVRTC_OPTIONS`; on failure, the options and NVRTC's log.
    fn compile(&self, arch: &str, options: &[&str]) -> std::result::Result<(), String> {
        use cudarc::nvrtc::result;
        let mut opts = vec![
            "--std=c++17".to_string(),
            format!("--gpu-architecture={arch}"),
        ];
        opts.extend(options.iter().map(|s| s.to_string()));
        opts.extend(env_nvrtc_options());
        // SAFETY: `self.prog` is a live program (created in `new`, destroyed only in `drop`).
        unsafe {
            result::compile_program(self.prog, &opts).map_err(|e| {
                let log = result::get_program_log(self.prog)
                    .map(|l| {
                        let b: Vec<u8> = l.iter().map(|&c| c as u8).collect();
                        String::from_utf8_lossy(&b)
                            .trim_end_matches('\0')
                            .to_string()
                    })
                    .unwrap_or_default();
                format!("{e:?} (options {opts:?})\n{log}")
            })
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created in `new` and is destroyed once, here.
        let _ = unsafe { cudarc::nvrtc::result::destroy_program(self.prog) };
    }
}

/// The NVRTC virtual architecture for a compute capability.
fn arch_for(major: i32, minor: i32) -> &'static str {
    match (major, minor) {
        (7, 0) => "compute_70",
        (7, 2) => "compute_72",
        (7, 5) => "compute_75",
        (8, 0) => "compute_80",
        (8, 6) => "compute_86",
        (8, 7) => "compute_87",
        (8, 9) => "compute_89",
        (9, 0) => "compute_90",
        (10, 0) => "compute_100",
        (12, 0) => "compute_120",
        _ if major >= 9 => "compute_90",
        _ => "compute_70",
    }
}

/// Whether NVRTC (`libnvrtc.so.13`) can be loaded on this machine. No GPU needed.
pub fn nvrtc_available() -> bool {
    // SAFETY: only tries to dlopen libnvrtc.
    unsafe { cudarc::nvrtc::sys::is_culib_present() }
}

/// Extra NVRTC flags from `WARPFS_NVRTC_OPTIONS` (whitespace-separated), added to every
/// compile: e.g. `-lineinfo` so that `compute-sanitizer` names the source line of a fault.
fn env_nvrtc_options() -> Vec<String> {
    std::env::var("WARPFS_NVRTC_OPTIONS")
        .map(|v| v.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default()
}

/// Compiles CUDA C++ `src` to PTX with NVRTC for virtual architecture `arch` (e.g.
/// `"compute_90"`), with `warpfs.cuh` and `warpfs_abi.h` handed to NVRTC in memory (no files
/// written) and `--std=c++17`; `options` are extra NVRTC flags. Needs no GPU and no driver,
/// only libnvrtc — so every kernel can be checked on any machine. Costs tens to hundreds of ms.
pub fn compile_ptx(src: &str, arch: &'static str, options: &[&str]) -> Result<String> {
    if !nvrtc_available() {
        return Err(Error::Config(
            "libnvrtc not found: install the CUDA toolkit's NVRTC (libnvrtc.so.13, e.g. `python3 \
             -m pip install nvidia-cuda-nvrtc`) or put its folder on LD_LIBRARY_PATH"
                .into(),
        ));
    }
    let prog = Program::new(src)?;
    prog.compile(arch, options)
        .map_err(|log| Error::Config(format!("NVRTC could not compile the kernel: {log}")))?;
    // SAFETY: `prog` is live and compiled.
    let ptx = unsafe { cudarc::nvrtc::result::get_ptx(prog.prog) }
        .map_err(|e| Error::Config(format!("nvrtcGetPTX: {e:?}")))?;
    let bytes: Vec<u8> = ptx
        .iter()
        .map(|&c| c as u8)
        .take_while(|&b| b != 0)
        .collect();
    String::from_utf8(bytes)
        .map_err(|_| Error::Config("NVRTC returned PTX that is not UTF-8".into()))
}

/// Compiles CUDA C++ `src` with NVRTC all the way to a cubin for real architecture `arch`
/// (e.g. `"sm_90"`): NVRTC runs ptxas, so inline PTX, register allocation and every
/// instruction are checked as the driver would at load time — still without a GPU. Returns
/// the cubin's size in bytes. Costs about twice [`compile_ptx`].
pub fn compile_cubin(src: &str, arch: &str, options: &[&str]) -> Result<usize> {
    use cudarc::nvrtc::sys as nsys;
    if !nvrtc_available() {
        return Err(Error::Config(
            "libnvrtc not found: put libnvrtc.so.13 on LD_LIBRARY_PATH".into(),
        ));
    }
    let prog = Program::new(src)?;
    prog.compile(arch, options)
        .map_err(|log| Error::Config(format!("NVRTC could not compile for {arch}: {log}")))?;
    let mut size = 0usize;
    // SAFETY: `prog` is live and compiled; `size` is a valid out-pointer.
    let r = unsafe { nsys::nvrtcGetCUBINSize(prog.prog, &mut size) };
    if r == nsys::nvrtcResult::NVRTC_SUCCESS {
        Ok(size)
    } else {
        Err(Error::Config(format!("nvrtcGetCUBINSize: {r:?}")))
    }
}

fn compile(ctx: &Arc<Context>, src: &str, options: &[&str]) -> Result<GpuModule> {
    let major = device_attribute(
        ctx.ordinal(),
        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR,
    )?;
    let minor = device_attribute(
        ctx.ordinal(),
        sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR,
    )?;
    if major < 7 {
        return Err(Error::Config(format!(
            "warpfs.cuh needs compute capability 7.0 or newer (__nanosleep, system-scope \
             acquire/release); this device is {major}.{minor}"
        )));
    }
    let ptx = compile_ptx(src, arch_for(major, minor), options)?;
    let image = CString::new(ptx)
        .map_err(|_| Error::Config("NVRTC produced PTX with a NUL byte".into()))?;
    ctx.bind()?;
    let mut raw: sys::CUmodule = std::ptr::null_mut();
    // SAFETY: the context is current; image is a NUL-terminated PTX string alive for the call.
    check(
        unsafe { sys::cuModuleLoadData(&mut raw, image.as_ptr().cast()) },
        "cuModuleLoadData",
    )?;
    Ok(GpuModule {
        raw,
        ctx: ctx.clone(),
    })
}

/// A loaded CUDA module (from [`GpuIo::compile`]); unloaded on drop.
#[derive(Debug)]
pub struct GpuModule {
    raw: sys::CUmodule,
    ctx: Arc<Context>,
}

// SAFETY: a module handle may be used from any thread where its context is current; every
// method binds the context first.
unsafe impl Send for GpuModule {}

impl GpuModule {
    /// The `extern "C"` kernel called `name`.
    pub fn kernel(&self, name: &str) -> Result<Kernel<'_>> {
        let cname = CString::new(name)
            .map_err(|_| Error::Config(format!("kernel name {name:?} contains a NUL byte")))?;
        self.ctx.bind()?;
        let mut raw: sys::CUfunction = std::ptr::null_mut();
        // SAFETY: the module is loaded; cname is NUL-terminated; raw is a valid out pointer.
        check(
            unsafe { sys::cuModuleGetFunction(&mut raw, self.raw, cname.as_ptr()) },
            "cuModuleGetFunction",
        )
        .map_err(|e| {
            Error::Config(format!(
                "kernel {name:?} not found in the module ({e}); declare it extern \"C\" __global__"
            ))
        })?;
        Ok(Kernel { raw, module: self })
    }
}

impl Drop for GpuModule {
    fn drop(&mut self) {
        let _ = self.ctx.bind();
        // SAFETY: raw came from cuModuleLoadData and is unloaded once.
        unsafe {
            sys::cuModuleUnload(self.raw);
        }
    }
}

/// One kernel argument, passed by value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum KernelArg {
    /// `unsigned int`.
    U32(u32),
    /// `int`.
    I32(i32),
    /// `unsigned long long`, or any pointer (device address).
    U64(u64),
    /// `long long`.
    I64(i64),
    /// `float`.
    F32(f32),
    /// `double`.
    F64(f64),
}

/// A kernel of a [`GpuModule`].
#[derive(Debug)]
pub struct Kernel<'m> {
    raw: sys::CUfunction,
    module: &'m GpuModule,
}

impl Kernel<'_> {
    /// Queues the kernel on the context's legacy default stream; [`GpuIo::synchronize`] waits.
    ///
    /// # Safety
    /// `args` must match the kernel's parameters in number, order and type, and every pointer
    /// argument must be valid device memory of this context for the kernel's whole run (for
    /// the warpfs context: the `GpuIo` must outlive the kernel — its drop waits for kernels).
    pub unsafe fn launch(
        &self,
        grid: (u32, u32, u32),
        block: (u32, u32, u32),
        shared_bytes: u32,
        args: &[KernelArg],
    ) -> Result<()> {
        // One 8-byte, 8-aligned cell per argument; the driver reads each parameter's size.
        let mut storage: Vec<u64> = args
            .iter()
            .map(|a| {
                let mut b = [0u8; 8];
                match *a {
                    KernelArg::U32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
                    KernelArg::I32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
                    KernelArg::U64(v) => b.copy_from_slice(&v.to_ne_bytes()),
                    KernelArg::I64(v) => b.copy_from_slice(&v.to_ne_bytes()),
                    KernelArg::F32(v) => b[..4].copy_from_slice(&v.to_ne_bytes()),
                    KernelArg::F64(v) => b.copy_from_slice(&v.to_ne_bytes()),
                }
                u64::from_ne_bytes(b)
            })
            .collect();
        let mut params: Vec<*mut c_void> = storage
            .iter_mut()
            .map(|b| (b as *mut u64).cast::<c_void>())
            .collect();
        self.module.ctx.bind()?;
        // SAFETY: raw is a live function of a loaded module in the current context; params
        // points at one 8-byte, 8-aligned value per argument (the driver copies them
        // during the call); the caller guarantees they match the kernel's signature.
        check(
            unsafe {
                sys::cuLaunchKernel(
                    self.raw,
                    grid.0,
                    grid.1,
                    grid.2,
                    block.0,
                    block.1,
                    block.2,
                    shared_bytes,
                    std::ptr::null_mut(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )?;
        Ok(())
    }
}
