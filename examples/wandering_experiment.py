"""When does wandering help a fit? A small experiment on the CPU (< 1 minute).

A 2-D target made of three Gaussian bumps is fitted by a SlowSumOfBumpFcns with
Adam, in two starts:

- stranded: every bump starts outside the data, so far that its support box
  (culled at support_p) holds no point: its data gradient is exactly zero and
  Adam alone never moves it;
- placed: bumps start at random points inside the data.

Each start is trained without noise, with the seed's gradient noise
(``pert_grads``), with parameter noise (``perturb_params``), and with relocation
(``wandering.nn.training.Relocation``: every 20 steps, dead bumps jump to points drawn
where the squared residual is large); the noise and the relocation stop for the last
part of training so the bumps can settle. Reported: median over seeds of the final
test MSE and R^2.

    python examples/wandering_experiment.py [--seeds 5] [--steps 400]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from wandering import SlowSumOfBumpFcns
from wandering.nn.training import Relocation, attach

TRUE_C = torch.tensor([[0.25, 0.70, 0.40], [0.30, 0.60, 0.80]], dtype=torch.float64)
TRUE_W = torch.full((2, 3), 0.12, dtype=torch.float64)
TRUE_M = torch.tensor([1.0, -0.8, 0.6], dtype=torch.float64)
K = 16
N_TRAIN, N_TEST = 1000, 2000


def target(x):
    z = (x[:, :, None] - TRUE_C[None]) / TRUE_W[None]
    return torch.exp(-(z * z).sum(dim=1)) @ TRUE_M


def make_data(seed):
    gen = torch.Generator().manual_seed(10_000 + seed)
    x = torch.rand(N_TRAIN + N_TEST, 2, generator=gen, dtype=torch.float64)
    y = target(x) + 0.02 * torch.randn(x.shape[0], generator=gen, dtype=torch.float64)
    return (x[:N_TRAIN], y[:N_TRAIN]), (x[N_TRAIN:], y[N_TRAIN:])


def make_model(start, seed, noise):
    torch.manual_seed(seed)
    if start == "stranded":
        # to the right of the data: the support half-width is sqrt(ln 100) * 0.1 = 0.215,
        # so every box starts at x0 > 1.03 and holds no point (data live in [0, 1]^2)
        c = torch.rand(2, K, dtype=torch.float64)
        c[0] = 1.25 + 0.2 * c[0]
    else:
        c = torch.rand(2, K, dtype=torch.float64)
    w = torch.full((2, K), 0.1, dtype=torch.float64)
    m = 0.1 * torch.randn(K, dtype=torch.float64)
    c_bounds = torch.tensor([[-0.2, 1.5], [-0.2, 1.5]], dtype=torch.float64)
    w_bounds = torch.tensor([[0.03, 0.4], [0.03, 0.4]], dtype=torch.float64)
    c_grad_std = 0.05 if noise == "grad" else 0.0
    # the dense reference is fastest at this size and needs no compilation
    return SlowSumOfBumpFcns(c, w, m, c_bounds, w_bounds, c_grad_std, 0.0, 0.0, 0.01, backend="reference")


def fit(start, noise, seed, steps, lr=0.02, quiet_frac=0.3):
    (x, y), (xt, yt) = make_data(seed)
    model = make_model(start, seed, noise)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    param_c_std = 0.04 if noise == "param" else 0.0
    hooks = attach(opt, model, param_c_std=param_c_std)
    quiet_from = int(steps * (1 - quiet_frac))
    # relocation: every dead bump may move (all start dead when stranded); widths reset to 0.1
    reloc = Relocation(every=20, stop=quiet_from, max_fraction=1.0, width=0.1) if noise == "relocate" else None
    for step in range(steps):
        if step == quiet_from:  # anneal: let the bumps settle without noise
            hooks.remove()
            model.c_grad_std = 0.0
            hooks = attach(opt, model)
        opt.zero_grad()
        pred = model(x)
        ((pred - y) ** 2).mean().backward()
        opt.step()
        if reloc is not None:
            reloc.step_post(model, opt, x, y - pred.detach(), step)
    hooks.remove()
    with torch.no_grad():
        mse = float(((model(xt) - yt) ** 2).mean())
        r2 = 1.0 - mse / float(yt.var(unbiased=False))
    return mse, r2


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=400)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)  # small tensors: threads cost more than they give
    t0 = time.perf_counter()
    print(
        f"K={K} bumps, n={N_TRAIN} points, Adam lr=0.02, {args.steps} steps (last 30% without noise), "
        f"median of {args.seeds} seeds; grad noise c_grad_std=0.05, param noise c_std=0.04, "
        f"relocate: Relocation(every=20, max_fraction=1.0)"
    )
    print(f"{'start':<10}{'noise':<10}{'test MSE':>12}{'R^2':>10}   R^2 over seeds (min..max)")
    for start in ("stranded", "placed"):
        for noise in ("none", "grad", "param", "relocate"):
            results = [fit(start, noise, s, args.steps) for s in range(args.seeds)]
            mse = statistics.median(r[0] for r in results)
            r2 = statistics.median(r[1] for r in results)
            lo, hi = min(r[1] for r in results), max(r[1] for r in results)
            print(f"{start:<10}{noise:<10}{mse:>12.5f}{r2:>10.3f}   {lo:.3f}..{hi:.3f}")
    # The noise-free target itself, scored on the same noisy test points: no fit can beat it
    # in expectation, so it is the ceiling for every row above.
    oracle = []
    for s in range(args.seeds):
        (_, _), (xt, yt) = make_data(s)
        mse = float(((target(xt) - yt) ** 2).mean())
        oracle.append((mse, 1.0 - mse / float(yt.var(unbiased=False))))
    print(
        f"{'oracle':<10}{'(truth)':<10}{statistics.median(o[0] for o in oracle):>12.5f}"
        f"{statistics.median(o[1] for o in oracle):>10.3f}   "
        f"{min(o[1] for o in oracle):.3f}..{max(o[1] for o in oracle):.3f}"
    )
    print(f"({time.perf_counter() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
