"""Shared by the tests that start processes: a free loopback port, and spawning
worker processes with a deadline (a hung gloo rendezvous fails the test, never CI)."""

from __future__ import annotations

import socket
import time

import pytest
import torch.multiprocessing as mp


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(worker, args: tuple, nprocs: int, timeout_s: float) -> None:
    """Runs ``worker(rank, *args)`` in ``nprocs`` spawned processes; fails the test after ``timeout_s``."""
    ctx = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + timeout_s
    try:
        while not ctx.join(timeout=1):
            if time.monotonic() > deadline:
                pytest.fail(f"worker processes did not finish within {timeout_s} s")
    finally:
        for proc in ctx.processes:
            if proc.is_alive():
                proc.terminate()
