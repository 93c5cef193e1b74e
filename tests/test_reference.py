"""The oracle itself: the dense reference against an independent per-bump loop."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from problems import DTYPES, TOL, per_bump_loop, random_problem

from wandering._engine._geometry import support_halfwidths, support_scale
from wandering._engine._reference import bump_sum_reference, support_mask_reference


def test_support_scale_is_where_bump_falls_to_support_p():
    for p in (0.5, 0.01, 1e-6):
        assert math.exp(-(support_scale(p) ** 2)) == pytest.approx(p, rel=1e-12)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("support_p", [None, 0.01])
@settings(max_examples=25, deadline=None)
@given(n=st.integers(0, 40), d=st.integers(1, 5), k=st.integers(0, 12), seed=st.integers(0, 2**16))
def test_reference_matches_per_bump_loop(dtype, support_p, n, d, k, seed):
    x, c, w, m = random_problem(n, d, k, dtype=dtype, seed=seed)
    y = bump_sum_reference(x, c, w, m, support_p)
    torch.testing.assert_close(y, per_bump_loop(x, c, w, m, support_p), **TOL[dtype])


def test_single_bump_value_by_hand():
    x = torch.tensor([[1.0, 2.0]], dtype=torch.float64)
    c = torch.tensor([[0.5], [1.0]], dtype=torch.float64)
    w = torch.tensor([[0.5], [2.0]], dtype=torch.float64)
    m = torch.tensor([3.0], dtype=torch.float64)
    expected = 3.0 * math.exp(-((0.5 / 0.5) ** 2 + (1.0 / 2.0) ** 2))
    assert bump_sum_reference(x, c, w, m).item() == pytest.approx(expected, rel=1e-14)


@pytest.mark.parametrize("support_p", [None, 0.05])
def test_reference_gradcheck(support_p):
    x, c, w, m = random_problem(7, 2, 3, dtype=torch.float64, seed=3, width=(0.4, 0.8))
    args = [t.clone().requires_grad_(True) for t in (x, c, w, m)]
    assert torch.autograd.gradcheck(lambda *a: bump_sum_reference(*a, support_p=support_p), args)


def test_support_mask_at_and_near_edges():
    c = torch.tensor([[0.5]])
    w = torch.tensor([[0.1]])
    half = support_halfwidths(w, 0.01)[0, 0]
    edge = c[0, 0] + half
    inside = torch.nextafter(edge, torch.tensor(0.0))
    outside = torch.nextafter(edge, torch.tensor(1.0))
    x = torch.stack([edge, inside, outside, c[0, 0] - half, torch.nextafter(c[0, 0] - half, torch.tensor(1.0))])
    mask = support_mask_reference(x[:, None], c, w, 0.01)[:, 0]
    # Strict inequality: exactly on the edge is outside.
    assert mask.tolist() == [False, True, False, False, True]


def test_tiny_width_gives_no_nan_gradient():
    x, c, w, m = random_problem(20, 2, 3, dtype=torch.float32, seed=1)
    w[:, 0] = 1e-30
    params = [t.clone().requires_grad_(True) for t in (x, c, w, m)]
    for support_p in (None, 0.01):
        y = bump_sum_reference(*params, support_p=support_p)
        grads = torch.autograd.grad(y.sum(), params)
        for g in grads:
            assert torch.isfinite(g).all()
