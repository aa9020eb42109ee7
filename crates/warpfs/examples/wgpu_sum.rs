//! Sum and 16-bucket histogram of a file 8× larger than the GPU page cache, computed by a WGSL
//! shader through warpfs fault and replay, and checked against the CPU.
//!
//! ```sh
//! cargo run --release --features wgpu --example wgpu_sum            # makes a 32 MiB file
//! cargo run --release --features wgpu --example wgpu_sum -- FILE    # or uses yours
//! ```
//! Cache: 4 MiB of 64 KiB pages (env `WFS_CACHE_MIB` to change).

use std::process::ExitCode;
use warpfs::backend::wgpu::{BindingKind, FaultReplay, ReplayConfig, WgpuContext, WgpuError};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};
use wgpu::util::DeviceExt;

/// Item `i` sums the 1024 words of chunk `i` and counts their top nibbles; only once every load
/// hit does it add its partial results to the totals (so replays never double-count).
const SHADER: &str = r#"
struct Cfg { words: u32, chunk_words: u32, pad0: u32, pad1: u32 }
@group(1) @binding(0) var<uniform> cfg: Cfg;
@group(1) @binding(1) var<storage, read_write> sums: array<u32>;
@group(1) @binding(2) var<storage, read_write> hist: array<atomic<u32>, 16>;

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = wfs_item(gid, nwg);
    if (item == WFS_NONE) { return; }
    var acc = 0u;
    var h: array<u32, 16>;
    let base = item * cfg.chunk_words;
    for (var w = 0u; w < cfg.chunk_words; w++) {
        if (base + w >= cfg.words) { break; }
        let v = wfs_word(0u, base + w);
        // A 4 KiB chunk lies in one page: after a miss the rest would miss too.
        if (wfs_status == WFS_MISS) { break; }
        acc += v;
        h[v >> 28u] += 1u;
    }
    if (!wfs_finish(item)) { return; }
    sums[item] = acc;
    for (var b = 0u; b < 16u; b++) {
        if (h[b] != 0u) { atomicAdd(&hist[b], h[b]); }
    }
}
"#;

fn main() -> ExitCode {
    match run() {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(WgpuError::NoAdapter(m)) => {
            eprintln!("no GPU adapter: {m}");
            ExitCode::from(2)
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<bool, WgpuError> {
    let cache_mib: u64 = std::env::var("WFS_CACHE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    let cache_bytes = cache_mib << 20;
    let path = match std::env::args().nth(1) {
        Some(p) => std::path::PathBuf::from(p),
        None => {
            let p = std::env::temp_dir().join("warpfs-wgpu-sum.bin");
            let len = 8 * cache_bytes + 12345;
            let mut x = 0x2545_f491_u32;
            let bytes: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 17;
                    x ^= x << 5;
                    x as u8
                })
                .collect();
            std::fs::write(&p, bytes).map_err(warpfs::Error::from)?;
            p
        }
    };
    let ctx = WgpuContext::new()?;
    let info = ctx.adapter_info();
    println!(
        "adapter: {} ({:?}, {:?})",
        info.name, info.backend, info.device_type
    );
    let rt = Runtime::new(RuntimeConfig::default())?;
    let file = rt.open(&path, OpenOptions::read_only())?;
    let size = rt.size(&file)?;
    let mut fr = FaultReplay::new(
        &ctx,
        &rt,
        ReplayConfig {
            cache_bytes,
            ..ReplayConfig::default()
        },
    )?;
    let pipe = fr.compile(
        SHADER,
        "main",
        &[
            BindingKind::Uniform,
            BindingKind::Storage,
            BindingKind::Storage,
        ],
    )?;
    let chunk_words = 1024u32;
    let words = size.div_ceil(4);
    if words > u32::MAX as u64 {
        return Err(WgpuError::Config(
            "this example reads files under 16 GiB".into(),
        ));
    }
    let items = (words as u32).div_ceil(chunk_words);
    let dev = ctx.device();
    let cfg = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("cfg"),
        contents: bytemuck::cast_slice(&[words as u32, chunk_words, 0, 0]),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let storage = |words: usize| {
        dev.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: (words.max(1) * 4) as u64,
            usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        })
    };
    let sums = storage(items as usize);
    let hist = storage(16);
    let stats = fr.run(&pipe, &[&file], items, &[&cfg, &sums, &hist])?;

    let read = |buf: &wgpu::Buffer| -> Vec<u32> {
        let rb = dev.create_buffer(&wgpu::BufferDescriptor {
            label: None,
            size: buf.size(),
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let mut enc = dev.create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(buf, 0, &rb, 0, buf.size());
        ctx.queue().submit([enc.finish()]);
        rb.map_async(wgpu::MapMode::Read, .., |r| r.expect("map read-back"));
        dev.poll(wgpu::PollType::wait_indefinitely()).expect("poll");
        let v = bytemuck::pod_collect_to_vec(&rb.get_mapped_range(..).expect("mapped"));
        rb.unmap();
        v
    };
    let gpu_sum = read(&sums).iter().fold(0u32, |a, &s| a.wrapping_add(s));
    let gpu_hist = read(&hist);

    // The CPU's answer, from the bytes the OS returns.
    let bytes = std::fs::read(&path).map_err(warpfs::Error::from)?;
    let mut cpu_sum = 0u32;
    let mut cpu_hist = [0u32; 16];
    for c in bytes.chunks(4) {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        let v = u32::from_le_bytes(w);
        cpu_sum = cpu_sum.wrapping_add(v);
        cpu_hist[(v >> 28) as usize] += 1;
    }
    let ok = gpu_sum == cpu_sum && gpu_hist[..] == cpu_hist[..];
    println!(
        "file {size} B, GPU cache {} B ({:.1}x smaller), {} uploads",
        fr.slots() as u64 * fr.config().page_size as u64,
        size as f64 / (fr.slots() as u64 * fr.config().page_size as u64) as f64,
        if stats.mapped_uploads {
            "mapped"
        } else {
            "staged"
        }
    );
    println!(
        "rounds {}, pages served {}, evictions {}, hit rate {:.4}, uploaded {} B, {:.1} ms",
        stats.rounds,
        stats.pages_served,
        stats.evictions,
        stats.hit_rate(),
        stats.bytes_uploaded,
        stats.total_time.as_secs_f64() * 1e3
    );
    println!("sum GPU {gpu_sum:#010x} CPU {cpu_sum:#010x}; histogram GPU {gpu_hist:?}");
    println!(
        "{}",
        if ok {
            "verified: GPU == CPU"
        } else {
            "MISMATCH"
        }
    );
    Ok(ok)
}
