"""What :class:`~wandering.nn.relocation.Relocation` and :class:`~wandering.nn.growth.Growth`
share: an event every ``every`` steps from ``start`` until ``stop``, the one bump sum they act
on, and whether they agree across DDP ranks."""

from __future__ import annotations

from typing import Any

import torch

from wandering.nn.modules import _BumpModule


def as_int(value: Any, name: str, minimum: int) -> int:
    """``value`` if it is an int (not a bool) of at least ``minimum``; TypeError / ValueError
    naming ``name`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int, but got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, but got {value}")
    return value


class EveryNSteps:
    """Base of the step-scheduled edits of a bump sum (call :meth:`_init_schedule` first)."""

    module: _BumpModule | None
    every: int
    start: int
    stop: int | None
    distributed: Any

    def _init_schedule(self, module: _BumpModule | None, every: Any, start: Any, stop: Any, distributed: Any) -> None:
        if module is not None and not isinstance(module, torch.nn.Module):
            raise TypeError(f"module must be a bump-sum module or None, but got {type(module).__name__}")
        self.module = module  # a bump sum (or a module the caller vouches for)
        self.every = as_int(every, "every", 1)
        self.start = self.every if start is None else as_int(start, "start", 0)
        self.stop = None if stop is None else as_int(stop, "stop", 0)
        if distributed not in ("auto", True, False):
            raise ValueError(f"distributed must be 'auto', True or False, but got {distributed!r}")
        self.distributed = distributed

    def due(self, step: int) -> bool:
        """Whether :meth:`step_post` acts at this step.

        Args:
            step: The step just taken (0-based).

        Returns:
            True at ``start``, ``start + every``, ... before ``stop``.

        Raises:
            TypeError: (from Python) ``step`` is not a number.
        """
        if step < self.start or (self.stop is not None and step >= self.stop):
            return False
        return (step - self.start) % self.every == 0

    def _find_module(self, model: torch.nn.Module) -> _BumpModule:
        if self.module is not None:
            return self.module
        if not isinstance(model, torch.nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, but got {type(model).__name__}")
        sums = [mod for mod in model.modules() if isinstance(mod, _BumpModule) and mod.c.dim() == 2]
        if len(sums) != 1:
            raise ValueError(
                f"model must hold exactly one bump sum for {type(self).__name__} (or pass module=), but got {len(sums)}"
            )
        return sums[0]

    def _distributed_active(self) -> bool:
        """Whether to agree across ranks: several initialised ranks and ``distributed`` not False."""
        import torch.distributed as dist

        active = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if self.distributed is True and not active:
            raise RuntimeError("distributed=True but torch.distributed is not initialised with several ranks")
        return bool(self.distributed is not False and active)
