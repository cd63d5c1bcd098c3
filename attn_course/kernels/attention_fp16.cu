// Fused attention in float16 on the tensor cores, accumulating in float32.
//
// The algorithm is the one of attention_fp32.cu (online softmax over key tiles
// of 64, the (L, S) scores never stored); what changes is who multiplies.
// A tensor core multiplies small matrices in one instruction. We use the
// `mma.sync.m16n8k16` instruction (written as inline PTX, so no header is needed):
//
//     C (16 x 8, float32) += A (16 x 16, float16) . B (16 x 8, float16)
//
// executed by the 32 threads of a warp together. Each thread holds a fixed
// piece of A, B and C in its registers (a "fragment"). With
// g = lane / 4 (0..7) and t = lane % 4 (0..3), PTX defines:
//     A: a0 = A[g][2t, 2t+1]      a1 = A[g+8][2t, 2t+1]
//        a2 = A[g][2t+8, 2t+9]    a3 = A[g+8][2t+8, 2t+9]   (two halves per register)
//     B: b0 = B[2t, 2t+1][g]      b1 = B[2t+8, 2t+9][g]
//     C: c0, c1 = C[g][2t, 2t+1]  c2, c3 = C[g+8][2t, 2t+1]
//
// A block of 4 warps handles 64 queries; warp w owns queries 16w .. 16w+15.
//   * Its Q rows stay in registers as A fragments for the whole kernel.
//   * S = Q K^T: B = K^T, so b0 = K[key g][dims 2t, 2t+1]: two neighbours of a
//     row of K. `ldmatrix` loads such fragments for a whole warp from shared memory.
//   * The S fragment (C layout) of two neighbouring 8-key tiles is exactly the A
//     fragment that P needs for P V (rows g and g+8, keys 2t, 2t+1, 2t+8, 2t+9):
//     P never leaves the registers; it is only rounded to float16.
//   * O += P V: B = V, b0 = V[keys 2t, 2t+1][dim g]: two elements of a COLUMN of V;
//     `ldmatrix.trans` transposes 8 x 8 pieces while loading them.
// K and V tiles are copied global -> shared with `cp.async` (the copy runs in the
// background): while the warps compute on one tile, the next is on its way
// (double buffering).
//
// Which keys a query may see, and the log2-domain scores: as in attention_fp32.cu.
//
// Variants for tuning (macros set with -D by kernels/variants.py; the defaults give the
// kernel described above): WARPS x WARP_ROWS queries per block (WARP_ROWS = 32: a warp owns
// two 16-row blocks), Q_IN_SHARED (Q fragments read from shared memory at each key tile
// instead of held in registers), SPLIT_KV (K and V in separate cp.async groups: S = Q K^T
// starts before V has arrived), FOLD_SCALE (unscaled scores; the scale enters the exp2
// through one FMA; the launcher uses it only for a positive scale), LOOK_AHEAD (the next tile's
// S = Q K^T is computed before the current tile's softmax and P V, FlashAttention-3's overlap of the
// two matrix products with the softmax done by hand on mma.sync; K is copied one tile ahead of V).

#define TILE 64                  // keys per tile (and queries per block, by default)
#ifndef WARPS
#define WARPS 4
#endif
#ifndef WARP_ROWS
#define WARP_ROWS 16             // query rows per warp: 16 or 32
#endif
#ifndef Q_IN_SHARED
#define Q_IN_SHARED 0
#endif
#ifndef SPLIT_KV
#define SPLIT_KV 0
#endif
#ifndef FOLD_SCALE
#define FOLD_SCALE 0
#endif
#ifndef LOOK_AHEAD
#define LOOK_AHEAD 0
#endif
#define THREADS (32 * WARPS)
#define QUERY_TILE (WARPS * WARP_ROWS)
#define ROW_BLOCKS (WARP_ROWS / 16)
#define PAD 8                    // halves added to each shared row (16 bytes): conflict-free ldmatrix

// half_bits, pack_half2, mma_16x8x16, ldmatrix_x4(_trans), copy_16_bytes_async: tensor_cores.cuh.

// Queue the copy of rows [row0, row0 + n) of a (rows, D) matrix into a shared tile (zeros past the end).
template <int D>
__device__ __forceinline__ void load_rows_async(half_bits (*dst)[D + PAD], const half_bits* src, int row0, int n,
                                                int rows) {
    constexpr int CHUNKS_PER_ROW = D / 8;  // 16-byte pieces
    for (int e = threadIdx.x; e < n * CHUNKS_PER_ROW; e += THREADS) {
        const int r = e / CHUNKS_PER_ROW, c = 8 * (e % CHUNKS_PER_ROW);
        const bool valid = row0 + r < rows;
        const size_t offset = valid ? (size_t)(row0 + r) * D + c : 0;  // never form an address past the end
        copy_16_bytes_async(&dst[r][c], src + offset, valid);
    }
}

__device__ __forceinline__ void commit_copies() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void wait_copies() { asm volatile("cp.async.wait_group %0;" :: "n"(N)); }

// Online softmax of the tile of keys k0 .. k0+63 on a warp's rows g (r = 0: s[.][.][0..1]) and g + 8 (r = 1:
// s[.][.][2..3]) of each 16-row block: update the running max m and sum l, rescale O, and turn s into P.
template <int RB, int DN>
__device__ __forceinline__ void softmax_tile(float (&s)[RB][8][4], float (&m)[RB][2], float (&l)[RB][2],
                                             float (&o)[RB][DN][4], int k0, int q0, int warp_row0, int S, int lo,
                                             int hi, float scale_log2) {
    const int g = threadIdx.x % 32 / 4, t4 = threadIdx.x % 4;
    const int tile_lo = q0 - (k0 + TILE - 1), tile_hi = (q0 + QUERY_TILE - 1) - k0;
    const bool check = k0 + TILE > S || tile_lo < lo || tile_hi > hi;
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = warp_row0 + 16 * rb + g + 8 * r;
        float row_max = negative_infinity();
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
#if FOLD_SCALE
                float x = s[rb][n][2 * r + e];  // unscaled: the scale is positive, the maximum is the same key
#else
                float x = s[rb][n][2 * r + e] * scale_log2;
#endif
                if (check) {
                    const int col = k0 + 8 * n + 2 * t4 + e;
                    if (col >= S || row - col < lo || row - col > hi) x = negative_infinity();
                }
                s[rb][n][2 * r + e] = x;
                row_max = fmaxf(row_max, x);
            }
        // A row lives in the 4 lanes with the same g (lanes 4g .. 4g+3).
        row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
        row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
        const float m_new = fmaxf(m[rb][r], row_max);
        const float m_use = m_new == negative_infinity() ? 0.f : m_new;  // no -inf - -inf
#if FOLD_SCALE
        const float rescale = exp2f((m[rb][r] - m_use) * scale_log2);
        const float shift = -m_use * scale_log2;  // p = exp2(s * scale_log2 + shift): one FMA
#else
        const float rescale = exp2f(m[rb][r] - m_use);
#endif
        float row_sum = 0.f;
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
#if FOLD_SCALE
                const float p = exp2f(fmaf(s[rb][n][2 * r + e], scale_log2, shift));
#else
                const float p = exp2f(s[rb][n][2 * r + e] - m_use);
#endif
                s[rb][n][2 * r + e] = p;
                row_sum += p;
            }
        row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
        row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
        l[rb][r] = l[rb][r] * rescale + row_sum;
        m[rb][r] = m_new;
#pragma unroll
        for (int n = 0; n < DN; ++n) {
            o[rb][n][2 * r] *= rescale;
            o[rb][n][2 * r + 1] *= rescale;
        }
    }
}

template <int D>
__global__ void __launch_bounds__(THREADS) attention_fp16(
    const half_bits* __restrict__ q,  // (BH, L, D)
    const half_bits* __restrict__ k,  // (BH, S, D)
    const half_bits* __restrict__ v,  // (BH, S, D)
    half_bits* __restrict__ out,      // (BH, L, D)
    float* __restrict__ lse,          // (BH, L) natural-log log-sum-exp of each row, or null: not wanted
    int L, int S, float scale_log2,
    int lo, int hi,                   // key j is allowed for query i when lo <= i - j <= hi
    int use_tile_list,                // 0: every key tile the offset rule allows; 1: the CSR lists (grid: see below)
    const int* __restrict__ tile_ptr, const int* __restrict__ tile_idx) {
    constexpr int DK = D / 16;  // 16-wide steps along the head dimension (the k of m16n8k16)
    constexpr int DN = D / 8;   // 8-wide output column tiles
    constexpr int RB = ROW_BLOCKS;

    // Two buffers of K and of V: 4 x 64 x (D + 8) halves (36 KB for D = 64, 68 KB for D = 128);
    // with Q_IN_SHARED the query tile after them.
    extern __shared__ float4 shared_raw[];
    typedef half_bits Row[D + PAD];
    Row* const K_buffers = reinterpret_cast<Row*>(shared_raw);  // K buffer b: rows 64b .. 64b+63
    Row* const V_buffers = K_buffers + 2 * TILE;                  // V buffer b: likewise
    Row* const Qs = V_buffers + 2 * TILE;                         // (QUERY_TILE, D): Q_IN_SHARED only

    const int bh = blockIdx.z * gridDim.y + blockIdx.y;  // (batch, head): grid (query tiles, BH, 1) or as below
    const int q_tile = gridDim.x - 1 - blockIdx.x;  // heaviest (causal, last) tiles first
    const int q0 = q_tile * QUERY_TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4;
    q += (size_t)bh * L * D;
    k += (size_t)bh * S * D;
    v += (size_t)bh * S * D;
    out += (size_t)bh * L * D;
    if (lse != nullptr) lse += (size_t)bh * L;

    // With tile lists the grid is (query tiles, layout heads h, BH / h): a layout per head gives each head
    // its own row pointers, one per query tile, and the head is blockIdx.y (h = 1: one layout for all).
    if (use_tile_list) tile_ptr += blockIdx.y * gridDim.x;
    int first, last;  // the key tiles to visit (key_tiles.cuh)
    key_tile_range(q_tile, QUERY_TILE, TILE, L, S, lo, hi, use_tile_list, tile_ptr, first, last);

    // This thread's query rows: row_of(rb, r) = rows g (r = 0) and g + 8 (r = 1) of row block rb.
    const int warp_row0 = q0 + WARP_ROWS * warp;
#define ROW_OF(rb, r) (warp_row0 + 16 * (rb) + g + 8 * (r))

    // ldmatrix addressing: lane gives row (lane % 8) of matrix (lane / 8).
    const int mat = lane / 8, mat_row = lane % 8;

#if !Q_IN_SHARED
    // Q rows as A fragments, held in registers for the whole kernel: (16, D) per row block.
    unsigned qa[RB][DK][4];
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
        for (int kc = 0; kc < DK; ++kc) {
            const int c = 16 * kc + 2 * t4, ra = ROW_OF(rb, 0), rb8 = ROW_OF(rb, 1);
            qa[rb][kc][0] = ra < L ? *reinterpret_cast<const unsigned*>(q + (size_t)ra * D + c) : 0u;
            qa[rb][kc][1] = rb8 < L ? *reinterpret_cast<const unsigned*>(q + (size_t)rb8 * D + c) : 0u;
            qa[rb][kc][2] = ra < L ? *reinterpret_cast<const unsigned*>(q + (size_t)ra * D + c + 8) : 0u;
            qa[rb][kc][3] = rb8 < L ? *reinterpret_cast<const unsigned*>(q + (size_t)rb8 * D + c + 8) : 0u;
        }
#endif

    float o[RB][DN][4];  // output fragments: rows g, g + 8 of each row block; columns 8n + 2t, +1
    float m[RB][2], l[RB][2];  // running max (log2 domain; FOLD_SCALE: unscaled) and sum per row
#pragma unroll
    for (int rb = 0; rb < RB; ++rb) {
#pragma unroll
        for (int n = 0; n < DN; ++n) o[rb][n][0] = o[rb][n][1] = o[rb][n][2] = o[rb][n][3] = 0.f;
        m[rb][0] = m[rb][1] = negative_infinity();
        l[rb][0] = l[rb][1] = 0.f;
    }

    // The steps of one key tile, written once for both loops below (the softmax: softmax_tile above).
    typedef float Scores[RB][8][4];  // S (then P) of 16 rows x 64 keys per row block: 8 fragments of 16 x 8

    // S = Q K^T for the key tile in K.
    auto score_tile = [&](Scores& s, const Row* K) {
#pragma unroll
        for (int rb = 0; rb < RB; ++rb)
#pragma unroll
            for (int n = 0; n < 8; ++n) s[rb][n][0] = s[rb][n][1] = s[rb][n][2] = s[rb][n][3] = 0.f;
#pragma unroll
        for (int kc = 0; kc < DK; ++kc) {
#if Q_IN_SHARED
            unsigned qf[RB][4];  // matrices (rows 0-7, dims 0-7), (8-15, 0-7), (0-7, 8-15), (8-15, 8-15)
#pragma unroll
            for (int rb = 0; rb < RB; ++rb)
                ldmatrix_x4(qf[rb], &Qs[WARP_ROWS * warp + 16 * rb + 8 * (mat % 2) + mat_row][16 * kc + 8 * (mat / 2)]);
#define Q_FRAGMENT(rb) qf[rb]
#else
#define Q_FRAGMENT(rb) qa[rb][kc]
#endif
#pragma unroll
            for (int n = 0; n < 8; n += 2) {
                // matrices: (keys 8n.., dims 16kc..), (8n.., 16kc+8..), (8n+8.., 16kc..), (8n+8.., 16kc+8..)
                unsigned b[4];
                ldmatrix_x4(b, &K[8 * (n + mat / 2) + mat_row][16 * kc + 8 * (mat % 2)]);
#pragma unroll
                for (int rb = 0; rb < RB; ++rb) {
                    mma_16x8x16(s[rb][n], Q_FRAGMENT(rb), b[0], b[1]);
                    mma_16x8x16(s[rb][n + 1], Q_FRAGMENT(rb), b[2], b[3]);
                }
            }
#undef Q_FRAGMENT
        }
    };

    // O += P V for the value tile in V: P's fragments are S's, rounded to float16 (keys 16kc .. 16kc+15).
    auto accumulate_tile = [&](const Scores& s, const Row* V) {
#pragma unroll
        for (int kc = 0; kc < TILE / 16; ++kc) {
            unsigned pa[RB][4];
#pragma unroll
            for (int rb = 0; rb < RB; ++rb) {
                pa[rb][0] = pack_half2(s[rb][2 * kc][0], s[rb][2 * kc][1]);
                pa[rb][1] = pack_half2(s[rb][2 * kc][2], s[rb][2 * kc][3]);
                pa[rb][2] = pack_half2(s[rb][2 * kc + 1][0], s[rb][2 * kc + 1][1]);
                pa[rb][3] = pack_half2(s[rb][2 * kc + 1][2], s[rb][2 * kc + 1][3]);
            }
#pragma unroll
            for (int n = 0; n < DN; n += 2) {
                // matrices (transposed): (keys 16kc.., dims 8n..), (16kc+8.., 8n..), (16kc.., 8n+8..), (16kc+8.., 8n+8..)
                unsigned b[4];
                ldmatrix_x4_trans(b, &V[16 * kc + 8 * (mat % 2) + mat_row][8 * (n + mat / 2)]);
#pragma unroll
                for (int rb = 0; rb < RB; ++rb) {
                    mma_16x8x16(o[rb][n], pa[rb], b[0], b[1]);
                    mma_16x8x16(o[rb][n + 1], pa[rb], b[2], b[3]);
                }
            }
        }
    };
#define KEY_ROW0(t) ((use_tile_list ? tile_idx[t] : (t)) * TILE)  // the first key of the t-th tile visited

#if !LOOK_AHEAD
    if (first < last) {
#if Q_IN_SHARED
        load_rows_async<D>(Qs, q, q0, QUERY_TILE, L);  // in the first group, with K
#endif
        load_rows_async<D>(K_buffers, k, KEY_ROW0(first), TILE, S);
#if SPLIT_KV
        commit_copies();
#endif
        load_rows_async<D>(V_buffers, v, KEY_ROW0(first), TILE, S);
        commit_copies();
    }

    for (int t = first; t < last; ++t) {
        const int buf = (t - first) & 1;
        const bool has_next = t + 1 < last;
        if (has_next) {  // prefetch the next tile into the other buffers
            load_rows_async<D>(K_buffers + (buf ^ 1) * TILE, k, KEY_ROW0(t + 1), TILE, S);
#if SPLIT_KV
            commit_copies();
#endif
            load_rows_async<D>(V_buffers + (buf ^ 1) * TILE, v, KEY_ROW0(t + 1), TILE, S);
            commit_copies();
        }
#if SPLIT_KV
        // groups in flight, oldest first: K_t, V_t (, K_t+1, V_t+1): wait for K_t only
        if (has_next) wait_copies<3>(); else wait_copies<1>();
#else
        if (has_next) wait_copies<1>(); else wait_copies<0>();
#endif
        __syncthreads();
        Scores s;
        score_tile(s, K_buffers + buf * TILE);
        softmax_tile(s, m, l, o, KEY_ROW0(t), q0, warp_row0, S, lo, hi, scale_log2);
#if SPLIT_KV
        if (has_next) wait_copies<2>(); else wait_copies<0>();  // V_t has arrived
        __syncthreads();
#endif
        accumulate_tile(s, V_buffers + buf * TILE);
        __syncthreads();  // all warps are done with this buffer before it is refilled
    }
#else
    // Look-ahead: K runs one tile ahead of V. Iteration t computes S_{t+1} = Q K_{t+1}^T first, then the
    // softmax of S_t (computed one iteration earlier) and O += P_t V_t: the tensor cores' work on S_{t+1}
    // does not depend on the softmax of S_t, so the warp's schedule can overlap the two. K_t and V_t sit
    // in buffer (t - first) & 1; at iteration t, once every warp has passed its barrier, K_{t+2} is
    // copied over K_t (read in iteration t - 1) and V_{t+1} over V_{t-1} (likewise): one barrier per tile.
    Scores s;  // S_t, then P_t
    if (first < last) {
#if Q_IN_SHARED
        load_rows_async<D>(Qs, q, q0, QUERY_TILE, L);
#endif
        load_rows_async<D>(K_buffers, k, KEY_ROW0(first), TILE, S);
        load_rows_async<D>(V_buffers, v, KEY_ROW0(first), TILE, S);
        if (first + 1 < last) load_rows_async<D>(K_buffers + TILE, k, KEY_ROW0(first + 1), TILE, S);
        commit_copies();
        wait_copies<0>();
        __syncthreads();
        score_tile(s, K_buffers);  // S_first
    }
    for (int t = first; t < last; ++t) {
        const int buf = (t - first) & 1;
        const bool has_next = t + 1 < last;
        wait_copies<0>();  // V_t and K_{t+1}, queued one iteration ago (or above)
        __syncthreads();   // ... visible to all; every warp is done with K_t and V_{t-1}
        if (has_next) load_rows_async<D>(V_buffers + (buf ^ 1) * TILE, v, KEY_ROW0(t + 1), TILE, S);
        if (t + 2 < last) load_rows_async<D>(K_buffers + buf * TILE, k, KEY_ROW0(t + 2), TILE, S);
        commit_copies();
        Scores s_next;  // S_{t+1}
        if (has_next) score_tile(s_next, K_buffers + (buf ^ 1) * TILE);
        softmax_tile(s, m, l, o, KEY_ROW0(t), q0, warp_row0, S, lo, hi, scale_log2);
        accumulate_tile(s, V_buffers + buf * TILE);
        if (has_next) {
#pragma unroll
            for (int rb = 0; rb < RB; ++rb)
#pragma unroll
                for (int n = 0; n < 8; ++n)
#pragma unroll
                    for (int e = 0; e < 4; ++e) s[rb][n][e] = s_next[rb][n][e];
        }
    }
#endif
#undef KEY_ROW0

    // out = O / l, rounded to float16; a row with no allowed key gets zeros.
#pragma unroll
    for (int rb = 0; rb < RB; ++rb)
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = ROW_OF(rb, r);
        if (row >= L) continue;
        const float inv = l[rb][r] > 0.f ? 1.f / l[rb][r] : 0.f;
#if FOLD_SCALE
        if (lse != nullptr && t4 == 0) store_log_sum_exp(lse + row, m[rb][r] * scale_log2, l[rb][r]);
#else
        if (lse != nullptr && t4 == 0) store_log_sum_exp(lse + row, m[rb][r], l[rb][r]);
#endif
#pragma unroll
        for (int n = 0; n < DN; ++n)
            *reinterpret_cast<unsigned*>(out + (size_t)row * D + 8 * n + 2 * t4) =
                pack_half2(o[rb][n][2 * r] * inv, o[rb][n][2 * r + 1] * inv);
    }
#undef ROW_OF
}
