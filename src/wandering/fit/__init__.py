"""Fitting: :class:`BumpRegressor` (a scikit-learn estimator), its least-squares solves
(dense and sparse) and the checkpoint format. Built on :mod:`wandering.nn`; imports nothing
from :mod:`wandering.cli`.
"""

import importlib

_EXPORTS = {"BumpRegressor": ".regressor", "FitQualityWarning": ".regressor"}

__all__ = list(_EXPORTS)


def __getattr__(name: str):  # PEP 562: importing a sibling (e.g. the CLI's settings) must not load torch
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
