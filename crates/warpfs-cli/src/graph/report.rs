//! The result of `warpfs graph bfs`: one row per search, printed as a table or JSON.

use crate::units::{fmt_bytes, fmt_count};
use serde::Serialize;
use warpfs::graph::{BfsMode, Direction};

/// One search's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// "warpfs (GPU cache 25%)", "GPU memory", "CPU (rayon)".
    pub method: String,
    /// Search time in seconds (the level loop; loading is separate).
    pub seconds: f64,
    /// Graph500 traversed edges per second.
    pub teps: f64,
    /// GPU page cache bytes (warpfs rows).
    pub gpu_cache_bytes: Option<u64>,
    /// GPU page cache hit rate, where the build reports it.
    pub hit_rate: Option<f64>,
    /// Bytes the warpfs host tier read from the file during the search.
    pub file_bytes_read: Option<u64>,
    /// Bytes loaded into the GPU page cache, where the build reports it.
    pub gpu_bytes_loaded: Option<u64>,
    /// Bytes read from the file / bytes the traversal needed.
    pub io_amplification: Option<f64>,
    /// Seconds to load the whole file first (in-GPU-memory row).
    pub load_seconds: Option<f64>,
    /// Levels equal the CPU BFS's, vertex for vertex.
    pub matches_cpu: bool,
    /// Remarks (first mismatch, array errors, cold/warm).
    pub notes: Vec<String>,
}

/// The whole run.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// warpfs version.
    pub version: &'static str,
    /// Graph file.
    pub file: String,
    /// Vertices.
    pub vertices: u64,
    /// Neighbour entries.
    pub edges_directed: u64,
    /// Neighbour section bytes.
    pub edge_bytes: u64,
    /// Source vertex.
    pub source: u64,
    /// Vertices reached.
    pub visited: u64,
    /// Levels.
    pub depth: u32,
    /// Graph500 traversed edges (undirected edges of the component).
    pub traversed_edges: u64,
    /// Bytes the search needs: top-down, the offsets and lists of the visited vertices; with
    /// bottom-up levels, the whole offsets array and the entries examined
    /// (`warpfs::graph::bfs::needed_bytes`).
    pub needed_bytes: u64,
    /// Top-down only or direction-optimizing.
    pub mode: BfsMode,
    /// The direction of each level (the CPU search's; the GPU searches are checked to agree).
    pub directions: Vec<Direction>,
    /// "warm", "cold" or "warm (cold skipped: not root)".
    pub page_cache: String,
    /// CPU threads of the rayon BFS.
    pub cpu_threads: usize,
    /// GPU name, if any ran.
    pub device: Option<String>,
    /// The searches.
    pub rows: Vec<Row>,
    /// Searches that could not run, with why.
    pub skipped: Vec<String>,
}

impl Report {
    /// The row whose method starts with `prefix`.
    pub fn row(&self, prefix: &str) -> Option<&Row> {
        self.rows.iter().find(|r| r.method.starts_with(prefix))
    }

    /// Whether every search matched the CPU BFS.
    pub fn all_match(&self) -> bool {
        self.rows.iter().all(|r| r.matches_cpu)
    }
}

fn opt<T>(v: Option<T>, f: impl Fn(T) -> String) -> String {
    v.map_or("-".into(), f)
}

/// Renders the report as a header and an aligned table.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "warpfs {} graph bfs · {} · {} vertices, {} neighbour entries (edges {}) · source {}\n\
         reached {} vertices in {} levels ({}) · {} traversed edges · traversal needs {} · page cache: {} · CPU threads {}{}\n\n",
        r.version,
        r.file,
        r.vertices,
        r.edges_directed,
        fmt_bytes(r.edge_bytes),
        r.source,
        r.visited,
        r.depth,
        r.directions
            .iter()
            .map(|d| d.short())
            .collect::<Vec<_>>()
            .join(" "),
        r.traversed_edges,
        fmt_bytes(r.needed_bytes),
        r.page_cache,
        r.cpu_threads,
        r.device.as_ref().map_or(String::new(), |d| format!(" · {d}")),
    );
    let mem = r.row("GPU memory").map(|m| m.seconds);
    let cpu = r.row("CPU").map(|c| c.seconds);
    let header = [
        "search",
        "time",
        "TEPS",
        "time vs GPU-mem",
        "speed-up vs CPU",
        "hit rate",
        "I/O ampl.",
        "ok",
        "notes",
    ];
    let mut rows: Vec<Vec<String>> = vec![header.iter().map(|s| s.to_string()).collect()];
    for x in &r.rows {
        rows.push(vec![
            x.method.clone(),
            format!("{:.3} s", x.seconds),
            fmt_count(x.teps),
            opt(mem, |m| format!("{:.2}×", x.seconds / m)),
            opt(cpu, |c| format!("{:.2}×", c / x.seconds)),
            opt(x.hit_rate, |h| format!("{:.1}%", h * 100.0)),
            opt(x.io_amplification, |a| format!("{a:.2}×")),
            if x.matches_cpu { "yes" } else { "NO" }.into(),
            x.notes.join("; "),
        ]);
    }
    let cols = header.len();
    let mut widths = vec![0usize; cols];
    for row in &rows {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.chars().count());
        }
    }
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                let pad = " ".repeat(w - cell.chars().count());
                if c == 0 || c == cols - 1 {
                    format!("{cell}{pad}")
                } else {
                    format!("{pad}{cell}")
                }
            })
            .collect();
        out += cells.join(" | ").trim_end();
        out.push('\n');
        if i == 0 {
            out += &widths
                .iter()
                .map(|w| "-".repeat(*w))
                .collect::<Vec<_>>()
                .join("-|-");
            out.push('\n');
        }
    }
    for s in &r.skipped {
        out += &format!("skipped: {s}\n");
    }
    out += if r.all_match() {
        "\nall searches match the CPU BFS, vertex for vertex\n"
    } else {
        "\nMISMATCH: a search's levels differ from the CPU BFS (see ok/notes); its figures are not valid\n"
    };
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(method: &str, seconds: f64, ok: bool) -> Row {
        Row {
            method: method.into(),
            seconds,
            teps: 1e9 / seconds,
            gpu_cache_bytes: None,
            hit_rate: Some(0.5),
            file_bytes_read: None,
            gpu_bytes_loaded: None,
            io_amplification: Some(1.25),
            load_seconds: None,
            matches_cpu: ok,
            notes: vec![],
        }
    }

    fn report(rows: Vec<Row>) -> Report {
        Report {
            version: "0",
            file: "g.csr".into(),
            vertices: 8,
            edges_directed: 16,
            edge_bytes: 64,
            source: 1,
            visited: 7,
            depth: 3,
            traversed_edges: 1_000_000_000,
            needed_bytes: 100,
            mode: BfsMode::DirectionOptimizing,
            directions: vec![Direction::TopDown, Direction::BottomUp, Direction::TopDown],
            page_cache: "warm".into(),
            cpu_threads: 16,
            device: Some("H100".into()),
            rows,
            skipped: vec![],
        }
    }

    #[test]
    fn table_shows_ratios_against_both_baselines() {
        let r = report(vec![
            row("CPU (rayon)", 2.0, true),
            row("GPU memory", 0.1, true),
            row("warpfs (GPU cache 25%)", 0.15, true),
        ]);
        let t = render(&r);
        let w = t.lines().find(|l| l.starts_with("warpfs (GPU")).unwrap();
        assert!(w.contains("1.50×"), "time vs GPU memory: {w}");
        assert!(w.contains("13.33×"), "speed-up vs CPU: {w}");
        assert!(
            w.contains("50.0%") && w.contains("1.25×") && w.contains("yes"),
            "{w}"
        );
        assert!(t.contains("all searches match"));
        assert!(t.contains("3 levels (TD BU TD)"), "{t}");
        let bad = report(vec![
            row("CPU (rayon)", 2.0, true),
            row("GPU memory", 0.1, false),
        ]);
        assert!(!bad.all_match());
        assert!(render(&bad).contains("MISMATCH"));
    }
}
