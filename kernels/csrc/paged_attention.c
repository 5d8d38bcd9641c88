/* gpt-oss paged attention on the CPU: every query of a flat batch against its sequence's
 * cached keys, read in place through the block table (no gathered copy of the keys).
 *
 * Same contract as kernels.attention.paged_attention_ref, fp32 only: a query at position p
 * sees keys j <= p (and j > p - window when `sliding_window` > 0); softmax over those scores
 * plus one sink logit per head, which has no value vector. One work item is one
 * (query token, KV head): the head's GQA group of query heads shares each key and value row
 * it reads. The online softmax rescales once per run of keys in one cache block.
 * The items run on `num_threads` OpenMP threads, dynamically scheduled (prefill items differ).
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define MAX_GROUP 16
#define MAX_HEAD_DIM 256
#define MAX_RUN 64
#define ITEMS_PER_GRAB 4

typedef struct {
    const float *query;       /* [num_tokens, q_heads, head_dim] */
    const float *key_cache;   /* [num_blocks, block_size, kv_heads, head_dim] */
    const float *value_cache; /* same layout */
    const int32_t *block_table;
    int64_t table_stride;
    const int32_t *seq_lens;         /* [num_seqs] keys after this step */
    const int32_t *query_start_loc;  /* [num_seqs + 1] */
    int32_t num_seqs;
    const float *sinks;              /* [q_heads] */
    float sm_scale;
    int32_t sliding_window; /* 0: full attention */
    int32_t num_tokens, q_heads, kv_heads, head_dim, block_size;
    float *out; /* [num_tokens, q_heads, head_dim] */
} Job;

/* the sequence whose queries include `token`: a binary search of the start offsets */
static inline int owner(const int32_t *query_start_loc, int num_seqs, int token) {
    int lo = 0, hi = num_seqs - 1;
    while (lo < hi) {
        const int mid = (lo + hi + 1) / 2;
        if (query_start_loc[mid] <= token) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

/* `dim` is a constant where the caller passes one: the loops over it unroll. */
static inline __attribute__((always_inline)) void attend_item(const Job *job, int item,
                                                              const int dim) {
    const int token = item / job->kv_heads, kv_head = item % job->kv_heads;
    const int group = job->q_heads / job->kv_heads;
    const int seq = owner(job->query_start_loc, job->num_seqs, token);
    const int q_lo = job->query_start_loc[seq], q_hi = job->query_start_loc[seq + 1];
    const int position = job->seq_lens[seq] - (q_hi - q_lo) + (token - q_lo);
    int first = 0;
    if (job->sliding_window > 0 && position - job->sliding_window + 1 > 0)
        first = position - job->sliding_window + 1;
    const int64_t token_stride = (int64_t)job->kv_heads * dim;
    const int64_t block_stride = token_stride * job->block_size;
    const int32_t *table = job->block_table + (int64_t)seq * job->table_stride;

    float q[MAX_GROUP * MAX_HEAD_DIM], acc[MAX_GROUP * MAX_HEAD_DIM];
    float running_max[MAX_GROUP], denominator[MAX_GROUP], probs[MAX_GROUP * MAX_RUN];
    const float *q_in = job->query + ((int64_t)token * job->q_heads + kv_head * group) * dim;
    for (int g = 0; g < group; g++) {
        for (int d = 0; d < dim; d++) q[g * dim + d] = q_in[g * dim + d] * job->sm_scale;
        memset(acc + g * dim, 0, sizeof(float) * dim);
        running_max[g] = job->sinks[kv_head * group + g]; /* the sink: exp(0) = 1, no value */
        denominator[g] = 1.0f;
    }
    for (int start = first; start <= position;) {
        const int offset = start % job->block_size;
        int run = job->block_size - offset;
        if (run > position + 1 - start) run = position + 1 - start;
        if (run > MAX_RUN) run = MAX_RUN;
        const int64_t base = (int64_t)table[start / job->block_size] * block_stride +
                             (int64_t)offset * token_stride + (int64_t)kv_head * dim;
        const float *keys = job->key_cache + base, *values = job->value_cache + base;
        /* scores of four heads at a time against each key: four independent sums */
        int g = 0;
        for (; g + 4 <= group; g += 4)
            for (int t = 0; t < run; t++) {
                const float *k = keys + t * token_stride;
                const float *q0 = q + g * dim, *q1 = q0 + dim, *q2 = q1 + dim, *q3 = q2 + dim;
                float s0 = 0.0f, s1 = 0.0f, s2 = 0.0f, s3 = 0.0f;
                for (int d = 0; d < dim; d++)
                    s0 += q0[d] * k[d], s1 += q1[d] * k[d], s2 += q2[d] * k[d], s3 += q3[d] * k[d];
                probs[g * MAX_RUN + t] = s0, probs[(g + 1) * MAX_RUN + t] = s1;
                probs[(g + 2) * MAX_RUN + t] = s2, probs[(g + 3) * MAX_RUN + t] = s3;
            }
        for (; g < group; g++)
            for (int t = 0; t < run; t++) {
                const float *k = keys + t * token_stride, *qg = q + g * dim;
                float dot = 0.0f;
                for (int d = 0; d < dim; d++) dot += qg[d] * k[d];
                probs[g * MAX_RUN + t] = dot;
            }
        for (int g = 0; g < group; g++) {
            float *scores = probs + g * MAX_RUN, run_max = -INFINITY;
            for (int t = 0; t < run; t++) run_max = scores[t] > run_max ? scores[t] : run_max;
            if (run_max > running_max[g]) {
                const float rescale = expf(running_max[g] - run_max);
                denominator[g] *= rescale;
                for (int d = 0; d < dim; d++) acc[g * dim + d] *= rescale;
                running_max[g] = run_max;
            }
            for (int t = 0; t < run; t++) {
                scores[t] = expf(scores[t] - running_max[g]);
                denominator[g] += scores[t];
            }
        }
        for (int g = 0; g < group; g++) { /* one head's accumulator stays in registers */
            float *a = acc + g * dim;
            const float *p = probs + g * MAX_RUN;
            for (int t = 0; t < run; t++) {
                const float *v = values + t * token_stride;
                for (int d = 0; d < dim; d++) a[d] += p[t] * v[d];
            }
        }
        start += run;
    }
    float *out = job->out + ((int64_t)token * job->q_heads + kv_head * group) * dim;
    for (int g = 0; g < group; g++)
        for (int d = 0; d < dim; d++) out[g * dim + d] = acc[g * dim + d] / denominator[g];
}

static void attend_any(const Job *job, int item) {
    switch (job->head_dim) {
        case 64: attend_item(job, item, 64); break;
        case 128: attend_item(job, item, 128); break;
        default: attend_item(job, item, job->head_dim);
    }
}

/* Returns 0, or -1 when a shape is outside the limits above (nothing written). */
int oss_paged_attention_f32(const float *query, const float *key_cache, const float *value_cache,
                            const int32_t *block_table, int64_t table_stride,
                            const int32_t *seq_lens, const int32_t *query_start_loc,
                            int32_t num_seqs, const float *sinks, float sm_scale,
                            int32_t sliding_window, int32_t num_tokens, int32_t q_heads,
                            int32_t kv_heads, int32_t head_dim, int32_t block_size, float *out,
                            int32_t num_threads) {
    if (kv_heads <= 0 || q_heads % kv_heads || q_heads / kv_heads > MAX_GROUP ||
        head_dim > MAX_HEAD_DIM || block_size <= 0)
        return -1;
    const Job job = {query,           key_cache, value_cache, block_table, table_stride,
                     seq_lens,        query_start_loc, num_seqs, sinks, sm_scale,
                     sliding_window,  num_tokens, q_heads, kv_heads, head_dim, block_size, out};
    const int items = num_tokens * kv_heads;
    /* torch's own OpenMP pool runs the items (this library links the same libgomp) */
#pragma omp parallel for schedule(dynamic, ITEMS_PER_GRAB) num_threads(num_threads) if (items > 1)
    for (int item = 0; item < items; item++) attend_any(&job, item);
    return 0;
}
