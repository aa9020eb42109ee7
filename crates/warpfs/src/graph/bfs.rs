//! Breadth-first search on the CPU: a parallel level-synchronous BFS (rayon; top-down or
//! direction-optimizing, [`super::direction`]) — the baseline the GPU BFS is measured against
//! and checked with — and a plain sequential one that checks it. Plus the Graph500 counts of
//! a finished search.

use super::csr::{Csr, VertexIndex};
use super::direction::{BfsMode, Direction, DirectionPolicy};
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
    /// The direction of each level expanded, in order (empty for the sequential search).
    pub directions: Vec<Direction>,
    /// Neighbour entries the search read (a bottom-up level stops reading a list at the first
    /// parent it finds).
    pub examined: u64,
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

/// Parallel level-synchronous BFS from `source` on rayon's pool, top-down only or
/// direction-optimizing (`mode`). A top-down level splits the frontier into chunks; a thread
/// claims an unvisited neighbour with one compare-and-swap on its level and appends it to its
/// chunk's part of the next frontier. A bottom-up level splits the vertices into chunks; each
/// unvisited vertex reads its list until a neighbour is in the frontier (a bitmap, one bit per
/// vertex) and takes the next level. Costs O(n + m) work top-down (bottom-up levels scan all n
/// vertices but read a fraction of the lists); memory: 4 bytes per vertex, the frontier, and
/// n / 8 bytes for the bitmap.
pub fn bfs_parallel<I: VertexIndex>(
    g: &Csr<'_, I>,
    source: u64,
    mode: BfsMode,
) -> Result<BfsResult> {
    check_source(g.vertices(), source)?;
    let t = Instant::now();
    let n = g.vertices() as usize;
    let mut levels: Vec<AtomicU32> = Vec::new();
    levels.resize_with(n, || AtomicU32::new(UNREACHED));
    levels[source as usize].store(0, Ordering::Relaxed);
    let mut policy = DirectionPolicy::new(mode, g.vertices(), g.edges(), g.degree(source));
    let want_scout = mode == BfsMode::DirectionOptimizing;
    // The frontier as a list of vertices, when the last level was top-down.
    let mut queue = Some(vec![source]);
    let mut frontier_len = 1u64;
    let mut directions = Vec::new();
    let mut examined = 0u64;
    let mut bits: Vec<u64> = Vec::new();
    while frontier_len > 0 {
        let cur = directions.len() as u32;
        let next_level = cur + 1;
        let dir = policy.next(frontier_len);
        directions.push(dir);
        match dir {
            Direction::TopDown => {
                let frontier = match queue.take() {
                    Some(q) => q,
                    None => (0..n)
                        .into_par_iter()
                        .with_min_len(4096)
                        .filter(|&v| levels[v].load(Ordering::Relaxed) == cur)
                        .map(|v| v as u64)
                        .collect(),
                };
                let parts: Vec<(Vec<u64>, u64, u64)> = frontier
                    .par_chunks(FRONTIER_CHUNK)
                    .map(|chunk| {
                        let (mut out, mut scout, mut read) = (Vec::new(), 0u64, 0u64);
                        for &u in chunk {
                            let list = g.neighbours_of(u);
                            read += list.len() as u64;
                            for &w in list {
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
                                    // The policy's input; top-down-only searches skip
                                    // the extra read per claim.
                                    if want_scout {
                                        scout += g.degree(w);
                                    }
                                    out.push(w);
                                }
                            }
                        }
                        (out, scout, read)
                    })
                    .collect();
                let scout = parts.iter().map(|p| p.1).sum();
                examined += parts.iter().map(|p| p.2).sum::<u64>();
                let next: Vec<u64> = parts.into_iter().flat_map(|p| p.0).collect();
                frontier_len = next.len() as u64;
                queue = Some(next);
                policy.done(scout);
            }
            Direction::BottomUp => {
                queue = None;
                bits.clear();
                bits.resize(n.div_ceil(64), 0);
                bits.par_iter_mut().enumerate().for_each(|(i, word)| {
                    let end = (i * 64 + 64).min(n);
                    for (b, l) in levels[i * 64..end].iter().enumerate() {
                        if l.load(Ordering::Relaxed) == cur {
                            *word |= 1 << b;
                        }
                    }
                });
                let bits = &bits;
                let (awake, read) = (0..n)
                    .into_par_iter()
                    .with_min_len(4096)
                    .filter(|&v| levels[v].load(Ordering::Relaxed) == UNREACHED)
                    .map(|v| {
                        let mut read = 0u64;
                        for &w in g.neighbours_of(v as u64) {
                            read += 1;
                            let w = w.to_u64() as usize;
                            if bits[w / 64] >> (w % 64) & 1 != 0 {
                                levels[v].store(next_level, Ordering::Relaxed);
                                return (1u64, read);
                            }
                        }
                        (0, read)
                    })
                    .reduce(|| (0, 0), |a, b| (a.0 + b.0, a.1 + b.1));
                examined += read;
                frontier_len = awake;
                policy.done(0);
            }
        }
    }
    let levels: Vec<u32> = levels.into_iter().map(AtomicU32::into_inner).collect();
    Ok(BfsResult {
        levels,
        depth: directions.len() as u32,
        elapsed: t.elapsed(),
        directions,
        examined,
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
    let mut examined = 0u64;
    while let Some(u) = queue.pop_front() {
        let next = levels[u as usize] + 1;
        examined += g.degree(u);
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
        directions: Vec::new(),
        examined,
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

/// Bytes the search `r` (on `g`, with the counts `t` of its levels) had to read: for a
/// top-down search [`Traversal::needed_bytes`]; with a bottom-up level, the whole offsets
/// array ((n + 1) × 8: a bottom-up level reads the bounds of every unvisited vertex, so the GPU
/// searches hold the array in device memory) plus the neighbour entries it examined × the
/// index width.
pub fn needed_bytes<I: VertexIndex>(g: &Csr<'_, I>, t: &Traversal, r: &BfsResult) -> u64 {
    if !r.directions.contains(&Direction::BottomUp) {
        return t.needed_bytes;
    }
    (g.vertices() + 1) * 8 + r.examined * std::mem::size_of::<I>() as u64
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
