//! End-to-end tests of the `warpfs` binary (std::process::Command, no timing assertions).

use std::process::{Command, Output};

fn warpfs(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_warpfs"))
        .args(args)
        .output()
        .expect("run the warpfs binary")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_works_and_names_the_commands() {
    let out = warpfs(&["--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    assert!(help.contains("bench") && help.contains("stat"), "{help}");

    let out = warpfs(&["bench", "--help"]);
    assert!(out.status.success(), "{out:?}");
    let help = text(&out.stdout);
    for flag in [
        "--backend",
        "--json",
        "--size",
        "--file",
        "--dir",
        "--phases",
        "--threads",
        "--qd",
        "--seconds",
    ] {
        assert!(
            help.contains(flag),
            "bench --help must mention {flag}:\n{help}"
        );
    }
}

#[test]
fn bench_json_has_every_phase_and_no_mismatches() {
    let out = warpfs(&["bench", "--size", "16M", "--seconds", "1", "--json"]);
    let stdout = text(&out.stdout);
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        out.status,
        text(&out.stderr)
    );
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("invalid JSON ({e}):\n{stdout}"));
    for key in [
        "version",
        "engine",
        "backend",
        "cores",
        "file",
        "config",
        "phases",
        "mismatches",
    ] {
        assert!(v.get(key).is_some(), "missing key {key} in\n{stdout}");
    }
    assert_eq!(v["backend"], "host");
    assert_eq!(v["file"]["size"], 16 << 20);
    assert_eq!(v["file"]["temporary"], true);
    assert_eq!(v["mismatches"], 0, "{stdout}");
    let phases = v["phases"].as_array().expect("phases is an array");
    let names: Vec<&str> = phases
        .iter()
        .map(|p| p["phase"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["seq", "rand-read", "rand-write"]);
    for p in phases {
        for side in ["warpfs", "baseline"] {
            let f = &p[side];
            assert!(
                f["ops"].as_u64().unwrap() > 0,
                "{side} of {} did no work: {p}",
                p["phase"]
            );
            assert_eq!(f["mismatches"], 0, "{p}");
            assert!(
                f["value"].as_f64().is_some() && f["unit"].is_string(),
                "{p}"
            );
        }
        assert!(p["ratio"].as_f64().is_some(), "{p}");
    }
    let path = v["file"]["path"].as_str().unwrap();
    assert!(
        !std::path::Path::new(path).exists(),
        "temporary file {path} was left behind"
    );
}

#[test]
fn stat_of_a_missing_file_fails_helpfully() {
    let out = warpfs(&["stat", "/nonexistent/warpfs-test-file"]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("no such file") && err.contains("check the path"),
        "{err}"
    );
}

#[test]
fn gpu_backends_missing_from_this_build_say_how_to_get_them() {
    let out = warpfs(&["bench", "--backend", "wgpu", "--size", "1M"]);
    if cfg!(feature = "wgpu") {
        // Built with wgpu (CI installs lavapipe): the bench runs and verifies every read.
        assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
        let stdout = text(&out.stdout);
        for phase in ["seq-scan", "rand-pages"] {
            let line = stdout.lines().find(|l| l.starts_with(phase));
            assert!(
                line.is_some_and(|l| l.trim_end().ends_with("| yes")),
                "{phase} not verified: {stdout}"
            );
        }
    } else {
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("no wgpu backend"),
            "{}",
            text(&out.stderr)
        );
    }
    if !cfg!(feature = "cuda") {
        let out = warpfs(&["bench", "--backend", "cuda", "--size", "1M"]);
        assert_eq!(out.status.code(), Some(2));
        assert!(
            text(&out.stderr).contains("rebuild with --features cuda"),
            "{}",
            text(&out.stderr)
        );
    }
}

#[test]
fn stat_reports_size_of_a_file() {
    let out = warpfs(&["stat", "--json", env!("CARGO_BIN_EXE_warpfs")]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("stat --json is JSON");
    assert!(v["size"].as_u64().unwrap() > 0);
    assert!(v["o_direct"].is_boolean());
}

#[test]
fn graph_gen_then_bfs_checks_and_reports() {
    let dir = std::env::temp_dir().join(format!("warpfs-cli-graph-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let g = dir.join("k10.csr");
    let g = g.to_str().unwrap();
    let out = warpfs(&["graph", "gen", g, "--scale", "10", "--seed", "3", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let j: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(j["vertices"], 1024);
    let edges = j["edges_directed"].as_u64().unwrap();
    assert!(edges > 0 && edges.is_multiple_of(2));

    let out = warpfs(&["graph", "bfs", g, "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(r["edges_directed"].as_u64(), Some(edges));
    assert!(r["visited"].as_u64().unwrap() > 1);
    assert!(r["traversed_edges"].as_u64().unwrap() > 0);
    assert_eq!(r["rows"][0]["method"], "CPU (rayon)");
    assert_eq!(r["rows"][0]["matches_cpu"], true);
    // Direction-optimizing by default (the generator marks its graphs symmetric), from the hub:
    // bottom-up levels, fewer bytes needed than top-down.
    assert_eq!(r["mode"], "direction-optimizing");
    let dirs = r["directions"].as_array().unwrap();
    assert_eq!(dirs.len() as u64, r["depth"].as_u64().unwrap());
    assert!(dirs.iter().any(|d| d == "bottom-up"), "{dirs:?}");
    let out = warpfs(&["graph", "bfs", g, "--json", "--direction", "top-down"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let td: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(td["mode"], "top-down");
    assert!(td["directions"]
        .as_array()
        .unwrap()
        .iter()
        .all(|d| d == "top-down"));
    assert_eq!(td["visited"], r["visited"]);
    assert!(td["needed_bytes"].as_u64() > r["needed_bytes"].as_u64());
    // A file not marked symmetric runs top-down, and says why.
    let asym = dir.join("asym.csr");
    let mut bytes = std::fs::read(g).unwrap();
    bytes[48..56].copy_from_slice(&0u64.to_le_bytes());
    std::fs::write(&asym, bytes).unwrap();
    let out = warpfs(&["graph", "bfs", asym.to_str().unwrap(), "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let a: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(a["mode"], "top-down");
    assert!(
        a["skipped"]
            .as_array()
            .unwrap()
            .iter()
            .any(|s| s.as_str().unwrap().contains("not marked symmetric")),
        "{a}"
    );

    // A corrupt file is refused with the reason, exit code 2.
    let bad = dir.join("bad.csr");
    let mut bytes = std::fs::read(g).unwrap();
    bytes.truncate(bytes.len() - 4);
    std::fs::write(&bad, bytes).unwrap();
    let out = warpfs(&["graph", "bfs", bad.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("truncated"),
        "{}",
        text(&out.stderr)
    );
    // --plot needs --sweep-cache.
    let out = warpfs(&["graph", "bfs", g, "--plot", dir.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out.stderr).contains("--sweep-cache"));
    let _ = std::fs::remove_dir_all(&dir);
}
