"""Eager vs torch.compile(fullgraph=True) on the demo's training step, and the cost of opcheck.

The step is the demo's: SlowSumOfBumpFcns with 48 bumps in 2-D, support_p=0.01,
c_grad_std=0.001, 3600 full-batch points, Adam. A step is zero_grad, forward, loss,
backward, pert_grads, Adam step, bound. Prints medians, for 1 thread and the default.

    python benchmarks/bench_compile.py [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numba
import torch

from wandering import SlowSumOfBumpFcns
from wandering._engine import _op
from wandering._engine._geometry import support_halfwidths


def make(seed=0):
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(3600, 2, generator=g)
    y = torch.sin(6 * x[:, 0]) * torch.cos(4 * x[:, 1])
    K = 48
    model = SlowSumOfBumpFcns(
        torch.rand(2, K, generator=g),
        torch.full((2, K), 0.15),
        torch.zeros(K),
        torch.tensor([[0.0, 1.0]] * 2),
        torch.tensor([[0.02, 0.5]] * 2),
        0.001,
        0.0,
        0.0,
        0.01,
    )
    return model, x, y


def time_steps(model, loss_fn, x, y, steps):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(x, y)
        loss.backward()
        model.pert_grads()
        opt.step()
        model.bound()
        times.append(time.perf_counter() - t0)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=200)
    a = ap.parse_args()
    default_threads = torch.get_num_threads()
    print(f"torch {torch.__version__}, numba {numba.__version__}, {default_threads} default threads")
    for threads in (1, default_threads):
        torch.set_num_threads(threads)
        numba.set_num_threads(threads)
        model, x, y = make()
        eager = lambda x, y: ((model(x) - y) ** 2).mean()  # noqa: E731
        time_steps(model, eager, x, y, 5)  # warm-up (Numba kernels load)
        t_eager = statistics.median(time_steps(model, eager, x, y, a.steps))

        torch._dynamo.reset()
        model, x, y = make()
        compiled = torch.compile(lambda x, y: ((model(x) - y) ** 2).mean(), fullgraph=True)
        t0 = time.perf_counter()
        time_steps(model, compiled, x, y, 1)
        t_compile = time.perf_counter() - t0
        time_steps(model, compiled, x, y, 5)  # warm-up, as for eager (a recompile for dynamic shapes lands here)
        t_comp = statistics.median(time_steps(model, compiled, x, y, a.steps))
        print(
            f"threads={threads}: eager step {t_eager * 1e3:.2f} ms, compiled step {t_comp * 1e3:.2f} ms "
            f"(compiled/eager {t_comp / t_eager:.2f}x), first compiled step incl. compilation {t_compile:.1f} s"
        )
    torch.set_num_threads(default_threads)
    numba.set_num_threads(default_threads)

    model, x, y = make()
    half = support_halfwidths(model.w, 0.01)
    args = (
        x,
        model.c.detach(),
        model.w.detach(),
        model.m.detach()[:, None].clone().requires_grad_(),
        half,
        "numba",
        True,
    )
    t0 = time.perf_counter()
    torch.library.opcheck(_op.bump_sum_op, args)
    t_fwd = time.perf_counter() - t0
    gy = torch.randn(3600, 1)
    t0 = time.perf_counter()
    torch.library.opcheck(
        _op.bump_sum_backward_op, (gy, *[a.detach() if isinstance(a, torch.Tensor) else a for a in args], True)
    )
    t_bwd = time.perf_counter() - t0
    print(f"opcheck: bump_sum {t_fwd:.2f} s, bump_sum_backward {t_bwd:.2f} s (demo-sized inputs, numba engine)")


if __name__ == "__main__":
    main()
