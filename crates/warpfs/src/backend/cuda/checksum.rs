//! A position-dependent checksum of a byte range, computed on the GPU (a small NVRTC kernel) or
//! on the CPU, with the same result: `warpfs load --verify` and the CUDA bench check what landed
//! in device memory without copying it back.
//!
//! Definition, for bytes `d[0..L)`: let `w_i` be the little-endian `u64` of bytes `8i..8i+8`
//! (the last word zero-padded when `L` is not a multiple of 8). Then
//!
//! ```text
//! checksum(d) = Σ_{i < ⌈L/8⌉} mix(w_i ⊕ i·G)  +  mix(L ⊕ K)      (wrapping u64 arithmetic)
//! ```
//!
//! with `mix` the splitmix64 finaliser, `G` the golden-ratio constant and `K` a second odd
//! constant. The index inside each term makes it catch data at the wrong offset (a misplaced
//! chunk), not only wrong bytes; the sum makes it order-free, so CPU threads and GPU warps
//! each add up their own words.

use super::driver::{check, Context, CudaError, DeviceBuffer, Stream};
use crate::{Error, Result};
use cudarc::driver::sys;
use std::ffi::c_void;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// Multiplier of the word index in every term.
pub const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;
/// Mixed with the length in the final term.
const LEN_KEY: u64 = 0xA076_1D64_78BD_642F;

/// The splitmix64 finaliser (a bijection of `u64`).
#[inline]
pub fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Sum of the terms of the words of `data`, which sits at byte `offset` of the whole range.
/// `offset` must be a multiple of 8; a trailing partial word is zero-padded, so only the last
/// piece of a range may have a length that is not a multiple of 8. Combine pieces with
/// `wrapping_add` and close with [`finish`].
pub fn partial(data: &[u8], offset: u64) -> u64 {
    assert!(
        offset.is_multiple_of(8),
        "checksum pieces start at multiples of 8"
    );
    let mut i = offset / 8;
    let mut s = 0u64;
    let mut words = data.chunks_exact(8);
    for w in &mut words {
        let w = u64::from_le_bytes(w.try_into().expect("8 bytes"));
        s = s.wrapping_add(mix(w ^ i.wrapping_mul(GOLDEN)));
        i += 1;
    }
    let tail = words.remainder();
    if !tail.is_empty() {
        let mut b = [0u8; 8];
        b[..tail.len()].copy_from_slice(tail);
        s = s.wrapping_add(mix(u64::from_le_bytes(b) ^ i.wrapping_mul(GOLDEN)));
    }
    s
}

/// Closes a sum of [`partial`]s of a range of `len` bytes.
pub fn finish(sum: u64, len: u64) -> u64 {
    sum.wrapping_add(mix(len ^ LEN_KEY))
}

/// The checksum of `data` on the CPU.
pub fn checksum(data: &[u8]) -> u64 {
    finish(partial(data, 0), data.len() as u64)
}

/// The checksum of the first `len` bytes of the file at `path` (the whole file if `len` is
/// `None`), read with plain `pread` through the page cache by `threads` threads in 8 MiB
/// blocks. Returns the checksum and the bytes summed (short if the file is). Costs one pass
/// over the file at memory (warm) or disk (cold) speed.
pub fn checksum_file(path: &Path, len: Option<u64>, threads: usize) -> Result<(u64, u64)> {
    checksum_file_range(path, 0, len.unwrap_or(u64::MAX), threads)
}

/// The checksum of the file's bytes `[offset, offset + len)` taken as a buffer of their own
/// (what [`ChecksumKernel::checksum`] gives for a device buffer holding just that range),
/// clamped to the file's end. Returns the checksum and the bytes summed.
pub fn checksum_file_range(
    path: &Path,
    offset: u64,
    len: u64,
    threads: usize,
) -> Result<(u64, u64)> {
    Ok(checksum_file_ranges(path, &[(offset, len)], threads)?[0])
}

/// [`checksum_file_range`] of many `(offset, len)` ranges in one parallel pass: `threads`
/// threads `pread` 8 MiB blocks of all ranges through the page cache. Returns, per range, the
/// checksum and the bytes summed (short where the file ends inside the range).
pub fn checksum_file_ranges(
    path: &Path,
    ranges: &[(u64, u64)],
    threads: usize,
) -> Result<Vec<(u64, u64)>> {
    const BLOCK: u64 = 8 << 20;
    let f = std::fs::File::open(path).map_err(|source| Error::Open {
        path: path.to_path_buf(),
        mode: "reading",
        source,
    })?;
    let size = f.metadata()?.len();
    let lens: Vec<u64> = ranges
        .iter()
        .map(|&(o, l)| size.saturating_sub(o).min(l))
        .collect();
    // (range, offset inside the range, bytes) per block.
    let work: Vec<(usize, u64, u64)> = lens
        .iter()
        .enumerate()
        .flat_map(|(i, &n)| {
            (0..n.div_ceil(BLOCK)).map(move |b| (i, b * BLOCK, (n - b * BLOCK).min(BLOCK)))
        })
        .collect();
    let sums: Vec<AtomicU64> = ranges.iter().map(|_| AtomicU64::new(0)).collect();
    let next = AtomicUsize::new(0);
    let err: Mutex<Option<std::io::Error>> = Mutex::new(None);
    std::thread::scope(|s| {
        for _ in 0..threads.clamp(1, 64).min(work.len().max(1)) {
            s.spawn(|| {
                let mut buf = vec![0u8; BLOCK as usize];
                loop {
                    let w = next.fetch_add(1, Ordering::Relaxed);
                    let Some(&(i, rel, n)) = work.get(w) else {
                        break;
                    };
                    let b = &mut buf[..n as usize];
                    if let Err(e) = f.read_exact_at(b, ranges[i].0 + rel) {
                        *err.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                        next.store(work.len(), Ordering::Relaxed);
                        break;
                    }
                    sums[i].fetch_add(partial(b, rel), Ordering::Relaxed);
                }
            });
        }
    });
    if let Some(e) = err.into_inner().unwrap_or_else(|p| p.into_inner()) {
        return Err(e.into());
    }
    Ok(sums
        .iter()
        .zip(lens)
        .map(|(s, n)| (finish(s.load(Ordering::Relaxed), n), n))
        .collect())
}

/// CUDA C++ of the kernel: a grid-stride loop over the words, a warp reduction, one atomic add
/// per warp. Thread 0 of block 0 adds the zero-padded tail word.
const KERNEL: &str = r#"
typedef unsigned long long u64;
__device__ __forceinline__ u64 wfs_mix(u64 z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}
extern "C" __global__ void wfs_checksum(const unsigned char* __restrict__ base, u64 len,
                                        u64* __restrict__ out) {
    const u64 G = 0x9E3779B97F4A7C15ull;
    const u64* __restrict__ words = (const u64*)base;
    u64 nwords = len / 8;
    u64 s = 0;
    u64 stride = (u64)gridDim.x * blockDim.x;
    for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < nwords; i += stride) {
        s += wfs_mix(__ldg(words + i) ^ (i * G));
    }
    if (blockIdx.x == 0 && threadIdx.x == 0 && (len & 7)) {
        u64 w = 0;
        for (u64 j = 0; j < (len & 7); j++) w |= (u64)base[nwords * 8 + j] << (8 * j);
        s += wfs_mix(w ^ (nwords * G));
    }
    for (int o = 16; o > 0; o >>= 1) s += __shfl_down_sync(0xffffffffu, s, o);
    if ((threadIdx.x & 31) == 0) atomicAdd(out, s);
}
"#;

/// Threads per block of the kernel (a multiple of 32: the warp reduction needs whole warps).
const BLOCK_THREADS: u32 = 256;

/// The checksum kernel, compiled with NVRTC and loaded into one context. Build once (tens of
/// ms: NVRTC compile + module load), use for many buffers.
pub struct ChecksumKernel {
    ctx: Arc<Context>,
    module: sys::CUmodule,
    func: sys::CUfunction,
    stream: Stream,
    out: DeviceBuffer,
    blocks: u32,
}

impl std::fmt::Debug for ChecksumKernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChecksumKernel")
            .field("device", &self.ctx.name())
            .field("blocks", &self.blocks)
            .finish_non_exhaustive()
    }
}

// SAFETY: the module, function and stream handles belong to `ctx`, which every method binds
// before use; `&mut self` serialises launches (the `out` word is per kernel).
unsafe impl Send for ChecksumKernel {}

impl ChecksumKernel {
    /// Compiles the kernel with NVRTC and loads it into `ctx`. Fails with `Error::Config` when
    /// NVRTC (`libnvrtc.so`) is not installed, and with the compiler log if it fails.
    pub fn new(ctx: &Arc<Context>) -> Result<Self> {
        // SAFETY: only tries to dlopen the NVRTC library.
        if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
            return Err(Error::Config(
                "NVRTC (libnvrtc.so) not found: install the CUDA toolkit's NVRTC library, or run without --verify".into(),
            ));
        }
        let ptx = cudarc::nvrtc::compile_ptx(KERNEL).map_err(|e| {
            Error::Config(format!(
                "NVRTC could not compile the checksum kernel: {e:?}"
            ))
        })?;
        let image = std::ffi::CString::new(ptx.to_src())
            .map_err(|_| Error::Config("NVRTC returned PTX with a NUL byte".into()))?;
        ctx.bind()?;
        let mut module = std::ptr::null_mut();
        // SAFETY: the context is current; image is a NUL-terminated PTX string that outlives the
        // call; module is a valid out pointer.
        check(
            unsafe { sys::cuModuleLoadData(&mut module, image.as_ptr().cast()) },
            "cuModuleLoadData",
        )?;
        let mut func = std::ptr::null_mut();
        // SAFETY: module is live; the name is a NUL-terminated string naming an extern "C"
        // kernel of the module; func is a valid out pointer.
        let got = check(
            unsafe { sys::cuModuleGetFunction(&mut func, module, c"wfs_checksum".as_ptr()) },
            "cuModuleGetFunction",
        );
        if let Err(e) = got {
            // SAFETY: module was loaded above and is unloaded once.
            unsafe { sys::cuModuleUnload(module) };
            return Err(e.into());
        }
        let mut sms = 0;
        // SAFETY: the context is current; sms is a valid out pointer; the device handle is
        // the context's own.
        let sms_ok = check(
            unsafe {
                sys::cuDeviceGetAttribute(
                    &mut sms,
                    sys::CUdevice_attribute::CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT,
                    ctx.device(),
                )
            },
            "cuDeviceGetAttribute",
        );
        let blocks = if sms_ok.is_ok() && sms > 0 {
            sms as u32 * 8
        } else {
            1024
        };
        let make = || -> std::result::Result<(Stream, DeviceBuffer), CudaError> {
            Ok((Stream::new(ctx)?, DeviceBuffer::new(ctx, 8)?))
        };
        let (stream, out) = match make() {
            Ok(x) => x,
            Err(e) => {
                // SAFETY: as above.
                unsafe { sys::cuModuleUnload(module) };
                return Err(e.into());
            }
        };
        Ok(Self {
            ctx: ctx.clone(),
            module,
            func,
            stream,
            out,
            blocks,
        })
    }

    /// The checksum of the first `len` bytes of `buf`, computed on the device (memory
    /// bandwidth: milliseconds for gigabytes). Waits for the result.
    pub fn checksum(&mut self, buf: &DeviceBuffer, len: u64) -> Result<u64> {
        if len > buf.len() as u64 {
            return Err(Error::Range(format!(
                "checksum of {len} bytes asked of a {}-byte device buffer",
                buf.len()
            )));
        }
        // SAFETY: buf.len() ≥ len bytes from its base are device memory of a live buffer,
        // borrowed (so not freed) for the call, which waits for the kernel.
        Ok(finish(unsafe { self.sum_raw(buf.ptr(), len)? }, len))
    }

    /// The checksum of bytes `[offset, offset + len)` of `buf`, as if they were a buffer of
    /// their own (e.g. one tensor of many in one allocation). `offset` must be a multiple of 8.
    pub fn checksum_range(&mut self, buf: &DeviceBuffer, offset: u64, len: u64) -> Result<u64> {
        if offset.checked_add(len).is_none_or(|e| e > buf.len() as u64) {
            return Err(Error::Range(format!(
                "checksum of [{offset}, {offset}+{len}) asked of a {}-byte device buffer",
                buf.len()
            )));
        }
        // SAFETY: the range lies inside buf (checked), a live buffer borrowed for the call,
        // which waits for the kernel; sum_raw checks the alignment.
        Ok(finish(
            unsafe { self.sum_raw(buf.ptr() + offset, len)? },
            len,
        ))
    }

    /// The unfinished sum (see [`partial`]) of `len` bytes at device address `base`.
    ///
    /// # Safety
    /// `[base, base + len)` must be device memory of this kernel's context that stays
    /// allocated until the call returns; `base` must be a multiple of 8.
    pub unsafe fn sum_raw(&mut self, base: u64, len: u64) -> Result<u64> {
        if !base.is_multiple_of(8) {
            return Err(Error::Range(format!(
                "checksum needs an 8-byte aligned device address, got {base:#x}"
            )));
        }
        self.ctx.bind()?;
        // SAFETY: out is our 8-byte device allocation; the memset is ordered before the
        // kernel on the same stream.
        check(
            unsafe { sys::cuMemsetD8Async(self.out.ptr(), 0, 8, self.stream.raw()) },
            "cuMemsetD8Async",
        )?;
        let mut p_base = base;
        let mut p_len = len;
        let mut p_out = self.out.ptr();
        let mut params: [*mut c_void; 3] = [
            (&mut p_base as *mut u64).cast(),
            (&mut p_len as *mut u64).cast(),
            (&mut p_out as *mut u64).cast(),
        ];
        // Few blocks for small ranges: one thread per word at most.
        let words = len / 8 + 1;
        let grid = (words.div_ceil(BLOCK_THREADS as u64)).clamp(1, self.blocks as u64) as u32;
        // SAFETY: func takes (const u8*, u64, u64*), matching the three parameter pointers,
        // which live until the call returns (cuLaunchKernel copies them); the kernel reads
        // [base, base+len) (caller's contract) and writes out (ours).
        check(
            unsafe {
                sys::cuLaunchKernel(
                    self.func,
                    grid,
                    1,
                    1,
                    BLOCK_THREADS,
                    1,
                    1,
                    0,
                    self.stream.raw(),
                    params.as_mut_ptr(),
                    std::ptr::null_mut(),
                )
            },
            "cuLaunchKernel",
        )?;
        let mut host = 0u64;
        // SAFETY: host is a valid 8-byte destination; the copy is queued after the kernel on
        // the same stream, and we wait for the stream before reading host.
        check(
            unsafe {
                sys::cuMemcpyDtoHAsync_v2(
                    (&mut host as *mut u64).cast(),
                    self.out.ptr(),
                    8,
                    self.stream.raw(),
                )
            },
            "cuMemcpyDtoHAsync",
        )?;
        self.stream.synchronize()?;
        Ok(host)
    }
}

impl Drop for ChecksumKernel {
    fn drop(&mut self) {
        let _ = self.ctx.bind();
        let _ = self.stream.synchronize();
        // SAFETY: module was loaded in new() and is unloaded once, after its last launch.
        unsafe {
            sys::cuModuleUnload(self.module);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_add_up_to_the_whole() {
        let mut v = vec![0u8; 1000 + 5];
        crate::backend::cuda::pattern::fill(&mut v, 0);
        let whole = checksum(&v);
        for cut in [0usize, 8, 16, 512, 1000] {
            let s = partial(&v[..cut], 0).wrapping_add(partial(&v[cut..], cut as u64));
            assert_eq!(finish(s, v.len() as u64), whole, "cut {cut}");
        }
    }

    #[test]
    fn catches_changed_moved_and_truncated_data() {
        let mut v = vec![0u8; 4096 + 3];
        crate::backend::cuda::pattern::fill(&mut v, 0);
        let c = checksum(&v);
        let mut w = v.clone();
        w[4097] ^= 1;
        assert_ne!(checksum(&w), c, "tail byte");
        let mut w = v.clone();
        w.copy_within(0..2048, 2048); // a chunk landed twice
        w[..2048].copy_from_slice(&v[2048..4096]); // and its neighbour in its place: a swap
        assert_ne!(checksum(&w), c, "swapped halves");
        assert_ne!(checksum(&v[..4096]), c, "truncated");
        let mut z = v.clone();
        z.push(0);
        assert_ne!(
            checksum(&z),
            c,
            "a trailing zero byte changes the length term"
        );
        assert_ne!(checksum(&[]), checksum(&[0]));
    }

    #[test]
    fn file_checksum_matches_memory() {
        let d = std::env::temp_dir().join(format!("warpfs-cksum-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("f");
        let mut v = vec![0u8; (8 << 20) * 2 + 12_345];
        crate::backend::cuda::pattern::fill(&mut v, 0);
        std::fs::write(&p, &v).unwrap();
        assert_eq!(
            checksum_file(&p, None, 3).unwrap(),
            (checksum(&v), v.len() as u64)
        );
        assert_eq!(
            checksum_file(&p, Some(777), 3).unwrap(),
            (checksum(&v[..777]), 777)
        );
        let o = (8 << 20) - 8;
        assert_eq!(
            checksum_file_range(&p, o as u64, 5 << 20, 2).unwrap(),
            (checksum(&v[o..o + (5 << 20)]), 5 << 20)
        );
        assert_eq!(
            checksum_file_range(&p, o as u64, u64::MAX, 2).unwrap(),
            (checksum(&v[o..]), (v.len() - o) as u64),
            "clamped to the end of the file"
        );
        assert_eq!(
            checksum_file_range(&p, 3, 10, 1).unwrap(),
            (checksum(&v[3..13]), 10),
            "a start that is not a multiple of 8"
        );
        assert_eq!(
            checksum_file_ranges(
                &p,
                &[(0, 777), (o as u64, 5 << 20), (v.len() as u64 - 1, 2)],
                3
            )
            .unwrap(),
            vec![
                (checksum(&v[..777]), 777),
                (checksum(&v[o..o + (5 << 20)]), 5 << 20),
                (checksum(&v[v.len() - 1..]), 1)
            ],
            "several ranges in one pass, the last one short at the end of the file"
        );
        std::fs::remove_dir_all(&d).unwrap();
    }
}
