//! Graphs for the BFS workload: Graph500 Kronecker and uniform random generators that write
//! CSR files ([`format`]), a validating memory-mapped reader ([`csr`]) and a parallel
//! level-synchronous CPU BFS ([`bfs`]) whose levels check the GPU BFS
//! (`backend::cuda::graph_bfs`, feature `cuda`).
//!
//! - [`error`]: the typed errors ([`GraphError`]).
//! - [`format`]: the on-disk CSR layout (header, offsets, neighbours) and a streaming writer.
//! - [`mapped_file`]: a read-only memory map of a file.
//! - [`csr`]: an opened, validated CSR file and its typed views.
//! - [`edges`]: seeded edge streams (Kronecker, uniform) and the vertex permutation.
//! - [`generate`]: edge stream → symmetric, deduplicated CSR file in bounded memory.
//! - [`direction`]: top-down or bottom-up per level (Beamer's direction-optimizing rule).
//! - [`bfs`]: parallel (top-down or direction-optimizing) and sequential CPU BFS, Graph500
//!   counts.
//! - [`bam`]: import of BaM/EMOGI `.col` + `.dst` CSR pairs.

pub mod bam;
pub mod bfs;
pub mod csr;
pub mod direction;
pub mod edges;
pub mod error;
pub mod format;
pub mod generate;
pub mod mapped_file;

pub use bfs::{bfs_parallel, bfs_sequential, traversal, BfsResult, Traversal, UNREACHED};
pub use csr::{Csr, CsrFile, CsrView, VertexIndex};
pub use direction::{BfsMode, Direction};
pub use edges::{EdgeModel, EdgeStream, GraphSpec};
pub use error::GraphError;
pub use format::{CsrHeader, CsrWriter};
pub use generate::{generate, GenerateOptions, GenerateReport};
