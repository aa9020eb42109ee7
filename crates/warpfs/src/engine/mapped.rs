//! Reads of warm files straight from a shared mapping of the page cache: a `memcpy`, no
//! system call.
//!
//! INTERFACE CONTRACT: [`MappedFile::copy`] either copies `len` bytes of the file at `offset`
//! (what `pread` would return at that moment) and returns `true`, or copies nothing usable and
//! returns `false`, and the caller reads the usual way. It never raises a signal the process
//! sees and never blocks on I/O for a file it believes cold.
//!
//! IMPLEMENTATION: the daemon serves small reads that miss a full host tier with a read of the
//! OS page cache. `preadv2(RWF_NOWAIT)` costs about 1.0 µs per 4 KiB on the development machine
//! (135 ns of it the system call); a copy from a `MAP_SHARED` mapping of the same warm file
//! costs about 0.5 µs (`bench/RESULTS.md`, session 12). Two hazards of a mapping are fenced:
//!
//! - **Truncation.** A page past the end of a file that shrank after it was mapped raises
//!   `SIGBUS` (so does an I/O error on a page fault). A process-wide handler, installed with
//!   the first mapping, recognises a fault inside a copy of this module (a thread-local pointer
//!   set around the copy): it marks the mapping broken, maps a zero page over the faulting
//!   page so the copy can finish, and returns; the copy then reports `false` and the mapping
//!   is never used again. Any other `SIGBUS` goes to the handler that was there before (Rust's
//!   stack-overflow handler, or the default action). A copy that read the zero page without
//!   faulting itself (another thread's patch) sees the broken mark, stored before the patch,
//!   when it checks after copying. Bytes of the last page past a new, shorter end of file read
//!   as zeros until the next probe (below) notices the size change: as with any mapping, a
//!   file truncated under a reader is read racily for that moment.
//! - **Cold pages.** A copy that touches a page not in the page cache waits for the disk,
//!   which `RWF_NOWAIT` would have refused. Every [`PROBE_EVERY`]-th copy of a thread is a
//!   `preadv2(RWF_NOWAIT)` instead, plus an `fstat` (the first copy of a mapping, and the first
//!   after a cold spell, too): a refusal marks the file cold, and the next [`COLD_READS`] reads
//!   go the usual way (which sends uncached reads to the engine). A file evicted from the page
//!   cache between probes costs a blocking page fault or a few.
//!
//! The handler is process-wide: a program that later installs its own `SIGBUS` handler without
//! chaining to the previous one takes these faults over (and a truncation under a copy then
//! reaches it).

use std::cell::Cell;
use std::os::fd::RawFd;
use std::ptr::NonNull;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicU32, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// One copy in this many (per thread) is a `preadv2(RWF_NOWAIT)` probe of the page cache (and
/// an `fstat`).
pub const PROBE_EVERY: u64 = 64;
/// Reads that go the usual way after a probe found the file not cached.
pub const COLD_READS: u32 = 4096;

/// A read-only `MAP_SHARED` mapping of a whole file, as long as it was when mapped.
#[derive(Debug)]
pub struct MappedFile {
    base: NonNull<u8>,
    len: usize,
    fd: RawFd,
    /// Set (before a zero page is patched in) when a copy faulted: never used again.
    broken: AtomicBool,
    /// The next copy probes (set for a new mapping and at the end of a cold spell; the others
    /// are picked by the thread's [`PROBE_TICK`], so copies share no written cache line).
    probe_next: AtomicBool,
    /// Reads left to send the usual way after a probe found the file cold.
    cold_left: AtomicU32,
}

// SAFETY: the mapping is read-only shared memory that lives until `drop`; every field else is
// atomic or immutable.
unsafe impl Send for MappedFile {}
// SAFETY: as above; concurrent copies only read the mapping.
unsafe impl Sync for MappedFile {}

impl MappedFile {
    /// Maps `fd` (opened for reading) whole, as it is `len` bytes long now; `None` for an empty
    /// file or when `mmap` fails (the caller reads the usual way). Costs one `mmap` (pages are
    /// faulted in by the copies) and, the first time in the process, a `sigaction`.
    pub fn new(fd: RawFd, len: u64) -> Option<Self> {
        let len = usize::try_from(len).ok().filter(|&l| l > 0)?;
        install_handler()?;
        Some(Self {
            base: map_shared_read_only(fd, len).ok()?,
            len,
            fd,
            broken: AtomicBool::new(false),
            // The first copy probes: a file mapped cold is seen cold at once.
            probe_next: AtomicBool::new(true),
            cold_left: AtomicU32::new(0),
        })
    }

    /// Copies `len` bytes at file offset `offset` into `dst`; `false` when the caller must read
    /// the usual way instead (range outside the mapping, mapping broken, file cold, or a probe
    /// that was not served). About 0.5 µs per warm 4 KiB.
    ///
    /// # Safety
    /// `dst..dst+len` must be valid for writes and not accessed by anyone else during the call.
    pub unsafe fn copy(&self, offset: u64, dst: *mut u8, len: usize) -> bool {
        let Some(end) = offset.checked_add(len as u64) else {
            return false;
        };
        if len == 0 || end > self.len as u64 || self.broken.load(Ordering::Acquire) {
            return false;
        }
        if self.cold_left.load(Ordering::Relaxed) > 0 {
            let was = self
                .cold_left
                .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1));
            if was == Ok(1) {
                // The cold spell is over: the next copy probes first.
                self.probe_next.store(true, Ordering::Relaxed);
            }
            return false;
        }
        let tick = PROBE_TICK.with(|t| {
            let n = t.get().wrapping_add(1);
            t.set(n);
            n
        });
        if tick.is_multiple_of(PROBE_EVERY)
            || (self.probe_next.load(Ordering::Relaxed)
                && self.probe_next.swap(false, Ordering::Relaxed))
        {
            // SAFETY: forwarded from the caller.
            return unsafe { self.probe(offset, dst, len) };
        }
        COPYING.with(|c| c.set(&self.broken));
        // The handler reads COPYING in the middle of this thread's instruction stream: without
        // these fences the compiler may move the stores around an inlined copy, or drop the
        // first as dead (seen: a build where the truncation test died of SIGBUS).
        compiler_fence(Ordering::SeqCst);
        // SAFETY: [offset, end) lies inside the mapping (checked above), which lives as long as
        // `self`; `dst` is the caller's. A fault (truncated file, I/O error) is caught by
        // `on_sigbus`, which patches the page and marks `broken`, checked below.
        unsafe {
            std::ptr::copy_nonoverlapping(self.base.as_ptr().add(offset as usize), dst, len);
        }
        compiler_fence(Ordering::SeqCst);
        COPYING.with(|c| c.set(std::ptr::null()));
        // Acquire: a zero page patched in by another thread's fault was marked before.
        !self.broken.load(Ordering::Acquire)
    }

    /// The probe: the read as `preadv2(RWF_NOWAIT)` (true if it was served whole), and the
    /// file's size (a file that shrank breaks the mapping).
    unsafe fn probe(&self, offset: u64, dst: *mut u8, len: usize) -> bool {
        // SAFETY: `st` is written by fstat before it is read.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: a valid descriptor (the file entry outlives its mapping) and out-pointer.
        if unsafe { libc::fstat(self.fd, &mut st) } != 0 || (st.st_size as u64) < self.len as u64 {
            self.broken.store(true, Ordering::Release);
            return false;
        }
        // SAFETY: `dst..dst+len` is the caller's writable buffer.
        match unsafe { super::read_nowait(self.fd, offset, dst, len) } {
            Ok(n) => n == len,
            Err(e) => {
                if e.raw_os_error() == Some(libc::EAGAIN) {
                    self.cold_left.store(COLD_READS, Ordering::Relaxed);
                }
                false
            }
        }
    }

    /// Whether a fault broke the mapping (tests).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }
}

/// Maps `len` bytes (> 0) of `fd` from offset 0 read-only and shared (pages fault in on first
/// touch); the caller unmaps it with `munmap(ptr, len)`. The descriptor may be closed after.
pub fn map_shared_read_only(fd: RawFd, len: usize) -> std::io::Result<NonNull<u8>> {
    // SAFETY: a fresh read-only shared mapping at an address the kernel picks: nothing aliases
    // it, and the result is checked.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            fd,
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    NonNull::new(p.cast()).ok_or_else(|| std::io::Error::other("mmap returned null"))
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the range `new` mapped (zero pages patched into it included).
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}

thread_local! {
    /// While this thread copies from a mapping: that mapping's broken mark (else null).
    static COPYING: Cell<*const AtomicBool> = const { Cell::new(std::ptr::null()) };
    /// This thread's copies so far (every [`PROBE_EVERY`]-th probes).
    static PROBE_TICK: Cell<u64> = const { Cell::new(0) };
}

/// The `SIGBUS` disposition before ours (set once, with the handler).
static PREVIOUS: OnceLock<Option<libc::sigaction>> = OnceLock::new();
static PAGE: AtomicUsize = AtomicUsize::new(4096);

/// Installs `on_sigbus` once per process; `None` if that failed (mappings are then not used).
fn install_handler() -> Option<()> {
    PREVIOUS
        .get_or_init(|| {
            // SAFETY: sysconf has no preconditions.
            let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
            if page > 0 {
                PAGE.store(page as usize, Ordering::Relaxed);
            }
            // SAFETY: zeroed sigaction structs are valid; sigemptyset and sigaction get valid
            // pointers; the handler is an `extern "C"` function with the SA_SIGINFO signature.
            unsafe {
                let mut sa: libc::sigaction = std::mem::zeroed();
                let mut old: libc::sigaction = std::mem::zeroed();
                sa.sa_sigaction = on_sigbus as *const () as usize;
                sa.sa_flags = libc::SA_SIGINFO | libc::SA_ONSTACK | libc::SA_NODEFER;
                libc::sigemptyset(&mut sa.sa_mask);
                (libc::sigaction(libc::SIGBUS, &sa, &mut old) == 0).then_some(old)
            }
        })
        .map(|_| ())
}

/// `SIGBUS`: inside a copy of this module, mark the mapping broken and map a zero page over the
/// faulting page (the copy finishes; its result is discarded); otherwise the previous handler.
extern "C" fn on_sigbus(sig: libc::c_int, info: *mut libc::siginfo_t, ctx: *mut libc::c_void) {
    let broken = COPYING.with(|c| c.get());
    if !broken.is_null() {
        let page = PAGE.load(Ordering::Relaxed);
        // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
        let addr = unsafe { (*info).si_addr() } as usize & !(page - 1);
        // SAFETY: `broken` points into the MappedFile being copied from, alive for the copy.
        unsafe { (*broken).store(true, Ordering::SeqCst) };
        // SAFETY: replaces one page of that mapping (the faulting address lies in it) with an
        // anonymous zero page; mmap is a plain system call, safe in a signal handler.
        let p = unsafe {
            libc::mmap(
                addr as *mut libc::c_void,
                page,
                libc::PROT_READ,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED,
                -1,
                0,
            )
        };
        if p != libc::MAP_FAILED {
            return;
        }
    }
    match PREVIOUS.get().copied().flatten() {
        Some(prev) if prev.sa_sigaction == libc::SIG_DFL || prev.sa_sigaction == libc::SIG_IGN => {
            // SAFETY: restores the previous disposition; the faulting access repeats and gets
            // the default action, as if this handler had never been installed.
            unsafe { libc::sigaction(sig, &prev, std::ptr::null_mut()) };
        }
        Some(prev) if prev.sa_flags & libc::SA_SIGINFO != 0 => {
            // SAFETY: a handler installed with SA_SIGINFO has this signature.
            let f: extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut libc::c_void) =
                unsafe { std::mem::transmute(prev.sa_sigaction) };
            f(sig, info, ctx);
        }
        Some(prev) => {
            // SAFETY: a handler installed without SA_SIGINFO takes the signal number only.
            let f: extern "C" fn(libc::c_int) = unsafe { std::mem::transmute(prev.sa_sigaction) };
            f(sig);
        }
        None => {
            let mut dfl: libc::sigaction = unsafe { std::mem::zeroed() };
            dfl.sa_sigaction = libc::SIG_DFL;
            // SAFETY: the default disposition; the access repeats and the process gets it.
            unsafe { libc::sigaction(sig, &dfl, std::ptr::null_mut()) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    fn file(name: &str, len: usize) -> (std::path::PathBuf, std::fs::File) {
        let p = std::env::temp_dir().join(format!("warpfs-mapped-{name}-{}", std::process::id()));
        let bytes: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        std::fs::File::create(&p)
            .unwrap()
            .write_all(&bytes)
            .unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        (p, f)
    }

    #[test]
    fn copies_what_the_file_holds_and_refuses_outside_it() {
        let len = 64 * 4096 + 100;
        let (p, f) = file("copy", len);
        let m = MappedFile::new(f.as_raw_fd(), len as u64).unwrap();
        let mut served = 0;
        for k in 0..300u64 {
            let off = (k * 7919) % (len as u64 - 5000);
            let mut buf = vec![0xEEu8; 5000];
            // SAFETY: `buf` is ours and 5000 bytes long.
            if unsafe { m.copy(off, buf.as_mut_ptr(), buf.len()) } {
                served += 1;
                let want: Vec<u8> = (off..off + 5000).map(|i| (i % 251) as u8).collect();
                assert!(buf == want, "wrong bytes at {off}");
            }
        }
        assert!(
            served >= 290,
            "a warm file should be served by the mapping: {served}"
        );
        let mut buf = vec![0u8; 4096];
        // SAFETY: as above.
        assert!(!unsafe { m.copy(len as u64 - 10, buf.as_mut_ptr(), 4096) });
        assert!(!unsafe { m.copy(u64::MAX - 1, buf.as_mut_ptr(), 4096) });
        assert!(MappedFile::new(f.as_raw_fd(), 0).is_none());
        std::fs::remove_file(p).unwrap();
    }

    #[test]
    fn a_file_truncated_under_the_mapping_breaks_it_without_a_signal() {
        let len = 32 * 4096;
        let (p, f) = file("trunc", len);
        let m = MappedFile::new(f.as_raw_fd(), len as u64).unwrap();
        let mut buf = vec![0u8; 4096];
        // SAFETY: `buf` is ours and 4096 bytes long.
        assert!(unsafe { m.copy(20 * 4096, buf.as_mut_ptr(), 4096) });
        f.set_len(4 * 4096).unwrap();
        // Page 20 is past the new end: the copy faults, is caught, and reports failure.
        buf.fill(0xEE);
        // SAFETY: as above.
        assert!(!unsafe { m.copy(20 * 4096, buf.as_mut_ptr(), 4096) });
        assert!(m.is_broken());
        // A broken mapping serves nothing, even inside the file.
        // SAFETY: as above.
        assert!(!unsafe { m.copy(0, buf.as_mut_ptr(), 4096) });
        drop(m);
        std::fs::remove_file(p).unwrap();
    }
}
