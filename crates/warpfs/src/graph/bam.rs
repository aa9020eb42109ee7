//! Import of the CSR pair BaM's and EMOGI's BFS benchmarks read: `NAME.col` (`u64` count =
//! n + 1, `u64` type tag, then `u64 offsets[n + 1]`) and `NAME.dst` (`u64` edge count, `u64`
//! type tag, then the neighbour indices, 8 bytes each in BaM (`uint64_t`), 4 in some EMOGI
//! builds — the width is taken from the file size). Both little-endian.

use super::error::{GraphError, Result};
use super::format::{CsrHeader, CsrWriter};
use super::mapped_file::MappedFile;
use std::path::{Path, PathBuf};

/// Neighbours converted per write.
const RUN_VERTICES: usize = 1 << 16;

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// Converts `prefix.col` + `prefix.dst` into a warpfs CSR file at `out` (neighbour lists kept
/// in their order; flags 0: symmetry not asserted). Every field is checked as for
/// [`super::CsrFile::open`]. Costs one read of both files and one write.
pub fn import_bam(prefix: &Path, out: &Path) -> Result<CsrHeader> {
    let with = |ext: &str| PathBuf::from(format!("{}.{ext}", prefix.display()));
    let (col_path, dst_path) = (with("col"), with("dst"));
    let col = MappedFile::open(&col_path)?;
    let dst = MappedFile::open(&dst_path)?;
    let (cb, db) = (col.bytes(), dst.bytes());
    let trunc = |path: &PathBuf, expected: u64, actual: usize| GraphError::Truncated {
        path: path.clone(),
        expected,
        actual: actual as u64,
    };
    if cb.len() < 16 {
        return Err(trunc(&col_path, 16, cb.len()));
    }
    if db.len() < 16 {
        return Err(trunc(&dst_path, 16, db.len()));
    }
    let count = u64_at(cb, 0);
    let n = count
        .checked_sub(1)
        .filter(|&n| n > 0)
        .ok_or_else(|| GraphError::BadHeader {
            path: col_path.clone(),
            reason: format!("vertex-list count {count} (must be n + 1 with n ≥ 1)"),
        })?;
    let need = count
        .checked_mul(8)
        .and_then(|b| b.checked_add(16))
        .ok_or_else(|| GraphError::BadHeader {
            path: col_path.clone(),
            reason: format!("vertex-list count {count} overflows"),
        })?;
    if (cb.len() as u64) < need {
        return Err(trunc(&col_path, need, cb.len()));
    }
    if n > 1 << 32 {
        return Err(GraphError::Config(format!(
            "{n} vertices: importing needs n ≤ 2^32 (4-byte indices)"
        )));
    }
    let m = u64_at(db, 0);
    let body = db.len() as u64 - 16;
    let width = match body.checked_div(m) {
        None => 8,
        Some(w @ (4 | 8)) if body.is_multiple_of(m) => w,
        Some(_) => {
            return Err(GraphError::BadHeader {
                path: dst_path.clone(),
                reason: format!("{body} bytes of edges for {m} edges: neither 4 nor 8 bytes each"),
            })
        }
    };
    let offsets: Vec<u64> = (0..=n as usize).map(|v| u64_at(cb, 16 + 8 * v)).collect();
    if offsets[0] != 0 || offsets[n as usize] != m {
        return Err(GraphError::OffsetsBadEnds {
            path: col_path,
            first: offsets[0],
            last: offsets[n as usize],
            edges: m,
        });
    }
    if let Some(i) = offsets.windows(2).position(|w| w[1] < w[0]) {
        return Err(GraphError::OffsetsNotMonotone {
            path: col_path,
            next_vertex: i as u64 + 1,
            prev: offsets[i],
            next: offsets[i + 1],
        });
    }
    let mut w = CsrWriter::create(out, n, 0)?;
    let mut v0 = 0usize;
    let mut nb = Vec::new();
    while v0 < n as usize {
        let v1 = (v0 + RUN_VERTICES).min(n as usize);
        nb.clear();
        for e in offsets[v0]..offsets[v1] {
            let at = 16 + (e * width) as usize;
            let x = if width == 8 {
                u64_at(db, at)
            } else {
                u32::from_le_bytes(db[at..at + 4].try_into().expect("4 bytes")) as u64
            };
            if x >= n {
                return Err(GraphError::NeighbourOutOfRange {
                    path: dst_path,
                    index: e,
                    value: x,
                    vertices: n,
                });
            }
            nb.push(x as u32);
        }
        let degs: Vec<u64> = offsets[v0..=v1].windows(2).map(|p| p[1] - p[0]).collect();
        w.append(&degs, &nb)?;
        v0 = v1;
    }
    w.finish()
}
