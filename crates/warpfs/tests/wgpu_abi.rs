//! Drift test: the WGSL prelude (`shaders/warpfs.wgsl`) must mirror the Rust wire format.
//!
//! Parses the prelude with naga (the WGSL front end wgpu itself uses, so the offsets are the
//! ones the GPU sees) and compares `WfsRequest`'s size and member offsets with
//! `warpfs::abi::layout_table()`, `WfsParams` with the Rust uniform mirror, and the prelude's
//! constants with the Rust values. Needs no GPU.
#![cfg(feature = "wgpu")]

use std::collections::HashMap;
use warpfs::backend::wgpu::{params_layout_table, prelude_constants, PRELUDE};
use wgpu::naga;

/// `(size, member name → offset)` of the struct named `name` in the parsed prelude.
fn struct_layout(module: &naga::Module, name: &str) -> (u32, HashMap<String, u32>) {
    for (_, ty) in module.types.iter() {
        if ty.name.as_deref() == Some(name) {
            if let naga::TypeInner::Struct { members, span } = &ty.inner {
                let offsets = members
                    .iter()
                    .map(|m| (m.name.clone().expect("named member"), m.offset))
                    .collect();
                return (*span, offsets);
            }
        }
    }
    panic!("struct {name} is missing from shaders/warpfs.wgsl");
}

fn parse() -> naga::Module {
    naga::front::wgsl::parse_str(PRELUDE)
        .unwrap_or_else(|e| panic!("the prelude does not parse:\n{}", e.emit_to_string(PRELUDE)))
}

#[test]
fn wgsl_request_matches_abi_layout_table() {
    let module = parse();
    let (size, offsets) = struct_layout(&module, "WfsRequest");
    let table: Vec<_> = warpfs::abi::layout_table()
        .into_iter()
        .filter(|(n, _)| n.contains("WfsRequest"))
        .collect();
    assert!(table.len() >= 10, "layout_table lost its WfsRequest rows");
    let mut checked = 0;
    for (name, rust) in table {
        let wgsl = if name == "sizeof(WfsRequest)" {
            size
        } else {
            let field = name.strip_prefix("WfsRequest.").expect("field row");
            *offsets
                .get(field)
                .unwrap_or_else(|| panic!("WGSL WfsRequest lacks field {field}"))
        };
        assert_eq!(wgsl as usize, rust, "{name}: WGSL {wgsl} vs Rust {rust}");
        checked += 1;
    }
    assert_eq!(
        offsets.len() + 1,
        checked,
        "the WGSL WfsRequest has fields the Rust one does not"
    );
}

#[test]
fn wgsl_params_match_the_rust_uniform() {
    let module = parse();
    let (size, offsets) = struct_layout(&module, "WfsParams");
    let table = params_layout_table();
    for (name, rust) in &table {
        let wgsl = if *name == "sizeof(WfsParams)" {
            size
        } else {
            *offsets
                .get(*name)
                .unwrap_or_else(|| panic!("WGSL WfsParams lacks field {name}"))
        };
        assert_eq!(
            wgsl as usize, *rust,
            "WfsParams.{name}: WGSL {wgsl} vs Rust {rust}"
        );
    }
    assert_eq!(offsets.len() + 1, table.len(), "field sets differ");
}

#[test]
fn wgsl_constants_match_rust() {
    let module = parse();
    let mut found = 0;
    for (name, want) in prelude_constants() {
        let (_, c) = module
            .constants
            .iter()
            .find(|(_, c)| c.name.as_deref() == Some(name))
            .unwrap_or_else(|| panic!("constant {name} is missing from the prelude"));
        let got = match module.global_expressions[c.init] {
            naga::Expression::Literal(naga::Literal::U32(v)) => v,
            ref other => panic!("{name} is not a u32 literal: {other:?}"),
        };
        assert_eq!(got, want, "{name}: WGSL {got} vs Rust {want}");
        found += 1;
    }
    assert!(found >= 12);
}
