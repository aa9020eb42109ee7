//! Seeded edge streams: Graph500 Kronecker (R-MAT with A=0.57, B=0.19, C=0.19, D=0.05) and
//! uniform random, with the vertex labels scrambled by a seeded permutation.
//!
//! Edge `i` is a pure function of `(spec, i)` (a counter-based generator: splitmix64 of the
//! seed and the edge number), so any range of the stream can be regenerated on any thread in
//! any order and gives the same bytes — the generator makes several passes over the stream
//! instead of holding it in memory.

use super::error::{GraphError, Result};

/// Which random graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EdgeModel {
    /// Graph500 Kronecker: each edge picks one quadrant of the adjacency matrix per level with
    /// probabilities A=0.57, B=0.19, C=0.19, D=0.05, then the labels are permuted.
    Kronecker,
    /// Both endpoints uniform over the vertices (Erdős–Rényi G(n, m) with repeats).
    Uniform,
}

/// What to generate: `2^scale` vertices and `edge_factor × 2^scale` generated (undirected)
/// edges, from `seed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GraphSpec {
    /// Edge distribution.
    pub model: EdgeModel,
    /// log2 of the vertex count, 1 ..= 31 (neighbour indices are 32-bit).
    pub scale: u32,
    /// Generated edges per vertex (Graph500: 16).
    pub edge_factor: u32,
    /// Seed: the same spec gives the same file, byte for byte.
    pub seed: u64,
}

/// Graph500 initiator probabilities in 1/65536: A, A+B, A+B+C.
const KRON_A: u32 = (0.57 * 65536.0) as u32;
const KRON_AB: u32 = ((0.57 + 0.19) * 65536.0) as u32;
const KRON_ABC: u32 = ((0.57 + 0.19 + 0.19) * 65536.0) as u32;

const GOLDEN: u64 = 0x9E37_79B9_7F4A_7C15;

#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A splitmix64 stream.
#[derive(Debug, Clone, Copy)]
struct SplitMix(u64);

impl SplitMix {
    #[inline]
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GOLDEN);
        mix(self.0)
    }
}

impl GraphSpec {
    /// Checks the ranges: scale 1 ..= 31, edge factor ≥ 1.
    pub fn check(&self) -> Result<()> {
        if !(1..=31).contains(&self.scale) {
            return Err(GraphError::Config(format!(
                "scale {} is out of range: use 1 ..= 31 (2^scale vertices, 32-bit indices)",
                self.scale
            )));
        }
        if self.edge_factor == 0 {
            return Err(GraphError::Config("edge factor must be at least 1".into()));
        }
        Ok(())
    }

    /// Vertex count, `2^scale`.
    pub fn vertices(&self) -> u64 {
        1u64 << self.scale
    }

    /// Generated edges, `edge_factor × 2^scale` (before symmetrising and deduplication).
    pub fn generated_edges(&self) -> u64 {
        self.edge_factor as u64 * self.vertices()
    }

    /// The edge stream of this spec (keys derived once).
    pub fn stream(&self) -> EdgeStream {
        let mut s = SplitMix(self.seed ^ 0x5045_524D_5554_4521);
        EdgeStream {
            model: self.model,
            scale: self.scale,
            seed: self.seed,
            mask: self.vertices() - 1,
            shift: (self.scale / 2).max(1),
            keys: [s.next() | 1, s.next() | 1, s.next(), s.next()],
        }
    }

    /// Generated edge `i` (see [`EdgeStream::edge`]); derives the stream's keys each call.
    pub fn edge(&self, i: u64) -> (u32, u32) {
        self.stream().edge(i)
    }

    /// The vertex label of generator vertex `x` (exposed for tests of the bijection).
    pub fn label(&self, x: u64) -> u64 {
        self.stream().permute(x)
    }
}

/// A [`GraphSpec`]'s edges, ready to generate: edge `i` is a pure function of the spec and `i`.
#[derive(Debug, Clone, Copy)]
pub struct EdgeStream {
    model: EdgeModel,
    scale: u32,
    seed: u64,
    mask: u64,
    shift: u32,
    keys: [u64; 4],
}

impl EdgeStream {
    /// Generated edge `i` as `(u, v)` with permuted labels (may be a self-loop or repeat).
    /// Costs ~`scale / 4` random words and no branches per level.
    #[inline]
    pub fn edge(&self, i: u64) -> (u32, u32) {
        let mut rng = SplitMix(mix(self.seed.wrapping_add(i.wrapping_mul(GOLDEN))) ^ self.seed);
        let (u, v) = match self.model {
            EdgeModel::Uniform => (rng.next() & self.mask, rng.next() & self.mask),
            EdgeModel::Kronecker => {
                let (mut u, mut v) = (0u64, 0u64);
                let mut word = 0u64;
                for level in 0..self.scale {
                    if level % 4 == 0 {
                        word = rng.next();
                    }
                    let r = (word & 0xFFFF) as u32;
                    word >>= 16;
                    // Quadrants: r < A → (0,0); < A+B → (0,1); < A+B+C → (1,0); else (1,1).
                    let (a, ab, abc) = (r >= KRON_A, r >= KRON_AB, r >= KRON_ABC);
                    u = (u << 1) | ab as u64;
                    v = (v << 1) | (a ^ ab ^ abc) as u64;
                }
                (u, v)
            }
        };
        (self.permute(u) as u32, self.permute(v) as u32)
    }

    /// The Graph500-style vertex relabelling: a seeded bijection of `0 .. 2^scale` (rounds of
    /// multiply-by-odd, add and xor-shift modulo `2^scale`), so hub vertices land anywhere.
    #[inline]
    fn permute(&self, x: u64) -> u64 {
        let mut x = x;
        for round in 0..3 {
            x = x
                .wrapping_mul(self.keys[round & 1])
                .wrapping_add(self.keys[2 + (round & 1)])
                & self.mask;
            x ^= x >> self.shift;
        }
        x
    }
}
