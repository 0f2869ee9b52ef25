// Parameters of every kernel dispatch, read by the MSL kernels and by the C++ host code.
// Plain `uint` fields only, so the layout is the same in both languages. CMake pastes this
// file into the embedded kernel source in place of its #include line.
enum : uint {
    kCosine = 0,
    kDotProduct = 1,
    kEuclidean = 2,
    kThreads = 256,      // threads per threadgroup of every kernel
    kMaxSegment = 2048,  // rows one threadgroup sorts in threadgroup memory (24 KiB)
    kNoSlot = 0xffffffffu,
    // Params::sel, which rows of a chunk a filtered search looks at (the RowSel buffer):
    kSelAll = 0,   // every row; RowSel unused
    kSelMask = 1,  // every row scored; row r may enter when bit r % 32 of word r / 32 is set
    kSelList = 2,  // n_rows listed rows: row r of the dispatch is chunk row RowSel[r]
};

struct Params {
    uint n_rows;     // rows scored
    uint dim;        // floats per row and per query
    uint nq;         // queries in this chunk
    uint stride;     // floats between two queries' score rows (>= n_rows)
    uint metric;     // kCosine, kDotProduct or kEuclidean
    uint k;          // results per query
    uint seg;        // select_segments: rows per segment (a power of two <= kMaxSegment)
    uint len_in;     // entries per input list (select_segments: kept per segment)
    uint len_out;    // merge_lists: entries per output list
    uint lists_in;   // lists per query read (select_segments: lists written)
    uint lists_out;  // merge_lists: lists per query written
    uint sel;        // kSelAll, kSelMask or kSelList
};
