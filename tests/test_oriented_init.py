"""Oriented bumps' starting shapes from their k-means cells (wandering.fit._oriented_init)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wandering import BumpRegressor
from wandering._engine._rotation import n_angles, rotations
from wandering.fit._oriented_init import (
    angles_from_rotations,
    assign_cells,
    cell_covariances,
    oriented_start,
    principal_frames,
)


def _rot(angles: np.ndarray, d: int) -> np.ndarray:
    """(K, d, d) rotations of the module's angles (d(d-1)/2, K), through the module's own map."""
    return rotations(torch.as_tensor(angles, dtype=torch.float64), d).permute(2, 0, 1).numpy()


def _cov(R: np.ndarray, var: np.ndarray) -> np.ndarray:
    return np.einsum("kia,ka,kja->kij", R, var, R)


@pytest.mark.parametrize("d", [1, 2, 3, 4, 6])
def test_frames_and_angles_invert_the_modules_rotation(d):
    rng = np.random.default_rng(d)
    K = 40
    R = _rot(rng.uniform(-3, 3, size=(n_angles(d), K)), d)  # any rotation, large angles included
    var = rng.uniform(0.01, 1.0, size=(K, d))
    cov = _cov(R, var)
    R2, var2 = principal_frames(cov)
    np.testing.assert_allclose(np.linalg.det(R2), 1.0, atol=1e-12)
    np.testing.assert_allclose(_cov(R2, var2), cov, atol=1e-12)
    # of the equivalent frames, one no farther from I than the eigenvectors' own (sign-fixed) frame
    _lam, V = np.linalg.eigh(cov)
    V = V * np.where(np.linalg.det(V) < 0, -1.0, 1.0)[:, None, None] if d % 2 else V
    assert (np.einsum("kii->k", R2) >= np.einsum("kii->k", V) - 1e-9).all()
    ang = angles_from_rotations(R2)
    assert ang.shape == (n_angles(d), K) and np.isfinite(ang).all()
    np.testing.assert_allclose(_rot(ang, d), R2, atol=1e-10)


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_tilted_elongated_cloud_is_recovered(d):
    rng = np.random.default_rng(10 + d)
    ang = rng.uniform(-0.7, 0.7, size=(n_angles(d), 1))
    R = _rot(ang, d)[0]
    s = np.array([0.2, 0.05, 0.03, 0.02][:d])  # scales along the true axes, all different
    pts = 0.5 + (rng.normal(size=(20000, d)) * s) @ R.T
    cov, mass = cell_covariances(pts, np.zeros(len(pts), dtype=np.int64), 1)
    assert mass[0] == len(pts)
    R2, var = principal_frames(cov)
    np.testing.assert_allclose(np.sqrt(var[0]), s, rtol=0.03)  # the largest first: the order nearest I
    # each recovered axis is the true one, up to its sign
    np.testing.assert_allclose(np.abs((R2[0] * R).sum(0)), 1.0, atol=5e-3)
    # oriented_start: same axes, scales with the true ratios and geometric mean w0
    w0 = 0.1
    angles, w = oriented_start(pts, np.full((1, d), 0.5), w0, np.array([1e-3, 10.0]), max_aspect=100.0)
    assert angles.shape == (n_angles(d), 1) and w.shape == (d, 1)
    np.testing.assert_allclose(w[:, 0], w0 * s / np.exp(np.log(s).mean()), rtol=0.03)
    np.testing.assert_allclose(np.abs((_rot(angles, d)[0] * R).sum(0)), 1.0, atol=5e-3)


def test_cells_weights_and_clipping():
    rng = np.random.default_rng(0)
    # two cells: a line along x_0 and one along x_1; weights only on the part of each that matters
    a = np.stack([rng.uniform(0, 0.4, 500), 0.2 + 0.002 * rng.normal(size=500)], 1)
    b = np.stack([0.8 + 0.002 * rng.normal(size=500), rng.uniform(0.6, 1.0, 500)], 1)
    pts = np.concatenate([a, b])
    cent = np.array([[0.2, 0.2], [0.8, 0.8]])
    lab = assign_cells(pts, cent)
    np.testing.assert_array_equal(lab, np.repeat([0, 1], 500))
    angles, w = oriented_start(pts, cent, 0.05, np.tile([0.01, 0.2], (2, 1)), max_aspect=8.0)
    R = _rot(angles, 2)
    for k, axis in ((0, 0), (1, 1)):  # each bump's long scale lies along its line
        long = int(np.argmax(w[:, k]))
        assert abs(R[k][axis, long]) > 0.99
    np.testing.assert_allclose(w.max(0) / w.min(0), 8.0, rtol=1e-9)  # the aspect cap
    # clipping to the bounds
    _, w2 = oriented_start(pts, cent, 0.05, np.array([0.04, 0.06]), max_aspect=8.0)
    assert w2.min() == pytest.approx(0.04) and w2.max() == pytest.approx(0.06)
    # weights: zero weight on a cell's points but one leaves a single point, so no spread
    wts = np.ones(len(pts))
    wts[1:500] = 0.0
    cov, mass = cell_covariances(pts, lab, 2, wts)
    assert mass[0] == 1.0 and not cov[0].any() and cov[1].any()


@pytest.mark.parametrize("d", [1, 2, 3, 4])
def test_degenerate_cells_give_valid_bounded_shapes(d):
    rng = np.random.default_rng(d)
    lo, hi, w0 = 0.02, 0.3, 0.1
    cent = rng.uniform(0, 1, size=(4, d))
    line = cent[1] + np.linspace(-0.05, 0.05, 30)[:, None] * np.ones(d) / np.sqrt(d)  # collinear
    twin = np.repeat(cent[2][None], 5, 0)  # five copies of one point
    pts = np.concatenate([cent[:1], line, twin])  # cell 0: one point; cell 3: empty
    angles, w = oriented_start(pts, cent, w0, np.array([lo, hi]))
    assert np.isfinite(angles).all() and np.isfinite(w).all()
    assert w.shape == (d, 4) and angles.shape == (n_angles(d), 4)
    assert (w >= lo).all() and (w <= hi).all()
    for k in (0, 2, 3):  # no spread: the axis-aligned start
        np.testing.assert_array_equal(w[:, k], w0)
        assert not angles[:, k].any()
    if d > 1:  # the line: its long scale along the line, within the aspect cap
        R = _rot(angles, d)[1]
        long = int(np.argmax(w[:, 1]))
        assert abs(R[:, long] @ (np.ones(d) / np.sqrt(d))) > 0.999
        assert w[:, 1].max() / w[:, 1].min() <= 8.0 + 1e-9


def test_errors_name_the_argument():
    pts, cent = np.zeros((5, 2)), np.zeros((2, 2))
    with pytest.raises(ValueError, match="w0 must be > 0"):
        oriented_start(pts, cent, 0.0, np.array([0.1, 1.0]))
    with pytest.raises(ValueError, match="max_aspect must be >= 1, but got 0.5"):
        oriented_start(pts, cent, 0.1, np.array([0.1, 1.0]), max_aspect=0.5)
    with pytest.raises(ValueError, match="w_bounds must be"):
        oriented_start(pts, cent, 0.1, np.array([1.0, 0.1]))
    with pytest.raises(ValueError, match="xs and cent must have shapes"):
        assign_cells(pts, np.zeros((2, 3)))
    with pytest.raises(ValueError, match="labels must lie in"):
        cell_covariances(pts, np.full(5, 2), 2)
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        cell_covariances(pts, np.zeros(5, dtype=np.int64), 1, -np.ones(5))
    with pytest.raises(ValueError, match="cov must have shape"):
        principal_frames(np.zeros((2, 2)))


def test_regressor_starts_from_the_cells():
    """The fitted start (nothing trained) is oriented_start on the placement's points: along an
    oblique ridge the bumps start turned towards it, and their scales keep the width's mean."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, size=(900, 2))
    y = np.exp(-(((x[:, 0] - x[:, 1]) / 0.05) ** 2))
    frozen = dict(
        n_bumps=12,
        steps=1,
        lr_position=0.0,
        lr_magnitude=0.0,
        lr_angle=0.0,
        polish=False,
        random_state=3,
        relocate=False,
    )
    ax = BumpRegressor(**frozen).fit(x, y).module_.bumps
    b = BumpRegressor(**frozen, shape="oriented").fit(x, y).module_.bumps
    assert torch.equal(ax.c, b.c)  # the same placement
    w = b.w.detach().double()
    lo, hi = b.w_bounds[0].tolist()  # (d, 2), the same range on every axis
    assert float(w.min()) >= lo - 1e-6 and float(w.max()) <= hi + 1e-6
    # near the ridge (|x0 - x1| small) the long axis lies along (1, 1)
    c = b.c.detach().double().numpy()
    near = np.abs(c[0] - c[1]) < 0.05
    assert near.sum() >= 2
    R = b.axes().detach().double().numpy()
    along = [abs(R[:, int(np.argmax(w[:, k])), k] @ np.array([1.0, 1.0]) / np.sqrt(2)) for k in np.flatnonzero(near)]
    assert min(along) > 0.8 and np.mean(along) > 0.9, along
