//! Measures the CPU an idle runtime burns: `cargo run --release --example idle_cpu [workers]`.
use std::collections::HashMap;

fn threads() -> HashMap<String, u64> {
    let mut m = HashMap::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap() {
        let p = e.unwrap().path();
        let stat = std::fs::read_to_string(p.join("stat")).unwrap();
        let f: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap()
            .split_whitespace()
            .collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        m.insert(p.file_name().unwrap().to_string_lossy().into_owned(), ticks);
    }
    m
}

fn main() {
    let workers = std::env::args().nth(1).map_or(8, |a| a.parse().unwrap());
    let rt = warpfs::Runtime::new(warpfs::RuntimeConfig {
        workers,
        ..Default::default()
    })
    .unwrap();
    std::thread::sleep(std::time::Duration::from_secs(3));
    let a = threads();
    let t0 = std::time::Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(10));
    let b = threads();
    let ticks: u64 = b
        .iter()
        .map(|(k, v)| v - a.get(k).copied().unwrap_or(0))
        .sum();
    let hz = 100.0; // USER_HZ
    println!(
        "idle runtime ({workers} workers, engine {}): {:.3}% of a core",
        rt.engine_name(),
        100.0 * ticks as f64 / hz / t0.elapsed().as_secs_f64()
    );
}
