//! `--gpu-cache` values: a byte size (`2G`) or a percentage of the graph's edge bytes (`25%`).

use crate::units::parse_size;

/// A GPU cache size as given on the command line.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum CacheSize {
    /// Bytes.
    Bytes(u64),
    /// Percent of the neighbour section's bytes.
    Percent(f64),
}

impl CacheSize {
    /// Parses `2G`, `4096`, `25%`, `12.5%`.
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if let Some(p) = t.strip_suffix('%') {
            let v: f64 = p.trim().parse().map_err(|_| {
                format!("{text:?} is not a percentage: use e.g. 25% (of the graph's edge bytes)")
            })?;
            if !(v > 0.0 && v <= 1000.0) {
                return Err(format!(
                    "{text:?}: the percentage must be above 0 and at most 1000"
                ));
            }
            return Ok(Self::Percent(v));
        }
        parse_size(t).map(Self::Bytes)
    }

    /// Bytes for a graph whose neighbour section has `edge_bytes` bytes (at least one page).
    pub fn bytes(&self, edge_bytes: u64) -> u64 {
        match *self {
            Self::Bytes(b) => b,
            Self::Percent(p) => (edge_bytes as f64 * p / 100.0) as u64,
        }
        .max(4096)
    }

    /// As written: `25%` or `2.00 GiB`.
    pub fn label(&self) -> String {
        match *self {
            Self::Bytes(b) => crate::units::fmt_bytes(b),
            Self::Percent(p) => format!("{p}%"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_percentages_parse() {
        assert_eq!(CacheSize::parse("2G"), Ok(CacheSize::Bytes(2 << 30)));
        assert_eq!(CacheSize::parse("25%"), Ok(CacheSize::Percent(25.0)));
        assert_eq!(
            CacheSize::parse("12.5%").unwrap().bytes(1000 << 20),
            125 << 20
        );
        assert_eq!(CacheSize::parse("100%").unwrap().bytes(1 << 30), 1 << 30);
        assert!(CacheSize::parse("x%").is_err());
        assert!(CacheSize::parse("0%").is_err());
        assert!(CacheSize::parse("3Q").is_err());
        assert_eq!(CacheSize::Percent(25.0).label(), "25%");
    }
}
