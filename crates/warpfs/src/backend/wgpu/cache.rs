//! The GPU page cache: the cache buffer (`slots` pages), the page table the shaders read, the
//! state buffer (counters, CLOCK reference words, per-page request flags), the request and
//! work-list buffers, the staging pair; and on the host the authoritative copy of the page table
//! with the CLOCK that picks victims.

use super::{ctr, GpuParams, WgpuContext, WgpuError, WgpuResult};
use crate::abi::WfsRequest;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

/// "No page" in [`Clock`]'s owner table.
pub const NO_PAGE: u32 = u32::MAX;

/// CLOCK (second chance) over the cache slots. A slot is *protected* while a page in it was
/// referenced by the last dispatch or loaded in the current service: the loop's progress
/// guarantee (an item's pages stay resident from one round to the next) rests on that.
#[derive(Debug, Clone)]
pub struct Clock {
    hand: usize,
    referenced: Vec<bool>,
    owner: Vec<u32>,
}

impl Clock {
    /// A clock over `slots` empty slots.
    pub fn new(slots: usize) -> Self {
        Self {
            hand: 0,
            referenced: vec![false; slots],
            owner: vec![NO_PAGE; slots],
        }
    }

    /// Number of slots.
    pub fn slots(&self) -> usize {
        self.owner.len()
    }

    /// The page-table entry held by `slot`, or [`NO_PAGE`].
    pub fn owner(&self, slot: usize) -> u32 {
        self.owner[slot]
    }

    /// Records that `slot` was used (its second chance).
    pub fn touch(&mut self, slot: usize) {
        self.referenced[slot] = true;
    }

    /// Empties every slot.
    pub fn clear(&mut self) {
        self.referenced.fill(false);
        self.owner.fill(NO_PAGE);
        self.hand = 0;
    }

    /// Picks a slot for `vpage`: an empty one, else the first unprotected slot whose reference
    /// bit is clear (clearing bits as the hand passes). Returns the slot and the page it held
    /// (or [`NO_PAGE`]); `None` when every slot is protected. At most two sweeps.
    pub fn place(&mut self, vpage: u32, protected: impl Fn(usize) -> bool) -> Option<(usize, u32)> {
        let n = self.owner.len();
        for _ in 0..2 * n + 1 {
            let s = self.hand;
            self.hand = (self.hand + 1) % n;
            if protected(s) {
                continue;
            }
            if self.owner[s] != NO_PAGE && self.referenced[s] {
                self.referenced[s] = false;
                continue;
            }
            let old = self.owner[s];
            self.owner[s] = vpage;
            self.referenced[s] = true;
            return Some((s, old));
        }
        None
    }
}

/// Fixed geometry of a [`GpuCache`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Geometry {
    pub page_size: u32,
    pub page_shift: u32,
    pub slots: u32,
    pub max_requests: u32,
    pub staging_pages: u32,
}

/// One staging buffer and whether it is mapped for writing now.
pub(crate) struct Staging {
    pub buffer: wgpu::Buffer,
    pub mapped: Arc<AtomicBool>,
    /// The submission whose copies read this buffer last (its mapping completes after it).
    pub pending: Option<wgpu::SubmissionIndex>,
}

/// The GPU buffers of the fault-and-replay loop.
pub(crate) struct GpuCache {
    pub geo: Geometry,
    pub params: wgpu::Buffer,
    pub cache: wgpu::Buffer,
    /// True when `cache` is MAP_WRITE (unified memory) and filled by mapping it.
    pub mapped_cache: bool,
    pub cache_mapped: Arc<AtomicBool>,
    pub requests: wgpu::Buffer,
    pub readback: wgpu::Buffer,
    pub staging: Vec<Staging>,
    /// Per-binding buffers, sized for one set of files and one work capacity.
    pub table: wgpu::Buffer,
    pub state: wgpu::Buffer,
    pub work: wgpu::Buffer,
    pub list_readback: wgpu::Buffer,
    pub table_len: u32,
    pub work_capacity: u32,
    /// Host copy of the page table (1 + slot, 0 = absent).
    pub host_table: Vec<u32>,
    pub clock: Clock,
    pub epoch: u32,
}

/// Bytes of the readback prefix: counters then one reference word per slot.
pub(crate) fn state_prefix_bytes(slots: u32) -> u64 {
    (ctr::COUNT as u64 + slots as u64) * 4
}

fn buffer(
    ctx: &WgpuContext,
    label: &str,
    size: u64,
    usage: wgpu::BufferUsages,
    mapped: bool,
) -> wgpu::Buffer {
    ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some(label),
        size: size.max(16).next_multiple_of(wgpu::COPY_BUFFER_ALIGNMENT),
        usage,
        mapped_at_creation: mapped,
    })
}

impl GpuCache {
    /// Creates the fixed buffers (cache, requests, readback, staging) and empty per-run ones.
    /// Costs `slots × page_size` bytes of GPU memory plus two staging buffers.
    pub fn new(ctx: &WgpuContext, geo: Geometry, mapped_cache: bool) -> WgpuResult<Self> {
        use wgpu::BufferUsages as U;
        let limits = ctx.device().limits();
        let cache_bytes = geo.slots as u64 * geo.page_size as u64;
        if cache_bytes > limits.max_storage_buffer_binding_size
            || cache_bytes > limits.max_buffer_size
        {
            return Err(WgpuError::Config(format!(
                "a {cache_bytes}-byte cache buffer exceeds this adapter's limits \
                 (max storage binding {} B, max buffer {} B): lower ReplayConfig::cache_bytes",
                limits.max_storage_buffer_binding_size, limits.max_buffer_size
            )));
        }
        let req_bytes = geo.max_requests as u64 * std::mem::size_of::<WfsRequest>() as u64;
        let params = buffer(
            ctx,
            "wfs params",
            std::mem::size_of::<GpuParams>() as u64,
            U::UNIFORM | U::COPY_DST,
            false,
        );
        let cache_usage = if mapped_cache {
            U::STORAGE | U::MAP_WRITE
        } else {
            U::STORAGE | U::COPY_DST
        };
        let cache = buffer(ctx, "wfs page cache", cache_bytes, cache_usage, false);
        let requests = buffer(
            ctx,
            "wfs requests",
            req_bytes,
            U::STORAGE | U::COPY_SRC,
            false,
        );
        let readback = buffer(
            ctx,
            "wfs readback",
            state_prefix_bytes(geo.slots) + req_bytes,
            U::MAP_READ | U::COPY_DST,
            false,
        );
        let staging = if mapped_cache {
            Vec::new()
        } else {
            (0..2)
                .map(|i| Staging {
                    buffer: buffer(
                        ctx,
                        &format!("wfs staging {i}"),
                        geo.staging_pages as u64 * geo.page_size as u64,
                        U::MAP_WRITE | U::COPY_SRC,
                        true,
                    ),
                    mapped: Arc::new(AtomicBool::new(true)),
                    pending: None,
                })
                .collect()
        };
        let mut me = Self {
            geo,
            params,
            cache,
            mapped_cache,
            cache_mapped: Arc::new(AtomicBool::new(false)),
            requests,
            readback,
            staging,
            table: buffer(ctx, "wfs table", 16, U::STORAGE, false),
            state: buffer(ctx, "wfs state", 16, U::STORAGE, false),
            work: buffer(ctx, "wfs work", 16, U::STORAGE, false),
            list_readback: buffer(ctx, "wfs list readback", 16, U::MAP_READ, false),
            table_len: 0,
            work_capacity: 0,
            host_table: Vec::new(),
            clock: Clock::new(geo.slots as usize),
            epoch: 0,
        };
        me.reset(ctx, 0, 0);
        Ok(me)
    }

    /// Empties the cache and sizes the page table for `table_len` pages and the work lists for
    /// `work_capacity` items. Costs buffer creation (zeroed by wgpu).
    pub fn reset(&mut self, ctx: &WgpuContext, table_len: u32, work_capacity: u32) {
        use wgpu::BufferUsages as U;
        let slots = self.geo.slots as u64;
        self.table = buffer(
            ctx,
            "wfs table",
            table_len as u64 * 4,
            U::STORAGE | U::COPY_DST,
            false,
        );
        self.state = buffer(
            ctx,
            "wfs state",
            (ctr::COUNT as u64 + slots + table_len as u64) * 4,
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
            false,
        );
        self.resize_work(ctx, work_capacity);
        self.table_len = table_len;
        self.host_table = vec![0; table_len as usize];
        self.clock.clear();
        self.epoch = 0;
    }

    /// Sizes the work lists (two halves of `work_capacity` items) if they are smaller.
    pub fn resize_work(&mut self, ctx: &WgpuContext, work_capacity: u32) {
        use wgpu::BufferUsages as U;
        if work_capacity <= self.work_capacity && self.work_capacity > 0 {
            return;
        }
        self.work = buffer(
            ctx,
            "wfs work",
            work_capacity as u64 * 8,
            U::STORAGE | U::COPY_DST | U::COPY_SRC,
            false,
        );
        self.list_readback = buffer(
            ctx,
            "wfs list readback",
            work_capacity as u64 * 4,
            U::MAP_READ | U::COPY_DST,
            false,
        );
        self.work_capacity = work_capacity;
    }

    /// Word offset of the reference words in the state buffer.
    pub fn ref_base(&self) -> u32 {
        ctr::COUNT as u32
    }

    /// Word offset of the request flags in the state buffer.
    pub fn flag_base(&self) -> u32 {
        ctr::COUNT as u32 + self.geo.slots
    }
}
