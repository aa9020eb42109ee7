//! Helpers shared by the CUDA bulk-path test files (`mod common;` in each).
#![allow(dead_code)] // each test file uses its own subset

use std::path::{Path, PathBuf};
use warpfs::backend::cuda::{pattern, CudaBulk, DeviceBuffer};

/// What device buffers are filled with before a read.
pub const POISON: u8 = 0xA5;

/// A folder for this test process's files, `warpfs-<what>-<pid>` in the temp dir.
pub fn test_dir(what: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("warpfs-{what}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes `len` bytes of pattern content (a function of the file offset) to `dir/name`,
/// written back to disk so that `drop_from_cache` can drop it (dirty pages stay cached).
pub fn pattern_file(dir: &Path, name: &str, len: usize) -> PathBuf {
    let p = dir.join(name);
    let mut v = vec![0u8; len];
    pattern::fill(&mut v, 0);
    std::fs::write(&p, v).unwrap();
    std::fs::File::open(&p).unwrap().sync_all().unwrap();
    p
}

/// Asks the kernel to drop `p` from the page cache, so the next read is cold.
pub fn drop_from_cache(p: &Path) {
    use std::os::fd::AsRawFd;
    let f = std::fs::File::open(p).unwrap();
    // SAFETY: plain advisory call on a live descriptor.
    unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// The `i`-th random read of a test over a file of `size` bytes: (file offset, length, device
/// offset). Offsets cycle through any, page-aligned, odd and around the end of the file;
/// lengths through short, whole pages and up to the file size.
pub fn random_read(rng: &mut impl rand::Rng, i: usize, size: u64) -> (u64, u64, usize) {
    let off = match i % 4 {
        0 => rng.random_range(0..size),
        1 => rng.random_range(0..size / 4096) * 4096,
        2 => rng.random_range(0..size) | 1,
        _ => rng.random_range(size.saturating_sub(9000)..size + 5000),
    };
    let len = match i % 3 {
        0 => rng.random_range(0..200_000),
        1 => rng.random_range(1..64) * 4096,
        _ => rng.random_range(0..size),
    };
    (off, len, rng.random_range(0..4096usize))
}

/// A device buffer of `len` bytes, every one set to [`POISON`].
pub fn poisoned(e: &CudaBulk, len: usize) -> DeviceBuffer {
    let mut b = e.alloc(len).unwrap();
    b.fill(POISON).unwrap();
    b
}

/// The buffer's bytes, copied to the host.
pub fn host(b: &DeviceBuffer) -> Vec<u8> {
    let mut v = vec![0u8; b.len()];
    b.copy_to_host(0, &mut v).unwrap();
    v
}

/// Checks dst[dst_off..dst_off+n] == pattern(file_off..) and that the rest is still poison.
pub fn check(buf: &[u8], dst_off: usize, n: usize, file_off: u64, what: &str) {
    if let Some(i) = pattern::first_mismatch(&buf[dst_off..dst_off + n], file_off) {
        panic!(
            "{what}: byte {i} of the range (file offset {}) is wrong",
            file_off + i as u64
        );
    }
    assert!(
        buf[..dst_off].iter().all(|&x| x == POISON),
        "{what}: bytes before the range were written"
    );
    assert!(
        buf[dst_off + n..].iter().all(|&x| x == POISON),
        "{what}: bytes after the range were written"
    );
}

/// A device buffer of `len` bytes holding the pattern of file offsets `[off, off + len)`.
pub fn pattern_on_device(e: &CudaBulk, off: u64, len: usize) -> DeviceBuffer {
    let mut v = vec![0u8; len];
    pattern::fill(&mut v, off);
    let mut b = e.alloc(len).unwrap();
    b.copy_from_host(0, &v).unwrap();
    b
}
