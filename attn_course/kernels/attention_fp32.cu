// Fused attention in float32 on the GPU's CUDA cores (no tensor cores).
//
// One thread block computes the output of 64 queries of one (batch, head):
//
//     out[i] = sum_j softmax_j(q[i] . k[j] * scale) v[j]
//
// without ever storing the (L, S) score matrix. It walks over the keys in
// tiles of 64 (the "online softmax" of lessons 13 and 15):
//
//   for each key tile:
//     1. copy the tile of K and V from global memory into shared memory;
//     2. S = Q K^T for this 64 x 64 tile (each thread: a 4 x 4 piece);
//     3. update the running row maximum m and the running sum l, rescale the
//        partial output by exp(m_old - m_new), turn S into P = exp(S - m_new);
//     4. O += P V (each thread: 4 rows x D/16 columns of O);
//   finally out = O / l.
//
// The 256 threads of a block form a 16 x 16 grid: thread (ty, tx) owns query
// rows 4*ty .. 4*ty+3 of the tile; in step 2 it owns key columns 4*tx .. 4*tx+3,
// in step 4 output columns 4*tx .. 4*tx+3 (and 64 + 4*tx .. for D = 128).
// The 16 threads that share a row (same ty) sit in one half-warp, so row
// maxima and sums are reduced with warp shuffles, without shared memory.
//
// Which keys a query may see:
//   * dense: every key j < S;
//   * an offset rule lo <= i - j <= hi (causal: 0 <= i - j; a sliding window
//     of width w: -w <= i - j <= w); tiles entirely outside are never visited;
//   * block-sparse: a list of key tiles per query tile (CSR: tile_ptr, tile_idx; one list per head
//     when the layout has a pattern per head),
//     with the offset rule applied inside the listed tiles.
// The score is computed in the log2 domain (scale_log2 = scale * log2(e)) so
// that exp2f, one hardware instruction, replaces expf.

#define TILE 64          // queries per block and keys per tile
#define THREADS 256      // a 16 x 16 grid of threads
#define PAD 4            // floats added to each shared row: keeps float4 alignment, spreads banks

// Copy rows [row0, row0 + 64) of a (rows, D) matrix into shared memory TRANSPOSED:
// dst[c][r] = src[row0 + r][c]; rows past `rows` become zeros.
// Thread t reads a float4 of row (t % 64), so a warp's shared stores hit 32
// consecutive addresses of one row of dst: no bank conflicts.
template <int D>
__device__ __forceinline__ void load_transposed(float (*dst)[TILE + PAD], const float* src, int row0, int rows) {
    const int r = threadIdx.x % TILE;
    for (int c = 4 * (threadIdx.x / TILE); c < D; c += 4 * (THREADS / TILE)) {
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row0 + r < rows) x = *reinterpret_cast<const float4*>(src + (size_t)(row0 + r) * D + c);
        dst[c + 0][r] = x.x;
        dst[c + 1][r] = x.y;
        dst[c + 2][r] = x.z;
        dst[c + 3][r] = x.w;
    }
}

// Copy rows [row0, row0 + 64) of a (rows, D) matrix into shared memory as they are
// (coalesced float4 loads); rows past `rows` become zeros.
template <int D>
__device__ __forceinline__ void load_rows(float (*dst)[D], const float* src, int row0, int rows) {
    for (int e = 4 * threadIdx.x; e < TILE * D; e += 4 * THREADS) {
        const int r = e / D, c = e % D;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row0 + r < rows) x = *reinterpret_cast<const float4*>(src + (size_t)(row0 + r) * D + c);
        *reinterpret_cast<float4*>(&dst[r][c]) = x;
    }
}

template <int D>
__global__ void __launch_bounds__(THREADS) attention_fp32(
    const float* __restrict__ q,  // (BH, L, D)
    const float* __restrict__ k,  // (BH, S, D)
    const float* __restrict__ v,  // (BH, S, D)
    float* __restrict__ out,      // (BH, L, D)
    float* __restrict__ lse,      // (BH, L) natural-log log-sum-exp of each row, or null: not wanted
    int L, int S, float scale_log2,
    int lo, int hi,               // key j is allowed for query i when lo <= i - j <= hi
    int use_tile_list,            // 0: every key tile the offset rule allows; 1: the CSR lists (grid: see below)
    const int* __restrict__ tile_ptr, const int* __restrict__ tile_idx) {
    constexpr int OUT_GROUPS = D / 64;  // float4 column groups of O per thread: 1 (D=64) or 2 (D=128)

    // Shared memory, carved from the dynamic allocation (about 68 KB for D = 64).
    extern __shared__ float4 shared_raw[];
    float(*Qt)[TILE + PAD] = reinterpret_cast<float(*)[TILE + PAD]>(shared_raw);  // (D, 64): Q transposed
    float(*Kt)[TILE + PAD] = Qt + D;                                               // (D, 64): K transposed
    float(*P)[TILE + PAD] = Kt + D;                                                // (64 keys, 64 queries)
    float(*Vs)[D] = reinterpret_cast<float(*)[D]>(P + TILE);                       // (64 keys, D)

    const int bh = blockIdx.z * gridDim.y + blockIdx.y;  // (batch, head): grid (query tiles, BH, 1) or as below
    // Causal and windowed blocks at the end of the sequence have the most tiles: start them first.
    const int q_tile = gridDim.x - 1 - blockIdx.x;
    const int q0 = q_tile * TILE;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    q += (size_t)bh * L * D;
    k += (size_t)bh * S * D;
    v += (size_t)bh * S * D;
    out += (size_t)bh * L * D;
    if (lse != nullptr) lse += (size_t)bh * L;

    // With tile lists the grid is (query tiles, layout heads h, BH / h): a layout per head gives each head
    // its own row pointers, one per query tile, and the head is blockIdx.y (h = 1: one layout for all).
    if (use_tile_list) tile_ptr += blockIdx.y * gridDim.x;
    int first, last;  // the key tiles to visit (key_tiles.cuh)
    key_tile_range(q_tile, TILE, TILE, L, S, lo, hi, use_tile_list, tile_ptr, first, last);

    load_transposed<D>(Qt, q, q0, L);

    float o[4][4 * OUT_GROUPS];  // this thread's rows x columns of the running output
    float m[4], l[4];            // running maximum (log2 domain) and running sum, per row
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        m[i] = negative_infinity();
        l[i] = 0.f;
#pragma unroll
        for (int c = 0; c < 4 * OUT_GROUPS; ++c) o[i][c] = 0.f;
    }

    for (int t = first; t < last; ++t) {
        const int k_tile = use_tile_list ? tile_idx[t] : t;
        const int k0 = k_tile * TILE;
        __syncthreads();  // every thread is done with the previous tile's Kt, P and Vs
        load_transposed<D>(Kt, k, k0, S);
        load_rows<D>(Vs, v, k0, S);
        __syncthreads();

        // 2. Scores for rows 4ty.., keys 4tx..: two float4 reads from shared memory feed 16 FMAs.
        float s[4][4] = {};
#pragma unroll 8
        for (int c = 0; c < D; ++c) {
            const float4 a = *reinterpret_cast<const float4*>(&Qt[c][4 * ty]);
            const float4 b = *reinterpret_cast<const float4*>(&Kt[c][4 * tx]);
            const float av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
            for (int i = 0; i < 4; ++i)
#pragma unroll
                for (int j = 0; j < 4; ++j) s[i][j] = fmaf(av[i], bv[j], s[i][j]);
        }

        // Does any pair of this tile need the element test (tile edges, offset rule)?
        const int tile_lo = q0 - (k0 + TILE - 1), tile_hi = (q0 + TILE - 1) - k0;  // range of i - j
        const bool check = k0 + TILE > S || tile_lo < lo || tile_hi > hi;

        // 3. Online softmax, one row at a time.
#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int row = q0 + 4 * ty + i;
            float row_max = negative_infinity();
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                float x = s[i][j] * scale_log2;
                if (check) {
                    const int col = k0 + 4 * tx + j;
                    if (col >= S || row - col < lo || row - col > hi) x = negative_infinity();
                }
                s[i][j] = x;
                row_max = fmaxf(row_max, x);
            }
            // The 16 threads with this ty are lanes 0-15 or 16-31 of one warp.
#pragma unroll
            for (int offset = 8; offset > 0; offset >>= 1)
                row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, offset));
            const float m_new = fmaxf(m[i], row_max);
            // A row that has seen no allowed key yet keeps m = -inf: subtract 0 so that
            // exp2(-inf - 0) = 0 instead of exp2(-inf + inf) = NaN.
            const float m_use = m_new == negative_infinity() ? 0.f : m_new;
            const float rescale = exp2f(m[i] - m_use);
            float row_sum = 0.f;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                s[i][j] = exp2f(s[i][j] - m_use);
                row_sum += s[i][j];
            }
#pragma unroll
            for (int offset = 8; offset > 0; offset >>= 1)
                row_sum += __shfl_xor_sync(0xffffffffu, row_sum, offset);
            l[i] = l[i] * rescale + row_sum;
            m[i] = m_new;
#pragma unroll
            for (int c = 0; c < 4 * OUT_GROUPS; ++c) o[i][c] *= rescale;
        }

        // P goes to shared memory, keys along rows, so step 4 reads 4 queries with one float4.
#pragma unroll
        for (int j = 0; j < 4; ++j)
            *reinterpret_cast<float4*>(&P[4 * tx + j][4 * ty]) = make_float4(s[0][j], s[1][j], s[2][j], s[3][j]);
        __syncthreads();

        // 4. O += P V over the 64 keys of the tile.
#pragma unroll 4
        for (int n = 0; n < TILE; ++n) {
            const float4 p = *reinterpret_cast<const float4*>(&P[n][4 * ty]);
            const float pv[4] = {p.x, p.y, p.z, p.w};
#pragma unroll
            for (int g = 0; g < OUT_GROUPS; ++g) {
                const float4 b = *reinterpret_cast<const float4*>(&Vs[n][64 * g + 4 * tx]);
                const float bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int c = 0; c < 4; ++c) o[i][4 * g + c] = fmaf(pv[i], bv[c], o[i][4 * g + c]);
            }
        }
    }

    // out = O / l; a row that saw no allowed key (l = 0) gets zeros, never NaN.
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        const int row = q0 + 4 * ty + i;
        if (row >= L) continue;
        const float inv = l[i] > 0.f ? 1.f / l[i] : 0.f;
        if (lse != nullptr && tx == 0) store_log_sum_exp(lse + row, m[i], l[i]);
#pragma unroll
        for (int g = 0; g < OUT_GROUPS; ++g)
            *reinterpret_cast<float4*>(out + (size_t)row * D + 64 * g + 4 * tx) =
                make_float4(o[i][4 * g] * inv, o[i][4 * g + 1] * inv, o[i][4 * g + 2] * inv, o[i][4 * g + 3] * inv);
    }
}
