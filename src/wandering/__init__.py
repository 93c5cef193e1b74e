"""wandering: trainable sums of Gaussian bumps whose parameters can be bounded and
whose gradients can be perturbed, so that bumps random-walk where data gives no gradient.

The names below are imported on first use (PEP 562), so ``import wandering`` and the
``wandering`` command's ``--help`` do not pay for torch and numba until they are needed.
"""

import importlib

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "bump_sum": "._engine",
    "bump_sum_reference": "._reference",
    "oriented_bump_sum": "._engine",
    "oriented_bump_sum_reference": "._reference",
    "WanderingModule": ".modules",
    "BumpFcn": ".modules",
    "SumOfBumpFcns": ".modules",
    "SlowSumOfBumpFcns": ".modules",
    "OrientedSumOfBumpFcns": ".oriented",
    "SlowOrientedSumOfBumpFcns": ".oriented",
    "wandering_modules": ".training",
    "perturb_grads": ".training",
    "bound_params": ".training",
    "perturb_params": ".training",
    "attach": ".training",
    "WanderingHooks": ".training",
    "BumpRegressor": ".regressor",
    "FitQualityWarning": ".regressor",
}

__all__ = [
    "WanderingModule",
    "BumpFcn",
    "SumOfBumpFcns",
    "SlowSumOfBumpFcns",
    "OrientedSumOfBumpFcns",
    "SlowOrientedSumOfBumpFcns",
    "bump_sum",
    "bump_sum_reference",
    "oriented_bump_sum",
    "oriented_bump_sum_reference",
    "wandering_modules",
    "perturb_grads",
    "bound_params",
    "perturb_params",
    "attach",
    "WanderingHooks",
    "BumpRegressor",
    "FitQualityWarning",
    "__version__",
]


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    elif not name.startswith("__"):  # a submodule, as `import wandering` used to load them all
        try:
            value = importlib.import_module(f".{name}", __name__)
        except ModuleNotFoundError as e:
            if e.name != f"{__name__}.{name}":
                raise
            raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
