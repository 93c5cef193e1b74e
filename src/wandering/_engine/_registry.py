"""The engine registry: one entry per engine, and the contract every engine keeps.

Contract. An engine is a pair of plain functions on detached tensors (the op
layer in ``_op.py`` owns autograd, argument checks and the (K,)/(K, P) layouts):

``forward(x, c, w, m, half, cull) -> y``
    x (n, d), c (d, K), w (d, K), m (K, P), half (d, K), all one dtype and device;
    returns y (n, P) with ``y[i, p] = sum_k m[k, p] * e[i, k]`` where
    ``e[i, k] = exp(-sum_j ((x[i, j] - c[j, k]) / w[j, k]) ** 2)`` for the pairs that
    count and 0 for the others. A pair (i, k) counts iff, in every dimension j,
    ``abs(x[i, j] - c[j, k]) < half[j, k]`` (this float comparison, in x's dtype,
    exactly) and e[i, k] did not underflow. ``half`` comes from
    ``_geometry.support_halfwidths``: +inf for exact sums, 0 where a width is 0
    (such a bump counts nowhere). ``cull`` says that half is finite, so skipping
    pairs far outside the boxes pays; an engine may ignore it.
    Each (point, bump) exp and support test is computed once for all P outputs.

``backward(gy, x, c, w, m, half, cull, need_x) -> (gx, gc, gw, gm)``
    gy (n, P); returns the gradients of ``sum(gy * y)``: gx (n, d) or None when
    ``need_x`` is False, gc (d, K), gw (d, K), gm (K, P), in the inputs' dtype.
    Pairs that do not count contribute exactly 0 (never 0 * inf). Widths may be
    negative (only w**2 and |w| matter).

``oriented_forward(x, c, U, m, r2, half, cull) -> y`` (oriented bumps, optional)
    U (d, d, K) holds each bump's precision transform: ``z = U[:, :, k] @ (x[i] - c[:, k])``
    (``diag(1/w) R^T``, see ``wandering._engine._rotation``), r2 (K,) its cut-off, half (d, K) a
    box around its support; y as above with ``e[i, k] = exp(-s)``, ``s = |z|^2``. A pair
    counts iff ``s < r2[k]`` (the ellipsoid where the bump is above support_p of its
    peak; r2 = +inf for exact sums, 0 for a bump that counts nowhere) and e did not
    underflow. s is rounded arithmetic, so engines may disagree on pairs whose s lies
    within rounding of r2 (each such pair is worth support_p * |m| either way); no
    other pair may differ. ``half`` (from ``_geometry.ellipsoid_halfwidths``) bounds
    every counted pair: ``abs(x - c) <= half`` up to rounding; engines that cull may
    use it (widened by a rounding margin) to skip pairs. None where the engine does
    not run oriented bumps.

``oriented_backward(gy, x, c, U, m, r2, half, cull, need_x) -> (gx, gc, gU, gm)``
    The gradients of ``sum(gy * y)``, gU (d, d, K); the rest as in ``backward``.

Engines never see non-finite inputs: the op refuses them first. Results must not
depend on the thread count (fixed partitions reduced in a fixed order).

Accuracy: every sum over bumps (y, grad x) or over points (grad c, w, m) accumulates in
float64, or in runs of at most 32 terms in the inputs' dtype whose sums are then added
in float64 (``_kernels`` states the rule and holds its helpers), and is rounded to the
inputs' dtype once; tests/test_accuracy.py holds every engine's float32 results to at
most twice the error of plain float32 autograd of the formula.
Second derivatives do not go through engines: ``_op.py`` builds them from the
differentiable pair formula, so an engine only needs first-order kernels.

Registry. ``ENGINES`` maps a name to an :class:`Engine` that says what it runs on.
``"auto"`` picks, among the available engines that support the problem, the one
with the highest priority; tiny problems go to the reference, whose plain
broadcast beats the fixed cost of compiled kernels. Adding an engine is one
entry here plus its own file.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch

AUTO = "auto"
ENV_VAR = "WANDERING_BACKEND"
# Below this many n*d*K the plain broadcast beats the engines' ~0.25 ms fixed cost (measured:
# equal near 4e3-8e3 on 2 cores, fwd+bwd, d=3).
SMALL_WORK = 1 << 13


@dataclass(frozen=True)
class Engine:
    """One engine: what it runs on and its two functions.

    Attributes:
        name: The backend name users pass.
        devices: Device types it runs on.
        dtypes: Dtypes it runs.
        culls: Whether it skips pairs outside support boxes (else it tests every pair).
        priority: Higher wins under ``"auto"``.
        forward, backward: The contract's functions (None when unavailable).
        oriented_forward, oriented_backward: The contract's oriented functions (None when
            the engine does not run oriented bumps, or is unavailable).
        unavailable: Why the engine cannot run here, or None when it can.
        auto_devices: Device types where ``"auto"`` may pick it (None: all of ``devices``).
    """

    name: str
    devices: frozenset
    dtypes: frozenset
    culls: bool
    priority: int
    forward: Callable | None
    backward: Callable | None
    unavailable: str | None = None
    auto_devices: frozenset | None = None
    oriented_forward: Callable | None = None
    oriented_backward: Callable | None = None

    @property
    def available(self) -> bool:
        return self.unavailable is None

    @property
    def orients(self) -> bool:
        """Whether it runs oriented (full-covariance) bumps."""
        return self.oriented_forward is not None

    def supports(self, device: torch.device, dtype: torch.dtype, oriented: bool = False) -> bool:
        return device.type in self.devices and dtype in self.dtypes and (self.orients or not oriented)

    def auto_supports(self, device: torch.device, dtype: torch.dtype, oriented: bool = False) -> bool:
        """Whether ``"auto"`` may pick this engine for the device, dtype and kind of bump."""
        auto = self.devices if self.auto_devices is None else self.auto_devices
        return self.available and device.type in auto and dtype in self.dtypes and (self.orients or not oriented)


def _engine(name, module, devices, dtypes, culls, priority) -> Engine:
    """A required engine: imported now, and a failure to import fails loudly."""
    try:
        mod = importlib.import_module(module, __package__)
    except ImportError as exc:
        raise ImportError(f"wandering's {name!r} engine failed to import: {exc}") from exc
    return Engine(
        name,
        frozenset(devices),
        frozenset(dtypes),
        culls,
        priority,
        mod.forward,
        mod.backward,
        oriented_forward=getattr(mod, "oriented_forward", None),
        oriented_backward=getattr(mod, "oriented_backward", None),
    )


def _optional_engine(
    name, module, requires, devices, dtypes, culls, priority, auto_devices=None, oriented=False
) -> Engine:
    """An optional engine: listed as unavailable, with the reason, when ``requires`` is not
    installed; otherwise imported on first use, so ``import wandering`` does not pay for
    (say) Triton on a machine that never runs it."""
    try:
        found = importlib.util.find_spec(requires) is not None
        reason = f"ModuleNotFoundError: No module named {requires!r} (install the extra that provides it)"
    except (ImportError, ValueError, AttributeError) as exc:
        found, reason = False, repr(exc)
    if not found:
        return Engine(name, frozenset(devices), frozenset(dtypes), culls, priority, None, None, reason)

    def lazy(function: str) -> Callable:
        def call(*args):
            return getattr(importlib.import_module(module, __package__), function)(*args)

        return call

    auto = None if auto_devices is None else frozenset(auto_devices)
    return Engine(
        name, frozenset(devices), frozenset(dtypes), culls, priority, lazy("forward"), lazy("backward"), None, auto,
        lazy("oriented_forward") if oriented else None, lazy("oriented_backward") if oriented else None,
    )  # fmt: skip


def _triton_interpreting() -> bool:
    # Under Triton's interpreter (TRITON_INTERPRET=1 before import) its kernels run CPU tensors.
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


_ANY_DEVICE = ("cpu", "cuda", "mps", "xpu", "meta")
_FLOATS = (torch.float16, torch.bfloat16, torch.float32, torch.float64)

# Numba is a required dependency: the CPU engine the library is built around. Triton is
# optional (the ``gpu`` extra): without it the engine is listed, unavailable, with the reason.
ENGINES: dict[str, Engine] = {
    e.name: e
    for e in (
        _engine("reference", "._reference_engine", _ANY_DEVICE, _FLOATS, culls=False, priority=0),
        _engine("torch", "._torch_engine", _ANY_DEVICE, _FLOATS, culls=False, priority=10),
        _engine("numba", "._numba_engine", ("cpu",), (torch.float32, torch.float64), culls=True, priority=20),
        _optional_engine(
            "triton",
            "._triton_engine",
            "triton",
            ("cuda", "cpu") if _triton_interpreting() else ("cuda",),
            (torch.float32, torch.float64),
            culls=True,
            priority=30,
            auto_devices=("cuda",),
            oriented=True,
        ),
    )
}

BACKENDS = (AUTO, *ENGINES)
