/* A running argmax over column chunks of a [rows, cols] fp32 matrix (the vocabulary logits
 * of greedy rows, one chunk at a time).
 *
 * For each row: its chunk maximum (a vectorisable max, unlike a max that carries indices),
 * then, only when it beats the row's best so far, the first column holding it. Ties keep the
 * earlier (lower) column, across chunks too, as torch.argmax does. NaN logits are ignored.
 */
#include <math.h>
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

/* Greedy tokens of a few rows straight from the [vocab, dim] weight, without the logits:
 * for one to four rows the projection is a single pass over the weight (206 MB for gpt-oss
 * in fp32), so it runs at the speed that pass can be read. Four weight rows at a time meet
 * every hidden row (four independent sums each), rows further on are prefetched, and
 * each thread keeps its own bests over its share of the vocabulary before they are merged. */
#define VOCAB_PER_ITEM 4096
#define MAX_SMALL_ROWS 4
#define PREFETCH_ROWS 16

static void logits4(const float *x, const float *w, int dim, float out[4]) {
#if defined(__AVX2__) && defined(__FMA__)
    if (dim % 8 == 0) {
        __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
        for (int d = 0; d < dim; d += 8) {
            const __m256 xv = _mm256_loadu_ps(x + d);
            _mm_prefetch((const char *)(w + PREFETCH_ROWS * dim + d), _MM_HINT_T0);
            a0 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + d), a0);
            a1 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + dim + d), a1);
            a2 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 2 * dim + d), a2);
            a3 = _mm256_fmadd_ps(xv, _mm256_loadu_ps(w + 3 * dim + d), a3);
        }
        float lanes[4][8];
        _mm256_storeu_ps(lanes[0], a0), _mm256_storeu_ps(lanes[1], a1);
        _mm256_storeu_ps(lanes[2], a2), _mm256_storeu_ps(lanes[3], a3);
        for (int i = 0; i < 4; i++) {
            float sum = 0.0f;
            for (int j = 0; j < 8; j++) sum += lanes[i][j];
            out[i] = sum;
        }
        return;
    }
#endif
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (int d = 0; d < dim; d++) {
        s0 += x[d] * w[d], s1 += x[d] * w[dim + d];
        s2 += x[d] * w[2 * dim + d], s3 += x[d] * w[3 * dim + d];
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

/* Returns 0, or -1 for more than MAX_SMALL_ROWS rows or a vocabulary under 4 (nothing
 * written). */
int oss_vocab_argmax_f32(const float *hidden, int32_t rows, int32_t dim, const float *weight,
                         int64_t vocab, int64_t *best_ids, int32_t num_threads) {
    if (rows < 1 || rows > MAX_SMALL_ROWS || vocab < 4) return -1;
    float best[MAX_SMALL_ROWS];
    int64_t best_at[MAX_SMALL_ROWS];
    for (int m = 0; m < rows; m++) best[m] = -INFINITY, best_at[m] = 0;
    const int64_t items = (vocab + VOCAB_PER_ITEM - 1) / VOCAB_PER_ITEM;
#pragma omp parallel num_threads(num_threads)
    {
        float mine[MAX_SMALL_ROWS];
        int64_t mine_at[MAX_SMALL_ROWS];
        for (int m = 0; m < rows; m++) mine[m] = -INFINITY, mine_at[m] = INT64_MAX;
#pragma omp for schedule(static)
        for (int64_t item = 0; item < items; item++) {
            const int64_t lo = item * VOCAB_PER_ITEM;
            const int64_t hi = lo + VOCAB_PER_ITEM < vocab ? lo + VOCAB_PER_ITEM : vocab;
            for (int64_t v = lo; v < hi; v += 4) {
                const int64_t first = v + 4 <= hi ? v : hi - 4 < 0 ? 0 : hi - 4;
                for (int m = 0; m < rows; m++) {
                    float logits[4];
                    logits4(hidden + (int64_t)m * dim, weight + first * dim, dim, logits);
                    for (int i = 0; i < 4; i++) {
                        const int64_t id = first + i;
                        if (id < v || id >= hi) continue; /* a short tail re-reads earlier rows */
                        if (logits[i] > mine[m] || (logits[i] == mine[m] && id < mine_at[m]))
                            mine[m] = logits[i], mine_at[m] = id;
                    }
                }
            }
        }
#pragma omp critical
        for (int m = 0; m < rows; m++)
            if (mine[m] > best[m] || (mine[m] == best[m] && mine_at[m] < best_at[m]))
                best[m] = mine[m], best_at[m] = mine_at[m];
    }
    for (int m = 0; m < rows; m++) best_ids[m] = best_at[m];
    return 0;
}
