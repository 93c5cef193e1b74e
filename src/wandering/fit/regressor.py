"""``BumpRegressor``: a scikit-learn compatible fit of a wandering sum of Gaussian bumps.

scikit-learn is optional (the ``wandering[fit]`` extra). With it, the class derives
from ``sklearn.base.RegressorMixin`` and ``BaseEstimator`` and validates input with
sklearn's own ``validate_data`` (so it passes ``check_estimator``); without it, a
small stand-in provides ``get_params``/``set_params``/``score`` and the same checks.
"""

from __future__ import annotations

import copy
import math
import numbers
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from wandering._engine import ENGINES
from wandering.fit._lstsq import RIDGE_GRID, solve_magnitudes, solve_magnitudes_cv
from wandering.fit._oriented_init import oriented_start
from wandering.fit._settings import DEFAULT_SHAPE, SHAPES
from wandering.fit._start import _numbers_per_bump, _seed_from, _weighted_kmeans, auto_n_bumps
from wandering.fit._validation import (
    HAVE_SKLEARN,
    NotFittedError,
    _BaseEstimator,
    _RegressorMixin,
    _sk_check_is_fitted,
    _sk_validate_data,
    _validate_plain,
)
from wandering.nn import _noise
from wandering.nn.growth import ScheduledGrowth
from wandering.nn.modules import SlowSumOfBumpFcns
from wandering.nn.oriented import SlowOrientedSumOfBumpFcns
from wandering.nn.relocation import Relocation
from wandering.nn.training import attach

__all__ = ["BumpRegressor", "FitQualityWarning", "NotFittedError", "HAVE_SKLEARN", "auto_n_bumps"]

_WIDTH_LO = 0.1  # widths bounded to [0.1, 4] times the bump spacing,
_WIDTH_LO_POINTS = 1.0  # and below by this many point spacings n**(-1/d): a narrower bump fits single points
_TRAIN_RIDGE = 1.0  # Adam minimises the MSE plus this times the start's ridge penalty on the magnitudes
_INIT_POINTS, _INIT_POINTS_PER_BUMP = 20000, 32  # the placement's k-means sees at most max(these) points


class FitQualityWarning(UserWarning):
    """A fitted BumpRegressor predicts its own validation split worse than a constant."""


class _BumpModel(torch.nn.Module):
    """The fitted function on the unit box and the standardised target: bump sum + offset."""

    def __init__(self, bumps: SlowSumOfBumpFcns | SlowOrientedSumOfBumpFcns, offset: torch.Tensor) -> None:
        super().__init__()
        self.bumps = bumps
        self.offset = torch.nn.Parameter(offset)

    def forward(self, xu: torch.Tensor) -> torch.Tensor:
        return self.bumps(xu) + self.offset


def _is_oriented(bumps: torch.nn.Module) -> bool:
    return isinstance(bumps, SlowOrientedSumOfBumpFcns)


class BumpRegressor(_RegressorMixin, _BaseEstimator):
    """Regression with a trainable sum of Gaussian bumps, fitted by the library's recipe.

    The inputs are mapped to the unit box and each target standardised; K bumps are
    placed by k-means weighted by the target's variation, magnitudes and offset start at
    their exact ridge least-squares values (the ridge picked on a held-out 10% of the
    points), Adam then moves centres and widths (learning rates in units of the bump
    spacing ``K**(-1/d)``; widths kept above one point spacing ``n**(-1/d)``) and
    magnitudes (their own rate) with a cosine decay, minimising the MSE plus that same
    ridge penalty on the magnitudes (optionally relocating dead bumps to where the
    residual is large during the first part of the fit), and a final exact least-squares
    solve polishes the magnitudes with a ridge no smaller than the start's.

    With ``ridge="auto"``, ``polish`` and at least 50 points, the fit measures itself on
    the ridge's held-out 10%: ``validation_score_`` is the R^2 there of the final centres
    and widths with magnitudes solved on the other 90%, against the constant (the 90%'s
    mean). When the points are fewer than each output's parameters ``(2d + 1) K + 1``,
    the placement and Adam use the 90% only, so that those points stay unseen until the
    polish (their one earlier use: picking the start's ridge); otherwise (the fit is then
    as it was without the measure) the moving centres and widths have fitted them too and
    the figure is optimistic. A validation R^2 below 0 (worse than the constant) issues a
    :class:`FitQualityWarning` with the figures.

    Args:
        n_bumps: K, the number of bumps, or "auto": ``auto_n_bumps`` of the training
            points, ``min(256, n // (4 (2d + 1)))`` (at least 1), so that each output's
            ``(2d + 1) K`` parameters stay at most a quarter of the points (256 for 2-D data
            from 5,120 points on; 4 for 398 points in 10-D).
        steps: Optimizer steps.
        batch: Points per step. None or "auto": every training point when there are at
            most ``2**17`` (full batch), else ``2**16`` sampled per step; an int fixes it.
        lr_position: Adam learning rate of centres and widths, in units of the bump spacing.
        lr_magnitude: Adam learning rate of magnitudes and offset (standardised target units).
        lr_angle: Adam learning rate of the oriented bumps' rotation angles, in radians (shape
            "oriented" only). 0.1 rad per step turns the tip of a bump one spacing long by about
            the centres' 0.1 spacings per step; of 0.01..1 it was the most even on
            benchmarks/fit_quality.py (elevation, topography, K=256, split seeds 0 and 1).
        lr_final: The cosine decay ends at this fraction of each learning rate.
        width: Initial widths, in units of the bump spacing.
        init: "variation" (k-means weighted by the squared residual of a first fit, plus the
            density) or "kmeans" (plain k-means of the inputs).
        support_p: Each bump counts only inside its support box (ellipsoid, for oriented bumps;
            see the modules).
        shape: "axis" (axis-aligned bumps, ``SlowSumOfBumpFcns``) or "oriented" (full-covariance
            bumps, ``SlowOrientedSumOfBumpFcns``: each also learns d(d-1)/2 rotation angles;
            each starts shaped like its k-means cell's residual-weighted points, see
            ``wandering.fit._oriented_init``).
        c_grad_std, w_grad_std, m_grad_gain: Gradient noise (in unit-box coordinates), as in
            ``SlowSumOfBumpFcns``. Default 0: relocation does the moving.
        bounds: Box for the centres in data units, (d, 2) with columns lower and upper;
            None: the training data's range.
        relocate: Relocate dead bumps (see :class:`wandering.nn.relocation.Relocation`). Off by
            default: with the variation-weighted start and exact magnitudes it changed held-out
            R^2 by -0.004..+0.001 on benchmarks/fit_quality.py (K=256); it matters when bumps
            can be stranded (a start away from the data, tight bounds, culled boxes).
        relocate_every: Steps between relocation events.
        relocate_until: Relocation stops after this fraction of the steps.
        relocate_min_rel_m: Dead below this fraction of the largest |m|.
        relocate_max_fraction: At most this fraction of the bumps moves per event.
        grow_from: None (default: K bumps from the start) or an int K0 <= K: error-guided growth
            (:class:`wandering.nn.growth.ScheduledGrowth`). The fit starts with K0 bumps placed and
            solved as above (widths ``width`` times K0's spacing) and every ``grow_every`` steps
            splits the bumps under which the squared residual is largest, K growing
            geometrically to ``n_bumps`` by ``grow_until`` of the steps. Deterministic (no draw).
        grow_every: Steps between growth events.
        grow_until: Growth ends after this fraction of the steps, in (0, 1].
        ridge: Ridge penalty of the least-squares solves, relative to the mean of the design's
            diagonal; "auto" picks it from ``wandering.fit._lstsq.RIDGE_GRID`` by the error on a
            held-out 10% of the training points (the solve then uses all points; the polish
            picks no smaller a ridge than the start, whose validation points were not yet
            fitted by the moving bumps).
        polish: Solve the magnitudes and offset exactly after the last step.
        early_stopping: Train on 90% of the points only, measure the MSE on the held-out 10%
            (the ridge's validation points) every ``validation_every`` steps, and keep the
            parameters with the smallest; the polish (and its ridge choice) then uses all
            points. Off by default: on benchmarks/fit_quality.py (K=1024) it scored 0.9308 against
            0.9323 without on topography, and training on 10% fewer points cost elevation
            0.0007..0.0008 held-out R^2.
        validation_every: Steps between validation checks of early stopping.

        random_state: None, an int, or a numpy RandomState/Generator.
        device: Torch device of the fit ("cpu", "cuda", ...).
        progress: Show a tqdm progress bar (when tqdm is installed).
        callback: ``callback(step, loss, model)`` after every step; a True return stops the fit.

    Attributes:
        n_bumps_: K as fitted (``n_bumps``, or what "auto" resolved to).
        validation_score_: R^2 on the validation split, averaged over outputs (see above);
            None when there is none.
        module_: The fitted ``_BumpModel`` (``module_.bumps`` is the ``SlowSumOfBumpFcns``, or
            ``SlowOrientedSumOfBumpFcns`` for shape "oriented"; ``module_.offset`` its offset),
            working on unit-box inputs and standardised targets.
        n_features_in_: d.
        n_outputs_: P (1 for a 1-D target).
        x_lo_, x_scale_: The input map ``(X - x_lo_) / x_scale_``.
        y_mean_, y_std_: The target standardisation, (P,).
        loss_curve_: Training loss (standardised MSE) at every step.
        relocated_: Number of bumps moved by relocation in all.
        grown_: Bumps added by growth in all (0 without ``grow_from``).
        validation_loss_: With early stopping, (steps taken, validation MSE) at every check,
            from (0, ...) before the first step; else empty.
        best_step_: With early stopping, the steps taken by the kept parameters; else None.
        fit_seconds_: Wall time of the fit.

    Raises:
        TypeError, ValueError: bad settings, when :meth:`fit` is called (the constructor only
            stores them, as scikit-learn asks); see :meth:`fit`.

    Example:
        >>> import numpy as np
        >>> X = np.random.default_rng(0).uniform(size=(500, 2))
        >>> reg = BumpRegressor(n_bumps=16, steps=20, random_state=0).fit(X, np.sin(4 * X[:, 0]))
        >>> reg.predict(X[:3]).shape, reg.n_params_
        ((3,), 81)

    Also ``score(X, y)`` (R^2, averaged over outputs), ``get_params`` and ``set_params``,
    scikit-learn's.
    """

    def __init__(
        self,
        n_bumps: Any = "auto",
        *,
        steps: int = 2000,
        batch: Any = "auto",
        lr_position: float = 0.1,
        lr_magnitude: float = 0.01,
        lr_angle: float = 0.1,
        lr_final: float = 0.05,
        width: float = 0.7,
        init: str = "variation",
        support_p: float = 0.01,
        shape: str = DEFAULT_SHAPE,
        c_grad_std: float = 0.0,
        w_grad_std: float = 0.0,
        m_grad_gain: float = 0.0,
        bounds: Any = None,
        relocate: bool = False,
        relocate_every: int = 100,
        relocate_until: float = 0.5,
        relocate_min_rel_m: float = 0.02,
        relocate_max_fraction: float = 0.1,
        grow_from: Any = None,
        grow_every: int = 25,
        grow_until: float = 0.5,
        ridge: Any = "auto",
        polish: bool = True,
        early_stopping: bool = False,
        validation_every: int = 50,
        random_state: Any = None,
        device: Any = "cpu",
        progress: bool = False,
        callback: Callable | None = None,
    ) -> None:
        self.n_bumps = n_bumps
        self.steps = steps
        self.batch = batch
        self.lr_position = lr_position
        self.lr_magnitude = lr_magnitude
        self.lr_angle = lr_angle
        self.lr_final = lr_final
        self.width = width
        self.init = init
        self.support_p = support_p
        self.shape = shape
        self.c_grad_std = c_grad_std
        self.w_grad_std = w_grad_std
        self.m_grad_gain = m_grad_gain
        self.bounds = bounds
        self.relocate = relocate
        self.relocate_every = relocate_every
        self.relocate_until = relocate_until
        self.relocate_min_rel_m = relocate_min_rel_m
        self.relocate_max_fraction = relocate_max_fraction
        self.grow_from = grow_from
        self.grow_every = grow_every
        self.grow_until = grow_until
        self.ridge = ridge
        self.polish = polish
        self.early_stopping = early_stopping
        self.validation_every = validation_every
        self.random_state = random_state
        self.device = device
        self.progress = progress
        self.callback = callback

    # ---------------------------------------------------------------- sklearn protocol
    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        tags.target_tags.single_output = True
        tags.non_deterministic = False
        return tags

    def _more_tags(self) -> dict:  # scikit-learn < 1.6
        return {"multioutput": True}

    def _validate(self, X, y=None, reset=True):
        if HAVE_SKLEARN:
            if y is None and reset:
                return _sk_validate_data(self, X, y, reset=reset, dtype=np.float64)
            if y is None:
                return _sk_validate_data(self, X, reset=False, dtype=np.float64)
            return _sk_validate_data(self, X, y, reset=reset, dtype=np.float64, multi_output=True, y_numeric=True)
        return _validate_plain(self, X, y, reset=reset)

    def _check_fitted(self) -> None:
        if HAVE_SKLEARN:
            _sk_check_is_fitted(self, "module_")
        elif not hasattr(self, "module_"):
            raise NotFittedError(
                f"This {type(self).__name__} instance is not fitted yet. Call 'fit' with "
                f"appropriate arguments before using this estimator."
            )

    def _checked_params(self, d: int) -> dict:
        def pos_int(name):
            v = getattr(self, name)
            if name == "n_bumps" and isinstance(v, str):
                raise ValueError(f"n_bumps must be 'auto' or an int >= 1, but got {v!r}")
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise TypeError(f"{name} must be an int, but got {type(v).__name__}")
            if v < 1:
                raise ValueError(f"{name} must be >= 1, but got {v}")
            return int(v)

        def pos_float(name, allow_zero=False, upper=None):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, numbers.Real):
                raise TypeError(f"{name} must be a number, but got {type(v).__name__}")
            v = float(v)
            ok = math.isfinite(v) and (v >= 0 if allow_zero else v > 0) and (upper is None or v <= upper)
            if not ok:
                rng = f"{'[0' if allow_zero else '(0'}, {upper if upper is not None else 'inf'}{']' if upper else ')'}"
                raise ValueError(f"{name} must be in {rng}, but got {v}")
            return v

        p = {
            "n_bumps": "auto" if isinstance(self.n_bumps, str) and self.n_bumps == "auto" else pos_int("n_bumps"),
            "steps": pos_int("steps"),
            "relocate_every": pos_int("relocate_every"),
            "grow_every": pos_int("grow_every"),
            "grow_from": None if self.grow_from is None else pos_int("grow_from"),
            "grow_until": pos_float("grow_until", upper=1.0),
            "validation_every": pos_int("validation_every"),
            "lr_position": pos_float("lr_position", allow_zero=True),
            "lr_magnitude": pos_float("lr_magnitude", allow_zero=True),
            "lr_angle": pos_float("lr_angle", allow_zero=True),
            "lr_final": pos_float("lr_final", allow_zero=True, upper=1.0),
            "width": pos_float("width"),
            "c_grad_std": pos_float("c_grad_std", allow_zero=True),
            "w_grad_std": pos_float("w_grad_std", allow_zero=True),
            "m_grad_gain": pos_float("m_grad_gain", allow_zero=True),
            "relocate_until": pos_float("relocate_until", allow_zero=True, upper=1.0),
            "relocate_min_rel_m": pos_float("relocate_min_rel_m", allow_zero=True, upper=1.0),
            "relocate_max_fraction": pos_float("relocate_max_fraction", allow_zero=True, upper=1.0),
            "ridge": "auto"
            if isinstance(self.ridge, str) and self.ridge == "auto"
            else pos_float("ridge", allow_zero=True),
            "support_p": pos_float("support_p", upper=1.0),
        }
        if p["support_p"] >= 1.0:
            raise ValueError(f"support_p must be in (0, 1), but got {p['support_p']}")
        if not (isinstance(self.shape, str) and self.shape in SHAPES):
            raise ValueError(f"shape must be one of {SHAPES}, but got {self.shape!r}")
        if self.init not in ("variation", "kmeans"):
            raise ValueError(f"init must be 'variation' or 'kmeans', but got {self.init!r}")
        for name in ("relocate", "polish", "progress", "early_stopping"):
            if not isinstance(getattr(self, name), (bool, np.bool_)):
                raise TypeError(f"{name} must be a bool, but got {type(getattr(self, name)).__name__}")
        if self.batch is None or (isinstance(self.batch, str) and self.batch == "auto"):
            p["batch"] = None
        elif isinstance(self.batch, numbers.Integral) and not isinstance(self.batch, bool) and int(self.batch) >= 1:
            p["batch"] = int(self.batch)
        else:
            raise ValueError(f"batch must be None, 'auto' or a positive int, but got {self.batch!r}")
        if self.callback is not None and not callable(self.callback):
            raise TypeError(f"callback must be callable or None, but got {type(self.callback).__name__}")
        try:
            p["device"] = torch.device(self.device)
        except (RuntimeError, TypeError, ValueError):
            raise ValueError(f"device must name a torch device, but got {self.device!r}") from None
        if self.bounds is not None:
            b = np.asarray(self.bounds, dtype=np.float64)
            if b.shape != (d, 2) or not np.isfinite(b).all() or (b[:, 0] > b[:, 1]).any():
                raise ValueError(
                    f"bounds must be None or finite (d, 2) = ({d}, 2) with lower <= upper, but got {self.bounds!r}"
                )
            p["bounds"] = b
        else:
            p["bounds"] = None
        return p

    # ---------------------------------------------------------------- fit
    def fit(self, X, y):
        """Fits the bump sum to the points X and their values y (from scratch, every call).

        Args:
            X: Points, array-like of shape (n, d): numpy, a torch tensor, lists.
            y: Values, shape (n,) for one output or (n, P) for P outputs sharing the bumps.

        Returns:
            self, fitted (the attributes ending in ``_``).

        Raises:
            ValueError: X or y of the wrong shape, with NaN or infinity, or of different
                lengths; a setting out of range (a count < 1, a rate < 0, ``support_p``
                outside (0, 1), ``bounds`` not finite (d, 2) with lower <= upper, an unknown ``init``
                or ``batch``, a device name torch does not know).
            TypeError: sparse or non-numeric data; a setting of the wrong type (a float
                ``n_bumps``, a non-bool flag, a non-callable ``callback``).
        """
        X, y = self._validate(X, y, reset=True)
        n, d = X.shape
        p = self._checked_params(d)
        t_start = time.perf_counter()
        seed = _seed_from(self.random_state)
        rng = np.random.default_rng(seed)
        dev = p["device"]
        dtype = torch.float32

        y2 = y.reshape(n, -1)
        P = y2.shape[1]
        self._y_ndim = y.ndim
        self.n_outputs_ = P
        lo, hi = X.min(0), X.max(0)
        scale = hi - lo
        scale[scale == 0] = 1.0
        self.x_lo_, self.x_scale_ = lo, scale
        y_mean = y2.mean(0)
        y_std = y2.std(0)
        y_std[~(y_std > 0)] = 1.0
        self.y_mean_, self.y_std_ = y_mean, y_std
        xu = (X - lo) / scale
        yu = (y2 - y_mean) / y_std
        if P == 1:
            yu = yu[:, 0]  # one output: the single-output module (m of shape (K,))

        K = auto_n_bumps(n, d, self.shape) if p["n_bumps"] == "auto" else p["n_bumps"]
        self.n_bumps_ = K
        spacing = K ** (-1.0 / d)
        K0 = K if p["grow_from"] is None else p["grow_from"]  # growth: K0 bumps at the start
        if K0 > K:
            raise ValueError(f"grow_from must be <= n_bumps = {K}, but got {K0}")
        if K0 < K and p["grow_every"] >= int(p["grow_until"] * p["steps"]):
            raise ValueError(
                f"grow_every must be < grow_until * steps = {int(p['grow_until'] * p['steps'])} for "
                f"growth to reach n_bumps, but got {p['grow_every']}"
            )
        events = len(range(p["grow_every"], int(p["grow_until"] * p["steps"]), p["grow_every"]))
        if K0 < K and K0 * 2**events < K:  # an event at most doubles K
            raise ValueError(
                f"grow_from must be >= n_bumps / 2**{events} (growth events) = {K / 2**events:g} to reach "
                f"n_bumps = {K}, but got {K0} (or take more steps or a smaller grow_every)"
            )
        w0 = p["width"] * K0 ** (-1.0 / d)
        if p["bounds"] is None:
            c_bounds = np.tile([0.0, 1.0], (d, 1))
        else:
            c_bounds = (p["bounds"] - lo[:, None]) / scale[:, None]
        w_lo = max(_WIDTH_LO * spacing, _WIDTH_LO_POINTS * n ** (-1.0 / d))
        w_bounds = np.tile([min(w_lo, w0), max(4.0 * spacing, 2.0 * w0)], (d, 1))

        xt = torch.as_tensor(xu, dtype=dtype, device=dev)
        yt = torch.as_tensor(yu, dtype=dtype, device=dev)
        # With ridge="auto" and the polish, the fit measures itself on a held-out 10%
        # (validation_score_). With fewer points than each output's parameters, nothing may
        # see those points before that measure (neither the placement nor Adam) for it to
        # be honest: the split is then drawn first. Otherwise it is drawn after the placement
        # and Adam trains on every point, as without the measure.
        wants_split = p["ridge"] == "auto" or self.early_stopping
        few = p["ridge"] == "auto" and self.polish and 50 <= n < _numbers_per_bump(d, self.shape) * K + 1
        val_mask = self._validation_mask(n, rng, dev) if few else None
        if few:
            fit_np = ~val_mask.cpu().numpy()
            cent, xs0, wts0 = self._init_centres(xu[fit_np], yu[fit_np], xt[~val_mask], yt[~val_mask], K0, w0, p, rng)
        else:
            cent, xs0, wts0 = self._init_centres(xu, yu, xt, yt, K0, w0, p, rng)
        cent = np.clip(cent, c_bounds[:, 0], c_bounds[:, 1])

        kind = SlowOrientedSumOfBumpFcns if self.shape == "oriented" else SlowSumOfBumpFcns
        w_start, extra = torch.full((d, K0), w0, dtype=dtype), {}
        if self.shape == "oriented":  # each bump shaped like its cell's residual-weighted points
            ang_np, w_np = oriented_start(xs0, cent, w0, w_bounds, weights=wts0)
            w_start = torch.as_tensor(w_np, dtype=dtype)
            extra["angles"] = torch.as_tensor(ang_np, dtype=dtype)
        with torch.random.fork_rng(devices=[]):  # the module's seed draw must not touch global state
            bumps = kind(
                torch.as_tensor(cent.T, dtype=dtype),
                w_start,
                torch.zeros((K0,) if P == 1 else (K0, P), dtype=dtype),
                torch.as_tensor(c_bounds, dtype=dtype),
                torch.as_tensor(w_bounds, dtype=dtype),
                p["c_grad_std"],
                p["w_grad_std"],
                p["m_grad_gain"],
                p["support_p"],
                device=dev,
                **extra,
            )
        bumps.noise_seed.fill_(_noise.mix_key(seed, 0, 99) >> 1)
        if wants_split and val_mask is None:
            val_mask = self._validation_mask(n, rng, dev)
        split = val_mask is not None and bool(val_mask.any())
        # Early stopping (and a fit of few points) trains on the other 90% and keeps the
        # validation points unseen until the final solve.
        held_out = val_mask if split and (self.early_stopping or few) else None
        self.ridge_ = []
        m0, b0 = self._solve(xt, yt, bumps, p, val_mask, refit_all=held_out is None)
        with torch.no_grad():
            bumps.m.copy_(m0.to(dtype))
        model = _BumpModel(bumps, b0.to(dtype=dtype, device=dev).clone())

        losses = self._train(model, xt, yt, p, spacing, w0, seed, held_out, keep_best=self.early_stopping)

        self._validation = None  # set by the polish's solve
        if self.polish:
            floor = self.ridge_[0] if held_out is None and self.ridge_ else None  # see the ridge argument
            m1, b1 = self._solve(xt, yt, bumps, p, val_mask, floor=floor)
            with torch.no_grad():
                bumps.m.copy_(m1.to(dtype))
                model.offset.copy_(b1.to(dtype))
        model.eval()
        self.module_ = model
        self.loss_curve_ = losses
        self.validation_score_ = None
        if self._validation is not None:
            r2 = self._validation
            self.validation_score_ = float(np.mean(r2))
            if (r2 < 0).any():
                self._warn_worse_than_constant(r2, n, d, K, P, int(val_mask.sum()), held_out is not None)
        self.fit_seconds_ = time.perf_counter() - t_start
        return self

    def _warn_worse_than_constant(
        self, r2: np.ndarray, n: int, d: int, K: int, P: int, n_val: int, unseen: bool
    ) -> None:
        """The FitQualityWarning: one line with the validation R^2 and the size of the problem."""
        if P == 1:
            what = f"validation R^2 {r2[0]:.3g}"
        else:
            bad = np.flatnonzero(r2 < 0)
            what = (
                f"validation R^2 below 0 for output{'s' if len(bad) > 1 else ''} "
                f"{', '.join(str(int(j)) for j in bad)} of {P} (lowest {r2.min():.3g})"
            )
        n_par = self.n_params_
        seen = "" if unseen else ", though the moving bumps had fitted them too"
        auto = auto_n_bumps(n, d, self.shape)
        advice = (
            f"fewer bumps may help (n_bumps='auto' picks {auto} here)"
            if K > auto
            else "the points may hold too little signal for it, or be too few"
        )
        warnings.warn(
            f"BumpRegressor predicts its validation split worse than a constant: {what} on {n_val} held-out "
            f"points{seen} ({K} bumps, {n_par:,} parameters, {n:,} points in {d}-D); {advice}",
            FitQualityWarning,
            stacklevel=3,
        )

    @staticmethod
    def _validation_mask(n: int, rng: np.random.Generator, dev) -> torch.Tensor:
        """A random 10% of the n points (none below 50 points): the ridge's validation points."""
        val_mask = torch.zeros(n, dtype=torch.bool, device=dev)
        if n >= 50:
            val_mask[torch.as_tensor(rng.permutation(n)[: n // 10], device=dev)] = True
        return val_mask

    def _solve(self, xt, yt, bumps, p, val_mask, refit_all=True, floor=None):
        """Magnitudes and offset for the current centres and widths; appends the ridge to ``ridge_``.
        With the ridge picked on ``val_mask``, ``_validation`` becomes the (P,) R^2 there of the
        solution on the other points, against their mean."""
        angles = getattr(bumps, "angles", None)  # oriented bumps: their ellipsoids' design
        if val_mask is None or not bool(val_mask.any()):
            ridge = 1e-6 if p["ridge"] == "auto" else p["ridge"]
            m, b = solve_magnitudes(xt, yt, bumps.c, bumps.w, p["support_p"], ridge, angles=angles)
        elif p["ridge"] != "auto":  # a fixed ridge; early stopping: solved on the fit part only
            ridge = p["ridge"]
            if not refit_all:
                xt, yt = xt[~val_mask], yt[~val_mask]
            m, b = solve_magnitudes(xt, yt, bumps.c, bumps.w, p["support_p"], ridge, angles=angles)
        else:
            grid = RIDGE_GRID if floor is None else [r for r in RIDGE_GRID if r >= floor] or [floor]
            m, b, ridge, sse = solve_magnitudes_cv(
                xt,
                yt,
                bumps.c,
                bumps.w,
                p["support_p"],
                val_mask,
                ridges=grid,
                refit_all=refit_all,
                return_sse=True,
                angles=angles,
            )
            y_fit = yt[~val_mask].double().reshape(int((~val_mask).sum()), -1)
            y_val = yt[val_mask].double().reshape(int(val_mask.sum()), -1)
            sse_const = ((y_val - y_fit.mean(0)) ** 2).sum(0).cpu().numpy()  # the constant fitted on the 90%
            with np.errstate(divide="ignore", invalid="ignore"):
                self._validation = np.where(sse_const > 0, 1.0 - sse / sse_const, 0.0)
        self.ridge_.append(ridge)
        return m, b

    def _init_centres(self, xu, yu, xt, yt, K, w0, p, rng) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Centres (K, d), the (sub)sampled points they came from and each point's weight for the
        oriented start's cell shapes (its squared residual over the mean; 1 with init="kmeans")."""
        n = len(xu)
        size = max(_INIT_POINTS, _INIT_POINTS_PER_BUMP * K)  # many bumps (pictures): enough points per bump
        sub = rng.choice(n, size=size, replace=False) if n > size else np.arange(n)
        xs = xu[sub]
        cent = _weighted_kmeans(xs, K, np.ones(len(xs)), rng)
        if self.init == "kmeans" or n < 2:
            return cent, xs, np.ones(len(xs))
        # variation: weight each point by its squared residual under a first least-squares fit
        # on the k-means bumps, plus its share of the density, and place the bumps again.
        c_t = torch.as_tensor(cent.T, dtype=xt.dtype, device=xt.device)
        w_t = torch.full_like(c_t, w0)
        xsub, ysub = xt[torch.as_tensor(sub, device=xt.device)], yt[torch.as_tensor(sub, device=xt.device)]
        m, b = solve_magnitudes(xsub, ysub, c_t, w_t, p["support_p"], 1e-6)
        from wandering._engine import bump_sum

        with torch.no_grad():
            pred = bump_sum(xsub, c_t, w_t, m.to(xt.dtype).to(xt.device), support_p=p["support_p"]) + b.to(xt.dtype)
        r2 = ((ysub - pred) ** 2).reshape(len(xs), -1).sum(1).double().cpu().numpy()
        rel = r2 / max(r2.mean(), 1e-300)
        # the oriented start's shapes follow the residual alone (the density would round them)
        return _weighted_kmeans(xs, K, rel + 1.0, rng, iters=10), xs, rel

    def _train(
        self, model: _BumpModel, xt, yt, p, spacing, w0, seed, val_mask=None, keep_best: bool = False
    ) -> list[float]:
        """Adam on the points outside ``val_mask`` (all when None); ``keep_best``: early stopping on the others."""
        bumps = model.bumps
        steps = p["steps"]
        xv = yv = None
        if val_mask is not None:
            if keep_best:
                xv, yv = xt[val_mask], yt[val_mask]
            xt, yt = xt[~val_mask], yt[~val_mask]
        n = len(xt)
        batch = p["batch"]
        if batch is None:
            batch = n if n <= (1 << 17) else (1 << 16)
        batch = min(batch, n)
        lr_pos = p["lr_position"] * spacing
        groups = [
            {"params": [bumps.c, bumps.w], "lr": lr_pos},
            {"params": [bumps.m, model.offset], "lr": p["lr_magnitude"]},
        ]
        if _is_oriented(bumps):
            groups.append({"params": [bumps.angles], "lr": p["lr_angle"]})  # radians: no spacing
        opt = torch.optim.Adam(groups)
        base = [g["lr"] for g in opt.param_groups]
        hooks = attach(opt, bumps)
        reloc = None
        if self.relocate and p["relocate_until"] > 0:
            reloc = Relocation(
                bumps,
                every=p["relocate_every"],
                stop=int(p["relocate_until"] * steps),
                min_rel_m=p["relocate_min_rel_m"],
                max_fraction=p["relocate_max_fraction"],
                width=w0,
                distributed=False,
            )
        growth = None
        if p["grow_from"] is not None and bumps.n_bumps < self.n_bumps_:
            growth = ScheduledGrowth(
                bumps,
                initial_bumps=bumps.n_bumps,
                max_bumps=self.n_bumps_,
                every=p["grow_every"],
                stop=int(p["grow_until"] * steps),
                distributed=False,
            )
        gen = torch.Generator(device="cpu").manual_seed(seed)
        bar = None
        if self.progress:
            try:
                from tqdm.auto import tqdm

                bar = tqdm(total=steps, desc="BumpRegressor", unit="step")
            except ImportError:
                bar = None
        losses: list[float] = []
        self.relocated_ = 0
        self.grown_ = 0
        self.validation_loss_: list[float] = []
        self.best_step_ = None
        best = None

        def validate(step):  # validation MSE; the best parameters so far are kept
            nonlocal best
            with torch.no_grad():
                v = float(torch.mean((model(xv) - yv) ** 2))
                self.validation_loss_.append((step, v))
                if best is None or v < best[0]:
                    best = (v, step, [t.detach().clone() for t in model.parameters()])

        lam = 0.0
        if self.ridge_:
            from wandering._engine import bump_sum

            with torch.no_grad():
                ones = torch.ones(bumps.c.shape[1], dtype=xt.dtype, device=xt.device)
                diag = float(bump_sum(xt, bumps.c, bumps.w / math.sqrt(2.0), ones, support_p=p["support_p"]).mean())
            # sum_k phi_k(x)^2 averaged over the points is K * mean(diag(Phi^T Phi)) / n: the
            # solves' penalty ridge * mean(diag) * |m|^2 per point
            lam = _TRAIN_RIDGE * self.ridge_[0] * diag / bumps.c.shape[1]
        if xv is not None:
            validate(0)
        try:
            for step in range(steps):
                frac = step / max(1, steps)
                factor = p["lr_final"] + (1 - p["lr_final"]) * 0.5 * (1 + math.cos(math.pi * frac))
                for g, lr0 in zip(opt.param_groups, base):
                    g["lr"] = lr0 * factor
                if batch < n:
                    idx = torch.randint(n, (batch,), generator=gen).to(xt.device)
                    xb, yb = xt[idx], yt[idx]
                else:
                    xb, yb = xt, yt
                opt.zero_grad(set_to_none=True)
                pred = model(xb)
                loss = torch.mean((pred - yb) ** 2)
                if lam > 0:
                    (loss + lam * (bumps.m**2).sum()).backward()
                else:
                    loss.backward()
                opt.step()
                if reloc is not None:
                    self.relocated_ += reloc.step_post(bumps, opt, xb, yb - pred.detach(), step)
                if growth is not None:
                    added = growth.step_post(bumps, opt, xb, yb - pred.detach(), step)
                    self.grown_ += added
                    if added:
                        best = None  # early stopping's saved parameters have the old K
                lv = float(loss.detach())
                losses.append(lv)
                if bar is not None:
                    bar.update(1)
                stop = self.callback is not None and self.callback(step, lv, model)
                if xv is not None and (stop or step == steps - 1 or (step + 1) % p["validation_every"] == 0):
                    validate(step + 1)
                if stop:
                    break
        finally:
            hooks.remove()
            if bar is not None:
                bar.close()
        if best is not None:
            with torch.no_grad():
                for t, saved in zip(model.parameters(), best[2]):
                    t.copy_(saved)
            self.best_step_ = best[1]
        return losses

    # ---------------------------------------------------------------- predict
    def predict(self, X) -> np.ndarray:
        """Evaluates the fitted sum at new points.

        Args:
            X: Points, array-like of shape (n, d), d as in :meth:`fit`.

        Returns:
            A float64 numpy array of shape (n,) for a 1-D target, (n, P) for a 2-D one, in the
            target's units.

        Raises:
            NotFittedError: before :meth:`fit` (scikit-learn's, a ValueError and AttributeError).
            ValueError: X of the wrong shape or number of columns, or with NaN or infinity.
        """
        self._check_fitted()
        X = self._validate(X, reset=False)
        model = self.module_
        bumps = model.bumps
        dev, dtype = bumps.c.device, bumps.c.dtype
        # A fixed engine: the result for a point must not depend on which other points came along.
        numba = ENGINES["numba"]
        per_point = dev.type == "cpu" and numba.available and (numba.orients or not _is_oriented(bumps))
        if not per_point and dev.type == "cpu":
            # The torch engine's matrix products round differently for different numbers of points;
            # in float64 the difference (~1e-16) is far below the float32 model's own rounding.
            model = copy.deepcopy(model).double()
            bumps, dtype = model.bumps, torch.float64
        backend = "numba" if per_point else "torch"
        saved = bumps.backend
        bumps.backend = backend
        out = []
        try:
            with torch.no_grad():
                for i in range(0, len(X), 65536):
                    xu = torch.as_tensor((X[i : i + 65536] - self.x_lo_) / self.x_scale_, dtype=dtype, device=dev)
                    out.append(model(xu).double().cpu().numpy().reshape(len(xu), -1))
        finally:
            bumps.backend = saved
        yu = np.concatenate(out) if out else np.zeros((0, self.n_outputs_))
        pred = yu * self.y_std_ + self.y_mean_
        return pred[:, 0] if self._y_ndim == 1 else pred

    @property
    def n_params_(self) -> int:
        """The number of trainable numbers in the fitted model, (2d + P) K + P, plus d(d-1)/2
        angles per bump when oriented."""
        self._check_fitted()
        return sum(int(t.numel()) for t in self.module_.parameters())


def _restored(module: _BumpModel, x_lo, x_scale, y_mean, y_std, y_ndim: int, **params: Any) -> BumpRegressor:
    """A fitted BumpRegressor around a saved model (a checkpoint's), without fitting."""
    reg = BumpRegressor(**params)
    d = int(module.bumps.c.shape[0])
    reg.module_ = module.eval()
    reg.n_features_in_ = d
    reg.n_outputs_ = 1 if module.bumps.m.dim() == 1 else int(module.bumps.m.shape[1])
    reg._y_ndim = int(y_ndim)
    reg.x_lo_ = np.asarray(x_lo, dtype=np.float64).reshape(d)
    reg.x_scale_ = np.asarray(x_scale, dtype=np.float64).reshape(d)
    reg.y_mean_ = np.asarray(y_mean, dtype=np.float64).reshape(reg.n_outputs_)
    reg.y_std_ = np.asarray(y_std, dtype=np.float64).reshape(reg.n_outputs_)
    reg.loss_curve_, reg.relocated_, reg.grown_, reg.fit_seconds_ = [], 0, 0, 0.0
    reg.n_bumps_, reg.validation_score_ = int(module.bumps.c.shape[1]), None
    return reg
