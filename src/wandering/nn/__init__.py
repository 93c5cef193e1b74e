"""Bump modules and the helpers a training loop uses on them.

The modules (:class:`SumOfBumpFcns`, :class:`OrientedSumOfBumpFcns`...) follow ``torch.nn``'s
conventions; ``training``, ``relocation`` and ``growth`` bound, perturb, synchronise, move and
add bumps between optimiser steps. Built on :mod:`wandering._engine`; imports nothing above it.
"""

import importlib

_EXPORTS = {
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
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):  # PEP 562: importing a sibling (e.g. the CLI's settings) must not load torch
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
