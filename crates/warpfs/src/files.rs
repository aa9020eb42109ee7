//! The file table: files as capabilities.
//!
//! The host registers a file (path + granted modes) and gets a handle; requests name only
//! handles, never paths. A handle carries a generation so a stale handle (closed, slot reused)
//! is rejected. Unregistering while requests are in flight is safe: requests hold an
//! `Arc<FileEntry>`, so they finish on the old descriptor, and later ones fail with `EBADF`.

use crate::error::{Error, Result};
use std::fs::File;
use std::os::fd::{AsRawFd, RawFd};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

/// Modes granted when registering a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenOptions {
    /// Requests may read.
    pub read: bool,
    /// Requests may write and fsync.
    pub write: bool,
    /// Create the file if it does not exist (needs `write`).
    pub create: bool,
    /// Truncate the file to 0 bytes when registering (needs `write`).
    pub truncate: bool,
    /// Allow `O_DIRECT` reads and writes (aligned middle direct, unaligned edges buffered).
    pub direct: bool,
}

impl OpenOptions {
    /// Read-only access.
    pub fn read_only() -> Self {
        Self {
            read: true,
            write: false,
            create: false,
            truncate: false,
            direct: false,
        }
    }
    /// Read and write access.
    pub fn read_write() -> Self {
        Self {
            read: true,
            write: true,
            create: false,
            truncate: false,
            direct: false,
        }
    }
    /// Write-only access.
    pub fn write_only() -> Self {
        Self {
            read: false,
            write: true,
            create: false,
            truncate: false,
            direct: false,
        }
    }
    /// Sets `create`.
    pub fn create(mut self, yes: bool) -> Self {
        self.create = yes;
        self
    }
    /// Sets `truncate`.
    pub fn truncate(mut self, yes: bool) -> Self {
        self.truncate = yes;
        self
    }
    /// Sets `direct` (O_DIRECT allowed).
    pub fn direct(mut self, yes: bool) -> Self {
        self.direct = yes;
        self
    }
    fn mode_words(&self) -> &'static str {
        match (self.read, self.write) {
            (true, true) => "reading and writing",
            (false, true) => "writing",
            _ => "reading",
        }
    }
}

/// A registered file. Shared by every request that names it.
#[derive(Debug)]
pub struct FileEntry {
    /// Unique id for the life of the process (cache keys use it; handles may be reused).
    pub id: u64,
    /// The handle requests name.
    pub handle: u32,
    /// The path it was opened from (host-side only; never sent to a device).
    pub path: PathBuf,
    /// Granted modes.
    pub options: OpenOptions,
    /// Buffered descriptor (page cache).
    pub file: File,
    /// `O_DIRECT` descriptor, when `options.direct` and the filesystem supports it.
    pub direct: Option<File>,
    /// Alignment `O_DIRECT` needs for offsets, lengths and buffers.
    pub dio_align: usize,
    /// A shared mapping of the whole file, made by the first read that wants it.
    #[cfg(target_os = "linux")]
    mapped: std::sync::OnceLock<Option<crate::engine::mapped::MappedFile>>,
}

impl FileEntry {
    /// The buffered descriptor.
    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
    /// The `O_DIRECT` descriptor, if any.
    pub fn direct_fd(&self) -> Option<RawFd> {
        self.direct.as_ref().map(|f| f.as_raw_fd())
    }
    /// Current size in bytes (one `fstat`).
    pub fn size(&self) -> std::io::Result<u64> {
        Ok(self.file.metadata()?.len())
    }
    /// A read-only shared mapping of the file as long as it is now, made on the first call
    /// (one `fstat` and one `mmap`); `None` for an empty or unreadable file or when mapping
    /// fails. The daemon copies small warm reads from it (`engine::mapped`).
    #[cfg(target_os = "linux")]
    pub fn mapping(&self) -> Option<&crate::engine::mapped::MappedFile> {
        self.mapped
            .get_or_init(|| {
                if !self.options.read {
                    return None;
                }
                crate::engine::mapped::MappedFile::new(self.fd(), self.size().ok()?)
            })
            .as_ref()
    }
    /// Whether requests may read.
    pub fn readable(&self) -> bool {
        self.options.read
    }
    /// Whether requests may write.
    pub fn writable(&self) -> bool {
        self.options.write
    }
}

const INDEX_BITS: u32 = 20;
const INDEX_MASK: u32 = (1 << INDEX_BITS) - 1;
const MAX_FILES: usize = 1 << INDEX_BITS;

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Arc<FileEntry>>>,
    generations: Vec<u32>,
    free: Vec<u32>,
}

/// Registered files by handle. Lookups take a read lock (no contention between readers).
#[derive(Default)]
pub struct FileTable {
    slots: RwLock<Slots>,
    next_id: AtomicU64,
    version: AtomicU64,
}

impl std::fmt::Debug for FileTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileTable").finish_non_exhaustive()
    }
}

impl FileTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens `path` with `options` and registers it. Costs one or two `open` calls.
    pub fn register(&self, path: impl AsRef<Path>, options: OpenOptions) -> Result<Arc<FileEntry>> {
        let path = path.as_ref();
        if !options.read && !options.write {
            return Err(Error::Config(
                "a file must be registered for reading, writing or both".into(),
            ));
        }
        if (options.create || options.truncate) && !options.write {
            return Err(Error::Config(
                "create and truncate need write access (OpenOptions::read_write())".into(),
            ));
        }
        let open_err = |source| Error::Open {
            path: path.to_path_buf(),
            mode: options.mode_words(),
            source,
        };
        let file = std::fs::OpenOptions::new()
            .read(options.read)
            .write(options.write)
            .create(options.create)
            .truncate(options.truncate)
            .open(path)
            .map_err(open_err)?;
        if file.metadata().map_err(open_err)?.is_dir() {
            return Err(open_err(std::io::Error::from_raw_os_error(libc::EISDIR)));
        }
        let direct = if options.direct {
            open_direct(path, &options)
        } else {
            None
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut s = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let index = match s.free.pop() {
            Some(i) => i,
            None => {
                if s.entries.len() >= MAX_FILES {
                    return Err(Error::Config(format!(
                        "at most {MAX_FILES} files can be registered at once; close some"
                    )));
                }
                s.entries.push(None);
                s.generations.push(0);
                (s.entries.len() - 1) as u32
            }
        };
        // Generations run 1..=4095 so that no valid handle is 0.
        let generation = s.generations[index as usize] % 4095 + 1;
        s.generations[index as usize] = generation;
        let handle = (generation << INDEX_BITS) | index;
        let entry = Arc::new(FileEntry {
            id,
            handle,
            path: path.to_path_buf(),
            options,
            file,
            direct,
            dio_align: 4096,
            #[cfg(target_os = "linux")]
            mapped: std::sync::OnceLock::new(),
        });
        s.entries[index as usize] = Some(entry.clone());
        self.version.fetch_add(1, Ordering::Release);
        Ok(entry)
    }

    /// The entry behind `handle`, if registered. Costs one uncontended read lock.
    pub fn get(&self, handle: u32) -> Option<Arc<FileEntry>> {
        let s = self.slots.read().unwrap_or_else(|p| p.into_inner());
        let e = s.entries.get((handle & INDEX_MASK) as usize)?.as_ref()?;
        (e.handle == handle).then(|| e.clone())
    }

    /// Removes `handle`; requests already holding the entry finish, later ones get `EBADF`.
    pub fn unregister(&self, handle: u32) -> Result<Arc<FileEntry>> {
        let mut s = self.slots.write().unwrap_or_else(|p| p.into_inner());
        let index = (handle & INDEX_MASK) as usize;
        match s.entries.get(index) {
            Some(Some(e)) if e.handle == handle => {
                let e = s.entries[index].take().expect("checked");
                s.free.push(index as u32);
                self.version.fetch_add(1, Ordering::Release);
                Ok(e)
            }
            _ => Err(Error::BadHandle(handle)),
        }
    }

    /// Changes whenever a file is registered or unregistered: lets readers keep a private
    /// handle → entry map and refresh it only when the table changed.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// Entries registered now (for flush and shutdown).
    pub fn entries(&self) -> Vec<Arc<FileEntry>> {
        let s = self.slots.read().unwrap_or_else(|p| p.into_inner());
        s.entries.iter().flatten().cloned().collect()
    }
}

#[cfg(target_os = "linux")]
fn open_direct(path: &Path, options: &OpenOptions) -> Option<File> {
    use std::os::unix::fs::OpenOptionsExt;
    match std::fs::OpenOptions::new()
        .read(options.read)
        .write(options.write)
        .custom_flags(libc::O_DIRECT)
        .open(path)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "O_DIRECT not supported here; this file is read through the page cache");
            None
        }
    }
}

#[cfg(not(target_os = "linux"))]
fn open_direct(_path: &Path, _options: &OpenOptions) -> Option<File> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmpfile(name: &str, bytes: &[u8]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("warpfs-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, bytes).unwrap();
        p
    }

    #[test]
    fn handles_are_capabilities_with_generations() {
        let t = FileTable::new();
        let p = tmpfile("a", b"hello");
        let a = t.register(&p, OpenOptions::read_only()).unwrap();
        assert!(a.handle != 0);
        assert_eq!(t.get(a.handle).unwrap().id, a.id);
        assert!(t.get(a.handle ^ 1).is_none());
        assert!(t.get(0).is_none());
        t.unregister(a.handle).unwrap();
        assert!(t.get(a.handle).is_none());
        assert!(matches!(t.unregister(a.handle), Err(Error::BadHandle(_))));
        // The slot is reused with a new generation: the old handle stays dead.
        let b = t.register(&p, OpenOptions::read_only()).unwrap();
        assert_eq!(b.handle & INDEX_MASK, a.handle & INDEX_MASK);
        assert_ne!(b.handle, a.handle);
        assert!(t.get(a.handle).is_none());
        // An in-flight holder of the old entry can still use its descriptor.
        assert_eq!(a.size().unwrap(), 5);
    }

    #[test]
    fn bad_paths_and_modes_are_clear_errors() {
        let t = FileTable::new();
        let e = t
            .register("/nonexistent/warpfs/x", OpenOptions::read_only())
            .unwrap_err();
        assert!(matches!(e, Error::Open { .. }));
        assert!(e.to_string().contains("/nonexistent/warpfs/x"));
        let p = tmpfile("b", b"");
        assert!(matches!(
            t.register(&p, OpenOptions::read_only().create(true)),
            Err(Error::Config(_))
        ));
        let dir = std::env::temp_dir();
        assert!(t.register(&dir, OpenOptions::read_only()).is_err());
    }
}
