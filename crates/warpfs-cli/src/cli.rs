//! Command-line arguments of `warpfs`.

use crate::backend::BackendArg;
use crate::units::parse_size;
use clap::{Args, Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use warpfs::engine::EngineChoice;

const MAIN_EXAMPLES: &str = "\
Examples:
  warpfs bench                      benchmark warpfs against plain reads/writes (1 GiB temp file)
  warpfs bench --size 256M --json   smaller file, machine-readable results
  warpfs stat data.bin              size, page-cache residency, O_DIRECT support
  warpfs load model.bin --verify    whole file into GPU memory, checksum checked (--features cuda)
  warpfs load m.safetensors         every tensor into GPU memory, one vectored call

Exit codes: 0 ok · 1 a read or write returned wrong bytes · 2 error (the message says what to do)";

const BENCH_EXAMPLES: &str = "\
Examples:
  warpfs bench                                  all phases, 1 GiB temporary file, 3 s per side
  warpfs bench --size 256M --seconds 1          quicker
  warpfs bench --phases rand-read --threads 4 --qd 128
  warpfs bench --file /data/model.bin --phases seq,rand-read
  warpfs bench --dir /mnt/nvme --json > result.json
  warpfs bench --plot plots/ --seconds 1      sweeps; writes SVG curves into plots/
  warpfs bench --backend cuda --size 8G --seconds 2     bulk + GPU-initiated phases (H100)
  warpfs bench --gpus all --size 8G --seconds 2         the same, per GPU and scaling with N

Each phase runs twice in this process on the same file: through warpfs and the plain way
(read/pread/pwrite with the same sizes and thread count); the table shows both and the ratio.
Every byte read is checked against the file's known content; writes are read back afterwards.
The temporary file is unlinked as soon as it is created, so nothing is left behind.";

/// Files for GPU programs: benchmark and inspect warpfs.
#[derive(Debug, Parser)]
#[command(name = "warpfs", version, about, after_help = MAIN_EXAMPLES)]
pub struct Cli {
    /// Log more (-v: info, -vv: debug); RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands. (`load` and `graph` will join these.)
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Measure warpfs against plain reads and writes on a test file, side by side.
    #[command(after_help = BENCH_EXAMPLES)]
    Bench(BenchArgs),
    /// Show a file's size, page-cache residency and whether O_DIRECT works on it.
    Stat(StatArgs),
    /// Load a whole file into GPU memory (CUDA bulk path): GB/s, threads, path; --verify
    /// compares a GPU-computed checksum with the CPU's. Needs a build with --features cuda.
    Load(LoadArgs),
    /// Graphs: generate Graph500 Kronecker / uniform CSR files, and BFS through warpfs on the
    /// GPU against the graph in GPU memory and the CPU.
    Graph(crate::graph::GraphArgs),
}

/// Backend selection, shared by every command that runs requests.
#[derive(Debug, Clone, Args)]
pub struct BackendOpt {
    /// Backend: auto (best available), host (CPU agents), cuda (builds with --features cuda:
    /// the seq phase, file → GPU memory), wgpu.
    #[arg(long, value_enum, default_value_t = BackendArg::Auto)]
    pub backend: BackendArg,
}

/// Benchmark phases.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, ValueEnum)]
pub enum Phase {
    /// Whole file into one buffer: Runtime::read_bulk vs a 4 MiB read() loop.
    Seq,
    /// Random 4 KiB reads through agents vs multi-threaded pread.
    RandRead,
    /// Random 4 KiB writes + periodic fsync through agents vs pwrite + fdatasync.
    RandWrite,
    /// cuda: random 4 KiB reads from GPU threads (wfs_read with and without the GPU cache,
    /// warm; cold as root) vs multi-threaded pread (warm) and O_DIRECT QD 64 (cold).
    GpuRandRead,
    /// cuda: cache-hit element reads per second through wfs_array<u64>.
    GpuArray,
    /// cuda: p50/p99 of single 4 KiB GPU requests (host-tier hit, page-cache read); daemon CPU.
    Latency,
}

impl Phase {
    /// Name as written on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Seq => "seq",
            Phase::RandRead => "rand-read",
            Phase::RandWrite => "rand-write",
            Phase::GpuRandRead => "gpu-rand-read",
            Phase::GpuArray => "gpu-array",
            Phase::Latency => "latency",
        }
    }
    /// Whether the phase runs GPU kernels (cuda backend only).
    pub fn gpu(self) -> bool {
        matches!(self, Phase::GpuRandRead | Phase::GpuArray | Phase::Latency)
    }
}

/// I/O engine choice on the command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum EngineArg {
    /// io_uring if it works here, else threads (WARPFS_IO_ENGINE overrides).
    Auto,
    /// io_uring.
    Uring,
    /// Thread pool with pread/pwrite.
    Threads,
}

impl EngineArg {
    /// The library's value.
    pub fn choice(self) -> EngineChoice {
        match self {
            EngineArg::Auto => EngineChoice::Auto,
            EngineArg::Uring => EngineChoice::Uring,
            EngineArg::Threads => EngineChoice::Threads,
        }
    }
}

/// `warpfs bench` arguments.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Size of the temporary test file (K/M/G/T = powers of 1024).
    #[arg(long, value_parser = parse_size, default_value = "1G", value_name = "SIZE")]
    pub size: u64,
    /// Use this existing file instead of a temporary one (rand-write then only runs on a
    /// file warpfs created; reads are checked against a plain re-read).
    #[arg(long, value_name = "PATH", conflicts_with_all = ["size", "dir"])]
    pub file: Option<PathBuf>,
    /// Directory for the temporary test file [default: the system temp dir].
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Phases to run, comma-separated; always run in the order seq, rand-read, rand-write.
    /// With --backend cuda (or --gpus): seq moves the file into GPU memory, and rand-read (in
    /// the default list) means the GPU-initiated phases gpu-rand-read, gpu-array, latency.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "seq,rand-read,rand-write"
    )]
    pub phases: Vec<Phase>,
    /// Seconds each side of each phase runs.
    #[arg(long, default_value_t = 3.0, value_name = "S")]
    pub seconds: f64,
    /// Run a fixed number of operations per side instead of --seconds (seq: whole-file passes).
    #[arg(long, value_name = "N")]
    pub ops: Option<u64>,
    /// OS threads of the plain baselines [default: cores].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// OS threads driving warpfs agents [default: threads − daemon workers, at least 1, so
    /// warpfs (agents + daemon) and the baseline get the same number of threads].
    #[arg(long, value_name = "N")]
    pub agent_threads: Option<usize>,
    /// Total warpfs requests in flight across all agent threads [default: 32 per agent
    /// thread]. Requests through rings take longer than one pread, so warpfs needs more in
    /// flight than the baseline's one per thread to reach its throughput (Little's law).
    #[arg(long, value_name = "N")]
    pub qd: Option<usize>,
    /// Requests in flight per agent (agents = max(agent-threads, qd / agent-qd)).
    #[arg(long, default_value_t = 8, value_name = "N")]
    pub agent_qd: usize,
    /// rand-write: sync after every N writes per thread.
    #[arg(long, default_value_t = 32, value_name = "N")]
    pub fsync_every: u64,
    /// I/O engine under warpfs.
    #[arg(long, value_enum, default_value_t = EngineArg::Auto)]
    pub engine: EngineArg,
    /// Host cache tier size [default: the library's].
    #[arg(long, value_parser = parse_size, value_name = "SIZE")]
    pub cache: Option<u64>,
    /// Daemon worker threads [default: half the cores, 1..=8; every core, 1..=16, for the
    /// GPU phases of `--backend cuda`].
    #[arg(long, value_name = "N")]
    pub workers: Option<usize>,
    /// Readahead window in cache pages, 0 = off [default: the library's].
    #[arg(long, value_name = "PAGES")]
    pub readahead: Option<u32>,
    /// Write-back cache (dirty pages written on eviction/fsync) instead of write-through.
    #[arg(long)]
    pub write_back: bool,
    /// cuda: map the host cache tier into the GPU, so GPU reads that hit it are copied by the
    /// GPU straight from the tier page instead of by the daemon into lane buffers (slower on
    /// the H100 machine: bench/RESULTS.md).
    #[arg(long)]
    pub tier_refs: bool,
    /// Print the results as JSON on stdout (no progress bars).
    #[arg(long)]
    pub json: bool,
    /// Soak instead of the phases: 32 agents read and write random ranges for DURATION (90s,
    /// 10m, 1h), every byte checked, memory sampled; exit 1 on a mismatch, 2 on errors or growth.
    #[arg(long, value_parser = crate::bench::soak::parse_duration, value_name = "DURATION")]
    pub soak: Option<std::time::Duration>,
    /// GPUs for the cuda backend: `all` or ordinals like `0,1`. With more than one, the seq
    /// phase spreads the file over them (and reads a file per GPU) beside the one-GPU figure.
    #[arg(long, value_name = "all|LIST")]
    pub gpus: Option<String>,
    /// Sweep instead of the phases and write SVG plots into DIR: rand-read IOPS against
    /// threads (warpfs vs pread), seq GB/s against I/O size (warpfs vs read loop), and the
    /// latency CDF of rand-read requests; plus plot-data.json with every point.
    #[arg(long, value_name = "DIR")]
    pub plot: Option<PathBuf>,
    /// Backend.
    #[command(flatten)]
    pub backend: BackendOpt,
}

impl BenchArgs {
    /// The runtime settings these flags ask for: the library's defaults, with what `--workers`,
    /// `--cache`, `--readahead`, `--engine` and `--write-back` set.
    pub fn runtime_config(&self) -> warpfs::RuntimeConfig {
        let mut cfg = warpfs::RuntimeConfig::default();
        self.apply(&mut cfg);
        cfg
    }

    /// [`Self::runtime_config`] for phases whose requesters are GPUs: every core a daemon
    /// worker unless `--workers` says otherwise ([`warpfs::RuntimeConfig::serving_gpus`]).
    #[cfg(feature = "cuda")]
    pub fn gpu_runtime_config(&self) -> warpfs::RuntimeConfig {
        let mut cfg = warpfs::RuntimeConfig::serving_gpus();
        self.apply(&mut cfg);
        cfg
    }

    fn apply(&self, cfg: &mut warpfs::RuntimeConfig) {
        if let Some(w) = self.workers {
            cfg.workers = w.max(1);
        }
        if let Some(c) = self.cache {
            cfg.cache.capacity = c as usize;
        }
        if let Some(r) = self.readahead {
            cfg.readahead_pages = r;
        }
        cfg.engine.choice = self.engine.choice();
        cfg.write_back = self.write_back;
    }
}

/// `warpfs load` arguments.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// The file to load into GPU memory.
    pub file: PathBuf,
    /// Compare a checksum computed on the GPU (NVRTC kernel) with the CPU's of a plain read.
    #[arg(long)]
    pub verify: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub device: usize,
    /// CPU threads moving data [default: the library's, min(12, cores)].
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// File format: auto (safetensors if the name ends in .safetensors or the header says
    /// so, else raw bytes), raw (the whole file as bytes), safetensors (every tensor, one
    /// vectored call; --verify checks each tensor).
    #[arg(long, value_enum, default_value_t = LoadFormat::Auto)]
    pub format: LoadFormat,
}

/// How `warpfs load` reads its file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LoadFormat {
    /// Detect from the extension or the header.
    Auto,
    /// The whole file as bytes.
    Raw,
    /// A safetensors file: every tensor into one device buffer.
    Safetensors,
}

/// `warpfs stat` arguments.
#[derive(Debug, Clone, Args)]
pub struct StatArgs {
    /// The file to inspect.
    pub file: PathBuf,
    /// Print as JSON.
    #[arg(long)]
    pub json: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bench_defaults() {
        let cli = Cli::parse_from(["warpfs", "bench"]);
        let Command::Bench(b) = cli.command else {
            panic!("bench")
        };
        assert_eq!(b.size, 1 << 30);
        assert_eq!(
            b.phases,
            vec![Phase::Seq, Phase::RandRead, Phase::RandWrite]
        );
        assert_eq!(b.qd, None);
        assert_eq!(b.backend.backend, BackendArg::Auto);
        let cli = Cli::parse_from([
            "warpfs",
            "bench",
            "--phases",
            "rand-read,seq",
            "--size",
            "16M",
        ]);
        let Command::Bench(b) = cli.command else {
            panic!("bench")
        };
        assert_eq!(b.phases, vec![Phase::RandRead, Phase::Seq]);
        assert_eq!(b.size, 16 << 20);
    }
}
