//! Backends: how a class of requester (CPU agents, CUDA kernels, WGSL shaders) reaches the daemon.

#[cfg(feature = "cuda")]
pub mod cuda;
pub mod host;
#[cfg(feature = "wgpu")]
pub mod wgpu;
