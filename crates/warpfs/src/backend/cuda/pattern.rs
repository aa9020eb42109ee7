//! Deterministic file content: byte `o` of a pattern file is a function of `o` alone, so any
//! range read anywhere can be checked without keeping a copy. Used by tests and benchmarks.

/// The 8-byte word at word index `w` (bytes `8w..8w+8`, little endian): splitmix64 of `w`.
#[inline]
pub fn word(w: u64) -> u64 {
    let mut z = w.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Byte at file offset `o`.
#[inline]
pub fn byte(o: u64) -> u8 {
    word(o / 8).to_le_bytes()[(o % 8) as usize]
}

/// Fills `buf` with the pattern of file offsets `offset..offset + buf.len()` (~8 GB/s a core).
pub fn fill(buf: &mut [u8], offset: u64) {
    let mut i = 0usize;
    // Unaligned head, byte by byte.
    while i < buf.len() && !(offset + i as u64).is_multiple_of(8) {
        buf[i] = byte(offset + i as u64);
        i += 1;
    }
    let mut w = (offset + i as u64) / 8;
    let mut chunks = buf[i..].chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&word(w).to_le_bytes());
        w += 1;
    }
    let tail = chunks.into_remainder();
    let tail_off = w * 8;
    for (j, b) in tail.iter_mut().enumerate() {
        *b = byte(tail_off + j as u64);
    }
}

/// Writes a `size`-byte pattern file at `path` (created or truncated) in 64 MiB blocks.
pub fn write_file(path: &std::path::Path, size: u64) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut buf = vec![0u8; (64usize << 20).min(size as usize)];
    let mut o = 0u64;
    while o < size {
        let n = (size - o).min(buf.len() as u64) as usize;
        fill(&mut buf[..n], o);
        f.write_all(&buf[..n])?;
        o += n as u64;
    }
    f.flush()
}

/// Index of the first byte of `buf` that differs from the pattern at `offset`, if any.
pub fn first_mismatch(buf: &[u8], offset: u64) -> Option<usize> {
    let mut tmp = [0u8; 4096];
    for (k, c) in buf.chunks(4096).enumerate() {
        let o = offset + (k * 4096) as u64;
        let t = &mut tmp[..c.len()];
        fill(t, o);
        if t != c {
            let j = t.iter().zip(c).position(|(a, b)| a != b).expect("differs");
            return Some(k * 4096 + j);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_files_hold_the_pattern() {
        let p = std::env::temp_dir().join(format!("warpfs-pattern-{}", std::process::id()));
        for size in [0u64, 1, 4095, (64 << 20) + 13] {
            write_file(&p, size).unwrap();
            let v = std::fs::read(&p).unwrap();
            assert_eq!(v.len() as u64, size);
            assert_eq!(first_mismatch(&v, 0), None, "size {size}");
        }
        std::fs::remove_file(&p).unwrap();
    }

    #[test]
    fn fill_matches_byte_at_any_offset() {
        for off in [0u64, 1, 7, 8, 4095, 1 << 33] {
            let mut b = vec![0u8; 37];
            fill(&mut b, off);
            for (i, x) in b.iter().enumerate() {
                assert_eq!(*x, byte(off + i as u64));
            }
            assert_eq!(first_mismatch(&b, off), None);
            b[20] ^= 1;
            assert_eq!(first_mismatch(&b, off), Some(20));
        }
    }
}
