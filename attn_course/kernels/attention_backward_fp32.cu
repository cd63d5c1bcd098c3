// The backward pass of fused attention in float32 on the CUDA cores.
//
// The scheme of attention_backward_fp16.cu (FlashAttention-2's; formulas in attn_course/backward.py):
//
//     P_ij  = exp(q_i . k_j * scale - lse_i)           recomputed from the forward's log-sum-exp
//     dV_j += sum_i P_ij dO_i
//     dS_ij = P_ij (dO_i . v_j - D_i) * scale           D_i = dO_i . O_i (the pre-pass)
//     dK_j += sum_i dS_ij q_i       dQ_i += sum_j dS_ij k_j   (dQ: atomicAdd in global memory)
//
// One block of 256 threads owns 64 keys of one (batch, head) and walks over the query tiles of
// 64 that may see them. The threads form a 16 x 16 grid; thread (ty, tx) owns, for S^T and dP^T,
// keys ty + 16a and queries tx + 16b (a, b = 0..3); for dK and dV, keys ty + 16a and columns
// tx + 16c; for dQ, queries ty + 16a and columns tx + 16c. Rows in shared memory are D + 1 floats
// long, so that 16 threads reading 16 different rows at one column hit 16 different banks.

#define TILE 64
#define THREADS 256
#define ROW (D + 1)   // floats per shared row of K, V, Q, dO

__device__ __forceinline__ float positive_infinity() { return __int_as_float(0x7f800000); }

// Rows [row0, row0 + 64) of a (rows, D) matrix into shared rows of D + 1 floats (zeros past the end).
template <int D>
__device__ __forceinline__ void load_rows_padded(float* dst, const float* src, int row0, int rows) {
    for (int e = 4 * threadIdx.x; e < TILE * D; e += 4 * THREADS) {
        const int r = e / D, c = e % D;
        float4 x = make_float4(0.f, 0.f, 0.f, 0.f);
        if (row0 + r < rows) x = *reinterpret_cast<const float4*>(src + (size_t)(row0 + r) * D + c);
        float* d = dst + r * ROW + c;
        d[0] = x.x;
        d[1] = x.y;
        d[2] = x.z;
        d[3] = x.w;
    }
}

// D_i = sum_c dO_ic O_ic, one warp per row; and the rows of dq_accum set to zero.
template <int D>
__global__ void attention_backward_prepass_fp32(const float* __restrict__ out, const float* __restrict__ dout,
                                                float* __restrict__ delta, float* __restrict__ dq_accum, int rows) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32, lane = threadIdx.x % 32;
    if (row >= rows) return;
    float sum = 0.f;
    for (int c = lane; c < D; c += 32) {
        sum = fmaf(out[(size_t)row * D + c], dout[(size_t)row * D + c], sum);
        dq_accum[(size_t)row * D + c] = 0.f;
    }
#pragma unroll
    for (int offset = 16; offset > 0; offset >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, offset);
    if (lane == 0) delta[row] = sum;
}

template <int D>
__global__ void __launch_bounds__(THREADS) attention_backward_fp32(
    const float* __restrict__ q,     // (BH, L, D)
    const float* __restrict__ k,     // (BH, S, D)
    const float* __restrict__ v,     // (BH, S, D)
    const float* __restrict__ dout,  // (BH, L, D)
    const float* __restrict__ lse,   // (BH, L) natural log, from the forward
    const float* __restrict__ delta, // (BH, L) D_i, from the pre-pass
    float* __restrict__ dq,          // (BH, L, D), zeroed by the pre-pass; receives dQ
    float* __restrict__ dk,          // (BH, S, D)
    float* __restrict__ dv,          // (BH, S, D)
    int L, int S, float scale, float scale_log2,
    int lo, int hi) {                // key j is allowed for query i when lo <= i - j <= hi
    constexpr int C = D / 16;        // columns per thread in dK, dV, dQ

    extern __shared__ float4 shared_raw[];
    float* const Ks = reinterpret_cast<float*>(shared_raw);  // (64, D + 1) each
    float* const Vs = Ks + TILE * ROW;
    float* const Qs = Vs + TILE * ROW;
    float* const dOs = Qs + TILE * ROW;
    float(*Pt)[TILE + 1] = reinterpret_cast<float(*)[TILE + 1]>(dOs + TILE * ROW);  // P^T: (64 keys, 64 queries)
    float(*dSt)[TILE + 1] = Pt + TILE;                                                // dS^T, likewise
    float* const lse_s = reinterpret_cast<float*>(dSt + TILE);  // lse * log2(e) of the tile's queries
    float* const delta_s = lse_s + TILE;

    const int bh = blockIdx.y;
    const int k0 = blockIdx.x * TILE;
    const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
    q += (size_t)bh * L * D;
    k += (size_t)bh * S * D;
    v += (size_t)bh * S * D;
    dout += (size_t)bh * L * D;
    lse += (size_t)bh * L;
    delta += (size_t)bh * L;
    dq += (size_t)bh * L * D;
    dk += (size_t)bh * S * D;
    dv += (size_t)bh * S * D;

    int first, last;  // the query tiles that may see a key of this block (key_tiles.cuh)
    query_tile_range(blockIdx.x, TILE, L, S, lo, hi, first, last);

    load_rows_padded<D>(Ks, k, k0, S);
    load_rows_padded<D>(Vs, v, k0, S);

    float dk_acc[4][C], dv_acc[4][C];  // keys ty + 16a, columns tx + 16c
#pragma unroll
    for (int a = 0; a < 4; ++a)
#pragma unroll
        for (int c = 0; c < C; ++c) dk_acc[a][c] = dv_acc[a][c] = 0.f;

    for (int t = first; t < last; ++t) {
        const int q0 = t * TILE;
        load_rows_padded<D>(Qs, q, q0, L);
        load_rows_padded<D>(dOs, dout, q0, L);
        if (threadIdx.x < TILE) {  // a row past L, or with no allowed key (lse = -inf), gets P = 0
            const int i = q0 + threadIdx.x;
            const float row_lse = i < L ? lse[i] : negative_infinity();
            lse_s[threadIdx.x] = row_lse == negative_infinity() ? positive_infinity() : row_lse * 1.4426950408889634f;
            delta_s[threadIdx.x] = i < L ? delta[i] : 0.f;
        }
        __syncthreads();

        // S^T and dP^T for keys ty + 16a, queries tx + 16b.
        float s[4][4] = {}, dp[4][4] = {};
#pragma unroll 4
        for (int c = 0; c < D; ++c) {
            float kv[4], vv[4], qv[4], gv[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) {
                kv[a] = Ks[(ty + 16 * a) * ROW + c];
                vv[a] = Vs[(ty + 16 * a) * ROW + c];
                qv[a] = Qs[(tx + 16 * a) * ROW + c];
                gv[a] = dOs[(tx + 16 * a) * ROW + c];
            }
#pragma unroll
            for (int a = 0; a < 4; ++a)
#pragma unroll
                for (int b = 0; b < 4; ++b) {
                    s[a][b] = fmaf(kv[a], qv[b], s[a][b]);
                    dp[a][b] = fmaf(vv[a], gv[b], dp[a][b]);
                }
        }
        const int tile_lo = q0 - (k0 + TILE - 1), tile_hi = (q0 + TILE - 1) - k0;
        const bool check = k0 + TILE > S || tile_lo < lo || tile_hi > hi;
#pragma unroll
        for (int a = 0; a < 4; ++a)
#pragma unroll
            for (int b = 0; b < 4; ++b) {
                const int i_local = tx + 16 * b, j = k0 + ty + 16 * a;
                float p = exp2f(fmaf(s[a][b], scale_log2, -lse_s[i_local]));
                if (check && (j >= S || q0 + i_local - j < lo || q0 + i_local - j > hi)) p = 0.f;
                Pt[ty + 16 * a][i_local] = p;
                dSt[ty + 16 * a][i_local] = p * (dp[a][b] - delta_s[i_local]) * scale;
            }
        __syncthreads();

        // dV += P^T dO and dK += dS^T Q for keys ty + 16a, columns tx + 16c.
#pragma unroll 2
        for (int i = 0; i < TILE; ++i) {
            float pv[4], dsv[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) {
                pv[a] = Pt[ty + 16 * a][i];
                dsv[a] = dSt[ty + 16 * a][i];
            }
#pragma unroll
            for (int c = 0; c < C; ++c) {
                const float g = dOs[i * ROW + tx + 16 * c], x = Qs[i * ROW + tx + 16 * c];
#pragma unroll
                for (int a = 0; a < 4; ++a) {
                    dv_acc[a][c] = fmaf(pv[a], g, dv_acc[a][c]);
                    dk_acc[a][c] = fmaf(dsv[a], x, dk_acc[a][c]);
                }
            }
        }

        // dQ += dS K for queries ty + 16a, columns tx + 16c, added to global memory.
        float dq_acc[4][C] = {};
#pragma unroll 2
        for (int j = 0; j < TILE; ++j) {
            float dsv[4];
#pragma unroll
            for (int a = 0; a < 4; ++a) dsv[a] = dSt[j][ty + 16 * a];
#pragma unroll
            for (int c = 0; c < C; ++c) {
                const float kj = Ks[j * ROW + tx + 16 * c];
#pragma unroll
                for (int a = 0; a < 4; ++a) dq_acc[a][c] = fmaf(dsv[a], kj, dq_acc[a][c]);
            }
        }
#pragma unroll
        for (int a = 0; a < 4; ++a) {
            const int i = q0 + ty + 16 * a;
            if (i >= L) continue;
#pragma unroll
            for (int c = 0; c < C; ++c) atomicAdd(&dq[(size_t)i * D + tx + 16 * c], dq_acc[a][c]);
        }
        __syncthreads();  // every thread is done with Q, dO, P^T and dS^T of this tile
    }

    // dK and dV of this block's keys (keys with no allowed query get zeros).
#pragma unroll
    for (int a = 0; a < 4; ++a) {
        const int j = k0 + ty + 16 * a;
        if (j >= S) continue;
#pragma unroll
        for (int c = 0; c < C; ++c) {
            dk[(size_t)j * D + tx + 16 * c] = dk_acc[a][c];
            dv[(size_t)j * D + tx + 16 * c] = dv_acc[a][c];
        }
    }
}
