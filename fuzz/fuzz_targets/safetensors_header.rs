//! The safetensors header parser (`warpfs::safetensors::Header::parse`) fed arbitrary bytes as a
//! whole file. It must never panic (nor allocate without bound: the header is capped at
//! 100 MB and the input is what libFuzzer gives). When it accepts a file, the result must hold
//! what the format promises: the byte buffer starts after the header and the tensors, sorted
//! by offset, tile it exactly, each exactly shape × dtype size long; and re-encoding the
//! accepted tensors (and metadata) gives a header that parses back to the same tensors.
//!
//! Input: the raw file; the first 8 bytes are the header length. To reach the JSON logic more
//! often, an input whose first byte is `b'{'` is taken as a header alone and prefixed with its
//! own length (so both the length checks and the JSON checks get fuzzed).
#![no_main]

use libfuzzer_sys::fuzz_target;
use warpfs::safetensors::{encode_header, Dtype, Header};

fuzz_target!(|data: &[u8]| {
    let owned;
    let file: &[u8] = if data.first() == Some(&b'{') {
        // Split at the first NUL: header, then the byte buffer.
        let cut = data.iter().position(|&b| b == 0).unwrap_or(data.len());
        let mut v = (cut as u64).to_le_bytes().to_vec();
        v.extend_from_slice(&data[..cut]);
        v.extend_from_slice(data.get(cut + 1..).unwrap_or(&[]));
        owned = v;
        &owned
    } else {
        data
    };
    let Ok(h) = Header::parse(file) else {
        return;
    };
    assert_eq!(h.data_start, 8 + h.header_len);
    assert_eq!(h.data_start + h.data_len, file.len() as u64);
    let mut at = 0u64;
    for t in &h.tensors {
        assert_eq!(t.data_offsets.0, at, "tensors tile the buffer");
        assert!(t.data_offsets.1 >= t.data_offsets.0);
        at = t.data_offsets.1;
        let elements: u64 = t.shape.iter().product();
        assert_eq!(t.len() * 8, elements * t.dtype.bits());
        assert_eq!(Dtype::from_name(t.dtype.name()), Some(t.dtype));
    }
    assert_eq!(at, h.data_len);
    let specs: Vec<(&str, Dtype, &[u64])> = h
        .tensors
        .iter()
        .map(|t| (t.name.as_str(), t.dtype, t.shape.as_slice()))
        .collect();
    let (mut again, data_len) = encode_header(&specs, h.metadata.as_ref()).expect("re-encodes");
    assert_eq!(data_len, h.data_len);
    again.extend_from_slice(&file[h.data_start as usize..]);
    let h2 = Header::parse(&again).expect("a re-encoded header parses");
    assert_eq!(h2.tensors, h.tensors);
    assert_eq!(h2.metadata, h.metadata);
});
