//! The warpfs CSR graph file (version 1) and a streaming writer.
//!
//! One file, little-endian, three sections:
//!
//! | bytes | field |
//! |---|---|
//! | 0..8 | magic `b"WFSGRAPH"` |
//! | 8..12 | version `u32` = 1 |
//! | 12..16 | index width in bytes `u32`: 4 (`u32` neighbours) or 8 (`u64`, needed when vertices > 2^32) |
//! | 16..24 | vertices `n` `u64` |
//! | 24..32 | edges `m` `u64`: neighbour entries (an undirected edge counts twice) |
//! | 32..40 | `offsets_at` `u64` = 64 |
//! | 40..48 | `neighbours_at` `u64`: a multiple of 4096, ≥ 64 + 8 (n + 1) |
//! | 48..56 | flags `u64`: bit 0 = symmetric (every edge stored in both directions) |
//! | 56..64 | reserved, 0 |
//! | `offsets_at`.. | `offsets: [u64; n + 1]`, `offsets[0] = 0`, non-decreasing, `offsets[n] = m` |
//! | ..`neighbours_at` | zero padding |
//! | `neighbours_at`.. | `neighbours: [u32 or u64; m]`; vertex `v`'s neighbours are `neighbours[offsets[v]..offsets[v + 1]]` (sorted ascending in generated files) |
//!
//! The file ends exactly at `neighbours_at + m × width`. The neighbour array starts on a
//! 4096-byte boundary, so a GPU (or `O_DIRECT`) can read it as a page-aligned array; the
//! offsets are 8-byte aligned. See `docs/graph-format.md`.

use super::error::{GraphError, Result};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// First 8 bytes of every CSR file.
pub const MAGIC: [u8; 8] = *b"WFSGRAPH";
/// The format version this build reads and writes.
pub const VERSION: u32 = 1;
/// Bytes of the header; the offsets start here.
pub const HEADER_BYTES: u64 = 64;
/// Alignment of the neighbour array in the file.
pub const NEIGHBOURS_ALIGN: u64 = 4096;
/// Flag bit: every edge is stored in both directions.
pub const FLAG_SYMMETRIC: u64 = 1;

/// The decoded header of a CSR file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CsrHeader {
    /// Format version.
    pub version: u32,
    /// Bytes per neighbour index (4 or 8).
    pub index_bytes: u32,
    /// Vertex count `n`.
    pub vertices: u64,
    /// Neighbour entries `m`.
    pub edges: u64,
    /// Byte offset of `offsets`.
    pub offsets_at: u64,
    /// Byte offset of `neighbours`.
    pub neighbours_at: u64,
    /// Flag bits ([`FLAG_SYMMETRIC`]).
    pub flags: u64,
}

impl CsrHeader {
    /// Whether the header says every edge is stored in both directions ([`FLAG_SYMMETRIC`]):
    /// what a bottom-up BFS level needs (it reads a vertex's list to find its parents).
    pub fn symmetric(&self) -> bool {
        self.flags & FLAG_SYMMETRIC != 0
    }

    /// The header of a file with `vertices` vertices and `edges` neighbour entries, laid out
    /// as the format prescribes (index width 4 unless `vertices` > 2^32).
    pub fn new(vertices: u64, edges: u64, flags: u64) -> Self {
        let index_bytes = if vertices > 1 << 32 { 8 } else { 4 };
        Self {
            version: VERSION,
            index_bytes,
            vertices,
            edges,
            offsets_at: HEADER_BYTES,
            neighbours_at: neighbours_at(vertices),
            flags,
        }
    }

    /// Bytes of the offsets section, `8 (n + 1)`.
    pub fn offsets_bytes(&self) -> u64 {
        (self.vertices + 1) * 8
    }

    /// Bytes of the neighbour section, `m × width`.
    pub fn neighbour_bytes(&self) -> u64 {
        self.edges * self.index_bytes as u64
    }

    /// Total file length the header implies.
    pub fn file_bytes(&self) -> u64 {
        self.neighbours_at + self.neighbour_bytes()
    }

    /// Encodes the 64 header bytes.
    pub fn encode(&self) -> [u8; 64] {
        let mut b = [0u8; 64];
        b[0..8].copy_from_slice(&MAGIC);
        b[8..12].copy_from_slice(&self.version.to_le_bytes());
        b[12..16].copy_from_slice(&self.index_bytes.to_le_bytes());
        b[16..24].copy_from_slice(&self.vertices.to_le_bytes());
        b[24..32].copy_from_slice(&self.edges.to_le_bytes());
        b[32..40].copy_from_slice(&self.offsets_at.to_le_bytes());
        b[40..48].copy_from_slice(&self.neighbours_at.to_le_bytes());
        b[48..56].copy_from_slice(&self.flags.to_le_bytes());
        b
    }

    /// Decodes and checks a header read from `path` whose length is `file_len`: magic,
    /// version, index width, section layout and the file length. Costs nothing beyond the
    /// 64 bytes.
    pub fn decode(path: &Path, bytes: &[u8], file_len: u64) -> Result<Self> {
        let bad = |reason: String| GraphError::BadHeader {
            path: path.to_path_buf(),
            reason,
        };
        if bytes.len() < 8 || bytes[0..8] != MAGIC {
            let mut found = [0u8; 8];
            let n = bytes.len().min(8);
            found[..n].copy_from_slice(&bytes[..n]);
            return Err(GraphError::BadMagic {
                path: path.to_path_buf(),
                found,
            });
        }
        if bytes.len() < HEADER_BYTES as usize {
            return Err(GraphError::Truncated {
                path: path.to_path_buf(),
                expected: HEADER_BYTES,
                actual: file_len,
            });
        }
        let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
        let u64_at = |o: usize| u64::from_le_bytes(bytes[o..o + 8].try_into().expect("8 bytes"));
        let h = Self {
            version: u32_at(8),
            index_bytes: u32_at(12),
            vertices: u64_at(16),
            edges: u64_at(24),
            offsets_at: u64_at(32),
            neighbours_at: u64_at(40),
            flags: u64_at(48),
        };
        if h.version != VERSION {
            return Err(GraphError::UnsupportedVersion {
                path: path.to_path_buf(),
                found: h.version,
                supported: VERSION,
            });
        }
        if h.index_bytes != 4 && h.index_bytes != 8 {
            return Err(bad(format!(
                "index width {} bytes (must be 4 or 8)",
                h.index_bytes
            )));
        }
        if h.index_bytes == 4 && h.vertices > 1 << 32 {
            return Err(bad(format!(
                "{} vertices do not fit 4-byte neighbour indices",
                h.vertices
            )));
        }
        if h.offsets_at != HEADER_BYTES {
            return Err(bad(format!(
                "offsets at byte {} (must be {HEADER_BYTES})",
                h.offsets_at
            )));
        }
        // Sizes checked with overflow in mind: a hostile header may hold any values.
        let offsets_end = h
            .vertices
            .checked_add(1)
            .and_then(|v| v.checked_mul(8))
            .and_then(|b| b.checked_add(HEADER_BYTES))
            .ok_or_else(|| bad(format!("vertex count {} overflows", h.vertices)))?;
        if h.neighbours_at < offsets_end || !h.neighbours_at.is_multiple_of(NEIGHBOURS_ALIGN) {
            return Err(bad(format!(
                "neighbours at byte {} (must be a multiple of {NEIGHBOURS_ALIGN} at or after the offsets' end {offsets_end})",
                h.neighbours_at
            )));
        }
        let expected = h
            .edges
            .checked_mul(h.index_bytes as u64)
            .and_then(|b| b.checked_add(h.neighbours_at))
            .ok_or_else(|| bad(format!("edge count {} overflows", h.edges)))?;
        if file_len < expected {
            return Err(GraphError::Truncated {
                path: path.to_path_buf(),
                expected,
                actual: file_len,
            });
        }
        if file_len > expected {
            return Err(GraphError::TrailingBytes {
                path: path.to_path_buf(),
                expected,
                actual: file_len,
            });
        }
        Ok(h)
    }
}

/// Where the neighbour array of a graph with `vertices` vertices starts.
pub fn neighbours_at(vertices: u64) -> u64 {
    (HEADER_BYTES + (vertices + 1) * 8).div_ceil(NEIGHBOURS_ALIGN) * NEIGHBOURS_ALIGN
}

/// Writes a CSR file front to back, one run of consecutive vertices at a time, without holding
/// the graph in memory: offsets and neighbours go to their sections with positioned writes,
/// the header last (a file whose writer did not [`finish`](Self::finish) has no valid magic).
#[derive(Debug)]
pub struct CsrWriter {
    file: File,
    path: PathBuf,
    vertices: u64,
    next_vertex: u64,
    edges: u64,
    flags: u64,
    index_bytes: u32,
    neighbours_at: u64,
    buf: Vec<u8>,
}

impl CsrWriter {
    /// Creates (truncates) `path` for a graph of `vertices` vertices. Costs one file creation.
    pub fn create(path: impl AsRef<Path>, vertices: u64, flags: u64) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        if vertices == 0 {
            return Err(GraphError::Config(
                "a graph needs at least one vertex".into(),
            ));
        }
        let file = File::create(&path).map_err(|e| GraphError::io("creating", &path, e))?;
        let h = CsrHeader::new(vertices, 0, flags);
        let w = Self {
            file,
            path,
            vertices,
            next_vertex: 0,
            edges: 0,
            flags,
            index_bytes: h.index_bytes,
            neighbours_at: h.neighbours_at,
            buf: Vec::new(),
        };
        // Zeroed header: not a graph until finish() writes the magic.
        w.write_at(&[0u8; 64], 0)?;
        Ok(w)
    }

    fn write_at(&self, bytes: &[u8], at: u64) -> Result<()> {
        self.file
            .write_all_at(bytes, at)
            .map_err(|e| GraphError::io("writing", &self.path, e))
    }

    /// Bytes per neighbour index this file uses.
    pub fn index_bytes(&self) -> u32 {
        self.index_bytes
    }

    /// Appends the next `degrees.len()` vertices: vertex `next + i` has the next `degrees[i]`
    /// entries of `neighbours` (which must hold exactly their sum). Costs one pass over the
    /// input and two positioned writes.
    pub fn append(&mut self, degrees: &[u64], neighbours: &[u32]) -> Result<()> {
        let total: u64 = degrees.iter().sum();
        if total != neighbours.len() as u64 {
            return Err(GraphError::Config(format!(
                "degrees sum to {total}, but {} neighbours were given",
                neighbours.len()
            )));
        }
        if self.next_vertex + degrees.len() as u64 > self.vertices {
            return Err(GraphError::Config(format!(
                "appending {} vertices after {} exceeds the {} declared",
                degrees.len(),
                self.next_vertex,
                self.vertices
            )));
        }
        if let Some(&bad) = neighbours.iter().find(|&&w| w as u64 >= self.vertices) {
            return Err(GraphError::Config(format!(
                "neighbour {bad} is not a vertex (the graph has {})",
                self.vertices
            )));
        }
        // offsets[next + 1 ..= next + len]: the end of each appended vertex's list.
        self.buf.clear();
        if self.next_vertex == 0 {
            self.buf.extend_from_slice(&0u64.to_le_bytes());
        }
        let mut end = self.edges;
        for &d in degrees {
            end += d;
            self.buf.extend_from_slice(&end.to_le_bytes());
        }
        let at = HEADER_BYTES + 8 * (self.next_vertex + u64::from(self.next_vertex != 0));
        let offs = std::mem::take(&mut self.buf);
        self.write_at(&offs, at)?;
        self.buf = offs;
        // Neighbours, widened when the file uses 8-byte indices.
        let nat = self.neighbours_at + self.edges * self.index_bytes as u64;
        if self.index_bytes == 4 {
            self.write_at(bytemuck::cast_slice(neighbours), nat)?;
        } else {
            let wide: Vec<u64> = neighbours.iter().map(|&w| w as u64).collect();
            self.write_at(bytemuck::cast_slice(&wide), nat)?;
        }
        self.next_vertex += degrees.len() as u64;
        self.edges = end;
        Ok(())
    }

    /// Vertices appended so far.
    pub fn vertices_written(&self) -> u64 {
        self.next_vertex
    }

    /// Neighbour entries appended so far.
    pub fn edges_written(&self) -> u64 {
        self.edges
    }

    /// Pads missing trailing vertices with empty lists, writes the header, truncates the file
    /// to its exact length and syncs nothing (the caller may `fsync`). Returns the header.
    pub fn finish(mut self) -> Result<CsrHeader> {
        if self.next_vertex < self.vertices {
            let rest = vec![0u64; (self.vertices - self.next_vertex) as usize];
            self.append(&rest, &[])?;
        }
        let h = CsrHeader {
            edges: self.edges,
            ..CsrHeader::new(self.vertices, self.edges, self.flags)
        };
        self.file
            .set_len(h.file_bytes())
            .map_err(|e| GraphError::io("sizing", &self.path, e))?;
        self.write_at(&h.encode(), 0)?;
        Ok(h)
    }
}

/// Writes a whole in-memory CSR (`offsets` of length n + 1 starting at 0, `neighbours`) to
/// `path`. For tests, imports and small graphs; costs one pass.
pub fn write_csr(
    path: impl AsRef<Path>,
    offsets: &[u64],
    neighbours: &[u32],
    flags: u64,
) -> Result<CsrHeader> {
    let n = offsets
        .len()
        .checked_sub(1)
        .ok_or_else(|| GraphError::Config("offsets must hold n + 1 entries".into()))?;
    if offsets[0] != 0
        || offsets.windows(2).any(|w| w[1] < w[0])
        || offsets[n] != neighbours.len() as u64
    {
        return Err(GraphError::Config(
            "offsets must start at 0, never decrease and end at the neighbour count".into(),
        ));
    }
    let degrees: Vec<u64> = offsets.windows(2).map(|w| w[1] - w[0]).collect();
    let mut w = CsrWriter::create(path, n as u64, flags)?;
    w.append(&degrees, neighbours)?;
    w.finish()
}
