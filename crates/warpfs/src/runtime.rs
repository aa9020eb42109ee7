//! The public entry point: a [`Runtime`] owning the file table, daemon, cache and host backend.
//!
//! ```no_run
//! use warpfs::{OpenOptions, Runtime, RuntimeConfig};
//! let rt = Runtime::new(RuntimeConfig::default())?;
//! let f = rt.open("data.bin", OpenOptions::read_only())?;
//! let mut agent = rt.agent()?;                 // a requester, like one GPU warp
//! let mut buf = vec![0u8; 4096];
//! let n = agent.read(&f, 8192, &mut buf)?;     // through the ring, the daemon and the cache
//! let mut all = vec![0u8; rt.size(&f)? as usize];
//! rt.read_bulk(&f, 0, &mut all)?;              // bulk path: pipelined, no ring, no cache
//! # Ok::<(), warpfs::Error>(())
//! ```

use crate::backend::host::HostLanes;
pub use crate::backend::host::{Agent, Ticket};
use crate::bulk::{BulkConfig, BulkIo};
use crate::cache::{CacheConfig, CacheStats, HostCache};
use crate::channel::{Channel, ChannelConfig};
use crate::daemon::{Daemon, DaemonConfig};
use crate::engine::{EngineConfig, EngineFactory};
use crate::error::{Error, Result};
use crate::files::{FileEntry, FileTable, OpenOptions};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Settings of a [`Runtime`]. `Default` sizes everything to the machine.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Daemon worker threads (default: half the cores, at least 1, at most 8). Half, so
    /// that requesters (host agents, or the CPU threads feeding a GPU) keep the other half:
    /// on 2 cores, 2 workers beside 1 or 2 agent threads measured no better than 1 + 1 in
    /// `warpfs bench --phases rand-read` side by side, and oversubscribing a core only wins
    /// CPU share from other programs, not speed.
    pub workers: usize,
    /// Host cache tier geometry.
    pub cache: CacheConfig,
    /// I/O engine for the daemon and the bulk path.
    pub engine: EngineConfig,
    /// Readahead window in pages (0 disables readahead).
    pub readahead_pages: u32,
    /// Write-back (dirty pages written on eviction/fsync/flush) instead of write-through.
    pub write_back: bool,
    /// Slots per request ring.
    pub ring_capacity: usize,
    /// Host agents that may exist at once.
    pub max_agents: usize,
    /// Requests each host agent may have in flight.
    pub agent_queue_depth: usize,
    /// Bytes of data buffer per in-flight request (larger requests are split).
    pub request_buffer: usize,
    /// How long a host wait may take before it reports [`crate::Error::Timeout`].
    pub wait_timeout: std::time::Duration,
    /// Builds the daemon's engines instead of [`crate::engine::create`] (tests: fault
    /// injection). The bulk path keeps its own engines.
    pub engine_factory: Option<EngineFactory>,
}

/// A registered file, as requests name it (a capability). Cheap to clone.
#[derive(Debug, Clone)]
pub struct FileHandle {
    pub(crate) handle: u32,
    pub(crate) id: u64,
}

impl FileHandle {
    /// The raw handle a GPU kernel passes in requests.
    pub fn raw(&self) -> u32 {
        self.handle
    }
    /// The process-unique id of the registration (cache keys use it).
    pub fn id(&self) -> u64 {
        self.id
    }
}

/// Daemon counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DaemonStats {
    /// Requests taken from rings.
    pub requests: u64,
    /// Requests answered with an error.
    pub errors: u64,
    /// Slots with garbage sequence words.
    pub corrupt_slots: u64,
    /// Worker loop iterations that found work.
    pub batches: u64,
    /// File I/Os submitted to the engine.
    pub ios: u64,
    /// Prefetch requests served.
    pub prefetches: u64,
    /// Bytes read from files around the host cache tier (reads too large for it, reads of
    /// direct-I/O files, small reads the OS page cache served at once). With the tier's
    /// `bytes_loaded`, every byte the daemon read from files.
    pub bypass_bytes_read: u64,
    /// Reads answered with a reference to a host cache page instead of a copy of its bytes
    /// (host agents, and GPUs with the tier mapped: they copy from the page themselves).
    pub cache_refs: u64,
}

/// Everything a runtime counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Host cache tier.
    pub cache: CacheStats,
    /// Daemon.
    pub daemon: DaemonStats,
}

/// The warpfs runtime: file table, daemon, host cache tier, host backend and bulk path.
pub struct Runtime {
    cfg: RuntimeConfig,
    files: Arc<FileTable>,
    cache: Arc<HostCache>,
    daemon: Daemon,
    lanes: Arc<HostLanes>,
    bulk: Mutex<Vec<BulkIo>>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

impl RuntimeConfig {
    /// Defaults for a runtime whose requesters are GPUs (or other processes): every core a
    /// daemon worker (at most 16), since GPU threads need no CPU (the half-the-cores default
    /// served fewer GPU-initiated reads: `--workers N` runs in bench/RESULTS.md, 2026-11-26).
    pub fn serving_gpus() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            workers: cores.clamp(1, 16),
            ..Self::default()
        }
    }
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            workers: (cores / 2).clamp(1, 8),
            cache: CacheConfig {
                page_size: 4096,
                capacity: default_cache_bytes(),
            },
            engine: EngineConfig::default(),
            readahead_pages: 32,
            write_back: false,
            ring_capacity: 4096,
            max_agents: 64,
            agent_queue_depth: 32,
            request_buffer: 64 * 1024,
            wait_timeout: Duration::from_secs(60),
            engine_factory: None,
        }
    }
}

/// An eighth of physical memory, between 64 MiB and 512 MiB. (The io_uring engine registers
/// the arena as fixed buffers, which faults in and pins all of it at start-up.)
fn default_cache_bytes() -> usize {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: sysconf has no preconditions.
        let (pages, size) = unsafe {
            (
                libc::sysconf(libc::_SC_PHYS_PAGES),
                libc::sysconf(libc::_SC_PAGESIZE),
            )
        };
        if pages > 0 && size > 0 {
            return ((pages as usize).saturating_mul(size as usize) / 8).clamp(64 << 20, 512 << 20);
        }
    }
    256 << 20
}

impl Runtime {
    /// Starts the daemon and the host backend. Costs the cache arena allocation (touched
    /// lazily) and `workers` thread spawns.
    pub fn new(cfg: RuntimeConfig) -> Result<Self> {
        if cfg.max_agents == 0 || cfg.agent_queue_depth == 0 || cfg.request_buffer == 0 {
            return Err(Error::Config(
                "max_agents, agent_queue_depth and request_buffer must be positive".into(),
            ));
        }
        let request_buffer = cfg.request_buffer.div_ceil(4096) * 4096;
        let records = cfg
            .max_agents
            .checked_mul(cfg.agent_queue_depth)
            .filter(|&n| n <= u32::MAX as usize)
            .ok_or_else(|| Error::Config("max_agents × agent_queue_depth is too large".into()))?;
        let data_bytes = records
            .checked_mul(request_buffer)
            .ok_or_else(|| Error::Config("request buffers too large".into()))?;
        let files = Arc::new(FileTable::new());
        let cache = Arc::new(HostCache::new(cfg.cache)?);
        let daemon = Daemon::start(
            DaemonConfig {
                workers: cfg.workers,
                write_back: cfg.write_back,
                readahead_pages: cfg.readahead_pages,
                engine: cfg.engine,
                engine_factory: cfg.engine_factory.clone(),
                ..DaemonConfig::default()
            },
            files.clone(),
            cache.clone(),
        )?;
        // A ring at least as large as all records: host pushes never find it full.
        let ring_capacity = cfg.ring_capacity.max(records).next_power_of_two();
        let channel = Arc::new(Channel::new_host(ChannelConfig {
            ring_capacity,
            completions: records,
            data_bytes,
        })?);
        daemon.attach(channel.clone());
        let lanes = Arc::new(HostLanes::new(
            channel,
            cache.clone(),
            daemon.doorbell(),
            cfg.max_agents,
            cfg.agent_queue_depth,
            request_buffer,
            cfg.wait_timeout,
        ));
        Ok(Self {
            cfg,
            files,
            cache,
            daemon,
            lanes,
            // One bulk pipeline ready at start: the first bulk call pays no thread spawns.
            bulk: Mutex::new(vec![BulkIo::new(BulkConfig::default())?]),
        })
    }

    /// The registered file behind raw `handle`, if any (for backends that map files).
    #[cfg(feature = "cuda")]
    pub(crate) fn file_entry(&self, handle: u32) -> Option<Arc<FileEntry>> {
        self.files.get(handle)
    }

    fn entry(&self, file: &FileHandle) -> Result<Arc<FileEntry>> {
        self.files
            .get(file.handle)
            .ok_or(Error::BadHandle(file.handle))
    }

    /// Registers `path` with the granted `options`. Costs one or two `open` calls.
    pub fn open(&self, path: impl AsRef<Path>, options: OpenOptions) -> Result<FileHandle> {
        let e = self.files.register(path, options)?;
        Ok(FileHandle {
            handle: e.handle,
            id: e.id,
        })
    }

    /// Writes back the file's dirty pages, drops its cached pages and unregisters it.
    /// Requests already in flight finish; later ones get `EBADF`.
    pub fn close(&self, file: &FileHandle) -> Result<()> {
        let e = self.files.unregister(file.handle)?;
        let flushed = self.daemon.flush(Some(&e));
        self.cache.invalidate_file(e.id, None);
        flushed
    }

    /// A new host agent (fails when `max_agents` exist).
    pub fn agent(&self) -> Result<Agent> {
        self.lanes.agent()
    }

    /// Loads `[offset, offset + len)` of `file` into the host cache tier (pinned pages; the
    /// tier keeps what fits, evicting as usual), reading through the daemon with `threads`
    /// host agents at once; `progress` is told the bytes read as they come. Returns bytes
    /// read (short at end of file). Costs one read of the range (the OS page cache's speed
    /// when warm). Use it to put a file that GPU kernels will read at random into the tier
    /// first (a GPU miss that hits the tier is served without file I/O).
    pub fn load_into_cache(
        &self,
        file: &FileHandle,
        offset: u64,
        len: u64,
        threads: usize,
        progress: &(dyn Fn(u64) + Sync),
    ) -> Result<u64> {
        let end = offset.saturating_add(len).min(self.size(file)?);
        if end <= offset {
            return Ok(0);
        }
        const SLICE: u64 = 4 << 20;
        let next = std::sync::atomic::AtomicU64::new(offset);
        let total = std::sync::atomic::AtomicU64::new(0);
        std::thread::scope(|s| {
            let workers: Vec<_> = (0..threads.max(1))
                .map(|_| {
                    s.spawn(|| -> Result<()> {
                        let mut agent = self.agent()?;
                        let mut buf = vec![0u8; SLICE as usize];
                        loop {
                            let at = next.fetch_add(SLICE, std::sync::atomic::Ordering::Relaxed);
                            if at >= end {
                                return Ok(());
                            }
                            let n = (end - at).min(SLICE) as usize;
                            let got = agent.read(file, at, &mut buf[..n])?;
                            total.fetch_add(got as u64, std::sync::atomic::Ordering::Relaxed);
                            progress(got as u64);
                            if got < n {
                                return Ok(());
                            }
                        }
                    })
                })
                .collect();
            workers
                .into_iter()
                .try_for_each(|w| w.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        })?;
        Ok(total.into_inner())
    }

    /// File size in bytes (one `fstat`).
    pub fn size(&self, file: &FileHandle) -> Result<u64> {
        Ok(self.entry(file)?.size()?)
    }

    fn with_bulk<T>(&self, f: impl FnOnce(&mut BulkIo) -> Result<T>) -> Result<T> {
        let pooled = self.bulk.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut io = match pooled {
            Some(io) => io,
            None => BulkIo::new(BulkConfig::default())?,
        };
        let r = f(&mut io);
        self.bulk.lock().unwrap_or_else(|p| p.into_inner()).push(io);
        r
    }

    /// Bulk read of `dst.len()` bytes at `offset` into `dst`; returns bytes read (short at EOF).
    /// Pipelined over the bulk engine; dirty pages of a write-back cache are written back first
    /// so the file holds the latest bytes.
    pub fn read_bulk(&self, file: &FileHandle, offset: u64, dst: &mut [u8]) -> Result<usize> {
        let e = self.entry(file)?;
        if !e.readable() {
            return Err(Error::WriteOnly);
        }
        if self.cfg.write_back {
            self.daemon.flush(Some(&e))?;
        }
        self.with_bulk(|io| io.read_into(&e, offset, dst))
    }

    /// Bulk write of `src` at `offset`; returns bytes written. Cached pages of the file are
    /// dropped afterwards so later cached reads see the new bytes.
    pub fn write_bulk(&self, file: &FileHandle, offset: u64, src: &[u8]) -> Result<usize> {
        let e = self.entry(file)?;
        if !e.writable() {
            return Err(Error::ReadOnly);
        }
        if self.cfg.write_back {
            self.daemon.flush(Some(&e))?;
        }
        let r = self.with_bulk(|io| io.write_from(&e, offset, src));
        self.cache.invalidate_file(e.id, None);
        r
    }

    /// Writes back every dirty page and `fdatasync`s the files that had any.
    pub fn flush(&self) -> Result<()> {
        self.daemon.flush(None)
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        Stats {
            cache: self.cache.stats(),
            daemon: self.daemon.stats(),
        }
    }

    /// Name of the I/O engine the daemon runs ("uring" or "threads").
    pub fn engine_name(&self) -> &'static str {
        self.daemon.engine_name()
    }

    /// The configuration in force.
    pub fn config(&self) -> &RuntimeConfig {
        &self.cfg
    }

    /// The host channel (for tests and tools that write raw requests).
    pub fn host_channel(&self) -> &Arc<Channel> {
        &self.lanes.channel
    }

    /// Starts serving `channel` (e.g. one in GPU-mapped memory, see
    /// `backend::cuda::gpu_io`) with this runtime's daemon. The daemon polls it: its workers
    /// keep polling for 200 µs after their last request, then sleep, and requesters (which
    /// cannot ring the doorbell) wait at most `DaemonConfig::idle_poll` for an idle daemon.
    pub fn attach_channel(&self, channel: Arc<Channel>) {
        self.daemon.attach_polled(channel);
    }

    /// Stops serving `channel`; requests still in its rings complete with `ESHUTDOWN`.
    pub fn detach_channel(&self, channel: &Arc<Channel>) {
        self.daemon.detach(channel);
    }

    /// The host cache tier (a device backend maps its arena so GPUs read tier pages directly).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    pub(crate) fn host_cache(&self) -> &Arc<HostCache> {
        &self.cache
    }

    /// Wakes the daemon after writing raw requests into [`Runtime::host_channel`].
    pub fn ring_doorbell(&self) {
        self.lanes.doorbell.ring();
    }
}
