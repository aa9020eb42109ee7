//! `warpfs graph bfs`: the same BFS three ways on the same file, in one run — warpfs
//! file-backed arrays on the GPU (at one or several GPU cache sizes), the whole graph in GPU
//! memory, the parallel CPU BFS — each checked against the CPU's levels.

use super::args::DirectionArg;
use super::report::{render, Report, Row};
use super::BfsArgs;
use crate::error::{bail, Context, Result, EXIT_MISMATCH};
use warpfs::graph::bfs::{needed_bytes, traversal};
use warpfs::graph::{bfs_parallel, BfsMode, CsrFile, CsrView};

/// What `--cold` did before one search: `true` dropped, `false` not asked (or not root). The
/// graph's own mapping (the CPU BFS reads `file` through it) lets go of its pages first: the
/// OS never drops pages a process maps, so without that the "cold" searches read a warm file.
pub fn maybe_cold(cold: bool, file: &CsrFile, skipped: &mut Vec<String>) -> bool {
    if !cold {
        return false;
    }
    file.release_pages();
    match crate::system::drop_page_cache() {
        Ok(()) => true,
        Err(why) => {
            let msg = format!("--cold: skipped: {why} (searches ran warm)");
            if !skipped.contains(&msg) {
                skipped.push(msg);
            }
            false
        }
    }
}

/// Runs `warpfs graph bfs`.
pub fn run(a: &BfsArgs) -> Result<i32> {
    if a.plot.is_some() && a.sweep_cache.is_empty() {
        bail!("--plot draws the --sweep-cache results: give --sweep-cache too (e.g. 10%,25%,50%,100%)");
    }
    let file = CsrFile::open(&a.file).ctx(|| "reading the graph".into())?;
    let h = *file.header();
    let CsrView::U32(g) = file.view() else {
        bail!(
            "{}: 8-byte neighbour indices; the BFS commands read graphs of ≤ 2^32 vertices",
            a.file.display()
        );
    };
    let source = match a.source {
        Some(s) => s,
        None => (0..g.vertices())
            .max_by_key(|&v| (g.degree(v), std::cmp::Reverse(v)))
            .unwrap_or(0),
    };
    if source >= g.vertices() {
        bail!(
            "--source {source} is not a vertex: the graph has {} (0 ..= {})",
            g.vertices(),
            g.vertices() - 1
        );
    }
    if g.degree(source) == 0 {
        bail!("source vertex {source} has no edges, so there is nothing to traverse: pick one with at least one edge (the default is the vertex of highest degree)");
    }
    let mut skipped = Vec::new();
    let mode = match a.direction {
        DirectionArg::TopDown => BfsMode::TopDown,
        DirectionArg::Optimizing if h.symmetric() => BfsMode::DirectionOptimizing,
        DirectionArg::Optimizing => {
            skipped.push(format!(
                "bottom-up levels: {} is not marked symmetric (a bottom-up level finds a vertex's parents in its own list), so every search ran top-down",
                a.file.display()
            ));
            BfsMode::TopDown
        }
    };

    // CPU BFS: the reference.
    let cold = maybe_cold(a.cold, &file, &mut skipped);
    let cpu = bfs_parallel(&g, source, mode)?;
    let mut t = traversal(&g, &cpu.levels);
    t.needed_bytes = needed_bytes(&g, &t, &cpu);
    let teps = |secs: f64| t.traversed_edges as f64 / secs;
    #[cfg_attr(not(feature = "cuda"), allow(unused_mut))]
    let mut rows = vec![Row {
        method: "CPU (rayon)".into(),
        seconds: cpu.elapsed.as_secs_f64(),
        teps: teps(cpu.elapsed.as_secs_f64()),
        gpu_cache_bytes: None,
        hit_rate: None,
        file_bytes_read: None,
        gpu_bytes_loaded: None,
        io_amplification: None,
        load_seconds: None,
        matches_cpu: true,
        notes: vec!["reference".into()],
    }];

    #[cfg(feature = "cuda")]
    let device = super::gpu::run(a, &file, source, mode, &cpu, &t, &mut rows, &mut skipped)?;
    #[cfg(not(feature = "cuda"))]
    let device: Option<String> = {
        skipped.push(format!(
            "GPU searches (in GPU memory; warpfs with a {} = {} GPU cache): this build has no cuda backend; rebuild with `cargo build --release -p warpfs-cli --features cuda`",
            a.gpu_cache.label(),
            crate::units::fmt_bytes(a.gpu_cache.bytes(h.neighbour_bytes()))
        ));
        None
    };

    let report = Report {
        version: env!("CARGO_PKG_VERSION"),
        file: a.file.display().to_string(),
        vertices: h.vertices,
        edges_directed: h.edges,
        edge_bytes: h.neighbour_bytes(),
        source,
        visited: t.visited,
        depth: cpu.depth,
        traversed_edges: t.traversed_edges,
        needed_bytes: t.needed_bytes,
        mode,
        directions: cpu.directions.clone(),
        page_cache: if cold {
            "cold (dropped before each search)".into()
        } else if a.cold {
            "warm (--cold skipped: not root)".into()
        } else {
            "warm".into()
        },
        cpu_threads: rayon::current_num_threads(),
        device,
        rows,
        skipped,
    };

    if let Some(dir) = &a.plot {
        let pts: Vec<(f64, f64)> = report
            .rows
            .iter()
            .filter(|r| r.method.starts_with("warpfs"))
            .filter_map(|r| {
                r.gpu_cache_bytes
                    .map(|b| (100.0 * b as f64 / report.edge_bytes as f64, r.seconds))
            })
            .collect();
        if pts.is_empty() {
            eprintln!("warpfs: no warpfs searches ran, so no plot");
        } else {
            let p = super::plot_call::bfs_cache_plot(
                dir,
                &pts,
                report.row("GPU memory").map(|r| r.seconds),
                report.row("CPU").map(|r| r.seconds),
            )
            .ctx(|| format!("writing the plot into {}", dir.display()))?;
            if !a.json {
                println!("wrote {}", p.display());
            }
        }
    }

    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("serialises")
        );
    } else {
        print!("{}", render(&report));
    }
    Ok(if report.all_match() { 0 } else { EXIT_MISMATCH })
}
