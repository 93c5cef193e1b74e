"""The CLI's fitting recipe: data to a bounded, wandering bump sum, its checkpoint dict and metrics.

``fit_arrays`` fits (x, y) arrays; ``predict_arrays`` evaluates a fitted model in the
data's units; ``model_from_checkpoint`` rebuilds a model from a checked checkpoint dict
(see :mod:`wandering.checkpoint` for the format).
"""

from __future__ import annotations

import math
import sys
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from ._cli_errors import CliError, require
from ._fit_settings import FitSettings
from .checkpoint import FORMAT_TAG, FORMAT_VERSION, FORMAT_VERSION_MULTI, output_names

__all__ = ["FitSettings", "FitResult", "fit_arrays", "predict_arrays", "model_from_checkpoint", "pick_device"]

MIN_ROWS = 10


def pick_device(name: str) -> torch.device:
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
    dev = pick_device(s.device)
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
        tqdm = require("tqdm").tqdm
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


def predict_arrays(model: _Fitted, ckpt: dict, x: np.ndarray, chunk: int = 1_000_000) -> np.ndarray:
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


def model_from_checkpoint(ckpt: dict, device: str = "cpu", source: str = "checkpoint") -> tuple[_Fitted, dict]:
    """Rebuilds the fitted model from a checkpoint dict that :func:`wandering.checkpoint.load` accepted."""
    dev = pick_device(device)
    try:
        d, k = ckpt["d"], ckpt["n_bumps"]
        sd = ckpt["state_dict"]
        s = FitSettings(
            c_grad_std=ckpt["c_grad_std"], w_grad_std=ckpt["w_grad_std"],
            m_grad_gain=ckpt["m_grad_gain"], support_p=ckpt["support_p"],
        )
        m = sd["bumps.m"]
        if ckpt["version"] == FORMAT_VERSION_MULTI:
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
        raise CliError(f"{source}: damaged wandering checkpoint ({type(e).__name__})") from None
    return model, ckpt
