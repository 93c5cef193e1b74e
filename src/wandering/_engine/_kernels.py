"""Numba CPU kernels for bump sums with P outputs (forward and recomputing backward).

Layout: a block of points is copied to (d, nb) and parameters are (d, K), so every
inner loop runs over contiguous 1-D buffers starting at index 0 (LLVM only
vectorised those here). Each (point, bump) exp and support test is computed once
per block and then serves all P outputs. The exp is a branch-free scalar
polynomial (float32 and float64) that LLVM inlines and vectorises; fusing the
whole pair (distance, test, exp, sums) into one loop per bump was measured no
faster than these L1-resident passes. P == 1 has its own fused loops; P > 1 shares
the exp across (P, nb) accumulators.

Determinism: work is cut into a fixed number of partitions that depends only on
the problem (never on the thread count); each partition accumulates its parameter
gradients sequentially into its own float64 partial buffer, and the caller reduces
the partials in partition order. Points are owned by exactly one partition, so y
and grad x have no races either. Results are therefore bitwise independent of the
number of threads.

``half`` holds the support half-widths (+inf for the exact sum); the support
test ``abs(x - c) < half`` is the reference's float op. ``iw`` is 1/w clamped
to the largest finite float, so a tiny width gives a huge but finite z.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.extending import intrinsic, overload

# Everything but nnan/ninf: the kernels rely on inf/NaN comparing as IEEE says.
FM = {"nsz", "arcp", "contract", "afn", "reassoc"}
FM_EXP = {"nsz", "contract"}  # no reassoc: it would undo the Cody-Waite split
_B = 256  # points per block: buffers stay in L1
_BUCKETS = 256  # first-pass buckets of the binning sort (write streams that stay cached)

# exp(-s) in float32: 2**n * p(r), r = -s - n*ln2, |r| <= ln2/2 (Cephes-style minimax).
_LOG2E = np.float32(1.4426950408889634)
_LN2_HI = np.float32(0.693359375)
_LN2_LO = np.float32(-2.12194440e-4)
_P0 = np.float32(1.9875691500e-4)
_P1 = np.float32(1.3981999507e-3)
_P2 = np.float32(8.3334519073e-3)
_P3 = np.float32(4.1665795894e-2)
_P4 = np.float32(1.6666665459e-1)
_P5 = np.float32(5.0000001201e-1)
_ONE32 = np.float32(1.0)
_HALF32 = np.float32(0.5)
_LIM32 = np.float32(87.0)  # below exp(-87) we return 0 (no denormals)
# exp(-s) in float64: the same scheme with fdlibm's split of ln2 and Taylor terms to r**13
# (|r| <= 0.347: truncation below 1e-17); n comes from the 1.5 * 2**52 rounding trick.
_LIM64 = 708.0
_LOG2E64 = 1.4426950408889634
_LN2_HI64 = 6.93147180369123816490e-01
_LN2_LO64 = 1.90821492927058770002e-10
_ROUND64 = 6755399441055744.0  # 1.5 * 2**52: x + it rounds x to an integer in the low bits
_ROUND64_BITS = 0x4338000000000000
_INV_FACT = tuple(1.0 / math.factorial(i) for i in range(14))


@intrinsic
def _f32_from_bits(typingctx, bits):
    """The low 32 bits of an integer read as a float32 (LLVM bitcast: stays in vector registers)."""
    if not isinstance(bits, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        v = args[0]
        if bits.bitwidth > 32:
            v = builder.trunc(v, ir.IntType(32))
        elif bits.bitwidth < 32:
            v = builder.sext(v, ir.IntType(32))
        return builder.bitcast(v, ir.FloatType())

    return types.float32(bits), codegen


@intrinsic
def _f64_from_bits(typingctx, bits):
    """A 64-bit integer read as a float64."""
    if not (isinstance(bits, types.Integer) and bits.bitwidth == 64):
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(bits), codegen


@intrinsic
def _bits_of_f64(typingctx, v):
    """A float64's bits as an int64."""
    if v != types.float64:
        return None

    def codegen(context, builder, sig, args):
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(v), codegen


def neg_exp(s):
    """exp(-s) for s >= 0; 0 where s >= the limit (no denormals) or s is NaN (+inf gives 0).

    Scalar and branch-free, so LLVM inlines it into the callers' loops and vectorises them."""


@overload(neg_exp, jit_options={"fastmath": FM_EXP})
def _neg_exp_impl(s):
    if s == types.float32:

        def impl32(s):
            ok = s < _LIM32
            t = -(s if ok else _LIM32)
            ni = np.int32(np.floor(t * _LOG2E + _HALF32))
            n = np.float32(ni)
            r = t - n * _LN2_HI - n * _LN2_LO
            p = ((((_P0 * r + _P1) * r + _P2) * r + _P3) * r + _P4) * r + _P5
            p = p * r * r + r + _ONE32
            e = p * _f32_from_bits((ni + np.int32(127)) << np.int32(23))
            return e if ok else np.float32(0.0)

        return impl32

    if s == types.float64:
        f = _INV_FACT

        def impl64(s):
            ok = s < _LIM64
            t = -(s if ok else _LIM64)
            kf = t * _LOG2E64 + _ROUND64
            n = kf - _ROUND64
            ni = _bits_of_f64(kf) - _ROUND64_BITS
            r = t - n * _LN2_HI64 - n * _LN2_LO64
            p = f[13] * r + f[12]
            p = p * r + f[11]
            p = p * r + f[10]
            p = p * r + f[9]
            p = p * r + f[8]
            p = p * r + f[7]
            p = p * r + f[6]
            p = p * r + f[5]
            p = p * r + f[4]
            p = p * r + f[3]
            p = p * r + f[2]
            p = p * r * r + r + 1.0
            e = p * _f64_from_bits((ni + 1023) << 52)
            return e if ok else 0.0

        return impl64

    return None


@njit(fastmath=FM, cache=True)
def neg_exp_block(s, e, nb):
    """e[:nb] = neg_exp(s[:nb])."""
    for i in range(nb):
        e[i] = neg_exp(s[i])


@njit(fastmath=FM, cache=True)
def _pair_block(xs, p0, c, iw, half, k, nb, s, gate):
    """s = sum_j z_j**2 and gate = 1/0 (support test) for bump k against points p0:p0+nb of xs (d, n).

    Every array is read through a 1-D C-contiguous slice indexed from 0: an offset
    index (p0 + i) made Numba emit a negative-index check per element, which kept
    LLVM from vectorising the culled loops."""
    d = xs.shape[0]
    one = s.dtype.type(1.0)
    zero = s.dtype.type(0.0)
    for i in range(nb):
        s[i] = zero
        gate[i] = one
    for j in range(d):
        xj = xs[j][p0 : p0 + nb]
        cj = c[j, k]
        iwj = iw[j, k]
        hj = half[j, k]
        for i in range(nb):
            df = xj[i] - cj
            z = df * iwj
            s[i] += z * z
            gate[i] = gate[i] if abs(df) < hj else zero


@njit(fastmath=FM, cache=True)
def _grad_m1(g, g0, e, gate, mk2, nb, tm):
    """P == 1, one bump on nb points with upstream gradient g[g0:g0+nb]: returns sum g e and
    sets tm = 2 m g e (0 for dead pairs); e becomes e * gate.

    A sum loop of its own: fused with the loop that computes g e, or with the one that
    scales tm, the code Numba runs right after compiling and the code it loads from its
    disk cache summed in different orders, so the first process after a compile gave
    other bits for grad m (the other sums were the same). Costs ~5% of the backward."""
    zero = tm.dtype.type(0.0)
    g1 = g[g0 : g0 + nb]
    for i in range(nb):
        el = e[i] * gate[i]
        e[i] = el
        tm[i] = g1[i] * el
    sm = zero
    for i in range(nb):
        sm += tm[i]
    for i in range(nb):
        tm[i] = tm[i] * mk2 if e[i] > zero else zero
    return sm


@njit(fastmath=FM, cache=True)
def _grad_block1(xb, g1, c, iw, half, m, k, nb, s, gate, e, tm, gxb, pcw, pm):
    """P == 1: recompute bump k on a block and add its gradient contributions.

    g1 (nb,) is the upstream gradient. Block sums are in the inputs' dtype and go
    into the float64 partials pcw (2d, K: c then w) and pm (K, 1). Kept apart from
    the P > 1 code with its loops inline: measured ~10% faster than sharing them.
    """
    d = xb.shape[0]
    zero = s.dtype.type(0.0)
    two = s.dtype.type(2.0)
    _pair_block(xb, 0, c, iw, half, k, nb, s, gate)
    neg_exp_block(s, e, nb)
    pm[k, 0] += _grad_m1(g1, 0, e, gate, two * m[k, 0], nb, tm)
    for j in range(d):
        xj = xb[j]
        gxj = gxb[j]
        cj = c[j, k]
        iwj = iw[j, k]
        sc = zero
        sw = zero
        for i in range(nb):
            z = (xj[i] - cj) * iwj
            a = tm[i] * z * iwj
            a = a if tm[i] != zero else zero  # dead pairs: z may be inf
            sc += a
            sw += a * z
            gxj[i] -= a
        pcw[j, k] += sc
        pcw[d + j, k] += sw


@njit(fastmath=FM, cache=True)
def _grad_block(xb, gb, c, iw, half, m, k, nb, s, gate, e, tm, gxb, pcw, pm):
    """P > 1: recompute bump k on a block and add its gradient contributions.

    gb (P, nb) holds the upstream gradient; the exp and support test are done once
    and serve all P outputs. Partials as in :func:`_grad_block1`, pm (K, P).
    """
    _pair_block(xb, 0, c, iw, half, k, nb, s, gate)
    neg_exp_block(s, e, nb)
    for i in range(nb):
        e[i] = e[i] * gate[i]
    _multi_tm(gb, 0, m, k, nb, e, tm, pm)
    _grad_tail(xb, 0, c, iw, k, nb, tm, gxb, 0, pcw, True)


@njit(fastmath=FM, cache=True)
def _grad_tail(xs, p0, c, iw, k, nb, tm, gxb, g0, pcw, need_x):
    """From t_i = 2 e_i sum_p g[i, p] m[k, p] (0 for dead pairs) for points p0:p0+nb of xs:
    grad x into gxb[:, g0:g0+nb] (when need_x), grad c, w into pcw."""
    d = xs.shape[0]
    zero = tm.dtype.type(0.0)
    for j in range(d):
        xj = xs[j][p0 : p0 + nb]
        gxj = gxb[j][g0 : g0 + nb]
        cj = c[j, k]
        iwj = iw[j, k]
        sc = zero
        sw = zero
        for i in range(nb):
            z = (xj[i] - cj) * iwj
            a = tm[i] * z * iwj
            a = a if tm[i] != zero else zero  # dead pairs: z may be inf
            sc += a
            sw += a * z
            if need_x:
                gxj[i] -= a
        pcw[j, k] += sc
        pcw[d + j, k] += sw


@njit(parallel=True, fastmath=FM, cache=True)
def dense_forward(x, c, iw, half, m, y, npart):
    """y (n, P) = the bump sum at every point; partition q owns a fixed run of blocks."""
    n, d = x.shape
    K, P = m.shape
    dt = x.dtype
    nblk = (n + _B - 1) // _B
    for q in prange(npart):
        xb = np.empty((d, _B), dt)
        s = np.empty(_B, dt)
        gate = np.empty(_B, dt)
        e = np.empty(_B, dt)
        acc = np.empty((P, _B), dt)
        for blk in range(q * nblk // npart, (q + 1) * nblk // npart):
            i0 = blk * _B
            nb = min(_B, n - i0)
            for i in range(nb):
                for j in range(d):
                    xb[j, i] = x[i0 + i, j]
            for p in range(P):
                for i in range(nb):
                    acc[p, i] = 0
            for k in range(K):
                _pair_block(xb, 0, c, iw, half, k, nb, s, gate)
                neg_exp_block(s, e, nb)
                if P == 1:
                    acc1 = acc[0]
                    mk = m[k, 0]
                    for i in range(nb):
                        acc1[i] += mk * (e[i] * gate[i])
                    continue
                for i in range(nb):
                    e[i] = e[i] * gate[i]
                for p in range(P):
                    mkp = m[k, p]
                    ap = acc[p]
                    for i in range(nb):
                        ap[i] += mkp * e[i]
            for i in range(nb):
                for p in range(P):
                    y[i0 + i, p] = acc[p, i]


@njit(parallel=True, fastmath=FM, cache=True)
def dense_backward(x, c, iw, half, m, g, gx, pcw, pm, npart):
    """gx (n, d) gets dL/dx; partition q adds its dL/dc, dL/dw into pcw[q] and dL/dm into pm[q]."""
    n, d = x.shape
    P = m.shape[1]
    dt = x.dtype
    nblk = (n + _B - 1) // _B
    for q in prange(npart):
        xb = np.empty((d, _B), dt)
        gxb = np.empty((d, _B), dt)
        gb = np.empty((P, _B), dt)
        s = np.empty(_B, dt)
        gate = np.empty(_B, dt)
        e = np.empty(_B, dt)
        tm = np.empty(_B, dt)
        pcq = pcw[q]
        pmq = pm[q]
        for blk in range(q * nblk // npart, (q + 1) * nblk // npart):
            i0 = blk * _B
            nb = min(_B, n - i0)
            for i in range(nb):
                for j in range(d):
                    xb[j, i] = x[i0 + i, j]
                    gxb[j, i] = 0
                for p in range(P):
                    gb[p, i] = g[i0 + i, p]
            if P == 1:
                for k in range(m.shape[0]):
                    _grad_block1(xb, gb[0], c, iw, half, m, k, nb, s, gate, e, tm, gxb, pcq, pmq)
            else:
                for k in range(m.shape[0]):
                    _grad_block(xb, gb, c, iw, half, m, k, nb, s, gate, e, tm, gxb, pcq, pmq)
            for i in range(nb):
                for j in range(d):
                    gx[i0 + i, j] = gxb[j, i]


@njit(fastmath=FM, cache=True)
def _multi_tm(gb, g0, m, k, nb, e, tm, pm):
    """P > 1, bump k on nb points whose upstream gradient is gb[:, g0:g0+nb] and values e:
    adds sum_i g[p, i] e_i into pm[k, p] and sets tm_i = 2 e_i sum_p g[p, i] m[k, p] (0 for
    dead pairs)."""
    P = gb.shape[0]
    zero = tm.dtype.type(0.0)
    two = tm.dtype.type(2.0)
    for i in range(nb):
        tm[i] = zero
    for p in range(P):
        mkp = m[k, p]
        gp = gb[p][g0 : g0 + nb]
        sm = zero
        for i in range(nb):
            gi = gp[i]
            sm += gi * e[i]
            tm[i] += gi * mkp
        pm[k, p] += sm
    for i in range(nb):
        el = e[i]
        tm[i] = two * el * tm[i] if el > zero else zero


# ---------------------------------------------------------------- culled (grid) path
# Points are binned on a uniform grid over the first gd = min(d, 3) dims (ordered so the
# last has the most cells) and
# sorted by cell (counting sort). A "row" is a line of cells along the last grid
# dim; its points are contiguous. Each bump is registered in every row its support
# box overlaps, with the range of cells along that line. Rows are split into fixed
# partitions of about equal work; a partition owns its rows' points (y, grad x) and
# its own gradient partials. Upstream gradients are gathered into sorted order and
# outputs scattered back by separate passes, keeping random access out of the hot loops.


@njit(parallel=True, cache=True)
def extent(x, gd):
    """Per-dim min and max (float64) of the first gd columns of x (n, d)."""
    n = x.shape[0]
    nchunk = max(1, min(64, n // 16384))
    part = np.empty((nchunk, 2, gd))
    for q in prange(nchunk):
        lo = np.full(gd, np.inf)
        hi = np.full(gd, -np.inf)
        for i in range(q * n // nchunk, (q + 1) * n // nchunk):
            for j in range(gd):
                v = np.float64(x[i, j])
                lo[j] = min(lo[j], v)
                hi[j] = max(hi[j], v)
        part[q, 0] = lo
        part[q, 1] = hi
    lo = np.full(gd, np.inf)
    hi = np.full(gd, -np.inf)
    for q in range(nchunk):
        for j in range(gd):
            lo[j] = min(lo[j], part[q, 0, j])
            hi[j] = max(hi[j], part[q, 1, j])
    return lo, hi


@njit(cache=True)
def _cells_of(x, gdim, lo, inv_h, ncell, i0, i1, cell):
    """cell[i] for points i0:i1 of x: the row-major index of its grid cell (float64 arithmetic,
    monotone in x; clipped into the grid)."""
    gd = gdim.shape[0]
    c = cell[i0:i1]
    for i in range(i1 - i0):
        c[i] = 0
    # Dim by dim: each loop is branch-free over the points (vectorised).
    for j in range(gd):
        xj = x[i0:i1, gdim[j]]
        lj = lo[j]
        hj = inv_h[j]
        nj = ncell[j]
        top = nj - 1
        for i in range(i1 - i0):
            t = np.int64(np.floor((np.float64(xj[i]) - lj) * hj))
            c[i] = c[i] * nj + min(max(t, 0), top)


@njit(parallel=True, cache=True)
def bin_points(x, gdim, lo, inv_h, ncell, nchunk, perm, rank):
    """Cell of every point of x (n, d) (float64 arithmetic, monotone in x) and a stable
    counting sort by cell.

    Fills perm (sorted position -> original index) and rank (its inverse); returns the first
    sorted position of every cell (n_cells + 1,) and the points sorted, (d, n). Grid dim j
    is data dim gdim[j]; the last grid dim (along which rows run) is the one with the most cells, so
    thin data (a slab) still gives long runs.

    Two scatters, each cache-friendly (one straight scatter into the sorted arrays was
    measured at ~50 ns a point, all cache misses): points go first, by fixed chunks of the
    input in parallel, to buckets of consecutive cells (few sequential write streams), then
    each bucket, small enough for L2, is sorted into its cells. Stable, so the order does not
    depend on nchunk."""
    n, d = x.shape
    gd = gdim.shape[0]
    total = 1
    for j in range(gd):
        total *= ncell[j]
    cell = np.empty(n, perm.dtype)
    counts = np.zeros((total, nchunk), np.int64)
    for q in prange(nchunk):
        i0 = q * n // nchunk
        i1 = (q + 1) * n // nchunk
        _cells_of(x, gdim, lo, inv_h, ncell, i0, i1, cell)
        # Counted in a loop of its own: fused with the cell loop it ran 2x slower.
        for i in range(i0, i1):
            counts[cell[i], q] += 1
    cb = max(1, -(-total // _BUCKETS))  # cells per bucket
    nbk = -(-total // cb)
    start = np.empty(total + 1, np.int64)
    bfill = np.empty((nbk, nchunk), np.int64)  # next slot of bucket b for chunk q
    run = 0
    for b in range(nbk):
        for q in range(nchunk):
            bfill[b, q] = run
            for t in range(b * cb, min(total, (b + 1) * cb)):
                run += counts[t, q]
    run = 0
    for t in range(total):
        start[t] = run
        for q in range(nchunk):
            run += counts[t, q]
    start[total] = run
    tcell = np.empty(n, perm.dtype)
    tidx = np.empty(n, perm.dtype)
    tx = np.empty((n, d), x.dtype)
    for q in prange(nchunk):
        for i in range(q * n // nchunk, (q + 1) * n // nchunk):
            t = cell[i]
            b = t // cb
            p = bfill[b, q]
            bfill[b, q] = p + 1
            tcell[p] = t
            tidx[p] = i
            for j in range(d):
                tx[p, j] = x[i, j]
    xs = np.empty((d, n), x.dtype)
    for b in prange(nbk):
        t0 = b * cb
        t1 = min(total, t0 + cb)
        fill = start[t0:t1].copy()
        for p in range(start[t0], start[t1]):
            dst = fill[tcell[p] - t0]
            fill[tcell[p] - t0] = dst + 1
            perm[dst] = tidx[p]
            for j in range(d):
                xs[j, dst] = tx[p, j]
    # rank in a pass of its own: inside the loop above its random writes tripled its time.
    for q in prange(nchunk):
        for p in range(q * n // nchunk, (q + 1) * n // nchunk):
            rank[perm[p]] = p
    return start, xs


@njit(cache=True)
def _cell_range(a, b, lo, inv_h, nc):
    """Cells [q0, q1] (clipped) that [a, b] covers; q0 > q1 when no point can lie in it.

    Points get floor((x - lo) * inv_h) in [0, nc] before clipping, so the test
    uses nc, not nc - 1, as the top."""
    q0 = math.floor((a - lo) * inv_h)
    q1 = math.floor((b - lo) * inv_h)
    if q1 < 0 or q0 > nc:
        return 1, 0
    return min(max(q0, 0), nc - 1), max(min(q1, nc - 1), 0)


@njit(cache=True)
def register_bumps(c, half, gdim, lo, inv_h, ncell, start):
    """Per row, the bumps whose support box reaches it and their segment of points.

    Returns (row_start, reg_k, reg_p0, reg_p1, n_candidates). The box is widened by
    a relative 2**-20 so float32 rounding in the support test can never put an
    inside point in a cell the bump skips.
    """
    K = c.shape[1]
    gd = gdim.shape[0]
    nrows = 1
    for j in range(gd - 1):
        nrows *= ncell[j]
    nz = ncell[gd - 1]
    r0 = np.zeros((gd, K), np.int64)
    r1 = np.zeros((gd, K), np.int64)
    valid = np.ones(K, np.bool_)
    for k in range(K):
        for j in range(gd):
            cj = np.float64(c[gdim[j], k])
            hj = np.float64(half[gdim[j], k])
            tol = (abs(cj) + hj) * 2.0**-20
            a, b = _cell_range(cj - hj - tol, cj + hj + tol, lo[j], inv_h[j], ncell[j])
            if not (a <= b) or not (hj > 0):
                valid[k] = False
            r0[j, k] = a
            r1[j, k] = b
    counts = np.zeros(nrows + 1, np.int64)
    for k in range(K):
        if valid[k]:
            empty = np.empty(0, np.int64)
            _visit_rows(k, gd, r0, r1, ncell, counts, 0, empty, empty, empty, start, nz)
    row_start = np.zeros(nrows + 1, np.int64)
    for r in range(nrows):
        row_start[r + 1] = row_start[r] + counts[r + 1]
    nreg = row_start[nrows]
    reg_k = np.empty(nreg, np.int64)
    reg_p0 = np.empty(nreg, np.int64)
    reg_p1 = np.empty(nreg, np.int64)
    fill = row_start[:-1].copy()
    for k in range(K):
        if valid[k]:
            _visit_rows(k, gd, r0, r1, ncell, fill, 1, reg_k, reg_p0, reg_p1, start, nz)
    ncand = 0
    for q in range(nreg):
        ncand += reg_p1[q] - reg_p0[q]
    return row_start, reg_k, reg_p0, reg_p1, ncand


@njit(cache=True)
def _visit_rows(k, gd, r0, r1, ncell, arr, mode, reg_k, reg_p0, reg_p1, start, nz):
    """mode 0: count bump k in every row it overlaps; mode 1: write its registrations."""
    # Rows are over the first gd-1 grid dims (at most 2 here).
    z0 = r0[gd - 1, k]
    z1 = r1[gd - 1, k]
    if gd == 1:
        rows_a0, rows_a1, rows_b0, rows_b1, nb_ = 0, 0, 0, 0, 1
    elif gd == 2:
        rows_a0, rows_a1, rows_b0, rows_b1, nb_ = 0, 0, r0[0, k], r1[0, k], ncell[0]
    else:
        rows_a0, rows_a1, rows_b0, rows_b1, nb_ = r0[0, k], r1[0, k], r0[1, k], r1[1, k], ncell[1]
    for a in range(rows_a0, rows_a1 + 1):
        for b in range(rows_b0, rows_b1 + 1):
            row = a * nb_ + b if gd == 3 else b
            if mode == 0:
                arr[row + 1] += 1
            else:
                q = arr[row]
                reg_k[q] = k
                reg_p0[q] = start[row * nz + z0]
                reg_p1[q] = start[row * nz + z1 + 1]
                arr[row] += 1


@njit(cache=True)
def row_costs(row_pts, row_start, reg_p0, reg_p1):
    """Work per row (points + candidate pairs) as a prefix sum (nrows + 1,), longest row, longest segment."""
    nrows = row_start.shape[0] - 1
    cost = np.zeros(nrows + 1, np.int64)
    maxrow = 1
    maxseg = 1
    for r in range(nrows):
        w = row_pts[r + 1] - row_pts[r]
        maxrow = max(maxrow, w)
        for q in range(row_start[r], row_start[r + 1]):
            L = reg_p1[q] - reg_p0[q]
            w += L
            maxseg = max(maxseg, L)
        cost[r + 1] = cost[r] + w
    return cost, maxrow, maxseg


@njit(cache=True)
def partition_bounds(cost, npart):
    """Split rows into npart contiguous runs of about equal cost: (npart + 1,) row bounds.

    Depends only on the plan and npart, never on the thread count."""
    nrows = cost.shape[0] - 1
    bounds = np.empty(npart + 1, np.int64)
    bounds[0] = 0
    r = 0
    for q in range(1, npart):
        target = (cost[nrows] * q) // npart
        while r < nrows and cost[r + 1] <= target:
            r += 1
        bounds[q] = r
    bounds[npart] = nrows
    return bounds


@njit(parallel=True, fastmath=FM, cache=True)
def culled_forward(xs, perm, c, iw, half, m, row_pts, row_start, reg_k, reg_p0, reg_p1, bounds, maxrow, maxseg, y):
    """y (n, P), original order. Partition q owns rows bounds[q]:bounds[q+1]; per row a
    (P, row) accumulator takes every registered segment's m[k, p] * e, each segment
    evaluated straight from the sorted points, and is written back through perm."""
    d, n = xs.shape
    P = m.shape[1]
    dt = xs.dtype
    npart = bounds.shape[0] - 1
    for q in prange(npart):
        s = np.empty(maxseg, dt)
        gate = np.empty(maxseg, dt)
        e = np.empty(maxseg, dt)
        acc = np.empty((P, maxrow), dt)
        for r in range(bounds[q], bounds[q + 1]):
            a = row_pts[r]
            nr = row_pts[r + 1] - a
            if nr == 0:
                continue
            for p in range(P):
                ap = acc[p]
                for i in range(nr):
                    ap[i] = 0
            for t in range(row_start[r], row_start[r + 1]):
                p0 = reg_p0[t]
                L = reg_p1[t] - p0
                if L == 0:
                    continue
                k = reg_k[t]
                off = p0 - a
                _pair_block(xs, p0, c, iw, half, k, L, s, gate)
                neg_exp_block(s, e, L)
                if P == 1:
                    ap = acc[0][off : off + L]
                    mk = m[k, 0]
                    for i in range(L):
                        ap[i] += mk * (e[i] * gate[i])
                    continue
                for i in range(L):
                    e[i] = e[i] * gate[i]
                for p in range(P):
                    ap = acc[p][off : off + L]
                    mkp = m[k, p]
                    for i in range(L):
                        ap[i] += mkp * e[i]
            if P == 1:
                _scatter1(acc[0], perm[a : a + nr], y.reshape(n), 0, nr)
                continue
            for i in range(nr):
                pi = perm[a + i]
                for p in range(P):
                    y[pi, p] = acc[p, i]


@njit(parallel=True, fastmath=FM, cache=True)
def culled_backward(
    xs, perm, c, iw, half, m, gs, row_pts, row_start, reg_k, reg_p0, reg_p1, bounds, maxrow, maxseg, gx, need_x, pcw, pm
):
    """gs (n, P) is the upstream gradient in sorted order (see :func:`to_sorted`), gx (n, d)
    in original order. Per row the upstream gradient is copied into a (P, row) buffer and
    grad x collects in a (d, row) buffer, written back through perm; partition q adds its
    parameter gradients into pcw[q] and pm[q]."""
    d, n = xs.shape
    P = m.shape[1]
    dt = xs.dtype
    zero = dt.type(0.0)
    two = dt.type(2.0)
    npart = bounds.shape[0] - 1
    for q in prange(npart):
        s = np.empty(maxseg, dt)
        gate = np.empty(maxseg, dt)
        e = np.empty(maxseg, dt)
        tm = np.empty(maxseg, dt)
        grow = np.empty((P, maxrow), dt)
        gxr = np.empty((d, maxrow), dt)
        pcq = pcw[q]
        pmq = pm[q]
        for r in range(bounds[q], bounds[q + 1]):
            a = row_pts[r]
            nr = row_pts[r + 1] - a
            if nr == 0:
                continue
            if row_start[r] == row_start[r + 1]:
                if need_x:
                    for i in range(nr):
                        pi = perm[a + i]
                        for j in range(d):
                            gx[pi, j] = 0
                continue
            for i in range(nr):
                for p in range(P):
                    grow[p, i] = gs[a + i, p]
            if need_x:
                for j in range(d):
                    gj = gxr[j]
                    for i in range(nr):
                        gj[i] = 0
            for t in range(row_start[r], row_start[r + 1]):
                p0 = reg_p0[t]
                L = reg_p1[t] - p0
                if L == 0:
                    continue
                k = reg_k[t]
                off = p0 - a
                _pair_block(xs, p0, c, iw, half, k, L, s, gate)
                neg_exp_block(s, e, L)
                if P == 1:
                    pmq[k, 0] += _grad_m1(grow[0], off, e, gate, two * m[k, 0], L, tm)
                else:
                    for i in range(L):
                        e[i] = e[i] * gate[i]
                    _multi_tm(grow, off, m, k, L, e, tm, pmq)
                _grad_tail(xs, p0, c, iw, k, L, tm, gxr, off, pcq, need_x)
            if need_x:
                for i in range(nr):
                    pi = perm[a + i]
                    for j in range(d):
                        gx[pi, j] = gxr[j, i]


@njit(parallel=True, cache=True)
def to_sorted(g, rank, gs, npart):
    """gs[rank[i]] = g[i]: rows into sorted order by sequential reads and scattered writes
    (random reads stall on cache misses; random writes do not)."""
    n, P = g.shape
    for q in prange(npart):
        i0 = q * n // npart
        i1 = (q + 1) * n // npart
        if P == 1:  # flat views: the (n, 1) indexing ran 2-3x slower
            _scatter1(g.reshape(n), rank, gs.reshape(n), i0, i1)
            continue
        for i in range(i0, i1):
            r = rank[i]
            for p in range(P):
                gs[r, p] = g[i, p]


@njit(cache=True)
def _scatter1(src, dst_idx, dst, i0, i1):
    """dst[dst_idx[i]] = src[i] for i in i0:i1."""
    for i in range(i0, i1):
        dst[dst_idx[i]] = src[i]


@njit(parallel=True, cache=True)
def culled_pair_count(xs, c, half, row_start, reg_k, reg_p0, reg_p1, bounds):
    """Number of in-support (point, bump) pairs the culled engine visits (test instrumentation)."""
    d = xs.shape[0]
    npart = bounds.shape[0] - 1
    counts = np.zeros(npart, np.int64)
    for q in prange(npart):
        cnt = 0
        for r in range(bounds[q], bounds[q + 1]):
            for t in range(row_start[r], row_start[r + 1]):
                k = reg_k[t]
                for p in range(reg_p0[t], reg_p1[t]):
                    ok = True
                    for j in range(d):
                        if not (abs(xs[j, p] - c[j, k]) < half[j, k]):
                            ok = False
                    if ok:
                        cnt += 1
        counts[q] = cnt
    return counts.sum()


@njit(cache=True)
def box_fraction(x, c, half, gd, cell_frac):
    """Mean over bumps of the fraction of x's bounding box (first gd dims) that the support
    box, widened by cell_frac of the extent, covers once clipped to it."""
    n = x.shape[0]
    K = c.shape[1]
    lo = np.empty(gd)
    hi = np.empty(gd)
    for j in range(gd):
        lo[j] = np.inf
        hi[j] = -np.inf
    for i in range(n):
        for j in range(gd):
            v = np.float64(x[i, j])
            lo[j] = min(lo[j], v)
            hi[j] = max(hi[j], v)
    total = 0.0
    for k in range(K):
        f = 1.0
        for j in range(gd):
            ext = hi[j] - lo[j]
            if ext > 0:
                h = np.float64(half[j, k]) + cell_frac * ext
                ck = np.float64(c[j, k])
                f *= min(1.0, max(0.0, min(hi[j], ck + h) - max(lo[j], ck - h)) / ext)
        total += f
    return total / max(K, 1)


@njit(cache=True)
def sum_parts(part):
    """Sum of the per-partition partials part[q] (3-D, float64), added in partition order."""
    out = np.zeros((part.shape[1], part.shape[2]))
    for q in range(part.shape[0]):
        pq = part[q]
        for a in range(part.shape[1]):
            for b in range(part.shape[2]):
                out[a, b] += pq[a, b]
    return out


@njit(cache=True)
def widths_prep(w, half):
    """(1/w clamped to the largest finite float, half with 0 where w == 0, whether half is all finite)
    for (d, K) arrays: one compiled pass instead of several small torch ops per call."""
    d, K = w.shape
    big = np.finfo(w.dtype).max
    iw = np.empty((d, K), w.dtype)
    hz = np.empty((d, K), half.dtype)
    finite = True
    for j in range(d):
        for k in range(K):
            wk = w[j, k]
            hk = half[j, k]
            if wk == 0:
                iw[j, k] = big
                hz[j, k] = 0
            else:
                iw[j, k] = min(max(1 / wk, -big), big)
                hz[j, k] = hk
            finite = finite and math.isfinite(hk)
    return iw, hz, finite


@njit(cache=True)
def _finite(a):
    for v in a.flat:
        if not math.isfinite(v):
            return False
    return True


@njit(cache=True)
def all_finite(x, c, w, m):
    """Whether every entry of the four arrays is finite (any layout), in one compiled call."""
    return _finite(x) and _finite(c) and _finite(w) and _finite(m)
