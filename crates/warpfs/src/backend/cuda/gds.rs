//! GPUDirect Storage through NVIDIA cuFile (`libcufile`, loaded at run time by cudarc): file
//! ranges DMAed between the disk and device memory with no host bounce, where the machine
//! offers it.
//!
//! [`support`] probes once per process: is `libcufile` present, does `cuFileDriverOpen`
//! succeed, and does the driver report nvidia-fs (`nvfs.major_version > 0`) or NVMe P2PDMA
//! support. With `WARPFS_GDS=auto` the bulk path uses cuFile only then, and only for ranges the
//! page cache does not hold (warm data comes from memory faster than any disk); with
//! `WARPFS_GDS=on` it uses cuFile for every aligned range as long as the driver opens and the
//! file's handle registers — which includes cuFile's own compatibility mode (POSIX I/O inside
//! cuFile, `"allow_compat_mode": true` in the `cufile.json` that `CUFILE_ENV_PATH_JSON` names).
//! A machine without nvidia-fs (the H100 machine) thus runs the pipeline under `auto`, and
//! the cuFile code path can still be exercised there under `on` with compat mode.

use cudarc::cufile::sys as cfs;
use std::ffi::c_void;
use std::os::fd::RawFd;
use std::sync::OnceLock;

/// What cuFile offers in this process (probed once, see [`support`]).
#[derive(Debug, Clone)]
pub struct GdsSupport {
    /// `libcufile` was found and `cuFileDriverOpen` succeeded.
    pub driver_open: bool,
    /// nvidia-fs version the driver reports, `(0, 0)` when nvidia-fs is not loaded.
    pub nvfs_version: (u32, u32),
    /// The driver reports NVMe P2PDMA support (DMA without nvidia-fs).
    pub p2pdma: bool,
    /// One line for logs and reports: what was found.
    pub summary: String,
}

impl GdsSupport {
    /// Whether cuFile moves data by DMA here (nvidia-fs or P2PDMA), the condition of
    /// `WARPFS_GDS=auto`.
    pub fn direct_dma(&self) -> bool {
        self.driver_open && (self.nvfs_version.0 > 0 || self.p2pdma)
    }
}

/// Probes cuFile once per process (loads the library, opens the driver, reads its properties;
/// tens of milliseconds the first time, free after). The driver stays open for the process.
pub fn support() -> &'static GdsSupport {
    static SUPPORT: OnceLock<GdsSupport> = OnceLock::new();
    SUPPORT.get_or_init(|| {
        let s = probe();
        tracing::info!(
            driver_open = s.driver_open,
            nvfs = ?s.nvfs_version,
            p2pdma = s.p2pdma,
            "{}",
            s.summary
        );
        s
    })
}

fn probe() -> GdsSupport {
    let none = |summary: String| GdsSupport {
        driver_open: false,
        nvfs_version: (0, 0),
        p2pdma: false,
        summary,
    };
    // SAFETY: only tries to load the shared library; no cuFile function is called.
    if !unsafe { cfs::is_culib_present() } {
        return none("cuFile: libcufile not found".into());
    }
    // SAFETY: the library is present (checked above); the call takes no arguments.
    let opened = unsafe { cfs::cuFileDriverOpen() };
    if opened.err != cfs::CUfileOpError::CU_FILE_SUCCESS {
        return none(format!(
            "cuFile: cuFileDriverOpen failed ({:?})",
            opened.err
        ));
    }
    let mut props = std::mem::MaybeUninit::<cfs::CUfileDrvProps_t>::zeroed();
    // SAFETY: the driver is open; props is a valid out pointer of the right type.
    let got = unsafe { cfs::cuFileDriverGetProperties(props.as_mut_ptr()) };
    if got.err != cfs::CUfileOpError::CU_FILE_SUCCESS {
        return GdsSupport {
            driver_open: true,
            nvfs_version: (0, 0),
            p2pdma: false,
            summary: format!(
                "cuFile: driver open, properties unavailable ({:?})",
                got.err
            ),
        };
    }
    // SAFETY: zero-initialised plain integers, filled in by a successful call.
    let props = unsafe { props.assume_init() };
    let nvfs = (props.nvfs.major_version, props.nvfs.minor_version);
    let p2p_bit = cfs::CUfileDriverStatusFlags::CU_FILE_NVME_P2P_SUPPORTED as u32;
    let p2pdma = props.nvfs.dstatusflags & (1 << p2p_bit) != 0;
    let summary = if nvfs.0 > 0 || p2pdma {
        format!(
            "cuFile: DMA available (nvidia-fs {}.{}, P2PDMA {p2pdma})",
            nvfs.0, nvfs.1
        )
    } else {
        "cuFile: driver open, but no nvidia-fs and no P2PDMA (only cuFile's compat mode)".into()
    };
    GdsSupport {
        driver_open: true,
        nvfs_version: nvfs,
        p2pdma,
        summary,
    }
}

/// A file registered with cuFile (`cuFileHandleRegister`); deregistered on drop. Costs a few
/// system calls; register per bulk call.
#[derive(Debug)]
pub struct GdsHandle {
    inner: Inner,
}

#[derive(Debug)]
enum Inner {
    CuFile(cfs::CUfileHandle_t),
    /// `pread`/`pwrite` on this descriptor plus synchronous copies (tests).
    #[cfg(feature = "fault-injection")]
    Emulated(RawFd),
}

// SAFETY: cuFile handles may be used from any thread; cuFileRead/cuFileWrite are thread safe
// (cuFile API reference), and the handle is deregistered once, on drop.
unsafe impl Send for GdsHandle {}
// SAFETY: see Send: shared use only issues thread-safe reads and writes.
unsafe impl Sync for GdsHandle {}

/// Why cuFile could not take a file or a transfer.
#[derive(Debug, thiserror::Error)]
pub enum GdsError {
    /// The cuFile driver did not open on this machine.
    #[error("{0}")]
    Unavailable(String),
    /// `cuFileHandleRegister` refused the file.
    #[error("cuFileHandleRegister refused the file ({0}); cuFile's log (cufile.log, or the logging dir of the cufile.json named by CUFILE_ENV_PATH_JSON) says why: e.g. no nvidia-fs with \"allow_compat_mode\" off, or no udev data for the volume (containers)")]
    Register(String),
    /// A read or write failed.
    #[error("cuFile {op} of {len} bytes at file offset {offset} failed: {why}")]
    Io {
        /// `"read"` or `"write"`.
        op: &'static str,
        /// Bytes asked for.
        len: usize,
        /// File offset.
        offset: u64,
        /// The errno or cuFile status.
        why: String,
    },
}

impl From<GdsError> for crate::Error {
    fn from(e: GdsError) -> Self {
        match e {
            GdsError::Unavailable(_) | GdsError::Register(_) => crate::Error::Config(e.to_string()),
            GdsError::Io { .. } => crate::Error::Io(std::io::Error::other(e)),
        }
    }
}

impl GdsHandle {
    /// Registers descriptor `fd` (best opened with `O_DIRECT`: nvidia-fs needs it) with cuFile.
    /// The descriptor must outlive the handle.
    pub fn register(fd: RawFd) -> Result<Self, GdsError> {
        let s = support();
        if !s.driver_open {
            return Err(GdsError::Unavailable(s.summary.clone()));
        }
        let mut descr = cfs::CUfileDescr_t {
            type_: cfs::CUfileFileHandleType::CU_FILE_HANDLE_TYPE_OPAQUE_FD,
            handle: cfs::CUfileDescr_t__bindgen_ty_1 { fd },
            fs_ops: std::ptr::null(),
        };
        let mut fh: cfs::CUfileHandle_t = std::ptr::null_mut();
        // SAFETY: the driver is open; fh and descr are valid for the call.
        let r = unsafe { cfs::cuFileHandleRegister(&mut fh, &mut descr) };
        if r.err != cfs::CUfileOpError::CU_FILE_SUCCESS {
            return Err(GdsError::Register(format!("{:?}", r.err)));
        }
        Ok(Self {
            inner: Inner::CuFile(fh),
        })
    }

    /// A stand-in for tests: reads and writes through buffered descriptor `fd` (which must
    /// outlive the handle) and synchronous copies, in the current context, as cuFile's compat
    /// mode would.
    #[cfg(feature = "fault-injection")]
    pub fn emulated(fd: RawFd) -> Self {
        Self {
            inner: Inner::Emulated(fd),
        }
    }

    /// Reads up to `len` bytes at file `offset` into device memory at `dev`; returns the bytes
    /// read (fewer only at end of file).
    ///
    /// # Safety
    /// `[dev, dev + len)` must be device memory of the current context that nothing else uses
    /// until this returns.
    pub unsafe fn read(&self, dev: u64, len: usize, offset: u64) -> Result<usize, GdsError> {
        #[allow(clippy::infallible_destructuring_match)] // one variant without `fault-injection`
        let fh = match self.inner {
            Inner::CuFile(fh) => fh,
            #[cfg(feature = "fault-injection")]
            // SAFETY: forwarded to the caller's contract.
            Inner::Emulated(fd) => return unsafe { emulated_read(fd, dev, len, offset) },
        };
        let mut done = 0usize;
        while done < len {
            // SAFETY: the caller's contract covers [dev, dev + len); the handle is registered.
            let r = unsafe {
                cfs::cuFileRead(
                    fh,
                    dev as *mut c_void,
                    len - done,
                    (offset + done as u64) as libc::off_t,
                    done as libc::off_t,
                )
            };
            match r {
                0 => break,
                n if n > 0 => done += n as usize,
                n => return Err(io_error("read", len, offset, n)),
            }
        }
        Ok(done)
    }

    /// Writes `len` bytes from device memory at `dev` to the file at `offset`.
    ///
    /// # Safety
    /// `[dev, dev + len)` must be device memory of the current context that nothing writes
    /// until this returns.
    pub unsafe fn write(&self, dev: u64, len: usize, offset: u64) -> Result<(), GdsError> {
        #[allow(clippy::infallible_destructuring_match)] // one variant without `fault-injection`
        let fh = match self.inner {
            Inner::CuFile(fh) => fh,
            #[cfg(feature = "fault-injection")]
            // SAFETY: forwarded to the caller's contract.
            Inner::Emulated(fd) => return unsafe { emulated_write(fd, dev, len, offset) },
        };
        let mut done = 0usize;
        while done < len {
            // SAFETY: as in `read`; cuFile only reads the device range.
            let r = unsafe {
                cfs::cuFileWrite(
                    fh,
                    dev as *const c_void,
                    len - done,
                    (offset + done as u64) as libc::off_t,
                    done as libc::off_t,
                )
            };
            match r {
                n if n > 0 => done += n as usize,
                n => return Err(io_error("write", len, offset, n)),
            }
        }
        Ok(())
    }
}

/// cuFile's return convention: -1 = errno, < -1 = minus a `CUfileOpError` code, 0 on a write
/// = nothing written.
fn io_error(op: &'static str, len: usize, offset: u64, r: isize) -> GdsError {
    let why = match r {
        -1 => std::io::Error::last_os_error().to_string(),
        0 => "no bytes written".into(),
        n => format!("cuFile status {}", -n),
    };
    GdsError::Io {
        op,
        len,
        offset,
        why,
    }
}

impl Drop for GdsHandle {
    fn drop(&mut self) {
        #[allow(irrefutable_let_patterns)] // one variant without `fault-injection`
        if let Inner::CuFile(fh) = self.inner {
            // SAFETY: registered in `register`, deregistered once; no read or write is
            // running (they borrow self).
            unsafe { cfs::cuFileHandleDeregister(fh) };
        }
    }
}

/// Bytes per step of the emulated calls.
#[cfg(feature = "fault-injection")]
const EMULATED_STEP: usize = 1 << 20;

/// `pread` into host memory, then a synchronous copy to the device; short at end of file.
///
/// # Safety
/// As [`GdsHandle::read`].
#[cfg(feature = "fault-injection")]
unsafe fn emulated_read(fd: RawFd, dev: u64, len: usize, offset: u64) -> Result<usize, GdsError> {
    let mut host = vec![0u8; EMULATED_STEP.min(len)];
    let mut done = 0usize;
    while done < len {
        let want = (len - done).min(host.len());
        // SAFETY: host holds at least `want` bytes.
        let r = unsafe {
            libc::pread(
                fd,
                host.as_mut_ptr().cast(),
                want,
                (offset + done as u64) as libc::off_t,
            )
        };
        if r < 0 {
            return Err(io_error("read", len, offset, -1));
        }
        if r == 0 {
            break;
        }
        // SAFETY: the destination lies in the caller's device range (its contract); the
        // source is `r` initialised bytes of host.
        let c = unsafe {
            cudarc::driver::sys::cuMemcpyHtoD_v2(
                dev + done as u64,
                host.as_ptr().cast(),
                r as usize,
            )
        };
        if c != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            return Err(GdsError::Io {
                op: "read",
                len,
                offset,
                why: format!("emulated copy failed: {c:?}"),
            });
        }
        done += r as usize;
    }
    Ok(done)
}

/// A synchronous copy from the device into host memory, then `pwrite`.
///
/// # Safety
/// As [`GdsHandle::write`].
#[cfg(feature = "fault-injection")]
unsafe fn emulated_write(fd: RawFd, dev: u64, len: usize, offset: u64) -> Result<(), GdsError> {
    let mut host = vec![0u8; EMULATED_STEP.min(len)];
    let mut done = 0usize;
    while done < len {
        let n = (len - done).min(host.len());
        // SAFETY: the source lies in the caller's device range; host holds n bytes.
        let c = unsafe {
            cudarc::driver::sys::cuMemcpyDtoH_v2(host.as_mut_ptr().cast(), dev + done as u64, n)
        };
        if c != cudarc::driver::sys::CUresult::CUDA_SUCCESS {
            return Err(GdsError::Io {
                op: "write",
                len,
                offset,
                why: format!("emulated copy failed: {c:?}"),
            });
        }
        let mut w = 0usize;
        while w < n {
            // SAFETY: host[w..n] is initialised.
            let r = unsafe {
                libc::pwrite(
                    fd,
                    host[w..n].as_ptr().cast(),
                    n - w,
                    (offset + (done + w) as u64) as libc::off_t,
                )
            };
            if r <= 0 {
                return Err(io_error("write", len, offset, if r == 0 { 0 } else { -1 }));
            }
            w += r as usize;
        }
        done += n;
    }
    Ok(())
}
