"""Small helpers around the kernels: partials reduced in partition order, width preparation,
finite checks."""

from __future__ import annotations

import math

import numpy as np
from numba import njit


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
