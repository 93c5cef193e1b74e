"""Bump sums as ``torch.library`` custom ops, so autograd and ``torch.compile`` understand them.

``wandering::bump_sum(x, c, w, m, half, engine, cull) -> y`` runs an engine's
forward; ``wandering::bump_sum_backward`` runs its first-order backward. Both
have fake (meta) implementations, so ``torch.compile(fullgraph=True)`` traces
through them without a graph break, and ``torch.library.opcheck`` tests them.
In plain eager mode :func:`bump_sum` runs the same functions through an
``autograd.Function`` twin, which skips the dispatcher's Python overhead.

Second derivatives. An engine's backward kernel is not itself differentiable.
When autograd asks for a differentiable backward (``create_graph=True``: a
Hessian-vector product, a gradient penalty), the registered backward instead
builds the gradients from the differentiable pair formula below, with plain
torch ops over the pairs that count. It is exact to any order and agrees with the
engines on which pairs count, at a memory cost of O(pairs x (d + P)): the
in-support pairs for a culled sum, all n_smps x K pairs for an exact one.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils import _python_dispatch

from . import _kernels
from ._registry import ENGINES
from ._torch_engine import chunk_rows


_CPU_FLOATS = (torch.float32, torch.float64)
_FINITE_NAMES = ("x", "c", "w", "m")


def _check_finite(x: Tensor, c: Tensor, w: Tensor, m: Tensor) -> None:
    ts = (x, c, w, m)
    if all(t.is_cpu and t.dtype in _CPU_FLOATS for t in ts):
        # One compiled pass over all four (small torch ops cost ~10 us each here).
        if _kernels.all_finite(x.detach().numpy(), c.detach().numpy(), w.detach().numpy(), m.detach().numpy()):
            return
    for name, t in zip(_FINITE_NAMES, ts):
        # One reduction, no (n, d) mask: any NaN or inf makes the sum NaN or inf. Only a
        # non-finite sum (possibly an overflow of finite values) pays for the exact test.
        if t.numel() == 0 or bool(torch.isfinite(t.sum())):
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise ValueError(
                f"{name} must be finite, but got {bad} non-finite entr{'y' if bad == 1 else 'ies'} (NaN or +-inf); "
                f"drop or impute those {'points' if name == 'x' else 'entries'} first"
            )


def _forward_impl(x: Tensor, c: Tensor, w: Tensor, m: Tensor, half: Tensor, engine: str, cull: bool) -> Tensor:
    _check_finite(x, c, w, m)
    return ENGINES[engine].forward(x.detach(), c.detach(), w.detach(), m.detach(), half.detach(), cull)


def _backward_impl(gy, x, c, w, m, half, engine: str, cull: bool, need_x: bool):
    gx, gc, gw, gm = ENGINES[engine].backward(
        gy.detach(), x.detach(), c.detach(), w.detach(), m.detach(), half.detach(), cull, need_x
    )
    if gx is None:
        gx = x.new_empty((0, x.shape[1]))
    # An op's outputs may not alias each other: engines may return views of one buffer.
    return tuple(t.clone() if t._base is not None else t for t in (gx, gc, gw, gm))


@torch.library.custom_op("wandering::bump_sum", mutates_args=())
def bump_sum_op(x: Tensor, c: Tensor, w: Tensor, m: Tensor, half: Tensor, engine: str, cull: bool) -> Tensor:
    """y (n, P) = sum over bumps of m (K, P) times the bump values; see ``_registry`` for the contract."""
    return _forward_impl(x, c, w, m, half, engine, cull)


@bump_sum_op.register_fake
def _(x, c, w, m, half, engine, cull):
    return x.new_empty((x.shape[0], m.shape[1]))


@torch.library.custom_op("wandering::bump_sum_backward", mutates_args=())
def bump_sum_backward_op(
    gy: Tensor, x: Tensor, c: Tensor, w: Tensor, m: Tensor, half: Tensor, engine: str, cull: bool, need_x: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(gx, gc, gw, gm) of ``sum(gy * y)``; gx has 0 rows when ``need_x`` is False."""
    return _backward_impl(gy, x, c, w, m, half, engine, cull, need_x)


@bump_sum_backward_op.register_fake
def _(gy, x, c, w, m, half, engine, cull, need_x):
    gx = x.new_empty(x.shape if need_x else (0, x.shape[1]))
    return gx, c.new_empty(c.shape), w.new_empty(w.shape), m.new_empty(m.shape)


def _setup_context(ctx, inputs, output):
    x, c, w, m, half, engine, cull = inputs
    ctx.save_for_backward(x, c, w, m, half)
    ctx.engine, ctx.cull = engine, cull


def _backward(ctx, gy, first_order=bump_sum_backward_op):
    x, c, w, m, half = ctx.saved_tensors
    need = ctx.needs_input_grad[:4]
    if torch.is_grad_enabled():
        # create_graph=True: gradients that are themselves differentiable.
        grads = pair_formula_grads(gy, x, c, w, m, half)
    else:
        gx, gc, gw, gm = first_order(gy, x, c, w, m, half, ctx.engine, ctx.cull, need[0])
        grads = (gx if need[0] else None, gc, gw, gm)
    grads = tuple(g if n else None for g, n in zip(grads, need))
    return (*grads, None, None, None)


torch.library.register_autograd("wandering::bump_sum", _backward, setup_context=_setup_context)


class _EagerBumpSum(torch.autograd.Function):
    """The op's eager twin: the same forward, context and backward (second order included),
    without the custom-op dispatcher's Python cost (measured ~0.18 ms a forward+backward
    on a loaded machine) and its first-call import of torch._dynamo (~125 MB)."""

    # forward(ctx, ...) rather than a setup_context: with one, every apply binds the
    # arguments through inspect.signature (~60 us). Only functorch transforms need
    # setup_context, and they take the registered op (see _plain_eager).
    @staticmethod
    def forward(ctx, x, c, w, m, half, engine, cull):
        y = _forward_impl(x, c, w, m, half, engine, cull)
        _setup_context(ctx, (x, c, w, m, half, engine, cull), y)
        return y

    @staticmethod
    def backward(ctx, gy):
        return _backward(ctx, gy, first_order=_backward_impl)


_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def _plain_eager(*tensors: Tensor) -> bool:
    """Plain tensors in plain eager mode: no compiler, export, functorch transform, tensor
    subclass (fake, meta) or Python mode, which all need to see the registered op."""
    if torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active():
        return False
    if torch._C._is_torch_function_mode_enabled() or _python_dispatch._get_current_dispatch_mode() is not None:
        return False
    for t in tensors:
        if type(t) not in _PLAIN_TYPES or t.is_meta:
            return False
    return True


def bump_sum(x: Tensor, c: Tensor, w: Tensor, m: Tensor, half: Tensor, engine: str, cull: bool) -> Tensor:
    """``wandering::bump_sum`` with autograd: the registered op, or its eager twin where that is the same."""
    if _plain_eager(x, c, w, m, half):
        return _EagerBumpSum.apply(x, c, w, m, half, engine, cull)
    return bump_sum_op(x, c, w, m, half, engine, cull)


def _live_pairs(x: Tensor, c: Tensor, w: Tensor, half: Tensor) -> tuple[Tensor, Tensor]:
    """Indices (i, k) of the pairs that count: inside the box and not underflowed.

    Chunked over points, so the (chunk, d, K) test never holds all pairs at once."""
    from ._torch_engine import inverse_widths

    n, d = x.shape
    K = c.shape[1]
    iw = inverse_widths(w.detach())
    rows, cols = [], []
    step = chunk_rows(d, K)
    with torch.no_grad():
        for i0 in range(0, n, step):
            diff = x.detach()[i0 : i0 + step, :, None] - c.detach()[None]
            live = (diff.abs() < half[None]).all(dim=1)
            z = diff * iw[None]
            live &= torch.exp(-(z * z).sum(dim=1)) > 0
            i, k = live.nonzero(as_tuple=True)
            rows.append(i + i0)
            cols.append(k)
    if not rows:
        empty = torch.zeros(0, dtype=torch.long, device=x.device)
        return empty, empty
    return torch.cat(rows), torch.cat(cols)


def pair_formula_grads(gy: Tensor, x: Tensor, c: Tensor, w: Tensor, m: Tensor, half: Tensor):
    """Gradients of ``sum(gy * y)`` with respect to x, c, w, m, in differentiable torch ops.

    With z = (x_i - c_k) / w_k and e = exp(-|z|^2) on each pair (i, k) that counts:
    gm[k] += gy[i] e;  a = 2 e (gy[i] . m[k]) z / w_k;  gc[k] += a;  gw[k] += a z;  gx[i] -= a.
    """
    i, k = _live_pairs(x, c, w, half)
    cT, wT = c.T, w.T  # (K, d)
    z = (x[i] - cT[k]) / wT[k]  # (pairs, d); every width here is nonzero
    e = torch.exp(-(z * z).sum(dim=1))
    gyi = gy[i].to(x.dtype)  # (pairs, P)
    K, P = m.shape
    gm = m.new_zeros((K, P)).index_add(0, k, gyi * e[:, None])
    a = (2.0 * e * (gyi * m[k]).sum(dim=1))[:, None] * z / wT[k]  # (pairs, d)
    gc = c.new_zeros((K, c.shape[0])).index_add(0, k, a).T
    gw = w.new_zeros((K, w.shape[0])).index_add(0, k, a * z).T
    gx = x.new_zeros(x.shape).index_add(0, i, -a)
    return gx, gc, gw, gm
