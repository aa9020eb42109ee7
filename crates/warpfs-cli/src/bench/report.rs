//! What a benchmark run found: per-phase warpfs and baseline figures, and the run's context.
//! Serialised as-is by `--json`; rendered by [`super::table`].

use super::Tally;
use serde::Serialize;

/// One side (warpfs or baseline) of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct Figure {
    /// The headline number, in `unit`.
    pub value: f64,
    /// `"GB/s"` or `"IOPS"`.
    pub unit: &'static str,
    /// Operations completed (reads, writes, or whole-file passes for `seq`).
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Measured time in seconds.
    pub seconds: f64,
    /// Median latency per operation, in microseconds.
    pub p50_us: Option<f64>,
    /// 99th-percentile latency per operation, in microseconds.
    pub p99_us: Option<f64>,
    /// Syncs issued (`rand-write`).
    pub syncs: u64,
    /// Operations whose bytes were wrong (or short).
    pub mismatches: u64,
}

impl Figure {
    /// Throughput figure (GB/s, 10^9 bytes per second).
    pub fn throughput(mut t: Tally) -> Self {
        let secs = t.elapsed.as_secs_f64();
        let v = if secs > 0.0 {
            t.bytes as f64 / secs / 1e9
        } else {
            0.0
        };
        Self::new(&mut t, secs, v, "GB/s")
    }
    /// Operations-per-second figure.
    pub fn iops(mut t: Tally) -> Self {
        let secs = t.elapsed.as_secs_f64();
        let v = if secs > 0.0 { t.ops as f64 / secs } else { 0.0 };
        Self::new(&mut t, secs, v, "IOPS")
    }
    fn new(t: &mut Tally, seconds: f64, value: f64, unit: &'static str) -> Self {
        Figure {
            value,
            unit,
            ops: t.ops,
            bytes: t.bytes,
            seconds,
            p50_us: t.lat.percentile_us(50.0),
            p99_us: t.lat.percentile_us(99.0),
            syncs: t.syncs,
            mismatches: t.mismatches,
        }
    }
}

/// Both sides of one phase.
#[derive(Debug, Clone, Serialize)]
pub struct PhaseResult {
    /// `seq`, `rand-read` or `rand-write`.
    pub phase: &'static str,
    /// Through warpfs.
    pub warpfs: Figure,
    /// The plain way, same job.
    pub baseline: Figure,
    /// `warpfs.value / baseline.value` (higher is better for warpfs).
    pub ratio: f64,
    /// Host cache hit rate during the warpfs run (request path only).
    pub hit_rate: Option<f64>,
    /// Bytes checked after the phase (write verification), if any.
    pub verified_bytes: u64,
    /// What to know when reading the figures.
    pub notes: Vec<String>,
}

impl PhaseResult {
    /// Pairs the two sides and computes the ratio.
    pub fn new(phase: &'static str, warpfs: Figure, baseline: Figure) -> Self {
        let ratio = if baseline.value > 0.0 {
            warpfs.value / baseline.value
        } else {
            0.0
        };
        PhaseResult {
            phase,
            warpfs,
            baseline,
            ratio,
            hit_rate: None,
            verified_bytes: 0,
            notes: Vec::new(),
        }
    }
    /// Wrong operations on both sides.
    pub fn mismatches(&self) -> u64 {
        self.warpfs.mismatches + self.baseline.mismatches
    }
}

/// The test file.
#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    /// Where it is (or was: temporary files are removed).
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Created by this run and removed afterwards.
    pub temporary: bool,
    /// Reads checked against the warpfs pattern (else against a plain re-read of the file).
    pub pattern: bool,
}

/// The settings of the run.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigReport {
    /// OS threads of the plain baselines.
    pub threads: usize,
    /// OS threads driving warpfs agents (daemon workers come on top).
    pub agent_threads: usize,
    /// Requests in flight through warpfs, all threads together.
    pub queue_depth: usize,
    /// Host agents (each like one GPU warp).
    pub agents: usize,
    /// Requests in flight per agent.
    pub agent_queue_depth: usize,
    /// Bytes per random operation.
    pub block_size: usize,
    /// Seconds per phase side (when not op-count bound).
    pub seconds: f64,
    /// Fixed operations per phase side, if set.
    pub ops: Option<u64>,
    /// Writes between syncs in `rand-write`.
    pub fsync_every: u64,
    /// Daemon worker threads.
    pub workers: usize,
    /// Host cache tier bytes.
    pub cache_bytes: usize,
    /// Host cache page bytes.
    pub cache_page_size: usize,
    /// Readahead window in pages.
    pub readahead_pages: u32,
    /// Write-back cache (else write-through).
    pub write_back: bool,
}

/// A phase that did not run, and why.
#[derive(Debug, Clone, Serialize)]
pub struct Skipped {
    /// The phase.
    pub phase: &'static str,
    /// Why.
    pub reason: String,
}

/// Everything `warpfs bench` prints.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// warpfs version.
    pub version: &'static str,
    /// I/O engine that ran (`uring` or `threads`).
    pub engine: String,
    /// Backend that ran.
    pub backend: &'static str,
    /// Logical cores.
    pub cores: usize,
    /// The test file.
    pub file: FileReport,
    /// Settings.
    pub config: ConfigReport,
    /// Results, in run order.
    pub phases: Vec<PhaseResult>,
    /// Phases that did not run.
    pub skipped: Vec<Skipped>,
    /// Wrong operations over all phases (non-zero ⇒ exit code 1).
    pub mismatches: u64,
    /// Wall time of the whole run, seconds.
    pub wall_seconds: f64,
}
