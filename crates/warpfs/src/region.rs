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

/// Zeroed memory backed by a sealed memfd: a region that another process can map too (a
/// [`crate::serve`] server hands its descriptor to its client). The size is sealed (the file can
/// neither shrink nor grow), so a peer holding the descriptor cannot make this side's accesses
/// fault. Costs one memfd and one shared mapping; pages are allocated on first touch.
#[cfg(target_os = "linux")]
#[derive(Debug)]
pub struct SharedFdMemory {
    fd: std::os::fd::OwnedFd,
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is owned by this value and accessed only through raw pointers whose
// users synchronise themselves (atomics in rings, ownership of data slices).
#[cfg(target_os = "linux")]
unsafe impl Send for SharedFdMemory {}
// SAFETY: see `Send`; `&SharedFdMemory` only hands out the pointer and the descriptor.
#[cfg(target_os = "linux")]
unsafe impl Sync for SharedFdMemory {}

#[cfg(target_os = "linux")]
impl SharedFdMemory {
    /// Creates a region of `len` bytes (rounded up to a page) in a new memfd named `name`
    /// (shown in `/proc/PID/fd`), seals its size and maps it.
    pub fn create(len: usize, name: &str) -> std::io::Result<Self> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let len = len.max(1).div_ceil(REGION_ALIGN) * REGION_ALIGN;
        let fd = rustix::fs::memfd_create(name, MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING)?;
        rustix::fs::ftruncate(&fd, len as u64)?;
        rustix::fs::fcntl_add_seals(&fd, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        Self::map(fd, len)
    }

    /// Maps a region that another process created (its descriptor came over a Unix socket):
    /// the whole file, which must be a non-empty multiple of 4096 bytes whose size is sealed
    /// against shrinking (else the peer could make accesses here fault).
    pub fn open(fd: std::os::fd::OwnedFd) -> std::io::Result<Self> {
        use rustix::fs::SealFlags;
        let bad =
            |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_string());
        let seals = rustix::fs::fcntl_get_seals(&fd)?;
        if !seals.contains(SealFlags::SHRINK) {
            return Err(bad("shared region is not sealed against shrinking"));
        }
        let size = rustix::fs::fstat(&fd)?.st_size;
        let len = usize::try_from(size).map_err(|_| bad("shared region size out of range"))?;
        if len == 0 || !len.is_multiple_of(REGION_ALIGN) {
            return Err(bad("shared region size is not a positive multiple of 4096"));
        }
        Self::map(fd, len)
    }

    fn map(fd: std::os::fd::OwnedFd, len: usize) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: a shared mapping of [0, len) of a file we hold open, whose size is at least
        // len and sealed against shrinking; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let ptr = NonNull::new(p.cast::<u8>()).expect("mmap never returns null on success");
        Ok(Self { fd, ptr, len })
    }

    /// The memfd, to hand to another process.
    pub fn fd(&self) -> std::os::fd::BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.fd.as_fd()
    }
}

#[cfg(target_os = "linux")]
impl Drop for SharedFdMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping was created in `map` with exactly this start and length.
        unsafe {
            libc::munmap(self.ptr.as_ptr().cast(), self.len);
        }
    }
}

// SAFETY: `map` maps `len` bytes (a multiple of 4096, page aligned by mmap) of a file created
// zeroed (ftruncate of an empty memfd) and sealed against shrinking, unmapped only on drop.
#[cfg(target_os = "linux")]
unsafe impl SharedMemory for SharedFdMemory {
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

    #[cfg(target_os = "linux")]
    #[test]
    fn shared_fd_memory_is_one_memory_seen_through_two_mappings() {
        use std::os::fd::AsFd;
        let a = SharedFdMemory::create(10_000, "warpfs-test").unwrap();
        assert_eq!(a.len(), 12_288);
        let b = SharedFdMemory::open(a.fd().as_fd().try_clone_to_owned().unwrap()).unwrap();
        assert_eq!(b.len(), a.len());
        // SAFETY: both mappings are len bytes long and live here; nothing else touches them.
        unsafe {
            assert!((0..a.len()).all(|i| *b.as_ptr().add(i) == 0));
            for i in (0..a.len()).step_by(997) {
                *a.as_ptr().add(i) = (i % 251) as u8 | 1;
            }
            for i in 0..a.len() {
                let want = if i % 997 == 0 { (i % 251) as u8 | 1 } else { 0 };
                assert_eq!(*b.as_ptr().add(i), want, "byte {i}");
            }
        }
        // The size is sealed: a peer cannot shrink it under us.
        assert!(rustix::fs::ftruncate(b.fd(), 4096).is_err());
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn shared_fd_memory_refuses_an_unsealed_file() {
        let fd = rustix::fs::memfd_create("warpfs-test", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&fd, 4096).unwrap();
        assert!(SharedFdMemory::open(fd).is_err());
    }
}
