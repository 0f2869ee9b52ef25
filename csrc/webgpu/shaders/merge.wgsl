// Merges sorted candidate lists pairwise (list 2o with 2o+1), keeping the best p.b of each
// pair. Every thread places one input entry by binary search in the other list, so the
// pass needs no workgroup memory and works for any k. Entries are unique by ordinal except
// padding, which the "A before B on equality" rule keeps in distinct places.
// p: a = input list length, b = output list length, c = input lists per query,
//    d = output lists per query.
@group(0) @binding(0) var<storage, read> src: array<Cand>;
@group(0) @binding(1) var<storage, read_write> dst: array<Cand>;
@group(0) @binding(2) var<uniform> p: Params;

@compute @workgroup_size(256)
fn main(@builtin(local_invocation_index) li: u32, @builtin(workgroup_id) wg: vec3<u32>) {
    let e = wg.x * 256u + li;
    let o = wg.y;
    let q = wg.z;
    let len_in = p.a;
    if (e >= 2u * len_in) { return; }
    let la = 2u * o;
    let lb = la + 1u;
    let a_base = (q * p.c + la) * len_in;
    let b_base = (q * p.c + lb) * len_in;
    let out_base = (q * p.d + o) * p.b;
    if (e < len_in) {
        let item = src[a_base + e];
        var lo = 0u;
        if (lb < p.c) {
            // Entries of B strictly before item.
            var hi = len_in;
            while (lo < hi) {
                let mid = (lo + hi) / 2u;
                let other = src[b_base + mid];
                if (better(other.score, other.ordinal, item.score, item.ordinal)) { lo = mid + 1u; } else { hi = mid; }
            }
        }
        let rank = e + lo;
        if (rank < p.b) { dst[out_base + rank] = item; }
    } else if (lb >= p.c) {
        // A has no partner: pad the rest of the longer output list.
        if (e < p.b) { dst[out_base + e] = Cand(worst_score(), NO_ORDINAL, NO_ORDINAL); }
    } else {
        let j = e - len_in;
        let item = src[b_base + j];
        // Entries of A not after item.
        var lo = 0u;
        var hi = len_in;
        while (lo < hi) {
            let mid = (lo + hi) / 2u;
            let other = src[a_base + mid];
            if (!better(item.score, item.ordinal, other.score, other.ordinal)) { lo = mid + 1u; } else { hi = mid; }
        }
        let rank = j + lo;
        if (rank < p.b) { dst[out_base + rank] = item; }
    }
}
