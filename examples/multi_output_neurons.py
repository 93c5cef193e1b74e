"""Many functions of the same 3-D points: one multi-output bump sum, or one sum per function?

The real use this mirrors: about 20 quantities measured at ~1e6 neuron positions
in a brain. The script builds a seeded stand-in for that:

- positions: a few elongated, rotated Gaussian clusters of different sizes plus a
  thin, gently curved slab-like layer (in micrometres, a few mm across);
- P smooth targets of position: each a random sum of a few broad anisotropic
  Gaussians plus a linear and a quadratic trend, with noise of 3% of its spread.

10% of the points are held out. Two ways to fit the P targets, with the same recipe
(``SlowSumOfBumpFcns``, ``support_p`` 0.01, centres on a random subset of training
points, widths from the points' spread, Adam on minibatches with a cosine decay,
gradient noise on the centres, bounds, a fixed number of steps):

- multi: ONE module with magnitudes of shape (K, P), so all P functions share
  the bumps' centres and widths; loss = mean squared error over all outputs;
- separate: P single-output modules of K bumps each, one after another, each
  with the same number of steps and the same minibatches.

Targets are standardised per output (the offset is a learned parameter per
output). The data are made once, saved to a temporary folder as .npy files, and
each method runs in its own subprocess that loads them, so its peak RSS is its
own: ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` of that whole process
(torch, the loaded data and the fit; not the data generation). The fit time
excludes loading, evaluation and the one-off Numba compilation (every process
first runs two untimed warm-up steps).

    python examples/multi_output_neurons.py            # n = 1e6, P = 20, K = 512
    python examples/multi_output_neurons.py --quick    # n = 2e4, P = 4: well under a minute
    python examples/multi_output_neurons.py --n 100000 --steps 20
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

METHODS = ("multi", "separate")
QUICK = dict(n=20_000, p=4, k=32, steps=60, batch=1024)


# ---------------------------------------------------------------- data
def _rotation(rng: np.random.Generator) -> np.ndarray:
    """A random 3-D rotation (QR of a Gaussian matrix, sign-fixed)."""
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    q = q * np.sign(np.diag(r))
    return q if np.linalg.det(q) > 0 else -q


def make_positions(n: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 3) positions in micrometres: anisotropic clusters plus a thin curved layer."""
    clusters = [  # (share of points, centre, sd along its three axes)
        (0.30, (1800.0, 1200.0, 900.0), (550.0, 160.0, 110.0)),
        (0.20, (3200.0, 2000.0, 1300.0), (300.0, 260.0, 90.0)),
        (0.12, (900.0, 2500.0, 600.0), (120.0, 120.0, 380.0)),
        (0.08, (2600.0, 600.0, 400.0), (70.0, 40.0, 40.0)),
    ]
    counts = rng.multinomial(n, [c[0] for c in clusters] + [1.0 - sum(c[0] for c in clusters)])
    parts = []
    for (_, centre, sd), m in zip(clusters, counts[:-1]):
        local = rng.normal(size=(m, 3)) * np.asarray(sd)
        parts.append(local @ _rotation(rng).T + np.asarray(centre))
    m = counts[-1]  # the layer: a sheet about 40 um thick, curved, across most of the volume
    u, v = rng.uniform(0.0, 4000.0, size=m), rng.uniform(0.0, 3000.0, size=m)
    z = 1500.0 + 250.0 * np.sin(u / 1300.0) + 150.0 * np.cos(v / 900.0) + rng.normal(scale=20.0, size=m)
    parts.append(np.column_stack([u, v, z]))
    x = np.concatenate(parts)
    return x[rng.permutation(n)]


def make_targets(x: np.ndarray, p: int, rng: np.random.Generator, noise: float = 0.03) -> np.ndarray:
    """(n, p) smooth functions of position, each with a little noise."""
    lo, hi = x.min(0), x.max(0)
    span = hi - lo
    xc = (x - (lo + hi) / 2) / span  # about [-0.5, 0.5] per axis
    y = np.empty((len(x), p))
    for j in range(p):
        a = rng.normal(size=3)
        q = rng.normal(size=3)
        f = xc @ a + 2.0 * (xc * xc) @ q  # low-order trends
        for _ in range(rng.integers(2, 5)):  # broad anisotropic Gaussians, centred among the points
            centre = x[rng.integers(len(x))]
            sd = span * rng.uniform(0.08, 0.35, size=3)
            z = ((x - centre) @ _rotation(rng)) / sd
            f += rng.normal(scale=1.5) * np.exp(-0.5 * (z * z).sum(1))
        y[:, j] = f + rng.normal(scale=noise * f.std(), size=len(x))
    return y


def make_problem(n: int, p: int, seed: int):
    rng = np.random.default_rng(seed)
    x = make_positions(n, rng)
    y = make_targets(x, p, rng)
    hold = rng.permutation(n)[: n // 10]
    is_hold = np.zeros(n, dtype=bool)
    is_hold[hold] = True
    return x[~is_hold], y[~is_hold], x[is_hold], y[is_hold]


# ---------------------------------------------------------------- fitting
class BumpsWithOffset(torch.nn.Module):
    """A SlowSumOfBumpFcns plus a learned offset per output (the targets are standardised)."""

    def __init__(self, bumps: torch.nn.Module, n_out: int | None) -> None:
        super().__init__()
        self.bumps = bumps
        self.offset = torch.nn.Parameter(torch.zeros(() if n_out is None else (n_out,)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bumps(x) + self.offset


def build(xu: np.ndarray, k: int, n_out: int | None, support_p: float, seed: int) -> BumpsWithOffset:
    """Centres on K random training points, widths from the points' spread, magnitudes 0."""
    from wandering import SlowSumOfBumpFcns

    rng = np.random.default_rng(seed)
    d = xu.shape[1]
    c = xu[rng.choice(len(xu), size=k, replace=False)].T
    w0 = 2.0 * xu.std(0) * k ** (-1.0 / d)  # (d,): K bumps of this size cover the cloud's spread
    w = np.repeat(w0[:, None], k, axis=1)
    m = np.zeros(k if n_out is None else (k, n_out))
    c_bounds = np.tile([0.0, 1.0], (d, 1))
    w_bounds = np.column_stack([0.1 * w0, np.full(d, 0.5)])
    torch.manual_seed(seed)  # the module's gradient-noise seed
    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    bumps = SlowSumOfBumpFcns(f(c), f(w), f(m), f(c_bounds), f(w_bounds), 1e-3, 0.0, 0.0, support_p)
    return BumpsWithOffset(bumps, n_out)


def train(model: BumpsWithOffset, xt: torch.Tensor, yt: torch.Tensor, steps: int, batch: int, lr: float, seed: int):
    """Adam on minibatches with a cosine decay; the same minibatches for every model given the same seed."""
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps, eta_min=0.05 * lr)
    gen = torch.Generator().manual_seed(seed)
    batch = min(batch, len(xt))
    for _ in range(steps):
        idx = torch.randint(len(xt), (batch,), generator=gen)
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((model(xt[idx]) - yt[idx]) ** 2)
        loss.backward()
        model.bumps.pert_grads()
        opt.step()
        model.bumps.bound()
        sched.step()
    return loss.item()


def predict(model: BumpsWithOffset, xu: np.ndarray, chunk: int = 65536) -> np.ndarray:
    with torch.no_grad():
        return np.concatenate(
            [model(torch.as_tensor(xu[i : i + chunk], dtype=torch.float32)).numpy() for i in range(0, len(xu), chunk)]
        )


def r2_per_output(y: np.ndarray, pred: np.ndarray) -> np.ndarray:
    return 1.0 - ((y - pred) ** 2).sum(0) / ((y - y.mean(0)) ** 2).sum(0)


ARRAYS = ("x_tr", "y_tr", "x_ho", "y_ho")


def run_method(a: argparse.Namespace) -> dict:
    """Fits with one method in this process; returns times, memory and held-out R^2."""
    if a.data:
        x_tr, y_tr, x_ho, y_ho = (np.load(os.path.join(a.data, f"{name}.npy")) for name in ARRAYS)
    else:
        x_tr, y_tr, x_ho, y_ho = make_problem(a.n, a.p, a.seed)
    lo, span = x_tr.min(0), x_tr.max(0) - x_tr.min(0)
    xu_tr, xu_ho = (x_tr - lo) / span, (x_ho - lo) / span
    mu, sd = y_tr.mean(0), y_tr.std(0)
    xt = torch.as_tensor(xu_tr, dtype=torch.float32)
    yt = torch.as_tensor((y_tr - mu) / sd, dtype=torch.float32)
    # Two untimed steps of the same problem at the fit's own batch size: the kernels compile (or load from
    # Numba's cache) and "auto" meets the engine it will use, outside the timing.
    if a.method == "multi":
        train(build(xu_tr, a.k, a.p, a.support_p, a.seed), xt, yt, 2, a.batch, a.lr, a.seed)
    else:
        train(build(xu_tr, a.k, None, a.support_p, a.seed), xt, yt[:, 0].contiguous(), 2, a.batch, a.lr, a.seed)
    rss_before = _rss_now_mib()
    pred = np.empty_like(y_ho)
    t0 = time.perf_counter()
    if a.method == "multi":
        model = build(xu_tr, a.k, a.p, a.support_p, a.seed)
        train(model, xt, yt, a.steps, a.batch, a.lr, a.seed)
        seconds = time.perf_counter() - t0
        pred[:] = predict(model, xu_ho)
    else:
        seconds = 0.0
        for j in range(a.p):
            t1 = time.perf_counter()
            model = build(xu_tr, a.k, None, a.support_p, a.seed + 1 + j)
            train(model, xt, yt[:, j].contiguous(), a.steps, a.batch, a.lr, a.seed)
            seconds += time.perf_counter() - t1
            pred[:, j] = predict(model, xu_ho)
    r2 = r2_per_output(y_ho, pred * sd + mu)
    return {
        "method": a.method,
        "seconds": seconds,
        "rss_before_fit_mib": rss_before,
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,  # Linux: KiB
        "r2_mean": float(r2.mean()),
        "r2_min": float(r2.min()),
        "r2": [float(v) for v in r2],
        "threads": torch.get_num_threads(),
    }


def _rss_now_mib() -> float:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return float("nan")


# ---------------------------------------------------------------- driver
def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=1_000_000, help="number of positions (default: 1e6)")
    p.add_argument("--p", type=int, default=20, help="number of target functions (default: 20)")
    p.add_argument("--k", type=int, default=512, help="bumps per module (default: 512)")
    p.add_argument("--steps", type=int, default=2000, help="Adam steps per module (default: 2000)")
    p.add_argument("--batch", type=int, default=8192, help="minibatch size (default: 8192)")
    p.add_argument("--lr", type=float, default=0.02, help="Adam learning rate, unit-box coordinates (default: 0.02)")
    p.add_argument("--support-p", type=float, default=0.01, help="support cut-off (default: 0.01)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="n = 2e4, P = 4, K = 32, 60 steps, batch 1024")
    p.add_argument("--methods", default=",".join(METHODS), help="comma-separated subset of multi,separate")
    p.add_argument("--method", choices=METHODS, help=argparse.SUPPRESS)  # internal: one method, JSON out
    p.add_argument("--data", help=argparse.SUPPRESS)  # internal: folder with the problem's .npy files
    a = p.parse_args(argv)
    if a.quick:
        for key, v in QUICK.items():
            setattr(a, key, v)
    if a.n < 100 or a.p < 1 or a.k < 1 or a.k > 0.9 * a.n or a.steps < 1 or a.batch < 1:
        p.error("need n >= 100, p >= 1, 1 <= k <= 0.9 n, steps >= 1, batch >= 1")
    return a


def main(argv=None) -> int:
    a = parse(argv)
    if a.method:
        print("RESULT " + json.dumps(run_method(a)), flush=True)
        return 0
    methods = [m.strip() for m in a.methods.split(",") if m.strip()]
    if not methods or any(m not in METHODS for m in methods):
        raise SystemExit(f"--methods: choose from {', '.join(METHODS)}")
    print(
        f"n = {a.n} positions (10% held out), P = {a.p} functions, K = {a.k} bumps per module, "
        f"{a.steps} steps of batch {min(a.batch, a.n - a.n // 10)}, support_p = {a.support_p}, seed {a.seed}"
    )
    common = [
        "--n",
        str(a.n),
        "--p",
        str(a.p),
        "--k",
        str(a.k),
        "--steps",
        str(a.steps),
        "--batch",
        str(a.batch),
        "--lr",
        str(a.lr),
        "--support-p",
        str(a.support_p),
        "--seed",
        str(a.seed),
    ]
    results = []
    with tempfile.TemporaryDirectory(prefix="wandering_neurons_") as tmp:
        t0 = time.perf_counter()
        for name, arr in zip(ARRAYS, make_problem(a.n, a.p, a.seed)):
            np.save(os.path.join(tmp, f"{name}.npy"), arr)
        print(f"data made in {time.perf_counter() - t0:.1f} s", flush=True)
        for m in methods:
            t0 = time.perf_counter()
            r = subprocess.run(
                [sys.executable, os.path.abspath(__file__), *common, "--method", m, "--data", tmp],
                capture_output=True,
                text=True,
            )
            if r.returncode != 0:
                sys.stderr.write(r.stdout + r.stderr)
                raise SystemExit(f"method {m} failed (exit code {r.returncode})")
            line = next(ln for ln in r.stdout.splitlines() if ln.startswith("RESULT "))
            res = json.loads(line[len("RESULT ") :])
            res["process_seconds"] = time.perf_counter() - t0
            results.append(res)
            print(f"{m}: process took {res['process_seconds']:.1f} s in all", flush=True)
    print()
    head = (
        f"{'method':<10} {'modules':>7} {'fit s':>8} {'s/step':>8} {'RSS pre-fit MiB':>15} {'peak RSS MiB':>12} "
        f"{'mean R2':>8} {'min R2':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        mods = 1 if r["method"] == "multi" else a.p
        print(
            f"{r['method']:<10} {mods:>7} {r['seconds']:>8.2f} {r['seconds'] / (mods * a.steps):>8.4f} "
            f"{r['rss_before_fit_mib']:>15.0f} {r['peak_rss_mib']:>12.0f} {r['r2_mean']:>8.4f} {r['r2_min']:>8.4f}"
        )
    print()
    print("fit s: wall time of the fitting loops only (no data making or loading, evaluation, or Numba compilation:")
    print("       each process runs two untimed warm-up steps first); s/step: per module step.")
    print("RSS: each method ran in its own subprocess; 'peak RSS' is getrusage(RUSAGE_SELF).ru_maxrss of that")
    print("     whole process (torch, the loaded data and the fit), 'RSS pre-fit' its RSS just before the timed fit.")
    print(
        f"R2: on the {a.n // 10} held-out positions, per output, in the targets' own units; "
        f"torch threads {results[0]['threads']}."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
