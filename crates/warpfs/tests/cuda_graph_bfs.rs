//! GPU BFS (`backend::cuda::graph_bfs`): the kernels compile with NVRTC wherever libnvrtc is
//! present (no GPU needed); on a GPU both searches — CSR in GPU memory and through warpfs
//! file-backed arrays — must give the CPU BFS's levels, vertex for vertex. Skips with a message
//! where there is no NVRTC / no CUDA driver.
#![cfg(all(feature = "cuda", feature = "graph"))]

use std::path::PathBuf;
use warpfs::backend::cuda::graph_bfs::{
    bfs_in_gpu_memory, bfs_through_warpfs, gpu_io_config, BfsKernels, GRAPH_BFS_CU,
};
use warpfs::backend::cuda::{available, BulkConfig, CudaBulk};
use warpfs::graph::bfs::first_difference;
use warpfs::graph::{
    bfs_parallel, generate, BfsMode, CsrFile, CsrView, Direction, EdgeModel, GenerateOptions,
    GraphSpec,
};
use warpfs::{OpenOptions, Runtime, RuntimeConfig};

fn nvrtc() -> bool {
    // SAFETY: only tries to dlopen libnvrtc.
    if !unsafe { cudarc::nvrtc::sys::is_culib_present() } {
        println!("skipping: no libnvrtc (set LD_LIBRARY_PATH to a CUDA 13 NVRTC)");
        return false;
    }
    true
}

fn gpu() -> bool {
    // SAFETY: only tries to dlopen libcuda.
    if !unsafe { cudarc::driver::sys::is_culib_present() } || !available() {
        println!("skipping: no CUDA driver on this machine");
        return false;
    }
    true
}

#[test]
fn bfs_kernels_compile_with_nvrtc_for_sm90() {
    if !nvrtc() {
        return;
    }
    let include = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../include");
    let opts = cudarc::nvrtc::CompileOptions {
        include_paths: vec![include.display().to_string()],
        arch: Some("compute_90"),
        options: vec!["--std=c++17".into()],
        ..Default::default()
    };
    let ptx = match cudarc::nvrtc::compile_ptx_with_opts(GRAPH_BFS_CU, opts) {
        Ok(p) => p.to_src(),
        Err(cudarc::nvrtc::CompileError::CompileError { log, .. }) => {
            panic!("NVRTC: {}", log.to_string_lossy())
        }
        Err(e) => panic!("NVRTC: {e}"),
    };
    for k in [
        "bfs_level_mem",
        "bfs_level_wfs",
        "bfs_bottom_up_mem",
        "bfs_bottom_up_wfs",
        "bfs_frontier_bits",
        "bfs_load_offsets",
        "bfs_wfs_errors",
    ] {
        assert!(
            ptx.contains(&format!(".entry {k}")),
            "kernel {k} missing from the PTX"
        );
    }
}

fn graph(name: &str, scale: u32) -> PathBuf {
    let d = std::env::temp_dir().join(format!("warpfs-gpu-bfs-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    let p = d.join(name);
    let spec = GraphSpec {
        model: EdgeModel::Kronecker,
        scale,
        edge_factor: 16,
        seed: 5,
    };
    generate(&spec, &p, &GenerateOptions::default()).unwrap();
    p
}

#[test]
fn gpu_bfs_both_ways_equals_cpu_bfs() {
    if !gpu() || !nvrtc() {
        return;
    }
    // Scale 14: the hubs' lists run over many 4 KiB pages (pins ahead).
    let path = graph("kron14", 14);
    let file = CsrFile::open(&path).unwrap();
    let CsrView::U32(g) = file.view() else {
        panic!("4-byte indices")
    };
    let src = (0..g.vertices()).max_by_key(|&v| g.degree(v)).unwrap();
    let cpu = bfs_parallel(&g, src, BfsMode::TopDown).unwrap();
    let cpu_do = bfs_parallel(&g, src, BfsMode::DirectionOptimizing).unwrap();
    assert!(cpu_do.directions.contains(&Direction::BottomUp));

    let rt = Runtime::new(RuntimeConfig::default()).unwrap();
    let fh = rt.open(&path, OpenOptions::read_only()).unwrap();
    let gpu = warpfs::backend::cuda::gpu_io::GpuIo::new(&rt, gpu_io_config(0, 64 << 20)).unwrap();
    let kernels = BfsKernels::new(&gpu).unwrap();
    let bulk = CudaBulk::new(0, BulkConfig::default()).unwrap();

    // Lists longer than 64 entries shared out to every warp (more than the 1024 slots: the
    // rest read by the warp that found them), as a hub's list is on a large graph.
    let split = BfsKernels::with_options(&gpu, &["-DBFS_SPLIT=64ull"]).unwrap();
    // Both ways, both modes, both builds: the CPU's levels, and the CPU's direction at every
    // level.
    for (kernels, mode, want) in [
        (&kernels, BfsMode::TopDown, &cpu),
        (&kernels, BfsMode::DirectionOptimizing, &cpu_do),
        (&split, BfsMode::TopDown, &cpu),
        (&split, BfsMode::DirectionOptimizing, &cpu_do),
    ] {
        let (mem, load) = bfs_in_gpu_memory(&gpu, kernels, &bulk, &file, src, mode).unwrap();
        assert_eq!(load.bytes, file.header().file_bytes());
        assert_eq!(
            first_difference(&mem.levels, &cpu.levels),
            None,
            "in-memory GPU BFS, {mode:?}"
        );
        assert_eq!(mem.depth, cpu.depth);
        assert_eq!(mem.directions, want.directions, "{mode:?}");

        let wfs = bfs_through_warpfs(&gpu, kernels, fh.raw(), file.header(), src, mode).unwrap();
        assert_eq!(wfs.array_errors, 0, "file-backed array reads failed");
        assert_eq!(
            first_difference(&wfs.levels, &cpu.levels),
            None,
            "warpfs GPU BFS, {mode:?}"
        );
        assert_eq!(wfs.depth, cpu.depth);
        assert_eq!(wfs.frontier_sizes, mem.frontier_sizes);
        assert_eq!(wfs.directions, want.directions, "{mode:?}");
        assert!(wfs.offsets_load.is_some());
    }

    // A BFS through a cache of 64 pages, far smaller than the graph and than the warps' pins,
    // the file mapped into the device (GpuIo::map_file) or not; every level checked. Returns
    // the cache's counters, the bytes of lists read in place and the daemon's requests.
    let small_search = |map: bool, mode: BfsMode| {
        let what = format!(
            "small cache{}, {mode:?}",
            if map { ", file view" } else { "" }
        );
        let rt = Runtime::new(RuntimeConfig::default()).unwrap();
        let fh = rt.open(&path, OpenOptions::read_only()).unwrap();
        let mut gpu =
            warpfs::backend::cuda::gpu_io::GpuIo::new(&rt, gpu_io_config(0, 64 * 4096)).unwrap();
        if map {
            gpu.map_file(&fh).unwrap();
        }
        let kernels = BfsKernels::new(&gpu).unwrap();
        let before = rt.stats().daemon.requests;
        let r = bfs_through_warpfs(&gpu, &kernels, fh.raw(), file.header(), src, mode).unwrap();
        assert_eq!(r.array_errors, 0, "file-backed array reads failed ({what})");
        assert_eq!(
            first_difference(&r.levels, &cpu.levels),
            None,
            "warpfs GPU BFS, {what}"
        );
        let st = gpu.cache_stats().unwrap();
        let requests = rt.stats().daemon.requests - before;
        println!(
            "{what}: {st:?}; lists read in place {} B; daemon requests {requests}",
            r.in_place_bytes
        );
        (st, r.in_place_bytes, requests)
    };
    // Through the daemon: evictions, pins that find no frame (the kernel falls back to element
    // reads).
    for mode in [BfsMode::TopDown, BfsMode::DirectionOptimizing] {
        let (st, _, _) = small_search(false, mode);
        assert!(st.evictions > 0, "{st:?}");
    }
    // Mapped: pages load from the view, a full cache reads in place and evicts nothing; no
    // daemon round trips beyond the file's last partial page.
    for mode in [BfsMode::TopDown, BfsMode::DirectionOptimizing] {
        let (st, in_place_bytes, requests) = small_search(true, mode);
        assert!(st.in_place > 0 && in_place_bytes > 0, "{st:?}");
        assert_eq!(st.evictions, 0, "{st:?}");
        assert!(
            requests < 1000,
            "{requests} daemon requests for a mapped file"
        );
    }

    // A source outside the graph is an error, not a launch.
    assert!(
        bfs_in_gpu_memory(&gpu, &kernels, &bulk, &file, g.vertices(), BfsMode::TopDown).is_err()
    );
    assert!(bfs_through_warpfs(
        &gpu,
        &kernels,
        fh.raw(),
        file.header(),
        g.vertices(),
        BfsMode::DirectionOptimizing
    )
    .is_err());
}
