"""Fit time: a default ``BumpRegressor`` fit of 1e5 2-D points with K = 256.

Each run is its own process (thread settings are fixed before torch and numba load),
on real data shipped with matplotlib (``fit_quality.load``: the elevation model and
the photograph, 100,000 grid points each, 90% fitted) and on the README demo's target.
It prints the whole fit's wall time (``fit_seconds_``: placement, least squares, all
steps, the polish), the median step, the first call's share (Numba's cache load) and
the held-out R^2, at one thread and at the default (all cores).

    python benchmarks/bench_fit_time.py
    python benchmarks/bench_fit_time.py --datasets elevation --threads 1 --points 20000
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def _run_one(dataset: str, points: int, bumps: int, seed: int) -> dict:
    sys.path.insert(0, HERE)
    import numpy as np
    import torch
    from fit_quality import load  # the same data and sampling as the fit-quality table

    from wandering import BumpRegressor

    x, y = load(dataset, points, seed)
    perm = np.random.default_rng(seed).permutation(len(x))
    hold, train = perm[: len(x) // 10], perm[len(x) // 10 :]
    warm = BumpRegressor(8, steps=3, random_state=0)  # loads Numba's cached kernels: not the fit's time
    t0 = time.perf_counter()
    warm.fit(x[train[:2000]], y[train[:2000]])
    warm_s = time.perf_counter() - t0
    stamps: list[float] = []
    reg = BumpRegressor(bumps, random_state=seed, callback=lambda step, loss, model: stamps.append(time.perf_counter()))
    reg.fit(x[train], y[train])
    steps = np.diff(stamps)
    return {
        "dataset": dataset, "points": len(x), "train": len(train), "bumps": bumps,
        "threads": torch.get_num_threads(), "fit_s": reg.fit_seconds_,
        "steps_s": stamps[-1] - stamps[0] if stamps else 0.0, "step_ms": 1e3 * float(np.median(steps)),
        "warmup_s": warm_s, "r2": reg.score(x[hold], y[hold]),
    }  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=["elevation", "photo", "demo"])
    ap.add_argument("--points", type=int, default=100_000)
    ap.add_argument("--bumps", type=int, default=256)
    ap.add_argument("--threads", nargs="+", default=["1", "default"], help="1, 2, ... or default")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # internal: run in this process
    a = ap.parse_args()
    if a.one:
        print("RESULT " + json.dumps(_run_one(a.datasets[0], a.points, a.bumps, a.seed)), flush=True)
        return 0
    print(f"{'dataset':<10} {'threads':>7} {'fit s':>7} {'steps s':>8} {'step ms':>8} {'warm-up s':>9} {'R^2':>7}")
    for ds in a.datasets:
        for th in a.threads:
            env = dict(os.environ)
            if th != "default":
                for var in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS", "MKL_NUM_THREADS"):
                    env[var] = th
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "--one",
                "--datasets",
                ds,
                "--points",
                str(a.points),
                "--bumps",
                str(a.bumps),
                "--seed",
                str(a.seed),
            ]
            r = subprocess.run(cmd, capture_output=True, text=True, env=env)
            line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
            if r.returncode != 0 or line is None:
                print(f"{ds:<10} {th:>7} FAILED: {(r.stderr or r.stdout).strip().splitlines()[-1:]}")
                continue
            res = json.loads(line[len("RESULT ") :])
            print(
                f"{ds:<10} {res['threads']:>7} {res['fit_s']:>7.1f} {res['steps_s']:>8.1f} {res['step_ms']:>8.1f} "
                f"{res['warmup_s']:>9.1f} {res['r2']:>7.4f}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
