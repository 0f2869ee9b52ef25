// Row storage, float32: 4 elements per vec4 (prepended to the scoring kernels, which read
// rows only through load_row4). Index i is the i-th group of 4 elements of the page.
@group(0) @binding(0) var<storage, read> rows: array<vec4<f32>>;

fn load_row4(i: u32) -> vec4<f32> {
    return rows[i];
}
