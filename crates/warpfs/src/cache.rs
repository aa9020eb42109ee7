//! Host cache tier: a fixed arena of pages with CLOCK eviction, pins, write-back and stats.
//!
//! INTERFACE CONTRACT (the daemon codes against it; the implementation may change inside):
//! - pages are `page_size` bytes (a power of two ≥ 512) in one arena (a [`SharedMemory`] region,
//!   4096-aligned, so io_uring can register it and a GPU can map it);
//! - a page is identified by (`FileEntry::id`, page number = file offset / page_size);
//! - `lookup` pins what it returns (`Hit`, `Miss`); every pin is undone by `release` (or by
//!   `finish_load` with an error);
//! - CLOCK: a referenced page gets a second chance; pinned, loading and writing-back pages are
//!   never evicted; a dirty victim is not reused until written back: the sweep queues it for
//!   write-back (`take_writebacks`) and keeps looking;
//! - thread-safe: every method takes `&self`.

use crate::files::FileEntry;
use crate::region::SharedMemory;
use std::sync::Arc;

/// Index of a page in the arena.
pub type PageIdx = u32;

/// Cache geometry and policy.
#[derive(Debug, Clone, Copy)]
pub struct CacheConfig {
    /// Page size in bytes (power of two, ≥ 512).
    pub page_size: usize,
    /// Arena size in bytes (rounded down to whole pages; at least 4 pages).
    pub capacity: usize,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self { page_size: 64 * 1024, capacity: 256 << 20 }
    }
}

/// Outcome of [`HostCache::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// Resident and valid; pinned for the caller.
    Hit(PageIdx),
    /// Not resident: this page is reserved for the caller (state Loading, pinned). The caller
    /// reads the file into `page_ptr(idx)` and calls `finish_load`.
    Miss(PageIdx),
    /// Being loaded or written back by someone else: retry later (this is how concurrent
    /// misses on one page coalesce into one I/O).
    Busy,
    /// No page can be evicted right now (all pinned, loading or dirty): retry later.
    Full,
}

/// A dirty page handed out for write-back; pinned until `finish_writeback`.
#[derive(Debug, Clone)]
pub struct Writeback {
    /// The page.
    pub idx: PageIdx,
    /// Its file.
    pub file: Arc<FileEntry>,
    /// File offset of the page's first byte.
    pub offset: u64,
    /// Dirty bytes to write, from the page start (the page's valid length).
    pub len: usize,
}

/// Counters since creation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Demand lookups that found the page valid.
    pub hits: u64,
    /// Demand lookups that reserved a page to load.
    pub misses: u64,
    /// Lookups that found the page loading by another (coalesced).
    pub coalesced: u64,
    /// Loads finished (demand + readahead), i.e. file reads issued for the cache.
    pub loads: u64,
    /// Bytes loaded from files.
    pub bytes_loaded: u64,
    /// Valid pages evicted to make room.
    pub evictions: u64,
    /// Pages loaded by readahead.
    pub readahead_loaded: u64,
    /// Readahead pages later hit by a demand lookup.
    pub readahead_used: u64,
    /// Readahead pages evicted or invalidated without ever being used.
    pub readahead_wasted: u64,
    /// Dirty pages written back.
    pub writebacks: u64,
    /// Pages dirty now.
    pub dirty_pages: u64,
}

/// The host cache tier.
pub struct HostCache {
    _todo: (),
}

impl HostCache {
    /// A cache with its arena in fresh heap memory.
    pub fn new(cfg: CacheConfig) -> crate::Result<Self> {
        todo!("{cfg:?}")
    }
    /// A cache whose arena is `region` (e.g. pinned, device-mapped memory).
    pub fn with_region(cfg: CacheConfig, region: Arc<dyn SharedMemory>) -> crate::Result<Self> {
        let _ = region;
        todo!("{cfg:?}")
    }
    /// Page size in bytes.
    pub fn page_size(&self) -> usize {
        todo!()
    }
    /// Number of pages.
    pub fn pages(&self) -> usize {
        todo!()
    }
    /// The arena (start, length) for fixed-buffer registration.
    pub fn arena(&self) -> (*mut u8, usize) {
        todo!()
    }
    /// Start of page `idx` in the arena.
    pub fn page_ptr(&self, idx: PageIdx) -> *mut u8 {
        todo!("{idx}")
    }
    /// Finds or reserves page `page` of `file`. `readahead` marks loads made for prefetching
    /// (counted apart; demand hit/miss counters are not touched).
    pub fn lookup(&self, file: &Arc<FileEntry>, page: u64, readahead: bool) -> Lookup {
        todo!("{} {page} {readahead}", file.id)
    }
    /// Pins page `page` of file `file_id` only if it is resident and valid (no reservation).
    pub fn lookup_resident(&self, file_id: u64, page: u64) -> Option<PageIdx> {
        todo!("{file_id} {page}")
    }
    /// Bytes of page `idx` that hold file data (less than a page at end of file).
    pub fn valid_len(&self, idx: PageIdx) -> usize {
        todo!("{idx}")
    }
    /// Ends the load of a `Miss` page: `result` ≥ 0 is the bytes read (valid length), < 0 drops
    /// the page (it becomes free). Unpins.
    pub fn finish_load(&self, idx: PageIdx, result: i64) {
        todo!("{idx} {result}")
    }
    /// Copies `data` into pinned page `idx` at `at`, extending its valid length if the data
    /// reaches past it; with `dirty` the page is marked dirty (write-back mode).
    pub fn write_into(&self, idx: PageIdx, at: usize, data: &[u8], dirty: bool) {
        todo!("{idx} {at} {} {dirty}", data.len())
    }
    /// Unpins page `idx`.
    pub fn release(&self, idx: PageIdx) {
        todo!("{idx}")
    }
    /// Up to `max` dirty pages queued for write-back by eviction sweeps (pinned, marked
    /// writing-back).
    pub fn take_writebacks(&self, max: usize) -> Vec<Writeback> {
        todo!("{max}")
    }
    /// All dirty pages of file `file_id` (for fsync/flush), pinned and marked writing-back.
    pub fn dirty_pages_of(&self, file_id: u64) -> Vec<Writeback> {
        todo!("{file_id}")
    }
    /// Every dirty page (for flush/shutdown).
    pub fn all_dirty(&self) -> Vec<Writeback> {
        todo!()
    }
    /// Ends a write-back: `ok` makes the page clean; otherwise it stays dirty. Unpins.
    pub fn finish_writeback(&self, idx: PageIdx, ok: bool) {
        todo!("{idx} {ok}")
    }
    /// Drops every unpinned clean page of file `file_id`, and clips pages past `new_len` bytes
    /// if given (truncate). Dirty pages are kept (flush first).
    pub fn invalidate_file(&self, file_id: u64, new_len: Option<u64>) {
        todo!("{file_id} {new_len:?}")
    }
    /// Counters.
    pub fn stats(&self) -> CacheStats {
        todo!()
    }
}
