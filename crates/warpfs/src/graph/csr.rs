//! An opened, validated CSR graph file ([`CsrFile`]) and borrowed views of its arrays
//! ([`Csr`]).

use super::error::{GraphError, Result};
use super::format::{CsrHeader, HEADER_BYTES};
use super::mapped_file::MappedFile;
use rayon::prelude::*;
use std::path::{Path, PathBuf};

/// A neighbour index type of the file format: `u32` or `u64`.
pub trait VertexIndex: bytemuck::Pod + Send + Sync + Copy + Eq + Ord + std::fmt::Debug {
    /// The index as a `u64`.
    fn to_u64(self) -> u64;
}

impl VertexIndex for u32 {
    #[inline]
    fn to_u64(self) -> u64 {
        self as u64
    }
}

impl VertexIndex for u64 {
    #[inline]
    fn to_u64(self) -> u64 {
        self
    }
}

/// A CSR graph borrowed from memory: vertex `v`'s neighbours are
/// `neighbours[offsets[v]..offsets[v + 1]]`.
#[derive(Debug, Clone, Copy)]
pub struct Csr<'a, I> {
    /// `n + 1` non-decreasing offsets, `offsets[0] = 0`, `offsets[n] = neighbours.len()`.
    pub offsets: &'a [u64],
    /// Neighbour indices, each `< n`.
    pub neighbours: &'a [I],
}

impl<'a, I: VertexIndex> Csr<'a, I> {
    /// Vertex count.
    pub fn vertices(&self) -> u64 {
        self.offsets.len() as u64 - 1
    }

    /// Neighbour entries (directed edges).
    pub fn edges(&self) -> u64 {
        self.neighbours.len() as u64
    }

    /// Vertex `v`'s neighbours (`v < n`).
    #[inline]
    pub fn neighbours_of(&self, v: u64) -> &'a [I] {
        let v = v as usize;
        &self.neighbours[self.offsets[v] as usize..self.offsets[v + 1] as usize]
    }

    /// Vertex `v`'s degree.
    #[inline]
    pub fn degree(&self, v: u64) -> u64 {
        self.offsets[v as usize + 1] - self.offsets[v as usize]
    }
}

/// A CSR view of either index width.
#[derive(Debug, Clone, Copy)]
pub enum CsrView<'a> {
    /// 4-byte neighbour indices.
    U32(Csr<'a, u32>),
    /// 8-byte neighbour indices.
    U64(Csr<'a, u64>),
}

/// A CSR graph file, memory-mapped and validated ([`CsrFile::open`]).
#[derive(Debug)]
pub struct CsrFile {
    path: PathBuf,
    header: CsrHeader,
    map: MappedFile,
}

impl CsrFile {
    /// Maps `path` and checks all of it: header (magic, version, layout, length), offsets
    /// (start at 0, non-decreasing, end at the edge count) and every neighbour index (`< n`),
    /// in parallel. Costs one read of the whole file (from the page cache when warm).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let f = Self::open_header_only(path)?;
        f.validate()?;
        Ok(f)
    }

    /// Maps `path` and checks only the header: for callers that validate later (or trust
    /// the file). [`CsrFile::view`] stays memory-safe, but a corrupt body then gives a
    /// wrong or panicking traversal instead of an error.
    pub fn open_header_only(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let map = MappedFile::open(&path)?;
        let bytes = map.bytes();
        let head = &bytes[..bytes.len().min(HEADER_BYTES as usize)];
        let header = CsrHeader::decode(&path, head, bytes.len() as u64)?;
        if !cfg!(target_endian = "little") {
            return Err(GraphError::Config(
                "CSR files are little-endian; this build runs on a big-endian machine".into(),
            ));
        }
        Ok(Self { path, header, map })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The decoded header.
    pub fn header(&self) -> &CsrHeader {
        &self.header
    }

    /// The whole file's bytes.
    pub fn bytes(&self) -> &[u8] {
        self.map.bytes()
    }

    /// Lets go of this process's mappings of the file's pages, so that dropping the page cache
    /// can evict them ([`MappedFile::release_pages`]); the views stay valid.
    pub fn release_pages(&self) {
        self.map.release_pages();
    }

    /// The offsets array (`n + 1` entries).
    pub fn offsets(&self) -> &[u64] {
        let h = &self.header;
        let b =
            &self.map.bytes()[h.offsets_at as usize..(h.offsets_at + h.offsets_bytes()) as usize];
        bytemuck::cast_slice(b)
    }

    /// Typed views of the arrays.
    pub fn view(&self) -> CsrView<'_> {
        let h = &self.header;
        let b = &self.map.bytes()[h.neighbours_at as usize..];
        let offsets = self.offsets();
        match h.index_bytes {
            4 => CsrView::U32(Csr {
                offsets,
                neighbours: bytemuck::cast_slice(b),
            }),
            _ => CsrView::U64(Csr {
                offsets,
                neighbours: bytemuck::cast_slice(b),
            }),
        }
    }

    fn validate(&self) -> Result<()> {
        let h = &self.header;
        let offs = self.offsets();
        let n = h.vertices as usize;
        if offs[0] != 0 || offs[n] != h.edges {
            return Err(GraphError::OffsetsBadEnds {
                path: self.path.clone(),
                first: offs[0],
                last: offs[n],
                edges: h.edges,
            });
        }
        // First decreasing position, searched in parallel chunks.
        if let Some(i) = offs.par_windows(2).position_first(|w| w[1] < w[0]) {
            return Err(GraphError::OffsetsNotMonotone {
                path: self.path.clone(),
                next_vertex: i as u64 + 1,
                prev: offs[i],
                next: offs[i + 1],
            });
        }
        match self.view() {
            CsrView::U32(c) => self.check_neighbours(c.neighbours),
            CsrView::U64(c) => self.check_neighbours(c.neighbours),
        }
    }

    fn check_neighbours<I: VertexIndex>(&self, nb: &[I]) -> Result<()> {
        let n = self.header.vertices;
        if let Some(i) = nb.par_iter().position_first(|w| w.to_u64() >= n) {
            return Err(GraphError::NeighbourOutOfRange {
                path: self.path.clone(),
                index: i as u64,
                value: nb[i].to_u64(),
                vertices: n,
            });
        }
        Ok(())
    }
}
