"""The ``wandering`` command's input and output on a large table: reading, predicting, writing.

Makes (once, seeded) a 3-column CSV (c0, c1, val) and the same data as .npz (x, y) with
N rows in DIR, fits a small model on the first 2000 rows, then times, each the median
of --repeat runs, in this process:

- reading the CSV and the .npz as ``fit`` does (``read_table``);
- ``predict`` on all N rows alone (the model's forward pass, ``predict_arrays``);
- the whole ``wandering predict`` command, CSV in and CSV out, and npz in and npz out.

    python benchmarks/bench_cli_io.py [--rows 2000000] [--dir /tmp/wandering_bench_io] [--repeat 1]
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np


def make_data(folder: str, n: int) -> tuple[str, str, str]:
    os.makedirs(folder, exist_ok=True)
    csv_path, npz_path = os.path.join(folder, f"data_{n}.csv"), os.path.join(folder, f"data_{n}.npz")
    small = os.path.join(folder, "small.csv")
    rng = np.random.default_rng(0)
    x = rng.uniform(-1, 2, size=(n, 2))
    y = np.sin(2 * x).sum(1) + rng.normal(scale=0.02, size=n)
    if not os.path.exists(csv_path):
        np.savetxt(csv_path, np.column_stack([x, y]), delimiter=",", header="c0,c1,val", comments="", fmt="%.17g")
    if not os.path.exists(npz_path):
        np.savez(npz_path, x=x, y=y)
    np.savetxt(
        small, np.column_stack([x[:2000], y[:2000]]), delimiter=",", header="c0,c1,val", comments="", fmt="%.17g"
    )
    return csv_path, npz_path, small


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=2_000_000)
    ap.add_argument("--dir", default="/tmp/wandering_bench_io")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args()

    from wandering.cli import load_checkpoint as load_model
    from wandering.cli import main as cli
    from wandering.cli._data import read_table
    from wandering.cli._recipe import predict_arrays

    csv_path, npz_path, small = make_data(a.dir, a.rows)
    fit_dir = os.path.join(a.dir, "fit")
    assert (
        cli(["fit", small, "--out", fit_dir, "--steps", "50", "--bumps", "16", "--quiet", "--no-plot", "--force"]) == 0
    )
    model, _ = load_model(os.path.join(fit_dir, "model.pt"))
    x = np.load(npz_path)["x"]
    predict_arrays(model, x[:20000])  # warm-up: Numba's one-off compilation is not timed

    rows = [
        ("read CSV (fit)", lambda: read_table(csv_path)),
        ("read npz (fit)", lambda: read_table(npz_path)),
        ("predict_arrays alone", lambda: predict_arrays(model, x)),
        (
            "predict command, CSV -> CSV",
            lambda: cli(
                [
                    "predict",
                    os.path.join(fit_dir, "model.pt"),
                    csv_path,
                    "-o",
                    os.path.join(a.dir, "pred.csv"),
                    "--force",
                ]
            ),
        ),
        (
            "predict command, npz -> npz",
            lambda: cli(
                [
                    "predict",
                    os.path.join(fit_dir, "model.pt"),
                    npz_path,
                    "-o",
                    os.path.join(a.dir, "pred.npz"),
                    "--force",
                ]
            ),
        ),
    ]
    print(f"{a.rows} rows, 2 coordinates + 1 value; median of {a.repeat}")
    for name, fn in rows:
        print(f"  {name:<30} {timed(fn, a.repeat):7.2f} s", flush=True)


if __name__ == "__main__":
    main()
