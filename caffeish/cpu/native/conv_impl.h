/* One element type's kernels; included by conv.c with T (element type), VL (lanes) and SFX defined. */
#define CAT2(a, b) a##_##b
#define CAT(a, b) CAT2(a, b)
#define F(name) CAT(name, SFX)
#define V F(vec)
#define VU F(uvec)

typedef T V __attribute__((vector_size(VEC_BYTES)));
typedef T VU __attribute__((vector_size(VEC_BYTES), aligned(sizeof(T))));  /* unaligned loads */

/* geometry g[]: n, C, H, W, M, G, KH, KW, ph, pw, dh, dw, Ho, Wo (unit strides; Wp = W + 2 pw =
 * Wo + dw (KW - 1), Hp = H + 2 ph = Ho + dh (KH - 1)) */
typedef struct {
    idx_t n, C, H, W, M, G, KH, KW, ph, pw, dh, dw, Ho, Wo;
    idx_t Hp, Wp, plane, image, Cg, Mg, K, nseg;
    idx_t *start, *koff, *lane;  /* segment starts, per-k offsets in P, per-lane output index or -1 */
} F(geom);

static void F(geom_free)(F(geom) *q) { free(q->start); free(q->koff); free(q->lane); }

static int F(geom_init)(F(geom) *q, const idx_t *g)
{
    q->n = g[0]; q->C = g[1]; q->H = g[2]; q->W = g[3]; q->M = g[4]; q->G = g[5]; q->KH = g[6]; q->KW = g[7];
    q->ph = g[8]; q->pw = g[9]; q->dh = g[10]; q->dw = g[11]; q->Ho = g[12]; q->Wo = g[13];
    q->Hp = q->H + 2 * q->ph;
    q->Wp = q->W + 2 * q->pw;
    q->plane = q->Hp * q->Wp;
    q->image = q->C * q->plane + 2 * VL;   /* slack: the last segment's lanes read past the grid */
    q->Cg = q->C / q->G;
    q->Mg = q->M / q->G;
    q->K = q->Cg * q->KH * q->KW;
    idx_t most = q->Ho * ((q->Wo + VL - 1) / VL);
    q->start = malloc(sizeof(idx_t) * most);
    q->koff = malloc(sizeof(idx_t) * q->K);
    q->lane = malloc(sizeof(idx_t) * most * VL);
    if (!q->start || !q->koff || !q->lane) { F(geom_free)(q); return -1; }
    for (idx_t c = 0, k = 0; c < q->Cg; c++)
        for (idx_t i = 0; i < q->KH; i++)
            for (idx_t j = 0; j < q->KW; j++, k++)
                q->koff[k] = c * q->plane + i * q->dh * q->Wp + j * q->dw;
    /* greedy cover of the valid outputs, in padded-grid order, by runs of VL */
    idx_t count = 0, end = 0;
    for (idx_t oy = 0; oy < q->Ho; oy++)
        for (idx_t ox = 0; ox < q->Wo; ox++) {
            idx_t at = oy * q->Wp + ox;
            if (count && at < end) continue;
            q->start[count++] = at;
            end = at + VL;
        }
    q->nseg = count;
    for (idx_t s = 0; s < count; s++)
        for (idx_t i = 0; i < VL; i++) {
            idx_t at = q->start[s] + i, oy = at / q->Wp, ox = at % q->Wp;
            q->lane[s * VL + i] = (oy < q->Ho && ox < q->Wo) ? oy * q->Wo + ox : -1;
        }
    return 0;
}

/* P <- image x (C, H, W) zero-padded to (C, Hp, Wp), plus zeroed slack */
static void F(pad)(const F(geom) *q, const T *x, T *p)
{
    memset(p, 0, sizeof(T) * q->image);
    for (idx_t c = 0; c < q->C; c++)
        for (idx_t y = 0; y < q->H; y++)
            memcpy(p + c * q->plane + (y + q->ph) * q->Wp + q->pw, x + (c * q->H + y) * q->W, sizeof(T) * q->W);
}

/* acc[r][v] = sum_k a[k mr + r] * P[koff[k] + s[v] .. + VL) for mr <= MR rows and nv <= NV segments */
static inline __attribute__((always_inline)) void F(fwd_tile)(const T *restrict a, idx_t K, const T *restrict p,
        const idx_t *restrict koff, const idx_t *restrict s, T *restrict out, const int mr, const int nv)
{
    V acc[MR][NV];
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) acc[r][v] = (V){0};
    for (idx_t k = 0; k < K; k++) {
        const T *row = p + koff[k];
        V b[NV];
        for (int v = 0; v < nv; v++) b[v] = *(const VU *)(row + s[v]);
        for (int r = 0; r < mr; r++) {
            V w = a[k * mr + r] - (V){0};  /* a broadcast: x - 0 folds to x, x + 0 does not (-0) */
            for (int v = 0; v < nv; v++) acc[r][v] += w * b[v];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int v = 0; v < nv; v++) *(VU *)(out + (r * NV + v) * VL) = acc[r][v];
}

#define FWD_NV(mr) do { \
        if (nv == NV) F(fwd_tile)(a, K, p, koff, s, out, mr, NV); \
        else if (nv == 2) F(fwd_tile)(a, K, p, koff, s, out, mr, 2); \
        else F(fwd_tile)(a, K, p, koff, s, out, mr, 1); \
    } while (0)

/* The specialisations: full MR-row blocks, and a half block for the last rows (few output channels,
 * e.g. an RGB input's gradient, would otherwise multiply mostly zero rows). */
static inline __attribute__((always_inline)) void F(fwd_tile_any)(const T *a, idx_t K, const T *p, const idx_t *koff,
        const idx_t *s, T *out, int mr, int nv)
{
    if (mr == MR) FWD_NV(MR);
    else FWD_NV(MR / 2);
}
#undef FWD_NV

/* rows in the block starting at m0: MR, or MR / 2 when that covers what is left */
static inline int F(block_rows)(idx_t left) { return left <= MR / 2 ? MR / 2 : MR; }

/* y rows m0 .. m0 + rows of one image <- a tile's accumulators (+ bias); lanes off the outputs dropped */
static inline __attribute__((always_inline)) void F(store_tile)(const F(geom) *q, const T *tile, idx_t t, int nv, idx_t m0, idx_t rows, const T *bias, T *yi)
{
    idx_t out_plane = q->Ho * q->Wo;
    for (idx_t r = 0; r < rows; r++) {
        T b = bias ? bias[m0 + r] : 0;
        T *ym = yi + (m0 + r) * out_plane;
        for (int v = 0; v < nv; v++) {
            const idx_t *lane = q->lane + (t * NV + v) * VL;
            const T *src = tile + (r * NV + v) * VL;
            if (lane[0] >= 0 && lane[VL - 1] == lane[0] + VL - 1) {  /* within one output row */
                *(VU *)(ym + lane[0]) = *(const VU *)src + b;
                continue;
            }
            for (int l = 0; l < VL; l++)
                if (lane[l] >= 0) ym[lane[l]] = src[l] + b;
        }
    }
}

/* y (n, M, Ho, Wo) = correlation of x (n, C, H, W) with w (M, C/G, KH, KW) per group, + bias (M or NULL).
 * Part `part` of `parts`: each image's tiles of segments are dealt out, so that threads can share an image.
 * (Blocking K for the caches measured no faster, even on VGG's 224-px layers: the weight panels stream.) */
int F(caffeish_conv_forward)(const idx_t *g, const T *x, const T *w, const T *bias, T *y, idx_t part, idx_t parts)
{
    F(geom) q;
    if (F(geom_init)(&q, g)) return -1;
    idx_t mblocks = (q.Mg + MR - 1) / MR, ntiles = (q.nseg + NV - 1) / NV;
    idx_t t_lo = ntiles * part / parts, t_hi = ntiles * (part + 1) / parts;
    T *p = malloc(sizeof(T) * q.image);
    T *a = malloc(sizeof(T) * q.G * mblocks * q.K * MR);  /* weights packed k-major in row panels */
    T tile[MR * NV * VL];
    if (!p || !a) { free(p); free(a); F(geom_free)(&q); return -1; }
    for (idx_t gi = 0; gi < q.G; gi++)
        for (idx_t mb = 0; mb < mblocks; mb++) {
            int mr = F(block_rows)(q.Mg - mb * MR);
            T *panel = a + (gi * mblocks + mb) * q.K * MR;
            for (idx_t k = 0; k < q.K; k++)
                for (idx_t r = 0; r < mr; r++) {
                    idx_t m = mb * MR + r;
                    panel[k * mr + r] = m < q.Mg ? w[(gi * q.Mg + m) * q.K + k] : 0;
                }
        }
    for (idx_t i = 0; i < q.n; i++) {
        F(pad)(&q, x + i * q.C * q.H * q.W, p);
        T *yi = y + i * q.M * q.Ho * q.Wo;
        for (idx_t gi = 0; gi < q.G; gi++)
            for (idx_t t = t_lo; t < t_hi; t++) {
                int nv = q.nseg - t * NV < NV ? (int)(q.nseg - t * NV) : NV;
                for (idx_t mb = 0; mb < mblocks; mb++) {
                    F(fwd_tile_any)(a + (gi * mblocks + mb) * q.K * MR, q.K, p + gi * q.Cg * q.plane, q.koff,
                                    q.start + t * NV, tile, F(block_rows)(q.Mg - mb * MR), nv);
                    F(store_tile)(&q, tile, t, nv, gi * q.Mg + mb * MR, q.Mg - mb * MR < MR ? q.Mg - mb * MR : MR,
                                  bias, yi);
                }
            }
    }
    free(p); free(a); F(geom_free)(&q);
    return 0;
}

static inline T F(hsum)(V v)
{
    T s = 0;
    for (int l = 0; l < VL; l++) s += v[l];
    return s;
}

/* acc[r][j] = sum over images b and segments v of d[b][r][v] * P[b][koff[j] + start[v]]; dw[r][j] += hsum */
static inline __attribute__((always_inline)) void F(dw_block)(const T *const *d, idx_t dstride, const T *p,
        idx_t pstride, idx_t nimg, const idx_t *koff, const idx_t *start, idx_t nseg, T *dw, idx_t ldw, int mr, int kr)
{
    V acc[MRW][KR];
    for (int r = 0; r < MRW; r++)
        for (int j = 0; j < KR; j++) acc[r][j] = (V){0};
    for (idx_t b = 0; b < nimg; b++) {
        const T *pb = p + b * pstride;
        const T *rows[KR];
        for (int j = 0; j < KR; j++) rows[j] = pb + koff[j < kr ? j : 0];
        for (idx_t v = 0; v < nseg; v++) {
            V dv[MRW], pv[KR];
            for (int r = 0; r < MRW; r++) dv[r] = *(const V *)(d[r] + b * dstride + v * VL);
            for (int j = 0; j < KR; j++) pv[j] = *(const VU *)(rows[j] + start[v]);
            for (int r = 0; r < MRW; r++)
                for (int j = 0; j < KR; j++) acc[r][j] += dv[r] * pv[j];
        }
    }
    for (int r = 0; r < mr; r++)
        for (int j = 0; j < kr; j++) dw[r * ldw + j] += F(hsum)(acc[r][j]);
}

/* dw (M, C/G, KH, KW) += the weight gradient of the forward above, from x and dy (n, M, Ho, Wo).
 * Part `part` of `parts`: the output channels of every group are dealt out in MRW-row blocks, so that
 * threads sharing the same images add into disjoint rows of dw. */
int F(caffeish_conv_backward_weights)(const idx_t *g, const T *x, const T *dy, T *dw, idx_t images_per_block,
                                      idx_t part, idx_t parts)
{
    F(geom) q;
    if (F(geom_init)(&q, g)) return -1;
    idx_t nb = images_per_block < 1 ? 1 : (images_per_block > q.n ? q.n : images_per_block);
    idx_t seg_len = q.nseg * VL, out_plane = q.Ho * q.Wo;
    idx_t dstride = q.M * seg_len;                            /* per image, in the packed dY */
    idx_t mblocks = (q.Mg + MRW - 1) / MRW;
    idx_t m_lo = mblocks * part / parts * MRW, m_hi = mblocks * (part + 1) / parts * MRW;
    m_hi = m_hi < q.Mg ? m_hi : q.Mg;
    T *p = malloc(sizeof(T) * nb * q.image);
    T *d = aligned_alloc(VEC_BYTES, sizeof(T) * ((nb * dstride + VL - 1) / VL * VL));
    if (!p || !d) { free(p); free(d); F(geom_free)(&q); return -1; }
    for (idx_t i0 = 0; i0 < q.n && m_lo < m_hi; i0 += nb) {
        idx_t cnt = q.n - i0 < nb ? q.n - i0 : nb;
        for (idx_t b = 0; b < cnt; b++) {
            F(pad)(&q, x + (i0 + b) * q.C * q.H * q.W, p + b * q.image);
            const T *src = dy + (i0 + b) * q.M * out_plane;
            T *dst = d + b * dstride;
            for (idx_t gi = 0; gi < q.G; gi++)
                for (idx_t m = gi * q.Mg + m_lo; m < gi * q.Mg + m_hi; m++)
                    for (idx_t s = 0; s < seg_len; s++) {
                        idx_t at = q.lane[s];
                        dst[m * seg_len + s] = at >= 0 ? src[m * out_plane + at] : 0;
                    }
        }
        for (idx_t gi = 0; gi < q.G; gi++) {
            const T *pg = p + gi * q.Cg * q.plane;
            for (idx_t m0 = m_lo; m0 < m_hi; m0 += MRW) {
                int mr = m_hi - m0 < MRW ? (int)(m_hi - m0) : MRW;
                const T *rows[MRW];
                for (int r = 0; r < MRW; r++) rows[r] = d + (gi * q.Mg + m0 + (r < mr ? r : 0)) * seg_len;
                T *dwm = dw + (gi * q.Mg + m0) * q.K;
                for (idx_t k0 = 0; k0 < q.K; k0 += KR) {
                    int kr = q.K - k0 < KR ? (int)(q.K - k0) : KR;
                    if (mr == MRW && kr == KR)
                        F(dw_block)(rows, dstride, pg, q.image, cnt, q.koff + k0, q.start, q.nseg,
                                    dwm + k0, q.K, MRW, KR);
                    else
                        F(dw_block)(rows, dstride, pg, q.image, cnt, q.koff + k0, q.start, q.nseg,
                                    dwm + k0, q.K, mr, kr);
                }
            }
        }
    }
    free(p); free(d); F(geom_free)(&q);
    return 0;
}

#undef V
#undef VU
#undef F
#undef CAT
#undef CAT2
