"""Evaluation engines for bump sums.

Data flows one way: modules -> :func:`bump_sum` (checks, engine choice) -> the
``wandering::bump_sum`` op (``_op``: autograd, torch.compile) -> an engine from
the registry (``_registry``, where the engine contract is written down).

Engines: ``"reference"`` (one dense broadcast; tiny problems), ``"torch"``
(chunked pure PyTorch; any device), ``"numba"`` (compiled CPU kernels; fused
dense sum or grid-culled sum), ``"triton"`` (fused CUDA kernels, tile-culled;
optional, needs the ``triton`` package; also CPU tensors under Triton's
interpreter, ``TRITON_INTERPRET=1``, for tests). ``"auto"`` picks the reference for tiny problems,
else the available engine of highest priority that supports the device and
dtype. The environment variable ``WANDERING_BACKEND`` replaces ``"auto"`` by a
named engine; an explicit ``backend=`` wins over it.
"""

from __future__ import annotations

import os

import torch

from wandering._engine import _op
from wandering._engine._checks import check_support_p
from wandering._engine._geometry import cutoffs, ellipsoid_halfwidths, support_halfwidths
from wandering._engine._registry import AUTO, BACKENDS, ENGINES, ENV_VAR, SMALL_WORK, Engine
from wandering._engine._rotation import n_angles, precision_transforms, rotations

__all__ = [
    "bump_sum", "oriented_bump_sum", "resolve_backend", "check_backend", "BACKENDS", "ENGINES", "ENV_VAR",
    "SMALL_WORK", "Engine",
]  # fmt: skip


_BY_PRIORITY = sorted(ENGINES.values(), key=lambda e: -e.priority)
# "auto"'s pick per (device type, dtype, oriented) above SMALL_WORK: a function of those alone,
# as the engines' availability and devices are fixed at import.
_AUTO_PICKS: dict[tuple, str] = {}


def check_backend(backend: object, name: str = "backend") -> str:
    if not isinstance(backend, str):
        raise TypeError(f"{name} must be a str, but got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"{name} must be one of {list(BACKENDS)}, but got {backend!r}")
    return backend


def check_magnitudes(m: torch.Tensor, K: int, name: str = "m") -> None:
    if m.dim() not in (1, 2) or m.shape[0] != K:
        raise ValueError(
            f"{name} must have shape (K,) or (K, P) with K = {K} (one row per bump), but got {tuple(m.shape)}"
        )


def _check_args(x, c, w, m, support_p) -> None:
    for name, t in (("x", x), ("c", c), ("w", w), ("m", m)):
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, but got {type(t).__name__}")
        if not t.is_floating_point():
            raise TypeError(f"{name} must have a floating dtype, but got {t.dtype}")
    if c.dim() != 2:
        raise ValueError(f"c must have shape (d, K), but got {tuple(c.shape)}")
    d, K = c.shape
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"x must have shape (n_smps, {d}), but got {tuple(x.shape)}")
    if tuple(w.shape) != (d, K):
        raise ValueError(f"w must have shape ({d}, {K}) like c, but got {tuple(w.shape)}")
    check_magnitudes(m, K)
    for name, t in (("x", x), ("w", w), ("m", m)):
        if t.dtype != c.dtype:
            raise TypeError(f"{name} must have dtype {c.dtype} like c, but got {t.dtype}")
        if t.device != c.device:
            raise ValueError(f"{name} must be on device {c.device} like c, but got {t.device}")
    check_support_p(support_p, allow_none=True)


def resolve_backend(backend: str, x: torch.Tensor, K: int, oriented: bool = False) -> str:
    """The engine :func:`bump_sum` (``oriented``: :func:`oriented_bump_sum`) runs for this
    backend name and problem."""
    check_backend(backend)
    if backend == AUTO:
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            backend = check_backend(env, f"environment variable {ENV_VAR}")
    if backend != AUTO:
        engine = ENGINES[backend]
        if not engine.available:
            raise RuntimeError(f"backend {backend!r} is unavailable here: {engine.unavailable}")
        if oriented and not engine.orients:
            runs = [e.name for e in ENGINES.values() if e.orients]
            raise ValueError(f"backend {backend!r} does not run oriented bumps; the engines that do: {runs}")
        if not engine.supports(x.device, x.dtype):
            raise ValueError(
                f"backend {backend!r} needs {'/'.join(sorted(str(t).removeprefix('torch.') for t in engine.dtypes))} "
                f"tensors on {'/'.join(sorted(engine.devices))}, but got {x.dtype} on {x.device}"
            )
        return backend
    if x.shape[0] * x.shape[1] * (x.shape[1] if oriented else 1) * K <= SMALL_WORK:
        return "reference"
    key = (x.device.type, x.dtype, oriented)
    pick = _AUTO_PICKS.get(key)
    if pick is not None:
        return pick
    for engine in _BY_PRIORITY:
        if engine.auto_supports(x.device, x.dtype, oriented):
            _AUTO_PICKS[key] = engine.name
            return engine.name
    raise ValueError(f"no engine runs {'oriented bumps of ' if oriented else ''}{x.dtype} tensors on {x.device}")


def bump_sum(
    x: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    m: torch.Tensor,
    support_p: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Sum of Gaussian bumps; see :func:`wandering.bump_sum_reference` for the maths.

    Differentiable in x, c, w and m, to any order (second derivatives are exact on
    every engine), and traceable by ``torch.compile(fullgraph=True)``.

    Args:
        x: Points, shape (n_smps, d), finite.
        c: Centres, shape (d, K).
        w: Widths, shape (d, K); only w**2 and |w| matter, and a bump with a zero width is 0.
        m: Magnitudes, shape (K,), or (K, P) for P functions sharing the bumps' geometry.
        support_p: None for the exact sum, else the support cut-off in (0, 1).
        backend: One of ``BACKENDS``.

    Returns:
        y of shape (n_smps,) for m of shape (K,), else (n_smps, P).

    Raises:
        TypeError, ValueError: bad arguments, an unknown backend name, or non-finite values.

    Example:
        >>> y = bump_sum(torch.rand(100, 2), torch.rand(2, 8), torch.full((2, 8), 0.3), torch.ones(8, 3))
        >>> y.shape
        torch.Size([100, 3])
    """
    check_backend(backend)
    _check_args(x, c, w, m, support_p)
    return evaluate_checked(x, c, w, m, support_p, backend)


def evaluate_checked(x, c, w, m, support_p, backend: str) -> torch.Tensor:
    """:func:`bump_sum` without the argument checks, for callers that validated already (the modules)."""
    engine = resolve_backend(backend, x, c.shape[1])
    half = support_halfwidths(w, support_p)
    single = m.dim() == 1
    # unsqueeze/squeeze rather than m[:, None]/y[:, 0]: the same views, and their backwards
    # are views too (a select's backward fills and copies a fresh (n, 1) tensor).
    y = _op.bump_sum(x, c, w, m.unsqueeze(1) if single else m, half, engine, support_p is not None)
    return y.squeeze(1) if single else y


def check_angles(angles: torch.Tensor, d: int, K: int, name: str = "angles") -> None:
    expected = (n_angles(d), K)
    if tuple(angles.shape) != expected:
        raise ValueError(
            f"{name} must have shape (d(d-1)/2, K) = {expected} (one column of rotation angles per bump), "
            f"but got {tuple(angles.shape)}"
        )


def oriented_bump_sum(
    x: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    m: torch.Tensor,
    angles: torch.Tensor | None = None,
    support_p: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Sum of oriented (full-covariance) Gaussian bumps.

    ``y[i, p] = sum_k m[k, p] * exp(-|z_ik|^2)`` with ``z_ik = diag(1/w_k) R_k^T (x_i - c_k)``:
    bump k has principal axes the columns of the rotation R_k (built from ``angles[:, k]``,
    see ``wandering._engine._rotation``) and scales ``w[:, k]`` along them. With all angles 0 it is
    the axis-aligned bump of :func:`bump_sum`. With ``support_p`` set, a bump counts only
    inside the ellipsoid where it exceeds ``support_p`` of its peak (``|z|^2 < -ln(support_p)``);
    in one dimension that is exactly :func:`bump_sum`'s box, and the call is :func:`bump_sum`'s.

    Differentiable in x, c, w, m and angles, to any order, and traceable by
    ``torch.compile(fullgraph=True)``.

    Args:
        x: Points, shape (n_smps, d), finite.
        c: Centres, shape (d, K).
        w: Scales along each bump's principal axes, shape (d, K); only w**2 matters, and a bump
            with a zero scale is 0.
        m: Magnitudes, shape (K,), or (K, P) for P functions sharing the bumps' geometry.
        angles: Rotation angles, shape (d(d-1)/2, K); None for none (axis-aligned ellipsoids).
        support_p: None for the exact sum, else the support cut-off in (0, 1).
        backend: One of ``BACKENDS``.

    Returns:
        y of shape (n_smps,) for m of shape (K,), else (n_smps, P).

    Raises:
        TypeError, ValueError: bad arguments, an unknown backend name, or non-finite values.

    Example:
        >>> x, c = torch.rand(100, 2), torch.rand(2, 8)
        >>> w, angles = torch.tensor([[0.3], [0.05]]).expand(2, 8), torch.rand(1, 8) * 3.14
        >>> oriented_bump_sum(x, c, w, torch.ones(8), angles, support_p=0.01).shape
        torch.Size([100])
    """
    check_backend(backend)
    _check_args(x, c, w, m, support_p)
    d, K = c.shape
    if angles is None:
        angles = c.new_zeros((n_angles(d), K))
    if not isinstance(angles, torch.Tensor):
        raise TypeError(f"angles must be a torch.Tensor or None, but got {type(angles).__name__}")
    check_angles(angles, d, K)
    if angles.dtype != c.dtype:
        raise TypeError(f"angles must have dtype {c.dtype} like c, but got {angles.dtype}")
    if angles.device != c.device:
        raise ValueError(f"angles must be on device {c.device} like c, but got {angles.device}")
    return evaluate_oriented_checked(x, c, w, m, angles, support_p, backend)


def evaluate_oriented_checked(x, c, w, m, angles, support_p, backend: str) -> torch.Tensor:
    """:func:`oriented_bump_sum` without the argument checks (the modules validated already)."""
    d, K = c.shape
    if d == 1:  # no rotation in 1-D: the ellipsoid is the box, so the axis-aligned op is exact
        return evaluate_checked(x, c, w, m, support_p, backend)
    if not torch.compiler.is_compiling():  # compiled: the op checks U (data-dependent Python breaks graphs)
        _op.check_finite_where_checkable(("w", "angles"), (w, angles))  # U would hide which one it was
    engine = resolve_backend(backend, x, K, oriented=True)
    R = rotations(angles, d)
    U = precision_transforms(R, w)
    r2 = cutoffs(w, support_p)
    half = ellipsoid_halfwidths(R, w, r2)
    single = m.dim() == 1
    y = _op.oriented_bump_sum(x, c, U, m.unsqueeze(1) if single else m, r2, half, engine, support_p is not None)
    return y.squeeze(1) if single else y
