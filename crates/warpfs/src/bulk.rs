//! Bulk path on the host: one large file range into (or out of) a memory buffer, split into
//! chunks kept in flight on an I/O engine (no ring, no cache).
//!
//! A [`BulkIo`] owns an engine and, when needed, aligned bounce buffers (allocated once and
//! reused). A call splits the range at `chunk_bytes` boundaries of the file offset, keeps up to
//! `max_in_flight` chunks in flight, and returns when all have landed.
//!
//! **Page cache or `O_DIRECT`, per chunk.** Warm data must come from the page cache (memory
//! speed); `O_DIRECT` on cached data would go to the disk instead. A chunk is read direct only
//! when the file was registered with `direct` and, in [`DirectMode::Auto`], its pages are
//! mostly not cached (`cachestat(2)`, or `preadv2(RWF_NOWAIT)` probes on older kernels). A direct
//! chunk's aligned middle goes direct (straight into the destination when it is aligned, else
//! through a bounce buffer and a copy); unaligned edges go buffered ([`crate::span::split_direct`]).
//! Writes go direct whenever the file allows it (like KvikIO: a bulk write should not evict
//! the page cache), edges buffered.
//!
//! **Why the thread-pool engine by default.** io_uring serves a buffered read of cached data
//! inline, in the thread that calls `io_uring_enter`: a batch of warm chunks is copied by one
//! core, so io_uring cannot beat a plain `read()` loop on warm data and cannot scale with cores.
//! A pool of threads doing `pread` spreads the page-cache copies over cores. (When io_uring
//! is chosen anyway, the bulk path sets `IOSQE_ASYNC` on large chunks so the kernel's io-wq
//! threads do the copies in parallel.) Measured numbers are in [`BulkConfig::default`].

use crate::engine::{self, EngineChoice, EngineConfig, IoDone, IoEngine, IoKind, IoOp};
use crate::error::{Error, Result};
use crate::files::FileEntry;
use crate::span::split_direct;
use std::alloc::Layout;
use std::os::fd::RawFd;

/// When the bulk path may use `O_DIRECT` (only ever for files registered with `direct`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectMode {
    /// Reads: direct for chunks not in the page cache (probed with `RWF_NOWAIT`), buffered for
    /// cached ones. Writes: direct.
    #[default]
    Auto,
    /// Always through the page cache.
    Never,
    /// Direct for every aligned middle, cached or not (benchmarks of the disk).
    Always,
}

/// Settings of a [`BulkIo`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BulkConfig {
    /// Engine to run the chunks on (see the module docs for why threads is the default).
    pub engine: EngineChoice,
    /// Bytes per chunk (a multiple of 4096, at least 4096).
    pub chunk_bytes: usize,
    /// Chunks in flight at once (at least 1). Also the number of bounce buffers.
    pub max_in_flight: usize,
    /// Pool threads of the thread engine.
    pub threads: usize,
    /// When `O_DIRECT` may be used.
    pub direct: DirectMode,
}

impl Default for BulkConfig {
    /// Thread-pool engine, one thread per core (at most 16), 4 chunks in flight per thread (at
    /// most 32), 4 MiB chunks, [`DirectMode::Auto`]. Bounce buffers, allocated only for direct
    /// transfers into memory that is not 4096-aligned, take `max_in_flight × chunk_bytes`
    /// (32 MiB on 2 cores, 128 MiB from 8 cores up).
    ///
    /// Chosen by measurement (2-core VM, Linux 6.18, warm 2 GiB file read into one pre-faulted
    /// buffer, rounds interleaved, median GB/s; scratch bench `bulk_bench`):
    ///
    /// | what | quiet machine | machine loaded by other builds |
    /// |---|---|---|
    /// | plain `read()` loop, 4 MiB blocks, 1 thread | 6.50 | 4.20 |
    /// | threads, 2 threads, 4 MiB, 8 in flight (this default) | 12.16 | 6.66 |
    /// | threads, 2 threads, 1 MiB, 4 in flight | 11.67 | 7.44 |
    /// | io_uring with `IOSQE_ASYNC`, 4 MiB, 4 in flight | 11.96 | 7.27 |
    /// | io_uring inline (no `IOSQE_ASYNC`), 4 MiB, 4 in flight | 6.49 | 3.83 |
    ///
    /// Threads and async io_uring tie; threads win the default because they are portable and
    /// need no kernel support, and because more in flight per thread kept the pool fed when
    /// the calling thread competed for a core. Plain io_uring stays at one core's copy speed.
    fn default() -> Self {
        let cores = std::thread::available_parallelism()
            .map_or(4, |n| n.get())
            .clamp(1, 16);
        Self {
            engine: EngineChoice::Threads,
            chunk_bytes: 4 << 20,
            max_in_flight: (4 * cores).min(32),
            threads: cores,
            direct: DirectMode::Auto,
        }
    }
}

/// Bytes a [`BulkIo`] has moved, by path (cumulative since creation).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BulkStats {
    /// Through the page cache (buffered descriptor).
    pub buffered_bytes: u64,
    /// `O_DIRECT`, straight to or from the caller's memory.
    pub direct_bytes: u64,
    /// `O_DIRECT` through a bounce buffer (plus one memory copy).
    pub bounced_bytes: u64,
}

/// An aligned heap allocation (bounce buffers for `O_DIRECT`).
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize, align: usize) -> Result<Self> {
        let layout = Layout::from_size_align(len.max(1), align).map_err(|e| {
            Error::Config(format!(
                "bounce buffer of {len} bytes aligned to {align}: {e}"
            ))
        })?;
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { std::alloc::alloc(layout) };
        if ptr.is_null() {
            return Err(Error::Config(format!(
                "cannot allocate {len} bytes of bounce buffers: lower BulkConfig::chunk_bytes or max_in_flight"
            )));
        }
        Ok(Self { ptr, layout })
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this very layout, freed once.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

// SAFETY: AlignedBuf owns its allocation exclusively; moving it between threads is fine.
unsafe impl Send for AlignedBuf {}

/// How a piece of a transfer goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Buffered descriptor, caller's memory.
    Buffered,
    /// `O_DIRECT` descriptor, caller's memory (aligned).
    Direct,
    /// `O_DIRECT` descriptor through bounce buffer number `n`.
    Bounce(usize),
}

#[derive(Debug, Clone, Copy)]
struct Piece {
    file_off: u64,
    /// Offset in the caller's buffer.
    mem_off: usize,
    len: usize,
    via: Via,
}

/// Moves large file ranges into and out of memory, pipelined on an I/O engine.
///
/// Not `Sync`: one transfer at a time per `BulkIo` (create one per thread for more).
pub struct BulkIo {
    // Field order matters: the engine drops first, waiting for its ops, before the bounce
    // buffers they may point into are freed.
    engine: Box<dyn IoEngine>,
    bounce: Option<AlignedBuf>,
    cfg: BulkConfig,
    ops: Vec<IoOp>,
    dones: Vec<IoDone>,
    slots: Vec<Option<Piece>>,
    free_bounce: Vec<usize>,
    stats: BulkStats,
}

impl std::fmt::Debug for BulkIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BulkIo")
            .field("engine", &self.engine.name())
            .field("cfg", &self.cfg)
            .finish()
    }
}

/// Reaps every op still in flight when dropped, so that no buffer is released while the engine
/// may still touch it (also on early return or unwinding).
struct DrainOnDrop<'a>(&'a mut dyn IoEngine);

impl Drop for DrainOnDrop<'_> {
    fn drop(&mut self) {
        let mut out = Vec::new();
        while self.0.in_flight() > 0 {
            self.0.reap(&mut out, true);
            out.clear();
        }
    }
}

impl BulkIo {
    /// Creates the engine (threads or io_uring per `cfg.engine`, after [`engine::probe`]).
    /// Cost: `cfg.threads` thread spawns or an io_uring setup; bounce buffers come later, on
    /// the first transfer that needs them.
    pub fn new(cfg: BulkConfig) -> Result<Self> {
        if cfg.chunk_bytes < 4096 || !cfg.chunk_bytes.is_multiple_of(4096) {
            return Err(Error::Config(format!(
                "BulkConfig::chunk_bytes is {}: use a multiple of 4096 (1 MiB to 16 MiB works well)",
                cfg.chunk_bytes
            )));
        }
        if cfg.max_in_flight == 0 || cfg.max_in_flight > 4096 {
            return Err(Error::Config(format!(
                "BulkConfig::max_in_flight is {}: use 1..=4096 (2 per core works well)",
                cfg.max_in_flight
            )));
        }
        let ecfg = EngineConfig {
            choice: cfg.engine,
            queue_depth: (cfg.max_in_flight * 3) as u32,
            threads: cfg.threads.max(1),
            ..EngineConfig::default()
        };
        let engine = make_engine(&ecfg);
        Ok(Self {
            engine,
            bounce: None,
            cfg,
            ops: Vec::new(),
            dones: Vec::new(),
            slots: Vec::new(),
            free_bounce: Vec::new(),
            stats: BulkStats::default(),
        })
    }

    /// Like [`BulkIo::new`] but runs the chunks on `engine` (e.g. a tuned
    /// [`crate::engine::uring::UringEngine`]); `cfg.engine` and `cfg.threads` are then unused.
    /// `engine` must have nothing in flight.
    pub fn with_engine(cfg: BulkConfig, engine: Box<dyn IoEngine>) -> Result<Self> {
        let mut b = Self::new(BulkConfig {
            engine: EngineChoice::Threads,
            threads: 1,
            ..cfg
        })?;
        b.engine = engine;
        b.cfg = cfg;
        Ok(b)
    }

    /// Bytes moved so far, by path.
    pub fn stats(&self) -> BulkStats {
        self.stats
    }

    /// The settings.
    pub fn config(&self) -> &BulkConfig {
        &self.cfg
    }

    /// Name of the engine running the chunks ("threads" or "uring").
    pub fn engine_name(&self) -> &'static str {
        self.engine.name()
    }

    /// Reads `[offset, offset + dst.len())` of `file` into `dst`. Returns the bytes read: short
    /// at end of file (0 at or past it). Cost: one `fstat`, then the data movement with up to
    /// `max_in_flight` chunks at once; for direct-capable files a few 1-byte probes per chunk.
    pub fn read_into(&mut self, file: &FileEntry, offset: u64, dst: &mut [u8]) -> Result<usize> {
        if !file.readable() {
            return Err(Error::WriteOnly);
        }
        let size = file.size()?;
        if offset >= size || dst.is_empty() {
            return Ok(0);
        }
        let len = dst
            .len()
            .min(usize::try_from(size - offset).unwrap_or(usize::MAX));
        let direct = match (file.direct_fd(), self.cfg.direct) {
            (Some(fd), DirectMode::Auto | DirectMode::Always) => Some(fd),
            _ => None,
        };
        let base = dst.as_mut_ptr();
        let probe = self.cfg.direct == DirectMode::Auto;
        let buffered_fd = file.fd();
        // SAFETY: `base..base+len` is `dst`, exclusively borrowed for this call; `transfer`
        // returns only after every op on it has completed.
        let res = unsafe {
            self.transfer(
                IoKind::Read,
                buffered_fd,
                direct,
                file.dio_align,
                offset,
                base,
                len,
                &mut |c0, c1| !probe || !is_cached(buffered_fd, c0, c1),
            )
        };
        let done = res?;
        Ok(done)
    }

    /// Writes `src` at `offset` of `file` (growing it as needed). Returns `src.len()` or an
    /// error. Does not fsync: call [`crate::engine`]'s `Fsync` or `File::sync_data` for that.
    /// Cost: the data movement with up to `max_in_flight` chunks at once.
    pub fn write_from(&mut self, file: &FileEntry, offset: u64, src: &[u8]) -> Result<usize> {
        if !file.writable() {
            return Err(Error::ReadOnly);
        }
        if src.is_empty() {
            return Ok(0);
        }
        if offset
            .checked_add(src.len() as u64)
            .is_none_or(|e| e > i64::MAX as u64)
        {
            return Err(Error::Range(format!(
                "a write of {} bytes at offset {offset} passes the largest file offset",
                src.len()
            )));
        }
        let direct = match (file.direct_fd(), self.cfg.direct) {
            (Some(fd), DirectMode::Auto | DirectMode::Always) => Some(fd),
            _ => None,
        };
        // SAFETY: `src` is only read (engine writes read from memory); it stays borrowed for
        // the call and `transfer` returns only after every op on it has completed.
        let done = unsafe {
            self.transfer(
                IoKind::Write,
                file.fd(),
                direct,
                file.dio_align,
                offset,
                src.as_ptr().cast_mut(),
                src.len(),
                &mut |_, _| true,
            )
        }?;
        if done < src.len() {
            return Err(Error::Os {
                op: "bulk write",
                errno: libc::EIO,
            });
        }
        Ok(done)
    }

    /// Makes sure bounce buffers of `chunk_bytes` aligned to `align` exist (registered as fixed
    /// buffers with engines that use them). Called with nothing in flight.
    fn ensure_bounce(&mut self, align: usize) -> Result<()> {
        if let Some(b) = &self.bounce {
            if b.layout.align() >= align {
                return Ok(());
            }
        }
        let n = self.cfg.max_in_flight;
        let buf = AlignedBuf::new(
            n * self.cfg.chunk_bytes.div_ceil(align) * align,
            align.max(4096),
        )?;
        // SAFETY: the allocation lives in `self.bounce` until it is replaced (after the next
        // registration replaces this one) or until `self` drops, after the engine (field order).
        if let Err(e) = unsafe {
            self.engine
                .register_buffers(&[(buf.ptr, buf.layout.size())])
        } {
            tracing::debug!(error = %e, "bounce buffers not registered as fixed buffers; plain reads are used");
        }
        self.bounce = Some(buf);
        self.free_bounce = (0..n).rev().collect();
        Ok(())
    }

    /// The pipelined transfer shared by reads and writes. `want_direct(c0, c1)` says whether
    /// chunk `[c0, c1)` should use `O_DIRECT` (asked only when `direct` is `Some`).
    ///
    /// # Safety
    /// `base..base+len` must be valid (for writes when reading the file, for reads when
    /// writing it) and not accessed by anyone else during the call.
    #[allow(clippy::too_many_arguments)]
    unsafe fn transfer(
        &mut self,
        kind: IoKind,
        fd: RawFd,
        direct: Option<RawFd>,
        dio_align: usize,
        offset: u64,
        base: *mut u8,
        len: usize,
        want_direct: &mut dyn FnMut(u64, u64) -> bool,
    ) -> Result<usize> {
        let align = dio_align.max(512).next_power_of_two();
        let slot_bytes = self.cfg.chunk_bytes.div_ceil(align) * align;
        // Small transfers are cut finer so that every pool thread gets a share (never below
        // 256 KiB, where per-op overhead starts to show; never above chunk_bytes, the bounce
        // buffer size).
        let share = len.div_ceil(2 * self.cfg.threads.max(1)).max(256 << 10);
        let chunk = (share.div_ceil(align) * align).min(slot_bytes);
        // Aligned middles of all chunks share one memory misalignment: either all go straight
        // into the caller's memory or all through bounce buffers.
        let mid0 = offset.div_ceil(align as u64) * align as u64;
        let in_place = (base as usize)
            .wrapping_add((mid0 - offset) as usize)
            .is_multiple_of(align);
        if direct.is_some() && !in_place {
            self.ensure_bounce(align)?;
        }
        let end = offset + len as u64;
        let op_name = if kind == IoKind::Read {
            "bulk read"
        } else {
            "bulk write"
        };
        let mut queue: std::collections::VecDeque<Piece> = std::collections::VecDeque::new();
        let mut next_chunk = offset;
        let mut first_err: Option<i32> = None;
        // Lowest file offset at which a read came up short (end of file moved).
        let mut eof_at = end;
        let max = self.cfg.max_in_flight;
        self.slots.clear();
        let mut live = 0usize;
        let bounce_ptr = self.bounce.as_ref().map_or(std::ptr::null_mut(), |b| b.ptr);
        let engine = DrainOnDrop(&mut *self.engine);
        loop {
            self.ops.clear();
            while live < max && first_err.is_none() && eof_at == end {
                if queue.is_empty() {
                    if next_chunk >= end {
                        break;
                    }
                    let c1 = ((next_chunk / chunk as u64 + 1) * chunk as u64).min(end);
                    plan_chunk(
                        &mut queue,
                        next_chunk,
                        c1,
                        offset,
                        direct.is_some() && want_direct(next_chunk, c1),
                        align,
                        in_place,
                    );
                    next_chunk = c1;
                }
                let Some(mut p) = queue.pop_front() else {
                    break;
                };
                let (pfd, buf) = match p.via {
                    Via::Buffered => (fd, base.wrapping_add(p.mem_off)),
                    Via::Direct => (direct.unwrap_or(fd), base.wrapping_add(p.mem_off)),
                    Via::Bounce(_) => {
                        let b = self
                            .free_bounce
                            .pop()
                            .expect("one bounce buffer per op in flight");
                        p.via = Via::Bounce(b);
                        let bp = bounce_ptr.wrapping_add(b * slot_bytes);
                        if kind == IoKind::Write {
                            // SAFETY: the source piece lies in `base..base+len` (caller's
                            // guarantee) and bounce buffer `b` holds slot_bytes >= p.len bytes,
                            // free (popped from the free list); they cannot overlap.
                            unsafe {
                                std::ptr::copy_nonoverlapping(base.add(p.mem_off), bp, p.len)
                            };
                        }
                        (direct.unwrap_or(fd), bp)
                    }
                };
                let token = match self.slots.iter().position(Option::is_none) {
                    Some(i) => {
                        self.slots[i] = Some(p);
                        i
                    }
                    None => {
                        self.slots.push(Some(p));
                        self.slots.len() - 1
                    }
                };
                self.ops.push(IoOp {
                    kind,
                    fd: pfd,
                    offset: p.file_off,
                    buf,
                    len: p.len,
                    token: token as u64,
                });
                live += 1;
            }
            if !self.ops.is_empty() {
                // SAFETY: every op points into the caller's buffer (valid and exclusive for this
                // call, per this fn's contract) or into a bounce buffer owned by `self`; we
                // reap them all before returning (loop below, or DrainOnDrop on unwinding).
                unsafe { engine.0.submit(&self.ops) };
            }
            if live == 0 {
                break;
            }
            self.dones.clear();
            engine.0.reap(&mut self.dones, true);
            for d in &self.dones {
                let p = self.slots[d.token as usize]
                    .take()
                    .expect("completion for a live piece");
                live -= 1;
                if d.result < 0 {
                    first_err.get_or_insert((-d.result) as i32);
                } else {
                    let got = d.result as usize;
                    let counter = match p.via {
                        Via::Buffered => &mut self.stats.buffered_bytes,
                        Via::Direct => &mut self.stats.direct_bytes,
                        Via::Bounce(_) => &mut self.stats.bounced_bytes,
                    };
                    *counter += got as u64;
                    if let Via::Bounce(b) = p.via {
                        if kind == IoKind::Read && got > 0 {
                            // SAFETY: bounce buffer `b` holds `got` <= p.len bytes just read;
                            // the destination piece lies inside the caller's buffer.
                            unsafe {
                                std::ptr::copy_nonoverlapping(
                                    bounce_ptr.add(b * slot_bytes),
                                    base.add(p.mem_off),
                                    got,
                                )
                            };
                        }
                        self.free_bounce.push(b);
                    }
                    if got < p.len {
                        eof_at = eof_at.min(p.file_off + got as u64);
                    }
                }
                if let (Via::Bounce(b), true) = (p.via, d.result < 0) {
                    self.free_bounce.push(b);
                }
            }
        }
        drop(engine);
        if let Some(errno) = first_err {
            return Err(Error::Os { op: op_name, errno });
        }
        Ok((eof_at - offset) as usize)
    }
}

/// The engine for bulk transfers: as [`engine::create`], except that io_uring runs chunks of
/// 256 KiB or more with `IOSQE_ASYNC` (on the kernel's io-wq threads). Without it the kernel
/// copies every warm chunk inline in our thread, one core for the whole transfer (measured:
/// no faster than a plain `read()` loop).
fn make_engine(cfg: &EngineConfig) -> Box<dyn IoEngine> {
    #[cfg(target_os = "linux")]
    if engine::probe(cfg.choice) == EngineChoice::Uring {
        let opts = engine::uring::UringOptions {
            async_min_len: 256 << 10,
            max_op_bytes: 0,
        };
        match engine::uring::UringEngine::with_options(cfg, opts) {
            Ok(e) => return Box::new(e),
            Err(e) => {
                tracing::warn!(error = %e, "io_uring setup failed; the bulk path runs on threads")
            }
        }
        return engine::create(&EngineConfig {
            choice: EngineChoice::Threads,
            ..*cfg
        });
    }
    engine::create(cfg)
}

/// Splits chunk `[c0, c1)` into pieces: all buffered, or an aligned middle direct (in place or
/// through a bounce buffer) with buffered edges.
fn plan_chunk(
    q: &mut std::collections::VecDeque<Piece>,
    c0: u64,
    c1: u64,
    offset: u64,
    direct: bool,
    align: usize,
    in_place: bool,
) {
    let piece = |r: std::ops::Range<u64>, via| Piece {
        file_off: r.start,
        mem_off: (r.start - offset) as usize,
        len: (r.end - r.start) as usize,
        via,
    };
    if !direct {
        q.push_back(piece(c0..c1, Via::Buffered));
        return;
    }
    let s = split_direct(c0, c1 - c0, align as u64);
    if let Some(h) = s.head {
        q.push_back(piece(h, Via::Buffered));
    }
    if let Some(m) = s.middle {
        q.push_back(piece(
            m,
            if in_place {
                Via::Direct
            } else {
                Via::Bounce(usize::MAX)
            },
        ));
    }
    if let Some(t) = s.tail {
        q.push_back(piece(t, Via::Buffered));
    }
}

/// Whether `[c0, c1)` of the file behind `fd` is (mostly) in the page cache.
///
/// First choice: `cachestat(2)` (Linux 6.5+), exact and free of side effects; the chunk counts
/// as cached when at least half its pages are. Fallback (older kernels): 1-byte
/// `preadv2(RWF_NOWAIT)` probes at four spread-out pages, any EAGAIN meaning "not cached"
/// (note such a probe may start readahead of a few pages). Where neither works, everything
/// counts as cached: the buffered answer is always correct. Cost: one or four system calls.
#[cfg(target_os = "linux")]
fn is_cached(fd: RawFd, c0: u64, c1: u64) -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static NO_CACHESTAT: AtomicBool = AtomicBool::new(false);
    if !NO_CACHESTAT.load(Ordering::Relaxed) {
        match cachestat(fd, c0, c1 - c0) {
            Some(cached_pages) => {
                let pages = (c1 - c0).div_ceil(4096);
                return cached_pages * 2 >= pages;
            }
            None => NO_CACHESTAT.store(true, Ordering::Relaxed),
        }
    }
    let span = c1 - c0;
    [0, span / 3, 2 * span / 3, span.saturating_sub(1)]
        .iter()
        .all(|&d| {
            let mut byte = 0u8;
            let iov = libc::iovec {
                iov_base: (&mut byte as *mut u8).cast(),
                iov_len: 1,
            };
            // SAFETY: one iovec pointing at a live local byte; the kernel writes at most 1 byte.
            let r =
                unsafe { libc::preadv2(fd, &iov, 1, (c0 + d) as libc::off_t, libc::RWF_NOWAIT) };
            r >= 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::EAGAIN)
        })
}

/// Pages of `[off, off+len)` in the page cache, via `cachestat(2)`; `None` where the call is
/// unavailable (kernel before 6.5, seccomp, unknown syscall number).
#[cfg(target_os = "linux")]
fn cachestat(fd: RawFd, off: u64, len: u64) -> Option<u64> {
    #[cfg(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "x86"
    ))]
    {
        #[repr(C)]
        struct Range {
            off: u64,
            len: u64,
        }
        #[repr(C)]
        #[derive(Default)]
        struct Stat {
            nr_cache: u64,
            nr_dirty: u64,
            nr_writeback: u64,
            nr_evicted: u64,
            nr_recently_evicted: u64,
        }
        const SYS_CACHESTAT: libc::c_long = 451; // same number on every architecture
        let range = Range { off, len };
        let mut st = Stat::default();
        // SAFETY: cachestat reads one `struct cachestat_range` and writes one `struct
        // cachestat`, both live locals laid out as the kernel's (#[repr(C)], five/two u64s).
        let r = unsafe {
            libc::syscall(
                SYS_CACHESTAT,
                fd,
                &range as *const Range,
                &mut st as *mut Stat,
                0u32,
            )
        };
        (r == 0).then_some(st.nr_cache)
    }
    #[cfg(not(any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "x86"
    )))]
    {
        let _ = (fd, off, len);
        None
    }
}

#[cfg(not(target_os = "linux"))]
fn is_cached(_fd: RawFd, _c0: u64, _c1: u64) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_plan_is_contiguous_and_aligned_in_the_middle() {
        let mut q = std::collections::VecDeque::new();
        plan_chunk(&mut q, 100, 20000, 100, true, 4096, false);
        let v: Vec<_> = q.iter().map(|p| (p.file_off, p.len, p.via)).collect();
        assert_eq!(
            v,
            vec![
                (100, 3996, Via::Buffered),
                (4096, 12288, Via::Bounce(usize::MAX)),
                (16384, 3616, Via::Buffered)
            ]
        );
        q.clear();
        plan_chunk(&mut q, 8192, 9000, 0, true, 4096, true);
        assert_eq!(q.len(), 1);
        assert_eq!(
            (q[0].mem_off, q[0].len, q[0].via),
            (8192, 808, Via::Buffered)
        );
    }

    #[test]
    fn bad_configs_are_refused_with_advice() {
        let e = BulkIo::new(BulkConfig {
            chunk_bytes: 1000,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("multiple of 4096"), "{e}");
        let e = BulkIo::new(BulkConfig {
            max_in_flight: 0,
            ..Default::default()
        })
        .unwrap_err();
        assert!(e.to_string().contains("max_in_flight"), "{e}");
    }
}
