"""Input checkers: one per public entry point, raising ValueError/TypeError with
the argument's name, what was expected and what was received."""

from __future__ import annotations

import math
from typing import Any

import torch


def _shape(t: torch.Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def as_float_tensor(
    value: Any,
    name: str,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """A detached copy of ``value`` as a floating tensor (the caller's tensor is never aliased)."""
    if isinstance(value, torch.Tensor):
        t = value.detach()
    elif isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"{name} must be a tensor or array of numbers, but got {type(value).__name__}")
    else:
        try:
            # Convert straight to the target dtype: a Python float must not round through float32.
            t = torch.as_tensor(value, dtype=dtype)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise TypeError(f"{name} must be a tensor or array of numbers, but got {type(value).__name__}") from exc
    if t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"{name} must hold real numbers, but got dtype {t.dtype}")
    if dtype is None:
        dtype = t.dtype if t.is_floating_point() else torch.get_default_dtype()
    if not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating dtype, but got {dtype}")
    return t.to(device=device if device is not None else t.device, dtype=dtype).clone()


def check_finite(t: torch.Tensor, name: str) -> None:
    if t.numel() and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} must be finite, but got {int((~torch.isfinite(t)).sum())} non-finite entries")


def check_shape(t: torch.Tensor, expected: tuple[int, ...], name: str, layout: str) -> None:
    if _shape(t) != expected:
        raise ValueError(f"{name} must have shape {layout} = {expected}, but got {_shape(t)}")


def check_widths(w: torch.Tensor, name: str = "w") -> None:
    """Initial widths may be negative (only w**2 and |w| matter) but not 0: a bump
    with a zero width is 0 everywhere, which no one asks for on purpose."""
    zeros = int((w == 0).sum())
    if zeros:
        raise ValueError(f"{name} must be nonzero, but got {zeros} zero entr{'y' if zeros == 1 else 'ies'}")


def check_support_p(support_p: Any, name: str = "support_p", allow_none: bool = False) -> float | None:
    if support_p is None and allow_none:
        return None
    if isinstance(support_p, bool) or not isinstance(support_p, (int, float)):
        if isinstance(support_p, torch.Tensor) and support_p.numel() == 1:
            support_p = float(support_p)
        else:
            raise TypeError(f"{name} must be a float in (0, 1), but got {type(support_p).__name__}")
    support_p = float(support_p)
    if not (0.0 < support_p < 1.0):
        raise ValueError(f"{name} must be in (0, 1), but got {support_p}")
    return support_p


def check_nonneg(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        if isinstance(value, torch.Tensor) and value.numel() == 1:
            value = float(value)
        else:
            raise TypeError(f"{name} must be a non-negative float, but got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be >= 0 and finite, but got {value}")
    return value


def check_bounds(
    bounds: Any,
    name: str,
    d: int,
    bounds_dim: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Validate bounds. ``bounds_dim`` is the axis holding (lower, upper):
    0 for BumpFcn's (2, d) layout, 1 for the sums' (d, 2) layout."""
    if bounds is None:
        return None
    b = as_float_tensor(bounds, name, dtype=dtype, device=device)
    expected = (2, d) if bounds_dim == 0 else (d, 2)
    layout = "(2, d)" if bounds_dim == 0 else "(d, 2)"
    check_shape(b, expected, name, layout)
    if bool(torch.isnan(b).any()):
        raise ValueError(f"{name} must not contain NaN")
    lower, upper = b.unbind(bounds_dim)
    bad = lower > upper
    if bool(bad.any()):
        j = int(bad.nonzero()[0, 0])
        raise ValueError(
            f"{name} must have lower <= upper, but got lower={float(lower[j])} > upper={float(upper[j])} "
            f"in dimension {j}"
        )
    return b


def check_input(x: Any, d: int, dtype: torch.dtype, device: torch.device, name: str = "x") -> torch.Tensor:
    """Check a forward input against a module with ``d`` dims and parameters of ``dtype`` on ``device``."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, but got {type(x).__name__}")
    if x.dim() != 2 or x.shape[1] != d:
        raise ValueError(f"{name} must have shape (n_smps, {d}), but got {_shape(x)}")
    if x.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype} (the module's), but got {x.dtype}")
    if x.device != device:
        raise ValueError(f"{name} must be on device {device} (the module's), but got {x.device}")
    return x
