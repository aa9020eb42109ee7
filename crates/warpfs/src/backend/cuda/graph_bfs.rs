//! BFS on the GPU over a CSR graph file (`crate::graph`), two ways, both level-synchronous
//! (one kernel launch per level, `graph_bfs.cu`) and checked against the CPU BFS by callers:
//!
//! - [`bfs_in_gpu_memory`]: the whole file loaded into device memory with [`CudaBulk::read`]
//!   first — the upper bound;
//! - [`bfs_through_warpfs`]: the kernel reads offsets and neighbours through `wfs_array<T>`
//!   (GPU-initiated, cached in the GPU page cache, served by the runtime's daemon).
//!
//! The GPU page cache's settings and counters are reached only through [`gpu_io_config`] and
//! [`cache_counters`], so a change of those names touches this one place.

use super::bulk::{BulkFile, CudaBulk, TransferReport};
use super::driver::DeviceBuffer;
use super::gpu_io::{GpuIo, GpuIoConfig, GpuModule, KernelArg};
use crate::error::{Error, Result};
use crate::graph::{CsrFile, CsrHeader, UNREACHED};
use std::time::{Duration, Instant};

/// Longest one BFS kernel may run before the watchdog ends it (device calls are bounded by
/// the channel timeout each; a level far slower than this is a hang).
const LEVEL_WATCHDOG: Duration = Duration::from_secs(600);

/// The BFS kernels' CUDA source (includes `warpfs.cuh`).
pub const GRAPH_BFS_CU: &str = include_str!("graph_bfs.cu");

/// Threads per block of the level kernels (8 warps).
const BLOCK_THREADS: u32 = 256;
/// Most blocks per level launch (grid-stride beyond).
const MAX_BLOCKS: u64 = 4096;

/// The channel settings for a BFS through warpfs with a GPU page cache of `gpu_cache_bytes`
/// (pages of the default size; set `gpu_page_bytes` on the result for others).
pub fn gpu_io_config(device: usize, gpu_cache_bytes: u64) -> GpuIoConfig {
    GpuIoConfig {
        device,
        gpu_cache_bytes: usize::try_from(gpu_cache_bytes).unwrap_or(usize::MAX),
        ..GpuIoConfig::default()
    }
}

/// Counters of the GPU page cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GpuCacheCounters {
    /// Element reads served from the cache.
    pub hits: u64,
    /// Element reads that had to load a page.
    pub misses: u64,
    /// Bytes loaded into the cache (through the daemon or from the file's view).
    pub bytes_loaded: u64,
    /// Element reads served in place from the file's view (misses of a full cache).
    pub in_place: u64,
    /// Bytes of those element reads.
    pub in_place_bytes: u64,
}

impl GpuCacheCounters {
    /// Counters accumulated since `earlier`.
    pub fn since(&self, earlier: &Self) -> Self {
        Self {
            hits: self.hits.saturating_sub(earlier.hits),
            misses: self.misses.saturating_sub(earlier.misses),
            bytes_loaded: self.bytes_loaded.saturating_sub(earlier.bytes_loaded),
            in_place: self.in_place.saturating_sub(earlier.in_place),
            in_place_bytes: self.in_place_bytes.saturating_sub(earlier.in_place_bytes),
        }
    }

    /// hits / (hits + misses + in-place reads), if any lookups happened.
    pub fn hit_rate(&self) -> Option<f64> {
        let total = self.hits + self.misses + self.in_place;
        (total > 0).then(|| self.hits as f64 / total as f64)
    }
}

/// The GPU page cache's counters of `gpu` (`None` if they cannot be read). Coalesced
/// accesses (served by another lane's or warp's load) count as hits.
pub fn cache_counters(gpu: &GpuIo<'_>) -> Option<GpuCacheCounters> {
    let s = gpu.cache_stats().ok()?;
    Some(GpuCacheCounters {
        hits: s.hits + s.coalesced,
        misses: s.misses + s.bypassed,
        bytes_loaded: s.bytes_loaded,
        in_place: s.in_place,
        in_place_bytes: s.in_place_bytes,
    })
}

/// The outcome of a GPU BFS.
#[derive(Debug, Clone)]
pub struct GpuBfsResult {
    /// Level per vertex, [`UNREACHED`] where not reached.
    pub levels: Vec<u32>,
    /// Levels of the search (frontiers expanded).
    pub depth: u32,
    /// Size of each frontier expanded (the source's first).
    pub frontier_sizes: Vec<u64>,
    /// Wall time of the level loop (first launch to last frontier count read back).
    pub elapsed: Duration,
    /// Wall time of each level (launch to its frontier count read back), in order.
    pub level_times: Vec<Duration>,
    /// File-backed array reads that failed (returned 0 instead of data); 0 for the
    /// in-memory search. A non-zero count makes the levels untrustworthy.
    pub array_errors: u64,
    /// Bytes of neighbour lists the kernels read in place from the file's view
    /// ([`GpuIo::map_file`]; 32-byte sectors touched); 0 without a view. Element reads in
    /// place are in the cache counters ([`GpuCacheCounters::in_place_bytes`]).
    pub in_place_bytes: u64,
}

/// The compiled BFS kernels (NVRTC; tens to hundreds of ms).
#[derive(Debug)]
pub struct BfsKernels {
    module: GpuModule,
}

impl BfsKernels {
    /// Compiles [`GRAPH_BFS_CU`] for `gpu`'s device.
    pub fn new(gpu: &GpuIo<'_>) -> Result<Self> {
        Ok(Self {
            module: gpu.compile(GRAPH_BFS_CU, &[])?,
        })
    }
}

fn u32_indices(h: &CsrHeader) -> Result<()> {
    if h.index_bytes != 4 {
        return Err(Error::Config(
            "the GPU BFS reads graphs with 4-byte neighbour indices (≤ 2^32 vertices)".into(),
        ));
    }
    Ok(())
}

/// Device state of one search: the level of every vertex (the frontier is the vertices of the
/// previous level), the next frontier's size and the cursor the warps take vertex chunks from.
struct Frontiers {
    levels: DeviceBuffer,
    count: DeviceBuffer,
    cursor: DeviceBuffer,
}

impl Frontiers {
    fn new(gpu: &GpuIo<'_>, vertices: u64) -> Result<Self> {
        let n = usize::try_from(vertices).map_err(|_| Error::Config("graph too large".into()))?;
        Ok(Self {
            levels: gpu.alloc(n * 4)?,
            count: gpu.alloc(8)?,
            cursor: gpu.alloc(8)?,
        })
    }
}

/// Device addresses and sizes of one level's launch.
#[derive(Debug, Clone, Copy)]
struct Level {
    grid: u32,
    next_level: u32,
    levels: u64,
    cursor: u64,
    count: u64,
}

/// Runs the level loop; `launch` queues one level's kernel.
fn level_loop(
    gpu: &GpuIo<'_>,
    vertices: u64,
    source: u64,
    mut launch: impl FnMut(Level) -> Result<()>,
) -> Result<GpuBfsResult> {
    if source >= vertices {
        return Err(Error::Config(format!(
            "source vertex {source} is not in the graph ({vertices} vertices)"
        )));
    }
    let mut f = Frontiers::new(gpu, vertices)?;
    f.levels.fill(0xFF)?;
    f.levels
        .copy_from_host(source as usize * 4, &0u32.to_le_bytes())?;
    let mut len = 1u64;
    let mut sizes = Vec::new();
    let mut level_times = Vec::new();
    let t = Instant::now();
    while len > 0 {
        let tl = Instant::now();
        // Per-level GPU-cache deltas only when someone reads the log: each read is a copy
        // from the device inside the timed loop.
        let stats0 = tracing::enabled!(tracing::Level::INFO)
            .then(|| gpu.cache_stats().ok())
            .flatten();
        sizes.push(len);
        let level = sizes.len() as u32;
        f.count.copy_from_host(0, &0u64.to_le_bytes())?;
        f.cursor.copy_from_host(0, &0u64.to_le_bytes())?;
        let grid = vertices.div_ceil(BLOCK_THREADS as u64).min(MAX_BLOCKS) as u32;
        launch(Level {
            grid,
            next_level: level,
            levels: f.levels.ptr(),
            cursor: f.cursor.ptr(),
            count: f.count.ptr(),
        })?;
        gpu.synchronize_within(LEVEL_WATCHDOG, &format!("BFS level {level}"))?;
        let mut c = [0u8; 8];
        f.count.copy_to_host(0, &mut c)?;
        len = u64::from_le_bytes(c);
        let took = tl.elapsed();
        level_times.push(took);
        if let Some((a, b)) = stats0.and_then(|a| Some((a, gpu.cache_stats().ok()?))) {
            let d = b - a;
            tracing::info!(
                level,
                frontier = sizes[sizes.len() - 1],
                ms = took.as_secs_f64() * 1e3,
                hits = d.hits,
                misses = d.misses,
                coalesced = d.coalesced,
                evictions = d.evictions,
                bypassed = d.bypassed,
                "BFS level done"
            );
        }
        if len > vertices {
            return Err(Error::Config(format!(
                "BFS kernel reported a frontier of {len} vertices in a graph of {vertices}"
            )));
        }
    }
    let elapsed = t.elapsed();
    let mut raw = vec![0u8; vertices as usize * 4];
    f.levels.copy_to_host(0, &mut raw)?;
    let levels: Vec<u32> = raw
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes(c.try_into().expect("4 bytes")))
        .collect();
    debug_assert!(
        levels[source as usize] == 0
            && levels
                .iter()
                .all(|&l| l == UNREACHED || l < sizes.len() as u32)
    );
    Ok(GpuBfsResult {
        levels,
        depth: sizes.len() as u32,
        frontier_sizes: sizes,
        elapsed,
        level_times,
        array_errors: 0,
        in_place_bytes: 0,
    })
}

/// BFS from `source` with the whole CSR file in GPU memory: loads it with `bulk` (the report
/// says how fast), then runs the level kernels on plain device pointers. Needs GPU memory for
/// the file plus 4 bytes per vertex.
pub fn bfs_in_gpu_memory(
    gpu: &GpuIo<'_>,
    kernels: &BfsKernels,
    bulk: &CudaBulk,
    graph: &CsrFile,
    source: u64,
) -> Result<(GpuBfsResult, TransferReport)> {
    let h = *graph.header();
    u32_indices(&h)?;
    let size = h.file_bytes();
    let file = BulkFile::open(graph.path())?;
    let mut dev =
        bulk.alloc(usize::try_from(size).map_err(|_| Error::Config("graph too large".into()))?)?;
    let load = bulk.read(&file, 0, &mut dev, 0, size)?;
    if load.bytes != size {
        return Err(Error::Range(format!(
            "loaded {} of {size} bytes of {}: the file changed; try again",
            load.bytes,
            graph.path().display()
        )));
    }
    let k = kernels.module.kernel("bfs_level_mem")?;
    let (offs, nb) = (dev.ptr() + h.offsets_at, dev.ptr() + h.neighbours_at);
    let r = level_loop(gpu, h.vertices, source, |l| {
        // SAFETY: the arguments match bfs_level_mem's parameters; offs/nb point into `dev`
        // (the whole file, alive for the call; the header was validated, so offsets and
        // neighbours lie inside it), levels/cursor/count into the search's buffers of n u32 /
        // one u64 / one u64; the kernel reads and writes levels[v] only for v < n, and adds
        // to the cursor and the count only; level_loop synchronises before the buffers go.
        unsafe {
            k.launch(
                (l.grid, 1, 1),
                (BLOCK_THREADS, 1, 1),
                0,
                &[
                    KernelArg::U64(offs),
                    KernelArg::U64(nb),
                    KernelArg::U64(h.vertices),
                    KernelArg::U64(l.levels),
                    KernelArg::U64(l.cursor),
                    KernelArg::U64(l.count),
                    KernelArg::U32(l.next_level),
                ],
            )
        }
    });
    drop(dev);
    Ok((r?, load))
}

/// BFS from `source` where the kernels read the CSR file `fh` (registered with the runtime
/// that serves `gpu`) through `wfs_array` — every access GPU-initiated, cached in the GPU
/// page cache. Needs 4 bytes of GPU memory per vertex besides the cache.
pub fn bfs_through_warpfs(
    gpu: &GpuIo<'_>,
    kernels: &BfsKernels,
    fh: u32,
    header: &CsrHeader,
    source: u64,
) -> Result<GpuBfsResult> {
    u32_indices(header)?;
    let h = *header;
    let k = kernels.module.kernel("bfs_level_wfs")?;
    let ctx = gpu.context_ptr();
    let mut moved = gpu.alloc(8)?;
    moved.fill(0)?;
    let moved_ptr = moved.ptr();
    let mut r = level_loop(gpu, h.vertices, source, |l| {
        // SAFETY: the arguments match bfs_level_wfs's parameters; ctx is gpu's live context
        // (gpu outlives the call; level_loop synchronises); levels/cursor/count are the
        // search's buffers (n u32, one u64, one u64); the kernel reads and writes levels[v]
        // only for v < n (checked in the kernel, whatever the file holds) and adds to the
        // cursor, the count and `moved` (one u64, alive until after the loop) only.
        unsafe {
            k.launch(
                (l.grid, 1, 1),
                (BLOCK_THREADS, 1, 1),
                0,
                &[
                    KernelArg::U64(ctx),
                    KernelArg::U32(fh),
                    KernelArg::U64(h.offsets_at),
                    KernelArg::U64(h.vertices),
                    KernelArg::U64(h.neighbours_at),
                    KernelArg::U64(h.edges),
                    KernelArg::U64(l.levels),
                    KernelArg::U64(l.cursor),
                    KernelArg::U64(l.count),
                    KernelArg::U32(l.next_level),
                    KernelArg::U64(moved_ptr),
                ],
            )
        }
    })?;
    let mut m = [0u8; 8];
    moved.copy_to_host(0, &mut m)?;
    r.in_place_bytes = u64::from_le_bytes(m);
    let out = gpu.alloc(8)?;
    // SAFETY: bfs_wfs_errors(const wfs_ctx_t*, unsigned long long*) writes one u64 to out.
    unsafe {
        kernels.module.kernel("bfs_wfs_errors")?.launch(
            (1, 1, 1),
            (1, 1, 1),
            0,
            &[KernelArg::U64(ctx), KernelArg::U64(out.ptr())],
        )?
    };
    gpu.synchronize_within(LEVEL_WATCHDOG, "bfs_wfs_errors")?;
    let mut c = [0u8; 8];
    out.copy_to_host(0, &mut c)?;
    r.array_errors = u64::from_le_bytes(c);
    Ok(r)
}
