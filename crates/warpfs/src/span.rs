//! Range arithmetic: pages covered by a byte range, and the split of a range into an
//! `O_DIRECT`-aligned middle and buffered edges.

use std::ops::Range;

/// The page numbers `[first, last]` that bytes `[offset, offset+len)` touch (`len` > 0) for
/// pages of `page_size` (a power of two). Empty range for `len == 0`.
pub fn pages(offset: u64, len: u64, page_size: u64) -> Range<u64> {
    if len == 0 {
        return 0..0;
    }
    let first = offset / page_size;
    let last = (offset + len - 1) / page_size;
    first..last + 1
}

/// A byte range split for `O_DIRECT`: `head` and `tail` are unaligned edges (read buffered
/// or through a bounce buffer), `middle` is aligned to `align` at both ends and may go direct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirectSplit {
    /// Unaligned start, `[offset, first aligned boundary)`.
    pub head: Option<Range<u64>>,
    /// Aligned middle.
    pub middle: Option<Range<u64>>,
    /// Unaligned end.
    pub tail: Option<Range<u64>>,
}

/// Splits `[offset, offset+len)` at `align` (a power of two) boundaries.
pub fn split_direct(offset: u64, len: u64, align: u64) -> DirectSplit {
    let end = offset + len;
    let a0 = offset.div_ceil(align) * align;
    let a1 = end / align * align;
    if len == 0 {
        return DirectSplit {
            head: None,
            middle: None,
            tail: None,
        };
    }
    if a0 >= a1 {
        return DirectSplit {
            head: Some(offset..end),
            middle: None,
            tail: None,
        };
    }
    DirectSplit {
        head: (offset < a0).then_some(offset..a0),
        middle: Some(a0..a1),
        tail: (a1 < end).then_some(a1..end),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn split_covers_the_range_exactly(offset in 0u64..1 << 40, len in 0u64..1 << 24, shift in 9u32..13) {
            let align = 1u64 << shift;
            let s = split_direct(offset, len, align);
            let parts: Vec<_> = [s.head.clone(), s.middle.clone(), s.tail.clone()].into_iter().flatten().collect();
            let mut at = offset;
            for p in &parts {
                prop_assert_eq!(p.start, at);
                prop_assert!(p.end > p.start);
                at = p.end;
            }
            prop_assert_eq!(at, offset + len);
            if let Some(m) = s.middle {
                prop_assert_eq!(m.start % align, 0);
                prop_assert_eq!(m.end % align, 0);
            }
        }

        #[test]
        fn pages_cover_every_byte(offset in 0u64..1 << 40, len in 1u64..1 << 20, shift in 9u32..17) {
            let ps = 1u64 << shift;
            let r = pages(offset, len, ps);
            prop_assert!(r.start * ps <= offset);
            prop_assert!(r.end * ps >= offset + len);
            prop_assert!((r.end - 1) * ps < offset + len);
            prop_assert!((r.start + 1) * ps > offset);
        }
    }
}
