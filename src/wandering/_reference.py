"""Plain PyTorch reference for bump sums: dense broadcast, any dtype, autograd.

This is the oracle every fast engine is tested against. It materialises an
(n_smps, d, K) tensor, so it is for tests and small problems only.

    y[i] = sum_k m[k] * exp(-sum_j ((x[i, j] - c[j, k]) / w[j, k]) ** 2)

With ``support_p`` set, bump k counts at point i only when, in every dimension j,
``|x[i, j] - c[j, k]| < support_halfwidths(w, support_p)[j, k]``.
"""

from __future__ import annotations

import math

import torch


def support_scale(support_p: float) -> float:
    """k such that exp(-k**2) == support_p: a bump has fallen to support_p of its peak at c +- k*w."""
    return math.sqrt(-math.log(support_p))


def support_halfwidths(w: torch.Tensor, support_p: float) -> torch.Tensor:
    """Half-widths of the support boxes, k * |w|, in w's dtype.

    Every engine computes the support test from this one tensor, so all agree
    exactly on which (point, bump) pairs are inside.
    """
    return support_scale(support_p) * w.detach().abs()


def support_mask_reference(x: torch.Tensor, c: torch.Tensor, w: torch.Tensor, support_p: float) -> torch.Tensor:
    """Boolean (n_smps, K): True where point i lies inside bump k's support box."""
    half = support_halfwidths(w, support_p)
    return ((x.detach()[:, :, None] - c.detach()[None]).abs() < half[None]).all(dim=1)


def bump_sum_reference(
    x: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    m: torch.Tensor,
    support_p: float | None = None,
) -> torch.Tensor:
    """Sum of Gaussian bumps by dense broadcasting.

    Args:
        x: Points, shape (n_smps, d).
        c: Centres, shape (d, K), one column per bump.
        w: Widths, shape (d, K).
        m: Magnitudes, shape (K,).
        support_p: If given, a bump contributes exactly 0 outside its support box.

    Returns:
        y of shape (n_smps,).

    Pairs whose value underflows to 0 (or lie outside the support) are masked
    before dividing by w, so a tiny width never puts NaN in any gradient.
    """
    diff = x[:, :, None] - c[None]  # (n, d, K)
    with torch.no_grad():
        s_probe = ((diff / w[None]) ** 2).sum(dim=1)  # (n, K)
        live = torch.exp(-s_probe) > 0
        if support_p is not None:
            live &= support_mask_reference(x, c, w, support_p)
    w_safe = torch.where(live[:, None, :], w[None], torch.ones_like(w)[None])
    z = diff / w_safe
    e = torch.exp(-(z * z).sum(dim=1))
    e = torch.where(live, e, torch.zeros_like(e))
    return e @ m
