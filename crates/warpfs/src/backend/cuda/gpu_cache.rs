//! The GPU page cache's device memory: page table, frame states and metadata, frame data,
//! insert locks and statistics stripes, described to kernels by one [`WfsGpuCache`] record.
//! The protocol that runs on it is in `include/warpfs.cuh` (see `gpu_io`'s module doc).

use super::driver::{Context, DeviceBuffer};
use crate::abi::{self, WfsGpuCache, WfsGpuCacheStats, WfsGpuPageMeta};
use crate::error::{Error, Result};
use std::sync::Arc;

/// Buckets per page-table group (`WFS_TABLE_GROUP` in warpfs.cuh): a key lives in any bucket
/// of the group its hash names, and a lookup loads the group's 128 bytes at once. (Groups
/// replaced linear probing over 64 buckets: evictions leave tombstones, so an absent key's
/// probe walked all 64, one load after another.) A key whose group is full of live entries is
/// read around the cache (counted as `bypassed`) — every time, so a hot page there costs a
/// daemon round trip per access: see [`BUCKETS_PER_FRAME`].
const PROBE: u32 = 16;

/// Table buckets per frame (at least; rounded up to a power of two): live entries per group
/// average at most 16 / 8 = 2, so a full group (16) is a Poisson tail of about 1e-10. With 2
/// per frame (8 a group) about 0.4% of the groups were full at any time: 20 K bypassed reads
/// in an 8 s random-read bench, and millions in a BFS whose hot pages hashed there (H100,
/// 2026-11-26). Costs 64–128 bytes of device memory per frame.
const BUCKETS_PER_FRAME: usize = 8;

/// GPU page-cache statistics, summed over the device's stripes ([`GpuIo::cache_stats`]).
///
/// [`GpuIo::cache_stats`]: super::gpu_io::GpuIo::cache_stats
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuCacheStats {
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
    /// Cached pages updated by write-through `wfs_write`s.
    pub write_patches: u64,
    /// Page loads that failed.
    pub load_errors: u64,
    /// Dirty pages (`wfs_array::set`) written back to their file (eviction, `wfs_fsync`,
    /// flush, shutdown).
    pub writebacks: u64,
    /// Write-backs that failed (those changes are dropped; `wfs_errors` counts them too).
    pub writeback_errors: u64,
    /// Errors counted by the device API (`wfs_errors`).
    pub api_errors: u64,
    /// Lane accesses read in place from a file view ([`super::gpu_io::GpuIo::map_file`]):
    /// misses of a full cache, which view-backed arrays do not evict for.
    pub in_place: u64,
    /// Bytes element reads (`wfs_array` `operator[]`) read in place (spans from `pin` are
    /// counted by their readers, which alone know how much of a span they read).
    pub in_place_bytes: u64,
}

impl std::ops::Sub for GpuCacheStats {
    type Output = Self;
    fn sub(self, o: Self) -> Self {
        Self {
            hits: self.hits.wrapping_sub(o.hits),
            misses: self.misses.wrapping_sub(o.misses),
            coalesced: self.coalesced.wrapping_sub(o.coalesced),
            evictions: self.evictions.wrapping_sub(o.evictions),
            bytes_loaded: self.bytes_loaded.wrapping_sub(o.bytes_loaded),
            bypassed: self.bypassed.wrapping_sub(o.bypassed),
            write_patches: self.write_patches.wrapping_sub(o.write_patches),
            load_errors: self.load_errors.wrapping_sub(o.load_errors),
            writebacks: self.writebacks.wrapping_sub(o.writebacks),
            writeback_errors: self.writeback_errors.wrapping_sub(o.writeback_errors),
            in_place: self.in_place.wrapping_sub(o.in_place),
            in_place_bytes: self.in_place_bytes.wrapping_sub(o.in_place_bytes),
            api_errors: self.api_errors.wrapping_sub(o.api_errors),
        }
    }
}

/// The device memory of one GPU page cache.
#[derive(Debug)]
pub struct GpuCacheMemory {
    desc: DeviceBuffer,
    table: DeviceBuffer,
    state: DeviceBuffer,
    meta: DeviceBuffer,
    // Frame data: never read by the host, kept alive for the kernels.
    _data: DeviceBuffer,
    locks: DeviceBuffer,
    stats: DeviceBuffer,
    frames: u32,
    page_bytes: usize,
}

impl GpuCacheMemory {
    /// Allocates a cache of `cache_bytes / page_bytes` frames in `ctx` and zeroes its
    /// bookkeeping. `page_bytes` must be a power of two in 4 KiB ..= 64 KiB. Costs the device
    /// memory (`cache_bytes` + about 52 bytes per frame) and a few memsets.
    pub fn new(ctx: &Arc<Context>, cache_bytes: usize, page_bytes: usize) -> Result<Self> {
        if !page_bytes.is_power_of_two() || !(4096..=65536).contains(&page_bytes) {
            return Err(Error::Config(format!(
                "GpuIoConfig::gpu_page_bytes must be a power of two from 4 KiB to 64 KiB, got \
                 {page_bytes}"
            )));
        }
        let frames = cache_bytes / page_bytes;
        if frames == 0 || frames >= (1 << 31) {
            return Err(Error::Config(format!(
                "GpuIoConfig::gpu_cache_bytes must hold 1 ..= 2^31-1 pages of {page_bytes} \
                 bytes, got {cache_bytes} bytes (0 turns the GPU page cache off)"
            )));
        }
        let buckets = (BUCKETS_PER_FRAME * frames)
            .next_power_of_two()
            .max(PROBE as usize * 2);
        let locks = buckets.min(1 << 16);
        let mut table = DeviceBuffer::new(ctx, buckets * 8)?;
        let mut state = DeviceBuffer::new(ctx, frames * 4)?;
        let mut meta = DeviceBuffer::new(ctx, frames * core::mem::size_of::<WfsGpuPageMeta>())?;
        let data = DeviceBuffer::new(ctx, frames * page_bytes)?;
        let mut lock_buf = DeviceBuffer::new(ctx, locks * 4)?;
        let mut stats = DeviceBuffer::new(
            ctx,
            abi::WFS_GPU_CACHE_STRIPES as usize * core::mem::size_of::<WfsGpuCacheStats>(),
        )?;
        table.fill(0)?;
        state.fill(0)?;
        meta.fill(0xff)?;
        lock_buf.fill(0)?;
        stats.fill(0)?;
        let wire = WfsGpuCache {
            magic: abi::WFS_GPU_CACHE_MAGIC,
            page_shift: page_bytes.trailing_zeros(),
            frames: frames as u32,
            probe: PROBE,
            bucket_mask: buckets as u64 - 1,
            lock_mask: locks as u64 - 1,
            table: table.ptr(),
            state: state.ptr(),
            meta: meta.ptr(),
            data: data.ptr(),
            locks: lock_buf.ptr(),
            stats: stats.ptr(),
            reserved: [0; 6],
        };
        let mut desc = DeviceBuffer::new(ctx, core::mem::size_of::<WfsGpuCache>())?;
        // SAFETY: WfsGpuCache is a #[repr(C)] record of integers without padding.
        unsafe { desc.copy_record_from_host(0, &wire)? };
        Ok(Self {
            desc,
            table,
            state,
            meta,
            _data: data,
            locks: lock_buf,
            stats,
            frames: frames as u32,
            page_bytes,
        })
    }

    /// Device address of the descriptor (what `WfsGpuContext::cache` holds).
    pub fn descriptor_ptr(&self) -> u64 {
        self.desc.ptr()
    }

    /// Page frames.
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Bytes per page.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    /// The frames' state words (pin count in the low 20 bits, then the flags of warpfs.cuh),
    /// for diagnostics. Waits for running kernels (a synchronous copy).
    pub fn frame_states(&self) -> Result<Vec<u32>> {
        let mut raw = vec![0u8; self.frames as usize * 4];
        self.state.copy_to_host(0, &mut raw)?;
        Ok(raw
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
            .collect())
    }

    /// Empties the cache (every page forgotten, statistics kept). Only while no kernel of the
    /// context runs (the caller synchronises first). Costs four memsets.
    pub fn reset(&mut self) -> Result<()> {
        self.table.fill(0)?;
        self.state.fill(0)?;
        self.meta.fill(0xff)?;
        self.locks.fill(0)?;
        Ok(())
    }

    /// The statistics stripes, summed (`api_errors` left 0: it lives in the channel state).
    /// Waits for running kernels of the context (a synchronous copy).
    pub fn stats(&self) -> Result<GpuCacheStats> {
        let mut raw = vec![0u8; self.stats.len()];
        self.stats.copy_to_host(0, &mut raw)?;
        let mut s = GpuCacheStats::default();
        for stripe in raw.chunks_exact(core::mem::size_of::<WfsGpuCacheStats>()) {
            let w = |i: usize| u64::from_le_bytes(stripe[i * 8..i * 8 + 8].try_into().unwrap());
            s.hits += w(0);
            s.misses += w(1);
            s.coalesced += w(2);
            s.evictions += w(3);
            s.bytes_loaded += w(4);
            s.bypassed += w(5);
            s.write_patches += w(6);
            s.load_errors += w(7);
            s.writebacks += w(8);
            s.writeback_errors += w(9);
            s.in_place += w(10);
            s.in_place_bytes += w(11);
        }
        Ok(s)
    }
}

/// Resident warps of a launch: the grid's warps, or at most `blocks_per_sm × sms` blocks'
/// worth of them.
pub fn resident_warps(grid_blocks: u64, block_threads: u32, blocks_per_sm: u64, sms: u64) -> u64 {
    let warps_per_block = u64::from(block_threads.div_ceil(32));
    grid_blocks.min(blocks_per_sm * sms) * warps_per_block
}

/// The deadlock-freedom check of a launch: `resident_warps × pages_held_per_warp` must not
/// exceed `frames`. Pure arithmetic (tested without a GPU).
pub fn check_holds(resident_warps: u64, pages_held_per_warp: u64, frames: u64) -> Result<()> {
    let held = resident_warps.saturating_mul(pages_held_per_warp);
    if held > frames {
        return Err(Error::Config(format!(
            "launch refused: {resident_warps} resident warps × {pages_held_per_warp} pages held \
             per warp = {held} pages, but the GPU page cache has {frames} frames; raise \
             GpuIoConfig::gpu_cache_bytes (or lower gpu_page_bytes), launch fewer blocks, or \
             hold fewer pages per warp"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn launch_check_refuses_more_holds_than_frames() {
        // 132 SMs × 16 blocks of 128 threads (4 warps): 8448 resident warps.
        let w = resident_warps(100_000, 128, 16, 132);
        assert_eq!(w, 8448);
        assert!(check_holds(w, 32, 262_144).is_err());
        assert!(check_holds(w, 31, 262_144).is_ok());
        // A grid smaller than the device: only its own warps count.
        assert_eq!(resident_warps(10, 128, 16, 132), 40);
        let e = check_holds(40, 32, 64).unwrap_err().to_string();
        assert!(e.contains("1280 pages") && e.contains("64 frames"), "{e}");
    }
}
