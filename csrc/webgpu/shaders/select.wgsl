// Partial top-k: one workgroup sorts one segment of 2048 scores of one query by
// (score, ordinal) with a bitonic network in workgroup memory and keeps the best p.d.
// p: a = first slot of the page, b = first list of the page, c = lists per query,
//    d = entries kept per list.
@group(0) @binding(0) var<storage, read> scores: array<f32>;
@group(0) @binding(1) var<storage, read> ordinals: array<u32>;
@group(0) @binding(2) var<storage, read_write> cands: array<Cand>;
@group(0) @binding(3) var<storage, read> rowsel: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;

const SEG: u32 = 2048u;
var<workgroup> s_score: array<f32, 2048>;
var<workgroup> s_ord: array<u32, 2048>;
var<workgroup> s_slot: array<u32, 2048>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let seg = wg.x;
    let q = wg.y;
    let pad = worst_score();
    for (var e = 0u; e < 8u; e++) {
        let i = li + e * 256u;
        let r = seg * SEG + i;
        // A row the filter drops is padding: it never enters the top k.
        var live = r < p.n_rows;
        var row = r;
        if (live && p.sel == SEL_LIST) { row = rowsel[p.list_at + r]; }
        if (live && p.sel == SEL_MASK) { live = mask_passes(rowsel[(p.a + r) / 32u], p.a + r); }
        if (live) {
            s_score[i] = scores[q * p.stride + r];
            s_ord[i] = ordinals[row];
            s_slot[i] = p.a + row;
        } else {
            s_score[i] = pad;
            s_ord[i] = NO_ORDINAL;
            s_slot[i] = NO_ORDINAL;
        }
    }
    for (var size = 2u; size <= SEG; size <<= 1u) {
        for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
            workgroupBarrier();
            for (var e = 0u; e < 4u; e++) {
                let t = li + e * 256u;
                let i = 2u * t - (t & (stride - 1u));
                let j = i + stride;
                // Ascending (best first) where bit `size` of i is clear, descending elsewhere.
                let best_first = (i & size) == 0u;
                if (better(s_score[j], s_ord[j], s_score[i], s_ord[i]) == best_first) {
                    let ts = s_score[i]; s_score[i] = s_score[j]; s_score[j] = ts;
                    let to = s_ord[i]; s_ord[i] = s_ord[j]; s_ord[j] = to;
                    let tl = s_slot[i]; s_slot[i] = s_slot[j]; s_slot[j] = tl;
                }
            }
        }
    }
    workgroupBarrier();
    let base = (q * p.c + p.b + seg) * p.d;
    for (var i = li; i < p.d; i += 256u) {
        cands[base + i] = Cand(s_score[i], s_ord[i], s_slot[i]);
    }
}
