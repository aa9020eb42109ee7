//! Graph generation, the CSR file format and the CPU BFS (feature `graph`; no GPU needed).

use proptest::prelude::*;
use std::path::{Path, PathBuf};
use warpfs::graph::bfs::{first_difference, needed_bytes, traversal};
use warpfs::graph::format::{write_csr, FLAG_SYMMETRIC, HEADER_BYTES};
use warpfs::graph::{
    bfs_parallel, bfs_sequential, generate, BfsMode, Csr, CsrFile, CsrView, Direction, EdgeModel,
    GenerateOptions, GraphError, GraphSpec, UNREACHED,
};

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("warpfs-graph-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn spec(model: EdgeModel, scale: u32, seed: u64) -> GraphSpec {
    GraphSpec {
        model,
        scale,
        edge_factor: 16,
        seed,
    }
}

fn gen(name: &str, s: &GraphSpec, memory_bytes: u64) -> PathBuf {
    let p = dir().join(name);
    let r = generate(
        s,
        &p,
        &GenerateOptions {
            memory_bytes,
            progress: None,
        },
    )
    .unwrap();
    assert_eq!(r.generated_edges, 16 << s.scale);
    p
}

fn u32_view(f: &CsrFile) -> Csr<'_, u32> {
    match f.view() {
        CsrView::U32(c) => c,
        CsrView::U64(_) => panic!("generated graphs use 4-byte indices"),
    }
}

#[test]
fn same_seed_same_bytes_other_seed_other_bytes() {
    for model in [EdgeModel::Kronecker, EdgeModel::Uniform] {
        let a = gen("det-a", &spec(model, 12, 7), 1 << 30);
        let b = gen("det-b", &spec(model, 12, 7), 1 << 30);
        let c = gen("det-c", &spec(model, 12, 8), 1 << 30);
        let (a, b, c) = (
            std::fs::read(a).unwrap(),
            std::fs::read(b).unwrap(),
            std::fs::read(c).unwrap(),
        );
        assert_eq!(a, b, "{model:?}: same seed gave different files");
        assert_ne!(a, c, "{model:?}: different seeds gave the same file");
    }
}

#[test]
fn a_small_memory_budget_gives_the_same_file_in_more_passes() {
    let s = spec(EdgeModel::Kronecker, 13, 3);
    let one = gen("budget-one", &s, 1 << 30);
    let p = dir().join("budget-many");
    // 64 KiB of raw entries per bucket: dozens of buckets.
    let r = generate(
        &s,
        &p,
        &GenerateOptions {
            memory_bytes: 64 << 10,
            progress: None,
        },
    )
    .unwrap();
    assert!(r.passes > 10, "expected many passes, got {}", r.passes);
    assert_eq!(std::fs::read(one).unwrap(), std::fs::read(p).unwrap());
}

/// Symmetric, sorted, no self-loops, no repeats, degrees sum to the edge count, header right.
fn check_simple_symmetric(path: &Path, s: &GraphSpec) {
    let f = CsrFile::open(path).unwrap();
    let h = *f.header();
    assert_eq!(h.vertices, 1 << s.scale);
    assert_eq!(h.flags & FLAG_SYMMETRIC, FLAG_SYMMETRIC);
    let g = u32_view(&f);
    let degree_sum: u64 = (0..g.vertices()).map(|v| g.degree(v)).sum();
    assert_eq!(degree_sum, h.edges);
    assert_eq!(g.neighbours.len() as u64, h.edges);
    assert!(h.edges > 0);
    assert!(h.edges <= 2 * s.generated_edges());
    assert_eq!(h.edges % 2, 0, "a symmetric graph has an even entry count");
    for u in 0..g.vertices() {
        let nb = g.neighbours_of(u);
        for w in nb.windows(2) {
            assert!(
                w[0] < w[1],
                "vertex {u}: list not strictly ascending: {w:?}"
            );
        }
        for &w in nb {
            assert_ne!(w as u64, u, "self-loop at {u}");
            assert!(
                g.neighbours_of(w as u64).binary_search(&(u as u32)).is_ok(),
                "edge {u}->{w} has no reverse"
            );
        }
    }
}

#[test]
fn kronecker_is_symmetric_simple_and_skewed() {
    let s = spec(EdgeModel::Kronecker, 12, 11);
    let p = gen("kron", &s, 1 << 30);
    check_simple_symmetric(&p, &s);
    let f = CsrFile::open(&p).unwrap();
    let g = u32_view(&f);
    let max = (0..g.vertices()).map(|v| g.degree(v)).max().unwrap();
    let avg = g.edges() / g.vertices();
    // Kronecker graphs have hubs; a uniform graph of this size has max degree < 3× average.
    assert!(max > 10 * avg, "max degree {max}, average {avg}: no hubs");
    // The permutation spreads hubs: the top vertex is not vertex 0.
    let top = (0..g.vertices()).max_by_key(|&v| g.degree(v)).unwrap();
    assert_ne!(top, 0);
}

#[test]
fn uniform_is_symmetric_simple_and_flat() {
    let s = spec(EdgeModel::Uniform, 12, 5);
    let p = gen("uni", &s, 1 << 30);
    check_simple_symmetric(&p, &s);
    let f = CsrFile::open(&p).unwrap();
    let g = u32_view(&f);
    let max = (0..g.vertices()).map(|v| g.degree(v)).max().unwrap();
    let avg = g.edges() / g.vertices();
    assert!(max < 3 * avg, "max degree {max}, average {avg}");
}

#[test]
fn the_vertex_permutation_is_a_bijection() {
    for scale in [1, 2, 5, 10, 16] {
        let s = spec(EdgeModel::Kronecker, scale, 99);
        let mut seen = vec![false; 1 << scale];
        for x in 0..(1u64 << scale) {
            let y = s.label(x) as usize;
            assert!(!seen[y], "scale {scale}: {y} hit twice");
            seen[y] = true;
        }
    }
}

#[test]
fn csr_round_trip() {
    let offsets = [0u64, 2, 2, 5, 6];
    let nb = [1u32, 3, 0, 1, 3, 2];
    let p = dir().join("rt");
    let h = write_csr(&p, &offsets, &nb, 0).unwrap();
    assert_eq!((h.vertices, h.edges, h.index_bytes), (4, 6, 4));
    assert_eq!(h.neighbours_at % 4096, 0);
    assert_eq!(std::fs::metadata(&p).unwrap().len(), h.file_bytes());
    let f = CsrFile::open(&p).unwrap();
    assert_eq!(f.header(), &h);
    let g = u32_view(&f);
    assert_eq!(g.offsets, &offsets);
    assert_eq!(g.neighbours, &nb);
    assert_eq!(g.neighbours_of(2), &[0, 1, 3]);
}

fn corrupt(name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> GraphError {
    let p = dir().join(name);
    write_csr(&p, &[0, 2, 3, 4], &[1, 2, 0, 0], 0).unwrap();
    let mut b = std::fs::read(&p).unwrap();
    edit(&mut b);
    std::fs::write(&p, b).unwrap();
    CsrFile::open(&p).expect_err("a corrupt file must be refused")
}

fn set_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

#[test]
fn corrupt_files_are_refused_with_typed_errors() {
    let nat = 4096usize; // neighbours_at of a 3-vertex graph
    let e = corrupt("magic", |b| b[0] = b'X');
    assert!(matches!(e, GraphError::BadMagic { .. }), "{e}");
    let e = corrupt("empty", |b| b.clear());
    assert!(matches!(e, GraphError::BadMagic { .. }), "{e}");
    let e = corrupt("short-header", |b| b.truncate(20));
    assert!(matches!(e, GraphError::Truncated { .. }), "{e}");
    let e = corrupt("version", |b| b[8] = 9);
    assert!(
        matches!(e, GraphError::UnsupportedVersion { found: 9, .. }),
        "{e}"
    );
    let e = corrupt("width", |b| b[12] = 3);
    assert!(matches!(e, GraphError::BadHeader { .. }), "{e}");
    let e = corrupt("nat", |b| set_u64(b, 40, 4000));
    assert!(matches!(e, GraphError::BadHeader { .. }), "{e}");
    let e = corrupt("huge-n", |b| set_u64(b, 16, u64::MAX));
    assert!(matches!(e, GraphError::BadHeader { .. }), "{e}");
    let e = corrupt("huge-m", |b| set_u64(b, 24, u64::MAX / 2));
    assert!(matches!(e, GraphError::BadHeader { .. }), "{e}");
    let e = corrupt("truncated", |b| b.truncate(b.len() - 1));
    assert!(
        matches!(e, GraphError::Truncated { expected, actual, .. } if expected == actual + 1),
        "{e}"
    );
    let e = corrupt("trailing", |b| b.push(0));
    assert!(matches!(e, GraphError::TrailingBytes { .. }), "{e}");
    let off = HEADER_BYTES as usize;
    let e = corrupt("monotone", |b| set_u64(b, off + 8, 4));
    assert!(
        matches!(
            e,
            GraphError::OffsetsNotMonotone {
                next_vertex: 2,
                prev: 4,
                next: 3,
                ..
            }
        ),
        "{e}"
    );
    let e = corrupt("ends", |b| set_u64(b, off + 24, 3));
    assert!(
        matches!(e, GraphError::OffsetsBadEnds { last: 3, .. }),
        "{e}"
    );
    let e = corrupt("first", |b| set_u64(b, off, 1));
    assert!(
        matches!(e, GraphError::OffsetsBadEnds { first: 1, .. }),
        "{e}"
    );
    let e = corrupt("range", |b| {
        b[nat + 8..nat + 12].copy_from_slice(&3u32.to_le_bytes())
    });
    assert!(
        matches!(
            e,
            GraphError::NeighbourOutOfRange {
                index: 2,
                value: 3,
                vertices: 3,
                ..
            }
        ),
        "{e}"
    );
    // Messages say what is wrong.
    assert!(e.to_string().contains("entry 2 is 3"), "{e}");
}

#[test]
fn bam_pairs_import() {
    let pre = dir().join("bam-g");
    let offsets = [0u64, 2, 3, 4];
    let nb = [1u64, 2, 0, 0];
    let mut col = Vec::new();
    col.extend_from_slice(&4u64.to_le_bytes());
    col.extend_from_slice(&0u64.to_le_bytes());
    offsets
        .iter()
        .for_each(|o| col.extend_from_slice(&o.to_le_bytes()));
    let mut dst = Vec::new();
    dst.extend_from_slice(&4u64.to_le_bytes());
    dst.extend_from_slice(&0u64.to_le_bytes());
    nb.iter()
        .for_each(|o| dst.extend_from_slice(&o.to_le_bytes()));
    std::fs::write(pre.with_extension("col"), &col).unwrap();
    std::fs::write(pre.with_extension("dst"), &dst).unwrap();
    let out = dir().join("bam-out");
    warpfs::graph::bam::import_bam(&pre, &out).unwrap();
    let f = CsrFile::open(&out).unwrap();
    let g = u32_view(&f);
    assert_eq!(g.offsets, &offsets);
    assert_eq!(g.neighbours, &[1, 2, 0, 0]);
    // Out-of-range neighbour.
    dst[16 + 8..16 + 16].copy_from_slice(&7u64.to_le_bytes());
    std::fs::write(pre.with_extension("dst"), &dst).unwrap();
    let e = warpfs::graph::bam::import_bam(&pre, &out).unwrap_err();
    assert!(
        matches!(e, GraphError::NeighbourOutOfRange { value: 7, .. }),
        "{e}"
    );
}

#[test]
fn bfs_on_a_generated_graph_matches_sequential_and_counts_are_right() {
    let s = spec(EdgeModel::Kronecker, 12, 21);
    let p = gen("bfs-kron", &s, 1 << 30);
    let f = CsrFile::open(&p).unwrap();
    let g = u32_view(&f);
    let src = (0..g.vertices()).max_by_key(|&v| g.degree(v)).unwrap();
    let par = bfs_parallel(&g, src, BfsMode::TopDown).unwrap();
    let seq = bfs_sequential(&g, src).unwrap();
    assert_eq!(first_difference(&par.levels, &seq.levels), None);
    assert_eq!(par.depth, seq.depth);
    assert_eq!(par.examined, seq.examined);
    assert!(par.directions.iter().all(|&d| d == Direction::TopDown));
    // Direction-optimizing: the same levels, some levels bottom-up, fewer entries read.
    let dop = bfs_parallel(&g, src, BfsMode::DirectionOptimizing).unwrap();
    assert_eq!(first_difference(&dop.levels, &seq.levels), None);
    assert_eq!(dop.depth, seq.depth);
    assert!(
        dop.directions.contains(&Direction::BottomUp),
        "{:?}",
        dop.directions
    );
    assert!(
        dop.examined < par.examined / 2,
        "{} vs {}",
        dop.examined,
        par.examined
    );
    let t = traversal(&g, &par.levels);
    // Counted the slow way.
    let visited: Vec<u64> = (0..g.vertices())
        .filter(|&v| par.levels[v as usize] != UNREACHED)
        .collect();
    let deg: u64 = visited.iter().map(|&v| g.degree(v)).sum();
    let mut entries: Vec<u64> = visited.iter().flat_map(|&v| [v, v + 1]).collect();
    entries.sort_unstable();
    entries.dedup();
    assert_eq!(t.visited, visited.len() as u64);
    assert_eq!(t.traversed_edges, deg / 2);
    assert_eq!(t.needed_bytes, entries.len() as u64 * 8 + deg * 4);
    assert_eq!(needed_bytes(&g, &t, &par), t.needed_bytes);
    assert_eq!(
        needed_bytes(&g, &t, &dop),
        (g.vertices() + 1) * 8 + dop.examined * 4
    );
    assert!(t.visited > 1000, "the hub's component is large");
}

#[test]
fn bfs_rejects_a_source_outside_the_graph() {
    let offsets = [0u64, 1, 2];
    let nb = [1u32, 0];
    let g = Csr {
        offsets: &offsets,
        neighbours: &nb,
    };
    assert!(matches!(
        bfs_parallel(&g, 2, BfsMode::DirectionOptimizing),
        Err(GraphError::BadSource {
            source_vertex: 2,
            vertices: 2
        })
    ));
}

/// The CSR graph with every edge (u, v) also stored as (v, u).
fn symmetrised(offsets: &[u64], nb: &[u32]) -> (Vec<u64>, Vec<u32>) {
    let n = offsets.len() - 1;
    let mut lists = vec![Vec::new(); n];
    for u in 0..n {
        for &v in &nb[offsets[u] as usize..offsets[u + 1] as usize] {
            lists[u].push(v);
            lists[v as usize].push(u as u32);
        }
    }
    let mut o = vec![0u64];
    let mut out = Vec::new();
    for l in lists {
        out.extend(l);
        o.push(out.len() as u64);
    }
    (o, out)
}

/// A random directed graph as CSR (repeats and self-loops allowed: BFS must cope).
fn random_csr() -> impl Strategy<Value = (Vec<u64>, Vec<u32>, u64)> {
    (1usize..200).prop_flat_map(|n| {
        (
            proptest::collection::vec(proptest::collection::vec(0..n as u32, 0..8), n),
            0..n as u64,
        )
            .prop_map(|(lists, src)| {
                let mut offsets = vec![0u64];
                let mut nb = Vec::new();
                for l in lists {
                    nb.extend_from_slice(&l);
                    offsets.push(nb.len() as u64);
                }
                (offsets, nb, src)
            })
    })
}

proptest! {
    #[test]
    fn parallel_bfs_equals_sequential_bfs((offsets, nb, src) in random_csr()) {
        let g = Csr { offsets: &offsets, neighbours: &nb };
        let par = bfs_parallel(&g, src, BfsMode::TopDown).unwrap();
        let seq = bfs_sequential(&g, src).unwrap();
        prop_assert_eq!(&par.levels, &seq.levels);
        prop_assert_eq!(par.depth, seq.depth);
        prop_assert_eq!(par.levels[src as usize], 0);
    }

    /// On a symmetric graph the direction-optimizing search finds the sequential search's
    /// levels whichever directions it takes.
    #[test]
    fn direction_optimizing_bfs_equals_sequential_bfs((offsets, nb, src) in random_csr()) {
        let (offsets, nb) = symmetrised(&offsets, &nb);
        let g = Csr { offsets: &offsets, neighbours: &nb };
        let dop = bfs_parallel(&g, src, BfsMode::DirectionOptimizing).unwrap();
        let seq = bfs_sequential(&g, src).unwrap();
        prop_assert_eq!(&dop.levels, &seq.levels);
        prop_assert_eq!(dop.depth, seq.depth);
    }

    #[test]
    fn written_files_read_back((offsets, nb, _src) in random_csr()) {
        let p = dir().join(format!("prop-{}", nb.len()));
        write_csr(&p, &offsets, &nb, 0).unwrap();
        let f = CsrFile::open(&p).unwrap();
        let g = u32_view(&f);
        prop_assert_eq!(g.offsets, &offsets[..]);
        prop_assert_eq!(g.neighbours, &nb[..]);
    }
}

/// Generation speed on this machine (`cargo test --release --features graph --test graph --
/// --ignored --nocapture gen_speed`); prints figures, asserts nothing timed.
#[test]
#[ignore]
fn gen_speed() {
    let s = spec(EdgeModel::Kronecker, 20, 1);
    let t = std::time::Instant::now();
    let mut x = 0u64;
    let st = s.stream();
    for i in 0..(1u64 << 24) {
        let (u, v) = st.edge(i);
        x = x.wrapping_add(u as u64 ^ v as u64);
    }
    println!(
        "edge(): {:.1} ns per edge, one thread ({x})",
        t.elapsed().as_nanos() as f64 / (1u64 << 24) as f64
    );
    let p = dir().join("speed");
    let r = generate(&s, &p, &GenerateOptions::default()).unwrap();
    println!("generate scale 20: {:?}, {} passes", r.elapsed, r.passes);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    /// Bad input never hurts: a CSR file with random bytes overwritten (biased to the header
    /// and offsets) or cut short either opens — and then every search runs without panicking —
    /// or is refused with an error.
    #[test]
    fn mangled_files_are_refused_or_safe(
        edits in proptest::collection::vec((0usize..4200, any::<u8>()), 1..6),
        cut in proptest::option::of(0usize..4300),
    ) {
        let offsets = [0u64, 2, 3, 5, 6, 6];
        let nb = [1u32, 2, 0, 0, 4, 3];
        let p = dir().join(format!("mangled-{}", std::thread::current().name().unwrap_or("t").len()));
        write_csr(&p, &offsets, &nb, 0).unwrap();
        let mut b = std::fs::read(&p).unwrap();
        for (at, v) in edits {
            let at = at % b.len();
            b[at] = v;
        }
        if let Some(c) = cut {
            b.truncate(c.min(b.len()));
        }
        std::fs::write(&p, &b).unwrap();
        if let Ok(f) = CsrFile::open(&p) {
            if let CsrView::U32(g) = f.view() {
                for s in 0..g.vertices().min(8) {
                    let a = bfs_parallel(&g, s, BfsMode::TopDown).unwrap();
                    let q = bfs_sequential(&g, s).unwrap();
                    prop_assert_eq!(&a.levels, &q.levels);
                    // A file need not be symmetric: bottom-up levels may then differ, but
                    // never fail or leave the graph.
                    let d = bfs_parallel(&g, s, BfsMode::DirectionOptimizing).unwrap();
                    prop_assert_eq!(d.levels.len(), q.levels.len());
                }
            }
        }
    }
}

/// Fraction of `path`'s pages in the OS page cache (`mincore` through a fresh mapping that
/// touches nothing).
fn resident_fraction(path: &Path) -> f64 {
    let m = warpfs::graph::mapped_file::MappedFile::open(path).unwrap();
    let len = m.bytes().len();
    let pages = len.div_ceil(4096);
    let mut v = vec![0u8; pages];
    // SAFETY: the range is `m`'s live mapping (page-aligned start); `v` has one byte per 4 KiB
    // page; mincore reads no page of the mapping.
    let r = unsafe {
        libc::mincore(
            m.bytes().as_ptr() as *mut libc::c_void,
            len,
            v.as_mut_ptr().cast(),
        )
    };
    assert_eq!(r, 0, "mincore: {}", std::io::Error::last_os_error());
    v.iter().filter(|&&b| b & 1 != 0).count() as f64 / pages as f64
}

/// Asks the OS to drop `path`'s clean cached pages (it keeps the ones a process maps).
fn evict(path: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(path).unwrap();
    f.sync_all().unwrap();
    // SAFETY: plain advice on a descriptor we own.
    let r = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

/// `--cold` BFS runs drop the page cache while the CPU BFS's mapping of the graph is alive:
/// pages it maps are never dropped until `release_pages` lets go of them, and the mapping still
/// reads the file's bytes afterwards.
#[test]
fn released_pages_can_be_dropped_from_the_page_cache() {
    use warpfs::graph::mapped_file::MappedFile;
    let p = dir().join("release.bin");
    let content: Vec<u8> = (0..8u32 << 20)
        .map(|i| (i.wrapping_mul(2654435761) >> 24) as u8)
        .collect();
    std::fs::write(&p, &content).unwrap();
    // Where even an unmapped file keeps its pages (a memory-backed directory), there is
    // nothing to show.
    std::fs::read(&p).unwrap();
    evict(&p);
    let control = resident_fraction(&p);
    if control > 0.5 {
        println!(
            "skipping: {} keeps {:.0}% of a dropped file resident (memory-backed?)",
            p.display(),
            100.0 * control
        );
        return;
    }
    let m = MappedFile::open(&p).unwrap();
    let sum: u64 = m.bytes().iter().map(|&b| u64::from(b)).sum();
    evict(&p);
    let held = resident_fraction(&p);
    assert!(
        held > 0.9,
        "pages the mapping touched must stay cached: {:.1}% resident",
        100.0 * held
    );
    m.release_pages();
    evict(&p);
    let after = resident_fraction(&p);
    assert!(
        after < 0.1,
        "released pages must be droppable: {:.1}% still resident",
        100.0 * after
    );
    assert!(
        m.bytes() == content.as_slice(),
        "the mapping reads the file again after the release"
    );
    assert_eq!(sum, content.iter().map(|&b| u64::from(b)).sum::<u64>());
}
