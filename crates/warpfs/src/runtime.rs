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

pub use crate::backend::host::{Agent, Ticket};
use crate::cache::{CacheConfig, CacheStats};
use crate::engine::EngineConfig;
use crate::error::Result;
use crate::files::OpenOptions;
use std::path::Path;

/// Settings of a [`Runtime`]. `Default` sizes everything to the machine.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Daemon worker threads (default: half the cores, at least 1, at most 8).
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
}

/// Everything a runtime counts.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    /// Host cache tier.
    pub cache: CacheStats,
    /// Daemon.
    pub daemon: DaemonStats,
}

/// The warpfs runtime.
pub struct Runtime {
    _todo: (),
}

impl Runtime {
    /// Starts the daemon and the host backend. Costs the cache arena allocation and thread spawns.
    pub fn new(cfg: RuntimeConfig) -> Result<Self> {
        todo!("{cfg:?}")
    }
    /// Registers `path` with the granted `options`.
    pub fn open(&self, path: impl AsRef<Path>, options: OpenOptions) -> Result<FileHandle> {
        todo!("{:?} {options:?}", path.as_ref())
    }
    /// Writes back the file's dirty pages and unregisters it.
    pub fn close(&self, file: &FileHandle) -> Result<()> {
        todo!("{file:?}")
    }
    /// A new host agent (fails when `max_agents` exist).
    pub fn agent(&self) -> Result<Agent> {
        todo!()
    }
    /// File size in bytes.
    pub fn size(&self, file: &FileHandle) -> Result<u64> {
        todo!("{file:?}")
    }
    /// Bulk read of `dst.len()` bytes at `offset` into `dst`; returns bytes read (short at EOF).
    pub fn read_bulk(&self, file: &FileHandle, offset: u64, dst: &mut [u8]) -> Result<usize> {
        todo!("{file:?} {offset} {}", dst.len())
    }
    /// Bulk write of `src` at `offset`; returns bytes written.
    pub fn write_bulk(&self, file: &FileHandle, offset: u64, src: &[u8]) -> Result<usize> {
        todo!("{file:?} {offset} {}", src.len())
    }
    /// Writes back every dirty page and `fdatasync`s the files that had any.
    pub fn flush(&self) -> Result<()> {
        todo!()
    }
    /// Counters.
    pub fn stats(&self) -> Stats {
        todo!()
    }
    /// Name of the I/O engine running ("uring" or "threads").
    pub fn engine_name(&self) -> &'static str {
        todo!()
    }
    /// The configuration in force.
    pub fn config(&self) -> &RuntimeConfig {
        todo!()
    }
}
