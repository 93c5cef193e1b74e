"""Relocating dead bumps to where the error is (in the spirit of 3DGS-MCMC and Image-GS).

A bump is *dead* when its magnitude is negligible (|m|, the largest over outputs,
below ``min_rel_m`` times the largest bump's) or when its support (the box of an
axis-aligned bump, the ellipsoid of an oriented one) holds none of the points it is
shown. Gradients cannot revive it: an empty support has exactly zero data gradient,
and a tiny magnitude makes the centre and width gradients tiny. :class:`Relocation`
moves each dead bump to a point sampled with probability proportional to the squared
residual, resets its width (and an oriented bump's angles to 0), sets its magnitude
from the residual there, and resets its optimizer state, at intervals early in a fit::

    reloc = Relocation(every=100, stop=1000)
    for step in range(steps):
        opt.zero_grad()
        pred = model(x)
        loss = ((pred - y) ** 2).mean()
        loss.backward()
        opt.step()
        reloc.step_post(model, opt, x, y - pred.detach(), step)

Randomness. Every draw is keyed like the gradient noise (``wandering.nn._noise``): a pure
function of ``(seed, counter, stream)``, where ``seed`` is the module's ``noise_seed``
buffer (or the ``seed`` given) and ``counter`` counts relocation events. The counter is
saved by :meth:`Relocation.state_dict`, so a resumed fit relocates exactly as an
uninterrupted one, and every DDP rank draws the same numbers without communicating.

Distributed data. Under DDP each rank sees its own points, so the two data-dependent
inputs differ between ranks; they are made identical by collectives, run only at
relocation events: the box occupancy is summed over ranks (``all_reduce``) and each
rank contributes ``n_sample / world_size`` candidate points and residuals
(``all_gather``), so every rank chooses from the same candidates with the same keyed
draws and moves the same bumps to the same places. (``distributed="auto"`` does this
whenever ``torch.distributed`` is initialised with more than one rank;
``distributed=False`` skips the collectives, which is correct only when every rank
passes the same ``x`` and ``residual``.)
"""

from __future__ import annotations

import math
from typing import Any

import torch

from wandering._engine import bump_sum, oriented_bump_sum
from wandering._engine._checks import check_nonneg
from wandering._engine._geometry import support_halfwidths
from wandering._engine._rotation import rotations
from wandering.nn import _noise
from wandering.nn._schedule import EveryNSteps
from wandering.nn._schedule import as_int as _as_int
from wandering.nn.modules import _BumpModule

__all__ = ["Relocation"]


class Relocation(EveryNSteps):
    """Moves dead bumps of a bump sum to where the squared residual is large.

    Args:
        module: The bump sum to act on (a ``SumOfBumpFcns``/``SlowSumOfBumpFcns``, an oriented
            one, or any wandering module with c, w of shape (d, K) and, if oriented, ``angles``
            of shape (d(d-1)/2, K)). None: found in the model passed to
            :meth:`step_post`, which must then hold exactly one.
        every: Steps between relocation events.
        start: First step at which :meth:`step_post` relocates (default ``every``).
        stop: No relocation at this step or later (None: never stops). Relocate early in a
            fit only, so the moved bumps have time to settle.
        min_rel_m: A bump is dead when its |m| (max over outputs) is below this fraction of
            the largest |m| of the module.
        max_fraction: At most this fraction of the K bumps moves per event (the emptiest
            and smallest first); 1.0 moves every dead bump.
        n_sample: Candidate points per event (sampled uniformly from ``x``); new positions
            are drawn among them with probability proportional to the squared residual.
        width: Width of a moved bump: a number, a (d,) tensor, or None for the per-dimension
            median |w| of the live bumps.
        seed: Key for the draws; None uses the module's ``noise_seed`` buffer (identical on
            every DDP rank and saved with the model).
        distributed: "auto", True or False; see the module docstring.

    Attributes:
        counter: Relocation events so far (the draws' counter; saved by :meth:`state_dict`).
        last_moved: Indices of the bumps the last event moved (a LongTensor).
        history: ``(step, n_moved)`` for every event of this object (not saved).

    Raises:
        TypeError: ``module`` not a module or None; a count or seed that is not an int.
        ValueError: ``every`` or ``n_sample`` < 1, ``start``/``stop``/``seed`` < 0,
            ``min_rel_m`` negative, ``max_fraction`` outside [0, 1], an unknown ``distributed``.
            (``width`` is checked when a bump moves.)
    """

    def __init__(
        self,
        module: _BumpModule | None = None,
        *,
        every: int = 100,
        start: int | None = None,
        stop: int | None = None,
        min_rel_m: float = 0.02,
        max_fraction: float = 0.1,
        n_sample: int = 8192,
        width: Any = None,
        seed: int | None = None,
        distributed: Any = "auto",
    ) -> None:
        self._init_schedule(module, every, start, stop, distributed)
        self.min_rel_m = check_nonneg(min_rel_m, "min_rel_m")
        self.max_fraction = check_nonneg(max_fraction, "max_fraction")
        if self.max_fraction > 1:
            raise ValueError(f"max_fraction must be in [0, 1], but got {max_fraction}")
        self.n_sample = _as_int(n_sample, "n_sample", 1)
        self.width = width
        self.seed = None if seed is None else _as_int(seed, "seed", 0)
        self.counter = 0
        self.last_moved = torch.zeros(0, dtype=torch.int64)
        self.history: list[tuple[int, int]] = []

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict:
        """The relocation counter (and seed, if one was given): all a resumed fit needs.

        Returns:
            ``{"counter": int, "seed": int or None}``.
        """
        return {"counter": int(self.counter), "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        """Restores :meth:`state_dict`'s counter (and seed), so the next events draw as an
        uninterrupted fit's would.

        Args:
            state: A dict from :meth:`state_dict`.

        Raises:
            ValueError: ``state`` is not a dict with a ``"counter"``, or its counter or seed is
                negative.
            TypeError, ValueError: (from ``int()``) a counter or seed that is not a number.
        """
        if not isinstance(state, dict) or "counter" not in state:
            raise ValueError("state must be a dict from Relocation.state_dict(), with a 'counter'")
        self.counter = _as_int(int(state["counter"]), "counter", 0)
        if state.get("seed") is not None:
            self.seed = _as_int(int(state["seed"]), "seed", 0)

    def __repr__(self) -> str:
        return (
            f"Relocation(every={self.every}, start={self.start}, stop={self.stop}, min_rel_m={self.min_rel_m}, "
            f"max_fraction={self.max_fraction}, n_sample={self.n_sample}, counter={self.counter})"
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
        """Call after ``optimizer.step()``: relocates when :meth:`due` (step), else does nothing.

        Args:
            model: The bump-sum module, or a model holding exactly one (DDP wrappers too).
            optimizer: The optimizer whose state for the moved entries is reset (None: none).
            x: The points the bump sum saw this step, in its own coordinates (n, d).
            residual: target - prediction at those points, (n,) or (n, P).
            step: The step just taken (0-based).

        Returns:
            The number of bumps moved (0 when not due).

        Raises:
            TypeError, ValueError: as :meth:`relocate`, at the steps that are due.
        """
        if not self.due(step):
            return 0
        moved = self.relocate(model, optimizer, x, residual)
        self.history.append((int(step), int(moved.numel())))
        return int(moved.numel())

    # ---------------------------------------------------------------- work
    def _world(self) -> tuple[int, int]:
        import torch.distributed as dist

        if not self._distributed_active():
            return 0, 1
        return dist.get_rank(), dist.get_world_size()

    def dead(self, module: _BumpModule, x: torch.Tensor) -> torch.Tensor:
        """Which bumps count as dead for these points (a collective under DDP: call on every rank).

        Args:
            module: The bump sum, with c and w of shape (d, K).
            x: Points, (n, d), in the module's dtype and on its device.

        Returns:
            A bool tensor (K,): True where |m| (max over outputs) is below ``min_rel_m`` times
            the largest, or the bump's support box holds none of ``x``.

        Raises:
            TypeError, ValueError: as :func:`wandering.bump_sum` for a bad ``x``.
        """
        occupancy = self._occupancy(module, x)
        return self._dead_from(module, occupancy)

    def _occupancy(self, module: _BumpModule, x: torch.Tensor) -> torch.Tensor:
        # d(sum of outputs)/dm_k = sum over points of phi_k: > 0 exactly when the support holds a point.
        ones = torch.ones(module.n_bumps, dtype=module.c.dtype, device=module.c.device, requires_grad=True)
        angles = _angles(module)
        with torch.enable_grad():
            if angles is None:
                out = bump_sum(
                    x, module.c.detach(), module.w.detach(), ones, support_p=module.support_p, backend=module.backend
                )
            else:
                out = oriented_bump_sum(
                    x,
                    module.c.detach(),
                    module.w.detach(),
                    ones,
                    angles.detach(),
                    support_p=module.support_p,
                    backend=module.backend,
                )
            (occ,) = torch.autograd.grad(out.sum(), ones)
        _rank, world = self._world()
        if world > 1:
            import torch.distributed as dist

            occ = occ.double()
            dist.all_reduce(occ)
        return occ

    def _dead_from(self, module: _BumpModule, occupancy: torch.Tensor) -> torch.Tensor:
        m = module.m.detach()
        mabs = m.abs() if m.dim() == 1 else m.abs().amax(dim=1)
        small = mabs < self.min_rel_m * mabs.max() if mabs.numel() else mabs > 0
        return small | (occupancy == 0)

    def relocate(
        self,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer | None,
        x: torch.Tensor,
        residual: torch.Tensor,
    ) -> torch.Tensor:
        """Relocates the dead bumps now (whatever the step).

        Advances :attr:`counter` by one whether or not a bump moved.

        Args:
            model: The bump-sum module, or a model holding exactly one (DDP wrappers too).
            optimizer: The optimizer whose state for the moved entries is zeroed (None: none).
            x: The points, (n, d), in the bump sum's own coordinates.
            residual: target - prediction at those points, (n,) or (n, P) like the module's m.

        Returns:
            The indices of the moved bumps, a sorted int64 tensor (empty when none moved).

        Raises:
            TypeError: x or residual is not a tensor; model is not a module.
            ValueError: x not (n, d); residual not (n,) or (n, P) with the module's P; a model
                without exactly one bump sum; a ``width`` that is not nonzero and finite; a DDP
                rank with no points.
            RuntimeError: ``distributed=True`` without an initialised process group of
                several ranks.
        """
        mod = self._find_module(model)
        c_p, w_p, m_p, a_p = mod.c, mod.w, mod.m, _angles(mod)
        dtype, device = c_p.dtype, c_p.device
        if not isinstance(x, torch.Tensor) or not isinstance(residual, torch.Tensor):
            raise TypeError("x and residual must be torch.Tensors")
        d, K = c_p.shape
        if x.dim() != 2 or x.shape[1] != d:
            raise ValueError(f"x must have shape (n, {d}), but got {tuple(x.shape)}")
        if residual.shape[0] != x.shape[0] or residual.dim() > 2:
            raise ValueError(
                f"residual must have shape (n,) or (n, P) with n = {x.shape[0]}, but got {tuple(residual.shape)}"
            )
        x = x.detach().to(device=device, dtype=dtype)
        r = residual.detach().reshape(x.shape[0], -1).to(dtype=torch.float64, device="cpu")
        n_out = 1 if m_p.dim() == 1 else m_p.shape[1]
        if r.shape[1] != n_out:
            raise ValueError(f"residual must have {n_out} output column(s), but got {r.shape[1]}")
        seed = int(mod.noise_seed) if self.seed is None else self.seed
        counter = self.counter
        self.counter += 1
        rank, world = self._world()

        with torch.no_grad():
            occupancy = self._occupancy(mod, x)
            dead = self._dead_from(mod, occupancy).cpu()
            n_dead = int(dead.sum())
            cap = math.floor(self.max_fraction * K)
            idx = torch.nonzero(dead).squeeze(1)
            if n_dead > cap:
                # the emptiest first, then the smallest |m|; ties by index (stable)
                m_cpu = m_p.detach().cpu()
                mabs = m_cpu.abs() if m_cpu.dim() == 1 else m_cpu.abs().amax(dim=1)
                key = torch.where(occupancy.cpu()[idx] == 0, torch.full_like(mabs[idx], -1.0), mabs[idx])
                idx = idx[torch.argsort(key, stable=True)[:cap]]
                idx = torch.sort(idx).values
            self.last_moved = idx
            if idx.numel() == 0:
                return idx

            # Candidate points and their residuals: the same set on every rank.
            xc, rc = self._candidates(x, r, seed, counter, rank, world)
            xc64 = xc.double().cpu()
            c64, w64 = c_p.detach().double().cpu(), w_p.detach().double().cpu()
            m64 = m_p.detach().double().cpu().reshape(K, -1)
            sp = mod.support_p
            # Oriented bumps (d > 1) count inside ellipsoids: the old ones with their axes, the
            # moved ones axis-aligned (angles 0). In 1-D the ellipsoid is the box.
            R64 = rotations(a_p.detach().double().cpu(), d) if a_p is not None and d > 1 else None
            ellipsoids = R64 is not None
            eye = torch.eye(d, dtype=torch.float64) if ellipsoids else None

            # Removing the dead bumps adds their old contribution back to the residual.
            for k in idx.tolist():
                R = R64[:, :, k] if R64 is not None else None
                rc += _phi(xc64, c64[:, k], w64[:, k], sp, R)[:, None] * m64[k][None, :]

            new_w = self._new_width(w64, dead, d)
            gen = _noise.keyed_generator(seed, counter, _noise.STREAM_RELOCATE_PICK)
            u = torch.rand(idx.numel(), generator=gen, dtype=torch.float64)
            new_c = torch.empty(d, idx.numel(), dtype=torch.float64)
            new_m = torch.empty(idx.numel(), m64.shape[1], dtype=torch.float64)
            for j in range(idx.numel()):
                weight = (rc * rc).sum(dim=1)
                total = float(weight.sum())
                if total > 0:
                    cdf = torch.cumsum(weight, 0)
                    pick = int(torch.searchsorted(cdf, u[j] * cdf[-1], right=True).clamp(max=len(cdf) - 1))
                else:
                    pick = min(int(u[j] * len(xc64)), len(xc64) - 1)
                centre = xc64[pick]
                phi = _phi(xc64, centre, new_w, sp, eye)
                # the magnitude that best fits the residual with this one bump (phi = 1 at its centre)
                mag = (phi[:, None] * rc).sum(0) / (phi * phi).sum().clamp_min(1.0)
                rc -= phi[:, None] * mag[None, :]
                new_c[:, j] = centre
                new_m[j] = mag

            dev_idx = idx.to(device)
            c_p.index_copy_(1, dev_idx, new_c.to(dtype=dtype, device=device))
            w_p.index_copy_(1, dev_idx, new_w[:, None].expand(d, idx.numel()).to(dtype=dtype, device=device))
            m_new = new_m.to(dtype=dtype, device=device)
            m_p.index_copy_(0, dev_idx, m_new[:, 0] if m_p.dim() == 1 else m_new)
            reset = [(c_p, 1), (w_p, 1), (m_p, 0)]
            if a_p is not None:
                a_p.index_fill_(1, dev_idx, 0.0)
                reset.append((a_p, 1))
            mod.bound()
            if optimizer is not None:
                reset_optimizer_entries(optimizer, reset, dev_idx)
        return idx

    def _candidates(self, x, r, seed, counter, rank, world):
        n = x.shape[0]
        per_rank = max(1, -(-self.n_sample // world))
        gen = _noise.keyed_generator(
            _noise.mix_key(seed, rank, _noise.STREAM_RELOCATE_SAMPLE), counter, _noise.STREAM_RELOCATE_SAMPLE
        )
        if world == 1 and n <= per_rank:
            pick = torch.arange(n)
        elif n >= per_rank:
            pick = torch.randperm(n, generator=gen)[:per_rank]
        else:  # a rank with few points: equal shares for the gather, with repeats
            pick = torch.randint(n, (per_rank,), generator=gen) if n else torch.zeros(0, dtype=torch.int64)
        xc = x.cpu()[pick].double()
        rc = r[pick]
        if world > 1:
            import torch.distributed as dist

            if n == 0:
                raise ValueError("every rank needs at least one point for a distributed relocation")
            xs = [torch.empty_like(xc) for _ in range(world)]
            rs = [torch.empty_like(rc) for _ in range(world)]
            dist.all_gather(xs, xc.contiguous())
            dist.all_gather(rs, rc.contiguous())
            xc, rc = torch.cat(xs), torch.cat(rs)
        return xc, rc.clone()

    def _new_width(self, w64: torch.Tensor, dead: torch.Tensor, d: int) -> torch.Tensor:
        if self.width is None:
            live = w64[:, ~dead] if bool((~dead).any()) else w64
            return live.abs().median(dim=1).values
        width = torch.as_tensor(self.width, dtype=torch.float64).reshape(-1)
        if width.numel() == 1:
            width = width.expand(d)
        if width.numel() != d or not bool((width != 0).all()) or not bool(torch.isfinite(width).all()):
            raise ValueError(f"width must be a nonzero finite number or {d} of them, but got {self.width!r}")
        return width.clone()


def _angles(module: torch.nn.Module) -> torch.nn.Parameter | None:
    """An oriented module's angles parameter; None for an axis-aligned one."""
    angles = getattr(module, "angles", None)
    return angles if isinstance(angles, torch.nn.Parameter) else None


def _phi(
    x64: torch.Tensor,
    centre: torch.Tensor,
    width: torch.Tensor,
    support_p: float | None,
    axes: torch.Tensor | None = None,
) -> torch.Tensor:
    """One bump's values at the points x64 (n, d), culled as the modules cull: in its box, or, with
    ``axes`` (its rotation R, (d, d)), in its ellipsoid ``|diag(1/w) R^T (x - c)|^2 < -ln(support_p)``."""
    diff = x64 - centre[None, :]
    if axes is None:
        z = diff / width[None, :]
        val = torch.exp(-(z * z).sum(dim=1))
        half = support_halfwidths(width[:, None], support_p)[:, 0]
        return val * (diff.abs() < half[None, :]).all(dim=1)
    if not bool((width != 0).all()):
        return torch.zeros(len(x64), dtype=x64.dtype)  # a zero scale counts nowhere
    z = (diff @ axes) / width[None, :]
    s = (z * z).sum(dim=1)
    inside = s < (-math.log(support_p) if support_p is not None else math.inf)
    return torch.exp(-s) * inside


def reset_optimizer_entries(optimizer: torch.optim.Optimizer, params: Any, index: torch.Tensor) -> None:
    """Zeroes the optimizer's per-entry state (Adam's exp_avg, exp_avg_sq, max_exp_avg_sq, a
    per-entry step) for the given slices: for each ``(param, dim)``, the entries at ``index``
    along ``dim``. State tensors of another shape (a scalar ``step`` shared by all entries)
    are left alone: resetting them would change every other entry's update too.
    """
    for param, dim in params:
        state = optimizer.state.get(param)
        if not state:
            continue
        for value in state.values():
            if isinstance(value, torch.Tensor) and value.shape == param.shape:
                value.index_fill_(dim, index.to(value.device), 0)
