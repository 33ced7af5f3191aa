"""NumPy references for the K-type quantizers (tests only).

`quantize` is kquant.c's algorithm step by step in float64, vectorised over super-blocks (its
docstring's steps 1-3); `quantize_llamacpp_q4_k` is llama.cpp's quantize_row_q4_K_ref
(make_qkx2_quants: 21 grids, the float scales rounded to 6 bits), what moecc's must beat.
Both return the super-blocks' parts; `pack` makes ggml's bytes of them.
"""
import numpy as np

from moecc import storage

QK = storage.KBLOCK
REFINE = 4  # as kquant.c's KQ_REFINE
SHAPES = {  # values per sub-block, integer range, affine, sub-block scale range (kquant.c's kq_shape)
    "q4_k": (32, 0, 15, True, 0, 63),
    "q5_k": (32, 0, 31, True, 0, 63),
    "q6_k": (16, -32, 31, False, -128, 127),
}
GRIDS = {"q4_k": (-3.0, 0.1, 50), "q5_k": (-5.0, 0.1, 80), "q6_k": (-10.0, 0.2, 70)}  # first, delta, steps


def fp16(v):
    return np.asarray(v, np.float64).astype(np.float32).astype(np.float16).astype(np.float64)


def round_clamp(v, lo, hi):
    return np.rint(np.clip(v, lo, hi))


def weights(x, importance):
    """w_i = c_i * sqrt(sigma2 + x_i^2) per super-block: x [B, 256], importance [B, 256] or None"""
    sigma2 = (x * x).sum(axis=-1, keepdims=True) / QK
    return (1.0 if importance is None else importance) * np.sqrt(sigma2 + x * x)


def fit(x, w, L, affine):
    """(ok, s, m, err) of the weighted least-squares fit of each row of L: arrays [..., n]"""
    sw, sx, sxx = w.sum(-1), (w * x).sum(-1), (w * x * x).sum(-1)
    sl, sll, sxl = (w * L).sum(-1), (w * L * L).sum(-1), (w * x * L).sum(-1)
    ok = sll > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        s, m = sxl / sll, np.zeros_like(sll)
        if affine:
            D = sw * sll - sl * sl
            ok &= D > 0
            s2, m2 = (sw * sxl - sx * sl) / D, (sll * sx - sl * sxl) / D
            pos = m2 > 0
            s, m = np.where(pos, s, s2), np.where(pos, 0, m2)
        err = sxx - 2 * s * sxl - 2 * m * sx + s * s * sll + 2 * s * m * sl + m * m * sw
    return ok, s, m, err


def round_to(x, s, m, lo, hi):
    with np.errstate(divide="ignore", invalid="ignore"):
        inv = np.where(s != 0, 1 / s, 0)
    return round_clamp((x - m[..., None]) * inv[..., None], lo, hi)


def error_of(x, w, s, m, L):
    return (w * (s[..., None] * L + m[..., None] - x) ** 2).sum(-1)


def search_subblocks(x, w, name):
    """step 1: (s, m) of every sub-block, x and w [..., n]"""
    n, lo, hi, affine, _, _ = SHAPES[name]
    xmin, xmax = x.min(-1), x.max(-1)
    at = np.take_along_axis(x, np.abs(x).argmax(-1)[..., None], -1)[..., 0]
    if affine:
        xmin = np.minimum(xmin, 0)
    s, m = np.zeros(x.shape[:-1]), np.where(affine, xmin, 0) * np.ones(x.shape[:-1])
    rng = xmax - xmin if affine else -at
    live = (xmax != xmin) if affine else (np.abs(at) != 0)
    origin = xmin if affine else np.zeros_like(xmin)
    best = np.full(x.shape[:-1], np.inf)
    with np.errstate(divide="ignore", invalid="ignore"):
        first, delta, steps = GRIDS[name]
        for step in range(steps + 1):
            inv = ((hi if affine else -lo) + first + delta * step) / rng
            L = round_clamp(inv[..., None] * (x - origin[..., None]), lo, hi)
            ok, s2, m2, e = fit(x, w, L, affine)
            take = live & ok & (e < best)
            best, s, m = np.where(take, e, best), np.where(take, s2, s), np.where(take, m2, m)
    active = live & (s != 0)
    for _ in range(REFINE):
        L = round_to(x, s, m, lo, hi)
        ok, s2, m2, e = fit(x, w, L, affine)
        take = active & ok & (e < best)
        best, s, m = np.where(take, e, best), np.where(take, s2, s), np.where(take, m2, m)
        active = take
    return s, m


def pick(x, w, d, dmin, ls0, lm0, name):
    """step 2: (error per super-block, ls, lm, L): x, w [B, nsub, n], d, dmin [B], ls0, lm0 [B, nsub]"""
    n, lo, hi, affine, slo, shi = SHAPES[name]
    best = np.full(ls0.shape, np.inf)
    ls, lm, L = ls0.copy(), lm0.copy(), np.zeros(x.shape)
    for dls in (-1, 0, 1):
        for dlm in ((-1, 0, 1) if affine else (0,)):
            cls, clm = ls0 + dls, lm0 + dlm
            valid = (cls >= slo) & (cls <= shi) & (clm >= 0) & (clm <= 63)
            s, m = d[:, None] * cls, -dmin[:, None] * clm
            Lc = round_to(x, s, m, lo, hi)
            e = error_of(x, w, s, m, Lc)
            take = valid & (e < best)
            best = np.where(take, e, best)
            ls, lm = np.where(take, cls, ls), np.where(take, clm, lm)
            L = np.where(take[..., None], Lc, L)
    return best.sum(-1), ls, lm, L


def quantize(x, name, importance=None):
    """float32 [B, 256] -> parts {d, dmin [B], ls, lm [B, nsub], L [B, 256]} as kquant.c makes them
    (importance: [B, 256], each super-block's columns, or None)"""
    n, lo, hi, affine, slo, shi = SHAPES[name]
    x = np.asarray(x, np.float64)
    B = x.shape[0]
    w = weights(x, None if importance is None else np.asarray(importance, np.float64))
    xs, ws = x.reshape(B, -1, n), w.reshape(B, -1, n)
    s, m = search_subblocks(xs, ws, name)
    m = -m
    smax = np.take_along_axis(s, np.abs(s).argmax(-1)[:, None], -1)[:, 0]
    d = fp16(smax / 63 if affine else smax / -128)
    dmin = fp16(np.maximum(m.max(-1), 0) / 63)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls0 = np.where(d[:, None] != 0, round_clamp(s / d[:, None], slo, shi), 0).astype(np.int64)
        lm0 = np.where(dmin[:, None] != 0, round_clamp(m / dmin[:, None], 0, 63), 0).astype(np.int64)
    best, ls, lm, L = pick(xs, ws, d, dmin, ls0, lm0, name)
    active = np.ones(B, bool)
    for _ in range(REFINE):
        a = ls[..., None] * L
        b = -lm[..., None] * np.ones_like(L)
        saa, sab, sbb = [(ws * p * q).sum((-1, -2)) for p, q in ((a, a), (a, b), (b, b))]
        sax, sbx = (ws * a * xs).sum((-1, -2)), (ws * b * xs).sum((-1, -2))
        det = saa * sbb - sab * sab
        with np.errstate(divide="ignore", invalid="ignore"):
            if affine:
                d2 = np.where(det > 0, (sbb * sax - sab * sbx) / det, np.where(saa > 0, sax / saa, d))
                dmin2 = np.where(det > 0, (saa * sbx - sab * sax) / det, np.where(saa > 0, 0, dmin))
            else:
                d2, dmin2 = np.where(saa > 0, sax / saa, d), dmin
        d2, dmin2 = fp16(d2), fp16(dmin2)
        e, ls2, lm2, L2 = pick(xs, ws, d2, dmin2, ls, lm, name)
        take = active & (e < best)
        best, d, dmin = np.where(take, e, best), np.where(take, d2, d), np.where(take, dmin2, dmin)
        ls, lm = np.where(take[:, None], ls2, ls), np.where(take[:, None], lm2, lm)
        L = np.where(take[:, None, None], L2, L)
        active = take
    return {"d": d, "dmin": dmin, "ls": ls, "lm": lm, "L": L.reshape(B, QK).astype(np.int64)}


def quantize_llamacpp_q4_k(x):
    """llama.cpp's quantize_row_q4_K_ref in float64: per sub-block weights av_x + |x|,
    make_qkx2_quants(32, 15, rmin -1, rdelta 0.1, 20 steps), scales and mins rounded to 6 bits of
    max / 63, the values re-rounded under them."""
    x = np.asarray(x, np.float64)
    B = x.shape[0]
    xs = x.reshape(B, 8, 32)
    w = np.sqrt((xs * xs).mean(-1, keepdims=True)) + np.abs(xs)
    xmin, xmax = np.minimum(xs.min(-1), 0), xs.max(-1)
    live = xmax != xmin
    best, s, m = np.full((B, 8), np.inf), np.zeros((B, 8)), xmin.copy()
    with np.errstate(divide="ignore", invalid="ignore"):
        # make_qkx2_quants starts from the plain grid iscale = 15 / range, with scale = 1 / iscale
        L = round_clamp(15 / (xmax - xmin)[..., None] * (xs - xmin[..., None]), 0, 15)
        s0 = (xmax - xmin) / 15
        e0 = error_of(xs, w, s0, xmin, L)
        best, s = np.where(live, e0, best), np.where(live, s0, s)
        for step in range(21):
            inv = (-1 + 0.1 * step + 15) / (xmax - xmin)
            L = round_clamp(inv[..., None] * (xs - xmin[..., None]), 0, 15)
            ok, s2, m2, _ = fit(xs, w, L, True)
            e = error_of(xs, w, s2, m2, L)
            take = live & ok & (e < best)
            best, s, m = np.where(take, e, best), np.where(take, s2, s), np.where(take, m2, m)
    m = -m
    smax, mmax = s.max(-1), m.max(-1)
    with np.errstate(divide="ignore", invalid="ignore"):
        ls = np.where(smax[:, None] > 0, np.minimum(63, np.rint(63 / smax[:, None] * s)), 0).astype(np.int64)
        lm = np.where(mmax[:, None] > 0, np.minimum(63, np.rint(63 / mmax[:, None] * m)), 0).astype(np.int64)
    d, dmin = fp16(smax / 63), fp16(mmax / 63)
    L = round_to(xs, d[:, None] * ls, -dmin[:, None] * lm, 0, 15)
    return {"d": d, "dmin": dmin, "ls": ls, "lm": lm, "L": L.reshape(B, QK).astype(np.int64)}


def decode(parts, name):
    """the values the parts stand for, float64 [B, 256]"""
    n = SHAPES[name][0]
    B = parts["L"].shape[0]
    L = parts["L"].reshape(B, -1, n)
    y = parts["d"][:, None, None] * parts["ls"][..., None] * L
    if SHAPES[name][3]:
        y = y - parts["dmin"][:, None, None] * parts["lm"][..., None]
    return y.reshape(B, QK)


def pack(parts, name):
    """ggml's bytes of the parts: uint8 [B, block_bytes]"""
    B = parts["L"].shape[0]
    L = parts["L"]
    f16 = lambda v: v.astype(np.float32).astype(np.float16).view(np.uint8).reshape(B, 2)
    if name == "q6_k":
        q = (L + 32).astype(np.uint8).reshape(B, 2, 4, 32)  # [half, i, l]
        ql = np.concatenate([q[:, :, 0] & 15 | (q[:, :, 2] & 15) << 4,
                             q[:, :, 1] & 15 | (q[:, :, 3] & 15) << 4], axis=-1).reshape(B, 128)
        qh = (q[:, :, 0] >> 4 | (q[:, :, 1] >> 4) << 2 | (q[:, :, 2] >> 4) << 4 | (q[:, :, 3] >> 4) << 6)
        return np.concatenate([ql, qh.reshape(B, 64), parts["ls"].astype(np.int8).view(np.uint8),
                               f16(parts["d"])], axis=-1)
    ls, lm = parts["ls"].astype(np.uint8), parts["lm"].astype(np.uint8)
    scales = np.concatenate([ls[:, :4] | (ls[:, 4:] >> 4) << 6, lm[:, :4] | (lm[:, 4:] >> 4) << 6,
                             (ls[:, 4:] & 15) | (lm[:, 4:] & 15) << 4], axis=-1)
    q = L.astype(np.uint8).reshape(B, 4, 2, 32)  # [c, low / high, l]
    qs = ((q[:, :, 0] & 15) | (q[:, :, 1] & 15) << 4).reshape(B, 128)
    head = [f16(parts["d"]), f16(parts["dmin"]), scales]
    if name == "q5_k":
        bits = (L.reshape(B, 8, 32) >> 4) & 1  # [j, l]
        qh = (bits.astype(np.uint8) << np.arange(8, dtype=np.uint8)[:, None]).sum(1).astype(np.uint8)
        head.append(qh)
    return np.concatenate(head + [qs], axis=-1)
