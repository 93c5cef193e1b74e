"""Nearest-centre assignment: the Numba kernels (grid search for d <= 3, plain search above)
against the plain PyTorch reference, ties, and argument errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wandering.fit import _kmeans
from wandering.fit._kmeans import nearest_centre, nearest_centre_reference

numba_only = pytest.mark.skipif(not _kmeans._HAVE_NUMBA, reason="needs numba")


def _points(n, K, d, dtype, seed, clustered=False):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen, dtype=torch.float64)
    if clustered:  # dense clusters and empty space: long ring searches for some points
        x = 0.02 * x + torch.randint(0, 3, (n, d), generator=gen).double() * 0.5
        c = 0.3 * torch.rand(K, d, generator=gen, dtype=torch.float64)
    else:
        c = 1.2 * torch.rand(K, d, generator=gen, dtype=torch.float64) - 0.1  # some points outside the centres' box
    return x.to(dtype), c.to(dtype)


@numba_only
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("d", [1, 2, 3, 4])
@pytest.mark.parametrize("clustered", [False, True])
def test_kernels_match_the_reference(dtype, d, clustered):
    x, c = _points(3000, 257, d, dtype, seed=d, clustered=clustered)
    lab, dist = nearest_centre(x.numpy(), c.numpy())
    ref_lab, ref_dist = nearest_centre_reference(x, c)
    assert lab.dtype == np.int64 and dist.dtype == np.float64
    torch.testing.assert_close(torch.from_numpy(lab), ref_lab, rtol=0, atol=0)
    torch.testing.assert_close(torch.from_numpy(dist), ref_dist)


@numba_only
def test_many_centres_on_a_pixel_grid():
    # The picture case in small: pixel centres and k-means-like centres among them.
    rows, cols = np.mgrid[0:120, 0:90]
    x = np.stack([cols.ravel() + 0.5, rows.ravel() + 0.5], 1)
    c = x[np.random.default_rng(0).choice(len(x), 900, replace=False)] + 0.25
    lab, dist = nearest_centre(x, c)
    ref_lab, ref_dist = nearest_centre_reference(torch.from_numpy(x), torch.from_numpy(c))
    torch.testing.assert_close(torch.from_numpy(lab), ref_lab, rtol=0, atol=0)
    torch.testing.assert_close(torch.from_numpy(dist), ref_dist)


@numba_only
@pytest.mark.parametrize("d", [2, 5])
def test_ties_go_to_the_lowest_index(d):
    # Centres repeated (exact ties), points on a lattice equidistant from several centres.
    base = torch.tensor(np.random.default_rng(1).integers(0, 4, size=(20, d)), dtype=torch.float64)
    c = torch.cat([base, base.flip(0), base])
    x = torch.tensor(np.random.default_rng(2).integers(0, 8, size=(500, d)) * 0.5, dtype=torch.float64)
    lab, dist = nearest_centre(x, c)
    ref_lab, ref_dist = nearest_centre_reference(x, c)
    torch.testing.assert_close(torch.from_numpy(lab), ref_lab, rtol=0, atol=0)
    torch.testing.assert_close(torch.from_numpy(dist), ref_dist, rtol=0, atol=0)
    # the lowest index among the equally near ones
    full = ((x[:, None, :] - c[None]) ** 2).sum(-1)
    first = (full == full.min(1, keepdim=True).values).double().argmax(1)
    assert torch.equal(torch.from_numpy(lab), first)


@numba_only
def test_degenerate_layouts():
    # one centre; all centres on a line in 2-D (a flat grid dimension); no points
    x, _ = _points(400, 1, 2, torch.float64, seed=5)
    for c in (torch.tensor([[0.3, 0.7]]), torch.stack([torch.linspace(0, 1, 50), torch.full((50,), 0.5)], 1)):
        lab, dist = nearest_centre(x, c)
        ref_lab, ref_dist = nearest_centre_reference(x, c)
        torch.testing.assert_close(torch.from_numpy(lab), ref_lab, rtol=0, atol=0)
        torch.testing.assert_close(torch.from_numpy(dist), ref_dist)
    lab, dist = nearest_centre(np.zeros((0, 2)), np.ones((3, 2)))
    assert lab.shape == (0,) and dist.shape == (0,)


def test_without_numba_the_reference_answers(monkeypatch):
    x, c = _points(300, 17, 2, torch.float64, seed=7)
    monkeypatch.setattr(_kmeans, "_HAVE_NUMBA", False)
    lab, dist = nearest_centre(x, c)
    ref_lab, ref_dist = nearest_centre_reference(x, c)
    assert np.array_equal(lab, ref_lab.numpy()) and np.array_equal(dist, ref_dist.numpy())


def test_argument_errors():
    x = np.zeros((5, 2))
    with pytest.raises(TypeError, match="x must be a numpy array"):
        nearest_centre([[0.0, 0.0]], x)
    with pytest.raises(TypeError, match="centres must hold floating-point"):
        nearest_centre(x, np.zeros((3, 2), dtype=np.int64))
    with pytest.raises(ValueError, match=r"x must have shape \(rows, d\), but got \(5,\)"):
        nearest_centre(np.zeros(5), x)
    with pytest.raises(ValueError, match="same d, but got 2 and 3"):
        nearest_centre(x, np.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least one row"):
        nearest_centre(x, np.zeros((0, 2)))
    with pytest.raises(ValueError, match="centres must be finite"):
        nearest_centre(x, np.array([[0.0, np.nan]]))
