"""Evaluation engines for bump sums.

``bump_sum`` is the one entry point the modules call. Engines:

- ``"reference"``: the dense broadcast oracle (plain autograd, O(n*d*K) memory).
- ``"torch"``: pure-PyTorch, chunked over points, recomputing in backward (any device).
- ``"numba"``: compiled multi-threaded CPU kernels; fused dense sum, or grid culling
  when ``support_p`` is given.
- ``"auto"``: reference for tiny problems, numba on CPU, torch elsewhere. The
  environment variable ``WANDERING_BACKEND`` replaces ``"auto"`` by a named engine.
"""

from __future__ import annotations

import os
import warnings

import torch

from .._checks import check_support_p
from .._reference import bump_sum_reference, support_halfwidths
from ._torch_engine import bump_sum_torch

BACKENDS = ("auto", "reference", "torch", "numba")
ENV_VAR = "WANDERING_BACKEND"
# Below this many n*d*K the plain broadcast beats the engines' ~0.25 ms fixed cost (measured:
# equal near 4e3-8e3 on 2 cores, fwd+bwd, d=3).
SMALL_WORK = 1 << 13

try:
    from . import _numba_engine
except Exception as exc:  # noqa: BLE001 -- any import/compile failure means "no numba"
    _numba_engine = None
    _NUMBA_ERROR: Exception | None = exc
else:
    _NUMBA_ERROR = None
_warned_no_numba = False


def _check_backend(backend: object, name: str = "backend") -> str:
    if not isinstance(backend, str):
        raise TypeError(f"{name} must be a str, but got {type(backend).__name__}")
    if backend not in BACKENDS:
        raise ValueError(f"{name} must be one of {list(BACKENDS)}, but got {backend!r}")
    return backend


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
    if tuple(m.shape) != (K,):
        raise ValueError(f"m must have shape ({K},), but got {tuple(m.shape)}")
    for name, t in (("x", x), ("w", w), ("m", m)):
        if t.dtype != c.dtype:
            raise TypeError(f"{name} must have dtype {c.dtype} like c, but got {t.dtype}")
        if t.device != c.device:
            raise ValueError(f"{name} must be on device {c.device} like c, but got {t.device}")
    check_support_p(support_p, allow_none=True)


def resolve_backend(backend: str, x: torch.Tensor, K: int) -> str:
    """The engine ``bump_sum`` will run for this backend name and problem."""
    global _warned_no_numba
    _check_backend(backend)
    if backend == "auto":
        env = os.environ.get(ENV_VAR, "").strip()
        if env:
            backend = _check_backend(env, f"environment variable {ENV_VAR}")
    if backend == "numba":
        if _numba_engine is None:
            raise RuntimeError(f"backend 'numba' is unavailable: numba failed to import ({_NUMBA_ERROR!r})")
        if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
            raise ValueError(f"backend 'numba' needs float32/float64 CPU tensors, but got {x.dtype} on {x.device}")
        return "numba"
    if backend != "auto":
        return backend
    if x.device.type != "cpu" or x.dtype not in (torch.float32, torch.float64):
        return "torch"
    if x.shape[0] * x.shape[1] * K <= SMALL_WORK:
        return "reference"
    if _numba_engine is None:
        if not _warned_no_numba:
            warnings.warn(
                f"numba is unavailable ({_NUMBA_ERROR!r}); bump sums fall back to the slower torch engine",
                RuntimeWarning,
                stacklevel=3,
            )
            _warned_no_numba = True
        return "torch"
    return "numba"


def bump_sum(
    x: torch.Tensor,
    c: torch.Tensor,
    w: torch.Tensor,
    m: torch.Tensor,
    support_p: float | None = None,
    backend: str = "auto",
) -> torch.Tensor:
    """Sum of Gaussian bumps; see :func:`wandering._reference.bump_sum_reference` for the maths.

    Args:
        x: Points, shape (n_smps, d).
        c: Centres, shape (d, K).
        w: Widths, shape (d, K).
        m: Magnitudes, shape (K,).
        support_p: None for the exact sum, else the support cut-off in (0, 1).
        backend: One of ``BACKENDS``.

    Returns:
        y of shape (n_smps,).

    Raises:
        TypeError, ValueError: bad arguments or an unknown backend name.
    """
    _check_backend(backend)
    _check_args(x, c, w, m, support_p)
    return evaluate_checked(x, c, w, m, support_p, backend)


def evaluate_checked(x, c, w, m, support_p, backend: str) -> torch.Tensor:
    """``bump_sum`` without the argument checks, for callers that validated already (the modules)."""
    engine = resolve_backend(backend, x, c.shape[1])
    if engine == "reference":
        return bump_sum_reference(x, c, w, m, support_p)
    half = None if support_p is None else support_halfwidths(w, float(support_p))
    if engine == "torch":
        return bump_sum_torch(x, c, w, m, half)
    return _numba_engine.bump_sum_numba(x, c, w, m, half)
