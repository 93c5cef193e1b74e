"""Accuracy harness shared by test_accuracy.py and _triton_check.py: float32 engines and
plain float32 autograd against the exact sums of the same float32 inputs.

Error measure. A float32 result is a sum of terms (over bumps for y and grad x, over
points for grad c, w, m); any float method makes an error proportional to eps times the
sum of the terms' absolute values, and a sum that cancels (upstream gradients of both
signs) cannot be known better than that. So each entry's error is divided by its own
sum of |terms| (computed exactly here, in float64), floored at the largest such sum
times float32's eps (entries whose terms are all tiny, far from every bump, are then
measured on the scale that matters for the whole tensor), and the measure is the
largest of those ratios over the tensor's entries. It is independent of the problem's
conditioning and is about eps for a float32 result that is correct to a few roundings.
"""

from __future__ import annotations

import torch

import wandering
from wandering._engine._geometry import support_halfwidths

EPS32 = torch.finfo(torch.float32).eps
NAMES = ("y", "gx", "gc", "gw", "gm")


def problem(n, d, K, P, seed, *, layout="uniform", widths=(0.05, 0.3), cancelling=False, support_p=0.01):
    """A float32 problem: x (n, d), c, w (d, K), m (K, P), half (d, K), gy (n, P).

    layout "uniform": x and c uniform in the unit cube; "clustered": x in a few tight
    Gaussian clusters and c near them. ``cancelling``: gy of both signs whose column sums
    are 0 (to rounding), so the magnitudes' gradients are sums that cancel."""
    g = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=g, dtype=torch.float64)

    if layout == "uniform":
        x = rand(n, d)
        c = rand(d, K)
    elif layout == "clustered":
        centres = rand(5, d)
        x = centres[torch.randint(0, 5, (n,), generator=g)] + 0.02 * torch.randn(n, d, generator=g, dtype=torch.float64)
        c = (
            centres[torch.randint(0, 5, (K,), generator=g)] + 0.03 * torch.randn(K, d, generator=g, dtype=torch.float64)
        ).T
    else:
        raise ValueError(f"layout must be 'uniform' or 'clustered', but got {layout!r}")
    w = widths[0] + (widths[1] - widths[0]) * rand(d, K)
    m = torch.randn(K, P, generator=g, dtype=torch.float64)
    gy = torch.randn(n, P, generator=g, dtype=torch.float64)
    if cancelling:
        gy = gy - gy.mean(dim=0)
    x, c, w, m, gy = (t.float().contiguous() for t in (x, c, w, m, gy))
    half = support_halfwidths(w, support_p)
    return x, c, w, m, half, gy


def exact(x, c, w, m, half, gy, chunk=1 << 15):
    """{name: (exact value, sum of |terms|)} in float64 for y and the gradients of sum(gy * y).

    The pairs that count are picked by the contract's float test in x's dtype; values are
    then exact functions of the float32 inputs, evaluated in float64 over chunks of points."""
    n, d = x.shape
    K, P = m.shape
    c64, w64, m64 = c.double(), w.double(), m.double()
    out = {
        "y": (torch.empty(n, P, dtype=torch.float64), torch.empty(n, P, dtype=torch.float64)),
        "gx": (torch.empty(n, d, dtype=torch.float64), torch.empty(n, d, dtype=torch.float64)),
        "gc": (torch.zeros(d, K, dtype=torch.float64), torch.zeros(d, K, dtype=torch.float64)),
        "gw": (torch.zeros(d, K, dtype=torch.float64), torch.zeros(d, K, dtype=torch.float64)),
        "gm": (torch.zeros(K, P, dtype=torch.float64), torch.zeros(K, P, dtype=torch.float64)),
    }
    for i0 in range(0, n, chunk):
        sl = slice(i0, i0 + chunk)
        xc = x[sl]
        live = ((xc[:, :, None] - c[None]).abs() < half[None]).all(dim=1) & (w != 0).all(dim=0)[None]
        diff = xc.double()[:, :, None] - c64[None]
        z = torch.where(live[:, None, :], diff / torch.where(w64 == 0, 1.0, w64)[None], 0.0)
        e = torch.where(live, torch.exp(-(z * z).sum(dim=1)), 0.0)  # (ch, K)
        g64 = gy[sl].double()
        out["y"][0][sl] = e @ m64
        out["y"][1][sl] = e @ m64.abs()
        out["gm"][0].add_(e.T @ g64)
        out["gm"][1].add_(e.T @ g64.abs())
        t = 2.0 * e * (g64 @ m64.T)
        t_abs = 2.0 * e * (g64.abs() @ m64.abs().T)
        zw = z / torch.where(w64 == 0, 1.0, w64)[None]  # z / w, (ch, d, K)
        a = t[:, None, :] * zw
        a_abs = t_abs[:, None, :] * zw.abs()
        out["gc"][0].add_(a.sum(dim=0))
        out["gc"][1].add_(a_abs.sum(dim=0))
        out["gw"][0].add_((a * z).sum(dim=0))
        out["gw"][1].add_((a_abs * z.abs()).sum(dim=0))
        out["gx"][0][sl] = -a.sum(dim=2)
        out["gx"][1][sl] = a_abs.sum(dim=2)
    return out


def errors(got: dict, ref: dict) -> dict:
    """{name: max over entries of |got - exact| / max(sum |terms|, eps32 * its max)} (see the module docstring)."""
    res = {}
    for name, (val, scale) in ref.items():
        if val.numel() == 0:
            res[name] = 0.0
            continue
        floor = EPS32 * float(scale.max())
        err = (got[name].detach().double() - val).abs() / scale.clamp_min(floor if floor > 0 else 1e-300)
        res[name] = float(err.max())
    return res


def run_engine(name, x, c, w, m, half, gy, cull):
    """The engine's contract functions: {name: result}."""
    eng = wandering._engine.ENGINES[name]
    y = eng.forward(x, c, w, m, half, cull)
    gx, gc, gw, gm = eng.backward(gy, x, c, w, m, half, cull, True)
    return dict(zip(NAMES, (y, gx, gc, gw, gm)))


def run_plain(x, c, w, m, gy, support_p):
    """Plain float32 autograd of the formula (``bump_sum_reference``), in one dense broadcast."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, c, w, m)]
    y = wandering.bump_sum_reference(*leaves, support_p=support_p)
    grads = torch.autograd.grad(y, leaves, gy)
    return dict(zip(NAMES, (y.detach(), *grads)))
