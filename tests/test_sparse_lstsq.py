"""Sparse least squares (wandering.fit._sparse_lstsq): the design is exactly the modules' culled
sum, and the solves agree with the dense normal equations of wandering.fit._lstsq and with a
plain least-squares oracle."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from wandering import bump_sum, oriented_bump_sum
from wandering._engine._rotation import n_angles
from wandering.fit._lstsq import solve_magnitudes, solve_magnitudes_cv
from wandering.fit._sparse_lstsq import solve_magnitudes_sparse, solve_magnitudes_sparse_cv, sparse_design


def _problem(seed, n, d, K, P, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=dtype)
    c = torch.rand(d, K, generator=g, dtype=dtype)
    w = (0.08 + 0.25 * torch.rand(d, K, generator=g, dtype=dtype)) * (1 - 2 * (torch.rand(d, K, generator=g) < 0.2))
    a = 3.0 * torch.randn(n_angles(d), K, generator=g, dtype=dtype)
    y = torch.randn(n, P, generator=g, dtype=dtype) if P > 1 else torch.randn(n, generator=g, dtype=dtype)
    return x, c, w, a, y


@settings(max_examples=25, deadline=None)
@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 120),
    d=st.integers(1, 4),
    K=st.integers(1, 30),
    oriented=st.booleans(),
    support_p=st.sampled_from([0.5, 0.01, 1e-6]),
)
def test_design_is_the_modules_culled_sum(seed, n, d, K, oriented, support_p):
    x, c, w, a, _ = _problem(seed, n, d, K, 1)
    eye = torch.eye(K, dtype=x.dtype)
    if oriented:
        ref = oriented_bump_sum(x, c, w, eye, a, support_p=support_p, backend="reference")
    else:
        ref = bump_sum(x, c, w, eye, support_p=support_p, backend="reference")
    phi = sparse_design(x, c, w, support_p, angles=a if oriented else None)
    assert phi.shape == (n, K)
    np.testing.assert_allclose(phi.toarray(), ref.numpy(), rtol=1e-12, atol=1e-15)
    assert phi.nnz == int((ref > 0).sum())  # no stored zeros, no missing pairs


@pytest.mark.parametrize("oriented", [False, True])
def test_design_float32_points_pairs_as_the_float32_module_and_zero_widths(oriented):
    x, c, w, a, _ = _problem(3, 2000, 2, 40, 1, dtype=torch.float32)
    w[:, 3] = 0.0  # a zero width: the bump counts nowhere
    eye = torch.eye(40)
    if oriented:
        ref = oriented_bump_sum(x, c, w, eye, a, support_p=0.01, backend="reference")
    else:
        ref = bump_sum(x, c, w, eye, support_p=0.01, backend="reference")
    phi = sparse_design(x, c, w, 0.01, angles=a if oriented else None)
    np.testing.assert_array_equal(phi.toarray() > 0, ref.numpy() > 0)  # the same pairs, tested in float32
    np.testing.assert_allclose(phi.toarray(), ref.numpy(), rtol=1e-5, atol=1e-7)
    assert phi[:, 3].nnz == 0


@pytest.mark.parametrize("P", [1, 3])
@pytest.mark.parametrize("ridge", [0.0, 1e-4, 0.1])
def test_solve_matches_dense_normal_equations(P, ridge):
    x, c, w, _, y = _problem(1, 600, 2, 40, P)
    m1, b1 = solve_magnitudes(x, y, c, w, 0.01, ridge=ridge)
    m2, b2 = solve_magnitudes_sparse(x, y, c, w, 0.01, ridge=ridge)
    assert m2.shape == m1.shape and b2.shape == b1.shape
    torch.testing.assert_close(m2, m1, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(b2, b1, rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("d", [2, 3])
def test_oriented_solve_matches_least_squares_oracle(d):
    x, c, w, a, y = _problem(2, 500, d, 25, 2)
    m, b = solve_magnitudes_sparse(x, y, c, w, 0.01, ridge=0.0, angles=a)
    phi = oriented_bump_sum(x, c, w, torch.eye(25, dtype=x.dtype), a, support_p=0.01, backend="reference")
    design = torch.cat([phi, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    ref = torch.linalg.lstsq(design, y).solution
    fitted = design @ torch.cat([m, b[None]])
    # the same least-squares fit (the solution itself is unique only where the design has full rank)
    torch.testing.assert_close(fitted, design @ ref, rtol=1e-7, atol=1e-8)


def test_cv_matches_dense_cv_and_untouched_bumps_get_zero():
    x, c, w, _, y = _problem(4, 800, 2, 30, 3)
    c[:, 5] = 50.0  # far from every point
    val = torch.zeros(len(x), dtype=torch.bool)
    val[::7] = True
    for refit_all in (True, False):
        m1, b1, r1 = solve_magnitudes_cv(x, y, c, w, 0.01, val, refit_all=refit_all)
        m2, b2, r2 = solve_magnitudes_sparse_cv(x, y, c, w, 0.01, val, refit_all=refit_all)
        assert r1 == r2
        torch.testing.assert_close(m2, m1, rtol=1e-7, atol=1e-8)
        torch.testing.assert_close(b2, b1, rtol=1e-7, atol=1e-8)
        assert float(m2[5].abs().max()) == 0.0


def test_sparse_design_refuses_an_exact_sum():
    x, c, w, _, _ = _problem(0, 10, 2, 3, 1)
    with pytest.raises(ValueError, match="support_p"):
        sparse_design(x, c, w, None)


@pytest.mark.parametrize("oriented", [False, True])
def test_lstsq_solves_switch_to_the_sparse_path_for_many_bumps(monkeypatch, oriented):
    from wandering.fit import _lstsq, _sparse_lstsq

    x, c, w, a, y = _problem(5, 700, 2, 30, 2)
    angles = a if oriented else None
    val = torch.zeros(len(x), dtype=torch.bool)
    val[::5] = True
    dense = _lstsq.solve_magnitudes(x, y, c, w, 0.01, 1e-4, angles=angles)
    dense_cv = _lstsq.solve_magnitudes_cv(x, y, c, w, 0.01, val, return_sse=True, angles=angles)
    calls = []
    real = _sparse_lstsq.sparse_design
    monkeypatch.setattr(_sparse_lstsq, "sparse_design", lambda *args, **kw: calls.append(1) or real(*args, **kw))
    monkeypatch.setattr(_lstsq, "_SPARSE_BUMPS", 30)
    sparse = _lstsq.solve_magnitudes(x, y, c, w, 0.01, 1e-4, angles=angles)
    sparse_cv = _lstsq.solve_magnitudes_cv(x, y, c, w, 0.01, val, return_sse=True, angles=angles)
    assert len(calls) == 2
    for u, v in zip(sparse + sparse_cv[:2], dense + dense_cv[:2]):
        torch.testing.assert_close(u, v, rtol=1e-7, atol=1e-8)
    assert sparse_cv[2] == dense_cv[2]
    np.testing.assert_allclose(sparse_cv[3], dense_cv[3], rtol=1e-7)
    exact = _lstsq.solve_magnitudes(x, y, c, w, None, 1e-4, angles=angles)  # an exact sum stays dense
    assert len(calls) == 2 and exact[0].shape == dense[0].shape
