"""DistributedDataParallel: two gloo processes on the CPU, each with half the points.

The ranks are seeded differently and use the global generator differently, yet
their parameters stay bitwise equal (the keyed noise's seed/step buffers come
from rank 0 through DDP's broadcast at construction) and match a single-process
run on all points.
"""

from __future__ import annotations

import datetime
import os
import sys

import pytest
import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(__file__))
import _training_problem as tp
from _spawn import free_port, spawn

from wandering.nn.training import attach

WORLD = 2
STEPS = 30
TIMEOUT_S = 600  # a guard against a hung process group, not a timing: a loaded machine compiles slowly

pytestmark = [
    pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(), reason="needs gloo"),
    # every engine, one and several outputs, axis-aligned and oriented bumps
    pytest.mark.usefixtures("engine", "outputs", "shape"),
]


def _build(rank: int):
    """Both models, after a rank-dependent seed and number of global draws."""
    torch.manual_seed(100 + rank)
    torch.rand(1 + 7 * rank)
    plain = tp.make_model()
    hooked = tp.make_model()
    return plain, hooked


def _train(plain, hooked, x, y, wrap=lambda m: m, rng_use=0):
    """The seed's loop on ``plain`` (SGD); the attach helper with parameter noise on ``hooked`` (Adam)."""
    plain_w, hooked_w = wrap(plain), wrap(hooked)
    opt_p = torch.optim.SGD(plain_w.parameters(), lr=0.05)
    opt_h = torch.optim.Adam(hooked_w.parameters(), lr=0.02)
    attach(opt_h, hooked_w, **tp.param_noise())
    for _ in range(STEPS):
        opt_p.zero_grad()
        tp.loss_fn(plain_w, x, y).backward()
        plain.pert_grads()
        opt_p.step()
        plain.bound()
        tp.hooked_step(hooked_w, opt_h, x, y)
        torch.rand(rng_use + 1)  # each rank moves its global generator differently
    return tp.params_of(plain), tp.params_of(hooked)


def _worker(rank: int, port: int, outdir: str) -> None:
    os.environ["MASTER_ADDR"] = "127.0.0.1"
    os.environ["MASTER_PORT"] = str(port)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=datetime.timedelta(seconds=60))
    try:
        plain, hooked = _build(rank)
        seeds = (int(plain.noise_seed), int(hooked.noise_seed))
        x, y = tp.data()
        xr, yr = x.chunk(WORLD)[rank], y.chunk(WORLD)[rank]

        def wrap(m):
            return torch.nn.parallel.DistributedDataParallel(m)

        p, h = _train(plain, hooked, xr, yr, wrap=wrap, rng_use=rank)
        torch.save({"seeds": seeds, "plain": p, "hooked": h}, os.path.join(outdir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _spawn(outdir: str) -> None:
    spawn(_worker, (free_port(), outdir), WORLD, TIMEOUT_S)


def test_ddp_ranks_stay_bitwise_identical_and_match_one_process(tmp_path):
    _spawn(str(tmp_path))
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD))
    # the test means something only if the ranks built different modules
    assert r0["seeds"][0] != r1["seeds"][0] and r0["seeds"][1] != r1["seeds"][1]
    for name in ("plain", "hooked"):
        for k, v in r0[name].items():
            assert torch.equal(v, r1[name][k]), f"{name}.{k} differs across ranks"
        assert int(r0[name]["noise_seed"]) == r0["seeds"][0 if name == "plain" else 1]  # rank 0's seed won
    assert int(r0["plain"]["noise_step"]) == STEPS and int(r0["hooked"]["param_noise_step"]) == STEPS

    with torch.random.fork_rng():
        plain, hooked = _build(0)
        x, y = tp.data()
        p, h = _train(plain, hooked, x, y)
        start_c = _build(0)[0].c.detach()
    for name, ref in (("plain", p), ("hooked", h)):
        for k, v in ref.items():
            torch.testing.assert_close(r0[name][k], v, rtol=1e-9, atol=1e-10, msg=f"{name}.{k}")
    # and training moved the parameters (a test of a frozen model would prove nothing)
    assert not torch.equal(p["c"], start_c)
