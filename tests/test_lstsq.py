"""Least squares for the magnitudes of oriented bumps: the normal equations on the dense torch
path and the Numba sparse Gram path against a design built from ``oriented_bump_sum_reference``."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wandering import oriented_bump_sum_reference
from wandering._engine._rotation import n_angles
from wandering.fit import _lstsq

SP = 0.01
PATHS = {"dense": 1e18, "numba": 0.0}  # _DENSE_WORK: everything dense, or everything through the kernel


def _problem(d, K, n, P, dtype, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    c = torch.rand(d, K, generator=gen, dtype=torch.float64)
    # elongated bumps (aspect ratios up to 10) at every angle: boxes much wider than the ellipsoids
    w = 0.03 + 0.3 * torch.rand(d, K, generator=gen, dtype=torch.float64) ** 2
    angles = (2 * torch.rand(n_angles(d), K, generator=gen, dtype=torch.float64) - 1) * math.pi
    y = (
        torch.randn(n, generator=gen, dtype=torch.float64)
        if P is None
        else torch.randn(n, P, generator=gen, dtype=torch.float64)
    )
    return tuple(t.to(dtype) for t in (x, y, c, w, angles))


def _design(x, c, w, angles, support_p):
    """The reference design [phi_1 .. phi_K, 1] in float64: the reference sum with m = I."""
    K = c.shape[1]
    phi = oriented_bump_sum_reference(x, c, w, torch.eye(K, dtype=x.dtype), angles, support_p).double()
    return torch.cat([phi, torch.ones(len(x), 1, dtype=torch.float64)], dim=1)


def _tol(dtype):
    return dict(rtol=1e-10, atol=1e-9) if dtype == torch.float64 else dict(rtol=2e-5, atol=2e-4)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d, P", [(2, None), (3, 2), (4, None)])
def test_normal_equations_match_the_reference_design(monkeypatch, path, dtype, d, P):
    monkeypatch.setattr(_lstsq, "_DENSE_WORK", PATHS[path])
    x, y, c, w, angles = _problem(d, 40, 900, P, dtype)
    phi = _design(x, c, w, angles, SP)
    y2 = y.double().reshape(len(y), -1)
    G, B = _lstsq.normal_equations(x, y, c, w, SP, angles=angles)
    assert G.dtype == B.dtype == torch.float64
    torch.testing.assert_close(G, phi.T @ phi, **_tol(dtype))
    torch.testing.assert_close(B, phi.T @ y2, **_tol(dtype))
    # the ellipsoids matter: the axis-aligned boxes of the same bumps give another design
    box = _lstsq._design_chunk(x.double(), c.double(), w.double(), _lstsq.support_halfwidths(w.double(), SP))
    assert float((box - phi[:, :-1]).abs().max()) > 0.1


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("P", [None, 3])
def test_solve_magnitudes_is_the_least_squares_fit_of_the_reference_design(monkeypatch, path, P):
    monkeypatch.setattr(_lstsq, "_DENSE_WORK", PATHS[path])
    x, y, c, w, angles = _problem(2, 30, 800, P, torch.float64, seed=1)
    phi = _design(x, c, w, angles, SP)
    m, b = _lstsq.solve_magnitudes(x, y, c, w, SP, ridge=0.0, angles=angles)
    assert m.shape == ((30,) if P is None else (30, P))
    ref = torch.linalg.lstsq(phi, y.reshape(800, -1)).solution
    torch.testing.assert_close(torch.cat([m.reshape(30, -1), b.reshape(1, -1)]), ref, rtol=1e-6, atol=1e-6)
    # the fitted sum reproduces the design's prediction
    pred = oriented_bump_sum_reference(x, c, w, m, angles, SP) + b
    torch.testing.assert_close(pred.reshape(800, -1), phi @ ref, rtol=1e-6, atol=1e-6)


def test_exact_sum_and_the_cv_solve_take_the_angles():
    x, y, c, w, angles = _problem(3, 20, 500, None, torch.float64, seed=2)
    phi = _design(x, c, w, angles, None)
    G, _B = _lstsq.normal_equations(x, y, c, w, None, angles=angles)  # exact: the dense path, every pair
    torch.testing.assert_close(G, phi.T @ phi, rtol=1e-10, atol=1e-9)
    val = torch.zeros(500, dtype=torch.bool)
    val[::7] = True
    m, b, ridge = _lstsq.solve_magnitudes_cv(x, y, c, w, SP, val, angles=angles)
    m2, b2 = _lstsq.solve_magnitudes(x, y, c, w, SP, ridge=ridge, angles=angles)
    torch.testing.assert_close(m, m2)
    torch.testing.assert_close(b, b2)
    m_axis, _, _ = _lstsq.solve_magnitudes_cv(x, y, c, w, SP, val)
    assert not torch.allclose(m, m_axis)


@pytest.mark.parametrize("path", PATHS)
def test_one_dimension_and_dead_bumps(monkeypatch, path):
    monkeypatch.setattr(_lstsq, "_DENSE_WORK", PATHS[path])
    x, y, c, w, _ = _problem(1, 12, 300, None, torch.float32, seed=3)
    # in 1-D an oriented bump has no angle and is the axis-aligned bump, box and all
    G, B = _lstsq.normal_equations(x, y, c, w, SP, angles=torch.zeros(0, 12))
    G0, B0 = _lstsq.normal_equations(x, y, c, w, SP)
    assert torch.equal(G, G0) and torch.equal(B, B0)
    # a bump with a zero scale counts nowhere: a zero row and column, and m = 0
    x, y, c, w, angles = _problem(2, 12, 300, None, torch.float32, seed=3)
    w[1, 4] = 0.0
    G, B = _lstsq.normal_equations(x, y, c, w, SP, angles=angles)
    assert not G[4].any() and not G[:, 4].any() and not B[4].any()
    m, _ = _lstsq.solve_magnitudes(x, y, c, w, SP, angles=angles)
    assert m[4] == 0


@settings(max_examples=25, deadline=None)
@given(
    d=st.integers(2, 4),
    K=st.integers(1, 25),
    n=st.integers(1, 300),
    p=st.sampled_from([None, 1, 2]),
    support_p=st.sampled_from([0.5, 0.01, 1e-6]),
    seed=st.integers(0, 2**16),
)
def test_kernel_and_dense_paths_agree_on_random_shapes(d, K, n, p, support_p, seed):
    x, y, c, w, angles = _problem(d, K, n, p, torch.float64, seed)
    phi = _design(x, c, w, angles, support_p)
    y2 = y.reshape(n, -1)
    old = _lstsq._DENSE_WORK
    try:
        for work in PATHS.values():
            _lstsq._DENSE_WORK = work
            G, B = _lstsq.normal_equations(x, y, c, w, support_p, angles=angles)
            torch.testing.assert_close(G, phi.T @ phi, rtol=1e-10, atol=1e-9)
            torch.testing.assert_close(B, phi.T @ y2, rtol=1e-10, atol=1e-9)
    finally:
        _lstsq._DENSE_WORK = old
