// LoRA dropout masks drawn on the GPU: element i of the mask is the same function of
// (base, i) as on the CPU (src/dropout.rs, `mask_value`), so both devices give bit-identical
// masks for one seed. splitmix64 is counter-based: the i-th output of the stream started at
// `base` is mix(base + (i + 1) * golden), computable for every element independently.
//
// `keep` and `scale` are computed on the host and passed in, so no device rounding mode or
// fast-math flag can make the two sides differ; every other step is exact integer arithmetic
// and an exactly representable f32 (a 24-bit integer divided by 2^24).

#include <stdint.h>

extern "C" __global__ void malt_dropout_mask_f32(float *out, uint64_t n, uint64_t base, float keep,
                                                 float scale) {
    const uint64_t stride = (uint64_t)blockDim.x * gridDim.x;
    for (uint64_t i = (uint64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        uint64_t z = base + (i + 1) * 0x9E3779B97F4A7C15ull;
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        z ^= z >> 31;
        const float u = (float)(uint32_t)(z >> 40) / 16777216.0f;
        out[i] = u < keep ? scale : 0.0f;
    }
}
