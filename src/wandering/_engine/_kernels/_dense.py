"""The exact (dense) sum: every point against every bump, in L1-resident blocks of _B points;
forward, and a backward that recomputes each pair."""

from __future__ import annotations

import numpy as np
from numba import njit, prange

from wandering._engine._kernels._accumulate import FLUSH_EVERY, _flush_rows, dot64, dot64_axpy, dot64x4_axpy, sum64x2
from wandering._engine._kernels._exp import fma, neg_exp
from wandering._engine._kernels._layout import transpose_into

_B = 256  # points per block: buffers stay in L1

# ---------------------------------------------------------------- pair kernels


@njit(cache=True)
def neg_exp_block(s, e, nb):
    """e[:nb] = neg_exp(s[:nb])."""
    for i in range(nb):
        e[i] = neg_exp(s[i])


@njit(cache=True)
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
            s[i] = fma(z, z, s[i])
            gate[i] = gate[i] if abs(df) < hj else zero


@njit(cache=True)
def _accumulate_outputs(acc, off, m, k, e, gate, nb):
    """acc[p, off:off+nb] += m[k, p] * e[:nb] * gate[:nb] for every output p (one fma each;
    acc in the inputs' dtype, flushed by the caller); e becomes e * gate."""
    for i in range(nb):
        e[i] = e[i] * gate[i]
    P = m.shape[1]
    P4 = P - P % 4
    for p in range(0, P4, 4):  # four outputs a pass: one read of e for four
        a0 = acc[p][off : off + nb]
        a1 = acc[p + 1][off : off + nb]
        a2 = acc[p + 2][off : off + nb]
        a3 = acc[p + 3][off : off + nb]
        m0, m1, m2, m3 = m[k, p], m[k, p + 1], m[k, p + 2], m[k, p + 3]
        for i in range(nb):
            ei = e[i]
            a0[i] = fma(m0, ei, a0[i])
            a1[i] = fma(m1, ei, a1[i])
            a2[i] = fma(m2, ei, a2[i])
            a3[i] = fma(m3, ei, a3[i])
    for p in range(P4, P):
        ap = acc[p][off : off + nb]
        mkp = m[k, p]
        for i in range(nb):
            ap[i] = fma(mkp, e[i], ap[i])


@njit(cache=True)
def _grad_m1(g1, e, gate, mk2, nb, tm):
    """P == 1, one bump on nb points with upstream gradient g1[:nb]: returns sum g e (float64,
    :func:`dot64`) and sets tm = 2 m g e (0 for dead pairs); e becomes e * gate."""
    zero = tm.dtype.type(0.0)
    for i in range(nb):
        el = e[i] * gate[i]
        e[i] = el
        tm[i] = (g1[i] * el) * mk2 if el > zero else zero
    return dot64(g1, e, nb)


@njit(cache=True)
def _multi_tm(gb, g0, m, k, nb, e, gate, tm, pm):
    """P > 1, bump k on nb points whose upstream gradient is gb[:, g0:g0+nb]: adds
    sum_i g[p, i] e_i (dot64) into pm[k, p] and sets tm_i = 2 e_i sum_p g[p, i] m[k, p]
    (0 for dead pairs; the sum over outputs runs in p order); e becomes e * gate."""
    P = gb.shape[0]
    zero = tm.dtype.type(0.0)
    two = tm.dtype.type(2.0)
    for i in range(nb):
        e[i] = e[i] * gate[i]
        tm[i] = zero
    P4 = P - P % 4
    for p in range(0, P4, 4):  # four outputs a pass: the same bits as one at a time, fewer reads
        s0, s1, s2, s3 = dot64x4_axpy(
            gb[p][g0 : g0 + nb], gb[p + 1][g0 : g0 + nb], gb[p + 2][g0 : g0 + nb], gb[p + 3][g0 : g0 + nb],
            e[:nb], tm[:nb], m[k, p], m[k, p + 1], m[k, p + 2], m[k, p + 3], nb,
        )  # fmt: skip
        pm[k, p] += s0
        pm[k, p + 1] += s1
        pm[k, p + 2] += s2
        pm[k, p + 3] += s3
    for p in range(P4, P):
        pm[k, p] += dot64_axpy(gb[p][g0 : g0 + nb], e[:nb], tm[:nb], m[k, p], nb)
    for i in range(nb):
        el = e[i]
        tm[i] = two * el * tm[i] if el > zero else zero


@njit(cache=True)
def _grad_tail(xs, p0, c, iw, k, nb, tm, gxb, g0, pcw, need_x, ta, taz):
    """From t_i = 2 e_i sum_p g[i, p] m[k, p] (0 for dead pairs) for points p0:p0+nb of xs:
    grad x into gxb[:, g0:g0+nb] (the inputs' dtype, flushed by the caller; when need_x),
    grad c, w into pcw (:func:`sum64x2`). ta, taz: scratch of at least nb entries."""
    d = xs.shape[0]
    zero = tm.dtype.type(0.0)
    for j in range(d):
        xj = xs[j][p0 : p0 + nb]
        gxj = gxb[j][g0 : g0 + nb]
        cj = c[j, k]
        iwj = iw[j, k]
        for i in range(nb):
            z = (xj[i] - cj) * iwj
            a = tm[i] * z * iwj
            a = a if tm[i] != zero else zero  # dead pairs: z may be inf
            ta[i] = a
            taz[i] = a * z
            if need_x:
                gxj[i] -= a
        sc, sw = sum64x2(ta[:nb], taz[:nb], nb)
        pcw[j, k] += sc
        pcw[d + j, k] += sw


@njit(parallel=True, cache=True)
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
        acc = np.zeros((P, _B), dt)
        acc64 = np.empty((P, _B))
        for blk in range(q * nblk // npart, (q + 1) * nblk // npart):
            i0 = blk * _B
            nb = min(_B, n - i0)
            for i in range(nb):
                for j in range(d):
                    xb[j, i] = x[i0 + i, j]
            acc64[:, :nb] = 0.0
            for k in range(K):
                _pair_block(xb, 0, c, iw, half, k, nb, s, gate)
                neg_exp_block(s, e, nb)
                _accumulate_outputs(acc, 0, m, k, e, gate, nb)
                if k % FLUSH_EVERY == FLUSH_EVERY - 1 or k == K - 1:
                    _flush_rows(acc64, acc, 0, nb)
            transpose_into(acc64.reshape(P * _B), _B, y.reshape(n * P)[i0 * P :], P, P, nb)


@njit(parallel=True, cache=True)
def dense_backward(x, c, iw, half, m, g, gx, pcw, pm, npart):
    """gx (n, d) gets dL/dx; partition q adds its dL/dc, dL/dw into pcw[q] and dL/dm into pm[q]."""
    n, d = x.shape
    K, P = m.shape
    dt = x.dtype
    two = dt.type(2.0)
    nblk = (n + _B - 1) // _B
    for q in prange(npart):
        xb = np.empty((d, _B), dt)
        gxb = np.zeros((d, _B), dt)
        gx64 = np.empty((d, _B))
        gb = np.empty((P, _B), dt)
        s = np.empty(_B, dt)
        gate = np.empty(_B, dt)
        e = np.empty(_B, dt)
        tm = np.empty(_B, dt)
        ta = np.empty(_B, dt)
        taz = np.empty(_B, dt)
        pcq = pcw[q]
        pmq = pm[q]
        for blk in range(q * nblk // npart, (q + 1) * nblk // npart):
            i0 = blk * _B
            nb = min(_B, n - i0)
            for i in range(nb):
                for j in range(d):
                    xb[j, i] = x[i0 + i, j]
            transpose_into(g.reshape(n * P)[i0 * P :], P, gb.reshape(P * _B), _B, nb, P)
            gx64[:, :nb] = 0.0
            for k in range(K):
                _pair_block(xb, 0, c, iw, half, k, nb, s, gate)
                neg_exp_block(s, e, nb)
                if P == 1:
                    pmq[k, 0] += _grad_m1(gb[0], e, gate, two * m[k, 0], nb, tm)
                else:
                    _multi_tm(gb, 0, m, k, nb, e, gate, tm, pmq)
                _grad_tail(xb, 0, c, iw, k, nb, tm, gxb, 0, pcq, True, ta, taz)
                if k % FLUSH_EVERY == FLUSH_EVERY - 1 or k == K - 1:
                    _flush_rows(gx64, gxb, 0, nb)
            for i in range(nb):
                for j in range(d):
                    gx[i0 + i, j] = gx64[j, i]
