//! Faults injected *below* the thread-pool engine: this test binary defines `pread`, `pwrite`
//! and `fdatasync` itself, so the engine's calls reach these interposers first (the
//! executable's definitions win over libc's); they forward to libc (`dlsym(RTLD_NEXT)`) except
//! where a fault is armed for the test's descriptor. This exercises the engine's own retry
//! code (`threads::execute`): EINTR/EAGAIN retried up to `MAX_RETRIES`, short transfers
//! continued — the contract the fault engine (`engine::fault`) only imitates.
//!
//! Tests here share the interposers' global state, so they run one at a time (a lock).
//! glibc only (`RTLD_NEXT`, `__errno_location`).
#![cfg(all(target_os = "linux", target_env = "gnu"))]

use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use warpfs::cache::CacheConfig;
use warpfs::engine::threads::ThreadsEngine;
use warpfs::engine::{EngineChoice, EngineConfig, IoDone, IoEngine, IoKind, IoOp};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

/// Descriptor the faults apply to (-1: none).
static FD: AtomicI32 = AtomicI32::new(-1);
/// Errno to fail calls with, while `FAILS` lasts (0: none).
static ERRNO: AtomicI32 = AtomicI32::new(0);
/// Calls left to fail.
static FAILS: AtomicU64 = AtomicU64::new(0);
/// Most bytes one call transfers (0: no limit).
static SHORT: AtomicUsize = AtomicUsize::new(0);
/// Calls seen on `FD`.
static CALLS: AtomicU64 = AtomicU64::new(0);

static SERIAL: Mutex<()> = Mutex::new(());

fn real(name: &std::ffi::CStr) -> usize {
    // SAFETY: dlsym with RTLD_NEXT and a NUL-terminated name has no other preconditions.
    let p = unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) };
    assert!(!p.is_null(), "libc has no {name:?}");
    p as usize
}

/// Decides the fate of one call on `fd`: `Err(errno)` to fail it, or the byte count to pass on.
fn fate(fd: i32, count: usize) -> Result<usize, i32> {
    if fd != FD.load(Ordering::SeqCst) {
        return Ok(count);
    }
    CALLS.fetch_add(1, Ordering::SeqCst);
    let errno = ERRNO.load(Ordering::SeqCst);
    if errno != 0
        && FAILS
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    {
        return Err(errno);
    }
    let short = SHORT.load(Ordering::SeqCst);
    Ok(if short > 0 { count.min(short) } else { count })
}

fn set_errno(e: i32) {
    // SAFETY: __errno_location returns this thread's errno slot.
    unsafe { *libc::__errno_location() = e };
}

/// Interposed `pread`.
///
/// # Safety
/// Same contract as libc's `pread`.
#[no_mangle]
pub unsafe extern "C" fn pread(
    fd: i32,
    buf: *mut libc::c_void,
    count: usize,
    offset: libc::off_t,
) -> isize {
    type F = unsafe extern "C" fn(i32, *mut libc::c_void, usize, libc::off_t) -> isize;
    static REAL: OnceLock<usize> = OnceLock::new();
    match fate(fd, count) {
        Err(e) => {
            set_errno(e);
            -1
        }
        Ok(n) => {
            // SAFETY: REAL is libc's pread (same signature); the caller's contract carries over
            // (n ≤ count).
            unsafe {
                let f: F = std::mem::transmute(*REAL.get_or_init(|| real(c"pread")));
                f(fd, buf, n, offset)
            }
        }
    }
}

/// Interposed `pwrite`.
///
/// # Safety
/// Same contract as libc's `pwrite`.
#[no_mangle]
pub unsafe extern "C" fn pwrite(
    fd: i32,
    buf: *const libc::c_void,
    count: usize,
    offset: libc::off_t,
) -> isize {
    type F = unsafe extern "C" fn(i32, *const libc::c_void, usize, libc::off_t) -> isize;
    static REAL: OnceLock<usize> = OnceLock::new();
    match fate(fd, count) {
        Err(e) => {
            set_errno(e);
            -1
        }
        Ok(n) => {
            // SAFETY: REAL is libc's pwrite (same signature); n ≤ count.
            unsafe {
                let f: F = std::mem::transmute(*REAL.get_or_init(|| real(c"pwrite")));
                f(fd, buf, n, offset)
            }
        }
    }
}

/// Interposed `fdatasync`.
///
/// # Safety
/// Same contract as libc's `fdatasync`.
#[no_mangle]
pub unsafe extern "C" fn fdatasync(fd: i32) -> i32 {
    type F = unsafe extern "C" fn(i32) -> i32;
    static REAL: OnceLock<usize> = OnceLock::new();
    match fate(fd, 0) {
        Err(e) => {
            set_errno(e);
            -1
        }
        // SAFETY: REAL is libc's fdatasync (same signature).
        Ok(_) => unsafe {
            let f: F = std::mem::transmute(*REAL.get_or_init(|| real(c"fdatasync")));
            f(fd)
        },
    }
}

/// Arms faults on `fd`; returns a guard that disarms them and keeps tests serial.
fn arm(fd: i32, errno: i32, fails: u64, short: usize) -> impl Drop {
    struct Disarm(#[allow(dead_code)] std::sync::MutexGuard<'static, ()>);
    impl Drop for Disarm {
        fn drop(&mut self) {
            FD.store(-1, Ordering::SeqCst);
            ERRNO.store(0, Ordering::SeqCst);
            FAILS.store(0, Ordering::SeqCst);
            SHORT.store(0, Ordering::SeqCst);
        }
    }
    let g = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    CALLS.store(0, Ordering::SeqCst);
    ERRNO.store(errno, Ordering::SeqCst);
    FAILS.store(fails, Ordering::SeqCst);
    SHORT.store(short, Ordering::SeqCst);
    FD.store(fd, Ordering::SeqCst);
    Disarm(g)
}

fn pat(off: u64) -> u8 {
    (off.wrapping_mul(0x9E37_79B1) >> 7) as u8
}

fn file(name: &str, len: usize) -> (std::path::PathBuf, std::fs::File) {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sysfault-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    std::fs::write(&p, (0..len as u64).map(pat).collect::<Vec<_>>()).unwrap();
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&p)
        .unwrap();
    (p, f)
}

fn run(ops: &[IoOp]) -> Vec<IoDone> {
    let mut e = ThreadsEngine::new(&EngineConfig {
        threads: 2,
        ..Default::default()
    });
    // SAFETY: the callers' buffers outlive this call, which reaps every op.
    unsafe { e.submit(ops) };
    let mut out = Vec::new();
    while e.in_flight() > 0 {
        e.reap(&mut out, true);
    }
    out.sort_by_key(|d| d.token);
    out
}

fn op(kind: IoKind, fd: i32, offset: u64, buf: &mut [u8], token: u64) -> IoOp {
    IoOp {
        kind,
        fd,
        offset,
        buf: buf.as_mut_ptr(),
        len: buf.len(),
        token,
    }
}

#[test]
fn transient_errors_are_retried_by_the_thread_engine() {
    for errno in [libc::EINTR, libc::EAGAIN] {
        let (_p, f) = file(&format!("transient-{errno}"), 100_000);
        let fd = f.as_raw_fd();
        let mut buf = vec![0u8; 100_000];
        let mut sync = [0u8; 0];
        let _g = arm(fd, errno, 7, 0);
        let out = run(&[op(IoKind::Read, fd, 0, &mut buf, 1)]);
        assert_eq!(out[0].result, 100_000, "errno {errno}");
        assert!(buf.iter().enumerate().all(|(i, &b)| b == pat(i as u64)));
        assert_eq!(
            CALLS.load(Ordering::SeqCst),
            8,
            "7 failed calls, then the read"
        );
        FAILS.store(3, Ordering::SeqCst);
        let out = run(&[IoOp {
            kind: IoKind::Fsync,
            ..op(IoKind::Fsync, fd, 0, &mut sync, 2)
        }]);
        assert_eq!(out[0].result, 0, "fdatasync after 3 × errno {errno}");
    }
}

#[test]
fn a_transient_error_that_never_ends_is_reported_after_the_retry_budget() {
    let (_p, f) = file("endless", 10_000);
    let fd = f.as_raw_fd();
    let mut buf = vec![0u8; 10_000];
    let _g = arm(fd, libc::EINTR, u64::MAX, 0);
    let out = run(&[op(IoKind::Read, fd, 0, &mut buf, 1)]);
    assert_eq!(out[0].result, -(libc::EINTR as i64));
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        1001,
        "1 call + MAX_RETRIES (1000) retries"
    );
}

#[test]
fn short_transfers_are_continued_by_the_thread_engine() {
    let (p, f) = file("short", 1_000_000);
    let fd = f.as_raw_fd();
    let mut rbuf = vec![0u8; 500_000];
    let mut wbuf: Vec<u8> = (0..300_000u32).map(|i| (i % 253) as u8).collect();
    let _g = arm(fd, 0, 0, 999);
    let out = run(&[
        op(IoKind::Read, fd, 123, &mut rbuf, 1),
        op(IoKind::Write, fd, 600_000, &mut wbuf, 2),
    ]);
    assert_eq!(out[0].result, 500_000);
    assert_eq!(out[1].result, 300_000);
    assert!(rbuf
        .iter()
        .enumerate()
        .all(|(i, &b)| b == pat(123 + i as u64)));
    assert_eq!(
        CALLS.load(Ordering::SeqCst),
        500_000u64.div_ceil(999) + 300_000u64.div_ceil(999)
    );
    drop(_g);
    let bytes = std::fs::read(&p).unwrap();
    assert!(bytes[600_000..900_000] == wbuf[..]);
}

#[test]
fn requests_through_the_daemon_get_full_results_under_short_and_interrupted_calls() {
    let (p, f) = file("daemon", 400_000);
    drop(f); // the runtime's descriptor must be the only one open on the file
    let rt = Runtime::new(RuntimeConfig {
        workers: 2,
        engine: EngineConfig {
            choice: EngineChoice::Threads,
            // Every read through the engine: its retry code is what this test exercises.
            cached_reads_now: false,
            ..Default::default()
        },
        cache: CacheConfig {
            page_size: 4096,
            capacity: 32 * 4096,
        },
        ..RuntimeConfig::default()
    })
    .unwrap();
    let h = rt.open(&p, OpenOptions::read_write()).unwrap();
    // The runtime's own descriptor for the file (the only one open on it).
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| {
            let e = e.ok()?;
            let target = std::fs::read_link(e.path()).ok()?;
            (target == p.canonicalize().ok()?)
                .then(|| e.file_name().to_str()?.parse::<i32>().ok())?
        })
        .collect();
    assert_eq!(fds.len(), 1, "descriptors open on the file: {fds:?}");
    let fd = fds[0];
    let mut agent = rt.agent().unwrap();
    let _g = arm(fd, libc::EINTR, 50, 1000);
    let data: Vec<u8> = (0..150_000u32).map(|i| (i % 241) as u8).collect();
    assert_eq!(agent.write(&h, 100_000, &data).unwrap(), data.len());
    agent.fsync(&h).unwrap();
    let mut buf = vec![0u8; 400_000];
    assert_eq!(agent.read(&h, 0, &mut buf).unwrap(), 400_000);
    for (i, &b) in buf.iter().enumerate() {
        let want = if (100_000..250_000).contains(&i) {
            data[i - 100_000]
        } else {
            pat(i as u64)
        };
        assert_eq!(b, want, "byte {i}");
    }
    let calls = CALLS.load(Ordering::SeqCst);
    assert!(calls > 500, "the faults must have been hit: {calls} calls");
    assert_eq!(
        FAILS.load(Ordering::SeqCst),
        0,
        "all 50 EINTRs were consumed"
    );
}
