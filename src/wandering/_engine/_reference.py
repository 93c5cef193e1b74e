"""Plain PyTorch reference for bump sums: dense broadcast, any dtype, plain autograd.

This is the oracle every engine is tested against. It materialises an
(n_smps, d, K) tensor, so it is for tests and small problems only.

    y[i, p] = sum_k m[k, p] * exp(-sum_j ((x[i, j] - c[j, k]) / w[j, k]) ** 2)

With ``support_p`` set, bump k counts at point i only when, in every dimension j,
``|x[i, j] - c[j, k]| < support_halfwidths(w, support_p)[j, k]``. A bump with a
zero width counts nowhere (see ``wandering._engine._geometry``).
"""

from __future__ import annotations

import math

import torch

from wandering._engine._geometry import support_halfwidths, support_mask
from wandering._engine._rotation import n_angles, rotations


def support_mask_reference(x: torch.Tensor, c: torch.Tensor, w: torch.Tensor, support_p: float | None) -> torch.Tensor:
    """Boolean (n_smps, K): True where point i lies inside bump k's support box."""
    return support_mask(x, c, support_halfwidths(w, support_p))


def bump_sum_reference(
    x: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    m: torch.Tensor,
    support_p: float | None = None,
) -> torch.Tensor:
    """Sum of Gaussian bumps by dense broadcasting, differentiable to any order.

    Args:
        x: Points, shape (n_smps, d).
        c: Centres, shape (d, K), one column per bump.
        w: Widths, shape (d, K).
        m: Magnitudes, shape (K,) or (K, P) for P functions sharing c and w.
        support_p: If given, a bump contributes exactly 0 outside its support box.

    Returns:
        y of shape (n_smps,) for m of shape (K,), else (n_smps, P), in the inputs' dtype.

    Raises:
        RuntimeError: (from torch) shapes that do not broadcast, or tensors on different devices.
            This oracle checks nothing itself: :func:`wandering.bump_sum` checks its arguments.

    Pairs whose value underflows to 0, or that lie outside the support, are
    masked before dividing by w, so no gradient of any order is NaN.
    """
    diff = x[:, :, None] - c[None]  # (n, d, K)
    with torch.no_grad():
        live = support_mask(x, c, support_halfwidths(w, support_p))
        w_probe = torch.where(w == 0, torch.ones_like(w), w)
        live &= torch.exp(-((diff / w_probe[None]) ** 2).sum(dim=1)) > 0
    w_safe = torch.where(live[:, None, :], w[None], torch.ones_like(w)[None])
    z = diff / w_safe
    e = torch.exp(-(z * z).sum(dim=1))
    e = torch.where(live, e, torch.zeros_like(e))
    return e @ m


def oriented_bump_sum_reference(
    x: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    m: torch.Tensor,
    angles: torch.Tensor | None = None,
    support_p: float | None = None,
) -> torch.Tensor:
    """Sum of oriented Gaussian bumps by dense broadcasting, differentiable to any order.

    ``y[i, p] = sum_k m[k, p] * exp(-|z_ik|^2)``, ``z_ik[a] = sum_j R_k[j, a] (x[i, j] - c[j, k]) / w[a, k]``
    with R_k the rotation of ``angles[:, k]`` (``wandering._engine._rotation.rotations``). With
    ``support_p``, bump k counts at point i only where ``|z_ik|^2 < -ln(support_p)``; a bump
    with a zero scale counts nowhere. Materialises (n_smps, d, K): small problems only.

    Args:
        x: Points, shape (n_smps, d).
        c: Centres, shape (d, K), one column per bump.
        w: Scales along each bump's principal axes, shape (d, K).
        m: Magnitudes, shape (K,) or (K, P) for P functions sharing c, w and the angles.
        angles: Rotation angles, shape (d(d-1)/2, K); None: all 0 (axis-aligned bumps).
        support_p: If given, a bump contributes exactly 0 outside its support ellipsoid.

    Returns:
        y of shape (n_smps,) for m of shape (K,), else (n_smps, P), in the inputs' dtype.

    Raises:
        RuntimeError: (from torch) shapes that do not broadcast, or tensors on different devices.
            This oracle checks nothing itself: :func:`wandering.oriented_bump_sum` checks its
            arguments.
    """
    d, K = c.shape
    if angles is None:
        angles = c.new_zeros((n_angles(d), K))
    R = rotations(angles, d)  # (d, d, K)
    diff = x[:, :, None] - c[None]  # (n, d, K)
    rotated = (diff[:, :, None, :] * R[None]).sum(dim=1)  # (n, d, K): R^T diff, axis a
    with torch.no_grad():
        w_probe = torch.where(w == 0, torch.ones_like(w), w)
        s = ((rotated / w_probe[None]) ** 2).sum(dim=1)
        live = torch.exp(-s) > 0
        live &= (w != 0).all(dim=0)[None]
        if support_p is not None:
            live &= s < -math.log(support_p)
    w_safe = torch.where(live[:, None, :], w[None], torch.ones_like(w)[None])
    z = rotated / w_safe
    e = torch.exp(-(z * z).sum(dim=1))
    e = torch.where(live, e, torch.zeros_like(e))
    return e @ m
