/* Row norms and neighbour dot products in one read of the rows (ltbm.core._native).
 *
 * The banded rounds of LTBM need, for every row t of a [R, D] sequence, its norm and its
 * dot products with rows t + d for a few small distances d. Done with torch operations
 * that is one norm, then a multiply and a row sum per distance: the rows are read several
 * times and a product buffer written and read back. This loop reads each row once, while
 * the few rows it pairs with are still in the first-level cache.
 *
 * The values must be the ones torch computes, bit for bit: plans are decided by these
 * numbers and must not depend on whether this module is present. So each reduction adds
 * the same terms in the same order as torch's CPU kernels (which add in a fixed order
 * that depends on the vector width W of the build torch dispatches to, 8 or 16 floats):
 *
 *  - the norm, as torch.linalg.vector_norm(dim=-1): W lane accumulators, acc += x * x
 *    over the row's vectors (multiply then add, or one fused multiply-add: which one
 *    depends on how torch was compiled), then lane 0 plus lanes 1 .. W - 1 in order,
 *    then the square root;
 *  - the dot product, as torch.sum(a * b, -1): the products rounded first, then torch's
 *    cascade sum: vectors in groups of four accumulators, folded into higher levels every
 *    16 groups, the four accumulators summed, then the lanes summed onto zero.
 *
 * Python (ltbm.core.native_dots) checks each variant against torch on a probe before using it
 * and falls back to torch where none matches. Rows of float32, float16 or bfloat16 (widened
 * exactly); D a multiple of W. Built with -ffp-contract=off: no contraction except where
 * a fused multiply-add is asked for explicitly.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

enum { KIND_F32 = 0, KIND_F16 = 1, KIND_BF16 = 2 };
enum { MAX_DISTANCES = 16, LEVELS = 4, ILP = 4 };

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CLONES __attribute__((target_clones("arch=x86-64-v4", "arch=x86-64-v3", "default")))
#else
#define CLONES
#endif

/* ---- widening half precision (exact) ---- */

static float bf16_to_f32(uint16_t bits) {
    uint32_t wide = (uint32_t)bits << 16;
    float value;
    memcpy(&value, &wide, sizeof value);
    return value;
}

/* Branch-free, so that the loop vectorises: the half's exponent and mantissa bits placed
 * in a float32 and scaled by 2^112 give every finite half exactly (subnormals included);
 * infinities and NaNs get the all-ones exponent. */
static float f16_to_f32(uint16_t bits) {
    const uint32_t magnitude = bits & 0x7fffu, sign = (uint32_t)(bits & 0x8000u) << 16;
    uint32_t shifted = magnitude << 13;
    float value;
    memcpy(&value, &shifted, sizeof value);
    value = value * 0x1p112f;
    uint32_t wide;
    memcpy(&wide, &value, sizeof wide);
    wide = magnitude >= 0x7c00u ? (shifted | 0x7f800000u) : wide;
    wide |= sign;
    memcpy(&value, &wide, sizeof value);
    return value;
}

CLONES static void widen_row(const void *source, int kind, int64_t dim, float *out) {
    const uint16_t *half = (const uint16_t *)source;
    if (kind == KIND_BF16) {
        for (int64_t i = 0; i < dim; ++i) out[i] = bf16_to_f32(half[i]);
    } else {
        for (int64_t i = 0; i < dim; ++i) out[i] = f16_to_f32(half[i]);
    }
}

/* ---- torch's reductions, for a vector width W known at compile time ---- */

static int64_t ceil_log2(int64_t value) {
    if (value <= 2) return 1;
    int64_t bits = 0;
    for (uint64_t rest = (uint64_t)(value - 1); rest; rest >>= 1) ++bits;
    return bits;
}

/* One row's norm and its dot products with NP earlier rows (0, 1 or 2), in one loop over
 * the row: the norm's single chain of additions (torch keeps one accumulator) leaves time
 * for the dot products' four chains each. The rows are read in order, one after the other:
 * interleaving several rows' reads ran much slower on the machines measured. Accumulators
 * are locals so that they stay in registers; each reduction adds in torch's order. */
#define SQUARE_ONTO(W, acc, x)                                                               \
    do {                                                                                     \
        if (fused) {                                                                         \
            for (int lane = 0; lane < W; ++lane) acc[lane] = fmaf(x[lane], x[lane], acc[lane]); \
        } else {                                                                             \
            const vec##W square = x * x;                                                     \
            acc = acc + square;                                                              \
        }                                                                                    \
    } while (0)

/* torch's dot-product accumulators for one pair: level 0 in registers, levels 1..3 not. */
#define DOT_STATE(W, name)                                                                   \
    vec##W name##0 = {0}, name##1 = {0}, name##2 = {0}, name##3 = {0};                       \
    vec##W name##_upper[LEVELS][ILP];                                                        \
    memset(name##_upper, 0, sizeof name##_upper)

#define DOT_GROUP(W, name, partner, x0, x1, x2, x3, at)                                      \
    do {                                                                                     \
        const vec##W p0 = load##W(partner + at) * x0;                                        \
        const vec##W p1 = load##W(partner + at + W) * x1;                                    \
        const vec##W p2 = load##W(partner + at + 2 * W) * x2;                                \
        const vec##W p3 = load##W(partner + at + 3 * W) * x3;                                \
        name##0 = name##0 + p0;                                                              \
        name##1 = name##1 + p1;                                                              \
        name##2 = name##2 + p2;                                                              \
        name##3 = name##3 + p3;                                                              \
    } while (0)

/* after `done` groups, a multiple of the level step: fold level 0 up, as torch does */
#define DOT_FOLD(W, name, done)                                                              \
    do {                                                                                     \
        vec##W *up = name##_upper[1];                                                        \
        up[0] = up[0] + name##0;                                                             \
        up[1] = up[1] + name##1;                                                             \
        up[2] = up[2] + name##2;                                                             \
        up[3] = up[3] + name##3;                                                             \
        name##0 = name##1 = name##2 = name##3 = (vec##W){0};                                 \
        if (((done) & (mask << power)) == 0) {                                               \
            for (int level = 2; level < LEVELS; ++level) {                                   \
                for (int k = 0; k < ILP; ++k) {                                              \
                    name##_upper[level][k] = name##_upper[level][k] + name##_upper[level - 1][k]; \
                    name##_upper[level - 1][k] = (vec##W){0};                                \
                }                                                                            \
                if (((done) & (mask << (level * power))) != 0) break;                        \
            }                                                                                \
        }                                                                                    \
    } while (0)

#define DOT_FINISH(W, name, partner, out)                                                    \
    do {                                                                                     \
        for (int level = 1; level < LEVELS; ++level) {                                       \
            name##0 = name##0 + name##_upper[level][0];                                      \
            name##1 = name##1 + name##_upper[level][1];                                      \
            name##2 = name##2 + name##_upper[level][2];                                      \
            name##3 = name##3 + name##_upper[level][3];                                      \
        }                                                                                    \
        for (int64_t vector = groups * ILP; vector < vectors; ++vector) {                    \
            const vec##W product = load##W(partner + vector * W) * load##W(row + vector * W); \
            name##0 = name##0 + product;                                                     \
        }                                                                                    \
        name##0 = name##0 + name##1;                                                         \
        name##0 = name##0 + name##2;                                                         \
        name##0 = name##0 + name##3;                                                         \
        float total = 0.0f;                                                                  \
        for (int lane = 0; lane < W; ++lane) total = total + name##0[lane];                  \
        out = 0.0f + total;                                                                  \
    } while (0)

#define DEFINE_ROW_STATS(W, NP)                                                              \
    CLONES static void row_stats##NP##_w##W(const float *row, const float *const *partners,  \
                                            int64_t dim, int fused, float *norm,             \
                                            float *dots) {                                   \
        const int64_t vectors = dim / W, groups = vectors / ILP;                             \
        const int64_t power = ceil_log2(groups) / LEVELS > 4 ? ceil_log2(groups) / LEVELS   \
                                                             : 4;                            \
        const int64_t mask = ((int64_t)1 << power) - 1;                                      \
        const float *first = NP > 0 ? partners[0] : row, *second = NP > 1 ? partners[1] : row; \
        vec##W squares = {0};                                                                \
        DOT_STATE(W, a);                                                                     \
        DOT_STATE(W, b);                                                                     \
        for (int64_t group = 0; group < groups; ++group) {                                   \
            const int64_t at = group * ILP * W;                                              \
            const vec##W x0 = load##W(row + at), x1 = load##W(row + at + W);                 \
            const vec##W x2 = load##W(row + at + 2 * W), x3 = load##W(row + at + 3 * W);     \
            SQUARE_ONTO(W, squares, x0);                                                     \
            SQUARE_ONTO(W, squares, x1);                                                     \
            SQUARE_ONTO(W, squares, x2);                                                     \
            SQUARE_ONTO(W, squares, x3);                                                     \
            if (NP > 0) DOT_GROUP(W, a, first, x0, x1, x2, x3, at);                          \
            if (NP > 1) DOT_GROUP(W, b, second, x0, x1, x2, x3, at);                         \
            if (((group + 1) & mask) == 0) {                                                 \
                if (NP > 0) DOT_FOLD(W, a, group + 1);                                       \
                if (NP > 1) DOT_FOLD(W, b, group + 1);                                       \
            }                                                                                \
        }                                                                                    \
        for (int64_t vector = groups * ILP; vector < vectors; ++vector) {                    \
            const vec##W x = load##W(row + vector * W);                                      \
            SQUARE_ONTO(W, squares, x);                                                      \
        }                                                                                    \
        float total = squares[0];                                                            \
        for (int lane = 1; lane < W; ++lane) total = total + squares[lane];                  \
        *norm = sqrtf(total);                                                                \
        if (NP > 0) DOT_FINISH(W, a, first, dots[0]);                                        \
        if (NP > 1) DOT_FINISH(W, b, second, dots[1]);                                       \
    }

#define DEFINE_KERNELS(W)                                                                    \
    typedef float vec##W __attribute__((vector_size(W * 4)));                                \
    static inline vec##W load##W(const float *at) {                                          \
        vec##W value;                                                                        \
        memcpy(&value, at, sizeof value);                                                    \
        return value;                                                                        \
    }                                                                                        \
    DEFINE_ROW_STATS(W, 0)                                                                   \
    DEFINE_ROW_STATS(W, 1)                                                                   \
    DEFINE_ROW_STATS(W, 2)

DEFINE_KERNELS(8)
DEFINE_KERNELS(16)

typedef void (*row_stats_fn)(const float *, const float *const *, int64_t, int, float *,
                             float *);
static const row_stats_fn ROW_STATS[2][3] = {
    {row_stats0_w8, row_stats1_w8, row_stats2_w8},
    {row_stats0_w16, row_stats1_w16, row_stats2_w16},
};

/* ---- the sweep ---- */

typedef struct {
    const char *rows;       /* first row of the block */
    int64_t count;          /* rows in the block */
    const float *previous;  /* float32 rows just before the block (may be NULL) */
    int64_t previous_count;
    int kind;               /* KIND_* of the block's rows */
    int64_t dim;
    int width;              /* torch's vector width: 8 or 16 */
    int fused;              /* norm accumulates with a fused multiply-add */
    float *norms;           /* [count] */
    int distance_count;
    int64_t distances[MAX_DISTANCES];
    float *dots[MAX_DISTANCES]; /* dots[i][t] = row t · row t + d_i, t relative to the block */
} Sweep;

/* Row t of the sequence "previous rows, then the block" (t < 0: a previous row), widened
 * into window slot (t mod slots) when the block is in half precision. */
static const float *row_at(const Sweep *sweep, int64_t t, float *window, int64_t slots) {
    if (t < 0) return sweep->previous + (sweep->previous_count + t) * sweep->dim;
    if (sweep->kind == KIND_F32) return (const float *)sweep->rows + t * sweep->dim;
    return window + (t % slots) * sweep->dim;
}

static int run_sweep(const Sweep *sweep) {
    const int64_t dim = sweep->dim;
    int64_t reach = 0;
    for (int i = 0; i < sweep->distance_count; ++i)
        if (sweep->distances[i] > reach) reach = sweep->distances[i];
    const int64_t slots = reach + 1; /* half precision: widened rows, a row and its partners */
    float *window = NULL;
    if (sweep->kind != KIND_F32) {
        window = (float *)malloc((size_t)(slots * dim) * sizeof(float));
        if (window == NULL) return -1;
    }
    const row_stats_fn *row_stats = ROW_STATS[sweep->width == 16];
    const size_t row_bytes = (size_t)dim * (sweep->kind == KIND_F32 ? 4 : 2);
    const float *partners[MAX_DISTANCES];
    float dots[MAX_DISTANCES];
    int which[MAX_DISTANCES];
    for (int64_t t = 0; t < sweep->count; ++t) {
        if (window != NULL)
            widen_row(sweep->rows + (size_t)t * row_bytes, sweep->kind, dim,
                      window + (t % slots) * dim);
        int count = 0;
        for (int i = 0; i < sweep->distance_count; ++i) {
            if (t - sweep->distances[i] < -sweep->previous_count) continue;
            partners[count] = row_at(sweep, t - sweep->distances[i], window, slots);
            which[count++] = i;
        }
        const float *row = row_at(sweep, t, window, slots);
        /* the norm with the first two dot products; any others two at a time after it */
        int done = count < 2 ? count : 2;
        row_stats[done](row, partners, dim, sweep->fused, sweep->norms + t, dots);
        while (done < count) {
            float unused;
            const int more = count - done < 2 ? count - done : 2;
            row_stats[more](row, partners + done, dim, sweep->fused, &unused, dots + done);
            done += more;
        }
        for (int j = 0; j < count; ++j)
            sweep->dots[which[j]][t - sweep->distances[which[j]]] = dots[j];
    }
    free(window);
    return 0;
}

static PyObject *norms_and_dots(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long rows, previous, norms;
    PyObject *distances, *dots;
    Sweep sweep;
    memset(&sweep, 0, sizeof sweep);
    if (!PyArg_ParseTuple(args, "KLKLiLiiKOO", &rows, &sweep.count, &previous,
                          &sweep.previous_count, &sweep.kind, &sweep.dim, &sweep.width,
                          &sweep.fused, &norms, &distances, &dots))
        return NULL;
    if (!PyTuple_Check(distances) || !PyTuple_Check(dots) ||
        PyTuple_GET_SIZE(distances) != PyTuple_GET_SIZE(dots) ||
        PyTuple_GET_SIZE(distances) > MAX_DISTANCES) {
        PyErr_SetString(PyExc_ValueError, "distances and dots: equal tuples of at most 16");
        return NULL;
    }
    if ((sweep.width != 8 && sweep.width != 16) || sweep.dim <= 0 ||
        sweep.dim % sweep.width != 0 || sweep.kind < KIND_F32 || sweep.kind > KIND_BF16) {
        PyErr_SetString(PyExc_ValueError, "width must be 8 or 16 and divide dim; kind 0-2");
        return NULL;
    }
    sweep.distance_count = (int)PyTuple_GET_SIZE(distances);
    for (int i = 0; i < sweep.distance_count; ++i) {
        sweep.distances[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(distances, i));
        sweep.dots[i] = (float *)(uintptr_t)PyLong_AsUnsignedLongLong(PyTuple_GET_ITEM(dots, i));
        if (PyErr_Occurred()) return NULL;
        if (sweep.distances[i] <= 0) {
            PyErr_SetString(PyExc_ValueError, "distances must be positive");
            return NULL;
        }
    }
    sweep.rows = (const char *)(uintptr_t)rows;
    sweep.previous = (const float *)(uintptr_t)previous;
    sweep.norms = (float *)(uintptr_t)norms;
    int status;
    Py_BEGIN_ALLOW_THREADS
    status = run_sweep(&sweep);
    Py_END_ALLOW_THREADS
    if (status != 0) return PyErr_NoMemory();
    Py_RETURN_NONE;
}

/* ---- slot sums: rows added into their slots one after the other ----
 *
 * torch's CPU index_add_ along dim 0 adds one source row after the other; each element's
 * sum is then a chain of float32 additions in row order, which any vectorisation of the
 * row repeats exactly. No probe is needed here. */

CLONES static void add_row(float *into, const char *row, int kind, int64_t dim) {
    if (kind == KIND_F32) {
        const float *values = (const float *)row;
        for (int64_t i = 0; i < dim; ++i) into[i] = into[i] + values[i];
    } else if (kind == KIND_BF16) {
        const uint16_t *values = (const uint16_t *)row;
        for (int64_t i = 0; i < dim; ++i) into[i] = into[i] + bf16_to_f32(values[i]);
    } else {
        const uint16_t *values = (const uint16_t *)row;
        for (int64_t i = 0; i < dim; ++i) into[i] = into[i] + f16_to_f32(values[i]);
    }
}

/* Divide a finished slot by its size; whether every value stayed finite. */
CLONES static int divide_row(float *row, float size, int64_t dim) {
    int finite = 1;
    for (int64_t i = 0; i < dim; ++i) {
        row[i] = row[i] / size;
        finite &= isfinite(row[i]) != 0;
    }
    return finite;
}

/* Every row's slot lies in the destination (else an IndexError is set). */
static int slots_fit(const int64_t *slots, int64_t count, int64_t into_rows) {
    for (int64_t r = 0; r < count; ++r)
        if (slots[r] < 0 || slots[r] >= into_rows) {
            PyErr_SetString(PyExc_IndexError, "a row's slot is outside the destination");
            return 0;
        }
    return 1;
}

static PyObject *add_rows(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long into, rows, slot_of_row;
    long long into_rows, count, dim;
    int kind;
    if (!PyArg_ParseTuple(args, "KLKLiLK", &into, &into_rows, &rows, &count, &kind, &dim,
                          &slot_of_row))
        return NULL;
    if (kind < KIND_F32 || kind > KIND_BF16 || dim <= 0) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0-2 and dim positive");
        return NULL;
    }
    const int64_t *slots = (const int64_t *)(uintptr_t)slot_of_row;
    if (!slots_fit(slots, count, into_rows)) return NULL;
    float *sums = (float *)(uintptr_t)into;
    const char *source = (const char *)(uintptr_t)rows;
    const size_t row_bytes = (size_t)dim * (kind == KIND_F32 ? 4 : 2);
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < count; ++r)
        add_row(sums + slots[r] * dim, source + (size_t)r * row_bytes, kind, dim);
    Py_END_ALLOW_THREADS
    Py_RETURN_NONE;
}

static PyObject *means_in_order(PyObject *self, PyObject *args) {
    (void)self;
    unsigned long long into, rows, slot_of_row, complete_after, sizes_at;
    long long into_rows, count, dim, slots;
    int kind;
    if (!PyArg_ParseTuple(args, "KLKLiLKKLK", &into, &into_rows, &rows, &count, &kind, &dim,
                          &slot_of_row, &complete_after, &slots, &sizes_at))
        return NULL;
    if (kind < KIND_F32 || kind > KIND_BF16 || dim <= 0 || slots > into_rows) {
        PyErr_SetString(PyExc_ValueError, "kind must be 0-2, dim positive, slots <= rows");
        return NULL;
    }
    const int64_t *slot = (const int64_t *)(uintptr_t)slot_of_row;
    const int64_t *ready = (const int64_t *)(uintptr_t)complete_after;
    if (!slots_fit(slot, count, into_rows)) return NULL;
    float *sums = (float *)(uintptr_t)into;
    const float *sizes = (const float *)(uintptr_t)sizes_at;
    const char *source = (const char *)(uintptr_t)rows;
    const size_t row_bytes = (size_t)dim * (kind == KIND_F32 ? 4 : 2);
    int finite = 1;
    int64_t done = 0;
    Py_BEGIN_ALLOW_THREADS
    for (int64_t r = 0; r < count; ++r) {
        add_row(sums + slot[r] * dim, source + (size_t)r * row_bytes, kind, dim);
        for (; done < slots && ready[done] <= r; ++done)
            finite &= divide_row(sums + done * dim, sizes[done], dim);
    }
    for (; done < slots; ++done) finite &= divide_row(sums + done * dim, sizes[done], dim);
    Py_END_ALLOW_THREADS
    return PyBool_FromLong(finite);
}

static PyMethodDef METHODS[] = {
    {"norms_and_dots", norms_and_dots, METH_VARARGS,
     "norms_and_dots(rows, count, previous, previous_count, kind, dim, width, fused, norms, "
     "distances, dots): row norms and neighbour dot products, torch's values bit for bit."},
    {"add_rows", add_rows, METH_VARARGS,
     "add_rows(into, into_rows, rows, count, kind, dim, slot_of_row): into[slot_of_row[r]] += "
     "rows[r], one row after the other (index_add_ along dim 0, the same bits)."},
    {"means_in_order", means_in_order, METH_VARARGS,
     "means_in_order(into, into_rows, rows, count, kind, dim, slot_of_row, complete_after, "
     "slots, sizes): add_rows, dividing slot s by sizes[s] once row complete_after[s] is "
     "added; returns whether every mean is finite."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef MODULE = {
    PyModuleDef_HEAD_INIT, .m_name = "_native", .m_size = -1, .m_methods = METHODS,
};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&MODULE); }
