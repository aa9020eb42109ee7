//! What a read must return: the pattern of a warpfs test file, or — for a user's own file — the
//! same range read again with plain `pread` (the file is the reference).

use crate::pattern;
use std::fs::File;
use std::os::unix::fs::FileExt;

/// The known content reads are checked against.
#[derive(Debug)]
pub enum Expected {
    /// The file holds [`pattern`] content with this seed.
    Pattern(u64),
    /// Any file: compare with a plain read of the same range.
    Reference(File),
}

impl Expected {
    /// Number of bytes of `data` that differ from the file's content at `offset`.
    pub fn wrong_bytes(&self, offset: u64, data: &[u8]) -> std::io::Result<u64> {
        match self {
            Expected::Pattern(seed) => Ok(pattern::count_wrong(*seed, offset, data)),
            Expected::Reference(file) => {
                let mut wrong = 0;
                let mut scratch = vec![0u8; data.len().min(4 << 20)];
                for (k, chunk) in data.chunks(scratch.len().max(1)).enumerate() {
                    let at = offset + (k * scratch.len()) as u64;
                    let s = &mut scratch[..chunk.len()];
                    file.read_exact_at(s, at)?;
                    wrong += chunk.iter().zip(s.iter()).filter(|(a, b)| a != b).count() as u64;
                }
                Ok(wrong)
            }
        }
    }

    /// Counts the `chunk`-sized pieces of `data` (at file `offset`) that hold a wrong byte.
    pub fn wrong_chunks(&self, offset: u64, data: &[u8], chunk: usize) -> std::io::Result<u64> {
        let mut bad = 0;
        for (k, piece) in data.chunks(chunk).enumerate() {
            bad += (self.wrong_bytes(offset + (k * chunk) as u64, piece)? > 0) as u64;
        }
        Ok(bad)
    }
}
