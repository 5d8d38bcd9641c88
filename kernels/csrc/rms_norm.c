/* RMSNorm of fp32 rows, optionally after a residual add: y = w * (x / sqrt(mean(x^2) + eps)).
 *
 * The CPU form of kernels.norm.rms_norm_ref and kernels.fused.add_rms_norm_ref in one pass per
 * row instead of about ten torch ops (a decode step runs the norm nine times over a handful of
 * rows). Elementwise steps round as the reference does; the sum of squares is summed in
 * another order (vectorised), so results agree to fp32 rounding, not bit for bit.
 */
#include <math.h>
#include <omp.h>
#include <stddef.h>
#include <stdint.h>

void oss_rms_norm_f32(const float *x, const float *residual, float *summed, const float *weight,
                      float eps, int64_t rows, int32_t dim, float *out, int32_t num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (rows * dim > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *in = x + r * dim;
        float *y = out + r * dim;
        if (residual != NULL) { /* summed = x + residual, rounded, then normalised */
            float *s = summed + r * dim;
            const float *res = residual + r * dim;
            for (int i = 0; i < dim; i++) s[i] = in[i] + res[i];
            in = s;
        }
        float squares = 0.0f;
        for (int i = 0; i < dim; i++) squares += in[i] * in[i];
        const float scale = 1.0f / sqrtf(squares / (float)dim + eps);
        for (int i = 0; i < dim; i++) y[i] = weight[i] * (in[i] * scale);
    }
}
