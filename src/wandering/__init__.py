"""wandering: trainable sums of Gaussian bumps whose parameters can be bounded and
whose gradients can be perturbed, so that bumps random-walk where data gives no gradient.

The names below are imported on first use (PEP 562), so ``import wandering`` and the
``wandering`` command's ``--help`` do not pay for torch and numba until they are needed.

Layers, each importing only those below it:

- ``wandering._engine``: the ``torch.library`` ops, their engines (numba, torch, Triton,
  reference) and kernels, and the geometry they share;
- ``wandering.nn``: the modules (``SumOfBumpFcns``, ``OrientedSumOfBumpFcns``...) and the
  helpers a training loop uses on them (bounds, noise, DDP hooks, relocation, growth);
- ``wandering.fit``: ``BumpRegressor``, least-squares solves and checkpoints;
- ``wandering.cli``: the ``wandering`` shell tool (parser, data files, plots, the demo).
"""

import importlib
import importlib.abc
import importlib.util
import sys

__version__ = "0.1.0"

# public name -> the submodule that defines it
_EXPORTS = {
    "bump_sum": "._engine",
    "bump_sum_reference": "._engine._reference",
    "oriented_bump_sum": "._engine",
    "oriented_bump_sum_reference": "._engine._reference",
    "WanderingModule": ".nn.modules",
    "BumpFcn": ".nn.modules",
    "SumOfBumpFcns": ".nn.modules",
    "SlowSumOfBumpFcns": ".nn.modules",
    "OrientedSumOfBumpFcns": ".nn.oriented",
    "SlowOrientedSumOfBumpFcns": ".nn.oriented",
    "wandering_modules": ".nn.training",
    "perturb_grads": ".nn.training",
    "bound_params": ".nn.training",
    "perturb_params": ".nn.training",
    "attach": ".nn.training",
    "WanderingHooks": ".nn.training",
    "BumpRegressor": ".fit.regressor",
    "FitQualityWarning": ".fit.regressor",
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


# Public modules of the flat layout (0.1) -> where they live now. Old imports and pickles keep
# working: ``import wandering.modules`` gives the very module ``wandering.nn.modules``.
_MOVED_MODULES = {
    "modules": "nn.modules",
    "oriented": "nn.oriented",
    "training": "nn.training",
    "relocation": "nn.relocation",
    "growth": "nn.growth",
    "regressor": "fit.regressor",
    "checkpoint": "fit.checkpoint",
    "demo": "cli.demo",
}


class _MovedModuleLoader(importlib.abc.Loader):
    def __init__(self, target: str):
        self._target = target

    def create_module(self, spec):
        module = importlib.import_module(self._target)
        self._spec = module.__spec__  # the import system overwrites it; exec_module puts it back
        return module

    def exec_module(self, module) -> None:
        module.__spec__ = self._spec


class _MovedModuleFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, fullname, path=None, target=None):
        prefix, _, short = fullname.partition(".")
        if prefix != __name__ or short not in _MOVED_MODULES:
            return None
        return importlib.util.spec_from_loader(fullname, _MovedModuleLoader(f"{__name__}.{_MOVED_MODULES[short]}"))


if not any(isinstance(f, _MovedModuleFinder) for f in sys.meta_path):
    sys.meta_path.append(_MovedModuleFinder())


def _lazy_exports(module_name: str, exports: dict[str, str]):
    """PEP 562 ``__getattr__`` and ``__dir__`` for a subpackage whose public names are imported
    on first use (so that importing a sibling, e.g. the CLI's settings, loads no torch)."""
    module = sys.modules[module_name]

    def getattr_(name: str):
        if name not in exports:
            raise AttributeError(f"module {module_name!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(exports[name], module_name), name)
        setattr(module, name, value)
        return value

    def dir_():
        return sorted(set(vars(module)) | set(exports))

    return getattr_, dir_


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
