"""Shared fixtures: run a test through every engine this machine has."""

from __future__ import annotations

import pytest

from wandering._engine import ENGINES, ENV_VAR

# Engines that run CPU tensors here (triton only under TRITON_INTERPRET=1; see test_triton_engine.py).
AVAILABLE_ENGINES = tuple(name for name, e in ENGINES.items() if e.available and "cpu" in e.devices)


# Of those, the engines that run oriented (full-covariance) bumps.
ORIENTED_ENGINES = tuple(name for name in AVAILABLE_ENGINES if ENGINES[name].orients)


@pytest.fixture(params=ORIENTED_ENGINES)
def oriented_engine(request, monkeypatch):
    """The ``engine`` fixture over the engines that run oriented bumps."""
    monkeypatch.setenv(ENV_VAR, request.param)
    return request.param


@pytest.fixture(params=AVAILABLE_ENGINES)
def engine(request, monkeypatch):
    """Routes every ``backend="auto"`` evaluation, whatever its size, to one engine.

    ``WANDERING_BACKEND`` replaces ``"auto"``, so the size threshold that sends tiny
    problems to the reference does not apply, and subprocesses (DDP, resume) inherit it."""
    monkeypatch.setenv(ENV_VAR, request.param)
    return request.param


@pytest.fixture(params=[None, 3], ids=["m(K,)", "m(K,3)"])
def outputs(request, monkeypatch):
    """Runs the shared training problem (tests/_training_problem.py) with m of shape (K,) or (K, 3)."""
    from _training_problem import OUTPUTS_ENV

    if request.param is None:
        monkeypatch.delenv(OUTPUTS_ENV, raising=False)
    else:
        monkeypatch.setenv(OUTPUTS_ENV, str(request.param))
    return request.param


@pytest.fixture(params=["axis", "oriented"])
def shape(request, monkeypatch):
    """Runs the shared training problem with the seed's module or its oriented counterpart
    (skipped on an engine that does not run oriented bumps)."""
    from _training_problem import SHAPE_ENV

    if request.param == "oriented":
        if "engine" in request.fixturenames and request.getfixturevalue("engine") not in ORIENTED_ENGINES:
            pytest.skip("this engine does not run oriented bumps")
        monkeypatch.setenv(SHAPE_ENV, "oriented")
    else:
        monkeypatch.delenv(SHAPE_ENV, raising=False)
    return request.param


# The engine fixture is function-scoped but constant across a test's examples.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("wandering", suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
settings.load_profile("wandering")
