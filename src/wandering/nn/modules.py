"""The seed's wandering modules: a single bump and two sums of bumps.

Every bump has the form ``y = m * exp(-sum_j ((x_j - c_j) / w_j) ** 2)``.
Parameters can be clamped into bounds (:meth:`bound`) and their gradients
perturbed with noise (:meth:`pert_grads`), so bumps random-walk where the data
gives them no gradient.
"""

from __future__ import annotations

import abc
from typing import Any

import torch

from wandering._engine import _checks, check_backend, check_magnitudes, evaluate_checked
from wandering._engine._geometry import support_halfwidths, support_mask
from wandering.nn import _noise

__all__ = ["WanderingModule", "BumpFcn", "SumOfBumpFcns", "SlowSumOfBumpFcns"]


class WanderingModule(abc.ABC, torch.nn.Module):
    """Base class for wandering modules: modules whose parameters can be bounded and
    whose gradients can be perturbed during fitting.

    Subclasses implement :meth:`bound` (called after an optimizer step) and
    :meth:`pert_grads` (called after ``backward()`` and before the step).
    """

    def __init__(self) -> None:
        super().__init__()

    @abc.abstractmethod
    def bound(self) -> None:
        """Bounds parameters in the module, in place, from bounds kept as attributes."""

    @abc.abstractmethod
    def pert_grads(self) -> None:
        """Perturbs (or adjusts) gradients of the module's parameters, in place."""


class _no_grad:
    """``torch.no_grad()`` for the per-step methods, without its decorator machinery (~5 us)."""

    __slots__ = ("prev",)

    def __enter__(self) -> None:
        self.prev = torch.is_grad_enabled()
        torch._C._set_grad_enabled(False)

    def __exit__(self, *exc) -> None:
        torch._C._set_grad_enabled(self.prev)


class _BumpModule(WanderingModule):
    """Shared machinery: parameters, bounds, keyed gradient noise, repr.

    ``_bounds_dim`` is the axis of the bounds tensors that holds (lower, upper):
    0 for BumpFcn's (2, d) layout, 1 for the sums' (d, 2) layout.
    """

    _bounds_dim: int
    # Declared for type checkers: torch.nn.Module's __getattr__ types every attribute as Tensor | Module.
    c: torch.nn.Parameter
    w: torch.nn.Parameter
    m: torch.nn.Parameter
    c_bounds: torch.Tensor | None
    w_bounds: torch.Tensor | None
    noise_seed: torch.Tensor
    noise_step: torch.Tensor
    param_noise_step: torch.Tensor
    _n_outputs: int | None

    def _init_common(
        self,
        c: torch.Tensor,
        w: torch.Tensor,
        m: torch.Tensor,
        c_bounds: Any,
        w_bounds: Any,
        c_grad_std: float,
        w_grad_std: float,
        m_grad_gain: float,
        support_p: float | None,
    ) -> None:
        d = c.shape[0]
        self.c = torch.nn.Parameter(c)
        self.w = torch.nn.Parameter(w)
        self.m = torch.nn.Parameter(m)
        self.register_buffer(
            "c_bounds", _checks.check_bounds(c_bounds, "c_bounds", d, self._bounds_dim, c.dtype, c.device)
        )
        self.register_buffer(
            "w_bounds", _checks.check_bounds(w_bounds, "w_bounds", d, self._bounds_dim, c.dtype, c.device)
        )
        # Any lower <= upper is accepted, as in the seed: wide symmetric bounds such as
        # [-1e6, 1e6] mean "unbounded", and a width that crosses 0 is well defined (see _geometry).
        self.c_grad_std = c_grad_std
        self.w_grad_std = w_grad_std
        self.m_grad_gain = m_grad_gain
        self.support_p = support_p
        # Counter-based noise state (see _noise): travels with state_dict and DDP buffer sync.
        self.register_buffer("noise_seed", torch.tensor(_noise.draw_seed(), dtype=torch.int64, device=c.device))
        self.register_buffer("noise_step", torch.tensor(0, dtype=torch.int64, device=c.device))
        self.register_buffer("param_noise_step", torch.tensor(0, dtype=torch.int64, device=c.device))

    # -- settings, validated whenever they are set ---------------------------
    @property
    def c_grad_std(self) -> float:
        """Std of the noise :meth:`pert_grads` adds to c's gradient (>= 0)."""
        return self._c_grad_std

    @c_grad_std.setter
    def c_grad_std(self, value: float) -> None:
        self._c_grad_std = _checks.check_nonneg(value, "c_grad_std")

    @property
    def w_grad_std(self) -> float:
        """Std of the noise :meth:`pert_grads` adds to w's gradient (>= 0)."""
        return self._w_grad_std

    @w_grad_std.setter
    def w_grad_std(self, value: float) -> None:
        self._w_grad_std = _checks.check_nonneg(value, "w_grad_std")

    @property
    def m_grad_gain(self) -> float:
        """:meth:`pert_grads` subtracts ``m_grad_gain * m`` from m's gradient (>= 0)."""
        return self._m_grad_gain

    @m_grad_gain.setter
    def m_grad_gain(self, value: float) -> None:
        self._m_grad_gain = _checks.check_nonneg(value, "m_grad_gain")

    @property
    def support_p(self) -> float | None:
        """Support cut-off in (0, 1); None evaluates every bump at every point."""
        return self._support_p

    @support_p.setter
    def support_p(self, value: float | None) -> None:
        self._support_p = _checks.check_support_p(value, allow_none=True)

    @property
    def backend(self) -> str:
        """Engine name (see ``wandering.BACKENDS``); checked when set, not at the first forward."""
        return self._backend

    @backend.setter
    def backend(self, value: str) -> None:
        self._backend = check_backend(value)

    # -- shape facts -------------------------------------------------------
    @property
    def n_dims(self) -> int:
        """d, the dimension of the input points."""
        return int(self.c.shape[0])

    @property
    def n_bumps(self) -> int:
        """K, the number of bumps (1 for :class:`BumpFcn`)."""
        return 1 if self.c.dim() == 1 else int(self.c.shape[1])

    @property
    def n_outputs(self) -> int | None:
        """P for multi-output magnitudes, None for a single output."""
        return self._n_outputs

    def _bound_pair(self, bounds: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._bounds_dim == 0:  # (2, d): rows are lower, upper; params are (d,)
            return bounds[0], bounds[1]
        return bounds[:, 0:1], bounds[:, 1:2]  # (d, 2) -> (d, 1), broadcast over bumps

    # -- seed API ------------------------------------------------------------
    def bound(self) -> None:
        """Clamps ``c`` and ``w`` into their bounds in place; a None bound leaves that parameter alone."""
        with _no_grad():
            for param, bounds in ((self.c, self.c_bounds), (self.w, self.w_bounds)):
                if bounds is not None:
                    lower, upper = self._bound_pair(bounds)
                    param.clamp_(min=lower, max=upper)

    def pert_grads(self) -> None:
        """Perturbs gradients in place.

        Adds independent N(0, c_grad_std**2) noise to every entry of c's gradient and
        N(0, w_grad_std**2) to w's, and subtracts ``m_grad_gain * m`` from m's gradient.
        A missing gradient counts as zero, so a bump no point touches still wanders.
        With all settings 0, gradients are left exactly as they were. Parameters
        frozen with ``requires_grad_(False)`` are left alone (their draws are still
        consumed, so freezing one parameter does not change the others' noise).

        The noise is a function of ``(noise_seed, noise_step)`` only, and each call
        advances ``noise_step``: runs reproduce from ``torch.manual_seed`` before
        construction, resume exactly from ``state_dict``, and agree across DDP ranks.
        """
        m_gain = self.m_grad_gain
        # Host mirrors of the key buffers: no GPU sync per step (see _noise).
        seed, step = _noise.host_value(self, "noise_seed"), _noise.host_value(self, "noise_step")
        key = _noise.step_key(seed, step)  # shared by every stream: keyed_normal's draws, mixed once
        with _no_grad():
            for param, std, stream in self._grad_noise():
                # A frozen parameter (requires_grad False) gets no noise: freezing must hold.
                if std > 0 and param.requires_grad:
                    noise = _noise.normal_from_key(
                        param.shape, _noise.stream_key(key, stream), param.dtype, param.device
                    )
                    _add_to_grad(param, noise.mul_(std))
            if m_gain > 0 and self.m.requires_grad:
                _add_to_grad(self.m, self.m.detach() * (-m_gain))
            _noise.advance(self, "noise_step", step)

    def _grad_noise(self) -> tuple:
        """(parameter, std, stream) of each gradient that :meth:`pert_grads` adds noise to."""
        return (
            (self.c, self.c_grad_std, _noise.STREAM_C_GRAD),
            (self.w, self.w_grad_std, _noise.STREAM_W_GRAD),
        )

    # -- parameter noise (opt-in; see wandering.nn.training.perturb_params) ----
    def perturb_params(self, c_std: float = 0.0, w_std: float = 0.0, m_std: float = 0.0) -> None:
        """Adds keyed N(0, std**2) noise to the parameters themselves, in place (call after the step).

        Unlike :meth:`pert_grads`, the step size does not pass through the optimizer, so the
        noise has the same size under Adam as under SGD. Draws are keyed by
        ``(noise_seed, param_noise_step)``; ``param_noise_step`` is its own int64 buffer,
        so gradient noise keeps the same sequence whether or not parameter noise is used. Does not bound: call
        :meth:`bound` afterwards (:func:`wandering.perturb_params` does both for a whole model).

        Args:
            c_std: Std of the noise added to every entry of c, in c's units.
            w_std: Std of the noise added to every entry of w.
            m_std: Std of the noise added to every entry of m (whatever m's shape).

        Raises:
            TypeError: a std that is not a number.
            ValueError: a std that is negative or not finite.
        """
        stds = [
            (self.c, _checks.check_nonneg(c_std, "c_std"), _noise.STREAM_C_PARAM),
            (self.w, _checks.check_nonneg(w_std, "w_std"), _noise.STREAM_W_PARAM),
            (self.m, _checks.check_nonneg(m_std, "m_std"), _noise.STREAM_M_PARAM),
        ]
        self._add_param_noise(stds)

    def _add_param_noise(self, stds: list) -> None:
        """Adds keyed noise (parameter, std, stream) to each parameter, then advances the counter."""
        seed, step = _noise.host_value(self, "noise_seed"), _noise.host_value(self, "param_noise_step")
        with torch.no_grad():
            for param, std, stream in stds:
                if std > 0 and param.requires_grad:
                    noise = _noise.keyed_normal(param.shape, seed, step, stream, param.dtype, param.device)
                    param.add_(noise, alpha=std)
            _noise.advance(self, "param_noise_step", step)

    def __getstate__(self) -> dict:
        # The noise key's host mirror is a cache: not pickled, not deep-copied (rebuilt on use).
        return _noise.drop_mirror(super().__getstate__())

    def extra_repr(self) -> str:
        def fmt_bounds(b: torch.Tensor | None) -> str:
            if b is None:
                return "None"
            lower, upper = b.unbind(self._bounds_dim)
            return "[" + ", ".join(f"({lo:.4g}, {hi:.4g})" for lo, hi in zip(lower.tolist(), upper.tolist())) + "]"

        return (
            f"d={self.n_dims}, n_bumps={self.n_bumps}"
            + ("" if self.n_outputs is None else f", n_outputs={self.n_outputs}")
            + f", support_p={self.support_p}, backend={self.backend!r}, "
            f"c_bounds={fmt_bounds(self.c_bounds)}, w_bounds={fmt_bounds(self.w_bounds)}, "
            f"c_grad_std={self.c_grad_std}, w_grad_std={self.w_grad_std}, m_grad_gain={self.m_grad_gain}"
        )


def _add_to_grad(param: torch.nn.Parameter, delta: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = delta.to(param.dtype).clone()
    else:
        param.grad.add_(delta)


def _stacked_params(
    c: Any, w: Any, m: Any, device: Any, dtype: torch.dtype | None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Validate and copy (d, K) centres/widths and (K,) or (K, P) magnitudes for the sums."""
    c_t = _checks.as_float_tensor(c, "c", dtype=dtype, device=device)
    if c_t.dim() != 2:
        raise ValueError(f"c must have shape (d, K), one column per bump, but got {tuple(c_t.shape)}")
    w_t = _checks.as_float_tensor(w, "w", dtype=c_t.dtype, device=c_t.device)
    _checks.check_shape(w_t, tuple(c_t.shape), "w", "(d, K) like c")
    m_t = _checks.as_float_tensor(m, "m", dtype=c_t.dtype, device=c_t.device)
    check_magnitudes(m_t, c_t.shape[1])
    if c_t.shape[0] < 1:
        raise ValueError(f"c must have at least one dimension (row), but got shape {tuple(c_t.shape)}")
    for t, name in ((c_t, "c"), (w_t, "w"), (m_t, "m")):
        _checks.check_finite(t, name)
    _checks.check_widths(w_t, "w")
    return c_t, w_t, m_t


class BumpFcn(_BumpModule):
    """A single Gaussian bump ``y = m * exp(-sum_j ((x_j - c_j) / w_j) ** 2)``.

    The bump is evaluated only inside its support box, where in every dimension
    ``|x_j - c_j| < sqrt(-ln(support_p)) * w_j``; elsewhere it is exactly 0.

    Args:
        c: Initial centre, shape (d,).
        w: Initial widths, shape (d,), nonzero (only w**2 and |w| matter, so a negative
            width is the same bump as its absolute value).
        m: Initial magnitude: a float or a one-element tensor (one output), or shape (P,)
            for P outputs.
        c_bounds: Bounds for c, shape (2, d): row 0 lower, row 1 upper. None: unbounded.
        w_bounds: Bounds for w, shape (2, d). None: unbounded.
        c_grad_std: Std of the noise added to c's gradient by :meth:`pert_grads`.
        w_grad_std: Std of the noise added to w's gradient.
        m_grad_gain: :meth:`pert_grads` subtracts ``m_grad_gain * m`` from m's gradient.
        support_p: Fraction of the peak at which the support box ends, in (0, 1).
        backend: (keyword-only) Engine name (see :func:`wandering.bump_sum`), "auto" by default.
        device: Device of the parameters (default: c's).
        dtype: Floating dtype of the parameters (default: c's if floating, else the default dtype).

    Shape:
        - Input: (n_smps, d), the parameters' dtype and device
        - Output: (n_smps,), or (n_smps, P) for m of shape (P,)

    Raises:
        ValueError: bad shapes, zero widths, non-finite values, bounds with lower > upper or NaN,
            support_p outside (0, 1), negative noise settings, an unknown backend name.
        TypeError: arguments that are not numbers or tensors, a non-floating dtype.

    Example:
        >>> f = BumpFcn(torch.zeros(2), torch.ones(2), 1.0)
        >>> f(torch.zeros(3, 2))
        tensor([1., 1., 1.], grad_fn=...)
    """

    _bounds_dim = 0

    def __init__(
        self,
        c: torch.Tensor,
        w: torch.Tensor,
        m: float,
        c_bounds: torch.Tensor | None = None,
        w_bounds: torch.Tensor | None = None,
        c_grad_std: float = 0.0,
        w_grad_std: float = 0.0,
        m_grad_gain: float = 0.0,
        support_p: float = 0.01,
        *,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        c_t = _checks.as_float_tensor(c, "c", dtype=dtype, device=device)
        if c_t.dim() != 1 or c_t.shape[0] < 1:
            raise ValueError(f"c must have shape (d,), but got {tuple(c_t.shape)}")
        w_t = _checks.as_float_tensor(w, "w", dtype=c_t.dtype, device=c_t.device)
        _checks.check_shape(w_t, tuple(c_t.shape), "w", "(d,) like c")
        m_t = _checks.as_float_tensor(m, "m", dtype=c_t.dtype, device=c_t.device)
        if m_t.dim() > 1:
            raise ValueError(f"m must be a number or a 1-D tensor of P magnitudes, but got shape {tuple(m_t.shape)}")
        # A number (or one-element tensor) is the seed's single output; P > 1 entries give P outputs.
        self._n_outputs = int(m_t.numel()) if m_t.numel() > 1 else None
        m_t = m_t.reshape(-1)
        if m_t.numel() == 0:
            raise ValueError("m must hold at least one magnitude, but got an empty tensor")
        for t, name in ((c_t, "c"), (w_t, "w"), (m_t, "m")):
            _checks.check_finite(t, name)
        _checks.check_widths(w_t, "w")
        support_p_checked = _checks.check_support_p(support_p)
        self.backend = backend
        self._init_common(c_t, w_t, m_t, c_bounds, w_bounds, c_grad_std, w_grad_std, m_grad_gain, support_p_checked)

    def forward(self, x: torch.Tensor, small_output: bool = False):
        """Computes output from input.

        Args:
            x: Input of shape (n_smps, d).
            small_output: If False, return y of shape (n_smps,). If True, return a tuple
                ``(indices, values)``: the indices (int64, shape (n_in,)) of the points inside the
                support box and the bump's values there (shape (n_in,)).

        Returns:
            y of shape (n_smps,) ((n_smps, P) for P outputs) in the parameters' dtype, or
            ``(indices, values)`` with ``small_output=True``.

        Raises:
            TypeError: x is not a tensor.
            ValueError: x is not (n_smps, d), has another dtype or device than the module, or
                holds NaN or +-inf.
        """
        x = _checks.check_input(x, self.n_dims, self.c.dtype, self.c.device)
        m = self.m if self._n_outputs is None else self.m[None, :]  # (1,) or (1, P)
        y = evaluate_checked(x, self.c[:, None], self.w[:, None], m, self.support_p, self.backend)
        if small_output:
            half = support_halfwidths(self.w[:, None], self.support_p)
            idx = support_mask(x, self.c[:, None], half)[:, 0].nonzero().squeeze(1)
            return idx, y[idx]
        return y


class _SumModule(_BumpModule):
    """Shared constructor/forward of the two sums: c, w of shape (d, K), m of shape (K,)."""

    _bounds_dim = 1

    def _init_sum(
        self,
        c,
        w,
        m,
        c_bounds,
        w_bounds,
        c_grad_std,
        w_grad_std,
        m_grad_gain,
        support_p_checked,
        backend,
        device,
        dtype,
    ) -> None:
        c_t, w_t, m_t = _stacked_params(c, w, m, device, dtype)
        self._n_outputs = None if m_t.dim() == 1 else int(m_t.shape[1])
        self._init_common(c_t, w_t, m_t, c_bounds, w_bounds, c_grad_std, w_grad_std, m_grad_gain, support_p_checked)
        self.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Computes output from input.

        Args:
            x: Input of shape (n_smps, d), in the parameters' dtype and on their device.

        Returns:
            y of shape (n_smps,), or (n_smps, P) for m of shape (K, P), in the parameters' dtype.

        Raises:
            TypeError: x is not a tensor.
            ValueError: x is not (n_smps, d), has another dtype or device than the module, or
                holds NaN or +-inf.
        """
        x = _checks.check_input(x, self.n_dims, self.c.dtype, self.c.device)
        # Parameters were validated at construction and x just now: skip the functional API's checks.
        return evaluate_checked(x, self.c, self.w, self.m, self.support_p, self.backend)


class SumOfBumpFcns(_SumModule):
    """A sum of K Gaussian bumps with learnable centres, widths and magnitudes.

    Exact by default: every bump counts at every point. Pass the keyword-only
    ``support_p`` to skip (point, bump) pairs outside each bump's support box.
    As in the seed, :meth:`pert_grads` does nothing unless the keyword-only
    noise settings are given.

    Args:
        c: Initial centres, shape (d, K); each column is one bump's centre.
        w: Initial widths, shape (d, K), nonzero (only w**2 and |w| matter).
        m: Initial magnitudes, shape (K,), or (K, P) for P outputs that share the bumps.
        c_bounds: Bounds for c, shape (d, 2): column 0 lower, column 1 upper, shared by all bumps.
            None: unbounded.
        w_bounds: Bounds for w, shape (d, 2). None: unbounded.
        c_grad_std: (keyword-only) Std of the noise added to c's gradient. Default 0.
        w_grad_std: (keyword-only) Std of the noise added to w's gradient. Default 0.
        m_grad_gain: (keyword-only) Gain subtracted as ``m_grad_gain * m`` from m's gradient. Default 0.
        support_p: (keyword-only) None (exact, the default) or the support cut-off in (0, 1).
        backend: (keyword-only) Engine name, "auto" by default.
        device, dtype: Factory kwargs as in ``torch.nn.Linear``.

    Shape:
        - Input: (n_smps, d), the parameters' dtype and device
        - Output: (n_smps,), or (n_smps, P) for m of shape (K, P)

    Raises:
        ValueError: bad shapes, zero widths, non-finite values, bounds with lower > upper or NaN,
            support_p outside (0, 1), negative noise settings, an unknown backend name.
        TypeError: arguments that are not numbers or tensors, a non-floating dtype.

    Example:
        >>> f = SumOfBumpFcns(torch.rand(2, 8), torch.full((2, 8), 0.3), torch.ones(8), None, None)
        >>> f(torch.rand(5, 2)).shape
        torch.Size([5])
    """

    def __init__(
        self,
        c: torch.Tensor,
        w: torch.Tensor,
        m: torch.Tensor,
        c_bounds: torch.Tensor,
        w_bounds: torch.Tensor,
        *,
        c_grad_std: float = 0.0,
        w_grad_std: float = 0.0,
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


class SlowSumOfBumpFcns(_SumModule):
    """A sum of K Gaussian bumps, each evaluated only inside its support box.

    Computes the same function as K :class:`BumpFcn` modules added together, with
    bounds and gradient noise. The name is the seed's; the evaluation is not slow:
    parameters are stacked as (d, K) tensors and summed by the culled engine.

    Args:
        c: Initial centres, shape (d, K); each column is one bump's centre.
        w: Initial widths, shape (d, K), nonzero (only w**2 and |w| matter).
        m: Initial magnitudes, shape (K,), or (K, P) for P outputs that share the bumps.
        c_bounds: Bounds for c, shape (d, 2): column 0 lower, column 1 upper. None: unbounded.
        w_bounds: Bounds for w, shape (d, 2). None: unbounded.
        c_grad_std: Std of the noise added to c's gradient by :meth:`pert_grads`.
        w_grad_std: Std of the noise added to w's gradient.
        m_grad_gain: :meth:`pert_grads` subtracts ``m_grad_gain * m`` from m's gradient.
        support_p: Fraction of the peak at which each support box ends, in (0, 1).
        backend: (keyword-only) Engine name, "auto" by default.
        device, dtype: Factory kwargs as in ``torch.nn.Linear``.

    Shape:
        - Input: (n_smps, d), the parameters' dtype and device
        - Output: (n_smps,), or (n_smps, P) for m of shape (K, P)

    Raises:
        ValueError: bad shapes, zero widths, non-finite values, bounds with lower > upper or NaN,
            support_p outside (0, 1), negative noise settings, an unknown backend name.
        TypeError: arguments that are not numbers or tensors, a non-floating dtype.

    Example:
        >>> f = SlowSumOfBumpFcns(torch.rand(2, 8), torch.full((2, 8), 0.3), torch.ones(8, 3),
        ...                       torch.tensor([[0.0, 1.0]] * 2), torch.tensor([[0.02, 0.5]] * 2))
        >>> f(torch.rand(5, 2)).shape
        torch.Size([5, 3])
    """

    def __init__(
        self,
        c: torch.Tensor,
        w: torch.Tensor,
        m: torch.Tensor,
        c_bounds: torch.Tensor,
        w_bounds: torch.Tensor,
        c_grad_std: float = 0.0,
        w_grad_std: float = 0.0,
        m_grad_gain: float = 0.0,
        support_p: float = 0.01,
        *,
        backend: str = "auto",
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ) -> None:
        super().__init__()
        support_p_checked = _checks.check_support_p(support_p)
        self._init_sum(
            c, w, m, c_bounds, w_bounds, c_grad_std, w_grad_std, m_grad_gain, support_p_checked, backend, device, dtype
        )
