//! Edge stream → symmetric CSR file without self-loops or repeated edges, in bounded memory,
//! on all cores.
//!
//! 1. **Count**: one parallel pass over the stream counts each vertex's raw degree (both
//!    directions of every non-loop edge; repeats included), in private per-thread counters
//!    (4 bytes × vertices × threads) when they fit half the budget.
//! 2. **Buckets**: consecutive vertex ranges whose raw entries fit the memory budget.
//! 3. **Per bucket**: one parallel pass over the regenerated stream appends the entries whose
//!    source lies in the bucket to per-thread, per-group vectors (a group: consecutive
//!    vertices with ~2^18 raw entries, cache-sized); then each group, in parallel, places its
//!    entries into its vertices' lists, sorts and deduplicates each list; the lists are
//!    appended to the file in vertex order. No atomics on the hot path (a locked add per
//!    entry stalls on every cache miss).
//!
//! Memory: the budget (12 bytes per raw entry of the largest bucket: the 8-byte pairs, then
//! the 4-byte lists) + 4 bytes per vertex (raw degrees) + ~20 bytes per vertex of the current
//! bucket. Time: (1 + buckets) passes of edge generation + one sort of every list + one
//! write of the file.

use super::edges::GraphSpec;
use super::error::{GraphError, Result};
use super::format::{CsrHeader, CsrWriter, FLAG_SYMMETRIC};
use rayon::prelude::*;
use std::path::Path;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Edges generated per parallel task.
const EDGE_CHUNK: u64 = 1 << 16;
/// Raw entries per placement group (≈1 MiB of lists: cache-sized).
const GROUP_ENTRIES: u64 = 1 << 18;
/// Most placement groups per bucket.
const MAX_GROUPS: u64 = 1 << 14;

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
    let stream = spec.stream();
    let total_edges = spec.generated_edges();
    let chunks = total_edges.div_ceil(EDGE_CHUNK);
    let planned = AtomicU64::new(2 * total_edges);
    let report = |k: u64| {
        if let Some(p) = opts.progress {
            p(k, planned.load(Ordering::Relaxed))
        }
    };

    // 1. Raw degrees: private counters per thread where they fit half the budget (no locked
    // adds: each would stall on its cache miss), else shared atomic counters.
    let threads = rayon::current_num_threads();
    let (degrees, self_loops) = if (threads as u64) * (n as u64) * 4 <= opts.memory_bytes / 2 {
        let per = chunks.div_ceil(threads as u64);
        let partial: Vec<(Vec<u32>, u64)> = (0..threads as u64)
            .into_par_iter()
            .map(|t| {
                let mut d = vec![0u32; n];
                let mut loops = 0u64;
                for c in t * per..((t + 1) * per).min(chunks) {
                    let (lo, hi) = (c * EDGE_CHUNK, ((c + 1) * EDGE_CHUNK).min(total_edges));
                    for i in lo..hi {
                        let (u, v) = stream.edge(i);
                        if u == v {
                            loops += 1;
                        } else {
                            d[u as usize] += 1;
                            d[v as usize] += 1;
                        }
                    }
                    report(hi - lo);
                }
                (d, loops)
            })
            .collect();
        let loops = partial.iter().map(|p| p.1).sum();
        let mut degrees = vec![0u32; n];
        degrees
            .par_chunks_mut(1 << 16)
            .enumerate()
            .for_each(|(k, out)| {
                let (at, len) = (k << 16, out.len());
                for (p, _) in &partial {
                    for (o, x) in out.iter_mut().zip(&p[at..at + len]) {
                        *o += x;
                    }
                }
            });
        (degrees, loops)
    } else {
        let mut degrees: Vec<AtomicU32> = Vec::new();
        degrees.resize_with(n, || AtomicU32::new(0));
        let self_loops = AtomicU64::new(0);
        (0..chunks).into_par_iter().for_each(|c| {
            let (lo, hi) = (c * EDGE_CHUNK, ((c + 1) * EDGE_CHUNK).min(total_edges));
            let mut loops = 0;
            for i in lo..hi {
                let (u, v) = stream.edge(i);
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
        (
            degrees.into_iter().map(AtomicU32::into_inner).collect(),
            self_loops.into_inner(),
        )
    };

    // 2. Buckets of consecutive vertices within the budget.
    // 12 bytes per raw entry: an 8-byte (vertex, neighbour) pair while partitioning, then
    // 4 bytes in place.
    let budget = (opts.memory_bytes / 12).max(1);
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

    // 3. Per bucket: partition, place, sort, deduplicate, write.
    let mut writer = CsrWriter::create(path, n as u64, FLAG_SYMMETRIC)?;
    let mut raw_total = 0u64;
    for range in &buckets {
        let nv = range.len();
        let mut start = Vec::with_capacity(nv + 1);
        let mut s = 0u64;
        start.push(0u64);
        for &d in &degrees[range.clone()] {
            s += d as u64;
            start.push(s);
        }
        raw_total += s;
        let len = usize::try_from(s).map_err(|_| GraphError::Config("bucket too large".into()))?;

        // Groups: runs of consecutive vertices with about GROUP_ENTRIES raw entries each, so
        // one group's lists fit a core's cache while they are placed and sorted.
        let want = (s / GROUP_ENTRIES).clamp(threads as u64 * 4, MAX_GROUPS) as usize;
        let per = s.div_ceil(want as u64).max(1);
        let mut bounds = vec![0usize]; // group g = vertices bounds[g] .. bounds[g + 1] (bucket-relative)
        for (v, &at) in start[..nv].iter().enumerate() {
            if at >= per * bounds.len() as u64 && v > *bounds.last().expect("non-empty") {
                bounds.push(v);
            }
        }
        bounds.push(nv);
        let groups = bounds.len() - 1;
        let (blo, bhi) = (range.start as u64, range.end as u64);
        let group_of = |r: u32| bounds.partition_point(|&b| b <= r as usize) - 1;

        // Pass over the stream: each fold accumulator appends (vertex, neighbour) pairs to its
        // own per-group vectors — sequential writes, no atomics.
        // At most ~4 accumulators per thread: each holds `groups` vectors.
        let min_len = (chunks as usize / (threads * 4)).max(1);
        let acc: Vec<Vec<Vec<u64>>> = (0..chunks as usize)
            .into_par_iter()
            .with_min_len(min_len)
            .fold(
                || vec![Vec::<u64>::new(); groups],
                |mut acc, c| {
                    let c = c as u64;
                    let (lo, hi) = (c * EDGE_CHUNK, ((c + 1) * EDGE_CHUNK).min(total_edges));
                    for i in lo..hi {
                        let (u, v) = stream.edge(i);
                        if u != v {
                            for (a, b) in [(u, v), (v, u)] {
                                if (a as u64) >= blo && (a as u64) < bhi {
                                    let r = (a as u64 - blo) as u32;
                                    acc[group_of(r)].push(((r as u64) << 32) | b as u64);
                                }
                            }
                        }
                    }
                    report(hi - lo);
                    acc
                },
            )
            .collect();

        // Each group's disjoint part of the bucket's slots.
        let mut slots = vec![0u32; len];
        let mut parts = Vec::with_capacity(groups);
        let mut rest: &mut [u32] = &mut slots;
        for g in 0..groups {
            let (v0, v1) = (bounds[g], bounds[g + 1]);
            let (head, tail) = rest.split_at_mut((start[v1] - start[v0]) as usize);
            parts.push((g, head));
            rest = tail;
        }
        let done: Vec<(Vec<u64>, usize)> = parts
            .par_iter_mut()
            .map(|(g, part)| {
                let (v0, v1) = (bounds[*g], bounds[*g + 1]);
                let base = start[v0];
                let mut fill: Vec<u32> = vec![0; v1 - v0];
                for a in &acc {
                    for &e in &a[*g] {
                        let r = (e >> 32) as usize;
                        let at = (start[r] - base) as usize + fill[r - v0] as usize;
                        fill[r - v0] += 1;
                        part[at] = e as u32;
                    }
                }
                let mut degs = Vec::with_capacity(v1 - v0);
                let mut w = 0usize;
                for v in v0..v1 {
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
        drop(acc);
        for ((_, part), (degs, w)) in parts.iter().zip(&done) {
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
