// Row storage, float16 without shader-f16: the same bytes as rows_f16.wgsl read as u32
// pairs, element 2j in the low half (little endian), widened exactly by unpack2x16float.
@group(0) @binding(0) var<storage, read> rows: array<vec2<u32>>;

fn load_row4(i: u32) -> vec4<f32> {
    let w = rows[i];
    return vec4<f32>(unpack2x16float(w.x), unpack2x16float(w.y));
}
