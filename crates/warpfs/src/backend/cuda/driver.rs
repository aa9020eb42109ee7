//! Thin safe wrappers over the CUDA driver API (through `cudarc::driver::sys`), in cudarc's
//! sys → result → safe style: every raw call goes through [`check`], every handle is an RAII
//! type that frees itself on drop.
//!
//! Contract of this module: a handle is only used while its [`Context`] is alive (each type
//! holds an `Arc<Context>`), and a thread binds the context ([`Context::bind`]) before its first
//! call. The CUDA driver allows handles to be used from any thread once the owning context is
//! current there, so the wrappers are `Send`; none are `Sync` unless stated.

use cudarc::driver::sys;
use std::ffi::c_void;
use std::sync::{Arc, OnceLock};

/// A failed CUDA driver call, or no driver at all.
#[derive(Debug, thiserror::Error)]
pub enum CudaError {
    /// `libcuda` could not be loaded or `cuInit` failed: this machine has no usable GPU driver.
    #[error("no usable CUDA driver on this machine ({0}); install the NVIDIA driver or build without the `cuda` feature")]
    NoDriver(String),
    /// Host memory for pinned buffers could not be mapped.
    #[error("could not map host memory for pinned staging buffers ({0}); use fewer threads, buffers or smaller chunks")]
    HostMemory(String),
    /// A driver call returned an error code.
    #[error("CUDA driver call {call} failed: {code:?}")]
    Driver {
        /// The driver function that failed.
        call: &'static str,
        /// Its result code.
        code: sys::CUresult,
    },
}

impl From<CudaError> for crate::Error {
    fn from(e: CudaError) -> Self {
        match e {
            CudaError::NoDriver(_) => crate::Error::Config(e.to_string()),
            CudaError::Driver { .. } | CudaError::HostMemory(_) => {
                crate::Error::Io(std::io::Error::other(e))
            }
        }
    }
}

/// Result of a driver wrapper.
pub type CudaResult<T> = std::result::Result<T, CudaError>;

/// Turns a raw result code into a `Result`, naming the call.
#[inline]
pub fn check(code: sys::CUresult, call: &'static str) -> CudaResult<()> {
    if code == sys::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(CudaError::Driver { call, code })
    }
}

/// Whether a CUDA driver library can be loaded and initialised, with at least one device.
/// Costs one `dlopen` and `cuInit` the first time; cached afterwards. Every GPU code path must
/// check this first: with no library, every driver call would panic.
pub fn available() -> bool {
    init().is_ok()
}

/// Loads and initialises the driver once; the error says why it is unusable.
pub fn init() -> CudaResult<()> {
    static INIT: OnceLock<Result<(), String>> = OnceLock::new();
    INIT.get_or_init(|| {
        // SAFETY: is_culib_present only tries to dlopen the library and drops the handle.
        if !unsafe { sys::is_culib_present() } {
            return Err("libcuda not found".into());
        }
        // SAFETY: the library is present, so the symbol lookup behind cuInit succeeds; cuInit(0)
        // is the documented first call and is idempotent.
        check(unsafe { sys::cuInit(0) }, "cuInit").map_err(|e| e.to_string())?;
        let mut n = 0;
        // SAFETY: n is a valid out pointer.
        check(unsafe { sys::cuDeviceGetCount(&mut n) }, "cuDeviceGetCount")
            .map_err(|e| e.to_string())?;
        if n < 1 {
            return Err("the driver reports no CUDA device".into());
        }
        Ok(())
    })
    .clone()
    .map_err(CudaError::NoDriver)
}

/// The primary context of one device, retained for the life of this value.
#[derive(Debug)]
pub struct Context {
    ctx: sys::CUcontext,
    dev: sys::CUdevice,
    ordinal: usize,
    name: String,
}

// SAFETY: a CUDA context handle may be made current on, and used from, any thread; the driver
// serialises what needs serialising internally.
unsafe impl Send for Context {}
// SAFETY: as above; &Context only exposes bind() and plain data.
unsafe impl Sync for Context {}

impl Context {
    /// Retains device `ordinal`'s primary context (shared with the runtime API and other
    /// libraries, e.g. PyTorch) and binds it to the calling thread. Costs tens of ms the first
    /// time per process (context creation).
    pub fn new(ordinal: usize) -> CudaResult<Arc<Self>> {
        init()?;
        let mut dev = 0;
        // SAFETY: the driver is initialised; dev is a valid out pointer.
        check(
            unsafe { sys::cuDeviceGet(&mut dev, ordinal as i32) },
            "cuDeviceGet",
        )?;
        let mut ctx = std::ptr::null_mut();
        {
            // Retain and count under one lock, so `recover::recover_device` (which resets the
            // context under it when the count is 0) never resets a context someone retained.
            let mut live = live_contexts_lock();
            // SAFETY: dev is a valid device; ctx is a valid out pointer.
            check(
                unsafe { sys::cuDevicePrimaryCtxRetain(&mut ctx, dev) },
                "cuDevicePrimaryCtxRetain",
            )?;
            live_contexts_add(&mut live, ordinal, 1);
        }
        let mut buf = [0i8; 128];
        // SAFETY: buf has 128 bytes, the length we pass.
        let name = match check(
            unsafe { sys::cuDeviceGetName(buf.as_mut_ptr(), 128, dev) },
            "cuDeviceGetName",
        ) {
            // SAFETY: cuDeviceGetName wrote a NUL-terminated string into buf.
            Ok(()) => unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
                .to_string_lossy()
                .into_owned(),
            Err(_) => String::from("unknown"),
        };
        let c = Arc::new(Self {
            ctx,
            dev,
            ordinal,
            name,
        });
        c.bind()?;
        Ok(c)
    }

    /// The context's sticky error, if a kernel of it faulted (`__trap()`, an illegal address):
    /// `Ok(())` while it is healthy (kernels may still be running), else the error every later
    /// call of the context returns. Never blocks (`cuStreamQuery` on the legacy default
    /// stream); costs ~1 µs. Recover with [`super::recover::recover_device`].
    pub fn health(&self) -> CudaResult<()> {
        self.bind()?;
        // SAFETY: the context is current; the null stream is its legacy default stream.
        match unsafe { sys::cuStreamQuery(std::ptr::null_mut()) } {
            sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_NOT_READY => Ok(()),
            code => Err(CudaError::Driver {
                call: "cuStreamQuery",
                code,
            }),
        }
    }

    /// Free and total bytes of the device's memory (`cuMemGetInfo`: the whole device, other
    /// processes included). Costs a few µs.
    pub fn mem_info(&self) -> CudaResult<(usize, usize)> {
        self.bind()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: the context is current; both are valid out pointers.
        check(
            unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) },
            "cuMemGetInfo",
        )?;
        Ok((free, total))
    }

    /// Makes this context current on the calling thread. Cheap (a thread-local store).
    pub fn bind(&self) -> CudaResult<()> {
        // SAFETY: ctx is a retained, live primary context.
        check(unsafe { sys::cuCtxSetCurrent(self.ctx) }, "cuCtxSetCurrent")
    }

    /// The device ordinal.
    pub fn ordinal(&self) -> usize {
        self.ordinal
    }

    /// The driver's device handle.
    pub fn device(&self) -> sys::CUdevice {
        self.dev
    }

    /// The device's name, e.g. "NVIDIA H100 80GB HBM3".
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Waits for all work of this context (all streams) to finish.
    pub fn synchronize(&self) -> CudaResult<()> {
        self.bind()?;
        // SAFETY: the context is current on this thread.
        check(unsafe { sys::cuCtxSynchronize() }, "cuCtxSynchronize")
    }
}

impl Drop for Context {
    fn drop(&mut self) {
        let mut live = live_contexts_lock();
        // SAFETY: cur is a valid out pointer; unbinding (null) is always allowed. Then: we
        // retained this device's primary context once in new(); release it once.
        unsafe {
            // A thread that keeps a released (possibly dead, soon reset) context current gets
            // its sticky error back from later driver calls: unbind it from this thread.
            let mut cur = std::ptr::null_mut();
            if sys::cuCtxGetCurrent(&mut cur) == sys::CUresult::CUDA_SUCCESS && cur == self.ctx {
                sys::cuCtxSetCurrent(std::ptr::null_mut());
            }
            sys::cuDevicePrimaryCtxRelease_v2(self.dev);
        }
        // Released and counted under one lock: a count of 0 means no warpfs retain is left.
        live_contexts_add(&mut live, self.ordinal, -1);
    }
}

/// Live [`Context`] values per device ordinal (each one retain of the primary context).
static LIVE_CONTEXTS: std::sync::Mutex<Vec<usize>> = std::sync::Mutex::new(Vec::new());

/// The per-ordinal counts of live [`Context`] values, locked: held across a retain, a release
/// or a reset of a primary context so that the count and the driver's state agree.
pub(crate) fn live_contexts_lock() -> std::sync::MutexGuard<'static, Vec<usize>> {
    LIVE_CONTEXTS.lock().unwrap_or_else(|p| p.into_inner())
}

fn live_contexts_add(live: &mut Vec<usize>, ordinal: usize, delta: isize) {
    if live.len() <= ordinal {
        live.resize(ordinal + 1, 0);
    }
    live[ordinal] = live[ordinal].saturating_add_signed(delta);
}

/// How many [`Context`] values of device `ordinal` are alive in this process. Every warpfs
/// handle of a device (a `GpuIo`, a module, a device or pinned buffer, a channel the daemon
/// still holds) keeps one alive, so 0 means warpfs no longer uses the device's primary context.
/// Costs one uncontended lock.
pub fn live_contexts(ordinal: usize) -> usize {
    live_contexts_lock().get(ordinal).copied().unwrap_or(0)
}

/// A non-blocking stream (does not synchronise with the legacy default stream).
#[derive(Debug)]
pub struct Stream {
    raw: sys::CUstream,
    ctx: Arc<Context>,
}

// SAFETY: a stream handle may be used from any thread where its context is current; callers of
// the methods below bind the context first.
unsafe impl Send for Stream {}
// SAFETY: the driver API is thread-safe: several threads may enqueue work on, record events on
// and synchronise one stream at once (work is ordered by enqueue time). &Stream exposes only
// those operations.
unsafe impl Sync for Stream {}

impl Stream {
    /// Creates a stream in `ctx`. Costs a few µs.
    pub fn new(ctx: &Arc<Context>) -> CudaResult<Self> {
        ctx.bind()?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: the context is current; raw is a valid out pointer.
        check(
            unsafe {
                sys::cuStreamCreate(&mut raw, sys::CUstream_flags::CU_STREAM_NON_BLOCKING as u32)
            },
            "cuStreamCreate",
        )?;
        Ok(Self {
            raw,
            ctx: ctx.clone(),
        })
    }

    /// The raw handle (for interop with other CUDA code).
    pub fn raw(&self) -> sys::CUstream {
        self.raw
    }

    /// Blocks until every operation queued on this stream has finished.
    pub fn synchronize(&self) -> CudaResult<()> {
        // SAFETY: raw is a live stream of a live context.
        check(
            unsafe { sys::cuStreamSynchronize(self.raw) },
            "cuStreamSynchronize",
        )
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let _ = self.ctx.bind();
        // SAFETY: raw is a live stream we created; queued work still completes after destroy.
        unsafe {
            sys::cuStreamDestroy_v2(self.raw);
        }
    }
}

/// An event without timing (the cheapest kind), used to learn when a copy finished.
#[derive(Debug)]
pub struct Event {
    raw: sys::CUevent,
    ctx: Arc<Context>,
}

// SAFETY: as for Stream.
unsafe impl Send for Event {}

impl Event {
    /// Creates an event (timing disabled). Costs a few µs.
    pub fn new(ctx: &Arc<Context>) -> CudaResult<Self> {
        ctx.bind()?;
        let mut raw = std::ptr::null_mut();
        // SAFETY: the context is current; raw is a valid out pointer.
        check(
            unsafe {
                sys::cuEventCreate(&mut raw, sys::CUevent_flags::CU_EVENT_DISABLE_TIMING as u32)
            },
            "cuEventCreate",
        )?;
        Ok(Self {
            raw,
            ctx: ctx.clone(),
        })
    }

    /// Records the event at the current end of `stream`.
    pub fn record(&self, stream: &Stream) -> CudaResult<()> {
        // SAFETY: both handles are live and belong to the same context.
        check(
            unsafe { sys::cuEventRecord(self.raw, stream.raw) },
            "cuEventRecord",
        )
    }

    /// Blocks until the work captured by the last `record` has finished.
    pub fn synchronize(&self) -> CudaResult<()> {
        // SAFETY: raw is a live event.
        check(
            unsafe { sys::cuEventSynchronize(self.raw) },
            "cuEventSynchronize",
        )
    }

    /// Whether the recorded work has finished, without blocking.
    pub fn is_done(&self) -> CudaResult<bool> {
        // SAFETY: raw is a live event.
        match unsafe { sys::cuEventQuery(self.raw) } {
            sys::CUresult::CUDA_SUCCESS => Ok(true),
            sys::CUresult::CUDA_ERROR_NOT_READY => Ok(false),
            code => Err(CudaError::Driver {
                call: "cuEventQuery",
                code,
            }),
        }
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let _ = self.ctx.bind();
        // SAFETY: raw is a live event we created.
        unsafe {
            sys::cuEventDestroy_v2(self.raw);
        }
    }
}

/// Device memory from `cuMemAlloc`, freed on drop. Contents are uninitialised until written.
#[derive(Debug)]
pub struct DeviceBuffer {
    ptr: sys::CUdeviceptr,
    len: usize,
    ctx: Arc<Context>,
}

// SAFETY: a device pointer is just an address in the context's address space, valid from any
// thread that binds the context.
unsafe impl Send for DeviceBuffer {}
// SAFETY: &DeviceBuffer only allows reads of device memory (copies out) and plain data.
unsafe impl Sync for DeviceBuffer {}

impl DeviceBuffer {
    /// Allocates `len` bytes of device memory (at least 1 byte is reserved). Costs µs to ms.
    pub fn new(ctx: &Arc<Context>, len: usize) -> CudaResult<Self> {
        ctx.bind()?;
        let mut ptr = 0;
        // SAFETY: the context is current; ptr is a valid out pointer.
        check(
            unsafe { sys::cuMemAlloc_v2(&mut ptr, len.max(1)) },
            "cuMemAlloc",
        )?;
        Ok(Self {
            ptr,
            len,
            ctx: ctx.clone(),
        })
    }

    /// The device address of byte 0.
    pub fn ptr(&self) -> sys::CUdeviceptr {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is 0 bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The context the memory belongs to.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }

    /// Sets every byte to `value` and waits. Costs one memset at device bandwidth.
    pub fn fill(&mut self, value: u8) -> CudaResult<()> {
        self.ctx.bind()?;
        // SAFETY: [ptr, ptr+len) is our allocation; the synchronous memset completes before return.
        check(
            unsafe { sys::cuMemsetD8_v2(self.ptr, value, self.len) },
            "cuMemsetD8",
        )?;
        self.ctx.synchronize()
    }

    /// Copies `dst.len()` bytes starting at byte `offset` to host memory (synchronous; pageable
    /// memory runs at ~7 GB/s). Panics if the range is outside the buffer.
    pub fn copy_to_host(&self, offset: usize, dst: &mut [u8]) -> CudaResult<()> {
        assert!(
            offset.checked_add(dst.len()).is_some_and(|e| e <= self.len),
            "range outside the device buffer"
        );
        if dst.is_empty() {
            return Ok(());
        }
        self.ctx.bind()?;
        // SAFETY: the source range lies inside our allocation (asserted) and dst is a valid,
        // exclusively borrowed host slice of the same length; the copy is synchronous.
        check(
            unsafe {
                sys::cuMemcpyDtoH_v2(dst.as_mut_ptr().cast(), self.ptr + offset as u64, dst.len())
            },
            "cuMemcpyDtoH",
        )
    }

    /// Copies the wire record `record` (an `abi` type kernels read) into the buffer at byte
    /// `offset` (synchronous). Panics if it does not fit.
    ///
    /// # Safety
    /// `T` must be a `#[repr(C)]` record of integers with no padding bytes (every `abi` record
    /// is; the layout tests say so), so all of its bytes are initialised.
    pub unsafe fn copy_record_from_host<T: Copy>(
        &mut self,
        offset: usize,
        record: &T,
    ) -> CudaResult<()> {
        // SAFETY: per the caller, every byte of `*record` is initialised; the slice covers
        // exactly the value and lives as long as the borrow.
        let bytes = unsafe {
            std::slice::from_raw_parts((record as *const T).cast::<u8>(), core::mem::size_of::<T>())
        };
        self.copy_from_host(offset, bytes)
    }

    /// Copies `src` into the buffer at byte `offset` (synchronous). Panics if it does not fit.
    pub fn copy_from_host(&mut self, offset: usize, src: &[u8]) -> CudaResult<()> {
        assert!(
            offset.checked_add(src.len()).is_some_and(|e| e <= self.len),
            "range outside the device buffer"
        );
        if src.is_empty() {
            return Ok(());
        }
        self.ctx.bind()?;
        // SAFETY: the destination range lies inside our allocation (asserted); src is a valid
        // host slice; the copy is synchronous.
        check(
            unsafe {
                sys::cuMemcpyHtoD_v2(self.ptr + offset as u64, src.as_ptr().cast(), src.len())
            },
            "cuMemcpyHtoD",
        )
    }
}

impl Drop for DeviceBuffer {
    fn drop(&mut self) {
        let _ = self.ctx.bind();
        // SAFETY: ptr came from cuMemAlloc and is freed once; cuMemFree waits for pending work.
        unsafe {
            sys::cuMemFree_v2(self.ptr);
        }
    }
}

/// Page-locked host memory from `cuMemHostAlloc(PORTABLE | DEVICEMAP)`: cached (not
/// write-combined, so the CPU reads it at full speed), DMA-able at full PCIe speed, page aligned,
/// mapped into the device's address space. Allocation is slow (pinning: ~ms per 100 MiB), so
/// allocate once and reuse.
///
/// [`PinnedBuffer::new_huge`] instead maps anonymous memory backed by transparent huge pages
/// and registers it with `cuMemHostRegister(PORTABLE | DEVICEMAP)`: same uses, fewer TLB
/// entries for the CPU copies into it.
#[derive(Debug)]
pub struct PinnedBuffer {
    ptr: *mut u8,
    len: usize,
    /// `Some(mapped length)` for mmap'd + registered memory, `None` for `cuMemHostAlloc`.
    mapped: Option<usize>,
    ctx: Arc<Context>,
}

// SAFETY: the memory is ordinary host memory owned by this value; moving the owner between
// threads is fine. Concurrent access is governed by &/&mut as for a Vec.
unsafe impl Send for PinnedBuffer {}
// SAFETY: &PinnedBuffer gives only shared (read) access.
unsafe impl Sync for PinnedBuffer {}

impl PinnedBuffer {
    /// Allocates `len` bytes (at least one page) of pinned, mapped host memory.
    pub fn new(ctx: &Arc<Context>, len: usize) -> CudaResult<Self> {
        ctx.bind()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: the context is current; p is a valid out pointer.
        check(
            unsafe { sys::cuMemHostAlloc(&mut p, len.max(4096), flags) },
            "cuMemHostAlloc",
        )?;
        Ok(Self {
            ptr: p.cast(),
            len,
            mapped: None,
            ctx: ctx.clone(),
        })
    }

    /// Allocates `len` bytes of pinned, mapped host memory on 2 MiB transparent huge pages
    /// (`mmap` + `MADV_HUGEPAGE`, every page touched, then `cuMemHostRegister`). Where the
    /// kernel gives no huge pages the memory is still pinned and correct, on 4 KiB pages.
    pub fn new_huge(ctx: &Arc<Context>, len: usize) -> CudaResult<Self> {
        const HUGE: usize = 2 << 20;
        let map_len = len.max(1).div_ceil(HUGE) * HUGE;
        // Over-map by one huge page so the buffer can start on a 2 MiB boundary.
        let raw_len = map_len + HUGE;
        // SAFETY: anonymous private mapping with no address hint; checked for MAP_FAILED.
        let raw = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                raw_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if raw == libc::MAP_FAILED {
            return Err(CudaError::HostMemory(format!(
                "mmap of {raw_len} bytes: {}",
                std::io::Error::last_os_error()
            )));
        }
        let start = (raw as usize).div_ceil(HUGE) * HUGE;
        let head = start - raw as usize;
        let tail = raw_len - head - map_len;
        // SAFETY: [raw, start) and [start + map_len, raw + raw_len) lie inside the mapping
        // made above and are not used; unmapping them leaves [start, start + map_len).
        unsafe {
            if head > 0 {
                libc::munmap(raw, head);
            }
            if tail > 0 {
                libc::munmap((start + map_len) as *mut c_void, tail);
            }
        }
        let p = start as *mut u8;
        // SAFETY: [p, p + map_len) is our mapping. madvise is advisory; the writes fault every
        // page in (as huge pages where the kernel can) before pinning.
        unsafe {
            libc::madvise(p.cast(), map_len, libc::MADV_HUGEPAGE);
            let mut o = 0;
            while o < map_len {
                p.add(o).write_volatile(0);
                o += 4096;
            }
        }
        let unmap = || {
            // SAFETY: the mapping made above, unmapped once on this error path.
            unsafe { libc::munmap(p.cast(), map_len) };
        };
        if let Err(e) = ctx.bind() {
            unmap();
            return Err(e);
        }
        let flags = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
        // SAFETY: [p, p + map_len) is a live, page-aligned mapping owned by us; the context is
        // current.
        if let Err(e) = check(
            unsafe { sys::cuMemHostRegister_v2(p.cast(), map_len, flags) },
            "cuMemHostRegister",
        ) {
            unmap();
            return Err(e);
        }
        Ok(Self {
            ptr: p,
            len,
            mapped: Some(map_len),
            ctx: ctx.clone(),
        })
    }

    /// Base address (page aligned).
    pub fn as_ptr(&self) -> *const u8 {
        self.ptr
    }

    /// Mutable base address.
    pub fn as_mut_ptr(&mut self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the buffer is 0 bytes long.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contents as a slice.
    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: ptr is a live allocation of len bytes owned by self; no &mut exists while &self does.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    /// The contents as a mutable slice. Do not write while a DMA from it is in flight.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: ptr is a live allocation of len bytes exclusively borrowed through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for PinnedBuffer {
    fn drop(&mut self) {
        let _ = self.ctx.bind();
        match self.mapped {
            // SAFETY: ptr came from cuMemHostAlloc and is freed once; owners wait for DMA
            // before drop.
            None => unsafe {
                sys::cuMemFreeHost(self.ptr.cast());
            },
            // SAFETY: ptr..ptr+n is our mapping, registered once in new_huge; unregistered and
            // unmapped once; owners wait for DMA before drop.
            Some(n) => unsafe {
                sys::cuMemHostUnregister(self.ptr.cast());
                libc::munmap(self.ptr.cast(), n);
            },
        }
    }
}

/// Queues a host→device copy of `len` bytes on `stream`.
///
/// # Safety
/// `src..src+len` must be pinned host memory that stays untouched until the copy finishes
/// (learn that with an [`Event`]); `dst..dst+len` must be device memory of the stream's context
/// that nothing else uses meanwhile.
pub unsafe fn copy_htod_async(
    dst: sys::CUdeviceptr,
    src: *const u8,
    len: usize,
    stream: &Stream,
) -> CudaResult<()> {
    // SAFETY: forwarded to the caller's contract.
    check(
        unsafe { sys::cuMemcpyHtoDAsync_v2(dst, src.cast(), len, stream.raw) },
        "cuMemcpyHtoDAsync",
    )
}

/// Queues a device→host copy of `len` bytes on `stream`.
///
/// # Safety
/// `dst..dst+len` must be pinned host memory not read or written until the copy finishes;
/// `src..src+len` must be device memory of the stream's context.
pub unsafe fn copy_dtoh_async(
    dst: *mut u8,
    src: sys::CUdeviceptr,
    len: usize,
    stream: &Stream,
) -> CudaResult<()> {
    // SAFETY: forwarded to the caller's contract.
    check(
        unsafe { sys::cuMemcpyDtoHAsync_v2(dst.cast(), src, len, stream.raw) },
        "cuMemcpyDtoHAsync",
    )
}
