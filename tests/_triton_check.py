"""Checks of the triton engine on the CPU, through Triton's interpreter.

Run by test_triton_engine.py in a subprocess: TRITON_INTERPRET must be set before
triton and wandering are imported (the engine reads it at import), which a
pytest process that imported wandering already cannot do. Usage:

    python tests/_triton_check.py GROUP

    GROUP: parity-f32, parity-f64, op-module, oriented-f32, oriented-f64, accuracy

Prints one line per check and exits non-zero at the first failure.
"""

from __future__ import annotations

import math
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch

import wandering
from wandering._engine import ENGINES, _torch_engine, _triton_engine, resolve_backend
from wandering._engine._geometry import cutoffs, ellipsoid_halfwidths, support_halfwidths
from wandering._engine._rotation import n_angles, precision_transforms, rotations

torch.set_num_threads(1)
P_BIG = _triton_engine._MAX_BP + 1  # more outputs than one inner chunk holds


def _problem(n, d, K, P, dtype, seed, w_lo=0.05, w_hi=0.4):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=dtype)
    c = torch.rand(d, K, generator=g, dtype=dtype)
    w = w_lo + (w_hi - w_lo) * torch.rand(d, K, generator=g, dtype=dtype)
    w[0, 0] = 0.0  # a zero width: the bump counts nowhere
    w[-1, 1] = -w[-1, 1]  # a negative width: only |w| matters
    m = torch.randn(K, P, generator=g, dtype=dtype) if P else torch.randn(K, generator=g, dtype=dtype)
    # some points exactly on a support box's edge, in every dimension
    half = support_halfwidths(w, 0.05)
    x[:3] = (c[:, 2] + half[:, 2]).to(dtype)
    x[3:5] = (c[:, 3] - half[:, 3]).to(dtype)
    gy = torch.randn((n, P) if P else (n,), generator=g, dtype=dtype)
    return x, c, w, m, gy


def _grads(fn, x, c, w, m, gy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, c, w, m)]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, gy)
    return y.detach(), grads


def _close(name, got, want, dtype):
    tol = dict(rtol=2e-5, atol=2e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-11)
    torch.testing.assert_close(got, want, **tol, msg=lambda m: f"{name}: {m}")


def parity(dtype):
    """Outputs and all four gradients vs the reference, exact and culled, d 1..4, P 1, 3 and > one chunk."""
    cases = [  # (n, d, K, P, support_p)
        (100, 1, 37, 1, None),
        (100, 1, 37, 3, 0.05),
        (90, 2, 34, P_BIG, None),
        (130, 2, 40, 1, 0.05),
        (80, 3, 33, 3, None),
        (110, 3, 36, P_BIG, 0.05),
        (100, 4, 36, 1, 0.05),
        (70, 4, 20, 3, None),
        (70, 3, 21, 0, 0.05),  # m of shape (K,)
    ]
    if dtype == torch.float64:
        cases = cases[1::2]
    for i, (n, d, K, P, sp) in enumerate(cases):
        x, c, w, m, gy = _problem(n, d, K, P, dtype, seed=10 + i)
        y, g = _grads(lambda *a: wandering.bump_sum(*a, support_p=sp, backend="triton"), x, c, w, m, gy)
        y_ref, g_ref = _grads(lambda *a: wandering.bump_sum_reference(*a, support_p=sp), x, c, w, m, gy)
        label = f"{str(dtype)[6:]} n={n} d={d} K={K} P={P or '(K,)'} support_p={sp}"
        _close(f"{label} y", y, y_ref, dtype)
        for name, a, b in zip(("gx", "gc", "gw", "gm"), g, g_ref):
            _close(f"{label} {name}", a, b, dtype)
            assert torch.isfinite(a).all(), f"{label} {name} not finite"
        assert bool(g[1][:, 0].eq(0).all() and g[2][:, 0].eq(0).all()), f"{label}: zero-width bump got a gradient"
        print(f"ok parity {label}")

    # the engine's backward without gx, and the zero-size corners
    x, c, w, m, gy = _problem(80, 2, 19, 2, dtype, seed=3)
    half = support_halfwidths(w, 0.05)
    gx, gc, gw, gm = _triton_engine.backward(gy, x, c, w, m, half, True, False)
    _, g_ref = _grads(lambda *a: wandering.bump_sum_reference(*a, support_p=0.05), x, c, w, m, gy)
    assert gx is None
    for name, a, b in zip(("gc", "gw", "gm"), (gc, gw, gm), g_ref[1:]):
        _close(f"need_x=False {name}", a, b, dtype)
    assert _triton_engine.forward(x[:0], c, w, m, half, True).shape == (0, 2)
    assert _triton_engine.forward(x, c[:, :0], w[:, :0], m[:0], half[:, :0], True).abs().sum() == 0
    print("ok engine backward without gx; empty inputs")


def culling_skips(dtype=torch.float32):
    """A culled sum evaluates far fewer (tile, bump block) pairs than the exact one, with the same result."""
    g = torch.Generator().manual_seed(5)
    n, d, K = 1500, 2, 160
    x = torch.rand(n, d, generator=g, dtype=dtype)
    c = torch.rand(d, K, generator=g, dtype=dtype)
    w = 0.005 + 0.01 * torch.rand(d, K, generator=g, dtype=dtype)
    m = torch.randn(K, 1, generator=g, dtype=dtype)
    half = support_halfwidths(w, 0.01)
    _triton_engine.tile_counts = []
    try:
        y = _triton_engine.forward(x, c, w, m, half, True)
        y_dense = _triton_engine.forward(x, c, w, m, half, False)  # same support test on every pair
        (evaluated, total), (dense_evaluated, _) = _triton_engine.tile_counts
    finally:
        _triton_engine.tile_counts = None
    _close("culled vs tested-dense y", y, y_dense, dtype)
    _close("culled y vs reference", y[:, 0], wandering.bump_sum_reference(x, c, w, m[:, 0], support_p=0.01), dtype)
    assert dense_evaluated == total and evaluated < 0.5 * total, (evaluated, total)
    print(f"ok culling evaluated {evaluated} of {total} tiles")


def op_module():
    """Dispatch, the public op (incl. second derivatives' fallback) and a module, forward + backward."""
    e = ENGINES["triton"]
    assert e.available and "cpu" in e.devices, e
    x = torch.rand(10**4, 3)
    assert resolve_backend("auto", x, 64) != "triton"  # auto never picks the interpreter
    assert resolve_backend("triton", x, 64) == "triton"

    torch.manual_seed(0)
    d, K, n = 2, 48, 400
    c = torch.rand(d, K)
    w = torch.full((d, K), 0.15)
    m = torch.randn(K)
    bounds_c = torch.tensor([[0.0, 1.0]] * d)
    bounds_w = torch.tensor([[0.01, 1.0]] * d)
    mods = {
        b: wandering.SlowSumOfBumpFcns(c.clone(), w.clone(), m.clone(), bounds_c, bounds_w, support_p=0.01, backend=b)
        for b in ("triton", "reference")
    }
    x = torch.rand(n, d, requires_grad=True)
    target = torch.sin(6 * x.detach()[:, 0]) * x.detach()[:, 1]
    out = {}
    for b, mod in mods.items():
        xb = x.detach().clone().requires_grad_()
        loss = ((mod(xb) - target) ** 2).mean()
        loss.backward()
        out[b] = (loss.detach(), xb.grad, mod.c.grad, mod.w.grad, mod.m.grad)
    for name, a, r in zip(("loss", "x.grad", "c.grad", "w.grad", "m.grad"), out["triton"], out["reference"]):
        _close(f"module {name}", a, r, torch.float32)
    print("ok module SlowSumOfBumpFcns(backend='triton') forward + backward")

    # one Adam step of the module through the engine moves the parameters as the reference's does
    for mod in mods.values():
        opt = torch.optim.Adam(mod.parameters(), lr=0.01)
        opt.step()
        mod.bound()
    _close("module after a step", mods["triton"].c.detach(), mods["reference"].c.detach(), torch.float32)

    # create_graph=True goes through the pair formula, not the engine, and agrees
    xs, cs, ws, ms, gy = _problem(60, 2, 9, 2, torch.float64, seed=8)
    cs.requires_grad_()
    hv = {}
    for b in ("triton", "reference"):
        y = wandering.bump_sum(xs, cs, ws, ms, support_p=0.05, backend=b)
        (g,) = torch.autograd.grad((y * gy).sum(), cs, create_graph=True)
        (h,) = torch.autograd.grad(g.sum(), cs)
        hv[b] = h
    _close("Hessian-vector product", hv["triton"], hv["reference"], torch.float64)
    print("ok second derivatives through the op")


# ---------------------------------------------------------------- oriented bumps
# Points closer than this (relative, in s) to an ellipsoid's boundary s = r2 are dropped: there
# rounding may count a pair on one engine and not the other, as the contract allows.
BOUNDARY_MARGIN = 1e-3


def _oriented_problem(n, d, K, P, dtype, seed, support_p, w_lo=0.05, w_hi=0.4):
    """x, c, w, m, angles, gy with a dead bump (k=0, a zero scale) and a negative scale (k=1)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=torch.float64)
    c = torch.rand(d, K, generator=g, dtype=torch.float64)
    w = w_lo + (w_hi - w_lo) * torch.rand(d, K, generator=g, dtype=torch.float64)
    w[0, 0] = 0.0
    w[-1, 1] = -w[-1, 1]
    angles = (torch.rand(n_angles(d), K, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
    if support_p is not None:
        # s of every pair in float64, from the inputs as rounded to dtype
        xr, cr, wr, ar = (t.to(dtype).double() for t in (x, c, w, angles))
        U = precision_transforms(rotations(ar, d), wr)
        z = torch.einsum("ajk,ijk->iak", U, xr[:, :, None] - cr[None])
        s = (z * z).sum(dim=1)
        level = -math.log(support_p)
        x = x[((s - level).abs() > BOUNDARY_MARGIN * level).all(dim=1)]
    m = torch.randn((K, P) if P else (K,), generator=g, dtype=torch.float64)
    gy = torch.randn((x.shape[0], P) if P else (x.shape[0],), generator=g, dtype=torch.float64)
    return tuple(t.to(dtype) for t in (x, c, w, m, angles, gy))


def _oriented_grads(fn, x, c, w, m, angles, gy):
    leaves = [t.detach().clone().requires_grad_() for t in (x, c, w, m, angles)]
    y = fn(*leaves)
    grads = torch.autograd.grad(y, leaves, gy)
    return y.detach(), grads


def _oriented_engine_args(x, c, w, m, angles, support_p):
    """The engine-level arguments (x, c, U, m (K, P), r2, half) of the public path."""
    d = x.shape[1]
    R = rotations(angles, d)
    r2 = cutoffs(w, support_p)
    return x, c, precision_transforms(R, w), m if m.dim() == 2 else m[:, None], r2, ellipsoid_halfwidths(R, w, r2)


def oriented_parity(dtype):
    """Oriented bumps: outputs and the gradients in x, c, w, m, angles (so U) vs the plain reference and
    the torch engine, exact and culled, d 2..4, P 1, 3, > one chunk and m (K,); a dead bump."""
    cases = [  # (n, d, K, P, support_p)
        (70, 2, 37, 1, None),
        (90, 2, 34, P_BIG, 0.05),
        (60, 3, 33, 3, 0.05),
        (50, 3, 21, 0, None),
        (60, 4, 36, 1, 0.05),
        (40, 4, 20, P_BIG, None),
    ]
    if dtype == torch.float64:
        cases = [cases[i] for i in (1, 2, 3, 4)]
    names = ("gx", "gc", "gw", "gm", "gangles")
    for i, (n, d, K, P, sp) in enumerate(cases):
        args = _oriented_problem(n, d, K, P, dtype, seed=20 + i, support_p=sp)
        label = f"oriented {str(dtype)[6:]} n={args[0].shape[0]} d={d} K={K} P={P or '(K,)'} support_p={sp}"
        y, g = _oriented_grads(lambda *a: wandering.oriented_bump_sum(*a[:4], a[4], sp, backend="triton"), *args)
        y_ref, g_ref = _oriented_grads(lambda *a: wandering.oriented_bump_sum_reference(*a[:4], a[4], sp), *args)
        y_t, g_t = _oriented_grads(lambda *a: wandering.oriented_bump_sum(*a[:4], a[4], sp, backend="torch"), *args)
        for other, yo, go in (("reference", y_ref, g_ref), ("torch", y_t, g_t)):
            _close(f"{label} y vs {other}", y, yo, dtype)
            for name, a, b in zip(names, g, go):
                _close(f"{label} {name} vs {other}", a, b, dtype)
        for name, a in zip(names, g):
            assert torch.isfinite(a).all(), f"{label} {name} not finite"
        dead = (g[1][:, 0], g[2][:, 0], g[3][0], g[4][:, 0])
        assert all(bool(t.eq(0).all()) for t in dead), f"{label}: the dead bump got a gradient"
        print(f"ok parity {label}")

    # the engine's gU against the torch engine's (the public path reaches U only through w, angles),
    # the backward without gx, and the zero-size corners
    for sp in (None, 0.05):
        x, c, w, m, angles, gy = _oriented_problem(80, 3, 19, 2, dtype, seed=4, support_p=sp)
        ea = _oriented_engine_args(x, c, w, m, angles, sp)
        cull = sp is not None
        gx, gc, gU, gm = _triton_engine.oriented_backward(gy, *ea, cull, False)
        want = _torch_engine.oriented_backward(gy, *ea, cull, True)
        assert gx is None
        for name, a, b in zip(("gc", "gU", "gm"), (gc, gU, gm), want[1:]):
            _close(f"engine need_x=False support_p={sp} {name}", a, b, dtype)
        _close(
            f"engine y support_p={sp}",
            _triton_engine.oriented_forward(*ea, cull),
            _torch_engine.oriented_forward(*ea, cull),
            dtype,
        )
    x, c, U, m, r2, half = ea
    assert _triton_engine.oriented_forward(x[:0], c, U, m, r2, half, True).shape == (0, 2)
    assert _triton_engine.oriented_forward(x, c[:, :0], U[:, :, :0], m[:0], r2[:0], half[:, :0], True).abs().sum() == 0
    gx, gc, gU, gm = _triton_engine.oriented_backward(gy[:0], x[:0], c, U, m, r2, half, True, True)
    assert gx.shape == (0, 3) and gU.shape == U.shape and not (gc.any() or gU.any() or gm.any())
    print(f"ok oriented {str(dtype)[6:]} engine gU, backward without gx; empty inputs")


def oriented_culling_skips(dtype=torch.float32):
    """Thin rotated ellipsoids: the culled sum evaluates far fewer (tile, bump block) pairs than the
    exact one, with the result of the same per-pair test on every pair and of the reference."""
    g = torch.Generator().manual_seed(6)
    n, d, K, sp = 1500, 2, 160, 0.01
    x = torch.rand(n, d, generator=g, dtype=dtype)
    c = torch.rand(d, K, generator=g, dtype=dtype)
    w = torch.stack([0.01 + 0.01 * torch.rand(K, generator=g), 0.002 + 0.002 * torch.rand(K, generator=g)]).to(dtype)
    angles = (torch.rand(1, K, generator=g, dtype=dtype) - 0.5) * 2 * math.pi
    m = torch.randn(K, generator=g, dtype=dtype)
    ea = _oriented_engine_args(x, c, w, m, angles, sp)
    _triton_engine.tile_counts = []
    try:
        y = _triton_engine.oriented_forward(*ea, True)
        y_dense = _triton_engine.oriented_forward(*ea, False)  # same per-pair test on every pair
        (evaluated, total), (dense_evaluated, _) = _triton_engine.tile_counts
    finally:
        _triton_engine.tile_counts = None
    _close("oriented culled vs tested-dense y", y, y_dense, dtype)
    _close(
        "oriented culled y vs reference", y[:, 0], wandering.oriented_bump_sum_reference(x, c, w, m, angles, sp), dtype
    )
    assert dense_evaluated == total and evaluated < 0.5 * total, (evaluated, total)
    assert bool((y != 0).float().mean() > 0.05), "too few points inside an ellipsoid for a test"  # ~10%
    print(f"ok oriented culling evaluated {evaluated} of {total} tiles")


def oriented_extreme_points(dtype=torch.float32):
    """Points just inside each ellipsoid at its farthest reach along every data axis (on its box's
    faces) count on the culled engine as on the reference: the tile skip keeps them. Each such point
    fills whole tiles (copies), so a tile's box is that point and the skip test is at its edge."""
    sp = 0.05
    for d in (2, 3):
        g = torch.Generator().manual_seed(30 + d)
        K = 8
        c = torch.rand(d, K, generator=g, dtype=torch.float64)
        w = 0.02 + 0.1 * torch.rand(d, K, generator=g, dtype=torch.float64)
        angles = (torch.rand(n_angles(d), K, generator=g, dtype=torch.float64) - 0.5) * 2 * math.pi
        R = rotations(angles, d)
        # along +-e_j the ellipsoid x = c + R diag(w) z, |z|^2 < r2, reaches farthest at
        # z = sqrt(r2) u / |u| with u = diag(w) R^T e_j
        u = w[:, None, :] * R  # u[a, j, k] = w[a, k] R[j, a, k]
        z = u / u.norm(dim=0, keepdim=True) * math.sqrt(-math.log(sp)) * (1 - 1e-4)
        reach = torch.einsum("jak,abk->jbk", R, w[:, None, :] * z)  # (d, j, K): x - c at the reach along e_j
        tips = torch.cat([(c[:, None, :] + reach), (c[:, None, :] - reach)], dim=1)  # (d, 2d, K)
        copies = 64  # a multiple of every tile size BN
        x = tips.permute(2, 1, 0).reshape(-1, d).repeat_interleave(copies, dim=0)
        m = torch.randn(K, 2, generator=g, dtype=torch.float64)
        x, c, w, angles, m = (t.to(dtype) for t in (x, c, w, angles, m))
        y = wandering.oriented_bump_sum(x, c, w, m, angles, sp, backend="triton")
        y_ref = wandering.oriented_bump_sum_reference(x, c, w, m, angles, sp)
        counted = wandering.oriented_bump_sum_reference(x, c, w, torch.eye(K, dtype=dtype), angles, sp) != 0
        owner = torch.arange(K).repeat_interleave(2 * d * copies)
        assert bool(counted[torch.arange(x.shape[0]), owner].all())  # every point inside its own ellipsoid
        _close(f"oriented d={d} points at the ellipsoids' reach", y, y_ref, dtype)
    print("ok oriented points at the ellipsoids' reach count when culled")


def oriented_op_module():
    """Oriented bumps through the public op (gradcheck, second derivatives) and the oriented modules
    under WANDERING_BACKEND=triton, forward + backward, against the reference."""
    assert ENGINES["triton"].orients
    x, c, w, m, angles, _ = _oriented_problem(8, 2, 3, 2, torch.float64, seed=9, support_p=None)
    w[0, 0] = 0.3  # gradcheck's finite differences need every scale away from 0
    inputs = tuple(t.clone().requires_grad_() for t in (x, c, w, m, angles))
    fn = lambda *a: wandering.oriented_bump_sum(*a[:4], a[4], None, backend="triton")  # noqa: E731
    assert torch.autograd.gradcheck(fn, inputs, fast_mode=True)  # random projections: a few forwards
    print("ok oriented gradcheck through the engine")

    # create_graph=True goes through the pair formula, not the engine, and agrees
    xs, cs, ws, ms, angs, gy = _oriented_problem(40, 3, 7, 2, torch.float64, seed=10, support_p=0.05)
    cs.requires_grad_()
    hv = {}
    for b in ("triton", "reference"):
        y = wandering.oriented_bump_sum(xs, cs, ws, ms, angs, support_p=0.05, backend=b)
        (g,) = torch.autograd.grad((y * gy).sum(), cs, create_graph=True)
        (hv[b],) = torch.autograd.grad(g.sum(), cs)
    _close("oriented Hessian-vector product", hv["triton"], hv["reference"], torch.float64)
    print("ok oriented second derivatives through the op")

    torch.manual_seed(1)
    d, K, n = 2, 40, 300
    c = torch.rand(d, K)
    w = torch.stack([torch.full((K,), 0.2), torch.full((K,), 0.06)])
    angles = torch.rand(1, K) * math.pi
    m = torch.randn(K, 2)
    bounds_c = torch.tensor([[0.0, 1.0]] * d)
    bounds_w = torch.tensor([[0.01, 1.0]] * d)
    x = torch.rand(n, d)
    target = torch.stack([torch.sin(6 * x[:, 0]) * x[:, 1], x[:, 0] - x[:, 1]], dim=1)
    kinds = {
        "OrientedSumOfBumpFcns": lambda backend: wandering.OrientedSumOfBumpFcns(
            c.clone(), w.clone(), m.clone(), bounds_c, bounds_w, angles=angles.clone(), backend=backend
        ),
        "SlowOrientedSumOfBumpFcns": lambda backend: wandering.SlowOrientedSumOfBumpFcns(
            c.clone(), w.clone(), m.clone(), bounds_c, bounds_w, support_p=0.01, angles=angles.clone(), backend=backend
        ),
    }
    os.environ["WANDERING_BACKEND"] = "triton"
    try:
        for kind, make in kinds.items():
            out = {}
            for b in ("auto", "reference"):  # "auto" is triton through the environment variable
                mod = make(b)
                xb = x.clone().requires_grad_()
                _triton_engine.tile_counts = []
                try:
                    loss = ((mod(xb) - target) ** 2).mean()
                    ran = len(_triton_engine.tile_counts)
                finally:
                    _triton_engine.tile_counts = None
                assert ran == (b == "auto"), f"{kind} backend={b}: triton ran {ran} forwards"
                loss.backward()
                out[b] = (loss.detach(), xb.grad, mod.c.grad, mod.w.grad, mod.angles.grad, mod.m.grad)
            for name, a, r in zip(("loss", "x.grad", "c.grad", "w.grad", "angles.grad", "m.grad"), *out.values()):
                _close(f"{kind} {name}", a, r, torch.float32)
            print(f"ok {kind} under WANDERING_BACKEND=triton, forward + backward")
    finally:
        del os.environ["WANDERING_BACKEND"]


def accuracy():
    """float32 outputs and gradients against the exact sums of the same inputs: no worse than
    twice plain float32 autograd's error (measure and problems: tests/_accuracy.py)."""
    import _accuracy as acc

    floor = 0.01 * acc.EPS32
    cases = [  # (n, d, K, P, seed, problem keywords)
        (600, 3, 40, 1, 1, dict(widths=(0.05, 0.3))),
        (500, 2, 48, 3, 2, dict(widths=(0.3, 1.0), cancelling=True, support_p=None)),
        (400, 3, 36, P_BIG, 3, dict(layout="clustered", widths=(0.05, 0.3), cancelling=True)),
    ]
    for n, d, K, P, seed, kw in cases:
        x, c, w, m, half, gy = acc.problem(n, d, K, P, seed, **kw)
        ref = acc.exact(x, c, w, m, half, gy)
        plain = acc.errors(acc.run_plain(x, c, w, m, gy, kw.get("support_p", 0.01)), ref)
        got = acc.errors(acc.run_engine("triton", x, c, w, m, half, gy, bool(torch.isfinite(half).all())), ref)
        label = f"n={n} d={d} K={K} P={P} {kw}"
        for name in acc.NAMES:
            assert got[name] <= 2 * plain[name] + floor, (label, name, got[name] / acc.EPS32, plain[name] / acc.EPS32)
        print(
            f"ok accuracy {label}: "
            + " ".join(f"{k} {got[k] / acc.EPS32:.3f} eps (plain {plain[k] / acc.EPS32:.3f})" for k in acc.NAMES)
        )


GROUPS = {
    "parity-f32": lambda: (parity(torch.float32), culling_skips()),
    "accuracy": accuracy,
    "parity-f64": lambda: parity(torch.float64),
    "op-module": op_module,
    "oriented-f32": lambda: (oriented_parity(torch.float32), oriented_culling_skips(), oriented_extreme_points()),
    "oriented-f64": lambda: (oriented_parity(torch.float64), oriented_op_module()),
}

if __name__ == "__main__":
    for group in sys.argv[1:] or list(GROUPS):
        GROUPS[group]()
    print("all ok")
