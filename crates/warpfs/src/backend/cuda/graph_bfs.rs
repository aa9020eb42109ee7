//! BFS on the GPU over a CSR graph file (`crate::graph`), two ways, both level-synchronous
//! (one kernel launch per level, `graph_bfs.cu`; each level top-down or bottom-up as
//! [`DirectionPolicy`] says, the same rule as the CPU search's) and checked against the CPU BFS
//! by callers:
//!
//! - [`bfs_in_gpu_memory`]: the whole file loaded into device memory with [`CudaBulk::read`]
//!   first — the upper bound;
//! - [`bfs_through_warpfs`]: the kernels read the neighbour lists through `wfs_array<T>`
//!   (GPU-initiated, cached in the GPU page cache, served by the runtime's daemon or the
//!   file's view); the offsets are copied into device memory through a `wfs_array` first,
//!   inside the timed search (a bottom-up level reads the bounds of every unvisited vertex; BaM
//!   and EMOGI keep this array in GPU memory too).
//!
//! The GPU page cache's settings and counters are reached only through [`gpu_io_config`] and
//! [`cache_counters`], so a change of those names touches this one place.

use super::bulk::{BulkFile, CudaBulk, TransferReport};
use super::driver::DeviceBuffer;
use super::gpu_io::{GpuIo, GpuIoConfig, GpuModule, Kernel, KernelArg};
use crate::error::{Error, Result};
use crate::graph::direction::{BfsMode, Direction, DirectionPolicy};
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
    /// The direction of each level expanded, in order.
    pub directions: Vec<Direction>,
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
    /// Time to copy the offsets into device memory (warpfs search; part of `elapsed`).
    pub offsets_load: Option<Duration>,
}

/// The compiled BFS kernels (NVRTC; tens to hundreds of ms).
#[derive(Debug)]
pub struct BfsKernels {
    module: GpuModule,
}

impl BfsKernels {
    /// Compiles [`GRAPH_BFS_CU`] for `gpu`'s device.
    pub fn new(gpu: &GpuIo<'_>) -> Result<Self> {
        Self::with_options(gpu, &[])
    }

    /// Compiles [`GRAPH_BFS_CU`] with extra NVRTC options (e.g. `-DBFS_SPLIT=64ull`: tests
    /// reach the kernels' rarer paths on small graphs).
    pub fn with_options(gpu: &GpuIo<'_>, options: &[&str]) -> Result<Self> {
        Ok(Self {
            module: gpu.compile(GRAPH_BFS_CU, options)?,
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

/// Bytes of `struct bfs_split` in `graph_bfs.cu` (two u32, then three arrays of 1024 u64):
/// the long lists of a top-down level, shared out to every warp.
const SPLIT_BYTES: usize = 8 + 3 * 1024 * 8;

/// Device state of one search: the level of every vertex (the frontier is the vertices of the
/// previous level), the next frontier's counts (vertices, their degrees), the cursor the warps
/// take vertex chunks from, the frontier's bits for bottom-up levels and the long lists of a
/// top-down level.
struct Frontiers {
    levels: DeviceBuffer,
    counts: DeviceBuffer,
    cursor: DeviceBuffer,
    bits: DeviceBuffer,
    split: DeviceBuffer,
}

impl Frontiers {
    fn new(gpu: &GpuIo<'_>, vertices: u64) -> Result<Self> {
        let n = usize::try_from(vertices).map_err(|_| Error::Config("graph too large".into()))?;
        Ok(Self {
            levels: gpu.alloc(n * 4)?,
            counts: gpu.alloc(16)?,
            cursor: gpu.alloc(8)?,
            bits: gpu.alloc(n.div_ceil(32) * 4)?,
            split: gpu.alloc(SPLIT_BYTES)?,
        })
    }
}

/// Device addresses and sizes of one level's launch.
#[derive(Debug, Clone, Copy)]
struct Level {
    direction: Direction,
    grid: u32,
    next_level: u32,
    levels: u64,
    cursor: u64,
    counts: u64,
    /// The frontier's bits (bottom-up levels).
    front: u64,
    /// The long lists' shared state (top-down levels), zeroed.
    split: u64,
    /// 1: top-down kernels add claimed vertices' degrees (direction-optimizing searches).
    scout: u32,
}

impl Level {
    /// The level kernel's arguments: `head` (the search's own), then the level's (levels, the
    /// frontier's bits for a bottom-up level, cursor, counts, next level), `tail`, and for a
    /// top-down level the long lists' state and the scout flag — the order of the
    /// `bfs_level_*` / `bfs_bottom_up_*` parameters.
    fn args(&self, head: &[KernelArg], tail: &[KernelArg]) -> Vec<KernelArg> {
        let mut a = head.to_vec();
        a.push(KernelArg::U64(self.levels));
        if self.direction == Direction::BottomUp {
            a.push(KernelArg::U64(self.front));
        }
        a.extend([
            KernelArg::U64(self.cursor),
            KernelArg::U64(self.counts),
            KernelArg::U32(self.next_level),
        ]);
        a.extend_from_slice(tail);
        if self.direction == Direction::TopDown {
            a.extend([KernelArg::U64(self.split), KernelArg::U32(self.scout)]);
        }
        a
    }

    /// The kernel of this level's direction.
    fn kernel<'a, 'm>(
        &self,
        top_down: &'a Kernel<'m>,
        bottom_up: &'a Kernel<'m>,
    ) -> &'a Kernel<'m> {
        match self.direction {
            Direction::TopDown => top_down,
            Direction::BottomUp => bottom_up,
        }
    }
}

/// What one search starts from.
#[derive(Debug, Clone, Copy)]
struct Start {
    source: u64,
    source_degree: u64,
    mode: BfsMode,
    /// When the timed search began (the warpfs search's offsets copy is part of it).
    at: Instant,
}

/// Runs the level loop; `launch` queues one level's kernel.
fn level_loop(
    gpu: &GpuIo<'_>,
    kernels: &BfsKernels,
    h: &CsrHeader,
    start: Start,
    mut launch: impl FnMut(Level) -> Result<()>,
) -> Result<GpuBfsResult> {
    let Start {
        source,
        source_degree,
        mode,
        at: t,
    } = start;
    let vertices = h.vertices;
    if source >= vertices {
        return Err(Error::Config(format!(
            "source vertex {source} is not in the graph ({vertices} vertices)"
        )));
    }
    let mut f = Frontiers::new(gpu, vertices)?;
    f.levels.fill(0xFF)?;
    f.levels
        .copy_from_host(source as usize * 4, &0u32.to_le_bytes())?;
    let bits = kernels.module.kernel("bfs_frontier_bits")?;
    let mut policy = DirectionPolicy::new(mode, vertices, h.edges, source_degree);
    let mut len = 1u64;
    let mut sizes = Vec::new();
    let mut directions = Vec::new();
    let mut level_times = Vec::new();
    while len > 0 {
        let tl = Instant::now();
        // Per-level GPU-cache deltas only when someone reads the log: each read is a copy
        // from the device inside the timed loop.
        let stats0 = tracing::enabled!(tracing::Level::INFO)
            .then(|| gpu.cache_stats().ok())
            .flatten();
        sizes.push(len);
        let direction = policy.next(len);
        directions.push(direction);
        let level = sizes.len() as u32;
        f.counts.copy_from_host(0, &[0u8; 16])?;
        f.cursor.copy_from_host(0, &0u64.to_le_bytes())?;
        let grid = vertices.div_ceil(BLOCK_THREADS as u64).min(MAX_BLOCKS) as u32;
        if direction == Direction::TopDown {
            f.split.fill(0)?;
        }
        if direction == Direction::BottomUp {
            // SAFETY: bfs_frontier_bits(const unsigned *levels, u64 vertices, unsigned level,
            // unsigned *bits) reads levels[v] for v < vertices (a buffer of that many u32) and
            // writes bits[v / 32] (a buffer of vertices / 32 rounded up u32).
            unsafe {
                bits.launch(
                    (grid, 1, 1),
                    (BLOCK_THREADS, 1, 1),
                    0,
                    &[
                        KernelArg::U64(f.levels.ptr()),
                        KernelArg::U64(vertices),
                        KernelArg::U32(level - 1),
                        KernelArg::U64(f.bits.ptr()),
                    ],
                )?
            };
        }
        launch(Level {
            direction,
            grid,
            next_level: level,
            levels: f.levels.ptr(),
            cursor: f.cursor.ptr(),
            counts: f.counts.ptr(),
            front: f.bits.ptr(),
            split: f.split.ptr(),
            scout: u32::from(mode == BfsMode::DirectionOptimizing),
        })?;
        gpu.synchronize_within(LEVEL_WATCHDOG, &format!("BFS level {level}"))?;
        let mut c = [0u8; 16];
        f.counts.copy_to_host(0, &mut c)?;
        len = u64::from_le_bytes(c[..8].try_into().expect("8 bytes"));
        policy.done(u64::from_le_bytes(c[8..].try_into().expect("8 bytes")));
        let took = tl.elapsed();
        level_times.push(took);
        if let Some((a, b)) = stats0.and_then(|a| Some((a, gpu.cache_stats().ok()?))) {
            let d = b - a;
            tracing::info!(
                level,
                direction = direction.short(),
                frontier = sizes[sizes.len() - 1],
                ms = took.as_secs_f64() * 1e3,
                hits = d.hits,
                misses = d.misses,
                coalesced = d.coalesced,
                evictions = d.evictions,
                bypassed = d.bypassed,
                in_place = d.in_place,
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
        directions,
        frontier_sizes: sizes,
        elapsed,
        level_times,
        array_errors: 0,
        in_place_bytes: 0,
        offsets_load: None,
    })
}

/// BFS from `source` with the whole CSR file in GPU memory: loads it with `bulk` (the report
/// says how fast), then runs the level kernels on plain device pointers, top-down only or
/// direction-optimizing (`mode`; bottom-up levels need a symmetric graph). Needs GPU memory
/// for the file plus 4.125 bytes per vertex.
pub fn bfs_in_gpu_memory(
    gpu: &GpuIo<'_>,
    kernels: &BfsKernels,
    bulk: &CudaBulk,
    graph: &CsrFile,
    source: u64,
    mode: BfsMode,
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
    let degree = source_degree(graph.offsets(), source);
    let top_down = kernels.module.kernel("bfs_level_mem")?;
    let bottom_up = kernels.module.kernel("bfs_bottom_up_mem")?;
    let (offs, nb) = (dev.ptr() + h.offsets_at, dev.ptr() + h.neighbours_at);
    let start = Start {
        source,
        source_degree: degree,
        mode,
        at: Instant::now(),
    };
    let r = level_loop(gpu, kernels, &h, start, |l| {
        let head = [
            KernelArg::U64(offs),
            KernelArg::U64(nb),
            KernelArg::U64(h.vertices),
            KernelArg::U64(h.edges),
        ];
        // SAFETY: Level::args gives bfs_level_mem's / bfs_bottom_up_mem's parameters in order
        // (front only for the latter, split and scout only for the former; split is the
        // search's zeroed buffer of SPLIT_BYTES, the size of struct bfs_split); offs/nb point
        // into `dev` (the whole file, alive for the call; the header was validated, so n + 1
        // offsets and m neighbours lie inside it, and the kernels cut list bounds to m);
        // levels/front/cursor/counts into the search's buffers of n u32 / n / 32 u32 / one
        // u64 / two u64; the kernels write levels[v] only for v < n and add to the cursor and
        // the counts only; level_loop synchronises before the buffers go.
        unsafe {
            l.kernel(&top_down, &bottom_up).launch(
                (l.grid, 1, 1),
                (BLOCK_THREADS, 1, 1),
                0,
                &l.args(&head, &[]),
            )
        }
    });
    drop(dev);
    Ok((r?, load))
}

/// The degree of `source` from the offsets (0 where they are out of order or short).
fn source_degree(offsets: &[u64], source: u64) -> u64 {
    let s = source as usize;
    match (offsets.get(s), offsets.get(s + 1)) {
        (Some(&a), Some(&b)) => b.saturating_sub(a),
        _ => 0,
    }
}

/// Grid of the offsets copy: four blocks of 8 warps per SM of an H100 (each warp a slice).
const LOAD_BLOCKS: u32 = 528;

/// BFS from `source` where the kernels read the CSR file `fh` (registered with the runtime
/// that serves `gpu`) through `wfs_array` — every access GPU-initiated, cached in the GPU page
/// cache (or read in place from the file's view, [`GpuIo::map_file`]). The offsets are copied
/// into device memory through a `wfs_array` first (timed as part of the search,
/// [`GpuBfsResult::offsets_load`]); then the levels run top-down or bottom-up as `mode` and
/// the direction policy say. Needs (n + 1) × 8 + 4.125 × n bytes of GPU memory besides the
/// cache.
pub fn bfs_through_warpfs(
    gpu: &GpuIo<'_>,
    kernels: &BfsKernels,
    fh: u32,
    header: &CsrHeader,
    source: u64,
    mode: BfsMode,
) -> Result<GpuBfsResult> {
    u32_indices(header)?;
    let h = *header;
    if source >= h.vertices {
        return Err(Error::Config(format!(
            "source vertex {source} is not in the graph ({} vertices)",
            h.vertices
        )));
    }
    let ctx = gpu.context_ptr();
    let mut moved = gpu.alloc(8)?;
    moved.fill(0)?;
    let moved_ptr = moved.ptr();
    let n_offsets = h.vertices + 1;
    let offsets = gpu.alloc(
        usize::try_from(n_offsets * 8).map_err(|_| Error::Config("graph too large".into()))?,
    )?;
    let t = Instant::now();
    // SAFETY: bfs_load_offsets(ctx, fh, offsets_at, count, dst, moved) writes dst[0..count)
    // (a buffer of count u64) and adds to *moved (one u64); ctx is gpu's live context; the
    // array reads are bounds-checked by wfs_array against count.
    unsafe {
        kernels.module.kernel("bfs_load_offsets")?.launch(
            (LOAD_BLOCKS, 1, 1),
            (BLOCK_THREADS, 1, 1),
            0,
            &[
                KernelArg::U64(ctx),
                KernelArg::U32(fh),
                KernelArg::U64(h.offsets_at),
                KernelArg::U64(n_offsets),
                KernelArg::U64(offsets.ptr()),
                KernelArg::U64(moved_ptr),
            ],
        )?
    };
    gpu.synchronize_within(LEVEL_WATCHDOG, "copying the offsets")?;
    let offsets_load = t.elapsed();
    let mut two = [0u8; 16];
    offsets.copy_to_host(source as usize * 8, &mut two)?;
    let degree = u64::from_le_bytes(two[8..].try_into().expect("8 bytes"))
        .saturating_sub(u64::from_le_bytes(two[..8].try_into().expect("8 bytes")));
    let top_down = kernels.module.kernel("bfs_level_wfs")?;
    let bottom_up = kernels.module.kernel("bfs_bottom_up_wfs")?;
    let offs = offsets.ptr();
    let start = Start {
        source,
        source_degree: degree,
        mode,
        at: t,
    };
    let mut r = level_loop(gpu, kernels, &h, start, |l| {
        let head = [
            KernelArg::U64(ctx),
            KernelArg::U32(fh),
            KernelArg::U64(offs),
            KernelArg::U64(h.vertices),
            KernelArg::U64(h.neighbours_at),
            KernelArg::U64(h.edges),
        ];
        // SAFETY: Level::args gives bfs_level_wfs's / bfs_bottom_up_wfs's parameters in order
        // (front only for the latter, split and scout only for the former; split is the
        // search's zeroed buffer of SPLIT_BYTES, the size of struct bfs_split); ctx is gpu's
        // live context (gpu outlives the call; level_loop synchronises); offs is the device
        // copy of the n + 1 offsets (alive until after the loop; the kernels cut list bounds
        // to m whatever it holds); levels/front/cursor/counts are the search's buffers (n u32,
        // n / 32 u32, one u64, two u64); the kernels write levels[v] only for v < n (checked
        // in the kernel, whatever the file holds) and add to the cursor, the counts and
        // `moved` (one u64, alive until after the loop) only.
        unsafe {
            l.kernel(&top_down, &bottom_up).launch(
                (l.grid, 1, 1),
                (BLOCK_THREADS, 1, 1),
                0,
                &l.args(&head, &[KernelArg::U64(moved_ptr)]),
            )
        }
    })?;
    drop(offsets);
    r.offsets_load = Some(offsets_load);
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
