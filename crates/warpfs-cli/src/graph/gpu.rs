//! The GPU searches of `warpfs graph bfs` (feature `cuda`): the whole graph in GPU memory, and
//! warpfs file-backed arrays at each GPU cache size asked for.

use super::args::GpuReads;
use super::bfs::maybe_cold;
use super::report::Row;
use super::BfsArgs;
use crate::error::{bail, Context, Result};
use warpfs::backend::cuda::gpu_io::GpuIo;
use warpfs::backend::cuda::graph_bfs::{
    bfs_in_gpu_memory, bfs_through_warpfs, cache_counters, gpu_io_config, BfsKernels,
};
use warpfs::backend::cuda::{self, BulkConfig, CudaBulk};
use warpfs::graph::bfs::{first_difference, BfsResult, Traversal};
use warpfs::graph::{BfsMode, CsrFile, Direction};
use warpfs::{OpenOptions, Runtime};

/// Runs the GPU searches, appending rows; returns the device name.
#[allow(clippy::too_many_arguments)]
pub fn run(
    a: &BfsArgs,
    file: &CsrFile,
    source: u64,
    mode: BfsMode,
    cpu_search: &BfsResult,
    t: &Traversal,
    rows: &mut Vec<Row>,
    skipped: &mut Vec<String>,
) -> Result<Option<String>> {
    if let Err(e) = cuda::driver::init() {
        skipped.push(format!("GPU searches: {e}"));
        return Ok(None);
    }
    let h = *file.header();
    let cpu = &cpu_search.levels[..];
    let teps = |secs: f64| t.traversed_edges as f64 / secs;
    let mut cfg = warpfs::RuntimeConfig {
        readahead_pages: a.readahead,
        ..warpfs::RuntimeConfig::serving_gpus()
    };
    if let Some(c) = a.host_cache {
        cfg.cache.capacity = c as usize;
    }
    if let Some(w) = a.workers {
        cfg.workers = w.max(1);
    }

    // In GPU memory (upper bound). Its own runtime only hosts the channel the kernels need.
    let device;
    {
        let rt = Runtime::new(cfg.clone())?;
        let gpu = GpuIo::new(&rt, gpu_io_config(a.device, 4096))
            .ctx(|| "starting the GPU channel".into())?;
        device = gpu.context().name().to_string();
        let kernels = BfsKernels::new(&gpu)?;
        let bulk = CudaBulk::new(a.device, BulkConfig::default())?;
        let cold = maybe_cold(a.cold, file, skipped);
        let (r, load) = bfs_in_gpu_memory(&gpu, &kernels, &bulk, file, source, mode)
            .ctx(|| "BFS with the graph in GPU memory".into())?;
        let (ok, note) = check(&r.levels, cpu);
        let turns = other_directions(&r.directions, &cpu_search.directions);
        let secs = r.elapsed.as_secs_f64();
        rows.push(Row {
            method: "GPU memory".into(),
            seconds: secs,
            teps: teps(secs),
            gpu_cache_bytes: None,
            hit_rate: None,
            file_bytes_read: Some(load.bytes),
            gpu_bytes_loaded: None,
            io_amplification: Some(load.bytes as f64 / t.needed_bytes as f64),
            load_seconds: Some(load.elapsed.as_secs_f64()),
            matches_cpu: ok,
            notes: [
                Some(format!(
                    "load {:.2} s at {:.1} GB/s{} not counted",
                    load.elapsed.as_secs_f64(),
                    load.gb_per_s(),
                    if cold { " (cold)" } else { "" }
                )),
                note,
                turns,
            ]
            .into_iter()
            .flatten()
            .collect(),
        });
    }

    // Through warpfs, at each cache size: a fresh runtime and channel each (empty caches).
    let mut sizes = vec![a.gpu_cache];
    for s in &a.sweep_cache {
        if !sizes.contains(s) {
            sizes.push(*s);
        }
    }
    for size in sizes {
        let bytes = size.bytes(h.neighbour_bytes());
        let rt = Runtime::new(cfg.clone())?;
        let fh = rt
            .open(file.path(), OpenOptions::read_only())
            .ctx(|| format!("opening {}", file.path().display()))?;
        let gpu_cfg = warpfs::backend::cuda::gpu_io::GpuIoConfig {
            gpu_page_bytes: usize::try_from(a.gpu_page).unwrap_or(usize::MAX),
            ..gpu_io_config(a.device, bytes)
        };
        let mut gpu = GpuIo::new(&rt, gpu_cfg)
            .ctx(|| format!("starting the GPU channel with a {} GPU cache", size.label()))?;
        let kernels = BfsKernels::new(&gpu)?;
        let cold = maybe_cold(a.cold, file, skipped);
        // The file's view: mapped after the page cache was dropped (a cold mapping reads the
        // file from the disk: its time is reported beside the search's, as the GPU-memory
        // search's load is).
        let mut view_note = None;
        let mapped = match a.gpu_reads {
            GpuReads::Daemon => None,
            GpuReads::View => match gpu.map_file(&fh) {
                Ok(took) => Some(took),
                Err(e) => {
                    view_note = Some(format!(
                        "file not mapped into the GPU ({e}): misses went to the daemon"
                    ));
                    None
                }
            },
        };
        let before = (rt.stats(), cache_counters(&gpu));
        let r = bfs_through_warpfs(&gpu, &kernels, fh.raw(), &h, source, mode)
            .ctx(|| "BFS through warpfs file-backed arrays".into())?;
        let after = (rt.stats(), cache_counters(&gpu));
        let gpu_stats = match (after.1, before.1) {
            (Some(x), Some(y)) => Some(x.since(&y)),
            _ => None,
        };
        // Every byte the daemon read from the file: host-tier loads and reads around the tier;
        // with a view, every byte the GPU read from it: pages loaded into the GPU cache (the
        // daemon's few among them) and reads in place.
        let file_read = if mapped.is_some() {
            gpu_stats.map_or(0, |s| s.bytes_loaded + s.in_place_bytes) + r.in_place_bytes
        } else {
            (after.0.cache.bytes_loaded - before.0.cache.bytes_loaded)
                + (after.0.daemon.bypass_bytes_read - before.0.daemon.bypass_bytes_read)
        };
        let (mut ok, note) = check(&r.levels, cpu);
        let mut notes: Vec<String> = note.into_iter().collect();
        notes.extend(other_directions(&r.directions, &cpu_search.directions));
        if let Some(o) = r.offsets_load {
            notes.push(format!(
                "offsets copied into GPU memory in {:.1} ms (counted)",
                o.as_secs_f64() * 1e3
            ));
        }
        if r.array_errors > 0 {
            ok = false;
            notes.push(format!("{} array reads failed", r.array_errors));
        }
        if gpu_stats.is_none() {
            notes.push("no GPU cache counters in this build".into());
        }
        if file_read == 0 {
            notes.push("no file reads counted: I/O amplification unknown".into());
        }
        if let Some(took) = mapped {
            notes.push(format!(
                "file mapped into the GPU in {:.2} s{}, not counted",
                took.as_secs_f64(),
                if cold { " (cold)" } else { "" }
            ));
        }
        notes.extend(view_note);
        if cold {
            notes.push("cold".into());
        }
        let secs = r.elapsed.as_secs_f64();
        rows.push(Row {
            method: format!(
                "warpfs (GPU cache {}{})",
                size.label(),
                if mapped.is_some() { ", view" } else { "" }
            ),
            seconds: secs,
            teps: teps(secs),
            gpu_cache_bytes: Some(bytes),
            hit_rate: gpu_stats.and_then(|s| s.hit_rate()),
            file_bytes_read: Some(file_read),
            gpu_bytes_loaded: gpu_stats.map(|s| s.bytes_loaded),
            io_amplification: (file_read > 0).then(|| file_read as f64 / t.needed_bytes as f64),
            load_seconds: mapped.map(|d| d.as_secs_f64()),
            matches_cpu: ok,
            notes,
        });
    }
    if rows.is_empty() {
        bail!("no search ran");
    }
    Ok(Some(device))
}

/// A note where a GPU search turned at other levels than the CPU's (the same rule on the same
/// counts should not: worth a look, not a failure).
fn other_directions(gpu: &[Direction], cpu: &[Direction]) -> Option<String> {
    let s = |d: &[Direction]| d.iter().map(|x| x.short()).collect::<Vec<_>>().join(" ");
    (gpu != cpu).then(|| format!("levels ran {} (CPU: {})", s(gpu), s(cpu)))
}

/// Checks `levels` against the CPU's: `(matches, note)`.
pub fn check(levels: &[u32], cpu: &[u32]) -> (bool, Option<String>) {
    match first_difference(levels, cpu) {
        None => (true, None),
        Some((v, got, want)) => (
            false,
            Some(format!("vertex {v}: level {got}, CPU says {want}")),
        ),
    }
}
