/* Rotary embedding of q and k in place, fp32, half-split (NeoX) layout: per token and head,
 * x[i], x[i + d/2] -> x[i] cos - x[i + d/2] sin, x[i + d/2] cos + x[i] sin.
 *
 * Same arithmetic, in the same order and rounding, as kernels.rope.apply_rope_ref (each
 * product rounded, then the sum: this file is compiled without contraction into FMAs), in
 * one pass over both tensors instead of a dozen torch ops each.
 */
#include <omp.h>
#include <stdint.h>

static void rotate(float *x, int64_t tokens, int heads, int dim, int64_t token_stride,
                   const float *cos, const float *sin) {
    const int half = dim / 2;
#pragma omp for schedule(static)
    for (int64_t t = 0; t < tokens; t++) {
        const float *c = cos + t * half, *s = sin + t * half;
        for (int h = 0; h < heads; h++) {
            float *first = x + t * token_stride + (int64_t)h * dim, *second = first + half;
            for (int i = 0; i < half; i++) {
                const float a = first[i], b = second[i];
                first[i] = a * c[i] - b * s[i];
                second[i] = b * c[i] + a * s[i];
            }
        }
    }
}

void oss_rope_qk_f32(float *q, int32_t q_heads, int64_t q_token_stride, float *k,
                     int32_t k_heads, int64_t k_token_stride, int64_t tokens, int32_t dim,
                     const float *cos, const float *sin, int32_t num_threads) {
#pragma omp parallel num_threads(num_threads) if (tokens * (q_heads + k_heads) * dim > 65536)
    {
        rotate(q, tokens, q_heads, dim, q_token_stride, cos, sin);
        rotate(k, tokens, k_heads, dim, k_token_stride, cos, sin);
    }
}
