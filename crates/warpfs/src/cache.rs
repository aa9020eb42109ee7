//! Host cache tier: a fixed arena of pages with CLOCK eviction, pins, write-back and stats.
//!
//! INTERFACE CONTRACT (the daemon codes against it; the implementation may change inside):
//! - pages are `page_size` bytes (a power of two ≥ 512) in one arena (a [`SharedMemory`] region,
//!   4096-aligned, so io_uring can register it and a GPU can map it);
//! - a page is identified by (`FileEntry::id`, page number = file offset / page_size);
//! - `lookup` pins what it returns (`Hit`, `Miss`); a `Hit`'s pin is undone by `release`, a
//!   `Miss`'s by `finish_load` (whatever its result), never by both;
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
//! Two lock-free side tables keep the common cases off the shard locks: hint buckets (key →
//! page, checked under the page lock; cleared on eviction) find most hits, and a counting
//! presence filter (changed with the map under the shard lock) proves most keys absent, so a
//! miss that may not evict answers `Full` without probing the map.
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
use std::sync::atomic::{AtomicU64, AtomicU8, AtomicUsize, Ordering};
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
    /// reads the file into `page_ptr(idx)` and calls `finish_load`, which ends the pin (the
    /// caller does not `release` it).
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
/// Map value of a key whose miss is choosing a page (never a page index: pages < u32::MAX).
const RESERVING: PageIdx = PageIdx::MAX;
/// Counters of the presence filter per page (a power of two): with 8, a key that is not in
/// the map finds its counter at zero ~88% of the time (e^-1/8).
const PRESENCE_PER_PAGE: usize = 8;
/// Hint words per bucket.
const HINT_WAYS: usize = 4;

/// One bucket of hints, on its own half cache line (never split across two lines).
#[derive(Default)]
#[repr(align(32))]
struct HintBucket([AtomicU64; HINT_WAYS]);
/// A presence counter that reached this value stays there (it may then undercount).
const PRESENCE_STUCK: u8 = u8::MAX;

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
    /// A write-through's file write of this page is in flight ([`HostCache::begin_write`]).
    writing: bool,
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
            writing: false,
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
pub(crate) struct KeyHasher(u64);

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

/// Event counters of one stripe (see [`STRIPES`]).
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
}

/// Stripes of counters, each on its own cache lines: a thread bumps only its own stripe, so
/// daemon workers counting every request on many cores never fight over one cache line (a
/// shared counter cost ~100 ns a bump on a 16-core host). [`HostCache::stats`] sums them.
const STRIPES: usize = 16;

#[derive(Default)]
#[repr(align(128))]
struct Stripe(Counters);

/// The stripe of the calling thread: threads take stripes round-robin on first use.
fn stripe_index() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|m| {
        let mut i = m.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES;
            m.set(i);
        }
        i
    })
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// Locks `m`, ignoring poisoning: every critical section leaves the metadata consistent
/// before anything that can panic, so a poisoned lock still guards valid state.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Lets another thread run between two steps of a race-prone sequence, in tests only (so the
/// stress tests explore interleavings that 2 cores would rarely produce); free otherwise.
#[inline(always)]
fn race_point() {
    #[cfg(test)]
    std::thread::yield_now();
}

/// What probing a mapped page found.
enum Probe {
    /// Pinned; `true` when this was the first demand use of a page readahead loaded.
    Hit(bool),
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
    /// Lock-free hints key → page (`fingerprint << 32 | page index`, 0 = empty) in buckets
    /// of [`HINT_WAYS`] words on one cache line, two words per page. A hit found through a
    /// hint costs one cache line and the page lock instead of a shard lock and a hash-map
    /// probe (two cache misses fewer on a large cache). Eviction clears the page's hint, so
    /// a bucket has room for the keys that stay. Only a hint: the page's own metadata,
    /// checked under its lock, decides, and a stale or overwritten hint falls back to the map.
    hints: Box<[HintBucket]>,
    /// Counting filter over the map's keys (reservations included): a counter per hash
    /// bucket, changed under the key's shard lock together with the map. A zero proves the
    /// key is not mapped, so a miss that may not evict answers `Full` from one byte (in a
    /// table that stays in cache) instead of a shard lock and a probe of a large hash map.
    /// A counter that reaches [`PRESENCE_STUCK`] stays there: it only says "maybe".
    presence: Box<[AtomicU8]>,
    free: Mutex<Vec<PageIdx>>,
    /// Length of `free` (a hint, updated under its lock): a lookup that may not evict gives
    /// up before reserving the key when it reads 0.
    free_pages: AtomicUsize,
    writeback_queue: Mutex<VecDeque<PageIdx>>,
    hand: AtomicUsize,
    stripes: Box<[Stripe]>,
    /// Pages dirty now (one shared word: the fast "nothing dirty" checks read it).
    dirty_pages: AtomicU64,
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
        let region: Arc<dyn SharedMemory> =
            Arc::new(HostMemory::new_populated(pages * cfg.page_size));
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
        if !base.is_multiple_of(REGION_ALIGN) {
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
            free_pages: AtomicUsize::new(pages),
            hints: (0..(2 * pages / HINT_WAYS).next_power_of_two())
                .map(|_| HintBucket::default())
                .collect(),
            presence: (0..(PRESENCE_PER_PAGE * pages).next_power_of_two())
                .map(|_| AtomicU8::new(0))
                .collect(),
            free: Mutex::new(free),
            writeback_queue: Mutex::new(VecDeque::new()),
            hand: AtomicUsize::new(0),
            stripes: (0..STRIPES).map(|_| Stripe::default()).collect(),
            dirty_pages: AtomicU64::new(0),
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
        if pages >= RESERVING as usize {
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

    /// The hint bucket of `key` and the value a word holds when it points `key` at page `idx`.
    #[inline]
    fn hint(&self, key: Key, idx: PageIdx) -> (&HintBucket, u64) {
        let h = mix(key.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.1.rotate_left(17));
        let bucket = &self.hints[(h as usize) & (self.hints.len() - 1)];
        // Fingerprint: the hash's top 32 bits, never 0 (0 marks an empty hint).
        let fp = (h >> 32).max(1);
        (bucket, fp << 32 | u64::from(idx))
    }

    /// The page the hint of `key` names, if a hint is `key`'s (the page may still be stale).
    #[inline]
    fn hinted(&self, key: Key) -> Option<PageIdx> {
        let (bucket, mine) = self.hint(key, 0);
        bucket.0.iter().find_map(|w| {
            let v = w.load(Ordering::Relaxed);
            (v >> 32 == mine >> 32).then_some(v as PageIdx)
        })
    }

    /// Records that page `idx` holds `key`: in the word that has `key`'s fingerprint, else an
    /// empty word, else one chosen by the fingerprint (the others may be younger).
    #[inline]
    fn set_hint(&self, key: Key, idx: PageIdx) {
        let (bucket, v) = self.hint(key, idx);
        let fp = v >> 32;
        let words = &bucket.0;
        let word = words
            .iter()
            .find(|w| w.load(Ordering::Relaxed) >> 32 == fp)
            .or_else(|| words.iter().find(|w| w.load(Ordering::Relaxed) == 0))
            .unwrap_or(&words[(fp as usize) % HINT_WAYS]);
        word.store(v, Ordering::Relaxed);
    }

    /// Forgets the hint that points `key` at page `idx`, if there is one (the page is leaving
    /// the map), so its word can serve another key.
    #[inline]
    fn clear_hint(&self, key: Key, idx: PageIdx) {
        let (bucket, v) = self.hint(key, idx);
        for w in &bucket.0 {
            if w.load(Ordering::Relaxed) == v {
                let _ = w.compare_exchange(v, 0, Ordering::Relaxed, Ordering::Relaxed);
            }
        }
    }

    /// Loads the hint buckets and presence counters of `keys` (file id, page), then the
    /// metadata of the pages the hints name, so that their cache misses overlap: the daemon
    /// calls it for a batch before looking the pages up one by one. A hint, no effect.
    pub fn warm(&self, keys: impl Iterator<Item = (u64, u64)> + Clone) {
        for key in keys.clone() {
            std::hint::black_box(self.hint(key, 0).0 .0[0].load(Ordering::Relaxed));
            std::hint::black_box(self.presence(key).load(Ordering::Relaxed));
        }
        for key in keys {
            if let Some(slot) = self.hinted(key).and_then(|i| self.slots.get(i as usize)) {
                // A plain load of the page lock's line (its poison flag), without locking.
                std::hint::black_box(slot.0.is_poisoned());
            }
        }
    }

    /// Index of `key`'s presence counter.
    #[inline]
    fn presence_bucket(&self, key: Key) -> usize {
        let h = mix(key.0.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ key.1.rotate_left(17));
        (h.rotate_left(24) as usize) & (self.presence.len() - 1)
    }

    /// The presence counter of `key`'s bucket.
    #[inline]
    fn presence(&self, key: Key) -> &AtomicU8 {
        &self.presence[self.presence_bucket(key)]
    }

    /// Whether `key` may be in the map (`false` proves it is not, as of the load).
    #[inline]
    fn maybe_mapped(&self, key: Key) -> bool {
        self.presence(key).load(Ordering::Relaxed) != 0
    }

    /// Inserts `key → idx` into `map` (the locked shard of `key`), counting a new key in the
    /// presence filter.
    fn map_insert(&self, map: &mut Map, key: Key, idx: PageIdx) {
        if map.insert(key, idx).is_none() {
            let _ = self
                .presence(key)
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    (v != PRESENCE_STUCK).then(|| v + 1)
                });
        }
    }

    /// Removes `key` from `map` (the locked shard of `key`), uncounting it in the filter.
    fn map_remove(&self, map: &mut Map, key: Key) {
        if map.remove(&key).is_some() {
            let _ = self
                .presence(key)
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |v| {
                    (v != PRESENCE_STUCK && v > 0).then(|| v - 1)
                });
        }
    }

    /// Puts `idx` on the free list.
    fn push_free(&self, idx: PageIdx) {
        let mut free = lock(&self.free);
        free.push(idx);
        self.free_pages.store(free.len(), Ordering::Relaxed);
    }

    /// The calling thread's counter stripe.
    #[inline]
    fn counters(&self) -> &Counters {
        &self.stripes[stripe_index()].0
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
            self.map_remove(&mut map, key);
        }
        drop(map);
        self.clear_hint(key, idx);
    }

    /// Finds or reserves page `page` of `file`. `readahead` marks loads made for prefetching
    /// (counted apart; demand hit/miss counters are not touched). A hit costs two uncontended
    /// mutexes and one hash probe; a miss may sweep up to 2 × pages entries (never blocks on
    /// I/O, never loops forever).
    pub fn lookup(&self, file: &Arc<FileEntry>, page: u64, readahead: bool) -> Lookup {
        self.lookup_with(file, page, readahead, true)
    }

    /// Page `idx` probed for `key` as a lookup's answer (hit or busy, counted unless for
    /// readahead) and whether the hit is a prefetched page's first demand use; `None` if the
    /// page no longer belongs to the key.
    fn probe_lookup(&self, idx: PageIdx, key: Key, readahead: bool) -> Option<(Lookup, bool)> {
        match self.probe(idx, key, !readahead, false) {
            Probe::Hit(first_ahead) => {
                if !readahead {
                    bump(&self.counters().hits, 1);
                }
                Some((Lookup::Hit(idx), first_ahead))
            }
            Probe::Busy(loading) => {
                if loading && !readahead {
                    bump(&self.counters().coalesced, 1);
                }
                Some((Lookup::Busy, false))
            }
            Probe::Stale => None,
        }
    }

    /// Like [`HostCache::lookup`]; with `may_evict` false a miss takes only a free page and
    /// answers `Full` (counted as a miss) when there is none, instead of sweeping for a
    /// victim. The daemon uses it to keep small random reads, which would only churn a full
    /// cache, from evicting (see `daemon::ADMIT_EVERY`). Costs a hit's price when it answers
    /// `Full`.
    pub fn lookup_with(
        &self,
        file: &Arc<FileEntry>,
        page: u64,
        readahead: bool,
        may_evict: bool,
    ) -> Lookup {
        self.lookup_ahead(file, page, readahead, may_evict).0
    }

    /// [`HostCache::lookup_with`], also telling whether a hit is the first demand use of a
    /// page that readahead loaded (the readahead detector watches those and misses, as
    /// Linux's readahead marker does). Costs the same.
    pub fn lookup_ahead(
        &self,
        file: &Arc<FileEntry>,
        page: u64,
        readahead: bool,
        may_evict: bool,
    ) -> (Lookup, bool) {
        let key = (file.id, page);
        if let Some(idx) = self.hinted(key) {
            // Stale: the map knows.
            if let Some(found) = self.probe_lookup(idx, key, readahead) {
                return found;
            }
        }
        if !may_evict && self.free_pages.load(Ordering::Relaxed) == 0 && !self.maybe_mapped(key) {
            // Not in the map (the filter proves it), nothing free, no eviction allowed: the
            // answer the map would give, without its lock and probe.
            if !readahead {
                bump(&self.counters().misses, 1);
            }
            return (Lookup::Full, false);
        }
        let shard = self.shard(key);
        for _ in 0..RETRIES {
            let mut map = lock(shard);
            match map.get(&key).copied() {
                Some(RESERVING) => {
                    drop(map);
                    if !readahead {
                        bump(&self.counters().coalesced, 1);
                    }
                    return (Lookup::Busy, false);
                }
                Some(idx) => {
                    drop(map);
                    race_point();
                    match self.probe_lookup(idx, key, readahead) {
                        Some(found) => {
                            if matches!(found.0, Lookup::Hit(_)) {
                                self.set_hint(key, idx);
                            }
                            return found;
                        }
                        None => continue,
                    }
                }
                None if !may_evict && self.free_pages.load(Ordering::Relaxed) == 0 => {
                    // Nothing free and no eviction allowed: a miss without a reservation.
                    drop(map);
                    if !readahead {
                        bump(&self.counters().misses, 1);
                    }
                    return (Lookup::Full, false);
                }
                None => {
                    // Claim the key first, so that concurrent misses on it wait (Busy) instead
                    // of each evicting a page of their own.
                    self.map_insert(&mut map, key, RESERVING);
                }
            }
            drop(map);
            race_point();
            let reserved = if may_evict {
                self.reserve(file, key, readahead)
            } else {
                self.take_free(file, key, readahead)
            };
            let mut map = lock(shard);
            // Only this call replaces or removes its RESERVING entry.
            let Some(idx) = reserved else {
                self.map_remove(&mut map, key);
                if !may_evict && !readahead {
                    bump(&self.counters().misses, 1);
                }
                return (Lookup::Full, false);
            };
            self.map_insert(&mut map, key, idx);
            drop(map);
            self.set_hint(key, idx);
            if !readahead {
                bump(&self.counters().misses, 1);
            }
            return (Lookup::Miss(idx), false);
        }
        // The key kept changing hands under us: let the caller retry later.
        (Lookup::Busy, false)
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
                let mut first_ahead = false;
                if demand {
                    m.referenced = true;
                    if m.readahead {
                        m.readahead = false;
                        first_ahead = true;
                        bump(&self.counters().readahead_used, 1);
                    }
                }
                Probe::Hit(first_ahead)
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
            bump(&self.counters().evictions, 1);
            if m.readahead {
                bump(&self.counters().readahead_wasted, 1);
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
        let idx = {
            let mut free = lock(&self.free);
            let idx = free.pop()?;
            self.free_pages.store(free.len(), Ordering::Relaxed);
            idx
        };
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

    /// Pins page `page` of file `file_id` only if it is resident and holds valid data (also
    /// while it is being written back; see the module notes). No reservation, no hit counted;
    /// it sets the reference bit and uses a readahead page. Costs like a hit.
    pub fn lookup_resident(&self, file_id: u64, page: u64) -> Option<PageIdx> {
        let key = (file_id, page);
        let shard = self.shard(key);
        for _ in 0..RETRIES {
            let idx = lock(shard).get(&key).copied().filter(|&i| i != RESERVING)?;
            match self.probe(idx, key, true, true) {
                Probe::Hit(_) => return Some(idx),
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
    /// drops the page (it becomes free and leaves the map). Ends the `Miss`'s pin either way:
    /// to keep reading the page after a successful load, look it up again (a `Hit` pins it).
    /// A call on a page that is not loading is a caller bug: it panics in debug builds and is
    /// ignored in release.
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
                self.dirty_pages.fetch_sub(1, Ordering::Relaxed);
            }
            let old = m.file.take();
            *m = PageMeta::free();
            self.push_free(idx);
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
            bump(&self.counters().readahead_loaded, 1);
        }
        bump(&self.counters().loads, 1);
        bump(&self.counters().bytes_loaded, len as u64);
    }

    /// Marks pinned page `idx` as having a write-through in flight: its bytes are changed
    /// (`write_into`) and then written to the file. `false` if another write of it is in
    /// flight: the caller waits its turn (retries later), because two such writes on different
    /// workers could leave the page and the file in different orders (page = the first's
    /// bytes, file = the second's). One page lock.
    pub fn begin_write(&self, idx: PageIdx) -> bool {
        let mut m = self.slot(idx);
        if m.writing {
            return false;
        }
        m.writing = true;
        true
    }

    /// Ends [`HostCache::begin_write`] once the file write completed. One page lock.
    pub fn end_write(&self, idx: PageIdx) {
        self.slot(idx).writing = false;
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
            bump(&self.dirty_pages, 1);
        }
    }

    /// Unpins page `idx` (the pin of a `Hit` or of `lookup_resident`). An unbalanced release,
    /// or a release of a page that is loading (a `Miss` ends with `finish_load`), is a caller
    /// bug: it panics in debug builds and is ignored in release.
    pub fn release(&self, idx: PageIdx) {
        let mut m = self.slot(idx);
        if m.state == PageState::Loading {
            debug_assert!(
                false,
                "release of page {idx} that is loading: a Miss's pin ends with finish_load"
            );
            return;
        }
        debug_assert!(
            m.pins > 0,
            "release of page {idx} that is not pinned (after a Miss, finish_load already \
             unpinned it: do not release it too)"
        );
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
        // Nothing dirty (always so in write-through mode): skip the scan. A page becomes dirty
        // only inside `write_into`, which counts it before it returns.
        if self.dirty_pages.load(Ordering::Acquire) == 0 {
            return out;
        }
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
    /// Pages already handed out for write-back are not repeated. Scans every page (free when no
    /// page is dirty).
    pub fn dirty_pages_of(&self, file_id: u64) -> Vec<Writeback> {
        self.collect_dirty(|f| f == file_id)
    }

    /// Pages of file `file_id` (of every file if `None`) handed out for write-back and not yet
    /// finished: an fsync or flush must wait for them too. Free when no page is dirty; scans
    /// every page otherwise.
    pub fn writebacks_in_flight(&self, file_id: Option<u64>) -> usize {
        if self.dirty_pages.load(Ordering::Acquire) == 0 {
            return 0;
        }
        self.slots
            .iter()
            .filter(|slot| {
                let m = lock(&slot.0);
                m.state == PageState::WritingBack
                    && !m.queued
                    && m.key
                        .is_some_and(|(f, _)| file_id.is_none_or(|want| want == f))
            })
            .count()
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
            bump(&self.counters().writebacks, 1);
            if !m.redirtied && m.dirty {
                m.dirty = false;
                self.dirty_pages.fetch_sub(1, Ordering::Relaxed);
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
                    // Clip unless a write-back of the old length is already in flight.
                    let in_flight = m.state == PageState::WritingBack && !m.queued;
                    if m.state != PageState::Loading && !in_flight {
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
                bump(&self.counters().readahead_wasted, 1);
            }
            let old = m.file.take();
            *m = PageMeta::free();
            self.push_free(i as PageIdx);
            drop(m);
            drop(old);
        }
    }

    /// Counters (a sum of relaxed atomics over the stripes; fields may be mutually off by
    /// in-flight calls). Costs a read of 16 stripes.
    pub fn stats(&self) -> CacheStats {
        let g = |f: fn(&Counters) -> &AtomicU64| {
            self.stripes
                .iter()
                .fold(0u64, |a, s| a.wrapping_add(f(&s.0).load(Ordering::Relaxed)))
        };
        CacheStats {
            hits: g(|c| &c.hits),
            misses: g(|c| &c.misses),
            coalesced: g(|c| &c.coalesced),
            loads: g(|c| &c.loads),
            bytes_loaded: g(|c| &c.bytes_loaded),
            evictions: g(|c| &c.evictions),
            readahead_loaded: g(|c| &c.readahead_loaded),
            readahead_used: g(|c| &c.readahead_used),
            readahead_wasted: g(|c| &c.readahead_wasted),
            writebacks: g(|c| &c.writebacks),
            dirty_pages: self.dirty_pages.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
impl HostCache {
    /// Checks the structural invariants; call only while no other thread uses the cache.
    fn check_invariants(&self) {
        let n = self.slots.len();
        let mut on_free_list = vec![false; n];
        for &i in lock(&self.free).iter() {
            assert!(!on_free_list[i as usize], "page {i} twice on the free list");
            on_free_list[i as usize] = true;
        }
        let mut mapped = HashMap::new();
        for shard in self.shards.iter() {
            for (&key, &idx) in lock(&shard.0).iter() {
                assert_ne!(idx, RESERVING, "a reservation was left in the map");
                assert!(mapped.insert(key, idx).is_none());
            }
        }
        let (mut resident, mut dirty) = (0, 0);
        for (i, slot) in self.slots.iter().enumerate() {
            let m = lock(&slot.0);
            if m.state == PageState::Free {
                assert!(on_free_list[i], "free page {i} is not on the free list");
                assert!(m.key.is_none() && m.file.is_none() && m.pins == 0 && !m.dirty);
                continue;
            }
            resident += 1;
            assert!(
                !on_free_list[i],
                "page {i} in state {:?} is on the free list",
                m.state
            );
            let key = m.key.expect("a resident page has a key");
            assert_eq!(
                mapped.get(&key),
                Some(&(i as PageIdx)),
                "page {i} is not mapped"
            );
            assert_eq!(m.file.as_ref().map(|f| f.id), Some(key.0));
            assert!(m.valid_len <= self.page_size);
            if matches!(m.state, PageState::Loading | PageState::WritingBack) {
                assert!(m.pins >= 1, "page {i} in state {:?} is not pinned", m.state);
            }
            if m.state == PageState::WritingBack {
                assert!(m.dirty, "page {i} is written back but not dirty");
            }
            dirty += u64::from(m.dirty);
        }
        // Every map entry names a resident page of its key and vice versa: one page per key.
        assert_eq!(mapped.len(), resident, "map and pages disagree");
        // The presence filter counts exactly the mapped keys (short of stuck counters).
        let mut counts = vec![0usize; self.presence.len()];
        for &key in mapped.keys() {
            counts[self.presence_bucket(key)] += 1;
        }
        for (i, c) in self.presence.iter().enumerate() {
            let c = c.load(Ordering::Relaxed);
            if c != PRESENCE_STUCK {
                assert_eq!(usize::from(c), counts[i], "presence counter {i} is off");
            }
        }
        assert_eq!(dirty, self.dirty_pages.load(Ordering::Relaxed));
    }

    /// (state, pins, dirty, key, valid_len) of page `idx`.
    fn page_info(&self, idx: PageIdx) -> (PageState, u32, bool, Option<Key>, usize) {
        let m = self.slot(idx);
        (m.state, m.pins, m.dirty, m.key, m.valid_len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::FileTable;
    use crate::OpenOptions;
    use proptest::prelude::*;
    use std::path::PathBuf;

    /// Byte `o` of page `p` of file `f` as first loaded.
    fn pattern(f: u64, p: u64, o: usize) -> u8 {
        (f.wrapping_mul(97) ^ p.wrapping_mul(31) ^ (o as u64).wrapping_mul(7) ^ (o as u64 >> 8))
            as u8
    }

    /// `n` registered files (their contents are never read: tests "load" pages themselves).
    fn files(n: usize) -> Vec<Arc<FileEntry>> {
        let dir = std::env::temp_dir().join(format!("warpfs-cache-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let table = FileTable::new();
        (0..n)
            .map(|i| {
                let p: PathBuf = dir.join(format!("f{i}"));
                std::fs::write(&p, b"x").unwrap();
                table.register(&p, OpenOptions::read_only()).unwrap()
            })
            .collect()
    }

    fn page_bytes(c: &HostCache, idx: PageIdx, len: usize) -> Vec<u8> {
        assert!(len <= c.page_size());
        // SAFETY: `len` ≤ page size, so the range lies inside page `idx` of the arena; the
        // caller holds a pin, so no one else rewrites it.
        unsafe { std::slice::from_raw_parts(c.page_ptr(idx), len) }.to_vec()
    }

    fn fill(c: &HostCache, idx: PageIdx, bytes: &[u8]) {
        assert!(bytes.len() <= c.page_size());
        // SAFETY: as in `page_bytes`; the caller holds the page's Loading pin.
        unsafe { std::ptr::copy_nonoverlapping(bytes.as_ptr(), c.page_ptr(idx), bytes.len()) };
    }

    fn small(pages: usize, page_size: usize) -> HostCache {
        HostCache::new(CacheConfig {
            page_size,
            capacity: pages * page_size,
        })
        .unwrap()
    }

    /// The bytes page `p` of file `f` holds in the tests below: a function of the offset.
    fn page_of(f: &FileEntry, p: u64, len: usize) -> Vec<u8> {
        (0..len).map(|o| pattern(f.id, p, o)).collect()
    }

    /// Ends the `Miss` of page `p` of `f` as the daemon does: fill, then `finish_load`, which
    /// also ends the Miss's pin (no `release`).
    fn load(c: &HostCache, f: &FileEntry, p: u64, idx: PageIdx) {
        let bytes = page_of(f, p, c.page_size());
        fill(c, idx, &bytes);
        c.finish_load(idx, bytes.len() as i64);
        assert_eq!(
            c.page_info(idx).1,
            0,
            "page {idx} still pinned after its load"
        );
    }

    /// Every page is unpinned (call when the test holds no pin).
    fn assert_unpinned(c: &HostCache) {
        for i in 0..c.pages() as PageIdx {
            assert_eq!(c.page_info(i).1, 0, "page {i} left pinned");
        }
    }

    #[test]
    fn lookups_that_may_not_evict_take_only_free_pages() {
        let c = small(4, 512);
        let f = &files(1)[0];
        // Free pages are taken as usual.
        for p in 0..4 {
            let Lookup::Miss(idx) = c.lookup_with(f, p, false, false) else {
                panic!("page {p}: a free page was there")
            };
            load(&c, f, p, idx);
        }
        // Full cache: no eviction, a miss is counted, nothing changes.
        let before = c.stats();
        assert!(matches!(c.lookup_with(f, 9, false, false), Lookup::Full));
        let after = c.stats();
        assert_eq!(after.misses, before.misses + 1);
        assert_eq!(after.evictions, before.evictions);
        // Every resident page still hits (through its hint or the map) with its own bytes.
        for p in 0..4 {
            let Lookup::Hit(idx) = c.lookup_with(f, p, false, false) else {
                panic!("page {p} should hit")
            };
            assert_eq!(page_bytes(&c, idx, 512), page_of(f, p, 512));
            c.release(idx);
        }
        assert_unpinned(&c);
        // A lookup that may evict does, and a stale hint for the evicted key never hits.
        let Lookup::Miss(idx) = c.lookup(f, 9, false) else {
            panic!("a victim was available")
        };
        load(&c, f, 9, idx);
        let mut resident = 0;
        for p in (0..4).chain([9]) {
            match c.lookup_with(f, p, false, false) {
                Lookup::Hit(i) => {
                    assert_eq!(page_bytes(&c, i, 512), page_of(f, p, 512));
                    c.release(i);
                    resident += 1;
                }
                Lookup::Full if p != 9 => {}
                other => panic!("page {p}: unexpected {other:?}"),
            }
        }
        assert_eq!(resident, 4, "exactly one page was evicted for page 9");
        assert_eq!(c.stats().evictions, 1);
        assert_unpinned(&c);
        c.check_invariants();
    }

    /// Over many evictions the presence filter counts exactly the mapped keys, a miss that may
    /// not evict is answered `Full` only for keys that are not resident, every resident key
    /// still hits with its own bytes, and no hint is left naming an evicted key's page.
    #[test]
    fn presence_filter_and_hints_follow_evictions() {
        let c = small(8, 512);
        let fs = files(2);
        let mut resident: HashMap<Key, PageIdx> = HashMap::new();
        let mut checked = 0;
        for round in 0..200u64 {
            let f = &fs[(round % 2) as usize];
            let p = (round * 7919) % 37;
            match c.lookup(f, p, false) {
                Lookup::Miss(idx) => load(&c, f, p, idx),
                Lookup::Hit(idx) => {
                    assert_eq!(page_bytes(&c, idx, 512), page_of(f, p, 512));
                    c.release(idx);
                }
                other => panic!("round {round}: unexpected {other:?}"),
            }
            assert_unpinned(&c);
            c.check_invariants();
            if c.free_pages.load(Ordering::Relaxed) > 0 {
                continue; // lookups that may not evict would still take free pages
            }
            resident.clear();
            for (i, slot) in c.slots.iter().enumerate() {
                if let Some(key) = lock(&slot.0).key {
                    resident.insert(key, i as PageIdx);
                }
            }
            for g in &fs {
                for q in 0..37 {
                    let key = (g.id, q);
                    if let Some(idx) = c.hinted(key) {
                        assert_eq!(resident.get(&key), Some(&idx), "stale hint for {key:?}");
                    }
                    match c.lookup_with(g, q, false, false) {
                        Lookup::Hit(idx) => {
                            assert_eq!(resident.get(&key), Some(&idx));
                            assert_eq!(page_bytes(&c, idx, 512), page_of(g, q, 512));
                            c.release(idx);
                        }
                        Lookup::Full => {
                            assert!(!resident.contains_key(&key), "{key:?} is resident")
                        }
                        other => panic!("{key:?}: unexpected {other:?}"),
                    }
                }
            }
            assert_unpinned(&c);
            checked += 1;
        }
        assert!(
            checked > 150,
            "the cache was full for most rounds ({checked})"
        );
    }

    /// Releasing a `Miss` page instead of ending its load is a caller bug: a clear panic in
    /// debug builds; in release it is ignored, so the page stays reserved (and pinned) for the
    /// load that still has to finish, and is never handed to a second loader.
    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "ends with finish_load"))]
    fn release_of_a_loading_page_is_refused() {
        let c = small(4, 512);
        let f = &files(1)[0];
        let Lookup::Miss(idx) = c.lookup(f, 3, false) else {
            panic!("expected a miss")
        };
        c.release(idx);
        assert_eq!(c.page_info(idx).0, PageState::Loading);
        assert_eq!(c.page_info(idx).1, 1, "the Miss's pin was taken away");
        assert_eq!(c.lookup(f, 3, false), Lookup::Busy);
        load(&c, f, 3, idx);
        assert_eq!(c.lookup(f, 3, false), Lookup::Hit(idx));
        assert_eq!(page_bytes(&c, idx, 512), page_of(f, 3, 512));
        c.release(idx);
        assert_unpinned(&c);
        c.check_invariants();
    }

    /// `release` after `finish_load` (the misuse the two tests above once made) releases a
    /// pin that `finish_load` already ended: a clear panic in debug builds naming the cause;
    /// in release it is ignored (the count stays at zero, it does not wrap).
    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "finish_load already unpinned it")
    )]
    fn release_after_finish_load_is_refused() {
        let c = small(4, 512);
        let f = &files(1)[0];
        let Lookup::Miss(idx) = c.lookup(f, 0, false) else {
            panic!("expected a miss")
        };
        load(&c, f, 0, idx);
        c.release(idx);
        assert_eq!(c.page_info(idx).1, 0);
        c.check_invariants();
    }

    #[test]
    fn config_and_region_are_checked() {
        let bad = |page_size, capacity| {
            HostCache::new(CacheConfig {
                page_size,
                capacity,
            })
        };
        assert!(matches!(bad(1000, 1 << 20), Err(Error::Config(_))));
        assert!(matches!(bad(256, 1 << 20), Err(Error::Config(_))));
        let e = bad(4096, 3 * 4096).unwrap_err();
        assert!(e.to_string().contains("at least 4"), "{e}");
        let cfg = CacheConfig {
            page_size: 4096,
            capacity: 8 * 4096,
        };
        let region: Arc<dyn SharedMemory> = Arc::new(HostMemory::new(4 * 4096));
        let e = HostCache::with_region(cfg, region).unwrap_err();
        assert!(e.to_string().contains("larger region"), "{e}");
        let region: Arc<dyn SharedMemory> = Arc::new(HostMemory::new(9 * 4096));
        let start = region.as_ptr();
        let c = HostCache::with_region(cfg, region).unwrap();
        assert_eq!(c.pages(), 8);
        assert_eq!(c.arena(), (start, 8 * 4096));
        assert_eq!(c.page_ptr(3) as usize, start as usize + 3 * 4096);
        let c = small(5, 512);
        assert_eq!((c.pages(), c.page_size()), (5, 512));
        assert_eq!(c.arena().0 as usize % REGION_ALIGN, 0);
    }

    #[test]
    fn miss_load_hit_coalesce_and_fail() {
        let f = files(1);
        let c = small(4, 512);
        let Lookup::Miss(i) = c.lookup(&f[0], 7, false) else {
            panic!("expected a miss")
        };
        assert_eq!(c.lookup(&f[0], 7, false), Lookup::Busy);
        assert_eq!(c.lookup_resident(f[0].id, 7), None);
        fill(&c, i, &[9; 300]);
        c.finish_load(i, 300);
        assert_eq!(c.lookup(&f[0], 7, false), Lookup::Hit(i));
        assert_eq!(c.valid_len(i), 300);
        assert_eq!(page_bytes(&c, i, 300), vec![9; 300]);
        c.release(i);
        // A failed load frees the page and forgets the key.
        let Lookup::Miss(j) = c.lookup(&f[0], 8, false) else {
            panic!("expected a miss")
        };
        c.finish_load(j, -5);
        assert!(matches!(c.lookup(&f[0], 8, false), Lookup::Miss(_)));
        let s = c.stats();
        assert_eq!(
            (s.hits, s.misses, s.coalesced, s.loads, s.bytes_loaded),
            (1, 3, 1, 1, 300)
        );
        c.check_invariants();
    }

    #[test]
    fn clock_gives_second_chance_and_full_when_all_pinned() {
        let f = files(1);
        let c = small(4, 512);
        for p in 0..4 {
            let Lookup::Miss(i) = c.lookup(&f[0], p, false) else {
                panic!()
            };
            assert_eq!(i, p as PageIdx);
            c.finish_load(i, 512);
            assert_eq!(c.lookup(&f[0], p, false), Lookup::Hit(i));
        }
        assert_eq!(
            c.lookup(&f[0], 9, false),
            Lookup::Full,
            "every page is pinned"
        );
        for i in 0..4 {
            c.release(i);
        }
        // The hand stands at page 1 (9 steps swept); every page is referenced: one sweep
        // clears the bits, then page 1 goes.
        let Lookup::Miss(k) = c.lookup(&f[0], 10, false) else {
            panic!()
        };
        assert_eq!(k, 1);
        c.finish_load(k, 512);
        // Page 2 is used again: its reference bit saves it although the hand reaches it first.
        let Lookup::Hit(i2) = c.lookup(&f[0], 2, false) else {
            panic!()
        };
        c.release(i2);
        let Lookup::Miss(k) = c.lookup(&f[0], 11, false) else {
            panic!()
        };
        assert_eq!(k, 3, "the referenced page 2 was not given a second chance");
        c.finish_load(k, 512);
        assert_eq!(c.stats().evictions, 2);
        assert_eq!(c.lookup_resident(f[0].id, 3), None);
        assert_eq!(c.lookup_resident(f[0].id, 2), Some(2));
        c.release(2);
        c.check_invariants();
    }

    #[test]
    fn dirty_victims_are_queued_not_reused() {
        let f = files(1);
        let c = small(4, 512);
        for p in 0..4 {
            let Lookup::Miss(i) = c.lookup(&f[0], p, false) else {
                panic!()
            };
            c.finish_load(i, 512);
            assert_eq!(c.lookup(&f[0], p, false), Lookup::Hit(i));
            c.write_into(i, 0, &[p as u8 + 1; 16], true);
            c.release(i);
        }
        assert_eq!(c.stats().dirty_pages, 4);
        assert_eq!(c.lookup(&f[0], 9, false), Lookup::Full);
        let wbs = c.take_writebacks(10);
        assert_eq!(wbs.len(), 4);
        assert!(c.take_writebacks(10).is_empty());
        for w in &wbs {
            assert_eq!(w.len, 512);
            assert_eq!(w.offset % 512, 0);
            let p = w.offset / 512;
            assert_eq!(page_bytes(&c, w.idx, 16), vec![p as u8 + 1; 16]);
        }
        // A failed write-back keeps the page dirty; a successful one makes it reusable.
        c.finish_writeback(wbs[0].idx, false);
        for w in &wbs[1..] {
            c.finish_writeback(w.idx, true);
        }
        assert_eq!(c.stats().dirty_pages, 1);
        assert!(matches!(c.lookup(&f[0], 9, false), Lookup::Miss(i) if i != wbs[0].idx));
        c.check_invariants();
    }

    #[test]
    fn write_during_writeback_stays_dirty_and_gaps_read_zero() {
        let f = files(1);
        let c = small(4, 512);
        let Lookup::Miss(i) = c.lookup(&f[0], 0, false) else {
            panic!()
        };
        fill(&c, i, &[7; 100]);
        c.finish_load(i, 100);
        assert_eq!(c.lookup(&f[0], 0, false), Lookup::Hit(i));
        c.write_into(i, 200, &[1; 10], true);
        assert_eq!(c.valid_len(i), 210);
        let b = page_bytes(&c, i, 210);
        assert!(b[..100].iter().all(|&x| x == 7) && b[100..200].iter().all(|&x| x == 0));
        c.release(i);
        let wbs = c.dirty_pages_of(f[0].id);
        assert_eq!(wbs.len(), 1);
        assert!(c.dirty_pages_of(f[0].id).is_empty(), "handed out twice");
        assert_eq!(c.lookup(&f[0], 0, false), Lookup::Busy);
        let j = c
            .lookup_resident(f[0].id, 0)
            .expect("written-back pages stay readable");
        c.write_into(j, 0, &[2; 4], false);
        c.release(j);
        c.finish_writeback(i, true);
        assert_eq!(
            c.stats().dirty_pages,
            1,
            "the write during write-back was lost"
        );
        assert_eq!(c.all_dirty().len(), 1);
        c.finish_writeback(i, true);
        assert_eq!(c.stats().dirty_pages, 0);
        assert_eq!(c.stats().writebacks, 2);
        c.check_invariants();
    }

    #[test]
    fn invalidate_and_truncate() {
        let f = files(2);
        let c = small(8, 512);
        for (fi, p) in [(0, 0), (0, 1), (0, 2), (1, 0)] {
            let Lookup::Miss(i) = c.lookup(&f[fi], p, fi == 0 && p == 2) else {
                panic!()
            };
            c.finish_load(i, 512);
        }
        c.invalidate_file(f[0].id, Some(700));
        let Lookup::Hit(i) = c.lookup(&f[0], 1, false) else {
            panic!("page 1 was dropped")
        };
        assert_eq!(c.valid_len(i), 700 - 512);
        c.release(i);
        assert!(matches!(c.lookup(&f[0], 0, false), Lookup::Hit(_)));
        assert!(
            matches!(c.lookup(&f[0], 2, false), Lookup::Miss(_)),
            "page 2 was kept"
        );
        assert_eq!(c.stats().readahead_wasted, 1);
        c.invalidate_file(f[0].id, None); // page 0 pinned, page 2 loading: kept
        assert_eq!(c.lookup(&f[0], 2, false), Lookup::Busy);
        assert!(matches!(c.lookup(&f[1], 0, false), Lookup::Hit(_)));
        c.check_invariants();
    }

    // ---- property test against a model ----

    const PS: usize = 512;
    const FILES: usize = 3;
    const FILE_PAGES: u64 = 6;

    #[derive(Debug, Clone)]
    enum Op {
        Lookup {
            file: usize,
            page: u64,
            readahead: bool,
        },
        LookupResident {
            file: usize,
            page: u64,
        },
        FinishLoad {
            pick: usize,
            fail: bool,
        },
        Write {
            pick: usize,
            at: usize,
            len: usize,
            dirty: bool,
            seed: u8,
        },
        Release {
            pick: usize,
        },
        TakeWritebacks {
            max: usize,
        },
        DirtyOf {
            file: usize,
        },
        AllDirty,
        FinishWriteback {
            pick: usize,
            ok: bool,
        },
        Invalidate {
            file: usize,
            new_len: Option<u64>,
        },
    }

    fn op() -> impl Strategy<Value = Op> {
        let file = 0..FILES;
        let page = 0..FILE_PAGES;
        prop_oneof![
            6 => (file.clone(), page.clone(), prop::bool::weighted(0.2))
                .prop_map(|(file, page, readahead)| Op::Lookup { file, page, readahead }),
            1 => (file.clone(), page).prop_map(|(file, page)| Op::LookupResident { file, page }),
            4 => (any::<usize>(), prop::bool::weighted(0.1))
                .prop_map(|(pick, fail)| Op::FinishLoad { pick, fail }),
            3 => (any::<usize>(), 0..=PS, 0..=PS, prop::bool::weighted(0.7), any::<u8>())
                .prop_map(|(pick, at, len, dirty, seed)| {
                    let len = len.min(PS - at);
                    Op::Write { pick, at, len, dirty, seed }
                }),
            5 => any::<usize>().prop_map(|pick| Op::Release { pick }),
            1 => (0..4usize).prop_map(|max| Op::TakeWritebacks { max }),
            1 => file.clone().prop_map(|file| Op::DirtyOf { file }),
            1 => Just(Op::AllDirty),
            3 => (any::<usize>(), prop::bool::weighted(0.8))
                .prop_map(|(pick, ok)| Op::FinishWriteback { pick, ok }),
            1 => (file, prop::option::of(0..(FILE_PAGES * PS as u64 + 100)))
                .prop_map(|(file, new_len)| Op::Invalidate { file, new_len }),
        ]
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum MState {
        Loading,
        Valid,
    }

    /// The model's view of a resident page.
    #[derive(Debug)]
    struct MPage {
        key: Key,
        state: MState,
        /// Pins held by the test (hits, load, handed-out write-back).
        pins: u32,
        dirty: bool,
        /// Known to be queued by a sweep (a lookup answered Busy, or the cache was Full).
        queued: bool,
        /// Handed out for write-back.
        handed: bool,
        redirty: bool,
        readahead: bool,
        loading_readahead: bool,
        bytes: Vec<u8>,
    }

    /// Which model pages a hand-out of dirty pages covers.
    type Filter = Box<dyn Fn(&MPage) -> bool>;

    #[derive(Default)]
    struct Model {
        pages: HashMap<PageIdx, MPage>,
        resident: HashMap<Key, PageIdx>,
        /// What the file holds ("disk"), per (file index, page).
        disk: HashMap<(usize, u64), Vec<u8>>,
        hit_pins: Vec<PageIdx>,
        loading: Vec<PageIdx>,
        writebacks: Vec<(PageIdx, Vec<u8>)>,
        stats: CacheStats,
        demand_ok: u64,
    }

    fn file_len(f: usize) -> u64 {
        (FILE_PAGES - 1) * PS as u64 + 100 + 50 * f as u64
    }

    fn write_at(v: &mut Vec<u8>, at: usize, data: &[u8]) {
        if v.len() < at + data.len() {
            v.resize(at + data.len(), 0);
        }
        v[at..at + data.len()].copy_from_slice(data);
    }

    fn run_model(pages: usize, ops: Vec<Op>) {
        let fs = files(FILES);
        let c = small(pages, PS);
        let fidx = |id: u64| fs.iter().position(|f| f.id == id).unwrap();
        let mut m = Model::default();
        for (f, _) in fs.iter().enumerate() {
            for p in 0..FILE_PAGES {
                let len = (file_len(f).saturating_sub(p * PS as u64)).min(PS as u64) as usize;
                m.disk
                    .insert((f, p), (0..len).map(|o| pattern(f as u64, p, o)).collect());
            }
        }
        for op in ops {
            match op {
                Op::Lookup {
                    file,
                    page,
                    readahead,
                } => {
                    let key = (fs[file].id, page);
                    let r = c.lookup(&fs[file], page, readahead);
                    if let Some(&idx) = m.resident.get(&key) {
                        let mp = m.pages.get_mut(&idx).unwrap();
                        match r {
                            Lookup::Busy if mp.state == MState::Loading => {
                                if !readahead {
                                    m.stats.coalesced += 1;
                                }
                            }
                            Lookup::Busy if mp.handed || mp.queued => {}
                            Lookup::Busy if mp.dirty => mp.queued = true,
                            Lookup::Hit(i) if mp.state == MState::Valid => {
                                assert!(!mp.handed && !mp.queued, "hit on a page written back");
                                assert_eq!(i, idx);
                                assert_eq!(c.valid_len(i), mp.bytes.len());
                                assert_eq!(page_bytes(&c, i, mp.bytes.len()), mp.bytes);
                                mp.pins += 1;
                                m.hit_pins.push(i);
                                if !readahead {
                                    m.stats.hits += 1;
                                    m.demand_ok += 1;
                                    if mp.readahead {
                                        mp.readahead = false;
                                        m.stats.readahead_used += 1;
                                    }
                                }
                            }
                            r => panic!("{r:?} for resident page {mp:?}"),
                        }
                        continue;
                    }
                    match r {
                        Lookup::Miss(i) => {
                            if let Some(old) = m.pages.remove(&i) {
                                assert!(
                                    old.state == MState::Valid
                                        && old.pins == 0
                                        && !old.dirty
                                        && !old.handed,
                                    "page {i} reused while {old:?}"
                                );
                                m.resident.remove(&old.key);
                                m.stats.evictions += 1;
                                m.stats.readahead_wasted += u64::from(old.readahead);
                            }
                            m.pages.insert(
                                i,
                                MPage {
                                    key,
                                    state: MState::Loading,
                                    pins: 1,
                                    dirty: false,
                                    queued: false,
                                    handed: false,
                                    redirty: false,
                                    readahead: false,
                                    loading_readahead: readahead,
                                    bytes: Vec::new(),
                                },
                            );
                            m.resident.insert(key, i);
                            m.loading.push(i);
                            if !readahead {
                                m.stats.misses += 1;
                                m.demand_ok += 1;
                            }
                        }
                        Lookup::Full => {
                            assert_eq!(m.pages.len(), pages, "Full with free pages");
                            for (i, mp) in m.pages.iter_mut() {
                                let busy = mp.pins > 0 || mp.state == MState::Loading;
                                assert!(busy || mp.dirty, "Full but page {i} is evictable");
                                if mp.dirty && !mp.handed && mp.pins == 0 {
                                    // The sweeps visited it: it is queued now.
                                    mp.queued = true;
                                }
                            }
                        }
                        r => panic!("{r:?} for a page that is not resident"),
                    }
                }
                Op::LookupResident { file, page } => {
                    let key = (fs[file].id, page);
                    let r = c.lookup_resident(key.0, page);
                    match m
                        .resident
                        .get(&key)
                        .map(|i| (*i, m.pages.get_mut(i).unwrap()))
                    {
                        Some((idx, mp)) if mp.state == MState::Valid => {
                            assert_eq!(r, Some(idx));
                            assert_eq!(page_bytes(&c, idx, mp.bytes.len()), mp.bytes);
                            mp.pins += 1;
                            m.hit_pins.push(idx);
                            if mp.readahead {
                                mp.readahead = false;
                                m.stats.readahead_used += 1;
                            }
                        }
                        _ => assert_eq!(r, None),
                    }
                }
                Op::FinishLoad { pick, fail } => {
                    if m.loading.is_empty() {
                        continue;
                    }
                    let idx = m.loading.swap_remove(pick % m.loading.len());
                    let mp = m.pages.get_mut(&idx).unwrap();
                    if fail {
                        c.finish_load(idx, -5);
                        let key = mp.key;
                        m.pages.remove(&idx);
                        m.resident.remove(&key);
                    } else {
                        let data = &m.disk[&(fidx(mp.key.0), mp.key.1)];
                        fill(&c, idx, data);
                        c.finish_load(idx, data.len() as i64);
                        mp.bytes = data.clone();
                        mp.state = MState::Valid;
                        mp.pins -= 1;
                        m.stats.loads += 1;
                        m.stats.bytes_loaded += data.len() as u64;
                        if mp.loading_readahead {
                            mp.readahead = true;
                            m.stats.readahead_loaded += 1;
                        }
                    }
                }
                Op::Write {
                    pick,
                    at,
                    len,
                    dirty,
                    seed,
                } => {
                    if m.hit_pins.is_empty() {
                        continue;
                    }
                    let idx = m.hit_pins[pick % m.hit_pins.len()];
                    let data: Vec<u8> = (0..len)
                        .map(|o| seed.wrapping_add((o * 13) as u8))
                        .collect();
                    c.write_into(idx, at, &data, dirty);
                    let mp = m.pages.get_mut(&idx).unwrap();
                    if at > mp.bytes.len() {
                        mp.bytes.resize(at, 0);
                    }
                    write_at(&mut mp.bytes, at, &data);
                    if !dirty {
                        // Write-through: the daemon also writes the file.
                        let d = m.disk.get_mut(&(fidx(mp.key.0), mp.key.1)).unwrap();
                        if at > d.len() {
                            d.resize(at, 0);
                        }
                        write_at(d, at, &data);
                    }
                    if mp.handed || mp.queued {
                        mp.redirty = true;
                    } else if dirty && !mp.dirty {
                        mp.dirty = true;
                        m.stats.dirty_pages += 1;
                    }
                }
                Op::Release { pick } => {
                    if m.hit_pins.is_empty() {
                        continue;
                    }
                    let idx = m.hit_pins.swap_remove(pick % m.hit_pins.len());
                    c.release(idx);
                    m.pages.get_mut(&idx).unwrap().pins -= 1;
                }
                Op::TakeWritebacks { .. } | Op::DirtyOf { .. } | Op::AllDirty => {
                    let (wbs, want): (_, Filter) = match op {
                        Op::TakeWritebacks { max } => {
                            let wbs = c.take_writebacks(max);
                            assert!(wbs.len() <= max);
                            (wbs, Box::new(|_| false))
                        }
                        Op::DirtyOf { file } => {
                            let id = fs[file].id;
                            (
                                c.dirty_pages_of(id),
                                Box::new(move |mp: &MPage| mp.key.0 == id),
                            )
                        }
                        _ => (c.all_dirty(), Box::new(|_| true)),
                    };
                    let mut expect: Vec<PageIdx> = m
                        .pages
                        .iter()
                        .filter(|(_, mp)| mp.dirty && !mp.handed && mp.state == MState::Valid)
                        .filter(|(_, mp)| want(mp))
                        .map(|(i, _)| *i)
                        .collect();
                    let mut got: Vec<PageIdx> = wbs.iter().map(|w| w.idx).collect();
                    expect.sort_unstable();
                    got.sort_unstable();
                    if !matches!(op, Op::TakeWritebacks { .. }) {
                        assert_eq!(got, expect, "dirty pages handed out");
                    }
                    for w in wbs {
                        let mp = m.pages.get_mut(&w.idx).unwrap();
                        assert!(
                            mp.dirty && !mp.handed && mp.state == MState::Valid,
                            "{mp:?}"
                        );
                        assert_eq!((w.file.id, w.offset), (mp.key.0, mp.key.1 * PS as u64));
                        assert_eq!(w.len, mp.bytes.len());
                        let snapshot = page_bytes(&c, w.idx, w.len);
                        assert_eq!(snapshot, mp.bytes);
                        mp.handed = true;
                        mp.queued = false;
                        mp.pins += 1;
                        m.writebacks.push((w.idx, snapshot));
                    }
                }
                Op::FinishWriteback { pick, ok } => {
                    if m.writebacks.is_empty() {
                        continue;
                    }
                    let (idx, snapshot) = m.writebacks.swap_remove(pick % m.writebacks.len());
                    c.finish_writeback(idx, ok);
                    let mp = m.pages.get_mut(&idx).unwrap();
                    if ok {
                        m.disk.insert((fidx(mp.key.0), mp.key.1), snapshot);
                        m.stats.writebacks += 1;
                        if !mp.redirty {
                            mp.dirty = false;
                            m.stats.dirty_pages -= 1;
                        }
                    }
                    mp.redirty = false;
                    mp.handed = false;
                    mp.pins -= 1;
                }
                Op::Invalidate { file, new_len } => {
                    let id = fs[file].id;
                    c.invalidate_file(id, new_len);
                    if let Some(len) = new_len {
                        for p in 0..FILE_PAGES {
                            let keep = len.saturating_sub(p * PS as u64).min(PS as u64);
                            m.disk.get_mut(&(file, p)).unwrap().truncate(keep as usize);
                        }
                    }
                    let mut dropped = Vec::new();
                    for (i, mp) in m.pages.iter_mut() {
                        if mp.key.0 != id {
                            continue;
                        }
                        let start = mp.key.1 * PS as u64;
                        if let Some(len) = new_len.filter(|&len| start < len) {
                            if mp.state == MState::Valid && !mp.handed {
                                mp.bytes.truncate((len - start).min(PS as u64) as usize);
                            }
                            continue;
                        }
                        if mp.state == MState::Valid && mp.pins == 0 && !mp.dirty {
                            dropped.push(*i);
                        }
                    }
                    for i in dropped {
                        let mp = m.pages.remove(&i).unwrap();
                        m.resident.remove(&mp.key);
                        m.stats.readahead_wasted += u64::from(mp.readahead);
                    }
                }
            }
            // After every step: structure, page-by-page agreement, counters.
            c.check_invariants();
            let mut pinned = 0;
            for i in 0..pages as PageIdx {
                let (state, pins, dirty, key, valid_len) = c.page_info(i);
                pinned += usize::from(pins > 0);
                let Some(mp) = m.pages.get_mut(&i) else {
                    assert_eq!(state, PageState::Free, "page {i}");
                    continue;
                };
                assert_eq!(key, Some(mp.key));
                assert_eq!(dirty, mp.dirty, "page {i}");
                let expect_state = match mp.state {
                    MState::Loading => PageState::Loading,
                    MState::Valid if mp.handed || mp.queued => PageState::WritingBack,
                    MState::Valid if mp.dirty && state == PageState::WritingBack => {
                        // A sweep queued it (the model learns it here).
                        assert_eq!(pins, mp.pins + 1, "a queued page holds one pin");
                        mp.queued = true;
                        state
                    }
                    MState::Valid => PageState::Valid,
                };
                assert_eq!(state, expect_state, "page {i}: {mp:?}");
                let queue_pin = u32::from(state == PageState::WritingBack && !mp.handed);
                assert_eq!(pins, mp.pins + queue_pin, "page {i}: {mp:?}");
                if mp.state == MState::Valid {
                    assert_eq!(valid_len, mp.bytes.len(), "page {i}");
                }
            }
            assert!(pinned <= pages);
            let s = c.stats();
            assert_eq!(s, m.stats);
            assert_eq!(s.hits + s.misses, m.demand_ok);
        }
    }

    /// 8 threads hammer overlapping keys; `loads_per_key[k]` counts the loads of key `k`.
    /// Every hit is checked against the pattern of its key; returns (lookups, busy, full).
    fn hammer(
        c: &Arc<HostCache>,
        fs: &[Arc<FileEntry>],
        keys_per_file: u64,
        iters: usize,
        fail_every: u64,
        loads_per_key: &Arc<Vec<AtomicU64>>,
    ) -> (u64, u64, u64) {
        let ps = c.page_size();
        let len_of = move |f: usize, p: u64| if p % 3 == 2 { ps / 2 + f } else { ps };
        let threads: Vec<_> = (0..8u64)
            .map(|t| {
                let (c, fs, loads) = (c.clone(), fs.to_vec(), loads_per_key.clone());
                std::thread::spawn(move || {
                    let mut x = t.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
                    let (mut busy, mut full) = (0, 0);
                    for n in 0..iters as u64 {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        let f = (x % fs.len() as u64) as usize;
                        let p = (x >> 8) % keys_per_file;
                        let ra = (x >> 20) % 8 == 0;
                        match c.lookup(&fs[f], p, ra) {
                            Lookup::Hit(i) => {
                                let want: Vec<u8> =
                                    (0..len_of(f, p)).map(|o| pattern(f as u64, p, o)).collect();
                                assert_eq!(c.valid_len(i), want.len());
                                assert_eq!(page_bytes(&c, i, want.len()), want, "page {f}/{p}");
                                c.release(i);
                            }
                            Lookup::Miss(i) => {
                                if fail_every > 0 && (n + t) % fail_every == 0 {
                                    c.finish_load(i, -libc::EIO as i64);
                                    continue;
                                }
                                let k = f as u64 * keys_per_file + p;
                                loads[k as usize].fetch_add(1, Ordering::Relaxed);
                                let data: Vec<u8> =
                                    (0..len_of(f, p)).map(|o| pattern(f as u64, p, o)).collect();
                                fill(&c, i, &data);
                                std::thread::yield_now(); // let others find it loading
                                c.finish_load(i, data.len() as i64);
                            }
                            Lookup::Busy => {
                                busy += 1;
                                std::thread::yield_now();
                            }
                            Lookup::Full => {
                                full += 1;
                                std::thread::yield_now();
                            }
                        }
                    }
                    (busy, full)
                })
            })
            .collect();
        let (mut busy, mut full) = (0, 0);
        for t in threads {
            let (b, f) = t.join().unwrap();
            busy += b;
            full += f;
        }
        (8 * iters as u64, busy, full)
    }

    #[test]
    fn stress_concurrent_misses_load_each_key_once() {
        // 16 keys fit in 16 pages, so nothing is evicted within a round: in each round the 8
        // threads race to read every key, and each key must be loaded exactly once. Between
        // rounds the files are invalidated, so every round races on cold keys again.
        const ROUNDS: u64 = 40;
        let fs = files(2);
        let c = Arc::new(small(16, 4096));
        let loads: Arc<Vec<AtomicU64>> = Arc::new((0..16).map(|_| AtomicU64::new(0)).collect());
        for round in 0..ROUNDS {
            let barrier = Arc::new(std::sync::Barrier::new(8));
            let threads: Vec<_> = (0..8u64)
                .map(|t| {
                    let (c, fs, loads, barrier) =
                        (c.clone(), fs.clone(), loads.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        for j in 0..16u64 {
                            let k = (j + t / 2) % 16;
                            let (f, p) = ((k / 8) as usize, k % 8);
                            let want: Vec<u8> =
                                (0..4096).map(|o| pattern(f as u64, p, o)).collect();
                            loop {
                                match c.lookup(&fs[f], p, false) {
                                    Lookup::Hit(i) => {
                                        assert_eq!(page_bytes(&c, i, 4096), want, "page {f}/{p}");
                                        c.release(i);
                                        break;
                                    }
                                    Lookup::Miss(i) => {
                                        loads[k as usize].fetch_add(1, Ordering::Relaxed);
                                        fill(&c, i, &want);
                                        std::thread::yield_now(); // let others find it loading
                                        c.finish_load(i, 4096);
                                        break;
                                    }
                                    Lookup::Busy => std::thread::yield_now(),
                                    Lookup::Full => panic!("Full with 8 pins on 16 pages"),
                                }
                            }
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            for (k, n) in loads.iter().enumerate() {
                assert_eq!(n.load(Ordering::Relaxed), round + 1, "key {k} loaded twice");
            }
            c.check_invariants();
            for f in &fs {
                c.invalidate_file(f.id, None);
            }
        }
        let s = c.stats();
        assert_eq!(
            (s.loads, s.misses, s.evictions),
            (16 * ROUNDS, 16 * ROUNDS, 0)
        );
        // Every thread reads every key once per round: one miss, the rest hits.
        assert_eq!(s.hits, 7 * 16 * ROUNDS);
        c.check_invariants();
    }

    #[test]
    fn stress_with_eviction_and_failed_loads() {
        let fs = files(3);
        let c = Arc::new(small(8, 512));
        let loads: Arc<Vec<AtomicU64>> = Arc::new((0..48).map(|_| AtomicU64::new(0)).collect());
        let (lookups, busy, full) = hammer(&c, &fs, 16, 4000, 7, &loads);
        let s = c.stats();
        let loaded: u64 = loads.iter().map(|n| n.load(Ordering::Relaxed)).sum();
        assert_eq!(s.loads, loaded);
        assert!(s.evictions > 0 && s.evictions <= s.loads);
        assert!(s.hits + s.misses + busy + full <= lookups);
        assert!(s.readahead_used + s.readahead_wasted <= s.readahead_loaded);
        c.check_invariants();
        for i in 0..8 {
            assert_eq!(c.page_info(i).1, 0, "page {i} left pinned");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
        #[test]
        fn cache_matches_model(pages in 4usize..=16, ops in prop::collection::vec(op(), 1..300)) {
            run_model(pages, ops);
        }
    }
}
