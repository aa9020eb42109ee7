//! `warpfs bench --soak DURATION`: many agents read and write random ranges of one file for a
//! long time; every byte read is checked against an in-memory model of the file, every error
//! is counted, and the process's resident memory is sampled from `/proc/self/status` so a leak
//! shows as a rising line. At the end the cache is flushed and the whole file is compared with
//! the model once more.
//!
//! The file is cut into chunks of [`CHUNK`] bytes, each with its own lock and its own part of
//! the model: an agent takes a random chunk, then reads (and checks) or writes (and records) a
//! random range inside it, so agents share pages — across cache pages, daemon workers and
//! engine threads — without racing on what the model says.

use crate::cli::BenchArgs;
use crate::error::{CliError, Result, EXIT_ERROR, EXIT_MISMATCH};
use crate::units::fmt_bytes;
use rand::{Rng, SeedableRng};
use std::io::Write;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

/// Bytes per model chunk (one lock each).
pub const CHUNK: usize = 256 * 1024;

/// Largest file a soak uses (the model keeps all of it in memory).
pub const MAX_FILE: u64 = 256 << 20;

/// What a soak does.
#[derive(Debug, Clone)]
pub struct SoakConfig {
    /// How long the agents run.
    pub duration: Duration,
    /// Size of the temporary file (rounded down to whole chunks, at least one).
    pub file_size: u64,
    /// Directory of the temporary file.
    pub dir: PathBuf,
    /// Agents, each on its own thread.
    pub agents: usize,
    /// Longest read or write (split into requests of the runtime's `request_buffer`).
    pub max_io: usize,
    /// Seed of every random choice.
    pub seed: u64,
    /// Runtime settings (engine, cache, workers, write-back).
    pub runtime: RuntimeConfig,
    /// Print a progress line at every memory sample.
    pub progress: bool,
}

impl SoakConfig {
    /// A soak of `duration` with `warpfs bench`'s settings: `--size` (at most [`MAX_FILE`]),
    /// `--dir`, `--engine`, `--cache`, `--workers`, `--readahead`, `--write-back`; 32 agents.
    pub fn from_args(args: &BenchArgs, duration: Duration) -> Self {
        let runtime = args.runtime_config();
        Self {
            duration,
            file_size: args.size.min(MAX_FILE),
            dir: args.dir.clone().unwrap_or_else(std::env::temp_dir),
            agents: 32,
            max_io: 192 * 1024,
            seed: 0x50A4,
            runtime,
            progress: !args.json,
        }
    }
}

/// One memory sample.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct RssSample {
    /// Seconds since the agents started.
    pub seconds: f64,
    /// Resident set size in KiB (`VmRSS`).
    pub rss_kib: u64,
    /// Operations done so far.
    pub ops: u64,
}

/// What a soak found.
#[derive(Debug, Clone, serde::Serialize)]
pub struct SoakReport {
    /// Seconds the agents ran.
    pub seconds: f64,
    /// Engine the daemon ran.
    pub engine: &'static str,
    /// Write-back cache?
    pub write_back: bool,
    /// Agents.
    pub agents: usize,
    /// File size.
    pub file_bytes: u64,
    /// Reads done (each fully checked).
    pub reads: u64,
    /// Writes done.
    pub writes: u64,
    /// Fsyncs done.
    pub fsyncs: u64,
    /// Bytes read and checked.
    pub bytes_read: u64,
    /// Bytes written.
    pub bytes_written: u64,
    /// Bytes read that differed from the model, during the run and in the final check. Must be 0.
    pub mismatches: u64,
    /// Operations that returned an error. Must be 0.
    pub errors: u64,
    /// Up to 8 error or mismatch descriptions.
    pub first_problems: Vec<String>,
    /// Memory over time.
    pub rss: Vec<RssSample>,
    /// RSS once warmed up (first sample at or after 10% of the run), KiB.
    pub rss_warm_kib: u64,
    /// Last RSS sample, KiB.
    pub rss_end_kib: u64,
    /// Largest RSS sample, KiB.
    pub rss_max_kib: u64,
    /// Whether memory stayed flat: the end is within 10% + 16 MiB of the warmed-up sample.
    pub rss_flat: bool,
}

impl SoakReport {
    /// Whether the soak passed: no mismatch, no error, flat memory.
    pub fn passed(&self) -> bool {
        self.mismatches == 0 && self.errors == 0 && self.rss_flat
    }
}

/// Parses a soak duration: `90`, `90s`, `10m`, `1h`, `1.5m` (at least 1 s).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{text:?} is not a duration: use e.g. 90s, 10m or 1h"))?;
    let secs = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "s" | "sec" => n,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!(
                "unknown duration unit {other:?} in {text:?}: use s, m or h"
            ))
        }
    };
    if !(1.0..1e7).contains(&secs) {
        return Err(format!(
            "{text:?}: a soak lasts from 1 second to 100 days, e.g. 90s, 10m or 1h"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Resident set size of this process in KiB, from `/proc/self/status` (0 if unavailable).
pub fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

#[derive(Default)]
struct Counters {
    reads: AtomicU64,
    writes: AtomicU64,
    fsyncs: AtomicU64,
    bytes_read: AtomicU64,
    bytes_written: AtomicU64,
    mismatches: AtomicU64,
    errors: AtomicU64,
}

impl Counters {
    fn ops(&self) -> u64 {
        self.reads.load(Ordering::Relaxed)
            + self.writes.load(Ordering::Relaxed)
            + self.fsyncs.load(Ordering::Relaxed)
    }
}

fn note(problems: &Mutex<Vec<String>>, what: String) {
    let mut p = problems.lock().unwrap_or_else(|e| e.into_inner());
    if p.len() < 8 {
        p.push(what);
    }
}

/// Runs a soak; progress lines (one per memory sample) go to `log`.
pub fn run_soak(cfg: &SoakConfig, log: &mut (dyn Write + Send)) -> Result<SoakReport> {
    if cfg.agents == 0 || cfg.max_io == 0 {
        return Err(CliError(
            "a soak needs at least one agent and --max-io ≥ 1".into(),
        ));
    }
    let chunks = (cfg.file_size / CHUNK as u64).max(1) as usize;
    let file_bytes = (chunks * CHUNK) as u64;
    let mut rng = rand::rngs::StdRng::seed_from_u64(cfg.seed);
    let model: Vec<Mutex<Vec<u8>>> = (0..chunks)
        .map(|_| {
            let mut c = vec![0u8; CHUNK];
            rng.fill(&mut c[..]);
            Mutex::new(c)
        })
        .collect();
    let path = cfg.dir.join(format!("warpfs-soak-{}", std::process::id()));
    let file = {
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .map_err(|e| {
                CliError(format!(
                    "creating {}: {e}; pick another --dir",
                    path.display()
                ))
            })?;
        for c in &model {
            f.write_all(&c.lock().unwrap_or_else(|e| e.into_inner()))
                .map_err(|e| CliError(format!("writing {}: {e}", path.display())))?;
        }
        f
    };
    let mut rt_cfg = cfg.runtime.clone();
    rt_cfg.max_agents = rt_cfg.max_agents.max(cfg.agents + 1);
    let opened = Runtime::new(rt_cfg).and_then(|rt| {
        let h = rt.open(&path, OpenOptions::read_write())?;
        Ok((rt, h))
    });
    // Nothing left behind: the runtime and `file` keep the inode.
    let _ = std::fs::remove_file(&path);
    let (rt, handle) = opened?;
    let counters = Counters::default();
    let problems = Mutex::new(Vec::new());
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let sample_every = (cfg.duration / 24).clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut samples = vec![RssSample {
        seconds: 0.0,
        rss_kib: rss_kib(),
        ops: 0,
    }];
    std::thread::scope(|s| -> Result<()> {
        let mut handles = Vec::new();
        for a in 0..cfg.agents {
            let mut agent = rt.agent()?;
            let (model, counters, problems, stop, handle) =
                (&model, &counters, &problems, &stop, &handle);
            let (seed, max_io) = (
                cfg.seed ^ (a as u64 + 1).wrapping_mul(0x9E37_79B9),
                cfg.max_io,
            );
            handles.push(s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
                let mut buf = vec![0u8; max_io.min(CHUNK)];
                while !stop.load(Ordering::Relaxed) {
                    let c = rng.random_range(0..model.len());
                    let roll = rng.random_range(0..100);
                    if roll < 5 {
                        match agent.fsync(handle) {
                            Ok(()) => counters.fsyncs.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                note(problems, format!("fsync: {e}"));
                                counters.errors.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                        continue;
                    }
                    let at = rng.random_range(0..CHUNK - 1);
                    let len = rng.random_range(1..=(CHUNK - at).min(buf.len()));
                    let off = (c * CHUNK + at) as u64;
                    let mut m = model[c].lock().unwrap_or_else(|e| e.into_inner());
                    let want = &mut m[at..at + len];
                    if roll < 55 {
                        buf[..len].fill(0xA5);
                        match agent.read(handle, off, &mut buf[..len]) {
                            Ok(n) => {
                                let bad = (n != len) as u64 * (len - n) as u64
                                    + buf[..n]
                                        .iter()
                                        .zip(&want[..n])
                                        .filter(|(x, y)| x != y)
                                        .count() as u64;
                                if bad > 0 {
                                    note(
                                        problems,
                                        format!(
                                            "read {off}+{len}: {bad} bytes differ (got {n} bytes)"
                                        ),
                                    );
                                    counters.mismatches.fetch_add(bad, Ordering::Relaxed);
                                    // Resynchronise: later checks judge later writes only.
                                    want[..n].copy_from_slice(&buf[..n]);
                                }
                                counters.reads.fetch_add(1, Ordering::Relaxed);
                                counters.bytes_read.fetch_add(n as u64, Ordering::Relaxed);
                            }
                            Err(e) => {
                                note(problems, format!("read {off}+{len}: {e}"));
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    } else {
                        rng.fill(&mut buf[..len]);
                        match agent.write(handle, off, &buf[..len]) {
                            Ok(n) if n == len => {
                                want.copy_from_slice(&buf[..len]);
                                counters.writes.fetch_add(1, Ordering::Relaxed);
                                counters
                                    .bytes_written
                                    .fetch_add(len as u64, Ordering::Relaxed);
                            }
                            other => {
                                note(problems, format!("write {off}+{len}: {other:?}"));
                                counters.errors.fetch_add(1, Ordering::Relaxed);
                                // Unknown state: adopt what the file holds now.
                                if let Ok(n) = agent.read(handle, off, &mut buf[..len]) {
                                    want[..n].copy_from_slice(&buf[..n]);
                                }
                            }
                        }
                    }
                }
            }));
        }
        // Sample memory until the time is up (the agents run meanwhile).
        let end = start + cfg.duration;
        loop {
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep(sample_every.min(end - now));
            let sample = RssSample {
                seconds: start.elapsed().as_secs_f64(),
                rss_kib: rss_kib(),
                ops: counters.ops(),
            };
            if cfg.progress {
                let _ = writeln!(
                    log,
                    "soak {:>7.1}s  ops {:>10}  mismatches {}  errors {}  rss {}",
                    sample.seconds,
                    sample.ops,
                    counters.mismatches.load(Ordering::Relaxed),
                    counters.errors.load(Ordering::Relaxed),
                    fmt_bytes(sample.rss_kib * 1024)
                );
            }
            samples.push(sample);
        }
        stop.store(true, Ordering::Relaxed);
        for h in handles {
            h.join()
                .map_err(|_| CliError("a soak agent panicked".into()))?;
        }
        Ok(())
    })?;
    let seconds = start.elapsed().as_secs_f64();
    // Final check: everything acknowledged is in the file, byte for byte.
    rt.flush()?;
    let mut final_bad = 0u64;
    let mut disk = vec![0u8; CHUNK];
    for (c, m) in model.iter().enumerate() {
        use std::os::unix::fs::FileExt;
        file.read_exact_at(&mut disk, (c * CHUNK) as u64)
            .map_err(|e| CliError(format!("re-reading the soak file: {e}")))?;
        let m = m.lock().unwrap_or_else(|e| e.into_inner());
        let bad = disk.iter().zip(m.iter()).filter(|(x, y)| x != y).count() as u64;
        if bad > 0 {
            note(
                &problems,
                format!("final check: chunk {c} has {bad} bytes differing from the model"),
            );
        }
        final_bad += bad;
    }
    let (rss_warm_kib, rss_end_kib, rss_max_kib, rss_flat) = flatness(
        seconds,
        &samples
            .iter()
            .map(|s| (s.seconds, s.rss_kib))
            .collect::<Vec<_>>(),
    );
    Ok(SoakReport {
        seconds,
        engine: rt.engine_name(),
        write_back: cfg.runtime.write_back,
        agents: cfg.agents,
        file_bytes,
        reads: counters.reads.load(Ordering::Relaxed),
        writes: counters.writes.load(Ordering::Relaxed),
        fsyncs: counters.fsyncs.load(Ordering::Relaxed),
        bytes_read: counters.bytes_read.load(Ordering::Relaxed),
        bytes_written: counters.bytes_written.load(Ordering::Relaxed),
        mismatches: counters.mismatches.load(Ordering::Relaxed) + final_bad,
        errors: counters.errors.load(Ordering::Relaxed),
        first_problems: problems.into_inner().unwrap_or_else(|e| e.into_inner()),
        rss_flat,
        rss: samples,
        rss_warm_kib,
        rss_end_kib,
        rss_max_kib,
    })
}

/// Memory over a run of `seconds` from `(seconds, KiB)` samples (the first at 0): the warmed-up
/// value (first sample at or after 10% of the run), the last, the largest, and whether it
/// stayed flat (the last within 10% + 16 MiB of the warmed-up value).
pub fn flatness(seconds: f64, samples: &[(f64, u64)]) -> (u64, u64, u64, bool) {
    let warm_at = seconds * 0.1;
    let first = samples.first().map_or(0, |s| s.1);
    let warm = samples
        .iter()
        .find(|s| s.0 >= warm_at && s.0 > 0.0)
        .map_or(first, |s| s.1);
    let end = samples.last().map_or(0, |s| s.1);
    let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
    (warm, end, max, end <= warm + warm / 10 + 16 * 1024)
}

/// `warpfs bench --soak DURATION`: runs the soak with the bench arguments and prints the report
/// (JSON with `--json`). Exit code: 0 pass, 1 mismatches, 2 errors or growing memory.
pub fn run_cli(args: &BenchArgs, duration: Duration) -> Result<i32> {
    #[cfg(feature = "cuda")]
    if args.backend.backend == crate::backend::BackendArg::Cuda {
        return super::soak_cuda::run_cli(args, duration);
    }
    let cfg = SoakConfig::from_args(args, duration);
    let r = run_soak(&cfg, &mut std::io::stderr())?;
    if args.json {
        let text = serde_json::to_string_pretty(&r).map_err(|e| CliError(e.to_string()))?;
        println!("{text}");
    } else {
        print_report(&r, &mut std::io::stdout())?;
    }
    Ok(if r.mismatches > 0 {
        EXIT_MISMATCH
    } else if !r.passed() {
        EXIT_ERROR
    } else {
        0
    })
}

/// Prints a report for people.
pub fn print_report(r: &SoakReport, out: &mut dyn Write) -> std::io::Result<()> {
    print_lines(r, out)?;
    writeln!(out, "  {}", if r.passed() { "PASS" } else { "FAIL" })
}

/// Prints a report for people, without the PASS/FAIL verdict (for reports that add lines).
pub fn print_lines(r: &SoakReport, out: &mut dyn Write) -> std::io::Result<()> {
    writeln!(
        out,
        "soak: {:.0} s, {} agents, engine {}, {} cache, file {}",
        r.seconds,
        r.agents,
        r.engine,
        if r.write_back {
            "write-back"
        } else {
            "write-through"
        },
        fmt_bytes(r.file_bytes)
    )?;
    writeln!(
        out,
        "  {} reads ({} checked), {} writes ({}), {} fsyncs",
        r.reads,
        fmt_bytes(r.bytes_read),
        r.writes,
        fmt_bytes(r.bytes_written),
        r.fsyncs
    )?;
    writeln!(out, "  mismatches {}  errors {}", r.mismatches, r.errors)?;
    writeln!(
        out,
        "  rss warm {}  end {}  max {}  ({})",
        fmt_bytes(r.rss_warm_kib * 1024),
        fmt_bytes(r.rss_end_kib * 1024),
        fmt_bytes(r.rss_max_kib * 1024),
        if r.rss_flat { "flat" } else { "GROWING" }
    )?;
    for p in &r.first_problems {
        writeln!(out, "  problem: {p}")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration(" 1.5m "), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("0s").is_err());
        // Found by fuzzing: positive, but 0 ns once converted.
        assert!(parse_duration("0.000000000000000000003").is_err());
        assert!(parse_duration("10 parsecs").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn rss_is_read_from_proc() {
        assert!(rss_kib() > 0);
    }

    #[test]
    fn a_short_soak_checks_bytes_and_passes() {
        let dir = std::env::temp_dir();
        let cfg = SoakConfig {
            duration: Duration::from_secs(2),
            file_size: 4 * CHUNK as u64,
            dir,
            agents: 6,
            max_io: 100_000,
            seed: 7,
            runtime: RuntimeConfig {
                workers: 2,
                cache: warpfs::cache::CacheConfig {
                    page_size: 4096,
                    capacity: 64 * 4096,
                },
                write_back: true,
                ..RuntimeConfig::default()
            },
            progress: false,
        };
        let r = run_soak(&cfg, &mut std::io::sink()).unwrap();
        assert!(r.reads > 10 && r.writes > 10, "{r:?}");
        assert_eq!((r.mismatches, r.errors), (0, 0), "{:?}", r.first_problems);
    }
}
