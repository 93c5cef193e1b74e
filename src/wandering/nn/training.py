"""Training-loop helpers: find every wandering module in a model, perturb, bound, hook.

The seed's loop is, for every wandering module in the model::

    loss.backward(); module.pert_grads(); optimizer.step(); module.bound()

:func:`perturb_grads` and :func:`bound_params` do the two calls for a whole model;
:func:`attach` makes ``optimizer.step()`` do them itself, through the step pre- and
post-hooks, which is also what makes them correct under ``torch.amp.GradScaler``:
the scaler calls ``optimizer.step()`` only after unscaling and only on steps it
does not skip, so the noise never meets scaled gradients nor a skipped step.

All noise is keyed by buffers of the modules (see ``wandering.nn._noise``), so every
DDP rank adds the same noise without a collective, and ``state_dict`` resumes it.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator

import torch

from wandering._engine._checks import check_nonneg
from wandering.nn.modules import WanderingModule

__all__ = [
    "wandering_modules",
    "perturb_grads",
    "bound_params",
    "perturb_params",
    "attach",
    "WanderingHooks",
    "Relocation",
]


def _check_model(model: object) -> None:
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")


def _iter_wandering(model: torch.nn.Module) -> Iterator[WanderingModule]:
    # modules() already deduplicates shared submodules and walks through DDP's .module
    # and torch.compile's _orig_mod, so each module is perturbed exactly once.
    for mod in model.modules():
        if isinstance(mod, WanderingModule):
            yield mod


def wandering_modules(model: torch.nn.Module) -> list[WanderingModule]:
    """Every :class:`~wandering.WanderingModule` in ``model``'s tree (``model`` itself included), in
    ``model.modules()`` order, each once. User subclasses count.

    Args:
        model: Any module tree; DDP wrappers and ``torch.compile`` results are looked through.

    Returns:
        A list of the wandering modules (empty when there are none).

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.

    Example:
        >>> net = torch.nn.Sequential(SumOfBumpFcns(torch.rand(1, 4), torch.ones(1, 4), torch.ones(4), None, None))
        >>> len(wandering_modules(net))
        1
    """
    _check_model(model)
    return list(_iter_wandering(model))


def _require_modules(model: torch.nn.Module, fn: str) -> list[WanderingModule]:
    mods = wandering_modules(model)
    if not mods:
        # A loop that calls these on a model without wandering modules is almost surely
        # wired to the wrong model; silently doing nothing would hide it.
        raise ValueError(
            f"model must contain at least one WanderingModule for {fn}(), but got a {type(model).__name__} with none"
        )
    return mods


def perturb_grads(model: torch.nn.Module) -> int:
    """Calls ``pert_grads()`` on every wandering module in ``model``. Call after ``backward()``
    (after the last micro-batch, after ``scaler.unscale_``) and before ``optimizer.step()``.

    Args:
        model: Any module tree holding wandering modules (DDP wrappers and compiled models too).

    Returns:
        The number of modules perturbed.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``model`` contains no wandering module.
    """
    mods = _require_modules(model, "perturb_grads")
    for mod in mods:
        mod.pert_grads()
    return len(mods)


def bound_params(model: torch.nn.Module) -> int:
    """Calls ``bound()`` on every wandering module in ``model``. Call after ``optimizer.step()``.

    Args:
        model: Any module tree holding wandering modules (DDP wrappers and compiled models too).

    Returns:
        The number of modules bounded.

    Raises:
        TypeError: ``model`` is not a ``torch.nn.Module``.
        ValueError: ``model`` contains no wandering module.
    """
    mods = _require_modules(model, "bound_params")
    for mod in mods:
        mod.bound()
    return len(mods)


def perturb_params(
    model: torch.nn.Module,
    *,
    c_std: float = 0.0,
    w_std: float = 0.0,
    m_std: float = 0.0,
    angle_std: float = 0.0,
    bound: bool = True,
) -> int:
    """Adds keyed Gaussian noise to the parameters of every wandering module, then bounds them.

    The opt-in alternative to gradient noise for adaptive optimizers: Adam divides
    each gradient by its running RMS, so gradient noise of a fixed std is not a
    parameter step of a fixed std, while this noise is (``c_std`` is in units of
    ``c``, per call). Call after ``optimizer.step()``. The noise is keyed by each
    module's ``noise_seed`` and its own ``param_noise_step`` counter, so it is the
    same on every DDP rank and resumes from ``state_dict``.

    Args:
        model: Any module tree holding wandering modules.
        c_std, w_std, m_std: Std of the noise added to centres, widths and magnitudes.
        angle_std: Std of the noise added to the rotation angles of oriented modules (radians).
        bound: Call ``bound()`` on each module after its noise (default), so noise never
            leaves a parameter out of bounds. Widths can still approach 0 without w_bounds.

    Returns:
        The number of modules perturbed.

    Raises:
        TypeError: ``model`` is not a module; a std is not a number; a wandering module
            has no ``perturb_params`` method (a user subclass that does not implement it).
        ValueError: a std is negative or not finite; ``model`` has no wandering module;
            ``angle_std > 0`` and no module is oriented.
    """
    stds = dict(
        c_std=check_nonneg(c_std, "c_std"), w_std=check_nonneg(w_std, "w_std"), m_std=check_nonneg(m_std, "m_std")
    )
    mods = _require_modules(model, "perturb_params")
    _check_param_noise_support(mods)
    for mod, kwargs in _param_noise_calls(mods, stds, check_nonneg(angle_std, "angle_std"), "angle_std", model):
        mod.perturb_params(**kwargs)
        if bound:
            mod.bound()
    return len(mods)


def _param_noise_calls(mods, stds: dict, angle_std: float, angle_name: str, model) -> list:
    """(module, perturb_params kwargs) per module: oriented modules also take ``angle_std``."""
    oriented = [isinstance(getattr(mod, "angles", None), torch.nn.Parameter) for mod in mods]
    if angle_std > 0 and not any(oriented):
        raise ValueError(
            f"{angle_name} > 0 needs oriented wandering modules (with angles), but got "
            f"{angle_name}={angle_std} for a {type(model).__name__} with none"
        )
    return [(mod, {**stds, "angle_std": angle_std} if has else stds) for mod, has in zip(mods, oriented)]


def _check_param_noise_support(mods: list[WanderingModule]) -> None:
    for mod in mods:
        if not callable(getattr(mod, "perturb_params", None)):
            raise TypeError(
                f"parameter noise needs wandering modules with a perturb_params(c_std, w_std, m_std) method, "
                f"but got a {type(mod).__name__} without one"
            )


# Which live hooks perturb each module: attaching a module twice would add its noise twice per step.
_ATTACHED: weakref.WeakKeyDictionary[WanderingModule, WanderingHooks] = weakref.WeakKeyDictionary()


class WanderingHooks:
    """Handle returned by :func:`attach`: ``remove()`` detaches both hooks (idempotent).
    Also a context manager that removes them on exit.

    Built by :func:`attach` (which checks everything), not by users.

    Args:
        handles: The optimizer's hook handles.
        modules: The wandering modules the hooks act on.
        optimizer: The hooked optimizer (held weakly).

    Attributes:
        modules: The wandering modules the hooks act on.
    """

    def __init__(self, handles: list, modules: list[WanderingModule], optimizer: torch.optim.Optimizer) -> None:
        self._handles = handles
        self._optimizer = weakref.ref(optimizer)
        self.modules = modules

    def remove(self) -> None:
        """Detaches both hooks and frees the modules to be attached again; a second call does nothing."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        for mod in self.modules:
            if _ATTACHED.get(mod) is self:
                del _ATTACHED[mod]

    @property
    def attached(self) -> bool:
        """True while the hooks are on an optimizer that still exists."""
        return bool(self._handles) and self._optimizer() is not None

    def __enter__(self) -> WanderingHooks:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return f"WanderingHooks(n_modules={len(self.modules)}, attached={self.attached})"


def attach(
    optimizer: torch.optim.Optimizer,
    model: torch.nn.Module,
    *,
    pert_grads: bool = True,
    param_c_std: float = 0.0,
    param_w_std: float = 0.0,
    param_m_std: float = 0.0,
    param_angle_std: float = 0.0,
) -> WanderingHooks:
    """Makes ``optimizer.step()`` perturb gradients before it and add parameter noise and bound after it.

    Only the wandering modules of ``model`` that have at least one parameter in
    ``optimizer`` are hooked, so a model split over several optimizers gets each
    module perturbed once per step of its own optimizer. A module is attached at
    most once: attaching it again (to the same optimizer, or to a second optimizer
    that holds some of its parameters) while the earlier hooks are on raises
    ``ValueError``, since its noise would be added twice per step.

    Before each step (pre-hook): ``pert_grads()`` on each module, unless ``pert_grads=False``.
    After each step (post-hook): ``perturb_params(...)`` when any ``param_*_std`` > 0,
    then ``bound()``.

    Because the hooks live inside ``optimizer.step()``:

    - gradient accumulation: they run once per optimizer step, not per micro-batch;
    - gradient clipping: clip before ``step()`` as usual; the noise is added after
      clipping, so clipping never shrinks the noise;
    - ``torch.amp.GradScaler``: ``scaler.step(optimizer)`` unscales first and skips
      ``optimizer.step()`` on inf/NaN gradients, so noise is never added to scaled
      gradients, and a skipped step draws no noise and does not advance the counters.

    Args:
        optimizer: A ``torch.optim.Optimizer`` over (some of) ``model``'s parameters.
        model: The model (may be wrapped in DDP or compiled).
        pert_grads: Call each module's ``pert_grads()`` before the step (the seed's noise).
        param_c_std, param_w_std, param_m_std: Parameter-noise stds (default 0: off).
        param_angle_std: Parameter-noise std of oriented modules' angles (radians; default 0).

    Returns:
        A :class:`WanderingHooks` handle; ``handle.remove()`` detaches both hooks.

    Raises:
        TypeError: ``optimizer`` is not a ``torch.optim.Optimizer``; ``model`` not a module;
            a std not a number; parameter noise asked of a module without ``perturb_params``.
        ValueError: no wandering module of ``model`` has a parameter in ``optimizer``;
            one of them is attached already; a std negative or not finite.

    Example:
        >>> model = torch.nn.Sequential(SlowSumOfBumpFcns(torch.rand(2, 16), torch.full((2, 16), 0.2),
        ...     torch.zeros(16), torch.tensor([[0.0, 1.0]] * 2), torch.tensor([[0.05, 0.5]] * 2), 1e-3, 1e-4))
        >>> opt = torch.optim.Adam(model.parameters(), lr=0.02)
        >>> hooks = attach(opt, model)
        >>> x = torch.rand(256, 2); y = x.sum(dim=1)
        >>> for _ in range(5):
        ...     opt.zero_grad(); ((model(x) - y) ** 2).mean().backward(); opt.step()
        >>> int(model[0].noise_step)  # pert_grads ran before every step
        5
        >>> hooks.remove()
    """
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be a torch.optim.Optimizer, but got {type(optimizer).__name__}")
    _check_model(model)
    if not isinstance(pert_grads, bool):
        raise TypeError(f"pert_grads must be a bool, but got {type(pert_grads).__name__}")
    stds = dict(
        c_std=check_nonneg(param_c_std, "param_c_std"),
        w_std=check_nonneg(param_w_std, "param_w_std"),
        m_std=check_nonneg(param_m_std, "param_m_std"),
    )
    angle_std = check_nonneg(param_angle_std, "param_angle_std")
    param_noise = angle_std > 0 or any(v > 0 for v in stds.values())

    in_opt = {id(p) for group in optimizer.param_groups for p in group["params"]}
    all_mods = wandering_modules(model)
    mods = [m for m in all_mods if any(id(p) in in_opt for p in m.parameters())]
    if not mods:
        raise ValueError(
            f"optimizer must hold parameters of at least one WanderingModule of model, but got "
            f"{len(all_mods)} wandering module(s), none with a parameter in the optimizer"
        )
    calls = []
    if param_noise:
        _check_param_noise_support(mods)
        calls = _param_noise_calls(mods, stds, angle_std, "param_angle_std", model)
    for mod in mods:
        earlier = _ATTACHED.get(mod)
        if earlier is not None and earlier.attached:
            raise ValueError(
                f"model's {type(mod).__name__} must be attached once, but it is already attached to "
                f"{'this' if earlier._optimizer() is optimizer else 'another'} optimizer, so its noise would be "
                f"added twice per step; call remove() on the earlier handle first"
            )

    def pre_hook(opt, args, kwargs):
        for mod in mods:
            mod.pert_grads()

    def post_hook(opt, args, kwargs):
        for mod, noise in calls:
            mod.perturb_params(**noise)
        for mod in mods:
            mod.bound()  # after the noise, so parameters end every step in bounds

    handles = []
    if pert_grads:
        handles.append(optimizer.register_step_pre_hook(pre_hook))
    handles.append(optimizer.register_step_post_hook(post_hook))
    hooks = WanderingHooks(handles, mods, optimizer)
    for mod in mods:
        _ATTACHED[mod] = hooks
    return hooks


from wandering.nn.relocation import Relocation  # noqa: E402  (re-exported; relocation imports this package's modules)
