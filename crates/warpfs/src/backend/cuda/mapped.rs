//! A [`SharedMemory`] region in pinned host memory mapped into a CUDA device, so that rings,
//! completion records and data buffers laid out in it (a [`crate::channel::Channel`]) are
//! reachable from kernels and from the daemon alike.
//!
//! The memory comes from `cuMemHostAlloc(PORTABLE | DEVICEMAP)`: cached on the CPU (not
//! write-combined, so the daemon reads requests at full speed), page aligned, and reachable from
//! the device at [`MappedHostMemory::device_ptr`] (from `cuMemHostGetDevicePointer_v2`; equal to
//! the host address under unified addressing, but asked for rather than assumed).

use super::driver::{check, Context, CudaResult};
use crate::region::{SharedMemory, REGION_ALIGN};
use cudarc::driver::sys;
use std::ffi::c_void;
use std::sync::Arc;

/// The device address of the DEVICEMAP host memory starting at `p` (in the current context);
/// on failure `undo` releases the memory before the error is returned.
fn device_pointer_of(p: *mut c_void, undo: impl FnOnce()) -> CudaResult<u64> {
    let mut device_ptr: sys::CUdeviceptr = 0;
    // SAFETY: the caller made p the start of a live DEVICEMAP allocation or registration in
    // the current context; flags must be 0; device_ptr is a valid out pointer.
    let looked_up = check(
        unsafe { sys::cuMemHostGetDevicePointer_v2(&mut device_ptr, p, 0) },
        "cuMemHostGetDevicePointer",
    );
    if let Err(e) = looked_up {
        undo();
        return Err(e);
    }
    Ok(device_ptr)
}

/// Pinned, device-mapped, zeroed host memory; freed when the last owner drops it.
#[derive(Debug)]
pub struct MappedHostMemory {
    ptr: *mut u8,
    len: usize,
    device_ptr: u64,
    ctx: Arc<Context>,
}

// SAFETY: the allocation is owned by this value and only handed out as raw pointers whose users
// synchronise themselves (ring atomics, ownership of data slices); freeing binds the context,
// which any thread may do.
unsafe impl Send for MappedHostMemory {}
// SAFETY: see `Send`; `&MappedHostMemory` only exposes addresses.
unsafe impl Sync for MappedHostMemory {}

impl MappedHostMemory {
    /// Allocates `len` bytes (rounded up to a page) of pinned host memory mapped into `ctx`'s
    /// device, zeroes it and looks up its device address. Pinning costs about a millisecond per
    /// 100 MiB: allocate once, reuse.
    pub fn new(ctx: &Arc<Context>, len: usize) -> CudaResult<Self> {
        let len = len.max(1).div_ceil(REGION_ALIGN) * REGION_ALIGN;
        ctx.bind()?;
        let mut p: *mut c_void = std::ptr::null_mut();
        let flags = sys::CU_MEMHOSTALLOC_PORTABLE | sys::CU_MEMHOSTALLOC_DEVICEMAP;
        // SAFETY: the context is current on this thread; p is a valid out pointer.
        check(
            unsafe { sys::cuMemHostAlloc(&mut p, len, flags) },
            "cuMemHostAlloc",
        )?;
        let device_ptr = device_pointer_of(p, || {
            // SAFETY: p came from cuMemHostAlloc above and is freed once, here.
            unsafe { sys::cuMemFreeHost(p) };
        })?;
        // SAFETY: [p, p+len) is our fresh allocation, not yet shared with anyone.
        unsafe { std::ptr::write_bytes(p.cast::<u8>(), 0, len) };
        Ok(Self {
            ptr: p.cast(),
            len,
            device_ptr,
            ctx: ctx.clone(),
        })
    }

    /// The device address of byte 0 (what kernels dereference).
    pub fn device_ptr(&self) -> u64 {
        self.device_ptr
    }

    /// The context the mapping belongs to.
    pub fn context(&self) -> &Arc<Context> {
        &self.ctx
    }
}

// SAFETY: `new` allocates `len` bytes (a multiple of 4096, page aligned by cuMemHostAlloc),
// zeroes them, and they stay valid until drop; the type is Send + Sync (above).
unsafe impl SharedMemory for MappedHostMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn device_addr(&self) -> u64 {
        self.device_ptr
    }
}

impl Drop for MappedHostMemory {
    fn drop(&mut self) {
        let _ = self.ctx.bind();
        // SAFETY: ptr came from cuMemHostAlloc and is freed once; every user (channel, daemon
        // job, kernel launch through GpuIo) held an owner that is gone by now.
        unsafe {
            sys::cuMemFreeHost(self.ptr.cast());
        }
    }
}

/// Host memory allocated elsewhere (e.g. a channel region shared by a daemon process,
/// [`crate::region::SharedFdMemory`]), page-locked and mapped into a CUDA device with
/// `cuMemHostRegister(PORTABLE | DEVICEMAP)`. Unregistered on drop; the memory itself stays with
/// its owner. Registration pins every page: about a millisecond per 100 MiB.
pub struct RegisteredHostMemory {
    mem: Arc<dyn SharedMemory>,
    device_ptr: u64,
    ctx: Arc<Context>,
}

impl std::fmt::Debug for RegisteredHostMemory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegisteredHostMemory")
            .field("len", &self.mem.len())
            .field("device_ptr", &self.device_ptr)
            .finish_non_exhaustive()
    }
}

impl RegisteredHostMemory {
    /// Registers all of `mem` with `ctx`'s device and looks up its device address.
    pub fn new(ctx: &Arc<Context>, mem: Arc<dyn SharedMemory>) -> CudaResult<Self> {
        ctx.bind()?;
        let p = mem.as_ptr().cast::<c_void>();
        let flags = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
        // SAFETY: [p, p+len) is a live, page-aligned mapping that `mem` keeps alive for as long
        // as this value (which holds `mem`) exists; the context is current on this thread.
        check(
            unsafe { sys::cuMemHostRegister_v2(p, mem.len(), flags) },
            "cuMemHostRegister",
        )?;
        let device_ptr = device_pointer_of(p, || {
            // SAFETY: p was registered above and is unregistered once, here.
            unsafe { sys::cuMemHostUnregister(p) };
        })?;
        Ok(Self {
            mem,
            device_ptr,
            ctx: ctx.clone(),
        })
    }

    /// The device address of byte 0 (what kernels dereference).
    pub fn device_ptr(&self) -> u64 {
        self.device_ptr
    }
}

// SAFETY: the bytes are `mem`'s, which upholds the contract (valid, zeroed at creation,
// 4096-aligned, Send + Sync) for at least as long as this value holds it.
unsafe impl SharedMemory for RegisteredHostMemory {
    fn as_ptr(&self) -> *mut u8 {
        self.mem.as_ptr()
    }
    fn len(&self) -> usize {
        self.mem.len()
    }
    fn device_addr(&self) -> u64 {
        self.device_ptr
    }
}

impl Drop for RegisteredHostMemory {
    fn drop(&mut self) {
        let _ = self.ctx.bind();
        // SAFETY: the range was registered in `new` and is unregistered once; every user
        // (kernels through GpuIo) is gone by now. On a dead context this fails harmlessly.
        unsafe {
            sys::cuMemHostUnregister(self.mem.as_ptr().cast());
        }
    }
}

/// A host range allocated elsewhere (the host cache tier's arena) mapped into every device
/// that asks: registered with `cuMemHostRegister(PORTABLE | DEVICEMAP)` by the first holder in
/// the process, unregistered when the last one drops (a range can be registered once per
/// process, however many devices' channels map it). Registration pins and maps every page:
/// about a millisecond per 100 MiB, paid once.
#[derive(Debug)]
pub struct SharedHostMapping {
    ptr: usize,
    len: usize,
    device_ptr: u64,
    ctx: Arc<Context>,
}

/// Registered ranges of this process: (start, length, holders).
static SHARED_MAPPINGS: std::sync::Mutex<Vec<(usize, usize, usize)>> =
    std::sync::Mutex::new(Vec::new());

impl SharedHostMapping {
    /// Maps `[ptr, ptr + len)` (page aligned) into `ctx`'s device, registering it if no other
    /// holder in the process has.
    ///
    /// # Safety
    /// The range must stay mapped (not unmapped or remapped) while the returned value lives.
    pub unsafe fn new(ctx: &Arc<Context>, ptr: *mut u8, len: usize) -> CudaResult<Self> {
        ctx.bind()?;
        let p = ptr.cast::<c_void>();
        let mut reg = SHARED_MAPPINGS.lock().unwrap_or_else(|e| e.into_inner());
        let known = reg
            .iter()
            .position(|&(a, l, _)| a == ptr as usize && l == len);
        if known.is_none() {
            let flags = sys::CU_MEMHOSTREGISTER_PORTABLE | sys::CU_MEMHOSTREGISTER_DEVICEMAP;
            // SAFETY: the caller keeps [p, p+len) mapped while this value lives, and it is
            // unregistered once, by the last holder.
            check(
                unsafe { sys::cuMemHostRegister_v2(p, len, flags) },
                "cuMemHostRegister",
            )?;
        }
        let device_ptr = device_pointer_of(p, || {
            if known.is_none() {
                // SAFETY: registered just above, by this call, and by nobody else.
                unsafe { sys::cuMemHostUnregister(p) };
            }
        })?;
        match known {
            Some(i) => reg[i].2 += 1,
            None => reg.push((ptr as usize, len, 1)),
        }
        Ok(Self {
            ptr: ptr as usize,
            len,
            device_ptr,
            ctx: ctx.clone(),
        })
    }

    /// The device address of the range's first byte.
    pub fn device_ptr(&self) -> u64 {
        self.device_ptr
    }

    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the range is empty (never: registration refuses empty ranges).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for SharedHostMapping {
    fn drop(&mut self) {
        let mut reg = SHARED_MAPPINGS.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = reg
            .iter()
            .position(|&(a, l, _)| a == self.ptr && l == self.len)
        {
            reg[i].2 -= 1;
            if reg[i].2 == 0 {
                reg.swap_remove(i);
                let _ = self.ctx.bind();
                // SAFETY: the last holder of the registration made in `new`; every kernel that
                // read through it has ended (its channel was detached).
                unsafe {
                    sys::cuMemHostUnregister(self.ptr as *mut c_void);
                }
            }
        }
    }
}

/// A file's page-cache pages mapped into a CUDA device, read-only: the file is mapped
/// `MAP_SHARED` + `PROT_READ` and registered with `cuMemHostRegister(PORTABLE | DEVICEMAP |
/// READ_ONLY)`, so kernels read its bytes over PCIe with ordinary loads and no copy on the
/// host ([`super::gpu_io::GpuIo::map_file`]). Registration pins every page of the file (it
/// faults in what is not cached, reading it from the disk): on the H100 machine about 0.44 s
/// for 8 GiB in the page cache. Writes through the page cache (the daemon's, another
/// process's) are seen. A truncation is followed by the driver: on the H100 machine kernels
/// then read zeros past the new end, never a fault or another file's bytes
/// (`cuda_gpu_io::a_mapped_file_truncated_behind_the_gpu_is_read_without_faults`).
/// Unregistered and unmapped on drop.
#[derive(Debug)]
pub struct FileView {
    base: std::ptr::NonNull<u8>,
    map_len: usize,
    len: u64,
    device_ptr: u64,
    ctx: Arc<Context>,
}

// SAFETY: the mapping is owned by this value and read only by the device; the host never
// dereferences it after registration; unregistering binds the context, which any thread may.
unsafe impl Send for FileView {}
// SAFETY: see `Send`; `&FileView` only exposes addresses.
unsafe impl Sync for FileView {}

impl FileView {
    /// Maps the first `len` bytes of `fd` (> 0) and registers them with `ctx`'s device.
    pub fn new(ctx: &Arc<Context>, fd: std::os::fd::RawFd, len: u64) -> crate::error::Result<Self> {
        use crate::error::Error;
        let map_len = usize::try_from(len)
            .ok()
            .filter(|&l| l > 0)
            .ok_or_else(|| Error::Config(format!("a file of {len} bytes cannot be mapped")))?
            .div_ceil(4096)
            * 4096;
        let base = crate::engine::mapped::map_shared_read_only(fd, map_len)?;
        let unmap = || {
            // SAFETY: unmaps exactly the fresh mapping made above, which nothing else holds.
            unsafe { libc::munmap(base.as_ptr().cast(), map_len) };
        };
        if let Err(e) = ctx.bind() {
            unmap();
            return Err(e.into());
        }
        let flags = sys::CU_MEMHOSTREGISTER_PORTABLE
            | sys::CU_MEMHOSTREGISTER_DEVICEMAP
            | sys::CU_MEMHOSTREGISTER_READ_ONLY;
        // SAFETY: [base, base + map_len) is our live read-only mapping, page aligned and not
        // registered before; READ_ONLY matches its protection; the context is current.
        let registered = check(
            unsafe { sys::cuMemHostRegister_v2(base.as_ptr().cast(), map_len, flags) },
            "cuMemHostRegister(READ_ONLY) of a file mapping",
        );
        if let Err(e) = registered {
            unmap();
            return Err(e.into());
        }
        let device_ptr = device_pointer_of(base.as_ptr().cast(), || {
            // SAFETY: registered just above; unregistered once, here, then unmapped.
            unsafe { sys::cuMemHostUnregister(base.as_ptr().cast()) };
            unmap();
        })?;
        Ok(Self {
            base,
            map_len,
            len,
            device_ptr,
            ctx: ctx.clone(),
        })
    }

    /// The device address of file byte 0.
    pub fn device_ptr(&self) -> u64 {
        self.device_ptr
    }

    /// Bytes of the file the device can read (its size when mapped).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the view holds no bytes (never: `new` refuses empty files).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Drop for FileView {
    fn drop(&mut self) {
        let _ = self.ctx.bind();
        // SAFETY: registered and mapped by `new`, released once here; the owner (a GpuIo)
        // drops it only after the kernels that could read it are done.
        unsafe {
            sys::cuMemHostUnregister(self.base.as_ptr().cast());
            libc::munmap(self.base.as_ptr().cast(), self.map_len);
        }
    }
}
