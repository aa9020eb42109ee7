//! Analysis for issue 6: how many bytes of a CSR file a BFS touches, top-down only against
//! direction-optimizing (the searches' own rule, `warpfs::graph::direction::DirectionPolicy`).
//! Counts, per level, the distinct 32-byte sectors and 4 KiB pages of the offsets and
//! neighbour arrays that the level reads (what a GPU reading the file in place, or through a
//! page cache, must move), on one CPU thread. Both searches' levels are checked equal.
//!
//! ```text
//! bfs_bytes FILE.csr [--source V]      # default source: the vertex of highest degree
//! ```

use std::collections::HashSet;
use warpfs::graph::direction::{BfsMode, Direction, DirectionPolicy};
use warpfs::graph::{CsrFile, CsrView};

const SECTOR: u64 = 32;
const PAGE: u64 = 4096;

/// Distinct sectors and pages of one level's reads (byte ranges of the file).
#[derive(Default)]
struct Touched {
    sectors: HashSet<u64>,
    pages: HashSet<u64>,
}

impl Touched {
    fn add(&mut self, start: u64, len: u64) {
        if len == 0 {
            return;
        }
        for s in start / SECTOR..=(start + len - 1) / SECTOR {
            self.sectors.insert(s);
        }
        for p in start / PAGE..=(start + len - 1) / PAGE {
            self.pages.insert(p);
        }
    }
}

fn main() {
    let mut args = std::env::args().skip(1);
    let path = args.next().expect("bfs_bytes FILE.csr [--source V]");
    let mut source = None;
    while let Some(a) = args.next() {
        if a == "--source" {
            source = Some(args.next().unwrap().parse::<u64>().unwrap());
        }
    }
    let f = CsrFile::open(&path).expect("open");
    let h = *f.header();
    let CsrView::U32(g) = f.view() else {
        panic!("u32 graphs only")
    };
    let n = g.vertices();
    let src = source.unwrap_or_else(|| (0..n).max_by_key(|&v| g.degree(v)).unwrap());
    let (off_at, nb_at, w) = (h.offsets_at, h.neighbours_at, h.index_bytes as u64);
    println!("{path}: {n} vertices, {} entries, source {src}", g.edges());
    let mut totals = [(0u64, 0u64); 2];
    let mut levels_of = Vec::new();
    for (k, optimizing) in [false, true].into_iter().enumerate() {
        let mut level = vec![u32::MAX; n as usize];
        level[src as usize] = 0;
        let mut frontier = vec![src];
        let mode = if optimizing {
            BfsMode::DirectionOptimizing
        } else {
            BfsMode::TopDown
        };
        let mut policy = DirectionPolicy::new(mode, n, g.edges(), g.degree(src));
        let mut d = 0u32;
        println!(
            "{}",
            if optimizing {
                "direction-optimizing:"
            } else {
                "top-down:"
            }
        );
        while !frontier.is_empty() {
            let bottom_up = policy.next(frontier.len() as u64) == Direction::BottomUp;
            let mut t = Touched::default();
            let mut examined = 0u64;
            let mut next = Vec::new();
            if bottom_up {
                for v in 0..n {
                    if level[v as usize] != u32::MAX {
                        continue;
                    }
                    t.add(off_at + v * 8, 16);
                    let (a, b) = (g.offsets[v as usize], g.offsets[v as usize + 1]);
                    let mut scanned = 0;
                    for &u in &g.neighbours[a as usize..b as usize] {
                        scanned += 1;
                        if level[u as usize] == d {
                            next.push(v);
                            break;
                        }
                    }
                    examined += scanned;
                    t.add(nb_at + a * w, scanned * w);
                }
                for &v in &next {
                    level[v as usize] = d + 1;
                }
            } else {
                for &v in &frontier {
                    t.add(off_at + v * 8, 16);
                    let (a, b) = (g.offsets[v as usize], g.offsets[v as usize + 1]);
                    examined += b - a;
                    t.add(nb_at + a * w, (b - a) * w);
                    for &u in &g.neighbours[a as usize..b as usize] {
                        if level[u as usize] == u32::MAX {
                            level[u as usize] = d + 1;
                            next.push(u as u64);
                        }
                    }
                }
            }
            policy.done(next.iter().map(|&v| g.degree(v)).sum::<u64>());
            let (sb, pb) = (t.sectors.len() as u64 * SECTOR, t.pages.len() as u64 * PAGE);
            println!(
                "  level {d} {:9} frontier {:10} examined {:12} sectors {:8.1} MB pages {:8.1} MB",
                if bottom_up { "bottom-up" } else { "top-down" },
                frontier.len(),
                examined,
                sb as f64 / 1e6,
                pb as f64 / 1e6
            );
            totals[k].0 += sb;
            totals[k].1 += pb;
            frontier = next;
            d += 1;
        }
        println!(
            "  total: sectors {:.1} MB, pages {:.1} MB",
            totals[k].0 as f64 / 1e6,
            totals[k].1 as f64 / 1e6
        );
        levels_of.push(level);
    }
    assert!(levels_of[0] == levels_of[1], "the two searches disagree");
    println!(
        "direction-optimizing / top-down: sectors {:.3}, pages {:.3} (levels equal)",
        totals[1].0 as f64 / totals[0].0 as f64,
        totals[1].1 as f64 / totals[0].1 as f64
    );
}
