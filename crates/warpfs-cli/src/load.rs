//! `warpfs load FILE`: the whole file into GPU memory through the CUDA bulk path; prints the
//! rate, the CPU threads, the path chosen and why, and with `--verify` compares a checksum
//! computed on the GPU with one the CPU computes from a plain read of the file. A safetensors
//! file (by extension or header) loads tensor by tensor instead ([`safetensors`]).

use crate::cli::{LoadArgs, LoadFormat};
use crate::error::{Context, Result};
use std::io::Read;
use std::path::Path;

#[cfg(feature = "cuda")]
mod safetensors;

/// The bulk engine's settings: the library's defaults with `--threads`.
#[cfg(feature = "cuda")]
fn engine_config(args: &LoadArgs) -> Result<warpfs::backend::cuda::BulkConfig> {
    let mut cfg = warpfs::backend::cuda::BulkConfig::default();
    if let Some(t) = args.threads {
        if t == 0 {
            crate::error::bail!("--threads must be at least 1");
        }
        cfg.threads = t;
    }
    Ok(cfg)
}

/// Whether `warpfs load` should treat `path` as a safetensors file: `--format` if given, else
/// the `.safetensors` extension, else a header sniff (a plausible length, then `{`).
#[cfg_attr(not(feature = "cuda"), allow(dead_code))]
pub fn is_safetensors(path: &Path, format: LoadFormat) -> Result<bool> {
    match format {
        LoadFormat::Raw => return Ok(false),
        LoadFormat::Safetensors => return Ok(true),
        LoadFormat::Auto => {}
    }
    if path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("safetensors"))
    {
        return Ok(true);
    }
    let mut f = std::fs::File::open(path).ctx(|| format!("opening {}", path.display()))?;
    let size = f.metadata()?.len();
    let mut head = Vec::with_capacity(9);
    f.by_ref().take(9).read_to_end(&mut head)?;
    Ok(warpfs::safetensors::sniff(&head, size))
}

/// `warpfs load` in a build without CUDA: says how to get it.
#[cfg(not(feature = "cuda"))]
pub fn run(_args: &LoadArgs) -> Result<i32> {
    crate::error::bail!(
        "`warpfs load` needs the cuda backend, which this build does not have; rebuild with \
         `cargo build --release -p warpfs-cli --features cuda` (needs an NVIDIA driver to run)"
    )
}

/// `warpfs load`. Returns the exit code (1 if the checksums differ).
#[cfg(feature = "cuda")]
pub fn run(args: &LoadArgs) -> Result<i32> {
    use crate::error::{bail, EXIT_MISMATCH};
    use crate::units::fmt_bytes;
    use std::time::Instant;
    use warpfs::backend::cuda::{self, checksum, BulkFile, ChecksumKernel, CudaBulk};

    if let Err(e) = cuda::driver::init() {
        bail!("{e}");
    }
    if is_safetensors(&args.file, args.format)? {
        return safetensors::run(args);
    }
    let file = BulkFile::open(&args.file)?;
    let size = file.size()?;
    let len = usize::try_from(size).ctx(|| "file size".into())?;
    let cfg = engine_config(args)?;
    let t = Instant::now();
    let eng = CudaBulk::new(args.device, cfg).ctx(|| "starting the CUDA bulk engine".into())?;
    let setup = t.elapsed();
    let mut dst = eng.alloc(len).ctx(|| {
        format!(
            "allocating {} of GPU memory for {}; the file must fit in free GPU memory",
            fmt_bytes(size),
            args.file.display()
        )
    })?;
    if args.verify {
        dst.fill(0xA5).map_err(warpfs::Error::from)?; // poison: bytes the load misses cannot match by chance
    }
    let r = eng.read(&file, 0, &mut dst, 0, size)?;
    if r.bytes != size {
        bail!(
            "read {} of {} bytes: the file shrank while loading; try again",
            r.bytes,
            size
        );
    }
    let c = eng.config();
    let state = if r.cached_bytes == r.bytes {
        "warm: all from the page cache"
    } else if r.cached_bytes == 0 {
        "cold: none in the page cache"
    } else {
        "partly cached"
    };

    let verify = if args.verify {
        let t = Instant::now();
        let mut k = ChecksumKernel::new(eng.context())?;
        let setup_k = t.elapsed();
        let t = Instant::now();
        let gpu = k.checksum(&dst, size)?;
        let gpu_s = t.elapsed();
        let t = Instant::now();
        let (cpu, n) = checksum::checksum_file(&args.file, Some(size), 16)?;
        let cpu_s = t.elapsed();
        if n != size {
            bail!("the file shrank while verifying; try again");
        }
        Some((gpu, cpu, setup_k, gpu_s, cpu_s))
    } else {
        None
    };
    let ok = verify.is_none_or(|(g, c, ..)| g == c);

    if args.json {
        let v = verify.map(|(g, cpu, sk, gs, cs)| {
            serde_json::json!({
                "ok": g == cpu,
                "gpu_checksum": format!("{g:#018x}"),
                "cpu_checksum": format!("{cpu:#018x}"),
                "kernel_setup_seconds": sk.as_secs_f64(),
                "gpu_seconds": gs.as_secs_f64(),
                "cpu_seconds": cs.as_secs_f64(),
            })
        });
        let j = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "file": args.file.display().to_string(),
            "device": eng.context().name(),
            "bytes": r.bytes,
            "seconds": r.elapsed.as_secs_f64(),
            "gbps": r.gb_per_s(),
            "threads": r.threads,
            "path": r.path,
            "path_reason": r.path_reason,
            "gds_bytes": r.gds_bytes,
            "cached_bytes": r.cached_bytes,
            "direct_bytes": r.direct_bytes,
            "buffered_bytes": r.buffered_bytes,
            "setup_seconds": setup.as_secs_f64(),
            "config": {
                "threads": c.threads,
                "chunk_bytes": c.chunk_bytes,
                "buffers_per_thread": c.buffers_per_thread,
                "cold_reads": format!("{:?}", c.cold_reads),
                "readahead_bytes": c.readahead_bytes,
                "streams": c.streams,
                "staging": format!("{:?}", c.staging),
            },
            "verify": v,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&j).expect("report serialises")
        );
    } else {
        println!(
            "loaded {}: {} in {:.3} s = {:.2} GB/s into GPU memory ({})",
            args.file.display(),
            fmt_bytes(r.bytes),
            r.elapsed.as_secs_f64(),
            r.gb_per_s(),
            eng.context().name()
        );
        println!("  path: {} — {}", r.path, r.path_reason);
        println!(
            "  CPU threads: {} · {} chunks × {} pinned staging buffers per thread · engine setup {:.0} ms",
            r.threads,
            fmt_bytes(c.chunk_bytes as u64),
            c.buffers_per_thread,
            setup.as_secs_f64() * 1e3
        );
        println!(
            "  {state} (cached {}, O_DIRECT {}, buffered {})",
            fmt_bytes(r.cached_bytes),
            fmt_bytes(r.direct_bytes),
            fmt_bytes(r.buffered_bytes)
        );
        if let Some((g, cpu, sk, gs, cs)) = verify {
            if g == cpu {
                println!(
                    "  verify: OK — GPU checksum {g:#018x} = CPU checksum (kernel compile {:.0} ms, GPU {:.1} ms, CPU read + sum {:.2} s)",
                    sk.as_secs_f64() * 1e3,
                    gs.as_secs_f64() * 1e3,
                    cs.as_secs_f64()
                );
            } else {
                println!(
                    "  verify: FAILED — GPU checksum {g:#018x}, CPU checksum {cpu:#018x}: the bytes in GPU memory differ from the file"
                );
            }
        }
    }
    Ok(if ok { 0 } else { EXIT_MISMATCH })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_safetensors_by_name_header_or_flag() {
        let d = std::env::temp_dir().join(format!("warpfs-load-detect-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let (mut st, data) = warpfs::safetensors::encode_header(
            &[("w", warpfs::safetensors::Dtype::U8, &[4])],
            None,
        )
        .unwrap();
        st.resize(st.len() + data as usize, 1);
        let named = d.join("m.safetensors");
        let unnamed = d.join("m.bin");
        let raw = d.join("raw.bin");
        std::fs::write(&named, b"anything").unwrap();
        std::fs::write(&unnamed, &st).unwrap();
        std::fs::write(&raw, vec![7u8; 100]).unwrap();
        assert!(is_safetensors(&named, LoadFormat::Auto).unwrap());
        assert!(is_safetensors(&unnamed, LoadFormat::Auto).unwrap());
        assert!(!is_safetensors(&raw, LoadFormat::Auto).unwrap());
        assert!(!is_safetensors(&unnamed, LoadFormat::Raw).unwrap());
        assert!(is_safetensors(&raw, LoadFormat::Safetensors).unwrap());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
