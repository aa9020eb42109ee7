//! io_uring engine: batched submission, fixed buffers, retries of short transfers.
//!
//! [`submit`](IoEngine::submit) turns ops into SQEs, as many as the submission queue holds, and
//! enters the kernel once for the whole batch; ops that do not fit (or would exceed
//! `queue_depth` in flight) wait in a backlog and are pushed as completions free room.
//! A completion that is EINTR/EAGAIN or a short transfer is resubmitted for the remainder, so
//! callers see the engine contract of [`super`] (all bytes, short at EOF, or `-errno`).
//!
//! Buffers registered with [`register_buffers`](IoEngine::register_buffers) are used through
//! `READ_FIXED`/`WRITE_FIXED` (no per-op page pinning) whenever an SQE's memory lies inside one
//! registered iovec; io_uring limits each iovec to 1 GiB, so larger ranges are split.
//!
//! Note: the kernel serves a buffered read of cached data inline, inside `io_uring_enter`, in
//! the submitting thread. A batch of warm reads is therefore copied by one core; the option
//! [`UringOptions::async_min_len`] punts large ops to the kernel's io-wq workers instead.

use super::{is_transient, EngineConfig, IoDone, IoEngine, IoKind, IoOp, MAX_RETRIES};
use io_uring::{opcode, squeue, types, IoUring};
use std::collections::VecDeque;
use std::io;

/// Most bytes one SQE moves (also io_uring's limit on one registered buffer).
const MAX_SQE: usize = 1 << 30;

/// Tuning of the io_uring engine beyond [`EngineConfig`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct UringOptions {
    /// Ops of at least this many bytes get `IOSQE_ASYNC`: the kernel runs them on its io-wq
    /// worker threads instead of inline in `io_uring_enter` (0 = never). Spreads page-cache
    /// copies of large reads over cores, at the cost of a thread hand-off per op.
    pub async_min_len: usize,
    /// Most bytes one SQE moves; larger ops go as several SQEs in sequence (0 = 1 GiB, also
    /// the cap). Keep it a multiple of the `O_DIRECT` alignment when using direct descriptors.
    pub max_op_bytes: usize,
}

struct Slot {
    op: IoOp,
    /// Bytes already transferred.
    done: usize,
    retries: u32,
}

/// io_uring engine. Dropping it waits for the SQEs the kernel holds (the kernel may still be
/// writing into their buffers) before closing the ring.
pub struct UringEngine {
    ring: IoUring,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    /// Slots waiting for an SQE (new ops, retries, continuations), in order.
    backlog: VecDeque<u32>,
    /// SQEs the kernel holds (pushed and not yet completed).
    in_kernel: usize,
    /// Cap on `in_kernel`.
    depth: usize,
    /// Finished ops not yet reaped.
    done: Vec<IoDone>,
    /// Registered iovecs (start address, length), index = buffer index; sorted by start.
    fixed: Vec<(usize, usize, u16)>,
    opts: UringOptions,
    /// Bytes per SQE at most.
    max_op: usize,
    /// Scratch for CQEs being handled (reused to avoid an allocation per reap).
    cqes: Vec<(u64, i32)>,
}

impl std::fmt::Debug for UringEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UringEngine")
            .field("depth", &self.depth)
            .field("in_kernel", &self.in_kernel)
            .field("backlog", &self.backlog.len())
            .field("fixed_buffers", &self.fixed.len())
            .finish()
    }
}

impl UringEngine {
    /// Sets up a ring with `cfg.queue_depth` entries (clamped to 1..=4096 by a power of two).
    /// Cost: one `io_uring_setup` and its mmaps. Fails where io_uring is disabled.
    pub fn new(cfg: &EngineConfig) -> io::Result<Self> {
        Self::with_options(cfg, UringOptions::default())
    }

    /// Like [`UringEngine::new`] with engine-specific options.
    pub fn with_options(cfg: &EngineConfig, opts: UringOptions) -> io::Result<Self> {
        let entries = cfg.queue_depth.clamp(1, 4096).next_power_of_two();
        let ring = IoUring::builder().setup_clamp().build(entries)?;
        let depth = ring.params().sq_entries() as usize;
        Ok(Self {
            ring,
            slots: Vec::new(),
            free: Vec::new(),
            backlog: VecDeque::new(),
            in_kernel: 0,
            depth,
            done: Vec::new(),
            fixed: Vec::new(),
            opts,
            max_op: if opts.max_op_bytes == 0 {
                MAX_SQE
            } else {
                opts.max_op_bytes.min(MAX_SQE)
            },
            cqes: Vec::new(),
        })
    }

    /// Submission queue entries (the most SQEs in the kernel at once).
    pub fn depth(&self) -> usize {
        self.depth
    }

    fn alloc(&mut self, op: IoOp) -> u32 {
        let slot = Slot {
            op,
            done: 0,
            retries: 0,
        };
        match self.free.pop() {
            Some(i) => {
                self.slots[i as usize] = Some(slot);
                i
            }
            None => {
                self.slots.push(Some(slot));
                (self.slots.len() - 1) as u32
            }
        }
    }

    fn finish(&mut self, idx: u32, result: i64) {
        let slot = self.slots[idx as usize]
            .take()
            .expect("completion for a live slot");
        self.free.push(idx);
        self.done.push(IoDone {
            token: slot.op.token,
            result,
        });
    }

    /// The registered buffer holding all of `[addr, addr+len)`, if any.
    fn fixed_index(&self, addr: usize, len: usize) -> Option<u16> {
        let i = self.fixed.partition_point(|&(start, _, _)| start <= addr);
        let &(start, flen, idx) = self.fixed.get(i.checked_sub(1)?)?;
        (addr + len <= start + flen).then_some(idx)
    }

    fn sqe(&self, idx: u32) -> squeue::Entry {
        let s = self.slots[idx as usize]
            .as_ref()
            .expect("backlog names a live slot");
        let op = &s.op;
        let fd = types::Fd(op.fd);
        let entry = match op.kind {
            IoKind::Fsync => opcode::Fsync::new(fd)
                .flags(types::FsyncFlags::DATASYNC)
                .build(),
            IoKind::Read | IoKind::Write => {
                let n = (op.len - s.done).min(self.max_op);
                // Pointer arithmetic only: done < len, so buf+done is inside the buffer.
                let buf = op.buf.wrapping_add(s.done);
                let off = op.offset + s.done as u64;
                let fixed = self.fixed_index(buf as usize, n);
                let e = match (op.kind, fixed) {
                    (IoKind::Read, Some(b)) => opcode::ReadFixed::new(fd, buf, n as u32, b)
                        .offset(off)
                        .build(),
                    (IoKind::Read, None) => {
                        opcode::Read::new(fd, buf, n as u32).offset(off).build()
                    }
                    (_, Some(b)) => opcode::WriteFixed::new(fd, buf, n as u32, b)
                        .offset(off)
                        .build(),
                    (_, None) => opcode::Write::new(fd, buf, n as u32).offset(off).build(),
                };
                if self.opts.async_min_len > 0 && n >= self.opts.async_min_len {
                    e.flags(squeue::Flags::ASYNC)
                } else {
                    e
                }
            }
        };
        entry.user_data(idx as u64)
    }

    /// Moves backlog entries into the SQ (up to `depth` in the kernel) and submits them with
    /// one system call; with `wait`, also waits for one completion in the same call.
    fn push_and_submit(&mut self, wait: bool) {
        let mut pushed = 0usize;
        while self.in_kernel < self.depth {
            let Some(&idx) = self.backlog.front() else {
                break;
            };
            let e = self.sqe(idx);
            // SAFETY: the SQE points at memory the submitter guaranteed valid until the op is
            // reaped (IoEngine::submit), or at nothing (fsync); the slot stays live until its
            // completion arrives, so the buffer is not released early.
            if unsafe { self.ring.submission().push(&e) }.is_err() {
                break; // SQ full: the rest stays in the backlog
            }
            self.backlog.pop_front();
            self.in_kernel += 1;
            pushed += 1;
        }
        // Entries left unconsumed by an earlier EAGAIN/EBUSY are still in the SQ: submit them too.
        if pushed == 0 && self.ring.submission().is_empty() && !(wait && self.in_kernel > 0) {
            return;
        }
        loop {
            let r = if wait && self.in_kernel > 0 {
                self.ring.submit_and_wait(1)
            } else {
                self.ring.submit()
            };
            match r {
                Ok(_) => return,
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {
                    if !wait {
                        continue;
                    }
                    return; // a signal ended the wait: the caller loops if nothing finished
                }
                // EAGAIN/EBUSY: the kernel is short of resources or the CQ is full; the SQEs
                // stay queued and are submitted on the next call after completions are reaped.
                Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EBUSY)) => {
                    return
                }
                Err(e) => {
                    // Unexpected (e.g. EFAULT): never lose ops silently. The SQEs remain in the
                    // ring and are retried on the next submit.
                    tracing::error!(error = %e, "io_uring_enter failed; will retry");
                    return;
                }
            }
        }
    }

    /// Handles every completion in the CQ: finishes ops or queues their continuation.
    fn drain_cq(&mut self) {
        let mut cqes = std::mem::take(&mut self.cqes);
        cqes.extend(self.ring.completion().map(|c| (c.user_data(), c.result())));
        for &(ud, res) in &cqes {
            self.in_kernel -= 1;
            let idx = ud as u32;
            let s = self.slots[idx as usize]
                .as_mut()
                .expect("completion for a live slot");
            if res < 0 {
                if is_transient(-res) && s.retries < MAX_RETRIES {
                    s.retries += 1;
                    self.backlog.push_back(idx);
                } else {
                    self.finish(idx, res as i64);
                }
                continue;
            }
            match s.op.kind {
                IoKind::Fsync => self.finish(idx, 0),
                kind => {
                    let n = res as usize;
                    if n == 0 {
                        let r = if kind == IoKind::Read {
                            s.done as i64
                        } else {
                            -(libc::EIO as i64)
                        };
                        self.finish(idx, r);
                        continue;
                    }
                    s.done += n;
                    if s.done >= s.op.len {
                        let r = s.done as i64;
                        self.finish(idx, r);
                    } else {
                        self.backlog.push_back(idx); // short transfer: resubmit the remainder
                    }
                }
            }
        }
        cqes.clear();
        self.cqes = cqes;
    }
}

impl IoEngine for UringEngine {
    fn name(&self) -> &'static str {
        "uring"
    }

    unsafe fn submit(&mut self, ops: &[IoOp]) {
        for op in ops {
            let too_far = op
                .offset
                .checked_add(op.len as u64)
                .is_none_or(|end| end > i64::MAX as u64);
            if op.kind != IoKind::Fsync && too_far {
                self.done.push(IoDone {
                    token: op.token,
                    result: -(libc::EINVAL as i64),
                });
            } else if op.kind != IoKind::Fsync && op.len == 0 {
                self.done.push(IoDone {
                    token: op.token,
                    result: 0,
                });
            } else {
                let idx = self.alloc(*op);
                self.backlog.push_back(idx);
            }
        }
        self.push_and_submit(false);
    }

    fn reap(&mut self, out: &mut Vec<IoDone>, wait: bool) {
        loop {
            self.drain_cq();
            self.push_and_submit(false);
            if !self.done.is_empty() || !wait || (self.in_kernel == 0 && self.backlog.is_empty()) {
                break;
            }
            self.push_and_submit(true);
        }
        out.append(&mut self.done);
    }

    fn in_flight(&self) -> usize {
        self.slots.len() - self.free.len() + self.done.len()
    }

    unsafe fn register_buffers(&mut self, ranges: &[(*mut u8, usize)]) -> io::Result<()> {
        if self.slots.len() > self.free.len() {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                "cannot register buffers while ops are in flight: reap them all first",
            ));
        }
        if !self.fixed.is_empty() {
            self.ring.submitter().unregister_buffers()?;
            self.fixed.clear();
        }
        let mut iov = Vec::new();
        for &(p, len) in ranges {
            let mut at = 0;
            while at < len {
                let n = (len - at).min(MAX_SQE);
                iov.push(libc::iovec {
                    iov_base: p.wrapping_add(at).cast(),
                    iov_len: n,
                });
                at += n;
            }
        }
        if iov.is_empty() {
            return Ok(());
        }
        if iov.len() > u16::MAX as usize {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "too many buffer ranges (more than 65535 GiB-sized pieces)",
            ));
        }
        // SAFETY: the caller guarantees the ranges stay valid until the engine is dropped (or
        // re-registers), which is what the kernel needs of registered buffers.
        unsafe { self.ring.submitter().register_buffers(&iov)? };
        self.fixed = iov
            .iter()
            .enumerate()
            .map(|(i, v)| (v.iov_base as usize, v.iov_len, i as u16))
            .collect();
        self.fixed.sort_by_key(|f| f.0);
        Ok(())
    }
}

impl Drop for UringEngine {
    fn drop(&mut self) {
        // The kernel may still write into buffers of SQEs it holds; wait for them. Backlogged
        // ops never reached the kernel and are simply forgotten.
        self.backlog.clear();
        while self.in_kernel > 0 {
            match self.ring.submit_and_wait(1) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::EINTR) => {}
                Err(_) => break,
            }
            let n = self.ring.completion().count();
            self.in_kernel -= n.min(self.in_kernel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fixed_lookup_needs_the_whole_range_inside_one_iovec() {
        let Ok(mut e) = UringEngine::new(&EngineConfig::default()) else {
            eprintln!("io_uring unavailable here: skipping");
            return;
        };
        e.fixed = vec![(4096, 8192, 0), (1 << 20, 4096, 1)];
        assert_eq!(e.fixed_index(4096, 8192), Some(0));
        assert_eq!(e.fixed_index(8192, 100), Some(0));
        assert_eq!(e.fixed_index(8192, 8192), None);
        assert_eq!(e.fixed_index(0, 10), None);
        assert_eq!(e.fixed_index((1 << 20) + 1, 4095), Some(1));
        assert_eq!(e.fixed_index((1 << 20) + 1, 4096), None);
        e.fixed.clear();
    }
}
