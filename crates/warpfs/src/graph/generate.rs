//! Edge stream → symmetric CSR file without self-loops or repeated edges, in bounded memory,
//! on all cores.
//!
//! 1. **Count**: one parallel pass over the stream counts each vertex's raw degree (both
//!    directions of every non-loop edge; repeats included).
//! 2. **Buckets**: consecutive vertex ranges whose raw entries fit the memory budget.
//! 3. **Per bucket**: one parallel pass over the regenerated stream scatters the entries whose
//!    source lies in the bucket into place (per-vertex atomic cursors); then, in parallel per
//!    run of vertices, each list is sorted and deduplicated; the lists are appended to the
//!    file in vertex order.
//!
//! Memory: the budget (raw entries × 4 bytes of the largest bucket) + 4 bytes per vertex
//! (raw degrees) + ~20 bytes per vertex of the current bucket. Time: (1 + buckets) passes of
//! edge generation + one sort of every list + one write of the file.

use super::edges::GraphSpec;
use super::error::{GraphError, Result};
use super::format::{CsrHeader, CsrWriter, FLAG_SYMMETRIC};
use rayon::prelude::*;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Edges generated per parallel task.
const EDGE_CHUNK: u64 = 1 << 16;

/// Settings of [`generate`].
pub struct GenerateOptions<'a> {
    /// Most bytes of raw (not yet deduplicated) neighbour entries held at once; more vertices
    /// than fit make more passes. A single vertex's list is always held whole.
    pub memory_bytes: u64,
    /// Progress: called with (edges just processed, total edge visits of all passes as known
    /// now — it grows once the count pass has sized the buckets), from any thread.
    pub progress: Option<&'a (dyn Fn(u64, u64) + Sync)>,
}

impl std::fmt::Debug for GenerateOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GenerateOptions")
            .field("memory_bytes", &self.memory_bytes)
            .finish_non_exhaustive()
    }
}

impl Default for GenerateOptions<'_> {
    fn default() -> Self {
        Self {
            memory_bytes: 4 << 30,
            progress: None,
        }
    }
}

/// What [`generate`] did.
#[derive(Debug, Clone)]
pub struct GenerateReport {
    /// The written file's header (vertex and final edge counts).
    pub header: CsrHeader,
    /// Edges generated (before symmetrising).
    pub generated_edges: u64,
    /// Generated edges dropped as self-loops.
    pub self_loops: u64,
    /// Directed entries dropped as repeats.
    pub duplicates: u64,
    /// Passes over the edge stream (1 count + one per bucket).
    pub passes: u32,
    /// Wall time.
    pub elapsed: Duration,
}

/// Generates `spec` into a CSR file at `path` (see the module doc for the method and costs).
pub fn generate(
    spec: &GraphSpec,
    path: &Path,
    opts: &GenerateOptions<'_>,
) -> Result<GenerateReport> {
    spec.check()?;
    let t0 = Instant::now();
    let n = spec.vertices() as usize;
    let total_edges = spec.generated_edges();
    let chunks = total_edges.div_ceil(EDGE_CHUNK);
    let planned = AtomicU64::new(2 * total_edges);
    let report = |k: u64| {
        if let Some(p) = opts.progress {
            p(k, planned.load(Ordering::Relaxed))
        }
    };

    // 1. Raw degrees.
    let mut degrees: Vec<AtomicU32> = Vec::new();
    degrees.resize_with(n, || AtomicU32::new(0));
    let self_loops = AtomicU64::new(0);
    (0..chunks).into_par_iter().for_each(|c| {
        let (lo, hi) = (c * EDGE_CHUNK, ((c + 1) * EDGE_CHUNK).min(total_edges));
        let mut loops = 0;
        for i in lo..hi {
            let (u, v) = spec.edge(i);
            if u == v {
                loops += 1;
            } else {
                degrees[u as usize].fetch_add(1, Ordering::Relaxed);
                degrees[v as usize].fetch_add(1, Ordering::Relaxed);
            }
        }
        self_loops.fetch_add(loops, Ordering::Relaxed);
        report(hi - lo);
    });
    let degrees: Vec<u32> = degrees.into_iter().map(AtomicU32::into_inner).collect();
    let self_loops = self_loops.into_inner();

    // 2. Buckets of consecutive vertices within the budget.
    let budget = (opts.memory_bytes / 4).max(1);
    let mut buckets = Vec::new();
    let (mut lo, mut acc) = (0usize, 0u64);
    for (v, &d) in degrees.iter().enumerate() {
        if acc + d as u64 > budget && v > lo {
            buckets.push(lo..v);
            lo = v;
            acc = 0;
        }
        acc += d as u64;
    }
    buckets.push(lo..n);
    planned.store((1 + buckets.len() as u64) * total_edges, Ordering::Relaxed);

    // 3. Scatter, sort, deduplicate, write — bucket by bucket.
    let mut writer = CsrWriter::create(path, n as u64, FLAG_SYMMETRIC)?;
    let mut raw_total = 0u64;
    let threads = rayon::current_num_threads();
    for range in &buckets {
        let nv = range.len();
        let mut start = Vec::with_capacity(nv + 1);
        let mut s = 0u64;
        start.push(0);
        for &d in &degrees[range.clone()] {
            s += d as u64;
            start.push(s);
        }
        raw_total += s;
        let len = usize::try_from(s).map_err(|_| GraphError::Config("bucket too large".into()))?;
        let mut slots: Vec<AtomicU32> = Vec::new();
        slots.resize_with(len, || AtomicU32::new(0));
        let mut cursor: Vec<AtomicU32> = Vec::new();
        cursor.resize_with(nv, || AtomicU32::new(0));
        let (blo, bhi) = (range.start as u32, range.end as u64);
        let put = |src: u32, dst: u32| {
            if (src as u64) < bhi && src >= blo {
                let r = (src - blo) as usize;
                let at = start[r] + cursor[r].fetch_add(1, Ordering::Relaxed) as u64;
                slots[at as usize].store(dst, Ordering::Relaxed);
            }
        };
        (0..chunks).into_par_iter().for_each(|c| {
            let (lo, hi) = (c * EDGE_CHUNK, ((c + 1) * EDGE_CHUNK).min(total_edges));
            for i in lo..hi {
                let (u, v) = spec.edge(i);
                if u != v {
                    put(u, v);
                    put(v, u);
                }
            }
            report(hi - lo);
        });
        drop(cursor);
        let mut slots: Vec<u32> = slots.into_iter().map(AtomicU32::into_inner).collect();

        // Runs of vertices, each with its disjoint part of `slots`.
        let run = (nv / (threads * 16)).max(1024);
        let mut parts = Vec::with_capacity(nv.div_ceil(run));
        let mut rest: &mut [u32] = &mut slots;
        let mut v0 = 0usize;
        while v0 < nv {
            let v1 = (v0 + run).min(nv);
            let (head, tail) = rest.split_at_mut((start[v1] - start[v0]) as usize);
            parts.push((v0, v1, head));
            rest = tail;
            v0 = v1;
        }
        let done: Vec<(Vec<u64>, usize)> = parts
            .par_iter_mut()
            .map(|(v0, v1, part)| {
                let base = start[*v0];
                let mut degs = Vec::with_capacity(*v1 - *v0);
                let mut w = 0usize;
                for v in *v0..*v1 {
                    let (a, b) = ((start[v] - base) as usize, (start[v + 1] - base) as usize);
                    let list = &mut part[a..b];
                    list.sort_unstable();
                    let mut k = 0usize;
                    for j in 0..list.len() {
                        if j == 0 || list[j] != list[j - 1] {
                            list[k] = list[j];
                            k += 1;
                        }
                    }
                    part.copy_within(a..a + k, w);
                    w += k;
                    degs.push(k as u64);
                }
                (degs, w)
            })
            .collect();
        for ((_, _, part), (degs, w)) in parts.iter().zip(&done) {
            writer.append(degs, &part[..*w])?;
        }
    }
    let header = writer.finish()?;
    Ok(GenerateReport {
        duplicates: raw_total - header.edges,
        header,
        generated_edges: total_edges,
        self_loops,
        passes: 1 + buckets.len() as u32,
        elapsed: t0.elapsed(),
    })
}
