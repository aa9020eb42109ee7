//! The safetensors file format: parse and validate a header, and (feature `cuda`) load every
//! tensor into GPU memory with one vectored bulk call ([`load_to_gpu`]).
//!
//! ## Format (huggingface/safetensors)
//!
//! ```text
//! [ N: u64 little endian ][ N bytes: JSON header, UTF-8 ][ data: the byte buffer ]
//! ```
//!
//! The header is one JSON object. Each key names a tensor and maps to
//! `{"dtype": "BF16", "shape": [4096, 8192], "data_offsets": [begin, end]}`, with the offsets
//! relative to the start of the byte buffer; the optional key `__metadata__` maps to an object
//! of string values. The header may be padded with trailing spaces.
//!
//! ## What is rejected
//!
//! Everything upstream rejects, plus duplicate names (upstream's map silently keeps the last):
//! a header length over [`MAX_HEADER_BYTES`] or past the end of the file; a header that is not
//! UTF-8, not JSON, or does not start with `{`; an entry that is not an object or lacks a field;
//! an unknown dtype; `shape` product × dtype size that overflows or differs from `end − begin`;
//! `begin > end`; `end` past the byte buffer; tensors that overlap or leave a hole between them
//! or after the last one (upstream accepts only a buffer that tensors tile exactly).
//! Every rejection is a [`SafetensorsError`] naming the tensor and what to do.
//!
//! Parsing costs one pass over the header (serde_json); validation sorts the tensors by offset.

use std::collections::BTreeMap;
use std::fmt;
use std::io::Read;
use std::path::{Path, PathBuf};

#[cfg(feature = "cuda")]
mod gpu;
#[cfg(feature = "cuda")]
pub use gpu::{device_layout, load_into, load_to_gpu, DeviceTensor, LoadedTensors, DEVICE_ALIGN};

/// Largest header accepted, bytes (upstream's limit: 100 MB).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;
/// Bytes of the little-endian header length that opens every file.
pub const LEN_PREFIX: u64 = 8;
/// The reserved key holding free-form string metadata.
pub const METADATA_KEY: &str = "__metadata__";

/// Result alias of this module.
pub type Result<T, E = SafetensorsError> = std::result::Result<T, E>;

/// Why a safetensors file was refused (or could not be loaded).
#[derive(Debug, thiserror::Error)]
pub enum SafetensorsError {
    /// The file could not be opened or read.
    #[error("cannot read {path}: {source}; check that the path exists and is readable")]
    Io {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// Shorter than the 8-byte length prefix.
    #[error("{size}-byte file is too short for a safetensors file (it starts with an 8-byte header length); is this really a .safetensors file?")]
    TooShort {
        /// File size in bytes.
        size: u64,
    },
    /// The header length exceeds [`MAX_HEADER_BYTES`].
    #[error("header length {len} bytes exceeds the {cap}-byte limit; the file is corrupt or not a safetensors file")]
    HeaderTooLarge {
        /// The length the file claims.
        len: u64,
        /// The limit.
        cap: u64,
    },
    /// The header runs past the end of the file.
    #[error("header length {len} bytes runs past the end of the {size}-byte file; the file is truncated or not a safetensors file")]
    HeaderPastEnd {
        /// The length the file claims.
        len: u64,
        /// File size in bytes.
        size: u64,
    },
    /// The header bytes are not UTF-8.
    #[error("the header is not valid UTF-8 (bad byte at header offset {at}); the file is corrupt")]
    NotUtf8 {
        /// Offset of the first invalid byte within the header.
        at: usize,
    },
    /// The header does not start with `{`.
    #[error("the header does not start with '{{' (found {found:?}); the file is corrupt or not a safetensors file")]
    BadStart {
        /// The first character, if any.
        found: Option<char>,
    },
    /// The header is not valid JSON (or not one object).
    #[error("the header is not a valid JSON object: {0}; the file is corrupt")]
    Json(#[source] serde_json::Error),
    /// Two entries share a name.
    #[error("tensor {name:?} appears twice in the header; each tensor name must be unique")]
    Duplicate {
        /// The repeated name.
        name: String,
    },
    /// `__metadata__` is not an object of strings.
    #[error("__metadata__ must be an object of string values: {why}")]
    BadMetadata {
        /// What is wrong.
        why: String,
    },
    /// A tensor entry lacks a field or has one of the wrong type.
    #[error("tensor {tensor:?}: {why}")]
    BadEntry {
        /// The tensor.
        tensor: String,
        /// What is wrong, e.g. `"data_offsets must be [begin, end] of non-negative integers"`.
        why: String,
    },
    /// The dtype is not one safetensors defines.
    #[error("tensor {tensor:?}: unknown dtype {dtype:?}; known: {}", Dtype::ALL.iter().map(|d| d.name()).collect::<Vec<_>>().join(", "))]
    UnknownDtype {
        /// The tensor.
        tensor: String,
        /// What the header says.
        dtype: String,
    },
    /// The element count times the dtype size does not fit in 64 bits.
    #[error("tensor {tensor:?}: shape {shape:?} of {dtype} overflows 64-bit byte counts; the header is corrupt")]
    SizeOverflow {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its dtype.
        dtype: Dtype,
    },
    /// The byte range does not match shape × dtype size.
    #[error("tensor {tensor:?}: shape {shape:?} of {dtype} needs {expected} bytes but data_offsets span {actual}; the header is corrupt")]
    SizeMismatch {
        /// The tensor.
        tensor: String,
        /// Its shape.
        shape: Vec<u64>,
        /// Its dtype.
        dtype: Dtype,
        /// Bytes the shape needs.
        expected: u64,
        /// `end − begin`.
        actual: u64,
    },
    /// A sub-byte dtype whose elements do not fill whole bytes.
    #[error("tensor {tensor:?}: {elements} elements of {dtype} ({} bits each) do not fill whole bytes", dtype.bits())]
    PartialByte {
        /// The tensor.
        tensor: String,
        /// Element count.
        elements: u64,
        /// Its dtype.
        dtype: Dtype,
    },
    /// `begin > end`.
    #[error("tensor {tensor:?}: data_offsets [{begin}, {end}] end before they begin; the header is corrupt")]
    Reversed {
        /// The tensor.
        tensor: String,
        /// Start offset.
        begin: u64,
        /// End offset.
        end: u64,
    },
    /// The range runs past the byte buffer.
    #[error("tensor {tensor:?}: data_offsets end at {end} but the byte buffer after the header holds {data_len} bytes; the file is truncated or the header corrupt")]
    PastEnd {
        /// The tensor.
        tensor: String,
        /// End offset.
        end: u64,
        /// Bytes after the header.
        data_len: u64,
    },
    /// Two tensors share bytes.
    #[error("tensors {tensor:?} (from {begin}) and {other:?} (up to {other_end}) overlap; the header is corrupt")]
    Overlap {
        /// The later tensor.
        tensor: String,
        /// Its start.
        begin: u64,
        /// The earlier tensor it overlaps.
        other: String,
        /// The earlier tensor's end.
        other_end: u64,
    },
    /// Bytes between tensors (or before the first) that no tensor covers.
    #[error("bytes [{from}, {to}) of the byte buffer belong to no tensor (before {tensor:?}); safetensors files must be tiled exactly by their tensors")]
    Hole {
        /// Start of the uncovered range.
        from: u64,
        /// End of it.
        to: u64,
        /// The tensor after the hole.
        tensor: String,
    },
    /// Bytes after the last tensor.
    #[error("the byte buffer holds {data_len} bytes but the tensors end at {end}; the file has trailing data or the header is corrupt")]
    Trailing {
        /// Where the last tensor ends.
        end: u64,
        /// Bytes after the header.
        data_len: u64,
    },
    /// Loading into GPU memory failed.
    #[error("loading tensors: {0}")]
    Load(#[from] crate::Error),
    /// The file changed while it was being loaded.
    #[error("read {got} of {want} tensor bytes: the file shrank while loading; try again")]
    Short {
        /// Bytes read.
        got: u64,
        /// Bytes expected.
        want: u64,
    },
}

/// Element types of safetensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // the names are the format's own
pub enum Dtype {
    Bool,
    F4,
    F6E2M3,
    F6E3M2,
    U8,
    I8,
    F8E5M2,
    F8E4M3,
    F8E8M0,
    I16,
    U16,
    F16,
    BF16,
    I32,
    U32,
    F32,
    C64,
    F64,
    I64,
    U64,
}

impl Dtype {
    /// Every dtype, in the format's order.
    pub const ALL: [Dtype; 20] = [
        Dtype::Bool,
        Dtype::F4,
        Dtype::F6E2M3,
        Dtype::F6E3M2,
        Dtype::U8,
        Dtype::I8,
        Dtype::F8E5M2,
        Dtype::F8E4M3,
        Dtype::F8E8M0,
        Dtype::I16,
        Dtype::U16,
        Dtype::F16,
        Dtype::BF16,
        Dtype::I32,
        Dtype::U32,
        Dtype::F32,
        Dtype::C64,
        Dtype::F64,
        Dtype::I64,
        Dtype::U64,
    ];

    /// The name in headers, e.g. `"BF16"`.
    pub fn name(self) -> &'static str {
        match self {
            Dtype::Bool => "BOOL",
            Dtype::F4 => "F4",
            Dtype::F6E2M3 => "F6_E2M3",
            Dtype::F6E3M2 => "F6_E3M2",
            Dtype::U8 => "U8",
            Dtype::I8 => "I8",
            Dtype::F8E5M2 => "F8_E5M2",
            Dtype::F8E4M3 => "F8_E4M3",
            Dtype::F8E8M0 => "F8_E8M0",
            Dtype::I16 => "I16",
            Dtype::U16 => "U16",
            Dtype::F16 => "F16",
            Dtype::BF16 => "BF16",
            Dtype::I32 => "I32",
            Dtype::U32 => "U32",
            Dtype::F32 => "F32",
            Dtype::C64 => "C64",
            Dtype::F64 => "F64",
            Dtype::I64 => "I64",
            Dtype::U64 => "U64",
        }
    }

    /// The dtype a header name stands for.
    pub fn from_name(s: &str) -> Option<Dtype> {
        Dtype::ALL.into_iter().find(|d| d.name() == s)
    }

    /// Bits per element (4 and 6 for the sub-byte float types).
    pub fn bits(self) -> u64 {
        match self {
            Dtype::F4 => 4,
            Dtype::F6E2M3 | Dtype::F6E3M2 => 6,
            Dtype::Bool | Dtype::U8 | Dtype::I8 => 8,
            Dtype::F8E5M2 | Dtype::F8E4M3 | Dtype::F8E8M0 => 8,
            Dtype::I16 | Dtype::U16 | Dtype::F16 | Dtype::BF16 => 16,
            Dtype::I32 | Dtype::U32 | Dtype::F32 => 32,
            Dtype::C64 | Dtype::F64 | Dtype::I64 | Dtype::U64 => 64,
        }
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One tensor of a header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorInfo {
    /// Its name (the JSON key).
    pub name: String,
    /// Element type.
    pub dtype: Dtype,
    /// Dimensions (empty: a scalar).
    pub shape: Vec<u64>,
    /// `[begin, end)` relative to the byte buffer after the header.
    pub data_offsets: (u64, u64),
}

impl TensorInfo {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.data_offsets.1 - self.data_offsets.0
    }

    /// Whether it holds no bytes.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element count (product of the shape; 1 for a scalar).
    pub fn elements(&self) -> u64 {
        self.shape.iter().product()
    }
}

/// A validated header: where the data starts and every tensor, sorted by offset.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// `N`, the JSON header's length in bytes.
    pub header_len: u64,
    /// File offset of the byte buffer (`8 + N`).
    pub data_start: u64,
    /// Bytes in the byte buffer (file size − `data_start`); the tensors tile it exactly.
    pub data_len: u64,
    /// `__metadata__`, if present.
    pub metadata: Option<BTreeMap<String, String>>,
    /// The tensors, sorted by `data_offsets`.
    pub tensors: Vec<TensorInfo>,
}

impl Header {
    /// Reads and validates the header of the file at `path`: two reads (the length, then the
    /// header) and one `fstat`; the tensor bytes are not touched.
    pub fn read(path: impl AsRef<Path>) -> Result<Header> {
        let path = path.as_ref();
        let io = |source| SafetensorsError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        let size = f.metadata().map_err(io)?.len();
        let mut prefix = [0u8; LEN_PREFIX as usize];
        if size < LEN_PREFIX {
            return Err(SafetensorsError::TooShort { size });
        }
        f.read_exact(&mut prefix).map_err(io)?;
        let n = header_len(prefix, size)?;
        let mut buf = vec![0u8; n as usize];
        f.read_exact(&mut buf).map_err(io)?;
        Header::parse_json(&buf, size)
    }

    /// Validates a whole file held in memory (`bytes` = every byte of it). Used by tests and
    /// the fuzz target; files on disk go through [`Header::read`].
    pub fn parse(bytes: &[u8]) -> Result<Header> {
        let size = bytes.len() as u64;
        let Some(prefix) = bytes.first_chunk::<8>() else {
            return Err(SafetensorsError::TooShort { size });
        };
        let n = header_len(*prefix, size)?;
        Header::parse_json(&bytes[8..8 + n as usize], size)
    }

    /// Validates the JSON header `json` (its `N` bytes) of a file of `file_size` bytes.
    pub fn parse_json(json: &[u8], file_size: u64) -> Result<Header> {
        let header_len = json.len() as u64;
        let data_start = LEN_PREFIX + header_len;
        let data_len =
            file_size
                .checked_sub(data_start)
                .ok_or(SafetensorsError::HeaderPastEnd {
                    len: header_len,
                    size: file_size,
                })?;
        let text = std::str::from_utf8(json).map_err(|e| SafetensorsError::NotUtf8 {
            at: e.valid_up_to(),
        })?;
        if !text.starts_with('{') {
            return Err(SafetensorsError::BadStart {
                found: text.chars().next(),
            });
        }
        let RawHeader(entries) = serde_json::from_str(text).map_err(SafetensorsError::Json)?;
        let mut seen = std::collections::HashSet::with_capacity(entries.len());
        let mut metadata = None;
        let mut tensors = Vec::with_capacity(entries.len());
        for (name, value) in entries {
            if !seen.insert(name.clone()) {
                return Err(SafetensorsError::Duplicate { name });
            }
            if name == METADATA_KEY {
                metadata = Some(parse_metadata(value)?);
            } else {
                tensors.push(parse_tensor(name, value, data_len)?);
            }
        }
        check_tiling(&mut tensors, data_len)?;
        Ok(Header {
            header_len,
            data_start,
            data_len,
            metadata,
            tensors,
        })
    }

    /// The tensor called `name` (linear search).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}

/// Reads `N` from the 8-byte prefix and checks it against the cap and the file size.
pub fn header_len(prefix: [u8; 8], file_size: u64) -> Result<u64> {
    let len = u64::from_le_bytes(prefix);
    if len > MAX_HEADER_BYTES {
        return Err(SafetensorsError::HeaderTooLarge {
            len,
            cap: MAX_HEADER_BYTES,
        });
    }
    if LEN_PREFIX + len > file_size {
        return Err(SafetensorsError::HeaderPastEnd {
            len,
            size: file_size,
        });
    }
    Ok(len)
}

/// Whether `prefix` (the first bytes of a file) looks like a safetensors file: a plausible
/// header length followed by `{`. Cheap sniffing for format detection; [`Header::read`]
/// decides for real.
pub fn sniff(prefix: &[u8], file_size: u64) -> bool {
    match prefix.first_chunk::<8>() {
        Some(p) => header_len(*p, file_size).is_ok_and(|n| n >= 2) && prefix.get(8) == Some(&b'{'),
        None => false,
    }
}

/// Builds the first `8 + N` bytes of a safetensors file whose tensors are laid out in the
/// given order, back to back from offset 0 of the byte buffer; the header is padded with
/// spaces so the buffer starts at a multiple of 8 (as upstream writes). Returns the prefix and
/// the byte-buffer length. For tests, benchmarks and writers of small files.
pub fn encode_header(
    tensors: &[(&str, Dtype, &[u64])],
    metadata: Option<&BTreeMap<String, String>>,
) -> Result<(Vec<u8>, u64)> {
    let mut obj = serde_json::Map::new();
    if let Some(m) = metadata {
        obj.insert(
            METADATA_KEY.into(),
            serde_json::to_value(m).expect("strings"),
        );
    }
    let mut off = 0u64;
    for &(name, dtype, shape) in tensors {
        let bytes = tensor_bytes(name, dtype, shape)?;
        obj.insert(
            name.into(),
            serde_json::json!({"dtype": dtype.name(), "shape": shape, "data_offsets": [off, off + bytes]}),
        );
        off = off
            .checked_add(bytes)
            .ok_or(SafetensorsError::SizeOverflow {
                tensor: name.into(),
                shape: shape.to_vec(),
                dtype,
            })?;
    }
    let mut json = serde_json::to_vec(&obj).expect("a JSON map serialises");
    while !(LEN_PREFIX as usize + json.len()).is_multiple_of(8) {
        json.push(b' ');
    }
    let mut out = (json.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&json);
    Ok((out, off))
}

/// Bytes `shape` of `dtype` needs, overflow-checked.
fn tensor_bytes(name: &str, dtype: Dtype, shape: &[u64]) -> Result<u64> {
    let overflow = || SafetensorsError::SizeOverflow {
        tensor: name.into(),
        shape: shape.to_vec(),
        dtype,
    };
    let elements = shape
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .ok_or_else(overflow)?;
    let bits = elements.checked_mul(dtype.bits()).ok_or_else(overflow)?;
    if !bits.is_multiple_of(8) {
        return Err(SafetensorsError::PartialByte {
            tensor: name.into(),
            elements,
            dtype,
        });
    }
    Ok(bits / 8)
}

fn parse_metadata(v: serde_json::Value) -> Result<BTreeMap<String, String>> {
    let serde_json::Value::Object(m) = v else {
        return Err(SafetensorsError::BadMetadata {
            why: format!("found {}", kind(&v)),
        });
    };
    m.into_iter()
        .map(|(k, v)| match v {
            serde_json::Value::String(s) => Ok((k, s)),
            other => Err(SafetensorsError::BadMetadata {
                why: format!("key {k:?} holds {}", kind(&other)),
            }),
        })
        .collect()
}

fn kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

fn parse_tensor(name: String, v: serde_json::Value, data_len: u64) -> Result<TensorInfo> {
    let bad = |why: String| SafetensorsError::BadEntry {
        tensor: name.clone(),
        why,
    };
    let serde_json::Value::Object(m) = v else {
        return Err(bad(format!(
            "must be an object with dtype, shape and data_offsets, found {}",
            kind(&v)
        )));
    };
    let dtype_name = match m.get("dtype") {
        Some(serde_json::Value::String(s)) => s,
        Some(other) => {
            return Err(bad(format!(
                "dtype must be a string, found {}",
                kind(other)
            )))
        }
        None => return Err(bad("missing field dtype".into())),
    };
    let dtype = Dtype::from_name(dtype_name).ok_or_else(|| SafetensorsError::UnknownDtype {
        tensor: name.clone(),
        dtype: dtype_name.clone(),
    })?;
    let ints = |field: &str| -> Result<Vec<u64>> {
        let Some(v) = m.get(field) else {
            return Err(bad(format!("missing field {field}")));
        };
        let err = || bad(format!("{field} must be an array of non-negative integers"));
        v.as_array()
            .ok_or_else(err)?
            .iter()
            .map(|x| x.as_u64().ok_or_else(err))
            .collect()
    };
    let shape = ints("shape")?;
    let offs = ints("data_offsets")?;
    let [begin, end] = offs[..] else {
        return Err(bad(format!(
            "data_offsets must hold exactly two numbers [begin, end], found {}",
            offs.len()
        )));
    };
    if begin > end {
        return Err(SafetensorsError::Reversed {
            tensor: name,
            begin,
            end,
        });
    }
    if end > data_len {
        return Err(SafetensorsError::PastEnd {
            tensor: name,
            end,
            data_len,
        });
    }
    let expected = tensor_bytes(&name, dtype, &shape)?;
    if expected != end - begin {
        return Err(SafetensorsError::SizeMismatch {
            tensor: name,
            shape,
            dtype,
            expected,
            actual: end - begin,
        });
    }
    Ok(TensorInfo {
        name,
        dtype,
        shape,
        data_offsets: (begin, end),
    })
}

/// Sorts by offsets and checks that the tensors tile `[0, data_len)` exactly.
fn check_tiling(tensors: &mut [TensorInfo], data_len: u64) -> Result<()> {
    tensors.sort_by_key(|t| t.data_offsets);
    let mut reached = 0u64;
    let mut last: Option<&TensorInfo> = None;
    for t in tensors.iter() {
        let (begin, end) = t.data_offsets;
        if begin > reached {
            return Err(SafetensorsError::Hole {
                from: reached,
                to: begin,
                tensor: t.name.clone(),
            });
        }
        if begin < reached {
            let other = last.expect("reached > 0 only after a tensor");
            return Err(SafetensorsError::Overlap {
                tensor: t.name.clone(),
                begin,
                other: other.name.clone(),
                other_end: other.data_offsets.1,
            });
        }
        reached = end;
        last = Some(t);
    }
    if reached != data_len {
        return Err(SafetensorsError::Trailing {
            end: reached,
            data_len,
        });
    }
    Ok(())
}

/// The top-level object as (key, value) pairs in file order, duplicates kept (serde_json's
/// own map would silently keep the last).
struct RawHeader(Vec<(String, serde_json::Value)>);

impl<'de> serde::Deserialize<'de> for RawHeader {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawHeader;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object of tensor entries")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<RawHeader, A::Error> {
                let mut v = Vec::with_capacity(map.size_hint().unwrap_or(0).min(4096));
                while let Some(e) = map.next_entry::<String, serde_json::Value>()? {
                    v.push(e);
                }
                Ok(RawHeader(v))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A file: 8-byte length, `json`, then `data_len` bytes.
    fn file(json: &str, data_len: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.resize(v.len() + data_len, 0x11);
        v
    }

    fn err(json: &str, data_len: usize) -> SafetensorsError {
        Header::parse(&file(json, data_len)).expect_err("must be rejected")
    }

    #[test]
    fn parses_a_valid_file_with_metadata_and_padding() {
        let json = r#"{"__metadata__":{"format":"pt"},"b":{"dtype":"F32","shape":[2,2],"data_offsets":[4,20]},"a":{"dtype":"BF16","shape":[2],"data_offsets":[0,4]},"s":{"dtype":"U8","shape":[],"data_offsets":[20,21]},"z":{"dtype":"F16","shape":[0,7],"data_offsets":[21,21]}}   "#;
        let h = Header::parse(&file(json, 21)).unwrap();
        assert_eq!(h.header_len, json.len() as u64);
        assert_eq!(h.data_start, 8 + json.len() as u64);
        assert_eq!(h.data_len, 21);
        assert_eq!(h.metadata.as_ref().unwrap()["format"], "pt");
        let names: Vec<_> = h.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["a", "b", "s", "z"]);
        assert_eq!(h.tensor("b").unwrap().dtype, Dtype::F32);
        assert_eq!(h.tensor("b").unwrap().shape, vec![2, 2]);
        assert_eq!(h.tensor("s").unwrap().elements(), 1);
        assert!(h.tensor("z").unwrap().is_empty());
    }

    #[test]
    fn empty_header_and_empty_buffer_are_fine() {
        let h = Header::parse(&file("{}", 0)).unwrap();
        assert!(h.tensors.is_empty());
        assert!(matches!(
            err("{}", 1),
            SafetensorsError::Trailing {
                end: 0,
                data_len: 1
            }
        ));
    }

    #[test]
    fn too_short() {
        for n in 0..8 {
            assert!(matches!(
                Header::parse(&vec![0u8; n]),
                Err(SafetensorsError::TooShort { .. })
            ));
        }
    }

    #[test]
    fn header_length_over_cap_or_past_end() {
        let mut v = (MAX_HEADER_BYTES + 1).to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        assert!(matches!(
            Header::parse(&v),
            Err(SafetensorsError::HeaderTooLarge { .. })
        ));
        let mut v = u64::MAX.to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        assert!(matches!(
            Header::parse(&v),
            Err(SafetensorsError::HeaderTooLarge { .. })
        ));
        let mut v = 3u64.to_le_bytes().to_vec();
        v.extend_from_slice(b"{}");
        assert!(matches!(
            Header::parse(&v),
            Err(SafetensorsError::HeaderPastEnd { len: 3, size: 10 })
        ));
    }

    #[test]
    fn not_utf8_not_json_bad_start() {
        let mut v = 4u64.to_le_bytes().to_vec();
        v.extend_from_slice(&[b'{', 0xff, 0xfe, b'}']);
        assert!(matches!(
            Header::parse(&v),
            Err(SafetensorsError::NotUtf8 { at: 1 })
        ));
        assert!(matches!(err("{\"a\":", 0), SafetensorsError::Json(_)));
        assert!(matches!(err("{} {}", 0), SafetensorsError::Json(_)));
        assert!(matches!(
            err(" {}", 0),
            SafetensorsError::BadStart { found: Some(' ') }
        ));
        assert!(matches!(err("[]", 0), SafetensorsError::BadStart { .. }));
        assert!(matches!(
            err("", 0),
            SafetensorsError::BadStart { found: None }
        ));
    }

    #[test]
    fn unknown_dtype() {
        let e = err(
            r#"{"a":{"dtype":"F128","shape":[1],"data_offsets":[0,16]}}"#,
            16,
        );
        assert!(matches!(&e, SafetensorsError::UnknownDtype { dtype, .. } if dtype == "F128"));
        assert!(
            e.to_string().contains("BF16"),
            "lists the known dtypes: {e}"
        );
    }

    #[test]
    fn bad_entries() {
        for (json, needle) in [
            (r#"{"a":5}"#, "must be an object"),
            (
                r#"{"a":{"shape":[1],"data_offsets":[0,1]}}"#,
                "missing field dtype",
            ),
            (
                r#"{"a":{"dtype":7,"shape":[1],"data_offsets":[0,1]}}"#,
                "dtype must be a string",
            ),
            (
                r#"{"a":{"dtype":"U8","data_offsets":[0,1]}}"#,
                "missing field shape",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[-1],"data_offsets":[0,1]}}"#,
                "shape must be",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1.5],"data_offsets":[0,1]}}"#,
                "shape must be",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1]}}"#,
                "missing field data_offsets",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1,2]}}"#,
                "exactly two",
            ),
            (
                r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":"0,1"}}"#,
                "data_offsets must be",
            ),
        ] {
            let e = err(json, 1);
            assert!(
                matches!(e, SafetensorsError::BadEntry { .. }) && e.to_string().contains(needle),
                "{json}: {e}"
            );
        }
    }

    #[test]
    fn bad_metadata() {
        assert!(matches!(
            err(r#"{"__metadata__":{"k":1}}"#, 0),
            SafetensorsError::BadMetadata { .. }
        ));
        assert!(matches!(
            err(r#"{"__metadata__":[]}"#, 0),
            SafetensorsError::BadMetadata { .. }
        ));
    }

    #[test]
    fn size_mismatch_and_overflow() {
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[2,3],"data_offsets":[0,20]}}"#,
            20,
        );
        assert!(matches!(
            e,
            SafetensorsError::SizeMismatch {
                expected: 24,
                actual: 20,
                ..
            }
        ));
        let e = err(
            r#"{"a":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}}"#,
            0,
        );
        assert!(matches!(e, SafetensorsError::SizeOverflow { .. }));
        let e = err(
            r#"{"a":{"dtype":"F64","shape":[2305843009213693952],"data_offsets":[0,0]}}"#,
            0,
        );
        assert!(matches!(e, SafetensorsError::SizeOverflow { .. }), "{e}");
        let e = err(
            r#"{"a":{"dtype":"F4","shape":[3],"data_offsets":[0,1]}}"#,
            1,
        );
        assert!(matches!(
            e,
            SafetensorsError::PartialByte { elements: 3, .. }
        ));
        let h = Header::parse(&file(
            r#"{"a":{"dtype":"F6_E2M3","shape":[4],"data_offsets":[0,3]}}"#,
            3,
        ))
        .unwrap();
        assert_eq!(h.tensors[0].len(), 3);
    }

    #[test]
    fn reversed_and_past_end() {
        let e = err(
            r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[5,4]}}"#,
            8,
        );
        assert!(matches!(
            e,
            SafetensorsError::Reversed {
                begin: 5,
                end: 4,
                ..
            }
        ));
        let e = err(
            r#"{"a":{"dtype":"U8","shape":[9],"data_offsets":[0,9]}}"#,
            8,
        );
        assert!(matches!(
            e,
            SafetensorsError::PastEnd {
                end: 9,
                data_len: 8,
                ..
            }
        ));
        let e = err(
            r#"{"a":{"dtype":"U8","shape":[1],"data_offsets":[18446744073709551615,18446744073709551615]}}"#,
            8,
        );
        assert!(matches!(e, SafetensorsError::PastEnd { .. }), "{e}");
    }

    #[test]
    fn overlaps_holes_trailing() {
        let e = err(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}"#,
            6,
        );
        assert!(
            matches!(&e, SafetensorsError::Overlap { tensor, other, .. } if tensor == "b" && other == "a"),
            "{e}"
        );
        let e = err(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
            4,
        );
        assert!(matches!(e, SafetensorsError::Overlap { .. }), "{e}");
        let e = err(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[6,10]}}"#,
            10,
        );
        assert!(
            matches!(e, SafetensorsError::Hole { from: 4, to: 6, .. }),
            "{e}"
        );
        let e = err(
            r#"{"b":{"dtype":"U8","shape":[4],"data_offsets":[1,5]}}"#,
            5,
        );
        assert!(
            matches!(e, SafetensorsError::Hole { from: 0, to: 1, .. }),
            "{e}"
        );
        let e = err(
            r#"{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]}}"#,
            7,
        );
        assert!(
            matches!(
                e,
                SafetensorsError::Trailing {
                    end: 4,
                    data_len: 7
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn duplicates() {
        let e = err(
            r#"{"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]},"a":{"dtype":"U8","shape":[0],"data_offsets":[0,0]}}"#,
            0,
        );
        assert!(matches!(&e, SafetensorsError::Duplicate { name } if name == "a"));
        let e = err(r#"{"__metadata__":{},"__metadata__":{}}"#, 0);
        assert!(matches!(e, SafetensorsError::Duplicate { .. }));
    }

    #[test]
    fn reads_from_disk_and_sniffs() {
        let d = std::env::temp_dir().join(format!("warpfs-st-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("m.safetensors");
        let (mut bytes, data) = encode_header(
            &[("w", Dtype::BF16, &[3, 5]), ("b", Dtype::F32, &[5])],
            None,
        )
        .unwrap();
        assert_eq!(data, 30 + 20);
        bytes.resize(bytes.len() + data as usize, 7);
        std::fs::write(&p, &bytes).unwrap();
        let h = Header::read(&p).unwrap();
        assert_eq!(h, Header::parse(&bytes).unwrap());
        assert!(h.data_start.is_multiple_of(8));
        assert!(sniff(&bytes[..16], bytes.len() as u64));
        assert!(!sniff(b"\x00\x00\x00\x00\x00\x00\x00\x00{", 9));
        assert!(!sniff(b"GGUF....", 1000));
        std::fs::write(&p, &bytes[..bytes.len() - 1]).unwrap();
        assert!(matches!(
            Header::read(&p),
            Err(SafetensorsError::Trailing { .. }) | Err(SafetensorsError::PastEnd { .. })
        ));
        assert!(matches!(
            Header::read(d.join("missing")),
            Err(SafetensorsError::Io { .. })
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    fn dtype() -> impl Strategy<Value = Dtype> {
        proptest::sample::select(Dtype::ALL.to_vec())
    }

    proptest! {
        /// Any layout the encoder writes parses back to the same tensors.
        #[test]
        fn encoded_headers_round_trip(
            specs in proptest::collection::vec(
                (dtype(), proptest::collection::vec(0u64..6, 0..4)), 0..12),
        ) {
            let names: Vec<String> = (0..specs.len()).map(|i| format!("t{i}")).collect();
            let specs: Vec<(Dtype, Vec<u64>)> = specs
                .into_iter()
                .map(|(d, mut s)| {
                    // Sub-byte dtypes need whole bytes: make the element count even (F4) or a
                    // multiple of 4 (F6).
                    if d.bits() < 8 { s.push(4); }
                    (d, s)
                })
                .collect();
            let list: Vec<(&str, Dtype, &[u64])> =
                names.iter().zip(&specs).map(|(n, (d, s))| (n.as_str(), *d, s.as_slice())).collect();
            let (mut bytes, data) = encode_header(&list, None).unwrap();
            bytes.resize(bytes.len() + data as usize, 0);
            let h = Header::parse(&bytes).unwrap();
            prop_assert_eq!(h.data_len, data);
            prop_assert_eq!(h.tensors.len(), list.len());
            for (n, d, s) in &list {
                let t = h.tensor(n).unwrap();
                prop_assert_eq!(t.dtype, *d);
                prop_assert_eq!(&t.shape[..], *s);
                prop_assert_eq!(t.len() * 8, t.elements() * d.bits());
            }
            // A byte more or less in the buffer is refused.
            let mut more = bytes.clone();
            more.push(0);
            prop_assert!(Header::parse(&more).is_err());
            if data > 0 {
                prop_assert!(Header::parse(&bytes[..bytes.len() - 1]).is_err());
            }
        }

        /// Random offsets: accepted exactly when the tensors tile the buffer.
        #[test]
        fn random_offsets_accepted_iff_tiled(
            ranges in proptest::collection::vec((0u64..40, 0u64..10), 1..6),
            data_len in 0u64..60,
        ) {
            let mut json = String::from("{");
            for (i, (b, l)) in ranges.iter().enumerate() {
                if i > 0 { json.push(','); }
                json += &format!(r#""t{i}":{{"dtype":"U8","shape":[{l}],"data_offsets":[{b},{}]}}"#, b + l);
            }
            json.push('}');
            let got = Header::parse(&file(&json, data_len as usize));
            let mut sorted: Vec<(u64, u64)> = ranges.iter().map(|&(b, l)| (b, b + l)).collect();
            sorted.sort();
            let mut at = 0;
            let mut tiled = true;
            for (b, e) in sorted {
                tiled &= b == at;
                at = e;
            }
            tiled &= at == data_len;
            prop_assert_eq!(got.is_ok(), tiled, "{:?}", got);
        }

        /// Arbitrary bytes never panic.
        #[test]
        fn arbitrary_bytes_never_panic(v in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Header::parse(&v);
            let mut w = ((v.len() as u64).saturating_sub(3)).to_le_bytes().to_vec();
            w.push(b'{');
            w.extend_from_slice(&v);
            let _ = Header::parse(&w);
        }
    }
}
