//! The `warpfs bench --backend wgpu` workload: a sequential scan and random chunk reads of one
//! file through the fault-and-replay loop, each verified against and timed beside a CPU baseline
//! of the same work (bulk reads for the scan, pipelined host-agent reads for the random chunks).

use super::replay::{read_back, read_pages, Job};
use super::{
    BindingKind, FaultReplay, ReplayConfig, ReplayStats, WgpuContext, WgpuError, WgpuResult,
};
use crate::runtime::{FileHandle, Runtime};
use std::time::Instant;

/// What [`bench`] runs.
#[derive(Debug, Clone)]
pub struct WgpuBenchConfig {
    /// The fault-and-replay settings (cache size, page size, ...).
    pub replay: ReplayConfig,
    /// Bytes one shader item reads (a multiple of 4 dividing the page size; default 4096).
    pub chunk_bytes: u32,
    /// Random chunk reads (default 65536).
    pub random_reads: u32,
    /// Seed of the random chunk choice.
    pub seed: u32,
    /// Host agents of the CPU random-read baseline.
    pub cpu_agents: usize,
}

impl Default for WgpuBenchConfig {
    fn default() -> Self {
        Self {
            replay: ReplayConfig::default(),
            chunk_bytes: 4096,
            random_reads: 65536,
            seed: 0x5eed,
            cpu_agents: 4,
        }
    }
}

/// Figures of one GPU workload.
#[derive(Debug, Clone, Copy, Default)]
pub struct BenchFigures {
    /// Chunk reads performed by the shader.
    pub reads: u64,
    /// Bytes the shader read (reads × chunk bytes, less past the end of the file).
    pub bytes: u64,
    /// Wall seconds of the run (compile excluded).
    pub seconds: f64,
    /// `bytes / seconds / 1e9`.
    pub gb_per_s: f64,
    /// `reads / seconds`.
    pub reads_per_s: f64,
    /// GPU cache pages served per second.
    pub pages_per_s: f64,
    /// Every chunk sum equal to the CPU's.
    pub verified: bool,
    /// The loop's own figures (rounds, hit rate, pages served, bytes uploaded...).
    pub stats: ReplayStats,
}

/// Figures of one CPU baseline.
#[derive(Debug, Clone, Copy, Default)]
pub struct CpuFigures {
    /// Bytes read and summed.
    pub bytes: u64,
    /// Wall seconds.
    pub seconds: f64,
    /// `bytes / seconds / 1e9`.
    pub gb_per_s: f64,
    /// Chunk reads per second.
    pub reads_per_s: f64,
}

/// Everything [`bench`] measured, all in one run on one machine.
#[derive(Debug, Clone, Default)]
pub struct WgpuBenchReport {
    /// Adapter name (e.g. "NVIDIA H100 80GB HBM3", "llvmpipe (LLVM 15.0.6, 256 bits)").
    pub adapter: String,
    /// wgpu backend ("Vulkan", "Metal").
    pub backend: String,
    /// Adapter kind ("DiscreteGpu", "Cpu", ...).
    pub device_type: String,
    /// Pages were written into the mapped cache buffer (no staging copies).
    pub mapped_uploads: bool,
    /// GPU page size in bytes.
    pub page_size: u32,
    /// GPU cache bytes (slots × page size).
    pub cache_bytes: u64,
    /// Bytes of one chunk read.
    pub chunk_bytes: u32,
    /// Size of the file.
    pub file_bytes: u64,
    /// Sequential scan of the whole file through the loop.
    pub sequential: BenchFigures,
    /// Random chunk reads through the loop.
    pub random: BenchFigures,
    /// CPU: bulk reads of the whole file, summed per chunk.
    pub cpu_sequential: CpuFigures,
    /// CPU: the same random chunks read through host agents, summed.
    pub cpu_random: CpuFigures,
}

/// The shader: item `i` sums the words of chunk `i` (mode 0) or of a random chunk (mode 1).
const BENCH_WGSL: &str = r#"
struct BenchCfg { mode: u32, chunk_words: u32, chunks: u32, seed: u32 }
@group(1) @binding(0) var<uniform> cfg: BenchCfg;
@group(1) @binding(1) var<storage, read_write> sums: array<u32>;

fn bench_hash(v: u32) -> u32 {
    var x = v;
    x ^= x >> 16u; x *= 0x7feb352du; x ^= x >> 15u; x *= 0x846ca68bu; x ^= x >> 16u;
    return x;
}

@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
    let item = wfs_item(gid, nwg);
    if (item == WFS_NONE) { return; }
    var chunk = item;
    if (cfg.mode == 1u) { chunk = bench_hash(item ^ cfg.seed) % cfg.chunks; }
    var acc = 0u;
    let base = chunk * cfg.chunk_words;
    for (var w = 0u; w < cfg.chunk_words; w++) {
        acc += wfs_word(0u, base + w);
        // A chunk never straddles a page (chunk_bytes divides the page size): after a miss
        // the rest would miss too, so stop here; the replay reads the chunk again.
        if (wfs_status == WFS_MISS) { break; }
    }
    if (wfs_finish(item)) { sums[item] = acc; }
}
"#;

/// The shader's hash, on the CPU.
pub fn bench_hash(v: u32) -> u32 {
    let mut x = v;
    x ^= x >> 16;
    x = x.wrapping_mul(0x7feb_352d);
    x ^= x >> 15;
    x = x.wrapping_mul(0x846c_a68b);
    x ^= x >> 16;
    x
}

/// Wrapping sum of the little-endian words of `bytes` (a short last word zero-padded).
pub fn word_sum(bytes: &[u8]) -> u32 {
    let mut acc = 0u32;
    let mut it = bytes.chunks_exact(4);
    for w in &mut it {
        acc = acc.wrapping_add(u32::from_le_bytes(w.try_into().expect("4 bytes")));
    }
    let rest = it.remainder();
    if !rest.is_empty() {
        let mut w = [0u8; 4];
        w[..rest.len()].copy_from_slice(rest);
        acc = acc.wrapping_add(u32::from_le_bytes(w));
    }
    acc
}

fn secs(t: Instant) -> f64 {
    t.elapsed().as_secs_f64().max(1e-9)
}

/// Runs the mode-`mode` shader over `items` items on a cold GPU cache; returns the sums.
fn gpu_pass(
    ctx: &WgpuContext,
    rt: &Runtime,
    file: &FileHandle,
    cfg: &WgpuBenchConfig,
    mode: u32,
    chunks: u32,
    items: u32,
) -> WgpuResult<(Vec<u32>, ReplayStats, f64)> {
    use wgpu::util::DeviceExt;
    let mut fr = FaultReplay::new(ctx, rt, cfg.replay.clone())?;
    let pipe = fr.compile(
        BENCH_WGSL,
        "main",
        &[BindingKind::Uniform, BindingKind::Storage],
    )?;
    let dev = ctx.device();
    let ucfg: [u32; 4] = [mode, cfg.chunk_bytes / 4, chunks, cfg.seed];
    let ubuf = dev.create_buffer_init(&wgpu::util::BufferInitDescriptor {
        label: Some("bench cfg"),
        contents: bytemuck::cast_slice(&ucfg),
        usage: wgpu::BufferUsages::UNIFORM,
    });
    let out_bytes = (items as u64 * 4).max(4);
    let out = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench sums"),
        size: out_bytes,
        usage: wgpu::BufferUsages::STORAGE | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    let rb = dev.create_buffer(&wgpu::BufferDescriptor {
        label: Some("bench sums read-back"),
        size: out_bytes,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    ctx.wait_idle()?;
    let t = Instant::now();
    let stats = fr.run(&pipe, &[file], items, &[&ubuf, &out])?;
    let seconds = secs(t);
    let mut enc = dev.create_command_encoder(&Default::default());
    enc.copy_buffer_to_buffer(&out, 0, &rb, 0, out_bytes);
    ctx.queue().submit([enc.finish()]);
    let raw = read_back(ctx, &rb, 0..out_bytes)?;
    let mut sums: Vec<u32> = bytemuck::pod_collect_to_vec(&raw);
    sums.truncate(items as usize);
    Ok((sums, stats, seconds))
}

fn figures(
    reads: u64,
    bytes: u64,
    seconds: f64,
    stats: ReplayStats,
    verified: bool,
) -> BenchFigures {
    BenchFigures {
        reads,
        bytes,
        seconds,
        gb_per_s: bytes as f64 / seconds / 1e9,
        reads_per_s: reads as f64 / seconds,
        pages_per_s: stats.pages_served as f64 / seconds,
        verified,
        stats,
    }
}

/// Measures `file` through the wgpu fault-and-replay loop: a sequential scan of the whole file
/// (one item per `chunk_bytes` chunk) and `random_reads` random chunk reads, each on a cold GPU
/// cache, verified chunk by chunk against the CPU baselines timed in the same call. Costs two
/// passes over the file on the GPU, one bulk pass and the random reads on the CPU; memory: one
/// `u32` per chunk on each side.
pub fn bench(
    ctx: &WgpuContext,
    rt: &Runtime,
    file: &FileHandle,
    cfg: &WgpuBenchConfig,
) -> WgpuResult<WgpuBenchReport> {
    let chunk = cfg.chunk_bytes as u64;
    if chunk == 0
        || !chunk.is_multiple_of(4)
        || !(cfg.replay.page_size as u64).is_multiple_of(chunk)
    {
        return Err(WgpuError::Config(format!(
            "chunk_bytes must be a positive multiple of 4 dividing page_size {}, got {chunk}",
            cfg.replay.page_size
        )));
    }
    let size = rt.size(file)?;
    let chunks = size.div_ceil(chunk);
    if chunks == 0 || chunks > u32::MAX as u64 / 2 || (chunks * chunk) / 4 > u32::MAX as u64 {
        return Err(WgpuError::Config(format!(
            "a {size}-byte file does not fit the bench (1 to 2^31 chunks, under 16 GiB)"
        )));
    }
    let chunks32 = chunks as u32;
    let info = ctx.adapter_info();
    let mut report = WgpuBenchReport {
        adapter: info.name.clone(),
        backend: format!("{:?}", info.backend),
        device_type: format!("{:?}", info.device_type),
        page_size: cfg.replay.page_size,
        chunk_bytes: cfg.chunk_bytes,
        file_bytes: size,
        ..Default::default()
    };
    let chunk_len = |c: u64| (size - c * chunk).min(chunk);

    // CPU sequential: bulk reads in 16 MiB blocks, summed per chunk.
    let block = (16u64 << 20).div_ceil(chunk) * chunk;
    let mut buf = vec![0u8; block as usize];
    let mut expect = Vec::with_capacity(chunks as usize);
    let t = Instant::now();
    let mut off = 0u64;
    while off < size {
        let want = block.min(size - off) as usize;
        let n = rt.read_bulk(file, off, &mut buf[..want])?;
        if n != want {
            return Err(WgpuError::Config(format!(
                "the file shrank while benchmarking ({n} of {want} bytes at {off})"
            )));
        }
        expect.extend(buf[..n].chunks(chunk as usize).map(word_sum));
        off += n as u64;
    }
    let s = secs(t);
    report.cpu_sequential = CpuFigures {
        bytes: size,
        seconds: s,
        gb_per_s: size as f64 / s / 1e9,
        reads_per_s: chunks as f64 / s,
    };
    drop(buf);

    // CPU random: the same chunks as the shader, through host agents, pipelined.
    let picks: Vec<u64> = (0..cfg.random_reads)
        .map(|i| (bench_hash(i ^ cfg.seed) % chunks32) as u64)
        .collect();
    let rand_bytes: u64 = picks.iter().map(|&c| chunk_len(c)).sum();
    {
        let mut agents = (0..cfg.cpu_agents.max(1))
            .map(|_| rt.agent())
            .collect::<crate::Result<Vec<_>>>()?;
        let mut scratch = vec![0u8; (picks.len().min(4096)) * chunk as usize];
        let t = Instant::now();
        let mut ok = true;
        for group in picks.chunks(4096) {
            let mut jobs: Vec<Job<'_>> = group
                .iter()
                .zip(scratch.chunks_mut(chunk as usize))
                .map(|(&c, dst)| Job {
                    file: 0,
                    offset: c * chunk,
                    dst,
                })
                .collect();
            read_pages(&mut agents, &[file], &mut jobs)?;
            for (j, &c) in jobs.iter().zip(group) {
                ok &= word_sum(&j.dst[..chunk_len(c) as usize]) == expect[c as usize];
            }
        }
        let s = secs(t);
        if !ok {
            return Err(WgpuError::Config(
                "host-agent reads disagree with bulk reads of the same file: is it changing?"
                    .into(),
            ));
        }
        report.cpu_random = CpuFigures {
            bytes: rand_bytes,
            seconds: s,
            gb_per_s: rand_bytes as f64 / s / 1e9,
            reads_per_s: picks.len() as f64 / s,
        };
    }

    // GPU sequential scan.
    let (sums, stats, s) = gpu_pass(ctx, rt, file, cfg, 0, chunks32, chunks32)?;
    report.mapped_uploads = stats.mapped_uploads;
    let ok = sums == expect;
    report.sequential = figures(chunks, size, s, stats, ok);

    // GPU random reads.
    let (sums, stats, s) = gpu_pass(ctx, rt, file, cfg, 1, chunks32, cfg.random_reads)?;
    let ok = sums.len() == picks.len()
        && sums
            .iter()
            .zip(&picks)
            .all(|(&g, &c)| g == expect[c as usize]);
    report.random = figures(picks.len() as u64, rand_bytes, s, stats, ok);
    let fr_slots = (cfg.replay.cache_bytes / cfg.replay.page_size as u64).min(u32::MAX as u64 / 2);
    report.cache_bytes = fr_slots * cfg.replay.page_size as u64;
    Ok(report)
}
