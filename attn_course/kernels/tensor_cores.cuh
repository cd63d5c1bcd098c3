// What the float16 kernels share (the launcher puts this file, after key_tiles.cuh, in front of
// attention_fp16.cu and attention_backward_fp16.cu): the tensor-core instruction, the shared-memory
// loads that feed it, and the background copy, as inline PTX so that no CUDA header is needed.
// The fragment layouts of mma.sync.m16n8k16 are spelled out at the top of attention_fp16.cu.

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

// C += A . B for one 16 x 8 x 16 piece (fragment layouts: attention_fp16.cu).
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
