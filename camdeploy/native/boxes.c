/* The box rule from low-resolution maps, in C (see boxes.h and the docstring of
 * camdeploy/runtime/map_boxes.py, which derives the margin and proves the certificate).
 *
 * Per map, in one pass over the pixels and none over a full-resolution mask:
 *   1. upsample the raw map in float32, half-pixel bilinear (two passes of two products and a sum,
 *      the computation the margin bounds), keeping its minimum and maximum;
 *   2. for each output row, the runs of `possible` (value >= level - margin) and of `certain`
 *      (value > level + margin) pixels, from a byte mask of the row;
 *   3. 8-connected components of the runs by union-find (a run's root is the first run of its
 *      component in raster order, so ties between components go to the first pixel, as the host
 *      rule wants), with each component's area and bounding box;
 *   4. equal masks: the box of the largest component; else the certificate: the largest component
 *      C of `certain` is unique, its component P in `possible` has the same box and less than twice
 *      its area, and every other component of `possible` is smaller than C.
 * The thresholds and the tests are the Python implementation's, value for value; only the
 * upsampling is this file's own, within the same bound. */
#include "boxes.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#if defined(__SSE2__) || defined(_M_X64) || (defined(_M_IX86_FP) && _M_IX86_FP >= 2)
#include <emmintrin.h>
#define CD_SSE2 1 /* every x86-64 CPU; elsewhere the plain loops below, which give the same values */
#endif

typedef struct {
    int count;
    int *row_start; /* [out_h + 1]: the runs of row y are row_start[y] .. row_start[y + 1] - 1 */
    int *x0, *x1;   /* columns x0 .. x1 - 1 */
    int *y;
    int *parent;
    long long *area; /* per root, after label() */
    int *left, *top, *right, *bottom;
} runs_t;

typedef struct {
    int h, w, out_h, out_w;
    float *up;        /* [out_h * out_w] */
    float *across;    /* [h * out_w]: the horizontal pass */
    int *col0, *col1; /* source columns of each output column */
    float *colw0, *colw1;
    int *row0, *row1;
    float *roww0, *roww1;
    int words;                        /* 64-bit words of a row's bit mask */
    uint64_t *possible_row, *certain_row; /* [words]: one row's masks, a bit per pixel */
    runs_t possible, certain;
} work_t;

static int runs_alloc(runs_t *r, int out_h, int out_w) {
    size_t capacity = (size_t)out_h * (size_t)((out_w + 1) / 2) + 1;
    memset(r, 0, sizeof *r);
    r->row_start = malloc(sizeof(int) * ((size_t)out_h + 1));
    r->x0 = malloc(sizeof(int) * capacity);
    r->x1 = malloc(sizeof(int) * capacity);
    r->y = malloc(sizeof(int) * capacity);
    r->parent = malloc(sizeof(int) * capacity);
    r->area = malloc(sizeof(long long) * capacity);
    r->left = malloc(sizeof(int) * capacity);
    r->top = malloc(sizeof(int) * capacity);
    r->right = malloc(sizeof(int) * capacity);
    r->bottom = malloc(sizeof(int) * capacity);
    return r->row_start && r->x0 && r->x1 && r->y && r->parent && r->area && r->left && r->top && r->right &&
           r->bottom;
}

static void runs_free(runs_t *r) {
    free(r->row_start);
    free(r->x0);
    free(r->x1);
    free(r->y);
    free(r->parent);
    free(r->area);
    free(r->left);
    free(r->top);
    free(r->right);
    free(r->bottom);
}

static void work_free(work_t *s) {
    free(s->up);
    free(s->across);
    free(s->col0);
    free(s->col1);
    free(s->colw0);
    free(s->colw1);
    free(s->row0);
    free(s->row1);
    free(s->roww0);
    free(s->roww1);
    free(s->possible_row);
    free(s->certain_row);
    runs_free(&s->possible);
    runs_free(&s->certain);
}

/* Source samples and weights of a half-pixel bilinear upsampling from `in` to `out` samples, the
 * source coordinate clamped to [0, in - 1] as ONNX's Resize does. The coordinate
 * ((2x + 1) in - out) / (2 out) is one rounding from exact in double, and exact (so are the float32
 * weights) when out / in is a power of two. */
static void sample_weights(int in, int out, int *first, int *second, float *w_first, float *w_second) {
    for (int x = 0; x < out; x++) {
        double source = ((2.0 * x + 1.0) * in - out) / (2.0 * out);
        if (source < 0) source = 0;
        if (source > in - 1) source = in - 1;
        int i = (int)floor(source);
        double fraction = source - i;
        first[x] = i;
        second[x] = i + 1 < in ? i + 1 : in - 1;
        w_second[x] = (float)fraction;
        w_first[x] = (float)(1.0 - fraction);
    }
}

/* Buffers for maps [h][w] upsampled to out_h x out_w; h = w = 0: for maps already out_h x out_w. */
static int work_alloc(work_t *s, int h, int w, int out_h, int out_w) {
    memset(s, 0, sizeof *s);
    s->h = h;
    s->w = w;
    s->out_h = out_h;
    s->out_w = out_w;
    s->words = (out_w + 63) / 64;
    s->possible_row = calloc((size_t)s->words, sizeof(uint64_t));
    s->certain_row = calloc((size_t)s->words, sizeof(uint64_t));
    int ok = runs_alloc(&s->possible, out_h, out_w) & runs_alloc(&s->certain, out_h, out_w) &&
             s->possible_row && s->certain_row;
    if (ok && h > 0) {
        s->up = malloc(sizeof(float) * (size_t)out_h * (size_t)out_w);
        s->across = malloc(sizeof(float) * (size_t)h * (size_t)out_w);
        s->col0 = malloc(sizeof(int) * (size_t)out_w);
        s->col1 = malloc(sizeof(int) * (size_t)out_w);
        s->colw0 = malloc(sizeof(float) * (size_t)out_w);
        s->colw1 = malloc(sizeof(float) * (size_t)out_w);
        s->row0 = malloc(sizeof(int) * (size_t)out_h);
        s->row1 = malloc(sizeof(int) * (size_t)out_h);
        s->roww0 = malloc(sizeof(float) * (size_t)out_h);
        s->roww1 = malloc(sizeof(float) * (size_t)out_h);
        ok = s->up && s->across && s->col0 && s->col1 && s->colw0 && s->colw1 && s->row0 && s->row1 && s->roww0 &&
             s->roww1;
        if (ok) {
            sample_weights(w, out_w, s->col0, s->col1, s->colw0, s->colw1);
            sample_weights(h, out_h, s->row0, s->row1, s->roww0, s->roww1);
        }
    }
    if (!ok) work_free(s);
    return ok;
}

/* Upsample raw [h][w] into s->up; its minimum and maximum into *low, *high. */
static void upsample(work_t *s, const float *raw, double *low, double *high) {
    const int w = s->w, out_w = s->out_w;
    for (int i = 0; i < s->h; i++) {
        const float *source = raw + (size_t)i * w;
        float *target = s->across + (size_t)i * out_w;
        for (int x = 0; x < out_w; x++)
            target[x] = source[s->col0[x]] * s->colw0[x] + source[s->col1[x]] * s->colw1[x];
    }
    float lo = INFINITY, hi = -INFINITY;
#ifdef CD_SSE2
    /* Two independent pairs of accumulators, so that min and max do not wait on each other. */
    __m128 lo4 = _mm_set1_ps(INFINITY), hi4 = _mm_set1_ps(-INFINITY), lo4b = lo4, hi4b = hi4;
#endif
    for (int y = 0; y < s->out_h; y++) {
        const float *a = s->across + (size_t)s->row0[y] * out_w;
        const float *b = s->across + (size_t)s->row1[y] * out_w;
        const float wa = s->roww0[y], wb = s->roww1[y];
        float *target = s->up + (size_t)y * out_w;
        int x = 0;
#ifdef CD_SSE2
        const __m128 wa4 = _mm_set1_ps(wa), wb4 = _mm_set1_ps(wb);
        for (; x + 8 <= out_w; x += 8) {
            __m128 v = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(a + x), wa4), _mm_mul_ps(_mm_loadu_ps(b + x), wb4));
            __m128 u = _mm_add_ps(_mm_mul_ps(_mm_loadu_ps(a + x + 4), wa4),
                                  _mm_mul_ps(_mm_loadu_ps(b + x + 4), wb4));
            _mm_storeu_ps(target + x, v);
            _mm_storeu_ps(target + x + 4, u);
            lo4 = _mm_min_ps(lo4, v);
            hi4 = _mm_max_ps(hi4, v);
            lo4b = _mm_min_ps(lo4b, u);
            hi4b = _mm_max_ps(hi4b, u);
        }
#endif
        for (; x < out_w; x++) {
            float v = a[x] * wa + b[x] * wb;
            target[x] = v;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
    }
#ifdef CD_SSE2
    float lanes[4], top[4];
    _mm_storeu_ps(lanes, _mm_min_ps(lo4, lo4b));
    _mm_storeu_ps(top, _mm_max_ps(hi4, hi4b));
    for (int k = 0; k < 4; k++) {
        lo = lanes[k] < lo ? lanes[k] : lo;
        hi = top[k] > hi ? top[k] : hi;
    }
#endif
    *low = lo;
    *high = hi;
}

/* One row's bit masks: `possible` (value >= at_least) and, when `with_certain`, `certain`
 * (value > above); the CAM rule needs the first only. */
static void row_masks(work_t *s, const float *row, float at_least, float above, int with_certain) {
    const int out_w = s->out_w;
    for (int word = 0; word < s->words; word++) {
        uint64_t p = 0, c = 0;
        int x = word * 64, end = x + 64 < out_w ? x + 64 : out_w, shift = 0;
#ifdef CD_SSE2
        const __m128 at_least4 = _mm_set1_ps(at_least), above4 = _mm_set1_ps(above);
        if (with_certain) {
            for (; x + 4 <= end; x += 4, shift += 4) {
                __m128 v = _mm_loadu_ps(row + x);
                p |= (uint64_t)_mm_movemask_ps(_mm_cmpge_ps(v, at_least4)) << shift;
                c |= (uint64_t)_mm_movemask_ps(_mm_cmpgt_ps(v, above4)) << shift;
            }
        } else {
            for (; x + 4 <= end; x += 4, shift += 4)
                p |= (uint64_t)_mm_movemask_ps(_mm_cmpge_ps(_mm_loadu_ps(row + x), at_least4)) << shift;
        }
#endif
        for (; x < end; x++, shift++) {
            p |= (uint64_t)(row[x] >= at_least) << shift;
            c |= (uint64_t)(with_certain && row[x] > above) << shift;
        }
        s->possible_row[word] = p;
        s->certain_row[word] = c;
    }
}

static int lowest_bit(uint64_t word) {
#if defined(__GNUC__) || defined(__clang__)
    return __builtin_ctzll(word);
#else
    int i = 0;
    while (!(word & 1)) word >>= 1, i++;
    return i;
#endif
}

/* The first pixel at or after x whose bit is `value`, or width. */
static int next_bit(const uint64_t *bits, int words, int width, int x, int value) {
    int i = x >> 6;
    if (i >= words) return width;
    uint64_t word = (value ? bits[i] : ~bits[i]) & (~0ULL << (x & 63));
    while (!word) {
        if (++i >= words) return width;
        word = value ? bits[i] : ~bits[i];
    }
    int found = i * 64 + lowest_bit(word);
    return found < width ? found : width;
}

/* Append the runs of one row's bit mask for row y; returns its pixels. */
static long long add_runs(runs_t *r, const uint64_t *bits, int words, int width, int y) {
    long long pixels = 0;
    int x = 0;
    for (;;) {
        x = next_bit(bits, words, width, x, 1);
        if (x >= width) break;
        int start = x;
        x = next_bit(bits, words, width, x, 0);
        int i = r->count++;
        r->x0[i] = start;
        r->x1[i] = x;
        r->y[i] = y;
        pixels += x - start;
    }
    return pixels;
}

static int find(int *parent, int i) {
    int root = i;
    while (parent[root] != root) root = parent[root];
    while (parent[i] != root) {
        int next = parent[i];
        parent[i] = root;
        i = next;
    }
    return root;
}

/* 8-connected components of the runs: parent[i] the root (the component's first run), and at each
 * root its area and bounding box (pixel edges). */
static void label(runs_t *r, int out_h) {
    int *parent = r->parent;
    for (int i = 0; i < r->count; i++) parent[i] = i;
    for (int y = 1; y < out_h; y++) {
        int above = r->row_start[y - 1], above_end = r->row_start[y];
        for (int j = r->row_start[y]; j < r->row_start[y + 1]; j++) {
            /* runs above that end before this one's left neighbour cannot touch it or a later one */
            while (above < above_end && r->x1[above] < r->x0[j]) above++;
            for (int k = above; k < above_end && r->x0[k] <= r->x1[j]; k++) {
                int a = find(parent, k), b = find(parent, j);
                if (a < b) parent[b] = a;
                else if (b < a) parent[a] = b;
            }
        }
    }
    for (int i = 0; i < r->count; i++) {
        int root = find(parent, i);
        if (root == i) {
            r->area[i] = 0;
            r->left[i] = r->x0[i];
            r->right[i] = r->x1[i];
            r->top[i] = r->y[i];
            r->bottom[i] = r->y[i] + 1;
        }
        r->area[root] += r->x1[i] - r->x0[i];
        if (r->x0[i] < r->left[root]) r->left[root] = r->x0[i];
        if (r->x1[i] > r->right[root]) r->right[root] = r->x1[i];
        r->bottom[root] = r->y[i] + 1; /* runs come in raster order */
    }
}

/* The root of the largest component (the first on a tie); *tied says whether another is as large. */
static int largest(const runs_t *r, int *tied) {
    int best = -1;
    *tied = 0;
    for (int i = 0; i < r->count; i++) {
        if (r->parent[i] != i) continue;
        if (best < 0 || r->area[i] > r->area[best]) {
            best = i;
            *tied = 0;
        } else if (r->area[i] == r->area[best]) {
            *tied = 1;
        }
    }
    return best;
}

static int same_box(const runs_t *a, int i, const runs_t *b, int j) {
    return a->left[i] == b->left[j] && a->right[i] == b->right[j] && a->top[i] == b->top[j] &&
           a->bottom[i] == b->bottom[j];
}

static float float_above(double value) {
    float rounded = (float)value;
    return (double)rounded >= value ? rounded : nextafterf(rounded, INFINITY);
}

static float float_below(double value) {
    float rounded = (float)value;
    return (double)rounded <= value ? rounded : nextafterf(rounded, -INFINITY);
}

/* One map: 1 and its box when decided, else 0. */
static int one_map(work_t *s, const float *raw, double tau, double margin_per_unit, float box[4]) {
    const int out_h = s->out_h, out_w = s->out_w;
    float amplitude = 0.0f;
    for (int i = 0; i < s->h * s->w; i++) {
        if (!isfinite(raw[i])) return 0; /* the graph's normalisation decides */
        float magnitude = fabsf(raw[i]);
        amplitude = magnitude > amplitude ? magnitude : amplitude;
    }
    double margin = margin_per_unit * (double)amplitude;
    double low, high;
    upsample(s, raw, &low, &high);
    double span = high - low;
    if (span <= 4 * margin) return 0; /* (nearly) constant */
    double level = low + (double)(float)tau * span;
    const float above = float_above(level + margin), at_least = float_below(level - margin);

    runs_t *possible = &s->possible, *certain = &s->certain;
    possible->count = certain->count = 0;
    long long possible_area = 0, certain_area = 0;
    for (int y = 0; y < out_h; y++) {
        row_masks(s, s->up + (size_t)y * out_w, at_least, above, 1);
        possible->row_start[y] = possible->count;
        certain->row_start[y] = certain->count;
        possible_area += add_runs(possible, s->possible_row, s->words, out_w, y);
        certain_area += add_runs(certain, s->certain_row, s->words, out_w, y);
    }
    possible->row_start[out_h] = possible->count;
    certain->row_start[out_h] = certain->count;
    if (certain_area == 0) return 0; /* nothing certain: rounding could decide every pixel */

    int tied, p;
    label(possible, out_h);
    if (certain_area == possible_area) { /* equal masks: the rule itself */
        p = largest(possible, &tied);
    } else {
        label(certain, out_h);
        int c = largest(certain, &tied);
        if (tied) return 0; /* a tie in `certain` could go either way */
        long long a = certain->area[c];
        /* P: the component of `possible` holding C's first run (`certain` lies within `possible`) */
        int k = possible->row_start[certain->y[c]];
        while (possible->x1[k] <= certain->x0[c]) k++;
        p = find(possible->parent, k);
        if (possible->area[p] >= 2 * a || !same_box(certain, c, possible, p)) return 0;
        for (int i = 0; i < possible->count; i++)
            if (possible->parent[i] == i && i != p && possible->area[i] >= a) return 0;
    }
    box[0] = (float)possible->left[p];
    box[1] = (float)possible->top[p];
    box[2] = (float)possible->right[p];
    box[3] = (float)possible->bottom[p];
    return 1;
}

int cd_map_boxes(const float *maps, size_t count, int h, int w, int out_h, int out_w, double tau,
                 double margin_per_unit, float *boxes, uint8_t *decided) {
    memset(boxes, 0, sizeof(float) * 4 * count);
    memset(decided, 0, count);
    if (count == 0) return 0;
    work_t s;
    if (!work_alloc(&s, h, w, out_h, out_w)) return -1;
    for (size_t m = 0; m < count; m++) {
        /* one_map writes a box only when it decides it: the others stay 0 */
        decided[m] = (uint8_t)one_map(&s, maps + m * (size_t)h * (size_t)w, tau, margin_per_unit, boxes + 4 * m);
    }
    work_free(&s);
    return 0;
}

/* The peak of a map [out_h][out_w], or NaN when it holds a NaN. */
static float peak(const float *cam, size_t pixels) {
    float hi = -INFINITY;
    int nan = 0;
    size_t i = 0;
#ifdef CD_SSE2
    __m128 hi4 = _mm_set1_ps(-INFINITY), hi4b = hi4, nan4 = _mm_setzero_ps();
    for (; i + 8 <= pixels; i += 8) {
        __m128 v = _mm_loadu_ps(cam + i), u = _mm_loadu_ps(cam + i + 4);
        hi4 = _mm_max_ps(hi4, v);
        hi4b = _mm_max_ps(hi4b, u);
        nan4 = _mm_or_ps(nan4, _mm_or_ps(_mm_cmpunord_ps(v, v), _mm_cmpunord_ps(u, u)));
    }
    float top[4];
    _mm_storeu_ps(top, _mm_max_ps(hi4, hi4b));
    for (int k = 0; k < 4; k++) hi = top[k] > hi ? top[k] : hi;
    nan = _mm_movemask_ps(nan4) != 0;
#endif
    for (; i < pixels; i++) {
        nan |= isnan(cam[i]);
        hi = cam[i] > hi ? cam[i] : hi;
    }
    return nan ? NAN : hi;
}

/* One CAM: the box of the largest component of cam >= tau * peak (the float32 product). */
static void one_cam(work_t *s, const float *cam, float tau, float box[4]) {
    const int out_h = s->out_h, out_w = s->out_w;
    float top = peak(cam, (size_t)out_h * (size_t)out_w);
    box[0] = box[1] = 0.0f;
    box[2] = (float)out_w;
    box[3] = (float)out_h;
    if (!isfinite(top)) return; /* NaN or infinity (never from an exported graph): the whole frame */
    const float level = tau * top;
    runs_t *r = &s->possible;
    r->count = 0;
    for (int y = 0; y < out_h; y++) {
        row_masks(s, cam + (size_t)y * out_w, level, INFINITY, 0);
        r->row_start[y] = r->count;
        add_runs(r, s->possible_row, s->words, out_w, y);
    }
    r->row_start[out_h] = r->count;
    if (r->count == 0) return; /* no pixel passes (a map below zero): the whole frame */
    label(r, out_h);
    int tied, p = largest(r, &tied);
    box[0] = (float)r->left[p];
    box[1] = (float)r->top[p];
    box[2] = (float)r->right[p];
    box[3] = (float)r->bottom[p];
}

int cd_cam_boxes(const float *cams, size_t count, int height, int width, float tau, float *boxes) {
    if (count == 0) return 0;
    work_t s;
    if (!work_alloc(&s, 0, 0, height, width)) return -1;
    for (size_t m = 0; m < count; m++) one_cam(&s, cams + m * (size_t)height * (size_t)width, tau, boxes + 4 * m);
    work_free(&s);
    return 0;
}

int cd_upsample(const float *map, int h, int w, int out_h, int out_w, float *out) {
    work_t s;
    if (!work_alloc(&s, h, w, out_h, out_w)) return -1;
    double low, high;
    upsample(&s, map, &low, &high);
    memcpy(out, s.up, sizeof(float) * (size_t)out_h * (size_t)out_w);
    work_free(&s);
    return 0;
}
