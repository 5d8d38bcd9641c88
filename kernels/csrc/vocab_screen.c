/* Greedy argmax over the vocabulary from approximate logits that carry an error bound.
 *
 * The approximate logits come from an int8 projection (a few times cheaper than fp32). For
 * token v of a row, the true logit lies within `bound = col_scale[v] * row_coef + act_coef *
 * col_l1[v] + REL_SLACK * |approx|` of its approximation, so no token whose upper end
 * (approx + bound) falls below the best lower end (approx - bound) of the row can be its
 * argmax. `oss_screen_update_f32` folds one column chunk into each row's best lower end and
 * its list of candidates; `oss_screen_finish_f32` drops the candidates the final best lower
 * end rules out and picks the argmax among the rest from exact fp32 dot products, ties to
 * the lower id. A row whose list overflows reports -1 and is computed the exact way.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>

#ifdef __AVX__
#include <immintrin.h>
#endif

#define REL_SLACK 1e-6f /* fp32 rounding of the approximate logit itself */

/* Keeps the candidates whose upper end reaches `lower`; returns how many remain. */
static int32_t compact(int32_t *ids, float *upper, int32_t count, float lower) {
    int32_t kept = 0;
    for (int32_t i = 0; i < count; i++)
        if (upper[i] >= lower) ids[kept] = ids[i], upper[kept] = upper[i], kept++;
    return kept;
}

/* One candidate in; -1 when the list is full even after compaction (the row overflows). */
static int32_t push(int32_t *ids, float *upper, int32_t count, int32_t capacity, float lower,
                    int32_t id, float up) {
    if (count == capacity) {
        count = compact(ids, upper, count, lower);
        if (count == capacity) return -1;
    }
    ids[count] = id, upper[count] = up;
    return count + 1;
}

static void screen_row(const float *approx, int64_t cols, int64_t first_id,
                       const float *col_scale, const float *col_l1, float row_coef,
                       float act_coef, float *lower_io, int32_t *ids, float *upper,
                       int32_t *count_io, int32_t capacity) {
    float lower = *lower_io;
    int32_t count = *count_io;
    if (count < 0) return;
    int64_t c = 0;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 rc = _mm256_set1_ps(row_coef), ac = _mm256_set1_ps(act_coef);
    const __m256 rel = _mm256_set1_ps(REL_SLACK);
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (; c + 8 <= cols; c += 8) {
        const __m256 a = _mm256_loadu_ps(approx + c);
        __m256 bound = _mm256_mul_ps(_mm256_loadu_ps(col_scale + c), rc);
        bound = _mm256_fmadd_ps(_mm256_loadu_ps(col_l1 + c), ac, bound);
        bound = _mm256_fmadd_ps(_mm256_andnot_ps(sign, a), rel, bound);
        const __m256 up = _mm256_add_ps(a, bound);
        /* a stale (lower) `lower` only lets more candidates in: the finish step filters */
        int mask = _mm256_movemask_ps(_mm256_cmp_ps(up, _mm256_set1_ps(lower), _CMP_GE_OQ));
        if (!mask) continue;
        float ups[8], los[8];
        _mm256_storeu_ps(ups, up);
        _mm256_storeu_ps(los, _mm256_sub_ps(a, bound));
        for (int j = 0; j < 8; j++)
            if (los[j] > lower) lower = los[j];
        for (int j = 0; j < 8 && count >= 0; j++)
            if ((mask >> j & 1) && ups[j] >= lower)
                count = push(ids, upper, count, capacity, lower, (int32_t)(first_id + c + j),
                             ups[j]);
        if (count < 0) break;
    }
#endif
    for (; c < cols && count >= 0; c++) {
        const float a = approx[c];
        const float bound = col_scale[c] * row_coef + col_l1[c] * act_coef + REL_SLACK * fabsf(a);
        if (a - bound > lower) lower = a - bound;
        if (a + bound >= lower)
            count = push(ids, upper, count, capacity, lower, (int32_t)(first_id + c), a + bound);
    }
    *lower_io = lower;
    *count_io = count;
}

void oss_screen_update_f32(const float *approx, int64_t rows, int64_t cols, int64_t row_stride,
                           int64_t first_id, const float *col_scale, const float *col_l1,
                           const float *row_coef, float act_coef, float *lower, int32_t *ids,
                           float *upper, int32_t *count, int32_t capacity,
                           int32_t num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (rows > 1)
    for (int64_t r = 0; r < rows; r++)
        screen_row(approx + r * row_stride, cols, first_id, col_scale, col_l1, row_coef[r],
                   act_coef, lower + r, ids + r * capacity, upper + r * capacity, count + r,
                   capacity);
}

static float dot(const float *x, const float *w, int32_t dim) {
    int32_t d = 0;
    float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
    __m256 acc = _mm256_setzero_ps();
    for (; d + 8 <= dim; d += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(x + d), _mm256_loadu_ps(w + d), acc);
    float lanes[8];
    _mm256_storeu_ps(lanes, acc);
    for (int j = 0; j < 8; j++) sum += lanes[j];
#endif
    for (; d < dim; d++) sum += x[d] * w[d];
    return sum;
}

/* best_ids[r]: the row's argmax among its remaining candidates, or -1 if its list overflowed */
void oss_screen_finish_f32(const float *hidden, int64_t rows, int32_t dim, const float *weight,
                           const float *lower, const int32_t *ids, const float *upper,
                           const int32_t *count, int32_t capacity, int64_t *best_ids,
                           int32_t num_threads) {
#pragma omp parallel for schedule(dynamic) num_threads(num_threads) if (rows > 1)
    for (int64_t r = 0; r < rows; r++) {
        best_ids[r] = -1;
        if (count[r] < 0) continue;
        const float *x = hidden + r * dim;
        float best = -INFINITY;
        for (int32_t i = 0; i < count[r]; i++) {
            const int32_t id = ids[r * capacity + i];
            if (upper[r * capacity + i] < lower[r]) continue;
            const float logit = dot(x, weight + (int64_t)id * dim, dim);
            /* ids arrive in increasing order: strictly greater keeps the lower id on a tie */
            if (best_ids[r] < 0 || logit > best) best = logit, best_ids[r] = id;
        }
    }
}
