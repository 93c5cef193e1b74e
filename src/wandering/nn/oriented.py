"""Oriented (full-covariance) counterparts of the seed's sums of bumps.

Every bump has the form ``y = m * exp(-|z|^2)`` with ``z = diag(1/w) R^T (x - c)``:
centre c, scales w along its principal axes, and those axes the columns of a
rotation R built from d(d-1)/2 free angles (``wandering._engine._rotation``). A rotated,
elongated bump follows an oblique ridge, an edge or a tilted layer that would
take many axis-aligned bumps. With all angles 0 the bump is the seed's.

The modules keep the seed's conventions (see ``wandering.nn.modules``): bounds on
centres (a box) and scales (a range), keyed gradient noise on centres, scales and
angles, m of shape (K,) or (K, P), factory kwargs.
"""

from __future__ import annotations

from typing import Any

import torch

from wandering._engine import _checks, check_angles, evaluate_oriented_checked
from wandering._engine._rotation import n_angles, rotations
from wandering.nn import _noise
from wandering.nn.modules import _SumModule

__all__ = ["OrientedSumOfBumpFcns", "SlowOrientedSumOfBumpFcns"]


class _OrientedSumModule(_SumModule):
    """Shared machinery of the oriented sums: the ``angles`` parameter, its noise, forward."""

    def _init_angles(self, angles: Any, angle_grad_std: float) -> None:
        d, K = self.c.shape
        if angles is None:
            a = torch.zeros((n_angles(d), K), dtype=self.c.dtype, device=self.c.device)
        else:
            a = _checks.as_float_tensor(angles, "angles", dtype=self.c.dtype, device=self.c.device)
            check_angles(a, d, K)
            _checks.check_finite(a, "angles")
        self.angles = torch.nn.Parameter(a)
        self.angle_grad_std = angle_grad_std

    @property
    def angle_grad_std(self) -> float:
        """Std of the noise :meth:`pert_grads` adds to the angles' gradient (radians, >= 0)."""
        return self._angle_grad_std

    @angle_grad_std.setter
    def angle_grad_std(self, value: float) -> None:
        self._angle_grad_std = _checks.check_nonneg(value, "angle_grad_std")

    def _grad_noise(self) -> tuple:
        return (*super()._grad_noise(), (self.angles, self.angle_grad_std, _noise.STREAM_ANGLE_GRAD))

    def perturb_params(
        self, c_std: float = 0.0, w_std: float = 0.0, m_std: float = 0.0, angle_std: float = 0.0
    ) -> None:
        """Adds keyed N(0, std**2) noise to the parameters themselves (angles too), in place.

        As :meth:`wandering.SlowSumOfBumpFcns.perturb_params`, plus the angles. Does not bound.

        Args:
            c_std: Std of the noise added to every entry of c, in c's units.
            w_std: Std of the noise added to every scale.
            m_std: Std of the noise added to every entry of m.
            angle_std: Std of the noise added to every angle, in radians.

        Raises:
            TypeError: a std that is not a number.
            ValueError: a std that is negative or not finite.
        """
        self._add_param_noise([
            (self.c, _checks.check_nonneg(c_std, "c_std"), _noise.STREAM_C_PARAM),
            (self.w, _checks.check_nonneg(w_std, "w_std"), _noise.STREAM_W_PARAM),
            (self.m, _checks.check_nonneg(m_std, "m_std"), _noise.STREAM_M_PARAM),
            (self.angles, _checks.check_nonneg(angle_std, "angle_std"), _noise.STREAM_ANGLE_PARAM),
        ])  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes output from input.

        Args:
            x: Input of shape (n_smps, d), in the parameters' dtype and on their device.

        Returns:
            y of shape (n_smps,), or (n_smps, P) for m of shape (K, P), in the parameters' dtype.

        Raises:
            TypeError: x is not a tensor.
            ValueError: x is not (n_smps, d), has another dtype or device than the module, or
                x or a parameter holds NaN or +-inf.
        """
        x = _checks.check_input(x, self.n_dims, self.c.dtype, self.c.device)
        return evaluate_oriented_checked(x, self.c, self.w, self.m, self.angles, self.support_p, self.backend)

    def axes(self) -> torch.Tensor:
        """The bumps' principal axes.

        Returns:
            R of shape (d, d, K), detached, in the parameters' dtype: ``R[:, a, k]`` is bump
            k's unit axis a, along which its scale is ``w[a, k]``.
        """
        with torch.no_grad():
            return rotations(self.angles, self.n_dims)

    def covariances(self) -> torch.Tensor:
        """The bumps' covariances as Gaussians.

        Returns:
            Sigma of shape (d, d, K), detached: ``Sigma[:, :, k] = R_k diag(w_k**2 / 2) R_k^T``,
            so bump k is ``m_k exp(-(x - c_k)^T Sigma_k^-1 (x - c_k) / 2)``.
        """
        R = self.axes()
        with torch.no_grad():
            return torch.einsum("jak,ak,lak->jlk", R, self.w * self.w / 2.0, R)

    def extra_repr(self) -> str:
        return super().extra_repr() + f", angle_grad_std={self.angle_grad_std}"


class OrientedSumOfBumpFcns(_OrientedSumModule):
    """A sum of K oriented Gaussian bumps with learnable centres, scales, rotations and magnitudes.

    ``y(x) = sum_k m_k exp(-|diag(1/w_k) R_k^T (x - c_k)|^2)``. Exact by default: every
    bump counts at every point; pass ``support_p`` to count each bump only inside the
    ellipsoid where it exceeds ``support_p`` of its peak. The counterpart of
    :class:`wandering.SumOfBumpFcns` (same arguments, plus ``angles``).

    Args:
        c: Initial centres, shape (d, K); each column is one bump's centre.
        w: Initial scales along each bump's principal axes, shape (d, K), nonzero.
        m: Initial magnitudes, shape (K,) or (K, P).
        c_bounds: Bounds for c, shape (d, 2): column 0 lower, column 1 upper, per data dimension.
            None (default): unbounded.
        w_bounds: Bounds for w, shape (d, 2), per principal axis. None (default): unbounded.
        angles: (keyword-only) Initial rotation angles, shape (d(d-1)/2, K) (radians; see
            ``wandering._engine._rotation`` for the convention). None: 0, axis-aligned ellipsoids.
        c_grad_std, w_grad_std, angle_grad_std: (keyword-only) Std of the noise
            :meth:`pert_grads` adds to the gradients of c, w and the angles. Default 0.
        m_grad_gain: (keyword-only) :meth:`pert_grads` subtracts ``m_grad_gain * m`` from m's gradient.
        support_p: (keyword-only) None (exact, the default) or the support cut-off in (0, 1).
        backend: (keyword-only) Engine name, "auto" by default.
        device, dtype: Factory kwargs as in ``torch.nn.Linear``.

    Shape:
        - Input: (n_smps, d)
        - Output: (n_smps,), or (n_smps, P) for m of shape (K, P)

    Raises:
        ValueError: bad shapes, zero scales, bounds with lower > upper, support_p outside (0, 1),
            negative noise settings, non-finite values.
        TypeError: arguments that are not numbers or tensors.

    Example:
        >>> f = OrientedSumOfBumpFcns(torch.rand(2, 8), torch.full((2, 8), 0.3), torch.ones(8),
        ...                           angles=torch.rand(1, 8))
        >>> f(torch.rand(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        c: torch.Tensor,
        w: torch.Tensor,
        m: torch.Tensor,
        c_bounds: torch.Tensor | None = None,
        w_bounds: torch.Tensor | None = None,
        *,
        angles: torch.Tensor | None = None,
        c_grad_std: float = 0.0,
        w_grad_std: float = 0.0,
        angle_grad_std: float = 0.0,
        m_grad_gain: float = 0.0,
        support_p: float | None = None,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        support_p_checked = _checks.check_support_p(support_p, allow_none=True)
        self._init_sum(
            c, w, m, c_bounds, w_bounds, c_grad_std, w_grad_std, m_grad_gain, support_p_checked, backend, device, dtype
        )
        self._init_angles(angles, angle_grad_std)


class SlowOrientedSumOfBumpFcns(_OrientedSumModule):
    """A sum of K oriented Gaussian bumps, each evaluated only inside its support ellipsoid.

    The counterpart of :class:`wandering.SlowSumOfBumpFcns` (same arguments and
    positions, plus the keyword-only ``angles`` and ``angle_grad_std``): bump k counts
    only where it exceeds ``support_p`` of its peak, the ellipsoid
    ``|diag(1/w_k) R_k^T (x - c_k)|^2 < -ln(support_p)``, and the culled engines skip the
    points outside it, so an elongated bump costs what its ellipsoid holds.

    Args:
        c: Initial centres, shape (d, K).
        w: Initial scales along each bump's principal axes, shape (d, K), nonzero.
        m: Initial magnitudes, shape (K,) or (K, P).
        c_bounds: Bounds for c, shape (d, 2), per data dimension. None: unbounded.
        w_bounds: Bounds for w, shape (d, 2), per principal axis. None: unbounded.
        c_grad_std: Std of the noise added to c's gradient by :meth:`pert_grads`.
        w_grad_std: Std of the noise added to w's gradient.
        m_grad_gain: :meth:`pert_grads` subtracts ``m_grad_gain * m`` from m's gradient.
        support_p: Fraction of the peak at which each support ellipsoid ends, in (0, 1).
        angles: (keyword-only) Initial rotation angles, shape (d(d-1)/2, K). None: 0.
        angle_grad_std: (keyword-only) Std of the noise added to the angles' gradient (radians).
        backend: (keyword-only) Engine name, "auto" by default.
        device, dtype: Factory kwargs as in ``torch.nn.Linear``.

    Shape:
        - Input: (n_smps, d)
        - Output: (n_smps,), or (n_smps, P) for m of shape (K, P)

    Raises:
        ValueError, TypeError: as :class:`OrientedSumOfBumpFcns`.

    Example:
        >>> f = SlowOrientedSumOfBumpFcns(torch.rand(2, 8), torch.full((2, 8), 0.3), torch.ones(8, 3),
        ...                               torch.tensor([[0.0, 1.0]] * 2), torch.tensor([[0.02, 0.5]] * 2))
        >>> f(torch.rand(5, 2)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        c: torch.Tensor,
        w: torch.Tensor,
        m: torch.Tensor,
        c_bounds: torch.Tensor | None = None,
        w_bounds: torch.Tensor | None = None,
        c_grad_std: float = 0.0,
        w_grad_std: float = 0.0,
        m_grad_gain: float = 0.0,
        support_p: float = 0.01,
        *,
        angles: torch.Tensor | None = None,
        angle_grad_std: float = 0.0,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        support_p_checked = _checks.check_support_p(support_p)
        self._init_sum(
            c, w, m, c_bounds, w_bounds, c_grad_std, w_grad_std, m_grad_gain, support_p_checked, backend, device, dtype
        )
        self._init_angles(angles, angle_grad_std)
