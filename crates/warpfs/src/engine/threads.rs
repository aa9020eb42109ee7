//! Portable thread-pool engine: `pread`/`pwrite`/`fdatasync` on pool threads.
