//! A whole file mapped read-only into memory (`mmap`, `MAP_SHARED`), so the CPU BFS reads the
//! graph straight from the page cache without copying it.

use super::error::{GraphError, Result};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::ptr::NonNull;

/// A read-only mapping of a whole file. Costs one `mmap`; pages fault in on first touch.
///
/// The bytes are those of the file while it is mapped: a process that truncates or rewrites
/// the file meanwhile changes what is read (truncation raises SIGBUS), as with any mmap.
#[derive(Debug)]
pub struct MappedFile {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is read-only and owned by this value; sharing `&[u8]` views across
// threads is sound.
unsafe impl Send for MappedFile {}
// SAFETY: see Send; only shared reads are handed out.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps `path` read-only. An empty file maps to an empty slice.
    pub fn open(path: &Path) -> Result<Self> {
        let file = File::open(path).map_err(|e| GraphError::io("opening", path, e))?;
        let len = file
            .metadata()
            .map_err(|e| GraphError::io("reading the size of", path, e))?
            .len();
        let len = usize::try_from(len)
            .map_err(|_| GraphError::Config(format!("{} is too large to map", path.display())))?;
        if len == 0 {
            return Ok(Self {
                ptr: NonNull::dangling(),
                len: 0,
            });
        }
        let ptr = crate::engine::mapped::map_shared_read_only(file.as_raw_fd(), len)
            .map_err(|e| GraphError::io("mapping", path, e))?;
        Ok(Self { ptr, len })
    }

    /// The file's bytes (page-aligned start).
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: [ptr, ptr+len) is our live read-only mapping (or empty with a dangling,
        // aligned pointer); it outlives the borrow of self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }

    /// Advises the kernel that the mapping will be read at random (no readahead beyond the
    /// page): the BFS touches neighbour lists in no order. Advice only.
    pub fn advise_random(&self) {
        if self.len > 0 {
            // SAFETY: the range is our mapping; advice never changes its contents.
            unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_RANDOM) };
        }
    }

    /// Lets go of this process's mappings of the file's pages (`MADV_DONTNEED`): the pages stay
    /// in the OS page cache and the mapping stays valid (a later read faults them in again from
    /// the file), but dropping the page cache can now evict them, which it never does to pages
    /// a process maps. Call it before `drop_caches` when the next read must really be cold.
    /// Costs one system call, and the next touch of each page a fault.
    pub fn release_pages(&self) {
        if self.len > 0 {
            // SAFETY: the range is our read-only shared mapping of an unchanged file; dropping
            // its page-table entries keeps its contents (they are read again on access), so no
            // live `&[u8]` view sees different bytes.
            unsafe { libc::madvise(self.ptr.as_ptr().cast(), self.len, libc::MADV_DONTNEED) };
        }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        if self.len > 0 {
            // SAFETY: the mapping was created in open with this length and is unmapped once.
            unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
        }
    }
}
