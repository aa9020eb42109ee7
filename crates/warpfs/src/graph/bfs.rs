//! Breadth-first search on the CPU: a parallel level-synchronous BFS (rayon, top-down) — the
//! baseline the GPU BFS is measured against and checked with — and a plain sequential one
//! that checks it. Plus the Graph500 counts of a finished search.

use super::csr::{Csr, VertexIndex};
use super::error::{GraphError, Result};
use rayon::prelude::*;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Level of a vertex the search did not reach.
pub const UNREACHED: u32 = u32::MAX;

/// Frontier vertices per parallel task.
const FRONTIER_CHUNK: usize = 256;

/// The outcome of a BFS: each vertex's level (hops from the source) or [`UNREACHED`].
#[derive(Debug, Clone)]
pub struct BfsResult {
    /// Level per vertex.
    pub levels: Vec<u32>,
    /// Levels of the search (the source's is 0; `depth` = highest level + 1).
    pub depth: u32,
    /// Wall time of the search itself.
    pub elapsed: Duration,
}

/// Counts of a finished search, as Graph500 and the I/O figures need them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traversal {
    /// Vertices reached (the source included).
    pub visited: u64,
    /// Graph500's traversed edges: undirected edges of the component searched
    /// (sum of the visited vertices' degrees / 2 for a symmetric graph).
    pub traversed_edges: u64,
    /// Bytes a top-down search must read: the distinct `offsets` entries of the visited
    /// vertices (`v` and `v + 1`) × 8 plus every visited vertex's neighbour list × index width.
    pub needed_bytes: u64,
}

fn check_source(vertices: u64, source: u64) -> Result<()> {
    if source >= vertices {
        return Err(GraphError::BadSource {
            source_vertex: source,
            vertices,
        });
    }
    Ok(())
}

/// Parallel level-synchronous top-down BFS from `source` on rayon's pool: each level's
/// frontier is split into chunks; a thread claims an unvisited neighbour with one
/// compare-and-swap on its level and appends it to its chunk's part of the next frontier.
/// Costs O(n + m) work and one atomic per claim; memory: 4 bytes per vertex + frontiers.
pub fn bfs_parallel<I: VertexIndex>(g: &Csr<'_, I>, source: u64) -> Result<BfsResult> {
    check_source(g.vertices(), source)?;
    let t = Instant::now();
    let mut levels: Vec<AtomicU32> = Vec::new();
    levels.resize_with(g.vertices() as usize, || AtomicU32::new(UNREACHED));
    levels[source as usize].store(0, Ordering::Relaxed);
    let mut frontier = vec![source];
    let mut depth = 0u32;
    while !frontier.is_empty() {
        depth += 1;
        let next_level = depth;
        let parts: Vec<Vec<u64>> = frontier
            .par_chunks(FRONTIER_CHUNK)
            .map(|chunk| {
                let mut out = Vec::new();
                for &u in chunk {
                    for &w in g.neighbours_of(u) {
                        let w = w.to_u64();
                        let slot = &levels[w as usize];
                        if slot.load(Ordering::Relaxed) == UNREACHED
                            && slot
                                .compare_exchange(
                                    UNREACHED,
                                    next_level,
                                    Ordering::Relaxed,
                                    Ordering::Relaxed,
                                )
                                .is_ok()
                        {
                            out.push(w);
                        }
                    }
                }
                out
            })
            .collect();
        frontier = parts.concat();
    }
    let levels: Vec<u32> = levels.into_iter().map(AtomicU32::into_inner).collect();
    Ok(BfsResult {
        levels,
        depth,
        elapsed: t.elapsed(),
    })
}

/// Textbook sequential BFS with a queue: the reference the parallel and GPU searches are
/// tested against. O(n + m), one thread.
pub fn bfs_sequential<I: VertexIndex>(g: &Csr<'_, I>, source: u64) -> Result<BfsResult> {
    check_source(g.vertices(), source)?;
    let t = Instant::now();
    let mut levels = vec![UNREACHED; g.vertices() as usize];
    levels[source as usize] = 0;
    let mut queue = VecDeque::from([source]);
    let mut max_level = 0;
    while let Some(u) = queue.pop_front() {
        let next = levels[u as usize] + 1;
        for &w in g.neighbours_of(u) {
            let w = w.to_u64() as usize;
            if levels[w] == UNREACHED {
                levels[w] = next;
                max_level = max_level.max(next);
                queue.push_back(w as u64);
            }
        }
    }
    Ok(BfsResult {
        levels,
        depth: max_level + 1,
        elapsed: t.elapsed(),
    })
}

/// The Graph500 and I/O counts of a search with `levels` on `g` (parallel, O(n)).
pub fn traversal<I: VertexIndex>(g: &Csr<'_, I>, levels: &[u32]) -> Traversal {
    let n = levels.len();
    let width = std::mem::size_of::<I>() as u64;
    let (visited, degree_sum, offset_entries) = (0..n)
        .into_par_iter()
        .with_min_len(4096)
        .filter(|&v| levels[v] != UNREACHED)
        .map(|v| {
            // offsets[v] always; offsets[v + 1] unless vertex v + 1 is visited (it counts it).
            let next_counted = v + 1 < n && levels[v + 1] != UNREACHED;
            (1u64, g.degree(v as u64), 1 + u64::from(!next_counted))
        })
        .reduce(|| (0, 0, 0), |a, b| (a.0 + b.0, a.1 + b.1, a.2 + b.2));
    Traversal {
        visited,
        traversed_edges: degree_sum / 2,
        needed_bytes: offset_entries * 8 + degree_sum * width,
    }
}

/// The first vertex whose level differs between two searches, with both levels.
pub fn first_difference(a: &[u32], b: &[u32]) -> Option<(u64, u32, u32)> {
    if a.len() != b.len() {
        return Some((a.len().min(b.len()) as u64, UNREACHED, UNREACHED));
    }
    a.par_iter()
        .zip(b.par_iter())
        .position_first(|(x, y)| x != y)
        .map(|i| (i as u64, a[i], b[i]))
}
