//! # warpfs — files for GPU programs
//!
//! Two ways in: the **bulk path** (host code moves a file range into a buffer, pipelined) and the
//! **request path** (requesters — host agents today, GPU threads in the `cuda`/`wgpu` backends —
//! post requests into shared-memory [`ring`]s that a CPU [`daemon`] serves from a host
//! [`cache`] tier backed by an I/O [`engine`]).
//!
//! Layers, each knowing only the one below: backend → daemon → cache → engine → files.
#![warn(missing_docs)]

pub mod abi;
pub mod backend;
pub mod bulk;
pub mod cache;
pub mod cache_refs;
pub mod channel;
pub mod completion;
pub mod daemon;
pub mod engine;
pub mod error;
pub mod files;
mod futex;
#[cfg(feature = "graph")]
pub mod graph;
pub mod readahead;
pub mod region;
pub mod ring;
pub mod runtime;
pub mod safetensors;
#[cfg(target_os = "linux")]
pub mod serve;
pub mod span;
mod sync;

pub use error::{Error, Result};
pub use files::OpenOptions;
pub use runtime::{FileHandle, Runtime, RuntimeConfig, Stats};
