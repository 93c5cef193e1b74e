"""Support geometry shared by every engine, the oracle and the modules.

A bump ``m * exp(-sum_j ((x_j - c_j) / w_j) ** 2)`` depends on w only through
w**2, so a negative width is the same bump as its absolute value. Its support
box is ``|x_j - c_j| < support_scale(support_p) * |w_j|`` in every dimension j.

A width of exactly 0 makes ``(x - c) / w`` undefined; such a bump is defined to
be 0 everywhere, with 0 gradient for every argument (the limit w -> 0 of the
bump is 0 at every point but x_j == c_j, a set of measure zero). Its box has
half-width 0, so no point is inside it.
"""

from __future__ import annotations

import math

import torch


def support_scale(support_p: float) -> float:
    """k such that exp(-k**2) == support_p: a bump has fallen to support_p of its peak at c +- k*w."""
    return math.sqrt(-math.log(support_p))


def support_halfwidths(w: torch.Tensor, support_p: float | None) -> torch.Tensor:
    """Half-widths (d, K) of the support boxes, in w's dtype, detached.

    ``k * |w|`` for a culled sum; +inf for an exact sum (``support_p`` None), except
    0 where a width is 0. Every engine computes its support test
    ``abs(x - c) < half`` from this one tensor, so all agree exactly on which
    (point, bump) pairs count.
    """
    wd = w.detach()
    if support_p is not None:
        return wd.abs().mul_(support_scale(support_p))  # = scale * |w|, one allocation
    return torch.where(wd == 0, torch.zeros_like(wd), torch.full_like(wd, math.inf))


def inverse_widths(w: torch.Tensor) -> torch.Tensor:
    """1/w, 0 where w is 0 (such bumps count nowhere) and finite where 1/w would overflow."""
    big = torch.finfo(w.dtype).max
    zero = w == 0
    safe = torch.where(zero, torch.ones_like(w), w)
    return torch.where(zero, torch.zeros_like(w), (1.0 / safe).clamp(-big, big))


def cutoffs(w: torch.Tensor, support_p: float | None) -> torch.Tensor:
    """Per-bump cut-off r2 (K,) on s = |z|^2, detached: a pair counts where s < r2.

    ``-ln(support_p)`` for a culled sum (the bump is above support_p of its peak: an
    ellipsoid), +inf for an exact sum, and 0 for a bump with a zero scale (it counts
    nowhere, as an axis-aligned bump with a zero width)."""
    wd = w.detach()
    level = math.inf if support_p is None else -math.log(support_p)
    dead = (wd == 0).any(dim=0)
    return torch.where(dead, torch.zeros_like(wd[0]), torch.full_like(wd[0], level))


def ellipsoid_halfwidths(R: torch.Tensor, w: torch.Tensor, r2: torch.Tensor) -> torch.Tensor:
    """Half-extents (d, K) of the axis-aligned box around each bump's ellipsoid s < r2, detached.

    Along data axis j the ellipsoid ``x = c + R diag(w) z, |z|^2 < r2`` reaches
    ``sqrt(r2 * sum_a R[j, a]^2 w[a]^2)``. +inf for an exact sum, 0 for a dead bump."""
    Rd, wd = R.detach(), w.detach()
    reach = ((Rd * Rd) * (wd * wd)[None]).sum(dim=1).sqrt()  # (d, K)
    return torch.where(r2[None] > 0, reach * r2.sqrt()[None], torch.zeros_like(reach))


def support_mask(x: torch.Tensor, c: torch.Tensor, half: torch.Tensor) -> torch.Tensor:
    """Boolean (n, K): True where point i lies inside bump k's box (dense broadcast; small inputs)."""
    return ((x.detach()[:, :, None] - c.detach()[None]).abs() < half[None]).all(dim=1)
