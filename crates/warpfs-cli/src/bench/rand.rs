//! `rand-read`: random 4 KiB reads through the request rings — several OS threads, each
//! driving agents that keep `agent-qd` requests in flight (like GPU warps) — vs plain `pread`
//! on the same number of threads. Every read is checked against the file's content.

use super::report::{Figure, PhaseResult};
use super::{run_workers, Ctx, Limit, Tally, BLOCK};
use crate::baseline;
use crate::error::{Context, Result};
use crate::expected::Expected;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::fs::File;
use std::time::Instant;
use warpfs::runtime::{Agent, Ticket};
use warpfs::FileHandle;

/// Slices of the measured run per side (see `run`).
const ROUNDS: usize = 6;

/// A request in flight: its ticket, file offset and submission time.
type Pending = (Ticket, u64, Instant);

/// Splits `n` agents over `threads` threads, round-robin.
pub fn spread<T>(items: Vec<T>, threads: usize) -> Vec<Vec<T>> {
    let mut out: Vec<Vec<T>> = (0..threads).map(|_| Vec::new()).collect();
    for (i, it) in items.into_iter().enumerate() {
        out[i % threads].push(it);
    }
    out
}

/// Creates the plan's agents, spread over its threads.
pub fn agents(ctx: &Ctx) -> Result<Vec<Vec<Agent>>> {
    let all = (0..ctx.plan.agents)
        .map(|_| ctx.rt.agent())
        .collect::<Result<Vec<_>, _>>()
        .ctx(|| "creating host agents (lower --qd or raise --agent-qd)".into())?;
    Ok(spread(all, ctx.plan.agent_threads))
}

/// One thread's agents reading random blocks, each agent `depth` deep.
pub fn agent_reader(
    mut agents: Vec<Agent>,
    file: &FileHandle,
    blocks: u64,
    depth: usize,
    limit: &Limit,
    expected: &Expected,
    seed: u64,
) -> Result<Tally> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut t = Tally::with_capacity(limit.capacity_hint());
    let mut queues: Vec<VecDeque<Pending>> = agents
        .iter()
        .map(|_| VecDeque::with_capacity(depth))
        .collect();
    let mut submitted = 0u64;
    let depth = agents
        .first()
        .map_or(depth, |a| depth.min(a.queue_depth()).max(1));
    for (a, q) in agents.iter_mut().zip(&mut queues) {
        while q.len() < depth && limit.more(submitted) {
            let off = rng.random_range(0..blocks) * BLOCK as u64;
            q.push_back((a.submit_read(file, off, BLOCK)?, off, Instant::now()));
            submitted += 1;
        }
    }
    loop {
        let mut any = false;
        for (a, q) in agents.iter_mut().zip(&mut queues) {
            let Some((ticket, off, t0)) = q.pop_front() else {
                continue;
            };
            any = true;
            // Checked where the daemon left the bytes (`wait_read_with`, warpfs's zero-copy
            // read); the pread baseline checks its own buffer the same way.
            let (n, wrong) =
                a.wait_read_with(ticket, |b| (b.len(), expected.wrong_bytes(off, b)))?;
            t.lat.record(t0.elapsed());
            if n != BLOCK || wrong? > 0 {
                t.mismatches += 1;
            }
            t.ops += 1;
            t.bytes += n as u64;
            limit.tick(t.ops);
            if limit.more(submitted) {
                let off = rng.random_range(0..blocks) * BLOCK as u64;
                q.push_back((a.submit_read(file, off, BLOCK)?, off, Instant::now()));
                submitted += 1;
            }
        }
        if !any {
            return Ok(t);
        }
    }
}

/// Runs the phase: baseline first, then warpfs.
pub fn run(ctx: &Ctx) -> Result<PhaseResult> {
    let blocks = ctx.file.size / BLOCK as u64;
    let plain =
        File::open(ctx.file.open_path()).ctx(|| format!("opening {}", ctx.file.shown.display()))?;
    // Warm-up, unmeasured: each side runs the same work briefly first, so the measured runs
    // start with the page cache (baseline) and the warpfs host cache equally warm.
    let warm = ctx.plan.warmup();
    let warm_base = run_workers(
        &warm,
        vec![(); ctx.plan.threads],
        "rand-read pread warm-up",
        ctx.progress,
        |(), limit, seed| {
            baseline::pread_worker(&plain, blocks, BLOCK, limit, ctx.expected, seed)
                .ctx(|| "baseline pread".into())
        },
    )?;
    let warm_w = run_workers(
        &warm,
        agents(ctx)?,
        "rand-read warpfs warm-up",
        ctx.progress,
        |agents, limit, seed| {
            agent_reader(
                agents,
                &ctx.fh,
                blocks,
                ctx.plan.agent_depth,
                limit,
                ctx.expected,
                seed,
            )
        },
    )?;

    // The measured run, in slices that alternate the two sides (pread first in even rounds,
    // warpfs first in odd ones), so that both see the same machine: on a shared 2-core
    // machine the pread rate alone moved by ±15% between runs seconds apart.
    let slice = ctx.plan.slice(ROUNDS);
    let (mut base, mut w) = (Tally::default(), Tally::default());
    let before = ctx.rt.stats();
    for round in 0..ROUNDS {
        for side in [round % 2, 1 - round % 2] {
            if side == 0 {
                base.append(run_workers(
                    &slice,
                    vec![(); ctx.plan.threads],
                    &format!("rand-read pread {}/{ROUNDS}", round + 1),
                    ctx.progress,
                    |(), limit, seed| {
                        baseline::pread_worker(&plain, blocks, BLOCK, limit, ctx.expected, seed)
                            .ctx(|| "baseline pread".into())
                    },
                )?);
            } else {
                let depth = ctx.plan.agent_depth;
                w.append(run_workers(
                    &slice,
                    agents(ctx)?,
                    &format!("rand-read warpfs {}/{ROUNDS}", round + 1),
                    ctx.progress,
                    |agents, limit, seed| {
                        agent_reader(agents, &ctx.fh, blocks, depth, limit, ctx.expected, seed)
                    },
                )?);
            }
        }
    }
    let after = ctx.rt.stats();
    // Reads of the warm-up were verified too.
    base.mismatches += warm_base.mismatches;
    w.mismatches += warm_w.mismatches;

    let mut r = PhaseResult::new("rand-read", Figure::iops(w), Figure::iops(base));
    let hits = after.cache.hits - before.cache.hits;
    let looked = hits
        + (after.cache.misses - before.cache.misses)
        + (after.cache.coalesced - before.cache.coalesced);
    r.hit_rate = (looked > 0).then(|| hits as f64 / looked as f64);
    r.notes.push(format!(
        "qd {} on {} agent threads + {} daemon workers vs 1 per thread on {} threads",
        ctx.plan.qd,
        ctx.plan.agent_threads,
        ctx.rt.config().workers,
        ctx.plan.threads
    ));
    let errors = after.daemon.errors - before.daemon.errors;
    if errors > 0 {
        r.notes.push(format!("{errors} daemon errors"));
    }
    Ok(r)
}

#[cfg(test)]
mod tests {
    #[test]
    fn spread_round_robin() {
        let v = super::spread((0..5).collect(), 2);
        assert_eq!(v, vec![vec![0, 2, 4], vec![1, 3]]);
    }
}
