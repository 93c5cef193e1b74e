"""The CLI's fit and predict: a shell over :class:`wandering.BumpRegressor`.

``fit_arrays`` splits (x, y) into training and held-out points, fits a
``BumpRegressor`` on the training points with the command's settings, and returns it
with its checkpoint dict (:mod:`wandering.fit.checkpoint`) and the metrics;
``predict_arrays`` evaluates a fitted regressor in chunks.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field

import numpy as np
import torch

from wandering.cli._errors import CliError, require
from wandering.fit import checkpoint
from wandering.fit._settings import FitSettings
from wandering.fit.regressor import BumpRegressor, FitQualityWarning, auto_n_bumps

__all__ = ["FitSettings", "FitResult", "fit_arrays", "predict_arrays", "regressor_for", "pick_device", "MIN_ROWS"]

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
    regressor: BumpRegressor
    ckpt: dict
    metrics: dict
    train_idx: np.ndarray
    hold_idx: np.ndarray
    paths: np.ndarray | None = None  # (T, d, K) in data coordinates
    losses: list = field(default_factory=list)
    warnings: list = field(default_factory=list)  # the regressor's FitQualityWarning messages

    @property
    def model(self) -> torch.nn.Module:
        """The fitted torch module (``.bumps``: the bump sum, axis-aligned or oriented), on the unit box."""
        return self.regressor.module_

    def predict(self, x: np.ndarray) -> np.ndarray:
        return predict_arrays(self.regressor, x)


def regressor_for(s: FitSettings, d: int, callback=None, n: int | None = None) -> BumpRegressor:
    """The BumpRegressor that the command's settings describe.

    ``--lr`` (one Adam rate for every parameter, in unit-box and standardised units, as
    the command had before it used BumpRegressor) sets both of the regressor's rates;
    with ``bumps="auto"`` that needs ``n``, the number of training points.
    """
    lr_position, lr_magnitude = s.lr_position, s.lr_magnitude
    if s.lr is not None:
        if s.bumps == "auto" and n is None:
            raise ValueError("regressor_for: bumps='auto' with lr needs n, the number of training points")
        k = auto_n_bumps(n, d, s.shape) if s.bumps == "auto" else s.bumps
        lr_position = s.lr * k ** (1.0 / d)  # the regressor counts it in bump spacings
        lr_magnitude = s.lr
    return BumpRegressor(
        s.bumps,
        steps=s.steps,
        batch="auto" if s.batch is None else s.batch,
        lr_position=lr_position,
        lr_magnitude=lr_magnitude,
        c_grad_std=s.c_grad_std,
        w_grad_std=s.w_grad_std,
        m_grad_gain=s.m_grad_gain,
        support_p=s.support_p,
        bounds=s.bounds,
        relocate=s.relocate,
        random_state=s.seed,
        device=s.device,
        progress=s.progress,
        callback=callback,
        shape=s.shape,
        lr_angle=s.lr_angle,
    )


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


def fit_arrays(x: np.ndarray, y: np.ndarray, s: FitSettings, x_names: list[str], y_name: str | list[str]) -> FitResult:
    """Fits a BumpRegressor to the training share of (x, y); returns it, its checkpoint and metrics.

    y (n,) with one name fits one output. y (n, P) with P names fits P outputs with ONE
    shared set of bumps (m of shape (K, P)).
    """
    n, d = x.shape
    multi = y.ndim == 2
    y_names = list(y_name) if multi else [str(y_name)]
    if multi and len(y_names) != y.shape[1]:
        raise ValueError(f"{len(y_names)} names for {y.shape[1]} outputs")
    pick_device(s.device)
    if n < MIN_ROWS:
        raise CliError(f"too few rows: {n} (at least {MIN_ROWS} are needed)")
    rng = np.random.default_rng(s.seed)
    perm = rng.permutation(n)
    n_hold = round(s.holdout * n)
    if n - n_hold < MIN_ROWS // 2:
        raise CliError(f"too few rows: {n} rows leave {n - n_hold} for training after --holdout {s.holdout}")
    hold_idx, train_idx = np.sort(perm[:n_hold]), np.sort(perm[n_hold:])
    if s.progress:
        require("tqdm")

    paths: list | None = [] if s.record_every > 0 else None

    def record(step, loss, model):
        if paths is not None and step % s.record_every == 0:
            paths.append(model.bumps.c.detach().cpu().numpy().copy())
        return False

    reg = regressor_for(s, d, callback=record if paths is not None else None, n=len(train_idx))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", FitQualityWarning)
        reg.fit(x[train_idx], y[train_idx])
    quality = []
    for w in caught:  # the fit's own verdict is returned for the command to print; others pass on
        if issubclass(w.category, FitQualityWarning):
            quality.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno, source=w.source)
    reg.callback = None  # a closure over this fit's lists: not part of the fitted estimator
    if paths is not None:
        paths.append(reg.module_.bumps.c.detach().cpu().numpy().copy())

    ckpt = checkpoint.from_regressor(reg, x_names, y_names if multi else y_names[0])
    pred = predict_arrays(reg, x)
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
    losses = list(reg.loss_curve_)
    metrics = {
        **head,
        "seconds": reg.fit_seconds_,
        "n_train": len(train_idx),
        "n_holdout": len(hold_idx),
        "d": int(d),
        "bumps": int(reg.n_bumps_),
        "shape": s.shape,
        "validation_r2": reg.validation_score_,
        "steps": len(losses),
        "final_loss": losses[-1] if losses else None,
        "device": str(reg.module_.offset.device),
        "seed": int(s.seed),
        "relocated": int(reg.relocated_),
    }
    if multi:
        metrics["n_outputs"] = len(y_names)
        metrics["outputs"] = per
    if paths is not None:
        paths = np.stack(paths) * reg.x_scale_[None, :, None] + reg.x_lo_[None, :, None]
    return FitResult(reg, ckpt, metrics, train_idx, hold_idx, paths, losses, quality)


def predict_arrays(reg: BumpRegressor, x: np.ndarray, chunk: int = 1_000_000) -> np.ndarray:
    """Predictions in the data's units for points x (n, d), ``chunk`` rows at a time (bounded memory).

    Shape (n,) for a single-output model, (n, P) for P outputs.
    """
    out = [reg.predict(x[i : i + chunk]) for i in range(0, len(x), chunk)]
    if not out:
        return np.zeros((0,) if reg.n_outputs_ == 1 and reg._y_ndim == 1 else (0, reg.n_outputs_))
    return np.concatenate(out)


def load_regressor(path: str, device: str = "cpu") -> tuple[BumpRegressor, dict]:
    """A checked checkpoint file and the fitted regressor it describes; problems become one-line errors."""
    dev = str(pick_device(device))
    try:
        ckpt = checkpoint.load(path)
    except checkpoint.CheckpointError as e:
        raise CliError(str(e)) from None
    try:
        return checkpoint.to_regressor(ckpt, dev), ckpt
    except checkpoint.CheckpointError as e:
        raise CliError(f"{path}: {e}") from None
