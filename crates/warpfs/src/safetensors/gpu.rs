//! Loading a safetensors file into GPU memory: one device allocation, every tensor at a
//! 256-byte aligned offset of it (the alignment `cuMemAlloc` gives a buffer of its own), all
//! tensors moved by ONE [`CudaBulk::read_vectored`] call.
//!
//! Why one allocation: one `cuMemAlloc` instead of hundreds (real checkpoints hold 300–1000
//! tensors; each allocation costs µs to ms), and one vectored call lets the pipeline cut the
//! file into chunks across tensor boundaries, so small tensors share a `pread` and every thread
//! stays busy. Where every tensor's file offset is already a multiple of 256 (the usual case
//! for large tensors), the device layout is byte-for-byte the file's byte buffer.

use super::{Dtype, Header, Result, SafetensorsError};
use crate::backend::cuda::{BulkFile, CudaBulk, DeviceBuffer, Extent, TransferReport};
use std::path::Path;

/// Alignment of every tensor in the device buffer, bytes.
pub const DEVICE_ALIGN: u64 = 256;

/// One tensor in device memory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceTensor {
    /// Its name.
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions.
    pub shape: Vec<u64>,
    /// Where it starts in [`LoadedTensors::buffer`] (a multiple of [`DEVICE_ALIGN`]).
    pub offset: u64,
    /// Its size in bytes.
    pub len: u64,
    /// Where it starts in the file.
    pub file_offset: u64,
}

/// Every tensor of a file, in one device buffer.
#[derive(Debug)]
pub struct LoadedTensors {
    /// The device memory holding all tensors.
    pub buffer: DeviceBuffer,
    /// The tensors, in file order.
    pub tensors: Vec<DeviceTensor>,
    /// The validated header.
    pub header: Header,
    /// What the vectored read did (bytes, threads, GB/s, cache use).
    pub report: TransferReport,
}

impl LoadedTensors {
    /// The tensor called `name` (linear search).
    pub fn get(&self, name: &str) -> Option<&DeviceTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The device address of `t`'s first byte (for kernels and other libraries).
    pub fn device_ptr(&self, t: &DeviceTensor) -> u64 {
        self.buffer.ptr() + t.offset
    }
}

/// Where each tensor of `header` goes in one device buffer, and the buffer's size. Costs one
/// pass over the tensors.
pub fn device_layout(header: &Header) -> (Vec<DeviceTensor>, u64) {
    let mut at = 0u64;
    let tensors = header
        .tensors
        .iter()
        .map(|t| {
            let offset = at.div_ceil(DEVICE_ALIGN) * DEVICE_ALIGN;
            at = offset + t.len();
            DeviceTensor {
                name: t.name.clone(),
                dtype: t.dtype,
                shape: t.shape.clone(),
                offset,
                len: t.len(),
                file_offset: header.data_start + t.data_offsets.0,
            }
        })
        .collect();
    (tensors, at)
}

/// Reads and validates the header of `path`, allocates one device buffer, and moves every
/// tensor into it with one vectored bulk call. Costs two small reads for the header, one
/// `cuMemAlloc` of the tensor bytes (plus alignment padding) and the transfer.
pub fn load_to_gpu(eng: &CudaBulk, path: impl AsRef<Path>) -> Result<LoadedTensors> {
    let path = path.as_ref();
    let header = Header::read(path)?;
    let file = BulkFile::open(path)?;
    let (_, bytes) = device_layout(&header);
    let mut buffer = eng.alloc(bytes as usize).map_err(|e| {
        SafetensorsError::Load(crate::Error::Config(format!(
            "allocating {bytes} bytes of GPU memory for the tensors of {}: {e}; the tensors must fit in free GPU memory",
            path.display()
        )))
    })?;
    let (tensors, report) = load_into(eng, &file, &header, &mut buffer)?;
    Ok(LoadedTensors {
        buffer,
        tensors,
        header,
        report,
    })
}

/// Moves every tensor of `header` (validated from `file`) into `dst` at the offsets of
/// [`device_layout`], with one vectored bulk call. `dst` must hold the layout's bytes. Use
/// this to reuse or pre-fill (poison) the buffer; [`load_to_gpu`] does the whole job.
pub fn load_into(
    eng: &CudaBulk,
    file: &BulkFile,
    header: &Header,
    dst: &mut DeviceBuffer,
) -> Result<(Vec<DeviceTensor>, TransferReport)> {
    let (tensors, bytes) = device_layout(header);
    if (dst.len() as u64) < bytes {
        return Err(SafetensorsError::Load(crate::Error::Range(format!(
            "the tensors need a {bytes}-byte device buffer, got {} bytes",
            dst.len()
        ))));
    }
    let extents: Vec<Extent> = tensors
        .iter()
        .map(|t| Extent {
            file_offset: t.file_offset,
            len: t.len,
            dst_offset: t.offset,
        })
        .collect();
    let (report, per) = eng.read_vectored(file, dst, &extents)?;
    let want: u64 = tensors.iter().map(|t| t.len).sum();
    let got: u64 = per.iter().sum();
    if got != want {
        return Err(SafetensorsError::Short { got, want });
    }
    Ok((tensors, report))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_aligns_every_tensor_and_keeps_aligned_files_identical() {
        let (bytes, _) = super::super::encode_header(
            &[
                ("a", Dtype::U8, &[3]),
                ("b", Dtype::F32, &[64]),
                ("c", Dtype::U8, &[0]),
                ("d", Dtype::BF16, &[1]),
            ],
            None,
        )
        .unwrap();
        let mut f = bytes.clone();
        f.resize(bytes.len() + 3 + 256 + 2, 0);
        let h = Header::parse(&f).unwrap();
        let (t, total) = device_layout(&h);
        assert_eq!(
            t.iter().map(|t| t.offset).collect::<Vec<_>>(),
            [0, 256, 512, 512]
        );
        assert_eq!(total, 514);
        assert_eq!(t[1].file_offset, h.data_start + 3);

        let (bytes, data) = super::super::encode_header(
            &[("a", Dtype::U8, &[512]), ("b", Dtype::F16, &[128])],
            None,
        )
        .unwrap();
        let mut f = bytes.clone();
        f.resize(bytes.len() + data as usize, 0);
        let h = Header::parse(&f).unwrap();
        let (t, total) = device_layout(&h);
        assert_eq!(total, data);
        assert!(t.iter().all(|t| t.offset == t.file_offset - h.data_start));
    }
}
