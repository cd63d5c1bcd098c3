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

#define TILE 64                  // queries per block, keys per tile
#define WARPS 4
#define THREADS (32 * WARPS)
#define PAD 8                    // halves added to each shared row (16 bytes): conflict-free ldmatrix

typedef unsigned short half_bits;  // a float16 as raw bits: the kernel needs no cuda_fp16.h

// Two float32 -> one register holding two float16 (lo in the low 16 bits), rounded to nearest.
__device__ __forceinline__ unsigned pack_half2(float lo, float hi) {
    unsigned r;
    asm("cvt.rn.f16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
    return r;
}

__device__ __forceinline__ unsigned shared_address(const void* p) {
    return static_cast<unsigned>(__cvta_generic_to_shared(p));
}

// C += A . B for one 16 x 8 x 16 piece (see the fragment layouts above).
__device__ __forceinline__ void mma_16x8x16(float* c, const unsigned* a, unsigned b0, unsigned b1) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
        "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Four 8 x 8 float16 matrices from shared memory; lane l gives the address of
// row (l % 8) of matrix (l / 8), and receives in r[m] its piece of matrix m.
__device__ __forceinline__ void ldmatrix_x4(unsigned* r, const half_bits* row_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row_address)));
}

// The same, each 8 x 8 matrix transposed on the way.
__device__ __forceinline__ void ldmatrix_x4_trans(unsigned* r, const half_bits* row_address) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(shared_address(row_address)));
}

// Start copying 16 bytes global -> shared in the background; zeros when !valid.
__device__ __forceinline__ void copy_16_bytes_async(half_bits* dst, const half_bits* src, bool valid) {
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
                 :: "r"(shared_address(dst)), "l"(src), "r"(valid ? 16 : 0));
}

// Queue the copy of rows [row0, row0 + 64) of K and V (each (rows, D)) into shared buffers.
template <int D>
__device__ __forceinline__ void load_kv_tile_async(half_bits (*Ks)[D + PAD], half_bits (*Vs)[D + PAD],
                                                   const half_bits* k, const half_bits* v, int row0, int rows) {
    constexpr int CHUNKS_PER_ROW = D / 8;  // 16-byte pieces
    for (int e = threadIdx.x; e < TILE * CHUNKS_PER_ROW; e += THREADS) {
        const int r = e / CHUNKS_PER_ROW, c = 8 * (e % CHUNKS_PER_ROW);
        const bool valid = row0 + r < rows;
        const size_t offset = valid ? (size_t)(row0 + r) * D + c : 0;  // never form an address past the end
        copy_16_bytes_async(&Ks[r][c], k + offset, valid);
        copy_16_bytes_async(&Vs[r][c], v + offset, valid);
    }
    asm volatile("cp.async.commit_group;");
}

template <int D>
__global__ void __launch_bounds__(THREADS) attention_fp16(
    const half_bits* __restrict__ q,  // (BH, L, D)
    const half_bits* __restrict__ k,  // (BH, S, D)
    const half_bits* __restrict__ v,  // (BH, S, D)
    half_bits* __restrict__ out,      // (BH, L, D)
    int L, int S, float scale_log2,
    int lo, int hi,                   // key j is allowed for query i when lo <= i - j <= hi
    int use_tile_list,                // 0: every key tile the offset rule allows; 1: the CSR list
    const int* __restrict__ tile_ptr, const int* __restrict__ tile_idx) {
    constexpr int DK = D / 16;  // 16-wide steps along the head dimension (the k of m16n8k16)
    constexpr int DN = D / 8;   // 8-wide output column tiles

    // Two buffers of K and of V: 4 x 64 x (D + 8) halves (36 KB for D = 64, 68 KB for D = 128).
    extern __shared__ float4 shared_raw[];
    typedef half_bits Row[D + PAD];
    Row* const K_buffers = reinterpret_cast<Row*>(shared_raw);  // K buffer b: rows 64b .. 64b+63
    Row* const V_buffers = K_buffers + 2 * TILE;                  // V buffer b: likewise

    const int bh = blockIdx.y;
    const int q_tile = gridDim.x - 1 - blockIdx.x;  // heaviest (causal, last) tiles first
    const int q0 = q_tile * TILE;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    const int g = lane / 4, t4 = lane % 4;
    q += (size_t)bh * L * D;
    k += (size_t)bh * S * D;
    v += (size_t)bh * S * D;
    out += (size_t)bh * L * D;

    int first, last;  // the key tiles to visit (key_tiles.cuh)
    key_tile_range(q_tile, TILE, L, S, lo, hi, use_tile_list, tile_ptr, first, last);

    // This thread's two query rows (g and g + 8 of the warp's 16) as A fragments: (16, D).
    const int row_a = q0 + 16 * warp + g, row_b = row_a + 8;
    unsigned qa[DK][4];
#pragma unroll
    for (int kc = 0; kc < DK; ++kc) {
        const int c = 16 * kc + 2 * t4;
        qa[kc][0] = row_a < L ? *reinterpret_cast<const unsigned*>(q + (size_t)row_a * D + c) : 0u;
        qa[kc][1] = row_b < L ? *reinterpret_cast<const unsigned*>(q + (size_t)row_b * D + c) : 0u;
        qa[kc][2] = row_a < L ? *reinterpret_cast<const unsigned*>(q + (size_t)row_a * D + c + 8) : 0u;
        qa[kc][3] = row_b < L ? *reinterpret_cast<const unsigned*>(q + (size_t)row_b * D + c + 8) : 0u;
    }

    float o[DN][4];                // output fragments: rows g, g + 8; columns 8n + 2t, +1
    float m[2], l[2];              // running max (log2 domain) and sum for rows g and g + 8
#pragma unroll
    for (int n = 0; n < DN; ++n) o[n][0] = o[n][1] = o[n][2] = o[n][3] = 0.f;
    m[0] = m[1] = negative_infinity();
    l[0] = l[1] = 0.f;

    // ldmatrix addressing: lane gives row (lane % 8) of matrix (lane / 8).
    const int mat = lane / 8, mat_row = lane % 8;

    if (first < last)
        load_kv_tile_async<D>(K_buffers, V_buffers, k, v, (use_tile_list ? tile_idx[first] : first) * TILE, S);

    for (int t = first; t < last; ++t) {
        const int buf = (t - first) & 1;
        const int k0 = (use_tile_list ? tile_idx[t] : t) * TILE;
        if (t + 1 < last) {  // prefetch the next tile into the other buffer, then wait for this one
            load_kv_tile_async<D>(K_buffers + (buf ^ 1) * TILE, V_buffers + (buf ^ 1) * TILE, k, v, (use_tile_list ? tile_idx[t + 1] : t + 1) * TILE, S);
            asm volatile("cp.async.wait_group 1;");
        } else {
            asm volatile("cp.async.wait_group 0;");
        }
        __syncthreads();
        const Row* K = K_buffers + buf * TILE;
        const Row* V = V_buffers + buf * TILE;

        // S = Q K^T for 16 rows x 64 keys: 8 fragments of 16 x 8.
        float s[8][4];
#pragma unroll
        for (int n = 0; n < 8; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.f;
#pragma unroll
        for (int kc = 0; kc < DK; ++kc) {
#pragma unroll
            for (int n = 0; n < 8; n += 2) {
                // matrices: (keys 8n.., dims 16kc..), (8n.., 16kc+8..), (8n+8.., 16kc..), (8n+8.., 16kc+8..)
                unsigned b[4];
                ldmatrix_x4(b, &K[8 * (n + mat / 2) + mat_row][16 * kc + 8 * (mat % 2)]);
                mma_16x8x16(s[n], qa[kc], b[0], b[1]);
                mma_16x8x16(s[n + 1], qa[kc], b[2], b[3]);
            }
        }

        // Online softmax on rows g (r = 0: s[.][0..1]) and g + 8 (r = 1: s[.][2..3]).
        const int tile_lo = q0 - (k0 + TILE - 1), tile_hi = (q0 + TILE - 1) - k0;
        const bool check = k0 + TILE > S || tile_lo < lo || tile_hi > hi;
#pragma unroll
        for (int r = 0; r < 2; ++r) {
            const int row = r == 0 ? row_a : row_b;
            float row_max = negative_infinity();
#pragma unroll
            for (int n = 0; n < 8; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    float x = s[n][2 * r + e] * scale_log2;
                    if (check) {
                        const int col = k0 + 8 * n + 2 * t4 + e;
                        if (col >= S || row - col < lo || row - col > hi) x = negative_infinity();
                    }
                    s[n][2 * r + e] = x;
                    row_max = fmaxf(row_max, x);
                }
            // A row lives in the 4 lanes with the same g (lanes 4g .. 4g+3).
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 1));
            row_max = fmaxf(row_max, __shfl_xor_sync(0xffffffffu, row_max, 2));
            const float m_new = fmaxf(m[r], row_max);
            const float m_use = m_new == negative_infinity() ? 0.f : m_new;  // no -inf - -inf
            const float rescale = exp2f(m[r] - m_use);
            float row_sum = 0.f;
#pragma unroll
            for (int n = 0; n < 8; ++n)
#pragma unroll
                for (int e = 0; e < 2; ++e) {
                    const float p = exp2f(s[n][2 * r + e] - m_use);
                    s[n][2 * r + e] = p;
                    row_sum += p;
                }
            row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 1);
            row_sum += __shfl_xor_sync(0xffffffffu, row_sum, 2);
            l[r] = l[r] * rescale + row_sum;
            m[r] = m_new;
#pragma unroll
            for (int n = 0; n < DN; ++n) {
                o[n][2 * r] *= rescale;
                o[n][2 * r + 1] *= rescale;
            }
        }

        // O += P V: P's fragments are S's, rounded to float16 (keys 16kc .. 16kc+15).
#pragma unroll
        for (int kc = 0; kc < TILE / 16; ++kc) {
            const unsigned pa[4] = {pack_half2(s[2 * kc][0], s[2 * kc][1]), pack_half2(s[2 * kc][2], s[2 * kc][3]),
                                    pack_half2(s[2 * kc + 1][0], s[2 * kc + 1][1]),
                                    pack_half2(s[2 * kc + 1][2], s[2 * kc + 1][3])};
#pragma unroll
            for (int n = 0; n < DN; n += 2) {
                // matrices (transposed): (keys 16kc.., dims 8n..), (16kc+8.., 8n..), (16kc.., 8n+8..), (16kc+8.., 8n+8..)
                unsigned b[4];
                ldmatrix_x4_trans(b, &V[16 * kc + 8 * (mat % 2) + mat_row][8 * (n + mat / 2)]);
                mma_16x8x16(o[n], pa, b[0], b[1]);
                mma_16x8x16(o[n + 1], pa, b[2], b[3]);
            }
        }
        __syncthreads();  // all warps are done with this buffer before it is refilled
    }

    // out = O / l, rounded to float16; a row with no allowed key gets zeros.
#pragma unroll
    for (int r = 0; r < 2; ++r) {
        const int row = r == 0 ? row_a : row_b;
        if (row >= L) continue;
        const float inv = l[r] > 0.f ? 1.f / l[r] : 0.f;
#pragma unroll
        for (int n = 0; n < DN; ++n)
            *reinterpret_cast<unsigned*>(out + (size_t)row * D + 8 * n + 2 * t4) =
                pack_half2(o[n][2 * r] * inv, o[n][2 * r + 1] * inv);
    }
}
