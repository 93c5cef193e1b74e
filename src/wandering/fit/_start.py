"""How BumpRegressor starts a fit: how many bumps, the seed, and where the bumps go first
(weighted k-means centres; oriented bumps shaped by their cells' points)."""

from __future__ import annotations

import numbers
from typing import Any

import numpy as np

from wandering.fit._kmeans import nearest_centre

_AUTO_MAX_BUMPS = 256  # n_bumps="auto": at most this many bumps,
_AUTO_POINTS_PER_PARAMETER = 4  # and at least this many points per parameter of one output ((2d + 1) K)


def auto_n_bumps(n_points: int, n_dims: int, shape: str = "axis") -> int:
    """The bump count ``n_bumps="auto"`` resolves to: as many bumps as leave at least 4 points
    per parameter of one output, ``(2d + 1) K`` (a centre and a width per dimension and a
    magnitude per bump; oriented bumps add their d(d-1)/2 angles), and at most 256; at least 1.

    Args:
        n_points: n, the points the regressor is fitted on.
        n_dims: d, their dimension.
        shape: "axis" or "oriented", as ``BumpRegressor(shape=...)``.

    Returns:
        K = min(256, max(1, n // (4 q))) with q = 2d + 1 (+ d(d-1)/2 oriented) numbers per bump.
    """
    per_bump = _AUTO_POINTS_PER_PARAMETER * _numbers_per_bump(n_dims, shape)
    return int(min(_AUTO_MAX_BUMPS, max(1, n_points // per_bump)))


def _numbers_per_bump(d: int, shape: str) -> int:
    """Trainable numbers of one bump with one output: centre, scales (and angles), magnitude."""
    return 2 * d + 1 + (d * (d - 1) // 2 if shape == "oriented" else 0)


def _seed_from(random_state: Any) -> int:
    """An int seed from None (fresh), an int, a numpy RandomState or Generator."""
    if random_state is None:
        return int(np.random.SeedSequence().generate_state(1, np.uint64)[0] >> 2)
    if isinstance(random_state, numbers.Integral) and not isinstance(random_state, bool):
        return int(random_state) & ((1 << 62) - 1)
    if isinstance(random_state, np.random.RandomState):
        return int(random_state.randint(0, 2**31 - 1))
    if isinstance(random_state, np.random.Generator):
        return int(random_state.integers(0, 2**62))
    raise ValueError(f"random_state must be None, an int, a numpy RandomState or Generator, but got {random_state!r}")


def _weighted_kmeans(
    xs: np.ndarray, k: int, weights: np.ndarray, rng: np.random.Generator, iters: int = 10
) -> np.ndarray:
    """Centres of mass ``weights`` (k-means++-like seeding by weight, then weighted Lloyd steps)."""
    n, d = xs.shape
    p = weights / weights.sum()
    cent = xs[rng.choice(n, size=k, replace=k > n, p=p)].copy()
    if k >= n:
        return cent + rng.normal(scale=1e-3, size=cent.shape)
    for _ in range(iters):
        lab = nearest_centre(xs, cent)[0]  # a grid search in d <= 3: O(n), not O(n k)
        mass = np.bincount(lab, weights=weights, minlength=k)
        sums = np.zeros_like(cent)
        for j in range(d):
            sums[:, j] = np.bincount(lab, weights=weights * xs[:, j], minlength=k)
        filled = mass > 0
        cent[filled] = sums[filled] / mass[filled, None]
        if not filled.all():  # an empty cluster restarts at a heavy point
            cent[~filled] = xs[rng.choice(n, size=int((~filled).sum()), p=p)]
    return cent
