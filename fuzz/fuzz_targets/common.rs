//! Shared by the daemon fuzz targets: files with known content on tmpfs and byte helpers.
#![allow(dead_code)]

use std::path::PathBuf;

/// Length of the read-only pattern file.
pub const RO_LEN: u64 = 50_000;

/// Byte at offset `off` of the read-only file.
pub fn pat(off: u64) -> u8 {
    (off.wrapping_mul(2654435761) >> 13) as u8
}

/// A fresh directory for this process's files (tmpfs when available: fsync costs nothing).
pub fn dir(name: &str) -> PathBuf {
    let base = if std::path::Path::new("/dev/shm").is_dir() {
        PathBuf::from("/dev/shm")
    } else {
        std::env::temp_dir()
    };
    let d = base.join(format!("warpfs-fuzz-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Writes the read-only pattern file; returns its path.
pub fn ro_file(d: &std::path::Path) -> PathBuf {
    let p = d.join("ro");
    std::fs::write(&p, (0..RO_LEN).map(pat).collect::<Vec<_>>()).unwrap();
    p
}

/// Reads a little-endian u64 at `at` of `b` (zero-padded).
pub fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut w = [0u8; 8];
    for (i, x) in w.iter_mut().enumerate() {
        *x = b.get(at + i).copied().unwrap_or(0);
    }
    u64::from_le_bytes(w)
}

/// Reads a little-endian u32 at `at` of `b` (zero-padded).
pub fn u32_at(b: &[u8], at: usize) -> u32 {
    u64_at(b, at) as u32
}

/// A request decoded from 48 raw bytes (the wire layout of `WfsRequest`).
pub fn request(b: &[u8]) -> warpfs::abi::WfsRequest {
    warpfs::abi::WfsRequest {
        op: u32_at(b, 0),
        flags: u32_at(b, 4),
        handle: u32_at(b, 8),
        completion: u32_at(b, 12),
        ticket: u32_at(b, 16),
        reserved: u32_at(b, 20),
        offset: u64_at(b, 24),
        len: u64_at(b, 32),
        buf: u64_at(b, 40),
    }
}

/// Whether `req` is a read the daemon must serve with the pattern file's bytes.
pub fn valid_ro_read(req: &warpfs::abi::WfsRequest, ro: u32, data_len: u64) -> bool {
    req.op == warpfs::abi::WFS_OP_READ
        && req.handle == ro
        && req.flags == 0
        && req.reserved == 0
        && req
            .offset
            .checked_add(req.len)
            .is_some_and(|e| e <= warpfs::abi::WFS_MAX_END)
        && req.buf.checked_add(req.len).is_some_and(|e| e <= data_len)
}
