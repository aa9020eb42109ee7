//! CUDA backend: the bulk path (file ranges into and out of device memory, pipelined through
//! pinned staging buffers) on NVIDIA GPUs, driven through `cudarc` with dynamic loading.
//!
//! Everything here builds without CUDA; at run time call [`available`] first — with no driver,
//! [`CudaBulk::new`] returns `Error::Config` instead of touching the GPU.
//!
//! - [`driver`]: thin RAII wrappers (context, stream, event, device and pinned buffers).
//! - [`bulk`]: the pipeline ([`CudaBulk`]).
//! - [`gds`]: GPUDirect Storage through cuFile, probed once, used where it has DMA.
//! - [`gpu_io`]: GPU-initiated I/O — kernels call `wfs_read`/`wfs_write` (`include/warpfs.cuh`)
//!   through a channel in [`mapped`] (pinned, device-mapped) memory served by the daemon.
//! - [`multi`]: several GPUs of one host — one file spread over them, or a file each.
//! - [`numa`]: staging memory and bulk threads on the GPU's socket (multi-socket hosts).
//! - [`checksum`]: a position-dependent checksum computed on the GPU (NVRTC kernel) or the CPU.
//! - [`recover`]: using a device again after a kernel fault (sticky context error).
//! - [`soak_kernels`]: the kernel of `warpfs bench --soak --backend cuda`.
//! - [`pattern`]: deterministic file content (a function of the file offset) for tests and
//!   benchmarks.
//!
//! ## GPUDirect Storage
//!
//! `WARPFS_GDS=auto|on|off` (default `auto`; [`BulkConfig::gds`] overrides it) selects cuFile
//! ([`gds`]). `auto` uses cuFile only where its driver reports nvidia-fs or P2PDMA, and then
//! only for aligned ranges the page cache does not hold (warm data comes from memory, faster
//! than a disk); `on` uses cuFile for every aligned range (including cuFile's compat mode) and
//! fails with a clear error when cuFile cannot take the file; `off` never loads it. Unaligned
//! edges always go through the pipeline. The path taken is in [`TransferReport::path`],
//! [`TransferReport::path_reason`] and [`TransferReport::gds_bytes`] (and the CLI's `--json`).
//! The H100 machine has no nvidia-fs, and its container no udev (cuFile cannot read the volume's
//! attributes and refuses every file): `auto` runs the pipeline there, `on` fails clearly.
//!
//! ## Stream-ordered form (plan)
//!
//! Today [`CudaBulk::submit_read`] runs a read on a background thread and returns a
//! [`Transfer`] to wait on. The stream-ordered form will make a caller's stream wait on the
//! GPU side: a word in mapped pinned memory (`PinnedBuffer` is DEVICEMAP) is written by the host
//! once every copy of the call has completed, and `cuStreamWaitValue32` on the caller's stream
//! blocks later kernels until then — no host thread blocks, and the caller can queue its
//! kernels immediately.

pub mod bulk;
pub mod checksum;
pub mod driver;
pub mod gds;
pub mod gpu_bench_kernels;
pub mod gpu_cache;
pub mod gpu_io;
#[cfg(feature = "graph")]
pub mod graph_bfs;
pub mod mapped;
pub mod multi;
pub mod numa;
pub mod pattern;
pub mod recover;
pub mod soak_kernels;

pub use bulk::{
    BulkConfig, BulkFile, ColdReads, CudaBulk, Extent, FileRef, StagingAlloc, TransferReport,
    Writes,
};
pub use checksum::ChecksumKernel;
pub use driver::{available, Context, CudaError, DeviceBuffer, PinnedBuffer};
pub use multi::{MultiBulk, MultiReport};

use crate::{Error, Result};
use std::sync::Arc;

/// Whether to use GPUDirect Storage (cuFile), from `WARPFS_GDS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GdsMode {
    /// Use cuFile where it reports nvidia-fs or P2PDMA support, else the pipeline (default).
    Auto,
    /// Require cuFile; fail if it cannot be used.
    On,
    /// Never use cuFile.
    Off,
    /// Tests only (feature `fault-injection`): every aligned range takes the cuFile path of
    /// the engine, but the "cuFile" calls are done by `pread`/`pwrite` and synchronous copies
    /// ([`gds::GdsHandle::emulated`]) — warpfs's side of the path tested where cuFile cannot
    /// register files (no udev in a container, no nvidia-fs).
    #[cfg(feature = "fault-injection")]
    Emulated,
}

impl GdsMode {
    /// Reads `WARPFS_GDS` (unset = `auto`); an unknown value is a config error.
    pub fn from_env() -> Result<Self> {
        match std::env::var("WARPFS_GDS").ok().as_deref().map(str::trim) {
            None | Some("") | Some("auto") => Ok(Self::Auto),
            Some("on") | Some("1") => Ok(Self::On),
            Some("off") | Some("0") => Ok(Self::Off),
            Some(v) => Err(Error::Config(format!(
                "WARPFS_GDS={v:?}: use auto, on or off"
            ))),
        }
    }
}

/// A file owned by a background transfer.
#[derive(Debug, Clone)]
pub enum OwnedFile {
    /// A registered file table entry.
    Entry(Arc<crate::files::FileEntry>),
    /// A file opened for the bulk path.
    Bulk(Arc<BulkFile>),
}

impl From<Arc<crate::files::FileEntry>> for OwnedFile {
    fn from(e: Arc<crate::files::FileEntry>) -> Self {
        Self::Entry(e)
    }
}

impl From<Arc<BulkFile>> for OwnedFile {
    fn from(f: Arc<BulkFile>) -> Self {
        Self::Bulk(f)
    }
}

impl OwnedFile {
    fn as_ref(&self) -> FileRef<'_> {
        match self {
            Self::Entry(e) => FileRef::from(&**e),
            Self::Bulk(f) => FileRef::from(&**f),
        }
    }
}

/// A read running in the background ([`CudaBulk::submit_read`]); the device buffer comes back
/// from [`wait`](Self::wait).
#[derive(Debug)]
pub struct Transfer {
    handle: std::thread::JoinHandle<Result<(DeviceBuffer, TransferReport)>>,
}

impl Transfer {
    /// Whether the transfer has finished (successfully or not). Never blocks.
    pub fn is_finished(&self) -> bool {
        self.handle.is_finished()
    }

    /// Blocks until the transfer finishes; returns the buffer (filled, its copies complete) and
    /// the report.
    pub fn wait(self) -> Result<(DeviceBuffer, TransferReport)> {
        self.handle.join().unwrap_or_else(|_| {
            Err(Error::Config(
                "the background transfer thread panicked".into(),
            ))
        })
    }
}

impl CudaBulk {
    /// Starts reading `len` bytes at `offset` of `file` into `dst` (from byte 0) on a
    /// background thread and returns at once, so the caller can overlap other work (its own
    /// kernels, other files). Costs one thread spawn; calls on one engine still run one at a
    /// time.
    pub fn submit_read(
        self: &Arc<Self>,
        file: impl Into<OwnedFile>,
        offset: u64,
        mut dst: DeviceBuffer,
        len: u64,
    ) -> Transfer {
        let me = self.clone();
        let file = file.into();
        let handle = std::thread::spawn(move || {
            let r = me.read(file.as_ref(), offset, &mut dst, 0, len)?;
            Ok((dst, r))
        });
        Transfer { handle }
    }
}
