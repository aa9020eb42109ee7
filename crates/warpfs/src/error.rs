//! Typed errors of the library. Every message says what went wrong and what to do about it.

use std::path::PathBuf;

/// Result alias of the warpfs library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in warpfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file could not be opened for registration.
    #[error("cannot open {path} for {mode}: {source}; check that the path exists and that this user may {mode} it")]
    Open {
        /// The path given.
        path: PathBuf,
        /// "reading", "writing" or "reading and writing".
        mode: &'static str,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A request named a handle that is not (or no longer) registered.
    #[error("file handle {0:#x} is not registered: open the file with Runtime::open before using it, and do not use it after close")]
    BadHandle(u32),
    /// A write or fsync on a handle registered without write access.
    #[error("the file was registered read-only: open it with OpenOptions::read_write() to write")]
    ReadOnly,
    /// A read on a handle registered write-only.
    #[error("the file was registered write-only: open it with OpenOptions::read_write() to read")]
    WriteOnly,
    /// An operation failed with an OS error number, as the daemon reported it.
    #[error("{op} failed: {} (errno {errno})", std::io::Error::from_raw_os_error(*errno))]
    Os {
        /// What was attempted.
        op: &'static str,
        /// The positive errno.
        errno: i32,
    },
    /// A plain I/O error from the host side (setup, bulk path).
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// A configuration value is out of range.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A buffer or range does not fit where it must go.
    #[error("invalid range: {0}")]
    Range(String),
    /// A wait passed its deadline; the daemon may be overloaded or stopped.
    #[error("timed out after {0:?} waiting for the warpfs daemon; it may be stopped or overloaded (raise the timeout or the worker count)")]
    Timeout(std::time::Duration),
    /// A channel server or its client broke the serving protocol, or could not be reached.
    #[error("warpfs channel service: {0}")]
    Serve(String),
    /// The runtime was shut down while the request was pending.
    #[error("the warpfs runtime is shut down; create a new Runtime")]
    Shutdown,
}

impl Error {
    /// Maps a daemon result (negative errno) of operation `op` to an error.
    pub fn from_result(op: &'static str, result: i64) -> Self {
        let errno = (-result).clamp(1, i32::MAX as i64) as i32;
        match errno {
            libc::EBADF => Error::Os { op, errno },
            libc::ESHUTDOWN => Error::Shutdown,
            _ => Error::Os { op, errno },
        }
    }

    /// The errno, if this error carries one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { errno, .. } => Some(*errno),
            Error::Io(e) | Error::Open { source: e, .. } => e.raw_os_error(),
            Error::Shutdown => Some(libc::ESHUTDOWN),
            _ => None,
        }
    }
}
