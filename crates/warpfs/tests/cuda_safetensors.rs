//! GPU tests of safetensors loading. They skip (with a message) without a CUDA driver; on the
//! H100 machine they write files whose every byte is a function of its file offset, load
//! them into poisoned device memory with one vectored call, copy everything back and check
//! every byte: each tensor's bytes, and the alignment padding still poisoned.
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use warpfs::backend::cuda::{
    available, checksum, pattern, BulkConfig, BulkFile, ChecksumKernel, CudaBulk, DeviceBuffer,
};
use warpfs::safetensors::{
    device_layout, encode_header, load_into, load_to_gpu, Dtype, Header, SafetensorsError,
};

const POISON: u8 = 0xA5;

/// A tensor to write: name, dtype, shape.
type Spec<'a> = (&'a str, Dtype, &'a [u64]);

fn gpu() -> bool {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { cudarc::driver::sys::is_culib_present() } || !available() {
        println!("skipping: no CUDA driver on this machine");
        return false;
    }
    true
}

fn path(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("warpfs-cuda-st-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d.join(name)
}

/// Writes a safetensors file with `tensors`; the byte buffer holds the pattern of the file
/// offsets, so any byte read anywhere can be checked. Returns the path.
fn write_file(name: &str, tensors: &[Spec]) -> PathBuf {
    let (mut bytes, data) = encode_header(tensors, None).unwrap();
    let start = bytes.len();
    bytes.resize(start + data as usize, 0);
    pattern::fill(&mut bytes[start..], start as u64);
    let p = path(name);
    std::fs::write(&p, &bytes).unwrap();
    p
}

fn host(b: &DeviceBuffer) -> Vec<u8> {
    let mut v = vec![0u8; b.len()];
    b.copy_to_host(0, &mut v).unwrap();
    v
}

/// Every tensor's bytes equal the file's; every byte between tensors is still poison.
fn check(name: &str, header: &Header, back: &[u8]) {
    let (tensors, total) = device_layout(header);
    assert!(back.len() as u64 >= total);
    let mut covered = vec![false; back.len()];
    for t in &tensors {
        let got = &back[t.offset as usize..(t.offset + t.len) as usize];
        assert_eq!(
            pattern::first_mismatch(got, t.file_offset),
            None,
            "{name}: tensor {} (device offset {}, file offset {})",
            t.name,
            t.offset,
            t.file_offset
        );
        covered[t.offset as usize..(t.offset + t.len) as usize].fill(true);
    }
    for (i, (&b, &c)) in back.iter().zip(&covered).enumerate() {
        assert!(c || b == POISON, "{name}: padding byte {i} was written");
    }
}

fn engine() -> CudaBulk {
    // Small chunks, several threads: a few MiB of tensors cut into many chunks that cross
    // tensor boundaries.
    CudaBulk::new(
        0,
        BulkConfig {
            threads: 4,
            chunk_bytes: 64 * 1024,
            ..BulkConfig::default()
        },
    )
    .expect("engine")
}

#[test]
fn every_tensor_lands_at_its_offset() {
    if !gpu() {
        return;
    }
    let eng = engine();
    let cases: Vec<(&str, Vec<Spec>)> = vec![
        (
            "mixed",
            vec![
                ("embed", Dtype::BF16, &[1000, 333]),
                ("odd", Dtype::U8, &[3]),
                ("scalar", Dtype::F32, &[]),
                ("empty", Dtype::F16, &[0, 9]),
                ("w", Dtype::F32, &[257, 129]),
                ("tiny", Dtype::I8, &[1]),
                ("f4", Dtype::F4, &[7, 2]),
                ("big", Dtype::F64, &[300_001]),
            ],
        ),
        (
            "aligned",
            vec![
                ("a", Dtype::BF16, &[512, 1024]),
                ("b", Dtype::BF16, &[512, 1024]),
                ("c", Dtype::F32, &[64]),
            ],
        ),
        ("none", vec![]),
    ];
    for (name, tensors) in &cases {
        let p = write_file(name, tensors);
        let header = Header::read(&p).unwrap();
        let (_, total) = device_layout(&header);
        let file = BulkFile::open(&p).unwrap();
        let mut dst = eng.alloc(total as usize + 4096).unwrap();
        dst.fill(POISON).unwrap();
        let (got, report) = load_into(&eng, &file, &header, &mut dst).unwrap();
        assert_eq!(got.len(), tensors.len());
        assert_eq!(report.bytes, header.data_len, "{name}");
        check(name, &header, &host(&dst));

        // The per-tensor GPU checksum `warpfs load --verify` uses agrees with the CPU's over
        // the file bytes (and catches a tensor whose bytes are off by one position).
        let file_bytes = std::fs::read(&p).unwrap();
        match ChecksumKernel::new(eng.context()) {
            Ok(mut k) => {
                for t in &got {
                    let want = checksum::checksum(
                        &file_bytes[t.file_offset as usize..(t.file_offset + t.len) as usize],
                    );
                    assert_eq!(k.checksum_range(&dst, t.offset, t.len).unwrap(), want);
                    if t.len > 1 && ((t.file_offset + t.len) as usize) < file_bytes.len() {
                        let shifted = checksum::checksum(
                            &file_bytes
                                [t.file_offset as usize + 1..(t.file_offset + t.len) as usize + 1],
                        );
                        assert_ne!(shifted, want);
                    }
                }
                assert!(k.checksum_range(&dst, dst.len() as u64, 1).is_err());
            }
            Err(e) => println!("skipping GPU checksums: {e}"),
        }

        // The one-call API: same bytes, named lookups.
        let loaded = load_to_gpu(&eng, &p).unwrap();
        assert_eq!(loaded.report.bytes, header.data_len);
        assert_eq!(loaded.tensors, got);
        for (tn, dt, shape) in tensors {
            let t = loaded.get(tn).unwrap();
            assert_eq!((t.dtype, &t.shape[..]), (*dt, *shape));
            assert!(t.offset.is_multiple_of(256));
            let mut v = vec![0u8; t.len as usize];
            loaded
                .buffer
                .copy_to_host(t.offset as usize, &mut v)
                .unwrap();
            assert_eq!(
                pattern::first_mismatch(&v, t.file_offset),
                None,
                "{name}/{tn}"
            );
        }
    }
}

#[test]
fn bad_files_are_refused_before_any_gpu_work() {
    if !gpu() {
        return;
    }
    let eng = engine();
    let p = write_file("trunc", &[("a", Dtype::F32, &[1024])]);
    let len = std::fs::metadata(&p).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&p)
        .unwrap()
        .set_len(len - 1)
        .unwrap();
    assert!(matches!(
        load_to_gpu(&eng, &p),
        Err(SafetensorsError::PastEnd { .. })
    ));
    let q = path("garbage");
    std::fs::write(&q, b"not a safetensors file at all").unwrap();
    assert!(load_to_gpu(&eng, &q).is_err());
}
