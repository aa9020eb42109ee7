//! The one call into the plotting module: BFS time against GPU cache size.
//!
//! MERGE(plot): `crate::plot` (another engineer's `crates/warpfs-cli/src/plot.rs`, signature
//! `line_chart(path, title, x_label, y_label, log_x, &[Series { name, points }])`) has not
//! merged yet; `stub` stands in so this compiles. At merge: delete `mod stub`, and
//! `use crate::plot::{line_chart, Series}` instead.

use std::path::Path;

use stub::{line_chart, Series};

/// Writes `dir/bfs-cache.svg`: warpfs BFS seconds against GPU cache size (% of the edge bytes),
/// with the in-GPU-memory and CPU times as flat reference lines. Returns the path written.
pub fn bfs_cache_plot(
    dir: &Path,
    warpfs: &[(f64, f64)],
    gpu_memory: Option<f64>,
    cpu: Option<f64>,
) -> std::io::Result<std::path::PathBuf> {
    std::fs::create_dir_all(dir)?;
    let path = dir.join("bfs-cache.svg");
    let (lo, hi) = warpfs.iter().fold((f64::MAX, f64::MIN), |(lo, hi), p| {
        (lo.min(p.0), hi.max(p.0))
    });
    let mut series = vec![Series {
        name: "warpfs (GPU page cache)".to_string(),
        points: warpfs.to_vec(),
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

/// MERGE(plot): private stand-in for `crate::plot`; delete at merge.
mod stub {
    use std::fmt::Write as _;
    use std::path::Path;

    /// One named curve.
    pub struct Series {
        pub name: String,
        pub points: Vec<(f64, f64)>,
    }

    /// A bare SVG polyline chart (linear axes; `log_x` ignored).
    pub fn line_chart(
        path: &Path,
        title: &str,
        x_label: &str,
        y_label: &str,
        _log_x: bool,
        series: &[Series],
    ) -> std::io::Result<()> {
        let pts = series.iter().flat_map(|s| s.points.iter());
        let (x0, x1, y1) = pts.fold((f64::MAX, f64::MIN, 0.0f64), |a, p| {
            (a.0.min(p.0), a.1.max(p.0), a.2.max(p.1))
        });
        let (w, h, m) = (640.0, 400.0, 60.0);
        let sx = |x: f64| m + (x - x0) / (x1 - x0).max(1e-9) * (w - 2.0 * m);
        let sy = |y: f64| h - m - y / y1.max(1e-9) * (h - 2.0 * m);
        let colours = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728"];
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n\
             <text x=\"{}\" y=\"20\" text-anchor=\"middle\" font-size=\"14\">{title}</text>\n\
             <text x=\"{}\" y=\"{}\" text-anchor=\"middle\">{x_label}</text>\n\
             <text x=\"15\" y=\"{}\" transform=\"rotate(-90 15 {})\" text-anchor=\"middle\">{y_label} (max {y1:.3})</text>\n",
            w / 2.0, w / 2.0, h - 15.0, h / 2.0, h / 2.0
        );
        for (i, se) in series.iter().enumerate() {
            let c = colours[i % colours.len()];
            let p: Vec<String> = se
                .points
                .iter()
                .map(|&(x, y)| format!("{:.1},{:.1}", sx(x), sy(y)))
                .collect();
            let _ = writeln!(
                s,
                "<polyline fill=\"none\" stroke=\"{c}\" stroke-width=\"2\" points=\"{}\"/>",
                p.join(" ")
            );
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" fill=\"{c}\">{}</text>",
                m + 10.0,
                m + 16.0 * i as f64,
                se.name
            );
        }
        s += "</svg>\n";
        std::fs::write(path, s)
    }
}
