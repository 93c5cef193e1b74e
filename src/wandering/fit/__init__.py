"""Fitting: :class:`BumpRegressor` (a scikit-learn estimator), its least-squares solves
(dense and sparse) and the checkpoint format. Built on :mod:`wandering.nn`; imports nothing
from :mod:`wandering.cli`.
"""

from wandering import _lazy_exports

_EXPORTS = {"BumpRegressor": ".regressor", "FitQualityWarning": ".regressor"}

__all__ = list(_EXPORTS)


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
