/*
 * Level-synchronous top-down BFS over a CSR graph, one kernel launch per level (compiled by
 * NVRTC from graph_bfs.rs). The frontier is the vertices whose level is the previous one: warps
 * take chunks of vertex ids in increasing order (one cursor), and one warp expands one frontier
 * vertex at a time: its lanes read offsets[u] and offsets[u + 1] together, then stride through
 * u's neighbour list and claim unvisited neighbours with atomicCAS on their level, counting
 * them with one warp-aggregated atomicAdd per round. Vertex order keeps the lists the warps
 * read at any moment next to each other in the file.
 *
 * The same body runs over two array types:
 *   bfs_level_mem  plain device pointers (the whole CSR in GPU memory: the upper bound);
 *   bfs_level_wfs  wfs_array<T> from warpfs.cuh (GPU-initiated reads through the GPU page
 *                  cache, served by the warpfs daemon).
 */
#include <warpfs.cuh>

#define BFS_UNREACHED 0xFFFFFFFFu

template <typename T> struct dev_array {
    const T *p;
    __device__ __forceinline__ T operator[](unsigned long long i) const { return p[i]; }
};

/* Vertices a warp takes from the level's cursor at a time. */
#define BFS_CHUNK 256ull

template <typename Offsets, typename Neighbours>
__device__ void bfs_expand(Offsets offsets, Neighbours neighbours, unsigned long long vertices,
                           unsigned *levels, unsigned long long *cursor,
                           unsigned long long *next_len, unsigned next_level) {
    const unsigned lane = threadIdx.x & 31;
    const unsigned cur_level = next_level - 1;
    for (;;) {
        /* Warps take chunks of vertex ids in increasing order, so the warps at work read
         * neighbouring lists: a sliding window of the file, each page loaded about once. */
        unsigned long long c0 = 0;
        if (lane == 0) c0 = atomicAdd(cursor, BFS_CHUNK);
        c0 = __shfl_sync(0xFFFFFFFFu, c0, 0);
        if (c0 >= vertices) break;
        const unsigned long long c1 = c0 + BFS_CHUNK < vertices ? c0 + BFS_CHUNK : vertices;
        for (unsigned long long v0 = c0; v0 < c1; v0 += 32) {
            const unsigned long long v = v0 + lane;
            unsigned todo = __ballot_sync(0xFFFFFFFFu, v < c1 && levels[v] == cur_level);
            while (todo) {
                const unsigned u = (unsigned)(v0 + __ffs(todo) - 1);
                todo &= todo - 1;
                /* The whole warp reads (wfs_array cooperates only when all 32 lanes call
                 * together; a partial warp would make one lookup per lane): even lanes
                 * offsets[u], odd lanes offsets[u + 1], one page lookup for the warp. */
                const unsigned long long o = offsets[(unsigned long long)u + (lane & 1)];
                const unsigned long long begin = __shfl_sync(0xFFFFFFFFu, o, 0);
                const unsigned long long end = __shfl_sync(0xFFFFFFFFu, o, 1);
                for (unsigned long long j0 = begin; j0 < end; j0 += 32) {
                    const unsigned long long j = j0 + lane;
                    const bool in = j < end;
                    /* Lanes past the end read the list's last element (same page), so all 32 read. */
                    const unsigned w = neighbours[in ? j : end - 1];
                    bool claimed = false;
                    /* w < vertices: a corrupt file or failed read never writes outside levels. */
                    if (in && w < vertices && levels[w] == BFS_UNREACHED)
                        claimed = atomicCAS(&levels[w], BFS_UNREACHED, next_level) == BFS_UNREACHED;
                    const unsigned got = __ballot_sync(0xFFFFFFFFu, claimed);
                    if (got && lane == 0) atomicAdd(next_len, (unsigned long long)__popc(got));
                }
            }
        }
    }
}

/* One level over the CSR in device memory. Launch with a multiple of 32 threads per block. */
extern "C" __global__ void bfs_level_mem(const unsigned long long *offsets,
                                         const unsigned *neighbours,
                                         unsigned long long vertices, unsigned *levels,
                                         unsigned long long *cursor,
                                         unsigned long long *next_len, unsigned next_level) {
    dev_array<unsigned long long> o = {offsets};
    dev_array<unsigned> n = {neighbours};
    bfs_expand(o, n, vertices, levels, cursor, next_len, next_level);
}

/* One level over the CSR file through warpfs: offsets (n + 1 u64 at byte offsets_at) and
 * neighbours (m u32 at byte neighbours_at) of file handle fh. */
extern "C" __global__ void bfs_level_wfs(const wfs_ctx_t *ctx, unsigned fh,
                                         unsigned long long offsets_at,
                                         unsigned long long vertices,
                                         unsigned long long neighbours_at,
                                         unsigned long long edges, unsigned *levels,
                                         unsigned long long *cursor,
                                         unsigned long long *next_len, unsigned next_level) {
    const wfs_array<unsigned long long> o =
        wfs_array_make<unsigned long long>(ctx, fh, offsets_at, vertices + 1);
    const wfs_array<unsigned> n = wfs_array_make<unsigned>(ctx, fh, neighbours_at, edges);
    bfs_expand(o, n, vertices, levels, cursor, next_len, next_level);
}

/* The file-backed arrays' error count (reads that returned T() instead of data). */
extern "C" __global__ void bfs_wfs_errors(const wfs_ctx_t *ctx, unsigned long long *out) {
    *out = wfs_errors(ctx);
}
