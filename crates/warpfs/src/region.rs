//! Memory regions shared between requesters and the daemon.
//!
//! A region is a block of bytes that both sides can reach: ordinary heap memory for the
//! `host` backend, pinned host memory mapped into the device for `cuda`. Rings, completion
//! records and data buffers are placed in regions; the daemon only ever writes into memory
//! that belongs to a region it was given.

use std::alloc::Layout;
#[cfg(not(target_os = "linux"))]
use std::alloc::{alloc_zeroed, dealloc};
use std::ptr::NonNull;

/// A block of memory that requesters and the daemon share.
///
/// # Safety
/// Implementors guarantee that `as_ptr()..as_ptr()+len()` stays valid, writable, zero-initialised
/// at creation and 4096-byte aligned for the region's whole lifetime, and that the region may be
/// used from any thread.
pub unsafe trait SharedMemory: Send + Sync + 'static {
    /// Start of the region in this process.
    fn as_ptr(&self) -> *mut u8;
    /// Length in bytes.
    fn len(&self) -> usize;
    /// Whether the region is empty.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Address of the region as the requesting device sees it (same as `as_ptr` on the host).
    fn device_addr(&self) -> u64 {
        self.as_ptr() as u64
    }
}

/// Alignment of every region: one page, enough for `O_DIRECT` and io_uring fixed buffers.
pub const REGION_ALIGN: usize = 4096;

/// Zeroed, page-aligned heap memory: the region type of the `host` backend.
/// Costs one allocation; the pages are touched lazily by the OS.
#[derive(Debug)]
pub struct HostMemory {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the allocation is owned exclusively by this value and accessed only through raw
// pointers whose users synchronise themselves (atomics in rings, ownership of data slices).
unsafe impl Send for HostMemory {}
// SAFETY: see `Send`; `&HostMemory` only hands out the raw pointer.
unsafe impl Sync for HostMemory {}

impl HostMemory {
    /// Allocates `len` zeroed bytes aligned to [`REGION_ALIGN`] (`len` is rounded up to a page).
    /// On Linux the memory comes from an anonymous mapping: pages are zeroed lazily on first
    /// touch, and large regions are advised to use transparent huge pages (random accesses to
    /// cache pages and request buffers then spare most TLB misses).
    pub fn new(len: usize) -> Self {
        let len = len.max(1).div_ceil(REGION_ALIGN) * REGION_ALIGN;
        #[cfg(target_os = "linux")]
        {
            // SAFETY: an anonymous private mapping has no preconditions; the result is checked.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                    -1,
                    0,
                )
            };
            if p == libc::MAP_FAILED {
                let layout = Layout::from_size_align(len, REGION_ALIGN).expect("region layout");
                std::alloc::handle_alloc_error(layout);
            }
            if len >= 4 << 20 {
                // Advice only; failure changes nothing.
                // SAFETY: [p, p+len) is the mapping just created.
                unsafe { libc::madvise(p, len, libc::MADV_HUGEPAGE) };
            }
            let ptr = NonNull::new(p.cast::<u8>()).expect("mmap never returns null on success");
            Self { ptr, len }
        }
        #[cfg(not(target_os = "linux"))]
        {
            let layout = Layout::from_size_align(len, REGION_ALIGN).expect("region layout");
            // SAFETY: layout has non-zero size.
            let ptr = unsafe { alloc_zeroed(layout) };
            let ptr = NonNull::new(ptr).unwrap_or_else(|| std::alloc::handle_alloc_error(layout));
            Self { ptr, len }
        }
    }
}

impl HostMemory {
    /// Like [`HostMemory::new`], but every page is faulted in (zeroed) now, with huge pages
    /// where the kernel gives them: for arenas that will be filled anyway (the host cache), so
    /// the first use of each page does not pay the zeroing in the middle of the I/O path.
    /// Costs the zeroing of `len` bytes up front and makes them resident.
    pub fn new_populated(len: usize) -> Self {
        let m = Self::new(len);
        #[cfg(target_os = "linux")]
        {
            // MADV_POPULATE_WRITE (Linux 5.14+) faults the range in, honouring the huge-page
            // advice given in `new`; older kernels refuse it and get one write per page.
            // SAFETY: [ptr, ptr+len) is the mapping `new` just created and we own it.
            let r =
                unsafe { libc::madvise(m.ptr.as_ptr().cast(), m.len, libc::MADV_POPULATE_WRITE) };
            if r != 0 {
                for off in (0..m.len).step_by(REGION_ALIGN) {
                    // SAFETY: off < len; the page is ours and zero; writing 0 keeps it zero.
                    unsafe { m.ptr.as_ptr().add(off).write_volatile(0) };
                }
            }
        }
        m
    }
}

impl Drop for HostMemory {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        // SAFETY: the mapping was created in `new` with exactly this start and length.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
        #[cfg(not(target_os = "linux"))]
        {
            let layout = Layout::from_size_align(self.len, REGION_ALIGN).expect("region layout");
            // SAFETY: allocated in `new` with this exact layout.
            unsafe { dealloc(self.ptr.as_ptr(), layout) }
        }
    }
}

// SAFETY: `new` allocates `len` zeroed bytes aligned to 4096, freed only on drop.
unsafe impl SharedMemory for HostMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr.as_ptr()
    }
    fn len(&self) -> usize {
        self.len
    }
}

/// Checks that `[off, off + len)` lies inside a region of `region_len` bytes, without overflow.
pub fn range_in(off: u64, len: u64, region_len: usize) -> bool {
    off.checked_add(len)
        .is_some_and(|end| end <= region_len as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_memory_is_aligned_and_zeroed() {
        let m = HostMemory::new(10_000);
        assert_eq!(m.len(), 12_288);
        assert_eq!(m.as_ptr() as usize % REGION_ALIGN, 0);
        // SAFETY: the region is len bytes long and we own it.
        let bytes = unsafe { std::slice::from_raw_parts(m.as_ptr(), m.len()) };
        assert!(bytes.iter().all(|&b| b == 0));
    }

    #[test]
    fn range_checks_reject_overflow_and_overrun() {
        assert!(range_in(0, 10, 10));
        assert!(!range_in(1, 10, 10));
        assert!(!range_in(u64::MAX, 2, 10));
        assert!(range_in(10, 0, 10));
        assert!(!range_in(11, 0, 10));
    }
}
