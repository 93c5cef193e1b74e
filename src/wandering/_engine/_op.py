"""Bump sums as ``torch.library`` custom ops, so autograd and ``torch.compile`` understand them.

Two op families, one per kind of bump (see ``_registry`` for the engine contract):

- ``wandering::bump_sum(x, c, w, m, half, engine, cull) -> y``, axis-aligned bumps;
- ``wandering::oriented_bump_sum(x, c, U, m, r2, half, engine, cull) -> y``, oriented
  (full-covariance) bumps, U (d, d, K) their precision transforms.

Each runs an engine's forward, and its ``*_backward`` op the engine's first-order
backward. All have fake (meta) implementations, so ``torch.compile(fullgraph=True)``
traces through them without a graph break, and ``torch.library.opcheck`` tests them.
In plain eager mode :func:`bump_sum` and :func:`oriented_bump_sum` run the same
functions through ``autograd.Function`` twins, which skip the dispatcher's Python
overhead.

Second derivatives. An engine's backward kernel is not itself differentiable.
When autograd asks for a differentiable backward (``create_graph=True``: a
Hessian-vector product, a gradient penalty), the registered backward instead
builds the gradients from the differentiable pair formulas below, with plain
torch ops over the pairs that count. They are exact to any order and agree with the
engines on which pairs count, at a memory cost of O(pairs x (d + P)) (O(pairs x d^2)
oriented): the in-support pairs for a culled sum, all n_smps x K pairs for an exact one.

Functorch transforms (``torch.func.grad``, ``vmap``, ``jacrev``, ``jacfwd``,
``hessian``). torch 2.13's custom ops with a registered autograd formula refuse them
(pytorch/pytorch#170834), and forward-mode AD has no registration at all; so under
a transform the sums are written in plain differentiable torch ops (:func:`plain_sum`,
the engines' pair rule, chunked over points), which every transform understands, to
any order and nesting. The engines do not run there.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.utils import _python_dispatch

from wandering._engine import _kernels
from wandering._engine._registry import ENGINES
from wandering._engine._torch_engine import chunk_rows

_CPU_FLOATS = (torch.float32, torch.float64)


def _check_finite(names: tuple[str, ...], ts: tuple[Tensor, ...]) -> None:
    if len(ts) == 4 and all(t.is_cpu and t.dtype in _CPU_FLOATS for t in ts):
        # One compiled pass over all four (small torch ops cost ~10 us each here).
        if _kernels.all_finite(*(t.detach().numpy() for t in ts)):
            return
    for name, t in zip(names, ts):
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


def _unaliased(grads: tuple, x: Tensor) -> tuple:
    gx = grads[0]
    if gx is None:
        gx = x.new_empty((0, x.shape[1]))
    # An op's outputs may not alias each other: engines may return views of one buffer.
    return tuple(t.clone() if t._base is not None else t for t in (gx, *grads[1:]))


# ---------------------------------------------------------------- axis-aligned bumps
_AXIS_NAMES = ("x", "c", "w", "m")


def _forward_impl(x: Tensor, c: Tensor, w: Tensor, m: Tensor, half: Tensor, engine: str, cull: bool) -> Tensor:
    _check_finite(_AXIS_NAMES, (x, c, w, m))
    return ENGINES[engine].forward(x.detach(), c.detach(), w.detach(), m.detach(), half.detach(), cull)


def _backward_impl(gy, x, c, w, m, half, engine: str, cull: bool, need_x: bool):
    grads = ENGINES[engine].backward(
        gy.detach(), x.detach(), c.detach(), w.detach(), m.detach(), half.detach(), cull, need_x
    )
    return _unaliased(grads, x)


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
    # arguments through inspect.signature (~60 us). Functorch transforms, which need a
    # setup_context, never reach the twin (see bump_sum).
    @staticmethod
    def forward(ctx, x, c, w, m, half, engine, cull):
        y = _forward_impl(x, c, w, m, half, engine, cull)
        _setup_context(ctx, (x, c, w, m, half, engine, cull), y)
        return y

    @staticmethod
    def backward(ctx, gy):
        return _backward(ctx, gy, first_order=_backward_impl)


# ---------------------------------------------------------------- oriented bumps
_ORIENTED_NAMES = ("x", "c", "U (built from w and angles)", "m")


def _oriented_forward_impl(x, c, U, m, r2, half, engine: str, cull: bool) -> Tensor:
    _check_finite(_ORIENTED_NAMES, (x, c, U, m))
    return ENGINES[engine].oriented_forward(
        x.detach(), c.detach(), U.detach(), m.detach(), r2.detach(), half.detach(), cull
    )


def _oriented_backward_impl(gy, x, c, U, m, r2, half, engine: str, cull: bool, need_x: bool):
    grads = ENGINES[engine].oriented_backward(
        gy.detach(), x.detach(), c.detach(), U.detach(), m.detach(), r2.detach(), half.detach(), cull, need_x
    )
    return _unaliased(grads, x)


@torch.library.custom_op("wandering::oriented_bump_sum", mutates_args=())
def oriented_bump_sum_op(
    x: Tensor, c: Tensor, U: Tensor, m: Tensor, r2: Tensor, half: Tensor, engine: str, cull: bool
) -> Tensor:
    """y (n, P) of oriented bumps with precision transforms U (d, d, K); see ``_registry``."""
    return _oriented_forward_impl(x, c, U, m, r2, half, engine, cull)


@oriented_bump_sum_op.register_fake
def _(x, c, U, m, r2, half, engine, cull):
    return x.new_empty((x.shape[0], m.shape[1]))


@torch.library.custom_op("wandering::oriented_bump_sum_backward", mutates_args=())
def oriented_bump_sum_backward_op(
    gy: Tensor, x: Tensor, c: Tensor, U: Tensor, m: Tensor, r2: Tensor, half: Tensor, engine: str, cull: bool,
    need_x: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:  # fmt: skip
    """(gx, gc, gU, gm) of ``sum(gy * y)``; gx has 0 rows when ``need_x`` is False."""
    return _oriented_backward_impl(gy, x, c, U, m, r2, half, engine, cull, need_x)


@oriented_bump_sum_backward_op.register_fake
def _(gy, x, c, U, m, r2, half, engine, cull, need_x):
    gx = x.new_empty(x.shape if need_x else (0, x.shape[1]))
    return gx, c.new_empty(c.shape), U.new_empty(U.shape), m.new_empty(m.shape)


def _oriented_setup_context(ctx, inputs, output):
    x, c, U, m, r2, half, engine, cull = inputs
    ctx.save_for_backward(x, c, U, m, r2, half)
    ctx.engine, ctx.cull = engine, cull


def _oriented_backward(ctx, gy, first_order=oriented_bump_sum_backward_op):
    x, c, U, m, r2, half = ctx.saved_tensors
    need = ctx.needs_input_grad[:4]
    if torch.is_grad_enabled():
        grads = oriented_pair_formula_grads(gy, x, c, U, m, r2)
    else:
        gx, gc, gU, gm = first_order(gy, x, c, U, m, r2, half, ctx.engine, ctx.cull, need[0])
        grads = (gx if need[0] else None, gc, gU, gm)
    grads = tuple(g if n else None for g, n in zip(grads, need))
    return (*grads, None, None, None, None)


torch.library.register_autograd(
    "wandering::oriented_bump_sum", _oriented_backward, setup_context=_oriented_setup_context
)


class _EagerOrientedBumpSum(torch.autograd.Function):
    """The oriented op's eager twin (see :class:`_EagerBumpSum`)."""

    @staticmethod
    def forward(ctx, x, c, U, m, r2, half, engine, cull):
        y = _oriented_forward_impl(x, c, U, m, r2, half, engine, cull)
        _oriented_setup_context(ctx, (x, c, U, m, r2, half, engine, cull), y)
        return y

    @staticmethod
    def backward(ctx, gy):
        return _oriented_backward(ctx, gy, first_order=_oriented_backward_impl)


# ---------------------------------------------------------------- entry points
_PLAIN_TYPES = (Tensor, torch.nn.Parameter)


def _plain_eager(*tensors: Tensor) -> bool:
    """Plain tensors in plain eager mode: no compiler, export, tensor subclass (fake, meta) or
    Python mode, which all need to see the registered op."""
    if torch.compiler.is_compiling():
        return False
    if torch._C._is_torch_function_mode_enabled() or _python_dispatch._get_current_dispatch_mode() is not None:
        return False
    for t in tensors:
        if type(t) not in _PLAIN_TYPES or t.is_meta:
            return False
    return True


def _transforming() -> bool:
    """Inside a functorch transform (torch.func.grad, vmap, jvp, ...)."""
    return torch._C._are_functorch_transforms_active()


def bump_sum(x: Tensor, c: Tensor, w: Tensor, m: Tensor, half: Tensor, engine: str, cull: bool) -> Tensor:
    """``wandering::bump_sum`` with autograd: the registered op, its eager twin where that is
    the same, or the plain formula under functorch transforms."""
    if _transforming():
        return plain_sum(x, c, None, m, half, None, w=w)
    if _plain_eager(x, c, w, m, half):
        return _EagerBumpSum.apply(x, c, w, m, half, engine, cull)
    return bump_sum_op(x, c, w, m, half, engine, cull)


def oriented_bump_sum(
    x: Tensor, c: Tensor, U: Tensor, m: Tensor, r2: Tensor, half: Tensor, engine: str, cull: bool
) -> Tensor:
    """``wandering::oriented_bump_sum`` with autograd (see :func:`bump_sum`)."""
    if _transforming():
        return plain_sum(x, c, U, m, None, r2)
    if _plain_eager(x, c, U, m, r2, half):
        return _EagerOrientedBumpSum.apply(x, c, U, m, r2, half, engine, cull)
    return oriented_bump_sum_op(x, c, U, m, r2, half, engine, cull)


# ---------------------------------------------------------------- differentiable formulas
def _live_pairs(x: Tensor, c: Tensor, half: Tensor, z_of) -> tuple[Tensor, Tensor]:
    """Indices (i, k) of the pairs that count, chunked over points so the (chunk, d, K) test
    never holds all pairs at once. ``half`` is the box test (None: none); ``z_of(diff)`` gives
    (z (chunk, d, K), extra live mask or None)."""
    n, d = x.shape
    K = c.shape[1]
    rows, cols = [], []
    step = chunk_rows(d * d, K)
    with torch.no_grad():
        for i0 in range(0, n, step):
            diff = x.detach()[i0 : i0 + step, :, None] - c.detach()[None]
            z, live = z_of(diff)
            if half is not None:
                inside = (diff.abs() < half[None]).all(dim=1)
                live = inside if live is None else live & inside
            s = (z * z).sum(dim=1)
            live = live & (torch.exp(-s) > 0) if live is not None else torch.exp(-s) > 0
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
    from wandering._engine._geometry import inverse_widths

    iw = inverse_widths(w.detach())
    i, k = _live_pairs(x, c, half, lambda diff: (diff * iw[None], None))
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


def _oriented_z(U: Tensor, r2: Tensor):
    def z_of(diff):
        z = torch.einsum("ajk,ijk->iak", U, diff)
        return z, (z * z).sum(dim=1) < r2[None]

    return z_of


def oriented_pair_formula_grads(gy: Tensor, x: Tensor, c: Tensor, U: Tensor, m: Tensor, r2: Tensor):
    """Gradients of ``sum(gy * y)`` with respect to x, c, U, m, in differentiable torch ops.

    With diff = x_i - c_k, z = U_k diff, e = exp(-|z|^2) and t = 2 e (gy[i] . m[k]) on each
    pair that counts: gm[k] += gy[i] e;  gU_k -= t z diff^T;  v = t U_k^T z;  gc[k] += v;  gx[i] -= v.
    """
    i, k = _live_pairs(x, c, None, _oriented_z(U.detach(), r2))
    Uk = U.permute(2, 0, 1)[k]  # (pairs, d, d)
    diff = x[i] - c.T[k]  # (pairs, d)
    z = (Uk @ diff[:, :, None])[:, :, 0]
    e = torch.exp(-(z * z).sum(dim=1))
    gyi = gy[i].to(x.dtype)
    K, P = m.shape
    d = x.shape[1]
    gm = m.new_zeros((K, P)).index_add(0, k, gyi * e[:, None])
    tz = (2.0 * e * (gyi * m[k]).sum(dim=1))[:, None] * z  # (pairs, d)
    v = (Uk.transpose(1, 2) @ tz[:, :, None])[:, :, 0]
    gc = c.new_zeros((K, d)).index_add(0, k, v).T
    gU = U.new_zeros((K, d, d)).index_add(0, k, -tz[:, :, None] * diff[:, None, :]).permute(1, 2, 0)
    gx = x.new_zeros(x.shape).index_add(0, i, -v)
    return gx, gc, gU, gm


def check_finite_where_checkable(names: tuple[str, ...], ts: tuple[Tensor, ...]) -> None:
    """The finiteness check, where a transform lets Python read values (not under vmap)."""
    try:
        _check_finite(names, ts)
    except RuntimeError:  # vmap: no data-dependent control flow; values flow through instead
        pass


def plain_sum(x: Tensor, c: Tensor, U: Tensor | None, m: Tensor, half: Tensor | None, r2: Tensor | None,
              w: Tensor | None = None) -> Tensor:  # fmt: skip
    """The bump sum (n, P) in plain differentiable torch ops, chunked over points.

    Axis-aligned (``w`` and ``half`` given, ``U`` None) or oriented (``U`` and ``r2``).
    Pairs that do not count are masked before anything is divided or differentiated, so
    no derivative of any order is NaN. Memory O(chunk x d x K) per chunk, plus what
    autograd keeps for the backward."""
    if U is None:
        check_finite_where_checkable(_AXIS_NAMES, (x, c, w, m))
    else:
        check_finite_where_checkable(_ORIENTED_NAMES, (x, c, U, m))
    n, d = x.shape
    K = c.shape[1]
    step = chunk_rows(d * d, K)
    out = []
    for i0 in range(0, max(n, 1), step):
        diff = x[i0 : i0 + step, :, None] - c[None]  # (chunk, d, K)
        if U is None:
            with torch.no_grad():
                live = (diff.abs() < half[None]).all(dim=1)
                w_probe = torch.where(w == 0, torch.ones_like(w), w)
                live &= torch.exp(-((diff / w_probe[None]) ** 2).sum(dim=1)) > 0
            w_safe = torch.where(live[:, None, :], w[None], torch.ones_like(w)[None])
            z = diff / w_safe
        else:
            with torch.no_grad():
                zd = torch.einsum("ajk,ijk->iak", U, diff)
                sd = (zd * zd).sum(dim=1)
                live = (sd < r2[None]) & (torch.exp(-sd) > 0)
            diff = torch.where(live[:, None, :], diff, torch.zeros_like(diff))
            z = torch.einsum("ajk,ijk->iak", U, diff)
        e = torch.exp(-(z * z).sum(dim=1))
        e = torch.where(live, e, torch.zeros_like(e))
        out.append(e @ m)
    return torch.cat(out) if len(out) > 1 else out[0]
