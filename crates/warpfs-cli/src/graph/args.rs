//! The arguments of `warpfs graph` (its own file so that the CLI fuzz target can parse them
//! without the commands).

use super::cache_size::CacheSize;
use crate::units::parse_size;
use clap::{Args, Subcommand, ValueEnum};
use std::path::PathBuf;

const GRAPH_EXAMPLES: &str = "\
Examples:
  warpfs graph gen kron22.csr --scale 22                 Graph500 Kronecker, 4 M vertices, ~0.5 GiB
  warpfs graph gen uni20.csr --scale 20 --model uniform
  warpfs graph bfs kron22.csr --gpu-cache 25%            warpfs vs in-GPU-memory vs CPU BFS
  warpfs graph bfs kron26.csr --sweep-cache 10%,25%,50%,100% --plot plots/
  warpfs graph import-bam /data/friendster friendster.csr   NAME.col + NAME.dst → CSR file

File format: docs/graph-format.md.";

/// `warpfs graph` arguments.
#[derive(Debug, Clone, Args)]
#[command(after_help = GRAPH_EXAMPLES)]
pub struct GraphArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: GraphCommand,
}

/// `warpfs graph` subcommands.
#[derive(Debug, Clone, Subcommand)]
pub enum GraphCommand {
    /// Generate a seeded random graph (Graph500 Kronecker or uniform) as a CSR file:
    /// symmetric, no self-loops, no repeated edges.
    Gen(GenArgs),
    /// BFS from one source three ways on the same file — warpfs file-backed arrays on the GPU,
    /// the whole graph in GPU memory, parallel CPU — every result checked against the CPU's.
    Bfs(BfsArgs),
    /// Convert a BaM/EMOGI CSR pair (NAME.col + NAME.dst) into a warpfs CSR file.
    ImportBam(ImportArgs),
}

/// Graph models on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ModelArg {
    /// Graph500 Kronecker (A=0.57, B=0.19, C=0.19), vertex labels permuted.
    Kronecker,
    /// Uniform random endpoints.
    Uniform,
}

/// `warpfs graph gen` arguments.
#[derive(Debug, Clone, Args)]
pub struct GenArgs {
    /// Output file (overwritten).
    pub out: PathBuf,
    /// log2 of the vertex count (1..=31). Scale 26 with edge factor 16 gives an edge file of
    /// about 4-5 GiB.
    #[arg(long)]
    pub scale: u32,
    /// Generated edges per vertex (Graph500: 16).
    #[arg(long, default_value_t = 16)]
    pub edge_factor: u32,
    /// Edge distribution.
    #[arg(long, value_enum, default_value_t = ModelArg::Kronecker)]
    pub model: ModelArg,
    /// Seed: the same seed and settings give the same file, byte for byte.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Most memory for raw edge lists at once [default: half the available memory]; less
    /// makes more passes over the generator.
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub memory: Option<u64>,
    /// Print the summary as JSON (no progress bar).
    #[arg(long)]
    pub json: bool,
}

/// How GPU cache misses of the warpfs BFS reach the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum GpuReads {
    /// The file's page cache mapped into the device (read over PCIe by the kernels).
    View,
    /// Every miss a request to the warpfs daemon.
    Daemon,
}

/// Which way the BFS levels run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DirectionArg {
    /// Beamer's direction-optimizing BFS: bottom-up levels while the frontier is large
    /// (needs a symmetric graph; others run top-down, with a note).
    Optimizing,
    /// Every level top-down: every list of the component read once.
    TopDown,
}

/// `warpfs graph bfs` arguments.
#[derive(Debug, Clone, Args)]
pub struct BfsArgs {
    /// A CSR graph file (`warpfs graph gen`).
    pub file: PathBuf,
    /// Source vertex [default: the vertex of highest degree].
    #[arg(long)]
    pub source: Option<u64>,
    /// Level directions of every search (CPU, GPU memory, warpfs alike).
    #[arg(long, value_enum, default_value_t = DirectionArg::Optimizing)]
    pub direction: DirectionArg,
    /// GPU page cache for the warpfs BFS: a size (2G, 512M) or a percentage of the edge
    /// (neighbour) bytes (25%).
    #[arg(long, value_parser = CacheSize::parse, default_value = "25%", value_name = "SIZE|PCT")]
    pub gpu_cache: CacheSize,
    /// GPU page cache page size in bytes (a power of two, 4096..=1M): larger pages make fewer,
    /// larger loads and read more bytes a search does not need.
    #[arg(long, value_parser = parse_size, default_value = "4096", value_name = "BYTES")]
    pub gpu_page: u64,
    /// Run the warpfs BFS at each of these cache sizes too (e.g. 10%,25%,50%,100%).
    #[arg(long, value_parser = CacheSize::parse, value_delimiter = ',', value_name = "LIST")]
    pub sweep_cache: Vec<CacheSize>,
    /// Write bfs-cache.svg (BFS time against GPU cache size) into DIR (with --sweep-cache).
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Drop the OS page cache before each search (needs root; otherwise says "skipped").
    #[arg(long)]
    pub cold: bool,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub device: usize,
    /// Host cache tier of the warpfs runtime [default: the library's].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub host_cache: Option<u64>,
    /// Readahead of the warpfs runtime in pages (BFS reads are scattered: default off).
    #[arg(long, default_value_t = 0, value_name = "PAGES")]
    pub readahead: u32,
    /// Daemon worker threads of the warpfs runtime [default: every core, 1..=16].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// How the warpfs BFS's GPU cache misses reach the file: `view` maps the file's page-cache
    /// pages into the GPU first (GpuIo::map_file; misses copy pages from there, and a full
    /// cache reads in place, with no daemon round trip), `daemon` sends every miss to the
    /// daemon. `view` falls back to `daemon`, with a note, where the device cannot map files.
    #[arg(long, value_enum, default_value_t = GpuReads::View)]
    pub gpu_reads: GpuReads,
    /// Print the results as JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

/// `warpfs graph import-bam` arguments.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// Path prefix: PREFIX.col and PREFIX.dst are read.
    pub prefix: PathBuf,
    /// Output CSR file (overwritten).
    pub out: PathBuf,
}
