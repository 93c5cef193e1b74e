"""scikit-learn's base classes (or small stand-ins without the `fit` extra) and the checks of
BumpRegressor's inputs: arrays of finite floats, shapes, feature counts."""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import torch

__all__ = [
    "HAVE_SKLEARN",
    "NotFittedError",
    "_BaseEstimator",
    "_RegressorMixin",
    "_as_2d_float",
    "_check_finite",
    "_r2",
    "_same",
    "_sk_check_is_fitted",
    "_sk_validate_data",
    "_validate_plain",
]

try:  # optional: the `fit` extra
    from sklearn.base import BaseEstimator as _BaseEstimator
    from sklearn.base import RegressorMixin as _RegressorMixin
    from sklearn.exceptions import NotFittedError
    from sklearn.utils.validation import check_is_fitted as _sk_check_is_fitted

    try:
        from sklearn.utils.validation import validate_data as _sk_validate_data
    except ImportError:  # scikit-learn < 1.6

        def _sk_validate_data(est, *args, **kwargs):
            return est._validate_data(*args, **kwargs)

    HAVE_SKLEARN = True
except ImportError:  # pragma: no cover - exercised in an environment without sklearn
    HAVE_SKLEARN = False
    _sk_check_is_fitted = _sk_validate_data = None  # only called with scikit-learn (HAVE_SKLEARN)

    class NotFittedError(ValueError, AttributeError):
        """Raised by predict/score before fit (sklearn's class when sklearn is installed)."""

    class _BaseEstimator:
        """get_params/set_params/repr from the constructor's signature, as in scikit-learn."""

        @classmethod
        def _get_param_names(cls) -> list[str]:
            sig = inspect.signature(cls.__init__)
            return sorted(p.name for p in sig.parameters.values() if p.name != "self" and p.kind != p.VAR_KEYWORD)

        def get_params(self, deep: bool = True) -> dict:
            return {name: getattr(self, name) for name in self._get_param_names()}

        def set_params(self, **params: Any):
            valid = self._get_param_names()
            for key, value in params.items():
                if key not in valid:
                    raise ValueError(
                        f"Invalid parameter {key!r} for estimator {type(self).__name__}. "
                        f"Valid parameters are: {valid!r}."
                    )
                setattr(self, key, value)
            return self

        def __repr__(self) -> str:
            defaults = {p.name: p.default for p in inspect.signature(type(self).__init__).parameters.values()}
            changed = [f"{k}={v!r}" for k, v in self.get_params().items() if not _same(v, defaults.get(k))]
            return f"{type(self).__name__}({', '.join(changed)})"

    class _RegressorMixin:
        _estimator_type = "regressor"

        def score(self, X, y, sample_weight=None) -> float:
            """R^2 of the predictions (averaged uniformly over outputs)."""
            return _r2(np.asarray(y, dtype=np.float64), self.predict(X), sample_weight)


def _same(a: Any, b: Any) -> bool:
    try:
        return bool(a == b) if not isinstance(a, np.ndarray) else False
    except Exception:  # noqa: BLE001
        return False


def _r2(y: np.ndarray, pred: np.ndarray, sample_weight=None) -> float:
    y2, p2 = y.reshape(len(y), -1), np.asarray(pred, dtype=np.float64).reshape(len(y), -1)
    wts = np.ones(len(y)) if sample_weight is None else np.asarray(sample_weight, dtype=np.float64)
    mean = (wts[:, None] * y2).sum(0) / wts.sum()
    sse = (wts[:, None] * (y2 - p2) ** 2).sum(0)
    sst = (wts[:, None] * (y2 - mean) ** 2).sum(0)
    with np.errstate(divide="ignore", invalid="ignore"):
        r2 = np.where(sst > 0, 1.0 - sse / np.where(sst > 0, sst, 1.0), np.where(sse == 0, 1.0, 0.0))
    return float(r2.mean())


# ---------------------------------------------------------------- validation without sklearn
def _as_2d_float(X: Any, name: str = "X") -> np.ndarray:
    if hasattr(X, "toarray") or type(X).__module__.startswith("scipy.sparse"):
        raise TypeError(f"Sparse data was passed for {name}, but dense data is required.")
    if isinstance(X, torch.Tensor):
        X = X.detach().cpu().numpy()
    try:
        arr = np.asarray(X)
    except Exception as exc:
        raise TypeError(f"{name} must be an array of numbers, but got {type(X).__name__}") from exc
    if arr.dtype.kind in "cOSUV" or arr.dtype == object:
        try:
            arr = arr.astype(np.float64)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"{name} must hold real numbers, but got dtype {arr.dtype}") from exc
    if arr.dtype.kind == "c":
        raise ValueError("Complex data not supported")
    return arr.astype(np.float64, copy=False)


def _check_finite(a: np.ndarray, name: str) -> None:
    if not np.isfinite(a).all():
        kind = "NaN" if np.isnan(a).any() else "infinity"
        raise ValueError(f"Input {name} contains {kind}.")


def _validate_plain(est, X, y=None, reset=True):
    X = _as_2d_float(X)
    if X.ndim != 2:
        raise ValueError(
            f"Expected 2D array, got {X.ndim}D array instead: reshape your data to (n_samples, n_features)"
        )
    if X.shape[0] < 1:
        raise ValueError(f"Found array with 0 sample(s) (shape={X.shape}) while a minimum of 1 is required.")
    if X.shape[1] < 1:
        raise ValueError(f"Found array with 0 feature(s) (shape={X.shape}) while a minimum of 1 is required.")
    _check_finite(X, "X")
    if reset:
        est.n_features_in_ = X.shape[1]
    elif X.shape[1] != est.n_features_in_:
        raise ValueError(
            f"X has {X.shape[1]} features, but {type(est).__name__} is expecting "
            f"{est.n_features_in_} features as input."
        )
    if y is None:
        return X
    yv = _as_2d_float(y, "y")
    if yv.ndim not in (1, 2):
        raise ValueError(f"y must have shape (n_samples,) or (n_samples, n_outputs), but got {yv.shape}")
    if len(yv) != len(X):
        raise ValueError(f"Found input variables with inconsistent numbers of samples: [{len(X)}, {len(yv)}]")
    _check_finite(yv, "y")
    return X, yv
