//! Stream detection for readahead: sequential and strided page streams per file.
//!
//! INTERFACE CONTRACT: `observe` is called by the daemon for every demand page miss and the
//! first demand use of every page it prefetched (in any order, from several threads), as
//! Linux's readahead marker works; it returns the pages worth prefetching now, if a stream
//! is detected (≥ 2 equal strides in a row), up to `window` pages ahead, never the same page
//! twice for one stream.
//!
//! IMPLEMENTATION: one table of at most `streams` streams behind a `Mutex` (a short critical
//! section: a linear scan of the table). An access is matched, in order, to a stream of its
//! file that it continues exactly (`last + stride`), to a detected stream whose already
//! prefetched range it falls in (accesses from many GPU threads arrive a little out of order),
//! to a stream it repeats or lags slightly (ignored), to the nearest undetected stream within
//! [`MAX_STRIDE`] pages behind it (its stride is learned), or else starts a new stream,
//! replacing the least recently used undetected one (a detected one only after [`STALE`]
//! accesses unused, so random traffic cannot push out live streams). Only forward strides are detected. Prefetches are
//! not clipped to the file's length: the daemon drops pages past the end of file.

use std::sync::{Mutex, MutexGuard};

/// Largest stride, in pages, that is detected.
pub const MAX_STRIDE: u64 = 256;

/// Accesses (observed by the detector, of any file) after which an unused detected stream
/// may be replaced by a new one.
pub const STALE: u64 = 1024;

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

    /// Like [`Readahead::observe`], but gives up at once (returns `None`) if another thread is
    /// using the table: readahead is a hint, and the daemon's hot path must not queue on it.
    pub fn try_observe(&self, file_id: u64, page: u64) -> Option<Prefetch> {
        match self.table.try_lock() {
            Ok(t) => self.observe_locked(t, file_id, page),
            Err(std::sync::TryLockError::Poisoned(p)) => {
                self.observe_locked(p.into_inner(), file_id, page)
            }
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Records a demand access to `page` of file `file_id`; returns what to prefetch.
    /// Costs one mutex and a scan of the stream table.
    pub fn observe(&self, file_id: u64, page: u64) -> Option<Prefetch> {
        self.observe_locked(self.table(), file_id, page)
    }

    fn observe_locked(
        &self,
        mut t: MutexGuard<'_, Table>,
        file_id: u64,
        page: u64,
    ) -> Option<Prefetch> {
        if self.window == 0 {
            return None;
        }

        t.clock += 1;
        let now = t.clock;
        let window = u64::from(self.window);
        // One scan finds what each rule below needs, in table order: the first stream the
        // access continues (rule 1), the first it repeats or lags (rule 2), the nearest
        // undetected one behind it (rule 3) and the least recently used (rule 4). (A random
        // access, which matches nothing, costs one pass over the table, not four.)
        let (mut repeat, mut nearest): (Option<usize>, Option<(usize, u64)>) = (None, None);
        // Replacement candidates: the least recently used stream not yet detected, and the
        // least recently used detected one.
        let (mut lru_new, mut lru_live): (Option<usize>, Option<usize>) = (None, None);
        let mut continued = None;
        for (i, s) in t.streams.iter().enumerate() {
            let lru = if s.detected() {
                &mut lru_live
            } else {
                &mut lru_new
            };
            if lru.is_none_or(|l| s.used < t.streams[l].used) {
                *lru = Some(i);
            }
            if s.file != file_id {
                continue;
            }
            // 1. Exact continuation, or a jump forward inside what a detected stream prefetched.
            if (s.stride > 0 && s.last.checked_add(s.stride) == Some(page))
                || (s.detected()
                    && page > s.last
                    && page < s.ahead
                    && (page - s.last).is_multiple_of(s.stride))
            {
                continued = Some(i);
                break;
            }
            // 2. A repeat, or a detected stream's access arriving a little late.
            if repeat.is_none()
                && (s.last == page
                    || (s.detected()
                        && page < s.last
                        && s.last - page <= s.stride.saturating_mul(window)))
            {
                repeat = Some(i);
            }
            // 3. An undetected stream within MAX_STRIDE behind (the nearest, first on ties).
            if !s.detected()
                && s.last < page
                && page - s.last <= MAX_STRIDE
                && nearest.is_none_or(|(_, d)| page - s.last < d)
            {
                nearest = Some((i, page - s.last));
            }
        }

        // 1. The stream advances.
        if let Some(i) = continued {
            let s = &mut t.streams[i];
            s.used = now;
            if s.last.checked_add(s.stride) == Some(page) && !s.detected() {
                s.run += 1;
            }
            s.last = page;
            return self.top_up(s);
        }

        // 2. Nothing to learn.
        if let Some(i) = repeat {
            t.streams[i].used = now;
            return None;
        }

        // 3. Learn a new stride.
        if let Some((i, _)) = nearest {
            let s = &mut t.streams[i];
            s.used = now;
            s.stride = page - s.last;
            s.run = 1;
            s.last = page;
            s.ahead = 0;
            return None;
        }

        // 4. A new stream. In a full table it replaces the least recently used undetected
        // stream (random accesses churn those among themselves), or a detected one that has
        // gone [`STALE`] accesses unused; live streams are never pushed out by random ones.
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
        } else if let Some(i) = lru_new.or(lru_live.filter(|&i| now - t.streams[i].used > STALE)) {
            t.streams[i] = fresh;
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;

    /// Feeds `pages` of `file` and collects every prefetched page, checking none repeats.
    fn feed(ra: &Readahead, file: u64, pages: impl IntoIterator<Item = u64>) -> Vec<u64> {
        let mut out = Vec::new();
        for p in pages {
            if let Some(pf) = ra.observe(file, p) {
                assert!(pf.count >= 1 && pf.count <= ra.window, "{pf:?}");
                assert!(pf.start > p, "prefetch {pf:?} not ahead of {p}");
                out.extend((0..u64::from(pf.count)).map(|k| pf.start + k * pf.stride));
            }
        }
        let unique: BTreeSet<_> = out.iter().collect();
        assert_eq!(
            unique.len(),
            out.len(),
            "a page was prefetched twice: {out:?}"
        );
        out
    }

    #[test]
    fn sequential_stream_prefetches_each_page_once() {
        let ra = Readahead::new(8, 4);
        assert_eq!(ra.observe(1, 0), None);
        assert_eq!(ra.observe(1, 1), None, "one stride is not a stream");
        assert_eq!(
            ra.observe(1, 2),
            Some(Prefetch {
                start: 3,
                stride: 1,
                count: 8
            })
        );
        assert_eq!(
            ra.observe(1, 3),
            Some(Prefetch {
                start: 11,
                stride: 1,
                count: 1
            })
        );
        assert_eq!(
            ra.observe(1, 3),
            None,
            "a repeated access prefetches nothing"
        );
        let got = feed(&ra, 1, 4..100);
        assert_eq!(got, (12..=107).collect::<Vec<_>>());
    }

    #[test]
    fn strided_stream_and_out_of_order_accesses() {
        let ra = Readahead::new(4, 4);
        let got = feed(&ra, 7, (0..20).map(|k| 100 + 5 * k));
        // Detected at the third access (100, 105, 110); then 4 strides ahead of each access.
        assert_eq!(got, (0..4 + 17).map(|k| 115 + 5 * k).collect::<Vec<_>>());
        // Out of order inside the prefetched window: a skip and a late access keep the stream.
        let ra = Readahead::new(4, 4);
        let got = feed(&ra, 7, [0, 1, 2, 4, 3, 5, 6]);
        assert_eq!(got, (3..=10).collect::<Vec<_>>());
    }

    #[test]
    fn random_accesses_prefetch_nothing() {
        let ra = Readahead::new(16, 8);
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        for _ in 0..10_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            assert_eq!(ra.observe(3, x % 1_000_000), None);
        }
        assert!(
            ra.table().streams.len() <= 8,
            "the stream table grew past its bound"
        );
        let off = Readahead::new(0, 8);
        assert!(
            feed(&off, 1, 0..100).is_empty(),
            "window 0 disables readahead"
        );
    }

    #[test]
    fn interleaved_streams_in_one_file() {
        let ra = Readahead::new(4, 4);
        let mut a = Vec::new();
        let mut b = Vec::new();
        for k in 0..50u64 {
            if let Some(pf) = ra.observe(9, k) {
                assert_eq!(pf.stride, 1);
                a.extend(pf.start..pf.start + u64::from(pf.count));
            }
            if let Some(pf) = ra.observe(9, 10_000 + 3 * k) {
                assert_eq!(pf.stride, 3);
                b.extend((0..u64::from(pf.count)).map(|i| pf.start + 3 * i));
            }
        }
        assert_eq!(a, (3..=53).collect::<Vec<_>>());
        assert_eq!(b, (3..=53).map(|k| 10_000 + 3 * k).collect::<Vec<_>>());
        // Two streams close together (pages 0.. and 10..) are told apart too.
        let ra = Readahead::new(2, 4);
        let (mut a, mut b) = (Vec::new(), Vec::new());
        for k in 0..8u64 {
            a.extend(ra.observe(5, k).map(|pf| (pf.start, pf.count)));
            b.extend(ra.observe(5, 10 + k).map(|pf| (pf.start, pf.count)));
        }
        // (The first accesses are paired up wrongly (0 → 10), which costs one access.)
        let pages = |v: Vec<(u64, u32)>| -> Vec<u64> {
            v.into_iter()
                .flat_map(|(s, c)| s..s + u64::from(c))
                .collect()
        };
        assert_eq!(pages(a), (4..=9).collect::<Vec<_>>());
        assert_eq!(pages(b), (13..=19).collect::<Vec<_>>());
    }

    #[test]
    fn two_files_and_bounded_table() {
        let ra = Readahead::new(3, 2);
        let mut got = [Vec::new(), Vec::new()];
        for k in 0..10u64 {
            for (f, g) in got.iter_mut().enumerate() {
                if let Some(pf) = ra.observe(f as u64 + 1, k) {
                    g.extend(pf.start..pf.start + u64::from(pf.count));
                }
            }
        }
        assert_eq!(got[0], (3..=12).collect::<Vec<_>>());
        assert_eq!(got[1], got[0]);
        // A third access, in a table of two live streams, pushes neither out.
        assert_eq!(ra.observe(3, 0), None);
        assert_eq!(ra.table().streams.len(), 2);
        for f in [2, 1] {
            assert_eq!(
                ra.observe(f, 10),
                Some(Prefetch {
                    start: 13,
                    stride: 1,
                    count: 1
                }),
                "file {f}'s stream should still be live"
            );
        }
        // Once file 1's stream has gone STALE accesses unused, a new stream may replace it
        // (the least recently used of the stale ones), and file 1 starts over.
        for k in 0..=STALE {
            ra.observe(2, 11 + k);
        }
        assert_eq!(ra.observe(3, 0), None);
        assert_eq!(ra.observe(1, 11), None, "file 1's stream should be gone");
    }

    #[test]
    fn random_accesses_leave_live_streams_alone() {
        let ra = Readahead::new(4, 4);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut got = Vec::new();
        for k in 0..200u64 {
            // A sequential stream, once detected (its third access) with ten random accesses
            // (of the same file) between two of its own: more than the table holds.
            if let Some(pf) = ra.observe(1, k) {
                got.extend(pf.start..pf.start + u64::from(pf.count));
            }
            for _ in 0..if k < 2 { 0 } else { 10 } {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                assert_eq!(ra.observe(1, 1_000_000 + x % 1_000_000_000), None);
            }
        }
        assert_eq!(got, (3..=203).collect::<Vec<_>>());
    }

    #[test]
    fn concurrent_observers_never_duplicate_a_page() {
        let ra = std::sync::Arc::new(Readahead::new(8, 16));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let ra = ra.clone();
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    for k in 0..500u64 {
                        if let Some(pf) = ra.observe(t, k) {
                            out.extend(pf.start..pf.start + u64::from(pf.count));
                        }
                    }
                    out
                })
            })
            .collect();
        for t in threads {
            assert_eq!(t.join().unwrap(), (3..=507).collect::<Vec<_>>());
        }
    }
}
