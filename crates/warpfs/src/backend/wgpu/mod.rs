//! The portable GPU backend on wgpu (Vulkan everywhere, Metal on Apple Silicon): **fault and
//! replay**.
//!
//! A WGSL shader cannot wait on the CPU, so a thread whose page is not resident in the GPU page
//! cache records a request (the [`crate::abi::WfsRequest`] wire format, one per page per round)
//! and returns unfinished. After the dispatch the host reads the requests back, serves them through
//! the warpfs daemon with many host-agent requests in flight (so the daemon coalesces and
//! batches), uploads the pages into the cache buffer (CLOCK eviction), updates the page table and
//! re-dispatches only the unfinished items, until none remains.
//!
//! ```no_run
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use warpfs::backend::wgpu::{BindingKind, FaultReplay, ReplayConfig, WgpuContext};
//! use warpfs::{OpenOptions, Runtime, RuntimeConfig};
//! let rt = Runtime::new(RuntimeConfig::default())?;
//! let file = rt.open("data.bin", OpenOptions::read_only())?;
//! let ctx = WgpuContext::new()?;
//! let mut fr = FaultReplay::new(&ctx, &rt, ReplayConfig::default())?;
//! let src = "@group(1) @binding(0) var<storage, read_write> out: array<u32>;
//! @compute @workgroup_size(64)
//! fn main(@builtin(global_invocation_id) gid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>) {
//!     let item = wfs_item(gid, nwg);
//!     if (item == WFS_NONE) { return; }
//!     let v = wfs_word(0u, item);
//!     if (wfs_finish(item)) { out[item] = v; }
//! }";
//! let pipe = fr.compile(src, "main", &[BindingKind::Storage])?;
//! let out = ctx.device().create_buffer(&wgpu::BufferDescriptor {
//!     label: None, size: 4096, usage: wgpu::BufferUsages::STORAGE, mapped_at_creation: false });
//! let stats = fr.run(&pipe, &[&file], 1024, &[&out])?;
//! println!("{} rounds, hit rate {:.3}", stats.rounds, stats.hit_rate());
//! # Ok(()) }
//! ```
//!
//! Module map: [`cache`] holds the GPU buffers, the host copy of the page table and the CLOCK;
//! [`replay`] runs the loop; [`bench`] is the `warpfs bench --backend wgpu` workload.

pub mod bench;
pub mod cache;
pub mod replay;

pub use bench::{bench, BenchFigures, CpuFigures, WgpuBenchConfig, WgpuBenchReport};
pub use replay::{BindingKind, FaultReplay, ReplayPipeline, ReplayStats};

use std::sync::{Arc, Mutex};

/// The WGSL prelude (`shaders/warpfs.wgsl`), prepended to every user shader.
pub const PRELUDE: &str = include_str!("../../../../../shaders/warpfs.wgsl");

/// Most files one [`FaultReplay::run`] can bind (`WFS_MAX_FILES` in the prelude).
pub const MAX_FILES: usize = 8;

/// Errors of the wgpu backend. Converts into [`crate::Error`] (`Config`, `Range` or the warpfs
/// error it wraps), so `?` works in functions returning [`crate::Result`].
#[derive(Debug, thiserror::Error)]
pub enum WgpuError {
    /// No wgpu adapter (no Vulkan/Metal driver): install one, e.g. Mesa lavapipe.
    #[error("no GPU adapter found through wgpu ({0}); on Linux install a Vulkan driver, e.g. `apt-get install -y mesa-vulkan-drivers libvulkan1` for the CPU one (lavapipe)")]
    NoAdapter(String),
    /// The adapter refused the device or a resource.
    #[error("wgpu device error: {0}")]
    Device(String),
    /// The shader (prelude + user code) failed to parse or validate.
    #[error("the WGSL shader does not compile: {0}")]
    Shader(String),
    /// A setting is out of range for this adapter or this workload.
    #[error("invalid wgpu backend configuration: {0}")]
    Config(String),
    /// The loop stopped making progress (the working set of one item exceeds the cache).
    #[error("fault-and-replay made no progress for {rounds} rounds: {hint}")]
    Stalled {
        /// Rounds without a served page or a finished item.
        rounds: u32,
        /// What to change.
        hint: String,
    },
    /// The shader broke the prelude's contract (e.g. `wfs_finish` twice for one item).
    #[error("the shader broke the warpfs prelude's contract: {0}")]
    Contract(String),
    /// A warpfs error while serving pages (daemon, file, I/O).
    #[error(transparent)]
    Warpfs(#[from] crate::Error),
}

impl From<WgpuError> for crate::Error {
    fn from(e: WgpuError) -> Self {
        match e {
            WgpuError::Warpfs(e) => e,
            WgpuError::Contract(_) | WgpuError::Stalled { .. } => {
                crate::Error::Range(e.to_string())
            }
            other => crate::Error::Config(other.to_string()),
        }
    }
}

/// Result alias of the wgpu backend.
pub type WgpuResult<T> = std::result::Result<T, WgpuError>;

/// A wgpu device and queue chosen for fault-and-replay work, with what was learnt of the adapter.
/// Cheap to clone (wgpu handles are reference counted).
#[derive(Clone)]
pub struct WgpuContext {
    device: wgpu::Device,
    queue: wgpu::Queue,
    info: wgpu::AdapterInfo,
    mappable_primary: bool,
    errors: Arc<Mutex<Vec<String>>>,
}

impl std::fmt::Debug for WgpuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WgpuContext")
            .field("adapter", &self.info.name)
            .field("backend", &self.info.backend)
            .field("mappable_primary", &self.mappable_primary)
            .finish()
    }
}

impl WgpuContext {
    /// Opens the best adapter (high performance first) of the backends in `WGPU_BACKEND`
    /// (default: all native ones). `WFS_WGPU_NO_MAPPED=1` refuses `MAPPABLE_PRIMARY_BUFFERS`
    /// (forces staging). Costs instance creation and driver start-up (tens of ms).
    pub fn new() -> WgpuResult<Self> {
        let instance =
            wgpu::Instance::new(wgpu::InstanceDescriptor::new_without_display_handle_from_env());
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            power_preference: wgpu::PowerPreference::HighPerformance,
            ..Default::default()
        }))
        .map_err(|e| WgpuError::NoAdapter(e.to_string()))?;
        Self::from_adapter(&adapter)
    }

    /// Opens a device on `adapter`, with the adapter's own limits (large storage buffers).
    /// Asks for `MAPPABLE_PRIMARY_BUFFERS` where the adapter offers it and its memory is unified
    /// with the host's (integrated GPU, Apple Silicon, CPU adapters such as lavapipe).
    pub fn from_adapter(adapter: &wgpu::Adapter) -> WgpuResult<Self> {
        let info = adapter.get_info();
        let unified = matches!(
            info.device_type,
            wgpu::DeviceType::IntegratedGpu | wgpu::DeviceType::Cpu
        );
        let no_mapped = std::env::var("WFS_WGPU_NO_MAPPED").is_ok_and(|v| v == "1");
        let mappable_primary = unified
            && !no_mapped
            && adapter
                .features()
                .contains(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS);
        let required_features = if mappable_primary {
            wgpu::Features::MAPPABLE_PRIMARY_BUFFERS
        } else {
            wgpu::Features::empty()
        };
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("warpfs"),
            required_features,
            required_limits: adapter.limits(),
            ..Default::default()
        }))
        .map_err(|e| WgpuError::Device(e.to_string()))?;
        let errors: Arc<Mutex<Vec<String>>> = Arc::default();
        let sink = errors.clone();
        device.on_uncaptured_error(Arc::new(move |e: wgpu::Error| {
            sink.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(e.to_string());
        }));
        Ok(Self {
            device,
            queue,
            info,
            mappable_primary,
            errors,
        })
    }

    /// The device (to create the user's own buffers).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue (to upload the user's own data).
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// What the adapter is (name, backend, device type, driver).
    pub fn adapter_info(&self) -> &wgpu::AdapterInfo {
        &self.info
    }

    /// True when the page-cache buffer is mapped directly (`MAPPABLE_PRIMARY_BUFFERS` on unified
    /// memory) instead of filled through staging buffers.
    pub fn mappable_primary(&self) -> bool {
        self.mappable_primary
    }

    /// Takes the device errors reported since the last call (validation, out of memory).
    pub(crate) fn take_errors(&self) -> Vec<String> {
        std::mem::take(&mut *self.errors.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Blocks until the GPU is idle and every mapping callback ran.
    pub(crate) fn wait_idle(&self) -> WgpuResult<()> {
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map(|_| ())
            .map_err(|e| WgpuError::Device(e.to_string()))
    }
}

/// Settings of a [`FaultReplay`]. `Default`: 64 MiB cache of 64 KiB pages, staging 2 × 8 MiB,
/// 4 host agents.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Bytes of the GPU page-cache buffer (rounded down to whole pages; at least 2 pages).
    pub cache_bytes: u64,
    /// GPU page size in bytes: a power of two, 4 KiB to 1 GiB.
    pub page_size: u32,
    /// Request records per round (more misses are asked for again next round); default: the
    /// number of cache slots.
    pub max_requests: Option<u32>,
    /// Bytes of each of the two staging buffers (discrete GPUs); rounded to whole pages.
    pub staging_bytes: u64,
    /// Most items dispatched per round (default: unlimited; the loop halves it under cache
    /// pressure and doubles it back).
    pub max_items_per_round: u32,
    /// Host agents used to serve pages (each with the runtime's `agent_queue_depth` in flight).
    pub agents: usize,
    /// Rounds without a served page or a finished item before giving up with
    /// [`WgpuError::Stalled`].
    pub max_stalled_rounds: u32,
    /// Use staging buffers even where the cache buffer could be mapped directly.
    pub force_staging: bool,
}

impl Default for ReplayConfig {
    fn default() -> Self {
        Self {
            cache_bytes: 64 << 20,
            page_size: 64 << 10,
            max_requests: None,
            staging_bytes: 8 << 20,
            max_items_per_round: u32::MAX,
            agents: 4,
            max_stalled_rounds: 8,
            force_staging: false,
        }
    }
}

/// The uniform block the prelude reads (`WfsParams`): written before every dispatch.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, bytemuck::Pod, bytemuck::Zeroable)]
pub(crate) struct GpuParams {
    pub page_shift: u32,
    pub page_words: u32,
    pub slots: u32,
    pub epoch: u32,
    pub deferred: u32,
    pub active_count: u32,
    pub fresh_base: u32,
    pub fresh_count: u32,
    pub in_base: u32,
    pub out_base: u32,
    pub max_requests: u32,
    pub file_count: u32,
    pub ref_base: u32,
    pub flag_base: u32,
    pub work_capacity: u32,
    pub wg_size: u32,
    pub files: [[u32; 4]; MAX_FILES],
    pub handles: [[u32; 4]; MAX_FILES / 4],
}

/// Sizes and offsets of the Rust mirror of the prelude's `WfsParams` uniform, by WGSL field name
/// (`sizeof(WfsParams)` first): the drift test compares them with the parsed prelude.
pub fn params_layout_table() -> Vec<(&'static str, usize)> {
    use core::mem::{offset_of, size_of};
    vec![
        ("sizeof(WfsParams)", size_of::<GpuParams>()),
        ("page_shift", offset_of!(GpuParams, page_shift)),
        ("page_words", offset_of!(GpuParams, page_words)),
        ("slots", offset_of!(GpuParams, slots)),
        ("epoch", offset_of!(GpuParams, epoch)),
        ("deferred", offset_of!(GpuParams, deferred)),
        ("active_count", offset_of!(GpuParams, active_count)),
        ("fresh_base", offset_of!(GpuParams, fresh_base)),
        ("fresh_count", offset_of!(GpuParams, fresh_count)),
        ("in_base", offset_of!(GpuParams, in_base)),
        ("out_base", offset_of!(GpuParams, out_base)),
        ("max_requests", offset_of!(GpuParams, max_requests)),
        ("file_count", offset_of!(GpuParams, file_count)),
        ("ref_base", offset_of!(GpuParams, ref_base)),
        ("flag_base", offset_of!(GpuParams, flag_base)),
        ("work_capacity", offset_of!(GpuParams, work_capacity)),
        ("wg_size", offset_of!(GpuParams, wg_size)),
        ("files", offset_of!(GpuParams, files)),
        ("handles", offset_of!(GpuParams, handles)),
    ]
}

/// Counter words at the start of the state buffer (`WFS_CTR_*` in the prelude).
pub(crate) mod ctr {
    pub const REQUESTS: usize = 0;
    pub const DEFERRED: usize = 1;
    pub const HITS_LO: usize = 2;
    pub const HITS_HI: usize = 3;
    pub const MISSES_LO: usize = 4;
    pub const MISSES_HI: usize = 5;
    pub const DONE: usize = 6;
    pub const OVERFLOW: usize = 7;
    pub const COUNT: usize = 16;
}

/// Values of the prelude's constants as the Rust side uses them, by WGSL name: the drift test
/// compares them with the parsed prelude.
pub fn prelude_constants() -> Vec<(&'static str, u32)> {
    vec![
        ("WFS_ABI_VERSION", crate::abi::WFS_ABI_VERSION),
        ("WFS_OP_READ", crate::abi::WFS_OP_READ),
        ("WFS_MAX_FILES", MAX_FILES as u32),
        ("WFS_CTR_REQUESTS", ctr::REQUESTS as u32),
        ("WFS_CTR_DEFERRED", ctr::DEFERRED as u32),
        ("WFS_CTR_HITS_LO", ctr::HITS_LO as u32),
        ("WFS_CTR_HITS_HI", ctr::HITS_HI as u32),
        ("WFS_CTR_MISSES_LO", ctr::MISSES_LO as u32),
        ("WFS_CTR_MISSES_HI", ctr::MISSES_HI as u32),
        ("WFS_CTR_DONE", ctr::DONE as u32),
        ("WFS_CTR_OVERFLOW", ctr::OVERFLOW as u32),
        ("WFS_COUNTERS", ctr::COUNT as u32),
    ]
}
