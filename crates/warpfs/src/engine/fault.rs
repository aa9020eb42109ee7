//! A fault-injecting I/O engine for robustness tests (cargo feature `fault-injection`).
//!
//! [`FaultEngine`] wraps any [`IoEngine`] and, following a shared [`FaultPlan`], makes chosen
//! operations fail with EIO, ENOSPC or any errno, return EINTR/EAGAIN, transfer short, or wait
//! before they start. A plan is a list of [`FaultRule`]s (op kind, file, offset range, nth
//! matching op, probability with a seed, a cap on hits); the first rule that matches an op
//! decides its fault.
//!
//! Where the faults sit: the engine contract ([`super`]) says EINTR, EAGAIN and short transfers
//! are retried *inside* engines, so injecting them above an engine would test nothing but a
//! contract violation. A `FaultEngine` is therefore itself an engine that keeps the contract:
//! it plays the part of the system call. Each op is carried out as a series of *attempts*; an
//! attempt either fails (the injected errno), or is handed to the inner engine — whole, or cut
//! to a short transfer — and the wrapper retries transient errors (at most [`MAX_RETRIES`]
//! times, as the real engines do) and continues short transfers at the next offset, with real
//! I/O through the inner engine, exactly as `threads::execute` and the io_uring engine's
//! resubmission do. Hard errors (EIO, ENOSPC, ...) are the op's result, so the daemon and the
//! requester see them.
//!
//! Every injection is logged ([`FaultPlan::injected`]) so a test can tell which request each
//! fault belonged to, and counted ([`FaultPlan::stats`]) so a test can prove that faults fired.
//!
//! [`forced_uring_setup_failure`] lets a test process pretend io_uring cannot be set up
//! (`WARPFS_FAULT_URING_SETUP=EPERM|ENOSYS|EINVAL`), to exercise the fallback to threads.

use super::{
    is_transient, EngineConfig, EngineFactory, IoDone, IoEngine, IoKind, IoOp, MAX_RETRIES,
};
use std::collections::HashMap;
use std::ops::Range;
use std::os::fd::RawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// Environment variable read by the io_uring probe in fault-injection builds: `EPERM`,
/// `ENOSYS` or `EINVAL` makes the probe report that io_uring cannot be set up.
pub const URING_SETUP_ENV: &str = "WARPFS_FAULT_URING_SETUP";

/// The io_uring setup failure a test asked for through [`URING_SETUP_ENV`], if any.
pub fn forced_uring_setup_failure() -> Option<std::io::ErrorKind> {
    let v = std::env::var(URING_SETUP_ENV).ok()?;
    let errno = match v.trim().to_ascii_uppercase().as_str() {
        "" => return None,
        "EPERM" => libc::EPERM,
        "ENOSYS" => libc::ENOSYS,
        "EINVAL" => libc::EINVAL,
        other => {
            tracing::warn!(
                value = other,
                "{URING_SETUP_ENV} must be EPERM, ENOSYS or EINVAL; treating it as EPERM"
            );
            libc::EPERM
        }
    };
    tracing::warn!(
        errno,
        "io_uring setup failure injected by {URING_SETUP_ENV}"
    );
    Some(std::io::Error::from_raw_os_error(errno).kind())
}

/// What happens to an op a rule picks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The op fails with `EIO` (no bytes move).
    Eio,
    /// The op fails with `ENOSPC` (no bytes move).
    Enospc,
    /// The op fails with this positive errno (no bytes move).
    Errno(i32),
    /// One attempt returns `EINTR`; the engine retries. With `persistent`, every attempt does,
    /// until the retry budget runs out and the op fails with `EINTR`.
    Eintr {
        /// Fail every attempt, not just the first.
        persistent: bool,
    },
    /// As [`Fault::Eintr`], with `EAGAIN`.
    Eagain {
        /// Fail every attempt, not just the first.
        persistent: bool,
    },
    /// Every attempt of the op transfers at most this many bytes (≥ 1); the engine continues
    /// from where the last attempt stopped. No effect on fsync.
    Short(usize),
    /// The op starts only after this delay.
    Delay(Duration),
}

impl Fault {
    /// The errno of a hard failure, if this is one.
    fn hard_errno(self) -> Option<i32> {
        match self {
            Fault::Eio => Some(libc::EIO),
            Fault::Enospc => Some(libc::ENOSPC),
            Fault::Errno(e) => Some(e.max(1)),
            _ => None,
        }
    }
}

/// Which file a rule applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileMatch {
    /// Any file.
    Any,
    /// Ops on this descriptor.
    Fd(RawFd),
    /// Ops on any descriptor open on this path (buffered and `O_DIRECT` alike), resolved
    /// through `/proc/self/fd`.
    Path(PathBuf),
}

/// When a fault fires. Every condition must hold; `Default` matches every op.
#[derive(Debug, Clone)]
pub struct FaultRule {
    /// The fault to inject.
    pub fault: Fault,
    /// Op kinds it applies to (`None`: all).
    pub kind: Option<IoKind>,
    /// File it applies to.
    pub file: FileMatch,
    /// Byte range of the file: the rule applies to ops that overlap it (`None`: anywhere).
    /// Fsync ops have no range and match only rules without one.
    pub offsets: Option<Range<u64>>,
    /// Fire only on the `nth` (0-based) op that matches the conditions above.
    pub nth: Option<u64>,
    /// Chance of firing on a matching op, drawn from the plan's seeded generator.
    pub probability: f64,
    /// Fire at most this many times.
    pub max_hits: Option<u64>,
}

impl FaultRule {
    /// A rule that injects `fault` into every op (narrow it with the builder methods).
    pub fn new(fault: Fault) -> Self {
        Self {
            fault,
            kind: None,
            file: FileMatch::Any,
            offsets: None,
            nth: None,
            probability: 1.0,
            max_hits: None,
        }
    }
    /// Only ops of `kind`.
    pub fn kind(mut self, kind: IoKind) -> Self {
        self.kind = Some(kind);
        self
    }
    /// Only ops on `path`.
    pub fn path(mut self, path: impl AsRef<Path>) -> Self {
        let p = path.as_ref();
        self.file = FileMatch::Path(p.canonicalize().unwrap_or_else(|_| p.to_path_buf()));
        self
    }
    /// Only ops on descriptor `fd`.
    pub fn fd(mut self, fd: RawFd) -> Self {
        self.file = FileMatch::Fd(fd);
        self
    }
    /// Only ops overlapping `range`.
    pub fn offsets(mut self, range: Range<u64>) -> Self {
        self.offsets = Some(range);
        self
    }
    /// Only the `n`th (0-based) matching op.
    pub fn nth(mut self, n: u64) -> Self {
        self.nth = Some(n);
        self
    }
    /// Fire with probability `p` on each matching op.
    pub fn probability(mut self, p: f64) -> Self {
        self.probability = p;
        self
    }
    /// Fire at most `n` times.
    pub fn max_hits(mut self, n: u64) -> Self {
        self.max_hits = Some(n);
        self
    }
}

/// One injection, as logged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// Index of the rule that fired.
    pub rule: usize,
    /// The fault.
    pub fault: Fault,
    /// Op kind.
    pub kind: IoKind,
    /// Descriptor.
    pub fd: RawFd,
    /// File offset of the whole op.
    pub offset: u64,
    /// Length of the whole op.
    pub len: usize,
}

/// Counters of a plan, over every engine that uses it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FaultStats {
    /// Ops submitted to fault engines.
    pub ops: u64,
    /// Ops a rule picked.
    pub injected: u64,
    /// Attempts that failed with an injected EINTR/EAGAIN and were retried.
    pub retries: u64,
    /// Attempts handed to an inner engine cut short, and continued afterwards.
    pub short_attempts: u64,
    /// Ops completed with an injected hard error (or a transient one out of retries).
    pub failed: u64,
}

struct PlanState {
    rng: u64,
    matches: Vec<u64>,
    hits: Vec<u64>,
    log: Vec<Injected>,
}

/// Rules plus the state they need (match counts, a seeded generator, the log); shared by every
/// [`FaultEngine`] built from it, so `nth` counts ops across all daemon workers.
pub struct FaultPlan {
    rules: Vec<FaultRule>,
    state: Mutex<PlanState>,
    ops: AtomicU64,
    retries: AtomicU64,
    short_attempts: AtomicU64,
    failed: AtomicU64,
}

impl std::fmt::Debug for FaultPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultPlan")
            .field("rules", &self.rules)
            .field("stats", &self.stats())
            .finish()
    }
}

impl FaultPlan {
    /// A plan with `rules` (first match wins) and a generator seeded with `seed`.
    pub fn new(rules: Vec<FaultRule>, seed: u64) -> Arc<Self> {
        let n = rules.len();
        Arc::new(Self {
            rules,
            state: Mutex::new(PlanState {
                rng: seed ^ 0x9E37_79B9_7F4A_7C15,
                matches: vec![0; n],
                hits: vec![0; n],
                log: Vec::new(),
            }),
            ops: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            short_attempts: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        })
    }

    /// An engine factory for [`crate::RuntimeConfig::engine_factory`]: each engine is the one
    /// [`super::create`] would make, wrapped in a [`FaultEngine`] following this plan.
    pub fn factory(self: &Arc<Self>) -> EngineFactory {
        let plan = self.clone();
        EngineFactory::new(move |cfg: &EngineConfig| {
            Box::new(FaultEngine::new(super::create(cfg), plan.clone())) as Box<dyn IoEngine>
        })
    }

    fn lock(&self) -> MutexGuard<'_, PlanState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every injection so far, in order.
    pub fn injected(&self) -> Vec<Injected> {
        self.lock().log.clone()
    }

    /// Counters so far.
    pub fn stats(&self) -> FaultStats {
        FaultStats {
            ops: self.ops.load(Ordering::Relaxed),
            injected: self.lock().log.len() as u64,
            retries: self.retries.load(Ordering::Relaxed),
            short_attempts: self.short_attempts.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// The fault for a newly submitted `op`, if a rule picks it (and logs it).
    fn decide(&self, op: &IoOp) -> Option<Fault> {
        self.ops.fetch_add(1, Ordering::Relaxed);
        let mut path: Option<Option<PathBuf>> = None;
        let mut st = self.lock();
        for (i, r) in self.rules.iter().enumerate() {
            if r.kind.is_some_and(|k| k != op.kind) {
                continue;
            }
            match (&r.offsets, op.kind) {
                (None, _) => {}
                (Some(_), IoKind::Fsync) => continue,
                (Some(range), _) => {
                    let end = op.offset.saturating_add(op.len as u64);
                    if !(op.offset < range.end && range.start < end.max(op.offset + 1)) {
                        continue;
                    }
                }
            }
            match &r.file {
                FileMatch::Any => {}
                FileMatch::Fd(fd) if *fd == op.fd => {}
                FileMatch::Fd(_) => continue,
                FileMatch::Path(p) => {
                    let of_fd = path.get_or_insert_with(|| fd_path(op.fd));
                    if of_fd.as_deref() != Some(p.as_path()) {
                        continue;
                    }
                }
            }
            let n = st.matches[i];
            st.matches[i] += 1;
            if r.nth.is_some_and(|k| k != n) {
                continue;
            }
            if r.max_hits.is_some_and(|m| st.hits[i] >= m) {
                continue;
            }
            if r.probability < 1.0 {
                let draw = (splitmix(&mut st.rng) >> 11) as f64 / (1u64 << 53) as f64;
                if draw >= r.probability {
                    continue;
                }
            }
            st.hits[i] += 1;
            st.log.push(Injected {
                rule: i,
                fault: r.fault,
                kind: op.kind,
                fd: op.fd,
                offset: op.offset,
                len: op.len,
            });
            return Some(r.fault);
        }
        None
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn fd_path(fd: RawFd) -> Option<PathBuf> {
    std::fs::read_link(format!("/proc/self/fd/{fd}")).ok()
}

/// An op in progress in a [`FaultEngine`].
struct OpState {
    op: IoOp,
    /// Bytes moved so far.
    done: usize,
    /// Transient failures retried so far.
    retries: u32,
    /// The fault still in force for later attempts.
    fault: Option<Fault>,
    /// Length of the attempt in the inner engine.
    attempt: usize,
}

/// An [`IoEngine`] that injects the faults of a [`FaultPlan`] into the ops it passes to an
/// inner engine, keeping the engine contract (see the module documentation).
pub struct FaultEngine {
    inner: Box<dyn IoEngine>,
    plan: Arc<FaultPlan>,
    ops: HashMap<u64, OpState>,
    next: u64,
    /// Finished ops not yet reaped.
    ready: Vec<IoDone>,
    /// Delayed ops: when each may start.
    delayed: Vec<(Instant, u64)>,
    /// Attempts to hand to the inner engine.
    queue: Vec<IoOp>,
    scratch: Vec<IoDone>,
}

impl std::fmt::Debug for FaultEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultEngine")
            .field("inner", &self.inner.name())
            .field("in_flight", &self.ops.len())
            .finish()
    }
}

impl FaultEngine {
    /// Wraps `inner`, injecting the faults of `plan`.
    pub fn new(inner: Box<dyn IoEngine>, plan: Arc<FaultPlan>) -> Self {
        Self {
            inner,
            plan,
            ops: HashMap::new(),
            next: 0,
            ready: Vec::new(),
            delayed: Vec::new(),
            queue: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// The plan this engine follows.
    pub fn plan(&self) -> &Arc<FaultPlan> {
        &self.plan
    }

    fn finish(&mut self, id: u64, result: i64) {
        if let Some(s) = self.ops.remove(&id) {
            self.ready.push(IoDone {
                token: s.op.token,
                result,
            });
        }
    }

    /// Makes the next attempt of op `id`: fails it, or queues it for the inner engine.
    fn attempt(&mut self, id: u64) {
        loop {
            let Some(s) = self.ops.get_mut(&id) else {
                return;
            };
            match s.fault {
                Some(f @ (Fault::Eintr { persistent } | Fault::Eagain { persistent })) => {
                    let errno = if matches!(f, Fault::Eintr { .. }) {
                        libc::EINTR
                    } else {
                        libc::EAGAIN
                    };
                    if !persistent {
                        s.fault = None;
                    }
                    debug_assert!(is_transient(errno));
                    if s.retries < MAX_RETRIES {
                        s.retries += 1;
                        self.plan.retries.fetch_add(1, Ordering::Relaxed);
                        continue; // the engine retries at once, as the real ones do
                    }
                    self.plan.failed.fetch_add(1, Ordering::Relaxed);
                    return self.finish(id, -(errno as i64));
                }
                Some(f) if f.hard_errno().is_some() => {
                    self.plan.failed.fetch_add(1, Ordering::Relaxed);
                    let errno = f.hard_errno().unwrap_or(libc::EIO);
                    return self.finish(id, -(errno as i64));
                }
                Some(Fault::Delay(d)) => {
                    s.fault = None;
                    self.delayed.push((Instant::now() + d, id));
                    return;
                }
                _ => {}
            }
            let rest = s.op.len - s.done;
            let len = match s.fault {
                Some(Fault::Short(max)) if s.op.kind != IoKind::Fsync && rest > max.max(1) => {
                    self.plan.short_attempts.fetch_add(1, Ordering::Relaxed);
                    max.max(1)
                }
                _ => rest,
            };
            s.attempt = len;
            let buf = if s.op.buf.is_null() {
                s.op.buf
            } else {
                s.op.buf.wrapping_add(s.done)
            };
            self.queue.push(IoOp {
                kind: s.op.kind,
                fd: s.op.fd,
                offset: s.op.offset + s.done as u64,
                buf,
                len,
                token: id,
            });
            return;
        }
    }

    /// Hands queued attempts to the inner engine.
    fn flush_queue(&mut self) {
        if self.queue.is_empty() {
            return;
        }
        // SAFETY: each attempt covers part of an op the caller submitted to us, whose buffer
        // and descriptor stay valid until we report that op done (IoEngine::submit); we report
        // it only after the inner engine returned every attempt of it.
        unsafe { self.inner.submit(&self.queue) };
        self.queue.clear();
    }

    /// An attempt came back from the inner engine.
    fn on_inner_done(&mut self, d: IoDone) {
        let id = d.token;
        let Some(s) = self.ops.get_mut(&id) else {
            return;
        };
        if s.op.kind == IoKind::Fsync {
            return self.finish(id, d.result);
        }
        if d.result < 0 {
            return self.finish(id, d.result);
        }
        let got = d.result as usize;
        s.done += got.min(s.attempt);
        let total = s.done;
        if total >= s.op.len {
            return self.finish(id, total as i64);
        }
        if got < s.attempt {
            // The inner engine keeps the contract: short means end of file (reads), or it
            // would have reported an error.
            let r = if s.op.kind == IoKind::Read {
                total as i64
            } else {
                -(libc::EIO as i64)
            };
            return self.finish(id, r);
        }
        self.attempt(id);
    }

    /// Starts delayed ops whose time has come; returns the earliest deadline still waiting.
    fn start_due(&mut self) -> Option<Instant> {
        let now = Instant::now();
        let mut due = Vec::new();
        self.delayed.retain(|&(t, id)| {
            if t <= now {
                due.push(id);
                false
            } else {
                true
            }
        });
        for id in due {
            self.attempt(id);
        }
        self.flush_queue();
        self.delayed.iter().map(|&(t, _)| t).min()
    }
}

impl IoEngine for FaultEngine {
    /// Every read goes through the fault plan: no read bypasses it.
    unsafe fn read_cached_now(&mut self, fd: i32, offset: u64, buf: *mut u8, len: usize) -> bool {
        let _ = (fd, offset, buf, len);
        false
    }

    /// Every read goes through the fault plan: none comes from a mapping.
    unsafe fn read_mapped_now(
        &mut self,
        map: &super::mapped::MappedFile,
        offset: u64,
        buf: *mut u8,
        len: usize,
    ) -> bool {
        let _ = (map, offset, buf, len);
        false
    }

    fn name(&self) -> &'static str {
        match self.inner.name() {
            "uring" => "fault+uring",
            "threads" => "fault+threads",
            _ => "fault",
        }
    }

    unsafe fn submit(&mut self, ops: &[IoOp]) {
        for op in ops {
            let id = self.next;
            self.next += 1;
            let fault = self.plan.decide(op);
            self.ops.insert(
                id,
                OpState {
                    op: *op,
                    done: 0,
                    retries: 0,
                    fault,
                    attempt: 0,
                },
            );
            self.attempt(id);
        }
        self.flush_queue();
    }

    fn reap(&mut self, out: &mut Vec<IoDone>, wait: bool) {
        loop {
            let next_due = self.start_due();
            if !self.ready.is_empty() {
                out.append(&mut self.ready);
                return;
            }
            if self.ops.is_empty() {
                return;
            }
            let mut done = std::mem::take(&mut self.scratch);
            match next_due {
                // Nothing but delayed ops: sleep until the first may start.
                Some(t) if self.inner.in_flight() == 0 => {
                    if !wait {
                        self.scratch = done;
                        return;
                    }
                    std::thread::sleep(t.saturating_duration_since(Instant::now()));
                }
                // Delayed ops and inner I/O: poll the inner engine without blocking past the
                // first deadline.
                Some(_) => {
                    self.inner.reap(&mut done, false);
                    if done.is_empty() && wait {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
                None => self.inner.reap(&mut done, wait),
            }
            for d in done.drain(..) {
                self.on_inner_done(d);
            }
            self.scratch = done;
            self.flush_queue();
            if !wait && self.ready.is_empty() {
                return;
            }
        }
    }

    fn in_flight(&self) -> usize {
        self.ops.len() + self.ready.len()
    }

    unsafe fn register_buffers(&mut self, ranges: &[(*mut u8, usize)]) -> std::io::Result<()> {
        // SAFETY: our caller upholds the same contract for the inner engine.
        unsafe { self.inner.register_buffers(ranges) }
    }
}

impl Drop for FaultEngine {
    fn drop(&mut self) {
        // Delayed ops have not reached the inner engine: they were never started, and their
        // buffers are not touched after this. The inner engine's drop finishes its own ops.
        self.delayed.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::threads::ThreadsEngine;

    fn file_with(bytes: &[u8]) -> (tempfile_like::Tmp, std::fs::File) {
        let t = tempfile_like::Tmp::new(bytes);
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&t.0)
            .unwrap();
        (t, f)
    }

    mod tempfile_like {
        pub struct Tmp(pub std::path::PathBuf);
        impl Tmp {
            pub fn new(bytes: &[u8]) -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "warpfs-fault-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&p, bytes).unwrap();
                Self(p)
            }
        }
        impl Drop for Tmp {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn run(e: &mut FaultEngine, ops: &[IoOp]) -> Vec<IoDone> {
        // SAFETY: the callers' buffers outlive this call, which reaps every op.
        unsafe { e.submit(ops) };
        let mut out = Vec::new();
        while e.in_flight() > 0 {
            e.reap(&mut out, true);
        }
        out.sort_by_key(|d| d.token);
        out
    }

    fn read_op(fd: RawFd, offset: u64, buf: &mut [u8], token: u64) -> IoOp {
        IoOp {
            kind: IoKind::Read,
            fd,
            offset,
            buf: buf.as_mut_ptr(),
            len: buf.len(),
            token,
        }
    }

    fn threads() -> Box<dyn IoEngine> {
        Box::new(ThreadsEngine::new(&EngineConfig {
            threads: 2,
            ..Default::default()
        }))
    }

    #[test]
    fn hard_fault_hits_only_its_op_and_transients_are_retried() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let (_t, f) = file_with(&data);
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        let plan = FaultPlan::new(
            vec![
                FaultRule::new(Fault::Eio).offsets(4000..4001),
                FaultRule::new(Fault::Eintr { persistent: false }).offsets(0..1),
                FaultRule::new(Fault::Short(333)).offsets(6000..6001),
                FaultRule::new(Fault::Delay(Duration::from_millis(5))).offsets(8000..8001),
            ],
            1,
        );
        let mut e = FaultEngine::new(threads(), plan.clone());
        let mut bufs = vec![vec![0u8; 2000]; 5];
        let ops: Vec<IoOp> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| read_op(fd, i as u64 * 2000, b, i as u64))
            .collect();
        let out = run(&mut e, &ops);
        let results: Vec<i64> = out.iter().map(|d| d.result).collect();
        assert_eq!(results, vec![2000, 2000, -(libc::EIO as i64), 2000, 2000]);
        for (i, b) in bufs.iter().enumerate() {
            if i != 2 {
                assert_eq!(&b[..], &data[i * 2000..(i + 1) * 2000], "op {i}");
            }
        }
        let st = plan.stats();
        assert_eq!((st.injected, st.retries, st.failed), (4, 1, 1), "{st:?}");
        assert_eq!(st.short_attempts, 6, "{st:?}"); // 2000 = 6 × 333 + 2
    }

    #[test]
    fn persistent_transient_runs_out_of_retries_and_short_write_completes() {
        let (t, f) = file_with(&[0u8; 4096]);
        use std::os::fd::AsRawFd;
        let fd = f.as_raw_fd();
        let plan = FaultPlan::new(
            vec![
                FaultRule::new(Fault::Eagain { persistent: true }).kind(IoKind::Fsync),
                FaultRule::new(Fault::Short(100)).kind(IoKind::Write),
            ],
            2,
        );
        let mut e = FaultEngine::new(threads(), plan.clone());
        let src: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8).collect();
        let ops = [
            IoOp {
                kind: IoKind::Write,
                fd,
                offset: 0,
                buf: src.as_ptr() as *mut u8,
                len: src.len(),
                token: 1,
            },
            IoOp {
                kind: IoKind::Fsync,
                fd,
                offset: 0,
                buf: std::ptr::null_mut(),
                len: 0,
                token: 2,
            },
        ];
        let out = run(&mut e, &ops);
        assert_eq!(out[0].result, 4096);
        assert_eq!(out[1].result, -(libc::EAGAIN as i64));
        assert_eq!(std::fs::read(&t.0).unwrap(), src);
        assert_eq!(plan.stats().retries, MAX_RETRIES as u64);
    }

    #[test]
    fn nth_probability_and_path_select_ops() {
        let (t, f) = file_with(&[1u8; 8192]);
        let (_t2, f2) = file_with(&[2u8; 8192]);
        use std::os::fd::AsRawFd;
        let plan = FaultPlan::new(
            vec![
                FaultRule::new(Fault::Enospc).path(&t.0).nth(2),
                FaultRule::new(Fault::Errno(libc::EROFS))
                    .fd(f2.as_raw_fd())
                    .probability(0.5)
                    .max_hits(3),
            ],
            42,
        );
        let mut e = FaultEngine::new(threads(), plan.clone());
        let mut bufs = vec![vec![0u8; 100]; 40];
        let ops: Vec<IoOp> = bufs
            .iter_mut()
            .enumerate()
            .map(|(i, b)| {
                let fd = if i < 5 { f.as_raw_fd() } else { f2.as_raw_fd() };
                read_op(fd, i as u64, b, i as u64)
            })
            .collect();
        let out = run(&mut e, &ops);
        let enospc: Vec<u64> = out
            .iter()
            .filter(|d| d.result == -(libc::ENOSPC as i64))
            .map(|d| d.token)
            .collect();
        assert_eq!(enospc, vec![2]);
        let erofs = out
            .iter()
            .filter(|d| d.result == -(libc::EROFS as i64))
            .count();
        assert_eq!(erofs, 3, "{out:?}");
        assert!(out.iter().all(|d| d.result < 0 || d.result == 100));
        assert_eq!(plan.injected().len(), 4);
    }
}
