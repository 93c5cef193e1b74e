"""Checks of the triton engine on the CPU, through Triton's interpreter.

Run by test_triton_engine.py in a subprocess: TRITON_INTERPRET must be set before
triton and wandering are imported (the engine reads it at import), which a
pytest process that imported wandering already cannot do. Usage:

    python tests/_triton_check.py GROUP     # GROUP: parity-f32, parity-f64, op-module, accuracy

Prints one line per check and exits non-zero at the first failure.
"""

from __future__ import annotations

import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

import wandering  # noqa: E402
from wandering._engine import ENGINES, _triton_engine, resolve_backend  # noqa: E402
from wandering._geometry import support_halfwidths  # noqa: E402

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
    for b, mod in mods.items():
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
        print(f"ok accuracy {label}: " + " ".join(f"{k} {got[k] / acc.EPS32:.3f} eps (plain {plain[k] / acc.EPS32:.3f})" for k in acc.NAMES))


GROUPS = {
    "parity-f32": lambda: (parity(torch.float32), culling_skips()),
    "accuracy": accuracy,
    "parity-f64": lambda: parity(torch.float64),
    "op-module": op_module,
}

if __name__ == "__main__":
    for group in sys.argv[1:] or list(GROUPS):
        GROUPS[group]()
    print("all ok")
