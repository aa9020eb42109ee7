//! `warpfs graph`: generate graphs (`gen`), import BaM/EMOGI CSR pairs (`import-bam`) and run
//! BFS three ways side by side (`bfs`): through warpfs file-backed arrays on the GPU, with
//! the whole graph in GPU memory, and on the CPU (rayon).

mod args;
mod bfs;
mod cache_size;
mod gen;
#[cfg(feature = "cuda")]
mod gpu;
mod plot_call;
mod report;

use crate::error::Result;
pub use args::*;

/// Runs `warpfs graph ...`; returns the exit code.
pub fn run(args: &GraphArgs) -> Result<i32> {
    match &args.command {
        GraphCommand::Gen(a) => gen::run(a),
        GraphCommand::Bfs(a) => bfs::run(a),
        GraphCommand::ImportBam(a) => {
            let h = warpfs::graph::bam::import_bam(&a.prefix, &a.out)?;
            println!(
                "wrote {}: {} vertices, {} neighbour entries ({} bytes)",
                a.out.display(),
                h.vertices,
                h.edges,
                h.file_bytes()
            );
            Ok(0)
        }
    }
}
