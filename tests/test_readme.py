"""Every Python block of the README runs, top to bottom in one namespace, as a reader would
paste them (with fewer steps, to stay fast), and the first ones learn what they claim."""

import pathlib
import re

import pytest
import torch

from _spawn import free_port

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"

# (text in the block, replacement): fewer steps; nothing else changes.
FEWER_STEPS = [("range(500)", "range(40)"), ("range(200)", "range(60)")]


def python_blocks():
    return re.findall(r"```python\n(.*?)```", README.read_text(), re.S)


def test_readme_has_the_blocks_this_test_expects():
    blocks = python_blocks()
    assert len(blocks) >= 9
    assert "range(500)" in blocks[0] and "range(200)" in blocks[1]


def test_every_readme_block_runs_in_order(capsys, monkeypatch, tmp_path):
    # The DDP block is a torchrun script: give it a one-process world on this machine.
    for key, value in dict(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port())).items():
        monkeypatch.setenv(key, value)
    monkeypatch.chdir(tmp_path)
    namespace = {"__name__": "__readme__"}
    for i, block in enumerate(python_blocks()):
        for old, new in FEWER_STEPS:
            block = block.replace(old, new)
        try:
            exec(compile(block, f"{README}:block{i}", "exec"), namespace)
        except Exception as exc:  # name the block in the failure
            pytest.fail(f"README python block {i} failed: {exc!r}\n{block}")
        if i == 0:  # the first training loop learns
            loss0 = (namespace["y"] ** 2).mean().sqrt().item()  # the fit starts from m = 0
            assert namespace["loss"].sqrt().item() < 0.7 * loss0
        if i == 1:  # the multi-output loop learns all outputs at once
            assert namespace["model"](namespace["x"]).shape == (20_000, 3)
            assert namespace["loss"].item() < 0.5 * (namespace["targets"] ** 2).mean().item()
    out = capsys.readouterr().out
    assert "rmse" in out and "multi-output rmse" in out
    assert not torch.distributed.is_initialized()
