//! Facts about this machine that a run reports or checks: cores, free disk space, free memory.

use std::path::Path;

/// Logical cores available to this process.
pub fn cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// Bytes an unprivileged user may still write in the filesystem holding `dir`.
pub fn free_space(dir: &Path) -> std::io::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer for the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(st.f_bavail as u64 * st.f_frsize as u64)
}

/// `MemAvailable` from `/proc/meminfo`, if readable.
pub fn mem_available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Drops the OS page cache for a cold measurement: `sync` (so dirty pages can go too), then
/// `3 > /proc/sys/vm/drop_caches`. `Err(why)` when it cannot, e.g. "not root". Costs the time
/// to write back every dirty page of the machine.
pub fn drop_page_cache() -> std::result::Result<(), String> {
    let path = "/proc/sys/vm/drop_caches";
    // Writable only by root: ask before paying for the sync.
    if let Err(e) = std::fs::OpenOptions::new().write(true).open(path) {
        return Err(match e.kind() {
            std::io::ErrorKind::PermissionDenied => "not root".into(),
            _ => format!("{path}: {e}"),
        });
    }
    match std::process::Command::new("sync").status() {
        Ok(st) if st.success() => {}
        Ok(st) => return Err(format!("sync exited with {st}")),
        Err(e) => return Err(format!("running sync: {e}")),
    }
    std::fs::write(path, "3").map_err(|e| format!("{path}: {e}"))
}
