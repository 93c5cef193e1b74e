"""Starting orientations and scales of oriented bumps from the points of their k-means cells.

An oriented bump (``wandering._engine._rotation``) is ``m * exp(-|diag(1/w) R^T (x - c)|^2)``.
BumpRegressor places K centres by (weighted) k-means; these helpers give each bump
the shape of its cell: the weighted covariance of the cell's points is diagonalised,
its principal axes become the rotation R (turned into the module's d(d-1)/2 angles)
and the square roots of its eigenvalues give the scales' *ratios*. The scales' geometric
mean is kept at the axis-aligned start's width ``w0`` (so a round cell starts exactly as
the axis-aligned bump does, and only the shape changes), the anisotropy is capped, and
the scales are clipped to the width bounds.

Why weights: the function's structure, not only the points' density, sets a useful
shape. Weighting each point by its share of the residual of a first least-squares fit
(BumpRegressor's placement weights) stretches a cell's bump along the ridge, edge or
layer where that residual lies.

All functions are plain numpy, float64, over K cells at once; none touches global
random state.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

__all__ = ["assign_cells", "cell_covariances", "principal_frames", "angles_from_rotations", "oriented_start"]


def assign_cells(xs: np.ndarray, cent: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Index of the nearest centre of each point.

    Args:
        xs: Points, float array (n, d).
        cent: Centres, float array (K, d).
        chunk: Points per block (the distance block is (chunk, K), never (n, K, d)).

    Returns:
        int64 array (n,) with values in [0, K).

    Raises:
        ValueError: xs or cent not 2-D, or their numbers of columns differ, or K = 0.
    """
    xs, cent = np.asarray(xs, dtype=np.float64), np.asarray(cent, dtype=np.float64)
    if xs.ndim != 2 or cent.ndim != 2 or xs.shape[1] != cent.shape[1]:
        raise ValueError(f"xs and cent must have shapes (n, d) and (K, d), but got {xs.shape} and {cent.shape}")
    if cent.shape[0] < 1:
        raise ValueError(f"cent must hold at least one centre, but got shape {cent.shape}")
    lab = np.empty(len(xs), dtype=np.int64)
    cc = (cent * cent).sum(1)
    for i in range(0, len(xs), chunk):
        lab[i : i + chunk] = (cc[None] - 2.0 * xs[i : i + chunk] @ cent.T).argmin(1)
    return lab


def cell_covariances(
    xs: np.ndarray, labels: np.ndarray, K: int, weights: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Weighted covariance of the points of each cell, about the cell's weighted mean.

    Args:
        xs: Points, float array (n, d).
        labels: Cell of each point, int array (n,) in [0, K).
        K: Number of cells.
        weights: Non-negative weight per point, (n,); None: all 1.

    Returns:
        ``(cov, mass)``: float64 arrays (K, d, d) (symmetric positive semi-definite; 0 for
        a cell with no weight) and (K,) (each cell's total weight).

    Raises:
        ValueError: shapes that do not match, labels outside [0, K), negative or
            non-finite weights.
    """
    xs = np.asarray(xs, dtype=np.float64)
    n, d = xs.shape
    labels = np.asarray(labels)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), but got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"labels must lie in [0, {K}), but got min={labels.min()}, max={labels.max()}")
    wts = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    if wts.shape != (n,):
        raise ValueError(f"weights must have shape ({n},), but got {wts.shape}")
    if n and not (np.isfinite(wts).all() and wts.min() >= 0):
        raise ValueError(f"weights must be finite and >= 0, but got min={wts.min()}")
    mass = np.bincount(labels, weights=wts, minlength=K)
    safe = np.where(mass > 0, mass, 1.0)
    mean = np.stack([np.bincount(labels, weights=wts * xs[:, j], minlength=K) for j in range(d)], 1) / safe[:, None]
    dx = xs - mean[labels]  # about the cell's own mean: no cancellation of large second moments
    cov = np.empty((K, d, d))
    for i in range(d):
        for j in range(i, d):
            cov[:, i, j] = cov[:, j, i] = np.bincount(labels, weights=wts * dx[:, i] * dx[:, j], minlength=K) / safe
    return cov, mass


def _best_signed_permutation(V: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each (d, d) orthonormal V, the column order and signs making it a rotation nearest I.

    A bump is the same under reordering its axes (with their scales) and flipping any
    axis: of those equivalent frames, the one of largest trace (smallest rotation) is
    kept, with determinant +1, so the angles stay small and the matrix log is real.
    """
    K, d, _ = V.shape
    perms = list(itertools.permutations(range(d))) if d <= 5 else None
    if perms is None:  # greedy: each axis to the free coordinate it is closest to
        order = np.empty((K, d), dtype=np.int64)
        for k in range(K):
            a = np.abs(V[k]).copy()
            for _ in range(d):
                i, j = np.unravel_index(a.argmax(), a.shape)  # coordinate i, axis j
                order[k, i] = j
                a[i, :] = -1.0
                a[:, j] = -1.0
    else:
        P = np.array(perms)  # (nP, d): axis placed in column i
        # sum_i |V[i, perm[i]]|: the trace after choosing signs freely
        score = np.abs(V)[:, np.arange(d)[None, :], P].sum(-1)  # (K, nP)
        order = P[score.argmax(1)]
    Vp = np.take_along_axis(V, order[:, None, :], axis=2)
    diag = np.einsum("kii->ki", Vp)
    sign = np.where(diag < 0, -1.0, 1.0)
    Vp = Vp * sign[:, None, :]
    neg = np.linalg.det(Vp) < 0
    if neg.any():  # a reflection: flip the axis that costs the least trace
        j = np.abs(np.einsum("kii->ki", Vp[neg])).argmin(1)
        Vp[np.flatnonzero(neg), :, j] *= -1.0
    return Vp, order


def principal_frames(cov: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Principal axes and variances of K covariances, as rotations nearest the identity.

    Args:
        cov: Symmetric positive semi-definite matrices, float array (K, d, d).

    Returns:
        ``(R, var)``: float64 (K, d, d) rotations (det +1; column a is principal axis a)
        and (K, d) variances along those axes (>= 0), with ``R @ diag(var) @ R^T = cov``.
        Among the equivalent frames (axes reordered or flipped) the one with the largest
        trace is returned.

    Raises:
        ValueError: cov not of shape (K, d, d) or not finite.
    """
    cov = np.asarray(cov, dtype=np.float64)
    if cov.ndim != 3 or cov.shape[1] != cov.shape[2]:
        raise ValueError(f"cov must have shape (K, d, d), but got {cov.shape}")
    if not np.isfinite(cov).all():
        raise ValueError("cov must be finite, but got NaN or infinity")
    lam, V = np.linalg.eigh(0.5 * (cov + cov.transpose(0, 2, 1)))
    R, order = _best_signed_permutation(V)
    var = np.clip(np.take_along_axis(lam, order, axis=1), 0.0, None)
    return R, var


def angles_from_rotations(R: np.ndarray) -> np.ndarray:
    """The module's angles (d(d-1)/2, K) of K rotations, inverse of ``wandering._engine._rotation.rotations``.

    d = 2: theta = atan2(R[1, 0], R[0, 0]). d >= 3: the skew-symmetric logarithm S of R,
    angles ``S[j, i]`` over the pairs i < j in the order (0, 1), (0, 2), ..., (1, 2), ...

    Args:
        R: Rotations, float array (K, d, d) (orthonormal, det +1; none a half turn in
            some plane for d >= 3, which ``principal_frames`` guarantees).

    Returns:
        float64 array (d(d-1)/2, K) (shape (0, K) for d = 1).

    Raises:
        ValueError: R not of shape (K, d, d).
    """
    R = np.asarray(R, dtype=np.float64)
    if R.ndim != 3 or R.shape[1] != R.shape[2]:
        raise ValueError(f"R must have shape (K, d, d), but got {R.shape}")
    K, d, _ = R.shape
    if d == 1:
        return np.zeros((0, K))
    if d == 2:
        return np.arctan2(R[:, 1, 0], R[:, 0, 0])[None, :]
    from scipy.linalg import logm

    rows, cols = np.triu_indices(d, 1)  # pairs i < j in the module's order
    out = np.empty((len(rows), K))
    for k in range(K):
        S = np.real(logm(R[k]))
        S = 0.5 * (S - S.T)  # exactly skew-symmetric
        out[:, k] = S[cols, rows]
    return out


def oriented_start(
    xs: np.ndarray,
    cent: np.ndarray,
    w0: float,
    w_bounds: np.ndarray,
    weights: np.ndarray | None = None,
    max_aspect: float = 8.0,
    min_points: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """Angles and scales of K oriented bumps shaped like their k-means cells.

    Each point joins its nearest centre's cell. A cell's weighted covariance gives the
    bump's principal axes (the rotation) and the ratios of its scales (square roots of
    the eigenvalues, the smallest raised to at least 1/max_aspect of the largest); the
    scales' geometric mean is ``w0``; the scales are then clipped to ``w_bounds``. A
    cell with fewer than ``min_points`` points, or no spread, keeps the axis-aligned
    start (angles 0, scales w0, clipped); so does every bump for d = 1.

    Args:
        xs: Points, float array (n, d), in the units of the centres.
        cent: Centres, float array (K, d).
        w0: The axis-aligned start's width, > 0.
        w_bounds: Scale range, (d, 2) or (2,) array [lo, hi] (the same range is used for
            every principal axis: its lowest lo and highest hi).
        weights: Non-negative weight per point (n,); None: all 1.
        max_aspect: Largest ratio of a bump's largest to smallest starting scale, >= 1.
        min_points: Fewest points in a cell for its shape to count, >= 1.

    Returns:
        ``(angles, w)``: float64 arrays (d(d-1)/2, K) and (d, K), finite, the scales
        within the bounds.

    Raises:
        ValueError: w0 not > 0, max_aspect < 1, min_points < 1, w_bounds not (d, 2) or
            (2,) with lo <= hi, or the shape errors of the helpers.
    """
    xs, cent = np.asarray(xs, dtype=np.float64), np.asarray(cent, dtype=np.float64)
    if not (w0 > 0 and math.isfinite(w0)):
        raise ValueError(f"w0 must be > 0 and finite, but got {w0}")
    if not max_aspect >= 1:
        raise ValueError(f"max_aspect must be >= 1, but got {max_aspect}")
    if not min_points >= 1:
        raise ValueError(f"min_points must be >= 1, but got {min_points}")
    K, d = cent.shape
    wb = np.asarray(w_bounds, dtype=np.float64).reshape(-1, 2)
    if wb.shape[0] not in (1, d) or (wb[:, 0] > wb[:, 1]).any():
        raise ValueError(f"w_bounds must be (d, 2) or (2,) with lo <= hi, but got {np.asarray(w_bounds).tolist()}")
    lo, hi = float(wb[:, 0].min()), float(wb[:, 1].max())
    labels = assign_cells(xs, cent)
    cov, _ = cell_covariances(xs, labels, K, weights)
    counts = np.bincount(labels, minlength=K)
    R, var = principal_frames(cov)
    s = np.sqrt(var)
    top = s.max(1, keepdims=True)
    keep = (counts >= min_points) & (top[:, 0] > 1e-9 * w0) & (d > 1)  # rounding of equal points is no spread
    s = np.maximum(s, top / max_aspect)
    with np.errstate(divide="ignore", invalid="ignore"):
        geo = np.exp(np.log(np.where(s > 0, s, 1.0)).mean(1, keepdims=True))
        w = np.where(keep[:, None], w0 * s / geo, w0)
    R[~keep] = np.eye(d)
    w = np.clip(w, lo, hi)
    return angles_from_rotations(R), w.T.copy()
