"""The culled sum: points binned on a uniform grid and sorted by cell, bumps registered in the grid
rows their support reaches, rows cut into fixed partitions of about equal work."""

from __future__ import annotations

import math

import numpy as np
from numba import njit, prange

from wandering._engine._kernels._accumulate import _COUNT_POINTS, FLUSH_EVERY, _flush_rows
from wandering._engine._kernels._dense import (
    _accumulate_outputs,
    _grad_m1,
    _grad_tail,
    _multi_tm,
    _pair_block,
    neg_exp_block,
)
from wandering._engine._kernels._layout import scatter_rows, transpose_into

_BUCKETS = 256  # first-pass buckets of the binning sort (write streams that stay cached)

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


@njit(parallel=True, cache=True)
def culled_forward(xs, perm, c, iw, half, m, row_pts, row_start, reg_k, reg_p0, reg_p1, bounds, maxrow, maxseg, y):
    """y (n, P), original order. Partition q owns rows bounds[q]:bounds[q+1]; per row a
    (P, row) accumulator takes every registered segment's m[k, p] * e, each segment
    evaluated straight from the sorted points, is flushed into a float64 one before any
    point has more than FLUSH_EVERY terms (see :func:`_row_flush`), and is written back
    through perm."""
    _d, n = xs.shape
    P = m.shape[1]
    dt = xs.dtype
    npart = bounds.shape[0] - 1
    yf = y.reshape(n * P)
    for q in prange(npart):
        s = np.empty(maxseg, dt)
        gate = np.empty(maxseg, dt)
        e = np.empty(maxseg, dt)
        acc = np.zeros((P, maxrow), dt)
        acc64 = np.empty((P, maxrow))
        terms = np.zeros(maxrow if P >= _COUNT_POINTS else 0, np.int32)
        rows = np.empty(maxrow * P if P > 1 else 0, dt)
        for r in range(bounds[q], bounds[q + 1]):
            a = row_pts[r]
            nr = row_pts[r + 1] - a
            if nr == 0:
                continue
            lo, hi, count, flushed = nr, 0, 0, False  # touched since the last flush; whether one happened
            for t in range(row_start[r], row_start[r + 1]):
                p0 = reg_p0[t]
                L = reg_p1[t] - p0
                if L == 0:
                    continue
                k = reg_k[t]
                off = p0 - a
                _pair_block(xs, p0, c, iw, half, k, L, s, gate)
                neg_exp_block(s, e, L)
                if P == 1:  # one fused pass: here ~8% faster than _accumulate_outputs' two
                    ap = acc[0][off : off + L]
                    mk = m[k, 0]
                    for i in range(L):
                        ap[i] += mk * (e[i] * gate[i])
                else:
                    _accumulate_outputs(acc, off, m, k, e, gate, L)
                lo, hi, count, flushed = _row_flush(acc64, acc, terms, nr, off, L, lo, hi, count, flushed)
            terms[lo:hi] = 0
            _scatter_rows(acc64, acc, flushed, nr, perm[a : a + nr], yf, rows)


@njit(cache=True)
def _row_flush(acc64, acc, terms, nr, off, L, lo, hi, count, flushed):
    """Flush bookkeeping of a row's per-point accumulators (rows of acc, (., nr)) after a
    registration added a term to points off:off+L. Once a point may hold FLUSH_EVERY
    terms, every point touched since the last flush (lo:hi) is flushed into acc64 (set to
    0 at the row's first flush, so rows that never flush never touch it). ``terms``
    counts each point's terms (a point meets few of a row's registrations, so flushes
    stay rare: worth its cost with many accumulator rows); empty, ``count`` counts the
    row's registrations instead. Returns the new (lo, hi, count, flushed)."""
    if terms.shape[0] == 0:
        count += 1
        top = count
    else:
        seg = terms[off : off + L]
        one = np.int32(1)
        for i in range(L):
            seg[i] += one
        top = 0
        for i in range(L):  # apart from the additions and with a select: vectorised, 3x faster
            top = top if top > seg[i] else seg[i]
    lo = min(lo, off)
    hi = max(hi, off + L)
    if top < FLUSH_EVERY:
        return lo, hi, count, flushed
    if not flushed:
        acc64[:, :nr] = 0.0
    _flush_rows(acc64, acc, lo, hi)
    terms[lo:hi] = 0
    return nr, 0, 0, True


@njit(cache=True)
def _scatter_rows(acc64, acc, flushed, nr, dst_idx, dst, rows):
    """The write back: row i < nr of a flat (n, P) dst, dst[dst_idx[i] * P + p], gets
    acc[p, i] (plus acc64[p, i] when the row was flushed), rounded to dst's dtype;
    acc[:, :nr] becomes 0. rows: scratch of nr * P entries of dst's dtype (P > 1: the
    (P, nr) block is transposed into it, then copied out one contiguous row per point)."""
    P, width = acc.shape
    zero = acc.dtype.type(0.0)
    if P == 1:
        a0 = acc[0]
        if flushed:
            a64 = acc64[0]
            for i in range(nr):
                dst[dst_idx[i]] = a64[i] + np.float64(a0[i])
                a0[i] = zero
        else:
            for i in range(nr):
                dst[dst_idx[i]] = a0[i]
                a0[i] = zero
        return
    if flushed:
        _flush_rows(acc64, acc, 0, nr)
        transpose_into(acc64.reshape(P * width), width, rows, P, P, nr)
    else:
        transpose_into(acc.reshape(P * width), width, rows, P, P, nr)
        acc[:, :nr] = zero
    scatter_rows(dst, dst_idx, rows, nr, P)


@njit(parallel=True, cache=True)
def culled_backward(
    xs, perm, c, iw, half, m, g, row_pts, row_start, reg_k, reg_p0, reg_p1, bounds, maxrow, maxseg, gx, need_x, pcw, pm
):
    """g (n, P) is the upstream gradient in sorted order (see :func:`to_sorted`), gx (n, d)
    in original order. Per row the upstream gradient is read in place (P == 1) or its
    (row, P) block transposed into a (P, row) buffer, and grad x collects in a (d, row)
    buffer flushed into a float64 one as in :func:`culled_forward`, written back through
    perm; partition q adds its parameter gradients into pcw[q] and pm[q]."""
    d, n = xs.shape
    P = m.shape[1]
    dt = xs.dtype
    two = dt.type(2.0)
    npart = bounds.shape[0] - 1
    gf = g.reshape(n * P)
    gxf = gx.reshape(gx.shape[0] * d)
    for q in prange(npart):
        s = np.empty(maxseg, dt)
        gate = np.empty(maxseg, dt)
        e = np.empty(maxseg, dt)
        tm = np.empty(maxseg, dt)
        ta = np.empty(maxseg, dt)
        taz = np.empty(maxseg, dt)
        grow = np.empty((P if P > 1 else 0, maxrow), dt)
        rows = np.empty(maxrow * d, dt)
        gxr = np.zeros((d, maxrow), dt)
        gx64 = np.empty((d, maxrow))
        terms = np.zeros(maxrow if d >= _COUNT_POINTS else 0, np.int32)
        pcq = pcw[q]
        pmq = pm[q]
        for r in range(bounds[q], bounds[q + 1]):
            a = row_pts[r]
            nr = row_pts[r + 1] - a
            if nr == 0:
                continue
            lo, hi, count, flushed = nr, 0, 0, False  # touched since the last flush; whether one happened
            if row_start[r] < row_start[r + 1]:
                g1 = gf[a : a + nr]  # P == 1: the row's upstream gradient, in place
                if P > 1:  # the row's (nr, P) block of gs, transposed
                    transpose_into(gf[a * P : (a + nr) * P], P, grow.reshape(P * maxrow), maxrow, nr, P)
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
                        pmq[k, 0] += _grad_m1(g1[off : off + L], e, gate, two * m[k, 0], L, tm)
                    else:
                        _multi_tm(grow, off, m, k, L, e, gate, tm, pmq)
                    _grad_tail(xs, p0, c, iw, k, L, tm, gxr, off, pcq, need_x, ta, taz)
                    if need_x:
                        lo, hi, count, flushed = _row_flush(gx64, gxr, terms, nr, off, L, lo, hi, count, flushed)
            if need_x:
                terms[lo:hi] = 0
                _scatter_rows(gx64, gxr, flushed, nr, perm[a : a + nr], gxf, rows)


@njit(parallel=True, cache=True)
def to_sorted(g, rank, gs, npart):
    """gs[rank[i]] = g[i], rows of flat (n * P,) arrays into sorted order by sequential
    reads and scattered writes (random reads stall on cache misses; random writes do
    not, and whole-line rows are streamed, see :func:`scatter_rows`)."""
    n = rank.shape[0]
    P = g.shape[0] // max(n, 1)
    for q in prange(npart):
        i0 = q * n // npart
        i1 = (q + 1) * n // npart
        if P == 1:
            _scatter1(g, rank, gs, i0, i1)
        else:
            scatter_rows(gs, rank[i0:i1], g[i0 * P :], i1 - i0, P)


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
