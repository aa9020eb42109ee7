//! Drift test: `include/warpfs_abi.h` must describe exactly the records of `warpfs::abi`.
//!
//! Writes a C program that includes the header and prints the `sizeof`/`offsetof` of every
//! entry of [`warpfs::abi::layout_table`] (generated from the Rust names, so it does not trust
//! the header's own table), then the header's `WFS_LAYOUT` table, then the constants; compiles
//! it with `$CC` (or `cc`), runs it and compares every number. Needs a C compiler: without one
//! the test fails and says to install gcc.

use std::path::{Path, PathBuf};
use std::process::Command;
use warpfs::abi;

fn include_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../include")
}

/// The C compiler to use: `$CC`, else `cc`. Panics (test failure) if neither runs.
fn c_compiler() -> String {
    let cc = std::env::var("CC")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "cc".into());
    match Command::new(&cc).arg("--version").output() {
        Ok(out) if out.status.success() => cc,
        _ => panic!(
            "no C compiler found (tried `{cc}`): this test compiles include/warpfs_abi.h; \
             install gcc (e.g. `apt-get install -y gcc`) or point $CC at a C compiler"
        ),
    }
}

/// A fresh scratch directory under the system temp dir.
fn scratch_dir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warpfs-abi-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir in the temp dir");
    dir
}

/// The C expression for one `layout_table` name: `sizeof(T)` or `T.field` → `offsetof(T, field)`.
fn c_expr(name: &str) -> String {
    if name.starts_with("sizeof(") {
        name.to_string()
    } else {
        let (ty, field) = name
            .split_once('.')
            .unwrap_or_else(|| panic!("bad layout_table name {name:?}"));
        format!("offsetof({ty}, {field})")
    }
}

/// Constants the header must define, with their Rust values.
fn constants() -> Vec<(&'static str, u64)> {
    vec![
        ("WFS_ABI_VERSION", abi::WFS_ABI_VERSION as u64),
        ("WFS_RING_MAGIC", abi::WFS_RING_MAGIC as u64),
        ("WFS_OP_READ", abi::WFS_OP_READ as u64),
        ("WFS_OP_WRITE", abi::WFS_OP_WRITE as u64),
        ("WFS_OP_FSYNC", abi::WFS_OP_FSYNC as u64),
        ("WFS_OP_SIZE", abi::WFS_OP_SIZE as u64),
        ("WFS_OP_PREFETCH", abi::WFS_OP_PREFETCH as u64),
        ("WFS_COMP_FREE", abi::WFS_COMP_FREE as u64),
        ("WFS_COMP_PENDING", abi::WFS_COMP_PENDING as u64),
        ("WFS_COMP_DONE", abi::WFS_COMP_DONE as u64),
        ("WFS_COMP_CLAIMED", abi::WFS_COMP_CLAIMED as u64),
        ("WFS_COMP_SLEEPING", abi::WFS_COMP_SLEEPING as u64),
        ("WFS_MAX_END", abi::WFS_MAX_END),
        ("WFS_GPU_CTX_MAGIC", abi::WFS_GPU_CTX_MAGIC as u64),
        ("WFS_VIEW_SLOTS", abi::WFS_VIEW_SLOTS as u64),
    ]
}

fn c_program() -> String {
    let mut src = String::from(
        "#include <stdio.h>\n#include \"warpfs_abi.h\"\n\
         #define ROW(name, value) printf(\"layout %s %zu\\n\", name, (size_t)(value));\n\
         int main(void) {\n",
    );
    for (name, _) in abi::layout_table() {
        src += &format!(
            "    printf(\"direct %s %zu\\n\", \"{name}\", (size_t)({}));\n",
            c_expr(name)
        );
    }
    src += "    WFS_LAYOUT(ROW)\n";
    for (name, _) in constants() {
        src += &format!(
            "    printf(\"const %s %llu\\n\", \"{name}\", (unsigned long long)({name}));\n"
        );
    }
    src += "    printf(\"align WfsSlot %zu\\n\", (size_t)_Alignof(WfsSlot));\n    \
            printf(\"align WfsRingHeader %zu\\n\", (size_t)_Alignof(WfsRingHeader));\n    \
            return 0;\n}\n";
    src
}

/// Compiles `src` (written as `file`) with `compiler` and `flags`; returns the binary path.
fn compile(compiler: &str, dir: &Path, file: &str, src: &str, flags: &[&str]) -> PathBuf {
    let source = dir.join(file);
    std::fs::write(&source, src).expect("write C source");
    let exe = dir.join(format!("{file}.bin"));
    let out = Command::new(compiler)
        .args(flags)
        .arg("-I")
        .arg(include_dir())
        .arg("-o")
        .arg(&exe)
        .arg(&source)
        .output()
        .unwrap_or_else(|e| panic!("running {compiler}: {e}"));
    assert!(
        out.status.success(),
        "{compiler} {flags:?} failed on include/warpfs_abi.h:\n{}\n--- source ---\n{src}",
        String::from_utf8_lossy(&out.stderr)
    );
    exe
}

fn run(exe: &Path) -> String {
    let out = Command::new(exe).output().expect("run compiled C program");
    assert!(out.status.success(), "C program failed: {out:?}");
    String::from_utf8(out.stdout).expect("C program prints ASCII")
}

/// Lines `kind name value` of the program output with the given kind.
fn rows(output: &str, kind: &str) -> Vec<(String, u64)> {
    output
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            (it.next()? == kind).then_some(())?;
            let name = it.next()?.to_string();
            let value = it.next()?.parse().ok()?;
            Some((name, value))
        })
        .collect()
}

fn rust_layout() -> Vec<(String, u64)> {
    abi::layout_table()
        .into_iter()
        .map(|(n, v)| (n.to_string(), v as u64))
        .collect()
}

#[test]
fn c_header_matches_rust_layout_and_constants() {
    let cc = c_compiler();
    let dir = scratch_dir("c");
    let exe = compile(
        &cc,
        &dir,
        "layout.c",
        &c_program(),
        &["-std=c11", "-Wall", "-Wextra", "-Werror", "-pedantic"],
    );
    let output = run(&exe);
    let rust = rust_layout();

    let direct = rows(&output, "direct");
    assert_eq!(
        direct.len(),
        rust.len(),
        "C program printed {} layout rows, Rust has {}",
        direct.len(),
        rust.len()
    );
    for (c, r) in direct.iter().zip(&rust) {
        assert_eq!(
            c, r,
            "include/warpfs_abi.h disagrees with abi.rs on {} (C {}, Rust {})",
            r.0, c.1, r.1
        );
    }

    let table = rows(&output, "layout");
    assert_eq!(
        table, rust,
        "WFS_LAYOUT in include/warpfs_abi.h must list the entries of abi::layout_table() with the same names, order and values"
    );

    for ((name, c), (rname, r)) in rows(&output, "const").iter().zip(constants()) {
        assert_eq!(name, rname);
        assert_eq!(
            *c, r,
            "{name} is {c:#x} in include/warpfs_abi.h but {r:#x} in abi.rs"
        );
    }
    assert_eq!(
        rows(&output, "const").len(),
        constants().len(),
        "a constant is missing from the C output"
    );

    let align = rows(&output, "align");
    assert_eq!(
        align,
        vec![
            ("WfsSlot".to_string(), 64),
            ("WfsRingHeader".to_string(), 64)
        ]
    );
    assert_eq!(core::mem::align_of::<abi::WfsSlot>(), 64);
    assert_eq!(core::mem::align_of::<abi::WfsRingHeader>(), 64);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The header also compiles as C99 (no static_assert) and, where a C++ compiler exists, as C++11
/// with its static assertions. C++ is optional: only the C compiler is required.
#[test]
fn c_header_compiles_as_c99_and_cpp11() {
    let cc = c_compiler();
    let dir = scratch_dir("std");
    let src = "#include \"warpfs_abi.h\"\nint main(void) { WfsSlot s; s.seq = WFS_OP_READ; return (int)s.seq - 1; }\n";
    compile(&cc, &dir, "c99.c", src, &["-std=c99", "-Wall", "-Werror"]);
    let cxx = std::env::var("CXX").unwrap_or_else(|_| "c++".into());
    if Command::new(&cxx)
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
    {
        let src = "#include \"warpfs_abi.h\"\nstatic_assert(alignof(WfsSlot) == 64, \"slot alignment\");\n\
                   int main() { WfsSlot s{}; return static_cast<int>(s.seq); }\n";
        compile(
            &cxx,
            &dir,
            "cxx11.cpp",
            src,
            &["-std=c++11", "-Wall", "-Werror"],
        );
    } else {
        eprintln!("note: no C++ compiler ({cxx}); C++ compile of warpfs_abi.h not checked");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
