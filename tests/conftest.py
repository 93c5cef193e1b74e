"""Shared fixtures: run a test through every engine this machine has."""

from __future__ import annotations

import pytest

from wandering._engine import ENGINES, ENV_VAR

# Engines that run CPU tensors here (triton only under TRITON_INTERPRET=1; see test_triton_engine.py).
AVAILABLE_ENGINES = tuple(name for name, e in ENGINES.items() if e.available and "cpu" in e.devices)


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


# The engine fixture is function-scoped but constant across a test's examples.
from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile("wandering", suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None)
settings.load_profile("wandering")
