//! The one call into the plotting module: BFS time against GPU cache size.

use std::path::Path;

use crate::plot::{line_chart, Series};

/// Writes `dir/bfs-cache.svg`: warpfs BFS seconds against GPU cache size (% of the edge bytes),
/// with the in-GPU-memory and CPU times as flat reference lines. Returns the path written.
pub fn bfs_cache_plot(
    dir: &Path,
    warpfs: &[(f64, f64)],
    gpu_memory: Option<f64>,
    cpu: Option<f64>,
) -> crate::error::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)
        .map_err(|e| crate::error::CliError(format!("creating {}: {e}", dir.display())))?;
    let path = dir.join("bfs-cache.svg");
    let (lo, hi) = warpfs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    // The curve runs left to right whatever order the sizes were asked in.
    let mut points = warpfs.to_vec();
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut series = vec![Series {
        name: "warpfs (GPU page cache)".to_string(),
        points,
    }];
    if let Some(m) = gpu_memory {
        series.push(Series {
            name: "whole graph in GPU memory".to_string(),
            points: vec![(lo, m), (hi, m)],
        });
    }
    if let Some(c) = cpu {
        series.push(Series {
            name: "CPU BFS (rayon)".to_string(),
            points: vec![(lo, c), (hi, c)],
        });
    }
    line_chart(
        &path,
        "BFS time against GPU cache size",
        "GPU cache (% of edge bytes)",
        "BFS time (s)",
        false,
        &series,
    )?;
    Ok(path)
}
