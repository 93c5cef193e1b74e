"""Error-guided growth: which bumps split, what the split preserves, the optimizer state
rewritten for exactly the changed entries, determinism, resume, and identical DDP ranks."""

from __future__ import annotations

import datetime
import math
import os

import pytest
import torch
import torch.distributed as dist
from _spawn import free_port, spawn

from wandering import SlowOrientedSumOfBumpFcns, SlowSumOfBumpFcns, bump_sum_reference
from wandering.nn.growth import Growth, ScheduledGrowth, bump_statistics, resize_bumps

D, K = 2, 12


def _data(n=500, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, D, generator=gen, dtype=torch.float64)
    y = torch.sin(6 * x[:, 0]) * torch.cos(4 * x[:, 1]) + 2.0 * torch.exp(-((x - 0.7) ** 2).sum(1) / 0.005)
    return x, y


def _model(P=None, oriented=False, seed=0):
    gen = torch.Generator().manual_seed(seed)
    c = torch.rand(D, K, generator=gen, dtype=torch.float64)
    w = 0.08 + 0.1 * torch.rand(D, K, generator=gen, dtype=torch.float64)
    shape = (K,) if P is None else (K, P)
    m = torch.randn(shape, generator=gen, dtype=torch.float64)
    bounds = (torch.tensor([[-1.0, 2.0]] * D), torch.tensor([[0.005, 1.0]] * D))
    if oriented:
        a = torch.randn(1, K, generator=gen, dtype=torch.float64)
        return SlowOrientedSumOfBumpFcns(c, w, m, *bounds, angles=a, backend="reference")
    return SlowSumOfBumpFcns(c, w, m, *bounds, backend="reference")


def _warm(model, x, y, steps=4):
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        ((out - (y if out.dim() == 1 else y[:, None])) ** 2).mean().backward()
        opt.step()
    return opt


def _resid(model, x, y):
    with torch.no_grad():
        out = model(x)
    return (y if out.dim() == 1 else y[:, None]) - out


def test_bump_statistics_against_a_plain_sum():
    x, _y = _data()
    for oriented in (False, True):
        model = _model(P=3, oriented=oriented)
        r = torch.randn(len(x), 3, dtype=torch.float64)
        stats = bump_statistics(model, x, r)
        eye = torch.eye(K, dtype=torch.float64)
        if oriented:
            from wandering import oriented_bump_sum_reference

            phi = oriented_bump_sum_reference(x, model.c, model.w, eye, model.angles, support_p=model.support_p)
        else:
            phi = bump_sum_reference(x, model.c, model.w, eye, support_p=model.support_p)
        torch.testing.assert_close(stats[:, 0], phi.sum(0).detach())
        torch.testing.assert_close(stats[:, 1], (phi * (r * r).sum(1, keepdim=True)).sum(0).detach())


@pytest.mark.parametrize("P", [None, 3])
@pytest.mark.parametrize("oriented", [False, True])
def test_split_targets_the_largest_error_mass_and_keeps_mass_and_moment(P, oriented):
    x, y = _data()
    model = _model(P, oriented)
    opt = _warm(model, x, y)
    r = _resid(model, x, y)
    mass = bump_statistics(model, x, r)[:, 1]
    expected = torch.sort(torch.argsort(-mass, stable=True)[:3]).values
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    state_before = {name: {k: v.clone() for k, v in opt.state[p].items()} for name, p in model.named_parameters()}
    params_before = dict(model.named_parameters())
    growth = Growth(max_bumps=100, fraction=0.25)
    split, pruned = growth.grow(model, opt, x, r)
    assert (split, pruned) == (3, 0) and model.n_bumps == K + 3
    assert growth.counter == 1
    held = [p for g in opt.param_groups for p in g["params"]]
    for name, p in model.named_parameters():  # new Parameters, in the module and in the optimizer
        assert p is not params_before[name] and any(p is q for q in held), name
        assert not any(params_before[name] is q for q in held) and params_before[name] not in opt.state, name
    others = torch.tensor([k for k in range(K) if k not in expected.tolist()])
    dims = {"c": 1, "w": 1, "m": 0, "angles": 1}
    for name, dim in dims.items():
        if name not in before:
            continue
        now = getattr(model, name).detach()
        assert torch.equal(now.index_select(dim, others), before[name].index_select(dim, others)), name
    # each parent became two children: at c -+ w/2 along its longest axis, that scale / sqrt(2), m / sqrt(2)
    kids = torch.arange(K, K + 3)
    for j, k in enumerate(expected.tolist()):
        w0 = before["w"][:, k]
        a = int(w0.abs().argmax())
        if oriented:
            ang = float(before["angles"][0, k])
            R = torch.tensor([[math.cos(ang), -math.sin(ang)], [math.sin(ang), math.cos(ang)]], dtype=torch.float64)
            axis = R[:, a]
        else:
            axis = torch.zeros(D, dtype=torch.float64)
            axis[a] = 1.0
        step = 0.5 * w0[a].abs() * axis
        torch.testing.assert_close(model.c[:, k].detach(), before["c"][:, k] - step)
        torch.testing.assert_close(model.c[:, kids[j]].detach(), before["c"][:, k] + step)
        w_new = w0.clone()
        w_new[a] = w0[a] / math.sqrt(2.0)
        for col in (k, int(kids[j])):
            torch.testing.assert_close(model.w[:, col].detach(), w_new)
            torch.testing.assert_close(model.m[col].detach(), before["m"][k] / math.sqrt(2.0))
            if oriented:
                assert torch.equal(model.angles[:, col].detach(), before["angles"][:, k])
        # the pair keeps the parent's mass and second moment along the split axis
        t = torch.linspace(-6, 6, 20001, dtype=torch.float64) * w0[a].abs()
        parent = torch.exp(-((t / w0[a]) ** 2))
        pair = sum(torch.exp(-(((t - s) / w_new[a]) ** 2)) for s in (-0.5 * w0[a].abs(), 0.5 * w0[a].abs()))
        pair = pair / math.sqrt(2.0)
        torch.testing.assert_close(pair.sum(), parent.sum(), rtol=1e-9, atol=0)
        torch.testing.assert_close((pair * t * t).sum(), (parent * t * t).sum(), rtol=1e-9, atol=0)
    # optimizer state: kept as it was for untouched bumps, zero for parents and children
    changed = torch.cat([expected, kids])
    for name, p in model.named_parameters():
        dim = dims.get(name)
        for key, val in opt.state[p].items():
            old = state_before[name][key]
            if dim is None or old.shape != before[name].shape:
                assert torch.equal(val, old), (name, key)  # the offset-free scalars (Adam's step)
                continue
            assert val.shape == p.shape, (name, key)
            assert torch.all(val.index_select(dim, changed) == 0), (name, key)
            assert torch.equal(val.index_select(dim, others), old.index_select(dim, others)), (name, key)
    # training continues with the same optimizer
    opt.zero_grad()
    out = model(x)
    ((out - (y if out.dim() == 1 else y[:, None])) ** 2).mean().backward()
    opt.step()


def test_budget_prune_and_schedule():
    x, y = _data()
    model = _model()
    with torch.no_grad():
        model.c[0, 0] = 1.9  # no point in its support
        model.m[1] = 1e-6  # negligible
    growth = Growth(max_bumps=K + 1, every=2, start=1, stop=6, fraction=0.5, prune_min_rel_m=0.01, prune_empty=True)
    assert [s for s in range(8) if growth.due(s)] == [1, 3, 5]
    change = growth.step_post(model, None, x, _resid(model, x, y), 1)
    # two pruned, then split up to the budget: 10 live + 3
    assert growth.history == [(1, 3, 2)] and change == 1 and model.n_bumps == K + 1
    assert growth.step_post(model, None, x, _resid(model, x, y), 2) == 0  # not due
    assert growth.step_post(model, None, x, _resid(model, x, y), 3) == 0  # at the budget: nothing to add
    assert growth.history[-1] == (3, 0, 0)


def test_resize_bumps_appends_and_checks():
    model = _model(P=2)
    opt = _warm(model, *_data())
    keep = torch.tensor([5, 0, 7])
    new = {"c": torch.zeros(D, 2), "w": torch.full((D, 2), 0.1), "m": torch.ones(2, 2)}
    old_m = model.m.detach().clone()
    old_avg = opt.state[model.m]["exp_avg"].clone()
    out = model(_data()[0])  # a graph alive across the resize must not pin the old shapes
    out.sum().backward()
    resize_bumps(model, opt, keep, new, reset=torch.tensor([1]))
    assert model.n_bumps == 5 and model.m.shape == (5, 2)
    assert torch.equal(model.m[:3].detach(), old_m[keep])
    avg = opt.state[model.m]["exp_avg"]
    assert torch.equal(avg[0], old_avg[5]) and torch.equal(avg[2], old_avg[7])
    assert torch.all(avg[1] == 0) and torch.all(avg[3:] == 0)
    out = model(_data()[0])
    out.sum().backward()
    assert model.c.grad.shape == (D, 5)
    with pytest.raises(ValueError, match="new must give all"):
        resize_bumps(model, opt, keep, {"c": torch.zeros(D, 1)})


def test_deterministic_and_resumable():
    x, y = _data()

    def run(split_at=None):
        torch.manual_seed(0)  # the module's noise seed (growth itself draws nothing)
        model = _model(P=2, oriented=True)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        growth = Growth(max_bumps=40, every=3, fraction=0.3)
        for step in range(12):
            if step == split_at:  # resume: a fresh Growth from the saved state
                saved = growth.state_dict()
                growth = Growth(max_bumps=40, every=3, fraction=0.3)
                growth.load_state_dict(saved)
            opt.zero_grad()
            pred = model(x)
            ((pred - y[:, None]) ** 2).mean().backward()
            opt.step()
            growth.step_post(model, opt, x, y[:, None] - pred.detach(), step)
        return model.state_dict(), growth.counter

    a, b, c = run(), run(), run(split_at=7)
    assert a[1] == b[1] == c[1] == 3  # steps 3, 6, 9
    for k in a[0]:
        assert torch.equal(a[0][k], b[0][k]) and torch.equal(a[0][k], c[0][k]), k


def test_argument_errors():
    x, y = _data()
    model = _model()
    with pytest.raises(TypeError, match="max_bumps must be an int"):
        Growth(max_bumps=2.5)
    with pytest.raises(ValueError, match="max_bumps must be >= 1"):
        Growth(max_bumps=0)
    with pytest.raises(ValueError, match="fraction must be in"):
        Growth(max_bumps=5, fraction=1.5)
    with pytest.raises(ValueError, match="prune_min_rel_m must be in"):
        Growth(max_bumps=5, prune_min_rel_m=2.0)
    with pytest.raises(TypeError, match="prune_empty must be a bool"):
        Growth(max_bumps=5, prune_empty=1)
    with pytest.raises(ValueError, match="distributed must be"):
        Growth(max_bumps=5, distributed="yes")
    with pytest.raises(ValueError, match="x must have shape"):
        Growth(max_bumps=20).grow(model, None, x[:, :1], y)
    with pytest.raises(ValueError, match="residual must have shape"):
        Growth(max_bumps=20).grow(model, None, x, y[:-1])
    with pytest.raises(ValueError, match="exactly one bump sum"):
        Growth(max_bumps=20).grow(torch.nn.Sequential(_model(), _model()), None, x, y)
    with pytest.raises(ValueError, match="counter"):
        Growth(max_bumps=5).load_state_dict({})
    with pytest.raises(RuntimeError, match="distributed=True"):
        Growth(max_bumps=20, distributed=True).grow(model, None, x, y)


def test_scheduled_growth_follows_its_geometric_schedule_and_resumes():
    x, y = _data()

    def run(split_at=None):
        torch.manual_seed(0)
        model = _model(P=2)  # K = 12
        opt = torch.optim.Adam(model.parameters(), lr=0.01)

        def make():
            return ScheduledGrowth(initial_bumps=12, max_bumps=100, every=2, stop=10)

        growth, sizes = make(), []
        for step in range(14):
            if step == split_at:
                saved = growth.state_dict()
                growth = make()
                growth.load_state_dict(saved)
            opt.zero_grad()
            pred = model(x)
            ((pred - y[:, None]) ** 2).mean().backward()
            opt.step()
            growth.step_post(model, opt, x, y[:, None] - pred.detach(), step)
            sizes.append(model.n_bumps)
        return model.state_dict(), sizes

    a, sizes = run()
    # events at steps 2, 4, 6, 8: K = round(12 * (100 / 12) ** (i / 4)), the last exactly 100
    want = [round(12 * (100 / 12) ** (i / 4)) for i in (1, 2, 3)] + [100]
    assert sizes == [12, 12] + [k for k in want for _ in range(2)] + [100] * 4
    c, sizes_c = run(split_at=5)
    assert sizes_c == sizes and all(torch.equal(a[k], c[k]) for k in a)


def test_scheduled_growth_errors():
    with pytest.raises(ValueError, match="initial_bumps must be <= max_bumps = 5, but got 6"):
        ScheduledGrowth(initial_bumps=6, max_bumps=5, every=2, stop=10)
    with pytest.raises(ValueError, match="initial_bumps must be >= 1, but got 0"):
        ScheduledGrowth(initial_bumps=0, max_bumps=5, every=2, stop=10)
    with pytest.raises(TypeError, match="initial_bumps must be an int, but got float"):
        ScheduledGrowth(initial_bumps=2.0, max_bumps=5, every=2, stop=10)
    with pytest.raises(ValueError, match="stop must leave at least one event after start = 4, but got stop=4"):
        ScheduledGrowth(initial_bumps=2, max_bumps=5, every=4, stop=4)
    with pytest.raises(TypeError, match="stop must be an int"):
        ScheduledGrowth(initial_bumps=2, max_bumps=5, every=2, stop=None)


# ---------------------------------------------------------------- DDP
WORLD = 2
TIMEOUT_S = 600  # a guard against a hung process group, not a timing: a loaded machine compiles slowly


def _ddp_worker(rank: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        torch.manual_seed(100 + rank)
        model = _model(P=2, oriented=True, seed=100 + rank)  # different per rank: DDP broadcasts rank 0's
        x, y = _data()
        xr, yr = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]
        ddp = torch.nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.Adam(model.parameters(), lr=0.01)
        growth = Growth(max_bumps=30, every=3, fraction=0.3)
        for step in range(12):
            opt.zero_grad()
            pred = ddp(xr)
            ((pred - yr[:, None]) ** 2).mean().backward()
            opt.step()
            if growth.step_post(ddp, opt, xr, yr[:, None] - pred.detach(), step):
                ddp = torch.nn.parallel.DistributedDataParallel(model)  # K changed: a new wrapper
        out = {k: v.detach().clone() for k, v in model.state_dict().items()}
        avg = opt.state[model.c]["exp_avg"].clone()
        torch.save({"state": out, "history": growth.history, "avg": avg}, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo")
def test_ddp_ranks_grow_identically(tmp_path):
    spawn(_ddp_worker, (free_port(), str(tmp_path)), WORLD, TIMEOUT_S)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    assert r0["history"] == r1["history"] and sum(s for _, s, _ in r0["history"]) > 0
    assert r0["state"]["c"].shape[1] > K
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), f"{k} differs across ranks"
    assert torch.equal(r0["avg"], r1["avg"])
