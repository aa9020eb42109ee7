//! Stream detection for readahead: sequential and strided page streams per file.
//!
//! INTERFACE CONTRACT: `observe` is called by the daemon for every demand page access (in
//! any order, from several threads); it returns the pages worth prefetching now, if a stream
//! is detected (≥ 2 equal strides in a row), up to `window` pages ahead, never the same page
//! twice for one stream.
//!
//! IMPLEMENTATION: one table of at most `streams` streams behind a `Mutex` (a short critical
//! section: a linear scan of the table). An access is matched, in order, to a stream of its
//! file that it continues exactly (`last + stride`), to a detected stream whose already
//! prefetched range it falls in (accesses from many GPU threads arrive a little out of order),
//! to a stream it repeats or lags slightly (ignored), to the nearest undetected stream within
//! [`MAX_STRIDE`] pages behind it (its stride is learned), or else starts a new stream,
//! replacing the least recently used one. Only forward strides are detected. Prefetches are
//! not clipped to the file's length: the daemon drops pages past the end of file.

use std::sync::{Mutex, MutexGuard};

/// Largest stride, in pages, that is detected.
pub const MAX_STRIDE: u64 = 256;

/// Pages to prefetch: `count` pages `start, start+stride, …`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefetch {
    /// First page to prefetch.
    pub start: u64,
    /// Page stride (1 = sequential).
    pub stride: u64,
    /// Number of pages.
    pub count: u32,
}

/// One access stream.
#[derive(Debug, Clone, Copy)]
struct Stream {
    file: u64,
    /// Last page accessed (the furthest, once detected).
    last: u64,
    /// Stride learned from the last two accesses (0 = not known yet).
    stride: u64,
    /// Equal strides in a row (2 or more = detected).
    run: u32,
    /// First page of the stream's grid not yet handed out for prefetching.
    ahead: u64,
    /// LRU stamp.
    used: u64,
}

impl Stream {
    fn detected(&self) -> bool {
        self.run >= 2
    }
}

#[derive(Debug, Default)]
struct Table {
    streams: Vec<Stream>,
    clock: u64,
}

/// Per-file stream detector.
#[derive(Debug)]
pub struct Readahead {
    window: u32,
    max_streams: usize,
    table: Mutex<Table>,
}

impl Readahead {
    /// A detector that prefetches up to `window` pages ahead of a stream (0 disables it),
    /// tracking up to `streams` concurrent streams (at least 1).
    pub fn new(window: u32, streams: usize) -> Self {
        let max_streams = streams.max(1);
        Self {
            window,
            max_streams,
            table: Mutex::new(Table {
                streams: Vec::with_capacity(max_streams),
                clock: 0,
            }),
        }
    }

    fn table(&self) -> MutexGuard<'_, Table> {
        // Every critical section leaves the table consistent, so poisoning is harmless.
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a demand access to `page` of file `file_id`; returns what to prefetch.
    /// Costs one mutex and a scan of the stream table.
    pub fn observe(&self, file_id: u64, page: u64) -> Option<Prefetch> {
        if self.window == 0 {
            return None;
        }
        let mut t = self.table();
        t.clock += 1;
        let now = t.clock;
        let window = u64::from(self.window);
        let mine = |s: &&mut Stream| s.file == file_id;

        // 1. Exact continuation, or a jump forward inside what a detected stream prefetched.
        if let Some(s) = t.streams.iter_mut().filter(mine).find(|s| {
            (s.stride > 0 && s.last.checked_add(s.stride) == Some(page))
                || (s.detected()
                    && page > s.last
                    && page < s.ahead
                    && (page - s.last) % s.stride == 0)
        }) {
            s.used = now;
            if s.last.checked_add(s.stride) == Some(page) && !s.detected() {
                s.run += 1;
            }
            s.last = page;
            return self.top_up(s);
        }

        // 2. A repeat, or a detected stream's access arriving a little late: nothing to learn.
        if let Some(s) = t.streams.iter_mut().filter(mine).find(|s| {
            s.last == page
                || (s.detected()
                    && page < s.last
                    && s.last - page <= s.stride.saturating_mul(window))
        }) {
            s.used = now;
            return None;
        }

        // 3. The nearest undetected stream within MAX_STRIDE behind: learn a new stride.
        if let Some(s) = t
            .streams
            .iter_mut()
            .filter(mine)
            .filter(|s| !s.detected() && s.last < page && page - s.last <= MAX_STRIDE)
            .min_by_key(|s| page - s.last)
        {
            s.used = now;
            s.stride = page - s.last;
            s.run = 1;
            s.last = page;
            s.ahead = 0;
            return None;
        }

        // 4. A new stream, replacing the least recently used one when the table is full.
        let fresh = Stream {
            file: file_id,
            last: page,
            stride: 0,
            run: 0,
            ahead: 0,
            used: now,
        };
        if t.streams.len() < self.max_streams {
            t.streams.push(fresh);
        } else if let Some(lru) = t.streams.iter_mut().min_by_key(|s| s.used) {
            *lru = fresh;
        }
        None
    }

    /// For a stream that just advanced to `s.last`: the pages of its grid up to `window`
    /// strides ahead that were not handed out yet.
    fn top_up(&self, s: &mut Stream) -> Option<Prefetch> {
        if !s.detected() {
            return None;
        }
        let first = s.last.checked_add(s.stride)?;
        let start = s.ahead.max(first);
        let limit = s
            .last
            .saturating_add(s.stride.saturating_mul(u64::from(self.window)));
        if start > limit {
            return None;
        }
        let count = (limit - start) / s.stride + 1;
        let count = u32::try_from(count).unwrap_or(self.window).min(self.window);
        s.ahead = start.saturating_add(s.stride.saturating_mul(u64::from(count)));
        Some(Prefetch {
            start,
            stride: s.stride,
            count,
        })
    }
}
