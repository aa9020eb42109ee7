//! DMA straight from the page cache: the file is `mmap`ed, and each window of it is pinned
//! with `cuMemHostRegister(READ_ONLY)`, copied to the device and unpinned. No CPU copy
//! touches the data, so each warm byte crosses host memory once (the DMA's read) instead of
//! three times (page cache → staging read and write, then the DMA) — the lever when host
//! memory bandwidth, not PCIe, limits several GPUs. The price is the pinning itself (page-table
//! walk and IOMMU mapping per page), which this module measures: [`window_read`] is the
//! experiment behind the decision (`examples/window_dma.rs`), not a path of [`super::CudaBulk`].
//!
//! Decision (2×H100 host, 2026-11-25, 8 GiB warm file, commit 3e2e02d, `bench/RESULTS.md`):
//! **rejected**. Pinning does not scale with threads — 4 MiB windows 7.7–8.6 GB/s, 16 MiB
//! 13.9–14.2, 64 MiB 17.5–18.2 GB/s on one GPU with 4–16 threads, 15.5 GB/s at best on two GPUs
//! — against 47–50 GB/s (one GPU) and 50–53 GB/s (two) for the staging pipeline in the same
//! process. Registration pays off only where it is reused (a pinned host cache tier).

use super::driver::{check, Context, CudaResult, DeviceBuffer, Stream};
use crate::{Error, Result};
use cudarc::driver::sys;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What a [`window_read`] did.
#[derive(Debug, Clone, Default)]
pub struct WindowReport {
    /// Bytes copied to the device.
    pub bytes: u64,
    /// Wall time of the whole read (mapping, pinning, copies, unpinning).
    pub elapsed: Duration,
    /// Time all threads together spent in `cuMemHostRegister` / `cuMemHostUnregister`.
    pub register: Duration,
}

/// A read-only shared mapping of a whole file, unmapped on drop.
struct Mapping {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is read-only and lives until drop; sharing its address between threads
// that only read through it (the driver, for pinning and DMA) is sound.
unsafe impl Send for Mapping {}
// SAFETY: as above.
unsafe impl Sync for Mapping {}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: ptr/len came from one successful mmap and are unmapped once.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

/// Reads `dst.len()` bytes of `path` from `offset` (a multiple of 4096; warm, ideally) into
/// `dst` by pinning `window`-byte windows of an `mmap` of the file and copying them with DMA,
/// `threads` threads each with its own stream, registering the next window while the last
/// one's copy runs. `window` must be a multiple of 4096.
pub fn window_read(
    ctx: &Arc<Context>,
    path: &Path,
    offset: u64,
    dst: &mut DeviceBuffer,
    window: usize,
    threads: usize,
) -> Result<WindowReport> {
    if window == 0 || !window.is_multiple_of(4096) || threads == 0 || !offset.is_multiple_of(4096) {
        return Err(Error::Config(format!(
            "window_read needs a window and offset that are multiples of 4096 and threads ≥ 1; got {window}, {offset}, {threads}"
        )));
    }
    let f = std::fs::File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        mode: "reading",
        source,
    })?;
    let size = f.metadata()?.len();
    let len = (dst.len() as u64).min(size.saturating_sub(offset)) as usize;
    if len == 0 {
        return Ok(WindowReport::default());
    }
    let t0 = Instant::now();
    // SAFETY: a fresh read-only shared mapping of a descriptor we hold; checked below.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            offset as libc::off_t,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error().into());
    }
    let map = Mapping { ptr: p.cast(), len };
    let windows = len.div_ceil(window) as u64;
    let next = AtomicU64::new(0);
    let reg_ns = AtomicU64::new(0);
    let base = dst.ptr();
    let results: Vec<CudaResult<()>> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads.min(windows as usize))
            .map(|_| {
                let (map, next, reg_ns) = (&map, &next, &reg_ns);
                s.spawn(move || -> CudaResult<()> {
                    ctx.bind()?;
                    let stream = Stream::new(ctx)?;
                    let mut pinned: Vec<(*mut u8, usize)> = Vec::with_capacity(2);
                    let unpin = |pinned: &mut Vec<(*mut u8, usize)>| -> CudaResult<()> {
                        stream.synchronize()?;
                        let t = Instant::now();
                        for (q, _) in pinned.drain(..) {
                            // SAFETY: q was registered by this thread and its copies are done.
                            check(
                                unsafe { sys::cuMemHostUnregister(q.cast()) },
                                "cuMemHostUnregister",
                            )?;
                        }
                        reg_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        Ok(())
                    };
                    loop {
                        let w = next.fetch_add(1, Ordering::Relaxed);
                        if w >= windows {
                            break;
                        }
                        let off = w as usize * window;
                        let n = window.min(map.len - off);
                        // SAFETY: off < map.len, so the window lies inside the mapping.
                        let q = unsafe { map.ptr.add(off) };
                        let t = Instant::now();
                        // SAFETY: [q, q+n) is a live read-only mapping; READ_ONLY matches it.
                        check(
                            unsafe {
                                sys::cuMemHostRegister_v2(
                                    q.cast(),
                                    n,
                                    sys::CU_MEMHOSTREGISTER_READ_ONLY,
                                )
                            },
                            "cuMemHostRegister",
                        )?;
                        reg_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                        // SAFETY: source pinned above; destination inside dst (off + n ≤ len
                        // ≤ dst.len()), which the caller lends mutably for the call.
                        check(
                            unsafe {
                                sys::cuMemcpyHtoDAsync_v2(
                                    base + off as u64,
                                    q.cast(),
                                    n,
                                    stream.raw(),
                                )
                            },
                            "cuMemcpyHtoDAsync",
                        )?;
                        pinned.push((q, n));
                        if pinned.len() == 2 {
                            // Wait for the older copy only, then unpin it.
                            let (old, _) = pinned.remove(0);
                            let keep = pinned.pop();
                            stream.synchronize()?;
                            let t = Instant::now();
                            // SAFETY: registered by this thread; the stream is drained.
                            check(
                                unsafe { sys::cuMemHostUnregister(old.cast()) },
                                "cuMemHostUnregister",
                            )?;
                            reg_ns.fetch_add(t.elapsed().as_nanos() as u64, Ordering::Relaxed);
                            pinned.extend(keep);
                        }
                    }
                    unpin(&mut pinned)
                })
            })
            .collect();
        hs.into_iter()
            .map(|h| {
                h.join().unwrap_or(Err(super::CudaError::NoDriver(
                    "window thread panicked".into(),
                )))
            })
            .collect()
    });
    for r in results {
        r?;
    }
    Ok(WindowReport {
        bytes: len as u64,
        elapsed: t0.elapsed(),
        register: Duration::from_nanos(reg_ns.load(Ordering::Relaxed)),
    })
}
