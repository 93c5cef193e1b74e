"""The ``wandering`` command: ``demo``, ``fit`` and ``predict``.

The parser is built inside :func:`main`, so importing this module costs nothing.
matplotlib and tqdm (the ``wandering[cli]`` extra) are imported only when used.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ._cli_data import CliError, Table, read_table, write_predictions

FORMAT_TAG = "wandering-cli-model"
FORMAT_VERSION = 1  # one output: m (K,), scalar offset and y_mean/y_std, "y_name"
FORMAT_VERSION_MULTI = 2  # P > 1 outputs: m (K, P), offset/y_mean/y_std (P,), "y_names"
MIN_ROWS = 10
PLOT_OUTPUTS = 4  # fit.png shows at most this many outputs


# ---------------------------------------------------------------- helpers
def _require(module: str):
    """Imports an optional dependency or says which extra to install."""
    try:
        return __import__(module)
    except ImportError:
        raise CliError(f"{module} is required for this command: pip install 'wandering[cli]'") from None


def _pick_device(name: str) -> torch.device:
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError):
        raise CliError(f"--device: unknown device {name!r} (try cpu or cuda)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise CliError(f"--device: {name!r} requested but CUDA is not available")
    if dev.type == "mps" and not torch.backends.mps.is_available():
        raise CliError(f"--device: {name!r} requested but MPS is not available")
    if dev.type not in ("cpu", "cuda", "mps"):
        raise CliError(f"--device: unsupported device {name!r} (try cpu or cuda)")
    return dev


def _prepare_out_dir(out: str, names: list[str], force: bool) -> None:
    """Creates DIR; refuses to overwrite any file we would write unless --force."""
    if os.path.exists(out) and not os.path.isdir(out):
        raise CliError(f"--out {out}: exists and is not a directory")
    clash = [n for n in names if os.path.exists(os.path.join(out, n))]
    if clash and not force:
        raise CliError(f"--out {out}: would overwrite {', '.join(clash)} (use --force)")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise CliError(f"--out {out}: cannot create directory ({e.strerror or e})") from None


def _parse_bounds(text: str | None, d: int) -> np.ndarray | None:
    """'lo:hi' for every dimension, or 'lo:hi,lo:hi,...' one per dimension."""
    if text is None:
        return None
    parts = [p.strip() for p in text.split(",")]
    if len(parts) == 1:
        parts = parts * d
    if len(parts) != d:
        raise CliError(f"--bounds: expected 1 or {d} 'lo:hi' pairs, but got {len(parts)}")
    out = np.empty((d, 2))
    for j, p in enumerate(parts):
        try:
            lo, hi = (float(s) for s in p.split(":"))
        except ValueError:
            raise CliError(f"--bounds: {p!r} is not 'lo:hi'") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise CliError(f"--bounds: need finite lo < hi, but got {p!r}")
        out[j] = lo, hi
    return out


# ---------------------------------------------------------------- fitting
@dataclass
class FitSettings:
    bumps: int = 64
    steps: int = 2000
    lr: float = 0.02
    batch: int = 4096
    c_grad_std: float = 0.001
    w_grad_std: float = 0.0
    m_grad_gain: float = 0.0
    support_p: float = 0.01
    holdout: float = 0.1
    seed: int = 0
    bounds: np.ndarray | None = None
    device: str = "cpu"
    progress: bool = True
    record_every: int = 0  # >0: keep centre paths (demo)


@dataclass
class FitResult:
    model: torch.nn.Module
    ckpt: dict
    metrics: dict
    train_idx: np.ndarray
    hold_idx: np.ndarray
    paths: np.ndarray | None = None  # (T, d, K) in data coordinates
    losses: list = field(default_factory=list)


def _kmeans_centres(xs: np.ndarray, k: int, rng: np.random.Generator, iters: int = 8) -> np.ndarray:
    """A few Lloyd steps from a random subset: centres where the data are."""
    n = xs.shape[0]
    cent = xs[rng.choice(n, size=k, replace=k > n)].copy()
    if k > n:  # more bumps than points: spread duplicates a little
        cent += rng.normal(scale=0.01, size=cent.shape)
        return np.clip(cent, 0.0, 1.0)
    for _ in range(iters):
        # |x|^2 is the same for every centre, so (n, K) distances need no (n, K, d) array.
        lab = ((cent * cent).sum(1)[None] - 2.0 * xs @ cent.T).argmin(1)
        counts = np.bincount(lab, minlength=k)
        sums = np.zeros_like(cent)
        np.add.at(sums, lab, xs)
        filled = counts > 0  # an empty cluster keeps its centre
        cent[filled] = sums[filled] / counts[filled, None]
    return cent


def _init_magnitudes(xs, ys, cent, w0, ridge=1e-3) -> tuple[np.ndarray, float | np.ndarray]:
    """Ridge least squares for m and an offset: the sum is linear in them, so start at the optimum.

    ys (n,) gives m (K,) and a float offset; ys (n, P) gives m (K, P) and offsets (P,),
    each output's own least-squares solution (one factorisation shared by all P).
    """
    z = (xs[:, None, :] - cent[None]) / w0  # (n, K, d)
    phi = np.exp(-(z * z).sum(-1))
    phi = np.concatenate([phi, np.ones((phi.shape[0], 1))], axis=1)
    a = phi.T @ phi + ridge * len(xs) * np.eye(phi.shape[1])
    sol = np.linalg.solve(a, phi.T @ ys)
    return sol[:-1], (float(sol[-1]) if ys.ndim == 1 else sol[-1])


class _Fitted(torch.nn.Module):
    """A bump sum on the unit box plus a learned offset, on the standardised target.

    One output: offset is a scalar and the output (n,). P outputs: offset (P,), output (n, P).
    """

    def __init__(self, bumps: torch.nn.Module, offset) -> None:
        super().__init__()
        self.bumps = bumps
        off = torch.tensor(np.asarray(offset, dtype=np.float64), dtype=bumps.c.dtype, device=bumps.c.device)
        self.offset = torch.nn.Parameter(off)

    def forward(self, xu: torch.Tensor) -> torch.Tensor:
        return self.bumps(xu) + self.offset


def _build_model(d, k, c, w, m, offset, c_bounds, w_bounds, s: FitSettings, dev) -> _Fitted:
    from .modules import SlowSumOfBumpFcns

    f = lambda a: torch.as_tensor(a, dtype=torch.float32)  # noqa: E731
    bumps = SlowSumOfBumpFcns(
        f(c), f(w), f(m), f(c_bounds), f(w_bounds), float(s.c_grad_std), float(s.w_grad_std),
        float(s.m_grad_gain), float(s.support_p), device=dev,
    )
    return _Fitted(bumps, offset)


def _metrics(y, pred) -> dict:
    if len(y) == 0:
        return {"r2": None, "rmse": None}
    sse = float(((y - pred) ** 2).sum())
    sst = float(((y - y.mean()) ** 2).sum())
    return {"r2": (1.0 - sse / sst) if sst > 0 else None, "rmse": math.sqrt(sse / len(y))}


def _mean_or_none(values) -> float | None:
    """Mean of the values that are defined; None when none is (no hold-out, constant outputs)."""
    vals = [v for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def output_names(ckpt: dict) -> list[str]:
    """The value columns a checkpoint was fitted on: one name (version 1) or P (version 2)."""
    return list(ckpt["y_names"]) if "y_names" in ckpt else [str(ckpt["y_name"])]


def fit_arrays(
    x: np.ndarray, y: np.ndarray, s: FitSettings, x_names: list[str], y_name: str | list[str]
) -> FitResult:
    """Fits a bounded, wandering bump sum to (x, y); returns the model, checkpoint and metrics.

    y (n,) with one name fits one output, as the single-output CLI always has. y (n, P)
    with P names fits P outputs with ONE shared set of bumps: m has shape (K, P), and
    the target standardisation, initial magnitudes and offset are per output.
    """
    n, d = x.shape
    multi = y.ndim == 2
    y_names = list(y_name) if multi else [str(y_name)]
    if multi and len(y_names) != y.shape[1]:
        raise ValueError(f"{len(y_names)} names for {y.shape[1]} outputs")
    dev = _pick_device(s.device)
    if n < MIN_ROWS:
        raise CliError(f"too few rows: {n} (at least {MIN_ROWS} are needed)")
    rng = np.random.default_rng(s.seed)
    torch.manual_seed(s.seed)  # also fixes the modules' noise seeds
    perm = rng.permutation(n)
    n_hold = int(round(s.holdout * n))
    if n - n_hold < MIN_ROWS // 2:
        raise CliError(f"too few rows: {n} rows leave {n - n_hold} for training after --holdout {s.holdout}")
    hold_idx, train_idx = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])

    # Work on the unit box and a standardised target; predict undoes both.
    x_lo = x.min(0)
    x_scale = x.max(0) - x_lo
    x_scale[x_scale == 0] = 1.0
    if multi:  # per output; a constant output keeps std 1
        y_mean = y[train_idx].mean(0)
        y_std = y[train_idx].std(0)
        y_std[y_std == 0] = 1.0
    else:
        y_mean = float(y[train_idx].mean())
        y_std = float(y[train_idx].std()) or 1.0
    xu = (x - x_lo) / x_scale
    yu = (y - y_mean) / y_std

    k = s.bumps
    c_bounds = np.tile([0.0, 1.0], (d, 1)) if s.bounds is None else (s.bounds - x_lo[:, None]) / x_scale[:, None]
    w0 = 1.0 / k ** (1.0 / d)  # one bump per cell of a K-cell grid on the unit box
    w_bounds = np.tile([0.1 * w0, 2.0], (d, 1))
    xt_np = xu[train_idx]
    sub = xt_np[rng.choice(len(xt_np), size=min(len(xt_np), 20000), replace=False)]
    cent = np.clip(_kmeans_centres(sub, k, rng), c_bounds[:, 0], c_bounds[:, 1])
    pick = rng.choice(len(xt_np), size=min(len(xt_np), 5000), replace=False)
    m0, b0 = _init_magnitudes(xt_np[pick], yu[train_idx][pick], cent, w0)
    model = _build_model(d, k, cent.T, np.full((d, k), w0), m0, b0, c_bounds, w_bounds, s, dev)

    xt = torch.as_tensor(xt_np, dtype=torch.float32, device=dev)
    yt = torch.as_tensor(yu[train_idx], dtype=torch.float32, device=dev)
    opt = torch.optim.Adam(model.parameters(), lr=s.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=s.steps, eta_min=0.05 * s.lr)
    gen = torch.Generator(device="cpu").manual_seed(s.seed)
    batch = min(s.batch, len(xt))
    paths = [] if s.record_every > 0 else None

    bar = None
    if s.progress:
        tqdm = _require("tqdm").tqdm
        bar = tqdm(total=s.steps, desc="fitting", unit="step", file=sys.stderr, dynamic_ncols=True)
    losses = []
    t0 = time.perf_counter()
    for step in range(s.steps):
        if paths is not None and step % s.record_every == 0:
            paths.append(model.bumps.c.detach().cpu().numpy().copy())
        if batch < len(xt):
            idx = torch.randint(len(xt), (batch,), generator=gen).to(dev)
            xb, yb = xt[idx], yt[idx]
        else:
            xb, yb = xt, yt
        opt.zero_grad(set_to_none=True)
        loss = torch.mean((model(xb) - yb) ** 2)
        loss.backward()
        model.bumps.pert_grads()
        opt.step()
        model.bumps.bound()
        sched.step()
        losses.append(loss.detach().item())
        if bar is not None:
            bar.update(1)
            if step % 20 == 0 or step == s.steps - 1:
                bar.set_postfix(loss=f"{losses[-1]:.4g}", refresh=False)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if paths is not None:
        paths.append(model.bumps.c.detach().cpu().numpy().copy())

    ckpt = {
        "format": FORMAT_TAG,
        "version": FORMAT_VERSION,
        "d": int(d),
        "n_bumps": int(k),
        "c_bounds": model.bumps.c_bounds.detach().cpu(),
        "w_bounds": model.bumps.w_bounds.detach().cpu(),
        "c_grad_std": float(s.c_grad_std),
        "w_grad_std": float(s.w_grad_std),
        "m_grad_gain": float(s.m_grad_gain),
        "support_p": float(s.support_p),
        "state_dict": {k_: v.detach().cpu() for k_, v in model.state_dict().items()},
        "x_lo": torch.as_tensor(x_lo, dtype=torch.float64),
        "x_scale": torch.as_tensor(x_scale, dtype=torch.float64),
        "y_mean": y_mean,
        "y_std": y_std,
        "x_names": list(x_names),
        "y_name": y_names[0],
    }
    if multi:  # version 1 readers refuse it by version rather than failing on shapes
        ckpt["version"] = FORMAT_VERSION_MULTI
        ckpt["y_mean"] = torch.as_tensor(y_mean, dtype=torch.float64)
        ckpt["y_std"] = torch.as_tensor(y_std, dtype=torch.float64)
        del ckpt["y_name"]
        ckpt["y_names"] = y_names
        ckpt["n_outputs"] = len(y_names)
    pred = predict_arrays(model, ckpt, x)
    if multi:
        per = {}
        for j, name in enumerate(y_names):
            tr = _metrics(y[train_idx, j], pred[train_idx, j])
            ho = _metrics(y[hold_idx, j], pred[hold_idx, j])
            per[name] = {"r2": ho["r2"], "rmse": ho["rmse"], "train_r2": tr["r2"], "train_rmse": tr["rmse"]}
        # Top level: the mean over outputs, so single-output readers keep working.
        head = {key: _mean_or_none(o[key] for o in per.values()) for key in ("r2", "rmse", "train_r2", "train_rmse")}
    else:
        tr, ho = _metrics(y[train_idx], pred[train_idx]), _metrics(y[hold_idx], pred[hold_idx])
        head = {"r2": ho["r2"], "rmse": ho["rmse"], "train_r2": tr["r2"], "train_rmse": tr["rmse"]}
    metrics = {
        **head,
        "seconds": seconds,
        "n_train": int(len(train_idx)),
        "n_holdout": int(len(hold_idx)),
        "d": int(d),
        "bumps": int(k),
        "steps": int(s.steps),
        "final_loss": losses[-1] if losses else None,
        "device": str(dev),
        "seed": int(s.seed),
    }
    if multi:
        metrics["n_outputs"] = len(y_names)
        metrics["outputs"] = per
    if paths is not None:
        paths = np.stack(paths) * x_scale[None, :, None] + x_lo[None, :, None]
    return FitResult(model, ckpt, metrics, train_idx, hold_idx, paths, losses)


def predict_arrays(model: _Fitted, ckpt: dict, x: np.ndarray, chunk: int = 8192) -> np.ndarray:
    """Predictions in the data's units for points x (n, d), in chunks to bound memory.

    Shape (n,) for a single-output model, (n, P) for P outputs.
    """
    x_lo = ckpt["x_lo"].numpy()
    x_scale = ckpt["x_scale"].numpy()
    dev = model.offset.device
    out = []
    with torch.no_grad():
        for i in range(0, len(x), chunk):
            xu = torch.as_tensor((x[i : i + chunk] - x_lo) / x_scale, dtype=torch.float32, device=dev)
            out.append(model(xu).double().cpu().numpy())
    yu = np.concatenate(out) if out else np.zeros((0, *model.offset.shape))
    y_std, y_mean = (np.asarray(ckpt[k], dtype=np.float64) if torch.is_tensor(ckpt[k]) else ckpt[k]
                     for k in ("y_std", "y_mean"))
    return yu * y_std + y_mean


def load_checkpoint(path: str, device: str = "cpu") -> tuple[_Fitted, dict]:
    """Loads one of our checkpoints (weights_only) and rebuilds the model."""
    if not os.path.exists(path):
        raise CliError(f"{path}: no such file")
    if os.path.isdir(path):
        raise CliError(f"{path}: is a directory, not a model file")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - pickles of anything else are refused, not executed
        raise CliError(f"{path}: not a wandering model checkpoint (cannot be loaded)") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT_TAG:
        raise CliError(f"{path}: not a wandering model checkpoint (no {FORMAT_TAG!r} format tag)")
    version = ckpt.get("version")
    if version not in (FORMAT_VERSION, FORMAT_VERSION_MULTI):
        need = f"{FORMAT_VERSION} or {FORMAT_VERSION_MULTI}"
        raise CliError(f"{path}: checkpoint version {version!r} is not supported (need {need})")
    dev = _pick_device(device)
    try:
        d, k = ckpt["d"], ckpt["n_bumps"]
        sd = ckpt["state_dict"]
        s = FitSettings(
            c_grad_std=ckpt["c_grad_std"], w_grad_std=ckpt["w_grad_std"],
            m_grad_gain=ckpt["m_grad_gain"], support_p=ckpt["support_p"],
        )
        m = sd["bumps.m"]
        if version == FORMAT_VERSION_MULTI:
            p = len(ckpt["y_names"])
            shapes = (tuple(m.shape[1:]), tuple(ckpt["y_mean"].shape), tuple(ckpt["y_std"].shape))
            if m.dim() != 2 or shapes != ((p,), (p,), (p,)):
                raise ValueError("outputs do not match")
            offset = np.zeros(p)
        else:
            if m.dim() != 1:
                raise ValueError("version 1 has one output")
            output_names(ckpt)
            offset = 0.0
        model = _build_model(
            d, k, sd["bumps.c"], sd["bumps.w"], m, offset, ckpt["c_bounds"], ckpt["w_bounds"], s, dev
        )
        model.load_state_dict(sd)
    except (KeyError, RuntimeError, ValueError, TypeError, AttributeError) as e:
        raise CliError(f"{path}: damaged wandering checkpoint ({type(e).__name__})") from None
    return model, ckpt


def _save(obj: dict, path: str) -> None:
    torch.save(obj, path)


def _write_json(obj: dict, path: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2)
        f.write("\n")


def _fmt(v) -> str:
    return "n/a" if v is None else f"{v:.4g}"


# ---------------------------------------------------------------- commands
def _settings(a: argparse.Namespace, d: int) -> FitSettings:
    for name in ("bumps", "steps", "batch"):
        if getattr(a, name) <= 0:
            raise CliError(f"--{name} must be a positive integer, but got {getattr(a, name)}")
    if not (a.lr > 0 and math.isfinite(a.lr)):
        raise CliError(f"--lr must be > 0, but got {a.lr}")
    for name in ("c_grad_std", "w_grad_std", "m_grad_gain"):
        v = getattr(a, name)
        if not (v >= 0 and math.isfinite(v)):
            raise CliError(f"--{name.replace('_', '-')} must be >= 0, but got {v}")
    if not (0 < a.support_p < 1):
        raise CliError(f"--support-p must be in (0, 1), but got {a.support_p}")
    if not (0 <= a.holdout < 1):
        raise CliError(f"--holdout must be in [0, 1), but got {a.holdout}")
    return FitSettings(
        bumps=a.bumps, steps=a.steps, lr=a.lr, batch=a.batch, c_grad_std=a.c_grad_std,
        w_grad_std=a.w_grad_std, m_grad_gain=a.m_grad_gain, support_p=a.support_p,
        holdout=a.holdout, seed=a.seed, bounds=_parse_bounds(a.bounds, d), device=a.device,
        progress=not a.quiet,
    )


def _cmd_fit(a: argparse.Namespace) -> int:
    _pick_device(a.device)  # fail before reading a large file
    table = read_table(a.data, a.x_cols, a.y_col, need_y=True, y_cols=a.y_cols)
    n, d = table.x.shape
    s = _settings(a, d)
    if n < MIN_ROWS:
        raise CliError(f"{a.data}: too few rows: {n} (at least {MIN_ROWS} are needed)")
    plot = d <= 3 and not a.no_plot
    outputs = ["model.pt", "metrics.json"] + (["fit.png"] if plot else [])
    _prepare_out_dir(a.out, outputs, a.force)
    if plot:
        _require("matplotlib")  # before the fit, not after it
    multi = table.y.ndim == 2
    res = fit_arrays(table.x, table.y, s, table.x_names, table.y_names if multi else table.y_name)
    res.metrics["data"] = os.path.abspath(a.data)
    _save(res.ckpt, os.path.join(a.out, "model.pt"))
    _write_json(res.metrics, os.path.join(a.out, "metrics.json"))
    if plot:
        from ._cli_plots import plot_fit

        plot_fit(os.path.join(a.out, "fit.png"), table, res, predict_arrays, max_outputs=PLOT_OUTPUTS)
    m = res.metrics
    if multi:
        width = max(len(name) for name in table.y_names)
        for name, o in m["outputs"].items():
            print(f"  {name:<{width}}  held-out R^2 {_fmt(o['r2'])}  RMSE {_fmt(o['rmse'])}  "
                  f"(train R^2 {_fmt(o['train_r2'])})")
        print(f"mean over {len(table.y_names)} outputs: held-out R^2 {_fmt(m['r2'])}  RMSE {_fmt(m['rmse'])}  "
              f"(train R^2 {_fmt(m['train_r2'])})  time {m['seconds']:.1f} s")
    else:
        print(f"held-out R^2 {_fmt(m['r2'])}  RMSE {_fmt(m['rmse'])}  (train R^2 {_fmt(m['train_r2'])})  "
              f"time {m['seconds']:.1f} s")
    if d > 3:
        print(f"no fit.png: plots are made for d <= 3, this data has d = {d}")
    elif plot and multi and len(table.y_names) > PLOT_OUTPUTS:
        print(f"fit.png shows the first {PLOT_OUTPUTS} of {len(table.y_names)} outputs "
              f"({', '.join(table.y_names[:PLOT_OUTPUTS])})")
    print(f"wrote {', '.join(os.path.join(a.out, o) for o in outputs)}")
    return 0


def _cmd_predict(a: argparse.Namespace) -> int:
    if os.path.exists(a.output) and not a.force:
        raise CliError(f"-o {a.output}: exists (use --force to overwrite)")
    model, ckpt = load_checkpoint(a.model, a.device)
    table = read_table(a.data, a.x_cols, a.y_col, need_y=False, default_x=ckpt["x_names"], n_dims=ckpt["d"])
    if table.x.shape[1] != ckpt["d"]:
        raise CliError(f"{a.data}: the model needs {ckpt['d']} coordinate columns, but got {table.x.shape[1]}")
    if len(table.x) == 0:
        raise CliError(f"{a.data}: too few rows: 0")
    names = output_names(ckpt)
    if a.name is None:
        pred_names = [f"{v}_pred" for v in names]
    else:
        pred_names = [t.strip() for t in a.name.split(",")] if len(names) > 1 else [a.name]
        if len(pred_names) != len(names) or not all(pred_names) or len(set(pred_names)) != len(pred_names):
            raise CliError(f"--name: the model has {len(names)} outputs, so give {len(names)} different, "
                           f"comma-separated names, but got {a.name!r}")
    pred = predict_arrays(model, ckpt, table.x)
    write_predictions(a.output, table, pred, pred_names if len(names) > 1 else pred_names[0])
    outs = "" if len(names) == 1 else f" of {len(names)} outputs"
    print(f"wrote {len(pred)} predictions{outs} to {a.output}")
    return 0


# Small gradient noise: idle bumps visibly wander, working ones hold still (see demo.png).
DEMO_SETTINGS = FitSettings(bumps=48, steps=800, lr=0.01, c_grad_std=0.001, record_every=10)


def demo_target(seed: int, n_points: int, n_true: int = 10):
    """A seeded 2-D target on the unit square: rotated anisotropic Gaussian bumps plus a little noise.

    Returns (f, x, y): f(points (m, 2)) -> noiseless values, and the noisy samples.
    """
    rng = np.random.default_rng(seed)
    cent = rng.uniform(0.15, 0.85, size=(n_true, 2))
    sig = rng.uniform(0.05, 0.2, size=(n_true, 2))
    ang = rng.uniform(0, np.pi, size=n_true)
    amp = rng.choice([-1.0, 1.0], size=n_true) * rng.uniform(0.5, 1.5, size=n_true)
    rot = np.stack([np.stack([np.cos(ang), -np.sin(ang)], -1), np.stack([np.sin(ang), np.cos(ang)], -1)], -2)

    def f(p: np.ndarray) -> np.ndarray:
        d = p[:, None, :] - cent[None]  # (m, T, 2)
        u = np.einsum("tij,mtj->mti", rot.transpose(0, 2, 1), d) / sig[None]
        return (amp[None] * np.exp(-0.5 * (u * u).sum(-1))).sum(-1)

    x = rng.uniform(0, 1, size=(n_points, 2))
    clean = f(x)
    y = clean + rng.normal(scale=0.03 * clean.std(), size=n_points)
    return f, x, y


def _cmd_demo(a: argparse.Namespace) -> int:
    if a.points < MIN_ROWS:
        raise CliError(f"--points must be at least {MIN_ROWS}, but got {a.points}")
    s = _settings(a, 2)
    s.record_every = max(1, s.steps // 150)
    outputs = ["demo.png", "model.pt", "metrics.json"]
    _prepare_out_dir(a.out, outputs, a.force)
    _require("matplotlib")
    t0 = time.perf_counter()
    f, x, y = demo_target(a.seed, a.points)
    table = Table(x, y, ["x0", "x1"], ["y"], [], [])
    res = fit_arrays(x, y, s, table.x_names, table.y_name)
    from ._cli_plots import plot_demo

    plot_demo(os.path.join(a.out, "demo.png"), f, x, y, res, lambda p: predict_arrays(res.model, res.ckpt, p))
    res.metrics["seconds_total"] = time.perf_counter() - t0
    res.metrics["target"] = f"seeded synthetic 2-D bumps, seed {a.seed}, {a.points} points"
    _save(res.ckpt, os.path.join(a.out, "model.pt"))
    _write_json(res.metrics, os.path.join(a.out, "metrics.json"))
    m = res.metrics
    print(f"held-out R^2 {_fmt(m['r2'])}  RMSE {_fmt(m['rmse'])}  (train R^2 {_fmt(m['train_r2'])})")
    print(f"time {m['seconds_total']:.1f} s (fit {m['seconds']:.1f} s)")
    print(f"wrote {', '.join(os.path.join(a.out, o) for o in outputs)}")
    return 0


# ---------------------------------------------------------------- parser
class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2, no usage dump
        raise CliError(f"{message} (see '{self.prog} --help')")


def _add_fit_options(p: argparse.ArgumentParser, defaults: FitSettings, hidden: bool = False) -> None:
    h = (lambda text: argparse.SUPPRESS) if hidden else (lambda text: text + " (default: %(default)s)")  # noqa: E731
    p.add_argument("--bumps", type=int, default=defaults.bumps, metavar="K", help=h("number of bumps"))
    p.add_argument("--steps", type=int, default=defaults.steps, metavar="S", help=h("optimizer steps"))
    p.add_argument("--lr", type=float, default=defaults.lr, help=h("Adam learning rate (unit-box coordinates)"))
    p.add_argument("--batch", type=int, default=defaults.batch, help=h("minibatch size (all points if fewer)"))
    p.add_argument("--c-grad-std", type=float, default=defaults.c_grad_std, help=h("noise std on centre gradients"))
    p.add_argument("--w-grad-std", type=float, default=defaults.w_grad_std, help=h("noise std on width gradients"))
    p.add_argument("--m-grad-gain", type=float, default=defaults.m_grad_gain, help=h("decay gain on magnitudes"))
    p.add_argument("--support-p", type=float, default=defaults.support_p, help=h("support cut-off in (0, 1)"))
    p.add_argument("--holdout", type=float, default=defaults.holdout, help=h("fraction held out for R^2/RMSE"))
    p.add_argument("--seed", type=int, default=defaults.seed, help=h("random seed"))
    p.add_argument("--device", default=defaults.device, help=h("torch device (cpu, cuda, cuda:1, ...)"))
    p.add_argument("--quiet", action="store_true", help=argparse.SUPPRESS if hidden else "no progress bar")


def _build_parser() -> argparse.ArgumentParser:
    from . import __version__

    parser = _Parser(prog="wandering", description="Fit sums of wandering Gaussian bumps to data.")
    parser.add_argument("--version", action="version", version=f"wandering {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    p = sub.add_parser("demo", help="fit a seeded synthetic 2-D target and draw the result")
    p.add_argument("--out", default="wandering_demo", help="output directory (default: ./wandering_demo)")
    p.add_argument("--force", action="store_true", help="overwrite files already in --out")
    _add_fit_options(p, DEMO_SETTINGS, hidden=True)  # for tests and tinkering; the defaults are the demo
    p.add_argument("--points", type=int, default=4000, help=argparse.SUPPRESS)
    p.add_argument("--bounds", default=None, help=argparse.SUPPRESS)
    p.set_defaults(func=_cmd_demo)

    p = sub.add_parser("fit", help="fit a CSV or .npz file")
    p.add_argument("data", metavar="DATA", help="CSV with a header, or .npz with arrays x and y ((n,) or (n, P))")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory")
    p.add_argument("--x-cols", help="comma-separated coordinate columns (default: all but the value)")
    p.add_argument("--y-col", help="value column (default: the last column)")
    p.add_argument("--y-cols", metavar="A,B,...",
                   help="several comma-separated value columns, fitted together with one shared set of bumps")
    p.add_argument("--bounds", help="centre bounds 'lo:hi' or 'lo:hi,lo:hi,...' (default: the data's range)")
    _add_fit_options(p, FitSettings())
    p.add_argument("--no-plot", action="store_true", help="skip fit.png")
    p.add_argument("--force", action="store_true", help="overwrite files already in --out")
    p.set_defaults(func=_cmd_fit)

    p = sub.add_parser("predict", help="predict with a fitted model")
    p.add_argument("model", metavar="MODEL", help="model.pt written by fit or demo")
    p.add_argument("data", metavar="DATA", help="CSV with a header, or .npz with array x")
    p.add_argument("-o", "--output", required=True, metavar="OUT.csv",
                   help="CSV to write (a name ending in .npz writes arrays x, y_pred, pred_names)")
    p.add_argument("--x-cols", help="coordinate columns (default: the names the model was fitted on)")
    p.add_argument("--y-col", help="value column to echo, if present")
    p.add_argument("--name", help="prediction column name; one per output, comma-separated (default: <value>_pred)")
    p.add_argument("--device", default="cpu", help="torch device")
    p.add_argument("--force", action="store_true", help="overwrite OUT.csv")
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Runs the ``wandering`` command; returns the exit code (2 for bad input)."""
    try:
        parser = _build_parser()
        try:
            args = parser.parse_args(argv)
        except SystemExit as e:  # --help / --version
            return int(e.code or 0)
        if args.command is None:
            parser.print_help()
            return 2
        return int(args.func(args))
    except CliError as e:
        print(f"wandering: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("wandering: interrupted", file=sys.stderr)
        return 130
