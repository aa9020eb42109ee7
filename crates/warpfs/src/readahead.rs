//! Stream detection for readahead: sequential and strided page streams per file.
//!
//! INTERFACE CONTRACT: `observe` is called by the daemon for every demand page access (in
//! any order, from several threads); it returns the pages worth prefetching now, if a stream
//! is detected (≥ 2 equal strides in a row), up to `window` pages ahead, never the same page
//! twice for one stream.

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

/// Per-file stream detector.
pub struct Readahead {
    _todo: (),
}

impl Readahead {
    /// A detector that prefetches up to `window` pages ahead of a stream (0 disables it),
    /// tracking up to `streams` concurrent streams.
    pub fn new(window: u32, streams: usize) -> Self {
        todo!("{window} {streams}")
    }
    /// Records a demand access to `page` of file `file_id`; returns what to prefetch.
    pub fn observe(&self, file_id: u64, page: u64) -> Option<Prefetch> {
        todo!("{file_id} {page}")
    }
}
