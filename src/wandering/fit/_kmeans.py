"""Nearest-centre assignment for k-means with many centres (the bump placement of pictures).

k-means' Lloyd step needs, for each of n points, the nearest of K centres. The plain
way, an (n, K) distance matrix in chunks, costs n K d: 2.6e9 pairs for a 512 x 512
picture and K = 10,000, seconds per Lloyd step. In 1 to 3 dimensions the Numba kernel
here puts the centres in a uniform grid of about K / 2 cells and searches, for each
point, rings of cells outward from its own until no centre outside the rings searched
can be nearer than the best found: O(n) work for spread-out centres. Above 3
dimensions it runs the plain search in compiled, parallel loops.

Both give exactly what :func:`nearest_centre_reference` (plain PyTorch) gives: squared
distances summed over the coordinates in order, in float64, and on ties the lowest
centre index.
"""

from __future__ import annotations

import numpy as np
import torch

try:
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False

__all__ = ["nearest_centre", "nearest_centre_reference"]

_GRID_DIMS = 3  # the grid kernel's dimensions; fewer are padded with zeros (adding 0.0 is exact)
_CENTRES_PER_CELL = 2.0
# The grid's lower bound on the distance to a centre outside the searched rings is shrunk by
# this fraction of a cell, so that rounding in a centre's cell index cannot end a search early.
_CELL_MARGIN = 1e-9


def _check(x, c) -> tuple[np.ndarray, np.ndarray]:
    arrays = []
    for name, a in (("x", x), ("centres", c)):
        if isinstance(a, torch.Tensor):
            a = a.detach().cpu().numpy()
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a numpy array or torch.Tensor, but got {type(a).__name__}")
        if a.dtype.kind != "f":
            raise TypeError(f"{name} must hold floating-point numbers, but got dtype {a.dtype}")
        if a.ndim != 2:
            raise ValueError(f"{name} must have shape (rows, d), but got {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"{name} must be finite, but holds NaN or infinity")
        arrays.append(np.ascontiguousarray(a, dtype=np.float64))
    xs, cs = arrays
    if xs.shape[1] != cs.shape[1]:
        raise ValueError(f"x and centres must have the same d, but got {xs.shape[1]} and {cs.shape[1]}")
    if cs.shape[0] < 1:
        raise ValueError(f"centres must hold at least one row, but got shape {cs.shape}")
    return xs, cs


def nearest_centre_reference(x: torch.Tensor, centres: torch.Tensor, chunk: int = 4096):
    """Plain PyTorch: for each point, the nearest centre (lowest index on ties) and its squared distance.

    Args:
        x: (n, d) points, float32 or float64.
        centres: (K, d), K >= 1.
        chunk: Points per (chunk, K) distance block.

    Returns:
        (labels, dist2): int64 (n,) and float64 (n,) tensors; distances computed in float64 as
        ``sum_j (x_j - c_j)^2`` summed over j in order.
    """
    x64, c64 = x.detach().double(), centres.detach().double()
    labels, dists = [], []
    for i in range(0, x64.shape[0], chunk):
        diff = x64[i : i + chunk, None, :] - c64[None, :, :]
        d2 = diff[..., 0] * diff[..., 0]
        for j in range(1, x64.shape[1]):
            d2 = d2 + diff[..., j] * diff[..., j]
        val, lab = torch.min(d2, dim=1)  # first minimal index on ties
        labels.append(lab)
        dists.append(val)
    if not labels:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.float64)
    return torch.cat(labels), torch.cat(dists)


if _HAVE_NUMBA:

    @njit(cache=True)
    def _grid(c, lo, inv, g):  # pragma: no cover - compiled
        """Centres sorted by cell (index order within a cell) and each cell's start in that order."""
        K = c.shape[0]
        cell = np.empty(K, dtype=np.int64)
        for k in range(K):
            flat = 0
            for j in range(3):
                i = int((c[k, j] - lo[j]) * inv[j])
                i = min(max(i, 0), g[j] - 1)
                flat = flat * g[j] + i
            cell[k] = flat
        order = np.argsort(cell, kind="mergesort")  # stable: index order within a cell
        ncell = g[0] * g[1] * g[2]
        start = np.zeros(ncell + 1, dtype=np.int64)
        for k in range(K):
            start[cell[k] + 1] += 1
        for q in range(ncell):
            start[q + 1] += start[q]
        return order, start

    @njit(parallel=True, cache=True)
    def _nearest_grid(x, c, lo, inv, cellw, g, order, start, labels, dist2):  # pragma: no cover - compiled
        n = x.shape[0]
        for i in prange(n):
            own = np.empty(3, dtype=np.int64)
            for j in range(3):
                own[j] = min(max(int((x[i, j] - lo[j]) * inv[j]), 0), g[j] - 1)
            best = np.inf
            bk = -1
            r = 0
            while True:
                a0, b0 = max(own[0] - r, 0), min(own[0] + r, g[0] - 1)
                a1, b1 = max(own[1] - r, 0), min(own[1] + r, g[1] - 1)
                a2, b2 = max(own[2] - r, 0), min(own[2] + r, g[2] - 1)
                for i0 in range(a0, b0 + 1):
                    e0 = abs(i0 - own[0])
                    for i1 in range(a1, b1 + 1):
                        e1 = max(e0, abs(i1 - own[1]))
                        for i2 in range(a2, b2 + 1):
                            if max(e1, abs(i2 - own[2])) != r:
                                continue  # an inner ring's cell: searched already
                            q = (i0 * g[1] + i1) * g[2] + i2
                            for s in range(start[q], start[q + 1]):
                                k = order[s]
                                d2 = 0.0
                                for j in range(3):
                                    t = x[i, j] - c[k, j]
                                    d2 += t * t
                                if d2 < best or (d2 == best and k < bk):
                                    best = d2
                                    bk = k
                # Any centre outside the searched block lies beyond one of its faces.
                lb = np.inf
                for j in range(3):
                    if own[j] - r > 0:
                        lb = min(lb, x[i, j] - (lo[j] + (own[j] - r) * cellw[j]) - _CELL_MARGIN * cellw[j])
                    if own[j] + r < g[j] - 1:
                        lb = min(lb, lo[j] + (own[j] + r + 1) * cellw[j] - x[i, j] - _CELL_MARGIN * cellw[j])
                if lb == np.inf:
                    break  # the block is the whole grid
                if bk >= 0 and lb > 0 and best < lb * lb:
                    break
                r += 1
            labels[i] = bk
            dist2[i] = best

    @njit(parallel=True, cache=True)
    def _nearest_plain(x, c, labels, dist2):  # pragma: no cover - compiled
        n, d = x.shape
        K = c.shape[0]
        for i in prange(n):
            best = np.inf
            bk = 0
            for k in range(K):
                d2 = 0.0
                for j in range(d):
                    t = x[i, j] - c[k, j]
                    d2 += t * t
                if d2 < best:  # strict: the lowest index keeps a tie
                    best = d2
                    bk = k
            labels[i] = bk
            dist2[i] = best


def _grid_layout(cs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(lo, 1 / cell width, cell width, cells) per padded dimension: about 2 centres per cell."""
    K, d = cs.shape
    lo = np.zeros(_GRID_DIMS)
    extent = np.zeros(_GRID_DIMS)
    lo[:d] = cs.min(0)
    extent[:d] = cs.max(0) - lo[:d]
    spread = extent > 0
    g = np.ones(_GRID_DIMS, dtype=np.int64)
    if spread.any():
        side = (np.prod(extent[spread]) * _CENTRES_PER_CELL / K) ** (1.0 / spread.sum())
        g[spread] = np.clip(np.ceil(extent[spread] / side), 1, 4 * K).astype(np.int64)
    cellw = np.where(spread, extent / g, 1.0)
    return lo, 1.0 / cellw, cellw, g


def nearest_centre(x, centres) -> tuple[np.ndarray, np.ndarray]:
    """For each point, the index of its nearest centre and the squared distance.

    Numba kernels when Numba is installed (a grid search for d <= 3, a parallel plain search
    above), else :func:`nearest_centre_reference`; the same results either way (float64
    distances, lowest index on ties).

    Args:
        x: (n, d) points, numpy array or tensor, float32 or float64, finite.
        centres: (K, d) centres, K >= 1, finite.

    Returns:
        (labels, dist2): int64 (n,) and float64 (n,) numpy arrays.

    Raises:
        TypeError: not an array or tensor, or not floating point.
        ValueError: not 2-D, different d, no centres, or NaN/infinity.
    """
    xs, cs = _check(x, centres)
    n, d = xs.shape
    if not _HAVE_NUMBA:
        lab, dist = nearest_centre_reference(torch.from_numpy(xs), torch.from_numpy(cs))
        return lab.numpy(), dist.numpy()
    labels = np.empty(n, dtype=np.int64)
    dist2 = np.empty(n, dtype=np.float64)
    if n == 0:
        return labels, dist2
    if d > _GRID_DIMS:
        _nearest_plain(xs, cs, labels, dist2)
        return labels, dist2
    xp = np.zeros((n, _GRID_DIMS))
    cp = np.zeros((len(cs), _GRID_DIMS))
    xp[:, :d], cp[:, :d] = xs, cs
    lo, inv, cellw, g = _grid_layout(cp[:, :d])
    order, start = _grid(cp, lo, inv, g)
    _nearest_grid(xp, cp, lo, inv, cellw, g, order, start, labels, dist2)
    return labels, dist2
