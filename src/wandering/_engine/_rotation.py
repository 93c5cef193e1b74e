"""Rotations and precision transforms of oriented (full-covariance) bumps.

An oriented bump is ``m * exp(-|z|^2)`` with ``z = diag(1/w) R^T (x - c)``: R is a
rotation whose columns are the bump's principal axes and w (d,) its scales along
them, so its covariance is ``R diag(w^2) R^T / 2``. With R = I it is the
axis-aligned bump. R comes from d(d-1)/2 unconstrained angles per bump through
the exponential of a skew-symmetric matrix, so every parameter value is a valid
rotation and no step ever has to be projected back (the parameterisation of 3D
Gaussian splatting, with the rotation vector in place of the quaternion):

- d = 1: no angle, R = [1];
- d = 2: one angle theta, R = [[cos, -sin], [sin, cos]]: the first principal axis
  points at angle theta from x_0 towards x_1;
- d >= 3: S[j, i] = theta, S[i, j] = -theta for the pairs i < j in the order
  (0, 1), (0, 2), ..., (1, 2), ...; R = exp(S). In 3-D the angles are a rotation
  vector (r_z, -r_y, r_x) in the pair order (0, 1), (0, 2), (1, 2).

All functions are plain differentiable torch ops (second order included), over K
bumps at once.
"""

from __future__ import annotations

import torch

from wandering._engine._geometry import inverse_widths

__all__ = ["n_angles", "rotations", "precision_transforms"]


def n_angles(d: int) -> int:
    """Angles per bump in d dimensions: d(d-1)/2."""
    return d * (d - 1) // 2


def _pairs(d: int) -> tuple[list[int], list[int]]:
    rows, cols = [], []
    for i in range(d):
        for j in range(i + 1, d):
            rows.append(i)
            cols.append(j)
    return rows, cols


def rotations(angles: torch.Tensor, d: int) -> torch.Tensor:
    """Rotation matrices R (d, d, K) from angles (d(d-1)/2, K); ``R[:, a, k]`` is principal axis a of bump k."""
    K = angles.shape[1]
    if d == 1:
        return torch.ones((1, 1, K), dtype=angles.dtype, device=angles.device)
    if d == 2:
        cos, sin = torch.cos(angles[0]), torch.sin(angles[0])
        return torch.stack([torch.stack([cos, -sin]), torch.stack([sin, cos])])
    i, j = _pairs(d)
    gen = angles.new_zeros((K, d, d))
    gen[:, j, i] = angles.T
    gen = gen - gen.transpose(1, 2)
    return torch.linalg.matrix_exp(gen).permute(1, 2, 0)


def precision_transforms(R: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """U (d, d, K) with ``z = U[:, :, k] @ (x - c_k)``: ``U[a, j, k] = R[j, a, k] / w[a, k]``.

    Rows of a bump with a zero scale are 0 (the bump counts nowhere: see ``_geometry.cutoffs``)."""
    return (R.transpose(0, 1) * inverse_widths(w)[:, None, :]).contiguous()
