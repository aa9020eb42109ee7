//! `warpfs bench --plot DIR`: sweeps that make curves, each point side by side in this process
//! on the same file, every byte read checked; then SVG plots and the points as JSON.
//!
//! - `rand-read-threads.svg`: random 4 KiB reads per second against threads (1, 2, 4, … up to
//!   `--threads` or the core count), warpfs vs `pread` — each point is the `rand-read` phase
//!   run with that thread count.
//! - `seq-io-size.svg`: whole-file GB/s against the size of each call (4 KiB … 16 MiB, at most
//!   the file size), warpfs `Runtime::read_bulk` vs a `read()` loop.
//! - `latency-cdf.svg`: the distribution of rand-read request latencies at the default thread
//!   count, warpfs vs `pread`.
//! - `plot-data.json`: every point.

use super::report::PhaseResult;
use super::{rand, run_workers, runtime_config, seq, Ctx, Plan, Tally, BLOCK};
use crate::baseline;
use crate::cli::BenchArgs;
use crate::error::{bail, Context, Result, EXIT_MISMATCH};
use crate::plot::{line_chart, Series};
use crate::progress::Progress;
use crate::system;
use crate::testfile::TestFile;
use crate::units::fmt_bytes;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use warpfs::{OpenOptions, Runtime};

/// I/O sizes of the seq sweep: 4 KiB × 4^k up to 16 MiB.
const IO_SIZES: [usize; 7] = [
    4 << 10,
    16 << 10,
    64 << 10,
    256 << 10,
    1 << 20,
    4 << 20,
    16 << 20,
];
/// Points of each latency CDF.
const CDF_POINTS: usize = 200;
/// Granularity at which wrong bytes are counted in seq passes.
const CHECK_CHUNK: usize = 4 << 20;

/// Thread counts of the sweep: powers of two below `max`, then `max`.
pub fn thread_points(max: usize) -> Vec<usize> {
    let mut v: Vec<usize> = std::iter::successors(Some(1usize), |t| t.checked_mul(2))
        .take_while(|&t| t < max)
        .collect();
    v.push(max.max(1));
    v
}

/// The plan of the phase at `threads` baseline threads (agent threads and queue depth follow
/// from it as in a plain `warpfs bench --threads N`).
fn plan_at(args: &BenchArgs, threads: usize) -> Result<Plan> {
    let mut a = args.clone();
    a.threads = Some(threads);
    a.agent_threads = None;
    a.qd = None;
    Plan::from_args(&a)
}

/// One point of the seq sweep.
struct SeqPoint {
    io: usize,
    warpfs: Tally,
    base: Tally,
}

/// Runs the sweeps and writes the plots. Returns the exit code (1 on wrong bytes).
pub fn run(args: &BenchArgs, dir: &Path) -> Result<i32> {
    let progress = Progress::new(!args.json);
    let say = |m: String| {
        if !args.json {
            eprintln!("{m}");
        }
    };
    std::fs::create_dir_all(dir)
        .ctx(|| format!("creating the plot directory {}", dir.display()))?;
    let base_plan = Plan::from_args(args)?;
    let max_threads = args.threads.unwrap_or_else(system::cores);
    let threads = thread_points(max_threads);
    let plans = threads
        .iter()
        .map(|&t| plan_at(args, t))
        .collect::<Result<Vec<_>>>()?;

    let file = match &args.file {
        Some(p) => TestFile::existing(p)?,
        None => {
            let d = args.dir.clone().unwrap_or_else(std::env::temp_dir);
            say(format!(
                "creating a {} test file in {}",
                fmt_bytes(args.size),
                d.display()
            ));
            TestFile::create(&d, args.size, &progress.bytes(args.size, "creating file"))?
        }
    };
    if file.size < BLOCK as u64 {
        bail!(
            "the sweeps need a file of at least {} bytes (--size)",
            BLOCK
        );
    }
    say(format!(
        "warming {} into the page cache",
        file.shown.display()
    ));
    file.warm(&progress.bytes(file.size, "warming"))?;

    let mut cfg = runtime_config(args, &base_plan);
    for p in &plans {
        cfg.max_agents = cfg.max_agents.max(p.agents + 4);
        cfg.agent_queue_depth = cfg.agent_queue_depth.max(p.agent_depth);
    }
    let rt = Runtime::new(cfg).ctx(|| "starting the warpfs runtime".into())?;
    let fh = rt.open(file.open_path(), OpenOptions::read_only())?;
    let expected = file.expected()?;
    let ctx_for = |plan| Ctx {
        rt: &rt,
        fh: fh.clone(),
        file: &file,
        expected: &expected,
        plan,
        progress,
    };

    // 1. rand-read against threads.
    let mut rand_points: Vec<(usize, PhaseResult)> = Vec::new();
    for (t, plan) in threads.iter().zip(&plans) {
        say(format!(
            "sweep rand-read: {t} threads ({}/{})",
            rand_points.len() + 1,
            threads.len()
        ));
        rand_points.push((*t, rand::run(&ctx_for(plan))?));
    }

    // 2. seq against I/O size.
    let size = usize::try_from(file.size).ctx(|| "file size".into())?;
    let mut sizes: Vec<usize> = IO_SIZES.iter().copied().filter(|&s| s <= size).collect();
    if sizes.is_empty() {
        sizes.push(size);
    }
    let mut buf = vec![0u8; size];
    let mut plain =
        File::open(file.open_path()).ctx(|| format!("opening {}", file.shown.display()))?;
    let mut seq_points = Vec::new();
    for (i, &io) in sizes.iter().enumerate() {
        say(format!(
            "sweep seq: {} per call ({}/{})",
            fmt_bytes(io as u64),
            i + 1,
            sizes.len()
        ));
        let ctx = ctx_for(&base_plan);
        seq_points.push(seq_point(&ctx, &mut plain, &mut buf, io)?);
    }
    drop(buf);

    // 3. Latency CDF of rand-read at the default thread count.
    say("sweep latency CDF: rand-read".into());
    let ctx = ctx_for(&base_plan);
    let (mut lat_w, mut lat_b) = latencies(&ctx)?;
    rt.close(&fh)?;
    drop(rt);

    let mismatches = rand_points
        .iter()
        .map(|(_, r)| r.mismatches())
        .chain(
            seq_points
                .iter()
                .map(|p| p.warpfs.mismatches + p.base.mismatches),
        )
        .sum::<u64>()
        + lat_w.mismatches
        + lat_b.mismatches;

    // Plots.
    let mut files: Vec<PathBuf> = Vec::new();
    let p = dir.join("rand-read-threads.svg");
    line_chart(
        &p,
        &format!(
            "Random 4 KiB reads, {} file in the page cache",
            fmt_bytes(file.size)
        ),
        "threads (baseline; warpfs: agent threads + daemon workers)",
        "reads per second",
        false,
        &[
            Series {
                name: "warpfs (request rings)".into(),
                points: rand_points
                    .iter()
                    .map(|(t, r)| (*t as f64, r.warpfs.value))
                    .collect(),
            },
            Series {
                name: "pread".into(),
                points: rand_points
                    .iter()
                    .map(|(t, r)| (*t as f64, r.baseline.value))
                    .collect(),
            },
        ],
    )?;
    files.push(p);
    let gbps = |t: &Tally| t.bytes as f64 / t.elapsed.as_secs_f64().max(1e-9) / 1e9;
    let p = dir.join("seq-io-size.svg");
    line_chart(
        &p,
        &format!(
            "Whole {} file into memory, by size of each call",
            fmt_bytes(file.size)
        ),
        "I/O size per call (KiB)",
        "GB/s",
        true,
        &[
            Series {
                name: "warpfs read_bulk".into(),
                points: seq_points
                    .iter()
                    .map(|s| (s.io as f64 / 1024.0, gbps(&s.warpfs)))
                    .collect(),
            },
            Series {
                name: "read() loop".into(),
                points: seq_points
                    .iter()
                    .map(|s| (s.io as f64 / 1024.0, gbps(&s.base)))
                    .collect(),
            },
        ],
    )?;
    files.push(p);
    let cdf_w = lat_w.lat.cdf_us(CDF_POINTS);
    let cdf_b = lat_b.lat.cdf_us(CDF_POINTS);
    let p = dir.join("latency-cdf.svg");
    line_chart(
        &p,
        &format!("Random 4 KiB read latency, {} threads", base_plan.threads),
        "latency (µs)",
        "fraction of reads at or below",
        true,
        &[
            Series {
                name: format!(
                    "warpfs (qd {} on {} agent threads)",
                    base_plan.qd, base_plan.agent_threads
                ),
                points: cdf_w.clone(),
            },
            Series {
                name: format!("pread ({} threads)", base_plan.threads),
                points: cdf_b.clone(),
            },
        ],
    )?;
    files.push(p);

    let data = serde_json::json!({
        "version": env!("CARGO_PKG_VERSION"),
        "file": {"path": file.shown.display().to_string(), "size": file.size},
        "cores": system::cores(),
        "rand_read_threads": rand_points.iter().map(|(t, r)| serde_json::json!({
            "threads": t, "warpfs_iops": r.warpfs.value, "pread_iops": r.baseline.value,
            "ratio": r.ratio, "warpfs_p50_us": r.warpfs.p50_us, "pread_p50_us": r.baseline.p50_us,
        })).collect::<Vec<_>>(),
        "seq_io_size": seq_points.iter().map(|s| serde_json::json!({
            "io_bytes": s.io, "warpfs_gbps": gbps(&s.warpfs), "read_gbps": gbps(&s.base),
            "ratio": gbps(&s.warpfs) / gbps(&s.base).max(1e-12),
            "warpfs_passes": s.warpfs.ops, "read_passes": s.base.ops,
        })).collect::<Vec<_>>(),
        "latency_cdf_us": {"threads": base_plan.threads, "warpfs": cdf_w, "pread": cdf_b},
        "mismatches": mismatches,
        "plots": files.iter().map(|f| f.display().to_string()).collect::<Vec<_>>(),
    });
    let json = serde_json::to_string_pretty(&data).expect("plot data serialises");
    let data_path = dir.join("plot-data.json");
    std::fs::write(&data_path, &json).ctx(|| format!("writing {}", data_path.display()))?;
    drop(file);

    if args.json {
        println!("{json}");
    } else {
        println!("rand-read, 4 KiB random reads per second:");
        println!(
            "  {:>7} {:>14} {:>14} {:>7}",
            "threads", "warpfs", "pread", "ratio"
        );
        for (t, r) in &rand_points {
            println!(
                "  {:>7} {:>14.0} {:>14.0} {:>6.2}×",
                t, r.warpfs.value, r.baseline.value, r.ratio
            );
        }
        println!("seq, whole file, GB/s by I/O size per call:");
        println!(
            "  {:>9} {:>10} {:>10} {:>7}",
            "I/O size", "warpfs", "read()", "ratio"
        );
        for s in &seq_points {
            let (w, b) = (gbps(&s.warpfs), gbps(&s.base));
            println!(
                "  {:>9} {:>10.2} {:>10.2} {:>6.2}×",
                fmt_bytes(s.io as u64),
                w,
                b,
                w / b.max(1e-12)
            );
        }
        for f in files.iter().chain([&data_path]) {
            println!("wrote {}", f.display());
        }
        println!("wrong reads: {mismatches}");
    }
    Ok(if mismatches > 0 { EXIT_MISMATCH } else { 0 })
}

/// Whole-file passes with calls of `io` bytes, alternating warpfs and `read()`, until each
/// side has run `--seconds` (or `--ops` passes); every pass checked.
fn seq_point(ctx: &Ctx, plain: &mut File, buf: &mut [u8], io: usize) -> Result<SeqPoint> {
    let (mut w, mut b) = (Tally::default(), Tally::default());
    let target = ctx.plan.seconds_duration();
    let done = |t: &Tally| match ctx.plan.ops {
        Some(n) => t.ops >= n.max(1),
        None => t.elapsed >= target && t.ops > 0,
    };
    let bar = match ctx.plan.ops {
        Some(n) => ctx.progress.ops(2 * n.max(1), "seq sweep"),
        None => ctx
            .progress
            .timed(2 * target.as_millis() as u64, "seq sweep"),
    };
    let size = buf.len();
    while !done(&w) || !done(&b) {
        if !done(&b) {
            seq::poison(buf);
            let t0 = Instant::now();
            let n = baseline::read_whole(plain, buf, io).ctx(|| "baseline read loop".into())?;
            add_pass(&mut b, t0.elapsed(), n, size);
            b.mismatches += ctx.expected.wrong_chunks(0, &buf[..n], CHECK_CHUNK)?;
        }
        if !done(&w) {
            seq::poison(buf);
            let t0 = Instant::now();
            let mut n = 0;
            for piece in buf.chunks_mut(io) {
                let got = ctx.rt.read_bulk(&ctx.fh, n as u64, piece)?;
                n += got;
                if got < piece.len() {
                    break;
                }
            }
            add_pass(&mut w, t0.elapsed(), n, size);
            w.mismatches += ctx.expected.wrong_chunks(0, &buf[..n], CHECK_CHUNK)?;
        }
        bar.set_position(match ctx.plan.ops {
            Some(_) => w.ops + b.ops,
            None => (w.elapsed.min(target) + b.elapsed.min(target)).as_millis() as u64,
        });
    }
    bar.finish_and_clear();
    Ok(SeqPoint {
        io,
        warpfs: w,
        base: b,
    })
}

fn add_pass(t: &mut Tally, d: Duration, n: usize, size: usize) {
    t.ops += 1;
    t.bytes += n as u64;
    t.elapsed += d;
    if n != size {
        t.mismatches += 1;
    }
}

/// Every rand-read request's latency at the plan's thread count: (warpfs, pread).
fn latencies(ctx: &Ctx) -> Result<(Tally, Tally)> {
    let blocks = ctx.file.size / BLOCK as u64;
    let plain =
        File::open(ctx.file.open_path()).ctx(|| format!("opening {}", ctx.file.shown.display()))?;
    let base = run_workers(
        ctx.plan,
        vec![(); ctx.plan.threads],
        "latency pread",
        ctx.progress,
        |(), limit, seed| {
            baseline::pread_worker(&plain, blocks, BLOCK, limit, ctx.expected, seed)
                .ctx(|| "baseline pread".into())
        },
    )?;
    let depth = ctx.plan.agent_depth;
    let w = run_workers(
        ctx.plan,
        rand::agents(ctx)?,
        "latency warpfs",
        ctx.progress,
        |agents, limit, seed| {
            rand::agent_reader(agents, &ctx.fh, blocks, depth, limit, ctx.expected, seed)
        },
    )?;
    Ok((w, base))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    #[test]
    fn thread_points_double_up_to_the_max() {
        assert_eq!(thread_points(1), vec![1]);
        assert_eq!(thread_points(2), vec![1, 2]);
        assert_eq!(thread_points(12), vec![1, 2, 4, 8, 12]);
        assert_eq!(thread_points(16), vec![1, 2, 4, 8, 16]);
    }

    #[test]
    fn tiny_sweep_writes_three_well_formed_plots() {
        let dir = std::env::temp_dir().join(format!("warpfs-plots-{}", std::process::id()));
        let d = dir.to_str().unwrap();
        let cli = Cli::parse_from([
            "warpfs",
            "bench",
            "--size",
            "4M",
            "--ops",
            "64",
            "--threads",
            "2",
            "--plot",
            d,
        ]);
        let Command::Bench(args) = cli.command else {
            panic!("bench")
        };
        assert_eq!(run(&args, &dir).unwrap(), 0, "no wrong reads");
        for (name, series) in [
            ("rand-read-threads.svg", ["warpfs (request rings)", "pread"]),
            ("seq-io-size.svg", ["warpfs read_bulk", "read() loop"]),
            ("latency-cdf.svg", ["warpfs (qd", "pread ("]),
        ] {
            let svg = std::fs::read_to_string(dir.join(name)).unwrap();
            assert!(svg.starts_with("<svg"), "{name}");
            assert!(svg.trim_end().ends_with("</svg>"), "{name}");
            assert_eq!(
                svg.matches("<text").count(),
                svg.matches("</text>").count(),
                "{name}"
            );
            for s in series {
                assert!(svg.contains(s), "{name}: series {s:?} missing");
            }
            assert!(svg.matches("<polyline").count() >= 2, "{name}: two lines");
        }
        let data: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("plot-data.json")).unwrap()).unwrap();
        assert_eq!(data["rand_read_threads"].as_array().unwrap().len(), 2);
        // 4 KiB … 4 MiB: the sizes up to the file's.
        assert_eq!(data["seq_io_size"].as_array().unwrap().len(), 6);
        assert_eq!(data["mismatches"], 0);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
