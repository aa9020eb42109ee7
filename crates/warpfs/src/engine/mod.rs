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
use std::sync::{Arc, OnceLock};

#[cfg(feature = "fault-injection")]
pub mod fault;
#[cfg(target_os = "linux")]
pub mod mapped;
pub mod threads;
#[cfg(target_os = "linux")]
pub mod uring;

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

    /// Reads `len` bytes at `offset` of `fd` into `buf` at once if the OS page cache holds
    /// them all (`preadv2` with `RWF_NOWAIT`: one system call, no queueing, never waits for a
    /// disk); `false` (nothing promised about `buf`) when it does not, or on any error, and the
    /// caller then submits the read. For small reads of warm buffered files this skips the
    /// engine's submission and completion bookkeeping. Engines that must see every read (the
    /// fault-injecting test engine) return `false`.
    ///
    /// # Safety
    /// `buf..buf+len` must be valid for writes and not accessed by anyone else during the call.
    unsafe fn read_cached_now(&mut self, fd: i32, offset: u64, buf: *mut u8, len: usize) -> bool {
        // SAFETY: forwarded from the caller.
        len > 0 && matches!(unsafe { read_nowait(fd, offset, buf, len) }, Ok(n) if n == len)
    }

    /// Like [`IoEngine::read_cached_now`], from a shared mapping of the file
    /// ([`mapped::MappedFile::copy`]: a copy, no system call, for warm files). Engines that must
    /// see every read return `false`.
    ///
    /// # Safety
    /// As [`IoEngine::read_cached_now`].
    #[cfg(target_os = "linux")]
    unsafe fn read_mapped_now(
        &mut self,
        map: &mapped::MappedFile,
        offset: u64,
        buf: *mut u8,
        len: usize,
    ) -> bool {
        // SAFETY: forwarded from the caller.
        unsafe { map.copy(offset, buf, len) }
    }
}

/// `preadv2(fd, [buf, len), offset, RWF_NOWAIT)`: the bytes read (short at end of file), or
/// the error (`EAGAIN` when the page cache does not hold them all). One system call, made
/// directly: glibc's `preadv2` toggles thread cancellation around every call, which `perf`
/// showed at a tenth of the call's cost on the daemon's hot path.
///
/// # Safety
/// `buf..buf+len` must be valid for writes and not accessed by anyone else during the call.
pub(crate) unsafe fn read_nowait(
    fd: RawFd,
    offset: u64,
    buf: *mut u8,
    len: usize,
) -> std::io::Result<usize> {
    let invalid = || std::io::Error::from_raw_os_error(libc::EINVAL);
    if len > isize::MAX as usize {
        return Err(invalid());
    }
    let off = libc::off_t::try_from(offset).map_err(|_| invalid())?;
    let iov = libc::iovec {
        iov_base: buf.cast(),
        iov_len: len,
    };
    // SAFETY: the caller guarantees `buf..buf+len` is writable and ours for the call; `iov`
    // lives across it. (x86-64 and aarch64 pass the offset whole, high half 0.)
    #[cfg(target_pointer_width = "64")]
    let r = unsafe {
        libc::syscall(
            libc::SYS_preadv2,
            fd,
            &iov as *const libc::iovec,
            1,
            off,
            0,
            libc::RWF_NOWAIT,
        )
    };
    // SAFETY: as above.
    #[cfg(not(target_pointer_width = "64"))]
    let r = unsafe { libc::preadv2(fd, &iov, 1, off, libc::RWF_NOWAIT) } as i64;
    usize::try_from(r).map_err(|_| std::io::Error::last_os_error())
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
    /// The daemon reads small ranges around its cache at once when the OS page cache holds
    /// them ([`IoEngine::read_cached_now`]), before queueing them on the engine. Off: every
    /// read goes through the engine's queue (tests of the engine's own paths).
    pub cached_reads_now: bool,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self {
            choice: EngineChoice::Auto,
            queue_depth: 128,
            threads: 4,
            cached_reads_now: true,
        }
    }
}

/// Builds engines in place of [`create`] (the daemon's workers and its control engine call it
/// with their [`EngineConfig`]): lets tests wrap an engine, e.g. in a fault injector.
#[derive(Clone)]
pub struct EngineFactory(pub Arc<EngineFn>);

/// The function an [`EngineFactory`] wraps.
pub type EngineFn = dyn Fn(&EngineConfig) -> Box<dyn IoEngine> + Send + Sync;

impl EngineFactory {
    /// Wraps `f`.
    pub fn new(f: impl Fn(&EngineConfig) -> Box<dyn IoEngine> + Send + Sync + 'static) -> Self {
        Self(Arc::new(f))
    }
    /// Builds one engine for `cfg`.
    pub fn create(&self, cfg: &EngineConfig) -> Box<dyn IoEngine> {
        (self.0)(cfg)
    }
}

impl std::fmt::Debug for EngineFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EngineFactory")
    }
}

/// Environment variable that forces the engine for [`EngineChoice::Auto`]: `uring` or `threads`.
pub const ENGINE_ENV: &str = "WARPFS_IO_ENGINE";

/// The engine that will actually run for `choice` here, decided once per process for `Auto`
/// (environment, then an io_uring probe). Logs the decision at info level, once.
///
/// Cost: the first call that needs io_uring sets up (and drops) an 8-entry ring; later calls
/// read a cached answer.
pub fn probe(choice: EngineChoice) -> EngineChoice {
    match choice {
        EngineChoice::Threads => EngineChoice::Threads,
        EngineChoice::Uring => {
            if uring_works() {
                EngineChoice::Uring
            } else {
                static WARNED: std::sync::Once = std::sync::Once::new();
                WARNED.call_once(|| {
                    tracing::warn!(
                        "io_uring was requested but cannot be set up here ({}); running the thread-pool engine instead",
                        uring_error_words()
                    )
                });
                EngineChoice::Threads
            }
        }
        EngineChoice::Auto => {
            static AUTO: OnceLock<EngineChoice> = OnceLock::new();
            *AUTO.get_or_init(decide_auto)
        }
    }
}

/// Creates an engine per `cfg` (after [`probe`]); never fails: falls back to threads.
///
/// Cost: an io_uring setup (two mmaps) or spawning `cfg.threads` threads.
pub fn create(cfg: &EngineConfig) -> Box<dyn IoEngine> {
    match probe(cfg.choice) {
        #[cfg(target_os = "linux")]
        EngineChoice::Uring => match uring::UringEngine::new(cfg) {
            Ok(e) => Box::new(e),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring setup failed; running the thread-pool engine instead");
                Box::new(threads::ThreadsEngine::new(cfg))
            }
        },
        _ => Box::new(threads::ThreadsEngine::new(cfg)),
    }
}

/// What a `WARPFS_IO_ENGINE` value asks for: `Ok(None)` for empty (choose automatically),
/// `Err(())` for anything but `uring`/`threads` (any case, surrounding blanks ignored).
fn parse_env_choice(v: &str) -> Result<Option<EngineChoice>, ()> {
    match v.trim().to_ascii_lowercase().as_str() {
        "" => Ok(None),
        "uring" | "io_uring" => Ok(Some(EngineChoice::Uring)),
        "threads" => Ok(Some(EngineChoice::Threads)),
        _ => Err(()),
    }
}

fn decide_auto() -> EngineChoice {
    if let Ok(v) = std::env::var(ENGINE_ENV) {
        match parse_env_choice(&v) {
            Ok(Some(forced)) => {
                let got = probe(forced);
                if got == forced {
                    tracing::info!(engine = ?got, "I/O engine forced by {ENGINE_ENV}");
                }
                return got;
            }
            Ok(None) => {}
            Err(()) => tracing::warn!(
                value = %v,
                "{ENGINE_ENV} must be `uring` or `threads`; ignoring it and choosing automatically"
            ),
        }
    }
    if uring_works() {
        tracing::info!(engine = "uring", "I/O engine: io_uring is available");
        EngineChoice::Uring
    } else {
        tracing::warn!(
            engine = "threads",
            "I/O engine: io_uring unavailable ({}); using the thread pool (set {ENGINE_ENV}=threads to silence this)",
            uring_error_words()
        );
        EngineChoice::Threads
    }
}

/// Result of trying to set up a small io_uring, once per process (`None`: it works).
fn uring_probe() -> &'static Option<std::io::ErrorKind> {
    static PROBE: OnceLock<Option<std::io::ErrorKind>> = OnceLock::new();
    PROBE.get_or_init(|| {
        #[cfg(feature = "fault-injection")]
        if let Some(kind) = fault::forced_uring_setup_failure() {
            return Some(kind);
        }
        #[cfg(target_os = "linux")]
        {
            match io_uring::IoUring::new(8) {
                Ok(_) => None,
                Err(e) => {
                    // EPERM: kernel.io_uring_disabled or seccomp; ENOSYS: kernel too old or
                    // filtered; EINVAL: unsupported setup. Any error means "do not use it".
                    tracing::debug!(error = %e, "io_uring probe failed");
                    Some(e.kind())
                }
            }
        }
        #[cfg(not(target_os = "linux"))]
        {
            Some(std::io::ErrorKind::Unsupported)
        }
    })
}

fn uring_works() -> bool {
    uring_probe().is_none()
}

fn uring_error_words() -> String {
    match uring_probe() {
        None => "no error".into(),
        Some(k) => format!(
            "{k}: check the sysctl kernel.io_uring_disabled and the container's seccomp profile"
        ),
    }
}

/// Retries granted to EINTR/EAGAIN results of one op before the error is reported.
pub(crate) const MAX_RETRIES: u32 = 1000;

/// Whether a negative errno result is transient and the op should be retried.
pub(crate) fn is_transient(errno: i32) -> bool {
    errno == libc::EINTR || errno == libc::EAGAIN
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forced_choices_are_honoured() {
        assert_eq!(probe(EngineChoice::Threads), EngineChoice::Threads);
        let u = probe(EngineChoice::Uring);
        assert_eq!(u == EngineChoice::Uring, uring_works());
        assert_ne!(probe(EngineChoice::Auto), EngineChoice::Auto);
    }

    #[test]
    fn env_values_parse() {
        assert_eq!(parse_env_choice(" URING "), Ok(Some(EngineChoice::Uring)));
        assert_eq!(parse_env_choice("threads"), Ok(Some(EngineChoice::Threads)));
        assert_eq!(parse_env_choice(""), Ok(None));
        assert_eq!(parse_env_choice("fast"), Err(()));
    }

    #[test]
    fn create_names_the_engine_it_runs() {
        let e = create(&EngineConfig {
            choice: EngineChoice::Threads,
            ..Default::default()
        });
        assert_eq!(e.name(), "threads");
        let e = create(&EngineConfig {
            choice: EngineChoice::Uring,
            ..Default::default()
        });
        assert_eq!(e.name(), if uring_works() { "uring" } else { "threads" });
        assert_eq!(e.in_flight(), 0);
    }
}
