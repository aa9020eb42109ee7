//! A channel: the request rings, completion records and data region that one group of
//! requesters (the host agents of a runtime, the kernels of one GPU) shares with the daemon.
//!
//! Region layout (one [`SharedMemory`] block, so a backend can place all of it in GPU-visible
//! pinned memory): demand ring · prefetch ring · completion records · data region. Requests
//! name a completion index and a byte offset into the data region; the daemon checks both.

use crate::cache_refs::{CacheRefs, RefMode};
use crate::completion::Completions;
use crate::error::{Error, Result};
use crate::region::{range_in, HostMemory, SharedMemory};
use crate::ring::Ring;
use std::sync::Arc;

/// Geometry of a channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelConfig {
    /// Slots per ring (power of two).
    pub ring_capacity: usize,
    /// Completion records.
    pub completions: usize,
    /// Bytes of data region.
    pub data_bytes: usize,
}

/// Byte offsets of a channel's parts inside its region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChannelLayout {
    /// Demand ring header.
    pub demand: usize,
    /// Prefetch ring header.
    pub prefetch: usize,
    /// First completion record.
    pub completions: usize,
    /// Start of the data region.
    pub data: usize,
    /// Total bytes.
    pub total: usize,
}

impl ChannelLayout {
    /// The first page boundary at or after the channel's end: where a backend keeps memory
    /// of its own in the same region (the GPU control words). Fails on overflow.
    pub fn end_page(&self) -> Result<usize> {
        self.total
            .checked_next_multiple_of(4096)
            .ok_or_else(|| Error::Config("channel too large".into()))
    }
}

impl ChannelConfig {
    /// Where each part goes; fails on a capacity that is not a power of two or sizes that overflow.
    pub fn layout(&self) -> Result<ChannelLayout> {
        if !self.ring_capacity.is_power_of_two() || self.ring_capacity < 2 {
            return Err(Error::Config(format!(
                "ring capacity must be a power of two ≥ 2, got {}",
                self.ring_capacity
            )));
        }
        if self.completions == 0 || self.completions > u32::MAX as usize {
            return Err(Error::Config(
                "a channel needs 1 ..= 2^32-1 completion records".into(),
            ));
        }
        let ring = Ring::bytes_for(self.ring_capacity);
        let demand = 0;
        let prefetch = ring;
        let completions = 2 * ring;
        let data = (completions + Completions::bytes_for(self.completions)).div_ceil(4096) * 4096;
        let total = data
            .checked_add(self.data_bytes)
            .ok_or_else(|| Error::Config("channel data region too large".into()))?;
        Ok(ChannelLayout {
            demand,
            prefetch,
            completions,
            data,
            total,
        })
    }
}

/// Rings + completions + data region of one requester group.
pub struct Channel {
    /// Demand requests (served first).
    pub demand: Ring,
    /// Prefetch hints (served when no demand request waits).
    pub prefetch: Ring,
    /// Completion records.
    pub completions: Completions,
    region: Arc<dyn SharedMemory>,
    layout: ChannelLayout,
    data_len: usize,
    /// Per completion record: whether its answers may reference host-cache pages, and the
    /// references the daemon holds for device requesters (host memory, never shared with a
    /// device; see [`Channel::set_cache_refs`]).
    pub refs: CacheRefs,
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl Channel {
    /// Lays a channel out in `region` (which must hold `cfg.layout()?.total` bytes).
    pub fn in_region(cfg: ChannelConfig, region: Arc<dyn SharedMemory>) -> Result<Self> {
        let layout = cfg.layout()?;
        if region.len() < layout.total {
            return Err(Error::Config(format!(
                "region of {} bytes is too small for a channel of {} bytes",
                region.len(),
                layout.total
            )));
        }
        let bad = || Error::Config("channel layout does not fit its region".into());
        Ok(Self {
            demand: Ring::in_region(region.clone(), layout.demand, cfg.ring_capacity)
                .ok_or_else(bad)?,
            prefetch: Ring::in_region(region.clone(), layout.prefetch, cfg.ring_capacity)
                .ok_or_else(bad)?,
            completions: Completions::in_region(
                region.clone(),
                layout.completions,
                cfg.completions,
            )
            .ok_or_else(bad)?,
            region,
            layout,
            data_len: cfg.data_bytes,
            refs: CacheRefs::new(cfg.completions),
        })
    }

    /// A channel in fresh heap memory (the host backend's).
    pub fn new_host(cfg: ChannelConfig) -> Result<Self> {
        let layout = cfg.layout()?;
        Self::in_region(cfg, Arc::new(HostMemory::new(layout.total)))
    }

    /// The layout in force.
    pub fn layout(&self) -> ChannelLayout {
        self.layout
    }

    /// The whole region (for backends that map it into a device).
    pub fn region(&self) -> &Arc<dyn SharedMemory> {
        &self.region
    }

    /// Bytes in the data region.
    pub fn data_len(&self) -> usize {
        self.data_len
    }

    /// Declares whether the requester owning completion records `records` accepts cache-page
    /// references: a one-page read that hits the host cache is then completed with
    /// `aux = page index + 1` and the page left pinned, instead of being copied into the data
    /// region; the requester copies the bytes from the cache page itself and releases the pin
    /// (`HostCache::release`). Only requesters in the daemon's address space can (host
    /// agents); devices that map the host cache use [`RefMode::Daemon`] through
    /// [`CacheRefs::set_mode`]. Every other record gets its bytes in the data region and
    /// `aux = 0`. Indices out of range are ignored.
    pub fn set_cache_refs(&self, records: std::ops::Range<u32>, on: bool) {
        self.refs.set_mode(
            records,
            if on {
                RefMode::Requester
            } else {
                RefMode::Copy
            },
        );
    }

    /// Pointer to `[off, off+len)` of the data region, or `None` if it is not inside.
    pub fn data_range(&self, off: u64, len: u64) -> Option<*mut u8> {
        if range_in(off, len, self.data_len) {
            // SAFETY: off + len ≤ data_len, and the data region [layout.data, layout.data +
            // data_len) lies inside the region (checked in `in_region`).
            Some(unsafe { self.region.as_ptr().add(self.layout.data + off as usize) })
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_ordered_and_aligned() {
        let cfg = ChannelConfig {
            ring_capacity: 64,
            completions: 100,
            data_bytes: 1 << 20,
        };
        let l = cfg.layout().unwrap();
        assert!(l.demand < l.prefetch && l.prefetch < l.completions && l.completions < l.data);
        // The GPU polls a record's first 16 bytes in one vector load (warpfs.cuh).
        assert_eq!(l.completions % 16, 0);
        assert_eq!(l.data % 4096, 0);
        assert_eq!(l.total, l.data + (1 << 20));
        assert!(ChannelConfig {
            ring_capacity: 3,
            ..cfg
        }
        .layout()
        .is_err());
    }

    #[test]
    fn data_range_is_bounds_checked() {
        let ch = Channel::new_host(ChannelConfig {
            ring_capacity: 4,
            completions: 4,
            data_bytes: 8192,
        })
        .unwrap();
        assert!(ch.data_range(0, 8192).is_some());
        assert!(ch.data_range(1, 8192).is_none());
        assert!(ch.data_range(u64::MAX, 1).is_none());
        assert_eq!(ch.data_range(0, 0).map(|p| p as usize % 4096), Some(0));
    }
}
