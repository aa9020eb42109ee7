//! `warpfs stat FILE`: size, page-cache residency (`mincore`), filesystem, and whether
//! `O_DIRECT` reads work on it.

use crate::cli::StatArgs;
use crate::error::{bail, Context, Result};
use crate::units::fmt_bytes;
use serde::Serialize;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What `stat` reports.
#[derive(Debug, Serialize)]
pub struct FileStat {
    /// The path given.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// Filesystem type, when known.
    pub filesystem: String,
    /// Pages of the file (OS page size).
    pub pages: u64,
    /// Pages in the page cache now (`None` if mincore failed).
    pub resident_pages: Option<u64>,
    /// Whether an aligned O_DIRECT read of the first block succeeded.
    pub o_direct: bool,
    /// Why O_DIRECT failed, if it did.
    pub o_direct_error: Option<String>,
}

fn page_size() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Pages of `file` (of `size` bytes) resident in the page cache, via mmap + mincore.
fn resident_pages(file: &File, size: u64) -> std::io::Result<u64> {
    if size == 0 {
        return Ok(0);
    }
    let len = usize::try_from(size)
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // Unmapped below.
    let addr: *mut libc::c_void =
        warpfs::engine::mapped::map_shared_read_only(file.as_raw_fd(), len)?
            .as_ptr()
            .cast();
    let pages = len.div_ceil(page_size() as usize);
    let mut vec = vec![0u8; pages];
    // SAFETY: `addr` maps `len` bytes; `vec` has one byte per page of that range.
    let rc = unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: unmapping exactly the mapping created above.
    unsafe { libc::munmap(addr, len) };
    if rc != 0 {
        return Err(err);
    }
    Ok(vec.iter().filter(|&&b| b & 1 != 0).count() as u64)
}

/// Tries one aligned O_DIRECT read of up to 4 KiB at offset 0.
fn try_o_direct(path: &Path) -> std::result::Result<(), String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .map_err(|e| format!("open with O_DIRECT: {e}"))?;
    let layout = std::alloc::Layout::from_size_align(4096, 4096).expect("valid layout");
    // SAFETY: non-zero size layout; freed below.
    let buf = unsafe { std::alloc::alloc(layout) };
    if buf.is_null() {
        return Err("out of memory".into());
    }
    // SAFETY: `buf` is 4096 writable bytes, 4096-aligned, as O_DIRECT needs.
    let n = unsafe { libc::pread(f.as_raw_fd(), buf.cast(), 4096, 0) };
    let err = std::io::Error::last_os_error();
    // SAFETY: allocated above with the same layout.
    unsafe { std::alloc::dealloc(buf, layout) };
    if n < 0 {
        return Err(format!("aligned 4 KiB O_DIRECT read: {err}"));
    }
    Ok(())
}

fn filesystem(file: &File) -> String {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: valid fd and out-pointer.
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return "unknown".into();
    }
    let magic = st.f_type as u64;
    match magic {
        0xEF53 => "ext4".into(),
        0x5846_5342 => "xfs".into(),
        0x9123_683E => "btrfs".into(),
        0x0102_1994 => "tmpfs".into(),
        0x794C_7630 => "overlayfs".into(),
        0x6969 => "nfs".into(),
        0x2FC1_2FC1 => "zfs".into(),
        0x6573_5546 => "fuse".into(),
        other => format!("unknown (magic {other:#x})"),
    }
}

/// Gathers the facts about `path`.
pub fn stat(path: &Path) -> Result<FileStat> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            bail!(
                "cannot stat {}: no such file; check the path",
                path.display()
            )
        }
        Err(e) => bail!(
            "cannot open {}: {e}; check the path and that this user may read it",
            path.display()
        ),
    };
    let meta = file.metadata().ctx(|| format!("stat {}", path.display()))?;
    if !meta.is_file() {
        bail!(
            "{} is not a regular file; warpfs serves regular files",
            path.display()
        );
    }
    let size = meta.len();
    let (o_direct, o_direct_error) = match try_o_direct(path) {
        Ok(()) => (true, None),
        Err(e) => (false, Some(e)),
    };
    Ok(FileStat {
        path: path.display().to_string(),
        size,
        filesystem: filesystem(&file),
        pages: size.div_ceil(page_size()),
        resident_pages: resident_pages(&file, size).ok(),
        o_direct,
        o_direct_error,
    })
}

/// `warpfs stat`. Returns the exit code.
pub fn run(args: &StatArgs) -> Result<i32> {
    let s = stat(&args.file)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s).expect("serialises"));
        return Ok(0);
    }
    println!("file        {}", s.path);
    println!("size        {} ({} bytes)", fmt_bytes(s.size), s.size);
    println!("filesystem  {}", s.filesystem);
    match s.resident_pages {
        Some(r) if s.pages > 0 => println!(
            "page cache  {r} of {} pages resident ({:.1}%)",
            s.pages,
            100.0 * r as f64 / s.pages as f64
        ),
        Some(_) => println!("page cache  empty file"),
        None => println!("page cache  unknown (mincore failed)"),
    }
    match &s.o_direct_error {
        None => println!("O_DIRECT    works"),
        Some(e) => println!("O_DIRECT    does not work: {e}"),
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stat_of_own_binary_and_missing_file() {
        let exe = std::env::current_exe().unwrap();
        let s = super::stat(&exe).unwrap();
        assert!(s.size > 0 && s.pages > 0);
        let e = super::stat(std::path::Path::new("/nonexistent/warpfs")).unwrap_err();
        assert!(e.0.contains("no such file"), "{e}");
    }
}
