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
 *
 * For a few rows the approximate logits come from `oss_screen_int8_logits` (one read of the
 * int8 weight, each row quantized to int8 with its own scale); larger batches use torch's
 * fbgemm GEMM and pass its logits in.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>

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
                           const float *row_coef, const float *act_coef, float *lower,
                           int32_t *ids,
                           float *upper, int32_t *count, int32_t capacity,
                           int32_t num_threads) {
#pragma omp parallel for schedule(static) num_threads(num_threads) if (rows > 1)
    for (int64_t r = 0; r < rows; r++)
        screen_row(approx + r * row_stride, cols, first_id, col_scale, col_l1, row_coef[r],
                   act_coef[r], lower + r, ids + r * capacity, upper + r * capacity, count + r,
                   capacity);
}

/* Rows quantized to int8 with their own scale: scale = max|x| / 127, no value clipped, so
 * each one's rounding error is at most half its scale. */
static void quantize_rows(const float *hidden, int32_t rows, int32_t dim, int8_t *quantized,
                          float *scale) {
    for (int32_t m = 0; m < rows; m++) {
        const float *x = hidden + (int64_t)m * dim;
        float amax = 0.0f;
        for (int32_t d = 0; d < dim; d++) amax = fabsf(x[d]) > amax ? fabsf(x[d]) : amax;
        scale[m] = amax > 0.0f ? amax / 127.0f : 1.0f;
        for (int32_t d = 0; d < dim; d++) {
            float q = nearbyintf(x[d] / scale[m]);
            quantized[(int64_t)m * dim + d] = (int8_t)(q > 127.0f ? 127.0f : q < -127.0f ? -127.0f : q);
        }
    }
}

/* One int8 row against one int8 weight row, summed exactly in int32. With |x| <= 127 the
 * sign trick (|x| times w carrying x's sign) keeps every pair sum of maddubs within int16. */
static int32_t dot_int8(const int8_t *x, const int8_t *w, int32_t dim) {
    int32_t d = 0, sum = 0;
#ifdef __AVX2__
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc = _mm256_setzero_si256();
    for (; d + 32 <= dim; d += 32) {
        const __m256i xv = _mm256_loadu_si256((const __m256i *)(x + d));
        const __m256i wv = _mm256_loadu_si256((const __m256i *)(w + d));
        const __m256i pairs = _mm256_maddubs_epi16(_mm256_abs_epi8(xv), _mm256_sign_epi8(wv, xv));
        acc = _mm256_add_epi32(acc, _mm256_madd_epi16(pairs, ones));
    }
    __m128i half = _mm_add_epi32(_mm256_castsi256_si128(acc), _mm256_extracti128_si256(acc, 1));
    half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0x4e));
    half = _mm_add_epi32(half, _mm_shuffle_epi32(half, 0xb1));
    sum = _mm_cvtsi128_si32(half);
#endif
    for (; d < dim; d++) sum += (int32_t)x[d] * (int32_t)w[d];
    return sum;
}

#define MAX_INT8_ROWS 8
#define INT8_PREFETCH_ROWS 16

/* approx[r][v] = scale_r * col_scale[v] * (int8 row r . int8 weight row v), for up to
 * MAX_INT8_ROWS rows in one pass over the [vocab, dim] int8 weight; row_scale[r] gets each
 * row's activation scale. Returns 0, or -1 for too many rows (nothing written). */
int oss_screen_int8_logits(const float *hidden, int32_t rows, int32_t dim, const int8_t *weight,
                           const float *col_scale, int64_t vocab, float *approx,
                           float *row_scale, int32_t num_threads) {
    if (rows < 1 || rows > MAX_INT8_ROWS) return -1;
    int8_t *xq = malloc((size_t)rows * (size_t)dim);
    if (xq == NULL) return -1;
    quantize_rows(hidden, rows, dim, xq, row_scale);
#pragma omp parallel for schedule(static, 1024) num_threads(num_threads)
    for (int64_t v = 0; v < vocab; v++) {
        const int8_t *w = weight + v * dim;
        for (int32_t line = 0; line < dim; line += 64)
            __builtin_prefetch(w + INT8_PREFETCH_ROWS * dim + line);
        for (int32_t m = 0; m < rows; m++)
            approx[m * vocab + v] =
                (float)dot_int8(xq + (int64_t)m * dim, w, dim) * row_scale[m] * col_scale[v];
    }
    free(xq);
    return 0;
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
