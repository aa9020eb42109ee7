//! The file a benchmark runs on: a fresh temporary file of pattern content (removed afterwards,
//! even if the run is interrupted), or the user's `--file`.

use crate::error::{bail, Context, Result};
use crate::expected::Expected;
use crate::units::fmt_bytes;
use crate::{pattern, system};
use indicatif::ProgressBar;
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// Bytes per plain write/read while creating or warming the file.
pub const CHUNK: usize = 4 << 20;

/// A benchmark's file.
#[derive(Debug)]
pub struct TestFile {
    /// Where the user would look for it (the temp path, or `--file`).
    pub shown: PathBuf,
    /// The path other openers use: `/proc/self/fd/N` for an already-unlinked temp file.
    open_path: PathBuf,
    /// Size in bytes.
    pub size: u64,
    /// Whether this run created it (and removes it).
    pub temporary: bool,
    /// Whether it holds warpfs pattern content (so reads are checked without a second read).
    pub pattern: bool,
    /// Kept open: it keeps an unlinked temp file alive, and `/proc/self/fd/N` names it.
    file: File,
    /// Removed on drop when unlinking early was not possible.
    remove_on_drop: Option<PathBuf>,
}

impl TestFile {
    /// Creates a `size`-byte pattern file in `dir`, reporting progress on `bar`.
    pub fn create(dir: &Path, size: u64, bar: &ProgressBar) -> Result<Self> {
        if size < 1 << 20 {
            bail!("--size {size} is too small: use at least 1M");
        }
        if !dir.is_dir() {
            bail!(
                "--dir {}: no such directory; create it or pass another --dir",
                dir.display()
            );
        }
        let free =
            system::free_space(dir).ctx(|| format!("checking free space in {}", dir.display()))?;
        if free < size + (64 << 20) {
            bail!(
                "not enough disk space for the test file: {} has {} free, the test file needs {} \
                 (+64 MiB headroom); use --dir to put it elsewhere or --size to make it smaller",
                dir.display(),
                fmt_bytes(free),
                fmt_bytes(size)
            );
        }
        let name = format!(
            "warpfs-bench-{}-{:08x}.dat",
            std::process::id(),
            rand::random::<u32>()
        );
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)
            .ctx(|| {
                format!(
                    "creating the test file {} (use --dir to put it in a writable directory)",
                    path.display()
                )
            })?;
        // Unlink at once and reach it through /proc from now on: nothing is left behind even
        // if the run is killed. Without /proc, remove it when done.
        let proc_path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let (open_path, remove_on_drop) =
            if proc_path.exists() && std::fs::remove_file(&path).is_ok() {
                (proc_path, None)
            } else {
                (path.clone(), Some(path.clone()))
            };
        let tf = TestFile {
            shown: path,
            open_path,
            size,
            temporary: true,
            pattern: true,
            file,
            remove_on_drop,
        };
        tf.write_pattern(bar)?;
        Ok(tf)
    }

    fn write_pattern(&self, bar: &ProgressBar) -> Result<()> {
        let mut buf = vec![0u8; CHUNK];
        let mut off = 0u64;
        while off < self.size {
            let n = (self.size - off).min(CHUNK as u64) as usize;
            pattern::fill(pattern::FILE_SEED, off, &mut buf[..n]);
            if let Err(e) = self.file.write_all_at(&buf[..n], off) {
                if e.raw_os_error() == Some(libc::ENOSPC) {
                    bail!("the disk filled up while writing the test file; use --dir to put it elsewhere or --size to make it smaller");
                }
                bail!("writing the test file {}: {e}", self.shown.display());
            }
            off += n as u64;
            bar.set_position(off);
        }
        bar.finish_and_clear();
        Ok(())
    }

    /// Uses an existing file. Its content is the reference unless it is a warpfs pattern file.
    pub fn existing(path: &Path) -> Result<Self> {
        let file = File::open(path).ctx(|| {
            format!(
                "cannot open --file {}; check the path and permissions",
                path.display()
            )
        })?;
        let meta = file.metadata().ctx(|| format!("stat {}", path.display()))?;
        if !meta.is_file() {
            bail!("--file {} is not a regular file", path.display());
        }
        let size = meta.len();
        if size < 4096 {
            bail!(
                "--file {} has {size} bytes; the benchmark needs at least 4 KiB",
                path.display()
            );
        }
        let pattern =
            looks_like_pattern(&file, size).ctx(|| format!("reading {}", path.display()))?;
        Ok(TestFile {
            shown: path.to_path_buf(),
            open_path: path.to_path_buf(),
            size,
            temporary: false,
            pattern,
            file,
            remove_on_drop: None,
        })
    }

    /// The path to open the file by (valid while `self` lives).
    pub fn open_path(&self) -> &Path {
        &self.open_path
    }

    /// What reads of this file must return.
    pub fn expected(&self) -> Result<Expected> {
        if self.pattern {
            Ok(Expected::Pattern(pattern::FILE_SEED))
        } else {
            Ok(Expected::Reference(
                File::open(&self.open_path).ctx(|| format!("opening {}", self.shown.display()))?,
            ))
        }
    }

    /// Reads the whole file once with plain reads so it sits in the page cache.
    pub fn warm(&self, bar: &ProgressBar) -> Result<()> {
        let mut f =
            File::open(&self.open_path).ctx(|| format!("opening {}", self.shown.display()))?;
        let mut buf = vec![0u8; CHUNK];
        let mut done = 0u64;
        loop {
            let n = f
                .read(&mut buf)
                .ctx(|| format!("warming {} into the page cache", self.shown.display()))?;
            if n == 0 {
                break;
            }
            done += n as u64;
            bar.set_position(done);
        }
        bar.finish_and_clear();
        Ok(())
    }
}

impl Drop for TestFile {
    fn drop(&mut self) {
        if let Some(p) = self.remove_on_drop.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Whether the file's first, middle and last 4 KiB hold pattern content.
fn looks_like_pattern(file: &File, size: u64) -> std::io::Result<bool> {
    let mut buf = vec![0u8; 4096];
    for off in [0, (size / 2) & !4095, (size - 4096) & !4095] {
        file.read_exact_at(&mut buf, off)?;
        if pattern::count_wrong(pattern::FILE_SEED, off, &buf) != 0 {
            return Ok(false);
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_file_has_pattern_content_and_leaves_nothing_behind() {
        let dir = std::env::temp_dir();
        let tf = TestFile::create(&dir, 1 << 20, &ProgressBar::hidden()).unwrap();
        let shown = tf.shown.clone();
        let exp = tf.expected().unwrap();
        let data = std::fs::read(tf.open_path()).unwrap();
        assert_eq!(data.len(), 1 << 20);
        assert_eq!(exp.wrong_bytes(0, &data).unwrap(), 0);
        let again = TestFile::existing(tf.open_path()).unwrap();
        assert!(
            again.pattern,
            "a file written by create is recognised as a pattern file"
        );
        drop(again);
        drop(tf);
        assert!(!shown.exists(), "the temp file must be gone after the run");
    }

    #[test]
    fn too_little_space_or_missing_dir_says_what_to_do() {
        let e = TestFile::create(
            Path::new("/nonexistent-warpfs-dir"),
            1 << 20,
            &ProgressBar::hidden(),
        )
        .unwrap_err();
        assert!(e.0.contains("--dir"), "{e}");
        let e =
            TestFile::create(&std::env::temp_dir(), 1 << 62, &ProgressBar::hidden()).unwrap_err();
        assert!(e.0.contains("--dir") && e.0.contains("--size"), "{e}");
    }
}
