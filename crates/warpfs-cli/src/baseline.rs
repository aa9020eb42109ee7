//! The plain way to do each phase's job — what warpfs is compared against. Same file, same
//! block size, same thread count, run in the same process; only std/libc calls, no tricks.

use crate::bench::{Limit, Tally};
use crate::expected::Expected;
use crate::pattern;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::time::Instant;

/// Reads the file from the start into `buf` with `read()` calls of `block` bytes; returns bytes read.
pub fn read_whole(file: &mut File, buf: &mut [u8], block: usize) -> std::io::Result<usize> {
    file.seek(SeekFrom::Start(0))?;
    let mut pos = 0;
    while pos < buf.len() {
        let end = (pos + block).min(buf.len());
        let n = file.read(&mut buf[pos..end])?;
        if n == 0 {
            break;
        }
        pos += n;
    }
    Ok(pos)
}

/// One thread of random `block`-byte `pread`s of whole blocks, each checked against `expected`.
pub fn pread_worker(
    file: &File,
    blocks: u64,
    block: usize,
    limit: &Limit,
    expected: &Expected,
    seed: u64,
) -> std::io::Result<Tally> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut t = Tally::with_capacity(limit.capacity_hint());
    let mut buf = vec![0u8; block];
    while limit.more(t.ops) {
        let off = rng.random_range(0..blocks) * block as u64;
        let t0 = Instant::now();
        let n = file.read_at(&mut buf, off)?;
        t.lat.record(t0.elapsed());
        if n != block || expected.wrong_bytes(off, &buf)? > 0 {
            t.mismatches += 1;
        }
        t.ops += 1;
        t.bytes += n as u64;
        limit.tick(t.ops);
    }
    Ok(t)
}

/// One thread of random `block`-byte `pwrite`s of pattern content (`write_seed`), with
/// `fdatasync` after every `sync_every` writes and at the end. Records the blocks it wrote.
pub fn pwrite_worker(
    file: &File,
    blocks: u64,
    block: usize,
    limit: &Limit,
    write_seed: u64,
    sync_every: u64,
    seed: u64,
) -> std::io::Result<Tally> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut t = Tally::with_capacity(limit.capacity_hint());
    let mut buf = vec![0u8; block];
    let mut unsynced = 0;
    while limit.more(t.ops) {
        let b = rng.random_range(0..blocks);
        let off = b * block as u64;
        pattern::fill(write_seed, off, &mut buf);
        let t0 = Instant::now();
        let n = file.write_at(&buf, off)?;
        t.lat.record(t0.elapsed());
        if n != block {
            t.mismatches += 1;
        }
        t.touched.push(b);
        t.ops += 1;
        t.bytes += n as u64;
        unsynced += 1;
        if unsynced == sync_every {
            file.sync_data()?;
            t.syncs += 1;
            unsynced = 0;
        }
        limit.tick(t.ops);
    }
    if unsynced > 0 {
        file.sync_data()?;
        t.syncs += 1;
    }
    Ok(t)
}
