"""Exact least squares for the magnitudes of a bump sum, without an (n, K) design matrix.

A sum ``y = sum_k m_k phi_k(x) + b`` is linear in ``m`` and the offset ``b``. Given the
centres and widths (and, for oriented bumps, the angles), the ridge solution comes from
the normal equations ``(Phi^T Phi + lambda D) [m; b] = Phi^T y`` where ``Phi`` is the
culled design, as the modules evaluate it, plus a column of ones: 0 outside each bump's
support box for axis-aligned bumps, outside its support ellipsoid ``|z|^2 < r2``
(``wandering._engine._geometry.cutoffs``) for oriented ones.

On the CPU the normal equations are accumulated by a Numba kernel that visits, for
each point, only the bumps whose box can hold it (bumps sorted by their first
coordinate, a window of the widest box; for oriented bumps the box around the
ellipsoid, then the exact ellipsoid test), so the cost is O(n * pairs_per_point**2)
and memory O(threads * K**2). Elsewhere (GPU, exact sums) the design is built in
chunks of points and multiplied densely: O(n * K**2) work, O(chunk * K) memory.
With many culled bumps (``_SPARSE_BUMPS`` on), the solves use a sparse design and a
sparse factorisation instead (:mod:`wandering.fit._sparse_lstsq`): O(pairs) memory.

Both accumulate in float64 whatever the inputs' dtype (the design values are computed
in it, then every product and sum is float64), and the kernel's chunks are fixed by
the problem size, so the result is the same for any thread count.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from wandering._engine._geometry import cutoffs, ellipsoid_halfwidths, support_halfwidths
from wandering._engine._rotation import precision_transforms, rotations

try:  # numba is a required dependency; the dense path still works without it
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False

__all__ = ["normal_equations", "solve_magnitudes", "solve_magnitudes_cv", "RIDGE_GRID"]

# Relative ridges tried by solve_magnitudes_cv (relative to the mean of diag(Phi^T Phi)).
RIDGE_GRID = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1)

_DENSE_WORK = 2e9  # n * K**2 up to which the dense chunked path is used on the CPU
# From this many bumps on, culled solves run on a sparse design (wandering.fit._sparse_lstsq): the
# dense (K+1)^2 normal equations and their Cholesky grow as K^2 and K^3. Measured on 2 cores
# (40,000 2-D points, 7 ridges): dense/sparse 0.8x at K = 1024, 2.5x at 2048, 6.8x at 4096.
_SPARSE_BUMPS = 1536


def _sparse_pays(x: torch.Tensor, c: torch.Tensor, support_p: float | None) -> bool:
    return _HAVE_NUMBA and support_p is not None and c.shape[1] >= _SPARSE_BUMPS


# The sparse kernel's chunks of points, each with its own float64 (K+1, K+1) partial summed
# in chunk order: their count depends on the problem only (never on the thread count),
# so the normal equations are bitwise the same for any number of threads.
_GRAM_CHUNK_POINTS = 4096
_GRAM_MAX_CHUNKS = 16
_GRAM_PARTIAL_BYTES = 64 << 20


def gram_chunks(n: int, K: int, P: int) -> int:
    """Chunks of points for the sparse normal equations (a function of the problem size only)."""
    by_memory = _GRAM_PARTIAL_BYTES // (8 * (K + 1) * (K + 1 + P))
    return int(max(1, min(_GRAM_MAX_CHUNKS, -(-n // _GRAM_CHUNK_POINTS), by_memory)))


if _HAVE_NUMBA:

    @njit(parallel=True, cache=True)
    def _gram_kernel(x, y, c, iw, half, c0, hmax0, nchunks):  # pragma: no cover - compiled
        """x (n, d), y (n, P) float64; c, iw, half (K, d) in x's dtype, bumps sorted by c[:, 0]
        (c0 is that sorted column). Returns upper-triangular G (K+1, K+1) and B (K+1, P):
        index K is the offset column of ones."""
        n, d = x.shape
        K = c.shape[0]
        P = y.shape[1]
        G = np.zeros((nchunks, K + 1, K + 1))
        B = np.zeros((nchunks, K + 1, P))
        for ch in prange(nchunks):
            lo = ch * n // nchunks
            hi = (ch + 1) * n // nchunks
            idx = np.empty(K + 1, np.int64)
            val = np.empty(K + 1)
            for i in range(lo, hi):
                a = np.searchsorted(c0, x[i, 0] - hmax0)
                b = np.searchsorted(c0, x[i, 0] + hmax0, side="right")
                cnt = 0
                for k in range(a, b):
                    s = 0.0
                    inside = True
                    for j in range(d):
                        dx = x[i, j] - c[k, j]
                        if not (abs(dx) < half[k, j]):
                            inside = False
                            break
                        z = dx * iw[k, j]
                        s += z * z
                    if inside:
                        e = math.exp(-s)
                        if e > 0.0:
                            idx[cnt] = k
                            val[cnt] = e
                            cnt += 1
                idx[cnt] = K
                val[cnt] = 1.0
                cnt += 1
                for u in range(cnt):
                    ku = idx[u]
                    vu = val[u]
                    for q in range(P):
                        B[ch, ku, q] += vu * y[i, q]
                    for v in range(u, cnt):
                        G[ch, ku, idx[v]] += vu * val[v]
        return G.sum(axis=0), B.sum(axis=0)

    @njit(parallel=True, cache=True)
    def _oriented_gram_kernel(x, y, c, U, r2, box, c0, hmax0, nchunks):  # pragma: no cover - compiled
        """The Gram kernel of oriented bumps: x (n, d), y (n, P) float64; c, box (K, d), U (K, d, d)
        (``z[a] = sum_j U[k, a, j] (x[j] - c[k, j])``) and r2 (K,) in x's dtype, bumps sorted by
        c[:, 0] (c0). A pair counts where ``|z|^2 < r2[k]``; ``box`` (a little wider than the
        ellipsoid's bounding box) only skips pairs that cannot. Returns G and B as ``_gram_kernel``."""
        n, d = x.shape
        K = c.shape[0]
        P = y.shape[1]
        G = np.zeros((nchunks, K + 1, K + 1))
        B = np.zeros((nchunks, K + 1, P))
        for ch in prange(nchunks):
            lo = ch * n // nchunks
            hi = (ch + 1) * n // nchunks
            idx = np.empty(K + 1, np.int64)
            val = np.empty(K + 1)
            diff = np.empty(d)
            for i in range(lo, hi):
                a = np.searchsorted(c0, x[i, 0] - hmax0)
                b = np.searchsorted(c0, x[i, 0] + hmax0, side="right")
                cnt = 0
                for k in range(a, b):
                    inside = True
                    for j in range(d):
                        diff[j] = x[i, j] - c[k, j]
                        if not (abs(diff[j]) < box[k, j]):
                            inside = False
                            break
                    if not inside:
                        continue
                    s = 0.0
                    for ax in range(d):
                        z = 0.0
                        for j in range(d):
                            z += U[k, ax, j] * diff[j]
                        s += z * z
                    if s < r2[k]:  # a NaN s fails it
                        e = math.exp(-s)
                        if e > 0.0:
                            idx[cnt] = k
                            val[cnt] = e
                            cnt += 1
                idx[cnt] = K
                val[cnt] = 1.0
                cnt += 1
                for u in range(cnt):
                    ku = idx[u]
                    vu = val[u]
                    for q in range(P):
                        B[ch, ku, q] += vu * y[i, q]
                    for v in range(u, cnt):
                        G[ch, ku, idx[v]] += vu * val[v]
        return G.sum(axis=0), B.sum(axis=0)


# The oriented kernel's box pre-test is this much wider than the ellipsoid's bounding box, so
# that rounding in the box never drops a pair the exact test |z|^2 < r2 keeps.
_BOX_SLACK = 1.0 + 2.0**-10


def _design_chunk(x: torch.Tensor, c: torch.Tensor, w: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    diff = x[:, :, None] - c[None]
    inside = (diff.abs() < half[None]).all(dim=1)
    z = diff / w[None]
    return torch.exp(-(z * z).sum(dim=1)) * inside


def _oriented_design_chunk(x: torch.Tensor, c: torch.Tensor, U: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """phi (chunk, K) of oriented bumps: exp(-|z|^2) where |z|^2 < r2 (as the engines test it), else 0."""
    diff = x[:, :, None] - c[None]
    z = torch.einsum("ajk,ijk->iak", U, diff)
    s = (z * z).sum(dim=1)
    e = torch.exp(-s)
    return torch.where((s < r2[None]) & (e > 0), e, torch.zeros_like(e))


def _oriented_geometry(c: torch.Tensor, w: torch.Tensor, angles: torch.Tensor, support_p: float | None):
    """U (d, d, K), r2 (K,) and the bounding boxes' half-widths (d, K), as the oriented op receives them."""
    R = rotations(angles, c.shape[0])
    r2 = cutoffs(w, support_p)
    return precision_transforms(R, w), r2, ellipsoid_halfwidths(R, w, r2)


def normal_equations(
    x: torch.Tensor,
    y: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    support_p: float | None,
    chunk: int = 4096,
    *,
    angles: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Phi^T Phi, Phi^T y)`` in float64 on the CPU for the design ``[phi_1 .. phi_K, 1]``.

    Args:
        x: Points (n, d), in the module's dtype.
        y: Targets (n,) or (n, P).
        c, w: Centres and widths (d, K) (for oriented bumps: scales along the principal axes).
        support_p: The module's cut-off (None: exact sum, every pair counts).
        chunk: Points per chunk on the dense path.
        angles: (keyword-only) Rotation angles (d(d-1)/2, K) of oriented bumps, whose support is
            the ellipsoid ``|z|^2 < -ln(support_p)``; None: axis-aligned bumps and their boxes.
            In one dimension the two are the same bump and the axis-aligned design is used, as
            the modules do.

    Returns:
        G (K+1, K+1) and B (K+1, P) float64 CPU tensors; index K is the offset.
    """
    c, w = c.detach(), w.detach()
    x = x.detach()
    y2 = y.detach().reshape(len(y), -1)
    d, K = c.shape
    oriented = angles is not None and d > 1
    if oriented:
        U, r2, half = _oriented_geometry(c, w, angles.detach(), support_p)
    else:
        half = support_halfwidths(w, support_p)
    sparse = _HAVE_NUMBA and x.device.type == "cpu" and support_p is not None
    # Small problems: dense BLAS is fast enough and needs no kernel compilation.
    if sparse and x.dtype in (torch.float32, torch.float64) and len(x) * K * K > _DENSE_WORK:
        order = torch.argsort(c[0], stable=True)
        cs = c[:, order].T.contiguous()
        hs = half[:, order].T.contiguous()
        if oriented:
            hs = hs * _BOX_SLACK
        hmax0 = float(hs[:, 0].max()) if K else 0.0
        nchunks = gram_chunks(len(x), K, y2.shape[1])
        xs, ys, c0 = x.contiguous().numpy(), y2.double().cpu().contiguous().numpy(), cs[:, 0].contiguous().numpy()
        if oriented:
            Us = U[:, :, order].permute(2, 0, 1).contiguous()
            g, b = _oriented_gram_kernel(
                xs, ys, cs.numpy(), Us.numpy(), r2[order].contiguous().numpy(), hs.numpy(), c0, hmax0, nchunks
            )
        else:
            big = torch.finfo(w.dtype).max
            iws = (1.0 / w[:, order]).clamp(-big, big).T.contiguous()
            g, b = _gram_kernel(xs, ys, cs.numpy(), iws.numpy(), hs.numpy(), c0, hmax0, nchunks)
        g = np.triu(g)
        g = g + np.triu(g, 1).T
        inv = torch.empty(K + 1, dtype=torch.int64)
        perm = torch.cat([order, torch.tensor([K])])
        inv[perm] = torch.arange(K + 1)
        G = torch.from_numpy(g)[inv][:, inv]
        B = torch.from_numpy(b)[inv]
        return G, B
    G = torch.zeros(K + 1, K + 1, dtype=torch.float64, device=x.device)
    B = torch.zeros(K + 1, y2.shape[1], dtype=torch.float64, device=x.device)
    for i in range(0, len(x), chunk):
        if oriented:
            phi = _oriented_design_chunk(x[i : i + chunk], c, U, r2).double()
        else:
            phi = _design_chunk(x[i : i + chunk], c, w, half).double()
        phi = torch.cat([phi, torch.ones(len(phi), 1, dtype=phi.dtype, device=phi.device)], dim=1)
        G += phi.T @ phi
        B += phi.T @ y2[i : i + chunk].double()
    return G.cpu(), B.cpu()


def solve_magnitudes(
    x: torch.Tensor,
    y: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    support_p: float | None,
    ridge: float = 1e-6,
    *,
    angles: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least-squares magnitudes and offset for fixed centres and widths (and angles).

    The penalty is ``ridge * mean(diag(Phi^T Phi)) * |m|^2`` (the offset is not
    penalised), so ``ridge`` is relative to the design's scale. A bump no point
    reaches gets m = 0. ``angles``: oriented bumps, as in :func:`normal_equations`. From
    ``_SPARSE_BUMPS`` bumps on (culled sums), the same solve runs on a sparse design
    (:mod:`wandering.fit._sparse_lstsq`).

    Returns:
        m (K,) or (K, P) as y has one or P columns, and the offset (scalar tensor or (P,)),
        float64 on the CPU.
    """
    if _sparse_pays(x, c, support_p):
        from wandering.fit._sparse_lstsq import solve_magnitudes_sparse

        return solve_magnitudes_sparse(x, y, c, w, support_p, ridge, angles=angles)
    G, B = normal_equations(x, y, c, w, support_p, angles=angles)
    return _solve(G, B, ridge, y.dim() == 1)


def _solve(G: torch.Tensor, B: torch.Tensor, ridge: float, one: bool, scale_from: torch.Tensor | None = None):
    K = G.shape[0] - 1
    diag = torch.diagonal(G if scale_from is None else scale_from)[:K]
    scale = float(diag.mean()) if K else 1.0
    lam = ridge * (scale if scale > 0 else 1.0)
    reg = torch.full((K + 1,), lam, dtype=torch.float64)
    reg[K] = 0.0
    # An untouched bump has an all-zero row: the ridge alone pins it to 0.
    reg[:K] = torch.where(diag > 0, reg[:K], torch.ones_like(diag))
    A = G + torch.diag(reg)
    try:
        L = torch.linalg.cholesky(A)
        sol = torch.cholesky_solve(B, L)
    except RuntimeError:  # singular (e.g. one point): minimum-norm least squares
        sol = torch.linalg.lstsq(A, B, driver="gelsd").solution
    m, b = sol[:K], sol[K]
    if one:
        return m[:, 0], b[0]
    return m, b


def solve_magnitudes_cv(
    x: torch.Tensor,
    y: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    support_p: float | None,
    val_mask: torch.Tensor,
    ridges=RIDGE_GRID,
    refit_all: bool = True,
    return_sse: bool = False,
    *,
    angles: torch.Tensor | None = None,
):
    """Like :func:`solve_magnitudes`, with the ridge picked on held-out points.

    The normal equations are accumulated separately for the points where ``val_mask``
    is False (fit) and True (validation); each ridge is solved on the fit part and
    scored by its squared error on the validation part (a quadratic form in the
    solution, so no second pass over the points); the chosen ridge is then solved on
    all points (``refit_all=False``: on the fit part only, keeping the validation points
    unseen). ``angles``: oriented bumps, as in :func:`normal_equations`.

    Returns:
        m, offset (as :func:`solve_magnitudes`) and the chosen relative ridge; with
        ``return_sse`` also the validation part's squared error per output at that ridge
        (numpy (P,), of the solution on the fit part).
    """
    if _sparse_pays(x, c, support_p):
        from wandering.fit._sparse_lstsq import solve_magnitudes_sparse_cv

        return solve_magnitudes_sparse_cv(x, y, c, w, support_p, val_mask, ridges, refit_all, return_sse, angles=angles)
    fit, val = ~val_mask, val_mask
    G1, B1 = normal_equations(x[fit], y[fit], c, w, support_p, angles=angles)
    G2, B2 = normal_equations(x[val], y[val], c, w, support_p, angles=angles)
    y2 = y[val].detach().double().reshape(int(val.sum()), -1).cpu()
    yy = (y2 * y2).sum(0)
    best = None
    for r in ridges:
        m, b = _solve(G1, B1, r, False)
        sol = torch.cat([m, b[None]])
        per_output = yy - 2 * (sol * B2).sum(0) + (sol * (G2 @ sol)).sum(0)
        sse = float(per_output.sum())
        if best is None or sse < best[0]:
            best = (sse, r, per_output.clamp_min(0.0).numpy())
    if refit_all:
        m, b = _solve(G1 + G2, B1 + B2, best[1], y.dim() == 1)
    else:
        m, b = _solve(G1, B1, best[1], y.dim() == 1)
    if return_sse:
        return m, b, best[1], best[2]
    return m, b, best[1]
