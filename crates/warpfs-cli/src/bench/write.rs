//! `rand-write`: random 4 KiB writes through the rings with an fsync every `--fsync-every`
//! writes, vs plain `pwrite` + `fdatasync` on the same threads. Each side writes content of
//! its own seed; afterwards every written block is read back with plain `pread` and checked,
//! then the file's original content is put back.

use super::rand::agents;
use super::report::{Figure, PhaseResult};
use super::{run_workers, Ctx, Limit, Tally, BLOCK};
use crate::baseline;
use crate::error::{Context, Result};
use crate::pattern;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::collections::VecDeque;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::time::Instant;
use warpfs::runtime::{Agent, Ticket};
use warpfs::FileHandle;

/// One thread's agents writing random blocks: `sync_every` writes, wait for all, fsync, repeat.
#[allow(clippy::too_many_arguments)]
fn agent_writer(
    mut agents: Vec<Agent>,
    file: &FileHandle,
    blocks: u64,
    depth: usize,
    limit: &Limit,
    write_seed: u64,
    sync_every: u64,
    seed: u64,
) -> Result<Tally> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut t = Tally::with_capacity(limit.capacity_hint());
    let mut buf = vec![0u8; BLOCK];
    let mut queues: Vec<VecDeque<(Ticket, Instant)>> =
        agents.iter().map(|_| VecDeque::new()).collect();
    let depth = agents
        .first()
        .map_or(depth, |a| depth.min(a.queue_depth()).max(1));
    let (mut submitted, mut since_sync) = (0u64, 0u64);
    loop {
        // Fill every agent's queue, up to the next sync point.
        for (a, q) in agents.iter_mut().zip(&mut queues) {
            while q.len() < depth && since_sync < sync_every && limit.more(submitted) {
                let b = rng.random_range(0..blocks);
                let off = b * BLOCK as u64;
                pattern::fill(write_seed, off, &mut buf);
                q.push_back((a.submit_write(file, off, &buf)?, Instant::now()));
                t.touched.push(b);
                submitted += 1;
                since_sync += 1;
            }
        }
        // Complete the oldest request of each agent.
        let mut any = false;
        for (a, q) in agents.iter_mut().zip(&mut queues) {
            let Some((ticket, t0)) = q.pop_front() else {
                continue;
            };
            any = true;
            let n = a.wait(ticket)?;
            t.lat.record(t0.elapsed());
            if n != BLOCK as u64 {
                t.mismatches += 1;
            }
            t.ops += 1;
            t.bytes += n;
            limit.tick(t.ops);
        }
        if !any {
            // Nothing in flight: at a sync point, or done.
            if since_sync > 0 {
                agents[0].fsync(file)?;
                t.syncs += 1;
                since_sync = 0;
            }
            if !limit.more(submitted) {
                return Ok(t);
            }
        }
    }
}

/// Reads back every block in `touched` with plain `pread`, counts blocks not holding
/// `write_seed` content, then restores the original content. Returns (wrong blocks, bytes checked).
fn verify_and_restore(
    file: &File,
    touched: &mut Vec<u64>,
    write_seed: u64,
) -> std::io::Result<(u64, u64)> {
    touched.sort_unstable();
    touched.dedup();
    let mut buf = vec![0u8; BLOCK];
    let mut wrong = 0;
    for &b in touched.iter() {
        let off = b * BLOCK as u64;
        file.read_exact_at(&mut buf, off)?;
        wrong += (pattern::count_wrong(write_seed, off, &buf) > 0) as u64;
        pattern::fill(pattern::FILE_SEED, off, &mut buf);
        file.write_all_at(&buf, off)?;
    }
    file.sync_data()?;
    Ok((wrong, touched.len() as u64 * BLOCK as u64))
}

/// Runs the phase: warpfs first (then flush, verify, restore), then the baseline.
pub fn run(ctx: &Ctx) -> Result<PhaseResult> {
    let blocks = ctx.file.size / BLOCK as u64;
    let plain = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(ctx.file.open_path())
        .ctx(|| format!("opening {} for writing", ctx.file.shown.display()))?;
    let every = ctx.plan.fsync_every;
    let depth = ctx.plan.agent_depth;

    let seed_w: u64 = ::rand::random();
    let per_thread = agents(ctx)?;
    let mut w = run_workers(
        ctx.plan,
        per_thread,
        "rand-write warpfs",
        ctx.progress,
        |agents, limit, seed| {
            agent_writer(agents, &ctx.fh, blocks, depth, limit, seed_w, every, seed)
        },
    )?;
    ctx.rt.flush()?;
    let (w_wrong, w_checked) = verify_and_restore(&plain, &mut w.touched, seed_w)
        .ctx(|| "verifying warpfs writes".into())?;
    w.mismatches += w_wrong;

    let seed_b = seed_w ^ 0xB5B5_B5B5_B5B5_B5B5;
    let mut b = run_workers(
        ctx.plan,
        vec![(); ctx.plan.threads],
        "rand-write pwrite",
        ctx.progress,
        |(), limit, seed| {
            baseline::pwrite_worker(&plain, blocks, BLOCK, limit, seed_b, every, seed)
                .ctx(|| "baseline pwrite".into())
        },
    )?;
    let (b_wrong, b_checked) = verify_and_restore(&plain, &mut b.touched, seed_b)
        .ctx(|| "verifying baseline writes".into())?;
    b.mismatches += b_wrong;

    let (w_syncs, b_syncs) = (w.syncs, b.syncs);
    let mut r = PhaseResult::new("rand-write", Figure::iops(w), Figure::iops(b));
    r.verified_bytes = w_checked + b_checked;
    r.notes.push(format!(
        "fsync every {every} ({w_syncs} / {b_syncs} syncs), written blocks read back"
    ));
    Ok(r)
}
