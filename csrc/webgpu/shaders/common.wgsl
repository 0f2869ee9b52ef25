// Prepended to every kernel: the per-dispatch parameters and the candidate record.
struct Params {
    n_rows: u32,  // rows in this page
    dim4: u32,    // vec4s per row (dimension padded to a multiple of 4 with zeros)
    nq: u32,      // queries in this dispatch
    stride: u32,  // floats between two queries' score rows
    a: u32,
    b: u32,
    c: u32,
    d: u32,
    sel: u32,   // which rows take part: SEL_ALL, SEL_MASK or SEL_LIST (see `rowsel` below)
    list_at: u32, // SEL_LIST: this page's first entry in the list
    e: u32,
    f: u32,
}

// Filtered searches bind `rowsel`: SEL_MASK, one bit per slot of the store (bit s % 32 of
// word s / 32, the slot filter's 64-bit words read as pairs); SEL_LIST, the page-local rows
// that pass, so that row r of a dispatch is rowsel[list_at + r] of the page.
const SEL_ALL: u32 = 0u;
const SEL_MASK: u32 = 1u;
const SEL_LIST: u32 = 2u;

fn mask_passes(word: u32, slot: u32) -> bool {
    return ((word >> (slot & 31u)) & 1u) != 0u;
}

struct Cand {
    score: f32,
    ordinal: u32,
    slot: u32,
}

// 0 cosine, 1 dot product, 2 Euclidean (squared distance).
override METRIC: u32 = 0u;

// Padding entries rank after every real one: worst score and an ordinal no row has.
const NO_ORDINAL: u32 = 0xffffffffu;
// Read at run time so that no constant expression has to hold an infinity.
var<private> INF_BITS: u32 = 0x7f800000u;

fn worst_score() -> f32 {
    let inf = bitcast<f32>(INF_BITS);
    if (METRIC == 2u) { return inf; }
    return -inf;
}

// a ranks before b: better score, then the smaller ordinal (the engine contract).
fn better(a_score: f32, a_ord: u32, b_score: f32, b_ord: u32) -> bool {
    if (a_score != b_score) {
        if (METRIC == 2u) { return a_score < b_score; }
        return a_score > b_score;
    }
    return a_ord < b_ord;
}

fn term(x: vec4<f32>, y: vec4<f32>) -> f32 {
    if (METRIC == 2u) {
        let d = x - y;
        return dot(d, d);
    }
    return dot(x, y);
}
