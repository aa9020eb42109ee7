//! Errors of the graph module: what is wrong with a CSR file or a generator setting, and what
//! to do about it.

use std::path::PathBuf;

/// Result alias of the graph module.
pub type Result<T, E = GraphError> = std::result::Result<T, E>;

/// Why a graph could not be read, generated or traversed.
#[derive(Debug, thiserror::Error)]
pub enum GraphError {
    /// The OS refused an operation on a graph file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was attempted ("opening", "writing", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file does not start with the CSR magic.
    #[error("{path} is not a warpfs CSR graph (magic {found:02x?}, expected \"WFSGRAPH\"); generate one with `warpfs graph gen`")]
    BadMagic {
        /// The file.
        path: PathBuf,
        /// The first 8 bytes found.
        found: [u8; 8],
    },
    /// The header's version is one this build does not read.
    #[error("{path}: CSR format version {found}, this build reads version {supported}; regenerate the graph with this warpfs")]
    UnsupportedVersion {
        /// The file.
        path: PathBuf,
        /// Version in the file.
        found: u32,
        /// Version this build reads and writes.
        supported: u32,
    },
    /// Header fields contradict each other (index width, section offsets, counts).
    #[error("{path}: corrupt CSR header: {reason}")]
    BadHeader {
        /// The file.
        path: PathBuf,
        /// Which field is wrong.
        reason: String,
    },
    /// The file is shorter than its header says.
    #[error("{path} is truncated: the header needs {expected} bytes, the file has {actual}; regenerate or copy it again")]
    Truncated {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// The file is longer than its header says.
    #[error("{path} has {actual} bytes, but its header describes {expected}: trailing data or a corrupt header")]
    TrailingBytes {
        /// The file.
        path: PathBuf,
        /// Bytes the header implies.
        expected: u64,
        /// Bytes present.
        actual: u64,
    },
    /// `offsets[0] != 0` or `offsets[n] != edges`.
    #[error("{path}: corrupt offsets: offsets[0] = {first} (must be 0), offsets[n] = {last} (must equal the edge count {edges})")]
    OffsetsBadEnds {
        /// The file.
        path: PathBuf,
        /// `offsets[0]`.
        first: u64,
        /// `offsets[n]`.
        last: u64,
        /// Edge count from the header.
        edges: u64,
    },
    /// `offsets[v + 1] < offsets[v]`.
    #[error("{path}: corrupt offsets: offsets[{next_vertex}] = {next} is below offsets[{}] = {prev} (offsets must not decrease)", next_vertex - 1)]
    OffsetsNotMonotone {
        /// The file.
        path: PathBuf,
        /// The first vertex `v + 1` whose offset decreases.
        next_vertex: u64,
        /// `offsets[v]`.
        prev: u64,
        /// `offsets[v + 1]`.
        next: u64,
    },
    /// A neighbour index is not a vertex.
    #[error("{path}: corrupt neighbours: entry {index} is {value}, but the graph has {vertices} vertices")]
    NeighbourOutOfRange {
        /// The file.
        path: PathBuf,
        /// Position in the neighbour array.
        index: u64,
        /// The value found.
        value: u64,
        /// Vertex count.
        vertices: u64,
    },
    /// A BFS source that is not a vertex.
    #[error("source vertex {source_vertex} is not in the graph (it has {vertices} vertices)")]
    BadSource {
        /// The source asked for.
        source_vertex: u64,
        /// Vertex count.
        vertices: u64,
    },
    /// A generator or writer setting out of range.
    #[error("invalid graph setting: {0}")]
    Config(String),
}

impl GraphError {
    /// An I/O error with what was being done to which file.
    pub fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Self::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
