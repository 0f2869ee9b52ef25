// Row storage, float16 read natively (the device has shader-f16): 4 halves per 8 bytes,
// widened exactly to float32 so that scores accumulate in float32 over the stored values.
enable f16;

@group(0) @binding(0) var<storage, read> rows: array<vec4<f16>>;

fn load_row4(i: u32) -> vec4<f32> {
    return vec4<f32>(rows[i]);
}
