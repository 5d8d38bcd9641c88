/* gpt-oss's experts on the CPU for small batches: route, both projections, the clamped
 * SwiGLU and the weighted sum in one call, fp32, dense [E, out, in] weights.
 *
 * Same result as kernels.moe.moe_experts_ref. With few tokens per expert a library GEMM per
 * expert spends most of its time on call and threading overhead; here each weight row is read
 * once and dotted with every row routed to its expert, and one OpenMP team (torch's pool)
 * splits the rows of all experts. A token's expert outputs are summed in increasing expert
 * order, as the reference does. Pairs routed to experts outside [expert_start,
 * expert_start + num_local) are skipped (expert parallelism: another rank adds them).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define ROWS_PER_ITEM 16

/* four dot products of `x` with rows w[0..3]: four independent sums keep the FMA units busy
 * (one running sum waits on its own latency every step) */
static inline void dot4(const float *x, const float *w0, const float *w1, const float *w2,
                        const float *w3, int n, float *out) {
    float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
    for (int i = 0; i < n; i++) {
        s0 += x[i] * w0[i];
        s1 += x[i] * w1[i];
        s2 += x[i] * w2[i];
        s3 += x[i] * w3[i];
    }
    out[0] = s0, out[1] = s1, out[2] = s2, out[3] = s3;
}

/* out[p, r] = bias[e, r] + rows[p] . weight[e, r] for the pairs p of each expert e */
static void grouped_rows(const float *rows, int64_t row_stride, const int32_t *pair_row,
                         const int32_t *offsets, int num_local, const float *weight,
                         const float *bias, int out_features, int in_features, float *out) {
    const int blocks = (out_features + ROWS_PER_ITEM - 1) / ROWS_PER_ITEM;
#pragma omp for schedule(dynamic, 1)
    for (int item = 0; item < num_local * blocks; item++) {
        const int expert = item / blocks, block = item % blocks;
        const int first = offsets[expert], last = offsets[expert + 1];
        if (first == last) continue;
        const int r_lo = block * ROWS_PER_ITEM;
        const int r_hi = r_lo + ROWS_PER_ITEM < out_features ? r_lo + ROWS_PER_ITEM : out_features;
        const float *w = weight + (int64_t)expert * out_features * in_features;
        const float *b = bias + (int64_t)expert * out_features;
        for (int r = r_lo; r < r_hi; r += 4) {
            /* rows past r_hi repeat the last one: computed, not stored */
            const float *w_rows[4];
            for (int i = 0; i < 4; i++)
                w_rows[i] = w + (int64_t)(r + i < r_hi ? r + i : r_hi - 1) * in_features;
            for (int p = first; p < last; p++) {
                float sums[4];
                dot4(rows + (int64_t)pair_row[p] * row_stride, w_rows[0], w_rows[1], w_rows[2],
                     w_rows[3], in_features, sums);
                for (int i = 0; i < 4 && r + i < r_hi; i++)
                    out[(int64_t)p * out_features + r + i] = b[r + i] + sums[i];
            }
        }
    }
}

/* Returns 0, or -1 (nothing written) when top_k > 64 or memory runs out. */
int oss_moe_experts_f32(const float *x, int32_t num_tokens, int32_t hidden,
                        const int64_t *topk_ids, const float *topk_weights, int32_t top_k,
                        const float *w1, const float *b1, const float *w2, const float *b2,
                        int32_t num_local, int32_t expert_start, int32_t intermediate,
                        float alpha, float limit, float *out, int32_t num_threads) {
    if (top_k > 64) return -1;
    /* pairs sorted by (local expert, token): a counting sort */
    int32_t *offsets = calloc((size_t)num_local + 1, sizeof(int32_t));
    int32_t *pair_token = malloc(sizeof(int32_t) * ((size_t)num_tokens * top_k + 1));
    int32_t *pair_of_slot = malloc(sizeof(int32_t) * ((size_t)num_tokens * top_k + 1));
    if (!offsets || !pair_token || !pair_of_slot) {
        free(offsets), free(pair_token), free(pair_of_slot);
        return -1;
    }
    for (int64_t s = 0; s < (int64_t)num_tokens * top_k; s++) {
        const int64_t e = topk_ids[s] - expert_start;
        if (e >= 0 && e < num_local) offsets[e + 1]++;
    }
    for (int e = 0; e < num_local; e++) offsets[e + 1] += offsets[e];
    const int pairs = offsets[num_local];
    int32_t *fill = malloc(sizeof(int32_t) * ((size_t)num_local + 1));
    float *gate_up = malloc(sizeof(float) * ((size_t)pairs * 2 * intermediate + 1));
    float *act = malloc(sizeof(float) * ((size_t)pairs * intermediate + 1));
    float *down = malloc(sizeof(float) * ((size_t)pairs * hidden + 1));
    int32_t *pair_index = malloc(sizeof(int32_t) * ((size_t)pairs + 1)); /* rows of `act` */
    if (!fill || !gate_up || !act || !down || !pair_index) {
        free(offsets), free(pair_token), free(pair_of_slot);
        free(fill), free(gate_up), free(act), free(down), free(pair_index);
        return -1;
    }
    for (int p = 0; p < pairs; p++) pair_index[p] = p;
    memcpy(fill, offsets, sizeof(int32_t) * ((size_t)num_local + 1));
    for (int64_t s = 0; s < (int64_t)num_tokens * top_k; s++) {
        const int64_t e = topk_ids[s] - expert_start;
        pair_of_slot[s] = -1;
        if (e >= 0 && e < num_local) {
            pair_token[fill[e]] = (int32_t)(s / top_k);
            pair_of_slot[s] = fill[e]++;
        }
    }
#pragma omp parallel num_threads(num_threads) if (pairs > 1)
    {
        grouped_rows(x, hidden, pair_token, offsets, num_local, w1, b1, 2 * intermediate,
                     hidden, gate_up);
#pragma omp for schedule(static)
        for (int p = 0; p < pairs; p++) {
            const float *gu = gate_up + (int64_t)p * 2 * intermediate;
            float *a = act + (int64_t)p * intermediate;
            for (int j = 0; j < intermediate; j++) {
                const float gate = fminf(gu[2 * j], limit);
                const float up = fminf(fmaxf(gu[2 * j + 1], -limit), limit);
                a[j] = gate / (1.0f + expf(-alpha * gate)) * (up + 1.0f);
            }
        }
        grouped_rows(act, intermediate, pair_index, offsets, num_local, w2, b2, hidden,
                     intermediate, down);
#pragma omp for schedule(static)
        for (int t = 0; t < num_tokens; t++) {
            /* this token's slots by increasing expert id (insertion sort over top_k) */
            int order[64];
            const int k = top_k;
            for (int i = 0; i < k; i++) {
                int j = i;
                while (j > 0 && topk_ids[(int64_t)t * top_k + order[j - 1]] >
                                    topk_ids[(int64_t)t * top_k + i]) {
                    order[j] = order[j - 1];
                    j--;
                }
                order[j] = i;
            }
            float *o = out + (int64_t)t * hidden;
            memset(o, 0, sizeof(float) * hidden);
            for (int i = 0; i < k; i++) {
                const int64_t slot = (int64_t)t * top_k + order[i];
                const int p = pair_of_slot[slot];
                if (p < 0) continue;
                const float w = topk_weights[slot];
                const float *y = down + (int64_t)p * hidden;
                for (int d = 0; d < hidden; d++) o[d] += y[d] * w;
            }
        }
    }
    free(offsets), free(pair_token), free(pair_of_slot);
    free(fill), free(gate_up), free(act), free(down), free(pair_index);
    return 0;
}
