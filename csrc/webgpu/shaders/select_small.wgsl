// Partial top-k for k <= 32: every thread scans 64 rows of one query (strided by the
// workgroup, so reads coalesce) and keeps its best k in a sorted private list. For random
// data insertions are rare, so this costs one compare per row and no barriers at all.
// p: a = first slot of the page, b = first list of the page, c = lists per query, d = k.
@group(0) @binding(0) var<storage, read> scores: array<f32>;
@group(0) @binding(1) var<storage, read> ordinals: array<u32>;
@group(0) @binding(2) var<storage, read_write> cands: array<Cand>;
@group(0) @binding(3) var<storage, read> rowsel: array<u32>;
@group(0) @binding(4) var<uniform> p: Params;

const GROUP: u32 = 64u;
const ROWS_PER_THREAD: u32 = 64u;

@compute @workgroup_size(64)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let q = wg.y;
    let k = p.d;
    var ks: array<f32, 32>;
    var ko: array<u32, 32>;
    var kr: array<u32, 32>;
    var count = 0u;
    let first = wg.x * GROUP * ROWS_PER_THREAD + li;
    for (var i = 0u; i < ROWS_PER_THREAD; i++) {
        let r = first + i * GROUP;
        if (r >= p.n_rows) { break; }
        // Rows the filter drops never enter; listed rows map back to their page row.
        if (p.sel == SEL_MASK && !mask_passes(rowsel[(p.a + r) / 32u], p.a + r)) { continue; }
        var row = r;
        if (p.sel == SEL_LIST) { row = rowsel[p.list_at + r]; }
        let s = scores[q * p.stride + r];
        if (count == k) {
            // Strictly worse than the kept worst: out without reading the ordinal.
            let w = ks[k - 1u];
            if ((METRIC == 2u && s > w) || (METRIC != 2u && s < w)) { continue; }
        }
        let o = ordinals[row];
        if (count == k && !better(s, o, ks[k - 1u], ko[k - 1u])) { continue; }
        var pos = count;
        if (count < k) { count += 1u; } else { pos = k - 1u; }
        while (pos > 0u && better(s, o, ks[pos - 1u], ko[pos - 1u])) {
            ks[pos] = ks[pos - 1u];
            ko[pos] = ko[pos - 1u];
            kr[pos] = kr[pos - 1u];
            pos -= 1u;
        }
        ks[pos] = s;
        ko[pos] = o;
        kr[pos] = row;
    }
    let base = (q * p.c + p.b + wg.x * GROUP + li) * k;
    let pad = worst_score();
    for (var j = 0u; j < k; j++) {
        if (j < count) {
            cands[base + j] = Cand(ks[j], ko[j], p.a + kr[j]);
        } else {
            cands[base + j] = Cand(pad, NO_ORDINAL, NO_ORDINAL);
        }
    }
}
