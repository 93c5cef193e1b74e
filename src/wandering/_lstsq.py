"""Exact least squares for the magnitudes of a bump sum, without an (n, K) design matrix.

A sum ``y = sum_k m_k phi_k(x) + b`` is linear in ``m`` and the offset ``b``. Given the
centres and widths, the ridge solution comes from the normal equations
``(Phi^T Phi + lambda D) [m; b] = Phi^T y`` where ``Phi`` is the culled design (0 outside
each bump's support box, as the modules evaluate it) plus a column of ones.

On the CPU the normal equations are accumulated by a Numba kernel that visits, for
each point, only the bumps whose box can hold it (bumps sorted by their first
coordinate, a window of the widest box), so the cost is O(n * pairs_per_point**2)
and memory O(chunks * K**2). Elsewhere (GPU, exact sums) the design is built in
chunks of points and multiplied densely: O(n * K**2) work, O(chunk * K) memory.

Both accumulate in float64 whatever the inputs' dtype (the design values are computed
in it, then every product and sum is float64), and the kernel's chunks are fixed by
the problem size, so the result is the same for any thread count.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from ._geometry import support_halfwidths

try:  # numba is a required dependency; the dense path still works without it
    from numba import njit, prange

    _HAVE_NUMBA = True
except ImportError:  # pragma: no cover
    _HAVE_NUMBA = False

__all__ = ["normal_equations", "solve_magnitudes", "solve_magnitudes_cv", "RIDGE_GRID"]

# Relative ridges tried by solve_magnitudes_cv (relative to the mean of diag(Phi^T Phi)).
RIDGE_GRID = (1e-8, 1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1)

_DENSE_WORK = 2e9  # n * K**2 up to which the dense chunked path is used on the CPU
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


def _design_chunk(x: torch.Tensor, c: torch.Tensor, w: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    diff = x[:, :, None] - c[None]
    inside = (diff.abs() < half[None]).all(dim=1)
    z = diff / w[None]
    return torch.exp(-(z * z).sum(dim=1)) * inside


def normal_equations(
    x: torch.Tensor,
    y: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    support_p: float | None,
    chunk: int = 4096,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(Phi^T Phi, Phi^T y)`` in float64 on the CPU for the design ``[phi_1 .. phi_K, 1]``.

    Args:
        x: Points (n, d), in the module's dtype.
        y: Targets (n,) or (n, P).
        c, w: Centres and widths (d, K).
        support_p: The module's cut-off (None: exact sum, every pair counts).
        chunk: Points per chunk on the dense path.

    Returns:
        G (K+1, K+1) and B (K+1, P) float64 CPU tensors; index K is the offset.
    """
    c, w = c.detach(), w.detach()
    x = x.detach()
    y2 = y.detach().reshape(len(y), -1)
    K = c.shape[1]
    half = support_halfwidths(w, support_p)
    sparse = _HAVE_NUMBA and x.device.type == "cpu" and support_p is not None
    # Small problems: dense BLAS is fast enough and needs no kernel compilation.
    if sparse and x.dtype in (torch.float32, torch.float64) and len(x) * K * K > _DENSE_WORK:
        order = torch.argsort(c[0], stable=True)
        cs = c[:, order].T.contiguous()
        big = torch.finfo(w.dtype).max
        iws = (1.0 / w[:, order]).clamp(-big, big).T.contiguous()
        hs = half[:, order].T.contiguous()
        hmax0 = float(hs[:, 0].max()) if K else 0.0
        nchunks = gram_chunks(len(x), K, y2.shape[1])
        g, b = _gram_kernel(
            x.contiguous().numpy(), y2.double().cpu().contiguous().numpy(), cs.numpy(), iws.numpy(), hs.numpy(),
            cs[:, 0].contiguous().numpy(), hmax0, nchunks,
        )
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Ridge least-squares magnitudes and offset for fixed centres and widths.

    The penalty is ``ridge * mean(diag(Phi^T Phi)) * |m|^2`` (the offset is not
    penalised), so ``ridge`` is relative to the design's scale. A bump no point
    reaches gets m = 0.

    Returns:
        m (K,) or (K, P) as y has one or P columns, and the offset (scalar tensor or (P,)),
        float64 on the CPU.
    """
    G, B = normal_equations(x, y, c, w, support_p)
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
) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Like :func:`solve_magnitudes`, with the ridge picked on held-out points.

    The normal equations are accumulated separately for the points where ``val_mask``
    is False (fit) and True (validation); each ridge is solved on the fit part and
    scored by its squared error on the validation part (a quadratic form in the
    solution, so no second pass over the points); the chosen ridge is then solved on
    all points (``refit_all=False``: on the fit part only, keeping the validation points
    unseen).

    Returns:
        m, offset (as :func:`solve_magnitudes`) and the chosen relative ridge.
    """
    fit, val = ~val_mask, val_mask
    G1, B1 = normal_equations(x[fit], y[fit], c, w, support_p)
    G2, B2 = normal_equations(x[val], y[val], c, w, support_p)
    y2 = y[val].detach().double().reshape(int(val.sum()), -1).cpu()
    yy = (y2 * y2).sum(0)
    best = None
    for r in ridges:
        m, b = _solve(G1, B1, r, False)
        sol = torch.cat([m, b[None]])
        sse = float((yy - 2 * (sol * B2).sum(0) + (sol * (G2 @ sol)).sum(0)).sum())
        if best is None or sse < best[0]:
            best = (sse, r)
    if refit_all:
        m, b = _solve(G1 + G2, B1 + B2, best[1], y.dim() == 1)
    else:
        m, b = _solve(G1, B1, best[1], y.dim() == 1)
    return m, b, best[1]
