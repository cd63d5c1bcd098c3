// Are q, k and v free of NaN and infinities? One pass over all three arrays.
//
// A floating-point number is NaN or infinite exactly when all the bits of its
// exponent are set, so the test works on raw bits and needs no float arithmetic:
//   float32: exponent bits 0x7f800000;  float16: 0x7c00 in each 16-bit half of a word.
// Each thread reads 16 bytes at a time (uint4), striding over the arrays; a thread that
// finds a bad value sets bit 0 (q), 1 (k) or 2 (v) of `found`, moved up by `shift`, so the
// caller can name the argument (and, for a flag shared by several functions, the function).
// The flag stays in device memory: the launcher reads it back at once (check_finite=True)
// or leaves it for a later check (check_finite="deferred"), so the check itself never waits.

template <bool HALF>
__device__ __forceinline__ bool word_not_finite(unsigned w) {
    if (HALF) return (w & 0x7c00u) == 0x7c00u || (w & 0x7c000000u) == 0x7c000000u;
    return (w & 0x7f800000u) == 0x7f800000u;
}

template <bool HALF>
__device__ __forceinline__ bool any_not_finite(const uint4* x, long long n) {
    bool bad = false;
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const uint4 v = x[i];
        bad |= word_not_finite<HALF>(v.x) | word_not_finite<HALF>(v.y) | word_not_finite<HALF>(v.z) |
               word_not_finite<HALF>(v.w);
    }
    return bad;
}

// n_q, n_k, n_v: sizes in 16-byte pieces (the launcher guarantees whole, aligned pieces).
template <bool HALF>
__global__ void find_non_finite(const uint4* q, long long n_q, const uint4* k, long long n_k, const uint4* v,
                                long long n_v, int* found, int shift) {
    const int bits = (any_not_finite<HALF>(q, n_q) ? 1 : 0) | (any_not_finite<HALF>(k, n_k) ? 2 : 0) |
                     (any_not_finite<HALF>(v, n_v) ? 4 : 0);
    if (bits) atomicOr(found, bits << shift);
}
