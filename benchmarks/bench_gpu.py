"""GPU benchmark: the triton engine vs the torch chunked engine vs KeOps (when installed).

Cases (float32, x and c uniform in the unit cube, random upstream gradient,
requires_grad on c, w, m; times are medians of forward + backward):

    dense P=1      N=1e6, K=1024, d=3, w uniform in [0.2, 0.6], exact sum
    dense P=16     the same with magnitudes (K, 16)
    culled         N=1e6, K=1024, d=3, w uniform in [0.02, 0.06], support_p=0.01
    training step  SlowSumOfBumpFcns, 48 bumps, d=2, 3600 points, Adam, gradient
                   noise and bounds: one full step (zero_grad, forward, backward,
                   pert_grads, step, bound)

For each it prints the time, pairs/s (n*K for exact sums, the in-support pairs
for the culled one), the peak GPU memory above what the inputs already held
(torch.cuda.max_memory_allocated), and how many times faster triton is.

    python benchmarks/bench_gpu.py                    # on the GPU
    python benchmarks/bench_gpu.py --cases culled --repeats 20
    TRITON_INTERPRET=1 python benchmarks/bench_gpu.py --tiny --device cpu   # smoke test, no GPU

``--tiny`` shrinks every case so the whole script runs in seconds through
Triton's interpreter; its numbers mean nothing. ``--device cpu`` is accepted only
with TRITON_INTERPRET=1 (the triton engine runs CPU tensors only there).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

# name: (n, K, d, (w_lo, w_hi), support_p, P)
CASES = {
    "dense P=1": (1_000_000, 1024, 3, (0.2, 0.6), None, 1),
    "dense P=16": (1_000_000, 1024, 3, (0.2, 0.6), None, 16),
    "culled": (1_000_000, 1024, 3, (0.02, 0.06), 0.01, 1),
}
TINY = {
    "dense P=1": (200, 32, 3, (0.2, 0.6), None, 1),
    "dense P=16": (100, 32, 3, (0.2, 0.6), None, 16),
    "culled": (600, 64, 3, (0.05, 0.15), 0.01, 1),
}
TRAIN = dict(K=48, d=2, n=3600)
TRAIN_TINY = dict(K=48, d=2, n=150)
ALL_CASES = (*CASES, "training step")
ENGINES = ("triton", "torch", "keops")


def _sync(device):
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _inputs(spec, device, seed=0):
    import torch

    n, K, d, (w_lo, w_hi), support_p, P = spec
    g = torch.Generator(device="cpu").manual_seed(seed)
    x = torch.rand(n, d, generator=g).to(device)
    c = torch.rand(d, K, generator=g).to(device).requires_grad_()
    w = (w_lo + (w_hi - w_lo) * torch.rand(d, K, generator=g)).to(device).requires_grad_()
    m = torch.randn(K, P, generator=g).to(device).requires_grad_()
    gy = torch.randn(n, P, generator=g).to(device)
    return x, c, w, m, gy, support_p


def _keops_sum(x, c, w, m, support_p):
    """The same sum as a KeOps reduction (dense: KeOps evaluates every pair; the support test is a mask)."""
    from pykeops.torch import LazyTensor

    xi = LazyTensor(x[:, None, :].contiguous())
    cj = LazyTensor(c.T[None].contiguous())
    iwj = LazyTensor((1.0 / w).T[None].contiguous())
    mj = LazyTensor(m[None].contiguous())
    diff = xi - cj
    e = (-((diff * iwj) ** 2).sum(-1)).exp()
    if support_p is not None:
        from wandering._engine._geometry import support_halfwidths

        hj = LazyTensor(support_halfwidths(w, support_p).T[None].contiguous())
        inside = (hj - diff.abs()).step().sum(-1)  # number of dimensions inside the box
        e = e * (inside - (x.shape[1] - 0.5)).step()
    return (e * mj).sum(1)


def _in_support_pairs(x, c, w, support_p):
    import torch

    from wandering._engine._geometry import support_halfwidths, support_mask

    half = support_halfwidths(w.detach(), support_p)
    step = max(1, (1 << 22) // (x.shape[1] * c.shape[1]))
    with torch.no_grad():
        return sum(int(support_mask(x[i : i + step], c, half).sum()) for i in range(0, x.shape[0], step))


def _measure(fn, device, repeats):
    """(median seconds, peak bytes above the memory held before) of fn()."""
    import torch

    fn()  # warm-up: kernel compilation, caches
    _sync(device)
    base = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        _sync(device)
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) - base if device.type == "cuda" else None
    return statistics.median(times), peak


def _sum_case(name, spec, engine, device, repeats):
    from wandering import bump_sum

    x, c, w, m, gy, support_p = _inputs(spec, device)
    if engine == "keops":
        if device.type != "cuda":
            return {"skipped": "GPU only here"}
        try:
            import pykeops  # noqa: F401
        except ImportError:
            return {"skipped": "pykeops not installed"}
        fwd = lambda: _keops_sum(x, c, w, m, support_p)  # noqa: E731
    else:
        fwd = lambda: bump_sum(x, c, w, m, support_p=support_p, backend=engine)  # noqa: E731

    def step():
        for t in (c, w, m):
            t.grad = None
        fwd().backward(gy)

    med, peak = _measure(step, device, repeats)
    n, K = x.shape[0], c.shape[1]
    pairs = n * K if support_p is None else _in_support_pairs(x, c, w, support_p)
    return {"s": med, "pairs_per_s": pairs / med, "peak": peak}


def _train_case(engine, device, repeats, tiny):
    import torch

    import wandering

    if engine == "keops":
        return {"skipped": "no KeOps module"}
    cfg = TRAIN_TINY if tiny else TRAIN
    n, K, d = cfg["n"], cfg["K"], cfg["d"]
    g = torch.Generator(device="cpu").manual_seed(1)
    x = (torch.rand(n, d, generator=g) * 2 - 1).to(device)
    y = (torch.sin(3 * x[:, 0].cpu()) * torch.cos(2 * x[:, 1].cpu())).to(device)
    bounds_c = torch.tensor([[-1.0, 1.0]] * d)
    bounds_w = torch.tensor([[0.02, 1.0]] * d)
    torch.manual_seed(2)
    model = wandering.SlowSumOfBumpFcns(
        torch.rand(d, K, generator=g) * 2 - 1,
        torch.full((d, K), 0.2),
        torch.randn(K, generator=g) * 0.1,
        bounds_c,
        bounds_w,
        c_grad_std=1e-3,
        w_grad_std=1e-4,
        support_p=0.01,
        backend=engine,
        device=device,
    )
    opt = torch.optim.Adam(model.parameters(), lr=0.01)

    def step():
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        model.pert_grads()
        opt.step()
        model.bound()

    med, peak = _measure(step, device, repeats)
    return {"s": med, "pairs_per_s": n * K / med, "peak": peak, "note": "pairs/s counts n*K"}


def _fmt_bytes(b):
    return "n/a (CPU)" if b is None else f"{b / 2**20:.1f} MiB"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", default="cuda", help="cuda (default), or cpu with TRITON_INTERPRET=1")
    p.add_argument("--tiny", action="store_true", help="tiny sizes: a smoke test through the interpreter")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per (case, engine); default 10, tiny 1")
    p.add_argument("--cases", nargs="+", choices=list(ALL_CASES), default=list(ALL_CASES))
    p.add_argument("--engines", nargs="+", choices=list(ENGINES), default=list(ENGINES))
    args = p.parse_args(argv)

    import torch

    device = torch.device(args.device)
    interpret = os.environ.get("TRITON_INTERPRET", "").lower() in ("1", "true", "yes", "on")
    if device.type == "cpu" and not interpret:
        p.error("--device cpu needs TRITON_INTERPRET=1 (set before Python starts)")
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("no CUDA device here; for a smoke test run TRITON_INTERPRET=1 ... --tiny --device cpu")
    from wandering._engine import ENGINES as REGISTRY

    if not REGISTRY["triton"].available:
        p.error(f"the triton engine is unavailable: {REGISTRY['triton'].unavailable}")
    repeats = args.repeats or (1 if args.tiny else 10)
    specs = TINY if args.tiny else CASES

    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU (Triton interpreter)"
    print(f"device: {where}; torch {torch.__version__}; repeats {repeats}{'; TINY sizes' if args.tiny else ''}")
    rows = []
    for case in args.cases:
        results = {}
        for engine in args.engines:
            if case == "training step":
                r = _train_case(engine, device, repeats, args.tiny)
            else:
                r = _sum_case(case, specs[case], engine, device, repeats)
            results[engine] = r
            if "skipped" in r:
                print(f"{case:14s} {engine:7s} skipped: {r['skipped']}", flush=True)
            else:
                print(
                    f"{case:14s} {engine:7s} {r['s'] * 1e3:10.2f} ms  {r['pairs_per_s']:.3g} pairs/s  "
                    f"peak {_fmt_bytes(r['peak'])}",
                    flush=True,
                )
        rows.append((case, results))

    print()
    print("| case | engine | fwd+bwd (or step) median | pairs/s | peak GPU memory | triton is faster by |")
    print("|---|---|---|---|---|---|")
    for case, results in rows:
        lead = results.get("triton", {})
        for engine, r in results.items():
            if "skipped" in r:
                print(f"| {case} | {engine} | {r['skipped']} | | | |")
                continue
            ratio = ""
            if engine != "triton" and "s" in lead and r["s"] > 0:
                ratio = f"{r['s'] / lead['s']:.2f}x"
            cells = (case, engine, f"{r['s'] * 1e3:.2f} ms", f"{r['pairs_per_s']:.3g}", _fmt_bytes(r["peak"]), ratio)
            print("| " + " | ".join(cells) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
