"""Relocation of dead bumps: who moves, what is reset, and that the draws are keyed
(bitwise reproducible, resumable from state, identical on every DDP rank)."""

from __future__ import annotations

import datetime
import math
import os

import pytest
import torch
import torch.distributed as dist
from _spawn import free_port, spawn

from wandering import (
    SlowOrientedSumOfBumpFcns,
    SlowSumOfBumpFcns,
    bump_sum_reference,
    oriented_bump_sum_reference,
)
from wandering._engine._rotation import rotations
from wandering.nn.relocation import _phi
from wandering.nn.training import Relocation, attach

D, K = 2, 24


def _data(n=600, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, D, generator=gen, dtype=torch.float64)
    y = torch.sin(5 * x[:, 0]) * torch.cos(3 * x[:, 1]) + 2.0 * torch.exp(-((x - 0.7) ** 2).sum(1) / 0.01)
    return x, y


def _model(P=None, seed=0, oriented=False):
    torch.manual_seed(seed)
    c = torch.rand(D, K, dtype=torch.float64)
    c[0, :4] = 3.0  # four bumps far right of the data: empty boxes
    shape = (K,) if P is None else (K, P)
    m = torch.sign(torch.randn(shape, dtype=torch.float64)) * (0.5 + torch.rand(shape, dtype=torch.float64))
    m[4:7] = 1e-4  # three bumps with negligible magnitude
    args = (
        c,
        torch.full((D, K), 0.1, dtype=torch.float64),
        m,
        torch.tensor([[-1.0, 4.0]] * D),
        torch.tensor([[0.01, 1.0]] * D),
    )
    if not oriented:
        return SlowSumOfBumpFcns(*args, backend="reference")
    args[1][0] = 0.2  # elongated, at random angles
    angles = (2 * torch.rand(1, K, dtype=torch.float64) - 1) * 3.0
    return SlowOrientedSumOfBumpFcns(*args, angles=angles, backend="reference")


def _warm(model, x, y, steps=5):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        ((out - (y if out.dim() == 1 else y[:, None])) ** 2).mean().backward()
        opt.step()
    return opt


@pytest.mark.parametrize("oriented", [False, True])
@pytest.mark.parametrize("P", [None, 3])
def test_only_dead_bumps_move_and_exactly_their_optimizer_state_is_reset(P, oriented):
    x, y = _data()
    model = _model(P, oriented=oriented)
    opt = _warm(model, x, y)
    with torch.no_grad():  # the warm-up moved magnitudes a little: re-kill the small ones
        model.m[4:7] = 1e-4
    dead = Relocation(max_fraction=1.0).dead(model, x)
    expected = torch.zeros(K, dtype=torch.bool)
    expected[:7] = True
    assert torch.equal(dead, expected)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    state_before = {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()}
    resid = (y if P is None else y[:, None].expand(-1, P)) - model(x).detach()
    reloc = Relocation(max_fraction=1.0, width=0.08)
    moved = reloc.relocate(model, opt, x, resid)
    assert moved.tolist() == list(range(7))
    keep = torch.arange(7, K)
    params = (("c", 1), ("w", 1), ("m", 0)) + ((("angles", 1),) if oriented else ())
    for name, dim in params:
        now, old = getattr(model, name).detach(), before[name]
        assert torch.equal(now.index_select(dim, keep), old.index_select(dim, keep)), name
        assert not torch.equal(now.index_select(dim, moved), old.index_select(dim, moved)), name
    assert torch.all(model.w[:, :7] == 0.08)
    if oriented:
        assert torch.all(model.angles[:, :7] == 0)  # a moved bump starts axis-aligned
    assert bool(((model.c[:, :7] >= 0) & (model.c[:, :7] <= 1)).all())  # moved onto data points
    for name, dim in params:
        p = getattr(model, name)
        for key, val in opt.state[p].items():
            old = state_before[id(p)][key]
            if val.shape == p.shape:
                assert torch.all(val.index_select(dim, moved) == 0), key
                assert torch.equal(val.index_select(dim, keep), old.index_select(dim, keep)), key
            else:
                assert torch.equal(val, old), key  # Adam's scalar step is left alone
    # the moved bumps now sit where the residual was: the error drops
    err_before = float((resid**2).mean())
    err_after = float((((y if P is None else y[:, None]) - model(x).detach()) ** 2).mean())
    assert err_after < err_before


def test_oriented_occupancy_is_the_ellipsoid_not_its_box():
    # a thin bump along the diagonal; the only points lie in its bounding box, across the diagonal
    c = torch.tensor([[0.5, 0.9], [0.5, 0.1]], dtype=torch.float64)
    w = torch.tensor([[0.4, 0.1], [0.02, 0.1]], dtype=torch.float64)
    x = torch.tensor([[0.8, 0.2], [0.2, 0.8], [0.75, 0.3], [0.9, 0.1]], dtype=torch.float64)
    for angle, empty in ((math.pi / 4, True), (-math.pi / 4, False)):
        mod = SlowOrientedSumOfBumpFcns(
            c, w, torch.ones(2, dtype=torch.float64), angles=torch.tensor([[angle, 0.0]], dtype=torch.float64)
        )
        dead = Relocation(min_rel_m=0.0).dead(mod, x)
        assert dead.tolist() == [empty, False]


@pytest.mark.parametrize("support_p", [None, 0.3, 1e-4])
def test_one_bump_values_are_the_reference_sums(support_p):
    gen = torch.Generator().manual_seed(4)
    for d in (1, 2, 3):
        x = torch.rand(300, d, generator=gen, dtype=torch.float64)
        c = torch.rand(d, 1, generator=gen, dtype=torch.float64)
        w = 0.05 + 0.3 * torch.rand(d, 1, generator=gen, dtype=torch.float64)
        angles = torch.randn(d * (d - 1) // 2, 1, generator=gen, dtype=torch.float64)
        one = torch.ones(1, dtype=torch.float64)
        ref = oriented_bump_sum_reference(x, c, w, one, angles, support_p)
        got = _phi(x, c[:, 0], w[:, 0], support_p, rotations(angles, d)[:, :, 0])
        torch.testing.assert_close(got, ref, rtol=1e-12, atol=1e-14)
        got = _phi(x, c[:, 0], w[:, 0], support_p)  # no axes: the axis-aligned bump and its box
        torch.testing.assert_close(got, bump_sum_reference(x, c, w, one, support_p), rtol=1e-12, atol=1e-14)
    assert not _phi(
        x, c[:, 0], torch.tensor([0.1, 0.0, 0.2], dtype=torch.float64), 0.01, torch.eye(3, dtype=torch.float64)
    ).any()  # a zero scale counts nowhere


def test_max_fraction_caps_and_prefers_empty_boxes():
    x, y = _data()
    model = _model()
    reloc = Relocation(max_fraction=5 / K)
    moved = reloc.relocate(model, None, x, y - model(x).detach())
    assert moved.numel() == 5
    assert set(range(4)) <= set(moved.tolist())  # the four empty boxes first


def test_schedule():
    reloc = Relocation(every=10, start=5, stop=40)
    assert [s for s in range(60) if reloc.due(s)] == [5, 15, 25, 35]
    assert Relocation(every=7).start == 7


def _loop(model, reloc, x, y, steps, opt=None, start=0):
    opt = opt or torch.optim.Adam(model.parameters(), lr=0.01)
    with attach(opt, model):
        for step in range(start, start + steps):
            opt.zero_grad()
            pred = model(x)
            ((pred - y) ** 2).mean().backward()
            opt.step()
            reloc.step_post(model, opt, x, y - pred.detach(), step)
    return opt


def _noisy_model(oriented, seed=0):
    model = _model(seed=seed, oriented=oriented)
    model.c_grad_std = 0.01
    if oriented:
        model.angle_grad_std = 0.05
    return model


@pytest.mark.parametrize("oriented", [False, True])
def test_bitwise_reproducible_and_resumable(tmp_path, oriented):
    x, y = _data()
    runs = []
    for _ in range(2):
        model = _noisy_model(oriented)
        reloc = Relocation(every=4, max_fraction=0.5, n_sample=256)
        _loop(model, reloc, x, y, 24)
        runs.append({k: v.clone() for k, v in model.state_dict().items()})
        assert sum(n for _, n in reloc.history) > 0
    for k in runs[0]:
        assert torch.equal(runs[0][k], runs[1][k]), k

    # interrupted at step 10, saved, rebuilt in another "process" (other global RNG), resumed
    model = _noisy_model(oriented)
    reloc = Relocation(every=4, max_fraction=0.5, n_sample=256)
    opt = _loop(model, reloc, x, y, 10)
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "reloc": reloc.state_dict()}, tmp_path / "ck.pt")
    torch.manual_seed(1234)
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    model2 = _noisy_model(oriented, seed=99)
    model2.load_state_dict(ck["model"])
    opt2 = torch.optim.Adam(model2.parameters(), lr=0.01)
    opt2.load_state_dict(ck["opt"])
    reloc2 = Relocation(every=4, max_fraction=0.5, n_sample=256)
    reloc2.load_state_dict(ck["reloc"])
    assert reloc2.counter == 2  # events at steps 4 and 8
    _loop(model2, reloc2, x, y, 14, opt=opt2, start=10)
    for k, v in model2.state_dict().items():
        assert torch.equal(v, runs[0][k]), k


def test_argument_errors():
    with pytest.raises(ValueError, match="every"):
        Relocation(every=0)
    with pytest.raises(TypeError, match="every"):
        Relocation(every=1.5)
    with pytest.raises(ValueError, match="max_fraction"):
        Relocation(max_fraction=2.0)
    with pytest.raises(ValueError, match="distributed"):
        Relocation(distributed="yes")
    x, y = _data()
    model = _model()
    with pytest.raises(ValueError, match="residual"):
        Relocation().relocate(model, None, x, y[:10])
    with pytest.raises(ValueError, match="x must have shape"):
        Relocation().relocate(model, None, x[:, :1], y)
    with pytest.raises(ValueError, match="exactly one bump sum"):
        Relocation().relocate(torch.nn.Sequential(_model(), _model()), None, x, y)
    with pytest.raises(ValueError, match="counter"):
        Relocation().load_state_dict({})


# ---------------------------------------------------------------- DDP
WORLD = 2
TIMEOUT_S = 600  # a guard against a hung process group, not a timing: a loaded machine compiles slowly


def _ddp_worker(rank: int, port: int, outdir: str, oriented: bool) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(100 + rank)  # different modules and global generators per rank
        torch.rand(1 + 5 * rank)
        model = _model(seed=100 + rank, oriented=oriented)
        seed = int(model.noise_seed)
        x, y = _data()
        xr, yr = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.Adam(ddp.parameters(), lr=0.01)
        reloc = Relocation(every=3, max_fraction=0.5, n_sample=128)
        for step in range(12):
            opt.zero_grad()
            pred = ddp(xr)
            ((pred - yr) ** 2).mean().backward()
            opt.step()
            reloc.step_post(ddp, opt, xr, yr - pred.detach(), step)
            torch.rand(rank + 1)
        out = {k: v.detach().clone() for k, v in model.state_dict().items()}
        torch.save(
            {"seed": seed, "state": out, "moved": sum(n for _, n in reloc.history)},
            os.path.join(outdir, f"rank{rank}.pt"),
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
@pytest.mark.parametrize("oriented", [False, True])
def test_ddp_ranks_relocate_identically(tmp_path, oriented):
    spawn(_ddp_worker, (free_port(), str(tmp_path), oriented), WORLD, TIMEOUT_S)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert r0["seed"] != r1["seed"]  # the ranks built different modules; DDP's broadcast made them one
    assert r0["moved"] == r1["moved"] and r0["moved"] > 0
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"{k} differs across ranks"
