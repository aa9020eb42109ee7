//! The fault-and-replay loop: dispatch → read back requests and counters → serve the pages
//! through warpfs host agents → upload them (mapped cache or double-buffered staging) → update
//! the page table → re-dispatch the unfinished items, until none remains.

use super::cache::{state_prefix_bytes, Geometry, GpuCache, NO_PAGE};
use super::{ctr, GpuParams, ReplayConfig, WgpuContext, WgpuError, WgpuResult, MAX_FILES, PRELUDE};
use crate::abi::{self, WfsRequest};
use crate::runtime::{Agent, FileHandle, Runtime, Ticket};
use std::collections::VecDeque;
use std::mem::{offset_of, size_of};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// What a user binding of group 1 is (binding `i` is the `i`-th entry).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingKind {
    /// `var<storage, read>`.
    ReadOnlyStorage,
    /// `var<storage, read_write>`.
    Storage,
    /// `var<uniform>`.
    Uniform,
}

/// A user compute pipeline compiled with the prelude (group 0: warpfs; group 1: the user's).
#[derive(Debug)]
pub struct ReplayPipeline {
    pipeline: wgpu::ComputePipeline,
    user_layout: wgpu::BindGroupLayout,
    kinds: Vec<BindingKind>,
    wg_size: u32,
}

impl ReplayPipeline {
    /// The entry point's workgroup size (x).
    pub fn workgroup_size(&self) -> u32 {
        self.wg_size
    }
}

/// Figures of one [`FaultReplay::run`].
#[derive(Debug, Clone, Copy, Default)]
pub struct ReplayStats {
    /// Dispatches.
    pub rounds: u32,
    /// Items that finished.
    pub items_done: u64,
    /// Page requests the shaders recorded (one per page per round).
    pub requests: u64,
    /// Requests beyond the request buffer (asked for again later).
    pub requests_dropped: u64,
    /// Request records that failed validation (never served).
    pub bad_requests: u64,
    /// Pages read through warpfs and uploaded into the cache buffer.
    pub pages_served: u64,
    /// Pages evicted (CLOCK) to make room.
    pub evictions: u64,
    /// Bytes written into the cache buffer (mapped or through staging).
    pub bytes_uploaded: u64,
    /// File bytes the daemon returned (less than uploaded at the end of a file).
    pub bytes_read: u64,
    /// Shader loads that hit the GPU cache.
    pub loads_hit: u64,
    /// Shader loads that missed (returned 0 and asked for the page).
    pub loads_missed: u64,
    /// Rounds in which some deferred items were parked (cache pressure).
    pub parked_rounds: u32,
    /// True when pages were written into the mapped cache buffer (no staging copy).
    pub mapped_uploads: bool,
    /// Time in dispatches and their read-back.
    pub gpu_time: Duration,
    /// Time serving pages (warpfs reads) and uploading them.
    pub serve_time: Duration,
    /// Wall time of the whole run.
    pub total_time: Duration,
}

impl ReplayStats {
    /// Fraction of shader loads that hit the GPU cache (1.0 when there were none).
    pub fn hit_rate(&self) -> f64 {
        let all = self.loads_hit + self.loads_missed;
        if all == 0 {
            1.0
        } else {
            self.loads_hit as f64 / all as f64
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FileInfo {
    id: u64,
    handle: u32,
    size: u64,
    first: u32,
    pages: u32,
}

/// Runs WGSL compute pipelines to completion under fault and replay, over a GPU page cache fed
/// by a warpfs [`Runtime`]. Holds `agents` host agents of that runtime and the GPU buffers; the
/// cache stays warm between runs over the same files.
pub struct FaultReplay {
    ctx: WgpuContext,
    cfg: ReplayConfig,
    gpu: GpuCache,
    layout0: wgpu::BindGroupLayout,
    agents: Vec<Agent>,
    files: Vec<FileInfo>,
}

impl std::fmt::Debug for FaultReplay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FaultReplay")
            .field("cfg", &self.cfg)
            .field("geometry", &self.gpu.geo)
            .field("mapped_cache", &self.gpu.mapped_cache)
            .finish_non_exhaustive()
    }
}

fn storage_entry(binding: u32, read_only: bool) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Storage { read_only },
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

fn uniform_entry(binding: u32) -> wgpu::BindGroupLayoutEntry {
    wgpu::BindGroupLayoutEntry {
        binding,
        visibility: wgpu::ShaderStages::COMPUTE,
        ty: wgpu::BindingType::Buffer {
            ty: wgpu::BufferBindingType::Uniform,
            has_dynamic_offset: false,
            min_binding_size: None,
        },
        count: None,
    }
}

/// Decodes one request record as `abi::WfsRequest` lays it out.
fn decode_request(b: &[u8]) -> WfsRequest {
    let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"));
    let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"));
    WfsRequest {
        op: u32_at(offset_of!(WfsRequest, op)),
        flags: u32_at(offset_of!(WfsRequest, flags)),
        handle: u32_at(offset_of!(WfsRequest, handle)),
        completion: u32_at(offset_of!(WfsRequest, completion)),
        ticket: u32_at(offset_of!(WfsRequest, ticket)),
        reserved: u32_at(offset_of!(WfsRequest, reserved)),
        offset: u64_at(offset_of!(WfsRequest, offset)),
        len: u64_at(offset_of!(WfsRequest, len)),
        buf: u64_at(offset_of!(WfsRequest, buf)),
    }
}

/// Maps `buf[range]` for reading, copies it out and unmaps. Blocks until the GPU is idle.
pub(crate) fn read_back(
    ctx: &WgpuContext,
    buf: &wgpu::Buffer,
    range: std::ops::Range<u64>,
) -> WgpuResult<Vec<u8>> {
    let done: Arc<Mutex<Option<Result<(), wgpu::BufferAsyncError>>>> = Arc::default();
    let d = done.clone();
    buf.map_async(wgpu::MapMode::Read, range.clone(), move |r| {
        *d.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
    });
    ctx.wait_idle()?;
    let outcome = done.lock().unwrap_or_else(|p| p.into_inner()).take();
    match outcome {
        Some(Ok(())) => {}
        Some(Err(e)) => return Err(WgpuError::Device(format!("read-back mapping failed: {e}"))),
        None => {
            return Err(WgpuError::Device(
                "read-back mapping never completed".into(),
            ))
        }
    }
    let out = buf
        .get_mapped_range(range)
        .map_err(|e| WgpuError::Device(e.to_string()))?
        .to_vec();
    buf.unmap();
    Ok(out)
}

/// One page to fill: file index, byte offset, destination.
pub(crate) struct Job<'a> {
    /// Index into the files slice.
    pub file: usize,
    /// Byte offset in the file.
    pub offset: u64,
    /// Where the bytes go (zero-filled past the end of the file).
    pub dst: &'a mut [u8],
}

struct InFlight {
    agent: usize,
    ticket: Ticket,
    job: usize,
    at: usize,
    len: usize,
}

/// Reads every job through the agents, many requests in flight (round robin over the agents),
/// zero-filling past the end of the file. Returns the file bytes read.
pub(crate) fn read_pages(
    agents: &mut [Agent],
    files: &[&FileHandle],
    jobs: &mut [Job<'_>],
) -> WgpuResult<u64> {
    let chunk = agents[0].max_request();
    let qd = agents[0].queue_depth();
    let mut fifo: VecDeque<InFlight> = VecDeque::new();
    let mut load = vec![0usize; agents.len()];
    let mut total = 0u64;
    let mut next_agent = 0usize;
    let mut failure: Option<WgpuError> = None;

    fn complete(
        agents: &mut [Agent],
        jobs: &mut [Job<'_>],
        load: &mut [usize],
        f: InFlight,
    ) -> WgpuResult<u64> {
        load[f.agent] -= 1;
        let dst = &mut jobs[f.job].dst[f.at..f.at + f.len];
        let got = agents[f.agent].wait_read(f.ticket, dst)?;
        dst[got..].fill(0);
        Ok(got as u64)
    }

    'jobs: for j in 0..jobs.len() {
        let len = jobs[j].dst.len();
        let mut at = 0usize;
        while at < len {
            let n = chunk.min(len - at);
            let agent = loop {
                if let Some(a) = (0..agents.len())
                    .map(|k| (next_agent + k) % agents.len())
                    .find(|&a| load[a] < qd)
                {
                    break a;
                }
                let f = fifo
                    .pop_front()
                    .expect("agents are busy, so requests are in flight");
                match complete(agents, jobs, &mut load, f) {
                    Ok(n) => total += n,
                    Err(e) => {
                        failure = Some(e);
                        break 'jobs;
                    }
                }
            };
            next_agent = (agent + 1) % agents.len();
            let off = jobs[j].offset + at as u64;
            match agents[agent].submit_read(files[jobs[j].file], off, n) {
                Ok(ticket) => {
                    load[agent] += 1;
                    fifo.push_back(InFlight {
                        agent,
                        ticket,
                        job: j,
                        at,
                        len: n,
                    });
                }
                Err(e) => {
                    failure = Some(e.into());
                    break 'jobs;
                }
            }
            at += n;
        }
    }
    while let Some(f) = fifo.pop_front() {
        if failure.is_some() {
            // Drain so the agent's slots come back; the first error is reported.
            let _ = agents[f.agent].wait(f.ticket);
            continue;
        }
        match complete(agents, jobs, &mut load, f) {
            Ok(n) => total += n,
            Err(e) => failure = Some(e),
        }
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(total),
    }
}

/// A mapped write view as a byte slice (borrowing the view, so it cannot outlive the mapping).
fn view_bytes(view: &mut wgpu::BufferViewMut) -> &mut [u8] {
    let mut w = view.slice(..);
    let len = w.len();
    let ptr = w.as_raw_element_ptr().as_ptr();
    // SAFETY: ptr/len describe the mapped range held by `view`, which the result borrows
    // mutably (so the mapping outlives it and no other view overlaps it); wgpu zero-initialises mapped memory, so every byte is initialised.
    // We only write through it (write-combined memory is slow to read, not unsound).
    unsafe { std::slice::from_raw_parts_mut(ptr, len) }
}

/// Waits until `flag` (set by a mapping callback) is up, polling the device for `submission`
/// only (or everything when `None`), so later submissions keep running.
fn wait_flag(
    ctx: &WgpuContext,
    flag: &AtomicBool,
    submission: Option<wgpu::SubmissionIndex>,
) -> WgpuResult<()> {
    if flag.load(Ordering::Acquire) {
        return Ok(());
    }
    let poll = match submission {
        Some(idx) => wgpu::PollType::Wait {
            submission_index: Some(idx),
            timeout: None,
        },
        None => wgpu::PollType::wait_indefinitely(),
    };
    ctx.device()
        .poll(poll)
        .map_err(|e| WgpuError::Device(e.to_string()))?;
    if !flag.load(Ordering::Acquire) {
        // The callback may need one more poll after its submission retired.
        ctx.wait_idle()?;
    }
    if flag.load(Ordering::Acquire) {
        Ok(())
    } else {
        Err(WgpuError::Device("a buffer mapping never completed".into()))
    }
}

fn map_write_async(buf: &wgpu::Buffer, flag: &Arc<AtomicBool>) {
    flag.store(false, Ordering::Release);
    let f = flag.clone();
    buf.map_async(wgpu::MapMode::Write, .., move |r| {
        f.store(r.is_ok(), Ordering::Release);
    });
}

impl FaultReplay {
    /// Creates the GPU page cache (`cfg.cache_bytes` of GPU memory, plus 2 × `staging_bytes` on
    /// discrete GPUs) and takes `cfg.agents` host agents from `rt`.
    pub fn new(ctx: &WgpuContext, rt: &Runtime, cfg: ReplayConfig) -> WgpuResult<Self> {
        if !cfg.page_size.is_power_of_two() || !(4096..=1 << 30).contains(&cfg.page_size) {
            return Err(WgpuError::Config(format!(
                "page_size must be a power of two from 4096 to 2^30, got {}",
                cfg.page_size
            )));
        }
        let slots = (cfg.cache_bytes / cfg.page_size as u64).min(u32::MAX as u64 / 2) as u32;
        if slots < 2 {
            return Err(WgpuError::Config(format!(
                "cache_bytes {} holds fewer than 2 pages of {} bytes",
                cfg.cache_bytes, cfg.page_size
            )));
        }
        let max_requests = cfg.max_requests.unwrap_or(slots).max(1);
        let staging_pages =
            (cfg.staging_bytes / cfg.page_size as u64).clamp(1, slots as u64) as u32;
        let geo = Geometry {
            page_size: cfg.page_size,
            page_shift: cfg.page_size.trailing_zeros(),
            slots,
            max_requests,
            staging_pages,
        };
        let mapped = ctx.mappable_primary() && !cfg.force_staging;
        let gpu = GpuCache::new(ctx, geo, mapped)?;
        let layout0 = ctx
            .device()
            .create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                label: Some("warpfs group 0"),
                entries: &[
                    uniform_entry(0),
                    storage_entry(1, true),
                    storage_entry(2, true),
                    storage_entry(3, false),
                    storage_entry(4, false),
                    storage_entry(5, false),
                ],
            });
        let agents = (0..cfg.agents.max(1))
            .map(|_| rt.agent())
            .collect::<crate::Result<Vec<_>>>()?;
        let errors = ctx.take_errors();
        if !errors.is_empty() {
            return Err(WgpuError::Device(errors.join("; ")));
        }
        Ok(Self {
            ctx: ctx.clone(),
            cfg,
            gpu,
            layout0,
            agents,
            files: Vec::new(),
        })
    }

    /// True when pages are written straight into the mapped cache buffer (unified memory).
    pub fn mapped_uploads(&self) -> bool {
        self.gpu.mapped_cache
    }

    /// Cache slots (pages the GPU cache holds).
    pub fn slots(&self) -> u32 {
        self.gpu.geo.slots
    }

    /// The configuration in force.
    pub fn config(&self) -> &ReplayConfig {
        &self.cfg
    }

    /// Compiles `source` (user WGSL using the prelude's `wfs_*` functions, group 1 bindings
    /// `0..bindings.len()` of the given kinds) with the prelude. The entry point must have a
    /// one-dimensional `@workgroup_size(x)`. Costs a WGSL parse and a pipeline compile.
    pub fn compile(
        &self,
        source: &str,
        entry_point: &str,
        bindings: &[BindingKind],
    ) -> WgpuResult<ReplayPipeline> {
        let full = format!("{PRELUDE}\n{source}");
        let module = wgpu::naga::front::wgsl::parse_str(&full)
            .map_err(|e| WgpuError::Shader(e.emit_to_string(&full)))?;
        let ep = module
            .entry_points
            .iter()
            .find(|e| e.name == entry_point && e.stage == wgpu::naga::ShaderStage::Compute)
            .ok_or_else(|| {
                WgpuError::Shader(format!("no @compute entry point named {entry_point:?}"))
            })?;
        let [wg, 1, 1] = ep.workgroup_size else {
            return Err(WgpuError::Shader(format!(
                "the entry point's @workgroup_size must be (x, 1, 1), got {:?}",
                ep.workgroup_size
            )));
        };
        let dev = self.ctx.device();
        let scope = dev.push_error_scope(wgpu::ErrorFilter::Validation);
        let entries: Vec<_> = bindings
            .iter()
            .enumerate()
            .map(|(i, k)| match k {
                BindingKind::ReadOnlyStorage => storage_entry(i as u32, true),
                BindingKind::Storage => storage_entry(i as u32, false),
                BindingKind::Uniform => uniform_entry(i as u32),
            })
            .collect();
        let user_layout = dev.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("user group 1"),
            entries: &entries,
        });
        let shader = dev.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("warpfs prelude + user"),
            source: wgpu::ShaderSource::Wgsl(full.into()),
        });
        let layout = dev.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
            label: Some("warpfs replay"),
            bind_group_layouts: &[Some(&self.layout0), Some(&user_layout)],
            immediate_size: 0,
        });
        let pipeline = dev.create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
            label: Some("warpfs replay"),
            layout: Some(&layout),
            module: &shader,
            entry_point: Some(entry_point),
            compilation_options: Default::default(),
            cache: None,
        });
        if let Some(e) = pollster::block_on(scope.pop()) {
            return Err(WgpuError::Shader(e.to_string()));
        }
        Ok(ReplayPipeline {
            pipeline,
            user_layout,
            kinds: bindings.to_vec(),
            wg_size: wg,
        })
    }

    fn bind_files(&mut self, files: &[&FileHandle], cap: u32) -> WgpuResult<Vec<FileInfo>> {
        if files.len() > MAX_FILES {
            return Err(WgpuError::Config(format!(
                "at most {MAX_FILES} files per run, got {}",
                files.len()
            )));
        }
        let page = self.gpu.geo.page_size as u64;
        let mut infos = Vec::with_capacity(files.len());
        let mut first = 0u64;
        for f in files {
            let size = self.agents[0].size(f)?;
            let pages = size.div_ceil(page);
            if first + pages >= u32::MAX as u64 {
                return Err(WgpuError::Config(format!(
                    "the files hold {} pages of {page} bytes; the page table indexes fewer than \
                     2^32: raise ReplayConfig::page_size",
                    first + pages
                )));
            }
            infos.push(FileInfo {
                id: f.id(),
                handle: f.raw(),
                size,
                first: first as u32,
                pages: pages as u32,
            });
            first += pages;
        }
        if infos != self.files {
            self.gpu.reset(&self.ctx, first as u32, cap);
            self.files = infos.clone();
        } else {
            self.gpu.resize_work(&self.ctx, cap);
        }
        Ok(infos)
    }

    /// Runs `pipe` over items `0..items` to completion: every item is dispatched until its
    /// `wfs_finish` returns true. `files[i]` is file `i` in the shader; `buffers[i]` is binding
    /// `i` of group 1. Each round costs a dispatch, a read-back of the counters, reference words
    /// and requests, and the page reads and uploads it needs.
    pub fn run(
        &mut self,
        pipe: &ReplayPipeline,
        files: &[&FileHandle],
        items: u32,
        buffers: &[&wgpu::Buffer],
    ) -> WgpuResult<ReplayStats> {
        let r = self.run_inner(pipe, files, items, buffers);
        if r.is_err() {
            // The host table may name pages whose upload failed: start cold next time.
            self.files.clear();
        }
        r
    }

    fn run_inner(
        &mut self,
        pipe: &ReplayPipeline,
        files: &[&FileHandle],
        items: u32,
        buffers: &[&wgpu::Buffer],
    ) -> WgpuResult<ReplayStats> {
        let start = Instant::now();
        let mut stats = ReplayStats {
            mapped_uploads: self.gpu.mapped_cache,
            ..Default::default()
        };
        if buffers.len() != pipe.kinds.len() {
            return Err(WgpuError::Config(format!(
                "the pipeline has {} user bindings, {} buffers given",
                pipe.kinds.len(),
                buffers.len()
            )));
        }
        if items == 0 {
            return Ok(stats);
        }
        let cap_max = items.min(self.cfg.max_items_per_round.max(1));
        let infos = self.bind_files(files, cap_max)?;
        let dev = self.ctx.device().clone();
        let queue = self.ctx.queue().clone();
        let geo = self.gpu.geo;
        let g0 = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("warpfs group 0"),
            layout: &self.layout0,
            entries: &[
                wgpu::BindGroupEntry {
                    binding: 0,
                    resource: self.gpu.params.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 1,
                    resource: self.gpu.cache.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 2,
                    resource: self.gpu.table.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 3,
                    resource: self.gpu.state.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 4,
                    resource: self.gpu.requests.as_entire_binding(),
                },
                wgpu::BindGroupEntry {
                    binding: 5,
                    resource: self.gpu.work.as_entire_binding(),
                },
            ],
        });
        let user_entries: Vec<_> = buffers
            .iter()
            .enumerate()
            .map(|(i, b)| wgpu::BindGroupEntry {
                binding: i as u32,
                resource: b.as_entire_binding(),
            })
            .collect();
        let g1 = dev.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("user group 1"),
            layout: &pipe.user_layout,
            entries: &user_entries,
        });

        let mut base = GpuParams {
            page_shift: geo.page_shift,
            page_words: geo.page_size / 4,
            slots: geo.slots,
            max_requests: geo.max_requests,
            file_count: infos.len() as u32,
            ref_base: self.gpu.ref_base(),
            flag_base: self.gpu.flag_base(),
            work_capacity: self.gpu.work_capacity,
            wg_size: pipe.wg_size,
            ..Default::default()
        };
        for (i, f) in infos.iter().enumerate() {
            base.files[i] = [f.first, f.pages, f.size as u32, (f.size >> 32) as u32];
            base.handles[i / 4][i % 4] = f.handle;
        }
        let prefix = state_prefix_bytes(geo.slots);
        let req_bytes = geo.max_requests as u64 * size_of::<WfsRequest>() as u64;
        let zeros = vec![0u8; prefix as usize];
        let max_dim = dev.limits().max_compute_workgroups_per_dimension;

        let mut deferred = 0u32;
        let mut next_fresh = 0u32;
        let mut cap = cap_max;
        let mut halves = (0u32, self.gpu.work_capacity);
        let mut stalled = 0u32;
        loop {
            let active = deferred.min(cap);
            let fresh = (items - next_fresh).min(cap.saturating_sub(deferred));
            let total = deferred + fresh;
            if total == 0 {
                break;
            }
            if active < deferred {
                stats.parked_rounds += 1;
            }
            // ---- dispatch ----------------------------------------------------------------
            let t_gpu = Instant::now();
            self.gpu.epoch = self.gpu.epoch.wrapping_add(1).max(1);
            let params = GpuParams {
                epoch: self.gpu.epoch,
                deferred,
                active_count: active,
                fresh_base: next_fresh,
                fresh_count: fresh,
                in_base: halves.0,
                out_base: halves.1,
                ..base
            };
            queue.write_buffer(&self.gpu.params, 0, bytemuck::bytes_of(&params));
            queue.write_buffer(&self.gpu.state, 0, &zeros);
            let groups = total.div_ceil(pipe.wg_size);
            let gx = groups.min(max_dim);
            let gy = groups.div_ceil(gx);
            if gy > max_dim {
                return Err(WgpuError::Config(format!(
                    "{total} items need {groups} workgroups, more than this adapter dispatches"
                )));
            }
            let mut enc = dev.create_command_encoder(&Default::default());
            {
                let mut pass = enc.begin_compute_pass(&Default::default());
                pass.set_pipeline(&pipe.pipeline);
                pass.set_bind_group(0, &g0, &[]);
                pass.set_bind_group(1, &g1, &[]);
                pass.dispatch_workgroups(gx, gy, 1);
            }
            enc.copy_buffer_to_buffer(&self.gpu.state, 0, &self.gpu.readback, 0, prefix);
            enc.copy_buffer_to_buffer(&self.gpu.requests, 0, &self.gpu.readback, prefix, req_bytes);
            queue.submit([enc.finish()]);
            let back = read_back(&self.ctx, &self.gpu.readback, 0..prefix + req_bytes)?;
            let errors = self.ctx.take_errors();
            if !errors.is_empty() {
                return Err(WgpuError::Device(errors.join("; ")));
            }
            stats.gpu_time += t_gpu.elapsed();
            stats.rounds += 1;
            next_fresh += fresh;

            // ---- counters ----------------------------------------------------------------
            let word = |i: usize| u32::from_le_bytes(back[i * 4..i * 4 + 4].try_into().expect("4"));
            let n_req = word(ctr::REQUESTS);
            let next_deferred = word(ctr::DEFERRED);
            let done = word(ctr::DONE);
            if word(ctr::OVERFLOW) != 0 || next_deferred > total {
                return Err(WgpuError::Contract(format!(
                    "{} items deferred by a round of {total}: call wfs_finish exactly once per \
                     item returned by wfs_item",
                    next_deferred.max(total + word(ctr::OVERFLOW))
                )));
            }
            stats.items_done += done as u64;
            stats.loads_hit += word(ctr::HITS_LO) as u64 | (word(ctr::HITS_HI) as u64) << 32;
            stats.loads_missed += word(ctr::MISSES_LO) as u64 | (word(ctr::MISSES_HI) as u64) << 32;
            stats.requests += n_req as u64;
            stats.requests_dropped += n_req.saturating_sub(geo.max_requests) as u64;
            let referenced: Vec<bool> = (0..geo.slots as usize)
                .map(|s| word(ctr::COUNT + s) != 0)
                .collect();
            for (s, r) in referenced.iter().enumerate() {
                if *r {
                    self.gpu.clock.touch(s);
                }
            }

            // ---- requests → plan -------------------------------------------------------
            let t_serve = Instant::now();
            let mut wanted: Vec<(u32, usize)> = Vec::new();
            let rec = size_of::<WfsRequest>();
            for i in 0..n_req.min(geo.max_requests) as usize {
                let at = prefix as usize + i * rec;
                let r = decode_request(&back[at..at + rec]);
                match self.validate(&r, &infos) {
                    Some(k) => wanted.push((r.completion, k)),
                    None => stats.bad_requests += 1,
                }
            }
            wanted.sort_unstable();
            wanted.dedup();
            let mut loaded = vec![false; geo.slots as usize];
            let mut plan: Vec<(usize, usize, u64)> = Vec::new(); // slot, file, offset
            let mut table_updates: Vec<u32> = Vec::new();
            let mut short = false;
            for &(vpage, k) in &wanted {
                if self.gpu.host_table[vpage as usize] != 0 {
                    continue;
                }
                let placed = self.gpu.clock.place(vpage, |s| referenced[s] || loaded[s]);
                let Some((slot, old)) = placed else {
                    short = true;
                    break;
                };
                if old != NO_PAGE {
                    self.gpu.host_table[old as usize] = 0;
                    table_updates.push(old);
                    stats.evictions += 1;
                }
                self.gpu.host_table[vpage as usize] = slot as u32 + 1;
                table_updates.push(vpage);
                loaded[slot] = true;
                let f = &infos[k];
                plan.push((slot, k, (vpage - f.first) as u64 * geo.page_size as u64));
            }

            // ---- serve and upload --------------------------------------------------------
            if !plan.is_empty() {
                stats.bytes_read += self.upload(files, &plan)?;
                stats.pages_served += plan.len() as u64;
                stats.bytes_uploaded += plan.len() as u64 * geo.page_size as u64;
            }
            if table_updates.len() > 64 {
                queue.write_buffer(
                    &self.gpu.table,
                    0,
                    bytemuck::cast_slice(&self.gpu.host_table),
                );
            } else {
                for &v in &table_updates {
                    let e = self.gpu.host_table[v as usize];
                    queue.write_buffer(&self.gpu.table, v as u64 * 4, &e.to_le_bytes());
                }
            }

            // ---- progress and pressure ---------------------------------------------------
            if plan.is_empty() && done == 0 {
                stalled += 1;
                if stalled > self.cfg.max_stalled_rounds {
                    return Err(WgpuError::Stalled {
                        rounds: stalled,
                        hint: format!(
                            "an item needs more pages at once than the {} cache slots can hold \
                             while the others are in use; raise ReplayConfig::cache_bytes or \
                             touch fewer pages per item",
                            geo.slots
                        ),
                    });
                }
            } else {
                stalled = 0;
            }
            if short || (plan.is_empty() && done == 0 && next_deferred > 0) {
                cap = (next_deferred.min(cap) / 2).max(1);
            } else if cap < cap_max {
                cap = cap.saturating_mul(2).min(cap_max);
            }
            if next_deferred > cap {
                // Parking: keep the oldest items active so their pages stay referenced.
                self.sort_list(halves.1, next_deferred)?;
            }
            halves = (halves.1, halves.0);
            deferred = next_deferred;
            stats.serve_time += t_serve.elapsed();
        }
        stats.total_time = start.elapsed();
        Ok(stats)
    }

    /// The file index a request names, if every field is what the prelude writes.
    fn validate(&self, r: &WfsRequest, infos: &[FileInfo]) -> Option<usize> {
        let page = self.gpu.geo.page_size as u64;
        if r.op != abi::WFS_OP_READ
            || r.flags != 0
            || r.reserved != 0
            || r.buf != 0
            || r.ticket != self.gpu.epoch
            || r.len != page
        {
            return None;
        }
        let k = infos
            .iter()
            .position(|f| r.completion >= f.first && r.completion - f.first < f.pages)?;
        let f = &infos[k];
        (r.handle == f.handle && r.offset == (r.completion - f.first) as u64 * page).then_some(k)
    }

    /// Rewrites the work list at `base` (`n` items) in ascending item order.
    fn sort_list(&mut self, base: u32, n: u32) -> WgpuResult<()> {
        let bytes = n as u64 * 4;
        let mut enc = self
            .ctx
            .device()
            .create_command_encoder(&Default::default());
        enc.copy_buffer_to_buffer(
            &self.gpu.work,
            base as u64 * 4,
            &self.gpu.list_readback,
            0,
            bytes,
        );
        self.ctx.queue().submit([enc.finish()]);
        let raw = read_back(&self.ctx, &self.gpu.list_readback, 0..bytes)?;
        let mut list: Vec<u32> = bytemuck::pod_collect_to_vec(&raw);
        list.sort_unstable();
        self.ctx
            .queue()
            .write_buffer(&self.gpu.work, base as u64 * 4, bytemuck::cast_slice(&list));
        Ok(())
    }

    /// Reads the planned pages (slot, file, offset) through warpfs into the cache buffer: mapped
    /// directly, or through the two staging buffers in turn (the copy of one batch overlaps the
    /// reads of the next). Returns the file bytes read.
    fn upload(&mut self, files: &[&FileHandle], plan: &[(usize, usize, u64)]) -> WgpuResult<u64> {
        let page = self.gpu.geo.page_size as usize;
        if self.gpu.mapped_cache {
            map_write_async(&self.gpu.cache, &self.gpu.cache_mapped);
            wait_flag(&self.ctx, &self.gpu.cache_mapped, None)?;
            let read = {
                let mut view = self
                    .gpu
                    .cache
                    .get_mapped_range_mut(..)
                    .map_err(|e| WgpuError::Device(e.to_string()))?;
                let bytes = view_bytes(&mut view);
                let mut slots: Vec<Option<&mut [u8]>> = bytes.chunks_mut(page).map(Some).collect();
                let mut jobs: Vec<Job<'_>> = plan
                    .iter()
                    .map(|&(slot, file, offset)| Job {
                        file,
                        offset,
                        dst: slots[slot].take().expect("each slot is planned once"),
                    })
                    .collect();
                read_pages(&mut self.agents, files, &mut jobs)
            };
            self.gpu.cache.unmap();
            self.gpu.cache_mapped.store(false, Ordering::Release);
            return read;
        }
        let batch = self.gpu.geo.staging_pages as usize;
        let mut total = 0u64;
        for (b, part) in plan.chunks(batch).enumerate() {
            let pending = self.gpu.staging[b % 2].pending.take();
            let st = &self.gpu.staging[b % 2];
            wait_flag(&self.ctx, &st.mapped, pending)?;
            let read = {
                let mut view = st
                    .buffer
                    .get_mapped_range_mut(..(part.len() * page) as u64)
                    .map_err(|e| WgpuError::Device(e.to_string()))?;
                let bytes = view_bytes(&mut view);
                let mut jobs: Vec<Job<'_>> = part
                    .iter()
                    .zip(bytes.chunks_mut(page))
                    .map(|(&(_, file, offset), dst)| Job { file, offset, dst })
                    .collect();
                read_pages(&mut self.agents, files, &mut jobs)
            };
            st.buffer.unmap();
            st.mapped.store(false, Ordering::Release);
            let read = match read {
                Ok(n) => n,
                Err(e) => {
                    map_write_async(&st.buffer, &st.mapped);
                    return Err(e);
                }
            };
            total += read;
            let mut enc = self
                .ctx
                .device()
                .create_command_encoder(&Default::default());
            for (i, &(slot, _, _)) in part.iter().enumerate() {
                enc.copy_buffer_to_buffer(
                    &st.buffer,
                    (i * page) as u64,
                    &self.gpu.cache,
                    (slot * page) as u64,
                    page as u64,
                );
            }
            let idx = self.ctx.queue().submit([enc.finish()]);
            map_write_async(&st.buffer, &st.mapped);
            self.gpu.staging[b % 2].pending = Some(idx);
        }
        Ok(total)
    }
}
