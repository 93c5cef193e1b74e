"""wandering: trainable sums of Gaussian bumps whose parameters can be bounded and
whose gradients can be perturbed, so that bumps random-walk where data gives no gradient."""

from ._engine import bump_sum
from ._reference import bump_sum_reference
from .modules import BumpFcn, SlowSumOfBumpFcns, SumOfBumpFcns, WanderingModule
from .regressor import BumpRegressor
from .training import WanderingHooks, attach, bound_params, perturb_grads, perturb_params, wandering_modules

__version__ = "0.1.0"

__all__ = [
    "WanderingModule",
    "BumpFcn",
    "SumOfBumpFcns",
    "SlowSumOfBumpFcns",
    "bump_sum",
    "bump_sum_reference",
    "wandering_modules",
    "perturb_grads",
    "bound_params",
    "perturb_params",
    "attach",
    "WanderingHooks",
    "BumpRegressor",
    "__version__",
]
