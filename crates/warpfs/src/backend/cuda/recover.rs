//! Recovery after a kernel fault.
//!
//! A kernel that faults (`__trap()`, an illegal address, an assertion) leaves the device's
//! primary context with a *sticky* error: every later call in that context (launches, copies,
//! `cuCtxSynchronize`) returns it, for every user of the context in the process. The warpfs
//! [`Runtime`](crate::Runtime) and its daemon are host-side and stay healthy: host agents and
//! channels of other devices keep working, and the dead channel's rings live in host memory
//! that its `GpuIo` (and the daemon, while it still holds the channel) keeps alive — requests
//! left in them are answered (`-ESHUTDOWN` once the `GpuIo` is dropped) without touching
//! freed memory.
//!
//! To use the device again:
//!
//! 1. drop every warpfs handle of the device — the [`GpuIo`](super::gpu_io::GpuIo) (its drop
//!    logs the sticky error and does not hang: waiting device calls are already dead), its
//!    modules and every [`DeviceBuffer`](super::DeviceBuffer)/[`PinnedBuffer`](super::PinnedBuffer);
//! 2. call [`recover_device`]: it waits (bounded) until the daemon has let go of the dropped
//!    channels, then resets the primary context if it still carries the error;
//! 3. create a new `GpuIo` and recompile the kernels.
//!
//! ```no_run
//! # use warpfs::backend::cuda::{gpu_io::{GpuIo, GpuIoConfig}, recover};
//! # fn f(rt: &warpfs::Runtime, gpu: GpuIo<'_>) -> warpfs::Result<()> {
//! if let Err(e) = gpu.context().health() {
//!     eprintln!("kernel fault: {e}");
//!     drop(gpu);
//!     recover::recover_device(0, std::time::Duration::from_secs(10))?;
//!     let gpu = GpuIo::new(rt, GpuIoConfig::default())?; // a working channel again
//! #   drop(gpu);
//! }
//! # Ok(()) }
//! ```

use super::driver::{check, init, live_contexts, live_contexts_lock};
use crate::error::{Error, Result};
use cudarc::driver::sys;
use std::time::{Duration, Instant};

/// What [`recover_device`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recovery {
    /// The primary context is in use (by someone outside warpfs) and healthy: nothing to do.
    Healthy,
    /// The primary context was reset with `cuDevicePrimaryCtxReset`: it was held by no one (a
    /// sticky error outlives the last release), or it carried a sticky error.
    Reset,
}

/// Makes device `ordinal` usable again after a kernel fault: waits up to `wait` until no
/// warpfs handle of the device is alive ([`super::driver::live_contexts`] is 0 — the daemon
/// lets go of a dropped `GpuIo`'s channel within about a second), then, if the primary context
/// still exists (another library retains it) and carries a sticky error, resets it.
///
/// Errors: [`Error::Config`] if warpfs handles of the device are still alive after `wait`
/// (nothing is reset then: resetting would free memory they use), or if there is no driver;
/// [`Error::Io`] if a driver call fails. Other libraries of the process that use the device
/// (PyTorch, cuBLAS) lose their context too if it is reset — it was dead already. Costs ≤ `wait`
/// plus, when it resets, tens of ms.
pub fn recover_device(ordinal: usize, wait: Duration) -> Result<Recovery> {
    init()?;
    let deadline = Instant::now() + wait;
    loop {
        let live = live_contexts_lock();
        let n = live.get(ordinal).copied().unwrap_or(0);
        if n == 0 {
            // Held through the check and the reset: no Context can retain meanwhile.
            let r = reset_if_faulted(ordinal);
            drop(live);
            return r;
        }
        drop(live);
        if Instant::now() >= deadline {
            return Err(Error::Config(format!(
                "{n} warpfs handle(s) of CUDA device {ordinal} are still alive after {wait:?}: \
                 drop every GpuIo, GpuModule, DeviceBuffer, PinnedBuffer and CudaBulk of the \
                 device before recovering it"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn reset_if_faulted(ordinal: usize) -> Result<Recovery> {
    let mut dev = 0;
    // SAFETY: the driver is initialised; dev is a valid out pointer.
    check(
        unsafe { sys::cuDeviceGet(&mut dev, ordinal as i32) },
        "cuDeviceGet",
    )?;
    let (mut flags, mut active) = (0u32, 0i32);
    // SAFETY: dev is a valid device; both are valid out pointers.
    check(
        unsafe { sys::cuDevicePrimaryCtxGetState(dev, &mut flags, &mut active) },
        "cuDevicePrimaryCtxGetState",
    )?;
    if active == 0 {
        // No one holds the primary context, but a sticky error outlives the last release (seen
        // on the H100, 2026-11-25: the next cuDevicePrimaryCtxRetain failed with
        // CUDA_ERROR_LAUNCH_FAILED). Resetting an unheld context harms no one.
        reset(dev)?;
        return Ok(Recovery::Reset);
    }
    let mut ctx = std::ptr::null_mut();
    // SAFETY: dev is valid; ctx is a valid out pointer; released below.
    let retained = unsafe { sys::cuDevicePrimaryCtxRetain(&mut ctx, dev) };
    if retained != sys::CUresult::CUDA_SUCCESS {
        // The retain itself reports the sticky error: the context is dead.
        reset(dev)?;
        return Ok(Recovery::Reset);
    }
    // SAFETY: ctx is the primary context just retained; the null stream is its legacy default
    // stream. Then the retain is released once.
    let healthy = unsafe {
        let bound = sys::cuCtxSetCurrent(ctx);
        let q = sys::cuStreamQuery(std::ptr::null_mut());
        sys::cuCtxSetCurrent(std::ptr::null_mut());
        sys::cuDevicePrimaryCtxRelease_v2(dev);
        bound == sys::CUresult::CUDA_SUCCESS
            && matches!(
                q,
                sys::CUresult::CUDA_SUCCESS | sys::CUresult::CUDA_ERROR_NOT_READY
            )
    };
    if healthy {
        return Ok(Recovery::Healthy);
    }
    reset(dev)?;
    Ok(Recovery::Reset)
}

/// Resets device `dev`'s primary context. Called only with no warpfs handle of the device
/// alive (count 0 under the lock, so none can be created meanwhile); what others hold in the
/// context is already unusable (sticky error) or there is no one.
fn reset(dev: sys::CUdevice) -> Result<()> {
    // SAFETY: unbinding the calling thread's current context (null) is always allowed: a dead
    // context left current would hand its sticky error to the next retain on this thread.
    // Then see above; dev is a valid device handle.
    unsafe {
        sys::cuCtxSetCurrent(std::ptr::null_mut());
    }
    // SAFETY: as above.
    check(
        unsafe { sys::cuDevicePrimaryCtxReset_v2(dev) },
        "cuDevicePrimaryCtxReset",
    )?;
    Ok(())
}

/// Whether device `ordinal`'s primary context is free of warpfs handles right now (for tests
/// and diagnostics; see [`super::driver::live_contexts`]).
pub fn device_released(ordinal: usize) -> bool {
    live_contexts(ordinal) == 0
}
