//! I/O engines: how bytes move between files and memory. They know nothing of GPUs.
//!
//! Two engines sit behind [`IoEngine`]: [`uring`] (Linux io_uring, batched submission, fixed
//! buffers) and [`threads`] (a portable pool doing `pread`/`pwrite`). [`probe`] picks one once
//! per process: `WARPFS_IO_ENGINE=uring|threads` forces a choice; otherwise io_uring is tried
//! and, on EPERM/ENOSYS/EINVAL (disabled by sysctl, filtered by seccomp, too old), the thread
//! pool runs instead and the choice is logged.
//!
//! Contract shared by both engines (one test suite runs against each):
//! - an op transfers all `len` bytes unless end of file is reached (reads return the short
//!   count; 0 at or past EOF) or an error occurs (the result is then `-errno`);
//! - EINTR, EAGAIN and short transfers are retried inside the engine;
//! - `Fsync` is `fdatasync(fd)`; its result is 0 or `-errno`;
//! - every submitted op is completed exactly once through [`IoEngine::reap`].

use std::os::fd::RawFd;

#[cfg(target_os = "linux")]
pub mod uring;
pub mod threads;

/// What an [`IoOp`] does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IoKind {
    /// `pread` into `buf`.
    Read,
    /// `pwrite` from `buf`.
    Write,
    /// `fdatasync`.
    Fsync,
}

/// One file operation. `token` is the caller's tag, returned in the [`IoDone`].
#[derive(Debug, Clone, Copy)]
pub struct IoOp {
    /// Read, write or fsync.
    pub kind: IoKind,
    /// Descriptor (buffered or `O_DIRECT`; for `O_DIRECT` the caller aligns offset, len, buf).
    pub fd: RawFd,
    /// File offset.
    pub offset: u64,
    /// Memory to read into or write from (unused for fsync).
    pub buf: *mut u8,
    /// Bytes.
    pub len: usize,
    /// Caller's tag.
    pub token: u64,
}

// SAFETY: an IoOp is a description; whoever submits it guarantees the buffer's validity
// (see `IoEngine::submit`).
unsafe impl Send for IoOp {}

/// Outcome of one [`IoOp`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IoDone {
    /// The op's token.
    pub token: u64,
    /// Bytes transferred (reads may be short at EOF), 0 for fsync, or `-errno`.
    pub result: i64,
}

/// An I/O engine: accepts batches of operations and reports their completions.
pub trait IoEngine: Send {
    /// Short name for logs and `--json` ("uring", "threads").
    fn name(&self) -> &'static str;

    /// Queues `ops`; they may start at once. Never drops an op: if the engine's queue is full it
    /// keeps the rest in a backlog and starts them as earlier ones complete.
    ///
    /// # Safety
    /// For every op, `buf..buf+len` must stay valid (and, for reads, not be accessed by anyone
    /// else) until its completion is returned by `reap`; `fd` must stay open until then.
    unsafe fn submit(&mut self, ops: &[IoOp]);

    /// Appends finished ops to `out`. With `wait`, blocks until at least one op finishes if any
    /// is in flight; returns at once when none is.
    fn reap(&mut self, out: &mut Vec<IoDone>, wait: bool);

    /// Ops submitted and not yet reaped.
    fn in_flight(&self) -> usize;

    /// Registers memory ranges for fixed-buffer I/O; ops whose buffer lies inside one use it.
    /// Engines without the notion accept and ignore the call.
    ///
    /// # Safety
    /// The ranges must stay valid until the engine is dropped.
    unsafe fn register_buffers(&mut self, ranges: &[(*mut u8, usize)]) -> std::io::Result<()> {
        let _ = ranges;
        Ok(())
    }
}

/// Which engine to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineChoice {
    /// io_uring if it works here, else threads (`WARPFS_IO_ENGINE` overrides).
    #[default]
    Auto,
    /// io_uring (falls back with a warning if unavailable).
    Uring,
    /// Thread pool.
    Threads,
}

/// Settings for creating an engine.
#[derive(Debug, Clone, Copy)]
pub struct EngineConfig {
    /// Which engine.
    pub choice: EngineChoice,
    /// Submission queue depth (io_uring) / max ops in flight (threads).
    pub queue_depth: u32,
    /// Pool threads for the thread engine.
    pub threads: usize,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self { choice: EngineChoice::Auto, queue_depth: 128, threads: 4 }
    }
}

/// The engine that will actually run for `choice` here, decided once per process for `Auto`
/// (environment, then an io_uring probe). Logs the decision at info level.
pub fn probe(choice: EngineChoice) -> EngineChoice {
    todo!("engine helper: env override, cached io_uring probe, fallback + log ({choice:?})")
}

/// Creates an engine per `cfg` (after [`probe`]); never fails: falls back to threads.
pub fn create(cfg: &EngineConfig) -> Box<dyn IoEngine> {
    todo!("engine helper ({cfg:?})")
}
