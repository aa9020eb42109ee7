//! Which way each BFS level runs: top-down (the frontier's vertices claim their unvisited
//! neighbours) or bottom-up (each unvisited vertex reads its list until it finds a parent in
//! the frontier). Beamer, Asanović and Patterson's direction-optimizing rule, as the GAP
//! benchmark suite applies it: go bottom-up once the frontier's edges exceed the edges left to
//! check / [`ALPHA`]; stay bottom-up while the frontier grows or holds more than n / [`BETA`]
//! vertices. The CPU and GPU searches share this one state machine, so for one graph and
//! source they take the same direction at every level (the rule reads only counts that are a
//! function of the level sets).

use serde::Serialize;

/// Top-down → bottom-up once frontier edges > edges left to check / ALPHA (GAP's default).
pub const ALPHA: u64 = 15;
/// Bottom-up → top-down once the frontier shrinks and holds ≤ vertices / BETA (GAP's default).
pub const BETA: u64 = 18;

/// The way one level of a BFS runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Direction {
    /// The frontier's lists are read whole; unvisited neighbours are claimed.
    TopDown,
    /// Each unvisited vertex reads its list until a neighbour is in the frontier.
    BottomUp,
}

impl Direction {
    /// A short name for tables: "TD" or "BU".
    pub fn short(self) -> &'static str {
        match self {
            Direction::TopDown => "TD",
            Direction::BottomUp => "BU",
        }
    }
}

/// The searches a BFS may run: top-down only, or direction-optimizing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum BfsMode {
    /// Every level top-down (reads every list of the component once).
    TopDown,
    /// Beamer's rule ([`DirectionPolicy`]); reads a fraction of the lists on
    /// low-diameter graphs.
    #[default]
    DirectionOptimizing,
}

/// The direction-optimizing state machine: ask [`DirectionPolicy::next`] before each level,
/// tell it the level's outcome with [`DirectionPolicy::done`]. O(1) per level.
#[derive(Debug, Clone)]
pub struct DirectionPolicy {
    mode: BfsMode,
    vertices: u64,
    /// Edges not yet checked by a top-down level (GAP's `edges_to_check`).
    edges_to_check: u64,
    /// The frontier's edges (sum of its vertices' degrees) after a top-down level.
    scout: u64,
    current: Direction,
    /// The frontier size before the current bottom-up level.
    awake_before: u64,
}

impl DirectionPolicy {
    /// A search of a graph of `vertices` and `edges` (directed entries) from a source of
    /// degree `source_degree`.
    pub fn new(mode: BfsMode, vertices: u64, edges: u64, source_degree: u64) -> Self {
        Self {
            mode,
            vertices,
            edges_to_check: edges,
            scout: source_degree,
            current: Direction::TopDown,
            awake_before: 1,
        }
    }

    /// The direction of the next level, whose frontier holds `frontier` vertices.
    pub fn next(&mut self, frontier: u64) -> Direction {
        if self.mode == BfsMode::TopDown {
            return Direction::TopDown;
        }
        let growing = frontier >= self.awake_before;
        self.awake_before = frontier;
        if self.current == Direction::BottomUp {
            if growing || frontier > self.vertices / BETA {
                return Direction::BottomUp;
            }
            // GAP: the frontier turned into a queue again, with a scout count of 1.
            self.scout = 1;
            self.current = Direction::TopDown;
        }
        if self.scout > self.edges_to_check / ALPHA {
            self.current = Direction::BottomUp;
        } else {
            self.edges_to_check = self.edges_to_check.saturating_sub(self.scout);
        }
        self.current
    }

    /// Records a finished level: `frontier_edges` is the sum of the degrees of the vertices
    /// it claimed (read only after a top-down level).
    pub fn done(&mut self, frontier_edges: u64) {
        if self.current == Direction::TopDown {
            self.scout = frontier_edges;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_down_mode_never_turns() {
        let mut p = DirectionPolicy::new(BfsMode::TopDown, 100, 1000, 999);
        for f in [1, 50, 90, 5] {
            assert_eq!(p.next(f), Direction::TopDown);
            p.done(999);
        }
    }

    #[test]
    fn turns_bottom_up_on_a_heavy_frontier_and_back_when_it_shrinks() {
        // 1000 vertices, 30000 entries; the source has 10 edges: top-down first.
        let mut p = DirectionPolicy::new(BfsMode::DirectionOptimizing, 1000, 30_000, 10);
        assert_eq!(p.next(1), Direction::TopDown);
        // Its 10 neighbours carry 5000 edges > (30000 - 10) / 15: bottom-up.
        p.done(5000);
        assert_eq!(p.next(10), Direction::BottomUp);
        p.done(0);
        // Growing: stays.
        assert_eq!(p.next(600), Direction::BottomUp);
        p.done(0);
        // Shrinking but above n / BETA = 55: stays.
        assert_eq!(p.next(300), Direction::BottomUp);
        p.done(0);
        // Shrinking below it: top-down.
        assert_eq!(p.next(20), Direction::TopDown);
        p.done(40);
        assert_eq!(p.next(3), Direction::TopDown);
    }
}
