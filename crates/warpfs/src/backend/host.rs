//! The host backend: CPU agents that post requests through the very rings a GPU uses.
//!
//! A runtime has one host [`Channel`]. Each [`Agent`] owns a lane of it: `queue_depth`
//! completion records and as many request buffers of `request_buffer` bytes in the data
//! region. An agent arms a record, writes a request into the demand ring, rings the doorbell
//! and later waits on the record (spin, then futex) — exactly the protocol of a GPU thread,
//! except that a GPU polls instead of sleeping.
//!
//! Shutdown: `post` refuses new requests once the daemon is stopping, but a request that
//! passed that check may reach its ring only after the daemon's final drain. Waits therefore
//! also watch [`Doorbell::stopped`]: once the daemon has stopped without answering, the agent
//! withdraws its own record (one CAS against any completer's claim) and reports
//! [`Error::Shutdown`], at most one sleep slice (50 ms) later, never the wait timeout.
//!
//! One shortcut a GPU cannot take: agents live in the daemon's address space, so their
//! records take cache-page references ([`Channel::set_cache_refs`]). A one-page read that
//! hits the host cache completes with `aux = page index + 1` and the page pinned; the agent
//! copies straight from the cache page into the caller's buffer and unpins it. That saves the
//! daemon a 4 KiB copy into the data region and the agent a second copy out of it.

use crate::abi::{self, WfsRequest};
use crate::cache::HostCache;
use crate::channel::Channel;
use crate::completion::Waited;
use crate::daemon::Doorbell;
use crate::error::{Error, Result};
use crate::runtime::FileHandle;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// What the lanes of a host channel share.
pub(crate) struct HostLanes {
    pub(crate) channel: Arc<Channel>,
    /// The cache whose pages completions may reference.
    pub(crate) cache: Arc<HostCache>,
    pub(crate) doorbell: Doorbell,
    pub(crate) queue_depth: usize,
    pub(crate) request_buffer: usize,
    pub(crate) timeout: Duration,
    /// `true` where a lane is taken.
    taken: Mutex<Vec<bool>>,
}

impl HostLanes {
    /// Lanes over `channel`, whose completions and data region hold `lanes × queue_depth`
    /// records and buffers.
    pub(crate) fn new(
        channel: Arc<Channel>,
        cache: Arc<HostCache>,
        doorbell: Doorbell,
        lanes: usize,
        queue_depth: usize,
        request_buffer: usize,
        timeout: Duration,
    ) -> Self {
        Self {
            channel,
            cache,
            doorbell,
            queue_depth,
            request_buffer,
            timeout,
            taken: Mutex::new(vec![false; lanes]),
        }
    }

    /// Takes a free lane for a new agent.
    pub(crate) fn agent(self: &Arc<Self>) -> Result<Agent> {
        let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
        let lane = taken.iter().position(|t| !t).ok_or_else(|| {
            Error::Config(format!(
                "all {} host agents are in use: drop one, or raise RuntimeConfig::max_agents",
                taken.len()
            ))
        })?;
        taken[lane] = true;
        let qd = self.queue_depth;
        let base = (lane * qd) as u32;
        self.channel.set_cache_refs(base..base + qd as u32, true);
        Ok(Agent {
            lanes: self.clone(),
            lane,
            base,
            free: (0..qd as u32).rev().collect(),
            pending: vec![false; qd],
            next_ticket: 1,
            #[cfg(test)]
            before_push: None,
        })
    }
}

/// A pending request of an [`Agent`].
#[derive(Debug)]
#[must_use = "wait for the ticket, or the agent waits for it when dropped"]
pub struct Ticket {
    pub(crate) slot: u32,
    pub(crate) op: u32,
    pub(crate) len: usize,
    pub(crate) offset: u64,
}

/// A host requester: owns `agent_queue_depth` completion records and request buffers.
/// `Send`, not `Sync`: one thread drives an agent at a time.
pub struct Agent {
    lanes: Arc<HostLanes>,
    lane: usize,
    base: u32,
    free: Vec<u32>,
    pending: Vec<bool>,
    next_ticket: u32,
    /// Tests: runs in `post` between the `stopping()` check and the ring push, to hold a
    /// request in that window while the runtime shuts down.
    #[cfg(test)]
    before_push: Option<Arc<dyn Fn() + Send + Sync>>,
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent").field("lane", &self.lane).finish()
    }
}

fn op_name(op: u32) -> &'static str {
    match op {
        abi::WFS_OP_READ => "read",
        abi::WFS_OP_WRITE => "write",
        abi::WFS_OP_FSYNC => "fsync",
        abi::WFS_OP_SIZE => "size",
        abi::WFS_OP_PREFETCH => "prefetch",
        _ => "request",
    }
}

impl Agent {
    /// Requests this agent may have in flight.
    pub fn queue_depth(&self) -> usize {
        self.lanes.queue_depth
    }

    /// Largest `len` one request may carry (bigger sync reads/writes are split).
    pub fn max_request(&self) -> usize {
        self.lanes.request_buffer
    }

    fn buf_offset(&self, slot: u32) -> u64 {
        (self.base + slot) as u64 * self.lanes.request_buffer as u64
    }

    fn post(
        &mut self,
        op: u32,
        file: &FileHandle,
        offset: u64,
        len: usize,
        data: Option<&[u8]>,
    ) -> Result<Ticket> {
        let carries_data = op == abi::WFS_OP_READ || op == abi::WFS_OP_WRITE;
        if carries_data && len > self.max_request() {
            return Err(Error::Range(format!(
                "a request carries at most {} bytes (RuntimeConfig::request_buffer); got {len}",
                self.max_request()
            )));
        }
        if self.lanes.doorbell.stopping() {
            return Err(Error::Shutdown);
        }
        let slot = self.free.pop().ok_or_else(|| {
            Error::Config(format!(
                "this agent already has {} requests in flight: wait for one before submitting more",
                self.queue_depth()
            ))
        })?;
        let ch = &self.lanes.channel;
        let buf = self.buf_offset(slot);
        if let Some(data) = data {
            let dst = ch
                .data_range(buf, data.len() as u64)
                .expect("agent buffers lie inside the data region");
            // SAFETY: dst is this agent's own request buffer (no request in flight uses it),
            // bounds-checked by data_range.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), dst, data.len()) };
        }
        let ticket = self.next_ticket;
        self.next_ticket = self.next_ticket.wrapping_add(1).max(1);
        let completion = self.base + slot;
        ch.completions.arm(completion, ticket);
        let req = WfsRequest {
            op,
            flags: 0,
            handle: file.handle,
            completion,
            ticket,
            reserved: 0,
            offset,
            len: len as u64,
            buf,
        };
        let ring = if op == abi::WFS_OP_PREFETCH {
            &ch.prefetch
        } else {
            &ch.demand
        };
        #[cfg(test)]
        if let Some(hook) = &self.before_push {
            hook();
        }
        if ring.push_timeout(&req, self.lanes.timeout).is_err() {
            // Nothing was published: take the record back so the slot can be reused. (Only a
            // garbage request naming this record and ticket could have completed it; drop the
            // cache pin such a completion may carry.)
            if let Some((_, aux)) = ch.completions.withdraw(completion) {
                self.unpin(aux);
            }
            self.free.push(slot);
            return Err(Error::Timeout(self.lanes.timeout));
        }
        self.lanes.doorbell.ring();
        self.pending[slot as usize] = true;
        Ok(Ticket {
            slot,
            op,
            len,
            offset,
        })
    }

    /// Waits for the record of `slot` until it is completed, the timeout passes, or the
    /// daemon has stopped without completing it (a request that reached the ring after the
    /// daemon's final drain: then the record is withdrawn, see [`Doorbell::stopped`]).
    ///
    /// [`Doorbell::stopped`]: crate::daemon::Doorbell::stopped
    fn settle(&self, slot: u32) -> Waited {
        let doorbell = &self.lanes.doorbell;
        self.lanes.channel.completions.wait_or_withdraw(
            self.base + slot,
            Some(self.lanes.timeout),
            || doorbell.stopped(),
        )
    }

    /// Waits for `t`; returns the raw result (≥ 0) and the cache-page reference (`aux`, 0 if
    /// none: then the bytes are in the slot's buffer) and keeps the slot reserved until the
    /// caller has read its buffer. A caller given a reference must [`Agent::unpin`] it.
    fn wait_raw(&mut self, t: &Ticket) -> Result<(i64, u64)> {
        match self.settle(t.slot) {
            Waited::Done(r, aux) => {
                self.pending[t.slot as usize] = false;
                if r < 0 {
                    self.unpin(aux);
                    self.free.push(t.slot);
                    Err(Error::from_result(op_name(t.op), r))
                } else {
                    Ok((r, aux))
                }
            }
            // The daemon stopped and will never answer: the record is free again.
            Waited::Withdrawn => {
                self.pending[t.slot as usize] = false;
                self.free.push(t.slot);
                Err(Error::Shutdown)
            }
            // The record stays pending: the slot is not reused (the daemon may still write it).
            Waited::TimedOut => Err(Error::Timeout(self.lanes.timeout)),
        }
    }

    /// Posts a read of `len` (≤ `max_request`) bytes. Fails at once if `queue_depth` requests
    /// are in flight.
    pub fn submit_read(&mut self, file: &FileHandle, offset: u64, len: usize) -> Result<Ticket> {
        self.post(abi::WFS_OP_READ, file, offset, len, None)
    }

    /// Posts a write of `data` (≤ `max_request` bytes); `data` is copied into the request buffer.
    pub fn submit_write(&mut self, file: &FileHandle, offset: u64, data: &[u8]) -> Result<Ticket> {
        self.post(abi::WFS_OP_WRITE, file, offset, data.len(), Some(data))
    }

    /// Waits for a read and copies its bytes into `dst` (which must hold the read's length).
    pub fn wait_read(&mut self, ticket: Ticket, dst: &mut [u8]) -> Result<usize> {
        if dst.len() < ticket.len {
            // Still wait, so the slot is not left with a request in flight.
            let _ = self.wait(ticket);
            return Err(Error::Range(
                "wait_read's destination is shorter than the read".into(),
            ));
        }
        self.wait_read_with(ticket, |bytes| {
            dst[..bytes.len()].copy_from_slice(bytes);
            bytes.len()
        })
    }

    /// Waits for a read and hands its bytes to `f` where the daemon left them — a pinned
    /// host-cache page or the request's buffer — without copying them (zero-copy; the slot
    /// and any page pin are released after `f` returns). `f`'s slice is the read's length, short
    /// at end of file. Saves [`Agent::wait_read`]'s copy: for consumers that only look at the
    /// bytes (checksums, parsing, a copy of their own elsewhere).
    pub fn wait_read_with<R>(&mut self, ticket: Ticket, f: impl FnOnce(&[u8]) -> R) -> Result<R> {
        let (r, aux) = self.wait_raw(&ticket)?;
        let n = (r as usize).min(ticket.len);
        let src = match self.page_ref(aux, ticket.offset, n) {
            Some(p) => p,
            None if aux != 0 => {
                // A reference that does not cover the read: never trust it (unreachable with
                // the daemon's checks).
                self.unpin(aux);
                self.free.push(ticket.slot);
                return Err(Error::Range(
                    "the daemon answered a read with a bad cache-page reference".into(),
                ));
            }
            None => {
                self.lanes
                    .channel
                    .data_range(self.buf_offset(ticket.slot), n as u64)
                    .expect("agent buffers lie inside the data region") as *const u8
            }
        };
        // SAFETY: either the daemon finished with this slot's buffer (completion observed with
        // Acquire) and nobody writes it until the slot is freed below, or `src` lies inside a
        // cache page pinned for us (checked by `page_ref`), which is not reused or rewritten
        // before `unpin`; n ≤ request_buffer. The slice does not outlive `f`.
        let out = f(unsafe { std::slice::from_raw_parts(src, n) });
        self.unpin(aux);
        self.free.push(ticket.slot);
        Ok(out)
    }

    /// Where `n` bytes at file `offset` lie in the cache page that `aux` references, if `aux`
    /// is a reference (page index + 1) and the bytes fit in that page.
    fn page_ref(&self, aux: u64, offset: u64, n: usize) -> Option<*const u8> {
        let idx = aux.checked_sub(1)?;
        let cache = &self.lanes.cache;
        let ps = cache.page_size();
        if idx >= cache.pages() as u64 {
            return None;
        }
        let at = (offset % ps as u64) as usize;
        if at + n > ps {
            return None;
        }
        // SAFETY: idx < pages and at + n ≤ page size: inside the arena.
        Some(unsafe { cache.page_ptr(idx as u32).add(at) } as *const u8)
    }

    /// Drops the pin of cache-page reference `aux` (nothing if 0 or out of range).
    fn unpin(&self, aux: u64) {
        if let Some(idx) = aux.checked_sub(1) {
            if idx < self.lanes.cache.pages() as u64 {
                self.lanes.cache.release(idx as u32);
            }
        }
    }

    /// Waits for any request; returns its result (bytes, size, or 0).
    pub fn wait(&mut self, ticket: Ticket) -> Result<u64> {
        let (r, aux) = self.wait_raw(&ticket)?;
        self.unpin(aux);
        self.free.push(ticket.slot);
        Ok(r as u64)
    }

    /// Reads into `buf` at `offset`; returns bytes read (short at EOF). Splits large reads
    /// into requests of `max_request` bytes, up to `queue_depth` in flight.
    pub fn read(&mut self, file: &FileHandle, offset: u64, buf: &mut [u8]) -> Result<usize> {
        let chunk = self.max_request();
        let mut done = 0usize;
        let mut queued: std::collections::VecDeque<(Ticket, usize)> = Default::default();
        let mut next = 0usize;
        let mut eof = false;
        while done < buf.len() || !queued.is_empty() {
            while !eof && next < buf.len() && queued.len() < self.queue_depth() {
                let len = chunk.min(buf.len() - next);
                let t = self.submit_read(file, offset + next as u64, len)?;
                queued.push_back((t, next));
                next += len;
            }
            let Some((t, at)) = queued.pop_front() else {
                break;
            };
            let want = t.len;
            let n = self.wait_read(t, &mut buf[at..at + want]);
            let n = match n {
                Ok(n) => n,
                Err(e) => {
                    for (t, _) in queued {
                        let _ = self.wait(t);
                    }
                    return Err(e);
                }
            };
            if !eof {
                done = at + n;
            }
            if n < want {
                eof = true;
            }
        }
        Ok(done)
    }

    /// Writes `buf` at `offset`; returns bytes written. Splits like [`Agent::read`].
    pub fn write(&mut self, file: &FileHandle, offset: u64, buf: &[u8]) -> Result<usize> {
        let chunk = self.max_request();
        let mut tickets = std::collections::VecDeque::new();
        let mut total = 0usize;
        let mut first_err = None;
        for (i, part) in buf.chunks(chunk.max(1)).enumerate() {
            if tickets.len() == self.queue_depth() {
                match self.wait(tickets.pop_front().expect("non-empty")) {
                    Ok(n) => total += n as usize,
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
            if first_err.is_some() {
                break;
            }
            tickets.push_back(self.submit_write(file, offset + (i * chunk) as u64, part)?);
        }
        for t in tickets {
            match self.wait(t) {
                Ok(n) => total += n as usize,
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(total),
        }
    }

    /// Makes acknowledged writes of `file` durable (dirty pages written back, then fdatasync).
    pub fn fsync(&mut self, file: &FileHandle) -> Result<()> {
        let t = self.post(abi::WFS_OP_FSYNC, file, 0, 0, None)?;
        self.wait(t).map(|_| ())
    }

    /// File size in bytes, as the daemon sees it.
    pub fn size(&mut self, file: &FileHandle) -> Result<u64> {
        let t = self.post(abi::WFS_OP_SIZE, file, 0, 0, None)?;
        self.wait(t)
    }

    /// Hints that `[offset, offset+len)` will be read soon (served after demand requests).
    pub fn prefetch(&mut self, file: &FileHandle, offset: u64, len: u64) -> Result<()> {
        let t = self.post(abi::WFS_OP_PREFETCH, file, offset, len as usize, None)?;
        self.wait(t).map(|_| ())
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let mut clean = true;
        for slot in 0..self.pending.len() {
            if self.pending[slot] {
                match self.settle(slot as u32) {
                    Waited::Done(_, aux) => self.unpin(aux),
                    Waited::Withdrawn => {}
                    Waited::TimedOut => clean = false,
                }
            }
        }
        if clean {
            let qd = self.lanes.queue_depth as u32;
            self.lanes
                .channel
                .set_cache_refs(self.base..self.base + qd, false);
            let mut taken = self.lanes.taken.lock().unwrap_or_else(|p| p.into_inner());
            taken[self.lane] = false;
        } else {
            tracing::warn!(
                lane = self.lane,
                "agent dropped with requests the daemon never answered; its lane is retired"
            );
        }
    }
}

#[cfg(all(test, not(loom)))]
mod tests {
    use super::{Agent, Ticket};
    use crate::cache::CacheConfig;
    use crate::{Error, OpenOptions, Runtime, RuntimeConfig};
    use std::sync::{Arc, Barrier};
    use std::time::Duration;

    fn pat(off: u64) -> u8 {
        (off ^ (off >> 8) ^ (off >> 13)).wrapping_mul(31) as u8
    }

    /// One-page reads that hit the cache come back through cache-page references: the bytes
    /// are right, and every pin is released (afterwards a lookup of every page can still
    /// evict, and the lane's records are handed back).
    #[test]
    fn cache_page_references_deliver_the_bytes_and_release_the_pins() {
        let dir = std::env::temp_dir().join(format!("warpfs-host-refs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        let len = 64 * 4096u64 + 100;
        std::fs::write(&path, (0..len).map(pat).collect::<Vec<u8>>()).unwrap();
        let rt = Runtime::new(RuntimeConfig {
            workers: 2,
            cache: CacheConfig {
                page_size: 4096,
                capacity: 16 * 4096,
            },
            readahead_pages: 0,
            max_agents: 2,
            ..RuntimeConfig::default()
        })
        .unwrap();
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let mut agent = rt.agent().unwrap();
        let mut buf = vec![0u8; 4096];
        // Pages 0..8 twice (the second pass hits), partial pages, and the short last page.
        for pass in 0..3 {
            for (off, n) in (0..8u64)
                .map(|p| (p * 4096, 4096))
                .chain([(4096 + 17, 1000), (64 * 4096, 4096)])
            {
                buf.fill(0xA5);
                let want = (len.saturating_sub(off) as usize).min(n);
                let got = agent.read(&f, off, &mut buf[..n]).unwrap();
                assert_eq!(got, want, "pass {pass}, offset {off}");
                let expect: Vec<u8> = (off..off + want as u64).map(pat).collect();
                assert_eq!(&buf[..want], &expect[..], "pass {pass}, offset {off}");
            }
        }
        let hits = rt.stats().cache.hits;
        assert!(hits >= 16, "the later passes hit the cache ({hits} hits)");
        // No pin leaked: the cache can still recycle every page.
        for p in 8..64u64 {
            let got = agent.read(&f, p * 4096, &mut buf).unwrap();
            assert_eq!(got, 4096);
            assert_eq!(buf[0], pat(p * 4096));
        }
        let before = rt.stats().cache.evictions;
        for p in 0..64u64 {
            // Multi-page reads always admit: they must be able to evict every page.
            let mut two = vec![0u8; 8192];
            let got = agent.read(&f, p * 4096, &mut two).unwrap();
            assert!(got > 0);
        }
        assert!(rt.stats().cache.evictions > before);
        drop(agent);
        // The lane came back with its records (a second and third agent fit in max_agents 2).
        let a = rt.agent().unwrap();
        let b = rt.agent().unwrap();
        drop((a, b));
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// ROBUSTNESS finding 5: an agent passes the `stopping()` check of `post`, then the whole
    /// shutdown (stop, join, flush, final drain) runs before its ring push. Runs `then` on the
    /// agent's thread with the request so posted (a pattern-checked read first proves the
    /// path). The wait timeout (20 s) only bounds a regression: then the outcome is `Timeout`.
    fn post_in_the_shutdown_window<T: Send + 'static>(
        name: &str,
        then: impl FnOnce(Agent, Ticket) -> T + Send + 'static,
    ) -> T {
        let dir =
            std::env::temp_dir().join(format!("warpfs-host-window-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        std::fs::write(&path, (0..8192u64).map(pat).collect::<Vec<u8>>()).unwrap();
        let rt = Runtime::new(RuntimeConfig {
            workers: 1,
            cache: CacheConfig {
                page_size: 4096,
                capacity: 16 * 4096,
            },
            max_agents: 1,
            agent_queue_depth: 2,
            request_buffer: 4096,
            wait_timeout: Duration::from_secs(20),
            ..RuntimeConfig::default()
        })
        .unwrap();
        let f = rt.open(&path, OpenOptions::read_only()).unwrap();
        let mut agent = rt.agent().unwrap();
        let mut buf = vec![0xA5u8; 4096];
        assert_eq!(agent.read(&f, 4096, &mut buf).unwrap(), 4096);
        assert!(buf
            .iter()
            .enumerate()
            .all(|(i, &b)| b == pat(4096 + i as u64)));
        // Two meetings: the agent is in the window; the shutdown is over.
        let window = Arc::new(Barrier::new(2));
        let w = window.clone();
        agent.before_push = Some(Arc::new(move || {
            w.wait();
            w.wait();
        }));
        let poster = std::thread::spawn(move || {
            let ticket = agent
                .submit_read(&f, 0, 4096)
                .expect("posted before the stop");
            agent.before_push = None;
            then(agent, ticket)
        });
        window.wait();
        drop(rt);
        window.wait();
        let out = poster.join().unwrap();
        let _ = std::fs::remove_dir_all(&dir);
        out
    }

    /// A wait for a request pushed after the daemon's final drain ends with `Shutdown`, not
    /// the wait timeout, and the poisoned buffer is left alone.
    #[test]
    fn a_request_pushed_after_the_final_drain_ends_with_shutdown() {
        let (outcome, buf) = post_in_the_shutdown_window("wait", |mut agent, ticket| {
            let mut buf = vec![0xA5u8; 4096];
            let outcome = agent.wait_read(ticket, &mut buf);
            (outcome, buf)
        });
        assert!(
            matches!(outcome, Err(Error::Shutdown)),
            "expected Shutdown, got {outcome:?}"
        );
        assert!(buf.iter().all(|&b| b == 0xA5), "a failed read wrote bytes");
    }

    /// An agent dropped with such a request in flight settles it and hands its lane back
    /// (a lane whose request was never answered is retired instead).
    #[test]
    fn an_agent_dropped_after_the_final_drain_hands_its_lane_back() {
        let (lanes, lane) = post_in_the_shutdown_window("drop", |agent, ticket| {
            let _ = ticket; // never waited: the agent's drop settles it
            let (lanes, lane) = (agent.lanes.clone(), agent.lane);
            drop(agent);
            (lanes, lane)
        });
        let taken = lanes.taken.lock().unwrap()[lane];
        assert!(
            !taken,
            "the lane was retired: the drop found its request unanswered"
        );
    }
}
