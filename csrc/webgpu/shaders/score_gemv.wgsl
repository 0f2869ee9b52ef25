// Scores of up to 8 queries against a page of rows: memory bound, so 8 lanes share a row
// and read it in runs of 8 groups of 4 elements (128 bytes of float32, 64 of 16-bit rows);
// each lane keeps one partial sum per query.
// Binding 0 (the page's rows) and load_row4 come from the row format (rows_*.wgsl).
@group(0) @binding(1) var<storage, read> factors: array<f32>;
@group(0) @binding(2) var<storage, read> queries: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> qscale: array<f32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;
@group(0) @binding(5) var<storage, read> rowsel: array<u32>;
@group(0) @binding(6) var<uniform> p: Params;

override QN: u32 = 1u;  // queries computed (<= 8); p.nq <= QN are written
const LANES: u32 = 8u;
const ROWS_PER_GROUP: u32 = 32u;
var<workgroup> partial: array<f32, 2048>;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32,
        @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let block = wg.x + wg.y * nwg.x;
    let lane = li % LANES;
    let local_row = li / LANES;
    let r = block * ROWS_PER_GROUP + local_row;
    var acc = array<f32, 8>(0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0);
    // SEL_LIST scores the listed rows only; SEL_MASK skips reading rows that cannot enter.
    var row = r;
    var live = r < p.n_rows;
    if (live && p.sel == SEL_LIST) { row = rowsel[p.list_at + r]; }
    if (live && p.sel == SEL_MASK) { live = mask_passes(rowsel[(p.a + r) / 32u], p.a + r); }
    if (live) {
        let base = row * p.dim4;
        for (var j = lane; j < p.dim4; j += LANES) {
            let x = load_row4(base + j);
            for (var q = 0u; q < QN; q++) {
                acc[q] += term(x, queries[q * p.dim4 + j]);
            }
        }
    }
    for (var q = 0u; q < QN; q++) {
        partial[li * QN + q] = acc[q];
    }
    workgroupBarrier();
    // Thread (row, lane) finishes query `lane` of its row from the 8 lanes' sums.
    let q = lane;
    if (r < p.n_rows && q < p.nq && q < QN) {
        var s = 0.0;
        for (var l = 0u; l < LANES; l++) {
            s += partial[(local_row * LANES + l) * QN + q];
        }
        if (METRIC == 0u) { s = s * factors[row] * qscale[q]; }
        scores[q * p.stride + r] = s;
    }
}
