//! `warpfs bench`: make (or take) a file, warm it, run the chosen phases — each through warpfs
//! and the plain way, in this process — and print one table or JSON.

#[cfg(feature = "cuda")]
pub mod cuda;
#[cfg(feature = "cuda")]
pub mod gpu_io;
#[cfg(feature = "cuda")]
pub mod multi;
pub mod plots;
pub mod rand;
pub mod report;
pub mod seq;
pub mod soak;
#[cfg(feature = "cuda")]
pub mod soak_cuda;
pub mod table;
#[cfg(feature = "wgpu")]
pub mod wgpu;
pub mod write;

use crate::backend;
use crate::cli::{BenchArgs, Phase};
use crate::error::{bail, Context, Result, EXIT_MISMATCH};
use crate::expected::Expected;
use crate::latency::Latencies;
use crate::progress::Progress;
use crate::system;
use crate::testfile::TestFile;
use crate::units::fmt_bytes;
use indicatif::ProgressBar;
use report::{ConfigReport, FileReport, Report, Skipped};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Barrier;
use std::time::{Duration, Instant};
use warpfs::{FileHandle, OpenOptions, Runtime, RuntimeConfig};

/// Bytes per random read or write.
pub const BLOCK: usize = 4096;

/// How much work each side of a phase does, and with how many threads.
#[derive(Debug, Clone)]
pub struct Plan {
    /// OS threads of the baselines.
    pub threads: usize,
    /// OS threads driving warpfs agents (the daemon's workers come on top).
    pub agent_threads: usize,
    /// Total warpfs requests in flight.
    pub qd: usize,
    /// Agents, all threads together.
    pub agents: usize,
    /// Requests in flight per agent.
    pub agent_depth: usize,
    /// Seconds per side.
    pub seconds: f64,
    /// Fixed operations per side instead of a time limit.
    pub ops: Option<u64>,
    /// Writes between syncs.
    pub fsync_every: u64,
}

impl Plan {
    /// Derives the plan from the arguments; agents = max(threads, ⌈qd / agent-qd⌉).
    pub fn from_args(a: &BenchArgs) -> Result<Self> {
        let threads = a.threads.unwrap_or_else(system::cores);
        if threads == 0 || a.qd == Some(0) || a.agent_qd == 0 || a.fsync_every == 0 {
            bail!("--threads, --qd, --agent-qd and --fsync-every must be at least 1");
        }
        if !(a.seconds > 0.0 && a.seconds.is_finite()) {
            bail!("--seconds must be a positive number, e.g. --seconds 3");
        }
        let workers = a
            .workers
            .unwrap_or_else(|| warpfs::RuntimeConfig::default().workers)
            .max(1);
        let agent_threads = a
            .agent_threads
            .unwrap_or_else(|| threads.saturating_sub(workers))
            .max(1);
        let qd = a.qd.unwrap_or(32 * agent_threads);
        let agents = agent_threads.max(qd.div_ceil(a.agent_qd));
        let agent_depth = qd.div_ceil(agents).clamp(1, a.agent_qd);
        Ok(Plan {
            threads,
            agent_threads,
            qd: agents * agent_depth,
            agents,
            agent_depth,
            seconds: a.seconds,
            ops: a.ops,
            fsync_every: a.fsync_every,
        })
    }
    /// A short unmeasured run before a measured one (a third of the time, at least 0.3 s;
    /// a quarter of `--ops`), so both sides start with their caches warm.
    pub fn warmup(&self) -> Plan {
        Plan {
            seconds: (self.seconds / 3.0).max(0.3),
            ops: self.ops.map(|n| (n / 4).max(1)),
            ..self.clone()
        }
    }
    /// One of `rounds` equal slices of the measured run (`--seconds` or `--ops` split), for
    /// phases that alternate their two sides slice by slice.
    pub fn slice(&self, rounds: usize) -> Plan {
        let k = rounds.max(1);
        Plan {
            seconds: self.seconds / k as f64,
            ops: self.ops.map(|n| (n / k as u64).max(1)),
            ..self.clone()
        }
    }
    /// `seconds` as a duration.
    pub fn seconds_duration(&self) -> Duration {
        Duration::from_secs_f64(self.seconds)
    }
    /// The limit of worker `i` of `n`: the time budget, or its share of `--ops`.
    fn limit<'a>(&self, i: usize, n: usize, counter: &'a AtomicU64) -> Limit<'a> {
        let quota = match self.ops {
            Some(total) => total / n as u64 + u64::from((i as u64) < total % n as u64),
            None => u64::MAX,
        };
        let deadline = self
            .ops
            .is_none()
            .then(|| Instant::now() + self.seconds_duration());
        Limit {
            deadline,
            quota,
            counter,
        }
    }
}

/// When a worker stops: a deadline or an op quota. Also feeds the progress counter.
#[derive(Debug)]
pub struct Limit<'a> {
    deadline: Option<Instant>,
    quota: u64,
    counter: &'a AtomicU64,
}

impl Limit<'_> {
    /// Whether to start another operation after `done`.
    #[inline]
    pub fn more(&self, done: u64) -> bool {
        done < self.quota && self.deadline.is_none_or(|d| Instant::now() < d)
    }
    /// Reports progress (cheaply: every 256 operations).
    #[inline]
    pub fn tick(&self, done: u64) {
        if done.is_multiple_of(256) {
            self.counter.fetch_add(256, Ordering::Relaxed);
        }
    }
    /// Samples worth reserving for latencies.
    pub fn capacity_hint(&self) -> usize {
        self.quota.min(1 << 20) as usize
    }
}

/// What one worker (or a whole side, merged) did.
#[derive(Debug, Default)]
pub struct Tally {
    /// Operations completed.
    pub ops: u64,
    /// Bytes moved.
    pub bytes: u64,
    /// Operations with wrong or short data.
    pub mismatches: u64,
    /// Syncs issued.
    pub syncs: u64,
    /// Per-operation latencies.
    pub lat: Latencies,
    /// Blocks written (for verification after write phases).
    pub touched: Vec<u64>,
    /// Time the work took (the slowest worker's, when merged).
    pub elapsed: Duration,
}

impl Tally {
    /// An empty tally with room for `n` latency samples.
    pub fn with_capacity(n: usize) -> Self {
        Tally {
            lat: Latencies::with_capacity(n),
            ..Default::default()
        }
    }
    /// Adds another worker's tally (elapsed: the longer one).
    pub fn merge(&mut self, o: Tally) {
        self.ops += o.ops;
        self.bytes += o.bytes;
        self.mismatches += o.mismatches;
        self.syncs += o.syncs;
        self.lat.merge(o.lat);
        self.touched.extend(o.touched);
        self.elapsed = self.elapsed.max(o.elapsed);
    }
    /// Adds the tally of a later run of the same side (elapsed: the sum).
    pub fn append(&mut self, o: Tally) {
        let elapsed = self.elapsed + o.elapsed;
        self.merge(o);
        self.elapsed = elapsed;
    }
}

/// Everything a phase needs.
pub struct Ctx<'a> {
    /// The runtime under test.
    pub rt: &'a Runtime,
    /// The file, registered in `rt`.
    pub fh: FileHandle,
    /// The file.
    pub file: &'a TestFile,
    /// What reads must return.
    pub expected: &'a Expected,
    /// Work sizes.
    pub plan: &'a Plan,
    /// Progress bars.
    pub progress: Progress,
}

/// Runs `work(state, limit, seed)` on one OS thread per element of `states`, all starting
/// together; shows progress on `bar`; returns the merged tally (elapsed: the slowest worker).
pub fn run_workers<S, F>(
    plan: &Plan,
    states: Vec<S>,
    name: &str,
    progress: Progress,
    work: F,
) -> Result<Tally>
where
    S: Send,
    F: Fn(S, &Limit, u64) -> Result<Tally> + Sync,
{
    let n = states.len();
    let counter = AtomicU64::new(0);
    let bar: ProgressBar = match plan.ops {
        Some(ops) => progress.ops(ops, name),
        None => progress.timed((plan.seconds * 1000.0) as u64, name),
    };
    let barrier = Barrier::new(n + 1);
    let seed_base: u64 = ::rand::random();
    let results: Vec<Result<Tally>> = std::thread::scope(|s| {
        let handles: Vec<_> = states
            .into_iter()
            .enumerate()
            .map(|(i, st)| {
                let (work, barrier, counter) = (&work, &barrier, &counter);
                // Named after the phase (first 15 bytes), so profilers can tell the sides apart.
                let thread_name: String = name.chars().take(15).collect();
                std::thread::Builder::new()
                    .name(thread_name)
                    .spawn_scoped(s, move || {
                        barrier.wait();
                        let limit = plan.limit(i, n, counter);
                        let t0 = Instant::now();
                        let mut t =
                            work(st, &limit, seed_base.wrapping_add(i as u64 * 0x9E37_79B9))?;
                        t.elapsed = t0.elapsed();
                        Ok(t)
                    })
                    // Like `Scope::spawn`, which panics when the OS refuses a thread.
                    .expect("spawning a bench thread")
            })
            .collect();
        barrier.wait();
        let t0 = Instant::now();
        while !handles.iter().all(|h| h.is_finished()) {
            bar.set_position(match plan.ops {
                Some(_) => counter.load(Ordering::Relaxed),
                None => t0.elapsed().as_millis() as u64,
            });
            std::thread::sleep(Duration::from_millis(50));
        }
        handles
            .into_iter()
            .map(|h| {
                h.join().unwrap_or_else(|_| {
                    Err(crate::error::CliError(format!(
                        "{name}: a worker thread panicked"
                    )))
                })
            })
            .collect()
    });
    bar.finish_and_clear();
    let mut total = Tally::default();
    for r in results {
        total.merge(r?);
    }
    Ok(total)
}

/// The runtime's settings for this run: the library's defaults, with what the flags set.
fn runtime_config(args: &BenchArgs, plan: &Plan) -> RuntimeConfig {
    let mut cfg = args.runtime_config();
    cfg.max_agents = cfg.max_agents.max(plan.agents + 4);
    cfg.agent_queue_depth = cfg.agent_queue_depth.max(plan.agent_depth);
    cfg
}

/// The phases to run, in the fixed order seq, rand-read, rand-write (writes last: they
/// change the file).
fn ordered(phases: &[Phase]) -> Vec<Phase> {
    let mut v = phases.to_vec();
    v.sort();
    v.dedup();
    v
}

/// Status line on stderr (quiet with `--json`).
fn say(args: &BenchArgs, msg: impl AsRef<str>) {
    if !args.json {
        eprintln!("{}", msg.as_ref());
    }
}

/// `warpfs bench`. Returns the exit code.
pub fn run(args: &BenchArgs) -> Result<i32> {
    if let Some(d) = args.soak {
        return soak::run_cli(args, d);
    }
    if let Some(dir) = &args.plot {
        return plots::run(args, dir);
    }
    let wall = Instant::now();
    let backend = match (&args.gpus, args.backend.backend) {
        (Some(_), backend::BackendArg::Auto) => backend::resolve(backend::BackendArg::Cuda)?,
        (Some(_), b) if b != backend::BackendArg::Cuda => {
            bail!(
                "--gpus selects CUDA devices: use it with --backend cuda (or leave --backend out)"
            )
        }
        (_, b) => backend::resolve(b)?,
    };
    #[cfg(feature = "cuda")]
    if backend == backend::BackendArg::Cuda {
        if let Some(spec) = &args.gpus {
            if !args.phases.contains(&Phase::Seq) {
                if let Err(e) = warpfs::backend::cuda::driver::init() {
                    bail!("{e}");
                }
                let devices = warpfs::backend::cuda::multi::parse_gpus(
                    spec,
                    warpfs::backend::cuda::multi::device_count(),
                )?;
                return gpu_io::run_standalone(args, &devices);
            }
            return multi::run(args, spec);
        }
        return cuda::run(args);
    }
    #[cfg(feature = "wgpu")]
    if backend == backend::BackendArg::Wgpu {
        return wgpu::run(args);
    }
    let progress = Progress::new(!args.json);
    let plan = Plan::from_args(args)?;
    let phases = ordered(&args.phases);

    let file = match &args.file {
        Some(p) => TestFile::existing(p)?,
        None => {
            let dir = args.dir.clone().unwrap_or_else(std::env::temp_dir);
            say(
                args,
                format!(
                    "creating a {} test file in {}",
                    fmt_bytes(args.size),
                    dir.display()
                ),
            );
            TestFile::create(&dir, args.size, &progress.bytes(args.size, "creating file"))?
        }
    };

    let mut skipped = Vec::new();
    let mut run_phases = Vec::new();
    for p in phases {
        if p.gpu() {
            skipped.push(Skipped {
                phase: p.name(),
                reason: "GPU-initiated phases need --backend cuda (a build with --features cuda)"
                    .into(),
            });
        } else if p == Phase::RandWrite && !file.pattern {
            skipped.push(Skipped {
                phase: p.name(),
                reason: "--file is not a warpfs test file; writing would destroy its contents (run without --file)".into(),
            });
        } else {
            run_phases.push(p);
        }
    }
    let cfg = runtime_config(args, &plan);
    if run_phases.contains(&Phase::Seq) {
        let cache = cfg.cache.capacity as u64;
        if let Some(avail) = system::mem_available() {
            if file.size + cache > avail {
                bail!(
                    "the seq phase reads the whole file into one buffer: {} + {} cache, but only {} memory is available; use a smaller --size (or --file), or --phases rand-read,rand-write",
                    fmt_bytes(file.size),
                    fmt_bytes(cache),
                    fmt_bytes(avail)
                );
            }
        }
    }

    say(
        args,
        format!("warming {} into the page cache", file.shown.display()),
    );
    file.warm(&progress.bytes(file.size, "warming"))?;

    let rt = Runtime::new(cfg).ctx(|| "starting the warpfs runtime".into())?;
    let writes = run_phases.contains(&Phase::RandWrite);
    let mode = if writes {
        OpenOptions::read_write()
    } else {
        OpenOptions::read_only()
    };
    let fh = rt.open(file.open_path(), mode)?;
    let expected = file.expected()?;
    let ctx = Ctx {
        rt: &rt,
        fh: fh.clone(),
        file: &file,
        expected: &expected,
        plan: &plan,
        progress,
    };

    let mut results = Vec::new();
    for p in &run_phases {
        say(args, format!("phase {} ...", p.name()));
        let r = match p {
            Phase::Seq => seq::run(&ctx)?,
            Phase::RandRead => rand::run(&ctx)?,
            Phase::RandWrite => write::run(&ctx)?,
            Phase::GpuRandRead | Phase::GpuArray | Phase::Latency => continue,
        };
        results.push(r);
    }
    let c = rt.config();
    let config = ConfigReport {
        threads: plan.threads,
        agent_threads: plan.agent_threads,
        queue_depth: plan.qd,
        agents: plan.agents,
        agent_queue_depth: plan.agent_depth,
        block_size: BLOCK,
        seconds: plan.seconds,
        ops: plan.ops,
        fsync_every: plan.fsync_every,
        workers: c.workers,
        cache_bytes: c.cache.capacity,
        cache_page_size: c.cache.page_size,
        readahead_pages: c.readahead_pages,
        write_back: c.write_back,
    };
    let engine = rt.engine_name().to_string();
    rt.close(&fh)?;
    drop(rt);

    let mismatches = results.iter().map(|r| r.mismatches()).sum();
    let report = Report {
        version: env!("CARGO_PKG_VERSION"),
        engine,
        backend: backend.name(),
        cores: system::cores(),
        file: FileReport {
            path: file.shown.display().to_string(),
            size: file.size,
            temporary: file.temporary,
            pattern: file.pattern,
        },
        config,
        phases: results,
        skipped,
        mismatches,
        wall_seconds: wall.elapsed().as_secs_f64(),
    };
    drop(file);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("report serialises")
        );
    } else {
        print!("{}", table::render(&report));
    }
    Ok(if mismatches > 0 { EXIT_MISMATCH } else { 0 })
}
