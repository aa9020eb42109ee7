//! Portable thread-pool engine: `pread`/`pwrite`/`fdatasync` on pool threads.
//!
//! Ops wait in one FIFO queue (the backlog: unbounded, so `submit` never blocks); `threads`
//! workers take them one at a time, run them to completion (retrying EINTR/EAGAIN and
//! continuing short transfers), and push the result onto a completion list that [`reap`]
//! drains. Page-cache copies of different ops therefore run on different cores at once, which
//! is what makes this engine the fast one for warm bulk reads (see [`crate::bulk`]).
//!
//! Cost per op: one mutex/condvar hand-off each way plus the system calls.
//!
//! [`reap`]: IoEngine::reap

use super::{is_transient, EngineConfig, IoDone, IoEngine, IoKind, IoOp, MAX_RETRIES};
use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

/// Longest single system call; larger ops are split (Linux caps one transfer at 0x7ffff000).
const MAX_CALL: usize = 1 << 30;

#[derive(Default)]
struct Queue {
    ops: VecDeque<IoOp>,
    stop: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    work: Condvar,
    done: Mutex<Vec<IoDone>>,
    finished: Condvar,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A worker never panics while holding a lock (ops are plain system calls), but if one did,
    // the data (a queue of descriptions) is still consistent: keep going.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Thread-pool engine. Dropping it waits for every submitted op to finish (their buffers may
/// be freed right after), then joins the workers.
pub struct ThreadsEngine {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
}

impl std::fmt::Debug for ThreadsEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadsEngine")
            .field("threads", &self.workers.len())
            .field("in_flight", &self.in_flight)
            .finish()
    }
}

impl ThreadsEngine {
    /// Starts `cfg.threads` workers (at least 1). `cfg.queue_depth` is not a limit here: the
    /// queue grows as needed. Cost: one thread spawn per worker.
    pub fn new(cfg: &EngineConfig) -> Self {
        let n = cfg.threads.max(1);
        let shared = Arc::new(Shared::default());
        let workers = (0..n)
            .map(|i| {
                let s = shared.clone();
                std::thread::Builder::new()
                    .name(format!("warpfs-io-{i}"))
                    .spawn(move || worker(&s))
                    .expect("cannot spawn an I/O thread: the process is out of threads or memory")
            })
            .collect();
        Self {
            shared,
            workers,
            in_flight: 0,
        }
    }

    /// Worker threads in the pool.
    pub fn threads(&self) -> usize {
        self.workers.len()
    }
}

fn worker(s: &Shared) {
    loop {
        let op = {
            let mut q = lock(&s.queue);
            loop {
                if let Some(op) = q.ops.pop_front() {
                    break op;
                }
                if q.stop {
                    return;
                }
                q = s.work.wait(q).unwrap_or_else(|p| p.into_inner());
            }
        };
        // SAFETY: the submitter promised (IoEngine::submit) that buf..buf+len stays valid and
        // unaliased and fd stays open until this op's completion is reaped, which happens only
        // after we push it below.
        let result = unsafe { execute(&op) };
        let mut d = lock(&s.done);
        d.push(IoDone {
            token: op.token,
            result,
        });
        drop(d);
        s.finished.notify_all();
    }
}

/// Runs one op synchronously to completion with the engine contract: all `len` bytes unless
/// EOF (short count) or an error (`-errno`); EINTR/EAGAIN retried; short transfers continued.
///
/// # Safety
/// `op.buf..op.buf+op.len` must be valid for writes (reads) or reads (writes), and not
/// accessed by anyone else during the call.
pub(crate) unsafe fn execute(op: &IoOp) -> i64 {
    if op.kind == IoKind::Fsync {
        let mut retries = 0;
        loop {
            // SAFETY: fdatasync/fsync take only a descriptor; a bad one yields EBADF.
            #[cfg(not(target_os = "macos"))]
            let r = unsafe { libc::fdatasync(op.fd) };
            // macOS has no fdatasync; fsync is its nearest equivalent.
            #[cfg(target_os = "macos")]
            let r = unsafe { libc::fsync(op.fd) };
            if r == 0 {
                return 0;
            }
            let e = errno();
            if is_transient(e) && retries < MAX_RETRIES {
                retries += 1;
                continue;
            }
            return -(e as i64);
        }
    }
    if op.offset > i64::MAX as u64
        || op
            .offset
            .checked_add(op.len as u64)
            .is_none_or(|end| end > i64::MAX as u64)
    {
        return -(libc::EINVAL as i64);
    }
    let mut done = 0usize;
    let mut retries = 0;
    while done < op.len {
        let n = (op.len - done).min(MAX_CALL);
        let off = (op.offset + done as u64) as libc::off_t;
        // SAFETY: buf+done..buf+done+n lies inside the caller's buffer (done + n <= len), which
        // the caller guarantees valid and exclusively ours for the call.
        let r = unsafe {
            let p = op.buf.add(done);
            match op.kind {
                IoKind::Read => libc::pread(op.fd, p.cast(), n, off),
                _ => libc::pwrite(op.fd, p.cast::<libc::c_void>().cast_const(), n, off),
            }
        };
        if r < 0 {
            let e = errno();
            if is_transient(e) && retries < MAX_RETRIES {
                retries += 1;
                continue;
            }
            return -(e as i64);
        }
        if r == 0 {
            if op.kind == IoKind::Read {
                break; // end of file: the short count is the answer
            }
            return -(libc::EIO as i64); // a write that makes no progress would spin forever
        }
        done += r as usize;
    }
    done as i64
}

fn errno() -> i32 {
    std::io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EIO)
}

impl IoEngine for ThreadsEngine {
    fn name(&self) -> &'static str {
        "threads"
    }

    unsafe fn submit(&mut self, ops: &[IoOp]) {
        if ops.is_empty() {
            return;
        }
        let mut q = lock(&self.shared.queue);
        q.ops.extend(ops.iter().copied());
        drop(q);
        self.in_flight += ops.len();
        if ops.len() == 1 {
            self.shared.work.notify_one();
        } else {
            self.shared.work.notify_all();
        }
    }

    fn reap(&mut self, out: &mut Vec<IoDone>, wait: bool) {
        if self.in_flight == 0 {
            return;
        }
        let mut d = lock(&self.shared.done);
        if wait {
            while d.is_empty() {
                d = self
                    .shared
                    .finished
                    .wait(d)
                    .unwrap_or_else(|p| p.into_inner());
            }
        }
        self.in_flight -= d.len();
        out.append(&mut d);
    }

    fn in_flight(&self) -> usize {
        self.in_flight
    }
}

impl Drop for ThreadsEngine {
    fn drop(&mut self) {
        // Workers drain the queue before they see `stop`, so every submitted op finishes
        // before the join returns: no worker touches a caller's buffer after this.
        lock(&self.shared.queue).stop = true;
        self.shared.work.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_fd_is_ebadf_and_zero_len_is_zero() {
        let mut e = ThreadsEngine::new(&EngineConfig {
            threads: 2,
            ..Default::default()
        });
        let mut b = [0u8; 8];
        let ops = [
            IoOp {
                kind: IoKind::Read,
                fd: -1,
                offset: 0,
                buf: b.as_mut_ptr(),
                len: 8,
                token: 1,
            },
            IoOp {
                kind: IoKind::Fsync,
                fd: -1,
                offset: 0,
                buf: std::ptr::null_mut(),
                len: 0,
                token: 2,
            },
            IoOp {
                kind: IoKind::Read,
                fd: -1,
                offset: 0,
                buf: b.as_mut_ptr(),
                len: 0,
                token: 3,
            },
        ];
        // SAFETY: `b` outlives the reaps below.
        unsafe { e.submit(&ops) };
        let mut out = Vec::new();
        while e.in_flight() > 0 {
            e.reap(&mut out, true);
        }
        out.sort_by_key(|d| d.token);
        let ebadf = -(libc::EBADF as i64);
        assert_eq!(
            out,
            vec![
                IoDone {
                    token: 1,
                    result: ebadf
                },
                IoDone {
                    token: 2,
                    result: ebadf
                },
                IoDone {
                    token: 3,
                    result: 0
                }
            ]
        );
    }
}
