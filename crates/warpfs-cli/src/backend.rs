//! `--backend`: which way requesters reach the daemon (`host` always; `cuda` and `wgpu` when
//! the build has their features).

use crate::error::{bail, Result};
use clap::ValueEnum;

/// Backends a command may ask for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BackendArg {
    /// The best backend present: cuda when this build has it and a CUDA device answers,
    /// else host.
    Auto,
    /// CPU threads act as the GPU's agents, through the same rings.
    Host,
    /// NVIDIA GPUs through CUDA (mapped pinned memory).
    Cuda,
    /// Any GPU through wgpu (Vulkan, Metal, lavapipe).
    Wgpu,
}

/// The backend that will run for `choice`, or an error telling the user what to do.
pub fn resolve(choice: BackendArg) -> Result<BackendArg> {
    match choice {
        BackendArg::Auto if cuda_present() => Ok(BackendArg::Cuda),
        BackendArg::Auto | BackendArg::Host => Ok(BackendArg::Host),
        // `warpfs bench --backend cuda` runs the seq phase through the CUDA bulk path.
        BackendArg::Cuda if cfg!(feature = "cuda") => Ok(BackendArg::Cuda),
        BackendArg::Cuda => {
            bail!("this build has no cuda backend; rebuild with --features cuda, or use --backend host")
        }
        // `warpfs bench --backend wgpu` runs a scan and random page reads from a WGSL shader.
        BackendArg::Wgpu if cfg!(feature = "wgpu") => Ok(BackendArg::Wgpu),
        BackendArg::Wgpu => bail!(
            "this build has no wgpu backend; rebuild with --features wgpu, or use --backend host"
        ),
    }
}

/// Whether this build has the cuda backend and a usable CUDA device (one `dlopen` + `cuInit`
/// the first time).
fn cuda_present() -> bool {
    #[cfg(feature = "cuda")]
    {
        warpfs::backend::cuda::available()
    }
    #[cfg(not(feature = "cuda"))]
    {
        false
    }
}

impl BackendArg {
    /// The name printed in reports.
    pub fn name(self) -> &'static str {
        match self {
            BackendArg::Auto => "auto",
            BackendArg::Host => "host",
            BackendArg::Cuda => "cuda",
            BackendArg::Wgpu => "wgpu",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auto_is_the_best_present_and_gpu_backends_say_how_to_get_them() {
        let best = if cuda_present() {
            BackendArg::Cuda
        } else {
            BackendArg::Host
        };
        assert_eq!(resolve(BackendArg::Auto).unwrap(), best);
        assert_eq!(resolve(BackendArg::Host).unwrap(), BackendArg::Host);
        if cfg!(feature = "wgpu") {
            assert_eq!(resolve(BackendArg::Wgpu).unwrap(), BackendArg::Wgpu);
        } else {
            let e = resolve(BackendArg::Wgpu).unwrap_err().0;
            assert!(e.contains("--features wgpu"), "{e}");
        }
        if cfg!(feature = "cuda") {
            assert_eq!(resolve(BackendArg::Cuda).unwrap(), BackendArg::Cuda);
        } else {
            let e = resolve(BackendArg::Cuda).unwrap_err().0;
            assert!(e.contains("--features cuda"), "{e}");
        }
    }
}
