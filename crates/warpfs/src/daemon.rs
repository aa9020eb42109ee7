//! The daemon: worker threads that serve requests from channels.
//!
//! Each worker loops: take a batch (deferred requests first, then demand rings, then — only
//! when no demand request waits — prefetch rings), validate every field, resolve reads and
//! writes against the host cache, submit all file I/O of the batch to its own engine in one go,
//! and complete each request as soon as its own I/O is done. Concurrent misses on one page
//! make one load: inside a batch the second request waits on the first's load; across workers
//! the cache answers `Busy` and the request is retried next round. Idle workers back off from
//! spinning to sleeping: worker 0 polls every `idle_poll`, the others sleep until woken, so an
//! idle daemon costs a fraction of a percent of a core.
//!
//! Nothing in a ring is trusted: a bad op, handle, mode, range or completion index gets an
//! error completion (or, for a bad completion index, is counted and dropped); the daemon only
//! writes into a channel's data region after a bounds check and into its own cache pages.

use crate::abi::{self, WfsRequest};
use crate::cache::{HostCache, KeyHasher, Lookup, PageIdx, Writeback};
use crate::cache_refs::{Hold, RefMode};
use crate::channel::Channel;
use crate::engine::{self, EngineConfig, EngineFactory, IoDone, IoEngine, IoKind, IoOp};
use crate::files::{FileEntry, FileTable};
use crate::futex::{wait as futex_wait, wake as futex_wake, wake_one as futex_wake_one};
use crate::readahead::Readahead;
use crate::runtime::DaemonStats;
use crate::span;
use std::collections::{HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::rc::Rc;
use std::sync::atomic::{fence, AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A worker-local handle to a shared `Arc`: cloning and dropping it per request is a plain
/// increment, not an atomic one, so workers on many cores never bounce the `Arc` reference
/// count of a file, channel or cache they all use. (The extra allocation is deliberate.)
#[allow(clippy::redundant_allocation)]
type Local<T> = Rc<Arc<T>>;

/// One in this many small reads (≤ one page) that miss a full cache may evict a page to be
/// cached; the others are read straight from the file (see `Worker::plan_read`). An admission
/// costs a CLOCK sweep over cold page metadata, two map updates and a queued load: on the
/// development machine (2 cores, random 4 KiB reads over a file twice the cache) 1 in 32 gave
/// 0.59–0.61× pread against 0.51–0.59× for 1 in 8, and never admitting 0.58–0.60×
/// (bench/RESULTS.md, 2026-11-26). A working set that moves is still taken in, 4× slower.
const ADMIT_EVERY: u64 = 32;

/// Settings of the daemon.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    /// Worker threads.
    pub workers: usize,
    /// Most requests one worker takes per round.
    pub batch: usize,
    /// Reads of at least this many bytes skip the cache (write-through mode only).
    pub bypass_bytes: usize,
    /// Write-back: writes that hit a resident page only dirty it (written back on eviction,
    /// fsync or flush). Otherwise every write reaches the OS before it is acknowledged.
    pub write_back: bool,
    /// Readahead window in pages (0: off).
    pub readahead_pages: u32,
    /// Engine of each worker.
    pub engine: EngineConfig,
    /// Longest sleep of the polling worker when idle (GPU requesters cannot ring the doorbell).
    pub idle_poll: Duration,
    /// A request that cannot get cache pages for this long fails with `EBUSY`.
    pub defer_timeout: Duration,
    /// Builds the engines instead of [`engine::create`] (tests: fault injection).
    pub engine_factory: Option<EngineFactory>,
}

/// How long a worker keeps polling the rings after its last request or completion before it
/// backs off to sleep: a GPU requester cannot ring the doorbell, so a sleeping worker would add
/// its sleep to the next request's latency. Spinning costs a core only while requests flow.
const SPIN_AFTER_WORK: Duration = Duration::from_micros(200);
/// Polls of the demand rings' head slots between two passes of the worker loop while it spins
/// after work (a pass reads the clock and looks at every ring and queue).
const SPIN_WATCH: u32 = 64;
/// Reads around the cache up to this size first try the page cache at once
/// (`IoEngine::read_cached_now`).
const INLINE_READ_MAX: u64 = 64 << 10;

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            batch: 64,
            bypass_bytes: 1 << 20,
            write_back: false,
            readahead_pages: 16,
            engine: EngineConfig::default(),
            idle_poll: Duration::from_millis(4),
            defer_timeout: Duration::from_secs(10),
            engine_factory: None,
        }
    }
}

/// Counters of one worker (the last set: control paths), each set on its own cache lines
/// so that workers counting every request never share a line; [`Daemon::stats`] sums them.
#[derive(Default)]
#[repr(align(128))]
struct Counters {
    requests: AtomicU64,
    errors: AtomicU64,
    corrupt: AtomicU64,
    batches: AtomicU64,
    ios: AtomicU64,
    prefetches: AtomicU64,
    bypass_bytes: AtomicU64,
    cache_refs: AtomicU64,
}

struct Shared {
    cfg: DaemonConfig,
    files: Arc<FileTable>,
    cache: Arc<HostCache>,
    readahead: Readahead,
    /// The attached channels, each with whether its requesters cannot ring the doorbell
    /// (GPUs, other processes: "polled").
    channels: RwLock<Vec<(Arc<Channel>, bool)>>,
    channels_version: AtomicU64,
    /// Whether a polled channel is attached: workers then poll on for [`SPIN_AFTER_WORK`].
    any_polled: AtomicBool,
    stop: AtomicBool,
    /// Set by [`Daemon::shutdown`] after its final drain: no worker runs and no request will
    /// be taken from a ring again, so a requester still waiting may withdraw its record.
    stopped: AtomicBool,
    doorbell: AtomicU32,
    sleepers: AtomicU32,
    /// Set by the first ring while workers sleep, cleared by the worker it woke: later rings
    /// before that worker runs cost one load, not a system call each.
    rung: AtomicBool,
    /// One set per worker, then one for control paths (`fail_pending`).
    counters: Box<[Counters]>,
    engine_name: &'static str,
    /// Engine for flushes requested from outside the workers.
    control: Mutex<Box<dyn IoEngine>>,
}

impl Shared {
    /// The counters of control paths (not a worker's).
    fn control_counters(&self) -> &Counters {
        self.counters.last().expect("one set per worker plus one")
    }

    /// Wakes one sleeping worker, unless a wake is already on its way.
    fn wake_one(&self) {
        if !self.rung.swap(true, Ordering::SeqCst) {
            self.doorbell.fetch_add(1, Ordering::SeqCst);
            futex_wake_one(&self.doorbell);
        }
    }
}

/// Lets requesters that can make system calls (host agents) wake sleeping workers.
#[derive(Clone)]
pub struct Doorbell(Arc<Shared>);

impl std::fmt::Debug for Doorbell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Doorbell")
    }
}

impl Doorbell {
    /// Call after publishing a request: wakes the workers if any sleeps (one load otherwise).
    pub fn ring(&self) {
        fence(Ordering::SeqCst);
        if self.0.sleepers.load(Ordering::SeqCst) > 0 {
            self.0.wake_one();
        }
    }
    /// Whether the daemon is stopping (requesters should not wait for new requests).
    pub fn stopping(&self) -> bool {
        self.0.stop.load(Ordering::Acquire)
    }

    /// Whether the daemon has stopped for good: its workers are gone and its final drain of
    /// the rings is done, so it will never complete another record. Every completion it made
    /// happens before a `true` seen here; a request still pending then (e.g. one pushed after
    /// the final drain) is never answered, and its requester withdraws the record
    /// ([`crate::completion::Completions::withdraw`]). One load.
    pub fn stopped(&self) -> bool {
        self.0.stopped.load(Ordering::Acquire)
    }
}

/// The running daemon. Dropping it shuts it down (see [`Daemon::shutdown`]).
pub struct Daemon {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("workers", &self.workers.len())
            .finish()
    }
}

impl Daemon {
    /// Starts `cfg.workers` worker threads serving files of `files` through `cache`.
    pub fn start(
        cfg: DaemonConfig,
        files: Arc<FileTable>,
        cache: Arc<HostCache>,
    ) -> crate::Result<Self> {
        if cfg.workers == 0 || cfg.batch == 0 {
            return Err(crate::Error::Config(
                "the daemon needs at least one worker and a batch of at least 1".into(),
            ));
        }
        let control = new_engine(
            &cfg,
            &EngineConfig {
                queue_depth: 64,
                threads: 2,
                ..cfg.engine
            },
        );
        let counters = (0..=cfg.workers).map(|_| Counters::default()).collect();
        let shared = Arc::new(Shared {
            readahead: Readahead::new(cfg.readahead_pages, 16),
            engine_name: control.name(),
            control: Mutex::new(control),
            cfg,
            files,
            cache,
            channels: RwLock::new(Vec::new()),
            channels_version: AtomicU64::new(0),
            any_polled: AtomicBool::new(false),
            stop: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            doorbell: AtomicU32::new(0),
            sleepers: AtomicU32::new(0),
            rung: AtomicBool::new(false),
            counters,
        });
        let mut workers = Vec::new();
        for id in 0..shared.cfg.workers {
            let s = shared.clone();
            let h = std::thread::Builder::new()
                .name(format!("warpfs-daemon-{id}"))
                .spawn(move || serve(s, id))
                .map_err(crate::Error::Io)?;
            workers.push(h);
        }
        tracing::info!(
            workers = shared.cfg.workers,
            engine = shared.engine_name,
            "warpfs daemon started"
        );
        Ok(Self { shared, workers })
    }

    /// Starts serving `channel`, whose requesters ring the doorbell.
    pub fn attach(&self, channel: Arc<Channel>) {
        self.update_channels(|v| v.push((channel, false)));
        self.doorbell().ring();
    }

    /// Starts serving `channel`, whose requesters cannot ring the doorbell (a GPU, another
    /// process): workers then keep polling for 200 µs (`SPIN_AFTER_WORK`) after their last request
    /// instead of sleeping at once, so such a requester's next request is seen within µs.
    pub fn attach_polled(&self, channel: Arc<Channel>) {
        self.update_channels(|v| v.push((channel, true)));
        self.doorbell().ring();
    }

    /// Stops serving `channel` (requests left in it are failed with `ESHUTDOWN`) and releases
    /// the cache pages its device requesters' answers still referenced (its requesters must
    /// be gone: a kernel still reading one of those pages could read another page's bytes).
    pub fn detach(&self, channel: &Arc<Channel>) {
        self.update_channels(|v| v.retain(|(c, _)| !Arc::ptr_eq(c, channel)));
        fail_pending(&self.shared, channel);
        channel.refs.close(|p| self.shared.cache.release(p));
    }

    /// Changes the channel list under its lock; workers pick the new list up.
    fn update_channels(&self, change: impl FnOnce(&mut Vec<(Arc<Channel>, bool)>)) {
        let mut v = self
            .shared
            .channels
            .write()
            .unwrap_or_else(|p| p.into_inner());
        change(&mut v);
        self.shared
            .any_polled
            .store(v.iter().any(|&(_, polled)| polled), Ordering::Relaxed);
        self.shared.channels_version.fetch_add(1, Ordering::Release);
    }

    /// A doorbell for requesters that can wake the daemon.
    pub fn doorbell(&self) -> Doorbell {
        Doorbell(self.shared.clone())
    }

    /// Name of the engine the workers run.
    pub fn engine_name(&self) -> &'static str {
        self.shared.engine_name
    }

    /// Counters.
    pub fn stats(&self) -> DaemonStats {
        let sum = |f: fn(&Counters) -> &AtomicU64| {
            self.shared
                .counters
                .iter()
                .map(|c| f(c).load(Ordering::Relaxed))
                .sum()
        };
        DaemonStats {
            requests: sum(|c| &c.requests),
            errors: sum(|c| &c.errors),
            corrupt_slots: sum(|c| &c.corrupt),
            batches: sum(|c| &c.batches),
            ios: sum(|c| &c.ios),
            prefetches: sum(|c| &c.prefetches),
            bypass_bytes_read: sum(|c| &c.bypass_bytes),
            cache_refs: sum(|c| &c.cache_refs),
        }
    }

    /// Writes back the dirty pages of `file` (all files if `None`) and `fdatasync`s every file
    /// that had some. Blocks until done.
    pub fn flush(&self, file: Option<&Arc<FileEntry>>) -> crate::Result<()> {
        flush(&self.shared, file)
    }

    /// Stops the workers, writes back dirty pages, and fails requests still in the rings with
    /// `ESHUTDOWN`; then reports itself stopped ([`Doorbell::stopped`]), so that host agents
    /// whose request reached a ring only after that final drain withdraw it with `ESHUTDOWN`
    /// instead of waiting for their timeout. Idempotent.
    pub fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        self.shared.doorbell.fetch_add(1, Ordering::SeqCst);
        futex_wake(&self.shared.doorbell);
        for h in self.workers.drain(..) {
            let _ = h.join();
        }
        if let Err(e) = flush(&self.shared, None) {
            tracing::error!(error = %e, "write-back at shutdown failed");
        }
        let channels = self
            .shared
            .channels
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (ch, _) in &channels {
            fail_pending(&self.shared, ch);
        }
        // Release: every completion above happens before a requester's `stopped()` of true.
        self.shared.stopped.store(true, Ordering::Release);
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// An engine for `ecfg`, from the configured factory if any.
fn new_engine(cfg: &DaemonConfig, ecfg: &EngineConfig) -> Box<dyn IoEngine> {
    match &cfg.engine_factory {
        Some(f) => f.create(ecfg),
        None => engine::create(ecfg),
    }
}

/// A worker thread's body. Nothing a requester writes can make a worker panic (every field is
/// validated); should a bug do it anyway, the panic is logged and a fresh worker takes over, so
/// the rings keep being served. Requests the failed worker held are lost to it: their
/// requesters' bounded waits report the error.
fn serve(shared: Arc<Shared>, id: usize) {
    loop {
        let s = shared.clone();
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Worker::new(s, id).run())) {
            Ok(()) => return,
            Err(_) => {
                tracing::error!(
                    worker = id,
                    "warpfs daemon worker panicked; starting a fresh one"
                );
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
            }
        }
    }
}

/// Completes every request still in `ch`'s rings with `ESHUTDOWN`.
fn fail_pending(shared: &Shared, ch: &Channel) {
    for ring in [&ch.demand, &ch.prefetch] {
        while let Some(p) = ring.try_pop() {
            let req = match p {
                crate::ring::Popped::Request(r) | crate::ring::Popped::Corrupt(r) => r,
            };
            shared
                .control_counters()
                .errors
                .fetch_add(1, Ordering::Relaxed);
            let _ = ch
                .completions
                .complete(req.completion, req.ticket, -(libc::ESHUTDOWN as i64));
        }
    }
}

fn flush(shared: &Shared, file: Option<&Arc<FileEntry>>) -> crate::Result<()> {
    let cache = &shared.cache;
    let mut first_err = None;
    let mut files: HashMap<u64, Arc<FileEntry>> = HashMap::new();
    // Our own write-backs, then wait for the ones workers have in flight (they may have taken
    // some of the file's dirty pages first), until nothing dirty is left unwritten.
    let limit = Duration::from_secs(60);
    let deadline = Instant::now() + limit;
    loop {
        let written = write_back_pages(shared, file, &mut files, &mut first_err);
        if written == 0 && cache.writebacks_in_flight(file.map(|f| f.id)) == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(crate::Error::Timeout(limit));
        }
        if written == 0 {
            std::thread::sleep(Duration::from_micros(50));
        }
    }
    if let Some(f) = file {
        files.insert(f.id, f.clone());
    }
    let mut engine = shared.control.lock().unwrap_or_else(|p| p.into_inner());
    let syncs: Vec<(Arc<FileEntry>, IoOp)> = files
        .into_values()
        .enumerate()
        .map(|(i, f)| {
            let op = IoOp {
                kind: IoKind::Fsync,
                fd: f.fd(),
                offset: 0,
                buf: std::ptr::null_mut(),
                len: 0,
                token: i as u64,
            };
            (f, op)
        })
        .collect();
    let ops: Vec<IoOp> = syncs.iter().map(|(_, op)| *op).collect();
    // SAFETY: fsync ops use no buffer; the fds stay open (entries held in `syncs`).
    unsafe { engine.submit(&ops) };
    let mut done = Vec::new();
    while engine.in_flight() > 0 {
        engine.reap(&mut done, true);
        for d in done.drain(..) {
            if d.result < 0 && first_err.is_none() {
                first_err = Some(crate::Error::from_result("fdatasync", d.result));
            }
        }
    }
    match first_err {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Writes back, with the control engine, the dirty pages of `file` (all files if `None`) that
/// nobody is writing already; records the files written and the first error. Returns how many
/// pages it wrote.
fn write_back_pages(
    shared: &Shared,
    file: Option<&Arc<FileEntry>>,
    files: &mut HashMap<u64, Arc<FileEntry>>,
    first_err: &mut Option<crate::Error>,
) -> usize {
    let cache = &shared.cache;
    let wbs = match file {
        Some(f) => cache.dirty_pages_of(f.id),
        None => cache.all_dirty(),
    };
    if wbs.is_empty() {
        return 0;
    }
    let mut engine = shared.control.lock().unwrap_or_else(|p| p.into_inner());
    let ops: Vec<IoOp> = wbs
        .iter()
        .enumerate()
        .map(|(i, wb)| IoOp {
            kind: IoKind::Write,
            fd: wb.file.fd(),
            offset: wb.offset,
            buf: cache.page_ptr(wb.idx),
            len: wb.len,
            token: i as u64,
        })
        .collect();
    // SAFETY: each page is pinned and marked writing-back until finish_writeback below, so
    // its memory stays valid and unmodified; the file entries (fds) are held by `wbs`.
    unsafe { engine.submit(&ops) };
    let mut done = Vec::new();
    while engine.in_flight() > 0 {
        engine.reap(&mut done, true);
        for d in done.drain(..) {
            let wb = &wbs[d.token as usize];
            let ok = d.result == wb.len as i64;
            cache.finish_writeback(wb.idx, ok);
            if ok {
                files.insert(wb.file.id, wb.file.clone());
            } else if first_err.is_none() {
                *first_err = Some(crate::Error::from_result(
                    "write-back",
                    if d.result < 0 {
                        d.result
                    } else {
                        -(libc::EIO as i64)
                    },
                ));
            }
        }
    }
    wbs.len()
}

/// A slab: stable indices for live items, reused after removal.
struct Slab<T> {
    items: Vec<Option<T>>,
    free: Vec<usize>,
}

impl<T> Slab<T> {
    fn new() -> Self {
        Self {
            items: Vec::new(),
            free: Vec::new(),
        }
    }
    fn insert(&mut self, v: T) -> usize {
        match self.free.pop() {
            Some(i) => {
                self.items[i] = Some(v);
                i
            }
            None => {
                self.items.push(Some(v));
                self.items.len() - 1
            }
        }
    }
    fn remove(&mut self, i: usize) -> Option<T> {
        let v = self.items.get_mut(i)?.take();
        if v.is_some() {
            self.free.push(i);
        }
        v
    }
    fn get(&self, i: usize) -> Option<&T> {
        self.items.get(i)?.as_ref()
    }
    fn get_mut(&mut self, i: usize) -> Option<&mut T> {
        self.items.get_mut(i)?.as_mut()
    }
}

impl<T> std::ops::Index<usize> for Slab<T> {
    type Output = T;
    fn index(&self, i: usize) -> &T {
        self.get(i).expect("live slab entry")
    }
}

impl<T> std::ops::IndexMut<usize> for Slab<T> {
    fn index_mut(&mut self, i: usize) -> &mut T {
        self.get_mut(i).expect("live slab entry")
    }
}

/// A request taken from a ring, with what has been resolved about it. Lives in the worker's
/// job slab from the moment it is accepted until it is completed.
///
/// The job's channel and file are worker-local `Rc`s of the shared `Arc`s: taking and dropping
/// them per request costs no atomic operation, so workers on many cores never bounce the
/// `Arc` reference counts of a file or channel they all serve.
struct Job {
    ch: Local<Channel>,
    req: WfsRequest,
    file: Local<FileEntry>,
    first_seen: Instant,
    /// Pages of a cached read/write: (page number, page index, how it is held).
    pages: Vec<(u64, PageIdx, Held)>,
    /// Outstanding I/Os this job waits for.
    pending: usize,
    /// First error seen.
    error: Option<i64>,
    /// Parts of a bypass read: (length asked, result) in file order.
    parts: Vec<(usize, Option<i64>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Held {
    /// Pinned by our lookup.
    Hit,
    /// Reserved by our lookup as a miss; the job writes through and then drops it.
    Reserved,
    /// Loaded (or being loaded) by load `n`.
    Load(usize),
}

/// A page being read from its file into the cache. Concurrent readers of the page attach to
/// it (one I/O for all); the page is handed back to the cache once no reader needs it.
struct Load {
    key: (u64, u64),
    idx: PageIdx,
    result: Option<i64>,
    /// Jobs that hold this page (they copy from it before it is handed back).
    refs: usize,
    /// Jobs waiting for the I/O to finish.
    waiters: Vec<usize>,
}

#[derive(Debug)]
enum Tag {
    Load(usize),
    /// Part `n` of a bypass read of job `j`.
    Part(usize, usize),
    Write(usize),
    Writeback(Writeback, Option<usize>),
    Fsync(usize),
}

struct Worker {
    shared: Arc<Shared>,
    /// The cache, as a worker-local handle (cloned per request without atomics).
    cache: Local<HostCache>,
    id: usize,
    engine: Box<dyn IoEngine>,
    channels: Vec<Local<Channel>>,
    version: u64,
    /// Private handle → entry map, valid while the file table's version is `files_version`.
    files: HashMap<u32, Local<FileEntry>>,
    files_version: u64,
    rr: usize,
    jobs: Slab<Job>,
    /// Jobs accepted this round, to plan.
    fresh: Vec<usize>,
    /// Jobs that found a page busy or the cache full: planned again next round.
    deferred: VecDeque<usize>,
    loads: Slab<Load>,
    /// (file id, page) → load in flight (the cache's multiply-xor hash: keys are ours).
    load_of: HashMap<(u64, u64), usize, BuildHasherDefault<KeyHasher>>,
    /// When this round's first request was taken (one clock read a batch, not one a request).
    batch_start: Option<Instant>,
    tags: Slab<Tag>,
    ops: Vec<IoOp>,
    done: Vec<IoDone>,
    prefetch: Vec<(Local<FileEntry>, u64, u64, u32)>,
    /// Small random reads seen: every `ADMIT_EVERY`-th may evict a cache page on a miss.
    small_reads: u64,
    /// What the last run took from a ring (kept for its allocation).
    popped: Vec<crate::ring::Popped>,
    /// Pages of the read being planned that the readahead detector sees: misses and the
    /// first use of prefetched pages (kept for its allocation).
    observed: Vec<u64>,
    /// When this worker last swept the channels' held cache-page references.
    last_sweep: Instant,
}

enum Outcome {
    /// Complete now with this result.
    Now(i64),
    /// Waits for I/O (or was completed already).
    Wait,
    /// Retry in a later round.
    Defer,
}

impl Worker {
    fn new(shared: Arc<Shared>, id: usize) -> Self {
        let mut engine = new_engine(&shared.cfg, &shared.cfg.engine);
        let (ptr, len) = shared.cache.arena();
        // SAFETY: the arena lives as long as the cache, which `shared` (held by this worker
        // for the engine's whole life) keeps alive.
        if let Err(e) = unsafe { engine.register_buffers(&[(ptr, len)]) } {
            tracing::debug!(error = %e, "cache arena not registered as a fixed buffer");
        }
        Self {
            cache: Rc::new(shared.cache.clone()),
            shared,
            id,
            engine,
            channels: Vec::new(),
            version: u64::MAX,
            files: HashMap::new(),
            files_version: u64::MAX,
            rr: 0,
            jobs: Slab::new(),
            fresh: Vec::new(),
            deferred: VecDeque::new(),
            loads: Slab::new(),
            load_of: HashMap::default(),
            batch_start: None,
            tags: Slab::new(),
            ops: Vec::new(),
            done: Vec::new(),
            popped: Vec::new(),
            observed: Vec::new(),
            prefetch: Vec::new(),
            small_reads: 0,
            last_sweep: Instant::now(),
        }
    }

    fn refresh_channels(&mut self) {
        let v = self.shared.channels_version.load(Ordering::Acquire);
        if v != self.version {
            self.channels = self
                .shared
                .channels
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .iter()
                .map(|(c, _)| Rc::new(c.clone()))
                .collect();
            self.version = v;
        }
    }

    /// The worker loop: take requests, plan them, submit their I/O, reap completions. Never
    /// waits for its own I/O while requests queue up: with I/O in flight and nothing new it
    /// naps in short slices (a host requester's doorbell cuts a nap short).
    fn run(mut self) {
        let mut idle_rounds = 0u32;
        let mut last_work = Instant::now();
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                self.drain_for_shutdown();
                return;
            }
            self.refresh_channels();
            let took = self.take_batch();
            if took > 0 {
                self.shared.counters[self.id]
                    .batches
                    .fetch_add(1, Ordering::Relaxed);
                if self.shared.sleepers.load(Ordering::Relaxed) > 0
                    && self.channels.iter().any(|c| !c.demand.is_empty())
                {
                    // More work than our share: wake the others.
                    self.shared.wake_one();
                }
            }
            let planned = self.plan_round();
            if !self.deferred.is_empty() {
                // Requests wait for pages: write back the dirty victims the sweeps queued, or
                // they wait until `defer_timeout` when every page is dirty.
                self.background_writeback();
            }
            self.submit();
            let reaped = self.reap(false);
            self.expire_deferred();
            if took > 0 || reaped > 0 {
                idle_rounds = 0;
                last_work = Instant::now();
                continue;
            }
            if planned == 0 && self.engine.in_flight() == 0 {
                self.background_writeback();
            }
            if self.shared.any_polled.load(Ordering::Relaxed)
                && last_work.elapsed() < SPIN_AFTER_WORK
            {
                // Requests came moments ago: the next one (a GPU cannot ring) is likely near.
                // With no I/O in flight, watch the demand rings' heads alone for a while (two
                // loads each, no clock read, no pass through the rest of the loop), so a GPU
                // request is seen within a few cache misses of landing.
                let watch = if self.busy() { 0 } else { SPIN_WATCH };
                for _ in 0..watch {
                    if self.channels.iter().any(|c| c.demand.head_published()) {
                        break;
                    }
                    std::hint::spin_loop();
                }
                continue;
            }
            idle_rounds = idle_rounds.saturating_add(1);
            self.idle(idle_rounds);
        }
    }

    fn busy(&self) -> bool {
        self.engine.in_flight() > 0 || !self.deferred.is_empty()
    }

    /// Backs off once nothing came for [`SPIN_AFTER_WORK`]: a few spins, a few yields, then
    /// sleep (worker 0 in short slices that grow, the others until woken).
    fn idle(&mut self, rounds: u32) {
        if rounds >= 64 {
            // Idle: release the cache pages device requesters are done with (at most once a
            // millisecond; worker 0 wakes every `idle_poll` at the latest).
            self.sweep_refs();
        }
        if rounds < 64 {
            std::hint::spin_loop();
            return;
        }
        if rounds < 80 {
            std::thread::yield_now();
            return;
        }
        let s = &self.shared;
        let seen = s.doorbell.load(Ordering::SeqCst);
        s.sleepers.fetch_add(1, Ordering::SeqCst);
        let has_work = self
            .channels
            .iter()
            .any(|c| !c.demand.is_empty() || !c.prefetch.is_empty());
        if !has_work && !s.stop.load(Ordering::Acquire) {
            let t = if self.busy() {
                // I/O in flight or requests waiting for pages: check back soon.
                Duration::from_micros(50)
            } else if self.id == 0 {
                // Worker 0 polls for requesters that cannot ring (GPUs): 20 µs, doubling
                // every 4 idle rounds, up to `idle_poll`. The others sleep until woken.
                let steps = (rounds - 80).min(64);
                (Duration::from_micros(20) * (1u32 << (steps / 4).min(16))).min(s.cfg.idle_poll)
            } else {
                Duration::from_secs(1)
            };
            futex_wait(&s.doorbell, seen, t);
        }
        s.sleepers.fetch_sub(1, Ordering::SeqCst);
        // Awake: let the next ring wake another sleeper. (Cleared before this worker looks at
        // the rings again, so no posted request can be missed.)
        s.rung.store(false, Ordering::SeqCst);
    }

    /// Stop: requests that wait for pages fail with `ESHUTDOWN`; I/O in flight is finished.
    fn drain_for_shutdown(&mut self) {
        while let Some(j) = self.deferred.pop_front() {
            self.finish_job(j, -(libc::ESHUTDOWN as i64));
        }
        for j in std::mem::take(&mut self.fresh) {
            self.finish_job(j, -(libc::ESHUTDOWN as i64));
        }
        self.submit();
        while self.engine.in_flight() > 0 {
            self.reap(true);
            self.submit();
            while let Some(j) = self.deferred.pop_front() {
                self.finish_job(j, -(libc::ESHUTDOWN as i64));
            }
        }
    }

    /// Accepts up to `batch` requests into `fresh`; returns how many were taken.
    fn take_batch(&mut self) -> usize {
        self.batch_start = None;
        // Take a fair share of what waits, so that several workers serve a burst in parallel
        // instead of the first one taking it all and serving it serially.
        let workers = self.shared.cfg.workers.max(1);
        let waiting: usize = self.channels.iter().map(|c| c.demand.len()).sum();
        let max = waiting.div_ceil(workers).clamp(1, self.shared.cfg.batch);
        let mut took = 0;
        let channels = std::mem::take(&mut self.channels);
        if !channels.is_empty() {
            for prefetch in [false, true] {
                // Demand first: prefetch hints only when no demand request waits.
                if prefetch && (took > 0 || !self.deferred.is_empty()) {
                    break;
                }
                let mut empty = 0;
                while took < max && empty < channels.len() {
                    self.rr = (self.rr + 1) % channels.len();
                    let ch = &channels[self.rr];
                    let ring = if prefetch { &ch.prefetch } else { &ch.demand };
                    // A run of published requests with one CAS of the ring's head (the
                    // workers of a busy GPU channel contend on it).
                    let mut run = std::mem::take(&mut self.popped);
                    if ring.try_pop_many(max - took, |p| run.push(p)) == 0 {
                        empty += 1;
                    } else {
                        empty = 0;
                        took += run.len();
                    }
                    for popped in run.drain(..) {
                        match popped {
                            crate::ring::Popped::Request(req) => self.accept(ch, req),
                            crate::ring::Popped::Corrupt(req) => {
                                let c = &self.shared.counters[self.id];
                                c.corrupt.fetch_add(1, Ordering::Relaxed);
                                c.errors.fetch_add(1, Ordering::Relaxed);
                                let _ = ch.completions.complete(
                                    req.completion,
                                    req.ticket,
                                    -(libc::EPROTO as i64),
                                );
                            }
                        }
                    }
                    self.popped = run;
                }
            }
        }
        self.channels = channels;
        took
    }

    /// Validates a fresh request; queues it as a job or completes it with an error.
    fn accept(&mut self, ch: &Local<Channel>, req: WfsRequest) {
        let s = &self.shared;
        s.counters[self.id].requests.fetch_add(1, Ordering::Relaxed);
        let fail = |errno: i32| {
            s.counters[self.id].errors.fetch_add(1, Ordering::Relaxed);
            let _ = ch
                .completions
                .complete(req.completion, req.ticket, -(errno as i64));
        };
        if req.completion as usize >= ch.completions.len() {
            // Nobody can be told; count it and move on.
            s.counters[self.id].errors.fetch_add(1, Ordering::Relaxed);
            return;
        }
        // A device requester posts on a record again only after it consumed the last answer
        // (its post is a release after its copy): the cache page that answer referenced is
        // free to go.
        if let Some(page) = ch.refs.take(req.completion) {
            self.cache.release(page);
        }
        if req.flags != 0 || req.reserved != 0 {
            return fail(libc::EINVAL);
        }
        let v = s.files.version();
        if v != self.files_version {
            self.files.clear();
            self.files_version = v;
        }
        let file = match self.files.get(&req.handle) {
            Some(f) => f.clone(),
            None => match s.files.get(req.handle) {
                Some(f) => {
                    let f = Rc::new(f);
                    if self.files.len() < 4096 {
                        self.files.insert(req.handle, f.clone());
                    }
                    f
                }
                None => return fail(libc::EBADF),
            },
        };
        if req
            .offset
            .checked_add(req.len)
            .is_none_or(|end| end > abi::WFS_MAX_END)
        {
            return fail(libc::EINVAL);
        }
        match req.op {
            abi::WFS_OP_READ | abi::WFS_OP_WRITE => {
                let write = req.op == abi::WFS_OP_WRITE;
                if (write && !file.writable()) || (!write && !file.readable()) {
                    return fail(libc::EBADF);
                }
                if ch.data_range(req.buf, req.len).is_none() {
                    return fail(libc::EFAULT);
                }
                if req.len == 0 {
                    let _ = ch.completions.complete(req.completion, req.ticket, 0);
                    return;
                }
            }
            abi::WFS_OP_FSYNC | abi::WFS_OP_SIZE => {}
            abi::WFS_OP_PREFETCH => {
                if !file.readable() {
                    return fail(libc::EBADF);
                }
            }
            _ => return fail(libc::EINVAL),
        }
        let j = self.jobs.insert(Job {
            ch: ch.clone(),
            req,
            file,
            first_seen: *self.batch_start.get_or_insert_with(Instant::now),
            pages: Vec::new(),
            pending: 0,
            error: None,
            parts: Vec::new(),
        });
        self.fresh.push(j);
    }

    /// Completes job `j` with `result` and frees it.
    fn finish_job(&mut self, j: usize, result: i64) {
        if let Some(job) = self.jobs.remove(j) {
            if result < 0 {
                self.shared.counters[self.id]
                    .errors
                    .fetch_add(1, Ordering::Relaxed);
            }
            let _ = job
                .ch
                .completions
                .complete(job.req.completion, job.req.ticket, result);
        }
    }

    fn push_op(&mut self, kind: IoKind, fd: i32, offset: u64, buf: *mut u8, len: usize, tag: Tag) {
        let token = self.tags.insert(tag) as u64;
        self.ops.push(IoOp {
            kind,
            fd,
            offset,
            buf,
            len,
            token,
        });
    }

    /// Plans deferred jobs, then fresh ones (deferred first: they are older), then the
    /// readahead they triggered. Returns how many jobs were planned.
    fn plan_round(&mut self) -> usize {
        let mut order: Vec<usize> = self.deferred.drain(..).collect();
        order.append(&mut self.fresh);
        let n = order.len();
        // Start the batch's cache-hint loads together, so their memory latencies overlap
        // instead of adding up one lookup at a time.
        let ps = self.cache.page_size() as u64;
        self.cache.warm(order.iter().map(|&j| {
            let job = &self.jobs[j];
            (job.file.id, job.req.offset / ps)
        }));
        for j in order {
            let outcome = match self.jobs[j].req.op {
                abi::WFS_OP_READ => self.plan_read(j),
                abi::WFS_OP_WRITE => self.plan_write(j),
                abi::WFS_OP_FSYNC => self.plan_fsync(j),
                abi::WFS_OP_SIZE => Outcome::Now(match self.jobs[j].file.size() {
                    Ok(sz) => sz as i64,
                    Err(e) => -(e.raw_os_error().unwrap_or(libc::EIO) as i64),
                }),
                abi::WFS_OP_PREFETCH => {
                    let job = &self.jobs[j];
                    let ps = self.cache.page_size() as u64;
                    let pages = span::pages(job.req.offset, job.req.len, ps);
                    let count = (pages.end - pages.start).min(4096) as u32;
                    self.prefetch
                        .push((job.file.clone(), pages.start, 1, count));
                    self.shared.counters[self.id]
                        .prefetches
                        .fetch_add(1, Ordering::Relaxed);
                    Outcome::Now(0)
                }
                _ => Outcome::Now(-(libc::EINVAL as i64)),
            };
            match outcome {
                Outcome::Now(r) => self.finish_job(j, r),
                Outcome::Wait => {}
                Outcome::Defer => self.deferred.push_back(j),
            }
        }
        for (file, start, stride, count) in std::mem::take(&mut self.prefetch) {
            self.plan_prefetch(&file, start, stride, count);
        }
        n
    }

    /// Hands the planned ops to the engine in one batch.
    fn submit(&mut self) {
        if self.ops.is_empty() {
            return;
        }
        self.shared.counters[self.id]
            .ios
            .fetch_add(self.ops.len() as u64, Ordering::Relaxed);
        // SAFETY: every buffer is either a cache page pinned until its op completes (loads,
        // write-backs) or a bounds-checked slice of a channel data region that the job's
        // `Arc<Channel>` keeps alive and whose requester does not touch it while the request
        // is pending; fds are kept open by the jobs' and write-backs' file entries.
        unsafe { self.engine.submit(&self.ops) };
        self.ops.clear();
    }

    /// Processes finished I/O; returns how many ops finished.
    fn reap(&mut self, wait: bool) -> usize {
        if self.engine.in_flight() == 0 {
            return 0;
        }
        let mut done = std::mem::take(&mut self.done);
        self.engine.reap(&mut done, wait);
        let n = done.len();
        for d in done.drain(..) {
            self.on_done(d);
        }
        self.done = done;
        n
    }

    fn expire_deferred(&mut self) {
        if self.deferred.is_empty() {
            return;
        }
        let timeout = self.shared.cfg.defer_timeout;
        let now = Instant::now();
        let mut kept = VecDeque::with_capacity(self.deferred.len());
        while let Some(j) = self.deferred.pop_front() {
            if now.duration_since(self.jobs[j].first_seen) > timeout {
                self.finish_job(j, -(libc::EBUSY as i64));
            } else {
                kept.push_back(j);
            }
        }
        self.deferred = kept;
    }

    /// Resolves the pages of job `j`'s range; `Err` when a page is busy or the cache is full
    /// (nothing stays pinned then; loads already started finish on their own).
    fn lookup_pages(&mut self, j: usize, for_write: bool, may_evict: bool) -> Result<(), Lookup> {
        let cache = Rc::clone(&self.cache);
        let ps = cache.page_size() as u64;
        let (file, off, len) = {
            let job = &self.jobs[j];
            (job.file.clone(), job.req.offset, job.req.len)
        };
        let mut pages = Vec::new();
        let mut fail = None;
        self.observed.clear();
        for p in span::pages(off, len, ps) {
            if let Some(&l) = self.load_of.get(&(file.id, p)) {
                if for_write {
                    fail = Some(Lookup::Busy);
                    break;
                }
                self.loads[l].refs += 1;
                pages.push((p, self.loads[l].idx, Held::Load(l)));
                self.observed.push(p);
                continue;
            }
            match cache.lookup_ahead(&file, p, false, may_evict) {
                (Lookup::Hit(idx), first_ahead) => {
                    pages.push((p, idx, Held::Hit));
                    if first_ahead {
                        self.observed.push(p);
                    }
                }
                (Lookup::Miss(idx), _) if for_write => pages.push((p, idx, Held::Reserved)),
                (Lookup::Miss(idx), _) => {
                    let l = self.start_load(&file, p, idx);
                    self.loads[l].refs += 1;
                    pages.push((p, idx, Held::Load(l)));
                    self.observed.push(p);
                }
                (other, _) => {
                    fail = Some(other);
                    break;
                }
            }
        }
        if let Some(f) = fail {
            self.release_held(pages);
            return Err(f);
        }
        // Wait for the loads still in flight.
        let mut pending = 0;
        for &(_, _, held) in &pages {
            if let Held::Load(l) = held {
                if self.loads[l].result.is_none() {
                    self.loads[l].waiters.push(j);
                    pending += 1;
                }
            }
        }
        let job = &mut self.jobs[j];
        job.pages = pages;
        job.pending = pending;
        Ok(())
    }

    /// Queues the read of page `p` of `file` into reserved cache page `idx`.
    fn start_load(&mut self, file: &Arc<FileEntry>, p: u64, idx: PageIdx) -> usize {
        let ps = self.cache.page_size() as u64;
        let l = self.loads.insert(Load {
            key: (file.id, p),
            idx,
            result: None,
            refs: 0,
            waiters: Vec::new(),
        });
        self.load_of.insert((file.id, p), l);
        let ptr = self.cache.page_ptr(idx);
        self.push_op(
            IoKind::Read,
            load_fd(file, ps),
            p * ps,
            ptr,
            ps as usize,
            Tag::Load(l),
        );
        l
    }

    /// Drops one reader of load `l`; hands the page back to the cache when the I/O is done
    /// and nobody reads it any more.
    fn unref_load(&mut self, l: usize) {
        let load = &mut self.loads[l];
        load.refs -= 1;
        self.retire_load(l);
    }

    fn retire_load(&mut self, l: usize) {
        let Some(load) = self.loads.get(l) else {
            return; // already retired by its last reader
        };
        if load.refs == 0 && load.waiters.is_empty() {
            if let Some(r) = load.result {
                let load = self.loads.remove(l).expect("live load");
                self.load_of.remove(&load.key);
                self.cache.finish_load(load.idx, r);
            }
        }
    }

    fn plan_read(&mut self, j: usize) -> Outcome {
        let (write_back, bypass_bytes) = (self.shared.cfg.write_back, self.shared.cfg.bypass_bytes);
        let (len, off) = (self.jobs[j].req.len, self.jobs[j].req.offset);
        if !write_back && len as usize >= bypass_bytes {
            return self.plan_bypass_read(j);
        }
        // Admission: a read of at most one page that misses a full cache is read straight
        // into the data region instead of evicting a page, except every `ADMIT_EVERY`-th.
        // Small random reads over a file larger than the cache would otherwise evict a page
        // per miss (a CLOCK sweep of cold metadata, a map update and an extra 4 KiB copy) to
        // keep data that is no likelier to be read again than what it evicted; the sampled
        // admissions still let the cache follow a working set that moves. Larger reads,
        // readahead and write-back mode always admit. (Measured with `warpfs bench --phases
        // rand-read`: random 4 KiB reads over a file twice the cache keep the same hit rate
        // and the daemon spends less CPU per request.)
        let ps = self.cache.page_size() as u64;
        let small = off % ps + len <= ps;
        let may_evict = write_back || !small || {
            self.small_reads = self.small_reads.wrapping_add(1);
            self.small_reads.is_multiple_of(ADMIT_EVERY)
        };
        let bypass = match self.lookup_pages(j, false, may_evict) {
            Ok(()) => false,
            Err(Lookup::Full) if !write_back => {
                // Every page of a read that bypasses the cache is a miss.
                self.observed.clear();
                self.observed.extend(span::pages(off, len, ps));
                true
            }
            Err(_) => return Outcome::Defer,
        };
        // Readahead on detected streams. The detector sees misses and the first use of pages
        // it prefetched, as Linux's does (its readahead marker): a hit on a page a demand read
        // loaded tells it nothing, and a stream that keeps using prefetched pages stays seen.
        let file = self.jobs[j].file.clone();
        for &p in &self.observed {
            if let Some(pf) = self.shared.readahead.try_observe(file.id, p) {
                self.prefetch
                    .push((file.clone(), pf.start, pf.stride, pf.count));
            }
        }
        if bypass {
            return self.plan_bypass_read(j);
        }
        if self.jobs[j].pending == 0 {
            self.finish_read(j);
        }
        Outcome::Wait
    }

    /// A read straight from the file into the data region (no cache).
    fn plan_bypass_read(&mut self, j: usize) -> Outcome {
        let job = &self.jobs[j];
        let (off, len, file) = (job.req.offset, job.req.len, job.file.clone());
        let Some(dst) = job.ch.data_range(job.req.buf, len) else {
            return Outcome::Now(-(libc::EFAULT as i64));
        };
        let mut parts: Vec<(u64, u64, i32)> = Vec::new();
        match file.direct_fd() {
            Some(dfd) => {
                let a = file.dio_align as u64;
                let split = span::split_direct(off, len, a);
                for (r, direct) in [
                    (split.head, false),
                    (split.middle, true),
                    (split.tail, false),
                ] {
                    if let Some(r) = r {
                        // SAFETY: r lies inside [off, off+len), so dst + (r.start - off) is in range.
                        let p = unsafe { dst.add((r.start - off) as usize) };
                        let aligned = (p as usize).is_multiple_of(a as usize);
                        let fd = if direct && aligned { dfd } else { file.fd() };
                        parts.push((r.start, r.end - r.start, fd));
                    }
                }
            }
            None => {
                // A small read of a warm buffered file: at once, if the page cache has it all,
                // copied from the file's mapping (no system call) or else read with
                // `preadv2(RWF_NOWAIT)`.
                // SAFETY (both): `dst` is `len` bytes of the channel's data region
                // (`data_range` checked it), the request's buffer, which nothing else touches
                // until the request completes.
                if len <= INLINE_READ_MAX && self.shared.cfg.engine.cached_reads_now {
                    let n = len as usize;
                    let mapped = file
                        .mapping()
                        .is_some_and(|m| unsafe { self.engine.read_mapped_now(m, off, dst, n) });
                    if mapped || unsafe { self.engine.read_cached_now(file.fd(), off, dst, n) } {
                        let c = &self.shared.counters[self.id];
                        if !mapped {
                            // One I/O issued (a system call), as the engine would count it.
                            c.ios.fetch_add(1, Ordering::Relaxed);
                        }
                        c.bypass_bytes.fetch_add(len, Ordering::Relaxed);
                        return Outcome::Now(len as i64);
                    }
                }
                parts.push((off, len, file.fd()))
            }
        }
        let job = &mut self.jobs[j];
        job.parts = parts.iter().map(|p| (p.1 as usize, None)).collect();
        job.pending = parts.len();
        for (n, (start, plen, fd)) in parts.into_iter().enumerate() {
            // SAFETY: start - off < len; see above.
            let p = unsafe { dst.add((start - off) as usize) };
            self.push_op(IoKind::Read, fd, start, p, plen as usize, Tag::Part(j, n));
        }
        Outcome::Wait
    }

    fn plan_write(&mut self, j: usize) -> Outcome {
        match self.lookup_pages(j, true, true) {
            Ok(()) => {}
            // More pages than the cache can give (e.g. a write larger than the cache): write
            // straight to the file; the file's cached pages are dropped when it is done.
            Err(Lookup::Full) if !self.shared.cfg.write_back => {
                let job = &self.jobs[j];
                let (off, len, fd) = (job.req.offset, job.req.len, job.file.fd());
                let Some(src) = job.ch.data_range(job.req.buf, len) else {
                    return Outcome::Now(-(libc::EFAULT as i64));
                };
                self.jobs[j].pending = 1;
                self.push_op(IoKind::Write, fd, off, src, len as usize, Tag::Write(j));
                return Outcome::Wait;
            }
            Err(_) => return Outcome::Defer,
        }
        let cache = Rc::clone(&self.cache);
        let ps = cache.page_size() as u64;
        let job = &self.jobs[j];
        let (off, len) = (job.req.offset, job.req.len);
        let Some(src) = job.ch.data_range(job.req.buf, len) else {
            return Outcome::Now(-(libc::EFAULT as i64));
        };
        // SAFETY: src..src+len is a bounds-checked part of the data region; the requester does
        // not touch its buffer while the request is pending.
        let data = unsafe { std::slice::from_raw_parts(src, len as usize) };
        let all_hit = job.pages.iter().all(|(_, _, h)| *h == Held::Hit);
        let write_back = self.shared.cfg.write_back && all_hit;
        if !write_back {
            // Write-through: one file write per cached page at a time, so the page and the
            // file end in the same order of writes (see `HostCache::begin_write`).
            let hit = |&&(_, _, h): &&(u64, PageIdx, Held)| h == Held::Hit;
            let mut hits = job.pages.iter().filter(hit);
            if let Some(k) = hits.position(|&(_, idx, _)| !cache.begin_write(idx)) {
                for &(_, idx, _) in job.pages.iter().filter(hit).take(k) {
                    cache.end_write(idx);
                }
                let pages = std::mem::take(&mut self.jobs[j].pages);
                self.release_held(pages);
                return Outcome::Defer;
            }
        }
        for &(p, idx, held) in &job.pages {
            if held != Held::Hit {
                continue;
            }
            let (lo, hi) = ((p * ps).max(off), ((p + 1) * ps).min(off + len));
            cache.write_into(
                idx,
                (lo - p * ps) as usize,
                &data[(lo - off) as usize..(hi - off) as usize],
                write_back,
            );
        }
        if write_back {
            let pages = std::mem::take(&mut self.jobs[j].pages);
            for (_, idx, _) in pages {
                cache.release(idx);
            }
            return Outcome::Now(len as i64);
        }
        let fd = job.file.fd();
        self.jobs[j].pending = 1;
        self.push_op(IoKind::Write, fd, off, src, len as usize, Tag::Write(j));
        Outcome::Wait
    }

    fn plan_fsync(&mut self, j: usize) -> Outcome {
        let file = self.jobs[j].file.clone();
        if self.cache.writebacks_in_flight(Some(file.id)) > 0 {
            // Another worker (or a flush) is writing some of the file's pages: the fsync must
            // cover them, so it waits until they are done.
            return Outcome::Defer;
        }
        let wbs = self.cache.dirty_pages_of(file.id);
        if wbs.is_empty() {
            self.jobs[j].pending = 1;
            self.push_op(
                IoKind::Fsync,
                file.fd(),
                0,
                std::ptr::null_mut(),
                0,
                Tag::Fsync(j),
            );
        } else {
            self.jobs[j].pending = wbs.len();
            for wb in wbs {
                let (fd, off, ptr, len) =
                    (wb.file.fd(), wb.offset, self.cache.page_ptr(wb.idx), wb.len);
                self.push_op(
                    IoKind::Write,
                    fd,
                    off,
                    ptr,
                    len,
                    Tag::Writeback(wb, Some(j)),
                );
            }
        }
        Outcome::Wait
    }

    fn plan_prefetch(&mut self, file: &Arc<FileEntry>, start: u64, stride: u64, count: u32) {
        let cache = Rc::clone(&self.cache);
        let ps = cache.page_size() as u64;
        // Readahead past the end of the file is wasted work.
        let end_page = file.size().map(|s| s.div_ceil(ps)).unwrap_or(0);
        for k in 0..count as u64 {
            let Some(p) = stride.checked_mul(k).and_then(|d| d.checked_add(start)) else {
                break;
            };
            if p >= end_page {
                break;
            }
            if self.load_of.contains_key(&(file.id, p)) {
                continue;
            }
            match cache.lookup(file, p, true) {
                Lookup::Hit(idx) => cache.release(idx),
                Lookup::Miss(idx) => {
                    self.start_load(file, p, idx);
                }
                Lookup::Busy => {}
                Lookup::Full => break,
            }
        }
    }

    fn background_writeback(&mut self) {
        if !self.shared.cfg.write_back {
            return;
        }
        for wb in self.cache.take_writebacks(32) {
            let (fd, off, ptr, len) =
                (wb.file.fd(), wb.offset, self.cache.page_ptr(wb.idx), wb.len);
            self.push_op(IoKind::Write, fd, off, ptr, len, Tag::Writeback(wb, None));
        }
        self.submit();
    }

    fn on_done(&mut self, d: IoDone) {
        let Some(tag) = self.tags.remove(d.token as usize) else {
            tracing::error!(token = d.token, "engine returned an unknown token");
            return;
        };
        match tag {
            Tag::Load(l) => {
                self.loads[l].result = Some(d.result);
                for j in std::mem::take(&mut self.loads[l].waiters) {
                    let job = &mut self.jobs[j];
                    job.pending -= 1;
                    if job.pending == 0 {
                        self.finish_read(j);
                    }
                }
                self.retire_load(l);
            }
            Tag::Part(j, n) => {
                if d.result > 0 {
                    self.shared.counters[self.id]
                        .bypass_bytes
                        .fetch_add(d.result as u64, Ordering::Relaxed);
                }
                let job = &mut self.jobs[j];
                job.parts[n].1 = Some(d.result);
                job.pending -= 1;
                if job.pending == 0 {
                    let mut total = 0i64;
                    let mut result = None;
                    for &(asked, r) in &job.parts {
                        let r = r.unwrap_or(-(libc::EIO as i64));
                        if r < 0 {
                            result = Some(if total > 0 { total } else { r });
                            break;
                        }
                        total += r;
                        if (r as usize) < asked {
                            break;
                        }
                    }
                    self.finish_job(j, result.unwrap_or(total));
                }
            }
            Tag::Write(j) => {
                let cache = Rc::clone(&self.cache);
                let job = &mut self.jobs[j];
                let pages = std::mem::take(&mut job.pages);
                let uncached = pages.is_empty();
                for (_, idx, held) in pages {
                    match held {
                        Held::Hit => {
                            cache.end_write(idx);
                            cache.release(idx);
                        }
                        Held::Reserved => cache.finish_load(idx, -(libc::ECANCELED as i64)),
                        Held::Load(_) => {}
                    }
                }
                if d.result < 0 || uncached {
                    cache.invalidate_file(job.file.id, None);
                } else if d.result > 0 {
                    // A write that extends the file leaves the cached end-of-file page short.
                    let end = job.req.offset + d.result as u64;
                    if job.file.size().map(|s| s <= end).unwrap_or(true) {
                        cache.invalidate_file(job.file.id, None);
                    }
                }
                self.finish_job(j, d.result);
            }
            Tag::Writeback(wb, job) => {
                let ok = d.result == wb.len as i64;
                self.cache.finish_writeback(wb.idx, ok);
                if let Some(j) = job {
                    let jb = &mut self.jobs[j];
                    if !ok && jb.error.is_none() {
                        jb.error = Some(if d.result < 0 {
                            d.result
                        } else {
                            -(libc::EIO as i64)
                        });
                    }
                    jb.pending -= 1;
                    if jb.pending == 0 {
                        let fd = jb.file.fd();
                        jb.pending = 1;
                        self.push_op(IoKind::Fsync, fd, 0, std::ptr::null_mut(), 0, Tag::Fsync(j));
                        self.submit();
                    }
                }
            }
            Tag::Fsync(j) => {
                let r = self.jobs[j].error.unwrap_or(d.result.min(0));
                self.finish_job(j, r);
            }
        }
    }

    /// Copies a cached read's bytes into the data region, completes it and drops its pins.
    /// A one-page hit for a requester that takes cache-page references is completed with a
    /// reference instead (`aux = page index + 1`, no copy): a host agent releases the pin
    /// itself; a device's pin is held in the channel's [`CacheRefs`](crate::cache_refs) until
    /// the record is reused or seen consumed, up to [`Worker::ref_cap`] at once (beyond it,
    /// and after a sweep found none to release, the bytes are copied).
    fn finish_read(&mut self, j: usize) {
        let cache = Rc::clone(&self.cache);
        let ps = cache.page_size() as u64;
        let job = &self.jobs[j];
        if let [(p, idx, Held::Hit)] = job.pages[..] {
            let mode = job.ch.refs.mode(job.req.completion);
            let by_ref = match mode {
                RefMode::Copy => false,
                RefMode::Requester => true,
                RefMode::Daemon => {
                    if job.ch.refs.held() >= self.ref_cap() {
                        self.sweep_refs();
                    }
                    self.jobs[j].ch.refs.held() < self.ref_cap()
                }
            };
            if by_ref {
                let job = &self.jobs[j];
                let valid = cache.valid_len(idx) as u64;
                let (off, len) = (job.req.offset, job.req.len);
                let n = (p * ps + valid).saturating_sub(off).min(len);
                let (rec, ticket) = (job.req.completion, job.req.ticket);
                let ch = job.ch.clone();
                let mut result = n as i64;
                if mode == RefMode::Daemon {
                    let (hold, stale) = ch.refs.hold(rec, idx);
                    if let Some(stale) = stale {
                        cache.release(stale);
                    }
                    match hold {
                        Hold::Held => {}
                        // Closing: answer as a copy would have (the pin is still ours).
                        Hold::Refused => return self.finish_read_copy(j),
                        // `close` released the pin already: the page may be gone.
                        Hold::Released => result = -(libc::ESHUTDOWN as i64),
                    }
                }
                if result >= 0 {
                    self.shared.counters[self.id]
                        .cache_refs
                        .fetch_add(1, Ordering::Relaxed);
                }
                // The pin taken by the lookup now belongs to the requester (or the channel's
                // table), so the job goes without releasing it. If the record refuses the
                // completion, nobody will consume the reference: take it back.
                self.jobs.remove(j);
                let aux = if result >= 0 { idx as u64 + 1 } else { 0 };
                if ch
                    .completions
                    .complete_aux(rec, ticket, result, aux)
                    .is_err()
                {
                    let mine = match mode {
                        RefMode::Daemon => ch.refs.take(rec) == Some(idx),
                        _ => true,
                    };
                    if mine {
                        cache.release(idx);
                    }
                }
                return;
            }
        }
        self.finish_read_copy(j)
    }

    /// Most cache-page references the daemon holds for one channel's device requesters: a
    /// quarter of the cache, so loads always find pages to evict.
    fn ref_cap(&self) -> u64 {
        (self.cache.pages() / 4) as u64
    }

    /// Releases the held references of device records seen consumed, on every channel (a scan
    /// of their records, at most once a millisecond per worker).
    fn sweep_refs(&mut self) {
        // Idle workers call this every round: no clock read unless something is held.
        if self.channels.iter().all(|ch| ch.refs.held() == 0)
            || self.last_sweep.elapsed() < Duration::from_millis(1)
        {
            return;
        }
        self.last_sweep = Instant::now();
        let cache = Rc::clone(&self.cache);
        for ch in &self.channels {
            if ch.refs.held() > 0 {
                ch.refs
                    .sweep(|i| ch.completions.consumed(i), |p| cache.release(p));
            }
        }
    }

    /// [`Worker::finish_read`] by copying the bytes into the data region.
    fn finish_read_copy(&mut self, j: usize) {
        let cache = Rc::clone(&self.cache);
        let ps = cache.page_size() as u64;
        let job = &self.jobs[j];
        let (off, len) = (job.req.offset, job.req.len);
        let dst = job.ch.data_range(job.req.buf, len);
        let mut total = 0u64;
        let mut result = None;
        for &(p, idx, held) in &job.pages {
            let valid = match held {
                Held::Load(l) => match self.loads[l].result {
                    Some(r) if r < 0 => {
                        result = Some(r);
                        break;
                    }
                    Some(r) => (r as u64).min(ps),
                    None => 0,
                },
                _ => cache.valid_len(idx) as u64,
            };
            let page_start = p * ps;
            let lo = page_start.max(off);
            let hi = (page_start + valid).min(off + len);
            if hi > lo {
                if let Some(dst) = dst {
                    // SAFETY: [lo, hi) ⊂ [off, off+len) so the destination slice is inside the
                    // bounds-checked data range; the source lies inside pinned page `idx`
                    // (lo - page_start + (hi - lo) ≤ valid ≤ page size).
                    unsafe {
                        std::ptr::copy_nonoverlapping(
                            cache.page_ptr(idx).add((lo - page_start) as usize),
                            dst.add((lo - off) as usize),
                            (hi - lo) as usize,
                        );
                    }
                }
                total += hi - lo;
            }
            if valid < ps {
                break; // end of file
            }
        }
        let r = match result {
            Some(e) if total == 0 => e,
            _ => total as i64,
        };
        let pages = std::mem::take(&mut self.jobs[j].pages);
        self.release_held(pages);
        self.finish_job(j, r);
    }

    /// Gives back the pages a job held: hits unpinned, reservations cancelled, loads unref'd.
    fn release_held(&mut self, pages: Vec<(u64, PageIdx, Held)>) {
        for (_, idx, held) in pages {
            match held {
                Held::Hit => self.cache.release(idx),
                Held::Reserved => self.cache.finish_load(idx, -(libc::ECANCELED as i64)),
                Held::Load(l) => self.unref_load(l),
            }
        }
    }
}

/// The descriptor for loading whole cache pages: `O_DIRECT` when allowed and pages are aligned.
fn load_fd(file: &FileEntry, page_size: u64) -> i32 {
    match file.direct_fd() {
        Some(d) if (page_size as usize).is_multiple_of(file.dio_align) => d,
        _ => file.fd(),
    }
}
