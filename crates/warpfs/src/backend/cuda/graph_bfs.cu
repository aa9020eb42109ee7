/*
 * Level-synchronous BFS over a CSR graph, one kernel launch per level (compiled by NVRTC from
 * graph_bfs.rs), each level top-down (bfs_level_*) or bottom-up (bfs_bottom_up_*) as the host's
 * direction policy says (crate::graph::direction). Both searches keep the offsets array in
 * device memory (the in-memory search has the whole file there; the warpfs search copies the
 * offsets in through the file-backed array first, bfs_load_offsets): a bottom-up level reads
 * the bounds of every unvisited vertex.
 *
 * Top-down: the frontier is the vertices whose level is the previous one: warps
 * take chunks of vertex ids in increasing order (one cursor); a warp reads the list bounds of 32
 * vertices at once and pins the first page of each frontier vertex's list in one round; the
 * short lists that lie whole in their first page are expanded together (the lanes share out
 * their entries), the others one at a time: the warp pins the page holding the list's next
 * entries (wfs_array::pin; one lookup per page of entries, up to BFS_AHEAD pages at once),
 * strides through them and claims unvisited neighbours with atomicCAS on their level, counting
 * them with one warp-aggregated atomicAdd. Vertex order keeps the lists the warps read at any
 * moment next to each other in the file.
 *
 * Bottom-up (bfs_bottom_up): warps take chunks of vertex ids; each unvisited vertex of a
 * 32-vertex group reads its list, one 32-byte sector at a time (more when fewer lists of the
 * group are left), until a neighbour is in the frontier bitmap (bfs_frontier_bits, one bit
 * per vertex: 8 MiB for 2^26 vertices, held in L2) and takes the next level. The lanes share
 * out the entries of all the group's pieces each round, as the short lists of a top-down level
 * are. The neighbour lists are pinned with pin_stream: a page the GPU cache holds is read
 * there, one it does not hold is read in place from the file's view (never loaded: a bottom-up
 * level reads a sector or two of most lists).
 *
 * The same body runs over two array types:
 *   bfs_level_mem  plain device pointers (the whole CSR in GPU memory: the upper bound);
 *   bfs_level_wfs  wfs_array<T> from warpfs.cuh (GPU-initiated reads through the GPU page
 *                  cache, served by the warpfs daemon, or from the file's view where the
 *                  host mapped it: GpuIo::map_file).
 */
#include <warpfs.cuh>

#define BFS_UNREACHED 0xFFFFFFFFu

template <typename T> struct dev_array {
    const T *p;
    __device__ __forceinline__ T operator[](unsigned long long i) const { return p[i]; }
    /* The same interface as wfs_array::pin: the rest of the array, nothing to release. */
    __device__ __forceinline__ wfs_span<T> pin(unsigned long long i) const {
        wfs_span<T> s;
        /* ~0: nothing (as a wfs_array pin out of range). */
        s.p = i == ~0ull ? p : p + i;
        s.count = i == ~0ull ? 0ull : ~0ull;
        s.frame = 0;
        s.leader = 0;
        return s;
    }
    __device__ __forceinline__ wfs_span<T> pin_stream(unsigned long long i) const { return pin(i); }
    __device__ __forceinline__ void unpin(const wfs_span<T> &) const {}
    __device__ __forceinline__ unsigned long long page_elems() const { return 1ull << 20; }
};

/* Neighbours a lane reads before it looks at any (loads in flight per lane: a list in host
 * memory costs a PCIe round trip per round of loads, not per 32 entries). */
#ifndef BFS_UNROLL
#define BFS_UNROLL 4u
#endif

/* What a top-down level's claims need: the offsets (in device memory: the degree of a claimed
 * vertex is added to the next frontier's edge count, which the direction policy reads), the
 * levels, the level being claimed and the counters (frontier vertices, frontier edges). */
struct bfs_level_ctx {
    const unsigned long long *offsets;
    unsigned long long vertices;
    unsigned *levels;
    unsigned long long *counts;
    unsigned next_level;
    /* Add claimed vertices' degrees (the direction policy's input; off for top-down-only). */
    bool scout;
};

/* Visits neighbour w: claims it for the next level if unvisited (counted in `claimed`, its
 * degree in `scout`). w < vertices: a corrupt file or failed read never writes outside levels. */
__device__ __forceinline__ void bfs_visit(unsigned w, const bfs_level_ctx &L, unsigned &claimed,
                                          unsigned long long &scout) {
    if (w < L.vertices && L.levels[w] == BFS_UNREACHED &&
        atomicCAS(&L.levels[w], BFS_UNREACHED, L.next_level) == BFS_UNREACHED) {
        ++claimed;
        if (L.scout) scout += L.offsets[w + 1] - L.offsets[w];
    }
}

/* Adds the warp's claims (each lane's `claimed` and `scout`) to the next frontier's counts:
 * two atomics per warp. */
__device__ __forceinline__ void bfs_add_claimed(unsigned claimed, unsigned long long scout,
                                                unsigned long long *counts, unsigned lane) {
    for (unsigned d = 16; d != 0; d >>= 1) {
        claimed += __shfl_xor_sync(0xFFFFFFFFu, claimed, d);
        scout += __shfl_xor_sync(0xFFFFFFFFu, scout, d);
    }
    if (claimed != 0 && lane == 0) {
        atomicAdd(&counts[0], (unsigned long long)claimed);
        atomicAdd(&counts[1], scout);
    }
}

/* Claims the unvisited among n neighbours: the whole warp strides through them, reading each
 * with at(k) (k < n), BFS_UNROLL rounds of 32 loads at a time. The lanes past n hold
 * 0xFFFFFFFF, which no 4-byte-index graph reaches. */
template <typename At>
__device__ __forceinline__ void bfs_claim(At at, unsigned long long n, const bfs_level_ctx &L, unsigned lane) {
    for (unsigned long long b = 0; b < n; b += 32ull * BFS_UNROLL) {
        unsigned w[BFS_UNROLL];
#pragma unroll
        for (unsigned u = 0; u < BFS_UNROLL; ++u) {
            /* Rounds past n skipped by the whole warp (at() may be a warp-wide call). */
            w[u] = 0xFFFFFFFFu;
            if (b + 32ull * u < n) {
                const unsigned long long k = b + 32ull * u + lane;
                const unsigned x = at(k < n ? k : n - 1);
                if (k < n) w[u] = x;
            }
        }
        unsigned claimed = 0;
        unsigned long long scout = 0;
#pragma unroll
        for (unsigned u = 0; u < BFS_UNROLL; ++u) bfs_visit(w[u], L, claimed, scout);
        bfs_add_claimed(claimed, scout, L.counts, lane);
    }
}

/* Lists read in place (a pinned page, a span of a file view, device memory) are read 16 bytes
 * a lane per load: a warp has BFS_UNROLL × 512 bytes in flight per round, where 4-byte loads
 * give it a quarter of that (what a list in host memory read over PCIe waits on). 0: 4-byte
 * loads. */
#ifndef BFS_VEC
#define BFS_VEC 1
#endif

/* bfs_claim for n neighbours at q (4-byte aligned): a scalar head up to a 16-byte boundary,
 * then 16-byte loads, BFS_UNROLL per lane in flight, then the scalar tail; one count add. */
__device__ __forceinline__ void bfs_claim_ptr(const unsigned *q, unsigned long long n, const bfs_level_ctx &L,
                                              unsigned lane) {
    unsigned claimed = 0;
    unsigned long long scout = 0;
    const unsigned long long addr = reinterpret_cast<unsigned long long>(q);
    unsigned long long h = ((16 - (addr & 15)) & 15) / 4;
    if (h > n) h = n;
    if (lane < h) bfs_visit(q[lane], L, claimed, scout);
    const uint4 *v = reinterpret_cast<const uint4 *>(q + h);
    const unsigned long long nv = (n - h) / 4;
    for (unsigned long long b = 0; b < nv; b += 32ull * BFS_UNROLL) {
        uint4 w[BFS_UNROLL];
#pragma unroll
        for (unsigned u = 0; u < BFS_UNROLL; ++u) {
            const unsigned long long k = b + 32ull * u + lane;
            w[u] = k < nv ? v[k] : make_uint4(0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu, 0xFFFFFFFFu);
        }
#pragma unroll
        for (unsigned u = 0; u < BFS_UNROLL; ++u) {
            bfs_visit(w[u].x, L, claimed, scout);
            bfs_visit(w[u].y, L, claimed, scout);
            bfs_visit(w[u].z, L, claimed, scout);
            bfs_visit(w[u].w, L, claimed, scout);
        }
    }
    const unsigned long long t0 = h + 4 * nv;
    if (t0 + lane < n) bfs_visit(q[t0 + lane], L, claimed, scout);
    bfs_add_claimed(claimed, scout, L.counts, lane);
}

/* Claims the unvisited among the n neighbours at q: lists longer than one round of 4-byte
 * loads by bfs_claim_ptr (where q allows), shorter ones in that one round (16-byte loads would
 * add a head and a tail round to a short list: level 3 of k26 went from 102 to 124 ms). */
__device__ __forceinline__ void bfs_claim_at(const unsigned *q, unsigned long long n, const bfs_level_ctx &L,
                                             unsigned lane) {
    if (BFS_VEC && n > 32ull * BFS_UNROLL && (reinterpret_cast<unsigned long long>(q) & 3) == 0)
        bfs_claim_ptr(q, n, L, lane);
    else
        bfs_claim([&](unsigned long long x) { return q[x]; }, n, L, lane);
}

/* Pages of a long list pinned at once, one lane each, so their loads go out together. 4 by
 * measurement with every miss through the daemon (k26, 25% cache, H100: 4.9 s with 4, 5.5–5.8 s
 * with 32); with the file mapped, 8 was within the noise of 4 (0.351 against 0.365 s). */
#ifndef BFS_AHEAD
#define BFS_AHEAD 4u
#endif

/* Bytes a read of n bytes at p moves over PCIe: the 32-byte sectors it touches. */
__device__ __forceinline__ unsigned long long sector_bytes(const void *p, unsigned long long n) {
    const unsigned long long a = reinterpret_cast<unsigned long long>(p);
    return n == 0 ? 0ull : (((a + n + 31) >> 5) - (a >> 5)) << 5;
}

/* Vertices a warp takes from the level's cursor at a time. */
#define BFS_CHUNK 256ull

/* The warp's next BFS_CHUNK vertex ids from the level's cursor, [c0, c1); false when none are
 * left. Every lane calls. */
__device__ __forceinline__ bool bfs_take_chunk(unsigned long long *cursor, unsigned long long vertices,
                                               unsigned lane, unsigned long long &c0, unsigned long long &c1) {
    c0 = 0;
    if (lane == 0) c0 = atomicAdd(cursor, BFS_CHUNK);
    c0 = __shfl_sync(0xFFFFFFFFu, c0, 0);
    c1 = c0 + BFS_CHUNK < vertices ? c0 + BFS_CHUNK : vertices;
    return c0 < vertices;
}

/* Both searches pin the first page of every frontier list of a 32-vertex group at once (one
 * cache round for up to 32 lists, where one round per list left a warp waiting on one lookup
 * after another through the levels of many short lists); a list that ends inside its first
 * page is read from that pin. 0 turns it off. */
#ifndef BFS_FIRST_PINS
#define BFS_FIRST_PINS 1
#endif

/* Lists of at most this many entries that lie whole in their first pin are expanded together:
 * the warp's lanes take the entries of all of them in turn (a scan of their lengths says which
 * list an entry is in), BFS_UNROLL rounds of 32 in flight, instead of one list after another,
 * each a round trip of its own. 0 turns it off. */
#ifndef BFS_SHORT
#define BFS_SHORT 128u
#endif

/* An exclusive scan of each lane's n over the warp: the lane's start; `total` the sum. */
__device__ __forceinline__ unsigned warp_exclusive_scan(unsigned n, unsigned lane, unsigned &total) {
    unsigned incl = n;
#pragma unroll
    for (unsigned d = 1; d < 32; d <<= 1) {
        const unsigned t = __shfl_up_sync(0xFFFFFFFFu, incl, d);
        if (lane >= d) incl += t;
    }
    total = __shfl_sync(0xFFFFFFFFu, incl, 31);
    return incl - n;
}

/* Entry e of a round whose pieces the lanes hold (each lane `start` = its piece's place in the
 * round, from warp_exclusive_scan, and q = its piece): the entry (0xFFFFFFFF past `total`) and,
 * in `owner`, its lane — the last lane whose start is at most e (lanes of empty pieces before
 * it share its start; none after it has a start ≤ e). Every lane calls. */
__device__ __forceinline__ unsigned piece_entry(const unsigned *q, unsigned start, unsigned total, unsigned e,
                                                unsigned &owner) {
    owner = 0;
#pragma unroll
    for (unsigned step = 16; step != 0; step >>= 1) {
        const unsigned st = __shfl_sync(0xFFFFFFFFu, start, owner + step);
        if (st <= e) owner += step;
    }
    const unsigned long long qo = __shfl_sync(0xFFFFFFFFu, reinterpret_cast<unsigned long long>(q), owner);
    const unsigned so = __shfl_sync(0xFFFFFFFFu, start, owner);
    return e < total ? reinterpret_cast<const unsigned *>(qo)[e - so] : 0xFFFFFFFFu;
}

/* Expands together the lists the lanes in `shorts` hold whole at q (n entries each, lane
 * order); the other lanes pass n = 0. Returns the 32-byte sectors of the lists of lanes whose
 * `here` is set (read in place over PCIe), summed over the warp. */
__device__ __forceinline__ unsigned long long bfs_claim_short(const unsigned *q, unsigned n, bool here,
                                                              const bfs_level_ctx &L, unsigned lane) {
    unsigned total;
    const unsigned start = warp_exclusive_scan(n, lane, total);
    unsigned claimed = 0;
    unsigned long long scout = 0;
    for (unsigned base = 0; base < total; base += 32u * BFS_UNROLL) {
        unsigned w[BFS_UNROLL];
#pragma unroll
        for (unsigned u = 0; u < BFS_UNROLL; ++u) {
            unsigned owner;
            w[u] = piece_entry(q, start, total, base + 32u * u + lane, owner);
        }
#pragma unroll
        for (unsigned u = 0; u < BFS_UNROLL; ++u) bfs_visit(w[u], L, claimed, scout);
    }
    bfs_add_claimed(claimed, scout, L.counts, lane);
    unsigned long long sectors = here ? sector_bytes(q, (unsigned long long)n * sizeof(unsigned)) : 0ull;
    for (unsigned d = 16; d != 0; d >>= 1) sectors += __shfl_xor_sync(0xFFFFFFFFu, sectors, d);
    return sectors;
}

/* Expands entries [begin, end) of the neighbours array (part of one frontier list): the whole
 * warp pins a page at a time, with up to BFS_AHEAD next pages pinned ahead by the lanes.
 * Returns the bytes read in place from a file view (32-byte sectors). */
template <typename Neighbours>
__device__ __forceinline__ unsigned long long bfs_expand_range(Neighbours neighbours, unsigned long long begin,
                                                               unsigned long long end, const bfs_level_ctx &L,
                                                               unsigned long long pe, unsigned lane) {
    unsigned long long in_place = 0;
    unsigned long long j0 = begin;
    while (j0 < end) {
        /* The whole warp pins the page holding neighbours[j0] and reads the list's
         * part in it in place (one lookup per page, not per 32 entries). */
        const wfs_span<unsigned> s = neighbours.pin(j0);
        if (s.count == 0) {
            /* Nothing pinned: element reads, 32 at a time. */
            const unsigned long long n = end - j0 < 32 ? end - j0 : 32;
            bfs_claim([&](unsigned long long k) { return neighbours[j0 + k]; }, n, L, lane);
            neighbours.unpin(s);
            j0 += n;
            continue;
        }
        const unsigned long long n0 = s.count < end - j0 ? s.count : end - j0;
        const unsigned long long j1 = j0 + n0;
        if (s.in_place()) in_place += sector_bytes(s.p, n0 * sizeof(unsigned));
        /* A list going on past this page: lane k also pins its k-th next page, so
         * up to BFS_AHEAD loads are in flight at once, not one after another. */
        const unsigned long long more = j1 < end && pe != 0 ? (end - j1 + pe - 1) / pe : 0;
        const unsigned ahead = more < BFS_AHEAD ? (unsigned)more : BFS_AHEAD;
        wfs_span<unsigned> t;
        if (ahead != 0)
            t = neighbours.pin(j1 + (lane < ahead ? lane : 0) * pe);
        bfs_claim_at(s.p, n0, L, lane);
        neighbours.unpin(s);
        j0 = j1;
        if (ahead == 0) continue;
        /* The pages the lanes pinned, in order, while each is whole and in place. */
        for (unsigned a = 0; a < ahead && j0 < end; ++a) {
            const unsigned long long c = __shfl_sync(0xFFFFFFFFu, t.count, a);
            const unsigned long long p = __shfl_sync(0xFFFFFFFFu, (unsigned long long)t.p, a);
            const bool here = __shfl_sync(0xFFFFFFFFu, t.in_place() ? 1u : 0u, a) != 0;
            const unsigned long long at = j1 + (unsigned long long)a * pe;
            if (c == 0 || at != j0) break; /* not pinned: the loop above goes on */
            const unsigned long long n = c < end - j0 ? c : end - j0;
            const unsigned *q = reinterpret_cast<const unsigned *>(p);
            if (here) in_place += sector_bytes(q, n * sizeof(unsigned));
            bfs_claim_at(q, n, L, lane);
            j0 += n;
        }
        neighbours.unpin(t);
    }
    return in_place;
}

/* Lists longer than BFS_SPLIT entries are not read by the warp that finds them alone: it
 * lists them (up to BFS_SPLIT_SLOTS a level), and after the scan every warp of the launch takes
 * BFS_SPLIT_CHUNK entries of them at a time. The source of a search from a hub has millions
 * of neighbours: one warp took 43 ms over it (k26, H100), most of a direction-optimizing
 * search. 0 turns it off. */
#ifndef BFS_SPLIT
#define BFS_SPLIT 16384ull
#endif
#define BFS_SPLIT_CHUNK 8192ull
#define BFS_SPLIT_SLOTS 1024u

/* The long lists of one top-down level (device memory, zeroed before each launch): slot k is
 * [lo[k], hi[k]) once hi[k] is non-zero (written last); next[k] is its next chunk; `current`
 * the first slot that may have chunks left. */
struct bfs_split {
    unsigned taken;
    unsigned current;
    unsigned long long lo[BFS_SPLIT_SLOTS];
    unsigned long long hi[BFS_SPLIT_SLOTS];
    unsigned long long next[BFS_SPLIT_SLOTS];
};

/* Takes chunks of the listed long lists until none is left (slots in order; a slot taken but
 * not yet written is waited for: its writer stores it without waiting on anything). Returns the
 * bytes read in place. */
template <typename Neighbours>
__device__ unsigned long long bfs_drain_long(bfs_split *split, Neighbours neighbours, const bfs_level_ctx &L,
                                             unsigned long long pe, unsigned lane) {
    unsigned long long in_place = 0;
    for (;;) {
        unsigned stop = 0;
        unsigned long long a = 0, b = 0;
        if (lane == 0) {
            const unsigned i = wfs_detail::ld_relaxed_gpu_u32(&split->current);
            const unsigned taken = wfs_detail::ld_relaxed_gpu_u32(&split->taken);
            if (i >= (taken < BFS_SPLIT_SLOTS ? taken : BFS_SPLIT_SLOTS)) {
                stop = 1;
            } else {
                unsigned long long hi;
                while ((hi = wfs_detail::ld_acquire_gpu_u64(&split->hi[i])) == 0) __nanosleep(64);
                const unsigned long long lo = split->lo[i];
                const unsigned long long j = atomicAdd(&split->next[i], BFS_SPLIT_CHUNK);
                if (j >= hi - lo) {
                    atomicCAS(&split->current, i, i + 1);
                } else {
                    a = lo + j;
                    b = a + BFS_SPLIT_CHUNK < hi ? a + BFS_SPLIT_CHUNK : hi;
                }
            }
        }
        if (__shfl_sync(0xFFFFFFFFu, stop, 0) != 0) break;
        a = __shfl_sync(0xFFFFFFFFu, a, 0);
        b = __shfl_sync(0xFFFFFFFFu, b, 0);
        if (a < b) in_place += bfs_expand_range(neighbours, a, b, L, pe, lane);
    }
    return in_place;
}

/* One top-down level: the lists of the vertices at level L.next_level - 1 (edges: entries in
 * the neighbours array; list bounds past it are cut there). */
template <bool FirstPins, typename Neighbours>
__device__ void bfs_expand(const bfs_level_ctx &L, Neighbours neighbours, unsigned long long edges,
                           unsigned long long *cursor, bfs_split *split, unsigned long long *moved) {
    const unsigned lane = threadIdx.x & 31;
    const unsigned long long vertices = L.vertices;
    const unsigned *levels = L.levels;
    const unsigned long long *offsets = L.offsets;
    /* Bytes of neighbour lists read in place from a file view (over PCIe), this warp's. */
    unsigned long long in_place = 0;
    const unsigned cur_level = L.next_level - 1;
    /* Elements in a whole cache page (one descriptor read for the launch, not one per page). */
    const unsigned long long pe = neighbours.page_elems();
    /* Warps take chunks of vertex ids in increasing order, so the warps at work read
     * neighbouring lists: a sliding window of the file, each page loaded about once. */
    unsigned long long c0, c1;
    while (bfs_take_chunk(cursor, vertices, lane, c0, c1)) {
        for (unsigned long long v0 = c0; v0 < c1; v0 += 32) {
            const unsigned long long v = v0 + lane;
            unsigned todo = __ballot_sync(0xFFFFFFFFu, v < c1 && levels[v] == cur_level);
            if (todo == 0) continue;
            /* The 32 vertices' list bounds in two whole-warp reads (one page lookup each, as a
             * rule): lane k holds offsets[v0 + k], and offsets[v0 + 32] closes lane 31's list. */
            unsigned long long lo = offsets[v <= vertices ? v : vertices];
            const unsigned long long last = v0 + 32 <= vertices ? v0 + 32 : vertices;
            const unsigned long long hi31 = offsets[last];
            unsigned long long hi = __shfl_down_sync(0xFFFFFFFFu, lo, 1);
            if (lane == 31) hi = hi31;
            /* Bounds a changed or corrupt file may hold, cut to the array. */
            if (hi > edges) hi = edges;
            if (lo > hi) lo = hi;
            /* Lane k's frontier list's first page (count 0: none, or not pinned). */
            wfs_span<unsigned> first;
            first.count = 0;
            if (FirstPins) first = neighbours.pin(((todo >> lane) & 1) && lo < hi ? lo : ~0ull);
            if (FirstPins && BFS_SHORT != 0) {
                const bool short_list = ((todo >> lane) & 1) && first.count != 0 && first.count >= hi - lo &&
                                        hi - lo <= BFS_SHORT;
                const unsigned shorts = __ballot_sync(0xFFFFFFFFu, short_list);
                if (shorts != 0) {
                    in_place += bfs_claim_short(first.p, short_list ? (unsigned)(hi - lo) : 0u,
                                                short_list && first.in_place(), L, lane);
                    todo &= ~shorts;
                }
            }
            while (todo) {
                const unsigned k = __ffs(todo) - 1;
                todo &= todo - 1;
                const unsigned long long begin = __shfl_sync(0xFFFFFFFFu, lo, k);
                const unsigned long long end = __shfl_sync(0xFFFFFFFFu, hi, k);
                if (split != 0 && end - begin > BFS_SPLIT) {
                    /* A long list: shared out to every warp of the launch after the scan
                     * (bfs_drain_long), where a slot is free. */
                    unsigned slot = 0;
                    if (lane == 0) slot = atomicAdd(&split->taken, 1u);
                    slot = __shfl_sync(0xFFFFFFFFu, slot, 0);
                    if (slot < BFS_SPLIT_SLOTS) {
                        if (lane == 0) {
                            split->lo[slot] = begin;
                            __threadfence();
                            atomicExch(&split->hi[slot], end);
                        }
                        continue;
                    }
                }
                if (FirstPins) {
                    const unsigned long long fc = __shfl_sync(0xFFFFFFFFu, first.count, k);
                    if (fc != 0 && fc >= end - begin) {
                        /* The whole list in lane k's first-page span. */
                        const unsigned *q = reinterpret_cast<const unsigned *>(
                            __shfl_sync(0xFFFFFFFFu, (unsigned long long)first.p, k));
                        const unsigned long long n = end - begin;
                        if (__shfl_sync(0xFFFFFFFFu, first.in_place() ? 1u : 0u, k) != 0)
                            in_place += sector_bytes(q, n * sizeof(unsigned));
                        bfs_claim_at(q, n, L, lane);
                        continue;
                    }
                }
                in_place += bfs_expand_range(neighbours, begin, end, L, pe, lane);
            }
            if (FirstPins) neighbours.unpin(first);
        }
    }
    if (split != 0) in_place += bfs_drain_long(split, neighbours, L, pe, lane);
    if (moved != 0 && lane == 0 && in_place != 0) atomicAdd(moved, in_place);
}

/* Entries a bottom-up round takes from all of a group's lists together (each list's piece
 * ends on a 32-byte sector boundary: a lane's list gives up to 256 / active-lists entries). */
#define BFS_BU_ROUND 256u

/* One bottom-up level: every unvisited vertex v reads its list until a neighbour is in the
 * frontier (bit w of `front`) and then takes level L.next_level. The warp takes 32 vertices at
 * a time; each round it pins the next piece of every list still searching (pin_stream: one
 * round of lookups for up to 32 lists) and its lanes share out the pieces' entries. Adds the
 * bytes read in place from a file view to *moved. */
template <typename Neighbours>
__device__ void bfs_bottom_up(const bfs_level_ctx &L, Neighbours neighbours, unsigned long long edges,
                              const unsigned *front, unsigned long long *cursor, unsigned long long *moved) {
    const unsigned lane = threadIdx.x & 31;
    const unsigned long long vertices = L.vertices;
    unsigned long long in_place = 0;
    unsigned claimed = 0;
    unsigned long long scout = 0;
    unsigned long long c0, c1;
    while (bfs_take_chunk(cursor, vertices, lane, c0, c1)) {
        for (unsigned long long v0 = c0; v0 < c1; v0 += 32) {
            const unsigned long long v = v0 + lane;
            bool searching = v < c1 && L.levels[v] == BFS_UNREACHED;
            if (__ballot_sync(0xFFFFFFFFu, searching) == 0) continue;
            unsigned long long pos = 0, hi = 0;
            if (searching) {
                pos = L.offsets[v];
                hi = L.offsets[v + 1];
                /* Bounds a changed or corrupt file may hold, cut to the array. */
                if (hi > edges) hi = edges;
                if (pos > hi) pos = hi;
            }
            const unsigned long long degree = hi - pos;
            searching = searching && pos < hi;
            for (;;) {
                const unsigned active = __ballot_sync(0xFFFFFFFFu, searching);
                if (active == 0) break;
                const wfs_span<unsigned> s = neighbours.pin_stream(searching ? pos : ~0ull);
                /* This lane's piece: to the end of its 32-byte sector, plus whole sectors while
                 * the round has room. */
                unsigned take = 0;
                if (searching && s.count != 0) {
                    const unsigned long long addr = reinterpret_cast<unsigned long long>(s.p);
                    const unsigned first = (unsigned)((32 - (addr & 31)) >> 2);
                    const unsigned cap = BFS_BU_ROUND / __popc(active);
                    unsigned long long n = first + (cap > first ? ((cap - first) & ~7u) : 0u);
                    if (n > s.count) n = s.count;
                    if (n > hi - pos) n = hi - pos;
                    take = (unsigned)n;
                }
                /* The pieces' entries shared out among the lanes. */
                unsigned total;
                const unsigned start = warp_exclusive_scan(take, lane, total);
                unsigned found = 0; /* bit k: lane k's list has a parent in this round */
                for (unsigned base = 0; base < total; base += 32u * BFS_UNROLL) {
                    unsigned w[BFS_UNROLL];
                    unsigned owner_of[BFS_UNROLL];
#pragma unroll
                    for (unsigned u = 0; u < BFS_UNROLL; ++u)
                        w[u] = piece_entry(s.p, start, total, base + 32u * u + lane, owner_of[u]);
#pragma unroll
                    for (unsigned u = 0; u < BFS_UNROLL; ++u)
                        if (w[u] < vertices && ((front[w[u] >> 5] >> (w[u] & 31)) & 1u)) found |= 1u << owner_of[u];
                }
                for (unsigned d = 16; d != 0; d >>= 1) found |= __shfl_xor_sync(0xFFFFFFFFu, found, d);
                if (take != 0 && s.in_place()) in_place += sector_bytes(s.p, (unsigned long long)take * 4);
                const bool no_span = searching && s.count == 0;
                neighbours.unpin(s);
                if (searching) {
                    bool hit = (found >> lane) & 1u;
                    if (no_span) {
                        /* Nothing pinned (no frame free, an I/O error): one element read. */
                        const unsigned x = neighbours[pos];
                        hit = x < vertices && ((front[x >> 5] >> (x & 31)) & 1u);
                        take = 1;
                    }
                    if (hit) {
                        L.levels[v] = L.next_level;
                        ++claimed;
                        scout += degree;
                        searching = false;
                    } else {
                        pos += take;
                        searching = pos < hi;
                    }
                }
            }
        }
    }
    bfs_add_claimed(claimed, scout, L.counts, lane);
    for (unsigned d = 16; d != 0; d >>= 1) in_place += __shfl_xor_sync(0xFFFFFFFFu, in_place, d);
    if (moved != 0 && lane == 0 && in_place != 0) atomicAdd(moved, in_place);
}

/* One top-down level over the CSR in device memory (levels at next_level - 1 expanded; counts:
 * [0] vertices claimed, [1] their degrees). Launch with a multiple of 32 threads per block. */
extern "C" __global__ void bfs_level_mem(const unsigned long long *offsets,
                                         const unsigned *neighbours,
                                         unsigned long long vertices, unsigned long long edges,
                                         unsigned *levels, unsigned long long *cursor,
                                         unsigned long long *counts, unsigned next_level, bfs_split *split,
                                         unsigned scout) {
    const bfs_level_ctx L = {offsets, vertices, levels, counts, next_level, scout != 0};
    dev_array<unsigned> n = {neighbours};
    bfs_expand<BFS_FIRST_PINS != 0>(L, n, edges, cursor, BFS_SPLIT != 0 ? split : 0, (unsigned long long *)0);
}

/* One bottom-up level over the CSR in device memory (front: the frontier's bits). */
extern "C" __global__ void bfs_bottom_up_mem(const unsigned long long *offsets,
                                             const unsigned *neighbours,
                                             unsigned long long vertices, unsigned long long edges,
                                             unsigned *levels, const unsigned *front,
                                             unsigned long long *cursor, unsigned long long *counts,
                                             unsigned next_level) {
    const bfs_level_ctx L = {offsets, vertices, levels, counts, next_level, true};
    dev_array<unsigned> n = {neighbours};
    bfs_bottom_up(L, n, edges, front, cursor, (unsigned long long *)0);
}

/* Blocks of 256 threads per SM the warpfs level kernel is compiled for. Unbounded, the cache
 * protocol takes about 180 registers a thread: one block (8 warps) per SM. More blocks cap the
 * registers (65536 / (256 × N)) and spill to local memory; on the H100 that made the search
 * slower, not faster (k26, 25% cache: 1 block 5.8 s, 2: 7.6 s, 4: 8.9 s, 8: 73 s; more warps
 * contend more, bench/RESULTS.md). -DBFS_WFS_MIN_BLOCKS=N (WARPFS_NVRTC_OPTIONS) overrides. */
#ifndef BFS_WFS_MIN_BLOCKS
#define BFS_WFS_MIN_BLOCKS 1
#endif

/* One top-down level over the CSR file through warpfs: offsets in device memory
 * (bfs_load_offsets), neighbours (m u32 at byte neighbours_at of file handle fh) through a
 * wfs_array; adds the bytes of neighbour lists read in place from the file's view to *moved.
 * Launch with 256 threads a block. */
extern "C" __global__ void __launch_bounds__(256, BFS_WFS_MIN_BLOCKS)
    bfs_level_wfs(const wfs_ctx_t *ctx, unsigned fh, const unsigned long long *offsets, unsigned long long vertices,
                  unsigned long long neighbours_at, unsigned long long edges, unsigned *levels,
                  unsigned long long *cursor, unsigned long long *counts, unsigned next_level,
                  unsigned long long *moved, bfs_split *split, unsigned scout) {
    const bfs_level_ctx L = {offsets, vertices, levels, counts, next_level, scout != 0};
    const wfs_array<unsigned> n = wfs_array_make<unsigned>(ctx, fh, neighbours_at, edges);
    bfs_expand<BFS_FIRST_PINS != 0>(L, n, edges, cursor, BFS_SPLIT != 0 ? split : 0, moved);
}

/* One bottom-up level over the CSR file through warpfs (as bfs_level_wfs; front: the
 * frontier's bits). */
extern "C" __global__ void __launch_bounds__(256, BFS_WFS_MIN_BLOCKS)
    bfs_bottom_up_wfs(const wfs_ctx_t *ctx, unsigned fh, const unsigned long long *offsets,
                      unsigned long long vertices, unsigned long long neighbours_at, unsigned long long edges,
                      unsigned *levels, const unsigned *front, unsigned long long *cursor,
                      unsigned long long *counts, unsigned next_level, unsigned long long *moved) {
    const bfs_level_ctx L = {offsets, vertices, levels, counts, next_level, true};
    const wfs_array<unsigned> n = wfs_array_make<unsigned>(ctx, fh, neighbours_at, edges);
    bfs_bottom_up(L, n, edges, front, cursor, moved);
}

/* The frontier as bits: bit v of `bits` (word v / 32) set where levels[v] == level. One ballot
 * per 32 vertices; launch with a multiple of 32 threads per block. */
extern "C" __global__ void bfs_frontier_bits(const unsigned *levels, unsigned long long vertices, unsigned level,
                                             unsigned *bits) {
    const unsigned long long stride = (unsigned long long)gridDim.x * blockDim.x;
    for (unsigned long long base = (unsigned long long)blockIdx.x * blockDim.x; base < vertices; base += stride) {
        const unsigned long long v = base + threadIdx.x;
        const unsigned b = __ballot_sync(0xFFFFFFFFu, v < vertices && levels[v] == level);
        if ((threadIdx.x & 31) == 0 && v < vertices) bits[v >> 5] = b;
    }
}

/* Copies the offsets (count u64 at byte offsets_at of fh) into dst through a wfs_array: each
 * warp its slice, a page at a time (pin_stream: with a file view, pages the cache does not hold
 * are read in place and not loaded), 16 bytes a lane, four loads in flight. Adds the bytes
 * read in place to *moved. Launch with 256 threads a block. */
extern "C" __global__ void __launch_bounds__(256, BFS_WFS_MIN_BLOCKS)
    bfs_load_offsets(const wfs_ctx_t *ctx, unsigned fh, unsigned long long offsets_at, unsigned long long count,
                     unsigned long long *dst, unsigned long long *moved) {
    const wfs_array<unsigned long long> o = wfs_array_make<unsigned long long>(ctx, fh, offsets_at, count);
    const unsigned lane = threadIdx.x & 31;
    const unsigned long long warps = (unsigned long long)gridDim.x * (blockDim.x / 32);
    const unsigned long long w = (unsigned long long)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    unsigned long long slice = (count + warps - 1) / warps;
    slice = (slice + 511) & ~511ull;
    const unsigned long long a = w * slice < count ? w * slice : count;
    const unsigned long long b = a + slice < count ? a + slice : count;
    unsigned long long in_place = 0;
    for (unsigned long long j = a; j < b;) {
        const wfs_span<unsigned long long> s = o.pin_stream(j);
        if (s.count == 0) {
            o.unpin(s);
            /* Nothing pinned: element reads, 32 at a time. */
            const unsigned long long n = b - j < 32 ? b - j : 32;
            const unsigned long long x = o[j + (lane < n ? lane : 0)];
            if (lane < n) dst[j + lane] = x;
            j += n;
            continue;
        }
        const unsigned long long n = s.count < b - j ? s.count : b - j;
        const unsigned long long *q = s.p;
        /* A scalar head to a 16-byte boundary of the source, pairs, then the tail. */
        const unsigned long long h = ((reinterpret_cast<unsigned long long>(q) & 15) != 0 || (j & 1) != 0) ? 1 : 0;
        const bool pairs = ((reinterpret_cast<unsigned long long>(q + h) & 15) == 0) && (((j + h) & 1) == 0);
        unsigned long long done = 0;
        if (pairs) {
            if (h != 0 && lane == 0) dst[j] = q[0];
            const uint4 *src = reinterpret_cast<const uint4 *>(q + h);
            uint4 *out = reinterpret_cast<uint4 *>(dst + j + h);
            const unsigned long long np = (n - h) / 2;
            for (unsigned long long k = 0; k < np; k += 32ull * BFS_UNROLL) {
                uint4 x[BFS_UNROLL];
#pragma unroll
                for (unsigned u = 0; u < BFS_UNROLL; ++u) {
                    const unsigned long long i = k + 32ull * u + lane;
                    if (i < np) x[u] = src[i];
                }
#pragma unroll
                for (unsigned u = 0; u < BFS_UNROLL; ++u) {
                    const unsigned long long i = k + 32ull * u + lane;
                    if (i < np) out[i] = x[u];
                }
            }
            done = h + 2 * np;
        }
        for (unsigned long long i = done + lane; i < n; i += 32) dst[j + i] = q[i];
        if (s.in_place()) in_place += sector_bytes(q, n * 8);
        o.unpin(s);
        j += n;
    }
    if (moved != 0 && lane == 0 && in_place != 0) atomicAdd(moved, in_place);
}

/* The file-backed arrays' error count (reads that returned T() instead of data). */
extern "C" __global__ void bfs_wfs_errors(const wfs_ctx_t *ctx, unsigned long long *out) {
    *out = wfs_errors(ctx);
}
