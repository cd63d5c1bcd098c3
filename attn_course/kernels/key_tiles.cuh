// What both attention kernels share (the launcher puts this file in front of each).

__device__ __forceinline__ float negative_infinity() { return __int_as_float(0xff800000); }

// The key tiles [first, last) that the query tile `q_tile` (queries q_tile*tile ..) visits:
// with a tile list, its entries tile_ptr[q_tile] .. tile_ptr[q_tile + 1] of tile_idx;
// otherwise the range of tiles holding some key j that the offset rule lo <= i - j <= hi
// allows for some query i of the tile (causal: none above the diagonal).
__device__ __forceinline__ void key_tile_range(int q_tile, int tile, int L, int S, int lo, int hi,
                                               int use_tile_list, const int* tile_ptr, int& first, int& last) {
    if (use_tile_list) {
        first = tile_ptr[q_tile];
        last = tile_ptr[q_tile + 1];
        return;
    }
    const int q0 = q_tile * tile, q_last = min(q0 + tile, L) - 1;
    const long long j_min = max(0LL, (long long)q0 - hi);                   // smallest key any row may see
    const long long j_max = min((long long)S - 1, (long long)q_last - lo);  // largest
    first = (int)(j_min / tile);
    last = j_max < j_min ? first : (int)(j_max / tile) + 1;
}
