// warpfs WGSL prelude — files for WGSL compute shaders through fault and replay.
//
// The host (warpfs::backend::wgpu) prepends this file to the user's shader. It owns bind group 0;
// the user's own buffers live in group 1 (and up). A shader never waits: a load whose page is
// not resident in the GPU page cache returns 0, records a request for the page (once per page per
// round) and marks the invocation as missed. The invocation finishes its pass anyway (so that it
// requests every page it lacks in one round), then calls `wfs_finish(item)`, which re-queues the
// item when anything missed. The host serves the requested pages through the warpfs daemon,
// uploads them into the cache buffer and re-dispatches only the unfinished items.
//
// Contract for user code: an item's results are written only after `wfs_finish(item)` returned
// true (a replayed item runs again from the start), and `wfs_finish` is called once per item.
//
//   @compute @workgroup_size(64)
//   fn main(@builtin(global_invocation_id) gid: vec3<u32>,
//           @builtin(num_workgroups) nwg: vec3<u32>) {
//       let item = wfs_item(gid, nwg);
//       if (item == WFS_NONE) { return; }
//       var acc = 0u;
//       for (var i = 0u; i < 1024u; i++) { acc += wfs_word(0u, item * 1024u + i); }
//       if (wfs_finish(item)) { out[item] = acc; }
//   }
//
// The constants and the `WfsRequest` struct mirror crates/warpfs/src/abi.rs; the test
// crates/warpfs/tests/wgpu_abi.rs fails if a size, offset or value drifts.

// ---- wire format (mirror of warpfs::abi) -------------------------------------------------------

const WFS_ABI_VERSION: u32 = 4u;
const WFS_OP_READ: u32 = 1u;

// One request, exactly `warpfs::abi::WfsRequest` (48 bytes). 64-bit fields are (low, high) words.
struct WfsRequest {
    op: u32,
    flags: u32,
    handle: u32,
    // Index of the page-table entry to fill (the "completion" the host answers).
    completion: u32,
    // The round that asked (echoed nowhere; lets the host reject stale records).
    ticket: u32,
    reserved: u32,
    offset: vec2<u32>,
    len: vec2<u32>,
    buf: vec2<u32>,
}

// ---- results of a load --------------------------------------------------------------------------

// The item id `wfs_item` returns to an invocation that has no work.
const WFS_NONE: u32 = 0xffffffffu;
// `wfs_status` after a load: the word was read from the cache.
const WFS_HIT: u32 = 0u;
// `wfs_status` after a load: the page was not resident; 0 was returned and a request recorded.
const WFS_MISS: u32 = 1u;
// `wfs_status` after a load: the word lies at or past the end of the file (or the file index is
// not bound); 0 was returned, nothing was requested.
const WFS_EOF: u32 = 2u;

// Most files one pipeline can bind.
const WFS_MAX_FILES: u32 = 8u;

// Counter words at the start of `wfs_state`.
const WFS_CTR_REQUESTS: u32 = 0u;
const WFS_CTR_DEFERRED: u32 = 1u;
const WFS_CTR_HITS_LO: u32 = 2u;
const WFS_CTR_HITS_HI: u32 = 3u;
const WFS_CTR_MISSES_LO: u32 = 4u;
const WFS_CTR_MISSES_HI: u32 = 5u;
const WFS_CTR_DONE: u32 = 6u;
const WFS_CTR_OVERFLOW: u32 = 7u;
const WFS_COUNTERS: u32 = 16u;

// Written by the host before every dispatch.
struct WfsParams {
    page_shift: u32,
    page_words: u32,
    slots: u32,
    epoch: u32,
    deferred: u32,
    active_count: u32,
    fresh_base: u32,
    fresh_count: u32,
    in_base: u32,
    out_base: u32,
    max_requests: u32,
    file_count: u32,
    ref_base: u32,
    flag_base: u32,
    work_capacity: u32,
    // The entry point's @workgroup_size (x; y = z = 1).
    wg_size: u32,
    // Per file: first page-table entry, pages, size in bytes (low, high).
    files: array<vec4<u32>, 8>,
    // Per file: the warpfs handle; handles[i / 4][i % 4].
    handles: array<vec4<u32>, 2>,
}

@group(0) @binding(0) var<uniform> wfs_params: WfsParams;
// The GPU page cache: `slots` pages of `page_words` words.
@group(0) @binding(1) var<storage, read> wfs_cache: array<u32>;
// The page table: per file page, 1 + the cache slot holding it, or 0 when not resident.
@group(0) @binding(2) var<storage, read> wfs_table: array<u32>;
// Counters, then a reference word per slot (CLOCK), then a request flag per page-table entry
// (the epoch of the round that last requested the page: one request per page per round).
@group(0) @binding(3) var<storage, read_write> wfs_state: array<atomic<u32>>;
// Page requests of this round, in the wire format.
@group(0) @binding(4) var<storage, read_write> wfs_requests: array<WfsRequest>;
// Work lists: the items deferred by the last round (read) and by this round (written).
@group(0) @binding(5) var<storage, read_write> wfs_work: array<u32>;

var<private> wfs_missed: bool = false;
var<private> wfs_hits: u32 = 0u;
var<private> wfs_misses: u32 = 0u;
// Outcome of the last load: WFS_HIT, WFS_MISS or WFS_EOF.
var<private> wfs_status: u32 = 0u;

fn wfs_push_deferred(item: u32) {
    let at = atomicAdd(&wfs_state[WFS_CTR_DEFERRED], 1u);
    if (at < wfs_params.work_capacity) {
        wfs_work[wfs_params.out_base + at] = item;
    } else {
        atomicAdd(&wfs_state[WFS_CTR_OVERFLOW], 1u);
    }
}

// The item this invocation works on this round, or WFS_NONE. Items deferred by the last round
// come first (those the host parks this round are re-queued here untouched), then fresh items.
fn wfs_item(gid: vec3<u32>, nwg: vec3<u32>) -> u32 {
    let width = nwg.x * wfs_params.wg_size;
    let i = gid.x + gid.y * width;
    if (i < wfs_params.deferred) {
        let item = wfs_work[wfs_params.in_base + i];
        if (i >= wfs_params.active_count) {
            wfs_push_deferred(item);
            return WFS_NONE;
        }
        return item;
    }
    let j = i - wfs_params.deferred;
    if (j < wfs_params.fresh_count) {
        return wfs_params.fresh_base + j;
    }
    return WFS_NONE;
}

fn wfs_request(file: u32, vpage: u32, page: u32) {
    let flag = &wfs_state[wfs_params.flag_base + vpage];
    let epoch = wfs_params.epoch;
    if (atomicLoad(flag) == epoch) {
        return;
    }
    if (atomicExchange(flag, epoch) == epoch) {
        return;
    }
    let at = atomicAdd(&wfs_state[WFS_CTR_REQUESTS], 1u);
    if (at >= wfs_params.max_requests) {
        return; // dropped: the page is asked for again next round
    }
    let shift = wfs_params.page_shift;
    var r: WfsRequest;
    r.op = WFS_OP_READ;
    r.flags = 0u;
    r.handle = wfs_params.handles[file / 4u][file % 4u];
    r.completion = vpage;
    r.ticket = epoch;
    r.reserved = 0u;
    r.offset = vec2<u32>(page << shift, page >> (32u - shift));
    r.len = vec2<u32>(1u << shift, 0u);
    r.buf = vec2<u32>(0u, 0u);
    wfs_requests[at] = r;
}

// Word `word` (0-based, 4-byte units) of page `page` of bound file `file`. Returns 0 on a miss
// (request recorded) or past the end of the file; `wfs_status` says which.
fn wfs_page_word(file: u32, page: u32, word: u32) -> u32 {
    if (file >= wfs_params.file_count || word >= wfs_params.page_words) {
        wfs_status = WFS_EOF;
        return 0u;
    }
    let f = wfs_params.files[file];
    if (page >= f.y) {
        wfs_status = WFS_EOF;
        return 0u;
    }
    if (page + 1u == f.y) {
        let page_bytes = 1u << wfs_params.page_shift;
        let tail = f.z & (page_bytes - 1u);
        if (tail != 0u && word * 4u >= tail) {
            wfs_status = WFS_EOF;
            return 0u;
        }
    }
    let vpage = f.x + page;
    let entry = wfs_table[vpage];
    if (entry == 0u) {
        wfs_missed = true;
        wfs_misses += 1u;
        wfs_status = WFS_MISS;
        wfs_request(file, vpage, page);
        return 0u;
    }
    let slot = entry - 1u;
    let rf = &wfs_state[wfs_params.ref_base + slot];
    if (atomicLoad(rf) == 0u) {
        atomicStore(rf, 1u);
    }
    wfs_hits += 1u;
    wfs_status = WFS_HIT;
    return wfs_cache[slot * wfs_params.page_words + word];
}

// Word `word` (4-byte units from the start of the file; files up to 16 GiB) of file `file`.
// Bytes past the end of the file inside the last word read as 0.
fn wfs_word(file: u32, word: u32) -> u32 {
    let per_page_shift = wfs_params.page_shift - 2u;
    return wfs_page_word(file, word >> per_page_shift, word & (wfs_params.page_words - 1u));
}

// Byte `byte` (files up to 4 GiB) of file `file`, in the low 8 bits; `wfs_status` is WFS_EOF
// for a byte at or past the end of the file even inside a partly valid last word.
fn wfs_byte(file: u32, byte: u32) -> u32 {
    let w = wfs_word(file, byte >> 2u);
    if (wfs_status != WFS_HIT) {
        return 0u;
    }
    let f = wfs_params.files[file];
    let page_bytes = 1u << wfs_params.page_shift;
    let tail = f.z & (page_bytes - 1u);
    if ((byte >> wfs_params.page_shift) + 1u == f.y && tail != 0u
        && (byte & (page_bytes - 1u)) >= tail) {
        wfs_status = WFS_EOF;
        return 0u;
    }
    return (w >> ((byte & 3u) * 8u)) & 0xffu;
}

// Size in bytes of bound file `file` (low, high words).
fn wfs_file_size(file: u32) -> vec2<u32> {
    if (file >= wfs_params.file_count) {
        return vec2<u32>(0u, 0u);
    }
    return wfs_params.files[file].zw;
}

// True when a load of this invocation missed so far this round.
fn wfs_any_miss() -> bool {
    return wfs_missed;
}

fn wfs_add64(lo: u32, hi: u32, v: u32) {
    if (v == 0u) {
        return;
    }
    let old = atomicAdd(&wfs_state[lo], v);
    if (old + v < old) {
        atomicAdd(&wfs_state[hi], 1u);
    }
}

// Ends this invocation's pass over `item`: returns true when every load hit (the item is done:
// write its results now), false when it missed (the item was re-queued for the next round).
fn wfs_finish(item: u32) -> bool {
    wfs_add64(WFS_CTR_HITS_LO, WFS_CTR_HITS_HI, wfs_hits);
    wfs_add64(WFS_CTR_MISSES_LO, WFS_CTR_MISSES_HI, wfs_misses);
    wfs_hits = 0u;
    wfs_misses = 0u;
    if (wfs_missed) {
        wfs_missed = false;
        wfs_push_deferred(item);
        return false;
    }
    atomicAdd(&wfs_state[WFS_CTR_DONE], 1u);
    return true;
}
