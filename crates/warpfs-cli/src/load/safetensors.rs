//! `warpfs load FILE.safetensors`: validate the header, move every tensor into one device
//! buffer with one vectored bulk call, report tensors, bytes, GB/s and CPU threads; with
//! `--verify`, compare each tensor's checksum computed on the GPU (over its device bytes) with
//! the CPU's over the same file range, read with plain `pread`.

use crate::cli::LoadArgs;
use crate::error::{bail, Context, Result, EXIT_MISMATCH};
use crate::units::fmt_bytes;
use std::path::Path;
use std::time::Instant;
use warpfs::backend::cuda::{checksum, BulkFile, ChecksumKernel, CudaBulk};
use warpfs::safetensors::{device_layout, load_into, DeviceTensor, Header};

/// Poison written into the device buffer before a verified load.
const POISON: u8 = 0xA5;

/// What `--verify` found.
struct Verify {
    checked: usize,
    mismatched: Vec<String>,
    gpu_s: f64,
    cpu_s: f64,
}

/// Runs the command. Returns the exit code (1 if a tensor's bytes differ).
pub fn run(args: &LoadArgs) -> Result<i32> {
    // The engine (context, streams, pinned staging) is built once per process and reused by
    // every load, so it is timed apart; a load is header + allocation + transfer.
    let cfg = super::engine_config(args)?;
    let t = Instant::now();
    let eng = CudaBulk::new(args.device, cfg).ctx(|| "starting the CUDA bulk engine".into())?;
    let setup = t.elapsed();
    let t = Instant::now();
    let header = Header::read(&args.file)?;
    let parse_s = t.elapsed().as_secs_f64();
    let file = BulkFile::open(&args.file)?;
    let (_, bytes) = device_layout(&header);
    let len = usize::try_from(bytes).ctx(|| "tensor bytes".into())?;
    let mut dst = eng.alloc(len).ctx(|| {
        format!(
            "allocating {} of GPU memory for the {} tensors of {}; they must fit in free GPU memory",
            fmt_bytes(bytes),
            header.tensors.len(),
            args.file.display()
        )
    })?;
    let prep_s = t.elapsed().as_secs_f64();
    if args.verify {
        // Poison: bytes the load misses cannot match by chance.
        dst.fill(POISON).map_err(warpfs::Error::from)?;
    }
    let (tensors, r) = load_into(&eng, &file, &header, &mut dst)?;
    // Header read + parse + allocation + transfer (the poisoning of --verify left out).
    let load_s = prep_s + r.elapsed.as_secs_f64();
    let verify = if args.verify {
        Some(verify(&eng, &dst, &tensors, &args.file)?)
    } else {
        None
    };
    let ok = verify.as_ref().is_none_or(|v| v.mismatched.is_empty());
    let state = if r.cached_bytes == r.bytes {
        "warm: all from the page cache"
    } else if r.cached_bytes == 0 {
        "cold: none in the page cache"
    } else {
        "partly cached"
    };
    let c = eng.config();
    if args.json {
        let v = verify.as_ref().map(|v| {
            serde_json::json!({
                "ok": v.mismatched.is_empty(),
                "tensors_checked": v.checked,
                "mismatched": v.mismatched,
                "gpu_seconds": v.gpu_s,
                "cpu_seconds": v.cpu_s,
            })
        });
        let j = serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "format": "safetensors",
            "file": args.file.display().to_string(),
            "device": eng.context().name(),
            "tensors": tensors.len(),
            "bytes": r.bytes,
            "device_bytes": bytes,
            "header_bytes": header.header_len,
            "seconds": r.elapsed.as_secs_f64(),
            "gbps": r.gb_per_s(),
            "threads": r.threads,
            "path": r.path,
            "path_reason": r.path_reason,
            "gds_bytes": r.gds_bytes,
            "cached_bytes": r.cached_bytes,
            "direct_bytes": r.direct_bytes,
            "buffered_bytes": r.buffered_bytes,
            "header_parse_seconds": parse_s,
            "load_seconds": load_s,
            "load_gbps": r.bytes as f64 / load_s.max(1e-9) / 1e9,
            "setup_seconds": setup.as_secs_f64(),
            "config": {
                "threads": c.threads,
                "chunk_bytes": c.chunk_bytes,
                "buffers_per_thread": c.buffers_per_thread,
                "cold_reads": format!("{:?}", c.cold_reads),
            },
            "verify": v,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&j).expect("report serialises")
        );
    } else {
        println!(
            "loaded {} (safetensors): {} tensors, {} in {:.3} s = {:.2} GB/s into GPU memory ({})",
            args.file.display(),
            tensors.len(),
            fmt_bytes(r.bytes),
            r.elapsed.as_secs_f64(),
            r.gb_per_s(),
            eng.context().name()
        );
        println!(
            "  one vectored call, one device buffer of {} (tensors 256-byte aligned); header {} parsed in {:.1} ms",
            fmt_bytes(bytes),
            fmt_bytes(header.header_len),
            parse_s * 1e3
        );
        println!(
            "  whole load (header + allocation + transfer): {:.3} s = {:.2} GB/s",
            load_s,
            r.bytes as f64 / load_s.max(1e-9) / 1e9
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
        if let Some(v) = &verify {
            if v.mismatched.is_empty() {
                println!(
                    "  verify: OK — {} tensors, GPU checksum of each = CPU checksum of its file bytes (GPU {:.1} ms, CPU read + sum {:.2} s)",
                    v.checked,
                    v.gpu_s * 1e3,
                    v.cpu_s
                );
            } else {
                println!(
                    "  verify: FAILED — {} of {} tensors differ from the file, e.g. {:?}",
                    v.mismatched.len(),
                    v.checked,
                    &v.mismatched[..v.mismatched.len().min(5)]
                );
            }
        }
    }
    Ok(if ok { 0 } else { EXIT_MISMATCH })
}

/// Checks every tensor: GPU checksum of its device bytes against the CPU's of its file range.
fn verify(
    eng: &CudaBulk,
    dst: &warpfs::backend::cuda::DeviceBuffer,
    tensors: &[DeviceTensor],
    path: &Path,
) -> Result<Verify> {
    let mut k = ChecksumKernel::new(eng.context())?;
    let t = Instant::now();
    let mut gpu = Vec::with_capacity(tensors.len());
    for tn in tensors {
        gpu.push(k.checksum_range(dst, tn.offset, tn.len)?);
    }
    let gpu_s = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let ranges: Vec<(u64, u64)> = tensors.iter().map(|t| (t.file_offset, t.len)).collect();
    let cpu = range_checksums(path, &ranges, 16)?;
    let cpu_s = t.elapsed().as_secs_f64();
    let mismatched = tensors
        .iter()
        .zip(gpu.iter().zip(&cpu))
        .filter(|(_, (g, c))| g != c)
        .map(|(t, _)| t.name.clone())
        .collect();
    Ok(Verify {
        checked: tensors.len(),
        mismatched,
        gpu_s,
        cpu_s,
    })
}

/// The checksum of each file range `(offset, len)`, as if each range were its own buffer
/// (`checksum::checksum_file_ranges`); an error if the file ends inside a range.
pub fn range_checksums(path: &Path, ranges: &[(u64, u64)], threads: usize) -> Result<Vec<u64>> {
    let sums = checksum::checksum_file_ranges(path, ranges, threads)?;
    if let Some((&(o, l), &(_, n))) = ranges.iter().zip(&sums).find(|(r, s)| s.1 != r.1) {
        bail!(
            "reading {} to verify: the file ends inside bytes {o}..{} (only {n} of {l} there)",
            path.display(),
            o + l
        );
    }
    Ok(sums.into_iter().map(|(c, _)| c).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checksums_match_memory() {
        let d = std::env::temp_dir().join(format!("warpfs-st-cksum-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("f");
        let mut v = vec![0u8; (8 << 20) * 2 + 12_345];
        warpfs::backend::cuda::pattern::fill(&mut v, 0);
        std::fs::write(&p, &v).unwrap();
        let ranges = [
            (0u64, 0u64),
            (3, 100),
            (1000, (8 << 20) + 77),
            (17, v.len() as u64 - 17),
        ];
        let got = range_checksums(&p, &ranges, 3).unwrap();
        for (g, &(o, l)) in got.iter().zip(&ranges) {
            assert_eq!(*g, checksum::checksum(&v[o as usize..(o + l) as usize]));
        }
        assert!(range_checksums(&p, &[(v.len() as u64 - 1, 2)], 2).is_err());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
