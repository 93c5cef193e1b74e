"""Benchmark the bump-sum engines against baselines (forward + backward).

Each (case, engine) runs in its own subprocess so the peak RSS reported is
that engine's whole process. Times are medians of forward+backward with
requires_grad on c, w, m and a random upstream gradient.

    python benchmarks/bench_engine.py             # all cases
    python benchmarks/bench_engine.py --quick     # fewer repeats, per-bump loop extrapolated
    python benchmarks/bench_engine.py --cases culled small
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# name: (n_smps, K, d, (w_lo, w_hi), support_p)
CASES = {
    "culled": (1_000_000, 1024, 3, (0.02, 0.06), 0.01),
    "dense-2e5": (200_000, 1024, 3, (0.2, 0.6), None),
    "dense-1e6": (1_000_000, 1024, 3, (0.2, 0.6), None),
    "small": (10_000, 64, 3, (0.05, 0.15), None),
}
ENGINES = ("auto", "numba", "torch", "per-bump", "broadcast", "keops")
BROADCAST_LIMIT = 8e9  # bytes the dense (n, d, K) reference may use (~4 temporaries)
PER_BUMP_GRAPH_LIMIT = 4e9
TORCH_FULL_LIMIT = 20_000_000  # n*K above which the torch engine is timed on a prefix  # bytes of autograd graph the per-bump loop may keep


def _inputs(case: str, seed: int = 0):
    import torch

    n, K, d, (w_lo, w_hi), support_p = CASES[case]
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g)
    c = torch.rand(d, K, generator=g).requires_grad_()
    w = (w_lo + (w_hi - w_lo) * torch.rand(d, K, generator=g)).requires_grad_()
    m = torch.randn(K, generator=g).requires_grad_()
    gy = torch.randn(n, generator=g)
    return x, c, w, m, gy, support_p


def per_bump_loop(x, c, w, m, support_p, bumps=None):
    """The seed's algorithm: a Python loop over bumps, each evaluated only inside its support box."""
    import torch

    from wandering._geometry import support_halfwidths

    y = torch.zeros(x.shape[0], dtype=x.dtype)
    half = None if support_p is None else support_halfwidths(w, support_p)
    for k in range(c.shape[1]) if bumps is None else bumps:
        if half is None:
            idx = None
            xk = x
        else:
            inside = ((x - c[:, k].detach()).abs() < half[:, k]).all(dim=1)
            idx = inside.nonzero().squeeze(1)
            xk = x[idx]
        z = (xk - c[:, k]) / w[:, k]
        v = m[k] * torch.exp(-(z * z).sum(dim=1))
        y = y + v if idx is None else y.index_add(0, idx, v)
    return y


def _keops_sum(x, c, w, m, support_p):
    from pykeops.torch import LazyTensor

    if support_p is not None:
        raise RuntimeError("KeOps baseline is exact only")
    xi = LazyTensor(x[:, None, :].contiguous())
    cj = LazyTensor(c.T[None].contiguous())
    iwj = LazyTensor((1.0 / w).T[None].contiguous())
    mj = LazyTensor(m[None, :, None].contiguous())
    return ((-(((xi - cj) * iwj) ** 2).sum(-1)).exp() * mj).sum(1).squeeze(1)


def _worker(case: str, engine: str, repeats: int, quick: bool) -> dict:
    import resource

    import torch

    from wandering._engine import bump_sum

    x, c, w, m, gy, support_p = _inputs(case)
    n, d = x.shape
    K = c.shape[1]
    note = ""
    scale = 1.0
    if engine == "torch" and n * K > TORCH_FULL_LIMIT:
        # The chunked engine is dense and linear in n: time a prefix of the points.
        sub = max(1, TORCH_FULL_LIMIT // K)
        scale = n / sub
        note = f"extrapolated from {sub} of {n} points"
        xs, gs = x[:sub], gy[:sub]
        fn = lambda: bump_sum(xs, c, w, m, support_p=support_p, backend="torch")  # noqa: E731
        gy = gs
    elif engine in ("auto", "numba", "torch"):
        fn = lambda: bump_sum(x, c, w, m, support_p=support_p, backend=engine)  # noqa: E731
    elif engine == "broadcast":
        need = n * d * K * 4 * 4
        if need > BROADCAST_LIMIT:
            return {"skipped": f"skipped: would need {need / 1e9:.0f} GB"}
        fn = lambda: bump_sum(x, c, w, m, support_p=support_p, backend="reference")  # noqa: E731
    elif engine == "keops":
        try:
            import pykeops  # noqa: F401
        except ImportError:
            return {"skipped": "not installed"}
        if support_p is not None:
            return {"skipped": "exact only"}
        fn = lambda: _keops_sum(x, c, w, m, support_p)  # noqa: E731
    elif engine == "per-bump":
        graph = n * (1 if support_p is not None else K) * d * 4 * 6
        sub = None
        if quick or (support_p is None and graph > PER_BUMP_GRAPH_LIMIT):
            sub = range(min(K, 32 if support_p is None else 128))
            scale = K / len(sub)
            note = f"extrapolated from {len(sub)} of {K} bumps"
        fn = lambda: per_bump_loop(x, c, w, m, support_p, sub)  # noqa: E731
        repeats = 1 if not quick else repeats
    else:
        raise ValueError(engine)

    def step():
        for t in (c, w, m):
            t.grad = None
        t0 = time.perf_counter()
        y = fn()
        y.backward(gy[: y.shape[0]])
        return time.perf_counter() - t0

    step()  # warm-up: compile cache load, binning of x
    times = [step() for _ in range(repeats)]
    pairs = n * K
    if support_p is not None:
        from wandering._geometry import support_halfwidths

        from wandering._engine import _numba_engine

        with torch.no_grad():
            plan = _numba_engine.make_plan(x, c, support_halfwidths(w, support_p))
        pairs = _numba_engine.culled_pair_count(x, c, w, support_p) if plan is not None else pairs
    med = statistics.median(times) * scale
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB on Linux
    return {"median_s": med, "pairs": pairs, "pairs_per_s": pairs / med, "rss_mb": rss, "note": note}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer repeats; per-bump loop on a subset, extrapolated")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--engines", nargs="+", choices=list(ENGINES), default=["numba", "torch", "per-bump", "broadcast", "keops"])
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--markdown", action="store_true", help="print a markdown table")
    p.add_argument("--worker", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    repeats = args.repeats or (3 if args.quick else 7)
    if args.worker:
        print(json.dumps(_worker(args.worker[0], args.worker[1], repeats, args.quick)))
        return 0
    rows = []
    for case in args.cases:
        res = {}
        for engine in args.engines:
            cmd = [sys.executable, os.path.abspath(__file__), "--worker", case, engine, "--repeats", str(repeats)]
            if args.quick:
                cmd.append("--quick")
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode != 0:
                res[engine] = {"skipped": f"failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}"}
            else:
                res[engine] = json.loads(out.stdout.strip().splitlines()[-1])
            r = res[engine]
            if "skipped" in r:
                print(f"{case:10s} {engine:10s} {r['skipped']}", flush=True)
            else:
                print(
                    f"{case:10s} {engine:10s} {r['median_s'] * 1e3:10.1f} ms  {r['pairs_per_s']:.3g} pairs/s  "
                    f"peak RSS {r['rss_mb']:.0f} MB  {r['note']}",
                    flush=True,
                )
        rows.append((case, res))
    lead = args.engines[0]
    print()
    print("| case | engine | fwd+bwd median | pairs/s | peak RSS | speed-up of " + lead + " |")
    print("|---|---|---|---|---|---|")
    for case, res in rows:
        base = res.get(lead, {}).get("median_s")
        for engine, r in res.items():
            if "skipped" in r:
                print(f"| {case} | {engine} | {r['skipped']} | | | |")
                continue
            ratio = f"{r['median_s'] / base:.1f}x" if base and engine != lead else ""
            label = engine + (f" ({r['note']})" if r["note"] else "")
            print(
                f"| {case} | {label} | {r['median_s'] * 1e3:.1f} ms | {r['pairs_per_s']:.3g} | "
                f"{r['rss_mb']:.0f} MB | {ratio} |"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
