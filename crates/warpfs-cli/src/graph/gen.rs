//! `warpfs graph gen`: a seeded Kronecker or uniform graph into a CSR file, on all cores, with
//! a progress bar over the generator passes.

use super::{GenArgs, ModelArg};
use crate::error::{Context, Result};
use crate::progress::Progress;
use crate::units::fmt_bytes;
use warpfs::graph::{generate, EdgeModel, GenerateOptions, GraphSpec};

/// Runs `warpfs graph gen`.
pub fn run(a: &GenArgs) -> Result<i32> {
    let spec = GraphSpec {
        model: match a.model {
            ModelArg::Kronecker => EdgeModel::Kronecker,
            ModelArg::Uniform => EdgeModel::Uniform,
        },
        scale: a.scale,
        edge_factor: a.edge_factor,
        seed: a.seed,
    };
    spec.check()?;
    let memory = a.memory.unwrap_or_else(|| {
        crate::system::mem_available().map_or(4 << 30, |m| (m / 2).max(256 << 20))
    });
    let bar = Progress::new(!a.json).ops(2 * spec.generated_edges(), "generating");
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg:<12} [{bar:30}] {human_pos}/{human_len} edge visits, {per_sec} eta {eta}",
        )
        .expect("valid template"),
    );
    let progress = |k: u64, total: u64| {
        if bar.length() != Some(total) {
            bar.set_length(total);
        }
        bar.inc(k);
    };
    let r = generate(
        &spec,
        &a.out,
        &GenerateOptions {
            memory_bytes: memory,
            progress: Some(&progress),
        },
    )
    .ctx(|| format!("generating {}", a.out.display()))?;
    bar.finish_and_clear();
    let h = r.header;
    let secs = r.elapsed.as_secs_f64();
    if a.json {
        let j = serde_json::json!({
            "file": a.out.display().to_string(),
            "model": format!("{:?}", spec.model).to_lowercase(),
            "scale": spec.scale,
            "edge_factor": spec.edge_factor,
            "seed": spec.seed,
            "vertices": h.vertices,
            "edges_directed": h.edges,
            "edges_undirected": h.edges / 2,
            "generated_edges": r.generated_edges,
            "self_loops": r.self_loops,
            "duplicates": r.duplicates,
            "file_bytes": h.file_bytes(),
            "neighbour_bytes": h.neighbour_bytes(),
            "passes": r.passes,
            "memory_budget_bytes": memory,
            "threads": rayon::current_num_threads(),
            "seconds": secs,
            "generated_edges_per_second": r.generated_edges as f64 / secs,
        });
        println!("{}", serde_json::to_string_pretty(&j).expect("serialises"));
    } else {
        println!(
            "wrote {}: {:?} scale {} (edge factor {}, seed {}): {} vertices, {} undirected edges ({} neighbour entries)",
            a.out.display(),
            spec.model,
            spec.scale,
            spec.edge_factor,
            spec.seed,
            h.vertices,
            h.edges / 2,
            h.edges
        );
        println!(
            "  file {} (neighbours {}) · dropped {} self-loops and {} repeated entries",
            fmt_bytes(h.file_bytes()),
            fmt_bytes(h.neighbour_bytes()),
            r.self_loops,
            r.duplicates
        );
        println!(
            "  {:.2} s on {} threads = {:.1} M generated edges/s · {} passes over the generator (memory budget {})",
            secs,
            rayon::current_num_threads(),
            r.generated_edges as f64 / secs / 1e6,
            r.passes,
            fmt_bytes(memory)
        );
    }
    Ok(0)
}
