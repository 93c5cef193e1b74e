"""Numba CPU kernels for oriented (full-covariance) bumps, P outputs: dense and grid-culled.

A pair (point i, bump k) has ``diff = x_i - c_k``, ``z = U_k diff``, ``s = |z|^2`` and counts
iff ``s < r2[k]`` and ``exp(-s)`` does not underflow (see the contract in ``_registry``).
The layout and partitions are those of the axis kernels (``_kernels``): blocks of points
copied to (d, nb) for the dense sum; points sorted by grid cell, rows of cells, and each
bump registered in the rows its ellipsoid reaches with a segment of points for the culled
sum; fixed partitions, each with its own float64 gradient partials reduced in partition
order by the caller.

Per pair the geometry is d^2 multiply-adds (z = U diff, written out for d = 2 and 3, whose
speed is a target; loops for d >= 4), and the exp, cut-off test and accumulations are
fused into as few passes as the vectoriser allows.

Gradients. With ``t = e * sum_p gy[i, p] m[k, p]`` (half the contract's t), a bump's
gradients need only ``S1 = sum_i t diff`` and ``S2 = sum_i t diff diff^T`` over its pairs:
``gc = 2 U^T U S1`` and ``gU = -2 U S2`` (the contract's ``gU -= 2 t z diff^T``, summed),
so without grad x the per-pair work is d + d(d+1)/2 products, not d^2 more multiply-adds.
:func:`finish_gradients` applies U once per bump, in float64.

Determinism and accuracy. No kernel here lets the compiler reassociate a sum (no
``reassoc``): every sum over points runs in a fixed number of lanes (:data:`_W`), point i in
lane ``i % _W``, in runs of :data:`_RUN` points after each of which the lanes go into
float64 lanes (so a lane adds at most 16 terms in x's dtype); the float64 lanes (and the
last, partial run's) are added in lane order into float64 partials. Sums over bumps per
point: grad x in float64, bump after bump; y by groups of _G bumps (k // _G) summed in x's
dtype, then added in float64, the same way on both paths, so y at a point does not depend
on the path or the other points (``BumpRegressor.predict`` relies on it). That keeps the accumulation rule of the
axis kernels' rework (branch ``accuracy``), with lanes of its own here (d >= 4 differs in
the details: its runs go straight to the partials). The result is a function of
the inputs and the partitions alone: the same for any thread count, vector width, or a
fresh compile against Numba's disk cache.

Making LLVM vectorise the lane loops (each measured 2x to 10x slower when it did not): the
lanes live on the stack (:func:`_stack_zeros`), allocated in the function whose loop runs
them, so LLVM can prove that nothing else writes them (as heap arrays, or passed in from a
caller, they stayed scalar); and the loop over a chunk's lanes runs to ``w = min(_W, L)``,
which is _W whenever a chunk runs but not a constant to LLVM, which otherwise unrolled the
smaller loops fully and then left them scalar.
"""

from __future__ import annotations

import math

import numpy as np
from numba import carray, njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

from wandering._engine._kernels._culled import _cell_range
from wandering._engine._kernels._exp import neg_exp

# As the axis kernels' flags, without reassoc: no sum may be reordered by the compiler.
FMO = {"nsz", "arcp", "contract", "afn"}
# Lanes of every sum over points, and the points of a run: each lane adds at most _RUN / _W
# terms in x's dtype before the lanes go into float64.
_W = 16
_RUN = 16 * _W
# Points per block of the dense kernels: 4x the axis kernels' 256, as each pass over a block
# has a fixed cost (slices, loop setup, the lanes' flush) of ~60-100 ns that 256 points
# did not amortise; a block's buffers (~30 KB at d = 3, without grad x) still fit in L1.
_BO = 1024
# Bumps per group of the dense forward: each point sums a group's values in x's dtype, then
# adds that into its float64 sum (in float64 throughout, P > 1 cost 2x the axis kernels).
_G = 8
_MOMENT_LANES = 9 * _W  # stack lanes of the moments for d <= 3: S1 and S2's upper triangle
_REL = 2.0**-20  # relative margin of the float64 registration (as the axis grid's)


@intrinsic
def _stack_zeros(typingctx, n, dtype):
    """A pointer to n (a literal) zeroed elements of dtype on the stack of the calling function.

    Valid only while that function runs: wrap it with ``carray`` and never return it."""
    if not isinstance(n, types.IntegerLiteral):
        return None
    count = n.literal_value
    dt = dtype.dtype if isinstance(dtype, types.DType) else dtype.instance_type

    def codegen(context, builder, sig, args):
        ty = context.get_value_type(dt)
        ptr = cgutils.alloca_once(builder, ty, size=count)  # in the entry block
        size = context.get_abi_sizeof(ty) * count
        cgutils.memset(builder, ptr, context.get_constant(types.intp, size), 0)  # here, at each call
        return ptr

    return types.CPointer(dt)(n, dtype), codegen


@njit(fastmath=FMO, cache=True)
def _lane_total(lane, q):
    """Lanes q*_W : (q+1)*_W added in lane order, in float64."""
    tot = 0.0
    for l in range(_W):
        tot += np.float64(lane[q * _W + l])
    return tot


# ---------------------------------------------------------------- per-segment pieces
@njit(fastmath=FMO, cache=True)
def _e_seg(xs, p0, L, c, U, r2, k, e, z):
    """e[:L] = exp(-s) for bump k and points p0:p0+L of xs (d, n); 0 where the pair does not
    count (s >= r2[k], s NaN, or exp underflows). z (>= L) is scratch for d >= 4.

    Every array is read through a 1-D slice indexed from 0 (see ``_kernels._pair_block``)."""
    d = xs.shape[0]
    rk = r2[k]
    inf = e.dtype.type(np.inf)
    if d == 2:
        x0 = xs[0][p0 : p0 + L]
        x1 = xs[1][p0 : p0 + L]
        c0 = c[0, k]
        c1 = c[1, k]
        u00 = U[0, 0, k]
        u01 = U[0, 1, k]
        u10 = U[1, 0, k]
        u11 = U[1, 1, k]
        for i in range(L):
            d0 = x0[i] - c0
            d1 = x1[i] - c1
            z0 = u00 * d0 + u01 * d1
            z1 = u10 * d0 + u11 * d1
            s = z0 * z0 + z1 * z1
            e[i] = neg_exp(s if s < rk else inf)
        return
    if d == 3:
        x0 = xs[0][p0 : p0 + L]
        x1 = xs[1][p0 : p0 + L]
        x2 = xs[2][p0 : p0 + L]
        c0 = c[0, k]
        c1 = c[1, k]
        c2 = c[2, k]
        u00 = U[0, 0, k]
        u01 = U[0, 1, k]
        u02 = U[0, 2, k]
        u10 = U[1, 0, k]
        u11 = U[1, 1, k]
        u12 = U[1, 2, k]
        u20 = U[2, 0, k]
        u21 = U[2, 1, k]
        u22 = U[2, 2, k]
        for i in range(L):
            d0 = x0[i] - c0
            d1 = x1[i] - c1
            d2 = x2[i] - c2
            z0 = u00 * d0 + u01 * d1 + u02 * d2
            z1 = u10 * d0 + u11 * d1 + u12 * d2
            z2 = u20 * d0 + u21 * d1 + u22 * d2
            s = z0 * z0 + z1 * z1 + z2 * z2
            e[i] = neg_exp(s if s < rk else inf)
        return
    # d >= 4: one pass per (row of U, column), the same sums in the same order as above.
    zero = e.dtype.type(0.0)
    for i in range(L):
        e[i] = zero  # s, until the exp below
    for a in range(d):
        for i in range(L):
            z[i] = zero
        for j in range(d):
            xj = xs[j][p0 : p0 + L]
            cj = c[j, k]
            uaj = U[a, j, k]
            for i in range(L):
                z[i] += uaj * (xj[i] - cj)
        for i in range(L):
            e[i] += z[i] * z[i]
    for i in range(L):
        s = e[i]
        e[i] = neg_exp(s if s < rk else inf)


@njit(fastmath=FMO, cache=True)
def _add_values(e, L, m, k, part, off):
    """part[p, off:off+L] += m[k, p] * e[:L], in x's dtype (a group's sum, see :func:`_add_group`)."""
    P = m.shape[1]
    for p in range(P):
        mkp = m[k, p]
        pp = part[p][off : off + L]
        for i in range(L):
            pp[i] += mkp * e[i]


@njit(fastmath=FMO, cache=True)
def _flush_part(part, acc, lo, hi):
    """acc[:, lo:hi] += part[:, lo:hi] in float64; part[:, lo:hi] = 0."""
    zero = part.dtype.type(0.0)
    for p in range(part.shape[0]):
        pp = part[p][lo:hi]
        ap = acc[p][lo:hi]
        for i in range(hi - lo):
            ap[i] += np.float64(pp[i])
            pp[i] = zero


@njit(fastmath=FMO, cache=True)
def _lane_dot(a, b, L):
    """sum_i a[i] b[i] over i < L: lanes (see the module doc) added in lane order, in float64.

    The loop only loads: with a store in it, LLVM unrolled it and then could not vectorise
    (it cannot rule out that the store hits a or b), measured 5x slower."""
    lane = carray(_stack_zeros(_W, a.dtype), _W)
    lane64 = carray(_stack_zeros(_W, np.float64), _W)
    zero = a.dtype.type(0.0)
    full = L - L % _W
    w = min(_W, L)  # _W whenever a chunk runs (see the module doc)
    chunks = 0
    for i0 in range(0, full, _W):
        for l in range(w):
            lane[l] += a[i0 + l] * b[i0 + l]
        chunks += 1
        if chunks == _RUN // _W or i0 + _W == full:  # end of a run
            chunks = 0
            for l in range(w):
                lane64[l] += np.float64(lane[l])
                lane[l] = zero
    for l in range(L - full):
        lane64[l] += np.float64(a[full + l] * b[full + l])
    return _lane_total(lane64, 0)


@njit(fastmath=FMO, cache=True)
def _add_group(eg, kg, ng, nb, m, part, acc):
    """acc[p, :nb] += sum_g m[kg[g], p] eg[g, :nb] for the live bumps of a group: summed in
    bump order in x's dtype, then added in float64.

    Groups are the bumps k // _G, on both paths: the culled forward sums a point's
    registrations of one group the same way (:func:`_add_values`, :func:`_flush_part`), and
    the candidates that do not count add exact zeros, so a point's y has the same bits on
    the dense and the culled path, whatever other points came along."""
    P = m.shape[1]
    for p in range(P):
        mk = m[kg[0], p]
        e0 = eg[0]
        for i in range(nb):
            part[i] = mk * e0[i]
        for g in range(1, ng):
            mk = m[kg[g], p]
            eg_g = eg[g]
            for i in range(nb):
                part[i] += mk * eg_g[i]
        ap = acc[p]
        for i in range(nb):
            ap[i] += np.float64(part[i])


@njit(fastmath=FMO, cache=True)
def _weights(gb, g0, e, L, m, k, t, pm):
    """t[:L] = e * sum_p g[p] m[k, p] for the upstream gradient gb[:, g0:g0+L] (P, .), and
    pm[k, p] += sum_i g[p, i] e[i]."""
    P = gb.shape[0]
    if P == 1:
        g = gb[0][g0 : g0 + L]
        mk = m[k, 0]
        for i in range(L):
            t[i] = mk * (g[i] * e[i])
        pm[k, 0] += _lane_dot(g, e, L)
        return
    zero = t.dtype.type(0.0)
    for i in range(L):
        t[i] = zero
    for p in range(P):
        g = gb[p][g0 : g0 + L]
        mkp = m[k, p]
        for i in range(L):
            t[i] += g[i] * mkp
        pm[k, p] += _lane_dot(g, e, L)  # a pass of its own: fused with the one above, 1.3x slower
    for i in range(L):
        t[i] *= e[i]


@njit(fastmath=FMO, cache=True)
def _moments2(x0, x1, t, L, c0, c1, psk):
    """d = 2: psk += (S1, S2) from lanes of t d0, t d1, t d0 d0, t d0 d1, t d1 d1. A pair that
    does not count has t = 0, and its diff (possibly inf: x - c may overflow) is replaced by 0.

    The lanes are allocated here, in the function whose loop runs them (see the module doc)."""
    lane = carray(_stack_zeros(_MOMENT_LANES, t.dtype), _MOMENT_LANES)
    lane64 = carray(_stack_zeros(_MOMENT_LANES, np.float64), _MOMENT_LANES)
    zero = t.dtype.type(0.0)
    full = L - L % _W
    w = min(_W, L)  # _W whenever a chunk runs (see the module doc)
    chunks = 0
    for i0 in range(0, full, _W):
        for l in range(w):
            i = i0 + l
            live = t[i] != 0
            d0 = x0[i] - c0 if live else zero
            d1 = x1[i] - c1 if live else zero
            a0 = t[i] * d0
            a1 = t[i] * d1
            lane[l] += a0
            lane[_W + l] += a1
            lane[2 * _W + l] += a0 * d0
            lane[3 * _W + l] += a0 * d1
            lane[4 * _W + l] += a1 * d1
        chunks += 1
        if chunks == _RUN // _W or i0 + _W == full:  # end of a run
            chunks = 0
            for l in range(5 * w):
                lane64[l] += np.float64(lane[l])
                lane[l] = zero
    for l in range(L - full):
        i = full + l
        live = t[i] != 0
        d0 = x0[i] - c0 if live else zero
        d1 = x1[i] - c1 if live else zero
        a0 = t[i] * d0
        a1 = t[i] * d1
        lane[l] += a0
        lane[_W + l] += a1
        lane[2 * _W + l] += a0 * d0
        lane[3 * _W + l] += a0 * d1
        lane[4 * _W + l] += a1 * d1
    for q in range(5):
        psk[q] += _lane_total(lane64, q) + _lane_total(lane, q)


@njit(fastmath=FMO, cache=True)
def _moments3(x0, x1, x2, t, L, c0, c1, c2, psk):
    """d = 3: psk += (S1, S2) from lanes of t d_j (3) and t d_j d_l, j <= l (6), as :func:`_moments2`."""
    lane = carray(_stack_zeros(_MOMENT_LANES, t.dtype), _MOMENT_LANES)
    lane64 = carray(_stack_zeros(_MOMENT_LANES, np.float64), _MOMENT_LANES)
    zero = t.dtype.type(0.0)
    full = L - L % _W
    w = min(_W, L)  # _W whenever a chunk runs (see the module doc)
    chunks = 0
    for i0 in range(0, full, _W):
        for l in range(w):
            i = i0 + l
            live = t[i] != 0
            d0 = x0[i] - c0 if live else zero
            d1 = x1[i] - c1 if live else zero
            d2 = x2[i] - c2 if live else zero
            a0 = t[i] * d0
            a1 = t[i] * d1
            a2 = t[i] * d2
            lane[l] += a0
            lane[_W + l] += a1
            lane[2 * _W + l] += a2
            lane[3 * _W + l] += a0 * d0
            lane[4 * _W + l] += a0 * d1
            lane[5 * _W + l] += a0 * d2
            lane[6 * _W + l] += a1 * d1
            lane[7 * _W + l] += a1 * d2
            lane[8 * _W + l] += a2 * d2
        chunks += 1
        if chunks == _RUN // _W or i0 + _W == full:  # end of a run
            chunks = 0
            for l in range(9 * w):
                lane64[l] += np.float64(lane[l])
                lane[l] = zero
    for l in range(L - full):
        i = full + l
        live = t[i] != 0
        d0 = x0[i] - c0 if live else zero
        d1 = x1[i] - c1 if live else zero
        d2 = x2[i] - c2 if live else zero
        a0 = t[i] * d0
        a1 = t[i] * d1
        a2 = t[i] * d2
        lane[l] += a0
        lane[_W + l] += a1
        lane[2 * _W + l] += a2
        lane[3 * _W + l] += a0 * d0
        lane[4 * _W + l] += a0 * d1
        lane[5 * _W + l] += a0 * d2
        lane[6 * _W + l] += a1 * d1
        lane[7 * _W + l] += a1 * d2
        lane[8 * _W + l] += a2 * d2
    for q in range(9):
        psk[q] += _lane_total(lane64, q) + _lane_total(lane, q)


@njit(fastmath=FMO, cache=True)
def _moments_any(xs, p0, t, L, c, k, lane, psk):
    """Any d: psk += (S1, S2's upper triangle row by row), in the lanes and runs of
    :func:`_moments2`; lane is a zeroed heap array of (d + d(d+1)/2) * _W (slower: d >= 4)."""
    d = xs.shape[0]
    nq = d + d * (d + 1) // 2
    full = L - L % _W
    zero = lane.dtype.type(0.0)
    for i in range(L):
        if i > 0 and (i == full or (i < full and i % _RUN == 0)):
            for q in range(nq):
                psk[q] += _lane_total(lane, q)
                for l in range(_W):
                    lane[q * _W + l] = zero
        if t[i] == 0:
            continue  # adds exactly 0 (and its diff may be inf)
        l = i % _W
        q = d
        for j in range(d):
            dj = xs[j, p0 + i] - c[j, k]
            a = t[i] * dj
            lane[j * _W + l] += a
            for jj in range(j, d):
                lane[q * _W + l] += a * (xs[jj, p0 + i] - c[jj, k])
                q += 1


@njit(fastmath=FMO, cache=True)
def _moments(xs, p0, t, L, c, k, ps, heap_lane):
    """ps[k, :] += (S1, S2 upper triangle) of bump k over points p0:p0+L of xs, weights t."""
    d = xs.shape[0]
    nq = d + d * (d + 1) // 2
    if d == 2:
        _moments2(xs[0][p0 : p0 + L], xs[1][p0 : p0 + L], t, L, c[0, k], c[1, k], ps[k])
        return
    if d == 3:
        _moments3(xs[0][p0 : p0 + L], xs[1][p0 : p0 + L], xs[2][p0 : p0 + L], t, L, c[0, k], c[1, k], c[2, k], ps[k])
        return
    zero = heap_lane.dtype.type(0.0)
    for q in range(nq * _W):
        heap_lane[q] = zero
    _moments_any(xs, p0, t, L, c, k, heap_lane, ps[k])
    for q in range(nq):
        ps[k, q] += _lane_total(heap_lane, q)


@njit(fastmath=FMO, cache=True)
def _grad_x(xs, p0, t, L, c, A, k, gxr, off):
    """gxr[:, off:off+L] -= 2 t A_k diff (float64 rows): the contract's v = 2 t U^T z, with
    A = U^T U (float64). A pair that does not count has t = 0 and adds 0 (its diff may be inf)."""
    d = xs.shape[0]
    if d == 2:
        x0 = xs[0][p0 : p0 + L]
        x1 = xs[1][p0 : p0 + L]
        c0 = c[0, k]
        c1 = c[1, k]
        a00, a01, a11 = A[0, 0, k], A[0, 1, k], A[1, 1, k]
        g0 = gxr[0][off : off + L]
        g1 = gxr[1][off : off + L]
        for i in range(L):
            live = t[i] != 0
            tt = 2.0 * np.float64(t[i])
            d0 = np.float64(x0[i] - c0) if live else 0.0
            d1 = np.float64(x1[i] - c1) if live else 0.0
            g0[i] -= tt * (a00 * d0 + a01 * d1)
            g1[i] -= tt * (a01 * d0 + a11 * d1)
        return
    if d == 3:
        x0 = xs[0][p0 : p0 + L]
        x1 = xs[1][p0 : p0 + L]
        x2 = xs[2][p0 : p0 + L]
        c0 = c[0, k]
        c1 = c[1, k]
        c2 = c[2, k]
        a00, a01, a02 = A[0, 0, k], A[0, 1, k], A[0, 2, k]
        a11, a12, a22 = A[1, 1, k], A[1, 2, k], A[2, 2, k]
        g0 = gxr[0][off : off + L]
        g1 = gxr[1][off : off + L]
        g2 = gxr[2][off : off + L]
        for i in range(L):
            live = t[i] != 0
            tt = 2.0 * np.float64(t[i])
            d0 = np.float64(x0[i] - c0) if live else 0.0
            d1 = np.float64(x1[i] - c1) if live else 0.0
            d2 = np.float64(x2[i] - c2) if live else 0.0
            g0[i] -= tt * (a00 * d0 + a01 * d1 + a02 * d2)
            g1[i] -= tt * (a01 * d0 + a11 * d1 + a12 * d2)
            g2[i] -= tt * (a02 * d0 + a12 * d1 + a22 * d2)
        return
    for j in range(d):
        gj = gxr[j][off : off + L]
        for jj in range(d):
            ajj = A[j, jj, k]
            xjj = xs[jj][p0 : p0 + L]
            cjj = c[jj, k]
            for i in range(L):
                v = (2.0 * np.float64(t[i])) * (ajj * np.float64(xjj[i] - cjj))
                gj[i] -= v if t[i] != 0 else 0.0


# ---------------------------------------------------------------- dense
@njit(parallel=True, fastmath=FMO, cache=True)
def dense_forward(x, c, U, r2, m, y, npart):
    """y (n, P) = the oriented bump sum at every point; partition q owns a fixed run of blocks."""
    n, d = x.shape
    K, P = m.shape
    dt = x.dtype
    nblk = (n + _BO - 1) // _BO
    for q in prange(npart):
        xb = np.empty((d, _BO), dt)
        eg = np.empty((_G, _BO), dt)
        kg = np.empty(_G, np.int64)
        part = np.empty(_BO, dt)
        z = np.empty(_BO, dt)
        acc = np.empty((P, _BO))
        for blk in range(q * nblk // npart, (q + 1) * nblk // npart):
            i0 = blk * _BO
            nb = min(_BO, n - i0)
            for i in range(nb):
                for j in range(d):
                    xb[j, i] = x[i0 + i, j]
            for p in range(P):
                for i in range(nb):
                    acc[p, i] = 0.0
            for k0 in range(0, K, _G):
                ng = 0
                for k in range(k0, min(k0 + _G, K)):
                    if not (r2[k] > 0):
                        continue  # a dead bump counts nowhere
                    _e_seg(xb, 0, nb, c, U, r2, k, eg[ng], z)
                    kg[ng] = k
                    ng += 1
                if ng > 0:
                    _add_group(eg, kg, ng, nb, m, part, acc)
            for i in range(nb):
                for p in range(P):
                    y[i0 + i, p] = acc[p, i]


@njit(parallel=True, fastmath=FMO, cache=True)
def dense_backward(x, c, U, A, r2, m, g, gx, need_x, ps, pm, npart):
    """Partition q adds bump k's (S1, S2) into ps[q, k] and its dL/dm into pm[q, k]; gx (n, d)
    gets dL/dx when need_x."""
    n, d = x.shape
    K, P = m.shape
    dt = x.dtype
    nq = d + d * (d + 1) // 2
    nblk = (n + _BO - 1) // _BO
    for q in prange(npart):
        xb = np.empty((d, _BO), dt)
        gb = np.empty((P, _BO), dt)
        gxb = np.empty((d, _BO))
        e = np.empty(_BO, dt)
        z = np.empty(_BO, dt)
        t = np.empty(_BO, dt)
        heap_lane = np.empty(nq * _W, dt)
        psq = ps[q]
        pmq = pm[q]
        for blk in range(q * nblk // npart, (q + 1) * nblk // npart):
            i0 = blk * _BO
            nb = min(_BO, n - i0)
            for i in range(nb):
                for j in range(d):
                    xb[j, i] = x[i0 + i, j]
                    gxb[j, i] = 0.0
                for p in range(P):
                    gb[p, i] = g[i0 + i, p]
            for k in range(K):
                if not (r2[k] > 0):
                    continue
                _e_seg(xb, 0, nb, c, U, r2, k, e, z)
                _weights(gb, 0, e, nb, m, k, t, pmq)
                _moments(xb, 0, t, nb, c, k, psq, heap_lane)
                if need_x:
                    _grad_x(xb, 0, t, nb, c, A, k, gxb, 0)
            if need_x:
                for i in range(nb):
                    for j in range(d):
                        gx[i0 + i, j] = gxb[j, i]


@njit(cache=True)
def gram(U):
    """A (d, d, K) = U_k^T U_k in float64, for grad x (v = 2 t A diff)."""
    d = U.shape[0]
    K = U.shape[2]
    A = np.zeros((d, d, K))
    for j in range(d):
        for jj in range(d):
            for k in range(K):
                acc = 0.0
                for a in range(d):
                    acc += np.float64(U[a, j, k]) * np.float64(U[a, jj, k])
                A[j, jj, k] = acc
    return A


@njit(cache=True)
def finish_gradients(U, S):
    """(gc (d, K), gU (d, d, K)) in float64 from the summed moments S (K, d + d(d+1)/2):
    gc = 2 U^T U S1, gU = -2 U S2."""
    d = U.shape[0]
    K = U.shape[2]
    gc = np.zeros((d, K))
    gU = np.zeros((d, d, K))
    S2 = np.empty((d, d))
    v = np.empty(d)
    for k in range(K):
        q = d
        for j in range(d):
            for jj in range(j, d):
                S2[j, jj] = S[k, q]
                S2[jj, j] = S[k, q]
                q += 1
        for a in range(d):
            za = 0.0
            for j in range(d):
                za += np.float64(U[a, j, k]) * S[k, j]
            v[a] = za  # U S1
        for j in range(d):
            acc = 0.0
            for a in range(d):
                acc += np.float64(U[a, j, k]) * v[a]
            gc[j, k] = 2.0 * acc
        for a in range(d):
            for jj in range(d):
                acc = 0.0
                for j in range(d):
                    acc += np.float64(U[a, j, k]) * S2[j, jj]
                gU[a, jj, k] = -2.0 * acc
    return gc, gU


# ---------------------------------------------------------------- culled (grid) path
@njit(parallel=True, fastmath=FMO, cache=True)
def culled_forward(xs, perm, c, U, r2, m, row_pts, row_start, reg_k, reg_p0, reg_p1, bounds, maxrow, maxseg, y):
    """y (n, P), original order; rows, registrations and partitions as ``_kernels.culled_forward``."""
    _d, _n = xs.shape
    P = m.shape[1]
    dt = xs.dtype
    npart = bounds.shape[0] - 1
    for q in prange(npart):
        e = np.empty(maxseg, dt)
        z = np.empty(maxseg, dt)
        acc = np.empty((P, maxrow))
        part = np.zeros((P, maxrow), dt)  # kept 0 outside the group being summed
        for r in range(bounds[q], bounds[q + 1]):
            a = row_pts[r]
            nr = row_pts[r + 1] - a
            if nr == 0:
                continue
            for p in range(P):
                ap = acc[p]
                for i in range(nr):
                    ap[i] = 0.0
            group = -1
            lo = nr
            hi = 0
            for tt in range(row_start[r], row_start[r + 1]):
                p0 = reg_p0[tt]
                L = reg_p1[tt] - p0
                if L == 0:
                    continue
                k = reg_k[tt]
                if k // _G != group:  # registrations come in bump order: a new group starts
                    if hi > lo:
                        _flush_part(part, acc, lo, hi)
                    group = k // _G
                    lo = nr
                    hi = 0
                off = p0 - a
                _e_seg(xs, p0, L, c, U, r2, k, e, z)
                _add_values(e, L, m, k, part, off)
                lo = min(lo, off)
                hi = max(hi, off + L)
            if hi > lo:
                _flush_part(part, acc, lo, hi)
            for i in range(nr):
                pi = perm[a + i]
                for p in range(P):
                    y[pi, p] = acc[p, i]


@njit(parallel=True, fastmath=FMO, cache=True)
def culled_backward(
    xs, perm, c, U, A, r2, m, gs, row_pts, row_start, reg_k, reg_p0, reg_p1, bounds, maxrow, maxseg, gx, need_x, ps, pm
):
    """gs (n, P) is the upstream gradient in sorted order, gx (n, d) in original order;
    partition q adds its moments into ps[q] and its dL/dm into pm[q]."""
    d, _n = xs.shape
    P = m.shape[1]
    dt = xs.dtype
    nq = d + d * (d + 1) // 2
    npart = bounds.shape[0] - 1
    for q in prange(npart):
        e = np.empty(maxseg, dt)
        z = np.empty(maxseg, dt)
        t = np.empty(maxseg, dt)
        heap_lane = np.empty(nq * _W, dt)
        grow = np.empty((P, maxrow), dt)
        gxr = np.empty((d, maxrow))
        psq = ps[q]
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
                        gj[i] = 0.0
            for tt in range(row_start[r], row_start[r + 1]):
                p0 = reg_p0[tt]
                L = reg_p1[tt] - p0
                if L == 0:
                    continue
                k = reg_k[tt]
                off = p0 - a
                _e_seg(xs, p0, L, c, U, r2, k, e, z)
                _weights(grow, off, e, L, m, k, t, pmq)
                _moments(xs, p0, t, L, c, k, psq, heap_lane)
                if need_x:
                    _grad_x(xs, p0, t, L, c, A, k, gxr, off)
            if need_x:
                for i in range(nr):
                    pi = perm[a + i]
                    for j in range(d):
                        gx[pi, j] = gxr[j, i]


@njit(parallel=True, fastmath=FMO, cache=True)
def culled_pair_count(xs, c, U, r2, row_start, reg_k, reg_p0, reg_p1, bounds, maxseg):
    """Pairs with exp(-s) > 0 and s < r2 among the registered candidates, by the kernels' own
    arithmetic (test instrumentation: it must equal :func:`dense_pair_count`)."""
    xs.shape[0]
    npart = bounds.shape[0] - 1
    counts = np.zeros(npart, np.int64)
    for q in prange(npart):
        e = np.empty(maxseg, xs.dtype)
        z = np.empty(maxseg, xs.dtype)
        cnt = 0
        for r in range(bounds[q], bounds[q + 1]):
            for tt in range(row_start[r], row_start[r + 1]):
                p0 = reg_p0[tt]
                L = reg_p1[tt] - p0
                _e_seg(xs, p0, L, c, U, r2, reg_k[tt], e, z)
                for i in range(L):
                    if e[i] > 0:
                        cnt += 1
        counts[q] = cnt
    return counts.sum()


@njit(cache=True)
def dense_pair_count(x, c, U, r2):
    """Pairs with exp(-s) > 0 and s < r2 over all n * K pairs, by the kernels' arithmetic."""
    n, d = x.shape
    K = c.shape[1]
    xb = np.empty((d, _BO), x.dtype)
    e = np.empty(_BO, x.dtype)
    z = np.empty(_BO, x.dtype)
    cnt = 0
    for i0 in range(0, n, _BO):
        nb = min(_BO, n - i0)
        for i in range(nb):
            for j in range(d):
                xb[j, i] = x[i0 + i, j]
        for k in range(K):
            _e_seg(xb, 0, nb, c, U, r2, k, e, z)
            for i in range(nb):
                if e[i] > 0:
                    cnt += 1
    return cnt


# ---------------------------------------------------------------- registration on the grid
# Each bump is registered in the rows its ellipsoid reaches, with per row the cells along the
# row where the ellipsoid meets that row's slab (exact up to the margins below), so an
# elongated, rotated bump costs about what its ellipsoid holds, not its bounding box.
#
# Geometry (float64). Let M = U^-1 and Sigma = M M^T: the ellipsoid s < r2 is
# {x : (x - c)^T Sigma^-1 (x - c) < r2}, and its shadow on the grid dims S is the ellipsoid of
# Sigma_SS (the other dims project out). With u the row dims (all grid dims but the last) and
# t the row's own dim, a point at u reaches t in c_t + beta.(u - c_u) +- sqrt(sig2 (r2 - q(u)))
# with beta = Sigma_uu^-1 Sigma_ut, sig2 = Sigma_tt - Sigma_ut.beta and q(u) the shadow's
# quadratic form on u. Over a row's box B of u: t lies within c_t + [min_B, max_B] beta.(u - c_u)
# +- sqrt(sig2 (r2 - min_B q)), and a row with min_B q >= r2 is not reached at all.
#
# Margins. The kernels compute s in x's dtype: a pair counts where the rounded s < r2, so the
# registration uses the larger radius sqrt(r2) grow, grow = 1 + 4 d eps + 4 (d + 2) eps
# |(|U| h)| / sqrt(r2) (h the bounding box's half-widths), which bounds the rounding of
# z = U diff. The float64 geometry is widened by rel = 2**-20 plus its own conditioning; a
# bump whose U is too badly conditioned for that (rel > 1e-3) is registered by its bounding
# box instead, grown by the same factor. Cell bounds are widened too, so every point a cell
# holds is inside.


@njit(cache=True)
def _inverse(U, k, d, M):
    """M = U[:, :, k]^-1 in float64 (Gauss-Jordan, partial pivoting); False if singular."""
    W = np.zeros((d, 2 * d))
    for a in range(d):
        for j in range(d):
            W[a, j] = np.float64(U[a, j, k])
        W[a, d + a] = 1.0
    for col in range(d):
        piv = col
        for a in range(col + 1, d):
            if abs(W[a, col]) > abs(W[piv, col]):
                piv = a
        if not (abs(W[piv, col]) > 0):
            return False
        if piv != col:
            for j in range(2 * d):
                tmp = W[col, j]
                W[col, j] = W[piv, j]
                W[piv, j] = tmp
        inv = 1.0 / W[col, col]
        for j in range(2 * d):
            W[col, j] *= inv
        for a in range(d):
            if a != col:
                f = W[a, col]
                if f != 0:
                    for j in range(2 * d):
                        W[a, j] -= f * W[col, j]
    for a in range(d):
        for j in range(d):
            M[a, j] = W[a, d + j]
            if not math.isfinite(M[a, j]):
                return False
    return True


@njit(cache=True)
def _min_quadratic(P, m, b_lo, b_hi):
    """min of u^T P u over the box b_lo <= u <= b_hi (m = 1 or 2 dims, P positive definite)."""
    if m == 1:
        u = min(max(0.0, b_lo[0]), b_hi[0])
        return P[0, 0] * u * u
    if b_lo[0] <= 0 <= b_hi[0] and b_lo[1] <= 0 <= b_hi[1]:
        return 0.0
    best = np.inf
    # The minimum of a convex quadratic over a rectangle not holding its centre is on an edge.
    for j in range(2):
        o = 1 - j
        for side in range(2):
            uj = b_lo[j] if side == 0 else b_hi[j]
            uo = min(max(-P[o, j] * uj / P[o, o], b_lo[o]), b_hi[o])
            val = P[j, j] * uj * uj + 2.0 * P[j, o] * uj * uo + P[o, o] * uo * uo
            best = min(best, val)
    return max(best, 0.0)


@njit(cache=True)
def _cell_bounds(a, lo, inv_h, nc, tol):
    """[low, high] holding every point binned into cell a of a grid dim (widened by tol);
    unbounded for a dim of one cell."""
    if nc <= 1 or not (inv_h > 0):
        return -np.inf, np.inf
    return lo + a / inv_h - tol, lo + (a + 1) / inv_h + tol


@njit(cache=True)
def register_ellipsoids(c, U, r2, half, gdim, lo, inv_h, ncell, start, eps):
    """Per row, the bumps whose ellipsoid reaches it and their segment of points: as
    ``_kernels.register_bumps`` returns them (row_start, reg_k, reg_p0, reg_p1, n_candidates),
    registrations of a row in bump order. eps: machine epsilon of the kernels' dtype."""
    d, K = c.shape
    gd = gdim.shape[0]
    m = gd - 1  # row dims
    nz = ncell[gd - 1]
    nrows = 1
    for j in range(m):
        nrows *= ncell[j]
    # Pass 1: per bump, its geometry and the rectangle of rows its shadow's box reaches.
    r0 = np.zeros((2, K), np.int64)
    r1 = np.full((2, K), -1, np.int64)
    cen = np.zeros((gd, K))  # c on the grid dims
    hb = np.zeros((gd, K))  # half-extents of the (widened) shadow on the grid dims
    geo = np.zeros((7, K))  # Puu (3: 00, 01, 11), beta (2), sig2, rho2
    boxed = np.zeros(K, np.bool_)
    valid = np.zeros(K, np.bool_)
    M = np.empty((d, d))
    Sig = np.empty((gd, gd))
    for k in range(K):
        rk = np.float64(r2[k])
        if not (rk > 0):
            continue  # counts nowhere
        # The kernels' rounding of z = U diff: a pair may count out to radius sqrt(r2) * grow.
        uh = 0.0
        for a in range(d):
            row = 0.0
            for j in range(d):
                row += abs(np.float64(U[a, j, k])) * np.float64(half[j, k])
            uh += row * row
        grow = 1.0 + 4 * d * eps
        if math.isfinite(rk):
            grow += 4 * (d + 2) * eps * math.sqrt(uh / rk)
        ok = math.isfinite(rk) and math.isfinite(grow) and _inverse(U, k, d, M)  # else: by the box
        rel = _REL
        if ok:
            nu = 0.0
            nm = 0.0
            for a in range(d):
                for j in range(d):
                    nu += np.float64(U[a, j, k]) ** 2
                    nm += M[a, j] ** 2
            kappa2 = nu * nm  # cond(U)^2 (Frobenius), the conditioning of Sigma
            rel = _REL + 1e-13 * kappa2
            ok = rel < 1e-3
        if ok:
            for g1 in range(gd):
                for g2 in range(gd):
                    acc = 0.0
                    for a in range(d):
                        acc += M[gdim[g1], a] * M[gdim[g2], a]
                    Sig[g1, g2] = acc
            rho2 = rk * grow * grow * (1.0 + 4.0 * rel)  # then the float64 margin
            if m == 1:
                det = Sig[0, 0]
                ok = det > 0
                if ok:
                    p00 = 1.0 / Sig[0, 0]
                    p01 = 0.0
                    p11 = 0.0
                    b0 = p00 * Sig[0, 1]
                    b1 = 0.0
                    sig2 = Sig[1, 1] - Sig[0, 1] * b0
            else:
                det = Sig[0, 0] * Sig[1, 1] - Sig[0, 1] * Sig[1, 0]
                ok = det > 0
                if ok:
                    p00 = Sig[1, 1] / det
                    p01 = -Sig[0, 1] / det
                    p11 = Sig[0, 0] / det
                    b0 = p00 * Sig[0, 2] + p01 * Sig[1, 2]
                    b1 = p01 * Sig[0, 2] + p11 * Sig[1, 2]
                    sig2 = Sig[2, 2] - Sig[0, 2] * b0 - Sig[1, 2] * b1
            if ok:
                geo[0, k] = p00
                geo[1, k] = p01
                geo[2, k] = p11
                geo[3, k] = b0
                geo[4, k] = b1
                geo[5, k] = max(sig2, 0.0) + rel * Sig[m, m]  # cancellation in sig2: widened
                geo[6, k] = rho2
                for g in range(gd):
                    cen[g, k] = np.float64(c[gdim[g], k])
                    hb[g, k] = math.sqrt(rho2 * Sig[g, g]) * (1.0 + rel) + rel * abs(cen[g, k])
        if not ok:
            boxed[k] = True  # by the bounding box, grown by the kernels' rounding
            g_box = grow if math.isfinite(grow) else np.inf
            for g in range(gd):
                cen[g, k] = np.float64(c[gdim[g], k])
                h = np.float64(half[gdim[g], k]) * g_box
                hb[g, k] = h + (abs(cen[g, k]) + h) * _REL
        valid[k] = True
        for j in range(m):
            a0, a1 = _cell_range(cen[j, k] - hb[j, k], cen[j, k] + hb[j, k], lo[j], inv_h[j], ncell[j])
            if a0 > a1:
                valid[k] = False
            r0[j, k] = a0
            r1[j, k] = a1
        a0, a1 = _cell_range(cen[m, k] - hb[m, k], cen[m, k] + hb[m, k], lo[m], inv_h[m], ncell[m])
        if a0 > a1 or not (hb[m, k] >= 0):
            valid[k] = False
    cap = 0
    for k in range(K):
        if valid[k]:
            n_rows = 1
            for j in range(m):
                n_rows *= r1[j, k] - r0[j, k] + 1
            cap += n_rows
    # Pass 2: per (bump, row of its rectangle), the cells along the row, in bump order.
    rec_row = np.empty(cap, np.int64)
    rec_k = np.empty(cap, np.int64)
    rec_p0 = np.empty(cap, np.int64)
    rec_p1 = np.empty(cap, np.int64)
    nrec = 0
    b_lo = np.empty(2)
    b_hi = np.empty(2)
    P = np.empty((2, 2))
    for k in range(K):
        if not valid[k]:
            continue
        P[0, 0] = geo[0, k]
        P[0, 1] = geo[1, k]
        P[1, 0] = geo[1, k]
        P[1, 1] = geo[2, k]
        ct = cen[m, k]
        ht = hb[m, k]
        tol_t = _REL * (abs(ct) + ht)
        ra0 = r0[0, k] if m == 2 else 0
        ra1 = r1[0, k] if m == 2 else 0
        rb0 = r0[m - 1, k]
        rb1 = r1[m - 1, k]
        for ra in range(ra0, ra1 + 1):
            for rb in range(rb0, rb1 + 1):
                tl = ct - ht
                th = ct + ht
                if not boxed[k]:
                    spread_lo = 0.0
                    spread_hi = 0.0
                    scale = 0.0
                    for j in range(m):
                        cell = ra if (m == 2 and j == 0) else rb
                        ext = ncell[j] / inv_h[j] if inv_h[j] > 0 else 0.0
                        low, high = _cell_bounds(cell, lo[j], inv_h[j], ncell[j], _REL * (abs(lo[j]) + ext))
                        b_lo[j] = max(low, cen[j, k] - hb[j, k]) - cen[j, k]
                        b_hi[j] = min(high, cen[j, k] + hb[j, k]) - cen[j, k]
                        bj = geo[3 + j, k]
                        spread_lo += min(bj * b_lo[j], bj * b_hi[j])
                        spread_hi += max(bj * b_lo[j], bj * b_hi[j])
                        scale += abs(bj) * (abs(b_lo[j]) + abs(b_hi[j]))
                    if b_lo[0] > b_hi[0] or (m == 2 and b_lo[1] > b_hi[1]):
                        continue
                    qmin = _min_quadratic(P, m, b_lo, b_hi)
                    rho2 = geo[6, k]
                    if qmin >= rho2:
                        continue  # the row's slab misses the ellipsoid
                    h = math.sqrt(geo[5, k] * (rho2 - qmin))
                    tol = tol_t + _REL * scale
                    tl = max(tl, ct + spread_lo - h - tol)
                    th = min(th, ct + spread_hi + h + tol)
                z0, z1 = _cell_range(tl, th, lo[m], inv_h[m], nz)
                if z0 > z1:
                    continue
                row = ra * ncell[1] + rb if m == 2 else rb
                p0 = start[row * nz + z0]
                p1 = start[row * nz + z1 + 1]
                if p1 == p0:
                    continue
                rec_row[nrec] = row
                rec_k[nrec] = k
                rec_p0[nrec] = p0
                rec_p1[nrec] = p1
                nrec += 1
    # Stable counting sort by row: registrations of a row stay in bump order.
    row_start = np.zeros(nrows + 1, np.int64)
    for i in range(nrec):
        row_start[rec_row[i] + 1] += 1
    for r in range(nrows):
        row_start[r + 1] += row_start[r]
    fill = row_start[:-1].copy()
    reg_k = np.empty(nrec, np.int64)
    reg_p0 = np.empty(nrec, np.int64)
    reg_p1 = np.empty(nrec, np.int64)
    ncand = 0
    for i in range(nrec):
        r = rec_row[i]
        f = fill[r]
        fill[r] = f + 1
        reg_k[f] = rec_k[i]
        reg_p0[f] = rec_p0[i]
        reg_p1[f] = rec_p1[i]
        ncand += rec_p1[i] - rec_p0[i]
    return row_start, reg_k, reg_p0, reg_p1, ncand
