//! The wgpu backend run for real (Mesa lavapipe in CI, any Vulkan/Metal GPU elsewhere).
//!
//! Every word a shader reads is compared with the file's pattern (a function of the offset);
//! output buffers are poisoned first, caches are far smaller than the data, and reads past the end
//! of a file must report EOF. Without a wgpu adapter each test prints why and passes, unless
//! `WARPFS_REQUIRE_WGPU=1` (CI), where a missing adapter fails the test.
#![cfg(feature = "wgpu")]

use std::path::PathBuf;
use warpfs::backend::wgpu::{
    bench, BindingKind, FaultReplay, ReplayConfig, WgpuBenchConfig, WgpuContext, WgpuError,
};
use warpfs::cache::CacheConfig;
use warpfs::{OpenOptions, Runtime, RuntimeConfig};
use wgpu::util::DeviceExt;

const POISON: u32 = 0xDEAD_BEEF;

/// The adapter, or `None` (test skipped) where there is none and CI did not ask for one.
fn ctx() -> Option<WgpuContext> {
    match WgpuContext::new() {
        Ok(c) => {
            eprintln!("wgpu adapter: {:?}", c.adapter_info());
            Some(c)
        }
        Err(WgpuError::NoAdapter(m)) => {
            if std::env::var("WARPFS_REQUIRE_WGPU").is_ok_and(|v| v == "1") {
                panic!("WARPFS_REQUIRE_WGPU=1 but no wgpu adapter: {m}");
            }
            eprintln!("SKIPPED: no wgpu adapter ({m}); install mesa-vulkan-drivers libvulkan1");
            None
        }
        Err(e) => panic!("wgpu context: {e}"),
    }
}

fn runtime() -> Runtime {
    Runtime::new(RuntimeConfig {
        cache: CacheConfig {
            page_size: 4096,
            capacity: 16 << 20,
        },
        ..RuntimeConfig::default()
    })
    .expect("runtime")
}

/// Word `i` of the pattern of file `seed`.
fn pattern_word(seed: u32, i: u64) -> u32 {
    let mut x =
        (i as u32) ^ ((i >> 32) as u32).wrapping_mul(0x9E37_79B9) ^ seed.wrapping_mul(0x85EB_CA6B);
    x ^= x >> 16;
    x = x.wrapping_mul(0x7FEB_352D);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846C_A68B);
    x ^ (x >> 16)
}

/// Expected word `i` of a `len`-byte pattern file (the bytes past the end read as 0).
fn expected_word(seed: u32, len: u64, i: u64) -> u32 {
    let start = i * 4;
    if start >= len {
        return 0;
    }
    let valid = (len - start).min(4);
    let w = pattern_word(seed, i);
    if valid == 4 {
        w
    } else {
        w & ((1u32 << (valid * 8)) - 1)
    }
}

fn pattern_file(name: &str, seed: u32, len: u64) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("warpfs-wgpu-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    let mut bytes = Vec::with_capacity(len as usize + 4);
    for i in 0..len.div_ceil(4) {
        bytes.extend_from_slice(&pattern_word(seed, i).to_le_bytes());
    }
    bytes.truncate(len as usize);
    std::fs::write(&p, bytes).unwrap();
    p
}

fn storage_init(ctx: &WgpuContext, words: usize, fill: u32) -> wgpu::Buffer {
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test storage"),
            contents: bytemuck::cast_slice(&vec![fill; words.max(1)]),
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        })
}

fn uniform(ctx: &WgpuContext, words: &[u32; 4]) -> wgpu::Buffer {
    ctx.device()
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("test uniform"),
            contents: bytemuck::cast_slice(words),
            usage: wgpu::BufferUsages::UNIFORM,
        })
}

fn read_words(ctx: &WgpuContext, buf: &wgpu::Buffer) -> Vec<u32> {
    let size = buf.size();
    let rb = ctx.device().create_buffer(&wgpu::BufferDescriptor {
        label: Some("test read-back"),
        size,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut enc = ctx.device().create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(buf, 0, &rb, 0, size);
    ctx.queue().submit([enc.finish()]);
    rb.map_async(wgpu::MapMode::Read, .., |r| r.expect("map"));
    ctx.device()
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("poll");
    let v = bytemuck::pod_collect_to_vec(&rb.get_mapped_range(..).unwrap());
    rb.unmap();
    v
}

/// Item `i` copies words `[i*chunk, (i+1)*chunk)` of file `cfg.file` into `out` (and each
/// load's status into `status`) once every one of them hit. `cfg.mode == 1`: item `i` copies the
/// chunk `hash(i) % chunks` of file `i % 2` to its own output slot `i`.
const COPY_WGSL: &str = r#"
struct Cfg { words: u32, file: u32, chunk: u32, mode: u32 }
@group(1) @binding(0) var<uniform> cfg: Cfg;
@group(1) @binding(1) var<storage, read_write> out: array<u32>;
@group(1) @binding(2) var<storage, read_write> status: array<u32>;

fn h(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u; x *= 0x7feb352du; x ^= x >> 15u; x *= 0x846ca68bu; x ^= x >> 16u;
    return x;
}

@compute @workgroup_size(32)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = wfs_item(gid, nwg);
    if (item == WFS_NONE) { return; }
    var file = cfg.file;
    var src = item;
    if (cfg.mode == 1u) {
        file = item % 2u;
        src = h(item) % ((cfg.words + cfg.chunk - 1u) / cfg.chunk);
    }
    var acc = 0u;
    for (var w = 0u; w < cfg.chunk; w++) {
        acc += wfs_word(file, src * cfg.chunk + w);
    }
    if (!wfs_finish(item)) { return; }
    for (var w = 0u; w < cfg.chunk; w++) {
        let v = wfs_word(file, src * cfg.chunk + w);
        out[item * cfg.chunk + w] = v;
        status[item * cfg.chunk + w] = wfs_status;
    }
}
"#;

const COPY_BINDINGS: [BindingKind; 3] = [
    BindingKind::Uniform,
    BindingKind::Storage,
    BindingKind::Storage,
];

fn small_cache(pages: u64) -> ReplayConfig {
    ReplayConfig {
        cache_bytes: pages * 4096,
        page_size: 4096,
        staging_bytes: 3 * 4096,
        ..ReplayConfig::default()
    }
}

/// Copies a whole file 8× the GPU cache (plus a ragged tail) and checks every word and status.
fn copy_whole_file(force_staging: bool) {
    let Some(ctx) = ctx() else { return };
    let rt = runtime();
    let cache_pages = 8u64;
    let len = 8 * cache_pages * 4096 + 1234;
    let path = pattern_file(&format!("copy-{force_staging}"), 7, len);
    let f = rt.open(&path, OpenOptions::read_only()).unwrap();
    let cfg = ReplayConfig {
        force_staging,
        ..small_cache(cache_pages)
    };
    let mut fr = FaultReplay::new(&ctx, &rt, cfg).unwrap();
    assert_eq!(
        fr.mapped_uploads(),
        ctx.mappable_primary() && !force_staging
    );
    let pipe = fr.compile(COPY_WGSL, "main", &COPY_BINDINGS).unwrap();
    let chunk = 64u32;
    let words = len.div_ceil(4) as u32;
    let items = words.div_ceil(chunk) + 1; // one item entirely past EOF
    let total = (items * chunk) as usize;
    let u = uniform(&ctx, &[words, 0, chunk, 0]);
    let out = storage_init(&ctx, total, POISON);
    let status = storage_init(&ctx, total, POISON);
    let st = fr.run(&pipe, &[&f], items, &[&u, &out, &status]).unwrap();
    eprintln!("{st:?}");
    let out = read_words(&ctx, &out);
    let status = read_words(&ctx, &status);
    let file_words = len.div_ceil(4);
    for i in 0..total {
        let want = expected_word(7, len, i as u64);
        assert_eq!(
            out[i],
            want,
            "word {i} (byte {}) of a {len}-byte file",
            i * 4
        );
        let want_status = if (i as u64) < file_words { 0 } else { 2 };
        assert_eq!(status[i], want_status, "status of word {i}");
    }
    let pages = len.div_ceil(4096);
    assert_eq!(st.items_done, items as u64);
    assert!(
        st.pages_served >= pages,
        "{} pages served for {pages}",
        st.pages_served
    );
    assert!(st.evictions >= pages - cache_pages, "{st:?}");
    assert!(st.rounds >= 2);
    assert!(st.loads_missed > 0 && st.loads_hit > 0);
    assert!(st.hit_rate() > 0.0 && st.hit_rate() < 1.0);
    assert_eq!(st.bytes_uploaded, st.pages_served * 4096);
    assert_eq!(st.bad_requests, 0);
    assert!(
        st.parked_rounds > 0,
        "the cache is 8x too small: parking must happen"
    );
}

#[test]
fn copy_file_8x_cache_mapped_or_default() {
    copy_whole_file(false);
}

#[test]
fn copy_file_8x_cache_through_staging() {
    copy_whole_file(true);
}

#[test]
fn random_chunks_of_two_files() {
    let Some(ctx) = ctx() else { return };
    let rt = runtime();
    let len = 20 * 4096 + 8;
    let a = rt
        .open(pattern_file("rand-a", 1, len), OpenOptions::read_only())
        .unwrap();
    let b = rt
        .open(pattern_file("rand-b", 2, len), OpenOptions::read_only())
        .unwrap();
    let mut fr = FaultReplay::new(&ctx, &rt, small_cache(6)).unwrap();
    let pipe = fr.compile(COPY_WGSL, "main", &COPY_BINDINGS).unwrap();
    let chunk = 16u32;
    let words = len.div_ceil(4) as u32;
    let items = 700u32;
    let total = (items * chunk) as usize;
    let u = uniform(&ctx, &[words, 0, chunk, 1]);
    let out = storage_init(&ctx, total, POISON);
    let status = storage_init(&ctx, total, POISON);
    let st = fr
        .run(&pipe, &[&a, &b], items, &[&u, &out, &status])
        .unwrap();
    let out = read_words(&ctx, &out);
    let status = read_words(&ctx, &status);
    let chunks = words.div_ceil(chunk);
    let hash = warpfs::backend::wgpu::bench::bench_hash;
    for item in 0..items {
        let seed = 1 + item % 2;
        let src = hash(item) % chunks;
        for w in 0..chunk {
            let idx = (src * chunk + w) as u64;
            let at = (item * chunk + w) as usize;
            assert_eq!(
                out[at],
                expected_word(seed, len, idx),
                "item {item} word {w}"
            );
            let want = if idx < len.div_ceil(4) { 0 } else { 2 };
            assert_eq!(status[at], want, "item {item} word {w} status");
        }
    }
    assert_eq!(st.items_done, items as u64);
    assert!(st.evictions > 0);
}

/// Loads at and past the end of a 10-byte file, bytes and words, and of an unbound file index.
#[test]
fn reads_past_eof_report_eof() {
    let Some(ctx) = ctx() else { return };
    let rt = runtime();
    let len = 10u64;
    let f = rt
        .open(pattern_file("eof", 3, len), OpenOptions::read_only())
        .unwrap();
    let src = r#"
@group(1) @binding(0) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(1)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = wfs_item(gid, nwg);
    if (item == WFS_NONE) { return; }
    var v: array<u32, 64>;
    for (var i = 0u; i < 8u; i++) { v[2u * i] = wfs_word(0u, i); v[2u * i + 1u] = wfs_status; }
    for (var i = 0u; i < 16u; i++) { v[16u + 2u * i] = wfs_byte(0u, i); v[17u + 2u * i] = wfs_status; }
    v[48] = wfs_word(3u, 0u); v[49] = wfs_status;          // file 3 is not bound
    v[50] = wfs_word(0u, 1u << 30u); v[51] = wfs_status;   // far past the end
    v[52] = wfs_file_size(0u).x; v[53] = wfs_file_size(0u).y;
    if (wfs_finish(item)) { for (var i = 0u; i < 54u; i++) { out[i] = v[i]; } }
}
"#;
    let mut fr = FaultReplay::new(&ctx, &rt, small_cache(4)).unwrap();
    let pipe = fr.compile(src, "main", &[BindingKind::Storage]).unwrap();
    let out = storage_init(&ctx, 64, POISON);
    let st = fr.run(&pipe, &[&f], 1, &[&out]).unwrap();
    let v = read_words(&ctx, &out);
    for i in 0..8u64 {
        let want_status = if i * 4 < len { 0 } else { 2 };
        assert_eq!(v[2 * i as usize + 1], want_status, "word {i} status");
        assert_eq!(v[2 * i as usize], expected_word(3, len, i), "word {i}");
    }
    for i in 0..16u64 {
        let (val, status) = (v[16 + 2 * i as usize], v[17 + 2 * i as usize]);
        if i < len {
            let want = (expected_word(3, len, i / 4) >> ((i % 4) * 8)) & 0xff;
            assert_eq!((val, status), (want, 0), "byte {i}");
        } else {
            assert_eq!((val, status), (0, 2), "byte {i} is past the end");
        }
    }
    assert_eq!((v[48], v[49]), (0, 2), "unbound file");
    assert_eq!((v[50], v[51]), (0, 2), "far past the end");
    assert_eq!((v[52], v[53]), (len as u32, 0), "file size");
    assert_eq!(st.pages_served, 1);
    assert_eq!(st.rounds, 2);
}

#[test]
fn warm_second_run_serves_no_pages() {
    let Some(ctx) = ctx() else { return };
    let rt = runtime();
    let len = 5 * 4096u64;
    let f = rt
        .open(pattern_file("warm", 4, len), OpenOptions::read_only())
        .unwrap();
    let mut fr = FaultReplay::new(&ctx, &rt, small_cache(8)).unwrap();
    let pipe = fr.compile(COPY_WGSL, "main", &COPY_BINDINGS).unwrap();
    let words = (len / 4) as u32;
    let items = words / 64;
    let u = uniform(&ctx, &[words, 0, 64, 0]);
    let out = storage_init(&ctx, words as usize, POISON);
    let status = storage_init(&ctx, words as usize, POISON);
    let cold = fr.run(&pipe, &[&f], items, &[&u, &out, &status]).unwrap();
    assert_eq!(cold.pages_served, 5);
    assert_eq!(cold.rounds, 2);
    let out2 = storage_init(&ctx, words as usize, POISON);
    let warm = fr.run(&pipe, &[&f], items, &[&u, &out2, &status]).unwrap();
    assert_eq!(warm.pages_served, 0, "{warm:?}");
    assert_eq!(warm.rounds, 1);
    assert_eq!(warm.hit_rate(), 1.0);
    let got = read_words(&ctx, &out2);
    for (i, &w) in got.iter().enumerate() {
        assert_eq!(w, expected_word(4, len, i as u64), "warm word {i}");
    }
}

/// Item `i` touches pages `i .. i + cfg.chunk` (one word each) of file 0.
const SPAN_WGSL: &str = r#"
struct Cfg { words: u32, file: u32, chunk: u32, mode: u32 }
@group(1) @binding(0) var<uniform> cfg: Cfg;
@group(1) @binding(1) var<storage, read_write> out: array<u32>;
@compute @workgroup_size(16)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = wfs_item(gid, nwg);
    if (item == WFS_NONE) { return; }
    var acc = 0u;
    for (var p = 0u; p < cfg.chunk; p++) { acc += wfs_word(0u, (item + p) * 1024u + 5u); }
    if (wfs_finish(item)) { out[item] = acc; }
}
"#;

fn span_run(pages_per_item: u32, slots: u64, items: u32) -> Result<Vec<u32>, WgpuError> {
    let ctx = ctx().expect("checked by the caller");
    let rt = runtime();
    let len = 64 * 4096u64;
    let f = rt
        .open(
            pattern_file(&format!("span-{pages_per_item}-{slots}"), 5, len),
            OpenOptions::read_only(),
        )
        .unwrap();
    let mut fr = FaultReplay::new(&ctx, &rt, small_cache(slots))?;
    let pipe = fr.compile(
        SPAN_WGSL,
        "main",
        &[BindingKind::Uniform, BindingKind::Storage],
    )?;
    let u = uniform(&ctx, &[0, 0, pages_per_item, 0]);
    let out = storage_init(&ctx, items as usize, POISON);
    fr.run(&pipe, &[&f], items, &[&u, &out])?;
    Ok(read_words(&ctx, &out))
}

#[test]
fn items_needing_every_slot_finish() {
    if ctx().is_none() {
        return;
    }
    // 3 pages per item, 3 slots, 40 items all wanting pages at once: parking to one item.
    let got = span_run(3, 3, 40).unwrap();
    for (i, &g) in got.iter().enumerate() {
        let want = (0..3u64).fold(0u32, |a, p| {
            a.wrapping_add(pattern_word(5, (i as u64 + p) * 1024 + 5))
        });
        assert_eq!(g, want, "item {i}");
    }
}

#[test]
fn an_item_larger_than_the_cache_is_a_stall_error() {
    if ctx().is_none() {
        return;
    }
    match span_run(3, 2, 4) {
        Err(WgpuError::Stalled { rounds, hint }) => {
            assert!(rounds > 1);
            assert!(hint.contains("cache"), "{hint}");
        }
        other => panic!("expected a stall, got {other:?}"),
    }
}

#[test]
fn shader_errors_are_typed() {
    let Some(ctx) = ctx() else { return };
    let rt = runtime();
    let fr = FaultReplay::new(&ctx, &rt, small_cache(4)).unwrap();
    let e = fr.compile("fn main( {", "main", &[]).unwrap_err();
    assert!(matches!(e, WgpuError::Shader(_)), "{e:?}");
    let ok_src = "@compute @workgroup_size(8) fn other() {}";
    let e = fr.compile(ok_src, "main", &[]).unwrap_err();
    assert!(
        matches!(e, WgpuError::Shader(ref m) if m.contains("main")),
        "{e:?}"
    );
    let e = fr
        .compile("@compute @workgroup_size(8, 2) fn main() {}", "main", &[])
        .unwrap_err();
    assert!(matches!(e, WgpuError::Shader(_)), "{e:?}");
    // A binding the shader declares but the layout lacks: a validation error, not a panic.
    let e = fr
        .compile(
            "@group(1) @binding(0) var<storage, read_write> o: array<u32>;
             @compute @workgroup_size(8) fn main() { o[0] = 1u; }",
            "main",
            &[],
        )
        .unwrap_err();
    assert!(matches!(e, WgpuError::Shader(_)), "{e:?}");
    let err: warpfs::Error = e.into();
    assert!(matches!(err, warpfs::Error::Config(_)));
}

#[test]
fn finishing_an_item_twice_is_a_contract_error() {
    let Some(ctx) = ctx() else { return };
    let rt = runtime();
    let f = rt
        .open(pattern_file("twice", 6, 8192), OpenOptions::read_only())
        .unwrap();
    let src = r#"
@compute @workgroup_size(8)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = wfs_item(gid, nwg);
    if (item == WFS_NONE) { return; }
    let v = wfs_word(0u, item);
    wfs_finish(item);
    wfs_missed = true;
    wfs_finish(item);
}
"#;
    let mut fr = FaultReplay::new(&ctx, &rt, small_cache(4)).unwrap();
    let pipe = fr.compile(src, "main", &[]).unwrap();
    let e = fr.run(&pipe, &[&f], 64, &[]).unwrap_err();
    assert!(matches!(e, WgpuError::Contract(_)), "{e:?}");
}

#[test]
fn bench_verifies_both_workloads() {
    let Some(ctx) = ctx() else { return };
    let rt = runtime();
    let len = 3 << 20;
    let f = rt
        .open(pattern_file("bench", 8, len), OpenOptions::read_only())
        .unwrap();
    let cfg = WgpuBenchConfig {
        replay: ReplayConfig {
            cache_bytes: 512 << 10,
            page_size: 64 << 10,
            staging_bytes: 256 << 10,
            ..ReplayConfig::default()
        },
        random_reads: 2000,
        ..WgpuBenchConfig::default()
    };
    let r = bench(&ctx, &rt, &f, &cfg).unwrap();
    eprintln!("{r:#?}");
    assert!(r.sequential.verified && r.random.verified);
    assert_eq!(r.file_bytes, len);
    assert_eq!(r.sequential.reads, len / 4096);
    assert_eq!(r.random.reads, 2000);
    assert!(r.sequential.stats.pages_served >= len / (64 << 10));
    assert!(r.cpu_sequential.bytes == len && r.cpu_random.bytes == 2000 * 4096);
    assert_eq!(r.cache_bytes, 512 << 10);
}
