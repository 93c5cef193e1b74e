"""Sparse least squares for the magnitudes of many culled bumps (large K, e.g. pictures).

``wandering.fit._lstsq`` accumulates a dense (K+1, K+1) Gram matrix: O(K^2) memory and an
O(K^3) Cholesky, which at K = 10,000 means 800 MB per matrix and several seconds per
solve. A culled bump meets only its neighbours, so the Gram matrix is sparse: this
module lists the (point, bump) pairs that count (a Numba kernel, bumps sorted by their
first coordinate and searched in a window), builds the design as a ``scipy.sparse``
matrix, and solves the ridge normal equations with a sparse LU factorisation.

The pairs are exactly those the modules evaluate: for axis-aligned bumps the support
box ``|x_j - c_j| < half_j`` (the engines' test), for oriented bumps the ellipsoid
``|U (x - c)|^2 < r2`` (``wandering._engine._rotation``, ``wandering._engine._geometry.cutoffs``), so a
solved magnitude fits the function the module computes.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wandering._engine._geometry import cutoffs, ellipsoid_halfwidths, inverse_widths, support_halfwidths
from wandering._engine._rotation import precision_transforms, rotations
from wandering.fit._lstsq import RIDGE_GRID

try:
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False

__all__ = ["sparse_design", "solve_magnitudes_sparse", "solve_magnitudes_sparse_cv"]

# Relative widening of an oriented bump's bounding box before the exact ellipsoid test:
# the box is only a prefilter, and must not drop a pair the ellipsoid holds up to rounding.
_BOX_MARGIN = 1e-6


if _HAVE_NUMBA:

    @njit(cache=True)
    def _pairs_of_point(xi, c, U, half, r2, c0, hmax0, ellipsoid, idx, val):  # pragma: no cover - compiled
        """Pairs of one point: fills idx/val (bump index, exp(-s)); returns their count."""
        d = xi.shape[0]
        a = np.searchsorted(c0, xi[0] - hmax0)
        b = np.searchsorted(c0, xi[0] + hmax0, side="right")
        cnt = 0
        for k in range(a, b):
            inside = True
            for j in range(d):
                if not (abs(xi[j] - c[k, j]) < half[k, j]):
                    inside = False
                    break
            if not inside:
                continue
            s = 0.0
            if ellipsoid:
                for r in range(d):
                    z = 0.0
                    for j in range(d):
                        z += U[k, r, j] * (xi[j] - c[k, j])
                    s += z * z
                if not (s < r2[k]):
                    continue
            else:
                for j in range(d):
                    z = (xi[j] - c[k, j]) * U[k, j, j]
                    s += z * z
            e = math.exp(-s)
            if e > 0.0:
                if idx.shape[0] > 0:
                    idx[cnt] = k
                    val[cnt] = e
                cnt += 1
        return cnt

    @njit(parallel=True, cache=True)
    def _count_pairs(x, c, U, half, r2, c0, hmax0, ellipsoid, nchunks):  # pragma: no cover - compiled
        n = x.shape[0]
        counts = np.zeros(n, np.int64)
        empty_i = np.empty(0, np.int64)
        empty_v = np.empty(0, np.float64)
        for ch in prange(nchunks):
            for i in range(ch * n // nchunks, (ch + 1) * n // nchunks):
                counts[i] = _pairs_of_point(x[i], c, U, half, r2, c0, hmax0, ellipsoid, empty_i, empty_v)
        return counts

    @njit(parallel=True, cache=True)
    def _fill_pairs(x, c, U, half, r2, c0, hmax0, ellipsoid, indptr, nchunks):  # pragma: no cover - compiled
        n = x.shape[0]
        idx = np.empty(indptr[n], np.int64)
        val = np.empty(indptr[n], np.float64)
        for ch in prange(nchunks):
            for i in range(ch * n // nchunks, (ch + 1) * n // nchunks):
                lo, hi = indptr[i], indptr[i + 1]
                _pairs_of_point(x[i], c, U, half, r2, c0, hmax0, ellipsoid, idx[lo:hi], val[lo:hi])
        return idx, val


def _geometry(c, w, angles, support_p, dtype):
    """Per-bump (K, d) centres and boxes, (K, d, d) transforms, (K,) cut-offs, in ``dtype`` (the
    points'), as the engines test pairs."""
    c, w = c.detach().to(dtype).cpu(), w.detach().to(dtype).cpu()
    d, K = c.shape
    if angles is None or d == 1:
        iw = inverse_widths(w)
        U = torch.zeros(K, d, d, dtype=dtype)
        U[:, torch.arange(d), torch.arange(d)] = iw.T
        half = support_halfwidths(w, support_p)
        r2 = torch.full((K,), math.inf, dtype=dtype)
        return c.T.contiguous(), half.T.contiguous(), U, r2, False
    R = rotations(angles.detach().to(dtype).cpu(), d)
    U = precision_transforms(R, w).permute(2, 0, 1).contiguous()
    r2 = cutoffs(w, support_p)
    half = ellipsoid_halfwidths(R, w, r2) * (1.0 + _BOX_MARGIN)
    return c.T.contiguous(), half.T.contiguous(), U, r2.contiguous(), True


def sparse_design(x, c, w, support_p: float, angles=None):
    """The culled design Phi (n, K) as a ``scipy.sparse.csr_matrix`` (float64).

    Args:
        x: Points (n, d) (tensor or array).
        c, w: Centres and widths / scales (d, K).
        support_p: The modules' cut-off in (0, 1) (an exact sum has no sparse design).
        angles: Rotation angles (d(d-1)/2, K) of oriented bumps; None for axis-aligned ones.

    Returns:
        Phi with ``Phi[i, k]`` bump k's value at point i where the pair counts, else absent.

    Raises:
        RuntimeError: without numba.
        ValueError: support_p None.
    """
    import scipy.sparse as sp

    if not _HAVE_NUMBA:  # pragma: no cover
        raise RuntimeError("sparse_design needs numba")
    if support_p is None:
        raise ValueError("support_p must be in (0, 1) for a sparse design, but got None (an exact sum is dense)")
    xt = torch.as_tensor(x).detach().cpu()
    if xt.dtype not in (torch.float32, torch.float64):
        xt = xt.double()
    xs = xt.contiguous().numpy()
    cs, hs, U, r2, ellipsoid = _geometry(torch.as_tensor(c), torch.as_tensor(w), angles, support_p, xt.dtype)
    K = cs.shape[0]
    order = torch.argsort(cs[:, 0], stable=True)
    cs, hs, U, r2 = cs[order].contiguous(), hs[order].contiguous(), U[order].contiguous(), r2[order].contiguous()
    # The window is a prefilter: widened so that float32 rounding of x - c never hides a pair.
    hmax0 = hs[:, 0].max().item() * (1.0 + 1e-5) if K else 0.0
    nchunks = max(1, min(64, len(xs) // 4096 + 1))
    args = (cs.numpy(), U.numpy(), hs.numpy(), r2.numpy(), np.ascontiguousarray(cs[:, 0].numpy()), hmax0, ellipsoid)
    counts = _count_pairs(xs, *args, nchunks)
    indptr = np.zeros(len(xs) + 1, np.int64)
    np.cumsum(counts, out=indptr[1:])
    idx, val = _fill_pairs(xs, *args, indptr, nchunks)
    idx = order.numpy()[idx]  # back to the caller's bump order
    return sp.csr_matrix((val, idx, indptr), shape=(len(xs), K))


def _normal_equations(Phi, y2):
    """The normal equations of the design [Phi, 1], kept in parts: G = Phi^T Phi (sparse K x K),
    B = Phi^T y (K, P), s = Phi^T 1 (K,), n, and t = 1^T y (P,)."""
    return (Phi.T @ Phi).tocsc(), np.asarray(Phi.T @ y2), np.asarray(Phi.sum(axis=0)).ravel(), Phi.shape[0], y2.sum(0)


def _add(a, b):
    return tuple(u + v for u, v in zip(a, b))


def _solve_sparse(eqs, ridge):
    """[m; b] (K+1, P) of the ridge normal equations ``[[G + lam D, s], [s^T, n]] [m; b] = [B; t]``.

    The offset's row and column are dense (every point has a 1 there), which ruins the
    sparse factorisation's fill-in; the offset is eliminated instead: with ``F = G + lam D``,
    ``m = F^-1 (B - s b)`` and ``b = (t - s^T F^-1 B) / (n - s^T F^-1 s)``.
    """
    import scipy.sparse as sp
    from scipy.sparse.linalg import splu

    G, B, s, n, t = eqs
    K = G.shape[0]
    diag = G.diagonal()
    scale = float(diag.mean()) if K else 1.0
    lam = ridge * (scale if scale > 0 else 1.0)
    reg = np.where(diag > 0, lam, 1.0)  # an untouched bump: pinned to 0
    F = (G + sp.diags(reg)).tocsc()
    rhs = np.concatenate([B, s[:, None]], axis=1)
    try:
        sol = splu(F, permc_spec="COLAMD").solve(rhs) if K else rhs
    except RuntimeError:  # numerically singular: minimum-norm least squares, dense
        sol = np.linalg.lstsq(F.toarray(), rhs, rcond=None)[0]
    FB, Fs = sol[:, :-1], sol[:, -1]
    denom = n - float(s @ Fs)
    b = (t - s @ FB) / denom if denom > 0 else np.zeros_like(t)
    m = FB - Fs[:, None] * b[None, :]
    return np.concatenate([m, b[None, :]], axis=0)


def _sse(eqs_val, yy, sol):
    """Squared error per output (P,) of the solution on the points the equations came from
    (a quadratic form: no pass over the points)."""
    G, B, s, n, t = eqs_val
    m, b = sol[:-1], sol[-1]
    return yy - 2 * (m * B).sum(0) - 2 * b * t + (m * (G @ m)).sum(0) + 2 * b * (s @ m) + n * b * b


def _split(sol, one):
    m, b = torch.from_numpy(np.ascontiguousarray(sol[:-1])), torch.from_numpy(np.ascontiguousarray(sol[-1]))
    if one:
        return m[:, 0], b[0]
    return m, b


def solve_magnitudes_sparse(x, y, c, w, support_p: float, ridge: float = 1e-6, *, angles=None):
    """Ridge least-squares magnitudes and offset, as :func:`wandering.fit._lstsq.solve_magnitudes`,
    on a sparse design (memory O(pairs), not O(K^2)).

    Args:
        x: Points (n, d). y: Targets (n,) or (n, P).
        c, w: (d, K). support_p: The cut-off in (0, 1). ridge: Relative ridge (see ``_lstsq``).
        angles: Rotation angles of oriented bumps, or None.

    Returns:
        m (K,) or (K, P) and the offset, float64 CPU tensors.
    """
    y2 = torch.as_tensor(y).detach().double().cpu().reshape(len(y), -1).numpy()
    eqs = _normal_equations(sparse_design(x, c, w, support_p, angles), y2)
    return _split(_solve_sparse(eqs, ridge), torch.as_tensor(y).dim() == 1)


def solve_magnitudes_sparse_cv(
    x, y, c, w, support_p: float, val_mask, ridges=RIDGE_GRID, refit_all=True, return_sse=False, *, angles=None
):
    """:func:`solve_magnitudes_sparse` with the ridge picked on the held-out points ``val_mask``,
    as :func:`wandering.fit._lstsq.solve_magnitudes_cv`.

    Returns:
        m, offset and the chosen relative ridge; with ``return_sse`` also the held-out points'
        squared error per output at that ridge (numpy (P,), of the solution on the other points).
    """
    y2 = torch.as_tensor(y).detach().double().cpu().reshape(len(y), -1).numpy()
    val = torch.as_tensor(val_mask).cpu().numpy().astype(bool)
    Phi = sparse_design(x, c, w, support_p, angles)
    fit = _normal_equations(Phi[~val], y2[~val])
    held = _normal_equations(Phi[val], y2[val])
    yy = (y2[val] ** 2).sum(0)
    best = None
    for r in ridges:
        per_output = _sse(held, yy, _solve_sparse(fit, r))
        sse = float(per_output.sum())
        if best is None or sse < best[0]:
            best = (sse, r, np.maximum(per_output, 0.0))
    sol = _solve_sparse(_add(fit, held) if refit_all else fit, best[1])
    m, b = _split(sol, torch.as_tensor(y).dim() == 1)
    if return_sse:
        return m, b, best[1], best[2]
    return m, b, best[1]
