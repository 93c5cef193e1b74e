"""Benchmark the bump-sum engine (forward + backward, float32) against baselines.

Every figure is printed: per case and thread count, the median AND the minimum over
repeats, pairs/s (output-pairs for P > 1: pairs x P), and same-run ratios. Each case
runs in its own subprocess; within it, the new engine (through ``bump_sum``, autograd
and all), the pre-change engine (``--baseline-dir``) and KeOps are interleaved per
repeat, so load from other processes hits them alike. Peak RSS is measured in a
separate subprocess that runs only the new engine.

Cases (x, c uniform in the unit cube unless said otherwise):

    culled         N=1e6, K=1024, d=3, w in [0.02, 0.06], support_p=0.01; same x every step
    culled-newx    the same, a new x every step (binning counted in the time)
    culled-P16     culled with m of shape (K, 16)
    culled-d2      culled at d=2
    dense          N=2e5, K=1024, d=3, w in [0.2, 0.6], exact
    dense-P16, dense-d2
    clustered      1e6 points in 8 tight clusters (std 0.03); 10% of the bumps 10x wider
    slab           1e6 points on a slab 0.002 thick; the same mixed bumps
                   (both compared with uniform data whose widths are scaled to give the
                   same number of in-support pairs: cost per pair, clustered / uniform)
    train          the seed author's development problem: a whole training step, with torch.optim.Adam
                   as it comes and with Adam(fused=True)
    oriented-dense, oriented-dense-d2, oriented-culled, oriented-culled-d2
                   oriented bumps (random rotations) on the inputs of dense, dense-d2, culled and
                   culled-d2, scales times (box / ball volume)**(1/d) where culled, so that the
                   in-support pairs match; each run interleaved with its axis-aligned case, and
                   the cost per in-support pair compared (oriented / axis, median of paired
                   ratios; issue 17's target: at most 1.5 at one thread), for the whole step and
                   for the engine's functions alone (the oriented step also builds rotations)
    oriented-elongated, oriented-elongated-d2
                   the culled ones with aspect 8:1 (same volume): candidates per in-support pair
                   of the ellipsoid registration against the bounding boxes'

    PYTHONPATH=src python benchmarks/bench_engine.py --baseline-dir /tmp/old --threads 1 2
    PYTHONPATH=src python benchmarks/bench_engine.py --cases culled dense --quick
    PYTHONPATH=src python benchmarks/bench_engine.py --clock cpu --threads 1 ...   # a busy machine

``--baseline-dir`` holds an older ``_kernels.py`` and ``_numba_engine.py`` (from
``git show <rev>:src/wandering/_engine/<file>``); it runs behind the current op layer,
so only the engine differs (wandering 0.1.0's engine, from before the engine contract,
runs through its own entry point, P = 1 only). ``--no-per-bump`` skips the slow per-bump loop.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import time

SP = 0.01
# name: (n, K, d, P, (w_lo, w_hi), support_p, layout)
CASES = {
    "culled": (1_000_000, 1024, 3, 1, (0.02, 0.06), SP, "uniform"),
    "culled-newx": (1_000_000, 1024, 3, 1, (0.02, 0.06), SP, "uniform"),
    "culled-P16": (1_000_000, 1024, 3, 16, (0.02, 0.06), SP, "uniform"),
    "culled-d2": (1_000_000, 1024, 2, 1, (0.02, 0.06), SP, "uniform"),
    "dense": (200_000, 1024, 3, 1, (0.2, 0.6), None, "uniform"),
    "dense-P16": (200_000, 1024, 3, 16, (0.2, 0.6), None, "uniform"),
    "dense-d2": (200_000, 1024, 2, 1, (0.2, 0.6), None, "uniform"),
    "clustered": (1_000_000, 1024, 3, 1, (0.02, 0.06), SP, "clusters"),
    "slab": (1_000_000, 1024, 3, 1, (0.02, 0.06), SP, "slab"),
}
# name: (axis-aligned case it is measured against, aspect of the principal scales)
ORIENTED_CASES = {
    "oriented-dense": ("dense", 1.0),
    "oriented-dense-d2": ("dense-d2", 1.0),
    "oriented-culled": ("culled", 1.0),
    "oriented-culled-d2": ("culled-d2", 1.0),
    "oriented-elongated": ("culled", 8.0),
    "oriented-elongated-d2": ("culled-d2", 8.0),
}
ALL = (*CASES, "train", *ORIENTED_CASES)
PER_BUMP_SUBSET = 64  # bumps the per-bump loop runs; its time is scaled to K
_clock = time.perf_counter  # --clock cpu: process CPU time (all threads), steadier on a shared machine


def _inputs(case: str, seed: int = 0, width_scale: float = 1.0, layout: str | None = None):
    import torch

    n, K, d, P, (w_lo, w_hi), support_p, lay = CASES[case]
    lay = layout or lay
    g = torch.Generator().manual_seed(seed)
    if lay == "clusters":
        centres = 0.15 + 0.7 * torch.rand(8, d, generator=g)
        x = centres[torch.randint(0, 8, (n,), generator=g)] + 0.03 * torch.randn(n, d, generator=g)
    elif lay == "slab":
        x = torch.rand(n, d, generator=g)
        x[:, d - 1] = 0.5 + 0.002 * x[:, d - 1]
    else:
        x = torch.rand(n, d, generator=g)
    c = torch.rand(d, K, generator=g)
    w = width_scale * (w_lo + (w_hi - w_lo) * torch.rand(d, K, generator=g))
    if lay in ("clusters", "slab"):
        w[:, : K // 10] *= 10.0  # mixed widths: a tenth of the bumps 10x wider
    m = torch.randn(K, P, generator=g) if P > 1 else torch.randn(K, generator=g)
    gy = torch.randn(n, P, generator=g) if P > 1 else torch.randn(n, generator=g)
    return x, c, w, m, gy, support_p


def per_bump_loop(x, c, w, m, support_p, bumps=None):
    """The seed's algorithm: a Python loop over bumps, each evaluated only inside its support box."""
    import torch

    from wandering._engine._geometry import support_halfwidths

    P = None if m.dim() == 1 else m.shape[1]
    y = torch.zeros(x.shape[0] if P is None else (x.shape[0], P), dtype=x.dtype)
    half = None if support_p is None else support_halfwidths(w, support_p)
    for k in range(c.shape[1]) if bumps is None else bumps:
        if half is None:
            idx, xk = None, x
        else:
            inside = ((x - c[:, k].detach()).abs() < half[:, k]).all(dim=1)
            idx = inside.nonzero().squeeze(1)
            xk = x[idx]
        z = (xk - c[:, k]) / w[:, k]
        e = torch.exp(-(z * z).sum(dim=1))
        v = e * m[k] if P is None else e[:, None] * m[k][None]
        y = y + v if idx is None else y.index_add(0, idx, v)
    return y


def _keops_sum(x, c, w, m):
    from pykeops.torch import LazyTensor

    xi = LazyTensor(x[:, None, :].contiguous())
    cj = LazyTensor(c.T[None].contiguous())
    iwj = LazyTensor((1.0 / w).T[None].contiguous())
    m2 = m if m.dim() == 2 else m[:, None]
    mj = LazyTensor(m2[None].contiguous())
    y = ((-(((xi - cj) * iwj) ** 2).sum(-1)).exp() * mj).sum(1)
    return y if m.dim() == 2 else y[:, 0]


def _load_baseline(path: str):
    """The older engine module, imported as a throwaway package from ``path``."""
    import importlib.util
    from pathlib import Path

    pkg = "_wandering_bench_baseline"
    init = importlib.util.module_from_spec(importlib.util.spec_from_loader(pkg, loader=None, is_package=True))
    init.__path__ = [path]
    sys.modules[pkg] = init
    spec = importlib.util.spec_from_file_location(f"{pkg}._numba_engine", Path(path) / "_numba_engine.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def _baseline_step(old, xs_new, x, c, w, m, gy, sp):
    """A step of the older engine through the current op layer (checks, autograd, the
    backward op), registered for the step as engine "baseline": only the engine differs
    from the new step, so identical code measures ~1.0x.

    An engine from before the engine contract (wandering 0.1.0: ``bump_sum_numba``, its own
    autograd.Function, one output) runs whole through its own entry point instead; that
    is then its whole path, checks and autograd included. Returns None where it cannot run
    the case (P > 1)."""

    from wandering._engine import _op, _registry
    from wandering._engine._geometry import support_halfwidths

    m2 = m if m.dim() == 2 else m[:, None]
    g2 = gy if gy.dim() == 2 else gy[:, None]
    if not hasattr(old, "forward") and hasattr(old, "bump_sum_numba"):
        if m.dim() == 2:
            return None

        def run(xr):
            half = None if sp is None else support_halfwidths(w, sp).detach()
            old.bump_sum_numba(xr, c, w, m, half, sp is not None).backward(gy)

    else:
        new = _registry.ENGINES["numba"]
        _registry.ENGINES["baseline"] = _registry.Engine(
            "baseline", new.devices, new.dtypes, new.culls, new.priority, old.forward, old.backward
        )

        def run(xr):
            _op.bump_sum(xr, c, w, m2, support_halfwidths(w, sp), "baseline", sp is not None).backward(g2)

    def old_step(r):
        xr = x if xs_new is None else xs_new[r]
        for t in (c, w, m):
            t.grad = None
        t0 = _clock()
        run(xr)
        return _clock() - t0

    return old_step


def _stats(ts):
    return {"median_s": statistics.median(ts), "min_s": min(ts)}


def _pairs(x, c, w, support_p) -> int:
    import torch

    from wandering._engine import _numba_engine
    from wandering._engine._geometry import support_halfwidths

    if support_p is None:
        return x.shape[0] * c.shape[1]
    with torch.no_grad():
        old = _numba_engine._CULL_FRACTION
        _numba_engine._CULL_FRACTION = math.inf
        try:
            return int(_numba_engine.pair_count(x, c, support_halfwidths(w, support_p)))
        finally:
            _numba_engine._CULL_FRACTION = old


def _matched_uniform_scale(case, target_pairs):
    """Width scale that gives uniform data the target number of in-support pairs (pairs ~ scale**d)."""
    scale = 1.0
    d = CASES[case][2]
    for _ in range(4):
        x, c, w, _m, _gy, sp = _inputs(case, width_scale=scale, layout="uniform")
        w[:, : c.shape[1] // 10] /= 10.0  # matched data: all bumps narrow
        p = _pairs(x, c, w, sp)
        scale *= (target_pairs / max(p, 1)) ** (1.0 / d)
    return scale


def _worker(case, threads, repeats, quick, baseline_dir, per_bump=True):
    import numba
    import torch

    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    if case == "train":
        return {
            "torch.optim.Adam": _train_worker(repeats),
            "Adam(fused=True)": _train_worker(repeats, fused=True),
            "zero-cost engine": _train_worker(repeats, zero_engine=True),
            "torch-only model": _torch_only_worker(repeats),
        }
    from wandering._engine import bump_sum

    x, c, w, m, gy, sp = _inputs(case)
    n, d = x.shape
    K = c.shape[1]
    P = 1 if m.dim() == 1 else m.shape[1]
    pairs = _pairs(x, c, w, sp)
    c.requires_grad_(), w.requires_grad_(), m.requires_grad_()
    newx = case == "culled-newx"
    xs_new = (
        [torch.rand(n, d, generator=torch.Generator().manual_seed(100 + r)) for r in range(repeats + 1)]
        if newx
        else None
    )

    def new_step(r):
        xr = xs_new[r] if newx else x
        for t in (c, w, m):
            t.grad = None
        t0 = _clock()
        y = bump_sum(xr, c, w, m, support_p=sp)
        y.backward(gy)
        return _clock() - t0

    fns = {"new": new_step}
    if baseline_dir:
        old_step = _baseline_step(_load_baseline(baseline_dir), xs_new if newx else None, x, c, w, m, gy, sp)
        if old_step is not None:
            fns["old"] = old_step
    if sp is None:
        try:
            import pykeops  # noqa: F401

            def keops_step(r):
                for t in (c, w, m):
                    t.grad = None
                t0 = _clock()
                _keops_sum(x, c, w, m).backward(gy)
                return _clock() - t0

            fns["keops"] = keops_step
        except ImportError:
            pass
    for f in fns.values():
        f(repeats)  # warm-up: compile-cache load, binning of x (new-x: its own x)
    times = {k: [] for k in fns}
    for r in range(repeats):
        for k, f in fns.items():
            times[k].append(f(r))
    out = {k: _stats(v) for k, v in times.items()}
    if per_bump:
        # The per-bump loop: slow; a subset of bumps, scaled to K, once (or twice).
        sub = range(min(K, PER_BUMP_SUBSET if sp is not None else 16))
        pb = []
        for _ in range(1 if quick else 2):
            t0 = _clock()
            per_bump_loop(x, c, w, m, sp, sub).backward(gy)
            pb.append((_clock() - t0) * K / len(sub))
        for t in (c, w, m):
            t.grad = None
        out["per-bump"] = _stats(pb)
        out["per-bump"]["note"] = f"{len(sub)} of {K} bumps, scaled"
    out["_pairs"] = pairs
    out["_P"] = P
    if "keops" not in fns and sp is None:
        out["keops"] = {"skipped": "pykeops not installed"}
    if CASES[case][6] != "uniform":
        # Same in-support pairs on uniform data (widths scaled), same engine, same process.
        scale = _matched_uniform_scale(case, pairs)
        xu, cu, wu, mu, gyu, _ = _inputs(case, width_scale=scale, layout="uniform")
        wu[:, : K // 10] /= 10.0
        pu = _pairs(xu, cu, wu, sp)
        cu.requires_grad_(), wu.requires_grad_(), mu.requires_grad_()

        def uni_step(r):
            for t in (cu, wu, mu):
                t.grad = None
            t0 = _clock()
            bump_sum(xu, cu, wu, mu, support_p=sp).backward(gyu)
            return _clock() - t0

        uni_step(0)
        tu, tc = [], []
        for r in range(repeats):
            tu.append(uni_step(r))
            tc.append(new_step(r))
        out["uniform-matched"] = _stats(tu)
        out["uniform-matched"]["pairs"] = pu
        out["clustered-again"] = _stats(tc)
        out["_cost_ratio"] = statistics.median([(a / pairs) / (b / pu) for a, b in zip(tc, tu)])
    return out


def _oriented_inputs(case: str):
    """The axis case's inputs, and oriented scales and angles for the same bumps."""
    import torch

    from wandering._engine._rotation import n_angles

    axis_case, aspect = ORIENTED_CASES[case]
    x, c, w, m, gy, sp = _inputs(axis_case)
    d, K = c.shape
    wo = w.clone()
    if sp is not None:  # the ellipsoid holds as many points as the box: scale by (box / ball)**(1/d)
        ball = math.pi ** (d / 2) / math.gamma(d / 2 + 1)
        wo *= (2.0**d / ball) ** (1.0 / d)
    wo[0] *= aspect ** ((d - 1) / d)  # aspect:1, same volume
    wo[1:] /= aspect ** (1 / d)
    angles = 2 * math.pi * torch.rand(n_angles(d), K, generator=torch.Generator().manual_seed(1))
    return x, c, w, m, gy, sp, wo, angles


def _oriented_worker(case, threads, repeats):
    """The oriented case and its axis-aligned one, interleaved per repeat, through the public
    functions (op layer and autograd included; the oriented one builds U from w and angles),
    with the time spent inside the engine's functions measured apart."""
    import numba
    import torch

    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    from wandering._engine import _numba_engine, _registry, bump_sum, oriented_bump_sum
    from wandering._engine._geometry import cutoffs, ellipsoid_halfwidths
    from wandering._engine._rotation import precision_transforms, rotations

    x, c, w, m, gy, sp, wo, angles = _oriented_inputs(case)
    n, d = x.shape
    K = c.shape[1]
    R = rotations(angles, d)
    U, r2 = precision_transforms(R, wo), cutoffs(wo, sp)
    half = ellipsoid_halfwidths(R, wo, r2)
    pairs_axis = _pairs(x, c, w, sp)
    out = {"_pairs_axis": pairs_axis}
    if sp is None:
        out["_pairs"] = n * K
    else:
        old = _numba_engine._CULL_FRACTION
        _numba_engine._CULL_FRACTION = math.inf
        try:
            out["_pairs"] = _numba_engine.oriented_pair_count(x, c, U, r2, half)
            plan = _numba_engine.make_plan(x, c, half, oriented=(U, r2))[1]
            box = _numba_engine.make_plan(x, c, half)[1]  # the same bumps registered by their boxes
            from wandering._engine._geometry import support_halfwidths

            axis_plan = _numba_engine.make_plan(x, c, support_halfwidths(w, sp))[1]
        finally:
            _numba_engine._CULL_FRACTION = old
        out["_candidates"] = {
            "oriented, by ellipsoid": plan.ncand / out["_pairs"],
            "oriented, by bounding box": box.ncand / out["_pairs"],
            "axis-aligned, by box": axis_plan.ncand / pairs_axis,
        }
    ps = [t.clone().requires_grad_() for t in (c, w, m)]
    po = [t.clone().requires_grad_() for t in (c, wo, m, angles)]
    spent = [0.0]

    def timed(f):
        def call(*a):
            t0 = time.perf_counter()
            res = f(*a)
            spent[0] += time.perf_counter() - t0
            return res

        return call

    eng = _registry.ENGINES["numba"]
    _registry.ENGINES["numba"] = _registry.Engine(
        eng.name, eng.devices, eng.dtypes, eng.culls, eng.priority, timed(eng.forward), timed(eng.backward),
        oriented_forward=timed(eng.oriented_forward), oriented_backward=timed(eng.oriented_backward),
    )  # fmt: skip

    def step(run, params):
        for t in params:
            t.grad = None
        spent[0] = 0.0
        t0 = time.perf_counter()
        run()
        return time.perf_counter() - t0, spent[0]

    def axis_step():
        return step(lambda: bump_sum(x, *ps, support_p=sp, backend="numba").backward(gy), ps)

    def oriented_step():
        return step(lambda: oriented_bump_sum(x, *po, support_p=sp, backend="numba").backward(gy), po)

    try:
        axis_step(), oriented_step()  # warm-up: compile-cache load, binning, plans
        ta, to = [], []
        for _r in range(repeats):
            ta.append(axis_step())
            to.append(oriented_step())
    finally:
        _registry.ENGINES["numba"] = eng
    out["oriented"] = _stats([t for t, _ in to])
    out["axis-aligned"] = _stats([t for t, _ in ta])
    out["oriented, engine"] = _stats([e for _, e in to])
    out["axis-aligned, engine"] = _stats([e for _, e in ta])
    out["_cost_ratio"] = statistics.median([(a[0] / out["_pairs"]) / (b[0] / pairs_axis) for a, b in zip(to, ta)])
    out["_engine_ratio"] = statistics.median([(a[1] / out["_pairs"]) / (b[1] / pairs_axis) for a, b in zip(to, ta)])
    return out


def _train_worker(repeats, fused=False, zero_engine=False):
    """A whole training step of the seed author's development problem, split into the engine's
    forward+backward and the rest (``fused``: Adam's one-kernel step instead of its default).

    ``zero_engine``: the same step with an engine that returns zeros at once, so the step is
    only the rest (PyTorch, autograd, Adam and the module's Python): the floor under it."""
    import torch

    import wandering
    from wandering._engine import ENGINES

    g = torch.Generator().manual_seed(0)
    d, N, K, B = 3, 10_000, 100, 1000
    X = torch.rand(N, d, generator=g)
    Y = torch.sin(3 * X[:, 0]) * torch.cos(2 * X[:, 1]) + X[:, 2]
    torch.manual_seed(0)
    model = wandering.SlowSumOfBumpFcns(
        torch.rand(d, K), 0.1 + 0.2 * torch.rand(d, K), 0.1 * torch.randn(K),
        torch.tensor([[0.0, 1.0]] * d), torch.tensor([[0.05, 0.5]] * d), 0.01, 0.01, 0.001, 0.01,
    )  # fmt: skip
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, **({"fused": True} if fused else {}))
    eng = ENGINES["numba"]
    spent = [0.0]

    def timed(f):
        def h(*a):
            t0 = _clock()
            r = f(*a)
            spent[0] += _clock() - t0
            return r

        return h

    import wandering._engine._registry as reg

    ENG = dict(reg.ENGINES)
    fwd, bwd = eng.forward, eng.backward
    if zero_engine:

        def fwd(x, c, w, m, half, cull):
            return torch.zeros((x.shape[0], m.shape[1]), dtype=x.dtype)

        def bwd(gy, x, c, w, m, half, cull, need_x):
            gx = torch.zeros_like(x) if need_x else None
            return gx, torch.zeros_like(c), torch.zeros_like(w), torch.zeros_like(m)

    reg.ENGINES["numba"] = reg.Engine(
        eng.name, eng.devices, eng.dtypes, eng.culls, eng.priority, timed(fwd), timed(bwd)
    )
    try:
        steps, engine = [], []
        for i in range(repeats * 20 + 20):
            idx = torch.randint(0, N, (B,), generator=g)
            x, y = X[idx], Y[idx]
            spent[0] = 0.0
            t0 = _clock()
            opt.zero_grad()
            loss = ((model(x) - y) ** 2).mean()
            loss.backward()
            model.pert_grads()
            opt.step()
            model.bound()
            if i >= 20:
                steps.append(_clock() - t0)
                engine.append(spent[0])
    finally:
        reg.ENGINES.clear()
        reg.ENGINES.update(ENG)
    rest = [s - e for s, e in zip(steps, engine)]
    return {
        "step": _stats(steps), "engine": _stats(engine), "rest": _stats(rest),
        "rest_fraction": statistics.median([r / s for r, s in zip(rest, steps)]),
    }  # fmt: skip


def _torch_only_worker(repeats):
    """The floor under any module: the same data, minibatch, parameter shapes and Adam, with a
    one-line torch forward ``(x @ c) @ m + sum(w)`` and no ``pert_grads`` or ``bound``."""
    import torch

    g = torch.Generator().manual_seed(0)
    d, N, K, B = 3, 10_000, 100, 1000
    X = torch.rand(N, d, generator=g)
    Y = torch.sin(3 * X[:, 0]) * torch.cos(2 * X[:, 1]) + X[:, 2]
    c = torch.nn.Parameter(torch.rand(d, K))
    w = torch.nn.Parameter(0.1 + 0.2 * torch.rand(d, K))
    m = torch.nn.Parameter(0.1 * torch.randn(K))
    opt = torch.optim.Adam([c, w, m], lr=1e-2)
    steps = []
    for i in range(repeats * 20 + 20):
        idx = torch.randint(0, N, (B,), generator=g)
        x, y = X[idx], Y[idx]
        t0 = _clock()
        opt.zero_grad()
        loss = (((x @ c) @ m + w.sum() - y) ** 2).mean()
        loss.backward()
        opt.step()
        if i >= 20:
            steps.append(_clock() - t0)
    zero = [0.0] * len(steps)
    return {"step": _stats(steps), "engine": _stats(zero), "rest": _stats(steps), "rest_fraction": 1.0}


def _rss_worker(case, threads):
    import resource

    import numba
    import torch

    numba.set_num_threads(threads)
    torch.set_num_threads(threads)
    from wandering._engine import bump_sum

    x, c, w, m, gy, sp = _inputs(case)
    for t in (c, w, m):
        t.requires_grad_()
    for _ in range(2):
        bump_sum(x, c, w, m, support_p=sp).backward(gy)
    return {"rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run(args_list):
    cmd = [sys.executable, os.path.abspath(__file__), *args_list]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"failed": (out.stderr.strip().splitlines() or [str(out.returncode)])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _ms(s):
    return f"{s['median_s'] * 1e3:9.2f} ms (min {s['min_s'] * 1e3:8.2f})"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", nargs="+", choices=ALL, default=list(ALL))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--quick", action="store_true", help="fewer repeats")
    p.add_argument("--baseline-dir", default=None, help="older engine to compare with in the same run")
    p.add_argument("--no-rss", action="store_true")
    p.add_argument("--no-per-bump", action="store_true", help="skip the slow per-bump loop")
    p.add_argument(
        "--clock", choices=("wall", "cpu"), default="wall",
        help="cpu: time by process CPU time (all threads together), which other jobs on a busy machine disturb less",
    )  # fmt: skip
    p.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    global _clock
    _clock = time.process_time if args.clock == "cpu" else time.perf_counter
    repeats = args.repeats or (3 if args.quick else 7)
    if args.worker:
        kind, case, threads = args.worker
        if kind == "rss":
            res = _rss_worker(case, int(threads))
        elif case in ORIENTED_CASES:
            res = _oriented_worker(case, int(threads), repeats)
        else:
            res = _worker(case, int(threads), repeats, args.quick, args.baseline_dir, not args.no_per_bump)
        print(json.dumps(res))
        return 0
    for case in args.cases:
        for nt in args.threads:
            wargs = ["--worker", "time", case, str(nt), "--repeats", str(repeats)]
            if args.quick:
                wargs.append("--quick")
            if args.baseline_dir:
                wargs += ["--baseline-dir", args.baseline_dir]
            if args.no_per_bump:
                wargs.append("--no-per-bump")
            wargs += ["--clock", args.clock]
            res = _run(wargs)
            head = f"{case:12s} threads={nt}"
            if "failed" in res:
                print(f"{head} FAILED: {res['failed']}", flush=True)
                continue
            if case in ORIENTED_CASES:
                pairs, pairs_axis, ratio = res.pop("_pairs"), res.pop("_pairs_axis"), res.pop("_cost_ratio")
                engine_ratio = res.pop("_engine_ratio")
                cands = res.pop("_candidates", None)
                print(f"{head} in-support pairs: oriented {pairs:.4g}, axis-aligned {pairs_axis:.4g}", flush=True)
                for eng, r in res.items():
                    pp = pairs if eng.startswith("oriented") else pairs_axis
                    print(f"    {eng:21s} {_ms(r)}  {r['median_s'] / pp * 1e9:.3g} ns per in-support pair (fwd+bwd)")
                print(
                    f"    cost per in-support pair, oriented / axis-aligned (median of paired ratios): {ratio:.2f} "
                    f"(whole step), {engine_ratio:.2f} (engine functions alone)"
                )
                if cands:
                    print("    candidates per in-support pair: " + ", ".join(f"{k} {v:.2f}" for k, v in cands.items()))
                continue
            if case == "train":
                for opt_name, r in res.items():
                    print(
                        f"{head} {opt_name:<17} step {_ms(r['step'])}  engine fwd+bwd {_ms(r['engine'])}  "
                        f"rest {_ms(r['rest'])}  rest/step (median of per-step ratios) {r['rest_fraction']:.0%}",
                        flush=True,
                    )
                continue
            pairs, P = res.pop("_pairs"), res.pop("_P")
            ratio = res.pop("_cost_ratio", None)
            new = res["new"]["median_s"]
            unit = "output-pairs" if P > 1 else "pairs"
            print(f"{head} in-support pairs {pairs:.4g} (x P={P})", flush=True)
            for eng, r in res.items():
                if "skipped" in r:
                    print(f"    {eng:16s} skipped: {r['skipped']}")
                    continue
                pp = r.get("pairs", pairs) * P
                rel = "" if eng == "new" else f"  {r['median_s'] / new:6.2f}x the new engine's median"
                print(
                    f"    {eng:16s} {_ms(r)}  {pp / r['median_s']:.3g} {unit}/s (best {pp / r['min_s']:.3g}){rel}"
                    + (f"  [{r['note']}]" if "note" in r else ""),
                    flush=True,
                )
            if ratio is not None:
                print(f"    cost per in-support pair, {case} / uniform-matched (median of paired ratios): {ratio:.2f}")
            if not args.no_rss and case in ("culled", "culled-P16", "culled-newx"):
                rss = _run(["--worker", "rss", case, str(nt)])
                print(
                    f"    peak RSS (new engine only, whole process): {rss.get('rss_mb', float('nan')):.0f} MB",
                    flush=True,
                )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
