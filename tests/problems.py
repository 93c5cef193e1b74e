"""Problem builders shared by the tests: random bump sums with known layouts."""

from __future__ import annotations

import math

import torch

DTYPES = (torch.float32, torch.float64)
DEVICES = ("cpu",) + (("cuda",) if torch.cuda.is_available() else ())

# Tolerances for comparing two ways of computing the same float sum.
TOL = {torch.float32: dict(rtol=1e-5, atol=1e-5), torch.float64: dict(rtol=1e-10, atol=1e-12)}


def random_problem(n: int, d: int, k: int, dtype=torch.float64, seed: int = 0, width=(0.1, 0.5)):
    """x (n, d) and c (d, K) uniform in the unit cube, w (d, K) uniform in ``width``, m (K,) normal."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=gen, dtype=dtype)
    c = torch.rand(d, k, generator=gen, dtype=dtype)
    w = width[0] + (width[1] - width[0]) * torch.rand(d, k, generator=gen, dtype=dtype)
    m = torch.randn(k, generator=gen, dtype=dtype)
    return x, c, w, m


def per_bump_loop(x, c, w, m, support_p=None):
    """The seed's algorithm, written independently of the package: one bump at a time,
    each evaluated only inside its support box when support_p is given."""
    y = torch.zeros(x.shape[0], dtype=x.dtype)
    for k in range(c.shape[1]):
        ck, wk = c[:, k], w[:, k]
        if support_p is None:
            idx = torch.arange(x.shape[0])
        else:
            half = math.sqrt(-math.log(support_p)) * wk.abs()
            idx = ((x - ck).abs() < half).all(dim=1).nonzero().squeeze(1)
        vals = m[k] * torch.exp(-(((x[idx] - ck) / wk) ** 2).sum(dim=1))
        y = y.index_add(0, idx, vals)
    return y
