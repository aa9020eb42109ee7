//! The CUDA bulk path: file ranges into and out of device memory, pipelined.
//!
//! ## How a read runs
//!
//! The requested ranges are cut into chunks of at most `chunk_bytes`, with cuts at multiples of
//! `chunk_bytes` in file-offset space (so every chunk but a range's first starts aligned for
//! `O_DIRECT`); nearby small ranges share a chunk (one `pread` serves many tensors).
//! `threads` workers (the calling thread is one of them) take chunks from a shared counter.
//! Each worker owns a stream (or shares one: `streams`) and `buffers_per_thread` pinned staging
//! buffers, allocated once when the [`CudaBulk`] is built and reused by every call. For each
//! chunk the worker takes its next staging buffer, waits on that buffer's event only if its
//! previous copy has not finished, reads the chunk into it, queues `cuMemcpyHtoDAsync` on its
//! stream and records the event.
//! Nothing synchronises the whole pipeline until the worker has no chunks left.
//!
//! Chunk reads. Every policy but `Buffered` first probes the page cache; the default,
//! `ColdReads::Readahead`, reads what is uncached through the page cache and keeps the disk
//! busy with `POSIX_FADV_WILLNEED` hints `readahead_bytes` ahead (measured fastest cold on the
//! H100 machine's virtio disk, see [`BulkConfig`]). `ColdReads::Direct`:
//! first `preadv2(RWF_NOWAIT)` on the buffered descriptor, which copies whatever is already in
//! the page cache and returns `EAGAIN` (or a short count) at the first uncached page; the rest
//! of the chunk is read with `O_DIRECT` from the enclosing aligned range (the staging buffer
//! holds file offset `o` at buffer offset `o - align_down(chunk_start)`, so alignment of buffer,
//! offset and length always agree). Warm data thus always comes from the page cache, cold data
//! skips it. With `ColdReads::Buffered`, or no direct descriptor, plain `pread` is used.
//!
//! Where io_uring can be set up (`BulkConfig::read_engine`, default auto), the uncached part of
//! a chunk is not read with a blocking call: it is queued on the worker's own ring
//! (`READ_FIXED`: the staging buffers are registered with the ring once, when the engine is
//! built), and the worker goes on to probe and fill its next buffer; whichever read completes
//! first is copied first. Warm data is copied by the probe in either case. With `GdsMode`
//! taking cuFile, aligned uncached middles go through cuFile instead ([`super::gds`]).
//!
//! Writes preallocate the written range (`fallocate`) before `O_DIRECT` writes that extend the
//! file, so that the workers' direct writes run concurrently (see `BulkConfig::preallocate`).
//!
//! ## How a write runs
//!
//! The reverse: each worker keeps up to `buffers_per_thread` chunks in flight — `cuMemcpyDtoHAsync`
//! into a staging buffer, event recorded — and writes the oldest once its event completes: the
//! aligned middle with `O_DIRECT` (`Writes::Direct`), unaligned head and tail buffered. With
//! `durable` (the default) the call ends with `fdatasync`, so the data is on disk when it returns.

use super::driver::{self, Context, DeviceBuffer, Event, PinnedBuffer, Stream};
use super::gds::{self, GdsHandle};
use super::numa::{self, Placement};
use super::GdsMode;
use crate::engine::{self, EngineChoice, EngineConfig, IoDone, IoEngine, IoKind, IoOp};
use crate::files::FileEntry;
use crate::{Error, Result};
use std::collections::VecDeque;
use std::fs::File;
use std::marker::PhantomData;
use std::os::fd::{AsRawFd, RawFd};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Alignment `O_DIRECT` needs for file offsets, lengths and buffers (safe on the H100 machine's
/// ext4; `FileEntry::dio_align` is the same figure).
pub const DIO_ALIGN: usize = 4096;
const A: u64 = DIO_ALIGN as u64;
/// Ranges closer than this share a chunk in vectored reads (the gap is read and discarded).
const MERGE_GAP: u64 = 64 * 1024;

/// How chunks that are not in the page cache are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColdReads {
    /// Probe with `preadv2(RWF_NOWAIT)`; read what is uncached with `O_DIRECT` (aligned middle).
    Direct,
    /// Always `pread` through the page cache (the kernel's readahead does the work).
    Buffered,
    /// Probe with `preadv2(RWF_NOWAIT)`; once a call finds uncached data, `pread` through the
    /// page cache and ask the kernel (`POSIX_FADV_WILLNEED`) to start reading the chunk
    /// `readahead_bytes` ahead, so the disk sees one deep, ordered stream.
    Readahead,
}

/// How chunks are written to the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Writes {
    /// Aligned middle with `O_DIRECT`, unaligned head and tail buffered.
    Direct,
    /// Everything through the page cache.
    Buffered,
}

/// Where the pinned staging buffers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StagingAlloc {
    /// `cuMemHostAlloc(PORTABLE | DEVICEMAP)`, one allocation per buffer.
    CudaHost,
    /// `mmap` on transparent huge pages + `cuMemHostRegister` (fewer TLB misses for the CPU
    /// copy into the buffer).
    HugePages,
}

/// Tuning of a [`CudaBulk`]. The defaults are among the measured best on the H100 machine
/// (differences of a few percent between the good settings are within run-to-run noise); no
/// field needs changing for full speed.
#[derive(Debug, Clone)]
pub struct BulkConfig {
    /// CPU threads moving data (the calling thread counts as one). Default `min(12, cores)`
    /// (warm 8 GiB, H100 machine, 2026-11-25 sweep at commit baad5ff, 4 MiB × 2 buffers,
    /// medians of 6: 12 threads 50.4 GB/s, 16 threads 51.9; earlier at 2 MiB: 12, 14 and 16
    /// threads all 49.3).
    pub threads: usize,
    /// Largest chunk read or written at once, bytes: one `pread` and one host→device copy
    /// each. Default 4 MiB (warm 8 GiB reads on the H100 machine, 12 threads, medians of 6:
    /// 2 MiB × 3 buffers 50.4 GB/s, 4 MiB × 2 50.4, 8 MiB × 1 49.5, but 6 MiB × 2 41.1,
    /// 8 MiB × 2 38.5, 16 MiB × 1 33.4). What hurts is staging per thread above ~8 MiB
    /// (chunk × buffers), not the copy size: larger copies are not faster.
    pub chunk_bytes: usize,
    /// Pinned staging buffers per thread (pinned memory = threads × buffers × chunk).
    /// Default 2 (4 MiB × 3 buffers: 42.6 GB/s against 50.4 for × 2).
    pub buffers_per_thread: usize,
    /// How uncached data is read. Default [`ColdReads::Readahead`] (on the H100 machine's
    /// virtio disk, cold 8 GiB, 12 threads, 2 MiB chunks: `Direct` 0.69 GB/s, `Buffered` 1.22,
    /// `Readahead` 1.45 with 64 MiB lookahead; `Direct` with 2–4 threads × 16 MiB 1.02–1.04).
    pub cold_reads: ColdReads,
    /// How data is written. Default [`Writes::Direct`].
    pub writes: Writes,
    /// `fdatasync` at the end of every write call. Default true.
    pub durable: bool,
    /// Before an `O_DIRECT` write, allocate its file range with `fallocate` (size set), so the
    /// workers' writes are overwrites of allocated blocks, which ext4 and XFS run concurrently;
    /// writes that extend a file take the inode lock exclusively and run one at a time.
    /// Default true.
    pub preallocate: bool,
    /// GPUDirect Storage (cuFile) mode; `None` (default) reads `WARPFS_GDS` (unset = auto).
    pub gds: Option<GdsMode>,
    /// How chunk reads that the page cache cannot serve at once are issued: `Uring` / `Auto`
    /// (default; io_uring where it can be set up) — each thread keeps its uncached reads in
    /// flight on its own ring, into its staging buffers registered as fixed buffers, and
    /// copies whichever completes first; `Threads` — each thread reads them with blocking
    /// `pread`. Cached data is copied at once by the `RWF_NOWAIT` probe either way.
    pub read_engine: EngineChoice,
    /// How far ahead of the chunk being read [`ColdReads::Readahead`] hints, bytes. Default
    /// 256 MiB (H100 machine, cold 8 GiB, 12 threads, 2 MiB chunks: 64 MiB ahead 1.40 GB/s,
    /// 256 MiB ahead 1.57 GB/s).
    pub readahead_bytes: u64,
    /// CUDA streams the copies go on: 0 (default) = one per thread; `n` = `n` streams shared
    /// by the threads (thread `i` uses stream `i mod n`). Measured warm, 12 threads × 4 MiB × 2:
    /// 1, 2, 4 and 12 streams 50.2, 50.0, 51.2 and 50.4 GB/s — no lead.
    pub streams: usize,
    /// Where the staging buffers come from. Default [`StagingAlloc::CudaHost`]
    /// (`HugePages`: median 51.5 GB/s against 50.4, with a wider spread, 38.5–52.9).
    pub staging: StagingAlloc,
}

impl Default for BulkConfig {
    fn default() -> Self {
        let cores = std::thread::available_parallelism().map_or(4, |n| n.get());
        Self {
            threads: cores.clamp(1, 12),
            chunk_bytes: 4 << 20,
            buffers_per_thread: 2,
            cold_reads: ColdReads::Readahead,
            writes: Writes::Direct,
            durable: true,
            preallocate: true,
            gds: None,
            read_engine: EngineChoice::Auto,
            readahead_bytes: 256 << 20,
            streams: 0,
            staging: StagingAlloc::CudaHost,
        }
    }
}

/// A file opened for the bulk path from a path: a buffered descriptor and, where the
/// filesystem allows, an `O_DIRECT` one.
#[derive(Debug)]
pub struct BulkFile {
    file: File,
    direct: Option<File>,
}

impl BulkFile {
    /// Opens `path` for reading. Costs two `open` calls.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path.as_ref(), false, false)
    }

    /// Creates (or truncates) `path` for reading and writing.
    pub fn create(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path.as_ref(), true, true)
    }

    /// Opens `path` for reading and writing without truncating (created if missing).
    pub fn open_rw(path: impl AsRef<Path>) -> Result<Self> {
        Self::open_with(path.as_ref(), true, false)
    }

    fn open_with(path: &Path, write: bool, truncate: bool) -> Result<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            mode: if write {
                "reading and writing"
            } else {
                "reading"
            },
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .create(write)
            .truncate(truncate)
            .open(path)
            .map_err(open_err)?;
        let direct = std::fs::OpenOptions::new()
            .read(true)
            .write(write)
            .custom_flags(libc::O_DIRECT)
            .open(path)
            .ok();
        Ok(Self { file, direct })
    }

    /// Size in bytes (one `fstat`).
    pub fn size(&self) -> Result<u64> {
        Ok(self.file.metadata()?.len())
    }

    /// Whether an `O_DIRECT` descriptor is open.
    pub fn has_direct(&self) -> bool {
        self.direct.is_some()
    }
}

/// A borrowed file for one bulk call: the buffered descriptor and the optional direct one.
#[derive(Debug, Clone, Copy)]
pub struct FileRef<'a> {
    fd: RawFd,
    direct_fd: Option<RawFd>,
    _life: PhantomData<&'a ()>,
}

impl<'a> From<&'a FileEntry> for FileRef<'a> {
    fn from(e: &'a FileEntry) -> Self {
        let direct_fd = if e.dio_align as u64 <= A && A.is_multiple_of(e.dio_align.max(1) as u64) {
            e.direct_fd()
        } else {
            None
        };
        Self {
            fd: e.fd(),
            direct_fd,
            _life: PhantomData,
        }
    }
}

impl<'a> From<&'a BulkFile> for FileRef<'a> {
    fn from(f: &'a BulkFile) -> Self {
        Self {
            fd: f.file.as_raw_fd(),
            direct_fd: f.direct.as_ref().map(|d| d.as_raw_fd()),
            _life: PhantomData,
        }
    }
}

impl FileRef<'_> {
    fn size(&self) -> Result<u64> {
        // SAFETY: st is a valid out pointer; fd is a descriptor borrowed for 'a.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(self.fd, &mut st) } != 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        Ok(st.st_size as u64)
    }
}

/// One range of a vectored read: `len` bytes at `file_offset` go to `dst_offset` of the device
/// buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Where the bytes start in the file.
    pub file_offset: u64,
    /// How many bytes.
    pub len: u64,
    /// Where they go in the device buffer.
    pub dst_offset: u64,
}

/// What a bulk call did.
#[derive(Debug, Clone, Default)]
pub struct TransferReport {
    /// Bytes transferred (short at end of file).
    pub bytes: u64,
    /// CPU threads that moved data (the calling thread included).
    pub threads: usize,
    /// Which path ran: `"pipeline"` (pinned staging + async copies), `"cufile"` (GPUDirect
    /// Storage for every byte) or `"cufile+pipeline"` (cuFile for aligned uncached ranges, the
    /// pipeline for the rest).
    pub path: &'static str,
    /// Why that path, e.g. `"cuFile: driver open, but no nvidia-fs and no P2PDMA (...)"`.
    pub path_reason: &'static str,
    /// Bytes moved by cuFile (GPUDirect Storage) between the file and device memory.
    pub gds_bytes: u64,
    /// Bytes served from the page cache by `RWF_NOWAIT` probes.
    pub cached_bytes: u64,
    /// Bytes read or written with `O_DIRECT`.
    pub direct_bytes: u64,
    /// Bytes read or written with blocking buffered calls.
    pub buffered_bytes: u64,
    /// Wall time of the call, `fdatasync` included for writes.
    pub elapsed: Duration,
}

impl TransferReport {
    /// Throughput in GB/s (10^9 bytes per second).
    pub fn gb_per_s(&self) -> f64 {
        self.bytes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e9
    }
}

struct Staging {
    mem: PinnedBuffer,
    done: Event,
    busy: bool,
}

struct Slot {
    /// This thread's io_uring, its staging buffers registered (none with `Threads`).
    /// Declared before `bufs`, so it is dropped (and unregisters them) first.
    ring: Option<engine::uring::UringEngine>,
    /// Index into `CudaBulk::streams`.
    stream: usize,
    bufs: Vec<Staging>,
}

/// The CUDA bulk engine of one device: staging pool, streams and events, built once and reused
/// by every call. Calls on one engine run one at a time (each uses all its threads).
pub struct CudaBulk {
    ctx: Arc<Context>,
    cfg: BulkConfig,
    slots: Mutex<Vec<Slot>>,
    streams: Vec<Stream>,
    direct_ok: bool,
    gds: GdsMode,
    /// Where the device sits; worker threads are bound to its node's CPUs on multi-socket hosts.
    placement: Placement,
}

impl std::fmt::Debug for CudaBulk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CudaBulk")
            .field("device", &self.ctx.name())
            .field("cfg", &self.cfg)
            .finish_non_exhaustive()
    }
}

/// A device memory range of one piece of a chunk.
#[derive(Debug, Clone, Copy)]
struct Piece {
    file_off: u64,
    len: u64,
    dev: u64,
}

/// A contiguous file span read (or written) at once, and the pieces that use it.
#[derive(Debug, Clone)]
struct Chunk {
    start: u64,
    end: u64,
    pieces: std::ops::Range<usize>,
}

#[derive(Default)]
struct Counters {
    cached: AtomicU64,
    direct: AtomicU64,
    buffered: AtomicU64,
    gds: AtomicU64,
}

struct Shared<'a> {
    chunks: &'a [Chunk],
    pieces: &'a [Piece],
    next: AtomicUsize,
    failed: AtomicBool,
    err: Mutex<Option<Error>>,
    eof: AtomicU64,
    n: Counters,
    /// Some chunk of this call was not in the page cache.
    cold: AtomicBool,
}

impl<'a> Shared<'a> {
    /// The state of one call over `chunks`/`pieces`; `eof` is the file size for reads
    /// (lowered if the file turns out shorter), `u64::MAX` for writes.
    fn new(chunks: &'a [Chunk], pieces: &'a [Piece], eof: u64) -> Self {
        Self {
            chunks,
            pieces,
            next: AtomicUsize::new(0),
            failed: AtomicBool::new(false),
            err: Mutex::new(None),
            eof: AtomicU64::new(eof),
            n: Counters::default(),
            cold: AtomicBool::new(false),
        }
    }

    fn claim(&self) -> Option<(usize, &Chunk)> {
        if self.failed.load(Ordering::Relaxed) {
            return None;
        }
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        self.chunks.get(i).map(|c| (i, c))
    }
    fn fail(&self, e: Error) {
        self.failed.store(true, Ordering::Relaxed);
        let mut g = self.err.lock().unwrap_or_else(|p| p.into_inner());
        if g.is_none() {
            *g = Some(e);
        }
    }
}

static NOWAIT_WORKS: AtomicBool = AtomicBool::new(true);

impl CudaBulk {
    /// Builds the engine on device `ordinal` with `cfg`: retains the primary context, creates
    /// `threads` streams and pins `threads × buffers_per_thread × (chunk_bytes + 8 KiB)` bytes
    /// of host memory (≈150 MiB with the defaults; tens of ms). Fails with `Error::Config` when
    /// no CUDA driver is usable or `WARPFS_GDS=on` cannot be honoured.
    pub fn new(ordinal: usize, cfg: BulkConfig) -> Result<Self> {
        if cfg.threads == 0
            || cfg.buffers_per_thread == 0
            || cfg.chunk_bytes < DIO_ALIGN
            || !cfg.chunk_bytes.is_multiple_of(DIO_ALIGN)
        {
            return Err(Error::Config(format!(
                "CUDA bulk config needs threads ≥ 1, buffers_per_thread ≥ 1 and chunk_bytes a multiple of {DIO_ALIGN}; got {cfg:?}"
            )));
        }
        let gds = match cfg.gds {
            Some(m) => m,
            None => GdsMode::from_env()?,
        };
        let ctx = Context::new(ordinal)?;
        if gds != GdsMode::Off {
            ctx.bind()?;
            let s = gds::support();
            if gds == GdsMode::On && !s.driver_open {
                return Err(Error::Config(format!(
                    "WARPFS_GDS=on, but cuFile cannot be used here ({}); use WARPFS_GDS=auto (the default) or off",
                    s.summary
                )));
            }
        }
        let placement = numa::placement(ctx.device())?;
        if let Some(node) = placement.node {
            tracing::info!(device = ordinal, node, bus = %placement.pci_bus_id, "staging memory and bulk threads placed on the GPU's NUMA node");
        }
        // Pinned staging pages are allocated (and first touched) under this policy.
        let _prefer = numa::PreferNode::new(placement.node);
        let nstreams = if cfg.streams == 0 {
            cfg.threads
        } else {
            cfg.streams.min(cfg.threads)
        };
        let streams = (0..nstreams)
            .map(|_| Stream::new(&ctx))
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let mut slots = Vec::with_capacity(cfg.threads);
        let mut direct_ok = true;
        for t in 0..cfg.threads {
            let stream = t % nstreams;
            let mut bufs = Vec::with_capacity(cfg.buffers_per_thread);
            for _ in 0..cfg.buffers_per_thread {
                let len = cfg.chunk_bytes + 2 * DIO_ALIGN;
                let mem = match cfg.staging {
                    StagingAlloc::CudaHost => PinnedBuffer::new(&ctx, len)?,
                    StagingAlloc::HugePages => PinnedBuffer::new_huge(&ctx, len)?,
                };
                direct_ok &= (mem.as_ptr() as usize).is_multiple_of(DIO_ALIGN);
                bufs.push(Staging {
                    mem,
                    done: Event::new(&ctx)?,
                    busy: false,
                });
            }
            let ring = match engine::probe(cfg.read_engine) {
                EngineChoice::Uring => uring_for(&mut bufs),
                _ => None,
            };
            slots.push(Slot { stream, bufs, ring });
        }
        Ok(Self {
            ctx,
            cfg,
            slots: Mutex::new(slots),
            streams,
            direct_ok,
            gds,
            placement,
        })
    }

    /// Where the device sits (PCI bus id, NUMA node on multi-socket hosts).
    pub fn placement(&self) -> &Placement {
        &self.placement
    }

    /// The engine's configuration.
    pub fn config(&self) -> &BulkConfig {
        &self.cfg
    }

    /// The device context (bind it on threads that call the driver themselves).
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Allocates `len` bytes of device memory in this engine's context.
    pub fn alloc(&self, len: usize) -> Result<DeviceBuffer> {
        Ok(DeviceBuffer::new(&self.ctx, len)?)
    }

    /// The cuFile handle a call on `f` uses (none under `off`, or under `auto` without DMA
    /// support), and why the call's path is what it is. Under `on` a file cuFile refuses is an
    /// error; under `auto` it falls back to the pipeline with the reason logged.
    fn gds_for(&self, f: FileRef<'_>) -> Result<(Option<GdsHandle>, &'static str)> {
        match self.gds {
            GdsMode::Off => Ok((None, "WARPFS_GDS=off")),
            GdsMode::Auto => {
                let s = gds::support();
                let Some(dfd) = f.direct_fd.filter(|_| s.direct_dma() && self.direct_ok) else {
                    return Ok((None, s.summary.as_str()));
                };
                match GdsHandle::register(dfd) {
                    Ok(h) => Ok((
                        Some(h),
                        "WARPFS_GDS=auto: cuFile DMA for aligned ranges not in the page cache",
                    )),
                    Err(e) => {
                        tracing::info!(error = %e, "cuFile refused the file; using the pipeline");
                        Ok((None, "WARPFS_GDS=auto: cuFile refused the file"))
                    }
                }
            }
            GdsMode::On => {
                // nvidia-fs wants the O_DIRECT descriptor; cuFile's compat mode may take only
                // the buffered one.
                let h = match f.direct_fd.map(GdsHandle::register) {
                    Some(Ok(h)) => h,
                    _ => GdsHandle::register(f.fd).map_err(|e| {
                        Error::Config(format!(
                            "WARPFS_GDS=on, but cuFile cannot take the file: {e}"
                        ))
                    })?,
                };
                Ok((Some(h), "WARPFS_GDS=on: cuFile for every aligned range"))
            }
            #[cfg(feature = "fault-injection")]
            GdsMode::Emulated => Ok((
                Some(GdsHandle::emulated(f.fd)),
                "cuFile emulated (tests): aligned ranges by pread/pwrite and synchronous copies",
            )),
        }
    }

    /// Reads up to `len` bytes at file `offset` into `dst` at `dst_offset`. Returns the bytes
    /// read in `report.bytes`: fewer than `len` only at end of file (0 past it).
    pub fn read<'a>(
        &self,
        file: impl Into<FileRef<'a>>,
        offset: u64,
        dst: &mut DeviceBuffer,
        dst_offset: u64,
        len: u64,
    ) -> Result<TransferReport> {
        self.check_ctx(dst)?;
        check_fits(dst.len() as u64, dst_offset, len)?;
        let ext = [Extent {
            file_offset: offset,
            len,
            dst_offset,
        }];
        // SAFETY: the extent lies inside dst (checked), which we borrow mutably for the call.
        let (r, _) = unsafe { self.read_raw_vectored(file.into(), &ext, dst.ptr())? };
        Ok(r)
    }

    /// Reads many file ranges into one device buffer in one pipelined call (e.g. every tensor
    /// of a safetensors file). Returns the report and the bytes read per extent (short only at
    /// end of file). Extents may come in any order; their destinations must not overlap.
    pub fn read_vectored<'a>(
        &self,
        file: impl Into<FileRef<'a>>,
        dst: &mut DeviceBuffer,
        extents: &[Extent],
    ) -> Result<(TransferReport, Vec<u64>)> {
        self.check_ctx(dst)?;
        for e in extents {
            check_fits(dst.len() as u64, e.dst_offset, e.len)?;
        }
        // SAFETY: every extent lies inside dst (checked), which we borrow mutably for the call.
        unsafe { self.read_raw_vectored(file.into(), extents, dst.ptr()) }
    }

    /// Like [`read_vectored`](Self::read_vectored) with raw device addresses: extent `i` goes
    /// to `base + extents[i].dst_offset`. For memory allocated elsewhere (cudarc, PyTorch).
    ///
    /// # Safety
    /// Every `[base + dst_offset, + len)` must be device memory of this engine's context that
    /// nothing else reads or writes until the call returns.
    pub unsafe fn read_raw_vectored(
        &self,
        file: FileRef<'_>,
        extents: &[Extent],
        base: u64,
    ) -> Result<(TransferReport, Vec<u64>)> {
        let t0 = Instant::now();
        let size = file.size()?;
        let (chunks, pieces) = plan_reads(extents, base, size, self.cfg.chunk_bytes as u64);
        let (gds, path_reason) = self.gds_for(file)?;
        let sh = Shared::new(&chunks, &pieces, size);
        let threads = self.run_workers(&sh, |slot, sh| match (&gds, slot.ring.is_some()) {
            (None, true) => self.read_worker_uring(slot, file, sh),
            _ => self.read_worker(slot, file, gds.as_ref(), sh),
        })?;
        let eof = sh.eof.load(Ordering::Relaxed);
        let per: Vec<u64> = extents
            .iter()
            .map(|e| eof.saturating_sub(e.file_offset).min(e.len))
            .collect();
        let bytes = per.iter().sum();
        let gds_bytes = sh.n.gds.load(Ordering::Relaxed);
        let report = TransferReport {
            bytes,
            threads,
            path: path_name(gds_bytes, bytes),
            path_reason,
            gds_bytes,
            cached_bytes: sh.n.cached.load(Ordering::Relaxed),
            direct_bytes: sh.n.direct.load(Ordering::Relaxed),
            buffered_bytes: sh.n.buffered.load(Ordering::Relaxed),
            elapsed: t0.elapsed(),
        };
        tracing::debug!(?report, "cuda bulk read");
        Ok((report, per))
    }

    /// Writes `len` bytes of `src` from `src_offset` to the file at `offset` (the file grows as
    /// needed). With `durable` (default) the data is on disk (`fdatasync`) when this returns.
    pub fn write<'a>(
        &self,
        file: impl Into<FileRef<'a>>,
        offset: u64,
        src: &DeviceBuffer,
        src_offset: u64,
        len: u64,
    ) -> Result<TransferReport> {
        self.check_ctx(src)?;
        check_fits(src.len() as u64, src_offset, len)?;
        // SAFETY: the range lies inside src (checked), borrowed for the call.
        unsafe { self.write_raw(file.into(), offset, src.ptr() + src_offset, len) }
    }

    /// Like [`write`](Self::write) with a raw device address.
    ///
    /// # Safety
    /// `[src, src + len)` must be device memory of this engine's context that nothing writes
    /// until the call returns.
    pub unsafe fn write_raw(
        &self,
        file: FileRef<'_>,
        offset: u64,
        src: u64,
        len: u64,
    ) -> Result<TransferReport> {
        let t0 = Instant::now();
        offset
            .checked_add(len)
            .ok_or_else(|| Error::Range("file offset + length overflows".into()))?;
        let (chunks, pieces) = plan_writes(offset, len, src, self.cfg.chunk_bytes as u64);
        // cuFile first: a refusal under `on` must not leave the file grown.
        let (gds, path_reason) = self.gds_for(file)?;
        let grown = if self.cfg.preallocate && self.policy().direct_writes(file) {
            preallocate(file, offset, len)?
        } else {
            None
        };
        let sh = Shared::new(&chunks, &pieces, u64::MAX);
        let threads = match self.run_workers(&sh, |slot, sh| match &gds {
            Some(h) => self.write_worker_gds(slot, file, h, sh),
            None => self.write_worker(slot, file, sh),
        }) {
            Ok(n) => n,
            Err(e) => {
                if let Some(old) = grown {
                    // Best effort: the file goes back to its size before the call.
                    // SAFETY: fd is a live descriptor borrowed for the call.
                    unsafe { libc::ftruncate(file.fd, old as libc::off_t) };
                }
                return Err(e);
            }
        };
        if self.cfg.durable && len > 0 {
            // SAFETY: fd is a live descriptor borrowed for the call.
            if unsafe { libc::fdatasync(file.fd) } != 0 {
                return Err(std::io::Error::last_os_error().into());
            }
        }
        let gds_bytes = sh.n.gds.load(Ordering::Relaxed);
        Ok(TransferReport {
            bytes: len,
            threads,
            path: path_name(gds_bytes, len),
            path_reason,
            gds_bytes,
            cached_bytes: 0,
            direct_bytes: sh.n.direct.load(Ordering::Relaxed),
            buffered_bytes: sh.n.buffered.load(Ordering::Relaxed),
            elapsed: t0.elapsed(),
        })
    }

    /// The PCIe side alone: the pipeline's host→device copies of `len` bytes into `dst`, from
    /// the staging buffers as they are (no file is read; the bytes that land are whatever the
    /// staging holds), with the same threads, chunks and streams as a read. What a read would
    /// reach if file reads cost nothing — the copy ceiling a benchmark sets beside a read.
    pub fn copy_only(&self, dst: &mut DeviceBuffer, len: u64) -> Result<TransferReport> {
        self.check_ctx(dst)?;
        check_fits(dst.len() as u64, 0, len)?;
        let t0 = Instant::now();
        let (chunks, pieces) = plan_writes(0, len, dst.ptr(), self.cfg.chunk_bytes as u64);
        let sh = Shared::new(&chunks, &pieces, u64::MAX);
        let threads = self.run_workers(&sh, |slot, sh| self.copy_worker(slot, sh))?;
        Ok(TransferReport {
            bytes: len,
            threads,
            path: "copy-only",
            path_reason: "no file reads: host→device copies from staging",
            elapsed: t0.elapsed(),
            ..TransferReport::default()
        })
    }

    fn copy_worker(&self, slot: &mut Slot, sh: &Shared<'_>) -> Result<()> {
        let nb = slot.bufs.len();
        let stream = &self.streams[slot.stream];
        let mut k = 0;
        let mut body = || -> Result<()> {
            while let Some((_, c)) = sh.claim() {
                let st = &mut slot.bufs[k];
                k = (k + 1) % nb;
                if st.busy {
                    st.done.synchronize()?;
                    st.busy = false;
                }
                let p = sh.pieces[c.pieces.start];
                // SAFETY: the source is the first p.len ≤ chunk_bytes bytes of a staging
                // buffer (chunk_bytes + 2·DIO_ALIGN long) that no one writes; the destination
                // lies inside the caller's device buffer (checked in copy_only).
                unsafe { driver::copy_htod_async(p.dev, st.mem.as_ptr(), p.len as usize, stream)? };
                st.done.record(stream)?;
                st.busy = true;
            }
            Ok(())
        };
        let res = body();
        drain(slot, stream, res)
    }

    fn policy(&self) -> Policy {
        Policy {
            cold_reads: self.cfg.cold_reads,
            writes: self.cfg.writes,
            direct_ok: self.direct_ok,
        }
    }

    fn check_ctx(&self, b: &DeviceBuffer) -> Result<()> {
        if !Arc::ptr_eq(b.context(), &self.ctx) && b.context().ordinal() != self.ctx.ordinal() {
            return Err(Error::Config(
                "the device buffer belongs to another device than this CudaBulk".into(),
            ));
        }
        Ok(())
    }

    /// Runs `work` on min(threads, chunks) slots, the calling thread taking the first; returns
    /// the thread count or the first error.
    fn run_workers<F>(&self, sh: &Shared<'_>, work: F) -> Result<usize>
    where
        F: Fn(&mut Slot, &Shared<'_>) -> Result<()> + Sync,
    {
        let n = self.cfg.threads.min(sh.chunks.len());
        if n == 0 {
            return Ok(0);
        }
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        let _restore = CtxRestore::new();
        let run = |slot: &mut Slot| {
            if let Err(e) = self
                .ctx
                .bind()
                .map_err(Error::from)
                .and_then(|()| work(slot, sh))
            {
                sh.fail(e);
            }
        };
        std::thread::scope(|s| {
            let mut it = slots.iter_mut().take(n);
            let first = it.next().expect("n >= 1");
            for slot in it {
                s.spawn(|| {
                    numa::bind_thread(&self.placement.cpus);
                    run(slot)
                });
            }
            run(first);
        });
        match sh.err.lock().unwrap_or_else(|p| p.into_inner()).take() {
            Some(e) => Err(e),
            None => Ok(n),
        }
    }

    fn read_worker(
        &self,
        slot: &mut Slot,
        f: FileRef<'_>,
        gds: Option<&GdsHandle>,
        sh: &Shared<'_>,
    ) -> Result<()> {
        let nb = slot.bufs.len();
        let stream = &self.streams[slot.stream];
        let mut k = 0;
        let mut body = || -> Result<()> {
            let pol = self.policy();
            let ahead = (self.cfg.readahead_bytes / self.cfg.chunk_bytes as u64) as usize;
            while let Some((i, c)) = sh.claim() {
                hint_ahead(&pol, f, sh, i, ahead);
                let st = &mut slot.bufs[k];
                k = (k + 1) % nb;
                if st.busy {
                    st.done.synchronize()?;
                    st.busy = false;
                }
                let base = c.start & !(A - 1);
                let one = gds.and_then(|h| Some((h, gds_piece(c, &sh.pieces[c.pieces.clone()])?)));
                if let Some((h, p)) = one {
                    let on = self.gds != GdsMode::Auto;
                    let reached = read_chunk_gds(h, on, f, st, base, c, p, &sh.n, stream)?;
                    if reached < c.end {
                        sh.eof.fetch_min(reached, Ordering::Relaxed);
                    }
                    st.done.record(stream)?;
                    st.busy = true;
                    continue;
                }
                let (reached, cold) =
                    read_span(&pol, f, st.mem.as_mut_slice(), base, c.start, c.end, &sh.n)?;
                if cold && !sh.cold.load(Ordering::Relaxed) {
                    sh.cold.store(true, Ordering::Relaxed);
                }
                self.finish_chunk(st, base, c, reached, sh, stream)?;
            }
            Ok(())
        };
        let res = body();
        drain(slot, stream, res)
    }

    fn write_worker(&self, slot: &mut Slot, f: FileRef<'_>, sh: &Shared<'_>) -> Result<()> {
        let nb = slot.bufs.len();
        let stream = &self.streams[slot.stream];
        let mut issued = 0usize;
        let mut inflight: VecDeque<(&Chunk, usize)> = VecDeque::with_capacity(nb);
        let mut body = || -> Result<()> {
            loop {
                while inflight.len() < nb {
                    let Some((_, c)) = sh.claim() else { break };
                    let bi = issued % nb;
                    issued += 1;
                    let st = &mut slot.bufs[bi];
                    let base = c.start & !(A - 1);
                    let p = sh.pieces[c.pieces.start];
                    // SAFETY: the destination lies inside the staging buffer, which no one reads
                    // until `done` completes (waited below before the pwrite); the source is
                    // inside the caller's device range (caller's contract).
                    unsafe {
                        driver::copy_dtoh_async(
                            st.mem.as_mut_ptr().add((c.start - base) as usize),
                            p.dev,
                            p.len as usize,
                            stream,
                        )?;
                    }
                    st.done.record(stream)?;
                    inflight.push_back((c, bi));
                }
                let Some((c, bi)) = inflight.pop_front() else {
                    return Ok(());
                };
                let st = &slot.bufs[bi];
                st.done.synchronize()?;
                write_span(
                    &self.policy(),
                    f,
                    st.mem.as_slice(),
                    c.start & !(A - 1),
                    c.start,
                    c.end,
                    &sh.n,
                )?;
            }
        };
        let res = body();
        let drained = stream.synchronize();
        res?;
        Ok(drained?)
    }
}

impl CudaBulk {
    /// A read worker with io_uring: for each claimed chunk the page cache is asked first
    /// (`RWF_NOWAIT`, copied at once); what it does not hold is queued on this thread's ring
    /// (`READ_FIXED` into the chunk's staging buffer: `O_DIRECT` for the aligned span under
    /// `ColdReads::Direct`, else buffered) and the thread goes on to its next buffer. Each
    /// completed read is copied to the device on the thread's stream.
    fn read_worker_uring(&self, slot: &mut Slot, f: FileRef<'_>, sh: &Shared<'_>) -> Result<()> {
        let Slot { stream, bufs, ring } = slot;
        let stream = &self.streams[*stream];
        let ring = ring.as_mut().expect("read_worker_uring needs a ring");
        let nb = bufs.len();
        let pol = self.policy();
        let ahead = (self.cfg.readahead_bytes / self.cfg.chunk_bytes as u64) as usize;
        // Per buffer: the chunk whose read is in flight, the offset its op starts at, the
        // offset the page cache served up to, and whether the op is O_DIRECT.
        let mut reading: Vec<Option<(&Chunk, u64, u64, bool)>> = vec![None; nb];
        let mut done: Vec<IoDone> = Vec::with_capacity(nb);
        let mut more = true;
        let mut body = || -> Result<()> {
            loop {
                for (b, st) in bufs.iter_mut().enumerate() {
                    if !more || reading[b].is_some() {
                        continue;
                    }
                    let Some((i, c)) = sh.claim() else {
                        more = false;
                        break;
                    };
                    hint_ahead(&pol, f, sh, i, ahead);
                    if st.busy {
                        st.done.synchronize()?;
                        st.busy = false;
                    }
                    let base = c.start & !(A - 1);
                    let span = &mut st.mem.as_mut_slice()
                        [(c.start - base) as usize..(c.end - base) as usize];
                    let probe = pol.cold_reads != ColdReads::Buffered
                        && NOWAIT_WORKS.load(Ordering::Relaxed);
                    let got = match probe {
                        true => read_cached(f.fd, span, c.start, &sh.n)?.unwrap_or(0),
                        false => 0,
                    };
                    let pos = c.start + got;
                    if pos >= c.end {
                        self.finish_chunk(st, base, c, c.end, sh, stream)?;
                        continue;
                    }
                    sh.cold.store(true, Ordering::Relaxed);
                    // O_DIRECT for chunks ending on an alignment boundary (a file's unaligned
                    // last chunk goes buffered: a short direct read at end of file would be
                    // resumed at an unaligned offset).
                    let direct = pol.cold_reads == ColdReads::Direct
                        && pol.direct_ok
                        && c.end.is_multiple_of(A);
                    let (fd, at, end) = match (direct, f.direct_fd) {
                        (true, Some(d)) => (d, pos & !(A - 1), c.end),
                        _ => (f.fd, pos, c.end),
                    };
                    reading[b] = Some((c, at, pos, fd != f.fd));
                    // SAFETY: [at, end) lies in the staging buffer (which holds file offset
                    // `base` at index 0 and spans chunk_bytes + 2·DIO_ALIGN); nothing touches
                    // it until the op completes (`reading[b]` is set until then, and the final
                    // reap below waits for every op); the descriptors live for the call.
                    unsafe {
                        ring.submit(&[IoOp {
                            kind: IoKind::Read,
                            fd,
                            offset: at,
                            buf: st.mem.as_mut_ptr().add((at - base) as usize),
                            len: (end - at) as usize,
                            token: b as u64,
                        }])
                    };
                }
                if reading.iter().all(Option::is_none) {
                    if more {
                        continue;
                    }
                    return Ok(());
                }
                done.clear();
                ring.reap(&mut done, true);
                for d in &done {
                    let b = d.token as usize;
                    let (c, at, pos, direct) = reading[b]
                        .take()
                        .expect("a completion for a read in flight");
                    if d.result < 0 {
                        let e = std::io::Error::from_raw_os_error(-d.result as i32);
                        if direct && d.result == -(libc::EINVAL as i64) {
                            // O_DIRECT refused: read through the page cache instead.
                            let st = &mut bufs[b];
                            let base = c.start & !(A - 1);
                            let reached = read_buffered(
                                f.fd,
                                st.mem.as_mut_slice(),
                                base,
                                pos,
                                c.end,
                                &sh.n,
                            )?;
                            self.finish_chunk(st, base, c, reached, sh, stream)?;
                            continue;
                        }
                        return Err(e.into());
                    }
                    let counter = if direct { &sh.n.direct } else { &sh.n.buffered };
                    let reached = (at + d.result as u64).min(c.end);
                    counter.fetch_add(reached.saturating_sub(pos), Ordering::Relaxed);
                    let base = c.start & !(A - 1);
                    self.finish_chunk(&mut bufs[b], base, c, reached, sh, stream)?;
                }
            }
        };
        let res = body();
        // No op may outlive the call: its buffer is reused by the next one.
        while ring.in_flight() > 0 {
            done.clear();
            ring.reap(&mut done, true);
        }
        let drained = stream.synchronize();
        bufs.iter_mut().for_each(|b| b.busy = false);
        res?;
        Ok(drained?)
    }

    /// Notes end of file if `reached` < `c.end`, queues the host→device copies of chunk `c`'s
    /// pieces up to file offset `reached` from staging buffer `st` (holding file offset `base`
    /// at index 0) and records its event.
    fn finish_chunk(
        &self,
        st: &mut Staging,
        base: u64,
        c: &Chunk,
        reached: u64,
        sh: &Shared<'_>,
        stream: &Stream,
    ) -> Result<()> {
        if reached < c.end {
            sh.eof.fetch_min(reached, Ordering::Relaxed);
        }
        for p in &sh.pieces[c.pieces.clone()] {
            let end = (p.file_off + p.len).min(reached);
            if end <= p.file_off {
                continue;
            }
            // SAFETY: the source lies inside the staging buffer and is not touched again until
            // `done` completes (waited for before the buffer's reuse and by the final stream
            // sync); the destination is inside the caller's device range (caller's contract).
            unsafe {
                driver::copy_htod_async(
                    p.dev,
                    st.mem.as_ptr().add((p.file_off - base) as usize),
                    (end - p.file_off) as usize,
                    stream,
                )?;
            }
        }
        st.done.record(stream)?;
        st.busy = true;
        Ok(())
    }

    /// A write worker with cuFile: each chunk's aligned middle goes from device memory to the
    /// file through cuFile (no staging); its unaligned head and tail are copied to staging and
    /// written buffered.
    fn write_worker_gds(
        &self,
        slot: &mut Slot,
        f: FileRef<'_>,
        h: &GdsHandle,
        sh: &Shared<'_>,
    ) -> Result<()> {
        let stream = &self.streams[slot.stream];
        let st = &mut slot.bufs[0];
        let mut body = || -> Result<()> {
            while let Some((_, c)) = sh.claim() {
                let p = sh.pieces[c.pieces.start];
                let base = c.start & !(A - 1);
                let (ma, mb) = (c.start.div_ceil(A) * A, c.end & !(A - 1));
                let edges: [(u64, u64); 2] = if ma < mb {
                    // SAFETY: the middle lies inside the caller's device range (plan_writes
                    // maps chunk offsets onto it one to one; caller's contract).
                    unsafe { h.write(p.dev + (ma - c.start), (mb - ma) as usize, ma) }?;
                    sh.n.gds.fetch_add(mb - ma, Ordering::Relaxed);
                    [(c.start, ma), (mb, c.end)]
                } else {
                    [(c.start, c.end), (c.end, c.end)]
                };
                for &(x, y) in edges.iter().filter(|(x, y)| x < y) {
                    // SAFETY: the destination lies in the staging buffer (a chunk spans at
                    // most chunk_bytes + 2·DIO_ALIGN from `base`), read only after the stream
                    // sync below; the source is inside the caller's device range.
                    unsafe {
                        driver::copy_dtoh_async(
                            st.mem.as_mut_ptr().add((x - base) as usize),
                            p.dev + (x - c.start),
                            (y - x) as usize,
                            stream,
                        )?;
                    }
                }
                stream.synchronize()?;
                for &(x, y) in edges.iter().filter(|(x, y)| x < y) {
                    let at = (x - base) as usize;
                    pwrite_all(f.fd, &st.mem.as_slice()[at..at + (y - x) as usize], x)?;
                    sh.n.buffered.fetch_add(y - x, Ordering::Relaxed);
                }
            }
            Ok(())
        };
        let res = body();
        let drained = stream.synchronize();
        res?;
        Ok(drained?)
    }
}

/// An io_uring for one bulk thread with its staging buffers registered as fixed buffers;
/// `None` (the thread then reads with `pread`) when either step fails, logged once.
fn uring_for(bufs: &mut [Staging]) -> Option<engine::uring::UringEngine> {
    let cfg = EngineConfig {
        choice: EngineChoice::Uring,
        queue_depth: (2 * bufs.len()) as u32,
        threads: 1,
        cached_reads_now: false,
    };
    let ranges: Vec<(*mut u8, usize)> = bufs
        .iter_mut()
        .map(|b| (b.mem.as_mut_ptr(), b.mem.len()))
        .collect();
    let ring = engine::uring::UringEngine::new(&cfg).and_then(|mut r| {
        // SAFETY: the staging buffers outlive the engine: both go into the same Slot, whose
        // `ring` field is declared (so dropped) before `bufs`; and no op is in flight between
        // calls (every read worker reaps all its ops before returning).
        unsafe { r.register_buffers(&ranges) }.map(|()| r)
    });
    match ring {
        Ok(r) => Some(r),
        Err(e) => {
            static WARNED: std::sync::Once = std::sync::Once::new();
            WARNED.call_once(|| {
                tracing::warn!(error = %e, "io_uring for the CUDA bulk reads could not be set up; reading with pread")
            });
            None
        }
    }
}

/// The report's path name for `gds_bytes` of `bytes` moved by cuFile.
fn path_name(gds_bytes: u64, bytes: u64) -> &'static str {
    match gds_bytes {
        0 => "pipeline",
        g if g >= bytes => "cufile",
        _ => "cufile+pipeline",
    }
}

/// The one piece chunk `c` amounts to if it can take the cuFile read path: its pieces follow
/// each other in the file and in device memory from `c.start` to `c.end` (so file offsets map
/// onto device addresses one to one), and it holds an aligned middle.
fn gds_piece(c: &Chunk, pieces: &[Piece]) -> Option<Piece> {
    let first = *pieces.first()?;
    let mut end = first;
    for p in &pieces[1..] {
        if p.file_off != end.file_off + end.len || p.dev != end.dev + end.len {
            return None;
        }
        end = *p;
    }
    let whole = first.file_off == c.start && end.file_off + end.len == c.end;
    (whole && c.start.div_ceil(A) * A < (c.end & !(A - 1))).then_some(Piece {
        file_off: c.start,
        len: c.end - c.start,
        dev: first.dev,
    })
}

/// Reads chunk `c` (one piece `p`, see [`gds_piece`]) with cuFile for its aligned middle.
/// Under `auto` (`on` false) the page cache is asked first (`RWF_NOWAIT`): what it holds is
/// read into staging and copied as usual, and only the uncached rest goes to cuFile. Unaligned
/// edges are read buffered into staging and copied on `stream`. Returns the offset reached
/// (`c.end`, or less at end of file).
#[allow(clippy::too_many_arguments)]
fn read_chunk_gds(
    h: &GdsHandle,
    on: bool,
    f: FileRef<'_>,
    st: &mut Staging,
    base: u64,
    c: &Chunk,
    p: Piece,
    n: &Counters,
    stream: &Stream,
) -> Result<u64> {
    let buf = st.mem.as_mut_slice();
    let mut pos = c.start;
    if !on && NOWAIT_WORKS.load(Ordering::Relaxed) {
        let span = &mut buf[(c.start - base) as usize..(c.end - base) as usize];
        pos += read_cached(f.fd, span, c.start, n)?.unwrap_or(0);
    }
    let (ma, mb) = (pos.div_ceil(A) * A, c.end & !(A - 1));
    // Bytes [c.start, head_end) come from staging, then the middle from cuFile, then the tail.
    let (head_end, tail) = if ma < mb {
        let head_end = read_buffered(f.fd, buf, base, pos, ma, n)?;
        if head_end < ma {
            (head_end, None) // end of file before the middle
        } else {
            // SAFETY: [ma, mb) lies inside the piece, so its device range is inside the
            // caller's buffer (caller's contract); nothing else uses it during the call.
            let got = unsafe { h.read(p.dev + (ma - p.file_off), (mb - ma) as usize, ma) }? as u64;
            n.gds.fetch_add(got, Ordering::Relaxed);
            if got < mb - ma {
                (ma, Some((mb, ma + got))) // end of file inside the middle: no tail
            } else {
                (
                    ma,
                    Some((mb, read_buffered(f.fd, buf, base, mb, c.end, n)?)),
                )
            }
        }
    } else {
        (read_buffered(f.fd, buf, base, pos, c.end, n)?, None)
    };
    for (x, y) in [(c.start, head_end), tail.unwrap_or((0, 0))] {
        if x < y {
            // SAFETY: the source lies in the staging buffer, not touched again until the
            // event recorded after this returns completes; the destination is inside the
            // piece's device range (caller's contract).
            unsafe {
                driver::copy_htod_async(
                    p.dev + (x - p.file_off),
                    st.mem.as_ptr().add((x - base) as usize),
                    (y - x) as usize,
                    stream,
                )?;
            }
        }
    }
    Ok(match tail {
        Some((_, reached)) => reached,
        None => head_end,
    })
}

/// Ends a worker's run over `slot`: waits for its stream's copies (whatever `res` says, so no
/// copy outlives the call), marks its buffers free, and returns the first error.
fn drain(slot: &mut Slot, stream: &Stream, res: Result<()>) -> Result<()> {
    let drained = stream.synchronize();
    slot.bufs.iter_mut().for_each(|b| b.busy = false);
    res?;
    Ok(drained?)
}

/// The parts of the configuration the file I/O of one chunk needs.
#[derive(Debug, Clone, Copy)]
struct Policy {
    cold_reads: ColdReads,
    writes: Writes,
    /// Staging buffers are `DIO_ALIGN`-aligned (always, with `cuMemHostAlloc`).
    direct_ok: bool,
}

/// Reads file `[a, b)` into `buf`, which holds file offset `base` (aligned) at index 0.
/// Returns the offset reached (`b`, or less at end of file) and whether some of the span was
/// not in the page cache (only known when the policy probes).
fn read_span(
    pol: &Policy,
    f: FileRef<'_>,
    buf: &mut [u8],
    base: u64,
    a: u64,
    b: u64,
    n: &Counters,
) -> Result<(u64, bool)> {
    let mut pos = a;
    let probe = pol.cold_reads != ColdReads::Buffered && NOWAIT_WORKS.load(Ordering::Relaxed);
    if !probe {
        return Ok((read_buffered(f.fd, buf, base, pos, b, n)?, false));
    }
    match read_cached(
        f.fd,
        &mut buf[(a - base) as usize..(b - base) as usize],
        a,
        n,
    )? {
        Some(got) => pos += got,
        None => return Ok((read_buffered(f.fd, buf, base, pos, b, n)?, false)),
    }
    if pos >= b {
        return Ok((b, false));
    }
    let dfd = match f.direct_fd {
        Some(d) if pol.cold_reads == ColdReads::Direct && pol.direct_ok => d,
        _ => return Ok((read_buffered(f.fd, buf, base, pos, b, n)?, true)),
    };
    let s = pos & !(A - 1);
    let e = b.div_ceil(A) * A;
    let mut p = s;
    while p < e {
        match pread_retry(dfd, &mut buf[(p - base) as usize..(e - base) as usize], p) {
            Ok(0) => break,
            Ok(got) => {
                p += got as u64;
                if !p.is_multiple_of(A) {
                    break; // a short, unaligned count is end of file
                }
            }
            Err(err) if err.raw_os_error() == Some(libc::EINVAL) => {
                tracing::info!("O_DIRECT read refused (EINVAL); reading through the page cache");
                return Ok((read_buffered(f.fd, buf, base, pos, b, n)?, true));
            }
            Err(err) => return Err(err.into()),
        }
    }
    let reached = p.min(b);
    if reached > pos {
        n.direct.fetch_add(reached - pos, Ordering::Relaxed);
        pos = reached;
    }
    if p < e && pos < b {
        return Ok((pos, true)); // end of file inside the chunk
    }
    Ok((b, true))
}

impl Policy {
    /// Whether writes to `f` go (mostly) through `O_DIRECT`.
    fn direct_writes(&self, f: FileRef<'_>) -> bool {
        self.writes == Writes::Direct && f.direct_fd.is_some() && self.direct_ok
    }
}

/// Allocates file `[offset, offset + len)` with `fallocate` (size set) when it ends past the
/// file's present size, so that the `O_DIRECT` writes that follow are not extending writes
/// (which the filesystem serialises). Returns the size before the call when the file grew (to
/// undo on failure); `None` when nothing changed or the filesystem cannot preallocate.
fn preallocate(f: FileRef<'_>, offset: u64, len: u64) -> Result<Option<u64>> {
    let old = f.size()?;
    if len == 0 || offset + len <= old {
        return Ok(None);
    }
    // SAFETY: plain syscall on a descriptor borrowed for the call.
    let r = unsafe { libc::fallocate(f.fd, 0, offset as libc::off_t, len as libc::off_t) };
    if r == 0 {
        return Ok(Some(old));
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        // No space is an answer the writes would give too, later and with the file half done.
        Some(libc::ENOSPC) | Some(libc::EFBIG) => {
            // SAFETY: as above; undoes whatever part of the range was allocated.
            unsafe { libc::ftruncate(f.fd, old as libc::off_t) };
            Err(e.into())
        }
        _ => {
            tracing::debug!(error = %e, "fallocate refused; writing without preallocation");
            Ok(None)
        }
    }
}

/// Under `ColdReads::Readahead`, once the call has met uncached data, asks the kernel to
/// start reading the chunk `ahead` chunks after chunk `i` (`POSIX_FADV_WILLNEED`).
fn hint_ahead(pol: &Policy, f: FileRef<'_>, sh: &Shared<'_>, i: usize, ahead: usize) {
    if pol.cold_reads != ColdReads::Readahead || ahead == 0 || !sh.cold.load(Ordering::Relaxed) {
        return;
    }
    if let Some(h) = sh.chunks.get(i + ahead) {
        // SAFETY: advisory call on a descriptor borrowed for the call.
        unsafe {
            libc::posix_fadvise(
                f.fd,
                h.start as libc::off_t,
                (h.end - h.start) as libc::off_t,
                libc::POSIX_FADV_WILLNEED,
            )
        };
    }
}

/// Reads what the page cache holds of `buf.len()` bytes at `off` (`preadv2(RWF_NOWAIT)`):
/// `Some(bytes)` from the start of the span (0 when its first page is not cached), or `None`
/// when the kernel does not support the probe (it is then switched off for the process).
fn read_cached(fd: RawFd, buf: &mut [u8], off: u64, n: &Counters) -> Result<Option<u64>> {
    match pread_nowait(fd, buf, off) {
        Ok(got) => {
            n.cached.fetch_add(got as u64, Ordering::Relaxed);
            Ok(Some(got as u64))
        }
        Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => Ok(Some(0)),
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::EINVAL | libc::ENOSYS)
            ) =>
        {
            tracing::info!(error = %e, "preadv2(RWF_NOWAIT) unsupported; reading through the page cache");
            NOWAIT_WORKS.store(false, Ordering::Relaxed);
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

/// Writes file `[a, b)` from `buf` (holding file offset `base` at index 0).
fn write_span(
    pol: &Policy,
    f: FileRef<'_>,
    buf: &[u8],
    base: u64,
    a: u64,
    b: u64,
    n: &Counters,
) -> Result<()> {
    let slice = |x: u64, y: u64| &buf[(x - base) as usize..(y - base) as usize];
    if let (Writes::Direct, Some(dfd), true) = (pol.writes, f.direct_fd, pol.direct_ok) {
        let ma = a.div_ceil(A) * A;
        let mb = b & !(A - 1);
        if ma < mb {
            if a < ma {
                pwrite_all(f.fd, slice(a, ma), a)?;
            }
            match pwrite_all(dfd, slice(ma, mb), ma) {
                Ok(()) => n.direct.fetch_add(mb - ma, Ordering::Relaxed),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    pwrite_all(f.fd, slice(ma, mb), ma)?;
                    n.buffered.fetch_add(mb - ma, Ordering::Relaxed)
                }
                Err(e) => return Err(e.into()),
            };
            if mb < b {
                pwrite_all(f.fd, slice(mb, b), mb)?;
            }
            n.buffered.fetch_add((ma - a) + (b - mb), Ordering::Relaxed);
            return Ok(());
        }
    }
    pwrite_all(f.fd, slice(a, b), a)?;
    n.buffered.fetch_add(b - a, Ordering::Relaxed);
    Ok(())
}

fn check_fits(buf_len: u64, off: u64, len: u64) -> Result<()> {
    match off.checked_add(len) {
        Some(end) if end <= buf_len => Ok(()),
        _ => Err(Error::Range(format!(
            "device range [{off}, {off}+{len}) does not fit a {buf_len}-byte buffer"
        ))),
    }
}

/// Cuts extents (clamped to `size`) into chunks with cuts at multiples of `chunk`; nearby
/// pieces share a chunk while its span stays within `chunk`.
fn plan_reads(extents: &[Extent], base: u64, size: u64, chunk: u64) -> (Vec<Chunk>, Vec<Piece>) {
    let mut parts: Vec<Piece> = Vec::new();
    for e in extents {
        let end = e.file_offset.saturating_add(e.len).min(size);
        let mut p = e.file_offset;
        while p < end {
            let q = ((p / chunk + 1) * chunk).min(end);
            parts.push(Piece {
                file_off: p,
                len: q - p,
                dev: base + e.dst_offset + (p - e.file_offset),
            });
            p = q;
        }
    }
    parts.sort_by_key(|p| p.file_off);
    let mut chunks: Vec<Chunk> = Vec::new();
    for (i, p) in parts.iter().enumerate() {
        let pe = p.file_off + p.len;
        if let Some(c) = chunks.last_mut() {
            let joined_end = c.end.max(pe);
            if p.file_off <= c.end + MERGE_GAP && joined_end - c.start <= chunk {
                c.end = joined_end;
                c.pieces.end = i + 1;
                continue;
            }
        }
        chunks.push(Chunk {
            start: p.file_off,
            end: pe,
            pieces: i..i + 1,
        });
    }
    (chunks, parts)
}

/// Cuts one write range into chunks at multiples of `chunk`, one piece each.
fn plan_writes(offset: u64, len: u64, src: u64, chunk: u64) -> (Vec<Chunk>, Vec<Piece>) {
    let (mut chunks, mut pieces) = (Vec::new(), Vec::new());
    let end = offset + len;
    let mut p = offset;
    while p < end {
        let q = ((p / chunk + 1) * chunk).min(end);
        pieces.push(Piece {
            file_off: p,
            len: q - p,
            dev: src + (p - offset),
        });
        chunks.push(Chunk {
            start: p,
            end: q,
            pieces: pieces.len() - 1..pieces.len(),
        });
        p = q;
    }
    (chunks, pieces)
}

fn read_buffered(
    fd: RawFd,
    buf: &mut [u8],
    base: u64,
    mut pos: u64,
    b: u64,
    n: &Counters,
) -> Result<u64> {
    let start = pos;
    while pos < b {
        let got = pread_retry(
            fd,
            &mut buf[(pos - base) as usize..(b - base) as usize],
            pos,
        )?;
        if got == 0 {
            break;
        }
        pos += got as u64;
    }
    n.buffered.fetch_add(pos - start, Ordering::Relaxed);
    Ok(pos)
}

fn pread_retry(fd: RawFd, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    loop {
        // SAFETY: buf is a valid, exclusively borrowed slice of buf.len() bytes.
        let r = unsafe { libc::pread(fd, buf.as_mut_ptr().cast(), buf.len(), off as libc::off_t) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// `preadv2(RWF_NOWAIT)`: copies what is in the page cache; `EAGAIN` if the first page is not.
fn pread_nowait(fd: RawFd, buf: &mut [u8], off: u64) -> std::io::Result<usize> {
    let iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    loop {
        // SAFETY: iov describes a valid, exclusively borrowed buffer; one iovec is passed.
        let r = unsafe { libc::preadv2(fd, &iov, 1, off as libc::off_t, libc::RWF_NOWAIT) };
        if r >= 0 {
            return Ok(r as usize);
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

fn pwrite_all(fd: RawFd, mut buf: &[u8], mut off: u64) -> std::io::Result<()> {
    while !buf.is_empty() {
        // SAFETY: buf is a valid slice of buf.len() bytes.
        let r = unsafe { libc::pwrite(fd, buf.as_ptr().cast(), buf.len(), off as libc::off_t) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if r == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::WriteZero,
                "pwrite wrote 0 bytes",
            ));
        }
        buf = &buf[r as usize..];
        off += r as u64;
    }
    Ok(())
}

/// Restores the calling thread's previous current context when dropped, so a bulk call does
/// not change the caller's CUDA state.
struct CtxRestore(Option<cudarc::driver::sys::CUcontext>);

impl CtxRestore {
    fn new() -> Self {
        Self(cudarc::driver::result::ctx::get_current().ok().flatten())
    }
}

impl Drop for CtxRestore {
    fn drop(&mut self) {
        if let Some(c) = self.0 {
            // SAFETY: c was current on this thread when we started, so it is a live context
            // (the caller still holds it; we only borrowed the thread).
            let _ = unsafe { cudarc::driver::result::ctx::set_current(c) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_are_cut_at_chunk_multiples_and_merged() {
        let ex = [
            Extent {
                file_offset: 10,
                len: 100,
                dst_offset: 0,
            },
            Extent {
                file_offset: 200,
                len: 50,
                dst_offset: 100,
            },
            Extent {
                file_offset: 1000,
                len: 9000,
                dst_offset: 150,
            },
        ];
        let (chunks, pieces) = plan_reads(&ex, 1 << 40, 1 << 20, 4096);
        // First two merge with the start of the third (gap < 64 KiB) up to the 4096 cut.
        assert_eq!(chunks[0].start, 10);
        assert_eq!(chunks[0].end, 4096);
        assert!(chunks.iter().all(|c| c.end - c.start <= 4096));
        assert!(chunks.iter().skip(1).all(|c| c.start % 4096 == 0));
        let total: u64 = pieces.iter().map(|p| p.len).sum();
        assert_eq!(total, 100 + 50 + 9000);
        for p in &pieces {
            let e = ex
                .iter()
                .find(|e| p.file_off >= e.file_offset && p.file_off < e.file_offset + e.len)
                .unwrap();
            assert_eq!(p.dev, (1 << 40) + e.dst_offset + p.file_off - e.file_offset);
        }
    }

    #[test]
    fn reads_are_clamped_to_size() {
        let ex = [
            Extent {
                file_offset: 90,
                len: 100,
                dst_offset: 0,
            },
            Extent {
                file_offset: 500,
                len: 10,
                dst_offset: 0,
            },
        ];
        let (chunks, pieces) = plan_reads(&ex, 0, 100, 4096);
        assert_eq!(chunks.len(), 1);
        assert_eq!(pieces.len(), 1);
        assert_eq!(pieces[0].len, 10);
    }

    #[test]
    fn writes_are_cut_at_chunk_multiples() {
        let (chunks, pieces) = plan_writes(100, 10_000, 7, 4096);
        assert_eq!(
            chunks.iter().map(|c| (c.start, c.end)).collect::<Vec<_>>(),
            vec![(100, 4096), (4096, 8192), (8192, 10_100)]
        );
        assert_eq!(pieces[1].dev, 7 + 4096 - 100);
    }

    /// A `DIO_ALIGN`-aligned host buffer standing in for a pinned staging buffer.
    struct Aligned(*mut u8, usize);
    impl Aligned {
        fn new(len: usize) -> Self {
            let l = std::alloc::Layout::from_size_align(len, DIO_ALIGN).unwrap();
            // SAFETY: the layout has non-zero size.
            Self(unsafe { std::alloc::alloc_zeroed(l) }, len)
        }
        fn slice(&mut self) -> &mut [u8] {
            // SAFETY: a live allocation of self.1 bytes, borrowed mutably.
            unsafe { std::slice::from_raw_parts_mut(self.0, self.1) }
        }
    }
    impl Drop for Aligned {
        fn drop(&mut self) {
            // SAFETY: allocated in new() with this layout.
            unsafe {
                std::alloc::dealloc(
                    self.0,
                    std::alloc::Layout::from_size_align(self.1, DIO_ALIGN).unwrap(),
                )
            }
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("warpfs-cuda-span-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    fn uncache(f: &BulkFile) {
        // SAFETY: advisory call on a live descriptor.
        unsafe { libc::posix_fadvise(f.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    }

    #[test]
    fn spans_read_any_range_warm_cold_direct_and_buffered() {
        use crate::backend::cuda::pattern;
        let size = 5 * 4096 * 7 + 1234;
        let p = tmp("read");
        let mut v = vec![0u8; size];
        pattern::fill(&mut v, 0);
        std::fs::write(&p, &v).unwrap();
        let f = BulkFile::open(&p).unwrap();
        f.file.sync_all().unwrap(); // dirty pages cannot be dropped from the cache
        let chunk = 64 * 1024u64;
        let mut buf = Aligned::new(chunk as usize + 2 * DIO_ALIGN);
        let mut seed = 1u64;
        let mut rnd = |m: u64| {
            seed = pattern::word(seed);
            seed % m.max(1)
        };
        for cold_reads in [ColdReads::Direct, ColdReads::Buffered, ColdReads::Readahead] {
            let pol = Policy {
                cold_reads,
                writes: Writes::Direct,
                direct_ok: true,
            };
            for i in 0..300 {
                let cold = i % 2 == 0;
                if cold {
                    uncache(&f);
                }
                let a = match i % 3 {
                    0 => rnd(size as u64 + 100),
                    1 => rnd(size as u64 / 4096) * 4096,
                    _ => size as u64 - rnd(5000),
                };
                let b = a + rnd(chunk - (a % 4096)).min(chunk);
                let base = a & !(A - 1);
                let n = Counters::default();
                let (reached, _) =
                    read_span(&pol, (&f).into(), buf.slice(), base, a, b, &n).unwrap();
                assert_eq!(reached, b.min((size as u64).max(a)), "a={a} b={b}");
                let got = &buf.slice()[(a - base) as usize..(reached - base) as usize];
                assert_eq!(
                    pattern::first_mismatch(got, a),
                    None,
                    "a={a} b={b} cold={cold} {cold_reads:?}"
                );
                let total = n.cached.load(Ordering::Relaxed)
                    + n.direct.load(Ordering::Relaxed)
                    + n.buffered.load(Ordering::Relaxed);
                assert_eq!(total, reached - a);
                if !cold && cold_reads != ColdReads::Buffered && i % 3 == 0 {
                    // Just read (cached by the buffered re-read below), so all of it is warm.
                    let n2 = Counters::default();
                    let _ = std::fs::read(&p).unwrap();
                    read_span(&pol, (&f).into(), buf.slice(), base, a, b, &n2).unwrap();
                    assert_eq!(
                        n2.cached.load(Ordering::Relaxed),
                        reached - a,
                        "warm data must come from the cache"
                    );
                    assert_eq!(n2.direct.load(Ordering::Relaxed), 0);
                }
            }
        }
        uncache(&f);
        let pol = Policy {
            cold_reads: ColdReads::Direct,
            writes: Writes::Direct,
            direct_ok: true,
        };
        let n = Counters::default();
        read_span(&pol, (&f).into(), buf.slice(), 0, 0, chunk, &n).unwrap();
        assert!(
            n.direct.load(Ordering::Relaxed) > 0,
            "cold data should be read with O_DIRECT"
        );
    }

    #[test]
    fn spans_write_any_range() {
        use crate::backend::cuda::pattern;
        for writes in [Writes::Direct, Writes::Buffered] {
            let p = tmp(&format!("write-{writes:?}"));
            let f = BulkFile::create(&p).unwrap();
            let pol = Policy {
                cold_reads: ColdReads::Direct,
                writes,
                direct_ok: true,
            };
            let chunk = 64 * 1024u64;
            let mut buf = Aligned::new(chunk as usize + 2 * DIO_ALIGN);
            let size = 300_000u64 + 333;
            let mut a = 0;
            let mut step = 1u64;
            while a < size {
                let b = (a + step).min(size).min(((a / chunk) + 1) * chunk);
                let base = a & !(A - 1);
                pattern::fill(
                    &mut buf.slice()[(a - base) as usize..(b - base) as usize],
                    a,
                );
                write_span(
                    &pol,
                    (&f).into(),
                    buf.slice(),
                    base,
                    a,
                    b,
                    &Counters::default(),
                )
                .unwrap();
                a = b;
                step = step * 3 + 1001;
            }
            let back = std::fs::read(&p).unwrap();
            assert_eq!(back.len() as u64, size);
            assert_eq!(pattern::first_mismatch(&back, 0), None, "{writes:?}");
        }
    }
}
