/* A running argmax over column chunks of a [rows, cols] fp32 matrix (the vocabulary logits
 * of greedy rows, one chunk at a time).
 *
 * For each row: its chunk maximum (a vectorisable max, unlike a max that carries indices),
 * then, only when it beats the row's best so far, the first column holding it. Ties keep the
 * earlier (lower) column, across chunks too, as torch.argmax does. NaN logits are ignored.
 */
#include <omp.h>
#include <stdint.h>

#ifdef __AVX__
#include <immintrin.h>
#endif

/* the row's maximum; on AVX machines over two 8-wide running maxima */
static float row_max(const float *row, int64_t cols) {
    float result = row[0];
    int64_t c = 0;
#ifdef __AVX__
    if (cols >= 16) {
        __m256 a = _mm256_loadu_ps(row), b = _mm256_loadu_ps(row + 8);
        for (c = 16; c + 16 <= cols; c += 16) {
            a = _mm256_max_ps(a, _mm256_loadu_ps(row + c));
            b = _mm256_max_ps(b, _mm256_loadu_ps(row + c + 8));
        }
        float lanes[8];
        _mm256_storeu_ps(lanes, _mm256_max_ps(a, b));
        for (int j = 0; j < 8; j++) result = lanes[j] > result ? lanes[j] : result;
    }
#endif
    for (; c < cols; c++) result = row[c] > result ? row[c] : result;
    return result;
}

void oss_row_argmax_update_f32(const float *logits, int64_t rows, int64_t cols,
                               int64_t row_stride, int64_t first_id, float *best,
                               int64_t *best_ids, int32_t num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (rows * cols > 65536)
    for (int64_t r = 0; r < rows; r++) {
        const float *row = logits + r * row_stride;
        const float chunk_max = row_max(row, cols);
        if (chunk_max > best[r]) {
            int64_t at = 0;
            while (row[at] != chunk_max) at++;
            best[r] = chunk_max;
            best_ids[r] = first_id + at;
        }
    }
}
