//! The test file's content: every byte is a function of its offset (and a seed), so any read can
//! be checked without keeping a copy. Word `i` (bytes `8i..8i+8`, little-endian) is a bijective
//! mix of `i ^ seed`, so a read from the wrong offset never matches.

/// Seed of the content a test file is created with.
pub const FILE_SEED: u64 = 0x5746_5346_494c_4531; // "WFSFILE1"

#[inline]
fn word(seed: u64, i: u64) -> u64 {
    let w = (i ^ seed).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    w ^ (w >> 29)
}

/// The expected byte at `offset`.
#[inline]
pub fn byte_at(seed: u64, offset: u64) -> u8 {
    word(seed, offset / 8).to_le_bytes()[(offset % 8) as usize]
}

/// Fills `buf` with the content of `[offset, offset + buf.len())`.
pub fn fill(seed: u64, offset: u64, buf: &mut [u8]) {
    let len = buf.len();
    let head = ((8 - offset % 8) % 8).min(len as u64) as usize;
    let (first, rest) = buf.split_at_mut(head);
    for (k, b) in first.iter_mut().enumerate() {
        *b = byte_at(seed, offset + k as u64);
    }
    let base = (offset + head as u64) / 8;
    let mut chunks = rest.chunks_exact_mut(8);
    for (k, c) in (&mut chunks).enumerate() {
        c.copy_from_slice(&word(seed, base + k as u64).to_le_bytes());
    }
    let tail_start = len - chunks.into_remainder().len();
    let tail_off = offset + tail_start as u64;
    for (k, b) in buf[tail_start..].iter_mut().enumerate() {
        *b = byte_at(seed, tail_off + k as u64);
    }
}

/// Number of bytes of `buf` that differ from the content of `[offset, offset + buf.len())`.
/// Costs one pass over `buf` (vectorised where the CPU allows); a second, byte-counting pass
/// runs only over a range that does not match.
pub fn count_wrong(seed: u64, offset: u64, buf: &[u8]) -> u64 {
    let head = ((8 - offset % 8) % 8).min(buf.len() as u64) as usize;
    let mut wrong = 0u64;
    for (k, &b) in buf[..head].iter().enumerate() {
        wrong += (b != byte_at(seed, offset + k as u64)) as u64;
    }
    let base = (offset + head as u64) / 8;
    let words_len = (buf.len() - head) / 8 * 8;
    let words = &buf[head..head + words_len];
    if !words_match(seed, base, words) {
        for (k, c) in words.chunks_exact(8).enumerate() {
            let got = u64::from_le_bytes(c.try_into().expect("chunks_exact(8)"));
            wrong += (got ^ word(seed, base + k as u64))
                .to_le_bytes()
                .iter()
                .filter(|&&d| d != 0)
                .count() as u64;
        }
    }
    let tail_start = head + words_len;
    for (k, &b) in buf[tail_start..].iter().enumerate() {
        wrong += (b != byte_at(seed, offset + (tail_start + k) as u64)) as u64;
    }
    wrong
}

/// Whether `words` (whole little-endian words, word index `base` first) match the content.
fn words_match(seed: u64, base: u64, words: &[u8]) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if has_avx512() {
            // SAFETY: the CPU has the features the function is compiled for (checked above).
            return unsafe { words_diff_avx512(seed, base, words) } == 0;
        }
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU has AVX2 (checked above).
            return unsafe { words_diff_avx2(seed, base, words) } == 0;
        }
    }
    words_diff(seed, base, words) == 0
}

/// The OR of every word's difference from the content: 0 iff all match. Branch-free, so the
/// compiler vectorises it (the check of a 4 KiB read is a large share of a benchmark thread's
/// time, the same function on the warpfs and the baseline side).
#[inline(always)]
fn words_diff(seed: u64, base: u64, words: &[u8]) -> u64 {
    let mut acc = 0u64;
    for (k, c) in words.chunks_exact(8).enumerate() {
        let got = u64::from_le_bytes(c.try_into().expect("chunks_exact(8)"));
        acc |= got ^ word(seed, base + k as u64);
    }
    acc
}

/// Whether the CPU has what `words_diff_avx512` is compiled for (a cached feature test).
#[cfg(target_arch = "x86_64")]
fn has_avx512() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512dq")
        && std::arch::is_x86_feature_detected!("avx512vl")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512dq,avx512vl")]
fn words_diff_avx512(seed: u64, base: u64, words: &[u8]) -> u64 {
    words_diff(seed, base, words)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn words_diff_avx2(seed: u64, base: u64, words: &[u8]) -> u64 {
    words_diff(seed, base, words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_matches_byte_at_at_any_alignment() {
        for off in [0u64, 1, 7, 8, 4093, 1 << 20] {
            for len in [0usize, 1, 5, 8, 13, 4096, 4099] {
                let mut buf = vec![0u8; len];
                fill(FILE_SEED, off, &mut buf);
                for (k, &b) in buf.iter().enumerate() {
                    assert_eq!(
                        b,
                        byte_at(FILE_SEED, off + k as u64),
                        "off {off} len {len} k {k}"
                    );
                }
                assert_eq!(count_wrong(FILE_SEED, off, &buf), 0);
            }
        }
    }

    #[test]
    fn every_vector_path_finds_a_wrong_word_anywhere() {
        let mut buf = vec![0u8; 4096];
        fill(FILE_SEED, 8192, &mut buf);
        let base = 8192 / 8;
        assert_eq!(words_diff(FILE_SEED, base, &buf), 0);
        for at in [0usize, 7, 8, 2047, 4088, 4095] {
            buf[at] ^= 0x10;
            assert_ne!(words_diff(FILE_SEED, base, &buf), 0, "plain, byte {at}");
            #[cfg(target_arch = "x86_64")]
            {
                if std::arch::is_x86_feature_detected!("avx2") {
                    // SAFETY: the CPU has AVX2.
                    assert_ne!(unsafe { words_diff_avx2(FILE_SEED, base, &buf) }, 0);
                }
                if has_avx512() {
                    // SAFETY: the CPU has the features.
                    assert_ne!(unsafe { words_diff_avx512(FILE_SEED, base, &buf) }, 0);
                }
            }
            assert!(!words_match(FILE_SEED, base, &buf));
            assert_eq!(count_wrong(FILE_SEED, 8192, &buf), 1, "byte {at}");
            buf[at] ^= 0x10;
        }
    }

    #[test]
    fn wrong_bytes_and_wrong_offsets_are_caught() {
        let mut buf = vec![0u8; 4096];
        fill(FILE_SEED, 8192, &mut buf);
        buf[100] ^= 1;
        buf[4095] ^= 0xff;
        assert_eq!(count_wrong(FILE_SEED, 8192, &buf), 2);
        fill(FILE_SEED, 8192, &mut buf);
        assert!(
            count_wrong(FILE_SEED, 4096, &buf) > 4000,
            "a block read from the wrong offset must not match"
        );
        assert!(
            count_wrong(FILE_SEED ^ 1, 8192, &buf) > 4000,
            "another seed must not match"
        );
    }
}
