//! The `warpfs` command line: arguments (split at NUL bytes) parsed by the CLI's clap
//! definition, and each argument parsed as a size by `units::parse_size` and as a duration by
//! `bench::soak::parse_duration`. Parsing must never panic; a size that parses must be what its
//! digits and suffix say, a duration positive.
#![no_main]
#![allow(dead_code, unused_imports)]

#[path = "../../crates/warpfs-cli/src/backend.rs"]
mod backend;
#[path = "../../crates/warpfs-cli/src/cli.rs"]
mod cli;
#[path = "../../crates/warpfs-cli/src/error.rs"]
mod error;
#[path = "../../crates/warpfs-cli/src/units.rs"]
mod units;
#[path = "../../crates/warpfs-cli/src/bench/soak.rs"]
mod soak;
/// The arguments of `warpfs graph` (the commands themselves are not needed to parse them);
/// `args.rs` names its sibling as `super::cache_size`.
#[path = "../../crates/warpfs-cli/src/graph/args.rs"]
mod graph_args;
#[path = "../../crates/warpfs-cli/src/graph/cache_size.rs"]
mod cache_size;
mod graph {
    pub(crate) use super::graph_args::*;
}
/// `crate::bench::soak` as the CLI's sources name it.
mod bench {
    pub(crate) use super::soak;
}

use clap::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args: Vec<String> = data
        .split(|&b| b == 0)
        .take(16)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    for a in &args {
        if let Ok(n) = units::parse_size(a) {
            let t = a.trim();
            let digits: String = t.chars().take_while(|c| c.is_ascii_digit()).collect();
            let base: u64 = digits.parse().expect("a parsed size starts with digits");
            assert!(n >= base && (base == 0 || n % base == 0), "{a:?} -> {n}");
        }
    }
    for a in &args {
        if let Ok(d) = soak::parse_duration(a) {
            assert!(!d.is_zero(), "{a:?} -> {d:?}");
        }
    }
    let _ = cli::Cli::try_parse_from(std::iter::once("warpfs".to_string()).chain(args));
});
