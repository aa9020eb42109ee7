//! The CLI's error: a message that says what went wrong and what to do, plus an exit code.

use std::fmt;

/// Exit code for a run whose reads or writes returned wrong bytes.
pub const EXIT_MISMATCH: i32 = 1;
/// Exit code for an error (bad arguments, I/O failure, missing backend).
pub const EXIT_ERROR: i32 = 2;

/// An error to print before exiting with [`EXIT_ERROR`].
#[derive(Debug)]
pub struct CliError(pub String);

/// Result alias of the CLI.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CliError {}

impl From<warpfs::Error> for CliError {
    fn from(e: warpfs::Error) -> Self {
        CliError(e.to_string())
    }
}

impl From<warpfs::safetensors::SafetensorsError> for CliError {
    fn from(e: warpfs::safetensors::SafetensorsError) -> Self {
        CliError(e.to_string())
    }
}

impl From<warpfs::graph::GraphError> for CliError {
    fn from(e: warpfs::graph::GraphError) -> Self {
        CliError(e.to_string())
    }
}

impl From<std::io::Error> for CliError {
    fn from(e: std::io::Error) -> Self {
        CliError(e.to_string())
    }
}

/// Adds what was being done to an error: `"reading FILE: <cause>"`.
pub trait Context<T> {
    /// Prefixes the error with `what()`.
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CliError(format!("{}: {e}", what())))
    }
}

/// Returns early with a formatted [`CliError`].
macro_rules! bail {
    ($($arg:tt)*) => { return Err($crate::error::CliError(format!($($arg)*))) };
}
pub(crate) use bail;
