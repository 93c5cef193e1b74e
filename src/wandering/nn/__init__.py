"""Bump modules and the helpers a training loop uses on them.

The modules (:class:`SumOfBumpFcns`, :class:`OrientedSumOfBumpFcns`...) follow ``torch.nn``'s
conventions; ``training``, ``relocation`` and ``growth`` bound, perturb, synchronise, move and
add bumps between optimiser steps. Built on :mod:`wandering._engine`; imports nothing above it.
"""

from wandering import _lazy_exports

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


__getattr__, __dir__ = _lazy_exports(__name__, _EXPORTS)
