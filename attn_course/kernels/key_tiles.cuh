// What the attention kernels share, forward and backward (the launchers put this file in front of each).

__device__ __forceinline__ float negative_infinity() { return __int_as_float(0xff800000); }

// A row's log-sum-exp in natural log, from the running maximum m (log2 domain: scores times
// scale * log2(e)) and sum l = sum_j exp2(x_j - m): lse = ln(2) * (m + log2(l)); -inf for a row
// that saw no allowed key (l = 0), as tiled_attention(..., return_lse=True) gives.
__device__ __forceinline__ void store_log_sum_exp(float* where, float m, float l) {
    *where = l > 0.f ? 0.69314718055994531f * (m + __log2f(l)) : negative_infinity();
}

// The key tiles [first, last) that the query tile `q_tile` (queries q_tile*tile ..) visits:
// with a tile list, its entries tile_ptr[q_tile] .. tile_ptr[q_tile + 1] of tile_idx;
// otherwise the range of tiles holding some key j that the offset rule lo <= i - j <= hi
// allows for some query i of the tile (causal: none above the diagonal).
// Query tiles hold `query_tile` rows, key tiles `tile` keys (a tile list needs the two equal).
__device__ __forceinline__ void key_tile_range(int q_tile, int query_tile, int tile, int L, int S, int lo, int hi,
                                               int use_tile_list, const int* tile_ptr, int& first, int& last) {
    if (use_tile_list) {
        first = tile_ptr[q_tile];
        last = tile_ptr[q_tile + 1];
        return;
    }
    const int q0 = q_tile * query_tile, q_last = min(q0 + query_tile, L) - 1;
    const long long j_min = max(0LL, (long long)q0 - hi);                   // smallest key any row may see
    const long long j_max = min((long long)S - 1, (long long)q_last - lo);  // largest
    first = (int)(j_min / tile);
    last = j_max < j_min ? first : (int)(j_max / tile) + 1;
}

// The mirror rule, for the backward's walk over queries: the query tiles [first, last) (tiles of
// `tile` queries) holding some query i that the offset rule lo <= i - j <= hi allows for some key j of
// the key tile `k_tile` (keys k_tile*tile ..).
__device__ __forceinline__ void query_tile_range(int k_tile, int tile, int L, int S, int lo, int hi, int& first,
                                                 int& last) {
    const int k0 = k_tile * tile, k_last = min(k0 + tile, S) - 1;
    const long long i_min = max(0LL, (long long)k0 + lo);                   // smallest query any key may meet
    const long long i_max = min((long long)L - 1, (long long)k_last + hi);  // largest
    first = (int)(i_min / tile);
    last = i_max < i_min ? first : (int)(i_max / tile) + 1;
}
