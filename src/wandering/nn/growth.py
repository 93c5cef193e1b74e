"""Error-guided growth: split the bumps that hold the most residual, prune dead ones.

In the spirit of the densification of 3D Gaussian splatting and Image-GS: a fit starts
with fewer bumps than its budget, and at intervals the bumps under which the squared
residual is largest are split in two, so bumps multiply where the target has detail
and the early steps, with fewer bumps, cost less. Optionally dead bumps (negligible
|m|, or no point in their support) are removed first. K changes, so every parameter
with a bump axis (c, w, m, the angles of oriented bumps) is replaced by a new
``Parameter``, in the module and in the optimizer given, and the
optimizer's per-entry state is carried over for the bumps that stay as they were and
zeroed for exactly the split and new ones::

    growth = Growth(every=100, stop=steps // 2, max_bumps=K)
    for step in range(steps):
        opt.zero_grad()
        pred = model(x)
        loss = ((pred - y) ** 2).mean()
        loss.backward()
        opt.step()
        growth.step_post(model, opt, x, y - pred.detach(), step)

The split. A bump's error mass is ``sum_i phi_k(x_i) |r_i|^2`` over the points it is
shown (phi_k its value, r the residual). The ``fraction * K`` bumps of largest mass
(ties: the lower index) are each replaced by two bumps half a scale either side of
the centre along the bump's longest principal axis, that axis's scale divided by
sqrt(2) and the magnitude by sqrt(2): the pair keeps the bump's mass and second
moment along that axis. Nothing is drawn at random, so the result is a function of
the parameters, the points and the residual alone: bitwise reproducible, resumable
(the event counter is in :meth:`Growth.state_dict`), and identical on every DDP rank
once the per-bump sums are summed over ranks (``all_reduce``, at events only).

Under DDP, K changing means the ``DistributedDataParallel`` wrapper's buckets no
longer fit the parameters (and hold the old ones): build a new wrapper around the same
module after an event that changed K (:meth:`Growth.step_post` returns the change). The
optimizer given to the event keeps working: its groups and state hold the new parameters.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from wandering._engine import bump_sum, oriented_bump_sum
from wandering._engine._checks import check_nonneg
from wandering._engine._rotation import rotations
from wandering.nn._schedule import EveryNSteps
from wandering.nn._schedule import as_int as _as_int
from wandering.nn.modules import _BumpModule

__all__ = ["Growth", "ScheduledGrowth", "bump_statistics", "resize_bumps"]


# (parameter name, its bump axis) of every parameter that has one.
_BUMP_PARAMS = (("c", 1), ("w", 1), ("m", 0), ("angles", 1))


def resize_bumps(
    module: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None,
    keep: torch.Tensor,
    new: dict[str, torch.Tensor] | None = None,
    reset: torch.Tensor | None = None,
) -> None:
    """Keeps the bumps ``keep`` (in that order), appends ``new`` ones, and rewrites the optimizer state.

    Every parameter with a bump axis (c, w, m, angles) is replaced by a new ``Parameter`` holding
    ``cat(p[keep], new[name])`` along that axis (no gradient yet), in the module and in the
    optimizer's parameter groups; other references to the old ones (another optimizer, a
    ``DistributedDataParallel`` wrapper) are not updated. The optimizer's per-entry state
    tensors (those shaped like the parameter: Adam's exp_avg, exp_avg_sq, ...) are cut the
    same way, with zeros for the new bumps and for the kept positions ``reset`` (indices into
    the new layout); scalar state (Adam's step) is left alone.

    Args:
        module: A bump sum with c, w (d, K), m (K,) or (K, P), optionally angles (d(d-1)/2, K).
        optimizer: Holding the module's parameters, or None.
        keep: LongTensor of bump indices to keep.
        new: Parameter name -> values of the appended bumps (bump axis as the parameter's);
            every bump parameter must be given, or none (nothing appended).
        reset: LongTensor of positions in the new layout whose optimizer state is zeroed.

    Raises:
        ValueError: ``new`` names some of the module's bump parameters but not all.
        IndexError, RuntimeError: (from torch) ``keep`` or ``reset`` indices out of range, or
            ``new`` values whose shapes do not match the parameters' other axes.
    """
    names = [name for name, _ in _BUMP_PARAMS if isinstance(getattr(module, name, None), torch.nn.Parameter)]
    new = dict(new or {})
    if new and set(new) != set(names):
        raise ValueError(f"new must give all of {names} or none, but got {sorted(new)}")
    keep = keep.to(torch.int64)
    dims = dict(_BUMP_PARAMS)
    for name in names:
        param, dim = getattr(module, name), dims[name]
        dev_keep = keep.to(param.device)
        parts = [param.detach().index_select(dim, dev_keep)]
        if new:
            parts.append(new[name].to(dtype=param.dtype, device=param.device))
        fresh = torch.nn.Parameter(torch.cat(parts, dim=dim), requires_grad=param.requires_grad)
        # A new Parameter, not ``param.data = ...``: autograd keeps the old shape in the leaf's
        # gradient accumulator for as long as a graph that used it is alive.
        setattr(module, name, fresh)
        if optimizer is None:
            continue
        for group in optimizer.param_groups:
            group["params"] = [fresh if p is param else p for p in group["params"]]
        state = optimizer.state.pop(param, None)
        if not state:
            continue
        for key, value in list(state.items()):
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                kept = value.index_select(dim, dev_keep.to(value.device))
                shape = list(value.shape)
                shape[dim] = fresh.shape[dim] - kept.shape[dim]
                grown = torch.cat([kept, kept.new_zeros(shape)], dim=dim)
                if reset is not None and reset.numel():
                    grown.index_fill_(dim, reset.to(grown.device), 0)
                state[key] = grown
        optimizer.state[fresh] = state


def bump_statistics(module: _BumpModule, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Per-bump sums over the points: (K, 3) float64. Column 0 is ``sum_i phi_k(x_i)`` (0 exactly
    when no point is in the bump's support), column 1 the error mass ``sum_i phi_k(x_i) |r_i|^2``,
    column 2 ``sum_i phi_k(x_i)^2``, so that ``|m_k|^2`` times it is what removing bump k alone
    would add to the sum of squared errors, less twice its correlation with the residual (0 where
    the magnitudes fit).

    Args:
        module: The bump sum (oriented ones use their angles).
        x: Points (n, d), in the module's coordinates.
        residual: (n,) or (n, P).

    Returns:
        (K, 3) float64 tensor on the module's device: occupancy, error mass, sum of squares.

    Raises:
        RuntimeError, ValueError: (from the engine) ``x`` of another dimension than the module's,
            or ``residual`` with another number of points than ``x``.
    """
    c, w = module.c.detach(), module.w.detach()
    K = c.shape[1]
    r2 = residual.detach().reshape(x.shape[0], -1).to(c.dtype).pow(2).sum(dim=1)
    probe = torch.ones(K, 2, dtype=c.dtype, device=c.device, requires_grad=True)
    square = torch.ones(K, dtype=c.dtype, device=c.device, requires_grad=True)
    angles = getattr(module, "angles", None)
    sp = module.support_p
    # phi^2 is the bump with scales / sqrt(2); its support cut-off at sp^2 is phi's at sp.
    w2, sp2 = w / math.sqrt(2.0), (None if sp is None else sp * sp)
    with torch.enable_grad():
        if isinstance(angles, torch.Tensor):
            out = oriented_bump_sum(x, c, w, probe, angles.detach(), support_p=sp, backend=module.backend)
            sq = oriented_bump_sum(x, c, w2, square, angles.detach(), support_p=sp2, backend=module.backend)
        else:
            out = bump_sum(x, c, w, probe, support_p=sp, backend=module.backend)
            sq = bump_sum(x, c, w2, square, support_p=sp2, backend=module.backend)
        stats = torch.autograd.grad(out[:, 0].sum() + (out[:, 1] * r2).sum() + sq.sum(), (probe, square))
    return torch.cat([stats[0], stats[1][:, None]], dim=1).double()


class Growth(EveryNSteps):
    """Splits the bumps holding the most squared residual, up to a budget; optionally prunes dead ones.

    Args:
        module: The bump sum to act on; None: found in the model given to :meth:`step_post`.
        max_bumps: The budget: growth never takes K above it.
        every: Steps between events.
        start: First step of an event (default ``every``).
        stop: No event at this step or later (None: never stops).
        fraction: Bumps split per event, as a fraction of the live bumps (at least one while
            below the budget).
        prune_min_rel_m: At each event, before the split, remove the bumps whose |m| (max over
            outputs) is below this fraction of the largest. 0 (default): none.
        prune_empty: At each event, before the split, remove the bumps with no point in their
            support (among the points of this event, on all ranks).
        prune_fraction: At each event, before the split, remove this fraction of the bumps: those
            whose removal costs least, ``|m_k|^2 sum_i phi_k(x_i)^2`` (see :func:`bump_statistics`;
            ties: the lower index). With ``max_bumps`` = K the split then refills them where the
            error is: K stays fixed and bumps move from where they do little to where the
            residual is (in the spirit of 3DGS-MCMC's relocation).
        distributed: "auto", True or False: sum the per-bump statistics over DDP ranks (see the
            module docstring); False is right only when every rank passes the same points.

    Attributes:
        counter: Events so far (saved by :meth:`state_dict`).
        history: ``(step, n_split, n_pruned)`` for every event of this object (not saved).

    Raises:
        TypeError: ``module`` that is not a module, counts that are not ints, ``prune_empty``
            that is not a bool.
        ValueError: ``max_bumps`` or ``every`` below 1, a negative ``start`` or ``stop``,
            ``fraction`` or ``prune_min_rel_m`` outside [0, 1], ``prune_fraction`` outside
            [0, 1), an unknown ``distributed``.
    """

    def __init__(
        self,
        module: _BumpModule | None = None,
        *,
        max_bumps: int,
        every: int = 100,
        start: int | None = None,
        stop: int | None = None,
        fraction: float = 0.1,
        prune_min_rel_m: float = 0.0,
        prune_empty: bool = False,
        prune_fraction: float = 0.0,
        distributed: Any = "auto",
    ) -> None:
        self._init_schedule(module, every, start, stop, distributed)
        self.max_bumps = _as_int(max_bumps, "max_bumps", 1)
        self.fraction = check_nonneg(fraction, "fraction")
        if not self.fraction <= 1:
            raise ValueError(f"fraction must be in [0, 1], but got {fraction}")
        self.prune_min_rel_m = check_nonneg(prune_min_rel_m, "prune_min_rel_m")
        if not self.prune_min_rel_m <= 1:
            raise ValueError(f"prune_min_rel_m must be in [0, 1], but got {prune_min_rel_m}")
        if not isinstance(prune_empty, bool):
            raise TypeError(f"prune_empty must be a bool, but got {type(prune_empty).__name__}")
        self.prune_empty = prune_empty
        self.prune_fraction = check_nonneg(prune_fraction, "prune_fraction")
        if not self.prune_fraction < 1:
            raise ValueError(f"prune_fraction must be in [0, 1), but got {prune_fraction}")
        self.counter = 0
        self.history: list[tuple[int, int, int]] = []

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The event counter: all a resumed fit needs besides the model and optimizer.

        Returns:
            ``{"counter": int}``.
        """
        return {"counter": int(self.counter)}

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`'s counter, so the next events follow an uninterrupted fit's.

        Args:
            state: A dict from :meth:`state_dict`.

        Raises:
            ValueError: ``state`` is not a dict with a ``"counter"``, or the counter is negative.
            TypeError: (from ``int()``) a counter that is not a number.
        """
        if not isinstance(state, dict) or "counter" not in state:
            raise ValueError("state must be a dict from Growth.state_dict(), with a 'counter'")
        self.counter = _as_int(int(state["counter"]), "counter", 0)

    def __repr__(self) -> str:
        return (
            f"Growth(max_bumps={self.max_bumps}, every={self.every}, start={self.start}, stop={self.stop}, "
            f"fraction={self.fraction}, prune_min_rel_m={self.prune_min_rel_m}, prune_empty={self.prune_empty}, "
            f"prune_fraction={self.prune_fraction}, "
            f"counter={self.counter})"
        )

    # ---------------------------------------------------------------- hooks
    def step_post(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        x: torch.Tensor,
        residual: torch.Tensor,
        step: int,
    ) -> int:
        """Call after ``optimizer.step()``: grows when :meth:`due` (step), else does nothing.

        Args:
            model: The bump-sum module, or a model holding exactly one (DDP wrappers too).
            optimizer: The optimizer holding the module's parameters (its state is rewritten), or None.
            x: The points the bump sum saw this step, in its own coordinates (n, d).
            residual: target - prediction at those points, (n,) or (n, P).
            step: The step just taken (0-based).

        Returns:
            The change of K (0 when not due).

        Raises:
            TypeError, ValueError: as :meth:`grow`, at the steps that are due.
        """
        if not self.due(step):
            return 0
        mod = self._find_module(model)
        before = mod.n_bumps
        split, pruned = self.grow(mod, optimizer, x, residual)
        self.history.append((int(step), int(split), int(pruned)))
        return mod.n_bumps - before

    # ---------------------------------------------------------------- work
    def _reduce(self, stats: torch.Tensor) -> torch.Tensor:
        import torch.distributed as dist

        if self._distributed_active():
            stats = stats.clone()
            dist.all_reduce(stats)
        return stats

    def grow(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        x: torch.Tensor,
        residual: torch.Tensor,
    ) -> tuple[int, int]:
        """One event now (whatever the step): prune, then split. Advances :attr:`counter` by one.

        Args:
            model: The bump-sum module, or a model holding exactly one (DDP wrappers too).
            optimizer: The optimizer holding the module's parameters (its state is rewritten), or None.
            x: The points of this event, in the module's coordinates (n, d).
            residual: target - prediction at those points, (n,) or (n, P).

        Returns:
            (bumps split, bumps pruned).

        Raises:
            TypeError: ``model`` is not a module, or ``x``/``residual`` are not tensors.
            ValueError: ``model`` holds no bump sum or several, ``x`` is not (n, d), ``residual``
                is not (n,) or (n, P).
        """
        mod = self._find_module(model)
        if not isinstance(x, torch.Tensor) or not isinstance(residual, torch.Tensor):
            raise TypeError("x and residual must be torch.Tensors")
        d, K = mod.c.shape
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"x must have shape (n, {d}), but got {tuple(x.shape)}")
        n_out = 1 if mod.m.dim() == 1 else mod.m.shape[1]
        if residual.shape[0] != x.shape[0] or residual.dim() > 2 or residual.reshape(x.shape[0], -1).shape[1] != n_out:
            raise ValueError(
                f"residual must have shape (n,) or (n, {n_out}) with n = {x.shape[0]}, but got {tuple(residual.shape)}"
            )
        self.counter += 1
        x = x.detach().to(device=mod.c.device, dtype=mod.c.dtype)
        stats = self._reduce(bump_statistics(mod, x, residual)).cpu()
        occupancy, mass, square = stats[:, 0], stats[:, 1], stats[:, 2]

        with torch.no_grad():
            m = mod.m.detach().cpu()
            mabs = m.abs() if m.dim() == 1 else m.abs().amax(dim=1)
            dead = torch.zeros(K, dtype=torch.bool)
            if self.prune_empty:
                dead |= occupancy == 0
            if self.prune_min_rel_m > 0 and K:
                dead |= mabs < self.prune_min_rel_m * mabs.max()
            n_cut = int(math.floor(self.prune_fraction * K))
            if n_cut:
                m2 = (m.double() ** 2).reshape(K, -1).sum(dim=1)
                cost = torch.where(dead, torch.full_like(m2, -1.0), m2 * square)  # already dead: first
                dead[torch.argsort(cost, stable=True)[:n_cut]] = True
            if bool(dead.all()):  # never remove every bump
                dead[torch.argmax(mass)] = False
            alive = torch.nonzero(~dead).squeeze(1)
            n_alive = alive.numel()
            room = max(0, self.max_bumps - n_alive)
            n_split = min(room, n_alive, max(1, int(math.floor(self.fraction * n_alive))) if self.fraction > 0 else 0)
            # The largest error mass first; ties by index (a stable sort of the negated mass).
            order = torch.argsort(-mass[alive], stable=True)
            parents_pos = torch.sort(order[:n_split]).values  # positions in the kept layout
            parents = alive[parents_pos]
            new, moved = self._split(mod, parents)
            if n_split:
                for name, dim in _BUMP_PARAMS:
                    if name in moved:  # the first child takes the parent's slot
                        getattr(mod, name).index_copy_(dim, parents.to(mod.c.device), moved[name])
            reset = torch.cat([parents_pos, n_alive + torch.arange(n_split)])
            resize_bumps(mod, optimizer, alive, new if n_split else None, reset)
            mod.bound()
        return n_split, K - n_alive

    def _split(self, mod: _BumpModule, parents: torch.Tensor) -> tuple[dict, dict]:
        """(appended children, parents' new values), each name -> tensor along the bump axis."""
        dev = mod.c.device
        idx = parents.to(dev)
        c = mod.c.detach().index_select(1, idx)
        w = mod.w.detach().index_select(1, idx).clone()
        m = mod.m.detach().index_select(0, idx)
        d, n = c.shape
        major = w.abs().argmax(dim=0)  # (n,) the longest principal axis of each parent
        cols = torch.arange(n, device=dev)
        angles = getattr(mod, "angles", None)
        if isinstance(angles, torch.Tensor):
            a = angles.detach().index_select(1, idx)
            R = rotations(a, d)  # (d, d, n): R[:, j, k] is axis j of bump k
            direction = R[:, major, cols]  # (d, n)
        else:
            a = None
            direction = torch.zeros_like(c)
            direction[major, cols] = 1.0
        offset = 0.5 * w[major, cols].abs()
        w[major, cols] = w[major, cols] / math.sqrt(2.0)
        m_child = m / math.sqrt(2.0)
        first = {"c": c - offset * direction, "w": w, "m": m_child}
        second = {"c": c + offset * direction, "w": w.clone(), "m": m_child.clone()}
        if a is not None:
            first["angles"], second["angles"] = a, a.clone()
        return second, first


class ScheduledGrowth(Growth):
    """:class:`Growth` that takes K from ``initial_bumps`` to ``max_bumps`` geometrically over its events.

    The events are the steps ``start, start + every, ...`` before ``stop``; before event i (1-based)
    of E, the fraction split is set so that K becomes ``round(initial_bumps * r**(i / E))`` with
    ``r = max_bumps / initial_bumps`` (exactly ``max_bumps`` after the last event; no pruning). The
    target is a function of the event counter alone, so a resumed fit (counter restored) follows the
    same schedule, and DDP ranks (statistics summed over ranks) split the same bumps.

    Args:
        module: As :class:`Growth`.
        initial_bumps: K when the fit starts (>= 1, <= ``max_bumps``).
        max_bumps: K after the last event.
        every, start: As :class:`Growth`.
        stop: No event at this step or later; required (the schedule needs the number of events).
        distributed: As :class:`Growth`.

    Raises:
        TypeError, ValueError: a count that is not an int or out of range; ``stop`` giving no event.
    """

    def __init__(
        self,
        module: _BumpModule | None = None,
        *,
        initial_bumps: int,
        max_bumps: int,
        every: int,
        stop: int,
        start: int | None = None,
        distributed: Any = "auto",
    ) -> None:
        super().__init__(
            module,
            max_bumps=max_bumps,
            every=every,
            start=start,
            stop=_as_int(stop, "stop", 0),
            fraction=0.0,
            distributed=distributed,
        )
        self.initial_bumps = _as_int(initial_bumps, "initial_bumps", 1)
        if self.initial_bumps > self.max_bumps:
            raise ValueError(f"initial_bumps must be <= max_bumps = {self.max_bumps}, but got {initial_bumps}")
        assert self.stop is not None  # ScheduledGrowth requires stop (checked above)
        self.events = len(range(self.start, self.stop, self.every))
        if self.events < 1 and self.initial_bumps < self.max_bumps:
            raise ValueError(f"stop must leave at least one event after start = {self.start}, but got stop={stop}")

    def target(self, event: int) -> int:
        """K after event ``event`` (1-based) of the schedule.

        Args:
            event: The event number, 1 for the first (``max_bumps`` from the last one on).

        Returns:
            The number of bumps the schedule asks for after that event.

        Raises:
            TypeError: (from Python) ``event`` is not a number.
        """
        if event >= self.events:
            return self.max_bumps
        ratio = self.max_bumps / self.initial_bumps
        return min(self.max_bumps, int(round(self.initial_bumps * ratio ** (event / self.events))))

    def grow(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        x: torch.Tensor,
        residual: torch.Tensor,
    ) -> tuple[int, int]:
        """One event of the schedule now: splits enough bumps to reach :meth:`target` of the next event.

        Args:
            model, optimizer, x, residual: As :meth:`Growth.grow`.

        Returns:
            (bumps split, bumps pruned).

        Raises:
            TypeError, ValueError: As :meth:`Growth.grow`.
        """
        n_now = self._find_module(model).n_bumps
        want = self.target(self.counter + 1) - n_now
        # floor(fraction * n_now) == want exactly (the 0.5 keeps rounding off the boundary)
        self.fraction = min(1.0, max(0.0, (want + 0.5) / max(1, n_now))) if want > 0 else 0.0
        return super().grow(model, optimizer, x, residual)
