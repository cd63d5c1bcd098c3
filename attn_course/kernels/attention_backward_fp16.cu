// The backward pass of fused attention in float16 on the tensor cores, accumulating in float32.
//
// FlashAttention-2's scheme (the formulas: attn_course/backward.py). With the forward's
// log-sum-exp lse_i of each row, the weights are recomputed tile by tile, never stored:
//
//     P_ij  = exp(q_i . k_j * scale - lse_i)
//     dV_j  = sum_i P_ij dO_i
//     dS_ij = P_ij (dO_i . v_j - D_i) * scale       D_i = dO_i . O_i (the pre-pass, below)
//     dK_j  = sum_i dS_ij q_i          dQ_i = sum_j dS_ij k_j
//
// One block of 4 warps owns 64 keys of one (batch, head): it loads K_j and V_j once, then walks
// over the query tiles of 64 that may see them (causal: only those on or below the diagonal).
// Warp w owns keys 16w .. 16w+15, so everything is computed transposed, keys as rows:
//   * S^T = K Q^T and dP^T = V dO^T (16 keys x 64 queries per warp): A = K or V rows (ldmatrix),
//     B = Q^T or dO^T, whose fragments are rows of Q or dO (ldmatrix, as K in the forward);
//   * P^T and dS^T, elementwise; their accumulator fragments are directly the A fragments of
//   * dV += P^T dO and dK += dS^T Q (B = dO or Q read down its columns: ldmatrix.trans),
//     accumulated in registers over all query tiles and written once at the end;
//   * dQ += dS K needs all 64 keys of a query row: each warp writes its dS^T to shared memory,
//     then warp w takes queries 16w .. 16w+15 (A = dS: ldmatrix.trans of dS^T; B = K: ldmatrix.trans)
//     and adds its 16 x D piece to a float32 dQ in global memory with atomicAdd. Several key blocks
//     add to the same dQ rows, in no fixed order: dQ's last bits may differ from run to run.
// Q and dO tiles are double-buffered with cp.async: the next tile is copied while this one is used.

#define TILE 64       // keys per block, queries per tile
#define WARPS 4
#define THREADS (32 * WARPS)
#define PAD 8         // halves added to each shared row (16 bytes): conflict-free ldmatrix

__device__ __forceinline__ float positive_infinity() { return __int_as_float(0x7f800000); }

// Queue the copy of rows [row0, row0 + 64) of a (rows, D) matrix into a shared tile (zeros past the end).
template <int D>
__device__ __forceinline__ void load_tile_async(half_bits (*dst)[D + PAD], const half_bits* src, int row0, int rows) {
    constexpr int CHUNKS_PER_ROW = D / 8;  // 16-byte pieces
    for (int e = threadIdx.x; e < TILE * CHUNKS_PER_ROW; e += THREADS) {
        const int r = e / CHUNKS_PER_ROW, c = 8 * (e % CHUNKS_PER_ROW);
        const bool valid = row0 + r < rows;
        copy_16_bytes_async(&dst[r][c], src + (valid ? (size_t)(row0 + r) * D + c : 0), valid);
    }
}

// D_i = sum_c dO_ic O_ic in float32, one warp per row; and the rows of dq_accum set to zero.
template <int D>
__global__ void attention_backward_prepass_fp16(const half_bits* __restrict__ out, const half_bits* __restrict__ dout,
                                                float* __restrict__ delta, float* __restrict__ dq_accum, int rows) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    float sum = 0.f;
    for (int c = 2 * lane; c < D; c += 64) {
        const unsigned o2 = *reinterpret_cast<const unsigned*>(out + (size_t)row * D + c);
        const unsigned g2 = *reinterpret_cast<const unsigned*>(dout + (size_t)row * D + c);
        float o_lo, o_hi, g_lo, g_hi;
        asm("{.reg .f16 a, b; mov.b32 {a, b}, %2; cvt.f32.f16 %0, a; cvt.f32.f16 %1, b;}" : "=f"(o_lo), "=f"(o_hi) : "r"(o2));
        asm("{.reg .f16 a, b; mov.b32 {a, b}, %2; cvt.f32.f16 %0, a; cvt.f32.f16 %1, b;}" : "=f"(g_lo), "=f"(g_hi) : "r"(g2));
        sum += o_lo * g_lo + o_hi * g_hi;
        dq_accum[(size_t)row * D + c] = 0.f;
        dq_accum[(size_t)row * D + c + 1] = 0.f;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) delta[row] = sum;
}

template <int D>
__global__ void __launch_bounds__(THREADS) attention_backward_fp16(
    const half_bits* __restrict__ q,     // (BH, L, D)
    const half_bits* __restrict__ k,     // (BH, S, D)
    const half_bits* __restrict__ v,     // (BH, S, D)
    const half_bits* __restrict__ dout,  // (BH, L, D)
    const float* __restrict__ lse,       // (BH, L) natural log, from the forward
    const float* __restrict__ delta,     // (BH, L) D_i = dO_i . O_i, from the pre-pass
    float* __restrict__ dq_accum,        // (BH, L, D) float32, zeroed by the pre-pass; receives dQ
    half_bits* __restrict__ dk,          // (BH, S, D)
    half_bits* __restrict__ dv,          // (BH, S, D)
    int L, int S, float scale, float scale_log2,
    int lo, int hi) {                    // key j is allowed for query i when lo <= i - j <= hi
    constexpr int DK = D / 16;  // 16-wide steps along the head dimension
    constexpr int DN = D / 8;   // 8-wide column tiles of dK, dV

    // K, V (64 rows each), two buffers of Q and of dO, dS^T (64 keys x 64 queries), lse and D.
    extern __shared__ float4 shared_raw[];
    typedef half_bits Row[D + PAD];
    Row* const Ks = reinterpret_cast<Row*>(shared_raw);
    Row* const Vs = Ks + TILE;
    Row* const Q_buffers = Vs + TILE;          // buffer b: rows 64b .. 64b+63
    Row* const dO_buffers = Q_buffers + 2 * TILE;
    half_bits(*dSt)[TILE + PAD] = reinterpret_cast<half_bits(*)[TILE + PAD]>(dO_buffers + 2 * TILE);
    float* const lse_s = reinterpret_cast<float*>(dSt + TILE);  // lse * log2(e) of the tile's queries
    float* const delta_s = lse_s + TILE;

    const int bh = blockIdx.y;
    const int k0 = blockIdx.x * TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4;
    const int mat = lane / 8, mat_row = lane % 8;  // ldmatrix: lane gives row mat_row of matrix mat
    q += (size_t)bh * L * D;
    k += (size_t)bh * S * D;
    v += (size_t)bh * S * D;
    dout += (size_t)bh * L * D;
    lse += (size_t)bh * L;
    delta += (size_t)bh * L;
    dq_accum += (size_t)bh * L * D;
    dk += (size_t)bh * S * D;
    dv += (size_t)bh * S * D;

    int first, last;  // the query tiles that may see a key of this block (key_tiles.cuh)
    query_tile_range(blockIdx.x, TILE, L, S, lo, hi, first, last);

    load_tile_async<D>(Ks, k, k0, S);
    load_tile_async<D>(Vs, v, k0, S);
    if (first < last) {
        load_tile_async<D>(Q_buffers, q, first * TILE, L);
        load_tile_async<D>(dO_buffers, dout, first * TILE, L);
    }
    asm volatile("cp.async.commit_group;");

    float dk_acc[DN][4], dv_acc[DN][4];  // rows (keys) g and g + 8 of the warp's 16; columns 8n + 2t, +1
#pragma unroll
    for (int n = 0; n < DN; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) dk_acc[n][e] = dv_acc[n][e] = 0.f;

    const int key_a = k0 + 16 * warp + g;  // this thread's two keys: key_a and key_a + 8

    for (int t = first; t < last; ++t) {
        const int buf = (t - first) & 1;
        const int q0 = t * TILE;
        if (t + 1 < last) {  // prefetch the next Q and dO tiles into the other buffers
            load_tile_async<D>(Q_buffers + (buf ^ 1) * TILE, q, q0 + TILE, L);
            load_tile_async<D>(dO_buffers + (buf ^ 1) * TILE, dout, q0 + TILE, L);
            asm volatile("cp.async.commit_group;");
            asm volatile("cp.async.wait_group 1;");
        } else {
            asm volatile("cp.async.wait_group 0;");
        }
        if (threadIdx.x < TILE) {  // a row past L, or with no allowed key (lse = -inf), gets P = 0
            const int i = q0 + threadIdx.x;
            const float row_lse = i < L ? lse[i] : negative_infinity();
            lse_s[threadIdx.x] = row_lse == negative_infinity() ? positive_infinity() : row_lse * 1.4426950408889634f;
            delta_s[threadIdx.x] = i < L ? delta[i] : 0.f;
        }
        __syncthreads();
        const Row* Q = Q_buffers + buf * TILE;
        const Row* dO = dO_buffers + buf * TILE;

        // S^T = K Q^T and dP^T = V dO^T: 16 keys x 64 queries per warp, 8 fragments of 16 x 8 each.
        float s[8][4], dp[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.f;
#pragma unroll
        for (int kc = 0; kc < DK; ++kc) {
            // A fragments: matrices (keys 0-7, dims 0-7), (keys 8-15, 0-7), (keys 0-7, 8-15), (keys 8-15, 8-15)
            unsigned ka[4], va[4];
            ldmatrix_x4(ka, &Ks[16 * warp + 8 * (mat % 2) + mat_row][16 * kc + 8 * (mat / 2)]);
            ldmatrix_x4(va, &Vs[16 * warp + 8 * (mat % 2) + mat_row][16 * kc + 8 * (mat / 2)]);
#pragma unroll
            for (int n = 0; n < 8; n += 2) {
                unsigned b[4];
                ldmatrix_x4(b, &Q[8 * (n + mat / 2) + mat_row][16 * kc + 8 * (mat % 2)]);
                mma_16x8x16(s[n], ka, b[0], b[1]);
                mma_16x8x16(s[n + 1], ka, b[2], b[3]);
                ldmatrix_x4(b, &dO[8 * (n + mat / 2) + mat_row][16 * kc + 8 * (mat % 2)]);
                mma_16x8x16(dp[n], va, b[0], b[1]);
                mma_16x8x16(dp[n + 1], va, b[2], b[3]);
            }
        }

        // P^T = exp2(s * scale * log2(e) - lse * log2(e)); dS^T = P^T (dP^T - D) * scale. In place.
        const int tile_lo = q0 - (k0 + TILE - 1), tile_hi = (q0 + TILE - 1) - k0;
        const bool check = k0 + TILE > S || tile_lo < lo || tile_hi > hi;
#pragma unroll
        for (int n = 0; n < 8; ++n)
#pragma unroll
            for (int e = 0; e < 4; ++e) {
                const int i_local = 8 * n + 2 * t4 + (e % 2), j = key_a + 8 * (e / 2);
                float p = exp2f(fmaf(s[n][e], scale_log2, -lse_s[i_local]));
                if (check && (j >= S || q0 + i_local - j < lo || q0 + i_local - j > hi)) p = 0.f;
                s[n][e] = p;
                dp[n][e] = p * (dp[n][e] - delta_s[i_local]) * scale;
            }

        // dV += P^T dO and dK += dS^T Q: the fragments of two neighbouring 8-query tiles form an A fragment.
#pragma unroll
        for (int kc = 0; kc < TILE / 16; ++kc) {
            const unsigned pa[4] = {pack_half2(s[2 * kc][0], s[2 * kc][1]), pack_half2(s[2 * kc][2], s[2 * kc][3]),
                                    pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                    pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
            const unsigned dsa[4] = {pack_half2(dp[2 * kc][0], dp[2 * kc][1]), pack_half2(dp[2 * kc][2], dp[2 * kc][3]),
                                     pack_half2(dp[2 * kc + 1][0], dp[2 * kc + 1][1]),
                                     pack_half2(dp[2 * kc + 1][2], dp[2 * kc + 1][3])};
            // dS^T to shared memory (keys as rows) for the dQ step: rows g, g + 8; queries 16kc + 2t (+8).
            *reinterpret_cast<unsigned*>(&dSt[16 * warp + g][16 * kc + 2 * t4]) = dsa[0];
            *reinterpret_cast<unsigned*>(&dSt[16 * warp + g + 8][16 * kc + 2 * t4]) = dsa[1];
            *reinterpret_cast<unsigned*>(&dSt[16 * warp + g][16 * kc + 8 + 2 * t4]) = dsa[2];
            *reinterpret_cast<unsigned*>(&dSt[16 * warp + g + 8][16 * kc + 8 + 2 * t4]) = dsa[3];
#pragma unroll
            for (int n = 0; n < DN; n += 2) {
                // matrices (transposed): (queries 16kc.., dims 8n..), (16kc+8.., 8n..), (16kc.., 8n+8..), (16kc+8.., 8n+8..)
                unsigned b[4];
                ldmatrix_x4_trans(b, &dO[16 * kc + 8 * (mat % 2) + mat_row][8 * (n + mat / 2)]);
                mma_16x8x16(dv_acc[n], pa, b[0], b[1]);
                mma_16x8x16(dv_acc[n + 1], pa, b[2], b[3]);
                ldmatrix_x4_trans(b, &Q[16 * kc + 8 * (mat % 2) + mat_row][8 * (n + mat / 2)]);
                mma_16x8x16(dk_acc[n], dsa, b[0], b[1]);
                mma_16x8x16(dk_acc[n + 1], dsa, b[2], b[3]);
            }
        }
        __syncthreads();  // dS^T is complete

        // dQ (queries 16w .. 16w+15 of the tile) += dS K, 32 columns at a time, added to global memory.
        const int row_a = q0 + 16 * warp + g;
#pragma unroll
        for (int nc = 0; nc < D / 32; ++nc) {
            float acc[4][4];
#pragma unroll
            for (int n = 0; n < 4; ++n) acc[n][0] = acc[n][1] = acc[n][2] = acc[n][3] = 0.f;
#pragma unroll
            for (int kc = 0; kc < TILE / 16; ++kc) {
                // A = dS (queries x keys) read from dS^T (keys x queries), transposed by ldmatrix:
                // matrices (queries 0-7, keys 0-7), (queries 8-15, keys 0-7), (0-7, keys 8-15), (8-15, 8-15)
                unsigned a[4];
                ldmatrix_x4_trans(a, &dSt[16 * kc + 8 * (mat / 2) + mat_row][16 * warp + 8 * (mat % 2)]);
#pragma unroll
                for (int n = 0; n < 4; n += 2) {
                    unsigned b[4];
                    ldmatrix_x4_trans(b, &Ks[16 * kc + 8 * (mat % 2) + mat_row][32 * nc + 8 * (n + mat / 2)]);
                    mma_16x8x16(acc[n], a, b[0], b[1]);
                    mma_16x8x16(acc[n + 1], a, b[2], b[3]);
                }
            }
#pragma unroll
            for (int n = 0; n < 4; ++n)
#pragma unroll
                for (int e = 0; e < 4; ++e) {
                    const int row = row_a + 8 * (e / 2);
                    if (row < L) atomicAdd(&dq_accum[(size_t)row * D + 32 * nc + 8 * n + 2 * t4 + (e % 2)], acc[n][e]);
                }
        }
        __syncthreads();  // every warp is done with this tile's buffers, dS^T, lse and D
    }

    // dK and dV of this block's keys, rounded to float16 (keys with no allowed query get zeros).
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int j = key_a + 8 * r;
        if (j >= S) continue;
#pragma unroll
        for (int n = 0; n < DN; ++n) {
            *reinterpret_cast<unsigned*>(dk + (size_t)j * D + 8 * n + 2 * t4) = pack_half2(dk_acc[n][2 * r], dk_acc[n][2 * r + 1]);
            *reinterpret_cast<unsigned*>(dv + (size_t)j * D + 8 * n + 2 * t4) = pack_half2(dv_acc[n][2 * r], dv_acc[n][2 * r + 1]);
        }
    }
}
