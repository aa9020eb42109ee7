//! A kernel that traps mid-request (issue 4 item 7, issue 7 item 4). Skips (with a message)
//! where there is no CUDA driver; the kernel compiles with NVRTC anywhere libnvrtc loads.
//!
//! The test process is the daemon: it holds the runtime, the files and a
//! [`warpfs::serve::ChannelServer`], and host agents read through it all along. GPU work runs
//! in child processes (this test binary re-executed, `WARPFS_FAULT_CHILD` set) that connect
//! with `GpuIo::connect` — on driver 580 a kernel fault leaves every CUDA context of its process
//! unusable, even after a device reset (ROBUSTNESS.md finding 12), so "the next kernel" needs a
//! new process, and the daemon must not live in the faulting one.
//!
//! One thread of a child's kernel `__trap()`s while the others wait in
//! `wfs_read_direct`/`wfs_write`: once with the channel's service paused (the requests sit in
//! the ring when the context dies; service is then resumed, so the daemon answers a dead
//! kernel's requests), once with the daemon serving a flood of them. Each time:
//!
//! - the child's wait for the kernel sees the sticky context error, and the child's teardown
//!   (dropping the dead `GpuIo`) returns;
//! - the server notices the client gone and detaches its channel;
//! - host agents reading through the daemon all along get exact bytes and no error;
//! - the scratch file holds, per 4 KiB page, nothing (zeros) or exactly the page a thread wrote
//!   — never a torn or foreign write;
//! - a new child connects and runs the same kernel without the trap: every byte read checked
//!   on the GPU, every page written checked in the file.
//!
//! Every wait is bounded and a watchdog aborts the process past `DEADLINE`, so the test fails
//! instead of hanging.
#![cfg(feature = "cuda")]

use rand::{Rng, SeedableRng};
use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use warpfs::backend::cuda::gpu_bench_kernels::kernels_done;
use warpfs::backend::cuda::gpu_io::{self, GpuIo, GpuIoConfig, KernelArg};
use warpfs::backend::cuda::{available, pattern, DeviceBuffer};
use warpfs::serve::{ChannelServer, ServeConfig};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

/// Longest the whole test may take before the watchdog aborts the process.
const DEADLINE: Duration = Duration::from_secs(300);
const FILE_BYTES: usize = 16 << 20;
const PAGES: u64 = (FILE_BYTES / 4096) as u64;
const BLOCKS: u32 = 8;
const BLOCK: u32 = 128;
const THREADS: u32 = BLOCKS * BLOCK;
const CHILD_ENV: &str = "WARPFS_FAULT_CHILD";
/// Prefix of the lines a child prints for the parent.
const MARK: &str = "WARPFS-FAULT ";

const KERNELS: &str = r#"
#include <warpfs.cuh>

__device__ __forceinline__ unsigned long long fault_now_ns() {
    unsigned long long t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    return t;
}

__device__ __forceinline__ unsigned long long fault_word(unsigned long long w) {
    unsigned long long z = w + 0x9E3779B97F4A7C15ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* The page thread `tid` touches in round `r`. */
__device__ __forceinline__ unsigned long long fault_page(unsigned long long tid, unsigned r,
                                                         unsigned long long pages) {
    return (tid * 7919ull + (unsigned long long)r * 104729ull) % pages;
}

/* Threads of warps 1.. do `rounds` requests each: even warps read a page of the pattern file
 * (`direct`: around the GPU page cache) and check every word, odd warps write the pattern
 * page to the same offset of the scratch file. `posted` counts requests about to be posted.
 * With `trap`, lane 0 of warp 0 waits until `posted` reaches `trap_at` (at most `max_wait_ns`),
 * lets them reach the ring, and traps; the other lanes of warp 0 return at once. */
extern "C" __global__ void trap_mid_request(const wfs_ctx_t *ctx, unsigned rfh, unsigned wfh,
                                            unsigned long long pages, unsigned rounds, int direct,
                                            int trap, unsigned trap_at,
                                            unsigned long long max_wait_ns, unsigned char *buf,
                                            unsigned *posted, unsigned long long *bad) {
    unsigned long long tid = blockIdx.x * (unsigned long long)blockDim.x + threadIdx.x;
    if (tid < 32) {
        if (trap && tid == 0) {
            unsigned long long t0 = fault_now_ns();
            while (atomicAdd(posted, 0u) < trap_at && fault_now_ns() - t0 < max_wait_ns)
                __nanosleep(1000);
            unsigned long long t1 = fault_now_ns();
            while (fault_now_ns() - t1 < 200000ull) __nanosleep(1000);
            __trap();
        }
        return;
    }
    unsigned long long *dst = (unsigned long long *)(buf + tid * 4096ull);
    bool writer = (tid / 32) & 1;
    unsigned long long nbad = 0;
    for (unsigned r = 0; r < rounds; ++r) {
        unsigned long long page = fault_page(tid, r, pages);
        if (writer) {
            for (int q = 0; q < 512; ++q) dst[q] = fault_word(page * 512 + q);
            atomicAdd(posted, 1u);
            if (wfs_write(ctx, wfh, page * 4096, 4096, dst) != 4096) nbad++;
        } else {
            for (int q = 0; q < 512; ++q) dst[q] = 0xA5A5A5A5A5A5A5A5ull;
            atomicAdd(posted, 1u);
            long long got = direct ? wfs_read_direct(ctx, rfh, page * 4096, 4096, dst)
                                   : wfs_read(ctx, rfh, page * 4096, 4096, dst);
            bool wrong = got != 4096;
            for (int q = 0; !wrong && q < 512; ++q) wrong = dst[q] != fault_word(page * 512 + q);
            if (wrong) nbad++;
        }
    }
    if (nbad) atomicAdd(bad, nbad);
}
"#;

/// Aborts the process (after saying why) if not dropped within its deadline: a hang fails.
struct Watchdog {
    done: Arc<AtomicBool>,
}

impl Watchdog {
    fn new(limit: Duration, what: &'static str) -> Self {
        let done = Arc::new(AtomicBool::new(false));
        let d = done.clone();
        std::thread::spawn(move || {
            let t = Instant::now();
            while !d.load(Ordering::Acquire) {
                if t.elapsed() > limit {
                    eprintln!("WATCHDOG: {what} still running after {limit:?}: a hang; aborting");
                    std::process::abort();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Self { done }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.done.store(true, Ordering::Release);
    }
}

fn gpu() -> bool {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { cudarc::driver::sys::is_culib_present() } || !available() {
        println!("skipping: no CUDA driver on this machine");
        return false;
    }
    true
}

fn dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("warpfs-faults-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn cfg() -> GpuIoConfig {
    GpuIoConfig {
        warp_slots: 256,
        lane_bytes: 4096,
        timeout: Duration::from_secs(30),
        gpu_cache_bytes: 16 << 20,
        async_slots: 64,
        ..GpuIoConfig::default()
    }
}

/// Device buffers of one launch.
struct Bufs {
    buf: DeviceBuffer,
    posted: DeviceBuffer,
    bad: DeviceBuffer,
}

fn bufs(gpu: &GpuIo<'_>) -> Bufs {
    let mut b = Bufs {
        buf: gpu.alloc(THREADS as usize * 4096).unwrap(),
        posted: gpu.alloc(4).unwrap(),
        bad: gpu.alloc(8).unwrap(),
    };
    b.posted.fill(0).unwrap();
    b.bad.fill(0).unwrap();
    b
}

#[allow(clippy::too_many_arguments)]
fn launch(
    gpu: &GpuIo<'_>,
    module: &gpu_io::GpuModule,
    b: &Bufs,
    (rfh, wfh): (u32, u32),
    rounds: u32,
    direct: bool,
    trap_at: Option<u32>,
) {
    let k = module.kernel("trap_mid_request").unwrap();
    // SAFETY: the arguments match trap_mid_request's parameters in number, order and type;
    // buf holds 4096 bytes per thread, posted one u32, bad one u64; the buffers and the GpuIo
    // outlive the kernel (waited for, or dead, before they are dropped).
    unsafe {
        k.launch(
            (BLOCKS, 1, 1),
            (BLOCK, 1, 1),
            0,
            &[
                KernelArg::U64(gpu.context_ptr()),
                KernelArg::U32(rfh),
                KernelArg::U32(wfh),
                KernelArg::U64(PAGES),
                KernelArg::U32(rounds),
                KernelArg::I32(i32::from(direct)),
                KernelArg::I32(i32::from(trap_at.is_some())),
                KernelArg::U32(trap_at.unwrap_or(0)),
                KernelArg::U64(5_000_000_000),
                KernelArg::U64(b.buf.ptr()),
                KernelArg::U64(b.posted.ptr()),
                KernelArg::U64(b.bad.ptr()),
            ],
        )
        .unwrap()
    };
}

/// Waits (bounded) for the kernels of `gpu`'s context; `Err` is the context's error.
fn wait_kernels(gpu: &GpuIo<'_>, limit: Duration) -> warpfs::Result<()> {
    let t = Instant::now();
    loop {
        match kernels_done(gpu.context()) {
            Ok(true) => return gpu.synchronize(),
            Ok(false) if t.elapsed() < limit => std::thread::sleep(Duration::from_millis(1)),
            Ok(false) => panic!("the kernel ran past {limit:?}"),
            Err(e) => return Err(e),
        }
    }
}

/// Pages of the scratch file the writers of a `rounds`-round launch write.
fn written_pages(rounds: u32) -> Vec<u64> {
    let mut v: Vec<u64> = (32..u64::from(THREADS))
        .filter(|t| (t / 32) & 1 == 1)
        .flat_map(|t| (0..rounds).map(move |r| (t * 7919 + u64::from(r) * 104_729) % PAGES))
        .collect();
    v.sort_unstable();
    v.dedup();
    v
}

/// Every page of the scratch file is all zero or exactly the pattern; the pages in `must` are
/// the pattern. Returns the pages found written.
fn check_scratch(path: &PathBuf, must: &[u64], what: &str) -> usize {
    let bytes = std::fs::read(path).unwrap();
    assert_eq!(
        bytes.len(),
        FILE_BYTES,
        "{what}: the scratch file changed size"
    );
    let mut want = vec![0u8; 4096];
    let mut written = 0;
    for (p, page) in bytes.chunks_exact(4096).enumerate() {
        pattern::fill(&mut want, p as u64 * 4096);
        if page == &want[..] {
            written += 1;
        } else {
            assert!(
                page.iter().all(|&b| b == 0),
                "{what}: scratch page {p} is neither untouched nor the page a thread wrote \
                 (torn or foreign write)"
            );
        }
    }
    for &p in must {
        let at = p as usize * 4096;
        pattern::fill(&mut want, p * 4096);
        assert_eq!(
            &bytes[at..at + 4096],
            &want[..],
            "{what}: page {p} was written (acknowledged) but the file does not hold it"
        );
    }
    written
}

#[test]
fn the_fault_kernel_compiles_with_nvrtc() {
    if !gpu_io::nvrtc_available() {
        println!("skipping: libnvrtc not found; put libnvrtc.so.13 on LD_LIBRARY_PATH");
        return;
    }
    let ptx = gpu_io::compile_ptx(KERNELS, "compute_90", &[]).unwrap();
    assert!(ptx.contains("trap_mid_request") && ptx.contains("trap;"));
    gpu_io::compile_cubin(KERNELS, "sm_90", &[]).unwrap();
}

/// What a child does, from `WARPFS_FAULT_CHILD`: `trap:<paused>:<rounds>` or
/// `clean:<rounds>`, then `:<socket>:<read handle>:<write handle>`.
struct ChildSpec {
    trap: bool,
    paused: bool,
    rounds: u32,
    socket: PathBuf,
    rfh: u32,
    wfh: u32,
}

impl ChildSpec {
    fn parse(spec: &str) -> Self {
        let p: Vec<&str> = spec.split(':').collect();
        let trap = p[0] == "trap";
        let (paused, rest) = if trap {
            (p[1] == "true", &p[2..])
        } else {
            (false, &p[1..])
        };
        Self {
            trap,
            paused,
            rounds: rest[0].parse().unwrap(),
            socket: PathBuf::from(rest[1]),
            rfh: rest[2].parse().unwrap(),
            wfh: rest[3].parse().unwrap(),
        }
    }
}

fn say(what: &str) {
    println!("{MARK}{what}");
    std::io::stdout().flush().unwrap();
}

fn read_stdin_line() -> String {
    let mut l = String::new();
    std::io::stdin().read_line(&mut l).unwrap();
    l.trim().to_string()
}

/// The GPU client: runs only in a child process the parent started.
#[test]
fn fault_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return; // not a child: nothing to do
    };
    let spec = ChildSpec::parse(&spec);
    // Shorter than the parent's, so a hung client says so (and its last step) first.
    let _dog = Watchdog::new(DEADLINE / 2, "the GPU client");
    let gpu = GpuIo::connect(&spec.socket, cfg()).unwrap();
    println!("connected");
    let module = gpu.compile(KERNELS, &[]).unwrap();
    let b = bufs(&gpu);
    println!("compiled");
    let handles = (spec.rfh, spec.wfh);
    if !spec.trap {
        for direct in [true, false] {
            launch(&gpu, &module, &b, handles, spec.rounds, direct, None);
            wait_kernels(&gpu, Duration::from_secs(60))
                .unwrap_or_else(|e| panic!("the kernel without a trap failed: {e}"));
        }
        let mut raw = [0u8; 8];
        b.bad.copy_to_host(0, &mut raw).unwrap();
        assert_eq!(
            u64::from_le_bytes(raw),
            0,
            "requests failed or read wrong bytes"
        );
        gpu.flush().unwrap();
        say(&format!(
            "clean {} reads checked on the GPU",
            2 * spec.rounds * ((THREADS - 32) / 2)
        ));
        return;
    }
    let posters = THREADS - 32;
    // Paused: every thread's first request is in the ring. Serving: half of all.
    let trap_at = if spec.paused {
        posters
    } else {
        posters * spec.rounds / 2
    };
    if spec.paused {
        gpu.set_serving(false).unwrap();
    }
    println!("launching the trap kernel (paused: {})", spec.paused);
    launch(&gpu, &module, &b, handles, spec.rounds, true, Some(trap_at));
    let err = wait_kernels(&gpu, Duration::from_secs(60))
        .expect_err("the trapping kernel finished without an error");
    assert!(gpu.context().health().is_err(), "no sticky error");
    assert!(gpu.synchronize().is_err());
    say(&format!("trapped {err}"));
    if spec.paused {
        // The parent looks at the ring, then lets the daemon answer the dead kernel's requests.
        assert_eq!(read_stdin_line(), "resume");
        gpu.set_serving(true).unwrap();
        say("resumed");
        assert_eq!(read_stdin_line(), "exit");
    }
    // Drop everything of the dead context; the drop must return (the watchdog bounds it).
    let t = Instant::now();
    drop(b);
    drop(module);
    drop(gpu);
    say(&format!("dropped in {:?}", t.elapsed()));
}

/// A child process running [`fault_child`] with `spec`, its stdout read line by line.
struct ChildProc {
    child: Child,
    lines: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl ChildProc {
    fn spawn(spec: &str) -> Self {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "fault_child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let lines = BufReader::new(child.stdout.take().unwrap()).lines();
        Self { child, lines }
    }

    /// The next line the child marked, or a panic if it ended first.
    fn expect(&mut self, prefix: &str) -> String {
        for l in self.lines.by_ref() {
            let l = l.unwrap();
            println!("  child| {l}");
            if let Some(m) = l.strip_prefix(MARK) {
                assert!(
                    m.starts_with(prefix),
                    "child said {m:?}, expected {prefix:?}"
                );
                return m.to_string();
            }
        }
        panic!("the child ended before saying {prefix:?}");
    }

    fn tell(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    /// Waits (bounded) for the child to exit and checks that it passed.
    fn finish(mut self, what: &str) {
        for l in self.lines.by_ref() {
            println!("  child| {}", l.unwrap_or_default());
        }
        let t = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                assert!(st.success(), "{what}: the GPU client failed ({st})");
                return;
            }
            if t.elapsed() > Duration::from_secs(60) {
                let _ = self.child.kill();
                panic!("{what}: the GPU client did not exit (hung teardown)");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// Waits for the client `child` to connect (failing at once if it exits first), serves it in
/// a thread of `s` for as long as it stays connected, and returns its channel with the
/// thread's handle.
fn serve_one<'s, 'rt: 's>(
    s: &'s std::thread::Scope<'s, '_>,
    server: &ChannelServer<'rt>,
    child: &mut ChildProc,
) -> (
    Arc<warpfs::channel::Channel>,
    std::thread::ScopedJoinHandle<'s, warpfs::Result<u64>>,
) {
    let t = Instant::now();
    let served = loop {
        match server.accept_within(Duration::from_millis(200)) {
            Ok(ch) => break ch,
            Err(warpfs::Error::Timeout(_)) => {
                if let Some(st) = child.child.try_wait().unwrap() {
                    panic!("the client exited ({st}) before it connected");
                }
                assert!(
                    t.elapsed() < DEADLINE / 2,
                    "the client did not connect within {:?}",
                    DEADLINE / 2
                );
            }
            Err(e) => panic!("accepting the client: {e}"),
        }
    };
    let channel = served.channel().clone();
    (channel, s.spawn(move || served.serve()))
}

#[test]
fn a_kernel_trapping_mid_request_leaves_the_daemon_healthy_and_the_next_kernel_works() {
    if std::env::var(CHILD_ENV).is_ok() || !gpu() {
        return;
    }
    let _dog = Watchdog::new(DEADLINE, "the trap test");
    let src_path = dir().join("pattern.bin");
    let mut v = vec![0u8; FILE_BYTES];
    pattern::fill(&mut v, 0);
    std::fs::write(&src_path, &v).unwrap();
    let rt = Runtime::new(RuntimeConfig {
        workers: 4,
        wait_timeout: Duration::from_secs(30),
        ..RuntimeConfig::default()
    })
    .unwrap();
    let rf = rt.open(&src_path, OpenOptions::read_only()).unwrap();
    let socket = dir().join("serve.sock");
    let server = ChannelServer::bind(&rt, &socket, ServeConfig::default()).unwrap();
    let stop = AtomicBool::new(false);
    let (host_reads, host_bad) = (AtomicU64::new(0), AtomicU64::new(0));

    std::thread::scope(|s| {
        // Host agents read and check all along: the daemon must stay healthy.
        for a in 0..2u64 {
            let mut agent = rt.agent().unwrap();
            let (rf, stop, host_reads, host_bad) = (&rf, &stop, &host_reads, &host_bad);
            s.spawn(move || {
                let mut rng = rand::rngs::StdRng::seed_from_u64(a);
                let mut buf = vec![0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    let len = rng.random_range(1..=buf.len());
                    let off = rng.random_range(0..(FILE_BYTES - len) as u64);
                    buf[..len].fill(0xA5);
                    match agent.read(rf, off, &mut buf[..len]) {
                        Ok(n) if n == len && pattern::first_mismatch(&buf[..n], off).is_none() => {
                            host_reads.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            eprintln!("host read {off}+{len}: {other:?}");
                            host_bad.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    std::thread::sleep(Duration::from_micros(200));
                }
            });
        }

        for (paused, rounds) in [(true, 2u32), (false, 64u32)] {
            let what = if paused {
                "trap with the requests in the ring (service paused)"
            } else {
                "trap while the daemon serves"
            };
            let scratch = dir().join(format!("scratch-{paused}.bin"));
            std::fs::write(&scratch, vec![0u8; FILE_BYTES]).unwrap();
            let wf = rt.open(&scratch, OpenOptions::read_write()).unwrap();
            let tail = format!("{}:{}:{}", socket.display(), rf.raw(), wf.raw());
            let reads_before = host_reads.load(Ordering::Relaxed);
            let mut child = ChildProc::spawn(&format!("trap:{paused}:{rounds}:{tail}"));
            println!("{what}: client process started; waiting for it to connect");
            let (channel, served) = serve_one(s, &server, &mut child);
            println!("{what}: client connected");
            let said = child.expect("trapped");
            println!("{what}: the client's wait sees {said}");
            if paused {
                let before = channel.demand.len();
                assert!(
                    before > 0,
                    "{what}: the dead kernel's requests should sit in the ring"
                );
                // Resume: the daemon answers requests of a kernel that no longer exists.
                child.tell("resume");
                child.expect("resumed");
                let t = Instant::now();
                while !channel.demand.is_empty() && t.elapsed() < Duration::from_secs(10) {
                    std::thread::sleep(Duration::from_millis(1));
                }
                let left = channel.demand.len();
                // A position claimed but not yet published when the trap hit stops the
                // consumer there (the rest is answered -ESHUTDOWN at detach).
                let answered = before.saturating_sub(left);
                println!(
                    "{what}: {before} requests in the ring at the trap; the daemon answered \
                     {answered}, {left} left"
                );
                assert!(
                    answered > 0,
                    "{what}: the daemon answered none of the dead kernel's requests"
                );
                child.tell("exit");
            }
            println!("{what}: client {}", child.expect("dropped"));
            child.finish(what);
            let commands = served.join().unwrap().unwrap();
            println!("{what}: the server saw the client go after {commands} commands");
            // The daemon serves host agents after the fault.
            let t = Instant::now();
            while host_reads.load(Ordering::Relaxed) < reads_before + 20 {
                assert!(
                    t.elapsed() < Duration::from_secs(30),
                    "{what}: host agents stopped being served"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
            rt.flush().unwrap();
            let seen = check_scratch(&scratch, &[], what);
            println!("{what}: {seen} scratch pages written before the trap, none torn");

            // A new process, a new channel: the same kernel without the trap.
            let rounds = 8;
            let mut child = ChildProc::spawn(&format!("clean:{rounds}:{tail}"));
            let (_, served) = serve_one(s, &server, &mut child);
            println!("{what}: next client: {}", child.expect("clean"));
            child.finish(what);
            served.join().unwrap().unwrap();
            let must = written_pages(rounds);
            check_scratch(&scratch, &must, what);
            println!(
                "{what}: next client's {} pages written and checked in the file",
                must.len()
            );
        }
        stop.store(true, Ordering::Relaxed);
    });
    let (n, bad) = (
        host_reads.load(Ordering::Relaxed),
        host_bad.load(Ordering::Relaxed),
    );
    println!("host agents: {n} reads checked during the faults, {bad} bad");
    assert_eq!(bad, 0, "host agents saw errors or wrong bytes");
}
