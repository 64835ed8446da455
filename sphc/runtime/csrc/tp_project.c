/* The fused tensor product + uniform projection of the efficient layer on the CPU, and its backward.
 *
 * Why C: the torch formulation (fast_tp.py) needs ~50 small ops per degree pair, so a step of
 * examples/mnist.sph spends a third of its time in per-op overhead and the products travel
 * through memory between ops (benchmarks/notes_cpu.md, "The 2-thread gap"). Here every product,
 * CG sum and projection of one block of W batch lanes stays in registers and L1, and the lane
 * blocks are shared out over the OpenMP threads torch itself uses (the same libgomp).
 *
 * Layout (built by cpu_kernels.py): complex tensors as split planes with the batch·channel lanes
 * last, x[l][m + L_in - 1][t][re/im][lane], out / grad out[l][m + L - 1][v][re/im][lane]; lanes is a
 * multiple of W. One row of pairs[6] per column pair of every path: output degree l, the entries
 * x_a[la][0][t_a] and x_b[lb][0][t_b] (counted in (m, t) entries), first CG term and term count of its
 * path, row of u (l · width + output column). A term is (m_a + L_in − 1, m_b + L_in − 1, m + l) with
 * its value in coef. Orders |m| > l are never read, and written as zeros. Same function as ops._tp_project_reference (docs/CONVENTIONS.md §5, §7.4, §7.5);
 * gradients in torch's convention, grad a = grad y · conj(∂y/∂a).
 *
 * Blocks are handed out dynamically: on a shared VM a second thread can wake late (measured:
 * benchmarks/notes_cpu.md), and the first thread then takes its blocks instead of waiting. The result
 * does not depend on which thread ran a block (grad u is summed per block, in block order).
 *
 * The file is compiled once per REAL (float, double): see the self-include at the end.
 */
#ifdef REAL

#define CAT2(a, b) a##b
#define CAT(a, b) CAT2(a, b)

/* S[m][re/im][lane] = Σ_terms c · x_a · x_b over one column pair, for one lane block. */
static inline void CAT(cg_sums, SUFFIX)(REAL *restrict S, int nm, const REAL *restrict x, ptrdiff_t lanes,
                                        const int *restrict term, const REAL *restrict coef, int n_terms,
                                        ptrdiff_t a_col, ptrdiff_t b_col, ptrdiff_t row) {
    memset(S, 0, sizeof(REAL) * (size_t)nm * 2 * W);
    for (int t = 0; t < n_terms; t++) {
        const REAL *a = x + a_col + term[3 * t] * row;
        const REAL *b = x + b_col + term[3 * t + 1] * row;
        REAL *s = S + 2 * W * term[3 * t + 2];
        const REAL c = coef[t];
        for (int q = 0; q < W; q++) {
            const REAL ar = a[q], ai = a[lanes + q], br = b[q], bi = b[lanes + q];
            s[q] += c * (ar * br - ai * bi);
            s[W + q] += c * (ar * bi + ai * br);
        }
    }
}

/* Zero one lane block of every row of t (rows × re/im × lanes). */
static inline void CAT(zero_block, SUFFIX)(REAL *restrict t, ptrdiff_t rows, ptrdiff_t lanes, ptrdiff_t q0) {
    for (ptrdiff_t r = 0; r < rows; r++) {
        memset(t + 2 * r * lanes + q0, 0, sizeof(REAL) * W);
        memset(t + (2 * r + 1) * lanes + q0, 0, sizeof(REAL) * W);
    }
}

/* grad x_a += c gS[m] conj(x_b), grad x_b += c gS[m] conj(x_a) over the terms of one column pair. */
static inline void CAT(grad_x, SUFFIX)(REAL *restrict gx, const REAL *restrict x, const REAL *restrict gS,
                                       ptrdiff_t lanes, const int *restrict term, const REAL *restrict coef,
                                       int n_terms, ptrdiff_t a_col, ptrdiff_t b_col, ptrdiff_t row) {
    for (int t = 0; t < n_terms; t++) {
        const ptrdiff_t at_a = a_col + term[3 * t] * row, at_b = b_col + term[3 * t + 1] * row;
        const REAL *a = x + at_a, *b = x + at_b, *gs = gS + 2 * W * term[3 * t + 2];
        const REAL c = coef[t];
        REAL gr[W], gi[W];
        for (int q = 0; q < W; q++) {
            gr[q] = c * gs[q];
            gi[q] = c * gs[W + q];
        }
        REAL *ga = gx + at_a; /* separate loops: x_a and x_b may be the same entry */
        for (int q = 0; q < W; q++) {
            ga[q] += gr[q] * b[q] + gi[q] * b[lanes + q];
            ga[lanes + q] += gi[q] * b[q] - gr[q] * b[lanes + q];
        }
        REAL *gb = gx + at_b;
        for (int q = 0; q < W; q++) {
            gb[q] += gr[q] * a[q] + gi[q] * a[lanes + q];
            gb[lanes + q] += gi[q] * a[q] - gr[q] * a[lanes + q];
        }
    }
}

void CAT(tp_project_forward, SUFFIX)(const REAL *restrict x, const REAL *restrict u, REAL *restrict out,
                                     const int *restrict pairs, int n_pairs, const int *restrict terms,
                                     const REAL *restrict coef, int T, int L, int tau_u, int lanes) {
    const int M = 2 * L - 1;
    const ptrdiff_t plane = lanes, entry = 2 * (ptrdiff_t)lanes;
    const ptrdiff_t out_rows = (ptrdiff_t)L * M * tau_u;
#pragma omp parallel for schedule(dynamic, 1)
    for (int blk = 0; blk < lanes / W; blk++) {
        const ptrdiff_t q0 = (ptrdiff_t)blk * W;
        REAL S[2 * W * (2 * L - 1)];
        CAT(zero_block, SUFFIX)(out, out_rows, lanes, q0);
        for (int k = 0; k < n_pairs; k++) {
            const int *Q = pairs + 6 * k;
            const int l = Q[0], nm = 2 * l + 1;
            const ptrdiff_t a_col = Q[1] * entry + q0, b_col = Q[2] * entry + q0;
            CAT(cg_sums, SUFFIX)(S, nm, x, plane, terms + 3 * Q[3], coef + Q[3], Q[4], a_col, b_col, T * entry);
            const REAL *uu = u + 2 * (ptrdiff_t)Q[5] * tau_u;
            for (int v = 0; v < tau_u; v++) {
                const REAL ur = uu[2 * v], ui = uu[2 * v + 1];
                for (int mo = 0; mo < nm; mo++) {
                    REAL *o = out + ((ptrdiff_t)(l * M + L - 1 - l + mo) * tau_u + v) * entry + q0;
                    const REAL *s = S + 2 * W * mo;
                    for (int q = 0; q < W; q++) {
                        o[q] += ur * s[q] - ui * s[W + q];
                        o[plane + q] += ur * s[W + q] + ui * s[q];
                    }
                }
            }
        }
    }
}

/* grad x (the x layout, zero where no term reads) and grad u, one partial sum per lane block
 * (gu_blocks[blk][l][col][v][re/im], summed by the caller: deterministic, no atomics). */
void CAT(tp_project_backward, SUFFIX)(const REAL *restrict x, const REAL *restrict u, const REAL *restrict g,
                                      REAL *restrict gx, REAL *restrict gu_blocks, const int *restrict pairs,
                                      int n_pairs, const int *restrict terms, const REAL *restrict coef,
                                      int L_in, int T, int L, int width, int tau_u, int lanes) {
    const int M_in = 2 * L_in - 1, M = 2 * L - 1;
    const ptrdiff_t plane = lanes, entry = 2 * (ptrdiff_t)lanes;
    const ptrdiff_t x_rows = (ptrdiff_t)L_in * M_in * T, gu_size = 2 * (ptrdiff_t)L * width * tau_u;
#pragma omp parallel for schedule(dynamic, 1)
    for (int blk = 0; blk < lanes / W; blk++) {
        const ptrdiff_t q0 = (ptrdiff_t)blk * W;
        REAL S[2 * W * (2 * L - 1)], gS[2 * W * (2 * L - 1)];
        REAL *gu = gu_blocks + blk * gu_size;
        memset(gu, 0, sizeof(REAL) * gu_size);
        CAT(zero_block, SUFFIX)(gx, x_rows, lanes, q0);
        for (int k = 0; k < n_pairs; k++) {
            const int *Q = pairs + 6 * k;
            const int l = Q[0], nm = 2 * l + 1;
            const ptrdiff_t a_col = Q[1] * entry + q0, b_col = Q[2] * entry + q0, row = T * entry;
            const int *term = terms + 3 * Q[3];
            const REAL *c = coef + Q[3];
            CAT(cg_sums, SUFFIX)(S, nm, x, plane, term, c, Q[4], a_col, b_col, row);
            /* gS = Σ_v g[m, v] conj(u[v]);  grad u[v] = Σ_{m, lanes} g[m, v] conj(S[m]) */
            memset(gS, 0, sizeof(REAL) * (size_t)nm * 2 * W);
            const ptrdiff_t u_at = 2 * (ptrdiff_t)Q[5] * tau_u;
            for (int v = 0; v < tau_u; v++) {
                const REAL ur = u[u_at + 2 * v], ui = u[u_at + 2 * v + 1];
                REAL acc_r[W], acc_i[W];
                memset(acc_r, 0, sizeof acc_r);
                memset(acc_i, 0, sizeof acc_i);
                for (int mo = 0; mo < nm; mo++) {
                    const REAL *gg = g + ((ptrdiff_t)(l * M + L - 1 - l + mo) * tau_u + v) * entry + q0;
                    const REAL *s = S + 2 * W * mo;
                    REAL *gs = gS + 2 * W * mo;
                    for (int q = 0; q < W; q++) {
                        const REAL gr = gg[q], gi = gg[plane + q];
                        gs[q] += gr * ur + gi * ui;
                        gs[W + q] += gi * ur - gr * ui;
                        acc_r[q] += gr * s[q] + gi * s[W + q];
                        acc_i[q] += gi * s[q] - gr * s[W + q];
                    }
                }
                REAL sr = 0, si = 0;
                for (int q = 0; q < W; q++) {
                    sr += acc_r[q];
                    si += acc_i[q];
                }
                gu[u_at + 2 * v] += sr;
                gu[u_at + 2 * v + 1] += si;
            }
            CAT(grad_x, SUFFIX)(gx, x, gS, plane, term, c, Q[4], a_col, b_col, row);
        }
    }
}

#undef CAT
#undef CAT2

#else /* the file's entry: one copy of the kernels per precision */

#include <stddef.h>
#include <string.h>

#ifndef W
#define W 32 /* lanes per block: a few SIMD registers of the batch·channel axis */
#endif

#define REAL float
#define SUFFIX _f32
#include "tp_project.c" /* this file again, as the kernels of one precision */
#undef REAL
#undef SUFFIX
#define REAL double
#define SUFFIX _f64
#include "tp_project.c" /* this file again, as the kernels of one precision */
#undef REAL
#undef SUFFIX

#endif
