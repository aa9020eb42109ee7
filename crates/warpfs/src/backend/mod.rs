//! Backends: how a class of requester (CPU agents, CUDA kernels, WGSL shaders) reaches the daemon.

pub mod host;
#[cfg(feature = "cuda")] pub mod cuda;
