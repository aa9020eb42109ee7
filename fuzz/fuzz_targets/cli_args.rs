//! The `warpfs` command line: arguments (split at NUL bytes) parsed by the CLI's clap
//! definition, and each argument parsed as a size by `units::parse_size`. Parsing must never
//! panic; a size that parses must be what its digits and suffix say.
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
    let _ = cli::Cli::try_parse_from(std::iter::once("warpfs".to_string()).chain(args));
});
