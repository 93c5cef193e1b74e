"""Fit quality: BumpRegressor against budget-matched baselines on real 2-D data, and on few points in 10-D.

Every method sees the same 90/10 split of the same sampled points and is scored on
the held-out 10%: R^2, RMSE (in the data's units), its number of parameters and its
wall time (fit + predict). Datasets ship inside matplotlib (nothing is downloaded):

- elevation:  ``jacksboro_fault_dem.npz`` (344 x 403 digital elevation model)
- topography: ``topobathy.npz`` (91 x 120 topography/bathymetry; all 10,920 cells)
- mri:        ``s1045.ima.gz`` (256 x 256 uint16 big-endian MRI slice)
- photo:      ``grace_hopper.jpg`` (600 x 512, converted to grayscale)
- demo:       the README demo's synthetic target (``wandering.cli.demo.demo_target``)
- diabetes:   scikit-learn's ``load_diabetes`` (442 patients, d = 10, ships with scikit-learn):
  few points in many dimensions. Its default budgets are ``auto`` (BumpRegressor's default
  ``n_bumps="auto"``: 4 bumps for the 398 training points), 16, 64 and 256.

A budget ``auto`` is the bump count ``n_bumps="auto"`` resolves to on the training points
(``wandering.fit.regressor.auto_n_bumps``); the bump methods then run with ``n_bumps="auto"``.

Methods, at a budget of K bumps:

- ``bump``: ``BumpRegressor(n_bumps=K)`` with its defaults.
- ``bump-norelocate``: the same with ``relocate=False`` (the relocation gain).
- ``grid-ls``: ridge least squares on a fixed g x g grid of Gaussians, g^2 ~ K
  (width and ridge picked on a validation split of the training points).
- ``grid-ls-params``: the same with (2d+1)K Gaussians: the bump model's parameter count.
- ``bump-oriented``: ``BumpRegressor(n_bumps=K, shape="oriented")``: rotated bumps, each with
  d(d-1)/2 angles more.
- ``grid-ls-oriented-params``: the grid with (2d + d(d-1)/2 + 1)K Gaussians: the oriented
  model's parameter count.
- ``rbf-K``: ``scipy.interpolate.RBFInterpolator`` through K training points (thin-plate spline;
  at least d + 1).
- ``rbf-all``: ``RBFInterpolator`` on all training points, ``neighbors=50`` (all of them up to
  5,000 points): the interpolation reference (not budget-matched).
- ``mlp``: ``sklearn.neural_network.MLPRegressor``, two hidden layers sized to about
  (2d+1)K parameters.
- ``adam-dense``: a plain Adam fit of K dense bumps (``SumOfBumpFcns``, exact sum, no
  noise, no culling, no relocation, no least squares), k-means start, as many steps.
- ``linear``: ``sklearn.linear_model.LinearRegression`` (context, not budget-matched).

    python benchmarks/fit_quality.py --quick
    python benchmarks/fit_quality.py --datasets elevation mri --budgets 256 --methods bump grid-ls
    python benchmarks/fit_quality.py --datasets diabetes
    python benchmarks/fit_quality.py --datasets layers3d --target-r2 0.99 --points 10000 \\
        --methods bump-oriented bump grid-ls

- layers3d:   synthetic, 3-D: clustered points on four tilted thin layers (neuron-like; see
  ``layers3d``). Oriented bumps can lie flat in a layer; axis-aligned ones cannot.

``--target-r2 R2`` sweeps each method's size instead of running fixed budgets: bump methods
try K = 4, 8, ..., 1024 (or ``--budgets``), grid methods g^d Gaussians for g = 2, 3, ... up to
``--sweep-max-grid`` (4096), and each reports the parameter count at which its held-out R^2
first reaches R2 (or the best it reached). A method stops at its first success, or after three
sizes in a row that do not beat its best.
"""

from __future__ import annotations

import argparse
import gzip
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "src"))

from wandering import BumpRegressor, FitQualityWarning, SumOfBumpFcns  # noqa: E402
from wandering.fit._lstsq import solve_magnitudes  # noqa: E402
from wandering.fit.regressor import auto_n_bumps  # noqa: E402

DATASETS = ("elevation", "topography", "mri", "photo", "demo", "diabetes", "layers3d")
METHODS = ("bump", "bump-norelocate", "grid-ls", "grid-ls-params", "rbf-K", "rbf-all", "mlp", "adam-dense", "linear")
ONCE = ("rbf-all", "linear")  # not budget-matched: once per dataset
DEFAULT_BUDGETS = {"diabetes": ["auto", 16, 64, 256]}  # every other dataset: 64, 256, 1024
MAX_GRID = 1 << 14  # grid-ls: more Gaussians than this (g**d in many dimensions) is not run


# ---------------------------------------------------------------- data
def _grid_points(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rows, cols = np.indices(img.shape)
    x = np.stack([cols.ravel(), rows.ravel()], axis=1).astype(np.float64)
    return x, img.ravel().astype(np.float64)


LAYER_NOISE = 0.02  # std of the noise added to the layers3d target (its std is about 1)


def layers3d(n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Clustered points on four tilted thin layers in the unit cube (neuron-like), and a target.

    The layers (planes 0.01 thick, tilted by 15 to 60 degrees about different axes) and the
    clusters on them (10 per layer, in-plane std 0.07) are fixed; ``seed`` draws the points.
    The target varies smoothly along a layer (a product of sines in its in-plane
    coordinates u, v, different per layer), sharply across it (slope 40 per unit of the
    distance t from the layer's mid-plane, so 0.4 over its std), steps between layers
    (a level per layer), plus N(0, LAYER_NOISE^2) noise.

    Returns:
        x float64 (n_points, 3), y float64 (n_points,).
    """
    geo = np.random.default_rng(20261207)  # the fixed geometry
    tilts = np.radians([15.0, 30.0, 45.0, 60.0])
    axes = [(1.0, 0.0), (0.0, 1.0), (0.7071, 0.7071), (0.7071, -0.7071)]  # tilt axis in the x-y plane
    heights, levels, phases = [0.2, 0.4, 0.6, 0.8], [-1.0, 0.5, -0.3, 1.0], geo.uniform(0, 2 * np.pi, 4)
    rng = np.random.default_rng(seed)
    layer = rng.integers(0, 4, size=n_points)
    x = np.empty((n_points, 3))
    y = np.empty(n_points)
    for i in range(4):
        a = np.array([*axes[i], 0.0])
        a /= np.linalg.norm(a)
        normal = np.cos(tilts[i]) * np.array([0.0, 0.0, 1.0]) + np.sin(tilts[i]) * np.cross(a, [0.0, 0.0, 1.0])
        e1 = a
        e2 = np.cross(normal, e1)
        clusters = geo.uniform(-0.35, 0.35, size=(10, 2))
        sel = np.flatnonzero(layer == i)
        uv = clusters[rng.integers(0, 10, size=len(sel))] + 0.07 * rng.normal(size=(len(sel), 2))
        t = 0.01 * rng.normal(size=len(sel))
        x[sel] = np.array([0.5, 0.5, heights[i]]) + uv[:, :1] * e1 + uv[:, 1:] * e2 + t[:, None] * normal
        y[sel] = levels[i] + np.sin(6.0 * uv[:, 0] + phases[i]) * np.cos(4.0 * uv[:, 1]) + 40.0 * t
    return x, y + LAYER_NOISE * rng.normal(size=n_points)


def load(name: str, n_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    from matplotlib import cbook

    if name == "layers3d":
        return layers3d(n_points, seed)
    if name == "demo":
        from wandering.cli.demo import demo_target

        _, x, y = demo_target(seed, n_points)
        return x, y
    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        x, y = load_diabetes(return_X_y=True)
        return x.astype(np.float64), y.astype(np.float64)
    if name == "elevation":
        img = np.asarray(cbook.get_sample_data("jacksboro_fault_dem.npz")["elevation"], dtype=np.float64)
    elif name == "topography":
        img = np.asarray(cbook.get_sample_data("topobathy.npz")["topo"], dtype=np.float64)
    elif name == "mri":
        with cbook.get_sample_data("s1045.ima.gz") as f:
            raw = f.read()
        if raw[:2] == b"\x1f\x8b":  # some matplotlib versions hand back the still-compressed bytes
            raw = gzip.decompress(raw)
        img = np.frombuffer(raw, np.dtype(">u2")).reshape(256, 256).astype(np.float64)
    elif name == "photo":
        import matplotlib.image as mimage

        with cbook.get_sample_data("grace_hopper.jpg") as f:
            rgb = mimage.imread(f, format="jpg").astype(np.float64)
        img = rgb[..., :3] @ np.array([0.299, 0.587, 0.114])
    else:
        raise ValueError(f"unknown dataset {name!r}")
    x, y = _grid_points(img)
    if len(x) > n_points:
        pick = np.random.default_rng(seed).choice(len(x), size=n_points, replace=False)
        x, y = x[pick], y[pick]
    return x, y


def split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed + 1).permutation(n)
    n_test = n // 10
    return perm[n_test:], perm[:n_test]


# ---------------------------------------------------------------- baselines
def _unit(x_tr, *xs):
    lo, hi = x_tr.min(0), x_tr.max(0)
    sc = np.where(hi > lo, hi - lo, 1.0)
    return [(a - lo) / sc for a in (x_tr, *xs)]


def _grid_centres(n_bumps: int, d: int) -> np.ndarray:
    g = max(1, int(round(n_bumps ** (1.0 / d))))
    ax = (np.arange(g) + 0.5) / g
    return np.stack(np.meshgrid(*([ax] * d), indexing="ij")).reshape(d, -1), g


def _grid_fit(x, y, c, w, ridge):
    xt = torch.as_tensor(x, dtype=torch.float64)
    yt = torch.as_tensor(y, dtype=torch.float64)
    ct = torch.as_tensor(c, dtype=torch.float64)
    wt = torch.full_like(ct, w)
    m, b = solve_magnitudes(xt, yt, ct, wt, support_p=1e-8, ridge=ridge)
    return ct, wt, m, b


def _grid_predict(x, ct, wt, m, b):
    from wandering import bump_sum

    xt = torch.as_tensor(x, dtype=torch.float64)
    return (bump_sum(xt, ct, wt, m, support_p=1e-8) + b).numpy()


def grid_ls(x_tr, y_tr, x_te, n_bumps, seed):
    """Ridge LS on a fixed grid; width factor and ridge chosen on a 20% validation split."""
    xu, xv = _unit(x_tr, x_te)
    d = x_tr.shape[1]
    c, g = _grid_centres(n_bumps, d)
    if c.shape[1] > MAX_GRID:
        return None, c.shape[1] + 1
    perm = np.random.default_rng(seed + 2).permutation(len(xu))
    n_val = len(xu) // 5
    va, tr = perm[:n_val], perm[n_val:]
    best = None
    for factor in (0.7, 1.0, 1.4):
        for ridge in (1e-9, 1e-7, 1e-5, 1e-3):
            fit = _grid_fit(xu[tr], y_tr[tr], c, factor / g, ridge)
            err = float(np.mean((_grid_predict(xu[va], *fit) - y_tr[va]) ** 2))
            if best is None or err < best[0]:
                best = (err, factor, ridge)
    fit = _grid_fit(xu, y_tr, c, best[1] / g, best[2])
    return _grid_predict(xv, *fit), c.shape[1] + 1


def rbf_k(x_tr, y_tr, x_te, n_bumps, seed):
    from scipy.interpolate import RBFInterpolator

    xu, xv = _unit(x_tr, x_te)
    d = x_tr.shape[1]
    size = min(max(n_bumps, d + 1), len(xu))  # its linear term needs d + 1 points
    pick = np.random.default_rng(seed + 3).choice(len(xu), size=size, replace=False)
    f = RBFInterpolator(xu[pick], y_tr[pick], kernel="thin_plate_spline")
    return f(xv), (d + 1) * len(pick) + d + 1


def rbf_all(x_tr, y_tr, x_te, n_bumps, seed):
    from scipy.interpolate import RBFInterpolator

    xu, xv = _unit(x_tr, x_te)
    # 50 neighbours on the large 2-D sets; a small set (diabetes: a binary column leaves some
    # neighbourhoods without full rank for the linear term) is interpolated globally.
    f = RBFInterpolator(xu, y_tr, neighbors=50 if len(xu) > 5000 else None, kernel="thin_plate_spline")
    return f(xv), (x_tr.shape[1] + 1) * len(xu)


def mlp(x_tr, y_tr, x_te, n_bumps, seed):
    from sklearn.neural_network import MLPRegressor

    xu, xv = _unit(x_tr, x_te)
    d = x_tr.shape[1]
    target = (2 * d + 1) * n_bumps
    h = max(2, int(round((-(d + 3) + math.sqrt((d + 3) ** 2 + 4 * (target - 1))) / 2)))
    mu, sd = y_tr.mean(), y_tr.std() or 1.0
    net = MLPRegressor(hidden_layer_sizes=(h, h), max_iter=400, random_state=seed, learning_rate_init=3e-3)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net.fit(xu, (y_tr - mu) / sd)
    params = sum(a.size for a in net.coefs_) + sum(a.size for a in net.intercepts_)
    return net.predict(xv) * sd + mu, params


def adam_dense(x_tr, y_tr, x_te, n_bumps, seed, steps=2000, lr=0.01):
    xu, xv = _unit(x_tr, x_te)
    d = x_tr.shape[1]
    mu, sd = y_tr.mean(), y_tr.std() or 1.0
    rng = np.random.default_rng(seed)
    from wandering.fit.regressor import _weighted_kmeans

    sub = xu[rng.choice(len(xu), size=min(len(xu), 20000), replace=False)]
    cent = _weighted_kmeans(sub, n_bumps, np.ones(len(sub)), rng)
    torch.manual_seed(seed)
    mod = SumOfBumpFcns(
        torch.as_tensor(cent.T, dtype=torch.float32),
        torch.full((d, n_bumps), n_bumps ** (-1.0 / d), dtype=torch.float32),
        torch.zeros(n_bumps),
        None,
        None,
    )
    off = torch.nn.Parameter(torch.zeros(()))
    xt = torch.as_tensor(xu, dtype=torch.float32)
    yt = torch.as_tensor((y_tr - mu) / sd, dtype=torch.float32)
    opt = torch.optim.Adam([*mod.parameters(), off], lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        loss = ((mod(xt) + off - yt) ** 2).mean()
        loss.backward()
        opt.step()
    with torch.no_grad():
        pred = (mod(torch.as_tensor(xv, dtype=torch.float32)) + off).double().numpy()
    return pred * sd + mu, (2 * d + 1) * n_bumps + 1


def linear(x_tr, y_tr, x_te, n_bumps, seed):
    from sklearn.linear_model import LinearRegression

    return LinearRegression().fit(x_tr, y_tr).predict(x_te), x_tr.shape[1] + 1


def grid_ls_oriented_params(x_tr, y_tr, x_te, n_bumps, seed):
    """The grid with as many Gaussians as an oriented bump model with one output has numbers:
    (2d + d(d-1)/2 + 1) K (centres, scales, angles, magnitudes)."""
    d = x_tr.shape[1]
    return grid_ls(x_tr, y_tr, x_te, (2 * d + d * (d - 1) // 2 + 1) * n_bumps, seed)


def bump(x_tr, y_tr, x_te, n_bumps, seed, **kw):
    est = BumpRegressor(n_bumps, random_state=seed, **kw).fit(x_tr, y_tr)
    return est.predict(x_te), est.n_params_


RUNNERS = {
    "bump": lambda *a, extra=None: bump(*a, **(extra or {})),
    "bump-norelocate": lambda *a, extra=None: bump(*a, **{**(extra or {}), "relocate": False}),
    "grid-ls": lambda x, y, xt, k, s, extra=None: grid_ls(x, y, xt, k, s),
    "grid-ls-params": lambda x, y, xt, k, s, extra=None: grid_ls(x, y, xt, (2 * x.shape[1] + 1) * k, s),
    "rbf-K": lambda *a, extra=None: rbf_k(*a),
    "rbf-all": lambda *a, extra=None: rbf_all(*a),
    "mlp": lambda *a, extra=None: mlp(*a),
    "adam-dense": lambda *a, extra=None: adam_dense(*a),
    "linear": lambda *a, extra=None: linear(*a),
    "bump-oriented": lambda *a, extra=None: bump(*a, **{**(extra or {}), "shape": "oriented"}),
    "grid-ls-oriented-params": lambda *a, extra=None: grid_ls_oriented_params(*a),
}
METHODS = (*METHODS, "bump-oriented", "grid-ls-oriented-params")


def _budget(text: str):
    """A --budgets entry: a bump count, or 'auto' (BumpRegressor's n_bumps='auto')."""
    return "auto" if text == "auto" else int(text)


def _parse_set(items):
    out = {}
    for item in items or []:
        key, _, val = item.partition("=")
        for conv in (int, float):
            try:
                val = conv(val)
                break
            except ValueError:
                pass
        else:
            val = {"True": True, "False": False, "None": None}.get(val, val)
        out[key] = val
    return out


SWEEP_BUMPS = [4, 8, 16, 32, 64, 128, 256, 512, 1024]  # --target-r2: bump counts tried (or --budgets)


def _score(y_te, pred):
    res = y_te - pred
    return 1 - float((res**2).sum() / ((y_te - y_te.mean()) ** 2).sum())


def target_sweep(a) -> int:
    """--target-r2: per dataset and method, the smallest size (parameter count) reaching the target.

    Bump methods try the bump counts ``--budgets`` (default SWEEP_BUMPS) in increasing order; a
    grid method (any ``grid-ls*``) tries g^d Gaussians for g = 2, 3, ... up to MAX_GRID. Each
    stops at the first held-out R^2 >= the target; otherwise the best reached is reported."""
    extra = _parse_set(a.set)
    print(
        f"threads: torch {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f} at start; "
        f"target held-out R2 {a.target_r2}; extra settings {extra}",
        flush=True,
    )
    summary = []
    for ds in a.datasets:
        x, y = load(ds, a.points, a.seed)
        tr, te = split(len(x), a.seed)
        d = x.shape[1]
        for meth in a.methods:
            if meth.startswith("grid-ls"):
                sizes = [g**d for g in range(2, 10**6) if g**d <= a.sweep_max_grid]
                run = lambda k: grid_ls(x[tr], y[tr], x[te], k, a.seed)  # noqa: E731
            elif meth.startswith("bump"):
                sizes = sorted(a.budgets or SWEEP_BUMPS)
                run = lambda k, m=meth: RUNNERS[m](x[tr], y[tr], x[te], k, a.seed, extra=extra)  # noqa: E731
            else:
                print(f"{ds:<11}{meth:<24} skipped (--target-r2 sweeps bump and grid-ls methods)", flush=True)
                continue
            best = None
            for i, k in enumerate(sizes):
                t0 = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", FitQualityWarning)
                    pred, n_par = run(k)
                r2 = _score(y[te], pred)
                print(
                    f"{ds:<11}{meth:<24} size {k:>6}  R2 {r2:.4f}  params {n_par:>7}  {time.perf_counter() - t0:.1f} s",
                    flush=True,
                )
                if best is None or r2 > best[0]:
                    best = (r2, n_par, k)
                if r2 >= a.target_r2 or (i >= 3 and best[2] <= sizes[i - 3]):
                    break  # reached, or three sizes in a row without a better R^2
            summary.append((ds, meth, best, best[0] >= a.target_r2))
    print(f"\nparameters needed for held-out R2 >= {a.target_r2}:")
    for ds, meth, (r2, n_par, k), ok in summary:
        print(
            f"  {ds:<11}{meth:<24} "
            + (
                f"{n_par:>7} params (size {k}, R2 {r2:.4f})"
                if ok
                else f"not reached; best R2 {r2:.4f} at {n_par} params (size {k})"
            )
        )
    return 0


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=DATASETS)
    ap.add_argument(
        "--budgets",
        nargs="+",
        type=_budget,
        default=None,
        help="bump counts or 'auto' (default: 64 256 1024; diabetes: auto 16 64 256)",
    )
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    ap.add_argument("--points", type=int, default=20000, help="points sampled per dataset (before the split)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="5000 points, budgets 64 and 256")
    ap.add_argument("--set", nargs="*", metavar="KEY=VALUE", help="extra BumpRegressor settings (bump methods)")
    ap.add_argument("--markdown", action="store_true", help="print the table as markdown")
    ap.add_argument(
        "--target-r2",
        type=float,
        default=None,
        metavar="R2",
        help="sweep each method's size upwards and report the parameter count that first reaches "
        "this held-out R^2 (or the best reached)",
    )
    ap.add_argument(
        "--sweep-max-grid",
        type=int,
        default=4096,
        help="--target-r2: the most Gaussians a grid method tries (default 4096)",
    )
    a = ap.parse_args(argv)
    if a.target_r2 is not None:
        return target_sweep(a)
    if a.quick:
        a.points = min(a.points, 5000)

    def budgets(ds):
        given = a.budgets or DEFAULT_BUDGETS.get(ds, [64, 256, 1024])
        if a.quick:
            return [b for b in given if b == "auto" or b <= 256] or [64]
        return given

    extra = _parse_set(a.set)
    rows = []
    print(
        f"threads: torch {torch.get_num_threads()}; load average {os.getloadavg()[0]:.2f} at start; "
        f"extra settings {extra}",
        flush=True,
    )
    hdr = f"{'dataset':<11}{'K':>7}  {'method':<24}{'R2':>8}{'RMSE':>11}{'params':>9}{'seconds':>9}"
    print(hdr, flush=True)
    for ds in a.datasets:
        x, y = load(ds, a.points, a.seed)
        tr, te = split(len(x), a.seed)
        for k in budgets(ds):
            label = k
            if k == "auto":
                k_auto = auto_n_bumps(len(tr), x.shape[1])
                label = f"auto:{k_auto}"
            for meth in a.methods:
                if meth in ONCE and k != budgets(ds)[0]:
                    continue
                size = k_auto if k == "auto" and not meth.startswith("bump") else k
                t0 = time.perf_counter()
                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always", FitQualityWarning)
                    pred, n_par = RUNNERS[meth](x[tr], y[tr], x[te], size, a.seed, extra=extra)
                secs = time.perf_counter() - t0
                warned = any(issubclass(w.category, FitQualityWarning) for w in caught)
                if pred is None:
                    print(f"{ds:<11}{label!s:>7}  {meth:<16}{'n/a':>8}  (a grid of {n_par - 1} Gaussians)", flush=True)
                    continue
                res = y[te] - pred
                r2 = 1 - float((res**2).sum() / ((y[te] - y[te].mean()) ** 2).sum())
                rmse = float(np.sqrt((res**2).mean()))
                rows.append((ds, label if meth not in ONCE else "-", meth, r2, rmse, n_par, secs, warned))
                print(
                    f"{ds:<11}{rows[-1][1]!s:>7}  {meth:<24}{r2:>8.4f}{rmse:>11.4g}{n_par:>9}{secs:>9.1f}"
                    f"{'  FitQualityWarning' if warned else ''}",
                    flush=True,
                )
    if a.markdown:
        print("\n| dataset | K | method | held-out R² | RMSE | params | seconds |\n|---|---:|---|---:|---:|---:|---:|")
        for r in rows:
            print(
                f"| {r[0]} | {r[1]} | {r[2]} | {r[3]:.4f}{' (warned)' if r[7] else ''} | {r[4]:.4g} | {r[5]} | "
                f"{r[6]:.1f} |"
            )
    if "bump" in a.methods and "bump-norelocate" in a.methods:
        print("\nrelocation gain (R2 with - without):")
        for ds in a.datasets:
            for k in sorted({r[1] for r in rows if r[0] == ds and r[1] != "-"}, key=str):
                got = {r[2]: r[3] for r in rows if r[0] == ds and r[1] == k}
                if "bump" in got and "bump-norelocate" in got:
                    print(f"  {ds:<11} K={k:<5} {got['bump'] - got['bump-norelocate']:+.4f}")
    others = [m for m in ("bump", "grid-ls-oriented-params") if m in a.methods]
    if "bump-oriented" in a.methods and others:
        print("\noriented gain (R2 of bump-oriented minus the other's; grid-ls-oriented-params has as many numbers):")
        for ds in a.datasets:
            for k in dict.fromkeys(r[1] for r in rows if r[0] == ds and r[1] != "-"):  # budgets run, in order
                got = {r[2]: r[3] for r in rows if r[0] == ds and r[1] == k}
                diffs = [
                    f"{m} {got['bump-oriented'] - got[m]:+.4f}" for m in ("bump", "grid-ls-oriented-params") if m in got
                ]
                if diffs:
                    print(f"  {ds:<11} K={k:<5} " + "   ".join(diffs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
