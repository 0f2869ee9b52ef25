// Scores of many queries against a page of rows: a 64 rows x 64 queries tile per
// workgroup, staged through workgroup memory 16 floats of depth at a time, 4x4 per thread.
// Binding 0 (the page's rows) and load_row4 come from the row format (rows_*.wgsl).
@group(0) @binding(1) var<storage, read> factors: array<f32>;
@group(0) @binding(2) var<storage, read> queries: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> qscale: array<f32>;
@group(0) @binding(4) var<storage, read_write> scores: array<f32>;
@group(0) @binding(5) var<storage, read> rowsel: array<u32>;
@group(0) @binding(6) var<uniform> p: Params;

// The page row behind row r of this dispatch (SEL_LIST gathers the listed rows).
fn page_row(r: u32) -> u32 {
    if (p.sel == SEL_LIST) { return rowsel[p.list_at + r]; }
    return r;
}

var<workgroup> xs: array<vec4<f32>, 256>;  // 64 rows x 4 vec4
var<workgroup> ys: array<vec4<f32>, 256>;  // 64 queries x 4 vec4

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32,
        @builtin(workgroup_id) wg: vec3<u32>,
        @builtin(num_workgroups) nwg: vec3<u32>) {
    let r0 = (wg.x + wg.y * nwg.x) * 64u;
    let q0 = wg.z * 64u;
    let tx = li % 16u;  // queries tx, tx+16, tx+32, tx+48
    let ty = li / 16u;  // rows ty, ty+16, ty+32, ty+48
    let load_row = r0 + li / 4u;
    var src_row = 0u;
    if (load_row < p.n_rows) { src_row = page_row(load_row); }
    let load_q = q0 + li / 4u;
    let lc = li % 4u;
    var acc: array<vec4<f32>, 4>;
    for (var k0 = 0u; k0 < p.dim4; k0 += 4u) {
        let kk = k0 + lc;
        var xv = vec4<f32>(0.0);
        var yv = vec4<f32>(0.0);
        if (load_row < p.n_rows && kk < p.dim4) { xv = load_row4(src_row * p.dim4 + kk); }
        if (load_q < p.nq && kk < p.dim4) { yv = queries[load_q * p.dim4 + kk]; }
        xs[li] = xv;
        ys[li] = yv;
        workgroupBarrier();
        for (var c = 0u; c < 4u; c++) {
            let y0 = ys[tx * 4u + c];
            let y1 = ys[(tx + 16u) * 4u + c];
            let y2 = ys[(tx + 32u) * 4u + c];
            let y3 = ys[(tx + 48u) * 4u + c];
            for (var i = 0u; i < 4u; i++) {
                let x = xs[(ty + 16u * i) * 4u + c];
                acc[i] += vec4<f32>(term(x, y0), term(x, y1), term(x, y2), term(x, y3));
            }
        }
        workgroupBarrier();
    }
    for (var i = 0u; i < 4u; i++) {
        let r = r0 + ty + 16u * i;
        for (var j = 0u; j < 4u; j++) {
            let q = q0 + tx + 16u * j;
            if (r < p.n_rows && q < p.nq) {
                var s = acc[i][j];
                if (METRIC == 0u) { s = s * factors[page_row(r)] * qscale[q]; }
                scores[q * p.stride + r] = s;
            }
        }
    }
}
