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
//!
//! IMPLEMENTATION: the map (file id, page) → [`PageIdx`] is split into 64 shards, each a
//! `Mutex<HashMap>`; every page has its own `Mutex` of metadata, which is the truth (the map is
//! only a hint that is re-checked under the page lock). Lock order is page → shard → leaf lists
//! (free list, write-back queue); no code path takes a page lock while holding a shard lock, so
//! there is no deadlock, and a hit costs two short uncontended locks. Counters are atomics.
//!
//! Refinements of the contract (compatible with it):
//! - `lookup` of a page being written back answers `Busy` (as documented); `lookup_resident`
//!   pins it (its bytes are valid), and a `write_into` during write-back keeps the page dirty
//!   after `finish_writeback`, so no write is lost whichever path the daemon takes;
//! - `write_into` past the valid length zero-fills the gap (a hole reads as zeros);
//! - `coalesced` counts demand lookups only; `lookup_resident` does not count as a hit but does
//!   count as a use of a readahead page.

use crate::error::Error;
use crate::files::FileEntry;
use crate::region::{HostMemory, SharedMemory, REGION_ALIGN};
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

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
        Self {
            page_size: 64 * 1024,
            capacity: 256 << 20,
        }
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
    /// Demand lookups that found the page loading by another (coalesced).
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

/// Number of map shards (a power of two).
const SHARDS: usize = 64;
/// Full CLOCK sweeps a reservation may make before answering `Full`.
const SWEEPS: usize = 2;
/// Re-probes of `lookup` when the map hint went stale under it (a page was re-assigned).
const RETRIES: usize = 64;

/// (file id, page number).
type Key = (u64, u64);

/// Lifecycle of a page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PageState {
    /// Unused; on the free list, in no map.
    Free,
    /// Reserved by a `Miss`; the reserver fills it and calls `finish_load`.
    Loading,
    /// Holds file data.
    Valid,
    /// Holds file data that is being (or is queued to be) written back.
    WritingBack,
}

/// Per-page metadata (guarded by the page's mutex).
#[derive(Debug)]
struct PageMeta {
    state: PageState,
    /// Pins held (lookups, loads, write-backs).
    pins: u32,
    /// CLOCK reference bit.
    referenced: bool,
    /// Holds data the file does not have yet.
    dirty: bool,
    /// Written while being written back: stays dirty after `finish_writeback(ok)`.
    redirtied: bool,
    /// Queued by a sweep for `take_writebacks`, not yet handed out.
    queued: bool,
    /// Loaded by readahead and not yet used by a demand access.
    readahead: bool,
    /// Reserved by a readahead lookup (becomes `readahead` on a successful load).
    loading_readahead: bool,
    /// Bytes of file data from the page start.
    valid_len: usize,
    /// Owner key; `None` when free.
    key: Option<Key>,
    /// Owner file; `None` when free.
    file: Option<Arc<FileEntry>>,
}

impl PageMeta {
    fn free() -> Self {
        Self {
            state: PageState::Free,
            pins: 0,
            referenced: false,
            dirty: false,
            redirtied: false,
            queued: false,
            readahead: false,
            loading_readahead: false,
            valid_len: 0,
            key: None,
            file: None,
        }
    }
}

/// One page's metadata on its own cache line (no false sharing between pages).
#[repr(align(64))]
struct Slot(Mutex<PageMeta>);

/// Multiply-xor hasher for `Key` (two `u64` writes); far cheaper than SipHash and keys are
/// not attacker-chosen (file ids are ours, page numbers are validated by the daemon).
#[derive(Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        mix(self.0)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
}

/// splitmix64 finaliser: every input bit affects every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

type Map = HashMap<Key, PageIdx, BuildHasherDefault<KeyHasher>>;

/// One shard of the map on its own cache line.
#[repr(align(64))]
struct Shard(Mutex<Map>);

#[derive(Default)]
struct Counters {
    hits: AtomicU64,
    misses: AtomicU64,
    coalesced: AtomicU64,
    loads: AtomicU64,
    bytes_loaded: AtomicU64,
    evictions: AtomicU64,
    readahead_loaded: AtomicU64,
    readahead_used: AtomicU64,
    readahead_wasted: AtomicU64,
    writebacks: AtomicU64,
    dirty_pages: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Locks `m`, ignoring poisoning: every critical section leaves the metadata consistent
/// before anything that can panic, so a poisoned lock still guards valid state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// What probing a mapped page found.
enum Probe {
    Hit,
    /// Loading (`true`) or being written back (`false`).
    Busy(bool),
    /// The page no longer belongs to the key: look again.
    Stale,
}

/// The host cache tier.
pub struct HostCache {
    region: Arc<dyn SharedMemory>,
    /// Arena start (address of `region`), kept as an integer so the cache is `Send + Sync`.
    base: usize,
    page_size: usize,
    slots: Box<[Slot]>,
    shards: Box<[Shard]>,
    free: Mutex<Vec<PageIdx>>,
    writeback_queue: Mutex<VecDeque<PageIdx>>,
    hand: AtomicUsize,
    counters: Counters,
}

impl std::fmt::Debug for HostCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HostCache")
            .field("page_size", &self.page_size)
            .field("pages", &self.slots.len())
            .finish_non_exhaustive()
    }
}

impl HostCache {
    /// A cache with its arena in fresh heap memory. Costs one zeroed allocation of
    /// `cfg.capacity` bytes (touched lazily) plus ~64 bytes of metadata per page.
    pub fn new(cfg: CacheConfig) -> crate::Result<Self> {
        let pages = Self::check_config(&cfg)?;
        let region: Arc<dyn SharedMemory> = Arc::new(HostMemory::new(pages * cfg.page_size));
        Self::with_region(cfg, region)
    }

    /// A cache whose arena is `region` (e.g. pinned, device-mapped memory). The region must be
    /// 4096-aligned and hold at least `cfg.capacity` rounded down to whole pages; extra bytes
    /// are left unused.
    pub fn with_region(cfg: CacheConfig, region: Arc<dyn SharedMemory>) -> crate::Result<Self> {
        let pages = Self::check_config(&cfg)?;
        let need = pages * cfg.page_size;
        if region.len() < need {
            return Err(Error::Config(format!(
                "the cache region holds {} bytes but {pages} pages of {} bytes need {need}; \
                 give a larger region or lower CacheConfig::capacity",
                region.len(),
                cfg.page_size
            )));
        }
        let base = region.as_ptr() as usize;
        if base % REGION_ALIGN != 0 {
            return Err(Error::Config(format!(
                "the cache region starts at {base:#x}, which is not {REGION_ALIGN}-byte aligned; \
                 allocate it with region::HostMemory or page-aligned pinned memory"
            )));
        }
        let slots = (0..pages)
            .map(|_| Slot(Mutex::new(PageMeta::free())))
            .collect();
        let shards = (0..SHARDS)
            .map(|_| Shard(Mutex::new(Map::default())))
            .collect();
        // Pop order: page 0 first (cosmetic; helps reading test output).
        let free = (0..pages as PageIdx).rev().collect();
        Ok(Self {
            region,
            base,
            page_size: cfg.page_size,
            slots,
            shards,
            free: Mutex::new(free),
            writeback_queue: Mutex::new(VecDeque::new()),
            hand: AtomicUsize::new(0),
            counters: Counters::default(),
        })
    }

    /// Validates `cfg`; returns the number of pages.
    fn check_config(cfg: &CacheConfig) -> crate::Result<usize> {
        if !cfg.page_size.is_power_of_two() || cfg.page_size < 512 {
            return Err(Error::Config(format!(
                "cache page size {} must be a power of two of at least 512 bytes (64 KiB is a \
                 good default)",
                cfg.page_size
            )));
        }
        let pages = cfg.capacity / cfg.page_size;
        if pages < 4 {
            return Err(Error::Config(format!(
                "cache capacity {} bytes holds {pages} pages of {} bytes; at least 4 are needed \
                 (raise the capacity or lower the page size)",
                cfg.capacity, cfg.page_size
            )));
        }
        if pages > PageIdx::MAX as usize {
            return Err(Error::Config(format!(
                "cache capacity {} bytes makes {pages} pages, more than {} can be indexed; raise \
                 the page size",
                cfg.capacity,
                PageIdx::MAX
            )));
        }
        Ok(pages)
    }

    /// Page size in bytes.
    pub fn page_size(&self) -> usize {
        self.page_size
    }

    /// Number of pages.
    pub fn pages(&self) -> usize {
        self.slots.len()
    }

    /// The arena (start, length) for fixed-buffer registration (length = pages × page size).
    pub fn arena(&self) -> (*mut u8, usize) {
        (self.region.as_ptr(), self.slots.len() * self.page_size)
    }

    /// Start of page `idx` in the arena. Panics if `idx` is not a page of this cache.
    pub fn page_ptr(&self, idx: PageIdx) -> *mut u8 {
        let i = idx as usize;
        assert!(
            i < self.slots.len(),
            "page index {idx} out of range ({} pages)",
            self.slots.len()
        );
        (self.base + i * self.page_size) as *mut u8
    }

    fn slot(&self, idx: PageIdx) -> MutexGuard<'_, PageMeta> {
        let slot = self.slots.get(idx as usize).unwrap_or_else(|| {
            panic!("page index {idx} out of range ({} pages)", self.slots.len())
        });
        lock(&slot.0)
    }

    fn shard(&self, key: Key) -> &Mutex<Map> {
        let h = mix(key.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.1);
        &self.shards[(h >> (64 - SHARDS.trailing_zeros())) as usize].0
    }

    /// Removes `key → idx` from the map if it still points at `idx`. Called with the page lock
    /// held (lock order page → shard).
    fn unmap(&self, key: Key, idx: PageIdx) {
        let mut map = lock(self.shard(key));
        if map.get(&key) == Some(&idx) {
            map.remove(&key);
        }
    }

    /// Finds or reserves page `page` of `file`. `readahead` marks loads made for prefetching
    /// (counted apart; demand hit/miss counters are not touched). A hit costs two uncontended
    /// mutexes and one hash probe; a miss may sweep up to 2 × pages entries (never blocks on
    /// I/O, never loops forever).
    pub fn lookup(&self, file: &Arc<FileEntry>, page: u64, readahead: bool) -> Lookup {
        let key = (file.id, page);
        let shard = self.shard(key);
        for _ in 0..RETRIES {
            let mapped = lock(shard).get(&key).copied();
            if let Some(idx) = mapped {
                match self.probe(idx, key, !readahead, false) {
                    Probe::Hit => {
                        if !readahead {
                            bump(&self.counters.hits, 1);
                        }
                        return Lookup::Hit(idx);
                    }
                    Probe::Busy(loading) => {
                        if loading && !readahead {
                            bump(&self.counters.coalesced, 1);
                        }
                        return Lookup::Busy;
                    }
                    Probe::Stale => continue,
                }
            }
            let Some(idx) = self.reserve(file, key, readahead) else {
                return Lookup::Full;
            };
            let mut map = lock(shard);
            if map.contains_key(&key) {
                // Someone reserved or mapped this key meanwhile: give our page back, look again.
                drop(map);
                self.unreserve(idx);
                continue;
            }
            map.insert(key, idx);
            drop(map);
            if !readahead {
                bump(&self.counters.misses, 1);
            }
            return Lookup::Miss(idx);
        }
        // The key kept changing hands under us: let the caller retry later.
        Lookup::Busy
    }

    /// Pins page `idx` if it belongs to `key` and is valid (or, with `writing_back_ok`, being
    /// written back). `demand` sets the reference bit and uses a readahead page.
    fn probe(&self, idx: PageIdx, key: Key, demand: bool, writing_back_ok: bool) -> Probe {
        let mut m = self.slot(idx);
        if m.key != Some(key) {
            return Probe::Stale;
        }
        match m.state {
            PageState::Free => Probe::Stale,
            PageState::Loading => Probe::Busy(true),
            PageState::WritingBack if !writing_back_ok => Probe::Busy(false),
            PageState::Valid | PageState::WritingBack => {
                m.pins += 1;
                if demand {
                    m.referenced = true;
                    if m.readahead {
                        m.readahead = false;
                        bump(&self.counters.readahead_used, 1);
                    }
                }
                Probe::Hit
            }
        }
    }

    /// Sets `m` up as a fresh reservation of `key`; returns the previous owner's file handle
    /// so the caller drops it outside the lock.
    fn claim(
        m: &mut PageMeta,
        file: &Arc<FileEntry>,
        key: Key,
        readahead: bool,
    ) -> Option<Arc<FileEntry>> {
        let old = m.file.take();
        *m = PageMeta {
            state: PageState::Loading,
            pins: 1,
            referenced: !readahead,
            loading_readahead: readahead,
            key: Some(key),
            file: Some(file.clone()),
            ..PageMeta::free()
        };
        old
    }

    /// Takes a free page or evicts one by CLOCK and reserves it for `key` (Loading, pinned,
    /// not yet in the map). `None` when nothing can be evicted now.
    fn reserve(&self, file: &Arc<FileEntry>, key: Key, readahead: bool) -> Option<PageIdx> {
        if let Some(idx) = self.take_free(file, key, readahead) {
            return Some(idx);
        }
        let n = self.slots.len();
        for _ in 0..SWEEPS * n + 1 {
            let i = self.hand.fetch_add(1, Ordering::Relaxed) % n;
            let idx = i as PageIdx;
            let mut m = lock(&self.slots[i].0);
            if m.state != PageState::Valid || m.pins > 0 {
                continue;
            }
            if m.referenced {
                m.referenced = false;
                continue;
            }
            if m.dirty {
                // Not reusable until written back: queue it and keep looking.
                m.state = PageState::WritingBack;
                m.pins = 1;
                m.queued = true;
                lock(&self.writeback_queue).push_back(idx);
                continue;
            }
            let old_key = m.key.expect("a valid page has a key");
            self.unmap(old_key, idx);
            bump(&self.counters.evictions, 1);
            if m.readahead {
                bump(&self.counters.readahead_wasted, 1);
            }
            let old = Self::claim(&mut m, file, key, readahead);
            drop(m);
            drop(old);
            return Some(idx);
        }
        // A page may have been freed while we swept.
        self.take_free(file, key, readahead)
    }

    fn take_free(&self, file: &Arc<FileEntry>, key: Key, readahead: bool) -> Option<PageIdx> {
        let idx = lock(&self.free).pop()?;
        let mut m = self.slot(idx);
        debug_assert_eq!(
            m.state,
            PageState::Free,
            "page {idx} on the free list is not free"
        );
        let old = Self::claim(&mut m, file, key, readahead);
        drop(m);
        drop(old);
        Some(idx)
    }

    /// Returns a reservation that never made it into the map to the free list.
    fn unreserve(&self, idx: PageIdx) {
        let mut m = self.slot(idx);
        let old = m.file.take();
        *m = PageMeta::free();
        lock(&self.free).push(idx);
        drop(m);
        drop(old);
    }

    /// Pins page `page` of file `file_id` only if it is resident and holds valid data (also
    /// while it is being written back; see the module notes). No reservation, no hit counted;
    /// it sets the reference bit and uses a readahead page. Costs like a hit.
    pub fn lookup_resident(&self, file_id: u64, page: u64) -> Option<PageIdx> {
        let key = (file_id, page);
        let shard = self.shard(key);
        for _ in 0..RETRIES {
            let idx = lock(shard).get(&key).copied()?;
            match self.probe(idx, key, true, true) {
                Probe::Hit => return Some(idx),
                Probe::Busy(_) => return None,
                Probe::Stale => continue,
            }
        }
        None
    }

    /// Bytes of page `idx` that hold file data (less than a page at end of file).
    pub fn valid_len(&self, idx: PageIdx) -> usize {
        self.slot(idx).valid_len
    }

    /// Ends the load of a `Miss` page: `result` ≥ 0 is the bytes read (valid length, clamped to
    /// the page size; a `write_into` made during the load that reaches further is kept), < 0
    /// drops the page (it becomes free and leaves the map). Unpins. A call on a page that is
    /// not loading is a caller bug: it panics in debug builds and is ignored in release.
    pub fn finish_load(&self, idx: PageIdx, result: i64) {
        let mut m = self.slot(idx);
        if m.state != PageState::Loading {
            debug_assert!(false, "finish_load on page {idx} in state {:?}", m.state);
            return;
        }
        if result < 0 {
            if let Some(key) = m.key {
                self.unmap(key, idx);
            }
            if m.dirty {
                self.counters.dirty_pages.fetch_sub(1, Ordering::Relaxed);
            }
            let old = m.file.take();
            *m = PageMeta::free();
            lock(&self.free).push(idx);
            drop(m);
            drop(old);
            return;
        }
        let len = usize::try_from(result)
            .unwrap_or(usize::MAX)
            .min(self.page_size);
        m.valid_len = m.valid_len.max(len);
        m.state = PageState::Valid;
        m.pins = m.pins.saturating_sub(1);
        if m.loading_readahead {
            m.loading_readahead = false;
            m.readahead = true;
            bump(&self.counters.readahead_loaded, 1);
        }
        bump(&self.counters.loads, 1);
        bump(&self.counters.bytes_loaded, len as u64);
    }

    /// Copies `data` into pinned page `idx` at `at`, extending its valid length if the data
    /// reaches past it (a gap between the old valid length and `at` is zero-filled); with
    /// `dirty` the page is marked dirty (write-back mode). A write into a page that is being
    /// written back keeps it dirty after that write-back. Copies under the page lock (a 64 KiB
    /// page costs a few µs). Panics if `at + data.len()` exceeds the page size.
    pub fn write_into(&self, idx: PageIdx, at: usize, data: &[u8], dirty: bool) {
        let ps = self.page_size;
        assert!(
            at <= ps && data.len() <= ps - at,
            "write of {} bytes at {at} does not fit a page of {ps} bytes",
            data.len()
        );
        let ptr = self.page_ptr(idx);
        let mut m = self.slot(idx);
        debug_assert!(m.pins > 0, "write_into page {idx} that is not pinned");
        if at > m.valid_len && m.state != PageState::Loading {
            // SAFETY: valid_len ≤ at ≤ page size, so the range lies inside page `idx` of the
            // arena; the page lock serialises writers of this page's metadata and bytes.
            unsafe { std::ptr::write_bytes(ptr.add(m.valid_len), 0, at - m.valid_len) };
        }
        // SAFETY: `at + data.len() ≤ page size` (checked above), so the destination lies inside
        // page `idx`; `data` is a distinct Rust slice, so the ranges do not overlap.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr.add(at), data.len()) };
        m.valid_len = m.valid_len.max(at + data.len());
        if m.state == PageState::WritingBack {
            // The in-flight write-back may carry older bytes: write the page again afterwards
            // (also for write-through, whose file write could be overtaken by the write-back).
            m.redirtied = true;
        } else if dirty && !m.dirty {
            m.dirty = true;
            bump(&self.counters.dirty_pages, 1);
        }
    }

    /// Unpins page `idx`. An unbalanced release is a caller bug: it panics in debug builds and
    /// is ignored in release.
    pub fn release(&self, idx: PageIdx) {
        let mut m = self.slot(idx);
        debug_assert!(m.pins > 0, "release of page {idx} that is not pinned");
        m.pins = m.pins.saturating_sub(1);
    }

    /// Builds the hand-out record of a page whose lock is held.
    fn writeback_of(&self, idx: PageIdx, m: &PageMeta) -> Writeback {
        let (_, page) = m.key.expect("a dirty page has a key");
        Writeback {
            idx,
            file: m.file.clone().expect("a dirty page has a file"),
            offset: page.saturating_mul(self.page_size as u64),
            len: m.valid_len,
        }
    }

    /// Up to `max` dirty pages queued for write-back by eviction sweeps (pinned, marked
    /// writing-back). Costs one lock per page handed out.
    pub fn take_writebacks(&self, max: usize) -> Vec<Writeback> {
        let mut out = Vec::new();
        while out.len() < max {
            let Some(idx) = lock(&self.writeback_queue).pop_front() else {
                break;
            };
            let mut m = self.slot(idx);
            // Entries handed out meanwhile by `dirty_pages_of`/`all_dirty` are stale: skip.
            if m.state == PageState::WritingBack && m.queued {
                m.queued = false;
                out.push(self.writeback_of(idx, &m));
            }
        }
        out
    }

    /// Hands out every dirty page accepted by `want` that is not already handed out.
    fn collect_dirty(&self, want: impl Fn(u64) -> bool) -> Vec<Writeback> {
        let mut out = Vec::new();
        for (i, slot) in self.slots.iter().enumerate() {
            let mut m = lock(&slot.0);
            if !m.dirty || !m.key.is_some_and(|(f, _)| want(f)) {
                continue;
            }
            match m.state {
                PageState::Valid => {
                    m.state = PageState::WritingBack;
                    m.pins += 1;
                }
                // Queued by a sweep but not taken yet: already pinned, hand it out here.
                PageState::WritingBack if m.queued => m.queued = false,
                _ => continue,
            }
            out.push(self.writeback_of(i as PageIdx, &m));
        }
        out
    }

    /// All dirty pages of file `file_id` (for fsync/flush), pinned and marked writing-back.
    /// Pages already handed out for write-back are not repeated. Scans every page.
    pub fn dirty_pages_of(&self, file_id: u64) -> Vec<Writeback> {
        self.collect_dirty(|f| f == file_id)
    }

    /// Every dirty page (for flush/shutdown), as [`dirty_pages_of`](Self::dirty_pages_of).
    pub fn all_dirty(&self) -> Vec<Writeback> {
        self.collect_dirty(|_| true)
    }

    /// Ends a write-back: `ok` makes the page clean (unless it was written meanwhile);
    /// otherwise it stays dirty (and a later sweep queues it again). Unpins. A call on a page
    /// that is not being written back is a caller bug: it panics in debug builds and is ignored
    /// in release.
    pub fn finish_writeback(&self, idx: PageIdx, ok: bool) {
        let mut m = self.slot(idx);
        if m.state != PageState::WritingBack || m.queued {
            debug_assert!(
                false,
                "finish_writeback on page {idx} not handed out for write-back"
            );
            return;
        }
        m.state = PageState::Valid;
        m.pins = m.pins.saturating_sub(1);
        if ok {
            bump(&self.counters.writebacks, 1);
            if !m.redirtied && m.dirty {
                m.dirty = false;
                self.counters.dirty_pages.fetch_sub(1, Ordering::Relaxed);
            }
        }
        m.redirtied = false;
    }

    /// Drops every unpinned clean page of file `file_id`, and clips pages past `new_len` bytes
    /// if given (truncate): pages wholly past it are dropped (when unpinned and clean), the
    /// page containing it gets its valid length clipped. Dirty pages are kept (flush first).
    /// Scans every page.
    pub fn invalidate_file(&self, file_id: u64, new_len: Option<u64>) {
        let ps = self.page_size as u64;
        for (i, slot) in self.slots.iter().enumerate() {
            let mut m = lock(&slot.0);
            let Some((f, page)) = m.key else { continue };
            if f != file_id {
                continue;
            }
            if let Some(len) = new_len {
                let start = page.saturating_mul(ps);
                if start < len {
                    if m.state == PageState::Valid {
                        let keep = usize::try_from(len - start).unwrap_or(usize::MAX);
                        m.valid_len = m.valid_len.min(keep);
                    }
                    continue;
                }
            }
            if m.state != PageState::Valid || m.pins > 0 || m.dirty {
                continue;
            }
            self.unmap((f, page), i as PageIdx);
            if m.readahead {
                bump(&self.counters.readahead_wasted, 1);
            }
            let old = m.file.take();
            *m = PageMeta::free();
            lock(&self.free).push(i as PageIdx);
            drop(m);
            drop(old);
        }
    }

    /// Counters (a snapshot of relaxed atomics; fields may be mutually off by in-flight calls).
    pub fn stats(&self) -> CacheStats {
        let c = &self.counters;
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        CacheStats {
            hits: g(&c.hits),
            misses: g(&c.misses),
            coalesced: g(&c.coalesced),
            loads: g(&c.loads),
            bytes_loaded: g(&c.bytes_loaded),
            evictions: g(&c.evictions),
            readahead_loaded: g(&c.readahead_loaded),
            readahead_used: g(&c.readahead_used),
            readahead_wasted: g(&c.readahead_wasted),
            writebacks: g(&c.writebacks),
            dirty_pages: g(&c.dirty_pages),
        }
    }
}
