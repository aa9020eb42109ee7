//! The human-readable result: a short header and one aligned table,
//! `phase | warpfs | baseline | ratio | p50 | p99 | hit rate | notes`.

use super::report::{Figure, Report};
use crate::units::{fmt_bytes, fmt_count, fmt_micros};

fn figure(f: &Figure) -> String {
    match f.unit {
        "GB/s" => format!("{:.2} GB/s", f.value),
        _ => format!("{} IOPS", fmt_count(f.value)),
    }
}

fn pair(w: Option<f64>, b: Option<f64>) -> String {
    match (w, b) {
        (None, None) => "-".into(),
        _ => format!(
            "{} / {}",
            w.map_or("-".into(), fmt_micros),
            b.map_or("-".into(), fmt_micros)
        ),
    }
}

/// Renders the report as text: header lines, the table, and a footer on mismatches.
pub fn render(r: &Report) -> String {
    let mut out = format!(
        "warpfs {} bench · backend {} · engine {} · {} cores · file {} ({}{})\n\
         baseline threads {} · warpfs: {} agent threads + {} daemon workers, {} in flight ({} agents × {}) · block {} · {} per side\n\n",
        r.version,
        r.backend,
        r.engine,
        r.cores,
        r.file.path,
        fmt_bytes(r.file.size),
        if r.file.temporary { ", temporary" } else { "" },
        r.config.threads,
        r.config.agent_threads,
        r.config.workers,
        r.config.queue_depth,
        r.config.agents,
        r.config.agent_queue_depth,
        fmt_bytes(r.config.block_size as u64),
        match r.config.ops {
            Some(n) => format!("{n} ops"),
            None => format!("{}s", r.config.seconds),
        },
    );
    let header = [
        "phase",
        "warpfs",
        "baseline",
        "ratio",
        "p50 (w / b)",
        "p99 (w / b)",
        "hit rate",
        "notes",
    ];
    let mut rows: Vec<[String; 8]> = vec![header.map(String::from)];
    for p in &r.phases {
        rows.push([
            p.phase.to_string(),
            figure(&p.warpfs),
            figure(&p.baseline),
            format!("{:.2}×", p.ratio),
            pair(p.warpfs.p50_us, p.baseline.p50_us),
            pair(p.warpfs.p99_us, p.baseline.p99_us),
            p.hit_rate
                .map_or("-".into(), |h| format!("{:.1}%", h * 100.0)),
            p.notes.join("; "),
        ]);
    }
    let mut widths = [0usize; 8];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    for (i, row) in rows.iter().enumerate() {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .enumerate()
            .map(|(c, (cell, w))| {
                let pad = w - cell.chars().count();
                // Numbers right-aligned, words left-aligned.
                if (1..=6).contains(&c) && i > 0 {
                    format!("{}{cell}", " ".repeat(pad))
                } else if c == 7 {
                    cell.clone()
                } else {
                    format!("{cell}{}", " ".repeat(pad))
                }
            })
            .collect();
        out += cells.join(" | ").trim_end();
        out.push('\n');
        if i == 0 {
            let rule: Vec<String> = widths.iter().map(|w| "-".repeat(*w)).collect();
            out += &rule.join("-|-");
            out.push('\n');
        }
    }
    for s in &r.skipped {
        out += &format!("skipped {}: {}\n", s.phase, s.reason);
    }
    if r.mismatches > 0 {
        out += &format!(
            "\nDATA MISMATCH: {} operations returned wrong bytes (see the phases above); the figures are not valid\n",
            r.mismatches
        );
    } else {
        out += "\nall reads and writes verified: 0 mismatches\n";
    }
    out
}
