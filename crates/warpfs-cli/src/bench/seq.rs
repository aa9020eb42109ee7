//! `seq`: the whole file into one buffer — `Runtime::read_bulk` vs a plain `read()` loop of
//! 4 MiB blocks. Passes alternate between the two sides until each has run `--seconds` (or
//! `--ops` passes); every pass is checked against the file's content.

use super::report::{Figure, PhaseResult};
use super::{Ctx, Tally};
use crate::baseline;
use crate::error::{bail, Context, Result};
use std::fs::File;
use std::time::{Duration, Instant};

/// Plain read size of the baseline.
const BLOCK: usize = 4 << 20;
/// Granularity at which wrong bytes are counted (one "operation" of the verification).
const CHECK_CHUNK: usize = 4 << 20;

/// Marks every 4 KiB of `buf` so a pass that skips a page cannot pass as correct.
pub fn poison(buf: &mut [u8]) {
    for page in buf.chunks_mut(4096) {
        page[0] = !page[0];
        let last = page.len() - 1;
        page[last] = !page[last];
    }
}

/// Runs the phase.
pub fn run(ctx: &Ctx) -> Result<PhaseResult> {
    let size = usize::try_from(ctx.file.size).ctx(|| "file size".into())?;
    let mut buf = vec![0u8; size];
    let mut plain =
        File::open(ctx.file.open_path()).ctx(|| format!("opening {}", ctx.file.shown.display()))?;
    let (mut w, mut b) = (Tally::default(), Tally::default());
    let target = ctx.plan.seconds_duration();
    let passes = ctx.plan.ops;
    let bar = match passes {
        Some(n) => ctx.progress.ops(2 * n, "seq"),
        None => ctx.progress.timed(2 * target.as_millis() as u64, "seq"),
    };
    let done = |t: &Tally| match passes {
        Some(n) => t.ops >= n,
        None => t.elapsed >= target && t.ops > 0,
    };
    while !done(&w) || !done(&b) {
        if !done(&b) {
            poison(&mut buf);
            let t0 = Instant::now();
            let n = baseline::read_whole(&mut plain, &mut buf, BLOCK)
                .ctx(|| "baseline sequential read".into())?;
            pass(&mut b, t0.elapsed(), n, size);
            b.mismatches += ctx.expected.wrong_chunks(0, &buf[..n], CHECK_CHUNK)?;
        }
        if !done(&w) {
            poison(&mut buf);
            let t0 = Instant::now();
            let n = ctx.rt.read_bulk(&ctx.fh, 0, &mut buf)?;
            pass(&mut w, t0.elapsed(), n, size);
            w.mismatches += ctx.expected.wrong_chunks(0, &buf[..n], CHECK_CHUNK)?;
        }
        bar.set_position(match passes {
            Some(_) => w.ops + b.ops,
            None => (w.elapsed.min(target) + b.elapsed.min(target)).as_millis() as u64,
        });
    }
    bar.finish_and_clear();
    if w.ops == 0 {
        bail!("seq: no pass completed");
    }
    let mut r = PhaseResult::new("seq", Figure::throughput(w), Figure::throughput(b));
    r.notes.push(format!(
        "{} + {} passes, 1 thread baseline",
        r.warpfs.ops, r.baseline.ops
    ));
    Ok(r)
}

/// Adds one pass to `t`; a short pass counts as a mismatch.
fn pass(t: &mut Tally, d: Duration, n: usize, size: usize) {
    t.ops += 1;
    t.bytes += n as u64;
    t.elapsed += d;
    t.lat.record(d);
    if n != size {
        t.mismatches += 1;
    }
}
