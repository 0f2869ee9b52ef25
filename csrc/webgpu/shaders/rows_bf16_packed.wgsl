// Row storage, bfloat16 (WGSL has no bf16 type): u32 pairs, element 2j in the low half. A
// bfloat16 is the top half of a float32 (dtype.hpp's bf16_to_float), so shifting it into
// place widens it exactly.
@group(0) @binding(0) var<storage, read> rows: array<vec2<u32>>;

fn load_row4(i: u32) -> vec4<f32> {
    let w = rows[i];
    return vec4<f32>(bitcast<f32>(w.x << 16u), bitcast<f32>(w.x & 0xffff0000u),
                     bitcast<f32>(w.y << 16u), bitcast<f32>(w.y & 0xffff0000u));
}
