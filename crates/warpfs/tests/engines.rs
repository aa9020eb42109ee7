//! One test suite run against both I/O engines (io_uring and the thread pool), plus the bulk
//! path on each. Every read goes into a poisoned buffer and every byte is checked against the
//! file's known content: `byte(off)` is byte `off % 8` of `mix(seed, off / 8)`.

use rand::{Rng, SeedableRng};
use std::alloc::Layout;
use std::collections::HashMap;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use warpfs::bulk::{BulkConfig, BulkIo, DirectMode};
use warpfs::engine::{self, EngineChoice, EngineConfig, IoDone, IoEngine, IoKind, IoOp};
use warpfs::files::{FileEntry, FileTable};
use warpfs::OpenOptions;

const POISON: u8 = 0xA5;

fn mix(seed: u64, i: u64) -> u64 {
    let mut z = i
        .wrapping_add(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn byte(seed: u64, off: u64) -> u8 {
    mix(seed, off / 8).to_le_bytes()[(off % 8) as usize]
}

fn pattern(seed: u64, off: u64, len: usize) -> Vec<u8> {
    (0..len as u64).map(|i| byte(seed, off + i)).collect()
}

/// A fresh directory on the target's filesystem (a real disk here, so O_DIRECT usually works;
/// /tmp may be tmpfs elsewhere, which refuses O_DIRECT).
fn dir() -> PathBuf {
    let d =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("engines-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn make_file(name: &str, len: usize, seed: u64) -> PathBuf {
    let p = dir().join(name);
    std::fs::write(&p, pattern(seed, 0, len)).unwrap();
    p
}

/// Checks that `buf[..n]` holds the file's bytes from `off` and the rest is still poison.
fn check_read(seed: u64, off: u64, buf: &[u8], n: usize, what: &str) {
    for (i, &b) in buf[..n].iter().enumerate() {
        assert_eq!(
            b,
            byte(seed, off + i as u64),
            "{what}: byte {i} of a read at {off}"
        );
    }
    assert!(
        buf[n..].iter().all(|&b| b == POISON),
        "{what}: bytes past the count {n} were written"
    );
}

/// The engine for `choice`, or `None` (with a message) when io_uring cannot run here.
fn engine_for(choice: EngineChoice, queue_depth: u32) -> Option<Box<dyn IoEngine>> {
    let e = engine::create(&EngineConfig {
        choice,
        queue_depth,
        threads: 3,
        ..EngineConfig::default()
    });
    let want = if choice == EngineChoice::Uring {
        "uring"
    } else {
        "threads"
    };
    if e.name() != want {
        eprintln!(
            "SKIP: the {want} engine is not available here (got {})",
            e.name()
        );
        return None;
    }
    Some(e)
}

/// Submits `ops` (in batches of `batch`) and reaps everything; each token must complete once.
fn run(e: &mut dyn IoEngine, ops: &[IoOp], batch: usize) -> HashMap<u64, i64> {
    let mut results = HashMap::new();
    let mut out: Vec<IoDone> = Vec::new();
    for chunk in ops.chunks(batch.max(1)) {
        // SAFETY: every buffer outlives this function's reaping, which ends with nothing in
        // flight.
        unsafe { e.submit(chunk) };
        e.reap(&mut out, false);
    }
    while e.in_flight() > 0 {
        e.reap(&mut out, true);
    }
    for d in out {
        assert!(
            results.insert(d.token, d.result).is_none(),
            "token {} completed twice",
            d.token
        );
    }
    assert_eq!(results.len(), ops.len(), "every op completes exactly once");
    results
}

fn read_op(fd: i32, offset: u64, buf: &mut [u8], token: u64) -> IoOp {
    IoOp {
        kind: IoKind::Read,
        fd,
        offset,
        buf: buf.as_mut_ptr(),
        len: buf.len(),
        token,
    }
}

/// A zeroed heap buffer aligned for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    layout: Layout,
}

impl Aligned {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Self { ptr, layout }
    }
    fn slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of layout.size() bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        // SAFETY: allocated in new with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) };
    }
}

fn open(path: &PathBuf, opts: OpenOptions) -> (FileTable, std::sync::Arc<FileEntry>) {
    let t = FileTable::new();
    let e = t.register(path, opts).unwrap();
    (t, e)
}

fn drop_cache(f: &FileEntry) {
    f.file.sync_all().unwrap();
    // SAFETY: plain advice on a descriptor we own.
    let r = unsafe { libc::posix_fadvise(f.fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(r, 0);
}

// ---------------------------------------------------------------- engine tests

fn random_reads_match_the_pattern(choice: EngineChoice) {
    let Some(mut e) = engine_for(choice, 16) else {
        return;
    };
    let seed = 11;
    let size = 3 * 1024 * 1024 + 1234;
    let p = make_file(&format!("random-{choice:?}"), size, seed);
    let f = std::fs::File::open(&p).unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let specs: Vec<(u64, usize)> = (0..300)
        .map(|_| {
            (
                rng.random_range(0..size as u64 + 10_000),
                rng.random_range(0..200_000),
            )
        })
        .collect();
    let mut bufs: Vec<Vec<u8>> = specs.iter().map(|&(_, l)| vec![POISON; l]).collect();
    let ops: Vec<IoOp> = bufs
        .iter_mut()
        .zip(&specs)
        .enumerate()
        .map(|(i, (b, &(o, _)))| read_op(f.as_raw_fd(), o, b, i as u64))
        .collect();
    let res = run(&mut *e, &ops, 300);
    for (i, &(o, l)) in specs.iter().enumerate() {
        let want = l.min((size as u64).saturating_sub(o) as usize);
        assert_eq!(res[&(i as u64)], want as i64, "read {i} at {o} len {l}");
        check_read(seed, o, &bufs[i], want, "random read");
    }
}

/// `read_cached_now` reads a warm range whole (every byte checked, poisoned first) and
/// declines, leaving the read to the queue, for a cold range, a range past the end of the file
/// (short), an empty one and a bad descriptor.
fn read_cached_now_reads_warm_ranges_only(choice: EngineChoice) {
    let Some(mut e) = engine_for(choice, 8) else {
        return;
    };
    let seed = 23;
    let size = 256 * 1024 + 77;
    let p = make_file(&format!("now-{choice:?}"), size, seed);
    let (_t, f) = open(&p, OpenOptions::read_only());
    std::fs::read(&p).unwrap(); // warm
    let mut buf = vec![POISON; 8192];
    for (off, len) in [
        (0u64, 4096usize),
        (12_345, 8192),
        (size as u64 - 4096, 4096),
    ] {
        buf.fill(POISON);
        // SAFETY: buf holds at least len writable bytes, ours for the call.
        assert!(
            unsafe { e.read_cached_now(f.fd(), off, buf.as_mut_ptr(), len) },
            "warm {off}+{len}"
        );
        check_read(seed, off, &buf, len, "read_cached_now");
    }
    // SAFETY: as above, for every call below.
    unsafe {
        assert!(
            !e.read_cached_now(f.fd(), size as u64 - 100, buf.as_mut_ptr(), 4096),
            "short at EOF"
        );
        assert!(!e.read_cached_now(f.fd(), 0, buf.as_mut_ptr(), 0), "empty");
        assert!(
            !e.read_cached_now(-1, 0, buf.as_mut_ptr(), 4096),
            "bad descriptor"
        );
    }
    drop_cache(&f);
    // SAFETY: as above.
    let cold = unsafe { e.read_cached_now(f.fd(), 128 * 1024, buf.as_mut_ptr(), 4096) };
    // A cold page must not be read at once (RWF_NOWAIT: EAGAIN); where the kernel kept it
    // anyway the bytes must still be right.
    if cold {
        check_read(
            seed,
            128 * 1024,
            &buf,
            4096,
            "read_cached_now after DONTNEED",
        );
    }
}

fn empty_file_and_reads_past_eof(choice: EngineChoice) {
    let Some(mut e) = engine_for(choice, 8) else {
        return;
    };
    let p = make_file(&format!("empty-{choice:?}"), 0, 1);
    let f = std::fs::File::open(&p).unwrap();
    let mut a = vec![POISON; 100];
    let mut b = vec![POISON; 4096];
    let mut c: Vec<u8> = Vec::new();
    let ops = [
        read_op(f.as_raw_fd(), 0, &mut a, 1),
        read_op(f.as_raw_fd(), 4096, &mut b, 2),
        read_op(f.as_raw_fd(), 0, &mut c, 3),
    ];
    let res = run(&mut *e, &ops, 3);
    assert_eq!((res[&1], res[&2], res[&3]), (0, 0, 0));
    assert!(a.iter().chain(&b).all(|&x| x == POISON));

    // A 5000-byte file: reads spanning EOF are short, reads at or past it return 0.
    let p = make_file(&format!("short-{choice:?}"), 5000, 2);
    let f = std::fs::File::open(&p).unwrap();
    let mut bufs: Vec<Vec<u8>> = vec![vec![POISON; 8192]; 4];
    let offs = [0u64, 4999, 5000, 1 << 40];
    let ops: Vec<IoOp> = bufs
        .iter_mut()
        .zip(offs)
        .enumerate()
        .map(|(i, (b, o))| read_op(f.as_raw_fd(), o, b, i as u64))
        .collect();
    let res = run(&mut *e, &ops, 4);
    for (i, o) in offs.iter().enumerate() {
        let want = 5000u64.saturating_sub(*o) as usize;
        assert_eq!(res[&(i as u64)], want as i64, "read at {o}");
        check_read(2, *o, &bufs[i], want, "read near EOF");
    }
}

fn writes_read_back_and_fsync(choice: EngineChoice) {
    let Some(mut e) = engine_for(choice, 8) else {
        return;
    };
    let p = dir().join(format!("write-{choice:?}"));
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(&p)
        .unwrap();
    let fd = f.as_raw_fd();
    // Non-overlapping pieces of odd sizes covering [0, total), submitted in scrambled order.
    let seed = 77;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut pieces = Vec::new();
    let mut at = 0u64;
    while at < 2_000_000 {
        let l = rng.random_range(1..40_000u64);
        pieces.push((at, l as usize));
        at += l;
    }
    let total = at as usize;
    pieces.reverse();
    let mut srcs: Vec<Vec<u8>> = pieces.iter().map(|&(o, l)| pattern(seed, o, l)).collect();
    let mut ops: Vec<IoOp> = srcs
        .iter_mut()
        .zip(&pieces)
        .enumerate()
        .map(|(i, (s, &(o, l)))| IoOp {
            kind: IoKind::Write,
            fd,
            offset: o,
            buf: s.as_mut_ptr(),
            len: l,
            token: i as u64,
        })
        .collect();
    let res = run(&mut *e, &ops, 64);
    for (i, &(_, l)) in pieces.iter().enumerate() {
        assert_eq!(res[&(i as u64)], l as i64, "write {i}");
    }
    ops.clear();
    ops.push(IoOp {
        kind: IoKind::Fsync,
        fd,
        offset: 0,
        buf: std::ptr::null_mut(),
        len: 0,
        token: 9,
    });
    assert_eq!(run(&mut *e, &ops, 1)[&9], 0, "fdatasync");
    assert_eq!(
        std::fs::read(&p).unwrap(),
        pattern(seed, 0, total),
        "file content after writes"
    );
    let mut back = vec![POISON; total + 100];
    let res = run(&mut *e, &[read_op(fd, 0, &mut back, 5)], 1);
    assert_eq!(res[&5], total as i64);
    check_read(seed, 0, &back, total, "read back");
}

fn direct_aligned_reads_and_writes(choice: EngineChoice) {
    let Some(mut e) = engine_for(choice, 8) else {
        return;
    };
    let seed = 5;
    let size = 1024 * 1024 + 3000; // last block partial
    let p = make_file(&format!("direct-{choice:?}"), size, seed);
    let (_t, fe) = open(&p, OpenOptions::read_write().direct(true));
    let Some(dfd) = fe.direct_fd() else {
        eprintln!(
            "SKIP: the filesystem under {} refuses O_DIRECT",
            p.display()
        );
        return;
    };
    let mut mem = Aligned::new(16 * 8192);
    let offs: Vec<u64> = (0..16)
        .map(|i| (i * 65536) as u64)
        .chain([size as u64 / 4096 * 4096])
        .collect();
    let bufs = mem.slice();
    bufs.fill(POISON);
    let ops: Vec<IoOp> = bufs
        .chunks_mut(8192)
        .zip(&offs)
        .enumerate()
        .map(|(i, (b, &o))| read_op(dfd, o, b, i as u64))
        .collect();
    let res = run(&mut *e, &ops, 16);
    for (i, (b, &o)) in mem.slice().chunks(8192).zip(&offs).enumerate() {
        let want = 8192.min(size - o as usize);
        assert_eq!(res[&(i as u64)], want as i64, "direct read at {o}");
        check_read(seed, o, b, want, "direct read");
    }
    // Direct write of aligned blocks, then a buffered read-back (the page cache is coherent).
    let seed2 = 6;
    let mut w = Aligned::new(3 * 4096);
    w.slice().copy_from_slice(&pattern(seed2, 8192, 3 * 4096));
    let op = IoOp {
        kind: IoKind::Write,
        fd: dfd,
        offset: 8192,
        buf: w.ptr,
        len: 3 * 4096,
        token: 1,
    };
    assert_eq!(run(&mut *e, &[op], 1)[&1], 3 * 4096);
    let all = std::fs::read(&p).unwrap();
    assert_eq!(
        &all[8192..8192 + 3 * 4096],
        &pattern(seed2, 8192, 3 * 4096)[..]
    );
    assert_eq!(&all[..8192], &pattern(seed, 0, 8192)[..]);
}

fn many_ops_in_flight_exceed_the_queue(choice: EngineChoice) {
    let Some(mut e) = engine_for(choice, 8) else {
        return;
    };
    let seed = 9;
    let size = 1000 * 4096 + 17;
    let p = make_file(&format!("many-{choice:?}"), size, seed);
    let f = std::fs::File::open(&p).unwrap();
    let mut bufs = vec![vec![POISON; 4096]; 1000];
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let offs: Vec<u64> = (0..1000)
        .map(|_| rng.random_range(0..size as u64))
        .collect();
    let ops: Vec<IoOp> = bufs
        .iter_mut()
        .zip(&offs)
        .enumerate()
        .map(|(i, (b, &o))| read_op(f.as_raw_fd(), o, b, i as u64))
        .collect();
    // All at once (far beyond the depth of 8), then in ragged batches with non-waiting reaps.
    for batch in [1000, 37] {
        for b in bufs.iter() {
            assert!(b.iter().all(|&x| x == POISON) || batch == 37);
        }
        let res = run(&mut *e, &ops, batch);
        for (i, &o) in offs.iter().enumerate() {
            let want = 4096.min(size - o as usize);
            assert_eq!(res[&(i as u64)], want as i64);
            check_read(seed, o, &bufs[i], want, "many in flight");
        }
        for b in bufs.iter_mut() {
            b.fill(POISON);
        }
    }
    let mut out = Vec::new();
    e.reap(&mut out, true); // nothing in flight: returns at once
    assert!(out.is_empty());
    assert_eq!(e.in_flight(), 0);
}

fn bad_fd_gives_ebadf(choice: EngineChoice) {
    let Some(mut e) = engine_for(choice, 8) else {
        return;
    };
    let mut b = vec![POISON; 64];
    // (No "just closed" descriptor: tests run in parallel, and another test may reopen that
    // number before the ops run — then this test would write into that test's file.)
    let ebadf = -(libc::EBADF as i64);
    for fd in [-1, 1_000_000, i32::MAX] {
        let ops = [
            read_op(fd, 0, &mut b, 1),
            IoOp {
                kind: IoKind::Write,
                fd,
                offset: 0,
                buf: b.as_mut_ptr(),
                len: 64,
                token: 2,
            },
            IoOp {
                kind: IoKind::Fsync,
                fd,
                offset: 0,
                buf: std::ptr::null_mut(),
                len: 0,
                token: 3,
            },
        ];
        let res = run(&mut *e, &ops, 3);
        assert_eq!(
            (res[&1], res[&2], res[&3]),
            (ebadf, ebadf, ebadf),
            "fd {fd}"
        );
        assert!(b.iter().all(|&x| x == POISON));
    }
    // A write to a read-only descriptor fails cleanly too.
    let f = std::fs::File::open(make_file(&format!("ro-{choice:?}"), 10, 1)).unwrap();
    let op = IoOp {
        kind: IoKind::Write,
        fd: f.as_raw_fd(),
        offset: 0,
        buf: b.as_mut_ptr(),
        len: 64,
        token: 4,
    };
    assert_eq!(run(&mut *e, &[op], 1)[&4], ebadf);
}

fn registered_buffers_are_used_correctly(choice: EngineChoice) {
    let Some(mut e) = engine_for(choice, 16) else {
        return;
    };
    let seed = 21;
    let size = 512 * 1024 + 99;
    let p = make_file(&format!("fixed-{choice:?}"), size, seed);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let mut reg = vec![POISON; 256 * 1024];
    // SAFETY: `reg` outlives `e` (dropped at the end of this function, before `reg`? no: drop
    // order is reverse declaration, so `e` — declared first — drops last). Keep `reg` alive
    // explicitly by leaking nothing: we drop `e` before `reg` below.
    unsafe {
        e.register_buffers(&[(reg.as_mut_ptr(), reg.len())])
            .unwrap()
    };
    let mut other = vec![POISON; 4096];
    let (a, rest) = reg.split_at_mut(100_000);
    let ops = [
        read_op(f.as_raw_fd(), 7, a, 1), // inside the registered range
        read_op(f.as_raw_fd(), 400_000, &mut rest[..150_000], 2), // spans EOF: short
        read_op(f.as_raw_fd(), 3, &mut other, 3), // not registered
    ];
    let res = run(&mut *e, &ops, 3);
    assert_eq!(res[&1], 100_000);
    assert_eq!(res[&2], (size - 400_000) as i64);
    assert_eq!(res[&3], 4096);
    check_read(seed, 7, &reg[..100_000], 100_000, "fixed read");
    check_read(
        seed,
        400_000,
        &reg[100_000..250_000],
        size - 400_000,
        "fixed read at EOF",
    );
    check_read(seed, 3, &other, 4096, "unregistered read");
    // A fixed write, read back.
    reg[..5000].copy_from_slice(&pattern(99, 1000, 5000));
    let op = IoOp {
        kind: IoKind::Write,
        fd: f.as_raw_fd(),
        offset: 1000,
        buf: reg.as_mut_ptr(),
        len: 5000,
        token: 4,
    };
    assert_eq!(run(&mut *e, &[op], 1)[&4], 5000);
    drop(e);
    assert_eq!(
        &std::fs::read(&p).unwrap()[1000..6000],
        &pattern(99, 1000, 5000)[..]
    );
}

// ---------------------------------------------------------------- bulk tests

fn bulk(choice: EngineChoice, direct: DirectMode) -> Option<BulkIo> {
    engine_for(choice, 8)?;
    let b = BulkIo::new(BulkConfig {
        engine: choice,
        chunk_bytes: 64 * 1024,
        max_in_flight: 5,
        threads: 3,
        direct,
    })
    .unwrap();
    Some(b)
}

fn bulk_reads_of_odd_ranges(choice: EngineChoice) {
    let seed = 31;
    let size = 5 * 1024 * 1024 + 777;
    let p = make_file(&format!("bulk-read-{choice:?}"), size, seed);
    for (direct, mode) in [
        (false, DirectMode::Auto),
        (true, DirectMode::Always),
        (true, DirectMode::Auto),
        (true, DirectMode::Never),
    ] {
        let Some(mut b) = bulk(choice, mode) else {
            return;
        };
        let (_t, fe) = open(&p, OpenOptions::read_only().direct(direct));
        let what = format!("{choice:?} direct={direct} {mode:?}");
        let mut rng = rand::rngs::StdRng::seed_from_u64(17);
        // (file offset, length, memory misalignment)
        let mut cases: Vec<(u64, usize, usize)> = vec![
            (0, size, 0),
            (4096, 1 << 20, 0),
            (1, 3 << 20, 0),
            (8192, 2 << 20, 1),
            (size as u64 - 10, 100, 0),
            (size as u64, 10, 0),
            (size as u64 + 5, 10, 3),
        ];
        for _ in 0..12 {
            cases.push((
                rng.random_range(0..size as u64),
                rng.random_range(0..1_500_000),
                rng.random_range(0..4096),
            ));
        }
        let mut mem = Aligned::new(size + 8192);
        for &(o, l, mis) in &cases {
            let buf = &mut mem.slice()[mis..mis + l];
            buf.fill(POISON);
            let n = b.read_into(&fe, o, buf).unwrap();
            let want = l.min((size as u64).saturating_sub(o) as usize);
            assert_eq!(n, want, "{what}: read_into at {o} len {l}");
            check_read(seed, o, buf, want, &what);
        }
        let st = b.stats();
        let moved = st.buffered_bytes + st.direct_bytes + st.bounced_bytes;
        assert!(moved > 0);
        match (fe.direct_fd().is_some(), mode) {
            (true, DirectMode::Always) => assert!(
                st.direct_bytes > 0 && st.bounced_bytes > 0,
                "{what}: {st:?}"
            ),
            (_, DirectMode::Never) | (false, _) => {
                assert_eq!(moved, st.buffered_bytes, "{what}: {st:?}")
            }
            _ => {}
        }
    }
}

fn bulk_auto_reads_cold_chunks_direct_and_warm_ones_cached(choice: EngineChoice) {
    let seed = 41;
    let size = 2 * 1024 * 1024 + 5;
    let p = make_file(&format!("bulk-auto-{choice:?}"), size, seed);
    let Some(mut b) = bulk(choice, DirectMode::Auto) else {
        return;
    };
    let (_t, fe) = open(&p, OpenOptions::read_only().direct(true));
    if fe.direct_fd().is_none() {
        eprintln!("SKIP: no O_DIRECT on {}", p.display());
        return;
    }
    let mut mem = Aligned::new(size + 4096);
    // Cold: dropped from the page cache, so the aligned middles go direct.
    drop_cache(&fe);
    let buf = &mut mem.slice()[..size];
    buf.fill(POISON);
    assert_eq!(b.read_into(&fe, 0, buf).unwrap(), size);
    check_read(seed, 0, buf, size, "cold auto read");
    let cold = b.stats();
    assert!(
        cold.direct_bytes > 0,
        "a cold file is read direct: {cold:?}"
    );
    // Warm: read through the page cache first; now everything comes from it.
    assert_eq!(std::fs::read(&p).unwrap().len(), size);
    buf.fill(POISON);
    assert_eq!(b.read_into(&fe, 0, buf).unwrap(), size);
    check_read(seed, 0, buf, size, "warm auto read");
    let warm = b.stats();
    assert_eq!(
        warm.direct_bytes + warm.bounced_bytes,
        cold.direct_bytes + cold.bounced_bytes,
        "a warm file is read from the page cache"
    );
    assert_eq!(warm.buffered_bytes - cold.buffered_bytes, size as u64);
}

fn bulk_writes_of_odd_ranges(choice: EngineChoice) {
    for (direct, mode) in [
        (false, DirectMode::Auto),
        (true, DirectMode::Auto),
        (true, DirectMode::Never),
    ] {
        let Some(mut b) = bulk(choice, mode) else {
            return;
        };
        let p = dir().join(format!("bulk-write-{choice:?}-{direct}-{mode:?}"));
        let (_t, fe) = open(
            &p,
            OpenOptions::read_write()
                .create(true)
                .truncate(true)
                .direct(direct),
        );
        let what = format!("{choice:?} direct={direct} {mode:?}");
        let mut model: Vec<u8> = Vec::new();
        let mut mem = Aligned::new(3 << 20);
        let cases: [(u64, usize, usize, u64); 5] = [
            (0, 1 << 20, 0, 1),
            (12345, 2_000_001, 7, 2),
            (4096, 8192, 0, 3),
            (3_000_000, 100, 1, 4),
            (2_999_999, 70_000, 4095, 5),
        ];
        for (o, l, mis, seed) in cases {
            let src = &mut mem.slice()[mis..mis + l];
            src.copy_from_slice(&pattern(seed, o, l));
            assert_eq!(
                b.write_from(&fe, o, src).unwrap(),
                l,
                "{what}: write at {o}"
            );
            let end = o as usize + l;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[o as usize..end].copy_from_slice(src);
        }
        assert_eq!(std::fs::read(&p).unwrap(), model, "{what}: file content");
        // And back through the bulk path into a misaligned buffer.
        let buf = &mut mem.slice()[1..1 + model.len()];
        buf.fill(POISON);
        assert_eq!(b.read_into(&fe, 0, buf).unwrap(), model.len());
        assert!(buf == &model[..], "{what}: bulk read-back");
        if fe.direct_fd().is_some() && mode == DirectMode::Auto {
            assert!(
                b.stats().direct_bytes + b.stats().bounced_bytes > 0,
                "{what}: {:?}",
                b.stats()
            );
        }
    }
}

fn bulk_refuses_what_the_file_was_not_granted(choice: EngineChoice) {
    let Some(mut b) = bulk(choice, DirectMode::Auto) else {
        return;
    };
    let p = make_file(&format!("bulk-perm-{choice:?}"), 100, 1);
    let (_t, ro) = open(&p, OpenOptions::read_only());
    let err = b.write_from(&ro, 0, &[1, 2, 3]).unwrap_err();
    assert!(matches!(err, warpfs::Error::ReadOnly), "{err}");
    let (_t2, wo) = open(&p, OpenOptions::write_only());
    let mut buf = [POISON; 10];
    let err = b.read_into(&wo, 0, &mut buf).unwrap_err();
    assert!(matches!(err, warpfs::Error::WriteOnly), "{err}");
    assert!(buf.iter().all(|&x| x == POISON));
    assert_eq!(
        b.write_from(&ro, 0, &[]).ok(),
        None,
        "read-only is refused even for 0 bytes"
    );
    let (_t3, rw) = open(&p, OpenOptions::read_write());
    assert_eq!(b.write_from(&rw, 0, &[]).unwrap(), 0);
    assert_eq!(std::fs::read(&p).unwrap(), pattern(1, 0, 100));
}

/// io_uring only: ops split over many SQEs (a tiny per-SQE cap) come back whole, which
/// exercises the continuation of short transfers, for reads, writes and reads hitting EOF.
#[cfg(target_os = "linux")]
#[test]
fn uring_continues_ops_split_over_many_sqes() {
    use warpfs::engine::uring::{UringEngine, UringOptions};
    let opts = UringOptions {
        async_min_len: 0,
        max_op_bytes: 4096 + 512,
    };
    let Ok(e) = UringEngine::with_options(
        &EngineConfig {
            queue_depth: 8,
            ..Default::default()
        },
        opts,
    ) else {
        eprintln!("SKIP: io_uring unavailable here");
        return;
    };
    let mut e: Box<dyn IoEngine> = Box::new(e);
    let seed = 61;
    let size = 300_001;
    let p = make_file("uring-split", size, seed);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    let fd = f.as_raw_fd();
    let mut bufs = vec![vec![POISON; 100_000]; 4];
    let offs = [0u64, 12_345, 250_000, 299_999];
    let ops: Vec<IoOp> = bufs
        .iter_mut()
        .zip(offs)
        .enumerate()
        .map(|(i, (b, o))| read_op(fd, o, b, i as u64))
        .collect();
    let res = run(&mut *e, &ops, 4);
    for (i, o) in offs.iter().enumerate() {
        let want = 100_000.min(size - *o as usize);
        assert_eq!(res[&(i as u64)], want as i64, "split read at {o}");
        check_read(seed, *o, &bufs[i], want, "split read");
    }
    let mut src = pattern(62, 1000, 50_000);
    let op = IoOp {
        kind: IoKind::Write,
        fd,
        offset: 1000,
        buf: src.as_mut_ptr(),
        len: src.len(),
        token: 7,
    };
    assert_eq!(run(&mut *e, &[op], 1)[&7], 50_000);
    assert_eq!(&std::fs::read(&p).unwrap()[1000..51_000], &src[..]);
}

macro_rules! suite {
    ($($engine:ident => $choice:expr),*) => {$(
        mod $engine {
            use super::*;
            #[test] fn random_reads_match_the_pattern() { super::random_reads_match_the_pattern($choice) }
            #[test] fn empty_file_and_reads_past_eof() { super::empty_file_and_reads_past_eof($choice) }
            #[test] fn read_cached_now_reads_warm_ranges_only() { super::read_cached_now_reads_warm_ranges_only($choice) }
            #[test] fn writes_read_back_and_fsync() { super::writes_read_back_and_fsync($choice) }
            #[test] fn direct_aligned_reads_and_writes() { super::direct_aligned_reads_and_writes($choice) }
            #[test] fn many_ops_in_flight_exceed_the_queue() { super::many_ops_in_flight_exceed_the_queue($choice) }
            #[test] fn bad_fd_gives_ebadf() { super::bad_fd_gives_ebadf($choice) }
            #[test] fn registered_buffers_are_used_correctly() { super::registered_buffers_are_used_correctly($choice) }
            #[test] fn bulk_reads_of_odd_ranges() { super::bulk_reads_of_odd_ranges($choice) }
            #[test] fn bulk_auto_reads_cold_chunks_direct_and_warm_ones_cached() { super::bulk_auto_reads_cold_chunks_direct_and_warm_ones_cached($choice) }
            #[test] fn bulk_writes_of_odd_ranges() { super::bulk_writes_of_odd_ranges($choice) }
            #[test] fn bulk_refuses_what_the_file_was_not_granted() { super::bulk_refuses_what_the_file_was_not_granted($choice) }
        }
    )*};
}

suite!(uring => EngineChoice::Uring, threads => EngineChoice::Threads);

#[test]
fn the_probe_picks_a_real_engine() {
    let got = engine::probe(EngineChoice::Auto);
    assert_ne!(got, EngineChoice::Auto);
    assert_eq!(engine::probe(EngineChoice::Threads), EngineChoice::Threads);
}
